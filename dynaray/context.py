"""The opaque causal context a get returns and a put sends back (the paper's "context").

It carries the version vector of what the reader saw, bound to the key it was read from.
Its byte form is versioned msgpack with a checksum, so a truncated or corrupted context
(or one edited without recomputing the checksum, which is not a secret: it catches
accidents, not an attacker) is refused with InvalidContext instead of silently discarding
someone's write.
"""

from __future__ import annotations

import hashlib

from dynaray import codec, versions
from dynaray.errors import InvalidContext

_MAGIC = b"DRC"
# 2: the key fingerprint grew from mmh3's 32 bits to 64, so a context of one key is not
# taken for another's (two keys in 60,000 shared a 32-bit one).
_FORMAT = 2
_DIGEST = 8


def _digest(body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=_DIGEST, person=b"dynaray-ctx").digest()


def key_tag(hashed: bytes) -> int:
    """A 64-bit fingerprint of what a context is tied to (the key's bucket and name, and
    its store's id: Client._tied): wide enough that a context sent with the wrong key or
    store is refused (not taken as that key's, which could discard its newer values as
    already seen)."""
    tag = hashlib.blake2b(hashed, digest_size=8, person=b"dynaray-key").digest()
    return int.from_bytes(tag, "big")


class Context:
    """Opaque token of what a read saw. Pass it back unchanged to put or delete."""

    __slots__ = ("_vv", "_tag", "_stamp")

    def __init__(self, vv: versions.VersionVector, tag: int, stamp: int = 0) -> None:
        self._vv = vv
        self._tag = tag
        # The hybrid stamp of what was read or written, for kinds a stamp decides (lww,
        # map registers: records.STAMPED); a write sent with the context is stamped above.
        self._stamp = stamp

    @property
    def version_vector(self) -> versions.VersionVector:
        return self._vv

    @property
    def tag(self) -> int:
        return self._tag

    @property
    def stamp(self) -> int:
        return self._stamp

    def __bytes__(self) -> bytes:
        payload = [versions.vv_to_wire(self._vv), self._tag]
        if self._stamp:
            payload.append(self._stamp)
        body = _MAGIC + bytes([_FORMAT]) + codec.pack(payload)
        return body + _digest(body)

    @classmethod
    def from_bytes(cls, data: bytes) -> Context:
        """Rebuild a context from bytes(ctx). Raises InvalidContext if anything is off."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InvalidContext(f"context bytes expected, got {type(data).__name__}")
        data = bytes(data)
        if len(data) < len(_MAGIC) + 1 + _DIGEST or not data.startswith(_MAGIC):
            raise InvalidContext("not a dynaray context (too short or wrong header)")
        if data[len(_MAGIC)] != _FORMAT:
            raise InvalidContext(
                f"context format {data[len(_MAGIC)]} is not supported (expected {_FORMAT}); "
                "read the key again to get a fresh context"
            )
        body, digest = data[:-_DIGEST], data[-_DIGEST:]
        if _digest(body) != digest:
            raise InvalidContext("context checksum does not match: it was truncated or altered")
        try:
            obj = codec.unpack(body[len(_MAGIC) + 1 :])
            if not isinstance(obj, list) or len(obj) not in (2, 3) or type(obj[1]) is not int:
                raise ValueError("context payload has the wrong shape")
            stamp = obj[2] if len(obj) == 3 else 0
            if type(stamp) is not int or not 0 <= stamp < 1 << 63:
                # (the bound a write takes: records.update; a store never hands out more)
                raise ValueError("context stamp must be an integer in [0, 2**63)")
            return cls(versions.vv_from_wire(obj[0]), obj[1], stamp)
        except (ValueError, TypeError) as exc:
            raise InvalidContext(f"context payload is malformed: {exc}") from exc

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Context) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def _fields(self) -> tuple:
        return (self._vv, self._tag, self._stamp)

    def __repr__(self) -> str:
        return f"<dynaray.Context of {len(self._vv)} node(s)>"


def parse_context(context: object) -> Context | None:
    """A context as given to put or delete (a Context, its bytes, or None), checked for
    everything but the key it belongs to: before anything is sent, even the ring fetched."""
    if context is None or isinstance(context, Context):
        return context
    if isinstance(context, bytes | bytearray | memoryview):
        return Context.from_bytes(bytes(context))
    raise InvalidContext(
        f"context must be a dynaray.Context (from a get), its bytes, or None for a first "
        f"write; got {type(context).__name__}"
    )


def check_context(context: object, hashed: bytes) -> versions.VersionVector:
    """The version vector a put carries: () for None, else the context's if it is this key's."""
    context = parse_context(context)
    if context is None:
        return ()
    if context.tag != key_tag(hashed):
        raise InvalidContext(
            "this context was read from a different key (or another store); pass the "
            "context of a get of this key"
        )
    return context.version_vector
