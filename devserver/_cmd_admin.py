"""Handshake, server information, parameters, sessions and fail point commands."""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import time
from datetime import UTC, datetime
from typing import Any

from bson import Int64, ObjectId

from devserver._command import Context, command
from devserver._engine import matches
from devserver._errors import CommandError

__all__ = ["hello_reply"]

ELECTION_ID = ObjectId("7fffffff0000000000000001")
TOPOLOGY_COUNTER = 0


def hello_reply(ctx: Context, *, legacy: bool) -> dict[str, Any]:
    """The reply that makes a driver see a writable one-node replica-set primary."""
    state = ctx.state
    now = datetime.now(UTC)
    op_time = {"ts": state.clock.now, "t": Int64(1)}
    reply: dict[str, Any] = {
        "topologyVersion": {"processId": state.process_id, "counter": Int64(TOPOLOGY_COUNTER)},
        "hosts": [state.address],
        "setName": state.config.replset,
        "setVersion": 1,
        ("ismaster" if legacy else "isWritablePrimary"): True,
        "secondary": False,
        "primary": state.address,
        "me": state.address,
        "electionId": ELECTION_ID,
        "lastWrite": {
            "opTime": op_time,
            "lastWriteDate": now,
            "majorityOpTime": op_time,
            "majorityWriteDate": now,
        },
        "maxBsonObjectSize": 16 * 1024 * 1024,
        "maxMessageSizeBytes": 48_000_000,
        "maxWriteBatchSize": 100_000,
        "localTime": now,
        "logicalSessionTimeoutMinutes": 30,
        "connectionId": ctx.conn.id,
        "minWireVersion": 0,
        "maxWireVersion": state.version.max_wire_version,
        "readOnly": False,
    }
    if ctx.body.get("helloOk"):
        reply["helloOk"] = True
    return reply


async def _await_topology_change(ctx: Context) -> None:
    """Awaitable hello: the topology never changes, so wait out maxAwaitTimeMS (or shutdown)."""
    version = ctx.body.get("topologyVersion")
    max_await = ctx.body.get("maxAwaitTimeMS")
    if not isinstance(version, dict) or max_await is None:
        return
    if version.get("processId") != ctx.state.process_id:
        return  # a client that saw another process: answer at once
    if int(version.get("counter", -1)) != TOPOLOGY_COUNTER:
        return
    stopping = ctx.state.stopping
    if stopping is None:
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), timeout=max(0, int(max_await)) / 1000)


@command("hello")
async def hello(ctx: Context) -> dict[str, Any]:
    await _await_topology_change(ctx)
    return hello_reply(ctx, legacy=False)


@command("isMaster", "ismaster")
async def is_master(ctx: Context) -> dict[str, Any]:
    await _await_topology_change(ctx)
    return hello_reply(ctx, legacy=True)


@command("ping")
async def ping(ctx: Context) -> dict[str, Any]:
    return {}


@command("buildInfo", "buildinfo")
async def build_info(ctx: Context) -> dict[str, Any]:
    version = ctx.state.version
    return {
        "version": version.version,
        "gitVersion": "partner-sync-devserver",
        "versionArray": version.version_array,
        "modules": [],
        "allocator": "system",
        "javascriptEngine": "none",
        "sysInfo": "deprecated",
        "bits": 64,
        "debug": False,
        "maxBsonObjectSize": 16 * 1024 * 1024,
        "storageEngines": ["devserver"],
        "openssl": {"running": "disabled"},
        "buildEnvironment": {"target_os": platform.system().lower()},
    }


@command("serverStatus")
async def server_status(ctx: Context) -> dict[str, Any]:
    state = ctx.state
    now = datetime.now(UTC)
    return {
        "host": state.address,
        "version": state.version.version,
        "process": "devserver",
        "pid": Int64(os.getpid()),
        "uptime": (now - state.started).total_seconds(),
        "uptimeMillis": Int64(int((now - state.started).total_seconds() * 1000)),
        "localTime": now,
        "connections": {
            "current": state.connections_current,
            "totalCreated": state.connections_created,
        },
        "opcounters": {kind: Int64(count) for kind, count in state.opcounters.items()},
        "metrics": {"cursor": {"open": {"total": Int64(len(state.cursors))}}},
        "transactions": {"currentOpen": Int64(len(state.sessions.open))},
        "storageEngine": {"name": "devserver", "persistent": state.config.dbpath is not None},
        "repl": {
            "setName": state.config.replset,
            "isWritablePrimary": True,
            "primary": state.address,
            "me": state.address,
            "hosts": [state.address],
        },
    }


@command("getParameter")
async def get_parameter(ctx: Context) -> dict[str, Any]:
    params = {
        "featureCompatibilityVersion": {"version": ctx.state.version.name},
        "enableTestCommands": True,
        **ctx.state.parameters,
    }
    requested = ctx.body["getParameter"]
    if requested == "*" or (isinstance(requested, dict) and requested.get("allParameters")):
        return dict(params)
    wanted = [k for k in ctx.body if k not in ("getParameter", "$db", "lsid", "$clusterTime")]
    wanted = [k for k in wanted if not k.startswith("$")]
    if not wanted:
        raise CommandError(72, "InvalidOptions", "no option found to get")
    reply = {}
    for key in wanted:
        if key not in params:
            raise CommandError(72, "InvalidOptions", f"no option found to get: {key}")
        reply[key] = params[key]
    return reply


@command("setParameter", admin_only=True)
async def set_parameter(ctx: Context) -> dict[str, Any]:
    changed = {
        k: v for k, v in ctx.body.items() if k not in ("setParameter", "lsid") and k[0] != "$"
    }
    if not changed:
        raise CommandError(
            72, "InvalidOptions", "no option found to set, use help:true to see options"
        )
    reply = {}
    for key, value in changed.items():
        if key != "transactionLifetimeLimitSeconds":
            raise CommandError(
                72, "InvalidOptions", f"attempted to set unrecognized parameter [{key}]"
            )
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 1:
            raise CommandError(2, "BadValue", "transactionLifetimeLimitSeconds must be >= 1")
        reply["was"] = ctx.state.parameters[key]
        ctx.state.parameters[key] = int(value)
    return reply


@command("listDatabases", admin_only=True)
async def list_databases(ctx: Context) -> dict[str, Any]:
    storage = ctx.state.storage
    name_only = bool(ctx.body.get("nameOnly"))
    filter_doc = ctx.body.get("filter") or {}
    databases = []
    total = 0
    for name in storage.database_names():
        size = sum(storage.count(name, c) for c in storage.collection_names(name)) * 64 + 4096
        entry: dict[str, Any] = {"name": name}
        if not name_only:
            entry.update(sizeOnDisk=Int64(size), empty=False)
            total += size
        if filter_doc and not matches(filter_doc, {"sizeOnDisk": size, "empty": False, **entry}):
            continue
        databases.append({"name": name} if name_only else entry)
    reply: dict[str, Any] = {"databases": databases}
    if not name_only:
        reply["totalSize"] = Int64(total)
        reply["totalSizeMb"] = Int64(total // (1024 * 1024))
    return reply


def _lsid_keys(ctx: Context, field_name: str) -> set[bytes]:
    ids = ctx.body.get(field_name)
    if not isinstance(ids, list):
        raise CommandError(14, "TypeMismatch", f"{field_name} must be an array of session ids")
    keys = set()
    for lsid in ids:
        if isinstance(lsid, dict) and isinstance(lsid.get("id"), bytes):
            keys.add(ctx.state.sessions.session(lsid).key)
    return keys


async def _end_sessions(ctx: Context, field_name: str) -> dict[str, Any]:
    keys = _lsid_keys(ctx, field_name)
    for txn in ctx.state.sessions.forget(keys):
        ctx.state.abort(txn, "session ended")
    ctx.state.cursors.close_for_sessions(keys)
    return {}


@command("endSessions")
async def end_sessions(ctx: Context) -> dict[str, Any]:
    return await _end_sessions(ctx, "endSessions")


@command("killSessions")
async def kill_sessions(ctx: Context) -> dict[str, Any]:
    return await _end_sessions(ctx, "killSessions")


@command("killAllSessions")
async def kill_all_sessions(ctx: Context) -> dict[str, Any]:
    sessions = ctx.state.sessions
    for txn in sessions.forget(set(sessions.sessions)):
        ctx.state.abort(txn, "session killed")
    return {}


@command("refreshSessions")
async def refresh_sessions(ctx: Context) -> dict[str, Any]:
    for key in _lsid_keys(ctx, "refreshSessions"):
        session = ctx.state.sessions.sessions.get(key)
        if session is not None:
            session.last_used = time.monotonic()
    return {}


@command("configureFailPoint", admin_only=True)
async def configure_fail_point(ctx: Context) -> dict[str, Any]:
    name = ctx.body["configureFailPoint"]
    if name != "failCommand":
        raise CommandError(2, "BadValue", f"Cannot find failpoint: {name}")
    count = ctx.state.fail_command.configure(ctx.body.get("mode"), ctx.body.get("data"))
    return {"count": count}


@command("getCmdLineOpts", admin_only=True)
async def get_cmd_line_opts(ctx: Context) -> dict[str, Any]:
    config = ctx.state.config
    parsed: dict[str, Any] = {
        "net": {"bindIp": config.host, "port": ctx.state.address.split(":")[-1]}
    }
    parsed["replication"] = {"replSet": config.replset}
    if config.dbpath:
        parsed["storage"] = {"dbPath": config.dbpath}
    return {"argv": ["devserver"], "parsed": parsed}


@command("replSetGetStatus", admin_only=True)
async def repl_set_get_status(ctx: Context) -> dict[str, Any]:
    state = ctx.state
    op_time = {"ts": state.clock.now, "t": Int64(1)}
    return {
        "set": state.config.replset,
        "date": datetime.now(UTC),
        "myState": 1,
        "term": Int64(1),
        "members": [
            {
                "_id": 0,
                "name": state.address,
                "health": 1.0,
                "state": 1,
                "stateStr": "PRIMARY",
                "optime": op_time,
                "self": True,
            }
        ],
    }


@command("whatsmyuri")
async def whats_my_uri(ctx: Context) -> dict[str, Any]:
    return {"you": ctx.conn.peer}


@command("connectionStatus")
async def connection_status(ctx: Context) -> dict[str, Any]:
    return {"authInfo": {"authenticatedUsers": [], "authenticatedUserRoles": []}}


@command("hostInfo")
async def host_info(ctx: Context) -> dict[str, Any]:
    return {
        "system": {"currentTime": datetime.now(UTC), "hostname": platform.node()},
        "os": {"type": platform.system()},
    }


@command("saslStart", "saslContinue", "authenticate", "logout")
async def authenticate(ctx: Context) -> dict[str, Any]:
    raise CommandError(
        18,
        "AuthenticationFailed",
        "the development server has no authentication: connect without credentials",
    )
