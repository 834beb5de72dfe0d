"""Gossip membership and failure detection as pure state: a fake clock, no Ray, no sleeping."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynaray.membership import DOWN, SUSPECT, UP, Membership


def make(me="a", incarnation=1, nodes=("b", "c"), suspect_after=3.0, down_after=6.0):
    t = [100.0]
    m = Membership(
        me,
        incarnation,
        list(nodes),
        suspect_after=suspect_after,
        down_after=down_after,
        clock=lambda: t[0],
    )
    return m, t


def pairs(m: Membership) -> dict[str, tuple[int, int]]:
    return {node: (inc, hb) for node, (inc, hb) in m.digest().items()}


# -- construction, add, remove -------------------------------------------------------------


def test_initial_view():
    m, _ = make(incarnation=7)
    assert m.me == "a"
    assert m.incarnation == 7
    assert pairs(m) == {"a": (7, 0), "b": (0, 0), "c": (0, 0)}
    assert m.statuses() == {"a": UP, "b": UP, "c": UP}


def test_nodes_may_include_me_and_duplicates():
    m, _ = make(incarnation=3, nodes=("a", "b", "b"))
    assert pairs(m) == {"a": (3, 0), "b": (0, 0)}


@pytest.mark.parametrize(
    ("suspect_after", "down_after"),
    [(0.0, 1.0), (-1.0, 1.0), (2.0, 1.0), (0.0, 0.0)],
)
def test_constructor_rejects_bad_timeouts(suspect_after, down_after):
    with pytest.raises(ValueError):
        Membership("a", 1, suspect_after=suspect_after, down_after=down_after, clock=lambda: 0.0)


def test_constructor_accepts_equal_timeouts():
    m, t = make(suspect_after=2.0, down_after=2.0)
    t[0] += 1.9
    assert m.status("b") == UP
    t[0] += 0.1
    assert m.status("b") == DOWN  # no suspect phase when the two are equal


def test_add_is_idempotent_and_keeps_news():
    m, t = make()
    m.merge({"b": [4, 9]})
    t[0] += 5
    m.add("b")
    assert pairs(m)["b"] == (4, 9)
    assert m.status("b") == SUSPECT  # add did not refresh an already known node


def test_added_node_gets_one_detection_period():
    m, t = make(nodes=())
    t[0] += 50
    m.add("d")
    assert m.status("d") == UP
    t[0] += 3
    assert m.status("d") == SUSPECT
    t[0] += 3
    assert m.status("d") == DOWN


def test_remove():
    m, _ = make()
    m.remove("b")
    assert "b" not in m.digest()
    assert m.status("b") == DOWN  # unknown nodes are down
    assert not m.is_up("b")
    m.remove("b")  # removing twice is harmless
    m.remove("zzz")
    m.remove("a")  # a node never removes itself
    assert "a" in m.digest()
    assert m.status("a") == UP
    # a removed node's news is ignored like any unknown node's
    m.merge({"b": [9, 9]})
    assert "b" not in m.digest()


# -- heartbeat -----------------------------------------------------------------------------


def test_tick_bumps_own_heartbeat_only():
    m, t = make(incarnation=2)
    for expected in range(1, 4):
        t[0] += 1
        m.tick()
        assert pairs(m)["a"] == (2, expected)
    assert pairs(m)["b"] == (0, 0)
    assert m.incarnation == 2


def test_self_is_always_up():
    m, t = make()
    t[0] += 1000
    assert m.status("a") == UP
    assert m.is_up("a")


# -- digest and merge ----------------------------------------------------------------------


def test_digest_is_a_fresh_wire_form():
    m, _ = make(incarnation=5)
    m.tick()
    d = m.digest()
    assert d == {"a": [5, 1], "b": [0, 0], "c": [0, 0]}
    d["a"][1] = 99
    d["b"] = [9, 9]
    assert pairs(m) == {"a": (5, 1), "b": (0, 0), "c": (0, 0)}


def test_newer_heartbeat_wins():
    m, _ = make()
    assert m.merge({"b": [1, 5]}) == []
    assert pairs(m)["b"] == (1, 5)
    m.merge({"b": [1, 6]})
    assert pairs(m)["b"] == (1, 6)


def test_older_news_is_ignored():
    m, t = make()
    m.merge({"b": [2, 10]})
    t[0] += 4
    assert m.status("b") == SUSPECT
    for stale in ([2, 9], [1, 100], [2, 10]):  # older, older incarnation, same
        assert m.merge({"b": stale}) == []
        assert pairs(m)["b"] == (2, 10)
        assert m.status("b") == SUSPECT  # stale news does not refresh the detector


def test_restart_outranks_old_life():
    m, _ = make()
    m.merge({"b": [1, 500]})
    m.merge({"b": [2, 0]})  # b restarted: incarnation up, heartbeat from zero
    assert pairs(m)["b"] == (2, 0)
    m.merge({"b": [1, 501]})  # a late rumour from b's previous life
    assert pairs(m)["b"] == (2, 0)


def test_never_takes_news_about_itself_but_outranks_an_earlier_life():
    m, t = make(incarnation=3)
    m.tick()
    assert m.merge({"a": [3, 0], "b": [1, 1]}) == []  # old news of this life: nothing
    assert pairs(m)["a"] == (3, 1)
    # Others know a life of ours past this one's count: we lost it with our disk. Taking
    # their pair would not do (they ignore news that is not newer); outranking it does.
    assert m.merge({"a": [99, 99]}) == []
    assert pairs(m)["a"] == (100, 1)
    other, _ = make(me="b", nodes=("a",))
    other.merge({"a": [99, 99]})
    other.merge(m.digest())
    assert pairs(other)["a"] == (100, 1)


def test_unknown_nodes_are_ignored():
    m, _ = make()
    assert m.merge({"x": [5, 5], "b": [1, 1]}) == []
    assert "x" not in m.digest()
    assert m.status("x") == DOWN
    assert pairs(m)["b"] == (1, 1)


def test_merge_of_two_views():
    a, t = make("a", 1, ("b", "c"))
    b = Membership("b", 4, ["a", "c"], clock=lambda: t[0])
    a.tick()
    b.tick()
    b.tick()
    a.merge(b.digest())
    b.merge(a.digest())
    assert pairs(a) == {"a": (1, 1), "b": (4, 2), "c": (0, 0)}
    assert pairs(b) == pairs(a)


# -- failure detection ---------------------------------------------------------------------


def test_status_transitions_by_clock():
    m, t = make(suspect_after=3.0, down_after=6.0)
    assert m.status("b") == UP
    t[0] += 2.999
    assert m.status("b") == UP
    t[0] = 103.0
    assert m.status("b") == SUSPECT
    assert m.is_up("b")  # suspect still counts as up
    t[0] = 105.9
    assert m.status("b") == SUSPECT
    t[0] = 106.0
    assert m.status("b") == DOWN
    assert not m.is_up("b")


def test_fresh_news_revives_a_down_node():
    m, t = make()
    t[0] += 10
    assert m.status("b") == DOWN and m.status("c") == DOWN
    revived = m.merge({"b": [1, 1], "c": [0, 0]})  # nothing new about c
    assert revived == ["b"]
    assert m.status("b") == UP
    assert m.status("c") == DOWN
    # the detector restarts from the moment of the news
    t[0] += 3
    assert m.status("b") == SUSPECT


def test_fresh_news_of_a_suspect_node_is_not_a_revival():
    m, t = make()
    t[0] += 4
    assert m.status("b") == SUSPECT
    assert m.merge({"b": [0, 1]}) == []
    assert m.status("b") == UP


def test_revived_lists_every_node_back_up():
    m, t = make(nodes=("b", "c", "d"))
    t[0] += 7
    revived = m.merge({"b": [1, 0], "c": [0, 3], "d": [0, 0], "a": [9, 9]})
    assert sorted(revived) == ["b", "c"]
    assert m.statuses() == {"a": UP, "b": UP, "c": UP, "d": DOWN}


def test_no_news_of_a_node_keeps_it_going_down():
    m, t = make()
    for _ in range(7):
        t[0] += 1
        m.tick()
        m.merge({"b": [0, 0]})  # gossip that repeats b's old pair
    assert m.status("b") == DOWN
    assert m.status("a") == UP


def test_gossip_targets_split_live_and_down():
    m, t = make(nodes=("b", "c", "d"))
    assert m.gossip_targets() == (["b", "c", "d"], [])
    t[0] += 4  # all suspect: still live targets
    m.merge({"c": [0, 1]})
    assert m.gossip_targets() == (["b", "c", "d"], [])
    t[0] += 3  # b and d down, c only suspect
    live, down = m.gossip_targets()
    assert live == ["c"]
    assert down == ["b", "d"]
    assert "a" not in live + down


def test_statuses_covers_every_known_node():
    m, t = make()
    m.merge({"c": [0, 1]})
    t[0] += 3
    m.merge({"c": [0, 2]})
    assert m.statuses() == {"a": UP, "b": SUSPECT, "c": UP}


# -- convergence properties ----------------------------------------------------------------

NODES = ("a", "b", "c", "d")
pair = st.tuples(st.integers(0, 4), st.integers(0, 6))
digests = st.lists(
    st.dictionaries(st.sampled_from(NODES + ("x",)), pair.map(list), max_size=5), max_size=6
)


def _fresh(clock):
    return Membership("a", 1, ["b", "c", "d"], clock=clock)


@settings(max_examples=150, deadline=None)
@given(digests, st.randoms(use_true_random=False))
def test_merge_is_order_insensitive_and_idempotent(ds, rnd):
    t = [0.0]
    clock = lambda: t[0]  # noqa: E731

    one = _fresh(clock)
    for d in ds:
        one.merge(d)

    shuffled = list(ds)
    rnd.shuffle(shuffled)
    other = _fresh(clock)
    for d in shuffled + shuffled:  # any order, and every digest twice
        other.merge(d)

    others = {node: p for node, p in pairs(one).items() if node != "a"}
    assert others == {node: p for node, p in pairs(other).items() if node != "a"}
    # the result is the pointwise maximum of what was heard (never about strangers); of
    # ourselves, in any order, a pair above everything heard about us
    expected = {"b": (0, 0), "c": (0, 0), "d": (0, 0)}
    heard_of_me = [(1, 0)]
    for d in ds:
        for node, p in d.items():
            if node in expected:
                expected[node] = max(expected[node], tuple(p))
            elif node == "a":
                heard_of_me.append(tuple(p))
    assert others == expected
    for view in (one, other):
        assert pairs(view)["a"] >= max(heard_of_me)
        assert pairs(view)["a"][1] == 0  # our heartbeat is ours alone
    # merging a view into itself changes nothing
    before = pairs(one)
    assert one.merge(one.digest()) == []
    assert pairs(one) == before


@settings(max_examples=150, deadline=None)
@given(digests)
def test_views_only_grow(ds):
    t = [0.0]
    m = _fresh(lambda: t[0])
    before = pairs(m)
    for d in ds:
        t[0] += 1
        m.merge(d)
        after = pairs(m)
        assert after.keys() == before.keys()
        assert all(after[n] >= before[n] for n in before)
        before = after
