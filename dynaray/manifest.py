"""The note a store leaves on the machine that starts it, that a data directory holds it.

On a cluster whose store nodes run on machines of their own (the `kvnode` resource), the
node directories live on those machines, and the machine that starts the store (the head,
for `dynaray up`) sees none of them. After a full stop, a start that runs before those
machines have joined Ray again would find no node directory anywhere and take the data
directory for a new store: it would start an empty store in its place. The note says that
the directory held a store, which nodes it had at its last start and where they ran, so
such a start is refused until the machines are back (`check`).

Notes are kept in the dynaray home of the starting machine (`DYNARAY_HOME`, by default
~/.dynaray, under stores/), one per data directory, not in the data directory: on a
cluster the starting machine may have no such directory. Written at every start that keeps
data (`write`), read before the next (`read`). A note guards; it holds no data: deleting
it is how an operator says that a store's data is gone for good and a new one may start.
"""

from __future__ import annotations

import hashlib
import json
import os

from dynaray.errors import DynarayError


def home() -> str:
    """dynaray's own directory on this machine (`dynaray up`'s records, store notes)."""
    return os.path.expanduser(os.environ.get("DYNARAY_HOME", "~/.dynaray"))


def path_of(root: str) -> str:
    """Where the note of the store in data directory `root` is kept on this machine."""
    root = os.path.abspath(root)
    digest = hashlib.blake2b(root.encode(), digest_size=8).hexdigest()
    return os.path.join(home(), "stores", f"{os.path.basename(root) or 'root'}-{digest}.json")


def read(root: str) -> dict | None:
    """The note of data directory root kept on this machine, or None if there is none."""
    path = path_of(root)
    try:
        with open(path) as f:
            kept = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise DynarayError(
            f"{path} cannot be read ({exc}); nothing was started. It notes which store "
            f"{root!r} holds: put it right, or delete it if that store's data is gone for good"
        ) from None
    if not isinstance(kept, dict) or not isinstance(kept.get("nodes"), list):
        raise DynarayError(
            f"{path} is not a note dynaray wrote; nothing was started. Delete it if "
            f"{root!r} holds no store"
        )
    return kept


def write(root: str, store: str, nodes: list[str], machines: str | None) -> None:
    """Note that root holds `store` with `nodes`, run on machines carrying the resource
    `machines` (None: side by side on one machine). Replaced whole, never torn."""
    path = path_of(root)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    note = {
        "root": os.path.abspath(root),
        "store": store,
        "nodes": sorted(nodes),
        "machines": machines,
    }
    temporary = path + ".new"
    with open(temporary, "w") as f:
        json.dump(note, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


def check(kept: dict | None, root: str, machines: str | None, found_any: bool) -> None:
    """Refuse, before anything starts, a start of the store noted in `kept` that could not
    find its data: its nodes ran on machines carrying `kept["machines"]` and the Ray cluster
    now has none (`machines` is None), or no node directory of it was found at all
    (`found_any` False). Pure: the caller looked."""
    if kept is None:
        return
    held = (
        f"{root!r} holds store {kept.get('store')!r} (started last with nodes "
        f"{', '.join(kept['nodes'])})"
    )
    forget = (
        f"If its data is lost for good, or the store has moved, delete {path_of(root)} to "
        "start anyway"
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
