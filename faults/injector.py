"""The fault injector: turns an honest agent into a faulty or malicious one.

The agent calls :meth:`FaultInjector.wrap_source` on its sensor source and gives
:meth:`FaultInjector.update_stages` and :meth:`FaultInjector.wire_stages` to its update
pipeline, once, at start-up. An honest agent gets an empty injector (the source back
unchanged, no stages); the agent never asks whether it is compromised.

A spec may also name a colluding attack (:mod:`byzedge.faults.omniscient`, or a user's
``module:function``). The injector builds it (validating its parameters) and exposes it
as :attr:`FaultInjector.colluding_attack` for the simulator; it adds nothing to the
agent's seams, and :meth:`FaultInjector.require_device_local` refuses it on a real agent.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from byzedge.edge_agent.seams import LocalData, SensorSource, UpdateStage, WireStage
from byzedge.faults._validate import check_non_negative_int
from byzedge.faults.attacks import ATTACKS, DataAttack, UpdateAttack, WireAttack
from byzedge.faults.errors import FaultConfigError
from byzedge.faults.omniscient import (
    OMNISCIENT_ATTACKS,
    ColludingAttack,
    build_colluding_attack,
    is_colluding_name,
)
from byzedge.faults.sensors import SENSOR_FAULTS, SensorFault

__all__ = ["FaultInjector", "FaultSpec", "check_fault_name", "is_fault_name", "known_fault_names"]

FaultClass = type[SensorFault] | type[DataAttack] | type[UpdateAttack] | type[WireAttack]

# Parameters the injector supplies itself and a spec may not set.
_RESERVED: Final = frozenset({"self", "source"})


def _registry() -> dict[str, FaultClass]:
    merged: dict[str, FaultClass] = {}
    merged.update(SENSOR_FAULTS)
    merged.update(ATTACKS)
    return merged


def known_fault_names(*, colluding: bool = False) -> list[str]:
    """Return every registered device-local name (sensor faults, then attacks), sorted.

    With ``colluding``, the colluding attacks follow, then ``"module:function"`` (a user's
    colluding attack): every name :func:`is_fault_name` accepts, as messages list them.
    """
    local = sorted(SENSOR_FAULTS) + sorted(ATTACKS)
    return [*local, *sorted(OMNISCIENT_ATTACKS), "module:function"] if colluding else local


def _unknown(kind: str, name: str, known: Iterable[str]) -> FaultConfigError:
    return FaultConfigError(f"unknown {kind} {name!r}; known: {', '.join(known)}")


def is_fault_name(name: str) -> bool:
    """Whether ``name`` is something a fault plan or a scenario may name.

    That is a sensor fault, a device-local attack, a colluding attack, or a user's
    colluding attack written ``"module:function"`` (only its form is checked here; the
    module is imported when the attack is built).
    """
    return name in SENSOR_FAULTS or name in ATTACKS or is_colluding_name(name)


def check_fault_name(name: str, kind: str = "fault") -> str:
    """Return ``name`` if :func:`is_fault_name`, else raise naming every known one.

    Raises
    ------
    ValueError
        (:class:`~faults.errors.FaultConfigError`) ``unknown {kind} {name!r}; known: ...``.
    """
    if not is_fault_name(name):
        raise _unknown(kind, name, known_fault_names(colluding=True))
    return name


class FaultSpec(BaseModel):
    """One fault of a plan: a registry name and its hyperparameters.

    Parameters
    ----------
    name:
        A name from ``SENSOR_FAULTS``, ``ATTACKS`` or ``OMNISCIENT_ATTACKS``, or a user's
        colluding attack as ``"module:function"``.
    params:
        Keyword arguments of that fault's class (the wrapped source excluded).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(
        description="Permanent name of a sensor fault, an attack, a colluding attack, "
        "or 'module:function'."
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="Hyperparameters of the fault, as keyword arguments of its class.",
    )

    @field_validator("name")
    @classmethod
    def _known_name(cls, name: str) -> str:
        return check_fault_name(name)

    @property
    def is_colluding(self) -> bool:
        """Whether this names a colluding (omniscient) attack rather than a device-local fault."""
        return self.name not in _registry()


class _NoSource:
    """Placeholder source used only to validate data faults' parameters eagerly."""

    def read(self, round_number: int) -> LocalData:
        msg = "a fault built for validation only cannot be read"
        raise RuntimeError(msg)


def _accepted_params(cls: Callable[..., object]) -> list[str]:
    signature = inspect.signature(cls)
    return [name for name in signature.parameters if name not in _RESERVED]


def _derived_seed(seed: int, index: int) -> int:
    state = np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint32)
    return int(state[0])


class FaultInjector:
    """Applies a list of faults through the agent's three seams (source, update, wire).

    Parameters
    ----------
    specs:
        The faults, as :class:`FaultSpec` or mappings with ``name`` and ``params``. Data
        faults (sensor faults and data attacks) wrap the source in this order, the first
        innermost; update attacks run as stages in this order, then wire attacks run on
        the sealed message in this order. At most one colluding attack.
    seed:
        Non-negative seed of the device. A fault whose params give no ``seed`` gets one
        derived from ``(seed, its index in specs)``.

    Raises
    ------
    ValueError
        (:class:`~faults.errors.FaultConfigError`) for an unknown fault name, a parameter
        the fault does not take, or a parameter value out of range. Every fault is built
        once here, so a bad plan fails at construction.
    """

    def __init__(
        self, specs: Iterable[FaultSpec | Mapping[str, Any]] = (), *, seed: int = 0
    ) -> None:
        self.seed = check_non_negative_int("seed", seed)
        self.specs: tuple[FaultSpec, ...] = tuple(
            spec if isinstance(spec, FaultSpec) else FaultSpec.model_validate(spec)
            for spec in specs
        )
        self._data: list[tuple[type[SensorFault] | type[DataAttack], dict[str, Any]]] = []
        self._stages: list[UpdateStage] = []
        self._wire: list[WireAttack] = []
        self._colluding: list[tuple[FaultSpec, ColludingAttack]] = []
        registry = _registry()
        for index, spec in enumerate(self.specs):
            params = dict(spec.params)
            if spec.is_colluding:
                self._add_colluding(spec, params)
                continue
            cls = registry[spec.name]
            accepted = _accepted_params(cls)
            for key, value in params.items():
                if key not in accepted:
                    msg = (
                        f"{spec.name} has no parameter {key!r} (given {value!r}); "
                        f"accepted: {', '.join(accepted)}"
                    )
                    raise FaultConfigError(msg)
            if "seed" in accepted:
                params.setdefault("seed", _derived_seed(self.seed, index))
            if issubclass(cls, UpdateAttack):
                self._stages.append(cls(**params))
            elif issubclass(cls, WireAttack):
                self._wire.append(cls(**params))
            else:
                probe = cls(_NoSource(), **params)  # validate now; wrap_source builds the real ones
                self._data.append((cls, params))
                if isinstance(probe, DataAttack):
                    companion = probe.update_stage()
                    if companion is not None:
                        self._stages.append(companion)

    def _add_colluding(self, spec: FaultSpec, params: dict[str, Any]) -> None:
        if self._colluding:
            msg = (
                f"one colluding attack per device: {self._colluding[0][0].name!r} and "
                f"{spec.name!r} both given"
            )
            raise FaultConfigError(msg)
        cls = OMNISCIENT_ATTACKS.get(spec.name)
        if cls is not None:
            accepted = _accepted_params(cls)
            for key, value in params.items():
                if key not in accepted:
                    msg = (
                        f"{spec.name} has no parameter {key!r} (given {value!r}); "
                        f"accepted: {', '.join(accepted) or 'none'}"
                    )
                    raise FaultConfigError(msg)
        self._colluding.append((spec, build_colluding_attack(spec.name, params)))

    @classmethod
    def from_names(
        cls,
        attack: str | None = None,
        sensor_faults: Sequence[str] | Mapping[str, Mapping[str, Any]] = (),
        *,
        seed: int = 0,
        attack_params: Mapping[str, Any] | None = None,
    ) -> FaultInjector:
        """Build an injector from registry names (the simulator's and CLI's shorthand).

        Parameters
        ----------
        attack:
            A name from ``ATTACKS`` or a colluding attack (``OMNISCIENT_ATTACKS`` or
            ``"module:function"``), or ``None`` for a device that does not attack.
        sensor_faults:
            Names from ``SENSOR_FAULTS`` (default parameters each), or a mapping from
            such names to their parameters. Applied in order, before the attack.
        seed:
            The device's seed (see :class:`FaultInjector`).
        attack_params:
            Parameters of ``attack``; defaults when ``None``.

        Returns
        -------
        FaultInjector
            The injector, with the sensor faults first and the attack last.

        Raises
        ------
        ValueError
            If a name is not in the registry it is given for, or a parameter is bad.
        """
        if isinstance(sensor_faults, str):
            sensor_faults = [sensor_faults]
        if isinstance(sensor_faults, Mapping):
            pairs = [(name, dict(params)) for name, params in sensor_faults.items()]
        else:
            pairs = [(name, {}) for name in sensor_faults]
        specs: list[FaultSpec] = []
        for name, params in pairs:
            if name not in SENSOR_FAULTS:
                raise _unknown("sensor fault", name, SENSOR_FAULTS)
            specs.append(FaultSpec(name=name, params=params))
        if attack is not None:
            if attack not in ATTACKS and not is_colluding_name(attack):
                raise _unknown("attack", attack, [*ATTACKS, *OMNISCIENT_ATTACKS])
            specs.append(FaultSpec(name=attack, params=dict(attack_params or {})))
        elif attack_params:
            msg = f"attack_params given without an attack: {dict(attack_params)!r}"
            raise FaultConfigError(msg)
        return cls(specs, seed=seed)

    def wrap_source(self, source: SensorSource) -> SensorSource:
        """Return ``source`` wrapped by every data fault (``source`` itself if none).

        Parameters
        ----------
        source:
            The agent's real sensor source.

        Returns
        -------
        SensorSource
            A fresh chain of wrappers on each call (stuck-at state is per chain).
        """
        wrapped: SensorSource = source
        for fault_cls, params in self._data:
            wrapped = fault_cls(wrapped, **params)
        return wrapped

    def update_stages(self) -> list[UpdateStage]:
        """Return the update attacks, in order, to append to the agent's update pipeline.

        A data attack with a companion stage (a boosted ``backdoor``) contributes it at
        its own position in the plan.
        """
        return list(self._stages)

    def wire_stages(self) -> list[WireStage]:
        """Return the protocol-level attacks, in order, for the pipeline's wire stages."""
        return list(self._wire)

    @property
    def colluding(self) -> FaultSpec | None:
        """The colluding attack's spec, if the device takes part in one."""
        return self._colluding[0][0] if self._colluding else None

    @property
    def colluding_attack(self) -> ColludingAttack | None:
        """The built colluding attack (for the simulator), if any."""
        return self._colluding[0][1] if self._colluding else None

    def require_device_local(self) -> FaultInjector:
        """Return ``self``, or raise if it holds a colluding attack (a real agent's check).

        Raises
        ------
        ValueError
            (:class:`~faults.errors.FaultConfigError`) naming the colluding attack: it
            needs the simulator (``byzedge sim``) or coordinator-side collusion in a
            hardware-in-the-loop rig, since one device cannot see the others' updates.
        """
        spec = self.colluding
        if spec is not None:
            msg = (
                f"{spec.name!r} is a colluding (omniscient) attack: it needs every honest "
                "update of the round, so it runs only in the simulator (byzedge sim) or "
                "coordinator-side in a hardware-in-the-loop rig, not on a real agent"
            )
            raise FaultConfigError(msg)
        return self

    @property
    def names(self) -> tuple[str, ...]:
        """The registry names of the faults, in order."""
        return tuple(spec.name for spec in self.specs)

    @property
    def is_compromised(self) -> bool:
        """Ground truth for reports: whether any fault (sensor or attack) is injected."""
        return bool(self.specs)

    @property
    def is_malicious(self) -> bool:
        """Ground truth for reports: whether any attack (as opposed to a sensor fault) is on."""
        return any(name not in SENSOR_FAULTS for name in self.names)

    def __repr__(self) -> str:
        inner = ", ".join(f"{spec.name}({spec.params!r})" for spec in self.specs)
        return f"FaultInjector([{inner}], seed={self.seed})"
