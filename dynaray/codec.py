"""How keys and values become bytes, and how they are checked on the way back.

Values are serialized in the client only (bytes stay bytes, anything else goes through
cloudpickle); storage nodes handle opaque bytes and never unpickle.
"""

from __future__ import annotations

import struct
from typing import Any

import cloudpickle
import msgpack

# LMDB's compiled-in key limit (lmdb.Environment.max_key_size()); checked in the client so a
# bad key fails before anything is sent.
MAX_KEY_SIZE = 511
MAX_BUCKET_SIZE = 64
# The longest node id ("n" and a number): a hint's LMDB key is the data key after its
# owner's id and that id's length (dynaray/hints.py), so user keys leave room for one.
MAX_NODE_ID_SIZE = 16
# The largest value a write takes, as encoded (1 MiB, the order of etcd's request limit
# and of what Riak advises per object). A value travels inside actor calls batched with
# others (up to a few hundred records a call), and so bounds their size; hint and handoff
# batches are also bounded in bytes (CALL_BYTES). Larger data belongs in Ray's
# object store or a file, with its reference stored here.
MAX_VALUE_SIZE = 1 << 20
# A batch of records read to go out in one call (hints, a range being handed over, an
# anti-entropy repair) stops at about this many bytes, whatever its count: values of up to
# a MiB would make a 500-record batch half a gigabyte.
CALL_BYTES = 4 << 20
DEFAULT_BUCKET = "default"

_RAW = b"\x00"
_PICKLED = b"\x01"

_PARTITION = struct.Struct(">I")
_SEGMENT = struct.Struct(">H")
_PREFIX = _PARTITION.size + _SEGMENT.size


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def encode_value(value: object) -> bytes:
    """Client side: bytes are kept as they are, any other object is cloudpickled; a value
    larger than MAX_VALUE_SIZE is refused."""
    if isinstance(value, bytes):
        _check_value_size(len(value), value)  # before copying a huge value
        return _RAW + value
    try:
        data = _PICKLED + cloudpickle.dumps(value)
    except Exception as exc:  # cloudpickle raises many types; the user needs one message
        raise ValueError(
            f"value of type {type(value).__name__} cannot be serialized with cloudpickle: {exc}; "
            "store bytes or a picklable object"
        ) from exc
    _check_value_size(len(data) - 1, value)
    return data


def encode_element(element: object) -> bytes:
    """Client side: a set element's bytes, which tell it apart from the set's others.

    As encode_value, but equal elements get equal bytes however they were built: pickle
    writes an object met twice as a reference to the first, so ("ab", "ab") made of one
    string and made of two equal strings pickled differently, and a remove of one form
    missed the other. Equal str, bytes, numbers and tuples inside the element are made one
    object first. An element stored before this gets the same bytes unless it held equal
    but separate objects.
    """
    try:
        return encode_value(_shared(element, {})[0])
    except RecursionError:
        raise ValueError("set element is nested too deeply to store") from None


def _shared(value: object, seen: dict) -> tuple[object, object]:
    """value, with every equal str, bytes, number and tuple in it replaced by one object
    (per `seen`, {identity: object}), and its identity: what makes two parts of an element
    the same part, their type and value (a float by its exact bits, so 0.0 and -0.0 stay
    two), or the object itself for other types, which are left as they are."""
    kind = type(value)
    if kind is tuple:
        parts = [_shared(item, seen) for item in value]  # type: ignore[union-attr]
        value = tuple(part for part, _ in parts)
        identity: object = (tuple, tuple(same for _, same in parts))
    elif kind is float:
        identity = (float, value.hex())  # type: ignore[union-attr]
    elif kind is complex:
        identity = (complex, value.real.hex(), value.imag.hex())  # type: ignore[union-attr]
    elif kind in _ATOMS:
        identity = (kind, value)
    else:
        return value, (kind, id(value))
    return seen.setdefault(identity, value), identity


_ATOMS = frozenset({str, bytes, int, bool, float, complex, type(None)})


def _check_value_size(size: int, value: object) -> None:
    if size > MAX_VALUE_SIZE:
        raise ValueError(
            f"value is {size:,} bytes ({type(value).__name__}, as stored); the limit is "
            f"{MAX_VALUE_SIZE:,} bytes, and nothing was written. Keep large data in Ray's "
            "object store or a file and store its reference, or split it over several keys"
        )


def decode_value(data: bytes) -> object:
    """Client side: the inverse of encode_value."""
    tag, body = data[:1], data[1:]
    if tag == _RAW:
        return bytes(body)
    if tag == _PICKLED:
        return cloudpickle.loads(body)
    raise ValueError(f"stored value has unknown encoding tag {tag!r}")


def key_bytes(key: object) -> bytes:
    """A user key as bytes: str is UTF-8 encoded, bytes are kept; anything else is refused."""
    if isinstance(key, str):
        try:
            return key.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"key {key!r} is a str that UTF-8 cannot encode ({exc.reason} at index "
                f"{exc.start}); pass the key as bytes"
            ) from None
    if isinstance(key, bytes):
        return key
    raise ValueError(f"key must be str or bytes, not {type(key).__name__}")


def bucket_bytes(bucket: str) -> bytes:
    if not isinstance(bucket, str) or not bucket:
        raise ValueError("bucket name must be a non-empty str")
    try:
        data = bucket.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"bucket name {bucket!r} is a str that UTF-8 cannot encode ({exc.reason}); "
            "name the bucket with text UTF-8 can encode"
        ) from None
    if len(data) > MAX_BUCKET_SIZE:
        raise ValueError(f"bucket name is {len(data)} bytes; the limit is {MAX_BUCKET_SIZE}")
    return data


def key_repr(key: bytes) -> str:
    """A stored key (or bucket name) as messages show it: its text, or repr() of bytes
    that are not UTF-8."""
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return repr(key)


def max_key_length(bucket: bytes, write: bool = True) -> int:
    """The longest user key a write takes: it fits LMDB's key limit after the partition and
    bucket prefix, and after a hint owner's id in front of that (a stand-in stores the key
    as a hint). Reads (`write=False`) take keys up to the longer limit of 0.1.0, which
    left no such room, so keys it stored can still be read."""
    room = (1 + MAX_NODE_ID_SIZE) if write else 0
    return MAX_KEY_SIZE - room - _PREFIX - 1 - len(bucket)


def hash_input(bucket: bytes, key: bytes) -> bytes:
    """The bytes hashed onto the ring: the bucket is part of a key's identity."""
    return bytes([len(bucket)]) + bucket + key


def check_key(bucket: bytes, key: bytes, write: bool = True) -> None:
    limit = max_key_length(bucket, write)
    if len(key) > limit:
        raise ValueError(
            f"key is {len(key)} bytes; the limit in bucket {bucket.decode()!r} is {limit} bytes "
            f"(LMDB allows {MAX_KEY_SIZE} bytes per key, less the partition and bucket prefix "
            "and room for a hint's node id); "
            "hash long keys or shorten them"
        )


def data_key(partition: int, segment: int, bucket: bytes, key: bytes) -> bytes:
    """LMDB key: partition, then Merkle segment, both big-endian, so one partition and one
    segment of it are each one contiguous range of the data database."""
    return placed_key(partition, segment, hash_input(bucket, key))


def placed_key(partition: int, segment: int, hashed: bytes) -> bytes:
    """data_key from the key's hash input, for a caller that has it already."""
    return segment_prefix(partition, segment) + hashed


def partition_prefix(partition: int) -> bytes:
    return _PARTITION.pack(partition)


def segment_prefix(partition: int, segment: int) -> bytes:
    return _PARTITION.pack(partition) + _SEGMENT.pack(segment)


def split_data_key(dkey: bytes) -> tuple[int, int, bytes, bytes]:
    """The inverse of data_key: (partition, segment, bucket, key)."""
    if len(dkey) < _PREFIX + 1:
        raise ValueError("data key is too short")
    (partition,) = _PARTITION.unpack_from(dkey)
    (segment,) = _SEGMENT.unpack_from(dkey, _PARTITION.size)
    blen = dkey[_PREFIX]
    start = _PREFIX + 1
    return partition, segment, dkey[start : start + blen], dkey[start + blen :]


def key_partition(dkey: bytes) -> int:
    """The partition of a data key (its first field)."""
    return _PARTITION.unpack_from(dkey)[0]


def location(dkey: bytes) -> tuple[int, int]:
    """(partition, segment) of a data key."""
    return key_partition(dkey), _SEGMENT.unpack_from(dkey, _PARTITION.size)[0]
