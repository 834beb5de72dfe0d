"""Temporary failures on real actors: killed nodes, partitions, sloppy quorum, hinted handoff."""

from __future__ import annotations

import pytest

import dynaray
from dynaray.verify import fill_disk, free_disk
from tests.conftest import FAST, all_see_all_up, small_disk, wait_for

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def cluster(ray_session):
    c = dynaray.start(nodes=5, n=3, r=2, w=2, node_options=FAST, partitions=64)
    yield c
    c.shutdown()


def owners(cluster: dynaray.Cluster, key: str) -> list[str]:
    """The key's preference list, its N owners first."""
    return cluster.preference_list(key)


def keys_owned_by(cluster, nodes: list[str], count: int, prefix: str) -> list[str]:
    """`count` keys whose N=3 owners include every node in `nodes`."""
    found, i = [], 0
    while len(found) < count:
        key = f"{prefix}-{i}"
        if set(nodes) <= set(owners(cluster, key)[:3]):
            found.append(key)
        i += 1
    return found


def on_owners(cluster, client, key, value) -> bool:
    """The key sits on exactly its three owners, each holding exactly `value`."""
    state = cluster.replica_state(key)
    return set(state) == set(owners(cluster, key)[:3]) and all(v == [value] for v in state.values())


def no_hints(cluster) -> bool:
    hints = cluster.hints()
    return len(hints) == len(cluster.nodes()) and sum(hints.values()) == 0


def test_one_owner_down_writes_succeed_then_hints_drain(cluster):
    client = cluster.client()
    victim = owners(cluster, "probe")[0]
    keys = keys_owned_by(cluster, [victim], 10, "one")
    cluster.kill(victim)
    for key in keys:
        client.put(key, None, f"value-{key}")  # raises if W=2 is not met
    # W=2 answers before the third replica (a fallback holding a hint) has written.
    wait_for(lambda: sum(cluster.hints().values()) >= len(keys), what="a hint per key")
    for key in keys:
        assert client.get(key).value == f"value-{key}"
    wait_for(lambda: cluster.status()[victim] == "down", what=f"{victim} seen down")

    # Its machine is up with its directory: empty=True (for a machine lost with its disk)
    # does not apply, and is refused rather than ignored.
    with pytest.raises(ValueError, match="machine is up"):
        cluster.restart(victim, empty=True)
    cluster.restart(victim)
    wait_for(lambda: cluster.status()[victim] == "up", what=f"{victim} seen up")
    wait_for(lambda: no_hints(cluster), what="every hint delivered")
    for key in keys:
        wait_for(lambda key=key: on_owners(cluster, client, key, f"value-{key}"), what=key)


def test_get_many_routes_around_a_coordinator_that_just_died(cluster):
    client = cluster.client()
    victim = owners(cluster, "probe")[0]
    keys = keys_owned_by(cluster, [victim], 20, "bulkdead")
    # the victim coordinates these keys: it is the first owner of each
    keys = [k for k in keys if owners(cluster, k)[0] == victim] + ["bulkdead-absent"]
    assert len(keys) > 1
    written = client.put_many({k: (None, f"v-{k}") for k in keys[:-1]})
    assert all(isinstance(ctx, dynaray.Context) for ctx in written.values())
    cluster.kill(victim)  # the client still believes it up: its batch call fails
    got = client.get_many(keys)
    assert {k: got[k].values for k in keys} == {
        **{k: [f"v-{k}"] for k in keys[:-1]},
        "bulkdead-absent": [],
    }
    # A blind write that reached a dead coordinator is not repeated (it could apply twice);
    # with the victim now known down, the next batch goes to live coordinators at once.
    again = client.put_many({k: (got[k].context, "next") for k in keys[:-1]})
    assert all(isinstance(ctx, dynaray.Context) for ctx in again.values()), again


def test_a_stand_in_answers_with_a_hint_it_holds_for_another_primary(cluster):
    import ray

    from dynaray import codec, records

    # Coordinators pair down primaries with stand-ins in the order their calls fail, so a
    # reader may ask a stand-in for primary b's copy while it holds the write for a.
    client = cluster.client()
    key = "swapped-hint"
    client.get(key)  # the client has the ring
    b, k = codec.DEFAULT_BUCKET.encode(), key.encode()
    partition, segment = client.routing.ring.locate(codec.hash_input(b, k))
    dkey = codec.data_key(partition, segment, b, k)
    first, second, _, spare = owners(cluster, key)[:4]
    op = ["siblings", [], codec.encode_value("held")]
    record = records.encode(records.update(None, op, "someone", 1))
    handle = cluster._handles[spare]
    ray.get(handle.replica_put.remote("test", [(dkey, record, first)]))
    [raw] = ray.get(handle.replica_get.remote("test", [(dkey, second)]))
    assert raw is not None and records.same_encoded(raw, record)


def test_two_of_three_owners_down_sloppy_quorum(cluster):
    client = cluster.client()
    first = owners(cluster, "probe")
    victims = first[1:3]
    keys = keys_owned_by(cluster, victims, 8, "two")
    for victim in victims:
        cluster.kill(victim)
    for key in keys:
        client.put(key, None, f"v-{key}", w=2)  # one owner plus one fallback
    for key in keys:
        assert client.get(key).value == f"v-{key}"
    wait_for(lambda: sum(cluster.hints().values()) >= 2 * len(keys), what="two hints per key")
    assert not set(victims) & set(cluster.hints())  # dead nodes answer nothing

    for victim in victims:
        cluster.restart(victim)
    wait_for(lambda: no_hints(cluster), what="every hint delivered")
    for key in keys:
        wait_for(lambda key=key: on_owners(cluster, client, key, f"v-{key}"), what=key)


def test_partition_both_sides_write_and_heal_gives_siblings(cluster):
    left, right = ["n1", "n2"], ["n3", "n4", "n5"]
    cluster.partition([left, right])
    on_left = cluster.client(nodes=left)
    on_right = cluster.client(nodes=right)
    written = {}
    for i in range(10):
        on_left.put(f"l{i}", None, f"left-{i}")
        written[f"l{i}"] = f"left-{i}"
        on_right.put(f"r{i}", None, f"right-{i}")
        written[f"r{i}"] = f"right-{i}"
    base = cluster.client()
    base_ctx = None
    # One key written on both sides from the same starting point: concurrent writes.
    on_left.put("cart", base_ctx, ["left-item"])
    on_right.put("cart", base_ctx, ["right-item"])
    assert on_left.get("cart").values == [["left-item"]]
    assert on_right.get("cart").values == [["right-item"]]

    cluster.heal()
    wait_for(lambda: all_see_all_up(cluster), what="every node seeing every node up")
    wait_for(lambda: no_hints(cluster), what="every hint delivered")
    for key, value in written.items():
        assert base.get(key).values == [value], key
    res = base.get("cart")
    assert sorted(res.values) == [["left-item"], ["right-item"]]
    base.put("cart", res.context, ["left-item", "right-item"])
    assert base.get("cart").value == ["left-item", "right-item"]


def test_write_with_no_stand_in_left_keeps_a_hint_on_the_coordinator(cluster):
    left, right = ["n1", "n2"], ["n3", "n4", "n5"]
    keys = keys_owned_by(cluster, left, 3, "orphan")  # two owners on the left, one on the right
    cluster.partition([left, right])

    def left_sees_right_down() -> bool:
        views = cluster._ask("membership_view", nodes=left).values()
        return all(view[n] == "down" for view in views for n in right)

    wait_for(left_sees_right_down, what="the left side seeing the right side down")
    on_left = cluster.client(nodes=left)
    for key in keys:
        on_left.put(key, None, f"kept-{key}")  # W=2 on n1 and n2; no stand-in is reachable
    # Each key's third copy waits as a hint on the left, not for an anti-entropy round.
    assert sum(cluster.hints().values()) >= len(keys)
    cluster.heal()
    wait_for(lambda: no_hints(cluster), what="the coordinators' hints delivered")
    for key in keys:
        assert on_owners(cluster, on_left, key, f"kept-{key}"), cluster.replica_state(key)


def test_partitioned_messages_are_never_delivered_late(cluster):
    import time

    client = cluster.client()
    isolated = owners(cluster, "late")[2]
    others = [n for n in cluster.nodes() if n != isolated]
    # The write to `isolated` is held up on its link; the partition starts while it waits.
    cluster.set_link(None, isolated, delay=1.5)
    client.put("late", None, "during", w=2)
    cluster.partition([[isolated], others])
    time.sleep(2.5)  # past the delay: the held message must have been dropped, not sent
    assert isolated not in cluster.replica_state("late")
    cluster.heal()
    # It arrives afterwards only as a hint handed off by a fallback, after the heal.
    wait_for(lambda: no_hints(cluster), what="hints delivered")
    wait_for(lambda: on_owners(cluster, client, "late", "during"), what="late on owners")


def test_hint_holder_killed_and_restarted_still_delivers(cluster):
    client = cluster.client()
    victim = owners(cluster, "probe")[0]
    keys = keys_owned_by(cluster, [victim], 10, "holder")
    cluster.kill(victim)
    for key in keys:
        client.put(key, None, f"h-{key}")
    held = wait_for(
        lambda: (h := cluster.hints()) and sum(h.values()) >= len(keys) and h, what="hints"
    )
    holder = max(held, key=held.get)
    assert held[holder] > 0
    cluster.kill(holder)
    cluster.restart(victim)
    cluster.restart(holder)  # its hints survived in its LMDB
    wait_for(lambda: no_hints(cluster), what="every hint delivered")
    for key in keys:
        wait_for(lambda key=key: on_owners(cluster, client, key, f"h-{key}"), what=key)


def test_fault_controls_check_their_input(cluster):
    with pytest.raises(ValueError, match="unknown node"):
        cluster.partition([["n1"], ["n9"]])
    with pytest.raises(ValueError, match="two partition groups"):
        cluster.partition([["n1", "n2"], ["n2", "n3"]])
    with pytest.raises(ValueError, match="unknown node"):
        cluster.kill("n42")
    with pytest.raises(ValueError, match="is running"):
        cluster.restart("n1")
    with pytest.raises(ValueError, match="drop must lie"):
        cluster.set_link("n1", "n2", drop=1.5)


def test_dropped_and_delayed_links_still_meet_quorum(cluster):
    client = cluster.client()
    cluster.set_link(None, "n1", drop=1.0)  # nothing reaches n1 from its peers
    cluster.set_link("n2", None, delay=0.05)
    for i in range(10):
        client.put(f"lossy{i}", None, i)
    for i in range(10):
        assert client.get(f"lossy{i}").value == i
    cluster.heal()
    wait_for(lambda: no_hints(cluster), what="hints delivered after heal")


@pytest.fixture
def full_disk_store(ray_session, tmp_path):
    """A 4-node store whose n2 keeps its directory on a small disk of its own, to fill."""
    with small_disk(tmp_path / "n2") as disk:
        store = dynaray.start(
            nodes=4, n=3, r=2, w=2, node_options=FAST, partitions=64, data_dir=str(tmp_path)
        )
        try:
            yield store, disk
        finally:
            store.shutdown()


def test_writes_succeed_while_one_nodes_disk_is_full(full_disk_store):
    """A node whose disk is full stores nothing, so it cannot coordinate or take a copy.
    Every write still succeeds: the coordinator hands it to another primary, and the full
    node's copy goes to a stand-in as a hint, delivered once the disk has room again."""
    cluster, disk = full_disk_store
    client = cluster.client()
    client.put("before", None, "v")
    first_n2 = [k for k in (f"full-{i}" for i in range(400)) if owners(cluster, k)[0] == "n2"]
    also_n2 = [k for k in (f"bulk-{i}" for i in range(400)) if "n2" in owners(cluster, k)[:3]]
    assert len(first_n2) >= 10 and len(also_n2) >= 50  # enough keys for n2 to coordinate
    fill_disk(str(disk))

    for key in first_n2[:10]:  # one key at a time: n2 coordinates each, through the client
        assert client.put(key, None, f"value-{key}") is not None
    assert cluster.info()["n2"]["disk_error"] is not None
    answers = client.put_many({key: (None, f"value-{key}") for key in also_n2[:50]})  # batched
    failed = {k: a for k, a in answers.items() if isinstance(a, Exception)}
    assert not failed, failed
    for key in first_n2[:10] + also_n2[:50]:
        assert client.get(key).values == [f"value-{key}"]
    assert client.get("before").values == ["v"]  # n2 still answers reads

    free_disk(str(disk))
    written = first_n2[:10] + also_n2[:50]
    # Its copies come back from the stand-ins' hints once its disk takes writes again.
    wait_for(
        lambda: all("n2" in cluster.replica_state(k) for k in written),
        timeout=60,
        what="n2 holding every key written while its disk was full",
    )
    assert cluster.info()["n2"]["disk_error"] is None
    assert all(cluster.replica_state(k)["n2"] == [f"value-{k}"] for k in written)
