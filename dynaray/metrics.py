"""A node's figures: counted cheaply in the node, exported to Ray's metrics every few seconds.

Through ray.util.metrics they reach Ray's Prometheus endpoint and dashboard, tagged with
the node id; `cluster.stats()` returns the same figures as a dict.
"""

from __future__ import annotations

import logging
import random
from collections import Counter

log = logging.getLogger(__name__)

# Latency buckets in seconds, from a fast local read to a request that hit its deadline.
BOUNDARIES = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0]
LATENCY_SAMPLE = 512  # request latencies exported per interval, at most
# An event-loop wake-up this late counts as a stall: every request the node had then
# waited at least as long.
STALL = 0.05


class NodeMetrics:
    """Counters, gauges and request latencies of one node."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.counts: Counter[str] = Counter()
        self.requests: Counter[tuple[str, str]] = Counter()
        self.latency_sum: Counter[tuple[str, str]] = Counter()
        self.gauges: dict[str, float] = {}
        self.max_siblings = 0
        self._exported: Counter[str] = Counter()
        self._exported_requests: Counter[tuple[str, str]] = Counter()
        self._ray: dict | None = None
        self._pending_latency: list[tuple[str, str, float]] = []
        self._latency_seen = 0  # requests since the last export
        self._rng = random.Random()
        self.loop_late_max = 0.0  # seconds, since the last export

    def request(self, op: str, outcome: str, seconds: float) -> None:
        self.requests[(op, outcome)] += 1
        self.latency_sum[(op, outcome)] += seconds
        # A uniform sample (reservoir) of the interval's requests feeds the histogram:
        # Ray's observe() costs ~8 us on the event loop, so exporting every request of a
        # busy interval would stall the node for tens of milliseconds; counts stay exact.
        self._latency_seen += 1
        if len(self._pending_latency) < LATENCY_SAMPLE:
            self._pending_latency.append((op, outcome, seconds))
        else:
            slot = self._rng.randrange(self._latency_seen)
            if slot < LATENCY_SAMPLE:
                self._pending_latency[slot] = (op, outcome, seconds)

    def loop_late(self, seconds: float) -> None:
        """How late the node's event loop woke for a timer (node._watch_loop): a request
        that arrived then waited as long, behind whatever held the loop."""
        if seconds > self.loop_late_max:
            self.loop_late_max = seconds
        if seconds >= STALL:
            self.counts["loop_stalls"] += 1

    def count(self, name: str, amount: int = 1) -> None:
        self.counts[name] += amount

    def siblings(self, count: int) -> None:
        if count > self.max_siblings:
            self.max_siblings = count

    def snapshot(self) -> dict:
        requests = {
            f"{op}.{outcome}": {
                "count": n,
                "mean_ms": round(1000 * self.latency_sum[(op, outcome)] / n, 3),
            }
            for (op, outcome), n in sorted(self.requests.items())
        }
        return {
            "requests": requests,
            **dict(sorted(self.counts.items())),
            **self.gauges,
            "max_siblings_per_read": self.max_siblings,
            "loop_late_max_ms": round(1000 * self.loop_late_max, 1),
        }

    def export(self) -> None:
        """Push what changed since the last export to Ray's metrics."""
        # The interval's worst lateness, even without Ray's metrics: snapshot() reports it.
        late, self.loop_late_max = self.loop_late_max, 0.0
        try:
            metrics = self._ray or self._create()
        except Exception as exc:  # no metrics agent (tests, local runs): keep counting
            log.debug("ray metrics unavailable: %s", exc)
            return
        tags = {"node": self.node_id}
        for name, value in self.counts.items():
            delta = value - self._exported[name]
            if delta:
                metrics["events"].inc(delta, tags={**tags, "event": name})
                self._exported[name] = value
        for (op, outcome), value in self.requests.items():
            delta = value - self._exported_requests[(op, outcome)]
            if delta:
                metrics["requests"].inc(delta, tags={**tags, "op": op, "outcome": outcome})
                self._exported_requests[(op, outcome)] = value
        pending, self._pending_latency = self._pending_latency, []
        self._latency_seen = 0
        for op, outcome, seconds in pending:
            metrics["latency"].observe(seconds, tags={**tags, "op": op, "outcome": outcome})
        for name, value in self.gauges.items():
            metrics["gauge"].set(value, tags={**tags, "figure": name})
        metrics["gauge"].set(self.max_siblings, tags={**tags, "figure": "max_siblings_per_read"})
        metrics["gauge"].set(late, tags={**tags, "figure": "loop_late_max_seconds"})

    def _create(self) -> dict:
        from ray.util.metrics import Counter as RayCounter
        from ray.util.metrics import Gauge, Histogram

        self._ray = {
            "requests": RayCounter(
                "dynaray_requests",
                description="Requests coordinated, by operation and outcome.",
                tag_keys=("node", "op", "outcome"),
            ),
            "latency": Histogram(
                "dynaray_request_seconds",
                description="Coordinator latency of requests, by operation and outcome: a "
                "uniform sample of at most 512 requests per export interval (dynaray_requests "
                "counts them all).",
                boundaries=BOUNDARIES,
                tag_keys=("node", "op", "outcome"),
            ),
            "events": RayCounter(
                "dynaray_events",
                description="Sloppy-quorum writes, hints delivered, read repairs, "
                "anti-entropy keys compared and repaired, handoff keys received, ...",
                tag_keys=("node", "event"),
            ),
            "gauge": Gauge(
                "dynaray_node",
                description="Keys, hints held, LMDB bytes, ranges arriving, ...",
                tag_keys=("node", "figure"),
            ),
        }
        return self._ray
