"""MqttClient's outgoing queue, without a broker: bounds, chunk counts, refusals of use."""

from __future__ import annotations

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from byzedge.daemon.mqtt import (
    MqttClient,
    MqttClosedError,
    MqttPayloadError,
    MqttQueueFullError,
    MqttSettings,
)
from byzedge.fleet_sim.brokers import free_port


def client(**changes: object) -> MqttClient:
    # A port nothing listens on: the client never connects, so everything stays queued.
    settings = MqttSettings(url=f"mqtt://127.0.0.1:{free_port()}", **changes)  # type: ignore[arg-type]
    return MqttClient(settings, "queue-test", on_message=lambda _t, _p: None)


def test_a_payload_over_the_limit_is_queued_as_chunks() -> None:
    sender = client(max_message_bytes=4096)

    delivery = sender.publish("t/big", b"x" * 20_000)

    assert delivery.messages == 6
    assert sender.pending_acks() == 6
    assert not delivery.done


def test_publishing_beyond_the_queue_bound_fails_that_delivery_only() -> None:
    sender = client(max_queued_messages=3)
    kept = [sender.publish("t/x", b"1") for _ in range(3)]

    refused = sender.publish("t/x", b"4")

    assert refused.done
    assert isinstance(refused.error, MqttQueueFullError)
    assert not any(delivery.done for delivery in kept)


def test_a_retained_payload_over_the_limit_raises() -> None:
    sender = client(max_message_bytes=2048)

    with pytest.raises(MqttPayloadError, match="retained payload"):
        sender.publish("t/r", b"x" * 4096, retain=True)


def test_what_is_still_queued_when_the_client_stops_fails_as_closed() -> None:
    sender = client()
    sender.start(wait_s=None)
    queued = sender.publish("t/x", b"never sent")

    sender.stop(flush_s=0.2)
    after = sender.publish("t/x", b"too late")

    assert queued.done
    assert isinstance(queued.error, MqttClosedError)
    assert isinstance(after.error, MqttClosedError)


def test_a_client_that_cannot_connect_says_why() -> None:
    sender = client(reconnect_min_s=0.05, reconnect_max_s=0.1)

    with pytest.raises(TimeoutError, match="Connection refused"):
        sender.start(wait_s=1.0)
    sender.stop(flush_s=0)


class _Subscriber:
    """Records the SUBSCRIBEs the network thread hands to paho (no socket, no broker)."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def subscribe(self, topic_filter: str, qos: int) -> tuple[int, int]:
        self.asked.append(topic_filter)
        return 0, len(self.asked)


def test_a_refused_subscription_is_asked_again_with_a_growing_delay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A NATS node answers SUBSCRIBE "Unspecified error" while its session stream elects a
    # leader (an ingest worker then never heard of its next round); mosquitto's ACL does
    # not refuse subscriptions, so the client's retry is exercised here on its own.
    now = [100.0]
    monkeypatch.setattr("byzedge.daemon.mqtt.time.monotonic", lambda: now[0])
    receiver = MqttClient(
        MqttSettings(url=f"mqtt://127.0.0.1:{free_port()}"),
        "retry-test",
        on_message=lambda _t, _p: None,
        subscriptions=[("byzedge/f/cluster/context", 1)],
    )
    paho_client = _Subscriber()
    refused = ReasonCode(PacketTypes.SUBACK, identifier=0x80)
    granted = ReasonCode(PacketTypes.SUBACK, identifier=1)

    receiver._subscribe_mids[1] = ["byzedge/f/cluster/context"]
    receiver._handle_subscribe(None, None, 1, [refused], None)  # type: ignore[arg-type]
    receiver._retry_refused_subscriptions(paho_client)  # type: ignore[arg-type]
    assert paho_client.asked == []  # not before the delay
    now[0] += 1.0
    receiver._retry_refused_subscriptions(paho_client)  # type: ignore[arg-type]
    assert paho_client.asked == ["byzedge/f/cluster/context"]
    receiver._retry_refused_subscriptions(paho_client)  # type: ignore[arg-type]
    assert len(paho_client.asked) == 1  # one request in flight at a time

    receiver._handle_subscribe(None, None, 1, [refused], None)  # type: ignore[arg-type]
    now[0] += 1.5
    receiver._retry_refused_subscriptions(paho_client)  # type: ignore[arg-type]
    assert len(paho_client.asked) == 1  # the second delay is 2 s
    now[0] += 0.5
    receiver._retry_refused_subscriptions(paho_client)  # type: ignore[arg-type]
    assert len(paho_client.asked) == 2
    assert "byzedge/f/cluster/context" in receiver.subscription_refusals

    receiver._handle_subscribe(None, None, 2, [granted], None)  # type: ignore[arg-type]
    now[0] += 120.0
    receiver._retry_refused_subscriptions(paho_client)  # type: ignore[arg-type]
    assert len(paho_client.asked) == 2  # granted: nothing more
    assert receiver.subscription_refusals == {}


def test_a_dropped_subscription_is_not_asked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    monkeypatch.setattr("byzedge.daemon.mqtt.time.monotonic", lambda: now[0])
    receiver = MqttClient(
        MqttSettings(url=f"mqtt://127.0.0.1:{free_port()}"),
        "retry-drop",
        on_message=lambda _t, _p: None,
        subscriptions=[("byzedge/f/model/resync", 1)],
    )
    paho_client = _Subscriber()
    receiver._subscribe_mids[1] = ["byzedge/f/model/resync"]
    receiver._handle_subscribe(
        None,  # type: ignore[arg-type]
        None,
        1,
        [ReasonCode(PacketTypes.SUBACK, identifier=0x87)],
        None,
    )
    receiver.unsubscribe("byzedge/f/model/resync")
    now[0] += 5.0
    receiver._retry_refused_subscriptions(paho_client)  # type: ignore[arg-type]
    assert paho_client.asked == []
