"""Smoke test of the benchmark harness: a short run writes results of every target that ran.

No assertion about speed: only that each target was measured and reported.
"""

from __future__ import annotations

import json
import subprocess
import sys

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


def _run(tmp_path, *args: str) -> dict:
    """Run the harness as `dynaray bench` would (it starts and stops its own Ray); its
    exit status must be 0. Returns the JSON report."""
    if ray.is_initialized():  # another module's Ray: the harness starts and stops its own
        ray.shutdown()
    out = tmp_path / "bench.json"
    try:
        code = bench.main([*args, "--json", str(out), "--no-progress"])
    finally:
        if ray.is_initialized():
            ray.shutdown()
    assert code == 0
    return json.loads(out.read_text())


def _targets() -> list[str]:
    """dynaray and naive, and the baselines whose servers are installed."""
    return ["dynaray", "naive"] + [
        t for t in ("redis", "etcd") if bench.missing_requirement(t) is None
    ]


def test_latencies_of_several_driver_processes_merge_as_one():
    import random

    rng = random.Random(3)
    samples = [rng.expovariate(200.0) for _ in range(5000)]
    whole, first, second = bench.Latencies(), bench.Latencies(), bench.Latencies()
    for i, seconds in enumerate(samples):
        whole.record(seconds)
        (first if i % 3 else second).record(seconds)
    merged = bench.Latencies()
    merged.add_wire(first.to_wire())
    merged.add_wire(second.to_wire())
    assert merged.summary() == whole.summary()


@pytest.mark.timeout(300)
def test_bench_spreads_clients_over_driver_processes(tmp_path):
    targets = _targets()
    report = _run(
        tmp_path,
        *("--keys", "100", "--clients", "6", "--processes", "2", "--nodes", "3"),
        *("--duration", "1.5", "--warmup", "0.5", "--targets", ",".join(targets)),
    )
    assert report["settings"]["processes"] == 2
    for name in targets:
        result = report["targets"][name]
        assert result["status"] == "ok", result
        assert result["driver_processes"] == 2
        assert result["error_count"] == 0, result["error_samples"]
        for op in ("read", "update"):
            assert result["ops"][op]["latency_us"]["count"] > 0
    # Every driver process has the contexts of the load: an update is one write there too
    # (each process started with none, and read first at every key's first update).
    assert report["targets"]["dynaray"]["extra"]["update_reads"] == 0


@pytest.mark.timeout(300)
def test_a_write_only_run_reads_a_key_whose_writes_left_siblings(tmp_path):
    """Workload W never reads, so a key whose racing writes left siblings got one more
    with every write (an answer that covers only what was sent) until writes to it failed
    with SiblingLimitError. The next update of such a key now reads it first."""
    report = _run(
        tmp_path,
        *("--workload", "W", "--keys", "5", "--clients", "16", "--nodes", "3"),
        *("--duration", "4", "--warmup", "0", "--targets", "dynaray"),
    )
    result = report["targets"]["dynaray"]
    assert result["status"] == "ok", result
    assert result["error_count"] == 0, result["error_samples"]
    assert result["extra"]["sibling_reads"] > 0  # 16 clients on 5 keys: writes raced
    assert result["extra"]["max_siblings"] < 100


def test_a_failure_after_a_measured_run_keeps_that_run(tmp_path, monkeypatch):
    """The half-peak run failing (here: the harness's drive raises) is reported as that
    run's failure; the closed-loop run before it stands."""
    drive = bench.drive
    calls: list = []

    async def failing(target, settings, label, processes=1):
        calls.append(label)
        if "@" in label:
            raise RuntimeError("a driver process died")
        return await drive(target, settings, label, processes)

    monkeypatch.setattr(bench, "drive", failing)
    if ray.is_initialized():
        ray.shutdown()
    out = tmp_path / "bench.json"
    try:
        code = bench.main(
            [
                *("--keys", "50", "--clients", "4", "--duration", "1", "--warmup", "0"),
                *("--targets", "naive", "--half-peak", "--json", str(out), "--no-progress"),
            ]
        )
    finally:
        if ray.is_initialized():
            ray.shutdown()
    assert code == 1  # a run failed
    report = json.loads(out.read_text())
    assert calls == ["naive", "naive@half"]
    assert report["targets"]["naive"]["status"] == "ok"
    assert report["targets"]["naive"]["throughput_ops_s"] > 0
    failed = report["targets"]["naive@half"]
    assert failed["status"] == "failed" and "a driver process died" in failed["reason"]


def _report(targets: dict, rate: float | None = None) -> dict:
    settings = {
        "workload": "A", "workload_text": "50% reads", "distribution": "uniform",
        "keys": 100, "value_size": 100, "clients": 4, "processes": 1, "duration": 1.0,
        "warmup": 0.0, "seed": 1, "nodes": 5, "n": 3, "r": 2, "w": 2, "rate": rate,
    }  # fmt: skip
    for result in targets.values():
        result.update(error_count=0, errors={}, extra={})
    return {"settings": settings, "targets": targets,
            "environment": {"cpus": 2, "python": "3.11"}}  # fmt: skip


def _row(text: str, name: str) -> list[str]:
    return next(line.split() for line in text.splitlines() if line.startswith(name + " "))


def test_the_report_gives_ratios_of_closed_loop_peaks_only():
    """A paced run's throughput is the rate it was given: no ratio against a peak."""
    targets = {name: _ran_target(thr, 5) for name, thr in
               [("dynaray", 1000), ("dynaray@half", 500), ("naive", 500),
                ("redis", 10_000), ("etcd", 250)]}  # fmt: skip
    text = bench.format_report(_report(targets))
    assert _row(text, "dynaray")[2:5] == ["2.00x", "0.10x", "4.00x"]  # naive, redis, etcd
    assert _row(text, "dynaray@half")[2:5] == ["-", "-", "-"]
    assert "4.00x etcd (3 members)" in text
    targets["dynaray"]["bulk"] = {"status": "failed", "reason": "RuntimeError: a node died"}
    assert "bulk failed: RuntimeError: a node died" in bench.format_report(_report(targets))
    paced = bench.format_report(_report(targets, rate=450))
    assert "paced at 450 ops/s" in paced
    assert "x" not in "".join(_row(paced, "dynaray")[2:5])
    assert "did 1,000 ops/s" not in paced


def test_bench_refuses_half_peak_with_a_rate():
    with pytest.raises(SystemExit):
        bench.parse_args(["--half-peak", "--rate", "100"])


def test_an_etcd_that_answers_with_an_error_is_reported_with_it(monkeypatch):
    """An etcd whose /v3 gateway answers 404 (before 3.4) was reported as not answering."""
    import asyncio

    class Refusing:
        def __init__(self, limit):
            pass

        async def post(self, url, payload):
            raise bench.EtcdError(f"HTTP 404 from {url}: 404 page not found")

        async def close(self):
            pass

    spawn = bench._spawn
    monkeypatch.setattr(bench, "missing_requirement", lambda name: None)
    monkeypatch.setattr(bench, "_Http", Refusing)
    monkeypatch.setattr(bench, "_spawn", lambda cmd, log, cwd: spawn(["sleep", "60"], log, cwd))
    target = bench.EtcdTarget(4)
    target.start_timeout = 0.5
    try:
        with pytest.raises(RuntimeError, match="HTTP 404"):
            asyncio.run(target.setup())
    finally:
        asyncio.run(target.close())
    assert all(proc.poll() is not None for proc in target.procs)


@pytest.mark.timeout(300)
def test_bench_smoke(tmp_path):
    targets = _targets()
    report = _run(
        tmp_path,
        *("--workload", "A", "--keys", "200", "--clients", "8", "--nodes", "3"),
        *("--duration", "2", "--warmup", "0.5", "--targets", ",".join(targets), "--half-peak"),
        "--bulk",
    )
    assert report["settings"]["workload"] == "A"
    bulk = report["targets"]["dynaray"]["bulk"]
    for op in ("get_many", "put_many"):  # fewer keys than a batch: each batch holds them all
        assert bulk[op]["keys_per_s"] > 0 and not bulk[op]["errors"], bulk[op]
    # 200 keys, N=3 of 3 nodes: every node holds each; a record is its value and metadata.
    foot = report["targets"]["dynaray"]["footprint"]
    assert foot["status"] == "ok" and foot["keys_per_node"] == 200, foot
    assert 0 < foot["metadata_bytes"] < foot["record_bytes"] and foot["rss_bytes"] > 0
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
        paced = report["targets"][f"{name}@half"]
        assert paced["status"] == "ok", paced
        assert paced["offered_ops_s"] == pytest.approx(result["throughput_ops_s"] / 2, abs=0.1)
        assert paced["ops"]["read"]["latency_us"]["count"] > 0


@pytest.mark.timeout(300)
def test_footprint_reports_what_a_key_costs():
    from benchmarks import footprint

    if ray.is_initialized():
        ray.shutdown()
    try:
        result = footprint.run(keys=3_000, value_size=50, updates=500)
    finally:
        if ray.is_initialized():
            ray.shutdown()
    assert set(result["nodes"]) == {"n1", "n2", "n3"}
    for figures in result["nodes"].values():
        assert figures["keys"] == 3_000  # N=3 of 3 nodes: every node holds every key
        assert figures["sampled"] == 3_000
        assert figures["value_bytes"] == 51  # the value and its one-byte encoding tag
        assert 0 < figures["metadata_bytes"] < 100
        assert figures["disk_bytes"] > 3_000 * figures["record_bytes"]
        assert figures["rss_bytes"] > 0
    assert "metadata B" in footprint.report(result)


def test_ray_call_measures_what_a_bare_call_costs():
    # One shape, briefly, in a process of its own (it starts a Ray of its own).
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.ray_call", "--shape", "async-await", "--seconds", "0.5"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert figures["shape"] == "async-await"
    assert figures["calls_per_s"] > 0 and figures["caller_us_per_call"] > 0


def test_disk_floor_measures_what_storing_a_copy_costs():
    from benchmarks import disk_floor

    for layer in disk_floor.LAYERS:
        figures = disk_floor.measure(layer, seconds=0.3, batch=50, preload=10_000)
        assert figures["layer"] == layer
        assert figures["written"] >= 50
        assert figures["stored"] == 10_000 + figures["written"]  # every copy was kept
        assert figures["keys_per_s"] > 0
        assert figures["user_us_per_key"] + figures["system_us_per_key"] > 0


def _ran_target(throughput: float, p50_ms: float) -> dict:
    latency = {"count": 100, "p50": p50_ms * 1000, "p95": p50_ms * 2000, "p99": p50_ms * 3000}
    latency["p99.9"] = p50_ms * 4000
    ops = {op: {"latency_us": dict(latency), "ops_s": throughput / 2} for op in ("read", "update")}
    return {"status": "ok", "throughput_ops_s": throughput, "ops": ops}


def test_chart_draws_a_line_per_target_with_its_half_peak_run_in_its_colour(tmp_path):
    matplotlib = pytest.importorskip("matplotlib", reason="pip install -e '.[bench]'")
    matplotlib.use("Agg")
    report = {
        "settings": {"workload": "A", "distribution": "zipfian", "keys": 100, "value_size": 100,
                     "clients": 4, "duration": 1.0},
        "targets": {
            "dynaray": _ran_target(1000, 20), "dynaray@half": _ran_target(500, 10),
            "naive": _ran_target(2000, 25), "naive@half": _ran_target(1000, 2),
            "etcd": {"status": "skipped", "reason": "etcd skipped: missing the etcd binary"},
        },
    }  # fmt: skip
    fig = bench.draw(report)
    try:
        throughput, *panels = fig.axes
        assert [t.get_text() for t in throughput.get_xticklabels()] == [
            "dynaray", "dynaray@half", "naive", "naive@half"
        ]  # fmt: skip
        assert [p.get_title().split()[0] for p in panels] == ["read", "update"]
        for panel in panels:
            lines = {line.get_label(): line for line in panel.get_lines()}
            assert sorted(lines) == ["dynaray", "dynaray@half", "naive", "naive@half"]
            for base in ("dynaray", "naive"):
                peak, half = lines[base], lines[f"{base}@half"]
                assert peak.get_color() == half.get_color()
                assert (peak.get_linestyle(), half.get_linestyle()) == ("-", "--")
            assert lines["dynaray"].get_color() != lines["naive"].get_color()
            assert list(lines["naive@half"].get_ydata()) == [2, 4, 6, 8]  # milliseconds
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
    out = tmp_path / "chart.png"
    assert bench.write_png(report, str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report["targets"] = {"etcd": report["targets"]["etcd"]}
    assert bench.draw(report) is None
    assert not bench.write_png(report, str(tmp_path / "none.png"))
    assert not (tmp_path / "none.png").exists()


def test_scrambled_zipfian_reaches_every_key_with_ycsbs_hottest_share():
    """As YCSB's generator: ranks from 10**10, hashed onto the keys. Drawn from only as
    many ranks as keys, about a quarter of the keys were never chosen and the hottest
    one took near 10% of the requests."""
    import random
    from collections import Counter

    chooser = bench.ScrambledZipfian(10_000)
    rng = random.Random(1)
    counts = Counter(chooser.next(rng) for _ in range(200_000))
    assert len(counts) > 9_900
    assert 0.02 < counts.most_common(1)[0][1] / 200_000 < 0.06
