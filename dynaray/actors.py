"""Actor ids: the names a node's writes carry in version vectors and CRDTs, per key.

A node numbers its dots (and counts its counter increments) from what its own copy of a
key holds, so it may go on under an actor id only while its copy holds every dot it ever
issued under that id for the key. A copy it deleted (a reaped tombstone, a range handed to
another node) and later got back from a peer, or a copy still on its way, may lack some:
the next write would issue a dot again that a peer already holds for another value, and
the peer would drop that write as already seen.

So a node writes a key under a *key epoch*: its actor id, "^", and the number (hex) of
the LMDB transaction that first wrote the key here. A key it holds no copy of gets a new
epoch; one it holds goes on under its newest epoch found in the copy, unless the key's
range was dropped here since that epoch began (the range's floor). The bare actor id is
epoch 0, what writes carried before key epochs; a directory written before them has a
floor under every range (the node's `epochs_since`), as its drops kept none. Riak KV
does the same (its "per-key epochs") for the same reason. Pure: no Ray, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable

SEPARATOR = "^"  # not in node ids ("n3"), random suffixes ("@1f2e") or stand-in ids ("~")


def key_epoch(actor: str, epoch: int) -> str:
    """The id a node's writes to one key carry from transaction `epoch` on."""
    return f"{actor}{SEPARATOR}{epoch:x}"


def epoch_of(actor: str, entry: str) -> int | None:
    """Which epoch of `actor` the id `entry` is (0: the bare id), or None if not its."""
    if entry == actor:
        return 0
    head, sep, tail = entry.rpartition(SEPARATOR)
    if sep and head == actor:
        try:
            return int(tail, 16)
        except ValueError:
            return None
    return None


def continuing(actor: str, entries: Iterable[str], floor: int = 0) -> str | None:
    """The id to go on writing a key under, given the ids in the node's copy of it: the
    newest epoch of `actor` that began after `floor`, or None (start a new epoch)."""
    best: tuple[int, str] | None = None
    for entry in entries:
        epoch = epoch_of(actor, entry)
        if epoch is None or (floor and epoch <= floor):
            continue
        if best is None or epoch > best[0]:
            best = (epoch, entry)
    return None if best is None else best[1]
