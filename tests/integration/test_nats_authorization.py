"""Per-identity authorization of a NATS cluster started from ``byzedge init --broker nats``.

One three-node cluster per module, from the generated configs (users.conf included):
each certificate is mapped to a user (``verify_and_map``) whose permissions say what it
may publish and subscribe. Measured here on nats-server 2.9.10:

- an MQTT publish outside the user's permissions is PUBACKed and silently dropped (the
  server logs a "Publish Violation"); the connection stays open;
- a subscription outside them gets a failed SUBACK (0x80); a QoS 1 subscription needs
  ``$MQTT.sub.>`` in the user's subscribe permissions, and ``$MQTT/...`` filters are
  refused even with it;
- a certificate whose user is ``MQTT``-only is refused on the NATS client port;
- a permission violation on the NATS port gets ``-ERR`` and no reply (the call times out);
- a reload (SIGHUP) applies users.conf: a new device's certificate is accepted, a revoked
  one refused.
"""

from __future__ import annotations

import asyncio
import gc
import json
import random
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats.errors
import paho.mqtt.client as paho
import provisioned
import pytest
from nats.aio.client import Client as NatsClient
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from byzedge.cli import main
from byzedge.coordinator.cluster.nats_lease import KvLeaderLease
from byzedge.coordinator.cluster.nats_source import JetStreamUpdateSource, stream_name
from byzedge.coordinator.cluster.nats_state import JetStreamStateStore
from byzedge.coordinator.state import CoordinatorState, StateStore
from byzedge.fleet_sim.nats_cluster import find_nats_server

# nats-py 2.16 keeps the plain StreamWriter a TLS connection started from (transport.py,
# "_bare_io_writer"); when a closed client is garbage-collected after its event loop has
# closed, Python 3.11 warns "loop is closed" / "unclosed transport" / "unclosed socket"
# for it, in whichever test the collector happens to run (seen twice in a dozen runs).
# Only those four finalizers are ignored; any other unraisable exception still fails.
_NATS_PY_TLS_LEFTOVERS = [
    "ignore:Exception ignored in. <function StreamWriter.__del__"
    ":pytest.PytestUnraisableExceptionWarning",
    "ignore:Exception ignored in. <function _SelectorTransport.__del__"
    ":pytest.PytestUnraisableExceptionWarning",
    "ignore:Exception ignored in. <function _SSLProtocolTransport.__del__"
    ":pytest.PytestUnraisableExceptionWarning",
    "ignore:Exception ignored in. <socket.socket:pytest.PytestUnraisableExceptionWarning",
]
pytestmark = [
    pytest.mark.broker,
    *(pytest.mark.filterwarnings(rule) for rule in _NATS_PY_TLS_LEFTOVERS),
]

FLEET = "natsauth"
NODES = 3
READY_S = 90.0
WAIT_S = 60.0
ROUND_TIMEOUT_S = 240.0


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _port_bases() -> tuple[int, int]:
    """An MQTT base and a NATS base whose consecutive ports (and +2000, +4000) are free.

    The scan starts at a place drawn at random: other sessions on this machine run the
    same tests at the same time, and two that scan alike race for the same ports.
    """
    # Every port (the highest is nats_base + 4002 < 31100) stays below the kernel's
    # ephemeral range (32768 and up): there a node's route dialling a peer could take
    # a listener's port as its source port.
    start = random.randrange(7000)
    for step in range(0, 7000, 41):
        mqtt_base = 12000 + (start + step) % 7000
        nats_base = mqtt_base + 8000
        wanted = [mqtt_base + k for k in range(NODES)]
        wanted += [nats_base + offset + k for offset in (0, 2000, 4000) for k in range(NODES)]
        if all(_free(port) for port in wanted):
            return mqtt_base, nats_base
    pytest.fail("no free port range for the cluster", pytrace=False)


def _meta_leader(http_port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/jsz", timeout=2.0) as reply:
            report = json.loads(reply.read())
    except (OSError, ValueError):
        return None
    leader = (report.get("meta_cluster") or {}).get("leader")
    return str(leader) if leader else None


@dataclass
class Fleet:
    """A fleet folder from init and its running cluster."""

    root: Path
    mqtt_base: int
    nats_base: int
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def nats_urls(self) -> list[str]:
        return [f"tls://127.0.0.1:{self.nats_base + k}" for k in range(NODES)]

    def folder(self, identity: str) -> Path:
        """The account folder init made for ``identity`` (its tls/ holds the certificate)."""
        if identity == "ingest":
            return self.root / "coordinator" / "ingest"
        if identity in {"coordinator", "monitor"}:
            return self.root / identity
        return self.root / "agents" / identity

    def tls(self, identity: str) -> ssl.SSLContext:
        tls = self.folder(identity) / "tls"
        context = ssl.create_default_context(cafile=str(tls / "ca.crt"))
        context.load_cert_chain(str(tls / "client.crt"), str(tls / "client.key"))
        return context

    def violations(self) -> list[str]:
        """Every permission or authorization violation the nodes have logged."""
        lines = []
        for k in range(NODES):
            log = self.root.parent / f"n{k}.log"  # beside the fleet folder (_start)
            text = log.read_text(errors="replace") if log.exists() else ""
            lines += [line for line in text.splitlines() if "Violation" in line]
        return lines

    def wait_logged(self, text: str) -> bool:
        """Wait until a node logs a violation line holding ``text``."""
        deadline = time.monotonic() + WAIT_S
        while not any(text in line for line in self.violations()):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        return True

    def reload(self) -> None:
        """What an operator does after add-device or revoke-device: SIGHUP every node."""
        for process in self.processes:
            process.send_signal(signal.SIGHUP)


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _start(base: Path, fleet: str, devices: int) -> Fleet | None:
    """Init a fleet in ``base`` on free ports and start its nodes; ``None`` if a port was
    taken meanwhile (a node exits when it cannot listen)."""
    binary = find_nats_server()
    assert binary is not None, "nats-server is required: run scripts/setup"
    mqtt_base, nats_base = _port_bases()
    root = base / "fleet"
    args = ["init", str(root), "--fleet", fleet, "--devices", str(devices), "--workers", "1"]
    args += ["--host", "127.0.0.1", "--broker", "nats"]
    assert main([*args, "--port", str(mqtt_base), "--nats-port", str(nats_base)]) == 0
    running = Fleet(root, mqtt_base, nats_base)
    logs = [base / f"n{k}.log" for k in range(NODES)]
    for k, path in enumerate(logs):
        config = root / "broker" / "nats" / f"n{k}.conf"
        with path.open("ab") as log:
            command = [str(binary), "-c", str(config)]
            running.processes.append(
                subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
            )
    # Every listener is bound once a node logs its route listener (the last one it opens).
    deadline = time.monotonic() + READY_S
    while (
        not all(
            "Listening for route connections" in path.read_text(errors="replace") for path in logs
        )
        or _meta_leader(nats_base + 4000) is None
    ):
        if any(p.poll() is not None for p in running.processes):
            _stop(running.processes)
            return None
        assert time.monotonic() < deadline, "no JetStream meta leader"
        time.sleep(0.3)
    return running


@contextmanager
def _started(fleet: str = FLEET, devices: int = 2) -> Iterator[Fleet]:
    """``byzedge init --broker nats --workers 1`` and its three nodes, started as written."""
    running: Fleet | None = None
    base = Path(tempfile.mkdtemp(prefix="byzedge-nats-auth-", dir="/tmp"))
    try:
        for attempt in range(5):
            running = _start(base / str(attempt), fleet, devices)
            if running is not None:
                break
        assert running is not None, "five port ranges were taken while the nodes started"
        yield running
    finally:
        if running is not None:
            _stop(running.processes)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    """One cluster for the module's tests (each uses its own devices and topics)."""
    with _started() as running:
        yield running
    gc.collect()  # the module's TLS clients are finalized here, under its warning filters


class Mqtt:
    """A plain paho MQTT 3.1.1 client that records what the broker answers."""

    def __init__(self, fleet: Fleet, identity: str, node: int = 0) -> None:
        self.identity = identity
        self.messages: list[tuple[str, bytes]] = []
        self.subacks: list[list[int]] = []
        self.pubacks: set[int] = set()
        self.connects: list[int] = []
        self.disconnects = 0
        self._changed = threading.Condition()
        client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"{identity}-t", protocol=paho.MQTTv311
        )
        client.tls_set_context(fleet.tls(identity))
        client.reconnect_delay_set(1, 2)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_publish = self._on_publish
        self.client = client
        self.port = fleet.mqtt_base + node

    def _note(self, change: Callable[[], None]) -> None:
        with self._changed:
            change()
            self._changed.notify_all()

    def _on_connect(self, _c: paho.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        self._note(lambda: self.connects.append(rc.value))

    def _on_disconnect(self, _c: paho.Client, _u: Any, _f: Any, _rc: Any, _p: Any) -> None:
        def count() -> None:
            self.disconnects += 1

        self._note(count)

    def _on_message(self, _c: paho.Client, _u: Any, message: paho.MQTTMessage) -> None:
        self._note(lambda: self.messages.append((message.topic, bytes(message.payload))))

    def _on_subscribe(
        self, _c: paho.Client, _u: Any, _mid: int, codes: list[ReasonCode], _p: Any
    ) -> None:
        self._note(lambda: self.subacks.append([code.value for code in codes]))

    def _on_publish(self, _c: paho.Client, _u: Any, mid: int, _rc: Any, _p: Any) -> None:
        self._note(lambda: self.pubacks.add(mid))

    def wait_for(self, done: Callable[[], bool], timeout_s: float = WAIT_S) -> bool:
        with self._changed:
            return self._changed.wait_for(done, timeout_s)

    def start(self) -> Mqtt:
        # connect_async: a refused TLS handshake shows as no CONNACK, not an exception.
        self.client.connect_async("127.0.0.1", self.port, keepalive=30)
        self.client.loop_start()
        return self

    def connected(self, timeout_s: float = WAIT_S) -> bool:
        return self.wait_for(lambda: 0 in self.connects, timeout_s)

    def subscribe(self, topic: str) -> list[int]:
        before = len(self.subacks)
        self.client.subscribe(topic, qos=1)
        assert self.wait_for(lambda: len(self.subacks) > before), f"no SUBACK for {topic}"
        return self.subacks[before]

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish QoS 1 and wait for the PUBACK."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        assert self.wait_for(lambda: info.mid in self.pubacks), f"no PUBACK on {topic}"

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def clients() -> Iterator[list[Mqtt]]:
    made: list[Mqtt] = []
    yield made
    for client in made:
        client.stop()


def _topic(kind: str, device: str) -> str:
    return f"byzedge/{FLEET}/{kind}/{device}"


def _drain(source: JetStreamUpdateSource, until: bytes) -> list[tuple[str, bytes]]:
    """Every update the ingest source gets (acked) up to the one carrying ``until``."""
    got: list[tuple[str, bytes]] = []
    deadline = time.monotonic() + WAIT_S
    while until not in [payload for _, payload in got]:
        assert time.monotonic() < deadline, f"the ingest source never got {until!r}: {got}"
        for message in source.fetch(10, 1.0):
            got.append((message.topic, message.payload))
            message.ack()
    return got


def test_every_generated_config_passes_the_check_and_names_each_identity(fleet: Fleet) -> None:
    binary = find_nats_server()
    assert binary is not None
    for k in range(NODES):
        config = fleet.root / "broker" / "nats" / f"n{k}.conf"
        check = subprocess.run(
            [str(binary), "-t", "-c", str(config)], capture_output=True, text=True, check=False
        )
        assert check.returncode == 0, check.stdout + check.stderr
        text = config.read_text()
        assert text.count("verify_and_map: true") == 2  # NATS client port and MQTT
        assert 'include "users.conf"' in text
    users = (fleet.root / "broker" / "nats" / "users.conf").read_text()
    for identity in ("coordinator", "ingest", "monitor", "dev-000", "dev-001"):
        assert f'user: "CN={identity}"' in users


def test_a_device_publishes_only_on_its_own_topics(fleet: Fleet, clients: list[Mqtt]) -> None:
    source = JetStreamUpdateSource(
        fleet.nats_urls, FLEET, tls=fleet.tls("ingest"), name="auth-worker"
    )
    try:
        # The ingest certificate can create and consume the update stream.
        assert source.wait_ready(READY_S), "the ingest source did not start under its user"
        device = Mqtt(fleet, "dev-000", node=1).start()
        clients.append(device)
        assert device.connected(), device.connects
        device.publish(_topic("update", "dev-000"), b"own")
        # Another device's topic: PUBACKed like any publish, then dropped by the server.
        device.publish(_topic("update", "dev-001"), b"forged")
        device.publish(_topic("update", "dev-001") + "/chunk/0", b"forged chunk")
        device.publish(_topic("status", "dev-001"), b"offline", retain=True)
        device.publish(_topic("update", "dev-000") + "/chunk/0", b"own chunk")
        device.publish(_topic("status", "dev-000"), b"online", retain=True)
        got = _drain(source, b"own chunk")
    finally:
        source.close()
    assert got == [
        (_topic("update", "dev-000"), b"own"),
        (_topic("update", "dev-000") + "/chunk/0", b"own chunk"),
    ]
    # The server logged the forged publishes; they did not close the device's connection
    # (2.9.10 drops them silently).
    assert any(
        'Publish Violation - User "CN=dev-000", Subject "byzedge.natsauth.update.dev-001"' in line
        for line in fleet.violations()
    ), fleet.violations()
    assert device.disconnects == 0
    assert device.connects == [0]

    # The monitor reads the retained statuses: the device's own, not the forged one.
    monitor = Mqtt(fleet, "monitor", node=2).start()
    clients.append(monitor)
    assert monitor.connected()
    assert monitor.subscribe(f"byzedge/{FLEET}/status/+") == [1]
    assert monitor.wait_for(lambda: (_topic("status", "dev-000"), b"online") in monitor.messages)
    assert (_topic("status", "dev-001"), b"offline") not in monitor.messages
    # ... and may publish nothing (PUBACKed, dropped, logged).
    monitor.publish(f"byzedge/{FLEET}/model", b"monitor model", retain=True)
    assert fleet.wait_logged('Publish Violation - User "CN=monitor"'), fleet.violations()


def test_a_device_reads_the_model_but_not_other_devices_updates(
    fleet: Fleet, clients: list[Mqtt]
) -> None:
    coordinator = Mqtt(fleet, "coordinator").start()
    device = Mqtt(fleet, "dev-001", node=2).start()
    clients.extend([coordinator, device])
    assert coordinator.connected()
    assert device.connected()
    # Refused: another device's updates, everything, and the server's internal subjects.
    assert device.subscribe(f"byzedge/{FLEET}/update/+") == [0x80]
    assert device.subscribe(f"byzedge/{FLEET}/#") == [0x80]
    assert device.subscribe("$MQTT/sub/#") == [0x80]
    # Granted: the model (QoS 1 needs $MQTT.sub.> in the user's permissions on 2.9.10).
    assert device.subscribe(f"byzedge/{FLEET}/model") == [1]
    coordinator.publish(f"byzedge/{FLEET}/model", b"signed model", retain=True)
    assert device.wait_for(lambda: (f"byzedge/{FLEET}/model", b"signed model") in device.messages)
    # A device cannot publish a model either; the retained model stays the coordinator's.
    device.publish(f"byzedge/{FLEET}/model", b"forged model", retain=True)
    reader = Mqtt(fleet, "dev-000").start()
    clients.append(reader)
    assert reader.connected()
    assert reader.subscribe(f"byzedge/{FLEET}/model") == [1]
    assert reader.wait_for(lambda: bool(reader.messages))
    assert reader.messages == [(f"byzedge/{FLEET}/model", b"signed model")]
    assert [topic for topic, _ in device.messages] == [f"byzedge/{FLEET}/model"]


async def _nats_call(
    fleet: Fleet, identity: str, call: Callable[[Any], Any], timeout_s: float = 5.0
) -> tuple[object, list[str]]:
    """Connect with ``identity``'s certificate, run ``call(js)``: (result or error, errors).

    A refused call gets no reply: it ends in a TimeoutError after ``timeout_s``, and the
    server's "-ERR Permissions Violation" reaches ``errors``. A call expected to succeed
    gets a longer ``timeout_s`` (this machine's two cores are shared).
    """
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    client = NatsClient()
    try:
        await client.connect(
            fleet.nats_urls,
            tls=fleet.tls(identity),
            error_cb=on_error,
            allow_reconnect=False,
            connect_timeout=10,
        )
    except BaseException:
        # A refused connect leaves its TLS transport open (nats-py 2.16): close it here,
        # or a ResourceWarning fails whichever test the garbage collector runs in.
        await client.close()
        raise
    try:
        result: object = await call(client.jetstream(timeout=timeout_s))
    except (nats.errors.Error, TimeoutError) as exc:
        result = exc
    finally:
        await client.close()
    return result, errors


async def _take_lease(js: Any) -> object:
    bucket = await js.key_value("byzedge_leader")
    return await bucket.create(FLEET, b"not the leader")


async def _read_state(js: Any) -> object:
    objects = await js.object_store("byzedge_state")
    return await objects.get(f"fleet.{FLEET}.state")


async def _write_state(js: Any) -> object:
    objects = await js.object_store("byzedge_state")
    return await objects.put(f"fleet.{FLEET}.state", b"forged")


async def _delete_stream(js: Any) -> object:
    return await js.delete_stream(stream_name(FLEET))


def test_a_device_certificate_is_refused_on_the_nats_client_port(fleet: Fleet) -> None:
    # Devices are MQTT-only users: no stream deletion, no lease, no state, not even a
    # connection.
    for call in (_delete_stream, _take_lease, _read_state, _write_state):
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            asyncio.run(_nats_call(fleet, "dev-000", call))
    gc.collect()  # anything left open by the refused connects warns here, not later


def _state() -> CoordinatorState:
    import numpy as np  # noqa: PLC0415 - only this test builds a state

    return CoordinatorState(
        fleet=FLEET,
        model="mlp",
        completed_round=3,
        model_version=3,
        params=np.arange(8, dtype=np.float32),
        reputation={"dev-000": 1.0},
        rejected_total={},
    )


def test_only_the_coordinator_holds_the_lease_and_the_state(fleet: Fleet, tmp_path: Path) -> None:
    stream = stream_name(FLEET)
    source = JetStreamUpdateSource(fleet.nats_urls, FLEET, tls=fleet.tls("ingest"), name="w")
    try:
        assert source.wait_ready(READY_S)  # the update stream exists
    finally:
        source.close()

    # The coordinator (leader) takes the lease and saves its state under its user.
    lease = KvLeaderLease(fleet.nats_urls, FLEET, tls=fleet.tls("coordinator"))
    store = JetStreamStateStore(
        StateStore(tmp_path / "leader"),
        fleet.nats_urls,
        FLEET,
        epoch=1,
        tls=fleet.tls("coordinator"),
        save_timeout_s=WAIT_S,
    )
    try:
        epoch = lease.acquire(WAIT_S)
        assert epoch is not None
        store.save(_state())
    finally:
        store.close()
        lease.close()

    # Neither a worker's nor the coordinator's certificate may delete the update stream.
    for identity in ("ingest", "coordinator"):
        deleted, errors = asyncio.run(_nats_call(fleet, identity, _delete_stream))
        assert isinstance(deleted, TimeoutError), deleted
        assert any("permissions violation" in error for error in errors), errors

    # A worker's certificate may not take the lease, nor read or write the state.
    for call in (_take_lease, _read_state, _write_state):
        result, errors = asyncio.run(_nats_call(fleet, "ingest", call))
        assert isinstance(result, TimeoutError), result
        assert any("permissions violation" in error for error in errors), errors

    # The stream and the leader's state are intact.
    async def stream_info(js: Any) -> object:
        return await js.stream_info(stream)

    info, _ = asyncio.run(_nats_call(fleet, "coordinator", stream_info, timeout_s=WAIT_S))
    assert getattr(info, "config", None) is not None, info
    resumed = JetStreamStateStore(
        StateStore(tmp_path / "standby"),
        fleet.nats_urls,
        FLEET,
        epoch=2,
        tls=fleet.tls("coordinator"),
        load_timeout_s=WAIT_S,
    )
    try:
        state = resumed.load()
    finally:
        resumed.close()
    assert state is not None
    assert state.completed_round == 3


def test_add_device_and_revoke_device_take_effect_on_reload(
    fleet: Fleet, clients: list[Mqtt]
) -> None:
    assert main(["init", "add-device", str(fleet.root), "--device-id", "dev-007"]) == 0
    users = (fleet.root / "broker" / "nats" / "users.conf").read_text()
    assert 'user: "CN=dev-007"' in users
    # Until the nodes reload, the new certificate maps to no user and is refused.
    early = Mqtt(fleet, "dev-007").start()
    clients.append(early)
    # CONNACK "not authorized" (3.1.1 return code 5, which paho reports as 135).
    assert early.wait_for(lambda: 135 in early.connects), early.connects
    assert 0 not in early.connects
    fleet.reload()
    # The reload is asynchronous: a fresh client per attempt until the new user is known.
    deadline = time.monotonic() + WAIT_S
    while True:
        device = Mqtt(fleet, "dev-007", node=1).start()
        clients.append(device)
        if device.connected(5.0):
            break
        device.stop()
        assert time.monotonic() < deadline, "dev-007 was never accepted after the reload"
    assert device.subscribe(f"byzedge/{FLEET}/model") == [1]

    assert main(["init", "revoke-device", str(fleet.root), "dev-007"]) == 0
    assert 'user: "CN=dev-007"' not in (fleet.root / "broker" / "nats" / "users.conf").read_text()
    fleet.reload()
    # The reload closes the revoked device's connection, and it is refused from then on.
    assert device.wait_for(lambda: device.disconnects > 0), "the revoked device stayed on"
    again = Mqtt(fleet, "dev-007", node=2).start()
    clients.append(again)
    assert again.wait_for(lambda: 135 in again.connects), again.connects
    assert 0 not in again.connects
    # Its old client tries to reconnect (paho retries every 1-2 s): refused too.
    assert device.wait_for(lambda: 135 in device.connects), device.connects
    assert device.connects.count(0) == 1, device.connects


def test_leader_worker_and_devices_run_a_round_under_their_permissions() -> None:
    """The daemons as init configured them: leader, one ingest worker, two agents."""
    with _started(fleet="natsflow") as running:
        # provisioned.Fleet runs byzedge daemons as processes in the fleet folder; its
        # "broker" is only used to stop or restart it, which this test does not do.
        operated = provisioned.Fleet(running.root, running.mqtt_base, running.processes[0])
        try:
            operated.coordinator()
            operated.worker(1)
            operated.agent("dev-000")
            operated.agent("dev-001")
            first, second = operated.wait_for_rounds(2, ROUND_TIMEOUT_S)[:2]
            worker_log = operated.daemons[1].log_text()
            violations = running.violations()
        finally:
            for daemon in operated.daemons:
                if daemon.process.poll() is None:
                    daemon.kill()
    # Round 2 needs round 1's model: the devices read what the leader published.
    assert first["accepted_devices"] == second["accepted_devices"] == ["dev-000", "dev-001"]
    # The worker created and consumed the update stream under the ingest user (the leader
    # takes updates only from partials when it has workers).
    assert "created stream BYZ_UPDATES_natsflow" in worker_log
    # Nobody needed a subject its user lacks.
    assert violations == []
