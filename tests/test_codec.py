"""codec: values, keys, data keys and on-disk records as bytes (no Ray)."""

from __future__ import annotations

import importlib
import re
import threading

import lmdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynaray import codec, versions
from dynaray.hints import hint_key

# -- values ------------------------------------------------------------------------------


# Parts of set elements: equal values that may or may not be one object.
_atoms = st.one_of(
    st.text(max_size=4),
    st.binary(max_size=4),
    st.integers(-3, 3),
    st.booleans(),
    st.floats(allow_nan=False, width=16),
    st.none(),
)
_elements = st.recursive(
    _atoms, lambda inner: st.lists(inner, max_size=4).map(tuple), max_leaves=12
)


def _rebuilt(value: object) -> object:
    """An equal value made of new objects wherever Python makes one: each str and bytes
    copied (past one character; shorter ones are shared by the interpreter), each tuple
    built again."""
    if type(value) is tuple:
        return tuple(_rebuilt(item) for item in value)
    if type(value) is str and len(value) > 1:
        return "".join(list(value))
    if type(value) is bytes and len(value) > 1:
        return bytes(bytearray(value))
    return value


@given(_elements)
def test_equal_set_elements_get_equal_bytes_however_they_were_built(element):
    """Pickle writes an object met twice as a reference to the first: ("ab", "ab") of one
    string and of two equal strings pickled differently, and a remove of one form missed
    an add of the other."""
    twice = (element, element)  # one object, twice
    apart = (element, _rebuilt(element))  # two equal objects
    assert codec.encode_element(twice) == codec.encode_element(apart)
    decoded = codec.decode_value(codec.encode_element(apart))
    assert decoded == apart and repr(decoded) == repr(apart)  # types and signs kept


def test_set_elements_that_differ_in_type_or_sign_stay_apart():
    name = "alice"
    other = "".join(["ali", "ce"])
    assert name is not other
    assert codec.encode_element((name, name)) == codec.encode_element((name, other))
    assert codec.encode_element((1, True)) != codec.encode_element((1, 1))
    assert codec.encode_element((0.0, -0.0)) != codec.encode_element((0.0, 0.0))
    assert codec.decode_value(codec.encode_element((0.0, -0.0))) == (0.0, -0.0)
    # An element without equal but separate parts keeps the bytes it was stored with.
    for element in ("tag", b"raw", 7, ("a", 1, b"b"), (("x",), ("y",))):
        assert codec.encode_element(element) == codec.encode_value(element)


class Point:
    def __init__(self, x: int, y: int) -> None:
        self.x = x
        self.y = y

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)


@given(st.binary(max_size=512))
def test_bytes_stay_bytes(value):
    data = codec.encode_value(value)
    assert data == b"\x00" + value  # raw, never pickled
    out = codec.decode_value(data)
    assert type(out) is bytes
    assert out == value


picklable = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=5), inner, max_size=4)
        | st.tuples(inner, inner)
    ),
    max_leaves=12,
)


@settings(max_examples=40)
@given(picklable.filter(lambda v: not isinstance(v, bytes)))
def test_objects_round_trip_through_cloudpickle(value):
    data = codec.encode_value(value)
    assert data[:1] == b"\x01"
    assert codec.decode_value(data) == value


def test_custom_objects_and_closures_round_trip():
    assert codec.decode_value(codec.encode_value(Point(1, 2))) == Point(1, 2)
    offset = 10
    fn = codec.decode_value(codec.encode_value(lambda x: x + offset))
    assert fn(5) == 15
    # bytearray is not bytes: it is pickled and comes back as a bytearray
    out = codec.decode_value(codec.encode_value(bytearray(b"ab")))
    assert type(out) is bytearray and out == bytearray(b"ab")
    assert codec.decode_value(codec.encode_value("")) == ""
    assert codec.decode_value(codec.encode_value(b"")) == b""


@pytest.mark.parametrize(
    "value, type_name",
    [(threading.Lock(), "lock"), ((i for i in range(3)), "generator")],
)
def test_unpicklable_value_raises_value_error_with_clear_message(value, type_name):
    with pytest.raises(ValueError) as info:
        codec.encode_value(value)
    message = str(info.value)
    assert type_name in message
    assert "cannot be serialized with cloudpickle" in message
    assert "store bytes or a picklable object" in message
    assert info.value.__cause__ is not None


@pytest.mark.parametrize("data", [b"", b"\x02abc", b"\xff"])
def test_decode_value_rejects_unknown_tag(data):
    with pytest.raises(ValueError, match="unknown encoding tag"):
        codec.decode_value(data)


# -- keys --------------------------------------------------------------------------------


@given(st.text(max_size=50))
def test_str_keys_are_utf8(key):
    assert codec.key_bytes(key) == key.encode("utf-8")


def test_a_str_key_utf8_cannot_encode_is_refused_with_what_to_do():
    with pytest.raises(ValueError, match="surrogates not allowed at index 1.*as bytes"):
        codec.key_bytes("a\ud800")
    with pytest.raises(ValueError, match="bucket name .* UTF-8 cannot encode"):
        codec.bucket_bytes("b\ud800")


def test_key_bytes():
    assert codec.key_bytes("héllo") == "héllo".encode()
    assert codec.key_bytes(b"\x00\xff") == b"\x00\xff"
    assert codec.key_bytes("") == b""


@pytest.mark.parametrize("key", [1, 1.5, None, ["a"], ("a",), {"a": 1}, object()])
def test_key_bytes_refuses_other_types(key):
    with pytest.raises(ValueError, match=f"key must be str or bytes, not {type(key).__name__}"):
        codec.key_bytes(key)


def test_bucket_bytes():
    assert codec.bucket_bytes("default") == b"default"
    assert codec.bucket_bytes("é" * 32) == ("é" * 32).encode()  # 64 bytes fits
    for bad in ("", None, b"default", 3):
        with pytest.raises(ValueError, match="non-empty str"):
            codec.bucket_bytes(bad)
    with pytest.raises(ValueError, match=f"limit is {codec.MAX_BUCKET_SIZE}"):
        codec.bucket_bytes("x" * (codec.MAX_BUCKET_SIZE + 1))


@given(st.integers(1, codec.MAX_BUCKET_SIZE))
def test_check_key_exact_boundary(bucket_len):
    bucket = b"b" * bucket_len
    limit = codec.max_key_length(bucket)
    codec.check_key(bucket, b"k" * limit)  # fits
    # The longest key makes a hint key (for an owner of the longest id) of LMDB's limit.
    longest = codec.data_key(2**32 - 1, 2**16 - 1, bucket, b"k" * limit)
    assert len(hint_key("n" * codec.MAX_NODE_ID_SIZE, longest)) == codec.MAX_KEY_SIZE
    with pytest.raises(ValueError) as info:
        codec.check_key(bucket, b"k" * (limit + 1))
    message = str(info.value)
    assert f"key is {limit + 1} bytes" in message
    assert f"is {limit} bytes" in message


def test_check_key_default_bucket_limit_in_message():
    bucket = codec.bucket_bytes(codec.DEFAULT_BUCKET)
    limit = codec.max_key_length(bucket)
    assert limit == codec.MAX_KEY_SIZE - (1 + codec.MAX_NODE_ID_SIZE) - 4 - 2 - 1 - len(bucket)
    codec.check_key(bucket, b"x" * limit)
    with pytest.raises(ValueError, match=re.escape(f"is {limit} bytes")):
        codec.check_key(bucket, b"x" * (limit + 1))


def test_longest_key_fits_lmdb_and_one_more_does_not(tmp_path):
    env = lmdb.open(str(tmp_path), map_size=1 << 20)
    try:
        assert env.max_key_size() == codec.MAX_KEY_SIZE
        bucket = b"default"
        limit = codec.max_key_length(bucket)
        owner = "n" * codec.MAX_NODE_ID_SIZE  # a stand-in keeps the key as a hint for it
        with env.begin(write=True) as txn:
            txn.put(hint_key(owner, codec.data_key(7, 3, bucket, b"k" * limit)), b"v")
        with pytest.raises(lmdb.BadValsizeError), env.begin(write=True) as txn:
            txn.put(hint_key(owner, codec.data_key(7, 3, bucket, b"k" * (limit + 1))), b"v")
    finally:
        env.close()


# -- data keys ---------------------------------------------------------------------------

partitions = st.integers(0, 2**32 - 1)
segments = st.integers(0, 2**16 - 1)
buckets = st.binary(min_size=1, max_size=codec.MAX_BUCKET_SIZE)
user_keys = st.binary(max_size=100)


@given(partitions, segments, buckets, user_keys)
def test_data_key_round_trip(partition, segment, bucket, key):
    dkey = codec.data_key(partition, segment, bucket, key)
    assert codec.split_data_key(dkey) == (partition, segment, bucket, key)
    assert codec.location(dkey) == (partition, segment)
    assert dkey.startswith(codec.partition_prefix(partition))
    assert dkey.startswith(codec.segment_prefix(partition, segment))
    assert dkey[6:] == codec.hash_input(bucket, key)


@settings(max_examples=200)
@given(st.lists(st.tuples(partitions, segments, buckets, user_keys), min_size=1, max_size=40))
def test_partitions_and_segments_sort_contiguously_in_numeric_order(items):
    ordered = sorted(codec.data_key(*item) for item in items)
    locations = [codec.location(k) for k in ordered]
    # (partition, segment) never goes back: each partition, and each segment of it, is one
    # contiguous run, and runs come in numeric (not lexicographic-decimal) order.
    assert locations == sorted(locations)
    for partition in {p for p, *_ in items}:
        prefix = codec.partition_prefix(partition)
        run = [i for i, k in enumerate(ordered) if k.startswith(prefix)]
        assert run == list(range(run[0], run[-1] + 1))


def test_partition_order_is_numeric_not_textual():
    keys = [codec.data_key(p, 0, b"b", b"k") for p in (10, 9, 256, 2, 2**32 - 1, 0)]
    assert [codec.location(k)[0] for k in sorted(keys)] == [0, 2, 9, 10, 256, 2**32 - 1]


def test_split_data_key_rejects_short_keys():
    for bad in (b"", b"\x00" * 6):
        with pytest.raises(ValueError, match="too short"):
            codec.split_data_key(bad)


# -- records -----------------------------------------------------------------------------
# Records moved from codec (encode_record/decode_record, a bare DVVSet clock) to
# dynaray.records (encode/decode of a Record); test whichever this tree has.

if hasattr(codec, "encode_record"):
    RECORD_FORMAT = codec.RECORD_FORMAT

    def encode_clock(clock, stamp=0):
        return codec.encode_record(clock)

    def decode_clock(data):
        return codec.decode_record(data)

    def foreign_format(clock, fmt):
        return codec.pack([fmt, versions.to_wire(clock)])

else:
    records = importlib.import_module("dynaray.records")
    RECORD_FORMAT = records.FORMAT

    def encode_clock(clock, stamp=0):
        return records.encode(records.Record("siblings", clock, stamp))

    def decode_clock(data):
        record = records.decode(data)
        assert record.kind == "siblings"
        return record.state

    def foreign_format(clock, fmt):
        return codec.pack([fmt, "siblings", versions.to_wire(clock), 0])


@st.composite
def clocks(draw):
    nodes = sorted(draw(st.sets(st.text("abcdef", min_size=1, max_size=3), max_size=4)))
    entries = []
    for node in nodes:
        vals = tuple(draw(st.lists(st.none() | st.binary(max_size=8), max_size=3)))
        counter = draw(st.integers(len(vals), len(vals) + 5))
        entries.append((node, counter, vals))
    anonymous = tuple(draw(st.lists(st.none() | st.binary(max_size=8), max_size=2)))
    return tuple(entries), anonymous


@given(clocks(), st.integers(0, 2**63 - 1))
def test_record_round_trip(clock, stamp):
    assert decode_clock(encode_clock(clock, stamp)) == clock


def test_record_round_trip_of_written_clock():
    clock = versions.update(versions.new(None, b"v1"), None, "n1")
    clock = versions.update(versions.new((), b"v2"), clock, "n2")  # concurrent sibling
    out = decode_clock(encode_clock(clock))
    assert versions.equal(out, clock)
    assert sorted(versions.values(out)) == [b"v1", b"v2"]


@pytest.mark.parametrize(
    "garbage",
    [b"", b"\xc1", b"not msgpack at all \xc1", codec.pack({"a": 1}), codec.pack(None), b"\x92"],
)
def test_record_rejects_garbage(garbage):
    with pytest.raises(ValueError):
        decode_clock(garbage)


def test_record_rejects_truncation():
    data = encode_clock(versions.update(versions.new(None, b"value"), None, "n1"))
    for cut in range(len(data)):
        with pytest.raises(ValueError):
            decode_clock(data[:cut])


@pytest.mark.parametrize("offset", [-1, 1, 99])
def test_record_rejects_other_format_versions(offset):
    clock = versions.update(versions.new(None, b"v"), None, "n1")
    with pytest.raises(ValueError, match="unknown format"):
        decode_clock(foreign_format(clock, RECORD_FORMAT + offset))


def test_record_rejects_invalid_clock():
    # unsorted node ids, and an entry with more values than dots
    for wire in (
        [[["b", 1, []], ["a", 1, []]], []],
        [[["a", 1, [b"x", b"y"]]], []],
        [[["a", 1, ["text"]]], []],
    ):
        if hasattr(codec, "encode_record"):
            data = codec.pack([RECORD_FORMAT, wire])
        else:
            data = codec.pack([RECORD_FORMAT, "siblings", wire, 0])
        with pytest.raises(ValueError):
            decode_clock(data)


def test_reads_take_keys_as_long_as_0_1_0_stored():
    """0.1.0 left no room for a hint's node id: keys it stored can still be read."""
    bucket = b"default"
    write_limit, read_limit = codec.max_key_length(bucket), codec.max_key_length(bucket, False)
    assert read_limit == write_limit + 1 + codec.MAX_NODE_ID_SIZE
    codec.check_key(bucket, b"k" * read_limit, write=False)
    with pytest.raises(ValueError, match=f"is {write_limit} bytes"):
        codec.check_key(bucket, b"k" * read_limit)


def test_values_up_to_the_limit_are_encoded_and_larger_ones_refused():
    limit = codec.MAX_VALUE_SIZE
    assert codec.decode_value(codec.encode_value(b"v" * limit)) == b"v" * limit
    with pytest.raises(ValueError, match=rf"value is {limit + 1:,} bytes \(bytes, as stored\)"):
        codec.encode_value(b"v" * (limit + 1))
    with pytest.raises(ValueError, match=r"\(list, as stored\).*object store"):
        codec.encode_value([b"v" * limit])  # pickling adds its framing


def test_a_set_remove_of_an_equal_element_built_apart_takes_the_add_out():
    from dynaray import crdt

    name = "alice"
    other = "".join(["ali", "ce"])
    state = crdt.apply("set", None, ["add", [codec.encode_element((name, name))]], "n1")
    seen = crdt.context("set", state)
    state = crdt.apply("set", state, ["remove", [codec.encode_element((name, other))], seen], "n1")
    assert crdt.value("set", state) == frozenset()
