"""RFC 6962 / RFC 9162 Merkle tree: hashing, incremental root, proofs, verification.

The audit log is a list of leaves; its tree head is ``MTH`` of RFC 9162 §2.1.1
with SHA-256, ``leaf = H(0x00 || data)`` and ``node = H(0x01 || left || right)``.

* ``CompactTree`` keeps only the O(log n) roots of the perfect subtrees that
  make up the tree (the "frontier"), so the relay can persist it next to its
  chain head and append a committed batch without rereading old leaves.
* ``inclusion_proof`` / ``consistency_proof`` are the PATH and SUBPROOF
  algorithms of RFC 9162 §2.1.3.1 / §2.1.4.1, written over index ranges and a
  ``subtree_root(start, end)`` callable so a store can serve cached subtree
  hashes; the ``Sequence`` variants are conveniences on top.
* ``verify_inclusion`` / ``verify_consistency`` are RFC 9162 §2.1.3.2 /
  §2.1.4.2 step by step. Conventions shared with the transparency-dev test
  vectors: every hash is 32 bytes; a consistency proof from size 0 is an
  error; when both sizes are equal the proof must be empty and the roots equal.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable, Sequence

from proof_messenger.audit.errors import MerkleProofError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "CompactTree",
    "MerkleProofError",
    "PerfectRoot",
    "SubtreeRoot",
    "consistency_proof",
    "consistency_proof_from",
    "inclusion_proof",
    "inclusion_proof_from",
    "leaf_hash",
    "node_hash",
    "root_from_leaf_hashes",
    "subtree_root_from_leaves",
    "subtree_root_from_perfect",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

SubtreeRoot = Callable[[int, int], bytes]
"""``subtree_root(start, end)`` returns MTH of the leaves ``[start, end)`` (``end > start``)."""


def leaf_hash(data: bytes) -> bytes:
    """``SHA-256(0x00 || data)``."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)``."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """Largest power of two strictly smaller than ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


def _mth(leaves: Sequence[bytes], start: int, end: int) -> bytes:
    n = end - start
    if n == 1:
        return leaves[start]
    k = _split(n)
    return node_hash(_mth(leaves, start, start + k), _mth(leaves, start + k, end))


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """Reference MTH (RFC 6962 §2.1) over already-hashed leaves; ``EMPTY_ROOT`` if none."""
    if not hashes:
        return EMPTY_ROOT
    return _mth(hashes, 0, len(hashes))


def subtree_root_from_leaves(leaf_hashes: Sequence[bytes]) -> SubtreeRoot:
    """A ``SubtreeRoot`` computing each range from the leaf hashes (no caching)."""

    def subtree_root(start: int, end: int) -> bytes:
        if not 0 <= start < end <= len(leaf_hashes):
            raise ValueError(f"bad subtree range [{start}, {end}) for {len(leaf_hashes)} leaves")
        return _mth(leaf_hashes, start, end)

    return subtree_root


PerfectRoot = Callable[[int, int], bytes]
"""``perfect_root(level, i)`` returns MTH of leaves ``[i << level, (i + 1) << level)``."""


def subtree_root_from_perfect(perfect_root: PerfectRoot) -> SubtreeRoot:
    """A ``SubtreeRoot`` built only from aligned perfect subtrees (cacheable, tile-like).

    Every range the proof algorithms ask for is a node of the RFC 6962 tree,
    i.e. starts at a multiple of its largest power-of-two part; its MTH is the
    right fold of its perfect parts, exactly like ``CompactTree.root``. A store
    that caches perfect subtree hashes (they never change once complete)
    therefore answers any proof with O(log n) lookups per proof element.
    """

    def subtree_root(start: int, end: int) -> bytes:
        if not 0 <= start < end:
            raise ValueError(f"bad subtree range [{start}, {end})")
        n, pos = end - start, start
        parts: list[bytes] = []
        for level in reversed(range(n.bit_length())):
            if n >> level & 1:
                if pos & ((1 << level) - 1):
                    raise ValueError(f"range [{start}, {end}) is not a node of the Merkle tree")
                parts.append(perfect_root(level, pos >> level))
                pos += 1 << level
        r = parts[-1]
        for h in reversed(parts[:-1]):
            r = node_hash(h, r)
        return r

    return subtree_root


# --------------------------------------------------------------------------- compact tree


class CompactTree:
    """The frontier of a Merkle tree: one root per set bit of ``size``.

    ``hashes[i]`` is the root of a perfect subtree, largest (leftmost) first;
    their sizes are the powers of two in the binary expansion of ``size``.
    Serialized form (``to_bytes``): 8-byte big-endian size, then the hashes.
    """

    __slots__ = ("_hashes", "_size")

    def __init__(self, size: int = 0, hashes: Iterable[bytes] = ()) -> None:
        hs = list(hashes)
        if size < 0 or size >= 1 << 64:
            raise ValueError(f"tree size {size} out of range")
        if len(hs) != size.bit_count():
            raise ValueError(
                f"a tree of size {size} needs {size.bit_count()} frontier hashes, got {len(hs)}"
            )
        for h in hs:
            if len(h) != HASH_SIZE:
                raise ValueError(f"frontier hash must be {HASH_SIZE} bytes, got {len(h)}")
        self._size = size
        self._hashes = [bytes(h) for h in hs]

    @property
    def size(self) -> int:
        return self._size

    @property
    def hashes(self) -> tuple[bytes, ...]:
        return tuple(self._hashes)

    def append(self, leaf: bytes) -> None:
        """Append one leaf hash (``leaf_hash(data)``, not raw data)."""
        if len(leaf) != HASH_SIZE:
            raise ValueError(f"leaf hash must be {HASH_SIZE} bytes, got {len(leaf)}")
        h = bytes(leaf)
        size = self._size
        # Each trailing 1 bit of the old size is a same-height subtree to merge with.
        while size & 1:
            h = node_hash(self._hashes.pop(), h)
            size >>= 1
        self._hashes.append(h)
        self._size += 1

    def extend(self, leaves: Iterable[bytes]) -> None:
        for leaf in leaves:
            self.append(leaf)

    def root(self) -> bytes:
        """MTH of the whole tree: fold the frontier from the right."""
        if not self._hashes:
            return EMPTY_ROOT
        r = self._hashes[-1]
        for h in reversed(self._hashes[:-1]):
            r = node_hash(h, r)
        return r

    def copy(self) -> CompactTree:
        return CompactTree(self._size, self._hashes)

    def to_bytes(self) -> bytes:
        return self._size.to_bytes(8, "big") + b"".join(self._hashes)

    @classmethod
    def from_bytes(cls, data: bytes) -> CompactTree:
        if len(data) < 8 or (len(data) - 8) % HASH_SIZE:
            raise ValueError(f"compact tree encoding has invalid length {len(data)}")
        size = int.from_bytes(data[:8], "big")
        body = data[8:]
        return cls(size, [body[i : i + HASH_SIZE] for i in range(0, len(body), HASH_SIZE)])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CompactTree):
            return NotImplemented
        return self._size == other._size and self._hashes == other._hashes

    def __hash__(self) -> int:
        return hash((self._size, tuple(self._hashes)))

    def __repr__(self) -> str:
        return f"CompactTree(size={self._size}, root={self.root().hex()})"


# --------------------------------------------------------------------------- proof generation


def _path(m: int, start: int, end: int, subtree_root: SubtreeRoot) -> list[bytes]:
    """PATH(m, D[start:end]) of RFC 9162 §2.1.3.1, ``m`` relative to ``start``."""
    n = end - start
    if n == 1:
        return []
    k = _split(n)
    if m < k:
        return [*_path(m, start, start + k, subtree_root), subtree_root(start + k, end)]
    return [*_path(m - k, start + k, end, subtree_root), subtree_root(start, start + k)]


def _subproof(
    m: int, start: int, end: int, complete: bool, subtree_root: SubtreeRoot
) -> list[bytes]:
    """SUBPROOF(m, D[start:end], b) of RFC 9162 §2.1.4.1."""
    n = end - start
    if m == n:
        return [] if complete else [subtree_root(start, end)]
    k = _split(n)
    if m <= k:
        return [
            *_subproof(m, start, start + k, complete, subtree_root),
            subtree_root(start + k, end),
        ]
    return [*_subproof(m - k, start + k, end, False, subtree_root), subtree_root(start, start + k)]


def inclusion_proof_from(index: int, size: int, subtree_root: SubtreeRoot) -> list[bytes]:
    """Audit path for leaf ``index`` in the tree of ``size`` leaves."""
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} is not in a tree of size {size}")
    return _path(index, 0, size, subtree_root)


def inclusion_proof(index: int, size: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """Audit path for leaf ``index`` in the tree made of ``leaf_hashes[:size]``."""
    if size > len(leaf_hashes):
        raise ValueError(f"tree size {size} exceeds the {len(leaf_hashes)} leaves given")
    return inclusion_proof_from(index, size, subtree_root_from_leaves(leaf_hashes))


def consistency_proof_from(size1: int, size2: int, subtree_root: SubtreeRoot) -> list[bytes]:
    """Proof that the tree of ``size1`` leaves is a prefix of the tree of ``size2``."""
    if not 0 < size1 <= size2:
        raise ValueError(f"consistency proof needs 0 < size1 <= size2, got {size1}, {size2}")
    if size1 == size2:
        return []
    return _subproof(size1, 0, size2, True, subtree_root)


def consistency_proof(size1: int, size2: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """Consistency proof between the trees made of ``leaf_hashes[:size1]`` and ``[:size2]``."""
    if size2 > len(leaf_hashes):
        raise ValueError(f"tree size {size2} exceeds the {len(leaf_hashes)} leaves given")
    return consistency_proof_from(size1, size2, subtree_root_from_leaves(leaf_hashes))


# --------------------------------------------------------------------------- verification


def _check_hash(value: bytes, what: str) -> None:
    if len(value) != HASH_SIZE:
        raise MerkleProofError(f"{what} must be {HASH_SIZE} bytes, got {len(value)}")


def _lsb(x: int) -> bool:
    return bool(x & 1)


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """RFC 9162 §2.1.3.2: raise ``MerkleProofError`` unless ``proof`` places ``leaf``.

    ``leaf`` is the leaf *hash*. Returns ``None`` on success.
    """
    _check_hash(leaf, "leaf hash")
    for i, p in enumerate(proof):
        _check_hash(p, f"proof element {i}")
    if not 0 <= index < size:
        raise MerkleProofError(f"leaf index {index} is not in a tree of size {size}")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise MerkleProofError("inclusion proof is longer than the tree is deep")
        if _lsb(fn) or fn == sn:
            r = node_hash(p, r)
            while not _lsb(fn) and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise MerkleProofError("inclusion proof is shorter than the tree is deep")
    if not hmac.compare_digest(r, root):
        raise MerkleProofError("inclusion proof does not lead to the expected root")


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    """RFC 9162 §2.1.4.2: raise ``MerkleProofError`` unless ``root1`` is a prefix of ``root2``."""
    for i, p in enumerate(proof):
        _check_hash(p, f"proof element {i}")
    if size1 < 0 or size2 < size1:
        raise MerkleProofError(f"need 0 <= size1 <= size2, got size1={size1}, size2={size2}")
    if size1 == 0:
        raise MerkleProofError("a consistency proof from the empty tree proves nothing")
    if size1 == size2:
        if proof:
            raise MerkleProofError("sizes are equal, so the proof must be empty")
        if not hmac.compare_digest(root1, root2):
            raise MerkleProofError("sizes are equal but the roots differ")
        return
    if not proof:
        raise MerkleProofError("consistency proof is empty")
    path = list(proof)
    if size1 & (size1 - 1) == 0:  # size1 is a power of two: its root is a proof node
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while _lsb(fn):
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise MerkleProofError("consistency proof is longer than needed")
        if _lsb(fn) or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not _lsb(fn) and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise MerkleProofError("consistency proof is shorter than needed")
    if not hmac.compare_digest(fr, root1):
        raise MerkleProofError("consistency proof does not reproduce the first root")
    if not hmac.compare_digest(sr, root2):
        raise MerkleProofError("consistency proof does not reproduce the second root")
