"""Which keys a storage node answers reads for, as its ring and N change; and the node's
other decisions that need no second process (handoff, reaping, a coordinator's batches,
a gossip round).

The node object is used in-process, without Ray: its methods are plain coroutines here,
and its peers are stand-ins that a test puts in place of its calls.
"""

from __future__ import annotations

import asyncio
import shutil

import pytest

from dynaray import codec, quorum, reads, records, versions
from dynaray.client import siblings_op
from dynaray.errors import InvalidRequest, RequestTimeout, StorageError
from dynaray.node import StorageNode
from dynaray.ring import Ring
from dynaray.storage import DATA
from dynaray.transport import PeerUnavailable, actor_of

BUCKET = b"default"


@pytest.fixture
def node(tmp_path):
    made = StorageNode("n1", str(tmp_path / "n1"))
    yield made
    asyncio.run(made.stop())


def _keys_by_role(ring: Ring, n: int, count: int = 400) -> tuple[list[bytes], list[bytes]]:
    """Data keys that n1 replicates with this ring and N, and data keys it does not."""
    mine, others = [], []
    for i in range(count):
        partition, dkey = quorum.locate(ring, BUCKET, f"k{i}".encode())
        (mine if "n1" in ring.preference_list(partition)[:n] else others).append(dkey)
    return mine, others


def _answers(node: StorageNode, dkeys: list[bytes]) -> list:
    return asyncio.run(node.replica_get("client", dkeys))


def test_a_node_refuses_reads_of_ranges_it_lost_to_a_joining_node(node) -> None:
    before = Ring.create(["n1", "n2", "n3", "n4"], 32)
    node._adopt(before)
    node.config = {"n": 2}
    mine, others = _keys_by_role(before, 2)
    assert mine and others
    assert all(answer is None for answer in _answers(node, mine))  # ours, not written yet
    assert all(answer == reads.NOT_MINE for answer in _answers(node, others))

    after = before.with_node("n5")
    node._adopt(after)
    still, lost = _keys_by_role(after, 2)
    lost = [dkey for dkey in mine if dkey not in set(still)]
    assert lost, "the joining node should take some of n1's ranges"
    assert all(answer == reads.NOT_MINE for answer in _answers(node, lost))
    assert all(answer is None for answer in _answers(node, still))


def test_a_node_answers_for_more_ranges_when_n_grows(node) -> None:
    ring = Ring.create(["n1", "n2", "n3", "n4"], 32)
    node._adopt(ring)
    node.config = {"n": 2}
    _, others = _keys_by_role(ring, 2)
    assert all(answer == reads.NOT_MINE for answer in _answers(node, others))

    node.config = {"n": 4}  # every node now replicates every range
    assert all(answer is None for answer in _answers(node, others))
    assert codec.key_partition(others[0]) in node._replicated()


def test_a_node_back_empty_refuses_reads_of_its_ranges_until_they_are_in(tmp_path) -> None:
    """An emptied directory (not `fresh`) keeps its REFILL mark until every range is in:
    restarted halfway, the node refuses reads at once, and takes over exactly the ranges
    of the ring it is given, none left over from the ring it kept."""
    path = str(tmp_path / "n1")
    config = {"n": 2}
    kept = Ring.create(["n1", "n2", "n3"], 16)

    async def life(ring: Ring) -> tuple[set[int], set[int]]:
        node = StorageNode("n1", path)
        at_start = set(node.pending)
        await node.configure(ring.to_wire(), config)
        arriving = set(node.pending)
        await node.stop()  # no peer answers here: the refill is cut short
        return at_start, arriving

    at_start, arriving = asyncio.run(life(kept))
    assert at_start == set() and arriving == set(kept.replicated_partitions("n1", 2))
    given = kept.with_node("n4")
    at_start, arriving = asyncio.run(life(given))
    assert at_start == set(kept.replicated_partitions("n1", 2))
    assert arriving == set(given.replicated_partitions("n1", 2))
    assert arriving != at_start


def test_a_node_looks_its_peers_up_by_name_one_lookup_at_a_time(node, monkeypatch) -> None:
    import threading

    from dynaray import node as node_module
    from dynaray.transport import actor_of

    node._adopt(Ring.create(["n1", "n2", "n3", "n4"], 16))
    node.config = {"n": 3, "store": "s"}
    gcs_down = threading.Event()
    gcs_down.set()
    asked: list[str] = []
    found = object()

    def get_actor(name: str, namespace: str):
        asked.append(name)
        while gcs_down.is_set():  # Ray's lookup blocks while the GCS is down
            threading.Event().wait(0.01)
        if name == "s.node.n3":
            return found
        raise ValueError(f"Failed to look up actor with name {name!r}")

    monkeypatch.setattr(node_module.ray, "get_actor", get_actor)
    monkeypatch.setattr(node_module, "PEER_LOOKUP_WAIT", 0.05)

    async def rounds() -> None:
        try:
            await node._find_peers()  # n2's lookup waits on the GCS: the round gives up on it
            await node._find_peers()  # its thread still waits: no second lookup meanwhile
            assert asked == ["s.node.n2"]
            gcs_down.clear()
            with pytest.raises(ValueError):
                await node._lookup  # n2 has no actor
            await node._find_peers()  # every peer with no handle here, in turn
            assert asked == ["s.node.n2", "s.node.n2", "s.node.n3", "s.node.n4"]
            assert node.transport.peers == {"n3": found}
            # A peer seen dead is looked up again; describe() does not hand its dead actor out.
            node.transport.dead["n3"] = actor_of(found)
            assert "n3" not in (await node.describe())["peers"]
            await node._find_peers()
            assert node.transport.peers["n3"] is found and "n3" in node.transport.dead  # not back
        finally:
            gcs_down.clear()  # no lookup thread left blocked, whatever failed

    asyncio.run(rounds())


# -- a coordinator whose own disk refuses a write ------------------------------------------


def _refusing(node: StorageNode, monkeypatch, answers: dict) -> list[str]:
    """n1's disk refuses every write; its peers answer coordinate_put from `answers` ({peer:
    a reply, or an exception to raise}). Returns the peers called, in order."""

    async def refuse(op):
        raise StorageError("node n1 stored nothing of this write: the disk is full")

    called: list[str] = []

    async def call(peer, method, *args):
        assert method == "coordinate_put" and args[-1] is True  # forwarded
        called.append(peer)
        answer = answers[peer]
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(node.store, "write", refuse)
    monkeypatch.setattr(node, "_call", call)
    return called


def _owned_first(node: StorageNode) -> tuple[bytes, list[str]]:
    """A key whose preference list starts with n1, and its other two owners."""
    for i in range(1000):
        key = f"k{i}".encode()
        partition, _ = quorum.locate(node.ring, BUCKET, key)
        owners = node.ring.preference_list(partition)[:3]
        if owners[0] == "n1":
            return key, owners[1:]
    raise AssertionError("no key owned first by n1")


def _ready(node: StorageNode) -> None:
    node._adopt(Ring.create(["n1", "n2", "n3", "n4"], 32))
    node.config = {"n": 3}


def test_a_coordinator_whose_disk_refuses_hands_the_write_to_another_owner(node, monkeypatch):
    _ready(node)
    key, (second, third) = _owned_first(node)

    called = _refusing(
        node,
        monkeypatch,
        {second: StorageError("full too"), third: ["ok", [["n3", 1]]]},
    )
    op = ["counter", ["increment", 1]]
    assert asyncio.run(node.coordinate_put("client", BUCKET, key, op, 2, 3)) == [
        "ok",
        [["n3", 1]],
    ]
    assert called == [second, third]  # a refusal stored nothing: the next owner is safe

    # An owner that did not answer may have applied it: a counter is not sent again.
    called = _refusing(
        node, monkeypatch, {second: PeerUnavailable(second, "timeout"), third: ["ok", []]}
    )

    with pytest.raises(RequestTimeout, match="update .* may or may not have been applied"):
        asyncio.run(node.coordinate_put("client", BUCKET, key, op, 2, 3))
    assert called == [second]


def test_a_refused_write_no_other_owner_took_is_reported_as_unknown(node, monkeypatch):
    """Even for a write that is safe to repeat: an owner that timed out may hold it, so the
    answer is not the coordinator's own "nothing was stored"."""
    _ready(node)
    key, (second, third) = _owned_first(node)
    called = _refusing(
        node,
        monkeypatch,
        {second: PeerUnavailable(second, "timeout"), third: PeerUnavailable(third, "unknown peer")},
    )
    op = siblings_op(None, b"v")(codec.hash_input(BUCKET, key))
    with pytest.raises(RequestTimeout, match="disk refused it"):
        asyncio.run(node.coordinate_put("client", BUCKET, key, op, 2, 3))
    assert called == [second, third]


def test_a_stand_in_whose_disk_refuses_does_not_claim_nothing_was_stored(node, monkeypatch):
    _ready(node)
    for i in range(1000):  # a key n1 does not own: it forwards, then stands in
        key = f"s{i}".encode()
        owners = node.ring.preference_list(quorum.locate(node.ring, BUCKET, key)[0])[:3]
        if "n1" not in owners:
            break
    op = siblings_op(None, b"v")(codec.hash_input(BUCKET, key))
    # An owner timed out (it may hold the write), the others are unknown: n1 stands in.
    answers = {owner: PeerUnavailable(owner, "unknown peer") for owner in owners}
    answers[owners[0]] = PeerUnavailable(owners[0], "timeout")
    called = _refusing(node, monkeypatch, answers)
    with pytest.raises(RequestTimeout, match="disk refused it"):
        asyncio.run(node.coordinate_put("client", BUCKET, key, op, 2, 3))
    assert called == list(owners)
    # Forwarded to n1, it tried no other node: nothing is stored anywhere, and it says so.
    with pytest.raises(StorageError, match="stored nothing"):
        asyncio.run(node.coordinate_put("client", BUCKET, key, op, 2, 3, True))


def test_a_write_every_owner_refused_says_nothing_was_stored(node, monkeypatch):
    _ready(node)
    key, (second, third) = _owned_first(node)
    refusal = StorageError("full too")
    called = _refusing(node, monkeypatch, {second: refusal, third: refusal})
    op = ["counter", ["increment", 1]]
    with pytest.raises(StorageError, match="nothing of this write was stored"):
        asyncio.run(node.coordinate_put("client", BUCKET, key, op, 2, 3))
    assert called == [second, third]


def test_a_node_routed_as_a_stand_in_tries_the_owners_when_its_disk_refuses(node, monkeypatch):
    """n1 coordinates a key as the stand-in for its first owner, down in n1's view (the
    "any" path, the router): when its disk refuses, the live owners are asked, not skipped."""
    _ready(node)
    for i in range(1000):
        key = f"r{i}".encode()
        pref = node.ring.preference_list(quorum.locate(node.ring, BUCKET, key)[0])
        if pref[3] == "n1":
            break
    monkeypatch.setattr(node, "is_up", lambda peer: peer != pref[0])
    called = _refusing(node, monkeypatch, {pref[1]: ["ok", []], pref[2]: ["ok", []]})
    op = ["counter", ["increment", 1]]
    assert asyncio.run(node.coordinate_put("client", BUCKET, key, op, 2, 3)) == ["ok", []]
    assert called == [pref[1]]


def test_a_primary_whose_disk_refuses_hands_the_write_to_a_stand_in(node, monkeypatch):
    """n1 owns the key first and its disk refuses; the other two owners are down: a node
    standing in for one of them coordinates the write, instead of the write failing."""
    _ready(node)
    key, (second, third) = _owned_first(node)
    pref = node.ring.preference_list(quorum.locate(node.ring, BUCKET, key)[0])
    spare = pref[3]
    monkeypatch.setattr(node, "is_up", lambda peer: peer not in (second, third))
    called = _refusing(node, monkeypatch, {spare: ["ok", [["n4~1.2", 1]]]})
    op = ["counter", ["increment", 1]]
    assert asyncio.run(node.coordinate_put("client", BUCKET, key, op, 2, 3)) == [
        "ok",
        [["n4~1.2", 1]],
    ]
    assert called == [spare]  # the owners that look down are not asked first


def test_a_node_that_stands_in_and_is_refused_asks_the_other_stand_in(node, monkeypatch):
    """n1 is not an owner; one owner is down, with a stand-in for it. The live owners and
    n1's own disk refuse: the stand-in already covering the down owner is asked too (n1
    replacing a target when it stood in must not lose it)."""
    node._adopt(Ring.create(["n1", "n2", "n3", "n4", "n5"], 32))
    node.config = {"n": 3}
    for i in range(2000):
        key = f"t{i}".encode()
        pref = node.ring.preference_list(quorum.locate(node.ring, BUCKET, key)[0])
        if pref[4] == "n1":  # owners pref[0:3]; the first spare pref[3] stands in, then n1
            break
    down = pref[2]
    monkeypatch.setattr(node, "is_up", lambda peer: peer != down)
    refusal = StorageError("full too")
    called = _refusing(node, monkeypatch, {pref[0]: refusal, pref[1]: refusal, pref[3]: ["ok", []]})
    op = ["counter", ["increment", 1]]
    assert asyncio.run(node.coordinate_put("client", BUCKET, key, op, 2, 3)) == ["ok", []]
    assert called == [pref[0], pref[1], pref[3]]


# -- hints of a node that left the ring ------------------------------------------------------


def test_hints_of_a_node_that_left_are_kept_until_an_owner_of_their_key_has_them(node, monkeypatch):
    """One batch of hints spans keys of several ranges; a hint is forgotten only once one
    of its own key's current owners took it, not because some other key's owner did."""
    from dynaray.hints import hint_key
    from dynaray.storage import HINTS

    _ready(node)
    owners_of = {}
    for i in range(40):
        partition, dkey = quorum.locate(node.ring, BUCKET, f"k{i}".encode())
        owners_of[dkey] = node.ring.preference_list(partition)[:3]
    record = records.encode(records.update(None, siblings_op(None, b"\x00v")(b""), "gone", 1))

    def op(txn):
        for dkey in owners_of:
            txn.put(HINTS, hint_key("gone", dkey), record)

    asyncio.run(node.store.write(op))

    async def call(peer, method, *args):  # every other node is out of reach
        raise PeerUnavailable(peer, "partitioned")

    monkeypatch.setattr(node, "_call", call)
    asyncio.run(node._deliver_to("gone"))
    held = {dkey for dkey in owners_of if node.store.get(HINTS, hint_key("gone", dkey))}
    taken = {dkey for dkey in owners_of if node.store.get(DATA, dkey) is not None}
    assert held == {dkey for dkey, owners in owners_of.items() if "n1" not in owners}
    assert held and taken == set(owners_of) - held  # n1 took its own keys' hints


# -- key epochs: a node never issues a dot again after it lost its copy of a key -------------


def _write(node: StorageNode, dkey: bytes, op: list) -> bytes:
    """n1 coordinates op on its own copy (no replication); the record it stored, encoded."""
    me = quorum.Target("n1")
    _, encoded = asyncio.run(
        node.store.write(lambda txn: node._update(txn, dkey, me, op, node.hlc.now()))
    )
    return encoded


def _blind(value: bytes) -> list:
    return ["siblings", [], value]


def test_a_write_that_would_leave_a_record_over_the_limit_is_refused_and_not_stored(
    node, monkeypatch
):
    monkeypatch.setattr(records, "MAX_RECORD_SIZE", 2_000)
    _ready(node)
    key, _ = _owned_first(node)
    _, dkey = quorum.locate(node.ring, BUCKET, key)
    for i in range(3):
        before = _write(node, dkey, _blind(bytes([i]) * 500))
    with pytest.raises(InvalidRequest, match="over the limit of 2,000; nothing was written: read"):
        _write(node, dkey, _blind(b"x" * 500))
    assert node.store.get(DATA, dkey) == before
    # A record already over the limit (merged from copies each under it, or stored before
    # there was one) takes a write that shrinks it, and refuses one that grows it.
    monkeypatch.setattr(records, "MAX_RECORD_SIZE", 1_000)
    assert len(before) > 1_000
    with pytest.raises(InvalidRequest, match="over the limit of 1,000"):
        _write(node, dkey, _blind(b"x" * 10))
    context = records.context_of(records.decode(before))
    resolved = records.decode(_write(node, dkey, ["siblings", context, b"\x00merged"]))
    assert versions.values(resolved.state) == [b"\x00merged"]
    monkeypatch.setattr(records, "MAX_RECORD_SIZE", 10)  # a set: the advice fits the kind
    with pytest.raises(InvalidRequest, match="the set has grown too large"):
        _write(node, dkey + b"s", ["set", ["add", [b"element"]]])


def test_a_node_that_got_a_dropped_range_back_never_issues_a_dot_again(node):
    """n1 wrote a key five times, handed its range to a joiner and dropped its copy, then got
    the range back; the copy it pulls from a peer missed its last two writes. A write it
    coordinates now, or while the range is still arriving, must not repeat dot n1:4: the
    replicas that hold n1:4 would drop it as seen."""

    _ready(node)
    key, _ = _owned_first(node)
    partition, dkey = quorum.locate(node.ring, BUCKET, key)
    history = [_write(node, dkey, _blind(b"\x00v%d" % i)) for i in range(5)]
    full, stale = history[-1], history[2]  # a peer holds all five; another only three
    asyncio.run(node._raise_floor(partition))  # what drop_foreign does around the drop
    asyncio.run(node.ranges.drop(partition))
    asyncio.run(node._raise_floor(partition))
    assert node.store.get(DATA, dkey) is None

    arriving = records.decode(_write(node, dkey, _blind(b"\x00while-arriving")))
    assert b"\x00while-arriving" in _merged_values(full, records.encode(arriving))
    asyncio.run(node.store.write(lambda txn: txn.delete(DATA, dkey)))

    asyncio.run(node._apply([(dkey, stale, None)]))  # the pull, from the stale peer
    after = _write(node, dkey, _blind(b"\x00after"))
    assert b"\x00after" in _merged_values(full, after)
    # Writes go on under that new epoch from now on (no new entry per write).
    again = _write(node, dkey, ["siblings", records.context_of(records.decode(after)), b"\x00x"])
    assert len(records.actors(records.decode(again))) == len(records.actors(records.decode(after)))


def test_a_write_after_a_reaped_tombstone_survives_a_replica_that_still_holds_it(node):
    """Every replica reaped the key's tombstone but one (unreachable then); n1, which has no
    copy left, coordinates a new write of the key: the old tombstone must not swallow it."""

    _ready(node)
    key, _ = _owned_first(node)
    _, dkey = quorum.locate(node.ring, BUCKET, key)
    for i in range(3):
        written = _write(node, dkey, _blind(b"\x00v%d" % i))
    context = records.context_of(records.decode(written))
    tombstone = _write(node, dkey, ["siblings", context, None])
    asyncio.run(node._reap_local([(dkey, tombstone)]))
    assert node.store.get(DATA, dkey) is None
    fresh = _write(node, dkey, _blind(b"\x00new"))
    assert _merged_values(tombstone, fresh) == [b"\x00new"]


def _merged_values(a: bytes, b: bytes) -> list:
    merged = records.merge(records.decode(a), records.decode(b))
    return sorted(v for v in records_values(merged) if v is not None)  # None: a tombstone


def records_values(record) -> list:
    from dynaray import versions

    return versions.values(record.state)


def test_a_tombstone_is_not_reaped_while_any_node_holds_a_hint_of_its_key(node, monkeypatch):
    """A hint from before the delete, delivered after the reap, would bring the key back:
    the reaper asks every node of the ring, and reaps nothing if one does not answer, nor
    while an owner is still taking the range over."""
    import dataclasses
    import time

    _ready(node)
    node.options = dataclasses.replace(node.options, tombstone_grace=0)
    key, _ = _owned_first(node)
    partition, dkey = quorum.locate(node.ring, BUCKET, key)
    written = _write(node, dkey, _blind(b"\x00v"))
    tombstone = _write(node, dkey, ["siblings", records.context_of(records.decode(written)), None])
    time.sleep(0.01)  # past the grace of 0 s
    hinting: dict[str, object] = {}  # node -> its answer to "hinted", or an exception

    async def call(peer, method, *args):
        assert method == "anti_entropy_call"
        what, _, keys = args[0], args[1], args[2]
        if what == "reapable":
            return None if peer in taking else [tombstone for _ in keys]
        if what == "hinted":
            answer = hinting.get(peer, [])
            if isinstance(answer, Exception):
                raise answer
            return answer
        assert what == "reap"
        return len(keys)

    monkeypatch.setattr(node, "_call", call)
    # An owner still taking the range over (a joiner) may yet merge a stale copy from an
    # old replica: nothing is reaped until it has the range.
    taking = set(node.ring.preference_list(partition)[1:3])
    assert asyncio.run(node._reap(partition)) == 0
    assert node.store.get(DATA, dkey) == tombstone
    taking = set()
    hinting["n4"] = [dkey]  # n4 is not an owner of the key: it stood in for one
    assert asyncio.run(node._reap(partition)) == 0
    hinting["n4"] = PeerUnavailable("n4", "partitioned")
    assert asyncio.run(node._reap(partition)) == 0
    assert node.store.get(DATA, dkey) == tombstone
    hinting["n4"] = []
    # n9 left the ring, but its leave stopped before it passed its hints on: it still runs.
    node.transport.peers["n9"] = object()
    hinting["n9"] = [dkey]
    assert asyncio.run(node._reap(partition)) == 0
    del node.transport.peers["n9"]  # its leave finished: it is no longer a peer
    # n4 holds a copy of its own from an earlier ownership of the range (a ring change
    # that ended before old copies were dropped): asked for it as a non-owner, it says so.
    copies = {"n4": [dkey]}
    asked_copies: dict[str, bool] = {}

    async def call_with_copies(peer, method, *args):
        if args[0] == "hinted":
            asked_copies[peer] = args[3]
            return copies.get(peer, []) if args[3] else []
        return await call(peer, method, *args)

    monkeypatch.setattr(node, "_call", call_with_copies)
    assert asyncio.run(node._reap(partition)) == 0
    owners = set(node.ring.preference_list(partition)[:3])
    assert {p for p, flag in asked_copies.items() if flag} == set(node.ring.nodes()) - owners
    copies.clear()  # dropped by the next change
    assert asyncio.run(node._reap(partition)) == 3  # two peers and n1
    assert node.store.get(DATA, dkey) is None
    # The peer's side: a node taking a range over answers None for it.
    reapable = node.anti_entropy_call("n2", "reapable", partition, [dkey])
    assert asyncio.run(reapable) == [None]  # reaped here too
    node.pending.add(partition)
    assert asyncio.run(node.anti_entropy_call("n2", "reapable", partition, [dkey])) is None


def test_hints_for_keys_whose_range_moved_go_to_the_keys_current_owners(node, monkeypatch):
    """n2 is in the ring and up, but some of the keys n1 holds hints of for it are in
    ranges that moved away from n2 (a joiner took them): n2 would drop those copies with the
    range, so they go to the keys' current owners instead."""
    from dynaray.hints import hint_key
    from dynaray.storage import HINTS

    _ready(node)
    owners_of = {}
    for i in range(40):
        partition, dkey = quorum.locate(node.ring, BUCKET, f"k{i}".encode())
        owners_of[dkey] = node.ring.preference_list(partition)[:3]
    record = records.encode(records.update(None, ["siblings", [], b"\x00v"], "n5", 1))
    asyncio.run(
        node.store.write(
            lambda txn: [txn.put(HINTS, hint_key("n2", dkey), record) for dkey in owners_of]
        )
    )
    sent: dict[str, set[bytes]] = {}

    async def call(peer, method, items):
        assert method == "replica_put"
        sent.setdefault(peer, set()).update(dkey for dkey, _, _ in items)
        return [True] * len(items)

    monkeypatch.setattr(node, "_call", call)
    asyncio.run(node._deliver_to("n2"))
    assert node.handoff.count() == 0
    moved = {dkey for dkey, owners in owners_of.items() if "n2" not in owners}
    assert moved and sent["n2"] == set(owners_of) - moved
    for dkey in moved:
        takers = {peer for peer, keys in sent.items() if dkey in keys}
        if "n1" in owners_of[dkey]:
            takers.add("n1")  # n1 took its own share in-process
            assert node.store.get(DATA, dkey) == record
        assert takers == set(owners_of[dkey])


def test_a_record_of_another_kind_is_left_out_and_the_rest_of_the_batch_goes_in(node):
    """Two sides of a partition created one bucket with two policies and wrote one key as
    each: the copies cannot be merged. A replica keeps its own, says so for that key, and
    takes the rest of the batch (a hint, a repair or a range behind it is not held up)."""
    siblings = records.encode(records.update(None, ["siblings", [], b"\x00v"], "n2", 1))
    counter = records.encode(records.update(None, ["counter", ["increment", 1]], "n3", 1))
    node._adopt(Ring.create(["n1"], 8))  # a replica of every key (one that has no ring keeps none)
    node.config = {"n": 1}
    dkeys = [quorum.locate(node.ring, BUCKET, k)[1] for k in (b"a", b"b", b"c")]
    asyncio.run(node._apply([(dkeys[1], siblings, None)]))
    held = asyncio.run(
        node.replica_put("n2", [[dkeys[0], siblings, None], [dkeys[1], counter, None],
                                [dkeys[2], counter, None]])
    )  # fmt: skip
    assert held == [True, False, True]
    assert node.store.get(DATA, dkeys[1]) == siblings
    assert node.store.get(DATA, dkeys[2]) == counter
    assert node.metrics.counts["unmergeable"] == 1


def test_counter_and_register_fields_of_a_map_go_on_under_one_epoch(node):
    """Their operations take no dot, so the map's clock does not name their writer; the
    node must still find its epoch in them, or every write would add an entry."""
    _ready(node)
    key, _ = _owned_first(node)
    _, dkey = quorum.locate(node.ring, BUCKET, key)
    nested = ["addr", "map", ["update", [["zip", "counter", ["increment", 1]]]]]
    for i in range(5):
        op = ["map", ["update", [["hits", "counter", ["increment", 1]], nested,
                                 ["name", "register", ["assign", 0, b"v%d" % i]]]]]  # fmt: skip
        encoded = _write(node, dkey, op)
    record = records.decode(encoded)
    assert len(set(records.actors(record))) == 1  # one epoch of n1's, named by each field


def test_a_directory_from_before_key_epochs_goes_on_under_none_of_its_old_ids(tmp_path):
    """Its ranges may have been dropped and taken back then, with no floor kept: a key it
    wrote under its bare id gets a new epoch at its next write."""
    from dynaray.node import _EPOCHS
    from dynaray.storage import META

    path = str(tmp_path / "n1")
    first = StorageNode("n1", path, fresh=True)
    assert first.epochs_since == 0  # a new directory: nothing from before
    _ready(first)
    key, _ = _owned_first(first)
    _, dkey = quorum.locate(first.ring, BUCKET, key)
    old = records.encode(records.update(None, ["siblings", [], b"\x00v"], "n1", 1))
    asyncio.run(first._apply([(dkey, old, None)]))  # as the old version wrote it
    asyncio.run(first.store.write(lambda txn: txn.delete(META, _EPOCHS)))
    asyncio.run(first.stop())
    again = StorageNode("n1", path, fresh=True)
    try:
        assert again.epochs_since > 0
        _ready(again)
        context = records.context_of(records.decode(old))
        after = records.decode(_write(again, dkey, ["siblings", context, b"\x00w"]))
        mine = [a for a in records.actors(after) if a.startswith("n1^")]
        assert len(mine) == 1 and versions.values(after.state) == [b"\x00w"]
    finally:
        asyncio.run(again.stop())


def test_a_range_given_back_while_it_is_dropped_keeps_what_is_left(node):
    """drop_foreign asks the ring at each batch, not once: a ring that gives the range
    back midway stops the drop (what the take-over copies in meanwhile stays)."""
    before = Ring.create(["n1", "n2", "n3", "n4"], 32)
    node._adopt(before)
    node.config = {"n": 2}
    mine, others = _keys_by_role(before, 2)
    for dkey in mine:
        _write(node, dkey, _blind(b"\x00v"))
    lost = before.with_node("n5")  # a joiner takes some of n1's ranges
    node._adopt(lost)
    gone = {p for p in node.ranges.held() if p not in node._replicated()}
    assert gone
    real_drop, asked = node.ranges.drop, []

    async def drop(partition, batch=1000, still=lambda: True):
        asked.append(still())
        node._adopt(before)  # the join is undone: every range is n1's again
        asked.append(still())
        return await real_drop(partition, batch, still)

    node.ranges.drop = drop
    assert asyncio.run(node.drop_foreign()) == 0
    assert asked[:2] == [True, False]
    assert set(node.ranges.held()) >= gone  # nothing of them was deleted
    assert node.transfer["ranges_dropped"] == 0


@pytest.mark.parametrize("marked", [True, False])
def test_a_compacted_backup_put_back_goes_on_under_one_key_epoch_per_key(tmp_path, marked):
    """Put back, the copy's LMDB numbers transactions from 1 again and the node takes a new
    actor id; floors kept from its old life (far above those numbers) would give every
    write of a key a new epoch, and its version vector a new entry. `marked`: the copy
    says whose its floors are; else it is from before that mark."""
    from dynaray.node import _FLOORS_OF
    from dynaray.storage import META

    path = tmp_path / "n1"
    first = StorageNode("n1", str(path), fresh=True)
    _ready(first)
    key, _ = _owned_first(first)
    partition, dkey = quorum.locate(first.ring, BUCKET, key)
    for i in range(30):  # transactions, so the floor below is well above a fresh count
        _write(first, dkey, _blind(b"\x00v%d" % i))
    asyncio.run(first._raise_floor(partition))  # the range was dropped, once
    if not marked:
        asyncio.run(first.store.write(lambda txn: txn.delete(META, _FLOORS_OF)))
    (tmp_path / "backup").mkdir()
    first.store.env.copy(str(tmp_path / "backup"), compact=True)
    asyncio.run(first.stop())
    shutil.copyfile(tmp_path / "backup" / "data.mdb", path / "data.mdb")

    again = StorageNode("n1", str(path))
    try:
        assert again.actor.startswith("n1@") and again.floors == {}
        _ready(again)
        context = records.context_of(records.decode(again.store.get(DATA, dkey)))
        for i in range(3):
            written = records.decode(_write(again, dkey, ["siblings", context, b"\x00w%d" % i]))
            context = records.context_of(written)
        epochs = {a for a in records.actors(written) if a.startswith(again.actor)}
        assert len(epochs) == 1 and versions.values(written.state) == [b"\x00w2"]
    finally:
        asyncio.run(again.stop())
    # Started again under the same actor id, it keeps the floors of this life.
    third = StorageNode("n1", str(path))
    try:
        asyncio.run(third._raise_floor(partition))
    finally:
        asyncio.run(third.stop())
    fourth = StorageNode("n1", str(path))
    try:
        assert fourth.actor == again.actor and partition in fourth.floors
    finally:
        asyncio.run(fourth.stop())


def test_a_range_no_old_replica_answered_for_is_counted_as_not_copied(node, monkeypatch):
    """The driver keeps the old copies when a node could not copy a range it gained."""
    import dynaray.node as node_module

    _ready(node)

    async def unreachable(source, partition, refill=False):
        return False

    async def no_wait(seconds):
        return None

    monkeypatch.setattr(node, "_pull", unreachable)
    monkeypatch.setattr(node_module.asyncio, "sleep", no_wait)
    asyncio.run(node._take_range(0, ["n2", "n3", "n4"], refill=False))
    assert node.transfer["ranges_failed"] == 1
    assert asyncio.run(node.handoff_status())["ranges_failed"] == 1


def test_a_copied_range_is_compared_with_a_busy_old_replica_until_it_answers(node, monkeypatch):
    """After the copy, the range is compared with its other old replicas, which brings in
    a write that W of them acknowledged without the one copied from. A comparison that
    failed once was skipped, and the range served without that write. It is tried again
    while the replica looks reachable: a ring node gossip sees up, or a node out of the
    ring (leaving) whose actor is not known dead; one that used its tries up gets one try
    at each later range of the take-over."""
    import dynaray.node as node_module

    _ready(node)
    compared: list[str] = []
    busy = {"n3": 2, "n5": 40}  # failures before each answers; n5 is out of the ring

    class Exchange:
        def __init__(self, peer: str) -> None:
            self.peer = peer

        async def run(self) -> None:
            compared.append(self.peer)
            if self.peer in ("n4", "n9") or compared.count(self.peer) <= busy.get(self.peer, 0):
                raise PeerUnavailable(self.peer, "no answer")

    async def pull(source, partition, refill=False):
        return source == "n2"

    async def no_wait(seconds):
        return None

    monkeypatch.setattr(node, "_pull", pull)
    monkeypatch.setattr(node, "_exchange", lambda partition, peer: Exchange(peer))
    monkeypatch.setattr(node.membership, "is_up", lambda peer: peer != "n4")  # n4 down
    monkeypatch.setattr(node.transport, "live", lambda peer: peer != "n9")  # n9 gone
    monkeypatch.setattr(node_module.asyncio, "sleep", no_wait)
    gave_up: set[str] = set()
    asyncio.run(node._take_range(0, ["n2", "n3", "n4", "n5", "n9"], False, gave_up))
    assert compared.count("n3") == 3  # tried again until it answered
    assert compared.count("n4") == 1  # called down by gossip: not waited for
    assert compared.count("n9") == 1  # out of the ring, its actor dead: forgotten
    assert compared.count("n5") == 30 and gave_up == {"n4", "n5", "n9"}
    asyncio.run(node._take_range(1, ["n2", "n5"], False, gave_up))
    assert compared.count("n5") == 31  # its tries used up: one try
    assert node.transfer["ranges_failed"] == 0  # copied: the driver may drop old copies


def test_a_member_back_on_an_empty_directory_given_a_changing_ring_refills_every_range(
    tmp_path,
):
    """Its first ring may come from a driver settling a membership change (with the ring
    before it, as a joiner gets): it took over only what the change gave it and served
    its other ranges empty."""
    before = Ring.create(["n1", "n2", "n3", "n4"], 16)
    after = before.with_node("n5")

    async def life() -> tuple[set[int], dict[int, list[str]]]:
        node = StorageNode("n1", str(tmp_path / "n1"))  # an empty directory, not fresh
        assert node.refill
        plans: list[dict] = []

        async def take_over(plan, refill=False, marked=False) -> None:
            plans.append(plan)

        node._take_over = take_over
        try:
            await node.configure(after.to_wire(), {"n": 2}, before.to_wire())
            await asyncio.sleep(0)  # the take-over task starts
            return set(node.pending), plans[0]
        finally:
            await node.stop()

    pending, plan = asyncio.run(life())
    assert pending == set(after.replicated_partitions("n1", 2))
    for partition, sources in plan.items():  # its replicas in the new ring and the old
        owners = after.preference_list(partition)[:2] + before.preference_list(partition)[:2]
        assert set(sources) == set(owners) - {"n1"}


def test_a_node_restarted_during_a_handoff_resumes_the_ranges_it_was_copying(tmp_path):
    """Ranges gained in a ring change stay pending across a restart (not answered for, not
    dropped) until copied from the old replicas the first life would have asked."""
    path = str(tmp_path / "n1")
    config = {"n": 2}
    before = Ring.create(["n2", "n3", "n4"], 16)
    after = before.with_node("n1")
    gained = set(after.replicated_partitions("n1", 2))
    assert gained

    async def first_life() -> set[int]:
        node = StorageNode("n1", path)
        await node.configure(after.to_wire(), config, before.to_wire())
        arriving = set(node.pending)
        await node.stop()  # no peer answers here: the copy is cut short
        return arriving

    arriving_key = next(
        dkey
        for i in range(1000)
        for partition, dkey in [quorum.locate(after, BUCKET, f"k{i}".encode())]
        if partition in gained
    )

    async def second_life() -> tuple[set[int], list, list[tuple[str, int]]]:
        node = StorageNode("n1", path)
        at_start = set(node.pending)
        answers = await node.replica_get("client", [arriving_key])

        pulled = _copying(node)
        await node.configure(after.to_wire(), config)  # as restart() gives it the ring
        while node.pending:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # the last range's mark is deleted after it is in
        await node.stop()
        return at_start, answers, pulled

    assert asyncio.run(first_life()) == gained
    at_start, answers, pulled = asyncio.run(second_life())
    assert at_start == gained
    assert answers == [reads.ARRIVING]
    assert {partition for _, partition in pulled} == gained
    for source, partition in pulled:
        assert source in before.preference_list(partition)[:2]
    third = StorageNode("n1", path)
    try:
        assert third.pending == set()
    finally:
        asyncio.run(third.stop())


def _copying(node: StorageNode, reachable: bool = True) -> list[tuple[str, int]]:
    """Stand in for the node's peers in a take-over: each pull of a range answers at once
    (copied, or no source reachable), and the Merkle exchange after it finds nothing.
    Returns the (source, range) pulls made, as they are made."""
    pulled: list[tuple[str, int]] = []

    async def pull(source: str, partition: int, refill: bool = False) -> bool:
        await asyncio.sleep(0)
        pulled.append((source, partition))
        return reachable

    node._pull = pull
    node._exchange = lambda partition, peer: _NoExchange()
    return pulled


class _NoExchange:
    async def run(self) -> None:
        return None


def test_a_replica_does_not_keep_a_write_to_a_range_its_ring_took_from_it(node):
    """A coordinator on an older ring sends a copy to a node that has lost the key's range:
    stored there, it would be dropped with the range, or never read. The node answers
    False (the coordinator writes to a stand-in instead); hints and keys it owns go in."""
    _ready(node)
    mine, others = _keys_by_role(node.ring, 3)
    encoded = records.encode(records.update(None, _blind(b"\x00v"), "n2", 1))
    items = [[others[0], encoded, None], [mine[0], encoded, None], [others[1], encoded, "n3"]]
    assert asyncio.run(node.replica_put("n2", items)) == [False, True, True]
    assert node.store.get(DATA, others[0]) is None
    assert node.store.get(DATA, mine[0]) == encoded
    assert asyncio.run(node.hint_count()) == 1
    assert node.metrics.counts["writes_not_mine"] == 1


def test_a_node_with_no_ring_given_a_later_ring_takes_every_range_over(tmp_path):
    """A joiner restarted before the change reached it has no ring kept and is given the
    new one without the one before: it never held its ranges, so it takes them all over
    (refusing reads of them meanwhile) rather than answer for them empty. Gossip does not
    configure a node with no ring: the driver's configure says what it held before."""
    joined = Ring.create(["n2", "n3", "n4"], 16).with_node("n1")
    first = Ring.create(["n1", "n2", "n3"], 16)  # a new store's ring: nothing to take over

    async def arriving(path: str, ring: Ring) -> set[int]:
        node = StorageNode("n1", path, fresh=True)  # an id never used: no REFILL mark
        try:
            node._learn({}, ring.to_wire())
            assert node.ring is None
            await node.configure(ring.to_wire(), {"n": 2})
            return set(node.pending)
        finally:
            await node.stop()

    joiner = asyncio.run(arriving(str(tmp_path / "joiner"), joined))
    assert joiner == set(joined.replicated_partitions("n1", 2))
    assert asyncio.run(arriving(str(tmp_path / "first"), first)) == set()


def test_a_node_still_receiving_a_range_does_not_serve_it_to_another(node):
    _ready(node)
    node.pending.update({3, 5})
    node._gaining.add(3)  # 5 is being refilled: whole up to some moment
    node._refill_empty = False  # (its data went back; an empty directory's is no copy)
    assert asyncio.run(node.range_items("n2", 3, None, 10)) is None
    assert asyncio.run(node.range_items("n2", 5, None, 10)) == []
    assert asyncio.run(node.range_items("n2", 4, None, 10)) == []


def test_a_restarted_node_given_an_older_ring_still_resumes_its_ranges(tmp_path):
    path = str(tmp_path / "n1")
    before = Ring.create(["n2", "n3", "n4"], 16)
    after = before.with_node("n1")

    async def first_life() -> None:
        node = StorageNode("n1", path)
        await node.configure(after.to_wire(), {"n": 2}, before.to_wire())
        await node.stop()

    async def second_life() -> tuple[bool, list[tuple[str, int]]]:
        node = StorageNode("n1", path)
        pulled = _copying(node)
        adopted = await node.configure(before.to_wire(), {"n": 2})  # a node that missed it
        while node.pending:
            await asyncio.sleep(0.01)
        await node.stop()
        return adopted, pulled

    asyncio.run(first_life())
    adopted, pulled = asyncio.run(second_life())
    assert adopted is False
    assert {partition for _, partition in pulled} == set(after.replicated_partitions("n1", 2))


def test_configure_calls_at_once_end_on_the_newest_ring(tmp_path):
    """The driver's ring and an older one from gossip, given at once to a node behind both:
    the node ends on the newer, whichever write finishes last."""
    ring4 = Ring.create(["n1", "n2", "n3"], 16)
    ring5 = ring4.with_node("n4")
    ring6 = ring5.with_node("n5")

    async def race() -> int:
        node = StorageNode("n1", str(tmp_path / "n1"), fresh=True)
        try:
            await node.configure(ring4.to_wire(), {"n": 2})
            node._take_over = _no_take_over
            await asyncio.gather(
                node.configure(ring6.to_wire(), {"n": 2}),
                node.configure(ring5.to_wire(), {"n": 2}),
            )
            return node.ring.version
        finally:
            await node.stop()

    assert asyncio.run(race()) == ring6.version


async def _no_take_over(plan, refill=False, marked=False) -> None:
    return None


def test_a_range_a_refill_takes_stays_arriving_when_an_earlier_take_over_gives_up(
    tmp_path, monkeypatch
):
    """A node restarted mid-refill, first given an older ring, resumes its ranges as gains
    (which give up after 30 tries); the refill that follows takes them too. Only the later
    take-over clears a range's arriving mark: the node answers no read of it until the
    refill has it."""
    import dynaray.node as node_module

    path = str(tmp_path / "n1")
    kept = Ring.create(["n1", "n2", "n3"], 16).with_node("n4")
    older = Ring.create(["n1", "n2", "n3"], 16)

    async def first_life() -> None:
        node = StorageNode("n1", path)  # an empty directory, not fresh: refilled
        await node.configure(kept.to_wire(), {"n": 2})
        await node.stop()

    async def second_life() -> tuple[set[int], set[int]]:
        node = StorageNode("n1", path)
        assert node.refill and node._unfinished

        _copying(node, reachable=False)
        try:
            await node.configure(older.to_wire(), {"n": 2})  # resumed as gains
            await node.configure(kept.to_wire(), {"n": 2})  # the refill
            while node.transfer["ranges_failed"] < len(kept_ranges):  # each gain gave up
                await asyncio.sleep(0)
            return set(node.pending), set(kept_ranges)
        finally:
            await node.stop()

    kept_ranges = kept.replicated_partitions("n1", 2)
    asyncio.run(first_life())
    real_sleep = asyncio.sleep

    async def no_wait(seconds):
        await real_sleep(0)

    monkeypatch.setattr(node_module.asyncio, "sleep", no_wait)
    pending, wanted = asyncio.run(second_life())
    assert pending == wanted  # the refill keeps trying, and keeps refusing their reads


def test_one_range_that_fails_anti_entropy_does_not_stop_the_round(node, monkeypatch):
    """A record that does not decode (a disk's corruption, a bug) fails its range's
    exchange and is never taken for a tombstone; the other ranges, and reaping, go on."""
    import dataclasses
    import time

    from dynaray.anti_entropy import Figures
    from dynaray.node import _old_tombstone

    _ready(node)
    node.options = dataclasses.replace(node.options, tombstone_grace=0)
    mine = sorted(node.ring.replicated_partitions(node.id, node.n))
    bad = mine[0]
    exchanged = []

    class Exchanging:
        def __init__(self, partition):
            self.partition = partition

        async def run(self):
            exchanged.append(self.partition)
            if self.partition == bad:
                raise ValueError("record has an unknown format")
            return Figures(ranges_compared=1)

    monkeypatch.setattr(node, "_exchange", lambda partition, peer: Exchanging(partition))
    reaped = []

    async def reap(partition):
        reaped.append(partition)
        if len(reaped) == 1:
            raise ValueError("a peer's copy does not decode")
        return 0

    monkeypatch.setattr(node, "_reap", reap)
    figures = asyncio.run(node.anti_entropy_round())
    failed = exchanged.count(bad)  # once per peer it is compared with
    assert failed >= 1 and figures["ranges_failed"] == failed + 1  # and one reap
    assert set(exchanged) == set(mine)  # every range was tried, those after the bad one too
    assert figures["ranges_compared"] == len(exchanged) - failed
    firsts = [p for p in mine if node.ring.preference_list(p)[0] == "n1"]
    assert reaped == firsts and len(firsts) > 1  # and reaping ran, past a range it failed
    time.sleep(0.01)
    cutoff = time.time() * 1000
    assert not _old_tombstone(b"\x93not a record", cutoff)
    tombstone = records.encode(records.update(None, ["siblings", [], None], "n1", 1))
    assert _old_tombstone(tombstone, cutoff)


def test_a_batch_part_that_fails_fails_its_own_requests_alone(node, monkeypatch):
    """A coordinator whose read of its own copies fails (its store closing, a bug) answers
    the batch's reads with the error, and its writes as usual: the whole call failed
    before, writes that were stored included."""
    from dynaray.errors import NodeError

    _ready(node)
    put_key, _ = _owned_first(node)
    get_key = next(
        k
        for k in (f"g{i}".encode() for i in range(1000))
        if node.ring.preference_list(quorum.locate(node.ring, BUCKET, k)[0])[0] == "n1"
    )

    async def call(peer, method, items):
        assert method in ("replica_put", "replica_get")
        return [True] * len(items) if method == "replica_put" else [None] * len(items)

    monkeypatch.setattr(node, "_call", call)
    monkeypatch.setattr(node, "is_up", lambda peer: True)
    closing = NodeError("node n1 is stopping: its store is closed")

    def get_many(db, keys):
        raise closing

    monkeypatch.setattr(node.store, "get_many", get_many)
    put = ["put", BUCKET, put_key, _blind(b"\x00v"), 2, 3]
    get = ["get", BUCKET, get_key, 2, 3]
    answers = asyncio.run(node.coordinate_batch("client", [put, get]))
    assert answers[0][0] == "ok"
    assert answers[1] == ["error", closing]
    assert (
        node._fault("put", ValueError("bug"))
        .args[0]
        .endswith("it may or may not be stored: read the key before writing it again")
    )
    assert node._fault("put", StorageError("full")).args[0] == "full"  # nothing stored


def test_a_gossip_round_waits_on_a_hung_peer_less_than_half_of_suspect_after(node, monkeypatch):
    """Our heartbeat advances at each round and at each gossip we answer; a round whose
    peer hangs must not hold it past the others' suspect_after (they would call us down)."""
    _ready(node)
    node.membership.add("n2")
    node.transport.peers["n2"] = object()
    waited: list[float] = []

    async def call(peer, method, *args, timeout):
        waited.append(timeout)
        raise PeerUnavailable(peer, f"no answer to {method} within {timeout:.1f}s")

    monkeypatch.setattr(node.transport, "call", call)
    asyncio.run(node._gossip_round())
    assert waited == [min(node.options.replica_timeout, node.options.suspect_after / 2)]
    assert node.is_up("n2")  # one slow answer does not mark it down: gossip decides
    before = node.membership.digest()["n1"][1]
    asyncio.run(node.gossip("n2", node.membership.digest(), 0, b""))
    assert node.membership.digest()["n1"][1] == before + 1


def test_a_node_that_passed_its_hints_on_takes_no_write_to_keep(node):
    """Between pass_on_hints answering 0 and the node's stop, a client or coordinator with
    an older ring may still reach it: it must keep nothing that would go with it."""
    _ready(node)
    key, (second, _) = _owned_first(node)
    _, dkey = quorum.locate(node.ring, BUCKET, key)
    record = records.encode(records.update(None, _blind(b"\x00v"), "n9", 1))
    assert asyncio.run(node.pass_on_hints()) == 0
    assert asyncio.run(node.replica_put("n2", [[dkey, record, second]])) == [False]
    assert asyncio.run(node.replica_put("n2", [[dkey, record, None]])) == [True]  # its own
    with pytest.raises(StorageError, match="leaving the store: nothing was written"):
        asyncio.run(node.coordinate_put("client", BUCKET, key, _blind(b"\x00w"), 2, 3))
    batch = [["put", BUCKET, key, _blind(b"\x00w"), 2, 3]]  # as clients send them
    [answer] = asyncio.run(node.coordinate_batch("client", batch))
    assert answer[0] == "error" and "leaving the store" in str(answer[1])
    assert node.handoff.count() == 0


def test_one_owner_whose_hints_fail_does_not_hold_up_the_others(node, monkeypatch):
    _ready(node)
    delivered: list[str] = []

    async def deliver(owner, send=None):
        if owner == "n2":
            raise ValueError("an answer that is not a list")
        delivered.append(owner)
        return 1

    monkeypatch.setattr(node.handoff, "owners", lambda: ["n2", "n3"])
    monkeypatch.setattr(node.handoff, "deliver", deliver)
    monkeypatch.setattr(node, "_deliverable", lambda owner: True)
    asyncio.run(node._handoff_round())
    assert delivered == ["n3"]


def test_a_record_stamped_far_past_the_clock_is_warned_of_once_and_counted(node):
    """A node whose clock runs ahead makes its lww writes win over later ones: a replica
    that receives one of its records says so (once a minute), and counts each."""
    import logging
    import time

    _ready(node)
    key, _ = _owned_first(node)
    _, dkey = quorum.locate(node.ring, BUCKET, key)
    ahead = (int(time.time() * 1000) + 3_600_000) << 16  # an hour ahead
    record = records.encode(records.update(None, ["lww", b"\x00v"], "n9", ahead))
    logged: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            logged.append(record.getMessage())

    logger = logging.getLogger("dynaray.node")
    keep = Keep(logging.WARNING)
    logger.addHandler(keep)  # the node's loggers do not propagate to pytest's
    try:
        for _ in range(3):
            assert asyncio.run(node.replica_put("n2", [[dkey, record, None]])) == [True]
    finally:
        logger.removeHandler(keep)
    warned = [m for m in logged if "runs ahead" in m]
    assert len(warned) == 1 and "3600 s past" in warned[0]
    assert node.metrics.counts["clock_ahead"] == 3


def test_a_node_with_no_ring_yet_answers_no_read(node):
    """A node back on an empty disk is found by its peers (by name) before the driver gives
    it the ring: it must not answer "not found" for keys it has not copied back yet."""
    _, dkey = quorum.locate(Ring.create(["n1", "n2", "n3"], 16), BUCKET, b"k")
    assert node.ring is None
    assert _answers(node, [dkey]) == [reads.ARRIVING]


def test_a_source_that_fails_with_any_error_is_not_taken_for_a_copied_range(node, monkeypatch):
    """A take-over whose first source answers with an error (it is stopping, or a bug)
    copies the range from the next one; it does not count the range as copied."""
    from dynaray.errors import NodeError

    _ready(node)
    partition = sorted(node._replicated())[0]
    dkey = codec.data_key(partition, 0, BUCKET, b"k")
    record = records.encode(records.update(None, _blind(b"\x00v"), "n9", 1))
    asked: list[str] = []

    async def call(peer, method, *args):
        asked.append(peer)
        if method != "range_items":
            return [] if method == "anti_entropy_call" else None
        if peer == "n2":
            raise NodeError("node n2 is stopping: its store is closed")
        return [[dkey, record]] if args[1] is None else []

    monkeypatch.setattr(node, "_call", call)
    monkeypatch.setattr(node, "_exchange", lambda partition, peer: _Nothing())
    asyncio.run(node._take_range(partition, ["n2", "n3"], refill=False))
    assert asked[:2] == ["n2", "n3"]
    assert node.store.get(DATA, dkey) == record
    assert node.transfer["ranges_failed"] == 0


class _Nothing:
    async def run(self):
        from dynaray.anti_entropy import Figures

        return Figures()


def test_a_node_refilling_an_empty_directory_gives_no_range_to_a_taker(tmp_path) -> None:
    """Back on an empty directory, a node's copy of its ranges is no copy until refilled:
    a joiner that copied a range from it would count the range as copied (and the old
    replica would drop its copy) with nothing in it. It answers None, so the joiner asks
    another replica; once the range is in, it serves it."""
    path = str(tmp_path / "n1")
    ring = Ring.create(["n1", "n2", "n3"], 16)
    partition = sorted(ring.replicated_partitions("n1", 2))[0]

    async def life() -> tuple:
        node = StorageNode("n1", path)  # not fresh: it may have had data
        before_ring = await node.range_items("n4", partition, None, 10)
        await node.configure(ring.to_wire(), {"n": 2})
        refilling = await node.range_items("n4", partition, None, 10)
        # Another node refilling an empty directory is served: when every replica of a
        # range lost its disk, they would otherwise wait on each other for good.
        assert await node.range_items("n2", partition, None, 10, True) == []
        node.pending.discard(partition)  # as when the range is in
        refilled = await node.range_items("n4", partition, None, 10)
        await node.stop()
        return before_ring, refilling, refilled

    assert asyncio.run(life()) == (None, None, [])


def test_a_directory_whose_data_went_back_still_serves_the_ranges_it_refills(tmp_path):
    """Its copy is whole up to some moment, and a store restored from backups refills
    every node at once: were they all to refuse, no range could be taken over."""
    from dynaray.storage import META, REFILL, REFILL_OLDER, Store

    path = str(tmp_path / "n1")
    ring = Ring.create(["n1", "n2", "n3"], 16)
    partition = sorted(ring.replicated_partitions("n1", 2))[0]
    store = Store(path, "n1", sync=False, fresh=True)
    asyncio.run(store.write(lambda txn: txn.put(META, REFILL, REFILL_OLDER)))
    store.close()

    async def life() -> list:
        node = StorageNode("n1", path)
        await node.configure(ring.to_wire(), {"n": 2})
        assert partition in node.pending
        served = await node.range_items("n4", partition, None, 10)
        await node.stop()
        return served

    assert asyncio.run(life()) == []


def test_a_node_asked_as_a_non_owner_names_the_copies_it_kept(node):
    """The peer side of the reaper's question: hints only from an owner (its data copy is
    compared apart), hints and copies of its own from a node that is not one."""
    _ready(node)
    key, _ = _owned_first(node)
    partition, dkey = quorum.locate(node.ring, BUCKET, key)
    _write(node, dkey, _blind(b"\x00v"))
    absent = quorum.locate(node.ring, BUCKET, b"never-written")[1]
    ask = node.anti_entropy_call
    assert asyncio.run(ask("n2", "hinted", partition, [dkey, absent])) == []
    assert asyncio.run(ask("n2", "hinted", partition, [dkey, absent], False)) == []
    assert asyncio.run(ask("n2", "hinted", partition, [dkey, absent], True)) == [dkey]


def test_an_anti_entropy_repair_into_a_range_our_ring_took_from_us_is_not_kept(node):
    """A peer still on an older ring compares a range with us that we dropped: its repair
    would put back a copy no exchange or reaping of ours looks at any more."""
    _ready(node)
    mine, not_mine = _keys_by_role(node.ring, 3)
    record = records.encode(records.update(None, _blind(b"\x00v"), "n2", 1))
    items = [[mine[0], record, None], [not_mine[0], record, None]]
    asyncio.run(node.anti_entropy_call("n2", "apply", 0, items))
    assert node.store.get(DATA, mine[0]) == record
    assert node.store.get(DATA, not_mine[0]) is None


def test_the_reaper_lets_other_work_run_while_it_scans_a_large_range(node):
    """The scan of a range for old tombstones decodes every record: with no tombstone to
    reap (the usual case) it never awaited anything, so a node holding millions of keys
    answered no gossip for seconds and its peers called it down."""
    _ready(node)
    key, _ = _owned_first(node)
    partition, _ = quorum.locate(node.ring, BUCKET, key)
    record = records.encode(records.update(None, _blind(b"\x00v"), "n1", 1))
    keys = [codec.data_key(partition, i % 1024, BUCKET, b"k%d" % i) for i in range(3000)]

    def op(txn) -> None:
        for dkey in keys:
            txn.put(DATA, dkey, record)

    asyncio.run(node.store.write(op))

    async def scenario() -> tuple[int, int]:
        woke = 0
        done = False

        async def other_work() -> None:
            nonlocal woke
            while not done:
                woke += 1
                await asyncio.sleep(0)

        task = asyncio.ensure_future(other_work())
        await asyncio.sleep(0)
        reaped = await node._reap(partition)
        done = True
        await task
        return reaped, woke

    reaped, woke = asyncio.run(scenario())
    assert reaped == 0 and woke >= 3


def _first_keys(node: StorageNode, count: int) -> list[bytes]:
    """Keys whose preference list starts with n1."""
    found = []
    for i in range(5000):
        key = f"b{i}".encode()
        if node.ring.preference_list(quorum.locate(node.ring, BUCKET, key)[0])[0] == "n1":
            found.append(key)
            if len(found) == count:
                return found
    raise AssertionError("too few keys owned first by n1")


def test_a_key_whose_copies_cannot_be_merged_fails_alone_in_a_coordinated_batch(node, monkeypatch):
    """Copies of two kinds (a bucket created with two policies across a partition) make a
    read of that key fail; the other reads of the batch are answered as usual."""
    _ready(node)
    bad, good = _first_keys(node, 2)
    bad_dkey = quorum.locate(node.ring, BUCKET, bad)[1]
    _write(node, bad_dkey, _blind(b"\x00v"))  # a siblings copy here
    counter = records.encode(records.update(None, ["counter", ["increment", 1]], "n3", 1))

    async def call(peer, method, items):
        assert method == "replica_get"
        return [counter if item == bad_dkey else None for item in items]

    monkeypatch.setattr(node, "_call", call)
    monkeypatch.setattr(node, "is_up", lambda peer: True)
    monkeypatch.setattr(node.options, "read_repair", False, raising=False)
    gets = [["get", BUCKET, key, 3, 3] for key in (bad, good)]
    answers = asyncio.run(node.coordinate_batch("client", gets))
    assert answers[0][0] == "error" and isinstance(answers[0][1], records.KindMismatch)
    assert answers[1] == ["ok", None]


def test_a_write_that_fails_unexpectedly_fails_alone_in_a_coordinated_batch(node, monkeypatch):
    """A stored record that does not decode fails the write of its key (which may or may
    not be stored, as on the one-key path); the batch's other writes are stored."""
    _ready(node)
    bad, good = _first_keys(node, 2)
    bad_dkey = quorum.locate(node.ring, BUCKET, bad)[1]
    asyncio.run(node.store.write(lambda txn: txn.put(DATA, bad_dkey, b"\xc1 not a record")))

    async def call(peer, method, items):
        assert method == "replica_put"
        return [True] * len(items)

    monkeypatch.setattr(node, "_call", call)
    monkeypatch.setattr(node, "is_up", lambda peer: True)
    puts = [["put", BUCKET, key, _blind(b"\x00w"), 2, 3] for key in (bad, good)]
    answers = asyncio.run(node.coordinate_batch("client", puts))
    assert answers[0][0] == "error" and "may or may not be stored" in str(answers[0][1])
    assert answers[1][0] == "ok"
    good_dkey = quorum.locate(node.ring, BUCKET, good)[1]
    assert node.store.get(DATA, good_dkey) is not None
    assert node.store.get(DATA, bad_dkey) == b"\xc1 not a record"


def test_a_stand_ins_hint_of_another_kind_fails_no_read_batched_with_it(node):
    """A stand-in answers a read with its copy merged with its hints of the key; a hint of
    another kind is left out (and counted), and the other keys of the call are answered."""
    from dynaray.hints import hint_key
    from dynaray.storage import HINTS

    _ready(node)
    a, b = (quorum.locate(node.ring, BUCKET, k)[1] for k in (b"hinted-a", b"hinted-b"))
    siblings = records.encode(records.update(None, _blind(b"\x00v"), "n2", 1))
    counter = records.encode(records.update(None, ["counter", ["increment", 1]], "n3", 1))

    def op(txn) -> None:
        txn.put(DATA, a, siblings)
        txn.put(HINTS, hint_key("n4", a), counter)
        txn.put(HINTS, hint_key("n4", b), siblings)

    asyncio.run(node.store.write(op))
    answers = asyncio.run(node.replica_get("n2", [[a, "n4"], [b, "n4"]]))
    assert answers == [siblings, siblings]
    assert a in node._unmergeable


def test_siblings_and_read_repairs_show_in_a_nodes_figures_with_reads_on_the_client(node):
    """Clients coordinate their own reads, so a node sees no read of theirs: the siblings
    a key holds are noted where it is written, and a read repair where it is applied."""
    _ready(node)
    key, _ = _owned_first(node)
    _, dkey = quorum.locate(node.ring, BUCKET, key)
    _write(node, dkey, _blind(b"\x00a"))
    _write(node, dkey, _blind(b"\x00b"))  # no context: a sibling
    assert node.metrics.snapshot()["max_siblings_per_read"] == 2
    repaired = records.encode(records.update(None, _blind(b"\x00c"), "n2", 1))
    assert asyncio.run(node.replica_repair("client", [[dkey, repaired, None]])) == 1
    assert node.metrics.counts["read_repairs"] == 1


def test_a_node_with_no_ring_yet_says_nothing_was_written(node):
    """Found by name before the driver gave it the ring (back on an empty disk): a write
    sent to it is refused as one that stored nothing, so the client goes on to another
    coordinator instead of reporting that the write may or may not be stored."""
    with pytest.raises(StorageError, match="no ring yet.*nothing was written"):
        asyncio.run(node.coordinate_put("client", BUCKET, b"k", _blind(b"\x00v"), 2, 3))
    [answer] = asyncio.run(
        node.coordinate_batch("client", [["put", BUCKET, b"k", _blind(b"\x00v"), 2, 3]])
    )
    assert answer[0] == "error" and isinstance(answer[1], StorageError)


def test_a_hold_that_lapsed_is_not_renewed_even_after_the_other_change_ended():
    """A driver stalled past its lease; another made its change and released the hold.
    The first one's renewal must not quietly take the hold back: its ring was made from
    the ring before the other change, and would be a second ring of the same version."""
    import time

    from dynaray.cluster import Router

    router = Router({})
    assert asyncio.run(router.hold_change("A", "add_node", 0.01)) is None
    time.sleep(0.02)  # A stalls: its hold lapses
    assert asyncio.run(router.hold_change("B", "remove_node", 60.0)) is None
    asyncio.run(router.release_change("B"))
    lapsed = asyncio.run(router.hold_change("A", "add_node", 60.0, True))
    assert lapsed is not None and "lapsed" in lapsed[0]
    assert asyncio.run(router.hold_change("A", "add_node", 60.0)) is None  # a new change
    assert asyncio.run(router.hold_change("A", "add_node", 60.0, True)) is None  # renewed


def test_a_node_refuses_a_second_ring_of_the_version_it_holds(tmp_path):
    """Two changes made from one ring give two rings of one version: taken, the second
    would hand no range over (nothing looks gained), and gossip never settles them."""
    import dynaray

    ring = Ring.create(["n1", "n2", "n3", "n4", "n5"], 32)

    async def life() -> tuple:
        node = StorageNode("n1", str(tmp_path / "n1"), fresh=True)
        try:
            await node.configure(ring.to_wire(), {"n": 3})
            await node.configure(ring.with_node("n6").to_wire(), {"n": 3})
            again = await node.configure(ring.with_node("n6").to_wire(), {"n": 3})  # same
            with pytest.raises(dynaray.DynarayError, match="another ring of version 2"):
                await node.configure(ring.without_node("n3").to_wire(), {"n": 3})
            return again, node.ring.to_wire() == ring.with_node("n6").to_wire()
        finally:
            await node.stop()

    assert asyncio.run(life()) == (True, True)


def test_a_node_keeps_a_peer_that_left_the_ring_but_runs_when_given_new_peers(node):
    """A leave cut short leaves the node running, out of the ring, with hints; the
    driver's later peer tables (after a restart or a join) list ring nodes only, and the
    tombstone reaper must still ask it."""
    _ready(node)
    left = object()
    asyncio.run(node.set_peers({"n2": object(), "n3": object(), "n4": object(), "n9": left}))
    asyncio.run(node.set_peers({"n2": object(), "n3": object(), "n4": object()}))
    assert node.transport.peers["n9"] is left
    node.transport.dead["n9"] = actor_of(left)  # seen dead: a finished leave
    asyncio.run(node.set_peers({"n2": object(), "n3": object(), "n4": object()}))
    assert "n9" not in node.transport.peers


def test_a_node_restarted_while_copying_ranges_gives_them_to_no_taker_and_copies_on(tmp_path):
    """Its copy of a range it was still copying is partial: refused to a taker from the
    start, and copied on once it has its peers even if no ring is handed to it."""
    path = str(tmp_path / "n1")
    before = Ring.create(["n2", "n3", "n4"], 16)
    after = before.with_node("n1")

    async def first() -> int:
        node = StorageNode("n1", path, fresh=True)
        await node.configure(after.to_wire(), {"n": 2}, before.to_wire())
        gained = sorted(node.pending)[0]
        await node.stop()  # no peer answers here: the copying is cut short
        return gained

    gained = asyncio.run(first())

    async def second() -> tuple:
        node = StorageNode("n1", path)
        refused = await node.range_items("n5", gained, None, 10)
        started: list = []
        node._take_over = lambda plan, refill=False, marked=False: _record(started, plan)
        await node.set_peers({})
        await asyncio.sleep(0.01)  # the take-over it spawned begins
        await node.stop()
        return refused, started

    refused, started = asyncio.run(second())
    assert refused is None and started and gained in started[0]


async def _record(into: list, plan: dict) -> None:
    into.append(dict(plan))


def test_a_batch_of_writes_that_fills_the_map_grows_it_and_is_stored(tmp_path, monkeypatch):
    """LMDB's map full comes from the batch's transaction, not from one key: caught per
    key, it failed the whole group commit as a failing disk, and the map never grew."""
    from dynaray import storage

    monkeypatch.setattr(storage, "_INITIAL_MAP_SIZE", 1 << 20)
    node = StorageNode("n1", str(tmp_path / "n1"), fresh=True)
    try:
        _ready(node)
        before = node.store.env.info()["map_size"]

        async def call(peer, method, items):
            return [True] * len(items)

        monkeypatch.setattr(node, "_call", call)
        monkeypatch.setattr(node, "is_up", lambda peer: True)
        value = b"\x00" + b"v" * (200 << 10)
        puts = [["put", BUCKET, key, _blind(value), 2, 3] for key in _first_keys(node, 8)]
        answers = asyncio.run(node.coordinate_batch("client", puts))
        assert [a[0] for a in answers] == ["ok"] * 8, answers
        assert node.store.env.info()["map_size"] > before
    finally:
        asyncio.run(node.stop())


def _not_owned(node: StorageNode) -> bytes:
    """A key n1 is not one of the N owners of."""
    for i in range(1000):
        key = f"k{i}".encode()
        partition, _ = quorum.locate(node.ring, BUCKET, key)
        if "n1" not in node.ring.preference_list(partition)[:3]:
            return key
    raise AssertionError("no key n1 does not own")


def test_a_strict_quorum_coordinator_that_owns_no_copy_keeps_no_hint(tmp_path, monkeypatch):
    """sloppy_quorum off: only the first N nodes hold a key. A non-owner that could reach no
    owner stood in anyway, stored a hint and counted it toward W ("ok" at W=1), so a strict
    read of the owners could miss an acknowledged write."""
    strict = StorageNode("n1", str(tmp_path / "n1"), {"sloppy_quorum": False})
    try:
        _ready(strict)
        key = _not_owned(strict)

        async def unreachable(peer, *args, **kwargs):
            raise PeerUnavailable(peer, "unknown peer")

        monkeypatch.setattr(strict, "is_up", lambda peer: peer == "n1")
        monkeypatch.setattr(strict, "_call", unreachable)
        monkeypatch.setattr(strict, "_call_batched", unreachable)
        with pytest.raises(StorageError, match="sloppy_quorum off .* nothing was written"):
            asyncio.run(strict.coordinate_put("client", BUCKET, key, _blind(b"\x00v"), 1, 3))
        assert strict.handoff.count() == 0 and strict.store.count(DATA) == 0
    finally:
        asyncio.run(strict.stop())


def test_a_write_handed_on_while_the_node_passes_its_hints_on_leaves_none(node, monkeypatch):
    """A put reaches a node (a client with an older ring) that owns no copy; while it hands
    the put on, the node starts to leave and passes its hints on (none). When the owners
    then fail, it stood in: a hint on a node about to stop, counted toward W."""
    _ready(node)
    key = _not_owned(node)
    monkeypatch.setattr(node, "is_up", lambda peer: True)

    async def go() -> None:
        gate = asyncio.Event()

        async def forward(*args, **kwargs):
            await gate.wait()
            return None  # no owner took it; nothing was sent

        async def replicated(peer, method, *args, **kwargs):
            return True

        monkeypatch.setattr(node, "_forward", forward)
        monkeypatch.setattr(node, "_call_batched", replicated)
        put = asyncio.create_task(
            node.coordinate_put("client", BUCKET, key, _blind(b"\x00v"), 1, 3)
        )
        await asyncio.sleep(0.05)  # it waits in _forward
        assert await node.pass_on_hints() == 0
        gate.set()
        with pytest.raises(StorageError, match="leaving the store: nothing was written"):
            await put

    asyncio.run(go())
    assert node.handoff.count() == 0


def test_hints_for_a_down_owner_of_keys_a_ring_change_moved_go_to_the_new_owners(node, monkeypatch):
    """n2 is down and keeps its place in the ring, but a joiner took some of its ranges:
    the hints n1 holds for n2 of those keys waited for n2 (which would not keep them) and
    were invisible to reads. They now go to the keys' current owners, once per ring."""
    before = Ring.create(["n1", "n2", "n3", "n4"], 32)
    after = before.with_node("n5")
    node._adopt(after)
    node.config = {"n": 3}
    moved = kept = None
    for i in range(2000):
        partition, dkey = quorum.locate(after, BUCKET, f"k{i}".encode())
        was, now = before.preference_list(partition)[:3], after.preference_list(partition)[:3]
        if "n2" in was and "n2" not in now and "n1" not in now and moved is None:
            moved = dkey
        if "n2" in now and kept is None:
            kept = dkey
    assert moved is not None and kept is not None
    record = records.encode(records.update(None, _blind(b"\x00v"), "n9", 1))
    assert asyncio.run(node._apply([(moved, record, "n2"), (kept, record, "n2")])) == [True, True]
    sent: list = []
    taking = [False]  # the new owners have not taken the new ring yet: they refuse

    async def call(peer, method, items, *args):
        assert method == "replica_put" and peer != "n2"
        sent.append((peer, [item[0] for item in items]))
        return [taking[0]] * len(items)

    async def round() -> None:
        await node._handoff_round()
        await asyncio.gather(*node._tasks)  # the scan runs on a task of its own

    from dynaray import node as node_module

    monkeypatch.setattr(node_module, "MOVED_RECHECK", 0.0)
    monkeypatch.setattr(node, "is_up", lambda peer: peer != "n2")
    monkeypatch.setattr(node, "_call", call)
    owners = set(node._owners(moved))  # n1 not among them: it holds the hint alone
    asyncio.run(round())
    assert {peer for peer, _ in sent} == owners and node.handoff.count() == 2
    taking[0] = True
    sent.clear()
    asyncio.run(round())  # refused last time: scanned again
    assert {peer for peer, _ in sent} == owners
    assert all(keys == [moved] for _, keys in sent)
    assert node.handoff.count() == 1  # the hint of the key n2 still owns waits for it
    asyncio.run(round())  # one more scan finds nothing to send; then no more for this ring
    sent.clear()
    asyncio.run(round())
    assert sent == [] and not node._tasks


def test_a_copy_that_does_not_decode_fails_alone_in_a_replica_batch(node):
    """A stored record that does not decode (or an incoming one) failed the whole batch of
    up to hundreds of keys (a ValueError out of the transaction): the coordinator's send
    died without trying a fallback, and hinted handoff to the node stopped there for good."""
    _ready(node)
    mine, _ = _keys_by_role(node.ring, 3)
    broken, fine, junk = mine[:3]
    asyncio.run(node.store.write(lambda txn: txn.put(DATA, broken, b"not a record")))
    good = records.encode(records.update(None, _blind(b"\x00v"), "n9", 1))
    items = [(broken, good, None), (fine, good, None), (junk, b"junk", None)]
    assert asyncio.run(node._apply(items)) == [False, True, False]
    assert node.store.get(DATA, fine) == good
    assert node.store.get(DATA, broken) == b"not a record"  # ours is kept
    assert node.store.get(DATA, junk) is None


def test_a_scan_for_moved_hints_that_could_not_run_or_a_leaving_node_does_not_count(node):
    """Another delivery of the owner's hints under way (the owner back up, pass_on_hints)
    makes the scan do nothing: it counted as a clean scan, and two of those ended the
    scans for the ring. A leaving node passes every hint on instead: it starts no scan,
    and one under way stops at its next batch (pass_on_hints waits for it)."""
    _ready(node)
    node.handoff._busy.add("n2")
    for _ in range(2):
        asyncio.run(node._deliver_moved("n2"))
    assert node._moved_sent["n2"][1] == 0  # no clean scan counted
    node.handoff._busy.discard("n2")
    node._moved_sent.clear()
    assert node._moved_due("n2")
    node._leaving = True
    assert not node._moved_due("n2")
    with pytest.raises(PeerUnavailable, match="leaving"):
        asyncio.run(node._send_moved("n2", [], []))
