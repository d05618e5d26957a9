"""Fleet provisioning behind ``byzedge init``: CA, certificates, keys, broker and daemon configs.

A fleet folder (``DIR``) holds everything a fleet needs, written with :mod:`byzedge.daemon.pki`
(TLS, ECDSA P-256) and :mod:`byzedge.protocol.signing` (Ed25519 update/model signatures)::

    DIR/fleet.toml                     what init was asked (fleet, host, port...): read back
                                       by add-device and revoke-device
    DIR/ca/ca.crt, ca.key              the fleet CA (key 0600; keep this folder offline)
    DIR/ca/issued/<name>.crt           every certificate issued (what revocation looks up)
    DIR/ca/revoked.txt                 revoked certificates: serial, device id, time
    DIR/broker/mosquitto.conf          `mosquitto -c DIR/broker/mosquitto.conf`
    DIR/broker/acl                     the topic ACL (same rules as deploy/mosquitto/acl)
    DIR/broker/{ca.crt,server.crt,server.key,crl.pem}, data/, log/
    DIR/coordinator/coordinator.toml   + coordinator.key/.pub, tls/{ca.crt,client.crt,client.key}
    DIR/devices/<device-id>.pub        the enrolment folder (the coordinator's devices_dir)
    DIR/agents/<device-id>/agent.toml  + device.key/.pub, coordinator.pub, tls/...
    DIR/monitor/monitor.toml           + coordinator.pub, tls/...
    DIR/systemd/byzedge-coordinator.service, byzedge-agent.service
    DIR/coordinator/ingest/tls/...     with --workers K: the ingest workers' certificate (CN
                                       ingest), and DIR/systemd/byzedge-ingest@.service

With ``--broker nats`` the broker folder holds the cluster's node configs instead
(:mod:`byzedge.nats_provisioning`), and ``DIR/broker/nats/users.conf``, the per-certificate
permissions every node includes, which add-device and revoke-device rewrite.

Every config uses paths relative to its own folder, so a folder can be copied as a whole
(an agent's folder onto its device as ``/etc/byzedge/agent``, the coordinator's and the
enrolment folder as ``/etc/byzedge/coordinator`` and ``/etc/byzedge/devices``).
mosquitto.conf is the exception: mosquitto resolves relative paths against its working
directory, so its paths are absolute.

Ownership: private keys are 0600 and owned by whoever runs init. Run as root with a
``mosquitto`` user present, the broker folder, its key and its data/log folders belong to
that user, because mosquitto started as root drops to it *before* it reads the key.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import grp
import ipaddress
import json
import os
import pwd
import re
import shutil
import stat
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from byzedge.daemon import pki
from byzedge.nats_provisioning import (
    USERS_FILE,
    NatsNodePlan,
    nats_node_config,
    nats_unit,
    nats_users_config,
    plan_nodes,
)
from byzedge.protocol.chunking import DEFAULT_MAX_MESSAGE_BYTES
from byzedge.protocol.errors import TopicError
from byzedge.protocol.signing import SigningKey
from byzedge.protocol.topics import (
    update_topic,
    validate_device_id,
    validate_identifier,
    validate_nats_topic,
)

__all__ = [
    "ACL",
    "DEFAULT_PORT",
    "FleetSpec",
    "ProvisioningError",
    "Report",
    "add_device",
    "agent_unit",
    "coordinator_unit",
    "ingest_unit",
    "init_fleet",
    "next_device_id",
    "revoke_device",
]

DEFAULT_PORT = 8883
FLEET_FILE = "fleet.toml"
BROKER_USER = "mosquitto"
MAX_PACKET_SIZE = 262144
"""As deploy/mosquitto/byzedge.conf: above the default 128 KiB ``max_message_bytes``."""

_DEVICE_PATTERN = re.compile(r"^dev-(\d+)$")
# Everything init writes at the top of a fleet folder (what --force replaces).
_WRITTEN = (FLEET_FILE, "ca", "broker", "coordinator", "devices", "agents", "monitor", "systemd")

ACL = """\
# Topic ACL for a byzedge fleet (mosquitto acl_file); the same rules as
# deploy/mosquitto/acl. Usernames are certificate CNs (use_identity_as_username).
# Anything not granted is denied: a device publishing on another device's update topic
# has its message dropped (MQTT 5 clients get PUBACK "not authorized").

# Every client: write only its own update and status topics (%u = CN = device id), so
# device ids are never "coordinator" or "monitor"; read the signed global model (its
# signature, not the ACL, makes it trustworthy). Mosquitto warns that the model pattern
# has no %u or %c; that is intended.
pattern write byzedge/+/update/%u
pattern write byzedge/+/status/%u
pattern read byzedge/+/model
pattern read byzedge/+/model/broadcast
pattern read byzedge/+/model/resync
# Sharded ingest's receipts: which devices' updates the coordinator holds (signed).
pattern read byzedge/+/receipts

# The coordinator reads every update and status, and publishes the model, its round
# summaries and alerts.
user coordinator
topic read byzedge/+/update/+
topic read byzedge/+/status/+
topic readwrite byzedge/+/model
topic readwrite byzedge/+/model/broadcast
topic readwrite byzedge/+/model/resync
topic write byzedge/+/coordinator/status
topic write byzedge/+/alerts
# As the leader of sharded ingest: the workers' partials in, round context and receipts out.
topic read byzedge/+/partial/+
topic write byzedge/+/cluster/context
topic write byzedge/+/receipts

# Sharded ingest's workers (certificate CN ingest, one certificate per machine or worker):
# their share of the updates through an MQTT v5 shared subscription
# ($share/<group>/byzedge/<fleet>/update/+, which mosquitto checks as a read of the
# update topics), their partial aggregates, and the leader's round context and receipts.
user ingest
topic read byzedge/+/update/+
topic write byzedge/+/partial/+
topic read byzedge/+/cluster/context

# The operator's `byzedge monitor`: read-only view of the whole fleet.
user monitor
topic read byzedge/#
"""


class ProvisioningError(Exception):
    """A fleet folder cannot be written or changed as asked (one line, for humans)."""


@dataclass(frozen=True)
class FleetSpec:
    """What ``byzedge init`` was asked for; stored in ``DIR/fleet.toml``.

    Parameters
    ----------
    fleet:
        Fleet name (second level of every topic).
    host:
        Name or address devices use to reach the broker (certificate SAN, config URLs).
    port:
        The broker's TLS port.
    bind:
        Address the broker listens on; ``""`` for every interface.
    byzantine_defense:
        The coordinator's aggregation rule.
    workers:
        Sharded ingest: ingest workers beside the coordinator (``[cluster] workers``); 0
        for a single coordinator process.
    partitions:
        Number of digits shards agents are configured with (the initial device count).
    coordinator_settings:
        More keys of ``coordinator.toml`` (``rounds``, ``anomaly_threshold``,
        ``aggregation_config``, ...), written as given; tables become inline tables.
    agent_settings:
        More keys of every ``agent.toml`` (``model``, ``momentum1``, ``training``, ...);
        a ``data`` table joins the ``[data]`` table init writes.
    """

    fleet: str
    host: str
    port: int = DEFAULT_PORT
    bind: str = ""
    byzantine_defense: str = "clipping-vr"
    workers: int = 0
    partitions: int = 1
    coordinator_settings: Mapping[str, Any] = field(default_factory=dict)
    agent_settings: Mapping[str, Any] = field(default_factory=dict)
    broker: str = "mosquitto"
    nodes: int = 1
    nats_port: int = 4222
    node_hosts: tuple[str, ...] = ()

    def nats_nodes(self) -> list[NatsNodePlan]:
        """The NATS cluster's nodes (``broker = "nats"``): names, hosts and ports."""
        return plan_nodes(self.host, self.port, self.nats_port, self.nodes, self.node_hosts)


@dataclass
class Report:
    """What a provisioning step did, for the command to print."""

    devices: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def default_bind(host: str) -> str:
    """The listener address for ``host``: itself if an IP, loopback for localhost, else all."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        # A DNS name may resolve to another address on the broker's own host (NAT, split
        # DNS), so a name binds every interface; pass --bind to narrow it.
        return ""
    return host


# -- paths ----------------------------------------------------------------------------------


def _toml_string(value: str) -> str:
    # JSON string escapes are valid TOML basic-string escapes.
    return json.dumps(value)


def _toml_value(value: object) -> str:
    """One TOML value: a string, bool, number, list, or a table as an inline table."""
    if isinstance(value, str | Path):
        return _toml_string(str(value))
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    msg = f"cannot write {value!r} ({type(value).__name__}) to a config"
    raise ProvisioningError(msg)


def _toml_lines(settings: Mapping[str, Any], skip: tuple[str, ...] = ()) -> str:
    """``key = value`` lines, one per setting (``None`` means unset: no line)."""
    return "".join(
        f"{key} = {_toml_value(value)}\n"
        for key, value in settings.items()
        if key not in skip and value is not None
    )


def _url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"mqtts://{shown}:{port}"


def _mkdir(path: Path, mode: int = 0o755) -> None:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(mode)


def _write_text(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)


def _copy_public(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    target.chmod(0o644)


# -- the fleet spec -------------------------------------------------------------------------


def _write_spec(root: Path, spec: FleetSpec) -> None:
    text = (
        "# Written by `byzedge init`; read by `byzedge init add-device | revoke-device`.\n"
        f"fleet = {_toml_string(spec.fleet)}\n"
        f"host = {_toml_string(spec.host)}\n"
        f"port = {spec.port}\n"
        f"bind = {_toml_string(spec.bind)}\n"
        f"byzantine_defense = {_toml_string(spec.byzantine_defense)}\n"
        f"partitions = {spec.partitions}\n"
    )
    if spec.broker != "mosquitto":
        text += (
            f"broker = {_toml_string(spec.broker)}\n"
            f"nodes = {spec.nodes}\n"
            f"nats_port = {spec.nats_port}\n"
            f"node_hosts = {_toml_value(list(spec.node_hosts))}\n"
        )
    # What init was given from Python (byzedge.init), so add-device writes the same.
    for table, settings in (
        ("coordinator", spec.coordinator_settings),
        ("agent", spec.agent_settings),
    ):
        if settings:
            text += f"\n[{table}]\n" + _toml_lines(settings)
    _write_text(root / FLEET_FILE, text)


def read_spec(root: Path) -> FleetSpec:
    """Read ``DIR/fleet.toml``.

    Raises
    ------
    ProvisioningError
        When ``root`` is not a fleet folder written by ``byzedge init``.
    """
    path = root / FLEET_FILE
    try:
        with path.open("rb") as handle:
            raw = tomllib.load(handle)
        return FleetSpec(
            fleet=str(raw["fleet"]),
            host=str(raw["host"]),
            port=int(raw["port"]),
            bind=str(raw.get("bind", "")),
            byzantine_defense=str(raw.get("byzantine_defense", "clipping-vr")),
            partitions=int(raw.get("partitions", 1)),
            coordinator_settings=dict(raw.get("coordinator", {})),
            agent_settings=dict(raw.get("agent", {})),
            broker=str(raw.get("broker", "mosquitto")),
            nodes=int(raw.get("nodes", 1)),
            nats_port=int(raw.get("nats_port", 4222)),
            node_hosts=tuple(str(host) for host in raw.get("node_hosts", ())),
        )
    except FileNotFoundError as exc:
        msg = (
            f"{root} is not a fleet folder ({FLEET_FILE} is missing); create one with byzedge init"
        )
        raise ProvisioningError(msg) from exc
    except (OSError, tomllib.TOMLDecodeError, KeyError, ValueError) as exc:
        msg = f"{path}: {exc}"
        raise ProvisioningError(msg) from exc


def _validate_spec(spec: FleetSpec, devices: int) -> None:
    try:
        validate_identifier(spec.fleet, "fleet")
    except TopicError as exc:
        raise ProvisioningError(str(exc)) from exc
    if not 1 <= spec.port <= 65535:
        msg = f"--port {spec.port}: not a TCP port"
        raise ProvisioningError(msg)
    if devices < 0:
        msg = f"--devices {devices}: must be 0 or more"
        raise ProvisioningError(msg)
    if not spec.host or any(char.isspace() or char in "/#+" for char in spec.host):
        msg = f"--host {spec.host!r}: not a host name or address"
        raise ProvisioningError(msg)
    _validate_defense(spec)
    if not 0 <= spec.workers <= 64:
        msg = f"--workers {spec.workers}: from 0 (a single coordinator process) to 64"
        raise ProvisioningError(msg)
    _validate_nats(spec)


def _validate_nats(spec: FleetSpec) -> None:
    if spec.broker not in {"mosquitto", "nats"}:
        msg = f"--broker {spec.broker!r}: use mosquitto or nats"
        raise ProvisioningError(msg)
    if spec.broker != "nats":
        return
    try:
        validate_nats_topic(update_topic(spec.fleet, "dev-000"))
    except TopicError as exc:
        raise ProvisioningError(str(exc)) from exc
    if not 1 <= spec.nodes <= 9:
        msg = f"--nodes {spec.nodes}: a NATS cluster of 1 to 9 nodes (3 survive one failure)"
        raise ProvisioningError(msg)
    if spec.node_hosts and len(spec.node_hosts) != spec.nodes:
        msg = f"--node-hosts names {len(spec.node_hosts)} hosts for {spec.nodes} nodes"
        raise ProvisioningError(msg)
    offset = 0 if spec.node_hosts else spec.nodes - 1
    if not 1 <= spec.nats_port <= 65535 - 4000 - offset or spec.port + offset > 65535:
        msg = f"--nats-port {spec.nats_port} / --port {spec.port}: ports out of range"
        raise ProvisioningError(msg)


def _validate_defense(spec: FleetSpec) -> None:
    from pydantic import ValidationError  # noqa: PLC0415

    from byzedge.coordinator.aggregation import AGGREGATORS  # noqa: PLC0415
    from byzedge.coordinator.config import CoordinatorConfig  # noqa: PLC0415

    if spec.byzantine_defense not in AGGREGATORS:
        known = ", ".join(sorted(AGGREGATORS))
        msg = f"--byzantine-defense {spec.byzantine_defense!r}: unknown rule; known: {known}"
        raise ProvisioningError(msg)
    try:  # a rule that cannot run with default hyperparameters fails here, not at run time
        CoordinatorConfig.model_validate(
            {
                "fleet": spec.fleet,
                "signing_key": "coordinator.key",
                "devices_dir": "devices",
                "state_dir": "state",
                "byzantine_defense": spec.byzantine_defense,
                **spec.coordinator_settings,
            }
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        if spec.coordinator_settings and where:
            msg = f"coordinator {where}: {first['msg']}"
        else:
            msg = f"--byzantine-defense {spec.byzantine_defense!r}: {first['msg']}"
        raise ProvisioningError(msg) from exc
    _validate_agent(spec)


def _validate_agent(spec: FleetSpec) -> None:
    """The agent settings as an ``agent.toml`` would hold them (before writing any)."""
    if not spec.agent_settings:
        return
    from pydantic import ValidationError  # noqa: PLC0415

    from byzedge.edge_agent.config import AgentConfig  # noqa: PLC0415

    settings = dict(spec.agent_settings)
    data = {"num_partitions": 1, "partition_index": 0, **settings.pop("data", {})}
    try:
        AgentConfig.model_validate(
            {
                "fleet": spec.fleet,
                "device_id": "dev-000",
                "signing_key": "device.key",
                "coordinator_key": "coordinator.pub",
                "state_dir": "state",
                "data": data,
                **settings,
            }
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ProvisioningError(f"agent {where}: {first['msg']}") from exc


# -- the CA ---------------------------------------------------------------------------------


def _load_ca(root: Path) -> pki.Issued:
    ca_dir = root / "ca"
    try:
        key = pki.load_private_key(ca_dir / "ca.key")
        certificate = pki.load_certificate(ca_dir / "ca.crt")
    except (OSError, ValueError) as exc:
        msg = f"cannot load the fleet CA from {ca_dir}: {exc}"
        raise ProvisioningError(msg) from exc
    return pki.Issued(key, certificate)


def _issue_client(root: Path, ca: pki.Issued, name: str, tls_dir: Path) -> None:
    issued = pki.issue_certificate(ca, name, usage="client")
    _copy_public(root / "ca" / "ca.crt", tls_dir / "ca.crt")
    pki.write_certificate(tls_dir / "client.crt", issued.certificate)
    pki.write_private_key(tls_dir / "client.key", issued.key)
    pki.write_certificate(root / "ca" / "issued" / f"{name}.crt", issued.certificate)


def _revoked_entries(root: Path) -> list[tuple[int, str, dt.datetime]]:
    path = root / "ca" / "revoked.txt"
    entries: list[tuple[int, str, dt.datetime]] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return entries
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.startswith("#"):
            continue
        try:
            serial, device_id, when = line.split()
            entries.append((int(serial, 16), device_id, dt.datetime.fromisoformat(when)))
        except ValueError as exc:
            msg = f"{path}:{number}: expected 'SERIAL DEVICE-ID TIME', got {line!r}"
            raise ProvisioningError(msg) from exc
    return entries


def _write_crl(root: Path, ca: pki.Issued) -> None:
    entries = _revoked_entries(root)
    crl = pki.build_crl(
        ca, [(serial, when) for serial, _, when in entries], number=len(entries) + 1
    )
    pki.write_crl(root / "broker" / "crl.pem", crl)


# -- broker ---------------------------------------------------------------------------------


def _broker_config(root: Path, spec: FleetSpec) -> str:
    broker = root / "broker"
    listener = f"listener {spec.port} {spec.bind}".rstrip()
    return f"""\
# mosquitto 2.x broker for byzedge fleet {spec.fleet}, written by `byzedge init`.
# Start:  mosquitto -c {broker / "mosquitto.conf"}
# Reload (re-reads the CRL after `byzedge init revoke-device`): restart it, or SIGHUP.
#
# Paths are absolute because mosquitto resolves relative ones against its working
# directory: edit them if you move the fleet folder. Started as root, mosquitto drops to
# the user '{BROKER_USER}' before it reads its key, so this folder, the key and data/, log/
# belong to that user (byzedge init does this when run as root).
#
# Identity: the CN of a client's certificate is its MQTT user name
# (use_identity_as_username): a device id, `coordinator` or `monitor`. The ACL's %u
# patterns rely on that mapping.

per_listener_settings false
allow_anonymous false
acl_file {broker / "acl"}

# Mutual TLS only; no plain-text listener is opened.
{listener}
protocol mqtt
cafile {broker / "ca.crt"}
certfile {broker / "server.crt"}
keyfile {broker / "server.key"}
crlfile {broker / "crl.pem"}
require_certificate true
use_identity_as_username true

# byzedge chunks messages above max_message_bytes (128 KiB by default) itself; keep this
# above it, since paho ignores the broker's limit and would resend forever.
max_packet_size {MAX_PACKET_SIZE}
set_tcp_nodelay true
max_inflight_messages 20
max_queued_messages 1000
persistent_client_expiration 7d

# Retained models and device statuses survive broker restarts.
persistence true
persistence_location {broker / "data"}/
autosave_interval 300

log_dest file {broker / "log" / "mosquitto.log"}
log_type error
log_type warning
log_type notice
log_type information
log_timestamp_format %Y-%m-%dT%H:%M:%S
"""


def _broker_account() -> tuple[int, int] | None:
    """``(uid, gid)`` of the user mosquitto drops to, when we run as root and it exists."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(BROKER_USER)
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


def _chown_broker(root: Path, account: tuple[int, int]) -> None:
    uid, gid = account
    broker = root / "broker"
    for path in (broker, broker / "server.key", broker / "data", broker / "log"):
        os.chown(path, uid, gid)


def untraversable_parents(folder: Path, user: str = BROKER_USER) -> list[Path]:
    """The folders on the way to ``folder`` (itself included) that ``user`` cannot enter.

    Empty when ``user`` does not exist or when we are not root (mosquitto then runs as us).
    """
    if os.geteuid() != 0:
        return []
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return []
    groups = {entry.pw_gid} | {g.gr_gid for g in grp.getgrall() if user in g.gr_mem}
    blocked: list[Path] = []
    for path in [*reversed(folder.parents), folder]:
        try:
            info = path.stat()
        except OSError:
            continue
        if info.st_uid == entry.pw_uid:
            allowed = bool(info.st_mode & stat.S_IXUSR)
        elif info.st_gid in groups:
            allowed = bool(info.st_mode & stat.S_IXGRP)
        else:
            allowed = bool(info.st_mode & stat.S_IXOTH)
        if not allowed:
            blocked.append(path)
    return blocked


def _write_broker(root: Path, spec: FleetSpec, ca: pki.Issued, report: Report) -> None:
    broker = root / "broker"
    _mkdir(broker, 0o750)
    _mkdir(broker / "data", 0o700)
    _mkdir(broker / "log", 0o700)
    hosts = [spec.host, "127.0.0.1", "localhost"]
    server = pki.issue_certificate(ca, spec.host, usage="server", hosts=hosts)
    _copy_public(root / "ca" / "ca.crt", broker / "ca.crt")
    pki.write_certificate(broker / "server.crt", server.certificate)
    pki.write_private_key(broker / "server.key", server.key)
    pki.write_certificate(root / "ca" / "issued" / "broker.crt", server.certificate)
    _write_text(broker / "acl", ACL)
    _write_text(broker / "mosquitto.conf", _broker_config(root, spec))
    _write_crl(root, ca)
    account = _broker_account()
    if account is not None:
        _chown_broker(root, account)
    elif os.geteuid() == 0:
        report.warnings.append(
            f"there is no '{BROKER_USER}' user: nothing was chowned; mosquitto started as "
            "root will fail to read broker/server.key unless it runs as root ('user root')"
        )
    blocked = untraversable_parents(broker)
    if blocked:
        names = " ".join(str(path) for path in blocked)
        report.warnings.append(
            f"user {BROKER_USER} cannot enter {names}, so mosquitto cannot read "
            f"{broker}: run `chmod o+x {names}` or put the fleet folder elsewhere"
        )


def _write_nats_broker(root: Path, spec: FleetSpec, ca: pki.Issued) -> None:
    """One server certificate and one config per NATS node (see byzedge.nats_provisioning)."""
    broker = root / "broker"
    _mkdir(broker, 0o750)
    _mkdir(broker / "nats", 0o750)
    nodes = spec.nats_nodes()
    hosts = list(dict.fromkeys([spec.host, *(node.host for node in nodes), "127.0.0.1"]))
    hosts.append("localhost")
    server = pki.issue_certificate(ca, spec.host, usage="server", hosts=hosts)
    _copy_public(root / "ca" / "ca.crt", broker / "ca.crt")
    pki.write_certificate(broker / "server.crt", server.certificate)
    pki.write_private_key(broker / "server.key", server.key)
    pki.write_certificate(root / "ca" / "issued" / "broker.crt", server.certificate)
    for node in nodes:
        _mkdir(broker / "nats" / node.name, 0o700)
        config = nats_node_config(spec.fleet, node, nodes, broker, spec.bind)
        _write_text(broker / "nats" / f"{node.name}.conf", config)


def _write_nats_users(root: Path, spec: FleetSpec) -> None:
    """The users every node includes: the fleet's accounts and its enrolled devices."""
    if spec.broker != "nats":
        return
    path = root / "broker" / "nats" / USERS_FILE
    _write_text(path, nats_users_config(spec.fleet, device_ids(root)))


def _nats_reload_note(root: Path) -> str:
    return (
        f"rewrote {root / 'broker' / 'nats' / USERS_FILE}: reload every NATS node "
        "(nats-server --signal reload=<pid>, SIGHUP, or systemctl reload byzedge-nats-nK) "
        "to apply it"
    )


# -- configs --------------------------------------------------------------------------------


def _mqtt_table(spec: FleetSpec, first: int = 0) -> str:
    if spec.broker == "nats":
        return _nats_mqtt_table(spec, first)
    return (
        "[mqtt]\n"
        f"url = {_toml_string(_url(spec.host, spec.port))}\n"
        "\n"
        "# Mutual TLS: the certificate's CN is this account's broker user name.\n"
        "[mqtt.tls]\n"
        'ca_file = "tls/ca.crt"\n'
        'cert_file = "tls/client.crt"\n'
        'key_file = "tls/client.key"   # under systemd: --tls-key\n'
    )


def _nats_mqtt_table(spec: FleetSpec, first: int) -> str:
    """``[mqtt]`` for a NATS cluster: every node, starting at ``first`` (spreads devices)."""
    urls = [node.mqtt_url for node in spec.nats_nodes()]
    start = first % len(urls)
    urls = urls[start:] + urls[:start]
    return (
        "[mqtt]\n"
        "# A NATS cluster: the client moves to the next node when one fails.\n"
        f"url = {_toml_string(urls[0])}\n"
        f"fallback_urls = {_toml_value(urls[1:])}\n"
        '# nats-server 2.9 speaks MQTT 3.1.1 only, and drops a connection on a "." in a topic.\n'
        'protocol = "3.1.1"\n'
        'topic_rules = "nats"\n'
        "\n"
        "# Mutual TLS with the fleet CA.\n"
        "[mqtt.tls]\n"
        'ca_file = "tls/ca.crt"\n'
        'cert_file = "tls/client.crt"\n'
        'key_file = "tls/client.key"   # under systemd: --tls-key\n'
    )


def _nats_cluster_keys(spec: FleetSpec) -> str:
    """``[cluster]`` keys of a NATS cluster: the workers read a durable JetStream stream."""
    if spec.broker != "nats":
        return ""
    servers = _toml_value([node.nats_url for node in spec.nats_nodes()])
    return (
        "# On the NATS cluster the workers share a durable JetStream stream of the updates\n"
        "# (not $share, which nats-server 2.9 lacks); the leader holds a JetStream KV lease.\n"
        'broker = "nats"\n'
        f"nats_servers = {servers}\n"
    )


def _cluster_note(spec: FleetSpec) -> str:
    """The coordinator's sharded-ingest table for the NATS cluster, commented out."""
    if spec.broker != "nats" or spec.workers > 0:
        return ""
    servers = _toml_value([node.nats_url for node in spec.nats_nodes()])
    return (
        "\n# Sharded ingest on the NATS cluster: ingest workers share a durable JetStream\n"
        "# stream of the updates, the leader holds a JetStream key-value lease.\n"
        "# [cluster]\n"
        '# broker = "nats"\n'
        "# workers = 2\n"
        f"# nats_servers = {servers}\n"
    )


def _coordinator_config(spec: FleetSpec) -> str:
    return (
        f"# byzedge coordinator of fleet {spec.fleet}, written by `byzedge init`.\n"
        "# Check: byzedge coordinator check-config --config coordinator.toml [--online]\n"
        "# Run:   byzedge coordinator run --config coordinator.toml\n"
        "# Relative paths resolve against this file's folder. Every key is documented in\n"
        "# deploy/examples/coordinator.toml.\n"
        f"fleet = {_toml_string(spec.fleet)}\n"
        'signing_key = "coordinator.key"   # under systemd: --signing-key\n'
        'devices_dir = "../devices"        # one <device-id>.pub per enrolled device\n'
        'state_dir = "state"               # under systemd: --state-dir ${STATE_DIRECTORY}\n'
        f"byzantine_defense = {_toml_string(spec.byzantine_defense)}\n"
        + _toml_lines(spec.coordinator_settings)
        + "\n"
        "[metrics]\n"
        "enabled = true                    # Prometheus on 127.0.0.1:9464\n"
        + _cluster_note(spec)
        + "\n"
        + _mqtt_table(spec)
    )


def _agent_config(spec: FleetSpec, device_id: str, index: int, partitions: int) -> str:
    return (
        f"# byzedge agent {device_id} of fleet {spec.fleet}, written by `byzedge init`.\n"
        "# Check: byzedge agent check-config --config agent.toml [--online]\n"
        "# Run:   byzedge agent run --config agent.toml\n"
        "# Relative paths resolve against this file's folder. Every key is documented in\n"
        "# deploy/examples/agent.toml.\n"
        f"fleet = {_toml_string(spec.fleet)}\n"
        f"device_id = {_toml_string(device_id)}\n"
        'signing_key = "device.key"        # under systemd: --signing-key\n'
        'coordinator_key = "coordinator.pub"\n'
        'state_dir = "state"               # under systemd: --state-dir ${STATE_DIRECTORY}\n'
        + _toml_lines(spec.agent_settings, skip=("data",))
        + "\n"
        "# The bundled digits data set, cut in one shard per device.\n"
        "[data]\n"
        f"num_partitions = {partitions}\n"
        f"partition_index = {index}\n"
        + _toml_lines(spec.agent_settings.get("data", {}))
        + "\n"
        + _mqtt_table(spec, first=index)
    )


def _monitor_config(spec: FleetSpec) -> str:
    return (
        f"# byzedge monitor of fleet {spec.fleet}, written by `byzedge init`.\n"
        "# Run: byzedge monitor --config monitor.toml\n"
        f"fleet = {_toml_string(spec.fleet)}\n"
        'coordinator_key = "coordinator.pub"\n'
        "\n" + _mqtt_table(spec)
    )


# -- systemd --------------------------------------------------------------------------------

_HARDENING = """\
# Hardening (mqtt-and-edge.md \u00a75.2{exposure}).
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
{private_devices}ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
{proc}RestrictAddressFamilies={families}
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
{mdwe}SystemCallArchitectures=native
{syscalls}SystemCallFilter=@system-service
SystemCallFilter=~@privileged
SystemCallErrorNumber=EPERM
CapabilityBoundingSet=
AmbientCapabilities=
UMask=0077

[Install]
WantedBy=multi-user.target
"""

_BIN = "/opt/byzedge/venv/bin/byzedge"


def agent_unit() -> str:
    """The agent's systemd unit (also shipped as deploy/systemd/byzedge-agent.service)."""
    head = f"""\
# byzedge edge agent: trains locally, publishes signed updates, runs signed models only.
# Install on the device (as root), from a fleet folder made by `byzedge init`:
#   install -d -m 0755 /etc/byzedge && cp -a DIR/agents/<device-id> /etc/byzedge/agent
#   cp DIR/systemd/byzedge-agent.service /etc/systemd/system/
#   systemctl daemon-reload && systemctl enable --now byzedge-agent
# The keys stay root:root 0600 in /etc/byzedge/agent: systemd hands them to the dynamic
# user as credentials. Without mutual TLS, drop --tls-key and the mqtt.key credential.
# Check: systemd-analyze verify byzedge-agent.service
#        systemd-analyze security --offline=true byzedge-agent.service

[Unit]
Description=byzedge federated-learning agent
Wants=network-online.target time-sync.target
After=network-online.target time-sync.target
# Give up after 5 failed starts in 10 minutes rather than flapping forever.
StartLimitIntervalSec=600
StartLimitBurst=5

[Service]
# READY=1 is sent after the first broker CONNACK and the model load; WATCHDOG=1 from the
# main loop after a health check (daemon/systemd.py).
Type=notify
NotifyAccess=main
# The run-time paths come from systemd: ProtectSystem=strict makes /etc read-only, so the
# state lives in the StateDirectory, and the keys are read from the credentials folder.
ExecStart={_BIN} agent run --config /etc/byzedge/agent/agent.toml \\
    --state-dir ${{STATE_DIRECTORY}} \\
    --signing-key ${{CREDENTIALS_DIRECTORY}}/device.key \\
    --tls-key ${{CREDENTIALS_DIRECTORY}}/mqtt.key
# SIGHUP: logged and ignored (an agent reloads nothing); `systemctl restart` applies changes.
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
RestartSec=10s
# Covers model load and the first broker connect on a slow device.
TimeoutStartSec=120s
TimeoutStopSec=30s
WatchdogSec=60s

DynamicUser=yes
# Survives restarts and reboots: model, error-feedback state, the replay counter.
StateDirectory=byzedge-agent
CacheDirectory=byzedge-agent
ConfigurationDirectory=byzedge
# The private keys never land in the unit's filesystem view. (systemd 252, as on Debian 12
# / Raspberry Pi OS bookworm, needs the explicit ID:PATH form.)
LoadCredential=device.key:/etc/byzedge/agent/device.key
LoadCredential=mqtt.key:/etc/byzedge/agent/tls/client.key
Environment=PYTHONUNBUFFERED=1

# A device has other work to do: training yields CPU, I/O and memory to it.
Nice=10
CPUWeight=20
IOWeight=20
MemoryHigh=60%
MemoryMax=75%
TasksMax=256

"""
    return head + _HARDENING.format(
        exposure='; exposure about 1.5 "OK"',
        private_devices=(
            "# Jetson: drop PrivateDevices (it hides the nvhost/nvmap GPU nodes) and add\n"
            "# SupplementaryGroups=video.\nPrivateDevices=yes\n"
        ),
        proc=(
            "# Not ProcSubset=pid: psutil needs /proc/meminfo, /proc/stat and /proc/loadavg.\n"
            "ProtectProc=invisible\n"
            "# AF_NETLINK: psutil reads network interface statistics through it.\n"
        ),
        families="AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        mdwe="# Not MemoryDenyWriteExecute=yes: torch and libffi generate code at run time.\n",
        syscalls="# Not ~@resources: OpenMP/BLAS call sched_setaffinity.\n",
    )


def coordinator_unit() -> str:
    """The coordinator's unit (also shipped as deploy/systemd/byzedge-coordinator.service)."""
    head = f"""\
# byzedge coordinator: verifies updates, keeps reputations, aggregates robustly and
# publishes the signed global model.
# Install on the coordinator host (as root), from a fleet folder made by `byzedge init`:
#   install -d -m 0755 /etc/byzedge
#   cp -a DIR/coordinator DIR/devices /etc/byzedge/
#   cp DIR/systemd/byzedge-coordinator.service /etc/systemd/system/
#   systemctl daemon-reload && systemctl enable --now byzedge-coordinator
# The keys stay root:root 0600 in /etc/byzedge/coordinator: systemd hands them to the
# dynamic user as credentials. Without mutual TLS, drop --tls-key and the mqtt.key
# credential.
# Check: systemd-analyze verify byzedge-coordinator.service
#        systemd-analyze security --offline=true byzedge-coordinator.service

[Unit]
Description=byzedge federated-learning coordinator
Wants=network-online.target time-sync.target
After=network-online.target time-sync.target
StartLimitIntervalSec=600
StartLimitBurst=5

[Service]
# READY=1 after the first broker CONNACK and the state load; WATCHDOG=1 from the main loop.
Type=notify
NotifyAccess=main
# The run-time paths come from systemd: ProtectSystem=strict makes /etc read-only, so the
# state lives in the StateDirectory, and the keys are read from the credentials folder.
ExecStart={_BIN} coordinator run --config /etc/byzedge/coordinator/coordinator.toml \\
    --state-dir ${{STATE_DIRECTORY}} \\
    --signing-key ${{CREDENTIALS_DIRECTORY}}/coordinator.key \\
    --tls-key ${{CREDENTIALS_DIRECTORY}}/mqtt.key
# SIGHUP: re-read devices_dir before the next round (enrol or revoke devices in place).
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
RestartSec=10s
TimeoutStartSec=120s
# Enough to finish persisting the round state and the audit log.
TimeoutStopSec=60s
WatchdogSec=60s

DynamicUser=yes
# Round state, device registry, reputations and the audit log live here.
StateDirectory=byzedge-coordinator
CacheDirectory=byzedge-coordinator
ConfigurationDirectory=byzedge
# (systemd 252 needs the explicit ID:PATH form.)
LoadCredential=coordinator.key:/etc/byzedge/coordinator/coordinator.key
LoadCredential=mqtt.key:/etc/byzedge/coordinator/tls/client.key
Environment=PYTHONUNBUFFERED=1
# The aggregation kernels are compiled (numba) at first use; the install tree is read-only
# here, so their machine code is cached where the service may write.
Environment=NUMBA_CACHE_DIR=/var/cache/byzedge-coordinator/numba
TasksMax=512

"""
    return head + _HARDENING.format(
        exposure="",
        private_devices="PrivateDevices=yes\n",
        proc=(
            "ProtectProc=invisible\n"
            "# Not ProcSubset=pid: numpy/BLAS and metrics collectors read /proc/stat and "
            "/proc/cpuinfo.\n"
        ),
        families="AF_UNIX AF_INET AF_INET6",
        mdwe=(
            "# Not MemoryDenyWriteExecute=yes: numba (LLVM), onnxruntime and libffi generate "
            "code at\n# run time.\n"
        ),
        syscalls="",
    )


def ingest_unit() -> str:
    """The ingest workers' template unit (also shipped as deploy/systemd/byzedge-ingest@.service).

    One instance per worker: ``byzedge-ingest@1`` ... ``byzedge-ingest@K``.
    """
    head = f"""\
# byzedge ingest worker %i of K ([cluster] workers = K in coordinator.toml): verifies,
# decodes and folds a share of the fleet's updates and sends the coordinator (the leader)
# partial aggregates. Install beside byzedge-coordinator.service (as root):
#   cp DIR/systemd/byzedge-ingest@.service /etc/systemd/system/
#   systemctl daemon-reload
#   systemctl enable --now byzedge-ingest@1 byzedge-ingest@2   # ... one per worker
# The key stays root:root 0600 in /etc/byzedge/coordinator/ingest/tls: systemd hands it to
# the dynamic user as a credential. Workers need the coordinator's public key, not its
# private one.
# Check: systemd-analyze verify byzedge-ingest@1.service

[Unit]
Description=byzedge ingest worker %i
Wants=network-online.target time-sync.target
After=network-online.target time-sync.target
StartLimitIntervalSec=600
StartLimitBurst=5

[Service]
# READY=1 once the shared subscription is in place; WATCHDOG=1 from the main loop.
Type=notify
NotifyAccess=main
ExecStart={_BIN} coordinator ingest-worker --config /etc/byzedge/coordinator/coordinator.toml \\
    --worker %i \\
    --state-dir ${{STATE_DIRECTORY}} \\
    --tls-key ${{CREDENTIALS_DIRECTORY}}/ingest.key
Restart=on-failure
RestartSec=5s
TimeoutStartSec=120s
# Enough to send the partial in hand and acknowledge its messages.
TimeoutStopSec=60s
WatchdogSec=60s

DynamicUser=yes
# The worker's replay counters (ingest-N.state).
StateDirectory=byzedge-ingest-%i
CacheDirectory=byzedge-ingest-%i
ConfigurationDirectory=byzedge
LoadCredential=ingest.key:/etc/byzedge/coordinator/ingest/tls/client.key
Environment=PYTHONUNBUFFERED=1
# The streaming rules' kernels may be compiled (numba) at first use: cached here.
Environment=NUMBA_CACHE_DIR=/var/cache/byzedge-ingest-%i/numba
TasksMax=256

"""
    return head + _HARDENING.format(
        exposure="",
        private_devices="PrivateDevices=yes\n",
        proc="ProtectProc=invisible\n",
        families="AF_UNIX AF_INET AF_INET6",
        mdwe="# Not MemoryDenyWriteExecute=yes: numba (LLVM) and libffi generate code.\n",
        syscalls="",
    )


def _with_worker_limits(spec: FleetSpec) -> FleetSpec:
    """``spec`` whose coordinator accepts no chunked update when it has ingest workers.

    The workers share MQTT messages, not updates: the chunks of one update would land on
    different workers (``CoordinatorConfig`` refuses such a configuration).
    """
    if spec.workers == 0 or "max_update_bytes" in spec.coordinator_settings:
        return spec
    settings = {**spec.coordinator_settings, "max_update_bytes": DEFAULT_MAX_MESSAGE_BYTES}
    return dataclasses.replace(spec, coordinator_settings=settings)


def _write_workers(root: Path, spec: FleetSpec, ca: pki.Issued) -> None:
    """With ``--workers K``: the workers' certificate (CN ingest) and their template unit."""
    if spec.workers == 0:
        return
    tls = root / "coordinator" / "ingest" / "tls"
    _mkdir(tls.parent)
    _mkdir(tls)
    _issue_client(root, ca, "ingest", tls)
    _write_text(root / "systemd" / "byzedge-ingest@.service", ingest_unit())


def _cluster_table(spec: FleetSpec) -> str:
    """``[cluster]`` of coordinator.toml with ``--workers K`` (none without)."""
    if spec.workers == 0:
        return ""
    return (
        "\n"
        "# Sharded ingest: K ingest workers (byzedge coordinator ingest-worker --worker N,\n"
        "# systemd/byzedge-ingest@.service) share the updates through an MQTT v5 shared\n"
        "# subscription; `byzedge coordinator run` is their leader. Run a second `run` with\n"
        "# this file as a standby: it takes over when the leader dies.\n"
        "[cluster]\n"
        f"workers = {spec.workers}\n"
        + _nats_cluster_keys(spec)
        + 'worker_cert_file = "ingest/tls/client.crt"\n'
        'worker_key_file = "ingest/tls/client.key"   # under systemd: --tls-key\n'
    )


# -- devices --------------------------------------------------------------------------------


def _known_device_ids(root: Path) -> set[str]:
    known = {path.name for path in (root / "agents").glob("*") if path.is_dir()}
    known |= {path.stem for path in (root / "devices").glob("*.pub")}
    known |= {path.stem for path in (root / "ca" / "issued").glob("*.crt")}
    known |= {device_id for _, device_id, _ in _revoked_entries(root)}
    return known


def next_device_id(root: Path) -> str:
    """``dev-NNN`` one past the highest ever issued in ``root`` (revoked ids are not reused)."""
    numbers = [
        int(match.group(1))
        for name in _known_device_ids(root)
        if (match := _DEVICE_PATTERN.match(name))
    ]
    return f"dev-{max(numbers, default=-1) + 1:03d}"


def _write_device(
    root: Path, spec: FleetSpec, ca: pki.Issued, device_id: str, *, index: int, partitions: int
) -> None:
    folder = root / "agents" / device_id
    _mkdir(folder)
    _mkdir(folder / "tls")
    key = SigningKey.generate()
    key.save(folder / "device.key")
    (folder / "device.pub").chmod(0o644)
    _copy_public(folder / "device.pub", root / "devices" / f"{device_id}.pub")
    _copy_public(root / "coordinator" / "coordinator.pub", folder / "coordinator.pub")
    _issue_client(root, ca, device_id, folder / "tls")
    _write_text(folder / "agent.toml", _agent_config(spec, device_id, index, partitions))


# -- the three operations ----------------------------------------------------------------------


def _prepare_root(root: Path, *, force: bool) -> None:
    if any(char.isspace() for char in str(root)):
        msg = f"{root}: mosquitto.conf cannot hold paths with spaces; choose another folder"
        raise ProvisioningError(msg)
    if root.exists() and not root.is_dir():
        msg = f"{root} exists and is not a folder"
        raise ProvisioningError(msg)
    if root.is_dir() and any(root.iterdir()):
        if not force:
            msg = f"{root} is not empty; pass --force to provision a new fleet over it"
            raise ProvisioningError(msg)
        # Only what init writes goes: --force on the wrong folder must not empty it.
        for name in _WRITTEN:
            child = root / name
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            elif child.exists() or child.is_symlink():
                child.unlink()


def init_fleet(root: Path, spec: FleetSpec, devices: int, *, force: bool = False) -> Report:
    """Write a whole fleet folder (see the module docstring).

    Raises
    ------
    ProvisioningError
        For invalid arguments, a non-empty ``root`` without ``force``, or a path
        mosquitto.conf cannot hold.
    """
    _validate_spec(spec, devices)
    spec = _with_worker_limits(spec)
    root = root.resolve()
    _prepare_root(root, force=force)
    report = Report()
    _mkdir(root)
    _mkdir(root / "ca", 0o700)
    ca = pki.create_ca(f"byzedge {spec.fleet} CA")
    pki.write_certificate(root / "ca" / "ca.crt", ca.certificate)
    pki.write_private_key(root / "ca" / "ca.key", ca.key)
    _write_text(
        root / "ca" / "revoked.txt",
        "# Revoked certificates: serial (hex), device id, revocation time (UTC).\n",
    )
    spec = dataclasses.replace(spec, partitions=max(devices, 1))
    _write_spec(root, spec)
    if spec.broker == "nats":
        _write_nats_broker(root, spec, ca)
    else:
        _write_broker(root, spec, ca, report)

    coordinator = root / "coordinator"
    _mkdir(coordinator)
    _mkdir(coordinator / "tls")
    signing = SigningKey.generate()
    signing.save(coordinator / "coordinator.key")
    (coordinator / "coordinator.pub").chmod(0o644)
    _issue_client(root, ca, "coordinator", coordinator / "tls")
    _write_text(coordinator / "coordinator.toml", _coordinator_config(spec) + _cluster_table(spec))

    monitor = root / "monitor"
    _mkdir(monitor)
    _mkdir(monitor / "tls")
    _copy_public(coordinator / "coordinator.pub", monitor / "coordinator.pub")
    _issue_client(root, ca, "monitor", monitor / "tls")
    _write_text(monitor / "monitor.toml", _monitor_config(spec))

    _mkdir(root / "devices")
    _mkdir(root / "agents")
    for index in range(devices):
        device_id = f"dev-{index:03d}"
        _write_device(root, spec, ca, device_id, index=index, partitions=spec.partitions)
        report.devices.append(device_id)

    systemd = root / "systemd"
    _mkdir(systemd)
    _write_text(systemd / "byzedge-agent.service", agent_unit())
    _write_text(systemd / "byzedge-coordinator.service", coordinator_unit())
    _write_workers(root, spec, ca)
    _write_nats_users(root, spec)
    if spec.broker == "nats":
        for node in spec.nats_nodes():
            config = root / "broker" / "nats" / f"{node.name}.conf"
            unit = nats_unit(spec.fleet, node, config)
            _write_text(systemd / f"byzedge-nats-{node.name}.service", unit)
    return report


def add_device(root: Path, device_id: str | None = None) -> Report:
    """Provision one more device in an existing fleet folder and enrol it.

    Raises
    ------
    ProvisioningError
        When ``root`` is not a fleet folder or ``device_id`` is invalid or taken.
    """
    root = root.resolve()
    spec = read_spec(root)
    chosen = device_id if device_id is not None else next_device_id(root)
    try:
        validate_device_id(chosen)
    except TopicError as exc:
        raise ProvisioningError(str(exc)) from exc
    taken = _known_device_ids(root)
    if chosen in taken:
        msg = (
            f"{chosen} is taken in {root} (issued before, perhaps revoked): device ids are "
            "never reused, so a revoked device cannot come back under its old id"
        )
        raise ProvisioningError(msg)
    ca = _load_ca(root)
    index = len(taken - {"broker", "coordinator", "monitor"})
    match = _DEVICE_PATTERN.match(chosen)
    if match is not None:
        index = int(match.group(1))
    partitions = max(spec.partitions, index + 1)
    _write_device(root, spec, ca, chosen, index=index, partitions=partitions)
    report = Report(devices=[chosen])
    if partitions > spec.partitions:
        report.notes.append(
            f"{chosen} trains on digits shard {index} of {partitions}; the agents made by "
            f"init cut the digits in {spec.partitions}, so shards overlap a little"
        )
    report.notes.append(
        "reload the coordinator (systemctl reload byzedge-coordinator, or SIGHUP) to enrol it"
    )
    if spec.broker == "nats":
        _write_nats_users(root, spec)
        report.notes.append(_nats_reload_note(root))
    return report


def revoke_device(root: Path, device_id: str) -> Report:
    """Revoke a device: drop its enrolment and list its certificate in the CRL.

    Raises
    ------
    ProvisioningError
        When ``root`` is not a fleet folder, or the device was never issued or is
        already revoked.
    """
    root = root.resolve()
    spec = read_spec(root)
    try:
        validate_device_id(device_id)
    except TopicError as exc:
        raise ProvisioningError(str(exc)) from exc
    issued = root / "ca" / "issued" / f"{device_id}.crt"
    try:
        certificate = pki.load_certificate(issued)
    except FileNotFoundError as exc:
        msg = f"no device {device_id} in {root} (no {issued})"
        raise ProvisioningError(msg) from exc
    except (OSError, ValueError) as exc:
        msg = f"{issued}: {exc}"
        raise ProvisioningError(msg) from exc
    entries = _revoked_entries(root)
    if any(serial == certificate.serial_number for serial, _, _ in entries):
        msg = f"{device_id} is already revoked"
        raise ProvisioningError(msg)
    ca = _load_ca(root)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    with (root / "ca" / "revoked.txt").open("a", encoding="utf-8") as handle:
        handle.write(f"{certificate.serial_number:x} {device_id} {now.isoformat()}\n")
    _write_crl(root, ca)
    (root / "devices" / f"{device_id}.pub").unlink(missing_ok=True)
    _write_nats_users(root, spec)
    return Report(
        devices=[device_id],
        notes=[
            f"removed {root / 'devices' / f'{device_id}.pub'}: reload the coordinator "
            "(systemctl reload byzedge-coordinator, or SIGHUP) and it refuses the "
            "device's updates",
            f"listed its certificate in {root / 'broker' / 'crl.pem'}: mosquitto reads the "
            "CRL only when it starts or reloads, so restart the broker (or send it SIGHUP) "
            "to refuse its TLS connections",
        ]
        if spec.broker != "nats"
        else [
            f"removed {root / 'devices' / f'{device_id}.pub'}: reload the coordinator "
            "(systemctl reload byzedge-coordinator, or SIGHUP) and it refuses the "
            "device's updates",
            "nats-server 2.9 reads no CRL, so the device's user was removed instead: "
            + _nats_reload_note(root)
            + "; after that its certificate is refused on every listener",
        ],
    )


def device_ids(root: Path) -> Sequence[str]:
    """The devices currently enrolled in ``root`` (its ``devices/*.pub``), sorted."""
    return sorted(path.stem for path in (root / "devices").glob("*.pub"))
