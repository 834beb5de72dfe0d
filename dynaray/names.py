"""The names a store's actors are registered under in Ray, so that any driver, and any
storage node, can find them: one place, for the Cluster that creates them and the nodes
that look their peers up."""

from __future__ import annotations

NAMESPACE = "dynaray"
DEFAULT_STORE = "default"


def node_name(store: str, node_id: str) -> str:
    return f"{store}.node.{node_id}"


def router_name(store: str) -> str:
    return f"{store}.router"
