"""The fault table of the simulated network: partitions, per-link drops and delays.

Pure data and decisions, no I/O: the transport asks it whether a message from one node to
another goes through, and after what delay. The cluster handle sets the same table on
every node, so both ends of a link agree.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Faults:
    """Which node-to-node messages are dropped or delayed. The empty table means none."""

    groups: tuple[frozenset[str], ...] = ()
    drop: dict[str, float] = field(default_factory=dict)  # "src>dst", ">dst", "src>", ">" -> p
    delay: dict[str, float] = field(default_factory=dict)  # same keys -> seconds

    @property
    def empty(self) -> bool:
        return not (self.groups or self.drop or self.delay)

    def partitioned(self, src: str, dst: str) -> bool:
        """True when src and dst sit in different groups of the partition table."""
        if not self.groups or src == dst:
            return False
        src_group = next((g for g in self.groups if src in g), None)
        dst_group = next((g for g in self.groups if dst in g), None)
        # Clients and nodes the table does not name are cut off from nobody.
        return src_group is not None and dst_group is not None and src_group is not dst_group

    def _link(self, table: dict[str, float], src: str, dst: str) -> float:
        for key in (f"{src}>{dst}", f">{dst}", f"{src}>", ">"):
            if key in table:
                return table[key]
        return 0.0

    def dropped(self, src: str, dst: str, rng: random.Random) -> bool:
        p = self._link(self.drop, src, dst) if self.drop else 0.0
        return p > 0 and rng.random() < p

    def delay_of(self, src: str, dst: str) -> float:
        return self._link(self.delay, src, dst) if self.delay else 0.0

    def to_wire(self) -> dict:
        return {
            "groups": [sorted(g) for g in self.groups],
            "drop": dict(self.drop),
            "delay": dict(self.delay),
        }

    @classmethod
    def from_wire(cls, obj: dict) -> Faults:
        return cls(
            groups=tuple(frozenset(g) for g in obj.get("groups", ())),
            drop={str(k): float(v) for k, v in obj.get("drop", {}).items()},
            delay={str(k): float(v) for k, v in obj.get("delay", {}).items()},
        )


def partition_table(groups: list[list[str]], known: list[str]) -> tuple[frozenset[str], ...]:
    """Validate a user's partition: every group non-empty, known nodes only, no node twice."""
    seen: set[str] = set()
    out = []
    for group in groups:
        if not group:
            raise ValueError("a partition group cannot be empty")
        for node in group:
            if node not in known:
                raise ValueError(f"unknown node {node!r} in partition; nodes are {sorted(known)}")
            if node in seen:
                raise ValueError(f"node {node!r} appears in two partition groups")
            seen.add(node)
        out.append(frozenset(group))
    # Nodes left out form one more group of their own, as Jepsen's partitions do.
    rest = [n for n in known if n not in seen]
    if rest:
        out.append(frozenset(rest))
    return tuple(out)


def with_rule(table: dict[str, float], link: str, value: float | None) -> dict[str, float]:
    """The rules of one kind (drops or delays) with link's set to value: None leaves it as
    it was; 0 removes it, or keeps it as 0 where a wider rule ("src>" or ">dst") would
    apply to the link (Faults._link takes the narrowest rule)."""
    if value is None:
        return table
    rules = {**table, link: value}
    src, _, dst = link.partition(">")
    wider = [w for w in (f">{dst}", f"{src}>", ">") if len(w) < len(link)]
    if value == 0 and not any(rules.get(rule) for rule in wider):
        del rules[link]
    return rules
