"""The client's batched reads (Routing._coordinate_get_many) against fake replicas, no Ray:
which replicas are asked, how disagreeing copies are merged and repaired, and when a key
falls back to the one-key read."""

from __future__ import annotations

import asyncio
import random
import threading

import pytest
from ray.exceptions import ActorDiedError

from dynaray import codec, quorum, reads, records
from dynaray.client import Client
from dynaray.errors import DynarayError, NodeError, QuorumError, RequestTimeout, Unavailable
from dynaray.ring import Ring
from dynaray.routing import Routing
from dynaray.transport import DEAD, PeerUnavailable, Transport, actor_of

NODES = ["n1", "n2", "n3", "n4", "n5"]
BUCKET = codec.DEFAULT_BUCKET.encode()


class _Method:
    def __init__(self, replica: FakeReplica, name: str) -> None:
        self.replica, self.name = replica, name

    def remote(self, sender: str, items: list | None = None):
        return self.replica.answer(self.name, items)


class FakeReplica:
    """Answers replica_get from a dict of data keys; records calls and repairs."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.data: dict[bytes, bytes] = {}
        self.calls: list[tuple[str, int]] = []
        self.repaired: list = []
        self.dead = False
        self.broken: Exception | None = None  # raised by every call (a replica's own error)
        self.refuse: set[bytes] = set()  # keys answered with NOT_MINE
        self.description: dict = {}  # what describe answers (a client refreshing its ring)

    def __getattr__(self, method: str) -> _Method:
        if not method.startswith("replica_") and method != "describe":
            raise AttributeError(method)
        return _Method(self, method)

    async def answer(self, method: str, items: list):
        self.calls.append((method, len(items or ())))
        if self.dead:
            raise PeerUnavailable(self.name, "RayActorError")
        if self.broken is not None and method == "replica_get":
            raise self.broken
        if method == "replica_get":
            dkeys = [item if isinstance(item, bytes) else item[0] for item in items]
            return [reads.NOT_MINE if k in self.refuse else self.data.get(k) for k in dkeys]
        if method == "describe":
            return self.description
        if method == "replica_repair":
            self.repaired.extend(items)
            return len(items)
        raise AssertionError(f"unexpected call {method}")


def _record(value: str, node: str = "n1", seen: list | None = None, stored=None) -> bytes:
    op = ["siblings", seen or [], codec.encode_value(value)]
    return records.encode(records.update(stored, op, node, 1))


def _routing(chance: float = 0.0) -> tuple[Routing, dict[str, FakeReplica], Ring]:
    replicas = {name: FakeReplica(name) for name in NODES}
    routing = Routing(replicas, rng=random.Random(1))
    ring = Ring.create(NODES, 16)
    description = {
        "ring": ring.to_wire(),
        "config": {"n": 3, "r": 2, "w": 2},
        "reads": {"read_repair_chance": chance, "replica_timeout": 1.0},
    }
    for replica in replicas.values():
        replica.description = description
    routing.adopt(description)
    return routing, replicas, ring


def _place(ring: Ring, replicas: dict, key: bytes, copies: dict[str, bytes]) -> bytes:
    dkey = quorum.locate(ring, BUCKET, key)[1]
    for node, raw in copies.items():
        replicas[node].data[dkey] = raw
    return dkey


def _owners(ring: Ring, key: bytes) -> list[str]:
    partition = quorum.locate(ring, BUCKET, key)[0]
    return list(ring.preference_list(partition)[:3])


def _read(routing: Routing, keys: list[bytes]) -> list:
    async def go():
        answers = await routing.many("get", [(BUCKET, k, 2, 3) for k in keys])
        await asyncio.sleep(0.05)  # let background repairs run
        return answers

    return asyncio.run(go())


def test_agreeing_copies_come_back_as_stored_from_one_call_per_replica():
    routing, replicas, ring = _routing()
    keys = [f"k{i}".encode() for i in range(60)]
    stored = {}
    for key in keys:
        raw = _record(key.decode())
        stored[key] = raw
        _place(ring, replicas, key, dict.fromkeys(_owners(ring, key), raw))
    answers = _read(routing, [*keys, b"absent"])
    assert answers == [stored[k] for k in keys] + [None]
    # One replica_get per replica asked, however many keys it serves; R=2 copies per key.
    calls = [c for r in replicas.values() for c in r.calls]
    assert all(method == "replica_get" for method, _ in calls)
    assert len(calls) <= len(NODES)
    assert sum(n for _, n in calls) == 2 * len(keys) + 2
    assert not any(r.repaired for r in replicas.values())


def test_disagreeing_copies_are_merged_and_the_stale_one_repaired():
    routing, replicas, ring = _routing(chance=1.0)  # ask all three replicas
    key = b"diverged"
    old = _record("old")
    new = _record("new", seen=records.context_of(records.decode(old)), stored=records.decode(old))
    first, second, third = _owners(ring, key)
    dkey = _place(ring, replicas, key, {first: new, second: new, third: old})
    [answer] = _read(routing, [key])
    assert records.same_encoded(answer, new)
    assert replicas[third].repaired == [[dkey, answer, None]]
    assert not replicas[first].repaired and not replicas[second].repaired


def test_a_replica_that_fails_sends_its_keys_to_the_one_key_read():
    routing, replicas, ring = _routing()
    key = b"one-down"
    raw = _record("v")
    first, second, third = _owners(ring, key)
    _place(ring, replicas, key, {first: raw, second: raw, third: raw})
    replicas[first].dead = True  # the client still believes it up
    [answer] = _read(routing, [key])
    assert answer == raw  # from the second and third owners, on the one-key path
    assert ("replica_get", 1) in replicas[third].calls


def test_a_replica_whose_ring_moved_the_key_away_is_not_counted():
    routing, replicas, ring = _routing()
    key = b"moved"
    raw = _record("v")
    first, second, third = _owners(ring, key)
    dkey = _place(ring, replicas, key, {first: raw, second: raw, third: raw})
    replicas[second].refuse.add(dkey)
    [answer] = _read(routing, [key])
    assert answer == raw  # the second owner's NOT_MINE did not count towards R
    assert any(method == "replica_get" for method, _ in replicas[third].calls)
    refetched = [r.name for r in replicas.values() if ("describe", 0) in r.calls]
    assert refetched, "a NOT_MINE answer makes the client refetch its ring"


def test_a_key_that_misses_its_quorum_fails_alone():
    routing, replicas, ring = _routing()
    routing.read_options["sloppy_quorum"] = False  # no spares: two owners down is too many
    lost = b"lost"
    down = _owners(ring, lost)[:2]
    fine = next(
        key
        for key in (f"fine{i}".encode() for i in range(1000))
        if len(set(_owners(ring, key)) - set(down)) >= 2
    )
    for key in (lost, fine):
        _place(ring, replicas, key, dict.fromkeys(_owners(ring, key), _record("v")))
    for node in down:
        replicas[node].dead = True
    lost_answer, fine_answer = _read(routing, [lost, fine])
    assert isinstance(lost_answer, QuorumError)
    assert records.decode(fine_answer).kind == "siblings"


def test_a_replica_that_answers_with_an_error_fails_no_other_key():
    routing, replicas, ring = _routing()
    keys = [f"e{i}".encode() for i in range(30)]
    stored = {}
    for key in keys:
        stored[key] = _record(key.decode())
        _place(ring, replicas, key, dict.fromkeys(_owners(ring, key), stored[key]))
    replicas["n2"].broken = NodeError("node n2 store is closed")
    answers = _read(routing, keys)
    assert answers == [stored[k] for k in keys]  # n2's keys were read from other replicas


def test_closing_a_client_cancels_its_read_repairs_in_flight():
    routing, replicas, ring = _routing(chance=1.0)  # ask all three replicas
    routing.read_options["replica_timeout"] = 60.0  # the repair would wait a minute
    key = b"repair-pending"
    old = _record("old")
    new = _record("new", seen=records.context_of(records.decode(old)), stored=records.decode(old))
    first, second, third = _owners(ring, key)
    _place(ring, replicas, key, {first: new, second: new, third: old})
    stuck = replicas[third]
    answer = stuck.answer

    async def never_repairs(method: str, items: list):
        if method == "replica_repair":
            await asyncio.Event().wait()  # a replica that takes the repair and never answers
        return await answer(method, items)

    stuck.answer = never_repairs
    client = Client(routing)
    assert client.get(key.decode()).values == ["new"]
    background = list(routing._tasks)
    assert background and not any(task.done() for task in background)  # the read repair
    thread = client._loop._thread
    client.close()
    assert all(task.cancelled() for task in background)
    assert not thread.is_alive()
    with pytest.raises(DynarayError, match="client was closed"):  # not a new loop
        client.get(key.decode())
    client.close()  # a second close does nothing


def test_a_call_in_flight_when_its_client_closes_says_so():
    routing, replicas, ring = _routing()
    routing.read_options["replica_timeout"] = 60.0
    asked = threading.Event()

    async def never_answers(method: str, items: list):
        asked.set()
        await asyncio.Event().wait()

    for replica in replicas.values():
        replica.answer = never_answers
    client = Client(routing)
    outcome: list = []
    caller = threading.Thread(target=lambda: outcome.append(_outcome(client.get, "k")))
    caller.start()
    assert asked.wait(30)
    client.close()
    caller.join(30)
    assert not caller.is_alive()
    [error] = outcome
    assert isinstance(error, DynarayError) and "closed during the call" in str(error)


def _outcome(fn, *args):
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - the test looks at what was raised
        return exc


def test_a_client_learns_a_new_actor_of_a_node_but_never_takes_back_a_dead_one():
    routing, replicas, ring = _routing()
    description = replicas["n1"].description
    old = replicas["n2"]
    routing.transport.dead["n2"] = actor_of(old)  # a call found n2's actor dead
    # A node that has not noticed yet still lists the dead actor: not taken back.
    routing.adopt({**description, "peers": {"n2": old}})
    assert routing.transport.peers["n2"] is old and "n2" in routing.transport.dead
    # A node that knows n2's new actor: taken, and n2 is no longer dead here.
    new = FakeReplica("n2")
    routing.adopt({**description, "peers": {"n2": new}})
    assert routing.transport.peers["n2"] is new and "n2" not in routing.transport.dead
    # A live actor is never swapped for what another node lists; nor is a node outside
    # the ring taken (one that left, or a failed join's actor).
    routing.adopt({**description, "peers": {"n2": FakeReplica("n2"), "n9": FakeReplica("n9")}})
    assert routing.transport.peers["n2"] is new and "n9" not in routing.transport.peers
    # A node that joined since (in the ring now, no handle here yet) is taken.
    grown = ring.with_node("n6")
    joined = FakeReplica("n6")
    routing.adopt({**description, "ring": grown.to_wire(), "peers": {"n6": joined}})
    assert routing.transport.peers["n6"] is joined


def test_a_peer_handle_that_cannot_be_rebuilt_is_skipped_and_the_others_taken():
    """Nodes send their peers' handles packed one by one: Ray cannot rebuild the handle of
    a dead actor whose maker's job ended, and as plain handles that failed the whole
    describe answer, so every new client and command failed."""
    from dynaray.transport import pack_handle

    routing, replicas, ring = _routing()
    grown = ring.with_node("n6").with_node("n7")
    joined = FakeReplica("n6")
    packed = {"n6": pack_handle(joined), "n7": b"\x80\x05not a handle any more"}
    routing.adopt({**replicas["n1"].description, "ring": grown.to_wire(), "peers": packed})
    assert routing.transport.peers["n6"].name == "n6"
    assert "n7" not in routing.transport.peers


def test_a_client_limited_to_some_nodes_learns_only_those_even_if_down_when_made():
    _, replicas, ring = _routing()
    description = replicas["n1"].description
    # Made while n2 ran no actor: it has none of n2, yet n2 is one of its nodes.
    routing = Routing({"n1": replicas["n1"]}, rng=random.Random(1), only=["n1", "n2"])
    back = FakeReplica("n2")
    routing.adopt({**description, "peers": {"n2": back, "n3": replicas["n3"]}})
    assert routing.transport.peers["n2"] is back  # learned once it runs again
    assert "n3" not in routing.transport.peers  # not one of its nodes
    routing.set_node("n3", replicas["n3"])  # nor told of it by the driver
    assert "n3" not in routing.transport.peers
    routing.set_node("n2", restarted := FakeReplica("n2"))
    assert routing.transport.peers["n2"] is restarted
    # Told by the driver (Cluster.restart) of a listed node it never had: taken too.
    told = Routing({"n1": replicas["n1"]}, rng=random.Random(1), only=["n1", "n2"])
    told.set_node("n2", back)
    assert told.transport.peers["n2"] is back
    with pytest.raises(TypeError, match=r"only=\['n1'\]"):
        Routing({}, only="n1")


def test_a_call_marks_dead_only_the_actor_it_was_made_to():
    transport = Transport("client")

    class Dying:
        """An actor whose calls fail as dead; `then` is put in its place mid-call."""

        def __init__(self, then=None) -> None:
            self.then = then

        def __getattr__(self, method):
            return self

        def remote(self, *args):
            async def died():
                if self.then is not None:
                    transport.peers["n2"] = self.then
                raise ActorDiedError()

            return died()

    async def call() -> None:
        try:
            await transport.call("n2", "describe", timeout=1.0)
        except PeerUnavailable:
            return
        raise AssertionError("the call should have failed")

    restarted = object()
    transport.set_peers({"n2": Dying(then=restarted)})
    asyncio.run(call())
    assert transport.peers["n2"] is restarted and "n2" not in transport.dead
    dying = Dying()
    transport.set_peers({"n2": dying})
    asyncio.run(call())
    assert transport.dead["n2"] == actor_of(dying)


def test_a_write_to_coordinators_already_seen_dead_says_it_was_never_sent():
    """Ray's ActorDiedError does not tell whether the call ran, so a write whose
    coordinators die may have been applied (RequestTimeout). Once their actors are known
    dead, a call to them is never made, and a write says so (Unavailable): safe to retry."""
    routing, _, _ = _routing()
    calls: list[str] = []

    class Dead:
        def __init__(self, name: str) -> None:
            self.name = name

        def __getattr__(self, method):
            return self

        def remote(self, *args):
            calls.append(self.name)

            async def died():
                raise ActorDiedError()

            return died()

    routing.transport.set_peers({name: Dead(name) for name in NODES})
    op = ["siblings", [], codec.encode_value("v")]

    async def put():
        return await routing.put(BUCKET, b"k", op, 2, 3)

    async def put_then_settle():
        try:
            return await put()
        finally:
            await asyncio.sleep(0.05)  # the ring refresh a dead node set off ends too

    with pytest.raises(RequestTimeout, match="may or may not"):
        asyncio.run(put_then_settle())
    assert set(routing.transport.dead) == set(NODES)  # every actor is now known dead
    tried = len(calls)
    assert tried > 0
    with pytest.raises(Unavailable, match="no coordinator could be reached"):
        asyncio.run(put())
    # Nothing sent to a coordinator seen dead (describe calls of a ring refresh aside).
    assert all(name not in calls[tried:] for name in calls[:tried])
    error = PeerUnavailable("n1", DEAD)
    assert not error.may_have_arrived


def test_a_sync_call_in_a_coroutine_names_its_async_twin():
    routing, _, _ = _routing()
    client = Client(routing)

    async def sync_inside() -> None:
        client.bucket("likes", policy="counter")

    with pytest.raises(RuntimeError, match=r"await \.\.\.abucket\(\.\.\.\)"):
        asyncio.run(sync_inside())
    client.close()


def test_the_any_path_names_every_node_that_looks_up_first_one_at_random():
    """A read whose randomly chosen node does not answer goes on to another (_send)."""
    replicas = {name: FakeReplica(name) for name in NODES}
    routing = Routing(replicas, path="any", rng=random.Random(3))
    routing.adopt({"ring": Ring.create(NODES, 16).to_wire(), "config": {"n": 3}})
    firsts = set()
    for _ in range(40):
        chosen = asyncio.run(routing.coordinators(BUCKET, b"k", 3))
        assert sorted(chosen) == sorted(NODES)
        firsts.add(chosen[0])
    assert len(firsts) > 1  # spread over the nodes, not always the same one
    routing._mark_down(NODES[0])
    assert NODES[0] not in asyncio.run(routing.coordinators(BUCKET, b"k", 3))


def test_a_client_learns_the_ring_from_a_node_that_has_one():
    """A node joining answers describe without a ring until the driver gives it one: a
    new client asks another node instead of failing (or taking no ring)."""
    routing, replicas, ring = _routing()
    routing.ring = None
    for name in NODES[:-1]:
        replicas[name].description = {"ring": None, "config": {}}
    asyncio.run(routing.refresh())
    assert routing.ring is not None and routing.ring.version == ring.version
    replicas[NODES[-1]].description = {"ring": None, "config": {}}
    with pytest.raises(Unavailable, match="has the ring yet"):
        asyncio.run(routing.refresh())


def test_a_read_goes_on_after_a_coordinator_that_is_stopping():
    """On the paths through a coordinator, a read goes on to the next one when one is
    stopping (one key, and each key of a batch); a coordinator that does not answer has
    spent the read's time (RequestTimeout), and a write stops at either (it may have been
    applied)."""
    replicas = {name: FakeReplica(name) for name in NODES}
    routing = Routing(replicas, path="any", rng=random.Random(3))
    routing.adopt({"ring": Ring.create(NODES, 16).to_wire(), "config": {"n": 3}})
    stored = _record("v")
    tried: list[str] = []
    hang_first = [False]

    def stopping(node):
        return NodeError(f"node {node} is stopping: its store is closed")

    async def call_batched(node, method, item, *, timeout):
        tried.append(node)
        if len(tried) == 1:
            if hang_first[0]:
                raise PeerUnavailable(node, f"no answer to {method} within {timeout:.1f}s")
            return ["error", stopping(node)]
        return ["ok", stored]

    async def call(node, method, batch, *, timeout):  # many(): one call per coordinator
        tried.append(node)
        return [["error", stopping(node)] for _ in batch]

    routing.transport.call_batched = call_batched
    assert asyncio.run(routing.get(BUCKET, b"k", 2, 3)) == stored
    assert len(set(tried)) == 2
    tried.clear()
    hang_first[0] = True
    with pytest.raises(RequestTimeout):
        asyncio.run(routing.get(BUCKET, b"k2", 2, 3))
    op = ["siblings", [], codec.encode_value("w")]
    for hang in (True, False):  # a write stops at either
        tried.clear()
        hang_first[0] = hang
        with pytest.raises((RequestTimeout, NodeError)):
            asyncio.run(routing.put(BUCKET, b"k3", op, 2, 3))
        assert len(tried) == 1
    tried.clear()
    routing._down_until.clear()  # the coordinators benched above are back
    routing.transport.call = call
    hang_first[0] = False
    tried.append("")  # the one-key reads that follow find their next coordinator answering
    answers = asyncio.run(routing.many("get", [(BUCKET, b"a", 2, 3), (BUCKET, b"b", 2, 3)]))
    assert answers == [stored, stored]


def _held_transport() -> tuple[Transport, list, asyncio.Event]:
    """A client transport to one node "n1" that records each call's items and answers
    them (echoed) once the event is set; made inside the loop that uses it."""
    transport = Transport("client")
    sent: list = []
    release = asyncio.Event()

    class Node:
        def __getattr__(self, method):
            return self

        def remote(self, sender, items):
            async def answer():
                sent.append(list(items))
                await release.wait()
                return items

            return answer()

    transport.set_peers({"n1": Node()})
    return transport, sent, release


def test_a_request_whose_caller_gave_up_while_it_waited_is_not_sent():
    """It waited for the call ahead of it to the same node; its caller's deadline passed
    meanwhile. Sent later, a write would be applied after its caller was told it timed out
    (and, for lww, stamped after writes acknowledged since)."""
    transport, sent, release = _held_transport()

    async def main():
        first = asyncio.ensure_future(transport.call_batched("n1", "m", "a", timeout=5))
        await asyncio.sleep(0.01)  # "a" is in flight; the next ones wait for it
        late = asyncio.ensure_future(transport.call_batched("n1", "m", "b", timeout=5))
        kept = asyncio.ensure_future(transport.call_batched("n1", "m", "c", timeout=5))
        await asyncio.sleep(0.01)
        late.cancel()  # its caller gives up
        release.set()
        assert await first == "a" and await kept == "c"
        assert late.cancelled()

    asyncio.run(main())
    assert sent == [["a"], ["c"]]


def test_a_peers_own_timeout_error_comes_back_as_it_was_raised():
    """Ray raises a peer's error as a class of both RayTaskError and the error's own: the
    Router's RequestTimeout, a TimeoutError, was taken for no answer from the Router
    ("within 10.0s", at once), and the Router marked down."""
    from ray.exceptions import RayTaskError

    from dynaray.errors import RequestTimeout

    raised = RequestTimeout("put", "k", 10.0, "every coordinator tried failed")
    transport = Transport("client")

    class Router:
        def __getattr__(self, method):
            return self

        def remote(self, *args):
            async def fail():
                raise RayTaskError("coordinate_put", "", raised).as_instanceof_cause()

            return fail()

    transport.set_peers({"router": Router()})
    with pytest.raises(RequestTimeout, match="every coordinator tried failed"):
        asyncio.run(transport.call("router", "coordinate_put", timeout=5))
    assert not transport.failed["timeout"]


def test_a_call_cancelled_as_its_answer_fails_stays_cancelled():
    """wait_for raised the failure instead (it drops a cancel that comes as what it waits
    for ends): a read's ask then started a fallback that outlived the client's close."""
    transport = Transport("client")

    async def main() -> asyncio.Task:
        failing = asyncio.get_running_loop().create_future()

        class Node:
            def __getattr__(self, method):
                return self

            def remote(self, sender, items):
                return failing

        transport.set_peers({"n1": Node()})
        asking = asyncio.ensure_future(transport.call("n1", "m", ["a"], timeout=5))
        await asyncio.sleep(0.01)  # its call is in flight
        failing.set_exception(PeerUnavailable("n1", "ActorDiedError"))
        asking.cancel()  # in the same step
        await asyncio.wait([asking])
        return asking

    assert asyncio.run(main()).cancelled()


def test_a_request_in_flight_past_its_deadline_may_have_arrived():
    transport, sent, release = _held_transport()

    async def main():
        with pytest.raises(PeerUnavailable, match="no answer to m within") as caught:
            await transport.call_batched("n1", "m", "a", timeout=0.05)
        assert caught.value.may_have_arrived
        release.set()

    asyncio.run(main())
    assert sent == [["a"]]


def test_a_ring_refresh_left_on_a_loop_that_stopped_does_not_stop_later_ones():
    """A background refresh started on a loop that then stopped (`run_until_complete` of
    one call) never finishes; it was taken as running for good, and the client never
    learned a newer ring again."""
    routing, replicas, ring = _routing()
    routing._refreshed = 0.0
    loop = asyncio.new_event_loop()
    loop.run_until_complete(routing._ensure_ring())  # its refresh left pending there
    loop.close()
    newer = ring.without_node("n5")
    for replica in replicas.values():
        replica.description = {**replica.description, "ring": newer.to_wire()}
    routing._refreshed = 0.0

    async def go() -> None:
        await routing._ensure_ring()
        await asyncio.sleep(0.05)

    asyncio.run(go())
    assert routing.ring.version == newer.version


def _first_owned_by(ring: Ring, node: str) -> bytes:
    return next(
        k
        for k in (f"k{i}".encode() for i in range(1000))
        if ring.preference_list(quorum.locate(ring, BUCKET, k)[0])[0] == node
    )


def test_put_many_after_its_coordinator_died_mid_call_says_the_write_may_be_stored():
    """The batch's coordinator died during the call (it may have stored the write); every
    other coordinator was already known dead, so the write went nowhere else. As a one-key
    put says, the outcome is unknown: not "no coordinator could be reached"."""
    routing, _, ring = _routing()
    key = _first_owned_by(ring, "n1")

    class Dies:
        def __getattr__(self, method):
            return self

        def remote(self, *args):
            async def died():
                raise ActorDiedError()

            return died()

    handles = {name: Dies() for name in NODES}
    routing.transport.set_peers(handles)
    for name in NODES[1:]:
        routing.transport.dead[name] = actor_of(handles[name])
    op = ["siblings", [], codec.encode_value("v")]
    [answer] = asyncio.run(routing.many("put", [(BUCKET, key, op, 2, 3)]))
    assert isinstance(answer, RequestTimeout), answer
    assert "may or may not" in str(answer)


def test_put_many_goes_on_from_a_coordinator_that_refused_its_write():
    """A coordinator that stores nothing of a write (a node leaving the store, a full disk)
    answers StorageError; a one-key put goes on to the next coordinator, and so does each
    key of a batch."""
    from dynaray.errors import StorageError

    routing, _, ring = _routing()
    key = _first_owned_by(ring, "n1")
    asked: list[str] = []

    class Coordinator:
        def __init__(self, name: str) -> None:
            self.name = name

        def __getattr__(self, method):
            assert method == "coordinate_batch"
            return self

        def remote(self, sender, batch):
            asked.append(self.name)

            async def answer():
                if self.name == "n1":
                    refusal = StorageError("node n1 is leaving the store: nothing was written")
                    return [["error", refusal] for _ in batch]
                return [["ok", [[], 0]] for _ in batch]

            return answer()

    routing.transport.set_peers({name: Coordinator(name) for name in NODES})
    op = ["siblings", [], codec.encode_value("v")]
    assert asyncio.run(routing.put(BUCKET, key, op, 2, 3)) == [[], 0]
    assert asked[0] == "n1" and len(asked) == 2
    asked.clear()
    assert asyncio.run(routing.many("put", [(BUCKET, key, op, 2, 3)])) == [[[], 0]]
    assert asked[0] == "n1" and asked[-1] != "n1"  # (the one-key put asks n1 again first)


def test_a_client_that_knows_no_node_says_so_on_every_path():
    """A client limited to nodes that all left has no coordinator to ask: put_many and the
    "any" path said IndexError."""
    routing, _, _ = _routing()
    routing.transport.set_peers({})
    op = ["siblings", [], codec.encode_value("v")]
    [answer] = asyncio.run(routing.many("put", [(BUCKET, b"k", op, 2, 3)]))
    assert isinstance(answer, Unavailable) and "knows no node" in str(answer)
    anywhere = Routing({}, path="any", rng=random.Random(1))
    anywhere.adopt({"ring": Ring.create(NODES, 16).to_wire(), "config": {"n": 3}})
    with pytest.raises(Unavailable, match="knows no node"):
        asyncio.run(anywhere.put(BUCKET, b"k", op, 2, 3))


def test_a_dropped_message_was_never_sent():
    """Fault injection drops a request before it is sent: the failure says nothing
    arrived, so a write dropped so may go on to the next coordinator, as after a
    partition, instead of being reported as "may or may not"."""
    from dynaray.faults import Faults

    transport = Transport("client", rng=random.Random(1))
    sent: list = []

    class Node:
        def __getattr__(self, method):
            return self

        def remote(self, *args):
            sent.append(args)
            raise AssertionError("a dropped message is not sent")

    transport.set_peers({"n1": Node()})
    transport.set_faults(Faults(drop={"client>n1": 1.0}))
    with pytest.raises(PeerUnavailable) as caught:
        asyncio.run(transport.call("n1", "coordinate_batch", [], timeout=1))
    assert not caught.value.may_have_arrived and not sent


def test_a_request_waiting_for_the_call_ahead_keeps_its_own_deadline():
    """Its deadline counts from when it was asked, the wait for the call ahead of it to
    the same node included (it waited for that call's whole deadline, then its own); one
    never sent is not sent after it gave up, and says it was not sent: a write said "may
    or may not have been stored" and was not tried on the next coordinator."""
    transport, sent, release = _held_transport()

    async def main():
        first = asyncio.ensure_future(transport.call_batched("n1", "m", "a", timeout=30))
        await asyncio.sleep(0.01)  # "a" is in flight
        with pytest.raises(PeerUnavailable, match="not sent: the call ahead") as caught:
            await transport.call_batched("n1", "m", "b", timeout=0.05)
        assert not caught.value.may_have_arrived
        release.set()
        assert await first == "a"

    asyncio.run(main())
    assert sent == [["a"]]
