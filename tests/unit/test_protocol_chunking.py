from __future__ import annotations

import hashlib
import os
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from byzedge.protocol.chunking import (
    CHUNK_MAGIC,
    DEFAULT_MAX_MESSAGE_BYTES,
    Reassembler,
    is_chunk,
    split_payload,
)
from byzedge.protocol.errors import ChunkError, ProtocolError

MAX_MESSAGE = 300
LIMIT = 1 << 20
PAYLOAD = bytes(range(256)) * 8  # 2048 bytes, 12 chunks of at most 300 bytes


class FakeClock:
    """A monotonic clock that only moves when told to."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def chunk_frame(**changes: Any) -> bytes:
    """A well-formed chunk (first of two of a 10-byte payload) with ``changes`` applied."""
    payload = b"0123456789"
    fields: dict[str, Any] = {
        "id": b"i" * 16,
        "i": 0,
        "n": 2,
        "size": len(payload),
        "sha256": hashlib.sha256(payload).digest(),
        "data": payload[:5],
    }
    fields.update(changes)
    return encode_chunk({name: value for name, value in fields.items() if value is not None})


def decode_chunk(frame: bytes) -> dict[str, Any]:
    fields: dict[str, Any] = msgpack.unpackb(frame[len(CHUNK_MAGIC) :], raw=False)
    return fields


def encode_chunk(fields: dict[str, Any]) -> bytes:
    packed: bytes = msgpack.packb(fields, use_bin_type=True)
    return CHUNK_MAGIC + packed


def feed_all(reassembler: Reassembler, frames: list[bytes], source: str = "dev") -> list[bytes]:
    """Feed every frame and return the payloads that came out."""
    return [payload for frame in frames if (payload := reassembler.feed(source, frame)) is not None]


# --- split_payload ------------------------------------------------------------------------


def test_chunk_error_is_a_protocol_error() -> None:
    assert issubclass(ChunkError, ProtocolError)


def test_default_max_message_bytes_is_128_kib() -> None:
    assert DEFAULT_MAX_MESSAGE_BYTES == 128 * 1024


def test_payload_that_fits_is_returned_alone_and_unchanged() -> None:
    assert split_payload(b"BZE1 small", MAX_MESSAGE) == [b"BZE1 small"]


def test_payload_of_exactly_max_message_bytes_is_not_chunked() -> None:
    payload = b"x" * MAX_MESSAGE
    assert split_payload(payload, MAX_MESSAGE) == [payload]


def test_payload_one_byte_over_max_message_bytes_is_chunked() -> None:
    frames = split_payload(b"x" * (MAX_MESSAGE + 1), MAX_MESSAGE)
    assert len(frames) == 2
    assert all(is_chunk(frame) for frame in frames)


def test_empty_payload_is_returned_alone() -> None:
    assert split_payload(b"", MAX_MESSAGE) == [b""]


def test_small_payload_starting_with_the_chunk_magic_is_still_chunked() -> None:
    payload = CHUNK_MAGIC + b"not a chunk"
    frames = split_payload(payload, MAX_MESSAGE)
    assert len(frames) == 1
    assert frames[0] != payload
    assert feed_all(Reassembler(LIMIT), frames) == [payload]


def test_chunks_carry_index_count_size_and_digest() -> None:
    frames = split_payload(PAYLOAD, MAX_MESSAGE)
    fields = [decode_chunk(frame) for frame in frames]
    assert [f["i"] for f in fields] == list(range(len(frames)))
    assert {f["n"] for f in fields} == {len(frames)}
    assert {f["size"] for f in fields} == {len(PAYLOAD)}
    assert {f["sha256"] for f in fields} == {hashlib.sha256(PAYLOAD).digest()}
    assert len({f["id"] for f in fields}) == 1
    assert b"".join(f["data"] for f in fields) == PAYLOAD


def test_two_splits_of_the_same_payload_get_different_message_ids() -> None:
    first = decode_chunk(split_payload(PAYLOAD, MAX_MESSAGE)[0])["id"]
    second = decode_chunk(split_payload(PAYLOAD, MAX_MESSAGE)[0])["id"]
    assert len(first) == 16
    assert first != second


@pytest.mark.parametrize("max_message_bytes", [-1, 0, 1, 128, 256])
def test_max_message_bytes_too_small_to_chunk_into_raises_value_error(
    max_message_bytes: int,
) -> None:
    with pytest.raises(ValueError, match="too small"):
        split_payload(PAYLOAD, max_message_bytes)


def test_smallest_allowed_max_message_bytes_chunks_and_reassembles() -> None:
    frames = split_payload(PAYLOAD, 257)
    assert all(len(frame) <= 257 for frame in frames)
    assert feed_all(Reassembler(LIMIT), frames) == [PAYLOAD]


def test_is_chunk_recognises_the_magic_only() -> None:
    assert is_chunk(CHUNK_MAGIC + b"anything")
    assert not is_chunk(b"BZE1" + b"anything")
    assert not is_chunk(b"BZC")
    assert not is_chunk(b"")


@settings(max_examples=150)
@given(
    payload=st.binary(max_size=6000),
    max_message_bytes=st.integers(257, 2048),
)
def test_every_frame_fits_in_max_message_bytes(payload: bytes, max_message_bytes: int) -> None:
    assert all(
        len(frame) <= max_message_bytes for frame in split_payload(payload, max_message_bytes)
    )


def test_every_frame_of_a_huge_payload_fits_in_the_default_limit() -> None:
    # Large enough for multi-byte counts, indices and bin32 lengths in the frame.
    payload = os.urandom(5 * DEFAULT_MAX_MESSAGE_BYTES + 17)
    frames = split_payload(payload)
    assert len(frames) == 6
    assert all(len(frame) <= DEFAULT_MAX_MESSAGE_BYTES for frame in frames)
    assert feed_all(Reassembler(LIMIT), frames) == [payload]


@settings(max_examples=150)
@given(
    payload=st.binary(max_size=6000),
    max_message_bytes=st.integers(257, 2048),
)
def test_any_payload_reassembles_in_order(payload: bytes, max_message_bytes: int) -> None:
    frames = split_payload(payload, max_message_bytes)
    reassembler = Reassembler(LIMIT)
    *head, last = frames
    assert all(reassembler.feed("dev", frame) is None for frame in head)
    assert reassembler.feed("dev", last) == payload
    assert reassembler.pending_count() == 0


@settings(max_examples=150)
@given(
    payload=st.binary(min_size=1, max_size=6000),
    max_message_bytes=st.integers(257, 1024),
    data=st.data(),
)
def test_any_payload_reassembles_in_any_order(
    payload: bytes, max_message_bytes: int, data: st.DataObject
) -> None:
    frames = data.draw(st.permutations(split_payload(payload, max_message_bytes)))
    assert feed_all(Reassembler(LIMIT), frames) == [payload]


@settings(max_examples=100)
@given(
    payload=st.binary(min_size=301, max_size=4000),
    data=st.data(),
)
def test_duplicated_chunks_before_completion_still_reassemble_once(
    payload: bytes, data: st.DataObject
) -> None:
    frames = split_payload(payload, MAX_MESSAGE)
    *head, last = frames
    duplicates = data.draw(st.lists(st.sampled_from(head), max_size=10))
    shuffled = data.draw(st.permutations(head + duplicates))
    assert feed_all(Reassembler(LIMIT), [*shuffled, last]) == [payload]


# --- Reassembler --------------------------------------------------------------------------


def test_reassembler_passes_an_unchunked_payload_through() -> None:
    assert Reassembler(LIMIT).feed("dev", b"BZE1 whole") == b"BZE1 whole"


def test_reassembler_refuses_an_unchunked_payload_over_the_limit() -> None:
    with pytest.raises(ChunkError, match="exceeds"):
        Reassembler(100).feed("dev", b"x" * 101)


def test_reassembler_accepts_an_unchunked_payload_at_the_limit() -> None:
    assert Reassembler(100).feed("dev", b"x" * 100) == b"x" * 100


def test_chunks_shuffled_and_duplicated_reassemble() -> None:
    frames = split_payload(PAYLOAD, MAX_MESSAGE)
    order = [frames[5], frames[0], frames[5], *frames[6:][::-1], frames[0], *frames[1:5]]
    assert feed_all(Reassembler(LIMIT), order) == [PAYLOAD]


def test_reassembler_returns_none_while_chunks_are_missing() -> None:
    reassembler = Reassembler(LIMIT)
    frames = split_payload(PAYLOAD, MAX_MESSAGE)
    assert [reassembler.feed("dev", frame) for frame in frames[:-1]] == [None] * (len(frames) - 1)
    assert reassembler.pending_count() == 1


def test_interleaved_messages_from_two_sources_both_reassemble() -> None:
    other = bytes(reversed(PAYLOAD))
    reassembler = Reassembler(LIMIT, max_pending_per_source=1)
    out: dict[str, bytes] = {}
    for mine, theirs in zip(
        split_payload(PAYLOAD, MAX_MESSAGE), split_payload(other, MAX_MESSAGE), strict=True
    ):
        for source, frame in (("dev-a", mine), ("dev-b", theirs)):
            if (payload := reassembler.feed(source, frame)) is not None:
                out[source] = payload
    assert out == {"dev-a": PAYLOAD, "dev-b": other}
    assert reassembler.pending_count() == 0


def test_the_same_chunks_from_two_sources_reassemble_separately() -> None:
    frames = split_payload(PAYLOAD, MAX_MESSAGE)
    reassembler = Reassembler(LIMIT)
    for frame in frames[:-1]:
        assert reassembler.feed("dev-a", frame) is None
        assert reassembler.feed("dev-b", frame) is None
    assert reassembler.pending_count() == 2
    assert reassembler.feed("dev-a", frames[-1]) == PAYLOAD
    assert reassembler.feed("dev-b", frames[-1]) == PAYLOAD


def test_interleaved_messages_from_one_source_both_reassemble() -> None:
    other = bytes(reversed(PAYLOAD))
    reassembler = Reassembler(LIMIT, max_pending_per_source=2)
    frames = [
        frame
        for pair in zip(
            split_payload(PAYLOAD, MAX_MESSAGE), split_payload(other, MAX_MESSAGE), strict=True
        )
        for frame in pair
    ]
    assert feed_all(reassembler, frames) == [PAYLOAD, other]


def test_announced_size_over_the_limit_is_refused_at_the_first_chunk() -> None:
    reassembler = Reassembler(len(PAYLOAD) - 1)
    frames = split_payload(PAYLOAD, MAX_MESSAGE)
    with pytest.raises(ChunkError, match="announced size"):
        reassembler.feed("dev", frames[0])
    assert reassembler.pending_count() == 0


def test_announced_size_over_the_limit_is_refused_whichever_chunk_comes_first() -> None:
    reassembler = Reassembler(len(PAYLOAD) - 1)
    frames = split_payload(PAYLOAD, MAX_MESSAGE)
    for frame in frames:
        with pytest.raises(ChunkError, match="announced size"):
            reassembler.feed("dev", frame)
    assert reassembler.pending_count() == 0


def test_announced_size_at_the_limit_is_accepted() -> None:
    frames = split_payload(PAYLOAD, MAX_MESSAGE)
    assert feed_all(Reassembler(len(PAYLOAD)), frames) == [PAYLOAD]


@pytest.mark.parametrize(
    ("name", "value"),
    [("n", 3), ("size", 11), ("sha256", b"\x00" * 32)],
)
def test_sibling_chunk_disagreeing_with_the_first_is_refused(name: str, value: Any) -> None:
    reassembler = Reassembler(LIMIT)
    assert reassembler.feed("dev", chunk_frame()) is None
    with pytest.raises(ChunkError, match="disagrees"):
        reassembler.feed("dev", chunk_frame(i=1, **{name: value}))


def test_inconsistent_sibling_drops_the_whole_message() -> None:
    reassembler = Reassembler(LIMIT)
    frames = split_payload(PAYLOAD, MAX_MESSAGE)
    reassembler.feed("dev", frames[0])
    bad = decode_chunk(frames[1]) | {"size": len(PAYLOAD) + 1}
    with pytest.raises(ChunkError):
        reassembler.feed("dev", encode_chunk(bad))
    assert reassembler.pending_count() == 0
    # The rest of the message can no longer complete it.
    assert feed_all(reassembler, frames[1:]) == []


def test_digest_mismatch_is_refused_on_completion() -> None:
    frames = split_payload(PAYLOAD, MAX_MESSAGE)
    fields = decode_chunk(frames[3])
    corrupted = bytearray(fields["data"])
    corrupted[0] ^= 0xFF
    frames[3] = encode_chunk(fields | {"data": bytes(corrupted)})
    reassembler = Reassembler(LIMIT)
    with pytest.raises(ChunkError, match="digest"):
        feed_all(reassembler, frames)
    assert reassembler.pending_count() == 0


def test_completed_payload_shorter_than_announced_is_refused() -> None:
    reassembler = Reassembler(LIMIT)
    reassembler.feed("dev", chunk_frame(i=0, data=b"01234"))
    with pytest.raises(ChunkError, match="size and digest"):
        reassembler.feed("dev", chunk_frame(i=1, data=b"5678"))


def test_chunks_carrying_more_bytes_than_announced_are_refused() -> None:
    reassembler = Reassembler(LIMIT)
    reassembler.feed("dev", chunk_frame(i=0, n=3, data=b"012345"))
    with pytest.raises(ChunkError, match="more bytes than announced"):
        reassembler.feed("dev", chunk_frame(i=1, n=3, data=b"6789a"))
    assert reassembler.pending_count() == 0


def test_a_duplicate_chunk_with_different_data_is_ignored_and_caught_by_the_digest() -> None:
    reassembler = Reassembler(LIMIT)
    assert reassembler.feed("dev", chunk_frame(i=0, data=b"01234")) is None
    assert reassembler.feed("dev", chunk_frame(i=0, data=b"XXXXX")) is None
    assert reassembler.feed("dev", chunk_frame(i=1, data=b"56789")) == b"0123456789"


def test_pending_limit_per_source_evicts_the_oldest_message() -> None:
    payloads = [bytes([tag]) * 1000 for tag in (1, 2, 3)]
    split = [split_payload(payload, MAX_MESSAGE) for payload in payloads]
    reassembler = Reassembler(LIMIT, max_pending_per_source=2)
    for frames in split:
        assert reassembler.feed("dev", frames[0]) is None
    assert reassembler.pending_count() == 2
    # The two newest complete; the oldest lost its first chunk and cannot.
    assert feed_all(reassembler, split[2][1:]) == [payloads[2]]
    assert feed_all(reassembler, split[1][1:]) == [payloads[1]]
    assert feed_all(reassembler, split[0][1:]) == []


def test_pending_limit_does_not_touch_other_sources() -> None:
    first, second = (split_payload(bytes([tag]) * 1000, MAX_MESSAGE) for tag in (1, 2))
    reassembler = Reassembler(LIMIT, max_pending_per_source=1)
    reassembler.feed("dev-a", first[0])
    reassembler.feed("dev-b", second[0])
    reassembler.feed("dev-b", split_payload(b"z" * 1000, MAX_MESSAGE)[0])
    assert reassembler.pending_count() == 2
    assert feed_all(reassembler, first[1:], source="dev-a") == [bytes([1]) * 1000]


@pytest.mark.parametrize("limit", [0, -1])
def test_pending_limit_below_one_raises_value_error(limit: int) -> None:
    with pytest.raises(ValueError, match="max_pending_per_source"):
        Reassembler(LIMIT, max_pending_per_source=limit)


def test_pending_message_older_than_the_timeout_is_dropped() -> None:
    clock = FakeClock()
    reassembler = Reassembler(LIMIT, timeout_s=10.0, clock=clock)
    old = split_payload(PAYLOAD, MAX_MESSAGE)
    reassembler.feed("dev", old[0])
    clock.now += 10.5
    # Any chunk triggers the sweep: the old message goes, the new one stays.
    reassembler.feed("other", split_payload(PAYLOAD, MAX_MESSAGE)[0])
    assert reassembler.pending_count() == 1
    assert feed_all(reassembler, old[1:]) == []


def test_pending_message_at_exactly_the_timeout_is_kept() -> None:
    clock = FakeClock()
    reassembler = Reassembler(LIMIT, timeout_s=10.0, clock=clock)
    frames = split_payload(PAYLOAD, MAX_MESSAGE)
    reassembler.feed("dev", frames[0])
    clock.now += 10.0
    assert feed_all(reassembler, frames[1:]) == [PAYLOAD]


def test_timeout_counts_from_the_first_chunk_not_the_latest() -> None:
    clock = FakeClock()
    reassembler = Reassembler(LIMIT, timeout_s=10.0, clock=clock)
    frames = split_payload(PAYLOAD, MAX_MESSAGE)
    for frame in frames[:-1]:
        reassembler.feed("dev", frame)
        clock.now += 1.0
    assert reassembler.feed("dev", frames[-1]) is None
    assert reassembler.pending_count() == 1


def test_pending_count_is_zero_after_completion() -> None:
    reassembler = Reassembler(LIMIT)
    feed_all(reassembler, split_payload(PAYLOAD, MAX_MESSAGE))
    assert reassembler.pending_count() == 0


# --- malformed chunks ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {"id": None},
        {"i": None},
        {"n": None},
        {"size": None},
        {"sha256": None},
        {"data": None},
        {"id": "i" * 16},
        {"id": b"i" * 15},
        {"id": b"i" * 17},
        {"sha256": b"s" * 31},
        {"sha256": "s" * 32},
        {"data": "01234"},
        {"i": True},
        {"n": True},
        {"size": False},
        {"i": 1.0},
        {"i": -1},
        {"i": 2},
        {"n": 0},
        {"n": 100_001},
        {"size": -1},
        {"size": "10"},
    ],
    ids=repr,
)
def test_malformed_chunk_field_raises_chunk_error(changes: dict[str, Any]) -> None:
    with pytest.raises(ChunkError, match="malformed chunk"):
        Reassembler(LIMIT).feed("dev", chunk_frame(**changes))


def test_chunk_that_is_not_a_map_raises_chunk_error() -> None:
    with pytest.raises(ChunkError, match="malformed chunk"):
        Reassembler(LIMIT).feed("dev", CHUNK_MAGIC + msgpack.packb(b"data"))


def test_chunk_with_an_array_raises_chunk_error() -> None:
    with pytest.raises(ChunkError, match="malformed chunk"):
        Reassembler(LIMIT).feed("dev", CHUNK_MAGIC + msgpack.packb({"id": [1, 2]}))


def test_deeply_nested_chunk_raises_chunk_error() -> None:
    with pytest.raises(ChunkError, match="malformed chunk"):
        Reassembler(LIMIT).feed("dev", CHUNK_MAGIC + b"\x81\xa1a" * 100_000 + b"\xc0")


def test_chunk_truncated_at_every_length_raises_chunk_error() -> None:
    frame = split_payload(PAYLOAD, MAX_MESSAGE)[0]
    reassembler = Reassembler(LIMIT)
    for length in range(len(CHUNK_MAGIC), len(frame)):
        with pytest.raises(ChunkError, match="malformed chunk"):
            reassembler.feed("dev", frame[:length])
    assert reassembler.pending_count() == 0


def test_chunk_with_trailing_bytes_raises_chunk_error() -> None:
    with pytest.raises(ChunkError, match="malformed chunk"):
        Reassembler(LIMIT).feed("dev", chunk_frame() + b"\x00")


@settings(max_examples=300)
@given(garbage=st.binary(max_size=300))
def test_garbage_after_the_chunk_magic_raises_only_chunk_error(garbage: bytes) -> None:
    reassembler = Reassembler(LIMIT)
    try:
        reassembler.feed("dev", CHUNK_MAGIC + garbage)
    except ChunkError:
        return


@settings(max_examples=200)
@given(data=st.data())
def test_any_single_byte_change_in_a_chunk_gives_the_payload_or_a_chunk_error(
    data: st.DataObject,
) -> None:
    frames = split_payload(PAYLOAD, MAX_MESSAGE)
    which = data.draw(st.integers(0, len(frames) - 1), label="frame")
    index = data.draw(st.integers(len(CHUNK_MAGIC), len(frames[which]) - 1), label="index")
    value = data.draw(st.integers(0, 255), label="value")
    tampered = bytearray(frames[which])
    tampered[index] = value
    frames[which] = bytes(tampered)
    try:
        out = feed_all(Reassembler(LIMIT), frames)
    except ChunkError:
        return
    # Either the change was harmless (e.g. a byte replaced by itself) or the message
    # did not complete; a wrong payload never comes out.
    assert out in ([PAYLOAD], [])
