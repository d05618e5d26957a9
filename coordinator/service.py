"""The coordinator daemon: rounds over MQTT, from signed model to signed model.

One round (DESIGN.md "Data flow")::

    sample cohort -> publish signed model (retained) -> ingest updates (each accepted one
    journaled) until every device asked has answered or cannot (offline, busy), or the
    deadline -> anomaly scores -> reputation -> robust aggregation weighted by reputation
    -> model step -> state saved atomically -> audit record + signed checkpoint -> round
    summary (with the signed audit head) and alerts -> pause -> next round's model

Messages arrive on the MQTT client's network thread and are only queued there (updates and
device statuses in separate queues); all the work happens on the thread that calls
:meth:`Coordinator.run`.

Keeping rounds moving:

* A round closes as soon as every device asked has answered, been rejected for something
  only it could have done, or is known not to answer: its retained status says
  ``offline`` (its last will) or ``busy`` for this round (:mod:`byzedge.coordinator.liveness`).
  ``round_timeout_s`` stays the upper bound; ``round_interval_s`` separates rounds.
* Every accepted update is journaled before it counts (:mod:`coordinator.journal`): a
  coordinator killed mid-round re-opens the same round at restart and re-ingests them.
* The coordinator keeps a persistent broker session, so updates sent while it is briefly
  away are queued by the broker; if the broker lost the session (a broker restart), the
  coordinator republishes the round's model, which makes agents re-send their update.
  Copies of accepted updates are recognised by ingest (``Redelivered``) and ignored.

The server side of a round is :mod:`byzedge.coordinator.round_engine`, the same code the
fleet simulator runs: cohort sampling (:func:`~byzedge.coordinator.round_engine.sample_cohort`),
sorting ingest outcomes (:class:`~byzedge.coordinator.round_engine.Intake`) and the server
step (:func:`~byzedge.coordinator.round_engine.server_step`). This module adds the daemon's
side effects around them: the journal, metrics, rate-limited logs, audit records, alerts,
the state file and the round summary.

Aggregation (in the server step): when ``byzantine_defense`` breaks down for a round's
number of updates (:class:`~coordinator.aggregation.BreakdownError`), ``fallback_defense``
aggregates that round and the round summary names it in ``fallback``. Rules that stream
(``mean``, ``norm-clipping``, ``clipping-vr``) take the accepted updates one at a time when
anomaly detection is off, so no ``(n, d)`` matrix is stacked; anomaly scoring needs the
matrix, so with it on every rule runs in batch. A rule that cannot stream a particular
round (an automatic radius not yet known,
:class:`~coordinator.aggregation.StreamingUnavailableError`) runs that round in batch.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import numpy as np
from numpy.typing import NDArray

from byzedge.coordinator.aggregation import AGGREGATORS, build, load_rule_state, rule_state
from byzedge.coordinator.aggregation.base import Aggregator
from byzedge.coordinator.anomaly import AnomalyDetector
from byzedge.coordinator.audit import AuditLog, RecordBudget
from byzedge.coordinator.config import CoordinatorConfig, rule_parameters
from byzedge.coordinator.devices import DeviceRegistry
from byzedge.coordinator.downlink import DownlinkMessages, compressed_downlink, dense_downlink
from byzedge.coordinator.enrolment import DatabaseEnrolment, Enrolment, EnrolmentStoreError
from byzedge.coordinator.ingest import (
    Accepted,
    Ingest,
    IngestOutcome,
    Redelivered,
    Rejected,
    RejectReason,
    RoundWindow,
)
from byzedge.coordinator.journal import RoundJournal
from byzedge.coordinator.liveness import FleetLiveness
from byzedge.coordinator.metrics import CoordinatorMetrics
from byzedge.coordinator.reputation import ReputationBook
from byzedge.coordinator.requests import take_reputation_resets
from byzedge.coordinator.round_engine import (
    Intake,
    RoundSettings,
    ServerStepResult,
    ShardPartial,
    method_server_step,
    sample_cohort,
    server_step,
)
from byzedge.coordinator.state import CoordinatorState, CoordinatorStateStore, StateStore
from byzedge.coordinator.training_method import (
    FEDAVG,
    build_training_method,
    cohort_for_plan,
    with_compression,
)
from byzedge.daemon import systemd
from byzedge.daemon.logging import RateLimitedLog
from byzedge.daemon.mqtt import ConnectInfo, Will
from byzedge.daemon.rotating import RotatingJsonl
from byzedge.daemon.transport import Endpoint, TransportFactory, mqtt_transport
from byzedge.methods.base import RoundPlan, ServerState, TrainingMethod
from byzedge.models import (
    OnnxClassifier,
    export_onnx,
    get_model_spec,
    initial_parameters,
    layout_meta,
)
from byzedge.models.datasets import DigitsSplit, load_dataset, load_validation_npz
from byzedge.models.tasks import get_task
from byzedge.protocol import topics
from byzedge.protocol.broadcast import Round
from byzedge.protocol.manifest import seal_global_model
from byzedge.protocol.signing import SigningKey

__all__ = ["Coordinator", "RoundSummary"]

_LOGGER = logging.getLogger(__name__)
_INBOX_LIMIT = 20_000
# Most queued updates ingested together, journaled with one fsync (see _take_batch).
_INGEST_BATCH = 256
_STATUS_INBOX_LIMIT = 100_000
# Statuses delivered this soon after a (re)connect may be the broker's backlog (retained
# messages, the persistent session's queue), not news: see coordinator.liveness.
_BACKLOG_WINDOW_S = 5.0
# Rejections the network or a device's clock produce (logged at INFO, not WARNING).
_NETWORK_REASONS = frozenset(
    {
        RejectReason.WRONG_ROUND,
        RejectReason.STALE_MODEL,
        RejectReason.EXPIRED,
        RejectReason.REPLAY,
        RejectReason.NOT_IN_COHORT,
    }
)


@dataclass(slots=True)
class RoundSummary:
    """The JSON document published (retained) on ``byzedge/{fleet}/coordinator/status``.

    Beyond the round's figures it carries ``audit_head``, the audit log's head signed by
    the coordinator after this round (:class:`coordinator.audit.SignedHead`), so that
    anyone holding the coordinator's public key can later check the log was not cut or
    rewritten (``byzedge audit verify --head``). With ``certified_robustness`` it also
    carries ``certificate``
    (:meth:`byzedge.coordinator.certified.Certificate.to_dict`).
    """

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
    scores: dict[str, float] = field(default_factory=dict)
    flag_reasons: dict[str, str] = field(default_factory=dict)
    last_rejections: dict[str, str] = field(default_factory=dict)
    unavailable: list[str] = field(default_factory=list)
    redelivered: int = 0
    closed_by: str = "timeout"
    certificate: dict[str, Any] | None = None
    algorithm: str = "fedavg"
    full_round: bool | None = None
    method_dropped: dict[str, str] = field(default_factory=dict)
    audit_head: dict[str, Any] | None = None
    # What validation_accuracy holds: the task's metric (accuracy, or r2 under mse).
    validation_metric: str = "accuracy"

    def to_json(self) -> str:
        """Serialise as one line of JSON."""
        return json.dumps(asdict(self), sort_keys=True)


@dataclass(slots=True, kw_only=True)
class _Intake(Intake):
    """What one round collected: the sorted outcomes, and when and how the round closed."""

    round: int
    cohort: frozenset[str] | None
    started: float
    unavailable: set[str] = field(default_factory=set)
    closed_by: str = "timeout"


class Coordinator:
    """Runs rounds until the configured number is done or ``stop`` is set.

    Parameters
    ----------
    config:
        The validated configuration.
    signing_key:
        Key that signs global models and audit checkpoints (loaded from a file).
    devices:
        Enrolled devices.
    on_round:
        Optional callback with each round's summary (the demo's progress bar).
    validation:
        Held-out data for the validation accuracy; loaded from the config when ``None``.
    transport:
        Builds the broker connection; MQTT with ``config.mqtt`` by default (tests pass an
        :class:`~daemon.transport.InMemoryBroker`'s ``connect``).
    """

    def __init__(
        self,
        config: CoordinatorConfig,
        *,
        signing_key: SigningKey,
        devices: Enrolment,
        on_round: Callable[[RoundSummary], None] | None = None,
        validation: DigitsSplit | None = None,
        transport: TransportFactory | None = None,
    ) -> None:
        if config.byzantine_defense not in AGGREGATORS:
            known = ", ".join(sorted(AGGREGATORS))
            msg = f"unknown byzantine_defense {config.byzantine_defense!r}; known: {known}"
            raise ValueError(msg)
        self.config = config
        self._key = signing_key
        self._devices = devices
        self._on_round = on_round
        # A factory reference's layout and graph come from its template file: no torch here.
        self._spec = get_model_spec(config.model, template=config.model_template)
        self._layout = layout_meta(self._spec)
        self._updates: queue.Queue[tuple[str, bytes]] = queue.Queue(maxsize=_INBOX_LIMIT)
        # (topic, payload, fresh): a status from the broker's backlog may be stale.
        self._statuses: queue.Queue[tuple[str, bytes, bool]] = queue.Queue(
            maxsize=_STATUS_INBOX_LIMIT
        )
        self._connected_at = 0.0  # monotonic; written and read on the network thread
        self.dropped_messages = 0
        self._store = self._state_store()
        self._journal = RoundJournal(config.state_dir / "round.journal")
        self._ingest = Ingest(
            config.fleet,
            devices,
            max_message_bytes=config.mqtt.max_message_bytes,
            max_update_bytes=config.max_update_bytes,
            update_ttl_s=config.update_ttl_s,
        )
        # A stale "offline" waits as long as an agent's reconnect backoff can last.
        self._liveness = FleetLiveness(config.fleet, grace_s=max(30.0, config.mqtt.reconnect_max_s))
        self._reputation = ReputationBook(decay=config.reputation_decay)
        # Per-device history of the anomaly scores (coordinator.anomaly), kept with the state.
        self._detector = AnomalyDetector(threshold=config.anomaly_threshold)
        self._aggregator = self._build_rule(config.byzantine_defense)
        self._fallback = self._build_rule(config.fallback_defense)
        # A training method other than FedAvg: its server half, its state, this round's plan.
        self._method: TrainingMethod | None = (
            build_training_method(config.algorithm, config.method, config.seed, self._spec.dim)
            if config.algorithm != FEDAVG
            else None
        )
        self._method_state = ServerState()
        self._plan: RoundPlan | None = None
        self._settings = RoundSettings.from_config(config)
        if validation is None and config.validation not in ("none", "npz"):
            validation = load_dataset(config.validation)
        elif validation is None and config.validation == "npz":
            validation = load_validation_npz(config.validation_path)
        self._validation = validation
        self._task = get_task(config.loss)
        self.metrics = CoordinatorMetrics(config.fleet, defense=config.byzantine_defense)
        burst = config.logs.rejections_per_minute
        self._rejection_log = RateLimitedLog(_LOGGER, what="rejections", burst=burst)
        # Late, stale or repeated updates are what a reconnect or a slow device produces:
        # worth a line, not a warning.
        self._late_log = RateLimitedLog(
            _LOGGER, what="late updates", burst=burst, level=logging.INFO
        )
        self._audit_budget = RecordBudget(
            per_key=config.logs.audited_rejections_per_round, overflow_key=("*", "*")
        )
        # Opened in run(), which also closes them, so a coordinator never run holds no file.
        self._audit: AuditLog | None = None
        self._rounds_log: RotatingJsonl | None = None
        self._resume_journal = True
        self._last_manifest: bytes | None = None
        # This round's compressed broadcast and resync pair (Byz-EF21-BC), sent with it.
        self._downlink: DownlinkMessages | None = None
        self._dense_downlink_sent = False
        self._session_lost = threading.Event()
        self.state = self._load_or_init_state()
        connect = transport if transport is not None else mqtt_transport(config.mqtt)
        self._client = connect(
            Endpoint(
                f"{config.fleet}-{config.name}",
                on_message=self._enqueue,
                on_retained=self._enqueue_retained,
                subscriptions=self._subscriptions(),
                will=Will(
                    topics.coordinator_status_topic(config.fleet),
                    json.dumps({"state": "offline"}).encode(),
                ),
                on_connect=self._on_connect,
                # The broker queues updates for us while we are away (reconnect, restart).
                persistent_session=True,
            )
        )

    # -- set-up ------------------------------------------------------------------------

    def _build_rule(self, name: str) -> Aggregator:
        return build(name, **rule_parameters(self.config, name))

    def _state_store(self) -> CoordinatorStateStore:
        """The state file; the leader of a cluster may share its state with standbys."""
        return StateStore(self.config.state_dir)

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
        if state.anomaly:
            try:
                self._detector.load_state_dict(state.anomaly)
            except ValueError as exc:  # the scores restart without history, nothing else
                _LOGGER.warning(
                    "fleet %s: anomaly history not restored: %s", self.config.fleet, exc
                )
        self._ingest.load_state_dict(state.ingest)
        if self._method is not None:
            self._method_state = ServerState.from_plain(state.method, self._spec.dim)
        if state.aggregator is not None:
            load_rule_state(self._aggregator, state.aggregator)
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
        self._open_logs()
        self._recover_summary()
        self._serve_metrics()
        self._audit_event("coordinator-start", completed_round=self.state.completed_round)
        self._checkpoint()
        self._client.start(wait_s=None)
        while not self._client.connected.wait(0.2):
            if stop.is_set():
                self._shutdown()
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
                self._apply_operator_requests()
                summary = self._run_round(self.state.completed_round + 1, stop)
                if summary is None:
                    break
                if self._on_round is not None:
                    self._on_round(summary)
                if not (cfg.rounds and self.state.completed_round >= cfg.rounds):
                    self._pause(cfg.round_interval_s, stop)
        finally:
            self._shutdown()
        return 0

    def _open_logs(self) -> None:
        cfg = self.config
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        if cfg.audit_logging:
            self._audit = AuditLog(
                cfg.state_dir / "audit.jsonl",
                signing_key=self._key,
                max_bytes=cfg.logs.audit_max_bytes,
                keep=cfg.logs.audit_keep,
            )
        self._rounds_log = RotatingJsonl(
            cfg.state_dir / "rounds.jsonl",
            max_bytes=cfg.logs.rounds_max_bytes,
            keep=cfg.logs.rounds_keep,
        )

    def _serve_metrics(self) -> None:
        settings = self.config.metrics
        if not settings.enabled:
            return
        try:
            port = self.metrics.serve(settings.host, settings.port)
        except OSError as exc:  # a busy port must not stop training; say so loudly
            _LOGGER.error(
                "fleet %s: metrics endpoint %s:%d not started: %s",
                self.config.fleet,
                settings.host,
                settings.port,
                exc,
            )
            return
        _LOGGER.info(
            "fleet %s: metrics on http://%s:%d/metrics", self.config.fleet, settings.host, port
        )

    def _shutdown(self) -> None:
        systemd.notify_stopping()
        self._audit_event("coordinator-stop", completed_round=self.state.completed_round)
        self._checkpoint()
        if self._audit is not None:
            self._audit.close()
        if self._rounds_log is not None:
            self._rounds_log.close()
        self._journal.close()
        self._rejection_log.flush(force=True)
        self._late_log.flush(force=True)
        self._client.stop()
        self.metrics.close()

    def reload_enrolment(self) -> tuple[list[str], list[str]]:
        """Read ``devices_dir`` again; return the device ids added and removed.

        Enrols new devices and revokes removed ones without a restart. Reputations and
        replay protection of devices that stay are kept. An unreadable folder keeps the
        current enrolment (logged); a bad file is skipped as at start-up. With a database
        store (``enrolment = "sqlite" | "postgres"``) the database is not re-read: the ids
        written since the last reload are taken from it and their cached keys dropped; an
        unreachable database keeps the current enrolment (logged).
        """
        if isinstance(self._devices, DatabaseEnrolment):
            try:
                added, removed = self._devices.refresh()
            except EnrolmentStoreError as exc:
                _LOGGER.error("fleet %s: enrolment not reloaded: %s", self.config.fleet, exc)
                return [], []
            for device in removed:
                self._detector.forget(device)
            _LOGGER.info(
                "fleet %s: enrolment reloaded (%s): enrolled %s, revoked %s",
                self.config.fleet,
                self.config.enrolment,
                added or "none",
                removed or "none",
            )
            self._audit_event("enrolment-reloaded", added=added, removed=removed)
            return added, removed
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
        for device in removed:
            self._detector.forget(device)
        _LOGGER.info(
            "fleet %s: enrolment reloaded: %d device(s), added %s, removed %s",
            self.config.fleet,
            len(after),
            added or "none",
            removed or "none",
        )
        self._audit_event("enrolment-reloaded", devices=len(after), added=added, removed=removed)
        return added, removed

    def _apply_operator_requests(self) -> None:
        for device in take_reputation_resets(self.config.state_dir):
            before = self._reputation.weight(device)
            self._reputation.reset(device)
            # Its next update becomes its new baseline: the history that flagged it goes.
            self._detector.reset(device)
            self.state.reputation = self._reputation.state_dict()
            self.state.anomaly = self._detector.state_dict()
            _LOGGER.info(
                "fleet %s: reputation of %s reset (was %.3f) by the operator",
                self.config.fleet,
                device,
                before,
            )
            self._audit_event("reputation-reset", device=device, previous=round(before, 6))

    # -- messages (network thread) -------------------------------------------------------

    def _enqueue(self, topic: str, payload: bytes, retained: bool = False) -> None:
        if not payload:  # a reachability probe (check-config --online)
            return
        try:
            if "/status/" in topic:
                backlog = time.monotonic() - self._connected_at < _BACKLOG_WINDOW_S
                self._statuses.put_nowait((topic, payload, not (retained or backlog)))
            else:
                self._updates.put_nowait((topic, payload))
        except queue.Full:
            self.dropped_messages += 1
            self.metrics.message_dropped()

    def _enqueue_retained(self, topic: str, payload: bytes) -> None:
        self._enqueue(topic, payload, retained=True)

    def _on_connect(self, info: ConnectInfo) -> None:
        self._connected_at = time.monotonic()
        if info.count > 1 and not info.session_present:
            # The broker lost our session (restarted without it): updates sent while we
            # were away are gone, so the round's model goes out again and agents re-send.
            self._session_lost.set()

    def _drain_statuses(self) -> None:
        while True:
            try:
                topic, payload, fresh = self._statuses.get_nowait()
            except queue.Empty:
                return
            self._liveness.apply(topic, payload, fresh=fresh)

    def _pause(self, seconds: float, stop: threading.Event) -> None:
        """Wait between rounds, still following device statuses and the watchdog."""
        end = time.monotonic() + seconds
        while not stop.is_set():
            self._drain_statuses()
            systemd.notify_watchdog()
            remaining = end - time.monotonic()
            if remaining <= 0:
                return
            stop.wait(min(remaining, 0.25))

    # -- one round -----------------------------------------------------------------------

    def _sample_cohort(self, round_number: int) -> frozenset[str] | None:
        cfg = self.config
        cohort = sample_cohort(
            self._devices, round_number, cfg.seed, cfg.devices_per_round, cfg.participation_rate
        )
        if cohort is not None and isinstance(self._devices, DatabaseEnrolment):
            # The cohort's keys in one query now instead of one per update as they arrive
            # (a PostgreSQL round trip each); a failure leaves ingest to look them up.
            try:
                self._devices.prefetch(sorted(cohort))
            except EnrolmentStoreError as exc:
                _LOGGER.warning("fleet %s: cohort keys not prefetched: %s", cfg.fleet, exc)
        return cohort

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
        plan = self._plan.to_meta() if self._plan is not None and not final else None
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
            plan=plan,
            layout=self._layout,
        )
        self._last_manifest = envelope.to_bytes()
        self._downlink = self._downlink_messages(
            Round(
                fleet=self.config.fleet,
                sender=self.config.name,
                round=state.completed_round + 1,
                version=state.model_version,
                model=self.config.model,
                counter=state.model_counter,
                cohort=cohort,
                deadline_ms=deadline_ms,
                final=final,
                ttl_s=self.config.model_ttl_s,
                plan=plan,
                layout=self._layout,
            )
        )
        self._send_manifest()

    def _downlink_messages(self, meta: Round) -> DownlinkMessages | None:
        """Byz-EF21-BC's broadcast and resync pair; a ``dense`` broadcast once otherwise.

        The ``dense`` broadcast tells devices still following an earlier compressed
        broadcast (the fleet was reconfigured) to take the dense model again; sent at the
        first publish of a process, it is retained from then on.
        """
        method, plan = self._method, self._plan
        if method is not None and plan is not None and method.compressed_broadcast:
            return compressed_downlink(
                self._key,
                meta,
                self._method_state,
                step_size=plan.step_size,
                max_message_bytes=self.config.mqtt.max_message_bytes,
            )
        if self._dense_downlink_sent:
            return None
        self._dense_downlink_sent = True
        return dense_downlink(self._key, meta, self._spec.dim)

    def _send_manifest(self) -> None:
        payload = self._last_manifest
        if payload is None:
            return
        retain = len(payload) <= self.config.mqtt.max_message_bytes
        # The broadcast and the pair go first: a device that sees the new broadcast before
        # the pair it may have to fetch would otherwise fetch the previous round's.
        if self._downlink is not None:
            for topic, message in reversed(self._downlink.messages):
                self._client.publish(topic, message, retain=True)
        self._client.publish(topics.model_topic(self.config.fleet), payload, retain=retain)

    def _plan_round(self, round_number: int) -> RoundPlan | None:
        """The training method's plan for the round (``None`` for FedAvg).

        Made once per round (a model sent again keeps it); the method state it advances
        is saved with the round, so a restarted coordinator makes the same plan again.
        """
        if self._method is None:
            return None
        plan = self._method.plan(round_number, self.state.params, self._method_state)
        return with_compression(plan, self.config.method)

    def _run_round(self, round_number: int, stop: threading.Event) -> RoundSummary | None:
        cfg = self.config
        self._plan = self._plan_round(round_number)
        cohort = self._sample_cohort(round_number)
        if self._method is not None and self._plan is not None:
            cohort = cohort_for_plan(self._method, self._plan, cohort)
        expected = set(cohort) if cohort is not None else set(self._devices)
        deadline = time.time() + cfg.round_timeout_s
        window = RoundWindow(round_number, self.state.model_version, self._spec.dim, cohort)
        intake = _Intake(round=round_number, cohort=cohort, started=time.monotonic())
        self._replay_journal(window, intake)
        self._publish_model(cohort=cohort, deadline_ms=int(deadline * 1000))
        systemd.notify_status(f"round {round_number}: collecting")
        while True:
            self._drain_statuses()
            intake.unavailable = expected & self._liveness.unavailable(
                round_number, connected_since=self._connected_at
            )
            answered = intake.accepted.keys() | intake.misbehaving
            if (
                intake.accepted
                and expected <= answered | intake.unavailable
                # While disconnected nothing is known: updates may be on their way.
                and self._client.connected.is_set()
            ):
                intake.closed_by = "all-answered" if expected <= answered else "all-available"
                break
            if stop.is_set():
                return None
            remaining = deadline - time.time()
            if remaining <= 0:
                break
            systemd.notify_watchdog()
            if self._session_lost.is_set():
                self._session_lost.clear()
                _LOGGER.info("round %d: broker lost our session; model sent again", round_number)
                self._send_manifest()
            # Each message answers at most one device, so a batch no longer than the
            # devices still awaited ends, at the latest, where the round may close: the
            # checks above run where they ran when messages were taken one at a time.
            missing = len(expected - answered - intake.unavailable)
            try:
                batch = self._next_updates(min(remaining, 0.25), limit=max(1, missing))
            except queue.Empty:
                continue
            self._take_batch(batch, window, intake)
        return self._finish_round(intake)

    def _next_updates(self, timeout_s: float, *, limit: int) -> list[tuple[str, bytes]]:
        """Wait up to ``timeout_s`` for a message, then take what else is queued (``limit``).

        Raises
        ------
        queue.Empty
            When nothing arrived in time.
        """
        batch = [self._updates.get(timeout=timeout_s)]
        limit = min(limit, _INGEST_BATCH)
        while len(batch) < limit:
            try:
                batch.append(self._updates.get_nowait())
            except queue.Empty:
                break
        return batch

    def _take_batch(
        self, batch: list[tuple[str, bytes]], window: RoundWindow, intake: _Intake
    ) -> None:
        """Ingest ``batch``, journal its accepted updates with one fsync, then count them.

        One fsync per batch rather than per update (group commit): at about 5 ms each, an
        fsync per update capped a coordinator at some 200 updates per second. Every
        accepted update is still on disk before it counts.
        """
        outcomes = [self._ingest.submit(topic, frame, window) for topic, frame in batch]
        self._journal.append_many(
            [(o.device_id, o.payload) for o in outcomes if isinstance(o, Accepted)]
        )
        for outcome in outcomes:
            self._take(outcome, intake, journaled=True)

    def _replay_journal(self, window: RoundWindow, intake: _Intake) -> None:
        """Open the round's journal; after a restart, re-ingest what it holds."""
        if not self._resume_journal:
            self._journal.open_round(window.round, window.model_version)
            return
        self._resume_journal = False
        entries = self._journal.resume_round(window.round, window.model_version)
        for entry in entries:
            outcome = self._ingest.submit_payload(entry.device_id, entry.payload, window)
            self._take(outcome, intake, journaled=True)
        self._journal_recovered(window.round, len(entries), "update(s)", intake)

    def _journal_recovered(
        self, round_number: int, entries: int, what: str, intake: _Intake
    ) -> None:
        """Log and audit what a restart took back from the round's journal (if anything)."""
        if not entries:
            return
        _LOGGER.info(
            "round %d: %d %s recovered from the journal, %d update(s) accepted",
            round_number,
            entries,
            what,
            len(intake.accepted),
        )
        self._audit_event(
            "journal-recovered",
            round=round_number,
            entries=entries,
            accepted=sorted(intake.accepted),
        )

    def _take(
        self, outcome: IngestOutcome | None, intake: _Intake, *, journaled: bool = False
    ) -> None:
        """Sort ``outcome`` into the round (:meth:`Intake.take`), with the daemon's effects.

        An accepted update is journaled before it counts, so a coordinator killed after
        counting it finds it again at restart.
        """
        if isinstance(outcome, Accepted) and not journaled:
            self._journal.append(outcome.device_id, outcome.payload)
        intake.take(outcome)
        if isinstance(outcome, Accepted):
            self.metrics.update_accepted(outcome.wire_bytes)
        elif isinstance(outcome, Redelivered):
            _LOGGER.debug("round %d: copy of %s's update ignored", intake.round, outcome.device_id)
        elif isinstance(outcome, Rejected):
            self._on_rejected(intake.round, outcome)

    def _on_rejected(self, round_number: int, outcome: Rejected) -> None:
        reason = outcome.reason.value
        device = outcome.device_id or "-"
        log = self._late_log if outcome.reason in _NETWORK_REASONS else self._rejection_log
        log.log(
            (device, reason),
            "round %d: rejected update from %s: %s (%s)",
            round_number,
            device,
            reason,
            outcome.detail,
        )
        total = self.state.rejected_total
        total[reason] = total.get(reason, 0) + 1
        self.metrics.update_rejected(reason)
        if self._audit_budget.admit((device, reason)):
            self._audit_event(
                "update-rejected",
                round=round_number,
                device=outcome.device_id,
                reason=reason,
                detail=outcome.detail,
            )
            if outcome.attributable and self.config.suspicious_device_alerts:
                self._alert(round_number, outcome.device_id, reason, None)

    def _finish_round(self, intake: _Intake) -> RoundSummary:
        cfg = self.config
        state = self.state
        accepted = intake.accepted
        device_ids = intake.device_ids
        started = time.perf_counter()
        step, dropped = self._server_step(intake)
        for device, reason in sorted(dropped.items()):
            _LOGGER.info("round %d: %s's message not used: %s", intake.round, device, reason)
        if not step.skipped:
            self.metrics.aggregation_time(time.perf_counter() - started)
            state.params = step.params
            state.model_version += 1
        state.completed_round = intake.round
        state.reputation = self._reputation.state_dict()
        state.anomaly = self._detector.state_dict()
        state.ingest = self._ingest.state_dict()
        if self._aggregator.stateful:
            state.aggregator = rule_state(self._aggregator)
        if self._method is not None:
            state.method = self._method_state.to_plain()
        scores = {flag.device_id: round(flag.score, 3) for flag in step.flags}
        reasons = {flag.device_id: flag.reason for flag in step.flags}
        summary = RoundSummary(
            round=intake.round,
            model_version=state.model_version,
            defense=cfg.byzantine_defense,
            cohort_size=len(intake.cohort) if intake.cohort is not None else len(self._devices),
            accepted=len(device_ids),
            rejected=dict(intake.rejected),
            rejected_total=dict(state.rejected_total),
            flagged=list(step.flagged),
            reputations=self._round_reputations(intake, step.flagged),
            validation_accuracy=self._validate(state.params),
            validation_metric=self._task.metric_name,
            uplink_bytes=sum(a.wire_bytes for a in accepted.values()),
            dense_uplink_bytes=sum(
                a.wire_bytes - a.body_bytes + 4 * a.header.dim for a in accepted.values()
            ),
            duration_s=round(time.monotonic() - intake.started, 3),
            skipped=step.skipped,
            fallback=step.fallback,
            clip_threshold=step.clip_threshold,
            accepted_devices=device_ids,
            scores=scores,
            flag_reasons=reasons,
            last_rejections=dict(sorted(intake.last_rejections.items())),
            unavailable=sorted(intake.unavailable),
            redelivered=intake.redelivered,
            closed_by=intake.closed_by,
            # certified_robustness: the bound, its basis, assumptions and source; it
            # reaches rounds.jsonl and the audit's round-completed record with the summary.
            certificate=None if step.certificate is None else step.certificate.to_dict(),
            algorithm=cfg.algorithm,
            full_round=self._plan.full if self._plan is not None else None,
            method_dropped=dict(sorted(dropped.items())),
        )
        # The summary is saved with the round, so a coordinator killed before it reached
        # rounds.jsonl writes it at restart (_recover_summary) instead of losing the line.
        state.last_summary = summary.to_json()
        self._store.save(state)
        # Saved: the round's updates are in the model now, the journal has done its job.
        self._journal.clear()
        self._report(summary)
        return summary

    def _round_reputations(self, intake: _Intake, flagged: Iterable[str]) -> dict[str, float]:
        """The reputations of the devices the round touched, for its summary.

        Not every device's: a fleet of a million devices, 10,000 a round, would put a
        million figures (some 30 MB) in every summary line, audit record and status
        message. Those the round asked, heard from, rejected or flagged are what changed;
        the monitor keeps the last value it saw of each device, and ``byzedge coordinator
        reputation list`` reads them all from the state.
        """
        book = self._reputation
        if intake.cohort is None:  # every device was asked: every recorded one is touched
            return {d: round(r, 4) for d, r in book.snapshot().items()}
        touched = (
            intake.cohort
            | intake.accepted.keys()
            | intake.misbehaving
            | intake.last_rejections.keys()
            | set(flagged)
        )
        return {d: round(book.weight(d), 4) for d in sorted(touched) if d in book}

    def _recover_summary(self) -> None:
        """Write the saved round's summary line if a kill came between save and report."""
        saved = self.state.last_summary
        if saved is None or self._rounds_log is None:
            return
        newest = next(self._rounds_log.reversed_lines(), None)
        try:
            logged = int(json.loads(newest)["round"]) if newest is not None else 0
        except (ValueError, KeyError, TypeError):
            logged = 0  # a torn last line: the saved summary is still the newest
        if logged >= self.state.completed_round:
            return
        self._rounds_log.append_line(saved)
        self._audit_event("round-summary-recovered", round=self.state.completed_round)
        _LOGGER.info(
            "round %d: summary line recovered from the saved state", self.state.completed_round
        )

    def _subscriptions(self) -> list[tuple[str, int]]:
        """What the coordinator reads: every update and device status.

        The leader of sharded ingest (:mod:`byzedge.coordinator.cluster.leader`) reads the
        workers' partial aggregates instead of the updates.
        """
        fleet = self.config.fleet
        return [(topics.update_wildcard(fleet), 1), (topics.device_status_wildcard(fleet), 1)]

    def _step_inputs(
        self, intake: _Intake
    ) -> tuple[list[NDArray[np.float32]] | None, Sequence[ShardPartial]]:
        """The server step's ``updates`` and ``partials`` for the round (rows here).

        ``(d,)`` rows, stacked only if the round runs in batch. The leader of sharded
        ingest passes the workers' partial aggregates instead when the round streams.
        """
        return intake.rows() or None, ()

    def _server_step(self, intake: _Intake) -> tuple[ServerStepResult, dict[str, str]]:
        """The round engine's server step, through the training method's server half if any.

        Returns the step and the method messages not used (``device -> reason``).
        """
        settings = self._settings
        if self._method is None or self._plan is None:
            updates, partials = self._step_inputs(intake)
            step = server_step(
                self.state.params,
                intake.device_ids,
                updates,
                settings=settings,
                reputation=self._reputation,
                aggregator=self._aggregator,
                fallback=self._fallback,
                misbehaving=intake.misbehaving,
                detector=self._detector,
                partials=partials,
            )
            return step, {}
        return method_server_step(
            self._method,
            self._plan,
            self.state.params,
            intake.accepted,
            self._method_state,
            settings=settings,
            reputation=self._reputation,
            aggregator=self._aggregator,
            fallback=self._fallback,
            misbehaving=intake.misbehaving,
            detector=self._detector,
        )

    def _validate(self, params: NDArray[np.float32]) -> float | None:
        if self._validation is None:
            return None
        # The task's metric (accuracy, or r2 for a regression) on the held-out set; samples
        # of any shape (sensor windows, images) go to the graph as flat rows.
        x = self._validation.test_x
        outputs = OnnxClassifier(export_onnx(self._spec, params)).logits(x.reshape(len(x), -1))
        return round(self._task.metric(outputs, self._validation.test_y), 4)

    # -- reporting -----------------------------------------------------------------------

    def _report(self, summary: RoundSummary) -> None:
        fleet = self.config.fleet
        _LOGGER.info(
            "fleet %s round %d: accepted %d, rejected %s, flagged %s, accuracy %s (%s)",
            fleet,
            summary.round,
            summary.accepted,
            summary.rejected,
            summary.flagged,
            summary.validation_accuracy,
            summary.closed_by,
        )
        summarised = self._audit_budget.drain()
        if summarised:
            counts = [
                {"device": key[0], "reason": key[1], "count": count}
                for key, count in sorted(
                    (cast(tuple[str, str], k), v) for k, v in summarised.items()
                )
            ]
            self._audit_event("rejections-summarised", round=summary.round, counts=counts)
        document = asdict(summary)
        document.pop("audit_head")
        self._audit_event("round-completed", **document)
        head = self._checkpoint(summary.round)
        if head is not None:
            summary.audit_head = head
        if self._rounds_log is not None:
            self._rounds_log.append_line(summary.to_json())
        self._rejection_log.flush()
        self._late_log.flush()
        self.metrics.round_completed(
            round_number=summary.round,
            duration_s=summary.duration_s,
            accepted=summary.accepted,
            cohort_size=summary.cohort_size,
            skipped=summary.skipped,
            fallback=summary.fallback,
            validation_accuracy=summary.validation_accuracy,
        )
        self.metrics.set_reputations(self._reputation.snapshot())
        for device in summary.flagged:
            self.metrics.device_flagged(device)
        status = summary.to_json().encode()
        # A fleet of thousands makes the summary (every device's reputation) larger than one
        # message: chunks cannot be retained, so it goes out chunked, like a large model,
        # instead of stopping the coordinator.
        retain = len(status) <= self.config.mqtt.max_message_bytes
        self._client.publish(topics.coordinator_status_topic(fleet), status, retain=retain)
        if self.config.suspicious_device_alerts:
            for device in summary.flagged:
                # "anomalous-norm", "anomalous-direction", "anomalous-persistent", ...
                why = summary.flag_reasons.get(device, "update")
                self._alert(summary.round, device, f"anomalous-{why}", summary.scores.get(device))

    def _checkpoint(self, round_number: int | None = None) -> dict[str, Any] | None:
        """Sign the audit log's head (fsyncs the log); return it for the summary."""
        if self._audit is None:
            return None
        number = self.state.completed_round if round_number is None else round_number
        return self._audit.checkpoint(number).to_dict()

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
