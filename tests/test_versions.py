"""Tests of the DVVSet clocks in dynaray.versions, mostly as properties of simulated systems."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynaray import versions as V

NODES = ("n0", "n1", "n2")


# --------------------------------------------------------------------------------------------
# A small simulated store: coordinator replicas, clients doing get -> put, anti-entropy syncs.
# Alongside the real clocks it keeps a reference model of what must be live, with no clocks:
# a replica's `history` is the set of values in its causal past and `dead` the set of values
# some put (in that past) had seen in its context. Live values must be exactly history - dead.
# --------------------------------------------------------------------------------------------


@dataclass
class Read:
    vv: V.VersionVector
    history: frozenset[bytes]
    returned: frozenset[bytes]


@dataclass
class Sim:
    nodes: tuple[str, ...]
    clocks: dict[str, V.Clock] = field(default_factory=dict)
    history: dict[str, frozenset[bytes]] = field(default_factory=dict)
    dead: dict[str, frozenset[bytes]] = field(default_factory=dict)
    snapshots: list[V.Clock] = field(default_factory=list)
    written: int = 0

    def __post_init__(self) -> None:
        for node in self.nodes:
            self.clocks[node] = V.EMPTY
            self.history[node] = frozenset()
            self.dead[node] = frozenset()

    def get(self, node: str) -> Read:
        clock = self.clocks[node]
        return Read(V.join(clock), self.history[node], frozenset(V.values(clock)))

    def put(self, node: str, read: Read | None, value: bytes | None = None) -> bytes:
        if value is None:
            value = b"v%d" % self.written
        self.written += 1
        vv = read.vv if read else None
        seen = read.history if read else frozenset()
        self.clocks[node] = V.update(V.new(vv, value), self.clocks[node], node)
        self.history[node] = self.history[node] | seen | {value}
        self.dead[node] = self.dead[node] | seen
        self.snapshots.append(self.clocks[node])
        return value

    def sync(self, a: str, b: str) -> None:
        merged = V.sync(self.clocks[a], self.clocks[b])
        history = self.history[a] | self.history[b]
        dead = self.dead[a] | self.dead[b]
        for node in (a, b):
            self.clocks[node] = merged
            self.history[node] = history
            self.dead[node] = dead
        self.snapshots.append(merged)

    def expected(self, node: str) -> frozenset[bytes]:
        return self.history[node] - self.dead[node]

    def check(self) -> None:
        for node in self.nodes:
            live = V.values(self.clocks[node])
            assert len(live) == len(set(live)), "a value appears twice"
            assert set(live) == self.expected(node), node
            for _, counter, vals in self.clocks[node][0]:
                assert len(vals) <= counter


@dataclass
class Scenario:
    n_nodes: int
    n_clients: int
    ops: list[tuple[str, int, int]]


@st.composite
def scenarios(draw: st.DrawFn, max_ops: int = 40) -> Scenario:
    n_nodes = draw(st.integers(2, 3))
    n_clients = draw(st.integers(1, 4))
    client = st.integers(0, n_clients - 1)
    node = st.integers(0, n_nodes - 1)
    op = st.one_of(
        # read a replica (the context is kept by the client and may go stale)
        st.tuples(st.just("get"), client, node),
        # write through a coordinator with the client's last context (None if it never read)
        st.tuples(st.just("put"), client, node),
        # read then write at once: a fresh context
        st.tuples(st.just("rmw"), client, node),
        st.tuples(st.just("sync"), node, node),
    )
    ops = draw(st.lists(op, max_size=max_ops))
    return Scenario(n_nodes, n_clients, ops)


def run(scenario: Scenario, check: bool = False) -> tuple[Sim, dict[int, Read]]:
    sim = Sim(NODES[: scenario.n_nodes])
    reads: dict[int, Read] = {}
    for kind, x, y in scenario.ops:
        if kind == "get":
            reads[x] = sim.get(sim.nodes[y])
        elif kind == "put":
            sim.put(sim.nodes[y], reads.get(x))
        elif kind == "rmw":
            reads[x] = sim.get(sim.nodes[y])
            sim.put(sim.nodes[y], reads[x])
        elif x != y:
            sim.sync(sim.nodes[x], sim.nodes[y])
        if check:
            sim.check()
    return sim, reads


@st.composite
def clock_pools(draw: st.DrawFn) -> list[V.Clock]:
    """Clocks that could coexist in one system: replicas now, replicas earlier, client clocks."""
    sim, reads = run(draw(scenarios()))
    pool = [*sim.clocks.values(), *sim.snapshots, V.EMPTY]
    pool += [V.new(read.vv, b"pending%d" % client) for client, read in reads.items()]
    return pool


@st.composite
def clock_triples(draw: st.DrawFn) -> tuple[V.Clock, V.Clock, V.Clock]:
    pool = draw(clock_pools())
    pick = st.sampled_from(pool)
    return draw(pick), draw(pick), draw(pick)


# --------------------------------------------------------------------------------------------
# sync is a join-semilattice merge
# --------------------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(clock_triples())
def test_sync_is_commutative_associative_idempotent(abc: tuple[V.Clock, V.Clock, V.Clock]) -> None:
    a, b, c = abc
    assert V.equal(V.sync(a, b), V.sync(b, a))
    assert V.equal(V.sync(V.sync(a, b), c), V.sync(a, V.sync(b, c)))
    assert V.equal(V.sync(a, a), a)
    # Merging in something already merged changes nothing.
    ab = V.sync(a, b)
    assert V.equal(V.sync(ab, b), ab)
    assert V.descends(V.join(ab), V.join(a))
    assert V.join(ab) == V.merge_contexts(V.join(a), V.join(b))


# --------------------------------------------------------------------------------------------
# put semantics
# --------------------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(scenarios(max_ops=60))
def test_model_no_value_disappears_unless_a_later_context_saw_it(scenario: Scenario) -> None:
    run(scenario, check=True)


@settings(max_examples=100, deadline=None)
@given(scenarios(), st.data())
def test_put_replaces_exactly_what_the_get_returned(
    scenario: Scenario, data: st.DataObject
) -> None:
    sim, _ = run(scenario)
    node = data.draw(st.sampled_from(sim.nodes))
    read = sim.get(node)
    # Concurrent activity between the get and the put: other writers and syncs.
    for _ in range(data.draw(st.integers(0, 4))):
        if data.draw(st.booleans()):
            other = sim.get(data.draw(st.sampled_from(sim.nodes)))
            sim.put(node, data.draw(st.sampled_from([other, None])))
        else:
            sim.sync(node, data.draw(st.sampled_from(sim.nodes)))
    before = set(V.values(sim.clocks[node]))
    new = sim.put(node, read)
    after = set(V.values(sim.clocks[node]))
    assert after == (before - read.returned) | {new}
    sim.check()


@settings(max_examples=100, deadline=None)
@given(scenarios(), st.data())
def test_two_puts_with_the_same_context_are_siblings(
    scenario: Scenario, data: st.DataObject
) -> None:
    sim, _ = run(scenario)
    reader = data.draw(st.sampled_from(sim.nodes))
    read = sim.get(reader)
    first, second = data.draw(st.sampled_from(sim.nodes)), data.draw(st.sampled_from(sim.nodes))
    v1 = sim.put(first, read)
    v2 = sim.put(second, read)
    sim.sync(first, second)
    live = set(V.values(sim.clocks[first]))
    assert {v1, v2} <= live
    assert not live & read.returned
    sim.check()


def test_two_puts_same_context_minimal() -> None:
    stored = V.update(V.new(None, b"a"), None, "n0")
    ctx = V.join(stored)
    stored = V.update(V.new(ctx, b"b"), stored, "n0")
    stored = V.update(V.new(ctx, b"c"), stored, "n0")
    assert sorted(V.values(stored)) == [b"b", b"c"]
    assert V.join(stored) == (("n0", 3),)
    # A write that saw both siblings resolves them.
    stored = V.update(V.new(V.join(stored), b"d"), stored, "n1")
    assert V.values(stored) == [b"d"]
    assert V.size(stored) == 1


def test_blind_writes_are_siblings_and_tombstones_are_values() -> None:
    stored = V.update(V.new(None, b"a"), None, "n0")
    stored = V.update(V.new(None, None), stored, "n0")
    assert V.values(stored) == [None, b"a"]
    stored = V.update(V.new(V.join(stored), None), stored, "n1")
    assert V.values(stored) == [None]


def test_update_advances_past_both_contexts() -> None:
    # The writer read a replica that knows more of n0's history than the coordinator does.
    stored = ((("n0", 3, (b"x",)),), ())
    clock = V.update(V.new((("n0", 5),), b"y"), stored, "n0")
    assert clock == ((("n0", 6, (b"y",)),), ())
    clock = V.update(V.new((("n0", 1), ("n1", 4)), b"z"), stored, "n0")
    assert clock == ((("n0", 4, (b"z", b"x")), ("n1", 4, ())), ())


def test_update_requires_exactly_one_new_value() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        V.update(V.EMPTY, None, "n0")
    two = V.sync(V.new(None, b"a"), V.new(None, b"b"))
    with pytest.raises(ValueError, match="exactly one"):
        V.update(two, None, "n0")


def test_new_keeps_only_the_context() -> None:
    assert V.new(None, b"v") == ((), (b"v",))
    assert V.new((("b", 2), ("a", 1), ("c", 0)), b"v") == ((("a", 1, ()), ("b", 2, ())), (b"v",))
    assert V.values(V.new((("a", 1),), b"v")) == [b"v"]
    assert V.join(V.new((("a", 1),), b"v")) == (("a", 1),)


# --------------------------------------------------------------------------------------------
# bounded siblings under read-then-write clients
# --------------------------------------------------------------------------------------------


@settings(max_examples=15, deadline=None)
@given(st.integers(2, 3), st.integers(2, 3), st.integers(0, 2**32 - 1))
def test_fresh_context_writers_keep_siblings_bounded(
    n_nodes: int, n_clients: int, seed: int
) -> None:
    rng = random.Random(seed)
    sim = Sim(NODES[:n_nodes])
    # Each client sticks to one coordinator, so it always reads its own previous write.
    home = {c: sim.nodes[c % n_nodes] for c in range(n_clients)}
    pending: dict[int, Read] = {}
    most = 0
    for _ in range(400):
        if rng.random() < 0.25:
            sim.sync(rng.choice(sim.nodes), rng.choice(sim.nodes))
        client = rng.randrange(n_clients)
        # Steps of different clients interleave: a read, then later that client's write.
        if client in pending:
            sim.put(home[client], pending.pop(client))
        else:
            pending[client] = sim.get(home[client])
        for node in sim.nodes:
            clock = sim.clocks[node]
            assert V.size(clock) <= n_clients
            assert len(clock[0]) <= n_nodes
            most = max(most, V.size(clock))
    sim.check()
    assert most >= 2  # interleaving did produce siblings, which were then resolved
    # Once everything is synced, one read-then-write collapses the siblings to one value.
    for a in sim.nodes:
        for b in sim.nodes:
            sim.sync(a, b)
    sim.put(sim.nodes[0], sim.get(sim.nodes[0]))
    assert V.size(sim.clocks[sim.nodes[0]]) == 1


# --------------------------------------------------------------------------------------------
# causality predicates
# --------------------------------------------------------------------------------------------


def test_descends_and_concurrent() -> None:
    empty: V.VersionVector = ()
    a = (("n0", 2), ("n1", 1))
    b = (("n0", 1),)
    c = (("n1", 2),)
    assert V.descends(a, a) and V.descends(a, empty) and V.descends(empty, empty)
    assert not V.descends(empty, a)
    assert V.descends(a, b) and not V.descends(b, a)
    assert not V.concurrent(a, b) and not V.concurrent(a, a)
    assert V.concurrent(a, c) and V.concurrent(b, c)
    assert V.descends((("n0", 1), ("n1", 0)), (("n0", 1),))
    assert V.descends((("n0", 1),), (("n1", 0),))
    assert V.merge_contexts(a, c, b) == (("n0", 2), ("n1", 2))
    assert V.merge_contexts() == ()


def test_sync_unions_undotted_values_without_duplicates() -> None:
    ctx = (("n0", 1),)
    a = V.new(ctx, b"x")
    both = V.sync(a, V.new(ctx, b"y"))
    assert sorted(V.values(both)) == [b"x", b"y"]
    assert V.size(V.sync(a, a)) == 1
    assert V.size(V.sync(both, a)) == 2
    assert V.join(both) == ctx


def test_equal_ignores_order_of_undotted_values_and_zero_entries() -> None:
    x = ((("a", 1, (b"x",)),), (b"p", b"q"))
    y = ((("a", 1, (b"x",)), ("b", 0, ())), (b"q", b"p"))
    assert V.equal(x, y)
    assert not V.equal(x, ((("a", 1, (b"y",)),), (b"p", b"q")))
    assert not V.equal(x, ((("a", 2, (b"x",)),), (b"p", b"q")))
    assert not V.equal(x, ((("a", 1, (b"x",)),), (b"p",)))


# --------------------------------------------------------------------------------------------
# wire format
# --------------------------------------------------------------------------------------------


def _through_msgpack(obj: object) -> object:
    return msgpack.unpackb(msgpack.packb(obj, use_bin_type=True), raw=False)


@settings(max_examples=60, deadline=None)
@given(clock_pools())
def test_wire_round_trip(pool: list[V.Clock]) -> None:
    for clock in pool:
        wire = _through_msgpack(V.to_wire(clock))
        assert V._well_formed(wire) == clock  # what msgpack yields takes the quick path
        assert V.from_wire(wire) == clock
        vv = V.join(clock)
        assert V.vv_from_wire(_through_msgpack(V.vv_to_wire(vv))) == vv


def test_wire_accepts_tuples_tombstones_and_zero_counters() -> None:
    clock = ((("a", 0, ()), ("b", 2, (None, b"x"))), (None,))
    assert V.from_wire(clock) == clock
    assert V.from_wire(_through_msgpack(V.to_wire(clock))) == clock
    assert V.vv_from_wire([["a", 0]]) == (("a", 0),)
    # A decoded zero-counter entry carries nothing and is dropped by the first sync.
    assert V.sync(V.from_wire(clock), V.EMPTY) == ((("b", 2, (None, b"x")),), (None,))


MALFORMED_CLOCKS = [
    None,
    "clock",
    b"clock",
    7,
    {"entries": [], "anonymous": []},
    [],
    [[]],
    [[], [], []],
    [{}, []],
    ["a", []],
    [[["a", 1]], []],
    [[["a", 1, [], 0]], []],
    [["a"], []],
    [[[1, 1, []]], []],
    [[[b"a", 1, []]], []],
    [[[None, 1, []]], []],
    [[["b", 1, []], ["a", 1, []]], []],
    [[["a", 1, []], ["a", 2, []]], []],
    [[["a", -1, []]], []],
    [[["a", 1.0, []]], []],
    [[["a", "1", []]], []],
    [[["a", True, []]], []],
    [[["a", 1, [b"x", b"y"]]], []],
    [[["a", 0, [b"x"]]], []],
    [[["a", 1, ["x"]]], []],
    [[["a", 1, [1]]], []],
    [[["a", 1, [[b"x"]]]], []],
    [[["a", 1, b"x"]], []],
    [[["a", 1, None]], []],
    [[], b"x"],
    [[], None],
    [[], ["x"]],
    [[], [bytearray(b"x")]],
]


@pytest.mark.parametrize("obj", MALFORMED_CLOCKS, ids=repr)
def test_from_wire_rejects_malformed(obj: object) -> None:
    # The quick check for well-formed clocks passes none of them on to be used...
    assert V._well_formed(obj) is None
    # ...and the full checks refuse every one.
    with pytest.raises(ValueError):
        V.from_wire(obj)


# Wire clocks that are often well formed and often off by one thing: odd types, unsorted or
# repeated ids, negative or boolean counters, more values than dots.
_ATOMS = st.one_of(st.none(), st.booleans(), st.integers(-2, 3), st.text("ab", max_size=2))
_WIRE_VALUES = st.lists(st.one_of(st.none(), st.binary(max_size=2), _ATOMS), max_size=3)
_WIRE_ENTRIES = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(-1, 4), _WIRE_VALUES).map(list),
        st.lists(_ATOMS, max_size=4),
        _ATOMS,
    ),
    max_size=3,
)
_WIRE_CLOCKS = st.one_of(st.tuples(_WIRE_ENTRIES, _WIRE_VALUES).map(list), _WIRE_ENTRIES, _ATOMS)


def _as_tuples(obj: object) -> object:
    return tuple(_as_tuples(item) for item in obj) if isinstance(obj, list) else obj


@settings(max_examples=400, deadline=None)
@given(_WIRE_CLOCKS)
def test_quick_check_agrees_with_the_full_checks(obj: object) -> None:
    # As tuples, a clock always takes the full checks; as lists, the quick one when it can.
    try:
        expected = V.from_wire(_as_tuples(obj))
    except ValueError:
        assert V._well_formed(obj) is None
        with pytest.raises(ValueError):
            V.from_wire(obj)
        return
    assert V.from_wire(obj) == expected
    assert V._well_formed(obj) in (None, expected)


MALFORMED_VVS = [
    None,
    "a",
    b"a",
    {"a": 1},
    [["a"]],
    [["a", 1, 2]],
    ["a1"],
    [[1, 1]],
    [[b"a", 1]],
    [["b", 1], ["a", 1]],
    [["a", 1], ["a", 1]],
    [["a", -1]],
    [["a", 1.5]],
    [["a", None]],
    [["a", False]],
]


@pytest.mark.parametrize("obj", MALFORMED_VVS, ids=repr)
def test_vv_from_wire_rejects_malformed(obj: object) -> None:
    with pytest.raises(ValueError):
        V.vv_from_wire(obj)


def test_from_wire_messages_say_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="sorted and unique"):
        V.from_wire([[["b", 1, []], ["a", 1, []]], []])
    with pytest.raises(ValueError, match="more values than dots"):
        V.from_wire([[["a", 1, [b"x", b"y"]]], []])
    with pytest.raises(ValueError, match=">= 0"):
        V.vv_from_wire([["a", -3]])
    with pytest.raises(ValueError, match="bytes or None"):
        V.from_wire([[], ["text"]])
