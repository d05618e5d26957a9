"""Scenarios of the in-memory simulator: one strict, frozen model, read from TOML.

Example ``scenario.toml``::

    devices = 25
    rounds = 20
    partition = "iid"                 # iid | dirichlet (alpha) | label-sorted
    byzantine_fraction = 0.2
    attack = "alie"                   # device-local attack, sensor fault, omniscient attack
                                      # or a user's colluding one, "module:function"
    attack_params = {}
    defense = "centered-clipping"
    aggregation = { iterations = 1 }  # hyperparameters of the defense
    momentum1 = 0.9
    seed = 0

Keys follow the coordinator's vocabulary (``participation_rate``, ``devices_per_round``,
``compression``, ``sparsity``, ``anomaly_detection``, ``anomaly_threshold``,
``device_reputation``, ``reputation_decay``, ``momentum1``, ``error_feedback``).

A training method (:mod:`byzedge.methods`) instead of FedAvg::

    algorithm = "byz-vr-marina"        # or defense = "byz-vr-marina", the seed's spelling
    method = { step_size = 0.5, full_gradient_probability = 0.1, batch_size = 32 }
    compression = "rand-k"             # of the class the method needs (unbiased here)
    sparsity = 0.01

``defense`` naming a method selects it with the aggregation its paper runs (coordinate-wise
median over buckets of 2); a method with ``defense`` unset aggregates the same way; a
``defense`` naming an aggregation rule keeps its meaning.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from byzedge.faults import check_fault_name
from byzedge.methods import FEDAVG, METHODS
from byzedge.models.tasks import LossName

__all__ = ["METHOD_DEFENSE", "Scenario", "load_scenario"]

METHOD_DEFENSE = "bucketing+coordinate-median"
"""The aggregation of a training method whose scenario names no rule (buckets of 2, CM)."""


class Scenario(BaseModel):
    """One simulated fleet: data, cohort, compromised devices, defense, training."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    name: str = Field("scenario", description="Label used in reports.")
    devices: int = Field(25, ge=1, description="Number of devices in the fleet.")
    rounds: int = Field(20, ge=1, description="Rounds to simulate.")
    model: str = Field(
        "mlp", description="Registry name of the model (mlp or cnn; sensor-cnn for basic-motions)."
    )
    dataset: Literal["digits", "basic-motions"] = Field(
        "digits",
        description="digits: scikit-learn's 8x8 digits; basic-motions: BasicMotions' "
        "6-channel accelerometer/gyroscope windows (sktime's wheel), with model sensor-cnn.",
    )
    partition: Literal["iid", "dirichlet", "label-sorted"] = Field(
        "iid", description="How the dataset's training split is dealt to the devices."
    )
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration (dirichlet only).")
    participation_rate: float | None = Field(
        None, gt=0, le=1, description="Fraction of devices sampled per round (None: all)."
    )
    devices_per_round: int | None = Field(
        None, ge=1, description="Devices sampled per round (overrides participation_rate)."
    )
    byzantine_fraction: float = Field(
        0.0, ge=0, lt=1, description="Share of compromised devices, floor(fraction * devices)."
    )
    fault_plan: Path | None = Field(
        None, description="A fault plan (TOML) naming the compromised devices instead."
    )
    byzantine_data: Literal["own-shard", "iid"] = Field(
        "own-shard",
        description="own-shard: compromised devices get their shard of the partition like "
        "everyone; iid: the partition is dealt to the honest devices only and each "
        "compromised device samples len(train)/devices points uniformly (the bucketing "
        "paper's non-IID set-up, where no class lives on Byzantine devices only).",
    )
    attack: str | None = Field(
        None,
        description="Name in faults.ATTACKS, faults.SENSOR_FAULTS or the omniscient attacks, "
        "or a user's colluding attack as 'module:function'; None or 'none' for no attack.",
    )
    attack_params: dict[str, Any] = Field(
        default_factory=dict, description="Hyperparameters of the attack."
    )
    algorithm: str = Field(
        FEDAVG,
        description="Training method: fedavg (local epochs, the delta) or a name in "
        "byzedge.methods.METHODS (byz-vr-marina, byz-ef21, ...).",
    )
    method: dict[str, Any] = Field(
        default_factory=dict,
        description="The training method's options (step_size, full_gradient_probability, "
        "reference_update_frequency, batch_size, clip_multiplier, momentum1, momentum2, "
        "clip_norm, dp_noise_multiplier, ..., and rand_k_support: round or device); "
        "checked as the coordinator checks its [method] table.",
    )
    defense: str = Field("clipping-vr", description="Registry name of the aggregation rule.")
    aggregation: dict[str, Any] = Field(
        default_factory=dict, description="Hyperparameters of the defense (build() keywords)."
    )
    max_byzantine_fraction: float = Field(
        0.2, ge=0, lt=0.5, description="What krum/bulyan/multi-krum assume (as in the config)."
    )
    certified_robustness: bool = Field(
        False,
        description=(
            "Certify each round's bound (as the coordinator's key) and record it with the "
            "measured deviation from the honest rows' mean."
        ),
    )
    momentum1: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Worker momentum beta: m <- beta*m + (1-beta)*delta, m is sent.",
    )
    learning_rate: float = Field(0.3, gt=0, description="Local SGD step size.")
    epochs: int = Field(2, ge=1, description="Local epochs per round.")
    batch_size: int = Field(8, ge=1, description="Local mini-batch size.")
    loss: LossName = Field(
        "cross-entropy",
        description="The task: cross-entropy (class labels, metric accuracy) or mse "
        "(real targets, metric r2), as the agents' [training] loss.",
    )
    server_learning_rate: float = Field(1.0, gt=0, description="x <- x + rate * aggregate.")
    compression: str = Field("dense", description="Uplink codec: dense, float16 or top-k.")
    sparsity: float = Field(0.1, gt=0, le=1, description="top-k: share of coordinates kept.")
    error_feedback: bool = Field(True, description="Error feedback for lossy codecs.")
    anomaly_detection: bool = Field(True, description="Score updates and flag outliers.")
    anomaly_threshold: float = Field(3.0, gt=0, description="Robust z-score flag threshold.")
    device_reputation: bool = Field(True, description="Weight updates by reputation.")
    reputation_decay: float = Field(0.95, gt=0, lt=1, description="Reputation EMA decay.")
    trainer: Literal["batched", "per-device"] = Field(
        "batched",
        description="batched: all sampled devices at once (torch.func, same deltas as "
        "train_local); per-device: edge_agent.training.train_local one device at a time.",
    )
    eval_every: int = Field(1, ge=1, description="Evaluate the global model every k rounds.")
    seed: int = Field(0, ge=0, description="Seed of everything.")

    @model_validator(mode="before")
    @classmethod
    def _method_defense(cls, data: Any) -> Any:
        # The seed's spelling: a defense naming a method selects it, aggregated as its
        # paper does; a method with no rule named aggregates that way too.
        if not isinstance(data, dict):
            return data
        data = dict(data)
        defense = data.get("defense")
        if isinstance(defense, str) and defense in METHODS:
            algorithm = data.get("algorithm", FEDAVG)
            if algorithm not in (FEDAVG, defense):
                msg = f"defense {defense!r} names a method but algorithm is {algorithm!r}"
                raise ValueError(msg)
            data["algorithm"] = defense
            data["defense"] = METHOD_DEFENSE
        elif data.get("algorithm", FEDAVG) in METHODS and "defense" not in data:
            data["defense"] = METHOD_DEFENSE
        return data

    @field_validator("algorithm")
    @classmethod
    def _known_algorithm(cls, value: str) -> str:
        if value != FEDAVG and value not in METHODS:
            known = ", ".join([FEDAVG, *sorted(METHODS)])
            raise ValueError(f"unknown algorithm {value!r}; known: {known}")
        return value

    @field_validator("attack", mode="before")
    @classmethod
    def _none_means_no_attack(cls, value: object) -> object:
        return None if value in ("none", "") else value

    @field_validator("attack")
    @classmethod
    def _known_attack(cls, value: str | None) -> str | None:
        return None if value is None else check_fault_name(value, "attack")

    @model_validator(mode="after")
    def _check(self) -> Scenario:
        if self.fault_plan is not None and self.byzantine_fraction > 0:
            msg = "give either byzantine_fraction or fault_plan, not both"
            raise ValueError(msg)
        if self.devices_per_round is not None and self.devices_per_round > self.devices:
            msg = f"devices_per_round {self.devices_per_round} > devices {self.devices}"
            raise ValueError(msg)
        if self.algorithm == FEDAVG and self.method:
            raise ValueError("method options need a training method (algorithm)")
        if self.algorithm != FEDAVG:
            # The coordinator's checks and messages: options, and the codec's class.
            from byzedge.coordinator.training_method import (  # noqa: PLC0415 - methods only
                CODEC_KEYS,
                build_method_for,
            )

            support = self.method.get("rand_k_support", "round")
            if support not in ("round", "device"):
                raise ValueError(f"rand_k_support must be 'round' or 'device', got {support!r}")
            build_method_for(
                self.algorithm,
                {k: v for k, v in self.method.items() if k not in CODEC_KEYS},
                compression=self.compression,
                sparsity=self.sparsity,
                seed=self.seed,
                dim=None,
            )
        return self

    def with_changes(self, **changes: Any) -> Scenario:
        """Return a validated copy with ``changes`` applied."""
        data = self.model_dump()
        data.update(changes)
        return Scenario.model_validate(data, strict=False)


def load_scenario(path: Path, overrides: dict[str, Any] | None = None) -> Scenario:
    """Read a scenario from TOML, apply ``overrides``, validate.

    Raises
    ------
    ValueError
        When the file is not TOML or not a valid scenario (the message names the keys).
    OSError
        When the file cannot be read.
    """
    with path.open("rb") as handle:
        try:
            raw = tomllib.load(handle)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{path}: not valid TOML: {exc}") from exc
    raw.update(overrides or {})
    if isinstance(raw.get("fault_plan"), str):
        plan = Path(raw["fault_plan"])
        raw["fault_plan"] = plan if plan.is_absolute() else path.parent / plan
    try:
        return Scenario.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'scenario'}: {e['msg']}" for e in exc.errors()
        )
        raise ValueError(f"{path}: {problems}") from exc
