"""Shared fixtures: one Ray per test module, as starting Ray costs seconds on 2 cores."""

from __future__ import annotations

import logging
import os

import pytest
import ray

# Ray's per-call task events cost CPU the tests do not need.
os.environ.setdefault("RAY_task_events_report_interval_ms", "0")

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
