"""Loading and hot reload of the policy: file change, SIGHUP, invalid files refused."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import yaml

from proof_messenger.relay.policy import PolicyError
from proof_messenger.relay.policy_runtime import PolicyManager, load_policy_config


def rules(name: str, limit: int = 100) -> dict[str, Any]:
    return {
        "rules": [
            {
                "name": name,
                "default": True,
                "max_amount": {"amount_minor": limit, "currency": "EUR"},
            }
        ]
    }


def write(path: Path, doc: Any) -> None:
    # Write-then-rename, as an operator's deploy tool would (never a half-written file).
    tmp = path.with_suffix(".tmp")
    tmp.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    os.replace(tmp, path)


def test_relative_policy_file_resolves_against_the_config_directory(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    write(tmp_path / "conf" / "policy.yaml", rules("a"))
    cfg = load_policy_config({"file": "policy.yaml"}, tmp_path / "conf" / "relay.yaml")
    assert cfg is not None
    assert cfg.watch == (tmp_path / "conf" / "policy.yaml").resolve()
    assert cfg.policy.rules[0].name == "a"


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"rules": [], "file": "x"}, "policy: give either 'rules' or 'file', not both"),
        ({"rulez": []}, "policy.rulez: unknown setting"),
        ({"file": "missing.yaml"}, "missing.yaml"),
        ({"rules": [{"name": "a"}]}, "policy.rules[0].match"),
        ({"rules": rules("a")["rules"], "reload_interval_seconds": -1}, "reload_interval_seconds"),
    ],
)
def test_invalid_sections_name_the_setting(tmp_path: Path, section: Any, message: str) -> None:
    with pytest.raises(PolicyError) as info:
        load_policy_config(section, tmp_path / "relay.yaml")
    assert message in str(info.value)


def test_invalid_policy_file_names_file_and_rule(tmp_path: Path) -> None:
    write(
        tmp_path / "p.yaml",
        {"rules": [{"name": "x", "default": True, "approvals": {"required": "2"}}]},
    )
    with pytest.raises(PolicyError) as info:
        load_policy_config({"file": "p.yaml"}, tmp_path / "relay.yaml")
    assert "p.yaml" in str(info.value) and "rules[0].approvals.required" in str(info.value)


def test_reload_swaps_valid_and_keeps_old_on_invalid(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    write(path, rules("first"))
    cfg = load_policy_config({"file": str(path)}, None)
    assert cfg is not None
    manager = PolicyManager(cfg)
    first = manager.current
    assert not manager.changed_on_disk()

    write(path, rules("second"))
    assert manager.changed_on_disk()
    assert manager.reload("test") is True
    assert manager.current.rules[0].name == "second"
    assert manager.current.version != first.version

    write(path, "rules: [ {name: broken")  # not even YAML
    assert manager.reload("test") is False
    assert manager.current.rules[0].name == "second"
    assert manager.failures == 1 and "not valid YAML" in (manager.last_error or "")

    write(path, rules("third", limit=-5))  # YAML, but an invalid rule
    assert manager.reload("test") is False
    assert manager.failures == 2 and "rules[0].max_amount.amount_minor" in (
        manager.last_error or ""
    )
    assert manager.describe()["version"] == manager.current.version

    path.unlink()
    assert manager.reload("test") is False
    assert manager.current.rules[0].name == "second"


def test_inline_policy_reloads_from_the_relay_config(tmp_path: Path) -> None:
    config = tmp_path / "relay.yaml"
    write(config, {"audience": "x.example.com", "policy": rules("inline")})
    cfg = load_policy_config(rules("inline"), config)
    assert cfg is not None and cfg.watch == config.resolve()
    manager = PolicyManager(cfg)
    write(config, {"audience": "x.example.com", "policy": rules("edited")})
    assert manager.reload("test") and manager.current.rules[0].name == "edited"
    write(config, {"audience": "x.example.com"})
    assert manager.reload("test") is False  # removing the policy is refused, not applied
    assert manager.current.rules[0].name == "edited"


async def _until(predicate: Any) -> None:
    for _ in range(400):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached")


async def test_watcher_reloads_on_file_change(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    write(path, rules("first"))
    cfg = load_policy_config({"file": str(path), "reload_interval_seconds": 0.05}, None)
    assert cfg is not None
    manager = PolicyManager(cfg)
    task = asyncio.create_task(manager.watch())
    try:
        write(path, rules("second"))
        await _until(lambda: manager.current.rules[0].name == "second")
        write(path, "rules: 5")
        await _until(lambda: manager.failures == 1)
        assert manager.current.rules[0].name == "second"
    finally:
        task.cancel()


async def test_sighup_reloads(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    write(path, rules("first"))
    # Polling off: only the signal can trigger this reload.
    cfg = load_policy_config({"file": str(path), "reload_interval_seconds": 0}, None)
    assert cfg is not None
    manager = PolicyManager(cfg)
    assert manager.install_sighup()
    try:
        write(path, rules("after-hup"))
        os.kill(os.getpid(), signal.SIGHUP)
        await _until(lambda: manager.current.rules[0].name == "after-hup")
        write(path, "rules: []")
        os.kill(os.getpid(), signal.SIGHUP)
        await _until(lambda: manager.failures == 1)
        assert manager.current.rules[0].name == "after-hup"
    finally:
        manager.remove_sighup()
