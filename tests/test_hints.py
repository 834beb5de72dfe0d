"""Hinted handoff over a real LMDB store, without Ray: a fake send records what it was given."""

from __future__ import annotations

import asyncio

import pytest

from dynaray import codec, records, versions
from dynaray.hints import HintedHandoff, hint_key
from dynaray.storage import HINTS, Store
from dynaray.transport import PeerUnavailable

ME = "n4"


def encode_clock(clock):
    return records.encode(records.Record("siblings", clock, 0))


def clock_of_wire(raw):
    record = records.decode(raw)  # hints travel encoded, as stored
    assert record.kind == "siblings"
    return record.state


def written(value: bytes, node: str = ME, stored=None):
    """A clock as the coordinator `node` leaves it after writing value."""
    return versions.update(versions.new((), value), stored, node)


def dkey(i: int) -> bytes:
    return codec.data_key(i % 7, i % 3, b"default", f"key-{i}".encode())


@pytest.fixture
def store(tmp_path):
    s = Store(str(tmp_path / "db"), ME, sync=False)
    yield s
    s.close()


def put_hint(store: Store, owner: str, key: bytes, clock) -> bytes:
    raw = encode_clock(clock)
    asyncio.run(store.write(lambda txn: txn.put(HINTS, hint_key(owner, key), raw)))
    return raw


def hints_of(store: Store, owner: str) -> dict[bytes, bytes]:
    prefix = hint_key(owner, b"")
    return {hkey[len(prefix) :]: raw for hkey, raw in store.scan(HINTS, prefix, limit=10_000)}


class Recorder:
    """A fake send: records every call; can fail, or run a hook before acknowledging."""

    def __init__(self, store: Store | None = None, fail: Exception | None = None, hook=None):
        self.store = store
        self.calls: list[tuple[str, list]] = []
        self.fail = fail
        self.hook = hook
        self.present_at_send: list[int] = []

    async def __call__(self, owner: str, items: list) -> None:
        self.calls.append((owner, list(items)))
        if self.store is not None:
            self.present_at_send.append(self.store.count(HINTS))
        if self.hook is not None:
            await self.hook(owner, items)
        if self.fail is not None:
            raise self.fail

    def sent_keys(self) -> list[bytes]:
        return [item[0] for _, items in self.calls for item in items]


# -- owners and count ----------------------------------------------------------------------


def test_no_hints(store):
    handoff = HintedHandoff(store, Recorder(), batch=4, pause=0)
    assert handoff.owners() == []
    assert handoff.count() == 0
    assert asyncio.run(handoff.deliver("n1")) == 0


def test_owners_lists_each_owner_once(store):
    owners = ["n1", "n10", "n2", "n100", "x", "node-with-a-much-longer-id", "ñ"]
    for n, owner in enumerate(owners):
        for i in range(n + 1):
            put_hint(store, owner, dkey(i), written(f"{owner}-{i}".encode()))
    handoff = HintedHandoff(store, Recorder(), batch=4, pause=0)
    found = handoff.owners()
    assert sorted(found) == sorted(owners)
    assert len(found) == len(set(found))
    assert handoff.count() == sum(range(1, len(owners) + 1))


def test_owner_ranges_do_not_overlap(store):
    # "n1" is a prefix of "n10": the length byte keeps their ranges apart
    put_hint(store, "n1", dkey(1), written(b"a"))
    put_hint(store, "n10", dkey(2), written(b"b"))
    put_hint(store, "n10", dkey(3), written(b"c"))
    assert set(hints_of(store, "n1")) == {dkey(1)}
    assert set(hints_of(store, "n10")) == {dkey(2), dkey(3)}


# -- delivery ------------------------------------------------------------------------------


def test_deliver_sends_each_hint_once_in_batches(store):
    mine = {dkey(i): put_hint(store, "n1", dkey(i), written(b"v%d" % i)) for i in range(7)}
    others = {dkey(i): put_hint(store, "n10", dkey(i), written(b"o%d" % i)) for i in range(3)}
    others2 = {dkey(i): put_hint(store, "n2", dkey(i), written(b"p%d" % i)) for i in range(2)}
    send = Recorder(store)
    handoff = HintedHandoff(store, send, batch=3, pause=0)

    assert asyncio.run(handoff.deliver("n1")) == 7
    assert handoff.delivered == 7
    assert [owner for owner, _ in send.calls] == ["n1"] * 3
    assert [len(items) for _, items in send.calls] == [3, 3, 1]
    assert sorted(send.sent_keys()) == sorted(mine)
    for _, items in send.calls:
        for key, wire, hint in items:
            assert hint is None  # the owner stores them as its own data
            clock = clock_of_wire(wire)
            assert versions.equal(clock, written(b"v%d" % list(mine).index(key)))
    # each batch was deleted only after its send returned
    assert send.present_at_send == [12, 9, 6]
    assert hints_of(store, "n1") == {}
    assert hints_of(store, "n10") == others
    assert hints_of(store, "n2") == others2
    assert handoff.count() == 5
    assert sorted(handoff.owners()) == ["n10", "n2"]
    # nothing left: a second delivery sends nothing
    assert asyncio.run(handoff.deliver("n1")) == 0
    assert len(send.calls) == 3


def test_deliver_with_batch_equal_to_count(store):
    for i in range(4):
        put_hint(store, "n1", dkey(i), written(b"v"))
    send = Recorder()
    handoff = HintedHandoff(store, send, batch=4, pause=0)
    assert asyncio.run(handoff.deliver("n1")) == 4
    assert [len(items) for _, items in send.calls] == [4]
    assert handoff.count() == 0


def test_deliver_uses_an_explicit_send(store):
    put_hint(store, "n1", dkey(1), written(b"v"))
    default, explicit = Recorder(), Recorder()
    handoff = HintedHandoff(store, default, batch=4, pause=0)
    assert asyncio.run(handoff.deliver("n1", explicit)) == 1
    assert default.calls == []
    assert explicit.sent_keys() == [dkey(1)]


def test_failed_send_propagates_and_keeps_hints(store):
    before = {dkey(i): put_hint(store, "n1", dkey(i), written(b"v%d" % i)) for i in range(5)}
    send = Recorder(fail=PeerUnavailable("n1", "down"))
    handoff = HintedHandoff(store, send, batch=2, pause=0)
    with pytest.raises(PeerUnavailable) as info:
        asyncio.run(handoff.deliver("n1"))
    assert info.value.peer == "n1"
    assert len(send.calls) == 1  # stops at the first unacknowledged batch
    assert hints_of(store, "n1") == before
    assert handoff.delivered == 0
    # the owner is not left marked busy: a later delivery goes through
    ok = Recorder()
    assert asyncio.run(handoff.deliver("n1", ok)) == 5
    assert sorted(ok.sent_keys()) == sorted(before)
    assert handoff.count() == 0


def test_failure_after_some_batches_keeps_the_rest(store):
    for i in range(5):
        put_hint(store, "n1", dkey(i), written(b"v%d" % i))
    calls = []

    async def send(owner, items):
        calls.append([k for k, _, _ in items])
        if len(calls) == 2:
            raise PeerUnavailable(owner, "gone again")

    handoff = HintedHandoff(store, send, batch=2, pause=0)
    with pytest.raises(PeerUnavailable):
        asyncio.run(handoff.deliver("n1"))
    assert set(hints_of(store, "n1")) == {k for k in map(dkey, range(5))} - set(calls[0])
    assert handoff.delivered == 2


def test_hint_changed_during_send_is_not_deleted(store):
    key = dkey(1)
    first = written(b"old")
    put_hint(store, "n1", key, first)
    put_hint(store, "n1", dkey(2), written(b"other"))
    newer = written(b"new", stored=first)
    newer_raw = encode_clock(newer)
    seen_at_second_send: list = []

    async def hook(owner, items):
        if len(send.calls) == 1:
            # a newer write for the same key reaches the hint while the owner is merging
            await store.write(lambda txn: txn.put(HINTS, hint_key("n1", key), newer_raw))
        else:
            seen_at_second_send.append(hints_of(store, "n1"))

    send = Recorder(hook=hook)
    handoff = HintedHandoff(store, send, batch=10, pause=0)
    asyncio.run(handoff.deliver("n1"))

    # the first round deleted the unchanged hint but kept the changed one ...
    assert seen_at_second_send == [{key: newer_raw}]
    # ... which was then delivered in its newer form, and only then deleted
    assert len(send.calls) == 2
    ((k, wire, _),) = send.calls[1][1]
    assert k == key
    assert versions.equal(clock_of_wire(wire), newer)
    assert handoff.count() == 0


def test_changed_hint_survives_when_owner_fails_afterwards(store):
    key = dkey(1)
    first = written(b"old")
    put_hint(store, "n1", key, first)
    newer_raw = encode_clock(written(b"new", stored=first))

    async def send(owner, items):
        if not calls:
            calls.append(items)
            await store.write(lambda txn: txn.put(HINTS, hint_key("n1", key), newer_raw))
            return
        raise PeerUnavailable(owner, "down")

    calls: list = []
    handoff = HintedHandoff(store, send, batch=10, pause=0)
    with pytest.raises(PeerUnavailable):
        asyncio.run(handoff.deliver("n1"))
    assert hints_of(store, "n1") == {key: newer_raw}


def test_one_delivery_per_owner_at_a_time(store):
    for i in range(4):
        put_hint(store, "n1", dkey(i), written(b"v"))

    async def main():
        gate = asyncio.Event()
        calls = []

        async def send(owner, items):
            calls.append(len(items))
            await gate.wait()

        handoff = HintedHandoff(store, send, batch=2, pause=0)
        first = asyncio.create_task(handoff.deliver("n1"))
        await asyncio.sleep(0)
        while not calls:
            await asyncio.sleep(0)
        assert await handoff.deliver("n1") == 0  # already being delivered
        gate.set()
        assert await first == 4
        return calls

    assert asyncio.run(main()) == [2, 2]
    assert store.count(HINTS) == 0


# -- idempotent delivery to a model owner --------------------------------------------------


class ModelOwner:
    """An owner that merges delivered clocks into its data with versions.sync."""

    def __init__(self):
        self.data: dict[bytes, versions.Clock] = {}

    async def __call__(self, owner, items):
        for key, wire, _ in items:
            clock = clock_of_wire(wire)
            self.data[key] = versions.sync(self.data[key], clock) if key in self.data else clock

    def snapshot(self):
        return {k: (c[0], sorted(c[1], key=repr)) for k, c in self.data.items()}


def test_delivering_twice_changes_nothing(store):
    clocks = {}
    for i in range(5):
        clock = written(b"a%d" % i)
        if i % 2:
            clock = written(b"b%d" % i, node="n7", stored=clock)  # a second coordinator
        if i == 4:
            clock = versions.update(versions.new((), b"c"), clock, ME)
        clocks[dkey(i)] = clock
        put_hint(store, "n1", dkey(i), clock)

    owner = ModelOwner()
    handoff = HintedHandoff(store, owner, batch=2, pause=0)
    assert asyncio.run(handoff.deliver("n1")) == 5
    first = owner.snapshot()
    assert set(first) == set(clocks)
    for key, clock in clocks.items():
        assert versions.equal(owner.data[key], clock)

    # the same hints again (say, the ack was lost and the hints were kept)
    for key, clock in clocks.items():
        put_hint(store, "n1", key, clock)
    assert asyncio.run(handoff.deliver("n1")) == 5
    assert owner.snapshot() == first
    for key, clock in clocks.items():
        assert versions.equal(owner.data[key], clock)


def test_delivery_merges_with_owners_newer_data(store):
    key = dkey(1)
    hinted = written(b"during-outage")
    put_hint(store, "n1", key, hinted)
    owner = ModelOwner()
    # a write that saw the hinted value, and one concurrent with it
    later = versions.update(versions.new(versions.join(hinted), b"after-return"), hinted, "n1")
    concurrent = written(b"concurrent", node="n5")
    owner.data = {key: versions.sync(later, concurrent)}
    expected = owner.snapshot()

    handoff = HintedHandoff(store, owner, batch=2, pause=0)
    asyncio.run(handoff.deliver("n1"))
    assert owner.snapshot() == expected  # an already-overwritten hint brings nothing back
    assert b"during-outage" not in versions.values(owner.data[key])


def test_hints_survive_reopening(tmp_path):
    path = str(tmp_path / "db")
    first = Store(path, ME, sync=True)
    written_hints = {}
    for owner in ("n1", "n10", "n2"):
        for i in range(3):
            written_hints[(owner, dkey(i))] = put_hint(first, owner, dkey(i), written(b"v%d" % i))
    first.close()

    again = Store(path, ME, sync=True)
    try:
        handoff = HintedHandoff(again, Recorder(), batch=2, pause=0)
        assert sorted(handoff.owners()) == ["n1", "n10", "n2"]
        assert handoff.count() == 9
        for owner in ("n1", "n10", "n2"):
            for key, raw in hints_of(again, owner).items():
                assert written_hints[(owner, key)] == raw
        send = Recorder()
        assert asyncio.run(handoff.deliver("n10", send)) == 3
        assert handoff.count() == 6
    finally:
        again.close()

    third = Store(path, ME, sync=True)
    try:
        assert sorted(HintedHandoff(third, Recorder()).owners()) == ["n1", "n2"]
        assert third.count(HINTS) == 6
    finally:
        third.close()


def test_only_acknowledged_hints_are_forgotten_and_the_rest_passed_over(store):
    """A node that left the ring: its hints go to each key's current owners, some of whom
    are out of reach. A hint no owner took stays; the delivery goes on past it."""
    before = {dkey(i): put_hint(store, "gone", dkey(i), written(b"v%d" % i)) for i in range(7)}
    unreachable = {dkey(1), dkey(4), dkey(5)}
    batches = []

    async def send(owner, items):
        batches.append([k for k, _, _ in items])
        return [k not in unreachable for k, _, _ in items]

    handoff = HintedHandoff(store, send, batch=3, pause=0)
    assert asyncio.run(handoff.deliver("gone")) == 4
    assert sorted(k for batch in batches for k in batch) == sorted(before)  # each sent once
    assert hints_of(store, "gone") == {k: before[k] for k in unreachable}
    assert handoff.delivered == 4


def test_a_hint_changed_at_every_send_waits_for_the_next_delivery(store):
    """Writes keep reaching one hint while it is sent: one delivery goes round once more for
    it, then stops (it must not hold up the other owners' deliveries)."""
    key = dkey(1)
    put_hint(store, "n1", key, written(b"v0"))
    sends = []

    async def send(owner, items):
        sends.append(items)
        newer = encode_clock(written(b"v%d" % len(sends)))
        await store.write(lambda txn: txn.put(HINTS, hint_key("n1", key), newer))

    handoff = HintedHandoff(store, send, batch=10, pause=0)
    asyncio.run(handoff.deliver("n1"))
    assert len(sends) == 2
    assert handoff.count() == 1  # the newest copy, for the next delivery
