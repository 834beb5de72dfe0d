"""Merkle trees per key range, the trees KeyRanges keeps current on a real store, and the
anti-entropy exchange between two real LMDB replicas. No Ray: fast."""

from __future__ import annotations

import asyncio
from functools import reduce
from operator import xor

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks import anti_entropy as bench
from dynaray import codec, merkle, records, versions
from dynaray.anti_entropy import Exchange
from dynaray.merkle import FANOUT, LEVELS, MerkleTree, children, differing, differing_items
from dynaray.ranges import KeyRanges
from dynaray.ring import SEGMENTS
from dynaray.storage import DATA, Store

segments = st.integers(0, SEGMENTS - 1)
item_hashes = st.integers(1, (1 << 64) - 1)
FAST = settings(max_examples=60, deadline=None)


def built(items) -> MerkleTree:
    """A tree made from scratch out of (segment, item hash) pairs."""
    tree = MerkleTree()
    for segment, item in items:
        tree.toggle(segment, item)
    return tree


# -- pure MerkleTree ------------------------------------------------------------------------


def test_shape():
    tree = MerkleTree()
    assert LEVELS == (1, FANOUT, SEGMENTS)
    assert [len(row) for row in tree.levels] == list(LEVELS)
    assert tree.root == 0 and tree.empty


@FAST
@given(st.lists(st.tuples(segments, item_hashes), max_size=20), segments, item_hashes)
def test_toggle_twice_is_identity(items, segment, item):
    tree = built(items)
    before = [list(row) for row in tree.levels]
    tree.toggle(segment, item)
    assert tree.levels != before
    tree.toggle(segment, item)
    assert tree.levels == before


@FAST
@given(
    st.lists(st.tuples(segments, item_hashes), max_size=20),
    segments,
    st.none() | item_hashes,
    st.none() | item_hashes,
)
def test_change_is_toggle_old_then_new(items, segment, old, new):
    changed, toggled = built(items), built(items)
    changed.change(segment, old, new)
    if old is not None:
        toggled.toggle(segment, old)
    if new is not None:
        toggled.toggle(segment, new)
    assert changed.levels == toggled.levels


def test_change_without_difference_touches_nothing():
    tree = built([(5, 99)])
    before = [list(row) for row in tree.levels]
    tree.change(5, 1234, 1234)
    tree.change(7, None, None)
    assert tree.levels == before


@FAST
@given(st.lists(st.tuples(segments, item_hashes), max_size=60))
def test_root_is_xor_of_leaves_and_of_groups(items):
    tree = built(items)
    root, groups, leaves = tree.levels
    assert tree.root == root[0] == reduce(xor, leaves, 0) == reduce(xor, groups, 0)
    assert tree.root == reduce(xor, (item for _, item in items), 0)
    for g in range(FANOUT):
        assert groups[g] == reduce(xor, (leaves[s] for s in children(1, [g])), 0)
    for s in range(SEGMENTS):
        assert leaves[s] == reduce(xor, (i for seg, i in items if seg == s), 0)


@FAST
@given(st.data())
def test_insertion_order_does_not_matter(data):
    items = data.draw(st.lists(st.tuples(segments, item_hashes), unique=True, max_size=50))
    shuffled = data.draw(st.permutations(items))
    assert built(shuffled).levels == built(items).levels


@FAST
@given(
    st.dictionaries(st.integers(0, 30), st.tuples(segments, item_hashes), max_size=20),
    st.lists(st.tuples(st.integers(0, 30), st.none() | item_hashes, segments), max_size=60),
)
def test_incremental_updates_equal_a_rebuild(initial, updates):
    """Keys with a fixed segment each; updates set a new item hash (or None: delete)."""
    where = {key: segment for key, (segment, _) in initial.items()}
    state = {key: item for key, (_, item) in initial.items()}
    tree = built(initial.values())
    for key, new, segment in updates:
        segment = where.setdefault(key, segment)
        tree.change(segment, state.get(key), new)
        if new is None:
            state.pop(key, None)
        else:
            state[key] = new
    rebuilt = built((where[key], item) for key, item in state.items())
    assert tree.levels == rebuilt.levels
    assert tree.empty == rebuilt.empty


@FAST
@given(segments, item_hashes)
def test_one_item_marks_exactly_its_path(segment, item):
    tree = built([(segment, item)])
    root, groups, leaves = tree.levels
    assert [g for g, h in enumerate(groups) if h] == [segment // FANOUT]
    assert [s for s, h in enumerate(leaves) if h] == [segment]
    # The group reached by toggle is the one whose children() hold the segment.
    assert segment in children(1, [segment * FANOUT // SEGMENTS])
    assert root[0] == item and not tree.empty


def test_children_index_math():
    assert children(0, [0]) == list(range(FANOUT))
    per = SEGMENTS // FANOUT
    assert children(1, [0]) == list(range(per))
    assert children(1, [3, 7]) == list(range(3 * per, 4 * per)) + list(range(7 * per, 8 * per))
    assert children(1, []) == []
    # The groups' children cover every segment exactly once, in order.
    assert children(1, list(range(FANOUT))) == list(range(SEGMENTS))
    with pytest.raises(ValueError):
        children(len(LEVELS) - 1, [0])


def test_hashes_all_or_selected():
    tree = built([(0, 1), (40, 2), (1023, 4)])
    assert tree.hashes(0) == [7]
    assert tree.hashes(1, [0, 1, 31]) == [1, 2, 4]
    assert tree.hashes(2, [1023, 40, 0, 1]) == [4, 2, 1, 0]
    row = tree.hashes(2)
    row[0] = 12345  # a copy, not the tree's own row
    assert tree.levels[2][0] == 1


def test_differing():
    assert differing([4, 9, 11], [1, 2, 3], [1, 5, 3]) == [9]
    assert differing([4, 9, 11], [1, 2, 3], [1, 2, 3]) == []
    assert differing([], [], []) == []
    with pytest.raises(ValueError):
        differing([1, 2], [1, 2], [1])


def test_differing_items():
    mine = {b"a": 1, b"b": 2, b"c": 3, b"e": 5}
    theirs = {b"b": 2, b"c": 30, b"d": 4, b"e": 5}
    # Changed, mine only, theirs only; in key order; equal ones left out.
    assert differing_items(mine, theirs) == [b"a", b"c", b"d"]
    assert differing_items(theirs, mine) == [b"a", b"c", b"d"]
    assert differing_items(mine, dict(mine)) == []
    assert differing_items({}, {}) == []


def test_item_hash_depends_on_key_and_record():
    h = merkle.item_hash(b"key-1", b"record-1")
    assert h == merkle.item_hash(b"key-1", b"record-1")
    assert 0 <= h < 1 << 64
    assert h != merkle.item_hash(b"key-2", b"record-1")
    assert h != merkle.item_hash(b"key-1", b"record-2")
    # Two keys holding the same record must not cancel out in a leaf's XOR.
    assert merkle.item_hash(b"k1", b"r") != merkle.item_hash(b"k2", b"r")


# -- KeyRanges on a real store -----------------------------------------------------------


def _record(value: bytes, node: str = "n1") -> bytes:
    return records.encode(records.update(None, ["siblings", [], value], node, 1))


def _write(store: Store, puts=(), deletes=()) -> None:
    def op(txn) -> None:
        for key, value in puts:
            txn.put(DATA, key, value)
        for key in deletes:
            txn.delete(DATA, key)

    asyncio.run(store.write(op))


def _expected(store: Store) -> dict[int, list[list[int]]]:
    """Every range's tree rebuilt from what the store holds now."""
    trees: dict[int, MerkleTree] = {}
    for dkey, record in store.iterate(DATA):
        partition, segment = codec.location(dkey)
        trees.setdefault(partition, MerkleTree()).toggle(segment, merkle.item_hash(dkey, record))
    return {p: t.levels for p, t in trees.items()}


def _actual(ranges: KeyRanges) -> dict[int, list[list[int]]]:
    return {p: ranges.trees[p].levels for p in ranges.held()}


def _key(partition: int, segment: int, name: str) -> bytes:
    return codec.data_key(partition, segment, b"default", name.encode())


@pytest.fixture
def store(tmp_path):
    opened = Store(str(tmp_path / "node"), "n1", sync=False)
    yield opened
    opened.close()


def test_trees_follow_puts_and_deletes(store):
    ranges = KeyRanges(store)
    assert ranges.held() == []
    keys = [
        _key(p, s, f"k{p}-{s}-{i}") for p in (3, 9) for s in (0, 31, 32, 1023) for i in range(3)
    ]
    _write(store, [(k, _record(k)) for k in keys])
    assert _actual(ranges) == _expected(store)
    assert ranges.held() == [3, 9]

    # Overwrites, deletes, a delete of an absent key, and one key changed twice in one txn.
    _write(
        store,
        puts=[(keys[0], _record(b"v2")), (keys[5], _record(b"x")), (keys[5], _record(b"y"))],
        deletes=[keys[1], keys[7], _key(3, 5, "never-written")],
    )
    assert _actual(ranges) == _expected(store)
    _write(store, puts=[(keys[2], _record(b"tmp"))], deletes=[keys[2]])
    assert _actual(ranges) == _expected(store)

    # Putting an unchanged record leaves the tree as it is.
    before = _actual(ranges)
    _write(store, puts=[(keys[3], store.get(DATA, keys[3]))])
    assert _actual(ranges) == before

    # Every key gone: the trees are empty again and nothing is held.
    _write(store, deletes=keys)
    assert ranges.held() == []
    assert all(tree.root == 0 and tree.empty for tree in ranges.trees.values())


def test_reopened_store_rebuilds_the_same_trees(tmp_path):
    path = str(tmp_path / "node")
    first = Store(path, "n1", sync=False)
    ranges = KeyRanges(first)
    keys = [
        _key(p, (p * 37 + i * 101) % SEGMENTS, f"key-{p}-{i}") for p in (0, 4, 5) for i in range(40)
    ]
    _write(first, [(k, _record(k)) for k in keys])
    _write(first, puts=[(keys[0], _record(b"newer"))], deletes=keys[10:20])
    roots = {p: ranges.tree(p).root for p in ranges.held()}
    levels = _actual(ranges)
    first.close()

    second = Store(path, "n1", sync=False)
    try:
        reopened = KeyRanges(second)
        assert reopened.held() == sorted(roots)
        assert {p: reopened.tree(p).root for p in reopened.held()} == roots
        assert _actual(reopened) == levels
    finally:
        second.close()


def test_held_lists_only_ranges_with_data(store):
    ranges = KeyRanges(store)
    _write(store, [(_key(p, 1, "a"), _record(b"a")) for p in (12, 2, 7)])
    assert ranges.held() == [2, 7, 12]
    ranges.tree(40)  # asking about a range creates an empty tree, which is not "held"
    assert ranges.merkle_hashes(41, 0, [0]) == [0]
    assert ranges.held() == [2, 7, 12]
    _write(store, deletes=[_key(7, 1, "a")])
    assert ranges.held() == [2, 12]


def test_drop_removes_the_range_and_its_tree(store):
    ranges = KeyRanges(store)
    dropped = [_key(6, s, f"gone-{i}") for s in (0, 500, 1023) for i in range(9)]
    kept = [_key(p, s, f"kept-{p}") for p in (5, 7) for s in (0, 1023)]
    _write(store, [(k, _record(k)) for k in dropped + kept])
    assert asyncio.run(ranges.drop(6, batch=4)) == len(dropped)
    assert store.scan(DATA, codec.partition_prefix(6)) == []
    # Its tree is empty, and kept: a write landing after the last scan would go in it.
    assert ranges.trees[6].empty and ranges.held() == [5, 7]
    assert store.get_many(DATA, kept) == [_record(k) for k in kept]
    assert _actual(ranges) == _expected(store)
    assert asyncio.run(ranges.drop(6)) == 0


def test_a_drop_stops_before_its_next_batch_once_the_range_is_to_stay(store):
    """A ring that gives the range back while it is dropped: what is left (and what the
    node copies back in meanwhile) stays."""
    ranges = KeyRanges(store)
    keys = [_key(6, s, f"k-{i}") for s in (0, 500) for i in range(6)]
    _write(store, [(k, _record(k)) for k in keys])
    asked = []

    def still() -> bool:
        asked.append(True)
        return len(asked) <= 2  # two batches go; then the range is ours again

    assert asyncio.run(ranges.drop(6, batch=4, still=still)) == 8
    assert len(store.scan(DATA, codec.partition_prefix(6))) == len(keys) - 8
    assert _actual(ranges) == _expected(store)


def test_segment_items_are_exactly_those_segments(store):
    ranges = KeyRanges(store)
    layout = {
        (3, s): [_key(3, s, f"s{s}-{i}") for i in range(s % 4 + 1)] for s in (0, 1, 2, 511, 1023)
    }
    # Same segments of neighbouring ranges must not leak in.
    layout.update({(p, s): [_key(p, s, "other")] for p in (2, 4) for s in (0, 1, 1023)})
    _write(store, [(k, _record(k)) for ks in layout.values() for k in ks])
    for wanted in ([0], [1, 1023], [2, 511], [5], [0, 1, 2, 511, 1023]):
        items = ranges.segment_items(3, wanted)
        expected = sorted(k for s in wanted for k in layout.get((3, s), []))
        assert sorted(k for k, _ in items) == expected
        assert len(items) == len(expected)
        for key, item in items:
            assert item == merkle.item_hash(key, store.get(DATA, key))
    assert ranges.segment_items(3, []) == []


# -- the exchange between two real replicas ------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_exchange_repairs_few_differences_cheaply(seed):
    keys = 5000
    result = bench.run(keys=keys, differing=6, seed=seed)
    assert result["roots_differed_before"]
    assert result["roots_equal_after"]
    assert result["keys_repaired"] == 6
    assert result["ranges_in_sync"] == 0
    assert 0 < result["hashes_exchanged"] < keys // 4
    assert result["bytes_sent"] > 0


def _pair(tmp_path):
    return bench.Replica(str(tmp_path / "a"), "a"), bench.Replica(str(tmp_path / "b"), "b")


def _exchange(local: bench.Replica, peer: bench.Replica):
    return Exchange(bench.PARTITION, peer.answer, local.ranges, local.apply).run()


def _stored(replica: bench.Replica, dkey: bytes) -> records.Record:
    return records.decode(replica.store.get(DATA, dkey))


def _common(count: int) -> dict[bytes, records.Record]:
    return {
        _key(bench.PARTITION, (i * 131) % SEGMENTS, f"common-{i}"): bench._record(b"c%d" % i)
        for i in range(count)
    }


def _root(replica: bench.Replica) -> int:
    return replica.ranges.tree(bench.PARTITION).root


def test_second_exchange_between_identical_replicas_is_two_hashes(tmp_path):
    async def scenario():
        a, b = _pair(tmp_path)
        try:
            items = _common(300)
            await a.load(items)
            changed = dict(items)
            for n, dkey in enumerate(sorted(items)[:6]):
                if n % 2:
                    del changed[dkey]
                else:
                    changed[dkey] = bench._record(b"new", "n2", items[dkey])
            await b.load(changed)
            first = await _exchange(a, b)
            second = await _exchange(a, b)
            other_way = await _exchange(b, a)
            return first, second, other_way, _root(a), _root(b)
        finally:
            a.store.close()
            b.store.close()

    first, second, other_way, root_a, root_b = asyncio.run(scenario())
    assert first.keys_repaired == 6 and first.ranges_in_sync == 0
    assert root_a == root_b
    for again in (second, other_way):
        assert again.ranges_compared == 1
        assert again.ranges_in_sync == 1
        assert again.hashes_exchanged == 2
        assert again.keys_repaired == 0


def _exchange_twice(tmp_path, key: bytes, on_a, on_b, initiator: str) -> tuple:
    """Two replicas sharing 50 keys and holding `key` as on_a / on_b exchange twice, started
    by `initiator`: both rounds' figures, each side's copy of key after, and both roots."""

    async def scenario():
        a, b = _pair(tmp_path)
        try:
            common = _common(50)
            await a.load({**common, key: on_a})
            await b.load({**common, key: on_b})
            local, peer = (a, b) if initiator == "a" else (b, a)
            figures = await _exchange(local, peer)
            again = await _exchange(local, peer)
            return figures, again, _stored(a, key), _stored(b, key), _root(a), _root(b)
        finally:
            a.store.close()
            b.store.close()

    return asyncio.run(scenario())


@pytest.mark.parametrize("initiator", ["a", "b"])
def test_exchange_keeps_concurrent_siblings(tmp_path, initiator):
    """Two coordinators wrote one key from the same empty context: both versions survive."""
    key = _key(bench.PARTITION, 77, "contested")
    mine, theirs = bench._record(b"from-n1", "n1"), bench._record(b"from-n2", "n2")
    assert versions.concurrent(versions.join(mine.state), versions.join(theirs.state))

    figures, again, on_a, on_b, root_a, root_b = _exchange_twice(
        tmp_path, key, mine, theirs, initiator
    )
    assert figures.keys_repaired == 1
    for record in (on_a, on_b):
        assert sorted(versions.values(record.state)) == [b"from-n1", b"from-n2"]
    assert records.equal(on_a, on_b)
    assert root_a == root_b
    assert again.ranges_in_sync == 1


@pytest.mark.parametrize("initiator", ["a", "b"])
def test_exchange_never_brings_back_a_dominated_version(tmp_path, initiator):
    older_key = _key(bench.PARTITION, 3, "overwritten")
    mixed_key = _key(bench.PARTITION, 900, "mixed")
    old = bench._record(b"old", "n1")
    newer = bench._record(b"new", "n2", old)  # read `old`, then wrote: a descendant
    # On a: two concurrent siblings x and y. On b: z, written by a client that had read only x.
    x = bench._record(b"x", "n1")
    y = bench._record(b"y", "n2")
    both = records.merge(x, y)
    z = bench._record(b"z", "n3", x)

    async def scenario():
        a, b = _pair(tmp_path)
        try:
            common = _common(50)
            await a.load({**common, older_key: old, mixed_key: both})
            await b.load({**common, older_key: newer, mixed_key: z})
            local, peer = (a, b) if initiator == "a" else (b, a)
            figures = await _exchange(local, peer)
            again = await _exchange(local, peer)
            stored = [_stored(r, k) for r in (a, b) for k in (older_key, mixed_key)]
            return figures, again, stored, _root(a), _root(b)
        finally:
            a.store.close()
            b.store.close()

    figures, again, stored, root_a, root_b = asyncio.run(scenario())
    old_a, mixed_a, old_b, mixed_b = stored
    assert figures.keys_repaired == 2
    assert versions.values(old_a.state) == versions.values(old_b.state) == [b"new"]
    # x was seen by z's writer, so it goes; y was not, so it stays beside z.
    assert sorted(versions.values(mixed_a.state)) == sorted(versions.values(mixed_b.state))
    assert sorted(versions.values(mixed_a.state)) == [b"y", b"z"]
    assert root_a == root_b
    assert again.ranges_in_sync == 1 and again.hashes_exchanged == 2


@pytest.mark.parametrize("initiator", ["a", "b"])
def test_exchange_repairs_copies_that_differ_only_in_their_stamp(tmp_path, initiator):
    """One version, two hybrid-time stamps (a failover coordinator whose clock was behind
    wrote it; a replica that held the version it followed kept the later stamp): the copies
    are equal as versions but not as bytes, so their Merkle trees differ until repaired."""
    key = _key(bench.PARTITION, 500, "stamped")
    early = bench._record(b"v", "n1")
    late = records.Record(early.kind, early.state, early.stamp + 1000)
    assert records.equal(early, late) and records.encode(early) != records.encode(late)

    figures, again, on_a, on_b, root_a, root_b = _exchange_twice(
        tmp_path, key, early, late, initiator
    )
    assert figures.keys_repaired == 1
    assert on_a.stamp == on_b.stamp == late.stamp  # the merge keeps the later stamp
    assert root_a == root_b
    assert again.ranges_in_sync == 1


def test_exchange_leaves_a_key_written_as_two_kinds_and_repairs_the_rest(tmp_path):
    """A bucket created with two policies on the two sides of a partition: one key holds a
    counter on one replica and siblings on the other. Neither can take the other's copy;
    the exchange leaves that key and repairs the rest of the range."""
    mixed = _key(bench.PARTITION, 10, "mixed")
    behind = _key(bench.PARTITION, 11, "behind")
    counter = records.update(None, ["counter", ["increment", 1]], "n1", 1)

    async def scenario():
        a, b = _pair(tmp_path)
        try:
            await a.load({mixed: bench._record(b"s"), behind: bench._record(b"new")})
            await b.load({mixed: counter})
            figures = await _exchange(a, b)
            return figures, _stored(a, mixed).kind, _stored(b, mixed).kind, _stored(b, behind)
        finally:
            a.store.close()
            b.store.close()

    figures, kind_a, kind_b, behind_b = asyncio.run(scenario())
    assert figures.unmergeable == 1 and figures.keys_repaired == 1
    assert (kind_a, kind_b) == ("siblings", "counter")
    assert versions.values(behind_b.state) == [b"new"]


def test_a_range_that_differs_everywhere_is_repaired_in_calls_of_bounded_size(
    tmp_path, monkeypatch
):
    """A replica that missed a long stretch differs in most segments: every answer and
    every repair sent travels in calls of about CALL_BYTES or less (here made 64 KiB), not
    in one call the peer's deadline could never fit."""
    from dynaray import anti_entropy

    limit = 64 << 10
    monkeypatch.setattr(anti_entropy, "CALL_BYTES", limit)
    value = b"v" * 1024
    theirs = {
        _key(bench.PARTITION, (i * 7) % SEGMENTS, f"theirs-{i}"): bench._record(value)
        for i in range(1500)
    }
    mine = {
        _key(bench.PARTITION, (i * 11) % SEGMENTS, f"mine-{i}"): bench._record(value)
        for i in range(300)
    }
    sizes: dict[str, list[int]] = {}

    async def scenario():
        a, b = _pair(tmp_path)
        try:
            await a.load(mine)
            await b.load(theirs)

            async def call(method, partition, *args):
                answer = await b.answer(method, partition, *args)
                sent = args[0] if method == "apply" else answer
                sizes.setdefault(method, []).append(len(codec.pack(sent)))
                if method == "segment_items":
                    assert len(args[0]) <= anti_entropy.SEGMENTS_PER_CALL
                return answer

            figures = await Exchange(bench.PARTITION, call, a.ranges, a.apply).run()
            return figures, _root(a), _root(b)
        finally:
            a.store.close()
            b.store.close()

    figures, root_a, root_b = asyncio.run(scenario())
    assert root_a == root_b and figures.keys_repaired == len(theirs) + len(mine)
    assert len(sizes["read_records"]) > 1 and len(sizes["apply"]) > 1
    for method in ("read_records", "apply"):
        assert max(sizes[method]) <= limit + 2 * len(value) + 4096, (method, sizes[method])
