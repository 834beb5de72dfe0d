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


def parse(name: str) -> tuple[str, str | None] | None:
    """(store, node id) of an actor registered under `name`: the node id is None for the
    store's Router; None for a name that is neither."""
    if name.endswith(".router") and len(name) > len(".router"):
        return name[: -len(".router")], None
    store, found, node_id = name.rpartition(".node.")
    return (store, node_id) if found and store and node_id else None


def store_option(store: str) -> str:
    """The `dynaray` command's option naming the store, for messages ("" for the default)."""
    return "" if store == DEFAULT_STORE else f" --store {store}"
