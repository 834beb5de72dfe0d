"""Merkle-tree anti-entropy: one replica compares a key range with another and repairs both.

The exchange walks the two trees from the root down, asking only for the branches whose
hashes differ, then for the item hashes of the differing leaves, then for the versions of
the keys that differ. Repair is a DVVSet sync written to both sides: a concurrent sibling is
never overwritten and a dominated version never comes back.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

from dynaray import codec, merkle, records
from dynaray.codec import CALL_BYTES

Call = Callable[..., Awaitable[Any]]

# How much of a differing range one call carries: the item hashes of this many segments
# (of 1,024), and the records of at most this many keys (and about CALL_BYTES of them).
SEGMENTS_PER_CALL = 32
KEYS_PER_CALL = 500


@dataclass
class Figures:
    """What anti-entropy did: reported by cluster.anti_entropy() and `dynaray repair`."""

    ranges_compared: int = 0
    ranges_in_sync: int = 0
    keys_repaired: int = 0
    hashes_exchanged: int = 0
    bytes_sent: int = 0
    tombstones_reaped: int = 0
    peers_unreachable: int = 0  # peers that did not answer: their ranges wait a round
    unmergeable: int = 0  # keys written as two kinds: left as they are on each side
    ranges_failed: int = 0  # exchanges or reapings that failed otherwise (logged): next round

    def add(self, other: Figures) -> None:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class Exchange:
    """One comparison of one key range between this node (`local`) and a peer.

    `call(method, partition, *args)` reaches the peer; `local` (the node's KeyRanges) answers
    the same questions about our side, and `apply` merges repairs into our store.
    """

    def __init__(
        self, partition: int, call: Call, local: Any, apply: Callable[[list], Awaitable]
    ) -> None:
        self.partition = partition
        self._call = call
        self.local = local
        self._apply = apply
        self.figures = Figures(ranges_compared=1)

    async def _ask(self, method: str, *args: Any) -> Any:
        """Ask the peer, counting the bytes both ways as they travel (msgpack)."""
        answer = await self._call(method, self.partition, *args)
        self.figures.bytes_sent += len(codec.pack(list(args))) + len(codec.pack(answer))
        return answer

    async def run(self) -> Figures:
        tree = self.local.tree(self.partition)
        indices = [0]
        for level in range(len(merkle.LEVELS)):
            if level:
                indices = merkle.children(level - 1, indices)
            theirs = await self._ask("merkle_hashes", level, indices)
            self.figures.hashes_exchanged += 2 * len(indices)
            indices = merkle.differing(indices, tree.hashes(level, indices), theirs)
            if not indices:
                self.figures.ranges_in_sync = 1
                return self.figures
        # The differing segments a few at a time, each lot repaired before the next: a
        # range that differs everywhere (a replica that missed a long stretch) is then many
        # calls of bounded size, each within the call's deadline, not one that never is.
        for start in range(0, len(indices), SEGMENTS_PER_CALL):
            segments = indices[start : start + SEGMENTS_PER_CALL]
            their_items = {bytes(k): v for k, v in (await self._ask("segment_items", segments))}
            my_items = dict(self.local.segment_items(self.partition, segments))
            self.figures.hashes_exchanged += len(their_items) + len(my_items)
            keys = merkle.differing_items(my_items, their_items)
            if keys:
                await self._repair(keys)
        return self.figures

    async def _repair(self, keys: list[bytes]) -> None:
        """Merge the copies of keys on both sides, KEYS_PER_CALL keys (and about
        CALL_BYTES of records) a call."""
        while keys:
            asked = keys[:KEYS_PER_CALL]
            theirs = await self._ask("read_records", asked, CALL_BYTES)
            if not theirs:
                raise ValueError(f"the peer answered no record of {len(asked)} asked for")
            asked, keys = asked[: len(theirs)], keys[len(theirs) :]
            await self._repair_some(asked, theirs)

    async def _repair_some(self, keys: list[bytes], theirs: list[bytes | None]) -> None:
        mine = self.local.read_records(self.partition, keys)
        to_me, to_them = [], []
        for key, my_raw, their_raw in zip(keys, mine, theirs, strict=True):
            try:
                merged = records.merge_encoded([my_raw, their_raw])
            except records.KindMismatch:  # written as two kinds: each side keeps its own
                self.figures.unmergeable += 1
                continue
            if merged is None:
                continue
            # Bytes, not versions, decide: the trees hash the bytes, and two copies of one
            # version can differ in their stamp alone (equal as versions), which only a
            # write of the merge brings together.
            if my_raw != merged:
                to_me.append((key, merged, None))
            if their_raw != merged:
                to_them.append((key, merged, None))
        if to_me:
            await self._apply(to_me)
        for part in _by_bytes(to_them):
            await self._ask("apply", part)
        self.figures.keys_repaired += len({k for k, _, _ in to_me} | {k for k, _, _ in to_them})


def _by_bytes(items: list[tuple]) -> list[list[tuple]]:
    """(key, record, hint) items in lots of about CALL_BYTES of records each."""
    lots: list[list[tuple]] = []
    size = CALL_BYTES
    for item in items:
        if size >= CALL_BYTES:
            lots.append([])
            size = 0
        lots[-1].append(item)
        size += len(item[1])
    return lots
