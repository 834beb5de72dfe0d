"""The deterministic protocol simulation: seed budgets, hypothesis schedules, and proof that the
checkers catch a broken protocol. Pure Python, no Ray; the whole file runs in seconds."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import Phase, find, given, settings

from dynaray import simulation as sim
from dynaray.simulation import BEFORE_FIXES, FIXES, Config, Fault, Schedule

BUDGET = 300
# Config() models the code as it is, with the fixes of what the simulation found
# (test_rules_before_the_fixes_are_caught shows each old rule failing).
FIXED = Config(**FIXES)
ALL_PRIMARIES = ("n1", "n2", "n3")  # k0's primaries; k1's are n3, n1, n2


@pytest.mark.parametrize("workload", sim.WORKLOADS)
def test_seed_budget_passes(workload):
    found = sim.explore(BUDGET, workload, config=FIXED)
    assert found.ok, found.summary()
    assert found.runs == BUDGET
    # the budget reaches the paths that matter: every outcome, sloppy quorum and its hints,
    # stand-in coordinators, read repair, lost messages
    assert min(found.ops.values()) > 0, found.ops
    counters = ("hints_delivered", "sloppy_coordinated", "read_repairs", "lost", "disks_lost")
    for counter in (*counters, "disks_rolled_back"):  # a backup older than the disk put back
        assert found.stats[counter] > 0, (counter, found.stats)


HYPOTHESIS = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
)


@HYPOTHESIS
@given(sim.schedules(FIXED))
def test_hypothesis_schedules_set(schedule):
    result = sim.run("set", schedule, FIXED)
    assert result.valid, result.summary()


@HYPOTHESIS
@given(sim.schedules(FIXED))
def test_hypothesis_schedules_counter(schedule):
    result = sim.run("counter", schedule, FIXED)
    assert result.valid, result.summary()


@pytest.mark.parametrize(
    ("workload", "broken", "symptom"),
    [
        ("set", "empty_copy", "acknowledged adds lost"),
        ("counter", "empty_copy", "acknowledged increments lost"),
        ("set", "lww_merge", "acknowledged adds lost"),
        ("set", "same_actor", "acknowledged adds lost"),
        ("counter", "same_actor", "acknowledged increments lost"),
    ],
)
def test_checkers_catch_a_broken_protocol(workload, broken, symptom):
    found = sim.explore(BUDGET, workload, config=FIXED, broken=broken, stop_at_first=True)
    assert found.failures, f"{broken} went unnoticed in {BUDGET} schedules"
    assert symptom in "; ".join(found.failures[0].problems)


def test_a_failing_schedule_shrinks():
    """Hypothesis finds a schedule on which last-writer-wins merging loses an acknowledged
    add, and shrinks it to a few faults (one key keeps the search short)."""
    cfg = replace(FIXED, broken="lww_merge", keys=1)
    schedule = find(
        sim.schedules(cfg),
        lambda s: not sim.run("set", s, cfg).valid,
        settings=settings(
            max_examples=300, database=None, derandomize=True, phases=[Phase.generate, Phase.shrink]
        ),
    )
    assert len(schedule.faults) <= 3, schedule
    assert not sim.run("set", schedule, cfg).valid


# Each problem the simulation finds in the code as it is, on a small schedule: with that one
# rule as in the code (and the other fixes on) the checker fails; with every fix it passes.
FOUND = [
    pytest.param(
        "counter",
        "stand_in_actor",
        Schedule(0, (Fault(0, "crash", ALL_PRIMARIES),)),
        "acknowledged increments lost",
        id="stand-in-counter-restarts",
    ),
    pytest.param(
        "set",
        "stand_in_actor",
        Schedule(1658, (Fault(18, "crash", ALL_PRIMARIES), Fault(24, "restart", ("n2", "n3")))),
        "acknowledged adds lost",
        id="stand-in-dot-reused",
    ),
    pytest.param(
        "counter",
        "forward_retry",
        Schedule(0, (Fault(0, "crash", ALL_PRIMARIES), Fault(1, "restart", ("n1",)))),
        "counted beyond those attempted",
        id="forward-applies-twice",
    ),
    pytest.param(
        "set",
        "unavailable_after_died",
        Schedule(0, (Fault(0, "crash", ("n1", "n3")), Fault(10, "crash", ("n2",)))),
        "never (successfully) added",
        id="unavailable-after-died",
    ),
]


@pytest.mark.parametrize(("workload", "rule", "schedule", "symptom"), FOUND)
def test_rules_before_the_fixes_are_caught(workload, rule, schedule, symptom):
    before = replace(FIXED, **{rule: BEFORE_FIXES[rule]})
    failed = sim.run(workload, schedule, before)
    assert not failed.valid, failed.summary()
    assert symptom in "; ".join(failed.problems)
    assert Config() == FIXED  # the default models the code, fixes included
    fixed = sim.run(workload, schedule, FIXED)
    assert fixed.valid, fixed.summary()


def test_runs_are_deterministic():
    schedule = sim.random_schedule(7)
    first = sim.run("set", schedule, FIXED)
    again = sim.run("set", schedule, FIXED)
    assert first.history.to_list() == again.history.to_list()
    assert first.stats == again.stats and first.final == again.final


def test_a_fault_free_run_acknowledges_everything():
    result = sim.run("counter", Schedule(3), FIXED)
    assert result.valid and result.converged
    assert result.ops["info"] == result.ops["fail"] == 0
    increments = sum(1 for op in result.history.ops if op.f == "incr" and op.kind == "ok")
    assert sum(result.final.values()) == increments


@pytest.mark.parametrize(
    ("workload", "schedule", "symptom"),
    [
        pytest.param(
            "set",
            Schedule(70, (Fault(30, "wipe", ("n1",)), Fault(32, "restart", ("n1",)))),
            "acknowledged adds lost",
            id="set-disk-lost",
        ),
        pytest.param(
            "set",
            Schedule(70, (Fault(30, "rollback", ("n1",)), Fault(32, "restart", ("n1",)))),
            "acknowledged adds lost",
            id="set-backup-put-back",
        ),
        pytest.param(
            "counter",
            Schedule(0, (Fault(10, "wipe", ("n1",)), Fault(12, "restart", ("n1",)))),
            "acknowledged increments lost",
            id="counter-disk-lost",
        ),
        pytest.param(
            "counter",
            Schedule(4, (Fault(35, "rollback", ("n1",)), Fault(37, "restart", ("n1",)))),
            "acknowledged increments lost",
            id="counter-backup-put-back",
        ),
    ],
)
def test_a_disk_that_went_back_in_time_needs_an_actor_id_of_its_own(workload, schedule, symptom):
    """A node back with its disk lost or put back from a backup: under its old actor id it
    numbers writes as ones its peers hold, which they drop; under a new one, nothing is lost."""
    same = sim.run(workload, schedule, replace(FIXED, broken="same_actor"))
    assert not same.valid and symptom in "; ".join(same.problems), same.summary()
    result = sim.run(workload, schedule, FIXED)
    assert result.valid, result.summary()
    assert result.stats["disks_lost"] == 1


def test_stand_in_ids_go_back_in_time_with_their_hint_copies():
    """n4 stands in for the crashed primaries, and its disk is put back from a backup: the
    stand-in id it had chosen for the hint copy would repeat dots it handed out since."""
    schedule = Schedule(
        36793,
        (
            Fault(0, "crash", ALL_PRIMARIES),
            Fault(18, "rollback", ("n4",)),
            Fault(19, "restart", ("n4",)),
        ),
    )
    result = sim.run("counter", schedule, FIXED)
    assert result.valid, result.summary()
    assert result.stats["disks_rolled_back"] == 1


def test_a_schedule_takes_at_most_one_disk_back():
    two = Schedule(0, (Fault(5, "wipe", ("n1",)), Fault(9, "rollback", ("n2",))))
    with pytest.raises(ValueError, match="at most one disk"):
        sim.run("set", two, FIXED)
