"""What storing one copy of a key costs on this machine, with no Ray in it: the floor under
`put_many`, which stores N copies of every key.

A store preloaded with keys takes transactions of `--batch` new keys each, committed with
fsync as a node commits (sync and metasync on), for a few seconds; the process's CPU time
(user and system: LMDB's page writes and fsyncs are system time) divided by the keys
written is what one copy costs. Keys are random, as a partition hash spreads them, so each
lands on a B-tree page of its own; records are 132 bytes, the mean of a 100-byte value
with its version metadata (docs/performance.md, "Footprint").

Two layers:

- lmdb: LMDB alone, one transaction per batch, a get and a put per key (a replica reads
  what it holds before merging);
- store: dynaray's storage layer as a replica uses it: `Store.write` through the writer
  thread (group commit), `records.merge_into` of a real encoded record, and the Merkle
  tree kept current by `KeyRanges`.

The last line is the ceiling that follows for `put_many` on this machine: its cores,
divided by N copies times the CPU of one copy at the store layer, before any of the
client, Ray or the coordinator's work.

    python -m benchmarks.disk_floor [--seconds 5] [--batch 200] [--preload 100000] [--n 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import sys
import tempfile
import time

import lmdb

from dynaray import codec, records
from dynaray.ranges import KeyRanges
from dynaray.storage import DATA, Store, Txn

LAYERS = ("lmdb", "store")


def _cpu() -> tuple[float, float]:
    """User and system CPU seconds of this process so far (every thread)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


class _Keys:
    """Random data keys laid out as a node lays them out (partition, segment, key)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def batch(self, size: int) -> list[bytes]:
        out = []
        for _ in range(size):
            hashed = codec.hash_input(b"default", self.rng.randbytes(12))
            partition, segment = self.rng.randrange(64), self.rng.randrange(1024)
            out.append(codec.placed_key(partition, segment, hashed))
        return out


def _record(rng: random.Random) -> bytes:
    """An encoded record of a 100-byte value written once, as a coordinator makes it."""
    op = ["siblings", [], rng.randbytes(100)]
    return records.encode(records.update(None, op, "n1", time.time_ns() // 1000))


def measure(layer: str, seconds: float, batch: int, preload: int) -> dict:
    """Run one layer in a fresh directory and return its figures."""
    keys, rng = _Keys(1), random.Random(2)
    value = _record(rng)
    with tempfile.TemporaryDirectory(prefix="dynaray-floor-") as path:
        if layer == "lmdb":
            env = lmdb.open(path, map_size=1 << 30, sync=True, metasync=True, readahead=False)

            def write(chunk: list[bytes]) -> None:
                with env.begin(write=True) as txn:
                    for key in chunk:
                        txn.get(key)
                        txn.put(key, value)

            def stored() -> int:
                return env.stat()["entries"]

            close = env.close
        else:
            store = Store(os.path.join(path, "node"), "floor", fresh=True)
            KeyRanges(store)  # registers the Merkle observer, as a node does
            loop = asyncio.new_event_loop()

            def write(chunk: list[bytes]) -> None:
                def op(txn: Txn) -> None:
                    for key in chunk:
                        new = records.merge_into(txn.get(DATA, key), value)
                        if new is not None:
                            txn.put(DATA, key, new)

                loop.run_until_complete(store.write(op))

            def stored() -> int:
                return store.count(DATA)

            def close() -> None:
                store.close()
                loop.close()

        for start in range(0, preload, 10_000):
            write(keys.batch(min(10_000, preload - start)))
        written, (user, system), start = 0, _cpu(), time.perf_counter()
        while time.perf_counter() - start < seconds:
            write(keys.batch(batch))
            written += batch
        elapsed = time.perf_counter() - start
        user_after, system_after = _cpu()
        held = stored()
        close()
    return {
        "layer": layer,
        "batch": batch,
        "written": written,
        "stored": held,  # the preload and every key written (random keys: none repeats)
        "keys_per_s": round(written / elapsed),
        "user_us_per_key": round((user_after - user) / written * 1e6, 1),
        "system_us_per_key": round((system_after - system) / written * 1e6, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.disk_floor", description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per layer")
    parser.add_argument("--batch", type=int, default=200, help="keys per transaction")
    parser.add_argument("--preload", type=int, default=100_000, help="keys stored first")
    parser.add_argument("--n", type=int, default=3, help="copies of each key (N)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.preload < 0 or args.n < 1 or args.seconds <= 0:
        parser.error("--batch and --n must be at least 1, --seconds above 0, --preload 0 or more")
    rows = [measure(layer, args.seconds, args.batch, args.preload) for layer in LAYERS]
    cores = os.cpu_count() or 1
    per_copy = rows[-1]["user_us_per_key"] + rows[-1]["system_us_per_key"]
    ceiling = round(cores / (args.n * per_copy * 1e-6))
    if args.json:
        print(json.dumps({"rows": rows, "cores": cores, "n": args.n, "ceiling": ceiling}))
        return 0
    print(f"{'layer':<6} {'batch':>6} {'keys/s':>9} {'user us/key':>12} {'system us/key':>14}")
    for row in rows:
        print(
            f"{row['layer']:<6} {row['batch']:>6} {row['keys_per_s']:>9,} "
            f"{row['user_us_per_key']:>12} {row['system_us_per_key']:>14}"
        )
    print(
        f"{cores} cores / ({args.n} copies x {per_copy:.1f} us) = at most {ceiling:,} keys/s "
        "for put_many, from storing alone"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
