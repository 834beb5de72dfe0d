"""faults: the simulated network's partition, drop and delay table (no Ray)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dynaray import codec
from dynaray.faults import Faults, partition_table, with_rule

NODES = ["n1", "n2", "n3", "n4", "n5"]


def test_empty_table_cuts_nothing():
    faults = Faults()
    assert faults.empty
    rng = random.Random(0)
    for src in NODES:
        for dst in NODES:
            assert not faults.partitioned(src, dst)
            assert not faults.dropped(src, dst, rng)
            assert faults.delay_of(src, dst) == 0.0


def test_partitioned_is_symmetric_and_groups_are_connected():
    faults = Faults(groups=partition_table([["n1", "n2"], ["n3"]], NODES))
    assert not faults.empty
    assert faults.partitioned("n1", "n3") and faults.partitioned("n3", "n1")
    assert faults.partitioned("n2", "n4") and faults.partitioned("n4", "n2")
    assert not faults.partitioned("n1", "n2") and not faults.partitioned("n2", "n1")
    assert not faults.partitioned("n4", "n5")  # the left-out nodes' own group
    assert not faults.partitioned("n3", "n3")


def test_unknown_nodes_are_never_partitioned():
    faults = Faults(groups=partition_table([["n1"], ["n2"]], ["n1", "n2"]))
    for node in ("n1", "n2"):
        assert not faults.partitioned("client-1", node)
        assert not faults.partitioned(node, "client-1")
    assert not faults.partitioned("client-1", "client-2")


@given(st.lists(st.integers(0, 3), min_size=len(NODES), max_size=len(NODES)))
def test_partitioned_iff_different_groups(assignment):
    groups = [[n for n, g in zip(NODES, assignment, strict=True) if g == i] for i in range(4)]
    faults = Faults(groups=partition_table([g for g in groups if g], NODES))
    group_of = dict(zip(NODES, assignment, strict=True))
    for src in NODES + ["client"]:
        for dst in NODES + ["client"]:
            cut = faults.partitioned(src, dst)
            assert cut == faults.partitioned(dst, src)
            if "client" in (src, dst):
                assert not cut
            else:
                assert cut == (group_of[src] != group_of[dst])


def test_partition_table_left_out_nodes_form_one_group():
    table = partition_table([["n1", "n2"], ["n3"]], NODES)
    assert table == (frozenset({"n1", "n2"}), frozenset({"n3"}), frozenset({"n4", "n5"}))
    # everyone named: no extra group
    assert partition_table([["n1", "n2", "n3"], ["n4", "n5"]], NODES) == (
        frozenset({"n1", "n2", "n3"}),
        frozenset({"n4", "n5"}),
    )
    # isolate one node: it versus the rest
    assert partition_table([["n3"]], NODES) == (
        frozenset({"n3"}),
        frozenset({"n1", "n2", "n4", "n5"}),
    )


def test_partition_table_validation():
    with pytest.raises(ValueError, match="cannot be empty"):
        partition_table([["n1"], []], NODES)
    with pytest.raises(ValueError, match="unknown node 'x9'") as info:
        partition_table([["n1"], ["x9"]], NODES)
    assert "n5" in str(info.value)  # lists the known nodes
    with pytest.raises(ValueError, match="'n2' appears in two partition groups"):
        partition_table([["n1", "n2"], ["n2", "n3"]], NODES)
    with pytest.raises(ValueError, match="'n1'"):
        partition_table([["n1", "n1"]], NODES)


def test_drop_rate_is_roughly_p_with_seeded_rng():
    faults = Faults(drop={"n1>n2": 0.3})
    rng = random.Random(1234)
    trials = 20_000
    dropped = sum(faults.dropped("n1", "n2", rng) for _ in range(trials))
    assert abs(dropped / trials - 0.3) < 0.02
    # other links are untouched
    assert not any(faults.dropped("n2", "n1", rng) for _ in range(1000))
    # the same seed gives the same decisions
    a, b = random.Random(7), random.Random(7)
    assert [faults.dropped("n1", "n2", a) for _ in range(200)] == [
        faults.dropped("n1", "n2", b) for _ in range(200)
    ]


def test_drop_zero_and_one_are_exact():
    rng = random.Random(99)
    never = Faults(drop={"n1>n2": 0.0})
    always = Faults(drop={"n1>n2": 1.0})
    assert not any(never.dropped("n1", "n2", rng) for _ in range(5000))
    assert all(always.dropped("n1", "n2", rng) for _ in range(5000))


def test_drop_uses_the_same_link_precedence():
    faults = Faults(drop={"n1>n2": 0.0, ">n2": 1.0, "n1>": 1.0})
    rng = random.Random(0)
    assert not faults.dropped("n1", "n2", rng)  # the exact link wins
    assert faults.dropped("n3", "n2", rng)
    assert faults.dropped("n1", "n3", rng)
    assert not faults.dropped("n3", "n4", rng)


def test_delay_lookup_precedence():
    faults = Faults(delay={"n1>n2": 1.0, ">n2": 2.0, "n1>": 3.0})
    assert faults.delay_of("n1", "n2") == 1.0
    assert faults.delay_of("n3", "n2") == 2.0
    assert faults.delay_of("n1", "n3") == 3.0
    assert faults.delay_of("n3", "n4") == 0.0
    assert faults.delay_of("n2", "n1") == 0.0
    # without the exact link, ">dst" wins over "src>"
    assert Faults(delay={">n2": 2.0, "n1>": 3.0}).delay_of("n1", "n2") == 2.0


def test_a_rule_for_every_link_applies_to_every_link():
    faults = Faults(delay={">": 0.5, ">n2": 2.0})
    assert faults.delay_of("n3", "n4") == 0.5
    assert faults.delay_of("n1", "n2") == 2.0


def test_with_rule_sets_removes_and_overrides_a_wider_rule():
    assert with_rule({"a>b": 0.3}, "a>b", None) == {"a>b": 0.3}  # not given: as it was
    assert with_rule({"a>b": 0.3}, "a>b", 0.5) == {"a>b": 0.5}
    assert with_rule({"a>b": 0.3}, "a>b", 0) == {}  # 0 ends it
    assert with_rule({">b": 1.0}, "a>b", 0) == {">b": 1.0, "a>b": 0}  # a's way through
    assert with_rule({">": 1.0}, ">b", 0) == {">": 1.0, ">b": 0}
    assert with_rule({"a>b": 0.3}, ">b", 0) == {"a>b": 0.3}  # a narrower rule stays
    assert not Faults(drop=with_rule({">b": 1.0}, "a>b", 0)).dropped("a", "b", random.Random())


def test_wire_round_trip():
    faults = Faults(
        groups=partition_table([["n1", "n2"], ["n3"]], NODES),
        drop={"n1>n2": 0.25, ">n3": 1.0},
        delay={"n4>": 0.5},
    )
    wire = faults.to_wire()
    assert Faults.from_wire(wire) == faults
    # the wire form survives msgpack (lists, str keys, floats)
    back = Faults.from_wire(codec.unpack(codec.pack(wire)))
    assert back == faults
    assert back.partitioned("n1", "n3") and not back.partitioned("n1", "n2")
    assert Faults.from_wire(Faults().to_wire()) == Faults()
    assert Faults.from_wire({}).empty
    # integer rates from a user's table become floats
    assert Faults.from_wire({"drop": {"a>b": 1}}).drop == {"a>b": 1.0}


# -- how a Cluster handle hands the table out (no Ray: its calls and lookups are faked) ------


class _Actor:
    """An actor handle as far as _set_faults can tell: its Ray actor id."""

    def __init__(self, actor_id: str) -> None:
        self._actor_id = actor_id


def test_fault_tables_reach_known_actors_first_then_those_other_handles_started(monkeypatch):
    import threading

    from dynaray import cluster as cluster_module

    handle = object.__new__(cluster_module.Cluster)
    known = {"n1": _Actor("a1"), "n2": _Actor("a2"), "n3": _Actor("a3")}
    handle.store, handle._members, handle._handles = "s", ["n1", "n2", "n3", "n4"], dict(known)
    handle._shut = False  # a handle in use (shutdown() not run)
    calls: list[tuple] = []
    handle._ask = lambda method, *args, nodes=None: calls.append((method, nodes)) or {}
    handle._ring = lambda: None
    restarted, hung = _Actor("a2-new"), threading.Event()

    def get_actor(name: str, namespace: str):
        node = name.rsplit(".", 1)[-1]
        if node == "n1":
            return known["n1"]  # the same actor: nothing more to send
        if node == "n2":
            return restarted  # another driver restarted n2
        if node == "n3":
            raise ValueError("no actor")  # down: this handle keeps what it knew
        hung.wait(30)  # n4: the GCS does not answer
        raise TimeoutError

    monkeypatch.setattr(cluster_module.ray, "get_actor", get_actor)
    monkeypatch.setattr(cluster_module, "_FAULT_LOOKUP_WAIT", 0.5)
    try:
        handle._set_faults(Faults(partition_table([["n1"], ["n2", "n3", "n4"]], NODES)))
    finally:
        hung.set()
    assert calls == [("set_faults", None), ("set_faults", ["n2"])]
    assert handle._handles["n2"] is restarted and handle._handles["n3"] is known["n3"]
    assert "n4" not in handle._handles
