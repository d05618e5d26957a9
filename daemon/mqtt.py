"""One MQTT client for both daemons: paho-mqtt 2.x behind a small, thread-safe wrapper.

What it adds to paho, and why (see reference/mqtt-and-edge.md section 3.2):

* our own network loop with capped exponential backoff and full jitter, so a fleet that
  lost its broker does not reconnect in lock-step (paho's own backoff has no jitter);
* subscriptions renewed on every CONNACK, since a clean session forgets them;
* ``TCP_NODELAY`` on the socket (paho never sets it: about 40 ms per hop otherwise);
* the message size limit enforced here, by chunking (paho ignores the broker's maximum
  packet size and would resend an oversize message forever);
* received messages handed to the caller's callback without any work in paho's thread
  beyond a copy, so a slow consumer never starves the keep-alive.

Only MQTT 3.1.1 features are used, so the embedded amqtt broker works as well as Mosquitto.
"""

from __future__ import annotations

import logging
import random
import socket
import ssl
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from pydantic import BaseModel, ConfigDict, Field, field_validator

from daemon.backoff import exponential_backoff
from protocol.chunking import DEFAULT_MAX_MESSAGE_BYTES, split_payload

__all__ = ["MqttClient", "MqttSettings", "TlsSettings", "Will", "parse_broker_url"]

_LOGGER = logging.getLogger(__name__)

MessageHandler = Callable[[str, bytes], None]


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

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parse_broker_url(value)
        return value


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


class MqttClient:
    """A reconnecting, chunking MQTT 3.1.1 client.

    Parameters
    ----------
    settings:
        Broker address, credentials and limits.
    client_id:
        The MQTT client id (the device id for agents).
    on_message:
        Called as ``on_message(topic, payload)`` from the network thread for every
        message on a subscribed topic; it must only enqueue.
    subscriptions:
        ``(topic filter, qos)`` pairs, renewed after every reconnect.
    will:
        Optional last will, set before the first connect.
    on_connect:
        Optional hook called after each successful (re)connect, e.g. to republish status.
    seed:
        Seeds the reconnect jitter (tests); ``None`` uses the system's entropy.
    """

    def __init__(
        self,
        settings: MqttSettings,
        client_id: str,
        *,
        on_message: MessageHandler,
        subscriptions: Sequence[tuple[str, int]] = (),
        will: Will | None = None,
        on_connect: Callable[[], None] | None = None,
        seed: int | None = None,
    ) -> None:
        self.settings = settings
        self.client_id = client_id
        self._host, self._port, use_tls = parse_broker_url(settings.url)
        self._on_message = on_message
        self._subscriptions = list(subscriptions)
        self._on_connect_hook = on_connect
        self._rng = random.Random(seed)
        self._stop = threading.Event()
        self.connected = threading.Event()
        self._thread: threading.Thread | None = None
        self._delays: Iterator[float] = self._new_backoff()
        self.connect_count = 0
        # QoS 1 message ids not yet acknowledged by the broker, so stop() can flush them.
        self._unacked: set[int] = set()
        self._acked_early: set[int] = set()
        self._ack_lock = threading.Lock()

        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv311,
            clean_session=True,
        )
        client.max_queued_messages_set(settings.max_queued_messages)
        if settings.username is not None:
            password = (
                settings.password_file.read_text().strip() if settings.password_file else None
            )
            client.username_pw_set(settings.username, password)
        if use_tls or settings.tls is not None:
            client.tls_set_context(_tls_context(settings.tls))
        if will is not None:
            client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_message = self._handle_message
        client.on_publish = self._handle_publish
        self._client = client

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, wait_s: float | None = 10.0) -> None:
        """Start the network thread; optionally wait for the first CONNACK.

        Raises
        ------
        TimeoutError
            If ``wait_s`` is given and no connection came up in time. The thread keeps
            retrying in the background either way.
        """
        self._thread = threading.Thread(
            target=self._run, name=f"mqtt-{self.client_id}", daemon=True
        )
        self._thread.start()
        if wait_s is not None and not self.connected.wait(wait_s):
            msg = f"no connection to {self.settings.url} within {wait_s} s"
            raise TimeoutError(msg)

    def stop(self, flush_s: float = 5.0) -> None:
        """Flush queued QoS 1 messages (up to ``flush_s``), disconnect, join the thread."""
        self._flush(flush_s)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=flush_s + 5.0)
        self.connected.clear()

    def kill(self) -> None:
        """Drop the connection without a DISCONNECT, as a crash would (the will fires)."""
        self._stop.set()
        sock = self._client.socket()
        if sock is not None:
            sock.close()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self.connected.clear()

    # -- publishing --------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> int:
        """Publish ``payload``, chunked if larger than ``max_message_bytes``.

        Returns
        -------
        int
            The number of MQTT messages used (1 unless chunked). Retained payloads are
            never chunked: a late subscriber would see only the last chunk.

        Raises
        ------
        ValueError
            For a retained payload over the size limit.
        """
        limit = self.settings.max_message_bytes
        if retain and len(payload) > limit:
            msg = f"retained payload of {len(payload)} bytes exceeds {limit}"
            raise ValueError(msg)
        frames = split_payload(payload, limit)
        for frame in frames:
            # Never hold our lock while inside paho: its callbacks take paho's locks first
            # and then ours, so the reverse order here would deadlock.
            info = self._client.publish(topic, frame, qos=qos, retain=retain)
            if qos > 0:
                with self._ack_lock:
                    if info.mid in self._acked_early:
                        self._acked_early.discard(info.mid)
                    else:
                        self._unacked.add(info.mid)
            if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                _LOGGER.warning(
                    "client %s: publish to %s failed: %s", self.client_id, topic, info.rc
                )
        return len(frames)

    # -- paho callbacks (network thread) -------------------------------------------------

    def _handle_connect(
        self, client: paho.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        if reason.is_failure:
            _LOGGER.warning("client %s: broker refused connection: %s", self.client_id, reason)
            return
        sock = client.socket()
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for topic_filter, qos in self._subscriptions:
            client.subscribe(topic_filter, qos)
        self._delays = self._new_backoff()
        self.connect_count += 1
        self.connected.set()
        _LOGGER.info("client %s: connected to %s", self.client_id, self.settings.url)
        if self._on_connect_hook is not None:
            self._on_connect_hook()

    def _handle_disconnect(
        self, _client: paho.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        self.connected.clear()
        if not self._stop.is_set():
            _LOGGER.warning("client %s: disconnected: %s", self.client_id, reason)

    def _handle_publish(
        self, _client: paho.Client, _userdata: Any, mid: int, _reason: Any, _props: Any
    ) -> None:
        with self._ack_lock:
            if mid in self._unacked:
                self._unacked.discard(mid)
            else:
                # The broker answered before publish() returned and recorded the id.
                self._acked_early.add(mid)

    def _handle_message(self, _client: paho.Client, _userdata: Any, msg: paho.MQTTMessage) -> None:
        try:
            self._on_message(msg.topic, bytes(msg.payload))
        except Exception:  # a consumer bug must never kill the network thread
            _LOGGER.exception("client %s: message handler failed", self.client_id)

    # -- network loop ------------------------------------------------------------------

    def _run(self) -> None:
        socket_open = False
        while not self._stop.is_set():
            if not socket_open:
                try:
                    self._client.connect(self._host, self._port, self.settings.keepalive_s)
                    socket_open = True
                except (OSError, ssl.SSLError) as exc:
                    delay = next(self._delays)
                    _LOGGER.warning(
                        "client %s: cannot reach %s (%s); retrying in %.1f s",
                        self.client_id,
                        self.settings.url,
                        exc,
                        delay,
                    )
                    self._stop.wait(delay)
                    continue
            rc = self._client.loop(timeout=0.1)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS and not self._stop.is_set():
                socket_open = False
                self.connected.clear()
                self._stop.wait(next(self._delays))
        if socket_open:
            self._client.disconnect()
            # Let paho write the DISCONNECT before the socket goes.
            for _ in range(5):
                self._client.loop(timeout=0.05)

    def pending_acks(self) -> int:
        """Number of QoS 1 messages the broker has not acknowledged yet."""
        with self._ack_lock:
            return len(self._unacked)

    def _flush(self, timeout_s: float) -> None:
        deadline = threading.Event()
        timer = threading.Timer(timeout_s, deadline.set)
        timer.start()
        try:
            while self.connected.is_set() and not deadline.is_set():
                with self._ack_lock:
                    if not self._unacked:
                        return
                deadline.wait(0.02)
        finally:
            timer.cancel()

    def _new_backoff(self) -> Iterator[float]:
        return exponential_backoff(
            self.settings.reconnect_min_s, self.settings.reconnect_max_s, self._rng
        )


def _tls_context(tls: TlsSettings | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(tls.ca_file) if tls is not None else None)
    if tls is not None and tls.cert_file is not None:
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
    return context
