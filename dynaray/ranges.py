"""A node's key ranges (partitions) on disk, each with its Merkle tree kept current.

The data database is laid out partition, then segment, then key, so a range and each
segment of it are contiguous LMDB ranges: anti-entropy reads one segment, ownership handoff
streams one partition, and dropping a range deletes one span of keys.
"""

from __future__ import annotations

from collections.abc import Callable

from dynaray import codec, merkle
from dynaray.codec import CALL_BYTES
from dynaray.storage import DATA, Store, Txn


class KeyRanges:
    """The Merkle trees of every range in a node's data, and range-wide reads and deletes."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.trees: dict[int, merkle.MerkleTree] = {}
        self._rebuild()
        store.observers[DATA] = self._changed

    def _rebuild(self) -> None:
        """Trees are not persisted: one pass over the data at start rebuilds them all."""
        for dkey, record in self.store.iterate(DATA, batch=10_000):
            partition, segment = codec.location(dkey)
            self.tree(partition).toggle(segment, merkle.item_hash(dkey, record))

    def _changed(self, dkey: bytes, old: bytes | None, new: bytes | None) -> None:
        partition, segment = codec.location(dkey)
        self.tree(partition).change(
            segment,
            merkle.item_hash(dkey, old) if old is not None else None,
            merkle.item_hash(dkey, new) if new is not None else None,
        )

    def tree(self, partition: int) -> merkle.MerkleTree:
        # Called from the writer thread (_changed) and the event loop: setdefault is one
        # step under the GIL, so both always get the same tree for a new range (a get, then
        # a set, could let one replace the tree the other had just written into).
        tree = self.trees.get(partition)
        if tree is None:
            tree = self.trees.setdefault(partition, merkle.MerkleTree())
        return tree

    def held(self) -> list[int]:
        """Partitions with any data here."""
        # A copy first, taken in one step: the writer thread may add a range meanwhile.
        return sorted(p for p, tree in list(self.trees.items()) if not tree.empty)

    def merkle_hashes(self, partition: int, level: int, indices: list[int]) -> list[int]:
        return self.tree(partition).hashes(level, indices)

    def segment_items(self, partition: int, segments: list[int]) -> list[tuple[bytes, int]]:
        """(data key, version hash) of every key in the given segments of a range."""
        items = []
        for segment in segments:
            for dkey, record in self.store.iterate(DATA, codec.segment_prefix(partition, segment)):
                items.append((dkey, merkle.item_hash(dkey, record)))
        return items

    def read_records(
        self, partition: int, keys: list[bytes], max_bytes: int | None = None
    ) -> list[bytes | None]:
        """The stored records (encoded) of data keys of one range; None where absent. With
        `max_bytes`, those of the first keys only, up to about that many bytes (at least
        one): an answer that goes out in one call."""
        return self.store.get_many(DATA, keys, max_bytes)

    def scan(self, partition: int, after: bytes | None, limit: int) -> list[tuple[bytes, bytes]]:
        """Up to `limit` (data key, record) of a range, after key `after`, and no more than
        about CALL_BYTES of records."""
        prefix = codec.partition_prefix(partition)
        return self.store.scan(DATA, prefix, after, limit, max_bytes=CALL_BYTES)

    async def drop(
        self, partition: int, batch: int = 1000, still: Callable[[], bool] = lambda: True
    ) -> int:
        """Delete a range this node no longer replicates, in short transactions, for as
        long as `still()` says it is to go: a ring that gives the range back while it is
        being dropped stops the drop before its next batch, so what the node copies back
        in meanwhile (queued behind the batch in flight) stays."""
        dropped = 0
        while still():
            keys = [k for k, _ in self.scan(partition, None, batch)]
            if not keys:
                break

            def op(txn: Txn, keys: list[bytes] = keys) -> None:
                for key in keys:
                    txn.delete(DATA, key)

            await self.store.write(op)
            dropped += len(keys)
        # The range's tree is now all zeros (held() leaves it out), and is kept: a write
        # committed after the last scan must land in the tree the range keeps using.
        return dropped
