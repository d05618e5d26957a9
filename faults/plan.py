"""Fault plans: which devices get which faults, in a TOML file.

A plan turns chosen devices of a real fleet into faulty or malicious ones, for
hardware-in-the-loop rigs (``byzedge agent run --fault-plan plan.toml``)::

    seed = 7

    [[target]]
    devices = ["dev-003", "dev-011"]      # or ["*"] for every device
    faults = [
      { name = "sign-flip", params = { factor = 4.0, start_round = 5 } },
      { name = "dropout", params = { intensity = 0.2 } },
    ]

Every targeted device gets an injector built from the faults of all targets naming it, in
file order; every other device gets an empty injector (its source and pipeline unchanged).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from faults.injector import FaultInjector, FaultSpec

__all__ = ["FaultPlan", "FaultTarget", "load_fault_plan"]


class FaultTarget(BaseModel):
    """A set of devices and the faults they get."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    devices: list[str] = Field(min_length=1, description='Device ids, or ["*"] for all.')
    faults: list[FaultSpec] = Field(min_length=1, description="Faults, in application order.")

    def applies_to(self, device_id: str) -> bool:
        """Whether this target names ``device_id``."""
        return "*" in self.devices or device_id in self.devices


class FaultPlan(BaseModel):
    """A whole plan."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = Field(0, ge=0, description="Seed of every fault's randomness.")
    target: list[FaultTarget] = Field(default_factory=list, description="The targets.")

    def injector_for(self, device_id: str) -> FaultInjector:
        """Build the injector of ``device_id`` (empty when no target names it)."""
        specs = [spec for t in self.target if t.applies_to(device_id) for spec in t.faults]
        return FaultInjector(specs, seed=self.seed)


def load_fault_plan(path: Path, device_id: str) -> FaultInjector:
    """Read the plan at ``path`` and return ``device_id``'s injector.

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
            raise ValueError(msg) from exc
    try:
        plan = FaultPlan.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ValueError(problems) from exc
    return plan.injector_for(device_id)
