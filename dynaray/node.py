"""StorageNode: the Ray actor that is one physical Dynamo node.

It owns one LMDB store and plays both roles of the paper: coordinator of the gets and puts a
client sends it, and replica for the key ranges the ring gives it. Everything it says to a
peer goes through its Transport; everything it decides comes from the pure core (ring,
versions, quorum).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import os
import shutil
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import lmdb
import ray

from dynaray import actors, codec, hlc, quorum, reads, records, versions
from dynaray.anti_entropy import Exchange, Figures
from dynaray.catalog import Catalog
from dynaray.codec import key_repr
from dynaray.errors import DynarayError, InvalidRequest, RequestTimeout, StorageError
from dynaray.faults import Faults
from dynaray.hints import HintedHandoff, hint_key
from dynaray.hlc import HybridClock
from dynaray.membership import Membership
from dynaray.metrics import NodeMetrics
from dynaray.names import NAMESPACE, node_name
from dynaray.ranges import KeyRanges
from dynaray.ring import Ring
from dynaray.storage import DATA, HINTS, META, REFILL, REFILL_EMPTY, Store, Txn, peek
from dynaray.transport import PeerUnavailable, Refused, Transport, actor_of, pack_handle

log = logging.getLogger(__name__)

_RING = b"ring"
_CONFIG = b"config"
_CATALOG = b"buckets"

# Per-call deadlines: a peer that does not answer in time counts as down for that request.
REPLICA_TIMEOUT = 2.0
# How long the coordinator keeps listening for late replies to repair stale replicas.
READ_REPAIR_WAIT = 1.0
# How long a peer that failed a call is skipped before it is tried again.
RETRY_AFTER = 1.0
_INCARNATION = b"incarnation"
# META keys: a range's key-epoch floor (dynaray/actors.py), the number of the transaction
# that last began dropping the range here, as 8 bytes.
_FLOOR = b"floor:"
# META key: the number of the transaction from which this directory's writes carry key
# epochs (0: from its start), as 8 bytes; an epoch begun before it is never gone on under.
_EPOCHS = b"key-epochs-since"
# META key: the actor id whose key epochs the floors and _EPOCHS are about.
_FLOORS_OF = b"floors-of"
# META keys: a range this node gained in a ring change and has not yet copied, with the
# old replicas it copies from (packed list); kept until it is in, so a node restarted in
# the middle of a handoff resumes it instead of answering for a range it half holds.
_TAKING = b"taking:"
# How many keys written as two kinds a node logs by name (each once); `unmergeable` counts all.
_UNMERGEABLE_LOGGED = 1000
# Records the reaper looks at between two chances for the event loop to run other work.
_REAP_SCAN_STEP = 1000
# How long a leaving node waits for a delivery under way before it passes hints on.
PASS_ON_WAIT = 30.0
# Seconds between two scans of a down owner's hints for keys a ring change moved away
# (the first wait; longer after each scan that left some to send).
MOVED_RECHECK = 30.0
# A record stamped this many seconds past the wall clock says a clock in the store runs
# ahead: warned of (at most once per this many seconds), as lww writes lose to it.
CLOCK_AHEAD_WARN = 60.0
# Seconds between pushes of a node's figures to Ray's metrics.
METRICS_INTERVAL = 5.0
# Seconds between looking up, by name, the actors of ring peers with no live handle here,
# and how long one lookup is awaited (it needs the GCS).
PEER_LOOKUP_INTERVAL = 5.0
PEER_LOOKUP_WAIT = 2.0
LOOP_PROBE = 0.1  # seconds between looks at how late the event loop wakes (_watch_loop)
# Past this many siblings a write is logged: the application is not resolving its conflicts.
SIBLING_WARNING = 25
# Python's collector runs a young-generation pass every 700 new container objects by
# default; a node coordinating a 1,000-key batch makes tens of thousands, so it collected
# dozens of times per batch over a heap full of Ray's objects. The node process is ours:
# collect less often (bulk writes 11,400 -> 14,500 keys/s, docs/performance.md).
GC_THRESHOLDS = (20_000, 20, 50)


@dataclass
class NodeOptions:
    """Tunables of one node; the defaults suit a real cluster, tests shorten the waits."""

    sync: bool = True
    replica_timeout: float = REPLICA_TIMEOUT
    read_repair_wait: float = READ_REPAIR_WAIT
    retry_after: float = RETRY_AFTER
    read_repair: bool = True
    # Batched reads of keys whose replicas are all up, and reads a client coordinates, ask
    # R of them, as Cassandra does, and all N only for this fraction: every peer call
    # costs CPU, and R answers meet the quorum. The rest are repaired when a read does ask
    # them, by hints, or by anti-entropy. 1.0 asks all N every time, as the paper's reads
    # do (a node's one-key read always does).
    read_repair_chance: float = 0.1
    # Off: a strict quorum of the first N nodes only, no stand-ins and no hints.
    sloppy_quorum: bool = True
    gossip_interval: float = 1.0
    suspect_after: float = 3.0
    down_after: float = 6.0
    handoff_interval: float = 1.0
    handoff_batch: int = 128
    # Seconds between background anti-entropy rounds; None switches them off.
    anti_entropy_interval: float | None = 60.0
    transfer_batch: int = 500
    sibling_limit: int = 100
    # A deleted key's tombstone is removed only when every replica holds it and it is at
    # least this old, so that no hint or late replica can bring the key back.
    tombstone_grace: float = 3600.0

    def __post_init__(self) -> None:
        """Refuse what a node could not run with, before any node starts (cluster.start
        builds one to check the options it is given)."""
        for name in (
            "replica_timeout",
            "read_repair_wait",
            "retry_after",
            "gossip_interval",
            "handoff_interval",  # 0 would spin the handoff loop
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be a positive number of seconds")
        if not self.tombstone_grace >= 0:
            raise ValueError("tombstone_grace must be a number of seconds, 0 or more")
        if not 0 < self.suspect_after <= self.down_after:
            raise ValueError(
                f"suspect_after ({self.suspect_after}) must be positive and at most "
                f"down_after ({self.down_after}): a silent peer is suspect before it is down"
            )
        if not 0.0 <= self.read_repair_chance <= 1.0:
            raise ValueError("read_repair_chance is a fraction from 0.0 to 1.0")
        if self.anti_entropy_interval is not None and not self.anti_entropy_interval > 0:
            raise ValueError("anti_entropy_interval must be positive, or None to switch it off")
        for name in ("handoff_batch", "transfer_batch", "sibling_limit"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"{name} must be a whole number, 1 or more")


def _log_as(node_id: str) -> None:
    """Every record of this process's dynaray loggers names the node (one node per process)."""
    logger = logging.getLogger("dynaray")
    handler = logging.StreamHandler()
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s %(levelname)s dynaray[{node_id}] %(name)s: %(message)s")
    )
    logger.handlers = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False


def stored_layout(path: str) -> tuple[dict | None, dict | None]:
    """The ring (wire form) and store settings a stopped node kept in its directory, each
    None if it kept none."""
    ring, config = peek(path, META, _RING), peek(path, META, _CONFIG)
    return (
        codec.unpack(ring) if ring is not None else None,
        codec.unpack(config) if config is not None else None,
    )


class StorageNode:
    """One store node. Created by dynaray.cluster as a detached, named async actor."""

    def __init__(
        self, node_id: str, path: str, options: dict | None = None, fresh: bool = False
    ) -> None:
        """`fresh`: node_id has never issued a dot (a new store, or an id never used)."""
        _log_as(node_id)
        gc.set_threshold(*GC_THRESHOLDS)
        self.id = node_id
        self.options = NodeOptions(**(options or {}))
        self.path = path
        self.store = Store(
            path, node_id, sync=self.options.sync, fresh=fresh, on_failure=self._store_failed
        )
        # The id this node's writes carry in version vectors and CRDTs (Store._check_stamp).
        self.actor = self.store.actor
        # A directory created empty for a node that may have had data, or whose data went
        # back in time (Store._gone_back): every range is taken over from its replicas when
        # the ring arrives (configure), merged into what it holds, and until then (or a
        # restart in the middle of it) its reads go to them. Kept on disk until done.
        mark = self.store.get(META, REFILL)
        self.refill = mark is not None
        # Started on an empty directory: until a range is refilled, this node's copy of it
        # is no copy at all, and a node taking the range over must copy it from another.
        # (A copy whose data went back is served: whole up to some moment, and every node
        # of a store restored from backups refills at once.)
        self._refill_empty = mark == REFILL_EMPTY
        if self.store.created and not fresh:
            log.warning(
                "node %s starts with an empty directory and may have written before (a "
                "replaced disk, or a store whose ring does not record every node that left): "
                "its writes carry the id %s, so they cannot be mistaken for earlier ones",
                node_id,
                self.actor,
            )
        self.transport = Transport(node_id)
        self.hlc = HybridClock()
        self.ring: Ring | None = None
        self._replicated_known: tuple[Ring, int, frozenset[int]] | None = None
        self.config: dict = {}
        self.catalog = Catalog()
        self._down_until: dict[str, float] = {}
        self._tasks: set[asyncio.Task] = set()
        self._stopping = False
        # Set once this node, out of the ring, passes its hints on: from then on it takes
        # no write to keep (no hint, no write to coordinate), so none stays behind it.
        self._leaving = False
        self._clock_warned = -CLOCK_AHEAD_WARN  # when a clock ahead was last logged
        self._loops_started = False
        self._lookup: asyncio.Future | None = None  # the name lookup in flight, if any
        self.metrics = NodeMetrics(node_id)
        # Every start is a new incarnation, so news of this life outranks the previous one's.
        self.membership = Membership(
            node_id,
            self.store.increment(META, _INCARNATION),
            suspect_after=self.options.suspect_after,
            down_after=self.options.down_after,
        )
        # This start's number, part of every stand-in write's actor id (below, _update).
        self.life = self.membership.incarnation
        self.handoff = HintedHandoff(self.store, self._send_hints, batch=self.options.handoff_batch)
        # {owner that is down: (ring version, scans of it that left nothing to send, when
        # the next may begin, scans since the last clean one)}: hints of keys a ring
        # change moved away from it (_moved_due). A scan that left some waits longer each
        # time (up to 20 x MOVED_RECHECK): a copy no owner will take costs a scan each.
        self._moved_sent: dict[str, tuple[int, int, float, int]] = {}
        self.ranges = KeyRanges(self.store)
        # Ranges this node gained in a ring change and is still receiving (ownership
        # handoff): it does not answer reads for them until it has them.
        self.pending: set[int] = set()
        # {range: old replicas}: ranges an earlier life of this node was still copying
        # (_TAKING); they stay pending, and configure resumes copying them.
        self._unfinished: dict[int, list[str]] = self._per_range(_TAKING, codec.unpack)
        self.pending.update(self._unfinished)
        # Of those, the ranges gained in a ring change (not refilled): this node's copy of
        # them is partial, so another node taking one over copies it from elsewhere. So
        # from the start for the ranges an earlier life was still copying.
        self._gaining: set[int] = set(self._unfinished)
        # {range: the take-over now answerable for it}: of two that take one range (a
        # resumed one and a refill), only the later clears its pending mark (_take_over).
        self._claims: dict[int, object] = {}
        self._configuring = asyncio.Lock()
        self.store.write_now(self._floors_for_this_actor)
        # {range: key-epoch floor}: epochs of this node's that began at or before it may not
        # be gone on under (actors.continuing), as the range's copy was dropped since.
        self.floors = self._per_range(_FLOOR, lambda raw: int.from_bytes(raw, "big"))
        # A directory written before key epochs may have dropped ranges and taken them back
        # then, with no floor kept: nothing it wrote under then (the bare actor id) goes on.
        self.epochs_since = int.from_bytes(
            self.store.setdefault(
                META,
                _EPOCHS,
                lambda number: (0 if self.store.created else number).to_bytes(8, "big"),
            ),
            "big",
        )
        # ranges_failed: gained ranges no old replica could be copied from (30 tries), left
        # to anti-entropy; the driver then keeps the old copies (Cluster._reshape).
        self.transfer = {
            "ranges_received": 0,
            "keys_received": 0,
            "ranges_dropped": 0,
            "ranges_failed": 0,
        }
        self._unmergeable: set[bytes] = set()  # keys logged as written as two kinds
        self.last_exchange: float | None = None
        self._load_ring()

    # -- lifecycle and configuration --------------------------------------------------------

    def _floors_for_this_actor(self, txn: Txn) -> None:
        """Floors and _EPOCHS hold back the key epochs of one actor id. When the store took
        a new one at this start (its data went back in time: Store._gone_back), no epoch
        of the new id exists yet, so the old ones go. Kept, they would outlast their use:
        in a compacted backup put back, LMDB numbers transactions from the start again, so
        every write would begin a new epoch, and add a version-vector entry, until the
        numbers passed the old floors."""
        owner = txn.get(META, _FLOORS_OF)
        # No mark: a directory from before it, whose floors are this actor's unless the
        # store took a new id at this very start.
        if self.store.new_actor if owner is None else bytes(owner).decode() != self.actor:
            for key in txn.keys(META, _FLOOR):
                txn.delete(META, key)
            if txn.get(META, _EPOCHS) is not None:
                txn.put(META, _EPOCHS, bytes(8))
        txn.put(META, _FLOORS_OF, self.actor.encode())

    def _per_range(self, kind: bytes, decode: Callable[[bytes], Any]) -> dict[int, Any]:
        """{range: value} of the META keys of one kind kept per range (_range_key)."""
        return {
            codec.key_partition(key[len(kind) :]): decode(raw)
            for key, raw in self.store.scan(META, kind, limit=1 << 20)
        }

    def _load_ring(self) -> None:
        raw = self.store.get(META, _RING)
        if raw is not None:
            self._adopt(Ring.from_wire(codec.unpack(raw)))
        raw = self.store.get(META, _CONFIG)
        if raw is not None:
            self.config = codec.unpack(raw)
        raw = self.store.get(META, _CATALOG)
        if raw is not None:
            self.catalog = Catalog.from_wire(codec.unpack(raw))
        if self.refill and self.ring is not None:
            # Restarted in the middle of a refill: answer no read until configure resumes it.
            self.pending.update(self._replicated())

    def _store_failed(self) -> None:
        """The store's writer thread stopped for good: this node can no longer make a write
        durable. Crash, so that peers and clients see it down and write to stand-ins (with
        hints) instead of to a node that fails every write; its data stays on disk for a
        restart. Only a node running as a Ray actor exits its process."""
        log.critical(
            "node %s cannot write to its store any more (see the error above): it stops; "
            "fix the cause, then `dynaray restart %s` (with --store NAME for a store other "
            "than the default)",
            self.id,
            self.id,
        )
        if ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None:
            os._exit(70)  # EX_SOFTWARE; LMDB needs no clean close to stay consistent

    def _spawn(self, coro: Coroutine) -> asyncio.Task:
        """Background work owned by the node: cancelled by stop(), never left dangling."""
        task = asyncio.get_running_loop().create_task(coro)
        if self._stopping:
            # A message that arrives while the node stops (gossip, say) starts nothing: the
            # store is about to close under it.
            task.cancel()
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    async def describe(self, sender: str | None = None) -> dict:
        """What a client needs to route: ring, quorum defaults, and who this is."""
        return {
            "node": self.id,
            "ring": self.ring.to_wire() if self.ring else None,
            "config": self.config,
            "status": self.membership.statuses(),
            # The peers' actors as this node knows them (not those it saw die): a client
            # learns of a node that joined, or restarted, through another driver's handle.
            # Each packed on its own: one Ray can no longer rebuild fails only itself.
            "peers": {
                p: pack_handle(h) for p, h in self.transport.peers.items() if self.transport.live(p)
            },
            # What a client coordinating its own reads needs to do it as the nodes do.
            "reads": {
                "replica_timeout": self.options.replica_timeout,
                "sloppy_quorum": self.options.sloppy_quorum,
                "read_repair": self.options.read_repair,
                "read_repair_wait": self.options.read_repair_wait,
                "read_repair_chance": self.options.read_repair_chance,
            },
        }

    def _adopt(self, ring: Ring) -> None:
        self.ring = ring
        for node in ring.nodes():
            self.membership.add(node)
        for node in list(self.membership.peers):
            if node not in ring.nodes():
                self.membership.remove(node)

    @property
    def n(self) -> int:
        return int(self.config.get("n", 3))

    async def configure(self, ring_wire: dict, config: dict, previous: dict | None = None) -> bool:
        """Adopt a ring (if newer than ours) and the store's defaults, durably.

        Ranges the new ring gives us are pulled from their previous replicas (ownership
        handoff); `previous` is the ring before the change, for a node that had none.
        Ranges an earlier life was still pulling are pulled on (_unfinished).
        """
        async with self._configuring:  # one at a time: each compares with the ring before it
            return await self._configure(Ring.from_wire(ring_wire), config, previous)

    async def _configure(self, ring: Ring, config: dict, previous: dict | None) -> bool:
        if self.ring is not None and ring.version < self.ring.version:
            self._resume({})
            return False
        if (
            self.ring is not None
            and ring.version == self.ring.version
            and ring.to_wire() != self.ring.to_wire()
        ):
            # Two changes made from the same ring (a driver that stalled past its hold while
            # another made a change): taking this one would hand no range over, and the
            # nodes would hold two rings of one version for good.
            raise DynarayError(
                f"node {self.id} holds another ring of version {ring.version}: two "
                "membership changes were made from the same ring; this one was not taken "
                "here. Look at the ring (`dynaray ring`, with --store NAME for a store other "
                "than the default) before changing it again"
            )
        before = Ring.from_wire(previous) if previous else None
        old = self.ring or before
        gained: list[int] = []
        n = int(config.get("n", 3))
        # Back with an empty directory, or one whose data went back in time (or restarted
        # before it was refilled), not joining: every range is taken over from its other
        # replicas, as a joining node would, instead of waiting for anti-entropy; meanwhile
        # reads go to the replicas that have them. So too a node with no ring kept and
        # none given from before, in a store past its first ring: it never held its
        # ranges (a joiner restarted before the change reached it). A joiner (given
        # `previous`, a ring without it) takes what it gains, its whole share. A member
        # back on an empty directory may get its first ring from a membership change
        # (given `previous` too, by a driver settling the change): it refills all the same.
        joining = before is not None and self.id not in before.nodes()
        never_held = old is None and ring.version > 1 and self.id in ring.nodes()
        refill = (self.refill and not joining) or never_held
        if refill:
            gained = sorted(ring.replicated_partitions(self.id, n))
        elif old is not None and old.version < ring.version:
            gained = sorted(
                set(ring.replicated_partitions(self.id, n))
                - set(old.replicated_partitions(self.id, n))
            )
        # A refill copies from the range's other replicas in this ring, and in the ring
        # before it when one is known (a change in progress: they may not have it yet).
        rings = ([ring] if refill else []) + ([old] if old is not None else [])
        plan = {p: _sources(rings, p, n, self.id) for p in gained}
        # A refill takes every range over in one go: with the sources of one an earlier
        # life was pulling too; one the ring no longer gives us is not pulled on.
        folded = dict(self._unfinished) if refill else {}
        for partition, sources in folded.items():
            if partition in plan:
                plan[partition] = list(dict.fromkeys([*plan[partition], *sources]))

        def op(txn: Txn) -> None:
            txn.put(META, _RING, codec.pack(ring.to_wire()))
            txn.put(META, _CONFIG, codec.pack(config))
            for partition in folded:
                txn.delete(META, _range_key(_TAKING, partition))
            for partition, sources in plan.items():
                txn.put(META, _range_key(_TAKING, partition), codec.pack(sources))

        await self.store.write(op)
        marked, self.refill = self.refill, False
        self._adopt(ring)
        self.config = dict(config)
        if refill:
            self.pending.clear()  # what _load_ring and __init__ marked, from before
            self._unfinished = {}
        self._resume(plan, refill, marked)
        return True

    def _resume(self, plan: dict[int, list[str]], refill: bool = False, marked: bool = False):
        """Start pulling `plan`'s ranges, and those an earlier life was still pulling (as
        gains: their copy here is partial). `marked`: the REFILL mark goes once `plan` is
        in, even an empty one."""
        resumed, self._unfinished = self._unfinished, {}
        if resumed:
            self._start_take_over(resumed, refill=False)
        if plan or marked:
            self._start_take_over(plan, refill, marked)

    def _start_take_over(self, plan: dict[int, list[str]], refill: bool, marked: bool = False):
        self.pending.update(plan)
        if refill:
            self._gaining.difference_update(plan)  # the refill answers for them now
        else:
            self._gaining.update(plan)
        self._spawn(self._take_over(plan, refill, marked))

    # -- ownership handoff ------------------------------------------------------------------

    async def _take_over(
        self, plan: dict[int, list[str]], refill: bool = False, marked: bool = False
    ) -> None:
        """Copy each gained range from one of its old replicas (`plan`), then compare it with
        the others by Merkle exchange: a write only some of them got arrives too, without
        moving the whole range once per replica. A range's _TAKING mark goes once it is in
        (or given up on); `marked`: the directory's REFILL mark goes once every range is in.
        Neither goes if the node stops first."""
        claim = object()
        self._claims.update(dict.fromkeys(plan, claim))
        gave_up: set[str] = set()  # old replicas whose comparisons used their tries up
        for partition, sources in plan.items():
            try:
                await self._take_range(partition, sources, refill, gave_up)
            finally:
                self.transfer["ranges_received"] += 1
                mine = self._claims.get(partition) is claim
                if mine:
                    del self._claims[partition]
                    self.pending.discard(partition)
                    self._gaining.discard(partition)
            if mine:
                key = _range_key(_TAKING, partition)
                with contextlib.suppress(StorageError):  # pulled again after a restart
                    await self.store.write(lambda txn, key=key: txn.delete(META, key))
        if marked:
            await self.store.write(lambda txn: txn.delete(META, REFILL))
            self._refill_empty = False

    async def _take_range(
        self, partition: int, sources: list[str], refill: bool, gave_up: set[str] | None = None
    ) -> None:
        """A joiner gives up on a range after 30 tries and leaves it to anti-entropy (its
        old replicas may be gone for good). A node refilling its ranges does not: its own
        copy of them is empty or older than what it acknowledged, so it keeps trying, and
        keeps refusing reads of the range, until a replica answers."""
        copied = None
        attempt = 0
        while copied is None and sources and (refill or attempt < 30):
            for source in sources:
                if await self._pull(source, partition, refill):
                    copied = source
                    break
            if copied is None:
                attempt += 1
                if refill and attempt % 30 == 0:
                    log.warning(
                        "range %d: no other replica answered in %d tries; its reads go to "
                        "them until one does (check `cluster.status()` for nodes down or "
                        "cut off)",
                        partition,
                        attempt,
                    )
                await asyncio.sleep(1.0)
        if copied is None:
            self.transfer["ranges_failed"] += 1
            log.warning("no old replica of range %d answered; anti-entropy fills it", partition)
        # Only a range just copied is worth waiting for: a refill serves it anyway, and one
        # with no copy is left to anti-entropy. A replica that used its tries up in this
        # take-over gets one try at each later range (a joiner gains ranges by the
        # hundred, one after the other).
        patient = copied is not None and not refill
        missed = [
            source
            for source in sources
            if source != copied and not await self._compare(partition, source, patient, gave_up)
        ]
        if missed and copied is not None:
            log.warning(
                "range %d was copied from %s but could not be compared with %s: a write only "
                "they hold reaches it at anti-entropy",
                partition,
                copied,
                ", ".join(missed),
            )

    async def _compare(
        self, partition: int, source: str, patient: bool, gave_up: set[str] | None
    ) -> bool:
        """Compare a range with one of its old replicas (Merkle exchange), which brings in a
        write that replica got and the one copied from missed: served without it, the range
        would hide an acknowledged write. `patient`: tried again, up to 30 times, while the
        source looks reachable (a slow or busy node); names that used their tries up go
        into `gave_up`, and get one try."""
        tries = 30 if patient and source not in (gave_up or ()) else 1
        for attempt in range(1, tries + 1):
            try:
                await self._exchange(partition, source).run()
                return True
            except (PeerUnavailable, StorageError):
                pass
            except Exception:  # as for a pull: this source failed, the others go on
                log.exception("comparing range %d with %s failed", partition, source)
                break
            if attempt == tries or self._stopping or not self._reachable(source):
                break
            await asyncio.sleep(1.0)
        if gave_up is not None:
            gave_up.add(source)
        return False

    def _reachable(self, node: str) -> bool:
        """Worth calling again: a ring node gossip sees up; a node out of the ring (one
        leaving, which gossip no longer follows) whose actor is not known dead (a node
        forgotten for good is)."""
        if self.ring is not None and node in self.ring.nodes():
            return self.membership.is_up(node)
        return self.transport.live(node)

    async def _pull(self, source: str, partition: int, refill: bool = False) -> bool:
        """Copy one range from one source; False if the source could not be reached or
        failed (the caller tries another: the range must not count as copied)."""
        after = None
        try:
            while True:
                items = await self._call(
                    source, "range_items", partition, after, self.options.transfer_batch, refill
                )
                if items is None:
                    return False  # the source is still receiving the range itself
                if not items:
                    return True
                await self._apply([(k, raw, None) for k, raw in items])
                self.transfer["keys_received"] += len(items)
                after = items[-1][0]
        except (PeerUnavailable, StorageError):
            return False
        except Exception:  # any error from the source (stopping, a bug): try another
            log.exception("copying range %d from %s failed", partition, source)
            return False

    @ray.method(enable_task_events=False)
    async def range_items(
        self, sender: str, partition: int, after: bytes | None, limit: int, refilling: bool = False
    ):
        """One batch of a range for a node taking it over: [(data key, encoded record)];
        None while this node is still receiving the range it gained (its copy is partial).
        So too, to a node taking the range over in a ring change, while this node refills
        it after starting on an empty directory (or, so started, before it has a ring).
        A range being refilled is otherwise served: its copy is whole up to some moment,
        every node of a store restored from backups refills at once, and nodes that all
        lost their disks (`refilling` takers) must not wait on each other for good."""
        self._check_sender(sender)
        if partition in self._gaining:
            return None
        if (
            self._refill_empty
            and not refilling
            and (self.ring is None or partition in self.pending)
        ):
            return None
        return self.ranges.scan(partition, after, limit)

    async def handoff_status(self) -> dict:
        # `life`: the counters start again at each restart; with the actor id, as a node
        # back on an empty disk counts its lives from 1 again. `ring`: the version of the
        # ring this node has taken (0: none yet): until it has the new one, its gains
        # are not even pending.
        ring = self.ring.version if self.ring is not None else 0
        life = f"{self.actor}:{self.life}"
        return {"pending": len(self.pending), "life": life, "ring": ring, **self.transfer}

    async def drop_foreign(self) -> int:
        """Delete ranges this node no longer replicates (after the new owners have them)."""
        if self.ring is None:
            return 0
        dropped = 0

        def foreign(partition: int) -> bool:  # asked again at each step: rings change
            return partition not in self._replicated() and partition not in self.pending

        for partition in self.ranges.held():
            if foreign(partition):
                # The floor is raised before the copy goes (a crash in between leaves it
                # raised) and after (past epochs a late write began meanwhile).
                await self._raise_floor(partition)
                dropped += await self.ranges.drop(partition, still=lambda p=partition: foreign(p))
                # Raised after, even for a range given back midway: a key its earlier
                # batches dropped may have begun an epoch during the drop.
                await self._raise_floor(partition)
                if partition not in self.ranges.held():
                    self.transfer["ranges_dropped"] += 1
        return dropped

    async def _raise_floor(self, partition: int) -> None:
        """No epoch begun so far goes on in this range: a copy of it that comes back from a
        peer may lack dots this node issued (dynaray/actors.py)."""

        def op(txn: Txn) -> int:
            floor = txn.raw.id()
            txn.put(META, _range_key(_FLOOR, partition), floor.to_bytes(8, "big"))
            return floor

        self.floors[partition] = await self.store.write(op)

    # -- anti-entropy -----------------------------------------------------------------------

    @ray.method(enable_task_events=False)
    async def anti_entropy_call(self, sender: str, method: str, partition: int, *args: Any):
        """The peer side of an Exchange: answer about our copy of a range, or apply repairs."""
        self._check_sender(sender)
        if method == "apply":
            # Not into a range our ring took from us: a peer on an older ring would put
            # back a copy we dropped, which no exchange or reaping here ever looks at.
            return await self._apply([item for item in args[0] if self._keeps(item)])
        if method == "reap":
            return await self._reap_local(args[0])
        if method in ("merkle_hashes", "segment_items", "read_records"):
            return getattr(self.ranges, method)(partition, *args)
        if method == "reapable":
            # None while this node is still taking the range over: a stale copy it has yet
            # to merge from an old replica would bring back a key reaped meanwhile.
            if partition in self.pending:
                return None
            return self.ranges.read_records(partition, *args)
        if method == "hinted":
            # And with `copies` (asked of a node that is not an owner): keys of which this
            # node holds a copy of its own, one it kept from an earlier ownership of the
            # range (not dropped yet) that would come back if the range came back to it.
            keys, copies = args[0], len(args) > 1 and args[1]
            held = self.handoff.hinted(keys)
            if copies:
                stored = self.store.get_many(DATA, keys)
                held += [k for k, raw in zip(keys, stored, strict=True) if raw is not None]
            return held
        raise ValueError(f"unknown anti-entropy call {method!r}")

    async def anti_entropy_round(self) -> dict:
        """Compare every range we replicate with its other replicas (we start the exchange
        with peers whose id sorts after ours, so each pair meets once a round)."""
        figures = Figures()
        skipped: set[str] = set()
        faulty: set[str] = set()
        if self.ring is None:
            return figures.as_dict()
        for partition in self.ring.replicated_partitions(self.id, self.n):
            if partition in self.pending:
                continue
            replicas = self.ring.preference_list(partition)[: self.n]
            for peer in replicas:
                # A peer gossip calls down is still tried: the call's deadline bounds the cost,
                # and a round that silently skipped a replica would not be a full round.
                if peer <= self.id or peer in skipped:
                    continue
                try:
                    figures.add(await self._exchange(partition, peer).run())
                except (PeerUnavailable, StorageError):  # or a disk refused a repair
                    skipped.add(peer)
                except Exception:  # one range's fault (a record that does not decode) must
                    # not stop the round: the other ranges and the reaping go on
                    if peer not in faulty:  # logged once a round per peer
                        log.exception("anti-entropy of range %d with %s failed", partition, peer)
                    faulty.add(peer)
                    figures.ranges_failed += 1
        figures.peers_unreachable = len(skipped)
        for partition in self.ring.replicated_partitions(self.id, self.n):
            if self.ring.preference_list(partition)[0] == self.id and partition not in self.pending:
                try:
                    figures.tombstones_reaped += await self._reap(partition)
                except Exception:  # as for an exchange: the other ranges are still reaped
                    log.exception("reaping tombstones of range %d failed", partition)
                    figures.ranges_failed += 1
        self.last_exchange = time.time()
        for name, value in figures.as_dict().items():
            self.metrics.count(f"anti_entropy_{name}", value)
        return figures.as_dict()

    async def _reap(self, partition: int) -> int:
        """Remove tombstones past their grace period that every replica holds alike.

        Run by the range's first owner only. Each replica deletes a tombstone only if its
        copy is still exactly the one compared, so a write that raced the reaper survives.
        """
        cutoff = (time.time() - self.options.tombstone_grace) * 1000
        candidates = []
        prefix = codec.partition_prefix(partition)
        for count, (dkey, raw) in enumerate(self.store.iterate(DATA, prefix), 1):
            if _old_tombstone(raw, cutoff):
                candidates.append((dkey, raw))
            if count % _REAP_SCAN_STEP == 0:
                # A range can hold millions of keys, each decoded here: the loop lets gossip
                # and requests in between, or peers would call the node down meanwhile.
                await asyncio.sleep(0)
        if not candidates:
            return 0
        keys = [dkey for dkey, _ in candidates]
        peers = [p for p in self.ring.preference_list(partition)[: self.n] if p != self.id]
        agreed = set(keys)
        for peer in peers:
            try:
                theirs = await self._call(peer, "anti_entropy_call", "reapable", partition, keys)
            except (PeerUnavailable, StorageError):
                return 0  # every replica must hold the tombstone: try again next round
            if theirs is None:
                return 0  # the peer is still taking the range over
            for (key, own), raw in zip(candidates, theirs, strict=True):
                if raw is None or not records.same_encoded(own, raw):
                    agreed.discard(key)
        # Nor may any node still hold a hint of the key (a copy from before the delete, for
        # an owner that was down then): delivered after the reap, it would bring the key
        # back. Every node of the ring is asked, as any may have stood in, and a node that
        # left it but still runs (its leave stopped before it passed its hints on); a node
        # that does not answer could hold one, so nothing is reaped this round. A node
        # that is not an owner is asked for copies of its own too: one kept from an
        # earlier ownership (a ring change that ended before old copies were dropped)
        # would come back with the range, were it given back to that node.
        agreed -= set(self.handoff.hinted(sorted(agreed)))
        owners = {self.id, *peers}
        ring = self.ring.nodes()
        leaving = [p for p in self.transport.peers if p not in ring and self.transport.live(p)]
        # Leaving nodes first: one passes its hints on to ring nodes (never the other way),
        # so a hint moving meanwhile is found at one end or the other.
        for other in [*leaving, *ring]:
            if other == self.id or not agreed:
                continue
            if other in ring and not self.is_up(other):
                return 0  # asked, it could not answer either (and the call would wait)
            try:
                hinted = await self._call(
                    other,
                    "anti_entropy_call",
                    "hinted",
                    partition,
                    sorted(agreed),
                    other not in owners,
                )
            except (PeerUnavailable, StorageError):
                return 0
            agreed -= {bytes(k) for k in hinted}
        doomed = [(dkey, raw) for dkey, raw in candidates if dkey in agreed]
        if not doomed:
            return 0
        reaped = 0
        for peer in peers:
            try:
                reaped += await self._call(peer, "anti_entropy_call", "reap", partition, doomed)
            except (PeerUnavailable, StorageError):
                continue  # its copy stays; the next round reaps it
        return reaped + await self._reap_local(doomed)

    async def _reap_local(self, doomed: list) -> int:
        """Delete each (data key, record) whose stored record is still exactly that."""

        def op(txn: Txn) -> int:
            count = 0
            for dkey, raw in doomed:
                current = txn.get(DATA, dkey)
                if current is not None and records.equal(
                    records.decode(current), records.decode(raw)
                ):
                    txn.delete(DATA, dkey)
                    count += 1
            return count

        return await self.store.write(op)

    def _exchange(self, partition: int, peer: str) -> Exchange:
        """A Merkle exchange of one range between our copy and peer's."""

        async def call(method: str, partition: int, *args: Any) -> Any:
            return await self._call(peer, "anti_entropy_call", method, partition, *args)

        return Exchange(partition, call, self.ranges, self._apply)

    async def _anti_entropy_loop_round(self) -> None:
        figures = await self.anti_entropy_round()
        if figures["keys_repaired"]:
            log.info("anti-entropy repaired %d keys", figures["keys_repaired"])

    async def merkle_roots(self) -> dict[int, str]:
        """{range: root hash} for the ranges this node replicates and holds."""
        if self.ring is None:
            return {}
        return {
            p: f"{self.ranges.tree(p).root:016x}"
            for p in self.ring.replicated_partitions(self.id, self.n)
            if p not in self.pending
        }

    async def set_peers(self, peers: dict[str, Any]) -> None:
        """Take the peers' actor handles (resolved once, cached) and start background work.
        A node known here that is out of the ring (a leave cut short: it still runs, holding
        hints) is kept even if not given: the tombstone reaper must ask it."""
        given = {p: h for p, h in peers.items() if p != self.id}
        ring = set(self.ring.nodes()) if self.ring is not None else set()
        for peer, handle in self.transport.peers.items():
            if peer not in given and peer not in ring and self.transport.live(peer):
                given[peer] = handle
        self.transport.set_peers(given)
        if self.refill and self.ring is not None:
            # Restarted halfway through a refill with no ring handed to it (no other node
            # answered the restart): carry on with the ring it kept.
            self._spawn(self.configure(self.ring.to_wire(), self.config))
        elif self._unfinished and self.ring is not None:
            # Restarted halfway through copying ranges, with no ring handed to it: copy on.
            self._resume({})
        if not self._loops_started:
            self._loops_started = True
            self._spawn(self._every(self.options.gossip_interval, self._gossip_round))
            self._spawn(self._every(self.options.handoff_interval, self._handoff_round))
            self._spawn(self._every(METRICS_INTERVAL, self._export_metrics))
            self._spawn(self._every(PEER_LOOKUP_INTERVAL, self._find_peers))
            self._spawn(self._watch_loop())
            if self.options.anti_entropy_interval:
                self._spawn(
                    self._every(self.options.anti_entropy_interval, self._anti_entropy_loop_round)
                )

    async def update_peer(self, node: str, handle: Any) -> None:
        """A peer restarted: use its new actor handle."""
        if node != self.id:
            self.transport.replace(node, handle, force=True)
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
            except StorageError as exc:  # a full disk, here or at a peer: no trace to read
                log.warning("background round of %s failed: %s", work.__name__, exc)
            except Exception:
                log.exception("background round of %s failed", work.__name__)

    async def _watch_loop(self) -> None:
        """Measure how late the event loop wakes for a timer, until stop(): the wait a
        request had behind work that held the loop (metrics: loop_late_max, loop_stalls)."""
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(LOOP_PROBE)
            self.metrics.loop_late(loop.time() - start - LOOP_PROBE)

    async def stop(self) -> None:
        """Graceful stop: end background work, flush and close the store."""
        self._stopping = True
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        self.transport.close()
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
        # Our heartbeat does not advance while this call waits: a peer that hangs (not yet
        # known dead) must not hold it long enough for the others to suspect us.
        options = self.options
        timeout = min(options.replica_timeout, options.suspect_after / 2)
        try:
            digest, ring_wire, catalog = await self.transport.call(
                peer,
                "gossip",
                self.membership.digest(),
                version,
                self.catalog.digest(),
                timeout=timeout,
            )
        except PeerUnavailable as exc:
            if "no answer" not in exc.reason:  # one slow answer is for gossip to judge
                self._mark_down(peer)
            return
        self._learn(digest, ring_wire)
        if catalog is not None:
            await self._learn_catalog(catalog)

    async def _find_peers(self) -> None:
        """Look up by name the actors of ring peers this node has no live handle for. A peer
        that joined or restarted while the driver's update_peer could not reach this node
        (a partition) would otherwise stay unreachable from here for good.

        A lookup needs Ray's control plane (GCS) and blocks its thread while that is down,
        so it runs in its own loop, never in gossip's, one lookup thread at a time, each
        awaited with a deadline."""
        if self.ring is None or (self._lookup is not None and not self._lookup.done()):
            return  # a lookup thread still waits on the GCS: no second one
        transport = self.transport
        for peer in self.ring.nodes():
            if peer == self.id or transport.live(peer):
                continue
            name = node_name(self.config.get("store", ""), peer)
            self._lookup = asyncio.ensure_future(
                asyncio.to_thread(ray.get_actor, name, namespace=NAMESPACE)
            )
            try:
                handle = await asyncio.wait_for(asyncio.shield(self._lookup), PEER_LOOKUP_WAIT)
            except TimeoutError:
                return  # its thread still waits on the GCS: no other lookup until it ends
            except Exception:  # noqa: BLE001 - no actor of it runs, or a Ray error
                continue
            if transport.replace(peer, handle):
                self._down_until.pop(peer, None)

    @ray.method(enable_task_events=False)
    async def gossip(
        self, sender: str, digest: dict, ring_version: int, catalog_digest: bytes = b""
    ) -> tuple:
        """A peer's gossip: merge its view, answer with ours, our ring if it is newer and
        our bucket catalog if it differs from the peer's."""
        self._check_sender(sender)
        self._learn(digest, None)
        # Answering is a sign of life too: our heartbeat advances, so a node whose own
        # rounds wait on a slow peer is still heard from by those that ask it.
        self.membership.tick()
        newer = self.ring is not None and self.ring.version > ring_version
        differs = len(self.catalog) and self.catalog.digest() != catalog_digest
        return (
            self.membership.digest(),
            self.ring.to_wire() if newer else None,
            self.catalog.to_wire() if differs else None,
        )

    def _learn(self, digest: dict, ring_wire: dict | None) -> None:
        incarnation = self.membership.incarnation
        revived = self.membership.merge(digest)
        if self.membership.incarnation != incarnation:
            # News of an earlier life outranked ours (Membership.merge): keep the new count,
            # so the next start counts on from it.
            count = str(self.membership.incarnation).encode()
            self._spawn(self.store.write(lambda txn: txn.put(META, _INCARNATION, count)))
        for node in revived:
            log.info("%s is up again", node)
            self._down_until.pop(node, None)
            self._spawn(self._deliver_to(node))
        # A node with no ring yet waits for the driver's, which says what it held before.
        if ring_wire is not None and self.ring is not None:
            ring = Ring.from_wire(ring_wire)
            if ring.version > self.ring.version:
                self._spawn(self.configure(ring_wire, self.config))

    async def membership_view(self) -> dict[str, str]:
        return self.membership.statuses()

    # -- bucket catalog ---------------------------------------------------------------------

    async def _learn_catalog(self, wire: dict, durable: bool = False) -> None:
        """Merge catalog entries into ours and persist them (always, when `durable`: the
        caller is about to acknowledge them)."""
        if self.catalog.merge(Catalog.from_wire(wire)) or durable:
            # Packed now, on the event loop: writes commit in order, so the last one
            # written holds everything merged before it.
            raw = codec.pack(self.catalog.to_wire())
            await self.store.write(lambda txn: txn.put(META, _CATALOG, raw))

    async def bucket_catalog(self, sender: str | None = None) -> dict:
        return self.catalog.to_wire()

    async def learn_buckets(self, sender: str, wire: dict) -> bool:
        """A peer created a bucket: hold its properties durably, then acknowledge."""
        self._check_sender(sender)
        await self._learn_catalog(wire, durable=True)
        return True

    async def bucket_props(self, sender: str, name: str, ask_peers: bool = True) -> list:
        """The encoded properties stored for bucket `name` ([] for none). A name this node
        does not know may have been created a moment ago through another node whose gossip
        has not arrived yet, so the live peers are asked too."""
        self._check_sender(sender)
        if self.catalog.get(name) or not ask_peers:
            return self.catalog.get(name)
        peers = [p for p in self.transport.peers if p != self.id and self.is_up(p)]
        answers = await asyncio.gather(
            *(self._call(p, "bucket_props", name, False) for p in peers), return_exceptions=True
        )
        found = [props for answer in answers if isinstance(answer, list) for props in answer]
        if found:
            await self._learn_catalog({name: found})
        return self.catalog.get(name)

    async def create_bucket(self, sender: str, name: str, props: bytes, w: int) -> tuple:
        """Record a new bucket's properties here and on every live node.

        Every peer is asked, even one believed down (creating a bucket is rare, and each
        call has its deadline), so that a client that then finds itself cut off with any
        of them still sees the bucket. Returns ("ok", the properties now stored for `name`)
        if at least `w` nodes hold them durably, else ("quorum", answered, w, asked); gossip
        carries them to the nodes not reached either way. A name that already has
        properties keeps them.
        """
        self._check_sender(sender)
        if self.catalog.get(name):
            return ("ok", self.catalog.get(name))
        await self._learn_catalog({name: [props]}, durable=True)
        wire = {name: self.catalog.get(name)}
        peers = [p for p in self.transport.peers if p != self.id]
        acks = await asyncio.gather(
            *(self._call(p, "learn_buckets", wire) for p in peers), return_exceptions=True
        )
        answered = 1 + sum(ack is True for ack in acks)
        if answered < w:
            return ("quorum", answered, w, 1 + len(peers))
        return ("ok", self.catalog.get(name))

    # -- hinted handoff ---------------------------------------------------------------------

    async def _send_hints(self, owner: str, items: list) -> list[bool]:
        """HintedHandoff's delivery of hints held for owner: to the owner, for keys it still
        replicates; to their current owners, for keys it no longer does (it left the ring,
        or the range moved to a joiner: a copy it took would be dropped with the range).
        Answers, per hint, whether an owner of its key holds it now (anti-entropy brings it
        to the others); PeerUnavailable when no owner could be reached at all."""
        by_target: dict[str, list[int]] = {}
        for index, (dkey, _raw, _hint) in enumerate(items):
            owners = self._owners(dkey) if self.ring is not None else [owner]
            for target in [owner] if owner in owners else owners:
                by_target.setdefault(target, []).append(index)
        held = [False] * len(items)
        reached = False
        for target, indices in by_target.items():
            batch = [items[i] for i in indices]
            try:
                if target == self.id:
                    answers = await self._apply(batch)
                else:
                    answers = await self._call(target, "replica_put", batch)
            except Exception as exc:  # noqa: BLE001 - this target's fault: the others go on
                if not isinstance(exc, PeerUnavailable | StorageError):
                    log.warning("delivering hints to %s failed: %r", target, exc)
                continue
            reached = True
            for i, ok in zip(indices, answers, strict=True):
                held[i] = held[i] or ok is True
        if not reached:
            raise PeerUnavailable(owner, "no owner of these keys could be reached")
        return held

    async def pass_on_hints(self) -> int:
        """Before this node stops for good (it left the ring): each hint it holds goes to
        its key's owners, or, for an owner out of reach, to another node of the ring that
        keeps it as a hint. Returns how many hints are still held here."""
        self._leaving = True
        await self.store.write(lambda txn: None)  # every write taken before is committed
        deadline = time.monotonic() + PASS_ON_WAIT
        for owner in self.handoff.owners():
            while self.handoff.busy(owner) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)  # the handoff loop's delivery: then ours
            with contextlib.suppress(PeerUnavailable, StorageError):
                await self.handoff.deliver(owner, self._pass_on)
        return self.handoff.count()

    async def _pass_on(self, owner: str, items: list) -> list[bool]:
        """HintedHandoff's send for pass_on_hints: per hint, whether a node holds it now."""
        held = [False] * len(items)
        if self._deliverable(owner):
            with contextlib.suppress(PeerUnavailable):
                held = await self._send_hints(owner, items)
        rest = [i for i, ok in enumerate(held) if not ok]
        others = [p for p in self.ring.nodes() if p not in (self.id, owner)] if self.ring else []
        for peer in sorted(others, key=lambda p: not self.is_up(p)):
            if not rest:
                break
            try:
                answers = await self._call(
                    peer, "replica_put", [[items[i][0], items[i][1], owner] for i in rest]
                )
            except (PeerUnavailable, DynarayError):
                continue
            rest = [i for i, ok in zip(rest, answers, strict=True) if ok is not True]
        left = set(rest)
        return [i not in left for i in range(len(items))]

    async def _handoff_round(self) -> None:
        for owner in self.handoff.owners():
            if self._deliverable(owner):
                await self._deliver_to(owner)
            elif self._moved_due(owner):
                # Down, but a ring change may have moved some of its keys to other nodes:
                # those hints go to them now, not when it is back. On a task of its own: a
                # long scan holds up no delivery to an owner that is back.
                self._spawn(self._deliver_moved(owner))

    def _moved_due(self, owner: str) -> bool:
        """Whether the hints held for a down owner are to be scanned for keys a ring change
        moved away from it: at each new ring, and again after a scan (a writer whose ring
        was older may have left such a hint since; a new owner may have refused one,
        not on the new ring yet), until two scans of one ring found nothing left to send.
        Not on a node that is leaving: it passes every hint on instead (pass_on_hints)."""
        if self.ring is None or self._leaving or self.handoff.busy(owner):
            return False
        done = self._moved_sent.get(owner)
        return (
            done is None
            or done[0] != self.ring.version
            or (done[1] < 2 and time.monotonic() > done[2])
        )

    async def _deliver_moved(self, owner: str) -> None:
        version, left = self.ring.version, []
        done = self._moved_sent.get(owner)
        clean, tries = (done[1], done[3]) if done is not None and done[0] == version else (0, 0)
        later = time.monotonic() + min(MOVED_RECHECK * 2**tries, 20 * MOVED_RECHECK)
        self._moved_sent[owner] = (version, clean, later, tries + 1)  # not started twice
        if self.handoff.busy(owner):
            return  # another delivery of its hints is under way: this scan did not run
        sent = await self._deliver_to(owner, lambda o, items: self._send_moved(o, items, left))
        if sent and not left:
            self._moved_sent[owner] = (version, clean + 1, time.monotonic() + MOVED_RECHECK, 0)

    def _deliverable(self, owner: str) -> bool:
        """Whether hints held for owner can be sent now: it is seen up with a live handle
        here, or it left the ring (they go to its keys' current owners, _send_hints)."""
        in_ring = self.ring is None or owner in self.ring.nodes()
        return not in_ring or (self.is_up(owner) and owner in self.transport.peers)

    async def _deliver_to(self, owner: str, send=None) -> bool:
        """Deliver owner's hints (with `send`, HintedHandoff's, _send_hints by default);
        False when a batch could not be sent (the next round retries), True otherwise,
        also when another delivery of owner's hints was under way and this one did
        nothing (HintedHandoff.deliver)."""
        try:
            delivered = await self.handoff.deliver(owner, send)
        except (PeerUnavailable, StorageError):  # a disk that refused: the next round retries
            return False
        except Exception:  # this owner's fault, logged; the other owners still get theirs
            log.exception("delivering hints for %s failed", owner)
            return False
        if delivered:
            self.metrics.count("hints_delivered", delivered)
            log.info("delivered %d hints for %s", delivered, owner)
        return True

    async def _send_moved(self, owner: str, items: list, left: list) -> list[bool]:
        """HintedHandoff's send for an owner that is down: the hints of keys it no longer
        replicates go to their current owners (_send_hints); the others stay for it. A
        moved hint no owner took (out of reach, or not on the new ring yet) is added to
        `left`, and the scan goes on to the next batch. Stops once this node is leaving
        (pass_on_hints waits for it)."""
        if self._leaving:
            raise PeerUnavailable(owner, "this node is leaving: its hints are passed on")
        moved = [i for i, item in enumerate(items) if owner not in self._owners(item[0])]
        held = [False] * len(items)
        if moved:
            try:
                sent = await self._send_hints(owner, [items[i] for i in moved])
            except PeerUnavailable:
                sent = [False] * len(moved)
            for i, ok in zip(moved, sent, strict=True):
                held[i] = ok
                if not ok:
                    left.append(i)
        return held

    def _refresh_gauges(self) -> None:
        self.metrics.gauges.update(
            keys=self.store.count(DATA),
            hints_held=self.handoff.count(),
            lmdb_bytes=self.store.disk_bytes(),
            ranges_arriving=len(self.pending),
            handoff_keys_received=self.transfer["keys_received"],
            handoff_ranges_received=self.transfer["ranges_received"],
        )

    async def _export_metrics(self) -> None:
        self._refresh_gauges()
        self.metrics.export()

    async def stats(self) -> dict:
        """This node's figures, as exported to Ray's metrics."""
        self._refresh_gauges()
        return self.metrics.snapshot()

    async def hint_count(self) -> int:
        return self.handoff.count()

    def _mark_down(self, node: str) -> None:
        self._down_until[node] = time.monotonic() + self.options.retry_after

    def _route(
        self, bucket: bytes, key: bytes, n: int, needed: int
    ) -> tuple[bytes, list[str], list]:
        return quorum.route(
            self._ring(), bucket, key, n, needed, self.is_up, self.options.sloppy_quorum
        )

    def _locate(self, bucket: bytes, key: bytes) -> tuple[int, bytes]:
        return quorum.locate(self._ring(), bucket, key)

    def _ring(self) -> Ring:
        """Our ring, for coordinating a request. Without one yet (the store is starting,
        or the node is back on an empty disk and found by name before the driver gave it
        the ring) StorageError: nothing was done, so a client goes on to another node, for
        a write too."""
        if self.ring is None:
            raise StorageError(
                f"node {self.id} has no ring yet (the store is still starting): nothing was "
                "written or read here; another node coordinates the request"
            )
        return self.ring

    def _plan(
        self, partition: int, n: int, needed: int, is_up: Callable[[str], bool]
    ) -> tuple[list[str], list, bool]:
        """A batch's route for the keys of one partition: preference list, targets, and
        whether this node coordinates them directly (all N primaries up, itself among
        them); other requests take the one-key path."""
        preference, targets = quorum.plan(
            self.ring, partition, n, needed, is_up, self.options.sloppy_quorum
        )
        direct = quorum.all_in_person(targets, is_up) and any(t.node == self.id for t in targets)
        return preference, targets, direct

    async def _call_batched(self, peer: str, method: str, item: Any) -> Any:
        try:
            return await self.transport.call_batched(
                peer, method, item, timeout=self.options.replica_timeout
            )
        except PeerUnavailable:
            self._mark_down(peer)
            raise

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

    # -- coordinator: batches from clients ---------------------------------------------------

    @ray.method(enable_task_events=False)
    async def coordinate_batch(self, sender: str, requests: list) -> list:
        """Coordinate many client requests at once (the client's calls, coalesced).

        Each request is ["put", bucket, key, op, w, n] or ["get", bucket, key, r, n]; each
        answer is what coordinate_put / coordinate_get return, or ["error", exception] for
        a request this node refused, so one bad request never fails its neighbours.

        The common case, keys this node holds whose N primaries are all up, is done for the
        whole batch at once: one LMDB transaction and one call per replica for all of them
        (`_put_batch`, `_get_batch`). The rest (forwarding, stand-ins, ranges in handoff)
        take the one-key path.
        """
        self._check_sender(sender)
        answers: list = [None] * len(requests)
        puts: list[_Request] = []
        gets: list[_Request] = []
        single: list[int] = []
        plans: dict[tuple[int, int, int], tuple[list[str], list, bool]] = {}
        is_up = functools.cache(self.is_up)  # one look at each peer's health per batch
        for index, (kind, bucket, key, *rest) in enumerate(requests):
            try:
                needed = rest[1] if kind == "put" else rest[0]
                partition, dkey = self._locate(bucket, key)
                if kind == "put":
                    self._check_policy(bucket, rest[0])
            except DynarayError as exc:
                answers[index] = ["error", exc]
                continue
            plan = (partition, needed, rest[-1])
            if plan not in plans:
                plans[plan] = self._plan(partition, rest[-1], needed, is_up)
            preference, targets, direct = plans[plan]
            if not direct or (kind == "get" and self._arriving(dkey)) or self._leaving:
                single.append(index)
            elif kind == "put":
                puts.append(_Request(index, dkey, preference, targets, needed, rest[-1], rest[0]))
            else:
                gets.append(_Request(index, dkey, preference, targets, needed, rest[-1]))
        outcomes = await asyncio.gather(
            self._put_batch(sender, requests, puts, answers),
            self._get_batch(sender, requests, gets, answers),
            *(self._coordinate_into(answers, i, sender, requests[i]) for i in single),
            return_exceptions=True,
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
                raise outcome  # cancelled: the caller is gone
        # A part that failed as a whole (_coordinate_into answers its own request) answers
        # its own requests with its fault; the other parts' answers stand.
        for part, fault in zip((puts, gets), outcomes, strict=False):
            if isinstance(fault, Exception):
                log.error("coordinating a batch failed", exc_info=fault)
                for req in part:
                    if answers[req.index] is None:
                        answers[req.index] = ["error", self._fault(requests[req.index][0], fault)]
        return answers

    def _fault(self, kind: str, exc: Exception) -> Exception:
        """What a client is told of a request whose coordination failed unexpectedly: a
        read the error (the client reads elsewhere), a write that it may be stored."""
        if kind != "put" or isinstance(exc, StorageError):  # StorageError: nothing stored
            return exc
        return DynarayError(
            f"coordinator {self.id} failed during this write ({exc!r}); it may or may not "
            "be stored: read the key before writing it again"
        )

    async def _coordinate_into(self, answers: list, index: int, sender: str, request: list):
        kind, *args = request
        try:
            if kind == "put":
                answers[index] = await self.coordinate_put(sender, *args)
            else:
                answers[index] = await self.coordinate_get(sender, *args)
        except DynarayError as exc:
            answers[index] = ["error", exc]
        except Exception as exc:  # noqa: BLE001 - one key's fault fails that key alone
            log.exception("coordinating a %s failed", kind)
            answers[index] = ["error", self._fault(kind, exc)]

    async def _put_batch(
        self, sender: str, requests: list, batch: list[_Request], answers: list
    ) -> None:
        """Puts whose coordinator is one of their N primaries, all up: one transaction here,
        then one replica_put per peer carrying every key that peer replicates."""
        if not batch:
            return
        started = time.perf_counter()
        me = quorum.Target(self.id)
        stamps = [self.hlc.now() for _ in batch]

        def op(txn: Txn) -> list:
            out: list = []
            for req, stamp in zip(batch, stamps, strict=True):
                try:
                    out.append(self._update(txn, req.dkey, me, req.op, stamp))
                except DynarayError as exc:  # this key's write is refused, not its neighbours'
                    out.append(exc)
                except lmdb.Error:
                    raise  # the transaction's (a full map: the store grows it and retries)
                except Exception as exc:  # noqa: BLE001 - as the one-key path does
                    log.exception("coordinating a put failed")
                    out.append(self._fault("put", exc))
            return out

        try:
            written = await self.store.write(op)
        except StorageError:
            # Nothing was written: each key takes the one-key path, which hands it to
            # another primary when our disk refuses it again.
            await asyncio.gather(
                *(self._coordinate_into(answers, r.index, sender, requests[r.index]) for r in batch)
            )
            return
        live: list[_Request] = []
        per_peer: dict[str, list[_Request]] = {}
        orphans: list[tuple] = []
        for req, record in zip(batch, written, strict=True):
            if isinstance(record, DynarayError):
                answers[req.index] = ["error", record]
                continue
            req.context, req.encoded = record
            self.hlc.observe(req.context[1])  # a stamp records.update raised past our clock
            req.start(self.id, self.is_up, per_peer)
            live.append(req)
            for primary in _uncovered(req.preference, req.n, req.targets):
                orphans.append((req.dkey, req.encoded, primary))
        await self._keep_hints(orphans)
        sends = {self._spawn(self._replicate_batch(peer, reqs)) for peer, reqs in per_peer.items()}
        await _until_decided(sends, live)
        elapsed = time.perf_counter() - started
        for req in live:
            tally = req.tally
            if tally.reached:
                answers[req.index] = ["ok", req.context]
            else:
                answers[req.index] = ["quorum", len(tally.ok), req.needed, tally.asked]
            self.metrics.request("put", answers[req.index][0], elapsed)

    async def _replicate_batch(self, peer: str, batch: list[_Request]) -> None:
        """One replica_put carrying many keys; a key whose replica failed goes on to the
        next fallback on its own (sloppy quorum), as a one-key write does."""
        try:
            held = await self._call(peer, "replica_put", [[r.dkey, r.encoded, None] for r in batch])
        except Exception as exc:  # noqa: BLE001 - however it failed, its keys go on to fallbacks
            if not isinstance(exc, PeerUnavailable | DynarayError):
                log.warning("replica_put to %s failed: %r", peer, exc)
            held = [False] * len(batch)
        fallbacks, orphans = [], []
        for req, ok in zip(batch, held, strict=True):
            if ok is True:
                req.tally.answered(peer)
                continue
            replacement = req.tally.failure(quorum.Target(peer))
            if replacement is not None:
                fallbacks.append(self._replicate(req.tally, [replacement], req.dkey, req.encoded))
            if replacement is None or replacement.hint is None:
                orphans.append((req.dkey, req.encoded, peer))  # as in _replicate
        if fallbacks or orphans:
            await asyncio.gather(self._keep_hints(orphans), *fallbacks)

    async def _get_batch(
        self, sender: str, requests: list, batch: list[_Request], answers: list
    ) -> None:
        """Gets whose coordinator is one of their N primaries, all up: read here in one
        transaction, then one replica_get per peer asked (R-1 of them, or all N-1 for a
        `read_repair_chance` of batches) for every key it holds. A key that misses its
        quorum this way is asked again on the one-key path, which tries fallbacks."""
        if not batch:
            return
        started = time.perf_counter()
        me = quorum.Target(self.id)
        per_peer: dict[str, list[_Request]] = {}
        ask_all = self.transport.rng.random() < self.options.read_repair_chance
        for req, raw in zip(batch, self.store.get_many(DATA, [r.dkey for r in batch]), strict=True):
            req.replies = {self.id: (me, raw)}
            # Ourselves first, then the next replicas in preference order.
            req.targets = reads.narrowed(
                [me, *[t for t in req.targets if t.node != self.id]], req.needed, ask_all
            )
            req.start(self.id, self.is_up, per_peer)
        asks = {self._spawn(self._read_batch(peer, reqs)) for peer, reqs in per_peer.items()}
        await _until_decided(asks, batch)
        elapsed = time.perf_counter() - started
        again = []
        for req in batch:
            if not req.tally.reached:
                again.append(self._coordinate_into(answers, req.index, sender, requests[req.index]))
                continue
            try:
                merged = records.merge_encoded([raw for _, raw in req.replies.values()])
            except ValueError as exc:  # copies of two kinds, or one that does not decode:
                answers[req.index] = ["error", exc]  # that key fails, not its neighbours
                self.metrics.request("get", "error", elapsed)
                continue
            answers[req.index] = ["ok", self._answer(merged)]
            self.metrics.request("get", "ok", elapsed)
        if self.options.read_repair:
            self._spawn(self._repair_batch(batch, asks))
        await asyncio.gather(*again)

    async def _read_batch(self, peer: str, batch: list[_Request]) -> None:
        try:
            raws = await self._call(peer, "replica_get", [r.dkey for r in batch])
        except (PeerUnavailable, DynarayError):
            return
        target = quorum.Target(peer)
        for req, raw in zip(batch, raws, strict=True):
            if reads.unanswered(raw):
                continue
            req.replies[peer] = (target, raw)
            req.tally.answered(peer)

    async def _repair_batch(self, batch: list[_Request], asks: set[asyncio.Task]) -> None:
        """Read repair for a batch of gets: after the late replies (briefly), send each stale
        replica the merged version of every key it had stale, in one call per replica."""
        if asks:
            await asyncio.wait(asks, timeout=self.options.read_repair_wait)
        stale: dict[str, list] = {}
        for req in batch:
            if req.tally.reached:
                with contextlib.suppress(ValueError):  # unmergeable: failed its own read
                    reads.stale_replicas(req.dkey, req.replies, stale)
        await self._send_repairs(stale)

    async def _send_repairs(self, stale: dict[str, list]) -> None:
        """Send each stale replica its merged versions ({node: [(dkey, encoded, hint)]}), one
        call per replica; one that cannot be reached is left to hints and anti-entropy."""
        for node, items in stale.items():
            with contextlib.suppress(PeerUnavailable, StorageError):  # repair is a shortcut
                if node == self.id:
                    self.metrics.count("read_repairs", len(items))  # (others count theirs)
                    await self._apply(items)
                else:
                    await self._call(node, "replica_repair", items)

    # -- coordinator: put -------------------------------------------------------------------

    @ray.method(enable_task_events=False)
    async def coordinate_put(
        self,
        sender: str,
        bucket: bytes,
        key: bytes,
        op: list,
        w: int,
        n: int,
        forwarded: bool = False,
    ) -> list:
        """Coordinate one write: apply op here, replicate to N, answer after W acks.

        op is a records.update operation. Returns ["ok", [context wire, stamp]] or
        ["quorum", answered, needed, asked] (lists: Ray serializes them faster than tuples).
        """
        self._check_sender(sender)
        return await self._timed("put", self._put(bucket, key, op, w, n, forwarded))

    def _check_policy(self, bucket: bytes, op: list) -> None:
        """Refuse a write of another kind than its bucket's stored policy: a client can
        hold a bucket opened before it was created (a siblings bucket then, with nothing
        stored), and its writes would leave keys of two kinds in one bucket."""
        name = bucket.decode("utf-8", "replace")  # a name the catalog holds is UTF-8
        policy = self.catalog.policy(name)
        kind = op[0] if isinstance(op, list) and op else None
        if policy is not None and kind != policy:
            raise InvalidRequest(
                f"bucket {name!r} has policy {policy!r}, not {kind!r}; nothing was written. "
                f"It was created after this client opened it: open it again "
                f"(client.bucket({name!r})) and use the calls its policy allows"
            )

    async def _timed(self, op: str, work: Coroutine) -> list:
        """Run one coordinated request, recording its latency and outcome."""
        started = time.perf_counter()
        outcome = "error"
        try:
            result = await work
            outcome = result[0]
            return result
        finally:
            self.metrics.request(op, outcome, time.perf_counter() - started)

    async def _put(self, bucket: bytes, key: bytes, op: list, w: int, n: int, forwarded: bool):
        self._check_policy(bucket, op)
        if self._leaving:  # the client (or coordinator) goes on to another node
            raise StorageError(
                f"node {self.id} is leaving the store: nothing was written here; another "
                "node coordinates the write"
            )
        dkey, preference, targets = self._route(bucket, key, n, w)
        mine = next((t for t in targets if t.node == self.id), None)
        reached: list[str] = []  # primaries that may have applied it without answering

        async def hand_on(to: list[quorum.Target]) -> list | None:
            """The write, coordinated by another node of `to` (forwarded: it never forwards)."""
            retry = records.idempotent(op)
            args = (bucket, key, op, w, n, True)
            return await self._forward(to, "coordinate_put", *args, retry=retry, reached=reached)

        handed_on = mine is None and not forwarded  # the primaries are asked first
        routed = targets  # as routed: _stand_in below drops the one it replaces
        if mine is None:
            if handed_on and (answer := await hand_on(_primaries(targets))) is not None:
                return answer
            if self._leaving or not self.options.sloppy_quorum:
                # No stand-in here: a strict quorum keeps the key on its first N nodes
                # only, and a node that began leaving while it handed the write on (its
                # hints already passed on) would take a hint away with it.
                if reached:  # a primary that did not answer may have applied it
                    raise RequestTimeout(
                        records.write_name(op),
                        key_repr(key),
                        self.options.replica_timeout,
                        f"node {reached[0]} it was handed to did not answer",
                    )
                if self._leaving:
                    raise StorageError(
                        f"node {self.id} is leaving the store: nothing was written here; "
                        "another node coordinates the write"
                    )
                # (StorageError, not a missed quorum: that would say it may be stored, and
                # a node that forwarded it here would not go on to another owner.)
                raise StorageError(
                    f"node {self.id} holds no copy of this key and could reach none of its "
                    "owners; with sloppy_quorum off no other node stands in for them: "
                    "nothing was written"
                )
            mine, targets = _stand_in(self.id, preference, n, targets)
        stamp = self.hlc.now()
        try:
            context, encoded = await self.store.write(
                lambda txn: self._update(txn, dkey, mine, op, stamp)
            )
        except StorageError as refused:
            # Our disk refused it (full, failing): another node coordinates it instead, as
            # for a key we do not own: a primary (unless asked already), else a node
            # standing in for a primary that is down. Forwarded here, we tried no other
            # node: nothing was stored anywhere, which the forwarder needs to know.
            if forwarded:
                raise
            if (answer := await hand_on(self._takers(routed, handed_on))) is not None:
                return answer
            if reached:  # a node that did not answer may have applied it
                raise RequestTimeout(
                    records.write_name(op),
                    key_repr(key),
                    self.options.replica_timeout,
                    f"node {self.id}'s disk refused it ({refused.args[0]}), and node "
                    f"{reached[0]} it handed it to did not answer",
                ) from None
            raise StorageError(
                f"{refused.args[0]}; no other node took it either (each refused it, or could "
                "not be reached): nothing of this write was stored"
            ) from None
        self.hlc.observe(context[1])  # a stamp records.update raised past our clock
        others = [t for t in targets if t.node != self.id]
        await self._keep_hints([(dkey, encoded, p) for p in _uncovered(preference, n, targets)])
        tally = quorum.Tally(preference, [mine, *others], w, self.is_up, n)
        tally.answered(self.id)
        await self._replicate(tally, others, dkey, encoded)
        if tally.reached:
            return ["ok", context]
        return ["quorum", len(tally.ok), w, tally.asked]

    def _update(
        self, txn: Txn, dkey: bytes, me: quorum.Target, op: list, stamp: int
    ) -> tuple[list, bytes]:
        """Inside the writer's transaction: read, apply the operation, write. Returns what
        the write's answer carries ([records.written_context, records.context_stamp]) and
        the new record's encoding (what the replicas are sent)."""
        db, rkey = (DATA, dkey) if me.hint is None else (HINTS, hint_key(me.hint, dkey))
        raw = txn.get(db, rkey)
        stored = records.decode(raw) if raw is not None else None
        actor = self.actor
        if me.hint is None and op and op[0] != "lww":
            # A key epoch this copy holds all of, else a new one (dynaray/actors.py).
            floor = max(self.floors.get(codec.key_partition(dkey), 0), self.epochs_since)
            actor = actors.continuing(self.actor, records.actors(stored), floor)
            if actor is None:
                actor = actors.key_epoch(self.actor, txn.raw.id())
        if me.hint is not None:
            self.metrics.count("sloppy_writes")
            # A stand-in's copy is not the key's full history (it may hold another copy for
            # another primary, or have handed an earlier one over), so its own id could issue
            # a dot twice: each stand-in write gets an actor id of its own instead. The HLC
            # starts again with each life, so the life's number keeps a stamp seen in an
            # earlier life (a wall clock set back) from naming the same actor twice.
            actor = f"{self.actor}~{self.life:x}.{stamp:x}"
        record = records.update(stored, op, actor, stamp, self.options.sibling_limit)
        if record.kind == "siblings":
            self.metrics.siblings(_note_siblings(dkey, stored, record))
        encoded = records.encode(record)
        records.check_size(record.kind, encoded, len(raw) if raw is not None else 0)
        context = [records.written_context(record, op, actor), records.context_stamp(record)]
        txn.put(db, rkey, encoded)  # last: a key that failed above left nothing in the batch
        return context, encoded

    def _takers(self, routed: list[quorum.Target], asked: bool) -> list[quorum.Target]:
        """Who may coordinate a write our disk refused, best first: the primaries that look
        up (unless `asked` already), the nodes standing in for primaries that are down,
        then primaries that look down (select() adds them when too few look up)."""
        primaries = [] if asked else _primaries(routed)
        stand_ins = [t for t in routed if t.hint is not None and t.node != self.id]
        up = [t for t in primaries if self.is_up(t.node)]
        return up + stand_ins + [t for t in primaries if t not in up]

    async def _keep_hints(self, items: list[tuple]) -> None:
        """Hold (data key, encoded record, primary) copies as hints here: for a primary that is
        down when no stand-in is left to take its copy, so it still gets the write when it
        returns, without waiting for anti-entropy. Beyond W: nothing waits on it but this.
        A strict quorum (sloppy_quorum off) keeps no hints, nor does a node that passed its
        hints on (pass_on_hints: it stops for good)."""
        if items and self.options.sloppy_quorum and not self._leaving:
            # Our disk may refuse them (logged by the store): anti-entropy covers them then.
            with contextlib.suppress(StorageError):
                await self._apply(items)

    async def _forward(
        self,
        targets: list[quorum.Target],
        method: str,
        *args: Any,
        retry: bool = True,
        reached: list[str] | None = None,
    ) -> Any:
        """The "any node" path: hand the request to the first of `targets` (not this node)
        that will coordinate it.

        A node that did not answer may still have done the work, so the next one is asked
        only if doing it twice is harmless (`retry`); else the outcome is unknown. Such
        nodes are added to `reached`.
        """
        for target in targets:
            if target.node != self.id:
                try:
                    self.metrics.count("forwards")
                    return await self._call(target.node, method, *args)
                except StorageError:
                    continue  # its disk refused the write: nothing was stored there
                except PeerUnavailable as exc:
                    if not exc.may_have_arrived:
                        continue
                    if not retry:
                        raise RequestTimeout(
                            records.write_name(args[2]),
                            key_repr(args[1]),
                            self.options.replica_timeout,
                            f"the coordinator {target.node} it was forwarded to did not answer "
                            f"({exc.reason})",
                        ) from None
                    if reached is not None:
                        reached.append(target.node)
        return None

    async def _replicate(
        self, tally: quorum.Tally, targets: list[quorum.Target], dkey: bytes, encoded: bytes
    ) -> None:
        """Send the new version to the other replicas; return once W acked or it is hopeless."""
        done = asyncio.Event()

        async def send(target: quorum.Target) -> None:
            try:
                if await self._call_batched(
                    target.node, "replica_put", [dkey, encoded, target.hint]
                ):
                    tally.answered(target.node)
                else:  # not its key by its ring, or held as another kind: as if it failed
                    raise PeerUnavailable(target.node, "did not keep it")
            except Exception as exc:  # noqa: BLE001 - as in _replicate_batch
                if not isinstance(exc, PeerUnavailable | DynarayError):
                    log.warning("replica_put to %s failed: %r", target.node, exc)
                replacement = tally.failure(target)
                if replacement is not None:
                    self._spawn(send(replacement))
                if replacement is None or replacement.hint is None:
                    # Nobody stands in for this primary (none left, or the replacement is
                    # a primary taking its own copy): its copy waits here as a hint.
                    await self._keep_hints([(dkey, encoded, target.hint or target.node)])
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
    ) -> list:
        """Coordinate one read: ask N replicas, answer after R with every sibling.

        Returns ["ok", record encoded as stored | None] or ["quorum", answered, needed,
        asked, failed].
        """
        self._check_sender(sender)
        return await self._timed("get", self._get(bucket, key, r, n, forwarded))

    async def _get(self, bucket: bytes, key: bytes, r: int, n: int, forwarded: bool) -> list:
        dkey, preference, targets = self._route(bucket, key, n, r)
        if not any(t.node == self.id for t in targets) and not forwarded:
            args = (bucket, key, r, n, True)
            answer = await self._forward(_primaries(targets), "coordinate_get", *args)
            if answer is not None:
                return answer
        request = reads.Read(dkey, quorum.Tally(preference, targets, r, self.is_up, n))

        async def fetch(target: quorum.Target) -> bytes | None:
            if target.node != self.id:
                return await self._call_batched(target.node, "replica_get", [dkey, target.hint])
            return self._replica_answer(dkey, target.hint)

        if not await reads.read(
            request, targets, fetch, self._spawn, self.options.replica_timeout * 3
        ):
            tally = request.tally
            return ["quorum", len(tally.ok), r, tally.asked, len(tally.failed)]
        if self.options.read_repair:
            self._spawn(self._read_repair(request))
        return ["ok", self._answer(request.merged)]

    def _answer(self, merged: bytes | None) -> bytes | None:
        """A read's answer, the merge of its replies: counted, then passed on."""
        if merged is not None:
            self.metrics.siblings(records.siblings_in(merged))
        return merged

    def _read_encoded(self, dkey: bytes, hint: str | None) -> bytes | None:
        """_read_local, encoded as stored; our own copy is passed on without decoding."""
        if hint is None:
            return self.store.get(DATA, dkey)
        record = self._read_local(dkey, hint)
        return records.encode(record) if record is not None else None

    def _read_local(self, dkey: bytes, hint: str | None) -> records.Record | None:
        """Our own copy; as a fallback for `hint`, merged with every hint we hold for the
        key, and with any copy we hold from an earlier ownership of the range.

        Every hint, not only `hint`'s: coordinators pair down primaries with stand-ins in
        the order their calls fail, so a stand-in may hold the write under another
        primary than the reader names, and two stand-ins could otherwise both answer
        "absent" for a write they hold between them.
        """
        own = self.store.get(DATA, dkey)
        record = records.decode(own) if own is not None else None
        if hint is not None:
            owners = {hint}
            if self.ring is not None:
                owners.update(self._owners(dkey))
            for owner in sorted(owners):
                raw = self.store.get(HINTS, hint_key(owner, dkey))
                if raw is None:
                    continue
                try:
                    record = records.merge(record, records.decode(raw))
                except records.KindMismatch as exc:
                    # One key's hint of another kind fails no read batched with it; the
                    # copy of the other kind is the reader's to meet, key by key.
                    self._note_unmergeable(dkey, exc)
        return record

    async def _read_repair(self, request: reads.Read) -> None:
        """After answering, wait briefly for the other replicas and fix the stale ones."""
        await self._send_repairs(await reads.stale_after(request, self.options.read_repair_wait))

    # -- replica ---------------------------------------------------------------------------

    @ray.method(enable_task_events=False)
    async def replica_put(self, sender: str, items: list) -> list[bool]:
        """Merge incoming records and acknowledge each, after the commit. False: a copy
        this node does not keep, as our ring no longer has us replicate its key (the
        coordinator's ring is older: a copy stored here would be dropped with the range,
        or never read), or one that cannot be merged with ours, which is kept as it was.
        The coordinator then writes to a stand-in, as for a replica that is down."""
        self._check_sender(sender)
        kept = [self._keeps(item) for item in items]
        if all(kept):
            return await self._apply(items)
        self.metrics.count("writes_not_mine", kept.count(False))
        held = iter(await self._apply([i for i, keep in zip(items, kept, strict=True) if keep]))
        return [keep and next(held) for keep in kept]

    async def _apply(self, items: list) -> list[bool]:
        """Merge (data key, encoded record, hint owner) items into our data or hints; for
        each, whether it is held now. A record of another kind than ours (a bucket created
        with two policies on the two sides of a partition) cannot be merged: it is left
        out, and logged, and the rest of the batch goes in; so is a copy, ours or the
        incoming one, that does not decode."""
        if not items:
            return []
        stamps = [_stamp_or_none(raw) for _, raw, _ in items]  # None: not a record
        ahead = self.hlc.observe(max(stamp or 0 for stamp in stamps))
        if ahead > CLOCK_AHEAD_WARN * 1000:
            self._clock_ahead(ahead / 1000)

        hinted = sum(1 for _, _, hint in items if hint is not None)
        if hinted:
            self.metrics.count("hinted_writes", hinted)

        def op(txn: Txn) -> list[bool]:
            held = []
            for (dkey, incoming, hint), stamp in zip(items, stamps, strict=True):
                if stamp is None:  # kept nowhere: a copy that does not decode fails alone
                    self._note_unmergeable(dkey, ValueError("a copy sent here does not decode"))
                    held.append(False)
                    continue
                db, rkey = (DATA, dkey) if hint is None else (HINTS, hint_key(hint, dkey))
                if len(rkey) > codec.MAX_KEY_SIZE:
                    # A key stored before 0.2.0 left room for a hint's node id: it cannot be
                    # kept as a hint (its owners get it by anti-entropy).
                    log.warning("key %s is too long to keep as a hint", _key_text(dkey))
                    held.append(False)
                    continue
                try:
                    new = records.merge_into(txn.get(db, rkey), incoming)
                except ValueError as exc:
                    # Two kinds (KindMismatch), or a copy, ours or the incoming one, that
                    # does not decode: this key fails alone, ours is kept (it may hold our
                    # own latest dots: replaced, they could be issued again).
                    self._note_unmergeable(dkey, exc)
                    held.append(False)
                    continue
                if new is not None:  # an unchanged record costs no write (and no Merkle update)
                    txn.put(db, rkey, new)
                held.append(True)
            return held

        return await self.store.write(op)

    def _note_unmergeable(self, dkey: bytes, exc: Exception) -> None:
        """Count a copy of dkey that cannot be merged with ours (a key written as two kinds
        across a partition, or a copy that does not decode); ours is kept. Logged once per
        key (copies of it come every round), for a bounded number of keys: past that, the
        count alone goes on."""
        self.metrics.count("unmergeable")
        logged = self._unmergeable
        if dkey not in logged and len(logged) < _UNMERGEABLE_LOGGED:
            logged.add(dkey)
            log.warning("key %s: %s; ours is kept", _key_text(dkey), exc)

    @ray.method(enable_task_events=False)
    async def replica_repair(self, sender: str, items: list) -> int:
        """Read repair: merge (data key, encoded record, hint owner) items, except copies of
        ranges this node no longer replicates. The repairer's ring may be older than ours
        (a client's is refreshed every few seconds), and a copy stored outside its owners
        would stay there; repair is only ever a shortcut, so dropping it is safe."""
        self._check_sender(sender)
        for _, raw, _ in items:
            records.decode(raw)  # a repair may come from a client: check it all, not the envelope
        kept = [item for item in items if self._keeps(item)]
        # Counted where repaired: a client coordinating its reads keeps no figures.
        self.metrics.count("read_repairs", len(kept))
        return sum(await self._apply(kept))

    def _clock_ahead(self, seconds: float) -> None:
        """A record arrived stamped well past our wall clock: some node's clock runs ahead.
        Counted every time, logged once per CLOCK_AHEAD_WARN seconds."""
        self.metrics.count("clock_ahead")
        now = time.monotonic()
        if now - self._clock_warned >= CLOCK_AHEAD_WARN:
            self._clock_warned = now
            log.warning(
                "node %s: a record arrived stamped %.0f s past this machine's clock: a clock "
                "in the store runs ahead (check NTP on every machine); its lww writes win "
                "over later ones until real time catches up",
                self.id,
                seconds,
            )

    def _keeps(self, item: tuple) -> bool:
        """Whether a (data key, encoded record, hint owner) copy is ours to keep: a hint
        (unless this node is leaving), or a key our ring has us replicate."""
        dkey, _, hint = item
        if hint is not None:
            return not self._leaving
        return self.ring is not None and self._replicates(dkey)

    def _replicates(self, dkey: bytes) -> bool:
        """Whether our ring names us one of the key's N owners."""
        return codec.key_partition(dkey) in self._replicated()

    def _replicated(self) -> frozenset[int]:
        """The partitions our ring has us replicate: worked out once per ring and N, as
        every key of every replica read is checked against it."""
        ring, n = self.ring, self.n
        if self._replicated_known is not None:
            known_ring, known_n, partitions = self._replicated_known
            if known_ring is ring and known_n == n:
                return partitions
        partitions = frozenset(ring.replicated_partitions(self.id, n))
        self._replicated_known = (ring, n, partitions)
        return partitions

    def _owners(self, dkey: bytes) -> tuple[str, ...]:
        """The key's N owners by our ring."""
        return self.ring.preference_list(codec.key_partition(dkey))[: self.n]

    @ray.method(enable_task_events=False)
    async def replica_get(self, sender: str, items: list) -> list:
        """The stored record (encoded) of each (data key, hint owner) asked for, or None.
        An item that is a bare data key asks for our own copy (no hint)."""
        self._check_sender(sender)
        # Reads a client coordinates itself never show as requests here: count them.
        self.metrics.count("replica_reads", len(items))
        answers: list = [None] * len(items)
        own: list[bytes] = []  # our own copies, read in one transaction
        at: list[int] = []
        for index, item in enumerate(items):
            dkey, hint = (item, None) if type(item) is bytes else item
            refusal = self._refusal(dkey, hint)
            if refusal is not None:
                answers[index] = refusal
            elif hint is None:
                own.append(dkey)
                at.append(index)
            else:
                answers[index] = self._read_encoded(dkey, hint)
        raws = self.store.get_many(DATA, own)
        for index, raw in zip(at, raws, strict=True):
            answers[index] = raw
        return answers

    def _replica_answer(self, dkey: bytes, hint: str | None) -> bytes | str | None:
        """This replica's answer to a read of dkey (for `hint`'s primary, as a stand-in)."""
        return self._refusal(dkey, hint) or self._read_encoded(dkey, hint)

    def _refusal(self, dkey: bytes, hint: str | None) -> str | None:
        """Why this replica does not answer a read of dkey for itself, or None if it does."""
        if hint is not None:
            return None
        if self.ring is None or self._arriving(dkey):
            # Not ours to answer yet (a range still arriving, or no ring yet: a node back
            # on an empty disk before the driver gives it the ring): the reader asks a spare.
            return reads.ARRIVING
        if not self._replicates(dkey):
            # The reader's ring is older than ours: a copy we still hold may miss writes
            # that went to the range's new owner.
            return reads.NOT_MINE
        return None

    def _arriving(self, dkey: bytes) -> bool:
        return bool(self.pending) and codec.key_partition(dkey) in self.pending

    # -- inspection -------------------------------------------------------------------------

    async def held(self, bucket: bytes, key: bytes) -> list | None:
        """This node's own copy of a key (not hints) as a record wire, or None if absent."""
        if self.ring is None:
            return None
        record = self._read_local(quorum.locate(self.ring, bucket, key)[1], None)
        return None if record is None else records.to_wire(record)

    async def footprint(self, sample: int = 10_000) -> dict:
        """What keys cost here, from the first `sample` records of the data database: mean
        bytes per key of the key, the stored record, the values in it, and the rest of the
        record (kind, version vector and dots, stamp: the version metadata)."""
        sampled = key_bytes = record_bytes = value_bytes = 0
        for dkey, raw in self.store.iterate(DATA):
            record = records.decode(raw)
            if record.kind != "siblings":
                continue
            sampled += 1
            key_bytes += len(dkey)
            record_bytes += len(raw)
            value_bytes += sum(len(v) for v in versions.values(record.state) if v)
            if sampled >= sample:
                break
        per = max(sampled, 1)
        return {
            "keys": self.store.count(DATA),
            "sampled": sampled,
            "key_bytes": key_bytes / per,
            "record_bytes": record_bytes / per,
            "value_bytes": value_bytes / per,
            "metadata_bytes": (record_bytes - value_bytes) / per,
            "disk_bytes": self.store.disk_bytes(),
            "rss_bytes": _rss_bytes(),
        }

    async def info(self) -> dict:
        return {
            "node": self.id,
            "actor": self.actor,
            "pid": os.getpid(),
            "ray_node": ray.get_runtime_context().get_node_id(),
            "path": self.path,
            "keys": self.store.count(DATA),
            "hints": self.handoff.count(),
            "ranges": len(self._replicated()) if self.ring else 0,
            "ranges_arriving": len(self.pending),
            "last_exchange": self.last_exchange,
            "hints_delivered": self.handoff.delivered,
            "incarnation": self.membership.incarnation,
            "disk_bytes": self.store.disk_bytes(),
            # Why its last write did not commit (a full or failing disk), while that lasts.
            "disk_error": self.store.failing,
            "rss_bytes": _rss_bytes(),
            "ring_version": self.ring.version if self.ring else None,
            "stats": self.metrics.snapshot(),
            "sent": dict(self.transport.sent),
            "failed": dict(self.transport.failed),
            # Which actor of each peer this node calls (after restarts, a stale one is a bug).
            "peer_actors": {p: _actor_hex(h) for p, h in self.transport.peers.items()},
            # The injected faults this node applies (Cluster.partition, set_link; tests).
            "faults": self.transport.faults.to_wire(),
        }


def _actor_hex(handle: Any) -> str | None:
    actor = actor_of(handle)
    return actor.hex() if actor is not handle else None  # a fake handle has no actor id


def _rss_bytes() -> int | None:
    """This process's resident memory (Linux), or None where /proc is not there."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


@dataclass(slots=True)
class _Request:
    """One key's request inside a coordinated batch, and what became of it so far."""

    index: int  # its place in the batch
    dkey: bytes
    preference: list[str]
    targets: list[quorum.Target]
    needed: int  # W for a put, R for a get
    n: int
    op: list | None = None  # a put's records.update operation
    tally: quorum.Tally | None = None
    context: list | None = None  # a put's answer: [records.written_context, its stamp]
    encoded: bytes | None = None  # a put's new record, as stored and sent
    replies: dict | None = None  # a get's {node: (target, encoded record)}

    def start(self, me: str, is_up: Callable[[str], bool], per_peer: dict[str, list]) -> None:
        """Count our own answer and file the request under each other replica to ask."""
        self.tally = quorum.Tally(self.preference, self.targets, self.needed, is_up, self.n)
        self.tally.answered(me)
        for target in self.targets:
            if target.node != me:
                per_peer.setdefault(target.node, []).append(self)


async def _until_decided(calls: set[asyncio.Task], batch: list[_Request]) -> None:
    """Wait until every request's quorum is reached, or no call is left that could reach
    it (each call carries its own deadline)."""
    pending = calls
    while pending and not all(req.tally.reached for req in batch):
        _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)


def _uncovered(preference: list[str], n: int, targets: list[quorum.Target]) -> list[str]:
    """The key's primaries that no target holds a copy for, in person or through a hint."""
    covered = {t.hint or t.node for t in targets}
    return [p for p in preference[:n] if p not in covered]


def _stamp_or_none(raw: bytes) -> int | None:
    """A record's stamp, None for one whose envelope does not decode (_apply)."""
    try:
        return records.stamp_of(raw)
    except ValueError:
        return None


def _note_siblings(dkey: bytes, stored: records.Record | None, record: records.Record) -> int:
    """The most versions the key held, before or after a write (what a read of it
    returned, or would); logged when its siblings pile up: past SIBLING_WARNING, and again
    each time their number doubles (not at every write: a key written in a loop would flood
    the log)."""

    def level(count: int) -> int:
        return 0 if count <= SIBLING_WARNING else (count // SIBLING_WARNING).bit_length()

    count = versions.size(record.state)
    before = versions.size(stored.state) if stored is not None and stored.kind == "siblings" else 0
    if level(count) > level(before):
        log.warning(
            "key %s has %d siblings: the application is not resolving its conflicts (read "
            "the key, merge its values, write the merge with the context)",
            _key_text(dkey),
            count,
        )
    return max(count, before)


def _old_tombstone(raw: bytes, cutoff: float) -> bool:
    """Whether an encoded record is a tombstone stamped before cutoff (milliseconds). A
    record that does not decode is none: logged, and left for a person to look at, so the
    range's other tombstones are still reaped."""
    try:
        record = records.decode(raw)
    except ValueError:
        log.error("a stored record does not decode; it is left as it is: %r", raw[:64])
        return False
    return records.is_tombstone(record) and hlc.millis(record.stamp) < cutoff


def _sources(rings: list[Ring], partition: int, n: int, me: str) -> list[str]:
    """The nodes to copy a range from: its replicas in each of `rings`, in order, but us."""
    found = (node for ring in rings for node in ring.preference_list(partition)[:n])
    return [node for node in dict.fromkeys(found) if node != me]


def _range_key(kind: bytes, partition: int) -> bytes:
    """The META key of a value kept per range (_FLOOR, _TAKING)."""
    return kind + codec.partition_prefix(partition)


def _key_text(dkey: bytes) -> str:
    """A data key as a log line names it: the key and its bucket, readable."""
    _, _, bucket, key = codec.split_data_key(dkey)
    return f"{key_repr(key)} in bucket {key_repr(bucket)}"


def _primaries(targets: list[quorum.Target]) -> list[quorum.Target]:
    """The targets asked for their own copy (no hint): the key's primaries."""
    return [t for t in targets if t.hint is None]


def _stand_in(
    me: str, preference: list[str], n: int, targets: list[quorum.Target]
) -> tuple[quorum.Target, list[quorum.Target]]:
    """Coordinate as a fallback: stand in for a primary no other target covers."""
    covered = {t.hint or t.node for t in targets}
    primary = next((p for p in preference[:n] if p not in covered), preference[n - 1])
    mine = quorum.Target(me, hint=primary)
    rest = [t for t in targets if (t.hint or t.node) != primary][: n - 1]
    return mine, [mine, *rest]
