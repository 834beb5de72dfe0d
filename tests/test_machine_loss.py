"""Machine loss: a whole Ray node (raylet and every process on it) removed under the store.

Several raylets on one machine through ray.cluster_utils.Cluster, each carrying the `kvnode`
resource, so the store puts exactly one storage node on each, as on a real cluster.
"""

from __future__ import annotations

import contextlib
import os
import shutil

import pytest
import ray
from ray.cluster_utils import Cluster as RayCluster

import dynaray
from tests.conftest import FAST, wait_for
from tests.test_failures import keys_owned_by, owners

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def machines():
    if ray.is_initialized():
        ray.shutdown()
    rc = RayCluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "resources": {"kvnode": 1}, "include_dashboard": False},
    )
    workers = [rc.add_node(num_cpus=0, resources={"kvnode": 1}) for _ in range(3)]
    rc.wait_for_nodes()
    ray.init(address=rc.address, namespace="dynaray", log_to_driver=False)
    yield rc, workers
    ray.shutdown()
    rc.shutdown()


def kvnode_machines() -> list[str]:
    """The Ray node ids of the live machines that can run a store node."""
    return [m["NodeID"] for m in ray.nodes() if m["Alive"] and m["Resources"].get("kvnode")]


def test_one_store_node_per_machine_and_writes_survive_machine_loss(machines):
    rc, workers = machines
    cluster = dynaray.start(nodes=4, n=3, r=2, w=2, node_options=FAST, partitions=64)
    try:
        info = cluster.info()
        homes = {node: i["ray_node"] for node, i in info.items()}
        assert len(set(homes.values())) == 4  # exactly one store node per machine

        worker_ids = {w.node_id: w for w in workers}
        victim = next(n for n, ray_node in homes.items() if ray_node in worker_ids)
        client = cluster.client()
        keys = keys_owned_by(cluster, [victim], 6, "machine")
        for key in keys:
            client.put(key, None, f"before-{key}")

        rc.remove_node(worker_ids[homes[victim]], allow_graceful=False)
        wait_for(lambda: cluster.status()[victim] == "down", timeout=60, what="victim down")
        wait_for(lambda: homes[victim] not in kvnode_machines(), timeout=90, what="machine dead")
        for key in keys:
            res = client.get(key)
            assert res.values == [f"before-{key}"]
            client.put(key, res.context, f"after-{key}")  # W=2 through the survivors
        for key in keys:
            assert client.get(key).value == f"after-{key}"
            survivors = set(owners(cluster, key)[:3]) - {victim}
            wait_for(
                lambda key=key, s=survivors: set(cluster.replica_state(key)) >= s,
                what=f"{key} on surviving owners",
            )
        # The only spare machine holds hints for the lost one; they wait for its return.
        wait_for(lambda: sum(cluster.hints().values()) >= len(keys), what="hints kept")
        with pytest.raises(dynaray.DynarayError, match="is gone, and every machine with"):
            cluster.restart(victim)  # nowhere to run it: nothing started

        # The machine comes back as a new Ray node (its Ray restarted) with the same disk
        # (these machines share one): the node starts there, from its directory.
        back = rc.add_node(num_cpus=0, resources={"kvnode": 1})
        rc.wait_for_nodes()
        cluster.restart(victim)
        assert cluster.info()[victim]["ray_node"] == back.node_id
        assert cluster.info()[victim]["actor"] == victim  # its data, not an empty start
        wait_for(lambda: sum(cluster.hints().values()) == 0, what="hints handed back")
        for key in keys:
            assert cluster.replica_state(key)[victim] == [f"after-{key}"]

        # Lost for good this time, volume and all; a replacement machine comes up blank.
        path = cluster.info()[victim]["path"]
        rc.remove_node(back, allow_graceful=False)
        wait_for(lambda: cluster.status()[victim] == "down", timeout=60, what="victim down")
        wait_for(lambda: back.node_id not in kvnode_machines(), timeout=90, what="machine dead")
        shutil.rmtree(path)
        replacement = rc.add_node(num_cpus=0, resources={"kvnode": 1})
        rc.wait_for_nodes()
        with pytest.raises(dynaray.DynarayError, match="no running machine holds its directory"):
            cluster.restart(victim)  # its machine may only be restarting: nothing started
        cluster.restart(victim, empty=True)  # on the free machine: it copies its ranges back
        info = cluster.info()[victim]
        assert info["ray_node"] == replacement.node_id
        assert info["actor"].startswith(f"{victim}@")
        wait_for(lambda: cluster.info()[victim]["ranges_arriving"] == 0, what="refilled")
        for key in keys:
            assert cluster.replica_state(key)[victim] == [f"after-{key}"]
    finally:
        cluster.shutdown()


def uses(client, node: str, actor) -> bool:
    """After a round of reads, whether the client calls `node` through that actor. A read
    may miss its quorum while the client still holds dead actors: those reads are how it
    finds them dead and learns the new ones."""
    for i in range(20):
        with contextlib.suppress(dynaray.DynarayError):
            client.get(f"k{i}")
    mine = client.routing.transport.peers.get(node)
    return mine is not None and mine._actor_id == actor._actor_id


def test_a_handle_attached_while_a_node_is_down_restarts_and_forgets_it(
    machines, tmp_path, monkeypatch
):
    rc, _ = machines
    while len(kvnode_machines()) < 5:  # four nodes, and a spare machine
        rc.add_node(num_cpus=0, resources={"kvnode": 1})
    rc.wait_for_nodes()
    data = str(tmp_path / "data")
    cluster = dynaray.start(nodes=4, data_dir=data, node_options=FAST, partitions=64, store="att")
    try:
        client = cluster.client()
        for i in range(20):
            client.put(f"k{i}", None, f"v{i}")
        stale = cluster._handle("n2")
        cluster.kill("n2")
        # A new driver's handle: no actor of n2 runs, yet n2 is a node of the store.
        attached = dynaray.Cluster.attach("att")
        assert attached.nodes() == ["n1", "n2", "n3", "n4"]
        wait_for(lambda: attached.status()["n2"] == "down", what="n2 seen down")
        attached.restart("n2")  # every machine sees its directory: a free one runs it
        assert attached.info()["n2"]["actor"] == "n2"  # with its data
        wait_for(lambda: attached.status()["n2"] == "up", what="n2 seen up again")
        assert [client.get(f"k{i}").value for i in range(20)] == [f"v{i}" for i in range(20)]
        # The first handle's client held n2's dead actor: it learns the new one from the
        # nodes' descriptions, instead of taking n2 for down from now on.
        restarted = dynaray.cluster._named_nodes("att")["n2"]
        wait_for(lambda: uses(client, "n2", restarted), what="the client using n2's new actor")
        # Fault injection through the first handle reaches the actor another handle started.
        cluster.partition([["n2"], ["n1", "n3", "n4"]])
        cut = ray.get(restarted.info.remote(), timeout=10)["faults"]
        assert cut == cluster._faults.to_wire() and cut != dynaray.faults.Faults().to_wire()
        cluster.heal()
        assert ray.get(restarted.info.remote(), timeout=10)["faults"] == cluster._faults.to_wire()
        wait_for(lambda: attached.status()["n2"] == "up", what="n2 back after the heal")
        # A node that the restart's update missed (cut off at the time) held n2's dead actor:
        # it looks the new one up by name, or it could never reach n2 again.
        ray.get(attached._handle("n1").update_peer.remote("n2", stale), timeout=10)
        wait_for(
            lambda: attached.info()["n1"]["peer_actors"]["n2"] == restarted._actor_id.hex(),
            what="n1 calling n2's new actor",
        )

        # Machines with disks of their own (the scan's answer stubbed, as in the test
        # below): n2 starts on the one free machine that holds its directory, the later
        # of the two free ones; on the machine of another node, it does not start at all.
        attached.kill("n2")
        homes = {node: i["ray_node"] for node, i in attached.info().items()}
        free = sorted(set(kvnode_machines()) - set(homes.values()))
        assert len(free) == 2

        def directories(n2_on: str):
            held = {m: {} for m in kvnode_machines()}
            for node, home in {**homes, "n2": n2_on}.items():
                held[home][node] = {"file": [1, 2, 3], "ring": None}
            return lambda root: held

        monkeypatch.setattr(dynaray.cluster, "_directories_on_machines", directories(homes["n1"]))
        with pytest.raises(dynaray.DynarayError, match="the machine of node 'n1'"):
            dynaray.Cluster.attach("att").restart("n2")
        assert dynaray.Cluster.attach("att").nodes() == ["n1", "n2", "n3", "n4"]
        assert "n2" not in dynaray.cluster._named_nodes("att")  # nothing started
        monkeypatch.setattr(dynaray.cluster, "_directories_on_machines", directories(free[-1]))
        third = dynaray.Cluster.attach("att")
        third.restart("n2")
        assert third.info()["n2"]["ray_node"] == free[-1]
        monkeypatch.undo()

        cluster.kill("n3")
        again = dynaray.Cluster.attach("att")
        again.forget_node("n3")  # lost for good: the others restore N copies
        assert again.nodes() == ["n1", "n2", "n4"]
        assert sorted(again.info()) == ["n1", "n2", "n4"]
        assert all("n3" not in owners(again, f"k{i}")[:3] for i in range(20))
        fresh = again.client()
        assert [fresh.get(f"k{i}", r=3).value for i in range(20)] == [f"v{i}" for i in range(20)]
        joined = again.add_node()  # through another handle: the first client learns of it
        newcomer = dynaray.cluster._named_nodes("att")[joined]
        wait_for(lambda: uses(client, joined, newcomer), what="the client using the newcomer")
    finally:
        cluster.shutdown()  # every node of the store, those restarted by other handles too
    wait_for(lambda: dynaray.cluster._named_nodes("att") == {}, what="every node stopped")


def test_a_stopped_store_starts_again_on_the_machines_that_hold_its_directories(
    machines, tmp_path, monkeypatch
):
    data = str(tmp_path / "data")
    first = dynaray.start(nodes=3, data_dir=data, node_options=FAST, partitions=64)
    try:
        homes = {node: i["ray_node"] for node, i in first.info().items()}
        client = first.client()
        for i in range(20):
            client.put(f"k{i}", None, f"v{i}")
    finally:
        first.shutdown()

    # These machines share one disk, so each sees every directory: the store may start
    # each node anywhere (shared storage), and finds its data.
    seen = dynaray.cluster._directories_on_machines(data)
    files = {m: {node: d["file"] for node, d in dirs.items()} for m, dirs in seen.items()}
    assert all(sorted(dirs) == ["n1", "n2", "n3"] for dirs in files.values())
    assert len({str(dirs) for dirs in files.values()}) == 1  # the same files, seen from each
    assert dynaray.cluster.homes_for(["n1", "n2", "n3"], files) == {}
    assert dynaray.cluster.members_for(3, seen) == (["n1", "n2", "n3"], False)  # as kept

    # As machines with disks of their own, where each directory is on one machine: n1's
    # on the machine n2 had, and so on round. Each node must start where its directory is.
    moved = {"n1": homes["n2"], "n2": homes["n3"], "n3": homes["n1"]}
    holding = {m: {n: seen[m][n] for n, home in moved.items() if home == m} for m in seen}
    monkeypatch.setattr(dynaray.cluster, "_directories_on_machines", lambda root: holding)
    again = dynaray.start(nodes=3, data_dir=data, node_options=FAST, partitions=64)
    try:
        assert {node: i["ray_node"] for node, i in again.info().items()} == moved
        client = again.client()
        assert [client.get(f"k{i}").value for i in range(20)] == [f"v{i}" for i in range(20)]
    finally:
        again.shutdown()

    # n3's machine is not up (or its disk is gone): nothing starts until told which.
    without_n3 = {m: {n: f for n, f in dirs.items() if n != "n3"} for m, dirs in holding.items()}
    monkeypatch.setattr(dynaray.cluster, "_directories_on_machines", lambda root: without_n3)
    with pytest.raises(dynaray.DynarayError, match=r"directories of n3; nothing was started"):
        dynaray.start(nodes=3, data_dir=data, node_options=FAST, partitions=64)
    assert not dynaray.cluster._named_nodes(dynaray.cluster.DEFAULT_STORE)
    shutil.rmtree(os.path.join(data, "n3"))  # lost for good
    lost = dynaray.start(nodes=3, data_dir=data, node_options=FAST, partitions=64, empty=["n3"])
    try:
        assert lost.info()["n3"]["actor"].startswith("n3@")  # empty: a life of its own
        client = lost.client()
        assert [client.get(f"k{i}").value for i in range(20)] == [f"v{i}" for i in range(20)]
    finally:
        lost.shutdown()


def test_a_start_refused_when_the_machines_that_hold_the_store_are_not_there(machines, tmp_path):
    data = str(tmp_path / "data")
    first = dynaray.start(nodes=3, data_dir=data, node_options=FAST, partitions=64, store="m")
    try:
        # Another store wants more machines than the first leaves free: refused at once.
        taken = len(kvnode_machines()) - 3 + 1
        with pytest.raises(
            dynaray.DynarayError, match=r"only \d+ of .* are free: nodes of store\(s\) 'm'"
        ):
            dynaray.start(nodes=taken, n=1, r=1, w=1, node_options=FAST, store="other")
        assert not dynaray.cluster._named_nodes("other")
    finally:
        first.shutdown()
    # After a full stop, no machine of the store's has joined Ray again: it is not taken
    # for a new store (its note on this machine says there was one).
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            dynaray.cluster,
            "_directories_on_machines",
            lambda root: {m: {} for m in kvnode_machines()},
        )
        with pytest.raises(dynaray.DynarayError, match="machines with 'kvnode' in the Ray"):
            dynaray.start(nodes=3, data_dir=data, node_options=FAST, partitions=64, store="m")
    assert not dynaray.cluster._named_nodes("m")


def test_the_nodes_of_a_restarted_store_are_those_of_the_ring_it_kept(caplog):
    from dynaray.ring import Ring

    members_for = dynaray.cluster.members_for
    old = Ring.create(["n1", "n2", "n3", "n4"], 16)
    new = old.with_node("n5").without_node("n2")

    def kept(ring: Ring | None) -> dict:
        return {"file": [1, 2, 3], "ring": ring.to_wire() if ring else None, "n": 3}

    # No directory: a new store of n1..nN. Directories without a ring: the nodes may have
    # written, so none of them is new.
    assert members_for(3, {}) == (["n1", "n2", "n3"], True)
    assert members_for(3, {"a": {}, "b": {}}) == (["n1", "n2", "n3"], True)
    assert members_for(3, {"a": {"n1": kept(None)}}) == (["n1", "n2", "n3"], False)
    # The newest ring wins, wherever it was found; n2 left, so its directory stays shut.
    found = {"a": {"n1": kept(new), "n2": kept(old)}, "b": {"n3": kept(old), "n5": kept(new)}}
    with caplog.at_level("INFO", logger="dynaray.cluster"):
        assert members_for(4, found) == (["n1", "n3", "n4", "n5"], False)
    assert "not starting n2: they left the store" in caplog.text
    with pytest.raises(
        dynaray.DynarayError, match=r"4 nodes \(n1, n3, n4, n5\); start it with nodes=4"
    ):
        members_for(5, found)
    # Without a number of nodes: 5 for a new store, the kept ring's for one started again.
    assert members_for(None, {}) == (["n1", "n2", "n3", "n4", "n5"], True)
    assert members_for(None, found) == (["n1", "n3", "n4", "n5"], False)
    with pytest.raises(dynaray.DynarayError, match="no ring.*nodes="):
        members_for(None, {"a": {"n1": kept(None)}})  # how many it had is not known
    # Another replication factor is refused before any node starts (nothing is written).
    assert members_for(4, found, 3) == (["n1", "n3", "n4", "n5"], False)
    with pytest.raises(ValueError, match="holds a store with n=3; start it with n=3"):
        members_for(4, found, 2)
    for broken in (
        {"file": [1], "ring": {"v": 99}},
        {"file": [1], "ring": None, "error": "Error: not an LMDB environment"},
    ):
        with pytest.raises(dynaray.DynarayError, match="the directory of node n1 cannot be read"):
            members_for(4, {"a": {"n1": broken, "n3": kept(new)}})


def test_machines_for_a_restarted_store():
    homes_for = dynaray.cluster.homes_for
    nodes = ["n1", "n2", "n3"]

    def on(*names: str, copy: int = 0) -> dict:  # directories, by fingerprint
        return {name: [name, copy] for name in names}

    # Directories on machines of their own: each node goes back to its machine.
    assert homes_for(nodes, {"a": on("n1"), "b": on("n2", "x"), "c": {}, "d": on("n3")}) == {
        "n1": "a",
        "n2": "b",
        "n3": "d",
    }
    # Nowhere yet (a new store) or the same files everywhere (shared storage): anywhere.
    assert homes_for(nodes, {"a": {}, "b": {}}) == {}
    assert homes_for(nodes, {"a": on(*nodes), "b": on(*nodes)}) == {}
    assert homes_for(nodes, {"a": on(*nodes)}) == {}  # one machine: nothing to choose
    # Copies that differ, on two machines or on all of them: a person must choose.
    for holding in (
        {"a": on("n2"), "b": on("n2", copy=1), "c": {}},
        {"a": on("n1", "n2"), "b": on("n1", "n2", copy=1)},  # two machines, one swap
    ):
        with pytest.raises(dynaray.DynarayError, match="in different copies"):
            homes_for(nodes, holding)
    # The same file on some machines but not all: storage not mounted everywhere.
    with pytest.raises(dynaray.DynarayError, match="is on 2 of 3 machines"):
        homes_for(nodes, {"a": on(*nodes), "b": on(*nodes), "c": {}})
    with pytest.raises(dynaray.DynarayError, match="directories of nodes n1, n3"):
        homes_for(nodes, {"a": on("n1", "n3"), "b": on("n2")})
    # A node of a store with data whose directory no running machine holds: its machine
    # may be starting, so nothing starts unless the node is named as lost for good.
    holding = {"a": on("n1"), "b": on("n2"), "c": {}}
    with pytest.raises(dynaray.DynarayError, match=r"directories of n3; nothing was started"):
        homes_for(nodes, holding)
    assert homes_for(nodes, holding, empty=["n3"]) == {"n1": "a", "n2": "b"}
    with pytest.raises(dynaray.DynarayError, match="are on running machines"):
        homes_for(nodes, holding, empty=["n2", "n3"])
    with pytest.raises(dynaray.DynarayError, match="empty names n9, not nodes"):
        homes_for(nodes, holding, empty=["n3", "n9"])
    # Checked before Ray is touched: a single name, or a store with no data directory.
    with pytest.raises(TypeError, match=r"e.g. empty=\['n3'\]"):
        dynaray.start(nodes=3, data_dir="/nonexistent", empty="n3")
    with pytest.raises(ValueError, match="this start has no data_dir"):
        dynaray.start(nodes=3, empty=["n3"])


def test_up_takes_several_empty_nodes():
    from dynaray.cli import build_parser

    args = build_parser().parse_args(["up", "--empty", "n3", "--empty", "n4"])
    assert args.empty == ["n3", "n4"]
    assert build_parser().parse_args(["up"]).empty is None


def test_machines_held_by_a_node_out_of_the_ring_or_of_another_store_are_not_free(monkeypatch):
    """A leave cut short (its hints not all passed on) leaves the node running out of the
    ring, holding its machine's kvnode, and another store's node holds its machine's: a
    node added or moved there could never be scheduled (its start timed out after
    minutes). No Ray here: the handle's calls are answered by stand-ins."""
    from dynaray import cluster as cluster_module
    from dynaray.cluster import Cluster

    monkeypatch.setattr(cluster_module, "_machines_of_other_stores", lambda store: {"m5": "b/n1"})

    handle = object.__new__(Cluster)
    handle._shut, handle.store = False, "a"
    handle._members = ["n1", "n2"]
    handle._handles = {"n1": object(), "n2": object(), "n3": object()}  # n3 left, runs
    handle._homes = {"n1": ("m1", "/d/n1"), "n2": ("m2", "/d/n2")}
    where = {n: {"ray_node": f"m{n[1]}", "path": f"/d/{n}"} for n in ("n1", "n2", "n3")}
    handle._ask = lambda method, *args, nodes=None, timeout=10.0: {n: where[n] for n in nodes}
    holding = {"m1": {"n1": []}, "m2": {"n2": []}, "m3": {"n3": []}, "m4": {}, "m5": {}}
    free, kept = handle._free_machines("n4", holding, {"n1": object(), "n2": object()})
    assert free == ["m4"]
    assert kept == {"m1": "n1", "m2": "n2", "m3": "n3", "m5": "b/n1"}


def test_a_node_added_to_a_store_is_not_placed_on_another_stores_machine(machines):
    """Two stores on every machine there is: none is free, which add_node says at once (it
    picked a machine of the other store and timed out after minutes)."""
    others = len(kvnode_machines()) - 2  # (earlier tests added machines)
    a = dynaray.start(nodes=2, n=2, r=1, w=1, node_options=FAST, partitions=16, store="a")
    try:
        b = dynaray.start(
            nodes=others, n=min(others, 2), r=1, w=1, node_options=FAST, partitions=16, store="b"
        )
        try:
            held = dynaray.cluster._machines_of_other_stores("a")
            assert sorted(held.values()) == [f"b/n{i}" for i in range(1, others + 1)]
            assert set(held) == {info["ray_node"] for info in b.info().values()}
            with pytest.raises(dynaray.DynarayError, match="runs, or is kept for, a store node"):
                a.add_node()
            assert a.nodes() == ["n1", "n2"]
        finally:
            b.shutdown()
    finally:
        a.shutdown()
