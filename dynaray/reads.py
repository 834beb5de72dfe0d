"""The read half of coordination, shared by the two read coordinators: a storage node, and
the partition-aware client (the paper's client-driven coordination, section 6.4).

Ask replicas for their copy of a key, replace one that fails by the next fallback, stop as
soon as R answered, and tell which replicas are stale for read repair. How a replica is
asked (a local read, an actor call) is the caller's; copies are records encoded as stored,
so agreeing replicas are compared as bytes and never decoded here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from dynaray import quorum, records
from dynaray.transport import PeerUnavailable

log = logging.getLogger(__name__)

# A replica's answers that count as no answer: a range it is still receiving, and a key
# it does not replicate by its own ring (the reader's ring is older).
ARRIVING = "range still arriving"
NOT_MINE = "not an owner by my ring"
UNANSWERED = (ARRIVING, NOT_MINE)


def unanswered(raw: object) -> bool:
    """Whether a replica's answer counts as no answer (one of UNANSWERED, not a copy)."""
    return type(raw) is str and raw in UNANSWERED


@dataclass
class Read:
    """One key's read: the replies so far and the tasks still asking."""

    dkey: bytes
    tally: quorum.Tally
    replies: dict[str, tuple[quorum.Target, bytes | None]] = field(default_factory=dict)
    pending: set[asyncio.Task] = field(default_factory=set)

    @property
    def merged(self) -> bytes | None:
        """The merge of every reply, encoded as stored."""
        return records.merge_encoded([raw for _, raw in self.replies.values()])


def narrowed(targets: list[quorum.Target], r: int, ask_all: bool) -> list[quorum.Target]:
    """Whom a read asks: the first R targets, or all of them when `ask_all` (the share of
    reads that lets read repair see every replica) or when a stand-in is among them (a
    write answers after W copies, so stand-ins may not hold theirs yet when the live
    primary does)."""
    if ask_all or any(t.hint is not None for t in targets):
        return targets
    return targets[:r]


async def read(
    read: Read,
    targets: list[quorum.Target],
    fetch: Callable[[quorum.Target], Awaitable[bytes | None]],
    spawn: Callable[[Awaitable], asyncio.Task],
    deadline: float,
) -> bool:
    """Ask targets with fetch, each failure replaced by the tally's next fallback; True
    once R answered (and, when a stand-in is among them, every primary asked in person
    answered or failed: Tally.settled), False when R became impossible or `deadline`
    seconds passed with fewer than R answers.

    A fetch that raises, or answers one of UNANSWERED, counts as a replica that did not
    answer. Every fetch has its own deadline; `deadline` bounds a chain of fallbacks. A
    read that fails stops asking.
    """
    done = asyncio.Event()

    async def ask(target: quorum.Target) -> None:
        try:
            raw = await fetch(target)
            if unanswered(raw):
                raise PeerUnavailable(target.node, raw)
            read.replies[target.node] = (target, raw)
            read.tally.answered(target.node)
        except Exception as exc:  # noqa: BLE001 - any failure moves on to a fallback
            if not isinstance(exc, PeerUnavailable):
                log.warning("read of %r from %s failed: %r", read.dkey, target.node, exc)
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # Cancelled as its call failed (wait_for then raises the failure and drops
                # the cancel): a fallback spawned now would outlive whoever cancelled it.
                raise asyncio.CancelledError from None
            replacement = read.tally.failure(target)
            if replacement is not None:
                read.pending.add(spawn(ask(replacement)))
        if read.tally.settled or read.tally.hopeless:
            done.set()

    for target in targets:
        read.pending.add(spawn(ask(target)))
    try:
        if not (read.tally.settled or read.tally.hopeless):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), deadline)
    finally:  # a read that failed, or was cancelled, stops asking
        if not read.tally.reached:
            for task in read.pending:
                task.cancel()
    return read.tally.reached


def stale_replicas(dkey: bytes, replies: dict, stale: dict[str, list]) -> bytes | None:
    """Add to stale {node: [[dkey, merged record, hint]]} each replier whose copy of dkey
    is not the merge of all the replies (records encoded, as stored); returns the merge."""
    merged = records.merge_encoded([raw for _, raw in replies.values()])
    if merged is None:
        return None
    for node, (target, raw) in list(replies.items()):
        if not records.same_encoded(raw, merged):
            stale.setdefault(node, []).append([dkey, merged, target.hint])
    return merged


async def stale_after(read: Read, wait: float) -> dict[str, list]:
    """For read repair, once the read is answered: wait up to `wait` seconds for the
    replicas still being asked, then {node: [[dkey, merged record, hint]]} of stale ones."""
    if read.pending:
        await asyncio.wait(read.pending, timeout=wait)
    stale: dict[str, list] = {}
    stale_replicas(read.dkey, read.replies, stale)
    return stale
