"""The coordinator daemon: rounds over MQTT, from signed model to signed model.

One round (DESIGN.md "Data flow")::

    sample cohort -> publish signed model (retained) -> ingest updates until every sampled
    device answered or the deadline -> anomaly scores -> reputation -> robust aggregation
    weighted by reputation -> model step -> state saved atomically -> audit record ->
    round summary and alerts -> next round's model

Messages arrive on paho's network thread and are only queued there; all the work happens
on the thread that calls :meth:`Coordinator.run`.

Aggregation: when ``byzantine_defense`` breaks down for a round's number of updates
(:class:`~coordinator.aggregation.BreakdownError`), ``fallback_defense`` aggregates that
round and the round summary names it in ``fallback``. ``clipping-vr`` receives the
devices' ids (for ``reference = "per-device"``). Rules that stream (``mean``,
``norm-clipping``, ``clipping-vr``; :func:`~coordinator.aggregation.supports_streaming`)
take the accepted updates one at a time when anomaly detection is off, so no ``(n, d)``
matrix is stacked; anomaly scoring needs the matrix, so with it on every rule runs in
batch. A rule that cannot stream a particular round (an automatic radius not yet known,
:class:`~coordinator.aggregation.StreamingUnavailableError`) runs that round in batch.
The accepted updates themselves are held until the round closes in either case, because
reputations (the weights) are settled only then.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import numpy as np
from numpy.typing import NDArray

from coordinator.aggregation import (
    AGGREGATORS,
    StreamingUnavailableError,
    build,
    supports_streaming,
)
from coordinator.aggregation.base import Aggregator, StreamingAggregator
from coordinator.audit import AuditLog
from coordinator.config import CoordinatorConfig, rule_parameters
from coordinator.devices import DeviceRegistry
from coordinator.ingest import Accepted, Ingest, Rejected, RoundWindow
from coordinator.reputation import ReputationBook
from coordinator.round_engine import RoundSettings, ServerStepResult, server_step
from coordinator.state import CoordinatorState, StateStore
from daemon import systemd
from daemon.mqtt import MqttClient, Will
from models import OnnxClassifier, export_onnx, get_model_spec, initial_parameters
from models.datasets import DigitsSplit, load_digits_split
from protocol import topics
from protocol.manifest import seal_global_model
from protocol.signing import SigningKey

__all__ = ["Coordinator", "RoundSummary"]

_LOGGER = logging.getLogger(__name__)
_INBOX_LIMIT = 20_000


@dataclass(slots=True)
class RoundSummary:
    """The JSON document published on ``byzedge/{fleet}/coordinator/status`` per round."""

    round: int
    model_version: int
    defense: str
    cohort_size: int
    accepted: int
    rejected: dict[str, int]
    rejected_total: dict[str, int]
    flagged: list[str]
    reputations: dict[str, float]
    validation_accuracy: float | None
    uplink_bytes: int
    dense_uplink_bytes: int
    duration_s: float
    skipped: bool = False
    fallback: str | None = None
    clip_threshold: float | None = None
    accepted_devices: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        """Serialise as one line of JSON."""
        return json.dumps(asdict(self), sort_keys=True)


@dataclass(slots=True)
class _Intake:
    """What one round collected before aggregation."""

    round: int
    cohort: frozenset[str] | None
    started: float
    accepted: dict[str, Accepted] = field(default_factory=dict)
    rejected: Counter[str] = field(default_factory=Counter)
    misbehaving: set[str] = field(default_factory=set)


class Coordinator:
    """Runs rounds until the configured number is done or ``stop`` is set.

    Parameters
    ----------
    config:
        The validated configuration.
    signing_key:
        Key that signs global models (loaded from a file by the caller).
    devices:
        Enrolled devices.
    on_round:
        Optional callback with each round's summary (the demo's progress bar).
    validation:
        Held-out data for the validation accuracy; loaded from the config when ``None``.
    """

    def __init__(
        self,
        config: CoordinatorConfig,
        *,
        signing_key: SigningKey,
        devices: DeviceRegistry,
        on_round: Callable[[RoundSummary], None] | None = None,
        validation: DigitsSplit | None = None,
    ) -> None:
        if config.byzantine_defense not in AGGREGATORS:
            known = ", ".join(sorted(AGGREGATORS))
            msg = f"unknown byzantine_defense {config.byzantine_defense!r}; known: {known}"
            raise ValueError(msg)
        self.config = config
        self._key = signing_key
        self._devices = devices
        self._on_round = on_round
        self._spec = get_model_spec(config.model)
        self._inbox: queue.Queue[tuple[str, bytes]] = queue.Queue(maxsize=_INBOX_LIMIT)
        self.dropped_messages = 0
        self._store = StateStore(config.state_dir)
        self._ingest = Ingest(
            config.fleet,
            devices,
            max_message_bytes=config.mqtt.max_message_bytes,
            max_update_bytes=config.max_update_bytes,
            update_ttl_s=config.update_ttl_s,
        )
        self._reputation = ReputationBook(decay=config.reputation_decay)
        self._aggregator = self._build_rule(config.byzantine_defense)
        self._fallback = self._build_rule(config.fallback_defense)
        self._settings = RoundSettings.from_config(config)
        if validation is None and config.validation == "digits":
            validation = load_digits_split()
        self._validation = validation
        # Opened in run(), which also closes it, so a coordinator never run holds no file.
        self._audit: AuditLog | None = None
        self.state = self._load_or_init_state()
        self._client = MqttClient(
            config.mqtt,
            f"{config.fleet}-{config.name}",
            on_message=self._enqueue,
            subscriptions=[(topics.update_wildcard(config.fleet), 1)],
            will=Will(
                topics.coordinator_status_topic(config.fleet),
                json.dumps({"state": "offline"}).encode(),
            ),
        )

    # -- set-up ------------------------------------------------------------------------

    def _build_rule(self, name: str) -> Aggregator:
        return build(name, **rule_parameters(self.config, name))

    def _load_or_init_state(self) -> CoordinatorState:
        try:
            state = self._store.load()
        except ValueError as exc:
            _LOGGER.warning("fleet %s: ignoring unusable state: %s", self.config.fleet, exc)
            state = None
        if state is not None and (
            state.fleet != self.config.fleet
            or state.model != self.config.model
            or state.params.shape != (self._spec.dim,)
        ):
            _LOGGER.warning(
                "fleet %s: saved state is for fleet %s / model %s; starting fresh",
                self.config.fleet,
                state.fleet,
                state.model,
            )
            state = None
        if state is None:
            params = initial_parameters(self._spec, np.random.default_rng(self.config.seed))
            return CoordinatorState(
                fleet=self.config.fleet,
                model=self.config.model,
                completed_round=0,
                model_version=0,
                params=params,
            )
        self._reputation.load_state_dict(state.reputation)
        self._ingest.load_state_dict(state.ingest)
        if state.aggregator is not None and hasattr(self._aggregator, "load_state_dict"):
            self._aggregator.load_state_dict(state.aggregator)
        _LOGGER.info(
            "fleet %s: resuming after round %d (model version %d)",
            self.config.fleet,
            state.completed_round,
            state.model_version,
        )
        return state

    # -- main loop ---------------------------------------------------------------------

    def run(
        self, stop: threading.Event | None = None, reload: threading.Event | None = None
    ) -> int:
        """Run rounds; return 0 when the configured rounds are done or on stop.

        When ``reload`` is set (SIGHUP), the enrolled devices are read again from
        ``devices_dir`` before the next round starts (:meth:`reload_enrolment`).
        """
        stop = stop or threading.Event()
        cfg = self.config
        if cfg.audit_logging:
            self._audit = AuditLog(cfg.state_dir / "audit.jsonl")
        self._audit_event("coordinator-start", completed_round=self.state.completed_round)
        self._client.start(wait_s=None)
        while not self._client.connected.wait(0.2):
            if stop.is_set():
                self._client.stop(flush_s=0)
                return 0
        systemd.notify_ready(f"round {self.state.completed_round + 1}")
        try:
            while not stop.is_set():
                if cfg.rounds and self.state.completed_round >= cfg.rounds:
                    self._publish_model(final=True)
                    break
                if reload is not None and reload.is_set():
                    reload.clear()
                    self.reload_enrolment()
                summary = self._run_round(self.state.completed_round + 1, stop)
                if summary is None:
                    break
                if self._on_round is not None:
                    self._on_round(summary)
        finally:
            systemd.notify_stopping()
            self._audit_event("coordinator-stop", completed_round=self.state.completed_round)
            if self._audit is not None:
                self._audit.close()
            self._client.stop()
        return 0

    def reload_enrolment(self) -> tuple[list[str], list[str]]:
        """Read ``devices_dir`` again; return the device ids added and removed.

        Enrols new devices and revokes removed ones without a restart. Reputations and
        replay protection of devices that stay are kept. An unreadable folder keeps the
        current enrolment (logged); a bad file is skipped as at start-up.
        """
        folder = self.config.devices_dir
        try:
            if not folder.is_dir():  # a missing folder must not revoke the whole fleet
                raise NotADirectoryError(f"devices_dir {folder} is not a folder")
            registry = DeviceRegistry.load(folder)
        except OSError as exc:
            _LOGGER.error("fleet %s: enrolment not reloaded: %s", self.config.fleet, exc)
            return [], []
        before, after = set(self._devices), set(registry)
        added, removed = sorted(after - before), sorted(before - after)
        self._devices = registry
        self._ingest.devices = registry
        _LOGGER.info(
            "fleet %s: enrolment reloaded: %d device(s), added %s, removed %s",
            self.config.fleet,
            len(after),
            added or "none",
            removed or "none",
        )
        self._audit_event("enrolment-reloaded", devices=len(after), added=added, removed=removed)
        return added, removed

    def _enqueue(self, topic: str, payload: bytes) -> None:
        try:
            self._inbox.put_nowait((topic, payload))
        except queue.Full:
            self.dropped_messages += 1

    def _sample_cohort(self, round_number: int) -> frozenset[str] | None:
        cfg = self.config
        enrolled = sorted(self._devices)
        if cfg.devices_per_round is not None:
            size = cfg.devices_per_round
        elif cfg.participation_rate is not None:
            size = max(1, round(cfg.participation_rate * len(enrolled)))
        else:
            return None
        if size >= len(enrolled):
            return None
        rng = np.random.default_rng([cfg.seed, round_number])
        return frozenset(rng.choice(enrolled, size=size, replace=False).tolist())

    def _publish_model(
        self,
        *,
        final: bool = False,
        cohort: frozenset[str] | None = None,
        deadline_ms: int = 0,
    ) -> None:
        state = self.state
        # A wall-clock counter stays monotonic across restarts without extra state.
        state.model_counter = max(state.model_counter + 1, time.time_ns() // 1000)
        envelope = seal_global_model(
            self._key,
            fleet=self.config.fleet,
            sender=self.config.name,
            round_number=state.completed_round + 1,
            version=state.model_version,
            model=self.config.model,
            params=state.params,
            counter=state.model_counter,
            cohort=cohort,
            deadline_ms=deadline_ms,
            final=final,
            ttl_s=self.config.model_ttl_s,
        )
        payload = envelope.to_bytes()
        retain = len(payload) <= self.config.mqtt.max_message_bytes
        self._client.publish(topics.model_topic(self.config.fleet), payload, retain=retain)

    def _run_round(self, round_number: int, stop: threading.Event) -> RoundSummary | None:
        cfg = self.config
        started = time.monotonic()
        cohort = self._sample_cohort(round_number)
        expected = set(cohort) if cohort is not None else set(self._devices)
        deadline = time.time() + cfg.round_timeout_s
        window = RoundWindow(round_number, self.state.model_version, self._spec.dim, cohort)
        self._publish_model(cohort=cohort, deadline_ms=int(deadline * 1000))
        systemd.notify_status(f"round {round_number}: collecting")
        intake = _Intake(round_number, cohort, started)
        while not (expected <= intake.accepted.keys() | intake.misbehaving):
            if stop.is_set():
                return None
            remaining = deadline - time.time()
            if remaining <= 0:
                break
            systemd.notify_watchdog()
            try:
                topic, frame = self._inbox.get(timeout=min(remaining, 0.25))
            except queue.Empty:
                continue
            outcome = self._ingest.submit(topic, frame, window)
            if isinstance(outcome, Accepted):
                intake.accepted[outcome.device_id] = outcome
            elif isinstance(outcome, Rejected):
                intake.rejected[outcome.reason.value] += 1
                self._on_rejected(round_number, outcome)
                if outcome.attributable and outcome.device_id is not None:
                    intake.misbehaving.add(outcome.device_id)
        return self._finish_round(intake)

    def _on_rejected(self, round_number: int, outcome: Rejected) -> None:
        _LOGGER.warning(
            "round %d: rejected update from %s: %s (%s)",
            round_number,
            outcome.device_id,
            outcome.reason.value,
            outcome.detail,
        )
        total = self.state.rejected_total
        total[outcome.reason.value] = total.get(outcome.reason.value, 0) + 1
        self._audit_event(
            "update-rejected",
            round=round_number,
            device=outcome.device_id,
            reason=outcome.reason.value,
            detail=outcome.detail,
        )
        if outcome.attributable and self.config.suspicious_device_alerts:
            self._alert(round_number, outcome.device_id, outcome.reason.value, None)

    def _finish_round(self, intake: _Intake) -> RoundSummary:
        cfg = self.config
        state = self.state
        accepted = intake.accepted
        device_ids = sorted(accepted)
        rows = [accepted[d].update for d in device_ids]
        streamed = self._try_streaming(rows, device_ids, intake.misbehaving)
        if streamed is not None:
            step = streamed
        else:
            step = server_step(
                state.params,
                device_ids,
                np.stack(rows) if rows else None,  # (n, d)
                settings=self._settings,
                reputation=self._reputation,
                aggregator=self._aggregator,
                fallback=self._fallback,
                misbehaving=intake.misbehaving,
            )
        if not step.skipped:
            state.params = step.params
            state.model_version += 1
        state.completed_round = intake.round
        state.reputation = self._reputation.state_dict()
        state.ingest = self._ingest.state_dict()
        if hasattr(self._aggregator, "state_dict"):
            state.aggregator = self._aggregator.state_dict()
        self._store.save(state)
        summary = RoundSummary(
            round=intake.round,
            model_version=state.model_version,
            defense=cfg.byzantine_defense,
            cohort_size=len(intake.cohort) if intake.cohort is not None else len(self._devices),
            accepted=len(device_ids),
            rejected=dict(intake.rejected),
            rejected_total=dict(state.rejected_total),
            flagged=list(step.flagged),
            reputations={k: round(v, 4) for k, v in self._reputation.snapshot().items()},
            validation_accuracy=self._validate(state.params),
            uplink_bytes=sum(a.wire_bytes for a in accepted.values()),
            dense_uplink_bytes=sum(
                a.wire_bytes - a.body_bytes + 4 * a.header.dim for a in accepted.values()
            ),
            duration_s=round(time.monotonic() - intake.started, 3),
            skipped=step.skipped,
            fallback=step.fallback,
            clip_threshold=getattr(self._aggregator, "last_clip_threshold", None),
            accepted_devices=device_ids,
        )
        self._report(summary)
        return summary

    def _try_streaming(
        self,
        rows: Sequence[NDArray[np.float32]],
        device_ids: Sequence[str],
        misbehaving: set[str],
    ) -> ServerStepResult | None:
        """The O(d) path: only without anomaly scoring (which needs the whole matrix).

        Returns ``None`` when the round must be aggregated in batch by :func:`server_step`
        (scoring on, a rule that cannot stream, or one that cannot stream this round).
        """
        cfg = self.config
        if (
            cfg.anomaly_detection
            or not supports_streaming(cfg.byzantine_defense)
            or len(rows) < max(1, cfg.min_updates)
        ):
            return None
        rule = cast(StreamingAggregator, self._aggregator)
        try:
            rule.start(len(rows[0]))
        except StreamingUnavailableError as exc:
            _LOGGER.info("fleet %s: aggregating in batch: %s", cfg.fleet, exc)
            return None
        for device in misbehaving:
            self._reputation.record(device, good=False)
        for device in device_ids:
            self._reputation.record(device, good=True)
        weights = self._reputation.weights(device_ids) if cfg.device_reputation else None
        for index, (row, device) in enumerate(zip(rows, device_ids, strict=True)):
            weight = 1.0 if weights is None else float(weights[index])
            rule.accumulate(row, weight, device_id=device)
        aggregate = rule.finish().aggregate
        params = (self.state.params + cfg.server_learning_rate * aggregate).astype(np.float32)
        return ServerStepResult(
            params, aggregate, tuple(device_ids), (), None, weights, None, skipped=False
        )

    def _validate(self, params: NDArray[np.float32]) -> float | None:
        if self._validation is None:
            return None
        classifier = OnnxClassifier(export_onnx(self._spec, params))
        return round(classifier.accuracy(self._validation.test_x, self._validation.test_y), 4)

    def _report(self, summary: RoundSummary) -> None:
        fleet = self.config.fleet
        _LOGGER.info(
            "fleet %s round %d: accepted %d, rejected %s, flagged %s, accuracy %s",
            fleet,
            summary.round,
            summary.accepted,
            summary.rejected,
            summary.flagged,
            summary.validation_accuracy,
        )
        self._audit_event("round-completed", **json.loads(summary.to_json()))
        if self._audit is not None:
            self._audit.sync()
        with (self.config.state_dir / "rounds.jsonl").open("a", encoding="utf-8") as handle:
            handle.write(summary.to_json() + "\n")
        self._client.publish(
            topics.coordinator_status_topic(fleet), summary.to_json().encode(), retain=True
        )
        if self.config.suspicious_device_alerts:
            for device in summary.flagged:
                self._alert(summary.round, device, "anomalous-update", None)

    def _alert(
        self, round_number: int, device: str | None, reason: str, score: float | None
    ) -> None:
        alert = {"round": round_number, "device": device, "reason": reason, "score": score}
        self._client.publish(
            topics.alerts_topic(self.config.fleet), json.dumps(alert).encode(), retain=False
        )

    def _audit_event(self, event: str, **data: Any) -> None:
        if self._audit is not None:
            self._audit.append(event, **data)
