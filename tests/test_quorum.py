"""quorum: N/R/W validation, sloppy-quorum target selection and the answer tally (no Ray)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dynaray.quorum import Tally, Target, all_in_person, check_quorum, select

PREF = ["a", "b", "c", "d", "e", "f"]


def up_except(*down):
    return lambda node: node not in down


# -- check_quorum ------------------------------------------------------------------------


@pytest.mark.parametrize("n, r, w, nodes", [(3, 2, 2, 5), (1, 1, 1, 1), (3, 3, 3, 3), (3, 1, 3, 9)])
def test_check_quorum_accepts(n, r, w, nodes):
    check_quorum(n, r, w, nodes)


@pytest.mark.parametrize(
    "n, r, w, nodes, message",
    [
        (3, 4, 2, 5, "must not exceed n=3"),
        (3, 2, 4, 5, "must not exceed n=3"),
        (4, 2, 2, 3, "n=4 replicas need at least 4 nodes; the store has 3"),
        (0, 1, 1, 3, "n must be a positive integer, got 0"),
        (3, 0, 1, 3, "r must be a positive integer, got 0"),
        (3, 1, 0, 3, "w must be a positive integer, got 0"),
        (3, -1, 1, 3, "r must be a positive integer"),
        (True, 1, 1, 3, "n must be a positive integer, got True"),
        (3, True, 1, 3, "r must be a positive integer, got True"),
        (3, 1, False, 3, "w must be a positive integer, got False"),
        (3, 2.0, 1, 3, "r must be a positive integer"),
        (3, "2", 1, 3, "r must be a positive integer"),
        (None, 1, 1, 3, "n must be a positive integer"),
    ],
)
def test_check_quorum_refuses(n, r, w, nodes, message):
    with pytest.raises(ValueError) as info:
        check_quorum(n, r, w, nodes)
    assert message in str(info.value)


# -- select ------------------------------------------------------------------------------


def test_select_all_up_takes_first_n_primaries():
    assert select(PREF, 3, lambda _: True) == [Target("a"), Target("b"), Target("c")]
    assert select(PREF, 1, lambda _: True) == [Target("a")]
    assert select(PREF[:3], 3, lambda _: True) == [Target("a"), Target("b"), Target("c")]


def test_select_replaces_down_primary_by_next_healthy_spare_with_hint():
    assert select(PREF, 3, up_except("b")) == [Target("a"), Target("d", "b"), Target("c")]
    # spare d is down too: e stands in
    assert select(PREF, 3, up_except("b", "d")) == [Target("a"), Target("e", "b"), Target("c")]
    # two primaries down: spares in preference order, in primary order
    assert select(PREF, 3, up_except("a", "c")) == [
        Target("d", "a"),
        Target("b"),
        Target("e", "c"),
    ]


def test_select_with_fewer_spares_than_down_primaries():
    assert select(PREF, 3, up_except("a", "b", "c", "d", "e")) == [Target("f", "a")]
    assert select(PREF[:4], 3, up_except("a", "b")) == [Target("d", "a"), Target("c")]
    assert select(PREF[:3], 3, up_except("b")) == [Target("a"), Target("c")]
    assert select(PREF, 3, lambda _: False) == []


@st.composite
def scenarios(draw):
    size = draw(st.integers(1, 10))
    pref = [f"n{i}" for i in range(size)]
    draw(st.randoms()).shuffle(pref)
    n = draw(st.integers(1, size))
    down = draw(st.sets(st.sampled_from(pref)))
    return pref, n, down


@given(scenarios())
def test_select_invariants(scenario):
    pref, n, down = scenario
    targets = select(pref, n, lambda node: node not in down)
    nodes = [t.node for t in targets]
    primaries = pref[:n]
    down_primaries = [p for p in primaries if p in down]
    up_spares = [s for s in pref[n:] if s not in down]

    assert len(set(nodes)) == len(nodes)
    assert len(targets) <= n
    assert len(targets) == n - len(down_primaries) + min(len(down_primaries), len(up_spares))
    assert all(node not in down for node in nodes)
    for t in targets:
        if t.hint is None:
            assert t.node in primaries
        else:
            assert t.node in pref[n:]
            assert t.hint in down_primaries
    hints = [t.hint for t in targets if t.hint is not None]
    assert len(set(hints)) == len(hints)
    # the first down primaries get the first healthy spares, in order
    assert hints == down_primaries[: len(hints)]
    assert [t.node for t in targets if t.hint] == up_spares[: len(hints)]
    # every healthy primary is asked, as itself
    assert [t.node for t in targets if t.hint is None] == [p for p in primaries if p not in down]


def test_select_asks_primaries_that_look_down_when_too_few_look_healthy():
    # Only a looks healthy on [a, b, c, d]: R=2 cannot be met, so b (a primary no spare
    # covers) is asked as well; a wrong suspicion must not fail the request.
    is_up = up_except("b", "c", "d")
    assert select(PREF[:4], 3, is_up, needed=2) == [Target("a"), Target("b")]
    assert select(PREF[:4], 3, is_up, needed=3) == [Target("a"), Target("b"), Target("c")]
    # enough look healthy: nobody doubtful is asked
    assert select(PREF, 3, up_except("b"), needed=3) == [
        Target("a"),
        Target("d", "b"),
        Target("c"),
    ]
    # a primary covered by a stand-in is not asked in person
    assert select(PREF[:4], 3, up_except("a", "b"), needed=3) == [
        Target("d", "a"),
        Target("c"),
        Target("b"),
    ]


@given(scenarios(), st.integers(0, 10))
def test_select_with_needed_only_adds_uncovered_primaries(scenario, needed):
    pref, n, down = scenario
    is_up = lambda node: node not in down  # noqa: E731
    healthy = select(pref, n, is_up)
    targets = select(pref, n, is_up, needed)
    assert targets[: len(healthy)] == healthy
    extra = targets[len(healthy) :]
    covered = {t.hint or t.node for t in healthy}
    uncovered = [p for p in pref[:n] if p not in covered]
    assert [t.node for t in extra] == uncovered[: len(extra)]
    assert all(t.hint is None and t.node in down for t in extra)
    assert len(targets) == max(len(healthy), min(needed, len(healthy) + len(uncovered)))


# -- Tally -------------------------------------------------------------------------------


def test_tally_reached_pending_hopeless():
    targets = select(PREF[:3], 3, lambda _: True)
    tally = Tally(PREF[:3], targets, 2)
    assert tally.asked == 3 and tally.pending == 3
    assert not tally.reached and not tally.hopeless
    tally.answered("a")
    assert tally.pending == 2 and not tally.reached and not tally.hopeless
    assert tally.failure(Target("b")) is None  # no spares
    assert tally.pending == 1 and not tally.reached and not tally.hopeless
    tally.answered("c")
    assert tally.reached and not tally.hopeless and tally.pending == 0
    assert tally.ok == ["a", "c"] and tally.failed == ["b"]


def test_tally_settled_waits_for_primaries_asked_in_person_once_a_stand_in_answered():
    targets = [Target("d", hint="a"), Target("b"), Target("c")]
    tally = Tally(PREF, targets, 2, n=3)
    tally.answered("b")
    tally.answered("c")
    assert tally.reached and tally.settled  # R primaries: no stand-in counted
    tally = Tally(PREF, targets, 2, n=3)
    tally.answered("d")
    tally.answered("b")
    assert tally.reached and not tally.settled  # c, in person, may hold what d lacks
    tally.answered("c")
    assert tally.settled
    tally = Tally(PREF, targets, 2, lambda node: node != "a", n=3)
    tally.answered("d")
    tally.answered("b")
    assert tally.failure(Target("c")) == Target("e", hint="c")  # a spare, not in person
    assert tally.settled  # every primary asked in person answered or failed
    assert not Tally(PREF, targets, 2, n=3).settled


def test_tally_hopeless_when_too_few_left():
    tally = Tally(PREF[:3], select(PREF[:3], 3, lambda _: True), 2)
    assert tally.failure(Target("a")) is None
    assert not tally.hopeless  # b and c may still answer
    assert tally.failure(Target("b")) is None
    assert tally.hopeless
    assert not tally.reached


def test_tally_failure_returns_replacement_hinted_for_failed_primary():
    targets = select(PREF, 3, lambda _: True)
    tally = Tally(PREF, targets, 3)
    tally.answered("a")
    replacement = tally.failure(Target("b"))
    assert replacement == Target("d", hint="b")
    assert tally.targets[-1] == replacement and tally.asked == 4
    assert tally.pending == 2  # c and d
    assert not tally.hopeless


def test_tally_replacement_failure_passes_its_hint_on():
    tally = Tally(PREF, select(PREF, 3, lambda _: True), 2)
    first = tally.failure(Target("c"))
    assert first == Target("d", hint="c")
    second = tally.failure(first)
    assert second == Target("e", hint="c")
    third = tally.failure(second)
    assert third == Target("f", hint="c")
    assert tally.failure(third) is None
    assert tally.failed == ["c", "d", "e", "f"]


def test_tally_failure_of_a_hinted_select_target_keeps_the_hint():
    is_up = up_except("b")
    targets = select(PREF, 3, is_up)
    assert Target("d", "b") in targets
    tally = Tally(PREF, targets, 2, is_up)
    # spares skip the used nodes and the down primary b
    assert tally.failure(Target("d", "b")) == Target("e", hint="b")
    assert tally.failure(Target("a")) == Target("f", hint="a")
    assert tally.failure(Target("c")) is None


def test_tally_spares_skip_down_nodes():
    tally = Tally(PREF, select(PREF, 3, lambda _: True), 2, up_except("d", "e"))
    assert tally.failure(Target("a")) == Target("f", hint="a")
    assert tally.failure(Target("b")) is None


def test_tally_no_spares_gives_none():
    tally = Tally(PREF[:3], select(PREF[:3], 3, lambda _: True), 1)
    assert tally.failure(Target("a")) is None
    assert tally.asked == 3


def test_tally_hint_names_failed_primary_when_fewer_targets_than_n():
    # N=3 on [a, b, c, d]: a and d are down, so select asks only b and c.
    targets = select(["a", "b", "c", "d"], 3, up_except("a", "d"))
    assert targets == [Target("b"), Target("c")]
    # By the time the tally is built (after the coordinator's own write), d is back.
    tally = Tally(["a", "b", "c", "d"], targets, 2, up_except("a"))
    # c is a primary (in the first N): its stand-in must carry c's hint, else the write it
    # takes is never handed back to c.
    assert tally.failure(Target("c")) == Target("d", hint="c")


def test_tally_asks_a_node_that_looks_down_only_when_the_quorum_needs_it():
    # a and b look down; d stands in for a and c is asked in person.
    is_up = up_except("a", "b")
    pref = ["a", "b", "c", "d"]
    targets = select(pref, 3, is_up, needed=2)
    assert targets == [Target("d", "a"), Target("c")]
    tally = Tally(pref, targets, 2, is_up)
    tally.answered("c")
    # d fails: no healthy spare is left and R=2 needs one more, so a is asked, as itself
    assert tally.failure(Target("d", "a")) == Target("a")
    assert tally.failure(Target("a")) == Target("b", hint="a")
    assert tally.failure(Target("b", "a")) is None
    assert tally.hopeless


def test_tally_leaves_nodes_that_look_down_alone_while_the_quorum_is_reachable():
    is_up = up_except("d")
    tally = Tally(PREF[:4], select(PREF[:4], 3, is_up, needed=2), 2, is_up)
    assert tally.failure(Target("a")) is None  # b and c may still answer
    assert tally.failure(Target("b")) == Target("d", hint="b")


def test_tally_a_primary_back_up_takes_its_own_copy_not_a_hint_for_itself():
    targets = select(PREF[:4], 3, up_except("a"))
    assert targets[0] == Target("d", "a")
    tally = Tally(PREF[:4], targets, 3)  # a is back by the time the tally is built
    assert tally.failure(Target("d", "a")) == Target("a")


def test_tally_a_primary_that_replaces_another_takes_its_own_copy():
    # N=3 on [a, b, c, d]: the coordinator a wrongly thinks b down, writes to a and c;
    # c fails. b is asked in person, not as c's stand-in, so b's own reads see the write
    # (the coordinator keeps c's copy as a hint).
    is_up = up_except("b", "d")
    pref = ["a", "b", "c", "d"]
    targets = select(pref, 3, is_up, needed=2)
    assert targets == [Target("a"), Target("c")]
    tally = Tally(pref, targets, 2, is_up, n=3)
    tally.answered("a")
    assert tally.failure(Target("c")) == Target("b")
    # past the first N a replacement still stands in with a hint
    assert tally.failure(Target("b")) == Target("d", hint="b")


def test_all_in_person_needs_every_target_a_primary_that_looks_up():
    up = {"a", "b", "c"}.__contains__
    assert all_in_person([Target("a"), Target("b")], up)
    assert not all_in_person([Target("a"), Target("c", hint="d")], up)
    assert not all_in_person([Target("a"), Target("e")], up)
