"""Sharded ingest's commands: ``coordinator ingest-worker`` and ``coordinator run``'s leader."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from byzedge.commands._common import fail, report_problems, state_dir_problems, tls_problems

if TYPE_CHECKING:
    from byzedge.coordinator.config import CoordinatorConfig
    from byzedge.coordinator.enrolment import Enrolment
    from byzedge.daemon.mqtt import MqttSettings
    from byzedge.protocol.signing import SigningKey, VerifyKey

__all__ = [
    "WORKER_ACCOUNT",
    "coordinator_verify_key",
    "run_ingest_worker",
    "run_leader",
    "worker_mqtt",
]

WORKER_ACCOUNT = "ingest"
"""The broker account (certificate CN) the ACL grants the ingest workers' topics to."""

_LOGGER = logging.getLogger("byzedge.coordinator.cluster")


def worker_mqtt(config: CoordinatorConfig, tls_key: Path | None) -> MqttSettings:
    """The workers' broker settings: ``[mqtt]`` with ``[cluster]``'s certificate and key."""
    settings = config.mqtt
    cluster = config.cluster
    if settings.tls is None or (cluster.worker_cert_file is None and tls_key is None):
        return settings
    tls = settings.tls.model_copy(
        update={
            "cert_file": cluster.worker_cert_file or settings.tls.cert_file,
            "key_file": (tls_key.resolve() if tls_key else None)
            or cluster.worker_key_file
            or settings.tls.key_file,
        }
    )
    return settings.model_copy(update={"tls": tls})


def coordinator_verify_key(config: CoordinatorConfig) -> VerifyKey:
    """The coordinator's public key: ``signing_key``'s ``.pub`` beside it, else derived.

    A worker needs only the public key (to verify the leader's contexts and receipts);
    ``byzedge init`` writes it beside the private one.
    """
    from byzedge.protocol.signing import SigningKey, VerifyKey  # noqa: PLC0415

    public = config.signing_key.with_suffix(".pub")
    if public.exists():
        return VerifyKey.load(public)
    return SigningKey.load(config.signing_key).verify_key


def _register_broker(config: CoordinatorConfig) -> None:
    """Load the source and lease of a broker kept out of the default registries (NATS)."""
    if config.cluster.broker == "nats":
        from byzedge.coordinator.cluster.nats_factory import register_nats  # noqa: PLC0415

        register_nats()


def run_ingest_worker(args: argparse.Namespace) -> int:
    """``byzedge coordinator ingest-worker --config FILE --worker N``."""
    from byzedge.coordinator.cluster.worker import IngestWorker, build_source  # noqa: PLC0415
    from byzedge.coordinator.config import ConfigError, load_coordinator_config  # noqa: PLC0415
    from byzedge.coordinator.enrolment import (  # noqa: PLC0415
        EnrolmentStoreError,
        closing_enrolment,
        open_enrolment,
    )
    from byzedge.daemon.logging import configure_logging, running_under_journald  # noqa: PLC0415
    from byzedge.daemon.mqtt import MqttError  # noqa: PLC0415
    from byzedge.daemon.signals import install_signal_handlers  # noqa: PLC0415
    from byzedge.daemon.transport import mqtt_transport  # noqa: PLC0415
    from byzedge.protocol.errors import ProtocolError  # noqa: PLC0415

    overrides = {"state_dir": str(args.state_dir.resolve())} if args.state_dir else {}
    try:
        config = load_coordinator_config(args.config, overrides)
    except (ConfigError, ValueError) as exc:
        return fail("coordinator", str(exc))
    workers = config.cluster.workers
    if not 1 <= args.worker <= max(workers, 1) or workers == 0:
        return fail(
            "coordinator",
            f"--worker {args.worker}: {args.config} runs {workers} ingest worker(s) "
            "([cluster] workers); give a number from 1 to that",
        )
    settings = worker_mqtt(config, args.tls_key)
    problems = tls_problems(settings, WORKER_ACCOUNT) + state_dir_problems(config.state_dir)
    try:
        coordinator_key = coordinator_verify_key(config)
    except (OSError, ProtocolError, ValueError) as exc:
        problems.append(f"the coordinator's public key ({config.signing_key}): {exc}")
    if problems:
        return report_problems("coordinator", problems)
    configure_logging(args.log_level, journald=running_under_journald())
    try:
        devices = open_enrolment(config)
    except EnrolmentStoreError as exc:
        return fail("coordinator", str(exc))
    with closing_enrolment(devices):
        try:
            _register_broker(config)
            source = build_source(config, settings, args.worker)
            worker = IngestWorker(
                config,
                args.worker,
                coordinator_key=coordinator_key,
                devices=devices,
                source=source,
                transport=mqtt_transport(settings),
            )
        except (MqttError, ValueError) as exc:
            return fail("coordinator", str(exc))
        with install_signal_handlers() as signals:
            return worker.run(signals.stop)


def run_leader(config: CoordinatorConfig, key: SigningKey, devices: Enrolment) -> int:
    """``byzedge coordinator run`` with ``[cluster] workers > 0``: lead, or stand by.

    Blocks until the leader lease is ours (a standby waits here, unconnected), then runs
    the leader until its rounds are done, it is stopped, or it loses the lease (exit 1).
    """
    from byzedge.coordinator.cluster.contracts import LeaseLostError  # noqa: PLC0415
    from byzedge.coordinator.cluster.leader import ClusterLeader  # noqa: PLC0415
    from byzedge.coordinator.cluster.lease import build_lease  # noqa: PLC0415
    from byzedge.daemon import systemd  # noqa: PLC0415
    from byzedge.daemon.signals import install_signal_handlers  # noqa: PLC0415

    try:
        _register_broker(config)
        lease = build_lease(config)
    except ValueError as exc:
        return fail("coordinator", str(exc))
    with install_signal_handlers() as signals:
        epoch = lease.acquire(timeout_s=0.0)
        if epoch is None:
            _LOGGER.info("fleet %s: standing by until the leader lease is free", config.fleet)
            systemd.notify_status("standby: waiting for the leader lease")
        while epoch is None:
            if signals.stop.is_set():
                return 0
            epoch = lease.acquire(timeout_s=1.0)
        _LOGGER.info("fleet %s: leading with epoch %d", config.fleet, epoch)
        try:
            leader = ClusterLeader(
                config, signing_key=key, devices=devices, lease=lease, epoch=epoch
            )
        except ValueError as exc:
            lease.release()
            return fail("coordinator", str(exc))
        try:
            return leader.run(signals.stop, signals.reload)
        except LeaseLostError as exc:
            _LOGGER.error("fleet %s: leader lease lost: %s", config.fleet, exc)
            return 1
