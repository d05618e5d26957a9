"""MqttClient's outgoing queue, without a broker: bounds, chunk counts, refusals of use."""

from __future__ import annotations

import pytest

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
