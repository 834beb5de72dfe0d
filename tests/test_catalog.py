"""The bucket catalog's merge: the properties every node must converge on."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dynaray.catalog import Catalog

entries = st.dictionaries(
    st.sampled_from(["likes", "tags", "carts", "ü"]),
    st.sets(st.binary(min_size=1, max_size=6), min_size=1, max_size=3),
    max_size=4,
)


def merged(*parts: Catalog) -> Catalog:
    out = Catalog()
    for part in parts:
        out.merge(part)
    return out


@given(entries, entries, entries)
def test_merge_is_commutative_associative_and_idempotent(a, b, c):
    x, y, z = Catalog(a), Catalog(b), Catalog(c)
    assert merged(x, y) == merged(y, x)
    assert merged(merged(x, y), z) == merged(x, merged(y, z))
    assert merged(x, x) == x
    assert merged(x, y).digest() == merged(y, x).digest()


@given(entries, entries)
def test_digest_tells_catalogs_apart(a, b):
    x, y = Catalog(a), Catalog(b)
    assert (x.digest() == y.digest()) == (x == y)


@given(entries)
def test_wire_round_trip(a):
    x = Catalog(a)
    assert Catalog.from_wire(x.to_wire()) == x


def test_add_reports_news_and_keeps_concurrent_creations():
    catalog = Catalog()
    assert catalog.get("likes") == []
    assert catalog.add("likes", b"counter")
    assert not catalog.add("likes", b"counter")
    other = Catalog({"likes": {b"set"}, "tags": {b"set"}})
    assert catalog.merge(other)
    assert not catalog.merge(other)
    # Created on both sides of a partition with different properties: both are kept, so
    # every node reports the same conflict instead of each keeping its own.
    assert catalog.get("likes") == [b"counter", b"set"]
    assert catalog.names() == ["likes", "tags"]


def test_the_policy_of_a_bucket_is_that_of_its_one_entry():
    from dynaray.catalog import BucketProps

    catalog = Catalog()
    assert catalog.policy("tags") is None  # never created
    catalog.add("tags", BucketProps("set").encode())
    assert catalog.policy("tags") == "set"
    # Created at once with two policies on two sides of a partition: no one policy.
    catalog.add("tags", BucketProps("counter").encode())
    assert catalog.policy("tags") is None
    merged = Catalog()
    merged.merge(Catalog.from_wire({"likes": [BucketProps("counter", r=3).encode()]}))
    assert merged.policy("likes") == "counter"
