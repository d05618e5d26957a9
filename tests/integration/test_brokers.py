from __future__ import annotations

import hashlib
import os
import queue
import socket
import struct
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from byzedge.fleet_sim.brokers import (
    BrokerError,
    BrokerHandle,
    free_port,
    start_broker,
    start_embedded,
    start_mosquitto,
)

pytestmark = pytest.mark.broker

TIMEOUT_S = 10.0


@pytest.fixture(params=["mosquitto", "embedded"])
def broker(request: pytest.FixtureRequest) -> BrokerHandle:
    handle = request.getfixturevalue(f"{request.param}_broker")
    assert isinstance(handle, BrokerHandle)
    return handle


@pytest.fixture
def topic() -> str:
    # The mosquitto broker is shared by the session: keep every test on its own topics.
    return f"byzedge-test/{uuid.uuid4().hex}"


class Inbox:
    """Messages received by a client, in arrival order."""

    def __init__(self) -> None:
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()

    def get(self) -> mqtt.MQTTMessage:
        return self.messages.get(timeout=TIMEOUT_S)


@contextmanager
def connected_client(
    broker: BrokerHandle, *, subscribe: str | None = None, username: str | None = None
) -> Iterator[tuple[mqtt.Client, Inbox]]:
    """A paho 2.x client (MQTT 3.1.1) with its network loop running, optionally subscribed."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"test-{uuid.uuid4().hex[:12]}",
        protocol=mqtt.MQTTv311,
    )
    inbox = Inbox()
    connected, subscribed = threading.Event(), threading.Event()
    client.on_connect = lambda *_: connected.set()
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_message = lambda _client, _userdata, msg: inbox.messages.put(msg)
    if username is not None:
        client.username_pw_set(username)
    client.connect(broker.host, broker.port, keepalive=30)
    client.loop_start()
    try:
        assert connected.wait(TIMEOUT_S), "no CONNACK"
        if subscribe is not None:
            client.subscribe(subscribe, qos=1)
            assert subscribed.wait(TIMEOUT_S), "no SUBACK"
        yield client, inbox
    finally:
        client.disconnect()
        client.loop_stop()


def _mqtt_string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack("!H", len(raw)) + raw


def _raw_connect_with_will(broker: BrokerHandle, will_topic: str, will: str) -> socket.socket:
    """Open a bare TCP socket and send an MQTT 3.1.1 CONNECT carrying a QoS 1 last will.

    A hand-built packet lets the test drop the connection without any DISCONNECT, exactly
    as a device that loses power does.
    """
    flags = 0x02 | 0x04 | (1 << 3)  # clean session, will flag, will QoS 1
    variable = _mqtt_string("MQTT") + bytes([4, flags]) + struct.pack("!H", 30)
    payload = _mqtt_string(f"will-{uuid.uuid4().hex[:8]}") + _mqtt_string(will_topic)
    payload += _mqtt_string(will)
    body = variable + payload
    assert len(body) < 128  # one-byte remaining length keeps the encoder trivial
    sock = socket.create_connection((broker.host, broker.port), timeout=TIMEOUT_S)
    sock.sendall(bytes([0x10, len(body)]) + body)
    assert sock.recv(4) == b"\x20\x02\x00\x00", "CONNACK refused"
    return sock


def test_a_200_kb_qos1_message_arrives_intact(broker: BrokerHandle, topic: str) -> None:
    payload = os.urandom(200 * 1024)
    with (
        connected_client(broker, subscribe=topic) as (_, inbox),
        connected_client(broker) as (publisher, _),
    ):
        info = publisher.publish(topic, payload, qos=1)
        info.wait_for_publish(TIMEOUT_S)
        assert info.is_published()
        message = inbox.get()
    assert message.topic == topic
    assert message.qos == 1
    assert hashlib.sha256(message.payload).digest() == hashlib.sha256(payload).digest()


def test_a_retained_message_reaches_a_late_subscriber(broker: BrokerHandle, topic: str) -> None:
    with connected_client(broker) as (publisher, _):
        info = publisher.publish(topic, b"model v7", qos=1, retain=True)
        info.wait_for_publish(TIMEOUT_S)
    with connected_client(broker, subscribe=topic) as (_, inbox):
        message = inbox.get()
    assert message.payload == b"model v7"
    assert message.retain


def test_the_last_will_is_delivered_when_a_socket_drops(broker: BrokerHandle, topic: str) -> None:
    status = f"{topic}/status/dev-1"
    with connected_client(broker, subscribe=status) as (_, inbox):
        sock = _raw_connect_with_will(broker, status, "offline")
        # SO_LINGER 0: close with a RST, no FIN handshake, like a pulled cable.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        message = inbox.get()
    assert message.topic == status
    assert message.payload == b"offline"


def test_a_mosquitto_restart_keeps_the_port(tmp_path: Path, topic: str) -> None:
    with start_mosquitto(workdir=tmp_path) as broker:
        port = broker.port
        broker.restart()
        assert broker.port == port
        with connected_client(broker, subscribe=topic) as (client, inbox):
            client.publish(topic, b"after restart", qos=1).wait_for_publish(TIMEOUT_S)
            assert inbox.get().payload == b"after restart"


def test_extra_config_lines_reach_mosquitto(tmp_path: Path) -> None:
    with start_mosquitto(extra_config="max_packet_size 4096", workdir=tmp_path) as broker:
        assert broker.config_path is not None
        assert "max_packet_size 4096" in broker.config_path.read_text()
        assert f"listener {broker.port} 127.0.0.1" in broker.config_path.read_text()


def test_a_bad_mosquitto_config_fails_with_its_log(tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match="no_such_option"):
        start_mosquitto(extra_config="no_such_option 1", workdir=tmp_path)


def test_a_given_port_is_used(tmp_path: Path) -> None:
    port = free_port()
    with start_mosquitto(port=port, workdir=tmp_path) as broker:
        assert broker.port == port
        assert broker.url == f"mqtt://127.0.0.1:{port}"


def test_stop_releases_the_port(tmp_path: Path) -> None:
    broker = start_mosquitto(workdir=tmp_path)
    broker.stop()
    broker.stop()  # idempotent
    with pytest.raises(OSError):
        socket.create_connection((broker.host, broker.port), timeout=1.0).close()


def test_a_temporary_workdir_is_removed_on_stop() -> None:
    with start_broker("mosquitto") as broker:
        workdir = broker.workdir
        assert workdir is not None
        assert workdir.is_dir()
    assert not workdir.exists()


def test_auto_prefers_mosquitto() -> None:
    with start_broker("auto") as broker:
        assert broker.kind == "mosquitto"


def test_auto_falls_back_to_embedded_without_mosquitto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BYZEDGE_MOSQUITTO", "/nonexistent/mosquitto")
    with start_broker("auto") as broker:
        assert broker.kind == "embedded"
        with connected_client(broker):
            pass


def test_asking_for_a_missing_mosquitto_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BYZEDGE_MOSQUITTO", "/nonexistent/mosquitto")
    with pytest.raises(BrokerError, match="mosquitto is not installed"):
        start_broker("mosquitto")


def test_the_embedded_broker_restarts_on_the_same_port(topic: str) -> None:
    with start_broker("embedded") as broker:
        port = broker.port
        broker.restart()
        assert broker.port == port
        with connected_client(broker, subscribe=topic) as (client, inbox):
            client.publish(topic, b"again", qos=1).wait_for_publish(TIMEOUT_S)
            assert inbox.get().payload == b"again"


@pytest.mark.parametrize(
    ("spec", "host", "port", "url"),
    [
        ("mqtt://broker.example:8883", "broker.example", 8883, "mqtt://broker.example:8883"),
        ("mqtt://broker.example", "broker.example", 1883, "mqtt://broker.example:1883"),
        ("mqtt://10.0.0.5:1884/", "10.0.0.5", 1884, "mqtt://10.0.0.5:1884"),
        ("mqtt://[::1]:1885", "::1", 1885, "mqtt://[::1]:1885"),
    ],
)
def test_an_external_spec_is_parsed_and_nothing_started(
    spec: str, host: str, port: int, url: str
) -> None:
    with start_broker(spec) as broker:
        assert (broker.kind, broker.host, broker.port, broker.url) == ("external", host, port, url)
        assert broker.workdir is None


@pytest.mark.parametrize(
    "spec",
    ["", "mosquito", "tcp://host:1883", "mqtts://host:8883", "mqtt://", "mqtt://h:99999"],
)
def test_a_malformed_spec_is_rejected(spec: str) -> None:
    with pytest.raises(BrokerError):
        start_broker(spec)


def test_an_external_broker_cannot_be_restarted() -> None:
    with pytest.raises(BrokerError):
        start_broker("mqtt://broker.example").restart()


@pytest.mark.parametrize("spec", ["mosquitto", "embedded"])
def test_a_port_held_by_someone_else_is_an_error(spec: str) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        start = start_mosquitto if spec == "mosquitto" else start_embedded
        with pytest.raises(BrokerError, match="in use"):
            start(port=port)


def test_mosquitto_keeps_root_only_when_running_as_root(tmp_path: Path) -> None:
    with start_mosquitto(workdir=tmp_path) as broker:
        assert broker.config_path is not None
        lines = broker.config_path.read_text().splitlines()
    assert ("user root" in lines) == (os.geteuid() == 0)


def test_the_deploy_acl_confines_a_device_to_its_own_topics(tmp_path: Path) -> None:
    acl = Path(__file__).resolve().parents[2] / "deploy" / "mosquitto" / "acl"
    # Usernames without passwords stand in for certificate CNs (use_identity_as_username).
    with start_mosquitto(extra_config=f"acl_file {acl}", workdir=tmp_path) as broker:
        with (
            connected_client(broker, username="coordinator", subscribe="byzedge/f1/update/+") as (
                _,
                inbox,
            ),
            connected_client(broker, username="dev-1") as (device, _),
        ):
            device.publish("byzedge/f1/update/dev-2", b"forged", qos=1).wait_for_publish(TIMEOUT_S)
            device.publish("byzedge/f1/update/dev-1", b"mine", qos=1).wait_for_publish(TIMEOUT_S)
            first = inbox.get()
        assert (first.topic, first.payload) == ("byzedge/f1/update/dev-1", b"mine")


def test_the_deploy_acl_lets_a_device_read_the_model_but_not_other_updates(
    tmp_path: Path,
) -> None:
    acl = Path(__file__).resolve().parents[2] / "deploy" / "mosquitto" / "acl"
    with (
        start_mosquitto(extra_config=f"acl_file {acl}", workdir=tmp_path) as broker,
        connected_client(broker, username="dev-1", subscribe="byzedge/f1/#") as (_, inbox),
        connected_client(broker, username="coordinator") as (coordinator, _),
        connected_client(broker, username="dev-2") as (other, _),
    ):
        # Mosquitto grants the wildcard subscription but checks 'read' on each delivery;
        # the PUBACK comes after routing, so the update would be queued before the model.
        other.publish("byzedge/f1/update/dev-2", b"theirs", qos=1).wait_for_publish(TIMEOUT_S)
        coordinator.publish("byzedge/f1/model", b"model", qos=1).wait_for_publish(TIMEOUT_S)
        first = inbox.get()
    assert (first.topic, first.payload) == ("byzedge/f1/model", b"model")
