"""Starting, finding and stopping a store: its node actors, its ring and its Router.

`start()` creates the storage node actors (detached, named in the namespace "dynaray") on
the Ray cluster the process is connected to, or on an embedded local Ray; `connect()` finds
a running store from another driver; the Cluster handle inspects and stops it.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from typing import Any

import ray

from dynaray import codec, quorum
from dynaray.client import Client
from dynaray.errors import DynarayError, QuorumError
from dynaray.ring import DEFAULT_PARTITIONS, Ring
from dynaray.routing import Routing

log = logging.getLogger(__name__)

NAMESPACE = "dynaray"
DEFAULT_STORE = "default"
KVNODE = "kvnode"
_STARTUP_TIMEOUT = 120.0
_CALL_TIMEOUT = 60.0


def node_name(store: str, node_id: str) -> str:
    return f"{store}.node.{node_id}"


def router_name(store: str) -> str:
    return f"{store}.router"


class Router:
    """The driver-side Router actor of the design card: a partition-aware client as a service.

    It answers coordinate_put / coordinate_get like a node, so a Client on the "router" path
    talks to it exactly as it would talk to a coordinator.
    """

    def __init__(self, nodes: dict[str, Any]) -> None:
        self.routing = Routing(nodes)

    async def coordinate_put(
        self, sender: str, bucket: bytes, key: bytes, vv: list, value, w: int, n: int
    ) -> tuple:
        try:
            return ("ok", await self.routing.put(bucket, key, vv, value, w, n))
        except QuorumError as exc:
            return ("quorum", exc.answered, exc.needed, exc.asked)

    async def coordinate_get(self, sender: str, bucket: bytes, key: bytes, r: int, n: int) -> tuple:
        try:
            return ("ok", await self.routing.get(bucket, key, r, n))
        except QuorumError as exc:
            return ("quorum", exc.answered, exc.needed, exc.asked)


def _ensure_ray(address: str | None) -> bool:
    """Connect to Ray if the process is not; True when we started an embedded local Ray."""
    if ray.is_initialized():
        return False
    if address is not None:
        ray.init(address=address, namespace=NAMESPACE, logging_level=logging.WARNING)
        return False
    if os.environ.get("RAY_ADDRESS"):
        ray.init(namespace=NAMESPACE, logging_level=logging.WARNING)
        return False
    ray.init(namespace=NAMESPACE, include_dashboard=False, logging_level=logging.WARNING)
    return True


def _named_nodes(store: str) -> dict[str, Any]:
    prefix = node_name(store, "")
    found = {}
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry["namespace"] == NAMESPACE and entry["name"].startswith(prefix):
            node_id = entry["name"][len(prefix) :]
            found[node_id] = ray.get_actor(entry["name"], namespace=NAMESPACE)
    return found


def _node_sort_key(node_id: str) -> tuple:
    digits = node_id.lstrip("n")
    return (0, int(digits), "") if digits.isdigit() else (1, 0, node_id)


def start(
    nodes: int = 5,
    n: int = 3,
    r: int = 2,
    w: int = 2,
    data_dir: str | None = None,
    *,
    address: str | None = None,
    store: str = DEFAULT_STORE,
    partitions: int = DEFAULT_PARTITIONS,
    sync: bool = True,
    node_options: dict | None = None,
) -> Cluster:
    """Start a store of `nodes` storage nodes with N/R/W quorums; returns its Cluster handle.

    Uses the Ray cluster this process is connected to (or the one at `address`, "auto" to
    find it); otherwise starts an embedded local Ray that `shutdown()` stops again.
    `data_dir=None` keeps the data in a temporary directory removed by `shutdown()`; give a
    directory to keep it: a later start on the same directory finds the data again.
    """
    if not isinstance(nodes, int) or isinstance(nodes, bool) or nodes < 1:
        raise ValueError(f"nodes must be a positive integer, got {nodes!r}")
    quorum.check_quorum(n, r, w, nodes)
    started_ray = _ensure_ray(address)
    handles: dict[str, Any] = {}
    try:
        if _named_nodes(store):
            raise DynarayError(
                f"a store named {store!r} is already running on this Ray cluster; connect to it "
                "with dynaray.connect(), or stop it first (cluster.shutdown() or `dynaray down`)"
            )
        ephemeral = data_dir is None
        root = tempfile.mkdtemp(prefix="dynaray-") if ephemeral else os.path.abspath(data_dir)
        resources = _placement(nodes)
        options = {"sync": sync, **(node_options or {})}
        node_ids = [f"n{i}" for i in range(1, nodes + 1)]
        for node_id in node_ids:
            path = os.path.join(root, node_id)
            handles[node_id] = _create_node(store, node_id, path, options, resources)
        descriptions = ray.get(
            [h.describe.remote() for h in handles.values()], timeout=_STARTUP_TIMEOUT
        )
        ring, config = _ring_for(descriptions, node_ids, partitions, n, r, w, store)
        ray.get(
            [h.configure.remote(ring.to_wire(), config) for h in handles.values()],
            timeout=_CALL_TIMEOUT,
        )
        ray.get([h.set_peers.remote(handles) for h in handles.values()], timeout=_CALL_TIMEOUT)
        router = (
            ray.remote(Router)
            .options(
                name=router_name(store),
                namespace=NAMESPACE,
                lifetime="detached",
                num_cpus=0,
                max_restarts=0,
            )
            .remote(handles)
        )
        return Cluster(store, handles, router, root if ephemeral else None, started_ray)
    except BaseException:
        for handle in handles.values():  # only what this call created
            ray.kill(handle, no_restart=True)
        if started_ray:
            ray.shutdown()
        raise


def _placement(nodes: int) -> dict[str, float]:
    """One node per machine where machines carry `kvnode`; several side by side otherwise."""
    available = ray.cluster_resources().get(KVNODE, 0)
    if not available:
        return {}
    if nodes > available:
        raise ValueError(
            f"{nodes} store nodes asked for, but the Ray cluster has only {int(available)} "
            f"machines with the {KVNODE!r} resource; add machines or ask for fewer nodes"
        )
    return {KVNODE: 1}


def _create_node(store: str, node_id: str, path: str, options: dict, resources: dict):
    from dynaray.node import StorageNode

    return (
        ray.remote(StorageNode)
        .options(
            name=node_name(store, node_id),
            namespace=NAMESPACE,
            lifetime="detached",
            num_cpus=0,
            resources=resources,
            max_restarts=0,
            max_task_retries=0,
            max_concurrency=1000,
        )
        .remote(node_id, path, options)
    )


def _ring_for(
    descriptions: list[dict],
    node_ids: list[str],
    partitions: int,
    n: int,
    r: int,
    w: int,
    store: str,
) -> tuple[Ring, dict]:
    """A fresh ring, or the newest one the nodes kept on disk from an earlier run."""
    stored = [d for d in descriptions if d.get("ring")]
    config = {"n": n, "r": r, "w": w, "store": store}
    if not stored:
        ring = Ring.create(node_ids, partitions)
        return ring, {**config, "partitions": ring.partitions}
    newest = max(stored, key=lambda d: d["ring"]["version"])
    ring = Ring.from_wire(newest["ring"])
    if set(ring.nodes()) != set(node_ids):
        raise DynarayError(
            f"the data directory holds a store of nodes {list(ring.nodes())}; start it with "
            f"nodes={len(ring.nodes())} or use another data_dir"
        )
    old_n = newest["config"].get("n", n)
    if old_n != n:
        raise ValueError(
            f"the data directory holds a store with n={old_n}; start it with n={old_n} "
            "(changing the replication factor of existing data is not supported)"
        )
    return ring, {**config, "partitions": ring.partitions}


def connect(
    store: str = DEFAULT_STORE, *, address: str | None = "auto", path: str = "client"
) -> Client:
    """A Client of a running store, from any driver connected to its Ray cluster."""
    return Cluster.attach(store, address=address).client(path=path)


class Cluster:
    """Handle on a running store: make clients, inspect replicas, stop it."""

    def __init__(
        self,
        store: str,
        handles: dict[str, Any],
        router: Any,
        ephemeral_root: str | None,
        started_ray: bool,
    ) -> None:
        self.store = store
        self._handles = dict(sorted(handles.items(), key=lambda kv: _node_sort_key(kv[0])))
        self._router = router
        self._ephemeral_root = ephemeral_root
        self._started_ray = started_ray
        self._clients: list[Client] = []

    @classmethod
    def attach(cls, store: str = DEFAULT_STORE, *, address: str | None = "auto") -> Cluster:
        """The handle of a store started elsewhere (another driver, `dynaray up`)."""
        if not ray.is_initialized():
            try:
                ray.init(address=address, namespace=NAMESPACE, logging_level=logging.WARNING)
            except ConnectionError as exc:
                raise DynarayError(
                    f"no Ray cluster found at {address!r}: start one with `dynaray up` or "
                    "`ray start --head`, or pass its address"
                ) from exc
        handles = _named_nodes(store)
        if not handles:
            raise DynarayError(
                f"no store named {store!r} runs on this Ray cluster; start one with "
                "`dynaray up` or dynaray.start()"
            )
        try:
            router = ray.get_actor(router_name(store), namespace=NAMESPACE)
        except ValueError:
            router = None
        return cls(store, handles, router, None, False)

    def nodes(self) -> list[str]:
        """The ids of the store's nodes."""
        return list(self._handles)

    def client(self, path: str = "client") -> Client:
        """A Client; `path` is "client" (straight to the coordinator), "router" or "any"."""
        client = Client(Routing(self._handles, path=path, router=self._router))
        self._clients.append(client)
        return client

    def _call_all(self, method: str, *args: Any, timeout: float = _CALL_TIMEOUT) -> dict:
        refs = {nid: getattr(h, method).remote(*args) for nid, h in self._handles.items()}
        return dict(zip(refs, ray.get(list(refs.values()), timeout=timeout), strict=True))

    def replica_state(self, key: str | bytes, bucket: str = codec.DEFAULT_BUCKET) -> dict:
        """{node_id: [values]} for every node whose own data holds the key (hints excluded)."""
        b, k = codec.bucket_bytes(bucket), codec.key_bytes(key)
        codec.check_key(b, k)
        held = self._call_all("held", b, k)
        return {
            node: [codec.decode_value(v) for v in values if v is not None]
            for node, values in held.items()
            if values is not None
        }

    def info(self) -> dict[str, dict]:
        """Per node: its process, Ray node, keys, hints, disk and request counters."""
        return self._call_all("info")

    def shutdown(self) -> None:
        """Stop the store's actors (data kept unless the store was started with data_dir=None),
        and the embedded Ray if start() began it."""
        for client in self._clients:
            client.close()
        method = "destroy" if self._ephemeral_root else "stop"
        try:
            self._call_all(method)
        except Exception as exc:  # a dead node must not stop the others from closing
            log.warning("some nodes did not stop cleanly: %s", exc)
        for handle in self._handles.values():
            ray.kill(handle, no_restart=True)
        if self._router is not None:
            ray.kill(self._router, no_restart=True)
        if self._ephemeral_root:
            shutil.rmtree(self._ephemeral_root, ignore_errors=True)
        if self._started_ray:
            ray.shutdown()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
