"""What a relay process imports at start-up: optional features load only when configured
or first used, and the ``serve`` parent stays off the web stack.

Each check runs in a fresh interpreter (this test process has imported everything).
Start-up time and worker RSS themselves are measured by ``bench/run.py``, not here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from proof_messenger.relay.server_protocol import HTTP_PROTOCOL
from tests.conftest import REPO

#: Loaded on first use (or when their config section is present), never at start-up.
LAZY = [
    "webauthn",
    "httpx",
    "jwt",
    "rich",
    "greenlet",
    "websockets",
    "proof_messenger.relay.oidc",
    "proof_messenger.relay.policy_runtime",
    # package data (migrations, templates, static files) is read from the package
    # directory: importlib.resources would bring zipfile, bz2 and lzma
    "importlib.resources",
    "zipfile",
]
LAZY_POLICY = "proof_messenger.relay.policy_runtime"


def write_config(tmp: Path, extra: str = "") -> Path:
    cfg = tmp / "relay.yaml"
    cfg.write_text(
        f"""bind_address: "127.0.0.1:8999"
workers: 2
audience: startup.example
master_key_file: {tmp / "master.key"}
log_key_file: {tmp / "log.key"}
database:
  url: "sqlite:///{tmp / "relay.db"}"
{extra}"""
    )
    return cfg


def run_python(code: str, cfg: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PROOF_MESSENGER_CONFIG": str(cfg)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, env=env, timeout=120, cwd=cfg.parent
    )
    assert out.returncode == 0, out.stderr.decode()
    result: dict[str, Any] = json.loads(out.stdout.decode().strip().splitlines()[-1])
    return result


WORKER = (
    f"LAZY = {LAZY!r}"
    + """
import asyncio, json, sys
from proof_messenger.relay.asgi import app_factory
app = app_factory()
async def main():
    async with app.router.lifespan_context(app):
        pass
asyncio.run(main())
loaded = sorted(m for m in LAZY if m in sys.modules)
import structlog.dev
structlog_rich = structlog.dev.rich is not None
from rich.console import Console  # the CLI's rich still imports after structlog
paths = sorted({getattr(r, "path", "") for r in app.router.routes})
print(json.dumps({"loaded": loaded, "structlog_rich": structlog_rich, "paths": paths}))
"""
)


def test_worker_imports_no_optional_feature_when_unconfigured(tmp_path: Path) -> None:
    result = run_python(WORKER, write_config(tmp_path))
    assert result["loaded"] == []
    assert result["structlog_rich"] is False
    # The feature routes exist all the same (their modules load on the first call).
    for path in ("/webauthn/register/options", "/webauthn/register/verify", "/policy"):
        assert path in result["paths"]
    assert "/authorizations/{tx_key}" in result["paths"]
    assert "/webhooks" in result["paths"] and "/log/checkpoint" in result["paths"]


def test_worker_imports_the_policy_engine_when_configured(tmp_path: Path) -> None:
    policy = """policy:
  rules:
    - name: everything
      default: true
"""
    result = run_python(WORKER, write_config(tmp_path, policy))
    assert LAZY_POLICY in result["loaded"]
    assert "proof_messenger.relay.oidc" not in result["loaded"]


#: Not imported by ``_prepare``. (``importlib.resources`` and ``zipfile``, in this list for
#: the single-worker parent, are left out: gunicorn's master imports them itself, through
#: ``importlib.metadata``.)
HEAVY = (
    "starlette",
    "prometheus_client",
    "rich",
    "webauthn",
    "httpx",
    "jwt",
    "proof_messenger.relay.app",
    "proof_messenger.relay.log_routes",
    "proof_messenger.protocol",
    "proof_messenger.webhooks.config",
)

#: ``workers: 2``: the parent hands over to gunicorn. ``BaseApplication.run`` is replaced
#: by a probe that records what the parent holds when gunicorn would start (it must not
#: have imported the web stack, and must own no thread, socket, database file or event
#: loop, since workers are forked from it), then does gunicorn's preload (``load()``) and
#: checks the preload created none of those either.
PARENT = (
    f"HEAVY = {HEAVY!r}"
    + """
import asyncio, json, os, sys, threading
from proof_messenger.cli._gunicorn import RelayApplication

def resources():
    fds = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass
    with open("/proc/self/maps") as maps:
        mapped = sorted({line.split()[-1] for line in maps if ".db" in line})
    sockets = sorted(t for t in fds.values() if t.startswith("socket:"))
    files = sorted(t for t in fds.values() if t.startswith("/") and not t.startswith("/dev/"))
    loop = asyncio.get_event_loop_policy()._local._loop
    return {"threads": threading.active_count(), "sockets": sockets, "files": files,
            "mapped": mapped, "loop": loop is not None}

calls = []
def probe(self):
    before = {"heavy": sorted(m for m in HEAVY if m in sys.modules), **resources(),
              "watchfiles": "watchfiles" in sys.modules,
              "multiproc_dir": bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))}
    cfg = self.cfg
    worker = cfg.worker_class
    preloaded = self.wsgi()
    from prometheus_client import values
    after = {**resources(), "preloaded": f"{preloaded.__module__}:{preloaded.__name__}",
             "multiproc_values": values.ValueClass.__name__}
    calls.append({"before": before, "after": after, "cfg": {
        "workers": cfg.workers, "preload_app": cfg.preload_app,
        "bind": cfg.bind, "graceful_timeout": cfg.graceful_timeout,
        "control_socket_disable": cfg.control_socket_disable,
        "forwarded_allow_ips": cfg.forwarded_allow_ips,
        "child_exit": cfg.child_exit.__name__,
        "logger_class": cfg.logger_class.__name__,
        "worker": {k: worker.CONFIG_KWARGS[k] for k in ("ws", "http", "factory", "access_log",
            "proxy_headers", "server_header", "date_header", "timeout_graceful_shutdown")},
    }})
RelayApplication.run = probe
import uvicorn
uvicorn.run = lambda *a, **k: calls.append({"uvicorn": True})
sys.argv = ["proof-messenger", "serve"]
from proof_messenger.cli.main import main
try:
    main()
except SystemExit as exc:
    assert not exc.code, exc.code
print(json.dumps(calls[0]))
"""
)


def test_serve_parent_prepares_without_the_web_stack(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    result = run_python(PARENT, cfg)
    before, after = result["before"], result["after"]
    # The once-only work (migrations, keys) ran without the web stack, and its store
    # session is closed: no aiosqlite thread, no open database file, no event loop.
    assert before["heavy"] == []
    assert before["watchfiles"] is False  # uvicorn's --reload helper, inherited by workers
    assert (tmp_path / "master.key").exists() and (tmp_path / "log.key").exists()
    assert (tmp_path / "relay.db").exists()
    assert before["multiproc_dir"] is True
    for state in (before, after):
        assert state["threads"] == 1, state
        assert state["sockets"] == [], state
        assert not any("relay.db" in f for f in state["files"]), state
        assert state["mapped"] == [], state
        assert state["loop"] is False, state
    # The preload is the import of the factory only; metrics use the multiprocess values
    # (PROMETHEUS_MULTIPROC_DIR was set before prometheus_client was imported).
    assert after["preloaded"] == "proof_messenger.relay.asgi:app_factory"
    assert after["multiproc_values"] == "MmapedValue"  # not MutexValue
    assert result["cfg"] == {
        "workers": 2,
        "preload_app": True,
        "bind": ["127.0.0.1:8999"],
        "graceful_timeout": 35,
        "control_socket_disable": True,
        "forwarded_allow_ips": ["127.0.0.1"],
        "child_exit": "_child_exit",
        "logger_class": "JsonLogger",
        "worker": {
            "ws": "none",
            "http": HTTP_PROTOCOL,
            "factory": True,
            "access_log": False,
            "proxy_headers": True,
            "server_header": False,
            "date_header": True,
            "timeout_graceful_shutdown": 30,
        },
    }


SINGLE = (
    f"HEAVY = {HEAVY!r}"
    + """
import json, sys
from proof_messenger.relay import server_protocol  # as serve does: uvicorn without watchfiles
import uvicorn
calls = []
uvicorn.run = lambda *a, **k: calls.append(k)
sys.argv = ["proof-messenger", "serve"]
from proof_messenger.cli.main import main
try:
    main()
except SystemExit as exc:
    assert not exc.code, exc.code
heavy = sorted(m for m in HEAVY + ("importlib.resources", "zipfile") if m in sys.modules)
print(json.dumps({"heavy": heavy, "watchfiles": "watchfiles" in sys.modules, "gunicorn": "gunicorn" in sys.modules, "run": {k: v for k, v in
    calls[0].items() if k in ("ws", "http", "workers", "factory", "timeout_graceful_shutdown")}}))
"""
)


def test_serve_with_one_worker_runs_uvicorn_in_process(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    cfg.write_text(cfg.read_text().replace("workers: 2", "workers: 1"))
    result = run_python(SINGLE, cfg)
    assert result == {
        "heavy": [],
        "watchfiles": False,
        "gunicorn": False,
        "run": {
            "ws": "none",
            "http": HTTP_PROTOCOL,
            "workers": 1,
            "factory": True,
            "timeout_graceful_shutdown": 30,
        },
    }


def test_uvicorn_is_imported_without_watchfiles_which_stays_importable(tmp_path: Path) -> None:
    code = """
import json, sys
from proof_messenger.relay import server_protocol
import uvicorn.supervisors
hidden = "watchfiles" not in sys.modules
import watchfiles  # restored: only uvicorn's own import was refused
print(json.dumps({"hidden": hidden, "reload": uvicorn.supervisors.ChangeReload.__name__}))
"""
    assert run_python(code, write_config(tmp_path)) == {"hidden": True, "reload": "StatReload"}
