"""``serve`` with ``workers > 1``: gunicorn forks uvicorn workers from a preloaded parent.

uvicorn's own supervisor (``uvicorn.run(..., workers=N)``) *spawns* N fresh interpreters,
each re-importing the whole web stack (about 0.3 s of CPU apiece). Here the parent imports
``proof_messenger.relay.asgi`` once (``preload_app``) and gunicorn forks the workers from
it, so they start with the code already loaded. Only the import is shared: each worker
calls ``app_factory`` itself (uvicorn's ``factory`` mode, in the worker's event loop), so
settings, the store, its connections and threads, the limiter, metrics and the event loop
are all created after the fork. Importing the relay creates none of them (no thread,
socket, file, mmap or event loop; tests/relay/test_startup_imports.py checks it).

Imported only when ``workers > 1``: ``workers: 1`` keeps ``uvicorn.run`` in-process.
"""

from __future__ import annotations

import logging
import os
from typing import Any

# First: it imports uvicorn without watchfiles (server_protocol.import_uvicorn), before
# uvicorn_worker imports uvicorn.
from ..relay.server_protocol import http_protocol

# isort: split
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.glogging import Logger
from uvicorn_worker import UvicornWorker

from ..configuration import ConfigError
from ..relay.config import Settings, load_settings

__all__ = ["RelayWorker", "serve"]

#: uvicorn's graceful shutdown: after this many seconds, open connections are closed.
GRACEFUL_SHUTDOWN_S = 30
#: gunicorn's master waits this long for a stopping worker before SIGKILL: uvicorn's 30 s
#: plus time for the app's shutdown (the group commit drains, the store closes).
MASTER_GRACE_S = GRACEFUL_SHUTDOWN_S + 5


class RelayWorker(UvicornWorker):  # type: ignore[misc]
    """uvicorn in a gunicorn worker, configured as the ``workers: 1`` ``uvicorn.run`` call."""

    CONFIG_KWARGS: dict[str, Any] = {  # noqa: RUF012 (a class attribute uvicorn-worker reads)
        "loop": "auto",
        # One write per response (relay/server_protocol.py), as with workers: 1; decided
        # once, in the master, when this module is imported.
        "http": http_protocol(),
        # No WebSocket routes: spares the websockets import; an upgrade is answered as HTTP.
        "ws": "none",
        # The preloaded object is app_factory: each worker builds its app after the fork.
        "factory": True,
        "access_log": False,  # the relay writes its own access log
        "proxy_headers": True,  # forwarded_allow_ips comes from gunicorn's setting
        "server_header": False,
        "date_header": True,
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_S,
        "timeout_keep_alive": 5,  # uvicorn's default (gunicorn's keepalive would give 2)
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # UvicornWorker hands uvicorn's loggers gunicorn's handlers (plain text on stderr);
        # send them to the root logger instead, whose handler writes our one-line JSON.
        error = logging.getLogger("uvicorn.error")
        error.handlers[:] = []
        error.propagate = True
        logging.getLogger("uvicorn.access").disabled = True


class JsonLogger(Logger):  # type: ignore[misc]
    """gunicorn's master and worker messages as one-line JSON, like every other log line.

    gunicorn's own handlers (plain text on stderr) are removed and its ``gunicorn.error``
    records propagate to the root logger, configured by ``configure_logging``; its access
    log is off (the relay writes its own).
    """

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        self.error_log.handlers[:] = []
        self.error_log.propagate = True
        self.access_log.handlers[:] = []
        self.access_log.propagate = False
        self.access_log.disabled = True
        self.error_log.filters[:] = [_closed_listener_filter]


def _closed_listener_filter(record: logging.LogRecord) -> bool:
    """Drop "Error while closing socket [Errno 9] Bad file descriptor" from every stopping
    worker: uvicorn has already closed the shared listening socket's file descriptor in
    that worker, and gunicorn closes it again. Any other socket error is kept."""
    return not (
        record.msg == "Error while closing socket %s" and "Bad file descriptor" in str(record.args)
    )


def _child_exit(server: Any, worker: Any) -> None:
    """A worker is gone: fold its live gauges out of the multiprocess metrics."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


class RelayArbiter(Arbiter):  # type: ignore[misc]
    """gunicorn's master: SIGINT drains like SIGTERM, and the configuration is checked
    before SIGHUP replaces the workers.

    On SIGHUP gunicorn starts new workers and stops the old ones at once; a new worker
    that cannot start (say, the policy file was broken since) makes the master stop the
    whole relay with status 3. So the master first re-reads the configuration as a new
    worker would (settings, then the policy, oidc and webhooks sections): if it is
    invalid, the reload is refused with an error line and the running workers stay.
    """

    def handle_int(self) -> None:
        # gunicorn's SIGINT is a quick stop (SIGQUIT to the workers, which uvicorn's worker
        # does not act on: they would be killed after the grace period, undrained). As with
        # uvicorn, SIGINT stops gracefully, like SIGTERM.
        self.handle_term()

    def handle_hup(self) -> None:
        from .serve import check_features

        try:
            check_features(load_settings(os.environ.get("PROOF_MESSENGER_CONFIG") or None))
        except ConfigError as exc:
            self.log.error(
                "reload refused, the workers keep running: invalid configuration: %s", exc
            )
            return
        except Exception as exc:  # e.g. the file unreadable: same answer, never a crash
            self.log.error(
                "reload refused, the workers keep running: cannot read the configuration: %r",
                exc,
            )
            return
        super().handle_hup()


class RelayApplication(BaseApplication):  # type: ignore[misc]
    """gunicorn's documented "custom application": options in code, no argv or config file."""

    def __init__(self, settings: Settings) -> None:
        self.options: dict[str, Any] = {
            "bind": [_bind(settings.host, settings.port)],
            "workers": settings.workers,
            "worker_class": RelayWorker,
            "preload_app": True,
            "proc_name": "proof-messenger",
            "logger_class": JsonLogger,
            "loglevel": settings.log_level,
            "accesslog": None,
            "errorlog": "-",
            "graceful_timeout": MASTER_GRACE_S,
            "keepalive": 5,
            "forwarded_allow_ips": os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1"),
            "child_exit": _child_exit,
            # Recent gunicorn starts a control socket ($HOME/.gunicorn/gunicorn.ctl) and a
            # thread in the master after the first fork; the relay does not use it.
            "control_socket_disable": True,
        }
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def run(self) -> None:
        # BaseApplication.run with our arbiter (and its error as a log line, not plain text).
        try:
            RelayArbiter(self).run()
        except RuntimeError as exc:
            logging.getLogger("gunicorn.error").error("gunicorn failed: %s", exc)
            raise SystemExit(1) from exc

    def load(self) -> Any:
        # Runs once in the master (preload_app): the import only, nothing fork-unsafe.
        from ..relay.asgi import app_factory

        return app_factory


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def serve(settings: Settings) -> None:
    """Run the gunicorn master until SIGTERM (exit 0 once the workers have drained)."""
    RelayApplication(settings).run()
