"""Loading and validating the configuration from file, environment and flags."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from worker.config import Config, check_reachable, load_config, parse_listen
from worker.errors import ConfigError

EXAMPLE = """\
# the example from INTERFACE.md
uri = "mongodb://127.0.0.1:27017/?replicaSet=rs0"
transforms = ["shop_v2"]
state_db = "partner_sync"
origin_tag = "session"
tag_field = "_psync"
[batch]
max_docs = 500
max_delay_ms = 50
[lease]
ttl_s = 10
[http]
listen = "127.0.0.1:9464"
[log]
level = "info"
format = "json"
"""


def _write(tmp_path: Path, text: str, name: str = "worker.toml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_interface_example_loads(tmp_path: Path) -> None:
    """The configuration example in INTERFACE.md loads as written, with its values."""
    config = load_config(_write(tmp_path, EXAMPLE), environ={})
    assert config.transforms == ("shop_v2",)
    assert (config.batch.max_docs, config.batch.max_delay_ms) == (500, 50)
    assert config.lease.ttl_s == 10.0 and isinstance(config.lease.ttl_s, float)
    assert (config.http.listen, config.log.level, config.log.format) == (
        "127.0.0.1:9464",
        "info",
        "json",
    )


def test_defaults_without_any_source() -> None:
    """No file, no environment and no flags gives the documented defaults."""
    assert load_config(None, flags={}, environ={}) == Config()


def test_precedence_flags_over_env_over_file(tmp_path: Path) -> None:
    """A key set in all three places takes the flag's value; env beats the file."""
    path = _write(tmp_path, 'state_db = "from_file"\n[batch]\nmax_docs = 10\nmax_delay_ms = 5\n')
    environ = {"PARTNER_SYNC_STATE_DB": "from_env", "PARTNER_SYNC_BATCH__MAX_DOCS": "20"}
    config = load_config(path, flags={"state_db": "from_flag", "uri": None}, environ=environ)
    assert (config.state_db, config.batch.max_docs, config.batch.max_delay_ms) == (
        "from_flag",
        20,
        5,
    )


def test_config_path_from_environment(tmp_path: Path) -> None:
    """Without a path, PARTNER_SYNC_CONFIG names the file."""
    path = _write(tmp_path, 'state_db = "envpath"\n')
    assert load_config(None, environ={"PARTNER_SYNC_CONFIG": path}).state_db == "envpath"


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        pytest.param(
            {"PARTNER_SYNC_TRANSFORMS": "a, b,,c.py"}, ("a", "b", "c.py"), id="comma-list"
        ),
        pytest.param({"PARTNER_SYNC_LEASE__TTL_S": "2.5"}, 2.5, id="float"),
        pytest.param({"PARTNER_SYNC_HTTP__LISTEN": ""}, "", id="empty-listen-disables"),
        pytest.param({"PARTNER_SYNC_LOG__LEVEL": "DEBUG"}, "DEBUG", id="level-any-case"),
    ],
)
def test_environment_values_are_parsed(environ: dict[str, str], expected: object) -> None:
    """Environment strings are converted to the key's type."""
    config = load_config(None, environ=environ)
    key = next(iter(environ)).removeprefix("PARTNER_SYNC_").lower().split("__")
    value: object = config
    for part in key:
        value = getattr(value, part)
    assert value == expected


def test_uri_file_reads_a_mounted_secret(tmp_path: Path) -> None:
    """uri_file reads the URI from a file (trailing newline ignored), as a mounted Secret."""
    secret = tmp_path / "mongo-uri"
    secret.write_text("mongodb://app:s3cret@db:27017/?replicaSet=rs0\n")
    config = load_config(None, environ={"PARTNER_SYNC_URI_FILE": str(secret)})
    assert config.uri == "mongodb://app:s3cret@db:27017/?replicaSet=rs0"


def test_uri_file_and_uri_replace_each_other_across_layers(tmp_path: Path) -> None:
    """A flag --uri overrides a uri_file from the file; both in one place is an error."""
    secret = tmp_path / "mongo-uri"
    secret.write_text("mongodb://from-file:1/")
    path = _write(tmp_path, f'uri_file = "{secret}"\n')
    assert (
        load_config(path, flags={"uri": "mongodb://from-flag:2/"}, environ={}).uri
        == "mongodb://from-flag:2/"
    )
    both = _write(tmp_path, f'uri = "mongodb://h/"\nuri_file = "{secret}"\n', name="both.toml")
    with pytest.raises(ConfigError, match="not both"):
        load_config(both, environ={})


@pytest.mark.parametrize(
    ("text", "environ", "flags", "message"),
    [
        pytest.param(
            "[batch]\nmax_docs = 500\nmax_doc = 1\n",
            {},
            {},
            r"^{file}:3: batch\.max_doc: unknown key "
            r"\(known in \[batch\]: max_docs, max_delay_ms\)$",
            id="unknown-file-key",
        ),
        pytest.param(
            "colour = 'red'\n", {}, {}, r"^{file}:1: colour: unknown key$", id="unknown-top-key"
        ),
        pytest.param(
            "[metrics]\nport = 1\n",
            {},
            {},
            r"^{file}:1: metrics: unknown key$",
            id="unknown-section",
        ),
        pytest.param(
            "batch = 5\n", {}, {}, r"^{file}:1: batch: must be a table$", id="section-not-table"
        ),
        pytest.param(
            "\n\n[batch]\nmax_docs = '500'\n",
            {},
            {},
            r"^{file}:4: batch\.max_docs: must be an integer, got '500'$",
            id="string-for-int-in-file",
        ),
        pytest.param(
            "[batch]\nmax_docs = true\n",
            {},
            {},
            r"^{file}:2: batch\.max_docs: must be an integer, got True$",
            id="bool-for-int",
        ),
        pytest.param(
            "transforms = 'a'\nstate_db = 3\n",
            {},
            {},
            r"^{file}:2: state_db: must be a string, got int$",
            id="int-for-string",
        ),
        pytest.param(
            "transforms = [1]\n",
            {},
            {},
            r"^{file}:1: transforms: must be a list of strings$",
            id="list-of-ints",
        ),
        pytest.param(
            "[batch]\nmax_docs = 0\n",
            {},
            {},
            r"^{file}:2: batch\.max_docs: must be positive, got 0$",
            id="zero-batch",
        ),
        pytest.param(
            "[batch]\nmax_delay_ms = -1\n",
            {},
            {},
            r"^{file}:2: batch\.max_delay_ms: must not be negative",
            id="negative-delay",
        ),
        pytest.param(
            "[lease]\nttl_s = 0\n",
            {},
            {},
            r"^{file}:2: lease\.ttl_s: must be positive",
            id="zero-ttl",
        ),
        pytest.param(
            "origin_tag = 'trigger'\n",
            {},
            {},
            r"^{file}:1: origin_tag: must be one of session, field, got 'trigger'$",
            id="origin-tag",
        ),
        pytest.param(
            "tag_field = '$x'\n",
            {},
            {},
            r"^{file}:1: tag_field: .*cannot be a top-level field name",
            id="tag-field",
        ),
        pytest.param(
            "state_db = 'a.b'\n",
            {},
            {},
            r"^{file}:1: state_db: 'a\.b' is not a valid MongoDB database name$",
            id="state-db",
        ),
        pytest.param(
            "[http]\nlisten = '9464'\n",
            {},
            {},
            r"^{file}:2: http\.listen: expected HOST:PORT",
            id="listen-no-host",
        ),
        pytest.param(
            "[http]\nlisten = 'h:99999'\n",
            {},
            {},
            r"^{file}:2: http\.listen: port must be",
            id="listen-bad-port",
        ),
        pytest.param(
            "[http]\nlisten = '::1:80'\n",
            {},
            {},
            r"^{file}:2: http\.listen: an IPv6 host must be in brackets",
            id="listen-bare-ipv6",
        ),
        pytest.param(
            "[log]\nlevel = 'loud'\n",
            {},
            {},
            r"^{file}:2: log\.level: must be one of",
            id="log-level",
        ),
        pytest.param(
            "[log]\nformat = 'xml'\n",
            {},
            {},
            r"^{file}:2: log\.format: must be one of json, text",
            id="log-format",
        ),
        pytest.param(
            "uri = 'http://h/'\n", {}, {}, r"^{file}:1: uri: Invalid URI scheme", id="uri-scheme"
        ),
        pytest.param(
            "uri = 'mongodb://h/?replicaSet=rs0&nonsense=1'\n",
            {},
            {},
            r"^{file}:1: uri: .*nonsense",
            id="uri-unknown-option",
        ),
        pytest.param(
            "uri = 'mongodb+srv://a.example:27017/'\n",
            {},
            {},
            r"^{file}:1: uri: a mongodb\+srv:// URI needs exactly one host",
            id="srv-port",
        ),
        pytest.param(
            "",
            {"PARTNER_SYNC_BATCH__MAX_DOCS": "lots"},
            {},
            r"^env PARTNER_SYNC_BATCH__MAX_DOCS: batch\.max_docs: must be an integer, got 'lots'$",
            id="env-type",
        ),
        pytest.param(
            "",
            {"PARTNER_SYNC_WORKERS": "3"},
            {},
            r"^env PARTNER_SYNC_WORKERS: workers: unknown key$",
            id="env-unknown",
        ),
        pytest.param("", {}, {"uri": "mongodb://h:0x/"}, r"^flag --uri: uri: ", id="flag-uri"),
        pytest.param(
            "",
            {},
            {"batch.max_docs": -5},
            r"^flag --batch-max-docs: batch\.max_docs: must be positive",
            id="flag-nested",
        ),
        pytest.param(
            "",
            {"PARTNER_SYNC_URI_FILE": "/nonexistent/uri"},
            {},
            r"^env PARTNER_SYNC_URI_FILE: uri_file: cannot read /nonexistent/uri",
            id="uri-file-missing",
        ),
    ],
)
def test_invalid_configuration_is_one_line_naming_key_and_source(
    tmp_path: Path, text: str, environ: dict[str, str], flags: dict[str, object], message: str
) -> None:
    """Every invalid setting raises ConfigError with one line: source, key, and what is wrong."""
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, flags=flags, environ=environ)
    text_of_error = str(caught.value)
    assert "\n" not in text_of_error
    assert caught.value.exit_code == 2
    assert re.search(message.replace("{file}", re.escape(path)), text_of_error), text_of_error


@pytest.mark.parametrize(
    ("text", "line"),
    [
        pytest.param("[batch]\nmax_docs = 1\n\n[lease]\nttl_s = -1\n", 5, id="table"),
        pytest.param("batch = { max_docs = 1 }\nlease = { ttl_s = -1 }\n", 2, id="inline-table"),
        pytest.param("lease.ttl_s = -1\n", 1, id="dotted-key"),
        pytest.param(
            'transforms = """\nx = 1\nlease = 2\n"""\n[lease]\nttl_s = -1\n',
            6,
            id="multiline-string",
        ),
        pytest.param(
            "transforms = [\n  'a',\n  'b',\n]\n[lease]  # comment\nttl_s = -1\n", 6, id="array"
        ),
    ],
)
def test_error_line_numbers(tmp_path: Path, text: str, line: int) -> None:
    """The file:line of an error points at the line that sets the key, whatever the TOML form."""
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=rf"^{re.escape(path)}:{line}: lease\.ttl_s: "):
        load_config(path, environ={})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("uri = \n", "not valid TOML", id="toml-syntax"),
        pytest.param(None, "cannot read configuration file", id="missing-file"),
    ],
)
def test_unreadable_file(tmp_path: Path, text: str | None, message: str) -> None:
    """A missing file or broken TOML is a ConfigError naming the file."""
    path = _write(tmp_path, text) if text is not None else str(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match=message):
        load_config(path, environ={})


@pytest.mark.parametrize(
    "uri",
    [
        pytest.param("mongodb://app:hunter2@db:27017/?replicaSet=rs0", id="password"),
        pytest.param(
            "mongodb://app:hunter2@db:27017/?tlsCertificateKeyFilePassword=hunter2", id="tls-option"
        ),
    ],
)
def test_password_never_in_repr_or_str(uri: str) -> None:
    """repr(), str() and redacted_uri hide the password; the real URI stays usable."""
    config = load_config(None, flags={"uri": uri}, environ={})
    for shown in (repr(config), str(config), config.redacted_uri, f"{config}"):
        assert "hunter2" not in shown
    assert "app:***@db:27017" in repr(config)
    assert config.uri == uri


@pytest.mark.parametrize(
    ("environ", "flags", "source"),
    [
        pytest.param({}, {}, "default", id="default"),
        pytest.param({"PARTNER_SYNC_URI": "mongodb://h/"}, {}, "env PARTNER_SYNC_URI", id="env"),
        pytest.param(
            {"PARTNER_SYNC_URI": "mongodb://h/"}, {"uri": "mongodb://f/"}, "flag --uri", id="flag"
        ),
    ],
)
def test_uri_source_is_recorded(
    environ: dict[str, str], flags: dict[str, str], source: str
) -> None:
    """Config.uri_source names where the URI came from, for the reachability error."""
    config = load_config(None, flags=flags, environ=environ)
    assert config.uri_source == source
    assert "uri_source" not in repr(config)


def test_password_never_in_uri_errors() -> None:
    """A URI error message does not repeat the password it was given."""
    with pytest.raises(ConfigError) as caught:
        load_config(None, flags={"uri": "mongodb://app:hunter2@db/x/y"}, environ={})
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        pytest.param("127.0.0.1:9464", ("127.0.0.1", 9464), id="ipv4"),
        pytest.param("0.0.0.0:0", ("0.0.0.0", 0), id="any-port-0"),
        pytest.param("[::1]:80", ("::1", 80), id="ipv6"),
        pytest.param("localhost:9464", ("localhost", 9464), id="name"),
    ],
)
def test_parse_listen(listen: str, expected: tuple[str, int]) -> None:
    """Valid listen addresses split into host and port."""
    assert parse_listen(listen) == expected


async def test_check_reachable_names_the_server_when_nothing_listens() -> None:
    """An unreachable server is a ConfigError naming the (redacted) URI, within the timeout."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    uri = f"mongodb://u:hunter2@127.0.0.1:{port}/?directConnection=true"
    with pytest.raises(ConfigError) as caught:
        await check_reachable(uri, timeout_s=1.0, source="flag --uri")
    message = str(caught.value)
    assert message.startswith(
        f"flag --uri: uri: cannot reach MongoDB at mongodb://u:***@127.0.0.1:{port}/"
    )
    assert "hunter2" not in message and "\n" not in message
