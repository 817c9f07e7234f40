"""docker-compose.yml: parses, references only what it defines, hardens the relay."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_TEXT = (REPO_ROOT / "docker-compose.yml").read_text(encoding="utf-8")
COMPOSE: dict[str, Any] = yaml.safe_load(COMPOSE_TEXT)
SERVICES: dict[str, Any] = COMPOSE["services"]


def _env_example() -> dict[str, str]:
    values = {}
    for line in (REPO_ROOT / ".env.example").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def test_references_only_defined_services_volumes_and_networks() -> None:
    volumes = set(COMPOSE.get("volumes") or {})
    networks = set(COMPOSE.get("networks") or {})
    for name, service in SERVICES.items():
        for dependency in service.get("depends_on") or {}:
            assert dependency in SERVICES and dependency != name
        for mount in service.get("volumes") or []:
            source = mount.split(":", 1)[0]
            if not source.startswith((".", "/")):
                assert source in volumes, f"{name} mounts undefined volume {source}"
        for network in service.get("networks") or []:
            assert network in networks
    used = {m.split(":", 1)[0] for s in SERVICES.values() for m in s.get("volumes") or []}
    assert volumes <= used, "a declared volume is never mounted"


def test_database_is_postgres_16_with_a_health_check_the_relay_waits_for() -> None:
    db = SERVICES["db"]
    assert db["image"] == "postgres:16"
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])
    assert SERVICES["relay"]["depends_on"]["db"]["condition"] == "service_healthy"
    url = SERVICES["relay"]["environment"]["AUDIT_DB_URL"]
    assert url.startswith("postgresql://") and "@db:5432/" in url


def test_relay_is_read_only_with_tmpfs_tmp_and_a_data_volume() -> None:
    relay = SERVICES["relay"]
    assert relay["read_only"] is True
    assert any(t.split(":", 1)[0] == "/tmp" for t in relay["tmpfs"])
    assert any(v.endswith(":/var/lib/proof-messenger") for v in relay["volumes"])
    assert relay["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in relay["security_opt"]
    assert relay["user"] == "10001:10001"
    assert relay["environment"]["BIND_ADDRESS"] == "0.0.0.0:8080"
    # Published on loopback only: TLS termination belongs to the proxy in front.
    assert all(p.startswith("127.0.0.1:") for p in relay["ports"])
    assert relay["env_file"] == [".env"]


def test_every_interpolated_variable_is_in_env_example() -> None:
    example = _env_example()
    for name in re.findall(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*)", COMPOSE_TEXT):
        has_default = re.search(rf"\$\{{{name}:-", COMPOSE_TEXT) is not None
        assert name in example or has_default, (
            f"${{{name}}} is neither in .env.example nor defaulted"
        )
    assert example["POSTGRES_PASSWORD"] == "CHANGE-ME"
    assert ".env" in (REPO_ROOT / ".gitignore").read_text(encoding="utf-8").split()
