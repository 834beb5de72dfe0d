"""A hybrid logical clock: timestamps for last-write-wins that never run backwards.

A timestamp is wall-clock milliseconds shifted left 16 bits plus a logical counter. A
clock never issues a timestamp lower than one it has issued or seen (a node's starts again
with each life: records.update also stamps a write above the copy it replaces and the
context it read), so a write that causally follows another gets a larger timestamp, even
across nodes with skewed clocks.
Pure: the wall clock is injected.
"""

from __future__ import annotations

import time
from collections.abc import Callable

_LOGICAL_BITS = 16


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class HybridClock:
    def __init__(self, wall: Callable[[], int] = _wall_ms) -> None:
        self._wall = wall
        self.last = 0

    def now(self) -> int:
        """A new timestamp, larger than every one issued or observed so far."""
        physical = self._wall() << _LOGICAL_BITS
        self.last = physical if physical > self.last else self.last + 1
        return self.last

    def observe(self, stamp: int) -> int:
        """Take in a timestamp seen on a message, so ours stay ahead of it. Returns how many
        milliseconds it is ahead of our wall clock (0 if it is not): a clock far ahead
        somewhere in the store drags every node's along, and its lww writes win over
        later ones until real time catches up, so the caller warns of it."""
        if stamp > self.last:
            self.last = stamp
        return max(0, millis(stamp) - self._wall())


def millis(stamp: int) -> int:
    """The wall-clock part of a timestamp, in milliseconds since the epoch."""
    return stamp >> _LOGICAL_BITS
