"""State-based CRDTs after Riak's riak_dt (PN-counter, add-wins ORSWOT set, LWW register,
enable-wins flag, map), merged on the storage nodes as pure functions over canonical msgpack data.
"""

# State shapes at rest. Every list is sorted and free of duplicates, so equal states encode to
# equal bytes (replicas hash encoded states for Merkle anti-entropy). A clock or causal context
# is [[actor, n], ...] sorted by actor with every n >= 1; a dot is one [actor, n] pair.
#
#   counter   [[actor, p, n], ...]           by actor; p/n = that actor's increments/decrements,
#                                            never both 0
#   register  [] | [timestamp, actor, value]
#   set       [clock, entries, deferred]     entries [[elem, dots], ...] by elem, dots non-empty
#                                            with one dot per actor; deferred [[context,
#                                            [elem, ...]], ...] by context: removes whose context
#                                            this replica has not fully seen yet
#   flag      [clock, dots, deferred]        dots [] = disabled; deferred [context, ...]
#   map       [clock, fields]                fields [[name, kind, body], ...] by (name, kind)
#
# A field's body is the state of its kind, except that set, flag and map fields drop their leading
# clock: every dot anywhere in a map comes from the map's one clock. That is what makes the map's
# clock a valid remove context for any field (a client sends back one context per key), and it
# means a field holds only dots the map's clock covers. Map fields cannot be removed.
#
# Applying ops: an actor must apply its operations to a state that already holds all of its own
# earlier operations (its local replica), otherwise it hands out the same dot twice.

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TYPES = ("counter", "set", "register", "flag", "map")

_CAUSAL = frozenset(("set", "flag", "map"))  # kinds whose state carries a clock
_U64 = 2**64 - 1  # msgpack's integer range bounds every counter and timestamp
_I64_MIN = -(2**63)
_MAX_DEPTH = 32  # nested maps; deeper input would only exhaust the stack
_FLAG = b""  # a flag is an ORSWOT over this one implicit element

# the arity range of each op's arguments, per kind
_OPS: dict[str, dict[str, tuple[int, int]]] = {
    "counter": {"increment": (1, 1)},
    "set": {"add": (1, 1), "remove": (1, 2)},
    "register": {"assign": (2, 2)},
    "flag": {"enable": (0, 0), "disable": (0, 1)},
    "map": {"update": (1, 1)},
}

Clock = dict[str, int]
Ctx = tuple[tuple[str, int], ...]  # a causal context, sorted by actor, hashable


class CRDTError(ValueError):
    """A client operation that is malformed or does not fit its data type."""


@dataclass
class _ORSet:
    """Working form of a set or flag body (a flag holds at most the element _FLAG)."""

    # element -> {actor: n}; an add replaces an element's dots with one fresh dot, which the
    # adder's clock shows supersedes the old ones, so an element never has two dots of one actor
    entries: dict[bytes, dict[str, int]] = field(default_factory=dict)
    # context -> elements: removes waiting until this replica has seen all the context covers
    deferred: dict[Ctx, set[bytes]] = field(default_factory=dict)


# Working forms: counter {actor: [p, n]}, register (ts, actor, value) | None, set/flag _ORSet,
# map {(name, kind): working form}. Each call loads fresh working forms from the inputs, so
# mutating them never touches a caller's state.


def _require_kind(kind: str) -> None:
    if kind not in TYPES:
        raise ValueError(f"unknown CRDT kind {kind!r}; kinds are {', '.join(TYPES)}")


# -- public API -----------------------------------------------------------------------------------


def new(kind: str) -> object:
    """The empty state of a kind."""
    _require_kind(kind)
    return _dump_state(kind, _empty(kind), {})


def merge(kind: str, a: object, b: object) -> object:
    """Join two valid states (None = empty): commutative, associative and idempotent."""
    _require_kind(kind)
    ca, xa = _load_state(kind, a)
    cb, xb = _load_state(kind, b)
    clock = {actor: max(ca.get(actor, 0), cb.get(actor, 0)) for actor in ca.keys() | cb.keys()}
    joined = _join(kind, xa, ca, xb, cb)
    _settle(kind, joined, clock)
    return _dump_state(kind, joined, clock)


def apply(kind: str, state: object | None, op: list, actor: str) -> object:
    """The coordinator applies one client operation `op` to a valid state as `actor`.

    Ops: counter ["increment", delta]; set ["add", [elem, ...]] | ["remove", [elem, ...],
    context | None]; register ["assign", timestamp, value]; flag ["enable"] | ["disable",
    context | None]; map ["update", [[name, kind, op], ...]]. A remove/disable context is the
    clock the client read (context()); None means everything this state holds. Raises CRDTError
    on a malformed op; the input state is never modified.
    """
    _require_kind(kind)
    if not isinstance(actor, str) or not actor:
        raise CRDTError(f"the actor must be a non-empty node id string, got {actor!r}")
    clock, x = _load_state(kind, state)
    tx = _Tx(actor, clock)
    x = _apply(kind, x, op, tx, kind, 0)
    # a fresh dot can complete a deferred remove's context; a canonical state holds none that
    # could already apply
    _settle(kind, x, tx.clock)
    return _dump_state(kind, x, tx.clock)


def value(kind: str, state: object | None) -> object:
    """What a client reads: counter int, set frozenset[bytes], register bytes | None, flag bool,
    map dict[str, value] (a field name shared by several kinds keys the later ones "name:kind")."""
    _require_kind(kind)
    return _value(kind, _load_state(kind, state)[1])


def context(kind: str, state: object | None) -> list:
    """The causal context a client sends back with a remove or disable: the clock of a set, flag
    or map as [[actor, n], ...]; [] for counters and registers, which need none."""
    _require_kind(kind)
    if kind not in _CAUSAL or state is None:
        return []
    return [[actor, n] for actor, n in state[0]]


def actors(kind: str, state: object | None) -> list[str]:
    """Every actor the state names: a counter's entries, the clock of a set, flag or map,
    and in a map also its counter and register fields (their operations take no dot, so
    the map's clock does not name their writers)."""
    _require_kind(kind)
    if state is None:
        return []
    if kind == "counter":
        return [actor for actor, _, _ in state]
    if kind == "register":
        return [state[1]] if state else []
    clock = [actor for actor, _ in state[0]]
    return clock + _field_actors(state[1]) if kind == "map" else clock


def _field_actors(fields: list) -> list[str]:
    out: list[str] = []
    for _, kind, body in fields:
        if kind in ("counter", "register"):
            out += actors(kind, body)
        elif kind == "map":
            out += _field_actors(body[0])
    return out


def check(kind: str, obj: object) -> object:
    """Validate a state from the wire or disk; returns it as fresh lists, equal to obj.

    Raises ValueError naming the first problem: wrong shapes or types, unsorted or duplicate
    entries, counters out of range, dots the clock does not cover, or a deferred remove that
    should already have applied (the state would not be canonical).
    """
    _require_kind(kind)
    if kind in _CAUSAL:
        parts = _seq(obj, kind, 3 if kind != "map" else 2)
        clock = _check_clock(parts[0], f"{kind} clock")
        _check_body(kind, parts[1:], clock, kind, 0)
    else:
        _check_body(kind, obj, {}, kind, 0)
    clock, x = _load_state(kind, obj)
    return _dump_state(kind, x, clock)


# -- loading and dumping --------------------------------------------------------------------------


def _empty(kind: str) -> Any:
    if kind == "counter":
        return {}
    if kind == "register":
        return None
    if kind == "map":
        return {}
    return _ORSet()


def _load_state(kind: str, state: Any) -> tuple[Clock, Any]:
    if state is None:
        return {}, _empty(kind)
    if kind in _CAUSAL:
        return dict(state[0]), _load(kind, state[1:])
    return {}, _load(kind, state)


def _dump_state(kind: str, x: Any, clock: Clock) -> Any:
    if kind in _CAUSAL:
        return [_dump_clock(clock), *_dump(kind, x)]
    return _dump(kind, x)


def _load(kind: str, body: Any) -> Any:
    """Working form of a body: a whole state for counter/register, the state minus its clock
    for set/flag/map."""
    if kind == "counter":
        return {actor: [p, n] for actor, p, n in body}
    if kind == "register":
        return tuple(body) if body else None
    if kind == "set":
        entries, deferred = body
        return _ORSet(
            {elem: dict(dots) for elem, dots in entries},
            {_ctx_key(ctx): set(elems) for ctx, elems in deferred},
        )
    if kind == "flag":
        dots, deferred = body
        return _ORSet(
            {_FLAG: dict(dots)} if dots else {},
            {_ctx_key(ctx): {_FLAG} for ctx in deferred},
        )
    (fields,) = body
    return {(name, fkind): _load(fkind, fbody) for name, fkind, fbody in fields}


def _dump(kind: str, x: Any) -> Any:
    if kind == "counter":
        # an actor with nothing counted is indistinguishable from one never seen: leave it out
        return [[actor, *x[actor]] for actor in sorted(x) if x[actor] != [0, 0]]
    if kind == "register":
        return list(x) if x is not None else []
    if kind == "set":
        assert isinstance(x, _ORSet)
        entries = [[elem, _dump_clock(x.entries[elem])] for elem in sorted(x.entries)]
        deferred = [[_dump_ctx(ctx), sorted(x.deferred[ctx])] for ctx in sorted(x.deferred)]
        return [entries, [d for d in deferred if d[1]]]
    if kind == "flag":
        assert isinstance(x, _ORSet)
        return [
            _dump_clock(x.entries.get(_FLAG, {})),
            [_dump_ctx(ctx) for ctx in sorted(x.deferred) if x.deferred[ctx]],
        ]
    fields = [[name, fkind, _dump(fkind, x[(name, fkind)])] for name, fkind in sorted(x)]
    return [fields]


def _dump_clock(clock: Clock) -> list:
    return [[actor, clock[actor]] for actor in sorted(clock) if clock[actor] > 0]


def _ctx_key(ctx: Any) -> Ctx:
    return tuple((actor, n) for actor, n in ctx)


def _dump_ctx(ctx: Ctx) -> list:
    return [[actor, n] for actor, n in ctx]


# -- join -----------------------------------------------------------------------------------------


def _join(kind: str, a: Any, ca: Clock, b: Any, cb: Clock) -> Any:
    """Join two working forms; ca/cb are the clocks of the states they come from. Deferred
    removes are gathered but not applied (see _settle)."""
    if kind == "counter":
        zero = [0, 0]
        return {
            actor: [max(a.get(actor, zero)[i], b.get(actor, zero)[i]) for i in (0, 1)]
            for actor in a.keys() | b.keys()
        }
    if kind == "register":
        if a is None or b is None:
            return a if b is None else b
        return max(a, b)
    if kind == "map":
        joined = {}
        for key in a.keys() | b.keys():
            fkind = key[1]
            # a field one side lacks is empty there, as of that side's clock: any of the
            # field's dots that clock covers were seen there and removed
            fa = a[key] if key in a else _empty(fkind)
            fb = b[key] if key in b else _empty(fkind)
            joined[key] = _join(fkind, fa, ca, fb, cb)
        return joined
    assert isinstance(a, _ORSet) and isinstance(b, _ORSet)
    entries = {}
    for elem in a.entries.keys() | b.entries.keys():
        da = a.entries.get(elem, {})
        db = b.entries.get(elem, {})
        # observed-remove: a dot survives if both sides hold it, or one side holds it and the
        # other has not seen it (had it seen the dot and dropped it, the dot was removed)
        dots = {actor: n for actor, n in da.items() if db.get(actor) == n or n > cb.get(actor, 0)}
        for actor, n in db.items():
            if da.get(actor) == n or n > ca.get(actor, 0):
                dots[actor] = n
        if dots:
            entries[elem] = dots
    deferred = {ctx: set(elems) for ctx, elems in a.deferred.items()}
    for ctx, elems in b.deferred.items():
        deferred.setdefault(ctx, set()).update(elems)
    return _ORSet(entries, deferred)


def _settle(kind: str, x: Any, clock: Clock) -> None:
    """Apply, in place, every deferred remove: the dots its context covers go at once (as
    when the remove was first applied: a join may have brought back one the remover saw),
    and the remove is done with once the clock covers its context. Removes commute with
    each other and with joins, so applying them as soon as possible keeps merge a join and
    leaves one canonical form."""
    if kind == "map":
        for (_, fkind), fx in x.items():
            _settle(fkind, fx, clock)
    elif kind in _CAUSAL:
        assert isinstance(x, _ORSet)
        for ctx in list(x.deferred):
            _remove_covered(x, x.deferred[ctx], dict(ctx))
            if _covers(clock, ctx):
                del x.deferred[ctx]


def _covers(clock: Clock, ctx: Ctx) -> bool:
    return all(clock.get(actor, 0) >= n for actor, n in ctx)


def _remove_covered(x: _ORSet, elems: Any, ctx: Clock) -> None:
    """Drop the dots of elems that ctx covers: what the remover saw. Later adds survive."""
    for elem in elems:
        dots = x.entries.get(elem)
        if dots is None:
            continue
        live = {actor: n for actor, n in dots.items() if n > ctx.get(actor, 0)}
        if live:
            x.entries[elem] = live
        else:
            del x.entries[elem]


# -- operations -----------------------------------------------------------------------------------


class _Tx:
    """One client operation applied by one actor. All adds and enables in it, at any depth of a
    map, share one fresh dot: they are one event, and drawing dots from one clock per key is what
    lets a single context cover every field."""

    def __init__(self, actor: str, clock: Clock) -> None:
        self.actor = actor
        self.clock = clock
        self._dot: int | None = None

    def dot(self) -> int:
        if self._dot is None:
            n = self.clock.get(self.actor, 0) + 1
            if n > _U64:
                raise CRDTError(f"the clock of actor {self.actor!r} is exhausted")
            self.clock[self.actor] = self._dot = n
        return self._dot


def _apply(kind: str, x: Any, op: object, tx: _Tx, where: str, depth: int) -> Any:
    name, args = _parse_op(kind, op, where)
    if kind == "counter":
        (delta,) = args
        if type(delta) is not int:
            raise CRDTError(f"{where} increment: the delta must be an integer, got {delta!r}")
        if delta:
            # increments and decrements grow separately, so each half only ever grows
            counts = x.setdefault(tx.actor, [0, 0])
            half = 0 if delta > 0 else 1
            counts[half] += abs(delta)
            if counts[half] > _U64:
                what = "increments" if half == 0 else "decrements"
                raise CRDTError(
                    f"{where} increment: this node's total of {what} would exceed 2**64 - 1"
                )
        return x
    if kind == "register":
        stamp, val = args
        if type(stamp) is not int or not _I64_MIN <= stamp <= _U64:
            raise CRDTError(
                f"{where} assign: the timestamp must be a 64-bit integer, got {stamp!r}"
            )
        if not isinstance(val, bytes):
            raise CRDTError(f"{where} assign: the value must be bytes, got {type(val).__name__}")
        mine = (stamp, tx.actor, val)
        # the whole (timestamp, actor, value) triple orders writes, so every replica picks the
        # same winner even for equal timestamps
        return mine if x is None or mine > x else x
    if kind == "map":
        return _apply_map(x, args[0], tx, where, depth)
    assert isinstance(x, _ORSet)
    if kind == "set":
        elems = _parse_elems(args[0], where, name)
        ctx_arg = args[1] if len(args) > 1 else None
    else:
        elems = [_FLAG]
        ctx_arg = args[0] if args else None
    if name in ("add", "enable"):
        if elems:
            dot = tx.dot()
            for elem in elems:
                x.entries[elem] = {tx.actor: dot}
        return x
    ctx = _parse_ctx(ctx_arg, where, name)
    if ctx is None:
        # no context: remove what this state holds, all of which its own clock covers
        for elem in elems:
            x.entries.pop(elem, None)
    elif elems:
        # remove what the client saw and we hold now; if the client saw more than we have, keep
        # the remove until merges bring us the rest of what it covers
        _remove_covered(x, elems, dict(ctx))
        if not _covers(tx.clock, ctx):
            x.deferred.setdefault(ctx, set()).update(elems)
    return x


def _apply_map(x: dict, updates: Any, tx: _Tx, where: str, depth: int) -> dict:
    if depth >= _MAX_DEPTH:
        raise CRDTError(f"{where}: maps nest at most {_MAX_DEPTH} deep")
    if not isinstance(updates, list | tuple):
        raise CRDTError(f"{where} update: expected a list of [name, kind, op] fields")
    for i, upd in enumerate(updates):
        if not isinstance(upd, list | tuple) or len(upd) != 3:
            raise CRDTError(f"{where} update: field {i} must be [name, kind, op], got {upd!r}")
        fname, fkind, fop = upd
        if not isinstance(fname, str):
            raise CRDTError(f"{where} update: field {i} name must be a string, got {fname!r}")
        try:
            fname.encode("utf-8")  # the record stores it so: refused here, not at its write
        except UnicodeEncodeError:
            raise CRDTError(
                f"{where} update: field name {fname!r} is not text UTF-8 can encode"
            ) from None
        if fkind not in TYPES:
            raise CRDTError(
                f"{where} update: field {fname!r} has unknown kind {fkind!r}; "
                f"kinds are {', '.join(TYPES)}"
            )
        key = (fname, fkind)
        current = x[key] if key in x else _empty(fkind)
        new = _apply(fkind, current, fop, tx, f"{where} field {fname!r} ({fkind})", depth + 1)
        # A remove or a disable that found nothing (and has nothing to wait for) adds no
        # empty field, which nothing could take out again.
        if key in x or not (_removes(fop) and _is_empty(fkind, new)):
            x[key] = new
    return x


def _removes(op: object) -> bool:
    """Whether a field's operation only takes away: a set's remove, a flag's disable."""
    return isinstance(op, list | tuple) and bool(op) and op[0] in ("remove", "disable")


def _is_empty(kind: str, x: Any) -> bool:
    """Whether a working form holds nothing, as _empty(kind) does."""
    if isinstance(x, _ORSet):
        return not x.entries and not x.deferred
    return x == _empty(kind)


def _parse_op(kind: str, op: object, where: str) -> tuple[str, list]:
    ops = _OPS[kind]
    expected = " or ".join(repr(name) for name in ops)
    if not isinstance(op, list | tuple) or not op or not isinstance(op[0], str):
        raise CRDTError(f"{where} op must be a list starting with {expected}, got {op!r}")
    name, args = op[0], list(op[1:])
    if name not in ops:
        raise CRDTError(f"{where} op: unknown operation {name!r} (expected {expected})")
    lo, hi = ops[name]
    if not lo <= len(args) <= hi:
        count = str(lo) if lo == hi else f"{lo} to {hi}"
        raise CRDTError(f"{where} {name}: takes {count} arguments, got {len(args)}")
    return name, args


def _parse_elems(elems: object, where: str, name: str) -> list[bytes]:
    if not isinstance(elems, list | tuple):
        raise CRDTError(f"{where} {name}: expected a list of elements, got {elems!r}")
    for elem in elems:
        if not isinstance(elem, bytes):
            raise CRDTError(
                f"{where} {name}: set elements must be bytes, got {type(elem).__name__}"
            )
    return list(elems)


def _parse_ctx(ctx: object, where: str, name: str) -> Ctx | None:
    if ctx is None:
        return None
    bad = f"{where} {name}: the context must be None or [[actor, counter], ...]"
    if not isinstance(ctx, list | tuple):
        raise CRDTError(f"{bad}, got {ctx!r}")
    seen: dict[str, int] = {}
    for pair in ctx:
        if not isinstance(pair, list | tuple) or len(pair) != 2:
            raise CRDTError(f"{bad}, got entry {pair!r}")
        actor, n = pair
        if not isinstance(actor, str) or not actor or type(n) is not int or not 0 <= n <= _U64:
            raise CRDTError(f"{bad}, got entry {pair!r}")
        if actor in seen:
            raise CRDTError(f"{where} {name}: actor {actor!r} appears twice in the context")
        seen[actor] = n
    # zero entries say nothing; dropping them keeps one spelling per context
    return tuple((actor, seen[actor]) for actor in sorted(seen) if seen[actor])


# -- values ---------------------------------------------------------------------------------------


def _value(kind: str, x: Any) -> object:
    if kind == "counter":
        return sum(p - n for p, n in x.values())
    if kind == "register":
        return x[2] if x is not None else None
    if kind == "set":
        return frozenset(x.entries)
    if kind == "flag":
        return bool(x.entries)
    out: dict[str, object] = {}
    later = []
    for name, fkind in sorted(x):
        if name in out:
            later.append((name, fkind))
        else:
            out[name] = _value(fkind, x[(name, fkind)])
    for name, fkind in later:
        key = f"{name}:{fkind}"
        while key in out:  # a field literally named "name:kind": keep every field visible
            key += f":{fkind}"
        out[key] = _value(fkind, x[(name, fkind)])
    return out


# -- validation -----------------------------------------------------------------------------------


def _seq(obj: Any, where: str, length: int | None = None) -> Any:
    if not isinstance(obj, list | tuple):
        raise ValueError(f"{where} must be a list, got {type(obj).__name__}")
    if length is not None and len(obj) != length:
        raise ValueError(f"{where} must have {length} items, got {len(obj)}")
    return obj


def _check_uint(n: object, where: str, low: int) -> int:
    if type(n) is not int or not low <= n <= _U64:
        raise ValueError(f"{where} must be an integer from {low} to 2**64 - 1, got {n!r}")
    return n


def _check_actor(actor: object, where: str) -> str:
    if not isinstance(actor, str) or not actor:
        raise ValueError(f"{where} must be a non-empty actor string, got {actor!r}")
    return actor


def _check_ascending(keys: list, where: str) -> None:
    for i in range(1, len(keys)):
        if not keys[i - 1] < keys[i]:
            raise ValueError(f"{where} must be sorted with no duplicates (at item {i})")


def _check_clock(obj: object, where: str) -> Clock:
    pairs = _seq(obj, where)
    for i, pair in enumerate(pairs):
        _seq(pair, f"{where}[{i}]", 2)
        _check_actor(pair[0], f"{where}[{i}] actor")
        _check_uint(pair[1], f"{where}[{i}] counter", 1)
    _check_ascending([pair[0] for pair in pairs], where)
    return {actor: n for actor, n in pairs}


def _check_dots(obj: object, where: str, clock: Clock) -> None:
    for actor, n in _check_clock(obj, where).items():
        if n > clock.get(actor, 0):
            raise ValueError(f"{where}: dot [{actor!r}, {n}] is not covered by the clock")


def _check_deferred_ctx(obj: object, where: str, clock: Clock) -> Ctx:
    ctx = _ctx_key(_check_clock(obj, where).items())
    if _covers(clock, ctx):
        raise ValueError(
            f"{where}: the clock covers this context, so the remove should have applied"
        )
    return ctx


def _check_elems(obj: object, where: str) -> None:
    elems = _seq(obj, where)
    for i, elem in enumerate(elems):
        if not isinstance(elem, bytes):
            raise ValueError(f"{where}[{i}] must be bytes, got {type(elem).__name__}")
    _check_ascending(list(elems), where)


def _check_body(kind: str, body: Any, clock: Clock, where: str, depth: int) -> None:
    if kind == "counter":
        rows = _seq(body, where)
        for i, row in enumerate(rows):
            _seq(row, f"{where}[{i}]", 3)
            _check_actor(row[0], f"{where}[{i}] actor")
            _check_uint(row[1], f"{where}[{i}] increments", 0)
            _check_uint(row[2], f"{where}[{i}] decrements", 0)
            if row[1] == row[2] == 0:
                raise ValueError(f"{where}[{i}]: an actor with no counts must be left out")
        _check_ascending([row[0] for row in rows], where)
    elif kind == "register":
        reg = _seq(body, where)
        if reg:
            _seq(reg, where, 3)
            stamp, actor, val = reg
            if type(stamp) is not int or not _I64_MIN <= stamp <= _U64:
                raise ValueError(f"{where} timestamp must be a 64-bit integer, got {stamp!r}")
            _check_actor(actor, f"{where} actor")
            if not isinstance(val, bytes):
                raise ValueError(f"{where} value must be bytes, got {type(val).__name__}")
    elif kind == "set":
        entries, deferred = _seq(body, where, 2)
        entries = _seq(entries, f"{where} entries")
        for i, entry in enumerate(entries):
            elem, dots = _seq(entry, f"{where} entries[{i}]", 2)
            if not isinstance(elem, bytes):
                raise ValueError(f"{where} entries[{i}] element must be bytes")
            _check_dots(dots, f"{where} entries[{i}] dots", clock)
            if not dots:
                raise ValueError(f"{where} entries[{i}]: an element without dots must be left out")
        _check_ascending([entry[0] for entry in entries], f"{where} entries")
        deferred = _seq(deferred, f"{where} deferred")
        ctxs = []
        for i, item in enumerate(deferred):
            ctx, elems = _seq(item, f"{where} deferred[{i}]", 2)
            ctxs.append(_check_deferred_ctx(ctx, f"{where} deferred[{i}] context", clock))
            _check_elems(elems, f"{where} deferred[{i}] elements")
            if not elems:
                raise ValueError(f"{where} deferred[{i}]: a remove of nothing must be left out")
        _check_ascending(ctxs, f"{where} deferred")
    elif kind == "flag":
        dots, deferred = _seq(body, where, 2)
        _check_dots(dots, f"{where} dots", clock)
        deferred = _seq(deferred, f"{where} deferred")
        ctxs = [
            _check_deferred_ctx(ctx, f"{where} deferred[{i}]", clock)
            for i, ctx in enumerate(deferred)
        ]
        _check_ascending(ctxs, f"{where} deferred")
    else:
        if depth >= _MAX_DEPTH:
            raise ValueError(f"{where}: maps nest at most {_MAX_DEPTH} deep")
        (fields,) = _seq(body, where, 1)
        fields = _seq(fields, f"{where} fields")
        for i, fld in enumerate(fields):
            name, fkind, fbody = _seq(fld, f"{where} fields[{i}]", 3)
            if not isinstance(name, str):
                raise ValueError(f"{where} fields[{i}] name must be a string, got {name!r}")
            if fkind not in TYPES:
                raise ValueError(f"{where} fields[{i}] has unknown kind {fkind!r}")
            _check_body(fkind, fbody, clock, f"{where} field {name!r} ({fkind})", depth + 1)
        _check_ascending([(fld[0], fld[1]) for fld in fields], f"{where} fields")
