"""An ingest worker: one of K processes that share a fleet's updates and fold them.

``byzedge coordinator ingest-worker --config coordinator.toml --worker N``. The worker
takes its share of the update stream from an
:class:`~byzedge.coordinator.cluster.contracts.UpdateSource` (an MQTT v5 shared
subscription, :mod:`~byzedge.coordinator.cluster.mqtt_share`; or a JetStream consumer) and,
for the round the leader's signed context announces
(:mod:`~byzedge.coordinator.cluster.context`)::

    Ingest.submit (the coordinator's own checks, unchanged)
      -> accepted: fold (rows mode: keep the signed envelope; sum mode: the rule's accumulate,
         weighted as the leader's step will weight it)
      -> rejected / copy: noted for the leader's counts, reputation and audit
    every partial_flush_s, or once 16 messages await their ack, or the partial is large:
      publish the partial QoS 1 on byzedge/{fleet}/partial/{worker}
      -> wait for the broker's PUBACK -> save the ingest state -> ack the source messages

A message is thus acknowledged only once what it came to is with the broker: a worker
killed before that loses only unacknowledged messages, which the source gives to another
worker (JetStream) or drops (mosquitto), and which the devices then send again because the
leader's receipts do not list them (:mod:`byzedge.protocol.receipts`).

The worker keeps each partial it sent until a receipt shows the leader took it: it sends the
same frame again if no receipt does within a while (the leader, or the broker between, may
have lost it; the leader takes a frame once), and folds the updates of a partial the leader
refused (it overlapped devices the leader already held) into its next one.

Ingest state: the replay counters are saved atomically (``state_dir/ingest-N.state``)
after each PUBACK, never before, so a restarted worker accepts again exactly the updates
whose partial never reached the broker.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import cast

from byzedge.coordinator.aggregation import build, load_rule_state
from byzedge.coordinator.aggregation.base import StreamingAggregator, StreamingUnavailableError
from byzedge.coordinator.cluster.context import RoundContext, canonical, open_context
from byzedge.coordinator.cluster.contracts import SourcedMessage, UpdateSource
from byzedge.coordinator.cluster.mqtt_share import MqttShareSource
from byzedge.coordinator.cluster.partials import HeldUpdate, Partial, RejectionRecord
from byzedge.coordinator.config import CoordinatorConfig, rule_parameters
from byzedge.coordinator.enrolment import Enrolment
from byzedge.coordinator.ingest import Accepted, Ingest, Redelivered, Rejected, RoundWindow
from byzedge.daemon import systemd
from byzedge.daemon.mqtt import MqttClosedError, MqttSettings
from byzedge.daemon.store import AtomicStore
from byzedge.daemon.transport import Endpoint, TransportFactory, mqtt_transport
from byzedge.models import get_model_spec
from byzedge.protocol import topics
from byzedge.protocol.chunking import Reassembler
from byzedge.protocol.errors import ChunkError, ProtocolError
from byzedge.protocol.receipts import Receipt, open_receipt
from byzedge.protocol.signing import VerifyKey

__all__ = ["SOURCES", "IngestWorker", "build_source", "worker_name"]

_LOGGER = logging.getLogger(__name__)

# Messages awaiting their ack that trigger a flush: below mosquitto's default in-flight
# window of 20, past which the broker sends this worker nothing more until it acks.
_MAX_UNACKED = 16
# A partial whose rows or sums reach this size is sent at once.
_MAX_PARTIAL_BYTES = 8 * 1024 * 1024
_FETCH_BATCH = 64
_CONTROL_INBOX = 1000
# How long to wait for the broker's PUBACK of a partial before asking again.
_PUBACK_WAIT_S = 30.0
# Saving the replay counters after every flush would cost an fsync each.
_SAVE_EVERY_S = 1.0
_MAX_CONTROL_BYTES = 64 * 1024 * 1024


def worker_name(number: int) -> str:
    """The id of worker ``number`` in topics and logs: ``ingest-N``."""
    return f"ingest-{number}"


SourceFactory = Callable[[CoordinatorConfig, MqttSettings, str], UpdateSource]
"""``(config, the worker's MQTT settings, worker id) -> its share of the update stream``."""

SOURCES: dict[str, SourceFactory] = {
    "mosquitto": lambda config, settings, name: MqttShareSource(
        settings,
        fleet=config.fleet,
        group=config.cluster.share_group,
        client_id=f"{config.fleet}-{name}",
    ),
}
"""``[cluster] broker`` -> the update source its workers use (NATS registers ``"nats"``)."""


def build_source(config: CoordinatorConfig, settings: MqttSettings, number: int) -> UpdateSource:
    """Worker ``number``'s update source for ``config``'s broker.

    Raises
    ------
    ValueError
        When no source is registered for ``[cluster] broker``.
    """
    factory = SOURCES.get(config.cluster.broker)
    if factory is None:
        msg = f"[cluster] broker = {config.cluster.broker!r} has no update source in this build"
        raise ValueError(msg)
    return factory(config, settings, worker_name(number))


@dataclass(slots=True)
class _Share:
    """What the worker folded since its last flush."""

    updates: list[HeldUpdate] = field(default_factory=list)
    kept: list[Accepted] = field(default_factory=list)
    copies: list[tuple[str, bytes]] = field(default_factory=list)
    rejections: list[RejectionRecord] = field(default_factory=list)
    redelivered: int = 0
    acks: list[Callable[[], None]] = field(default_factory=list)
    started: float | None = None
    size: int = 0

    @property
    def empty(self) -> bool:
        return not (self.updates or self.copies or self.rejections or self.redelivered)


@dataclass(slots=True)
class _Sent:
    """A partial the broker acknowledged, kept until a receipt shows the leader took it."""

    frame: bytes
    kept: list[Accepted]
    sent_at: float


class IngestWorker:
    """Ingest worker ``number`` of ``config``'s fleet (see the module docstring).

    Parameters
    ----------
    config:
        The coordinator's configuration (fleet, devices, limits, rule, ``[cluster]``).
    number:
        This worker's number, 1..K; its id is ``ingest-N``.
    coordinator_key:
        The coordinator's public key: only contexts and receipts it signed are read.
    devices:
        Enrolled device keys.
    source:
        The worker's share of the update stream.
    transport:
        The control connection (contexts and receipts in, partials out); MQTT with
        ``config.mqtt`` by default.
    """

    def __init__(
        self,
        config: CoordinatorConfig,
        number: int,
        *,
        coordinator_key: VerifyKey,
        devices: Enrolment,
        source: UpdateSource,
        transport: TransportFactory | None = None,
    ) -> None:
        self.config = config
        self.name = worker_name(number)
        self._fleet = config.fleet
        self._key = coordinator_key
        self._source = source
        self._dim = get_model_spec(config.model, template=config.model_template).dim
        self._ingest = Ingest(
            config.fleet,
            devices,
            max_message_bytes=config.mqtt.max_message_bytes,
            max_update_bytes=config.max_update_bytes,
            update_ttl_s=config.update_ttl_s,
        )
        self._store = AtomicStore(config.state_dir / f"{self.name}.state")
        saved = self._store.load() or {}
        if isinstance(saved.get("ingest"), dict):
            self._ingest.load_state_dict(saved["ingest"])
        self._saved_at = 0.0
        self._session = os.urandom(8)
        self._flush_s = config.cluster.partial_flush_s
        self._resend_s = max(5.0, 4 * self._flush_s)
        self._context_topic = topics.context_topic(config.fleet)
        self._control: queue.Queue[tuple[str, bytes]] = queue.Queue(maxsize=_CONTROL_INBOX)
        self._reassembler = Reassembler(_MAX_CONTROL_BYTES, max_pending_per_source=2)
        self._context: RoundContext | None = None
        self._epoch = -1
        self._receipt: Receipt | None = None
        self._window: RoundWindow | None = None
        self._rule: StreamingAggregator | None = None
        self._usable = False
        self._seq = 0
        self._share = _Share()
        self._sent: dict[int, _Sent] = {}
        self.partials_sent = 0
        connect = transport if transport is not None else mqtt_transport(config.mqtt)
        self._client = connect(
            Endpoint(
                f"{config.fleet}-{self.name}-control",
                on_message=self._enqueue,
                subscriptions=[
                    (self._context_topic, 1),
                    (topics.receipts_topic(config.fleet), 1),
                ],
            )
        )

    # -- main loop ---------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None) -> int:
        """Fold updates until ``stop`` is set; return the exit code (0, or 1 on a failure)."""
        stop = stop or threading.Event()
        self._client.start(wait_s=None)
        while not self._source.wait_ready(1.0):
            if stop.is_set():
                self._source.close()
                self._client.stop()
                return 0
        _LOGGER.info("%s: consuming the fleet's updates", self.name)
        systemd.notify_ready(self.name)
        try:
            while not stop.is_set():
                systemd.notify_watchdog()
                self._drain_control()
                if not self._usable:
                    stop.wait(0.05)
                    continue
                wait = self._flush_s
                if self._share.started is not None:
                    wait = max(0.0, self._share.started + self._flush_s - time.monotonic())
                batch = self._source.fetch(_FETCH_BATCH, min(wait, 0.25))
                # The round's context comes on the other connection just before its
                # model goes to the devices: read it before judging what came meanwhile.
                self._drain_control()
                for message in batch:
                    self._take(message)
                if self._flush_due():
                    self._flush(stop)
                self._resend(stop)
            if self._usable:
                self._flush(stop)
        except MqttClosedError as exc:
            _LOGGER.error("%s: the connection closed: %s", self.name, exc)
            return 1
        except RuntimeError as exc:
            _LOGGER.error("%s: %s", self.name, exc)
            return 1
        finally:
            systemd.notify_stopping()
            self._source.close()
            self._client.stop()
        return 0

    # -- control messages (network thread enqueues, main thread reads) -------------------

    def _enqueue(self, topic: str, payload: bytes) -> None:
        if not payload:
            return
        try:
            self._control.put_nowait((topic, payload))
        except queue.Full:
            _LOGGER.warning("%s: control inbox full, dropping a message", self.name)

    def _drain_control(self) -> None:
        while True:
            try:
                topic, frame = self._control.get_nowait()
            except queue.Empty:
                return
            try:
                payload = self._reassembler.feed(topic, frame)
            except ChunkError as exc:
                _LOGGER.warning("%s: bad chunk on %s: %s", self.name, topic, exc)
                continue
            if payload is None:
                continue
            if topic == self._context_topic:
                self._on_context(payload)
            else:
                self._on_receipt(payload)

    def _on_context(self, payload: bytes) -> None:
        try:
            context = open_context(payload, self._key, fleet=self._fleet)
        except ProtocolError as exc:
            _LOGGER.warning("%s: ignoring a round context: %s", self.name, exc)
            return
        current = self._context
        if context.epoch < self._epoch or (
            current is not None
            and context.epoch == current.epoch
            and context.counter <= current.counter
        ):
            return  # a deposed leader's, or one already seen
        self._epoch = context.epoch
        if current is not None and context.basis == current.basis:
            self._context = context  # the same round, from a new leader: keep going
            return
        kept: list[Accepted] = []
        if current is not None and (context.round, context.model_version) == (
            current.round,
            current.model_version,
        ):
            # The same round folded otherwise (a leader restarted with another state):
            # what this worker accepted is folded again against the new basis.
            kept = self._share.kept + [a for sent in self._sent.values() for a in sent.kept]
        self._new_round()
        self._context = context
        self._receipt = None
        self._window = RoundWindow(
            context.round, context.model_version, context.dim, context.cohort
        )
        self._usable = self._prepare(context)
        for accepted in kept:
            self._fold(accepted)
        _LOGGER.info(
            "%s: round %d (model %d), %s mode, epoch %d",
            self.name,
            context.round,
            context.model_version,
            context.mode,
            context.epoch,
        )

    def _prepare(self, context: RoundContext) -> bool:
        """Check the context against this worker's configuration; build the rule to fold."""
        config = self.config
        if context.dim != self._dim:
            msg = (
                f"the leader's model has dim {context.dim}, this configuration's "
                f"{self._dim}: give every process the same coordinator.toml"
            )
            raise RuntimeError(msg)
        self._rule = None
        if context.mode == "rows":
            return True
        params = rule_parameters(config, context.rule)
        if canonical(params) != canonical(context.rule_params):
            msg = (
                f"the leader aggregates with {context.rule} {dict(context.rule_params or {})}, "
                f"this configuration says {params}: give every process the same "
                "coordinator.toml"
            )
            raise RuntimeError(msg)
        rule = cast(StreamingAggregator, build(context.rule, **params))
        try:
            if context.rule_state is not None:
                load_rule_state(rule, context.rule_state)
            rule.start(self._dim)
        except (ValueError, StreamingUnavailableError) as exc:
            raise RuntimeError(f"cannot fold with {context.rule}: {exc}") from exc
        self._rule = rule
        return True

    def _new_round(self) -> None:
        """Forget the closed round: its open share and the partials sent for it."""
        for ack in self._share.acks:
            ack()
        self._share = _Share()
        self._sent.clear()
        self._seq = 0

    def _on_receipt(self, payload: bytes) -> None:
        try:
            receipt = open_receipt(payload, self._key, fleet=self._fleet)
        except ProtocolError as exc:
            _LOGGER.warning("%s: ignoring a receipt: %s", self.name, exc)
            return
        context = self._context
        if (
            context is None
            or receipt.epoch < self._epoch
            or (receipt.round, receipt.model_version) != (context.round, context.model_version)
        ):
            return
        previous = self._receipt
        if (
            previous is not None
            and receipt.epoch == previous.epoch
            and receipt.counter <= previous.counter
        ):
            return
        self._receipt = receipt
        for seq in sorted(self._sent):
            if not receipt.taken(self.name, self._session, seq):
                continue
            sent = self._sent.pop(seq)
            if (self.name, self._session, seq) in receipt.refused:
                again = [a for a in sent.kept if not receipt.holds(a.device_id)]
                _LOGGER.info(
                    "%s round %d: partial %d refused (it overlapped held devices); folding "
                    "its %d other update(s) again",
                    self.name,
                    receipt.round,
                    seq,
                    len(again),
                )
                for accepted in again:
                    self._fold(accepted)

    # -- folding -----------------------------------------------------------------------

    def _take(self, message: SourcedMessage) -> None:
        window = self._window
        assert window is not None  # noqa: S101 (run() only fetches with a usable context)
        share = self._share
        if share.started is None:
            share.started = time.monotonic()
        share.acks.append(message.ack)
        outcome = self._ingest.submit(message.topic, message.payload, window)
        if isinstance(outcome, Accepted):
            receipt = self._receipt
            if receipt is not None and receipt.holds(outcome.device_id):
                share.copies.append((outcome.device_id, _digest(outcome)))
            else:
                self._fold(outcome)
            _LOGGER.debug(
                "%s round %d: accepted %s's update (%d message(s) await their ack)",
                self.name,
                window.round,
                outcome.device_id,
                len(share.acks),
            )
        elif isinstance(outcome, Redelivered):
            share.redelivered += 1
        elif isinstance(outcome, Rejected):
            share.rejections.append(
                RejectionRecord(
                    outcome.device_id, outcome.reason.value, outcome.detail, outcome.attributable
                )
            )
            _LOGGER.debug(
                "%s round %d: rejected update from %s: %s",
                self.name,
                window.round,
                outcome.device_id or "-",
                outcome.reason.value,
            )

    def _fold(self, accepted: Accepted) -> None:
        context = self._context
        assert context is not None  # noqa: S101 (folding needs a round)
        share = self._share
        if share.started is None:
            share.started = time.monotonic()
        weight = 1.0
        if self._rule is not None:
            weight = context.weight(accepted.device_id)
            self._rule.accumulate(accepted.update, weight, device_id=accepted.device_id)
            share.size = 16 * self._dim
        else:  # the leader decodes the envelope itself: it travels as compact as it came
            share.size += len(accepted.payload)
        share.kept.append(accepted)
        share.updates.append(
            HeldUpdate(
                device_id=accepted.device_id,
                header=accepted.header,
                header_bytes=accepted.header.to_bytes(),
                wire_bytes=accepted.wire_bytes,
                body_bytes=accepted.body_bytes,
                digest=_digest(accepted),
                weight=weight,
                payload=accepted.payload if self._rule is None else b"",
            )
        )

    # -- flushing ----------------------------------------------------------------------

    def _flush_due(self) -> bool:
        share = self._share
        if share.started is None:
            return False
        return (
            len(share.acks) >= _MAX_UNACKED
            or share.size >= _MAX_PARTIAL_BYTES
            or time.monotonic() - share.started >= self._flush_s
        )

    def _flush(self, stop: threading.Event) -> None:
        """Send the open share, wait for the PUBACK, save, then ack its messages."""
        share, self._share = self._share, _Share()
        context = self._context
        if share.empty or context is None:
            for ack in share.acks:
                ack()
            return
        self._seq += 1
        frame = self._frame(share, context, self._seq)
        self._publish(frame, stop)
        now = time.monotonic()
        self._sent[self._seq] = _Sent(frame, share.kept, now)
        self.partials_sent += 1
        if now - self._saved_at >= _SAVE_EVERY_S:
            self._store.save({"ingest": self._ingest.state_dict()})
            self._saved_at = now
        for ack in share.acks:
            ack()
        _LOGGER.debug(
            "%s round %d: partial %d sent (%d update(s), %d rejection(s))",
            self.name,
            context.round,
            self._seq,
            len(share.updates),
            len(share.rejections),
        )

    def _frame(self, share: _Share, context: RoundContext, seq: int) -> bytes:
        sums = None
        if self._rule is not None:
            if share.updates:
                sums = replace(
                    self._rule.partial(), devices=tuple(u.device_id for u in share.updates)
                )
            self._rule.start(self._dim)  # the next share starts from zero
        return Partial(
            fleet=self._fleet,
            round=context.round,
            model_version=context.model_version,
            epoch=context.epoch,
            basis=context.basis,
            worker=self.name,
            session=self._session,
            seq=seq,
            mode=context.mode,
            dim=self._dim,
            updates=tuple(share.updates),
            sums=sums,
            copies=tuple(share.copies),
            rejections=tuple(share.rejections),
            redelivered=share.redelivered,
        ).to_bytes()

    def _publish(self, frame: bytes, stop: threading.Event) -> None:
        """Publish QoS 1 and wait for the PUBACK (the client re-sends after a reconnect)."""
        topic = topics.partial_topic(self._fleet, self.name)
        while True:
            delivery = self._client.publish(topic, frame, qos=1)
            while not delivery.wait(_PUBACK_WAIT_S):
                _LOGGER.warning("%s: waiting for the broker to acknowledge a partial", self.name)
                if stop.is_set():
                    delivery.wait(5.0)
                    break
            if delivery.ok:
                return
            if delivery.refused is not None:
                msg = (
                    f"the broker refused the partial on {topic}: {delivery.refused} (the ACL "
                    "must let the ingest account publish there)"
                )
                raise RuntimeError(msg)
            if delivery.error is not None and isinstance(delivery.error, MqttClosedError):
                raise delivery.error
            if stop.is_set():
                raise RuntimeError(f"stopped before the broker acknowledged a partial on {topic}")
            time.sleep(0.5)

    def _resend(self, stop: threading.Event) -> None:
        """Send again the partials no receipt has shown taken for a while."""
        now = time.monotonic()
        for seq, sent in sorted(self._sent.items()):
            if now - sent.sent_at < self._resend_s:
                continue
            _LOGGER.info("%s: partial %d not taken yet; sending it again", self.name, seq)
            self._publish(sent.frame, stop)
            sent.sent_at = time.monotonic()


def _digest(accepted: Accepted) -> bytes:
    return hashlib.sha256(accepted.payload).digest()
