"""What one Merkle exchange costs: M keys in one key range, k of them different on one side.

Two real LMDB stores (no Ray, so the figure is the protocol's, not the network's), the same
Exchange code the nodes run. Reports hashes exchanged, bytes sent, keys repaired and time.

    python -m benchmarks.anti_entropy --keys 100000 --differing 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time

from dynaray import codec, records
from dynaray.anti_entropy import Exchange
from dynaray.ranges import KeyRanges
from dynaray.ring import SEGMENTS
from dynaray.storage import DATA, Store

PARTITION = 7


def _record(value: bytes, node: str = "n1", stored: records.Record | None = None) -> records.Record:
    """A write of value by node, following `stored` (what its writer read)."""
    return records.update(stored, ["siblings", records.context_of(stored), value], node, 1)


class Replica:
    """One side of the exchange: a store, its ranges, and the calls a peer may make."""

    def __init__(self, path: str, node: str) -> None:
        self.store = Store(path, node, sync=False, fresh=True)
        self.ranges = KeyRanges(self.store)

    async def load(self, items: dict[bytes, records.Record]) -> None:
        encoded = [(k, records.encode(rec)) for k, rec in items.items()]
        for start in range(0, len(encoded), 10_000):
            chunk = encoded[start : start + 10_000]

            def op(txn, chunk=chunk) -> None:
                for key, record in chunk:
                    txn.put(DATA, key, record)

            await self.store.write(op)

    async def apply(self, items: list) -> int:
        def op(txn) -> int:
            for dkey, incoming, _ in items:
                new = records.merge_into(txn.get(DATA, dkey), incoming)
                if new is not None:
                    txn.put(DATA, dkey, new)
            return len(items)

        return await self.store.write(op)

    async def answer(self, method: str, partition: int, *args):
        if method == "apply":
            return await self.apply(args[0])
        return getattr(self.ranges, method)(partition, *args)


async def _run(keys: int, differing: int, seed: int) -> dict:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as a_dir, tempfile.TemporaryDirectory() as b_dir:
        a, b = Replica(a_dir, "a"), Replica(b_dir, "b")
        items = {}
        for i in range(keys):
            dkey = codec.data_key(PARTITION, rng.randrange(SEGMENTS), b"default", b"key-%d" % i)
            items[dkey] = _record(b"value-%d" % i)
        await a.load(items)
        changed = rng.sample(sorted(items), differing)
        # On b: half the differing keys have a newer version, half are missing.
        b_items = dict(items)
        for n, dkey in enumerate(changed):
            if n % 2:
                del b_items[dkey]
            else:
                b_items[dkey] = _record(b"new", "n2", items[dkey])
        await b.load(b_items)
        before = a.ranges.tree(PARTITION).root != b.ranges.tree(PARTITION).root
        started = time.perf_counter()
        figures = await Exchange(PARTITION, b.answer, a.ranges, a.apply).run()
        elapsed = time.perf_counter() - started
        after = a.ranges.tree(PARTITION).root == b.ranges.tree(PARTITION).root
        a.store.close()
        b.store.close()
    return {
        "keys": keys,
        "differing": differing,
        "roots_differed_before": before,
        "roots_equal_after": after,
        **figures.as_dict(),
        "seconds": round(elapsed, 4),
        "naive_hashes": keys,
    }


def run(keys: int = 100_000, differing: int = 10, seed: int = 1) -> dict:
    return asyncio.run(_run(keys, differing, seed))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--differing", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run(args.keys, args.differing, args.seed)
    if args.json:
        print(json.dumps(result))
    else:
        for name, value in result.items():
            print(f"{name:>22}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
