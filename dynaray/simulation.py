"""A deterministic simulation of the replication protocol: one process, no Ray, no I/O.

Simulated nodes keep a key's record in `data` (the keys they replicate) and in `hints` (records
held for a primary they stood in for, by (owner, key)); both, and the dot floors, survive a
crash like the LMDB store, while tasks, failure marks and the HLC do not. Everything the nodes
decide comes from the pure core the real nodes use: the ring's preference lists,
`quorum.select` and `quorum.Tally` (sloppy quorum with hinted stand-ins), `records.update` on
the coordinator's own stored copy (its data, or as a stand-in its hint copy), `records.merge`
on every replica-side path (replication, read repair, hinted handoff, anti-entropy), and HLC
stamps from the simulated clock. The coordinator paths follow node.py step by step: forward
to a primary when not a target, else stand in; apply, replicate, count W acks, ask a spare
for each failure; read R replies, merge, read-repair the stale ones.

The network is an event queue driven by one seeded `random.Random`: a message takes 1 to
`max_delay` steps, may be lost on the way out or on the way back (the sender only sees its
deadline pass), is refused across a partition and dies with a crashed node. Gossip is
modelled as a failure detector that calls a peer down after `detect_after` steps of
unreachability; a failed call marks the peer down for `retry_after` steps. A `Schedule` is a
seed plus faults at given steps (partitions, heals, crashes, restarts, drop rates, and at most
one node whose disk is lost or goes back to its last backup, which then writes under a new
actor id as storage.Store gives it), so a run is
a pure function of (workload, schedule, config): it can be replayed, printed and shrunk
(`schedules()` is the hypothesis strategy; `random_schedule(seed)` the explorer's).

Clients follow `dynaray.routing`: candidates are the key's preference list with recently
failed nodes last, three tried in turn. A write is `ok` after W acks, `info` when a coordinator
ran but reached no quorum (or went silent, or died mid-request), `fail` when no coordinator was
reached. A non-idempotent write (a counter increment) is never retried on another coordinator
once one may have received it. (A node that is down when a request is sent refuses it here, so
nothing was sent; Ray reports that as the same RayActorError as a death mid-request, so the real
client is more cautious there than this one.)

The workloads are `dynaray.verify`'s (`set`: read, union of the siblings plus a unique
element, write back with the read's context; `counter`: increments of 1, some reads), recorded
into a `dynaray.history.History` and judged by its checkers after the schedule: heal, restart,
let messages drain, deliver every hint, run anti-entropy (pairwise merge of the replicas of
each key), require the replicas to be equal, read every key back.

`Config()` models the code as it is. The simulation found three problems in earlier rules of
the code, all fixed since; each has a switch, and `BEFORE_FIXES` brings the old rules back
(the tests show each is caught):

- `stand_in_actor`: a stand-in coordinator applies a write as itself on its hint copy for one
  primary. A node holding hint copies for two primaries of a key (or one whose hint was
  delivered and deleted) hands out the same dot twice (an acknowledged sibling is lost) or
  restarts its counter entry at zero (acknowledged increments are lost). Fixed: "fresh", a
  stand-in gets an actor id of its own per hint copy (node.py: one per write).
- `forward_retry`: node._forward passes a write to the next primary after any failure,
  including a deadline (a forwarded coordinator may take 3 replica timeouts, the forward waits
  one), so an increment is applied twice. Fixed: a non-idempotent write is not forwarded again.
- `unavailable_after_died`: after a coordinator died mid-request, an idempotent retry that
  reaches nobody raises Unavailable, which verify records as `fail`, yet the write may be there.
  Fixed: such a write raises RequestTimeout (indeterminate).

`explore(seeds)` runs many random schedules (a few hundred a second); `broken=` swaps in a
known-wrong protocol ("empty_copy": the coordinator applies an update to an empty copy, reusing
dots; "lww_merge": replicas keep the newer sibling record instead of syncing; "same_actor": a
node whose disk went back in time keeps its actor id, numbering dots again) to show that the
checkers catch it.
"""

from __future__ import annotations

import heapq
import random
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from dynaray import crdt, quorum, records, versions
from dynaray.history import CounterResult, History, SetResult, check_counter, check_set
from dynaray.hlc import HybridClock
from dynaray.ring import Ring

WORKLOADS = ("set", "counter")
# The rules the simulation found wrong, as they were before their fixes (Config() models the
# code as it is now): see Config.stand_in_actor, forward_retry and unavailable_after_died.
BEFORE_FIXES: dict[str, Any] = {
    "stand_in_actor": "node",
    "forward_retry": True,
    "unavailable_after_died": True,
}
FIXES: dict[str, Any] = {
    "stand_in_actor": "fresh",
    "forward_retry": False,
    "unavailable_after_died": False,
}
_OTHER_FAULTS = ("partition", "heal", "crash", "restart", "drop")
# Faults that take a node's disk back in time; a schedule holds at most one (two nodes losing
# their copies before any repair may lose a write for good, as on real machines).
DISK_FAULTS = ("wipe", "rollback")
FAULT_KINDS = _OTHER_FAULTS + DISK_FAULTS
BROKEN = ("empty_copy", "lww_merge", "same_actor")

# Reasons a call fails. Only the first two say the request never left, so any request may
# go to the next coordinator; "no answer" (a deadline) and "died" (mid-request) may hide
# work that was done.
UNREACHABLE = "unreachable"
PARTITIONED = "partitioned"
NO_ANSWER = "no answer"
DIED = "died"
_NOTHING_SENT = (UNREACHABLE, PARTITIONED)


@dataclass(frozen=True)
class Config:
    nodes: int = 5
    n: int = 3
    r: int = 2
    w: int = 2
    keys: int = 2
    clients: int = 3
    ops_per_client: int = 5
    think: int = 3  # steps a client waits between operations, at most
    horizon: int = 60  # faults of random schedules fall in [0, horizon)
    max_delay: int = 3  # one message takes 1..max_delay steps
    replica_timeout: int = 8  # a node's deadline for a call to a peer
    request_timeout: int = 40  # a client's deadline for a coordinator's answer
    retry_after: int = 8  # a failed peer is skipped this long
    detect_after: int = 10  # gossip calls an unreachable peer down after this long
    handoff_interval: int = 6
    backup_interval: int = 12  # every node's disk is copied this often (what a rollback restores)
    read_repair_wait: int = 4
    sloppy_quorum: bool = True
    read_repair: bool = True
    sibling_limit: int = 100
    # How a stand-in (fallback) coordinator applies a write. "node", as node.py: as itself,
    # on its hint copy for that primary (plus, for siblings, its dot floor). "fresh", a
    # candidate fix: as a new actor id per hint copy, so what it hands out never repeats.
    stand_in_actor: str = "fresh"
    # As node._forward: a node outside the targets forwards to the next primary after any
    # failure. False, a candidate fix: a non-idempotent write goes no further once a forward
    # may have reached a coordinator (the answer is indeterminate).
    forward_retry: bool = False
    # As Routing._send and verify: when the last candidates cannot be reached the client
    # raises Unavailable (a write recorded as fail) even if an earlier one died mid-request
    # and may have applied it. False, a candidate fix: such a write is info; fail means that
    # nothing was sent.
    unavailable_after_died: bool = False
    broken: str | None = None  # None, or one of BROKEN: a deliberately wrong protocol

    def __post_init__(self) -> None:
        quorum.check_quorum(self.n, self.r, self.w, self.nodes)
        if self.stand_in_actor not in ("node", "fresh"):
            raise ValueError(
                f"stand_in_actor must be 'node' or 'fresh', not {self.stand_in_actor!r}"
            )
        if self.broken is not None and self.broken not in BROKEN:
            raise ValueError(f"broken must be None or one of {BROKEN}, got {self.broken!r}")

    def node_ids(self) -> list[str]:
        return [f"n{i}" for i in range(1, self.nodes + 1)]


@dataclass(frozen=True)
class Fault:
    """One nemesis event at step `at`. partition: `nodes` are cut off from the others (one
    partition at a time, a new one replaces the old); heal: no partition; crash / restart:
    `nodes` stop (keeping their disk) / start again; drop: every message is lost with
    probability `rate` from now on; wipe / rollback: `nodes` stop, and their disk is lost /
    goes back to its last backup (they start again on a restart)."""

    at: int
    kind: str
    nodes: tuple[str, ...] = ()
    rate: float = 0.0

    def __str__(self) -> str:
        what = f"{self.rate:g}" if self.kind == "drop" else ",".join(self.nodes)
        return f"@{self.at} {self.kind} {what}".rstrip()


@dataclass(frozen=True)
class Schedule:
    seed: int
    faults: tuple[Fault, ...] = ()

    def __str__(self) -> str:
        return f"seed {self.seed}: " + ("; ".join(map(str, self.faults)) or "no faults")


# -- the event loop and its tasks -------------------------------------------------------------


class Unavailable(Exception):
    """A call that did not get an answer, and why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Future:
    __slots__ = ("sim", "done", "value", "error", "_waiters")

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.done = False
        self.value: Any = None
        self.error: Exception | None = None
        self._waiters: list[Callable[[Future], None]] = []

    def resolve(self, value: Any = None, error: Exception | None = None) -> None:
        if self.done:
            return  # a late reply after the deadline, or a second failure: ignored
        self.done = True
        self.value = value
        self.error = error
        for waiter in self._waiters:
            self.sim.soon(waiter, self)
        self._waiters = []

    def wait(self, waiter: Callable[[Future], None]) -> None:
        if self.done:
            self.sim.soon(waiter, self)
        else:
            self._waiters.append(waiter)


Coroutine = Generator[Future, Any, Any]


class Task:
    """A generator that yields Futures. A task owned by a node dies with it (a crash loses
    everything in memory), so it is never resumed after the crash."""

    __slots__ = ("gen", "owner", "life", "result")

    def __init__(self, sim: Simulation, gen: Coroutine, owner: SimNode | None) -> None:
        self.gen = gen
        self.owner = owner
        self.life = owner.life if owner is not None else 0
        self.result = Future(sim)
        sim.soon(self.step, None)

    def step(self, fut: Future | None) -> None:
        owner = self.owner
        if owner is not None and (not owner.up or owner.life != self.life):
            self.gen.close()
            return
        try:
            if fut is None or fut.error is None:
                nxt = self.gen.send(None if fut is None else fut.value)
            else:
                nxt = self.gen.throw(fut.error)
        except StopIteration as stop:
            self.result.resolve(stop.value)
            return
        nxt.wait(self.step)


# -- nodes ------------------------------------------------------------------------------------


def _stand_in(
    me: str, preference: list[str], n: int, targets: list[quorum.Target]
) -> tuple[quorum.Target, list[quorum.Target]]:
    """Coordinate as a fallback, standing in for a primary no other target covers (as the
    real node's _stand_in)."""
    covered = {t.hint or t.node for t in targets}
    primary = next((p for p in preference[:n] if p not in covered), preference[n - 1])
    mine = quorum.Target(me, hint=primary)
    rest = [t for t in targets if (t.hint or t.node) != primary][: n - 1]
    return mine, [mine, *rest]


class SimNode:
    def __init__(self, node_id: str, sim: Simulation) -> None:
        self.id = node_id
        self.sim = sim
        self.cfg = sim.cfg
        self.up = True
        self.life = 0
        # the disk: survives crashes
        self.data: dict[str, records.Record] = {}
        self.hints: dict[tuple[str, str], records.Record] = {}
        self.dots: dict[str, int] = {}  # key -> our last counter as a fallback coordinator
        self.epoch = 0  # stand_in_actor="fresh": actor ids handed out so far
        self.hint_actors: dict[tuple[str, str], str] = {}  # hint -> the actor writing it
        # The id its writes carry: a new one for each life whose disk went back in time, as
        # storage.Store gives (the model assumes the store noticed: a missing or older data
        # file, or the operator's `restored` file). Not modelled: the real node then also
        # serves no reads until it has merged its ranges back in; here it serves at once,
        # which allows more, so the loss checks stay sound.
        self.actor = node_id
        self.gone_back = False
        self.backup = self.disk()
        # memory: lost in a crash
        self.hlc = HybridClock(sim.wall)
        self.down_until: dict[str, int] = {}
        self.serving: list[Future] = []  # client/peer calls whose answer we still owe

    # -- health

    def is_up(self, peer: str) -> bool:
        if peer == self.id:
            return True
        if self.sim.now < self.down_until.get(peer, -1):
            return False
        return not self.sim.detected_down(self.id, peer)

    def mark_down(self, peer: str) -> None:
        self.down_until[peer] = self.sim.now + self.cfg.retry_after

    def spawn(self, gen: Coroutine) -> Task:
        return Task(self.sim, gen, self)

    def call(self, peer: str, method: str, *args: Any) -> Future:
        return self.sim.call(self.id, peer, method, args, self.cfg.replica_timeout)

    def route(self, key: str, needed: int) -> tuple[list[str], list[quorum.Target]]:
        preference = self.sim.prefs[key]
        if not self.cfg.sloppy_quorum:
            preference = preference[: self.cfg.n]
        return preference, quorum.select(preference, self.cfg.n, self.is_up, needed)

    # -- storage

    def merge(self, a: records.Record | None, b: records.Record | None) -> records.Record | None:
        return self.sim.merge(a, b)

    def apply(self, key: str, record: records.Record, hint: str | None) -> None:
        """A replica merges an incoming record into its data, or into the hint for `hint`."""
        self.hlc.observe(record.stamp)
        if hint is None:
            self.data[key] = self.merge(self.data.get(key), record)
        else:
            self.hints[(hint, key)] = self.merge(self.hints.get((hint, key)), record)

    def read_local(self, key: str, hint: str | None) -> records.Record | None:
        record = self.data.get(key)
        if hint is not None:
            # As a node does: every hint held for the key, whichever primary it names.
            for (_, hinted), held in sorted(self.hints.items()):
                if hinted == key:
                    record = self.merge(record, held)
        return record

    def update_local(self, key: str, me: quorum.Target, op: list, stamp: int) -> records.Record:
        """The coordinator applies op on top of its own stored copy: its data, or as a
        stand-in the hint it holds for that primary (under the old rule, stand_in_actor="node",
        plus its dot floor for the key)."""
        actor = self.actor
        if me.hint is None:
            stored = self.data.get(key)
        else:
            stored = self.hints.get((me.hint, key))
            if self.cfg.stand_in_actor == "fresh":
                actor = self.hint_actors.get((me.hint, key)) if stored is not None else None
                if actor is None:
                    self.epoch += 1
                    actor = self.hint_actors[(me.hint, key)] = f"{self.actor}.{self.epoch}"
            elif op[0] == "siblings" and key in self.dots:
                floor = records.Record("siblings", (((self.actor, self.dots[key], ()),), ()), 0)
                stored = records.merge(stored, floor)
        if self.cfg.broken == "empty_copy":
            # wrong on purpose: the update starts from nothing, so its dot (or the node's
            # counter entry) repeats one already handed out
            record = self.merge(stored, records.update(None, op, actor, stamp))
        else:
            record = records.update(stored, op, actor, stamp, self.cfg.sibling_limit)
        if me.hint is None:
            self.data[key] = record
        else:
            self.hints[(me.hint, key)] = record
        return record

    def forget(self, owner: str, key: str, sent: records.Record) -> None:
        """A hint the owner acknowledged goes, unless a write changed it since it was sent;
        for the old stand-in rule (stand_in_actor="node"), a fallback remembers its counter for
        the key (its dot floor)."""
        current = self.hints.get((owner, key))
        if current is None or not records.equal(current, sent):
            return
        if current.kind == "siblings":
            mine = next((e for e in current.state[0] if e[0] == self.actor), None)
            if mine is not None and self.dots.get(key, 0) < mine[1]:
                self.dots[key] = mine[1]
        del self.hints[(owner, key)]
        self.hint_actors.pop((owner, key), None)

    # -- handlers of incoming calls

    def handle(self, method: str, args: tuple) -> Any:
        """The answer to a call (a plain value), or a coroutine that will produce it."""
        if method == "replica_put":
            key, record, hint = args
            self.apply(key, record, hint)
            return True
        if method == "replica_put_many":
            for key, record, hint in args[0]:
                self.apply(key, record, hint)
            return True
        if method == "replica_get":
            key, hint = args
            return self.read_local(key, hint)
        if method == "coordinate_put":
            return self.coordinate_put(*args)
        if method == "coordinate_get":
            return self.coordinate_get(*args)
        raise ValueError(f"unknown method {method!r}")

    def forward(self, targets: list[quorum.Target], method: str, *args: Any) -> Coroutine:
        """The "any node" path: a node outside the targets hands the request to a primary."""
        once = not self.cfg.forward_retry and method == "coordinate_put"
        once = once and not records.idempotent(args[1])
        for target in targets:
            if target.hint is None and target.node != self.id:
                self.sim.stats["forwards"] += 1
                try:
                    return (yield self.call(target.node, method, *args, True))
                except Unavailable as exc:
                    self.mark_down(target.node)
                    if once and exc.reason not in _NOTHING_SENT:
                        return ("quorum", 0, args[2], 1)  # it may have been applied there
        return None

    def coordinate_put(self, key: str, op: list, w: int, forwarded: bool = False) -> Coroutine:
        preference, targets = self.route(key, w)
        mine = next((t for t in targets if t.node == self.id), None)
        if mine is None:
            if not forwarded:
                answer = yield from self.forward(targets, "coordinate_put", key, op, w)
                if answer is not None:
                    return answer
            mine, targets = _stand_in(self.id, preference, self.cfg.n, targets)
        record = self.update_local(key, mine, op, self.hlc.now())
        others = [t for t in targets if t.node != self.id]
        tally = quorum.Tally(preference, [mine, *others], w, self.is_up, self.cfg.n)
        tally.answered(self.id)
        yield from self.replicate(tally, others, key, record)
        self.sim.stats["writes_coordinated"] += 1
        if mine.hint is not None:
            self.sim.stats["sloppy_coordinated"] += 1
        if tally.reached:
            return ("ok", records.context_of(record))
        return ("quorum", len(tally.ok), w, tally.asked)

    def replicate(
        self, tally: quorum.Tally, targets: list[quorum.Target], key: str, record: records.Record
    ) -> Coroutine:
        done = Future(self.sim)

        def send(target: quorum.Target) -> Coroutine:
            try:
                yield self.call(target.node, "replica_put", key, record, target.hint)
                tally.answered(target.node)
            except Unavailable:
                self.mark_down(target.node)
                replacement = tally.failure(target)
                if replacement is not None:
                    self.spawn(send(replacement))
            if tally.reached or tally.hopeless:
                done.resolve()

        for target in targets:
            self.spawn(send(target))
        if tally.reached or tally.hopeless:
            return
        self.sim.after(3 * self.cfg.replica_timeout, done.resolve)
        yield done

    def coordinate_get(self, key: str, r: int, forwarded: bool = False) -> Coroutine:
        preference, targets = self.route(key, r)
        if not any(t.node == self.id for t in targets) and not forwarded:
            answer = yield from self.forward(targets, "coordinate_get", key, r)
            if answer is not None:
                return answer
        tally = quorum.Tally(preference, targets, r, self.is_up, self.cfg.n)
        replies: dict[str, tuple[quorum.Target, records.Record | None]] = {}
        done = Future(self.sim)
        pending: list[Task] = []

        def ask(target: quorum.Target) -> Coroutine:
            try:
                if target.node == self.id:
                    record = self.read_local(key, target.hint)
                else:
                    record = yield self.call(target.node, "replica_get", key, target.hint)
                replies[target.node] = (target, record)
                tally.answered(target.node)
            except Unavailable:
                self.mark_down(target.node)
                replacement = tally.failure(target)
                if replacement is not None:
                    pending.append(self.spawn(ask(replacement)))
            if tally.reached or tally.hopeless:
                done.resolve()

        for target in targets:
            pending.append(self.spawn(ask(target)))
        self.sim.after(3 * self.cfg.replica_timeout, done.resolve)
        yield done
        if not tally.reached:
            return ("quorum", len(tally.ok), r, tally.asked)
        merged = self.sim.merge_all([rec for _, rec in replies.values()])
        if self.cfg.read_repair:
            self.spawn(self.read_repair(key, replies, pending))
        return ("ok", merged)

    def read_repair(
        self,
        key: str,
        replies: dict[str, tuple[quorum.Target, records.Record | None]],
        pending: list[Task],
    ) -> Coroutine:
        yield self.sim.all_done([t.result for t in pending], self.cfg.read_repair_wait)
        merged = self.sim.merge_all([rec for _, rec in replies.values()])
        if merged is None:
            return
        for node, (target, record) in list(replies.items()):
            if records.equal(record, merged):
                continue
            self.sim.stats["read_repairs"] += 1
            if node == self.id:
                self.apply(key, merged, target.hint)
                continue
            try:
                yield self.call(node, "replica_put", key, merged, target.hint)
            except Unavailable:
                self.mark_down(node)

    # -- hinted handoff

    def handoff_loop(self) -> Coroutine:
        sim = self.sim
        while sim.running:
            yield sim.sleep(self.cfg.handoff_interval + sim.rng.randint(0, 2))
            owners = sorted({owner for owner, _ in self.hints})
            for owner in owners:
                if not self.is_up(owner):
                    continue
                items = [(key, rec) for (o, key), rec in sorted(self.hints.items()) if o == owner]
                try:
                    yield self.call(owner, "replica_put_many", [(k, rec, None) for k, rec in items])
                except Unavailable:
                    self.mark_down(owner)
                    continue
                for key, rec in items:
                    self.forget(owner, key, rec)
                sim.stats["hints_delivered"] += len(items)

    # -- crash and restart

    def crash(self) -> None:
        if not self.up:
            return
        self.up = False
        self.life += 1
        for fut in self.serving:  # callers see the process die (Ray's RayActorError)
            self.sim.after(self.sim.delay(), fut.resolve, None, Unavailable(DIED))
        self.serving = []
        self.down_until = {}
        self.hlc = HybridClock(self.sim.wall)

    def restart(self) -> None:
        if self.up:
            return
        self.up = True
        if self.gone_back:
            self.gone_back = False
            if self.cfg.broken != "same_actor":  # wrong on purpose: numbers dots again
                self.actor = f"{self.id}@{self.life}"
                # Stand-in ids chosen before went back in time with their hint copies.
                self.hint_actors.clear()
        if self.sim.running:
            self.spawn(self.handoff_loop())

    # -- the disk going back in time

    def disk(self) -> tuple:
        """What a backup of the disk holds (records are immutable: shallow copies do)."""
        return (
            dict(self.data),
            dict(self.hints),
            dict(self.dots),
            self.epoch,
            dict(self.hint_actors),
            self.actor,
        )

    def lose_disk(self, rollback: bool) -> None:
        """The node stops, and its disk is lost (an empty one in its place) or goes back to
        its last backup. It notices when it starts again."""
        self.crash()
        empty = ({}, {}, {}, 0, {}, self.actor)
        data, hints, dots, epoch, hint_actors, actor = self.backup if rollback else empty
        if rollback and (data, hints) != (self.data, self.hints):
            self.sim.stats["disks_rolled_back"] += 1  # to something older, not to the same
        self.data, self.hints, self.dots = dict(data), dict(hints), dict(dots)
        self.epoch, self.hint_actors, self.actor = epoch, dict(hint_actors), actor
        self.gone_back = True
        self.sim.stats["disks_lost"] += 1


# -- the simulation ---------------------------------------------------------------------------


@dataclass
class SimResult:
    workload: str
    schedule: Schedule
    config: Config
    valid: bool
    problems: list[str]
    check: SetResult | CounterResult
    converged: bool
    final: dict
    ops: dict[str, int]
    stats: dict[str, int]
    steps: int
    history: History = field(repr=False)

    def summary(self) -> str:
        verdict = "PASS" if self.valid else "FAIL: " + "; ".join(self.problems)
        return (
            f"{self.workload} {self.schedule} -> {verdict} "
            f"(ok {self.ops['ok']} info {self.ops['info']} fail {self.ops['fail']}, "
            f"{self.steps} steps)"
        )


class Simulation:
    def __init__(self, workload: str, schedule: Schedule, config: Config | None = None) -> None:
        if workload not in WORKLOADS:
            raise ValueError(f"workload must be one of {WORKLOADS}, got {workload!r}")
        if sum(f.kind in DISK_FAULTS for f in schedule.faults) > 1:
            raise ValueError(
                "a schedule takes at most one disk back in time (wipe or rollback): two "
                "nodes losing their copies before any repair may lose a write for good"
            )
        self.workload = workload
        self.schedule = schedule
        self.cfg = cfg = config or Config()
        self.rng = random.Random(schedule.seed)
        self.now = 0
        self._queue: list = []  # (step, seq, fn, args) of later steps
        self._ready: deque = deque()  # (fn, args) to run at this step, in order
        self._seq = 0
        self.running = True
        ids = cfg.node_ids()
        self.ring = Ring.create(ids, partitions=8)
        self.keys = [f"k{i}" for i in range(cfg.keys)]
        self.prefs = {
            k: list(self.ring.preference_list(self.ring.partition_of(k.encode())))
            for k in self.keys
        }
        self.nodes = {i: SimNode(i, self) for i in ids}
        self.side: frozenset[str] = frozenset()  # the partitioned-off group (empty: none)
        self.drop = 0.0
        self._changed: dict[tuple[str, str], int] = {}  # link -> step its reachability changed
        self._reach = {(a, b): True for a in ids for b in ids if a != b}
        self.history = History(clock=lambda: float(self.now))
        self.stats: dict[str, int] = dict.fromkeys(
            (
                "messages",
                "lost",
                "forwards",
                "writes_coordinated",
                "sloppy_coordinated",
                "read_repairs",
                "hints_delivered",
                "disks_lost",
                "disks_rolled_back",
            ),
            0,
        )
        self._clients_left = cfg.clients
        self._client_down: list[dict[str, int]] = [{} for _ in range(cfg.clients)]
        self._next_element = [0] * cfg.clients
        if cfg.broken == "lww_merge":
            self.merge = _lww_merge
        else:
            self.merge = records.merge

    # -- clock and queue

    def wall(self) -> int:
        return self.now

    def at(self, when: int, fn: Callable, *args: Any) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (when, self._seq, fn, args))

    def after(self, steps: int, fn: Callable, *args: Any) -> None:
        self.at(self.now + steps, fn, *args)

    def soon(self, fn: Callable, *args: Any) -> None:
        self._ready.append((fn, args))

    def delay(self) -> int:
        return 1 + int(self.rng.random() * self.cfg.max_delay)

    def sleep(self, steps: int) -> Future:
        fut = Future(self)
        self.after(steps, fut.resolve)
        return fut

    def all_done(self, futures: list[Future], timeout: int) -> Future:
        """Resolves when every future is done, or after timeout steps."""
        out = Future(self)
        left = [f for f in futures if not f.done]
        if not left:
            out.resolve()
            return out
        count = [len(left)]

        def one(_: Future) -> None:
            count[0] -= 1
            if count[0] == 0:
                out.resolve()

        for f in left:
            f.wait(one)
        self.after(timeout, out.resolve)
        return out

    def merge_all(self, recs: Iterable[records.Record | None]) -> records.Record | None:
        merged = None
        for rec in recs:
            merged = self.merge(merged, rec)
        return merged

    # -- network

    def partitioned(self, a: str, b: str) -> bool:
        # clients (not nodes) are never partitioned, as in the real fault table
        return bool(self.side) and a in self.nodes and (a in self.side) != (b in self.side)

    def reachable(self, a: str, b: str) -> bool:
        return self.nodes[b].up and not self.partitioned(a, b)

    def detected_down(self, me: str, peer: str) -> bool:
        """Gossip's view: a peer unreachable for detect_after steps is down."""
        if self._reach[(me, peer)]:
            return False
        return self.now - self._changed.get((me, peer), 0) >= self.cfg.detect_after

    def _links_changed(self) -> None:
        for link, was in self._reach.items():
            now = self.reachable(*link)
            if now != was:
                self._reach[link] = now
                self._changed[link] = self.now

    def call(self, src: str, dst: str, method: str, args: tuple, timeout: int) -> Future:
        fut = Future(self)
        self.stats["messages"] += 1
        if not self.nodes[dst].up:
            self.soon(fut.resolve, None, Unavailable(UNREACHABLE))
            return fut
        if self.partitioned(src, dst):
            self.soon(fut.resolve, None, Unavailable(PARTITIONED))
            return fut
        self.after(timeout, fut.resolve, None, Unavailable(NO_ANSWER))
        if self.drop and self.rng.random() < self.drop:
            self.stats["lost"] += 1
            return fut  # lost on the way: the deadline will tell
        self.after(self.delay(), self._deliver, src, dst, method, args, fut)
        return fut

    def _deliver(self, src: str, dst: str, method: str, args: tuple, fut: Future) -> None:
        node = self.nodes[dst]
        if not node.up:
            self.after(self.delay(), fut.resolve, None, Unavailable(DIED))
            return
        if self.partitioned(src, dst):  # the receiver refuses it (transport.accepts)
            self.after(self.delay(), fut.resolve, None, Unavailable(PARTITIONED))
            return
        answer = node.handle(method, args)
        if isinstance(answer, Generator):
            node.serving.append(fut)
            task = node.spawn(answer)
            task.result.wait(lambda done: self._answered(node, fut, done.value))
        else:
            self._reply(fut, answer)

    def _answered(self, node: SimNode, fut: Future, value: Any) -> None:
        if fut in node.serving:
            node.serving.remove(fut)
            self._reply(fut, value)

    def _reply(self, fut: Future, value: Any) -> None:
        if self.drop and self.rng.random() < self.drop:
            self.stats["lost"] += 1
            return  # the work is done, the answer lost: the caller's deadline passes
        self.after(self.delay(), fut.resolve, value)

    # -- faults

    def apply_fault(self, fault: Fault) -> None:
        if fault.kind == "partition":
            side = frozenset(n for n in fault.nodes if n in self.nodes)
            self.side = side if 0 < len(side) < len(self.nodes) else frozenset()
        elif fault.kind == "heal":
            self.side = frozenset()
        elif fault.kind == "crash":
            for n in fault.nodes:
                if n in self.nodes:
                    self.nodes[n].crash()
        elif fault.kind == "restart":
            for n in fault.nodes:
                if n in self.nodes:
                    self.nodes[n].restart()
        elif fault.kind == "drop":
            self.drop = max(0.0, min(fault.rate, 0.9))
        elif fault.kind in DISK_FAULTS:
            for n in fault.nodes:
                if n in self.nodes:
                    self.nodes[n].lose_disk(rollback=fault.kind == "rollback")
        else:
            raise ValueError(f"unknown fault kind {fault.kind!r}")
        self._links_changed()

    # -- clients

    def request(self, process: int, key: str, method: str, args: tuple, retry: bool) -> Coroutine:
        """One client request, as Routing._send: candidates best first, up to three.
        Returns the coordinator's reply; raises _Outcome("info" | "fail")."""
        down = self._client_down[process]
        preference = self.prefs[key]
        healthy = [p for p in preference if self.now >= down.get(p, -1)]
        candidates = healthy + [p for p in preference if p not in healthy]
        client = f"client-{process}"
        tried: list[str] = []
        reached = False
        for node in candidates[:3]:
            try:
                return (yield self.call(client, node, method, args, self.cfg.request_timeout))
            except Unavailable as exc:
                down[node] = self.now + self.cfg.retry_after
                tried.append(f"{node}: {exc.reason}")
                if exc.reason == NO_ANSWER:
                    raise _Outcome("info", tried) from None  # it may have done the work
                if exc.reason not in _NOTHING_SENT:
                    if not retry:
                        raise _Outcome("info", tried) from None  # never applied twice
                    reached = True
        if reached and not self.cfg.unavailable_after_died:
            raise _Outcome("info", tried)  # one of them may have applied it before dying
        raise _Outcome("fail", tried)  # no coordinator was sent the request

    def read(self, process: int, key: str) -> Coroutine:
        """A recorded read; the merged record, or _FAILED."""
        invocation = self.history.invoke(process, "read", key)
        try:
            reply = yield from self.request(
                process, key, "coordinate_get", (key, self.cfg.r), retry=True
            )
        except _Outcome as outcome:
            self.history.complete(invocation, "fail", error=outcome.error)
            return _FAILED
        if reply[0] != "ok":
            self.history.complete(invocation, "fail", error="quorum")
            return _FAILED
        record = reply[1]
        value, siblings = self.value_of(record)
        self.history.complete(invocation, "ok", value=value, siblings=siblings)
        return record

    def write(self, process: int, f: str, key: str, value: Any, op: list) -> Coroutine:
        invocation = self.history.invoke(process, f, key, value)
        try:
            reply = yield from self.request(
                process,
                key,
                "coordinate_put",
                (key, op, self.cfg.w),
                retry=records.idempotent(op),
            )
        except _Outcome as outcome:
            self.history.complete(invocation, outcome.kind, error=outcome.error)
            return
        self.history.complete(invocation, "ok" if reply[0] == "ok" else "info")

    def value_of(self, record: records.Record | None) -> tuple[Any, int]:
        if self.workload == "counter":
            return (crdt.value("counter", record.state) if record else 0), 1
        if record is None:
            return [], 0
        vals = {v for v in versions.values(record.state) if v is not None}
        return sorted(_elements(vals)), len(vals)

    def client(self, process: int) -> Coroutine:
        rng = random.Random(self.schedule.seed * 7919 + process)
        try:
            for _ in range(self.cfg.ops_per_client):
                yield self.sleep(rng.randint(0, self.cfg.think))
                key = rng.choice(self.keys)
                if self.workload == "counter":
                    if rng.random() < 0.2:
                        yield from self.read(process, key)
                    else:
                        op = ["counter", ["increment", 1]]
                        yield from self.write(process, "incr", key, 1, op)
                    continue
                record = yield from self.read(process, key)
                if record is _FAILED:
                    continue
                element = f"{process}-{self._next_element[process]}"
                self._next_element[process] += 1
                elements = set(self.value_of(record)[0]) | {element}
                value = ",".join(sorted(elements)).encode()
                op = ["siblings", records.context_of(record), value]
                yield from self.write(process, "add", key, element, op)
        finally:
            self._clients_left -= 1
            if self._clients_left == 0:
                self.running = False  # background loops end; what is in flight drains

    # -- a whole run

    def run(self) -> SimResult:
        for fault in sorted(self.schedule.faults, key=lambda f: f.at):
            self.at(fault.at, self.apply_fault, fault)
        for node in self.nodes.values():
            node.spawn(node.handoff_loop())
        rollbacks = [f.at for f in self.schedule.faults if f.kind == "rollback"]
        for when in range(
            self.cfg.backup_interval, max(rollbacks, default=0), self.cfg.backup_interval
        ):
            self.at(when, self.take_backups)
        for process in range(self.cfg.clients):
            Task(self, self.client(process), None)
        self._drain()
        steps = self.now
        return self._finish(steps)

    def take_backups(self) -> None:
        """Each running node's disk is copied (as an operator's backup job would, every
        backup_interval steps): what a rollback puts back. Scheduled only up to a rollback,
        so schedules without one run exactly as before."""
        for node in self.nodes.values():
            if node.up:
                node.backup = node.disk()

    def _drain(self) -> None:
        queue = self._queue
        ready = self._ready
        while True:
            while ready:
                fn, args = ready.popleft()
                fn(*args)
            if not queue:
                return
            when, _, fn, args = heapq.heappop(queue)
            self.now = when
            fn(*args)

    def _finish(self, steps: int) -> SimResult:
        # heal: no partition, no drops, every node up; let what is in flight settle
        self.running = False
        self.side = frozenset()
        self.drop = 0.0
        for node in self.nodes.values():
            node.restart()
        self._links_changed()
        self._drain()
        # hinted handoff: every hint to its owner
        for node in self.nodes.values():
            for (owner, key), rec in sorted(node.hints.items()):
                self.nodes[owner].apply(key, rec, None)
                node.forget(owner, key, rec)
        # anti-entropy: every pair of a key's replicas merges
        problems: list[str] = []
        final: dict = {}
        converged = True
        for key in self.keys:
            replicas = [self.nodes[p] for p in self.prefs[key][: self.cfg.n]]
            for i, a in enumerate(replicas):
                for b in replicas[i + 1 :]:
                    merged = self.merge(a.data.get(key), b.data.get(key))
                    if merged is not None:
                        a.data[key] = b.data[key] = merged
            copies = [rep.data.get(key) for rep in replicas]
            if not all(records.equal(copies[0], c) for c in copies[1:]):
                converged = False
                problems.append(f"replicas of {key} differ after anti-entropy")
            invocation = self.history.invoke("final", "read", key)
            value, siblings = self.value_of(self.merge_all(copies))
            self.history.complete(invocation, "ok", value=value, siblings=siblings)
            final[key] = value
        left = sum(len(n.hints) for n in self.nodes.values())
        if left:
            problems.append(f"{left} hints left after handoff")
        if self.workload == "set":
            check: SetResult | CounterResult = check_set(self.history, final)
            if check.lost:
                problems.append(f"acknowledged adds lost: {check.lost}")
            if check.unexpected or check.failed_present or check.unexpected_in_reads:
                problems.append(
                    "elements never (successfully) added: "
                    f"{check.unexpected + check.failed_present + check.unexpected_in_reads}"
                )
        else:
            check = check_counter(self.history, final)
            if check.lost:
                problems.append(f"{check.lost} acknowledged increments lost")
            if check.extra or check.read_violations:
                problems.append(
                    f"{check.extra} increments counted beyond those attempted; "
                    f"reads above attempts: {check.read_violations}"
                )
        if check.unread_keys:
            problems.append(f"keys not read back: {check.unread_keys}")
        return SimResult(
            workload=self.workload,
            schedule=self.schedule,
            config=self.cfg,
            valid=not problems,
            problems=problems,
            check=check,
            converged=converged,
            final=final,
            ops=self.history.counts(exclude=("final",)),
            stats=dict(self.stats),
            steps=steps,
            history=self.history,
        )


class _Outcome(Exception):
    def __init__(self, kind: str, tried: list[str]) -> None:
        super().__init__(kind)
        self.kind = kind
        self.error = "; ".join(tried)


_FAILED = object()


def _elements(values: Iterable[bytes]) -> set[str]:
    out: set[str] = set()
    for v in values:
        if v:
            out.update(v.decode().split(","))
    return out


def _lww_merge(a: records.Record | None, b: records.Record | None) -> records.Record | None:
    """Wrong on purpose, for the set workload: keep the record with the newer stamp instead
    of syncing the two clocks, so concurrent siblings are dropped."""
    if a is None or b is None or a.kind != "siblings":
        return records.merge(a, b)
    if a.stamp != b.stamp:
        return a if a.stamp > b.stamp else b
    return a if repr(a.state) >= repr(b.state) else b


# -- schedules --------------------------------------------------------------------------------


def random_schedule(seed: int, config: Config | None = None) -> Schedule:
    """The fault schedule of one seed: up to six faults within the horizon, and in about a
    third of the seeds a disk lost or put back from its backup (drawn from a random source
    of its own, so the other faults of a seed are those of earlier versions)."""
    cfg = config or Config()
    rng = random.Random(seed * 1_000_003 + 17)
    ids = cfg.node_ids()
    faults = []
    for _ in range(rng.randint(0, 6)):
        at = rng.randrange(cfg.horizon)
        kind = rng.choices(_OTHER_FAULTS, weights=(3, 2, 3, 2, 2))[0]
        if kind == "partition":
            size = rng.randint(1, len(ids) // 2)
            faults.append(Fault(at, kind, tuple(sorted(rng.sample(ids, size)))))
        elif kind in ("crash", "restart"):
            faults.append(Fault(at, kind, tuple(sorted(rng.sample(ids, rng.randint(1, 3))))))
        elif kind == "drop":
            faults.append(Fault(at, kind, rate=rng.choice((0.0, 0.05, 0.1, 0.2, 0.3))))
        else:
            faults.append(Fault(at, kind))
    disk = random.Random(seed * 7_919 + 5)
    if disk.random() < 1 / 3:
        kind = disk.choice(DISK_FAULTS)
        # A rollback after the first backup, or it puts back the empty disk (a wipe).
        first = cfg.backup_interval + 1 if kind == "rollback" else 0
        lost = Fault(disk.randrange(first, cfg.horizon), kind, (disk.choice(ids),))
        faults = _with_disk_fault(faults, lost, disk.randint(1, 15))
    return Schedule(seed, tuple(sorted(faults, key=lambda f: f.at)))


def _with_disk_fault(faults: list[Fault], lost: Fault, down: int) -> list[Fault]:
    """The faults, and a node's disk lost or put back, the node started again `down` steps
    later: both ahead of other faults of the same step (a stable sort keeps them so)."""
    restart = Fault(lost.at + down, "restart", lost.nodes)
    return sorted([lost, restart, *faults], key=lambda f: f.at)


def schedules(config: Config | None = None, max_faults: int = 8) -> Any:
    """A hypothesis strategy for schedules: it shrinks towards fewer faults, earlier steps,
    fewer nodes per fault and seed 0."""
    from hypothesis import strategies as st

    cfg = config or Config()
    ids = cfg.node_ids()
    at = st.integers(0, cfg.horizon - 1)
    some_nodes = st.lists(st.sampled_from(ids), min_size=1, max_size=len(ids) - 1, unique=True)
    fault = st.one_of(
        st.builds(Fault, at, st.just("crash"), some_nodes.map(lambda ns: tuple(sorted(ns)))),
        st.builds(Fault, at, st.just("partition"), some_nodes.map(lambda ns: tuple(sorted(ns)))),
        st.builds(Fault, at, st.just("restart"), some_nodes.map(lambda ns: tuple(sorted(ns)))),
        st.builds(Fault, at, st.just("heal")),
        st.builds(Fault, at, st.just("drop"), rate=st.sampled_from((0.0, 0.05, 0.1, 0.2, 0.3))),
    )
    # At most one disk lost or put back, its node down for a while (both shrink).
    one_node = st.sampled_from(ids).map(lambda n: (n,))
    disk = st.none() | st.tuples(
        st.builds(Fault, at, st.sampled_from(DISK_FAULTS), one_node), st.integers(1, 15)
    )

    def assemble(seed: int, faults: list[Fault], lost: tuple | None) -> Schedule:
        if lost is not None:
            faults = _with_disk_fault(faults, *lost)
        return Schedule(seed, tuple(sorted(faults, key=lambda f: f.at)))

    return st.builds(assemble, st.integers(0, 2**16), st.lists(fault, max_size=max_faults), disk)


# -- entry points -----------------------------------------------------------------------------


def run(workload: str, schedule: Schedule | int, config: Config | None = None) -> SimResult:
    """Simulate one schedule (or the random schedule of a seed) and check it."""
    cfg = config or Config()
    if isinstance(schedule, int):
        schedule = random_schedule(schedule, cfg)
    return Simulation(workload, schedule, cfg).run()


@dataclass
class Exploration:
    workload: str
    runs: int
    seconds: float
    failures: list[SimResult]
    ops: dict[str, int]  # the clients' outcomes, summed over the runs
    stats: dict[str, int]  # the simulation's counters, summed over the runs

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def per_second(self) -> float:
        return self.runs / self.seconds if self.seconds else float("inf")

    def summary(self) -> str:
        head = (
            f"{self.workload}: {self.runs} schedules in {self.seconds:.2f}s "
            f"({self.per_second:.0f}/s), ops ok {self.ops['ok']} info {self.ops['info']} "
            f"fail {self.ops['fail']}"
        )
        if not self.failures:
            return head + ", all passed"
        return head + f", {len(self.failures)} failed; first: {self.failures[0].summary()}"


def explore(
    seeds: int,
    workload: str = "set",
    *,
    start: int = 0,
    config: Config | None = None,
    broken: str | None = None,
    stop_at_first: bool = False,
) -> Exploration:
    """Run the random schedules of seeds start .. start + seeds - 1 and collect failures."""
    cfg = config or Config()
    if broken is not None:
        cfg = replace(cfg, broken=broken)
    began = time.perf_counter()
    failures: list[SimResult] = []
    ops = {"ok": 0, "info": 0, "fail": 0}
    stats: dict[str, int] = {}
    runs = 0
    for seed in range(start, start + seeds):
        result = run(workload, random_schedule(seed, cfg), cfg)
        runs += 1
        for k, v in result.ops.items():
            ops[k] += v
        for k, v in result.stats.items():
            stats[k] = stats.get(k, 0) + v
        if not result.valid:
            failures.append(result)
            if stop_at_first:
                break
    return Exploration(workload, runs, time.perf_counter() - began, failures, ops, stats)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1000)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--workload", choices=WORKLOADS, default="set")
    parser.add_argument("--broken", choices=BROKEN, default=None)
    parser.add_argument("--fixes", action="store_true", help="model the candidate FIXES")
    args = parser.parse_args(argv)
    config = Config(**FIXES) if args.fixes else Config()
    found = explore(args.seeds, args.workload, start=args.start, config=config, broken=args.broken)
    print(found.summary())
    for failure in found.failures[:5]:
        print(" ", failure.summary())
    return 0 if found.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
