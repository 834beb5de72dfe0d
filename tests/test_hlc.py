"""The hybrid logical clock: stamps that never run backwards, whatever the wall clock does."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dynaray.hlc import HybridClock, millis

WALL = 1_800_000_000_000  # milliseconds since the epoch, in 2027


@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("now"), st.integers(WALL - 10_000, WALL + 10_000)),
            st.tuples(st.just("observe"), st.integers(0, (WALL + 20_000) << 16)),
        ),
        max_size=60,
    )
)
def test_stamps_only_grow_and_pass_every_stamp_observed(events):
    wall = [WALL]
    clock = HybridClock(lambda: wall[0])
    issued: list[int] = []
    highest_seen = 0
    for kind, value in events:
        if kind == "now":
            wall[0] = value  # the wall clock jumps, backwards too
            stamp = clock.now()
            assert stamp > highest_seen
            assert not issued or stamp > issued[-1]
            assert millis(stamp) >= value  # never behind the wall clock
            issued.append(stamp)
            highest_seen = stamp
        else:
            clock.observe(value)
            highest_seen = max(highest_seen, value)


def test_observe_says_how_far_a_stamp_is_ahead_of_the_wall_clock():
    clock = HybridClock(lambda: WALL)
    assert clock.observe((WALL - 5) << 16) == 0
    assert clock.observe((WALL + 90_000) << 16 | 7) == 90_000
    assert millis(clock.now()) == WALL + 90_000  # dragged along: why it is warned of
