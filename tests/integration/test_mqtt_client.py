"""daemon.mqtt.MqttClient against a real mosquitto: reconnects, chunking, last will."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from byzedge.daemon.mqtt import MqttClient, MqttSettings, Will
from byzedge.fleet_sim.brokers import BrokerHandle, start_mosquitto

pytestmark = pytest.mark.broker


class _Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.arrived = threading.Event()

    def __call__(self, topic: str, payload: bytes) -> None:
        self.messages.append((topic, payload))
        self.arrived.set()

    def wait_for(self, count: int, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(self.messages) >= count, f"got {len(self.messages)} of {count} messages"


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[BrokerHandle]:
    with start_mosquitto(workdir=tmp_path) as broker:
        yield broker


def _client(url: str, name: str, inbox: _Inbox | None = None, **kwargs: object) -> MqttClient:
    settings = MqttSettings(url=url, reconnect_min_s=0.1, reconnect_max_s=0.5, **kwargs)  # type: ignore[arg-type]
    return MqttClient(
        settings,
        name,
        on_message=inbox or _Inbox(),
        subscriptions=[("t/#", 1)] if inbox is not None else [],
        seed=1,
    )


def test_payload_over_the_limit_arrives_in_chunks_within_the_limit(
    mosquitto_broker: BrokerHandle,
) -> None:
    inbox = _Inbox()
    receiver = _client(mosquitto_broker.url, "chunk-rx", inbox)
    sender = _client(mosquitto_broker.url, "chunk-tx", max_message_bytes=4096)
    receiver.start()
    sender.start()
    try:
        count = sender.publish("t/big", b"x" * 20_000).messages
        inbox.wait_for(count)
    finally:
        sender.stop()
        receiver.stop()

    assert count == 6
    assert all(len(payload) <= 4096 for _, payload in inbox.messages)


def test_retained_payload_over_the_limit_is_refused(mosquitto_broker: BrokerHandle) -> None:
    sender = _client(mosquitto_broker.url, "retain-tx", max_message_bytes=2048)

    with pytest.raises(ValueError, match="retained payload"):
        sender.publish("t/r", b"x" * 4096, retain=True)


def test_client_reconnects_and_resubscribes_after_a_broker_restart(
    private_broker: BrokerHandle,
) -> None:
    inbox = _Inbox()
    receiver = _client(private_broker.url, "restart-rx", inbox)
    sender = _client(private_broker.url, "restart-tx")
    receiver.start()
    sender.start()
    try:
        private_broker.restart()
        assert receiver.connected.wait(15)
        assert sender.connected.wait(15)
        # Wait for the new session's SUBSCRIBE to land before publishing.
        deadline = time.monotonic() + 10
        while not inbox.messages and time.monotonic() < deadline:
            sender.publish("t/after", b"hello")
            time.sleep(0.2)
    finally:
        sender.stop()
        receiver.stop()

    assert receiver.connect_count >= 2
    assert ("t/after", b"hello") in inbox.messages


def test_last_will_is_published_when_a_client_dies(mosquitto_broker: BrokerHandle) -> None:
    inbox = _Inbox()
    watcher = _client(mosquitto_broker.url, "will-watch", inbox)
    settings = MqttSettings(url=mosquitto_broker.url)
    doomed = MqttClient(
        settings,
        "will-doomed",
        on_message=_Inbox(),
        will=Will("t/status/doomed", b"offline", retain=False),
    )
    watcher.start()
    doomed.start()
    try:
        doomed.kill()
        inbox.wait_for(1)
    finally:
        watcher.stop()

    assert ("t/status/doomed", b"offline") in inbox.messages


def test_stop_flushes_queued_qos1_messages(mosquitto_broker: BrokerHandle) -> None:
    inbox = _Inbox()
    receiver = _client(mosquitto_broker.url, "flush-rx", inbox)
    sender = _client(mosquitto_broker.url, "flush-tx")
    receiver.start()
    sender.start()
    for index in range(50):
        sender.publish("t/flush", str(index).encode())
    sender.stop()
    try:
        inbox.wait_for(50)
    finally:
        receiver.stop()

    assert sender.pending_acks() == 0


def test_a_subscription_added_while_running_gets_the_retained_message_and_survives_a_restart(
    private_broker: BrokerHandle,
) -> None:
    inbox = _Inbox()
    publisher = _client(private_broker.url, "late-tx")
    receiver = MqttClient(
        MqttSettings(url=private_broker.url, reconnect_min_s=0.1, reconnect_max_s=0.5),
        "late-rx",
        on_message=inbox,
        seed=1,
    )
    publisher.start()
    receiver.start()
    try:
        assert publisher.publish("on-demand/pair", b"retained", retain=True).wait(10.0)
        receiver.subscribe("on-demand/pair")
        inbox.wait_for(1)
        assert inbox.messages == [("on-demand/pair", b"retained")]

        # Subscribing again asks for the retained message again (the resync fetch).
        receiver.subscribe("on-demand/pair")
        inbox.wait_for(2)

        private_broker.restart()  # it keeps nothing: the subscription must be made again
        assert receiver.connected.wait(20.0)
        assert publisher.connected.wait(20.0)
        deadline = time.monotonic() + 15.0
        while len(inbox.messages) < 3 and time.monotonic() < deadline:
            publisher.publish("on-demand/pair", b"retained", retain=True)
            time.sleep(0.2)
        inbox.wait_for(3)

        receiver.unsubscribe("on-demand/pair")
        time.sleep(0.5)  # let the UNSUBSCRIBE reach the broker before the next publish
        assert publisher.publish("on-demand/pair", b"later", retain=True).wait(10.0)
        time.sleep(0.5)
    finally:
        publisher.stop()
        receiver.stop()

    # Three or more (publishes repeated while the new SUBSCRIBE landed), none after the
    # unsubscribe.
    assert len(inbox.messages) >= 3
    assert {payload for _, payload in inbox.messages} == {b"retained"}
