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


def store_of(name: str) -> str | None:
    """The store an actor registered under `name` belongs to, or None for another name."""
    for part in (".node.", ".router"):
        store, found, rest = name.rpartition(part)
        if found and store and (rest if part == ".node." else not rest):
            return store
    return None


def store_option(store: str) -> str:
    """The `dynaray` command's option naming the store, for messages ("" for the default)."""
    return "" if store == DEFAULT_STORE else f" --store {store}"
