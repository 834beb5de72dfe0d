"""dynaray's errors cross processes whole: a node's error reaches its caller pickled by Ray."""

from __future__ import annotations

import pickle

import cloudpickle
import pytest

from dynaray import errors
from dynaray.transport import PeerUnavailable

MADE = [
    errors.ConflictError("k", 3),
    errors.QuorumError("put", "k", 1, 2, 3),
    errors.QuorumError("create bucket", "tags", 1, 2, 5),
    errors.QuorumError("get", "k", 0, 2, 3, 2),
    errors.RequestTimeout("put", "k", 1.5),
    errors.RequestTimeout("get", "k", 1.5, "the coordinator n2 did not answer"),
    errors.InvalidContext("a truncated context"),
    errors.SiblingLimitError("too many siblings"),
    errors.Unavailable("no node answered"),
    errors.UnreadableValue("k", ValueError("no module named 'shop'"), b"context"),
    errors.NodeError("store is closed"),
    errors.KindMismatch("copies of a counter and a set"),
    PeerUnavailable("n3", "partitioned"),
]


@pytest.mark.parametrize("dumps", [pickle.dumps, cloudpickle.dumps])
@pytest.mark.parametrize("error", MADE, ids=lambda e: type(e).__name__)
def test_an_error_comes_back_as_it_was_made(error, dumps):
    back = pickle.loads(dumps(error))
    assert type(back) is type(error)
    assert str(back) == str(error)
    assert back.args == error.args
    assert vars(back) == vars(error)


def test_what_callers_test_for_survives_the_trip():
    timeout = pickle.loads(pickle.dumps(errors.RequestTimeout("put", "k", 1.5)))
    assert isinstance(timeout, TimeoutError)
    assert "may or may not have been stored" in str(timeout)
    quorum = pickle.loads(pickle.dumps(errors.QuorumError("delete", "k", 1, 2, 3)))
    assert quorum.indeterminate and (quorum.answered, quorum.needed, quorum.asked) == (1, 2, 3)
    peer = pickle.loads(pickle.dumps(PeerUnavailable("n3", "partitioned")))
    assert (peer.peer, peer.reason) == ("n3", "partitioned")


def test_a_read_that_stopped_early_says_how_many_failed():
    """Two of three replicas failed, so a read needing two stops without waiting for the
    third: "0 of 3 answered" alone reads as if the third were down too."""
    early = str(errors.QuorumError("get", "k", 0, 2, 3, 2))
    assert "0 of 3 replicas answered and 2 failed" in early
    assert "the rest were not waited for" in early
    assert "and 2 failed" not in str(errors.QuorumError("get", "k", 1, 2, 3, 2))  # all heard
    slow = str(errors.QuorumError("get", "k", 1, 2, 2, 0))  # one answered, one never did
    assert "did not answer within the read's deadline" in slow and "out of reach" not in slow


def test_an_update_of_unknown_outcome_says_sending_it_again_may_apply_it_twice():
    """A counter, set or map operation has no context to make a retry safe, and a read may
    not tell whether it landed: the message must not send the user to do either."""
    from dynaray import records

    increment = ["counter", ["increment", 1]]
    assert records.write_name(increment) == "update"
    assert records.write_name(["siblings", [], None]) == "delete"
    assert records.write_name(["lww", b"v"]) == "put"
    for error in (
        errors.QuorumError(records.write_name(increment), "likes", 1, 2, 3),
        errors.RequestTimeout(records.write_name(increment), "likes", 1.5),
    ):
        message = str(error)
        assert "could apply it twice" in message and "context" not in message
    assert errors.QuorumError("update", "k", 1, 2, 3).indeterminate


def test_copies_of_two_kinds_are_a_dynaray_error_that_names_both():
    """A read of a key written as two kinds (a bucket created with two policies on the two
    sides of a partition) raised a bare ValueError, which `except DynarayError` missed."""
    from dynaray import records

    counter = records.update(None, ["counter", ["increment", 1]], "a", 1)
    plain = records.update(None, ["siblings", [], b"v"], "a", 1)
    with pytest.raises(errors.DynarayError, match="two kinds of data, counter and siblings"):
        records.merge(counter, plain)
    with pytest.raises(errors.KindMismatch):
        records.merge_encoded([records.encode(counter), records.encode(plain)])


def test_a_value_that_cannot_be_decoded_names_its_key_and_carries_its_context():
    """Without the context in the error, such a key could never be overwritten or deleted
    (delete with no context reads first, and the read failed)."""
    from dynaray import codec, records
    from dynaray.client import decode_result
    from dynaray.context import Context, key_tag

    hashed = codec.hash_input(b"default", b"cart")
    garbage = codec.encode_value(b"x")[:1].replace(b"\x00", b"\x01") + b"not a pickle"
    stored = records.encode(records.update(None, ["siblings", [], garbage], "n1", 1))
    with pytest.raises(errors.UnreadableValue, match="key 'cart' holds a value") as info:
        decode_result("cart", hashed, stored)
    assert isinstance(info.value.context, Context)
    assert info.value.context.tag == key_tag(hashed) and len(info.value.context.version_vector)
    assert decode_result(b"cart", hashed, None).key == b"cart"  # the key as asked for
