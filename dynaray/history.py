"""Jepsen-style histories of operations and the checkers that judge them. Pure: no Ray, no I/O.

A client records every operation twice: an `invoke` when it starts and a completion when it
ends, one of

- `ok`: the store acknowledged it; it happened.
- `fail`: it certainly did not happen (refused, or nothing was reached).
- `info`: indeterminate; it may or may not have happened (a write's QuorumError or
  RequestTimeout). An invoke with no completion at all counts as `info`.

A process has at most one operation outstanding. The checkers take the history and the
final values read back after the cluster was healed and had converged:

- `check_set`: every acknowledged add is in the final set of its key, no element that was
  never attempted (or whose add failed) is anywhere, not even in a read during the run;
  with no disk lost in the run, what a read saw is in the final set too.
- `check_counter`: the final value lies between the sum of acknowledged increments and the
  sum of attempted (acknowledged + indeterminate) ones; no read saw more than was attempted;
  with no disk lost in the run, the final value is at least what any read saw.
- `check_register`: for last-write-wins registers, how many acknowledged writes did not
  survive although nothing written after them in real time replaced them. LWW loses
  concurrent writes by design, so this is a figure to report; it is invalid when a value
  was never written, a key's writes all vanished, or a key went back to an older value
  (`rolled_back`).
- `max_siblings`: the most concurrent versions any read returned.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

KINDS = ("invoke", "ok", "fail", "info")
# An acknowledged LWW write lost to one that ended this long before it began was not lost
# to a clock tie: with the nodes' clocks within this of each other (one machine's clock
# when verify runs its nodes side by side), the later write carries the later stamp, so
# the store went back to an older value.
REALTIME_SLACK = 1.0
COMPLETIONS = ("ok", "fail", "info")


@dataclass(frozen=True)
class Op:
    """One event of a history: the invocation or the completion of an operation."""

    process: int | str
    kind: str  # invoke | ok | fail | info
    f: str  # add, read, incr, write; for the nemesis: partition, kill, heal, ...
    key: Any = None
    value: Any = None
    time: float = 0.0  # seconds since the history began
    index: int = -1  # position in the history, set by History.append
    error: str | None = None  # why a fail or info happened
    siblings: int | None = None  # for reads: how many concurrent versions came back

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"op kind must be one of {KINDS}, got {self.kind!r}")

    def to_dict(self) -> dict:
        out = asdict(self)
        out["value"] = _jsonable(self.value)
        out["key"] = _jsonable(self.key)
        return out


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, set | frozenset):
        return sorted((_jsonable(v) for v in value), key=repr)
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return repr(value)


class History:
    """An append-only list of Ops; safe to append to from several threads."""

    def __init__(self, ops: Iterable[Op] = (), *, clock: Callable[[], float] | None = None):
        self._clock = clock or time.monotonic
        self._start = self._clock()
        self._lock = threading.Lock()
        self._ops: list[Op] = []
        self._pending: dict[int | str, Op] = {}
        for op in ops:
            self.append(op)

    def now(self) -> float:
        return self._clock() - self._start

    def append(self, op: Op) -> Op:
        """Add an op (its index is set here). A process may have one invoke outstanding;
        a completion must follow that process's invoke with the same f and key."""
        with self._lock:
            pending = self._pending.get(op.process)
            if op.kind == "invoke":
                if pending is not None:
                    raise ValueError(
                        f"process {op.process!r} invoked {op.f} while {pending.f} is outstanding"
                    )
            elif pending is None or (pending.f, pending.key) != (op.f, op.key):
                raise ValueError(
                    f"process {op.process!r} completed {op.f} {op.key!r} with no matching invoke"
                )
            op = replace(op, index=len(self._ops))
            self._ops.append(op)
            if op.kind == "invoke":
                self._pending[op.process] = op
            else:
                del self._pending[op.process]
            return op

    def invoke(self, process: int | str, f: str, key: Any = None, value: Any = None) -> Op:
        return self.append(Op(process, "invoke", f, key, value, self.now()))

    def complete(
        self,
        invocation: Op,
        kind: str,
        value: Any = None,
        *,
        error: str | None = None,
        siblings: int | None = None,
    ) -> Op:
        """The completion of `invocation`; value defaults to the invoked value."""
        if kind not in COMPLETIONS:
            raise ValueError(f"a completion is one of {COMPLETIONS}, got {kind!r}")
        if value is None:
            value = invocation.value
        return self.append(
            Op(
                invocation.process,
                kind,
                invocation.f,
                invocation.key,
                value,
                self.now(),
                error=error,
                siblings=siblings,
            )
        )

    @property
    def ops(self) -> list[Op]:
        with self._lock:
            return list(self._ops)

    def __len__(self) -> int:
        return len(self._ops)

    def __iter__(self) -> Iterator[Op]:
        return iter(self.ops)

    def pairs(self) -> list[tuple[Op, Op | None]]:
        """(invoke, completion) for every operation in invocation order; None when the
        operation never completed (treat it as indeterminate)."""
        out: list[list] = []
        open_: dict[int | str, list] = {}
        for op in self.ops:
            if op.kind == "invoke":
                pair = [op, None]
                out.append(pair)
                open_[op.process] = pair
            else:
                open_.pop(op.process)[1] = op
        return [(a, b) for a, b in out]

    def counts(self, *, exclude: Iterable[int | str] = ("nemesis",)) -> dict[str, int]:
        """Completed operations by outcome, invokes left open counted as info."""
        skip = set(exclude)
        totals = {"ok": 0, "fail": 0, "info": 0}
        for invocation, completion in self.pairs():
            if invocation.process in skip:
                continue
            totals[outcome(completion)] += 1
        return totals

    def to_list(self) -> list[dict]:
        return [op.to_dict() for op in self.ops]


def outcome(completion: Op | None) -> str:
    return "info" if completion is None else completion.kind


def _history(history: History | Iterable[Op]) -> History:
    """A checker's history, made once: an iterator of operations read twice (for the
    writes, then the reads) would give nothing the second time, and the reads' checks
    would pass unseen."""
    return history if isinstance(history, History) else History(history)


def _operations(history: History, f: str) -> list[tuple[Op, Op | None]]:
    return [(a, b) for a, b in history.pairs() if a.f == f]


# -- set ---------------------------------------------------------------------------------------


@dataclass
class SetResult:
    valid: bool
    attempted: int = 0
    acknowledged: int = 0
    indeterminate: int = 0
    failed: int = 0
    lost: list = field(default_factory=list)  # acknowledged, missing from the final read
    unexpected: list = field(default_factory=list)  # in a final read, never attempted there
    failed_present: list = field(default_factory=list)  # their add failed, yet they are there
    unexpected_in_reads: list = field(default_factory=list)  # read before they were attempted
    unread_keys: list = field(default_factory=list)  # acknowledged adds, but no final read
    # Seen by a successful read, missing from the final read (judged when no disk was lost).
    vanished_after_read: list = field(default_factory=list)
    recovered: int = 0  # indeterminate adds that made it
    final_size: int = 0

    @property
    def lost_count(self) -> int:
        return len(self.lost)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["lost_count"] = self.lost_count
        return {k: _jsonable(v) for k, v in out.items()}


def check_set(
    history: History | Iterable[Op], final: Mapping[Any, Iterable], durable: bool = True
) -> SetResult:
    """Judge adds of unique elements (`f="add"`, value = the element) against `final`,
    {key: elements read back after convergence}. Reads (`f="read"`, value = the elements
    seen) during the run must only show elements whose add was invoked before they ended
    and did not fail. `durable` (no disk was lost in the run): an element a successful
    read saw was stored, so it must be in the final read too, even if its add was
    indeterminate."""
    history = _history(history)
    adds = _operations(history, "add")
    final_sets = {key: set(values) for key, values in final.items()}
    attempted: dict[Any, dict[Any, str]] = defaultdict(dict)  # key -> element -> outcome
    invoked_at: dict[tuple[Any, Any], float] = {}
    result = SetResult(valid=True)
    for invocation, completion in adds:
        kind = outcome(completion)
        attempted[invocation.key][invocation.value] = kind
        invoked_at[(invocation.key, invocation.value)] = invocation.time
        result.attempted += 1
        if kind == "ok":
            result.acknowledged += 1
        elif kind == "info":
            result.indeterminate += 1
        else:
            result.failed += 1
    unread = set()
    for key, elements in attempted.items():
        if key not in final_sets:
            if any(kind == "ok" for kind in elements.values()):
                unread.add(key)
            continue
        present = final_sets[key]
        for element, kind in elements.items():
            if kind == "ok" and element not in present:
                result.lost.append((key, element))
            elif kind == "fail" and element in present:
                result.failed_present.append((key, element))
            elif kind == "info" and element in present:
                result.recovered += 1
    for key, present in final_sets.items():
        result.final_size += len(present)
        for element in present:
            if element not in attempted.get(key, {}):
                result.unexpected.append((key, element))
    for invocation, completion in _operations(history, "read"):
        if completion is None or completion.kind != "ok" or completion.value is None:
            continue
        key = invocation.key
        for element in completion.value:
            started = invoked_at.get((key, element))
            if started is None or started > completion.time:
                result.unexpected_in_reads.append((key, element))
            elif attempted[key][element] == "fail":
                result.failed_present.append((key, element))
            elif durable and key in final_sets and element not in final_sets[key]:
                result.vanished_after_read.append((key, element))
    result.unread_keys = sorted(unread, key=repr)
    for name in ("lost", "unexpected", "failed_present", "unexpected_in_reads"):
        setattr(result, name, sorted(set(getattr(result, name)), key=repr))
    result.vanished_after_read = sorted(set(result.vanished_after_read), key=repr)
    result.valid = not (
        result.lost
        or result.unexpected
        or result.failed_present
        or result.unexpected_in_reads
        or result.unread_keys
        or result.vanished_after_read
    )
    return result


# -- counter -----------------------------------------------------------------------------------


@dataclass
class CounterResult:
    valid: bool
    keys: dict = field(default_factory=dict)  # key -> {final, lower, upper, ...}
    acknowledged: int = 0  # sum of acknowledged increments
    indeterminate: int = 0  # sum of indeterminate ones
    lost: int = 0  # acknowledged increments missing from the finals
    extra: int = 0  # counted beyond everything attempted
    read_violations: list = field(default_factory=list)  # reads above what was attempted
    # Increments a successful read saw that the final value lacks (judged when no disk
    # was lost: counters only grow, so what a read saw was stored).
    vanished_after_read: int = 0
    unread_keys: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {k: _jsonable(v) for k, v in asdict(self).items()}


def check_counter(
    history: History | Iterable[Op], final: Mapping[Any, int], durable: bool = True
) -> CounterResult:
    """Judge increments (`f="incr"`, value = a positive delta) against `final`, {key: value
    read back}: acknowledged <= final <= acknowledged + indeterminate, per key. Reads
    (`f="read"`) during the run must not exceed the increments invoked before they ended
    (failed ones left out). `durable` (no disk was lost in the run): the final value is
    also at least the largest value a successful read saw, as counters only grow. A loss
    no larger than the indeterminate increments that were applied, and that no read saw,
    does not show: `indeterminate` bounds what could hide."""
    history = _history(history)
    incrs = _operations(history, "incr")
    ok: dict[Any, int] = defaultdict(int)
    maybe: dict[Any, int] = defaultdict(int)
    invoked: dict[Any, list[tuple[float, int]]] = defaultdict(list)
    for invocation, completion in incrs:
        delta = invocation.value
        if not isinstance(delta, int) or isinstance(delta, bool) or delta <= 0:
            raise ValueError(f"check_counter needs positive int increments, got {delta!r}")
        kind = outcome(completion)
        if kind != "fail":  # a failed increment stored nothing: no read may count it
            invoked[invocation.key].append((invocation.time, delta))
        if kind == "ok":
            ok[invocation.key] += delta
        elif kind == "info":
            maybe[invocation.key] += delta
    result = CounterResult(valid=True)
    seen_most: dict[Any, int] = defaultdict(int)
    for invocation, completion in _operations(history, "read"):
        if completion is None or completion.kind != "ok":
            continue
        seen = completion.value or 0
        bound = sum(d for t, d in invoked[invocation.key] if t <= completion.time)
        if not isinstance(seen, int) or seen < 0 or seen > bound:
            result.read_violations.append((invocation.key, seen, bound, completion.index))
        elif durable:
            seen_most[invocation.key] = max(seen_most[invocation.key], seen)
    for key in sorted(set(ok) | set(maybe) | set(final), key=repr):
        lower, upper = ok[key], ok[key] + maybe[key]
        result.acknowledged += lower
        result.indeterminate += maybe[key]
        if key not in final:
            if lower:
                result.unread_keys.append(key)
            continue
        value = final[key] or 0
        lost, extra = max(0, lower - value), max(0, value - upper)
        vanished = max(0, seen_most[key] - max(value, lower))  # beyond what `lost` counts
        result.lost += lost
        result.extra += extra
        result.vanished_after_read += vanished
        good = not (lost or extra or vanished)
        result.keys[key] = {
            "final": value,
            "lower": lower,
            "upper": upper,
            "seen": seen_most[key],
            "ok": good,
        }
    result.valid = not (
        result.lost
        or result.extra
        or result.read_violations
        or result.unread_keys
        or result.vanished_after_read
    )
    return result


# -- register (last write wins) ----------------------------------------------------------------


@dataclass
class RegisterResult:
    # False when a value appears that no write (not failed) put, a key vanished, or rolled back
    valid: bool
    acknowledged: int = 0
    survived: int = 0  # acknowledged writes that are the final value
    superseded: int = 0  # overwritten by a write invoked after they were acknowledged
    lost: int = 0  # neither: lost to a concurrent or earlier write (LWW by design)
    lost_realtime: int = 0  # of those, lost to a write that ended before they began
    # Of those, lost to a write that ended over REALTIME_SLACK before they began: the store
    # went back to an older value (key, lost value, surviving value).
    rolled_back: list = field(default_factory=list)
    loss_rate: float = 0.0  # lost / acknowledged
    vanished_keys: list = field(default_factory=list)  # acknowledged writes, final absent
    unexpected: list = field(default_factory=list)  # final values never (successfully) written
    unexpected_in_reads: list = field(default_factory=list)  # read during the run, likewise
    note: str = "last-write-wins loses concurrent writes by design: report only"

    def to_dict(self) -> dict:
        return {k: _jsonable(v) for k, v in asdict(self).items()}


def check_register(history: History | Iterable[Op], final: Mapping[Any, Any]) -> RegisterResult:
    """Judge plain writes of unique values (`f="write"`) to LWW registers against `final`,
    {key: value read back, None when absent}.

    An acknowledged write that is not the final value was *superseded* when the write that
    survived was invoked after it was acknowledged (a later write replaced it, as it
    should), else *lost*: the survivor was concurrent with it, or even ended before it
    began (`lost_realtime`, a clock-order anomaly)."""
    history = _history(history)
    writes = _operations(history, "write")
    by_value: dict[tuple[Any, Any], tuple[Op, Op | None]] = {}
    result = RegisterResult(valid=True)
    for invocation, completion in writes:
        by_value[(invocation.key, invocation.value)] = (invocation, completion)
    for (key, value), (invocation, completion) in by_value.items():
        if outcome(completion) != "ok":
            continue
        result.acknowledged += 1
        assert completion is not None
        if key not in final:
            continue  # not read back: the run fails on that, not on a vanished key
        survivor_value = final[key]
        if survivor_value == value:
            result.survived += 1
            continue
        survivor = by_value.get((key, survivor_value))
        if survivor is None:
            result.lost += 1
            if survivor_value is None:
                result.vanished_keys.append(key)
            continue
        if survivor[0].time > completion.time:
            result.superseded += 1
        else:
            result.lost += 1
            if survivor[1] is not None and survivor[1].time < invocation.time:
                result.lost_realtime += 1
                # Only an acknowledged survivor: an indeterminate one may have been stamped
                # long after its client stopped waiting for it.
                early = survivor[1].time < invocation.time - REALTIME_SLACK
                if early and outcome(survivor[1]) == "ok":
                    result.rolled_back.append((key, value, survivor_value))
    for key, value in final.items():
        if value is None:
            continue
        found = by_value.get((key, value))
        if found is None or outcome(found[1]) == "fail":
            result.unexpected.append((key, value))
    for invocation, completion in _operations(history, "read"):
        if completion is None or completion.kind != "ok" or completion.value is None:
            continue
        found = by_value.get((invocation.key, completion.value))
        if found is None or outcome(found[1]) == "fail":
            result.unexpected_in_reads.append((invocation.key, completion.value, completion.index))
    # A key whose acknowledged writes all vanished is no LWW loss: the workload never
    # deletes, so nothing in its design takes a key away.
    result.vanished_keys = sorted(set(result.vanished_keys), key=repr)
    result.loss_rate = result.lost / result.acknowledged if result.acknowledged else 0.0
    result.rolled_back = sorted(result.rolled_back, key=repr)
    result.valid = not (
        result.unexpected
        or result.unexpected_in_reads
        or result.vanished_keys
        or result.rolled_back
    )
    return result


# -- siblings ----------------------------------------------------------------------------------


def max_siblings(history: History | Iterable[Op]) -> int:
    """The most concurrent versions any acknowledged read returned (0 with no such read)."""
    return max(
        (op.siblings or 0 for op in history if op.kind == "ok" and op.siblings is not None),
        default=0,
    )
