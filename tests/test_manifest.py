"""The note a store leaves that a data directory holds it (dynaray/manifest.py), no Ray."""

from __future__ import annotations

import os

import pytest

from dynaray import manifest
from dynaray.errors import DynarayError
from dynaray.names import node_name, parse, router_name


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("DYNARAY_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_the_note_reads_back_what_was_written_and_none_where_there_is_none(tmp_path, home):
    root = str(tmp_path / "data")
    assert manifest.read(root) is None
    manifest.write(root, "s", ["n2", "n1"], "kvnode")
    kept = {"root": root, "store": "s", "nodes": ["n1", "n2"], "machines": "kvnode"}
    assert manifest.read(root) == kept
    assert manifest.read(root + "/") == kept  # the same directory, however written
    assert manifest.read(str(tmp_path / "other")) is None
    manifest.write(root, "s", ["n1"], None)  # replaced whole
    assert manifest.read(root) == {**kept, "nodes": ["n1"], "machines": None}
    # Kept in dynaray's home, not in the data directory (on a cluster, the starting
    # machine may have none); no temporary file left behind.
    assert manifest.path_of(root).startswith(str(home))
    assert not os.path.exists(root)
    assert os.listdir(os.path.dirname(manifest.path_of(root))) == [
        os.path.basename(manifest.path_of(root))
    ]


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"store": "s"}'])
def test_a_note_that_does_not_read_is_refused_with_what_to_do(tmp_path, text):
    path = manifest.path_of(str(tmp_path))
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as f:
        f.write(text)
    with pytest.raises(DynarayError, match="nothing was started.*[Dd]elete it"):
        manifest.read(str(tmp_path))


def test_a_start_that_cannot_find_the_noted_store_is_refused():
    kept = {"store": "s", "nodes": ["n1", "n2", "n3"], "machines": "kvnode"}
    # Machines back, directories found: the store starts.
    manifest.check(kept, "/d", "kvnode", found_any=True)
    manifest.check(None, "/d", None, found_any=False)  # nothing noted: a new store
    with pytest.raises(DynarayError, match="'kvnode' resource, and the Ray cluster has no such"):
        manifest.check(kept, "/d", None, found_any=True)  # node directories on the head
    with pytest.raises(DynarayError, match=r"nodes n1, n2, n3\), and no directory of its nodes"):
        manifest.check(kept, "/d", "kvnode", found_any=False)
    local = {**kept, "machines": None}
    manifest.check(local, "/d", None, found_any=True)
    with pytest.raises(DynarayError, match="is found there; nothing was started.*delete"):
        manifest.check(local, "/d", None, found_any=False)


def test_actor_names_parse_back_to_their_store_and_node():
    for store in ("default", "a.b", "x.node.y", "s.router"):
        assert parse(node_name(store, "n1")) == (store, "n1")
        assert parse(router_name(store)) == (store, None)
    for other in ("foo", ".router", "s.node.", "s.routers"):
        assert parse(other) is None
