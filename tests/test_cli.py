"""The `dynaray` command as a user runs it: demo, then up, put, down, up, get on one directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(300)


def _dynaray(args: list[str], home: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "DYNARAY_HOME": home}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run(
        [sys.executable, "-m", "dynaray.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=check,
    )


def test_demo_walks_through_siblings_and_merge(tmp_path):
    out = _dynaray(["demo"], str(tmp_path)).stdout
    assert "2 siblings" in out
    assert "['book', 'lamp', 'mug', 'pen']" in out
    assert "killed --" in out and "Hints held" in out
    assert "'down'" in out  # gossip saw the killed node down
    assert "nothing was lost" in out
    assert "Store stopped" in out


@pytest.mark.timeout(600)
def test_store_survives_down_and_up(tmp_path):
    home = str(tmp_path)
    data = os.path.join(home, "data")
    try:
        up = _dynaray(["up", "--nodes", "3", "--data-dir", data], home)
        assert "is up" in up.stdout
        _dynaray(["put", "greeting", "hello"], home)
        assert _dynaray(["get", "greeting"], home).stdout.strip() == "hello"
        _dynaray(["down", "--keep-ray"], home)
        assert sorted(os.listdir(data)) == ["n1", "n2", "n3"]
        assert os.listdir(os.path.join(home, "stores"))  # the note that data holds a store
        # The nodes are gone: a get now fails with a clear message, not a hang.
        gone = _dynaray(["get", "greeting"], home, check=False)
        assert gone.returncode == 2 and "no store named" in gone.stderr
        # Without --nodes, as many nodes as the data directory holds.
        assert "n1, n2, n3," in _dynaray(["up", "--data-dir", data], home).stdout
        assert _dynaray(["get", "greeting"], home).stdout.strip() == "hello"
        absent = _dynaray(["get", "nothing-here"], home, check=False)
        assert absent.returncode == 1 and "(absent)" in absent.stdout
        status = _dynaray(["status"], home).stdout
        assert "n1" in status and "up" in status and "last anti-entropy" in status
        rows = json.loads(_dynaray(["status", "--json"], home).stdout)
        assert [r["node"] for r in rows] == ["n1", "n2", "n3"]
        assert all(r["answered"] and r["disk_error"] is None for r in rows)
        assert sum(r["keys"] for r in rows) == 3  # one key on N=3 nodes
        assert all(r["disk_bytes"] > 0 and "last_anti_entropy" in r for r in rows)
        ring = json.loads(_dynaray(["ring", "--json"], home).stdout)
        assert sum(r["partitions"] for r in ring["nodes"]) == ring["partitions"]
        assert ring["n"] == 3 and sum(r["share"] for r in ring["nodes"]) == pytest.approx(1.0)
        made = _dynaray(["buckets", "--create", "likes", "--policy", "counter"], home).stdout
        assert "policy counter" in made
        # --json alone on stdout; without --policy, a siblings bucket, stored as one
        made = _dynaray(["buckets", "--create", "tags", "--policy", "set", "--json"], home)
        assert json.loads(made.stdout) == {"tags": {"policy": "set", "r": None, "w": None}}
        assert "policy siblings" in _dynaray(["buckets", "--create", "plain"], home).stdout
        clash = _dynaray(["buckets", "--create", "plain", "--policy", "lww"], home, check=False)
        assert clash.returncode == 2 and "exists with policy='siblings'" in clash.stderr
        assert (
            json.loads(_dynaray(["buckets", "--json"], home).stdout)["likes"]["policy"] == "counter"
        )
        clash = _dynaray(["buckets", "--create", "likes", "--policy", "set"], home, check=False)
        assert clash.returncode == 2 and "exists with policy='counter'" in clash.stderr
        # get, put and delete in a bucket; a put the bucket's policy does not take is refused
        _dynaray(["buckets", "--create", "names", "--policy", "lww"], home)
        _dynaray(["put", "--bucket", "names", "u1", "Ann"], home)
        assert _dynaray(["get", "--bucket", "names", "u1"], home).stdout.strip() == "Ann"
        assert "deleted" in _dynaray(["delete", "--bucket", "names", "u1"], home).stdout
        gone = _dynaray(["get", "--bucket", "names", "u1"], home, check=False)
        assert gone.returncode == 1 and "(absent)" in gone.stdout
        wrong = _dynaray(["put", "--bucket", "likes", "k", "1"], home, check=False)
        assert wrong.returncode == 2 and "policy siblings or lww" in wrong.stderr
        never = _dynaray(["get", "--bucket", "likes", "never-counted"], home, check=False)
        assert never.returncode == 1 and "(absent)" in never.stdout  # not a stored 0
        repair = json.loads(_dynaray(["repair", "--json"], home).stdout)
        assert repair["keys_repaired"] == 0 and repair["ranges_compared"] > 0
        running = _dynaray(["restart", "n2"], home, check=False)
        assert running.returncode == 2 and "is running; kill it before" in running.stderr
        assert "killed" in _dynaray(["kill", "n2"], home).stdout
        assert "not running" in _dynaray(["kill", "n2"], home).stdout
        assert "restarted" in _dynaray(["restart", "n2"], home).stdout
        assert _dynaray(["get", "greeting"], home).stdout.strip() == "hello"

        # A second store, named: the hints name it too.
        s3 = ["--store", "s3"]
        up = _dynaray(["up", *s3, "--nodes", "3", "--data-dir", os.path.join(home, "s3")], home)
        assert "dynaray.connect('s3')" in up.stdout and "`dynaray get --store s3 KEY`" in up.stdout
        joined = json.loads(_dynaray(["join", *s3, "--json"], home).stdout)  # nothing else
        assert joined["node"] == "n4" and "keys_received" in joined
        # A node a `join` process made, then removed: Ray cannot rebuild a handle of it
        # once its maker has ended, and every command after failed with a Ray traceback
        # (the nodes still handed its handle out, in the answer each command asks first).
        assert json.loads(_dynaray(["join", *s3, "--json"], home).stdout)["node"] == "n5"
        assert "handed its ranges over" in _dynaray(["leave", *s3, "n5"], home).stdout
        rows = json.loads(_dynaray(["status", *s3, "--json"], home).stdout)
        assert [r["node"] for r in rows] == ["n1", "n2", "n3", "n4"]
        assert _dynaray(["get", *s3, "nothing-here"], home, check=False).returncode == 1
        # The Ray the first `up` started stays up while another store runs on it.
        down = _dynaray(["down"], home).stdout
        assert "Left the local Ray running: store(s) 's3' still run on it" in down
        assert _dynaray(["get", *s3, "nothing-here"], home, check=False).returncode == 1
        live = _dynaray(["forget", *s3, "n4"], home, check=False)
        assert live.returncode == 2 and "`dynaray leave --store s3 n4`" in live.stderr
        # Every node killed: the store is still found, shown down, restarted, stopped.
        for node in ("n1", "n2", "n3", "n4"):
            _dynaray(["kill", *s3, node], home)
        rows = json.loads(_dynaray(["status", *s3, "--json"], home).stdout)
        assert [(r["node"], r["state"], r["answered"]) for r in rows] == [
            (node, "down", False) for node in ("n1", "n2", "n3", "n4")
        ]
        repair = _dynaray(["repair", *s3], home, check=False)
        assert repair.returncode == 2 and "no storage node answered" in repair.stderr
        assert "restarted" in _dynaray(["restart", *s3, "n1"], home).stdout
        _dynaray(["kill", *s3, "n1"], home)
        down = _dynaray(["down", *s3], home).stdout
        assert "stopped" in down  # the last store: the Ray the first `up` started goes too
        assert "Stopped the local Ray that `dynaray up` started" in down
        gone = _dynaray(["status", *s3], home, check=False)
        assert gone.returncode == 2 and "no Ray cluster found" in gone.stderr
        # An `up` that fails stops the Ray head it started, instead of leaving it running.
        wrong = _dynaray(["up", "--nodes", "4", "--data-dir", data], home, check=False)
        assert wrong.returncode == 2 and "holds a store of 3 nodes" in wrong.stderr
        assert "Stopped the local Ray head again" in wrong.stderr
        assert subprocess.run(["ray", "status"], capture_output=True, timeout=120).returncode != 0
    finally:
        _dynaray(["down"], home, check=False)
        subprocess.run(["ray", "stop", "--force"], capture_output=True, check=False)


def test_the_command_says_its_version_and_refuses_options_it_would_ignore(tmp_path):
    """No Ray is needed for either: `buckets --policy` without --create listed the buckets
    and dropped the policy unsaid."""
    import dynaray

    assert _dynaray(["--version"], str(tmp_path)).stdout.strip() == f"dynaray {dynaray.__version__}"
    assert dynaray.__version__ != "unknown"  # installed, as the README says
    ignored = _dynaray(["buckets", "--policy", "set"], str(tmp_path), check=False)
    assert ignored.returncode == 2 and "are for --create NAME" in ignored.stderr


def test_a_put_whose_first_read_fails_says_nothing_was_written(monkeypatch, capsys):
    """`dynaray put` reads the key first (it has no context to send); when that read
    failed, the user saw a get's error and could not tell whether the put happened."""
    from dynaray import cli
    from dynaray.errors import QuorumError

    written = []

    class Keys:
        def get(self, key):
            raise QuorumError("get", key, 0, 2, 3, 3)

        def put(self, *args):
            written.append(args)

    monkeypatch.setattr(cli, "_keys_of", lambda args: Keys())
    assert cli.main(["put", "newkey", "v"]) != 0
    error = capsys.readouterr().err
    assert "put of 'newkey' reads the key first" in error and "nothing was written" in error
    assert not written
