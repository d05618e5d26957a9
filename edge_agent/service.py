"""The agent daemon: receive the signed model, train when eligible, publish a signed update.

Threads: the MQTT client's network thread only queues incoming models; the thread that
calls :meth:`Agent.run` verifies, trains (torch, imported lazily so inference-only use never
loads it), compresses, signs and publishes. When several models queue up while training,
only the newest is used.

Re-sending: the agent keeps the signed update it sent for the current round (in memory and
in its state file). Whenever a valid model for that same round and version arrives again
(the retained copy the broker hands out after every reconnect, or the coordinator sending
the round's model again after a restart), the agent publishes the same bytes again instead
of ignoring it: an update lost with a broker restart or a coordinator crash is then
delivered, and the coordinator recognises copies of what it already has. With sharded
ingest the coordinator also publishes signed receipts of the updates it holds, and the
agent sends its update again when a receipt, ``receipt_grace_s`` after the publish, omits
it (:mod:`byzedge.edge_agent.receipts`).

Device-side state: the update pipeline's error-feedback residual and worker momentum
(``momentum1``; :mod:`byzedge.edge_agent.pipeline`) are saved in the agent's state file
with the model counters after every round, so a restarted agent continues them.

Refusals: over MQTT 5 the broker answers a publish its ACL denies with ``Not authorized``;
the agent logs that as an error (the certificate's CN must be the device id) and reports it
in its status (``last_refusal``), instead of believing the update was sent.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from byzedge.daemon import systemd
from byzedge.daemon.mqtt import ConnectInfo, Delivery, Will
from byzedge.daemon.store import AtomicStore
from byzedge.daemon.transport import Endpoint, TransportFactory, mqtt_transport
from byzedge.edge_agent.config import AgentConfig
from byzedge.edge_agent.downlink import DownlinkFollower, Subscriptions
from byzedge.edge_agent.method_step import DeviceStepJob, MethodDevice, propose
from byzedge.edge_agent.model_store import ModelInfo, ModelStore
from byzedge.edge_agent.pipeline import PreparedUpdate, UpdatePipeline
from byzedge.edge_agent.receipts import ReceiptFollower
from byzedge.edge_agent.seams import RoundContext, SensorSource, UpdateStage, WireStage
from byzedge.edge_agent.telemetry import TelemetrySnapshot, check_eligibility, read_telemetry
from byzedge.edge_agent.worker import TrainingWorker, TrainingWorkerError
from byzedge.methods import METHODS
from byzedge.methods.base import Proposal, RoundPlan
from byzedge.models import get_model_spec, layout_mismatch
from byzedge.protocol import topics
from byzedge.protocol.errors import ProtocolError
from byzedge.protocol.manifest import GlobalModel, open_global_model
from byzedge.protocol.signing import SigningKey, VerifyKey

__all__ = ["Agent"]

_LOGGER = logging.getLogger(__name__)
_MAX_MODEL_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class SentUpdate:
    """The signed update sent for a round, kept to re-send it (see the module docstring)."""

    round: int
    base_version: int
    expires_ms: int
    messages: tuple[tuple[str, bytes], ...]  # (topic device id, payload)

    def to_state(self) -> dict[str, Any]:
        """The msgpack-friendly form kept in the agent's state file."""
        return {
            "round": self.round,
            "base_version": self.base_version,
            "expires_ms": self.expires_ms,
            "messages": [[device, payload] for device, payload in self.messages],
        }

    @classmethod
    def from_state(cls, document: object) -> SentUpdate | None:
        """Rebuild from :meth:`to_state`; ``None`` for anything else (old or bad state)."""
        if not isinstance(document, dict):
            return None
        try:
            messages = tuple(
                (str(device), bytes(payload)) for device, payload in document["messages"]
            )
            return cls(
                int(document["round"]),
                int(document["base_version"]),
                int(document["expires_ms"]),
                messages,
            )
        except (KeyError, TypeError, ValueError):
            return None


class Agent:
    """One edge device's federated-learning loop.

    Parameters
    ----------
    config:
        The validated configuration.
    signing_key:
        The device's private key (loaded from a file by the caller).
    coordinator_key:
        The only key whose models this agent accepts.
    source:
        Where local data comes from (possibly wrapped by the fault injector).
    stages:
        Update stages (the fault injector's attacks; empty for an honest device).
    wire_stages:
        Wire stages run on the sealed update (the fault injector's protocol-level
        attacks; empty for an honest device).
    telemetry:
        Reads the device's state; psutil by default, injectable for tests.
    transport:
        Builds the broker connection; MQTT with ``config.mqtt`` by default (tests pass an
        :class:`~daemon.transport.InMemoryBroker`'s ``connect``).
    """

    def __init__(
        self,
        config: AgentConfig,
        *,
        signing_key: SigningKey,
        coordinator_key: VerifyKey,
        source: SensorSource,
        stages: Sequence[UpdateStage] = (),
        wire_stages: Sequence[WireStage] = (),
        telemetry: Callable[[], TelemetrySnapshot] = read_telemetry,
        transport: TransportFactory | None = None,
    ) -> None:
        self.config = config
        self._key = signing_key
        self._coordinator_key = coordinator_key
        self._source = source
        self._telemetry = telemetry
        self._spec = get_model_spec(config.model)
        self._pipeline = UpdatePipeline(
            config.compression,
            sparsity=config.sparsity,
            error_feedback=config.error_feedback,
            momentum1=config.momentum1,
            stages=stages,
            wire_stages=wire_stages,
        )
        self._method = MethodDevice(self._spec.dim, stages, wire_stages)
        # (topic, payload): the dense model, or Byz-EF21-BC's broadcast and resync pair.
        self._inbox: queue.Queue[tuple[str, bytes]] = queue.Queue(maxsize=64)
        self._store = AtomicStore(config.state_dir / "agent.state")
        self._models = ModelStore(config.state_dir)
        self._state: dict[str, Any] = self._load_state()
        self._device_salt = zlib.crc32(config.device_id.encode())
        self.refused_models = 0
        self.last_model_refusal: str | None = None
        self.updates_sent = 0
        self.updates_resent = 0
        self.updates_refused = 0
        self.last_refusal: dict[str, Any] | None = None
        self._deliveries: list[tuple[int, Delivery]] = []
        self._worker = TrainingWorker(config.training.worker_linger_s)
        self.last_status: dict[str, Any] = {}
        self._status_topic = topics.device_status_topic(config.fleet, config.device_id)
        # Sharded ingest's receipts: the update is sent again when they omit it.
        self._receipts = ReceiptFollower(
            config.fleet, config.device_id, coordinator_key, config.receipt_grace_s
        )
        if self._sent is not None:
            self._receipts.sent(self._sent.round, self._sent.base_version)
        connect = transport if transport is not None else mqtt_transport(config.mqtt)
        self._client = connect(
            Endpoint(
                config.device_id,
                on_message=self._enqueue,
                subscriptions=[
                    (topics.model_topic(config.fleet), 1),
                    (self._receipts.topic, 1),
                ],
                will=Will(self._status_topic, self._status_bytes("offline")),
                on_connect=self._on_connect,
                seed=config.seed + self._device_salt,
            )
        )
        self._downlink = DownlinkFollower(
            config.fleet,
            coordinator_key,
            max_bytes=_MAX_MODEL_BYTES,
            dim=self._spec.dim,
            subscriptions=Subscriptions(
                subscribe=self._client.subscribe, unsubscribe=self._client.unsubscribe
            ),
        )

    # -- state -------------------------------------------------------------------------

    def _load_state(self) -> dict[str, Any]:
        state = self._store.load() or {}
        # The pipeline's device-side state (error-feedback residual, worker momentum) is
        # kept at the top level, where older agents kept the residual.
        self._pipeline.load_state_dict(state, self._spec.dim)
        self._method.load_plain(state.get("method"))
        self._sent = SentUpdate.from_state(state.get("last_update"))
        return {
            "model_counter": int(state.get("model_counter", -1)),
            "model_version": int(state.get("model_version", -1)),
            "update_counter": int(state.get("update_counter", 0)),
        }

    def _save_state(self) -> None:
        self._store.save(
            {
                **self._state,
                **self._pipeline.state_dict(),
                "method": self._method.to_plain(),
                "last_update": self._sent.to_state() if self._sent is not None else None,
            }
        )

    # -- main loop ---------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None) -> int:
        """Serve rounds until ``stop`` is set; return the exit code (0)."""
        stop = stop or threading.Event()
        self._client.start(wait_s=None)
        systemd.notify_ready(f"device {self.config.device_id}")
        next_status = time.monotonic() + self.config.status_interval_s
        try:
            while not stop.is_set():
                systemd.notify_watchdog()
                try:
                    message = self._inbox.get(timeout=0.25)
                except queue.Empty:
                    message = None
                model = self._newest(message) if message is not None else None
                if model is not None:
                    self._handle_model(model)
                self._check_deliveries()
                self._resend_if_unreceipted()
                if self._worker.release_if_idle():
                    _LOGGER.info("device %s: training worker released", self.config.device_id)
                if time.monotonic() >= next_status:
                    self._publish_status("online")
                    next_status = time.monotonic() + self.config.status_interval_s
        finally:
            systemd.notify_stopping()
            self._worker.close()
            self._publish_status("offline")
            self._client.stop()
        return 0

    def kill(self) -> None:
        """Drop the broker connection abruptly, as a power cut would (tests)."""
        self._client.kill()

    @property
    def downlink(self) -> DownlinkFollower:
        """How this agent receives models: dense, or following a compressed broadcast."""
        return self._downlink

    @property
    def connected(self) -> threading.Event:
        """Set while the MQTT connection is up."""
        return self._client.connected

    def _on_connect(self, _info: ConnectInfo) -> None:
        # On the network thread: publishing only queues, and the queue goes out next.
        self._publish_status("online")

    def _enqueue(self, topic: str, payload: bytes) -> None:
        if not payload:  # a reachability probe (check-config --online)
            return
        if self._receipts.offer(topic, payload):
            return
        try:
            self._inbox.put_nowait((topic, payload))
        except queue.Full:  # a dense model is refetched; a broadcast chain resyncs
            _LOGGER.warning("device %s: model inbox full, dropping", self.config.device_id)

    def _newest(self, message: tuple[str, bytes]) -> GlobalModel | None:
        """Take ``message`` and every one queued behind it, in order; the newest model.

        Each is taken (a broadcast only follows from the one before it), but only the
        newest model is trained on; a training method's difference needs the model right
        before it, so the ones passed over are observed.
        """
        newest = self._receive(*message)
        while True:
            try:
                message = self._inbox.get_nowait()
            except queue.Empty:
                return newest
            model = self._receive(*message)
            if model is None:
                continue
            if (
                newest is not None
                and newest.plan is not None
                and newest.params.shape == (self._spec.dim,)
            ):
                self._method.observe(newest.params, newest.sha256)
            newest = model

    def _receive(self, topic: str, payload: bytes) -> GlobalModel | None:
        """Open one downlink message; ``None`` when refused or nothing to train on yet."""
        refused_before = self._downlink.refused
        taken = self._downlink.take(topic, payload)
        self.refused_models += self._downlink.refused - refused_before
        if not isinstance(taken, bytes):
            return taken
        try:
            return open_global_model(
                taken,
                self._coordinator_key,
                fleet=self.config.fleet,
                max_bytes=_MAX_MODEL_BYTES,
            )
        except ProtocolError as exc:
            self.refused_models += 1
            _LOGGER.warning("device %s: refusing global model: %s", self.config.device_id, exc)
            return None

    # -- one model ---------------------------------------------------------------------

    def _handle_model(self, model: GlobalModel) -> None:
        device = self.config.device_id
        if self._resend_if_asked(model):
            return
        if model.counter <= self._state["model_counter"]:
            return  # a retained copy we already handled, or a replay
        if model.version < self._state["model_version"]:
            self.refused_models += 1
            _LOGGER.warning(
                "device %s round %d: refusing rollback to model %d (holding %d)",
                device,
                model.round,
                model.version,
                self._state["model_version"],
            )
            return
        # The signed layout says how the coordinator's model differs from this device's
        # module (both shapes), also where name and length agree but the code drifted.
        mismatch = layout_mismatch(self._spec, model.layout) if model.layout else None
        if mismatch is not None and model.model == self.config.model:
            self.refused_models += 1
            self.last_model_refusal = mismatch
            _LOGGER.warning("device %s: refusing model %r: %s", device, model.model, mismatch)
            return
        if model.model != self.config.model or model.params.shape != (self._spec.dim,):
            self.refused_models += 1
            _LOGGER.warning(
                "device %s: refusing model %r of dim %d", device, model.model, model.params.size
            )
            return
        try:
            plan = RoundPlan.from_meta(model.plan) if model.plan is not None else None
            method_known = plan is None or plan.algorithm in METHODS
        except ValueError as exc:
            plan, method_known = None, False
            reason = str(exc)
        else:
            reason = f"unknown training method {plan.algorithm!r}" if plan else ""
        if not method_known:
            self.refused_models += 1
            _LOGGER.warning("device %s: refusing model with a bad plan: %s", device, reason)
            return
        self._state["model_counter"] = model.counter
        self._state["model_version"] = model.version
        self._models.save(
            ModelInfo(model.model, model.round, model.version, model.sha256), model.params
        )
        if model.includes(device) and plan is not None:
            self._step_and_publish(model, plan)
        elif model.includes(device):
            self._train_and_publish(model)
        if plan is not None:
            self._method.observe(model.params, model.sha256)
        self._save_state()
        self._downlink.saw_dense_model(model)

    def _resend_if_asked(self, model: GlobalModel) -> bool:
        """Re-send the kept update if ``model`` is its round's model again; ``True`` if so."""
        sent = self._sent
        if (
            sent is None
            or model.final
            or model.round != sent.round
            or model.version != sent.base_version
            or not model.includes(self.config.device_id)
        ):
            return False
        if time.time() * 1000 >= sent.expires_ms:
            return False  # too old to be accepted: train again if the round is new
        self._state["model_counter"] = max(self._state["model_counter"], model.counter)
        self._publish_update(sent, resend=True)
        self._save_state()
        return True

    def _publish_update(
        self, sent: SentUpdate, *, resend: bool, why: str = "the round's model came again"
    ) -> None:
        for topic_device, payload in sent.messages:
            delivery = self._client.publish(
                topics.update_topic(self.config.fleet, topic_device), payload, qos=1
            )
            self._deliveries.append((sent.round, delivery))
        self._receipts.sent(sent.round, sent.base_version)
        if resend:
            self.updates_resent += 1
            _LOGGER.info(
                "device %s round %d: sent the update again (%s)",
                self.config.device_id,
                sent.round,
                why,
            )

    def _resend_if_unreceipted(self) -> None:
        """Send the kept update again when the coordinator's receipts omit it (sharded ingest)."""
        sent = self._sent
        if not self._receipts.due() or sent is None:
            return
        if time.time() * 1000 >= sent.expires_ms:
            return  # too old to be accepted
        self._publish_update(sent, resend=True, why="the coordinator's receipts omit it")

    def _check_deliveries(self) -> None:
        """Log and report updates the broker refused (MQTT 5 reason codes)."""
        pending = []
        for round_number, delivery in self._deliveries:
            if not delivery.done:
                pending.append((round_number, delivery))
            elif delivery.refused is not None:
                self.updates_refused += 1
                self.last_refusal = {
                    "round": round_number,
                    "topic": delivery.topic,
                    "reason": delivery.refused,
                }
                _LOGGER.error(
                    "device %s round %d: the broker refused the update on %s: %s (the "
                    "certificate's CN must be this device id, and the ACL must let it write "
                    "its update topic)",
                    self.config.device_id,
                    round_number,
                    delivery.topic,
                    delivery.refused,
                )
                self._publish_status("refused", reason=delivery.refused, round_number=round_number)
        self._deliveries = pending

    def _eligible(self, model: GlobalModel) -> TelemetrySnapshot | None:
        """The telemetry snapshot when the device may train this round, else ``None``."""
        snapshot = self._telemetry()
        eligibility = check_eligibility(snapshot, self.config.eligibility)
        if not eligibility.eligible:
            _LOGGER.info(
                "device %s round %d: not training (%s)",
                self.config.device_id,
                model.round,
                eligibility.reason,
            )
            self._publish_status(
                "busy", snapshot, reason=eligibility.reason, round_number=model.round
            )
            return None
        self._publish_status("training", snapshot, round_number=model.round)
        return snapshot

    def _round_seed(self, model: GlobalModel) -> np.random.SeedSequence:
        # One seed per (fleet seed, device, round): training and attack stages repeat exactly.
        return np.random.SeedSequence([self.config.seed, self._device_salt, model.round])

    def _next_counter(self) -> int:
        counter = max(int(self._state["update_counter"]) + 1, time.time_ns() // 1000)
        self._state["update_counter"] = counter
        return counter

    def _train_and_publish(self, model: GlobalModel) -> None:
        device = self.config.device_id
        snapshot = self._eligible(model)
        if snapshot is None:
            return
        seed_seq = self._round_seed(model)
        try:
            delta = self._train(model, seed=int(seed_seq.generate_state(1)[0]))
        except (ValueError, TrainingWorkerError) as exc:
            # Bad local data (wrong shape, nothing usable) or a worker killed for memory:
            # this round is skipped and said so; the agent keeps serving rounds.
            _LOGGER.error("device %s round %d: training failed: %s", device, model.round, exc)
            self._publish_status("skipped", snapshot, reason=str(exc), round_number=model.round)
            return
        context = RoundContext(
            device_id=device,
            round=model.round,
            global_params=model.params,
            rng=np.random.default_rng(seed_seq),
        )
        prepared = self._pipeline.prepare(
            delta,
            context,
            key=self._key,
            fleet=self.config.fleet,
            base_version=model.version,
            counter=self._next_counter(),
        )
        self._send(model, prepared, snapshot, save_first=False)

    def _step_and_publish(self, model: GlobalModel, plan: RoundPlan) -> None:
        """A training method's round: device step, seal, commit, save, then publish.

        The state is saved before the update goes out, so a device killed in between
        re-sends the very update its state has committed (never one it does not know).
        """
        device = self.config.device_id
        snapshot = self._eligible(model)
        if snapshot is None:
            return
        seed_seq = self._round_seed(model)
        try:
            proposal = self._propose(model, plan, seed=int(seed_seq.generate_state(1)[0]))
        except (ValueError, TrainingWorkerError) as exc:
            _LOGGER.error(
                "device %s round %d: %s step failed: %s", device, model.round, plan.algorithm, exc
            )
            self._publish_status("skipped", snapshot, reason=str(exc), round_number=model.round)
            return
        if proposal is None:
            reason = f"{plan.algorithm}: waiting for the next full-gradient round"
            _LOGGER.info(
                "device %s round %d: %s (no previous model to difference)",
                device,
                model.round,
                reason,
            )
            self._publish_status("skipped", snapshot, reason=reason, round_number=model.round)
            return
        context = RoundContext(
            device_id=device,
            round=model.round,
            global_params=model.params,
            rng=np.random.default_rng(seed_seq),
        )
        try:
            pipeline = self._method.pipeline(plan)
        except ValueError as exc:  # a codec this agent does not know
            _LOGGER.error("device %s round %d: %s", device, model.round, exc)
            self._publish_status("skipped", snapshot, reason=str(exc), round_number=model.round)
            return
        prepared = pipeline.prepare(
            proposal.vector,
            context,
            key=self._key,
            fleet=self.config.fleet,
            base_version=model.version,
            counter=self._next_counter(),
            method_meta=proposal.message.to_meta(),
            dense=proposal.dense,
        )
        if prepared.sent is None:  # prepare always decodes method messages
            raise RuntimeError("the pipeline did not return the sent vector")
        self._method.commit(plan, proposal, prepared.sent)
        self._send(model, prepared, snapshot, save_first=True)

    def _propose(self, model: GlobalModel, plan: RoundPlan, seed: int) -> Proposal | None:
        job = DeviceStepJob(
            model_name=self.config.model,
            plan=plan,
            params=model.params,
            previous=self._method.previous_for(plan),
            data=self._source.read(model.round),
            state=self._method.state,
            device_id=self.config.device_id,
            seed=seed,
            loss=self.config.training.loss,
        )
        if self.config.training.isolation == "process":
            return self._worker.call(propose, job)
        return propose(job)

    def _send(
        self,
        model: GlobalModel,
        prepared: PreparedUpdate,
        snapshot: TelemetrySnapshot,
        *,
        save_first: bool,
    ) -> None:
        self._sent = SentUpdate(
            round=model.round,
            base_version=model.version,
            expires_ms=prepared.envelope.header.expires_ms,
            messages=tuple((m.topic_device, m.payload) for m in prepared.messages),
        )
        if save_first:
            self._save_state()
        self._publish_update(self._sent, resend=False)
        self.updates_sent += 1
        _LOGGER.info(
            "device %s round %d: sent %d-byte update (%s)",
            self.config.device_id,
            model.round,
            len(prepared.wire_bytes),
            prepared.envelope.header.codec,
        )
        self._publish_status("online", snapshot, round_number=model.round)

    def _train(self, model: GlobalModel, seed: int) -> NDArray[np.float32]:
        settings = self.config.training
        data = self._source.read(model.round)
        if settings.isolation == "process":
            return self._worker.train(self.config.model, model.params, data, settings, seed)
        # torch is imported here, on first training, never by inference-only use.
        from byzedge.edge_agent.training import TrainingConfig, train_local  # noqa: PLC0415

        config = TrainingConfig.from_settings(settings)
        return train_local(self._spec, model.params, data, config, seed=seed)

    # -- status ------------------------------------------------------------------------

    def _status_bytes(
        self,
        state: str,
        snapshot: TelemetrySnapshot | None = None,
        *,
        reason: str | None = None,
        round_number: int | None = None,
    ) -> bytes:
        status: dict[str, Any] = {
            "device_id": self.config.device_id,
            "state": state,
            "time": round(time.time(), 3),
        }
        if state != "offline":
            # Not in the last will, which is fixed at start-up: a monitor keeps the
            # figures it last saw instead of zeros.
            status["updates_sent"] = self.updates_sent
            status["updates_resent"] = self.updates_resent
            status["updates_refused"] = self.updates_refused
            status["refused_models"] = self.refused_models
            if self.last_refusal is not None:
                status["last_refusal"] = self.last_refusal
            # How models arrive: dense, or following Byz-EF21-BC's compressed broadcast.
            status["downlink"] = {
                "mode": self._downlink.mode,
                "bytes": self._downlink.downlink_bytes,
                "resyncs": self._downlink.resyncs,
            }
        if snapshot is not None:
            status["telemetry"] = snapshot.to_dict()
        if reason is not None:
            status["reason"] = reason
        if round_number is not None:
            status["round"] = round_number
        self.last_status = status
        return json.dumps(status).encode()

    def _publish_status(
        self,
        state: str,
        snapshot: TelemetrySnapshot | None = None,
        *,
        reason: str | None = None,
        round_number: int | None = None,
    ) -> None:
        if snapshot is None and state != "offline":
            try:
                snapshot = self._telemetry()
            except (OSError, RuntimeError) as exc:
                _LOGGER.debug("device %s: telemetry failed: %s", self.config.device_id, exc)
        payload = self._status_bytes(state, snapshot, reason=reason, round_number=round_number)
        self._client.publish(self._status_topic, payload, qos=1, retain=True)
