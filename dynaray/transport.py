"""The one door out of a node: every message to a peer goes through Transport.call.

Deadlines, fault injection (partitions, drops, delays), the mapping of Ray's failure modes to
"this peer did not answer", and message counters live here and nowhere else. With an empty
fault table a call is a plain actor call awaited with a deadline.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from typing import Any

from ray.exceptions import GetTimeoutError, RayActorError, RayError, RayTaskError

from dynaray.errors import DynarayError
from dynaray.faults import Faults

log = logging.getLogger(__name__)


class PeerUnavailable(Exception):
    """A peer did not answer: dead, unreachable, partitioned away, or past the deadline."""

    def __init__(self, peer: str, reason: str) -> None:
        self.peer = peer
        self.reason = reason
        super().__init__(f"{peer}: {reason}")


class Refused(Exception):
    """Raised by a receiving node for a message the fault table says it never got."""


class Transport:
    """Outbound messages of one node (or of a client) to the storage nodes."""

    def __init__(self, node_id: str, *, rng: random.Random | None = None) -> None:
        self.node_id = node_id
        self.peers: dict[str, Any] = {}
        self.faults = Faults()
        self.rng = rng or random.Random()
        self.sent: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()

    def set_peers(self, peers: dict[str, Any]) -> None:
        self.peers = dict(peers)

    def set_faults(self, faults: Faults) -> None:
        self.faults = faults

    def accepts(self, sender: str) -> bool:
        """Receiving side: a message sent across a partition is never delivered."""
        return self.faults.empty or not self.faults.partitioned(sender, self.node_id)

    async def call(self, peer: str, method: str, *args: Any, timeout: float) -> Any:
        """Call method on peer, passing our node id first; PeerUnavailable on any failure."""
        handle = self.peers.get(peer)
        if handle is None:
            raise PeerUnavailable(peer, "unknown peer")
        if not self.faults.empty:
            await self._inject(peer)
        self.sent[method] += 1
        try:
            ref = getattr(handle, method).remote(self.node_id, *args)
            return await asyncio.wait_for(ref, timeout)
        except (TimeoutError, GetTimeoutError):
            self.failed["timeout"] += 1
            raise PeerUnavailable(peer, f"no answer to {method} within {timeout:.1f}s") from None
        except RayTaskError as exc:
            if isinstance(exc.cause, Refused):
                self.failed["refused"] += 1
                raise PeerUnavailable(peer, "partitioned") from None
            if isinstance(exc.cause, DynarayError):
                raise exc.cause from None  # the peer answered, with an error of ours
            raise
        except (RayActorError, RayError) as exc:
            self.failed[type(exc).__name__] += 1
            raise PeerUnavailable(peer, f"{type(exc).__name__}") from None

    async def _inject(self, peer: str) -> None:
        faults = self.faults
        delay = faults.delay_of(self.node_id, peer)
        if delay:
            await asyncio.sleep(delay)
            faults = self.faults  # the table may have changed while we slept
        if faults.partitioned(self.node_id, peer):
            self.failed["partitioned"] += 1
            raise PeerUnavailable(peer, "partitioned")
        if faults.dropped(self.node_id, peer, self.rng):
            self.failed["dropped"] += 1
            raise PeerUnavailable(peer, "message dropped")
