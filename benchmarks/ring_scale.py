"""How the ring and its handoff plan behave at 10, 100 and 1,000 nodes: joins and leaves.

A pure simulation: no Ray and no keys. Partitions are equal slices of the hash space, so
counting partitions (each weighing 1/Q of the key space) is exact, with no sampling error.
For each cluster size, Q is the smallest power of two with at least 16 partitions per node;
the ring starts from Ring.create, takes a few joins, then a few leaves, and for each change
reports how much moved against the ideal, the balance after it and what the call cost.

    python -m benchmarks.ring_scale [--json] [--sizes 10 100 1000] [--changes 5]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Sequence

from dynaray.ring import MAX_PARTITIONS, Ring

SIZES = (10, 100, 1000)
CHANGES = 5
REPLICAS = 3
PER_NODE = 16
DEFAULT_SEED = 2007
# A membership change slower than this is flagged in the output, not hidden.
SLOW_CALL = 1.0


def partitions_for(nodes: int) -> int:
    """The smallest power of two >= PER_NODE * nodes (at least 16), capped at MAX_PARTITIONS."""
    q = 16
    while q < PER_NODE * nodes:
        q *= 2
    return min(q, MAX_PARTITIONS)


def replica_sets(ring: Ring) -> dict[str, frozenset[int]]:
    """Per node, the partitions it stores with N=3: the ring's own replicated_partitions."""
    return {n: frozenset(ring.replicated_partitions(n, REPLICAS)) for n in ring.nodes()}


def preference_cost(ring: Ring) -> tuple[float, int]:
    """Seconds to build the ring's preference lists (built once, on first use) and their size
    in bytes (the distinct tuples it keeps, each listing every node)."""
    started = time.perf_counter()
    ring.preference_list(0)
    seconds = time.perf_counter() - started
    seen: dict[int, int] = {}
    for p in range(ring.partitions):
        prefs = ring.preference_list(p)
        seen[id(prefs)] = sys.getsizeof(prefs)
    return seconds, sum(seen.values())


def max_over_mean(counts: Sequence[int]) -> float:
    return max(counts) * len(counts) / sum(counts)


def change_figures(
    kind: str,
    node: str,
    before: Ring,
    after: Ring,
    sets_before: dict[str, frozenset[int]],
    sets_after: dict[str, frozenset[int]],
    seconds: float,
) -> dict[str, object]:
    q = before.partitions
    nodes_before = len(before.nodes())
    # A joiner takes 1/(n+1) of the key space and 3/(n+1) of the copies; a leaver's share of
    # 1/n (3/n copies) must go somewhere. Anything above that is collateral movement.
    share = nodes_before + 1 if kind == "join" else nodes_before
    moved = sum(1 for a, b in zip(before.owners, after.owners, strict=True) if a != b)
    copies = sum(len(ps - sets_before.get(n, frozenset())) for n, ps in sets_after.items())
    return {
        "change": kind,
        "node": node,
        "nodes_after": len(after.nodes()),
        "seconds": round(seconds, 6),
        "slow": seconds > SLOW_CALL,
        "primary_moved": round(moved / q, 5),
        "primary_ideal": round(1 / share, 5),
        "copies_moved": round(copies / q, 5),
        "copies_ideal": round(REPLICAS / share, 5),
        "primary_over_ideal": round(moved * share / q, 4),
        "copies_over_ideal": round(copies * share / (REPLICAS * q), 4),
        "primary_max_over_mean": round(
            max_over_mean([len(after.partitions_of(n)) for n in after.nodes()]), 4
        ),
        "replica_max_over_mean": round(max_over_mean([len(ps) for ps in sets_after.values()]), 4),
    }


def simulate(nodes: int, changes: int, seed: int) -> dict[str, object]:
    started = time.perf_counter()
    rng = random.Random(seed + nodes)
    q = partitions_for(nodes)
    ring = Ring.create([f"node-{i:04d}" for i in range(nodes)], q)
    prefs_seconds, prefs_bytes = preference_cost(ring)
    sets = replica_sets(ring)
    initial = {
        "primary_max_over_mean": round(
            max_over_mean([len(ring.partitions_of(n)) for n in ring.nodes()]), 4
        ),
        "replica_max_over_mean": round(max_over_mean([len(ps) for ps in sets.values()]), 4),
    }
    plan = [("join", f"new-{j:02d}") for j in range(changes)] + [("leave", "")] * changes
    rows = []
    for kind, node in plan:
        if kind == "leave":
            node = rng.choice(ring.nodes())
        call = ring.with_node if kind == "join" else ring.without_node
        t0 = time.perf_counter()
        after = call(node)
        seconds = time.perf_counter() - t0
        after_sets = replica_sets(after)
        rows.append(change_figures(kind, node, ring, after, sets, after_sets, seconds))
        ring, sets = after, after_sets
    return {
        "nodes": nodes,
        "partitions": q,
        "initial": initial,
        "preference_lists_seconds": round(prefs_seconds, 4),
        "preference_lists_mib": round(prefs_bytes / (1 << 20), 2),
        "changes": rows,
        "summary": summarize(rows),
        "seconds": round(time.perf_counter() - started, 2),
    }


def summarize(rows: Sequence[dict]) -> dict[str, object]:
    out: dict[str, object] = {}
    for kind in ("join", "leave"):
        mine = [r for r in rows if r["change"] == kind]
        if not mine:
            continue
        out[kind] = {
            "primary_over_ideal": max(r["primary_over_ideal"] for r in mine),
            "copies_over_ideal": max(r["copies_over_ideal"] for r in mine),
            "max_seconds": max(r["seconds"] for r in mine),
        }
    out["worst_primary_max_over_mean"] = max(r["primary_max_over_mean"] for r in rows)
    out["worst_replica_max_over_mean"] = max(r["replica_max_over_mean"] for r in rows)
    out["slow_calls"] = sum(1 for r in rows if r["slow"])
    return out


def table(results: Sequence[dict]) -> str:
    header = (
        "nodes      Q  change  node        n'   call ms | primary moved   ideal    x"
        " | copies moved   ideal    x | balance prim  repl"
    )
    lines = [header, "-" * len(header)]
    for res in results:
        for r in res["changes"]:
            primary, copies = r["primary_over_ideal"], r["copies_over_ideal"]
            slow = "  SLOW" if r["slow"] else ""
            lines.append(
                f"{res['nodes']:>5} {res['partitions']:>6}  {r['change']:<6}  {r['node']:<10}"
                f" {r['nodes_after']:>4} {r['seconds'] * 1000:>9.2f} |"
                f" {r['primary_moved']:>13.5f} {r['primary_ideal']:>7.5f} {primary:>4.2f} |"
                f" {r['copies_moved']:>12.5f} {r['copies_ideal']:>7.5f} {copies:>4.2f} |"
                f" {r['primary_max_over_mean']:>12.3f} {r['replica_max_over_mean']:>5.3f}{slow}"
            )
        lines.append("")
    lines += [
        "primary moved: fraction of the key space whose primary owner changed (ideal 1/(n+1) for",
        "  a join, 1/n for a leave; n = nodes before); x = measured / ideal",
        "copies moved: replica copies (N=3) a node gains, from replicated_partitions before and",
        "  after, in key-space units (ideal 3/(n+1) resp. 3/n: the joiner's or leaver's share)",
        "balance: max/mean partitions owned, and max/mean partitions stored with N=3, after it",
        f"call ms: wall time of Ring.with_node / Ring.without_node (SLOW above {SLOW_CALL:.0f} s)",
    ]
    return "\n".join(lines)


def summary_line(res: dict) -> str:
    s = res["summary"]
    parts = [f"{res['nodes']} nodes, Q={res['partitions']}:"]
    for kind in ("join", "leave"):
        if kind in s:
            k = s[kind]
            parts.append(
                f"{kind}s move <= {k['primary_over_ideal']:.2f}x ideal primary,"
                f" <= {k['copies_over_ideal']:.2f}x ideal copies,"
                f" <= {k['max_seconds'] * 1000:.1f} ms;"
            )
    parts.append(
        f"worst balance {s['worst_primary_max_over_mean']:.3f} primary,"
        f" {s['worst_replica_max_over_mean']:.3f} replica;"
        f" preference lists {res['preference_lists_seconds']:.2f} s,"
        f" {res['preference_lists_mib']} MiB per ring"
    )
    if s["slow_calls"]:
        parts.append(f"; {s['slow_calls']} membership call(s) over {SLOW_CALL:.0f} s")
    return " ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--changes", type=int, default=CHANGES, help="joins, then as many leaves")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="picks the leaving nodes")
    args = parser.parse_args(argv)
    if args.changes < 0 or any(n < 1 for n in args.sizes):
        parser.error("sizes must be positive and changes non-negative")

    started = time.perf_counter()
    results = [simulate(nodes, args.changes, args.seed) for nodes in args.sizes]
    elapsed = time.perf_counter() - started
    if args.json:
        report = {
            "replicas": REPLICAS,
            "partitions_per_node": PER_NODE,
            "seed": args.seed,
            "seconds": round(elapsed, 2),
            "results": results,
        }
        print(json.dumps(report, indent=2))
    else:
        print(
            f"ring joins/leaves, N={REPLICAS}, Q >= {PER_NODE} x nodes, seed {args.seed},"
            f" {elapsed:.1f} s (replica sets from replicated_partitions of every node)\n"
        )
        print(table(results))
        print()
        for res in results:
            print(summary_line(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
