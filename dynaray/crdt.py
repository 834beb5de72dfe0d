"""State-based CRDTs merged on the storage nodes: counter, add-wins set, register, flag, map.

Modelled on Riak's riak_dt types (pncounter, orswot, lwwreg, enable-wins flag, map). States
are plain msgpack data in canonical form (sorted lists), so equal states encode to equal
bytes and Merkle trees of replicas agree. Pure: no Ray, no I/O, no clocks.
"""

from __future__ import annotations

TYPES = ("counter", "set", "register", "flag", "map")


class CRDTError(ValueError):
    """An operation that cannot apply to the data type."""


# -- dots and clocks ---------------------------------------------------------------------------
# A clock is {actor: counter}; a dot (actor, n) is covered by a clock when clock[actor] >= n.


def _clock(wire: list) -> dict[str, int]:
    return {actor: n for actor, n in wire}


def _clock_wire(clock: dict[str, int]) -> list:
    return [[actor, clock[actor]] for actor in sorted(clock) if clock[actor] > 0]


def _dots(wire: list) -> set[tuple[str, int]]:
    return {(actor, n) for actor, n in wire}


def _dots_wire(dots: set[tuple[str, int]]) -> list:
    return [[actor, n] for actor, n in sorted(dots)]


def _covered(dot: tuple[str, int], clock: dict[str, int]) -> bool:
    return clock.get(dot[0], 0) >= dot[1]


def _join_clocks(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {actor: max(a.get(actor, 0), b.get(actor, 0)) for actor in a.keys() | b.keys()}


def _join_dots(
    a: set[tuple[str, int]], ca: dict[str, int], b: set[tuple[str, int]], cb: dict[str, int]
) -> set[tuple[str, int]]:
    """Observed-remove merge: a dot survives if both sides hold it, or one side holds it and
    the other has not seen it (had it seen it and dropped it, it was removed)."""
    return (
        (a & b)
        | {d for d in a - b if not _covered(d, cb)}
        | {d for d in b - a if not _covered(d, ca)}
    )


def _next_dot(clock: dict[str, int], actor: str) -> tuple[str, int]:
    clock[actor] = clock.get(actor, 0) + 1
    return (actor, clock[actor])


# -- each type -----------------------------------------------------------------------------------


def new(kind: str) -> object:
    if kind == "counter":
        return []
    if kind in ("set", "flag"):
        return [[], []]
    if kind == "register":
        return []
    if kind == "map":
        return []
    raise ValueError(f"unknown CRDT kind {kind!r}; kinds are {TYPES}")


def merge(kind: str, a: object, b: object) -> object:
    if kind == "counter":
        entries: dict[str, list[int]] = {}
        for actor, p, n in [*a, *b]:
            old = entries.get(actor, [0, 0])
            entries[actor] = [max(old[0], p), max(old[1], n)]
        return [[actor, *entries[actor]] for actor in sorted(entries)]
    if kind == "set":
        ca, cb = _clock(a[0]), _clock(b[0])
        ea = {elem: _dots(d) for elem, d in a[1]}
        eb = {elem: _dots(d) for elem, d in b[1]}
        out = []
        for elem in sorted(ea.keys() | eb.keys()):
            dots = _join_dots(ea.get(elem, set()), ca, eb.get(elem, set()), cb)
            if dots:
                out.append([elem, _dots_wire(dots)])
        return [_clock_wire(_join_clocks(ca, cb)), out]
    if kind == "flag":
        ca, cb = _clock(a[0]), _clock(b[0])
        dots = _join_dots(_dots(a[1]), ca, _dots(b[1]), cb)
        return [_clock_wire(_join_clocks(ca, cb)), _dots_wire(dots)]
    if kind == "register":
        if not a or not b:
            return list(a or b)
        return list(max(list(a), list(b)))
    if kind == "map":
        fields = {(name, k): state for name, k, state in a}
        for name, k, state in b:
            old = fields.get((name, k))
            fields[(name, k)] = state if old is None else merge(k, old, state)
        return [[name, k, fields[(name, k)]] for name, k in sorted(fields)]
    raise ValueError(f"unknown CRDT kind {kind!r}")


def apply(kind: str, state: object | None, op: list, actor: str) -> object:
    """The coordinator applies one client operation as `actor`."""
    state = new(kind) if state is None else state
    if not isinstance(op, list | tuple) or not op:
        raise CRDTError(f"a {kind} operation is a non-empty list, got {op!r}")
    name = op[0]
    if kind == "counter":
        if name != "increment" or len(op) != 2:
            raise CRDTError(f"counter operations are ['increment', delta], got {op!r}")
        delta = op[1]
        if not isinstance(delta, int) or isinstance(delta, bool):
            raise CRDTError(f"a counter changes by an int, got {delta!r}")
        entries = {a: [p, n] for a, p, n in state}
        p, n = entries.get(actor, [0, 0])
        entries[actor] = [p + max(delta, 0), n + max(-delta, 0)]
        return [[a, *entries[a]] for a in sorted(entries)]
    if kind == "set":
        clock = _clock(state[0])
        entries = {elem: _dots(d) for elem, d in state[1]}
        if name == "add" and len(op) == 2:
            for elem in _elements(op[1]):
                entries[elem] = {_next_dot(clock, actor)}
        elif name == "remove" and len(op) == 3:
            seen = clock if op[2] is None else _clock(_check_clock(op[2]))
            for elem in _elements(op[1]):
                kept = {d for d in entries.get(elem, set()) if not _covered(d, seen)}
                if kept:
                    entries[elem] = kept
                else:
                    entries.pop(elem, None)
        else:
            raise CRDTError(f"set operations are ['add', elems] or ['remove', elems, ctx]: {op!r}")
        return [_clock_wire(clock), [[e, _dots_wire(entries[e])] for e in sorted(entries)]]
    if kind == "flag":
        clock, dots = _clock(state[0]), _dots(state[1])
        if name == "enable" and len(op) == 1:
            dots = {_next_dot(clock, actor)}
        elif name == "disable" and len(op) == 2:
            seen = clock if op[1] is None else _clock(_check_clock(op[1]))
            dots = {d for d in dots if not _covered(d, seen)}
        else:
            raise CRDTError(f"flag operations are ['enable'] or ['disable', ctx]: {op!r}")
        return [_clock_wire(clock), _dots_wire(dots)]
    if kind == "register":
        if name != "assign" or len(op) != 3 or not isinstance(op[1], int):
            raise CRDTError(f"register operations are ['assign', timestamp, value]: {op!r}")
        if not isinstance(op[2], bytes):
            raise CRDTError("a register holds bytes")
        return merge("register", state, [op[1], actor, op[2]])
    if kind == "map":
        if name != "update" or len(op) != 2 or not isinstance(op[1], list | tuple):
            raise CRDTError(f"map operations are ['update', [[field, kind, op], ...]]: {op!r}")
        fields = {(n, k): s for n, k, s in state}
        for field in op[1]:
            if not isinstance(field, list | tuple) or len(field) != 3:
                raise CRDTError(f"a map field operation is [name, kind, op], got {field!r}")
            fname, fkind, fop = field
            if not isinstance(fname, str) or fkind not in TYPES:
                raise CRDTError(f"map field {fname!r} needs a str name and a kind in {TYPES}")
            fields[(fname, fkind)] = apply(fkind, fields.get((fname, fkind)), fop, actor)
        return [[n, k, fields[(n, k)]] for n, k in sorted(fields)]
    raise ValueError(f"unknown CRDT kind {kind!r}")


def value(kind: str, state: object | None) -> object:
    state = new(kind) if state is None else state
    if kind == "counter":
        return sum(p - n for _, p, n in state)
    if kind == "set":
        return frozenset(elem for elem, _ in state[1])
    if kind == "flag":
        return bool(state[1])
    if kind == "register":
        return state[2] if state else None
    if kind == "map":
        out: dict[str, object] = {}
        for name, k, s in state:
            out[name if name not in out else f"{name}:{k}"] = value(k, s)
        return out
    raise ValueError(f"unknown CRDT kind {kind!r}")


def context(kind: str, state: object | None) -> list:
    """The causal context a client sends back with a remove or disable."""
    if state is None or kind in ("counter", "register"):
        return []
    if kind in ("set", "flag"):
        return [list(e) for e in state[0]]
    if kind == "map":
        clock: dict[str, int] = {}
        for _, k, s in state:
            clock = _join_clocks(clock, _clock(context(k, s)))
        return _clock_wire(clock)
    raise ValueError(f"unknown CRDT kind {kind!r}")


# -- validation ----------------------------------------------------------------------------------


def _elements(elems: object) -> list[bytes]:
    if not isinstance(elems, list | tuple) or not all(isinstance(e, bytes) for e in elems):
        raise CRDTError("set elements travel as a list of bytes")
    return list(elems)


def _check_clock(wire: object) -> list:
    if not isinstance(wire, list | tuple):
        raise ValueError("a clock is a list of [actor, counter]")
    actors = []
    for entry in wire:
        if (
            not isinstance(entry, list | tuple)
            or len(entry) != 2
            or not isinstance(entry[0], str)
            or not isinstance(entry[1], int)
            or isinstance(entry[1], bool)
            or entry[1] < 0
        ):
            raise ValueError(f"bad clock entry {entry!r}")
        actors.append(entry[0])
    if actors != sorted(set(actors)):
        raise ValueError("clock actors must be unique and sorted")
    return [list(e) for e in wire]


def check(kind: str, obj: object) -> object:
    """Validate a state from the wire or disk; ValueError with a clear message if malformed."""
    if kind not in TYPES:
        raise ValueError(f"unknown CRDT kind {kind!r}")
    if not isinstance(obj, list | tuple):
        raise ValueError(f"a {kind} state is a list")
    obj = list(obj)
    if kind == "counter":
        for entry in obj:
            if (
                not isinstance(entry, list | tuple)
                or len(entry) != 3
                or not isinstance(entry[0], str)
                or not all(isinstance(x, int) and x >= 0 for x in entry[1:])
            ):
                raise ValueError(f"bad counter entry {entry!r}")
        return [list(e) for e in obj]
    if kind in ("set", "flag"):
        if len(obj) != 2:
            raise ValueError(f"a {kind} state is [clock, entries]")
        clock = _check_clock(obj[0])
        if kind == "flag":
            return [clock, _check_clock(obj[1])]
        entries = []
        for entry in obj[1]:
            if not isinstance(entry, list | tuple) or len(entry) != 2:
                raise ValueError(f"bad set entry {entry!r}")
            if not isinstance(entry[0], bytes):
                raise ValueError("set elements are bytes")
            entries.append([entry[0], [list(d) for d in entry[1]]])
        return [clock, entries]
    if kind == "register":
        if obj and (
            len(obj) != 3
            or not isinstance(obj[0], int)
            or not isinstance(obj[1], str)
            or not isinstance(obj[2], bytes)
        ):
            raise ValueError("a register state is [timestamp, actor, value bytes] or []")
        return obj
    fields = []
    for entry in obj:
        if not isinstance(entry, list | tuple) or len(entry) != 3 or entry[1] not in TYPES:
            raise ValueError(f"bad map field {entry!r}")
        fields.append([entry[0], entry[1], check(entry[1], entry[2])])
    return fields
