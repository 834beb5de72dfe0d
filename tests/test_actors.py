"""Key epochs (dynaray/actors.py): which actor id a node's next write to a key carries."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dynaray import actors


def test_a_key_epoch_names_its_node_and_transaction():
    assert actors.key_epoch("n1", 0x2F) == "n1^2f"
    assert actors.epoch_of("n1", "n1^2f") == 0x2F
    assert actors.epoch_of("n1", "n1") == 0  # writes from before key epochs
    assert actors.epoch_of("n1@ab12", "n1@ab12^3") == 3  # a node that started over
    for other in ("n10^2f", "n2", "n1~5.1a", "n1@ab12^3", "n1^", "n1^zz"):
        assert actors.epoch_of("n1", other) is None


def test_a_write_goes_on_under_the_newest_epoch_past_the_floor():
    held = ["n2", "n1^a", "n1^1f", "n1~3.4", "n1"]
    assert actors.continuing("n1", held) == "n1^1f"
    assert actors.continuing("n1", held, floor=0x10) == "n1^1f"
    assert actors.continuing("n1", held, floor=0x1F) is None  # began before the drop
    assert actors.continuing("n1", ["n1"]) == "n1"
    assert actors.continuing("n1", ["n1"], floor=1) is None
    assert actors.continuing("n1", []) is None  # no copy here: a new epoch
    assert actors.continuing("n1", ["n2", "n1~3.4"]) is None  # a stand-in's id is never reused


@given(st.lists(st.integers(0, 1 << 40), max_size=6), st.integers(0, 1 << 40))
def test_what_goes_on_is_always_ours_and_past_the_floor(epochs, floor):
    held = [actors.key_epoch("n1", e) if e else "n1" for e in epochs] + ["n2^5"]
    chosen = actors.continuing("n1", held, floor)
    past = [e for e in epochs if not floor or e > floor]
    if not past:
        assert chosen is None
    else:
        assert actors.epoch_of("n1", chosen) == max(past)
