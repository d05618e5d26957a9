"""The partial frame a worker sends its leader: round trip, and nothing else decodes.

Whatever bytes arrive on a partial topic, :meth:`Partial.from_bytes` either returns a
self-consistent frame or raises :class:`PartialFrameError`, never anything else.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import replace
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from byzedge.coordinator.aggregation.base import StreamPartial
from byzedge.coordinator.cluster.partials import (
    MAGIC,
    HeldUpdate,
    Partial,
    PartialFrameError,
    RejectionRecord,
)
from byzedge.protocol.codecs import CodecContext, build_codec
from byzedge.protocol.envelope import Header, seal
from byzedge.protocol.signing import SigningKey

DIM = 4
LIMIT = 1 << 20
KEY = SigningKey.generate()
ROWS = {"dev-a": [0.0, 1.0, 2.0, 3.0], "dev-b": [4.0, 5.0, 6.0, 7.0]}


def held(device: str, *, rows: bool, vector: list[float] | None = None) -> HeldUpdate:
    """dev-a/dev-b's accepted update; in rows mode with its signed envelope."""
    header = Header(
        kind="update",
        fleet="f",
        sender=device,
        round=3,
        base_version=2,
        codec="dense",
        dim=DIM,
        counter=7,
    )
    values = np.array(vector if vector is not None else ROWS[device], dtype=np.float32)
    body = build_codec("dense").encode(values, context=CodecContext("f", 3, device))
    payload = seal(header, body, KEY).to_bytes()
    return HeldUpdate(
        device_id=device,
        header=header,
        header_bytes=header.to_bytes(),
        wire_bytes=len(payload),
        body_bytes=len(body),
        digest=hashlib.sha256(payload).digest(),
        weight=0.9,
        payload=payload if rows else b"",
    )


def a_partial(mode: str = "rows") -> Partial:
    updates = (held("dev-a", rows=mode == "rows"), held("dev-b", rows=mode == "rows"))
    sums = None
    if mode == "sum":
        sums = StreamPartial(
            rule="clipping-vr",
            dim=DIM,
            count=2,
            total=1.8,
            radius=0.5,
            vectors={"base": np.ones(DIM), "step": np.full(DIM, -0.25)},
            scalars={
                "weights": np.array([0.9, 0.9]),
                "distances": np.array([1.0, 2.0]),
                "factors": np.array([0.5, 0.25]),
            },
            devices=("dev-a", "dev-b"),
        )
    return Partial(
        fleet="f",
        round=3,
        model_version=2,
        epoch=4,
        basis=b"\x01" * 32,
        worker="ingest-1",
        session=b"\x02" * 8,
        seq=5,
        mode="rows" if mode == "rows" else "sum",
        dim=DIM,
        updates=updates,
        sums=sums,
        copies=(("dev-c", b"\x03" * 32),),
        rejections=(
            RejectionRecord("dev-d", "non-finite", "1 non-finite values", True),
            RejectionRecord(None, "wrong-topic", "bad topic", False),
        ),
        redelivered=2,
    )


@pytest.mark.parametrize("mode", ["rows", "sum"])
def test_a_frame_round_trips(mode: str) -> None:
    partial = a_partial(mode)

    decoded = Partial.from_bytes(partial.to_bytes(), max_bytes=LIMIT)

    assert decoded.key == ("ingest-1", b"\x02" * 8, 5)
    assert decoded.updates == partial.updates
    assert decoded.copies == partial.copies
    assert decoded.rejections == partial.rejections
    assert decoded.redelivered == 2
    if mode == "rows":
        assert decoded.rows is not None
        np.testing.assert_array_equal(decoded.rows, [ROWS["dev-a"], ROWS["dev-b"]])
        assert decoded.sums is None
    else:
        assert decoded.sums is not None
        assert partial.sums is not None
        assert decoded.sums.radius == 0.5
        assert decoded.sums.total == 1.8
        for name, vector in partial.sums.vectors.items():
            np.testing.assert_array_equal(decoded.sums.vectors[name], vector)
        np.testing.assert_array_equal(decoded.sums.scalars["factors"], [0.5, 0.25])
        assert decoded.shard().weights == {"dev-a": 0.9, "dev-b": 0.9}
    assert decoded.to_bytes() == partial.to_bytes()


def document(partial: Partial) -> dict[str, Any]:
    raw: dict[str, Any] = msgpack.unpackb(partial.to_bytes()[len(MAGIC) :], raw=False)
    return raw


def frame(raw: dict[str, Any]) -> bytes:
    return MAGIC + msgpack.packb(raw, use_bin_type=True)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(v=2), "format"),
        (lambda d: d.pop("epoch"), "fields"),
        (lambda d: d.update(extra=1), "fields"),
        (lambda d: d.update(mode="median"), "mode"),
        (lambda d: d["updates"][0].__setitem__(6, d["updates"][0][6][:-5]), "SHA-256"),
        (lambda d: d["updates"][0].__setitem__(6, None), "carry its envelope"),
        (lambda d: d["updates"][0].__setitem__(6, d["updates"][1][6]), "SHA-256"),
        (lambda d: d.update(basis=b"short"), "basis"),
        (lambda d: d.update(seq=-1), "seq"),
        (lambda d: d.update(worker="a/b"), "worker"),
        (lambda d: d["updates"].__setitem__(1, list(d["updates"][0])), "twice"),
        (lambda d: d["updates"][0].__setitem__(0, "dev-x"), "another update"),
        (lambda d: d["updates"][0].__setitem__(1, b"junk"), "bad header"),
        (lambda d: d["updates"][0].__setitem__(5, float("inf")), "weight"),
        (lambda d: d["updates"][0].__setitem__(5, True), "weight"),
        (lambda d: d["rejected"][0].__setitem__(1, "mystery"), "reason"),
        (lambda d: d["copies"].append(["dev-e"]), "copy"),
        (lambda d: d.update(sums={"rule": "mean"}), "rows-mode frame carries no sums"),
        (lambda d: d.update(redelivered="2"), "redelivered"),
        (lambda d: d.update(round=4), "another update"),
    ],
)
def test_malformed_frames_are_refused(change: Any, message: str) -> None:
    raw = document(a_partial("rows"))
    change(raw)
    with pytest.raises(PartialFrameError, match=message):
        Partial.from_bytes(frame(raw), max_bytes=LIMIT)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.update(count=3), "sums of 3"),
        (lambda s: s["vectors"].update(base=b"\x00" * 8), "vectors"),
        (lambda s: s["scalars"].update(factors=b"\x00" * 8), "scalars"),
        (lambda s: s.update(total=-1.0), "total"),
        (lambda s: s.pop("radius"), "sums fields"),
    ],
)
def test_malformed_sums_are_refused(change: Any, message: str) -> None:
    raw = document(a_partial("sum"))
    change(raw["sums"])
    with pytest.raises(PartialFrameError, match=message):
        Partial.from_bytes(frame(raw), max_bytes=LIMIT)


def test_an_envelope_that_does_not_decode_is_refused() -> None:
    broken = held("dev-a", rows=True, vector=[np.nan, 0.0, 0.0, 0.0])
    partial = replace(a_partial("rows"), updates=(broken,))
    with pytest.raises(PartialFrameError, match="non-finite"):
        Partial.from_bytes(partial.to_bytes(), max_bytes=LIMIT)


def test_an_envelope_under_another_header_is_refused() -> None:
    update = held("dev-a", rows=True)
    other = held("dev-a", rows=True, vector=[9.0, 9.0, 9.0, 9.0])
    mixed = replace(update, payload=other.payload, digest=other.digest)
    mixed = replace(mixed, header_bytes=update.header_bytes[:-1] + b"\x08")
    partial = replace(a_partial("rows"), updates=(mixed,))
    with pytest.raises(PartialFrameError):
        Partial.from_bytes(partial.to_bytes(), max_bytes=LIMIT)


def test_oversized_and_foreign_frames_are_refused() -> None:
    data = a_partial().to_bytes()
    with pytest.raises(PartialFrameError, match="exceeds"):
        Partial.from_bytes(data, max_bytes=len(data) - 1)
    with pytest.raises(PartialFrameError, match="magic"):
        Partial.from_bytes(b"BZE1" + data[4:], max_bytes=LIMIT)
    with pytest.raises(PartialFrameError, match="msgpack"):
        Partial.from_bytes(MAGIC + b"\xc1", max_bytes=LIMIT)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes_never_raise_anything_else(data: bytes) -> None:
    for candidate in (data, MAGIC + data):
        with contextlib.suppress(PartialFrameError):
            Partial.from_bytes(candidate, max_bytes=LIMIT)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_corrupted_frames_never_raise_anything_else(data: st.DataObject) -> None:
    valid = bytearray(a_partial(data.draw(st.sampled_from(["rows", "sum"]))).to_bytes())
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, len(valid) - 1))
        valid[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(valid)))
    try:
        decoded = Partial.from_bytes(bytes(valid[:cut]), max_bytes=LIMIT)
    except PartialFrameError:
        return
    assert decoded.dim == DIM or decoded.dim >= 1


def test_a_sum_frame_without_updates_has_no_shard() -> None:
    partial = replace(a_partial("sum"), updates=(), sums=None)
    decoded = Partial.from_bytes(partial.to_bytes(), max_bytes=LIMIT)
    assert decoded.sums is None
    with pytest.raises(ValueError, match="no shard"):
        decoded.shard()
