"""Smoke test of the benchmark harness: a short run writes results of every target that ran.

No assertion about speed: only that each target was measured and reported.
"""

from __future__ import annotations

import json

import pytest
import ray

from benchmarks import bench


def test_scrambled_zipfian_favours_few_keys_and_stays_in_range():
    import random

    chooser = bench.ScrambledZipfian(1000)
    rng = random.Random(7)
    draws = [chooser.next(rng) for _ in range(20_000)]
    assert all(0 <= d < 1000 for d in draws)
    top = max(draws.count(d) for d in set(draws[:50]))
    assert top > 20_000 / 1000 * 10  # the hottest key is far above a uniform share


@pytest.mark.timeout(300)
def test_bench_smoke(tmp_path):
    if ray.is_initialized():  # another module's Ray: the harness starts and stops its own
        ray.shutdown()
    targets = ["dynaray", "naive"]
    targets += [t for t in ("redis", "etcd") if bench.missing_requirement(t) is None]
    out = tmp_path / "bench.json"
    try:
        code = bench.main(
            [
                "--workload",
                "A",
                "--keys",
                "200",
                "--clients",
                "8",
                "--duration",
                "2",
                "--warmup",
                "0.5",
                "--nodes",
                "3",
                "--targets",
                ",".join(targets),
                "--json",
                str(out),
                "--no-progress",
            ]
        )
    finally:
        if ray.is_initialized():
            ray.shutdown()
    assert code == 0
    report = json.loads(out.read_text())
    assert report["settings"]["workload"] == "A"
    for name in targets:
        result = report["targets"][name]
        assert result["status"] == "ok", result
        assert result["throughput_ops_s"] > 0
        assert result["preload"]["keys"] == 200
        for op in ("read", "update"):
            latency = result["ops"][op]["latency_us"]
            assert latency["count"] > 0
            for p in ("p50", "p95", "p99", "p99.9"):
                assert latency[p] > 0
            assert latency["p50"] <= latency["p99.9"]
