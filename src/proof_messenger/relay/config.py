"""Relay settings: a YAML file, overridden by environment variables, validated at start.

Every problem is reported as a :class:`ConfigError` naming the setting (its YAML path
and, where there is one, its environment variable), so a relay with a bad setting
never starts half-configured.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from ..configuration import ConfigError

__all__ = ["ConfigError", "Settings", "load_settings"]


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = "sqlite:///./data/proof-messenger.db"
    max_connections: int = 10
    connection_timeout: float = 5.0
    replica_urls: tuple[str, ...] = ()


@dataclass(frozen=True)
class VerificationSettings:
    clock_skew_seconds: int = 60
    max_lifetime_seconds: int = 300
    max_context_bytes: int = 8192
    max_context_depth: int = 8


@dataclass(frozen=True)
class LimitSettings:
    max_body_bytes: int = 1024 * 1024  # keep proxies' client_max_body_size equal (1m)
    request_timeout_seconds: float = 30.0
    rate_limit_per_second: float = 100.0
    rate_limit_burst: int = 200
    max_batch: int = 100


@dataclass(frozen=True)
class CorsSettings:
    allow_origins: tuple[str, ...] = ()


@dataclass(frozen=True)
class WebAuthnSettings:
    origins: tuple[str, ...] = ()
    rp_name: str = "Proof-Messenger"
    require_user_verification: bool = False


@dataclass(frozen=True)
class RetentionSettings:
    """Pruning of replay claims that can no longer matter (``relay/retention.py``).

    A claim whose intent ``exp`` is older than now − ``verification.clock_skew_seconds``
    belongs to a proof that check 4 refuses as ``expired`` before check 7 reads the claim;
    ``replay_prune_margin_seconds`` is kept on top, for the clocks of other instances and
    for a verification that read the clock before a prune and commits its claim after it.
    """

    #: How often each worker prunes (jittered by ±20 %); 0 disables the background task
    #: (then run ``proof-messenger db prune-replay`` from cron instead).
    replay_prune_interval_seconds: float = 300.0
    #: Kept on top of the protocol's expiry window; see the class docstring.
    replay_prune_margin_seconds: int = 600
    #: Rows deleted per transaction: bounds how long one delete holds the write lock.
    replay_prune_chunk_rows: int = 1000


@dataclass(frozen=True)
class Settings:
    bind_address: str = "127.0.0.1:8080"
    workers: int = 1
    audience: str = "localhost"
    log_level: str = "info"
    access_log: bool = True
    public_url: str | None = None
    master_key_file: str = "./data/master.key"
    log_key_file: str = "./data/log-signing.key"
    redis_url: str | None = None
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    verification: VerificationSettings = field(default_factory=VerificationSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    cors: CorsSettings = field(default_factory=CorsSettings)
    webauthn: WebAuthnSettings = field(default_factory=WebAuthnSettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    #: Sections owned by later features (policy, webhooks, oidc) are kept raw here
    #: and validated by their own modules.
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def host(self) -> str:
        return self.bind_address.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.bind_address.rsplit(":", 1)[1])

    @property
    def base_url(self) -> str:
        """Where users reach the relay (public_url behind a proxy, else local_url)."""
        if self.public_url:
            return self.public_url.rstrip("/")
        return self.local_url

    @property
    def local_url(self) -> str:
        """The relay's own listening address, for probes from the same host."""
        host = self.host
        if host in ("0.0.0.0", "::", ""):  # noqa: S104 - display only
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"


#: Environment variables and the setting each overrides.
ENV_VARS: dict[str, str] = {
    "BIND_ADDRESS": "bind_address",
    "AUDIT_DB_URL": "database.url",
    "LOG_LEVEL": "log_level",
    "PROOF_MESSENGER_AUDIENCE": "audience",
    "PROOF_MESSENGER_MASTER_KEY_FILE": "master_key_file",
    "PROOF_MESSENGER_LOG_KEY_FILE": "log_key_file",
    "PROOF_MESSENGER_WORKERS": "workers",
    "PROOF_MESSENGER_PUBLIC_URL": "public_url",
    "REDIS_URL": "redis_url",
}
_KNOWN_EXTRA_SECTIONS = frozenset({"policy", "webhooks", "oidc", "log"})
_LOG_LEVELS = frozenset({"debug", "info", "warning", "error", "critical"})
_AUDIENCE = re.compile(r"[A-Za-z0-9.-]{1,253}")


def load_settings(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    env = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"config file {path}: {exc.strerror}") from exc
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path}: not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path}: the top level must be a mapping")
        raw = loaded or {}
    for var, dotted in ENV_VARS.items():
        value = env.get(var)
        if value is not None and value != "":
            _set_dotted(raw, dotted, value, source=var)
    extra = {k: raw.pop(k) for k in list(raw) if k in _KNOWN_EXTRA_SECTIONS}
    settings: Settings = replace(_build(Settings, raw, ""), extra=extra)
    _validate(settings)
    return settings


def _set_dotted(raw: dict[str, Any], dotted: str, value: str, source: str) -> None:
    node = raw
    *parents, last = dotted.split(".")
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{part}: must be a mapping (while applying {source})")
        node = child
    node[last] = _EnvValue(value, source)


@dataclass(frozen=True)
class _EnvValue:
    text: str
    source: str


def _build(cls: type[Any], raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: must be a mapping")
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls) if f.name != "extra"}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"{prefix}{sorted(unknown)[0]}: unknown setting")
    kwargs: dict[str, Any] = {}
    for name, value in raw.items():
        kind = hints[name]
        setting = f"{prefix}{name}"
        if isinstance(kind, type) and is_dataclass(kind):
            kwargs[name] = _build(kind, value, setting + ".")
        else:
            kwargs[name] = _coerce(value, kind, setting)
    return cls(**kwargs)


def _coerce(value: Any, kind: Any, setting: str) -> Any:
    source = ""
    if isinstance(value, _EnvValue):
        source = f" (from {value.source})"
        value = _from_env_text(value.text, kind)
    origin = get_origin(kind)
    args = get_args(kind)
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{setting}{source}: must be a list of strings")
        return tuple(value)
    if args and type(None) in args:  # Optional[X]
        if value is None:
            return None
        kind = next(a for a in args if a is not type(None))
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{setting}{source}: must be true or false")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{setting}{source}: must be an integer")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{setting}{source}: must be a number")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{setting}{source}: must be a string")
        return value
    raise ConfigError(f"{setting}: unsupported setting type")  # pragma: no cover


def _from_env_text(text: str, kind: Any) -> Any:
    args = get_args(kind)
    if args and type(None) in args:
        kind = next(a for a in args if a is not type(None))
    if kind is int:
        try:
            return int(text)
        except ValueError:
            return text
    if kind is float:
        try:
            return float(text)
        except ValueError:
            return text
    if kind is bool:
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        return text
    return text


def _validate(s: Settings) -> None:
    def fail(setting: str, message: str) -> None:
        env = next((var for var, dotted in ENV_VARS.items() if dotted == setting), None)
        named = f"{setting} ({env})" if env else setting
        raise ConfigError(f"{named}: {message}")

    host, sep, port = s.bind_address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        fail("bind_address", f"{s.bind_address!r} is not HOST:PORT")
    if not 1 <= s.workers <= 64:
        fail("workers", "must be between 1 and 64")
    if _AUDIENCE.fullmatch(s.audience) is None:
        fail("audience", "must be a host name (the relying-party id), e.g. payments.example.com")
    if s.log_level.lower() not in _LOG_LEVELS:
        fail("log_level", f"must be one of {', '.join(sorted(_LOG_LEVELS))}")
    if not s.database.url.startswith(("sqlite:///", "postgresql://", "postgres://")):
        fail("database.url", "must start with sqlite:/// or postgresql://")
    if not 1 <= s.database.max_connections <= 1000:
        fail("database.max_connections", "must be between 1 and 1000")
    if not 0 < s.database.connection_timeout <= 300:
        fail("database.connection_timeout", "must be between 0 and 300 seconds")
    for url in s.database.replica_urls:
        if not url.startswith(("postgresql://", "postgres://")):
            fail("database.replica_urls", "replicas must be postgresql:// URLs")
    v = s.verification
    if not 0 <= v.clock_skew_seconds <= 3600:
        fail("verification.clock_skew_seconds", "must be between 0 and 3600")
    if not 1 <= v.max_lifetime_seconds <= 86400:
        fail("verification.max_lifetime_seconds", "must be between 1 and 86400")
    if not 16 <= v.max_context_bytes <= 1 << 20:
        fail("verification.max_context_bytes", "must be between 16 and 1048576")
    if not 1 <= v.max_context_depth <= 30:
        fail("verification.max_context_depth", "must be between 1 and 30")
    r = s.retention
    interval = r.replay_prune_interval_seconds
    if interval != 0 and not 1 <= interval <= 86400:
        fail(
            "retention.replay_prune_interval_seconds",
            "must be 0 (disabled) or between 1 and 86400",
        )
    if not 60 <= r.replay_prune_margin_seconds <= 7 * 86400:
        fail(
            "retention.replay_prune_margin_seconds",
            "must be between 60 and 604800 (it covers clock differences between instances "
            "and verifications still in flight)",
        )
    if not 1 <= r.replay_prune_chunk_rows <= 100_000:
        fail("retention.replay_prune_chunk_rows", "must be between 1 and 100000")
    lim = s.limits
    if not 1024 <= lim.max_body_bytes <= 64 << 20:
        fail("limits.max_body_bytes", "must be between 1024 and 67108864")
    if not 0 < lim.request_timeout_seconds <= 600:
        fail("limits.request_timeout_seconds", "must be between 0 and 600")
    if not lim.rate_limit_per_second > 0:
        fail("limits.rate_limit_per_second", "must be positive")
    if not lim.rate_limit_burst >= 1:
        fail("limits.rate_limit_burst", "must be at least 1")
    if not 1 <= lim.max_batch <= 1000:
        fail("limits.max_batch", "must be between 1 and 1000")
    for setting, origins in (
        ("cors.allow_origins", s.cors.allow_origins),
        ("webauthn.origins", s.webauthn.origins),
    ):
        for origin in origins:
            if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
                fail(setting, f"{origin!r} is not an origin")
    if s.redis_url is not None and not s.redis_url.startswith(("redis://", "rediss://")):
        fail("redis_url", "must start with redis:// or rediss://")
