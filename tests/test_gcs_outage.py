"""The Ray head's GCS goes down: dynaray's data path does not need it.

Clients and storage nodes resolve actor handles once and keep them (a Cluster's clients hold
the nodes' handles; nodes got their peers' handles through set_peers), and Ray sends calls
between actors straight from process to process. So while the GCS is gone, gets and puts,
gossip and anti-entropy go on; what needs the GCS stops (named-actor lookups, new drivers,
creating or killing actors).

How long Ray lets a process wait for a GCS that went away: RAY_gcs_rpc_server_reconnect_
timeout_s, 60 seconds by default (`RAY_CONFIG(int32_t, gcs_rpc_server_reconnect_timeout_s,
60)` in Ray's src/ray/common/ray_config_def.h; Ray 2.60). Every process with a GCS client
keeps its own count and ends itself (std::_Exit) when it runs out: the raylet, every worker
(so each storage node on its own, not only through its raylet) and every driver. Workers
inherit the value from the raylet's environment, drivers from their own.

test_store_survives_gcs_outage_with_fault_tolerance: a Ray head with GCS fault tolerance
backed by a redis-server that the test starts (skipped without redis-server: `apt-get
install redis-server`), the reconnect timeout at 120 s. Its gcs_server is SIGKILLed; for
OUTAGE seconds a client keeps reading and writing, then the GCS is started again with its
own command line and environment, and the store is checked whole.

test_without_fault_tolerance_the_store_dies_with_the_gcs: the same head without Redis and
the timeout at 10 s: what users lose, as asserted there.

Both start their own Ray head (`ray start` with its own --temp-dir, beside any other Ray on
the machine) and stop only the processes they started: those whose command line names
their temp dir, and the raylet's children.
"""

from __future__ import annotations

import contextlib
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

OUTAGE = 18.0  # seconds the GCS stays down in the FT test (while the client works)
BASELINE = 6.0  # seconds of the same workload before, to compare with
FT_RECONNECT_TIMEOUT = 120  # RAY_gcs_rpc_server_reconnect_timeout_s of the FT head and driver
NO_FT_RECONNECT_TIMEOUT = 10  # ... of the head without fault tolerance
NO_FT_DRIVER_RECONNECT_TIMEOUT = 20  # ... and of that test's driver
BIG = 200 * 1024  # above Ray's 100 KiB inline limit: travels through the object store

# Short failure detection, so that a stalled gossip would show as "down" within the outage.
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
    """Token authentication decided once, as `ray start` decides it, for head and drivers.

    `ray start` turns token authentication on when RAY_AUTH_MODE is unset and a token exists
    (~/.ray/auth_token), but ray.init() given an explicit address does not, and is then
    refused. Deciding it here, as ray.init(address="auto") does, sets RAY_AUTH_MODE in this
    process's environment, which the head and every driver started here inherit."""
    if "RAY_AUTH_MODE" not in os.environ:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )

        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_REDIS_ADDRESS")}
    env.update(extra)
    return env


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _answers(probe) -> bool:
    try:
        return bool(probe())
    except Exception:  # noqa: BLE001 - the GCS is still coming back
        return False


# -- redis ------------------------------------------------------------------------------------


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _start_redis(workdir: str) -> tuple[subprocess.Popen, int]:
    port = _free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", workdir,
         "--save", "", "--appendonly", "no", "--daemonize", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
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
        self.address = f"{ray.util.get_node_ip_address()}:{self.port}"
        self.env = _env(**env_extra)
        self.ours: list[subprocess.Popen] = []  # processes started here (a restarted GCS)

    def start(self) -> None:
        cmd = [
            _ray_cli(), "start", "--head", f"--port={self.port}", "--num-cpus=2",
            "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={self.temp_dir}",
        ]  # fmt: skip
        done = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, f"ray start failed:\n{done.stdout}\n{done.stderr}"

    def processes(self, name: str | None = None) -> list:
        """Live processes of this head: the command line names our temp dir (gcs_server,
        raylet, agents), or a raylet's descendant (workers retitle themselves "ray::...")."""
        psutil = _psutil()
        ours = {p.pid for p in self.ours}
        found = {}
        for proc in psutil.process_iter(["name", "cmdline"]):
            try:
                if self.temp_dir in " ".join(proc.info["cmdline"] or []) or proc.pid in ours:
                    found[proc.pid] = proc
                    if proc.info["name"] == "raylet":
                        found.update({c.pid: c for c in proc.children(recursive=True)})
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        live = [p for p in found.values() if _alive(p)]
        return [p for p in live if name is None or _name(p) == name]

    def one(self, name: str):
        procs = self.processes(name)
        assert len(procs) == 1, f"expected one {name} of this head, found {procs}"
        return procs[0]

    def storage_node_pids(self) -> set[int]:
        """Worker processes holding dynaray's StorageNode actors (their title says so)."""
        pids = set()
        for proc in self.processes():
            try:
                if "StorageNode" in " ".join(proc.cmdline()):
                    pids.add(proc.pid)
            except Exception:  # noqa: BLE001 - gone meanwhile
                continue
        return pids

    def kill_gcs(self) -> dict:
        """SIGKILL this head's gcs_server; returns what it takes to start it again."""
        psutil = _psutil()
        gcs = self.one("gcs_server")
        cmdline = gcs.cmdline()
        assert self.temp_dir in " ".join(cmdline)
        assert f"--gcs_server_port={self.port}" in cmdline, cmdline
        saved = {"cmdline": cmdline, "env": gcs.environ(), "cwd": gcs.cwd()}
        gcs.send_signal(signal.SIGKILL)
        psutil.wait_procs([gcs], timeout=10)
        assert not _alive(gcs)
        return saved

    def restart_gcs(self, saved: dict) -> None:
        self.ours.append(
            subprocess.Popen(
                saved["cmdline"],
                env=saved["env"],
                cwd=saved["cwd"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )

    def stop(self) -> None:
        psutil = _psutil()
        procs = self.processes()
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(procs, timeout=10)
        for proc in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(alive, timeout=10)
        for popen in self.ours:
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(timeout=5)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _alive(proc) -> bool:
    psutil = _psutil()
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _name(proc) -> str:
    try:
        return proc.name()
    except Exception:  # noqa: BLE001
        return ""


# -- with GCS fault tolerance ----------------------------------------------------------------

# A new driver: connect() finds the store by its named actors (the GCS) and reads a key.
NEW_DRIVER = textwrap.dedent(
    """
    import sys, time
    import dynaray

    client = dynaray.connect(address=sys.argv[1])
    assert client.get(sys.argv[2]).values == [sys.argv[3]]
    """
)


def _new_driver_seconds(head: Head, key: str, value: str, deadline: float) -> float:
    """Seconds until a new driver process has connected and read key (retried until then)."""
    started = time.monotonic()
    while True:
        done = subprocess.run(
            [sys.executable, "-c", NEW_DRIVER, head.address, key, value],
            env=_env(),
            capture_output=True,
            text=True,
            timeout=deadline,
        )
        if done.returncode == 0:
            return time.monotonic() - started
        if time.monotonic() - started > deadline:
            raise AssertionError(f"no new driver could connect:\n{done.stderr[-2000:]}")
        time.sleep(0.5)


def _workload(client, cluster, acked: dict, seconds: float, tag: str) -> dict:
    """Reads and writes for `seconds`: new keys, updates of pre:* keys with their context,
    a big value now and then, the store's status every 2 s and one anti-entropy round.
    Every call must succeed; acknowledged writes go into `acked`."""
    latencies: list[float] = []
    counts = {"gets": 0, "puts": 0, "updates": 0, "big_values": 0}
    statuses: list[dict] = []
    anti_entropy = None
    began = time.monotonic()
    next_status = began
    i = 0

    def timed(call, *args):
        started = time.perf_counter()
        result = call(*args)
        latencies.append(time.perf_counter() - started)
        return result

    while time.monotonic() - began < seconds:
        key, value = f"{tag}:{i}", f"{tag}-{i}"
        timed(client.put, key, None, value)
        acked[key] = value
        res = timed(client.get, key)
        counts["puts"] += 1
        counts["gets"] += 1
        assert res.values == [value], (key, res.values)
        if i % 2 == 0:  # an update of an earlier key, with the context it was read with
            old = f"pre:{(i // 2) % 20}"
            res = timed(client.get, old)
            assert res.values == [acked[old]], (old, res.values)
            new = f"{acked[old]}+{tag}{i}"
            timed(client.put, old, res.context, new)
            acked[old] = new
            counts["gets"] += 1
            counts["puts"] += 1
            counts["updates"] += 1
        if i % 25 == 0:  # a value too big to travel inline
            big_key, big = f"big:{tag}:{i}", os.urandom(BIG)
            timed(client.put, big_key, None, big)
            acked[big_key] = big
            assert timed(client.get, big_key).values == [big]
            counts["gets"] += 1
            counts["puts"] += 1
            counts["big_values"] += 1
        if time.monotonic() >= next_status:  # the store's own view, through cached handles
            statuses.append(cluster.status())
            next_status = time.monotonic() + 2.0
        if anti_entropy is None and time.monotonic() - began > seconds / 2:
            anti_entropy = cluster.anti_entropy()  # one Merkle round, node to node
        i += 1
    elapsed = time.monotonic() - began
    ops = counts["gets"] + counts["puts"]
    return {
        "seconds": round(elapsed, 1),
        "ops": ops,
        **counts,
        "ops_per_s": round(ops / elapsed, 1),
        "p50_ms": round(1000 * _percentile(latencies, 0.5), 1),
        "p99_ms": round(1000 * _percentile(latencies, 0.99), 1),
        "max_ms": round(1000 * max(latencies), 1),
        "statuses": statuses,
        "anti_entropy": anti_entropy,
    }


def _gossip_sent(cluster) -> dict[str, int]:
    return {node: info["sent"].get("gossip", 0) for node, info in cluster.info().items()}


def test_store_survives_gcs_outage_with_fault_tolerance(monkeypatch):
    """Kill the GCS of a fault-tolerant head for OUTAGE seconds: every get and put of a
    client holding cached handles succeeds meanwhile (values above the inline limit too),
    gossip keeps running (no node is ever seen down) and anti-entropy works; after the GCS
    returns, named actors are found again, new drivers connect, and every acknowledged
    write is readable and held by exactly N=3 nodes."""
    if ray.is_initialized():
        ray.shutdown()
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed: apt-get install redis-server")
    # This process is the driver: it too ends itself after this long without a GCS.
    monkeypatch.setenv("RAY_gcs_rpc_server_reconnect_timeout_s", str(FT_RECONNECT_TIMEOUT))
    redis_dir = tempfile.mkdtemp(prefix="drgcs-redis-")
    redis = head = cluster = None
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
        for i in range(20):
            client.put(f"pre:{i}", None, f"pre-{i}")
            acked[f"pre:{i}"] = f"pre-{i}"
        wait_for(lambda: set(cluster.status().values()) == {"up"}, what="all nodes up")
        figures["new_driver_before_s"] = round(
            _new_driver_seconds(head, "pre:0", acked["pre:0"], deadline=60), 1
        )
        figures["before"] = _workload(client, cluster, acked, BASELINE, "before")

        # -- the GCS goes down -----------------------------------------------------------------
        raylet = head.one("raylet")
        nodes = head.storage_node_pids()
        assert len(nodes) == 3, nodes
        gossip_before = _gossip_sent(cluster)
        saved = head.kill_gcs()
        killed_at = time.monotonic()
        during = _workload(client, cluster, acked, OUTAGE, "during")
        # Still down (nothing restarted it behind our back) and nothing of ours died.
        assert not head.processes("gcs_server"), "a gcs_server came back by itself"
        assert _alive(raylet) and head.storage_node_pids() == nodes
        # Gossip ran all along: with down_after=1.5 s, a stalled node would be seen "down".
        gossip_after = _gossip_sent(cluster)
        assert all(gossip_after[n] > gossip_before[n] for n in cluster.nodes()), (
            gossip_before,
            gossip_after,
        )
        assert during["statuses"], "cluster.status() was never asked"
        assert not any("down" in s.values() for s in during["statuses"]), during["statuses"]
        assert during["anti_entropy"] is not None
        assert during["anti_entropy"]["peers_unreachable"] == 0, during["anti_entropy"]
        figures["during"] = during
        figures["gcs_down_s"] = round(time.monotonic() - killed_at, 1)

        # -- the GCS comes back ----------------------------------------------------------------
        restarted_at = time.monotonic()
        head.restart_gcs(saved)
        wait_for(
            lambda: _answers(lambda: any(n["Alive"] for n in ray.nodes())),
            timeout=90,
            interval=0.2,
            what="ray.nodes() answering after the GCS restart",
        )
        figures["ray_nodes_answer_s"] = round(time.monotonic() - restarted_at, 1)
        # Named actors come back from Redis: this is how connect() finds the store.
        wait_for(
            lambda: _answers(lambda: len(dynaray.cluster._named_nodes(cluster.store)) == 3),
            timeout=60,
            interval=0.2,
            what="named-actor lookup after the GCS restart",
        )
        figures["named_lookup_s"] = round(time.monotonic() - restarted_at, 1)
        # The control plane works again: a new function is exported, scheduled and run.
        assert ray.get(ray.remote(num_cpus=0)(lambda: 42).remote(), timeout=60) == 42
        figures["new_task_s"] = round(time.monotonic() - restarted_at, 1)
        key = "during:0"
        new_driver = _new_driver_seconds(head, key, acked[key], deadline=90)
        figures["new_driver_s"] = round(time.monotonic() - restarted_at, 1)
        figures["new_driver_alone_s"] = round(new_driver, 1)

        # -- the store is whole ----------------------------------------------------------------
        assert head.storage_node_pids() == nodes  # the same actors, never restarted
        for key, value in acked.items():
            assert client.get(key).values == [value], key
        for key, value in acked.items():
            wait_for(
                lambda k=key, v=value: (
                    cluster.replica_state(k) == {n: [v] for n in cluster.nodes()}
                ),
                timeout=30,
                what=f"{key} on the N=3 nodes",
            )
            assert len(cluster.replica_state(key)) == 3
        figures["keys_checked"] = len(acked)
    finally:
        for phase in ("before", "during"):
            if phase in figures:
                figures[phase]["statuses"] = len(figures[phase]["statuses"])
        print("\nGCS outage with FT:", json.dumps(figures))
        if cluster is not None:
            try:
                cluster.shutdown()
            except Exception as exc:  # noqa: BLE001 - cleanup goes on
                print("cluster.shutdown failed:", exc)
        if ray.is_initialized():
            ray.shutdown()
        if head is not None:
            head.stop()
        if redis is not None:
            redis.kill()
            redis.wait(timeout=10)
        shutil.rmtree(redis_dir, ignore_errors=True)


# -- without GCS fault tolerance -------------------------------------------------------------

# The driver runs in its own process: a Ray driver whose GCS stays away past its reconnect
# timeout ends its process, which must not be pytest's.
DRIVER = textwrap.dedent(
    """
    import json, sys, time
    import dynaray, ray

    address, log_path, options = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    ray.init(address=address, namespace="dynaray", log_to_driver=False)
    cluster = dynaray.start(nodes=3, n=3, r=2, w=2, node_options=options)
    client = cluster.client(request_timeout=3.0)
    with open(log_path, "a", buffering=1) as log:
        log.write(json.dumps({"ready": True}) + "\\n")
        i = 0
        while True:
            for op in ("put", "get"):
                start = time.time()
                try:
                    if op == "put":
                        client.put(f"k:{i}", None, i)
                    else:
                        assert client.get(f"k:{i}").values == [i]
                    entry = {"ok": True}
                except Exception as exc:
                    entry = {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:160]}"}
                entry.update(op=op, start=start, end=time.time())
                log.write(json.dumps(entry) + "\\n")
            i += 1
            time.sleep(0.05)
    """
)


def _read_ops(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip().endswith("}")]


def test_without_fault_tolerance_the_store_dies_with_the_gcs():
    """Without Redis behind the GCS, the head is a single point of failure for the store.

    Observed (Ray 2.60, one machine, reconnect timeout 10 s for the head's processes, 20 s
    for the driver; five runs): after the GCS is SIGKILLed, gets and puts through cached
    handles go on succeeding for 9-10 s; then the raylet and each storage node process end
    themselves ("Failed to connect to GCS within 10 seconds ... The program will
    terminate"), 9.4-12 s after the kill, and the store is gone. From then on every request
    fails, after several seconds each (every coordinator tried in turn answers
    ActorUnavailableError: RequestTimeout or Unavailable), until the driver's own reconnect
    timeout ends its process with status 1 (19-20 s after the kill). A GCS started again
    without Redis would know nothing of the old cluster: the store could only be started
    again from its data directories.
    """
    if ray.is_initialized():
        ray.shutdown()
    psutil = _psutil()
    head = Head({"RAY_gcs_rpc_server_reconnect_timeout_s": str(NO_FT_RECONNECT_TIMEOUT)})
    log_dir = tempfile.mkdtemp(prefix="drgcs-log-")
    log_path = os.path.join(log_dir, "ops.jsonl")
    driver = None
    try:
        head.start()
        driver = subprocess.Popen(
            [sys.executable, "-c", DRIVER, head.address, log_path, json.dumps(OPTIONS)],
            env=_env(RAY_gcs_rpc_server_reconnect_timeout_s=str(NO_FT_DRIVER_RECONNECT_TIMEOUT)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        writing = lambda: sum(e.get("ok", 0) for e in _read_ops(log_path)) >= 10  # noqa: E731
        wait_for(lambda: driver.poll() is not None or writing(), timeout=120, what="writes")
        assert driver.poll() is None, f"driver failed: {driver.stderr.read()[-3000:]}"
        raylet = head.one("raylet")
        nodes = [psutil.Process(pid) for pid in head.storage_node_pids()]
        assert len(nodes) == 3, nodes
        head.kill_gcs()
        killed_at = time.time()

        # The raylet and the storage nodes give up on the GCS after the reconnect timeout.
        wait_for(lambda: not _alive(raylet), timeout=NO_FT_RECONNECT_TIMEOUT + 60,
                 what="raylet exit")  # fmt: skip
        raylet_gone = time.time() - killed_at
        wait_for(lambda: not any(_alive(p) for p in nodes), timeout=30,
                 what="storage node processes gone")  # fmt: skip
        nodes_gone = time.time() - killed_at
        # The driver ends itself after its own reconnect timeout, with a failure status.
        driver.wait(timeout=NO_FT_DRIVER_RECONNECT_TIMEOUT + 60)
        driver_gone = time.time() - killed_at
        assert driver.returncode != 0

        ops = [e for e in _read_ops(log_path) if "op" in e]
        after_kill = [e for e in ops if e["start"] >= killed_at]
        succeeded = [e for e in after_kill if e["ok"]]
        # The data path did not need the GCS while the store's processes lived...
        assert succeeded, after_kill[:5]
        # ... and nothing succeeded once they were gone.
        late = [e for e in after_kill if e["start"] > killed_at + nodes_gone]
        assert not any(e["ok"] for e in late), late[:5]
        failed = [e for e in after_kill if not e["ok"]]
        print(
            "\nGCS outage without FT:",
            json.dumps(
                {
                    "raylet_exit_s": round(raylet_gone, 1),
                    "storage_nodes_gone_s": round(nodes_gone, 1),
                    "driver_exit_s": round(driver_gone, 1),
                    "driver_returncode": driver.returncode,
                    "ok_ops_after_kill": len(succeeded),
                    "last_ok_end_s": round(max(e["end"] for e in succeeded) - killed_at, 1),
                    "failed_ops": [
                        (round(e["start"] - killed_at, 1), round(e["end"] - e["start"], 1),
                         e["error"]) for e in failed[:3]
                    ],
                    "unfinished_op_started_s": round(ops[-1]["end"] - killed_at, 1),
                }
            ),
        )  # fmt: skip
    finally:
        if driver is not None and driver.poll() is None:
            driver.kill()
            driver.wait(timeout=10)
        head.stop()
        shutil.rmtree(log_dir, ignore_errors=True)
