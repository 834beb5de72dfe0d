"""YCSB-style load on dynaray and on the stores it is measured against.

Workloads (YCSB's core mixes): A 50% read / 50% update, B 95/5, C read only, W write only;
keys chosen by YCSB's scrambled zipfian (theta 0.99) or uniformly. Every target is loaded
first (all keys written, concurrently), warmed up, then driven by `--clients` closed-loop
asyncio clients for `--duration` seconds: in this one driver process, or spread over
`--processes` driver processes (Ray actors that reach the same store through its
`spec()`; their HDR histograms are merged).

Targets:
  dynaray  a store started here (embedded Ray unless this process is connected to one)
  naive    one async Ray actor holding a dict: the floor cost of a Ray call per operation
  redis    redis-server on 127.0.0.1 with an append-only file fsynced every second
  etcd     a 3-member etcd cluster on 127.0.0.1, through its v3 HTTP JSON gateway

    python -m benchmarks.bench --workload A --duration 10 --targets dynaray,naive
    python -m benchmarks.bench --workload B --paths --json out.json --png out.png

`--paths` also runs dynaray through each request path (client, router, any): the
client-driven versus server-driven coordination comparison of the Dynamo paper's Table 2.
`--bulk` measures 1,000-key batches through the client's get_many/put_many, where it has them.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import base64
import contextlib
import dataclasses
import importlib.util
import json
import logging
import math
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

ALL_TARGETS = ("dynaray", "naive", "redis", "etcd")
PATHS = ("client", "router", "any")
OPS = ("read", "update")
PERCENTILES = (50.0, 95.0, 99.0, 99.9)
ZIPFIAN_THETA = 0.99
BULK_BATCH = 1000
DEFAULT_SEED = 2007
LOOPBACK = "127.0.0.1"
# Latencies are kept in microseconds, 1 us .. 60 s, three significant digits.
HIST_LOWEST_US = 1
HIST_HIGHEST_US = 60_000_000


@dataclass(frozen=True)
class Workload:
    name: str
    read_fraction: float
    text: str


WORKLOADS = {
    "A": Workload("A", 0.50, "read 50% / update 50%"),
    "B": Workload("B", 0.95, "read 95% / update 5%"),
    "C": Workload("C", 1.00, "read only"),
    "W": Workload("W", 0.00, "update only"),
}


class Skip(Exception):
    """A target that cannot run on this machine; the message says how to make it run."""


# -- key choice -------------------------------------------------------------------------------

_FNV_OFFSET_64 = 0xCBF29CE484222325
_FNV_PRIME_64 = 0x100000001B3
_MASK_64 = (1 << 64) - 1


def fnv1a_64(value: int) -> int:
    """64-bit FNV-1a over the eight little-endian bytes of `value` (YCSB's scrambling hash)."""
    h = _FNV_OFFSET_64
    for _ in range(8):
        h ^= value & 0xFF
        h = (h * _FNV_PRIME_64) & _MASK_64
        value >>= 8
    return h


# YCSB's ScrambledZipfianGenerator: ranks drawn from this many items, with zeta(10**10,
# 0.99) precomputed, since summing it would take hours.
YCSB_ITEMS = 10_000_000_000
YCSB_ZETAN = 26.46902820178302


class Zipfian:
    """Item ranks 0..items-1 with P(rank i) proportional to 1 / (i+1)^theta.

    Gray et al.'s constant-time method ("Quickly generating billion-record synthetic
    databases", SIGMOD 1994), as YCSB uses it: zeta(n) is summed once, then each draw costs
    one random number and one power.
    """

    def __init__(
        self, items: int, theta: float = ZIPFIAN_THETA, zetan: float | None = None
    ) -> None:
        """`zetan`: zeta(items), when too many items to sum (YCSB's 10**10 ranks)."""
        if items < 1:
            raise ValueError("a zipfian needs at least one item")
        if not 0 < theta < 1:
            raise ValueError("theta must lie strictly between 0 and 1")
        self.items = items
        self.theta = theta
        self.zetan = (
            zetan if zetan is not None else math.fsum(1.0 / (i**theta) for i in range(1, items + 1))
        )
        self.alpha = 1.0 / (1.0 - theta)
        self.half_pow_theta = 0.5**theta
        zeta2 = 1.0 + self.half_pow_theta
        if items > 1:
            self.eta = (1.0 - (2.0 / items) ** (1.0 - theta)) / (1.0 - zeta2 / self.zetan)
        else:
            self.eta = 0.0

    def next(self, rng: random.Random) -> int:
        if self.items == 1:
            return 0
        u = rng.random()
        uz = u * self.zetan
        if uz < 1.0:
            return 0
        if uz < 1.0 + self.half_pow_theta:
            return 1
        rank = int(self.items * (self.eta * u - self.eta + 1.0) ** self.alpha)
        return min(rank, self.items - 1)


class ScrambledZipfian:
    """Zipfian popularity spread over the key space, as YCSB's default request distribution:
    a rank is drawn from 10**10 (theta 0.99, YCSB's precomputed zeta), then hashed (FNV-1a)
    modulo the key count, so the hot keys are scattered and each key is the sum of many
    ranks. (Drawing from only as many ranks as keys makes the hottest key twice as hot,
    and leaves about a quarter of the keys never chosen.)"""

    def __init__(self, items: int) -> None:
        self.items = items
        self.zipfian = Zipfian(YCSB_ITEMS, ZIPFIAN_THETA, YCSB_ZETAN)

    def next(self, rng: random.Random) -> int:
        return fnv1a_64(self.zipfian.next(rng)) % self.items


class Uniform:
    def __init__(self, items: int) -> None:
        self.items = items

    def next(self, rng: random.Random) -> int:
        return rng.randrange(self.items)


def key_chooser(distribution: str, items: int) -> ScrambledZipfian | Uniform:
    if distribution == "zipfian":
        return ScrambledZipfian(items)
    if distribution == "uniform":
        return Uniform(items)
    raise ValueError(f"unknown key distribution {distribution!r}")


def key_name(index: int) -> str:
    return f"user{index}"


# -- measurement ------------------------------------------------------------------------------


def _hdr_class() -> Any:
    try:
        from hdrh.histogram import HdrHistogram
    except ImportError:
        return None
    return HdrHistogram


_HDR = _hdr_class()
_warned_no_hdr = False


def _warn_no_hdr() -> None:
    global _warned_no_hdr
    if _HDR is None and not _warned_no_hdr:
        _warned_no_hdr = True
        print(
            "warning: hdrhistogram is not installed (pip install hdrhistogram); percentiles "
            "come from a sorted list of every latency instead",
            file=sys.stderr,
        )


class Latencies:
    """Latencies of one operation type, in microseconds: an HDR histogram, or a plain list."""

    def __init__(self) -> None:
        _warn_no_hdr()
        self._hist = _HDR(HIST_LOWEST_US, HIST_HIGHEST_US, 3) if _HDR is not None else None
        self._values: list[int] = []
        self.count = 0
        self._sum = 0

    def record(self, seconds: float) -> None:
        us = min(max(round(seconds * 1e6), HIST_LOWEST_US), HIST_HIGHEST_US)
        self.count += 1
        self._sum += us
        if self._hist is not None:
            self._hist.record_value(us)
        else:
            self._values.append(us)

    def to_wire(self) -> dict:
        """What another driver process sends back: the histogram encoded, or the values."""
        if self._hist is not None:
            return {"count": self.count, "sum": self._sum, "hdr": self._hist.encode()}
        return {"count": self.count, "sum": self._sum, "values": self._values}

    def add_wire(self, wire: dict) -> None:
        """Merge another process's latencies into these."""
        self.count += wire["count"]
        self._sum += wire["sum"]
        if self._hist is not None and "hdr" in wire:
            self._hist.decode_and_add(wire["hdr"])
        elif self._hist is None and "values" in wire:
            self._values.extend(wire["values"])
        else:
            raise ValueError("driver processes disagree on whether hdrhistogram is installed")

    def percentile(self, p: float) -> float:
        if not self.count:
            return 0.0
        if self._hist is not None:
            return float(self._hist.get_value_at_percentile(p))
        ordered = sorted(self._values)
        rank = max(1, math.ceil(p / 100.0 * len(ordered)))  # nearest rank
        return float(ordered[rank - 1])

    def summary(self) -> dict[str, float]:
        if not self.count:
            return {"count": 0}
        out: dict[str, float] = {"count": self.count, "mean": self._sum / self.count}
        for p in PERCENTILES:
            out[f"p{p:g}"] = self.percentile(p)
        out["max"] = (
            float(self._hist.get_max_value()) if self._hist is not None else max(self._values)
        )
        return out


@dataclass
class PhaseStats:
    """What one measured phase of one target saw."""

    latencies: dict[str, Latencies] = field(default_factory=dict)
    errors: dict[str, Counter] = field(default_factory=dict)
    error_samples: dict[str, str] = field(default_factory=dict)
    ops_done: int = 0  # every completed op, warmup included: drives the progress line
    errors_seen: int = 0

    def lat(self, op: str) -> Latencies:
        if op not in self.latencies:
            self.latencies[op] = Latencies()
        return self.latencies[op]

    def error(self, op: str, exc: BaseException) -> None:
        name = type(exc).__name__
        self.errors.setdefault(op, Counter())[name] += 1
        self.error_samples.setdefault(name, str(exc)[:300])

    def to_wire(self) -> dict:
        return {
            "latencies": {op: lat.to_wire() for op, lat in self.latencies.items()},
            "errors": {op: dict(c) for op, c in self.errors.items()},
            "error_samples": self.error_samples,
        }

    def add_wire(self, wire: dict) -> None:
        for op, lat in wire["latencies"].items():
            self.lat(op).add_wire(lat)
        for op, counts in wire["errors"].items():
            self.errors.setdefault(op, Counter()).update(counts)
        for name, sample in wire["error_samples"].items():
            self.error_samples.setdefault(name, sample)


class Progress:
    """One status line, rewritten in place with \\r on a terminal, every few seconds otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self._width = 0

    def show(self, text: str) -> None:
        if not self.enabled:
            return
        if self.tty:
            pad = max(0, self._width - len(text))
            sys.stderr.write("\r" + text + " " * pad)
            self._width = len(text)
        else:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def done(self) -> None:
        if self.enabled and self.tty and self._width:
            sys.stderr.write("\n")
            sys.stderr.flush()
        self._width = 0

    @property
    def interval(self) -> float:
        return 0.5 if self.tty else 5.0


# -- subprocesses (redis, etcd) ---------------------------------------------------------------

_LIVE_PROCESSES: set[subprocess.Popen] = set()


def _kill_leftovers() -> None:
    for proc in list(_LIVE_PROCESSES):
        _stop_process(proc)


atexit.register(_kill_leftovers)


def _spawn(cmd: list[str], log_path: str, cwd: str) -> subprocess.Popen:
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd
        )
    _LIVE_PROCESSES.add(proc)
    return proc


def _stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    _LIVE_PROCESSES.discard(proc)


def _log_tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 right now (held open together so that they differ)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOOPBACK, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def missing_requirement(target: str) -> str | None:
    """Why `target` cannot run here (with how to fix it), or None when it can."""
    if target == "redis":
        missing = []
        if shutil.which("redis-server") is None:
            missing.append("the redis-server binary (apt-get install redis-server)")
        if not _has_module("redis"):
            missing.append("the redis Python client (pip install redis)")
        if missing:
            return "redis skipped: missing " + " and ".join(missing)
    if target == "etcd":
        missing = []
        if shutil.which("etcd") is None:
            missing.append("the etcd binary (apt-get install etcd-server)")
        if not (_has_module("aiohttp") or _has_module("httpx")):
            missing.append("an async HTTP client (pip install aiohttp, or pip install httpx)")
        if missing:
            return "etcd skipped: missing " + " and ".join(missing)
    return None


# -- targets ----------------------------------------------------------------------------------


class Target:
    """An async adapter over one store. `session(i)` is what client i calls; most targets
    keep no per-client state and are their own session."""

    name = "?"

    async def setup(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def get(self, key: str) -> Any:
        raise NotImplementedError

    async def put(self, key: str, value: bytes) -> None:
        raise NotImplementedError

    async def load(self, key: str, value: bytes) -> None:
        """The preload's write of a key that does not exist yet."""
        await self.put(key, value)

    def session(self, client_id: int) -> Any:
        return self

    def spec(self) -> dict:
        """How a driver in another process reaches this same store (see `reach`)."""
        raise NotImplementedError(f"{self.name} cannot be driven from several processes")

    @classmethod
    async def reach(cls, spec: dict, clients: int) -> Target:
        """A client-side twin of the target `spec` describes, for `clients` clients; closing
        it closes its connections and leaves the store running."""
        raise NotImplementedError(f"{cls.name} cannot be driven from several processes")

    def describe(self) -> dict:
        return {}

    def extra(self) -> dict:
        """Target-specific figures for the results (reset by `reset_extra`)."""
        return {}

    def reset_extra(self) -> None:
        pass


class DynarayTarget(Target):
    """A dynaray store started for the run, with data in a temporary directory.

    YCSB's update is a blind write. In dynaray a write without context (aput(key, None, v))
    is concurrent with every stored version, so blind updates would pile up siblings on every
    key forever. The clients therefore keep, per key, the context of the last read or write
    of that key (one table for all of them, filled by the load, and given to every driver
    process) and send it with the update; an update of a key with no context yet reads it
    first (that read is part of the update's latency and is counted in `update_reads`).
    Writes of different clients to one key still race as in any Dynamo store: they become
    siblings, and the next read of that key returns them all with one context, so the next
    write resolves them (`max_siblings` shows how far they grew). A write whose answer
    shows siblings remain marks the key, so the next update reads first (`sibling_reads`):
    as an application would, and in a run with no reads (workload W) too.
    """

    name = "dynaray"

    def __init__(self, nodes: int, n: int, r: int, w: int, path: str = "client") -> None:
        self.nodes, self.n, self.r, self.w = nodes, n, r, w
        self.path = path
        self.contexts: dict[str, Any] = {}  # every client's (_DynaraySession)
        self.store = f"bench-{os.getpid()}"
        self.cluster: Any = None
        self.client: Any = None
        self.reset_extra()

    async def setup(self) -> None:
        import dynaray

        self.cluster = await asyncio.to_thread(
            dynaray.start, self.nodes, self.n, self.r, self.w, None, store=self.store
        )
        self.client = self.cluster.client(path=self.path)

    def spec(self) -> dict:
        contexts = {k: bytes(c) for k, c in self.contexts.items() if c is not _SIBLINGS}
        return {
            "name": self.name,
            "store": self.store,
            "path": self.path,
            "contexts": contexts,  # so another driver's updates are one write, as here
            **self.describe(),
        }

    @classmethod
    async def reach(cls, spec: dict, clients: int) -> DynarayTarget:
        import dynaray
        from dynaray import Context

        target = cls(spec["nodes"], spec["n"], spec["r"], spec["w"], spec["path"])
        target.store = spec["store"]
        target.contexts = {key: Context.from_bytes(data) for key, data in spec["contexts"].items()}
        target.client = await asyncio.to_thread(dynaray.connect, spec["store"], path=spec["path"])
        return target  # no cluster: closing it closes the client and leaves the store running

    def use_path(self, path: str) -> None:
        """Send the following requests through another request path of the same store."""
        self.path = path
        if self.client is not None:
            self.client.close()
        self.client = self.cluster.client(path=path)

    async def close(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            cluster, self.cluster = self.cluster, None
            await asyncio.to_thread(cluster.shutdown)

    async def load(self, key: str, value: bytes) -> None:
        self.contexts[key] = await self.client.aput(key, None, value)

    def session(self, client_id: int) -> _DynaraySession:
        return _DynaraySession(self)

    def describe(self) -> dict:
        return {"nodes": self.nodes, "n": self.n, "r": self.r, "w": self.w, "path": self.path}

    def extra(self) -> dict:
        return {
            "update_reads": self.update_reads,
            "sibling_reads": self.sibling_reads,
            "max_siblings": self.max_siblings,
        }

    async def footprint(self) -> dict:
        """What the run's keys cost each node (the nodes' `footprint`): version metadata
        bytes per key after the workload's updates, LMDB size and process memory. Means
        over all the keys (at most 10,000 sampled) of each node; `python -m
        benchmarks.footprint --keys 1000000` gives them at a million keys."""
        nodes = await asyncio.to_thread(self.cluster._ask, "footprint", 10_000)
        sampled = [f for f in nodes.values() if f.get("sampled")]
        if not sampled:
            return {"status": "no keys"}

        def mean(field: str) -> float:
            return round(sum(f[field] for f in sampled) / len(sampled), 1)

        return {
            "status": "ok",
            "keys_per_node": round(sum(f["keys"] for f in sampled) / len(sampled)),
            "metadata_bytes": mean("metadata_bytes"),
            "record_bytes": mean("record_bytes"),
            "disk_bytes": mean("disk_bytes"),
            "rss_bytes": mean("rss_bytes"),
        }

    def reset_extra(self) -> None:
        self.update_reads = 0
        self.sibling_reads = 0
        self.max_siblings = 0


class _DynaraySession:
    """One bench client's calls. The contexts are the target's, shared by every client
    (and seeded by the load), as an application keeps the last context it saw of each key:
    an update is one write, as YCSB's (a blind write) is in the baselines; only a key
    with no context yet is read first. A read refreshes the key's context, so siblings
    that concurrent updates leave are merged by the next update after it."""

    def __init__(self, target: DynarayTarget) -> None:
        self.target = target
        self.client = target.client
        self.contexts = target.contexts

    async def get(self, key: str) -> list:
        result = await self.client.aget(key)
        self.contexts[key] = result.context
        if len(result.values) > self.target.max_siblings:
            self.target.max_siblings = len(result.values)
        return result.values

    async def put(self, key: str, value: bytes) -> None:
        context = self.contexts.get(key, _NO_CONTEXT)
        if context is _NO_CONTEXT or context is _SIBLINGS:
            if context is _NO_CONTEXT:
                self.target.update_reads += 1
            else:
                self.target.sibling_reads += 1
            await self.get(key)
            context = self.contexts[key]
        written = await self.client.aput(key, context, value)
        if written.version_vector == context.version_vector:
            # The answer covers only what was sent: an older value of the coordinator
            # survives beside this write (records.written_context), so siblings remain. An
            # application reads before its next write then, as the next update does here;
            # in a run with no reads (workload W) the siblings would otherwise pile up
            # until every write of a hot key failed with SiblingLimitError.
            self.contexts[key] = _SIBLINGS
        else:
            self.contexts[key] = written


_NO_CONTEXT = object()  # a key none of the clients has read or written yet
_SIBLINGS = object()  # a key whose last write left siblings: read it before writing


class _DictStore:
    """The naive baseline's actor: a dict behind one async Ray actor."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    async def get(self, key: str) -> bytes | None:
        return self.data.get(key)

    async def put(self, key: str, value: bytes) -> None:
        self.data[key] = value


class NaiveTarget(Target):
    """One Ray actor holding a dict, one actor call per operation: no replication, no disk."""

    name = "naive"

    def __init__(self) -> None:
        self.actor: Any = None
        self.owner = False

    async def setup(self) -> None:
        import ray

        cls = ray.remote(_DictStore).options(num_cpus=0, max_concurrency=1000)
        self.actor = cls.remote()
        self.owner = True
        await self.actor.get.remote("warm")

    def spec(self) -> dict:
        return {"name": self.name, "actor": self.actor}

    @classmethod
    async def reach(cls, spec: dict, clients: int) -> NaiveTarget:
        target = cls()
        target.actor = spec["actor"]
        return target  # not the owner: closing it leaves the actor running

    async def close(self) -> None:
        if self.actor is not None and self.owner:
            import ray

            ray.kill(self.actor, no_restart=True)
            self.actor = None

    async def get(self, key: str) -> bytes | None:
        return await self.actor.get.remote(key)

    async def put(self, key: str, value: bytes) -> None:
        await self.actor.put.remote(key, value)

    def describe(self) -> dict:
        return {"what": "one async Ray actor holding a dict"}


class RedisTarget(Target):
    """redis-server on 127.0.0.1, appendonly with fsync every second, data in a temp dir."""

    name = "redis"

    def __init__(self, clients: int) -> None:
        self.clients = clients
        self.proc: subprocess.Popen | None = None
        self.dir: str | None = None
        self.redis: Any = None
        self.port = 0
        self.version = ""

    def _connect(self) -> None:
        import redis.asyncio as aioredis

        self.redis = aioredis.Redis(
            host=LOOPBACK, port=self.port, socket_timeout=30, max_connections=self.clients + 8
        )

    def spec(self) -> dict:
        return {"name": self.name, "port": self.port, "version": self.version}

    @classmethod
    async def reach(cls, spec: dict, clients: int) -> RedisTarget:
        target = cls(clients)
        target.port, target.version = spec["port"], spec["version"]
        target._connect()
        return target  # no server process: closing it closes the connections only

    async def setup(self) -> None:
        reason = missing_requirement("redis")
        if reason:
            raise Skip(reason)
        self.dir = tempfile.mkdtemp(prefix="dynaray-bench-redis-")
        (port,) = free_ports(1)
        self.port = port
        log = os.path.join(self.dir, "redis.log")
        self.proc = _spawn(
            [
                shutil.which("redis-server") or "redis-server",
                "--bind",
                LOOPBACK,
                "--port",
                str(port),
                "--protected-mode",
                "yes",
                "--dir",
                self.dir,
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
                "--daemonize",
                "no",
            ],
            log,
            self.dir,
        )
        self._connect()
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited at start:\n{_log_tail(log)}")
            try:
                await self.redis.ping()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"redis-server did not answer within 20s:\n{_log_tail(log)}"
                    ) from None
                await asyncio.sleep(0.1)
        info = await self.redis.info("server")
        self.version = str(info.get("redis_version", ""))

    async def close(self) -> None:
        try:
            if self.redis is not None:
                closer = getattr(self.redis, "aclose", None) or self.redis.close
                with contextlib.suppress(Exception):
                    await closer()
        finally:
            if self.proc is not None:
                await asyncio.to_thread(_stop_process, self.proc)
                self.proc = None
            if self.dir is not None:
                shutil.rmtree(self.dir, ignore_errors=True)
                self.dir = None

    async def get(self, key: str) -> bytes | None:
        return await self.redis.get(key)

    async def put(self, key: str, value: bytes) -> None:
        await self.redis.set(key, value)

    def describe(self) -> dict:
        return {"version": self.version, "appendonly": "yes", "appendfsync": "everysec"}


class _Http:
    """POST JSON with aiohttp if it is installed, else httpx. Never uses a proxy."""

    def __init__(self, limit: int) -> None:
        self.library = ""
        self._session: Any = None
        self._client: Any = None
        if _has_module("aiohttp"):
            import aiohttp

            self.library = f"aiohttp {aiohttp.__version__}"
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=limit),
                timeout=aiohttp.ClientTimeout(total=30),
                trust_env=False,
            )
        elif _has_module("httpx"):
            import httpx

            self.library = f"httpx {httpx.__version__}"
            self._client = httpx.AsyncClient(
                limits=httpx.Limits(max_connections=limit, max_keepalive_connections=limit),
                timeout=30.0,
                trust_env=False,
            )
        else:
            raise Skip(missing_requirement("etcd") or "etcd skipped: no async HTTP client")

    async def post(self, url: str, payload: dict) -> dict:
        if self._session is not None:
            async with self._session.post(url, json=payload) as resp:
                text = await resp.text()
                status = resp.status
        else:
            resp = await self._client.post(url, json=payload)
            text, status = resp.text, resp.status_code
        if status != 200:
            raise EtcdError(f"HTTP {status} from {url}: {text[:200]}")
        return json.loads(text) if text else {}

    async def get_text(self, url: str) -> str:
        if self._session is not None:
            async with self._session.get(url) as resp:
                return await resp.text()
        return (await self._client.get(url)).text

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._client is not None:
            await self._client.aclose()


class EtcdError(Exception):
    pass


def _b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


class EtcdTarget(Target):
    """Three etcd members on 127.0.0.1 (Raft: every write is a quorum write to disk); client
    i talks to member i mod 3 through the v3 JSON gateway, with linearizable reads."""

    name = "etcd"
    members = 3
    start_timeout = 60.0  # seconds for each member to answer its first read

    def __init__(self, clients: int) -> None:
        self.clients = clients
        self.dir: str | None = None
        self.procs: list[subprocess.Popen] = []
        self.urls: list[str] = []
        self.http: _Http | None = None
        self.version = ""

    async def setup(self) -> None:
        reason = missing_requirement("etcd")
        if reason:
            raise Skip(reason)
        self.http = _Http(self.clients + 8)
        self.dir = tempfile.mkdtemp(prefix="dynaray-bench-etcd-")
        ports = free_ports(2 * self.members)
        names = [f"m{i + 1}" for i in range(self.members)]
        client_ports, peer_ports = ports[: self.members], ports[self.members :]
        peers = [f"http://{LOOPBACK}:{p}" for p in peer_ports]
        self.urls = [f"http://{LOOPBACK}:{p}" for p in client_ports]
        cluster = ",".join(f"{n}={u}" for n, u in zip(names, peers, strict=True))
        etcd = shutil.which("etcd") or "etcd"
        logs = []
        for name, url, peer in zip(names, self.urls, peers, strict=True):
            log = os.path.join(self.dir, f"{name}.log")
            logs.append(log)
            cmd = [
                etcd,
                "--name",
                name,
                "--data-dir",
                os.path.join(self.dir, name),
                "--listen-client-urls",
                url,
                "--advertise-client-urls",
                url,
                "--listen-peer-urls",
                peer,
                "--initial-advertise-peer-urls",
                peer,
                "--initial-cluster",
                cluster,
                "--initial-cluster-token",
                f"dynaray-bench-{os.getpid()}",
                "--initial-cluster-state",
                "new",
                "--log-level",
                "warn",
            ]
            self.procs.append(_spawn(cmd, log, self.dir))
        deadline = time.monotonic() + self.start_timeout
        for url, proc, log in zip(self.urls, self.procs, logs, strict=True):
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"etcd member at {url} exited at start:\n{_log_tail(log)}")
                try:
                    await self.http.post(f"{url}/v3/kv/range", {"key": _b64("probe")})
                    break
                except Exception as exc:  # noqa: BLE001 - not up yet, or answering wrong
                    if time.monotonic() > deadline:
                        # The last answer says which: no connection, or an HTTP error (an
                        # etcd before 3.4 has no /v3 gateway: 404).
                        raise RuntimeError(
                            f"etcd member at {url} did not answer a read within "
                            f"{self.start_timeout:g}s (last: "
                            f"{type(exc).__name__}: {exc}); etcd 3.4 or newer is needed for "
                            f"its /v3 JSON gateway:\n{_log_tail(log)}"
                        ) from None
                    await asyncio.sleep(0.2)
        with contextlib.suppress(Exception):
            self.version = json.loads(await self.http.get_text(f"{self.urls[0]}/version")).get(
                "etcdserver", ""
            )

    async def close(self) -> None:
        try:
            if self.http is not None:
                with contextlib.suppress(Exception):
                    await self.http.close()
                self.http = None
        finally:
            for proc in self.procs:
                await asyncio.to_thread(_stop_process, proc)
            self.procs = []
            if self.dir is not None:
                shutil.rmtree(self.dir, ignore_errors=True)
                self.dir = None

    def spec(self) -> dict:
        return {"name": self.name, "urls": self.urls, "version": self.version}

    @classmethod
    async def reach(cls, spec: dict, clients: int) -> EtcdTarget:
        target = cls(clients)
        target.urls, target.version = list(spec["urls"]), spec["version"]
        target.http = _Http(clients + 8)
        return target  # no member processes: closing it closes the HTTP client only

    def session(self, client_id: int) -> _EtcdSession:
        assert self.http is not None
        return _EtcdSession(self.http, self.urls[client_id % len(self.urls)])

    async def load(self, key: str, value: bytes) -> None:
        await self.session(hash(key)).put(key, value)

    def describe(self) -> dict:
        return {
            "version": self.version,
            "members": self.members,
            "http_client": self.http.library if self.http else "",
        }


class _EtcdSession:
    def __init__(self, http: _Http, url: str) -> None:
        self.http = http
        self.range_url = f"{url}/v3/kv/range"
        self.put_url = f"{url}/v3/kv/put"

    async def get(self, key: str) -> bytes | None:
        answer = await self.http.post(self.range_url, {"key": _b64(key)})
        kvs = answer.get("kvs")
        return base64.b64decode(kvs[0].get("value", "")) if kvs else None

    async def put(self, key: str, value: bytes) -> None:
        await self.http.post(self.put_url, {"key": _b64(key), "value": _b64(value)})


# -- the load ---------------------------------------------------------------------------------


@dataclass
class Settings:
    workload: Workload
    distribution: str
    keys: int
    value_size: int
    clients: int
    duration: float
    warmup: float
    seed: int
    op_timeout: float
    progress: Progress
    # Total ops/s to offer, spread evenly over the clients; None runs them closed-loop.
    rate: float | None = None


async def _progress_loop(label: str, stats: PhaseStats, start: float, settings: Settings) -> None:
    progress = settings.progress
    last_ops, last_t = 0, start
    while True:
        await asyncio.sleep(progress.interval)
        now = time.perf_counter()
        elapsed = now - start
        phase = "warmup" if elapsed < settings.warmup else "run"
        shown = elapsed if phase == "warmup" else elapsed - settings.warmup
        total = settings.warmup if phase == "warmup" else settings.duration
        rate = (stats.ops_done - last_ops) / max(now - last_t, 1e-9)
        last_ops, last_t = stats.ops_done, now
        progress.show(
            f"  {label:<16} {phase:<6} {min(shown, total):5.1f}/{total:g}s  "
            f"{stats.ops_done:>9,} ops  {rate:>9,.0f} ops/s  {stats.errors_seen:,} errors"
        )


async def preload(target: Target, settings: Settings) -> dict:
    """Write every key once, `settings.clients` writes at a time."""
    next_index = 0
    errors: Counter = Counter()
    samples: dict[str, str] = {}
    done = 0
    started = time.perf_counter()
    last_shown = started

    async def worker(wid: int) -> None:
        nonlocal next_index, done, last_shown
        rng = random.Random(settings.seed * 7919 + wid)
        while next_index < settings.keys:
            index = next_index
            next_index += 1
            try:
                async with asyncio.timeout(settings.op_timeout):
                    await target.load(key_name(index), rng.randbytes(settings.value_size))
            except Exception as exc:
                errors[type(exc).__name__] += 1
                samples.setdefault(type(exc).__name__, str(exc)[:300])
            done += 1
            now = time.perf_counter()
            if now - last_shown >= settings.progress.interval:
                last_shown = now
                settings.progress.show(
                    f"  {target.name:<16} load   {done:>9,}/{settings.keys:,} keys  "
                    f"{done / (now - started):>9,.0f} keys/s  {sum(errors.values()):,} errors"
                )

    await asyncio.gather(*(worker(i) for i in range(min(settings.clients, settings.keys))))
    settings.progress.done()
    seconds = time.perf_counter() - started
    if errors and sum(errors.values()) == settings.keys:
        raise RuntimeError(f"every preload write failed: {dict(errors)} {samples}")
    return {
        "keys": settings.keys,
        "seconds": round(seconds, 3),
        "keys_per_s": round(settings.keys / seconds, 1) if seconds else None,
        "errors": dict(errors),
    }


@dataclass
class PhaseRun:
    """What the clients of one driver process saw in one measured phase."""

    stats: PhaseStats
    measured: float  # seconds of the measured window
    extra: dict  # the target's own counters over the window (maxima as they are)

    def to_wire(self) -> dict:
        return {"stats": self.stats.to_wire(), "measured": self.measured, "extra": self.extra}


async def drive(target: Target, settings: Settings, label: str, processes: int = 1) -> dict:
    """Warm up, then measure: `settings.clients` clients for `settings.duration`, in this
    driver process or spread over `processes` driver processes."""
    if processes > 1:
        return _phase_report(*await _spread(target, settings, label, processes))
    return _phase_report(await run_clients(target, settings, label), 1)


async def run_clients(
    target: Target, settings: Settings, label: str, first_client: int = 0, at: float = 0.0
) -> PhaseRun:
    """`settings.clients` closed-loop (or paced) clients in this process, numbered from
    `first_client`, starting at wall-clock time `at` (at once if it has passed), so the
    drivers of one phase measure the same window."""
    stats = PhaseStats()
    chooser = key_chooser(settings.distribution, settings.keys)
    read_fraction = settings.workload.read_fraction
    if at > time.time():
        await asyncio.sleep(at - time.time())
    start = time.perf_counter()
    measure_from = start + settings.warmup
    end = measure_from + settings.duration
    target.reset_extra()
    extra_at_measure: dict = {}
    snapshot_taken = False

    # Paced: each client starts an op every `interval` seconds on a fixed schedule, and an
    # op's latency counts from when it was due, so queueing behind a slow op is measured
    # (no coordinated omission).
    interval = settings.clients / settings.rate if settings.rate else None

    async def client(index: int) -> None:
        nonlocal snapshot_taken
        cid = first_client + index
        session = target.session(cid)
        rng = random.Random(settings.seed * 1_000_003 + cid)
        due = start + (interval * index / settings.clients if interval else 0.0)
        while True:
            t0 = time.perf_counter()
            if interval:
                if due > t0:
                    await asyncio.sleep(due - t0)
                t0, due = due, due + interval
            if t0 >= end:
                return
            if not snapshot_taken and t0 >= measure_from:
                snapshot_taken = True
                extra_at_measure.update(target.extra())
            key = key_name(chooser.next(rng))
            if rng.random() < read_fraction:
                op, call = "read", session.get(key)
            else:
                op, call = "update", session.put(key, rng.randbytes(settings.value_size))
            try:
                async with asyncio.timeout(settings.op_timeout):
                    await call
            except Exception as exc:
                stats.errors_seen += 1
                if t0 >= measure_from:
                    stats.error(op, exc)
                await asyncio.sleep(0.01)  # a failing target is not spun on
                continue
            t1 = time.perf_counter()
            stats.ops_done += 1
            if t0 >= measure_from:
                stats.lat(op).record(t1 - t0)

    ticker = asyncio.create_task(_progress_loop(label, stats, start, settings))
    try:
        await asyncio.gather(*(client(i) for i in range(settings.clients)))
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
        settings.progress.done()
    # The window ops are counted from: those started in it, however long they then took.
    # (Until the last op ended, the window would grow by the slowest op's latency.)
    measured = max(end - measure_from, 1e-9)
    # Counters over the measured window only; a maximum stays what it is.
    extra = {
        k: v if k.startswith("max_") else v - extra_at_measure.get(k, 0)
        for k, v in target.extra().items()
    }
    return PhaseRun(stats, measured, extra)


def _phase_report(run: PhaseRun, processes: int) -> dict:
    stats, measured, extra = run.stats, run.measured, run.extra
    completed = sum(lat.count for lat in stats.latencies.values())
    return {
        "status": "ok",
        "driver_processes": processes,
        "measured_seconds": round(measured, 3),
        "throughput_ops_s": round(completed / measured, 1),
        "ops": {
            op: {"latency_us": lat.summary(), "ops_s": round(lat.count / measured, 1)}
            for op, lat in sorted(stats.latencies.items(), key=lambda kv: OPS.index(kv[0]))
        },
        "errors": {op: dict(c) for op, c in stats.errors.items()},
        "error_count": sum(sum(c.values()) for c in stats.errors.values()),
        "error_samples": stats.error_samples,
        **({"extra": extra} if extra else {}),
    }


class _Driver:
    """A benchmark driver in a process of its own (a Ray actor): it reaches the target
    the main driver set up, then runs its share of the clients from an agreed moment."""

    def __init__(self) -> None:
        self.target: Target | None = None

    async def prepare(self, spec: dict, clients: int) -> None:
        self.target = await reach(spec, clients)

    async def run(self, settings: Settings, label: str, first_client: int, at: float) -> dict:
        assert self.target is not None
        return (await run_clients(self.target, settings, label, first_client, at)).to_wire()

    async def close(self) -> None:
        if self.target is not None:
            await self.target.close()


async def reach(spec: dict, clients: int) -> Target:
    """A client-side Target for a store another driver set up, from its `spec()`."""
    kinds = (DynarayTarget, NaiveTarget, RedisTarget, EtcdTarget)
    return await next(k for k in kinds if k.name == spec["name"]).reach(spec, clients)


async def _spread(
    target: Target, settings: Settings, label: str, processes: int
) -> tuple[PhaseRun, int]:
    """Run the phase's clients in `processes` driver processes (Ray actors, no CPU
    reserved), each with an even share of the clients and of a paced rate, all starting
    at one moment once every driver has reached the target, and merge what they saw:
    latencies through their HDR histograms, counts summed. Returns the merge and how many
    processes ran (no more than there are clients)."""
    import ray

    shares = [
        settings.clients // processes + (i < settings.clients % processes) for i in range(processes)
    ]
    shares = [share for share in shares if share]
    spec = target.spec()
    driver = ray.remote(_Driver).options(num_cpus=0)
    drivers = [driver.remote() for _ in shares]
    settings.progress.show(f"  {label:<16} run    on {len(shares)} driver processes")
    try:
        pairs = list(zip(drivers, shares, strict=True))
        await asyncio.gather(*(actor.prepare.remote(spec, share) for actor, share in pairs))
        at = time.time() + 0.5  # one start for all: the drivers' windows line up
        calls = []
        first = 0
        for actor, share in pairs:
            part = dataclasses.replace(
                settings,
                clients=share,
                rate=settings.rate * share / settings.clients if settings.rate else None,
                progress=Progress(False),
            )
            calls.append(actor.run.remote(part, label, first, at))
            first += share
        wires = await asyncio.gather(*calls)
    finally:
        settings.progress.done()
        with contextlib.suppress(Exception):
            await asyncio.gather(*(actor.close.remote() for actor in drivers))
        for actor in drivers:
            ray.kill(actor, no_restart=True)
    merged = PhaseRun(PhaseStats(), 0.0, {})
    for wire in wires:
        merged.stats.add_wire(wire["stats"])
        merged.measured = max(merged.measured, wire["measured"])
        for key, value in wire["extra"].items():
            old = merged.extra.get(key, 0)
            merged.extra[key] = max(old, value) if key.startswith("max_") else old + value
    return merged, len(shares)


async def bulk(target: DynarayTarget, settings: Settings) -> dict:
    """1,000-key batches through the client's get_many / put_many, if the client has them.

    Shapes: get_many(keys) and put_many({key: (context, value)}); the async twins
    aget_many / aput_many are used when present, else the sync calls run in a thread.
    Batches of reads pick random preloaded keys; batches of writes create fresh keys (no
    context is needed, so no siblings are made).
    """
    client = target.client
    if not (hasattr(client, "get_many") and hasattr(client, "put_many")):
        print("bulk: the client has no get_many/put_many: the bulk API is not available")
        return {"status": "unavailable"}

    def call(name: str) -> Callable:
        async_twin = getattr(client, f"a{name}", None)
        if async_twin is not None:
            return async_twin
        sync = getattr(client, name)
        return lambda *a: asyncio.to_thread(sync, *a)

    calls = {"get_many": call("get_many"), "put_many": call("put_many")}
    workers = max(1, min(settings.clients, 4))
    seconds = max(settings.duration / 2, 1.0)
    results: dict[str, Any] = {"status": "ok", "batch": BULK_BATCH, "workers": workers}
    for op, fn in calls.items():
        settings.progress.show(f"  {target.name:<16} bulk   {op} for {seconds:g}s")
        results[op] = await _bulk_phase(op, fn, workers, seconds, settings)
        settings.progress.done()
    return results


async def _bulk_phase(
    op: str, fn: Callable, workers: int, seconds: float, settings: Settings
) -> dict:
    lat = Latencies()
    errors: Counter = Counter()
    samples: dict[str, str] = {}
    done_keys = 0
    start = time.perf_counter()
    end = start + seconds

    async def worker(wid: int) -> None:
        nonlocal done_keys
        rng = random.Random(settings.seed * 31 + wid)
        batch_no = 0
        while time.perf_counter() < end:
            batch_no += 1
            if op == "get_many":  # distinct keys: each one is read once
                batch: list | dict = [
                    key_name(i)
                    for i in rng.sample(range(settings.keys), min(BULK_BATCH, settings.keys))
                ]
            else:
                batch = {
                    f"bulk:{wid}:{batch_no}:{i}": (None, rng.randbytes(settings.value_size))
                    for i in range(BULK_BATCH)
                }
            t0 = time.perf_counter()
            try:
                async with asyncio.timeout(max(settings.op_timeout, 60.0)):
                    answers = await fn(batch)
            except Exception as exc:
                errors[type(exc).__name__] += 1
                samples.setdefault(type(exc).__name__, str(exc)[:300])
                await asyncio.sleep(0.05)
                continue
            elapsed_batch = time.perf_counter() - t0
            # Each key has its own outcome: only those that succeeded count.
            failed = [a for a in answers.values() if isinstance(a, Exception)]
            done_keys += len(answers) - len(failed)
            for exc in failed:
                errors[type(exc).__name__] += 1
                samples.setdefault(type(exc).__name__, str(exc)[:300])
            if not failed:
                lat.record(elapsed_batch)

    await asyncio.gather(*(worker(i) for i in range(workers)))
    elapsed = time.perf_counter() - start
    return {
        "batches": lat.count,  # of which every key succeeded
        "batch_latency_us": lat.summary(),
        "keys_per_s": round(done_keys / elapsed, 1),
        "errors": dict(errors),
        "error_samples": samples,
    }


def make_target(name: str, args: argparse.Namespace) -> Target:
    if name == "dynaray":
        return DynarayTarget(args.nodes, args.n, args.r, args.w)
    if name == "naive":
        return NaiveTarget()
    if name == "redis":
        return RedisTarget(args.clients)
    if name == "etcd":
        return EtcdTarget(args.clients)
    raise ValueError(name)


async def run_target(name: str, args: argparse.Namespace, settings: Settings) -> dict[str, dict]:
    """Set up one target, load it, measure it (and its paths / bulk), and always stop it."""
    target = make_target(name, args)
    results: dict[str, dict] = {}
    label = name  # the run under way: a failure is its result, not the runs before it
    try:
        try:
            await target.setup()
        except Skip as skip:
            print(str(skip))
            return {name: {"status": "skipped", "reason": str(skip)}}
        loaded = await preload(target, settings)
        if isinstance(target, DynarayTarget) and args.paths:
            for path in PATHS:
                label = name if path == "client" else f"{name}[{path}]"
                target.use_path(path)
                results[label] = await drive(target, settings, label, args.processes)
                results[label]["preload"] = loaded
                results[label]["config"] = target.describe()
        else:
            results[name] = await drive(target, settings, name, args.processes)
            results[name]["preload"] = loaded
            results[name]["config"] = target.describe()
            if args.half_peak and results[name]["throughput_ops_s"] > 0:
                half = results[name]["throughput_ops_s"] / 2
                paced = dataclasses.replace(settings, rate=half)
                label = f"{name}@half"
                results[label] = await drive(target, paced, label, args.processes)
                results[label]["offered_ops_s"] = round(half, 1)
                results[label]["config"] = target.describe()
        if isinstance(target, DynarayTarget) and name in results:
            # After the workload's updates, before bulk loads keys of another shape.
            try:
                results[name]["footprint"] = await target.footprint()
            except Exception as exc:  # noqa: BLE001 - the measured run stands without it
                results[name]["footprint"] = {"status": "failed", "reason": repr(exc)}
        if isinstance(target, DynarayTarget) and args.bulk:
            label = f"{name} bulk"
            target.use_path("client")
            results[name]["bulk"] = await bulk(target, settings)
        return results
    except Exception as exc:
        settings.progress.done()
        message = f"{type(exc).__name__}: {exc}"
        print(f"{label} failed: {message}", file=sys.stderr)
        if label == f"{name} bulk" and name in results:
            results[name]["bulk"] = {"status": "failed", "reason": message}
        else:
            results[label] = {"status": "failed", "reason": message}
        return results
    finally:
        try:
            await target.close()
        except Exception as exc:
            print(f"{name}: error while stopping it: {exc!r}", file=sys.stderr)


# -- reporting --------------------------------------------------------------------------------


def _ms(us: float | None) -> str:
    if us is None:
        return "-"
    return f"{us / 1000:.2f}"


def _ratio(value: float | None, base: float | None) -> str:
    if not value or not base:
        return "-"
    return f"{value / base:.2f}x"


def _ran(results: dict[str, dict]) -> dict[str, dict]:
    return {k: v for k, v in results.items() if v.get("status") == "ok"}


def format_report(report: dict) -> str:
    s = report["settings"]
    results = report["targets"]
    ran = _ran(results)
    lines = [
        f"workload {s['workload']} ({s['workload_text']}), {s['distribution']} keys"
        + (f" (scrambled, theta {ZIPFIAN_THETA})" if s["distribution"] == "zipfian" else "")
        + f", {s['keys']:,} keys, {s['value_size']}-byte values, {s['clients']} clients"
        + (f" in {s['processes']} driver processes" if s.get("processes", 1) > 1 else "")
        + f", {s['duration']:g}s measured after {s['warmup']:g}s warmup, seed {s['seed']}"
        + (f"; every target paced at {s['rate']:,g} ops/s" if s.get("rate") else ""),
        f"dynaray: {s['nodes']} nodes, N={s['n']} R={s['r']} W={s['w']}; "
        f"machine: {report['environment']['cpus']} CPUs, Python {report['environment']['python']}",
        "",
    ]
    # Ratios of closed-loop peaks only: a paced run's throughput is the rate it was given.
    paced = bool(s.get("rate"))
    bases = {
        base: None if paced else ran.get(base, {}).get("throughput_ops_s")
        for base in ("naive", "redis", "etcd")
    }
    header = f"{'target':<18}{'ops/s':>12}" + "".join(f"{'vs ' + b:>10}" for b in bases)
    header += f"{'errors':>9}"
    lines += [header, "-" * len(header)]
    for name, res in results.items():
        if res.get("status") != "ok":
            reason = res.get("reason", "").removeprefix(f"{name} skipped: ")
            lines.append(f"{name:<18}{res.get('status', '?'):>12}   {reason}")
            continue
        thr = res["throughput_ops_s"]
        peak = None if "@" in name else thr
        ratios = "".join(f"{_ratio(peak, base):>10}" for base in bases.values())
        lines.append(f"{name:<18}{thr:>12,.0f}{ratios}{res['error_count']:>9,}")
    lines.append("")
    cols = ["count", "mean"] + [f"p{p:g}" for p in PERCENTILES] + ["max"]
    header = f"{'latency (ms)':<18}{'op':<8}" + "".join(f"{c:>10}" for c in cols)
    lines += [header, "-" * len(header)]
    for name, res in ran.items():
        for op, figures in res["ops"].items():
            lat = figures["latency_us"]
            cells = [f"{lat.get('count', 0):>10,}"] + [f"{_ms(lat.get(c)):>10}" for c in cols[1:]]
            lines.append(f"{name:<18}{op:<8}" + "".join(cells))
    for name, res in ran.items():
        if res["error_count"]:
            lines.append(f"{name} errors: {res['errors']}")
            for exc, sample in res.get("error_samples", {}).items():
                lines.append(f"  {exc}: {sample}")
        if res.get("extra"):
            lines.append(f"{name}: " + ", ".join(f"{k} {v:,}" for k, v in res["extra"].items()))
    paths = {k: v for k, v in ran.items() if k == "dynaray" or k.startswith("dynaray[")}
    if len(paths) > 1:
        lines += ["", "request paths (the Dynamo paper's Table 2: client- vs server-driven)"]
        header = (
            f"{'path':<18}{'read mean':>11}{'read p99.9':>12}{'write mean':>12}"
            f"{'write p99.9':>13}{'ops/s':>10}"
        )
        lines += [header, "-" * len(header)]
        for name, res in paths.items():
            read = res["ops"].get("read", {}).get("latency_us", {})
            write = res["ops"].get("update", {}).get("latency_us", {})
            path = res.get("config", {}).get("path", name)
            lines.append(
                f"{path:<18}{_ms(read.get('mean')):>11}{_ms(read.get('p99.9')):>12}"
                f"{_ms(write.get('mean')):>12}{_ms(write.get('p99.9')):>13}"
                f"{res['throughput_ops_s']:>10,.0f}"
            )
        lines.append("(milliseconds)")
    foot = ran.get("dynaray", {}).get("footprint")
    if foot and foot.get("status") == "ok":
        mib = 1 << 20
        lines += [
            "",
            f"footprint after the run: {foot['keys_per_node']:,} keys per node, version "
            f"metadata {foot['metadata_bytes']:.1f} B/key (record {foot['record_bytes']:.1f} B), "
            f"LMDB {foot['disk_bytes'] / mib:.1f} MiB, node memory "
            f"{foot['rss_bytes'] / mib:.0f} MiB (at a million keys: python -m "
            "benchmarks.footprint)",
        ]
    bulk_res = ran.get("dynaray", {}).get("bulk")
    if bulk_res and bulk_res.get("status") == "failed":
        lines += ["", f"bulk failed: {bulk_res.get('reason')}"]
    if bulk_res and bulk_res.get("status") == "ok":
        lines += ["", f"bulk ({bulk_res['batch']:,}-key batches, {bulk_res['workers']} workers)"]
        for op in ("get_many", "put_many"):
            b = bulk_res[op]
            lat = b["batch_latency_us"]
            lines.append(
                f"  {op:<9} {b['keys_per_s']:>12,.0f} keys/s  batch p50 {_ms(lat.get('p50'))} ms"
                f"  p99 {_ms(lat.get('p99'))} ms  errors {sum(b['errors'].values())}"
            )
    dyn = None if paced else ran.get("dynaray", {}).get("throughput_ops_s")
    names = {
        "naive": "the naive one-actor dict",
        "redis": "redis (appendfsync everysec)",
        "etcd": "etcd (3 members)",
    }
    if dyn and any(bases.values()):
        against = [f"{dyn / base:.2f}x {names[b]}" for b, base in bases.items() if base]
        lines += [
            "",
            f"dynaray (N={s['n']} R={s['r']} W={s['w']}, writes fsynced before the ack) did "
            f"{dyn:,.0f} ops/s: " + ", ".join(against) + " on this machine.",
        ]
    return "\n".join(lines)


def write_png(report: dict, path: str) -> bool:
    """Draw the report into a PNG at path; False (and why, printed) when it cannot."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"PNG {path} skipped: matplotlib is not installed (pip install matplotlib)")
        return False
    fig = draw(report)
    if fig is None:
        print(f"PNG {path} skipped: no target ran")
        return False
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def draw(report: dict):  # -> matplotlib Figure | None (matplotlib is imported only here)
    """The report's chart: throughput of every target that ran, and a latency panel per
    operation type with one line per target; None when no target ran."""
    import matplotlib.pyplot as plt

    ran = _ran(report["targets"])
    if not ran:
        return None
    names = list(ran)
    ops = list(dict.fromkeys(op for n in names for op in ran[n]["ops"]))
    # One colour per target, the same for its run paced at half peak (paler and dashed), so
    # each line and bar reads as "which store" first and "at what load" second.
    bases = list(dict.fromkeys(n.removesuffix("@half") for n in names))
    palette = plt.get_cmap("tab10")
    colour = {b: palette(i % 10) for i, b in enumerate(bases)}
    fig, axes = plt.subplots(1, 1 + len(ops), figsize=(5 + 5 * len(ops), 5), squeeze=False)
    ax1, lat_axes = axes[0][0], axes[0][1:]
    thr = [ran[n]["throughput_ops_s"] for n in names]
    bars = ax1.bar(
        names,
        thr,
        color=[colour[n.removesuffix("@half")] for n in names],
        alpha=0.9,
        hatch=["//" if n.endswith("@half") else "" for n in names],
    )
    ax1.bar_label(bars, labels=[f"{t:,.0f}" for t in thr], fontsize=8)
    ax1.set_ylabel("operations / second")
    ax1.set_title("throughput (hatched: paced at half peak)")
    ax1.tick_params(axis="x", rotation=30)
    for tick in ax1.get_xticklabels():
        tick.set_horizontalalignment("right")
    labels = [f"p{p:g}" for p in PERCENTILES]
    for ax, op in zip(lat_axes, ops, strict=True):
        for n in names:
            if op not in ran[n]["ops"]:
                continue
            lat = ran[n]["ops"][op]["latency_us"]
            half = n.endswith("@half")
            ax.plot(
                labels,
                [lat.get(lb, 0) / 1000 for lb in labels],
                color=colour[n.removesuffix("@half")],
                linestyle="--" if half else "-",
                marker="o",
                alpha=0.6 if half else 1.0,
                label=n,
            )
        ax.set_yscale("log")
        ax.set_ylabel("latency (ms, log scale)")
        ax.set_title(f"{op} latency (dashed: paced at half peak)")
        ax.grid(True, which="major", axis="y", alpha=0.3)
    # One legend for every latency panel, under them, where it hides no line.
    handles, names_drawn = lat_axes[0].get_legend_handles_labels() if ops else ([], [])
    s = report["settings"]
    fig.suptitle(
        f"workload {s['workload']}, {s['distribution']}, {s['keys']:,} keys, "
        f"{s['value_size']} B values, {s['clients']} clients, {s['duration']:g}s"
    )
    fig.tight_layout(rect=(0, 0.08 if handles else 0, 1, 1))
    if handles:
        fig.legend(handles, names_drawn, loc="lower center", ncol=min(len(handles), 8), fontsize=8)
    return fig


def _versions() -> dict[str, str]:
    from importlib import metadata

    found = {}
    for dist in ("ray", "dynaray", "hdrhistogram", "redis", "aiohttp", "httpx", "matplotlib"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[dist] = metadata.version(dist)
    return found


# -- entry point ------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="dynaray bench",
        description="YCSB-style throughput and latency of dynaray against a one-actor dict, "
        "redis and etcd, all on this machine.",
    )
    p.add_argument(
        "--workload",
        type=str.upper,
        choices=sorted(WORKLOADS),
        default="A",
        help="A 50/50 read/update, B 95/5, C read only, W update only (default A)",
    )
    p.add_argument(
        "--distribution",
        choices=("zipfian", "uniform"),
        default="zipfian",
        help="how keys are drawn (default zipfian: scrambled, theta 0.99)",
    )
    p.add_argument("--keys", type=int, default=10_000, help="keys loaded (default 10,000)")
    p.add_argument("--value-size", type=int, default=100, help="bytes per value (default 100)")
    p.add_argument("--clients", type=int, default=64, help="asyncio clients (default 64)")
    p.add_argument(
        "--processes",
        type=int,
        default=1,
        help="driver processes the clients are spread over (default 1: all in this one)",
    )
    p.add_argument("--duration", type=float, default=10.0, help="seconds measured (default 10)")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first (default 2)")
    p.add_argument("--nodes", type=int, default=5, help="dynaray storage nodes (default 5)")
    p.add_argument("--n", type=int, default=3, help="dynaray's N, replicas per key (default 3)")
    p.add_argument("--r", type=int, default=2, help="dynaray's read quorum R (default 2)")
    p.add_argument("--w", type=int, default=2, help="dynaray's write quorum W (default 2)")
    p.add_argument(
        "--targets",
        default=",".join(ALL_TARGETS),
        help=f"comma list of {', '.join(ALL_TARGETS)} (default all)",
    )
    p.add_argument("--paths", action="store_true", help="also run dynaray via paths router and any")
    p.add_argument("--bulk", action="store_true", help="measure get_many/put_many batches")
    p.add_argument(
        "--rate",
        type=float,
        metavar="OPS",
        help="offer this many ops/s in total on a fixed schedule (default: closed loop)",
    )
    p.add_argument(
        "--half-peak",
        action="store_true",
        help="after each closed-loop run, run again paced at half the throughput it reached",
    )
    p.add_argument("--json", metavar="FILE", help="write all results as JSON")
    p.add_argument("--png", metavar="FILE", help="draw throughput and latency (matplotlib)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"(default {DEFAULT_SEED})")
    p.add_argument("--op-timeout", type=float, default=30.0, help="op deadline, s (default 30)")
    p.add_argument("--no-progress", action="store_true", help="no progress line")
    args = p.parse_args(argv)
    targets = [t.strip().lower() for t in args.targets.split(",") if t.strip()]
    unknown = [t for t in targets if t not in ALL_TARGETS]
    if unknown or not targets:
        p.error(f"unknown target(s) {unknown}; choose from {', '.join(ALL_TARGETS)}")
    args.targets = list(dict.fromkeys(targets))
    for name in ("keys", "value_size", "clients", "nodes", "processes"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.duration <= 0 or args.warmup < 0 or args.op_timeout <= 0:
        p.error("--duration and --op-timeout must be positive, --warmup not negative")
    if args.rate is not None and args.rate <= 0:
        p.error("--rate must be positive")
    if args.half_peak and args.rate is not None:
        p.error("--half-peak paces each target at half of its own peak: leave out --rate")
    if args.half_peak and args.paths:
        p.error("--half-peak and --paths cannot be combined")
    if (args.paths or args.bulk) and "dynaray" not in args.targets:
        p.error("--paths and --bulk measure dynaray: include it in --targets")
    return args


def _start_ray() -> bool:
    """Connect to Ray (embedded local one unless RAY_ADDRESS says otherwise); True if started."""
    import ray

    if ray.is_initialized():
        return False
    # Per-task event reports cost CPU on a small machine and are not part of either system.
    os.environ.setdefault("RAY_task_events_report_interval_ms", "0")
    ray.init(
        namespace="dynaray",
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,
    )
    return True


async def run_all(args: argparse.Namespace, settings: Settings) -> dict[str, dict]:
    results: dict[str, dict] = {}
    for name in args.targets:
        results.update(await run_target(name, args, settings))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = Settings(
        workload=WORKLOADS[args.workload],
        distribution=args.distribution,
        keys=args.keys,
        value_size=args.value_size,
        clients=args.clients,
        duration=args.duration,
        warmup=args.warmup,
        seed=args.seed,
        op_timeout=args.op_timeout,
        progress=Progress(not args.no_progress),
        rate=args.rate,
    )
    started_ray = False
    if {"dynaray", "naive"} & set(args.targets) or args.processes > 1:
        started_ray = _start_ray()  # several driver processes are Ray actors
    try:
        results = asyncio.run(run_all(args, settings))
    finally:
        _kill_leftovers()
        if started_ray:
            import ray

            ray.shutdown()
    report = {
        "settings": {
            "workload": args.workload,
            "workload_text": settings.workload.text,
            "read_fraction": settings.workload.read_fraction,
            "distribution": args.distribution,
            "zipfian_theta": ZIPFIAN_THETA if args.distribution == "zipfian" else None,
            "keys": args.keys,
            "value_size": args.value_size,
            "clients": args.clients,
            "processes": args.processes,
            "duration": args.duration,
            "warmup": args.warmup,
            "nodes": args.nodes,
            "n": args.n,
            "r": args.r,
            "w": args.w,
            "seed": args.seed,
            "targets": args.targets,
            "paths": args.paths,
            "bulk": args.bulk,
            "rate": args.rate,
            "half_peak": args.half_peak,
        },
        "environment": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "latency_histogram": "hdrhistogram" if _HDR is not None else "sorted list",
            "versions": _versions(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
        "targets": results,
    }
    print(format_report(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"\nresults written to {args.json}")
    if args.png and write_png(report, args.png):
        print(f"chart written to {args.png}")
    failed = [
        k
        for k, v in results.items()
        if v.get("status") == "failed" or v.get("bulk", {}).get("status") == "failed"
    ]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
