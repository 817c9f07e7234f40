"""``proof-messenger serve``: run the relay (and ``--health-check`` for containers)."""

from __future__ import annotations

import os
import signal
import sys
import tempfile
from pathlib import Path

import click

from ..configuration import ConfigError
from ..relay.config import Settings
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

    import uvicorn

    from ..relay.app import load_or_create_keyring
    from ..relay.logs import configure_logging

    configure_logging(settings.log_level)
    if config_path is not None:
        # Before validating: relative policy.file paths resolve against the config file.
        os.environ["PROOF_MESSENGER_CONFIG"] = str(config_path.resolve())
    _validate_features(settings)  # nothing is created for a configuration that is refused
    # Done once here, before workers fork: migrations, and the keys (two workers
    # generating two different keys would make half the audit log undecryptable).
    with_store(settings, _noop)
    try:
        load_or_create_keyring(settings.master_key_file)
    except Exception as exc:
        fail(f"master_key_file ({settings.master_key_file}): {exc}")
    _prepare_log_key(settings)
    if settings.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="pm-metrics-")
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


async def _noop(store: object) -> None:
    return None


def _validate_features(settings: Settings) -> None:
    """A bad policy, oidc or webhooks section stops `serve` with exit 2, before any file,
    key or database is created and before workers fork."""
    from ..relay import policy_routes
    from ..webhooks.config import parse_webhook_settings

    try:
        policy_routes.prepare(settings)
        parse_webhook_settings(settings.extra.get("webhooks"))
    except ConfigError as exc:
        fail(f"invalid configuration: {exc}")


def _prepare_log_key(settings: Settings) -> None:
    """The log signing key is generated on first start, once, before workers fork."""
    from ..relay import log_routes

    try:
        log_routes.prepare(settings)
    except ConfigError as exc:
        fail(f"invalid configuration: {exc}")
