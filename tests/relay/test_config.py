"""Settings: YAML + environment overrides, and every validation branch names its setting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from proof_messenger.relay.config import ENV_VARS, ConfigError, Settings, load_settings


def load(tmp_path: Path, data: Any = None, env: dict[str, str] | None = None) -> Settings:
    path = None
    if data is not None:
        path = tmp_path / "relay.yaml"
        path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return load_settings(path, environ=env or {})


def test_defaults_without_file_or_env(tmp_path: Path) -> None:
    s = load(tmp_path)
    assert s == Settings()
    assert s.bind_address == "127.0.0.1:8080"
    assert s.limits.max_body_bytes == 1024 * 1024
    assert s.limits.rate_limit_per_second == 100.0 and s.limits.rate_limit_burst == 200
    assert s.local_url == "http://127.0.0.1:8080" == s.base_url


def test_yaml_values_and_env_overrides(tmp_path: Path) -> None:
    data = {
        "audience": "from-file.example.com",
        "workers": 2,
        "limits": {"rate_limit_per_second": 5, "max_batch": 10},
        "cors": {"allow_origins": ["https://app.example.com"]},
        "policy": {"rules": []},
    }
    env = {
        "PROOF_MESSENGER_AUDIENCE": "from-env.example.com",
        "BIND_ADDRESS": "0.0.0.0:9000",
        "PROOF_MESSENGER_WORKERS": "3",
        "AUDIT_DB_URL": "postgresql://u@h/db",
        "LOG_LEVEL": "DEBUG",
        "PROOF_MESSENGER_PUBLIC_URL": "https://relay.example.com/",
        "REDIS_URL": "redis://127.0.0.1:6379/0",
        "PROOF_MESSENGER_MASTER_KEY_FILE": "/k/master.key",
        "PROOF_MESSENGER_LOG_KEY_FILE": "/k/log.key",
    }
    s = load(tmp_path, data, env)
    assert s.audience == "from-env.example.com"
    assert s.workers == 3
    assert s.limits.rate_limit_per_second == 5.0 and s.limits.max_batch == 10
    assert s.cors.allow_origins == ("https://app.example.com",)
    assert s.database.url == "postgresql://u@h/db"
    assert s.log_level == "DEBUG"
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert (s.master_key_file, s.log_key_file) == ("/k/master.key", "/k/log.key")
    assert s.extra == {"policy": {"rules": []}}
    assert s.local_url == "http://127.0.0.1:9000"
    assert s.base_url == "https://relay.example.com"
    assert set(ENV_VARS) == set(env)


def test_empty_env_value_is_ignored(tmp_path: Path) -> None:
    assert load(tmp_path, env={"PROOF_MESSENGER_AUDIENCE": ""}).audience == "localhost"


def test_ipv6_bind_address(tmp_path: Path) -> None:
    s = load(tmp_path, env={"BIND_ADDRESS": "[::1]:8443"})
    assert (s.host, s.port, s.local_url) == ("::1", 8443, "http://[::1]:8443")


@pytest.mark.parametrize(
    ("data", "env", "named"),
    [
        ({"bogus": 1}, {}, "bogus: unknown setting"),
        ({"limits": {"bogus": 1}}, {}, "limits.bogus: unknown setting"),
        ({"limits": 5}, {}, "limits: must be a mapping"),
        ("[1, 2]", {}, "the top level must be a mapping"),
        ("a: [", {}, "not valid YAML"),
        ({"workers": "two"}, {}, "workers: must be an integer"),
        ({"workers": True}, {}, "workers: must be an integer"),
        ({}, {"PROOF_MESSENGER_WORKERS": "two"}, "workers (from PROOF_MESSENGER_WORKERS)"),
        ({"access_log": "yes"}, {}, "access_log: must be true or false"),
        ({"limits": {"rate_limit_per_second": "fast"}}, {}, "must be a number"),
        ({"audience": 5}, {}, "audience: must be a string"),
        ({"cors": {"allow_origins": "x"}}, {}, "cors.allow_origins: 'x' is not an origin"),
        ({"cors": {"allow_origins": [1]}}, {}, "must be a list of strings"),
        ({}, {"BIND_ADDRESS": "nonsense"}, "bind_address (BIND_ADDRESS)"),
        ({}, {"BIND_ADDRESS": "host:0"}, "bind_address (BIND_ADDRESS)"),
        ({}, {"BIND_ADDRESS": "host:70000"}, "bind_address (BIND_ADDRESS)"),
        ({"workers": 0}, {}, "workers (PROOF_MESSENGER_WORKERS)"),
        ({}, {"PROOF_MESSENGER_AUDIENCE": "bad audience!"}, "audience (PROOF_MESSENGER_AUDIENCE)"),
        ({}, {"LOG_LEVEL": "loud"}, "log_level (LOG_LEVEL)"),
        ({}, {"AUDIT_DB_URL": "mysql://x"}, "database.url (AUDIT_DB_URL)"),
        ({"database": {"max_connections": 0}}, {}, "database.max_connections"),
        ({"database": {"connection_timeout": 0}}, {}, "database.connection_timeout"),
        ({"database": {"replica_urls": ["sqlite:///x"]}}, {}, "database.replica_urls"),
        ({"verification": {"clock_skew_seconds": -1}}, {}, "verification.clock_skew_seconds"),
        ({"verification": {"max_lifetime_seconds": 0}}, {}, "verification.max_lifetime_seconds"),
        ({"verification": {"max_context_bytes": 8}}, {}, "verification.max_context_bytes"),
        ({"verification": {"max_context_depth": 31}}, {}, "verification.max_context_depth"),
        ({"limits": {"max_body_bytes": 100}}, {}, "limits.max_body_bytes"),
        ({"limits": {"request_timeout_seconds": 0}}, {}, "limits.request_timeout_seconds"),
        ({"limits": {"rate_limit_per_second": 0}}, {}, "limits.rate_limit_per_second"),
        ({"limits": {"rate_limit_burst": 0}}, {}, "limits.rate_limit_burst"),
        ({"limits": {"max_batch": 1001}}, {}, "limits.max_batch"),
        ({"cors": {"allow_origins": ["app.example.com"]}}, {}, "cors.allow_origins"),
        ({"webauthn": {"origins": ["https://a/b"]}}, {}, "webauthn.origins: 'https://a/b'"),
        ({}, {"REDIS_URL": "http://x"}, "redis_url (REDIS_URL)"),
    ],
)
def test_invalid_settings_are_named(
    tmp_path: Path, data: Any, env: dict[str, str], named: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, data, env)
    assert named in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file"):
        load_settings(tmp_path / "absent.yaml", environ={})


def test_bool_from_env_text(tmp_path: Path) -> None:
    # No env var maps to a bool today; YAML booleans are strict.
    assert load(tmp_path, {"access_log": False}).access_log is False
    assert load(
        tmp_path, {"webauthn": {"require_user_verification": True}}
    ).webauthn.require_user_verification


def test_comma_separated_origins_string(tmp_path: Path) -> None:
    s = load(tmp_path, {"cors": {"allow_origins": "https://a.example, https://b.example"}})
    assert s.cors.allow_origins == ("https://a.example", "https://b.example")
