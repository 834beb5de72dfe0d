"""The user's handle on the store: get, put and delete with the Dynamo paper's contract.

Every call has an async twin (`aget`, `aput`, `adelete`) with the same signature; the sync
methods run the async ones on a private event loop thread, so they work in plain scripts,
in Ray tasks and in notebooks. Values are serialized here and only here.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from dynaray import codec, versions
from dynaray.context import Context, check_context, key_tag
from dynaray.errors import ConflictError
from dynaray.routing import Routing, key_repr

T = TypeVar("T")


@dataclass(frozen=True)
class GetResult:
    """What a get returns: every causally unrelated value and one context covering them."""

    key: str
    values: list
    context: Context

    @property
    def value(self) -> Any:
        """The single value; None when the key is absent; ConflictError when there are siblings."""
        if len(self.values) > 1:
            raise ConflictError(self.key, len(self.values))
        return self.values[0] if self.values else None

    @property
    def exists(self) -> bool:
        return bool(self.values)

    def __len__(self) -> int:
        return len(self.values)


def result_from_clock(key: bytes, hashed: bytes, wire: list | None) -> GetResult:
    """Decode a coordinator's merged clock: tombstones hidden, identical siblings shown once."""
    if wire is None:
        return GetResult(key_repr(key), [], Context((), key_tag(hashed)))
    clock = versions.from_wire(wire)
    seen: set[bytes] = set()
    values = []
    for raw in versions.values(clock):
        if raw is None or raw in seen:
            continue
        seen.add(raw)
        values.append(codec.decode_value(raw))
    return GetResult(key_repr(key), values, Context(versions.join(clock), key_tag(hashed)))


class _LoopThread:
    """A private event loop on a daemon thread, for the sync API."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            coro.close()
            raise RuntimeError(
                "a sync dynaray call was made inside a running event loop; use the async twin "
                "(aget, aput, adelete, ...) there"
            )
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)


class Client:
    """Reads and writes keys. Make one with `cluster.client()` or `dynaray.connect()`."""

    def __init__(self, routing: Routing) -> None:
        self._routing = routing
        self._loop: _LoopThread | None = None
        self._lock = threading.Lock()

    @property
    def routing(self) -> Routing:
        return self._routing

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        with self._lock:
            if self._loop is None:
                self._loop = _LoopThread()
        return self._loop.run(coro)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.close()
            self._loop = None

    # -- async API --------------------------------------------------------------------------

    async def aget(
        self, key: str | bytes, *, r: int | None = None, bucket: str = codec.DEFAULT_BUCKET
    ) -> GetResult:
        """Read a key: all sibling values and their context. `r` overrides the read quorum."""
        b, k, hashed = _address(bucket, key)
        await self._routing._ensure_ring()
        n, r, _ = self._routing.quorum(r=r)
        wire = await self._routing.get(b, k, r, n)
        return result_from_clock(k, hashed, wire)

    async def aput(
        self,
        key: str | bytes,
        context: Context | bytes | None,
        value: Any,
        *,
        w: int | None = None,
        bucket: str = codec.DEFAULT_BUCKET,
    ) -> Context:
        """Write a value with the context of the get it follows (None for a first write)."""
        b, k, hashed = _address(bucket, key)
        vv = check_context(context, hashed)
        return await self._write(b, k, hashed, vv, codec.encode_value(value), w)

    async def adelete(
        self,
        key: str | bytes,
        context: Context | bytes | None = None,
        *,
        w: int | None = None,
        bucket: str = codec.DEFAULT_BUCKET,
    ) -> Context:
        """Delete what the context saw (a tombstone). With no context, read first."""
        b, k, hashed = _address(bucket, key)
        if context is None:
            context = (await self.aget(key, bucket=bucket)).context
        vv = check_context(context, hashed)
        return await self._write(b, k, hashed, vv, None, w)

    async def _write(
        self, b: bytes, k: bytes, hashed: bytes, vv: versions.VersionVector, raw, w
    ) -> Context:
        await self._routing._ensure_ring()
        n, _, w = self._routing.quorum(w=w)
        new_vv = await self._routing.put(b, k, versions.vv_to_wire(vv), raw, w, n)
        return Context(versions.vv_from_wire(new_vv), key_tag(hashed))

    # -- sync API ---------------------------------------------------------------------------

    def get(
        self, key: str | bytes, *, r: int | None = None, bucket: str = codec.DEFAULT_BUCKET
    ) -> GetResult:
        """Read a key: all sibling values and their context. `r` overrides the read quorum."""
        return self._run(self.aget(key, r=r, bucket=bucket))

    def put(
        self,
        key: str | bytes,
        context: Context | bytes | None,
        value: Any,
        *,
        w: int | None = None,
        bucket: str = codec.DEFAULT_BUCKET,
    ) -> Context:
        """Write a value with the context of the get it follows (None for a first write)."""
        return self._run(self.aput(key, context, value, w=w, bucket=bucket))

    def delete(
        self,
        key: str | bytes,
        context: Context | bytes | None = None,
        *,
        w: int | None = None,
        bucket: str = codec.DEFAULT_BUCKET,
    ) -> Context:
        """Delete what the context saw (a tombstone). With no context, read first."""
        return self._run(self.adelete(key, context, w=w, bucket=bucket))

    def nodes(self) -> list[str]:
        return self._routing.nodes


def _address(bucket: str, key: object) -> tuple[bytes, bytes, bytes]:
    """Validate bucket and key before anything is sent: (bucket, key, bytes hashed on the ring)."""
    b = codec.bucket_bytes(bucket)
    k = codec.key_bytes(key)
    codec.check_key(b, k)
    return b, k, codec.hash_input(b, k)
