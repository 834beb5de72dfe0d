"""Partition-aware request routing: the client half of Dynamo's request path.

Routing caches the ring, refreshes it from a random node now and then, sends each write
straight to the key's coordinator (the first healthy node of its top N) and coordinates
reads itself, one key or a batch, asking the replicas (client-driven coordination). It speaks
only encoded bytes and wire clocks; the Client and the Router actor wrap it. The paper's
other two paths stay selectable: through the Router actor, or to any node, which forwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Coroutine, Iterable, Iterator
from typing import Any

from dynaray import codec, quorum, reads, records
from dynaray.codec import key_repr
from dynaray.errors import NodeError, QuorumError, RequestTimeout, StorageError, Unavailable
from dynaray.ring import Ring
from dynaray.transport import PeerUnavailable, Transport, unpack_handle

log = logging.getLogger(__name__)

PATHS = ("client", "router", "any")
REQUEST_TIMEOUT = 10.0
RING_REFRESH = 5.0
RETRY_AFTER = 1.0
REPLICA_TIMEOUT = 2.0  # until the nodes tell theirs
MANY_CHUNK = 512  # keys per call of a get_many / put_many (coordinate_batch, replica_get)


class Routing:
    """Send requests to coordinators. One per Client; the Router actor holds one too."""

    def __init__(
        self,
        nodes: dict[str, Any],
        *,
        path: str = "client",
        router: Any = None,
        request_timeout: float = REQUEST_TIMEOUT,
        ring_refresh: float = RING_REFRESH,
        rng: random.Random | None = None,
        only: Iterable[str] | None = None,
    ) -> None:
        if path not in PATHS:
            raise ValueError(f"path must be one of {PATHS}, got {path!r}")
        if path == "router" and router is None:
            raise ValueError("path='router' needs the store's Router actor")
        if (
            not isinstance(request_timeout, int | float)
            or isinstance(request_timeout, bool)
            or not 0 < request_timeout < float("inf")
        ):
            raise ValueError(
                f"request_timeout must be a positive number of seconds, got {request_timeout!r}"
            )
        self.path = path
        self.transport = Transport(f"client-{uuid.uuid4().hex[:8]}", rng=rng)
        self.transport.set_peers(nodes)
        if isinstance(only, str):
            raise TypeError(f"only takes a collection of node names, e.g. only=[{only!r}]")
        # The nodes this client may use (one side of a partition); None: every node.
        self.only = frozenset(only) if only is not None else None
        if router is not None:
            self.transport.peers["router"] = router
        self.rng = rng or random.Random()
        self.request_timeout = request_timeout
        self.ring_refresh = ring_refresh
        self.ring: Ring | None = None
        self.config: dict = {}
        self._refreshed = 0.0
        self._refreshing: asyncio.Task | None = None
        self._fetching: asyncio.Future | None = None
        self._down_until: dict[str, float] = {}
        self._status: dict[str, str] = {}
        self.read_options: dict = {}  # the nodes' replica_timeout, read repair settings
        self._tasks: set[asyncio.Task] = set()

    def set_node(self, node: str, handle: Any) -> None:
        """A node restarted or joined (use its new handle) or left (handle None)."""
        if handle is None:
            self.transport.peers.pop(node, None)
        elif self.only is None or node in self.only:
            self.transport.replace(node, handle, force=True)
        self._down_until.pop(node, None)
        self._refreshed = 0.0  # learn the new ring at the next request

    @property
    def nodes(self) -> list[str]:
        return sorted(p for p in self.transport.peers if p != "router")

    def adopt(self, description: dict) -> None:
        """Take a node's ring and defaults if its ring is at least as new as ours."""
        if description.get("ring") is None:
            return
        version = description["ring"]["version"]
        if self.ring is None or version > self.ring.version:
            # A new ring only when it changed: building one (its preference lists) costs.
            self.ring = Ring.from_wire(description["ring"])
        if version >= self.ring.version:
            self.config = dict(description.get("config") or {})
        # The answering node's gossip view: whom it believes down.
        self._status = dict(description.get("status") or {})
        self._learn_peers(description.get("peers") or {})
        self.read_options = dict(description.get("reads") or self.read_options)
        self._refreshed = time.monotonic()

    def _learn_peers(self, handles: dict[str, Any]) -> None:
        """Take a node's actor handle from a storage node's description when this client has
        none of it (it joined since) or saw its actor die and this is another actor (it
        restarted since). Only nodes of the ring; a client limited to some nodes (`only`)
        learns only of those, including one that had no actor when the client was made."""
        members = set(self.ring.nodes()) if self.ring is not None else set()
        for node, packed in handles.items():
            if node not in members or self.transport.live(node):
                continue
            if self.only is not None and node not in self.only:
                continue
            handle = unpack_handle(packed)
            if handle is not None and self.transport.replace(node, handle):
                self._down_until.pop(node, None)

    async def refresh(self) -> None:
        """Fetch the ring from a random reachable node (the paper's periodic client refresh)."""
        nodes = self.nodes
        self.rng.shuffle(nodes)
        ringless = []  # a node joining, not yet given the ring
        for node in nodes:
            try:
                description = await self.transport.call(node, "describe", timeout=5.0)
            except PeerUnavailable:
                self._mark_down(node)
                continue
            if description.get("ring") is None:
                ringless.append(node)
                continue
            self.adopt(description)
            return
        if ringless:
            raise Unavailable(
                f"no storage node that answered has the ring yet ({', '.join(sorted(ringless))} "
                "answered without one); if the store is starting, try again in a moment"
            )
        raise Unavailable(f"no storage node answered; tried {', '.join(sorted(nodes))}")

    async def _ensure_ring(self) -> Ring:
        if self.ring is None:
            # The first requests of a new client all wait for one fetch of the ring, not
            # one each (a get_many of 1,000 keys would otherwise ask for it 1,000 times).
            fetching = self._fetching
            if (
                fetching is None
                or fetching.done()
                or fetching.get_loop() is not asyncio.get_running_loop()
            ):
                self._fetching = asyncio.ensure_future(self.refresh())
            await asyncio.shield(self._fetching)
        elif time.monotonic() - self._refreshed > self.ring_refresh and not self._refresh_running():
            self._refreshing = asyncio.ensure_future(self._quiet_refresh())
        assert self.ring is not None
        return self.ring

    async def _quiet_refresh(self) -> None:
        try:
            await self.refresh()
        except Unavailable:
            self._refreshed = time.monotonic()

    def is_up(self, node: str) -> bool:
        until = self._down_until.get(node)
        if until is not None and time.monotonic() < until:
            return False
        return self._status.get(node) != "down"

    def _mark_down(self, node: str) -> None:
        self._down_until[node] = time.monotonic() + RETRY_AFTER
        if node in self.transport.dead:
            self._stale_ring()  # its actor died: the nodes may know its new one

    def quorum(self, r: int | None = None, w: int | None = None) -> tuple[int, int, int]:
        """The request's N, R, W: per-request values checked against the store's N."""
        n = self.config.get("n", 3)
        r = self.config.get("r", 2) if r is None else r
        w = self.config.get("w", 2) if w is None else w
        quorum.check_quorum(n, r, w, len(self.ring.nodes()) if self.ring else len(self.nodes))
        return n, r, w

    async def coordinators(self, bucket: bytes, key: bytes, n: int) -> list[str]:
        """Whom to ask to coordinate, best first."""
        if self.path == "router":
            return ["router"]
        ring = await self._ensure_ring()
        if self.path == "any":
            # One at random, then the others: a request whose node cannot be reached (or,
            # for a read, is stopping) goes on to the next, as on the partition-aware path.
            nodes = [p for p in self.nodes if self.is_up(p)] or self.nodes
            if not nodes:
                return []  # the caller says no node is known
            first = self.rng.choice(nodes)
            return [first, *(p for p in nodes if p != first)]
        preference = [
            p
            for p in ring.preference_list(ring.partition_of(codec.hash_input(bucket, key)))
            if p in self.transport.peers
        ]
        healthy = [p for p in preference if self.is_up(p)]
        return healthy + [p for p in preference if p not in healthy]

    async def ask_any(self, what: str, method: str, *args: Any) -> Any:
        """Send a request about the store as a whole (not one key) to a reachable node.

        Only for requests that are harmless to repeat: one that fails goes to another node.
        """
        nodes = [p for p in self.nodes if self.is_up(p)] or self.nodes
        self.rng.shuffle(nodes)
        last: Exception | None = None
        for node in nodes[:3]:
            try:
                return await self.transport.call(node, method, *args, timeout=self.request_timeout)
            except PeerUnavailable as exc:
                self._mark_down(node)
                last = exc
            except StorageError as exc:  # its disk refused (full?): another node may not
                last = exc
        raise Unavailable(f"{what}: no storage node could be reached ({last})")

    async def put(
        self,
        bucket: bytes,
        key: bytes,
        op: list,
        w: int,
        n: int,
        *,
        after: Exception | None = None,
    ) -> list:
        """Apply a write operation; returns [new context (wire), its stamp] or raises.
        `after`: how an earlier coordinator of this same write failed (a batch's), which
        the outcome reported must take in (a write that reached it may be stored)."""
        name = _op_name("put", op)
        reply = await self._send(
            name,
            "coordinate_put",
            bucket,
            key,
            op,
            w,
            n,
            retry=records.idempotent(op),
            after=after,
        )
        return _payload(name, key, reply)

    async def get(self, bucket: bytes, key: bytes, r: int, n: int) -> bytes | None:
        """The key's merged record, encoded as stored (None when absent), or raises.

        On the "client" path the client coordinates the read itself (the paper's
        client-driven coordination, section 6.4): it asks the replicas straight away,
        which saves the hop to a coordinator; the other paths ask a node to do it.
        """
        if self.path == "client":
            return await self._coordinate_get(bucket, key, r, n)
        return _payload("get", key, await self._send("get", "coordinate_get", bucket, key, r, n))

    async def _coordinate_get(self, bucket: bytes, key: bytes, r: int, n: int) -> bytes | None:
        ring = await self._ensure_ring()
        options = self.read_options
        dkey, preference, targets = quorum.route(
            ring, bucket, key, n, r, self._reachable, options.get("sloppy_quorum", True)
        )
        ask_all = self.rng.random() < options.get("read_repair_chance", 0.1)
        targets = reads.narrowed(targets, r, ask_all)
        request = reads.Read(dkey, quorum.Tally(preference, targets, r, self._reachable, n))
        timeout = options.get("replica_timeout", REPLICA_TIMEOUT)

        async def fetch(target: quorum.Target) -> bytes | None:
            try:
                raw = await self.transport.call_batched(
                    target.node, "replica_get", [dkey, target.hint], timeout=timeout
                )
            except PeerUnavailable:
                self._mark_down(target.node)
                raise
            if raw == reads.NOT_MINE:
                self._stale_ring()
            return raw

        if not await reads.read(request, targets, fetch, self._spawn, timeout * 3):
            tally = request.tally
            raise QuorumError(
                "get", key_repr(key), len(tally.ok), r, tally.asked, len(tally.failed)
            )
        merged = request.merged  # raises for copies that cannot be merged: then no repair
        if options.get("read_repair", True):
            self._spawn(self._read_repair(request, timeout))
        return merged

    def _stale_ring(self) -> None:
        """A node's ring is newer than ours: fetch it now, in the background."""
        self._refreshed = 0.0
        if not self._refresh_running():
            self._refreshing = self._spawn(self._quiet_refresh())

    def _refresh_running(self) -> bool:
        """Whether a background refresh of the ring runs on this event loop. One left on a
        loop that stopped (`run_until_complete` of one call) never finishes: counted as
        running, it kept this client on its ring for good."""
        task = self._refreshing
        return (
            task is not None and not task.done() and task.get_loop() is asyncio.get_running_loop()
        )

    def _reachable(self, node: str) -> bool:
        return node in self.transport.peers and self.is_up(node)

    async def _read_repair(self, request: reads.Read, timeout: float) -> None:
        """Send each stale replica the merged record, as a node coordinating would."""
        stale = await reads.stale_after(request, self.read_options.get("read_repair_wait", 0.5))
        await self._send_repairs(stale, timeout)

    async def _send_repairs(self, stale: dict[str, list], timeout: float) -> None:
        """Send each stale replica its merged copies, one call per replica; one that cannot
        be reached, or whose disk refuses them, is left to anti-entropy."""
        for node, items in stale.items():
            with contextlib.suppress(PeerUnavailable, StorageError):
                await self.transport.call(node, "replica_repair", items, timeout=timeout)

    def _spawn(self, coro: Coroutine) -> asyncio.Task:
        """A task the routing keeps a reference to until it ends."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def many(self, kind: str, requests: list[tuple]) -> list:
        """Many requests of one kind ("get": (bucket, key, r, n); "put": (bucket, key, op,
        w, n)) in a few calls, not one task per key: writes in one coordinate_batch call per
        coordinator; reads, on the client path, in one replica_get per replica
        (`_coordinate_get_many`).

        Returns, per request, what get() or put() would return, or the exception it would
        raise. A coordinator that cannot be reached sends its requests the one-key way,
        which tries the next coordinators and knows when a write must not be repeated.
        """
        one = self.get if kind == "get" else self.put
        if self.path == "router":
            return await asyncio.gather(*(one(*req) for req in requests), return_exceptions=True)
        if kind == "get" and self.path == "client":
            return await self._coordinate_get_many(requests)
        groups: dict[str, list[int]] = {}
        best: dict[int, str] = {}  # partition: its coordinator, looked up once per batch
        ring = await self._ensure_ring()
        for index, (bucket, key, *rest) in enumerate(requests):
            partition = ring.partition_of(codec.hash_input(bucket, key))
            if partition not in best:
                best[partition] = next(iter(await self.coordinators(bucket, key, rest[-1])), "")
            groups.setdefault(best[partition], []).append(index)
        # Keys with no node to ask take the one-key path, which says so.
        nowhere = groups.pop("", [])
        answers: list = [None] * len(requests)

        async def send(node: str, indexes: list[int]) -> None:
            batch = [[kind, *requests[i]] for i in indexes]
            try:
                replies = await self.transport.call(
                    node, "coordinate_batch", batch, timeout=self.request_timeout
                )
            except PeerUnavailable as exc:
                self._mark_down(node)
                await asyncio.gather(
                    *(self._one_key(kind, node, exc, answers, i, requests[i]) for i in indexes)
                )
                return
            except Exception as exc:  # noqa: BLE001 - the node refused the whole call
                for i in indexes:
                    answers[i] = exc
                return
            again, refused = [], []
            for i, reply in zip(indexes, replies, strict=True):
                key, rest = requests[i][1], requests[i][2:]
                name = _op_name(kind, rest[0])
                if reply[0] != "error":
                    answers[i] = _answer(name, key, reply)
                elif kind == "get" and _elsewhere(reply[1]):
                    again.append(i)  # a node that is stopping: the one-key read goes on
                elif kind == "put" and isinstance(reply[1], StorageError):
                    refused.append(i)  # nothing stored (a full disk, a node leaving)
                else:
                    answers[i] = reply[1]
            if again:
                self._mark_down(node)
                failure = PeerUnavailable(node, "stopping")
                await asyncio.gather(
                    *(self._one_key(kind, node, failure, answers, i, requests[i]) for i in again)
                )
            # As a one-key write does, a refused one goes on to the next coordinator.
            await asyncio.gather(
                *(self._one_key(kind, node, None, answers, i, requests[i]) for i in refused)
            )

        await asyncio.gather(
            *(send(node, chunk) for node, chunk in _chunks(groups)),
            *(self._one_key(kind, "", None, answers, i, requests[i]) for i in nowhere),
        )
        return answers

    async def _coordinate_get_many(self, requests: list[tuple]) -> list:
        """Reads of many keys (bucket, key, r, n), coordinated here: one replica_get per
        replica for every key it is asked for, not a call per key.

        A key whose replicas are all up and whose first R (all N for a read_repair_chance
        of batches, as one-key reads do) all answer is settled from their copies; stale
        copies among them get read repair. The rest (a primary down, a replica that failed
        or is still receiving its range) take the one-key read, which tries fallbacks. A
        batch waits for all its calls (each has the replica deadline), so a replica that is
        slow to answer holds up its batch where a one-key read would stop after R answers.
        """
        ring = await self._ensure_ring()
        options = self.read_options
        sloppy = options.get("sloppy_quorum", True)
        timeout = options.get("replica_timeout", REPLICA_TIMEOUT)
        ask_all = self.rng.random() < options.get("read_repair_chance", 0.1)
        plans: dict[tuple[int, int, int], list[str] | None] = {}  # per partition, r, n
        # Per request, its data key and the replicas asked (None: the one-key read). Few
        # objects per key: a batch of thousands makes the garbage collector's work.
        dkeys: list[bytes] = [b""] * len(requests)
        asked: list[list[str] | None] = [None] * len(requests)
        per_node: dict[str, list[int]] = {}
        alone: list[int] = []
        for index, (bucket, key, r, n) in enumerate(requests):
            partition, dkeys[index] = quorum.locate(ring, bucket, key)
            plan = (partition, r, n)
            if plan not in plans:
                plans[plan] = self._direct_replicas(ring, partition, r, n, sloppy, ask_all)
            nodes = asked[index] = plans[plan]
            if nodes is None:
                alone.append(index)
                continue
            for node in nodes:
                per_node.setdefault(node, []).append(index)
        copies: dict[str, dict[int, bytes | None]] = {node: {} for node in per_node}

        async def fetch(node: str, indexes: list[int]) -> None:
            # Bare data keys: a replica reads them for itself (no hint).
            items = [dkeys[i] for i in indexes]
            try:
                raws = await self.transport.call(node, "replica_get", items, timeout=timeout)
            except Exception as exc:  # noqa: BLE001 - its keys take the one-key read
                if isinstance(exc, PeerUnavailable):
                    self._mark_down(node)
                else:
                    log.warning("batched read from %s failed: %r", node, exc)
                return
            got = copies[node]
            for i, raw in zip(indexes, raws, strict=True):
                if reads.unanswered(raw):
                    if raw == reads.NOT_MINE:
                        self._stale_ring()
                    continue
                got[i] = raw

        await asyncio.gather(*(fetch(node, chunk) for node, chunk in _chunks(per_node)))
        answers: list = [None] * len(requests)
        stale: dict[str, list] = {}
        for index, nodes in enumerate(asked):
            if nodes is None:
                continue
            replies = [node for node in nodes if index in copies[node]]
            if len(replies) < requests[index][2]:
                alone.append(index)
                continue
            first = copies[replies[0]][index]
            if all(copies[node][index] == first for node in replies):
                answers[index] = first  # the replicas agree: nothing to merge or repair
                continue
            try:
                by_node = {node: (quorum.Target(node), copies[node][index]) for node in replies}
                answers[index] = reads.stale_replicas(dkeys[index], by_node, stale)
            except ValueError as exc:  # a corrupt copy fails its own key only
                answers[index] = exc
        if stale and options.get("read_repair", True):
            self._spawn(self._send_repairs(stale, timeout))

        async def one(index: int) -> None:
            try:
                answers[index] = await self._coordinate_get(*requests[index])
            except Exception as exc:  # noqa: BLE001 - each request keeps its own outcome
                answers[index] = exc

        await asyncio.gather(*(one(index) for index in alone))
        return answers

    def _direct_replicas(
        self, ring: Ring, partition: int, r: int, n: int, sloppy: bool, ask_all: bool
    ) -> list[str] | None:
        """The replicas a batched read of the partition asks (primaries that look up, no
        stand-in), or None when its read must take the one-key path."""
        _, targets = quorum.plan(ring, partition, n, r, self._reachable, sloppy)
        if len(targets) < r or not quorum.all_in_person(targets, self._reachable):
            return None
        return [t.node for t in reads.narrowed(targets, r, ask_all)]

    async def _one_key(
        self,
        kind: str,
        node: str,
        failure: PeerUnavailable | None,
        answers: list,
        index: int,
        request: tuple,
    ) -> None:
        """A request of a batch whose coordinator failed (`failure`; None: it refused the
        write, storing nothing): again on the one-key path, unless it is a write that may
        have been applied and must not be repeated."""
        try:
            if kind == "get":
                answers[index] = await self.get(*request)
                return
            if failure is not None:
                op = request[2]
                error = self._unrepeatable(
                    _op_name(kind, op), request[1], node, failure, records.idempotent(op)
                )
                if error is not None:
                    answers[index] = error
                    return
            answers[index] = await self.put(*request, after=failure)
        except Exception as exc:  # noqa: BLE001 - each request keeps its own outcome
            answers[index] = exc

    def _unrepeatable(
        self, op: str, key: bytes, node: str, failure: PeerUnavailable, retry: bool
    ) -> RequestTimeout | None:
        """After coordinator `node` failed a request: the error to report when the request
        must not go on to the next coordinator, or None when it may."""
        if "no answer" in failure.reason:
            # A coordinator that timed out may have done the work: do not repeat it. (A
            # read would be harmless to repeat, but it has spent its request_timeout.)
            return RequestTimeout(op, key_repr(key), self.request_timeout)
        if not retry and failure.may_have_arrived:
            return RequestTimeout(
                op,
                key_repr(key),
                self.request_timeout,
                f"coordinator {node} failed during the request ({failure.reason}), and "
                "repeating the write could apply it twice",
            )
        return None

    async def _send(
        self,
        op: str,
        method: str,
        bucket: bytes,
        key: bytes,
        *rest: Any,
        retry: bool = True,
        after: Exception | None = None,
    ) -> tuple:
        """Ask the best coordinator; on one that cannot be reached, the next (rest ends in n).

        A coordinator that died during the request may have done the work: the request goes
        to the next one only if doing it twice is harmless (`retry`; reads always are).
        `after`: an earlier coordinator's failure of this same request (a batch's).
        """
        candidates = await self.coordinators(bucket, key, rest[-1])
        if not candidates:
            raise Unavailable(
                f"{op} of {key_repr(key)}: this client knows no node of the store to ask; "
                "connect again (dynaray.connect) to learn the store's nodes"
            )
        last = after if isinstance(after, PeerUnavailable) else None
        refused: StorageError | None = None  # a coordinator's disk refused: nothing stored
        # The first coordinator a write may have reached before it failed.
        reached = last if last and last.may_have_arrived and method == "coordinate_put" else None
        for node in candidates[:3]:
            try:
                if node == "router":
                    return await self.transport.call(
                        node, method, bucket, key, *rest, timeout=self.request_timeout
                    )
                # Concurrent requests to one coordinator travel together in one actor call.
                kind = "put" if method == "coordinate_put" else "get"
                reply = await self.transport.call_batched(
                    node,
                    "coordinate_batch",
                    [kind, bucket, key, *rest],
                    timeout=self.request_timeout,
                )
                if reply[0] == "error":
                    raise reply[1]
                return reply
            except StorageError as exc:
                refused = exc
            except NodeError as exc:
                if method == "coordinate_put" or not _elsewhere(exc):
                    raise  # a write's outcome is the node's to tell (it may be stored)
                self._mark_down(node)
                last = PeerUnavailable(node, str(exc))  # a node stopping: read elsewhere
            except PeerUnavailable as exc:
                self._mark_down(node)
                if reached is None and exc.may_have_arrived and method == "coordinate_put":
                    reached = exc
                error = self._unrepeatable(op, key, node, exc, retry)
                if error is not None:
                    raise error from None
                last = exc
        if reached is not None:
            raise RequestTimeout(
                op,
                key_repr(key),
                self.request_timeout,
                f"every coordinator tried failed ({last}); {reached.peer} failed after the "
                f"request may have reached it ({reached.reason})",
            )
        if refused is not None:
            raise refused
        raise Unavailable(
            f"{op} of {key_repr(key)}: no coordinator could be reached ({last}); "
            "the store's nodes may be down"
        )


def _elsewhere(exc: object) -> bool:
    """Whether a coordinator's error on a read says to read through another node: a node
    error (its store closing as it stops), not an answer about the key (QuorumError, a
    record that cannot be read)."""
    return isinstance(exc, NodeError)


def _chunks(groups: dict[str, list[int]]) -> Iterator[tuple[str, list[int]]]:
    """(node, up to MANY_CHUNK request indexes) for every node's requests: one call each."""
    for node, indexes in groups.items():
        for start in range(0, len(indexes), MANY_CHUNK):
            yield node, indexes[start : start + MANY_CHUNK]


def _op_name(kind: str, op: Any) -> str:
    """What a request is called in errors (records.write_name for a write)."""
    return records.write_name(op) if kind == "put" else kind


def _payload(name: str, key: bytes, reply: tuple) -> Any:
    """A coordinator's answer: its payload, or QuorumError for a missed quorum."""
    if reply[0] == "ok":
        return reply[1]
    raise QuorumError(name, key_repr(key), *reply[1:])


def _answer(name: str, key: bytes, reply: tuple) -> Any:
    """As _payload, with the error returned rather than raised."""
    try:
        return _payload(name, key, reply)
    except QuorumError as exc:
        return exc
