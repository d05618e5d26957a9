"""daemon.mqtt.MqttClient against the mutual-TLS, ACL-enforcing broker ``byzedge init`` writes.

The race it must not have: paho writes to the socket from the thread that calls
``publish()`` unless paho's own loop thread runs, while the network thread writes PUBACKs
for inbound QoS 1 messages; two threads in ``SSL_write`` on one connection break it
(reference/mqtt-client.md section 1: a drop every few seconds). Here a client publishes
20 KB QoS 1 messages from a worker thread every 10 ms while it receives them back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from provisioned import FLEET, Fleet, provisioned_fleet

from byzedge.daemon.mqtt import MqttClient, MqttConfigError, MqttSettings, TlsSettings, Will
from byzedge.daemon.mqtt_probe import probe_broker
from byzedge.fleet_sim.brokers import BrokerHandle, free_port
from byzedge.protocol import topics

pytestmark = pytest.mark.broker


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    with provisioned_fleet(devices=2) as made:
        yield made


def settings(fleet: Fleet, account: str, port: int | None = None) -> MqttSettings:
    tls = fleet.folder(account) / "tls"
    return MqttSettings(
        url=f"mqtts://127.0.0.1:{port or fleet.port}",
        tls=TlsSettings(
            ca_file=tls / "ca.crt", cert_file=tls / "client.crt", key_file=tls / "client.key"
        ),
        reconnect_min_s=0.2,
        reconnect_max_s=1.0,
    )


def test_publishing_from_another_thread_over_mutual_tls_never_drops_the_connection(
    fleet: Fleet,
) -> None:
    model = topics.model_topic(FLEET)
    received: list[int] = []
    # The coordinator account may read and write the model topic: it gets its own traffic
    # back, so its network thread writes a PUBACK for every message while it publishes.
    publisher = MqttClient(
        settings(fleet, "coordinator"),
        "tls-race-publisher",
        on_message=lambda _t, payload: received.append(len(payload)),
        subscriptions=[(model, 1)],
    )
    publisher.start()
    assert publisher.subscribed.wait(10)
    deliveries = []

    def publish_for(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            deliveries.append(publisher.publish(model, b"z" * 20_000))
            time.sleep(0.01)

    worker = threading.Thread(target=publish_for, args=(8.0,))
    worker.start()
    worker.join()
    settled = all(delivery.wait(10) for delivery in deliveries)
    time.sleep(0.5)
    publisher.stop()

    assert settled
    assert all(delivery.ok for delivery in deliveries)
    assert publisher.connect_count == 1, publisher.last_error
    assert publisher.protocol == "5"
    assert len(received) == len(deliveries) > 400


def test_a_publish_the_acl_denies_comes_back_refused(fleet: Fleet) -> None:
    device = MqttClient(settings(fleet, "dev-000"), "dev-000", on_message=lambda _t, _p: None)
    device.start()
    try:
        own = device.publish(topics.update_topic(FLEET, "dev-000"), b"mine")
        other = device.publish(topics.update_topic(FLEET, "dev-001"), b"forged")
        assert own.wait(10)
        assert other.wait(10)
    finally:
        device.stop()

    assert own.ok
    assert not other.ok
    assert other.refused == "Not authorized"


def test_a_certificate_that_is_missing_is_a_config_error(fleet: Fleet) -> None:
    broken = settings(fleet, "dev-000").model_copy(
        update={
            "tls": TlsSettings(
                ca_file=fleet.folder("dev-000") / "tls" / "ca.crt",
                cert_file=fleet.folder("dev-000") / "tls" / "missing.crt",
                key_file=fleet.folder("dev-000") / "tls" / "client.key",
            )
        }
    )

    with pytest.raises(MqttConfigError, match=r"missing\.crt"):
        MqttClient(broken, "dev-000", on_message=lambda _t, _p: None)


def test_the_probe_finds_nothing_wrong_with_a_devices_own_topics(fleet: Fleet) -> None:
    problems = probe_broker(
        settings(fleet, "dev-000"),
        "dev-000-check",
        publish_topics=[topics.update_topic(FLEET, "dev-000")],
        subscribe_topics=[topics.model_topic(FLEET)],
    )

    assert problems == []


def test_the_probe_reports_a_topic_the_acl_denies(fleet: Fleet) -> None:
    problems = probe_broker(
        settings(fleet, "dev-000"),
        "dev-000-check",
        publish_topics=[topics.update_topic(FLEET, "dev-001")],
        subscribe_topics=[],
    )

    assert len(problems) == 1
    assert "refuses publishing to byzedge/init-it/update/dev-001: Not authorized" in problems[0]


def test_the_probe_reports_a_wrong_port(fleet: Fleet) -> None:
    wrong = settings(fleet, "dev-000", port=free_port())

    problems = probe_broker(
        wrong, "dev-000-check", publish_topics=[], subscribe_topics=[], timeout_s=2.0
    )

    assert len(problems) == 1
    assert "Connection refused" in problems[0]


def test_auto_falls_back_to_3_1_1_on_a_broker_that_ignores_mqtt5(
    embedded_broker: BrokerHandle,
) -> None:
    # amqtt neither answers nor closes an MQTT 5 CONNECT that carries a will.
    client = MqttClient(
        MqttSettings(url=embedded_broker.url, reconnect_min_s=0.1, reconnect_max_s=0.5),
        "fallback-with-will",
        on_message=lambda _t, _p: None,
        will=Will("t/status", b"offline"),
    )
    try:
        client.start(wait_s=20)
        delivery = client.publish("t/x", b"hello")
        assert delivery.wait(10)
    finally:
        client.stop()

    assert client.protocol == "3.1.1"
    assert delivery.ok
