"""The core store on real Ray actors and real LMDB: the public API of dynaray, errors included."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re

import pytest
import ray

import dynaray
from dynaray import codec
from dynaray.errors import RequestTimeout
from tests.conftest import FAST


@pytest.fixture(scope="module")
def cluster(ray_session, tmp_path_factory):
    c = dynaray.start(
        nodes=5, n=3, r=2, w=2, data_dir=str(tmp_path_factory.mktemp("store")), node_options=FAST
    )
    yield c
    c.shutdown()


@pytest.fixture(scope="module")
def client(cluster):
    return cluster.client()


def test_absent_key_reads_empty(client):
    res = client.get("never-written")
    assert res.values == []
    assert res.value is None
    assert isinstance(res.context, dynaray.Context)


def test_put_get_round_trip_objects_and_bytes(client):
    client.put("obj", None, {"a": [1, 2]})
    client.put("raw", None, b"\x00\xffraw")
    assert client.get("obj").value == {"a": [1, 2]}
    raw = client.get("raw").value
    assert raw == b"\x00\xffraw" and isinstance(raw, bytes)


def test_put_with_context_replaces_what_was_read(client):
    ctx = client.put("cart:1", None, ["book"])
    assert isinstance(ctx, dynaray.Context)
    res = client.get("cart:1")
    client.put("cart:1", res.context, ["book", "pen"])
    assert client.get("cart:1").values == [["book", "pen"]]


def test_concurrent_puts_become_siblings_and_merge_resolves(client):
    client.put("cart:2", None, ["base"])
    seen = client.get("cart:2")
    client.put("cart:2", seen.context, ["base", "left"])
    client.put("cart:2", seen.context, ["base", "right"])
    res = client.get("cart:2")
    assert sorted(res.values) == [["base", "left"], ["base", "right"]]
    with pytest.raises(dynaray.ConflictError, match="2 conflicting versions"):
        _ = res.value
    client.put("cart:2", res.context, ["base", "left", "right"])
    assert client.get("cart:2").value == ["base", "left", "right"]


def test_blind_writes_are_kept_as_siblings(client):
    client.put("blind", None, "one")
    client.put("blind", None, "two")
    assert sorted(client.get("blind").values) == ["one", "two"]


def test_write_lands_on_exactly_n_replicas(cluster, client):
    client.put("placed", None, "v", w=2)
    # W=2 acknowledges early; the third replica gets it right after.
    state = _settled(cluster, "placed", 3)
    assert len(state) == 3
    assert all(values == ["v"] for values in state.values())


def test_w3_write_is_on_all_three_when_acknowledged(cluster, client):
    client.put("all-three", None, "v", w=3)
    state = cluster.replica_state("all-three")
    assert len(state) == 3 and all(v == ["v"] for v in state.values())


def test_delete_hides_value_and_keeps_tombstone(cluster, client):
    ctx = client.put("gone", None, "v")
    client.delete("gone", ctx)
    res = client.get("gone")
    assert res.values == []
    client.put("gone", res.context, "back")
    assert client.get("gone").values == ["back"]


def test_delete_without_context_deletes_what_it_reads(client):
    client.put("gone2", None, "v")
    client.delete("gone2")
    assert client.get("gone2").values == []


def test_per_request_quorums(client):
    client.put("q", None, "v", w=3)
    assert client.get("q", r=1).value == "v"
    assert client.get("q", r=3).value == "v"


def test_context_round_trips_through_bytes(client):
    client.put("ctx", None, "v1")
    res = client.get("ctx")
    data = bytes(res.context)
    again = dynaray.Context.from_bytes(data)
    assert again == res.context
    client.put("ctx", data, "v2")  # bytes are accepted where a context is
    assert client.get("ctx").values == ["v2"]


def test_async_twins(client):
    async def run():
        ctx = await client.aput("async", None, "a")
        res = await client.aget("async")
        assert res.value == "a"
        await client.aput("async", res.context, "b", w=3)
        res = await client.aget("async", r=3)
        assert res.value == "b"
        await client.adelete("async", res.context)
        return (await client.aget("async")).values, ctx

    values, ctx = asyncio.run(run())
    assert values == [] and isinstance(ctx, dynaray.Context)


def test_sync_call_inside_event_loop_says_use_async(client):
    async def run():
        client.get("x")

    with pytest.raises(RuntimeError, match="aget"):
        asyncio.run(run())


@pytest.mark.parametrize("path", ["router", "any"])
def test_other_request_paths(cluster, path):
    other = cluster.client(path=path)
    ctx = other.put(f"path-{path}", None, path)
    assert other.get(f"path-{path}").value == path
    res = other.get(f"path-{path}")
    other.put(f"path-{path}", res.context, "again")
    assert other.get(f"path-{path}").values == ["again"]
    assert isinstance(ctx, dynaray.Context)


def test_nodes_lists_ids(cluster):
    assert cluster.nodes() == ["n1", "n2", "n3", "n4", "n5"]


def test_a_partition_given_one_group_as_a_flat_list_says_the_shape(cluster):
    with pytest.raises(
        TypeError, match=r"e\.g\. partition\(\[\['n1', 'n2'\], \['n3', 'n4', 'n5'\]\]\)"
    ):
        cluster.partition(["n1", "n2"])  # not "n", "1", "n", "2"
    with pytest.raises(TypeError, match="list of groups"):
        cluster.partition("n1")


# -- bad input: a clear error and nothing written ----------------------------------------


def test_key_too_long_says_the_limit(cluster, client):
    limit = codec.max_key_length(codec.bucket_bytes(codec.DEFAULT_BUCKET))
    with pytest.raises(ValueError, match=f"limit .* is {limit} bytes"):
        client.put("k" * (limit + 1), None, "v")
    client.put("k" * limit, None, "fits")
    assert client.get("k" * limit).value == "fits"
    assert cluster.replica_state("k" * (limit - 1)) == {}


def test_value_too_large_says_the_limit_and_nothing_is_written(cluster, client):
    limit = codec.MAX_VALUE_SIZE
    for big in (b"x" * (limit + 1), "x" * limit):  # a str pickles to more than its length
        with pytest.raises(ValueError, match=f"limit is {limit:,} bytes, and nothing was"):
            client.put("big-value", None, big)
    with pytest.raises(ValueError, match="limit is"):
        client.bucket("big-tags", policy="set").add("big-set", b"x" * (limit + 1))
    answers = client.put_many({"big-value": (None, b"x" * (limit + 1)), "small": (None, b"s")})
    assert isinstance(answers["big-value"], ValueError)  # fails alone
    assert isinstance(answers["small"], dynaray.Context)
    assert client.get("big-value").values == []
    assert cluster.replica_state("big-value") == {}
    client.put("big-value", None, b"x" * limit)  # at the limit
    assert client.get("big-value").value == b"x" * limit


@pytest.mark.parametrize("key", [1, 2.5, None, ("a",), ["a"]])
def test_key_of_wrong_type(client, key):
    with pytest.raises(ValueError, match="key must be str or bytes"):
        client.put(key, None, "v")
    with pytest.raises(ValueError, match="key must be str or bytes"):
        client.get(key)


def test_malformed_contexts_are_refused_and_nothing_written(cluster, client):
    client.put("guarded", None, "original")
    good = bytes(client.get("guarded").context)
    tampered = bytearray(good)
    tampered[6] ^= 0xFF
    for bad in (b"", b"junk", good[:-1], bytes(tampered), good + b"x"):
        with pytest.raises(dynaray.InvalidContext):
            client.put("guarded", bad, "evil")
    with pytest.raises(dynaray.InvalidContext, match="dynaray.Context"):
        client.put("guarded", "a string", "evil")
    with pytest.raises(dynaray.InvalidContext, match="different key"):
        client.put("guarded", client.get("other-key").context, "evil")
    assert client.get("guarded").values == ["original"]


def test_an_error_raised_in_a_node_reaches_the_caller_whole(ray_session):
    # A node that forwarded a write and lost its coordinator raises RequestTimeout; Ray
    # pickles it to the caller, who must get it, not a failure to unpickle it.
    @ray.remote
    def forwarded_write() -> None:
        raise RequestTimeout("put", "k", 1.0, "the coordinator n2 it was forwarded to died")

    with pytest.raises(RequestTimeout, match="may or may not have been stored") as info:
        ray.get(forwarded_write.remote())
    assert info.value.op == "put" and isinstance(info.value, TimeoutError)


def test_unpicklable_value_is_refused(client):
    import threading

    with pytest.raises(ValueError, match="cannot be serialized"):
        client.put("lock", None, threading.Lock())
    assert client.get("lock").values == []


def test_quorum_larger_than_n_is_refused(client):
    with pytest.raises(ValueError, match="must not exceed n=3"):
        client.get("x", r=4)
    with pytest.raises(ValueError, match="must not exceed n=3"):
        client.put("x", None, "v", w=4)
    with pytest.raises(ValueError, match="positive integer"):
        client.put("x", None, "v", w=0)


def test_start_refuses_bad_quorums(ray_session):
    with pytest.raises(ValueError, match="must not exceed n"):
        dynaray.start(nodes=3, n=3, r=4, w=2)
    with pytest.raises(ValueError, match="need at least 5 nodes"):
        dynaray.start(nodes=3, n=5, r=2, w=2)


def test_second_store_with_same_name_is_refused(cluster):
    with pytest.raises(dynaray.DynarayError, match="already running"):
        dynaray.start(nodes=3)


def test_connect_from_the_same_cluster(cluster, client):
    client.put("shared", None, "from-first")
    other = dynaray.connect()
    assert other.get("shared").value == "from-first"


def test_binary_keys_and_unicode_keys(client):
    client.put(b"\x00\x01bin", None, "b")
    client.put("ключ", None, "u")
    assert client.get(b"\x00\x01bin").value == "b"
    assert client.get("ключ").value == "u"


def _settled(cluster, key, count, attempts=50):
    import time

    state = cluster.replica_state(key)
    for _ in range(attempts):
        if len(state) >= count:
            break
        time.sleep(0.1)
        state = cluster.replica_state(key)
    return state


def test_stats_report_requests_and_figures(cluster, client):
    before = cluster.stats()
    client.put("counted", None, "v")
    client.get("counted")  # coordinated by the client: counted where the replicas read it
    cluster.client(path="any").get("counted")  # coordinated by a node: a get request
    stats = cluster.stats()
    assert set(stats) == set(cluster.nodes())

    def total(snapshot, figure) -> int:
        return sum(figure(s) for s in snapshot.values())

    def puts(s):
        return s["requests"].get("put.ok", {}).get("count", 0)

    def gets(s):
        return s["requests"].get("get.ok", {}).get("count", 0)

    def replica_reads(s):
        return s.get("replica_reads", 0)

    assert total(stats, puts) >= total(before, puts) + 1
    assert total(stats, gets) >= total(before, gets) + 1
    assert total(stats, replica_reads) >= total(before, replica_reads) + 2  # R=2
    assert sum(s["keys"] for s in stats.values()) >= 3
    assert all("lmdb_bytes" in s and "hints_held" in s for s in stats.values())


def test_put_many_and_get_many_keep_each_keys_outcome(client):
    items = {f"bulk{i}": (None, {"n": i}) for i in range(300)}
    written = client.put_many(items)
    assert set(written) == set(items)
    assert all(isinstance(ctx, dynaray.Context) for ctx in written.values())
    got = client.get_many([*items, "bulk-never"])
    assert {k: got[k].value for k in items} == {k: v for k, (_, v) in items.items()}
    assert got["bulk-never"].values == []
    # One key follows its context, one is written blind (a sibling), one has bad input:
    # each gets its own outcome.
    again = client.put_many(
        {"bulk0": (got["bulk0"].context, "next"), "bulk1": (None, "blind"), "bulk2": (b"?", 1)}
    )
    assert isinstance(again["bulk0"], dynaray.Context)
    assert isinstance(again["bulk2"], dynaray.InvalidContext)
    after = client.get_many(["bulk0", "bulk1", "bulk2"])
    assert after["bulk0"].value == "next"
    assert sorted(after["bulk1"].values, key=repr) == sorted([{"n": 1}, "blind"], key=repr)
    assert after["bulk2"].value == {"n": 2}
    # A str key UTF-8 cannot encode (a lone surrogate) fails alone too, and says what to do.
    odd = client.put_many({"bulk3": (None, "fine"), "\ud800": (None, 1)})
    assert isinstance(odd["bulk3"], dynaray.Context)
    assert isinstance(odd["\ud800"], ValueError) and "pass the key as bytes" in str(odd["\ud800"])


def test_a_context_of_another_store_is_refused(cluster, client):
    """Two stores name their nodes alike (n1, n2, ...), so the version vector of one store's
    key could cover another's newer values: a context is tied to its store's id too."""
    from dynaray import versions
    from dynaray.context import Context, key_tag

    client.put("shared-name", None, "this store's")
    b, k = codec.bucket_bytes(codec.DEFAULT_BUCKET), b"shared-name"
    elsewhere = codec.hash_input(b, k) + b"\x00" + b"0123456789abcdef"  # another store's id
    foreign = Context(versions.vv_from_wire([["n1", 1000]]), key_tag(elsewhere))
    with pytest.raises(dynaray.InvalidContext, match="another store"):
        client.put("shared-name", foreign, "overwrite")
    assert client.get("shared-name").value == "this store's"
    ids = {info["config"].get("id") for info in cluster._ask("describe").values()}
    assert len(ids) == 1 and None not in ids  # every node has the store's one id


def test_bulk_calls_of_the_wrong_shape_are_refused(client):
    with pytest.raises(TypeError, match=r"list of keys, e.g. \['abc'\]"):
        client.get_many("abc")  # not the keys "a", "b" and "c"
    with pytest.raises(TypeError, match="takes a dict"):
        client.put_many([("a", None, 1)])
    got = client.get_many(k for k in ["bulk-gen-a", "bulk-gen-b"])  # any iterable of keys
    assert set(got) == {"bulk-gen-a", "bulk-gen-b"}
    with pytest.raises(TypeError, match="str or bytes keys, got the list"):
        client.get_many(["bulk-gen-a", ["b"]])  # no result could hold that key
    with pytest.raises(ValueError, match="one key written twice"):
        client.put_many({"bulk-twice": (None, 1), b"bulk-twice": (None, 2)})
    with pytest.raises(TypeError, match="maps to"):
        client.put_many({"bulk-shape": (None, 1, 2)})
    assert client.get("bulk-twice").values == []  # refused before anything was sent
    pairs = client.put_many({"bulk-list": [None, "a pair as JSON gives it"]})
    assert isinstance(pairs["bulk-list"], dynaray.Context)
    assert client.get(b"bulk-list").key == b"bulk-list"  # the key as it was asked for
    with pytest.raises(ValueError, match="request_timeout must be a positive number"):
        client.routing.__class__({}, request_timeout=-5)


def test_start_refuses_bad_arguments_before_starting_any_node(ray_session, tmp_path):
    for kwargs, error, match in (
        ({"partitions": 7}, ValueError, "power of two"),
        ({"nodes": 20, "partitions": 16}, ValueError, "at least as many partitions"),
        ({"data_dir": 123}, TypeError, "directory path"),
        ({"node_options": {"replica_timeot": 1}}, ValueError, "the options are sync"),
        # A node would refuse these at its start (every actor died in its constructor).
        ({"node_options": {"down_after": 2.0}}, ValueError, "at most down_after"),
        ({"node_options": {"read_repair_chance": 2}}, ValueError, "fraction"),
        ({"node_options": {"transfer_batch": 0}}, ValueError, "transfer_batch"),
        ({"store": ""}, ValueError, "non-empty name"),
    ):
        with pytest.raises(error, match=match):
            dynaray.start(**kwargs)


def test_a_store_handle_and_its_clients_refuse_calls_after_shutdown(ray_session):
    store = dynaray.start(nodes=3, node_options=FAST, partitions=16, store="shut")
    client = store.client()
    client.put("k", None, "v")
    store.shutdown()
    store.shutdown()  # a second call does nothing
    for call in (
        store.status,
        store.client,
        store.nodes,
        store.anti_entropy,
        store.heal,
        lambda: store.partition([["n1"], ["n2", "n3"]]),
        lambda: store.kill("n1"),
        lambda: store.restart("n1"),
        lambda: store.preference_list("k"),
    ):
        with pytest.raises(dynaray.DynarayError, match="shut down"):
            call()
    with pytest.raises(dynaray.DynarayError, match="client was closed"):
        client.get("k")

    async def later():
        return await client.aget("k")

    with pytest.raises(dynaray.DynarayError, match="client was closed"):
        asyncio.run(later())
    assert ray.is_initialized()  # the module's Ray was not this store's to stop


@pytest.mark.timeout(300)
def test_a_store_whose_nodes_all_died_is_attached_restarted_and_started_again(
    ray_session, tmp_path
):
    data = str(tmp_path / "data")
    first = dynaray.start(nodes=3, data_dir=data, node_options=FAST, partitions=16, store="dead")
    try:
        first.client().put("k", None, "v", w=3)
        for node in first.nodes():
            first.kill(node)
        # No node answers: not a clean round of zeros.
        with pytest.raises(dynaray.DynarayError, match="no storage node answered"):
            first.anti_entropy()
        with pytest.raises(ValueError, match="node 'n1': its machine is up") as refused:
            first.restart("n1", empty=True)
        assert "''" not in str(refused.value)

        # Another driver finds the store through its Router, which remembers its nodes.
        attached = dynaray.Cluster.attach("dead")
        stale = dynaray.Cluster.attach("dead")  # a handle that will not see the restarts
        assert attached.nodes() == ["n1", "n2", "n3"]
        assert attached.status() == {"n1": "down", "n2": "down", "n3": "down"}
        with pytest.raises(dynaray.DynarayError, match="no node of store 'dead' runs now"):
            attached.client()
        # Starting it on another data directory, or none, would hide the store's data.
        for elsewhere in (str(tmp_path / "other"), None):
            with pytest.raises(
                dynaray.DynarayError, match=f"every node down .*its data is in {re.escape(data)}"
            ):
                dynaray.start(nodes=3, data_dir=elsewhere, partitions=16, store="dead")
        assert not dynaray.cluster._named_nodes("dead")  # nothing was started
        for node in attached.nodes():
            attached.restart(node)  # with the store's node options, as the Router keeps them
        assert attached._options == first._options
        assert attached.client().get("k", r=3).value == "v"
        # Nodes another handle restarted are found when a client is made (not refused).
        assert stale.client().get("k", r=3).value == "v"

        # The Router follows the nodes that join: killed again, the store starts again
        # from its data directory, with a Router of its own.
        joined = attached.add_node()
        for node in attached.nodes():
            attached.kill(node)
        assert dynaray.Cluster.attach("dead").nodes() == ["n1", "n2", "n3", joined]
        again = dynaray.start(data_dir=data, node_options=FAST, partitions=16, store="dead")
        assert again.nodes() == ["n1", "n2", "n3", joined]
        assert again.client().get("k").value == "v"
        # The handle from before holds a dead Router; its changes ask the new one (they
        # went on without a hold) while another driver holds the membership.
        ray.get(again._router.hold_change.remote("elsewhere", "a test's change", 120.0, False))
        with pytest.raises(dynaray.DynarayError, match="another driver is changing"):
            attached.add_node()
        ray.get(again._router.release_change.remote("elsewhere"))
        for node in again.nodes():
            again.kill(node)
        attached.shutdown()  # stops what is left: the Router the start made, not only its own
        with pytest.raises(dynaray.DynarayError, match="no store named 'dead'"):
            dynaray.Cluster.attach("dead")
    finally:
        with contextlib.suppress(dynaray.DynarayError):
            dynaray.Cluster.attach("dead").shutdown()


@pytest.mark.timeout(300)
def test_a_data_directory_that_held_a_store_is_not_taken_for_a_new_one(ray_session, tmp_path):
    from dynaray import manifest

    data = str(tmp_path / "data")
    first = dynaray.start(nodes=3, data_dir=data, node_options=FAST, partitions=16, store="noted")
    try:
        first.client().put("k", None, "v")
    finally:
        first.shutdown()
    assert manifest.read(data) == {
        "root": data,
        "store": "noted",
        "nodes": ["n1", "n2", "n3"],
        "machines": None,
    }

    # Its node directories out of sight (their machines not back yet): no new, empty store.
    away = str(tmp_path / "away")
    os.rename(data, away)
    os.makedirs(data)
    with pytest.raises(dynaray.DynarayError, match="no directory of its nodes is found there"):
        dynaray.start(nodes=3, data_dir=data, node_options=FAST, partitions=16, store="noted")
    # Noted as run on `kvnode` machines, on a Ray cluster without any: refused too.
    for node in ("n1", "n2", "n3"):
        os.rename(os.path.join(away, node), os.path.join(data, node))
    manifest.write(data, "noted", ["n1", "n2", "n3"], "kvnode")
    with pytest.raises(dynaray.DynarayError, match="'kvnode' resource, and the Ray cluster has"):
        dynaray.start(nodes=3, data_dir=data, node_options=FAST, partitions=16, store="noted")
    assert not dynaray.cluster._named_nodes("noted")  # nothing was started

    manifest.write(data, "noted", ["n1", "n2", "n3"], None)
    # Another store given this directory: it served and changed this store's keys.
    with pytest.raises(dynaray.DynarayError, match="holds store 'noted', not 'other'"):
        dynaray.start(data_dir=data, node_options=FAST, partitions=16, store="other")
    os.remove(manifest.path_of(data))  # the node directories alone say whose they are
    with pytest.raises(dynaray.DynarayError, match="holds store 'noted', not 'other'"):
        dynaray.start(data_dir=data, node_options=FAST, partitions=16, store="other")
    assert not dynaray.cluster._named_nodes("other")  # nothing was started
    again = dynaray.start(data_dir=data, node_options=FAST, partitions=16, store="noted")
    try:
        assert again.client().get("k").value == "v"
    finally:
        again.shutdown()


def test_a_throw_away_store_shut_down_through_another_handle_leaves_no_directory(ray_session):
    first = dynaray.start(nodes=3, node_options=FAST, partitions=16, store="eph")
    root = first._ephemeral_root
    try:
        first.client().put("k", None, "v")
        assert os.path.isdir(root)
        dynaray.Cluster.attach("eph").shutdown()  # as `dynaray down --store eph` does
        assert not os.path.exists(root)
        with pytest.raises(dynaray.DynarayError, match="no store named 'eph'"):
            dynaray.Cluster.attach("eph")
    finally:
        first.shutdown()
