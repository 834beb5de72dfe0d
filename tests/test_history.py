"""The history model and its checkers on hand-made histories (no Ray)."""

from __future__ import annotations

import json

import pytest

from dynaray.history import (
    History,
    Op,
    check_counter,
    check_register,
    check_set,
    max_siblings,
)


def ops(*rows) -> History:
    """History from rows (process, kind, f, key, value, time[, siblings])."""
    h = History()
    for row in rows:
        process, kind, f, key, value, t, *rest = row
        h.append(Op(process, kind, f, key, value, t, siblings=rest[0] if rest else None))
    return h


def add(h: list, process, key, element, kind, t0, t1):
    h.append((process, "invoke", "add", key, element, t0))
    if kind is not None:
        h.append((process, kind, "add", key, element, t1))


# -- the history ------------------------------------------------------------------------------


def test_history_pairs_and_counts():
    h = History()
    a = h.invoke(1, "add", "k", "1-0")
    b = h.invoke(2, "add", "k", "2-0")
    h.complete(b, "info", error="QuorumError")
    h.complete(a, "ok")
    h.invoke(3, "add", "k", "3-0")  # never completes
    c = h.invoke(2, "read", "k")
    h.complete(c, "fail", error="Unavailable")
    pairs = h.pairs()
    assert [(i.process, i.f, None if done is None else done.kind) for i, done in pairs] == [
        (1, "add", "ok"),
        (2, "add", "info"),
        (3, "add", None),
        (2, "read", "fail"),
    ]
    assert h.counts() == {"ok": 1, "fail": 1, "info": 2}
    assert [op.index for op in h] == list(range(len(h)))
    assert pairs[0][1].value == "1-0"  # a completion keeps the invoked value by default
    json.dumps(h.to_list())


def test_history_refuses_malformed_sequences():
    h = History()
    h.invoke(1, "add", "k", "a")
    with pytest.raises(ValueError, match="outstanding"):
        h.invoke(1, "add", "k", "b")
    with pytest.raises(ValueError, match="no matching invoke"):
        h.append(Op(2, "ok", "add", "k", "x"))
    with pytest.raises(ValueError):
        Op(1, "done", "add")
    with pytest.raises(ValueError):
        h.complete(h.ops[0], "invoke")


def test_history_times_increase():
    h = History()
    first = h.invoke(1, "read", "k")
    second = h.complete(first, "ok", value=[])
    assert 0 <= first.time <= second.time


# -- set --------------------------------------------------------------------------------------


def test_set_all_acknowledged_present_is_valid():
    rows: list = []
    add(rows, 1, "k", "1-0", "ok", 0.0, 1.0)
    add(rows, 2, "k", "2-0", "info", 0.5, 2.0)  # indeterminate: may be absent
    add(rows, 3, "k", "3-0", "info", 0.6, 2.0)  # indeterminate: may be present
    add(rows, 4, "k", "4-0", "fail", 0.7, 0.8)
    add(rows, 5, "j", "5-0", None, 0.9, None)  # never completed: indeterminate
    result = check_set(ops(*rows), {"k": {"1-0", "3-0"}, "j": set()})
    assert result.valid, result
    assert (result.attempted, result.acknowledged, result.indeterminate, result.failed) == (
        5,
        1,
        3,
        1,
    )
    assert result.recovered == 1
    assert result.lost == [] and result.unexpected == []
    json.dumps(result.to_dict())


def test_set_detects_a_lost_acknowledged_add():
    rows: list = []
    add(rows, 1, "k", "1-0", "ok", 0.0, 1.0)
    add(rows, 2, "k", "2-0", "ok", 0.1, 1.1)
    add(rows, 1, "k", "1-1", "ok", 1.2, 1.5)
    result = check_set(ops(*rows), {"k": {"1-0", "1-1"}})
    assert not result.valid
    assert result.lost == [("k", "2-0")]
    assert result.lost_count == 1
    assert result.to_dict()["lost_count"] == 1


def test_set_detects_elements_never_attempted_or_failed():
    rows: list = []
    add(rows, 1, "k", "1-0", "ok", 0.0, 1.0)
    add(rows, 2, "k", "2-0", "fail", 0.0, 1.0)
    add(rows, 3, "j", "3-0", "ok", 0.0, 1.0)
    # "3-0" was added to j, not k; "9-9" was never attempted; "2-0" failed.
    result = check_set(ops(*rows), {"k": {"1-0", "2-0", "3-0", "9-9"}, "j": {"3-0"}})
    assert not result.valid
    assert result.unexpected == [("k", "3-0"), ("k", "9-9")]
    assert result.failed_present == [("k", "2-0")]
    assert result.lost == []


def test_set_detects_reads_from_the_future():
    rows: list = [
        (1, "invoke", "read", "k", None, 0.0),
        (1, "ok", "read", "k", ["2-0"], 0.5, 1),  # "2-0" is invoked only at 1.0
    ]
    add(rows, 2, "k", "2-0", "ok", 1.0, 2.0)
    rows += [(1, "invoke", "read", "k", None, 2.5), (1, "ok", "read", "k", ["2-0"], 3.0, 3)]
    result = check_set(ops(*rows), {"k": {"2-0"}})
    assert result.unexpected_in_reads == [("k", "2-0")]
    assert not result.valid
    assert max_siblings(ops(*rows)) == 3


def test_set_elements_a_read_saw_must_stay_and_failed_adds_must_not_show():
    rows: list = []
    add(rows, 1, "k", "1-0", "info", 0.0, 1.0)  # indeterminate, but a read saw it: stored
    add(rows, 2, "k", "2-0", "fail", 0.0, 1.0)  # failed, yet a read saw it
    rows += [(3, "invoke", "read", "k", None, 1.5), (3, "ok", "read", "k", ["1-0", "2-0"], 2.0)]
    result = check_set(ops(*rows), {"k": set()})
    assert not result.valid
    assert result.vanished_after_read == [("k", "1-0")]
    assert result.failed_present == [("k", "2-0")]
    # With a disk lost in the run, a stored copy may go with it: only the failed add shows.
    lossy = check_set(ops(*rows), {"k": set()}, durable=False)
    assert lossy.vanished_after_read == [] and lossy.failed_present == [("k", "2-0")]


def test_set_key_without_final_read_is_reported():
    rows: list = []
    add(rows, 1, "k", "1-0", "ok", 0.0, 1.0)
    result = check_set(ops(*rows), {})
    assert not result.valid
    assert result.unread_keys == ["k"]
    assert result.lost == []  # not data loss: the harness could not read it


# -- counter ----------------------------------------------------------------------------------


def incr(rows: list, process, key, kind, t0, t1, delta=1):
    rows.append((process, "invoke", "incr", key, delta, t0))
    if kind is not None:
        rows.append((process, kind, "incr", key, delta, t1))


def test_counter_within_bounds_is_valid():
    rows: list = []
    incr(rows, 1, "c", "ok", 0.0, 0.1)
    incr(rows, 2, "c", "ok", 0.0, 0.2, delta=3)
    incr(rows, 3, "c", "info", 0.0, 0.3)
    incr(rows, 4, "c", "fail", 0.0, 0.3)
    incr(rows, 5, "c", None, 0.0, None)
    rows += [(1, "invoke", "read", "c", None, 0.4), (1, "ok", "read", "c", 4, 0.5)]
    for final in (4, 5, 6):
        result = check_counter(ops(*rows), {"c": final})
        assert result.valid, (final, result)
        assert (result.acknowledged, result.indeterminate) == (4, 2)
    json.dumps(result.to_dict())


def test_counter_detects_a_lost_increment():
    rows: list = []
    incr(rows, 1, "c", "ok", 0.0, 0.1)
    incr(rows, 2, "c", "ok", 0.0, 0.2)
    incr(rows, 3, "d", "ok", 0.0, 0.2)
    result = check_counter(ops(*rows), {"c": 1, "d": 1})
    assert not result.valid
    assert result.lost == 1
    assert result.keys["c"] == {"final": 1, "lower": 2, "upper": 2, "seen": 0, "ok": False}
    assert result.keys["d"]["ok"]


def test_counter_detects_double_counting():
    rows: list = []
    incr(rows, 1, "c", "ok", 0.0, 0.1)
    incr(rows, 2, "c", "fail", 0.0, 0.2)  # failed: certainly not applied
    result = check_counter(ops(*rows), {"c": 2})
    assert not result.valid
    assert result.extra == 1


def test_counter_detects_a_read_above_the_attempts():
    rows: list = [(9, "invoke", "read", "c", None, 0.0), (9, "ok", "read", "c", 2, 0.5)]
    incr(rows, 1, "c", "ok", 0.2, 0.3)
    incr(rows, 2, "c", "ok", 0.6, 0.7)  # invoked after the read ended
    result = check_counter(ops(*rows), {"c": 2})
    assert not result.valid
    assert len(result.read_violations) == 1


def test_counter_increments_a_read_saw_must_stay():
    """1 acknowledged and 3 indeterminate increments; a read saw 3, so at least 3 were
    stored: a final 2 is within the bounds of the acknowledged ones, yet lost two."""
    rows: list = []
    incr(rows, 1, "c", "ok", 0.0, 0.1)
    incr(rows, 2, "c", "info", 0.0, 0.2, delta=3)
    rows += [(3, "invoke", "read", "c", None, 0.3), (3, "ok", "read", "c", 3, 0.4)]
    result = check_counter(ops(*rows), {"c": 2})
    assert not result.valid and result.lost == 0
    assert result.vanished_after_read == 1 and result.keys["c"]["seen"] == 3
    assert check_counter(ops(*rows), {"c": 2}, durable=False).valid  # a lost disk may explain it
    assert check_counter(ops(*rows), {"c": 4}).valid


def test_counter_refuses_non_positive_increments():
    rows: list = []
    incr(rows, 1, "c", "ok", 0.0, 0.1, delta=-1)
    with pytest.raises(ValueError, match="positive"):
        check_counter(ops(*rows), {"c": -1})


# -- register ---------------------------------------------------------------------------------


def write(rows: list, process, key, value, kind, t0, t1):
    rows.append((process, "invoke", "write", key, value, t0))
    if kind is not None:
        rows.append((process, kind, "write", key, value, t1))


def test_register_sequential_overwrites_are_not_losses():
    rows: list = []
    write(rows, 1, "r", "a", "ok", 0.0, 1.0)
    write(rows, 1, "r", "b", "ok", 2.0, 3.0)
    write(rows, 1, "r", "c", "ok", 4.0, 5.0)
    result = check_register(ops(*rows), {"r": "c"})
    assert result.valid
    assert (result.acknowledged, result.survived, result.superseded, result.lost) == (3, 1, 2, 0)
    assert result.loss_rate == 0.0


def test_register_reports_concurrent_and_realtime_losses_without_failing():
    rows: list = []
    write(rows, 1, "r", "a", "ok", 0.0, 2.0)
    write(rows, 2, "r", "b", "ok", 1.0, 3.0)  # concurrent with a; a survives: b lost
    write(rows, 3, "r", "c", "ok", 2.5, 3.5)  # began after a ended: a real-time anomaly
    write(rows, 4, "r", "d", "info", 4.0, 5.0)
    result = check_register(ops(*rows), {"r": "a"})
    assert result.valid  # lossy by design: report only
    assert (result.acknowledged, result.survived, result.lost) == (3, 1, 2)
    assert result.lost_realtime == 1
    assert result.loss_rate == pytest.approx(2 / 3)
    assert "by design" in result.note


def test_register_flags_a_write_lost_to_one_that_ended_well_before_it():
    """Sequential writes over a second apart: the later carries the later stamp, so a final
    value of the earlier one is the store going back, not a clock tie."""
    rows: list = []
    write(rows, 1, "r", "a", "ok", 0.0, 1.0)
    write(rows, 2, "r", "b", "ok", 2.5, 3.0)
    result = check_register(ops(*rows), {"r": "a"})
    assert not result.valid
    assert result.rolled_back == [("r", "b", "a")] and result.lost_realtime == 1
    # A survivor whose client gave up on it may have been stamped when it finally ran.
    rows[1] = (1, "info", "write", "r", "a", 1.0)
    assert check_register(ops(*rows), {"r": "a"}).rolled_back == []


def test_register_flags_values_never_written():
    rows: list = []
    write(rows, 1, "r", "a", "ok", 0.0, 1.0)
    write(rows, 2, "s", "b", "fail", 0.0, 1.0)
    result = check_register(ops(*rows), {"r": "zzz", "s": "b"})
    assert not result.valid
    assert result.unexpected == [("r", "zzz"), ("s", "b")]
    assert result.lost == 1


def test_register_vanished_key_counts_as_loss_and_fails_the_check():
    """The workload never deletes: a key whose acknowledged writes all vanished is no
    last-write-wins loss."""
    rows: list = []
    write(rows, 1, "r", "a", "ok", 0.0, 1.0)
    result = check_register(ops(*rows), {"r": None})
    assert not result.valid
    assert result.vanished_keys == ["r"]
    assert result.loss_rate == 1.0


def test_max_siblings_ignores_failed_reads():
    h = ops(
        (1, "invoke", "read", "k", None, 0.0),
        (1, "fail", "read", "k", None, 0.1, 9),
        (1, "invoke", "read", "k", None, 0.2),
        (1, "ok", "read", "k", [], 0.3, 2),
    )
    assert max_siblings(h) == 2
    assert max_siblings(History()) == 0


def test_register_read_of_a_value_never_written_fails_the_check():
    rows: list = []
    write(rows, 1, "r", "a", "ok", 0.0, 1.0)
    write(rows, 2, "r", "b", "fail", 0.0, 1.0)
    rows.append((3, "invoke", "read", "r", None, 1.5))
    rows.append((3, "ok", "read", "r", "a", 1.6))
    assert check_register(ops(*rows), {"r": "a"}).valid
    rows.append((3, "invoke", "read", "r", None, 2.0))
    rows.append((3, "ok", "read", "r", "b", 2.1))  # b's write failed: nothing stored
    result = check_register(ops(*rows), {"r": "a"})
    assert not result.valid
    assert [(key, value) for key, value, _ in result.unexpected_in_reads] == [("r", "b")]


def test_counter_read_that_counts_a_failed_increment_is_a_violation():
    rows: list = []
    incr(rows, 1, "c", "ok", 0.0, 0.1)
    incr(rows, 2, "c", "fail", 0.2, 0.3)
    rows.append((3, "invoke", "read", "c", None, 0.4))
    rows.append((3, "ok", "read", "c", 2, 0.5))
    result = check_counter(ops(*rows), {"c": 1})
    assert not result.valid
    assert [(key, seen, bound) for key, seen, bound, _ in result.read_violations] == [("c", 2, 1)]


def test_register_key_not_read_back_is_not_called_vanished():
    rows: list = []
    write(rows, 1, "r", "a", "ok", 0.0, 1.0)
    result = check_register(ops(*rows), {})  # the final read failed: another check says so
    assert result.vanished_keys == [] and result.valid


def test_checkers_judge_the_reads_of_a_history_given_once_as_an_iterator():
    """Each checker walked its history twice (writes, then reads): given an iterator of
    operations, the second walk saw nothing and every read's check passed unseen."""
    rows: list = []
    add(rows, 1, "k", "1-0", "ok", 0.0, 1.0)
    rows += [(2, "invoke", "read", "k", None, 1.5), (2, "ok", "read", "k", ["1-0", "9-9"], 2.0)]
    listed = list(ops(*rows).ops)
    result = check_set(iter(listed), {"k": {"1-0"}})
    assert not result.valid and result.unexpected_in_reads == [("k", "9-9")]
    counted = [
        Op(1, "invoke", "incr", "c", 1, 0.0), Op(1, "ok", "incr", "c", 1, 1.0),
        Op(2, "invoke", "read", "c", None, 1.5), Op(2, "ok", "read", "c", 5, 2.0),
    ]  # fmt: skip
    assert not check_counter(iter(counted), {"c": 1}).valid  # a read saw 5 of 1 attempted
    written = [
        Op(1, "invoke", "write", "r", "a", 0.0), Op(1, "ok", "write", "r", "a", 1.0),
        Op(2, "invoke", "read", "r", None, 1.5), Op(2, "ok", "read", "r", "never", 2.0),
    ]  # fmt: skip
    assert not check_register(iter(written), {"r": "a"}).valid
