"""Records as replicas store and send them: merging encoded copies without decoding."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dynaray import codec, crdt, records, versions

NODES = ["a", "b", "c"]


@st.composite
def histories(draw) -> list[bytes | None]:
    """Encoded copies of one key on three replicas after a few writes, each write applied
    by one node to its own copy with the context that copy had (so copies diverge)."""
    copies: dict[str, records.Record | None] = {n: None for n in NODES}
    for stamp in range(1, draw(st.integers(0, 6)) + 1):
        node = draw(st.sampled_from(NODES))
        seen = records.context_of(copies[node]) if draw(st.booleans()) else []
        value = draw(st.sampled_from([b"x", b"y", None]))
        copies[node] = records.update(copies[node], ["siblings", seen, value], node, stamp)
        if draw(st.booleans()):  # sometimes the write reaches another replica too
            other = draw(st.sampled_from(NODES))
            copies[other] = records.merge(copies[other], copies[node])
    return [records.encode(r) if r is not None else None for r in copies.values()]


@given(histories())
def test_merge_encoded_is_the_merge_of_the_decoded_copies(raws):
    expected = records.merge_all([records.decode(r) for r in raws if r is not None])
    merged = records.merge_encoded(raws)
    if expected is None:
        assert merged is None
    else:
        assert records.equal(records.decode(merged), expected)
        assert records.siblings_in(merged) == versions.size(expected.state)


@given(histories())
def test_same_encoded_matches_equal_records(raws):
    for a in raws:
        for b in raws:
            decoded_a = records.decode(a) if a is not None else None
            decoded_b = records.decode(b) if b is not None else None
            assert records.same_encoded(a, b) == records.equal(decoded_a, decoded_b)


def test_agreeing_copies_are_passed_on_as_they_are():
    raw = records.encode(records.update(None, ["siblings", [], b"v"], "a", 1))
    assert records.merge_encoded([raw, None, raw]) is raw
    assert records.merge_encoded([None, None]) is None
    lww = records.encode(records.update(None, ["lww", b"v"], "a", 1))
    assert records.siblings_in(lww) == 0


@given(histories())
def test_merge_into_stores_the_merge_or_nothing_when_already_held(raws):
    for stored in raws:
        for incoming in raws:
            if incoming is None:
                continue
            new = records.merge_into(stored, incoming)
            before = records.decode(stored) if stored is not None else None
            expected = records.merge(before, records.decode(incoming))
            if new is None:
                assert records.equal(before, expected)
            else:
                assert records.equal(records.decode(new), expected)


def test_stamp_of_reads_the_envelope_and_refuses_what_is_not_a_record():
    raw = records.encode(records.update(None, ["siblings", [], b"v"], "a", 42))
    assert records.stamp_of(raw) == 42
    for bad in (b"\xc1", codec.pack([1, 2]), codec.pack([records.FORMAT, "nope", [], 1])):
        with pytest.raises(ValueError):
            records.stamp_of(bad)


# -- the context a write's answer carries ---------------------------------------------------


def _put(stored, context: list, value: bytes, node: str):
    """A coordinator's write, and the context its answer carries."""
    op = ["siblings", context, value]
    record = records.update(stored, op, node, 1)
    return record, records.written_context(record, op, node)


def _values(record) -> list:
    return sorted(versions.values(record.state))


def test_a_write_answer_never_covers_a_concurrent_version_its_writer_did_not_see():
    # X and Y both write blind through n1: two siblings. Y writes again with what its put
    # answered: X's version, never seen by Y, must survive.
    r1, _ = _put(None, [], b"x1", "n1")
    r2, y_context = _put(r1, [], b"y1", "n1")
    assert _values(r2) == [b"x1", b"y1"]
    r3, _ = _put(r2, y_context, b"y2", "n1")
    assert b"x1" in _values(r3)
    assert _values(r3) == [b"x1", b"y1", b"y2"]  # its own y1 stays too, to be resolved
    # The same through two coordinators: n2 holds x1 (from n1) when Y writes through it.
    s2, y_context = _put(r1, [], b"y1", "n2")
    s3, _ = _put(s2, y_context, b"y2", "n2")
    assert _values(s3) == [b"x1", b"y2"]  # y1 was Y's own: its answer covered it


def test_a_write_answer_covers_the_write_when_nothing_concurrent_survives():
    r1, context = _put(None, [], b"v1", "n1")
    r2, context = _put(r1, context, b"v2", "n1")
    r3, context = _put(r2, context, b"v3", "n2")  # another coordinator, same chain
    assert _values(r3) == [b"v3"]
    assert context == records.context_of(r3)
    # After a read that saw both siblings, the write resolves them and covers them.
    both, _ = _put(r1, [], b"w", "n2")
    merged, context = _put(both, records.context_of(both), b"merged", "n1")
    assert _values(merged) == [b"merged"] and context == records.context_of(merged)


def test_writes_chained_after_a_delete_and_a_blind_write_follow_one_another():
    """A blind write after a delete left the tombstone beside it (the write saw nothing),
    so its answer covered nothing, and each write made with the answer before it stayed a
    sibling until the key hit the sibling limit: a conflict of the writer with itself."""
    r, _ = _put(None, [], b"\x00v0", "n1")
    r, _ = _put(r, records.context_of(r), None, "n1")  # delete(key): it read first
    r, context = _put(r, [], b"\x00a", "n1")  # put(key, None, "a")
    assert set(versions.values(r.state)) == {None, b"\x00a"}  # the tombstone stays beside
    r, context = _put(r, context, b"\x00b", "n1")
    r, context = _put(r, context, b"\x00c", "n1")
    assert [v for v in versions.values(r.state) if v is not None] == [b"\x00c"]
    # A value of ours beside the write is still left to resolve.
    x, _ = _put(None, [], b"\x00x", "n1")
    x, context = _put(x, [], b"\x00y", "n1")
    x, _ = _put(x, context, b"\x00z", "n1")
    assert b"\x00x" in versions.values(x.state)


@pytest.mark.parametrize(
    "op", [["siblings", []], ["lww"], ["counter"], ["siblings", [], "text"], ["siblings", [], 5]]
)
def test_a_malformed_operation_is_refused_before_anything_is_stored(op):
    from dynaray.errors import InvalidRequest

    with pytest.raises(InvalidRequest):
        records.update(None, op, "n1", 1)


# -- writes a stamp decides ---------------------------------------------------------------


def test_an_lww_write_over_a_copy_with_a_later_stamp_still_wins():
    # The coordinator's clock is behind the stamp of the copy it holds (a peer's faster
    # clock, or a restart that forgot what it had seen): its write must not lose to it.
    first = records.update(None, ["lww", b"v1"], "a", 1_000)
    second = records.update(first, ["lww", b"v2"], "b", 10)
    assert second.state[2] == b"v2" and second.stamp == 1_001


def test_an_lww_write_with_the_stamp_it_read_wins_on_a_coordinator_that_missed_the_first():
    first = records.update(None, ["lww", b"v1"], "a", 1_000)
    read = records.context_stamp(first)
    assert read == 1_000
    second = records.update(None, ["lww", b"v2", read], "b", 10)  # b never held v1
    assert records.merge(first, second).state[2] == b"v2"
    assert records.merge(second, first).state[2] == b"v2"
    blind = records.update(None, ["lww", b"v3"], "b", 10)  # no context: concurrent
    assert records.merge(first, blind).state[2] == b"v1"


def test_a_map_register_assign_that_follows_another_wins():
    def assign(value: bytes) -> list:
        return ["update", [["name", "register", ["assign", 0, value]]]]

    first = records.update(None, ["map", assign(b"Ann")], "a", 1_000)
    over = records.update(first, ["map", assign(b"Bob")], "b", 10)
    missed = records.update(None, ["map", assign(b"Cy"), records.context_stamp(first)], "c", 10)
    for later, name in ((over, b"Bob"), (missed, b"Cy")):
        merged = records.merge(first, later)
        assert crdt.value(merged.kind, merged.state)["name"] == name


@pytest.mark.parametrize("read", [-1, "1", 1.0, True, 1 << 63])
def test_a_bad_read_stamp_is_refused(read):
    with pytest.raises(records.InvalidRequest, match="stamp a write read"):
        records.update(None, ["lww", b"v", read], "a", 1)


def test_only_stamped_kinds_take_a_read_stamp_and_carry_it_in_contexts():
    with pytest.raises(records.InvalidRequest, match="counter operation has 2 parts"):
        records.update(None, ["counter", ["increment", 1], 5], "a", 1)
    counter = records.update(None, ["counter", ["increment", 1]], "a", 7)
    assert records.context_stamp(counter) == 0
    assert records.context_stamp(None) == 0


def test_writes_that_applied_again_undo_a_later_write_are_not_retried():
    """A write retried after its coordinator died mid-request (it may have applied it) is
    applied again: a counter increment counts twice, and an lww value or map register is
    stamped again, above a write that read it meanwhile, and wins over that write."""
    from dynaray.buckets import map_ops

    def update(**fields) -> list:
        defaults = dict.fromkeys(("increment", "add", "remove", "assign", "enable", "disable"))
        return ["map", ["update", map_ops(**{**defaults, **fields}, seen=None)]]

    assert records.idempotent(["siblings", [], codec.encode_value("v")])
    assert records.idempotent(["set", ["remove", [b"x"], []]])
    assert records.idempotent(update(remove={"tags": ["a"]}, disable=["vip"]))
    assert not records.idempotent(["counter", ["increment", 1]])
    # A set add or flag enable applied again has a new dot: a remove or disable that saw
    # the first one does not cover it, and the element or flag comes back.
    assert not records.idempotent(["set", ["add", [b"x"]]])
    assert not records.idempotent(update(add={"tags": ["a"]}))
    assert not records.idempotent(update(enable=["vip"]))
    assert not records.idempotent(["lww", codec.encode_value("v")])
    assert not records.idempotent(["lww", codec.encode_value("v"), 12345])
    assert not records.idempotent(update(assign={"name": "Ann"}))
    assert not records.idempotent(update(add={"tags": ["a"]}, assign={"name": "Ann"}))
