"""A fleet made by ``byzedge init`` works against a real mosquitto started from its config.

The broker is started exactly as the summary of ``byzedge init`` says
(``mosquitto -c DIR/broker/mosquitto.conf``). Run as root (as here), mosquitto drops to the
``mosquitto`` user before it reads its key, so the fleet folder must be one that user can
enter: pytest's ``tmp_path`` (under the 0700 ``/tmp/pytest-of-root``) is not, so the
fleets live in a 0755 folder made with ``tempfile.mkdtemp(dir="/tmp")``.
"""

from __future__ import annotations

import os
import pwd
import queue
import signal
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from provisioned import FLEET, Fleet, provisioned_fleet

from byzedge.cli import main
from byzedge.fleet_sim.brokers import free_port
from byzedge.protocol import topics

pytestmark = pytest.mark.broker

TIMEOUT_S = 10.0
ROUND_TIMEOUT_S = 180.0
NOT_AUTHORIZED = 0x87


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    with provisioned_fleet() as made:
        yield made


class Session:
    """An MQTT v5 client connected with one account's certificate."""

    def __init__(self, client: mqtt.Client) -> None:
        self.client = client
        self.acks: queue.Queue[tuple[int, int]] = queue.Queue()
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()

    def publish(self, topic: str, payload: bytes = b"x", *, retain: bool = False) -> int:
        """Publish at QoS 1; return the PUBACK's reason code."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        while True:
            mid, code = self.acks.get(timeout=TIMEOUT_S)
            if mid == info.mid:
                return code


def _tls(folder: Path, *, with_certificate: bool = True) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(folder / "tls" / "ca.crt"))
    if with_certificate:
        context.load_cert_chain(folder / "tls" / "client.crt", folder / "tls" / "client.key")
    return context


def _try_connect(fleet: Fleet, context: ssl.SSLContext) -> tuple[mqtt.Client, bool]:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"init-it-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv5,
    )
    client.tls_set_context(context)
    answered = threading.Event()
    accepted: list[bool] = []

    def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        accepted.append(not reason.is_failure)
        answered.set()

    def on_disconnect(*_: Any) -> None:
        accepted.append(False)
        answered.set()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    try:
        client.connect("127.0.0.1", fleet.port, keepalive=30)
    except (OSError, ssl.SSLError):
        return client, False
    client.loop_start()
    ok = answered.wait(TIMEOUT_S) and accepted[0]
    if not ok:
        client.loop_stop()
    return client, ok


@contextmanager
def session(fleet: Fleet, account: str, subscribe: str | None = None) -> Iterator[Session]:
    """Connect as ``account`` (its folder's certificate), optionally subscribed."""
    client, ok = _try_connect(fleet, _tls(fleet.folder(account)))
    assert ok, f"{account}: no CONNACK; broker log:\n{fleet.log_text()[-2000:]}"
    link = Session(client)
    client.on_publish = lambda _c, _u, mid, reason, _p: link.acks.put((mid, reason.value))
    client.on_message = lambda _c, _u, message: link.messages.put(message)
    try:
        if subscribe is not None:
            subscribed = threading.Event()
            client.on_subscribe = lambda *_: subscribed.set()
            client.subscribe(subscribe, qos=1)
            assert subscribed.wait(TIMEOUT_S)
        yield link
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="mosquitto drops privileges only when root")
def test_started_as_root_the_broker_runs_as_the_mosquitto_user(fleet: Fleet) -> None:
    status = Path(f"/proc/{fleet.broker.pid}/status").read_text()
    uid = next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))

    assert int(uid) == pwd.getpwnam("mosquitto").pw_uid


def test_the_coordinator_may_publish_the_model(fleet: Fleet) -> None:
    with session(fleet, "coordinator") as coordinator:
        code = coordinator.publish(topics.model_topic(FLEET))

    assert code != NOT_AUTHORIZED


def test_a_device_may_publish_its_own_update_and_the_monitor_sees_it(fleet: Fleet) -> None:
    topic = topics.update_topic(FLEET, "dev-000")
    with (
        session(fleet, "monitor", subscribe=f"byzedge/{FLEET}/update/+") as monitor,
        session(fleet, "dev-000") as device,
    ):
        code = device.publish(topic, b"own")

        assert code < 0x80
        assert monitor.messages.get(timeout=TIMEOUT_S).topic == topic


def test_a_device_may_not_publish_another_devices_update(fleet: Fleet) -> None:
    with (
        session(fleet, "monitor", subscribe=f"byzedge/{FLEET}/update/+") as monitor,
        session(fleet, "dev-000") as device,
    ):
        denied = device.publish(topics.update_topic(FLEET, "dev-001"), b"forged")
        allowed = device.publish(topics.update_topic(FLEET, "dev-000"), b"marker")

        assert denied == NOT_AUTHORIZED
        assert allowed < 0x80
        # Only the marker arrives: the forged update was dropped by the broker.
        assert monitor.messages.get(timeout=TIMEOUT_S).payload == b"marker"


def test_a_device_may_not_publish_the_model(fleet: Fleet) -> None:
    with session(fleet, "dev-001") as device:
        assert device.publish(topics.model_topic(FLEET)) == NOT_AUTHORIZED


def test_a_client_without_a_certificate_is_refused(fleet: Fleet) -> None:
    client, ok = _try_connect(fleet, _tls(fleet.folder("dev-000"), with_certificate=False))

    assert not ok
    client.loop_stop()


def test_a_revoked_device_is_refused_once_the_broker_reloads(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with provisioned_fleet(devices=1) as fleet:
        assert main(["init", "add-device", str(fleet.root)]) == 0
        with session(fleet, "dev-001"):
            pass

        assert main(["init", "revoke-device", str(fleet.root), "dev-001"]) == 0
        assert "mosquitto reads the CRL only when it starts or reloads" in capsys.readouterr().out
        fleet.broker.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + TIMEOUT_S
        while "Reloading config" not in fleet.log_text():
            assert time.monotonic() < deadline, "mosquitto did not reload"
            time.sleep(0.05)

        client, ok = _try_connect(fleet, _tls(fleet.folder("dev-001")))
        client.loop_stop()
        assert not ok
        with session(fleet, "dev-000"):  # the others are unaffected
            pass


def test_the_generated_configs_run_a_round_as_is(fleet: Fleet) -> None:
    daemons = [fleet.coordinator(), fleet.agent("dev-000"), fleet.agent("dev-001")]
    try:
        first = fleet.wait_for_rounds(1, ROUND_TIMEOUT_S)[0]
        codes = {daemon.name: daemon.stop(60) for daemon in daemons}
    finally:
        fleet.daemons.clear()
        for daemon in daemons:
            if daemon.process.poll() is None:
                daemon.kill()

    assert first["accepted_devices"] == ["dev-000", "dev-001"]
    assert codes == {"coordinator": 0, "dev-000": 0, "dev-001": 0}


def test_check_config_online_passes_for_every_generated_account(fleet: Fleet) -> None:
    coordinator = fleet.root / "coordinator" / "coordinator.toml"
    agent = fleet.root / "agents" / "dev-000" / "agent.toml"

    assert main(["coordinator", "check-config", "--config", str(coordinator), "--online"]) == 0
    assert main(["agent", "check-config", "--config", str(agent), "--online"]) == 0


def test_check_config_online_reports_a_wrong_port(
    fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = fleet.root / "agents" / "dev-001"
    config = folder / "agent-wrong-port.toml"
    text = (folder / "agent.toml").read_text()
    config.write_text(text.replace(f":{fleet.port}", f":{free_port()}"))
    try:
        assert main(["agent", "check-config", "--config", str(config)]) == 0
        assert main(["agent", "check-config", "--config", str(config), "--online"]) == 2
    finally:
        config.unlink()
    assert capsys.readouterr().err.startswith("byzedge agent: ")
