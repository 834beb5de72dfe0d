"""context: the opaque causal context's byte form and its checks (no Ray)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dynaray import codec, versions
from dynaray import context as ctxmod
from dynaray.context import Context, check_context, key_tag
from dynaray.errors import InvalidContext

HASHED = codec.hash_input(b"default", b"cart:1")
OTHER = codec.hash_input(b"default", b"cart:2")
VV = (("n1", 3), ("n2", 1), ("n3", 7))

vvs = st.dictionaries(st.text(min_size=1, max_size=8), st.integers(0, 2**40), max_size=5).map(
    lambda d: tuple(sorted(d.items()))
)
tags = st.integers(0, 2**64 - 1)


def make(vv=VV, hashed=HASHED) -> Context:
    return Context(vv, key_tag(hashed))


def signed(payload: bytes, fmt: int = 1) -> bytes:
    """A context whose checksum is right but whose payload is whatever the test wants."""
    body = b"DRC" + bytes([fmt]) + payload
    return body + ctxmod._digest(body)


@given(vvs, tags)
def test_bytes_round_trip(vv, tag):
    ctx = Context(vv, tag)
    data = bytes(ctx)
    assert isinstance(data, bytes)
    out = Context.from_bytes(data)
    assert out == ctx
    assert hash(out) == hash(ctx)
    assert out.version_vector == vv
    assert out.tag == tag


@given(vvs, tags, st.integers(0, 2**63 - 1))
def test_a_stamp_round_trips_and_a_context_without_one_reads_as_before(vv, tag, stamp):
    ctx = Context(vv, tag, stamp)
    out = Context.from_bytes(bytes(ctx))
    assert out == ctx and out.stamp == stamp
    assert (out == Context(vv, tag)) == (stamp == 0)
    plain = signed(codec.pack([versions.vv_to_wire(vv), tag]), fmt=2)  # saved before stamps
    assert Context.from_bytes(plain) == Context(vv, tag)


@pytest.mark.parametrize("stamp", [-1, "5", 1.5, True, 2**63, 2**64 - 1])
def test_a_bad_stamp_is_refused(stamp):
    with pytest.raises(InvalidContext, match="stamp"):
        Context.from_bytes(signed(codec.pack([[["n1", 1]], 5, stamp]), fmt=2))


def test_bytearray_and_memoryview_accepted():
    data = bytes(make())
    assert Context.from_bytes(bytearray(data)) == make()
    assert Context.from_bytes(memoryview(data)) == make()


def test_equality_and_hash():
    a, b = make(), make()
    assert a == b and hash(a) == hash(b)
    assert len({a, b}) == 1
    assert make() != make(vv=(("n1", 3),))
    assert make() != make(hashed=OTHER)
    assert make() != bytes(make())
    assert make() != VV
    assert "3 node(s)" in repr(make())


def test_from_bytes_rejects_empty():
    with pytest.raises(InvalidContext, match="too short or wrong header"):
        Context.from_bytes(b"")


def test_from_bytes_rejects_wrong_magic():
    data = bytes(make())
    with pytest.raises(InvalidContext, match="wrong header"):
        Context.from_bytes(b"XRC" + data[3:])
    with pytest.raises(InvalidContext, match="wrong header"):
        Context.from_bytes(b"\x00" * len(data))


@pytest.mark.parametrize("fmt", [0, 1, 255])  # 1: before the 64-bit key fingerprint
def test_from_bytes_rejects_other_format(fmt):
    data = bytes(make())
    with pytest.raises(InvalidContext, match=f"format {fmt} is not supported"):
        Context.from_bytes(data[:3] + bytes([fmt]) + data[4:])
    # even with a valid checksum for that format
    with pytest.raises(InvalidContext, match="read the key again"):
        Context.from_bytes(signed(data[4:-8], fmt))


def test_from_bytes_rejects_every_truncation():
    data = bytes(make())
    for cut in range(len(data)):
        with pytest.raises(InvalidContext):
            Context.from_bytes(data[:cut])


@given(vvs, tags, st.data())
def test_from_bytes_rejects_any_flipped_byte(vv, tag, data):
    raw = bytearray(bytes(Context(vv, tag)))
    position = data.draw(st.integers(0, len(raw) - 1), label="position")
    mask = data.draw(st.integers(1, 255), label="mask")
    raw[position] ^= mask
    with pytest.raises(InvalidContext):
        Context.from_bytes(bytes(raw))


@given(st.binary(min_size=1, max_size=32))
def test_from_bytes_rejects_extra_bytes(extra):
    with pytest.raises(InvalidContext, match="checksum"):
        Context.from_bytes(bytes(make()) + extra)


@pytest.mark.parametrize("value", [None, "DRC", 42, [1, 2], make()])
def test_from_bytes_rejects_non_bytes(value):
    with pytest.raises(InvalidContext, match="context bytes expected"):
        Context.from_bytes(value)


@pytest.mark.parametrize(
    "payload",
    [
        codec.pack({"a": 1}),
        codec.pack([[["n1", 1]]]),
        codec.pack([[["n1", 1]], "tag"]),
        codec.pack([[["n2", 1], ["n1", 1]], 5]),  # unsorted version vector
        codec.pack([[["n1", -1]], 5]),
        codec.pack([[["n1", 1]], 5]) + b"\x00",  # trailing data
        b"\xc1",
        b"",
    ],
)
def test_from_bytes_rejects_malformed_payload_with_valid_checksum(payload):
    with pytest.raises(InvalidContext):
        Context.from_bytes(signed(payload))


@given(st.binary(max_size=64))
def test_from_bytes_never_raises_anything_but_invalid_context(payload):
    try:
        out = Context.from_bytes(signed(payload))
    except InvalidContext:
        return
    assert isinstance(out, Context)
    assert Context.from_bytes(bytes(out)) == out


def test_invalid_context_is_a_value_error():
    with pytest.raises(ValueError):
        Context.from_bytes(b"junk")


# -- check_context -----------------------------------------------------------------------


def test_check_context_none_is_first_write():
    assert check_context(None, HASHED) == ()


def test_check_context_accepts_context_and_its_bytes():
    ctx = make()
    assert check_context(ctx, HASHED) == VV
    assert check_context(bytes(ctx), HASHED) == VV
    assert check_context(bytearray(bytes(ctx)), HASHED) == VV
    assert check_context(memoryview(bytes(ctx)), HASHED) == VV


def test_check_context_refuses_other_key():
    for ctx in (make(hashed=OTHER), bytes(make(hashed=OTHER))):
        with pytest.raises(InvalidContext, match="different key"):
            check_context(ctx, HASHED)
    # same key in another bucket is another key
    with pytest.raises(InvalidContext, match="different key"):
        check_context(make(), codec.hash_input(b"other", b"cart:1"))


@pytest.mark.parametrize("value", [42, "context", VV, [("n1", 1)], {"n1": 1}, 1.0])
def test_check_context_refuses_wrong_type(value):
    with pytest.raises(InvalidContext, match="must be a dynaray.Context"):
        check_context(value, HASHED)


def test_check_context_refuses_corrupt_bytes():
    data = bytearray(bytes(make()))
    data[5] ^= 0x01
    with pytest.raises(InvalidContext):
        check_context(bytes(data), HASHED)


def test_two_keys_that_shared_a_32_bit_fingerprint_have_their_own_contexts():
    """user:60049 and user:187876 had one mmh3 fingerprint: a context of one was taken
    for the other's, and its write discarded the other key's value as already seen."""
    a, b = (codec.hash_input(b"default", k) for k in (b"user:60049", b"user:187876"))
    assert key_tag(a) != key_tag(b)
    with pytest.raises(InvalidContext, match="different key"):
        check_context(Context(VV, key_tag(a)), b)


def test_a_bad_context_is_refused_when_the_write_is_made_before_anything_is_sent():
    """Its key and store are checked once the client has the ring; its bytes and type at
    once, so an unreachable store still answers InvalidContext, not Unavailable."""
    from dynaray.client import siblings_op

    with pytest.raises(InvalidContext, match="checksum|too short|wrong header"):
        siblings_op(b"junk", None)
    with pytest.raises(InvalidContext, match="must be a dynaray.Context"):
        siblings_op("a string", None)
    assert siblings_op(None, b"v")(HASHED) == ["siblings", [], b"v"]
