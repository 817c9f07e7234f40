"""Backend-neutral Merkle bookkeeping for the audit log (pure; the backends do the I/O).

Each group-commit batch extends the persisted frontier (``CompactTree``) by the batch's
leaves and writes every perfect subtree the batch completes to ``merkle_nodes``; both
happen in the batch's transaction, so the tree can never disagree with the chain. A proof
then needs only O(log n) stored node hashes: :func:`plan_nodes` lists them (the ranges a
proof asks for depend on sizes only, never on hash values) so a store fetches them in one
query before the pure proof algorithm runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from proof_messenger.audit.chain import entry_bytes
from proof_messenger.audit.merkle import (
    CompactTree,
    SubtreeRoot,
    consistency_proof_from,
    inclusion_proof_from,
    leaf_hash,
    node_hash,
    subtree_root_from_perfect,
)

from .base import AuditRecord, StoreError

__all__ = [
    "Node",
    "check_nodes",
    "extend_tree",
    "lookup",
    "plan_consistency",
    "plan_inclusion",
    "plan_root",
    "record_leaf_hash",
    "root_from_nodes",
]

Node = tuple[int, int, bytes]
"""``(level, idx, hash)`` of a complete perfect subtree (level >= 1)."""

_ZERO = bytes(32)


def record_leaf_hash(record: AuditRecord) -> bytes:
    """The Merkle leaf of a committed row: ``SHA-256(0x00 || entry_bytes(seq, draft))``."""
    return leaf_hash(entry_bytes(record.seq, record.draft))


def extend_tree(tree: CompactTree, leaves: Iterable[bytes]) -> tuple[CompactTree, list[Node]]:
    """Append leaf hashes; return the new frontier and the perfect subtrees completed."""
    size = tree.size
    hashes = list(tree.hashes)
    nodes: list[Node] = []
    for leaf in leaves:
        index, h, s, level = size, leaf, size, 0
        while s & 1:  # each trailing 1 bit: merge with the same-height subtree on the left
            h = node_hash(hashes.pop(), h)
            s >>= 1
            level += 1
            nodes.append((level, index >> level, h))
        hashes.append(h)
        size += 1
    return CompactTree(size, hashes), nodes


def _plan(run: Callable[[SubtreeRoot], object]) -> list[tuple[int, int]]:
    wanted: list[tuple[int, int]] = []

    def record(level: int, idx: int) -> bytes:
        wanted.append((level, idx))
        return _ZERO

    run(subtree_root_from_perfect(record))
    return list(dict.fromkeys(wanted))


def plan_inclusion(index: int, size: int) -> list[tuple[int, int]]:
    """The perfect subtrees an inclusion proof for ``index`` in a tree of ``size`` reads."""
    return _plan(lambda sr: inclusion_proof_from(index, size, sr))


def plan_consistency(size1: int, size2: int) -> list[tuple[int, int]]:
    """The perfect subtrees a consistency proof ``size1 -> size2`` reads."""
    return _plan(lambda sr: consistency_proof_from(size1, size2, sr))


def plan_root(size: int) -> list[tuple[int, int]]:
    """The perfect subtrees whose fold is the root of the tree of ``size`` (> 0)."""
    out: list[tuple[int, int]] = []
    pos = 0
    for level in reversed(range(size.bit_length())):
        if size >> level & 1:
            out.append((level, pos >> level))
            pos += 1 << level
    return out


def lookup(found: dict[tuple[int, int], bytes]) -> SubtreeRoot:
    """A ``SubtreeRoot`` over fetched nodes; a missing node is a damaged store."""

    def perfect_root(level: int, idx: int) -> bytes:
        try:
            return found[(level, idx)]
        except KeyError:
            raise StoreError(
                f"Merkle node (level {level}, index {idx}) is missing from the store"
            ) from None

    return subtree_root_from_perfect(perfect_root)


def root_from_nodes(size: int, found: dict[tuple[int, int], bytes]) -> bytes:
    return lookup(found)(0, size)


def check_nodes(wanted: Sequence[tuple[int, int]], size_limit: int) -> None:
    """Refuse node requests outside the committed tree (bounded, cheap validation)."""
    for level, idx in wanted:
        if level < 0 or idx < 0 or (idx + 1) << level > size_limit:
            raise ValueError(f"node (level {level}, index {idx}) is outside the tree")
