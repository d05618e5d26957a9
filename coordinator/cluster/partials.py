"""The partial frame: what an ingest worker sends the leader about its share of a round.

A worker verifies, decodes and folds its share of the fleet's updates
(:mod:`byzedge.coordinator.cluster.worker`) and publishes, QoS 1 on
``byzedge/{fleet}/partial/{worker}``, one frame per flush: magic ``BZP1`` and a msgpack
map::

    {"v": 1, "fleet", "round", "model_version", "epoch", "basis": 32 bytes,
     "worker", "session": 8 bytes, "seq", "mode": "rows" | "sum", "dim",
     "updates": [[device, header bytes, wire bytes, body bytes, sha256, weight,
                  signed envelope | nil], ...],
     "sums": {"rule", "count", "total", "radius", "vectors": {name: d float64},
              "scalars": {name: count float64}} | nil,
     "copies": [[device, sha256], ...],
     "rejected": [[device | nil, reason, detail, attributable], ...],
     "redelivered": int}

* ``round``, ``model_version``, ``epoch`` and ``basis`` say which round context the share
  was folded against (:mod:`byzedge.coordinator.cluster.context`); the leader takes a
  partial only for its open round and current basis.
* ``(worker, session, seq)`` names the frame: ``session`` is new for every worker process,
  ``seq`` counts the process's frames in the round from 1. The leader takes each frame
  once (a worker sends a frame again when no receipt shows it taken).
* ``updates`` are the accepted updates in the share: the signed header (so the leader
  knows the device, round, nonce and counter exactly as ingest saw them), the sizes the
  round summary adds up, the SHA-256 of the envelope (duplicates are keyed by device,
  round and this hash) and the weight the update was folded with.
* Rows mode (order-statistic rules, anomaly scoring, certificates: anything that needs
  the rows): each update carries the signed envelope the worker accepted, as compact as
  it came (a top-k update stays some hundred bytes, where its decoded row is ``4 d``),
  and :meth:`Partial.from_bytes` decodes it with ingest's own
  :func:`~byzedge.coordinator.ingest.decode_update`: the worker has verified the
  signature, replay and round, the leader only decodes (:attr:`Partial.rows`). Sum mode:
  ``sums`` is the worker's rule's
  :class:`~byzedge.coordinator.aggregation.base.StreamPartial` of exactly those updates.
* ``copies``: updates ingest accepted here whose device the leader's latest receipt
  already holds (a device re-sending while its first copy was on its way through another
  worker). They are not folded; the leader counts each as a copy (same SHA-256) or as a
  second update of the device (``duplicate``), as a single coordinator would have.
* ``rejected`` and ``redelivered`` carry what the share's other messages came to, so the
  leader's counts, reputation (attributable rejections), audit records and alerts are the
  ones a single coordinator would have made.

Decoding (:meth:`Partial.from_bytes`) never trusts a field it has not checked and raises
only :class:`PartialFrameError`, whatever the bytes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Final, Literal

import msgpack
import numpy as np
from numpy.typing import NDArray

from byzedge.coordinator.aggregation.base import StreamPartial
from byzedge.coordinator.ingest import Rejected, RejectReason, decode_update
from byzedge.coordinator.round_engine import ShardPartial
from byzedge.protocol.envelope import Header, open_envelope
from byzedge.protocol.errors import EnvelopeError, ProtocolError, TopicError
from byzedge.protocol.topics import validate_device_id, validate_identifier

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "HeldUpdate",
    "Partial",
    "PartialFrameError",
    "PartialMode",
    "RejectionRecord",
]

MAGIC: Final = b"BZP1"
FORMAT_VERSION: Final = 1
PartialMode = Literal["rows", "sum"]
_MODES: Final = ("rows", "sum")
_KEYS: Final = frozenset(
    {
        "v",
        "fleet",
        "round",
        "model_version",
        "epoch",
        "basis",
        "worker",
        "session",
        "seq",
        "mode",
        "dim",
        "updates",
        "sums",
        "copies",
        "rejected",
        "redelivered",
    }
)
_SUM_KEYS: Final = frozenset({"rule", "count", "total", "radius", "vectors", "scalars"})
_REASONS: Final = frozenset(reason.value for reason in RejectReason)
_MAX_DETAIL: Final = 512
_MAX_HEADER_BYTES: Final = 64 * 1024
_MAX_UPDATE_BYTES: Final = 256 * 1024 * 1024


class PartialFrameError(Exception):
    """A partial frame that cannot be taken (malformed, inconsistent or of another format)."""


@dataclass(frozen=True, slots=True)
class HeldUpdate:
    """One accepted update in a worker's share (its vector is in the rows or the sums).

    ``payload`` is the signed envelope in rows mode (empty in sum mode).
    """

    device_id: str
    header: Header
    header_bytes: bytes
    wire_bytes: int
    body_bytes: int
    digest: bytes
    weight: float = 1.0
    payload: bytes = b""


@dataclass(frozen=True, slots=True)
class RejectionRecord:
    """A message of the share that ingest rejected: :class:`~coordinator.ingest.Rejected`."""

    device_id: str | None
    reason: str
    detail: str
    attributable: bool


@dataclass(frozen=True, slots=True)
class Partial:
    """A decoded partial frame (see the module docstring)."""

    fleet: str
    round: int
    model_version: int
    epoch: int
    basis: bytes
    worker: str
    session: bytes
    seq: int
    mode: PartialMode
    dim: int
    updates: tuple[HeldUpdate, ...] = ()
    sums: StreamPartial | None = None
    copies: tuple[tuple[str, bytes], ...] = ()
    rejections: tuple[RejectionRecord, ...] = ()
    redelivered: int = 0
    rows: NDArray[np.float32] | None = None
    """Rows mode, once decoded: the updates' float32 ``(n, d)`` vectors in ``updates`` order."""

    @property
    def key(self) -> tuple[str, bytes, int]:
        """``(worker, session, seq)``: the frame's identity within its round."""
        return (self.worker, self.session, self.seq)

    @property
    def device_ids(self) -> tuple[str, ...]:
        """The devices whose accepted update the frame holds, in frame order."""
        return tuple(update.device_id for update in self.updates)

    def shard(self) -> ShardPartial:
        """The sums and weights for :func:`~byzedge.coordinator.round_engine.server_step`."""
        if self.sums is None:
            raise ValueError("a partial without sums has no shard")
        return ShardPartial(self.sums, {u.device_id: u.weight for u in self.updates})

    def to_bytes(self) -> bytes:
        """Encode as a frame (magic + msgpack)."""
        sums = None
        if self.sums is not None:
            sums = {
                "rule": self.sums.rule,
                "count": self.sums.count,
                "total": float(self.sums.total),
                "radius": None if self.sums.radius is None else float(self.sums.radius),
                "vectors": {k: _f64(v) for k, v in self.sums.vectors.items()},
                "scalars": {k: _f64(v) for k, v in self.sums.scalars.items()},
            }
        document = {
            "v": FORMAT_VERSION,
            "fleet": self.fleet,
            "round": self.round,
            "model_version": self.model_version,
            "epoch": self.epoch,
            "basis": self.basis,
            "worker": self.worker,
            "session": self.session,
            "seq": self.seq,
            "mode": self.mode,
            "dim": self.dim,
            "updates": [
                [
                    u.device_id,
                    u.header_bytes,
                    u.wire_bytes,
                    u.body_bytes,
                    u.digest,
                    u.weight,
                    u.payload if self.mode == "rows" else None,
                ]
                for u in self.updates
            ],
            "sums": sums,
            "copies": [[device, digest] for device, digest in self.copies],
            "rejected": [
                [r.device_id, r.reason, r.detail[:_MAX_DETAIL], r.attributable]
                for r in self.rejections
            ],
            "redelivered": self.redelivered,
        }
        packed: bytes = msgpack.packb(document, use_bin_type=True)
        return MAGIC + packed

    @classmethod
    def from_bytes(cls, data: bytes, *, max_bytes: int) -> Partial:
        """Decode and check a frame.

        Raises
        ------
        PartialFrameError
            For anything but a well-formed, self-consistent frame of this format.
        """
        if len(data) > max_bytes:
            raise PartialFrameError(f"frame of {len(data)} bytes exceeds {max_bytes}")
        if not data.startswith(MAGIC):
            raise PartialFrameError("not a partial frame (bad magic)")
        try:
            raw = msgpack.unpackb(data[len(MAGIC) :], raw=False, strict_map_key=True)
        except (ValueError, TypeError, OverflowError, msgpack.UnpackException) as exc:
            raise PartialFrameError(f"frame is not msgpack: {exc}") from exc
        if not isinstance(raw, dict) or set(raw) != _KEYS:
            raise PartialFrameError("frame fields are not those of format 1")
        if raw["v"] != FORMAT_VERSION:
            raise PartialFrameError(f"frame format {raw['v']!r}, expected {FORMAT_VERSION}")
        return _decode(raw)


def _f64(vector: NDArray[np.float64]) -> bytes:
    return np.ascontiguousarray(vector, dtype="<f8").tobytes()


def _decode(raw: dict[str, Any]) -> Partial:
    fleet = _identifier(raw["fleet"], "fleet")
    worker = _identifier(raw["worker"], "worker")
    round_number = _count(raw["round"], "round")
    version = _count(raw["model_version"], "model_version")
    dim = _count(raw["dim"], "dim")
    if dim < 1:
        raise PartialFrameError("dim must be >= 1")
    mode = raw["mode"]
    if mode not in _MODES:
        raise PartialFrameError(f"unknown mode {mode!r}")
    updates = _updates(raw["updates"], fleet, round_number, version, dim, mode=mode)
    rows = _rows(updates, dim) if mode == "rows" and updates else None
    sums = None
    if mode == "sum":
        sums = _sums(raw["sums"], dim, updates)
    elif raw["sums"] is not None:
        raise PartialFrameError("a rows-mode frame carries no sums")
    return Partial(
        fleet=fleet,
        round=round_number,
        model_version=version,
        epoch=_count(raw["epoch"], "epoch"),
        basis=_bytes(raw["basis"], 32, "basis"),
        worker=worker,
        session=_bytes(raw["session"], 8, "session"),
        seq=_count(raw["seq"], "seq"),
        mode=mode,
        dim=dim,
        updates=updates,
        rows=rows,
        sums=sums,
        copies=_copies(raw["copies"]),
        rejections=_rejections(raw["rejected"]),
        redelivered=_count(raw["redelivered"], "redelivered"),
    )


def _count(value: object, what: str) -> int:
    if type(value) is not int or value < 0:
        raise PartialFrameError(f"{what} must be an integer >= 0, got {value!r}")
    return value


def _bytes(value: object, size: int, what: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != size:
        raise PartialFrameError(f"{what} must be {size} bytes")
    return value


def _number(value: object, what: str) -> float:
    if type(value) not in (int, float):
        raise PartialFrameError(f"{what} must be a number, got {value!r}")
    number = float(value)  # type: ignore[arg-type]
    if not np.isfinite(number) or number < 0:
        raise PartialFrameError(f"{what} must be a finite number >= 0, got {value!r}")
    return number


def _identifier(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise PartialFrameError(f"{what} must be a string")
    try:
        return validate_identifier(value, what)
    except TopicError as exc:
        raise PartialFrameError(str(exc)) from exc


def _device(value: object) -> str:
    if not isinstance(value, str):
        raise PartialFrameError("device ids must be strings")
    try:
        return validate_device_id(value)
    except TopicError as exc:
        raise PartialFrameError(str(exc)) from exc


def _updates(
    value: object, fleet: str, round_number: int, version: int, dim: int, *, mode: str
) -> tuple[HeldUpdate, ...]:
    if not isinstance(value, list):
        raise PartialFrameError("updates must be a list")
    updates: list[HeldUpdate] = []
    for entry in value:
        if not isinstance(entry, list) or len(entry) != 7:
            raise PartialFrameError(
                "each update must be [device, header, wire, body, sha256, weight, envelope]"
            )
        device = _device(entry[0])
        header_bytes = entry[1]
        if not isinstance(header_bytes, bytes) or len(header_bytes) > _MAX_HEADER_BYTES:
            raise PartialFrameError(f"{device}: header must be bytes")
        try:
            header = Header.from_bytes(header_bytes)
        except EnvelopeError as exc:
            raise PartialFrameError(f"{device}: bad header: {exc}") from exc
        if (
            header.kind != "update"
            or header.fleet != fleet
            or header.sender != device
            or header.round != round_number
            or header.base_version != version
            or header.dim != dim
        ):
            raise PartialFrameError(f"{device}: its header is for another update")
        updates.append(
            HeldUpdate(
                device_id=device,
                header=header,
                header_bytes=header_bytes,
                wire_bytes=_count(entry[2], "wire bytes"),
                body_bytes=_count(entry[3], "body bytes"),
                digest=_bytes(entry[4], 32, "sha256"),
                weight=_number(entry[5], "weight"),
                payload=_payload(entry[6], mode, device),
            )
        )
    if len({u.device_id for u in updates}) != len(updates):
        raise PartialFrameError("a device appears twice in one frame")
    return tuple(updates)


def _payload(value: object, mode: str, device: str) -> bytes:
    if mode == "sum":
        if value is not None:
            raise PartialFrameError("a sum-mode frame carries no envelopes")
        return b""
    if not isinstance(value, bytes) or not 0 < len(value) <= _MAX_UPDATE_BYTES:
        raise PartialFrameError(f"{device}: a rows-mode update must carry its envelope")
    return value


def _rows(updates: tuple[HeldUpdate, ...], dim: int) -> NDArray[np.float32]:
    """Decode each accepted envelope as ingest does (no signature check: the worker's)."""
    rows = np.empty((len(updates), dim), dtype=np.float32)
    for index, update in enumerate(updates):
        if hashlib.sha256(update.payload).digest() != update.digest:
            raise PartialFrameError(f"{update.device_id}: envelope does not match its SHA-256")
        try:
            envelope = open_envelope(update.payload, _MAX_UPDATE_BYTES)
        except ProtocolError as exc:
            raise PartialFrameError(f"{update.device_id}: bad envelope: {exc}") from exc
        if envelope.header_bytes != update.header_bytes:
            raise PartialFrameError(f"{update.device_id}: envelope of another header")
        decoded = decode_update(update.device_id, envelope.header, envelope.body, dim)
        if isinstance(decoded, Rejected):
            raise PartialFrameError(f"{update.device_id}: {decoded.detail}")
        rows[index] = decoded
    return rows


def _vectors(value: object, size: int, what: str) -> dict[str, NDArray[np.float64]]:
    if not isinstance(value, dict):
        raise PartialFrameError(f"{what} must be a map")
    vectors: dict[str, NDArray[np.float64]] = {}
    for name, raw in value.items():
        if not isinstance(name, str) or not isinstance(raw, bytes) or len(raw) != 8 * size:
            raise PartialFrameError(f"{what} must map names to {size} float64")
        vector = np.frombuffer(raw, dtype="<f8").astype(np.float64)
        if not np.isfinite(vector).all():
            raise PartialFrameError(f"{what} {name!r} holds NaN or Inf")
        vectors[name] = vector
    return vectors


def _sums(value: object, dim: int, updates: tuple[HeldUpdate, ...]) -> StreamPartial | None:
    if value is None:
        if updates:
            raise PartialFrameError("a sum-mode frame with updates must carry their sums")
        return None
    if not isinstance(value, dict) or set(value) != _SUM_KEYS:
        raise PartialFrameError("sums fields are not those of format 1")
    rule = value["rule"]
    if not isinstance(rule, str):
        raise PartialFrameError("sums rule must be a string")
    count = _count(value["count"], "sums count")
    if count != len(updates):
        raise PartialFrameError(f"sums of {count} updates for {len(updates)} listed")
    radius = None if value["radius"] is None else _number(value["radius"], "radius")
    return StreamPartial(
        rule=rule,
        dim=dim,
        count=count,
        total=_number(value["total"], "total"),
        radius=radius,
        vectors=_vectors(value["vectors"], dim, "vectors"),
        scalars=_vectors(value["scalars"], count, "scalars"),
        devices=tuple(u.device_id for u in updates),
    )


def _copies(value: object) -> tuple[tuple[str, bytes], ...]:
    if not isinstance(value, list):
        raise PartialFrameError("copies must be a list")
    copies: list[tuple[str, bytes]] = []
    for entry in value:
        if not isinstance(entry, list) or len(entry) != 2:
            raise PartialFrameError("each copy must be [device, sha256]")
        copies.append((_device(entry[0]), _bytes(entry[1], 32, "sha256")))
    return tuple(copies)


def _rejections(value: object) -> tuple[RejectionRecord, ...]:
    if not isinstance(value, list):
        raise PartialFrameError("rejected must be a list")
    records: list[RejectionRecord] = []
    for entry in value:
        if not isinstance(entry, list) or len(entry) != 4:
            raise PartialFrameError("each rejection must be [device, reason, detail, attributable]")
        device = None if entry[0] is None else _device(entry[0])
        reason, detail, attributable = entry[1], entry[2], entry[3]
        if reason not in _REASONS:
            raise PartialFrameError(f"unknown rejection reason {reason!r}")
        if not isinstance(detail, str) or not isinstance(attributable, bool):
            raise PartialFrameError("rejection detail must be a string, attributable a bool")
        records.append(RejectionRecord(device, reason, detail[:_MAX_DETAIL], attributable))
    return tuple(records)
