"""Dotted Version Vector Sets: per-key causality tracking that keeps every concurrent write as a
sibling while staying bounded by the number of coordinating nodes, not the number of clients.

A clock holds, per coordinator node, a counter and the still-live values that node wrote; the
values of an entry (id, n, (v_n, v_n-1, ...)) carry the implicit dots n, n-1, ... and every dot
of that node at or below n - len(values) is known to have been overwritten.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeAlias

VersionVector: TypeAlias = tuple[tuple[str, int], ...]
Entry: TypeAlias = tuple[str, int, tuple[object, ...]]
Clock: TypeAlias = tuple[tuple[Entry, ...], tuple[object, ...]]

EMPTY: Clock = ((), ())


def new(context: VersionVector | None, value: object) -> Clock:
    """A client-side clock: what the writer saw (no values) plus the new value, not yet dotted."""
    entries = tuple((node, counter, ()) for node, counter in merge_contexts(context or ()))
    return entries, (value,)


def update(new_clock: Clock, stored: Clock | None, node_id: str) -> Clock:
    """The coordinator's write event: dot the new value and drop what its context had seen.

    Syncing the context (entries with no values) into the stored clock discards exactly the
    stored values whose dots the writer had seen; concurrent ones survive as siblings. The
    event then takes the next counter of node_id over both histories, so the dot is unique.
    """
    if not isinstance(node_id, str):
        raise TypeError(f"node_id must be a str, got {type(node_id).__name__}")
    entries, anonymous = new_clock
    if len(anonymous) != 1:
        raise ValueError(
            f"update needs a clock from new() holding exactly one undotted value, "
            f"got {len(anonymous)}"
        )
    base: Clock = (entries, ())
    if stored is not None:
        base = sync(base, stored)
    return _event(base[0], node_id, anonymous[0]), base[1]


def _event(entries: tuple[Entry, ...], node_id: str, value: object) -> tuple[Entry, ...]:
    out: list[Entry] = []
    placed = False
    for node, counter, vals in entries:
        if not placed and node == node_id:
            out.append((node, counter + 1, (value, *vals)))
            placed = True
            continue
        if not placed and node > node_id:
            out.append((node_id, 1, (value,)))
            placed = True
        out.append((node, counter, vals))
    if not placed:
        out.append((node_id, 1, (value,)))
    return tuple(out)


def sync(a: Clock, b: Clock) -> Clock:
    """Merge two replicas' clocks (commutative, associative, idempotent up to equal())."""
    ea, eb = a[0], b[0]
    out: list[Entry] = []
    i = j = 0
    # Both entry lists are sorted by node id, so a single merge pass pairs them up.
    while i < len(ea) or j < len(eb):
        if j == len(eb) or (i < len(ea) and ea[i][0] < eb[j][0]):
            entry = ea[i]
            i += 1
        elif i == len(ea) or eb[j][0] < ea[i][0]:
            entry = eb[j]
            j += 1
        else:
            entry = _merge_entry(ea[i], eb[j])
            i += 1
            j += 1
        # A zero counter carries no information; dropping it keeps equal clocks identical.
        if entry[1] > 0:
            out.append(entry)
    return tuple(out), _union(a[1], b[1])


def _merge_entry(x: Entry, y: Entry) -> Entry:
    if x[1] < y[1]:
        x, y = y, x
    node, n1, v1 = x
    _, n2, v2 = y
    # x has seen every dot y has (n1 >= n2). A value of x survives unless y already discarded
    # its dot, i.e. the dot is <= n2 - len(v2). Values of y are never needed: a dot above
    # n1 - len(v1) is also in v1 (same dot, same value), and one at or below it was discarded
    # by x. So the result is the newest n1 - (n2 - len(v2)) values of x.
    keep = n1 - n2 + len(v2)
    if keep >= len(v1):
        return x
    return node, n1, v1[:keep]


def _union(a: tuple[object, ...], b: tuple[object, ...]) -> tuple[object, ...]:
    # Values are opaque and may be unhashable, so deduplicate by equality only; the order is
    # that of a then b, and equal() ignores it.
    out = list(a)
    for value in b:
        if value not in out:
            out.append(value)
    return tuple(out)


def join(c: Clock) -> VersionVector:
    """The causal context of a clock: every dot it has seen, as a version vector."""
    return tuple((node, counter) for node, counter, _ in c[0] if counter > 0)


def values(c: Clock) -> list[object]:
    """All sibling values: entries' values (by node id, newest first), then undotted ones."""
    out: list[object] = [v for _, _, vals in c[0] for v in vals]
    out.extend(c[1])
    return out


def size(c: Clock) -> int:
    return sum(len(vals) for _, _, vals in c[0]) + len(c[1])


def descends(a: VersionVector, b: VersionVector) -> bool:
    """True if a has seen everything b has (a >= b pointwise; a missing node counts as 0)."""
    seen = dict(a)
    return all(seen.get(node, 0) >= counter for node, counter in b)


def concurrent(a: VersionVector, b: VersionVector) -> bool:
    return not descends(a, b) and not descends(b, a)


def equal(a: Clock, b: Clock) -> bool:
    """Same causal history and same live values; undotted values compare as a set."""
    # A zero-counter entry (possible in decoded input) says nothing, so it is ignored.
    ea = [e for e in a[0] if e[1] > 0]
    eb = [e for e in b[0] if e[1] > 0]
    if ea != eb:
        return False
    return all(v in b[1] for v in a[1]) and all(v in a[1] for v in b[1])


def merge_contexts(*vvs: VersionVector) -> VersionVector:
    """Pointwise maximum; accepts unsorted input and returns a sorted vector without zeros."""
    best: dict[str, int] = {}
    for vv in vvs:
        for node, counter in vv:
            if counter > best.get(node, 0):
                best[node] = counter
    return tuple(sorted(best.items()))


def to_wire(c: Clock) -> list[object]:
    return [[[node, counter, list(vals)] for node, counter, vals in c[0]], list(c[1])]


def from_wire(obj: object) -> Clock:
    """Decode and validate a clock from to_wire form (lists or tuples); ValueError if malformed."""
    clock = _well_formed(obj)
    if clock is not None:
        return clock
    # Something is off (or it came as tuples): the checks below say what.
    pair = _sequence(obj, "clock")
    if len(pair) != 2:
        raise ValueError(f"clock must be [entries, anonymous], got {len(pair)} items")
    entries: list[Entry] = []
    previous: str | None = None
    for index, raw in enumerate(_sequence(pair[0], "clock entries")):
        where = f"clock entry {index}"
        item = _sequence(raw, where)
        if len(item) != 3:
            raise ValueError(f"{where} must be [node_id, counter, values], got {len(item)} items")
        node = _node_id(item[0], where, previous)
        counter = _counter(item[1], where)
        vals = _values(item[2], f"{where} values")
        if len(vals) > counter:
            raise ValueError(
                f"{where} ({node!r}) has {len(vals)} values but counter {counter}; "
                "an entry cannot hold more values than dots"
            )
        entries.append((node, counter, vals))
        previous = node
    return tuple(entries), _values(pair[1], "clock anonymous values")


def _well_formed(obj: object) -> Clock | None:
    """The clock, if obj is a well-formed wire clock as msgpack decodes one; else None.

    Every read and every replica write decodes clocks, so the usual case is checked with
    the fewest operations (exact types, plain loops); from_wire explains any failure.
    """
    if type(obj) is not list or len(obj) != 2:
        return None
    raw_entries, anonymous = obj
    if type(raw_entries) is not list or type(anonymous) is not list:
        return None
    entries: list[Entry] = []
    previous: str | None = None
    for raw in raw_entries:
        if type(raw) is not list or len(raw) != 3:
            return None
        node, counter, vals = raw
        if (
            type(node) is not str
            or (previous is not None and node <= previous)
            or type(counter) is not int
            or counter < 0
            or type(vals) is not list
            or len(vals) > counter
            or not _stored_values(vals)
        ):
            return None
        entries.append((node, counter, tuple(vals)))
        previous = node
    if not _stored_values(anonymous):
        return None
    return tuple(entries), tuple(anonymous)


def _stored_values(vals: list) -> bool:
    """Whether every value is bytes or None (a tombstone), as a clock holds them."""
    for value in vals:  # noqa: SIM110 - a plain loop: all() over a generator costs more here
        if value is not None and type(value) is not bytes:
            return False
    return True


def vv_to_wire(vv: VersionVector) -> list[object]:
    return [[node, counter] for node, counter in vv]


def vv_from_wire(obj: object) -> VersionVector:
    """Decode and validate a version vector from vv_to_wire form; ValueError if malformed."""
    out: list[tuple[str, int]] = []
    previous: str | None = None
    for index, raw in enumerate(_sequence(obj, "version vector")):
        where = f"version vector entry {index}"
        item = _sequence(raw, where)
        if len(item) != 2:
            raise ValueError(f"{where} must be [node_id, counter], got {len(item)} items")
        node = _node_id(item[0], where, previous)
        out.append((node, _counter(item[1], where)))
        previous = node
    return tuple(out)


def _sequence(obj: object, what: str) -> Sequence[object]:
    # Only lists and tuples: msgpack yields one or the other, and a str or bytes would
    # otherwise be iterated character by character.
    if not isinstance(obj, list | tuple):
        raise ValueError(f"{what} must be a list, got {type(obj).__name__}")
    return obj


def _node_id(obj: object, where: str, previous: str | None) -> str:
    if not isinstance(obj, str):
        raise ValueError(f"{where}: node id must be a str, got {type(obj).__name__}")
    # Sorted, unique ids are what lets sync pair entries in one pass; a duplicate would make
    # the clock ambiguous.
    if previous is not None and obj <= previous:
        raise ValueError(
            f"{where}: node ids must be sorted and unique, but {obj!r} follows {previous!r}"
        )
    return obj


def _counter(obj: object, where: str) -> int:
    # bool is an int subclass but never a meaningful counter.
    if not isinstance(obj, int) or isinstance(obj, bool):
        raise ValueError(f"{where}: counter must be an int, got {type(obj).__name__}")
    if obj < 0:
        raise ValueError(f"{where}: counter must be >= 0, got {obj}")
    return obj


def _values(obj: object, what: str) -> tuple[object, ...]:
    vals = _sequence(obj, what)
    for index, value in enumerate(vals):
        if value is not None and not isinstance(value, bytes):
            raise ValueError(
                f"{what}[{index}] must be bytes or None (tombstone), got {type(value).__name__}"
            )
    return tuple(vals)
