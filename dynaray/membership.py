"""Gossip membership and failure detection, as pure state: no Ray, no I/O, an injected clock.

Each node keeps, per known node, an (incarnation, heartbeat) pair. A node bumps its own
heartbeat every gossip round and its incarnation every time it starts, so after a restart
its news outranks anything said about its previous life; one that hears of an earlier life
outranking it (it lost the count with its disk) jumps past it. Gossip merges views so the
larger pair wins. Failure detection is local: a node whose pair has not advanced for
`suspect_after` seconds is suspect, for `down_after` seconds down, and up again as soon as
fresh news of it arrives.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

UP = "up"
SUSPECT = "suspect"
DOWN = "down"


@dataclass
class _Peer:
    incarnation: int
    heartbeat: int
    heard: float  # our clock when the pair last advanced


class Membership:
    """One node's view of the cluster."""

    def __init__(
        self,
        me: str,
        incarnation: int,
        nodes: list[str] | tuple[str, ...] = (),
        *,
        suspect_after: float = 3.0,
        down_after: float = 6.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < suspect_after <= down_after:
            raise ValueError("need 0 < suspect_after <= down_after")
        self.me = me
        self.clock = clock
        self.suspect_after = suspect_after
        self.down_after = down_after
        now = clock()
        self.peers: dict[str, _Peer] = {me: _Peer(incarnation, 0, now)}
        for node in nodes:
            self.add(node)

    def add(self, node: str) -> None:
        """Start tracking a node; it gets the benefit of the doubt for one detection period."""
        if node not in self.peers:
            self.peers[node] = _Peer(0, 0, self.clock())

    def remove(self, node: str) -> None:
        if node != self.me:
            self.peers.pop(node, None)

    def tick(self) -> None:
        """A sign of life of ours (a gossip round, or an answer to a peer's): our
        heartbeat advances."""
        mine = self.peers[self.me]
        mine.heartbeat += 1
        mine.heard = self.clock()

    @property
    def incarnation(self) -> int:
        return self.peers[self.me].incarnation

    def digest(self) -> dict[str, list[int]]:
        """What we gossip: {node: [incarnation, heartbeat]}."""
        return {node: [p.incarnation, p.heartbeat] for node, p in self.peers.items()}

    def merge(self, digest: dict[str, list[int]]) -> list[str]:
        """Take newer news from a peer's digest; returns the nodes that came back up."""
        now = self.clock()
        revived = []
        for node, (incarnation, heartbeat) in digest.items():
            if node == self.me:
                # Only we speak for ourselves, but news of us that outranks ours is of an
                # earlier life whose incarnation we lost (a node back with an empty disk,
                # where the count is kept): outrank it, or the others never hear us again.
                # (Two live processes with one id would outrank each other without end;
                # Cluster.restart never starts a node that still answers.)
                mine = self.peers[node]
                if (incarnation, heartbeat) > (mine.incarnation, mine.heartbeat):
                    mine.incarnation = incarnation + 1
                continue
            known = self.peers.get(node)
            if known is None:
                continue  # membership changes come with the ring, not with rumours
            if (incarnation, heartbeat) > (known.incarnation, known.heartbeat):
                if self.status(node) == DOWN:
                    revived.append(node)
                known.incarnation, known.heartbeat, known.heard = incarnation, heartbeat, now
        return revived

    def status(self, node: str) -> str:
        if node == self.me:
            return UP
        peer = self.peers.get(node)
        if peer is None:
            return DOWN
        silence = self.clock() - peer.heard
        if silence >= self.down_after:
            return DOWN
        if silence >= self.suspect_after:
            return SUSPECT
        return UP

    def is_up(self, node: str) -> bool:
        """Worth sending requests to: up or merely suspect."""
        return self.status(node) != DOWN

    def statuses(self) -> dict[str, str]:
        return {node: self.status(node) for node in self.peers}

    def gossip_targets(self) -> tuple[list[str], list[str]]:
        """(live peers, down peers): gossip goes to a live one, sometimes to a down one, so a
        returning node is noticed even when nobody else talks to it."""
        live, down = [], []
        for node in self.peers:
            if node != self.me:
                (live if self.is_up(node) else down).append(node)
        return live, down
