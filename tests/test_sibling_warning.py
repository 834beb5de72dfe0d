"""A key whose siblings pile up is logged, readably and not at every write."""

from __future__ import annotations

import logging

from dynaray import codec, records
from dynaray.node import SIBLING_WARNING, _note_siblings


def _siblings(count: int) -> records.Record:
    values = tuple(codec.encode_value(f"v{i}") for i in range(count))
    return records.Record("siblings", ((("n1", count, values),), ()), 1)


def test_piling_siblings_are_logged_past_the_threshold_and_at_each_doubling(caplog):
    dkey = codec.data_key(7, 3, b"default", b"cart:1")
    caplog.set_level(logging.WARNING, logger="dynaray.node")
    stored = None
    for count in range(1, 4 * SIBLING_WARNING + 2):
        record = _siblings(count)
        _note_siblings(dkey, stored, record)
        stored = record
    logged = [r.getMessage() for r in caplog.records]
    # Past 25, past 50 and past 100: three lines for 101 writes, not 76.
    assert len(logged) == 3
    assert "key cart:1 in bucket default has 26 siblings" in logged[0]
    assert "has 50 siblings" in logged[1] and "has 100 siblings" in logged[2]
    assert "not resolving its conflicts" in logged[0]


def test_a_key_that_is_not_text_is_shown_as_bytes(caplog):
    caplog.set_level(logging.WARNING, logger="dynaray.node")
    dkey = codec.data_key(0, 0, b"default", b"\xff\x00")
    _note_siblings(dkey, None, _siblings(SIBLING_WARNING + 1))
    assert "key b'\\xff\\x00' in bucket default" in caplog.records[0].getMessage()


def test_the_count_noted_is_the_most_versions_before_or_after_the_write():
    dkey = codec.data_key(7, 3, b"default", b"cart:1")
    assert _note_siblings(dkey, _siblings(3), _siblings(1)) == 3  # a write that resolved them
    assert _note_siblings(dkey, _siblings(1), _siblings(2)) == 2
    assert _note_siblings(dkey, None, _siblings(1)) == 1
