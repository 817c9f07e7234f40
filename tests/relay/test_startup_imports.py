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


PARENT = """
import json, sys
import uvicorn
calls = []
uvicorn.run = lambda *a, **k: calls.append(k)
sys.argv = ["proof-messenger", "serve"]
from proof_messenger.cli.main import main
try:
    main()
except SystemExit as exc:
    assert not exc.code, exc.code
heavy = sorted(m for m in ("starlette", "prometheus_client", "rich", "webauthn", "httpx", "jwt",
    "proof_messenger.relay.app", "proof_messenger.relay.log_routes", "proof_messenger.protocol",
    "proof_messenger.webhooks.config", "importlib.resources", "zipfile") if m in sys.modules)
print(json.dumps({"heavy": heavy, "run": {k: v for k, v in calls[0].items() if k in ("ws",
    "workers", "factory")}}))
"""


def test_serve_parent_prepares_without_the_web_stack(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    result = run_python(PARENT, cfg)
    assert result["heavy"] == []
    assert result["run"] == {"ws": "none", "workers": 2, "factory": True}
    # It still did the once-only work before the workers start: schema, both keys.
    assert (tmp_path / "master.key").exists() and (tmp_path / "log.key").exists()
    assert (tmp_path / "relay.db").exists()
