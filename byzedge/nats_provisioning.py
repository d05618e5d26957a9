"""``byzedge init --broker nats``: the configs of a NATS cluster carrying a fleet's MQTT.

Written beside the fleet's CA, for ``--nodes N`` nodes (three survive one failure)::

    DIR/broker/ca.crt, server.crt, server.key     one server certificate for every node
    DIR/broker/nats/nK.conf                       `nats-server -c DIR/broker/nats/nK.conf`
    DIR/broker/nats/nK/                           node K's JetStream store
    DIR/systemd/byzedge-nats-nK.service           one unit per node

Each node has clustered JetStream, the MQTT listener (mutual TLS with the fleet CA: a
device presents its certificate as it does to mosquitto), the NATS client port (mutual
TLS too: the coordinator's ingest workers and its leader lease connect there with the
coordinator's certificate), cluster routes to every node, and HTTP monitoring on loopback.
The design and its limits on nats-server 2.9 are in scale-out.md; in short: MQTT 3.1.1
only (the devices' ``protocol`` is pinned), no ``.`` in fleet or device ids, and no
per-device topic ACL here (any device certificate may publish on any topic; the
coordinator's signature checks still refuse another device's update).

Nodes on one host (the default) take consecutive ports: MQTT ``port + K``, NATS clients
``nats_port + K``, routes ``nats_port + 2000 + K``, monitoring ``nats_port + 4000 + K``.
With ``node_hosts`` (one host per node) every node uses the base ports.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["NatsNodePlan", "nats_node_config", "nats_unit", "plan_nodes"]

_CLUSTER_OFFSET = 2000
_HTTP_OFFSET = 4000
NATS_SERVER_BIN = "/usr/sbin/nats-server"


@dataclass(frozen=True, slots=True)
class NatsNodePlan:
    """Where one node listens."""

    name: str
    host: str
    mqtt_port: int
    client_port: int
    cluster_port: int
    http_port: int

    @property
    def mqtt_url(self) -> str:
        """The node's MQTT URL as devices write it (mutual TLS)."""
        shown = f"[{self.host}]" if ":" in self.host else self.host
        return f"mqtts://{shown}:{self.mqtt_port}"

    @property
    def nats_url(self) -> str:
        """The node's NATS URL as the coordinator writes it (mutual TLS)."""
        shown = f"[{self.host}]" if ":" in self.host else self.host
        return f"tls://{shown}:{self.client_port}"


def plan_nodes(
    host: str, mqtt_port: int, nats_port: int, nodes: int, node_hosts: Sequence[str] = ()
) -> list[NatsNodePlan]:
    """Every node's name, host and ports (see the module notes)."""
    plans = []
    for index in range(nodes):
        if node_hosts:
            node_host, offset = node_hosts[index], 0
        else:
            node_host, offset = host, index
        plans.append(
            NatsNodePlan(
                name=f"n{index}",
                host=node_host,
                mqtt_port=mqtt_port + offset,
                client_port=nats_port + offset,
                cluster_port=nats_port + _CLUSTER_OFFSET + offset,
                http_port=nats_port + _HTTP_OFFSET + offset,
            )
        )
    return plans


def _listen(bind: str, port: int) -> str:
    address = bind or "0.0.0.0"  # noqa: S104 - an empty bind means every interface, on purpose
    shown = f"[{address}]" if ":" in address else address
    return f'"{shown}:{port}"'


def nats_node_config(
    fleet: str, node: NatsNodePlan, plans: Sequence[NatsNodePlan], broker: Path, bind: str
) -> str:
    """One node's nats-server configuration (absolute paths, like mosquitto.conf)."""
    routes = ", ".join(f'"nats-route://{p.host}:{p.cluster_port}"' for p in plans)
    tls = (
        f'    cert_file: "{broker / "server.crt"}"\n'
        f'    key_file: "{broker / "server.key"}"\n'
        f'    ca_file: "{broker / "ca.crt"}"\n'
        "    verify: true\n"
        "    timeout: 5\n"
    )
    store = broker / "nats" / node.name
    return f"""\
# nats-server node {node.name} of byzedge fleet {fleet}, written by `byzedge init`.
# Start:  nats-server -c {broker / "nats" / f"{node.name}.conf"}
# Check:  nats-server -t -c {broker / "nats" / f"{node.name}.conf"}
# Devices speak MQTT 3.1.1 with their fleet certificate to any node; the coordinator's
# ingest workers read the durable JetStream stream BYZ_UPDATES_{fleet} on the NATS port.

# Required by the MQTT listener and by clustered JetStream.
server_name: {node.name}

# NATS clients (the coordinator): mutual TLS with the fleet CA.
listen: {_listen(bind, node.client_port)}
tls {{
{tls}}}

# /jsz and /healthz for health checks, on loopback only.
http: "127.0.0.1:{node.http_port}"

jetstream {{
  store_dir: "{store}"
  max_mem: 256MB
  max_file: 8GB
}}

# Routes carry no TLS here: keep the route port on a private network (or add a tls block
# with certificates valid for both client and server use).
cluster {{
  name: byzedge-{fleet}
  listen: {_listen(bind, node.cluster_port)}
  routes: [ {routes} ]
}}

# Devices: MQTT 3.1.1 (nats-server 2.9 has no MQTT 5, no QoS 2), mutual TLS.
mqtt {{
  listen: {_listen(bind, node.mqtt_port)}
  tls {{
{tls}  }}
}}
"""


def nats_unit(fleet: str, node: NatsNodePlan, config: Path) -> str:
    """A systemd unit for one node."""
    return f"""\
# NATS node {node.name} of byzedge fleet {fleet} (clustered JetStream, MQTT listener).
# Install (as root): cp byzedge-nats-{node.name}.service /etc/systemd/system/ &&
#   systemctl daemon-reload && systemctl enable --now byzedge-nats-{node.name}
# Never delete the JetStream store of a node that is down: it rejoins and catches up.

[Unit]
Description=NATS node {node.name} of byzedge fleet {fleet}
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
ExecStart={NATS_SERVER_BIN} -c {config}
ExecReload=/bin/kill -HUP $MAINPID
# SIGTERM shuts JetStream down cleanly; give it time to flush the store.
KillSignal=SIGTERM
TimeoutStopSec=60s
Restart=on-failure
RestartSec=5s
LimitNOFILE=65536
NoNewPrivileges=yes
ProtectSystem=full
PrivateTmp=yes

[Install]
WantedBy=multi-user.target
"""
