"""storage: one node's LMDB store and its group-committing writer thread (no Ray)."""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import lmdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynaray import storage
from dynaray.errors import NodeError, StorageError
from dynaray.storage import DATA, DOTS, HINTS, META, Store
from dynaray.verify import fill_disk, free_disk
from tests.conftest import small_disk


@pytest.fixture
def store(tmp_path):
    s = Store(str(tmp_path / "n1"), "n1")
    yield s
    s.close()


def put(db, key, value):
    def op(txn):
        txn.put(db, key, value)
        return key

    return op


def run(coro):
    return asyncio.run(coro)


async def _blocked_batch(store, ops):
    """Queue ops while the writer is held inside a transaction, so they form one batch."""
    gate = threading.Event()
    entered = threading.Event()

    def hold(txn):
        entered.set()
        gate.wait(10)

    holder = asyncio.ensure_future(store.write(hold))
    await asyncio.to_thread(entered.wait, 10)
    tasks = [asyncio.ensure_future(store.write(op)) for op in ops]
    await asyncio.sleep(0)  # every task runs up to its queue.put
    gate.set()
    await holder
    return await asyncio.gather(*tasks, return_exceptions=True)


def test_a_writer_stuck_in_a_commit_at_close_still_ends_once_it_returns(tmp_path, monkeypatch):
    monkeypatch.setattr(storage, "_CLOSE_WAIT", 0.2)
    s = Store(str(tmp_path / "n1"), "n1", fresh=True)
    gate, entered = threading.Event(), threading.Event()

    def hold(txn):  # a commit on a disk that does not answer
        entered.set()
        gate.wait(10)

    async def main():
        held = asyncio.ensure_future(s.write(hold))
        await asyncio.to_thread(entered.wait, 10)
        s.close()  # gives up waiting; the writes behind the commit are failed
        assert s._writer.is_alive()
        gate.set()
        await held

    run(main())
    s._writer.join(5)
    assert not s._writer.is_alive()  # it found the stop, put back after the drain


# -- writes and reads --------------------------------------------------------------------


def test_write_and_read_sub_databases(store):
    async def main():
        for db in (DATA, HINTS, META, DOTS):
            assert await store.write(put(db, b"k", db + b"-value")) == b"k"

    run(main())
    for db in (DATA, HINTS, META, DOTS):
        assert store.get(db, b"k") == db + b"-value"
    assert store.get(DATA, b"missing") is None
    assert store.get_many(DATA, [b"k", b"missing"]) == [b"data-value", None]
    # sub-databases are separate key spaces
    assert store.count(DATA) == 1 and store.count(HINTS) == 1


def test_op_result_and_in_transaction_reads(store):
    async def main():
        await store.write(put(DATA, b"a", b"1"))

        def read_modify_write(txn):
            old = txn.get(DATA, b"a")
            txn.put(DATA, b"a", old + b"2")
            deleted = txn.delete(DATA, b"a")
            missing = txn.delete(DATA, b"nope")
            txn.put(DATA, b"a", b"final")
            return old, deleted, missing, txn.get(DATA, b"a")

        return await store.write(read_modify_write)

    assert run(main()) == (b"1", True, False, b"final")
    assert store.get(DATA, b"a") == b"final"


def test_future_resolves_only_after_commit(store):
    """A write's future resolves only once its whole batch is durable."""

    async def main():
        release = threading.Event()
        inside = threading.Event()

        def slow(txn):
            txn.put(DATA, b"slow", b"2")
            inside.set()
            release.wait(10)
            return "slow"

        results = await _ready_batch(store, [put(DATA, b"fast", b"1"), slow], inside)
        fast, slow_task = results
        # fast's op has run, but its transaction (shared with slow) has not committed yet
        assert not fast.done()
        assert store.get(DATA, b"fast") is None
        release.set()
        assert await fast == b"fast"
        assert store.get(DATA, b"fast") == b"1"  # visible as soon as the future resolved
        assert await slow_task == "slow"
        assert store.get(DATA, b"slow") == b"2"

    run(main())


async def _ready_batch(store, ops, inside):
    """Queue ops as one batch, and return their tasks once `inside` is set by one of them."""
    gate = threading.Event()
    entered = threading.Event()

    def hold(txn):
        entered.set()
        gate.wait(10)

    holder = asyncio.ensure_future(store.write(hold))
    await asyncio.to_thread(entered.wait, 10)
    tasks = [asyncio.ensure_future(store.write(op)) for op in ops]
    await asyncio.sleep(0)
    gate.set()
    await holder
    await asyncio.to_thread(inside.wait, 10)
    await asyncio.sleep(0.05)  # give a wrongly early resolution time to show
    return tasks


def test_concurrent_writes_are_group_committed(store):
    txns = []

    def op(i):
        def write(txn):
            txns.append(txn.raw.id())  # ops of one batch share one transaction's number
            txn.put(DATA, b"k%04d" % i, b"v%d" % i)
            return i

        return write

    results = run(_blocked_batch(store, [op(i) for i in range(300)]))
    assert results == list(range(300))
    assert len(set(txns)) == 1  # one transaction (each op nested in it), one commit
    assert store.count(DATA) == 300
    assert store.get(DATA, b"k0123") == b"v123"


def test_many_concurrent_writes_all_land(store):
    async def main():
        return await asyncio.gather(
            *(store.write(put(DATA, b"key-%05d" % i, b"x" * (i % 50))) for i in range(2000))
        )

    results = run(main())
    assert results == [b"key-%05d" % i for i in range(2000)]
    assert store.count(DATA) == 2000
    assert store.get(DATA, b"key-01999") == b"x" * (1999 % 50)


def test_failing_op_does_not_fail_its_batch(store):
    def boom(txn):
        raise KeyError("boom")

    def too_long_key(txn):  # an LMDB-level refusal inside one op
        txn.put(DATA, b"x" * 600, b"v")

    ops = [put(DATA, b"a", b"1"), boom, put(DATA, b"b", b"2"), too_long_key, put(DATA, b"c", b"3")]
    results = run(_blocked_batch(store, ops))
    assert results[0] == b"a" and results[2] == b"b" and results[4] == b"c"
    assert isinstance(results[1], KeyError)
    assert isinstance(results[3], lmdb.Error)
    assert [store.get(DATA, k) for k in (b"a", b"b", b"c")] == [b"1", b"2", b"3"]
    assert store.count(DATA) == 3
    # the writer thread is still alive
    assert run(store.write(put(DATA, b"d", b"4"))) == b"d"


def test_observers_see_committed_changes(store):
    seen = []
    store.observers[DATA] = lambda key, old, new: seen.append((key, old, new))

    async def main():
        await store.write(put(DATA, b"k", b"1"))
        await store.write(put(DATA, b"k", b"2"))
        await store.write(lambda txn: txn.delete(DATA, b"k"))
        await store.write(lambda txn: txn.delete(DATA, b"k"))  # absent: no change
        await store.write(put(HINTS, b"h", b"x"))  # not observed

    run(main())
    assert seen == [(b"k", None, b"1"), (b"k", b"1", b"2"), (b"k", b"2", None)]


def test_observer_error_does_not_stop_writer(store):
    def broken(key, old, new):
        raise RuntimeError("observer bug")

    store.observers[DATA] = broken
    assert run(store.write(put(DATA, b"k", b"v"))) == b"k"
    assert run(store.write(put(DATA, b"k2", b"v"))) == b"k2"
    assert store.get(DATA, b"k2") == b"v"


def test_write_abandoned_by_a_closed_loop_does_not_kill_the_writer(store):
    release = threading.Event()

    def slow(txn):
        release.wait(10)
        txn.put(DATA, b"slow", b"1")

    async def abandon():
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(store.write(slow), 0.05)

    run(abandon())  # that loop is closed now, its write still in the writer's hands
    release.set()

    async def later():
        return await asyncio.wait_for(store.write(put(DATA, b"k", b"v")), 3)

    assert run(later()) == b"k"
    assert store.get(DATA, b"slow") == b"1"
    assert store._writer.is_alive()


# -- map growth --------------------------------------------------------------------------


def test_map_full_grows_transparently_small_map(tmp_path, monkeypatch):
    monkeypatch.setattr(storage, "_INITIAL_MAP_SIZE", 1 << 20)
    s = Store(str(tmp_path / "small"), "n1", sync=False)
    try:
        start = s.env.info()["map_size"]
        value = b"v" * (256 << 10)

        async def main():
            # one by one, then a burst whose single batch overflows and is retried whole
            for i in range(8):
                await s.write(put(DATA, b"one-%d" % i, value))
            return await _blocked_batch(s, [put(DATA, b"burst-%d" % i, value) for i in range(24)])

        results = run(main())
        assert results == [b"burst-%d" % i for i in range(24)]
        assert s.env.info()["map_size"] > start
        assert s.count(DATA) == 32
        assert all(s.get(DATA, b"one-%d" % i) == value for i in range(8))
        assert all(s.get(DATA, b"burst-%d" % i) == value for i in range(24))
    finally:
        s.close()
    reopened = Store(str(tmp_path / "small"), "n1")
    try:
        assert reopened.count(DATA) == 32
        assert reopened.get(DATA, b"burst-23") == value
    finally:
        reopened.close()


def test_map_full_grows_past_initial_64_mib(tmp_path):
    s = Store(str(tmp_path / "big"), "n1", sync=False)
    try:
        assert s.env.info()["map_size"] == 64 << 20
        value = b"\xab" * (1 << 20)

        async def main():
            await asyncio.gather(*(s.write(put(DATA, b"mb-%03d" % i, value)) for i in range(100)))

        run(main())
        assert s.env.info()["map_size"] >= 128 << 20
        assert s.count(DATA) == 100
        assert s.get(DATA, b"mb-000") == value and s.get(DATA, b"mb-099") == value
        assert s.disk_bytes() > 100 << 20
    finally:
        s.close()


def test_a_full_disk_fails_the_batch_and_the_store_writes_again_once_it_has_room(tmp_path):
    with small_disk(tmp_path / "disk", "2m") as disk:
        s = Store(str(disk / "db"), "n1", sync=True)
        try:
            assert run(s.write(put(DATA, b"before", b"1"))) == b"before"
            fill_disk(str(disk))

            async def burst():
                writes = (s.write(put(DATA, b"k-%d" % i, b"v" * 4096)) for i in range(64))
                # a hang fails the test through wait_for, not through a timing check
                return await asyncio.wait_for(asyncio.gather(*writes, return_exceptions=True), 60)

            refused = [r for r in run(burst()) if isinstance(r, Exception)]
            assert refused and all(isinstance(r, StorageError) for r in refused)
            assert "stored nothing" in str(refused[0]) and "full?" in str(refused[0])
            assert s.failing is not None and s._writer.is_alive()
            free_disk(str(disk))
            assert run(s.write(put(DATA, b"after", b"2"))) == b"after"
            assert s.failing is None
            assert s.get(DATA, b"before") == b"1" and s.get(DATA, b"after") == b"2"
        finally:
            s.close()


def test_a_map_that_cannot_grow_stops_the_writer(tmp_path, monkeypatch):
    """LMDB leaves an environment whose map failed to grow unusable: the writer stops and
    the node is told (to crash), instead of failing every later write as a full disk."""
    monkeypatch.setattr(storage, "_INITIAL_MAP_SIZE", 1 << 20)
    told = []
    s = Store(str(tmp_path / "stuck"), "n1", sync=False, on_failure=lambda: told.append(1))
    try:

        def no_room(self):
            raise lmdb.Error("cannot allocate memory")

        monkeypatch.setattr(Store, "_grow", no_room)
        value = b"v" * (256 << 10)

        async def fill_map():
            writes = (s.write(put(DATA, b"k-%d" % i, value)) for i in range(8))
            return await asyncio.wait_for(asyncio.gather(*writes, return_exceptions=True), 60)

        failed = [r for r in run(fill_map()) if isinstance(r, Exception)]
        assert failed and all(isinstance(r, NodeError) for r in failed)
        # Not a StorageError: nobody may take these writes for never written.
        assert not any(isinstance(r, StorageError) for r in failed)
        assert "may or may not" in str(failed[0])
        s._writer.join(10)
        assert told == [1]
        with pytest.raises(StorageError, match="closed"):
            run(s.write(put(DATA, b"later", b"1")))
    finally:
        s.close()


def test_a_writer_that_dies_answers_every_waiting_write(tmp_path, monkeypatch):
    told = []
    s = Store(str(tmp_path / "dies"), "n1", sync=False, on_failure=lambda: told.append(1))
    entered = threading.Event()
    gate = threading.Event()
    real_commit = Store._commit

    def broken_commit(self, batch):
        if any(op is hold for op, _, _ in batch):
            entered.set()
            gate.wait(10)
            raise RuntimeError("a bug in the writer")
        return real_commit(self, batch)

    def hold(txn):
        return None

    monkeypatch.setattr(Store, "_commit", broken_commit)

    async def main():
        held = asyncio.ensure_future(s.write(hold))
        await asyncio.to_thread(entered.wait, 10)
        behind = [asyncio.ensure_future(s.write(put(DATA, b"b-%d" % i, b"1"))) for i in range(3)]
        await asyncio.sleep(0)
        gate.set()
        return await asyncio.wait_for(asyncio.gather(held, *behind, return_exceptions=True), 60)

    try:
        results = run(main())
        assert all(isinstance(r, NodeError) for r in results), results
        # The batch in the failed commit: not known to be unwritten, so not a StorageError.
        assert not isinstance(results[0], StorageError)
        assert "writer stopped" in str(results[0]) and "may or may not" in str(results[0])
        # The writes queued behind it never reached LMDB.
        assert all(isinstance(r, StorageError) for r in results[1:]), results
        s._writer.join(10)
        assert told == [1]  # the node is told, to crash (StorageNode._store_failed)
        with pytest.raises(NodeError, match="closed"):
            run(s.write(put(DATA, b"after", b"1")))
        assert s.get(DATA, b"b-0") is None
    finally:
        s.close()


def test_reads_during_growth(tmp_path, monkeypatch):
    monkeypatch.setattr(storage, "_INITIAL_MAP_SIZE", 1 << 20)
    s = Store(str(tmp_path / "grow"), "n1", sync=False)
    errors = []
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            try:
                s.count(DATA)
                s.get(DATA, b"k-0")
                s.scan(DATA, b"k-", limit=5)
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)
                return

    thread = threading.Thread(target=reader)
    thread.start()
    try:

        async def main():
            for i in range(40):
                await s.write(put(DATA, b"k-%d" % i, b"z" * (128 << 10)))

        run(main())
    finally:
        stop.set()
        thread.join(10)
        s.close()
    assert errors == []


# -- scans -------------------------------------------------------------------------------


@pytest.fixture
def filled(store):
    keys = [b"a", b"a1", b"a2", b"a3", b"a30", b"b", b"b1", b"c"]

    async def main():
        await asyncio.gather(*(store.write(put(DATA, k, k.upper())) for k in keys))

    run(main())
    return store


def test_scan_prefix_start_limit(filled):
    s = filled
    assert [k for k, _ in s.scan(DATA)] == [b"a", b"a1", b"a2", b"a3", b"a30", b"b", b"b1", b"c"]
    assert s.scan(DATA, b"a3") == [(b"a3", b"A3"), (b"a30", b"A30")]
    assert [k for k, _ in s.scan(DATA, b"a", start=b"a2")] == [b"a3", b"a30"]  # exclusive
    assert [k for k, _ in s.scan(DATA, b"a", start=b"a25")] == [b"a3", b"a30"]  # absent start
    assert [k for k, _ in s.scan(DATA, b"a", limit=2)] == [b"a", b"a1"]
    assert s.scan(DATA, b"a", start=b"a30") == []
    assert [k for k, _ in s.scan(DATA, b"b")] == [b"b", b"b1"]
    assert s.scan(DATA, b"d") == []
    assert s.scan(DATA, b"zz") == []
    assert s.scan(HINTS) == []


def test_scan_stops_at_max_bytes_and_takes_at_least_one_item(filled):
    s = filled  # values A, A1, A2, ...: 1 to 3 bytes each
    assert [k for k, _ in s.scan(DATA, b"a", max_bytes=5)] == [b"a", b"a1", b"a2"]  # 1+2+2
    assert [k for k, _ in s.scan(DATA, b"a", max_bytes=1)] == [b"a"]
    assert [k for k, _ in s.scan(DATA, b"a", start=b"a2", max_bytes=1)] == [b"a3"]
    assert len(s.scan(DATA, b"a", max_bytes=1 << 20)) == 5


def test_iterate_crosses_batches(filled):
    s = filled
    for batch in (1, 2, 3, 4, 100):
        assert [k for k, _ in s.iterate(DATA, b"a", batch=batch)] == [
            b"a",
            b"a1",
            b"a2",
            b"a3",
            b"a30",
        ]
        assert len(list(s.iterate(DATA, batch=batch))) == 8
    assert list(s.iterate(DATA, b"q", batch=2)) == []


def test_count_seek_increment(filled):
    s = filled
    assert s.count(DATA) == 8
    assert s.count(HINTS) == 0
    assert s.seek(DATA, b"a25") == b"a3"
    assert s.seek(DATA, b"b") == b"b"
    assert s.seek(DATA, b"d") is None
    assert s.increment(META, b"restarts") == 1
    assert s.increment(META, b"restarts") == 2


@settings(max_examples=25, deadline=None)
@given(
    st.sets(st.binary(min_size=1, max_size=4), max_size=40),
    st.binary(max_size=2),
    st.integers(1, 10),
    st.data(),
)
def test_scan_matches_a_sorted_model(keys, prefix, limit, data):
    with tempfile.TemporaryDirectory() as path:
        s = Store(path, "n1", sync=False)
        try:

            async def main():
                await asyncio.gather(*(s.write(put(DATA, k, k)) for k in keys))

            run(main())
            model = sorted(k for k in keys if k.startswith(prefix))
            start = data.draw(st.none() | st.sampled_from(model)) if model else None
            expected = [k for k in model if start is None or k > start][:limit]
            assert [k for k, _ in s.scan(DATA, prefix, start, limit)] == expected
            assert [k for k, _ in s.iterate(DATA, prefix, batch=limit)] == model
        finally:
            s.close()


# -- lifecycle ---------------------------------------------------------------------------


def test_close_then_reopen_keeps_data(tmp_path):
    path = str(tmp_path / "n1")
    s = Store(path, "n1")
    run(s.write(put(DATA, b"k", b"v")))
    s.increment(META, b"counter")
    s.close()
    s.close()  # idempotent
    with pytest.raises(NodeError, match="closed"):
        run(s.write(put(DATA, b"k2", b"v")))
    # A node that is stopping answers reads with its own error, not LMDB's.
    reads = (
        lambda: s.get(DATA, b"k"),
        lambda: s.get_many(DATA, [b"k"]),
        lambda: s.scan(DATA),
        lambda: s.seek(DATA, b"k"),
        lambda: s.count(DATA),
        s.disk_bytes,
    )
    for read in reads:
        with pytest.raises(NodeError, match="node n1 is stopping: its store is closed"):
            read()

    s = Store(path, "n1")
    try:
        assert s.get(DATA, b"k") == b"v"
        assert s.increment(META, b"counter") == 2
        assert run(s.write(put(DATA, b"k2", b"v2"))) == b"k2"
    finally:
        s.close()


def test_reopen_with_other_node_id_is_refused_and_keeps_data(tmp_path):
    path = str(tmp_path / "n1")
    s = Store(path, "node-1")
    run(s.write(put(DATA, b"k", b"v")))
    s.close()

    with pytest.raises(NodeError) as info:
        Store(path, "node-2")
    message = str(info.value)
    assert "'node-1'" in message  # the owner
    assert "'node-2'" in message
    assert path in message
    assert "own directory" in message

    s = Store(path, "node-1")
    try:
        assert s.get(DATA, b"k") == b"v"
        assert s.get(META, b"node_id") == b"node-1"
        assert s.count(DATA) == 1
    finally:
        s.close()


def test_unwritable_path_raises_node_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"not a directory")
    for path in (str(blocker / "data"), str(blocker)):
        with pytest.raises(NodeError) as info:
            Store(path, "n7")
        message = str(info.value)
        assert "node n7 cannot open its data directory" in message
        assert repr(path) in message
        assert "writable" in message
        assert isinstance(info.value.__cause__, OSError | lmdb.Error)


# -- the directory's identity and reading a stopped store ------------------------------------


def test_a_fresh_directory_writes_under_its_node_id(tmp_path):
    path = str(tmp_path / "n1")
    s = Store(path, "n1", fresh=True)
    assert (s.created, s.actor, s.get(META, storage.REFILL)) == (True, "n1", None)
    s.close()
    again = Store(path, "n1")  # fresh or not, an existing directory keeps its identity
    assert (again.created, again.actor) == (False, "n1")
    again.close()


def test_an_empty_directory_of_a_node_that_may_have_written_gets_an_actor_id_of_its_own(
    tmp_path,
):
    path = str(tmp_path / "n2")
    first = Store(path, "n2")
    actor = first.actor
    assert first.created and actor.startswith("n2@") and len(actor) > len("n2@")
    assert first.get(META, storage.REFILL) is not None  # until the node has its ranges
    first.close()
    again = Store(path, "n2")
    assert (again.created, again.actor) == (False, actor)  # one id per life, kept
    again.close()
    other = Store(str(tmp_path / "other"), "n2")
    assert other.actor != actor  # another life, another id
    other.close()


def test_a_directory_from_before_actor_ids_writes_under_its_node_id(tmp_path):
    path = str(tmp_path / "n3")
    Store(path, "n3").close()
    env = lmdb.open(path, max_dbs=8)  # as a version before actor ids left it
    with env.begin(write=True) as txn:
        meta = env.open_db(META, txn=txn)
        txn.delete(b"actor", db=meta)
        txn.delete(b"last_commit_file", db=meta)
    env.close()
    os.unlink(os.path.join(path, storage.LAST_COMMIT_FILE))
    old = Store(path, "n3")
    assert (old.created, old.actor) == (False, "n3")
    old.close()


def _actor_after(path, node, *, sync=True):
    """The actor id a node's directory gets when opened, its value of b"k", and whether it
    must refill before serving reads."""
    s = Store(str(path), node, sync=sync)
    try:
        return s.actor, s.get(DATA, b"k"), s.get(META, storage.REFILL) is not None
    finally:
        s.close()


def _crash(s: Store) -> None:
    """Stop a store as a dying process would: no clean close."""
    s._queue.put(storage._STOP)
    s._writer.join()
    os.close(s._last_commit)
    s.env.close()
    storage._release(s._lock)  # the process is gone: so is its lock


def _backup(s: Store, dest, *, compact: bool):
    """A copy of a running store's data file, as mdb_copy [-c] makes it."""
    dest.mkdir()
    s.env.copy(str(dest), compact=compact)
    return dest / "data.mdb"


def test_a_restored_data_file_gets_an_actor_id_of_its_own_and_keeps_its_data(tmp_path):
    path = tmp_path / "n4"
    s = Store(str(path), "n4", fresh=True)
    run(s.write(put(DATA, b"k", b"old")))
    compact = _backup(s, tmp_path / "compact", compact=True)
    plain = _backup(s, tmp_path / "plain", compact=False)
    run(s.write(put(DATA, b"k", b"new")))
    s.close()
    assert _actor_after(path, "n4") == ("n4", b"new", False)  # a plain restart

    # A backup of this very life put back: the node would number writes from "old" again.
    shutil.copyfile(plain, path / "data.mdb")
    actor, value, refill = _actor_after(path, "n4")
    assert actor.startswith("n4@") and (value, refill) == (b"old", True)
    assert _actor_after(path, "n4")[0] == actor  # kept from then on

    # A compacted copy (numbered from 1 again) restored into a directory of its own.
    restored = tmp_path / "elsewhere"
    restored.mkdir()
    shutil.copyfile(compact, restored / "data.mdb")
    other, value, refill = _actor_after(restored, "n4")
    assert other.startswith("n4@") and other != actor and (value, refill) == (b"old", True)


def test_a_compacted_backup_larger_than_the_first_map_starts_and_takes_writes(
    tmp_path, monkeypatch
):
    """LMDB opens a map as large as the file and no larger; a compacted copy has no free
    page, so its start-up write (the new actor id) found the map full, and the node could
    not start from its own backup."""
    monkeypatch.setattr(storage, "_INITIAL_MAP_SIZE", 1 << 20)
    s = Store(str(tmp_path / "n1"), "n1", fresh=True)
    value = b"v" * (64 << 10)
    for i in range(48):  # 3 MiB: the map grew past its first size
        run(s.write(put(DATA, b"k%d" % i, value)))
    compact = _backup(s, tmp_path / "compact", compact=True)
    s.close()
    restored = tmp_path / "restored"
    restored.mkdir()
    shutil.copyfile(compact, restored / "data.mdb")
    back = Store(str(restored), "n1")
    try:
        assert back.actor.startswith("n1@") and back.get(DATA, b"k47") == value
        assert run(back.write(put(DATA, b"after", value))) == b"after"
    finally:
        back.close()


def test_a_restore_after_a_restore_is_seen_too(tmp_path):
    """Numbers start again after a compacted copy is put back: an older plain copy then
    carries a higher number than the data, and is known by its actor id instead."""
    path = tmp_path / "n1"
    s = Store(str(path), "n1", fresh=True)
    for i in range(10):
        run(s.write(put(DATA, b"k", b"v%d" % i)))
    plain = _backup(s, tmp_path / "plain", compact=False)
    compact = _backup(s, tmp_path / "compact", compact=True)
    run(s.write(put(DATA, b"k", b"later")))
    s.close()
    shutil.copyfile(compact, path / "data.mdb")
    first = _actor_after(path, "n1")[0]
    assert first.startswith("n1@")
    shutil.copyfile(plain, path / "data.mdb")  # of actor n1, numbered above the data's
    second, value, refill = _actor_after(path, "n1")
    assert second.startswith("n1@") and second != first and (value, refill) == (b"v9", True)


def test_a_backup_from_before_the_last_commit_file_is_seen_by_its_number(tmp_path):
    path = tmp_path / "n1"
    s = Store(str(path), "n1", fresh=True)
    run(s.write(put(DATA, b"k", b"old")))
    old = _backup(s, tmp_path / "old", compact=False)
    env = lmdb.open(str(old.parent), max_dbs=8)  # as an earlier version left it
    with env.begin(write=True) as txn:
        txn.delete(b"last_commit_file", db=env.open_db(META, txn=txn))
    env.close()
    for value in (b"new", b"newer"):
        run(s.write(put(DATA, b"k", value)))
    s.close()
    shutil.copyfile(old, path / "data.mdb")
    actor, value, refill = _actor_after(path, "n1")
    assert actor.startswith("n1@") and (value, refill) == (b"old", True)


def test_an_operator_can_say_a_backup_was_put_back(tmp_path):
    path = tmp_path / "n1"
    Store(str(path), "n1", fresh=True).close()
    (path / storage.RESTORED_FILE).touch()
    actor, _, refill = _actor_after(path, "n1")
    assert actor.startswith("n1@") and refill
    assert not (path / storage.RESTORED_FILE).exists()  # said once, acted on once
    assert _actor_after(path, "n1")[0] == actor


def test_a_copy_of_the_whole_directory_keeps_its_actor_id(tmp_path):
    """A disk moved to another machine brings its last_commit file along: the same life."""
    path = tmp_path / "n1"
    s = Store(str(path), "n1", fresh=True)
    run(s.write(put(DATA, b"k", b"v")))
    s.close()
    moved = tmp_path / "moved"
    moved.mkdir()
    for name in ("data.mdb", storage.LAST_COMMIT_FILE):
        shutil.copyfile(path / name, moved / name)
    assert _actor_after(moved, "n1") == ("n1", b"v", False)


def test_a_machine_restart_after_a_life_without_sync_gives_an_actor_id_of_its_own(
    tmp_path, monkeypatch
):
    path = tmp_path / "n5"

    def boot(name):
        monkeypatch.setattr(storage, "_boot_id", lambda: name)

    boot("b1")
    _crash(Store(str(path), "n5", fresh=True, sync=False))
    assert _actor_after(path, "n5", sync=False)[0] == "n5"  # a process restart loses nothing
    boot("b2")  # that life closed cleanly: everything was flushed
    _crash(Store(str(path), "n5", sync=True))
    boot("b3")  # that life synced every commit
    _crash(Store(str(path), "n5", sync=False))
    assert _actor_after(path, "n5", sync=False)[0] == "n5"
    _crash(Store(str(path), "n5", sync=False))
    boot("b4")  # a life without sync ended by the machine: whatever the next one's setting
    actor, _, refill = _actor_after(path, "n5", sync=True)
    assert actor.startswith("n5@") and refill
    boot(None)  # a system that cannot tell
    _crash(Store(str(path), "n5", sync=False))
    assert _actor_after(path, "n5", sync=False)[0] == actor


def test_a_last_commit_file_behind_its_data_is_no_alarm(tmp_path):
    """After a power cut the file (never fsynced but at start and close) may be behind the
    synced data: that is not a copy put back."""
    path = tmp_path / "n1"
    s = Store(str(path), "n1", fresh=True)
    behind = (path / storage.LAST_COMMIT_FILE).read_bytes()
    for value in (b"a", b"b", b"c"):
        run(s.write(put(DATA, b"k", value)))
    _crash(s)
    (path / storage.LAST_COMMIT_FILE).write_bytes(behind)
    assert _actor_after(path, "n1") == ("n1", b"c", False)


def test_the_boot_check_follows_the_life_that_ended(tmp_path, monkeypatch):
    """A life with sync on after one without clears the mark: a later boot loses nothing."""
    path = tmp_path / "n2"
    monkeypatch.setattr(storage, "_boot_id", lambda: "b1")
    _crash(Store(str(path), "n2", fresh=True, sync=False))
    _crash(Store(str(path), "n2", sync=True))
    monkeypatch.setattr(storage, "_boot_id", lambda: "b2")
    assert _actor_after(path, "n2", sync=False) == ("n2", None, False)


def test_a_garbled_last_commit_file_is_taken_for_a_copy_put_back(tmp_path):
    path = tmp_path / "n1"
    Store(str(path), "n1", fresh=True).close()
    (path / storage.LAST_COMMIT_FILE).write_text("\u00b2\u00b2 n1\n")  # digits, not ASCII ones
    actor, _, refill = _actor_after(path, "n1")
    assert actor.startswith("n1@") and refill


def test_a_directory_from_before_the_last_commit_file_keeps_its_actor_id(tmp_path):
    path = tmp_path / "n3"
    Store(str(path), "n3", fresh=True).close()
    env = lmdb.open(str(path), max_dbs=8)
    with env.begin(write=True) as txn:
        txn.delete(b"last_commit_file", db=env.open_db(META, txn=txn))
    env.close()
    (path / storage.LAST_COMMIT_FILE).unlink()
    assert _actor_after(path, "n3")[0] == "n3"
    assert (path / storage.LAST_COMMIT_FILE).exists()
    assert _actor_after(path, "n3")[0] == "n3"  # kept from then on


def test_the_last_commit_file_follows_every_commit_and_no_further(store):
    def marked():
        return storage._parse_last_commit((Path(store.path) / "last_commit").read_bytes())

    assert marked() == (store.env.info()["last_txnid"], store.actor)
    run(store.write(put(DATA, b"k", b"v")))
    store.increment(META, b"counter")
    assert marked() == (store.env.info()["last_txnid"], store.actor)
    before = marked()
    run(store.write(lambda txn: txn.get(DATA, b"k")))  # a batch that changes nothing
    assert marked() == before and before[0] == store.env.info()["last_txnid"]


def test_a_failing_last_commit_file_never_holds_a_write_back(store, monkeypatch, caplog):
    def broken(*args):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(storage.os, "pwrite", broken)
    assert run(store.write(put(DATA, b"k", b"v"))) == b"k"  # acknowledged all the same
    assert store.get(DATA, b"k") == b"v"
    assert "cannot write last_commit" in caplog.text
    monkeypatch.undo()
    assert run(store.write(put(DATA, b"k2", b"v"))) == b"k2"  # the writer lives on


def test_a_directory_where_the_start_cannot_be_recorded_is_refused(tmp_path):
    path = tmp_path / "n1"
    Store(str(path), "n1", fresh=True).close()
    (path / storage.LAST_COMMIT_FILE).unlink()
    (path / storage.LAST_COMMIT_FILE).mkdir()  # cannot be opened as a file
    with pytest.raises(NodeError, match="cannot record its start") as info:
        Store(str(path), "n1")
    assert repr(str(path)) in str(info.value)
    (path / storage.LAST_COMMIT_FILE).rmdir()
    # Nothing was changed by the refused start: only the missing file is held against it.
    actor, _, refill = _actor_after(path, "n1")
    assert actor.startswith("n1@") and refill


def test_peek_reads_a_stopped_store_without_changing_it(tmp_path):
    path = str(tmp_path / "n1")
    s = Store(path, "n1", fresh=True)
    run(s.write(put(META, b"ring", b"r")))
    s.close()
    before = (tmp_path / "n1" / "data.mdb").stat()
    assert storage.peek(path, META, b"ring") == b"r"
    assert storage.peek(path, META, b"missing") is None
    assert storage.peek(path, b"no-such-db", b"ring") is None
    after = (tmp_path / "n1" / "data.mdb").stat()
    assert (before.st_size, before.st_mtime_ns) == (after.st_size, after.st_mtime_ns)
    with pytest.raises(lmdb.Error):
        storage.peek(str(tmp_path / "nothing-here"), META, b"ring")


def test_a_directory_in_use_by_a_running_node_is_refused(tmp_path, monkeypatch):
    """LMDB would let two processes share one environment: two nodes (two stores given one
    data_dir) would each number writes in one copy. The directory's lock refuses the
    second, in another process as in this one, and frees it when the first is gone."""
    monkeypatch.setattr(storage, "LOCK_WAIT", 0.3)
    path = tmp_path / "n1"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from dynaray.storage import Store; "
            f"s = Store({str(path)!r}, 'n1', fresh=True); print('open', flush=True); "
            "sys.stdin.read(); s.close()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(
            NodeError, match=r"another process runs a node on it \(pid \d+, node n1\)"
        ):
            Store(str(path), "n1")
    finally:
        holder.communicate("", timeout=60)
    assert holder.returncode == 0
    s = Store(str(path), "n1")  # the holder closed its store: the directory is free
    try:
        with pytest.raises(NodeError, match="Each node needs a directory of its own"):
            Store(str(path), "n1")
    finally:
        s.close()
    Store(str(path), "n1").close()  # a refused open left nothing held


def test_a_start_refused_by_a_full_disk_leaves_the_directory_free(tmp_path, monkeypatch):
    """A failed start lets go of the directory's lock, so the next start (once there is
    room) is not refused as if another node held it."""
    monkeypatch.setattr(storage, "LOCK_WAIT", 0.3)
    path = str(tmp_path / "n1")
    written = os.pwrite

    def full(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage.os, "pwrite", full)
    with pytest.raises(NodeError, match="cannot record its start"):
        Store(path, "n1", fresh=True)
    monkeypatch.setattr(storage.os, "pwrite", written)
    Store(path, "n1", fresh=True).close()


def test_an_op_that_raises_leaves_nothing_of_itself_and_its_batch_goes_in(store):
    """Each op of a group commit is all or nothing: what it wrote before raising is undone
    (and never reaches an observer, as the Merkle trees are), the others commit."""
    seen: list = []
    store.observers[DATA] = lambda key, old, new: seen.append(key)

    def half(txn):
        txn.put(DATA, b"half", b"written before the error")
        txn.put(HINTS, b"x" * 600, b"LMDB refuses a key this long")

    def oversized(txn):
        txn.put(DATA, b"y" * 600, b"refused")

    async def batch():
        ops = [put(DATA, b"before", b"1"), half, oversized, put(DATA, b"after", b"2")]
        return await asyncio.gather(*(store.write(op) for op in ops), return_exceptions=True)

    results = run(batch())
    assert isinstance(results[1], lmdb.BadValsizeError)
    assert isinstance(results[2], lmdb.BadValsizeError)
    assert store.get(DATA, b"half") is None
    assert store.get(DATA, b"before") == b"1" and store.get(DATA, b"after") == b"2"
    assert sorted(seen) == [b"after", b"before"]
