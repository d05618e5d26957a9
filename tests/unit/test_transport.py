"""The in-memory transport: MQTT's routing, retained messages and wills, in one process."""

from __future__ import annotations

import pytest

from byzedge.daemon.mqtt import Will
from byzedge.daemon.transport import Endpoint, InMemoryBroker, topic_matches


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("a/b", "a/b", True),
        ("a/+", "a/b", True),
        ("a/+", "a/b/c", False),
        ("a/#", "a/b/c", True),
        ("a/#", "a", True),
        ("#", "anything/at/all", True),
        ("a/+/c", "a/b/c", True),
        ("a/+/c", "a/b/d", False),
        ("a/b", "a/b/c", False),
        ("a/b/c", "a/b", False),
    ],
)
def test_topic_filters_match_as_mqtt_says(topic_filter: str, topic: str, expected: bool) -> None:
    assert topic_matches(topic_filter, topic) is expected


class Inbox:
    def __init__(self) -> None:
        self.live: list[tuple[str, bytes]] = []
        self.retained: list[tuple[str, bytes]] = []

    def endpoint(self, name: str, *filters: str, will: Will | None = None) -> Endpoint:
        return Endpoint(
            name,
            on_message=lambda t, p: self.live.append((t, p)),
            on_retained=lambda t, p: self.retained.append((t, p)),
            subscriptions=[(f, 1) for f in filters],
            will=will,
        )


def test_a_message_reaches_matching_subscribers_only() -> None:
    broker, inbox, other = InMemoryBroker(), Inbox(), Inbox()
    broker.connect(inbox.endpoint("a", "x/+")).start()
    broker.connect(other.endpoint("b", "y/#")).start()
    sender = broker.connect(Endpoint("s", on_message=lambda _t, _p: None))
    sender.start()

    delivery = sender.publish("x/1", b"hello")

    assert delivery.ok
    assert inbox.live == [("x/1", b"hello")]
    assert other.live == []


def test_a_late_subscriber_gets_retained_messages_as_retained() -> None:
    broker, inbox = InMemoryBroker(), Inbox()
    sender = broker.connect(Endpoint("s", on_message=lambda _t, _p: None))
    sender.start()
    sender.publish("x/1", b"kept", retain=True)
    sender.publish("x/2", b"not kept")

    broker.connect(inbox.endpoint("late", "x/+")).start()

    assert inbox.retained == [("x/1", b"kept")]
    assert inbox.live == []


def test_a_killed_client_fires_its_will_a_stopped_one_does_not() -> None:
    broker, watcher = InMemoryBroker(), Inbox()
    broker.connect(watcher.endpoint("w", "status/+")).start()
    killed = broker.connect(watcher.endpoint("k", will=Will("status/k", b"offline")))
    stopped = broker.connect(watcher.endpoint("s", will=Will("status/s", b"offline")))
    killed.start()
    stopped.start()

    killed.kill()
    stopped.stop()

    assert watcher.live == [("status/k", b"offline")]
    assert broker.retained == {"status/k": b"offline"}


def test_the_authorizer_refuses_like_an_acl() -> None:
    broker = InMemoryBroker(authorize=lambda client, topic: topic.endswith(client))
    sender = broker.connect(Endpoint("dev-1", on_message=lambda _t, _p: None))
    sender.start()

    own = sender.publish("update/dev-1", b"x")
    other = sender.publish("update/dev-2", b"x")

    assert own.ok
    assert other.refused == "Not authorized"
    assert broker.published == [("update/dev-1", b"x")]


def test_publishing_while_disconnected_fails() -> None:
    sender = InMemoryBroker().connect(Endpoint("s", on_message=lambda _t, _p: None))

    delivery = sender.publish("x", b"y")

    assert delivery.done
    assert delivery.error is not None
