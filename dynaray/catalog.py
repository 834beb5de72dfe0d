"""The bucket catalog: every bucket's properties, known to every node, spread by gossip.

Bucket properties are cluster metadata, as Riak's bucket types are: a client on either side
of a partition must see the policy a bucket was created with, or it would write a counter
bucket as plain siblings. So they are not keys with quorums but a small map every node
holds whole, persists, and merges with its peers' in gossip rounds.

Properties never change once a bucket exists. The map is name -> set of encoded
properties, merged by union, so merging is commutative, associative and idempotent and all
nodes converge. A name with more than one entry was created at the same time with
different properties on two sides of a partition; readers report that conflict.
Pure: no Ray, no I/O.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

from dynaray import codec


@dataclass(frozen=True)
class BucketProps:
    """A bucket's properties, as its catalog entry holds them (encoded)."""

    policy: str = "siblings"
    r: int | None = None
    w: int | None = None

    def encode(self) -> bytes:
        return codec.pack(asdict(self))

    @classmethod
    def decode(cls, data: bytes) -> BucketProps:
        obj = codec.unpack(data)
        return cls(obj["policy"], obj.get("r"), obj.get("w"))


class Catalog:
    """name -> the set of encoded properties stored for that bucket name."""

    def __init__(self, entries: dict[str, set[bytes]] | None = None) -> None:
        self.entries: dict[str, set[bytes]] = {
            name: set(props) for name, props in (entries or {}).items() if props
        }
        self._digest: bytes | None = None  # computed once per change: gossip asks every round
        self._policies: dict[str, str | None] = {}  # decoded once per change: writes ask

    def get(self, name: str) -> list[bytes]:
        """The properties stored for name, sorted; [] for a bucket never created."""
        return sorted(self.entries.get(name, ()))

    def policy(self, name: str) -> str | None:
        """The policy stored for bucket `name`; None for a bucket without properties, or
        with two (created at once on two sides of a partition: readers report that)."""
        if name not in self._policies:
            props = self.entries.get(name, ())
            self._policies[name] = (
                BucketProps.decode(next(iter(props))).policy if len(props) == 1 else None
            )
        return self._policies[name]

    def add(self, name: str, props: bytes) -> bool:
        """Record props for name; True if that is news."""
        known = self.entries.setdefault(name, set())
        if props in known:
            return False
        known.add(props)
        self._digest = None
        self._policies.clear()
        return True

    def merge(self, other: Catalog) -> bool:
        """Take everything other knows; True if anything was news."""
        changed = False
        for name, props in other.entries.items():
            for one in props:
                changed = self.add(name, one) or changed
        return changed

    def digest(self) -> bytes:
        """A short fingerprint: equal catalogs have equal digests, so gossip sends the whole
        catalog only when two nodes' differ."""
        if self._digest is None:
            h = hashlib.blake2b(digest_size=16)
            for name in sorted(self.entries):
                encoded = name.encode()
                h.update(len(encoded).to_bytes(4, "big") + encoded)
                for props in sorted(self.entries[name]):
                    h.update(len(props).to_bytes(4, "big") + props)
            self._digest = h.digest()
        return self._digest

    def names(self) -> list[str]:
        return sorted(self.entries)

    def to_wire(self) -> dict[str, list[bytes]]:
        return {name: sorted(props) for name, props in self.entries.items()}

    @classmethod
    def from_wire(cls, wire: dict[str, list[bytes]] | None) -> Catalog:
        return cls({name: set(props) for name, props in (wire or {}).items()})

    def __len__(self) -> int:
        return len(self.entries)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Catalog) and self.entries == other.entries
