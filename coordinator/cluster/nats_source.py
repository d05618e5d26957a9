"""A fleet's update stream as a durable JetStream pull consumer on a NATS cluster.

Devices keep publishing plain MQTT 3.1.1 (QoS 1) on ``byzedge/{fleet}/update/{device}``
to any node of the cluster; nats-server's MQTT layer turns each publish into a NATS
message on ``byzedge.{fleet}.update.{device}``. A user stream per fleet captures those
subjects (work-queue retention: a message is gone once acked), and one durable pull
consumer on it is shared by every ingest worker, so each message reaches one worker, and
a worker that dies before acking hands its messages to the others after ``ack_wait``
(measured: exactly ``ack_wait`` after the first delivery, scale-out.md §6).

The stream and the consumer are created when missing and never deleted or recreated: a
stream recreated while a peer was catching up lost its quorum (scale-out.md §7).

What this source cannot promise: the MQTT layer's copy into a user stream is not
acknowledged, so a device's PUBACK does not mean "stored" (a message over
``max_msg_size``, or one published while the stream's leader is being re-elected, is
dropped silently). The leader's receipts and the device's re-send close that gap.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from byzedge.coordinator.cluster.contracts import SourcedMessage
from byzedge.coordinator.cluster.nats_link import NatsLink, NatsUnavailableError
from byzedge.daemon.mqtt import MqttClosedError
from byzedge.protocol.chunking import DEFAULT_MAX_MESSAGE_BYTES
from byzedge.protocol.topics import PREFIX

__all__ = [
    "JetStreamSettings",
    "JetStreamUpdateSource",
    "mqtt_topic_of",
    "stream_name",
    "update_subjects",
]

_LOGGER = logging.getLogger(__name__)

# nats-server turns '.' inside an MQTT topic level into '//' (2.10 on; 2.9 refuses it).
_DOT_IN_LEVEL = "//"
# Stream and consumer names may not hold '.', '*', '>', spaces or path separators.
_NAME_SAFE = re.compile(r"^[A-Za-z0-9_-]+$")
# Room for the envelope around a maximum-size chunk (MQTT topic, NATS headers).
_SIZE_MARGIN = 4096


def stream_name(fleet: str) -> str:
    """The JetStream stream holding ``fleet``'s updates (``BYZ_UPDATES_{fleet}``).

    Raises
    ------
    ValueError
        For a fleet id nats-server cannot carry in a subject or a stream name (``.``).
    """
    if not _NAME_SAFE.fullmatch(fleet):
        msg = (
            f"fleet id {fleet!r} cannot be used on a NATS cluster: "
            "only letters, digits, '_' and '-' (nats-server 2.9 refuses '.' in MQTT topics)"
        )
        raise ValueError(msg)
    return f"BYZ_UPDATES_{fleet}"


def update_subjects(fleet: str) -> str:
    """The NATS subjects of every update (and chunk) of ``fleet``: ``byzedge.{fleet}.update.>``."""
    stream_name(fleet)  # validates the fleet id
    return f"{PREFIX}.{fleet}.update.>"


def mqtt_topic_of(subject: str) -> str:
    """The MQTT topic a NATS subject came from (``a.b.c`` -> ``a/b/c``).

    nats-server maps ``/`` to ``.``, and (from 2.10) a ``.`` inside a level to ``//``;
    this undoes both, so ingest sees the topic the device published on.
    """
    levels = subject.split(_DOT_IN_LEVEL)
    return ".".join(level.replace(".", "/") for level in levels)


@dataclass(frozen=True, slots=True)
class JetStreamSettings:
    """How the stream and the shared consumer are provisioned.

    Attributes
    ----------
    replicas:
        Stream replicas: 3 on a three-node cluster (survives one node), 1 on a single node.
    max_message_bytes:
        The largest MQTT message a device sends (the coordinator's ``max_message_bytes``);
        the stream refuses bigger ones (silently, for the device: see the module notes).
    max_bytes:
        Bound on the stream's size; ``-1`` for none.
    duplicate_window_s:
        JetStream's duplicate window (by ``Nats-Msg-Id``; MQTT publishes carry none).
    ack_wait_s:
        How long a worker may hold a message before it goes to another worker: above the
        worst-case time from fetch to the partial aggregate being with the broker.
    max_deliver:
        Deliveries of one message before the consumer gives up on it (a poison message
        must not circle forever; the device re-sends when its receipt is missing).
    max_ack_pending:
        Messages handed out and not yet acked, across all workers.
    durable:
        The consumer's name, shared by the workers.
    """

    replicas: int = 3
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_bytes: int = -1
    duplicate_window_s: float = 120.0
    ack_wait_s: float = 30.0
    max_deliver: int = 5
    max_ack_pending: int = 4096
    durable: str = "ingest"


class JetStreamUpdateSource:
    """:class:`~byzedge.coordinator.cluster.contracts.UpdateSource` over JetStream.

    Parameters
    ----------
    servers:
        ``nats://host:port`` of every cluster node.
    fleet:
        The fleet whose updates this source reads.
    settings:
        Stream and consumer provisioning.
    name:
        This worker's connection name (shown by the server; unique per worker helps).
    tls:
        Client TLS for ``tls://`` servers (the fleet CA and the coordinator's certificate).
    """

    def __init__(
        self,
        servers: Sequence[str],
        fleet: str,
        settings: JetStreamSettings | None = None,
        *,
        name: str = "byzedge-ingest",
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.fleet = fleet
        self.settings = settings or JetStreamSettings()
        self.stream = stream_name(fleet)
        self.subjects = update_subjects(fleet)
        self._subscription: JetStreamContext.PullSubscription | None = None
        self._unacked: dict[int, Msg] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._link = NatsLink(servers, name, on_connect=self._provision, tls=tls)

    # -- UpdateSource ------------------------------------------------------------------

    def fetch(self, max_messages: int, timeout_s: float) -> list[SourcedMessage]:
        """Wait up to ``timeout_s`` for a message, then return what else is ready.

        Returns an empty list on timeout and while the cluster is unreachable (the link
        reconnects on its own); raises :class:`MqttClosedError` once closed.
        """
        if self._closed:
            raise MqttClosedError(f"source for fleet {self.fleet} is closed")
        if not self._link.wait_ready(timeout_s):
            return []
        batch = max(1, max_messages)
        try:
            messages = self._link.call(lambda _js: self._fetch(batch, timeout_s), timeout_s + 15.0)
        except (NatsUnavailableError, TimeoutError) as exc:
            if self._closed:
                raise MqttClosedError(f"source for fleet {self.fleet} is closed") from exc
            return []
        return [self._sourced(message) for message in messages]

    def close(self) -> None:
        """Stop consuming; messages fetched and not acked go back to the other workers."""
        if self._closed:
            return
        with self._lock:
            unacked = list(self._unacked.values())
            self._unacked.clear()
        if unacked:
            # A nak makes them available at once instead of after ack_wait.
            try:
                self._link.call(lambda _js: _nak_all(unacked), 10.0)
            except (NatsUnavailableError, TimeoutError) as exc:
                _LOGGER.warning(
                    "fleet %s: %d unacked message(s) return after ack_wait: %s",
                    self.fleet,
                    len(unacked),
                    exc,
                )
        self._closed = True
        self._link.close()

    # -- helpers -----------------------------------------------------------------------

    def wait_ready(self, timeout_s: float) -> bool:
        """Wait until connected with the stream and consumer in place."""
        return self._link.wait_ready(timeout_s)

    def _sourced(self, message: Msg) -> SourcedMessage:
        sequence = message.metadata.sequence.stream
        with self._lock:
            self._unacked[sequence] = message
        done = threading.Event()

        def ack() -> None:
            if done.is_set():
                return
            done.set()
            with self._lock:
                self._unacked.pop(sequence, None)
            try:
                self._link.call(lambda _js: message.ack(), 10.0)
            except (NatsUnavailableError, TimeoutError, nats.errors.Error) as exc:
                # Not acked: it comes back after ack_wait; the leader dedupes it.
                _LOGGER.warning("fleet %s: ack of seq %s failed: %s", self.fleet, sequence, exc)

        return SourcedMessage(mqtt_topic_of(message.subject), bytes(message.data), ack)

    async def _fetch(self, batch: int, timeout_s: float) -> list[Msg]:
        subscription = self._subscription
        if subscription is None:
            return []
        try:
            return await subscription.fetch(batch, timeout=max(0.1, timeout_s))
        except TimeoutError:  # nats.errors.TimeoutError subclasses the builtin one
            return []
        except (nats.errors.Error, nats.js.errors.Error, OSError) as exc:
            # Reconnecting, or a consumer leader election: nothing this time.
            _LOGGER.debug("fleet %s: fetch failed: %s", self.fleet, exc)
            await asyncio.sleep(min(timeout_s, 0.5))
            return []

    async def _provision(self, js: JetStreamContext) -> None:
        """Create the stream and the consumer if missing (never delete or recreate)."""
        settings = self.settings
        wanted = StreamConfig(
            name=self.stream,
            subjects=[self.subjects],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            num_replicas=settings.replicas,
            max_msg_size=settings.max_message_bytes + _SIZE_MARGIN,
            max_bytes=settings.max_bytes,
            duplicate_window=settings.duplicate_window_s,
        )
        try:
            info = await js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            try:
                await js.add_stream(wanted)
                _LOGGER.info("fleet %s: created stream %s", self.fleet, self.stream)
            except nats.js.errors.BadRequestError:
                # Another worker created it a moment ago (with other settings).
                info = await js.stream_info(self.stream)
                _warn_if_different(self.fleet, info.config, wanted)
        else:
            _warn_if_different(self.fleet, info.config, wanted)
        consumer = ConsumerConfig(
            durable_name=settings.durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=settings.ack_wait_s,
            max_deliver=settings.max_deliver,
            max_ack_pending=settings.max_ack_pending,
            filter_subject=self.subjects,
        )
        try:
            await js.consumer_info(self.stream, settings.durable)
        except nats.js.errors.NotFoundError:
            # Creating an identical consumer twice is accepted by the server.
            await js.add_consumer(self.stream, consumer)
        if self._subscription is None:
            self._subscription = await js.pull_subscribe_bind(settings.durable, stream=self.stream)


def _warn_if_different(fleet: str, have: StreamConfig, wanted: StreamConfig) -> None:
    """An existing stream is used as it is; a changed setting is reported, not applied."""
    for key in ("subjects", "retention", "num_replicas", "max_msg_size"):
        if getattr(have, key) != getattr(wanted, key):
            _LOGGER.warning(
                "fleet %s: stream %s has %s = %s, configured %s (left as it is)",
                fleet,
                wanted.name,
                key,
                getattr(have, key),
                getattr(wanted, key),
            )


async def _nak_all(messages: list[Msg]) -> None:
    for message in messages:
        try:
            await message.nak()
        except (nats.errors.Error, OSError):
            return
