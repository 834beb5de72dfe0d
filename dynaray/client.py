"""The user's handle on the store: get, put and delete with the Dynamo paper's contract.

Every call has an async twin (`aget`, `aput`, `adelete`) with the same signature; the sync
methods run the async ones on a private event loop thread, so they work in plain scripts
and Ray tasks. Code that runs in an event loop (async code, a Jupyter notebook's cells)
awaits the async twins instead: a sync call there would stall that loop, and is refused.
Values are serialized here and only here.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from dynaray import codec, crdt, records, versions
from dynaray.codec import key_repr
from dynaray.context import Context, check_context, key_tag, parse_context
from dynaray.errors import ConflictError, DynarayError, UnreadableValue
from dynaray.routing import Routing

if TYPE_CHECKING:
    from dynaray.buckets import Bucket

T = TypeVar("T")
_CLOSE_WAIT = 5.0  # seconds close() waits for cancelled work, then for the loop's thread


@dataclass(frozen=True)
class GetResult:
    """What a get returns: every causally unrelated value and one context covering them.
    `key` is the key as it was asked for (str or bytes)."""

    key: str | bytes
    values: list
    context: Context
    # False for a key of a counter, set or map bucket never written: its empty value (0,
    # set(), {}) is in `values` so that `value` reads as one, but nothing is stored. Not
    # shown in the repr: `exists` is what to read.
    stored: bool = field(default=True, repr=False)

    @property
    def value(self) -> Any:
        """The single value; None when the key is absent; ConflictError when there are siblings."""
        if len(self.values) > 1:
            shown = key_repr(self.key) if isinstance(self.key, bytes) else self.key
            raise ConflictError(shown, len(self.values))
        return self.values[0] if self.values else None

    @property
    def exists(self) -> bool:
        """Whether the key holds a value (deleted and never-written keys do not)."""
        return bool(self.values) and self.stored

    def __len__(self) -> int:
        return len(self.values)


def decode_values(record: records.Record | None) -> list:
    """The values a client sees in a record: tombstones hidden, identical siblings once."""
    if record is None:
        return []
    if record.kind == "siblings":
        raws = [raw for raw in versions.values(record.state) if raw is not None]
        if len(raws) > 1:
            raws = list(dict.fromkeys(raws))  # identical siblings once, in order
        return [codec.decode_value(raw) for raw in raws]
    if record.kind == "lww":
        raw = record.state[2]
        return [] if raw == records.LWW_DELETED else [codec.decode_value(raw)]
    return [_decode_crdt(crdt.value(record.kind, record.state))]


def _decode_crdt(value: object) -> object:
    """CRDT values hold client-encoded bytes (set elements, registers): decode them all."""
    if isinstance(value, bytes):
        return codec.decode_value(value)
    if isinstance(value, frozenset | set):
        elements = [_decode_crdt(v) for v in value]
        try:
            return set(elements)
        except TypeError:
            # An unhashable element, added before adds checked for it: a list, so that
            # the key can still be read, and the element removed.
            return elements
    if isinstance(value, dict):
        return {k: _decode_crdt(v) for k, v in value.items()}
    return value


def decode_result(key: str | bytes, tied: bytes, raw: bytes | None) -> GetResult:
    """A coordinator's merged record (encoded as stored) as the user sees it; `key` as the
    user gave it, `tied` what its context is tied to (Client._tied). A value that cannot
    be decoded here raises UnreadableValue, which carries the context to overwrite or
    delete it with."""
    record = records.decode(raw) if raw is not None else None
    if record is not None and record.kind == "siblings":
        vv = versions.join(record.state)  # the state was validated as it was decoded
    else:
        vv = versions.vv_from_wire(records.context_of(record))
    context = Context(vv, key_tag(tied), records.context_stamp(record))
    try:
        values = decode_values(record)
    except Exception as exc:  # noqa: BLE001 - unpickling runs the value's own code
        raise UnreadableValue(key, exc, context) from exc
    return GetResult(key, values, context)


class _LoopThread:
    """A private event loop on a daemon thread, for the sync API."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        # Submitting a call and starting to close exclude each other, so every call
        # submitted before close() is cancelled by it, and none is submitted after.
        self._guard = threading.Lock()
        self._closing = False
        self._calls: set[concurrent.futures.Future] = set()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            twin = getattr(coro, "__name__", "aget")  # the coroutine the sync call wraps
            coro.close()
            raise RuntimeError(
                f"a sync dynaray call was made inside a running event loop; use its async "
                f"twin there: await ...{twin}(...) (every call has one: aget, aput, adelete, "
                "aget_many, aput_many, abucket, and a bucket's aincrement, aadd, ...; a "
                "Jupyter notebook's cells run in a loop and take a top-level await)"
            )
        with self._guard:
            if self._closing:
                coro.close()
                raise DynarayError("the client was closed; make the call on an open client")
            future = asyncio.run_coroutine_threadsafe(coro, self.loop)
            self._calls.add(future)
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            raise DynarayError(
                "the client was closed during the call; if it wrote, the write may or may "
                "not have been applied: read the key to find out"
            ) from None
        finally:
            with self._guard:
                self._calls.discard(future)

    def close(self) -> None:
        """Cancel what still runs on the loop, then stop it and its thread.

        What can still run after a sync call returned is background work: read repairs
        (a shortcut; anti-entropy does the same later) and batched calls whose waiters
        have gone. Stopping the loop without cancelling them would leave them pending
        forever, holding their Ray references.
        """
        with self._guard:
            self._closing = True
        if threading.current_thread() is self._thread:  # closed from a callback on the loop
            self.loop.create_task(_cancel_others()).add_done_callback(lambda _: self.loop.stop())
            return
        if not self._thread.is_alive():
            if not self.loop.is_closed():
                self.loop.close()
            return
        # A loop that is stuck or already closed: stopping it is all that is left to do.
        with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError):
            cancelling = asyncio.run_coroutine_threadsafe(_cancel_others(), self.loop)
            cancelling.result(_CLOSE_WAIT + 1)  # a loop blocked in a callback: stop anyway
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(_CLOSE_WAIT)
        if not self._thread.is_alive():
            self.loop.close()
        with self._guard:  # a call whose task outlived the loop must not wait for ever
            for future in self._calls:
                future.cancel()


async def _cancel_others() -> None:
    """Cancel every other task of the running loop and wait (briefly) until they end;
    again for tasks that the cancelled ones started as they ended."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _CLOSE_WAIT
    me = asyncio.current_task()
    while others := [task for task in asyncio.all_tasks() if task is not me]:
        if loop.time() >= deadline:
            return
        for task in others:
            task.cancel()
        await asyncio.wait(others, timeout=deadline - loop.time())


class Client:
    """Reads and writes keys. Make one with `cluster.client()` or `dynaray.connect()`."""

    def __init__(self, routing: Routing) -> None:
        self._routing = routing
        self._loop: _LoopThread | None = None
        self._lock = threading.Lock()
        self._closed = False

    @property
    def routing(self) -> Routing:
        return self._routing

    def _check_open(self) -> None:
        if self._closed:
            raise DynarayError(
                "this client was closed (or its store handle shut down); make a new one with "
                "cluster.client() or dynaray.connect()"
            )

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        with self._lock:
            if self._closed:
                coro.close()
                self._check_open()
            if self._loop is None:
                self._loop = _LoopThread()
            loop = self._loop
        return loop.run(coro)

    def close(self) -> None:
        """Stop the private event loop of the sync API, cancelling background read repairs
        still in flight. Every later call, sync or async, is refused."""
        with self._lock:
            self._closed = True
            loop, self._loop = self._loop, None
        if loop is not None:
            loop.close()

    # -- the one read path and the one write path ------------------------------------------

    async def _read(self, bucket: str, key: str | bytes, r: int | None) -> GetResult:
        self._check_open()
        b, k, hashed = address(bucket, key, write=False)
        await self._routing._ensure_ring()
        n, r, _ = self._routing.quorum(r=r)
        return decode_result(key, self._tied(hashed), await self._routing.get(b, k, r, n))

    async def _write(self, bucket: str, key: str | bytes, op: Any, w: int | None) -> Context:
        """Send one operation; `op` is a records.update operation, or a function of what a
        context of the key is tied to (_tied) that builds one, so the context it carries is
        checked against the key and the store."""
        self._check_open()
        b, k, hashed = address(bucket, key)
        await self._routing._ensure_ring()
        tied = self._tied(hashed)
        if callable(op):
            op = op(tied)
        n, _, w = self._routing.quorum(w=w)
        return _new_context(tied, await self._routing.put(b, k, op, w, n))

    def _tied(self, hashed: bytes) -> bytes:
        """What a context is tied to (context.key_tag): the key's bucket and name, and the
        store's id, so a context read from another store (another store of the cluster, or
        one made anew under the same name) is refused, not taken for this key's. A store
        started before stores had ids ties contexts to the key alone."""
        store = self._routing.config.get("id")
        return hashed if not store else hashed + b"\x00" + str(store).encode()

    # -- async API --------------------------------------------------------------------------

    async def aget(self, key: str | bytes, *, r: int | None = None) -> GetResult:
        """Read a key: all sibling values and their context. `r` overrides the read quorum."""
        return await self._read(codec.DEFAULT_BUCKET, key, r)

    async def aput(
        self, key: str | bytes, context: Context | bytes | None, value: Any, *, w: int | None = None
    ) -> Context:
        """Write a value with the context of the get it follows (None for a first write)."""
        raw = codec.encode_value(value)
        return await self._write(codec.DEFAULT_BUCKET, key, siblings_op(context, raw), w)

    async def adelete(
        self, key: str | bytes, context: Context | bytes | None = None, *, w: int | None = None
    ) -> Context:
        """Delete what the context saw (a tombstone). With no context, read first."""
        if context is None:
            context = (await self.aget(key)).context
        return await self._write(codec.DEFAULT_BUCKET, key, siblings_op(context, None), w)

    async def aget_many(self, keys: list, *, r: int | None = None) -> dict:
        """Read many keys at once: {key: GetResult, or the exception that key's read raised}.

        The client asks the replicas itself, one call per replica for every key it holds,
        so a batch costs a few actor calls, not one per key; each key keeps its own quorum
        outcome.
        """
        self._check_open()
        if isinstance(keys, str | bytes) or not isinstance(keys, Iterable):
            raise TypeError(f"get_many takes a list of keys, e.g. [{keys!r}]")
        keys = list(keys)  # read twice below: a generator would be empty the second time
        for key in keys:  # a key the result cannot hold (a list): refused before a read
            try:
                hash(key)
            except TypeError:
                raise TypeError(
                    f"get_many takes str or bytes keys, got the {type(key).__name__} {key!r}"
                ) from None
        await self._routing._ensure_ring()
        n, r, _ = self._routing.quorum(r=r)
        results: dict = dict.fromkeys(keys)  # answers in the order the keys were given
        sent: list = []  # (key, bytes key, hashed)
        for key in keys:
            try:
                b, k, hashed = address(codec.DEFAULT_BUCKET, key, write=False)
            except Exception as exc:  # noqa: BLE001 - a bad key fails alone
                results[key] = exc
                continue
            sent.append((key, b, k, self._tied(hashed)))
        answers = await self._routing.many("get", [(b, k, r, n) for _, b, k, _ in sent])
        for (key, _, _, tied), answer in zip(sent, answers, strict=True):
            results[key] = _settle(answer, decode_result, key, tied)
        return results

    async def aput_many(self, items: dict, *, w: int | None = None) -> dict:
        """Write many keys at once: items is {key: (context, value)}; returns
        {key: new Context, or the exception that key's write raised}."""
        self._check_open()
        if not isinstance(items, dict):
            raise TypeError(
                f"put_many takes a dict {{key: (context, value)}}, got {type(items).__name__}"
            )
        same: dict[bytes, object] = {}  # str and bytes forms of one stored key
        for key, pair in items.items():
            if not isinstance(pair, tuple | list) or len(pair) != 2:
                raise TypeError(
                    f"put_many takes {{key: (context, value)}}; {key!r} maps to {pair!r}"
                )
            if isinstance(key, str | bytes):
                try:
                    k = codec.key_bytes(key)
                except ValueError:
                    continue  # a key that cannot be encoded fails alone, below
                if k in same:
                    raise ValueError(
                        f"put_many got {same[k]!r} and {key!r}, one key written twice at once "
                        "(it would keep both values as siblings): give it once"
                    )
                same[k] = key
        await self._routing._ensure_ring()
        n, _, w = self._routing.quorum(w=w)
        results: dict = dict.fromkeys(items)  # answers in the order the keys were given
        sent: list = []  # (key, bytes bucket, bytes key, what its context is tied to, op)
        for key, (context, value) in items.items():
            try:
                b, k, hashed = address(codec.DEFAULT_BUCKET, key)
                tied = self._tied(hashed)
                op = siblings_op(context, codec.encode_value(value))(tied)
            except Exception as exc:  # noqa: BLE001 - a bad key or value fails alone
                results[key] = exc
                continue
            sent.append((key, b, k, tied, op))
        answers = await self._routing.many("put", [(b, k, op, w, n) for _, b, k, _, op in sent])
        for (key, _, _, tied, _), answer in zip(sent, answers, strict=True):
            results[key] = _settle(answer, _new_context, tied)
        return results

    def bucket(
        self,
        name: str,
        *,
        policy: str | None = None,
        resolver: Callable[[list], Any] | None = None,
        r: int | None = None,
        w: int | None = None,
    ) -> Bucket:
        """The bucket `name`: created with `policy` (and r, w) if new and one is given;
        with none, the stored properties, or for a bucket no node knows a "siblings"
        bucket with nothing stored (its calls of another policy look again).

        Its properties live in the store, so every client agrees; asking for an existing
        bucket with a different policy, r or w is an error.
        """
        return self._run(self.abucket(name, policy=policy, resolver=resolver, r=r, w=w))

    async def abucket(
        self,
        name: str,
        *,
        policy: str | None = None,
        resolver: Callable[[list], Any] | None = None,
        r: int | None = None,
        w: int | None = None,
    ) -> Bucket:
        from dynaray.buckets import open_bucket

        self._check_open()
        return await open_bucket(self, name, policy, resolver, r, w)

    # -- sync API ---------------------------------------------------------------------------

    def get(self, key: str | bytes, *, r: int | None = None) -> GetResult:
        """Read a key: all sibling values and their context. `r` overrides the read quorum."""
        return self._run(self.aget(key, r=r))

    def put(
        self, key: str | bytes, context: Context | bytes | None, value: Any, *, w: int | None = None
    ) -> Context:
        """Write a value with the context of the get it follows (None for a first write)."""
        return self._run(self.aput(key, context, value, w=w))

    def delete(
        self, key: str | bytes, context: Context | bytes | None = None, *, w: int | None = None
    ) -> Context:
        """Delete what the context saw (a tombstone). With no context, read first."""
        return self._run(self.adelete(key, context, w=w))

    def get_many(self, keys: list, *, r: int | None = None) -> dict:
        """Read many keys at once: {key: GetResult, or the exception that key's read raised}."""
        return self._run(self.aget_many(keys, r=r))

    def put_many(self, items: dict, *, w: int | None = None) -> dict:
        """Write {key: (context, value)} at once: {key: Context, or that key's exception}."""
        return self._run(self.aput_many(items, w=w))

    def nodes(self) -> list[str]:
        return self._routing.nodes


def _new_context(tied: bytes, answer: list) -> Context:
    """The context a write answers with ([context wire, stamp]: StorageNode._update), tied
    to its key and store (Client._tied)."""
    wire, stamp = answer
    return Context(versions.vv_from_wire(wire), key_tag(tied), stamp)


def _settle(answer: Any, fn: Callable[..., T], *args: Any) -> T | Exception:
    """One key's outcome in a batch: fn(*args, answer), or the exception the request raised
    or fn raised, so one key's bad answer fails only that key."""
    if isinstance(answer, Exception):
        return answer
    try:
        return fn(*args, answer)
    except Exception as exc:  # noqa: BLE001
        return exc


def address(bucket: str, key: object, write: bool = True) -> tuple[bytes, bytes, bytes]:
    """Validate bucket and key before anything is sent: (bucket, key, bytes hashed on the ring)."""
    b = codec.bucket_bytes(bucket)
    k = codec.key_bytes(key)
    codec.check_key(b, k, write)
    return b, k, codec.hash_input(b, k)


def siblings_op(context: Context | bytes | None, raw: bytes | None) -> Callable[[bytes], list]:
    """A write to a siblings bucket: the value (None deletes) with the context it follows
    (parsed now; checked against the key and store once the write knows them)."""
    context = parse_context(context)
    return lambda tied: ["siblings", versions.vv_to_wire(check_context(context, tied)), raw]
