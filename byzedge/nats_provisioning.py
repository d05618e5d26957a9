"""``byzedge init --broker nats``: the configs of a NATS cluster carrying a fleet's MQTT.

Written beside the fleet's CA, for ``--nodes N`` nodes (three survive one failure)::

    DIR/broker/ca.crt, server.crt, server.key     one server certificate for every node
    DIR/broker/nats/nK.conf                       `nats-server -c DIR/broker/nats/nK.conf`
    DIR/broker/nats/users.conf                    who may do what (included by every node)
    DIR/broker/nats/nK/                           node K's JetStream store
    DIR/systemd/byzedge-nats-nK.service           one unit per node

Each node has clustered JetStream, the MQTT listener (mutual TLS with the fleet CA: a
device presents its certificate as it does to mosquitto), the NATS client port (mutual
TLS too: the coordinator's ingest workers and its leader lease connect there with the
coordinator's certificate), cluster routes to every node, and HTTP monitoring on loopback.
The design and its limits on nats-server 2.9 are in scale-out.md; in short: MQTT 3.1.1
only (the devices' ``protocol`` is pinned), and no ``.`` in fleet or device ids.

Authorization: both client listeners map a certificate to the user named by its subject
(``verify_and_map``; the fleet's certificates carry only ``CN=<id>``, so the user is
``"CN=<id>"``), and ``users.conf`` gives each user its subjects, as the mosquitto ACL
does: a device publishes only its own update and status and speaks MQTT only (its
certificate is refused on the NATS port, so it never reaches the JetStream API); the
ingest workers may create and consume the update stream but not delete it, nor touch
the leader lease or state; the coordinator holds those; the monitor reads. ``init
add-device`` and ``revoke-device`` rewrite ``users.conf``; the nodes apply it on reload
(SIGHUP): nats-server 2.9 reads no CRL, so a revoked device is refused because its user
is gone. What each user may do, and what is not enforced, is written in ``users.conf``.

Nodes on one host (the default) take consecutive ports: MQTT ``port + K``, NATS clients
``nats_port + K``, routes ``nats_port + 2000 + K``, monitoring ``nats_port + 4000 + K``.
With ``node_hosts`` (one host per node) every node uses the base ports.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "USERS_FILE",
    "NatsNodePlan",
    "nats_node_config",
    "nats_unit",
    "nats_users_config",
    "plan_nodes",
]

_CLUSTER_OFFSET = 2000
_HTTP_OFFSET = 4000
NATS_SERVER_BIN = "/usr/sbin/nats-server"
USERS_FILE = "users.conf"
"""Beside the node configs (``DIR/broker/nats/users.conf``), included by each of them."""
# The names the coordinator's NATS-client code uses (coordinator/cluster/nats_source.py,
# nats_lease.py, nats_state.py); the permissions below are scoped to them.
_DURABLE = "ingest"
_LEASE_BUCKET = "byzedge_leader"
_STATE_BUCKET = "byzedge_state"


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
        "    verify_and_map: true\n"
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

# Who may connect and what each may publish and subscribe: one user per certificate
# (verify_and_map below maps a client certificate's subject, "CN=<id>", to a user). The
# file is shared by every node and rewritten by `byzedge init add-device | revoke-device`;
# after a change, reload each node: nats-server --signal reload=<pid> (or SIGHUP,
# systemctl reload byzedge-nats-{node.name}). What it enforces is written at its top.
include "{USERS_FILE}"

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


def _permissions(publish: Sequence[str], subscribe: Sequence[str]) -> str:
    def block(subjects: Sequence[str]) -> str:
        if not subjects:
            # An empty allow list is no restriction at all on 2.9.10 (the monitor's
            # publishes went through with "allow: []"): deny everything instead.
            return '{ deny: [">"] }'
        listed = "".join(f'            "{subject}"\n' for subject in subjects)
        return "{ allow: [\n" + listed + "          ] }"

    return (
        "        permissions: {\n"
        f"          publish: {block(publish)}\n"
        f"          subscribe: {block(subscribe)}\n"
        "        }\n"
    )


def _user(
    name: str, note: str, publish: Sequence[str], subscribe: Sequence[str], *, nats: bool
) -> str:
    # Devices and the monitor speak MQTT only: their certificates are refused on the NATS
    # client port, so they never reach the JetStream API, $MQTT.sub.> or _INBOX.>.
    kinds = '"STANDARD", "MQTT"' if nats else '"MQTT"'
    comment = "".join(f"    # {line}\n" for line in textwrap.wrap(note, 84))
    return (
        comment + "    {\n"
        f'        user: "CN={name}"\n'
        f"        allowed_connection_types: [{kinds}]\n"
        + _permissions(publish, subscribe)
        + "    }\n"
    )


def nats_users_config(fleet: str, devices: Sequence[str]) -> str:
    """The ``authorization`` block every node includes: one user per fleet certificate.

    Parameters
    ----------
    fleet:
        The fleet (every subject is scoped to it).
    devices:
        The enrolled devices; a device missing here (revoked) is refused at connect.
    """
    base = f"byzedge.{fleet}"
    stream = f"BYZ_UPDATES_{fleet}"
    # A QoS 1 MQTT subscription is a JetStream consumer delivering to "$MQTT.sub.<id>",
    # which the server subscribes under the user's permissions (2.9.10 refuses the SUBACK
    # and logs a subscription violation without it). Publishing (QoS 0/1, retained) needs
    # only the topic's own subject: the copies into $MQTT_msgs/$MQTT_rmsgs are the
    # server's (tests/integration/test_nats_authorization.py).
    mqtt_sub = "$MQTT.sub.>"
    device_reads = [
        f"{base}.model",
        f"{base}.model.broadcast",
        f"{base}.model.resync",
        f"{base}.receipts",
        f"{base}.cluster.context",
        mqtt_sub,
    ]
    # The ingest source (nats_source.py): look up or create the update stream and its
    # durable pull consumer, pull, ack. Nothing that deletes, purges or edits a stream.
    ingest_api = [
        "$JS.API.INFO",
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.STREAM.CREATE.{stream}",
        f"$JS.API.CONSUMER.INFO.{stream}.{_DURABLE}",
        f"$JS.API.CONSUMER.CREATE.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}.{_DURABLE}",
        f"$JS.API.CONSUMER.CREATE.{stream}.{_DURABLE}.>",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{_DURABLE}",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{_DURABLE}",
        f"$JS.ACK.{stream}.{_DURABLE}.>",
    ]
    # The leader (nats_lease.py, nats_state.py) additionally holds the lease bucket and
    # the state object store: their streams (KV_/OBJ_), their write subjects ($KV., $O.)
    # and the consumers an object read creates (nats-py's subscribe first looks the
    # stream up by subject: STREAM.NAMES, which lists names only).
    leader_api = [
        "$JS.API.STREAM.NAMES",
        *(
            f"$JS.API.{call}.{kind}_{bucket}"
            for kind, bucket in (("KV", _LEASE_BUCKET), ("OBJ", _STATE_BUCKET))
            for call in ("STREAM.INFO", "STREAM.CREATE", "STREAM.MSG.GET", "STREAM.PURGE")
        ),
        *(
            f"$JS.API.DIRECT.GET.{kind}_{bucket}.>"
            for kind, bucket in (("KV", _LEASE_BUCKET), ("OBJ", _STATE_BUCKET))
        ),
        f"$JS.API.CONSUMER.CREATE.OBJ_{_STATE_BUCKET}",
        f"$JS.API.CONSUMER.CREATE.OBJ_{_STATE_BUCKET}.>",
        f"$JS.API.CONSUMER.DELETE.OBJ_{_STATE_BUCKET}.>",
        f"$JS.API.CONSUMER.INFO.OBJ_{_STATE_BUCKET}.>",
        f"$JS.FC.OBJ_{_STATE_BUCKET}.>",
        f"$KV.{_LEASE_BUCKET}.>",
        f"$O.{_STATE_BUCKET}.>",
    ]
    users = [
        _user(
            "coordinator",
            "The coordinator (leader): reads updates, statuses and partials, publishes the "
            "model, receipts and round context; on the NATS port the ingest source, the "
            "lease and the state store.",
            [
                f"{base}.model",
                f"{base}.model.broadcast",
                f"{base}.model.resync",
                f"{base}.coordinator.status",
                f"{base}.alerts",
                f"{base}.cluster.context",
                f"{base}.receipts",
                *ingest_api,
                *leader_api,
            ],
            [f"{base}.>", "_INBOX.>", mqtt_sub],
            nats=True,
        ),
        _user(
            _DURABLE,
            "Sharded ingest's workers: the update stream through its durable consumer, "
            "their partials out, the round context in. No lease, no state, no stream "
            "deletion.",
            [f"{base}.partial.>", *ingest_api],
            [f"{base}.cluster.context", f"{base}.receipts", "_INBOX.>", mqtt_sub],
            nats=True,
        ),
        _user(
            "monitor", "The operator's monitor: read-only.", [], [f"{base}.>", mqtt_sub], nats=False
        ),
    ]
    for device in devices:
        users.append(
            _user(
                device,
                f"Device {device}: its own update (and chunks below it) and status only.",
                [
                    f"{base}.update.{device}",
                    f"{base}.update.{device}.>",
                    f"{base}.status.{device}",
                ],
                device_reads,
                nats=False,
            )
        )
    return (
        _USERS_HEADER.format(fleet=fleet)
        + "authorization {\n  users = [\n"
        + "".join(users)
        + "  ]\n}\n"
    )


_USERS_HEADER = """\
# Users of byzedge fleet {fleet}'s NATS cluster, written by `byzedge init`, `init
# add-device` and `init revoke-device` (edits here are overwritten). Every node includes
# it; after a change reload each node (nats-server --signal reload=<pid>, or SIGHUP).
#
# Enforced, on the MQTT listener and the NATS client port alike (a client certificate
# from the fleet CA whose subject, "CN=<id>", is not listed is refused at connect):
# - a device publishes only on byzedge/{fleet}/update/<its id> (and below it) and
#   byzedge/{fleet}/status/<its id>, and reads only the model, broadcast, resync,
#   receipts and round-context topics; a publish elsewhere is dropped. Its certificate
#   is refused on the NATS port (an MQTT-only user), so it reaches no JetStream API: no
#   stream deletion, no lease, no state;
# - the ingest workers may look up, create and consume the update stream (never delete
#   or purge it), and may not touch the leader lease or state;
# - the coordinator holds the lease (KV byzedge_leader) and the state (object store
#   byzedge_state); it too may not delete or purge the update stream;
# - the monitor reads only;
# - a revoked device has no user here: after the reload its certificate is refused.
#
# What a client observes (nats-server 2.9.10): an MQTT publish outside its permissions
# is PUBACKed and dropped, and logged as a "Publish Violation"; the connection stays
# open. A subscription outside them gets a failed SUBACK (0x80). On the NATS port a
# refused call gets "-ERR Permissions Violation" and no reply. A reload closes the
# connections of a user it removed.
#
# Not enforced here:
# - nats-server 2.9 reads no CRL: revocation is this file plus a reload of every node,
#   and a node that was not reloaded still accepts the revoked certificate;
# - what a device's status says (only where it may publish); updates are signed and the
#   coordinator checks the signatures;
# - the NATS route port carries no TLS and no auth: keep it on a private network;
# - "$MQTT.sub.>" is granted to every user because a QoS 1 MQTT subscription delivers
#   through it; MQTT clients cannot subscribe "$MQTT/..." topics, but the coordinator's
#   and the workers' certificates could read other clients' QoS 1 deliveries through it
#   on the NATS port (they are the fleet's trusted accounts);
# - the server's own JetStream use for MQTT sessions and retained messages ($MQTT_*
#   streams) runs outside every user's permissions.

"""
