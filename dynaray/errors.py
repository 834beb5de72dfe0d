"""Every exception dynaray raises, in one place, each with a message that says what to do."""

from __future__ import annotations


def _rebuild(cls: type, args: tuple, state: dict) -> BaseException:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class PortableError(Exception):
    """An error that crosses processes whole. A node's error reaches its caller pickled by
    Ray, and Exception's own pickling rebuilds an error by calling __init__ with the message
    alone, which an error with an __init__ of its own refuses: the caller then got Ray's
    deserialization failure instead of, say, "the write may or may not have been stored"."""

    def __reduce__(self) -> tuple:
        return (_rebuild, (type(self), self.args, self.__dict__))


class DynarayError(PortableError):
    """Base class of dynaray's own errors."""


class ConflictError(DynarayError):
    """A read found concurrent versions (siblings) where one value was asked for."""

    def __init__(self, key: object, count: int) -> None:
        self.key = key
        self.count = count
        super().__init__(
            f"key {key!r} has {count} conflicting versions (siblings); read them with "
            "`result.values`, merge them, and write the merge back with "
            "`put(key, result.context, merged)`"
        )


# A counter, set or map operation whose outcome is unknown: a read may not tell (another
# writer's increments look the same), and no context makes it safe to send twice.
_UPDATE_MAYBE = (
    "the update may or may not have been applied (it may still spread from the replicas "
    "it reached); sending it again could apply it twice (a counter counts it twice)"
)


class QuorumError(DynarayError):
    """Too few replicas answered in time. For a write, the outcome is indeterminate."""

    def __init__(
        self,
        op: str,
        key: object,
        answered: int,
        needed: int,
        asked: int,
        failed: int | None = None,
    ) -> None:
        self.op = op
        self.key = key
        self.answered = answered
        self.needed = needed
        self.asked = asked
        self.failed = failed
        message = (
            f"{op} of {key!r}: {answered} of {asked} replicas answered, {needed} needed (the "
            "others failed, or did not answer in time)"
        )
        if failed is not None and answered + failed < asked:
            # A read stops once its quorum is out of reach (some were never waited for), or
            # at its deadline.
            message = (
                f"{op} of {key!r}: {answered} of {asked} replicas answered and {failed} "
                f"failed, {needed} needed: "
                + (
                    "with so many failed the quorum was out of reach, so the rest were not "
                    "waited for"
                    if asked - failed < needed
                    else "the rest did not answer within the read's deadline"
                )
            )
        if op == "create bucket":
            message = (
                f"creating bucket {key!r}: {answered} of {asked} nodes stored its properties in "
                f"time, {needed} needed; they may still spread from there by gossip: open the "
                "bucket again (with the same properties) to find out"
            )
        elif op in ("put", "delete"):
            message += (
                "; the write may still be stored on the replicas that did answer and will spread "
                "from there: read the key again before retrying with the new context"
            )
        elif op == "update":
            message += f"; {_UPDATE_MAYBE}"
        super().__init__(message)

    @property
    def indeterminate(self) -> bool:
        """True for writes: they may or may not have been stored."""
        return self.op in ("put", "delete", "update", "create bucket")


class RequestTimeout(DynarayError, TimeoutError):
    """The coordinator did not answer in time. For a write, the outcome is indeterminate."""

    def __init__(self, op: str, key: object, seconds: float, reason: str | None = None) -> None:
        self.op = op
        self.key = key
        message = f"{op} of {key!r}: " + (
            reason or f"no answer from the coordinator within {seconds:.1f}s"
        )
        if op in ("put", "delete"):
            message += "; the write may or may not have been stored: read the key to find out"
        elif op == "update":
            message += f"; {_UPDATE_MAYBE}"
        super().__init__(message)


class InvalidContext(DynarayError, ValueError):
    """A context that is malformed, truncated, tampered with or from another format."""


class InvalidRequest(DynarayError, ValueError):
    """A storage node refused a request that cannot apply to the key (nothing was written)."""


class SiblingLimitError(InvalidRequest):
    """A write would leave more siblings than the limit: resolve them first."""


class KindMismatch(InvalidRequest):
    """Two copies of one key hold different kinds of data (a bucket created with two
    policies on the two sides of a partition): neither can take the other in, so the key
    cannot be read or written until one kind is gone."""


class UnreadableValue(DynarayError):
    """A stored value that cannot be decoded here (a pickled object whose class is not
    importable in this process, say). `context` lets the key be overwritten or deleted."""

    def __init__(self, key: object, cause: BaseException, context: object) -> None:
        self.key, self.context = key, context
        super().__init__(
            f"key {key!r} holds a value that cannot be decoded here ({type(cause).__name__}: "
            f"{cause}); is the module of its class importable in this process? To replace "
            "or delete it, pass this error's .context to put or delete"
        )


class Unavailable(DynarayError):
    """No storage node could be reached to serve the request."""


class NodeError(DynarayError):
    """A storage node refused to start or to act (its directory, its stamp, its ring)."""


class StorageError(NodeError):
    """A node could not commit a write to its disk (full, failing, read-only): nothing of
    that write was stored there. Its coordinator hands the write to another replica."""
