"""A key's stored record: what kind of data it holds, its state, and how two replicas merge.

The kind is the bucket's policy: "siblings" (a DVVSet of concurrent versions, resolved by the
client), "lww" (last write wins by hybrid timestamp, decided on the nodes), or a CRDT
("counter", "set", "map") merged on the nodes. Every replica-side merge (replication, read
repair, hinted handoff, anti-entropy) goes through merge() here, so each kind is merged the
same way everywhere. Records are versioned msgpack, validated on decode.
"""

from __future__ import annotations

from typing import NamedTuple

from dynaray import codec, crdt, versions
from dynaray.errors import InvalidRequest, KindMismatch, SiblingLimitError

FORMAT = 2
POLICIES = ("siblings", "lww", "counter", "set", "map")
CRDT_KINDS = ("counter", "set", "map")
# An LWW tombstone: no encoded client value is empty (they all carry a tag byte).
LWW_DELETED = b""
# Kinds whose values a stamp decides (lww, and a map's registers): a write of them is
# stamped above the copy its coordinator holds and above the stamp its writer read (the
# op's optional last part, from the context), so a write that follows another wins over
# it even when the coordinator's clock is behind the one that stamped the first, or it
# missed the first write.
STAMPED = ("lww", "map")
# The largest record a write may leave (its siblings, or a CRDT's whole state), encoded: a
# record travels whole in every read, replication, hint and repair.
MAX_RECORD_SIZE = 16 << 20


class Record(NamedTuple):
    kind: str
    state: object  # a DVVSet clock, an LWW [stamp, node, value], or a CRDT state
    stamp: int  # hybrid timestamp of the newest write merged in


def encode(record: Record) -> bytes:
    return codec.pack([FORMAT, record.kind, _state_wire(record), record.stamp])


def check_size(kind: str, encoded: bytes, before: int) -> None:
    """Refuse a write whose new record is over MAX_RECORD_SIZE and larger than the record
    it replaces (`before` bytes), before it is stored: a write that shrinks a record
    already over it (merged from copies each under it, or stored before the limit) is
    how it gets back under."""
    if len(encoded) <= max(MAX_RECORD_SIZE, before):
        return
    if kind == "siblings":
        advice = "read the key, merge its siblings and write the merge back with the context"
    elif kind in CRDT_KINDS:
        advice = f"the {kind} has grown too large: keep less in it, or spread it over keys"
    else:
        advice = "write a smaller value"
    raise InvalidRequest(
        f"this write would leave the key's stored record at {len(encoded):,} bytes, over the "
        f"limit of {MAX_RECORD_SIZE:,}; nothing was written: {advice}"
    )


def _state_wire(record: Record) -> object:
    return versions.to_wire(record.state) if record.kind == "siblings" else record.state


def to_wire(record: Record) -> list:
    return [record.kind, _state_wire(record), record.stamp]


def from_wire(obj: object) -> Record:
    if not isinstance(obj, list | tuple) or len(obj) != 3:
        raise ValueError("record must be [kind, state, stamp]")
    return _checked(*obj)


def _checked(kind: object, state: object, stamp: object) -> Record:
    if kind not in POLICIES:
        raise ValueError(f"unknown record kind {kind!r}")
    if not _is_stamp(stamp):
        raise ValueError("record stamp must be a non-negative integer")
    if kind == "siblings":
        return Record(kind, versions.from_wire(state), stamp)
    if kind == "lww":
        return Record(kind, _check_lww(state), stamp)
    return Record(kind, crdt.check(kind, state), stamp)


def _check_lww(state: object) -> list:
    if (
        not isinstance(state, list | tuple)
        or len(state) != 3
        or not isinstance(state[0], int)
        or not isinstance(state[1], str)
        or not isinstance(state[2], bytes)
    ):
        raise ValueError("lww state must be [stamp, node, value bytes]")
    return list(state)


def decode(data: bytes) -> Record:
    obj = _envelope(data)
    return _checked(obj[1], obj[2], obj[3])


def _envelope(data: bytes) -> list:
    """The [format, kind, state, stamp] list of an encoded record, its format checked."""
    try:
        obj = codec.unpack(data)
    except Exception as exc:
        raise ValueError(f"record is not valid msgpack: {exc}") from exc
    if type(obj) is not list or len(obj) != 4 or obj[0] != FORMAT:
        raise ValueError(f"record has an unknown format (expected format {FORMAT})")
    return obj


def merge(a: Record | None, b: Record | None) -> Record | None:
    """Join two replicas' records of one key: never loses a concurrent version or update."""
    if a is None or b is None:
        return a if b is None else b
    if a.kind != b.kind:
        raise KindMismatch(
            f"the key's copies hold two kinds of data, {a.kind} and {b.kind}, which cannot be "
            "merged: its bucket was created with two policies at once (on the two sides of a "
            "partition), or written through a handle opened before the bucket was created"
        )
    stamp = max(a.stamp, b.stamp)
    if a.kind == "siblings":
        return Record(a.kind, versions.sync(a.state, b.state), stamp)
    if a.kind == "lww":
        return Record(a.kind, max(list(a.state), list(b.state)), stamp)
    return Record(a.kind, crdt.merge(a.kind, a.state, b.state), stamp)


def merge_all(records: list[Record | None]) -> Record | None:
    merged = None
    for record in records:
        merged = merge(merged, record)
    return merged


def merge_encoded(raws: list[bytes | None]) -> bytes | None:
    """The stored encoding of the merge of several replicas' encoded copies of one key.

    Replicas of a key almost always agree byte for byte, and then nothing is decoded: a
    read costs a comparison of bytes, not a decode and merge of every reply.
    """
    present = [raw for raw in raws if raw is not None]
    if not present:
        return None
    first = present[0]
    if all(raw == first for raw in present):
        return first
    return encode(merge_all([decode(raw) for raw in present]))


def merge_into(stored: bytes | None, incoming: bytes) -> bytes | None:
    """What a replica stores after receiving `incoming` (encoded) for a key it holds as
    `stored`: the new encoding, or None when it already holds all of it. A key it does not
    hold takes the bytes as they came, with no decoding."""
    if stored is None:
        return incoming
    if stored == incoming:
        return None
    new = encode(merge(decode(stored), decode(incoming)))
    return None if new == stored else new


def stamp_of(raw: bytes) -> int:
    """The hybrid-clock stamp of an encoded record; ValueError if it is not one. Checks the
    envelope only: a peer's record was validated where it was made."""
    obj = _envelope(raw)
    if obj[1] not in POLICIES:
        raise ValueError(f"record has an unknown format (expected format {FORMAT})")
    stamp = obj[3]
    if not _is_stamp(stamp):
        raise ValueError("record stamp must be a non-negative integer")
    return stamp


def _is_stamp(stamp: object) -> bool:
    # Exactly int, as msgpack and the hybrid clock make them (a bool is never a timestamp).
    return type(stamp) is int and stamp >= 0


def same_encoded(a: bytes | None, b: bytes | None) -> bool:
    """Whether two encoded copies hold the same record (equal bytes, the usual case, or
    equal once decoded)."""
    if a == b:
        return True
    if a is None or b is None:
        return False
    return equal(decode(a), decode(b))


def siblings_in(raw: bytes) -> int:
    """How many versions an encoded siblings record holds (0 for other kinds), read from
    the encoding without validating it."""
    _, kind, state, _ = codec.unpack(raw)
    if kind != "siblings":
        return 0
    entries, anonymous = state
    return sum(len(entry[2]) for entry in entries) + len(anonymous)


def equal(a: Record | None, b: Record | None) -> bool:
    if a is None or b is None:
        return a is b
    if a.kind == "siblings" == b.kind:
        return versions.equal(a.state, b.state)
    return encode(a) == encode(b)


def is_tombstone(record: Record) -> bool:
    """Nothing left but deletions: what may eventually be reaped."""
    if record.kind == "siblings":
        return all(v is None for v in versions.values(record.state))
    if record.kind == "lww":
        return record.state[2] == LWW_DELETED
    return False


def update(
    stored: Record | None, op: list, node: str, stamp: int, sibling_limit: int = 100
) -> Record:
    """The coordinator applies one client operation as `node` at hybrid time `stamp`.

    op is ["siblings", context_vv, value | None], ["lww", value | LWW_DELETED], or
    [crdt_kind, crdt_op]; an lww or map op may end with the stamp its writer read (STAMPED).
    """
    kind = op[0] if op else None
    if kind not in POLICIES:
        raise InvalidRequest(f"unknown operation kind {kind!r}")
    parts = 3 if kind == "siblings" else 2
    if len(op) != parts and not (kind in STAMPED and len(op) == 3):
        raise InvalidRequest(f"a {kind} operation has {parts} parts")
    if kind in STAMPED:
        read = op[2] if len(op) == 3 else 0
        if not (_is_stamp(read) and read < 1 << 63):
            raise InvalidRequest("the stamp a write read must be an int in [0, 2**63)")
        stamp = max(stamp, read + 1, stored.stamp + 1 if stored is not None else 0)
    if kind == "siblings" and not (op[2] is None or isinstance(op[2], bytes)):
        raise InvalidRequest("a siblings write carries encoded value bytes, or None to delete")
    if stored is not None and stored.kind != kind:
        raise InvalidRequest(
            f"the key holds {stored.kind} data, but the request is for a {kind} bucket; "
            "a key's bucket policy cannot change"
        )
    if kind == "siblings":
        incoming = versions.new(versions.vv_from_wire(op[1]), op[2])
        clock = versions.update(incoming, stored.state if stored else None, node)
        if versions.size(clock) > sibling_limit:
            raise SiblingLimitError(
                f"this write would leave {versions.size(clock)} siblings, over the limit of "
                f"{sibling_limit}: read the key, merge its values and write the merge back "
                "with the read's context"
            )
        return Record(kind, clock, max(stamp, stored.stamp if stored else 0))
    if kind == "lww":
        if not isinstance(op[1], bytes):
            raise InvalidRequest("an lww write carries encoded value bytes")
        mine = Record(kind, [stamp, node, op[1]], stamp)
        return merge(stored, mine)
    if kind == "map":
        op = ["map", _stamp_registers(op[1], stamp)]
    try:
        state = crdt.apply(kind, stored.state if stored else None, op[1], node)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from exc
    return Record(kind, state, max(stamp, stored.stamp if stored else 0))


def _stamp_registers(op: list, stamp: int) -> list:
    """Registers inside maps are last-writer-wins by the coordinator's hybrid clock, like lww
    buckets: the client's stamp is replaced, so clients' clocks never decide."""
    if not isinstance(op, list) or len(op) != 2 or op[0] != "update" or not isinstance(op[1], list):
        return op
    fields = []
    for field in op[1]:
        if isinstance(field, list) and len(field) == 3 and isinstance(field[2], list):
            name, kind, field_op = field
            if kind == "register" and len(field_op) == 3 and field_op[0] == "assign":
                field_op = ["assign", stamp, field_op[2]]
            elif kind == "map":
                field_op = _stamp_registers(field_op, stamp)
            field = [name, kind, field_op]
        fields.append(field)
    return ["update", fields]


def write_name(op: list) -> str:
    """What a write is called in errors: "delete" (a siblings or lww write of no value),
    "put", or "update" (a counter, set or map operation, which no context makes safe to
    repeat)."""
    kind = op[0] if op else None
    if kind in ("siblings", "lww"):
        value = op[2] if kind == "siblings" else op[1]
        return "delete" if value is None or value == b"" else "put"
    return "update" if kind in ("counter", "set", "map") else "put"


def idempotent(op: list) -> bool:
    """Whether a write may be applied again (a client or forwarding node retrying on another
    coordinator after the first died mid-request, when it may have applied it) without
    undoing a write made in between that saw the first application. Not: a counter
    increment (counted twice); an lww value or map register (stamped again, above the
    later write, it wins over it); a set add or flag enable (a new dot, which a later
    remove or disable that saw the first one does not cover: the element or flag comes
    back). A siblings write applied again is a sibling of a later one, nothing lost."""
    kind = op[0] if op else None
    if kind in ("counter", "lww"):
        return False
    if kind == "set":
        return not _adds(op[1])
    if kind == "map":
        return _map_idempotent(op[1])
    return True


def _adds(op: object) -> bool:
    """Whether a set or flag operation makes a new dot (an add, an enable)."""
    return isinstance(op, list) and bool(op) and op[0] in ("add", "enable")


def _map_idempotent(op: object) -> bool:
    if not isinstance(op, list) or len(op) != 2 or not isinstance(op[1], list):
        return True
    return not any(
        isinstance(field, list)
        and len(field) == 3
        and (
            field[1] in ("counter", "register")
            or (field[1] in ("set", "flag") and _adds(field[2]))
            or (field[1] == "map" and not _map_idempotent(field[2]))
        )
        for field in op[1]
    )


def actors(record: Record | None) -> list[str]:
    """The actor ids the record names: whose dots or counts it holds, and the writers of a
    map's registers ([] for lww, whose writes carry no dots)."""
    if record is None or record.kind == "lww":
        return []
    if record.kind == "siblings":
        return [node for node, _, _ in record.state[0]]
    return crdt.actors(record.kind, record.state)


def written_context(record: Record, op: list, actor: str) -> list:
    """The causal context a write's answer carries, in wire form: what its writer saw, and
    the write itself, never a concurrent version the writer did not see (for siblings
    records; other kinds answer the record's whole context: lww writes replace whatever
    they meet, and the CRDT calls drop the answer, taking a fresh read's context for a
    remove).

    The record's whole context (context_of) would cover the siblings that survived the
    write, and a client that wrote again with it would drop them unseen. A version vector
    cannot leave out one dot of a node and cover a later one, so when an older value of
    the coordinating actor survives beside the write, the answer is the writer's own
    context alone: writing with it again keeps the write too, as a sibling to resolve.
    Tombstones beside it do not count: a read never shows one (its context covers them
    all), and one covered discards nothing but itself. Counted, a blind write after a
    delete answered no context, and each write in a chain of them stayed a sibling.
    """
    if record.kind != "siblings":
        return context_of(record)
    seen = versions.vv_from_wire(op[1])
    for node, counter, vals in record.state[0]:
        # vals[0] is the write's value; the rest are older values of ours that survived.
        if node == actor and all(value is None for value in vals[1:]):
            return versions.vv_to_wire(versions.merge_contexts(seen, ((node, counter),)))
    return versions.vv_to_wire(versions.merge_contexts(seen))


def context_stamp(record: Record | None) -> int:
    """The stamp a client's context carries: what a later write of a STAMPED kind must be
    stamped above; 0 for the other kinds, whose order the version vectors keep."""
    return record.stamp if record is not None and record.kind in STAMPED else 0


def context_of(record: Record | None) -> list:
    """The causal context a client gets with a read, in wire form."""
    if record is None:
        return []
    if record.kind == "siblings":
        return versions.vv_to_wire(versions.join(record.state))
    if record.kind == "lww":
        return []
    return crdt.context(record.kind, record.state)
