"""RFC 6962/9162 Merkle tree: public vectors, reference equivalence, generated proofs."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proof_messenger.audit.merkle import (
    EMPTY_ROOT,
    CompactTree,
    MerkleProofError,
    consistency_proof,
    consistency_proof_from,
    inclusion_proof,
    inclusion_proof_from,
    leaf_hash,
    node_hash,
    root_from_leaf_hashes,
    subtree_root_from_leaves,
    subtree_root_from_perfect,
    verify_consistency,
    verify_inclusion,
)
from tests.conftest import SHARED_VECTORS as VECTORS

MERKLE = VECTORS / "merkle"


def _b64(s: str) -> bytes:
    return base64.b64decode(s)


def _cases(kind: str) -> list[Any]:
    files = sorted((MERKLE / kind).rglob("*.json"))
    return [pytest.param(f, id=str(f.relative_to(MERKLE / kind))) for f in files]


INCLUSION = _cases("inclusion")
CONSISTENCY = _cases("consistency")


def test_vector_sets_are_present() -> None:
    # Guard against a silently empty parametrization (wrong path => zero tests).
    assert len(INCLUSION) >= 90
    assert len(CONSISTENCY) >= 90


@pytest.mark.parametrize("path", INCLUSION)
def test_inclusion_vectors(path: Path) -> None:
    v = json.loads(path.read_text())
    proof = [_b64(p) for p in v["proof"] or []]
    args = (_b64(v["leafHash"]), v["leafIdx"], v["treeSize"], proof, _b64(v["root"]))
    if v["wantErr"]:
        with pytest.raises(MerkleProofError):
            verify_inclusion(*args)
    else:
        verify_inclusion(*args)


@pytest.mark.parametrize("path", CONSISTENCY)
def test_consistency_vectors(path: Path) -> None:
    v = json.loads(path.read_text())
    proof = [_b64(p) for p in v["proof"] or []]
    args = (v["size1"], v["size2"], proof, _b64(v["root1"]), _b64(v["root2"]))
    if v["wantErr"]:
        with pytest.raises(MerkleProofError):
            verify_consistency(*args)
    else:
        verify_consistency(*args)


# RFC 6962 reference tree of the transparency-dev/merkle test data: leaves are these byte strings.
RFC6962_LEAVES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    b"\x50\x51\x52\x53\x54\x55\x56\x57",
    b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
]


def test_known_roots_match_vectors() -> None:
    leaves = [leaf_hash(d) for d in RFC6962_LEAVES]
    happy = json.loads((MERKLE / "inclusion" / "1" / "happy-path.json").read_text())
    assert root_from_leaf_hashes(leaves) == _b64(happy["root"])
    assert leaves[0] == _b64(happy["leafHash"])
    assert inclusion_proof(happy["leafIdx"], 8, leaves) == [_b64(p) for p in happy["proof"]]
    for d in sorted((MERKLE / "consistency").glob("[0-9]*")):
        v = json.loads((d / "happy-path.json").read_text())
        assert root_from_leaf_hashes(leaves[: v["size1"]]) == _b64(v["root1"])
        assert root_from_leaf_hashes(leaves[: v["size2"]]) == _b64(v["root2"])
        assert consistency_proof(v["size1"], v["size2"], leaves) == [
            _b64(p) for p in v["proof"] or []
        ]


def test_hash_definitions() -> None:
    import hashlib

    assert hashlib.sha256(b"").digest() == EMPTY_ROOT
    assert leaf_hash(b"x") == hashlib.sha256(b"\x00x").digest()
    assert node_hash(b"a", b"b") == hashlib.sha256(b"\x01ab").digest()
    assert root_from_leaf_hashes([]) == EMPTY_ROOT
    assert CompactTree().root() == EMPTY_ROOT


def _leaves(n: int, salt: int) -> list[bytes]:
    return [leaf_hash(salt.to_bytes(4, "big") + i.to_bytes(4, "big")) for i in range(n)]


@settings(max_examples=25, deadline=None)
@given(n=st.integers(min_value=0, max_value=300), salt=st.integers(0, 2**32 - 1))
def test_compact_tree_matches_reference_at_every_size(n: int, salt: int) -> None:
    leaves = _leaves(n, salt)
    tree = CompactTree()
    for i, leaf in enumerate(leaves):
        tree.append(leaf)
        assert tree.size == i + 1
        assert tree.root() == root_from_leaf_hashes(leaves[: i + 1])
        assert len(tree.hashes) == tree.size.bit_count()
    restored = CompactTree.from_bytes(tree.to_bytes())
    assert restored == tree
    assert restored.root() == root_from_leaf_hashes(leaves)
    # The persisted frontier continues exactly like the original.
    extra = _leaves(5, salt ^ 1)
    restored.extend(extra)
    assert restored.root() == root_from_leaf_hashes(leaves + extra)


@settings(max_examples=40, deadline=None)
@given(data=st.data(), n=st.integers(min_value=1, max_value=300), salt=st.integers(0, 2**32 - 1))
def test_generated_inclusion_proofs_verify_and_bind(data: st.DataObject, n: int, salt: int) -> None:
    leaves = _leaves(n, salt)
    size = data.draw(st.integers(1, n), label="size")
    index = data.draw(st.integers(0, size - 1), label="index")
    root = root_from_leaf_hashes(leaves[:size])
    proof = inclusion_proof(index, size, leaves)
    verify_inclusion(leaves[index], index, size, proof, root)

    other = (index + 1) % size
    if other != index:
        with pytest.raises(MerkleProofError):
            verify_inclusion(leaves[other], index, size, proof, root)
        with pytest.raises(MerkleProofError):
            verify_inclusion(leaves[index], other, size, proof, root)
    # (A different tree size can share the same path shape -- e.g. index 0 of 3 and 4 --
    # so size is bound by the signed checkpoint, not the proof; an impossible one fails.)
    with pytest.raises(MerkleProofError):
        verify_inclusion(leaves[index], index, index, proof, root)
    with pytest.raises(MerkleProofError):
        verify_inclusion(leaves[index], index, size, proof, node_hash(root, root))
    if proof:
        tampered = [*proof]
        tampered[-1] = bytes([tampered[-1][0] ^ 1]) + tampered[-1][1:]
        with pytest.raises(MerkleProofError):
            verify_inclusion(leaves[index], index, size, tampered, root)
        with pytest.raises(MerkleProofError):
            verify_inclusion(leaves[index], index, size, proof[:-1], root)
    with pytest.raises(MerkleProofError):
        verify_inclusion(leaves[index], index, size, [*proof, EMPTY_ROOT], root)


@settings(max_examples=40, deadline=None)
@given(data=st.data(), n=st.integers(min_value=1, max_value=300), salt=st.integers(0, 2**32 - 1))
def test_generated_consistency_proofs_verify_and_bind(
    data: st.DataObject, n: int, salt: int
) -> None:
    leaves = _leaves(n, salt)
    size2 = data.draw(st.integers(1, n), label="size2")
    size1 = data.draw(st.integers(1, size2), label="size1")
    root1 = root_from_leaf_hashes(leaves[:size1])
    root2 = root_from_leaf_hashes(leaves[:size2])
    proof = consistency_proof(size1, size2, leaves)
    verify_consistency(size1, size2, proof, root1, root2)

    if size1 < size2:
        with pytest.raises(MerkleProofError):
            verify_consistency(size1, size2, proof, root2, root1)
        with pytest.raises(MerkleProofError):
            verify_consistency(size1, size2, proof, node_hash(root1, root1), root2)
        with pytest.raises(MerkleProofError):
            verify_consistency(size1, size2, proof, root1, node_hash(root2, root2))
        with pytest.raises(MerkleProofError):
            verify_consistency(size2, size1, proof, root1, root2)
        with pytest.raises(MerkleProofError):
            verify_consistency(size1, size2, proof[:-1], root1, root2)
        with pytest.raises(MerkleProofError):
            verify_consistency(size1, size2, [*proof, EMPTY_ROOT], root1, root2)
    # A diverging history (one changed leaf before size1) is caught.
    forked = [*leaves]
    forked[0] = leaf_hash(b"forged")
    with pytest.raises(MerkleProofError):
        verify_consistency(size1, size2, proof, root_from_leaf_hashes(forked[:size1]), root2)


def test_subtree_root_variant_matches_sequence_variant() -> None:
    leaves = _leaves(37, 7)
    calls: list[tuple[int, int]] = []
    base = subtree_root_from_leaves(leaves)

    def counting(start: int, end: int) -> bytes:
        calls.append((start, end))
        return base(start, end)

    assert consistency_proof_from(13, 37, counting) == consistency_proof(13, 37, leaves)
    assert calls and all(0 <= s < e <= 37 for s, e in calls)


def test_generation_rejects_bad_arguments() -> None:
    leaves = _leaves(4, 1)
    with pytest.raises(ValueError):
        inclusion_proof(4, 4, leaves)
    with pytest.raises(ValueError):
        inclusion_proof(0, 5, leaves)
    with pytest.raises(ValueError):
        consistency_proof(0, 4, leaves)
    with pytest.raises(ValueError):
        consistency_proof(3, 2, leaves)
    assert consistency_proof(4, 4, leaves) == []


def test_compact_tree_rejects_bad_state() -> None:
    with pytest.raises(ValueError):
        CompactTree(3, [EMPTY_ROOT])  # size 3 needs two frontier hashes
    with pytest.raises(ValueError):
        CompactTree.from_bytes(b"\x00" * 7)
    with pytest.raises(ValueError):
        CompactTree.from_bytes((1).to_bytes(8, "big") + b"\x00" * 31)
    with pytest.raises(ValueError):
        CompactTree().append(b"short")


def test_verifiers_reject_wrong_length_hashes() -> None:
    leaves = _leaves(2, 3)
    root = root_from_leaf_hashes(leaves)
    with pytest.raises(MerkleProofError, match="proof element 0"):
        verify_inclusion(leaves[0], 0, 2, [leaves[1] + b"\x00"], root)
    with pytest.raises(MerkleProofError, match="leaf hash"):
        verify_inclusion(leaves[0][:31], 0, 2, [leaves[1]], root)


@settings(max_examples=30, deadline=None)
@given(data=st.data(), n=st.integers(min_value=1, max_value=200))
def test_perfect_subtree_variant_gives_identical_proofs(data: st.DataObject, n: int) -> None:
    leaves = _leaves(n, n)
    lookups: list[tuple[int, int]] = []

    def perfect_root(level: int, index: int) -> bytes:
        lookups.append((level, index))
        return root_from_leaf_hashes(leaves[index << level : (index + 1) << level])

    cached = subtree_root_from_perfect(perfect_root)
    size1 = data.draw(st.integers(1, n), label="size1")
    index = data.draw(st.integers(0, n - 1), label="index")
    assert consistency_proof_from(size1, n, cached) == consistency_proof(size1, n, leaves)
    assert inclusion_proof_from(index, n, cached) == inclusion_proof(index, n, leaves)
    assert all((i + 1) << lv <= n for lv, i in lookups)  # only complete subtrees asked for
    assert cached(0, n) == root_from_leaf_hashes(leaves)


def test_perfect_subtree_variant_rejects_non_nodes() -> None:
    cached = subtree_root_from_perfect(lambda level, index: EMPTY_ROOT)
    with pytest.raises(ValueError, match="not a node"):
        cached(1, 3)
    with pytest.raises(ValueError):
        cached(2, 2)
