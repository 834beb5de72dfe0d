"""`dynaray demo`: a guided walk through the store on an embedded 5-node cluster.

It prints, in plain words, what happens at each step: a put and a get, where the replicas
went, two writers racing on one key and the siblings that result, and the merge that
resolves them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import ray

import dynaray

Say = Callable[[str], None]


def run(say: Say = print, nodes: int = 5) -> None:
    """Run the demo, printing through `say`."""
    say(f"Starting an embedded dynaray store: {nodes} storage nodes, N=3 replicas, R=2, W=2.")
    if not ray.is_initialized():
        ray.init(
            namespace="dynaray",
            include_dashboard=False,
            logging_level=logging.ERROR,
            log_to_driver=False,
        )
    cluster = dynaray.start(nodes=nodes, n=3, r=2, w=2, store="demo")
    try:
        _walk(cluster, say)
    finally:
        cluster.shutdown()
        ray.shutdown()
    say("Store stopped. That was dynaray: get, put with context, siblings, and their merge.")


def _walk(cluster: dynaray.Cluster, say: Say) -> None:
    client = cluster.client()
    say(f"Nodes: {', '.join(cluster.nodes())}. Each is a Ray actor with its own LMDB store.")

    say("\n1. A first write. There is nothing to have read yet, so the context is None.")
    client.put("cart:alice", None, ["book"])
    res = client.get("cart:alice")
    say(f"   put('cart:alice', None, ['book']) -> get returns {res.values}")
    state = cluster.replica_state("cart:alice")
    say(f"   The key lives on {len(state)} nodes, its preference list: {', '.join(state)}.")

    say("\n2. An update. Read first, then write back with the context the read returned,")
    say("   so the store knows this write replaces what was read.")
    client.put("cart:alice", res.context, ["book", "lamp"])
    say(f"   get now returns {client.get('cart:alice').values} (one version, no conflict)")

    say("\n3. Two writers race. Both read the same version, then both write without")
    say("   seeing each other's write: on a phone and a laptop, say.")
    seen = client.get("cart:alice")
    client.put("cart:alice", seen.context, ["book", "lamp", "pen"])
    say("   phone:  put(..., context_of_read, ['book', 'lamp', 'pen'])")
    client.put("cart:alice", seen.context, ["book", "lamp", "mug"])
    say("   laptop: put(..., context_of_read, ['book', 'lamp', 'mug'])")
    res = client.get("cart:alice")
    say(f"   get returns {len(res.values)} siblings: {sorted(res.values)}")
    say("   The version vectors show the writes are concurrent: neither saw the other,")
    say("   so the store keeps both rather than silently dropping one.")
    try:
        _ = res.value
    except dynaray.ConflictError as exc:
        say(f"   Asking for a single value says so: ConflictError: {exc}")

    say("\n4. The application resolves: it merges the siblings (here, the union of items)")
    say("   and writes the merge with the context of the read that returned both.")
    merged = sorted({item for cart in res.values for item in cart})
    client.put("cart:alice", res.context, merged)
    res = client.get("cart:alice")
    say(f"   get returns {res.values}: one version again, nothing lost.")
    state = cluster.replica_state("cart:alice")
    say(f"   Every replica agrees: {state}")

    say("\n5. Delete with context: a tombstone that hides what was read.")
    client.delete("cart:alice", res.context)
    say(f"   get returns {client.get('cart:alice').values}")
