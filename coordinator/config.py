"""The coordinator's configuration: a strict, frozen TOML schema.

Keys follow the product vocabulary (DESIGN.md "Contracts") because operators write them in
``coordinator.toml`` and they appear in round summaries. Unknown keys are errors, so a typo
never silently falls back to a default. Secrets (the signing key) are files, never values.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import (
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from byzedge.coordinator.aggregation import (
    AGGREGATORS,
    PRE_AGGREGATORS,
    STATELESS,
    build,
    parameters,
)
from byzedge.coordinator.round_engine import with_automatic_radius
from byzedge.coordinator.training_method import (
    FEDAVG,
    METHOD_DEFAULT_RULE,
    MethodConfig,
    build_training_method,
    is_method,
)
from byzedge.daemon.config import (
    ConfigError,
    StrictModel,
    checked_identifier,
    format_validation_error,
    read_toml,
    resolve_mqtt_paths,
    resolve_paths,
)
from byzedge.daemon.mqtt import MqttSettings
from byzedge.methods import METHODS
from byzedge.models.factory import is_factory_reference
from byzedge.models.tasks import LossName

__all__ = [
    "AggregationConfig",
    "ClusterConfig",
    "ConfigError",
    "CoordinatorConfig",
    "LogsConfig",
    "MetricsConfig",
    "load_coordinator_config",
    "rule_parameters",
]


class _Strict(StrictModel):
    """The coordinator's tables (strict and frozen, see :class:`daemon.config.StrictModel`)."""


class AggregationConfig(_Strict):
    """Hyperparameters of the robust rules (``aggregation_config`` table)."""

    trim_fraction: float = Field(
        0.2, ge=0.0, lt=0.5, description="trimmed-mean: fraction dropped from each side."
    )
    krum_k: int | None = Field(
        None, ge=1, description="multi-krum: updates averaged (default n - f)."
    )
    clip_norm: float | None = Field(
        None, gt=0, description="norm-clipping: largest update norm kept."
    )
    clip_multiplier: float = Field(
        1.0,
        gt=0,
        description=(
            "clipping-vr: scale of the automatic radius (median mode: multiplier x median "
            "distance to the reference; model-step mode: the paper's lambda)."
        ),
    )
    radius: Literal["median", "model-step"] | None = Field(
        None,
        description=(
            "clipping-vr: automatic radius when clip_threshold is unset; 'median' "
            "(clip_multiplier x median distance) or 'model-step' (clip_multiplier x "
            "||x_k - x_(k-1)||, Byz-VR-MARINA-PP). Unset: 'model-step' when rounds sample "
            "cohorts (devices_per_round or participation_rate), where a Byzantine-majority "
            "cohort would set the median; else 'median', which keeps training on "
            "heterogeneous data where 'model-step' over-clips "
            "(benchmarks/results/robustness.md, sections 4 and 7)."
        ),
    )
    reference: Literal["global", "per-device"] | None = Field(
        None,
        description=(
            "clipping-vr: what differences are taken against; 'global' (default: the "
            "previous aggregate) or 'per-device' (each device's last clipped contribution)."
        ),
    )
    iterations: int | None = Field(
        None, ge=1, description="centered-clipping: clipping steps L per round (default 3)."
    )
    nu: float | None = Field(
        None, gt=0, description="geometric-median: Weiszfeld smoothing nu (default 0.1)."
    )
    max_iter: int | None = Field(
        None, ge=1, description="geometric-median: iteration cap (rule default when unset)."
    )
    tol: float | None = Field(
        None, gt=0, description="geometric-median: relative stopping step (rule default)."
    )
    inner: str | None = Field(
        None,
        description=(
            "bucketing, nnm, arc: registry name of the stateless rule applied after the "
            "pre-aggregation (default coordinate-median); it takes its hyperparameters from "
            "this table too."
        ),
    )
    inner_params: dict[str, float | int | str | bool] = Field(
        default_factory=dict,
        description=(
            "bucketing, nnm, arc: hyperparameters of the inner rule, overriding the ones "
            "this table gives it (e.g. {krum_k = 5})."
        ),
    )
    bucket_size: int | None = Field(
        None, ge=1, description="bucketing: updates averaged per bucket (default 2)."
    )
    seed: int | None = Field(
        None,
        ge=0,
        description=(
            "bucketing: seed of the per-round bucket permutations; unset draws fresh "
            "OS entropy, which devices cannot predict (the top-level seed is not used)."
        ),
    )


class MetricsConfig(_Strict):
    """The Prometheus endpoint (``[metrics]`` table); off unless enabled."""

    enabled: bool = Field(False, description="Serve Prometheus metrics over HTTP.")
    host: str = Field(
        "127.0.0.1", description="Address the metrics endpoint binds (local by default)."
    )
    port: int = Field(9464, ge=1, le=65535, description="Port of the metrics endpoint.")


class LogsConfig(_Strict):
    """Size limits of the coordinator's own files (``[logs]`` table); state stays bounded."""

    audit_max_bytes: int = Field(
        4 * 1024 * 1024, ge=4096, description="Audit log segment size before it rotates."
    )
    audit_keep: int = Field(
        16, ge=1, description="Rotated audit segments kept (the oldest are deleted)."
    )
    rounds_max_bytes: int = Field(
        4 * 1024 * 1024, ge=4096, description="rounds.jsonl segment size before it rotates."
    )
    rounds_keep: int = Field(4, ge=1, description="Rotated rounds.jsonl segments kept.")
    rejections_per_minute: int = Field(
        5,
        ge=1,
        description=(
            "Rejection log lines per (device, reason) and minute; the rest are counted and "
            "summarised in one line (every rejection is still counted and in the metrics)."
        ),
    )
    audited_rejections_per_round: int = Field(
        10,
        ge=1,
        description=(
            "Audit records per (device, reason) and round; further rejections are audited "
            "as one summary record with their count."
        ),
    )


class ClusterConfig(_Strict):
    """Sharded ingest (``[cluster]`` table): ingest workers share the fleet's update stream.

    With ``workers = 0`` (the default) the coordinator verifies every update itself. With
    ``workers = K`` it becomes the leader: K ``byzedge coordinator ingest-worker``
    processes consume the updates as competing consumers, verify, decode and fold them,
    and send it partial aggregates; it merges them and runs the round
    (coordinator/cluster/).
    """

    broker: Literal["mosquitto", "nats"] = Field(
        "mosquitto",
        description=(
            "How the workers share the stream: 'mosquitto' is an MQTT v5 shared "
            "subscription ($share/<share_group>/...), the same path on EMQX and HiveMQ; "
            "'nats' a durable JetStream pull consumer on a NATS cluster (nats_servers)."
        ),
    )
    workers: int = Field(
        0, ge=0, le=64, description="Ingest workers; 0 runs today's single process."
    )
    share_group: str = Field(
        "byzedge-ingest", description="The MQTT v5 share group every worker of the fleet joins."
    )
    leader_lease_s: float = Field(
        15.0,
        gt=0,
        description=(
            "Leader lease: a standby coordinator takes over this long after the leader "
            "stops renewing (the file lock of one machine is released at once on exit)."
        ),
    )
    partial_flush_s: float = Field(
        0.5,
        gt=0,
        description=(
            "A worker sends its partial aggregate this often (sooner when it grows large or "
            "holds many unacknowledged messages); updates count only once it has."
        ),
    )
    nats_servers: tuple[str, ...] = Field(
        (),
        description="broker = 'nats': nats://host:port (or tls://) of every cluster node.",
    )
    worker_cert_file: Path | None = Field(
        None,
        description=(
            "The ingest workers' client certificate (CN ingest, which the broker ACL lets "
            "read updates through $share and publish partials); [mqtt.tls] cert_file if unset."
        ),
    )
    worker_key_file: Path | None = Field(
        None,
        description=(
            "The workers' private key (under systemd: --tls-key); [mqtt.tls] key_file if unset."
        ),
    )

    @field_validator("share_group")
    @classmethod
    def _check_group(cls, value: str) -> str:
        return checked_identifier(value, "share_group")

    @field_validator("nats_servers")
    @classmethod
    def _check_nats_servers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for url in value:
            if not url.startswith(("nats://", "tls://")):
                raise ValueError(f"nats_servers entries look like nats://host:port, got {url!r}")
        return value

    @model_validator(mode="after")
    def _check_worker_tls(self) -> Self:
        if (self.worker_cert_file is None) != (self.worker_key_file is None):
            raise ValueError("set both worker_cert_file and worker_key_file, or neither")
        return self


class CoordinatorConfig(_Strict):
    """Everything ``byzedge coordinator run`` needs."""

    fleet: str = Field(description="Fleet name; the second level of every topic.")
    name: str = Field("coordinator", description="Sender name in signed model headers.")
    mqtt: MqttSettings = Field(default_factory=MqttSettings, description="Broker connection.")
    signing_key: Path = Field(description="PEM Ed25519 private key that signs global models.")
    devices_dir: Path = Field(
        description="Folder of enrolled devices' public keys, one `<device_id>.pub` each."
    )
    enrolment: Literal["files", "sqlite", "postgres"] = Field(
        "files",
        description=(
            "Where enrolled devices are read: 'files' (devices_dir, every key in memory), "
            "'sqlite' (enrolment_db, looked up by id; for fleets of 10^5-10^6 devices) or "
            "'postgres' (enrolment_dsn: a PostgreSQL server that coordinator shards share); "
            "fill a database with `byzedge coordinator enrol import DIR`."
        ),
    )
    enrolment_db: Path | None = Field(
        None,
        description=(
            "The SQLite enrolment database when enrolment = 'sqlite'; "
            "state_dir/enrolment.sqlite3 when unset."
        ),
    )
    enrolment_dsn: str | None = Field(
        None,
        description=(
            "libpq connection string or URI of the enrolment database when enrolment = "
            "'postgres', e.g. 'postgresql://byzedge@db.example/fleet'. Never with a "
            "password: libpq reads it from ~/.pgpass, passfile=, PGPASSFILE or PGPASSWORD."
        ),
    )
    enrolment_dsn_file: Path | None = Field(
        None,
        description=(
            "A file holding the whole DSN (password included), e.g. a systemd credential; "
            "instead of enrolment_dsn."
        ),
    )
    state_dir: Path = Field(description="Where state, audit log and round summaries live.")
    model: str = Field(
        "mlp",
        description=(
            "The model: a registry name (mlp, cnn, ...) or a factory reference "
            "'package.module:function' (then model_template is required)."
        ),
    )
    model_template: Path | None = Field(
        None,
        description=(
            "ONNX template of a factory-reference model, written by `byzedge model export "
            "<model> --out <file>` where torch is installed (the coordinator never imports it)."
        ),
    )
    seed: int = Field(0, description="Seed of the initial model and of cohort sampling.")
    rounds: int = Field(0, ge=0, description="Rounds to run, then exit; 0 runs forever.")
    round_timeout_s: float = Field(
        60.0,
        gt=0,
        description=(
            "Upper bound of a round after its model is published; a round closes earlier "
            "once every device asked has answered or is known to be offline or busy."
        ),
    )
    round_interval_s: float = Field(
        5.0,
        ge=0,
        description=(
            "Pause between the end of a round and the next model, so a fleet that answers "
            "at once does not run rounds back to back on every core."
        ),
    )
    min_updates: int = Field(
        1, ge=1, description="Fewest accepted updates to aggregate; else the round is skipped."
    )
    participation_rate: float | None = Field(
        None, gt=0, le=1, description="Fraction of enrolled devices sampled per round."
    )
    devices_per_round: int | None = Field(
        None, ge=1, description="Number of devices sampled per round (overrides the rate)."
    )
    algorithm: str = Field(
        FEDAVG,
        description=(
            "Training method: fedavg (local epochs, send the delta) or one of "
            "byzedge.methods (byz-vr-marina, byz-vr-marina-pp, byz-ef21, byz-ef21-bc, "
            "byz-dasha-page, clip21-sgd2m), whose options are the [method] table."
        ),
    )
    method: MethodConfig = Field(
        default_factory=MethodConfig, description="The training method's hyper-parameters."
    )
    byzantine_defense: str = Field(
        "clipping-vr", description="Registry name of the robust aggregation rule."
    )
    fallback_defense: str = Field(
        "coordinate-median",
        description=(
            "Stateless rule used (and named in the round summary) when byzantine_defense's "
            "breakdown condition fails for a round's number of updates."
        ),
    )
    clip_threshold: float | None = Field(
        None, gt=0, description="clipping-vr radius; automatic (robust) when unset."
    )
    max_byzantine_fraction: float = Field(
        0.2, ge=0, lt=0.5, description="Share of Byzantine updates the rule must tolerate."
    )
    aggregation_config: AggregationConfig = Field(
        default_factory=AggregationConfig, description="Per-rule hyperparameters."
    )
    server_learning_rate: float = Field(
        1.0, gt=0, description="Global step: x <- x + rate * aggregate of the deltas."
    )
    certified_robustness: bool = Field(
        False,
        description=(
            "Attach to each round's summary and audit record the certified bound on how far "
            "at most floor(max_byzantine_fraction * n) Byzantine rows moved the aggregate "
            "from the honest rows' mean (byzedge.coordinator.certified)."
        ),
    )
    anomaly_detection: bool = Field(True, description="Score updates and flag outliers.")
    anomaly_threshold: float = Field(
        3.0, gt=0, description="Robust z-score above which an update is flagged."
    )
    device_reputation: bool = Field(
        True, description="Weight updates by each device's decaying reputation."
    )
    reputation_decay: float = Field(
        0.95, gt=0, lt=1, description="r <- decay * r + (1 - decay) * (1 if clean else 0)."
    )
    audit_logging: bool = Field(True, description="Append a hash-chained audit record per event.")
    suspicious_device_alerts: bool = Field(
        True, description="Publish an alert when a device is flagged or rejected."
    )
    validation: Literal["digits", "basic-motions", "npz", "none"] = Field(
        "digits",
        description="Held-out set for the round summary's validation metric: a bundled "
        "dataset's test split, 'npz' (validation_path: features and labels), or none.",
    )
    validation_path: Path | None = Field(
        None, description="validation = 'npz': a file of `features` and `labels` (targets)."
    )
    loss: LossName = Field(
        "cross-entropy",
        description="The fleet's task, as the agents' [training] loss: cross-entropy "
        "(validation reports accuracy) or mse (validation reports r2).",
    )
    max_update_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="Largest reassembled update accepted."
    )
    update_ttl_s: float = Field(
        600.0, gt=0, description="Largest accepted age of an update (created to received)."
    )
    model_ttl_s: float = Field(3600.0, gt=0, description="Expiry of a published global model.")
    metrics: MetricsConfig = Field(
        default_factory=MetricsConfig, description="Prometheus metrics endpoint."
    )
    logs: LogsConfig = Field(
        default_factory=LogsConfig, description="Rotation and rate limits of logs."
    )
    cluster: ClusterConfig = Field(
        default_factory=ClusterConfig, description="Sharded ingest (ingest workers, leader)."
    )

    @model_validator(mode="before")
    @classmethod
    def _method_as_defense(cls, raw: Any) -> Any:
        """The seed's spelling: ``byzantine_defense = "<method>"`` selects that method.

        It then aggregates with :data:`~byzedge.coordinator.training_method.METHOD_DEFAULT_RULE`
        (keys the file sets itself win).
        """
        if not isinstance(raw, dict) or not is_method(str(raw.get("byzantine_defense"))):
            return raw
        raw = dict(raw)
        method = raw.pop("byzantine_defense")
        if raw.get("algorithm", method) != method:
            msg = f"byzantine_defense names method {method!r} but algorithm is {raw['algorithm']!r}"
            raise ValueError(msg)
        raw["algorithm"] = method
        raw["byzantine_defense"] = METHOD_DEFAULT_RULE["byzantine_defense"]
        table = dict(raw.get("aggregation_config") or {})
        table.setdefault("inner", METHOD_DEFAULT_RULE["inner"])
        table.setdefault("bucket_size", METHOD_DEFAULT_RULE["bucket_size"])
        raw["aggregation_config"] = table
        return raw

    @field_validator("algorithm")
    @classmethod
    def _check_algorithm(cls, value: str) -> str:
        if value != FEDAVG and not is_method(value):
            known = ", ".join([FEDAVG, *sorted(METHODS)])
            raise ValueError(f"unknown algorithm {value!r}; known: {known}")
        return value

    @model_validator(mode="after")
    def _check_model_template(self) -> Self:
        """A factory reference needs its template; a registered model ships its own."""
        if is_factory_reference(self.model) and self.model_template is None:
            msg = (
                f"model {self.model!r} needs model_template: run `byzedge model export "
                f"{self.model} --out model.onnx` where torch is installed"
            )
            raise ValueError(msg)
        if not is_factory_reference(self.model) and self.model_template is not None:
            msg = f"model {self.model!r} is not a factory reference: drop model_template"
            raise ValueError(msg)
        return self

    @model_validator(mode="after")
    def _check_enrolment_dsn(self) -> Self:
        """'postgres' needs one DSN source; a password in the file itself is refused."""
        if self.enrolment_dsn is not None and self.enrolment_dsn_file is not None:
            raise ValueError("set enrolment_dsn or enrolment_dsn_file, not both")
        if self.enrolment == "postgres" and (self.enrolment_dsn or self.enrolment_dsn_file) is None:
            raise ValueError("enrolment = 'postgres' needs enrolment_dsn or enrolment_dsn_file")
        if self.enrolment_dsn is not None:
            from byzedge.coordinator.enrolment_pg import dsn_has_password  # noqa: PLC0415

            try:
                secret = dsn_has_password(self.enrolment_dsn)
            except ValueError as exc:
                raise ValueError(f"enrolment_dsn: {exc}") from exc
            if secret:
                msg = (
                    "enrolment_dsn must not hold a password: use ~/.pgpass, passfile=, "
                    "PGPASSFILE or enrolment_dsn_file"
                )
                raise ValueError(msg)
        return self

    @model_validator(mode="after")
    def _check_validation_path(self) -> Self:
        if self.validation == "npz" and self.validation_path is None:
            raise ValueError("validation = 'npz' needs validation_path")
        return self

    @model_validator(mode="after")
    def _check_method_builds(self) -> Self:
        """Build the method once, so a bad option or compression fails at load."""
        if self.algorithm != FEDAVG:
            build_training_method(self.algorithm, self.method, self.seed)
        return self

    @field_validator("fleet", "name")
    @classmethod
    def _check_identifier(cls, value: str, info: ValidationInfo) -> str:
        return checked_identifier(value, info.field_name or "identifier")

    @field_validator("byzantine_defense")
    @classmethod
    def _check_defense(cls, value: str) -> str:
        if value not in AGGREGATORS:
            raise ValueError(f"unknown rule {value!r}; known: {', '.join(sorted(AGGREGATORS))}")
        return value

    @field_validator("fallback_defense")
    @classmethod
    def _check_fallback(cls, value: str) -> str:
        if value not in STATELESS:
            known = ", ".join(sorted(STATELESS))
            raise ValueError(f"fallback_defense must be a stateless rule ({known}), got {value!r}")
        return value

    @model_validator(mode="after")
    def _check_cluster(self) -> Self:
        """What sharded ingest cannot do (yet), refused at load with the reason."""
        cluster = self.cluster
        if cluster.workers == 0:
            return self
        if self.algorithm != FEDAVG:
            msg = (
                f"[cluster] workers = {cluster.workers} needs algorithm = 'fedavg': a training "
                f"method ({self.algorithm}) reads every update's method message at the leader"
            )
            raise ValueError(msg)
        if self.max_update_bytes > self.mqtt.max_message_bytes:
            msg = (
                f"[cluster] workers = {cluster.workers}: the workers share MQTT messages, "
                "not whole updates, so the chunks of one chunked update would land on "
                f"different workers; lower max_update_bytes ({self.max_update_bytes}) to "
                f"mqtt.max_message_bytes ({self.mqtt.max_message_bytes}) or less, so that "
                "no device chunks its update"
            )
            raise ValueError(msg)
        if cluster.broker == "nats" and not cluster.nats_servers:
            raise ValueError("[cluster] broker = 'nats' needs nats_servers")
        return self

    @model_validator(mode="after")
    def _check_rules_build(self) -> Self:
        """Build both rules once, so a bad hyperparameter fails at load, naming itself."""
        for name in (self.byzantine_defense, self.fallback_defense):
            build(name, **rule_parameters(self, name))
        return self


def rule_parameters(config: CoordinatorConfig, name: str) -> dict[str, Any]:
    """Return the keyword arguments :func:`~byzedge.coordinator.aggregation.build` needs.

    Every constructor parameter of every rule is a config field of the same name, in the
    ``aggregation_config`` table or at the top level (``clip_threshold``,
    ``max_byzantine_fraction``); unset (``None``) fields are left out, so the rule's own
    default applies. A pre-aggregator's ``inner_params`` are the inner rule's parameters
    from the same fields (except ``max_byzantine_fraction``, which the pre-aggregator
    derives, and ``inner``/``inner_params``/``seed``, which belong to the outer rule),
    overridden by ``aggregation_config.inner_params``. An unset clipping-vr ``radius``
    follows the participation: ``"model-step"`` when rounds sample cohorts
    (``devices_per_round`` or ``participation_rate``), else ``"median"``
    (:func:`~byzedge.coordinator.round_engine.with_automatic_radius`, which the simulator
    uses too).

    Raises
    ------
    ValueError
        If ``name`` (or the inner rule) is not registered.
    """
    params = with_automatic_radius(
        name,
        _fields_for(config, name),
        devices_per_round=config.devices_per_round,
        participation_rate=config.participation_rate,
    )
    if name in PRE_AGGREGATORS:
        inner = (
            params.get("inner") or inspect.signature(AGGREGATORS[name]).parameters["inner"].default
        )
        if inner not in AGGREGATORS:
            raise ValueError(f"unknown inner rule {inner!r}")
        own = ("inner", "inner_params", "seed", "max_byzantine_fraction")
        inner_params = {k: v for k, v in _fields_for(config, inner).items() if k not in own}
        inner_params.update(config.aggregation_config.inner_params)
        params.pop("inner_params", None)
        if inner_params:
            params["inner_params"] = inner_params
    return params


def _fields_for(config: CoordinatorConfig, name: str) -> dict[str, Any]:
    table = config.aggregation_config
    values: dict[str, Any] = {}
    for key in parameters(name):
        if key in AggregationConfig.model_fields:
            value = getattr(table, key)
        elif key in CoordinatorConfig.model_fields:
            value = getattr(config, key)
        else:  # a rule grew a parameter without a config field: the conformance suite fails
            raise ValueError(f"rule {name!r} parameter {key!r} has no config field")
        if value is not None and value != {}:
            values[key] = value
    return values


def load_coordinator_config(
    path: Path, overrides: dict[str, Any] | None = None
) -> CoordinatorConfig:
    """Read ``path`` (TOML), apply ``overrides`` (CLI flags), validate.

    Relative paths in the file are resolved against the file's folder, so a fleet folder
    can be moved as a whole.

    Raises
    ------
    ConfigError
        With a one-line explanation naming the file and the offending key.
    """
    raw = read_toml(path)
    raw.update(overrides or {})
    resolve_paths(
        raw,
        (
            "signing_key",
            "devices_dir",
            "enrolment_db",
            "enrolment_dsn_file",
            "state_dir",
            "validation_path",
            "model_template",
        ),
        path.parent,
    )
    resolve_mqtt_paths(raw, path.parent)
    if isinstance(raw.get("cluster"), dict):
        resolve_paths(raw["cluster"], ("worker_cert_file", "worker_key_file"), path.parent)
    try:
        return CoordinatorConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(path, exc)) from exc
