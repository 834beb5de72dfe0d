"""The note a store keeps in its data directory on the machine that starts it.

On a cluster whose store nodes run on machines of their own (the `kvnode` resource), the
node directories live on those machines, and the machine that starts the store (the head,
for `dynaray up`) sees none of them. After a full stop, a start that runs before those
machines have joined Ray again would find no node directory anywhere and take the data
directory for a new store: it would start an empty store in its place. The note says that
the directory held a store, which nodes it had and where they ran, so such a start is
refused until the machines are back (`check`).

The note is written at every start that keeps data (`write`), read before the next
(`read`). It guards; it holds no data: deleting it is how an operator says that a store's
data is gone for good and a new one may start there.
"""

from __future__ import annotations

import json
import os

from dynaray.errors import DynarayError

FILE = "dynaray-store.json"


def path_of(root: str) -> str:
    return os.path.join(root, FILE)


def read(root: str) -> dict | None:
    """The note kept in root on this machine, or None if there is none."""
    try:
        with open(path_of(root)) as f:
            kept = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise DynarayError(
            f"{path_of(root)} cannot be read ({exc}); nothing was started. It notes which "
            "store the directory holds: put it right, or delete it if that store's data is "
            "gone for good"
        ) from None
    if not isinstance(kept, dict) or not isinstance(kept.get("nodes"), list):
        raise DynarayError(
            f"{path_of(root)} is not a note dynaray wrote; nothing was started. Delete it if "
            "the directory holds no store"
        )
    return kept


def write(root: str, store: str, nodes: list[str], machines: str | None) -> None:
    """Note in root that it holds `store` with `nodes`, run on machines carrying the
    resource `machines` (None: side by side on one machine). Replaced whole, never torn."""
    os.makedirs(root, exist_ok=True)
    temporary = path_of(root) + ".new"
    with open(temporary, "w") as f:
        json.dump({"store": store, "nodes": sorted(nodes), "machines": machines}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path_of(root))


def check(kept: dict | None, root: str, machines: str | None, found_any: bool) -> None:
    """Refuse, before anything starts, a start of the store noted in `kept` that could not
    find its data: its nodes ran on machines carrying `kept["machines"]` and the Ray cluster
    now has none (`machines` is None), or no node directory of it was found at all
    (`found_any` False). Pure: the caller looked."""
    if kept is None:
        return
    held = f"{root!r} holds store {kept.get('store')!r} (nodes {', '.join(kept['nodes'])})"
    forget = (
        f"If its data is lost for good, delete {path_of(root)} to start a new, empty store there"
    )
    if kept.get("machines") and not machines:
        raise DynarayError(
            f"{held}, whose nodes run on machines with the {kept['machines']!r} resource, and "
            f"the Ray cluster has no such machine now; nothing was started. They may still be "
            f"starting: wait until `ray status` lists {kept['machines']!r} on every one of "
            f"them, then start the store again. {forget}"
        )
    if not found_any:
        where = f"on the machines with {machines!r} in the Ray cluster" if machines else "there"
        raise DynarayError(
            f"{held}, and no directory of its nodes is found {where}; nothing was started. "
            f"If machines that hold them are still starting, wait until `ray status` lists "
            f"them all, then start the store again. {forget}"
        )
