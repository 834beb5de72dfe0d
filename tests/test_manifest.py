"""The note a store keeps in its data directory (dynaray/manifest.py), without Ray."""

from __future__ import annotations

import os

import pytest

from dynaray import manifest
from dynaray.errors import DynarayError


def test_the_note_reads_back_what_was_written_and_none_where_there_is_none(tmp_path):
    root = str(tmp_path / "data")
    assert manifest.read(root) is None
    manifest.write(root, "s", ["n2", "n1"], "kvnode")
    assert manifest.read(root) == {"store": "s", "nodes": ["n1", "n2"], "machines": "kvnode"}
    manifest.write(root, "s", ["n1"], None)  # replaced whole
    assert manifest.read(root) == {"store": "s", "nodes": ["n1"], "machines": None}
    assert os.listdir(root) == [manifest.FILE]  # no temporary file left behind


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"store": "s"}'])
def test_a_note_that_does_not_read_is_refused_with_what_to_do(tmp_path, text):
    (tmp_path / manifest.FILE).write_text(text)
    with pytest.raises(DynarayError, match="nothing was started.*[Dd]elete it"):
        manifest.read(str(tmp_path))


def test_a_start_that_cannot_find_the_noted_store_is_refused():
    kept = {"store": "s", "nodes": ["n1", "n2", "n3"], "machines": "kvnode"}
    # Machines back, directories found: the store starts.
    manifest.check(kept, "/d", "kvnode", found_any=True)
    manifest.check(None, "/d", None, found_any=False)  # nothing noted: a new store
    with pytest.raises(DynarayError, match="'kvnode' resource, and the Ray cluster has no such"):
        manifest.check(kept, "/d", None, found_any=True)  # node directories on the head
    with pytest.raises(DynarayError, match=r"\(nodes n1, n2, n3\), and no directory of its nodes"):
        manifest.check(kept, "/d", "kvnode", found_any=False)
    local = {**kept, "machines": None}
    manifest.check(local, "/d", None, found_any=True)
    with pytest.raises(DynarayError, match="is found there; nothing was started.*delete"):
        manifest.check(local, "/d", None, found_any=False)
