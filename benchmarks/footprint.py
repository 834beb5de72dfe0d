"""What a key costs a node: version metadata bytes per key on disk, LMDB size and the node
process's memory, with a million keys. Run with ``python -m benchmarks.footprint``.

Three nodes with N=3, so every node holds every key: one node's figures are those of a node
holding `--keys` keys. Keys are written once each through put_many (one version, one dot),
then --updates of them are rewritten with their context, as an application does. The
figures are a node's mean over a sample of its records in key order, so they describe
keys written once, with a few updated ones among them; an update through the key's usual
coordinator adds no version-vector entry, only a larger counter.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence

BATCH = 1_000
IN_FLIGHT = 4


async def load(client, keys: int, value_size: int, start: int = 0) -> float:
    """Write keys start..keys-1 in batches, a few at once; returns keys per second."""
    began = time.perf_counter()
    sem = asyncio.Semaphore(IN_FLIGHT)
    value = b"v" * value_size

    async def batch(first: int) -> None:
        async with sem:
            items = {f"key{i:08d}": (None, value) for i in range(first, min(first + BATCH, keys))}
            _check_all(await client.aput_many(items), "writes")

    await asyncio.gather(*(batch(i) for i in range(start, keys, BATCH)))
    return (keys - start) / (time.perf_counter() - began)


async def update(client, count: int, value_size: int) -> None:
    """Read and rewrite the first `count` keys with their context."""
    value = b"u" * value_size
    for first in range(0, count, BATCH):
        names = [f"key{i:08d}" for i in range(first, min(first + BATCH, count))]
        current = await client.aget_many(names)
        _check_all(current, "reads")
        answers = await client.aput_many({k: (current[k].context, value) for k in names})
        _check_all(answers, "writes")


def _check_all(answers: dict, what: str) -> None:
    """A bulk call answers per key: a failed one is an error here, not part of a figure."""
    failed = [a for a in answers.values() if isinstance(a, Exception)]
    if failed:
        raise RuntimeError(f"{len(failed)} {what} failed, e.g. {failed[0]!r}")


def run(keys: int, value_size: int, updates: int) -> dict:
    import ray

    import dynaray

    started = not ray.is_initialized()
    if started:
        os.environ.setdefault("RAY_task_events_report_interval_ms", "0")
        ray.init(include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    cluster = dynaray.start(nodes=3, n=3, r=2, w=2, store=f"footprint-{os.getpid()}")
    try:
        client = cluster.client()
        before = cluster._ask("footprint", 1)
        rate = asyncio.run(load(client, keys, value_size))
        asyncio.run(update(client, min(updates, keys), value_size))
        after = cluster._ask("footprint", 10_000, timeout=120.0)
        return {
            "keys": keys,
            "value_size": value_size,
            "updated": min(updates, keys),
            "load_keys_per_s": round(rate),
            "empty_node_rss_bytes": {n: f["rss_bytes"] for n, f in before.items()},
            "nodes": after,
        }
    finally:
        cluster.shutdown()
        if started:
            ray.shutdown()


def report(result: dict) -> str:
    lines = [
        f"{result['keys']:,} keys of {result['value_size']} bytes on 3 nodes, N=3 (every node "
        f"holds every key); {result['updated']:,} updated once; loaded at "
        f"{result['load_keys_per_s']:,} keys/s",
        "",
        f"{'node':<6}{'keys':>11}{'key B':>8}{'record B':>10}{'value B':>9}{'metadata B':>12}"
        f"{'LMDB MiB':>10}{'RSS MiB':>9}{'RSS empty':>11}",
    ]
    mib = 1 << 20
    for node, f in sorted(result["nodes"].items()):
        empty = result["empty_node_rss_bytes"].get(node) or 0
        lines.append(
            f"{node:<6}{f['keys']:>11,}{f['key_bytes']:>8.1f}{f['record_bytes']:>10.1f}"
            f"{f['value_bytes']:>9.1f}{f['metadata_bytes']:>12.1f}"
            f"{f['disk_bytes'] / mib:>10.1f}{(f['rss_bytes'] or 0) / mib:>9.1f}"
            f"{empty / mib:>11.1f}"
        )
    lines.append(
        "metadata B: bytes of a stored record that are not the value (kind, version vector, "
        "dots, timestamp), mean over the first 10,000 records in the node's key order"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.footprint", description=__doc__)
    p.add_argument("--keys", type=int, default=1_000_000)
    p.add_argument("--value-size", type=int, default=100)
    p.add_argument("--updates", type=int, default=10_000, help="keys rewritten with context")
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args(argv)
    if args.keys <= 0 or args.value_size <= 0 or args.updates < 0:
        p.error("--keys and --value-size must be positive, --updates not negative")
    result = run(args.keys, args.value_size, args.updates)
    print(report(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
