"""Fault plans: which devices get which faults, in a TOML file.

A plan turns chosen devices of a fleet into faulty or malicious ones, in the simulator
(``byzedge sim``) and on hardware-in-the-loop rigs
(``byzedge agent run --fault-plan plan.toml``)::

    seed = 7                                   # seed of the choices and of every fault
    fleet_devices = ["dev-000", "dev-001"]     # optional: the fleet's ids, for count/fraction
                                               # targets on a real rig (the simulator and
                                               # `byzedge faults validate --devices N` pass them)
    [[target]]
    devices = ["dev-003", "dev-011"]           # ids, or ["*"] for every device
    faults = [
      { name = "sign-flip", params = { factor = 4.0, start_round = 5 } },
      { name = "dropout", params = { intensity = 0.2, probability = 0.5 } },
    ]

    [[target]]
    count = 3                                  # or: fraction = 0.1 (floor of 10 % of the fleet)
    start_round = 2                            # defaults for every fault of the target
    probability = 0.5                          # (a fault's own params win)
    faults = [{ name = "label-flip" }]

    [[target]]
    fraction = 0.2
    faults = [{ name = "alie" }]               # colluding: simulator / HIL coordinator only

Selection. A target names devices explicitly, or picks ``count`` (or
``floor(fraction * N + 1e-9)``) of the fleet's ``N`` ids at random, reproducibly: the
choice depends only on the plan's ``seed``, the target's position and the sorted fleet
ids. A picking target chooses among the devices no earlier target assigned, so two
``count`` targets give disjoint sets. A device gets the faults of every target that
assigned it, in file order; every other device gets an empty injector (its source and
pipeline unchanged). Each device's injector is seeded from ``(seed, device id)``.

A colluding attack (:data:`~faults.omniscient.OMNISCIENT_ATTACKS` or a user's
``module:function``) is allowed: the simulator runs it for the devices it is assigned to.
A real agent given one refuses to start (:func:`load_fault_plan`).
"""

from __future__ import annotations

import math
import tomllib
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from byzedge.faults.errors import FaultConfigError
from byzedge.faults.injector import FaultInjector, FaultSpec, _accepted_params, _registry

__all__ = [
    "FaultPlan",
    "FaultTarget",
    "load_fault_plan",
    "read_fault_plan",
    "simulator_device_ids",
]

_FRACTION_SLACK = 1e-9


def simulator_device_ids(count: int) -> list[str]:
    """The simulator's device ids for a fleet of ``count``: ``dev-000``, ``dev-001``..."""
    return [f"dev-{index:03d}" for index in range(count)]


class FaultTarget(BaseModel):
    """A set of devices and the faults they get."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    devices: list[str] | None = Field(
        None, min_length=1, description='Device ids, or ["*"] for all.'
    )
    count: int | None = Field(None, ge=0, description="Pick this many devices at random.")
    fraction: float | None = Field(
        None, ge=0.0, le=1.0, description="Pick floor(fraction * fleet size) devices at random."
    )
    start_round: int | None = Field(
        None, ge=0, description="Default start_round of every fault of this target."
    )
    probability: float | None = Field(
        None, ge=0.0, le=1.0, description="Default per-round probability of every fault."
    )
    faults: list[FaultSpec] = Field(min_length=1, description="Faults, in application order.")

    @model_validator(mode="after")
    def _one_selector(self) -> FaultTarget:
        given = [
            name
            for name, value in (
                ("devices", self.devices),
                ("count", self.count),
                ("fraction", self.fraction),
            )
            if value is not None
        ]
        if len(given) != 1:
            msg = "give exactly one of devices, count or fraction" + (
                f" (got {', '.join(given)})" if given else ""
            )
            raise ValueError(msg)
        return self

    @property
    def picks(self) -> bool:
        """Whether the target picks devices at random (``count`` or ``fraction``)."""
        return self.devices is None

    def size(self, fleet_size: int) -> int:
        """How many devices a picking target takes from a fleet of ``fleet_size``."""
        if self.count is not None:
            return self.count
        if self.fraction is not None:
            return math.floor(self.fraction * fleet_size + _FRACTION_SLACK)
        return 0

    def selector(self) -> str:
        """A short human description of how the target chooses devices."""
        if self.devices is not None:
            return "every device" if "*" in self.devices else ", ".join(self.devices)
        if self.count is not None:
            return f"{self.count} device(s) picked at random"
        return f"fraction {self.fraction} of the fleet, picked at random"

    def effective_faults(self) -> list[FaultSpec]:
        """The faults with the target's ``start_round`` / ``probability`` filled in.

        A default applies to a fault that accepts the parameter and does not set it.
        """
        defaults = {
            key: value
            for key, value in (("start_round", self.start_round), ("probability", self.probability))
            if value is not None
        }
        if not defaults:
            return list(self.faults)
        registry = _registry()
        out: list[FaultSpec] = []
        for spec in self.faults:
            cls = registry.get(spec.name)
            accepted = _accepted_params(cls) if cls is not None else []
            params = dict(spec.params)
            for key, value in defaults.items():
                if key in accepted:
                    params.setdefault(key, value)
            out.append(FaultSpec(name=spec.name, params=params))
        return out


class FaultPlan(BaseModel):
    """A whole plan (see the module docstring for the file format)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = Field(0, ge=0, description="Seed of the device choices and every fault.")
    fleet_devices: list[str] | None = Field(
        None,
        min_length=1,
        description="The fleet's device ids, for count/fraction targets on a real rig.",
    )
    target: list[FaultTarget] = Field(default_factory=list, description="The targets.")

    @property
    def needs_fleet(self) -> bool:
        """Whether a target picks devices by count or fraction."""
        return any(t.picks for t in self.target)

    def _fleet(self, device_ids: Sequence[str] | None) -> list[str] | None:
        ids = device_ids if device_ids is not None else self.fleet_devices
        if ids is None:
            if self.needs_fleet:
                msg = (
                    "this plan picks devices by count or fraction, so it needs the fleet's "
                    "device ids: list them in the plan's fleet_devices (a device cannot see "
                    "its fleet) or pass them in"
                )
                raise FaultConfigError(msg)
            return None
        unique = sorted(set(ids))
        if len(unique) != len(ids):
            msg = "the fleet's device ids contain duplicates"
            raise FaultConfigError(msg)
        return unique

    def _chosen(self, fleet: list[str] | None) -> list[frozenset[str] | None]:
        """Per target, the devices it assigns (``None``: every device, fleet unknown)."""
        chosen: list[frozenset[str] | None] = []
        taken: set[str] = set()
        for index, target in enumerate(self.target):
            if target.devices is not None:
                if "*" in target.devices:
                    devices = None if fleet is None else frozenset(fleet)
                else:
                    devices = frozenset(target.devices)
            else:
                assert fleet is not None  # noqa: S101 - _fleet raised otherwise
                pool = [device for device in fleet if device not in taken]
                size = target.size(len(fleet))
                if size > len(pool):
                    msg = (
                        f"target {index + 1} asks for {size} devices but only {len(pool)} of "
                        f"the fleet's {len(fleet)} are not assigned by an earlier target"
                    )
                    raise FaultConfigError(msg)
                rng = np.random.default_rng([self.seed, index])
                picked = rng.choice(len(pool), size=size, replace=False)
                devices = frozenset(pool[int(i)] for i in picked)
            chosen.append(devices)
            taken |= devices if devices is not None else set(fleet or ())
        return chosen

    def assignments(self, device_ids: Sequence[str] | None = None) -> dict[str, list[FaultSpec]]:
        """Return each assigned device's faults, in file order.

        Parameters
        ----------
        device_ids:
            The fleet's ids (``fleet_devices`` when ``None``). Needed when a target picks
            by count or fraction, and to expand ``["*"]``.

        Returns
        -------
        dict
            Device id -> its faults, sorted by id; devices with no fault are absent. With
            the fleet unknown, a ``["*"]`` target adds its faults to the explicitly named
            devices only.

        Raises
        ------
        ValueError
            When a picking target has no fleet to pick from, or asks for more devices
            than remain unassigned.
        """
        fleet = self._fleet(device_ids)
        chosen = self._chosen(fleet)
        named = {device for devices in chosen if devices is not None for device in devices}
        return {
            device: self._collect(device, chosen)
            for device in sorted(named | set(fleet or ()))
            if self._collect(device, chosen)
        }

    def _collect(self, device_id: str, chosen: list[frozenset[str] | None]) -> list[FaultSpec]:
        return [
            spec
            for target, devices in zip(self.target, chosen, strict=True)
            if devices is None or device_id in devices
            for spec in target.effective_faults()
        ]

    def faults_for(
        self, device_id: str, device_ids: Sequence[str] | None = None
    ) -> list[FaultSpec]:
        """The faults of ``device_id`` in file order (empty when no target assigns it)."""
        return self._collect(device_id, self._chosen(self._fleet(device_ids)))

    def device_seed(self, device_id: str) -> int:
        """The injector seed of ``device_id``: derived from ``(seed, crc32(device id))``."""
        sequence = np.random.SeedSequence([self.seed, zlib.crc32(device_id.encode("utf-8"))])
        return int(sequence.generate_state(1, dtype=np.uint32)[0])

    def injector_for(
        self, device_id: str, device_ids: Sequence[str] | None = None
    ) -> FaultInjector:
        """Build the injector of ``device_id`` (empty when no target assigns it).

        A colluding attack assigned to the device is exposed as
        :attr:`FaultInjector.colluding_attack` (for the simulator).
        """
        return FaultInjector(
            self.faults_for(device_id, device_ids), seed=self.device_seed(device_id)
        )

    def compromised(self, device_ids: Sequence[str]) -> list[str]:
        """The sorted ids, among ``device_ids``, that get at least one fault."""
        assigned = self.assignments(device_ids)
        return sorted(device for device in assigned if device in set(device_ids))

    def validate_faults(self) -> None:
        """Build every target's faults once, so a bad parameter fails now.

        Raises
        ------
        ValueError
            Naming the target and the problem.
        """
        for index, target in enumerate(self.target):
            try:
                FaultInjector(target.effective_faults(), seed=self.seed)
            except FaultConfigError as exc:
                msg = f"target {index + 1}: {exc}"
                raise FaultConfigError(msg) from exc


def _problems(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


def parse_fault_plan(raw: Mapping[str, Any]) -> FaultPlan:
    """Validate a parsed TOML mapping into a plan, every fault built once.

    Raises
    ------
    ValueError
        With every problem, each prefixed with where it is (``target.1.count: ...``).
    """
    try:
        plan = FaultPlan.model_validate(raw)
    except ValidationError as exc:
        raise FaultConfigError(_problems(exc)) from exc
    plan.validate_faults()
    return plan


def read_fault_plan(path: Path) -> FaultPlan:
    """Read and validate the plan at ``path``.

    Raises
    ------
    ValueError
        When the file is not valid TOML or not a valid plan (the message says where).
    OSError
        When the file cannot be read.
    """
    with path.open("rb") as handle:
        try:
            raw = tomllib.load(handle)
        except tomllib.TOMLDecodeError as exc:
            msg = f"not valid TOML: {exc}"
            raise FaultConfigError(msg) from exc
    return parse_fault_plan(raw)


def load_fault_plan(
    path: Path, device_id: str, device_ids: Sequence[str] | None = None
) -> FaultInjector:
    """Read the plan at ``path`` and return ``device_id``'s injector, for a real agent.

    Parameters
    ----------
    path:
        The plan file.
    device_id:
        The agent's id.
    device_ids:
        The fleet's ids, if known (else the plan's ``fleet_devices``).

    Raises
    ------
    ValueError
        When the file is not valid TOML or not a valid plan (the message says where), or
        when it assigns this device a colluding attack, which needs the simulator or
        coordinator-side collusion in a HIL rig.
    OSError
        When the file cannot be read.
    """
    plan = read_fault_plan(path)
    return plan.injector_for(device_id, device_ids).require_device_local()
