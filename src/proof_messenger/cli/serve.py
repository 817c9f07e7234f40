"""``proof-messenger serve``: run the relay (and ``--health-check`` for containers)."""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import click

from ..configuration import ConfigError
from ..relay.config import Settings
from ..store.base import Store
from ._relay import config_option, fail, settings_from, with_store


@click.command("serve")
@config_option
@click.option(
    "--health-check",
    is_flag=True,
    help="Probe /health of the relay at BIND_ADDRESS and exit 0 (healthy) or 1.",
)
@click.option("--timeout", default=3.0, show_default=True, help="Health-check timeout (s).")
def command(config_path: Path | None, health_check: bool, timeout: float) -> None:
    """Start the relay: migrate the database, then serve HTTP."""
    settings = settings_from(config_path)
    if health_check:
        import httpx

        url = f"{settings.local_url}/health"
        try:
            response = httpx.get(url, timeout=timeout)
        except httpx.HTTPError as exc:
            click.echo(f"unhealthy: {url}: {exc}", err=True)
            sys.exit(1)
        if response.status_code != 200:
            click.echo(f"unhealthy: {url}: HTTP {response.status_code}", err=True)
            sys.exit(1)
        click.echo("healthy")
        return

    from ..relay.logs import configure_logging

    configure_logging(settings.log_level)
    if config_path is not None:
        # Before validating: relative policy.file paths resolve against the config file.
        os.environ["PROOF_MESSENGER_CONFIG"] = str(config_path.resolve())
    _validate_features(settings)  # nothing is created for a configuration that is refused
    # Done once here, before workers start: migrations, and the keys (two workers
    # generating two different keys would make half the audit log undecryptable).
    _prepare(settings)
    # Before uvicorn is imported on either path below: this module imports it without
    # watchfiles (see server_protocol.import_uvicorn).
    from ..relay.server_protocol import http_protocol

    if settings.workers > 1:
        # Before anything imports prometheus_client: it picks its multiprocess value
        # class at import time, and the workers inherit the master's imports.
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="pm-metrics-")
        # gunicorn forks the workers from this process once it has imported the app
        # (the store session of _prepare is closed by now); SIGTERM makes the master
        # drain the workers and exit 0, SIGHUP replaces them.
        from ._gunicorn import serve as serve_forked

        serve_forked(settings)
        return
    import uvicorn

    # uvicorn drains and shuts the app down on SIGTERM, then re-raises the signal with
    # the previous handler; make that handler a clean exit so a graceful stop is
    # status 0 (not -15), which process supervisors read as "stopped as asked".
    signal.signal(signal.SIGTERM, _exit_cleanly)
    uvicorn.run(
        "proof_messenger.relay.asgi:app_factory",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        # uvicorn's httptools protocol writing each response's head and body in one write
        # (relay/server_protocol.py); uvicorn's stock "auto" if its private hook is gone.
        http=http_protocol(),
        # The relay has no WebSocket routes: "none" spares every worker the import of the
        # websockets package (about 4 MB and 60 ms); an upgrade request is answered as HTTP.
        ws="none",
        log_config=None,
        access_log=False,
        proxy_headers=True,
        forwarded_allow_ips=os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1"),
        timeout_graceful_shutdown=30,
        server_header=False,
        date_header=True,
    )


def _exit_cleanly(signum: int, frame: object) -> None:
    sys.exit(0)


def _validate_features(settings: Settings) -> None:
    """A bad policy, oidc or webhooks section stops `serve` with exit 2, before any file,
    key or database is created and before workers fork."""
    try:
        check_features(settings)
    except ConfigError as exc:
        fail(f"invalid configuration: {exc}")


def check_features(settings: Settings) -> None:
    """Raise ConfigError for a bad policy, oidc or webhooks section (also run by the
    gunicorn master before it replaces the workers on SIGHUP)."""
    if settings.extra.get("oidc") is not None or settings.extra.get("policy") is not None:
        # Only then: policy_routes imports the web stack (and the sections' parsers).
        from ..relay import policy_routes

        policy_routes.prepare(settings)
    if settings.extra.get("webhooks") is not None:
        # Without the section there is nothing to check (defaults, no subscriptions).
        from ..webhooks.config import parse_webhook_settings

        parse_webhook_settings(settings.extra.get("webhooks"))


def _prepare(settings: Settings) -> None:
    """Migrations, the master key, and the log key created and checked against the key
    history, in one store session (the parent used to open and migrate the store twice;
    only this light path is imported here: the web stack loads in the workers)."""
    from ..relay.log_keys import check_log_key, load_or_create_log_key, log, log_config
    from ..relay.startup import load_or_create_keyring

    try:
        config = log_config(settings)
    except ConfigError as exc:
        fail(f"invalid configuration: {exc}")

    async def keys(store: Store) -> tuple[str | None, str | None]:
        try:
            load_or_create_keyring(settings.master_key_file)
        except Exception as exc:
            return f"master_key_file ({settings.master_key_file}): {exc}", None
        key = load_or_create_log_key(settings.log_key_file)
        return None, await check_log_key(store, key, time.time())

    error, warning = with_store(settings, keys)
    if error is not None:
        fail(error)
    if warning:
        log.error("log_key.unrecorded_change", detail=warning, origin=config.origin)
