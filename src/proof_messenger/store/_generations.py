"""Cross-process change counters for the SQLite store's read caches.

Every ``/verify`` reads the caller's API key and the signing key, and looks the proof's
nonce up among approval requests. On SQLite each of those point reads opens a WAL read
transaction whose page cache was invalidated by the last group commit, so together they
cost about as much CPU as the ECDSA verify itself. The rows they read change rarely
(revocations, new approval requests), so each worker keeps them in memory, and every
write that changes them bumps a counter in a small shared file (``<db>-gen``, mapped by
every process on the file). A reader compares the counter before it trusts its cache.

Why this keeps revocation immediate: the writer bumps the counter *after* its COMMIT and
*before* it answers. A reader reads the counter *before* the database, so a row read
before the commit is always tagged with the old value and dropped at the next request
(see :class:`Generations`). Nothing here is time-based.

SQLite is one host by construction (its locking needs a local file system), so shared
memory reaches every process that can write the file. The PostgreSQL store does not use
this: its instances run on several hosts.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import struct
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

__all__ = ["APPROVALS", "REGISTRY", "Generations", "NonceFilter", "RecordCache"]

#: Slot of the counter for keys and API keys (revocation, sign-count changes).
REGISTRY = 0
#: Slot of the counter for approval requests (a new request's nonce).
APPROVALS = 1
_SLOTS = 2
_FMT = struct.Struct("<Q")

K = TypeVar("K")
V = TypeVar("V")


class Generations:
    """Counters shared by every process that opens the same database file.

    ``bump`` must run while the caller holds the database's cross-process write lock
    (the store's ``<db>-writelock`` flock), so read-modify-write cannot lose an update.
    An aligned 8-byte load never tears on the platforms we run on.
    """

    def __init__(self, path: str) -> None:
        self._fd: int | None = None
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < _FMT.size * _SLOTS:
                os.ftruncate(fd, _FMT.size * _SLOTS)
            self._map = mmap.mmap(fd, _FMT.size * _SLOTS, mmap.MAP_SHARED)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def read(self, slot: int) -> int:
        value: int = _FMT.unpack_from(self._map, slot * _FMT.size)[0]
        return value

    def bump(self, slot: int) -> None:
        _FMT.pack_into(self._map, slot * _FMT.size, (self.read(slot) + 1) % 2**64)

    def close(self) -> None:
        self._map.close()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class RecordCache(Generic[K, V]):
    """Rows by key, valid for one generation of a counter; bounded, no negative entries
    (an unknown id costs a read every time, so guessing ids cannot grow the cache)."""

    def __init__(self, generations: Generations, slot: int, max_entries: int = 10_000) -> None:
        self._generations = generations
        self._slot = slot
        self._max = max_entries
        self._seen = -1
        self._rows: dict[K, V] = {}

    def get(self, key: K) -> tuple[V | None, int]:
        """The cached row (or None) and the counter value to tag a fresh read with."""
        now = self._generations.read(self._slot)
        if now != self._seen:
            self._rows.clear()
            self._seen = now
            return None, now
        return self._rows.get(key), now

    def put(self, key: K, value: V, generation: int) -> None:
        if generation != self._seen:  # read under an older counter: do not keep it
            return
        if len(self._rows) >= self._max:
            self._rows.clear()
        self._rows[key] = value


class NonceFilter:
    """A Bloom filter of every approval request's nonce, loaded incrementally.

    It answers "certainly not an approval nonce" without touching the database, which is
    the answer for almost every proof; a possible match (or a false positive, about 0.2 %)
    still does the real lookup. Loading is incremental by rowid after each change of the
    approvals counter. Nonces are chosen by whoever signs the proof, so the probe positions
    come from a keyed hash: a client cannot aim for false positives (which would only cost
    it a database read anyway).
    """

    _BITS_PER_ENTRY = 16

    def __init__(
        self,
        generations: Generations,
        load: Callable[[int], Iterable[tuple[int, bytes]]],
        initial_capacity: int = 1 << 14,
    ) -> None:
        """``load(after_rowid)`` yields ``(rowid, nonce)`` of approval rows in rowid order."""
        self._generations = generations
        self._load = load
        self._key = os.urandom(16)
        if initial_capacity < 8 or initial_capacity & (initial_capacity - 1):
            raise ValueError("initial_capacity must be a power of two >= 8")
        self._capacity = initial_capacity
        self._bits = bytearray(initial_capacity * self._BITS_PER_ENTRY // 8)
        self._mask = initial_capacity * self._BITS_PER_ENTRY - 1
        self._count = 0
        self._last_rowid = 0
        self._seen = -1

    def might_contain(self, nonce: bytes) -> bool:
        now = self._generations.read(APPROVALS)
        if now != self._seen:
            self._refresh()
            self._seen = now  # only after a complete load: a failed load retries next time
        bits = self._bits
        a, b, c, d = self._positions(nonce)
        return bool(
            bits[a >> 3] & (1 << (a & 7))
            and bits[b >> 3] & (1 << (b & 7))
            and bits[c >> 3] & (1 << (c & 7))
            and bits[d >> 3] & (1 << (d & 7))
        )

    def _positions(self, nonce: bytes) -> tuple[int, int, int, int]:
        # One keyed 128-bit hash, cut into four 32-bit probes; the table size is a power
        # of two, so a mask picks the bit.
        h = int.from_bytes(hashlib.blake2b(nonce, digest_size=16, key=self._key).digest(), "little")
        mask = self._mask
        return (h & mask, (h >> 32) & mask, (h >> 64) & mask, (h >> 96) & mask)

    def _add(self, nonce: bytes) -> None:
        for i in self._positions(nonce):
            self._bits[i >> 3] |= 1 << (i & 7)

    def _refresh(self) -> None:
        rows = list(self._load(self._last_rowid))
        if self._count + len(rows) > self._capacity:
            # Grow (rare): rebuild from the start at four times the size.
            capacity = self._capacity
            while self._count + len(rows) > capacity:
                capacity *= 4
            everything = list(self._load(0))
            self._capacity = capacity
            self._bits = bytearray(capacity * self._BITS_PER_ENTRY // 8)
            self._mask = capacity * self._BITS_PER_ENTRY - 1
            self._count = 0
            rows = everything
        for rowid, nonce in rows:
            self._add(bytes(nonce))
            self._count += 1
            self._last_rowid = max(self._last_rowid, rowid)
