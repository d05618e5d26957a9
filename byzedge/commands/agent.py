"""``byzedge agent run | infer | check-config``.

``infer`` uses onnxruntime only: it never imports torch, so a device can serve predictions
with the global model even where training is disabled.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
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
from byzedge.commands._model import describe, layout_problems, resolve_model

if TYPE_CHECKING:
    from byzedge.edge_agent.config import AgentConfig

_LOGGER = logging.getLogger(__name__)

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The agent's subcommands."""
    parser = argparse.ArgumentParser(prog="byzedge agent", description="The edge agent.")
    sub = parser.add_subparsers(dest="action", required=True)
    run = sub.add_parser("run", help="train and publish signed updates, round after round")
    run.add_argument("--config", type=Path, required=True, help="agent.toml")
    run.add_argument("--fault-plan", type=Path, help="fault plan TOML (hardware-in-the-loop)")
    run.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING...")
    add_runtime_flags(run, "device.key")
    infer = sub.add_parser("infer", help="predict with the current global model (onnxruntime)")
    infer.add_argument("--config", type=Path, required=True, help="agent.toml")
    infer.add_argument(
        "--input",
        type=Path,
        help=".npy (m, 64) or CSV of 64 readings per line; default: the digits test set",
    )
    infer.add_argument(
        "--state-dir", type=Path, help="override state_dir (where `agent run` keeps the model)"
    )
    check = sub.add_parser(
        "check-config",
        help="check agent.toml and what breaks at run time: keys, certificates, enrolment",
    )
    check.add_argument("--config", type=Path, required=True, help="agent.toml")
    add_runtime_flags(check, "device.key")
    check.add_argument(
        "--enrolment",
        type=Path,
        metavar="DIR",
        help="the coordinator's devices folder: check DIR/<device-id>.pub is this device's key",
    )
    check.add_argument(
        "--online",
        action="store_true",
        help="also connect to the broker and check the ACL lets this device publish",
    )
    check.add_argument(
        "--coordinator-model",
        metavar="FILE_OR_NAME",
        help=(
            "the coordinator's model (its model_template file, or a registry name): check "
            "this device's model has the same layout and input shape"
        ),
    )
    return parser


def main(argv: Sequence[str]) -> int:
    """Entry point of ``byzedge agent``.

    Exit codes: 0 ok; 1 runtime failure; 2 usage or configuration error, including every
    problem ``check-config`` finds (offline, or with ``--online``).
    """
    args = build_parser().parse_args(argv)
    from byzedge.daemon.config import ConfigError  # noqa: PLC0415
    from byzedge.edge_agent.config import load_agent_config  # noqa: PLC0415

    # A path given on the command line is relative to where the command runs, not to the
    # config file's folder, so it is made absolute before the config loader sees it.
    fault_plan = getattr(args, "fault_plan", None)
    overrides: dict[str, str] = {"fault_plan": str(fault_plan.resolve())} if fault_plan else {}
    overrides.update(runtime_overrides(args))
    try:
        config = load_agent_config(args.config, overrides)
        config = config.model_copy(
            update={"mqtt": with_tls_key(config.mqtt, getattr(args, "tls_key", None))}
        )
    except (ConfigError, ValueError) as exc:
        return fail("agent", str(exc))
    if args.action == "infer":
        return _infer(config.state_dir, args.input)
    problems = _offline_problems(config, getattr(args, "enrolment", None))
    if args.action == "check-config":
        problems += _model_problems(config.model, args.coordinator_model)
    if problems:
        return report_problems("agent", problems)
    from byzedge.protocol.signing import SigningKey, VerifyKey  # noqa: PLC0415

    signing_key = SigningKey.load(config.signing_key)
    coordinator_key = VerifyKey.load(config.coordinator_key)
    if args.action == "check-config":
        if args.online:
            code = _online(config)
            if code:
                return code
        print(f"{args.config}: ok (device {config.device_id}, key {signing_key.key_id})")
        return 0
    return _run(config, signing_key, coordinator_key, args.log_level)


def _offline_problems(config: AgentConfig, enrolment: Path | None) -> list[str]:
    """Everything that would stop this agent at run time, one line per problem."""
    from byzedge.daemon import pki  # noqa: PLC0415

    publics: list[tuple[str, Path]] = []
    beside = config.signing_key.with_suffix(".pub")
    if beside.exists():  # init writes it; under systemd the credential comes alone
        publics.append(("public key", beside))
    if enrolment is not None:
        enrolled = enrolment / f"{config.device_id}.pub"
        if enrolled.exists():
            publics.append(("enrolment", enrolled))
        else:
            return [
                f"enrolment {enrolled}: no such file ({config.device_id} is not enrolled, "
                "or was revoked)",
                *_offline_problems(config, None),
            ]
    problems = pki.check_key_pair(config.signing_key, publics)
    problems += pki.check_verify_key(config.coordinator_key, "coordinator_key")[1]
    problems += tls_problems(config.mqtt, config.device_id)
    problems += state_dir_problems(config.state_dir)
    return problems


def _model_problems(model: str, coordinator_model: str | None) -> list[str]:
    """The device's model must build (its layout), and match the coordinator's if given.

    A factory reference is exported to learn its layout (torch, in a child process).
    """
    spec, reason = resolve_model(model)
    if spec is None:
        return [reason or f"model {model!r} cannot be resolved"]
    print(describe(spec))
    return layout_problems(spec, coordinator_model) if coordinator_model else []


def _online(config: AgentConfig) -> int:
    from byzedge.protocol import topics  # noqa: PLC0415

    problems = probe_problems(
        config.mqtt,
        f"{config.device_id}-check-{os.getpid()}",
        publish_topics=[
            topics.update_topic(config.fleet, config.device_id),
            topics.device_status_topic(config.fleet, config.device_id),
        ],
        subscribe_topics=[topics.model_topic(config.fleet)],
    )
    return report_problems("agent", problems)


def _run(config: object, signing_key: object, coordinator_key: object, level: str) -> int:
    from byzedge.daemon.logging import configure_logging, running_under_journald  # noqa: PLC0415
    from byzedge.daemon.signals import install_signal_handlers  # noqa: PLC0415
    from byzedge.edge_agent.config import AgentConfig  # noqa: PLC0415
    from byzedge.edge_agent.sensors import build_source  # noqa: PLC0415
    from byzedge.edge_agent.service import Agent  # noqa: PLC0415
    from byzedge.faults import FaultInjector  # noqa: PLC0415
    from byzedge.faults.plan import load_fault_plan  # noqa: PLC0415
    from byzedge.protocol.signing import SigningKey, VerifyKey  # noqa: PLC0415

    assert isinstance(config, AgentConfig)  # noqa: S101 - narrowing for mypy
    assert isinstance(signing_key, SigningKey)  # noqa: S101
    assert isinstance(coordinator_key, VerifyKey)  # noqa: S101
    configure_logging(level, journald=running_under_journald())
    injector = FaultInjector(seed=config.seed)
    if config.fault_plan is not None:
        try:
            injector = load_fault_plan(config.fault_plan, config.device_id)
        except (OSError, ValueError) as exc:
            return fail("agent", f"fault plan {config.fault_plan}: {exc}")
        _LOGGER.warning("device %s: fault injection active: %s", config.device_id, injector.names)
    agent = Agent(
        config,
        signing_key=signing_key,
        coordinator_key=coordinator_key,
        source=injector.wrap_source(build_source(config.data)),
        stages=injector.update_stages(),
        wire_stages=injector.wire_stages(),
    )

    def on_signal(signum: int) -> None:
        if signum == signal.SIGHUP:
            # Nothing in an agent's config can change under a running agent safely (its
            # identity, keys, broker, data); say so rather than pretend to reload.
            _LOGGER.warning("SIGHUP: the agent does not reload; restart it to apply changes")

    with install_signal_handlers(on_signal=on_signal) as signals:
        return agent.run(signals.stop)


def _infer(state_dir: Path, input_path: Path | None) -> int:
    import numpy as np  # noqa: PLC0415

    from byzedge.edge_agent.model_store import ModelStore  # noqa: PLC0415

    store = ModelStore(state_dir)
    info = store.info()
    if info is None:
        return fail("agent", f"no global model in {state_dir} yet; run the agent first", 1)
    if input_path is None:
        from byzedge.models.datasets import load_digits_split  # noqa: PLC0415

        split = load_digits_split()
        features, labels = split.test_x, split.test_y
    else:
        labels = None
        try:
            if input_path.suffix == ".npy":
                features = np.load(input_path, allow_pickle=False).astype(np.float32)
            else:
                features = np.loadtxt(input_path, delimiter=",", dtype=np.float32, ndmin=2)
        except (OSError, ValueError) as exc:
            return fail("agent", f"cannot read --input {input_path}: {exc}")
    classifier = store.classifier()
    try:
        predictions = classifier.predict(features)
    except ValueError as exc:
        return fail("agent", f"bad input: {exc}")
    report: dict[str, object] = {
        "model": info.model,
        "round": info.round,
        "version": info.version,
        "predictions": predictions.tolist(),
    }
    if labels is not None:
        report["accuracy"] = round(float(np.mean(predictions == labels)), 4)
    json.dump(report, sys.stdout)
    sys.stdout.write("\n")
    return 0
