"""``byzedge init``: provision a fleet folder; ``init add-device | revoke-device`` change it.

::

    byzedge init DIR --fleet NAME --devices N [--host HOST] [--port PORT] [--bind ADDRESS]
                     [--broker nats [--nodes 3] [--nats-port 4222] [--node-hosts H1,H2,H3]]
                     [--byzantine-defense RULE] [--workers K] [--force]
    byzedge init add-device DIR [--device-id ID]
    byzedge init revoke-device DIR DEVICE

What is written where: :mod:`byzedge.provisioning`. Exit codes: 0 done; 2 usage error, or
a folder or argument that cannot be used (one line on stderr).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from byzedge.commands._common import fail

if TYPE_CHECKING:
    from byzedge.provisioning import FleetSpec, Report

__all__ = ["build_parser", "main"]

_ACTIONS = ("add-device", "revoke-device")


def build_parser() -> argparse.ArgumentParser:
    """``byzedge init DIR ...``: a whole new fleet."""
    parser = argparse.ArgumentParser(
        prog="byzedge init",
        description=(
            "Provision a fleet: a CA, broker and client certificates (ECDSA P-256), Ed25519 "
            "signing keys, the enrolment folder, a mosquitto config with mutual TLS and ACL, "
            "coordinator/agent/monitor configs and systemd units, all under DIR."
        ),
        epilog=(
            "Change a fleet in place: `byzedge init add-device DIR [--device-id ID]`, "
            "`byzedge init revoke-device DIR DEVICE` (each has --help)."
        ),
    )
    parser.add_argument("dir", type=Path, metavar="DIR", help="the fleet folder to create")
    parser.add_argument("--fleet", required=True, help="fleet name (second topic level)")
    parser.add_argument(
        "--devices", type=int, required=True, help="devices to provision: dev-000, dev-001..."
    )
    parser.add_argument(
        "--host",
        default="localhost",
        help="name or address devices reach the broker at (default: localhost)",
    )
    parser.add_argument("--port", type=int, default=8883, help="broker TLS port (8883)")
    parser.add_argument(
        "--bind",
        help="address the broker listens on (default: HOST if an IP address, 127.0.0.1 for "
        "localhost, else every interface)",
    )
    parser.add_argument(
        "--byzantine-defense",
        default="clipping-vr",
        metavar="RULE",
        help="the coordinator's aggregation rule (default: clipping-vr)",
    )
    parser.add_argument(
        "--broker",
        choices=("mosquitto", "nats"),
        default="mosquitto",
        help="mosquitto (one broker, the default) or nats: a NATS cluster with JetStream and "
        "its MQTT listener (configs for --nodes nodes; devices get every node's URL)",
    )
    parser.add_argument(
        "--nodes", type=int, default=3, help="--broker nats: cluster nodes (default: 3)"
    )
    parser.add_argument(
        "--nats-port",
        type=int,
        default=4222,
        help="--broker nats: NATS client port of node 0 (routes +2000, monitoring +4000; "
        "nodes on one host take consecutive ports, as does the MQTT --port)",
    )
    parser.add_argument(
        "--node-hosts",
        help="--broker nats: comma-separated host of each node (default: every node on HOST)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        metavar="K",
        help="sharded ingest: K ingest workers beside the coordinator ([cluster] workers; "
        "their certificate, CN ingest, and systemd/byzedge-ingest@.service); default 0",
    )
    parser.add_argument("--force", action="store_true", help="provision over a non-empty DIR")
    return parser


def _add_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="byzedge init add-device",
        description="Provision one more device (keys, certificate, agent folder) and enrol it.",
    )
    parser.add_argument("dir", type=Path, metavar="DIR", help="a fleet folder from byzedge init")
    parser.add_argument("--device-id", help="the new device's id (default: next free dev-NNN)")
    return parser


def _revoke_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="byzedge init revoke-device",
        description=(
            "Revoke a device: remove its enrolment file (the coordinator refuses its updates "
            "after a reload) and list its certificate in the broker's CRL (on a NATS "
            "cluster, which reads no CRL: remove its user from broker/nats/users.conf)."
        ),
    )
    parser.add_argument("dir", type=Path, metavar="DIR", help="a fleet folder from byzedge init")
    parser.add_argument("device", metavar="DEVICE", help="the device id to revoke")
    return parser


def main(argv: Sequence[str]) -> int:
    """Entry point of ``byzedge init``."""
    from byzedge import provisioning  # noqa: PLC0415

    args = list(argv)
    try:
        if args and args[0] == "add-device":
            parsed = _add_parser().parse_args(args[1:])
            report = provisioning.add_device(parsed.dir, parsed.device_id)
            return _print_changed(parsed.dir, "added", report)
        if args and args[0] == "revoke-device":
            parsed = _revoke_parser().parse_args(args[1:])
            report = provisioning.revoke_device(parsed.dir, parsed.device)
            return _print_changed(parsed.dir, "revoked", report)
        parsed = build_parser().parse_args(args)
        bind = parsed.bind if parsed.bind is not None else provisioning.default_bind(parsed.host)
        spec = provisioning.FleetSpec(
            fleet=parsed.fleet,
            host=parsed.host,
            port=parsed.port,
            bind=bind,
            byzantine_defense=parsed.byzantine_defense,
            workers=parsed.workers,
            broker=parsed.broker,
            nodes=parsed.nodes if parsed.broker == "nats" else 1,
            nats_port=parsed.nats_port,
            node_hosts=tuple(h for h in (parsed.node_hosts or "").split(",") if h),
        )
        report = provisioning.init_fleet(parsed.dir, spec, parsed.devices, force=parsed.force)
    except provisioning.ProvisioningError as exc:
        return fail("init", str(exc))
    except OSError as exc:
        return fail("init", f"cannot write the fleet folder: {exc}", 1)
    _print_summary(parsed.dir.resolve(), spec, report)
    return 0


def _print_warnings(warnings: Sequence[str]) -> None:
    for line in warnings:
        print(f"byzedge init: warning: {line}", file=sys.stderr)


def _print_changed(folder: Path, verb: str, report: Report) -> int:
    root = folder.resolve()
    _print_warnings(report.warnings)
    for device_id in report.devices:
        if verb == "added":
            print(f"{device_id}: added to {root} and enrolled ({root}/devices/{device_id}.pub)")
            print(f"  agent folder: {root}/agents/{device_id} (copy it to the device)")
            config = root / "agents" / device_id / "agent.toml"
            print(f"  check: byzedge agent check-config --config {config}")
        else:
            print(f"{device_id}: revoked")
    for note in report.notes:
        print(f"  {note}")
    return 0


def _print_summary(root: Path, spec: FleetSpec, report: Report) -> None:
    _print_warnings(report.warnings)
    devices = report.devices
    shown = f"{devices[0]}..{devices[-1]}" if len(devices) > 1 else ", ".join(devices) or "none"
    agent = f"{root}/agents/{devices[0]}/agent.toml" if devices else None
    if spec.broker == "nats":
        _print_nats_summary(root, spec, report)
        return
    lines = [
        f"fleet {spec.fleet} provisioned in {root}",
        f"  CA (ECDSA P-256, keep {root}/ca offline), broker for "
        f"mqtts://{spec.host}:{spec.port}, coordinator, monitor, "
        f"{len(devices)} devices ({shown})",
        "next:",
        f"  mosquitto -c {root}/broker/mosquitto.conf",
        f"  byzedge coordinator check-config --config {root}/coordinator/coordinator.toml",
        f"  byzedge coordinator run --config {root}/coordinator/coordinator.toml",
    ]
    if spec.workers > 0:
        lines.append(
            f"  byzedge coordinator ingest-worker --config {root}/coordinator/coordinator.toml "
            f"--worker N   (N = 1..{spec.workers}, beside the coordinator)"
        )
    if agent is not None:
        lines += [
            f"  byzedge agent check-config --config {agent} --enrolment {root}/devices",
            f"  byzedge agent run --config {agent}",
        ]
    lines += [
        f"  byzedge monitor --config {root}/monitor/monitor.toml",
        f"  more devices: byzedge init add-device {root}; systemd units: {root}/systemd/",
    ]
    print("\n".join(lines))


def _print_nats_summary(root: Path, spec: FleetSpec, report: Report) -> None:
    nodes = spec.nats_nodes()
    lines = [
        f"fleet {spec.fleet} provisioned in {root} for a {len(nodes)}-node NATS cluster",
        "  MQTT (mutual TLS, MQTT 3.1.1): " + ", ".join(node.mqtt_url for node in nodes),
        f"  {len(report.devices)} devices, each with every node's URL",
        "next:",
        *(f"  nats-server -c {root}/broker/nats/{node.name}.conf" for node in nodes),
        f"  per-certificate permissions: {root}/broker/nats/users.conf (init add-device and "
        "revoke-device rewrite it; reload every node after)",
        f"  byzedge coordinator run --config {root}/coordinator/coordinator.toml",
        f"  systemd units: {root}/systemd/",
    ]
    print("\n".join(lines))
