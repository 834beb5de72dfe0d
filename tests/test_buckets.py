"""Conflict resolution on real actors: buckets and their policies, resolvers, CRDTs, deletes."""

from __future__ import annotations

import json
import re

import pytest

import dynaray
from dynaray import codec
from tests.conftest import FAST, all_see_all_up, wait_for

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def cluster(ray_session):
    c = dynaray.start(
        nodes=5, node_options={**FAST, "sibling_limit": 25}, partitions=32, store="buckets"
    )
    yield c
    c.shutdown()


@pytest.fixture(scope="module")
def client(cluster):
    return cluster.client()


@pytest.fixture
def healed(cluster):
    yield cluster
    cluster.heal()
    wait_for(lambda: all_see_all_up(cluster), what="every node seeing every node up")


def sides(cluster):
    left, right = ["n1", "n2"], ["n3", "n4", "n5"]
    cluster.partition([left, right])
    return cluster.client(nodes=left), cluster.client(nodes=right)


def settle(cluster):
    cluster.heal()
    wait_for(lambda: all_see_all_up(cluster), what="every node seeing every node up")
    wait_for(lambda: sum(cluster.hints().values()) == 0, what="hints delivered")


def test_bucket_properties_live_in_the_cluster(cluster, client):
    likes = client.bucket("likes-props", policy="counter")
    assert likes.policy == "counter"
    other = cluster.client()
    assert other.bucket("likes-props").policy == "counter"  # found, not created
    with pytest.raises(ValueError, match="exists with policy='counter'"):
        other.bucket("likes-props", policy="set")
    with pytest.raises(ValueError, match="policy must be one of"):
        client.bucket("x", policy="bogus")
    with pytest.raises(ValueError, match="reserved"):
        client.bucket("_buckets")
    assert client.bucket("default").policy == "siblings"


def catalogs(cluster):
    return cluster._ask("bucket_catalog")


def test_bucket_created_during_a_partition_reaches_every_node_by_gossip(cluster, healed):
    left, right = sides(cluster)
    assert left.bucket("votes", policy="counter").policy == "counter"
    held = catalogs(cluster)
    assert all("votes" in held[node] for node in ("n1", "n2"))
    assert not any("votes" in held[node] for node in ("n3", "n4", "n5"))
    settle(cluster)
    wait_for(
        lambda: all("votes" in wire for wire in catalogs(cluster).values()),
        what="the new bucket's properties gossiped to every node",
    )
    assert right.bucket("votes").policy == "counter"
    assert cluster.buckets()["votes"] == {"policy": "counter", "r": None, "w": None}


def test_bucket_created_on_both_sides_at_once_is_a_reported_conflict(cluster, healed, capsys):
    left, right = sides(cluster)
    left.bucket("both", policy="counter")
    right.bucket("both", policy="set")
    settle(cluster)
    wait_for(
        lambda: all(len(wire.get("both", [])) == 2 for wire in catalogs(cluster).values()),
        what="both creations gossiped to every node",
    )
    with pytest.raises(dynaray.DynarayError, match="created twice at once"):
        cluster.client().bucket("both")
    found = cluster.buckets()["both"]
    assert sorted(props["policy"] for props in found["conflict"]) == ["counter", "set"]
    # `dynaray buckets` shows it as one (it drew a row with no policy), and --json as data.
    from dynaray import cli

    capsys.readouterr()
    assert cli.main(["buckets", "--store", "buckets"]) == 0
    table = capsys.readouterr().out
    assert re.search(r"^both +CONFLICT: (counter or set|set or counter)", table, re.M), table
    assert cli.main(["buckets", "--store", "buckets", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)["both"]["conflict"]
    assert sorted(props["policy"] for props in shown) == ["counter", "set"]


def test_wrong_call_for_policy_is_refused(client):
    carts = client.bucket("carts-calls")
    with pytest.raises(
        ValueError,
        match="needs a bucket with policy counter; no node reached "
        "knows bucket 'carts-calls'.*create it with client.bucket",
    ):
        carts.increment("k", 1)
    likes = client.bucket("likes-calls", policy="counter")
    with pytest.raises(ValueError, match="needs a bucket with policy siblings or lww"):
        likes.put("k", None, 1)
    with pytest.raises(ValueError, match="by an int"):
        likes.increment("k", 1.5)


def test_a_crdt_key_never_written_reads_as_its_empty_value_and_does_not_exist(client):
    for policy, empty in (("counter", 0), ("set", set()), ("map", {})):
        bucket = client.bucket(f"fresh-{policy}", policy=policy)
        unwritten = bucket.get("never")
        assert unwritten.value == empty and not unwritten.exists
    likes = client.bucket("fresh-counter")
    likes.increment("k", 1)
    assert likes.get("k").exists
    tags = client.bucket("fresh-set")
    tags.add("k", "a")
    tags.remove("k", "a")
    emptied = tags.get("k")  # written, now empty: it exists
    assert emptied.value == set() and emptied.exists
    assert not client.get("never-written").exists  # the default bucket, as before


def test_counter_increments_on_both_sides_sum_after_heal(cluster, client, healed):
    likes = client.bucket("likes", policy="counter")
    likes.increment("post:1", 5)
    likes.increment("post:1", -2)
    assert likes.get("post:1").value == 3

    # Both sides start from 3 only once all three owners hold it: W=2 acknowledged two, and
    # the third copy may still be a hint on a node that saw the owner down a moment ago.
    def on_owners() -> bool:
        return list(cluster.replica_state("post:1", bucket="likes").values()) == [[3]] * 3

    try:
        wait_for(on_owners, what="the counter on all three owners")
    except AssertionError as exc:
        info = {n: (i["hints"], i["failed"]) for n, i in cluster.info().items()}
        raise AssertionError(
            f"{exc}: held {cluster.replica_state('post:1', bucket='likes')}, owners "
            f"{cluster.preference_list('post:1', bucket='likes')[:3]}, hints and failed "
            f"calls {info}, views {cluster._ask('membership_view')}"
        ) from None
    left, right = sides(cluster)
    left_likes, right_likes = left.bucket("likes"), right.bucket("likes")
    for _ in range(4):
        left_likes.increment("post:1", 1)
    for _ in range(6):
        right_likes.increment("post:1", 10)
    assert left_likes.get("post:1").value == 7
    assert right_likes.get("post:1").value == 63
    settle(cluster)
    assert likes.get("post:1").value == 3 + 4 + 60
    assert client.bucket("likes").get("never").value == 0


def test_set_add_wins_over_concurrent_remove(cluster, client, healed):
    tags = client.bucket("tags", policy="set")
    tags.add("doc:1", "red", "blue")
    assert tags.get("doc:1").value == {"red", "blue"}
    seen = tags.get("doc:1").context
    left, right = sides(cluster)
    left.bucket("tags").remove("doc:1", "red", context=seen)
    right.bucket("tags").add("doc:1", "red")  # concurrent with the remove
    settle(cluster)
    assert tags.get("doc:1").value == {"red", "blue"}


def test_set_remove_of_seen_element_removes_everywhere(cluster, client):
    tags = client.bucket("tags2", policy="set")
    tags.add("doc:2", "a", "b")
    tags.remove("doc:2", "a", context=tags.get("doc:2").context)
    assert tags.get("doc:2").value == {"b"}
    cluster.anti_entropy()
    for values in cluster.replica_state("doc:2", bucket="tags2").values():
        assert values == [{"b"}]


def test_a_remove_with_no_context_removes_what_a_read_sees(cluster, client, healed):
    """The first primary missed the add (it was cut off; its copy waits in a hint), yet it
    coordinates the remove: the remove must still take out the acknowledged add."""
    tags = client.bucket("tags3", policy="set")
    profiles = client.bucket("profiles3", policy="map")
    first, *others = cluster.preference_list("doc:3", "tags3")
    cluster.partition([[first], others])
    cluster.client(nodes=others).bucket("tags3").add("doc:3", "a", "b")
    assert first not in cluster.replica_state("doc:3", bucket="tags3")
    tags.remove("doc:3", "a", w=1)  # the client reaches the first primary
    # Cut off from the others, it holds the key only if it coordinated the remove.
    assert first in cluster.replica_state("doc:3", bucket="tags3")
    first, *others = cluster.preference_list("u3", "profiles3")
    cluster.partition([[first], others])
    cluster.client(nodes=others).bucket("profiles3").update(
        "u3", add={"tags": ["a"]}, enable=["vip"]
    )
    profiles.update("u3", remove={"tags": ["a"]}, disable=["vip"], w=1)
    assert first in cluster.replica_state("u3", bucket="profiles3")
    settle(cluster)
    assert tags.get("doc:3").value == {"b"}
    assert profiles.get("u3").value == {"tags": set(), "vip": False}


def test_map_fields(cluster, client, healed):
    profiles = client.bucket("profiles", policy="map")
    profiles.update("u1", increment={"visits": 1}, add={"tags": ["new"]}, assign={"name": "Ann"})
    profiles.update("u1", enable=["vip"])
    left, right = sides(cluster)
    left.bucket("profiles").update("u1", increment={"visits": 2}, add={"tags": ["left"]})
    right.bucket("profiles").update("u1", increment={"visits": 3}, add={"tags": ["right"]})
    settle(cluster)
    value = profiles.get("u1").value
    assert value["visits"] == 6
    assert value["tags"] == {"new", "left", "right"}
    assert value["name"] == "Ann"
    assert value["vip"] is True
    with pytest.raises(ValueError, match="at least one"):
        profiles.update("u1")


def test_shopping_cart_resolver_loses_no_item(cluster, client, healed):
    def union(carts: list) -> list:
        return sorted({item for cart in carts for item in cart})

    carts = client.bucket("carts", resolver=union)
    carts.put("cart:1", None, ["book"])
    left, right = sides(cluster)
    for side, item in ((left, "pen"), (right, "mug")):
        mine = side.bucket("carts")
        res = mine.get("cart:1")  # a side without the cart's owners may see no cart at all
        mine.put("cart:1", res.context, sorted({*(res.value or []), item}))
    left.bucket("carts").put("cart:1", None, ["lamp"])  # a blind add, too
    settle(cluster)
    res = carts.get("cart:1")  # the resolver merges the siblings and writes the merge back
    assert res.value == ["book", "lamp", "mug", "pen"]
    assert client.bucket("carts").get("cart:1").values == [["book", "lamp", "mug", "pen"]]


def test_lww_loses_concurrent_writes_and_reports_how_many(cluster, client, healed, capsys):
    scores = client.bucket("scores", policy="lww")
    plain = client.bucket("scores-siblings")
    left, right = sides(cluster)
    acked = {"lww": [], "siblings": []}
    for i in range(10):
        for side, name in ((left, "L"), (right, "R")):
            value = f"{name}{i}"
            side.bucket("scores").put("k", None, value)
            acked["lww"].append(value)
            side.bucket("scores-siblings").put("k", None, value)
            acked["siblings"].append(value)
    settle(cluster)
    survived_lww = set(scores.get("k").values)
    survived_siblings = set(plain.get("k").values)
    lost_lww = 1 - len(survived_lww & set(acked["lww"])) / len(acked["lww"])
    lost_siblings = 1 - len(survived_siblings & set(acked["siblings"])) / len(acked["siblings"])
    with capsys.disabled():
        print(f"\nacknowledged writes lost: lww {lost_lww:.0%}, siblings {lost_siblings:.0%}")
    assert len(survived_lww) == 1  # last write wins: one survivor, by design
    assert lost_siblings == 0


def test_delete_under_partition_does_not_come_back(cluster, client, healed):
    notes = client.bucket("notes")
    notes.put("gone", None, "v")
    notes.put("kept", None, "v0")
    seen_gone, seen_kept = notes.get("gone").context, notes.get("kept").context
    left, right = sides(cluster)
    left.bucket("notes").delete("gone", seen_gone)
    left.bucket("notes").delete("kept", seen_kept)
    right.bucket("notes").put("kept", seen_kept, "updated")  # concurrent with the delete
    settle(cluster)
    cluster.anti_entropy()
    assert notes.get("gone").values == []
    assert notes.get("kept").values == ["updated"]
    for values in cluster.replica_state("gone", bucket="notes").values():
        assert values == []


def test_a_bucket_handle_from_before_the_bucket_was_created_cannot_write_another_kind(
    client,
):
    early = client.bucket("late")  # not created: a siblings bucket, nothing stored
    early.put("x", None, "before")
    tags = client.bucket("late", policy="set")  # created now, as a set
    with pytest.raises(dynaray.InvalidRequest, match="has policy 'set', not 'siblings'"):
        early.put("y", None, "after")
    assert tags.get("y").value == set()  # nothing was written
    tags.add("z", "red")
    assert tags.get("z").value == {"red"}
    # The key written before the bucket was created keeps its kind, and says so.
    with pytest.raises(dynaray.InvalidRequest, match="holds siblings data"):
        tags.add("x", "blue")
    # The early handle's own set calls take the properties stored since it was opened (it
    # said "has policy 'siblings'" for good, even after a partition that hid them healed).
    early.add("w", "green")
    assert early.policy == "set" and tags.get("w").value == {"green"}


def test_sibling_limit_refuses_and_says_resolve(client):
    blind = client.bucket("blind")
    for i in range(25):
        blind.put("k", None, i)
    with pytest.raises(dynaray.SiblingLimitError, match="merge its values"):
        blind.put("k", None, "one too many")
    res = blind.get("k")
    assert len(res.values) == 25
    # In a batch, only that key is refused; its neighbours are written.
    crowded = {f"crowd{i}": (None, i) for i in range(25)}
    for i in range(25):
        client.put("crowded", None, i)
    answers = client.put_many({"crowded": (None, "too many"), **crowded})
    assert isinstance(answers.pop("crowded"), dynaray.SiblingLimitError)
    assert all(isinstance(ctx, dynaray.Context) for ctx in answers.values())
    assert {k: r.value for k, r in client.get_many(list(crowded)).items()} == {
        k: v for k, (_, v) in crowded.items()
    }
    blind.put("k", res.context, "resolved")
    assert blind.get("k").value == "resolved"


def test_lww_contexts_carry_the_stamp_a_later_write_is_stamped_above(client):
    # A write sent with a context is stamped above what the context saw, so it wins even
    # through a coordinator whose clock is behind (records.update; tested there with the
    # clocks apart). Here: the stamp travels from answers and reads to the next write.
    scores = client.bucket("stamped", policy="lww")
    first = scores.put("k", None, 1)
    assert first.stamp > 0
    read = scores.get("k")
    assert read.context.stamp == first.stamp
    assert dynaray.Context.from_bytes(bytes(read.context)).stamp == first.stamp
    second = scores.put("k", read.context, 2)
    assert second.stamp > first.stamp
    assert scores.get("k").value == 2
    assert client.get("plain-key").context.stamp == 0  # siblings: version vectors order


def test_lww_delete_hides_key(client):
    scores = client.bucket("scores2", policy="lww")
    scores.put("k", None, 1)
    scores.put("k", None, 2)
    assert scores.get("k").value == 2
    scores.delete("k")
    assert scores.get("k").values == []


def test_arguments_a_bucket_cannot_use_are_refused_before_anything_is_stored(cluster, client):
    with pytest.raises(ValueError, match="must not exceed n=3"):
        client.bucket("too-wide", r=4)
    with pytest.raises(ValueError, match="positive integer"):
        client.bucket("too-narrow", w=0)
    with pytest.raises(ValueError, match="never has"):
        client.bucket("lww-resolved", policy="lww", resolver=lambda vs: vs[0])
    client.bucket("lww-plain", policy="lww")
    with pytest.raises(ValueError, match="would never run"):
        client.bucket("lww-plain", resolver=lambda vs: vs[0])
    stored = cluster.buckets()
    assert not {"too-wide", "too-narrow", "lww-resolved"} & set(stored)
    assert stored["lww-plain"]["policy"] == "lww"


def test_set_elements_that_could_not_be_read_back_are_refused(cluster, client):
    tags = client.bucket("tags-hashable", policy="set")
    with pytest.raises(ValueError, match=r"hashable.*add\(key, .a., .b.\).*a tuple"):
        tags.add("d", ["a", "list"])
    with pytest.raises(ValueError, match="hashable"):
        tags.add("d", "fine", {"a set"})
    assert cluster.replica_state("d", bucket="tags-hashable") == {}  # nothing was written
    tags.add("d", ("a", "tuple"), frozenset({1}))
    assert tags.get("d").value == {("a", "tuple"), frozenset({1})}
    profiles = client.bucket("profiles-hashable", policy="map")
    with pytest.raises(ValueError, match="hashable"):
        profiles.update("u", add={"t": [["x"]]})


def test_calls_that_would_write_nothing_or_with_a_bad_context_are_refused(cluster, client):
    tags = client.bucket("tags-empty", policy="set")
    with pytest.raises(ValueError, match="add\\(\\) needs at least one element"):
        tags.add("e")
    with pytest.raises(ValueError, match="remove\\(\\) needs at least one element"):
        tags.remove("e")
    assert cluster.replica_state("e", bucket="tags-empty") == {}  # nothing was sent
    latest = client.bucket("latest-delete", policy="lww")
    latest.put("a", None, 1)
    latest.put("b", None, 2)
    other = latest.get("b").context
    with pytest.raises(dynaray.InvalidContext, match="different key"):
        latest.delete("a", other)  # as put refuses it
    with pytest.raises(dynaray.InvalidContext):
        latest.delete("a", b"junk")
    assert latest.get("a").value == 1


def test_an_unhashable_element_stored_before_the_check_can_be_read_and_removed(client):
    tags = client.bucket("tags-legacy", policy="set")
    # As an older client wrote it: past the check, straight to the store.
    op = ["set", ["add", [codec.encode_value(["a", "list"])]]]
    client._run(client._write("tags-legacy", "d", op, None))
    assert tags.get("d").value == [["a", "list"]]  # a list: the key stays readable
    tags.remove("d", ["a", "list"])
    assert tags.get("d").value == set()


def test_map_arguments_of_the_wrong_shape_are_refused(cluster, client):
    profiles = client.bucket("profiles-shapes", policy="map")
    with pytest.raises(TypeError, match=r"takes a list, e.g. \['vip'\]"):
        profiles.update("u", enable="vip")  # not the fields "v", "i" and "p"
    with pytest.raises(TypeError, match="takes a list"):
        profiles.update("u", add={"t": "abc"})
    with pytest.raises(TypeError, match="takes a dict"):
        profiles.update("u", increment=["visits"])
    # It named aupdate, and not the operations there are.
    with pytest.raises(
        TypeError,
        match=r"^update\(\) got unknown argument\(s\) increase; it "
        "takes increment, add, remove",
    ):
        profiles.update("u", increase={"visits": 1})
    assert cluster.replica_state("u", bucket="profiles-shapes") == {}  # nothing was written


def test_a_map_field_name_utf8_cannot_encode_is_refused_before_anything_is_sent():
    """The node could not store it: the write failed there as "may or may not be stored",
    and failed the writes batched with it."""
    from dynaray.buckets import map_ops

    with pytest.raises(ValueError, match="UTF-8 cannot encode"):
        map_ops({"\ud800": 1}, None, None, None, None, None, None)
    with pytest.raises(ValueError, match="UTF-8 cannot encode"):
        map_ops(None, None, None, {"ok": 1, "\udfff": 2}, None, None, None)
