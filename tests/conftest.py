"""Shared fixtures: one Ray per test module, as starting Ray costs seconds on 2 cores."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile

import pytest
import ray


@contextlib.contextmanager
def small_disk(path, size: str = "8m"):
    """A disk of its own at path (a tmpfs of `size`), to fill up (`verify.fill_disk`); the
    test is skipped where mounting one is not allowed (not root)."""
    from dynaray import verify

    try:
        verify.mount_disk(str(path), size)
    except ValueError as exc:
        pytest.skip(str(exc))
    try:
        yield path
    finally:
        verify.unmount_disk(str(path))


# Ray's per-call task events cost CPU the tests do not need.
os.environ.setdefault("RAY_task_events_report_interval_ms", "0")
# Stores the tests start note themselves in dynaray's home (dynaray/manifest.py): not the
# home of whoever runs the tests.
os.environ["DYNARAY_HOME"] = tempfile.mkdtemp(prefix="dynaray-test-home-")

# Short waits so failure handling shows within a test's patience.
FAST = {
    "replica_timeout": 1.0,
    "read_repair_wait": 0.5,
    "retry_after": 0.5,
    "gossip_interval": 0.2,
    "suspect_after": 0.8,
    "down_after": 1.5,
    "handoff_interval": 0.3,
}


@pytest.fixture(autouse=True)
def _dynaray_logger_as_it_was():
    """A StorageNode made in the test process points the "dynaray" logger at stderr, off
    the root logger (node._log_as, meant for a node's own process), which would hide its
    records from caplog in every later test. Put the logger back after each test."""
    logger = logging.getLogger("dynaray")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers, logger.propagate = saved[0], saved[2]
    logger.setLevel(saved[1])  # through setLevel, which clears the loggers' level caches


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.2, what: str = "condition"):
    """Poll predicate until it returns a truthy value; fail the test after timeout seconds.

    A deadline on a condition, not a timing assertion: slow machines only wait longer."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout:.0f}s (last: {value!r})")
        time.sleep(interval)


def all_see_all_up(cluster) -> bool:
    """Every live node's own gossip view has every node up. Stricter than cluster.status()
    (the majority's verdict): a node that still sees a peer down after a heal would write
    for it to a stand-in, and the copy would wait in a hint."""
    views = cluster._ask("membership_view", timeout=5.0)
    return len(views) == len(cluster.nodes()) and all(
        state == "up" for view in views.values() for state in view.values()
    )


@pytest.fixture(scope="module")
def ray_session():
    """A fresh local Ray for the module (address="local": never a cluster that another
    process started on this machine); stopped at its end."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(
        address="local",
        namespace="dynaray",
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,
        num_cpus=2,
    )
    yield
    ray.shutdown()
