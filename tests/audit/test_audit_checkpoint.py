"""C2SP signed notes and checkpoints, including notes signed by Go and by sum.golang.org."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_public_key,
)

from proof_messenger.audit.checkpoint import (
    Checkpoint,
    CheckpointError,
    LogKeyError,
    LogSigner,
    NoteVerifier,
    format_verifier_key,
    generate_log_key,
    load_log_key,
    open_note,
    parse_verifier_key,
    public_key_pem,
)
from proof_messenger.audit.merkle import EMPTY_ROOT, leaf_hash

# --- Known-answer data from golang.org/x/mod/sumdb/note (note_test.go, BSD licence). ---
PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
PETER_SIG = (
    "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKv"
    "qfqdngotpRZb6KE6RyyBwJnAM=\n"
)
ENOCH_SIG = (
    "— EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGw"
    "nWLox33WWd1RvMc+QQ=\n"
)

# --- A real checkpoint served by https://sum.golang.org/latest (2024-09-23), quoted in
# transparency-dev/formats log/checkpoint_test.go, and the Go checksum database key. ---
SUMDB_VKEY = "sum.golang.org+033de0ae+Ac4zctda0e5eza+HJyk9SxEdh+s3Ux18htTTAD8OuAn8"
SUMDB_CHECKPOINT = (
    "go.sum database tree\n"
    "30055305\n"
    "mXfgRcJ0bG0j3CPdKwgGWtUzBUbX67saZGRmFuJGGsM=\n"
    "\n"
    "— sum.golang.org Az3grpgEild5qw7+5dtV13Kf1C2Xurm8q4fhdxvcsDHnqNTaxL2AFjBY+2TyGKevuc"
    "FcAAlWFJJYle3EJlDCrQ+y3A8=\n"
)


def test_go_known_keys_parse_and_match() -> None:
    signer = LogSigner.from_signer_key(PETER_SKEY)
    assert signer.name == "PeterNeumann"
    assert signer.key_hash == 0xC74F20A3
    assert signer.verifier_key == PETER_VKEY
    v = parse_verifier_key(PETER_VKEY)
    assert (v.name, v.key_hash) == ("PeterNeumann", 0xC74F20A3)
    assert format_verifier_key(v.name, v.public_key) == PETER_VKEY


def test_our_signer_reproduces_go_signature_bytes() -> None:
    # Ed25519 is deterministic: same key + same text => Go's exact output.
    signer = LogSigner.from_signer_key(PETER_SKEY)
    assert signer.sign_note(GO_TEXT) == GO_TEXT + "\n" + PETER_SIG


def test_open_go_signed_note() -> None:
    peter, enoch = parse_verifier_key(PETER_VKEY), parse_verifier_key(ENOCH_VKEY)
    note = GO_TEXT + "\n" + PETER_SIG + ENOCH_SIG
    opened = open_note(note, [peter])
    assert opened.text == GO_TEXT
    assert [(s.name, s.key_hash) for s in opened.verified] == [("PeterNeumann", 0xC74F20A3)]
    assert [(s.name, s.key_hash) for s in opened.unverified] == [("EnochRoot", 0xAF0CFE78)]
    both = open_note(note.encode(), [peter, enoch])
    assert len(both.verified) == 2 and not both.unverified
    with pytest.raises(CheckpointError, match="no signature from a trusted key"):
        open_note(note, [])
    with pytest.raises(CheckpointError, match="ambiguous key EnochRoot"):
        open_note(GO_TEXT + "\n" + ENOCH_SIG, [enoch, peter, enoch])


def test_real_sum_golang_org_checkpoint() -> None:
    verifier = parse_verifier_key(SUMDB_VKEY)
    cp = Checkpoint.parse(SUMDB_CHECKPOINT, verifier)
    assert cp.origin == "go.sum database tree"
    assert cp.size == 30055305
    assert cp.root_hash == base64.b64decode("mXfgRcJ0bG0j3CPdKwgGWtUzBUbX67saZGRmFuJGGsM=")
    assert cp.extensions == ()
    assert Checkpoint.parse(SUMDB_CHECKPOINT, [verifier], origin="go.sum database tree") == cp
    with pytest.raises(CheckpointError, match="origin"):
        Checkpoint.parse(SUMDB_CHECKPOINT, verifier, origin="example.com/other")
    tampered = SUMDB_CHECKPOINT.replace("30055305", "30055306")
    with pytest.raises(CheckpointError, match=r"invalid signature for key sum\.golang\.org"):
        Checkpoint.parse(tampered, verifier)


@pytest.mark.parametrize(
    "bad",
    [
        GO_TEXT,
        GO_TEXT + "\n",
        GO_TEXT + "\n" + PETER_SIG[:-1],
        "\x01" + GO_TEXT + "\n" + PETER_SIG,
        GO_TEXT + "\n" + PETER_SIG.replace("PeterNeumann", "Bad Name"),
        GO_TEXT + "\n" + PETER_SIG + "Unexpected line.\n",
        GO_TEXT + "\n" + PETER_SIG.replace("— ", "-- "),
        GO_TEXT + "\n" + PETER_SIG.replace("— ", "—"),
        GO_TEXT + "\n" + PETER_SIG.replace("=\n", "\n"),  # unpadded base64
        GO_TEXT + "\n" + "— PeterNeumann x08gow==\n",  # key hash but no signature bytes
        GO_TEXT + "\r\n" + PETER_SIG,
        GO_TEXT + "\n" + PETER_SIG * 101,
    ],
)
def test_malformed_notes_rejected(bad: str) -> None:
    with pytest.raises(CheckpointError, match="malformed note"):
        open_note(bad, [parse_verifier_key(PETER_VKEY)])


def test_invalid_utf8_rejected() -> None:
    with pytest.raises(CheckpointError, match="UTF-8"):
        open_note(b"\xff" + (GO_TEXT + "\n" + PETER_SIG).encode(), [parse_verifier_key(PETER_VKEY)])


def test_corrupted_known_signature_rejects_whole_note() -> None:
    sig = PETER_SIG[:60] + "ABCD" + PETER_SIG[60:]
    with pytest.raises(CheckpointError, match="invalid signature for key PeterNeumann"):
        open_note(GO_TEXT + "\n" + sig, [parse_verifier_key(PETER_VKEY)])


def test_duplicate_and_unknown_signatures_tolerated() -> None:
    peter = parse_verifier_key(PETER_VKEY)
    enoch_bad = ENOCH_SIG[:60] + "ABCD" + ENOCH_SIG[60:]  # unknown key: never checked
    note = GO_TEXT + "\n" + PETER_SIG + PETER_SIG + ENOCH_SIG + ENOCH_SIG + enoch_bad
    opened = open_note(note, [peter])
    assert len(opened.verified) == 1
    assert len(opened.unverified) == 2


def test_note_text_may_contain_blank_lines() -> None:
    signer = LogSigner("example.com/log", Ed25519PrivateKey.generate())
    text = "a\n\nb\n"
    opened = open_note(signer.sign_note(text), [signer.verifier])
    assert opened.text == text


@pytest.mark.parametrize(
    "vkey",
    [
        PETER_VKEY.replace("c74f20a3", "c74f20a4"),  # hash does not match
        PETER_VKEY.replace("+ARpc", "+AXpc"),  # key changed, hash not
        "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==",
        "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "PeterNeumann+c74f20a3",
        "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        PETER_VKEY[:-1],
        PETER_VKEY + "=",
    ],
)
def test_bad_verifier_keys_rejected(vkey: str) -> None:
    with pytest.raises(ValueError):
        parse_verifier_key(vkey)


def test_every_truncation_of_the_verifier_key_is_rejected() -> None:
    for i in range(len(PETER_VKEY)):
        with pytest.raises(ValueError):
            parse_verifier_key(PETER_VKEY[:i])


# --------------------------------------------------------------------------- our checkpoints

ROOT = leaf_hash(b"root")


def _signer(name: str = "relay.example/audit") -> LogSigner:
    return LogSigner(name, Ed25519PrivateKey.generate())


def test_checkpoint_body_format() -> None:
    cp = Checkpoint("relay.example/audit", 42, ROOT)
    assert cp.to_body() == f"relay.example/audit\n42\n{base64.b64encode(ROOT).decode()}\n"
    empty = Checkpoint("relay.example/audit", 0, EMPTY_ROOT, ("ext one", "ext2"))
    assert empty.to_body() == (
        "relay.example/audit\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\next one\next2\n"
    )
    assert Checkpoint.from_body(empty.to_body()) == empty


def test_checkpoint_round_trip() -> None:
    signer = _signer()
    cp = Checkpoint(signer.name, 1234, ROOT, ["x-ext"])  # type: ignore[arg-type]
    note = signer.sign_checkpoint(cp)
    assert note.startswith(cp.to_body() + "\n— relay.example/audit ")
    assert note.count("\n") == 6
    parsed = Checkpoint.parse(note, signer.verifier, origin=signer.name)
    assert parsed == cp and parsed.extensions == ("x-ext",)
    # The verifier survives its string form, as an operator would configure it.
    assert Checkpoint.parse(note, parse_verifier_key(signer.verifier_key)) == cp


def test_checkpoint_cosigned_by_unknown_witness_still_parses() -> None:
    log, witness = _signer(), _signer("witness.example")
    body = Checkpoint(log.name, 7, ROOT).to_body()
    note = log.sign_note(body) + witness.signature_line(body)
    assert Checkpoint.parse(note, log.verifier).size == 7
    assert Checkpoint.parse(note, witness.verifier).size == 7
    assert Checkpoint.parse(note, [witness.verifier, log.verifier]).size == 7


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("\n1234\n", "\n1235\n"),
        ("relay.example/audit\n1234", "relay.example/audiT\n1234"),
        ("=\n\n", "=\nextra\n\n"),
    ],
)
def test_tampered_checkpoint_rejected(old: str, new: str) -> None:
    signer = _signer()
    note = signer.sign_checkpoint(Checkpoint(signer.name, 1234, ROOT))
    assert old in note
    with pytest.raises(CheckpointError, match="invalid signature"):
        Checkpoint.parse(note.replace(old, new, 1), signer.verifier)


def test_tampered_root_rejected() -> None:
    signer = _signer()
    note = signer.sign_checkpoint(Checkpoint(signer.name, 5, ROOT))
    other = base64.b64encode(leaf_hash(b"other")).decode()
    with pytest.raises(CheckpointError, match="invalid signature"):
        Checkpoint.parse(note.replace(base64.b64encode(ROOT).decode(), other), signer.verifier)


def test_wrong_key_rejected() -> None:
    signer, impostor = _signer(), _signer()  # same name, different key => different key hash
    note = impostor.sign_checkpoint(Checkpoint(signer.name, 5, ROOT))
    with pytest.raises(CheckpointError, match="no signature from a trusted key"):
        Checkpoint.parse(note, signer.verifier)
    # Same name and forged key hash: the signature itself must fail.
    forged = note.replace(
        note.split(" ")[-1],
        base64.b64encode(
            signer.key_hash.to_bytes(4, "big") + base64.b64decode(note.split(" ")[-1])[4:]
        ).decode()
        + "\n",
    )
    with pytest.raises(CheckpointError, match="invalid signature"):
        Checkpoint.parse(forged, signer.verifier)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("relay\n01\n{root}\n", "not canonical"),
        ("relay\n+1\n{root}\n", "not canonical"),
        ("relay\n 1\n{root}\n", "not canonical"),
        ("relay\n1_0\n{root}\n", "not canonical"),
        ("relay\n١\n{root}\n", "not canonical"),  # Arabic-Indic digit: int() would accept it
        ("relay\n18446744073709551616\n{root}\n", "out of range"),
        ("relay\n1\n{short}\n", "root hash is 31 bytes"),
        ("relay\n1\nnot base64!\n", "not valid base64"),
        ("relay\n1\n", "needs origin, size and root"),
        ("\n1\n{root}\n", "empty origin"),
        ("relay\n1\n{root}\n\n", "malformed"),
    ],
)
def test_malformed_checkpoint_bodies(body: str, reason: str) -> None:
    signer = _signer("relay")
    body = body.format(
        root=base64.b64encode(ROOT).decode(), short=base64.b64encode(ROOT[:31]).decode()
    )
    note = body + "\n" + signer.signature_line(body)
    with pytest.raises(CheckpointError, match=reason):
        Checkpoint.parse(note, signer.verifier)


def test_checkpoint_constructor_validates() -> None:
    with pytest.raises(CheckpointError):
        Checkpoint("a\nb", 1, ROOT)
    with pytest.raises(CheckpointError):
        Checkpoint("a", -1, ROOT)
    with pytest.raises(CheckpointError):
        Checkpoint("a", 1, ROOT, ("",))
    with pytest.raises(ValueError):
        LogSigner("bad name", Ed25519PrivateKey.generate())
    with pytest.raises(ValueError):
        LogSigner("a+b", Ed25519PrivateKey.generate())


# --------------------------------------------------------------------------- key files


def test_log_key_files(tmp_path: Path) -> None:
    path = tmp_path / "log.pem"
    key = generate_log_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    loaded = load_log_key(path)
    assert public_key_pem(loaded) == public_key_pem(key)
    pub = load_pem_public_key(public_key_pem(key).encode())
    assert isinstance(pub, type(key.public_key()))
    assert public_key_pem(key.public_key()) == public_key_pem(key)
    with pytest.raises(LogKeyError, match="refusing to overwrite"):
        generate_log_key(path)
    # A note signed with the loaded key verifies with the generated one.
    note = LogSigner("l", loaded).sign_checkpoint(Checkpoint("l", 1, ROOT))
    Checkpoint.parse(note, NoteVerifier.from_public_key("l", key.public_key()))


def test_load_log_key_errors(tmp_path: Path) -> None:
    with pytest.raises(LogKeyError, match="cannot read"):
        load_log_key(tmp_path / "missing.pem")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key")
    with pytest.raises(LogKeyError, match="not an unencrypted PEM"):
        load_log_key(garbage)
    ec = tmp_path / "ec.pem"
    ec.write_bytes(
        generate_private_key(SECP256R1()).private_bytes(
            Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
        )
    )
    os.chmod(ec, 0o600)
    with pytest.raises(LogKeyError, match="must be Ed25519"):
        load_log_key(ec)
