"""Starting, finding and stopping a store: its node actors, its ring and its Router.

`start()` creates the storage node actors (detached, named in the namespace "dynaray") on
the Ray cluster the process is connected to, or on an embedded local Ray; `connect()` finds
a running store from another driver; the Cluster handle inspects and stops it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import Any

import ray
from ray.exceptions import (
    ActorDiedError,
    ActorUnavailableError,
    GetTimeoutError,
    RayActorError,
    RayError,
)
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from dynaray import codec, faults, manifest, quorum, records
from dynaray.anti_entropy import Figures
from dynaray.client import Client, decode_values
from dynaray.errors import DynarayError, QuorumError
from dynaray.names import DEFAULT_STORE, NAMESPACE, node_name, router_name, store_option
from dynaray.names import parse as parse_name
from dynaray.ring import DEFAULT_PARTITIONS, Ring, check_partitions
from dynaray.routing import Routing
from dynaray.transport import actor_of

log = logging.getLogger(__name__)

KVNODE = "kvnode"
_STARTUP_TIMEOUT = 120.0
DEFAULT_NODES = 5  # of a new store started without `nodes`
DEFAULT_R = DEFAULT_W = 2  # of a new store started without r or w
_CALL_TIMEOUT = 60.0
_FREE_WAIT = 10.0  # for Ray's view of free machines to catch up with a store just stopped
# How long kill() waits for Ray to end the actor.
_KILL_WAIT = 10.0
# How long fault injection waits for name lookups of actors other handles started.
_FAULT_LOOKUP_WAIT = 5.0
# How long a handle waits for the Router to say what it remembers of the store.
_ROUTER_WAIT = 10.0
# How long a node of a new ring may go without answering while ranges are handed over
# before the change stops, with every old copy kept (Cluster._reshape).
HANDOFF_SILENCE = 60.0
# Seconds between giving the new ring again to a node of it that has not taken it yet.
RING_RESEND = 10.0
# Seconds a driver's hold on membership changes lasts unless renewed (Router.hold_change):
# a driver that dies in the middle of one holds up the next for at most this long.
CHANGE_LEASE = 120.0


class Router:
    """The driver-side Router actor of the design card: a partition-aware client as a service.

    It answers coordinate_put / coordinate_get like a node, so a Client on the "router" path
    talks to it exactly as it would talk to a coordinator.

    It also remembers what a driver needs to find the store while none of its nodes runs
    (`Cluster.attach` after every node was killed): its members, data directory and node
    options (`layout`).
    """

    def __init__(self, nodes: dict[str, Any], layout: dict | None = None) -> None:
        self.routing = Routing(nodes)
        self.layout = {"members": sorted(nodes, key=_node_sort_key), **(layout or {})}
        self.change: dict | None = None  # the membership change under way (hold_change)

    async def hold_change(
        self, holder: str, doing: str, lease: float, renew: bool = False
    ) -> list | None:
        """Take, or renew, the store's one hold on membership changes for `holder`: two
        changes made at once, from two drivers, would each make the ring's next version,
        and the nodes would never agree on one. None: `holder` has it now; else [what the
        holder is doing, seconds since it began]. A hold not renewed lapses after `lease`;
        `renew`: the holder had it, and is refused if it lapsed meanwhile (another change
        may have been made since, even one that has ended)."""
        now = time.monotonic()
        held = self.change
        if renew and (held is None or held["holder"] != holder):
            return ["its hold lapsed; another change may have been made meanwhile", 0.0]
        if held is not None and held["holder"] != holder and held["until"] > now:
            return [held["doing"], now - held["since"]]
        since = held["since"] if held is not None and held["holder"] == holder else now
        self.change = {"holder": holder, "doing": doing, "since": since, "until": now + lease}
        return None

    async def release_change(self, holder: str) -> None:
        if self.change is not None and self.change["holder"] == holder:
            self.change = None

    async def update_peer(self, node: str, handle: Any) -> None:
        """A node restarted or joined (its new handle), or left (None)."""
        self.routing.set_node(node, handle)
        members = set(self.layout["members"]) - {node}
        self.layout["members"] = sorted(
            members if handle is None else {*members, node}, key=_node_sort_key
        )

    async def store_layout(self) -> dict:
        return self.layout

    async def ping(self) -> str:
        return "router"

    async def coordinate_put(
        self, sender: str, bucket: bytes, key: bytes, op: list, w: int, n: int
    ) -> list:
        try:
            return ["ok", await self.routing.put(bucket, key, op, w, n)]
        except QuorumError as exc:
            return ["quorum", exc.answered, exc.needed, exc.asked]

    async def coordinate_get(self, sender: str, bucket: bytes, key: bytes, r: int, n: int) -> list:
        try:
            return ["ok", await self.routing.get(bucket, key, r, n)]
        except QuorumError as exc:
            return ["quorum", exc.answered, exc.needed, exc.asked, exc.failed]


def _node_options(sync: bool, given: dict | None) -> dict:
    """The options every node starts with, checked as a node will check them."""
    from dynaray.node import NodeOptions

    if given is not None and not isinstance(given, dict):
        raise TypeError(f"node_options is a dict, got {type(given).__name__}")
    options = {"sync": sync, **(given or {})}
    try:
        NodeOptions(**options)
    except TypeError as exc:
        known = ", ".join(NodeOptions.__dataclass_fields__)
        raise ValueError(f"node_options: {exc}; the options are {known}") from None
    except ValueError as exc:
        raise ValueError(f"node_options: {exc}") from None
    return options


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
            try:
                found[node_id] = ray.get_actor(entry["name"], namespace=NAMESPACE)
            except ValueError:
                continue  # it died between the listing and the lookup
    return found


def _router_of(store: str) -> Any | None:
    """The store's Router actor, or None if it has none."""
    try:
        return ray.get_actor(router_name(store), namespace=NAMESPACE)
    except ValueError:
        return None


def _layout_of(router: Any) -> dict:
    """What the Router remembers of its store (Router.layout); {} if it does not answer."""
    try:
        return ray.get(router.store_layout.remote(), timeout=_ROUTER_WAIT)
    except (AttributeError, RayError) as exc:  # a Router of an older version, or gone
        log.warning("the store's Router actor did not say what it remembers (%s)", exc)
        return {}


def _node_sort_key(node_id: str) -> tuple:
    digits = node_id.lstrip("n")
    return (0, int(digits), "") if digits.isdigit() else (1, 0, node_id)


def start(
    nodes: int | None = None,
    n: int = 3,
    r: int | None = None,
    w: int | None = None,
    data_dir: str | None = None,
    *,
    address: str | None = None,
    store: str = DEFAULT_STORE,
    partitions: int = DEFAULT_PARTITIONS,
    sync: bool = True,
    node_options: dict | None = None,
    empty: Iterable[str] = (),
) -> Cluster:
    """Start a store of `nodes` storage nodes with N/R/W quorums; returns its Cluster handle.
    Without `nodes`: 5 for a new store, and as many as its data directory holds when a
    store is started again.

    Uses the Ray cluster this process is connected to (or the one at `address`, "auto" to
    find it); otherwise starts an embedded local Ray that `shutdown()` stops again. Like
    `ray.init()`, "otherwise" includes a Ray started on this machine with `ray start`.
    `data_dir=None` keeps the data in a temporary directory removed by `shutdown()`; give a
    directory to keep it: a later start on the same directory finds the data again.
    `empty`: nodes of a store started again on several machines whose directories are lost
    for good; they start empty on free machines and copy their ranges back. A node whose
    directory no running machine holds is otherwise refused (its machine may be starting).
    `r` and `w` not given: 2 for a new store, and what it kept when started again.
    """
    if nodes is not None and (not isinstance(nodes, int) or isinstance(nodes, bool) or nodes < 1):
        raise ValueError(f"nodes must be a positive integer, got {nodes!r}")
    # Everything a node would refuse at its start is checked here, before Ray starts. A
    # store started again without `nodes` has as many as it kept: checked once known.
    count = nodes or (DEFAULT_NODES if data_dir is None else None)
    # R and W not given: the defaults for a new store, and for one started again what it
    # kept (not known yet: checked with the ring, _ring_for; the defaults may not fit n).
    unknown = data_dir is not None
    given_r = (min(DEFAULT_R, n) if unknown else DEFAULT_R) if r is None else r
    given_w = (min(DEFAULT_W, n) if unknown else DEFAULT_W) if w is None else w
    quorum.check_quorum(n, given_r, given_w, count or n)
    if (count or 0) > check_partitions(partitions):
        raise ValueError(f"{count} nodes need at least as many partitions; got {partitions}")
    if data_dir is not None and not isinstance(data_dir, str | os.PathLike):
        raise TypeError(f"data_dir is a directory path, got {type(data_dir).__name__}")
    if not isinstance(store, str) or not store:
        raise ValueError(f"store is a non-empty name, got {store!r}")
    options = _node_options(sync, node_options)
    if isinstance(empty, str):
        raise TypeError(f"empty takes a list of node names, e.g. empty=[{empty!r}]")
    empty = list(empty)
    if empty and data_dir is None:
        raise ValueError(
            "empty= names nodes of a store started again from its data directory; this "
            "start has no data_dir. Give the data directory the store was started with"
        )
    started_ray = _ensure_ray(address)
    handles: dict[str, Any] = {}
    router = None
    ephemeral_root = None  # a temporary directory this call made, removed if it fails
    try:
        if _named_nodes(store):
            default = store == DEFAULT_STORE
            connect = "dynaray.connect()" if default else f"dynaray.connect({store!r})"
            down = "dynaray down" if default else f"dynaray down --store {store}"
            raise DynarayError(
                f"a store named {store!r} is already running on this Ray cluster; connect to it "
                f"with {connect}, or stop it first (cluster.shutdown() or `{down}`)"
            )
        remains = _remains(store, None if data_dir is None else os.path.abspath(data_dir))
        ephemeral = data_dir is None
        root = tempfile.mkdtemp(prefix="dynaray-") if ephemeral else os.path.abspath(data_dir)
        ephemeral_root = root if ephemeral else None
        resources = _placement(count or 1)
        node_ids = [f"n{i}" for i in range(1, (count or DEFAULT_NODES) + 1)]
        homes = {}
        fresh = True
        if not ephemeral:
            # A store started again: its nodes are those of the ring it kept. On several
            # machines each goes back to the machine that holds its directory, and those
            # start first so no other node takes the place.
            found = _directories_found(root, resources)
            # A store whose machines have not joined Ray yet would look new: refused.
            machines = KVNODE if resources else None
            kept = manifest.read(root)
            if kept is not None and kept.get("store") not in (None, store):
                _refuse_other_store(kept["store"], store)
            manifest.check(kept, root, machines, any(found.values()))
            node_ids, fresh = members_for(nodes, found, n, store)
            if empty and (fresh or not resources):
                raise ValueError(
                    f"empty= is for a store started again on machines with {KVNODE!r}, "
                    f"and {root!r} holds "
                    + ("no store yet" if fresh else f"a store on a Ray cluster without {KVNODE!r}")
                    + "; nothing was started. Check the data directory, or start without empty="
                )
            if resources:
                homes = homes_for(node_ids, _fingerprints(found), empty)
        if fresh:  # a new store: R and W not given are the defaults, which must fit n
            new_r, new_w = DEFAULT_R if r is None else r, DEFAULT_W if w is None else w
            quorum.check_quorum(n, new_r, new_w, len(node_ids))
        if count is None:  # as many as the data directory holds: checked now
            quorum.check_quorum(n, given_r, given_w, len(node_ids))
            _placement(len(node_ids))
        if resources:
            _check_free(store, len(node_ids))
        pinned = sorted(homes, key=_node_sort_key)
        for node_id in pinned:
            path = os.path.join(root, node_id)
            handles[node_id] = _create_node(
                store, node_id, path, options, resources, ray_node=homes[node_id], fresh=fresh
            )
        try:
            ray.get([handles[node].describe.remote() for node in pinned], timeout=_STARTUP_TIMEOUT)
        except GetTimeoutError:
            raise DynarayError(
                f"nodes {', '.join(pinned)} must start on the machines that hold their "
                f"directories, and did not start within {_STARTUP_TIMEOUT:.0f} s; is a "
                f"machine's {KVNODE!r} taken (by another store: `ray status`)?"
            ) from None
        for node_id in node_ids:
            if node_id not in homes:
                path = os.path.join(root, node_id)
                handles[node_id] = _create_node(
                    store, node_id, path, options, resources, fresh=fresh
                )
        descriptions = ray.get(
            [h.describe.remote() for h in handles.values()], timeout=_STARTUP_TIMEOUT
        )
        ring, config = _ring_for(descriptions, node_ids, partitions, n, r, w, store)
        ray.get(
            [h.configure.remote(ring.to_wire(), config) for h in handles.values()],
            timeout=_CALL_TIMEOUT,
        )
        ray.get([h.set_peers.remote(handles) for h in handles.values()], timeout=_CALL_TIMEOUT)
        if remains is not None:  # the store runs again: it gets a Router of its own
            ray.kill(remains, no_restart=True)
            if not _dead(remains):
                raise DynarayError(
                    f"the Router actor left by store {store!r} (every node down) was stopped, "
                    "but Ray does not report it dead yet; the nodes were stopped again: start "
                    "the store again"
                )
        router = (
            ray.remote(Router)
            .options(
                name=router_name(store),
                namespace=NAMESPACE,
                lifetime="detached",
                num_cpus=0,
                max_restarts=0,
                # On the driver's machine (the head, for `dynaray up`), not on a store
                # machine whose loss would take it along.
                scheduling_strategy=NodeAffinitySchedulingStrategy(
                    ray.get_runtime_context().get_node_id(), soft=True
                ),
            )
            .remote(handles, {"data_dir": root, "ephemeral": ephemeral, "options": options})
        )
        if not ephemeral:
            _note_store(root, store, node_ids, resources)
        return Cluster(
            store,
            handles,
            router,
            root if ephemeral else None,
            started_ray,
            options=options,
            resources=resources,
        )
    except BaseException:
        for handle in [*handles.values(), router]:  # only what this call created
            if handle is not None:
                ray.kill(handle, no_restart=True)
        if ephemeral_root is not None:
            shutil.rmtree(ephemeral_root, ignore_errors=True)
        if started_ray:
            ray.shutdown()
        raise


def _note_store(root: str, store: str, nodes: list[str], resources: dict) -> None:
    """Note on this machine that root holds the store (`manifest`). A note that cannot be
    written only loses that guard: said, and the store runs."""
    try:
        manifest.write(root, store, nodes, KVNODE if resources else None)
    except OSError as exc:
        log.warning(
            "could not note store %r in %s on this machine (%s): a start before its "
            "machines are back would not be refused",
            store,
            root,
            exc,
        )


def _remains(store: str, data_dir: str | None) -> Any | None:
    """Before `store` starts: the Router actor left by a store of that name whose nodes have
    all stopped (killed, or lost with their machines), or None. start() replaces it when
    the store starts again from the data directory the Router remembers. Raises
    DynarayError, before anything starts, for another directory (or none): that store's
    nodes are still to be restarted, or the store stopped."""
    router = _router_of(store)
    if router is None:
        return None
    kept = _layout_of(router)
    if data_dir is None or kept.get("data_dir") != data_dir:
        where, held, again = kept.get("data_dir"), "", ""
        option = store_option(store)
        if where is not None and kept.get("ephemeral"):
            held = f"; its data is in the temporary directory {where}"
        elif where is not None:
            held = f"; its data is in {where}"
            again = (
                f"start it again with data_dir={where!r} (`dynaray up{option} --data-dir "
                f"{where}`), "
            )
        raise DynarayError(
            f"a store named {store!r} is on this Ray cluster with every node down (its Router "
            f"actor remains{held}); nothing was started. Restart its nodes "
            f"(dynaray.Cluster.attach({store!r}).restart(node), `dynaray restart{option} "
            f"NODE`), {again}or stop it first (dynaray.Cluster.attach({store!r}).shutdown(), "
            f"`dynaray down{option}`)"
        )
    return router


def _placement(nodes: int) -> dict[str, float]:
    """One node per machine where machines carry `kvnode`; several side by side otherwise."""
    available = ray.cluster_resources().get(KVNODE, 0)
    if not available:
        return {}
    if nodes > available:
        raise ValueError(
            f"{nodes} store nodes to start, but the Ray cluster has only {int(available)} "
            f"machines with the {KVNODE!r} resource: add machines, or start fewer nodes"
        )
    return {KVNODE: 1}


def stores_running(with_nodes: bool = False) -> list[str]:
    """The stores with actors on this Ray: a Router or nodes (`with_nodes`: nodes)."""
    stores = set()
    for entry in ray.util.list_named_actors(all_namespaces=True):
        parsed = parse_name(entry["name"]) if entry["namespace"] == NAMESPACE else None
        if parsed is not None and (parsed[1] is not None or not with_nodes):
            stores.add(parsed[0])
    return sorted(stores)


def _check_free(store: str, nodes: int) -> None:
    """Refuse at once, rather than after the start-up timeout, a start that needs more
    `kvnode` machines than are free because other stores' nodes run on the rest. Ray's
    view of free resources lags a stop by a moment (and the nodes of a store stopped just
    before may still be ending), so it gets a few seconds to catch up; without another
    store to blame, the start goes on and waits for the machines as before."""
    deadline = time.monotonic() + _FREE_WAIT
    while (free := ray.available_resources().get(KVNODE, 0)) < nodes:
        if time.monotonic() > deadline:
            others = [s for s in stores_running(with_nodes=True) if s != store]
            if not others:
                return
            total = ray.cluster_resources().get(KVNODE, 0)
            raise DynarayError(
                f"{nodes} store nodes to start, and only {int(free)} of the Ray cluster's "
                f"{int(total)} machines with the {KVNODE!r} resource are free: nodes of "
                f"store(s) {', '.join(repr(s) for s in others)} run on the others; nothing "
                "was started. Stop one, add machines, or start fewer nodes"
            )
        time.sleep(0.5)


def _machines_of_other_stores(store: str) -> dict[str, str]:
    """{Ray node: "store/node"} of the machines other stores' nodes run on: their kvnode
    is taken, so a node of `store` placed there would never be scheduled. A node that does
    not answer within the call deadline is left out (its machine may be going away)."""
    asks = {}
    try:
        named = ray.util.list_named_actors(all_namespaces=True)
    except Exception:  # noqa: BLE001 - no GCS to ask: placed as before (Ray may then wait)
        log.warning("could not list other stores' nodes; a machine they use may be chosen")
        return {}
    for entry in named:
        parsed = parse_name(entry["name"]) if entry["namespace"] == NAMESPACE else None
        if parsed is None or parsed[1] is None or parsed[0] == store:
            continue
        with contextlib.suppress(Exception):  # stopped since it was listed, or no GCS
            actor = ray.get_actor(entry["name"], namespace=NAMESPACE)
            asks[f"{parsed[0]}/{parsed[1]}"] = actor.info.remote()
    ready, _ = ray.wait(list(asks.values()), num_returns=len(asks), timeout=10.0)
    taken = {}
    for name, ask in asks.items():
        if ask in ready:
            with contextlib.suppress(RayError):
                taken[ray.get(ask)["ray_node"]] = name
    return taken


def _check_kept_n(kept_n: int, n: int) -> None:
    if kept_n != n:
        raise ValueError(
            f"the data directory holds a store with n={kept_n}; start it with n={kept_n} "
            "(changing the replication factor of existing data is not supported)"
        )


def members_for(
    nodes: int | None,
    found: dict[str, dict[str, dict]],
    n: int | None = None,
    store: str | None = None,
) -> tuple[list[str], bool]:
    """The ids of the nodes to start, from the node directories found ({machine:
    _node_directories there}): those of the newest ring the directories kept (a store
    started again), else n1 to n{nodes} (a new store; DEFAULT_NODES when nodes is None);
    and whether the store is new.

    Nodes that joined since the store was created keep their ids, and the directories of
    nodes that left stay shut. The store is new only when no node directory exists at all.
    Raises DynarayError when the stored ring has another number of nodes than `nodes`, a
    directory's ring cannot be read, or a directory is of a store other than `store`;
    ValueError when the store kept another replication factor than `n`. All before any
    node starts, so nothing is written.
    """
    others = sorted(
        {d["store"] for dirs in found.values() for d in dirs.values() if d.get("store")} - {store}
    )
    if store is not None and others:
        _refuse_other_store(others[0], store)
    rings = []
    for dirs in found.values():
        for node, d in dirs.items():
            try:
                if "error" in d:
                    raise ValueError(d["error"])
                if d["ring"] is not None:
                    rings.append((Ring.from_wire(d["ring"]), d.get("n")))
            except ValueError as exc:
                raise DynarayError(
                    f"the directory of node {node} cannot be read ({exc}); nothing was "
                    "started. Move it out of the data directory if it is not a dynaray node "
                    "directory, or start the store with the dynaray version that wrote it"
                ) from None
    if not rings:
        new = not any(found.values())
        if nodes is None and not new:
            raise DynarayError(
                "the data directory holds node directories but no ring (a store that stopped "
                "before it was set up): say how many nodes it has with nodes= (`dynaray up "
                "--nodes K`), or use another data directory"
            )
        return [f"n{i}" for i in range(1, (nodes or DEFAULT_NODES) + 1)], new
    newest, kept_n = max(rings, key=lambda kept: kept[0].version)
    if n is not None and kept_n is not None:
        _check_kept_n(kept_n, n)
    members = sorted(newest.nodes(), key=_node_sort_key)
    if nodes is not None and len(members) != nodes:
        raise DynarayError(
            f"the data directory holds a store of {len(members)} nodes "
            f"({', '.join(members)}); start it with nodes={len(members)}, or without nodes "
            "(`dynaray up` without --nodes), or use another data directory"
        )
    left = sorted({n for dirs in found.values() for n in dirs} & set(newest.departed))
    if left:
        log.info(
            "not starting %s: they left the store (their directories may be deleted)",
            ", ".join(sorted(left, key=_node_sort_key)),
        )
    return members, False


def _refuse_other_store(other: str, store: str) -> None:
    """A start of `store` found the data of store `other`: taken as this store's, it would
    serve and change that store's keys (and, while that one runs, wait for its machines)."""
    raise DynarayError(
        f"the data directory holds store {other!r}, not {store!r}; nothing was started. "
        f"Start that store by its name (store={other!r}, `dynaray up{store_option(other)}`), "
        f"or give store {store!r} a data directory of its own"
    )


def homes_for(
    node_ids: list[str], holding: dict[str, dict[str, list]], empty: Iterable[str] = ()
) -> dict[str, str]:
    """The machine each store node must start on, from which machines hold which node
    directories ({Ray node id: {store node id: fingerprint of its data file}}).

    A directory that one machine holds pins its node there. One that several machines see
    with the same fingerprint (the same file: shared storage) may be opened from anywhere,
    as may those of a new store, which are nowhere yet. Raises DynarayError, before
    anything starts, when machines hold different copies of a node's directory, or one
    machine holds the directories of two nodes (one store node runs per machine): which
    copy is the node's is for a person to decide. Also when no machine holds the directory
    of a node of a store that has data elsewhere, unless the node is in `empty`: its
    machine may only be starting, and a node started empty elsewhere copies its ranges
    back for nothing.
    """
    machines = sorted(holding)
    homes: dict[str, str] = {}
    for node in node_ids:
        where = [m for m in machines if node in holding[m]]
        differ = len({tuple(holding[m][node]) for m in where}) > 1
        if differ or 1 < len(where) < len(machines):
            raise DynarayError(
                f"the directory of node {node!r} is on {len(where)} of {len(machines)} machines "
                f"(Ray nodes {', '.join(m[:12] for m in where)})"
                + (" in different copies" if differ else "")
                + "; nothing was started. With disks of their own: keep the copy with the "
                "node's data, move the others away, and start again. With storage shared by "
                "the machines: mount it on every one of them, or wait a minute (file "
                "attributes may be cached) and start again; delete nothing"
            )
        if len(where) == 1 and len(machines) > 1:
            homes[node] = where[0]
    for machine in machines:
        local = sorted((n for n, home in homes.items() if home == machine), key=_node_sort_key)
        if len(local) > 1:
            raise DynarayError(
                f"one machine (Ray node {machine[:12]}) holds the directories of nodes "
                f"{', '.join(local)}, and a machine runs one store node; nothing was "
                "started. Move all but one of them to machines of their own (the same path "
                "there) and start again"
            )
    missing = [n for n in node_ids if not any(n in holding[m] for m in machines)]
    empty = set(empty)
    if empty - set(node_ids):
        raise DynarayError(
            f"empty names {', '.join(sorted(empty - set(node_ids)))}, not nodes of this "
            f"store ({', '.join(node_ids)}); nothing was started"
        )
    if empty - set(missing):
        raise DynarayError(
            f"the directories of {', '.join(sorted(empty - set(missing)))} are on running "
            "machines, and empty is only for nodes whose directories are lost; nothing "
            "was started. Start again without them in empty"
        )
    lost = [n for n in missing if n not in empty]
    if lost and any(holding.values()):
        raise DynarayError(
            f"no running machine holds the directories of {', '.join(lost)}; nothing was "
            "started. If a machine is still starting, wait until `ray status` shows it "
            "and start again; if it is stopped (in EC2: a stopped instance of the cluster, "
            "which `ray up` did not start), start it first. If they are lost for good, "
            "start again the same way with "
            f"empty={lost!r} added (`dynaray up` with `--empty {' --empty '.join(lost)}` "
            "added to its options): they start empty on free machines and copy their ranges "
            "back from their other replicas"
        )
    return homes


def _node_directories(root: str) -> dict[str, dict]:
    """The node directories (with an LMDB environment) under root on this machine:
    {store node id: {"file": fingerprint, "ring": the ring it kept, or None, "n": its
    replication factor, or None, "store": the name of its store, or None}}, plus "error"
    where they could not be read. The fingerprint is the data file's inode, size and
    modification time, equal wherever the same file is seen."""
    from dynaray.node import stored_layout

    found: dict[str, dict] = {}
    if not os.path.isdir(root):
        return found
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        try:
            # Opened first: on NFS an open asks the server, a bare stat may read a cache.
            with open(os.path.join(path, "data.mdb"), "rb") as data:
                info = os.fstat(data.fileno())
        except OSError:
            continue
        found[name] = {"file": [info.st_ino, info.st_size, info.st_mtime_ns], "ring": None}
        try:
            ring, config = stored_layout(path)
            config = config or {}
            found[name].update(ring=ring, n=config.get("n"), store=config.get("store"))
        except Exception as exc:  # noqa: BLE001 - reported by members_for, which refuses
            found[name]["error"] = f"{type(exc).__name__}: {exc}"
    return found


_node_directories_there = ray.remote(num_cpus=0, max_retries=0)(_node_directories)


def _look_up(store: str, nodes: list[str], wait: float) -> dict[str, Any]:
    """{node: actor handle} of the nodes whose actors Ray's GCS names within `wait`
    seconds, looked up side by side; those with no actor, or no answer in time, are left
    out (a lookup has no deadline of its own: it may wait a minute for a GCS that is down)."""
    if not nodes:
        return {}
    pool = ThreadPoolExecutor(max_workers=len(nodes), thread_name_prefix="dynaray-lookup")
    asks = {
        pool.submit(ray.get_actor, node_name(store, node), namespace=NAMESPACE): node
        for node in nodes
    }
    done, _ = wait_futures(asks, timeout=wait)
    pool.shutdown(wait=False, cancel_futures=True)
    return {asks[ask]: ask.result() for ask in done if ask.exception() is None}


def _dead(handle: Any) -> bool:
    """Wait (up to _KILL_WAIT) until Ray reports a killed actor dead; False if it did not."""
    deadline = time.monotonic() + _KILL_WAIT
    while time.monotonic() < deadline:
        try:
            ray.get(handle.ping.remote(), timeout=1.0)
        except ActorDiedError:
            return True
        except (ActorUnavailableError, GetTimeoutError):
            pass  # dying, or not answering yet: not dead yet
        time.sleep(0.05)
    return False


@ray.remote(num_cpus=0, max_retries=0)
def _delete_directory(path: str) -> None:
    if not os.path.ismount(path):
        shutil.rmtree(path)
        return
    # A directory that is a disk of its own: losing the disk leaves a blank one mounted there.
    with os.scandir(path) as listing:
        entries = list(listing)
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.remove(entry.path)


def _directories_found(root: str, resources: dict) -> dict[str, dict[str, dict]]:
    """{machine: node directories under root there}: on every kvnode machine, or, on a
    cluster without them, on this one."""
    return _directories_on_machines(root) if resources else {"": _node_directories(root)}


def _directories_on_machines(root: str) -> dict[str, dict[str, dict]]:
    """{Ray node id: node directories under root there (_node_directories)} for every live
    machine that can run a store node."""
    machines = [
        m["NodeID"] for m in ray.nodes() if m.get("Alive") and m.get("Resources", {}).get(KVNODE)
    ]
    asks = {
        machine: _node_directories_there.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(machine, soft=False)
        ).remote(root)
        for machine in machines
    }
    ready, _ = ray.wait(list(asks.values()), num_returns=len(asks), timeout=_CALL_TIMEOUT)
    found = {}
    for machine, ask in asks.items():
        try:
            if ask not in ready:
                raise GetTimeoutError(f"no answer within {_CALL_TIMEOUT:.0f} s")
            found[machine] = ray.get(ask)
        except RayError as exc:
            raise DynarayError(
                f"could not list the node directories under {root!r} on Ray node "
                f"{machine[:12]} ({exc}); nothing was started. Check that the machines in "
                "`ray status` are up"
            ) from exc
    return found


def _create_node(
    store: str,
    node_id: str,
    path: str,
    options: dict,
    resources: dict,
    ray_node: str | None = None,
    fresh: bool = False,
):
    """The node's actor. `fresh`: its id has never been used in this store (StorageNode)."""
    from dynaray.node import StorageNode

    placement = {}
    if ray_node is not None:
        # A restarted node goes back to the machine that holds its LMDB directory.
        placement["scheduling_strategy"] = NodeAffinitySchedulingStrategy(ray_node, soft=False)
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
            **placement,
        )
        .remote(node_id, path, options, fresh)
    )


def _home_of(info: dict) -> tuple[str, str]:
    """(Ray node, directory) of a running node, from its info()."""
    return info["ray_node"], info["path"]


def _homes_of(infos: dict[str, dict]) -> dict[str, tuple[str, str]]:
    """{node: (Ray node, directory)} from running nodes' info()."""
    return {node: _home_of(info) for node, info in infos.items()}


def _fingerprints(found: dict[str, dict[str, dict]]) -> dict[str, dict[str, list]]:
    """{machine: {node: fingerprint of its data file}} from _directories_found."""
    return {m: {node: d["file"] for node, d in dirs.items()} for m, dirs in found.items()}


def _newest(descriptions: Iterable[dict]) -> dict | None:
    """Of nodes' describe() answers, the one holding the newest ring; None if none has one."""
    return max(
        (d for d in descriptions if d.get("ring")),
        key=lambda d: d["ring"]["version"],
        default=None,
    )


def _ring_for(
    descriptions: list[dict],
    node_ids: list[str],
    partitions: int,
    n: int,
    r: int | None,
    w: int | None,
    store: str,
) -> tuple[Ring, dict]:
    """A fresh ring, or the newest one the nodes kept on disk from an earlier run (which
    members_for checked already where it could see the directories). R and W not given
    are the kept ones (a store started again keeps its quorums), else the defaults."""
    newest = _newest(descriptions)
    kept = newest["config"] if newest is not None else {}
    r = kept.get("r", DEFAULT_R) if r is None else r
    w = kept.get("w", DEFAULT_W) if w is None else w
    quorum.check_quorum(n, r, w, len(node_ids))
    # "id": this store's, made once (a store restarted keeps it): contexts are tied to it,
    # so a context of another store, or of one made anew under this name, is refused.
    kept_id = kept.get("id")
    config = {"n": n, "r": r, "w": w, "store": store, "id": kept_id or os.urandom(8).hex()}
    if newest is None:
        ring = Ring.create(node_ids, partitions)
        return ring, {**config, "partitions": ring.partitions}
    ring = Ring.from_wire(newest["ring"])
    if set(ring.nodes()) != set(node_ids):
        raise DynarayError(
            f"the data directory holds a store of nodes {list(ring.nodes())}; start it with "
            f"nodes={len(ring.nodes())} or use another data_dir"
        )
    _check_kept_n(newest["config"].get("n", n), n)
    return ring, {**config, "partitions": ring.partitions}


def connect(
    store: str = DEFAULT_STORE, *, address: str | None = "auto", path: str = "client"
) -> Client:
    """A Client of a running store, from any driver connected to its Ray cluster."""
    return Cluster.attach(store, address=address).client(path=path)


class Cluster:
    """Handle on a running store: make clients, inspect replicas, inject faults, stop it."""

    def __init__(
        self,
        store: str,
        handles: dict[str, Any],
        router: Any,
        ephemeral_root: str | None,
        started_ray: bool,
        *,
        options: dict | None = None,
        resources: dict | None = None,
        kept: dict | None = None,
    ) -> None:
        """`kept`: what the store's Router remembers (Router.layout), for a handle attached
        while nodes are down: the nodes and data directory when none of them answers."""
        kept = kept or {}
        self.store = store
        self._handles = dict(sorted(handles.items(), key=lambda kv: _node_sort_key(kv[0])))
        self._router = router
        self._ephemeral_root = ephemeral_root
        self._started_ray = started_ray
        self._options = dict(options or {})
        self._resources = dict(resources or {})
        self._clients: list[Client] = []
        self._faults = faults.Faults()
        self._shut = False  # shutdown() ran: every later call is refused
        # The membership change this handle makes, if any (_changing_membership), and
        # who took its hold if it lapsed.
        self._holder: str | None = None
        self._doing, self._lapsed, self._hold_warned = "", None, False
        self.last_change: dict[str, int] = {}
        # Where each node lives (Ray node, directory): restart() puts it back there.
        self._homes = _homes_of(self._ask("info"))
        # Every node of the ring, running or not: a handle attached while a node is down
        # finds no actor of it, yet must be able to restart it, or forget it.
        # With every node down, the Router's list of them stands in for the ring.
        newest = _newest(self._ask("describe").values())
        ring = Ring.from_wire(newest["ring"]).nodes() if newest is not None else None
        # (With a ring, only its nodes: not one a cut-short leave left running, _left_known.)
        members = {*self._handles, *kept.get("members", ())} if ring is None else set(ring)
        self._members = sorted(members, key=_node_sort_key)
        self._data_dir = kept.get("data_dir")

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
        # A store whose nodes are all down is still found through its Router actor (on the
        # driver's machine), which remembers its nodes: they can be restarted, or stopped.
        router = _router_of(store)
        if not handles and router is None:
            raise DynarayError(
                f"no store named {store!r} runs on this Ray cluster; start one with "
                f"`dynaray up{store_option(store)}` or dynaray.start()"
            )
        kept = _layout_of(router) if router is not None else {}
        resources = {KVNODE: 1} if ray.cluster_resources().get(KVNODE) else {}
        # A throw-away store (started with data_dir=None) is thrown away by whichever
        # handle shuts it down, as its own would: its nodes delete their directories.
        ephemeral_root = kept.get("data_dir") if kept.get("ephemeral") else None
        return cls(
            store,
            handles,
            router,
            ephemeral_root,
            False,
            options=kept.get("options"),
            resources=resources,
            kept=kept,
        )

    def nodes(self) -> list[str]:
        """The ids of the store's nodes, running or not."""
        self._check_open()
        return list(self._members)

    def client(self, path: str = "client", *, nodes: list[str] | None = None, **kw: Any) -> Client:
        """A Client; `path` is "client" (writes straight to the coordinator, reads straight
        to the replicas), "router" or "any".

        `nodes` limits the client to some nodes, as a client on one side of a partition.
        """
        self._check_open()
        handles = self._handles
        if not handles:  # attached while every node was down: another driver may have
            self._handles.update(_named_nodes(self.store))  # restarted some since
        if not handles:
            option = store_option(self.store)
            raise DynarayError(
                f"no node of store {self.store!r} runs now ({', '.join(self._members)} are "
                f"down), so a client could reach none; restart them (cluster.restart(node), "
                f"`dynaray restart{option} NODE`) and make the client then"
            )
        if nodes is not None:
            if isinstance(nodes, str):
                raise TypeError(f"nodes takes a list of node names, e.g. nodes=[{nodes!r}]")
            if not nodes:
                raise ValueError("nodes=[] limits the client to no node; name at least one")
            nodes = [self._known(node) for node in nodes]
            # A listed node that is down now is learned from the others once it runs again.
            handles = {n: h for n in nodes if (h := self._handle(n)) is not None}
            if not handles:
                raise DynarayError(
                    f"none of {', '.join(nodes)} runs now, so a client limited to them could "
                    "reach no node; make it once one of them runs"
                )
        routing = Routing(handles, path=path, router=self._router, only=nodes, **kw)
        client = Client(routing)
        self._clients.append(client)
        return client

    def _known(self, node: str) -> str:
        self._check_open()
        if node not in self._members:
            raise ValueError(f"unknown node {node!r}; the store's nodes are {self.nodes()}")
        return node

    def _check_open(self) -> None:
        if self._shut:
            raise DynarayError(
                f"this handle of store {self.store!r} was shut down; start the store again "
                "(dynaray.start with its data_dir) or attach to a running one"
            )

    def _handle(self, node: str, fresh: bool = False) -> Any | None:
        """The node's actor handle, or None if no actor of it runs. Looked up by name when
        this handle has none (the node was down when it attached) or when `fresh` (another
        driver may have restarted the node: a new actor). A lookup needs Ray's control
        plane (the GCS), so only the operations that change the store ask for fresh ones."""
        self._check_open()
        if not fresh and node in self._handles:
            return self._handles[node]
        try:
            handle = ray.get_actor(node_name(self.store, node), namespace=NAMESPACE)
        except ValueError:
            self._handles.pop(node, None)
            return None
        except Exception as exc:  # noqa: BLE001 - a timeout or a Ray error: the GCS is not there
            raise DynarayError(
                f"could not look up the actor of node {node!r} in Ray ({type(exc).__name__}: "
                f"{exc}); nothing was changed. Is the head's GCS up (`ray status`)?"
            ) from exc
        self._handles[node] = handle
        return handle

    def _running(self, but: str | None = None) -> dict[str, Any]:
        """{node: actor handle} of the store's nodes (but one) with an actor running."""
        found = {n: self._handle(n, fresh=True) for n in self._members if n != but}
        return {n: h for n, h in found.items() if h is not None}

    def _root(self) -> str:
        """The data directory: each node's directory is in it, named by the node's id."""
        if not self._homes:
            self._homes.update(_homes_of(self._ask("info")))
        if self._homes:
            return os.path.dirname(next(iter(self._homes.values()))[1])
        if self._data_dir is not None:  # every node down: as the Router remembers it
            return self._data_dir
        raise DynarayError("no storage node answered; is the store running?")

    def _ask(
        self, method: str, *args: Any, nodes: list[str] | None = None, timeout: float = 10.0
    ) -> dict:
        """Call method on each node (every node whose actor this handle knows); {node:
        answer} of those that answered in time. Actor calls only, no name lookup: this
        works while Ray's GCS is down, as the store does."""
        self._check_open()
        handles = self._handles if nodes is None else {n: self._handles.get(n) for n in nodes}
        refs = {n: getattr(h, method).remote(*args) for n, h in handles.items() if h is not None}
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout)
        answers = {}
        for node, ref in refs.items():
            if ref in ready:
                try:
                    answers[node] = ray.get(ref)
                except RayActorError:
                    continue  # a dead node has no answer
        return answers

    def replica_state(self, key: str | bytes, bucket: str = codec.DEFAULT_BUCKET) -> dict:
        """{node_id: [values]} for every live node whose own data holds the key (not hints);
        a deleted key shows as []."""
        b, k = codec.bucket_bytes(bucket), codec.key_bytes(key)
        codec.check_key(b, k, write=False)
        return {
            node: decode_values(records.from_wire(wire))
            for node, wire in self._ask("held", b, k).items()
            if wire is not None
        }

    def preference_list(self, key: str | bytes, bucket: str = codec.DEFAULT_BUCKET) -> list[str]:
        """The key's preference list: its N owners first, then its fallbacks in order."""
        b, k = codec.bucket_bytes(bucket), codec.key_bytes(key)
        ring, _ = self._ring()
        return list(ring.preference_list(ring.partition_of(codec.hash_input(b, k))))

    def buckets(self) -> dict[str, dict]:
        """{bucket name: its stored properties} of every bucket created with properties;
        {"conflict": [properties, ...]} for one created twice at once with different ones."""
        from dynaray.catalog import BucketProps, Catalog

        catalog = Catalog()
        for wire in self._ask("bucket_catalog").values():
            catalog.merge(Catalog.from_wire(wire))
        out = {}
        for name in catalog.names():
            props = [BucketProps.decode(v) for v in catalog.get(name)]
            out[name] = vars(props[0]) if len(props) == 1 else {"conflict": list(map(vars, props))}
        return out

    def stats(self) -> dict[str, dict]:
        """Per live node: requests it coordinated and their latency by operation and
        outcome (reads only on the "any" path: clients coordinate theirs, counted here as
        `replica_reads`), sloppy-quorum writes, hints held and delivered, read repairs made
        on it, anti-entropy, handoff, the most siblings a key held, LMDB size: the figures
        exported to Ray's metrics (docs/operations.md)."""
        return self._ask("stats")

    def info(self) -> dict[str, dict]:
        """Per live node: its process, Ray node, keys, hints, disk and request counters."""
        return self._ask("info")

    # -- temporary failures -----------------------------------------------------------------

    def kill(self, node: str) -> bool:
        """Crash a node's actor at once, with no graceful shutdown; its directory stays.
        Returns once the actor is dead (ray.kill only starts that), so a restart() right
        after it finds the node gone: True, or False if Ray has not reported it dead
        within 10 s (then a restart may fail until it has)."""
        handle = self._handle(self._known(node), fresh=True)
        if handle is None:
            return True  # no actor of it runs
        ray.kill(handle, no_restart=True)
        if _dead(handle):
            return True
        log.warning(
            "node %s was killed but is not reported dead after %.0f s; a restart may fail "
            "until it is (check `ray list actors`)",
            node,
            _KILL_WAIT,
        )
        return False

    def lose_disk(self, node: str) -> None:
        """Crash a node and delete its directory, as if its disk were lost: restart() then
        brings it back empty: it takes its ranges over from their other replicas (not
        answering reads of a range until it has it) and gets its hints."""
        if node not in self._homes:
            handle = self._handle(self._known(node), fresh=True)
            if handle is None:
                raise DynarayError(
                    f"node {node!r} is not running and this handle does not know which "
                    "machine holds its directory (the node was down when it attached); "
                    "nothing was done"
                )
            self._homes[node] = _home_of(ray.get(handle.info.remote(), timeout=10))
        if not self.kill(node):
            raise DynarayError(
                f"node {node!r} was killed but is not dead yet, so its directory was kept "
                "(deleting it under a live LMDB would not be a lost disk); try again"
            )
        ray_node, path = self._homes[node]
        where = NodeAffinitySchedulingStrategy(ray_node, soft=False)
        deletion = _delete_directory.options(scheduling_strategy=where).remote(path)
        try:
            ray.get(deletion, timeout=30)
        except GetTimeoutError:
            ray.cancel(deletion, force=True)
            raise DynarayError(
                f"node {node!r} was killed, but deleting its directory {path!r} did not "
                "finish within 30 s: it may or may not be deleted; look on its machine "
                "before restarting it"
            ) from None
        except RayError as exc:
            raise DynarayError(
                f"node {node!r} was killed, but its directory {path!r} could not be deleted "
                f"({exc}); it keeps its data when restarted"
            ) from exc

    def restart(self, node: str, *, empty: bool = False) -> None:
        """Start a killed node again on its machine and directory; it rejoins and catches up.
        A node whose directory is empty (lose_disk, a replaced disk) comes back under a new
        actor id and takes its ranges over from the other replicas.

        If its machine is gone (where machines carry `kvnode`), the node starts on the
        machine that now holds its directory (one whose Ray restarted is a new Ray node
        with the same disk; with storage every machine shares, on a free one). If no
        machine holds it, `empty=True` says its disk is lost for good: it starts empty on a
        free machine and is refilled; without it, restart refuses (the machine may be only
        restarting)."""
        with contextlib.suppress(DynarayError):
            self._ring()  # the store's nodes now (another handle may have changed them)
        self._known(node)
        old = self._handle(node, fresh=True)
        if old is not None:
            if self._ask("ping", nodes=[node], timeout=2.0):
                raise ValueError(f"node {node!r} is running; kill it before restarting it")
            if not _dead(old):
                raise DynarayError(
                    f"node {node!r} does not answer, but Ray does not report its actor dead "
                    "yet (is its machine being lost? `ray status`); nothing was started: "
                    "try again once it is, or kill() it first"
                )
        ray_node, path = self._homes.get(node) or (None, os.path.join(self._root(), node))
        alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
        live = self._running(but=node)
        if ray_node not in alive:
            ray_node = self._new_home(node, ray_node, path, empty, live)
        elif empty:
            raise ValueError(
                f"restart(empty=True) is for a node whose machine is gone with its disk; "
                f"node {node!r}: its machine is up, so it restarts with what its directory holds "
                f"(an emptied directory included): restart({node!r})"
            )
        handle = _create_node(
            self.store, node, path, self._options, self._resources, ray_node=ray_node
        )
        try:
            newest = _newest(self._ask("describe", nodes=list(live), timeout=10.0).values())
            if newest is not None:
                ray.get(handle.configure.remote(newest["ring"], newest["config"]), timeout=60)
            elif not ray.get(handle.describe.remote(), timeout=_STARTUP_TIMEOUT).get("ring"):
                raise DynarayError(
                    f"node {node!r} came back without its data and no other node answered to "
                    "give it the ring; restart the other nodes first, then this one"
                )
            home = ray.get(handle.info.remote(), timeout=_CALL_TIMEOUT)
            peers = {**self._left_known(), **live, node: handle}
            ray.get(handle.set_peers.remote(peers), timeout=_CALL_TIMEOUT)
            ray.get(handle.set_faults.remote(self._faults.to_wire()), timeout=_CALL_TIMEOUT)
        except BaseException as exc:
            # Not left half started, holding the node's name: a later restart can take it.
            ray.kill(handle, no_restart=True)
            _dead(handle)
            if isinstance(exc, GetTimeoutError):
                raise DynarayError(
                    f"node {node!r} did not start in time (is its machine's {KVNODE!r} taken, "
                    "or the machine going away? `ray status`); it was stopped again"
                ) from exc
            raise
        self._handles[node] = handle
        self._homes[node] = _home_of(home)
        self._ask("update_peer", node, handle, nodes=list(live))
        self._tell_routers(node, handle)

    def _new_home(
        self, node: str, gone: str | None, path: str, empty: bool, live: dict[str, Any]
    ) -> str | None:
        """The machine for a node whose machine (Ray node `gone`, None if not known here) is
        not in the Ray cluster: the one machine that holds its directory, else (storage
        shared by every machine: it keeps its data; or the directory nowhere: it starts
        empty, if `empty` says its disk is lost for good) a kvnode machine no other store
        node runs on or is kept for. Raises DynarayError, before anything starts, when
        there is none, or when the directory is nowhere and not `empty` (its machine may be
        only restarting). Without kvnode machines a node of unknown home starts anywhere,
        as start() places nodes there."""
        if gone is None:
            lost = f"node {node!r} was not running when this handle attached"
        else:
            lost = f"the machine of node {node!r} (Ray node {gone[:12]}) is gone"
        if not self._resources:
            if gone is None:
                return None
            raise DynarayError(
                f"{lost}, and on a Ray cluster without {KVNODE!r} machines there is no "
                "other machine to start it on: use forget_node() and add_node() instead"
            )
        holding = _fingerprints(_directories_on_machines(os.path.dirname(path)))
        free, kept = self._free_machines(node, holding, live)
        kept_somewhere = any(node in dirs for dirs in holding.values())
        if not kept_somewhere and not empty:
            raise DynarayError(
                f"{lost}, and no running machine holds its directory; nothing was started. "
                "If its machine is only restarting, restart the node once `ray status` "
                "shows the machine again. If its disk is lost for good, restart it with "
                f"empty=True (`dynaray restart{store_option(self.store)} {node} --empty`): "
                "it starts empty on a free machine and copies its ranges back from their "
                "other replicas"
            )
        pinned = homes_for([node], holding).get(node) if kept_somewhere else None
        if pinned is not None:
            if pinned in kept:
                raise DynarayError(
                    f"{lost}; its directory is on Ray node {pinned[:12]}, the machine of "
                    f"node {kept[pinned]!r}, and a machine runs one store node: move the "
                    "directory to a machine of its own (the same path there) and restart again"
                )
            return pinned
        if not free:
            raise DynarayError(
                f"{lost}, and every machine with the {KVNODE!r} resource runs, or is kept "
                "for, another store node: add a machine (or wait for the autoscaler's "
                "replacement) and restart again, or use forget_node() to do without it"
            )
        if not kept_somewhere:
            log.warning(
                "%s and no running machine holds its directory: it starts empty on Ray node "
                "%s and copies its ranges back from their other replicas (if its old machine "
                "comes back, delete the old directory there)",
                lost,
                free[0][:12],
            )
        return free[0]

    def _free_machines(
        self, node: str, holding: dict[str, dict[str, list]], live: dict[str, Any]
    ) -> tuple[list[str], dict[str, str]]:
        """Of the kvnode machines in holding (_fingerprints), those free to run `node`, in
        order; and {machine: the other node it is kept for}: the machine another node runs
        on, or is known to live on while down, or whose directory that machine alone holds
        (so that node can start there again), or a node a cut-short leave left running
        holds (_left_known: it keeps its machine's kvnode until its leave is finished), or
        another store's node runs on. `live`: the running nodes (_running)."""
        others = [n for n in [*live, *self._left_known()] if n != node]
        homes = _homes_of(self._ask("info", nodes=others))
        self._homes.update({n: home for n, home in homes.items() if n in live})
        kept = _machines_of_other_stores(self.store)
        kept.update({home: n for n, (home, _) in homes.items()})
        for other, (home, _) in self._homes.items():
            if other != node:
                kept.setdefault(home, other)
        if len(holding) > 1:
            for other in self._members:
                where = [m for m, dirs in holding.items() if other in dirs]
                if other != node and len(where) == 1:
                    kept.setdefault(where[0], other)
        return sorted(m for m in holding if m not in kept), kept

    def partition(self, groups: list[list[str]]) -> None:
        """Cut node-to-node messages between the groups, both ways (clients reach all)."""
        members = self.nodes()
        if isinstance(groups, str) or any(isinstance(g, str) for g in groups):
            named = (
                [groups] if isinstance(groups, str) else [g for g in groups if isinstance(g, str)]
            )
            rest = [n for n in members if n not in named]
            raise TypeError(
                "partition takes a list of groups, each a list of node names, e.g. "
                f"partition([{named!r}, {rest!r}]); got {groups!r}"
            )
        table = faults.partition_table(groups, members)
        self._set_faults(faults.Faults(table, self._faults.drop, self._faults.delay))

    def set_link(
        self,
        src: str | None = None,
        dst: str | None = None,
        *,
        drop: float | None = None,
        delay: float | None = None,
    ) -> None:
        """Drop a fraction of, or delay, messages from src to dst (None: any node). What is
        not given stays as it was; 0 ends that rule of this link (and overrides, for this
        link, a rule of a wider one: set_link(None, "n2", drop=1) then
        set_link("n1", "n2", drop=0) lets n1 through)."""
        if drop is not None and not 0.0 <= drop <= 1.0:
            raise ValueError(f"drop must lie in [0, 1], got {drop!r}")
        if delay is not None and not delay >= 0:
            raise ValueError(f"delay must be >= 0 seconds, got {delay!r}")
        for node in (src, dst):
            if node is not None:
                self._known(node)
        link = f"{src or ''}>{dst or ''}"
        table = self._faults
        drops = faults.with_rule(table.drop, link, drop)
        delays = faults.with_rule(table.delay, link, delay)
        self._set_faults(faults.Faults(table.groups, drops, delays))

    def heal(self) -> None:
        """Remove every partition, drop rule and delay."""
        self._set_faults(faults.Faults())

    def _set_faults(self, table: faults.Faults) -> None:
        """Give every node the fault table: first through the actors this handle knows (no
        GCS needed), then to the actors of nodes that another driver restarted or added
        since, as far as name lookups find them within _FAULT_LOOKUP_WAIT."""
        self._check_open()
        self._faults = table
        wire = table.to_wire()
        self._ask("set_faults", wire)
        with contextlib.suppress(DynarayError):
            self._ring()  # nodes added through another handle, by actor calls
        renewed = {
            node: handle
            for node, handle in _look_up(self.store, self._members, _FAULT_LOOKUP_WAIT).items()
            if actor_of(handle) != actor_of(self._handles.get(node))
        }
        self._handles.update(renewed)
        if renewed:
            self._ask("set_faults", wire, nodes=list(renewed))

    def status(self) -> dict[str, str]:
        """{node: "up" | "suspect" | "down"} as the live nodes' gossip sees it."""
        views = self._ask("membership_view", timeout=5.0)
        order = {"up": 0, "suspect": 1, "down": 2}
        result = {}
        for node in self._members:
            seen = [view.get(node, "down") for observer, view in views.items() if observer != node]
            if not seen:
                result[node] = "up" if node in views else "down"
                continue
            # The most common verdict; a tie goes to the worse one.
            result[node] = max(set(seen), key=lambda s: (seen.count(s), order[s]))
        return result

    def hints(self) -> dict[str, int]:
        """{node: hints it holds for other nodes}, for the live nodes."""
        return self._ask("hint_count")

    # -- permanent failures and scaling ------------------------------------------------------

    def anti_entropy(self) -> dict[str, int]:
        """Run one full anti-entropy round now and wait for it; returns what it did.

        Nodes take their turn one after another, so one round leaves every pair of replicas
        of every range compared with every change seen by the pairs before it.
        """
        totals = Figures()
        nodes, silent = self.nodes(), []
        for node in nodes:
            answer = self._ask("anti_entropy_round", nodes=[node], timeout=600.0)
            if node in answer:
                totals.add(Figures(**answer[node]))
            else:
                silent.append(node)
        if len(silent) == len(nodes):
            raise DynarayError(
                "no storage node answered, so no anti-entropy round ran; is the store "
                f"running? (cluster.status(), `dynaray status{store_option(self.store)}`)"
            )
        if silent:
            log.warning("anti-entropy: %s did not answer; their turns were skipped", silent)
        return totals.as_dict()

    def merkle_roots(self) -> dict[str, dict[int, str]]:
        """{node: {range: root hash}} for the ranges each live node replicates."""
        return self._ask("merkle_roots")

    def _ring(self) -> tuple[Ring, dict]:
        """The newest ring among the running nodes, and its settings; this handle's list of
        the store's nodes follows it (another handle may have added or removed some)."""
        newest = _newest(self._ask("describe", timeout=10.0).values())
        if newest is None:
            raise DynarayError("no storage node answered; is the store running?")
        ring = Ring.from_wire(newest["ring"])
        self._members = sorted(ring.nodes(), key=_node_sort_key)
        self._homes = {n: home for n, home in self._homes.items() if n in self._members}
        return ring, newest["config"]

    def _reshape(self, ring: Ring, config: dict, old: Ring, progress) -> dict[str, int]:
        """Give every node the new ring, wait until each has received the ranges it gained,
        then let each drop the ranges it lost (_settle)."""
        nodes = list(ring.nodes())
        before = self._ask("handoff_status", nodes=nodes)
        self._check_hold()
        give = (ring.to_wire(), config, old.to_wire())
        self._ask("configure", *give, nodes=nodes)
        self._members = sorted(ring.nodes(), key=_node_sort_key)  # even if the rest fails
        return self._settle(ring, before, progress, give)

    def _settle(
        self, ring: Ring, before: dict[str, dict], progress, give: tuple | None = None
    ) -> dict[str, int]:
        """Wait until every node of `ring` has received the ranges it gained, then let each
        drop the ranges it no longer replicates. Ranges are dropped only once every node
        of the ring has said it holds what it gained: a node that does not answer, that
        has not taken the ring yet (its configure call timed out: gossip or `give`, the
        configure call's arguments, sent again every RING_RESEND seconds, brings it), or
        could not copy a range, leaves every old copy where it is. A node silent for
        RING_RESEND seconds is looked up by name again (another driver may have restarted
        it). `before`: the nodes' handoff figures when the change began."""
        nodes = list(ring.nodes())
        resent = time.monotonic()

        def since_before(status: dict[str, dict], counter: str) -> int:
            """A counter's growth since the change began, summed over the nodes; a node
            restarted since (another life) counts from zero."""
            return sum(
                s.get(counter, 0) - before[node].get(counter, 0)
                if node in before and before[node].get("life") == s.get("life")
                else s.get(counter, 0)
                for node, s in status.items()
            )

        received = 0
        deadline = time.monotonic() + 3600
        heard = {node: time.monotonic() for node in nodes}  # when each last answered
        looked = dict(heard)  # when each silent node's actor was last looked up by name
        while True:
            status = self._ask("handoff_status", nodes=nodes)
            behind = sorted(n for n, s in status.items() if s.get("ring", 0) < ring.version)
            pending = sum(s["pending"] for s in status.values()) + len(behind)
            received = since_before(status, "keys_received")
            if progress is not None:
                progress(pending, received)
            now = time.monotonic()
            heard.update(dict.fromkeys(status, now))
            silent = sorted(n for n in nodes if n not in status)
            if not pending and not silent:
                break
            if any(now - heard[n] > HANDOFF_SILENCE for n in silent):
                raise DynarayError(
                    f"node(s) {', '.join(silent)} stopped answering while ranges were handed "
                    "over; the ring has changed, and no node dropped a range, so every key "
                    "keeps its old copies. Bring them back (`dynaray restart"
                    f"{store_option(self.store)} NODE`); anti-entropy then fills in what they "
                    "miss"
                )
            if now > deadline:
                raise DynarayError("ownership handoff did not finish within an hour")
            if behind and give is not None and now - resent > RING_RESEND:
                resent = now
                self._ask("configure", *give, nodes=behind)
            for node in silent:
                if now - looked[node] > RING_RESEND:
                    # Another driver may have restarted it (a new actor); the old handle
                    # would stay silent for good. Without the GCS, keep the handle we have.
                    looked[node] = now
                    with contextlib.suppress(DynarayError):
                        self._handle(node, fresh=True)
            time.sleep(0.2)
        failed = since_before(status, "ranges_failed")
        if failed:
            log.warning(
                "%d range(s) could not be copied from their old replicas (none answered); "
                "the old copies are kept and anti-entropy fills the new owners",
                failed,
            )
            return {"keys_received": received, "keys_dropped": 0, "ranges_not_copied": failed}
        if self._holder is not None:
            self._check_hold(
                "the nodes have the new ring, and no old copy was dropped (the next change "
                "drops them)"
            )
        dropped = sum(self._ask("drop_foreign", nodes=nodes, timeout=600).values())
        return {"keys_received": received, "keys_dropped": dropped}

    @contextlib.contextmanager
    def _changing_membership(self, doing: str):
        """Hold the store's membership for one change, whichever driver makes it
        (Router.hold_change): refused, with what the other driver does, while another
        runs. A thread renews the hold until the change ends, however long its steps."""
        self._check_open()
        self._holder = f"{os.uname().nodename}:{os.getpid()}:{os.urandom(4).hex()}"
        self._doing, self._lapsed, self._hold_warned = doing, None, False
        other = self._take_hold()
        if other is not None:
            self._holder = None
            raise DynarayError(
                f"another driver is changing the store's membership ({other[0]}, for "
                f"{other[1]:.0f} s); nothing was changed: try again once it is done"
            )
        stop = threading.Event()

        def renew() -> None:
            try:
                while not stop.wait(CHANGE_LEASE / 12):
                    if (other := self._take_hold(renew=True)) is not None:
                        self._lapsed = other
            except Exception as exc:  # noqa: BLE001 - a hold no longer renewed may lapse
                self._lapsed = [f"unknown: this driver stopped renewing ({exc!r})", 0.0]

        renewer = threading.Thread(target=renew, name="dynaray-membership-hold", daemon=True)
        renewer.start()
        try:
            yield
        finally:
            stop.set()
            renewer.join(timeout=_CALL_TIMEOUT)
            if self._router is not None:
                with contextlib.suppress(RayError):
                    ray.get(self._router.release_change.remote(self._holder), timeout=_CALL_TIMEOUT)
            self._holder = None

    def _take_hold(self, renew: bool = False) -> list | None:
        """Take or renew this change's hold: None when it has it, else [what the holder
        does, seconds since it began]. Without a Router that answers (gone with its
        machine) nothing can be held: the change goes on, with a warning."""

        try:
            return self._call_router("hold_change", self._holder, self._doing, CHANGE_LEASE, renew)
        except (RayError, AttributeError) as exc:  # AttributeError: a Router of 0.1.0
            if not self._hold_warned:  # once per change, not at every renewal
                self._hold_warned = True
                log.warning(
                    "the Router actor of store %r did not answer (%s): %s goes on without "
                    "keeping other membership changes out; make none at the same time",
                    self.store,
                    type(exc).__name__,
                    self._doing,
                )
            return None

    def _call_router(self, method: str, *args: Any) -> Any:
        """A call to the store's Router; if this handle's died, once more to the one a
        start by another driver made (ActorDiedError when there is none)."""

        def call() -> Any:
            if self._router is None:
                raise ActorDiedError()
            return ray.get(getattr(self._router, method).remote(*args), timeout=_CALL_TIMEOUT)

        try:
            return call()
        except ActorDiedError:
            if self._fresh_router() is None:
                raise
            return call()

    def _fresh_router(self) -> Any | None:
        """The store's Router looked up by name again, after this handle's died: a start
        by another driver makes a new one. None when there is none; the handle we had
        when the GCS does not answer the lookup."""
        with contextlib.suppress(Exception):  # the GCS is not answering: keep what we had
            self._router = _router_of(self.store)
        return self._router

    def _check_hold(self, then: str = "nothing was changed") -> None:
        """Before the nodes are given a new ring, and before they drop what they lost: the
        hold is still this change's (asked now, not only as the renewer last heard)."""
        if self._lapsed is None and self._holder is not None:
            self._lapsed = self._take_hold(renew=True)
        if self._lapsed is not None:
            raise DynarayError(
                f"this membership change's hold lapsed (the driver stalled for over "
                f"{CHANGE_LEASE:.0f} s) and another driver took it ({self._lapsed[0]}); "
                f"{then}"
            )

    def add_node(self, progress=None) -> str:
        """A new node joins: it takes its share of the ring and receives its data."""
        with self._changing_membership("add_node"):
            return self._add_node(progress)

    def _add_node(self, progress) -> str:
        old, config = self._ring()
        root = self._root()
        # Not a name an actor holds (one a failed add_node left outside the ring) nor one
        # a directory has (of a node that left while the ring did not record departures).
        found = _directories_found(root, self._resources)
        taken = set(self._handles)
        for dirs in found.values():
            taken.update(dirs)
        node = old.unused_id(taken)
        path = os.path.join(root, node)
        ray_node = None
        live = self._running()
        if self._resources:
            _placement(len(self._members) + 1)
            # Not on the machine of a node that is down: it would have nowhere to restart.
            free, _ = self._free_machines(node, _fingerprints(found), live)
            if not free:
                raise DynarayError(
                    f"every machine with the {KVNODE!r} resource runs, or is kept for, a "
                    "store node; add a machine (`ray up` with more workers) and try again"
                )
            ray_node = free[0]
        # A ring that may not know every node that left cannot vouch for the id's novelty;
        # the node then writes under an id of its own (StorageNode, Store._check_stamp).
        handle = _create_node(
            self.store,
            node,
            path,
            self._options,
            self._resources,
            ray_node=ray_node,
            fresh=old.departures_known,
        )
        self._handles[node] = handle
        self._members = sorted([*self._members, node], key=_node_sort_key)
        try:
            peers = {**self._left_known(), **live, node: handle}
            ray.get(handle.set_peers.remote(peers), timeout=_STARTUP_TIMEOUT)
            ray.get(handle.set_faults.remote(self._faults.to_wire()), timeout=_CALL_TIMEOUT)
            self._ask("update_peer", node, handle, nodes=list(live))
            self._homes[node] = _home_of(ray.get(handle.info.remote(), timeout=60))
            self._tell_routers(node, handle)
        except Exception:
            self._unmake(node, handle, live)  # no node has the new ring: it never began
            raise
        try:
            self.last_change = self._reshape(old.with_node(node), config, old, progress)
        except DynarayError as exc:
            if "nothing was changed" in str(exc):  # stopped before the nodes got the ring
                self._unmake(node, handle, live)
                raise
            if node not in self._members:
                raise
            raise DynarayError(
                f"node {node!r} has joined the ring (add_node again would add another "
                f"node), but: {exc}"
            ) from exc
        return node

    def _unmake(self, node: str, handle: Any, live: dict[str, Any]) -> None:
        """A node made by an add_node that stopped before any node had the new ring: it
        holds nothing, so its directory goes with it, and it is dropped as a node that
        leaves is (_drop) rather than left running outside the ring. Called while the
        add_node's own error propagates: a failure here is logged, not raised over it."""
        try:
            ray.get(handle.destroy.remote(), timeout=_CALL_TIMEOUT)
        except Exception:  # noqa: BLE001 - _drop kills it either way
            log.warning("the node %s made by a failed add_node did not stop cleanly", node)
        try:
            self._drop(node, live)
        except Exception:  # noqa: BLE001
            log.exception("dropping the node %s made by a failed add_node", node)

    def remove_node(self, node: str, progress=None) -> None:
        """Graceful leave: the node hands its ranges to their new owners, passes on the hints
        it holds, then stops. Called again after one that stopped midway (its error says
        so), it finishes that leave."""
        with self._changing_membership(f"remove_node({node!r})"):
            self._remove_node(node, progress)

    def _remove_node(self, node: str, progress) -> None:
        ring, config = self._ring()
        if node not in ring.nodes() and self._left_running(node):
            # Out of the ring already: an earlier remove_node stopped before its end.
            live = self._running()
            self._settle_again(ring, config, progress)
        else:
            old, config, live = self._check_leave(node)
            if not self._ask("ping", nodes=[node], timeout=5.0):
                raise ValueError(f"node {node!r} is not running; use forget_node() for a lost node")
            state = "has left the ring and keeps running"
            self._reshape_without(node, old, config, progress, state, "remove_node", "leave")
        left = self._ask("pass_on_hints", nodes=[node], timeout=600).get(node)
        if left != 0:
            what = "did not answer when asked to pass on" if left is None else f"has {left} of"
            raise DynarayError(
                f"node {node!r} has left the ring, but {what} the hints it holds (writes "
                "for nodes that were down) that no other node took; it keeps running to hold "
                f"them. Once the other nodes are up, remove_node({node!r}) again "
                f"(`dynaray leave{store_option(self.store)} {node}`) finishes the leave"
            )
        self._ask("stop", nodes=[node], timeout=30.0)
        self._drop(node, live)

    def _left_known(self) -> dict[str, Any]:
        """{node: handle} of nodes out of the ring that this handle knows (a leave cut
        short leaves one running, holding hints): a node started now must know them too,
        as its tombstone reaper asks them (the others keep theirs, StorageNode.set_peers)."""
        return {n: h for n, h in self._handles.items() if n not in self._members and h is not None}

    def _left_running(self, node: str) -> bool:
        """Whether `node`, not in the ring, still runs as this store's node."""
        if self._handle(node, fresh=True) is not None and self._ask("ping", nodes=[node]):
            return True
        self._handles.pop(node, None)
        return False

    def forget_node(self, node: str, progress=None) -> None:
        """The node is gone for good (disk lost): the others restore N copies of its keys.
        Called again after one that stopped once the ring had changed (its error says so),
        it finishes that one."""
        with self._changing_membership(f"forget_node({node!r})"):
            ring, config = self._ring()
            if node not in ring.nodes() and node in ring.departed:
                live = self._running()
                if self._left_running(node):
                    raise ValueError(
                        f"node {node!r} left the ring and still runs; remove_node({node!r}) "
                        "finishes its leave"
                    )
                self._settle_again(ring, config, progress)
                self._drop(node, live)
                return
            old, config, live = self._check_leave(node)
            if self._ask("ping", nodes=[node], timeout=5.0):
                raise ValueError(
                    f"node {node!r} is still running; use remove_node() for a graceful leave"
                )
            state = "is out of the ring"
            self._reshape_without(node, old, config, progress, state, "forget_node", "forget")
            self._drop(node, live)

    def _reshape_without(
        self, node: str, old: Ring, config: dict, progress, state: str, call: str, command: str
    ) -> None:
        """Take `node` out of the ring (_reshape). An error once the nodes have the new
        ring says that the same call again (`call`, the CLI's `command`) finishes it."""
        try:
            self.last_change = self._reshape(old.without_node(node), config, old, progress)
        except DynarayError as exc:
            if "nothing was changed" in str(exc):  # before the nodes got the new ring
                raise
            raise DynarayError(
                f"node {node!r} {state}, but: {exc}. Then {call}({node!r}) again (`dynaray "
                f"{command}{store_option(self.store)} {node}`) finishes it"
            ) from exc

    def _settle_again(self, ring: Ring, config: dict, progress) -> None:
        """Finish a leave or forget that stopped once the nodes had its ring: wait for
        the handoff (giving the ring again to a node behind), then drop the old copies."""
        give = (ring.to_wire(), config, None)
        self.last_change = self._settle(ring, self._ask("handoff_status"), progress, give)

    def _check_leave(self, node: str) -> tuple[Ring, dict, dict[str, Any]]:
        """The ring and settings before `node` leaves, and the running nodes, looked up by
        name first (another driver may have restarted some: their new actors)."""
        self._known(node)
        live = self._running()
        ring, config = self._ring()
        if len(ring.nodes()) - 1 < config.get("n", 3):
            raise ValueError(
                f"removing {node!r} would leave {len(ring.nodes()) - 1} nodes, fewer than "
                f"n={config.get('n', 3)} replicas; add a node first"
            )
        return ring, config, live

    def _drop(self, node: str, live: dict[str, Any]) -> None:
        """Stop and forget `node`; `live` (the running nodes, looked up before the change)
        get a peer table without it."""
        handle = self._handles.pop(node, None)
        if handle is not None:
            ray.kill(handle, no_restart=True)
        if node in self._members:  # not if it left the ring in an earlier remove_node
            self._members.remove(node)
        self._homes.pop(node, None)
        live = {n: h for n, h in live.items() if n != node}
        self._ask("set_peers", live, nodes=list(live))
        self._tell_routers(node, None)

    def _tell_routers(self, node: str, handle: Any) -> None:
        """Point the Router and this handle's clients at a new, restarted or removed node."""
        for client in self._clients:
            client.routing.set_node(node, handle)
        if self._router is not None:
            try:
                self._call_router("update_peer", node, handle)
            except ActorDiedError:
                log.warning(
                    "the Router actor of store %r is gone (with its machine?): clients on the "
                    "'router' path fail until the store is started again",
                    self.store,
                )
                self._router = None
            except RayError as exc:
                log.warning(
                    "the Router actor of store %r did not take node %s's new handle (%s): "
                    "clients on the 'router' path may miss it until the store is started again",
                    self.store,
                    node,
                    type(exc).__name__,
                )

    # -- stopping ---------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop the store's actors (data kept unless the store was started with data_dir=None),
        and the embedded Ray if start() began it. A second call does nothing."""
        if self._shut:
            return
        for client in self._clients:
            client.close()
        try:  # those another driver restarted or added too
            self._handles.update(_named_nodes(self.store))
        except Exception as exc:  # noqa: BLE001 - the GCS is not answering: stop those known
            log.warning("could not list the store's actors (%s); stopping those known here", exc)
        self._ask("destroy" if self._ephemeral_root else "stop", timeout=30.0)
        self._shut = True
        for handle in self._handles.values():
            ray.kill(handle, no_restart=True)
        for router in (self._router, self._fresh_router()):  # a start elsewhere made a new one
            if router is not None:
                with contextlib.suppress(Exception):  # one that is dead already, or the same
                    ray.kill(router, no_restart=True)
        if self._ephemeral_root:
            shutil.rmtree(self._ephemeral_root, ignore_errors=True)
        if self._started_ray:
            ray.shutdown()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
