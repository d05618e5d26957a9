"""``byzedge coordinator run | check-config | reputation list|reset | enrol ...``."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from byzedge.commands._common import (
    add_runtime_flags,
    fail,
    probe_problems,
    report_problems,
    runtime_overrides,
    state_dir_problems,
    tls_problems,
    with_tls_key,
)
from byzedge.commands._model import describe, resolve_model

if TYPE_CHECKING:
    from byzedge.coordinator.config import CoordinatorConfig
    from byzedge.coordinator.enrolment import DatabaseEnrolment, Enrolment
    from byzedge.protocol.signing import SigningKey

__all__ = ["build_parser", "main"]

ACCOUNT = "coordinator"
"""The broker account (certificate CN) the ACL grants the coordinator's topics to."""


def build_parser() -> argparse.ArgumentParser:
    """The coordinator's subcommands."""
    parser = argparse.ArgumentParser(prog="byzedge coordinator", description="The coordinator.")
    sub = parser.add_subparsers(dest="action", required=True)
    run = sub.add_parser("run", help="run rounds until done (or forever with rounds = 0)")
    run.add_argument("--config", type=Path, required=True, help="coordinator.toml")
    run.add_argument("--rounds", type=int, help="override `rounds` from the file")
    add_rule_flags(run)
    run.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING...")
    add_runtime_flags(run, "coordinator.key")
    worker = sub.add_parser(
        "ingest-worker",
        help="one of the [cluster] workers: verify, decode and fold a share of the updates",
    )
    worker.add_argument("--config", type=Path, required=True, help="coordinator.toml")
    worker.add_argument(
        "--worker", type=int, required=True, metavar="N", help="this worker's number, 1..K"
    )
    worker.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING...")
    worker.add_argument(
        "--state-dir", type=Path, help="override state_dir (systemd: ${STATE_DIRECTORY})"
    )
    worker.add_argument(
        "--tls-key",
        type=Path,
        help="override [cluster] worker_key_file (systemd: ${CREDENTIALS_DIRECTORY}/ingest.key)",
    )
    check = sub.add_parser(
        "check-config",
        help="check coordinator.toml and what breaks at run time: keys, certificates, devices",
    )
    check.add_argument("--config", type=Path, required=True, help="coordinator.toml")
    add_runtime_flags(check, "coordinator.key")
    check.add_argument(
        "--online",
        action="store_true",
        help="also connect to the broker and check the ACL lets the coordinator publish",
    )
    reputation = sub.add_parser(
        "reputation", help="inspect or reset devices' reputations (resets are audited)"
    )
    reputation.add_argument("verb", choices=["list", "reset"], help="list, or reset DEVICE")
    reputation.add_argument("device", nargs="?", help="the device to reset")
    reputation.add_argument("--config", type=Path, required=True, help="coordinator.toml")
    reputation.add_argument(
        "--state-dir", type=Path, help="override state_dir (systemd: /var/lib/byzedge-...)"
    )
    enrol = sub.add_parser(
        "enrol",
        help='the enrolment database (enrolment = "sqlite" or "postgres"): import, add, '
        "revoke, count",
    )
    enrol.add_argument(
        "verb",
        choices=["import", "add", "revoke", "count"],
        help="import DIR (its <device_id>.pub files), add DEVICE PUBFILE, revoke DEVICE, count",
    )
    enrol.add_argument("target", nargs="?", help="the folder (import) or the device id")
    enrol.add_argument("pubfile", nargs="?", type=Path, help="the device's PEM key (add)")
    enrol.add_argument("--config", type=Path, required=True, help="coordinator.toml")
    enrol.add_argument(
        "--db", type=Path, help="override enrolment_db (default state_dir/enrolment.sqlite3)"
    )
    return parser


def add_rule_flags(parser: argparse.ArgumentParser) -> None:
    """``--byzantine-defense`` and ``--max-byzantine-fraction``, overriding the file."""
    parser.add_argument(
        "--byzantine-defense", metavar="RULE", help="override byzantine_defense (a rule name)"
    )
    parser.add_argument(
        "--max-byzantine-fraction",
        type=float,
        metavar="F",
        help="override max_byzantine_fraction, in [0, 0.5)",
    )
    parser.add_argument(
        "--certified-robustness",
        action="store_const",
        const=True,
        help="set certified_robustness: each round states its certified robustness bound",
    )


def main(argv: Sequence[str]) -> int:
    """Entry point of ``byzedge coordinator``.

    Exit codes: 0 ok; 1 runtime failure; 2 usage or configuration error, including every
    problem ``check-config`` finds (offline, or with ``--online``).
    """
    args = build_parser().parse_args(argv)
    from byzedge.coordinator.config import ConfigError, load_coordinator_config  # noqa: PLC0415
    from byzedge.coordinator.enrolment import (  # noqa: PLC0415
        EnrolmentStoreError,
        closing_enrolment,
        open_enrolment,
    )
    from byzedge.protocol.signing import SigningKey  # noqa: PLC0415

    if args.action == "reputation":
        return _reputation(args)
    if args.action == "enrol":
        return _enrol(args)
    if args.action == "ingest-worker":
        from byzedge.commands._cluster import run_ingest_worker  # noqa: PLC0415

        return run_ingest_worker(args)
    overrides: dict[str, object] = dict(runtime_overrides(args))
    for name in ("rounds", "byzantine_defense", "max_byzantine_fraction", "certified_robustness"):
        if getattr(args, name, None) is not None:
            overrides[name] = getattr(args, name)
    try:
        config = load_coordinator_config(args.config, overrides)
        config = config.model_copy(update={"mqtt": with_tls_key(config.mqtt, args.tls_key)})
    except (ConfigError, ValueError) as exc:
        return fail("coordinator", str(exc))
    problems = _offline_problems(config)
    files = config.enrolment == "files"
    enrolment = (
        _enrolment_problems(config.devices_dir) if files and config.devices_dir.is_dir() else []
    )
    if args.action == "check-config":
        problems += enrolment
    if problems:
        return report_problems("coordinator", problems)
    key = SigningKey.load(config.signing_key)
    try:
        devices = open_enrolment(config)
    except EnrolmentStoreError as exc:
        return fail("coordinator", str(exc))
    # A database store holds a connection (a server's, for PostgreSQL): closed on the way out.
    with closing_enrolment(devices):
        if args.action == "check-config":
            return _check_config_ok(args, config, len(devices))
        return _run(args, config, key, devices)


def _check_config_ok(args: argparse.Namespace, config: CoordinatorConfig, enrolled: int) -> int:
    if args.online:
        code = _online(config)
        if code:
            return code
    spec, _ = resolve_model(config.model, config.model_template)
    if spec is not None:
        problems = mirror_problems(config.algorithm, enrolled, spec.dim, physical_memory())
        if problems:
            return report_problems("coordinator", problems)
    print(describe(spec) if spec is not None else f"model {config.model}")
    print(f"{args.config}: ok (fleet {config.fleet}, {enrolled} enrolled devices)")
    return 0


def physical_memory() -> int:
    """Return the memory of this machine in bytes (0 where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError):
        return 0


def mirror_problems(algorithm: str, enrolled: int, dim: int, memory: int) -> list[str]:
    """A method keeping a mirror of every device that would not fit in memory.

    EF21, DASHA and Clip21-SGD2M keep ``d`` floats per device on the server and aggregate
    all of them each round: at 10^6 devices and the 4,810-parameter ``mlp`` that is 19 GB,
    held, rewritten into the state file and read by the robust rule every round. More
    than half of the machine's memory is refused before the coordinator runs out of it.
    """
    from byzedge.methods import METHODS  # noqa: PLC0415

    method = METHODS.get(algorithm)
    if method is None or not method.server_mirrors or memory <= 0:
        return []
    need = enrolled * dim * 4
    if need <= memory // 2:
        return []
    return [
        f"algorithm {algorithm}: a mirror of {dim:,} floats for each of {enrolled:,} enrolled "
        f"devices is {need / 1e9:.1f} GB, over half of this machine's {memory / 1e9:.1f} GB, "
        "and every round aggregates all of them; use a method without server mirrors "
        "(fedavg, byz-vr-marina, byz-vr-marina-pp) or a smaller model"
    ]


def _run(
    args: argparse.Namespace, config: CoordinatorConfig, key: SigningKey, devices: Enrolment
) -> int:
    from byzedge.coordinator.service import Coordinator  # noqa: PLC0415
    from byzedge.daemon.logging import configure_logging, running_under_journald  # noqa: PLC0415
    from byzedge.daemon.signals import install_signal_handlers  # noqa: PLC0415

    configure_logging(args.log_level, journald=running_under_journald())
    if config.cluster.workers > 0:
        from byzedge.commands._cluster import run_leader  # noqa: PLC0415

        return run_leader(config, key, devices)
    try:
        coordinator = Coordinator(config, signing_key=key, devices=devices)
    except ValueError as exc:
        return fail("coordinator", str(exc))
    with install_signal_handlers() as signals:
        return coordinator.run(signals.stop, signals.reload)


def _offline_problems(config: CoordinatorConfig) -> list[str]:
    """What would stop the coordinator at run time, one line per problem."""
    from byzedge.daemon import pki  # noqa: PLC0415

    beside = config.signing_key.with_suffix(".pub")
    # init and `keys generate` write it; under systemd the credential comes alone.
    publics = [("public key", beside)] if beside.exists() else []
    problems = pki.check_key_pair(config.signing_key, publics)
    if config.enrolment == "files" and not config.devices_dir.is_dir():
        problems.append(f"devices_dir {config.devices_dir}: not a folder")
    if config.enrolment == "sqlite":
        from byzedge.coordinator.enrolment import enrolment_db_path  # noqa: PLC0415

        database = enrolment_db_path(config)
        if not database.is_file():
            problems.append(
                f"enrolment_db {database}: missing (fill it: byzedge coordinator enrol import DIR)"
            )
    if config.enrolment == "postgres":
        problems += _postgres_problems(config)
    problems += tls_problems(config.mqtt, ACCOUNT)
    if config.cluster.workers > 0 and config.cluster.worker_cert_file is not None:
        from byzedge.commands._cluster import WORKER_ACCOUNT, worker_mqtt  # noqa: PLC0415

        problems += tls_problems(worker_mqtt(config, None), WORKER_ACCOUNT)
    problems += state_dir_problems(config.state_dir)
    # The model's template, read without torch as the running coordinator reads it.
    spec, reason = resolve_model(config.model, config.model_template)
    problems += [reason] if spec is None and reason else []
    return problems


def _postgres_problems(config: CoordinatorConfig) -> list[str]:
    """Whether the enrolment server answers (within libpq's ``connect_timeout``)."""
    from byzedge.coordinator.enrolment import (  # noqa: PLC0415
        EnrolmentStoreError,
        open_database_enrolment,
    )

    try:
        open_database_enrolment(config).close()
    except EnrolmentStoreError as exc:
        # libpq's message spans lines (one per address tried); the first says why.
        first = next((line for line in str(exc).splitlines() if line.strip()), str(exc))
        return [f"enrolment_dsn: {first.strip()}"]
    return []


def _enrolment_problems(devices_dir: Path) -> list[str]:
    """Enrolment files the coordinator would skip (at run time only with a warning)."""
    from byzedge.daemon import pki  # noqa: PLC0415
    from byzedge.protocol.errors import TopicError  # noqa: PLC0415
    from byzedge.protocol.topics import validate_device_id  # noqa: PLC0415

    problems: list[str] = []
    for path in sorted(devices_dir.glob("*.pub")):
        try:
            validate_device_id(path.stem)
        except TopicError as exc:
            problems.append(f"devices_dir {path}: {exc}")
            continue
        problems += pki.check_verify_key(path, "devices_dir")[1]
    return problems


def _online(config: CoordinatorConfig) -> int:
    from byzedge.protocol import topics  # noqa: PLC0415

    problems = probe_problems(
        config.mqtt,
        f"{ACCOUNT}-check-{os.getpid()}",
        publish_topics=[
            topics.model_topic(config.fleet),
            topics.coordinator_status_topic(config.fleet),
            topics.alerts_topic(config.fleet),
        ],
        subscribe_topics=[
            topics.update_wildcard(config.fleet),
            topics.device_status_wildcard(config.fleet),
        ],
    )
    return report_problems("coordinator", problems)


def _reputation(args: argparse.Namespace) -> int:
    """``reputation list`` reads the saved state; ``reputation reset`` leaves a request."""
    from byzedge.coordinator.config import ConfigError, load_coordinator_config  # noqa: PLC0415
    from byzedge.coordinator.requests import request_reputation_reset  # noqa: PLC0415
    from byzedge.coordinator.state import StateStore  # noqa: PLC0415
    from byzedge.protocol.errors import TopicError  # noqa: PLC0415

    overrides = {"state_dir": str(args.state_dir.resolve())} if args.state_dir else {}
    try:
        config = load_coordinator_config(args.config, overrides)
    except (ConfigError, ValueError) as exc:
        return fail("coordinator", str(exc))
    if args.verb == "reset":
        if not args.device:
            return fail("coordinator", "reputation reset needs a DEVICE")
        try:
            path = request_reputation_reset(config.state_dir, args.device)
        except TopicError as exc:
            return fail("coordinator", str(exc))
        except OSError as exc:
            return fail("coordinator", f"cannot write {config.state_dir}: {exc}", 1)
        print(
            f"reset of {args.device} requested ({path}); the coordinator applies it before "
            "its next round and records it in the audit log"
        )
        return 0
    try:
        state = StateStore(config.state_dir).load()
    except ValueError as exc:
        return fail("coordinator", f"unusable state in {config.state_dir}: {exc}", 1)
    if state is None or not state.reputation:
        print(f"no reputations yet in {config.state_dir}")
        return 0
    print(f"fleet {state.fleet}, after round {state.completed_round} (lowest first)")
    for device, value in sorted(state.reputation.items(), key=lambda item: (item[1], item[0])):
        print(f"  {device:<24} {value:.4f}")
    return 0


def _enrol(args: argparse.Namespace) -> int:
    """``byzedge coordinator enrol import DIR | add DEVICE PUBFILE | revoke DEVICE | count``.

    Each write is one transaction of the configured database (SQLite, or PostgreSQL with
    ``enrolment = "postgres"``). A running coordinator takes the change at its next
    reload (SIGHUP, ``systemctl reload``).
    """
    import sqlite3  # noqa: PLC0415

    from byzedge.coordinator.config import ConfigError, load_coordinator_config  # noqa: PLC0415
    from byzedge.coordinator.enrolment import (  # noqa: PLC0415
        EnrolmentStoreError,
        open_database_enrolment,
    )
    from byzedge.protocol.errors import ProtocolError  # noqa: PLC0415

    try:
        config = load_coordinator_config(args.config)
    except ConfigError as exc:
        return fail("coordinator", str(exc))
    needs_target = args.verb in ("import", "add", "revoke")
    if needs_target and not args.target:
        return fail("coordinator", f"enrol {args.verb}: missing its argument")
    if args.verb == "add" and args.pubfile is None:
        return fail("coordinator", "enrol add: give DEVICE and its PEM key file")
    if config.enrolment == "files":
        print(f'note: {args.config} reads enrolment from files; set enrolment = "sqlite"')
    try:
        store = open_database_enrolment(config, args.db)
    except EnrolmentStoreError as exc:
        return fail("coordinator", str(exc))
    try:
        return _enrol_apply(store, args)
    except (OSError, ProtocolError, sqlite3.Error, EnrolmentStoreError) as exc:
        return fail("coordinator", f"enrol {args.verb}: {exc}")
    finally:
        store.close()


def _enrol_apply(store: DatabaseEnrolment, args: argparse.Namespace) -> int:
    from byzedge.protocol.signing import VerifyKey  # noqa: PLC0415

    path = store.label
    if args.verb == "import":
        imported, skipped = store.import_folder(Path(args.target))
        for line in skipped:
            print(f"skipped {line}")
        print(f"{path}: imported {imported} device(s), skipped {len(skipped)}")
    elif args.verb == "add":
        store.enrol(args.target, VerifyKey.load(args.pubfile))
        print(f"{path}: enrolled {args.target}")
    elif args.verb == "revoke":
        if not store.revoke(args.target):
            return fail("coordinator", f"{path}: {args.target} is not an enrolled device")
        print(f"{path}: revoked {args.target}")
    else:
        print(f"{path}: {len(store)} enrolled device(s)")
    return 0
