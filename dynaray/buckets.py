"""Buckets: named key spaces, each with a conflict policy stored in the cluster itself.

A bucket's properties (policy, r, w) are cluster metadata: every node holds them all, they
spread by gossip (dynaray.catalog), and a client on either side of a partition sees the
properties of every bucket created before it. The policies, and what each may lose:

- "siblings" (default): concurrent writes are all kept and returned; the application
  merges them, or a resolver given to the bucket does it on every read. Loses nothing.
- "lww": the write with the highest hybrid timestamp wins, decided on the nodes. Loses
  concurrent writes by design.
- "counter", "set", "map": CRDTs merged on the nodes; operations from both sides of a
  partition all count. Lose nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterable
from typing import Any, TypeVar

from dynaray import codec, records, versions
from dynaray.catalog import BucketProps
from dynaray.client import Client, GetResult, siblings_op
from dynaray.context import Context, check_context, parse_context
from dynaray.errors import DynarayError, QuorumError

T = TypeVar("T")


async def open_bucket(
    client: Client,
    name: str,
    policy: str | None,
    resolver: Callable[[list], Any] | None,
    r: int | None,
    w: int | None,
) -> Bucket:
    """Find the bucket's stored properties, or store them if the bucket is new."""
    codec.bucket_bytes(name)
    if name.startswith("_"):
        raise ValueError(f"bucket names starting with '_' are reserved; got {name!r}")
    if policy is not None and policy not in records.POLICIES:
        raise ValueError(f"policy must be one of {records.POLICIES}, got {policy!r}")
    if resolver is not None and not callable(resolver):
        raise ValueError("resolver must be a function taking the list of sibling values")
    if resolver is not None and policy not in (None, "siblings"):
        raise ValueError(
            f"a resolver merges siblings, which a {policy!r} bucket never has; drop it, or use "
            "policy='siblings'"
        )
    if r is not None or w is not None:
        # Stored for good with the bucket: checked now, or every request would fail.
        await client.routing._ensure_ring()
        client.routing.quorum(r, w)
    wanted = BucketProps(policy or "siblings", r, w)
    if name == codec.DEFAULT_BUCKET:
        if wanted.policy != "siblings":
            raise ValueError("the default bucket's policy is 'siblings'; name another bucket")
        return Bucket(client, name, wanted, resolver)
    routing = client.routing
    stored = await routing.ask_any(f"opening bucket {name!r}", "bucket_props", name)
    if not stored and not (policy is None and r is None and w is None):
        await routing._ensure_ring()
        _, _, quorum_w = routing.quorum()
        reply = await routing.ask_any(
            f"creating bucket {name!r}", "create_bucket", name, wanted.encode(), quorum_w
        )
        if reply[0] != "ok":
            raise QuorumError("create bucket", name, *reply[1:])
        stored = reply[1]
    if len(stored) > 1:
        raise _created_twice(name, stored)
    if not stored:
        # A bucket without stored properties is a "siblings" bucket, until it is found
        # created (Bucket._need looks again).
        return Bucket(client, name, wanted, resolver, found=False)
    props = BucketProps.decode(stored[0])
    if resolver is not None and props.policy != "siblings":
        raise ValueError(
            f"bucket {name!r} has policy {props.policy!r}, which never keeps siblings: a "
            "resolver would never run; open it without one"
        )
    for field in ("policy", "r", "w"):
        asked = getattr(wanted, field) if field != "policy" else policy
        if asked is not None and asked != getattr(props, field):
            stored = getattr(props, field)
            raise ValueError(
                f"bucket {name!r} exists with {field}={stored!r}"
                + (" (the client's default)" if stored is None else "")
                + f", not {asked!r}; a bucket's properties do not change: use another bucket "
                "name"
            )
    return Bucket(client, name, props, resolver)


def _created_twice(name: str, stored: list[bytes]) -> DynarayError:
    return DynarayError(
        f"bucket {name!r} was created twice at once with different properties "
        f"{[BucketProps.decode(v) for v in stored]}; use another bucket name"
    )


class Bucket:
    """Keys of one bucket, with the calls its policy allows. Sync calls wrap async twins."""

    def __init__(
        self,
        client: Client,
        name: str,
        props: BucketProps,
        resolver: Callable[[list], Any] | None = None,
        found: bool = True,
    ) -> None:
        self.client = client
        self.name = name
        self.props = props
        self.resolver = resolver
        # False: opened with no policy when no node it reached knew the bucket (new, or
        # created on the other side of a partition); its properties may turn up later.
        self.found = found

    @property
    def policy(self) -> str:
        return self.props.policy

    def __repr__(self) -> str:
        return f"<dynaray.Bucket {self.name!r} policy={self.policy}>"

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.client._run(coro)

    async def _need(self, *policies: str, call: str) -> None:
        if self.policy not in policies and not self.found:
            # Created since this handle was opened, or known now that a partition healed:
            # take the stored properties rather than refuse for good.
            stored = await self.client.routing.ask_any(
                f"opening bucket {self.name!r}", "bucket_props", self.name
            )
            if len(stored) > 1:
                raise _created_twice(self.name, stored)
            if len(stored) == 1:
                self.props, self.found = BucketProps.decode(stored[0]), True
        if self.policy in policies:
            return
        if not self.found:
            raise ValueError(
                f"{call}() needs a bucket with policy {' or '.join(policies)}; no node reached "
                f"knows bucket {self.name!r} (never created, or created where this client "
                f"cannot reach, across a partition): create it with client.bucket("
                f"{self.name!r}, policy={policies[0]!r})"
            )
        raise ValueError(
            f"{call}() needs a bucket with policy {' or '.join(policies)}; "
            f"bucket {self.name!r} has policy {self.policy!r}"
        )

    def _w(self, w: int | None) -> int | None:
        return self.props.w if w is None else w

    # -- reads ------------------------------------------------------------------------------

    async def aget(
        self,
        key: str | bytes,
        *,
        r: int | None = None,
        resolver: Callable[[list], Any] | None = None,
    ) -> GetResult:
        """Read a key. With a resolver (here or on the bucket), siblings are merged by it and
        the merge is written back with the read's context, so one value is returned."""
        result = await self.client._read(self.name, key, self.props.r if r is None else r)
        if self.policy in records.CRDT_KINDS and not result.values:
            empty = {"counter": 0, "set": set(), "map": {}}[self.policy]
            return GetResult(result.key, [empty], result.context, stored=False)
        resolver = resolver or self.resolver
        if resolver is None or len(result.values) < 2:
            return result
        merged = resolver(list(result.values))
        context = await self.aput(key, result.context, merged)
        return GetResult(result.key, [merged], context)

    def get(
        self,
        key: str | bytes,
        *,
        r: int | None = None,
        resolver: Callable[[list], Any] | None = None,
    ) -> GetResult:
        return self._run(self.aget(key, r=r, resolver=resolver))

    # -- siblings and lww -------------------------------------------------------------------

    async def aput(
        self, key: str | bytes, context: Context | bytes | None, value: Any, *, w: int | None = None
    ) -> Context:
        """Write a value (siblings: with the context of the read it follows; lww: a context
        is not needed, and one given orders this write after what it saw; the newest
        timestamp wins)."""
        await self._need("siblings", "lww", call="put")
        raw = codec.encode_value(value)
        if self.policy == "lww":
            return await self.client._write(self.name, key, _lww_op(context, raw), self._w(w))
        return await self.client._write(self.name, key, siblings_op(context, raw), self._w(w))

    def put(
        self, key: str | bytes, context: Context | bytes | None, value: Any, *, w: int | None = None
    ) -> Context:
        return self._run(self.aput(key, context, value, w=w))

    async def adelete(
        self, key: str | bytes, context: Context | bytes | None = None, *, w: int | None = None
    ) -> Context:
        """Delete (a tombstone). Siblings: only what the context saw; with no context, what a
        read sees now. LWW: a tombstone stamped above what the context saw (and what the
        coordinator holds); like any blind lww write, one that missed a later-stamped write
        (a replica that was down, a clock ahead) does not hide it."""
        await self._need("siblings", "lww", call="delete")
        if self.policy == "lww":  # its context is checked as put checks it
            op = _lww_op(context, records.LWW_DELETED)
            return await self.client._write(self.name, key, op, self._w(w))
        context = await self._seen(key, context)
        return await self.client._write(self.name, key, siblings_op(context, None), self._w(w))

    def delete(
        self, key: str | bytes, context: Context | bytes | None = None, *, w: int | None = None
    ) -> Context:
        return self._run(self.adelete(key, context, w=w))

    async def _seen(self, key: str | bytes, context: Context | bytes | None) -> Context | bytes:
        """The context a delete or remove takes out: the given one, or with none what a
        quorum read sees now. Not what the coordinating node alone holds: a node that missed
        an acknowledged add (it was down, or its range is still arriving) would take out
        nothing."""
        if context is None:
            return (await self.client._read(self.name, key, self.props.r)).context
        return context

    # -- counter ----------------------------------------------------------------------------

    async def aincrement(self, key: str | bytes, delta: int = 1, *, w: int | None = None) -> None:
        """Add delta (negative to decrement); concurrent increments all count."""
        await self._need("counter", call="increment")
        _check_delta(delta)
        await self.client._write(self.name, key, ["counter", ["increment", delta]], self._w(w))

    def increment(self, key: str | bytes, delta: int = 1, *, w: int | None = None) -> None:
        return self._run(self.aincrement(key, delta, w=w))

    # -- set --------------------------------------------------------------------------------

    async def aadd(self, key: str | bytes, *elements: Any, w: int | None = None) -> None:
        """Add elements; an add concurrent with a remove of the same element wins."""
        await self._need("set", call="add")
        if not elements:
            raise ValueError(f"add() needs at least one element, e.g. add({key!r}, 'x')")
        op = ["set", ["add", _added(elements)]]
        await self.client._write(self.name, key, op, self._w(w))

    def add(self, key: str | bytes, *elements: Any, w: int | None = None) -> None:
        return self._run(self.aadd(key, *elements, w=w))

    async def aremove(
        self,
        key: str | bytes,
        *elements: Any,
        context: Context | bytes | None = None,
        w: int | None = None,
    ) -> None:
        """Remove the additions of elements that the context saw (with no context, that a
        read sees now: the client reads first); a concurrent add survives."""
        await self._need("set", call="remove")
        if not elements:
            raise ValueError(f"remove() needs at least one element, e.g. remove({key!r}, 'x')")
        encoded = [codec.encode_element(e) for e in elements]
        context = await self._seen(key, context)

        def op(tied: bytes) -> list:
            return ["set", ["remove", encoded, versions.vv_to_wire(check_context(context, tied))]]

        await self.client._write(self.name, key, op, self._w(w))

    def remove(
        self,
        key: str | bytes,
        *elements: Any,
        context: Context | bytes | None = None,
        w: int | None = None,
    ) -> None:
        return self._run(self.aremove(key, *elements, context=context, w=w))

    # -- map --------------------------------------------------------------------------------

    async def aupdate(
        self,
        key: str | bytes,
        *,
        increment: dict[str, int] | None = None,
        add: dict[str, list] | None = None,
        remove: dict[str, list] | None = None,
        assign: dict[str, Any] | None = None,
        enable: list[str] | None = None,
        disable: list[str] | None = None,
        context: Context | bytes | None = None,
        w: int | None = None,
    ) -> None:
        """Update several fields of a map in one write:

        increment={"visits": 1} (counter fields), add={"tags": ["a"]} and
        remove={"tags": ["b"]} (set fields), assign={"name": "Ann"} (last-write-wins
        register fields), enable=["vip"] / disable=["vip"] (flag fields). Removes and
        disables take out what the context saw (with no context, what a read sees now).
        """
        await self._need("map", call="update")
        map_ops(increment, add, remove, assign, enable, disable, None)  # refused before a read
        if remove or disable:
            context = await self._seen(key, context)
        context = parse_context(context)

        def op(tied: bytes) -> list:
            seen = None if context is None else versions.vv_to_wire(check_context(context, tied))
            update = ["update", map_ops(increment, add, remove, assign, enable, disable, seen)]
            if context is None:
                return ["map", update]
            return ["map", update, context.stamp]  # stamped above what the context saw

        await self.client._write(self.name, key, op, self._w(w))

    def update(self, key: str | bytes, **fields: Any) -> None:
        unknown = sorted(set(fields) - set(_UPDATE_FIELDS))
        if unknown:  # (aupdate's own TypeError would name aupdate)
            raise TypeError(
                f"update() got unknown argument(s) {', '.join(unknown)}; it takes "
                f"{', '.join(_UPDATE_FIELDS)}"
            )
        return self._run(self.aupdate(key, **fields))


_UPDATE_FIELDS = ("increment", "add", "remove", "assign", "enable", "disable", "context", "w")


def map_ops(increment, add, remove, assign, enable, disable, seen) -> list:
    """Field operations of one map update, checked before anything is sent."""
    ops: list = []
    for name, delta in _fields(increment, "increment", '{"visits": 1}'):
        _check_delta(delta)
        ops.append([_field(name), "counter", ["increment", delta]])
    for name, elements in _fields(add, "add", '{"tags": ["a"]}'):
        ops.append([_field(name), "set", ["add", _added(_many(elements, f"add[{name!r}]"))]])
    for name, elements in _fields(remove, "remove", '{"tags": ["a"]}'):
        encoded = [codec.encode_element(e) for e in _many(elements, f"remove[{name!r}]")]
        ops.append([_field(name), "set", ["remove", encoded, seen]])
    for name, value in _fields(assign, "assign", '{"name": "Ann"}'):
        # The coordinating node stamps the register with its hybrid clock (records.update).
        ops.append([_field(name), "register", ["assign", 0, codec.encode_value(value)]])
    for name in _many(enable or (), "enable"):
        ops.append([_field(name), "flag", ["enable"]])
    for name in _many(disable or (), "disable"):
        ops.append([_field(name), "flag", ["disable", seen]])
    if not ops:
        raise ValueError(
            "update() needs at least one of increment, add, remove, assign, enable, disable"
        )
    return ops


def _fields(given: object, what: str, example: str) -> list[tuple]:
    """The (field, argument) pairs of one kind of map operation, given as a dict."""
    if given is None:
        return []
    if not isinstance(given, dict):
        raise TypeError(f"{what} takes a dict of field names, e.g. {what}={example}")
    return list(given.items())


def _many(elements: object, what: str) -> list:
    """A list of elements or field names; a lone string is refused, not split into
    its characters."""
    if not isinstance(elements, list | tuple | set | frozenset):  # a str, too
        raise TypeError(f"{what} takes a list, e.g. [{elements!r}], got {type(elements).__name__}")
    return list(elements)


def _added(elements: Iterable[Any]) -> list[bytes]:
    """Set elements to add, encoded. They come back as a Python set, so each must be
    hashable; a list or a dict in a set could never be read back. (A remove takes any
    element, so one stored before this check can still be taken out.)"""
    encoded = []
    for element in elements:
        try:
            hash(element)
        except TypeError:
            raise ValueError(
                f"set elements must be hashable (str, bytes, numbers, tuples), got the "
                f"{type(element).__name__} {element!r}: to add several elements, give each "
                "as an argument (add(key, 'a', 'b')); to add one made of several parts, make "
                "it a tuple of str, bytes or numbers"
            ) from None
        encoded.append(codec.encode_element(element))
    return encoded


def _field(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"map field names are non-empty str, got {name!r}")
    try:
        name.encode("utf-8")  # as the record stores it; the node would refuse it late
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"map field name {name!r} is a str that UTF-8 cannot encode ({exc.reason} at "
            f"index {exc.start}); name the field with text UTF-8 can encode"
        ) from None
    return name


def _check_delta(delta: object) -> None:
    if not isinstance(delta, int) or isinstance(delta, bool):
        raise ValueError(f"a counter changes by an int, got {delta!r}")


def _lww_op(context: object, raw: bytes) -> Callable[[bytes], list]:
    """A last-write-wins write: a context is not needed, but one given must be the key's."""
    context = parse_context(context)

    def op(tied: bytes) -> list:
        if context is None:
            return ["lww", raw]
        check_context(context, tied)
        return ["lww", raw, context.stamp]  # stamped above what the context saw

    return op
