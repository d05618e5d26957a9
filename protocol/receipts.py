"""Receipts: which devices' updates the coordinator holds for the open round.

With sharded ingest (coordinator/cluster/) an update passes through an ingest worker
before it reaches the leader, and the broker may drop it on the way: mosquitto discards the
messages in flight to a shared-subscription member that dies, and a NATS stream may lose
messages while it elects a leader (``shared/reference/scale-out.md`` sections 7 and 8). The
device's PUBACK therefore proves nothing, so ingest is acknowledged end to end: the leader
publishes, retained on ``byzedge/{fleet}/receipts``, a receipt signed by the coordinator's
key, and a device whose update a receipt issued a grace period after its publish does not
list sends the same bytes again (the coordinator recognises an exact copy, so re-sending is
harmless).

A receipt travels in an ordinary envelope of kind ``receipt``; the body is a msgpack map::

    {"epoch": leader epoch, "held": [device ids] | None, "missing": [device ids] | None,
     "partials": {worker: [session, watermark]}, "refused": [[worker, session, seq], ...]}

Exactly one of ``held`` and ``missing`` is set: the shorter of the devices held and the
devices of the round still missing (``missing`` is relative to the round's cohort, or to
every enrolled device). ``partials`` and ``refused`` are for the ingest workers: for each
worker session, every partial up to ``watermark`` has been taken, and ``refused`` lists
partials the leader turned down (they overlapped devices it already held); the worker
folds their other devices again.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack

from byzedge.protocol.envelope import Header, open_envelope, seal
from byzedge.protocol.errors import EnvelopeError
from byzedge.protocol.signing import SigningKey, VerifyKey

__all__ = ["PartialKey", "Receipt", "open_receipt", "seal_receipt"]

_CODEC = "msgpack"
_MAX_RECEIPT_BYTES = 64 * 1024 * 1024

PartialKey = tuple[str, bytes, int]
"""``(worker, session, seq)``: one partial aggregate of one worker process, in a round."""


@dataclass(frozen=True, slots=True)
class Receipt:
    """A verified receipt for one round.

    Attributes
    ----------
    round, model_version:
        The round and the model version it was opened with.
    epoch:
        The leader's fencing epoch: a receipt of a lower epoch than one already seen comes
        from a deposed leader and is ignored.
    issued_ms:
        When the leader signed it (its clock).
    counter:
        The coordinator's monotonic message counter.
    held, missing:
        Exactly one is set (see the module docstring).
    partials:
        ``worker -> (session, watermark)``: every partial of that session up to
        ``watermark`` has been taken in this round.
    refused:
        Partials the leader turned down.
    """

    round: int
    model_version: int
    epoch: int
    issued_ms: int
    counter: int
    held: frozenset[str] | None = None
    missing: frozenset[str] | None = None
    partials: Mapping[str, tuple[bytes, int]] = field(default_factory=dict)
    refused: frozenset[PartialKey] = frozenset()

    def holds(self, device_id: str) -> bool:
        """Whether the leader holds ``device_id``'s update for this round."""
        if self.held is not None:
            return device_id in self.held
        return self.missing is not None and device_id not in self.missing

    def taken(self, worker: str, session: bytes, seq: int) -> bool:
        """Whether the leader has taken (merged or refused) that partial."""
        mark = self.partials.get(worker)
        return mark is not None and mark[0] == session and seq <= mark[1]


def seal_receipt(
    key: SigningKey,
    *,
    fleet: str,
    sender: str,
    round_number: int,
    model_version: int,
    epoch: int,
    counter: int,
    held: Iterable[str],
    expected: Iterable[str],
    partials: Mapping[str, tuple[bytes, int]],
    refused: Iterable[PartialKey] = (),
) -> bytes:
    """Sign a receipt; returns the envelope's wire bytes.

    ``held`` is what the leader holds and ``expected`` the round's cohort (or every
    enrolled device); the shorter of ``held`` and ``expected - held`` is sent.
    """
    held_set = set(held)
    missing = set(expected) - held_set
    body: dict[str, Any] = {
        "epoch": epoch,
        "held": sorted(held_set) if len(held_set) <= len(missing) else None,
        "missing": sorted(missing) if len(held_set) > len(missing) else None,
        "partials": {w: [s, n] for w, (s, n) in sorted(partials.items())},
        "refused": [list(item) for item in sorted(refused)],
    }
    now_ms = int(time.time() * 1000)
    header = Header(
        kind="receipt",
        fleet=fleet,
        sender=sender,
        round=round_number,
        base_version=model_version,
        codec=_CODEC,
        dim=0,
        counter=counter,
        created_ms=now_ms,
    )
    data = msgpack.packb(body, use_bin_type=True)
    return seal(header, data, key).to_bytes()


def open_receipt(payload: bytes, coordinator_key: VerifyKey, *, fleet: str) -> Receipt:
    """Verify and decode a receipt.

    Raises
    ------
    ProtocolError
        (one of its subclasses) when the message is malformed, not signed by
        ``coordinator_key``, not a receipt, or for another fleet.
    """
    envelope = open_envelope(payload, _MAX_RECEIPT_BYTES)
    envelope.verify(coordinator_key)
    header = envelope.header
    if header.kind != "receipt" or header.fleet != fleet:
        msg = f"expected a receipt for fleet {fleet!r}, got {header.kind} for {header.fleet!r}"
        raise EnvelopeError(msg)
    try:
        body = msgpack.unpackb(envelope.body, raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise EnvelopeError(f"receipt body is not msgpack: {exc}") from exc
    if not isinstance(body, dict):
        raise EnvelopeError("receipt body must be a map")
    return Receipt(
        round=header.round,
        model_version=header.base_version,
        epoch=_int(body.get("epoch"), "epoch"),
        issued_ms=header.created_ms,
        counter=header.counter,
        held=_ids(body.get("held"), "held"),
        missing=_ids(body.get("missing"), "missing"),
        partials=_marks(body.get("partials")),
        refused=_refused(body.get("refused")),
    )


def _int(value: object, what: str) -> int:
    if type(value) is not int or value < 0:
        raise EnvelopeError(f"receipt {what} must be an integer >= 0, got {value!r}")
    return value


def _ids(value: object, what: str) -> frozenset[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise EnvelopeError(f"receipt {what} must be a list of device ids")
    return frozenset(value)


def _marks(value: object) -> dict[str, tuple[bytes, int]]:
    if not isinstance(value, dict):
        raise EnvelopeError("receipt partials must be a map")
    marks: dict[str, tuple[bytes, int]] = {}
    for worker, mark in value.items():
        if (
            not isinstance(worker, str)
            or not isinstance(mark, list)
            or len(mark) != 2
            or not isinstance(mark[0], bytes)
        ):
            raise EnvelopeError("receipt partials must map worker -> [session, watermark]")
        marks[worker] = (mark[0], _int(mark[1], "watermark"))
    return marks


def _refused(value: object) -> frozenset[PartialKey]:
    if not isinstance(value, list):
        raise EnvelopeError("receipt refused must be a list")
    keys: set[PartialKey] = set()
    for item in value:
        if (
            not isinstance(item, list)
            or len(item) != 3
            or not isinstance(item[0], str)
            or not isinstance(item[1], bytes)
        ):
            raise EnvelopeError("receipt refused entries must be [worker, session, seq]")
        keys.add((item[0], item[1], _int(item[2], "seq")))
    return frozenset(keys)
