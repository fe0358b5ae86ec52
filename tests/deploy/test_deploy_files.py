"""The deployment files agree with the product: commands exist, probes and ports match the
configuration, the compose stack starts in the right order, the configs they ship load."""

from __future__ import annotations

import importlib.util
import json
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from worker.cli import COMMANDS, main
from worker.config import Config, load_config, parse_listen
from worker.errors import ConfigError, StateRefused

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


# --- helpers -----------------------------------------------------------------------------------


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs of deploy/Dockerfile, continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in (DEPLOY / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending = f"{pending} {line}" if pending else line
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        keyword, _, arguments = pending.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def _dockerfile(keyword: str) -> list[str]:
    return [arguments for name, arguments in _dockerfile_instructions() if name == keyword]


def _exec_form(arguments: str) -> list[str]:
    parsed = json.loads(arguments)
    assert isinstance(parsed, list) and all(isinstance(item, str) for item in parsed)
    return parsed


def _cli_accepts(argv: list[str]) -> None:
    """Assert `argv` (after the program name) names a partner-sync command and its options."""
    command_name, *options = argv
    assert command_name in COMMANDS, f"{command_name} is not a partner-sync command"
    if command_name == "status":
        command = main.get_command(None, command_name)  # type: ignore[arg-type]
        assert command is not None
        known = {opt for param in command.params for opt in getattr(param, "opts", [])}
        assert set(options) <= known, f"unknown options {set(options) - known}"


def _console_scripts() -> dict[str, str]:
    with open(ROOT / "pyproject.toml", "rb") as handle:
        return dict(tomllib.load(handle)["project"]["scripts"])


def _compose() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "docker-compose.yaml").read_text()))


def _kubernetes_documents() -> list[dict[str, Any]]:
    documents: list[dict[str, Any]] = []
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        documents.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return documents


def _of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for doc in _kubernetes_documents() if doc["kind"] == kind]


def _named(kind: str, name: str) -> dict[str, Any]:
    (document,) = [doc for doc in _of_kind(kind) if doc["metadata"]["name"] == name]
    return document


def _worker_containers() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for deployment in _of_kind("Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            if container["name"] == "partner-sync":
                yield deployment, container


def _load_with_secret(config_text: str, tmp_path: Path, uri: str) -> Config:
    """Load a shipped config.toml with its uri_file pointed at a temporary copy of the secret."""
    uri_file = tmp_path / "uri"
    uri_file.write_text(uri)
    settings = tomllib.loads(config_text)
    text = config_text
    if "uri_file" in settings:
        text = config_text.replace(settings["uri_file"], str(uri_file))
    path = tmp_path / "config.toml"
    path.write_text(text)
    return load_config(str(path), environ={"PARTNER_SYNC_URI_FILE": str(uri_file)})


def _systemd_unit() -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> every value given (systemd keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in (DEPLOY / "systemd" / "partner-sync.service").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


# --- Dockerfile --------------------------------------------------------------------------------


def test_dockerfile_entry_point_runs_the_worker() -> None:
    """ENTRYPOINT is the partner-sync console script and CMD is `run`."""
    (entrypoint,) = _dockerfile("ENTRYPOINT")
    (cmd,) = _dockerfile("CMD")
    program = _exec_form(entrypoint)
    assert program == ["partner-sync"]
    assert program[0] in _console_scripts()
    assert _exec_form(cmd) == ["run"]
    _cli_accepts(_exec_form(cmd))


def test_dockerfile_healthcheck_is_status_check() -> None:
    """HEALTHCHECK runs `partner-sync status --check`, a command and option that exist."""
    (healthcheck,) = _dockerfile("HEALTHCHECK")
    command = _exec_form(healthcheck.split(" CMD ", 1)[1])
    assert command == ["partner-sync", "status", "--check"]
    _cli_accepts(command[1:])


def test_dockerfile_runs_as_non_root_and_exposes_the_http_port() -> None:
    """The image runs as a non-root user and EXPOSEs the port its http.listen binds."""
    users = _dockerfile("USER")
    assert users and users[-1].split(":")[0] not in ("0", "root")
    environment = " ".join(_dockerfile("ENV"))
    listen = environment.split("PARTNER_SYNC_HTTP__LISTEN=", 1)[1].split()[0]
    host, port = parse_listen(listen)
    assert host == "0.0.0.0"
    assert _dockerfile("EXPOSE") == [str(port)]


def test_dockerfile_copies_what_exists_and_the_context_allows_it() -> None:
    """Every COPY source exists and is not excluded by the Dockerfile's ignore file."""
    allowed = {
        line.removeprefix("!").rstrip("/")
        for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    for arguments in _dockerfile("COPY"):
        if arguments.startswith("--from="):
            continue
        *sources, _ = arguments.split()
        for source in sources:
            assert (ROOT / source).exists(), source
            assert source.rstrip("/") in allowed, source


# --- docker-compose.yaml -----------------------------------------------------------------------


def _depends(service: dict[str, Any]) -> dict[str, str]:
    depends = service.get("depends_on") or {}
    return {
        name: (spec or {}).get("condition", "service_started") for name, spec in depends.items()
    }


def test_compose_mongo_is_a_replica_set_initiated_by_its_healthcheck() -> None:
    """MongoDB 8 runs with --replSet; its health check initiates the set and waits for primary."""
    mongo = _compose()["services"]["mongo"]
    assert mongo["image"].startswith("mongo:8")
    assert "--replSet" in mongo["command"]
    replica_set = mongo["command"][mongo["command"].index("--replSet") + 1]
    test = " ".join(mongo["healthcheck"]["test"])
    assert "rs.initiate" in test and f'_id: "{replica_set}"' in test
    assert "isWritablePrimary" in test


def test_compose_nothing_starts_before_mongo_is_healthy() -> None:
    """Every service reaches mongo through depends_on chains whose first link waits for health."""
    services = _compose()["services"]
    for name in services:
        if name == "mongo":
            continue
        seen, frontier = set(), [name]
        waits_for_health = False
        while frontier:
            current = frontier.pop()
            for dependency, condition in _depends(services[current]).items():
                assert dependency in services, f"{current} depends on unknown {dependency}"
                if dependency == "mongo":
                    waits_for_health |= condition == "service_healthy"
                elif dependency not in seen:
                    assert condition in ("service_healthy", "service_completed_successfully")
                    seen.add(dependency)
                    frontier.append(dependency)
        assert waits_for_health, f"{name} may start before mongo is healthy"


def test_compose_worker_runs_the_example_transforms() -> None:
    """The worker service runs `run` with transforms.examples.customers, which is importable."""
    worker = _compose()["services"]["worker"]
    _cli_accepts(worker["command"])
    assert worker["command"] == ["run"]
    transforms = worker["environment"]["PARTNER_SYNC_TRANSFORMS"].split(",")
    assert "transforms.examples.customers" in transforms
    for module in transforms:
        assert importlib.util.find_spec(module) is not None, module
    backfill = _compose()["services"]["backfill"]
    _cli_accepts(backfill["command"])
    assert _depends(worker) == {"backfill": "service_completed_successfully"}


def test_compose_worker_publishes_its_http_listen_port() -> None:
    """The published port is the one PARTNER_SYNC_HTTP__LISTEN binds, on all interfaces."""
    worker = _compose()["services"]["worker"]
    host, port = parse_listen(worker["environment"]["PARTNER_SYNC_HTTP__LISTEN"])
    assert host == "0.0.0.0"
    assert any(str(mapping).endswith(f":{port}:{port}") for mapping in worker["ports"])


def test_compose_environments_are_valid_configuration() -> None:
    """Every service's PARTNER_SYNC_* variables load without a configuration error."""
    for service in _compose()["services"].values():
        environ = {k: str(v) for k, v in (service.get("environment") or {}).items()}
        if any(key.startswith("PARTNER_SYNC_") for key in environ):
            load_config(None, environ=environ)  # raises ConfigError naming the variable


@pytest.mark.parametrize("service", ["seed", "old-client", "new-client"])
def test_compose_writer_services_run_scripts_that_exist(service: str) -> None:
    """Writer services run deploy/compose/writer.py (mounted) with a role it accepts."""
    spec = _compose()["services"][service]
    host_dir, _, mount = spec["volumes"][0].partition(":")
    mount = mount.split(":")[0]
    script = spec["entrypoint"][1]
    assert script.startswith(mount + "/")
    local = ROOT / host_dir / script.removeprefix(mount + "/")
    assert local.is_file()
    module_spec = importlib.util.spec_from_file_location("compose_writer", local)
    assert module_spec is not None and module_spec.loader is not None
    writer = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(writer)
    writer.build_parser().parse_args(spec["command"])  # exits (SystemExit) when not accepted
    assert _depends(spec)  # never started on its own


# --- Kubernetes --------------------------------------------------------------------------------


def _configmap_config(tmp_path: Path) -> Config:
    config_text = _named("ConfigMap", "partner-sync-config")["data"]["config.toml"]
    uri = _named("Secret", "partner-sync-mongo")["stringData"]["uri"]
    return _load_with_secret(config_text, tmp_path, uri)


def test_kubernetes_config_and_secret_load(tmp_path: Path) -> None:
    """The ConfigMap's config.toml loads, with the Secret's URI read through uri_file."""
    config = _configmap_config(tmp_path)
    assert config.uri == _named("Secret", "partner-sync-mongo")["stringData"]["uri"]
    assert "CHANGE-ME" not in repr(config)


def test_kubernetes_probes_and_ports_match_the_config(tmp_path: Path) -> None:
    """Liveness /healthz, readiness /readyz, on the containerPort that http.listen binds."""
    host, port = parse_listen(_configmap_config(tmp_path).http.listen)
    assert host == "0.0.0.0"  # the kubelet probes the pod IP
    containers = list(_worker_containers())
    assert len(containers) == 2  # the sidecar and the standalone Deployment
    for _, container in containers:
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        expected = {
            "livenessProbe": "/healthz",
            "readinessProbe": "/readyz",
            "startupProbe": "/healthz",
        }
        for probe, path in expected.items():
            http_get = container[probe]["httpGet"]
            assert http_get["path"] == path
            assert ports.get(http_get["port"], http_get["port"]) == port


def test_kubernetes_containers_mount_config_and_secret(tmp_path: Path) -> None:
    """PARTNER_SYNC_CONFIG and uri_file point into mounts of the ConfigMap and the Secret."""
    config_text = _named("ConfigMap", "partner-sync-config")["data"]["config.toml"]
    uri_file = Path(tomllib.loads(config_text)["uri_file"])
    for deployment, container in _worker_containers():
        _cli_accepts(container["args"])
        assert container["args"] == ["run"]
        env = {item["name"]: item["value"] for item in container["env"]}
        config_path = Path(env["PARTNER_SYNC_CONFIG"])
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        mounts = {Path(m["mountPath"]): volumes[m["name"]] for m in container["volumeMounts"]}
        assert mounts[config_path.parent]["configMap"]["name"] == "partner-sync-config"
        assert mounts[uri_file.parent]["secret"]["secretName"] == "partner-sync-mongo"
        assert container["resources"]["requests"]


def test_kubernetes_pods_shut_down_gracefully_and_safely(tmp_path: Path) -> None:
    """Grace period outlasts the lease, service links are off, the worker is not root."""
    ttl = _configmap_config(tmp_path).lease.ttl_s
    for deployment, container in _worker_containers():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] >= ttl
        assert pod["enableServiceLinks"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_kubernetes_standalone_has_two_replicas_and_a_metrics_service() -> None:
    """The standalone Deployment runs two replicas (one lease holder, one standby)."""
    standalone = _named("Deployment", "partner-sync")
    assert standalone["spec"]["replicas"] == 2
    service = _named("Service", "partner-sync-metrics")
    assert service["spec"]["selector"] == standalone["spec"]["selector"]["matchLabels"]
    # A Service named like the prefix would inject PARTNER_SYNC_* variables into pods.
    assert all(doc["metadata"]["name"] != "partner-sync" for doc in _of_kind("Service"))


# --- systemd -----------------------------------------------------------------------------------


def test_systemd_unit_runs_the_worker_with_restart_policy() -> None:
    """ExecStart runs `partner-sync run`; restarts on failure except configuration/state exits."""
    service = _systemd_unit()["Service"]
    (exec_start,) = service["ExecStart"]
    argv = shlex.split(exec_start)
    assert Path(argv[0]).name in _console_scripts()
    _cli_accepts(argv[1:])
    assert argv[1:] == ["run"]
    assert service["Restart"] == ["on-failure"]
    prevented = set(service["RestartPreventExitStatus"][0].split())
    assert prevented == {str(ConfigError.exit_code), str(StateRefused.exit_code)}
    assert service["EnvironmentFile"]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        pytest.param("NoNewPrivileges", "yes", id="no-new-privileges"),
        pytest.param("ProtectSystem", "strict", id="protect-system"),
        pytest.param("ProtectHome", "yes", id="protect-home"),
        pytest.param("PrivateTmp", "yes", id="private-tmp"),
        pytest.param("DynamicUser", "yes", id="dynamic-user"),
        pytest.param("CapabilityBoundingSet", "", id="no-capabilities"),
        pytest.param("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX", id="address-families"),
    ],
)
def test_systemd_unit_is_hardened(key: str, value: str) -> None:
    """The unit sets the hardening options operators expect."""
    assert _systemd_unit()["Service"][key] == [value]


def test_systemd_config_and_environment_file_load(tmp_path: Path) -> None:
    """The shipped config.toml and environment file load together with the credential URI."""
    unit = _systemd_unit()["Service"]
    environ = dict(item.split("=", 1) for item in unit["Environment"])
    assert environ["PARTNER_SYNC_URI_FILE"] == "%d/mongo-uri"  # the LoadCredential directory
    assert unit["LoadCredential"][0].startswith("mongo-uri:")
    env_file = {
        key: value
        for key, _, value in (
            line.partition("=")
            for line in (DEPLOY / "systemd" / "partner-sync.env").read_text().splitlines()
            if line.strip() and not line.startswith("#")
        )
    }
    uri_file = tmp_path / "mongo-uri"
    uri_file.write_text("mongodb://u:p@db1,db2/?replicaSet=rs0\n")
    config = load_config(
        str(DEPLOY / "systemd" / "config.toml"),
        environ={**env_file, "PARTNER_SYNC_URI_FILE": str(uri_file)},
    )
    assert config.uri == "mongodb://u:p@db1,db2/?replicaSet=rs0"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    """systemd-analyze verify accepts the unit (with ExecStart pointed at an existing binary)."""
    unit = (DEPLOY / "systemd" / "partner-sync.service").read_text()
    unit = unit.replace("/opt/partner-sync/bin/partner-sync", "/bin/true")
    path = tmp_path / "partner-sync.service"
    path.write_text(unit)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
