"""The `dynaray` command: demo, up, down, get, put, delete, status, ring, join, leave, forget,
kill, restart, repair, buckets, bench, verify."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys

from dynaray import __version__
from dynaray.errors import DynarayError
from dynaray.manifest import home
from dynaray.names import DEFAULT_STORE, store_option

STATE_DIR = home()


def _state_file(store: str) -> str:
    return os.path.join(STATE_DIR, f"{store}.json")


def _read_state(store: str) -> dict:
    """What `dynaray up` recorded about the store: its data directory."""
    if not os.path.exists(_state_file(store)):
        return {}
    with open(_state_file(store)) as f:
        return json.load(f)


def _ray_command() -> list[str]:
    found = shutil.which("ray")
    return [found] if found else [sys.executable, "-m", "ray.scripts.scripts"]


def cmd_demo(args: argparse.Namespace) -> int:
    from dynaray import demo

    demo.run(nodes=args.nodes)
    return 0


def _connect_ray(address: str | None) -> bool:
    """Connect this driver to Ray; start a local head first if there is none. True if started."""
    import ray

    target = address or "auto"
    try:
        ray.init(address=target, namespace="dynaray", logging_level=logging.ERROR)
        return False
    except ConnectionError:
        if address is not None:
            raise DynarayError(f"no Ray cluster at {address!r}") from None
    print("No running Ray found here; starting a local Ray head (`ray start --head`).")
    subprocess.run(
        [*_ray_command(), "start", "--head", "--include-dashboard=false", "--disable-usage-stats"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    ray.init(address="auto", namespace="dynaray", logging_level=logging.ERROR)
    return True


def _ray_file() -> str:
    return os.path.join(STATE_DIR, "ray.json")


def _note_ray_started() -> None:
    """Remember that a `dynaray up` here started the Ray running now (by its session name,
    so a Ray started later by someone else is not taken for it)."""
    import ray

    os.makedirs(STATE_DIR, exist_ok=True)
    with open(_ray_file(), "w") as f:
        json.dump({"session": ray.get_runtime_context().get_session_name()}, f)


def _started_here(state: dict) -> bool:
    """Whether the Ray this driver is connected to is one a `dynaray up` here started
    (state: the store's; a store `up` recorded before ray.json kept the mark there)."""
    import ray

    try:
        with open(_ray_file()) as f:
            kept = json.load(f)
    except (OSError, ValueError):
        return bool(state.get("started_ray"))
    return kept.get("session") == ray.get_runtime_context().get_session_name()


def _stop_ray() -> None:
    """Disconnect this driver, then stop the local Ray (`ray stop`)."""
    import ray

    ray.shutdown()  # before `ray stop`, or the stop tears down a live driver
    subprocess.run([*_ray_command(), "stop"], check=False, stdout=subprocess.DEVNULL)


def cmd_up(args: argparse.Namespace) -> int:
    import dynaray

    data_dir = os.path.abspath(
        os.path.expanduser(args.data_dir or os.path.join(STATE_DIR, "data", args.store))
    )
    started_now = _connect_ray(args.address)
    try:
        cluster = dynaray.start(
            nodes=args.nodes,
            n=args.n,
            r=args.r,
            w=args.w,
            data_dir=data_dir,
            store=args.store,
            empty=args.empty or (),
        )
    except BaseException:
        if started_now:  # no store runs on the Ray this command started: stop it again
            _stop_ray()
            print("Stopped the local Ray head again.", file=sys.stderr)
        raise
    if started_now:
        _note_ray_started()
    os.makedirs(STATE_DIR, exist_ok=True)
    with open(_state_file(args.store), "w") as f:
        json.dump({"store": args.store, "data_dir": data_dir}, f)
    _, config = cluster._ring()
    print(
        f"dynaray store {args.store!r} is up: nodes {', '.join(cluster.nodes())}, "
        f"N={config['n']} R={config['r']} W={config['w']}, data in {data_dir}"
    )
    default = args.store == DEFAULT_STORE
    python = "dynaray.connect()" if default else f"dynaray.connect({args.store!r})"
    print(
        f"Use it from Python with {python}, or {_command(args, 'get KEY')} / "
        f"{_command(args, 'put KEY VALUE')}."
    )
    return 0


def _command(args: argparse.Namespace, line: str) -> str:
    """`dynaray LINE` for the user to run, on the store this command used."""
    command, _, rest = line.partition(" ")
    return f"`dynaray {command}{store_option(args.store)} {rest}`"


def cmd_down(args: argparse.Namespace) -> int:
    import dynaray

    state = _read_state(args.store)
    import ray

    cluster = dynaray.Cluster.attach(args.store, address=args.address or "auto")
    deleted = cluster._ephemeral_root  # a store started with no data directory
    cluster.shutdown()
    if deleted:
        print(f"dynaray store {args.store!r} stopped; its data, kept in {deleted}, is deleted.")
    else:
        where = state.get("data_dir", "place")
        print(f"dynaray store {args.store!r} stopped; its data stays in {where}.")
    if state:
        os.remove(_state_file(args.store))
    if not _started_here(state) or args.keep_ray:
        ray.shutdown()
        return 0
    # The Ray a `dynaray up` started goes with the last store on it, not with the first.
    others = [s for s in dynaray.cluster.stores_running() if s != args.store]
    if others:
        ray.shutdown()
        names = ", ".join(repr(s) for s in others)
        print(
            f"Left the local Ray running: store(s) {names} still run on it. The `dynaray "
            "down` of the last one stops it."
        )
        return 0
    _stop_ray()
    with contextlib.suppress(FileNotFoundError):
        os.remove(_ray_file())
    print("Stopped the local Ray that `dynaray up` started.")
    return 0


def _keys_of(args: argparse.Namespace):
    """The default bucket (a Client) or the bucket named by --bucket, of the running store."""
    import dynaray

    client = dynaray.connect(args.store, address=args.address or "auto")
    return client.bucket(args.bucket) if args.bucket else client


def cmd_get(args: argparse.Namespace) -> int:
    res = _keys_of(args).get(args.key)
    if not res.exists:  # (a counter, set or map never written reads as 0, set(), {})
        print(f"{args.key}: (absent)")
        return 1
    for value in res.values:
        print(value.decode(errors="replace") if isinstance(value, bytes) else value)
    if len(res.values) > 1:
        print(f"({len(res.values)} siblings; `dynaray put` replaces them all)", file=sys.stderr)
    return 0


def cmd_put(args: argparse.Namespace) -> int:
    keys = _keys_of(args)
    # The command line has no context to carry, so it reads first: the put replaces what it saw.
    try:
        seen = keys.get(args.key)
    except DynarayError as exc:
        raise DynarayError(
            f"put of {args.key!r} reads the key first (to replace what it holds), and the "
            f"read failed, so nothing was written: {exc}"
        ) from None
    keys.put(args.key, seen.context, args.value)
    print(f"{args.key} = {args.value}")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    _keys_of(args).delete(args.key)  # with no context: what a read sees now
    print(f"{args.key} deleted")
    return 0


def _cluster(args: argparse.Namespace):
    import dynaray

    return dynaray.Cluster.attach(args.store, address=args.address or "auto")


def _print_table(rows: list[dict], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    print("  ".join("-" * widths[c] for c in columns))
    for row in rows:
        print("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns))


def cmd_status(args: argparse.Namespace) -> int:
    import time

    cluster = _cluster(args)
    states = cluster.status()
    info = cluster.info()
    # Machine-readable first (numbers, None when a node did not answer); the table is drawn
    # from it.
    rows = []
    for node in cluster.nodes():
        i = info.get(node, {})
        rows.append(
            {
                "node": node,
                "state": states.get(node, "down"),
                "answered": bool(i),  # its info(); the fields below are None when not
                "ray_node": i.get("ray_node"),
                "ranges": i.get("ranges"),
                "keys": i.get("keys"),
                "hints": i.get("hints"),
                "last_anti_entropy": i.get("last_exchange"),
                "disk_bytes": i.get("disk_bytes"),
                "disk_error": i.get("disk_error"),
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0

    def shown(value: object) -> object:
        return "?" if value is None else value

    table = [
        {
            "node": row["node"],
            # Gossip's view lags a crash by seconds; a node that did not answer just now
            # says so beside it.
            "state": row["state"]
            if row["answered"] or row["state"] == "down"
            else f"{row['state']}, not answering",
            "ray node": (row["ray_node"] or "?")[:12],
            "ranges": shown(row["ranges"]),
            "keys": shown(row["keys"]),
            "hints": shown(row["hints"]),
            "last anti-entropy": (
                f"{time.time() - row['last_anti_entropy']:.0f}s ago"
                if row["last_anti_entropy"]
                else "never"
            ),
            "disk": "?" if row["disk_bytes"] is None else f"{row['disk_bytes'] / 2**20:.1f} MiB",
            "writes": (
                f"FAILING: {row['disk_error']}"
                if row["disk_error"]
                else ("ok" if row["answered"] else "?")
            ),
        }
        for row in rows
    ]
    _print_table(table, list(table[0]) if table else ["node"])
    return 0


def cmd_ring(args: argparse.Namespace) -> int:
    from collections import Counter

    cluster = _cluster(args)
    ring, config = cluster._ring()
    n = config.get("n", 3)
    owned = Counter(ring.owners)
    rows = [
        {
            "node": node,
            "partitions": owned[node],
            "share": owned[node] / ring.partitions,
            "replica_share": len(ring.replicated_partitions(node, n)) / ring.partitions,
        }
        for node in ring.nodes()
    ]
    if args.json:
        shape = {"partitions": ring.partitions, "version": ring.version, "n": n}
        print(json.dumps({**shape, "nodes": rows}))
    else:
        print(f"ring version {ring.version}: {ring.partitions} partitions, N={n}")
        table = [
            {
                "node": row["node"],
                "partitions": row["partitions"],
                "share": f"{row['share']:.1%}",
                "replica share": f"{row['replica_share']:.1%}",
            }
            for row in rows
        ]
        _print_table(table, list(table[0]) if table else ["node"])
    if args.png:
        _draw_ring(ring, args.png)
    return 0


def _draw_ring(ring, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise DynarayError(
            "no PNG written: matplotlib is not installed (pip install matplotlib, or "
            "pip install 'dynaray[bench]')"
        ) from None
    nodes = list(ring.nodes())
    colours = {node: plt.cm.tab20(i % 20) for i, node in enumerate(nodes)}
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.pie(
        [1] * ring.partitions,
        colors=[colours[o] for o in ring.owners],
        startangle=90,
        counterclock=False,
        wedgeprops={"width": 0.3, "linewidth": 0},
    )
    ax.legend(
        handles=[plt.Rectangle((0, 0), 1, 1, color=colours[n]) for n in nodes],
        labels=nodes,
        loc="center",
    )
    ax.set_title(f"dynaray ring: {ring.partitions} partitions, version {ring.version}")
    fig.savefig(path, dpi=100)
    print(f"ring picture written to {path}")


def cmd_join(args: argparse.Namespace) -> int:
    cluster = _cluster(args)
    node = cluster.add_node(progress=None if args.json else _progress("join"))
    if args.json:
        print(json.dumps({"node": node, **cluster.last_change}))
    else:
        print(f"\nnode {node} joined and received its ranges")
    return 0


def _running(cluster, node: str) -> bool:
    """Whether the node answers now (the CLI names its own commands where the Cluster's
    errors name Python methods)."""
    return bool(cluster._ask("ping", nodes=[cluster._known(node)], timeout=5.0))


def cmd_leave(args: argparse.Namespace) -> int:
    cluster = _cluster(args)
    if not _running(cluster, args.node):
        raise DynarayError(
            f"node {args.node} is not running, so it cannot hand its ranges over; for a node "
            f"lost for good: {_command(args, f'forget {args.node}')}, or "
            f"{_command(args, f'restart {args.node}')} to bring it back"
        )
    cluster.remove_node(args.node, progress=_progress("leave"))
    print(f"\nnode {args.node} handed its ranges over and stopped")
    return 0


def cmd_forget(args: argparse.Namespace) -> int:
    cluster = _cluster(args)
    if _running(cluster, args.node):
        raise DynarayError(
            f"node {args.node} is still running; for a graceful leave, in which it hands its "
            f"ranges over first: {_command(args, f'leave {args.node}')}"
        )
    cluster.forget_node(args.node, progress=_progress("forget"))
    print(f"\nnode {args.node} forgotten; its keys are back to N copies")
    return 0


def cmd_kill(args: argparse.Namespace) -> int:
    cluster = _cluster(args)
    if cluster._handle(cluster._known(args.node), fresh=True) is None:
        print(f"node {args.node} is not running; nothing to kill")
        return 0
    dead = cluster.kill(args.node)
    print(f"node {args.node} killed; its directory stays" + ("" if dead else " (not dead yet)"))
    return 0 if dead else 1


def cmd_restart(args: argparse.Namespace) -> int:
    _cluster(args).restart(args.node, empty=args.empty)
    print(f"node {args.node} restarted; it catches up through hints and anti-entropy")
    return 0


def cmd_repair(args: argparse.Namespace) -> int:
    figures = _cluster(args).anti_entropy()
    if args.json:
        print(json.dumps(figures))
    else:
        for name, value in figures.items():
            print(f"{name.replace('_', ' '):>20}: {value:,}")
    return 0


def cmd_buckets(args: argparse.Namespace) -> int:
    if not args.create and (args.policy or args.r is not None or args.w is not None):
        raise ValueError("--policy, -r and -w are for --create NAME (a bucket to create)")
    cluster = _cluster(args)
    if args.create:
        # Without --policy: a "siblings" bucket, stored as such (policy=None would only open
        # one, and store nothing for a new name).
        policy = args.policy or "siblings"
        bucket = cluster.client().bucket(args.create, policy=policy, r=args.r, w=args.w)
        if args.json:
            print(json.dumps({bucket.name: vars(bucket.props)}))
        else:
            print(f"bucket {bucket.name!r}: policy {bucket.policy}")
        return 0
    found = cluster.buckets()
    if args.json:
        print(json.dumps(found, default=str))
    elif not found:
        print("no buckets with stored properties (the default bucket is 'siblings')")
    else:
        rows = [
            {"bucket": name, **props}
            if "conflict" not in props
            else {  # created twice at once: opening it says how to settle it
                "bucket": name,
                "policy": "CONFLICT: " + " or ".join(str(p["policy"]) for p in props["conflict"]),
            }
            for name, props in found.items()
        ]
        _print_table(rows, ["bucket", "policy", "r", "w"])
    return 0


def _progress(what: str):
    terminal = sys.stdout.isatty()  # else one line each (a log, a pipe), not run together

    def show(pending: int, received: int) -> None:
        line = f"{what}: {pending} ranges still arriving, {received:,} keys received"
        print(f"\r{line}" if terminal else line, end="" if terminal else "\n", flush=True)

    return show


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dynaray", description="A Dynamo-style key-value store inside a Ray cluster."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="walk through get, put, siblings and their merge")
    demo.add_argument("--nodes", type=int, default=5, help="storage nodes (default 5)")
    demo.set_defaults(func=cmd_demo)

    def store_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--store", default=DEFAULT_STORE, help="store name (default: default)")
        p.add_argument("--address", default=None, help="Ray cluster address (default: auto)")

    up = sub.add_parser("up", help="start a store that outlives this command")
    store_args(up)
    up.add_argument(
        "--nodes",
        type=int,
        default=None,
        help="storage nodes (default: 5 for a new store, as many as its data directory holds "
        "when started again)",
    )
    up.add_argument("-n", type=int, default=3, help="replicas per key, N (default 3)")
    up.add_argument(
        "-r", type=int, default=None, help="read quorum, R (default 2, or what the store kept)"
    )
    up.add_argument(
        "-w", type=int, default=None, help="write quorum, W (default 2, or what the store kept)"
    )
    up.add_argument(
        "--data-dir", default=None, help="where nodes keep LMDB (default ~/.dynaray/data/STORE)"
    )
    up.add_argument(
        "--empty",
        action="append",
        metavar="NODE",
        help="a node whose disk is lost for good: start it empty on a free machine (repeat "
        "for several)",
    )
    up.set_defaults(func=cmd_up)

    down = sub.add_parser("down", help="stop a store started with `dynaray up`; data is kept")
    store_args(down)
    down.add_argument("--keep-ray", action="store_true", help="leave the local Ray running")
    down.set_defaults(func=cmd_down)

    for name, func, text in (
        ("get", cmd_get, "print a key's value(s)"),
        ("put", cmd_put, "set a key to a string value (replacing what a read sees)"),
        ("delete", cmd_delete, "delete a key (what a read sees)"),
    ):
        p = sub.add_parser(name, help=text)
        store_args(p)
        p.add_argument("--bucket", default=None, help="a bucket (default: the default bucket)")
        p.add_argument("key")
        if name == "put":
            p.add_argument("value")
        p.set_defaults(func=func)
    for name, func, text in (
        ("status", cmd_status, "per node: state, keys, hints, last anti-entropy, disk, writes"),
        ("ring", cmd_ring, "ownership shares (and --png FILE for a picture of the ring)"),
        ("join", cmd_join, "add a node: it takes its share of the ring and its data"),
        ("repair", cmd_repair, "run one anti-entropy round now"),
    ):
        p = sub.add_parser(name, help=text)
        store_args(p)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        if name == "ring":
            p.add_argument("--png", default=None, help="write a picture of the ring here")
        p.set_defaults(func=func)
    buckets = sub.add_parser("buckets", help="list buckets, or create one with --create NAME")
    store_args(buckets)
    buckets.add_argument("--create", metavar="NAME", help="create this bucket")
    buckets.add_argument("--policy", choices=["siblings", "lww", "counter", "set", "map"])
    buckets.add_argument("-r", type=int, default=None, help="the bucket's read quorum")
    buckets.add_argument("-w", type=int, default=None, help="the bucket's write quorum")
    buckets.add_argument("--json", action="store_true", help="machine-readable output")
    buckets.set_defaults(func=cmd_buckets)
    for name, func, text in (
        ("leave", cmd_leave, "a node hands its ranges to the others and stops"),
        ("forget", cmd_forget, "a lost node is taken out; the others restore N copies"),
        ("kill", cmd_kill, "crash a node at once (a fault to try things with); data stays"),
        ("restart", cmd_restart, "start a node that is down again, with its directory"),
    ):
        p = sub.add_parser(name, help=text)
        store_args(p)
        p.add_argument("node")
        if name == "restart":
            p.add_argument(
                "--empty",
                action="store_true",
                help="when its machine is gone and no machine holds its directory (lost for "
                "good): start it empty on a free machine",
            )
        p.set_defaults(func=func)
    # `dynaray bench ...` hands its arguments to the benchmark harness (see main()).
    sub.add_parser("bench", help="measure dynaray beside a one-actor dict, Redis and etcd")
    sub.add_parser("verify", help="Jepsen-style fault test with a history checker")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        from benchmarks import bench

        return bench.main(argv[1:])
    if argv[:1] == ["verify"]:
        from dynaray import verify

        return verify.main(argv[1:])
    args = build_parser().parse_args(argv)
    # Ray announces at every connect that token authentication is on; that is the safe
    # default (see docs/operations.md), not news to act on.
    logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)
    try:
        return args.func(args)
    except (DynarayError, ValueError) as exc:
        print(f"dynaray: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        from ray.exceptions import RayError  # ray is imported by the commands that use it

        if not isinstance(exc, RayError):
            raise
        print(  # a node that could not start, a call past its deadline
            f"dynaray: Ray failed: {type(exc).__name__}: {str(exc).splitlines()[0][:500]}\n"
            "Check `ray status` (are the machines and the head up?) and the node logs "
            "(`/tmp/ray/session_latest/logs`).",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
