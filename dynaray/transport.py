"""The one door out of a node: every message to a peer goes through Transport.call.

Deadlines, batching, fault injection (partitions, drops, delays), the mapping of Ray's
failure modes to "this peer did not answer", and message counters live here and nowhere
else. With an empty fault table a call is a plain actor call awaited with a deadline.

Batching: call_batched() coalesces concurrent requests for the same peer and method into one
actor call. It never waits to fill a batch: with nothing in flight to that peer the request
leaves at once; while a call is in flight, new requests gather and leave together as soon as
it returns. So an idle store pays no added latency and a busy one pays one hop per batch.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from typing import Any

import cloudpickle
from ray.exceptions import ActorDiedError, GetTimeoutError, RayActorError, RayError, RayTaskError

from dynaray.errors import DynarayError, PortableError
from dynaray.faults import Faults

log = logging.getLogger(__name__)


# Why a call failed before anything was sent: the peer was not known, a partition stood in
# the way or the message was dropped (fault injection, which drops a request before it is
# sent), its actor had already been seen dead (Ray does not bring an actor that died
# back under the same handle), or a batched request's deadline passed while it waited
# for the call ahead of it to the same peer (call_batched).
UNKNOWN_PEER = "unknown peer"
PARTITIONED = "partitioned"
DROPPED = "message dropped"
DEAD = "actor seen dead before"
QUEUED = "not sent: the call ahead of it to this node did not return in time"
NOTHING_SENT = (UNKNOWN_PEER, PARTITIONED, DROPPED, DEAD, QUEUED)


class PeerUnavailable(PortableError):
    """A peer did not answer: dead, unreachable, partitioned away, or past the deadline."""

    def __init__(self, peer: str, reason: str) -> None:
        self.peer = peer
        self.reason = reason
        super().__init__(f"{peer}: {reason}")

    @property
    def may_have_arrived(self) -> bool:
        """Whether the request may have reached the peer (and been acted on) before the
        failure: not when it was never sent (NOTHING_SENT)."""
        return self.reason not in NOTHING_SENT


def actor_of(handle: Any) -> Any:
    """What tells two actor handles apart: the Ray actor id (the handle itself for a fake)."""
    return getattr(handle, "_actor_id", handle)


def pack_handle(handle: Any) -> bytes:
    """An actor handle as bytes, to be sent inside an answer (StorageNode.describe). Ray
    rebuilds a handle by loading its actor's class, which it forgets once the actor is
    dead and the job that made it has ended (a node added by `dynaray join`, then
    removed): a handle sent as itself would fail the whole answer that carries it, in a
    process that never uses it. As bytes, each is opened on its own (unpack_handle)."""
    return cloudpickle.dumps(handle)


def unpack_handle(data: Any) -> Any | None:
    """The actor handle pack_handle made, or None if Ray can no longer rebuild it (its
    actor is gone). A handle sent as itself (by a node of an earlier build) is taken as
    it is."""
    if not isinstance(data, bytes):
        return data
    try:
        return cloudpickle.loads(data)
    except Exception:  # noqa: BLE001 - Ray's errors here vary (a dead actor's class gone)
        log.debug("an actor handle could not be rebuilt (its actor is gone)", exc_info=True)
        return None


class Refused(Exception):
    """Raised by a receiving node for a message the fault table says it never got."""


MAX_BATCH = 256


class _Batch:
    """Requests waiting for one (peer, method) while a call to it is in flight."""

    __slots__ = ("waiting", "busy")

    def __init__(self) -> None:
        self.waiting: list[tuple[Any, asyncio.Future]] = []
        self.busy = False


class Transport:
    """Outbound messages of one node (or of a client) to the storage nodes."""

    def __init__(self, node_id: str, *, rng: random.Random | None = None) -> None:
        self.node_id = node_id
        self.peers: dict[str, Any] = {}
        self.faults = Faults()
        self.rng = rng or random.Random()
        self.sent: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        # {peer: the actor of it seen dead}: a new actor of theirs (restarted, maybe by
        # another driver) is to be learned (Routing.adopt, StorageNode._find_peers).
        self.dead: dict[str, Any] = {}
        self._batches: dict[tuple[str, str, int], _Batch] = {}
        self._flushes: set[asyncio.Task] = set()

    def set_peers(self, peers: dict[str, Any]) -> None:
        self.peers = dict(peers)
        # A peer's dead mark stays only while the handle given is that same dead actor.
        self.dead = {p: d for p, d in self.dead.items() if p in peers and actor_of(peers[p]) == d}

    def live(self, peer: str) -> bool:
        """Whether a handle of peer is known here and its actor was not seen dead."""
        return peer in self.peers and peer not in self.dead

    def replace(self, peer: str, handle: Any, force: bool = False) -> bool:
        """Use this actor handle for peer from now on, unless it is the actor already seen
        dead (`force`: the caller knows it is the peer's new actor); returns whether it
        was taken."""
        if not force and peer in self.dead and actor_of(handle) == self.dead[peer]:
            return False
        self.peers[peer] = handle
        self.dead.pop(peer, None)
        return True

    def set_faults(self, faults: Faults) -> None:
        self.faults = faults

    def accepts(self, sender: str) -> bool:
        """Receiving side: a message sent across a partition is never delivered."""
        return self.faults.empty or not self.faults.partitioned(sender, self.node_id)

    async def call(self, peer: str, method: str, *args: Any, timeout: float) -> Any:
        """Call method on peer, passing our node id first; PeerUnavailable on any failure."""
        handle = self.peers.get(peer)
        if handle is None:
            raise PeerUnavailable(peer, UNKNOWN_PEER)
        if not self.live(peer):  # the dead mark is only ever of the handle held
            # A call to it now fails at once, and Ray's ActorDiedError would not say that it
            # never ran: so a write known unsent can be reported as such (Unavailable).
            self.failed["dead"] += 1
            raise PeerUnavailable(peer, DEAD)
        if not self.faults.empty:
            await self._inject(peer)
        self.sent[method] += 1
        try:
            ref = getattr(handle, method).remote(self.node_id, *args)
            # asyncio.timeout, not wait_for: cancelled as the call ends, wait_for returns
            # (or raises) its result and drops the cancel, and the caller goes on.
            async with asyncio.timeout(timeout):
                return await ref
        except RayTaskError as exc:
            # First: Ray raises the peer's error as a class of both RayTaskError and the
            # error's own, so the peer's RequestTimeout would pass for a TimeoutError here.
            if isinstance(exc.cause, Refused):
                self.failed["refused"] += 1
                raise PeerUnavailable(peer, PARTITIONED) from None
            if isinstance(exc.cause, DynarayError):
                raise exc.cause from None  # the peer answered, with an error of ours
            raise
        except (TimeoutError, GetTimeoutError):
            self.failed["timeout"] += 1
            raise PeerUnavailable(peer, f"no answer to {method} within {timeout:.1f}s") from None
        except (RayActorError, RayError) as exc:
            self.failed[type(exc).__name__] += 1
            if isinstance(exc, ActorDiedError) and self.peers.get(peer) is handle:
                # (not if a new actor was put in its place while this call was in flight)
                self.dead[peer] = actor_of(handle)
            raise PeerUnavailable(peer, f"{type(exc).__name__}") from None

    async def call_batched(self, peer: str, method: str, item: Any, *, timeout: float) -> Any:
        """Send item to peer's `method(sender, items) -> results`, batched with concurrent
        items for the same peer and method; returns this item's result."""
        loop = asyncio.get_running_loop()
        # Per event loop: a client's sync calls run on its own loop thread, its async twins
        # on the caller's loop, and a batch must stay within one loop.
        slot = (peer, method, id(loop))
        batch = self._batches.get(slot)
        if batch is None:
            batch = self._batches[slot] = _Batch()
        future = loop.create_future()
        batch.waiting.append((item, future))
        if not batch.busy:
            batch.busy = True
            task = asyncio.ensure_future(self._flush(slot, batch, timeout))
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)
        deadline = asyncio.timeout(timeout)
        try:
            # The deadline counts from now, the wait for the call ahead included; a request
            # still waiting then is not sent (_flush skips it), one in flight may arrive.
            # (As in call: a cancel that comes as the call ends is not dropped.)
            async with deadline:
                return await future
        except TimeoutError:
            if not deadline.expired():
                raise  # the peer's own error (a RequestTimeout), not our deadline
            if any(waiting is future for _, waiting in batch.waiting):
                raise PeerUnavailable(peer, QUEUED) from None  # so the caller may go on
            raise PeerUnavailable(peer, f"no answer to {method} within {timeout:.1f}s") from None

    async def _flush(self, slot: tuple[str, str, int], batch: _Batch, timeout: float) -> None:
        peer, method, _ = slot
        try:
            while batch.waiting:
                taken, batch.waiting = batch.waiting[:MAX_BATCH], batch.waiting[MAX_BATCH:]
                # A request whose caller gave up while it waited for the call ahead (its
                # deadline passed, it was cancelled) is not sent: done later, a write would
                # surprise the caller that was told it may or may not have happened.
                taken = [(item, future) for item, future in taken if not future.done()]
                if not taken:
                    continue
                self.sent[f"{method}.items"] += len(taken)
                try:
                    results = await self.call(peer, method, [i for i, _ in taken], timeout=timeout)
                except BaseException as exc:  # every waiter learns what became of its request
                    failure = exc
                    if not isinstance(exc, Exception):
                        failure = PeerUnavailable(peer, "transport closed")
                    for _, future in taken:
                        _fail(future, failure)
                    if failure is not exc:
                        raise
                    continue
                for (_, future), result in zip(taken, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            batch.busy = False
            for _, future in batch.waiting:  # only left here if the flush was cancelled
                _fail(future, PeerUnavailable(peer, "transport closed"))
            batch.waiting = []
            if self._batches.get(slot) is batch:
                del self._batches[slot]  # loops come and go (asyncio.run): keep no dead slots

    def close(self) -> None:
        """Cancel batches in flight (their waiters see the cancellation)."""
        for task in list(self._flushes):
            task.cancel()

    async def _inject(self, peer: str) -> None:
        faults = self.faults
        delay = faults.delay_of(self.node_id, peer)
        if delay:
            await asyncio.sleep(delay)
            faults = self.faults  # the table may have changed while we slept
        if faults.partitioned(self.node_id, peer):
            self.failed["partitioned"] += 1
            raise PeerUnavailable(peer, PARTITIONED)
        if faults.dropped(self.node_id, peer, self.rng):
            self.failed["dropped"] += 1
            raise PeerUnavailable(peer, DROPPED)


def _fail(future: asyncio.Future, failure: BaseException) -> None:
    """Tell a waiter its request failed, unless nobody can listen any more: it already has
    its answer, or its event loop closed with the flush still pending (a script that ended)."""
    if not future.done() and not future.get_loop().is_closed():
        future.set_exception(failure)
