"""Fold a fleet's MQTT messages into one state: the monitor's model, with no I/O.

:meth:`FleetView.apply` takes ``(topic, payload)`` pairs as they arrive and updates

* the coordinator's recent rounds (retained round summaries on
  ``byzedge/{fleet}/coordinator/status``), and whether it is online (its last will there is
  ``{"state": "offline"}``);
* each device: its status (retained on ``byzedge/{fleet}/status/{device}``, last will
  ``offline``), reputation and anomaly score (from summaries), last rejection (from
  summaries' ``last_rejections`` and from alerts), last flag;
* the latest alerts (``byzedge/{fleet}/alerts``);
* whether the summary's signed audit head verifies under the coordinator's key.

Everything received is untrusted input: an empty payload (a reachability probe), JSON that
does not parse, a wrong type or an unknown field is ignored (with a debug log) field by
field, and ``apply`` never raises. Strings from the wire are cut to printable characters
and a bounded length before they reach a terminal. Fields beyond today's payloads
(``audit_head``, ``last_rejections``, ``scores`` in summaries; ``updates_sent``,
``last_refusal`` in statuses) are optional.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, TypeVar

from byzedge.coordinator.audit import AuditError, SignedHead
from byzedge.protocol.errors import ProtocolError
from byzedge.protocol.signing import VerifyKey
from byzedge.protocol.topics import (
    alerts_topic,
    coordinator_status_topic,
    parse_device_topic,
    validate_device_id,
)

__all__ = [
    "AlertView",
    "AuditHeadView",
    "CertificateView",
    "Change",
    "DeviceView",
    "FleetView",
    "Rejection",
    "RoundView",
    "verify_audit_head",
]

_LOGGER = logging.getLogger(__name__)

_T = TypeVar("_T")

Change = Literal["round", "coordinator", "device", "alert"]
"""What :meth:`FleetView.apply` changed."""

AuditStatus = Literal["verified", "unverified", "unchecked", "absent"]

_MAX_TEXT = 80  # characters kept of any string received (reasons, states, names)
_MAX_TELEMETRY_KEYS = 16
# A flagged update's alert reason: "anomalous-" and why (norm, direction, persistent, ...).
_FLAG_PREFIX = "anomalous-"


# -- the signed audit head --------------------------------------------------------------


def verify_audit_head(head: Mapping[str, Any], key: VerifyKey) -> bool:
    """Tell whether ``head`` is an audit head signed by ``key``.

    ``head`` is the coordinator's :class:`coordinator.audit.SignedHead` in its JSON form (the
    ``audit_head`` field of a round summary). False, never an exception, for a malformed
    head, another key's head, or a signature that does not verify.
    """
    try:
        SignedHead.from_dict(dict(head)).verify(key)
    except AuditError:
        return False
    return True


# -- what the view holds ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RoundView:
    """One round summary, as far as it could be read."""

    round: int
    accepted: int | None = None
    cohort_size: int | None = None
    rejected: dict[str, int] = field(default_factory=dict)
    flagged: tuple[str, ...] = ()
    validation_accuracy: float | None = None
    duration_s: float | None = None
    skipped: bool = False
    fallback: str | None = None
    clip_threshold: float | None = None
    defense: str | None = None
    model_version: int | None = None
    uplink_bytes: int | None = None
    certificate: CertificateView | None = None
    received: float = field(default=0.0, compare=False)


@dataclass(frozen=True, slots=True)
class CertificateView:
    """A summary's certified robustness bound (``certified_robustness``), as far as read.

    ``bound`` is ``None`` when the round has no finite bound (``reason`` says why).
    """

    bound: float | None = None
    basis: str | None = None
    f: int | None = None
    n: int | None = None
    source: str | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Rejection:
    """The last update of a device that the coordinator refused."""

    round: int | None
    reason: str


@dataclass(slots=True)
class DeviceView:
    """What is known of one device."""

    device_id: str
    state: str = "unknown"
    status_time: float | None = None
    round: int | None = None
    reason: str | None = None
    telemetry: dict[str, float | None] = field(default_factory=dict)
    updates_sent: int | None = None
    last_refusal: str | None = None
    reputation: float | None = None
    score: float | None = None
    last_rejection: Rejection | None = None
    flagged_round: int | None = None


@dataclass(frozen=True, slots=True)
class AlertView:
    """One alert from the coordinator."""

    round: int | None
    device: str | None
    reason: str
    score: float | None
    received: float


@dataclass(frozen=True, slots=True)
class AuditHeadView:
    """The audit head of the latest summary and whether it verified."""

    status: AuditStatus = "absent"
    seq: int | None = None
    hash: str | None = None
    key_id: str | None = None


# -- the fold ---------------------------------------------------------------------------


class FleetView:
    """The fleet's state, folded from the messages one subscriber sees.

    Parameters
    ----------
    fleet:
        The fleet watched; messages on other topics are ignored.
    coordinator_key:
        The coordinator's public key; without one, audit heads are ``unchecked``.
    history:
        Round summaries kept, the latest by round number (the accuracy sparkline spans
        them).
    max_alerts:
        Alerts kept, newest last.
    clock:
        Wall clock for messages applied without a receive time.
    """

    def __init__(
        self,
        fleet: str,
        *,
        coordinator_key: VerifyKey | None = None,
        history: int = 30,
        max_alerts: int = 10,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if history < 1 or max_alerts < 1:
            msg = "history and max_alerts must be at least 1"
            raise ValueError(msg)
        self.fleet = fleet
        self.coordinator_key = coordinator_key
        self._summary_topic = coordinator_status_topic(fleet)
        self._alerts_topic = alerts_topic(fleet)
        self._clock = clock
        self.coordinator: str = "unknown"
        self.rounds: deque[RoundView] = deque(maxlen=history)
        self.devices: dict[str, DeviceView] = {}
        self.alerts: deque[AlertView] = deque(maxlen=max_alerts)
        self.audit_head = AuditHeadView()
        self.messages = 0
        self.ignored = 0

    # -- reading -------------------------------------------------------------------------

    @property
    def latest_round(self) -> RoundView | None:
        """The most recent round summary, if any arrived."""
        return self.rounds[-1] if self.rounds else None

    @property
    def accuracy(self) -> list[float]:
        """Validation accuracy of the kept rounds that report one, oldest first."""
        return [r.validation_accuracy for r in self.rounds if r.validation_accuracy is not None]

    def to_dict(self) -> dict[str, Any]:
        """The whole state as JSON-friendly data (``byzedge monitor --json``)."""
        return {
            "fleet": self.fleet,
            "coordinator": self.coordinator,
            "audit_head": asdict(self.audit_head),
            "rounds": [asdict(r) for r in self.rounds],
            "accuracy": self.accuracy,
            "devices": {d: asdict(v) for d, v in sorted(self.devices.items())},
            "alerts": [asdict(a) for a in self.alerts],
        }

    # -- folding -------------------------------------------------------------------------

    def apply(self, topic: str, payload: bytes, received: float | None = None) -> Change | None:
        """Fold one message in; return what changed, or ``None`` (ignored or no change).

        Never raises on the message's content.
        """
        if not payload:  # an empty payload is a reachability probe
            return None
        now = self._clock() if received is None else received
        self.messages += 1
        data = _parse(topic, payload)
        if data is None:
            self.ignored += 1
            return None
        if topic == self._summary_topic:
            change = self._apply_summary(data, now)
        elif topic == self._alerts_topic:
            change = self._apply_alert(data, now)
        else:
            change = self._apply_status(topic, data, now)
        if change is None:
            _LOGGER.debug("fleet %s: nothing new from %s", self.fleet, topic)
        return change

    def _device(self, device_id: str) -> DeviceView:
        device = self.devices.get(device_id)
        if device is None:
            device = self.devices[device_id] = DeviceView(device_id)
        return device

    def _apply_summary(self, data: dict[str, Any], now: float) -> Change | None:
        number = _int(data.get("round"))
        if number is None:
            state = _text(data.get("state"))
            if state is None or state == self.coordinator:
                return None
            self.coordinator = state
            return "coordinator"
        before = self._snapshot()
        self.coordinator = "online"
        summary = RoundView(
            round=number,
            accepted=_int(data.get("accepted")),
            cohort_size=_int(data.get("cohort_size")),
            rejected=_counts(data.get("rejected")),
            flagged=tuple(_device_ids(data.get("flagged"))),
            validation_accuracy=_float(data.get("validation_accuracy")),
            duration_s=_float(data.get("duration_s")),
            skipped=data.get("skipped") is True,
            fallback=_text(data.get("fallback")),
            clip_threshold=_float(data.get("clip_threshold")),
            defense=_text(data.get("defense")),
            model_version=_int(data.get("model_version")),
            uplink_bytes=_int(data.get("uplink_bytes")),
            certificate=_certificate(data.get("certificate")),
            received=now,
        )
        self._keep_round(summary)
        for device_id, value in _device_map(data.get("reputations"), _float):
            self._device(device_id).reputation = value
        for device_id, value in _device_map(data.get("scores"), _float):
            self._device(device_id).score = value
        for device_id, reason in _device_map(data.get("last_rejections"), _text):
            self._device(device_id).last_rejection = Rejection(number, reason)
        for device_id in summary.flagged:
            self._device(device_id).flagged_round = number
        self.audit_head = self._audit_head(data.get("audit_head"))
        return None if self._snapshot() == before else "round"

    def _keep_round(self, summary: RoundView) -> None:
        """Keep ``summary`` in round order (a retained one may arrive after newer ones)."""
        rounds = [r for r in self.rounds if r.round != summary.round]  # seen again: replaced
        rounds.append(summary)
        rounds.sort(key=lambda r: r.round)
        self.rounds.clear()
        self.rounds.extend(rounds)  # the deque's bound drops the oldest rounds

    def _snapshot(self) -> tuple[object, ...]:
        """What a summary may change, compared to tell whether it did (receive times aside)."""
        devices = {k: replace(v, telemetry=dict(v.telemetry)) for k, v in self.devices.items()}
        return (self.coordinator, list(self.rounds), devices, self.audit_head)

    def _audit_head(self, head: object) -> AuditHeadView:
        if head is None:
            return AuditHeadView()
        if not isinstance(head, dict):
            return AuditHeadView(status="unverified")
        seq, digest, key_id = _int(head.get("seq")), _text(head.get("hash")), head.get("key_id")
        shown = AuditHeadView(
            status="unchecked",
            seq=seq,
            hash=digest,
            key_id=_text(key_id),
        )
        if self.coordinator_key is None:
            return shown
        ok = verify_audit_head(head, self.coordinator_key)
        return replace(shown, status="verified" if ok else "unverified")

    def _apply_alert(self, data: dict[str, Any], now: float) -> Change | None:
        device_id = _device_id(data.get("device"))
        alert = AlertView(
            round=_int(data.get("round")),
            device=device_id,
            reason=_text(data.get("reason")) or "unknown",
            score=_float(data.get("score")),
            received=now,
        )
        self.alerts.append(alert)
        if device_id is not None:
            device = self._device(device_id)
            if alert.reason.startswith(_FLAG_PREFIX):
                device.flagged_round = alert.round
                if alert.score is not None:
                    device.score = alert.score
            else:  # the coordinator alerts on every attributable rejection
                device.last_rejection = Rejection(alert.round, alert.reason)
        return "alert"

    def _apply_status(self, topic: str, data: dict[str, Any], now: float) -> Change | None:
        try:
            device_id = parse_device_topic(topic, self.fleet, "status")
        except ProtocolError:
            _LOGGER.debug("fleet %s: ignoring message on %s", self.fleet, topic)
            self.ignored += 1
            return None
        device = self._device(device_id)
        before = replace(device, telemetry=dict(device.telemetry))
        device.state = _text(data.get("state")) or "unknown"
        sent_at = _float(data.get("time"))  # the device's clock: right for retained statuses
        device.status_time = now if sent_at is None else sent_at
        device.reason = _text(data.get("reason"))
        # A status is a snapshot, but the last will carries no figures: keep the last known.
        if (number := _int(data.get("round"))) is not None:
            device.round = number
        if isinstance(telemetry := data.get("telemetry"), dict):
            device.telemetry = _telemetry(telemetry)
        if (sent := _int(data.get("updates_sent"))) is not None:
            device.updates_sent = sent
        if (refusal := _refusal(data.get("last_refusal"))) is not None:
            device.last_refusal = refusal
        return None if device == before else "device"


# -- tolerant readers of untrusted JSON ----------------------------------------------------


def _parse(topic: str, payload: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        _LOGGER.debug("ignoring a payload on %s that is not JSON: %s", topic, exc)
        return None
    if not isinstance(data, dict):
        _LOGGER.debug("ignoring a payload on %s that is not a JSON object", topic)
        return None
    return data


def _certificate(value: object) -> CertificateView | None:
    if not isinstance(value, dict):
        return None
    return CertificateView(
        bound=_float(value.get("bound")),
        basis=_text(value.get("basis")),
        f=_int(value.get("f")),
        n=_int(value.get("n")),
        source=_text(value.get("source")),
        reason=_text(value.get("reason")),
    )


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _text(value: object) -> str | None:
    """A string from the wire, cut to printable characters (no terminal escapes)."""
    if not isinstance(value, str):
        return None
    cleaned = "".join(ch for ch in value if ch.isprintable())[:_MAX_TEXT]
    return cleaned or None


def _device_id(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return validate_device_id(value)
    except ProtocolError:
        return None


def _device_ids(value: object) -> list[str]:
    if not isinstance(value, list):
        return []
    return [d for d in (_device_id(v) for v in value) if d is not None]


def _device_map(value: object, read: Callable[[object], _T | None]) -> list[tuple[str, _T]]:
    """The well-formed ``device id -> value`` pairs of a JSON object."""
    if not isinstance(value, dict):
        return []
    pairs = []
    for key, raw in value.items():
        device_id, item = _device_id(key), read(raw)
        if device_id is not None and item is not None:
            pairs.append((device_id, item))
    return pairs


def _counts(value: object) -> dict[str, int]:
    if not isinstance(value, dict):
        return {}
    counts = {}
    for key, raw in value.items():
        name, count = _text(key), _int(raw)
        if name is not None and count is not None:
            counts[name] = count
    return counts


def _telemetry(value: dict[str, Any]) -> dict[str, float | None]:
    readings: dict[str, float | None] = {}
    for key, raw in list(value.items())[:_MAX_TELEMETRY_KEYS]:
        name = _text(key)
        if name is not None and (raw is None or _float(raw) is not None):
            readings[name] = _float(raw)
    return readings


def _refusal(value: object) -> str | None:
    """``last_refusal`` as text: a string, or an object's ``reason`` (and ``round``)."""
    if isinstance(value, dict):
        reason, number = _text(value.get("reason")), _int(value.get("round"))
        if reason is None:
            return None
        return reason if number is None else f"{reason} (round {number})"
    return _text(value)
