"""What one Ray actor call costs on this machine, with no dynaray in it: the floor under
every hop of the store (client to coordinator, coordinator to replica).

An actor whose method returns its argument (three 100-byte values, like a small batch)
is called by 8 concurrent callers for a few seconds; the CPU time of the actor process and
of the calling process, divided by the calls made, is what each call costs them. Shapes:

- async-await: an async actor (as a storage node is), calls awaited in asyncio (as the
  client and the nodes do);
- async-get: the same actor, calls collected with ray.get eight at a time;
- sync-await / sync-get: a plain (threaded) actor;
- bridged-await: a plain actor whose method hands the work to an asyncio loop of its own
  (on a thread) and waits for it: how a storage node, whose every loop is asyncio, would
  run as a plain actor;
- compiled-get: the plain actor's method in a Ray compiled graph (`ray.dag`,
  `experimental_compile`), eight executions at a time, which pass data through shared
  memory instead of a call.

Then the actor sits idle for two seconds: `actor idle %` is the share of a core it uses
meanwhile (a compiled graph's actor polls its channel).

Each shape runs in a fresh Ray, one after the other. `--system-config` passes Ray system
settings to it (e.g. '{"event_stats": false}'), to see what one changes.

    python -m benchmarks.ray_call [--seconds 6] [--system-config JSON] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import threading
import time

SHAPES = ("async-await", "async-get", "sync-await", "sync-get", "bridged-await", "compiled-get")
IDLE_SECONDS = 2.0
CALLERS = 8
PAYLOAD = [b"x" * 100] * 3


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(shape: str, seconds: float, system_config: dict | None = None) -> dict:
    """Run one shape in this process (which starts its own Ray) and return its figures."""
    import ray

    ray.init(
        address="local",  # its own Ray: never a cluster another process started here
        include_dashboard=False,
        num_cpus=2,
        logging_level="ERROR",
        log_to_driver=False,
        _system_config=system_config or None,
    )

    @ray.remote(num_cpus=0, max_concurrency=1000)
    class AsyncEcho:
        async def echo(self, x):
            return x

        async def pid(self):
            return os.getpid()

    @ray.remote(num_cpus=0)
    class SyncEcho:
        def echo(self, x):
            return x

        def pid(self):
            return os.getpid()

    @ray.remote(num_cpus=0, max_concurrency=64)
    class BridgedEcho:
        def __init__(self):
            self.loop = asyncio.new_event_loop()
            threading.Thread(target=self.loop.run_forever, daemon=True).start()

        async def _echo(self, x):
            return x

        def echo(self, x):
            return asyncio.run_coroutine_threadsafe(self._echo(x), self.loop).result(60)

        def pid(self):
            return os.getpid()

    kind, wait = shape.split("-")
    actor = {"async": AsyncEcho, "bridged": BridgedEcho}.get(kind, SyncEcho).remote()
    pid = ray.get(actor.pid.remote())

    send = actor.echo.remote
    graph = None
    if kind == "compiled":
        from ray.dag import InputNode

        with InputNode() as given:
            graph = actor.echo.bind(given).experimental_compile()
        send = graph.execute

    def by_get(duration: float) -> int:
        calls, start = 0, time.perf_counter()
        while time.perf_counter() - start < duration:
            ray.get([send(PAYLOAD) for _ in range(CALLERS)])
            calls += CALLERS
        return calls

    async def by_await(duration: float) -> int:
        calls, start = 0, time.perf_counter()

        async def caller() -> None:
            nonlocal calls
            while time.perf_counter() - start < duration:
                await actor.echo.remote(PAYLOAD)
                calls += 1

        await asyncio.gather(*(caller() for _ in range(CALLERS)))
        return calls

    run = by_get if wait == "get" else (lambda duration: asyncio.run(by_await(duration)))
    run(1.0)  # warm up: workers started, functions exported
    actor_cpu, own_cpu, start = _cpu_seconds(pid), _cpu_seconds(os.getpid()), time.perf_counter()
    calls = run(seconds)
    elapsed = time.perf_counter() - start
    actor_cpu, own_cpu = _cpu_seconds(pid) - actor_cpu, _cpu_seconds(os.getpid()) - own_cpu
    idle_from = _cpu_seconds(pid)
    time.sleep(IDLE_SECONDS)
    idle = (_cpu_seconds(pid) - idle_from) / IDLE_SECONDS
    if graph is not None:
        graph.teardown()
    figures = {
        "shape": shape,
        "calls_per_s": round(calls / elapsed),
        "actor_us_per_call": round(actor_cpu / calls * 1e6),
        "caller_us_per_call": round(own_cpu / calls * 1e6),
        "actor_idle_percent": round(100 * idle),
    }
    ray.shutdown()
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ray_call", description=__doc__)
    parser.add_argument("--seconds", type=float, default=6.0, help="measured seconds per shape")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--system-config", default="{}", help="Ray system settings, JSON (default: none)"
    )
    parser.add_argument("--shape", choices=SHAPES, help=argparse.SUPPRESS)  # one, in a child
    args = parser.parse_args(argv)
    if args.shape:
        print(json.dumps(measure(args.shape, args.seconds, json.loads(args.system_config))))
        return 0
    rows = []
    for shape in SHAPES:  # each in a process of its own: a fresh Ray, nothing shared
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.ray_call", "--shape", shape, "--seconds",
             str(args.seconds), "--system-config", args.system_config],
            capture_output=True, text=True, check=True, timeout=300,
        )  # fmt: skip
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(
        f"{'shape':<12} {'calls/s':>8} {'actor us/call':>14} {'caller us/call':>15} "
        f"{'actor idle %':>13}"
    )
    for row in rows:
        print(
            f"{row['shape']:<12} {row['calls_per_s']:>8,} {row['actor_us_per_call']:>14,} "
            f"{row['caller_us_per_call']:>15,} {row['actor_idle_percent']:>13}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
