"""systemd units and install.sh: hardened, verified by systemd-analyze, installer idempotent."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SYSTEMD_DIR = REPO_ROOT / "deploy" / "systemd"
UNIT = SYSTEMD_DIR / "proof-messenger.service"
TEMPLATE_UNIT = SYSTEMD_DIR / "proof-messenger@.service"
INSTALL_SH = SYSTEMD_DIR / "install.sh"
EXEC = "/opt/proof-messenger/venv/bin/proof-messenger"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")

REQUIRED = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "RestrictNamespaces": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "CapabilityBoundingSet": "",
    "ReadWritePaths": "/var/lib/proof-messenger",
    "StateDirectory": "proof-messenger",
    "User": "proof-messenger",
    "EnvironmentFile": "/etc/proof-messenger/env",
    "KillSignal": "SIGTERM",
    "TimeoutStopSec": "45s",
}


def _directives(path: Path) -> dict[str, list[str]]:
    """Every `Key=value` in the [Service] section, repeated keys kept in order."""
    values: dict[str, list[str]] = {}
    section = None
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


@pytest.mark.parametrize("unit", [UNIT, TEMPLATE_UNIT], ids=lambda p: p.name)
def test_unit_has_the_required_hardening(unit: Path) -> None:
    service = _directives(unit)
    for key, value in REQUIRED.items():
        assert service.get(key) == [value], f"{key}: {service.get(key)}"
    assert service["SystemCallFilter"][0] == "@system-service"
    assert service["ExecStart"] == [f"{EXEC} serve --config /etc/proof-messenger/relay.yaml"]
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(unit, encoding="utf-8")
    assert parser["Install"]["WantedBy"] == "multi-user.target"


def test_template_unit_differs_only_in_the_port() -> None:
    def body(path: Path) -> list[str]:
        text = path.read_text(encoding="utf-8")
        return text[text.index("[Unit]") :].splitlines()

    differences = [(a, b) for a, b in zip(body(UNIT), body(TEMPLATE_UNIT), strict=True) if a != b]
    assert [b for _, b in differences] == [
        "Description=Proof-Messenger relay instance on 127.0.0.1:%i",
        "Environment=BIND_ADDRESS=127.0.0.1:%i",
    ]


def _unit_copy(tmp_path: Path, unit: Path, name: str) -> Path:
    """The unit with ExecStart pointing at an executable that exists here (verify checks it)."""
    text = unit.read_text(encoding="utf-8")
    assert EXEC in text
    copy = tmp_path / name
    copy.write_text(text.replace(EXEC, sys.executable), encoding="utf-8")
    return copy


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize(
    ("unit", "name", "verify_as"),
    [
        (UNIT, "proof-messenger.service", "proof-messenger.service"),
        (TEMPLATE_UNIT, "proof-messenger@.service", "proof-messenger@8081.service"),
    ],
    ids=["single", "template"],
)
def test_systemd_analyze_verify(tmp_path: Path, unit: Path, name: str, verify_as: str) -> None:
    assert SYSTEMD_ANALYZE is not None
    _unit_copy(tmp_path, unit, name)
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", verify_as],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr.strip() == "", result.stderr


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_security_exposure_is_low(tmp_path: Path) -> None:
    """`systemd-analyze security --offline` scores the sandbox; fail above 2.0 ("OK" is < 4)."""
    assert SYSTEMD_ANALYZE is not None
    copy = _unit_copy(tmp_path, UNIT, "proof-messenger.service")
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=true", "--threshold=20", "--no-pager", str(copy)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if "--offline" in result.stderr and "unrecognized" in result.stderr:
        pytest.skip("this systemd-analyze has no --offline (needs systemd 252 or newer)")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Overall exposure level for proof-messenger.service" in result.stdout


def test_install_sh_is_strict_bash() -> None:
    lines = INSTALL_SH.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    code = [line for line in lines if line.strip() and not line.startswith("#")]
    assert code[0] == "set -euo pipefail"
    assert os.access(INSTALL_SH, os.X_OK)
    result = subprocess.run(["bash", "-n", str(INSTALL_SH)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_install_sh_passes_shellcheck() -> None:
    result = subprocess.run(
        ["shellcheck", "--severity=style", str(INSTALL_SH)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout


def _fake_wheel(directory: Path) -> Path:
    """A stand-in for the real package: a `proof-messenger` script, installable offline."""
    wheel = directory / "pm_stand_in-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("pm_stand_in.py", "def main():\n    print('stand-in')\n")
        info = "pm_stand_in-1.0.dist-info"
        archive.writestr(
            f"{info}/METADATA", "Metadata-Version: 2.1\nName: pm-stand-in\nVersion: 1.0\n"
        )
        archive.writestr(
            f"{info}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        archive.writestr(
            f"{info}/entry_points.txt", "[console_scripts]\nproof-messenger = pm_stand_in:main\n"
        )
        archive.writestr(f"{info}/RECORD", "")
    return wheel


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="install.sh must run as root")
def test_install_sh_is_idempotent_and_keeps_local_config(tmp_path: Path) -> None:
    """Runs the installer twice into a sandbox (existing user root, no systemd reload)."""
    root = tmp_path / "root"
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "PREFIX": str(root / "opt"),
        "CONF_DIR": str(root / "etc"),
        "STATE_DIR": str(root / "state"),
        "UNIT_DIR": str(root / "units"),
        "SERVICE_USER": "root",
        "RELOAD_SYSTEMD": "no",
        "PIP_NO_INDEX": "1",
    }
    wheel = _fake_wheel(tmp_path)

    def install() -> None:
        result = subprocess.run(
            ["bash", str(INSTALL_SH), str(wheel)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr

    install()
    config = root / "etc" / "relay.yaml"
    assert config.read_text() == (SYSTEMD_DIR / "relay.yaml").read_text()
    assert config.stat().st_mode & 0o777 == 0o640
    assert (root / "etc" / "env").stat().st_mode & 0o777 == 0o640
    assert (root / "state").stat().st_mode & 0o777 == 0o750
    assert (root / "units" / "proof-messenger.service").read_text() == UNIT.read_text()
    assert (root / "units" / "proof-messenger@.service").read_text() == TEMPLATE_UNIT.read_text()
    assert (root / "opt" / "venv" / "bin" / "proof-messenger").exists()

    config.write_text("# edited by the operator\n")
    install()
    assert config.read_text() == "# edited by the operator\n"
