"""``byzedge faults``: validate and describe fault plans, list the fault registry.

``byzedge faults validate PLAN [--devices N]`` checks a plan (TOML syntax, structure, every
fault's name and parameters, that count/fraction targets fit the fleet) and prints a
one-screen description of who gets what. ``byzedge faults list`` prints every fault,
attack and colluding attack with its parameters.

Exit codes: 0 the plan is valid; 2 it is not (the message says where and why).
"""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from byzedge.commands._common import fail

if TYPE_CHECKING:
    from byzedge.faults.injector import FaultSpec
    from byzedge.faults.plan import FaultPlan

__all__ = ["build_parser", "main"]

_MAX_GROUPS = 12
_MAX_IDS = 8


def build_parser() -> argparse.ArgumentParser:
    """The faults subcommands."""
    parser = argparse.ArgumentParser(
        prog="byzedge faults", description="Validate and describe fault plans."
    )
    sub = parser.add_subparsers(dest="action", required=True)
    validate = sub.add_parser("validate", help="check a fault plan and show who gets what")
    validate.add_argument("plan", type=Path, help="fault plan TOML")
    validate.add_argument(
        "--devices",
        type=int,
        metavar="N",
        help="resolve the plan for a fleet of N simulator devices (dev-000 ...); "
        "default: the plan's fleet_devices",
    )
    sub.add_parser("list", help="list every fault, attack and colluding attack")
    return parser


def _spec_text(spec: FaultSpec) -> str:
    if not spec.params:
        return spec.name
    inner = ", ".join(f"{key}={value!r}" for key, value in spec.params.items())
    return f"{spec.name}({inner})"


def _faults_text(specs: Sequence[FaultSpec]) -> str:
    text = ", ".join(_spec_text(spec) for spec in specs)
    if any(spec.is_colluding for spec in specs):
        text += "  [colluding: simulator / HIL coordinator only]"
    return text


def _ids_text(ids: Sequence[str]) -> str:
    if len(ids) <= _MAX_IDS:
        return ", ".join(ids)
    return ", ".join(ids[:_MAX_IDS]) + f", ... ({len(ids)} devices)"


def _describe(path: Path, plan: FaultPlan, fleet: list[str] | None) -> list[str]:
    lines = [f"{path}: valid fault plan, seed {plan.seed}, {len(plan.target)} target(s)"]
    if fleet is None:
        lines.append("fleet: unknown (pass --devices N or set fleet_devices to resolve it)")
    else:
        lines.append(f"fleet: {len(fleet)} device(s): {_ids_text(fleet)}")
    lines.append("targets:")
    for index, target in enumerate(plan.target, start=1):
        when = []
        if target.start_round is not None:
            when.append(f"from round {target.start_round}")
        if target.probability is not None:
            when.append(f"probability {target.probability}")
        suffix = f" ({', '.join(when)})" if when else ""
        lines.append(
            f"  {index}. {target.selector()}{suffix} -> {_faults_text(target.effective_faults())}"
        )
    if fleet is None and plan.needs_fleet:
        return lines
    assigned = plan.assignments(fleet)
    if fleet is not None:
        # Ids a target names explicitly need not be in the fleet passed here (a rig may
        # be validated against part of it); they are listed, not counted.
        members = set(fleet)
        outside = [device for device in assigned if device not in members]
        assigned = {device: specs for device, specs in assigned.items() if device in members}
        if outside:
            lines.append(f"not in this fleet (ignored): {_ids_text(outside)}")
    groups: dict[str, list[str]] = {}
    for device, specs in assigned.items():
        groups.setdefault(_faults_text(specs), []).append(device)
    total = f" of {len(fleet)}" if fleet is not None else ""
    lines.append(f"who gets what ({len(assigned)}{total} device(s) compromised):")
    for shown, (faults, devices) in enumerate(groups.items()):
        if shown == _MAX_GROUPS:
            lines.append(f"  ... {len(groups) - _MAX_GROUPS} more group(s)")
            break
        lines.append(f"  {_ids_text(devices)}: {faults}")
    if fleet is not None and len(assigned) < len(fleet):
        lines.append(f"  every other device ({len(fleet) - len(assigned)}): honest")
    return lines


def _validate(plan_path: Path, devices: int | None) -> int:
    from byzedge.faults.errors import FaultConfigError  # noqa: PLC0415
    from byzedge.faults.plan import read_fault_plan, simulator_device_ids  # noqa: PLC0415

    if devices is not None and devices < 1:
        return fail("faults", f"--devices must be >= 1, got {devices}")
    try:
        plan = read_fault_plan(plan_path)
        fleet = simulator_device_ids(devices) if devices is not None else plan.fleet_devices
        if fleet is not None:
            fleet = sorted(fleet)
        lines = _describe(plan_path, plan, fleet)
    except OSError as exc:
        return fail("faults", f"{plan_path}: {exc.strerror or exc}")
    except FaultConfigError as exc:
        return fail("faults", f"{plan_path}: invalid fault plan: {exc}")
    print("\n".join(lines))
    return 0


def _parameters(cls: Callable[..., object]) -> str:
    signature = inspect.signature(cls)
    parts = [
        name if parameter.default is inspect.Parameter.empty else f"{name}={parameter.default!r}"
        for name, parameter in signature.parameters.items()
        if name not in {"self", "source"}
    ]
    return ", ".join(parts)


def _list() -> int:
    from byzedge.faults import ATTACKS, SENSOR_FAULTS  # noqa: PLC0415
    from byzedge.faults.omniscient import OMNISCIENT_ATTACKS  # noqa: PLC0415

    print("sensor faults (wrap the device's data source):")
    for name, cls in SENSOR_FAULTS.items():
        print(f"  {name:<20} {_parameters(cls)}")
    print("device-local attacks (acts on data, update or wire):")
    for name, attack in ATTACKS.items():
        print(f"  {name:<20} [{attack.acts_on}] {_parameters(attack)}")
    print("colluding attacks (simulator / HIL coordinator only):")
    for name, colluding in OMNISCIENT_ATTACKS.items():
        print(f"  {name:<20} {_parameters(colluding)}")
    print("  module:function      your own: f(honest, num_byzantine, context, **params)")
    return 0


def main(argv: Sequence[str]) -> int:
    """Entry point of ``byzedge faults``."""
    args = build_parser().parse_args(argv)
    if args.action == "list":
        return _list()
    return _validate(args.plan, args.devices)
