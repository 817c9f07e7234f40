"""The ``webhooks:`` section of the relay config, validated with errors naming the setting.

```yaml
webhooks:
  max_age_seconds: 86400        # give up (dead letter) this long after the first attempt
  subscriptions:
    - id: payments-ledger        # optional; default derived from the url
      url: https://ledger.internal/hooks/proof-messenger
      events: [proof.verified, key.revoked]
      secret_env: LEDGER_WEBHOOK_SECRET   # or `secret:` inline (discouraged)
```

Secrets are read here and never logged or echoed in errors.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ..configuration import ConfigError
from . import EVENT_TYPES

__all__ = ["ConfiguredSubscription", "WebhookSettings", "check_url", "parse_webhook_settings"]

_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_URL_NAMESPACE = uuid.UUID("4f0e9f5c-2d7b-4b8e-8f61-0c1a6d3e9b72")
MIN_SECRET_BYTES = 16


@dataclass(frozen=True)
class ConfiguredSubscription:
    id: str
    url: str
    events: tuple[str, ...]
    secret: str = field(repr=False)


@dataclass(frozen=True)
class WebhookSettings:
    max_age_seconds: float = 24 * 3600.0
    timeout_seconds: float = 10.0
    retry_base_seconds: float = 2.0
    retry_cap_seconds: float = 600.0
    poll_interval_seconds: float = 1.0
    lease_seconds: float = 60.0
    batch_size: int = 20
    concurrency: int = 8
    enabled: bool = True
    subscriptions: tuple[ConfiguredSubscription, ...] = ()


_NUMBERS: dict[str, tuple[type, float, float]] = {
    "max_age_seconds": (float, 0.001, 30 * 24 * 3600.0),
    "timeout_seconds": (float, 0.1, 60.0),
    "retry_base_seconds": (float, 0.0, 3600.0),
    "retry_cap_seconds": (float, 0.0, 24 * 3600.0),
    "poll_interval_seconds": (float, 0.01, 60.0),
    "lease_seconds": (float, 1.0, 3600.0),
    "batch_size": (int, 1, 1000),
    "concurrency": (int, 1, 256),
}


def check_url(url: Any, setting: str) -> str:
    """http(s) only, with a host; no credentials in the URL (they would end up in logs)."""
    if not isinstance(url, str) or not 1 <= len(url) <= 2048:
        raise ConfigError(f"{setting}: must be an http(s) URL of at most 2048 characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{setting}: must be an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise ConfigError(f"{setting}: must not contain credentials (use the signing secret)")
    return url


def check_events(events: Any, setting: str) -> tuple[str, ...]:
    if not isinstance(events, list | tuple) or not events:
        raise ConfigError(f"{setting}: must be a non-empty list of {', '.join(EVENT_TYPES)}")
    unknown = [e for e in events if e not in EVENT_TYPES]
    if unknown:
        raise ConfigError(
            f"{setting}: unknown event {unknown[0]!r}; known: {', '.join(EVENT_TYPES)}"
        )
    return tuple(dict.fromkeys(events))


def default_id(url: str) -> str:
    return "cfg-" + uuid.uuid5(_URL_NAMESPACE, url).hex[:16]


def _subscription(raw: Any, where: str, environ: Mapping[str, str]) -> ConfiguredSubscription:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: must be a mapping with url, events and secret_env")
    unknown = set(raw) - {"id", "url", "events", "secret", "secret_env"}
    if unknown:
        raise ConfigError(f"{where}.{sorted(unknown)[0]}: unknown setting")
    url = check_url(raw.get("url"), f"{where}.url")
    events = check_events(raw.get("events"), f"{where}.events")
    sub_id = raw.get("id", default_id(url))
    if not isinstance(sub_id, str) or not _ID.fullmatch(sub_id):
        raise ConfigError(f"{where}.id: 1-64 characters of A-Z a-z 0-9 . _ -")
    if ("secret" in raw) == ("secret_env" in raw):
        raise ConfigError(f"{where}: give exactly one of secret_env (recommended) or secret")
    if "secret_env" in raw:
        name = raw["secret_env"]
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}.secret_env: must name an environment variable")
        secret = environ.get(name)
        if not secret:
            raise ConfigError(f"{where}.secret_env: environment variable {name} is not set")
        setting = f"{where}.secret_env ({name})"
    else:
        secret = raw["secret"]
        setting = f"{where}.secret"
    if not isinstance(secret, str) or len(secret.encode()) < MIN_SECRET_BYTES:
        raise ConfigError(f"{setting}: the secret must be at least {MIN_SECRET_BYTES} bytes")
    return ConfiguredSubscription(id=sub_id, url=url, events=events, secret=secret)


def parse_webhook_settings(raw: Any, environ: Mapping[str, str] | None = None) -> WebhookSettings:
    """Validate ``settings.extra["webhooks"]`` (None or missing: defaults, no subscriptions)."""
    env = os.environ if environ is None else environ
    if raw is None:
        return WebhookSettings()
    if not isinstance(raw, Mapping):
        raise ConfigError("webhooks: must be a mapping")
    known = {*_NUMBERS, "subscriptions", "enabled"}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"webhooks.{sorted(unknown)[0]}: unknown setting")
    values: dict[str, Any] = {}
    for name, (kind, low, high) in _NUMBERS.items():
        if name not in raw:
            continue
        value = raw[name]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"webhooks.{name}: must be a number")
        if kind is int and not isinstance(value, int):
            raise ConfigError(f"webhooks.{name}: must be an integer")
        if not low <= value <= high:
            raise ConfigError(f"webhooks.{name}: must be between {low:g} and {high:g}")
        values[name] = kind(value)
    if "enabled" in raw:
        if not isinstance(raw["enabled"], bool):
            raise ConfigError("webhooks.enabled: must be true or false")
        values["enabled"] = raw["enabled"]
    subs_raw = raw.get("subscriptions")
    if subs_raw is None:
        subs_raw = []
    if not isinstance(subs_raw, list):
        raise ConfigError("webhooks.subscriptions: must be a list")
    subs = tuple(
        _subscription(item, f"webhooks.subscriptions[{i}]", env) for i, item in enumerate(subs_raw)
    )
    ids = [s.id for s in subs]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ConfigError(f"webhooks.subscriptions: duplicate id {dup!r}")
    settings = WebhookSettings(**values, subscriptions=subs)
    # A lease must outlive the attempt it covers, or a second worker could send the same
    # delivery while the first is still waiting for the receiver.
    if settings.lease_seconds < 2 * settings.timeout_seconds:
        raise ConfigError(
            "webhooks.lease_seconds: must be at least twice webhooks.timeout_seconds "
            f"({2 * settings.timeout_seconds:g} s)"
        )
    return settings
