"""Tests for dynaray.ring: partitioning, preference lists, claim rules and the wire form."""

from __future__ import annotations

import pickle

import mmh3
import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynaray.ring import DEFAULT_PARTITIONS, Ring, key_hash


def ids(k: int, prefix: str = "node") -> list[str]:
    return [f"{prefix}-{i:03d}" for i in range(k)]


def keys(count: int) -> list[bytes]:
    return [b"key-%d" % i for i in range(count)]


def naive_preference_list(ring: Ring, partition: int) -> tuple[str, ...]:
    """The definition, walked literally: distinct owners from ``partition`` onwards."""
    out: list[str] = []
    for step in range(ring.partitions):
        owner = ring.owners[(partition + step) % ring.partitions]
        if owner not in out:
            out.append(owner)
    return tuple(out)


def loads(ring: Ring) -> dict[str, int]:
    return {n: len(ring.partitions_of(n)) for n in ring.nodes()}


def assert_balanced(ring: Ring) -> None:
    k = len(ring.nodes())
    low, high = ring.partitions // k, -(-ring.partitions // k)
    assert all(low <= c <= high for c in loads(ring).values()), loads(ring)


def assert_preference_lists(ring: Ring) -> None:
    nodes = set(ring.nodes())
    for p in range(ring.partitions):
        pref = ring.preference_list(p)
        assert len(pref) == len(set(pref)) == len(nodes)
        assert set(pref) == nodes
        assert pref[0] == ring.owners[p]


def assert_replica_balance(ring: Ring) -> None:
    """Each node is among the first 3 replicas of about 3Q/k partitions."""
    k = len(ring.nodes())
    q = ring.partitions
    # Ownership itself is floor/ceil, so the top-3 count is 3x that, give or take the few
    # partitions a leave had to put next to a partition of the same node.
    slack = max(3, round(0.1 * 3 * q / k))
    for n in ring.nodes():
        count = len(ring.replicated_partitions(n, 3))
        assert 3 * (q // k) - slack <= count <= 3 * -(-q // k) + slack, (n, count, 3 * q / k)


def moved(before: Ring, after: Ring) -> dict[int, tuple[str, str]]:
    return {
        p: (a, b)
        for p, (a, b) in enumerate(zip(before.owners, after.owners, strict=True))
        if a != b
    }


# --- hashing and partitioning ---


def test_key_hash_is_unsigned_32_bit_mmh3() -> None:
    for data in (b"", b"a", b"hello", bytes(range(256))):
        h = key_hash(data)
        assert h == mmh3.hash(data, signed=False)
        assert 0 <= h < 2**32


@given(st.binary(max_size=64), st.sampled_from([8, 64, 256, 4096, 2**16]))
def test_partition_of_is_the_scaled_hash(data: bytes, q: int) -> None:
    ring = Ring.create(["a"], q)
    p = ring.partition_of(data)
    assert p == key_hash(data) * q >> 32
    assert 0 <= p < q


def test_partition_of_is_roughly_uniform() -> None:
    ring = Ring.create(ids(4), 16)
    counts = [0] * 16
    for k in keys(32_000):
        counts[ring.partition_of(k)] += 1
    # 2000 expected per partition, standard deviation ~43: 10% is over 4 sigma.
    assert all(1800 <= c <= 2200 for c in counts), counts


@pytest.mark.parametrize("q", [0, 1, 4, 7, 12, 100, 255, 2**33, -8, True, 8.0, "256", None])
def test_bad_partition_counts_are_rejected(q: object) -> None:
    with pytest.raises(ValueError, match="power of two"):
        Ring.create(["a"], q)  # type: ignore[arg-type]


# --- create ---


@pytest.mark.parametrize("k", [1, 2, 3, 5, 7, 13, 100, 256])
def test_create_is_balanced_round_robin(k: int) -> None:
    nodes = ids(k)[::-1]  # order of the argument must not matter
    ring = Ring.create(nodes)
    assert ring.partitions == DEFAULT_PARTITIONS
    assert ring.version == 1
    assert ring.nodes() == tuple(sorted(nodes))
    assert ring.owners == tuple(sorted(nodes)[p % k] for p in range(ring.partitions))
    assert_balanced(ring)
    if k > 1:
        assert all(ring.owners[p] != ring.owners[p + 1] for p in range(ring.partitions - 1))
    assert Ring.create(nodes) == ring  # deterministic


@pytest.mark.parametrize(
    ("nodes", "q", "message"),
    [
        ([], 8, "at least one node"),
        (["a", "b", "a"], 8, "duplicate"),
        (ids(9), 8, "9 nodes but only 8 partitions"),
        (["a", ""], 8, "non-empty string"),
        (["a", 3], 8, "non-empty string"),
        ("abc", 8, "not a single string"),
    ],
)
def test_create_rejects_bad_nodes(nodes: object, q: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Ring.create(nodes, q)  # type: ignore[arg-type]


def test_constructor_validates() -> None:
    with pytest.raises(ValueError, match="expected one per partition"):
        Ring(8, ("a",) * 7)
    with pytest.raises(ValueError, match="version"):
        Ring(8, ("a",) * 8, 0)
    with pytest.raises(ValueError, match="non-empty string"):
        Ring(8, ("a",) * 7 + (None,))  # type: ignore[arg-type]
    assert Ring(8, ["a"] * 8).owners == ("a",) * 8  # type: ignore[arg-type]


# --- preference lists and queries ---


@pytest.mark.parametrize("k", [1, 2, 3, 5, 8, 64])
def test_preference_lists_hold_every_node_once(k: int) -> None:
    ring = Ring.create(ids(k), 64)
    assert_preference_lists(ring)
    for p in range(ring.partitions):
        assert ring.preference_list(p) == naive_preference_list(ring, p)
    if k >= 3:
        # Round-robin: away from the wrap, the replicas are the owners of p, p+1, p+2.
        for p in range(ring.partitions - 2):
            assert ring.preference_list(p)[:3] == ring.owners[p : p + 3]


def test_preference_list_is_cached_and_range_checked() -> None:
    ring = Ring.create(ids(5), 64)
    assert ring.preference_list(7) is ring.preference_list(7)
    for bad in (-1, 64, 1000):
        with pytest.raises(ValueError, match="outside"):
            ring.preference_list(bad)


def test_partitions_of_and_replicated_partitions() -> None:
    ring = Ring.create(ids(5), 64)
    assert sorted(p for n in ring.nodes() for p in ring.partitions_of(n)) == list(range(64))
    assert ring.partitions_of("nobody") == ()
    assert ring.replicated_partitions("nobody", 3) == ()
    for n in ring.nodes():
        assert ring.replicated_partitions(n, 1) == ring.partitions_of(n)
        assert ring.replicated_partitions(n, 5) == tuple(range(64))
        assert ring.replicated_partitions(n, 50) == tuple(range(64))
    # Every partition is stored by exactly 3 nodes.
    stored = [p for n in ring.nodes() for p in ring.replicated_partitions(n, 3)]
    assert all(stored.count(p) == 3 for p in range(64))
    for bad in (0, -1, True):
        with pytest.raises(ValueError, match="replication factor"):
            ring.replicated_partitions("node-000", bad)  # type: ignore[arg-type]


# --- joins and leaves ---


@pytest.mark.parametrize(("k", "q"), [(1, 8), (2, 64), (3, 256), (4, 256), (9, 256), (30, 1024)])
def test_with_node_moves_only_to_the_newcomer(k: int, q: int) -> None:
    ring = Ring.create(ids(k), q)
    joined = ring.with_node("zz-new")
    assert joined.version == ring.version + 1
    changes = moved(ring, joined)
    assert all(new == "zz-new" for _, new in changes.values())
    assert q // (k + 1) <= len(changes) <= -(-q // (k + 1))
    assert joined.partitions_of("zz-new") == tuple(sorted(changes))
    assert_balanced(joined)
    assert_preference_lists(joined)
    # The fraction of keys that move is close to the ideal 1 / (k + 1).
    sample = keys(20_000)
    moved_keys = sum(ring.partition_of(x) in changes for x in sample)
    assert abs(moved_keys / len(sample) - 1 / (k + 1)) < 0.02


@pytest.mark.parametrize(("k", "q"), [(3, 64), (4, 256), (9, 256), (30, 1024)])
def test_with_node_spaces_the_newcomer_3_apart(k: int, q: int) -> None:
    joined = Ring.create(ids(k), q).with_node("zz-new")
    mine = joined.partitions_of("zz-new")
    gaps = [(b - a) % q for a, b in zip(mine, mine[1:] + mine[:1], strict=True)]
    assert min(gaps) >= 3


def test_with_node_errors() -> None:
    ring = Ring.create(ids(3), 8)
    with pytest.raises(ValueError, match="already in the ring"):
        ring.with_node("node-001")
    with pytest.raises(ValueError, match="non-empty string"):
        ring.with_node("")
    full = Ring.create(ids(8), 8)
    with pytest.raises(ValueError, match="exceed the 8 partitions"):
        full.with_node("one-too-many")


@pytest.mark.parametrize(("k", "q"), [(2, 8), (3, 64), (5, 256), (10, 256), (31, 1024)])
def test_without_node_moves_only_the_leavers_partitions(k: int, q: int) -> None:
    ring = Ring.create(ids(k), q)
    leaver = ring.nodes()[k // 2]
    left = ring.without_node(leaver)
    assert left.version == ring.version + 1
    changes = moved(ring, left)
    assert set(changes) == set(ring.partitions_of(leaver))
    assert all(old == leaver for old, _ in changes.values())
    assert leaver not in left.nodes()
    assert_balanced(left)
    assert_preference_lists(left)


def test_without_node_errors() -> None:
    ring = Ring.create(ids(2), 8)
    with pytest.raises(ValueError, match="not in the ring"):
        ring.without_node("stranger")
    with pytest.raises(ValueError, match="last node"):
        ring.without_node("node-000").without_node("node-001")


def test_claims_on_an_unbalanced_ring() -> None:
    # A hand-made ring (from_wire accepts any owners): claims still move only what they may.
    ring = Ring(16, ("a",) * 12 + ("b",) * 3 + ("c",))
    joined = ring.with_node("d")
    assert len(joined.partitions_of("d")) == 4
    assert all(old == "a" and new == "d" for old, new in moved(ring, joined).values())
    left = ring.without_node("b")
    assert set(moved(ring, left)) == set(ring.partitions_of("b"))
    assert all(new == "c" for _, new in moved(ring, left).values())


def test_claims_are_deterministic() -> None:
    ring = Ring.create(ids(7), 256)
    assert ring.with_node("x") == ring.with_node("x")
    assert ring.without_node("node-003") == ring.without_node("node-003")


@pytest.mark.parametrize(("k", "q"), [(3, 256), (4, 256), (5, 1024), (8, 256), (20, 1024)])
def test_replica_load_follows_ownership_through_churn(k: int, q: int) -> None:
    ring = Ring.create(ids(k), q)
    assert_replica_balance(ring)
    for step in range(6):
        if step % 2 == 0:
            ring = ring.with_node(f"joiner-{step}")
        else:
            ring = ring.without_node(ring.nodes()[step % len(ring.nodes())])
        assert_balanced(ring)
        for p in range(q):
            assert len(set(ring.preference_list(p)[:3])) == 3
        assert_replica_balance(ring)


# --- wire form and pickling ---


def test_wire_round_trip_through_msgpack() -> None:
    ring = Ring.create(ids(5), 64).with_node("extra").without_node("node-002")
    wire = ring.to_wire()
    assert wire["v"] == 1 and wire["version"] == 3
    back = Ring.from_wire(msgpack.unpackb(msgpack.packb(wire)))
    assert back == ring
    assert back.preference_list(10) == ring.preference_list(10)


def test_a_ring_stored_before_departed_ids_still_reads() -> None:
    wire = Ring.create(["n1", "n2", "n3"], 8).to_wire()
    del wire["departed"]
    assert Ring.from_wire(wire).departed == () and Ring.from_wire(wire).departures_known
    # A changed one may have lost nodes whose ids it does not know.
    changed = Ring.create(["n1", "n2", "n3"], 8).with_node("n4").to_wire()
    del changed["departed"]
    legacy = Ring.from_wire(changed)
    assert not legacy.departures_known
    assert not legacy.without_node("n2").departures_known  # for good
    assert legacy.unused_id() == "n5"


def test_pickle_round_trip() -> None:
    ring = Ring.create(ids(5), 64).without_node("node-003")
    ring.preference_list(0)  # populate the cache; it must not be what travels
    back = pickle.loads(pickle.dumps(ring))
    assert back == ring
    assert back.preference_list(3) == ring.preference_list(3)


GOOD = Ring.create(["a", "b", "c"], 8).to_wire()


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ([], "must be a dict"),
        ({**GOOD, "v": 2}, "format 2 is not supported"),
        ({**GOOD, "v": True}, "not supported"),
        ({k: v for k, v in GOOD.items() if k != "owners"}, "lacks owners"),
        ({**GOOD, "extra": 1}, "unknown keys"),
        ({**GOOD, "partitions": 12}, "power of two"),
        ({**GOOD, "partitions": "8"}, "power of two"),
        ({**GOOD, "owners": "abcabcab"}, "must be a list"),
        ({**GOOD, "owners": ["a"] * 7}, "expected one per partition"),
        ({**GOOD, "owners": ["a"] * 7 + [1]}, "non-empty string"),
        ({**GOOD, "owners": ["a"] * 7 + [""]}, "non-empty string"),
        ({**GOOD, "owners": ["a"] * 7 + [["a"]]}, "non-empty string"),
        ({**GOOD, "version": 0}, "version"),
        ({**GOOD, "version": "1"}, "version"),
        ({**GOOD, "departed": "a"}, "departed must be a list"),
        ({**GOOD, "departed": [""]}, "non-empty string"),
        ({**GOOD, "departed": ["b"]}, "departed nodes 'b' own partitions"),
        ({**GOOD, "owners": ["*"] * 8}, "'\\*' is not a node id"),
    ],
)
def test_from_wire_rejects_malformed_input(obj: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Ring.from_wire(obj)


# --- node ids ---


def test_a_departed_id_is_never_given_out_again() -> None:
    ring = Ring.create(["n1", "n2", "n3", "n4"], 16)
    assert ring.unused_id() == "n5"
    ring = ring.with_node("n5").without_node("n5")  # the highest number left
    assert ring.departed == ("n5",) and ring.unused_id() == "n6"
    ring = ring.without_node("n2").with_node("n6")
    assert ring.departed == ("n2", "n5") and ring.unused_id() == "n7"
    with pytest.raises(ValueError, match="left the ring; give the new node an id never used"):
        ring.with_node("n2")
    # Departures are remembered through every later change and over the wire.
    ring = ring.with_node("n7").without_node("n1")
    assert ring.departed == ("n1", "n2", "n5")
    assert Ring.from_wire(ring.to_wire()).departed == ring.departed
    # Ids of another shape never collide with the numbered ones.
    assert Ring.create(["a", "b", "n", "n\u00b2"], 8).unused_id() == "n1"
    # Ids held elsewhere (an actor, a directory) are passed over too.
    assert ring.unused_id(taken={"n9", "x"}) == "n10"


# --- random membership changes ---


@settings(max_examples=60, deadline=None)
@given(
    q=st.sampled_from([8, 16, 64, 256]),
    start=st.integers(1, 8),
    ops=st.lists(st.tuples(st.booleans(), st.integers(0, 1000)), max_size=12),
)
def test_random_joins_and_leaves_keep_invariants(
    q: int, start: int, ops: list[tuple[bool, int]]
) -> None:
    ring = Ring.create(ids(start), q)
    left: set[str] = set()
    for serial, (join, pick) in enumerate(ops):
        k = len(ring.nodes())
        if join and k < q:
            node = f"j-{serial}"
            after = ring.with_node(node)
            assert all(new == node for _, new in moved(ring, after).values())
        elif k > 1:
            node = ring.nodes()[pick % k]
            after = ring.without_node(node)
            assert set(moved(ring, after)) == set(ring.partitions_of(node))
            left.add(node)
        else:
            continue
        assert after.version == ring.version + 1
        ring = after
        assert len(ring.owners) == q
        assert sorted(p for n in ring.nodes() for p in ring.partitions_of(n)) == list(range(q))
        assert_balanced(ring)
        assert_preference_lists(ring)
        assert Ring.from_wire(ring.to_wire()) == ring
        assert set(ring.departed) == left and not left & set(ring.nodes())
        assert ring.unused_id() not in left | set(ring.nodes())
