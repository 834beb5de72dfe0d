"""Consistent hashing with Dynamo's partitioning strategy 3: the 32-bit mmh3 hash space is cut into
Q fixed, equal-size partitions, and each partition is owned by one physical node."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import mmh3

DEFAULT_PARTITIONS = 256
WIRE_FORMAT = 1

_HASH_BITS = 32
# Replicas sit on the owners of consecutive partitions, so keeping each node's partitions at least
# this far apart makes the first three entries of a preference list the owners of p, p+1 and p+2:
# replica load then follows ownership, which the claim rules keep balanced.
_SPACING = 3
_WIRE_KEYS = frozenset({"v", "partitions", "owners", "version"})
# Written since 0.2.0; a ring stored by an earlier version has none.
_OPTIONAL_WIRE_KEYS = frozenset({"departed"})
# Stands in `departed` for nodes that may have left before departures were recorded (a
# changed ring written by 0.1.0): their ids are not known, so no id is known unused.
UNKNOWN_DEPARTED = "*"


# Each partition is cut into 2**SEGMENT_BITS segments by the hash bits below the partition
# bits: the leaves of the partition's Merkle tree, and contiguous ranges in LMDB.
SEGMENT_BITS = 10
SEGMENTS = 1 << SEGMENT_BITS
MAX_PARTITIONS = 1 << (_HASH_BITS - SEGMENT_BITS)


def key_hash(data: bytes) -> int:
    """The key's position on the ring: its unsigned 32-bit mmh3 hash."""
    return mmh3.hash(data, signed=False)


def check_partitions(partitions: object) -> int:
    # A power of two makes every partition exactly the same size (2**32 / Q hashes) and turns
    # partition_of into a shift; fewer than 8 partitions leaves nothing to balance with.
    if (
        not isinstance(partitions, int)
        or isinstance(partitions, bool)
        or partitions < 8
        or partitions > MAX_PARTITIONS
        or partitions & (partitions - 1)
    ):
        raise ValueError(
            f"partitions must be a power of two between 8 and {MAX_PARTITIONS}, got {partitions!r}"
        )
    return partitions


def _check_node_id(node: object) -> str:
    if not isinstance(node, str) or not node:
        raise ValueError(f"a node id must be a non-empty string, got {node!r}")
    return node


def _mark_taken(dist: list[int], taken: int) -> None:
    """Lower ``dist`` (ring distance to the nearest partition the new node holds) around ``taken``.

    The walk outwards stops as soon as neither side improves: past that point another of the new
    node's partitions is nearer, so the total work stays far below Q per call.
    """
    size = len(dist)
    dist[taken] = 0
    for step in range(1, size // 2 + 1):
        improved = False
        for p in ((taken + step) % size, (taken - step) % size):
            if dist[p] > step:
                dist[p] = step
                improved = True
        if not improved:
            return


def _crowded(owners: Sequence[str], p: int) -> bool:
    """Whether another partition within 2 of ``p`` has the same owner."""
    q = len(owners)
    node = owners[p]
    return any(owners[(p + d) % q] == node for d in range(-_SPACING + 1, _SPACING) if d)


@dataclass(frozen=True)
class Ring:
    """An immutable partition-to-node assignment; membership changes return a new Ring.

    ``departed`` names every node that has left the ring. Such an id is never given out
    again: a node's id is the actor of the dots it issues, and a newcomer reusing one would
    start counting from 1 where the old node's dots still sit in the keys' version vectors,
    so its writes would look already seen and be dropped.
    """

    partitions: int
    owners: tuple[str, ...]
    version: int = 1
    departed: tuple[str, ...] = ()
    # Derived once in __post_init__ (the Ring never changes), so lookups are plain indexing.
    _shift: int = field(init=False, repr=False, compare=False)
    _nodes: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _owned: dict[str, tuple[int, ...]] = field(init=False, repr=False, compare=False)
    # Built on first use: a ring that only travels over the wire never pays for it.
    _prefs: tuple[tuple[str, ...], ...] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        q = check_partitions(self.partitions)
        owners = self.owners
        if not isinstance(owners, tuple | list):
            raise ValueError(f"owners must be a sequence of node ids, got {type(owners).__name__}")
        owners = tuple(owners)
        if len(owners) != q:
            raise ValueError(f"owners has {len(owners)} entries, expected one per partition ({q})")
        version = self.version
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ValueError(f"version must be a positive integer, got {version!r}")
        owned: dict[str, list[int]] = {}
        for p, node in enumerate(owners):
            owned.setdefault(_check_node_id(node), []).append(p)
        if isinstance(self.departed, str) or not isinstance(self.departed, tuple | list):
            raise ValueError(f"departed must be a sequence of node ids, got {self.departed!r}")
        departed = tuple(sorted({_check_node_id(node) for node in self.departed}))
        if UNKNOWN_DEPARTED in owned:
            raise ValueError(f"{UNKNOWN_DEPARTED!r} is not a node id")
        back = sorted(set(departed) & owned.keys())
        if back:
            raise ValueError(f"departed nodes {', '.join(map(repr, back))} own partitions")
        # Frozen dataclass: object.__setattr__ is the sanctioned way to fill derived fields.
        object.__setattr__(self, "owners", owners)
        object.__setattr__(self, "departed", departed)
        object.__setattr__(self, "_shift", _HASH_BITS - (q.bit_length() - 1))
        object.__setattr__(self, "_nodes", tuple(sorted(owned)))
        object.__setattr__(self, "_owned", {n: tuple(ps) for n, ps in owned.items()})

    def __reduce__(self) -> tuple[type[Ring], tuple[int, tuple[str, ...], int, tuple[str, ...]]]:
        # Ship only the real fields (Ray pickles rings between actors); the caches, which can
        # hold Q * nodes entries, are rebuilt on the other side.
        return (type(self), (self.partitions, self.owners, self.version, self.departed))

    @classmethod
    def create(cls, nodes: Sequence[str], partitions: int = DEFAULT_PARTITIONS) -> Ring:
        """A ring of ``partitions`` partitions dealt round-robin over the sorted node ids."""
        check_partitions(partitions)
        if isinstance(nodes, str | bytes):
            raise ValueError("nodes must be a sequence of node ids, not a single string")
        ids = [_check_node_id(n) for n in nodes]
        if not ids:
            raise ValueError("a ring needs at least one node")
        duplicates = sorted(n for n, count in Counter(ids).items() if count > 1)
        if duplicates:
            raise ValueError(f"duplicate node ids: {', '.join(map(repr, duplicates))}")
        if len(ids) > partitions:
            raise ValueError(
                f"{len(ids)} nodes but only {partitions} partitions: every node must own at "
                "least one; use more partitions"
            )
        ids.sort()
        # Round-robin puts different nodes on neighbouring partitions, so each node's partitions
        # are len(ids) apart and replica sets are the owners of consecutive partitions.
        k = len(ids)
        return cls(partitions, tuple(ids[p % k] for p in range(partitions)))

    def partition_of(self, data: bytes) -> int:
        """The partition holding key ``data``: key_hash(data) * Q >> 32."""
        # Q is a power of two, so the multiply-and-shift is a single shift.
        return mmh3.hash(data, signed=False) >> self._shift

    def locate(self, data: bytes) -> tuple[int, int]:
        """(partition, segment) of key ``data``: the segment is the next SEGMENT_BITS bits."""
        h = mmh3.hash(data, signed=False)
        return h >> self._shift, (h >> (self._shift - SEGMENT_BITS)) & (SEGMENTS - 1)

    def preference_list(self, partition: int) -> tuple[str, ...]:
        """Every node once, in ring order from ``partition``: the first N are its replicas and the
        rest are the fallbacks for sloppy quorum."""
        prefs = self._prefs
        if prefs is None:
            prefs = self._build_preferences()
        if not 0 <= partition < self.partitions:
            raise ValueError(f"partition {partition!r} is outside [0, {self.partitions})")
        return prefs[partition]

    def _build_preferences(self) -> tuple[tuple[str, ...], ...]:
        owners = self.owners
        q = self.partitions
        # Walking from p meets owners[p] and then, in the same order, every other node that the
        # walk from p + 1 meets; so one backward sweep builds all Q lists in O(Q * nodes) instead
        # of walking the ring Q times.
        first: list[str] = []
        seen: set[str] = set()
        for node in owners:
            if node not in seen:
                seen.add(node)
                first.append(node)
                if len(first) == len(self._nodes):
                    break
        prefs: list[tuple[str, ...]] = [()] * q
        prefs[0] = nxt = tuple(first)
        for p in range(q - 1, 0, -1):
            head = owners[p]
            if nxt[0] != head:
                nxt = (head, *(n for n in nxt if n != head))
            prefs[p] = nxt
        result = tuple(prefs)
        object.__setattr__(self, "_prefs", result)
        return result

    def nodes(self) -> tuple[str, ...]:
        """The distinct node ids, sorted."""
        return self._nodes

    def unused_id(self, taken: Iterable[str] = ()) -> str:
        """An id for a joining node that no node of this ring has had (as far as the ring
        knows: `departures_known`), nor any id in `taken`: "n" and one above the highest
        number among them all."""
        used = (
            int(n[1:])
            for n in (*self._nodes, *self.departed, *taken)
            if n[:1] == "n" and n[1:].isascii() and n[1:].isdigit()
        )
        return f"n{max(used, default=0) + 1}"

    @property
    def departures_known(self) -> bool:
        """Whether `departed` names every node that ever left this ring."""
        return UNKNOWN_DEPARTED not in self.departed

    def partitions_of(self, node: str) -> tuple[int, ...]:
        """The partitions ``node`` owns (primary), ascending; empty for an unknown node."""
        return self._owned.get(node, ())

    def replicated_partitions(self, node: str, n: int) -> tuple[int, ...]:
        """The partitions whose first ``n`` preference-list entries include ``node``: the key
        ranges it stores with replication factor ``n``."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"replication factor must be a positive integer, got {n!r}")
        if node not in self._owned:
            return ()
        pref = self.preference_list
        return tuple(p for p in range(self.partitions) if node in pref(p)[:n])

    def with_node(self, node: str) -> Ring:
        """The ring after ``node`` joins: it takes floor(Q / (nodes + 1)) partitions, one at a time
        from nodes above their new share, and no other partition changes owner."""
        _check_node_id(node)
        if node in self._owned:
            raise ValueError(f"node {node!r} is already in the ring")
        if node in self.departed:
            raise ValueError(
                f"node id {node!r} belonged to a node that left the ring; give the new node "
                "an id never used before"
            )
        q = self.partitions
        k = len(self._nodes)
        if k + 1 > q:
            raise ValueError(f"cannot add {node!r}: {k + 1} nodes would exceed the {q} partitions")
        # The newcomer ends with the floor of Q / (k + 1); the old nodes keep the rest, `extra` of
        # them one above the floor. `lows` counts old nodes already at (or below) the floor, so a
        # donor at floor + 1 may only give while the floor still has room.
        take, extra = divmod(q, k + 1)
        owners = list(self.owners)
        owned = {n: set(ps) for n, ps in self._owned.items()}
        load = {n: len(ps) for n, ps in owned.items()}
        lows = sum(1 for count in load.values() if count <= take)
        dist = [q] * q
        crowded = {p for p in range(q) if _crowded(owners, p)}
        for _ in range(take):
            donors = [
                n
                for n in self._nodes
                if load[n] > take + 1 or (load[n] == take + 1 and lows < k - extra)
            ]
            # Never empty, even for a hand-made unbalanced ring: until the newcomer has `take`,
            # the old nodes hold more than k * take + extra partitions, so one is above its share.
            # Any donor that keeps the balance will do, so the partition is picked for spacing:
            # first one 3 away from the newcomer's that sits too close to another of its owner's
            # (leaves leave such pairs behind and only a join can undo them), else the one
            # farthest from the newcomer's; then from the most-loaded donor, then lowest index.
            eligible = set(donors)
            pool = [p for p in crowded if dist[p] >= _SPACING and owners[p] in eligible]
            part = max(
                pool or (p for d in donors for p in owned[d]),
                key=lambda p: (dist[p], load[owners[p]], -p),
            )
            donor = owners[part]
            owners[part] = node
            owned[donor].remove(part)
            load[donor] -= 1
            if load[donor] == take:
                lows += 1
            _mark_taken(dist, part)
            for d in range(-_SPACING + 1, _SPACING):
                p = (part + d) % q
                if _crowded(owners, p):
                    crowded.add(p)
                else:
                    crowded.discard(p)
        return Ring(q, tuple(owners), self.version + 1, self.departed)

    def without_node(self, node: str) -> Ring:
        """The ring after ``node`` leaves: each of its partitions goes to a least-loaded remaining
        node, and no other partition changes owner."""
        if node not in self._owned:
            raise ValueError(f"node {node!r} is not in the ring")
        if len(self._nodes) == 1:
            raise ValueError(f"cannot remove {node!r}: it is the last node of the ring")
        q = self.partitions
        rest = [n for n in self._nodes if n != node]
        # The survivors end with floor(Q / m) or one more, `extra` of them one more. A receiver
        # must stay within that; among those that do, the least-loaded one whose partitions are
        # not within 2 of this one is preferred, so replica sets stay three neighbouring owners.
        floor, extra = divmod(q, len(rest))
        owners = list(self.owners)
        load = {n: len(self._owned[n]) for n in rest}
        highs = sum(1 for count in load.values() if count > floor)
        for part in self._owned[node]:
            beside = {owners[(part - 1) % q], owners[(part + 1) % q]}
            near = beside | {owners[(part - 2) % q], owners[(part + 2) % q]}
            fits = [n for n in rest if load[n] < floor or (load[n] == floor and highs < extra)]
            # Never empty: the survivors hold fewer than Q = m * floor + extra partitions until
            # the last one is placed, so one is still below its share.
            candidates = sorted(fits, key=lambda n: (load[n], n))
            # When every candidate is near (few nodes), two apart still beats adjacent: it costs
            # the node one top-3 slot instead of two.
            chosen = next(
                (n for n in candidates if n not in near),
                next((n for n in candidates if n not in beside), candidates[0]),
            )
            owners[part] = chosen
            load[chosen] += 1
            if load[chosen] == floor + 1:
                highs += 1
        return Ring(q, tuple(owners), self.version + 1, (*self.departed, node))

    def to_wire(self) -> dict[str, object]:
        """A msgpack-able dict; ``from_wire`` reverses it."""
        return {
            "v": WIRE_FORMAT,
            "partitions": self.partitions,
            "owners": list(self.owners),
            "version": self.version,
            "departed": list(self.departed),
        }

    @classmethod
    def from_wire(cls, obj: object) -> Ring:
        """The Ring encoded by ``to_wire``; ValueError if ``obj`` is not a valid encoding."""
        if not isinstance(obj, dict):
            raise ValueError(f"ring wire form must be a dict, got {type(obj).__name__}")
        missing = _WIRE_KEYS - obj.keys()
        if missing:
            raise ValueError(f"ring wire form lacks {', '.join(sorted(missing))}")
        unknown = obj.keys() - _WIRE_KEYS - _OPTIONAL_WIRE_KEYS
        if unknown:
            raise ValueError(f"ring wire form has unknown keys {sorted(map(repr, unknown))}")
        fmt = obj["v"]
        if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt != WIRE_FORMAT:
            raise ValueError(
                f"ring wire format {fmt!r} is not supported; this build reads {WIRE_FORMAT}"
            )
        owners = obj["owners"]
        if not isinstance(owners, list | tuple):
            raise ValueError(f"ring wire owners must be a list, got {type(owners).__name__}")
        # A changed ring written before departures were recorded: some may have left.
        unknown = [UNKNOWN_DEPARTED] if obj["version"] != 1 else []
        departed = obj.get("departed", unknown)
        if not isinstance(departed, list | tuple):
            raise ValueError(f"ring wire departed must be a list, got {type(departed).__name__}")
        try:
            return cls(obj["partitions"], tuple(owners), obj["version"], tuple(departed))
        except ValueError as exc:
            raise ValueError(f"invalid ring wire form: {exc}") from None
