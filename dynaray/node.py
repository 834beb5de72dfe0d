"""StorageNode: the Ray actor that is one physical Dynamo node.

It owns one LMDB store and plays both roles of the paper: coordinator of the gets and puts a
client sends it, and replica for the key ranges the ring gives it. Everything it says to a
peer goes through its Transport; everything it decides comes from the pure core (ring,
versions, quorum).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import ray

from dynaray import codec, quorum, versions
from dynaray.errors import NodeError
from dynaray.faults import Faults
from dynaray.hints import HintedHandoff, hint_key
from dynaray.membership import Membership
from dynaray.ring import Ring
from dynaray.storage import DATA, HINTS, META, Store, Txn
from dynaray.transport import PeerUnavailable, Refused, Transport

log = logging.getLogger(__name__)

_RING = b"ring"
_CONFIG = b"config"

# Per-call deadlines: a peer that does not answer in time counts as down for that request.
REPLICA_TIMEOUT = 2.0
# How long the coordinator keeps listening for late replies to repair stale replicas.
READ_REPAIR_WAIT = 1.0
# How long a peer that failed a call is skipped before it is tried again.
RETRY_AFTER = 1.0
_INCARNATION = b"incarnation"


@dataclass
class NodeOptions:
    """Tunables of one node; the defaults suit a real cluster, tests shorten the waits."""

    sync: bool = True
    replica_timeout: float = REPLICA_TIMEOUT
    read_repair_wait: float = READ_REPAIR_WAIT
    retry_after: float = RETRY_AFTER
    read_repair: bool = True
    gossip_interval: float = 1.0
    suspect_after: float = 3.0
    down_after: float = 6.0
    handoff_interval: float = 1.0
    handoff_batch: int = 128


class StorageNode:
    """One store node. Created by dynaray.cluster as a detached, named async actor."""

    def __init__(self, node_id: str, path: str, options: dict | None = None) -> None:
        logging.basicConfig(
            level=logging.INFO, format=f"%(asctime)s %(levelname)s [{node_id}] %(message)s"
        )
        self.id = node_id
        self.options = NodeOptions(**(options or {}))
        self.path = path
        self.store = Store(path, node_id, sync=self.options.sync)
        self.transport = Transport(node_id)
        self.ring: Ring | None = None
        self.config: dict = {}
        self._down_until: dict[str, float] = {}
        self._tasks: set[asyncio.Task] = set()
        self._loops_started = False
        self.stats: dict[str, int] = {
            "read_repairs": 0,
            "puts": 0,
            "gets": 0,
            "forwards": 0,
            "sloppy_writes": 0,
            "hinted_writes": 0,
        }
        # Every start is a new incarnation, so news of this life outranks the previous one's.
        self.membership = Membership(
            node_id,
            self.store.increment(META, _INCARNATION),
            suspect_after=self.options.suspect_after,
            down_after=self.options.down_after,
        )
        self.handoff = HintedHandoff(
            self.store, node_id, self._send_hints, batch=self.options.handoff_batch
        )
        self._load_ring()

    # -- lifecycle and configuration --------------------------------------------------------

    def _load_ring(self) -> None:
        raw = self.store.get(META, _RING)
        if raw is not None:
            self._adopt(Ring.from_wire(codec.unpack(raw)))
        raw = self.store.get(META, _CONFIG)
        if raw is not None:
            self.config = codec.unpack(raw)

    def _spawn(self, coro: Coroutine) -> asyncio.Task:
        """Background work owned by the node: cancelled by stop(), never left dangling."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def describe(self, sender: str | None = None) -> dict:
        """What a client needs to route: ring, quorum defaults, and who this is."""
        return {
            "node": self.id,
            "ring": self.ring.to_wire() if self.ring else None,
            "config": self.config,
            "status": self.membership.statuses(),
        }

    def _adopt(self, ring: Ring) -> None:
        self.ring = ring
        for node in ring.nodes():
            self.membership.add(node)

    async def configure(self, ring_wire: dict, config: dict) -> bool:
        """Adopt a ring (if newer than ours) and the store's defaults, durably."""
        ring = Ring.from_wire(ring_wire)
        if self.ring is not None and ring.version < self.ring.version:
            return False

        def op(txn: Txn) -> None:
            txn.put(META, _RING, codec.pack(ring.to_wire()))
            txn.put(META, _CONFIG, codec.pack(config))

        await self.store.write(op)
        self._adopt(ring)
        self.config = dict(config)
        return True

    async def set_peers(self, peers: dict[str, Any]) -> None:
        """Take the peers' actor handles (resolved once, cached) and start background work."""
        self.transport.set_peers({p: h for p, h in peers.items() if p != self.id})
        if not self._loops_started:
            self._loops_started = True
            self._spawn(self._every(self.options.gossip_interval, self._gossip_round))
            self._spawn(self._every(self.options.handoff_interval, self._handoff_round))

    async def update_peer(self, node: str, handle: Any) -> None:
        """A peer restarted: use its new actor handle."""
        if node != self.id:
            self.transport.peers[node] = handle
            self._down_until.pop(node, None)

    async def set_faults(self, faults_wire: dict) -> None:
        self.transport.set_faults(Faults.from_wire(faults_wire))

    async def ping(self) -> str:
        return self.id

    async def _every(self, interval: float, work: Callable[[], Coroutine]) -> None:
        """Run work every interval until stop(); one failed round never ends the loop."""
        while True:
            await asyncio.sleep(interval * (0.8 + 0.4 * self.transport.rng.random()))
            try:
                await work()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("background round of %s failed", work.__name__)

    async def stop(self) -> None:
        """Graceful stop: end background work, flush and close the store."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        self.store.close()

    async def destroy(self) -> None:
        """Stop and delete this node's directory (used for throw-away stores)."""
        await self.stop()
        shutil.rmtree(self.path, ignore_errors=True)

    # -- health ---------------------------------------------------------------------------

    def is_up(self, node: str) -> bool:
        """Gossip does not call it down, and it has not just failed a call of ours."""
        if node == self.id:
            return True
        until = self._down_until.get(node)
        if until is not None and time.monotonic() < until:
            return False
        return self.membership.is_up(node)

    # -- gossip -----------------------------------------------------------------------------

    async def _gossip_round(self) -> None:
        """Tell a random live peer what we know, and learn what it knows (push-pull)."""
        self.membership.tick()
        live, down = self.membership.gossip_targets()
        peers = [p for p in live if p in self.transport.peers]
        # Now and then try a down peer too: that is how a returning node is noticed.
        if down and (not peers or self.transport.rng.random() < 0.25):
            peers = [p for p in down if p in self.transport.peers]
        if not peers:
            return
        peer = self.transport.rng.choice(peers)
        version = self.ring.version if self.ring else 0
        try:
            digest, ring_wire = await self._call(peer, "gossip", self.membership.digest(), version)
        except PeerUnavailable:
            return
        self._learn(digest, ring_wire)

    @ray.method(enable_task_events=False)
    async def gossip(self, sender: str, digest: dict, ring_version: int) -> tuple:
        """A peer's gossip: merge its view, answer with ours (and our ring if it is newer)."""
        self._check_sender(sender)
        self._learn(digest, None)
        newer = self.ring is not None and self.ring.version > ring_version
        return self.membership.digest(), self.ring.to_wire() if newer else None

    def _learn(self, digest: dict, ring_wire: dict | None) -> None:
        for node in self.membership.merge(digest):
            log.info("%s is up again", node)
            self._down_until.pop(node, None)
            self._spawn(self._deliver_to(node))
        if ring_wire is not None:
            ring = Ring.from_wire(ring_wire)
            if self.ring is None or ring.version > self.ring.version:
                self._spawn(self.configure(ring_wire, self.config))

    async def membership_view(self) -> dict[str, str]:
        return self.membership.statuses()

    # -- hinted handoff ---------------------------------------------------------------------

    async def _send_hints(self, owner: str, items: list) -> None:
        await self._call(owner, "replica_put", items)

    async def _handoff_round(self) -> None:
        for owner in self.handoff.owners():
            if self.is_up(owner) and owner in self.transport.peers:
                await self._deliver_to(owner)

    async def _deliver_to(self, owner: str) -> None:
        try:
            delivered = await self.handoff.deliver(owner)
        except PeerUnavailable:
            return
        if delivered:
            log.info("delivered %d hints to %s", delivered, owner)

    async def hint_count(self) -> int:
        return self.handoff.count()

    def _mark_down(self, node: str) -> None:
        self._down_until[node] = time.monotonic() + self.options.retry_after

    def _route(self, bucket: bytes, key: bytes, n: int) -> tuple[bytes, list[str], list]:
        if self.ring is None:
            raise NodeError(f"node {self.id} has no ring yet; the store is still starting")
        partition = self.ring.partition_of(codec.hash_input(bucket, key))
        dkey = codec.data_key(partition, bucket, key)
        preference = list(self.ring.preference_list(partition))
        return dkey, preference, quorum.select(preference, n, self.is_up)

    async def _call(self, peer: str, method: str, *args: Any) -> Any:
        try:
            return await self.transport.call(
                peer, method, *args, timeout=self.options.replica_timeout
            )
        except PeerUnavailable:
            self._mark_down(peer)
            raise

    def _check_sender(self, sender: str) -> None:
        if not self.transport.accepts(sender):
            raise Refused(f"{sender} is partitioned from {self.id}")

    # -- coordinator: put -------------------------------------------------------------------

    @ray.method(enable_task_events=False)
    async def coordinate_put(
        self,
        sender: str,
        bucket: bytes,
        key: bytes,
        vv_wire: list,
        value: bytes | None,
        w: int,
        n: int,
        forwarded: bool = False,
    ) -> tuple:
        """Coordinate one write: version it here, replicate to N, answer after W acks.

        Returns ("ok", context_vv) or ("quorum", answered, needed, asked).
        """
        self._check_sender(sender)
        dkey, preference, targets = self._route(bucket, key, n)
        mine = next((t for t in targets if t.node == self.id), None)
        if mine is None:
            if not forwarded:
                answer = await self._forward(
                    targets, "coordinate_put", bucket, key, vv_wire, value, w, n, True
                )
                if answer is not None:
                    return answer
            mine, targets = _stand_in(self.id, preference, n, targets)
        self.stats["puts"] += 1
        incoming = versions.new(versions.vv_from_wire(vv_wire), value)
        clock = await self.store.write(lambda txn: self._update(txn, dkey, mine, incoming))
        others = [t for t in targets if t.node != self.id]
        tally = quorum.Tally(preference, [mine, *others], w, self.is_up)
        tally.answered(self.id)
        wire = versions.to_wire(clock)
        await self._replicate(tally, others, dkey, wire)
        if tally.reached:
            return ("ok", versions.vv_to_wire(versions.join(clock)))
        return ("quorum", len(tally.ok), w, tally.asked)

    def _update(self, txn: Txn, dkey: bytes, me: quorum.Target, incoming: versions.Clock):
        db, rkey = (DATA, dkey) if me.hint is None else (HINTS, hint_key(me.hint, dkey))
        raw = txn.get(db, rkey)
        stored = codec.decode_record(raw) if raw is not None else None
        if me.hint is not None:
            self.stats["sloppy_writes"] += 1
            floor = self.handoff.dot_floor(txn, dkey)
            if floor is not None:
                stored = floor if stored is None else versions.sync(stored, floor)
        clock = versions.update(incoming, stored, self.id)
        txn.put(db, rkey, codec.encode_record(clock))
        return clock

    async def _forward(self, targets: list[quorum.Target], method: str, *args: Any) -> Any:
        """The "any node" path: hand the request to a primary that will coordinate it."""
        for target in targets:
            if target.hint is None and target.node != self.id:
                try:
                    self.stats["forwards"] += 1
                    return await self._call(target.node, method, *args)
                except PeerUnavailable:
                    continue
        return None

    async def _replicate(
        self, tally: quorum.Tally, targets: list[quorum.Target], dkey: bytes, wire: list
    ) -> None:
        """Send the new version to the other replicas; return once W acked or it is hopeless."""
        done = asyncio.Event()

        async def send(target: quorum.Target) -> None:
            try:
                await self._call(target.node, "replica_put", [(dkey, wire, target.hint)])
                tally.answered(target.node)
            except PeerUnavailable:
                replacement = tally.failure(target)
                if replacement is not None:
                    self._spawn(send(replacement))
            if tally.reached or tally.hopeless:
                done.set()

        for target in targets:
            self._spawn(send(target))
        if tally.reached or tally.hopeless:
            return
        await self._decided(done)

    async def _decided(self, done: asyncio.Event) -> None:
        """Wait until the quorum is reached or hopeless. Every call carries its own deadline;
        this bound guards against a chain of fallbacks each taking a full one."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), self.options.replica_timeout * 3)

    # -- coordinator: get -------------------------------------------------------------------

    @ray.method(enable_task_events=False)
    async def coordinate_get(
        self, sender: str, bucket: bytes, key: bytes, r: int, n: int, forwarded: bool = False
    ) -> tuple:
        """Coordinate one read: ask N replicas, answer after R with every sibling.

        Returns ("ok", clock_wire | None) or ("quorum", answered, needed, asked).
        """
        self._check_sender(sender)
        dkey, preference, targets = self._route(bucket, key, n)
        if not any(t.node == self.id for t in targets) and not forwarded:
            answer = await self._forward(targets, "coordinate_get", bucket, key, r, n, True)
            if answer is not None:
                return answer
        self.stats["gets"] += 1
        tally = quorum.Tally(preference, targets, r, self.is_up)
        replies: dict[str, tuple[quorum.Target, versions.Clock | None]] = {}
        done = asyncio.Event()
        pending: set[asyncio.Task] = set()

        async def ask(target: quorum.Target) -> None:
            try:
                if target.node == self.id:
                    clock = self._read_local(dkey, target.hint)
                else:
                    (wire,) = await self._call(target.node, "replica_get", [(dkey, target.hint)])
                    clock = versions.from_wire(wire) if wire is not None else None
                replies[target.node] = (target, clock)
                tally.answered(target.node)
            except PeerUnavailable:
                replacement = tally.failure(target)
                if replacement is not None:
                    pending.add(self._spawn(ask(replacement)))
            if tally.reached or tally.hopeless:
                done.set()

        for target in targets:
            pending.add(self._spawn(ask(target)))
        await self._decided(done)
        if not tally.reached:
            return ("quorum", len(tally.ok), r, tally.asked)
        merged = _merge([c for _, c in replies.values()])
        if self.options.read_repair:
            self._spawn(self._read_repair(dkey, replies, pending, merged))
        return ("ok", versions.to_wire(merged) if merged is not None else None)

    def _read_local(self, dkey: bytes, hint: str | None) -> versions.Clock | None:
        raw = (
            self.store.get(DATA, dkey)
            if hint is None
            else self.store.get(HINTS, hint_key(hint, dkey))
        )
        return codec.decode_record(raw) if raw is not None else None

    async def _read_repair(
        self,
        dkey: bytes,
        replies: dict[str, tuple[quorum.Target, versions.Clock | None]],
        pending: set[asyncio.Task],
        merged: versions.Clock | None,
    ) -> None:
        """After answering, wait briefly for the other replicas and fix the stale ones."""
        if pending:
            await asyncio.wait(pending, timeout=self.options.read_repair_wait)
        merged = _merge([c for _, c in replies.values()])
        if merged is None:
            return
        wire = versions.to_wire(merged)
        for node, (target, clock) in list(replies.items()):
            if clock is not None and versions.equal(clock, merged):
                continue
            self.stats["read_repairs"] += 1
            try:
                if node == self.id:
                    await self._apply([(dkey, wire, target.hint)])
                else:
                    await self._call(node, "replica_put", [(dkey, wire, target.hint)])
            except PeerUnavailable:
                continue

    # -- replica ---------------------------------------------------------------------------

    @ray.method(enable_task_events=False)
    async def replica_put(self, sender: str, items: list) -> int:
        """Merge incoming versions (DVVSet sync) and acknowledge after the commit."""
        self._check_sender(sender)
        return await self._apply(items)

    async def _apply(self, items: list) -> int:
        decoded = [(dkey, versions.from_wire(wire), hint) for dkey, wire, hint in items]

        self.stats["hinted_writes"] += sum(1 for _, _, hint in decoded if hint is not None)

        def op(txn: Txn) -> int:
            for dkey, incoming, hint in decoded:
                db, rkey = (DATA, dkey) if hint is None else (HINTS, hint_key(hint, dkey))
                raw = txn.get(db, rkey)
                clock = incoming
                if raw is not None:
                    clock = versions.sync(codec.decode_record(raw), incoming)
                txn.put(db, rkey, codec.encode_record(clock))
            return len(decoded)

        return await self.store.write(op)

    @ray.method(enable_task_events=False)
    async def replica_get(self, sender: str, items: list) -> list:
        """The stored versions of each (data key, hint owner) asked for, or None."""
        self._check_sender(sender)
        out = []
        for dkey, hint in items:
            clock = self._read_local(dkey, hint)
            out.append(versions.to_wire(clock) if clock is not None else None)
        return out

    # -- inspection -------------------------------------------------------------------------

    async def held(self, bucket: bytes, key: bytes) -> list | None:
        """This node's own copy of a key (not hints): the sibling values, or None if absent."""
        if self.ring is None:
            return None
        partition = self.ring.partition_of(codec.hash_input(bucket, key))
        clock = self._read_local(codec.data_key(partition, bucket, key), None)
        return None if clock is None else versions.values(clock)

    async def info(self) -> dict:
        return {
            "node": self.id,
            "pid": os.getpid(),
            "ray_node": ray.get_runtime_context().get_node_id(),
            "path": self.path,
            "keys": self.store.count(DATA),
            "hints": self.handoff.count(),
            "hints_delivered": self.handoff.delivered,
            "incarnation": self.membership.incarnation,
            "disk_bytes": self.store.disk_bytes(),
            "ring_version": self.ring.version if self.ring else None,
            "stats": dict(self.stats),
            "sent": dict(self.transport.sent),
            "failed": dict(self.transport.failed),
        }


def _stand_in(
    me: str, preference: list[str], n: int, targets: list[quorum.Target]
) -> tuple[quorum.Target, list[quorum.Target]]:
    """Coordinate as a fallback: stand in for a primary no other target covers."""
    covered = {t.hint or t.node for t in targets}
    primary = next((p for p in preference[:n] if p not in covered), preference[n - 1])
    mine = quorum.Target(me, hint=primary)
    rest = [t for t in targets if (t.hint or t.node) != primary][: n - 1]
    return mine, [mine, *rest]


def _merge(clocks: list[versions.Clock | None]) -> versions.Clock | None:
    present = [c for c in clocks if c is not None]
    if not present:
        return None
    merged = present[0]
    for clock in present[1:]:
        merged = versions.sync(merged, clock)
    return merged
