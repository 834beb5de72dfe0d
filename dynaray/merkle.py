"""Merkle trees over key ranges, for anti-entropy: find the few keys two replicas disagree on.

One tree per partition (key range). Its leaves are the partition's SEGMENTS segments; a
leaf's hash is the XOR of the hashes of the (key, version) items in it, and each inner node
is the XOR of its children, as in Riak's "tictac" trees. XOR makes an update touch one path:
replacing an item's version XORs out the old item hash and XORs in the new one, at the
leaf, its parent and the root, so the tree stays current on every write without rebuilds.

Comparing two trees goes level by level, descending only into the branches that differ,
so k differing keys among M cost about k * FANOUT * depth hashes instead of M.
Pure: no Ray, no I/O.
"""

from __future__ import annotations

import mmh3

from dynaray.ring import SEGMENTS

FANOUT = 32
# Levels from the root down: 1 root, FANOUT groups, SEGMENTS leaves.
LEVELS = (1, FANOUT, SEGMENTS)
_MASK = (1 << 64) - 1


def item_hash(dkey: bytes, record: bytes) -> int:
    """64-bit hash of one key's version data (its stored record)."""
    # The key's length goes first, so no (key, record) pair can pose as another.
    return mmh3.hash128(len(dkey).to_bytes(2, "big") + dkey + record, signed=False) & _MASK


class MerkleTree:
    """The hash tree of one key range."""

    __slots__ = ("levels",)

    def __init__(self) -> None:
        self.levels = [[0] * width for width in LEVELS]

    @property
    def root(self) -> int:
        return self.levels[0][0]

    @property
    def empty(self) -> bool:
        return not any(self.levels[-1])

    def toggle(self, segment: int, item: int) -> None:
        """XOR an item hash in (or out: XOR is its own inverse) along one path."""
        root, groups, leaves = self.levels
        leaves[segment] ^= item
        groups[segment * FANOUT // SEGMENTS] ^= item
        root[0] ^= item

    def change(self, segment: int, old: int | None, new: int | None) -> None:
        """An item in `segment` went from hash `old` to `new` (None: absent)."""
        delta = (old or 0) ^ (new or 0)
        if delta:
            self.toggle(segment, delta)

    def hashes(self, level: int, indices: list[int] | None = None) -> list[int]:
        """The hashes at `level` (0 root, 1 groups, 2 leaves), all or at the given indices."""
        row = self.levels[level]
        return list(row) if indices is None else [row[i] for i in indices]


def children(level: int, indices: list[int]) -> list[int]:
    """The indices one level down under the given nodes of `level`."""
    if level + 1 >= len(LEVELS):
        raise ValueError("leaves have no children")
    per = LEVELS[level + 1] // LEVELS[level]
    return [i * per + j for i in indices for j in range(per)]


def differing(indices: list[int], mine: list[int], theirs: list[int]) -> list[int]:
    """The indices whose hashes differ."""
    return [i for i, a, b in zip(indices, mine, theirs, strict=True) if a != b]


def differing_items(mine: dict[bytes, int], theirs: dict[bytes, int]) -> list[bytes]:
    """Keys present on one side only, or with different version hashes, in key order."""
    return sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
