"""A node's figures, counted without Ray: exact counts, a bounded sample of latencies."""

from __future__ import annotations

from dynaray.metrics import LATENCY_SAMPLE, NodeMetrics


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
