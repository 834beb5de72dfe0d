"""dynaray: a Dynamo-style leaderless, replicated, durable key-value store inside a Ray cluster.

import dynaray
cluster = dynaray.start(nodes=5, n=3, r=2, w=2)
client = cluster.client()
ctx = client.put("cart:1", None, ["book"])
res = client.get("cart:1")          # res.values, res.context, res.value
"""

from importlib import metadata as _metadata

from dynaray.buckets import Bucket
from dynaray.client import Client, GetResult
from dynaray.cluster import Cluster, connect, start
from dynaray.context import Context
from dynaray.errors import (
    ConflictError,
    DynarayError,
    InvalidContext,
    InvalidRequest,
    KindMismatch,
    NodeError,
    QuorumError,
    RequestTimeout,
    SiblingLimitError,
    StorageError,
    Unavailable,
    UnreadableValue,
)

try:
    __version__ = _metadata.version("dynaray")
except _metadata.PackageNotFoundError:  # run from a source tree that was not installed
    __version__ = "unknown"

__all__ = [
    "Bucket",
    "Client",
    "Cluster",
    "ConflictError",
    "Context",
    "DynarayError",
    "GetResult",
    "InvalidContext",
    "InvalidRequest",
    "KindMismatch",
    "NodeError",
    "QuorumError",
    "RequestTimeout",
    "SiblingLimitError",
    "StorageError",
    "Unavailable",
    "UnreadableValue",
    "connect",
    "start",
]
