"""Limits that must agree across the relay config, the proxies and the orchestrators."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
NGINX_CONFIGS = [
    REPO_ROOT / "deploy" / "nginx" / "proof-messenger.conf",
    REPO_ROOT / "deploy" / "nginx" / "scaleout-test.conf.template",
]
UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def _relay_config() -> dict[str, Any]:
    configmap = yaml.safe_load((REPO_ROOT / "deploy/kubernetes/configmap.yaml").read_text())
    config: dict[str, Any] = yaml.safe_load(configmap["data"]["relay.yaml"])
    return config


def _directive(text: str, name: str) -> list[str]:
    return re.findall(rf"^\s*{name}\s+([^;]+);", text, flags=re.MULTILINE)


def _seconds(value: str) -> int:
    match = re.fullmatch(r"(\d+)(s|m|h)?", value)
    assert match, value
    return int(match.group(1)) * {"s": 1, None: 1, "m": 60, "h": 3600}[match.group(2)]


@pytest.mark.parametrize("path", NGINX_CONFIGS, ids=lambda p: p.name)
def test_nginx_limits_match_the_relay(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    limits = _relay_config()["limits"]
    (body_size,) = _directive(text, "client_max_body_size")
    match = re.fullmatch(r"(\d+)([kmg]?)", body_size.lower())
    assert match
    assert int(match.group(1)) * UNITS[match.group(2)] == limits["max_body_bytes"]
    # The first proxy_read_timeout is the server-wide one; the relay's own timeout must fire first.
    assert _seconds(_directive(text, "proxy_read_timeout")[0]) > limits["request_timeout_seconds"]
    # Exactly these conditions: adding "non_idempotent" would resend POST /verify elsewhere.
    assert _directive(text, "proxy_next_upstream") == ["error timeout"]
    events = re.search(r"location ~ \^/approvals/\[\^/\]\+/events\$ \{(.*?)\}", text, re.DOTALL)
    assert events and "proxy_buffering off;" in events.group(1)
    assert re.search(r"least_conn;", text) and re.search(r"keepalive 64;", text)


def test_grace_periods_cover_the_request_timeout() -> None:
    timeout = _relay_config()["limits"]["request_timeout_seconds"]
    deployment = yaml.safe_load((REPO_ROOT / "deploy/kubernetes/deployment.yaml").read_text())
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > timeout
    unit = (REPO_ROOT / "deploy/systemd/proof-messenger.service").read_text()
    (stop,) = re.findall(r"^TimeoutStopSec=(\S+)$", unit, flags=re.MULTILINE)
    assert _seconds(stop) > timeout
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    assert _seconds(compose["services"]["relay"]["stop_grace_period"]) > timeout
