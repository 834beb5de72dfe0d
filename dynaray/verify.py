"""A Jepsen-style verification run: concurrent clients, a nemesis, a history, checkers.

    python -m dynaray.verify --duration 60 --nemesis partition,kill --workload set
    dynaray verify ...           (same arguments, where the CLI hands `verify` over here)

`run()` starts a store with short failure-detection settings, drives `clients` concurrent
asyncio clients against `keys` keys while a seeded nemesis injects faults (partitions of
several shapes, link drops and delays, kills and restarts, lost disks, full disks, joins
and leaves), records every operation as an invoke followed by ok / fail / info in a
`dynaray.history.History`, then heals everything, waits for hints to drain and anti-entropy
to repair nothing more, checks that replicas converged, reads every key back and runs the
workload's checker.

Workloads:

- `set`: a "siblings" bucket; each client adds unique elements ("3-17") to a key by read,
  merge (set union of the siblings, plus the element), write back with the read's context.
  Every acknowledged add must be in the final read; nothing never attempted may appear.
- `counter`: a "counter" bucket, increments of 1. The final value must lie between the sum
  of acknowledged increments and the sum of attempted ones.
- `register`: an "lww" bucket, plain writes of unique values. Last write wins loses
  concurrent writes by design: the loss rate is reported and never fails the run.

Outcomes: a write's QuorumError, RequestTimeout or client deadline is `info`
(indeterminate); Unavailable and refused requests are `fail` (nothing happened); a read
that does not succeed is `fail`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dynaray.errors import (
    DynarayError,
    InvalidContext,
    InvalidRequest,
    QuorumError,
    RequestTimeout,
    StorageError,
    Unavailable,
)
from dynaray.history import (
    History,
    check_counter,
    check_register,
    check_set,
    max_siblings,
)

log = logging.getLogger(__name__)


class Refused(ValueError):
    """A run that cannot be made as asked (arguments, no root for `full`): no load ran."""


NEMESES = ("partition", "kill", "join", "leave", "link", "wipe", "full")
# What the nemesis does to undo faults: recorded like faults, never counted or drawn as one.
RECOVERIES = ("heal", "restart", "repair", "free")
WORKLOADS = ("set", "counter", "register")
N, R, W = 3, 2, 2

# Failure detection within a second or two, so faults show within a short run; background
# anti-entropy off, so the harness decides when replicas are compared.
NODE_OPTIONS = {
    "gossip_interval": 0.2,
    "suspect_after": 0.8,
    "down_after": 1.5,
    "handoff_interval": 0.3,
    "replica_timeout": 1.0,
    "retry_after": 0.5,
    "read_repair_wait": 0.5,
    "anti_entropy_interval": None,
}

OP_TIMEOUT = 15.0  # a client gives up on one operation after this (outcome: info for writes)
THINK = 0.02  # mean pause between a client's operations: keeps the CPU use modest
CLUSTER_CALL_TIMEOUT = 60.0  # one nemesis action (kill, partition, restart)
RESHAPE_TIMEOUT = 180.0  # one join or leave, including its data handoff
RECOVERY_TIMEOUT = 90.0  # healing, restarting, nodes seen up, hints drained: each
AE_TIMEOUT = 180.0  # anti-entropy rounds until one repairs nothing
AE_ROUNDS = 10
PARTITIONS = 64  # of the store a run starts
WIPE_WAIT = 30.0  # a lost disk waits this long for pending hints, else is skipped
DISK_SIZE = "64m"  # each node's own disk for the `full` nemesis (a tmpfs)
FINAL_READ_TIMEOUT = 60.0


# -- running blocking Cluster calls off the event loop -------------------------------------------


async def _in_thread(fn: Callable[..., Any], *args: Any, timeout: float) -> Any:
    """Run a blocking call on a daemon thread, awaited with a deadline. A call that overruns
    is abandoned (its thread cannot be stopped, but it never holds the interpreter open)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def target() -> None:
        try:
            result, error = fn(*args), None
        except BaseException as exc:  # handed to the awaiting coroutine
            result, error = None, exc
        loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=target, daemon=True, name=f"verify-{fn.__name__}").start()
    return await asyncio.wait_for(asyncio.shield(future), timeout)


def _describe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:200]


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    """Sleep, but wake as soon as `stop` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


def _classify(exc: BaseException, write: bool) -> str:
    """The outcome of an operation that raised."""
    if not write:
        return "fail"  # a read changes nothing the checkers judge
    if isinstance(exc, QuorumError | RequestTimeout | TimeoutError):
        return "info"
    if isinstance(exc, Unavailable | InvalidRequest | InvalidContext | StorageError):
        return "fail"  # nothing reached, refused, or no disk took it: nothing was written
    return "info"  # anything else: we cannot know, so we claim nothing


async def perform(
    history: History,
    process: int | str,
    f: str,
    key: Any,
    value: Any,
    action: Callable[[], Any],
    *,
    write: bool,
    timeout: float = OP_TIMEOUT,
) -> tuple[bool, Any]:
    """Record `action()` (a coroutine factory) as one operation: (succeeded, its result)."""
    invocation = history.invoke(process, f, key, value)
    try:
        result = await asyncio.wait_for(action(), timeout)
    except asyncio.CancelledError:
        history.complete(invocation, "info", error="cancelled")
        raise
    except Exception as exc:
        history.complete(invocation, _classify(exc, write), error=_describe(exc))
        return False, None
    history.complete(invocation, "ok")
    return True, result


# -- workloads ---------------------------------------------------------------------------------


def set_union(values: list) -> list:
    """The set-union resolver of the set workload: siblings are lists of elements."""
    merged: set = set()
    for value in values:
        merged.update(value or ())
    return sorted(merged)


class Workload:
    """What clients do, how a key is read back at the end, and which checker judges it."""

    name = ""
    bucket_name = ""
    policy = "siblings"

    def __init__(self, keys: int) -> None:
        self.keys = [f"k{i}" for i in range(keys)]

    async def open(self, client: Any) -> Any:
        return await client.abucket(self.bucket_name, policy=self.policy)

    async def step(self, process: int, bucket: Any, rng: random.Random, history: History) -> None:
        raise NotImplementedError

    async def final_read(self, bucket: Any, key: str, history: History) -> tuple[bool, Any]:
        invocation = history.invoke("final", "read", key)
        try:
            res = await asyncio.wait_for(bucket.aget(key, r=N), OP_TIMEOUT)
        except Exception as exc:
            history.complete(invocation, "fail", error=_describe(exc))
            return False, None
        value = self.value_of(res.values)
        history.complete(invocation, "ok", value=value, siblings=len(res.values))
        return True, value

    def value_of(self, values: list) -> Any:
        raise NotImplementedError

    def check(self, history: History, final: dict, durable: bool) -> Any:
        """Judge the history against the final reads; `durable`: no disk was lost."""
        raise NotImplementedError

    async def read(self, process: int, bucket: Any, key: str, history: History) -> Any:
        """One recorded read; the GetResult, or None when it did not succeed."""
        invocation = history.invoke(process, "read", key)
        try:
            res = await asyncio.wait_for(bucket.aget(key), OP_TIMEOUT)
        except Exception as exc:
            history.complete(invocation, "fail", error=_describe(exc))
            return None
        history.complete(
            invocation, "ok", value=self.value_of(res.values), siblings=len(res.values)
        )
        return res


class SetWorkload(Workload):
    name = "set"
    bucket_name = "verify_set"
    policy = "siblings"

    def __init__(self, keys: int) -> None:
        super().__init__(keys)
        self._next: Counter[int] = Counter()

    def value_of(self, values: list) -> list:
        return set_union(values)

    async def step(self, process: int, bucket: Any, rng: random.Random, history: History) -> None:
        key = rng.choice(self.keys)
        res = await self.read(process, bucket, key, history)
        if res is None:
            return  # nothing was attempted
        element = f"{process}-{self._next[process]}"
        self._next[process] += 1
        merged = sorted(set(set_union(res.values)) | {element})
        await perform(
            history,
            process,
            "add",
            key,
            element,
            lambda: bucket.aput(key, res.context, merged),
            write=True,
        )

    def check(self, history: History, final: dict, durable: bool) -> Any:
        return check_set(history, final, durable)


class CounterWorkload(Workload):
    name = "counter"
    bucket_name = "verify_counter"
    policy = "counter"

    def value_of(self, values: list) -> int:
        return values[0] if values else 0

    async def step(self, process: int, bucket: Any, rng: random.Random, history: History) -> None:
        key = rng.choice(self.keys)
        if rng.random() < 0.2:
            await self.read(process, bucket, key, history)
            return
        await perform(
            history, process, "incr", key, 1, lambda: bucket.aincrement(key, 1), write=True
        )

    def check(self, history: History, final: dict, durable: bool) -> Any:
        return check_counter(history, final, durable)


class RegisterWorkload(Workload):
    name = "register"
    bucket_name = "verify_register"
    policy = "lww"

    def __init__(self, keys: int) -> None:
        super().__init__(keys)
        self._next: Counter[int] = Counter()

    def value_of(self, values: list) -> Any:
        return values[0] if values else None

    async def step(self, process: int, bucket: Any, rng: random.Random, history: History) -> None:
        key = rng.choice(self.keys)
        if rng.random() < 0.25:
            await self.read(process, bucket, key, history)
            return
        value = f"{process}-{self._next[process]}"
        self._next[process] += 1
        await perform(
            history,
            process,
            "write",
            key,
            value,
            lambda: bucket.aput(key, None, value),
            write=True,
        )

    def check(self, history: History, final: dict, durable: bool) -> Any:
        return check_register(history, final)


def make_workload(name: str, keys: int) -> Workload:
    classes = {"set": SetWorkload, "counter": CounterWorkload, "register": RegisterWorkload}
    if name not in classes:
        raise Refused(f"workload must be one of {WORKLOADS}, got {name!r}")
    return classes[name](keys)


# -- the nemesis -------------------------------------------------------------------------------


@dataclass
class Fault:
    kind: str  # partition, link, kill, wipe, full, join, leave (and heal, restart, repair, free)
    shape: str  # halves, one, bridge, ring, slow, flaky, crash, disk lost, disk full, ...
    start: float
    end: float | None = None
    detail: Any = None
    error: str | None = None

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "shape": self.shape,
            "start": round(self.start, 3),
            "end": None if self.end is None else round(self.end, 3),
            "detail": self.detail,
            "error": self.error,
        }


class Nemesis:
    """Injects faults on a seeded random schedule: inject, hold a few seconds, recover,
    stay quiet a little, again. Partitions and link faults may be joined by a kill; joins,
    leaves and lost disks happen alone, on a healthy cluster, so a reshape never waits on
    a fault.

    A lost disk (`wipe`) waits until no hint is pending, and its node, once back empty,
    is refilled by an anti-entropy round before the next fault: N copies survive only
    the loss of fewer than N of them, so a second disk may go only once the first is
    repaired, as an operator would see to."""

    def __init__(
        self,
        cluster: Any,
        kinds: tuple[str, ...],
        rng: random.Random,
        history: History,
        *,
        min_nodes: int,
        max_nodes: int,
        disks: dict[str, str] | None = None,
    ) -> None:
        self.cluster = cluster
        self.kinds = tuple(kinds)
        self.rng = rng
        self.history = history
        self.min_nodes = min_nodes
        self.max_nodes = max_nodes
        self.killed: set[str] = set()
        self.wiped: set[str] = set()
        self.wipes_skipped = 0  # hints still pending, or an earlier fault not repaired
        self.disks = dict(disks or {})  # node: the mount point of its own disk (`full`)
        self.full: set[str] = set()  # nodes whose disk is full now
        self.stop = asyncio.Event()
        self.network_faulty = False
        self.faults: list[Fault] = []
        self.active: list[Fault] = []
        self.errors: list[str] = []

    # -- schedule ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        self.stop = stop
        rng = self.rng
        await _sleep_unless(stop, rng.uniform(1.0, 2.0))
        while not stop.is_set():
            plan = self._choose()
            if not plan:
                await _sleep_unless(stop, 1.0)
                continue
            for kind in plan:
                await self._inject(kind)
            if self.active:
                await _sleep_unless(stop, rng.uniform(2.0, 5.0))
                await self.recover()
            await _sleep_unless(stop, rng.uniform(1.0, 3.0))
        # Faults still active at the end are the caller's to recover (see recover()).

    def _choose(self) -> list[str]:
        nodes = self.cluster.nodes()
        possible = []
        for kind in self.kinds:
            if kind == "join" and len(nodes) >= self.max_nodes:
                continue
            if kind == "leave" and len(nodes) <= self.min_nodes:
                continue
            possible.append(kind)
        if not possible:
            return []
        first = self.rng.choice(possible)
        plan = [first]
        if first in ("partition", "link") and "kill" in possible and self.rng.random() < 0.3:
            plan.append("kill")
        elif first == "kill" and self.rng.random() < 0.3:
            network = [k for k in possible if k in ("partition", "link")]
            if network:
                plan.insert(0, self.rng.choice(network))
        return plan

    # -- faults -----------------------------------------------------------------------------

    async def _act(
        self,
        kind: str,
        shape: str,
        detail: Any,
        fn: Callable[[], Any],
        timeout: float,
        *,
        retried: bool = False,
    ) -> Fault:
        """Do one recorded nemesis action (an error of one that will be `retried` is not
        an error of the run)."""
        fault = Fault(kind, shape, self.history.now(), detail=detail)
        invocation = self.history.invoke("nemesis", kind, None, {"shape": shape, "detail": detail})
        try:
            result = await _in_thread(fn, timeout=timeout)
        except asyncio.CancelledError:
            # Cut short (the run's end cancels a nemesis that overran): its invoke is
            # completed, so that recovery may record the same kind of action after it.
            fault.error, fault.end = "cancelled", self.history.now()
            self.history.complete(invocation, "info", error=fault.error)
            self.faults.append(fault)
            raise
        except Exception as exc:
            fault.error = _describe(exc)
            fault.end = self.history.now()
            if not retried:
                self.errors.append(f"{kind} {shape} {detail}: {fault.error}")
            self.history.complete(invocation, "info", error=fault.error)
        else:
            if result is not None:
                fault.detail = result
            if kind in (*RECOVERIES, "join", "leave"):
                fault.end = self.history.now()
            self.history.complete(invocation, "ok")
        self.faults.append(fault)
        return fault

    async def _running(self, node: str) -> bool:
        """Whether the node answers now (False when that cannot be asked in time)."""
        try:
            return node in await _in_thread(self.cluster.info, timeout=CLUSTER_CALL_TIMEOUT)
        except Exception:  # noqa: BLE001 - not known to run: treated as down
            return False

    async def _inject(self, kind: str) -> None:
        method = getattr(self, f"_inject_{kind}")
        await method()

    async def _inject_partition(self) -> None:
        c, rng = self.cluster, self.rng
        nodes = rng.sample(c.nodes(), len(c.nodes()))
        shapes = ["halves", "one"] + (["bridge"] if len(nodes) >= 3 else [])
        shapes += ["ring"] if len(nodes) >= 5 else []
        shape = rng.choice(shapes)
        if shape == "halves":
            half = len(nodes) // 2
            groups = [sorted(nodes[:half]), sorted(nodes[half:])]
            detail: Any = groups

            def fn() -> None:
                c.partition(groups)
        elif shape == "one":
            groups = [[nodes[0]], sorted(nodes[1:])]
            detail = groups

            def fn() -> None:
                c.partition(groups)
        else:
            cut = _bridge_cuts(nodes) if shape == "bridge" else _ring_cuts(nodes)
            detail = {"order": nodes, "cut": sorted(cut)}

            def fn() -> None:
                for src, dst in sorted(cut):
                    c.set_link(src, dst, drop=1.0)

        self.network_faulty = True
        self.active.append(await self._act("partition", shape, detail, fn, CLUSTER_CALL_TIMEOUT))

    async def _inject_link(self) -> None:
        c, rng = self.cluster, self.rng
        node = rng.choice(c.nodes())
        if rng.random() < 0.5:
            shape, amount = "slow", round(rng.uniform(0.05, 0.5), 3)

            def fn() -> None:
                c.set_link(None, node, delay=amount)
                c.set_link(node, None, delay=amount)
        else:
            shape, amount = "flaky", round(rng.uniform(0.2, 0.6), 3)

            def fn() -> None:
                c.set_link(None, node, drop=amount)
                c.set_link(node, None, drop=amount)

        self.network_faulty = True
        detail = {"node": node, "delay" if shape == "slow" else "drop": amount}
        self.active.append(await self._act("link", shape, detail, fn, CLUSTER_CALL_TIMEOUT))

    async def _inject_kill(self) -> None:
        c, rng = self.cluster, self.rng
        alive = [n for n in c.nodes() if n not in self.killed]
        count = 2 if len(alive) >= 5 and rng.random() < 0.4 else 1
        victims = sorted(rng.sample(alive, min(count, len(alive) - N + 1)))
        if not victims:
            return
        self.killed.update(victims)

        def fn() -> None:
            for victim in victims:
                c.kill(victim)

        self.active.append(await self._act("kill", "crash", victims, fn, CLUSTER_CALL_TIMEOUT))

    async def _inject_wipe(self) -> None:
        c = self.cluster
        if self.wiped or self.killed or self.network_faulty:
            self.wipes_skipped += 1  # an earlier fault is not repaired yet
            return
        give_up = time.monotonic() + WIPE_WAIT
        while sum((await _in_thread(c.hints, timeout=CLUSTER_CALL_TIMEOUT)).values()):
            if time.monotonic() > give_up or self.stop.is_set():
                self.wipes_skipped += 1  # a copy may live only in a hint: not this time
                return
            await asyncio.sleep(0.5)
        victim = self.rng.choice([n for n in c.nodes() if n not in self.killed])
        self.killed.add(victim)
        self.wiped.add(victim)

        def fn() -> None:
            c.lose_disk(victim)

        self.active.append(await self._act("wipe", "disk lost", victim, fn, CLUSTER_CALL_TIMEOUT))

    async def _inject_full(self) -> None:
        """Another program's file takes every free byte of a node's disk: its node stays up
        and must write around it (its writes go to other owners and stand-ins)."""
        c, rng = self.cluster, self.rng
        nodes = set(c.nodes())
        candidates = sorted(n for n in self.disks if n in nodes and n not in self.full)
        if not candidates or self.full:  # one full disk at a time
            return
        victim = rng.choice(candidates)
        self.full.add(victim)
        disk = self.disks[victim]

        def fn() -> None:
            fill_disk(disk)

        self.active.append(await self._act("full", "disk full", victim, fn, CLUSTER_CALL_TIMEOUT))

    async def _inject_join(self) -> None:
        c = self.cluster
        await self._act("join", "add_node", None, c.add_node, RESHAPE_TIMEOUT)

    async def _inject_leave(self) -> None:
        c = self.cluster
        victim = self.rng.choice(c.nodes())

        def fn() -> str:
            c.remove_node(victim)
            return victim

        await self._act("leave", "remove_node", victim, fn, RESHAPE_TIMEOUT)

    # -- recovery ---------------------------------------------------------------------------

    async def recover(self, deadline: float = RECOVERY_TIMEOUT) -> bool:
        """Free full disks, heal the network and restart every killed node; True when all of
        it worked."""
        ok = True
        if self.full:
            victims = sorted(self.full)

            def free() -> None:
                for victim in victims:
                    free_disk(self.disks[victim])

            fault = await self._act("free", "disk freed", victims, free, CLUSTER_CALL_TIMEOUT)
            ok = fault.error is None
            if ok:
                self.full.clear()
                self._ended(("full",))
        if self.network_faulty:
            fault = await self._act("heal", "heal", None, self.cluster.heal, CLUSTER_CALL_TIMEOUT)
            if fault.error is None:
                self.network_faulty = False
                self._ended(("partition", "link"))
            else:
                ok = False
        give_up = time.monotonic() + deadline
        for victim in sorted(self.killed):
            while True:
                last = time.monotonic() > give_up
                fault = await self._act(
                    "restart",
                    "restart",
                    victim,
                    lambda v=victim: self.cluster.restart(v),
                    CLUSTER_CALL_TIMEOUT,
                    retried=not last,
                )
                if fault.error is None or await self._running(victim):
                    # (An attempt abandoned past its deadline may have brought it back:
                    # each later one is then refused, as for a node that runs.)
                    self.killed.discard(victim)
                    break
                if last:
                    ok = False
                    break
                await asyncio.sleep(1.0)
        if self.wiped and not self.killed:
            fault = await self._act(
                "repair", "anti-entropy", sorted(self.wiped), self._refill, AE_TIMEOUT
            )
            if fault.error is None:
                self.wiped.clear()
            ok = ok and fault.error is None
        if not self.killed:
            self._ended(("kill", "wipe"))
        # What could not be undone ends here too, but a disk still full stays in effect.
        self._ended(("partition", "link", "kill", "wipe") + (() if self.full else ("full",)))
        return ok

    def _refill(self) -> dict:
        """Wait until the emptied nodes have taken their ranges over from the other
        replicas, then anti-entropy rounds until one has every node take part and reach
        every peer. Raises if that does not happen in time."""
        c = self.cluster
        give_up = time.monotonic() + AE_TIMEOUT
        while True:
            info = c.info()
            if len(info) == len(c.nodes()) and not any(i["ranges_arriving"] for i in info.values()):
                break
            if time.monotonic() > give_up:
                raise DynarayError("the emptied nodes did not get their ranges back in time")
            time.sleep(0.5)
        for _ in range(AE_ROUNDS):
            figures = c.anti_entropy()
            answered = len(c.info())
            if answered == len(c.nodes()) and not figures.get("peers_unreachable"):
                return figures
            time.sleep(1.0)  # a restarted node not yet seen up by every peer
        raise DynarayError(f"anti-entropy did not reach every node in {AE_ROUNDS} rounds")

    def _ended(self, kinds: tuple[str, ...]) -> None:
        now = self.history.now()
        for fault in self.active:
            if fault.kind in kinds:
                fault.end = now
        self.active = [f for f in self.active if f.kind not in kinds]

    def counts(self) -> dict[str, int]:
        """Faults injected, by kind and shape ("partition:bridge": 2)."""
        tally: Counter[str] = Counter()
        for fault in self.faults:
            if fault.kind not in RECOVERIES:
                tally[f"{fault.kind}:{fault.shape}"] += 1
        return dict(sorted(tally.items()))


def _bridge_cuts(order: list[str]) -> set[tuple[str, str]]:
    """Two sides that reach each other only through one bridge node (order[0]), which sees
    everyone: every link between the sides is dropped, both ways."""
    rest = order[1:]
    left, right = rest[: len(rest) // 2], rest[len(rest) // 2 :]
    return {(a, b) for a in left for b in right} | {(b, a) for a in left for b in right}


def _ring_cuts(order: list[str]) -> set[tuple[str, str]]:
    """Majorities ring: the nodes sit on a ring in `order`; each reaches only its nearest
    neighbours, enough to see a majority, and no two nodes see the same majority."""
    size = len(order)
    reach = -(-(size // 2) // 2)  # ceil(floor(size/2) / 2) neighbours on each side
    cuts = set()
    for i, a in enumerate(order):
        for j, b in enumerate(order):
            distance = min((i - j) % size, (j - i) % size)
            if distance > reach:
                cuts.add((a, b))
    return cuts


# -- convergence -------------------------------------------------------------------------------


def _canonical(values: list | None) -> Any:
    if values is None:
        return None
    return sorted(repr(sorted(v, key=repr) if isinstance(v, set | list) else v) for v in values)


def check_convergence(cluster: Any, bucket: str, keys: list[str]) -> dict:
    """Replicas agree: each key's N owners hold identical states, and every replica of
    every key range has the same Merkle root."""
    diverged: dict[str, dict] = {}
    for key in keys:
        owners = cluster.preference_list(key, bucket)[:N]
        state = cluster.replica_state(key, bucket)
        held = {owner: _canonical(state.get(owner)) for owner in owners}
        if len({json.dumps(v) for v in held.values()}) > 1:
            diverged[key] = held
    nodes = cluster.nodes()
    roots = cluster.merkle_roots()
    by_range: dict[int, dict[str, str]] = {}
    for node, ranges in roots.items():
        for partition, root in ranges.items():
            by_range.setdefault(partition, {})[node] = root
    ranges_diverged = sorted(p for p, r in by_range.items() if len(set(r.values())) > 1)
    short = sorted(p for p, r in by_range.items() if len(r) < N)
    silent = sorted(set(nodes) - set(roots))
    return {
        "ok": not (diverged or ranges_diverged or short or silent),
        "keys_diverged": diverged,
        "ranges": len(by_range),
        "ranges_diverged": ranges_diverged,
        "ranges_short": short,
        "nodes_silent": silent,
    }


# -- the report --------------------------------------------------------------------------------


@dataclass
class Report:
    workload: str
    seed: int
    duration: float
    nodes: int
    clients: int
    keys: int
    nemesis: list[str]
    ops: dict = field(default_factory=dict)  # ok / fail / info of the clients' operations
    ops_by_f: dict = field(default_factory=dict)  # "add:ok": 123
    faults: dict = field(default_factory=dict)  # "partition:bridge": 2
    fault_log: list = field(default_factory=list)
    checks: dict = field(default_factory=dict)  # name -> passed
    result: dict = field(default_factory=dict)  # the workload checker's findings
    acknowledged_lost: int | None = None
    convergence_seconds: float | None = None
    convergence: dict = field(default_factory=dict)
    recovery: dict = field(default_factory=dict)
    max_siblings: int = 0
    lww_loss_rate: float | None = None
    errors: list = field(default_factory=list)
    crashed: list = field(default_factory=list)  # clients or nemesis that raised
    history: History | None = None

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(self.checks.values())

    def to_dict(self) -> dict:
        out = {
            name: getattr(self, name)
            for name in self.__dataclass_fields__
            if name not in ("history",)
        }
        out["passed"] = self.passed
        return json.loads(json.dumps(out, default=repr))

    def table(self) -> str:
        def row(label: str, value: Any) -> str:
            return f"  {label:<28} {value}"

        ops = self.ops
        faults = ", ".join(f"{k} {v}" for k, v in self.faults.items()) or "none"
        lost = "n/a" if self.acknowledged_lost is None else str(self.acknowledged_lost)
        if self.workload == "set":
            lost += f" of {self.result.get('acknowledged', 0)} acknowledged adds"
        elif self.workload == "counter":
            lost += (
                f" of {self.result.get('acknowledged', 0)} acknowledged increments (a loss no "
                f"larger than the {self.result.get('indeterminate', 0)} indeterminate ones "
                "would not show)"
            )
        conv = (
            "did not converge"
            if self.convergence_seconds is None
            else f"{self.convergence_seconds:.1f} s"
        )
        lww = (
            "n/a"
            if self.lww_loss_rate is None
            else f"{self.lww_loss_rate:.1%} (lossy by design; report only)"
        )
        lines = [
            f"dynaray verify: workload={self.workload} nemesis={','.join(self.nemesis) or 'none'}"
            f" nodes={self.nodes} clients={self.clients} keys={self.keys} seed={self.seed}"
            f" duration={self.duration:g}s",
            row(
                "operations",
                f"ok {ops.get('ok', 0)}  fail {ops.get('fail', 0)}  info {ops.get('info', 0)}",
            ),
            row("faults injected", faults),
            row("acknowledged writes lost", lost),
            row("convergence after heal", conv),
            row("max siblings seen", self.max_siblings),
            row("lww loss rate", lww),
            "  checks:",
        ]
        for name, passed in self.checks.items():
            lines.append(f"    {'PASS' if passed else 'FAIL'}  {name}")
        for error in self.errors:
            lines.append(f"    note: {error}")
        lines.append(f"verdict: {'PASS' if self.passed else 'FAIL'}")
        return "\n".join(lines)


# -- disks of their own, to fill (the `full` nemesis) ---------------------------------------


def mount_disk(path: str, size: str = DISK_SIZE) -> None:
    """A small disk of its own (a tmpfs of `size`) at path. ValueError where mounting is not
    allowed (not root)."""
    os.makedirs(path, exist_ok=True)
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path],
            capture_output=True,
            text=True,
        )
        why = done.stderr.strip() if done.returncode != 0 else None
    except OSError as exc:  # no `mount` command
        why = str(exc)
    if why is not None:
        raise Refused(
            f"a disk of its own to fill needs root (`mount -t tmpfs`: {why}); run as root, "
            "or leave the `full` nemesis out"
        )


def mount_disks(root: str, nodes: list[str]) -> dict[str, str]:
    """mount_disk for each node's directory under root; {node: its mount point}. Mounts
    nothing if one fails."""
    disks: dict[str, str] = {}
    for node in nodes:
        path = os.path.join(root, node)
        try:
            mount_disk(path)
        except BaseException:
            unmount_disks(disks)
            raise
        disks[node] = path
    return disks


def unmount_disks(disks: dict[str, str]) -> None:
    for path in disks.values():
        unmount_disk(path)


def unmount_disk(path: str) -> None:
    """Unmount a disk of mount_disk (lazily: a node's process may still be exiting)."""
    try:
        done = subprocess.run(["umount", "-l", path], capture_output=True, text=True)
        why = done.stderr.strip() if done.returncode != 0 else None
    except OSError as exc:  # no `umount` command
        why = str(exc)
    if why is not None:
        log.warning("could not unmount %s: %s", path, why)


def fill_disk(path: str) -> None:
    """Write a file into the disk at path until it has no free byte left (unbuffered:
    nothing is left to flush when it is closed)."""
    with open(os.path.join(path, BALLAST), "wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(bytes(1 << 16))


def free_disk(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):  # a lost disk took it along
        os.remove(os.path.join(path, BALLAST))


BALLAST = "ballast"


def _check_disks_are_here(cluster: Any) -> None:
    """The disks `full` fills are this machine's: every node must run here too."""
    import ray

    here = ray.get_runtime_context().get_node_id()
    info = cluster.info()
    elsewhere = [n for n in cluster.nodes() if info.get(n, {}).get("ray_node") != here]
    if elsewhere:  # or did not answer: where it runs is not known
        raise Refused(_ELSEWHERE.format(nodes=", ".join(elsewhere), where="other machines"))


_ELSEWHERE = (
    "the `full` nemesis fills disks of this machine, and {nodes} run on {where} of the Ray "
    "cluster: run it on a single-machine Ray"
)


# -- the run -----------------------------------------------------------------------------------


def run(
    duration: float = 60,
    nemesis: tuple[str, ...] | list[str] = ("partition", "kill"),
    workload: str = "set",
    nodes: int = 5,
    seed: int = 0,
    clients: int = 8,
    keys: int = 5,
    out_dir: str | None = None,
    node_options: dict | None = None,
) -> Report:
    """One verification run; see the module docstring. `out_dir` receives report.json,
    history.jsonl and timeline.png (when matplotlib is installed)."""
    import dynaray

    kinds = tuple(nemesis)
    for kind in kinds:
        if kind not in NEMESES:
            raise Refused(f"unknown nemesis {kind!r}; choose from {', '.join(NEMESES)}")
    if not N <= nodes <= PARTITIONS:
        raise Refused(f"nodes must be between n={N} and {PARTITIONS}, got {nodes}")
    if clients < 1 or keys < 1 or duration <= 0:
        raise Refused("clients and keys must be >= 1 and duration > 0")
    work = make_workload(workload, keys)
    options = {**NODE_OPTIONS, **(node_options or {})}
    store = f"verify-{uuid.uuid4().hex[:8]}"
    root, disks = None, {}
    if "full" in kinds:  # the nodes' directories on disks of their own, to fill
        import ray

        if ray.is_initialized() and ray.cluster_resources().get("kvnode"):
            raise Refused(_ELSEWHERE.format(nodes="the store's nodes", where="`kvnode` machines"))
        root = tempfile.mkdtemp(prefix="dynaray-verify-")
        try:
            disks = mount_disks(root, [f"n{i}" for i in range(1, nodes + 1)])
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
    try:
        try:
            cluster = dynaray.start(
                nodes=nodes,
                n=N,
                r=R,
                w=W,
                store=store,
                partitions=PARTITIONS,
                node_options=options,
                data_dir=root,
            )
        except ValueError as exc:  # refused before any node started (too few machines)
            raise Refused(str(exc)) from None
        report = Report(workload, seed, duration, nodes, clients, keys, list(kinds))
        try:
            if disks:
                _check_disks_are_here(cluster)
            asyncio.run(_drive(cluster, work, kinds, report, seed, disks))
        finally:
            cluster.shutdown()
    finally:
        if root is not None:
            unmount_disks(disks)
            shutil.rmtree(root, ignore_errors=True)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        write_json(report, os.path.join(out_dir, "report.json"))
        write_history(report, os.path.join(out_dir, "history.jsonl"))
        message = plot_timeline(report, os.path.join(out_dir, "timeline.png"))
        if message:
            report.errors.append(message)
    return report


async def _drive(
    cluster: Any, work: Workload, kinds: tuple, report: Report, seed: int, disks: dict
) -> None:
    history = History()
    report.history = history
    handles = [cluster.client() for _ in range(report.clients)]
    buckets = [await _open(work, client) for client in handles]
    stop = asyncio.Event()
    nemesis = Nemesis(
        cluster,
        kinds,
        random.Random(seed),
        history,
        min_nodes=N + 1,
        max_nodes=report.nodes + 1,
        disks=disks,
    )

    async def client_loop(process: int) -> None:
        rng = random.Random(f"{seed}-client-{process}")
        while not stop.is_set():
            await work.step(process, buckets[process], rng, history)
            await asyncio.sleep(rng.expovariate(1 / THINK))

    tasks = [asyncio.ensure_future(client_loop(p)) for p in range(report.clients)]
    chaos = asyncio.ensure_future(nemesis.run(stop))
    await asyncio.sleep(report.duration)
    stop.set()
    # The nemesis stops (a join or leave in progress completes first), then everything is
    # healed and restarted while the clients finish the operation in flight.
    await _finish([chaos], RESHAPE_TIMEOUT + 10, report, "nemesis")
    healed_at = time.monotonic()
    recovered = await nemesis.recover()
    report.errors.extend(nemesis.errors)
    await _finish(tasks, OP_TIMEOUT * 2 + 5, report, "clients")
    recovery = await _await_recovery(cluster)
    recovery["nemesis_recovered"] = recovered
    if "wipe" in kinds:
        recovery["wipes_skipped"] = nemesis.wipes_skipped
    convergence, rounds = await _converge(cluster, work)
    converged_at = time.monotonic()
    recovery["anti_entropy_rounds"] = rounds
    report.recovery = recovery
    report.convergence = convergence
    report.convergence_seconds = (
        round(converged_at - healed_at, 2) if convergence.get("ok") else None
    )

    final: dict = {}
    for key in work.keys:
        # A deadline per key: one slow key does not leave the others a single try each.
        deadline = time.monotonic() + FINAL_READ_TIMEOUT
        while True:
            ok, value = await work.final_read(buckets[0], key, history)
            if ok:
                final[key] = value
                break
            if time.monotonic() > deadline:
                report.errors.append(f"final read of {key!r} did not succeed in time")
                break
            await asyncio.sleep(0.5)

    # A wiped disk may take a copy that a read saw but no quorum acknowledged (a wipe the
    # nemesis skipped took nothing).
    durable = not any(fault.kind == "wipe" for fault in nemesis.faults)
    result = work.check(history, final, durable)
    report.result = result.to_dict()
    report.ops = history.counts(exclude=("nemesis", "final"))
    report.ops_by_f = _ops_by_f(history)
    report.faults = nemesis.counts()
    report.fault_log = [f.to_dict() for f in nemesis.faults]
    report.max_siblings = max_siblings(history)
    # Writes, not reads: a run whose every write failed would lose nothing, and prove nothing.
    written = sum(n for f, n in report.ops_by_f.items() if f.endswith(":ok") and f != "read:ok")
    checks = {"writes were acknowledged": written > 0}
    if work.name == "set":
        report.acknowledged_lost = len(result.lost)
        checks["no acknowledged add lost"] = not result.lost
        checks["no element a read saw lost"] = not result.vanished_after_read
        checks["no element that was never added (or failed)"] = not (
            result.unexpected or result.failed_present or result.unexpected_in_reads
        )
    elif work.name == "counter":
        report.acknowledged_lost = result.lost
        checks["no acknowledged increment lost"] = result.lost == 0
        checks["no increment a read saw lost"] = result.vanished_after_read == 0
        checks["no increment counted that was not attempted"] = not (
            result.extra or result.read_violations
        )
    else:
        report.lww_loss_rate = round(result.loss_rate, 4)
        checks["no value that was never written"] = not (
            result.unexpected or result.unexpected_in_reads
        )
        checks["no key lost all its acknowledged writes"] = not result.vanished_keys
        checks["no key went back to a value written over a second before"] = not result.rolled_back
    checks["every key read back"] = set(final) == set(work.keys)
    # A client that crashed (on a value it could not read, say) stopped judging the store.
    checks["no client or nemesis crashed"] = not report.crashed
    checks["nodes recovered (healed, restarted, seen up)"] = bool(
        recovered and recovery.get("all_up")
    )
    checks["hints drained"] = bool(recovery.get("hints_drained"))
    checks["anti-entropy quiesced, replicas converged"] = bool(convergence.get("ok"))
    report.checks = checks


async def _open(work: Workload, client: Any) -> Any:
    """Open the workload's bucket (before any fault), retrying within a deadline."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return await asyncio.wait_for(work.open(client), OP_TIMEOUT)
        except (DynarayError, TimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def _finish(tasks: list, timeout: float, report: Report, what: str) -> None:
    done, pending = await asyncio.wait(tasks, timeout=timeout)
    crashed = []
    for task in pending:  # slow (a heal on a loaded machine, say): noted, not failed on
        task.cancel()
        report.errors.append(f"{what} did not stop within {timeout:.0f}s; cancelled")
    if pending:
        await asyncio.wait(pending, timeout=10)
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            crashed.append(f"{what} crashed: {_describe(task.exception())}")
    report.crashed.extend(crashed)
    report.errors.extend(crashed)


async def _await_recovery(cluster: Any) -> dict:
    """Wait (bounded) for every node to be seen up and every hint to be handed off."""
    out: dict = {"all_up": False, "hints_drained": False}
    started = time.monotonic()
    deadline = started + RECOVERY_TIMEOUT
    while time.monotonic() < deadline:
        try:
            status = await _in_thread(cluster.status, timeout=CLUSTER_CALL_TIMEOUT)
        except Exception:
            status = {}
        out["status"] = status
        if status and all(s == "up" for s in status.values()):
            out["all_up"] = True
            break
        await asyncio.sleep(0.5)
    out["up_seconds"] = round(time.monotonic() - started, 2)
    deadline = time.monotonic() + RECOVERY_TIMEOUT
    while time.monotonic() < deadline:
        try:
            hints = await _in_thread(cluster.hints, timeout=CLUSTER_CALL_TIMEOUT)
        except Exception:
            hints = {}
        out["hints"] = hints
        if len(hints) == len(cluster.nodes()) and not sum(hints.values()):
            out["hints_drained"] = True
            break
        await asyncio.sleep(0.5)
    out["hints_seconds"] = round(time.monotonic() - started, 2)
    return out


async def _converge(cluster: Any, work: Workload) -> tuple[dict, list]:
    """Anti-entropy rounds until one repairs nothing and the replicas agree (bounded)."""
    rounds: list[dict] = []
    convergence: dict = {"ok": False}
    deadline = time.monotonic() + AE_TIMEOUT
    while len(rounds) < AE_ROUNDS and time.monotonic() < deadline:
        try:
            figures = await _in_thread(cluster.anti_entropy, timeout=AE_TIMEOUT)
        except Exception as exc:
            rounds.append({"error": _describe(exc)})
            await asyncio.sleep(1.0)
            continue
        rounds.append(figures)
        if figures.get("keys_repaired", 0) or figures.get("peers_unreachable", 0):
            continue
        try:
            convergence = await _in_thread(
                check_convergence,
                cluster,
                work.bucket_name,
                work.keys,
                timeout=CLUSTER_CALL_TIMEOUT,
            )
        except Exception as exc:
            convergence = {"ok": False, "error": _describe(exc)}
        if convergence.get("ok"):
            break
    return convergence, rounds


def _ops_by_f(history: History) -> dict[str, int]:
    tally: Counter[str] = Counter()
    for invocation, completion in history.pairs():
        if invocation.process in ("nemesis", "final"):
            continue
        tally[f"{invocation.f}:{'info' if completion is None else completion.kind}"] += 1
    return dict(sorted(tally.items()))


# -- output ------------------------------------------------------------------------------------


def write_json(report: Report, path: str) -> None:
    with open(path, "w") as fh:
        json.dump(report.to_dict(), fh, indent=2, sort_keys=True)
        fh.write("\n")


def write_history(report: Report, path: str) -> None:
    if report.history is None:
        return
    with open(path, "w") as fh:
        for op in report.history.ops:
            fh.write(json.dumps(op.to_dict(), default=repr) + "\n")


def plot_timeline(report: Report, path: str) -> str | None:
    """A picture of the run: one row per client, each operation a bar coloured by outcome,
    and above them a lane per kind of fault, each fault a bar over the time it lasted
    (shaded behind the clients too). Returns a message when it could not be drawn."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no timeline drawn (pip install matplotlib)"
    history = report.history
    if history is None:
        return "no history to draw"
    colours = {"ok": "#2ca02c", "info": "#ff7f0e", "fail": "#d62728"}
    end = max((op.time for op in history.ops), default=1.0)
    rows: dict[Any, dict[str, list]] = {}
    for invocation, completion in history.pairs():
        if invocation.process == "nemesis":
            continue
        kind = "info" if completion is None else completion.kind
        stop = end if completion is None else completion.time
        spans = rows.setdefault(invocation.process, {k: [] for k in colours})
        spans[kind].append((invocation.time, max(stop - invocation.time, 0.002)))
    order = sorted(rows, key=lambda p: (isinstance(p, str), str(p)))
    faults = [f for f in report.fault_log if f["kind"] not in RECOVERIES]
    lanes = list(dict.fromkeys(f["kind"] for f in faults))  # a row per kind, above the clients
    fig, ax = plt.subplots(figsize=(12, 1.5 + 0.35 * (len(order) + len(lanes))))
    fault_colours = {
        "partition": "#1f77b4",
        "link": "#9467bd",
        "kill": "#8c564b",
        "wipe": "#d62728",
        "full": "#ff7f0e",
    }
    for number, fault in enumerate(faults):
        start, stop = fault["start"], fault["end"] if fault["end"] is not None else end
        width = max(stop - start, 0.2)
        colour = fault_colours.get(fault["kind"], "#7f7f7f")
        y = len(order) + lanes.index(fault["kind"])
        ax.axvspan(start, start + width, ymax=len(order) / (len(order) + len(lanes)), color=colour,
                   alpha=0.08)  # fmt: skip
        ax.broken_barh([(start, width)], (y - 0.35, 0.7), color=colour, alpha=0.5)
        # Neighbouring faults' labels take turns above and below the lane's middle.
        ax.text(start, y + (0.15 if number % 2 else -0.15), _fault_label(fault), fontsize=6,
                va="center", clip_on=True)  # fmt: skip
    for y, process in enumerate(order):
        for kind, spans in rows[process].items():
            if spans:
                ax.broken_barh(spans, (y - 0.35, 0.7), color=colours[kind])
    ax.set_yticks(range(len(order) + len(lanes)), [str(p) for p in order] + lanes)
    ax.set_ylim(-0.6, len(order) + len(lanes) - 0.4)
    ax.set_xlabel("seconds")
    ax.set_ylabel("client (below), fault (above)" if lanes else "client")
    ax.set_title(
        f"dynaray verify {report.workload} ({','.join(report.nemesis)}), seed {report.seed}: "
        f"{'PASS' if report.passed else 'FAIL'}  (green ok, orange info, red fail)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None


def _fault_label(fault: dict) -> str:
    """A fault's shape, and the nodes it struck when it names them (kills, disks, joins)."""
    detail = fault.get("detail")
    nodes = [detail] if isinstance(detail, str) else detail
    if isinstance(nodes, list) and nodes and all(isinstance(n, str) for n in nodes):
        return f"{fault['shape']} {','.join(nodes)}"
    return str(fault["shape"])


# -- command line ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dynaray verify",
        description="Jepsen-style run: concurrent clients, injected faults, history checkers.",
    )
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument(
        "--nemesis",
        default="partition,kill",
        help=f"comma-separated faults from {','.join(NEMESES)} ('none' for no faults)",
    )
    parser.add_argument("--workload", choices=WORKLOADS, default="set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--keys", type=int, default=5)
    parser.add_argument("--json", default=None, metavar="FILE", help="write the report here")
    parser.add_argument("--png", default=None, metavar="FILE", help="draw the timeline here")
    parser.add_argument("--out-dir", default=None, help="report, history and timeline here")
    return parser


def parse_nemesis(text: str) -> tuple[str, ...]:
    if text.strip() in ("", "none"):
        return ()
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in kinds if k not in NEMESES]
    if unknown:
        raise Refused(f"unknown nemesis {', '.join(unknown)}; choose from {', '.join(NEMESES)}")
    return kinds


def _quiet_ray() -> bool:
    """Start a local Ray of our own that keeps the nodes' logs out of the report (killed and
    restarted nodes log a lot); True when this call started it. With RAY_ADDRESS set, or
    Ray already initialized in this process, the store's own start() connects as usual."""
    import ray

    if ray.is_initialized() or os.environ.get("RAY_ADDRESS"):
        return False
    ray.init(
        address="local",  # our own, never a cluster someone else started on this machine
        namespace="dynaray",
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,
    )
    return True


def main(argv: list[str] | None = None) -> int:
    """Exit status 0 only when every check held (the LWW loss rate never fails a run)."""
    args = build_parser().parse_args(argv)
    try:
        kinds = parse_nemesis(args.nemesis)
    except ValueError as exc:
        print(f"dynaray verify: {exc}", file=sys.stderr)
        return 2
    os.environ.setdefault("RAY_task_events_report_interval_ms", "0")
    # Token authentication is Ray's safe default, not news for this report.
    logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)
    started_ray = _quiet_ray()
    try:
        report = run(
            duration=args.duration,
            nemesis=kinds,
            workload=args.workload,
            nodes=args.nodes,
            seed=args.seed,
            clients=args.clients,
            keys=args.keys,
            out_dir=args.out_dir,
        )
    except Refused as exc:  # no load ran: not a failed check (status 1)
        print(f"dynaray verify: {exc}", file=sys.stderr)
        return 2
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    print(report.table())
    if args.json:
        write_json(report, args.json)
        print(f"report written to {args.json}")
    if args.png:
        message = plot_timeline(report, args.png)
        print(message or f"timeline written to {args.png}")
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
