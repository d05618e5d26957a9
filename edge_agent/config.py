"""The agent's configuration: a strict, frozen TOML schema (``agent.toml``).

The device's private key is a file path (under systemd, ``$CREDENTIALS_DIRECTORY``), never
a value in this file. Relative paths resolve against the config file's folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from byzedge.daemon.config import (
    ConfigError,
    StrictModel,
    checked_device_id,
    checked_identifier,
    format_validation_error,
    read_toml,
    resolve_mqtt_paths,
    resolve_paths,
)
from byzedge.daemon.mqtt import MqttSettings
from byzedge.models.tasks import LossName
from byzedge.protocol.codecs import CODECS
from byzedge.protocol.errors import TopicError
from byzedge.protocol.topics import update_topic, validate_nats_topic

__all__ = [
    "AgentConfig",
    "DataConfig",
    "EligibilityConfig",
    "TrainingSettings",
    "load_agent_config",
]


class _Strict(StrictModel):
    """The agent's tables (strict and frozen, see :class:`daemon.config.StrictModel`)."""


class DataConfig(_Strict):
    """Where the device's local training data comes from (read again every round)."""

    source: Literal["digits", "basic-motions", "npz", "csv", "function"] = Field(
        "digits",
        description="`digits` / `basic-motions`: one shard of a bundled dataset; `npz`: a "
        "file of `features` (m, *input_shape) or (m, input_dim) float32 and `labels` (m,) "
        "(or (m, outputs) targets for mse); `csv`: a table with a header row, target "
        "column(s) `label_columns`, every other column a feature; `function`: "
        "`function = 'package.module:name'` returns the round's (features, labels).",
    )
    path: Path | None = Field(None, description="The .npz or .csv file (source npz / csv).")
    function: str | None = Field(
        None,
        description="source = 'function': 'package.module:name' of a callable taking the "
        "round number (or nothing) and returning (features, labels) arrays, a mapping with "
        "those keys, or a LocalData: a live sensor pipeline.",
    )
    label_columns: list[str] = Field(
        default_factory=lambda: ["label"],
        min_length=1,
        description="source = 'csv': the target column(s); one class-index column for "
        "cross-entropy, one per model output for mse.",
    )
    feature_shape: list[int] | None = Field(
        None,
        description="Reshape each row's features to this shape, e.g. [6, 50] for windows "
        "of 6 channels (a CSV row is flat): sensor faults then act per channel (axis 1).",
    )
    partition: Literal["iid", "dirichlet", "label-sorted"] = Field(
        "iid",
        description="How a bundled dataset is dealt (a `byzedge.models.partition` name).",
    )
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration (partition only).")
    num_partitions: int = Field(20, ge=1, description="Number of shards the dataset is cut in.")
    partition_index: int = Field(0, ge=0, description="This device's shard.")
    seed: int = Field(0, description="Seed of the partition (the same on every device).")

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.source in ("npz", "csv") and self.path is None:
            msg = f"data.path is required when data.source = {self.source!r}"
            raise ValueError(msg)
        if self.source == "function":
            module, _, name = (self.function or "").partition(":")
            if not module or not name:
                msg = "data.function = 'package.module:name' is required for source 'function'"
                raise ValueError(msg)
        if self.feature_shape is not None and any(d < 1 for d in self.feature_shape):
            msg = f"data.feature_shape must be positive, got {self.feature_shape}"
            raise ValueError(msg)
        if self.partition_index >= self.num_partitions:
            msg = f"partition_index {self.partition_index} >= num_partitions"
            raise ValueError(msg)
        return self


class TrainingSettings(_Strict):
    """Local training hyperparameters."""

    epochs: int = Field(1, ge=1, le=100, description="Local epochs per round (E).")
    learning_rate: float = Field(0.1, gt=0, description="Local SGD step size.")
    batch_size: int = Field(16, ge=1, description="Local mini-batch size.")
    momentum: float = Field(0.0, ge=0, lt=1, description="Local SGD momentum.")
    loss: LossName = Field(
        "cross-entropy",
        description="cross-entropy: classification (labels are class indices; the fleet "
        "reports accuracy); mse: regression (real targets; the fleet reports r2).",
    )
    isolation: Literal["process", "in-process"] = Field(
        "process",
        description=(
            "'process': train in a worker process that exits once training stops, so the "
            "idle agent never holds torch's memory (edge_agent/worker.py); 'in-process': "
            "train in the agent itself (simulations, many agents in one process)."
        ),
    )
    worker_linger_s: float = Field(
        60.0,
        ge=0,
        description=(
            "isolation = 'process': how long the worker stays after a round for the next "
            "one (rounds back to back reuse it); 0 ends it after every round."
        ),
    )


class EligibilityConfig(_Strict):
    """When the device may train; unset limits are not checked."""

    max_cpu_percent: float | None = Field(
        None, gt=0, le=100, description="Skip the round when CPU use is above this."
    )
    min_available_memory_mb: float | None = Field(
        64.0, ge=0, description="Skip the round when less memory than this is free."
    )
    max_temperature_c: float | None = Field(
        80.0, description="Skip the round when the hottest sensor is above this."
    )
    min_battery_percent: float | None = Field(
        None, ge=0, le=100, description="Skip the round on battery below this."
    )


class AgentConfig(_Strict):
    """Everything ``byzedge agent run`` needs."""

    fleet: str = Field(description="Fleet name; the second level of every topic.")
    device_id: str = Field(description="This device's enrolled id.")
    signing_key: Path = Field(description="PEM Ed25519 private key of this device.")
    coordinator_key: Path = Field(description="PEM public key that signs global models.")
    state_dir: Path = Field(description="Where the current model and agent state live.")
    mqtt: MqttSettings = Field(default_factory=MqttSettings, description="Broker connection.")
    model: str = Field("mlp", description="Architecture the fleet trains (must match).")
    data: DataConfig = Field(default_factory=DataConfig, description="Local data source.")
    training: TrainingSettings = Field(
        default_factory=TrainingSettings, description="Local training."
    )
    compression: str = Field(
        "dense",
        description=(
            "Update codec: dense, float16, top-k, top-k-q8, rand-k, rand-k-q8, natural or qsgd."
        ),
    )
    sparsity: float = Field(
        0.1,
        gt=0,
        le=1,
        description="top-k, top-k-q8, rand-k, rand-k-q8: fraction of coordinates sent.",
    )
    error_feedback: bool = Field(
        True,
        description=(
            "Keep what a contractive codec (top-k, top-k-q8) dropped and add it to the next "
            "update; unbiased codecs (rand-k, natural, qsgd) are always sent without it."
        ),
    )
    momentum1: float = Field(
        0.0,
        ge=0,
        lt=1,
        description=(
            "Worker momentum beta in [0, 1): the device sends m <- beta*m + (1-beta)*delta "
            "instead of its trained delta, and keeps m across rounds and restarts; 0 is off."
        ),
    )
    eligibility: EligibilityConfig = Field(
        default_factory=EligibilityConfig, description="Training eligibility rules."
    )
    status_interval_s: float = Field(30.0, gt=0, description="Telemetry status period.")
    receipt_grace_s: float = Field(
        10.0,
        gt=0,
        description=(
            "Sharded ingest: send the round's update again when the coordinator's receipts, "
            "this long after the publish, do not list it (at most once per this period)."
        ),
    )
    fault_plan: Path | None = Field(
        None, description="Fault plan (TOML) that turns this agent into a faulty one (HIL)."
    )
    seed: int = Field(0, description="Seed of local shuffling and of any injected faults.")

    @field_validator("fleet")
    @classmethod
    def _check_identifier(cls, value: str, info: ValidationInfo) -> str:
        return checked_identifier(value, info.field_name or "identifier")

    @field_validator("device_id")
    @classmethod
    def _check_device_id(cls, value: str) -> str:
        return checked_device_id(value)

    @model_validator(mode="after")
    def _check(self) -> AgentConfig:
        if self.mqtt.topic_rules == "nats":
            try:
                validate_nats_topic(update_topic(self.fleet, self.device_id))
            except TopicError as exc:
                raise ValueError(str(exc)) from exc
        if self.compression not in CODECS:
            known = ", ".join(sorted(CODECS))
            msg = f"unknown compression {self.compression!r}; known: {known}"
            raise ValueError(msg)
        return self


_PATH_KEYS = ("signing_key", "coordinator_key", "state_dir", "fault_plan")


def load_agent_config(path: Path, overrides: dict[str, Any] | None = None) -> AgentConfig:
    """Read ``path`` (TOML), apply ``overrides`` (CLI flags), validate.

    Raises
    ------
    ConfigError
        With one line per problem, naming the file and the key.
    """
    raw = read_toml(path)
    raw.update(overrides or {})
    resolve_paths(raw, _PATH_KEYS, path.parent)
    data = raw.get("data")
    if isinstance(data, dict):
        resolve_paths(data, ("path",), path.parent)
    resolve_mqtt_paths(raw, path.parent)
    try:
        return AgentConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(path, exc)) from exc
