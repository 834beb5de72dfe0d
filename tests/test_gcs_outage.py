"""The Ray head's GCS goes down: dynaray's data path does not need it.

Clients and storage nodes resolve actor handles once and keep them (the Cluster's clients
hold the nodes' handles; nodes got their peers' handles through set_peers), and Ray sends
calls between actors straight from process to process. So while the GCS is gone, gets and
puts, gossip, hinted handoff and anti-entropy go on; only what needs the GCS stops (named
actor lookups, new drivers, creating or killing actors).

test_store_survives_gcs_outage_with_fault_tolerance: a local Ray head with GCS fault
tolerance backed by a Redis that the test starts; the gcs_server process is SIGKILLed, a
client keeps reading and writing for OUTAGE seconds, then the GCS is started again with its
own command line and the store is checked whole.

test_without_fault_tolerance_the_store_dies_with_the_gcs: the same head without Redis.
What is lost is recorded in the test's docstring.

How long Ray lets raylets (and workers and drivers) wait for a GCS that went away:
RAY_gcs_rpc_server_reconnect_timeout_s, 60 seconds by default (RAY_CONFIG(int32_t,
gcs_rpc_server_reconnect_timeout_s, 60) in Ray's src/ray/common/ray_config_def.h; Ray 2.60).
After that a raylet exits, and every worker on its machine (the storage nodes) with it; a
driver's process ends with std::_Exit. The FT test sets it to 120 s for the head it starts,
the non-FT test to 10 s so that its waits stay short.

These tests start their own Ray head (`ray start` in a temporary --temp-dir) and a
redis-server; the first is skipped when redis-server is not installed
(`apt-get install redis-server`). Only processes the tests started are stopped: those whose
command line names the test's temporary directory, and the raylet's children.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid

import pytest
import ray

import dynaray
from tests.conftest import FAST, wait_for

pytestmark = pytest.mark.timeout(300)

OUTAGE = 18.0  # seconds the GCS stays down in the FT test
FT_RECONNECT_TIMEOUT = 120  # RAY_gcs_rpc_server_reconnect_timeout_s for the FT head
NO_FT_RECONNECT_TIMEOUT = 10  # ... and for the head without fault tolerance
BIG = 200 * 1024  # above Ray's 100 KiB inline limit: such values travel via the object store

# The brief's short failure detection, plus quick retries and handoff (tests.conftest.FAST).
OPTIONS = {
    **FAST,
    "gossip_interval": 0.2,
    "suspect_after": 0.8,
    "down_after": 1.5,
    "replica_timeout": 1.0,
}


def _psutil():
    # psutil ships inside Ray (ray/thirdparty_files), importable once ray is imported.
    import psutil

    return psutil


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_cli() -> str:
    beside = os.path.join(os.path.dirname(sys.executable), "ray")
    return beside if os.path.exists(beside) else (shutil.which("ray") or "ray")


def _same_auth_as_ray_start() -> None:
    """Token authentication, decided as `ray start` decides it, for the head and the driver.

    `ray start` turns token authentication on when RAY_AUTH_MODE is unset and a token exists
    (~/.ray/auth_token), but ray.init() given an explicit address does not, and would then be
    refused. Deciding it here, the way ray.init(address="auto") does, sets RAY_AUTH_MODE in
    this process's environment, which the head, the GCS and the drivers then inherit."""
    if "RAY_AUTH_MODE" not in os.environ:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )

        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_REDIS_ADDRESS")}
    env.update(extra)
    return env


# -- redis ------------------------------------------------------------------------------------


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _start_redis(workdir: str) -> tuple[subprocess.Popen, int]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed: apt-get install redis-server")
    port = _free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", workdir, "--save", "",
         "--appendonly", "no", "--daemonize", "no", "--protected-mode", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: proc.poll() is not None or _redis_ping(port), timeout=20, what="redis")
    assert proc.poll() is None, "redis-server exited at start"
    return proc, port


# -- a Ray head of our own --------------------------------------------------------------------


class Head:
    """A Ray head started with `ray start` in its own temp dir; stop() ends only its processes."""

    def __init__(self, env_extra: dict[str, str]) -> None:
        _same_auth_as_ray_start()
        # Short: Ray's unix socket paths live under it and are limited to 107 characters.
        self.temp_dir = tempfile.mkdtemp(prefix="drgcs-", dir="/tmp")
        self.port = _free_port()
        self.ip = ray.util.get_node_ip_address()
        self.address = f"{self.ip}:{self.port}"
        self.env = _clean_env(**env_extra)
        self.extra_pids: set[int] = set()  # processes we started ourselves (a restarted GCS)
        self.started: list = []  # Popen objects to reap

    def start(self) -> None:
        cmd = [
            _ray_cli(), "start", "--head", f"--port={self.port}", "--num-cpus=2",
            "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={self.temp_dir}",
        ]
        done = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, f"ray start failed:\n{done.stdout}\n{done.stderr}"

    def processes(self, name: str | None = None) -> list:
        """Live processes of this head: cmdline names our temp dir, or a raylet's descendant."""
        psutil = _psutil()
        found = {}
        for proc in psutil.process_iter(["pid", "name", "cmdline"]):
            try:
                cmdline = " ".join(proc.info["cmdline"] or [])
                if self.temp_dir in cmdline or proc.pid in self.extra_pids:
                    found[proc.pid] = proc
                    if proc.info["name"] == "raylet":
                        for child in proc.children(recursive=True):
                            found[child.pid] = child
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        procs = [p for p in found.values() if p.is_running()]
        if name is not None:
            procs = [p for p in procs if _safe_name(p) == name]
        return procs

    def one(self, name: str):
        procs = self.processes(name)
        assert len(procs) == 1, f"expected one {name} of this head, found {procs}"
        return procs[0]

    def storage_node_pids(self) -> set[int]:
        """The worker processes holding dynaray's StorageNode actors (their title says so)."""
        pids = set()
        for proc in self.processes():
            try:
                if "StorageNode" in " ".join(proc.cmdline()):
                    pids.add(proc.pid)
            except Exception:  # noqa: BLE001 - gone meanwhile
                continue
        return pids

    def stop(self) -> None:
        psutil = _psutil()
        procs = self.processes()
        for proc in procs:
            try:
                proc.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=10)
        for proc in alive:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=10)
        for popen in self.started:
            try:
                popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _safe_name(proc) -> str:
    try:
        return proc.name()
    except Exception:  # noqa: BLE001
        return ""


def _kill_gcs(head: Head) -> dict:
    """SIGKILL this head's gcs_server; returns what is needed to start it again."""
    psutil = _psutil()
    gcs = head.one("gcs_server")
    assert head.temp_dir in " ".join(gcs.cmdline()) and f"={head.port}" in " ".join(gcs.cmdline())
    saved = {"cmdline": gcs.cmdline(), "env": gcs.environ(), "cwd": gcs.cwd()}
    gcs.kill()
    psutil.wait_procs([gcs], timeout=10)
    assert not gcs.is_running() or gcs.status() == psutil.STATUS_ZOMBIE
    return saved


def _restart_gcs(head: Head, saved: dict) -> subprocess.Popen:
    popen = subprocess.Popen(
        saved["cmdline"],
        env=saved["env"],
        cwd=saved["cwd"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    head.extra_pids.add(popen.pid)
    head.started.append(popen)
    return popen


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


# -- with GCS fault tolerance ----------------------------------------------------------------


def test_store_survives_gcs_outage_with_fault_tolerance(monkeypatch):
    """Kill the GCS of a fault-tolerant head for OUTAGE seconds: every get and put of a
    client holding cached handles succeeds meanwhile, gossip keeps every node "up", and after
    the GCS returns every acknowledged write is there, on exactly N=3 nodes."""
    if ray.is_initialized():
        ray.shutdown()
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed: apt-get install redis-server")
    # The driver (this process) also gives up on a GCS that stays away this long.
    monkeypatch.setenv("RAY_gcs_rpc_server_reconnect_timeout_s", str(FT_RECONNECT_TIMEOUT))
    redis_dir = tempfile.mkdtemp(prefix="drgcs-redis-")
    redis = None
    head = None
    cluster = None
    figures: dict = {}
    try:
        redis, redis_port = _start_redis(redis_dir)
        head = Head(
            {
                "RAY_REDIS_ADDRESS": f"127.0.0.1:{redis_port}",
                "RAY_external_storage_namespace": f"dynaray-test-{uuid.uuid4().hex[:8]}",
                "RAY_gcs_rpc_server_reconnect_timeout_s": str(FT_RECONNECT_TIMEOUT),
            }
        )
        head.start()
        ray.init(address=head.address, namespace="dynaray", log_to_driver=False)
        cluster = dynaray.start(nodes=3, n=3, r=2, w=2, node_options=OPTIONS)
        client = cluster.client()
        acked: dict[str, object] = {}
        contexts: dict[str, object] = {}
        for i in range(20):
            key = f"pre:{i}"
            contexts[key] = client.put(key, None, f"pre-{i}")
            acked[key] = f"pre-{i}"
        big_before = os.urandom(BIG)
        client.put("big:pre", None, big_before)
        acked["big:pre"] = big_before
        wait_for(lambda: set(cluster.status().values()) == {"up"}, what="all nodes up")
        baseline = []
        for i in range(50):
            started = time.perf_counter()
            client.get(f"pre:{i % 20}")
            baseline.append(time.perf_counter() - started)

        # -- the GCS goes down ---------------------------------------------------------------
        raylet = head.one("raylet")
        nodes_before = head.storage_node_pids()
        assert len(nodes_before) == 3, nodes_before
        saved = _kill_gcs(head)
        killed_at = time.monotonic()
        latencies: list[float] = []
        gets = puts = updates = bigs = 0
        statuses: list[dict] = []
        anti_entropy = None
        i = 0
        next_status = killed_at
        while time.monotonic() - killed_at < OUTAGE:
            key, value = f"during:{i}", f"during-{i}"
            started = time.perf_counter()
            client.put(key, None, value)  # raises on any failure: the test fails
            latencies.append(time.perf_counter() - started)
            acked[key] = value
            puts += 1
            started = time.perf_counter()
            res = client.get(key)
            latencies.append(time.perf_counter() - started)
            gets += 1
            assert res.values == [value], (key, res.values)
            if i % 2 == 0:  # an update of an earlier key, with the context it was read with
                old = f"pre:{(i // 2) % 20}"
                res = client.get(old)
                gets += 1
                assert res.values == [acked[old]], (old, res.values)
                new = f"{acked[old]}+{i}"
                client.put(old, res.context, new)
                acked[old] = new
                puts += 1
                updates += 1
            if i % 25 == 0:  # a value too big to travel inline
                big_key, big = f"big:{i}", os.urandom(BIG)
                client.put(big_key, None, big)
                assert client.get(big_key).values == [big]
                acked[big_key] = big
                bigs += 1
            if time.monotonic() >= next_status:  # the store's own view, through cached handles
                statuses.append(cluster.status())
                next_status = time.monotonic() + 2.0
            if anti_entropy is None and time.monotonic() - killed_at > OUTAGE / 2:
                anti_entropy = cluster.anti_entropy()  # one Merkle round, node to node
            i += 1
        outage_ops = gets + puts
        # Still down: nothing was restarted behind our back, and nothing of ours died.
        assert not head.processes("gcs_server"), "a gcs_server came back by itself"
        assert raylet.is_running()
        assert head.storage_node_pids() == nodes_before
        # Gossip ran all along: with down_after=1.5 s, a stalled gossip would show "down".
        assert statuses and all(set(s.values()) == {"up"} for s in statuses), statuses
        assert anti_entropy is not None
        assert client.get("big:pre").values == [big_before]
        down_for = time.monotonic() - killed_at

        # -- the GCS comes back ----------------------------------------------------------------
        restarted_at = time.monotonic()
        _restart_gcs(head, saved)
        wait_for(
            lambda: _answers(lambda: any(n["Alive"] for n in ray.nodes())),
            timeout=90,
            interval=0.5,
            what="ray.nodes() answering after the GCS restart",
        )
        nodes_answer = time.monotonic() - restarted_at
        # Named actors come back from Redis: a new driver's connect() would find the store.
        wait_for(
            lambda: _answers(lambda: len(dynaray.cluster._named_nodes(cluster.store)) == 3),
            timeout=60,
            interval=0.5,
            what="named-actor lookup after the GCS restart",
        )
        lookup_answer = time.monotonic() - restarted_at
        # And the control plane works again: a new task is scheduled and runs.
        assert ray.get(ray.remote(num_cpus=0)(lambda: 42).remote(), timeout=60) == 42
        task_answer = time.monotonic() - restarted_at

        # -- the store is whole ------------------------------------------------------------------
        assert head.storage_node_pids() == nodes_before  # the same actors, never restarted
        for key, value in acked.items():
            assert client.get(key).values == [value], key
        for key, value in acked.items():
            wait_for(
                lambda key=key, value=value: cluster.replica_state(key)
                == {n: [value] for n in cluster.nodes()},
                timeout=30,
                what=f"{key} on exactly the 3 nodes",
            )
            assert len(cluster.replica_state(key)) == 3
        figures = {
            "outage_s": round(down_for, 1),
            "ops_during_outage": outage_ops,
            "gets": gets,
            "puts": puts,
            "updates": updates,
            "big_values": bigs,
            "ops_per_s": round(outage_ops / down_for, 1),
            "get_p50_ms_before": round(1000 * _percentile(baseline, 0.5), 2),
            "op_p50_ms_during": round(1000 * _percentile(latencies, 0.5), 2),
            "op_p99_ms_during": round(1000 * _percentile(latencies, 0.99), 2),
            "op_max_ms_during": round(1000 * max(latencies), 2),
            "status_checks": len(statuses),
            "anti_entropy": anti_entropy,
            "ray_nodes_after_restart_s": round(nodes_answer, 1),
            "named_lookup_after_restart_s": round(lookup_answer, 1),
            "new_task_after_restart_s": round(task_answer, 1),
            "keys_checked": len(acked),
        }
    finally:
        print("GCS outage figures:", json.dumps(figures))
        if cluster is not None:
            try:
                cluster.shutdown()
            except Exception as exc:  # noqa: BLE001 - cleanup must go on
                print("cluster.shutdown failed:", exc)
        if ray.is_initialized():
            ray.shutdown()
        if head is not None:
            head.stop()
        if redis is not None:
            redis.kill()
            redis.wait(timeout=10)
        shutil.rmtree(redis_dir, ignore_errors=True)


def _answers(probe) -> bool:
    try:
        return bool(probe())
    except Exception:  # noqa: BLE001 - the GCS is still coming back
        return False


# -- without GCS fault tolerance -------------------------------------------------------------

# The driver runs in its own process: a Ray driver that loses its raylet or outlives the
# GCS reconnect timeout ends its process (std::_Exit), which must not be pytest's.
DRIVER = textwrap.dedent(
    """
    import json, sys, time
    import ray, dynaray

    address, log_path, options = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    ray.init(address=address, namespace="dynaray", log_to_driver=False)
    cluster = dynaray.start(nodes=3, n=3, r=2, w=2, node_options=options)
    client = cluster.client(request_timeout=3.0)
    with open(log_path, "a", buffering=1) as log:
        for i in range(10):
            client.put(f"pre:{i}", None, i)
        log.write(json.dumps({"ready": True, "t": time.time()}) + "\\n")
        i = 0
        while True:
            for op in ("put", "get"):
                started = time.time()
                try:
                    if op == "put":
                        client.put(f"k:{i}", None, i)
                    else:
                        assert client.get(f"k:{i}").values == [i]
                    entry = {"op": op, "ok": True}
                except Exception as exc:
                    entry = {"op": op, "ok": False, "error": type(exc).__name__ + ": " + str(exc)[:200]}
                entry.update(t=time.time(), took=time.time() - started)
                log.write(json.dumps(entry) + "\\n")
            i += 1
            time.sleep(0.05)
    """
)


def _read_log(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip().endswith("}")]


def test_without_fault_tolerance_the_store_dies_with_the_gcs():
    """Without Redis behind the GCS, the head is a single point of failure for the store.

    Observed (Ray 2.60, one machine, RAY_gcs_rpc_server_reconnect_timeout_s=10): after the
    GCS is SIGKILLed, gets and puts through cached handles keep succeeding until the
    reconnect timeout; then the raylet exits, the storage node processes die with it, the
    driver loses its raylet and its process ends, and every request from then on fails. A
    GCS started again without Redis would know nothing of the old cluster, so nothing can
    reconnect: the store is gone until it is started again from its data directories.
    """
    if ray.is_initialized():
        ray.shutdown()
    head = Head({"RAY_gcs_rpc_server_reconnect_timeout_s": str(NO_FT_RECONNECT_TIMEOUT)})
    log_path = os.path.join(tempfile.mkdtemp(prefix="drgcs-log-"), "ops.jsonl")
    driver = None
    try:
        head.start()
        driver = subprocess.Popen(
            [sys.executable, "-c", DRIVER, head.address, log_path, json.dumps(OPTIONS)],
            env=_clean_env(RAY_gcs_rpc_server_reconnect_timeout_s="300"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_for(
            lambda: driver.poll() is not None or any(e.get("ready") for e in _read_log(log_path)),
            timeout=120,
            what="driver ready",
        )
        assert driver.poll() is None, f"driver failed: {driver.stderr.read()}"
        wait_for(lambda: sum(e.get("ok", False) for e in _read_log(log_path)) >= 10, what="ops")
        raylet = head.one("raylet")
        nodes = head.storage_node_pids()
        assert len(nodes) == 3, nodes
        _kill_gcs(head)
        killed_at = time.time()
        psutil = _psutil()

        # The raylet gives up on the GCS after the reconnect timeout, and exits.
        wait_for(lambda: not raylet.is_running(), timeout=NO_FT_RECONNECT_TIMEOUT + 60,
                 what="raylet exit")
        raylet_gone = time.time() - killed_at
        # The storage nodes die with it.
        wait_for(lambda: not any(psutil.pid_exists(p) for p in nodes), timeout=30,
                 what="storage node processes gone")
        nodes_gone = time.time() - killed_at
        # The driver, left without a raylet, ends (or at least no request succeeds any more).
        driver_exited = True
        try:
            driver.wait(timeout=30)
        except subprocess.TimeoutExpired:
            driver_exited = False
        log = [e for e in _read_log(log_path) if "op" in e]
        after_kill = [e for e in log if e["t"] >= killed_at]
        ok_after_kill = [e for e in after_kill if e["ok"]]
        last_ok = max((e["t"] + e["took"] for e in ok_after_kill), default=killed_at)
        if not driver_exited:
            # Give it a few more requests: all must fail now that the nodes are gone.
            time.sleep(8)
            log = [e for e in _read_log(log_path) if "op" in e]
            late = [e for e in log if e["t"] > killed_at + nodes_gone + 1]
            assert late and not any(e["ok"] for e in late), late[-5:]
        # The data path did not need the GCS until the raylet left: requests succeeded.
        assert ok_after_kill, after_kill[:5]
        print(
            "without FT:",
            json.dumps(
                {
                    "raylet_exit_s": round(raylet_gone, 1),
                    "storage_nodes_gone_s": round(nodes_gone, 1),
                    "driver_exited": driver_exited,
                    "driver_returncode": driver.returncode,
                    "ok_ops_after_kill": len(ok_after_kill),
                    "last_ok_op_s": round(last_ok - killed_at, 1),
                    "failed_ops_after_kill": [e["error"] for e in after_kill if not e["ok"]][:3],
                }
            ),
        )
    finally:
        if driver is not None and driver.poll() is None:
            driver.kill()
            driver.wait(timeout=10)
        head.stop()
        shutil.rmtree(os.path.dirname(log_path), ignore_errors=True)
