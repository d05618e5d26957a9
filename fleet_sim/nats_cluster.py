"""A private three-node NATS cluster (clustered JetStream, MQTT on every node) on loopback.

Tests and benchmarks start one with :func:`start_nats_cluster`: each node gets its own
free ports (client, cluster route, MQTT, HTTP monitoring), its own JetStream store in a
work folder, and the same route list, so the three form one cluster (``cluster.name`` and
``server_name`` are both required by clustered JetStream and by the MQTT listener on
nats-server 2.9). The cluster counts as up once every node reports a JetStream meta
leader on ``/jsz`` and has answered one MQTT CONNECT: the first CONNECT on a node creates
the ``$MQTT_*`` streams, a JetStream round trip with a 4 s server-side timeout, which a
device should not be the one to pay (scale-out.md, sections 2 and 11).

A node can be SIGKILLed or stopped and started again with its config and store intact.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from byzedge.fleet_sim.brokers import BrokerError, free_port

__all__ = [
    "NatsCluster",
    "NatsNode",
    "find_nats_server",
    "node_config",
    "start_nats_cluster",
]

_HOST = "127.0.0.1"
_CLUSTER_NAME = "byz"
_START_TIMEOUT_S = 60.0
_STOP_TIMEOUT_S = 15.0
# Debian installs the daemon in sbin, which is not on a normal user's PATH.
_NATS_FALLBACKS = ("/usr/sbin/nats-server", "/usr/bin/nats-server", "/usr/local/bin/nats-server")


def find_nats_server() -> Path | None:
    """The ``nats-server`` binary on PATH or in Debian's locations, or ``None``."""
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    for candidate in _NATS_FALLBACKS:
        if Path(candidate).is_file():
            return Path(candidate)
    return None


def node_config(
    *,
    name: str,
    client_port: int,
    cluster_port: int,
    mqtt_port: int,
    http_port: int,
    store_dir: Path,
    routes: Sequence[int],
    host: str = _HOST,
) -> str:
    """One node's nats-server configuration (scale-out.md, section 2).

    Parameters
    ----------
    name:
        The node's ``server_name`` (required by MQTT and by clustered JetStream).
    client_port, cluster_port, mqtt_port, http_port:
        NATS clients, cluster routes, MQTT clients, HTTP monitoring (``/jsz``).
    store_dir:
        The node's JetStream store.
    routes:
        The cluster ports of every node, this one included (the same list everywhere).
    host:
        The interface every listener binds.
    """
    route_list = ", ".join(f"nats-route://{host}:{port}" for port in routes)
    return (
        f"server_name: {name}\n"
        f"listen: {host}:{client_port}\n"
        f"http: {host}:{http_port}\n"
        f'jetstream {{ store_dir: "{store_dir}", max_mem: 64MB, max_file: 1GB }}\n'
        "cluster {\n"
        f"  name: {_CLUSTER_NAME}\n"
        f"  listen: {host}:{cluster_port}\n"
        f"  routes: [ {route_list} ]\n"
        "}\n"
        f"mqtt {{ listen: {host}:{mqtt_port} }}\n"
    )


@dataclass
class NatsNode:
    """One nats-server process of the cluster, with its ports and files."""

    name: str
    client_port: int
    cluster_port: int
    mqtt_port: int
    http_port: int
    workdir: Path
    binary: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def config_path(self) -> Path:
        """The node's nats-server configuration file."""
        return self.workdir / "nats.conf"

    @property
    def log_path(self) -> Path:
        """The node's log file (stdout and stderr)."""
        return self.workdir / "nats.log"

    @property
    def nats_url(self) -> str:
        """Where NATS clients (nats-py) connect."""
        return f"nats://{_HOST}:{self.client_port}"

    @property
    def mqtt_url(self) -> str:
        """Where MQTT clients (devices) connect."""
        return f"mqtt://{_HOST}:{self.mqtt_port}"

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start the process (the config and store stay from an earlier run)."""
        if self.running:
            return
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(self.binary), "-c", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        """SIGKILL, as a crash or a power cut would."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM (a clean shutdown), SIGKILL if it does not exit in time."""
        self._signal(signal.SIGTERM)

    def _signal(self, number: int) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(number)
        try:
            process.wait(timeout=_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def jsz(self) -> dict[str, Any] | None:
        """The node's ``/jsz`` report, or ``None`` while it does not answer."""
        url = f"http://{_HOST}:{self.http_port}/jsz"
        try:
            with urllib.request.urlopen(url, timeout=2.0) as response:
                report = json.loads(response.read())
        except (OSError, urllib.error.URLError, ValueError):
            return None
        return report if isinstance(report, dict) else None

    def log_tail(self, size: int = 3000) -> str:
        """The last ``size`` characters of the node's log."""
        try:
            return self.log_path.read_text(errors="replace")[-size:]
        except OSError:
            return ""


@dataclass
class NatsCluster:
    """Three nats-server nodes forming one JetStream cluster, each with an MQTT listener."""

    nodes: list[NatsNode]
    workdir: Path
    _stopped: bool = field(default=False, repr=False)

    @property
    def nats_urls(self) -> list[str]:
        """Every node's NATS URL (a client's server list)."""
        return [node.nats_url for node in self.nodes]

    @property
    def mqtt_urls(self) -> list[str]:
        """Every node's MQTT URL (a device's broker list)."""
        return [node.mqtt_url for node in self.nodes]

    def node(self, name: str) -> NatsNode:
        """The node called ``name``."""
        return next(node for node in self.nodes if node.name == name)

    def meta_leader(self) -> str | None:
        """The JetStream meta leader's server name, as the running nodes report it."""
        for node in self.nodes:
            if not node.running:
                continue
            report = node.jsz() or {}
            leader = (report.get("meta_cluster") or {}).get("leader")
            if leader:
                return str(leader)
        return None

    def stream_leader(self, stream: str) -> str | None:
        """The server name leading ``stream``, or ``None`` when nobody reports one."""
        for node in self.nodes:
            if not node.running:
                continue
            report = _stream_report(node, stream)
            leader = ((report or {}).get("cluster") or {}).get("leader")
            if leader:
                return str(leader)
        return None

    def stream_state(self, stream: str) -> dict[str, Any]:
        """``stream``'s state (``messages``, ``first_seq``, ``last_seq``...) as a node reports it.

        Empty when no running node reports the stream.
        """
        for node in self.nodes:
            if node.running:
                report = _stream_report(node, stream)
                if report is not None and report.get("state"):
                    return dict(report["state"])
        return {}

    def wait_ready(self, timeout_s: float = _START_TIMEOUT_S) -> None:
        """Wait until every running node sees a meta leader and accepts an MQTT CONNECT.

        Raises
        ------
        BrokerError
            With every node's log tail, when the cluster is not ready in time.
        """
        deadline = time.monotonic() + timeout_s
        pending = [node for node in self.nodes if node.running]
        while pending:
            node = pending[0]
            if node.process is not None and node.process.poll() is not None:
                self._fail(f"node {node.name} exited with {node.process.returncode}")
            report = node.jsz() or {}
            meta = report.get("meta_cluster") or {}
            if meta.get("leader") and _mqtt_connects(node.mqtt_port):
                pending.pop(0)
                continue
            if time.monotonic() > deadline:
                self._fail(f"node {node.name} not ready within {timeout_s:.0f} s: /jsz {meta}")
            time.sleep(0.2)

    def restart(self, name: str, timeout_s: float = _START_TIMEOUT_S) -> None:
        """Start a stopped or killed node again and wait until the cluster is ready."""
        self.node(name).start()
        self.wait_ready(timeout_s)

    def stop(self) -> None:
        """Stop every node (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        for node in self.nodes:
            node.stop()

    def logs(self) -> str:
        """Every node's log tail, for failure messages."""
        return "\n".join(f"--- {node.name}\n{node.log_tail()}" for node in self.nodes)

    def _fail(self, message: str) -> None:
        raise BrokerError(f"{message}\n{self.logs()}")


def _stream_report(node: NatsNode, stream: str) -> dict[str, Any] | None:
    url = f"http://{_HOST}:{node.http_port}/jsz?streams=true"
    try:
        with urllib.request.urlopen(url, timeout=2.0) as response:
            report = json.loads(response.read())
    except (OSError, urllib.error.URLError, ValueError):
        return None
    for account in report.get("account_details") or []:
        for detail in account.get("stream_detail") or []:
            if detail.get("name") == stream:
                return dict(detail)
    return None


def _mqtt_connects(port: int, timeout_s: float = 10.0) -> bool:
    """Whether the node answers an MQTT 3.1.1 CONNECT with success (it warms the node)."""
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"byzedge-warmup-{port}",
        protocol=paho.MQTTv311,
        reconnect_on_failure=False,
    )
    accepted: list[bool] = []
    client.on_connect = lambda _c, _u, _f, reason, _p: accepted.append(not reason.is_failure)
    try:
        client.connect(_HOST, port, keepalive=10)
    except OSError:
        return False
    deadline = time.monotonic() + timeout_s
    try:
        while not accepted and time.monotonic() < deadline:
            if client.loop(timeout=0.2) != paho.MQTT_ERR_SUCCESS:
                return False
        if accepted and accepted[0]:
            client.disconnect()  # sends DISCONNECT and closes the socket
            return True
        return False
    finally:
        sock = client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()


@contextmanager
def start_nats_cluster(workdir: Path, size: int = 3) -> Iterator[NatsCluster]:
    """Start ``size`` nodes in ``workdir`` on free loopback ports; stop them on exit.

    Raises
    ------
    BrokerError
        When nats-server is not installed or the cluster does not come up.
    """
    binary = find_nats_server()
    if binary is None:
        msg = "nats-server is not installed: run scripts/setup or 'apt-get install -y nats-server'"
        raise BrokerError(msg)
    ports = [[free_port() for _ in range(4)] for _ in range(size)]
    routes = [node_ports[1] for node_ports in ports]
    nodes = []
    for index, (client_port, cluster_port, mqtt_port, http_port) in enumerate(ports):
        name = f"n{index}"
        folder = workdir / name
        folder.mkdir(parents=True, exist_ok=True)
        node = NatsNode(name, client_port, cluster_port, mqtt_port, http_port, folder, binary)
        node.config_path.write_text(
            node_config(
                name=name,
                client_port=client_port,
                cluster_port=cluster_port,
                mqtt_port=mqtt_port,
                http_port=http_port,
                store_dir=folder / "jetstream",
                routes=routes,
            )
        )
        nodes.append(node)
    cluster = NatsCluster(nodes, workdir)
    try:
        for node in nodes:
            node.start()
        cluster.wait_ready()
        yield cluster
    finally:
        cluster.stop()
