"""Permanent failures on real actors: anti-entropy alone, joins and leaves under load, loss."""

from __future__ import annotations

import os
import shutil
import threading

import lmdb
import pytest

import dynaray
from dynaray.storage import Store
from tests.conftest import FAST, all_see_all_up, wait_for
from tests.test_failures import owners

pytestmark = pytest.mark.timeout(300)

# Only anti-entropy may repair: no read repair, no hints, no background rounds.
ALONE = {**FAST, "read_repair": False, "sloppy_quorum": False, "anti_entropy_interval": None}


def replicas_agree(cluster, key) -> dict:
    state = cluster.replica_state(key)
    expected = set(owners(cluster, key)[:3])
    assert set(state) == expected, (key, state)
    values = [sorted(map(repr, v)) for v in state.values()]
    assert all(v == values[0] for v in values), (key, state)
    return state


def roots_agree(cluster) -> bool:
    by_range: dict[int, set] = {}
    for roots in cluster.merkle_roots().values():
        for partition, root in roots.items():
            by_range.setdefault(partition, set()).add(root)
    return all(len(r) == 1 for r in by_range.values())


def test_anti_entropy_alone_converges_diverged_replicas(ray_session):
    cluster = dynaray.start(nodes=5, node_options=ALONE, partitions=32)
    try:
        client = cluster.client()
        for i in range(60):
            client.put(f"k{i}", None, f"v{i}-0", w=3)
        assert roots_agree(cluster)

        cluster.kill("n3")
        for i in range(0, 60, 2):  # n3 misses these updates: no hints, no read repair
            res = client.get(f"k{i}")
            client.put(f"k{i}", res.context, f"v{i}-1")
        for i in range(60, 80):
            client.put(f"k{i}", None, f"v{i}-new")
        cluster.restart("n3")

        # Concurrent writes to one key on the two sides of a partition: a key with owners
        # on both (a strict quorum has no stand-ins, and a side with no owner of the key
        # could not take the write).
        left, right = ["n1", "n2"], ["n3", "n4", "n5"]
        both = next(
            key
            for key in (f"both-{i}" for i in range(1000))
            if {*left} & {*owners(cluster, key)[:3]} and {*right} & {*owners(cluster, key)[:3]}
        )
        cluster.partition([left, right])
        cluster.client(nodes=left).put(both, None, "left", w=1)
        cluster.client(nodes=right).put(both, None, "right", w=1)
        cluster.heal()
        wait_for(lambda: all_see_all_up(cluster), what="every node seeing every node up")
        assert sum(cluster.hints().values()) == 0  # strict quorum: no node keeps hints
        assert not roots_agree(cluster)

        figures = cluster.anti_entropy()
        assert figures["keys_repaired"] > 0
        assert figures["ranges_compared"] > figures["ranges_in_sync"]
        assert sum(cluster.hints().values()) == 0
        assert roots_agree(cluster)
        for i in range(80):
            state = replicas_agree(cluster, f"k{i}")
            expected = f"v{i}-1" if i < 60 and i % 2 == 0 else f"v{i}-0"
            expected = f"v{i}-new" if i >= 60 else expected
            assert all(v == [expected] for v in state.values()), (i, state)
        state = replicas_agree(cluster, both)
        assert all(sorted(v) == ["left", "right"] for v in state.values())
        assert sorted(client.get(both).values) == ["left", "right"]

        again = cluster.anti_entropy()  # a second round finds nothing to do
        assert again["keys_repaired"] == 0
        assert again["ranges_in_sync"] == again["ranges_compared"]
    finally:
        cluster.shutdown()


class Load:
    """A writer and a reader running against the store while the ring changes."""

    def __init__(self, client: dynaray.Client) -> None:
        self.client = client
        self.written: dict[str, str] = {}
        self.missing: list[str] = []
        self.errors: list[BaseException] = []
        self.reads = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=f) for f in (self._write, self._read)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _write(self) -> None:
        i = 0
        while not self._stop.is_set():
            key = f"load-{i}"
            try:
                self.client.put(key, None, f"value-{i}")
                self.written[key] = f"value-{i}"
            except dynaray.DynarayError as exc:
                self.errors.append(exc)
            i += 1

    def _read(self) -> None:
        i = 0
        while not self._stop.is_set():
            keys = list(self.written)
            if not keys:
                continue
            key = keys[i % len(keys)]
            try:
                if self.client.get(key).values != [self.written[key]]:
                    self.missing.append(key)
                self.reads += 1
            except dynaray.DynarayError as exc:
                self.errors.append(exc)
            i += 1


@pytest.fixture
def loaded(ray_session):
    cluster = dynaray.start(nodes=5, node_options=FAST, partitions=32)
    client = cluster.client()
    for i in range(100):
        client.put(f"pre-{i}", None, i)
    yield cluster, client
    cluster.shutdown()


def _all_on_owners(cluster, client, keys: dict) -> None:
    for key, value in keys.items():
        state = cluster.replica_state(key)
        assert set(state) == set(owners(cluster, key)[:3]), (key, state)
        assert all(v == [value] for v in state.values()), (key, state)


def test_read_repair_fixes_the_stale_replicas_a_batch_of_gets_sees(ray_session):
    # No hints and no anti-entropy: only read repair can bring n3 up to date. Every read
    # asks all N replicas, as the paper's do (by default only some reads ask them all).
    options = {**ALONE, "read_repair": True, "read_repair_chance": 1.0}
    cluster = dynaray.start(nodes=5, node_options=options, partitions=32, store="repair")
    try:
        client = cluster.client()
        keys = [f"rr{i}" for i in range(40)]
        client.put_many({key: (None, "old") for key in keys}, w=3)
        cluster.kill("n3")
        current = client.get_many(keys)
        assert all(
            isinstance(ctx, dynaray.Context)
            for ctx in client.put_many(
                {key: (current[key].context, "new") for key in keys}
            ).values()
        )
        cluster.restart("n3")
        wait_for(lambda: cluster.status()["n3"] == "up", what="n3 up")
        stale = [key for key in keys if cluster.replica_state(key).get("n3") == ["old"]]
        assert stale, "n3 owns some of the keys and missed their update"
        assert all(r.value == "new" for r in client.get_many(stale).values())
        wait_for(
            lambda: all(cluster.replica_state(key)["n3"] == ["new"] for key in stale),
            what="stale copies on n3 repaired by the reads",
        )
    finally:
        cluster.shutdown()


def test_reads_and_repairs_from_an_old_ring_never_use_a_copy_outside_the_owners(loaded):
    import ray

    from dynaray import codec, reads, records

    cluster, client = loaded
    key = "repair-outside"
    b, k = codec.DEFAULT_BUCKET.encode(), key.encode()
    client.get(key)  # the client has the ring
    partition, segment = client.routing.ring.locate(codec.hash_input(b, k))
    dkey = codec.data_key(partition, segment, b, k)
    record = records.encode(
        records.update(None, ["siblings", [], codec.encode_value("v")], "someone", 1)
    )
    keepers, outsider = owners(cluster, key)[:3], owners(cluster, key)[3]
    handles = cluster._handles
    # As a repairer whose ring still named the outsider an owner would send it:
    assert ray.get(handles[outsider].replica_repair.remote("test", [(dkey, record, None)])) == 0
    assert ray.get(handles[keepers[0]].replica_repair.remote("test", [(dkey, record, None)])) == 1
    assert set(cluster.replica_state(key)) == {keepers[0]}
    # Nor does a read from an old ring get the outsider's copy (it may miss newer writes).
    [answer] = ray.get(handles[outsider].replica_get.remote("test", [(dkey, None)]))
    assert answer == reads.NOT_MINE
    [answer] = ray.get(handles[keepers[0]].replica_get.remote("test", [(dkey, None)]))
    assert records.same_encoded(answer, record)


def test_join_under_load(loaded):
    cluster, client = loaded
    progress = []
    with Load(client) as load:
        wait_for(lambda: len(load.written) > 20, what="writes before the join")
        new = cluster.add_node(progress=lambda pending, moved: progress.append((pending, moved)))
        wait_for(lambda: len(load.written) > len(progress) + 20, what="writes after the join")
    assert new == "n6" and "n6" in cluster.nodes()
    assert not load.errors, load.errors[:3]
    assert not load.missing, load.missing[:5]
    assert load.reads > 0
    assert progress and progress[-1][0] == 0 and cluster.last_change["keys_received"] > 0
    _all_on_owners(cluster, client, {f"pre-{i}": i for i in range(100)})
    # A write that raced the ring change reaches its last new owner by anti-entropy.
    cluster.anti_entropy()
    wait_for(lambda: _settled(cluster, client, load.written), what="load keys on owners")


def test_leave_under_load(loaded):
    cluster, client = loaded
    with Load(client) as load:
        wait_for(lambda: len(load.written) > 20, what="writes before the leave")
        cluster.remove_node("n2")
        wait_for(lambda: len(load.written) > 60, what="writes after the leave")
    assert "n2" not in cluster.nodes()
    assert not load.errors, load.errors[:3]
    assert not load.missing, load.missing[:5]
    _all_on_owners(cluster, client, {f"pre-{i}": i for i in range(100)})
    # A write that raced the ring change reaches its last new owner by anti-entropy.
    cluster.anti_entropy()
    wait_for(lambda: _settled(cluster, client, load.written), what="load keys on owners")


def test_forget_a_lost_node_restores_n_copies(loaded):
    cluster, client = loaded
    cluster.kill("n4")
    with pytest.raises(ValueError, match="still running"):
        cluster.forget_node("n3")
    cluster.forget_node("n4")
    assert "n4" not in cluster.nodes()
    _all_on_owners(cluster, client, {f"pre-{i}": i for i in range(100)})


def test_membership_changes_check_their_input(loaded):
    cluster, _ = loaded
    with pytest.raises(ValueError, match="unknown node"):
        cluster.remove_node("n42")
    with pytest.raises(ValueError, match="not running"):
        cluster.kill("n5")
        cluster.remove_node("n5")


def _three_nodes_with_keys(store: str) -> tuple:
    """A 3-node store (no background repair) holding k0..k19 on every node, and a client."""
    cluster = dynaray.start(nodes=3, node_options=ALONE, partitions=16, store=store)
    client = cluster.client()
    for i in range(20):
        client.put(f"k{i}", None, i, w=3)
    return cluster, client


def test_a_join_whose_node_stops_answering_drops_no_old_copy(ray_session, monkeypatch):
    """Ranges are dropped only once every node of the new ring said it holds what it
    gained: here the joiner stops answering (its answers are lost), so the change stops
    with an error that says so, and every key keeps its old copies."""
    from dynaray import cluster as cluster_module

    cluster, client = _three_nodes_with_keys("silent-joiner")
    try:
        monkeypatch.setattr(cluster_module, "HANDOFF_SILENCE", 1.0)
        asked = cluster._ask
        dropped: list = []

        def ask(method, *args, nodes=None, timeout=10.0):
            answers = asked(method, *args, nodes=nodes, timeout=timeout)
            if method == "handoff_status":
                answers.pop("n4", None)  # the joiner's answers never arrive
            if method == "drop_foreign":
                dropped.append(answers)
            return answers

        monkeypatch.setattr(cluster, "_ask", ask)
        with pytest.raises(dynaray.DynarayError, match="n4 stopped answering"):
            cluster.add_node()
        assert dropped == []
        monkeypatch.setattr(cluster, "_ask", asked)
        for i in range(20):  # the three old nodes still hold every key
            assert {"n1", "n2", "n3"} <= set(cluster.replica_state(f"k{i}"))
            assert client.get(f"k{i}").value == i
    finally:
        cluster.shutdown()


def _four_nodes_one_silent(store: str, monkeypatch) -> tuple:
    """A 4-node store holding k0..k19 on three nodes each, whose n1's handoff answers
    never reach this driver (its changes stop after HANDOFF_SILENCE, 1 s here); the
    cluster, a client, and the driver's own _ask, to put back."""
    from dynaray import cluster as cluster_module

    cluster = dynaray.start(nodes=4, node_options=ALONE, partitions=16, store=store)
    client = cluster.client()
    for i in range(20):
        client.put(f"k{i}", None, i, w=3)
    monkeypatch.setattr(cluster_module, "HANDOFF_SILENCE", 1.0)
    asked = cluster._ask

    def ask(method, *args, nodes=None, timeout=10.0):
        answers = asked(method, *args, nodes=nodes, timeout=timeout)
        if method == "handoff_status":
            answers.pop("n1", None)
        return answers

    monkeypatch.setattr(cluster, "_ask", ask)
    return cluster, client, asked


def test_a_leave_cut_short_while_ranges_are_handed_over_says_to_finish_it(ray_session, monkeypatch):
    """A leave whose handoff stops (a node's answers are lost) has changed the ring, and
    the leaving node keeps running: the error said only to restart the silent node, not
    that remove_node again finishes the leave."""
    cluster, client, asked = _four_nodes_one_silent("cut-leave", monkeypatch)
    try:
        with pytest.raises(dynaray.DynarayError, match=r"n4' has left the ring and keeps runn"):
            cluster.remove_node("n4")
        monkeypatch.setattr(cluster, "_ask", asked)
        assert "n4" not in cluster.nodes() and cluster._ask("ping", nodes=["n4"])
        cluster.remove_node("n4")  # finishes it
        assert not cluster._ask("ping", nodes=["n4"])
        for i in range(20):
            assert client.get(f"k{i}").value == i
    finally:
        cluster.shutdown()


def test_a_forget_cut_short_while_ranges_are_handed_over_is_finished_by_a_second(
    ray_session, monkeypatch
):
    """A forget_node whose handoff stopped (a node's answers are lost) has taken the node
    out of the ring: a second forget_node said "unknown node", and the Router kept
    listing it. It now finishes the change."""
    import ray

    cluster, client, asked = _four_nodes_one_silent("cut-forget", monkeypatch)
    try:
        cluster.kill("n4")  # (only the handoff answers of n1 are lost)
        with pytest.raises(dynaray.DynarayError, match=r"n4' is out of the ring, but"):
            cluster.forget_node("n4")
        monkeypatch.setattr(cluster, "_ask", asked)
        assert "n4" not in cluster.nodes()
        cluster.forget_node("n4")  # finishes it
        layout = ray.get(cluster._router.store_layout.remote())
        assert "n4" not in layout["members"]
        for i in range(20):
            assert client.get(f"k{i}").value == i
    finally:
        cluster.shutdown()


def test_a_join_waits_for_a_node_whose_configure_call_was_lost(ray_session, monkeypatch):
    """The joiner's configure call timed out (here: never sent), so it had no ring and
    answered "nothing pending": the change dropped the old copies at once, and the joiner
    served ranges it never took over. It now counts as pending until it has the ring,
    which the driver gives it again."""
    from dynaray import cluster as cluster_module

    cluster, client = _three_nodes_with_keys("late-joiner")
    try:
        monkeypatch.setattr(cluster_module, "RING_RESEND", 0.5)
        asked = cluster._ask
        lost: list = []

        def ask(method, *args, nodes=None, timeout=10.0):
            if method == "configure" and not lost and nodes and "n4" in nodes:
                lost.append(True)  # the first one to the joiner never arrives
                nodes = [n for n in nodes if n != "n4"]
            return asked(method, *args, nodes=nodes, timeout=timeout)

        monkeypatch.setattr(cluster, "_ask", ask)
        assert cluster.add_node() == "n4"
        monkeypatch.setattr(cluster, "_ask", asked)
        assert lost
        for i in range(20):  # every owner of the new ring holds every key it owns
            assert set(owners(cluster, f"k{i}")[:3]) <= set(cluster.replica_state(f"k{i}"))
    finally:
        cluster.shutdown()


def test_a_join_waits_for_a_node_another_driver_restarted_during_it(ray_session, monkeypatch):
    """A node killed and restarted by another driver while ranges are handed over is a new
    actor: the change polled the old, dead one and gave up after HANDOFF_SILENCE. It now
    looks a silent node up by name again, and finishes."""
    from dynaray import cluster as cluster_module

    cluster, client = _three_nodes_with_keys("restarted-elsewhere")
    try:
        monkeypatch.setattr(cluster_module, "RING_RESEND", 0.5)
        monkeypatch.setattr(cluster_module, "HANDOFF_SILENCE", 20.0)
        asked = cluster._ask
        polls: list = []

        def ask(method, *args, nodes=None, timeout=10.0):
            if method == "handoff_status" and nodes and "n4" in nodes:
                polls.append(method)
                if len(polls) == 2:  # the first poll of the change, after the new ring
                    other = dynaray.Cluster.attach("restarted-elsewhere")
                    other.kill("n2")
                    other.restart("n2")
            return asked(method, *args, nodes=nodes, timeout=timeout)

        monkeypatch.setattr(cluster, "_ask", ask)
        assert cluster.add_node() == "n4"
        monkeypatch.setattr(cluster, "_ask", asked)
        assert len(polls) > 2
        for i in range(20):  # every owner of the new ring holds every key it owns
            assert set(owners(cluster, f"k{i}")[:3]) <= set(cluster.replica_state(f"k{i}"))
            assert client.get(f"k{i}").value == i
    finally:
        cluster.shutdown()


def test_an_add_node_that_stops_before_the_ring_changes_leaves_no_node_behind(
    ray_session, monkeypatch
):
    """A join that fails before any node has the new ring (here: telling the Router actor
    failed) destroys the node it made, rather than leaving it running outside the ring."""
    import ray

    from dynaray.names import NAMESPACE, node_name

    cluster = dynaray.start(nodes=3, node_options=ALONE, partitions=16, store="cut-join")
    try:
        tell = cluster._tell_routers

        def fail(node, handle):
            raise RuntimeError("the Router actor could not be told")

        monkeypatch.setattr(cluster, "_tell_routers", fail)
        with pytest.raises(RuntimeError, match="Router actor could not be told"):
            cluster.add_node()
        assert cluster.nodes() == ["n1", "n2", "n3"]

        def gone() -> bool:
            try:
                ray.get_actor(node_name("cut-join", "n4"), namespace=NAMESPACE)
            except ValueError:
                return True
            return False

        wait_for(gone, what="the node made by the failed add_node to be gone")
        monkeypatch.setattr(cluster, "_tell_routers", tell)
        assert cluster.add_node() == "n4"  # it held nothing: its id is free
        cluster.client().put("k", None, "v", w=3)
        assert len(cluster.replica_state("k")) == 3
    finally:
        cluster.shutdown()


def test_a_leaving_node_passes_on_its_hints_and_a_second_remove_finishes_a_cut_leave(
    ray_session, monkeypatch
):
    """remove_node stops a node only once the hints it holds are with other nodes: n2
    holds one for n5 and cannot reach n5, so it hands it to another node, which delivers
    it (no anti-entropy, no read repair here). A leave whose hints were not all passed on
    leaves the node running, out of the ring; remove_node again finishes it."""
    import ray

    from dynaray import codec, records

    options = {**FAST, "read_repair": False, "anti_entropy_interval": None}
    cluster = dynaray.start(nodes=5, node_options=options, partitions=16, store="hint-passer")
    try:
        client = cluster.client()
        client.get("probe")  # the client has the ring
        key = next(
            k
            for k in (f"k{i}" for i in range(1000))
            if "n5" in owners(cluster, k)[:3] and "n2" not in owners(cluster, k)[:3]
        )
        b, k = codec.DEFAULT_BUCKET.encode(), key.encode()
        partition, segment = client.routing.ring.locate(codec.hash_input(b, k))
        dkey = codec.data_key(partition, segment, b, k)
        op = ["siblings", [], codec.encode_value("hinted")]
        record = records.encode(records.update(None, op, "someone", 1))
        cluster.set_link("n2", "n5", drop=1.0)
        ray.get(cluster._handles["n2"].replica_put.remote("test", [(dkey, record, "n5")]))
        assert cluster.hints()["n2"] == 1

        asked = cluster._ask

        def ask(method, *args, nodes=None, timeout=10.0):
            if method == "pass_on_hints":
                return {"n2": 1}  # as if no node had taken it
            return asked(method, *args, nodes=nodes, timeout=timeout)

        monkeypatch.setattr(cluster, "_ask", ask)
        with pytest.raises(dynaray.DynarayError, match="again .* finishes the leave"):
            cluster.remove_node("n2")
        monkeypatch.setattr(cluster, "_ask", asked)
        assert "n2" not in cluster.nodes()
        assert cluster._ask("ping", nodes=["n2"]) == {"n2": "n2"}
        # A handle attached now sees it the same way: running, out of the ring (it listed
        # n2 as a node, shown down, and gave a node it restarted no handle of it).
        attached = dynaray.Cluster.attach("hint-passer")
        assert "n2" not in attached.nodes() and "n2" not in attached.status()
        assert set(attached._left_known()) == {"n2"}

        cluster.remove_node("n2")  # finishes the leave
        assert cluster._ask("ping", nodes=["n2"]) == {}
        assert "n2" not in cluster.hints()
        wait_for(lambda: "n5" in cluster.replica_state(key), what="the passed-on hint delivered")
        assert cluster.replica_state(key)["n5"] == ["hinted"]
        assert client.get(key, r=3).value == "hinted"  # only n5 holds it: all three asked
        # Each remove_node released its hold on membership: another change may go ahead.
        assert ray.get(cluster._router.hold_change.remote("next", "add_node", 60.0)) is None
    finally:
        cluster.shutdown()


def test_one_membership_change_at_a_time_whichever_driver_makes_it(loaded):
    """Two changes at once would each make the ring's next version; the second waits."""
    import ray

    cluster, _ = loaded
    router = cluster._router
    assert ray.get(router.hold_change.remote("another driver", "add_node", 60.0)) is None
    before = cluster.nodes()
    try:
        with pytest.raises(dynaray.DynarayError, match=r"another driver .*\(add_node, for"):
            cluster.add_node()
        with pytest.raises(dynaray.DynarayError, match="another driver"):
            cluster.remove_node("n1")
        assert cluster.nodes() == before
    finally:
        ray.get(router.release_change.remote("another driver"))
    # Released (or lapsed): the next change goes ahead, and releases its own hold.
    assert ray.get(router.hold_change.remote("a third", "add_node", 60.0)) is None
    ray.get(router.release_change.remote("a third"))


def test_a_change_whose_hold_lapsed_stops_before_the_nodes_get_its_ring(ray_session, monkeypatch):
    """A driver that stalls past the hold's lease loses it to another driver; when it goes
    on, its change stops before the nodes get its ring (two rings of one version would
    never be agreed on), says why, and leaves no node behind."""
    import time

    import ray

    from dynaray import cluster as cluster_module

    cluster = dynaray.start(nodes=3, node_options=ALONE, partitions=16, store="lapsed")
    router = cluster._router
    lease = 1.0
    monkeypatch.setattr(cluster_module, "CHANGE_LEASE", lease)
    stalled, resumed = threading.Event(), threading.Event()
    take, ask = cluster._take_hold, cluster._ask

    def renewal():  # the renewer thread stalls with the driver
        if stalled.is_set():
            resumed.wait(30)
        return take()

    def stalling_ask(method, *args, nodes=None, timeout=10.0):
        if method == "handoff_status" and not stalled.is_set():  # _reshape's first step
            stalled.set()
            time.sleep(lease * 1.5)  # the driver stalls past its lease...
            taken = ray.get(router.hold_change.remote("another driver", "remove_node", 60.0))
            assert taken is None  # ...and another driver takes the hold
            resumed.set()
            wait_for(lambda: cluster._lapsed is not None, what="the renewer to see the lapse")
        return ask(method, *args, nodes=nodes, timeout=timeout)

    try:
        monkeypatch.setattr(cluster, "_take_hold", renewal)
        monkeypatch.setattr(cluster, "_ask", stalling_ask)
        with pytest.raises(dynaray.DynarayError, match=r"hold lapsed .*nothing was changed"):
            cluster.add_node()
        monkeypatch.setattr(cluster, "_ask", ask)
        assert cluster.nodes() == ["n1", "n2", "n3"]
        assert {d["ring"]["version"] for d in ask("describe").values()} == {1}
    finally:
        ray.get(router.release_change.remote("another driver"))
        cluster.shutdown()


def test_a_store_started_again_keeps_its_quorums_unless_given_others(ray_session, tmp_path):
    kw = {"data_dir": str(tmp_path / "data"), "node_options": FAST, "partitions": 16}
    cluster = dynaray.start(nodes=3, r=1, w=3, store="quorums", **kw)
    cluster.shutdown()
    cluster = dynaray.start(store="quorums", **kw)  # as `dynaray up` does it again
    try:
        config = cluster._ring()[1]
        assert (config["r"], config["w"]) == (1, 3)
    finally:
        cluster.shutdown()
    cluster = dynaray.start(store="quorums", w=2, **kw)
    try:
        config = cluster._ring()[1]
        assert (config["r"], config["w"]) == (1, 2)
    finally:
        cluster.shutdown()


def test_a_one_replica_store_starts_again_with_its_own_quorums(ray_session, tmp_path):
    """n=1 keeps R=W=1: the defaults (2) were checked against n before the kept values
    were read, so `dynaray up -n 1` refused to start it again. A new store given no R or
    W still gets the defaults, and n=1 cannot take them."""
    kw = {"data_dir": str(tmp_path / "data"), "node_options": FAST, "partitions": 16}
    cluster = dynaray.start(nodes=1, n=1, r=1, w=1, store="single", **kw)
    cluster.shutdown()
    cluster = dynaray.start(n=1, store="single", **kw)
    try:
        config = cluster._ring()[1]
        assert (config["r"], config["w"]) == (1, 1)
    finally:
        cluster.shutdown()
    new = {**kw, "data_dir": str(tmp_path / "new")}
    with pytest.raises(ValueError, match="must not exceed n=1"):
        dynaray.start(nodes=1, n=1, store="single-new", **new)
    assert not os.path.exists(new["data_dir"]) or not os.listdir(new["data_dir"])  # refused first
    dynaray.start(nodes=1, n=1, r=1, w=1, store="single-new", **new).shutdown()  # none left


def test_a_store_that_changed_its_nodes_starts_again_and_never_reuses_an_id(ray_session, tmp_path):
    data = str(tmp_path / "data")
    kw = {"data_dir": data, "node_options": FAST, "partitions": 16, "store": "renumbered"}
    cluster = dynaray.start(nodes=4, **kw)
    try:
        client = cluster.client()
        for i in range(30):
            client.put(f"k{i}", None, f"v{i}", w=3)
        assert cluster.add_node() == "n5"
        cluster.remove_node("n5")
        # A newcomer named n5 again would issue dots n5:1, n5:2, ... that the keys' version
        # vectors already cover, so its writes would be dropped as already seen.
        assert cluster.add_node() == "n6"
        cluster.remove_node("n2")
        assert cluster.nodes() == ["n1", "n3", "n4", "n6"]
        kept = bytes(client.get("k0").context)  # as an application keeps one
    finally:
        cluster.shutdown()

    with pytest.raises(dynaray.DynarayError, match=r"store of 4 nodes \(n1, n3, n4, n6\)"):
        dynaray.start(nodes=5, **kw)
    shutil.rmtree(os.path.join(data, "n3"))  # lost while the store was stopped
    # One machine, which is up: a directory missing there is lost; empty= is not needed.
    with pytest.raises(ValueError, match="a store on a Ray cluster without 'kvnode'"):
        dynaray.start(nodes=4, **kw, empty=["n3"])
    again = dynaray.start(nodes=4, **kw)
    try:
        assert again.nodes() == ["n1", "n3", "n4", "n6"]  # not n2, nor n5: they left
        actors = {node: info["actor"] for node, info in again.info().items()}
        assert actors["n3"].startswith("n3@")  # empty: a new life
        assert [actors[n] for n in ("n1", "n4", "n6")] == ["n1", "n4", "n6"]
        client = again.client()
        assert [client.get(f"k{i}").value for i in range(30)] == [f"v{i}" for i in range(30)]
        # The store started again is the same store: a context kept from before still works.
        client.put("k0", kept, "v0 again")
        assert client.get("k0").value == "v0 again"
        # A directory named for the next number (left by a node the ring does not know
        # left, say) is never opened by a newcomer either.
        Store(os.path.join(data, "n7"), "n7", sync=False).close()
        assert again.add_node() == "n8"
        assert again.info()["n8"]["actor"] == "n8"  # an id never used: its own name
    finally:
        again.shutdown()


def test_a_whole_store_comes_back_from_its_backups(ray_session, tmp_path):
    """Disaster recovery: every node's backup (taken while it ran, as docs/operations.md
    does) put on a new disk. Each node sees a copy put back, writes under a new name and
    merges its ranges with the others' before serving reads; nothing acknowledged before
    the backups is lost, and the store takes writes again."""
    kw = {"node_options": FAST, "partitions": 16, "store": "recovered"}
    cluster = dynaray.start(nodes=4, data_dir=str(tmp_path / "data"), **kw)
    backups = tmp_path / "backups"
    try:
        client = cluster.client()
        for i in range(40):
            client.put(f"k{i}", None, f"v{i}", w=3)
        infos = cluster.info()
        assert sorted(infos) == ["n1", "n2", "n3", "n4"]
        # Each backup of its own moment: a key written after n1's backup, before the others'.
        late = next(f"late{i}" for i in range(1000) if "n1" in owners(cluster, f"late{i}")[:3])
        for node, info in sorted(infos.items()):  # n1 first
            if node == "n2":
                client.put(late, None, "between the backups", w=3)
            (backups / node).mkdir(parents=True)
            env = lmdb.open(info["path"], readonly=True, max_dbs=8)
            env.copy(str(backups / node), compact=True)
            env.close()
        client.put("k0", client.get("k0").context, "after the backups", w=3)
    finally:
        cluster.shutdown()

    fresh = tmp_path / "new-disks"
    for node in ("n1", "n2", "n3", "n4"):
        (fresh / node).mkdir(parents=True)
        shutil.copyfile(backups / node / "data.mdb", fresh / node / "data.mdb")
    again = dynaray.start(nodes=4, data_dir=str(fresh), **kw)
    try:
        infos = again.info()
        assert sorted(infos) == ["n1", "n2", "n3", "n4"]
        assert all(i["actor"].startswith(f"{n}@") for n, i in infos.items())
        wait_for(
            lambda: [i["ranges_arriving"] for i in again.info().values()] == [0, 0, 0, 0],
            what="every node merged its ranges back",
        )
        # n1's backup did not have the late key; the merge brought it from the others.
        owning = owners(again, late)[:3]
        assert again.replica_state(late) == {n: ["between the backups"] for n in owning}
        assert sum(s["keys_received"] for s in again._ask("handoff_status").values()) > 0
        client = again.client()
        # The backups' moment: k0 as it was then.
        assert [client.get(f"k{i}").value for i in range(40)] == [f"v{i}" for i in range(40)]
        context = client.put("k1", client.get("k1").context, "new", w=3)
        assert client.get("k1", r=3).values == ["new"] and context is not None
    finally:
        again.shutdown()


def _coordinated_by_n2(cluster, client) -> tuple:
    """A key and a counter (its bucket and key) whose writes n2 coordinates."""
    key = next(f"k{i}" for i in range(1000) if owners(cluster, f"k{i}")[0] == "n2")
    votes = client.bucket("votes", policy="counter")
    counted = next(
        f"c{i}" for i in range(1000) if cluster.preference_list(f"c{i}", "votes")[0] == "n2"
    )
    return key, votes, counted


def test_a_node_back_with_an_empty_disk_never_repeats_its_old_dots(ray_session, tmp_path):
    kw = {"node_options": ALONE, "partitions": 16, "store": "emptied"}
    cluster = dynaray.start(nodes=4, data_dir=str(tmp_path / "data"), **kw)
    try:
        client = cluster.client()
        key, votes, counted = _coordinated_by_n2(cluster, client)
        context = None
        for value in ("v1", "v2", "v3"):  # n2 coordinates: its dots n2:1..n2:3
            context = client.put(key, context, value, w=3)
        for _ in range(3):  # n2's entry of the counter: 3
            votes.increment(counted, w=3)
        path = cluster.info()["n2"]["path"]
        cluster.lose_disk("n2")
        assert not os.path.exists(path)
        # Cut off from its peers, n2 comes back empty and cannot take its ranges over yet.
        cluster.partition([["n2"], ["n1", "n3", "n4"]])
        cluster.restart("n2")
        assert cluster.info()["n2"]["actor"].startswith("n2@")
        assert cluster.info()["n2"]["ranges_arriving"] > 0
        # Writes coordinated by the emptied n2 (the client reaches it): with its old id,
        # the blind write would be dot n2:1 and the increment would count n2's entry from
        # 0, both below what the other replicas hold, and both would vanish in the merge.
        client.put(key, None, "after", w=1)
        votes.increment(counted, w=1)
        # Restarted halfway through its refill, it carries on with it (the mark is on disk).
        cluster.kill("n2")
        cluster.restart("n2")
        assert cluster.info()["n2"]["ranges_arriving"] > 0
        cluster.heal()
        # No read repair, no anti-entropy here: n2 takes its ranges over, as a joiner would.
        wait_for(lambda: cluster.info()["n2"]["ranges_arriving"] == 0, what="n2 refilled")
        assert "v3" in cluster.replica_state(key)["n2"]
        assert sorted(client.get(key, r=3).values) == ["after", "v3"]
        assert votes.get(counted, r=3).value == 4
    finally:
        cluster.shutdown()


def test_a_node_whose_backup_is_put_back_never_repeats_its_dots(ray_session, tmp_path):
    kw = {"node_options": ALONE, "partitions": 16, "store": "restored"}
    cluster = dynaray.start(nodes=4, data_dir=str(tmp_path / "data"), **kw)
    try:
        client = cluster.client()
        key, votes, counted = _coordinated_by_n2(cluster, client)
        context = client.put(key, None, "v1", w=3)  # n2 coordinates: n2:1
        votes.increment(counted, w=3)
        # A backup of the running node, as docs/operations.md takes it.
        path, backup = cluster.info()["n2"]["path"], tmp_path / "backup"
        backup.mkdir()
        env = lmdb.open(path, readonly=True, max_dbs=8)
        env.copy(str(backup), compact=True)
        env.close()
        for value in ("v2", "v3"):  # n2:2, n2:3, on every replica
            context = client.put(key, context, value, w=3)
        votes.increment(counted, w=3)
        votes.increment(counted, w=3)
        cluster.kill("n2")
        shutil.copyfile(backup / "data.mdb", os.path.join(path, "data.mdb"))
        cluster.partition([["n2"], ["n1", "n3", "n4"]])
        cluster.restart("n2")
        info = cluster.info()["n2"]
        assert info["actor"].startswith("n2@")
        # It keeps its (old) data, but merges its ranges back in before serving reads.
        assert cluster.replica_state(key)["n2"] == ["v1"] and info["ranges_arriving"] > 0
        # Writes coordinated by the restored n2: under its old id the blind write would be
        # dot n2:2 and the increment would raise n2's entry to 2, both already covered by
        # what the other replicas hold (n2:3, 3), and both would vanish in the merge.
        client.put(key, None, "after", w=1)
        votes.increment(counted, w=1)
        state = cluster.replica_state(key)
        assert "after" in state["n2"] and not any(
            "after" in v for n, v in state.items() if n != "n2"
        )
        cluster.heal()
        wait_for(lambda: cluster.info()["n2"]["ranges_arriving"] == 0, what="n2 merged back")
        assert sorted(client.get(key, r=3).values) == ["after", "v3"]
        assert votes.get(counted, r=3).value == 4
    finally:
        cluster.shutdown()


def _settled(cluster, client, written: dict) -> bool:
    try:
        _all_on_owners(cluster, client, written)
        return True
    except AssertionError:
        return False


def test_tombstones_are_reaped_only_when_every_replica_has_them_and_grace_passed(ray_session):
    import time

    options = {**ALONE, "tombstone_grace": 4.0}
    cluster = dynaray.start(nodes=4, node_options=options, partitions=16, store="reaper")
    try:
        client = cluster.client()
        ctx = client.put("doomed", None, "v", w=3)
        client.delete("doomed", ctx, w=3)
        client.put("alive", None, "v", w=3)
        assert cluster.anti_entropy()["tombstones_reaped"] == 0  # still within its grace
        assert len(cluster.replica_state("doomed")) == 3  # the tombstone is on all three
        time.sleep(2.0)

        # One owner misses the tombstone of a second key: it must not be reaped.
        # (a key with an owner that does not replicate "doomed", so "doomed" stays reapable)
        outsider = next(n for n in cluster.nodes() if n not in owners(cluster, "doomed")[:3])
        key = next(f"half{i}" for i in range(1000) if outsider in owners(cluster, f"half{i}")[:3])
        half = client.put(key, None, "v", w=3)
        victim = outsider
        cluster.kill(victim)
        client.delete(key, half, w=2)
        time.sleep(4.5)  # both tombstones are past their grace now
        # The victim may hold a hint of any key (it could have stood in for an owner), so
        # while it does not answer nothing is reaped, "doomed" neither.
        assert cluster.anti_entropy()["tombstones_reaped"] == 0
        assert len(cluster.replica_state("doomed")) == 3
        assert len(cluster.replica_state(key)) == 2  # the live owners keep it

        cluster.restart(victim)
        wait_for(lambda: sum(cluster.hints().values()) == 0, what="the victim's hint delivered")
        wait_for(lambda: all_see_all_up(cluster), what="the reaper seeing every node up")
        figures = cluster.anti_entropy()
        assert figures["tombstones_reaped"] >= 3  # "doomed" on its three owners (and "half"
        assert cluster.replica_state("doomed") == {}  # once the victim got its tombstone)
        assert client.get("doomed").values == []
        assert client.get("alive").value == "v"
    finally:
        cluster.shutdown()
