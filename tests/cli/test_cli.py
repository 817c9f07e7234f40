"""The offline ``proof-messenger`` commands, run as real subprocesses.

Exit codes are the interface: 0 ok, 1 proof rejected (``rejected: <code>: ...`` on
stderr), 2 usage or input error.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from proof_messenger.cli.main import cli
from proof_messenger.protocol import (
    Intent,
    ProofError,
    Verifier,
    VerifierSettings,
    b64u_decode,
    b64u_encode,
    kid_for,
    load_public_key,
    single_key_resolver,
)
from tests.conftest import REPO

AUD = "payments.example.com"
CTX = {
    "type": "wire_transfer",
    "amount_minor": 1250000,
    "currency": "EUR",
    "recipient": {"name": "ACME GmbH", "iban": "DE89370400440532013000"},
}


def run(*args: str, env: dict[str, str] | None = None, stdin: bytes | None = None) -> Any:
    full_env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "proof_messenger.cli", *args],
        capture_output=True,
        env=full_env,
        input=stdin,
        timeout=120,
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One key, one context, one signed proof - built through the CLI itself."""
    tmp = tmp_path_factory.mktemp("cli")
    keygen = run("keygen", "--out", str(tmp / "alice.pem"))
    assert keygen.returncode == 0, keygen.stderr
    (tmp / "ctx.json").write_text(json.dumps(CTX))
    signed = run(
        "sign", "--key", str(tmp / "alice.pem"), "--context", str(tmp / "ctx.json"),
        "--aud", AUD, "--sub", "alice",
    )  # fmt: skip
    assert signed.returncode == 0, signed.stderr
    (tmp / "proof.json").write_bytes(signed.stdout)
    return {
        "dir": tmp,
        "key": tmp / "alice.pem",
        "pub": tmp / "alice.pub.pem",
        "kid": keygen.stdout.decode().strip(),
        "proof": json.loads(signed.stdout),
        "proof_path": tmp / "proof.json",
    }


def verify_args(world: dict[str, Any], proof_path: Path, *extra: str) -> list[str]:
    return ["verify", "--proof", str(proof_path), "--public-key", str(world["pub"]),
            "--aud", AUD, *extra]  # fmt: skip


# --- keygen --------------------------------------------------------------------------------------
def test_keygen_writes_both_files_with_private_key_0600(world: dict[str, Any]) -> None:
    assert stat.S_IMODE(world["key"].stat().st_mode) == 0o600
    assert world["key"].read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert world["pub"].read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert world["kid"] == kid_for(load_public_key(world["pub"].read_bytes()))


def test_keygen_refuses_to_overwrite(world: dict[str, Any]) -> None:
    before = world["key"].read_bytes()
    result = run("keygen", "--out", str(world["key"]))
    assert result.returncode == 2
    assert b"exists (use --force to overwrite)" in result.stderr
    assert world["key"].read_bytes() == before


def test_keygen_force_keeps_0600_even_over_a_world_readable_file(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    path.write_text("old")
    path.chmod(0o644)
    result = run("keygen", "--out", str(path), "--force")
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert (tmp_path / "k.pub.pem").exists()


def test_encrypted_key_round_trip_and_wrong_passphrase(tmp_path: Path) -> None:
    key = tmp_path / "enc.pem"
    made = run(
        "keygen", "--out", str(key), "--passphrase-env", "PM_PASS", env={"PM_PASS": "s3cret"}
    )
    assert made.returncode == 0, made.stderr
    assert key.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    (tmp_path / "ctx.json").write_text(json.dumps(CTX))
    sign = ["sign", "--key", str(key), "--context", str(tmp_path / "ctx.json"),
            "--aud", AUD, "--sub", "alice"]  # fmt: skip
    ok = run(*sign, "--passphrase-env", "PM_PASS", env={"PM_PASS": "s3cret"})
    assert ok.returncode == 0, ok.stderr
    proof = json.loads(ok.stdout)
    assert proof["kid"] == made.stdout.decode().strip()
    wrong = run(*sign, "--passphrase-env", "PM_PASS", env={"PM_PASS": "wrong"})
    assert wrong.returncode == 2 and b"passphrase is wrong" in wrong.stderr
    missing = run(*sign)
    assert missing.returncode == 2 and b"encrypted" in missing.stderr
    unset = run(*sign, "--passphrase-env", "PM_UNSET_VAR_FOR_TEST")
    assert unset.returncode == 2 and b"PM_UNSET_VAR_FOR_TEST is not set" in unset.stderr


# --- sign / verify -------------------------------------------------------------------------------
def test_sign_then_verify(world: dict[str, Any]) -> None:
    result = run(*verify_args(world, world["proof_path"], "--sub", "alice"))
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    intent = Intent.from_bytes(b64u_decode(world["proof"]["intent"]))
    assert "valid proof" in out
    assert intent.proof_id() in out and world["kid"] in out
    for text in ("subject", "alice", "Transaction context", "recipient.iban",
                 "DE89370400440532013000", "amount_minor", "1250000"):  # fmt: skip
        assert text in out


def test_verify_json_output(world: dict[str, Any]) -> None:
    result = run(*verify_args(world, world["proof_path"], "--json"))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["valid"] is True and summary["context"] == CTX and summary["sub"] == "alice"


def test_sign_cbor_and_verify_cbor(world: dict[str, Any], tmp_path: Path) -> None:
    signed = run("sign", "--key", str(world["key"]), "--context", "-", "--aud", AUD,
                 "--sub", "alice", "--cbor", stdin=json.dumps(CTX).encode())  # fmt: skip
    assert signed.returncode == 0, signed.stderr
    assert signed.stdout[:1] == b"\xa6"  # a CBOR map of six fields
    (tmp_path / "proof.cbor").write_bytes(signed.stdout)
    assert run(*verify_args(world, tmp_path / "proof.cbor")).returncode == 0


def _tampered(world: dict[str, Any], tmp: Path, field: str, index: int) -> Path:
    envelope = dict(world["proof"])
    raw = bytearray(b64u_decode(envelope[field]))
    raw[index] ^= 0x01
    envelope[field] = b64u_encode(bytes(raw))
    path = tmp / f"{field}-{index}.json"
    path.write_text(json.dumps(envelope))
    return path


def _expected_code(world: dict[str, Any], path: Path) -> str:
    verifier = Verifier(
        VerifierSettings(audience=AUD),
        keys=single_key_resolver(load_public_key(world["pub"].read_bytes())),
    )
    with pytest.raises(ProofError) as info:
        verifier.verify(path.read_bytes())
    return info.value.code


def test_tampered_proofs_fail_with_the_right_code(world: dict[str, Any], tmp_path: Path) -> None:
    """Real subprocesses, a spread of positions over both fields (all bytes: next test)."""
    intent_len = len(b64u_decode(world["proof"]["intent"]))
    positions = {("sig", i) for i in (0, 1, 31, 32, 33, 63)}
    positions |= {("intent", i) for i in range(0, intent_len, max(1, intent_len // 12))}
    positions |= {("intent", intent_len - 1)}
    for field, index in sorted(positions):
        path = _tampered(world, tmp_path, field, index)
        result = run(*verify_args(world, path))
        expected = "invalid_signature" if field == "sig" else _expected_code(world, path)
        assert result.returncode == 1, (field, index, result.stdout)
        assert result.stderr.decode().startswith(f"rejected: {expected}: "), (field, index)


def test_every_byte_of_intent_and_sig_is_protected(world: dict[str, Any], tmp_path: Path) -> None:
    """Exhaustive, in-process (same command object, Click's runner): flip each byte."""
    runner = CliRunner()
    checks_2_to_6 = {
        "malformed_intent", "non_canonical_encoding", "invalid_context", "unsupported_version",
        "wrong_audience", "not_yet_valid", "expired", "lifetime_too_long",
        "unknown_key", "key_revoked", "subject_mismatch", "invalid_signature",
    }  # fmt: skip
    for field in ("intent", "sig"):
        for index in range(len(b64u_decode(world["proof"][field]))):
            path = _tampered(world, tmp_path, field, index)
            result = runner.invoke(cli, verify_args(world, path))
            assert result.exit_code == 1, (field, index, result.output)
            code = result.stderr.split(":")[1].strip()
            assert code in checks_2_to_6, (field, index, result.stderr)
            if field == "sig":
                assert code == "invalid_signature"
            else:
                assert code == _expected_code(world, path)


def test_wrong_audience(world: dict[str, Any]) -> None:
    args = verify_args(world, world["proof_path"])
    args[args.index("--aud") + 1] = "other.example.com"
    result = run(*args)
    assert result.returncode == 1
    assert result.stderr.startswith(b"rejected: wrong_audience: ")


def test_subject_mismatch(world: dict[str, Any]) -> None:
    result = run(*verify_args(world, world["proof_path"], "--sub", "bob"))
    assert result.returncode == 1
    assert result.stderr.startswith(b"rejected: subject_mismatch: ")


def test_expired_when_verified_in_the_future(world: dict[str, Any]) -> None:
    intent = Intent.from_bytes(b64u_decode(world["proof"]["intent"]))
    result = run(*verify_args(world, world["proof_path"], "--at", str(intent.exp + 61)))
    assert result.returncode == 1
    assert result.stderr.startswith(b"rejected: expired: ")
    early = run(*verify_args(world, world["proof_path"], "--at", str(intent.iat - 61)))
    assert early.returncode == 1 and early.stderr.startswith(b"rejected: not_yet_valid: ")


def test_other_key_is_unknown_key(world: dict[str, Any], tmp_path: Path) -> None:
    assert run("keygen", "--out", str(tmp_path / "bob.pem")).returncode == 0
    result = run("verify", "--proof", str(world["proof_path"]),
                 "--public-key", str(tmp_path / "bob.pub.pem"), "--aud", AUD)  # fmt: skip
    assert result.returncode == 1 and result.stderr.startswith(b"rejected: unknown_key: ")


# --- inspect -------------------------------------------------------------------------------------
def test_inspect_decodes_without_verifying(world: dict[str, Any], tmp_path: Path) -> None:
    # a proof with a broken signature still inspects fine
    path = _tampered(world, tmp_path, "sig", 10)
    result = run("inspect", str(path))
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert "NOT VERIFIED" in out and "wire_transfer" in out and "alice" in out
    as_json = run("inspect", str(path), "--json")
    view = json.loads(as_json.stdout)
    intent = Intent.from_bytes(b64u_decode(world["proof"]["intent"]))
    assert view["proof_id"] == intent.proof_id() and view["intent"]["ctx"] == CTX
    assert view["digest"] == intent.digest().hex() and view["has_public_key"] is True


def test_inspect_of_a_broken_intent_reports_the_code(world: dict[str, Any], tmp_path: Path) -> None:
    envelope = dict(world["proof"])
    envelope["intent"] = b64u_encode(b64u_decode(envelope["intent"]) + b"\x00")
    (tmp_path / "p.json").write_text(json.dumps(envelope))
    result = run("inspect", str(tmp_path / "p.json"))
    assert result.returncode == 1 and result.stderr.startswith(b"rejected: malformed_intent: ")


# --- usage errors --------------------------------------------------------------------------------
def test_missing_option_is_a_usage_error(world: dict[str, Any]) -> None:
    result = run("verify", "--proof", str(world["proof_path"]), "--aud", AUD)
    assert result.returncode == 2 and b"--public-key" in result.stderr


def test_unreadable_file_is_a_usage_error(world: dict[str, Any], tmp_path: Path) -> None:
    result = run(*verify_args(world, tmp_path / "nope.json"))
    assert result.returncode == 2 and b"cannot read" in result.stderr
    result = run("inspect", str(tmp_path))
    assert result.returncode == 2 and b"cannot read" in result.stderr


@pytest.mark.parametrize(
    ("ctx", "message"),
    [
        ({"type": "t", "a": {"b": 1.5}}, b"ctx.a.b: floats are not allowed"),
        ({"amount": 1}, b"ctx.type: required key is missing"),
        ([1], b"ctx: must be a map"),
    ],
)
def test_bad_context_is_a_usage_error_naming_the_path(
    world: dict[str, Any], tmp_path: Path, ctx: Any, message: bytes
) -> None:
    (tmp_path / "ctx.json").write_text(json.dumps(ctx))
    result = run("sign", "--key", str(world["key"]), "--context", str(tmp_path / "ctx.json"),
                 "--aud", AUD, "--sub", "alice")  # fmt: skip
    assert result.returncode == 2
    assert message in result.stderr.replace(b"\n", b"")
    assert result.stdout == b""


@pytest.mark.parametrize(
    "text", [b"{not json", b"[" * 100_000, b"\xff\xfe"], ids=["syntax", "deep", "binary"]
)
def test_unparseable_context_is_a_usage_error(
    world: dict[str, Any], tmp_path: Path, text: bytes
) -> None:
    """Regression: a deeply nested context used to crash with a RecursionError traceback."""
    (tmp_path / "ctx.json").write_bytes(text)
    result = run("sign", "--key", str(world["key"]), "--context", str(tmp_path / "ctx.json"),
                 "--aud", AUD, "--sub", "alice")  # fmt: skip
    assert result.returncode == 2 and b"not valid JSON" in result.stderr
    assert b"Traceback" not in result.stderr


def test_undecodable_audience_is_a_usage_error(world: dict[str, Any]) -> None:
    """Regression: non-UTF-8 argv bytes became lone surrogates and crashed the encoder."""
    bad = os.fsdecode(b"pay\xffments")
    signed = run("sign", "--key", str(world["key"]), "--context", "-", "--aud", bad,
                 "--sub", "alice", stdin=json.dumps(CTX).encode())  # fmt: skip
    assert signed.returncode == 2 and b"aud: text is not valid Unicode" in signed.stderr
    verified = run(*verify_args(world, world["proof_path"])[:-1], bad)
    assert verified.returncode == 2 and b"Traceback" not in verified.stderr


def test_not_a_key_is_a_usage_error(world: dict[str, Any]) -> None:
    result = run("verify", "--proof", str(world["proof_path"]),
                 "--public-key", str(world["proof_path"]), "--aud", AUD)  # fmt: skip
    assert result.returncode == 2 and b"not a DER SubjectPublicKeyInfo" in result.stderr


def test_console_script_and_module_are_the_same_command() -> None:
    result = run("--help")
    assert result.returncode == 0
    for name in (b"keygen", b"sign", b"verify", b"inspect"):
        assert name in result.stdout
