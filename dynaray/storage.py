"""A node's durable store: one LMDB environment with named sub-databases and one writer thread.

The writer thread group-commits every write queued while the previous transaction was
committing, so a burst of replica writes costs one fsync; a write's future resolves only
after its transaction is durable, which is when a replica may acknowledge. Reads are short
read transactions on the caller's thread and never span an await.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import lmdb

from dynaray.errors import NodeError, StorageError

log = logging.getLogger(__name__)

T = TypeVar("T")
Op = Callable[["Txn"], Any]

DATA = b"data"
HINTS = b"hints"
META = b"meta"
DOTS = b"dots"  # written by earlier versions (stand-in dot floors); no longer used
_STAMP = b"node_id"
_ACTOR = b"actor"
# Beside the LMDB files: the node's actor id and LMDB's number of the last transaction it
# committed; a file an operator creates after putting a backup back. In META: that the
# directory keeps the first file, and the boot of the machine that last opened it with sync
# off. See Store._gone_back.
LAST_COMMIT_FILE = "last_commit"
RESTORED_FILE = "restored"
# Held (flock) by the one process whose node uses the directory. LMDB would let a second
# process share it, and two nodes numbering writes in one copy corrupt their versions.
LOCK_FILE = "node.lock"
LOCK_WAIT = 10.0  # seconds: the process of a node just killed may still be exiting
_KEEPS_LAST_COMMIT = b"last_commit_file"
_BOOT = b"boot"
_BOOT_ID = "/proc/sys/kernel/random/boot_id"
# In META while a directory created for a node that may have had data elsewhere has not yet
# copied its ranges back from their other replicas (the node clears it when it has).
REFILL = b"refill"
# The REFILL mark's value for a directory that started empty (its copy of a range is no
# copy at all until refilled), and for one whose data went back in time.
REFILL_EMPTY = b"empty"
REFILL_OLDER = b"1"
_INITIAL_MAP_SIZE = 64 << 20
# How long close() waits for the writer to finish the writes queued before it.
_CLOSE_WAIT = 30.0
_MAX_BATCH = 2048
_STOP = object()


class Txn:
    """The write transaction handed to queued operations, with the store's databases bound."""

    def __init__(self, store: Store, txn: lmdb.Transaction) -> None:
        self._store = store
        self.raw = txn
        # (db, key, old, new) of observed databases, reported only once the commit held.
        self.changes: list[tuple[bytes, bytes, bytes | None, bytes | None]] = []

    def get(self, db: bytes, key: bytes) -> bytes | None:
        return self.raw.get(key, db=self._store.dbs[db])

    def put(self, db: bytes, key: bytes, value: bytes) -> None:
        handle = self._store.dbs[db]
        old = self.raw.get(key, db=handle) if db in self._store.observers else None
        self.raw.put(key, value, db=handle)
        if db in self._store.observers:  # only once it is in: a put that raised changed nothing
            self.changes.append((db, key, old, value))

    def keys(self, db: bytes, prefix: bytes) -> list[bytes]:
        """Every key of db under prefix, in order."""
        cursor = self.raw.cursor(db=self._store.dbs[db])
        found: list[bytes] = []
        if cursor.set_range(prefix):
            for key in cursor.iternext(values=False):
                if not key.startswith(prefix):
                    break
                found.append(bytes(key))
        return found

    def delete(self, db: bytes, key: bytes) -> bool:
        handle = self._store.dbs[db]
        old = self.raw.get(key, db=handle) if db in self._store.observers else None
        deleted = self.raw.delete(key, db=handle)
        if old is not None:
            self.changes.append((db, key, old, None))
        return deleted


class Store:
    """One node's LMDB environment. Create it in the actor, close it when the actor stops."""

    def __init__(
        self,
        path: str,
        node_id: str,
        *,
        sync: bool = True,
        fresh: bool = False,
        on_failure: Callable[[], None] | None = None,
    ) -> None:
        """`fresh`: node_id has never written anywhere (a new store, a never-used id).
        `on_failure`: called on the writer thread if it stops for good, after every write
        waiting for it has failed."""
        self.path = path
        self._on_failure = on_failure
        self.node_id = node_id
        self._lock: int | None = None
        try:
            os.makedirs(path, exist_ok=True)
            self._lock = _hold_directory(path, node_id)  # NodeError when another holds it
            self.env = lmdb.open(
                path,
                max_dbs=8,
                map_size=_map_size_for(path),
                sync=sync,
                metasync=sync,
                readahead=False,
                max_readers=256,
            )
        except (OSError, lmdb.Error) as exc:
            _release(self._lock)
            raise NodeError(
                f"node {node_id} cannot open its data directory {path!r}: {exc}; check that the "
                "path exists, is writable by the Ray worker and is not used by another process"
            ) from exc
        self._sync = sync
        self._last_commit = -1  # the file's descriptor, opened by _check_stamp
        try:
            self.dbs = {n: self.env.open_db(n) for n in (DATA, HINTS, META, DOTS)}
            self._marking = threading.Lock()
            self._check_stamp(fresh)  # which closes what it opened if it fails
        except BaseException:
            # Refused (another node's directory, a failed start): let go of the files, so
            # that the directory is free for its own node (in this process too).
            self.env.close()  # again does nothing
            _release(self._lock)
            raise
        # Called with (key, old value, new value) for every change to a database, after the
        # change committed: how Merkle trees stay current on every write.
        self.observers: dict[bytes, Callable[[bytes, bytes | None, bytes | None], None]] = {}
        self._shut = False  # close() has run (_closed also means the writer failed)
        # set_mapsize needs every transaction of this process closed, so readers and the
        # resize share this lock; readers never contend with each other (one event loop).
        self._resize = threading.Lock()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._closed = False
        self._writer_failed = False
        # Why the last commit failed (a full or failing disk), until one succeeds again.
        self.failing: str | None = None
        self._writer = threading.Thread(target=self._write_loop, name=f"lmdb-writer-{node_id}")
        self._writer.daemon = True
        self._writer.start()

    def _check_stamp(self, fresh: bool) -> None:
        """The directory's identity: the node it belongs to, and `actor`, the id its writes
        carry in version vectors and CRDTs, written together when the directory is new.

        A node's dots are numbered from what its own copy of a key holds. A node that
        starts over with an empty directory (a replaced disk, a deleted directory) has
        forgotten its old dots while its peers' copies still carry them: under its old id
        it would issue them again, and the peers would drop those writes as already seen.
        So an empty directory of a node that may have written before gets an actor id of
        its own (node id, "@", random), and the REFILL mark, in the same transaction; so
        does a directory whose data went back in time (`_gone_back`), which keeps its data
        but, like an empty one, serves no reads until it has merged its ranges back in.
        """
        meta = self.dbs[META]
        try:
            # Created before META records that the directory keeps it: a directory that
            # says so always has the file (what is in it is checked by _gone_back).
            self._last_commit = _open_last_commit(self.path)
            marked = _parse_last_commit(os.pread(self._last_commit, 256, 0))
            told = os.path.exists(os.path.join(self.path, RESTORED_FILE))
            new_actor = False
            with self.env.begin(write=True) as txn:
                stamp = txn.get(_STAMP, db=meta)
                # A directory without the stamp is new: the node starts with nothing.
                self.created = stamp is None
                if stamp is None:
                    actor = self.node_id if fresh else _new_life(self.node_id)
                    new_actor = not fresh
                    txn.put(_STAMP, self.node_id.encode(), db=meta)
                    txn.put(_ACTOR, actor.encode(), db=meta)
                    if not fresh:
                        txn.put(REFILL, REFILL_EMPTY, db=meta)
                elif stamp.decode() != self.node_id:
                    raise NodeError(
                        f"directory {self.path!r} belongs to node {stamp.decode()!r}, not "
                        f"{self.node_id!r}; nothing was changed. Give each node its own "
                        "directory."
                    )
                else:
                    # A directory from before actor ids were kept writes under its node id.
                    actor = bytes(txn.get(_ACTOR, db=meta) or self.node_id.encode()).decode()
                    gone_back = self._gone_back(txn, actor, marked, told)
                    if gone_back:
                        actor = _new_life(self.node_id)
                        new_actor = True
                        txn.put(_ACTOR, actor.encode(), db=meta)
                        txn.put(REFILL, REFILL_OLDER, db=meta)
                        log.warning(
                            "node %s: %s; its data may be older than what it last wrote, so "
                            "it now writes under the actor id %s, and merges its ranges back "
                            "in from the other replicas before it serves reads",
                            self.node_id,
                            gone_back,
                            actor,
                        )
                txn.put(_KEEPS_LAST_COMMIT, b"1", db=meta)
                boot = _boot_id()
                if not self._sync and boot is not None:
                    txn.put(_BOOT, boot.encode(), db=meta)
                else:
                    txn.delete(_BOOT, db=meta)
            self.env.sync(True)
            if told:
                os.unlink(os.path.join(self.path, RESTORED_FILE))
            self.actor = actor
            # Whether this start gave the node an actor id it never wrote under before.
            self.new_actor = new_actor
            # Written over the old line, then cut to its length (lines only grow: the
            # number has a fixed width and a new actor id is the node id and more), so
            # the file never holds less than a whole line.
            length = self._mark_commit()
            if not length:
                raise OSError(f"{LAST_COMMIT_FILE} could not be written")
            os.ftruncate(self._last_commit, length)
            os.fsync(self._last_commit)
        except BaseException as exc:
            if self._last_commit >= 0:
                os.close(self._last_commit)
            self.env.close()
            if isinstance(exc, NodeError) or not isinstance(exc, Exception):
                raise
            raise NodeError(
                f"node {self.node_id} cannot record its start in {self.path!r}: {exc}; check "
                "that the directory is writable by the Ray worker"
            ) from exc

    def _gone_back(
        self, txn: lmdb.Transaction, actor: str, marked: tuple[int, str] | None, told: bool
    ) -> str | None:
        """Why this directory's LMDB data may be older than what its node last wrote, or
        None when it is not.

        A node numbers its writes' dots from what its own copy of a key holds. Data that
        went back in time (a backup put back, a machine that lost unsynced commits) would
        have it issue again dots its peers already hold for other writes, which they would
        drop as seen. The signs:
        - After every commit the node writes into LAST_COMMIT_FILE, beside the LMDB files,
          its actor id and LMDB's number of that transaction. Data of another actor, or
          older than that number, is a copy put back (within one actor id the numbers only
          grow: a copy put back always ends that id). A node commits its own write before
          any replica receives its dot, so a dot issued after a backup was taken always
          left a number above the backup's.
        - The file is missing from a directory that kept one (a copy of data.mdb alone).
        - The operator said so: the file RESTORED_FILE is in the directory.
        - The last life ran with sync off and the machine has booted since: commits that
          were never flushed may be lost (the file's number too).
        The file is written without fsync (it is fsynced at start and at close). With
        sync on, after a power cut it may be behind the data, never ahead: no false alarm.
        With sync off it may be ahead, which is a true alarm (commits were lost). The boot
        check needs Linux's boot id; elsewhere it is off.
        """
        meta = self.dbs[META]
        if told:
            return f"the file {RESTORED_FILE!r} says its data was put back"
        data = txn.id() - 1  # the write transaction is numbered one above the data
        if marked is None:
            if txn.get(_KEEPS_LAST_COMMIT, db=meta) is not None:
                return f"its {LAST_COMMIT_FILE!r} file is gone (only data.mdb put back?)"
        elif marked[1] != actor:
            return f"its data is of actor {actor}, but it last ran as {marked[1]}"
        elif marked[0] > data:
            return f"its data (transaction {data}) is older than its last commit ({marked[0]})"
        boot, now = txn.get(_BOOT, db=meta), _boot_id()
        if boot is not None and now is not None and bytes(boot).decode() != now:
            return "its machine restarted while it ran with sync=False"
        return None

    # -- reads ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _open(self, db: bytes, write: bool = False) -> Iterator[lmdb.Transaction]:
        """A transaction outside the writer thread; a clear error once the store is closed
        (a node that is stopping), rather than LMDB's "closed object"."""
        with self._resize:
            if self._shut:
                raise NodeError(f"node {self.node_id} is stopping: its store is closed")
            with self.env.begin(write=write, db=self.dbs[db]) as txn:
                yield txn

    def get(self, db: bytes, key: bytes) -> bytes | None:
        with self._open(db) as txn:
            return txn.get(key)

    def get_many(
        self, db: bytes, keys: list[bytes], max_bytes: int | None = None
    ) -> list[bytes | None]:
        """The values of keys (None where absent), read in one transaction. With
        `max_bytes`, those of the first keys only, up to about that many bytes (at least
        one): an answer that goes out in one call."""
        with self._open(db) as txn:
            if max_bytes is None:
                return [txn.get(key) for key in keys]
            values: list[bytes | None] = []
            size = 0
            for key in keys:
                if size >= max_bytes:
                    break
                value = txn.get(key)
                values.append(value)
                size += len(value) if value is not None else 0
            return values

    def seek(self, db: bytes, key: bytes) -> bytes | None:
        """The first key at or after `key`, or None."""
        with self._open(db) as txn:
            cursor = txn.cursor()
            return cursor.key() if cursor.set_range(key) else None

    def increment(self, db: bytes, key: bytes) -> int:
        """Add one to a counter at once, in its own transaction (used at start-up)."""

        def op(txn: Txn) -> int:
            value = int(txn.get(db, key) or b"0") + 1
            txn.put(db, key, str(value).encode())
            return value

        return self.write_now(op)

    def write_now(self, op: Callable[[Txn], Any]) -> Any:
        """Run op(txn) in a write transaction of its own at once, not through the writer
        thread (at start-up, before any write is queued); returns what op returns. op may
        not read through the store's other methods: this thread holds the transaction."""
        with self._open(META, write=True) as raw:
            txn = Txn(self, raw)
            result = op(txn)
        self._mark_commit()
        self._notify(txn.changes)
        return result

    def setdefault(self, db: bytes, key: bytes, make: Callable[[int], bytes]) -> bytes:
        """The value at key; if there is none, make(this transaction's number) is stored
        first (at start-up, in a transaction of its own)."""

        def op(txn: Txn) -> bytes:
            value = txn.get(db, key)
            if value is None:
                value = make(txn.raw.id())
                txn.put(db, key, value)
            return bytes(value)

        return self.write_now(op)

    def scan(
        self,
        db: bytes,
        prefix: bytes = b"",
        start: bytes | None = None,
        limit: int = 1000,
        max_bytes: int | None = None,
    ) -> list[tuple[bytes, bytes]]:
        """Up to `limit` items whose key starts with prefix, from `start` (exclusive) on;
        with max_bytes, no more once their values reach that size (at least one item)."""
        out: list[tuple[bytes, bytes]] = []
        size = 0
        with self._open(db) as txn:
            cursor = txn.cursor()
            found = cursor.set_range(start if start is not None else prefix)
            if found and start is not None and cursor.key() == start:
                found = cursor.next()
            while found and len(out) < limit:
                key = cursor.key()
                if not key.startswith(prefix):
                    break
                value = cursor.value()
                out.append((key, value))
                size += len(value)
                if max_bytes is not None and size >= max_bytes:
                    break
                found = cursor.next()
        return out

    def iterate(self, db: bytes, prefix: bytes = b"", batch: int = 1000) -> Iterator[tuple]:
        """Every item under prefix, read in short transactions of `batch` items."""
        start = None
        while True:
            items = self.scan(db, prefix, start, batch)
            yield from items
            if len(items) < batch:
                return
            start = items[-1][0]

    def count(self, db: bytes) -> int:
        with self._open(db) as txn:
            return txn.stat(self.dbs[db])["entries"]

    def disk_bytes(self) -> int:
        with self._open(META):  # the environment stays open meanwhile
            info = self.env.info()
            stat = self.env.stat()
        return (info["last_pgno"] + 1) * stat["psize"]

    # -- writes --------------------------------------------------------------------------

    async def write(self, op: Callable[[Txn], T]) -> T:
        """Run op inside the next group-committed transaction; resolves after the commit.
        op may run more than once (a batch that fills the map is run again whole after the
        map grows), so what it does outside the transaction is done again too: keep it to
        counters and logs."""
        if self._closed:
            raise StorageError(f"node {self.node_id}: its store is closed; nothing was written")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put((op, loop, future))
        if self._writer_failed:  # it may have failed the queue before this write joined it
            self._fail_queued()
        return await future

    def _write_loop(self) -> None:
        try:
            self._write_batches()
        except Exception:  # never die silently: every later write would hang
            log.exception("node %s: the LMDB writer thread failed", self.node_id)
            self._closed = self._writer_failed = True
            self._fail_queued()
            if self._on_failure is not None:
                self._on_failure()

    def _fail_queued(self) -> None:
        """Answer every write still queued behind a writer that will take no more: none of
        them reached LMDB."""
        items = []
        while True:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        failure = StorageError(f"node {self.node_id}: its store is closed; nothing was written")
        pending = [item for item in items if item is not _STOP]
        _answer(pending, [(False, failure)] * len(pending))

    def _write_batches(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = [first]
            stop = False
            while len(batch) < _MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                batch.append(item)
            try:
                _answer(batch, self._commit(batch))
            except Exception:
                # Not a StorageError: whether the commit reached the disk is not known, so
                # no coordinator may hand these writes to another node as never written.
                failure = NodeError(
                    f"node {self.node_id}: its LMDB writer stopped; this write may or may not "
                    "be on its disk. The node stops: restart it"
                )
                _answer(batch, [(False, failure)] * len(batch))
                raise
            if stop:
                return

    def _commit(self, batch: list) -> list[tuple[bool, Any]]:
        """One transaction for the batch; each write's outcome. A commit that fails as a
        full or failing disk does fails the batch (nothing of it was stored) and keeps the
        writer going, as the disk may get room again. What LMDB cannot recover from (a map
        that failed to grow leaves the environment unusable, a panic) stops the writer."""
        while True:
            results: list[tuple[bool, Any]] = []
            try:
                with self.env.begin(write=True) as raw:
                    changes: list = []
                    for op, _, _ in batch:
                        # Each op in a nested transaction: one that raises leaves nothing
                        # behind (what it wrote before raising is undone), and the batch
                        # goes on without it. About 3 us per op.
                        txn = Txn(self, self.env.begin(write=True, parent=raw))
                        try:
                            result = op(txn)
                        except lmdb.MapFullError:
                            txn.raw.abort()
                            raise
                        except Exception as exc:  # one bad op must not fail the batch
                            txn.raw.abort()
                            results.append((False, exc))
                            continue
                        txn.raw.commit()
                        changes.extend(txn.changes)
                        results.append((True, result))
            except lmdb.MapFullError:
                self._grow()
                continue
            except lmdb.PanicError:
                raise
            except lmdb.Error as exc:
                return self._failed(batch, exc)
            if changes or any(ok for ok, _ in results):
                if self.failing is not None:
                    log.warning("node %s: writes commit again", self.node_id)
                self.failing = None
            self._mark_commit()
            self._notify(changes)
            return results

    def _failed(self, batch: list, exc: lmdb.Error) -> list[tuple[bool, Any]]:
        """Every write of a batch whose commit failed fails; logged once, when the store
        starts failing, not at every batch of a full disk."""
        why = f"LMDB could not commit ({exc}); check the disk of {self.path!r}: full? failing?"
        failure = StorageError(f"node {self.node_id} stored nothing of this write: {why}")
        if self.failing is None:
            log.error("%s", failure)
        self.failing = why
        return [(False, failure)] * len(batch)

    def _mark_commit(self) -> int:
        """Write the actor id and the number of the last committed transaction into
        LAST_COMMIT_FILE, without fsync. The number is read back from LMDB (a transaction
        that changed nothing commits none). A failure only weakens the file as a sign, so
        it is logged, and the writes it follows are still acknowledged."""
        with self._marking:  # the writer thread, and increment() at start-up
            try:
                line = f"{self.env.info()['last_txnid']:020d} {self.actor}\n".encode()
                return os.pwrite(self._last_commit, line, 0)
            except (OSError, lmdb.Error):
                log.exception("node %s: cannot write %s", self.node_id, LAST_COMMIT_FILE)
                return 0

    def _notify(self, changes: list) -> None:
        for db, key, old, new in changes:
            try:
                self.observers[db](key, old, new)
            except Exception:  # an observer's bug must never stop the writer thread
                log.exception("node %s: observer of %s failed", self.node_id, db.decode())

    def _grow(self) -> None:
        with self._resize:
            size = self.env.info()["map_size"] * 2
            self.env.set_mapsize(size)
        log.info("node %s: LMDB map grown to %d MiB", self.node_id, size >> 20)

    def close(self) -> None:
        """Stop the writer (after the writes queued so far, for up to _CLOSE_WAIT seconds:
        what is still queued then fails with "nothing was written"), then close the files.
        A clean stop flushes everything, so a machine restart after it loses nothing."""
        if self._shut:
            return
        self._shut = self._closed = True
        self._queue.put(_STOP)
        self._writer.join(timeout=_CLOSE_WAIT)
        # Writes that joined the queue behind the stop (or behind a writer stuck in a
        # commit, which takes nothing more once it is free: it finds the stop or no work).
        self._fail_queued()
        if self._writer.is_alive():
            # Stuck in a commit (a failing disk): the stop it has not reached was drained
            # with the writes above; put back, it ends the thread once the commit returns.
            self._queue.put(_STOP)
            log.error("node %s: the LMDB writer did not stop; its files stay open", self.node_id)
            return
        try:
            if not self._sync:
                with self.env.begin(write=True) as txn:
                    txn.delete(_BOOT, db=self.dbs[META])
                self.env.sync(True)
            self._mark_commit()
            os.fsync(self._last_commit)
        except (OSError, lmdb.Error):
            log.exception("node %s: closing its store", self.node_id)
        finally:
            os.close(self._last_commit)
            with self._resize:  # no reader is inside a transaction while the files close
                self.env.close()
            _release(self._lock)


def _hold_directory(path: str, node_id: str) -> int | None:
    """Take the directory's lock for this process (waiting up to LOCK_WAIT for a process
    that is exiting); its descriptor, held until close. NodeError if another process
    holds it. None on a file system without locks (logged)."""
    fd = os.open(os.path.join(path, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() < deadline:
                time.sleep(0.1)
                continue
            try:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
            except OSError:
                holder = ""
            os.close(fd)
            raise NodeError(
                f"node {node_id} cannot use {path!r}: another process runs a node on it "
                f"({holder or 'unknown'}). Each node needs a directory of its own: give each "
                "store its own data_dir, and stop a node before starting it again elsewhere"
            ) from None
        except OSError as exc:  # no flock here (some network file systems)
            log.warning(
                "node %s: cannot lock %s (%s); not guarded against sharing", node_id, path, exc
            )
            os.close(fd)
            return None
    try:  # who holds it, for the message a second one gets; the lock works without it
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, node {node_id}\n".encode(), 0)
    except OSError as exc:  # a full disk, say: the store's own start says what matters
        log.warning("node %s: cannot note its pid in %s: %s", node_id, LOCK_FILE, exc)
    return fd


def _release(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)  # closing the last descriptor releases the lock


def _answer(batch: list, results: list[tuple[bool, Any]]) -> None:
    """Resolve each queued write's future, on its own event loop, with its outcome."""
    for (_, loop, future), (ok, value) in zip(batch, results, strict=True):
        try:
            loop.call_soon_threadsafe(_resolve, future, ok, value)
        except RuntimeError:
            continue  # the waiter's event loop is closed: nobody is listening


def _resolve(future: asyncio.Future, ok: bool, value: Any) -> None:
    if future.done():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


def _map_size_for(path: str) -> int:
    """The LMDB map to open a directory with: room beyond the data file's size. LMDB opens
    a map no smaller than the file, so a file that fills it (a compacted backup put back,
    whose free list is empty) would fail its first write, at start-up, with a full map,
    before the writer thread that grows maps runs."""
    try:
        size = os.path.getsize(os.path.join(path, "data.mdb"))
    except OSError:
        size = 0
    # Room of the file's size again, at most a GiB (the writer grows the map as it fills).
    return max(_INITIAL_MAP_SIZE, size + min(size, 1 << 30))


def _new_life(node_id: str) -> str:
    """An actor id no write has used: the node's id and a random suffix."""
    return f"{node_id}@{secrets.token_hex(4)}"


def _boot_id() -> str | None:
    """This boot of the machine (Linux); None where the system does not say."""
    try:
        with open(_BOOT_ID) as file:
            return file.read().strip()
    except OSError:
        return None


def _parse_last_commit(content: bytes) -> tuple[int, str] | None:
    """(transaction number, actor id) from LAST_COMMIT_FILE's bytes; None if it names none."""
    number, _, actor = content.decode(errors="replace").strip().partition(" ")
    return (int(number), actor) if number.isascii() and number.isdigit() and actor else None


def _open_last_commit(path: str) -> int:
    """LAST_COMMIT_FILE, opened for rewriting in place; its directory entry made durable."""
    fd = os.open(os.path.join(path, LAST_COMMIT_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        directory = os.open(path, os.O_RDONLY)
        try:
            os.fsync(directory)
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # some file systems cannot sync a directory
                raise
        finally:
            os.close(directory)
    except BaseException:
        os.close(fd)
        raise
    return fd


def peek(path: str, db: bytes, key: bytes) -> bytes | None:
    """One value of a node's store that no node has open (a stopped store, read before it
    starts again). Read-only: nothing on disk changes. None when the database or the key is
    missing; lmdb.Error when the directory holds no environment this can read."""
    env = lmdb.open(path, readonly=True, max_dbs=8, create=False)
    try:
        with env.begin() as txn:
            try:
                handle = env.open_db(db, txn=txn, create=False)
            except lmdb.NotFoundError:
                return None
            return txn.get(key, db=handle)
    finally:
        env.close()
