"""``byzedge init --broker nats``: a three-node cluster started from the generated configs.

The configs must pass ``nats-server -t``; the cluster started from them must take an MQTT
publish from a device with its provisioned certificate (mutual TLS, MQTT 3.1.1), refuse
a client without one, and hand the update to an ingest source that connects to the NATS
port with the coordinator's certificate.
"""

from __future__ import annotations

import json
import random
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from byzedge.cli import main
from byzedge.coordinator.cluster.nats_source import JetStreamUpdateSource
from byzedge.daemon.mqtt import MqttClient, MqttSettings, MqttTimeoutError, TlsSettings
from byzedge.edge_agent.config import load_agent_config
from byzedge.fleet_sim.nats_cluster import find_nats_server
from byzedge.protocol.topics import update_topic

pytestmark = pytest.mark.broker

FLEET = "natsinit"
NODES = 3
READY_S = 90.0


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _port_bases() -> tuple[int, int]:
    """An MQTT base and a NATS base whose consecutive ports (and +2000, +4000) are free.

    The scan starts at a random place: other sessions on this machine run these tests at
    the same time, and two scans from the same start race for the same ports.
    """
    # Every port (the highest is nats_base + 4002 < 31100) stays below the kernel's
    # ephemeral range (32768 and up): there a node's route dialling a peer could take
    # a listener's port as its source port.
    start = random.randrange(7000)
    for step in range(0, 7000, 37):
        mqtt_base = 12000 + (start + step) % 7000
        nats_base = mqtt_base + 8000
        wanted = [mqtt_base + k for k in range(NODES)]
        wanted += [nats_base + offset + k for offset in (0, 2000, 4000) for k in range(NODES)]
        if all(_free(port) for port in wanted):
            return mqtt_base, nats_base
    pytest.fail("no free port range for the cluster", pytrace=False)


@pytest.fixture
def fleet() -> Iterator[tuple[Path, int, int]]:
    """``byzedge init --broker nats`` in a fresh folder: (root, MQTT base, NATS base)."""
    base = Path(tempfile.mkdtemp(prefix="byzedge-nats-init-", dir="/tmp"))
    try:
        root = base / "fleet"
        mqtt_base, nats_base = _port_bases()
        args = ["init", str(root), "--fleet", FLEET, "--devices", "2", "--host", "127.0.0.1"]
        args += ["--broker", "nats", "--port", str(mqtt_base), "--nats-port", str(nats_base)]
        assert main(args) == 0
        yield root, mqtt_base, nats_base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _configs(root: Path) -> list[Path]:
    return [root / "broker" / "nats" / f"n{k}.conf" for k in range(NODES)]


def _tls_context(folder: Path) -> ssl.SSLContext:
    """The TLS context of an account folder made by init (fleet CA, its certificate)."""
    context = ssl.create_default_context(cafile=str(folder / "tls" / "ca.crt"))
    context.load_cert_chain(str(folder / "tls" / "client.crt"), str(folder / "tls" / "client.key"))
    return context


def _meta_leader(http_port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/jsz", timeout=2.0) as reply:
            report = json.loads(reply.read())
    except (OSError, ValueError):
        return None
    return (report.get("meta_cluster") or {}).get("leader")


@contextmanager
def _running(root: Path, nats_base: int) -> Iterator[None]:
    """Start every node as its config says; stop them after."""
    binary = find_nats_server()
    assert binary is not None, "nats-server is required: run scripts/setup"
    logs = root.parent / "logs"
    logs.mkdir(exist_ok=True)
    processes = []
    try:
        for config in _configs(root):
            with (logs / f"{config.stem}.log").open("ab") as log:
                command = [str(binary), "-c", str(config)]
                processes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + READY_S
        while _meta_leader(nats_base + 4000) is None:
            assert time.monotonic() < deadline, "no JetStream meta leader"
            assert all(p.poll() is None for p in processes), "a node exited"
            time.sleep(0.3)
        yield
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_init_writes_node_configs_that_nats_server_accepts(
    fleet: tuple[Path, int, int],
) -> None:
    root, mqtt_base, _nats_base = fleet
    binary = find_nats_server()
    assert binary is not None, "nats-server is required: run scripts/setup"
    for config in _configs(root):
        check = subprocess.run(
            [str(binary), "-t", "-c", str(config)], capture_output=True, text=True, check=False
        )
        assert check.returncode == 0, check.stdout + check.stderr
        unit = (root / "systemd" / f"byzedge-nats-{config.stem}.service").read_text()
        assert f"-c {config}" in unit
    agent = load_agent_config(root / "agents" / "dev-001" / "agent.toml")
    assert agent.mqtt.protocol == "3.1.1"
    assert agent.mqtt.topic_rules == "nats"
    assert len(agent.mqtt.broker_urls) == NODES
    assert agent.mqtt.url == f"mqtts://127.0.0.1:{mqtt_base + 1}"  # devices spread over nodes
    coordinator = tomllib.loads((root / "coordinator" / "coordinator.toml").read_text())
    assert coordinator["mqtt"]["protocol"] == "3.1.1"
    assert len(coordinator["mqtt"]["fallback_urls"]) == NODES - 1


def test_a_cluster_started_from_init_carries_a_device_update_over_mutual_tls(
    fleet: tuple[Path, int, int],
) -> None:
    root, _mqtt_base, nats_base = fleet
    agent = load_agent_config(root / "agents" / "dev-001" / "agent.toml")
    assert agent.mqtt.tls is not None
    with _running(root, nats_base):
        servers = [f"tls://127.0.0.1:{nats_base + k}" for k in range(NODES)]
        tls = _tls_context(root / "coordinator")
        source = JetStreamUpdateSource(servers, FLEET, tls=tls, name="init-worker")
        device = MqttClient(agent.mqtt, agent.device_id, on_message=lambda _t, _p: None)
        try:
            assert source.wait_ready(READY_S), "the ingest source did not connect over TLS"
            device.start(wait_s=READY_S)
            delivery = device.publish(update_topic(FLEET, agent.device_id), b"signed update")
            assert delivery.wait(READY_S)
            assert delivery.ok, delivery
            got = []
            deadline = time.monotonic() + 60.0
            while not got and time.monotonic() < deadline:
                got = source.fetch(10, 1.0)
            assert [(m.topic, m.payload) for m in got] == [
                (update_topic(FLEET, agent.device_id), b"signed update")
            ]
            got[0].ack()

            # Without a client certificate the MQTT listener refuses the connection.
            anonymous = MqttClient(
                MqttSettings(
                    url=agent.mqtt.url,
                    protocol="3.1.1",
                    tls=TlsSettings(ca_file=agent.mqtt.tls.ca_file),
                ),
                "anonymous",
                on_message=lambda _t, _p: None,
            )
            with pytest.raises(MqttTimeoutError):
                anonymous.start(wait_s=8.0)
            anonymous.stop(flush_s=0.1)
        finally:
            device.stop(flush_s=0.5)
            source.close()
