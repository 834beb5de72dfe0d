"""One read, as node and client coordinators run it: fallbacks, deadlines, read repair."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from dynaray import quorum, reads, records
from dynaray.quorum import Target
from dynaray.transport import PeerUnavailable

PREF = ["a", "b", "c", "d"]


def copy(value: bytes, node: str = "a", seen: list | None = None, stored=None) -> bytes:
    record = records.update(stored, ["siblings", seen or [], value], node, 1)
    return records.encode(record)


class Slow:
    """An answer that comes after the others."""

    def __init__(self, answer):
        self.answer = answer


def _spawner() -> tuple[set[asyncio.Task], Callable]:
    """The tasks a read starts, and the spawn that starts (and keeps) them."""
    tasks: set[asyncio.Task] = set()

    def spawn(coro) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        tasks.add(task)
        return task

    return tasks, spawn


def run_read(answers: dict, targets: list[Target], r: int = 2, deadline: float = 1.0):
    """Run reads.read with a fetch that answers from `answers` (a value, an exception to
    raise, "hang", or Slow(answer))."""

    async def main():
        tasks, spawn = _spawner()

        async def fetch(target: Target):
            answer = answers[target.node]
            if answer == "hang":
                await asyncio.sleep(60)
            if isinstance(answer, Slow):
                await asyncio.sleep(0.05)
                answer = answer.answer
            if isinstance(answer, Exception):
                raise answer
            return answer

        request = reads.Read(b"k", quorum.Tally(PREF, targets, r, lambda _: True, n=3))
        ok = await reads.read(request, targets, fetch, spawn, deadline)
        await asyncio.sleep(0)  # let cancellations land
        return ok, request, tasks

    return asyncio.run(main())


def test_a_failed_replica_is_replaced_and_the_read_reaches_r():
    v = copy(b"v")
    ok, request, _ = run_read(
        {"a": PeerUnavailable("a", "down"), "b": v, "c": v, "d": v},
        [Target("a"), Target("b")],
    )
    assert ok
    assert set(request.replies) == {"b", "c"}
    assert request.merged == v


def test_a_stand_ins_answer_does_not_take_the_place_of_a_slower_live_primary():
    # A write acknowledged by a and c; b missed it. The reader sees a down (it was not when
    # the write was made), so d stands in for a with nothing of the key. d and b answer
    # "not found" first: R answers, but c, asked in person, holds the write.
    v = copy(b"acknowledged")
    targets = [Target("d", hint="a"), Target("b"), Target("c")]
    ok, request, _ = run_read({"d": None, "b": None, "c": Slow(v)}, targets)
    assert ok
    assert set(request.replies) == {"b", "c", "d"}
    assert request.merged == v
    # A primary that fails leaves the stand-in's answer to count.
    ok, request, _ = run_read(
        {
            "d": None,
            "b": v,
            "c": Slow(PeerUnavailable("c", "down")),
            "a": PeerUnavailable("a", "x"),
        },
        targets,
    )
    assert ok
    assert request.merged == v


def test_still_arriving_not_mine_and_errors_count_as_no_answer():
    v = copy(b"v")
    answers = {"a": reads.ARRIVING, "b": reads.NOT_MINE, "c": ValueError("corrupt"), "d": v}
    ok, request, _ = run_read(answers, [Target("a"), Target("b"), Target("c")])
    assert not ok  # only d answered, R=2
    assert set(request.replies) == {"d"}
    assert request.tally.failed == ["a", "b", "c"]


def test_a_read_past_its_deadline_fails_and_stops_asking():
    v = copy(b"v")
    ok, request, tasks = run_read(
        {"a": v, "b": "hang", "c": "hang", "d": "hang"},
        [Target("a"), Target("b")],
        deadline=0.2,
    )
    assert not ok
    assert all(task.done() for task in tasks)


def test_stale_replicas_get_the_merge_of_every_reply():
    old = copy(b"old")
    new = copy(b"new", seen=records.context_of(records.decode(old)), stored=records.decode(old))
    replies = {"a": (Target("a"), new), "b": (Target("b"), old), "d": (Target("d", "c"), None)}
    stale: dict = {}
    reads.stale_replicas(b"k", replies, stale)
    assert stale == {"b": [[b"k", new, None]], "d": [[b"k", new, "c"]]}


def test_narrowed_asks_r_unless_asked_for_all_or_a_stand_in_is_needed():
    primaries = [Target("a"), Target("b"), Target("c")]
    assert reads.narrowed(primaries, 2, ask_all=False) == primaries[:2]
    assert reads.narrowed(primaries, 2, ask_all=True) == primaries
    with_stand_in = [Target("a"), Target("d", "b"), Target("c")]
    assert reads.narrowed(with_stand_in, 2, ask_all=False) == with_stand_in


def test_only_a_refusal_counts_as_unanswered():
    assert reads.unanswered(reads.ARRIVING) and reads.unanswered(reads.NOT_MINE)
    assert not reads.unanswered(None)  # absent is an answer
    assert not reads.unanswered(reads.NOT_MINE.encode())  # a copy's bytes never are


def test_an_ask_cancelled_as_its_replica_fails_starts_no_fallback_that_outlives_it():
    """A client closing cancels its loop's tasks. An ask whose call failed in the same
    step saw the failure, not the cancel (wait_for raises a result that is in when it is
    cancelled), and started a fallback the cancelling never looked at: at shutdown,
    "Task was destroyed but it is pending"."""
    from dynaray.client import _cancel_others

    async def main() -> list[asyncio.Task]:
        tasks, spawn = _spawner()
        failing = asyncio.get_running_loop().create_future()

        async def fetch(target: Target):
            if target.node == "a":
                return copy(b"v")
            if target.node == "b":
                return await asyncio.wait_for(failing, 60)
            await asyncio.sleep(60)  # a fallback asked would wait here

        targets = [Target("a"), Target("b")]
        request = reads.Read(b"k", quorum.Tally(PREF, targets, 1, lambda _: True, n=3))
        assert await reads.read(request, targets, fetch, spawn, 1.0)
        failing.set_exception(PeerUnavailable("b", "ActorDiedError"))  # then at once:
        asked = set(tasks)
        for task in asked:  # what closing sees, and cancels
            task.cancel()
        await asyncio.wait(asked)
        started = tasks - asked  # a fallback started as the ask was cancelled
        await _cancel_others()  # (which cancels what such a one starts too)
        return list(started) + [task for task in tasks if not task.done()]

    assert asyncio.run(main()) == []


def test_a_cancelled_read_stops_asking():
    """Its asks went on, each failure starting the next fallback, with no read to wait
    for them."""

    async def main() -> list[asyncio.Task]:
        tasks, spawn = _spawner()

        async def fetch(target: Target):
            await asyncio.sleep(60)

        targets = [Target("a"), Target("b")]
        request = reads.Read(b"k", quorum.Tally(PREF, targets, 2, lambda _: True, n=3))
        reading = asyncio.ensure_future(reads.read(request, targets, fetch, spawn, 30.0))
        await asyncio.sleep(0.01)
        reading.cancel()
        await asyncio.sleep(0.01)
        return [task for task in tasks if not task.done()]

    assert asyncio.run(main()) == []
