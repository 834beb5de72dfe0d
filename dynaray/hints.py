"""Hinted handoff: writes a fallback node keeps for a primary that was down, and their delivery.

A hint is the fallback's copy of a key, stored durably under the intended owner's name (one
contiguous LMDB range per owner). When the owner is up again, the holder sends its hints in
throttled batches; the owner merges them (DVVSet sync, so delivering twice changes nothing)
and each hint is deleted only after the owner committed it, and only if no newer write
reached the hint meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from dynaray.codec import CALL_BYTES
from dynaray.storage import HINTS, Store, Txn


def hint_key(owner: str, dkey: bytes) -> bytes:
    """Hints are stored by intended owner, so one owner's hints are one contiguous range."""
    raw = owner.encode()
    return bytes([len(raw)]) + raw + dkey


def owner_prefix(owner: str) -> bytes:
    raw = owner.encode()
    return bytes([len(raw)]) + raw


def _split(hkey: bytes) -> tuple[str, bytes]:
    length = hkey[0]
    return hkey[1 : 1 + length].decode(), hkey[1 + length :]


def _after(prefix: bytes) -> bytes:
    """The smallest key greater than every key that starts with prefix."""
    stripped = prefix.rstrip(b"\xff")
    return stripped[:-1] + bytes([stripped[-1] + 1]) if stripped else prefix + b"\xff"


class HintedHandoff:
    """The hints one node holds, and their delivery to owners that are back."""

    def __init__(
        self,
        store: Store,
        send: Callable[[str, list], Awaitable[object]],
        *,
        batch: int = 128,
        pause: float = 0.02,
    ) -> None:
        self.store = store
        self._send = send
        self.batch = batch
        self.pause = pause
        self.delivered = 0
        self._busy: set[str] = set()

    def owners(self) -> list[str]:
        """The owners we hold hints for, found by jumping from one owner's range to the next."""
        owners: list[str] = []
        key = b""
        while (found := self.store.seek(HINTS, key)) is not None:
            owner, _ = _split(found)
            owners.append(owner)
            key = _after(owner_prefix(owner))
        return owners

    def busy(self, owner: str) -> bool:
        """Whether a delivery of owner's hints is under way."""
        return owner in self._busy

    def count(self) -> int:
        return self.store.count(HINTS)

    def hinted(self, dkeys: list[bytes]) -> list[bytes]:
        """The data keys among dkeys that a hint held here (for any owner) is a copy of."""
        owners = self.owners()
        found = self.store.get_many(HINTS, [hint_key(o, k) for k in dkeys for o in owners])
        per = len(owners)
        return [k for i, k in enumerate(dkeys) if any(found[i * per : (i + 1) * per])]

    async def deliver(
        self, owner: str, send: Callable[[str, list], Awaitable[object]] | None = None
    ) -> int:
        """Send every hint held for owner, batch by batch; returns how many were delivered.

        `send(owner, items)` acknowledges the whole batch by returning None, or each item
        by returning one bool per item (the node's send routes hints of ranges the owner
        no longer replicates to their current owners, some of whom may be out of reach);
        only what was acknowledged is forgotten. Hints a newer write changed while they
        were sent get one more pass, which sends again whatever is still held (what was
        not acknowledged too); the rest waits for the next delivery. Stops at the first
        batch whose send fails (PeerUnavailable propagates to the caller, who retries
        later). Counts the hints forgotten.
        """
        if owner in self._busy:
            return 0  # one delivery per owner at a time, so a returning node is not flooded
        self._busy.add(owner)
        try:
            total = 0
            prefix = owner_prefix(owner)
            after = None  # past what this pass sent
            changed = 0  # hints of this pass a newer write changed while they were sent
            passes = 1
            while True:
                items = self.store.scan(
                    HINTS, prefix, after, limit=self.batch, max_bytes=CALL_BYTES
                )
                if not items:
                    if not changed or passes == 2:
                        return total  # what changes again waits for the next delivery
                    after, changed, passes = None, 0, passes + 1  # once more, for what changed
                    continue
                after = items[-1][0]
                acked = await (send or self._send)(
                    owner, [[_split(hkey)[1], raw, None] for hkey, raw in items]
                )
                if acked is not None:  # one answer per item; anything else acknowledges none
                    if not (isinstance(acked, list) and len(acked) == len(items)):
                        acked = [False] * len(items)
                    items = [item for item, yes in zip(items, acked, strict=True) if yes is True]
                forgotten, kept = await self.store.write(
                    lambda txn, items=items: self._forget(txn, items)
                )
                changed += kept
                total += forgotten
                self.delivered += forgotten
                await asyncio.sleep(self.pause)
        finally:
            self._busy.discard(owner)

    def _forget(self, txn: Txn, items: list[tuple[bytes, bytes]]) -> tuple[int, int]:
        """Delete delivered hints unless a newer write changed them since they were read;
        returns how many were deleted and how many kept as changed. (A stand-in's writes
        carry an actor id of their own for each write, so nothing about its counters needs
        remembering once the hint is gone.)"""
        deleted = changed = 0
        for hkey, raw in items:
            current = txn.get(HINTS, hkey)
            if current == raw:
                txn.delete(HINTS, hkey)
                deleted += 1
            elif current is not None:
                changed += 1
        return deleted, changed
