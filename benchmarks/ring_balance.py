"""How evenly dynaray's ring spreads a million random keys, and how many move when a node joins or
leaves. Run with ``python -m benchmarks.ring_balance [--json]``."""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Sequence

import mmh3

from dynaray.ring import Ring

NODE_COUNTS = (5, 20, 100)
PARTITION_COUNTS = (256, 4096)
REPLICAS = 3
DEFAULT_KEYS = 1_000_000
DEFAULT_SEED = 2007  # the year of the Dynamo paper; any fixed seed makes runs comparable


def random_hashes(count: int, seed: int) -> list[int]:
    """The 32-bit mmh3 hashes of ``count`` random 16-byte keys."""
    blob = random.Random(seed).randbytes(16 * count)
    hash_ = mmh3.hash
    return [hash_(blob[i : i + 16], signed=False) for i in range(0, len(blob), 16)]


def keys_per_partition(hashes: Sequence[int], partitions: int) -> list[int]:
    """How many of the hashed keys fall in each of ``partitions`` equal slices of the hash space."""
    shift = 32 - (partitions.bit_length() - 1)
    counts = [0] * partitions
    for h in hashes:
        counts[h >> shift] += 1
    return counts


def coarser(counts: Sequence[int], partitions: int) -> list[int]:
    """Per-partition counts for fewer partitions: each is a run of the finer ones."""
    width = len(counts) // partitions
    return [sum(counts[p : p + width]) for p in range(0, len(counts), width)]


def replica_sets(ring: Ring, n: int) -> list[tuple[str, ...]]:
    return [ring.preference_list(p)[:n] for p in range(ring.partitions)]


def max_over_mean(per_node: dict[str, int]) -> float:
    return max(per_node.values()) / (sum(per_node.values()) / len(per_node))


def primary_load(ring: Ring, counts: Sequence[int]) -> dict[str, int]:
    return {n: sum(counts[p] for p in ring.partitions_of(n)) for n in ring.nodes()}


def replica_load(ring: Ring, counts: Sequence[int], n: int) -> dict[str, int]:
    load = dict.fromkeys(ring.nodes(), 0)
    for p, replicas in enumerate(replica_sets(ring, n)):
        for node in replicas:
            load[node] += counts[p]
    return load


def moved(before: Ring, after: Ring, counts: Sequence[int], n: int) -> tuple[float, float]:
    """Fraction of keys whose primary changes, and of replica copies that must be transferred."""
    total = sum(counts)
    primary = sum(c for c, a, b in zip(counts, before.owners, after.owners, strict=True) if a != b)
    copies = sum(
        c * len(set(new) - set(old))
        for c, old, new in zip(counts, replica_sets(before, n), replica_sets(after, n), strict=True)
    )
    return primary / total, copies / (total * n)


def measure(counts: Sequence[int], nodes: int) -> dict[str, object]:
    q = len(counts)
    ring = Ring.create([f"node-{i:03d}" for i in range(nodes)], q)
    owned = [len(ring.partitions_of(n)) for n in ring.nodes()]
    joined = ring.with_node("node-new")
    # A node from the middle of the sorted ids, so the leaver is not special.
    left = ring.without_node(ring.nodes()[nodes // 2])
    join_moved, join_copies = moved(ring, joined, counts, REPLICAS)
    leave_moved, leave_copies = moved(ring, left, counts, REPLICAS)
    return {
        "partitions": q,
        "nodes": nodes,
        "partitions_per_node": [min(owned), max(owned)],
        "primary_max_over_mean": round(max_over_mean(primary_load(ring, counts)), 4),
        "replica_max_over_mean": round(max_over_mean(replica_load(ring, counts, REPLICAS)), 4),
        "join_moved": round(join_moved, 4),
        "join_ideal": round(1 / (nodes + 1), 4),
        "join_replica_copies_moved": round(join_copies, 4),
        "leave_moved": round(leave_moved, 4),
        "leave_ideal": round(1 / nodes, 4),
        "leave_replica_copies_moved": round(leave_copies, 4),
    }


def table(rows: Sequence[dict[str, object]]) -> str:
    header = (
        "    Q  nodes  parts/node  primary  replica |  join moved  ideal  copies"
        " | leave moved  ideal  copies"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        low, high = r["partitions_per_node"]  # type: ignore[misc]
        balance = f"{r['primary_max_over_mean']:>7.3f}  {r['replica_max_over_mean']:>7.3f}"
        join = (
            f"{r['join_moved']:>10.4f} {r['join_ideal']:>6.4f}  "
            f"{r['join_replica_copies_moved']:.4f}"
        )
        leave = (
            f"{r['leave_moved']:>11.4f} {r['leave_ideal']:>6.4f}  "
            f"{r['leave_replica_copies_moved']:.4f}"
        )
        size = f"{r['partitions']:>5}  {r['nodes']:>5}  {f'{low}-{high}':>10}"
        lines.append(f"{size}  {balance} |  {join} | {leave}")
    lines += [
        "",
        "primary, replica: max/mean keys per node as primary owner, and as one of the N=3 replicas",
        "moved: fraction of keys whose primary owner changes (ideal: 1/(nodes+1), 1/nodes)",
        "copies: fraction of the N=3 replica copies that must be transferred to a new holder",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--keys", type=int, default=DEFAULT_KEYS, help="number of random keys")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the key RNG")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    hashes = random_hashes(args.keys, args.seed)
    # Q is a power of two, so the counts for a smaller Q are sums of runs of the largest one's.
    finest = keys_per_partition(hashes, max(PARTITION_COUNTS))
    rows = [measure(coarser(finest, q), nodes) for q in PARTITION_COUNTS for nodes in NODE_COUNTS]
    elapsed = time.perf_counter() - started

    if args.json:
        report = {"keys": args.keys, "seed": args.seed, "replicas": REPLICAS, "results": rows}
        print(json.dumps(report, indent=2))
    else:
        print(f"{args.keys:,} random 16-byte keys (seed {args.seed}), {elapsed:.1f} s\n")
        print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
