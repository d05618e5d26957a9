"""One MQTT client for every byzedge process: paho-mqtt 2.x driven by one network thread.

Why a wrapper, and why this shape (measured facts: reference/mqtt-client.md):

* **One thread owns the socket.** paho writes to the socket from whichever thread calls
  ``publish()`` unless its own loop thread runs; two threads in ``SSL_write`` on one TLS
  connection break it (``bad length``, ``bad record mac``, a drop every few seconds under
  mutual TLS). Here every paho call (connect, publish, subscribe, read, write, keep-alive)
  happens on the client's network thread; other threads only append to a queue and wake
  that thread through a socket pair. Nothing of paho is shared across threads.
* **MQTT v5 where the broker speaks it.** With v5 the broker's PUBACK carries a reason code,
  so a publish the ACL refuses comes back as ``Not authorized`` on the :class:`Delivery`
  (MQTT 3.1.1 brokers acknowledge a denied publish like any other). ``protocol = "auto"``
  tries v5 and falls back to 3.1.1 only when the broker answers the CONNECT with
  "unsupported protocol version" (the embedded amqtt broker does).
* Capped exponential backoff with full jitter between connection attempts, so a fleet that
  lost its broker does not come back in lock-step (paho's own backoff has no jitter and
  only runs in its loop thread).
* Subscriptions renewed on every CONNACK; refusals (SUBACK failure codes) are recorded.
* Persistent sessions on request (the coordinator's): v5 ``clean_start = False`` with a
  session expiry, 3.1.1 ``clean_session = False``; the broker then queues QoS 1 messages
  while this client is away.
* ``TCP_NODELAY`` on the socket (paho never sets it: about 40 ms per hop otherwise).
* The message size limit enforced here, by chunking (paho ignores the broker's maximum
  packet size and would resend an oversize message forever).
* Errors of paho, ``ssl`` and the socket layer become :class:`MqttError` subclasses at this
  boundary: raised for a caller's mistake or a bad configuration, recorded on the
  :class:`Delivery` (or in :attr:`MqttClient.last_error`) for what the network does.

Received messages are handed to the caller's callback on the network thread, which must
only enqueue them.
"""

from __future__ import annotations

import contextlib
import logging
import random
import select
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from byzedge.daemon.backoff import exponential_backoff
from byzedge.protocol.chunking import DEFAULT_MAX_MESSAGE_BYTES, split_payload
from byzedge.protocol.errors import TopicError
from byzedge.protocol.topics import validate_nats_topic

__all__ = [
    "ConnectInfo",
    "Delivery",
    "MqttClient",
    "MqttClosedError",
    "MqttConfigError",
    "MqttError",
    "MqttPayloadError",
    "MqttQueueFullError",
    "MqttRefusedError",
    "MqttSettings",
    "MqttTimeoutError",
    "TlsSettings",
    "Will",
    "parse_broker_url",
]

_LOGGER = logging.getLogger(__name__)

MessageHandler = Callable[[str, bytes], None]
AckableHandler = Callable[[str, bytes, Callable[[], None]], None]
"""``handler(topic, payload, ack)``: a message the broker is acknowledged for only by ``ack()``."""
ProtocolChoice = Literal["auto", "5", "3.1.1"]

# How long the network thread sleeps in select() when nothing happens; keep-alive pings
# and reconnect deadlines are checked at least this often.
_IDLE_WAIT_S = 0.5
# A broker that neither answers nor closes a CONNECT (amqtt given an MQTT 5 CONNECT with a
# will) gets this long before the attempt counts as failed.
_CONNACK_TIMEOUT_S = 5.0
# A refused SUBSCRIBE is asked again after 1 s, then twice as long each time, up to 60 s.
_SUBSCRIBE_RETRY_MIN_S = 1.0
_SUBSCRIBE_RETRY_MAX_S = 60.0
# CONNACK reason of a broker that does not speak the requested protocol: 0x84 in MQTT 5,
# return code 1 in 3.1.1 (which paho reports under the same name).
_UNSUPPORTED_PROTOCOL = "Unsupported protocol version"


# -- errors ------------------------------------------------------------------------------


class MqttError(Exception):
    """Base of every error this client raises or records."""


class MqttConfigError(MqttError):
    """The settings point at files that cannot be used (TLS certificate, key, password)."""


class MqttTimeoutError(MqttError, TimeoutError):
    """No connection came up within the time asked for."""


class MqttPayloadError(MqttError, ValueError):
    """A payload cannot be sent as asked (a retained payload over the size limit)."""


class MqttQueueFullError(MqttError):
    """More messages are waiting than ``max_queued_messages`` allows."""


class MqttClosedError(MqttError):
    """The client was stopped; nothing more is sent."""


class MqttRefusedError(MqttError):
    """The broker refused a message (an MQTT 5 reason code such as ``Not authorized``)."""


# -- settings ----------------------------------------------------------------------------


class TlsSettings(BaseModel):
    """Mutual TLS towards the broker (file paths; keys never in the config itself)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ca_file: Path = Field(description="CA certificate that signed the broker's certificate.")
    cert_file: Path | None = Field(None, description="This client's certificate (mTLS).")
    key_file: Path | None = Field(None, description="This client's private key (mTLS).")


class MqttSettings(BaseModel):
    """How to reach the broker."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str = Field(
        "mqtt://127.0.0.1:1883",
        description="Broker URL, mqtt://host:port or mqtts://host:port.",
    )
    fallback_urls: tuple[str, ...] = Field(
        (),
        description=(
            "Other nodes of a clustered broker (NATS), same scheme as url. The client moves "
            "to the next URL (url first, then these, round robin) whenever a connection "
            "attempt fails or an open connection is lost."
        ),
    )
    topic_rules: Literal["mqtt", "nats"] = Field(
        "mqtt",
        description=(
            "'nats' refuses, before they reach the broker, the topics and QoS that "
            "nats-server 2.9 answers by dropping the connection ('.' or space in a topic "
            "level, '*' or '>' as a level, QoS 2); paho would re-send such a message on "
            "every reconnect, forever."
        ),
    )
    protocol: ProtocolChoice = Field(
        "auto",
        description=(
            "MQTT version: 'auto' speaks MQTT 5 and falls back to 3.1.1 when the broker "
            "answers that it does not speak 5 (refused publishes are reported only by "
            "MQTT 5 brokers); '5' or '3.1.1' to force one."
        ),
    )
    keepalive_s: int = Field(60, ge=5, le=3600, description="MQTT keep-alive interval.")
    username: str | None = Field(None, description="Broker user name, if the broker wants one.")
    password_file: Path | None = Field(
        None, description="File holding the broker password (never the password itself)."
    )
    tls: TlsSettings | None = Field(None, description="TLS settings; required for mqtts://.")
    max_message_bytes: int = Field(
        DEFAULT_MAX_MESSAGE_BYTES,
        ge=1024,
        description="Largest MQTT message sent; bigger payloads are chunked (AWS IoT: 128 KiB).",
    )
    reconnect_min_s: float = Field(0.5, gt=0, description="First reconnect delay ceiling.")
    reconnect_max_s: float = Field(30.0, gt=0, description="Largest reconnect delay ceiling.")
    max_queued_messages: int = Field(
        1000, ge=1, description="Outgoing messages buffered while disconnected."
    )
    session_expiry_s: int = Field(
        3600,
        ge=0,
        description=(
            "How long the broker keeps a persistent session (the coordinator's) after a "
            "disconnect, queueing its QoS 1 messages (MQTT 5; 3.1.1 brokers keep it until "
            "their own expiry)."
        ),
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parse_broker_url(value)
        return value

    @model_validator(mode="after")
    def _check_fallback_urls(self) -> MqttSettings:
        use_tls = parse_broker_url(self.url)[2]
        for url in self.fallback_urls:
            if parse_broker_url(url)[2] != use_tls:
                msg = f"fallback URL {url!r} must use the same scheme as url {self.url!r}"
                raise ValueError(msg)
        return self

    @property
    def broker_urls(self) -> tuple[str, ...]:
        """Every broker URL, in the order they are tried: ``url``, then the fallbacks."""
        return (self.url, *self.fallback_urls)


def parse_broker_url(url: str) -> tuple[str, int, bool]:
    """Return ``(host, port, use_tls)`` of ``mqtt://host:port`` or ``mqtts://host:port``.

    Raises
    ------
    ValueError
        For another scheme or a missing host.
    """
    parts = urlsplit(url)
    if parts.scheme not in {"mqtt", "mqtts"} or not parts.hostname:
        msg = f"broker URL must look like mqtt://host:port or mqtts://host:port, got {url!r}"
        raise ValueError(msg)
    use_tls = parts.scheme == "mqtts"
    return parts.hostname, parts.port or (8883 if use_tls else 1883), use_tls


@dataclass(frozen=True, slots=True)
class Will:
    """The last will the broker publishes if this client vanishes."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True, slots=True)
class ConnectInfo:
    """What a successful CONNACK said, handed to the ``on_connect`` hook.

    Attributes
    ----------
    protocol:
        ``"5"`` or ``"3.1.1"``.
    session_present:
        Whether the broker resumed a persistent session (its queued messages follow).
    count:
        Successful connections so far, this one included.
    """

    protocol: str
    session_present: bool
    count: int


# -- deliveries --------------------------------------------------------------------------


class Delivery:
    """The outcome of one :meth:`MqttClient.publish` (every chunk of it).

    A QoS 1 delivery is done when the broker has acknowledged every chunk; a QoS 0 one
    when every chunk was handed to the socket. :attr:`refused` holds the broker's reason
    when it refused a chunk (MQTT 5 only), :attr:`error` a local failure.
    """

    def __init__(self, topic: str, messages: int) -> None:
        self.topic = topic
        self.messages = messages
        self._outstanding = messages
        self._done = threading.Event()
        self._lock = threading.Lock()
        self.refused: str | None = None
        self.error: MqttError | None = None
        if messages == 0:
            self._done.set()

    @classmethod
    def failed(cls, topic: str, error: MqttError) -> Delivery:
        """A delivery that failed before anything was queued."""
        delivery = cls(topic, 0)
        delivery.error = error
        return delivery

    @classmethod
    def settled(cls, topic: str, *, refused: str | None = None) -> Delivery:
        """A one-message delivery that is already done (other transports, tests)."""
        delivery = cls(topic, 1)
        delivery._resolve(refused=refused)
        return delivery

    @property
    def done(self) -> bool:
        """Whether every chunk has an outcome."""
        return self._done.is_set()

    @property
    def ok(self) -> bool:
        """Done, and neither refused by the broker nor failed locally."""
        return self.done and self.refused is None and self.error is None

    def wait(self, timeout_s: float | None = None) -> bool:
        """Wait until done (or ``timeout_s``); return :attr:`done`."""
        return self._done.wait(timeout_s)

    def _resolve(self, refused: str | None = None, error: MqttError | None = None) -> None:
        with self._lock:
            if refused is not None and self.refused is None:
                self.refused = refused
            if error is not None and self.error is None:
                self.error = error
            self._outstanding -= 1
            if self._outstanding <= 0:
                self._done.set()

    def _fail_rest(self, error: MqttError) -> None:
        with self._lock:
            if self.error is None:
                self.error = error
            self._outstanding = 0
            self._done.set()

    def __repr__(self) -> str:
        state = "refused" if self.refused else "failed" if self.error else "done"
        shown = state if self.done else "pending"
        return f"Delivery({self.topic!r}, {self.messages} message(s), {shown})"


@dataclass(slots=True)
class _Frame:
    """One MQTT message waiting for the network thread."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    delivery: Delivery


# -- the client --------------------------------------------------------------------------


class MqttClient:
    """A reconnecting, chunking MQTT client whose socket only its network thread touches.

    Parameters
    ----------
    settings:
        Broker address, credentials and limits.
    client_id:
        The MQTT client id (the device id for agents).
    on_message:
        Called as ``on_message(topic, payload)`` from the network thread for every
        message on a subscribed topic; it must only enqueue.
    on_retained:
        If given, called instead of ``on_message`` for messages the broker delivers from
        its retained store (when a subscription is made), as opposed to messages
        published while subscribed: a retained status may be hours old.
    subscriptions:
        ``(topic filter, qos)`` pairs, renewed after every reconnect.
    will:
        Optional last will.
    on_connect:
        Optional hook called on the network thread after each successful (re)connect with
        a :class:`ConnectInfo`; it may call :meth:`publish` (queued, sent right after).
    persistent_session:
        Ask the broker to keep this client's session (subscriptions and queued QoS 1
        messages) across disconnects.
    seed:
        Seeds the reconnect jitter (tests); ``None`` uses the system's entropy.
    on_ackable:
        Manual acknowledgement (sharded ingest's competing consumers): when given, every
        message goes to ``on_ackable(topic, payload, ack)`` instead of ``on_message``, and
        the broker gets its PUBACK only once ``ack()`` is called (thread-safe, idempotent;
        the network thread sends it). An ack for a message of an earlier connection is
        dropped: the broker has re-queued or (clean session) discarded that message.

    Raises
    ------
    MqttConfigError
        When the TLS files or the password file cannot be read.
    """

    def __init__(
        self,
        settings: MqttSettings,
        client_id: str,
        *,
        on_message: MessageHandler,
        on_retained: MessageHandler | None = None,
        subscriptions: Sequence[tuple[str, int]] = (),
        will: Will | None = None,
        on_connect: Callable[[ConnectInfo], None] | None = None,
        persistent_session: bool = False,
        seed: int | None = None,
        on_ackable: AckableHandler | None = None,
    ) -> None:
        self.settings = settings
        self.client_id = client_id
        self._host, self._port, use_tls = parse_broker_url(settings.url)
        # The broker in use (url, or a fallback after a failure): see _next_broker.
        self.broker_url = settings.url
        self._broker_index = 0
        self._broker_changed = False
        self._on_message = on_message
        self._on_retained = on_retained or on_message
        self._subscriptions = list(subscriptions)
        self._will = will
        self._on_connect_hook = on_connect
        self._persistent = persistent_session
        self._on_ackable = on_ackable
        # Manual acks waiting for the network thread: (connection number, mid, qos).
        self._acks: deque[tuple[int, int, int]] = deque()
        self._rng = random.Random(seed)
        self._delays: Iterator[float] = self._new_backoff()
        self._password = _read_password(settings.password_file)
        self._tls_context = _tls_context(settings.tls) if use_tls or settings.tls else None

        self.connected = threading.Event()
        # Set once the broker has answered every SUBSCRIBE of the current connection.
        self.subscribed = threading.Event()
        self.connect_count = 0
        self.protocol: str | None = None  # negotiated: "5" or "3.1.1"
        self.last_error: str | None = None  # why the last connection attempt or link failed
        self.subscription_refusals: dict[str, str] = {}

        # Shared between threads: the outgoing queue (under _lock) and the wake-up pair.
        self._lock = threading.Lock()
        self._outgoing: deque[_Frame] = deque()
        # Subscriptions added or dropped while running: (filter, qos), qos None = drop.
        self._subscription_changes: deque[tuple[str, int | None]] = deque()
        # Created by start(), so a client that is never started holds no file descriptor.
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop_deadline: float | None = None
        self._killed = False
        self._closed = False

        # Owned by the network thread alone from start() on.
        self._paho: paho.Client | None = None
        self._paho_protocol = 3 if settings.protocol == "3.1.1" else 5
        self._paho_has_connected = False
        self._protocol_refused = False
        self._opened_at = 0.0
        self._socket_open = False
        self._in_flight: dict[int, _Frame] = {}
        self._early_acks: dict[int, Any] = {}
        self._subscribe_mids: dict[int, list[str]] = {}
        # Refused subscriptions asked again: filter -> (monotonic due time, delay used).
        self._subscribe_retries: dict[str, tuple[float, float]] = {}

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, wait_s: float | None = 10.0) -> None:
        """Start the network thread; optionally wait for the first CONNACK.

        Raises
        ------
        MqttTimeoutError
            If ``wait_s`` is given and no connection came up in time (with the last
            connection error). The thread keeps retrying in the background either way.
        """
        if self._thread is not None:
            raise RuntimeError("MqttClient.start() called twice")
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread = threading.Thread(
            target=self._run, name=f"mqtt-{self.client_id}", daemon=True
        )
        self._thread.start()
        if wait_s is not None and not self.connected.wait(wait_s):
            reason = f": {self.last_error}" if self.last_error else ""
            urls = ", ".join(self.settings.broker_urls)
            msg = f"no connection to {urls} within {wait_s} s{reason}"
            raise MqttTimeoutError(msg)

    def stop(self, flush_s: float = 5.0) -> None:
        """Send what is queued (up to ``flush_s`` while connected), disconnect, join."""
        if self._thread is None:
            return
        with self._lock:
            self._stop_deadline = time.monotonic() + max(0.0, flush_s)
        self._wake()
        self._thread.join(timeout=flush_s + 10.0)
        self.connected.clear()

    def kill(self) -> None:
        """Drop the connection without a DISCONNECT, as a crash would (the will fires)."""
        if self._thread is None:
            return
        with self._lock:
            self._killed = True
        self._wake()
        self._thread.join(timeout=10.0)
        self.connected.clear()

    # -- publishing --------------------------------------------------------------------

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> Delivery:
        """Queue ``payload`` for ``topic``, chunked if larger than ``max_message_bytes``.

        Thread-safe and non-blocking: the network thread sends it as soon as the
        connection is up (paho re-sends unacknowledged QoS 1 messages after a reconnect).
        Retained payloads are never chunked (a late subscriber would see only the last
        chunk).

        Returns
        -------
        Delivery
            Its :attr:`~Delivery.messages` is the number of MQTT messages used; wait on it
            for the broker's answer. A full queue or a stopped client gives a delivery
            that already failed (:class:`MqttQueueFullError`, :class:`MqttClosedError`).

        Raises
        ------
        MqttPayloadError
            For a retained payload over the size limit.
        """
        if self.settings.topic_rules == "nats":
            refusal = _nats_refusal(topic, qos)
            if refusal is not None:
                _LOGGER.error("client %s: not sending: %s", self.client_id, refusal)
                return Delivery.failed(topic, refusal)
        limit = self.settings.max_message_bytes
        if retain and len(payload) > limit:
            msg = f"retained payload of {len(payload)} bytes exceeds {limit}"
            raise MqttPayloadError(msg)
        frames = split_payload(payload, limit)
        delivery = Delivery(topic, len(frames))
        with self._lock:
            if self._closed or self._stop_deadline is not None or self._killed:
                delivery._fail_rest(MqttClosedError(f"client {self.client_id} is stopped"))
                return delivery
            if len(self._outgoing) + len(frames) > self.settings.max_queued_messages:
                error = MqttQueueFullError(
                    f"{len(self._outgoing)} messages already queued "
                    f"(max_queued_messages = {self.settings.max_queued_messages})"
                )
                delivery._fail_rest(error)
                _LOGGER.warning("client %s: not sending to %s: %s", self.client_id, topic, error)
                return delivery
            self._outgoing.extend(_Frame(topic, frame, qos, retain, delivery) for frame in frames)
        self._wake()
        return delivery

    # -- subscriptions -----------------------------------------------------------------

    def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        """Add a subscription, kept across reconnects (thread-safe, non-blocking).

        The broker sends the filter's retained messages on every SUBSCRIBE, also one that
        repeats a subscription already held: subscribing again is how a client asks for
        a retained message once more.
        """
        with self._lock:
            self._subscriptions = [s for s in self._subscriptions if s[0] != topic_filter]
            self._subscriptions.append((topic_filter, qos))
            self._subscription_changes.append((topic_filter, qos))
        self._wake()

    def unsubscribe(self, topic_filter: str) -> None:
        """Drop a subscription (thread-safe, non-blocking; unknown filters are ignored)."""
        with self._lock:
            self._subscriptions = [s for s in self._subscriptions if s[0] != topic_filter]
            self._subscription_changes.append((topic_filter, None))
        self._wake()

    def pending_acks(self) -> int:
        """Messages queued or sent but not yet acknowledged by the broker."""
        with self._lock:
            return len(self._outgoing) + len(self._in_flight)

    # -- network thread ----------------------------------------------------------------

    def _run(self) -> None:
        next_attempt = 0.0
        try:
            while True:
                with self._lock:
                    killed = self._killed
                    deadline = self._stop_deadline
                if killed:
                    self._drop_socket()
                    break
                if deadline is not None and self._ready_to_stop(deadline):
                    self._disconnect()
                    break
                if not self._socket_open:
                    now = time.monotonic()
                    if now < next_attempt:
                        self._wait_for_wake(min(next_attempt - now, _IDLE_WAIT_S))
                        continue
                    if not self._open_connection():
                        self._next_broker()
                        next_attempt = time.monotonic() + next(self._delays)
                        continue
                if not self._service_socket():
                    self._connection_lost()
                    self._maybe_switch_protocol()
                    self._next_broker()
                    next_attempt = time.monotonic() + next(self._delays)
        except Exception:  # a bug here must not leave callers waiting forever
            _LOGGER.exception("client %s: network thread failed", self.client_id)
        finally:
            self._finish()

    def _ready_to_stop(self, deadline: float) -> bool:
        if time.monotonic() >= deadline or not self.connected.is_set():
            return True
        with self._lock:
            return not self._outgoing and not self._in_flight and not self._acks

    def _open_connection(self) -> bool:
        """Open the socket and send CONNECT; ``False`` (error recorded) if that failed."""
        if self._paho is None:
            self._paho = self._new_paho()
            self._paho_has_connected = False
        client = self._paho
        try:
            # reconnect() keeps paho's unacknowledged QoS 1 messages and re-sends them
            # after the CONNACK; connect() would also re-arm v5's clean start.
            # After a move to another broker, connect() points paho at the new host (its
            # host setter refuses while paho thinks a connection is open); paho still
            # re-sends its unacknowledged QoS 1 messages there after the CONNACK.
            if self._paho_has_connected and not self._broker_changed:
                rc = client.reconnect()
            else:
                rc = self._first_connect(client)
            self._broker_changed = False
        except (OSError, ssl.SSLError, ValueError) as exc:
            self._record_failure(f"cannot reach {self.broker_url}: {_describe(exc)}")
            return False
        self._paho_has_connected = True
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._record_failure(f"cannot connect to {self.broker_url}: {paho.error_string(rc)}")
            return False
        sock = client.socket()
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._socket_open = True
        self._opened_at = time.monotonic()
        return True

    def _next_broker(self) -> None:
        """Move to the next broker URL (a no-op with a single URL)."""
        urls = self.settings.broker_urls
        if len(urls) < 2:
            return
        self._broker_index = (self._broker_index + 1) % len(urls)
        self.broker_url = urls[self._broker_index]
        self._host, self._port, _tls = parse_broker_url(self.broker_url)
        self._broker_changed = True
        _LOGGER.info("client %s: next broker %s", self.client_id, self.broker_url)

    def _first_connect(self, client: paho.Client) -> MQTTErrorCode:
        keepalive = self.settings.keepalive_s
        if self._paho_protocol == 5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            if self._persistent:
                properties.SessionExpiryInterval = self.settings.session_expiry_s
            # clean_start is explicit: paho's default ("first connect only") would be
            # re-armed by every connect() call.
            return client.connect(
                self._host,
                self._port,
                keepalive,
                clean_start=not self._persistent,
                properties=properties,
            )
        return client.connect(self._host, self._port, keepalive)

    def _new_paho(self) -> paho.Client:
        v5 = self._paho_protocol == 5
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
            clean_session=None if v5 else not self._persistent,
            reconnect_on_failure=False,
            manual_ack=self._on_ackable is not None,
        )
        # Our own queue bounds what waits; paho's in-flight window is the broker's.
        client.max_queued_messages_set(0)
        if self.settings.username is not None:
            client.username_pw_set(self.settings.username, self._password)
        if self._tls_context is not None:
            client.tls_set_context(self._tls_context)
        if self._will is not None:
            client.will_set(
                self._will.topic, self._will.payload, qos=self._will.qos, retain=self._will.retain
            )
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_message = self._handle_message
        client.on_publish = self._handle_publish
        client.on_subscribe = self._handle_subscribe
        return client

    def _service_socket(self) -> bool:
        """One round of select / read / write / keep-alive; ``False`` when the link died."""
        client = self._paho
        sock = client.socket() if client is not None else None
        if client is None or sock is None:
            return False
        if self.connected.is_set():
            self._hand_over_subscription_changes(client)
            self._retry_refused_subscriptions(client)
            self._hand_over_outgoing(client)
            self._hand_over_acks(client)
        elif self._connack_overdue(sock):
            return False
        readers: list[Any] = [sock, self._wake_r]  # both exist: start() made the pair
        writers: list[Any] = [sock] if client.want_write() else []
        try:
            readable, _writable, _ = select.select(readers, writers, [], _IDLE_WAIT_S)
        except (OSError, ValueError) as exc:  # the socket was closed under us
            self._record_failure(f"connection to {self.broker_url} lost: {_describe(exc)}")
            return False
        if self._wake_r in readable:
            self._drain_wake()
        rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        try:
            if sock in readable:
                rc = client.loop_read()
                # TLS may hold decrypted records that select() cannot see.
                while (
                    rc == MQTTErrorCode.MQTT_ERR_SUCCESS
                    and isinstance(client.socket(), ssl.SSLSocket)
                    and client.socket().pending()  # type: ignore[union-attr]
                ):
                    rc = client.loop_read()
            if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and client.want_write():
                rc = client.loop_write()
            if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                rc = client.loop_misc()
        except (OSError, ssl.SSLError) as exc:
            self._record_failure(f"connection to {self.broker_url} lost: {_describe(exc)}")
            return False
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or client.socket() is None:
            if self.last_error is None or self.connected.is_set():
                self._record_failure(
                    f"connection to {self.broker_url} lost: {paho.error_string(rc)}"
                )
            return False
        return True

    def _connack_overdue(self, sock: Any) -> bool:
        """Close an attempt whose CONNACK has not come in time; ``True`` if closed."""
        if time.monotonic() - self._opened_at <= _CONNACK_TIMEOUT_S:
            return False
        self._record_failure(f"no CONNACK from {self.broker_url} within {_CONNACK_TIMEOUT_S:.0f} s")
        if isinstance(sock, socket.socket):
            sock.close()
        return True

    def _hand_over_subscription_changes(self, client: paho.Client) -> None:
        while True:
            with self._lock:
                if not self._subscription_changes:
                    return
                topic_filter, qos = self._subscription_changes.popleft()
            if qos is None:
                client.unsubscribe(topic_filter)
                continue
            _rc, mid = client.subscribe(topic_filter, qos)
            if mid is not None:
                self._subscribe_mids[mid] = [topic_filter]

    def _retry_refused_subscriptions(self, client: paho.Client) -> None:
        """Ask again for subscriptions the broker refused, with a growing delay.

        A refusal may pass: a NATS node answers "Unspecified error" while its MQTT session
        stream elects a leader (scale-out.md, section 7), and an ingest worker that never
        subscribed to its round context again would wait forever. An ACL's refusal stays;
        asking again each minute costs one small packet.
        """
        if not self._subscribe_retries:
            return
        now = time.monotonic()
        with self._lock:
            wanted = dict(self._subscriptions)
        for topic_filter, (due, delay) in list(self._subscribe_retries.items()):
            if topic_filter not in wanted:
                del self._subscribe_retries[topic_filter]
            elif now >= due:
                self._subscribe_retries[topic_filter] = (float("inf"), delay)
                _rc, mid = client.subscribe(topic_filter, wanted[topic_filter])
                if mid is not None:
                    self._subscribe_mids[mid] = [topic_filter]

    def _hand_over_outgoing(self, client: paho.Client) -> None:
        while True:
            with self._lock:
                if not self._outgoing:
                    return
                frame = self._outgoing.popleft()
            info = client.publish(frame.topic, frame.payload, qos=frame.qos, retain=frame.retain)
            if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                frame.delivery._resolve(
                    error=MqttError(
                        f"publish to {frame.topic} failed: {paho.error_string(info.rc)}"
                    )
                )
                continue
            early = self._early_acks.pop(info.mid, None)
            if early is not None:
                self._settle(frame, early)
            else:
                with self._lock:
                    self._in_flight[info.mid] = frame

    def _maybe_switch_protocol(self) -> None:
        """In ``auto`` mode, try the other MQTT version after a silent refusal.

        Some 3.1.1-only brokers answer an MQTT 5 CONNECT with a CONNACK saying so (handled
        in :meth:`_handle_connect`); others close the connection. Over plain TCP nothing
        else ends a fresh connection before its CONNACK, so the next attempt uses the other
        version until one is accepted.
        Others again (amqtt, given an MQTT 5 CONNECT with a will) neither answer nor close;
        the CONNACK timeout ends that attempt. Over TLS a close before CONNACK is a refused
        certificate, not a protocol matter.
        """
        refused, self._protocol_refused = self._protocol_refused, False
        if self.settings.protocol != "auto" or self.connect_count > 0:
            return
        if not refused and self._tls_context is not None:
            return
        self._paho_protocol = 3 if self._paho_protocol == 5 else 5
        self._paho = None

    def _connection_lost(self) -> None:
        was_connected = self.connected.is_set()
        self.connected.clear()
        self.subscribed.clear()
        self._socket_open = False
        if was_connected:
            _LOGGER.warning("client %s: %s", self.client_id, self.last_error or "disconnected")

    def _drop_socket(self) -> None:
        client = self._paho
        sock = client.socket() if client is not None else None
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _disconnect(self) -> None:
        client = self._paho
        if client is None or not self._socket_open:
            return
        client.disconnect()
        # Let the DISCONNECT reach the socket before it closes.
        end = time.monotonic() + 1.0
        while client.socket() is not None and client.want_write() and time.monotonic() < end:
            if client.loop_write() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break

    def _finish(self) -> None:
        self.connected.clear()
        with self._lock:
            self._closed = True
            waiting = list(self._outgoing) + list(self._in_flight.values())
            self._outgoing.clear()
            self._in_flight.clear()
        for frame in waiting:
            frame.delivery._fail_rest(MqttClosedError(f"client {self.client_id} stopped"))
        self._close_wake_pair()

    # -- paho callbacks (network thread) -------------------------------------------------

    def _handle_connect(
        self, client: paho.Client, _userdata: Any, flags: Any, reason: Any, _props: Any
    ) -> None:
        if reason.is_failure:
            text = str(reason)
            if (
                self.settings.protocol == "auto"
                and self._paho_protocol == 5
                and self.connect_count == 0
                and _UNSUPPORTED_PROTOCOL.lower() in text.lower()
            ):
                # The broker speaks 3.1.1 only: the next attempt uses it.
                _LOGGER.info("client %s: broker speaks MQTT 3.1.1 only", self.client_id)
                self._protocol_refused = True
                self._delays = self._new_backoff()
                self.last_error = f"broker refused MQTT 5 ({text}); retrying with 3.1.1"
                return
            self._record_failure(f"broker refused the connection: {text}")
            return
        self.connect_count += 1
        self.protocol = "5" if self._paho_protocol == 5 else "3.1.1"
        self.last_error = None
        self._delays = self._new_backoff()
        self.subscription_refusals.clear()
        self._subscribe_mids.clear()
        self._subscribe_retries.clear()  # a new connection subscribes to the whole list
        self.subscribed.clear()
        with self._lock:
            # A fresh connection subscribes to the whole list: pending changes are in it.
            self._subscription_changes.clear()
            subscriptions = list(self._subscriptions)
        for topic_filter, qos in subscriptions:
            _rc, mid = client.subscribe(topic_filter, qos)
            if mid is not None:
                self._subscribe_mids[mid] = [topic_filter]
        if not self._subscribe_mids:
            self.subscribed.set()
        self.connected.set()
        _LOGGER.info(
            "client %s: connected to %s (MQTT %s)", self.client_id, self.broker_url, self.protocol
        )
        if self._on_connect_hook is not None:
            info = ConnectInfo(self.protocol, bool(flags.session_present), self.connect_count)
            try:
                self._on_connect_hook(info)
            except Exception:  # a hook bug must not take the connection down
                _LOGGER.exception("client %s: on_connect hook failed", self.client_id)

    def _handle_disconnect(
        self, _client: paho.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        if self.connected.is_set():
            self.last_error = f"disconnected from {self.broker_url}: {reason}"
        self.connected.clear()

    def _handle_publish(
        self, _client: paho.Client, _userdata: Any, mid: int, reason: Any, _props: Any
    ) -> None:
        with self._lock:
            frame = self._in_flight.pop(mid, None)
        if frame is None:
            # Acknowledged inside client.publish() (QoS 0 written at once): settled there.
            if len(self._early_acks) > 1000:  # ids nobody will claim (never expected)
                self._early_acks.clear()
            self._early_acks[mid] = reason
            return
        self._settle(frame, reason)

    def _settle(self, frame: _Frame, reason: Any) -> None:
        if getattr(reason, "is_failure", False):
            text = str(reason)
            _LOGGER.warning(
                "client %s: broker refused message on %s: %s", self.client_id, frame.topic, text
            )
            frame.delivery._resolve(refused=text)
        else:
            frame.delivery._resolve()

    def _handle_subscribe(
        self, _client: paho.Client, _userdata: Any, mid: int, reasons: Any, _props: Any
    ) -> None:
        filters = self._subscribe_mids.pop(mid, [])
        for topic_filter, reason in zip(filters, reasons, strict=False):
            if not getattr(reason, "is_failure", False):
                self.subscription_refusals.pop(topic_filter, None)
                self._subscribe_retries.pop(topic_filter, None)
                continue
            _due, previous = self._subscribe_retries.get(topic_filter, (0.0, 0.0))
            delay = min(_SUBSCRIBE_RETRY_MAX_S, max(_SUBSCRIBE_RETRY_MIN_S, 2 * previous))
            self._subscribe_retries[topic_filter] = (time.monotonic() + delay, delay)
            if topic_filter not in self.subscription_refusals:  # once, not every retry
                _LOGGER.warning(
                    "client %s: broker refused subscription to %s: %s (asking again)",
                    self.client_id,
                    topic_filter,
                    reason,
                )
            self.subscription_refusals[topic_filter] = str(reason)
        if not self._subscribe_mids:
            self.subscribed.set()

    def _handle_message(self, _client: paho.Client, _userdata: Any, msg: paho.MQTTMessage) -> None:
        if self._on_ackable is not None:
            self._hand_ackable(msg)
            return
        try:
            handler = self._on_retained if msg.retain else self._on_message
            handler(msg.topic, bytes(msg.payload))
        except Exception:  # a consumer bug must never kill the network thread
            _LOGGER.exception("client %s: message handler failed", self.client_id)

    def _hand_ackable(self, msg: paho.MQTTMessage) -> None:
        connection, mid, qos = self.connect_count, msg.mid, msg.qos
        done = threading.Event()

        def ack() -> None:
            if qos == 0 or done.is_set():
                return
            done.set()
            with self._lock:
                self._acks.append((connection, mid, qos))
            self._wake()

        try:
            assert self._on_ackable is not None  # noqa: S101 (checked by the caller)
            self._on_ackable(msg.topic, bytes(msg.payload), ack)
        except Exception:  # a consumer bug must never kill the network thread
            _LOGGER.exception("client %s: message handler failed", self.client_id)

    def _hand_over_acks(self, client: paho.Client) -> None:
        while True:
            with self._lock:
                if not self._acks:
                    return
                connection, mid, qos = self._acks.popleft()
            if connection == self.connect_count:
                client.ack(mid, qos)

    # -- helpers -----------------------------------------------------------------------

    def _record_failure(self, message: str) -> None:
        if message != self.last_error:
            _LOGGER.warning("client %s: %s", self.client_id, message)
        self.last_error = message

    def _wake(self) -> None:
        if self._wake_w is None:  # not started: the queue is read once it is
            return
        with contextlib.suppress(OSError):  # full (already woken) or closed: both fine
            self._wake_w.send(b"\x00")

    def _wait_for_wake(self, timeout_s: float) -> None:
        if self._wake_r is None:
            return
        with contextlib.suppress(OSError, ValueError):
            readable, _, _ = select.select([self._wake_r], [], [], max(0.0, timeout_s))
            if readable:
                self._drain_wake()

    def _drain_wake(self) -> None:
        if self._wake_r is None:
            return
        with contextlib.suppress(OSError):
            while self._wake_r.recv(4096):
                pass

    def _close_wake_pair(self) -> None:
        for end in (self._wake_r, self._wake_w):
            if end is not None:
                end.close()

    def _new_backoff(self) -> Iterator[float]:
        return exponential_backoff(
            self.settings.reconnect_min_s, self.settings.reconnect_max_s, self._rng
        )


def _nats_refusal(topic: str, qos: int) -> MqttPayloadError | None:
    """Why nats-server 2.9 would drop the connection on this publish, or ``None``."""
    if qos > 1:
        return MqttPayloadError(f"QoS {qos} on {topic}: a NATS broker supports QoS 0 and 1")
    try:
        validate_nats_topic(topic)
    except TopicError as exc:
        return MqttPayloadError(str(exc))
    return None


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, ssl.SSLError) and getattr(exc, "reason", None):
        return f"TLS error: {exc.reason}"
    return text


def _read_password(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        msg = f"cannot read the broker password file {path}: {exc.strerror or exc}"
        raise MqttConfigError(msg) from exc


def _tls_context(tls: TlsSettings | None) -> ssl.SSLContext:
    """Build the client's TLS context; unreadable or mismatched files are config errors."""
    ca_file = tls.ca_file if tls is not None else None
    try:
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        msg = f"cannot load the CA certificate {ca_file}: {_describe(exc)}"
        raise MqttConfigError(msg) from exc
    if tls is not None and tls.cert_file is not None:
        try:
            context.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
        except (OSError, ssl.SSLError) as exc:
            msg = (
                f"cannot load the client certificate {tls.cert_file} "
                f"with key {tls.key_file}: {_describe(exc)}"
            )
            raise MqttConfigError(msg) from exc
    return context
