"""Run a throw-away nginx in the foreground from a temp prefix (used here and by scale-out).

nginx's master runs as root in CI, so everything it writes (pid, logs, temp files) is kept under
one prefix directory that its unprivileged workers can traverse; nothing goes to /var.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
NGINX_DIR = REPO_ROOT / "deploy" / "nginx"
SCALEOUT_TEMPLATE = NGINX_DIR / "scaleout-test.conf.template"
NGINX_BINARY = shutil.which("nginx") or (
    "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
)


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1 (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def render_scaleout_config(
    port: int, upstreams: Sequence[str], prefix: Path, template: Path = SCALEOUT_TEMPLATE
) -> str:
    """Fill the scale-out template.

    `upstreams` are "host:port" strings, or full `server ...;` lines (to add parameters such as
    `max_fails=0`). Unknown or leftover placeholders are an error, not a silent blank.
    """
    if not upstreams:
        raise ValueError("at least one upstream is required")
    lines = []
    for upstream in upstreams:
        line = upstream if upstream.startswith("server ") else f"server {upstream};"
        lines.append(f"        {line}")
    text = template.read_text(encoding="utf-8")
    for name, value in (
        ("{{PORT}}", str(port)),
        ("{{UPSTREAMS}}", "\n".join(lines)),
        ("{{PREFIX}}", str(prefix)),
    ):
        if name not in text:
            raise ValueError(f"template {template} has no {name} placeholder")
        text = text.replace(name, value)
    if "{{" in text:
        raise ValueError(f"template {template} has an unfilled placeholder")
    return text


@contextmanager
def nginx_prefix() -> Iterator[Path]:
    """A fresh prefix directory that nginx's workers (user nobody) can traverse."""
    prefix = Path(tempfile.mkdtemp(prefix="pm-nginx-"))
    try:
        prefix.chmod(0o755)
        yield prefix
    finally:
        shutil.rmtree(prefix, ignore_errors=True)


def nginx_test_config(conf: Path, prefix: Path) -> subprocess.CompletedProcess[str]:
    """`nginx -t` on a config, everything under `prefix`."""
    assert NGINX_BINARY is not None
    return subprocess.run(
        [NGINX_BINARY, "-t", "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@contextmanager
def running_nginx(
    conf: Path, prefix: Path, ports: Sequence[int]
) -> Iterator[subprocess.Popen[bytes]]:
    """Start nginx in the foreground, wait until it accepts on every port, stop it afterwards."""
    assert NGINX_BINARY is not None
    error_log = prefix / "error.log"
    if "daemon off;" not in conf.read_text(encoding="utf-8"):
        raise ValueError(f"{conf} must say 'daemon off;' so nginx stays a child of this process")
    proc = subprocess.Popen(
        [NGINX_BINARY, "-p", str(prefix), "-c", str(conf), "-e", str(error_log)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_listening(proc, ports, error_log)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGQUIT)  # graceful: finish requests, then exit
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)
        if proc.stderr is not None:
            proc.stderr.close()


def _wait_listening(proc: subprocess.Popen[bytes], ports: Sequence[int], error_log: Path) -> None:
    deadline = time.monotonic() + 30
    pending = list(ports)
    while pending:
        if proc.poll() is not None:
            stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            log = error_log.read_text(errors="replace") if error_log.exists() else ""
            raise RuntimeError(f"nginx exited with {proc.returncode}: {stderr}\n{log}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"nginx did not listen on {pending} within 30 s")
        try:
            with socket.create_connection(("127.0.0.1", pending[0]), timeout=1):
                pending.pop(0)
        except OSError:
            time.sleep(0.05)
