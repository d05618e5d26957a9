"""The transport seam: what a service needs from its broker connection, and two of them.

A service (the agent, the coordinator, the monitor) describes the connection it wants as an
:class:`Endpoint` (client id, subscriptions, last will, callbacks) and asks a
:data:`TransportFactory` for a :class:`Transport`. In production the factory is
:func:`mqtt_transport` (a :class:`~daemon.mqtt.MqttClient` per endpoint); unit tests pass
an :class:`InMemoryBroker`'s :meth:`~InMemoryBroker.connect`, which routes messages between
endpoints in one process, keeps retained messages, fires last wills and can refuse
publishes as an ACL would. Real-broker integration tests stay: this seam makes the services'
own logic testable without sockets, not the MQTT client.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from byzedge.daemon.mqtt import (
    ConnectInfo,
    Delivery,
    MessageHandler,
    MqttClient,
    MqttClosedError,
    MqttSettings,
    Will,
)

__all__ = [
    "Endpoint",
    "InMemoryBroker",
    "InMemoryTransport",
    "Transport",
    "TransportFactory",
    "mqtt_transport",
    "topic_matches",
]


class Transport(Protocol):
    """A broker connection as a service uses it (:class:`~daemon.mqtt.MqttClient` is one)."""

    connected: threading.Event

    def start(self, wait_s: float | None = 10.0) -> None:
        """Connect (in the background); optionally wait for the first connection."""

    def stop(self, flush_s: float = 5.0) -> None:
        """Send what is queued, disconnect cleanly (no last will)."""

    def kill(self) -> None:
        """Drop the connection as a crash would (the last will fires)."""

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> Delivery:
        """Queue a message; the :class:`~daemon.mqtt.Delivery` tells how it went."""

    def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        """Add a subscription; the broker sends the filter's retained messages (again)."""

    def unsubscribe(self, topic_filter: str) -> None:
        """Drop a subscription."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """The connection a service asks for (see :class:`~daemon.mqtt.MqttClient`)."""

    client_id: str
    on_message: MessageHandler
    on_retained: MessageHandler | None = None
    subscriptions: Sequence[tuple[str, int]] = ()
    will: Will | None = None
    on_connect: Callable[[ConnectInfo], None] | None = None
    persistent_session: bool = False
    seed: int | None = None


TransportFactory = Callable[[Endpoint], Transport]
"""Builds the transport for an endpoint."""


def mqtt_transport(settings: MqttSettings) -> TransportFactory:
    """The production factory: one :class:`~daemon.mqtt.MqttClient` per endpoint."""

    def build(endpoint: Endpoint) -> Transport:
        return MqttClient(
            settings,
            endpoint.client_id,
            on_message=endpoint.on_message,
            on_retained=endpoint.on_retained,
            subscriptions=endpoint.subscriptions,
            will=endpoint.will,
            on_connect=endpoint.on_connect,
            persistent_session=endpoint.persistent_session,
            seed=endpoint.seed,
        )

    return build


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether ``topic`` matches the MQTT ``topic_filter`` (``+`` one level, ``#`` the rest)."""
    wanted, levels = topic_filter.split("/"), topic.split("/")
    for index, part in enumerate(wanted):
        if part == "#":
            return True
        if index >= len(levels) or (part not in ("+", levels[index])):
            return False
    return len(wanted) == len(levels)


Authorizer = Callable[[str, str], bool]
"""``authorize(client_id, topic) -> bool``: may this client publish there (an ACL)."""


@dataclass(eq=False)
class InMemoryTransport:
    """One endpoint's connection to an :class:`InMemoryBroker` (a :class:`Transport`)."""

    broker: InMemoryBroker
    endpoint: Endpoint
    connected: threading.Event = field(default_factory=threading.Event)
    connect_count: int = 0
    subscriptions: list[tuple[str, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.subscriptions = list(self.endpoint.subscriptions)

    def start(self, wait_s: float | None = 10.0) -> None:
        """Connect at once: subscriptions, then retained messages, then ``on_connect``."""
        del wait_s  # nothing to wait for
        self.broker._attach(self)

    def stop(self, flush_s: float = 5.0) -> None:
        """Disconnect cleanly: the will does not fire."""
        del flush_s
        self.broker._detach(self, fire_will=False)

    def kill(self) -> None:
        """Disconnect as a crash would: the will fires."""
        self.broker._detach(self, fire_will=True)

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> Delivery:
        """Deliver to every matching subscriber before returning (they only enqueue)."""
        del qos  # every message arrives exactly once here
        if not self.connected.is_set():
            error = MqttClosedError(f"{self.endpoint.client_id} is not connected")
            return Delivery.failed(topic, error)
        if not self.broker.authorize(self.endpoint.client_id, topic):
            return Delivery.settled(topic, refused="Not authorized")
        self.broker._route(topic, payload, retain=retain)
        return Delivery.settled(topic)

    def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        """Add a subscription and hand over its retained messages, as a broker does."""
        self.subscriptions = [s for s in self.subscriptions if s[0] != topic_filter]
        self.subscriptions.append((topic_filter, qos))
        if self.connected.is_set():
            self.broker._send_retained(self, topic_filter)

    def unsubscribe(self, topic_filter: str) -> None:
        """Drop a subscription."""
        self.subscriptions = [s for s in self.subscriptions if s[0] != topic_filter]


class InMemoryBroker:
    """Routes messages between :class:`InMemoryTransport` endpoints in one process.

    Messages are delivered synchronously, on the publisher's thread, to the handlers of
    every connected endpoint with a matching subscription (services' handlers only enqueue).
    Retained messages are kept per topic (an empty retained payload clears one) and handed
    to a new subscriber through its ``on_retained`` handler. A killed endpoint's will is
    published. ``authorize`` refuses publishes as an ACL would (``Not authorized``).

    Parameters
    ----------
    authorize:
        ``authorize(client_id, topic) -> bool``; everything is allowed by default.
    """

    def __init__(self, authorize: Authorizer | None = None) -> None:
        self.authorize: Authorizer = authorize or (lambda _client, _topic: True)
        self._lock = threading.RLock()
        self._endpoints: list[InMemoryTransport] = []
        self.retained: dict[str, bytes] = {}
        self.published: list[tuple[str, bytes]] = []

    def connect(self, endpoint: Endpoint) -> InMemoryTransport:
        """A :data:`TransportFactory`: the (not yet started) transport of ``endpoint``."""
        return InMemoryTransport(self, endpoint)

    def _attach(self, transport: InMemoryTransport) -> None:
        with self._lock:
            if transport not in self._endpoints:
                self._endpoints.append(transport)
            transport.connect_count += 1
            transport.connected.set()
            endpoint = transport.endpoint
            retained = [
                (topic, payload)
                for topic, payload in self.retained.items()
                if any(topic_matches(f, topic) for f, _qos in transport.subscriptions)
            ]
        handler = endpoint.on_retained or endpoint.on_message
        for topic, payload in retained:
            handler(topic, payload)
        if endpoint.on_connect is not None:
            endpoint.on_connect(ConnectInfo("5", False, transport.connect_count))

    def _send_retained(self, transport: InMemoryTransport, topic_filter: str) -> None:
        with self._lock:
            retained = [(t, p) for t, p in self.retained.items() if topic_matches(topic_filter, t)]
        handler = transport.endpoint.on_retained or transport.endpoint.on_message
        for topic, payload in retained:
            handler(topic, payload)

    def _detach(self, transport: InMemoryTransport, *, fire_will: bool) -> None:
        with self._lock:
            if transport not in self._endpoints:
                return
            self._endpoints.remove(transport)
            transport.connected.clear()
        will = transport.endpoint.will
        if fire_will and will is not None:
            self._route(will.topic, will.payload, retain=will.retain)

    def _route(self, topic: str, payload: bytes, *, retain: bool) -> None:
        with self._lock:
            self.published.append((topic, payload))
            if retain:
                if payload:
                    self.retained[topic] = payload
                else:
                    self.retained.pop(topic, None)
            targets = [
                t
                for t in self._endpoints
                if any(topic_matches(f, topic) for f, _qos in t.subscriptions)
            ]
        for target in targets:
            target.endpoint.on_message(topic, payload)
