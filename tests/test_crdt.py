"""CRDT laws and semantics: join laws over simulated replica histories, each type's conflict
rule, canonical msgpack round trips and validation."""

from __future__ import annotations

import itertools

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynaray import crdt
from dynaray.crdt import CRDTError

ACTORS = ("n1", "n2", "n3")
ELEMS = (b"a", b"b", b"c")
VALUES = (b"", b"x", b"y")
SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def roundtrip(state: object) -> object:
    return msgpack.unpackb(msgpack.packb(state, use_bin_type=True), raw=False)


def merge_all(kind: str, *states: object) -> object:
    out = crdt.new(kind)
    for state in states:
        out = crdt.merge(kind, out, state)
    return out


# -- simulated histories --------------------------------------------------------------------------


def draw_op(draw, kind: str, contexts: list, depth: int = 0) -> list:
    """A random client op; remove/disable contexts come from reads of any earlier state, so a
    coordinator may be behind the read (deferred removes) or ahead of it (concurrent adds)."""
    if kind == "counter":
        return ["increment", draw(st.integers(-5, 5))]
    if kind == "register":
        return ["assign", draw(st.integers(0, 3)), draw(st.sampled_from(VALUES))]
    if kind == "set":
        elems = draw(st.lists(st.sampled_from(ELEMS), min_size=1, max_size=2))
        if draw(st.booleans()):
            return ["add", elems]
        return ["remove", elems, draw(st.none() | st.sampled_from(contexts))]
    if kind == "flag":
        if draw(st.booleans()):
            return ["enable"]
        return ["disable", draw(st.none() | st.sampled_from(contexts))]
    kinds = crdt.TYPES if depth == 0 else ("counter", "set", "register", "flag")
    fields = draw(
        st.lists(st.tuples(st.sampled_from(["f", "g"]), st.sampled_from(kinds)), max_size=3)
    )
    return ["update", [[name, fk, draw_op(draw, fk, contexts, depth + 1)] for name, fk in fields]]


@st.composite
def histories(draw, kind: str) -> list:
    """Every state seen while 3 replicas, each its own actor, apply ops and merge at random."""
    replicas = [crdt.new(kind)] * 3
    seen = [crdt.new(kind)]
    for _ in range(draw(st.integers(0, 14))):
        i = draw(st.integers(0, 2))
        if draw(st.booleans()):
            replicas[i] = crdt.merge(kind, replicas[i], replicas[draw(st.integers(0, 2))])
        else:
            # reads of the replicas as they are now, weighted up, and of any earlier state
            contexts = [crdt.context(kind, s) for s in [*replicas, *replicas, *seen]]
            op = draw_op(draw, kind, contexts)
            replicas[i] = crdt.apply(kind, replicas[i], op, ACTORS[i])
        seen.append(replicas[i])
    return seen


def triples(kind: str):
    return histories(kind).flatmap(lambda seen: st.tuples(*[st.sampled_from(seen)] * 3))


@pytest.mark.parametrize("kind", crdt.TYPES)
@SETTINGS
@given(data=st.data())
def test_join_laws(kind, data):
    a, b, c = data.draw(triples(kind))
    # structural equality: equal states are identical, which is also the canonical form
    assert crdt.merge(kind, a, b) == crdt.merge(kind, b, a)
    assert crdt.merge(kind, crdt.merge(kind, a, b), c) == crdt.merge(
        kind, a, crdt.merge(kind, b, c)
    )
    assert crdt.merge(kind, a, a) == a
    assert crdt.merge(kind, a, crdt.new(kind)) == a == crdt.merge(kind, crdt.new(kind), a)
    assert crdt.merge(kind, a, None) == a
    values = {
        repr(sorted_value(crdt.value(kind, merge_all(kind, *order))))
        for order in itertools.permutations((a, b, c))
    }
    assert len(values) == 1


def sorted_value(v: object) -> object:
    if isinstance(v, frozenset):
        return sorted(v)
    if isinstance(v, dict):
        return sorted((k, sorted_value(x)) for k, x in v.items())
    return v


@pytest.mark.parametrize("kind", crdt.TYPES)
@SETTINGS
@given(data=st.data())
def test_msgpack_round_trip_then_check(kind, data):
    for state in data.draw(histories(kind)):
        wire = roundtrip(state)
        assert crdt.check(kind, wire) == state
        assert crdt.check(kind, state) == state
        assert msgpack.packb(crdt.check(kind, wire), use_bin_type=True) == msgpack.packb(
            state, use_bin_type=True
        )


@SETTINGS
@given(data=st.data())
def test_local_effects_of_ops(data):
    """An op's effect shows at once on the coordinator: what a client reads after its write."""
    seen = data.draw(histories("map"))
    state = seen[-1]
    before = crdt.value("map", state)
    elems = data.draw(st.lists(st.sampled_from(ELEMS), min_size=1, max_size=2))
    delta = data.draw(st.integers(-5, 5))
    own_read = data.draw(st.booleans())
    ctx = crdt.context("map", state) if own_read else None
    # field names the history never uses, so each has one kind and keeps its plain key
    after = crdt.apply(
        "map",
        state,
        [
            "update",
            [
                ["count", "counter", ["increment", delta]],
                ["added", "set", ["add", elems[:1]]],
                ["removed", "set", ["remove", elems, ctx]],
                ["on", "flag", ["enable"]],
                ["off", "flag", ["disable", ctx]],
            ],
        ],
        "n1",
    )
    got = crdt.value("map", after)
    assert got["count"] == before.get("count", 0) + delta
    assert set(elems[:1]) <= got["added"]
    # (a remove or disable that found nothing adds no field: read as the empty one)
    assert not set(elems) & got.get("removed", frozenset())
    assert got["on"] is True
    assert got.get("off", False) is False
    # and again on top of the result, where these fields already exist
    again = crdt.apply(
        "map",
        after,
        ["update", [["count", "counter", ["increment", 1]], ["on", "flag", ["disable", ctx]]]],
        "n1",
    )
    assert crdt.value("map", again)["count"] == got["count"] + 1
    # a context read before the enable does not cover it (enable wins); None disables all
    assert crdt.value("map", again)["on"] is (ctx is not None)


def test_new_and_unknown_kind():
    assert crdt.value("counter", crdt.new("counter")) == 0
    assert crdt.value("set", crdt.new("set")) == frozenset()
    assert crdt.value("register", crdt.new("register")) is None
    assert crdt.value("flag", crdt.new("flag")) is False
    assert crdt.value("map", crdt.new("map")) == {}
    for kind in crdt.TYPES:
        assert crdt.value(kind, None) == crdt.value(kind, crdt.new(kind))
        assert crdt.context(kind, None) == []
    for fn in (crdt.new, lambda k: crdt.value(k, None), lambda k: crdt.check(k, [])):
        with pytest.raises(ValueError, match="unknown CRDT kind"):
            fn("bogus")
    assert issubclass(CRDTError, ValueError)


# -- counter --------------------------------------------------------------------------------------


def test_counter_concurrent_increments_sum():
    r1 = crdt.apply("counter", None, ["increment", 5], "n1")
    r1 = crdt.apply("counter", r1, ["increment", 2], "n1")
    r2 = crdt.apply("counter", None, ["increment", -3], "n2")
    r3 = crdt.apply("counter", None, ["increment", 10], "n3")
    r3 = crdt.apply("counter", r3, ["increment", -1], "n3")
    merged = merge_all("counter", r1, r2, r3)
    assert crdt.value("counter", merged) == 13
    assert merged == [["n1", 7, 0], ["n2", 0, 3], ["n3", 10, 1]]
    # re-delivering a replica's state counts nothing twice
    assert crdt.value("counter", merge_all("counter", merged, r1, r3, r1)) == 13
    assert crdt.context("counter", merged) == []
    assert crdt.apply("counter", None, ["increment", 0], "n1") == []


# -- set ------------------------------------------------------------------------------------------


def test_set_add_wins_over_concurrent_remove():
    a = crdt.apply("set", None, ["add", [b"x", b"y"]], "n1")
    b = crdt.merge("set", crdt.new("set"), a)
    read = crdt.context("set", b)
    # n1 adds x again concurrently with a client's remove of the x it read through n2
    a = crdt.apply("set", a, ["add", [b"x"]], "n1")
    b = crdt.apply("set", b, ["remove", [b"x", b"y"], read], "n2")
    assert crdt.value("set", b) == frozenset()
    for merged in (crdt.merge("set", a, b), crdt.merge("set", b, a)):
        assert crdt.value("set", merged) == {b"x"}


def test_set_add_wins_over_remove_without_context():
    a = crdt.apply("set", None, ["add", [b"x"]], "n1")
    b = crdt.merge("set", None, a)
    a = crdt.apply("set", a, ["add", [b"x"]], "n1")
    b = crdt.apply("set", b, ["remove", [b"x"], None], "n2")
    assert crdt.value("set", crdt.merge("set", a, b)) == {b"x"}


def test_set_seen_remove_removes_everywhere_and_readd_works():
    a = crdt.apply("set", None, ["add", [b"x", b"y"]], "n1")
    b = crdt.apply("set", None, ["add", [b"x"]], "n2")
    c = merge_all("set", a, b)
    c = crdt.apply("set", c, ["remove", [b"x"], crdt.context("set", c)], "n3")
    a, b = crdt.merge("set", a, c), crdt.merge("set", b, c)
    c = merge_all("set", a, b, c)
    for state in (a, b, c):
        assert crdt.value("set", state) == {b"y"}
    a = crdt.apply("set", a, ["add", [b"x"]], "n1")
    for state in (crdt.merge("set", a, b), crdt.merge("set", c, a)):
        assert crdt.value("set", state) == {b"x", b"y"}


def test_set_remove_through_a_coordinator_behind_the_read_is_deferred():
    a = crdt.apply("set", None, ["add", [b"x"]], "n1")
    read = crdt.context("set", a)
    # n2 has not seen the add yet: it keeps the remove until it has
    b = crdt.apply("set", None, ["remove", [b"x"], read], "n2")
    assert b[2] == [[[["n1", 1]], [b"x"]]]
    merged = crdt.merge("set", a, b)
    assert crdt.value("set", merged) == frozenset()
    assert merged[2] == []  # applied, so no longer kept
    # a later add is not covered by the remove's context and survives it
    a2 = crdt.apply("set", crdt.apply("set", a, ["add", [b"x"]], "n1"), ["add", [b"z"]], "n1")
    assert crdt.value("set", crdt.merge("set", b, a2)) == {b"x", b"z"}


def test_set_canonical_form():
    s = crdt.apply("set", None, ["add", [b"b", b"a", b"b"]], "n2")
    s = crdt.apply("set", s, ["add", [b"c"]], "n1")
    assert s == [
        [["n1", 1], ["n2", 1]],
        [[b"a", [["n2", 1]]], [b"b", [["n2", 1]]], [b"c", [["n1", 1]]]],
        [],
    ]
    assert crdt.apply("set", s, ["add", []], "n1") == s
    assert crdt.apply("set", s, ["remove", [b"zz"], None], "n1") == s


# -- register -------------------------------------------------------------------------------------


def test_register_highest_timestamp_wins_in_any_order():
    states = [
        crdt.apply("register", None, ["assign", 5, b"five"], "n1"),
        crdt.apply("register", None, ["assign", 9, b"nine"], "n2"),
        crdt.apply("register", None, ["assign", 7, b"seven"], "n3"),
    ]
    for order in itertools.permutations(states):
        assert crdt.value("register", merge_all("register", *order)) == b"nine"
    # an older assignment through the coordinator does not overwrite a newer one
    late = crdt.apply("register", states[1], ["assign", 1, b"old"], "n1")
    assert crdt.value("register", late) == b"nine"


def test_register_tie_break_is_deterministic():
    a = crdt.apply("register", None, ["assign", 4, b"zzz"], "n1")
    b = crdt.apply("register", None, ["assign", 4, b"aaa"], "n2")
    assert crdt.merge("register", a, b) == crdt.merge("register", b, a) == [4, "n2", b"aaa"]
    c = crdt.apply("register", None, ["assign", 4, b"bbb"], "n2")
    assert crdt.value("register", crdt.merge("register", b, c)) == b"bbb"
    assert crdt.value("register", crdt.merge("register", c, b)) == b"bbb"


# -- flag -----------------------------------------------------------------------------------------


def test_flag_enable_wins_over_concurrent_disable():
    a = crdt.apply("flag", None, ["enable"], "n1")
    b = crdt.merge("flag", None, a)
    read = crdt.context("flag", b)
    a = crdt.apply("flag", a, ["enable"], "n1")
    b = crdt.apply("flag", b, ["disable", read], "n2")
    assert crdt.value("flag", b) is False
    assert crdt.value("flag", crdt.merge("flag", a, b)) is True
    assert crdt.value("flag", crdt.merge("flag", b, a)) is True


def test_flag_disable_that_saw_every_enable_wins():
    a = crdt.apply("flag", None, ["enable"], "n1")
    b = crdt.apply("flag", None, ["enable"], "n2")
    c = merge_all("flag", a, b)
    c = crdt.apply("flag", c, ["disable", None], "n3")
    assert crdt.value("flag", merge_all("flag", a, b, c)) is False
    assert crdt.value("flag", merge_all("flag", c, b, a)) is False


# -- map ------------------------------------------------------------------------------------------


def test_map_nested_fields_of_every_kind():
    op = [
        "update",
        [
            ["hits", "counter", ["increment", 2]],
            ["tags", "set", ["add", [b"t1", b"t2"]]],
            ["name", "register", ["assign", 1, b"ann"]],
            ["vip", "flag", ["enable"]],
            ["addr", "map", ["update", [["city", "register", ["assign", 1, b"oslo"]]]]],
        ],
    ]
    a = crdt.apply("map", None, op, "n1")
    b = crdt.apply(
        "map",
        crdt.merge("map", None, a),
        [
            "update",
            [
                ["hits", "counter", ["increment", 3]],
                ["tags", "set", ["remove", [b"t1"], None]],
                ["name", "register", ["assign", 2, b"bob"]],
                ["addr", "map", ["update", [["zip", "counter", ["increment", -1]]]]],
            ],
        ],
        "n2",
    )
    a = crdt.apply("map", a, ["update", [["hits", "counter", ["increment", 10]]]], "n1")
    for merged in (crdt.merge("map", a, b), crdt.merge("map", b, a)):
        assert crdt.value("map", merged) == {
            "hits": 15,
            "tags": {b"t2"},
            "name": b"bob",
            "vip": True,
            "addr": {"city": b"oslo", "zip": -1},
        }
    # only adds and enables take a dot: n2's update needed none
    assert crdt.context("map", crdt.merge("map", a, b)) == [["n1", 1]]


def test_map_concurrent_updates_to_different_fields_both_survive():
    a = crdt.apply("map", None, ["update", [["x", "set", ["add", [b"1"]]]]], "n1")
    b = crdt.apply("map", None, ["update", [["y", "flag", ["enable"]]]], "n2")
    c = crdt.apply("map", None, ["update", [["z", "counter", ["increment", 4]]]], "n3")
    expected = {"x": {b"1"}, "y": True, "z": 4}
    for order in itertools.permutations((a, b, c)):
        assert crdt.value("map", merge_all("map", *order)) == expected


def test_map_counters_add_up():
    replicas = [
        crdt.apply("map", None, ["update", [["n", "counter", ["increment", i]]]], actor)
        for i, actor in enumerate(ACTORS, start=1)
    ]
    merged = merge_all("map", *replicas)
    merged = crdt.apply("map", merged, ["update", [["n", "counter", ["increment", 4]]]], "n1")
    assert crdt.value("map", merge_all("map", *replicas, merged)) == {"n": 10}


def test_map_context_does_not_remove_a_concurrent_add_in_another_field():
    # the map context covers dots of every field; a field's own dots must come from the same
    # clock, or a context advanced by other fields would cover a concurrent add here
    a = crdt.apply("map", None, ["update", [["s", "set", ["add", [b"x"]]]]], "n1")
    for _ in range(3):
        a = crdt.apply("map", a, ["update", [["f", "flag", ["enable"]]]], "n1")
    b = crdt.merge("map", None, a)
    read = crdt.context("map", b)
    a = crdt.apply("map", a, ["update", [["s", "set", ["add", [b"x"]]]]], "n1")
    b = crdt.apply("map", b, ["update", [["s", "set", ["remove", [b"x"], read]]]], "n2")
    assert crdt.value("map", b)["s"] == frozenset()
    assert crdt.value("map", crdt.merge("map", a, b))["s"] == {b"x"}
    # and a remove that saw the add wins
    c = crdt.merge("map", a, b)
    c = crdt.apply(
        "map", c, ["update", [["s", "set", ["remove", [b"x"], crdt.context("map", c)]]]], "n3"
    )
    assert crdt.value("map", merge_all("map", a, b, c))["s"] == frozenset()


def test_map_deferred_remove_in_a_field():
    a = crdt.apply("map", None, ["update", [["s", "set", ["add", [b"x"]]]]], "n1")
    read = crdt.context("map", a)
    b = crdt.apply("map", None, ["update", [["s", "set", ["remove", [b"x"], read]]]], "n2")
    assert crdt.value("map", crdt.merge("map", b, a)) == {"s": frozenset()}


def test_map_remove_or_disable_that_finds_nothing_adds_no_field():
    """Fields cannot be removed: a remove from a set field, or a disable of a flag, that
    the map never had (and that has nothing to wait for) must not leave an empty one."""
    m = crdt.apply("map", None, ["update", [["tags", "set", ["add", [b"t"]]]]], "n1")
    seen = crdt.context("map", m)
    ops = [["name", "set", ["remove", [b"q"], seen]], ["vip", "flag", ["disable", seen]]]
    m = crdt.apply("map", m, ["update", ops], "n1")
    assert crdt.value("map", m) == {"tags": frozenset({b"t"})}
    # One that waits for what its context saw and this copy lacks is kept (deferred).
    later = crdt.apply("map", None, ["update", ops], "n2")
    assert crdt.value("map", later) == {"name": frozenset(), "vip": False}


def test_map_field_names_utf8_cannot_encode_are_refused():
    op = ["update", [["\ud800", "counter", ["increment", 1]]]]
    with pytest.raises(CRDTError, match="UTF-8"):
        crdt.apply("map", None, op, "n1")


def test_map_shared_field_names_are_keyed_by_kind():
    m = crdt.apply(
        "map",
        None,
        [
            "update",
            [
                ["x", "set", ["add", [b"1"]]],
                ["x", "counter", ["increment", 1]],
                ["x:set", "register", ["assign", 0, b"v"]],
            ],
        ],
        "n1",
    )
    assert crdt.value("map", m) == {"x": 1, "x:set": b"v", "x:set:set": {b"1"}}


# -- validation -----------------------------------------------------------------------------------

BAD_OPS = [
    ("counter", ["increment", "1"], "delta must be an integer"),
    ("counter", ["increment", True], "delta must be an integer"),
    ("counter", ["increment", 2**64], "exceed"),
    ("counter", ["add", 1], "unknown operation 'add'"),
    ("counter", ["increment"], "takes 1 arguments, got 0"),
    ("counter", "increment", "must be a list"),
    ("counter", [], "must be a list"),
    ("set", ["add", ["x"]], "set elements must be bytes, got str"),
    ("set", ["add", b"x"], "expected a list of elements"),
    ("set", ["remove", [b"x"], [["n1"]]], "context must be None"),
    ("set", ["remove", [b"x"], [["n1", -1]]], "context must be None"),
    ("set", ["remove", [b"x"], [["n1", 1], ["n1", 2]]], "appears twice"),
    ("set", ["remove", [b"x"], None, 1], "takes 1 to 2 arguments"),
    ("register", ["assign", 1.5, b"v"], "timestamp must be a 64-bit integer"),
    ("register", ["assign", 1, "v"], "value must be bytes"),
    ("flag", ["enable", 1], "takes 0 arguments"),
    ("flag", ["toggle"], "unknown operation 'toggle'"),
    ("map", ["update", [["f", "tree", ["add"]]]], "unknown kind 'tree'"),
    ("map", ["update", [["f", "counter"]]], r"must be \[name, kind, op\]"),
    ("map", ["update", [[1, "counter", ["increment", 1]]]], "name must be a string"),
    ("map", ["update", {"f": 1}], "expected a list"),
    ("map", ["update", [["f", "set", ["add", [1]]]]], r"map field 'f' \(set\) add: set elements"),
]


@pytest.mark.parametrize(("kind", "op", "message"), BAD_OPS)
def test_apply_rejects_bad_ops(kind, op, message):
    with pytest.raises(CRDTError, match=message):
        crdt.apply(kind, None, op, "n1")


def test_apply_rejects_bad_actor_and_leaves_state_alone():
    with pytest.raises(CRDTError, match="actor"):
        crdt.apply("counter", None, ["increment", 1], "")
    state = crdt.apply("map", None, ["update", [["c", "counter", ["increment", 1]]]], "n1")
    before = roundtrip(state)
    with pytest.raises(CRDTError):
        crdt.apply(
            "map",
            state,
            ["update", [["c", "counter", ["increment", 1]], ["c", "counter", ["increment", "x"]]]],
            "n1",
        )
    assert state == before
    crdt.apply("map", state, ["update", [["c", "counter", ["increment", 1]]]], "n1")
    assert state == before


def test_map_nesting_limit():
    op: list = ["update", [["leaf", "counter", ["increment", 1]]]]
    for _ in range(40):
        op = ["update", [["m", "map", op]]]
    with pytest.raises(CRDTError, match="nest at most"):
        crdt.apply("map", None, op, "n1")


CLOCK = [["n1", 2]]
BAD_STATES = [
    ("counter", {"n1": [1, 0]}, "must be a list"),
    ("counter", [["n1", 1]], "must have 3 items"),
    ("counter", [["n1", -1, 0]], "from 0 to"),
    ("counter", [["n1", 1.0, 0]], "from 0 to"),
    ("counter", [["n1", 0, 0]], "no counts"),
    ("counter", [["n2", 1, 0], ["n1", 1, 0]], "sorted"),
    ("counter", [["n1", 1, 0], ["n1", 2, 0]], "sorted"),
    ("counter", [[b"n1", 1, 0]], "actor"),
    ("register", [1, "n1"], "3 items"),
    ("register", [1, "n1", "v"], "value must be bytes"),
    ("register", ["1", "n1", b"v"], "timestamp"),
    ("set", [CLOCK, []], "3 items"),
    ("set", [[["n1", 0]], [], []], "from 1 to"),
    ("set", [[["n2", 1], ["n1", 1]], [], []], "sorted"),
    ("set", [CLOCK, [["x", [["n1", 1]]]], []], "element must be bytes"),
    ("set", [CLOCK, [[b"x", [["n1", 3]]]], []], "not covered by the clock"),
    ("set", [CLOCK, [[b"x", []]], []], "without dots"),
    ("set", [CLOCK, [[b"y", [["n1", 1]]], [b"x", [["n1", 2]]]], []], "sorted"),
    ("set", [CLOCK, [], [[[["n1", 1]], [b"x"]]]], "should have applied"),
    ("set", [CLOCK, [], [[[["n1", 3]], []]]], "remove of nothing"),
    ("set", [CLOCK, [], [[[["n1", 3]], [b"y", b"x"]]]], "sorted"),
    ("set", [CLOCK, [], [[[["n1", 4]], [b"x"]], [[["n1", 3]], [b"x"]]]], "sorted"),
    ("flag", [CLOCK, [["n1", 3]], []], "not covered"),
    ("flag", [CLOCK, [], [[["n1", 2]]]], "should have applied"),
    ("flag", [CLOCK, [], [[["n1", 4]], [["n1", 3]]]], "sorted"),
    ("map", [CLOCK], "2 items"),
    ("map", [CLOCK, [["f", "tree", []]]], "unknown kind"),
    ("map", [CLOCK, [[1, "counter", []]]], "name must be a string"),
    ("map", [CLOCK, [["f", "counter", []], ["e", "counter", []]]], "sorted"),
    ("map", [CLOCK, [["f", "set", [[[b"x", [["n2", 1]]]], []]]]], "not covered"),
    ("map", [CLOCK, [["f", "map", [[["g", "flag", [[["n1", 5]], []]]]]]]], "not covered"),
    ("map", [CLOCK, [["f", "set", [[], [], []]]]], "2 items"),
]


@pytest.mark.parametrize(("kind", "state", "message"), BAD_STATES)
def test_check_rejects_malformed_states(kind, state, message):
    with pytest.raises(ValueError, match=message):
        crdt.check(kind, state)


def test_check_accepts_tuples_and_returns_lists():
    assert crdt.check("counter", (("n1", 1, 0),)) == [["n1", 1, 0]]
    assert crdt.check("register", ()) == []


def test_a_merge_never_brings_back_what_a_waiting_remove_saw():
    """n1 applies a remove whose context it has not fully seen (it waits for n2's add), then
    merges n3's copy, which holds the dot the remover saw: that dot must stay removed, as it
    is on n3, which applied the same remove."""
    a3 = crdt.apply("set", None, ["add", [b"c"]], "n3")
    b2 = crdt.apply("set", crdt.merge("set", None, a3), ["add", [b"d"]], "n2^1f")
    ctx = crdt.context("set", b2)  # the client read c and d
    n1 = crdt.apply("set", None, ["remove", [b"c"], ctx], "n1")
    n1 = crdt.merge("set", n1, a3)
    n3 = crdt.apply("set", a3, ["remove", [b"c"], ctx], "n3")
    assert crdt.value("set", n1) == crdt.value("set", n3) == set()
    assert n1 == n3
