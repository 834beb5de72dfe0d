"""The coordinator's quorum bookkeeping: whom to ask (sloppy quorum) and when enough answered.

Pure logic, no I/O: the node feeds it answers and failures, it says who to ask next and
whether the request succeeded. Names follow the Dynamo paper: the preference list, the top
N healthy nodes, and fallbacks that hold a hint for the primary they stand in for.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dynaray import codec

if TYPE_CHECKING:
    from dynaray.ring import Ring


@dataclass(frozen=True)
class Target:
    """One replica of a request. `hint` names the primary a fallback stands in for."""

    node: str
    hint: str | None = None


def check_quorum(n: int, r: int, w: int, nodes: int) -> None:
    """Validate N/R/W for a store of `nodes` nodes; ValueError that says what to change."""
    for name, value in (("n", n), ("r", r), ("w", w)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    over = [f"{name}={value}" for name, value in (("r", r), ("w", w)) if value > n]
    if over:
        raise ValueError(f"{' and '.join(over)} must not exceed n={n}: a quorum is a subset of N")
    if n > nodes:
        raise ValueError(f"n={n} replicas need at least {n} nodes; the store has {nodes}")


def select(
    preference: Sequence[str], n: int, is_up: Callable[[str], bool], needed: int = 0
) -> list[Target]:
    """The first N healthy nodes of the extended preference list (the paper's sloppy quorum).

    A primary (one of the first N) that is down is replaced by the next healthy node past
    the first N, which receives the write with a hint naming that primary.

    When fewer than `needed` (R or W) look healthy, the uncovered primaries that look down
    are asked too: a suspicion can be wrong (heartbeats stall on a busy machine), and a
    request that cannot reach its quorum without them fails anyway, so trying them costs
    at most their deadline.
    """
    spares = [node for node in preference[n:] if is_up(node)]
    targets = []
    for primary in preference[:n]:
        if is_up(primary):
            targets.append(Target(primary))
        elif spares:
            targets.append(Target(spares.pop(0), hint=primary))
    covered = {t.hint or t.node for t in targets}
    for primary in preference[:n]:
        if len(targets) >= needed:
            break
        if primary not in covered:
            targets.append(Target(primary))
    return targets


def locate(ring: Ring, bucket: bytes, key: bytes) -> tuple[int, bytes]:
    """A key's partition on the ring and its data key (partition, segment, bucket, key)."""
    hashed = codec.hash_input(bucket, key)
    partition, segment = ring.locate(hashed)
    return partition, codec.placed_key(partition, segment, hashed)


def route(
    ring: Ring,
    bucket: bytes,
    key: bytes,
    n: int,
    needed: int,
    is_up: Callable[[str], bool],
    sloppy: bool = True,
) -> tuple[bytes, list[str], list[Target]]:
    """Where one request goes, for whoever coordinates it (a node, or a client reading):
    the key's data key, its preference list (extended past N with spares when `sloppy`),
    and the targets select() picks from it."""
    partition, dkey = locate(ring, bucket, key)
    return (dkey, *plan(ring, partition, n, needed, is_up, sloppy))


def plan(
    ring: Ring,
    partition: int,
    n: int,
    needed: int,
    is_up: Callable[[str], bool],
    sloppy: bool = True,
) -> tuple[list[str], list[Target]]:
    """The preference list of a partition (extended past N with spares when `sloppy`) and
    the targets select() picks from it: the same for every key of the partition, so a
    batch works it out once per partition."""
    preference = list(ring.preference_list(partition))
    if not sloppy:
        preference = preference[:n]
    return preference, select(preference, n, is_up, needed)


def all_in_person(targets: Sequence[Target], is_up: Callable[[str], bool]) -> bool:
    """Every target is a primary asked for its own copy (no stand-in) and looks up: a
    batch can take such keys together; the rest take the one-key path's fallbacks."""
    return all(t.hint is None and is_up(t.node) for t in targets)


class Tally:
    """Answers of one request's replicas against its quorum of `needed`.

    A replica that fails is replaced by the next unused fallback that looks healthy at the
    request's first failure (not at its start: most requests never fail), which then
    stands in for the failed replica's primary; when no healthy one is left and the
    quorum needs it, by a node that looks down. A replacement that is itself one of the
    key's `n` primaries is asked in person (no hint): it keeps its own copy, which its
    own reads see, and the failed primary's copy is left to the caller (a coordinator
    keeps it as a hint).
    """

    def __init__(
        self,
        preference: Sequence[str],
        targets: Sequence[Target],
        needed: int,
        is_up: Callable[[str], bool] = lambda _: True,
        n: int = 0,
    ) -> None:
        self.needed = needed
        self.targets = list(targets)
        self._preference = preference
        self._n = n
        self._is_up = is_up
        # Spares (healthy, unused) and doubtful nodes (look down: asked only when the quorum
        # cannot be reached otherwise), worked out at the first failure: most requests
        # never have one, and a coordinator tallies thousands of them a second.
        self._spares: list[str] | None = None
        self._doubtful: list[str] = []
        self.ok: list[str] = []
        self.failed: list[str] = []

    def _find_spares(self) -> None:
        used = {t.node for t in self.targets}
        unused = [p for p in self._preference if p not in used]
        self._spares = [p for p in unused if self._is_up(p)]
        self._doubtful = [p for p in unused if p not in self._spares]

    @property
    def asked(self) -> int:
        return len(self.targets)

    def answered(self, node: str) -> None:
        self.ok.append(node)

    def failure(self, target: Target) -> Target | None:
        """Record that target did not answer; return the fallback to ask instead, if any."""
        self.failed.append(target.node)
        if self._spares is None:
            self._find_spares()
        if self._spares:
            node = self._spares.pop(0)
        elif self._doubtful and len(self.ok) + self.pending < self.needed:
            node = self._doubtful.pop(0)
        else:
            return None
        # A target without a hint is a primary (select() and failure() hint every stand-in),
        # so a stand-in for it, or for the primary it stood in for, carries that primary.
        primary = target.hint or target.node
        in_person = node == primary or node in self._preference[: self._n]
        replacement = Target(node, hint=None if in_person else primary)
        self.targets.append(replacement)
        return replacement

    @property
    def reached(self) -> bool:
        return len(self.ok) >= self.needed

    @property
    def settled(self) -> bool:
        """For a read: the quorum is reached and no stand-in's answer takes the place of a
        primary still to answer. A stand-in holds only the writes made while it stood in,
        so R answers that include one are final only once every primary asked in person
        has answered or failed: otherwise a stand-in's "not found" and a lagging primary's
        could hide a write that a live, slower primary holds."""
        if not self.reached:
            return False
        in_person = {t.node for t in self.targets if t.hint is None}
        if all(node in in_person for node in self.ok):
            return True
        done = {*self.ok, *self.failed}
        return in_person <= done

    @property
    def pending(self) -> int:
        return len(self.targets) - len(self.ok) - len(self.failed)

    @property
    def hopeless(self) -> bool:
        """No way left to reach the quorum: too few pending and no spares."""
        return not self.reached and len(self.ok) + self.pending < self.needed
