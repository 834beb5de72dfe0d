"""Shared fixtures: one Ray per test module, as starting Ray costs seconds on 2 cores."""

from __future__ import annotations

import logging
import os

import pytest
import ray

# Ray's per-call task events cost CPU the tests do not need.
os.environ.setdefault("RAY_task_events_report_interval_ms", "0")

# Short waits so failure handling shows within a test's patience.
FAST = {"replica_timeout": 1.0, "read_repair_wait": 0.5, "retry_after": 0.5}


@pytest.fixture(scope="module")
def ray_session():
    """A local Ray for the module; stopped at its end."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(
        namespace="dynaray",
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,
        num_cpus=2,
    )
    yield
    ray.shutdown()
