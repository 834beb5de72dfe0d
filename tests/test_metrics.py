"""A node's figures, counted without Ray: exact counts, a bounded sample of latencies, and
how late its event loop wakes."""

from __future__ import annotations

import asyncio
import time

from dynaray.metrics import LATENCY_SAMPLE, STALL, NodeMetrics
from dynaray.node import LOOP_PROBE, StorageNode


def test_latency_sample_is_bounded_and_uniform_while_counts_stay_exact():
    metrics = NodeMetrics("n1")
    total = LATENCY_SAMPLE * 20
    for i in range(total):
        metrics.request("put", "ok", i / total)  # the i-th request took i/total seconds
    assert metrics.requests[("put", "ok")] == total
    assert abs(metrics.latency_sum[("put", "ok")] - (total - 1) / 2) < 1e-6
    sample = [seconds for _, _, seconds in metrics._pending_latency]
    assert len(sample) == LATENCY_SAMPLE
    # A uniform sample of the interval, not its first requests: about half of it comes
    # from the second half of the requests.
    late = sum(1 for seconds in sample if seconds >= 0.5)
    assert LATENCY_SAMPLE * 0.35 < late < LATENCY_SAMPLE * 0.65


def test_an_interval_below_the_bound_exports_every_latency():
    metrics = NodeMetrics("n1")
    for i in range(10):
        metrics.request("get", "ok", i / 100)
    assert [s for _, _, s in metrics._pending_latency] == [i / 100 for i in range(10)]


def test_loop_lateness_keeps_the_intervals_worst_and_counts_stalls():
    metrics = NodeMetrics("n1")
    for late in (0.001, STALL * 3, 0.002, STALL):
        metrics.loop_late(late)
    assert metrics.snapshot()["loop_late_max_ms"] == round(1000 * STALL * 3, 1)
    assert metrics.snapshot()["loop_stalls"] == 2
    metrics.export()  # no Ray metrics agent here: the interval still ends
    assert metrics.snapshot()["loop_late_max_ms"] == 0.0
    assert metrics.snapshot()["loop_stalls"] == 2  # a count: it only grows


def test_a_node_reports_an_event_loop_held_up_by_blocking_work(tmp_path):
    """Work that holds the loop (here a blocking sleep) shows as lateness and a stall."""
    node = StorageNode("n1", str(tmp_path / "n1"))

    async def held() -> dict:
        watch = asyncio.create_task(node._watch_loop())
        await asyncio.sleep(0.01)
        time.sleep(2 * LOOP_PROBE)  # the timer is due meanwhile, and has to wait
        await asyncio.sleep(2 * LOOP_PROBE)
        watch.cancel()
        return await node.stats()

    try:
        stats = asyncio.run(held())
    finally:
        asyncio.run(node.stop())
    # The probe's wake-up came at least a probe interval late (a lower bound: a slower
    # machine only makes it later).
    assert stats["loop_late_max_ms"] >= 1000 * LOOP_PROBE * 0.9
    assert stats["loop_stalls"] >= 1
