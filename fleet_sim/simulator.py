"""The in-memory fleet simulator: real agents' and coordinator's code, no broker.

Everything a device and the coordinator do in production runs here, only the transport is a
function call:

* the coordinator's :func:`~byzedge.coordinator.round_engine.sample_cohort` picks each
  round's devices;
* each sampled device reads its shard through its (possibly fault-wrapped) sensor source,
  trains (``trainer = "per-device"``: :func:`byzedge.edge_agent.training.train_local`; the default
  ``"batched"``: :func:`byzedge.fleet_sim.batched_training.train_many`, the same SGD for all
  sampled devices at once, equal within 1e-5), and runs the agent's real
  :class:`~edge_agent.pipeline.UpdatePipeline` (worker momentum, attack stages, codec with
  error feedback, Ed25519 seal with its own key, wire stages for protocol-level abuse);
* colluding (omniscient) attackers see the round's sampled honest updates and send the
  attack vectors through their own pipelines, signed with their own keys;
* the coordinator's real :class:`~coordinator.ingest.Ingest` verifies every message's bytes
  (so protocol-level abuse is rejected exactly as over MQTT), the round engine's
  :class:`~byzedge.coordinator.round_engine.Intake` sorts the outcomes, and
  :func:`byzedge.coordinator.round_engine.server_step` (the coordinator's own server step,
  streaming path and fallback chain included) scores (with one
  :class:`~coordinator.anomaly.AnomalyDetector` kept for the whole run), updates
  reputation and aggregates.

Worker momentum (``momentum1 = β``) is the agent's (:mod:`byzedge.edge_agent.pipeline`):
each device's pipeline keeps ``m_i <- β m_i + (1 - β) Δ_i`` where ``Δ_i`` is its trained
delta, and sends ``m_i``; the state persists across rounds the device is not sampled in (it
ages). Device-local update attacks run in the pipeline, after momentum (they rewrite what
the device would have sent); colluding attackers send their vectors as is (no momentum, no
error feedback), as the Byzantine workers of the bucketing paper do.

A training method (``scenario.algorithm``, :mod:`byzedge.methods`) runs the same way with
the method's halves: each round the method plans (one
:class:`~byzedge.methods.base.ServerState`; a full round of MARINA(-PP) asks every
device), each asked device proposes from its own :class:`~byzedge.methods.base.DeviceState`
and the torch gradient oracle (:mod:`byzedge.edge_agent.gradients`) on what its sensor
source reads, colluding attackers forge from the honest proposals, every message goes
through the device's pipeline with its method header, the device commits what the
coordinator will decode, and :func:`~byzedge.coordinator.round_engine.method_server_step`
runs the server half. Every device remembers the last model it saw (all see every
published model, asked or not) as the ``x_{r-1}`` of its next difference.

Seeds follow the agent and the MQTT fleet (partition, initial model, cohort sampling,
per-round training seeds, injector seeds), so for the same scenario the in-memory run and
:class:`fleet_sim.fleet.InProcessFleet` agree (``tests/sim/test_transport_parity.py``).
"""

from __future__ import annotations

import copy
import functools
import importlib
import inspect
import logging
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from byzedge.coordinator.aggregation import build, parameters
from byzedge.coordinator.aggregation.base import Aggregator
from byzedge.coordinator.anomaly import AnomalyDetector
from byzedge.coordinator.devices import DeviceRegistry
from byzedge.coordinator.ingest import Ingest, RoundWindow
from byzedge.coordinator.reputation import ReputationBook
from byzedge.coordinator.round_engine import (
    DEFAULT_FALLBACK,
    Intake,
    RoundSettings,
    ServerStepResult,
    aggregate_with_fallback,
    method_server_step,
    sample_cohort,
    server_step,
    with_automatic_radius,
)
from byzedge.coordinator.training_method import cohort_for_plan
from byzedge.edge_agent.pipeline import UpdatePipeline
from byzedge.edge_agent.seams import LocalData, RoundContext, SensorSource
from byzedge.edge_agent.training import TrainingConfig, train_local
from byzedge.faults import ATTACKS, SENSOR_FAULTS, FaultInjector
from byzedge.faults.omniscient import (
    OMNISCIENT_ATTACKS,
    ColludingAttack,
    CollusionContext,
)
from byzedge.faults.plan import read_fault_plan
from byzedge.fleet_sim.scenario import Scenario
from byzedge.methods import FEDAVG, BuiltMethod
from byzedge.methods.base import DeviceState, Proposal, RoundPlan, ServerState
from byzedge.models import OnnxClassifier, export_onnx, get_model_spec, initial_parameters
from byzedge.models.datasets import DigitsSplit, load_dataset
from byzedge.models.partition import get_partitioner
from byzedge.models.spec import ModelSpec
from byzedge.models.tasks import get_task
from byzedge.protocol import topics
from byzedge.protocol.signing import SigningKey

__all__ = [
    "FlagCounts",
    "RoundRecord",
    "SimulationResult",
    "Simulator",
    "flag_counts",
    "omniscient_attacks",
    "run_scenario",
    "shard_indices",
    "split_defense",
]

_LOGGER = logging.getLogger(__name__)
_FLEET = "sim"
# In memory nothing limits message sizes but the coordinator's own checks.
_MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@functools.lru_cache(maxsize=2)
def _dataset(name: str) -> DigitsSplit:
    # Loaded once per process (a matrix worker runs many scenarios); never mutated.
    return load_dataset(name)


def omniscient_attacks() -> Mapping[str, Any]:
    """The registered colluding attacks (:data:`faults.omniscient.OMNISCIENT_ATTACKS`)."""
    return OMNISCIENT_ATTACKS


def device_ids(count: int) -> list[str]:
    """The simulator's device ids: ``dev-000`` ... (the demo's)."""
    return [f"dev-{index:03d}" for index in range(count)]


@dataclass(frozen=True, slots=True)
class FlagCounts:
    """Anomaly flags against the ground truth, over every scored update."""

    true_positives: int = 0
    false_positives: int = 0
    false_negatives: int = 0

    @property
    def precision(self) -> float | None:
        """``TP / (TP + FP)``; ``None`` when nothing was flagged."""
        flagged = self.true_positives + self.false_positives
        return None if flagged == 0 else self.true_positives / flagged

    @property
    def recall(self) -> float | None:
        """``TP / (TP + FN)``; ``None`` when no compromised update was scored."""
        positives = self.true_positives + self.false_negatives
        return None if positives == 0 else self.true_positives / positives

    def __add__(self, other: FlagCounts) -> FlagCounts:
        return FlagCounts(
            self.true_positives + other.true_positives,
            self.false_positives + other.false_positives,
            self.false_negatives + other.false_negatives,
        )


def flag_counts(
    scored: Sequence[str], flagged: Sequence[str], compromised: frozenset[str] | set[str]
) -> FlagCounts:
    """Count one round's flags against the ground truth.

    Parameters
    ----------
    scored:
        Devices whose updates the anomaly scorer saw.
    flagged:
        Those it flagged (a subset of ``scored``).
    compromised:
        Ground truth: devices with an injected fault or attack.
    """
    flags = set(flagged)
    bad = {d for d in scored if d in compromised}
    return FlagCounts(
        true_positives=len(flags & bad),
        false_positives=len(flags - bad),
        false_negatives=len(bad - flags),
    )


@dataclass(slots=True)
class RoundRecord:
    """What one simulated round did."""

    round: int
    accuracy: float | None
    cohort_size: int
    byzantine_in_cohort: int
    accepted: int
    rejected: dict[str, int]
    flagged: list[str]
    fallback: str | None
    backdoor_success: float | None = None
    # certified_robustness: the round's certified bound (None: none finite), its basis, and
    # ||aggregate - mean of the honest accepted rows||, which the simulator can measure.
    certified_bound: float | None = None
    certified_basis: str | None = None
    measured_deviation: float | None = None
    # Training methods only (None under fedavg): the round's coin, the wire bytes of every
    # message sent (envelopes included), and the messages the method did not use.
    full_round: bool | None = None
    uplink_bytes: int | None = None
    method_dropped: int | None = None


@dataclass(slots=True)
class SimulationResult:
    """One scenario's outcome."""

    scenario: dict[str, Any]
    compromised: list[str]
    rounds: list[RoundRecord] = field(default_factory=list)
    flags: FlagCounts = field(default_factory=FlagCounts)
    duration_s: float = 0.0
    metric: str = "accuracy"
    """What ``accuracy`` holds: the task's metric (``accuracy``, or ``r2`` under mse)."""

    @property
    def accuracies(self) -> list[float | None]:
        """The accuracy of each round (``None`` where not evaluated)."""
        return [r.accuracy for r in self.rounds]

    @property
    def final_accuracy(self) -> float | None:
        """The last evaluated accuracy."""
        values = [a for a in self.accuracies if a is not None]
        return values[-1] if values else None

    @property
    def backdoor_success(self) -> float | None:
        """The last round's backdoor success rate (``None`` without a backdoor)."""
        return self.rounds[-1].backdoor_success if self.rounds else None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly document."""
        return {
            "scenario": self.scenario,
            "compromised": self.compromised,
            "final_accuracy": self.final_accuracy,
            "metric": self.metric,
            "flag_precision": self.flags.precision,
            "flag_recall": self.flags.recall,
            "backdoor_success": self.backdoor_success,
            "duration_s": self.duration_s,
            "rounds": [asdict(r) for r in self.rounds],
        }


class _ShardSource:
    """A device's fixed shard of the training split (the in-memory DigitsShardSource)."""

    def __init__(self, data: LocalData) -> None:
        self._data = data

    def read(self, round_number: int) -> LocalData:
        return self._data


@dataclass(slots=True)
class _Device:
    device_id: str
    index: int
    key: SigningKey
    source: SensorSource
    pipeline: UpdatePipeline
    injector: FaultInjector
    colluding: bool
    counter: int = 0
    # Training methods: the device's state, and the last model it saw (digest, params).
    method_state: DeviceState = field(default_factory=DeviceState)
    seen: tuple[str, NDArray[np.float32]] | None = None


def _round_seed(seed: int, device_id: str, round_number: int) -> np.random.SeedSequence:
    """The agent's per-round seed sequence (edge_agent.service: training and stages)."""
    return np.random.SeedSequence([seed, zlib.crc32(device_id.encode()), round_number])


def shard_indices(
    labels: NDArray[np.generic],
    devices: int,
    partition: str,
    *,
    alpha: float = 0.5,
    seed: int = 0,
) -> list[NDArray[np.int64]]:
    """Deal a training split's rows to ``devices`` devices, as the simulator does.

    Class labels go to the partitioner as they are; real-valued (regression) targets only
    under ``iid``, which needs no classes (the others deal by class and refuse them).

    Raises
    ------
    ValueError
        For regression targets under a class-based partition, or too few rows.
    """
    targets = np.asarray(labels)
    if not np.issubdtype(targets.dtype, np.integer):
        if partition != "iid":
            msg = f"partition {partition!r} deals by class; regression targets need 'iid'"
            raise ValueError(msg)
        targets = np.zeros(len(targets), dtype=np.int64)  # iid looks at the row count only
    params = {"alpha": alpha} if partition == "dirichlet" else {}
    return get_partitioner(partition, **params)(targets, devices, np.random.default_rng(seed))


def split_defense(defense: str) -> tuple[str, str | None]:
    """Split ``"pre+inner"`` (e.g. ``"bucketing+krum"``) into the two registry names."""
    rule, _, inner = defense.partition("+")
    return rule, inner or None


def _build_defense(scenario: Scenario) -> Aggregator:
    """Build ``scenario.defense``; ``pre+inner`` wraps a registered inner rule."""
    rule, inner = split_defense(scenario.defense)
    params = dict(scenario.aggregation)
    accepted = parameters(rule)
    if inner is not None:
        params.setdefault("inner", inner)
    if "max_byzantine_fraction" in accepted:
        params.setdefault("max_byzantine_fraction", scenario.max_byzantine_fraction)
    if "seed" in accepted:
        params.setdefault("seed", scenario.seed)  # reproducible buckets
    # clipping-vr's unset radius, chosen as the coordinator chooses it.
    params = with_automatic_radius(
        rule,
        params,
        devices_per_round=scenario.devices_per_round,
        participation_rate=scenario.participation_rate,
    )
    return build(rule, **params)


class Simulator:
    """Runs one :class:`Scenario` in memory.

    Parameters
    ----------
    scenario:
        What to simulate.
    split:
        The dataset's split (``scenario.dataset``, loaded when ``None``; pass it to share
        one across runs, or to train on a user's arrays: class labels ``(n,)`` of integers
        under ``loss = "cross-entropy"``, real targets under ``"mse"``).
    spec:
        The model (``scenario.model`` from the registry or its factory reference when
        ``None``); a user's module handed over from Python
        (:func:`byzedge.models.torch_export.spec_from_module`) comes this way.
    """

    def __init__(
        self,
        scenario: Scenario,
        split: DigitsSplit | None = None,
        *,
        spec: ModelSpec | None = None,
    ) -> None:
        self.scenario = scenario
        self.spec = spec if spec is not None else get_model_spec(scenario.model)
        self.split = split if split is not None else _dataset(scenario.dataset)
        self.task = get_task(scenario.loss)
        self.training = TrainingConfig(
            epochs=scenario.epochs,
            learning_rate=scenario.learning_rate,
            batch_size=scenario.batch_size,
            loss=scenario.loss,
        )
        self.attack_name = scenario.attack  # checked by Scenario (faults.check_fault_name)
        self._colluding_attack: ColludingAttack | None = None
        self.ids = device_ids(scenario.devices)
        self.compromised = self._choose_compromised()
        self.devices = self._build_devices()
        self.registry = DeviceRegistry({d.device_id: d.key.verify_key for d in self.devices})
        self.ingest = Ingest(
            _FLEET,
            self.registry,
            max_message_bytes=_MAX_MESSAGE_BYTES,
            max_update_bytes=_MAX_MESSAGE_BYTES,
        )
        self.reputation = ReputationBook(decay=scenario.reputation_decay)
        # One detector for the whole run, as the coordinator keeps one: its per-device
        # history is part of the score.
        self.detector = AnomalyDetector(scenario.anomaly_threshold)
        self.aggregator = _build_defense(scenario)
        self.fallback = build(DEFAULT_FALLBACK)
        self.settings = RoundSettings(
            anomaly_detection=scenario.anomaly_detection,
            anomaly_threshold=scenario.anomaly_threshold,
            device_reputation=scenario.device_reputation,
            server_learning_rate=scenario.server_learning_rate,
            certified_robustness=scenario.certified_robustness,
            max_byzantine_fraction=scenario.max_byzantine_fraction,
        )
        self.initial_params = initial_parameters(self.spec, np.random.default_rng(scenario.seed))
        self.params = self.initial_params.copy()
        self.model_version = 0
        self._backdoor = self._backdoor_probe()
        self.method: BuiltMethod | None = None
        self.method_state = ServerState()
        if scenario.algorithm != FEDAVG:
            self.method = self._build_method()

    # -- set-up --------------------------------------------------------------------------

    def _choose_compromised(self) -> frozenset[str]:
        scenario = self.scenario
        if scenario.fault_plan is not None:
            return frozenset()  # decided per device from the plan in _build_devices
        if self.attack_name is None or scenario.byzantine_fraction == 0:
            return frozenset()
        count = int(scenario.byzantine_fraction * scenario.devices)
        chosen = np.random.default_rng([scenario.seed, 7]).choice(
            scenario.devices, size=count, replace=False
        )
        return frozenset(self.ids[i] for i in chosen)

    def _build_devices(self) -> list[_Device]:
        scenario = self.scenario
        plan = read_fault_plan(scenario.fault_plan) if scenario.fault_plan is not None else None
        chosen = set(plan.compromised(self.ids)) if plan is not None else set(self.compromised)
        shards = self._shards(chosen)
        devices: list[_Device] = []
        compromised: set[str] = set(self.compromised)
        for index, (device_id, shard) in enumerate(zip(self.ids, shards, strict=True)):
            if plan is not None:
                injector = plan.injector_for(device_id, self.ids)
            elif device_id in self.compromised:
                # Seeded as fleet_sim.fleet seeds its agents' injectors (transport parity).
                injector = self._injector(scenario.seed * 1_000 + index)
            else:
                injector = FaultInjector(seed=scenario.seed * 1_000 + index)
            if injector.is_compromised:
                compromised.add(device_id)
            colluding = injector.colluding_attack is not None
            if colluding and self._colluding_attack is None:
                # One joint attack forges every colluder's vector (the first one's).
                self._colluding_attack = injector.colluding_attack
            # Class indices, or real targets under mse (as the agents' sources read them).
            target_dtype = np.int64 if self.task.classification else np.float32
            data = LocalData(
                features=self.split.train_x[shard].astype(np.float32),
                labels=self.split.train_y[shard].astype(target_dtype),
            )
            pipeline = UpdatePipeline(
                scenario.compression,
                sparsity=scenario.sparsity,
                support=self._rand_k_support(),
                # Colluders send their forged vectors exactly (no residual mixed in, and
                # _send applies no momentum to them).
                error_feedback=scenario.error_feedback and not colluding,
                momentum1=scenario.momentum1,
                stages=injector.update_stages(),
                wire_stages=injector.wire_stages(),
            )
            devices.append(
                _Device(
                    device_id=device_id,
                    index=index,
                    key=SigningKey.generate(),
                    source=injector.wrap_source(_ShardSource(data)),
                    pipeline=pipeline,
                    injector=injector,
                    colluding=colluding,
                )
            )
        self.compromised = frozenset(compromised)
        return devices

    def _shards(self, compromised: set[str]) -> list[NDArray[np.int64]]:
        """Each device's indices into the training split."""
        scenario = self.scenario
        labels = self.split.train_y

        def deal(devices: int) -> list[NDArray[np.int64]]:
            return shard_indices(
                labels, devices, scenario.partition, alpha=scenario.alpha, seed=scenario.seed
            )

        if scenario.byzantine_data == "own-shard" or not compromised:
            return deal(scenario.devices)
        honest = [d for d in self.ids if d not in compromised]
        dealt = iter(deal(len(honest)))
        size = len(labels) // scenario.devices
        sampler = np.random.default_rng([scenario.seed, 11])
        return [
            np.sort(sampler.choice(len(labels), size=size, replace=False)).astype(np.int64)
            if device in compromised
            else next(dealt)
            for device in self.ids
        ]

    def _injector(self, seed: int) -> FaultInjector:
        name = self.attack_name
        params = dict(self.scenario.attack_params)
        if name in SENSOR_FAULTS:
            return FaultInjector.from_names(sensor_faults={name: params}, seed=seed)
        return FaultInjector.from_names(attack=name, attack_params=params, seed=seed)

    def _backdoor_probe(self) -> tuple[NDArray[np.float32], int] | None:
        """Triggered non-target test samples and the target class, for a backdoor attack."""
        if self.attack_name != "backdoor" or not self.compromised:
            return None
        try:
            module = importlib.import_module("byzedge.faults.attacks.backdoor")
        except ImportError:
            return None
        trigger = getattr(module, "apply_trigger", None)
        cls = ATTACKS.get("backdoor")
        if trigger is None or cls is None:
            return None
        signature = inspect.signature(cls.__init__)
        defaults = {
            k: p.default for k, p in signature.parameters.items() if p.default is not p.empty
        }
        options = {**defaults, **self.scenario.attack_params}
        target = int(options.get("target_class", 0))
        keep = self.split.test_y != target
        trigger_params = {
            k: options[k]
            for k in inspect.signature(trigger).parameters
            if k in options and k not in {"features", "x"}
        }
        triggered = np.asarray(trigger(self.split.test_x[keep], **trigger_params), np.float32)
        return triggered, target

    # -- rounds ----------------------------------------------------------------------------

    def run(self, on_round: Callable[[RoundRecord], None] | None = None) -> SimulationResult:
        """Run every round; return the per-round records and the flag statistics."""
        started = time.monotonic()
        result = SimulationResult(
            scenario=self.scenario.model_dump(mode="json"),
            compromised=sorted(self.compromised),
            metric=self.task.metric_name,
        )
        for round_number in range(1, self.scenario.rounds + 1):
            record, counts = self.step(round_number)
            result.rounds.append(record)
            result.flags = result.flags + counts
            if on_round is not None:
                on_round(record)
        result.duration_s = round(time.monotonic() - started, 3)
        return result

    def step(self, round_number: int) -> tuple[RoundRecord, FlagCounts]:
        """Simulate one round; return its record and flag counts."""
        if self.method is not None:
            return self._method_step(self.method, round_number)
        scenario = self.scenario
        sampled = sample_cohort(
            self.ids,
            round_number,
            scenario.seed,
            scenario.devices_per_round,
            scenario.participation_rate,
        )
        cohort_ids = sorted(sampled) if sampled is not None else sorted(self.ids)
        by_id = {d.device_id: d for d in self.devices}
        cohort = [by_id[d] for d in cohort_ids]
        window = RoundWindow(round_number, self.model_version, self.spec.dim, sampled)
        colluders = [d for d in cohort if d.colluding]
        honest_ids = [d.device_id for d in cohort if d.device_id not in self.compromised]
        # Colluders forge their vectors; they train only in a cohort without honest devices,
        # where their own honest updates are all they can see.
        vectors = self._train_cohort(cohort, round_number, include_colluders=not honest_ids)
        if colluders:
            seen = honest_ids or [d.device_id for d in colluders]
            forged = self._collude(
                np.stack([vectors[d] for d in seen]), len(colluders), round_number, len(cohort)
            )
            for device, vector in zip(colluders, forged, strict=True):
                vectors[device.device_id] = np.asarray(vector, dtype=np.float32)
        intake = Intake()
        for device in cohort:
            for topic, frame in self._send(device, vectors[device.device_id], round_number):
                intake.take(self.ingest.submit(topic, frame, window))
        ids = intake.device_ids
        outcome_step = server_step(
            self.params,
            ids,
            intake.rows() or None,
            settings=self.settings,
            reputation=self.reputation,
            aggregator=self.aggregator,
            fallback=self.fallback,
            misbehaving=intake.misbehaving,
            detector=self.detector,
        )
        record, counts = self._close_round(round_number, cohort, intake, outcome_step)
        if outcome_step.certificate is not None:
            record.measured_deviation = self._deviation(intake, outcome_step.aggregate)
        return record, counts

    def _close_round(
        self,
        round_number: int,
        cohort: Sequence[_Device],
        intake: Intake,
        outcome_step: ServerStepResult,
        **extra: Any,
    ) -> tuple[RoundRecord, FlagCounts]:
        """Take the step's model, evaluate when due, and record the round (both paths).

        ``extra`` are the training-method fields of :class:`RoundRecord`.
        """
        scenario = self.scenario
        if outcome_step.model_changed:
            self.params = outcome_step.params
            self.model_version += 1
        counts = (
            flag_counts(list(outcome_step.device_ids), outcome_step.flagged, self.compromised)
            if outcome_step.scores is not None
            else FlagCounts()
        )
        evaluate = round_number % scenario.eval_every == 0 or round_number == scenario.rounds
        accuracy, backdoor = self.evaluate() if evaluate else (None, None)
        record = RoundRecord(
            round=round_number,
            accuracy=accuracy,
            cohort_size=len(cohort),
            byzantine_in_cohort=sum(d.device_id in self.compromised for d in cohort),
            accepted=len(intake.accepted),
            rejected=dict(intake.rejected),
            flagged=list(outcome_step.flagged),
            fallback=outcome_step.fallback,
            backdoor_success=backdoor,
            **extra,
        )
        if outcome_step.certificate is not None:
            record.certified_bound = outcome_step.certificate.bound
            record.certified_basis = outcome_step.certificate.basis
        return record, counts

    def _deviation(self, intake: Intake, aggregate: NDArray[np.float32] | None) -> float | None:
        """``||aggregate - mean of the honest accepted rows||`` (None without honest rows)."""
        honest = [intake.accepted[d].update for d in intake.device_ids if d not in self.compromised]
        if aggregate is None or not honest:
            return None
        mean = np.mean(np.asarray(honest, dtype=np.float64), axis=0)
        return float(np.linalg.norm(aggregate.astype(np.float64) - mean))

    def _train_cohort(
        self, cohort: Sequence[_Device], round_number: int, *, include_colluders: bool = False
    ) -> dict[str, NDArray[np.float32]]:
        trainers = [d for d in cohort if include_colluders or not d.colluding]
        datasets = [d.source.read(round_number) for d in trainers]
        seeds = [
            int(_round_seed(self.scenario.seed, d.device_id, round_number).generate_state(1)[0])
            for d in trainers
        ]
        if self.scenario.trainer == "batched":
            from byzedge.fleet_sim.batched_training import train_many  # noqa: PLC0415 - torch

            deltas = list(train_many(self.spec, self.params, datasets, self.training, seeds))
        else:
            deltas = [
                train_local(self.spec, self.params, data, self.training, seed=seed)
                for data, seed in zip(datasets, seeds, strict=True)
            ]
        # What each device sends before its attack stages: its pipeline's worker momentum
        # applied now, so colluders see the honest updates as they will be sent.
        return {
            device.device_id: device.pipeline.momentum_step(np.asarray(delta, dtype=np.float32))
            for device, delta in zip(trainers, deltas, strict=True)
        }

    def _collude(
        self, honest: NDArray[np.float32], count: int, round_number: int, sampled: int
    ) -> NDArray[np.float32]:
        aggregator, fallback = self.aggregator, self.fallback

        def deployed(matrix: NDArray[np.float32]) -> NDArray[np.float32]:
            # What the server would output for these rows (unweighted, nobody's ids), the
            # server's fallback chain included, without touching the deployed rules' state
            # (copies) and without logging each probe.
            aggregate, _ = aggregate_with_fallback(
                copy.deepcopy(aggregator),
                matrix,
                fallback=copy.deepcopy(fallback),
                fallback_defense=self.settings.fallback_defense,
                log=False,
            )
            return aggregate

        context = CollusionContext(
            round=round_number,
            global_params=self.params.copy(),
            initial_params=self.initial_params.copy(),
            num_sampled=sampled,
            rng=np.random.default_rng([self.scenario.seed, round_number, 99]),
            aggregate=deployed,
            server_learning_rate=self.scenario.server_learning_rate,
        )
        assert self._colluding_attack is not None  # noqa: S101 - only called with one
        forged = np.asarray(self._colluding_attack(honest, count, context), dtype=np.float32)
        if forged.shape != (count, self.spec.dim):
            raise ValueError(f"colluding attack returned shape {forged.shape}")
        return forged

    def _send(
        self, device: _Device, vector: NDArray[np.float32], round_number: int
    ) -> list[tuple[str, bytes]]:
        """Seal ``vector`` (momentum already applied) through the device's pipeline.

        Returns the ``(topic, frame)`` pairs to ingest.
        """
        device.counter += 1
        context = RoundContext(
            device_id=device.device_id,
            round=round_number,
            global_params=self.params,
            rng=np.random.default_rng(
                _round_seed(self.scenario.seed, device.device_id, round_number)
            ),
        )
        prepared = device.pipeline.prepare(
            vector,
            context,
            key=device.key,
            fleet=_FLEET,
            base_version=self.model_version,
            counter=device.counter,
            momentum_applied=True,  # by _train_cohort; forged vectors are sent as they are
        )
        return [(topics.update_topic(_FLEET, m.topic_device), m.payload) for m in prepared.messages]

    # -- training methods ----------------------------------------------------------------

    def _rand_k_support(self) -> str:
        """``rand-k``'s support: per round for a method, per device for FedAvg.

        As the coordinator's ``[method] rand_k_support`` defaults.
        """
        if self.scenario.algorithm == "fedavg":
            return "device"
        return str(self.scenario.method.get("rand_k_support", "round"))

    def _build_method(self) -> BuiltMethod:
        """The scenario's method, with the fleet seed and its codec's variance.

        The compression must be of the class the method needs (the coordinator's check,
        :func:`~byzedge.coordinator.training_method.check_compression`). DASHA's momentum
        defaults from the codec's ``omega`` at this model's size; Clip21-SGD2M's noise is
        drawn from the round's seed so runs repeat (it is then not private; see
        :mod:`byzedge.methods.clip21_sgd2m`).
        """
        from byzedge.coordinator.training_method import (  # noqa: PLC0415 - methods only
            CODEC_KEYS,
            build_method_for,
        )

        scenario = self.scenario
        return build_method_for(
            scenario.algorithm,
            {k: v for k, v in scenario.method.items() if k not in CODEC_KEYS},
            compression=scenario.compression,
            sparsity=scenario.sparsity,
            seed=scenario.seed,
            dim=self.spec.dim,
            secret_noise=False,
        )

    def _propose(
        self, method: BuiltMethod, plan: RoundPlan, device: _Device, round_number: int
    ) -> Proposal | None:
        from byzedge.edge_agent.gradients import TorchGradientOracle  # noqa: PLC0415 - torch

        seen = device.seen
        previous = seen[1] if seen is not None and seen[0] == plan.previous_sha256 else None
        seed = _round_seed(self.scenario.seed, device.device_id, round_number)
        return method.propose(
            plan,
            self.params,
            previous,
            TorchGradientOracle(self.spec, device.source.read(round_number)),
            device.method_state,
            device_id=device.device_id,
            seed=int(seed.generate_state(1)[0]),
        )

    def _method_step(
        self, method: BuiltMethod, round_number: int
    ) -> tuple[RoundRecord, FlagCounts]:
        """One round of a training method (see the module docstring)."""
        scenario = self.scenario
        plan = method.plan(round_number, self.params, self.method_state)
        sampled = cohort_for_plan(
            method,
            plan,
            sample_cohort(
                self.ids,
                round_number,
                scenario.seed,
                scenario.devices_per_round,
                scenario.participation_rate,
            ),
        )
        cohort = [d for d in self.devices if sampled is None or d.device_id in sampled]
        window = RoundWindow(round_number, self.model_version, self.spec.dim, sampled)
        proposals: dict[str, Proposal] = {}
        for device in cohort:
            proposal = self._propose(method, plan, device, round_number)
            if proposal is not None:
                proposals[device.device_id] = proposal
        published = (self.method_state.current_sha256 or "", self.params)
        for device in self.devices:  # the retained model reaches every device
            device.seen = published
        self._forge(proposals, cohort, round_number)
        intake = Intake()
        uplink = 0
        for device in cohort:
            proposal = proposals.get(device.device_id)
            if proposal is None:
                continue
            frames, sent = self._send_method_message(device, plan, proposal, round_number)
            method.commit(plan, proposal, sent, device.method_state)
            for topic, frame in frames:
                uplink += len(frame)
                intake.take(self.ingest.submit(topic, frame, window))
        outcome_step, dropped = method_server_step(
            method,
            plan,
            self.params,
            intake.accepted,
            self.method_state,
            settings=self.settings,
            reputation=self.reputation,
            aggregator=self.aggregator,
            fallback=self.fallback,
            misbehaving=intake.misbehaving,
            detector=self.detector,
        )
        return self._close_round(
            round_number,
            cohort,
            intake,
            outcome_step,
            full_round=plan.full,
            uplink_bytes=uplink,
            method_dropped=len(dropped),
        )

    def _forge(
        self, proposals: dict[str, Proposal], cohort: Sequence[_Device], round_number: int
    ) -> None:
        """Colluders replace their proposals with vectors forged from the honest ones.

        They see the honest proposals of their own message kind (a MARINA difference
        beside differences, a reset beside resets) and keep their header and the state
        they would commit, so their mirror on the server stays in step with their device.
        """
        colluders = [d.device_id for d in cohort if d.colluding and d.device_id in proposals]
        if not colluders:
            return
        honest = [
            d.device_id
            for d in cohort
            if d.device_id in proposals and d.device_id not in self.compromised
        ]
        for kind in sorted({proposals[d].message.kind for d in colluders}):
            liars = [d for d in colluders if proposals[d].message.kind == kind]
            seen = [d for d in honest if proposals[d].message.kind == kind] or liars
            forged = self._collude(
                np.stack([proposals[d].vector for d in seen]),
                len(liars),
                round_number,
                len(cohort),
            )
            for device, vector in zip(liars, forged, strict=True):
                own = proposals[device]
                proposals[device] = Proposal(
                    np.asarray(vector, dtype=np.float32), own.message, own.dense, own.carry
                )

    def _send_method_message(
        self, device: _Device, plan: RoundPlan, proposal: Proposal, round_number: int
    ) -> tuple[list[tuple[str, bytes]], NDArray[np.float32]]:
        """Seal a method message through the device's pipeline; frames and what is decoded."""
        device.counter += 1
        context = RoundContext(
            device_id=device.device_id,
            round=round_number,
            global_params=self.params,
            rng=np.random.default_rng(
                _round_seed(self.scenario.seed, device.device_id, round_number)
            ),
        )
        prepared = device.pipeline.prepare(
            proposal.vector,
            context,
            key=device.key,
            fleet=_FLEET,
            base_version=self.model_version,
            counter=device.counter,
            method_meta=proposal.message.to_meta(),
            dense=proposal.dense,
        )
        assert prepared.sent is not None  # noqa: S101 - method messages always return it
        frames = [
            (topics.update_topic(_FLEET, m.topic_device), m.payload) for m in prepared.messages
        ]
        return frames, prepared.sent

    # -- evaluation --------------------------------------------------------------------------

    def evaluate(self) -> tuple[float, float | None]:
        """The global model's test metric and, under a backdoor, its success rate.

        The metric is the task's (:mod:`byzedge.models.tasks`): accuracy, or r2 under mse,
        computed as the coordinator computes its validation metric.
        """
        classifier = OnnxClassifier(export_onnx(self.spec, self.params))
        # Samples of any shape (sensor windows) go to the graph as flat rows.
        test_x = self.split.test_x.reshape(len(self.split.test_x), -1)
        accuracy = round(self.task.metric(classifier.logits(test_x), self.split.test_y), 4)
        backdoor = None
        if self._backdoor is not None:
            triggered, target = self._backdoor
            predictions = classifier.predict(triggered)
            backdoor = round(float(np.mean(predictions == target)), 4)
        return accuracy, backdoor


def run_scenario(
    scenario: Scenario,
    *,
    split: DigitsSplit | None = None,
    on_round: Callable[[RoundRecord], None] | None = None,
) -> SimulationResult:
    """Build a :class:`Simulator` for ``scenario`` and run it."""
    return Simulator(scenario, split).run(on_round)
