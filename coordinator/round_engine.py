"""The server side of one round, shared by the coordinator daemon and the simulator.

Everything the server decides in a round lives here, once; the daemon
(:class:`byzedge.coordinator.service.Coordinator`) wraps it in I/O (MQTT, journal, state
file, audit, metrics) and the in-memory simulator
(:class:`byzedge.fleet_sim.simulator.Simulator`) calls it directly, so a simulated fleet
and a real one run the same server::

    sample_cohort           who is asked this round (seeded by [seed, round])
    Intake.take             each ingest outcome sorted into accepted / rejected /
                            misbehaving (attributable rejections) / redelivered
    server_step             DESIGN.md's data-flow step 4, below
    with_automatic_radius   clipping-vr's radius when the configuration leaves it unset

:func:`server_step`::

    devices rejected for attributable reasons lose reputation
    -> (anomaly scoring off and a rule that streams: the streaming path, below)
    -> anomaly scores (coordinator.anomaly: each device against the fleet and its own
       history; >= 3 updates), every flag with a score and a reason
    -> reputation: flagged devices lose it, the others gain it
    -> weights from reputation (when ``device_reputation``)
    -> robust aggregation (the fallback chain when the configured rule breaks down:
       ``fallback_defense``, then the coordinate-wise median)
    -> params + server_learning_rate * aggregate    (or the training method's ``apply``)

The streaming path is part of the step: with anomaly scoring off (scoring needs the whole
``(n, d)`` matrix), a rule that declares ``streaming`` takes the accepted updates one at a
time (``start/accumulate/finish``), so no matrix is stacked; a rule that cannot stream a
particular round (an automatic radius not yet known,
:class:`~byzedge.coordinator.aggregation.StreamingUnavailableError`) runs that round in
batch. What a rule needs from the step it declares (``stateful``, ``streaming``,
``needs_device_ids``; :mod:`byzedge.coordinator.aggregation.base`), so the step never
tests a rule's class.

Sharded ingest (:mod:`byzedge.coordinator.cluster`) feeds the streaming path from partial
aggregates instead of rows: each ingest worker streams its share of the round into its own
instance of the rule and the leader's rule merges the partials
(:meth:`~byzedge.coordinator.aggregation.base.StreamingAggregator.merge`) where it would
have accumulated the rows (``server_step(..., partials=...)``); everything else in the
step is the same code.

The step does no I/O. The :class:`~coordinator.reputation.ReputationBook`, the
:class:`~coordinator.anomaly.AnomalyDetector` and a stateful aggregator are updated in
place; callers keep one detector across rounds (its per-device history is part of the
score) and persist the states (:func:`~byzedge.coordinator.aggregation.rule_state`).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
from numpy.typing import NDArray

from byzedge.coordinator.aggregation import BreakdownError, StreamingUnavailableError, build
from byzedge.coordinator.aggregation.base import (
    AggregationResult,
    Aggregator,
    DeviceAwareAggregator,
    StreamingAggregator,
    StreamPartial,
    num_byzantine,
)
from byzedge.coordinator.aggregation.clipping_vr import ClippingVR, automatic_radius
from byzedge.coordinator.anomaly import MIN_UPDATES, AnomalyDetector, AnomalyFlag, AnomalyScores
from byzedge.coordinator.certified import Certificate, certify, pre_round_centre
from byzedge.coordinator.enrolment import DatabaseEnrolment
from byzedge.coordinator.ingest import Accepted, IngestOutcome, Redelivered, Rejected
from byzedge.coordinator.reputation import ReputationBook
from byzedge.methods.base import MethodMessage, RoundPlan, TrainingMethod
from byzedge.methods.base import ServerState as MethodServerState

__all__ = [
    "DEFAULT_FALLBACK",
    "Intake",
    "ModelStep",
    "RoundSettings",
    "ServerStepResult",
    "ShardPartial",
    "aggregate_with_fallback",
    "cohort_size",
    "method_server_step",
    "sample_cohort",
    "samples_cohorts",
    "server_step",
    "with_automatic_radius",
]

_LOGGER = logging.getLogger(__name__)

DEFAULT_FALLBACK = "coordinate-median"
"""Rule used when the configured one's breakdown condition fails (it needs only n >= 1)."""


# -- cohorts ------------------------------------------------------------------------------


def cohort_size(
    enrolled: int, devices_per_round: int | None, participation_rate: float | None
) -> int | None:
    """Return how many of ``enrolled`` devices a round asks, or ``None`` for all of them.

    ``devices_per_round`` wins over ``participation_rate``; a rate gives
    ``max(1, round(rate * enrolled))`` devices. A size that reaches ``enrolled`` means
    everyone (``None``).
    """
    if devices_per_round is not None:
        size = devices_per_round
    elif participation_rate is not None:
        size = max(1, round(participation_rate * enrolled))
    else:
        return None
    return None if size >= enrolled else size


def sample_cohort(
    enrolled: Iterable[str],
    round_number: int,
    seed: int,
    devices_per_round: int | None = None,
    participation_rate: float | None = None,
) -> frozenset[str] | None:
    """Draw the devices asked in ``round_number``; ``None`` when every device is asked.

    Parameters
    ----------
    enrolled:
        The enrolled device ids (their order does not matter: they are sorted first). A
        database store (:class:`~byzedge.coordinator.enrolment.DatabaseEnrolment`) gives
        its ranked ids, kept between rounds until the enrolment changes, instead of
        listing and sorting 10^6 ids each round.
    round_number, seed:
        The draw is ``np.random.default_rng([seed, round_number]).choice(sorted ids,
        size, replace=False)``: any coordinator (or simulator) with the same seed and
        enrolment asks the same devices, and a restarted coordinator asks the same
        cohort again for the round it resumes.
    devices_per_round, participation_rate:
        The configuration keys; see :func:`cohort_size`.
    """
    if isinstance(enrolled, DatabaseEnrolment):
        # Generator.choice(a, ...) draws positions from len(a) alone and returns a[picks],
        # so drawing positions and mapping them through the ranked ids is the same draw.
        ranked = enrolled.sorted_ids()
        size = cohort_size(len(ranked), devices_per_round, participation_rate)
        if size is None:
            return None
        rng = np.random.default_rng([seed, round_number])
        picks = rng.choice(len(ranked), size=size, replace=False)
        return frozenset(ranked[picks].astype(np.str_).tolist())
    ids = sorted(enrolled)
    size = cohort_size(len(ids), devices_per_round, participation_rate)
    if size is None:
        return None
    rng = np.random.default_rng([seed, round_number])
    return frozenset(rng.choice(ids, size=size, replace=False).tolist())


def samples_cohorts(devices_per_round: int | None, participation_rate: float | None) -> bool:
    """Whether the configuration asks each round for a sampled cohort.

    Read from the keys alone (``devices_per_round`` set, or ``participation_rate < 1``),
    as ``byzedge coordinator check-config`` can, before any device is enrolled.
    """
    return devices_per_round is not None or (
        participation_rate is not None and participation_rate < 1
    )


def with_automatic_radius(
    name: str,
    params: Mapping[str, Any],
    *,
    devices_per_round: int | None,
    participation_rate: float | None,
) -> dict[str, Any]:
    """Return rule ``name``'s ``params`` with clipping-vr's unset ``radius`` chosen.

    The one place that picks it, for the coordinator
    (:func:`~byzedge.coordinator.config.rule_parameters`) and the simulator alike:
    :func:`~byzedge.coordinator.aggregation.clipping_vr.automatic_radius` of
    :func:`samples_cohorts`. Other rules' parameters, and a radius that is set, are
    returned unchanged.
    """
    chosen = dict(params)
    if name == ClippingVR.name and "radius" not in chosen:
        chosen["radius"] = automatic_radius(samples_cohorts(devices_per_round, participation_rate))
    return chosen


# -- ingest outcomes ----------------------------------------------------------------------


@dataclass(slots=True)
class Intake:
    """What a round's ingest outcomes amount to, sorted by :meth:`take`.

    Attributes
    ----------
    accepted:
        The accepted update of each device.
    rejected:
        Rejections counted by reason (``RejectReason`` values).
    misbehaving:
        Devices rejected for a reason only the key holder can cause (they lose reputation).
    last_rejections:
        The latest rejection reason of each identified sender.
    redelivered:
        Copies of already accepted updates (the network's doing, ignored).
    """

    accepted: dict[str, Accepted] = field(default_factory=dict)
    rejected: Counter[str] = field(default_factory=Counter)
    misbehaving: set[str] = field(default_factory=set)
    last_rejections: dict[str, str] = field(default_factory=dict)
    redelivered: int = 0

    def take(self, outcome: IngestOutcome | None) -> None:
        """Sort one outcome of :meth:`~coordinator.ingest.Ingest.submit` (``None``: a chunk)."""
        if isinstance(outcome, Accepted):
            self.accepted[outcome.device_id] = outcome
        elif isinstance(outcome, Redelivered):
            self.redelivered += 1
        elif isinstance(outcome, Rejected):
            self.rejected[outcome.reason.value] += 1
            if outcome.device_id is not None:
                self.last_rejections[outcome.device_id] = outcome.reason.value
                if outcome.attributable:
                    self.misbehaving.add(outcome.device_id)

    @property
    def device_ids(self) -> list[str]:
        """The accepted devices, sorted: the row order of the server step."""
        return sorted(self.accepted)

    def rows(self) -> list[NDArray[np.float32]]:
        """The accepted float32 ``(d,)`` updates in :attr:`device_ids` order (not stacked)."""
        return [self.accepted[device].update for device in self.device_ids]


# -- the server step ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RoundSettings:
    """The configuration keys the server step reads (names as in ``coordinator.toml``).

    Attributes
    ----------
    anomaly_detection:
        Score updates and flag outliers (needs at least 3 updates). Off, rules that
        stream aggregate update by update.
    anomaly_threshold:
        Standard deviations of the anomaly statistic above which an update is flagged
        (3.0; see :mod:`byzedge.coordinator.anomaly`).
    device_reputation:
        Weight updates by their device's reputation.
    server_learning_rate:
        ``x <- x + server_learning_rate * aggregate``.
    min_updates:
        Fewer accepted updates than this skip the model step (reputation still records
        attributable rejections).
    fallback_defense:
        Registry name of the rule used when the configured one raises
        :class:`~coordinator.aggregation.BreakdownError`.
    certified_robustness:
        Attach to each aggregated round the certified bound on how far the Byzantine rows
        moved the aggregate (:mod:`byzedge.coordinator.certified`).
    max_byzantine_fraction:
        The certificate's ``f = floor(max_byzantine_fraction * n)``.
    """

    anomaly_detection: bool = True
    anomaly_threshold: float = 3.0
    device_reputation: bool = True
    server_learning_rate: float = 1.0
    min_updates: int = 1
    fallback_defense: str = DEFAULT_FALLBACK
    certified_robustness: bool = False
    max_byzantine_fraction: float = 0.2

    @classmethod
    def from_config(cls, config: Any) -> RoundSettings:
        """Read the settings from a ``CoordinatorConfig`` (or anything with those fields)."""
        fallback_defense = str(getattr(config, "fallback_defense", DEFAULT_FALLBACK))
        return cls(
            anomaly_detection=bool(config.anomaly_detection),
            anomaly_threshold=float(config.anomaly_threshold),
            device_reputation=bool(config.device_reputation),
            server_learning_rate=float(config.server_learning_rate),
            min_updates=int(config.min_updates),
            fallback_defense=fallback_defense,
            certified_robustness=bool(getattr(config, "certified_robustness", False)),
            max_byzantine_fraction=float(getattr(config, "max_byzantine_fraction", 0.2)),
        )


@dataclass(frozen=True, slots=True)
class ServerStepResult:
    """What one server step produced.

    Attributes
    ----------
    params:
        float32 ``(d,)``: the new global parameters (the old ones when ``skipped``).
    aggregate:
        float32 ``(d,)`` aggregate, or ``None`` when ``skipped``.
    device_ids:
        The devices whose updates were aggregated, in row order.
    flagged:
        Ids flagged by the anomaly scorer, in row order.
    scores:
        The anomaly scores, or ``None`` when scoring was off or had too few updates.
    weights:
        float64 ``(n,)`` reputation weights used, or ``None`` (unweighted).
    fallback:
        Name of the fallback rule when the configured one broke down, else ``None``.
    skipped:
        Whether the round had fewer than ``min_updates`` updates (no model step).
    flags:
        One :class:`~coordinator.anomaly.AnomalyFlag` (device, score, reason) per flagged
        device, in row order: what alerts carry.
    clip_threshold:
        The clip radius the rule reported for this round
        (:attr:`~coordinator.aggregation.AggregationDiagnostics.clip_threshold`), else
        ``None``.
    streamed:
        Whether the rule took the updates one at a time (the streaming path).
    certificate:
        The round's certified robustness bound (``settings.certified_robustness``), else
        ``None``.
    """

    params: NDArray[np.float32]
    aggregate: NDArray[np.float32] | None
    device_ids: tuple[str, ...]
    flagged: tuple[str, ...]
    scores: AnomalyScores | None
    weights: NDArray[np.float64] | None
    fallback: str | None
    skipped: bool
    flags: tuple[AnomalyFlag, ...] = ()
    clip_threshold: float | None = None
    streamed: bool = False
    certificate: Certificate | None = None

    @property
    def model_changed(self) -> bool:
        """Whether the step moved the model (``not skipped``)."""
        return not self.skipped


ModelStep = Callable[[NDArray[np.float32], NDArray[np.float32]], NDArray[np.float32]]
"""``(params, aggregate) -> new params``: how a round's aggregate moves the model."""


def _next_params(
    params: NDArray[np.float32],
    aggregate: NDArray[np.float32],
    settings: RoundSettings,
    apply: ModelStep | None,
) -> NDArray[np.float32]:
    if apply is not None:
        return np.asarray(apply(params, aggregate), dtype=np.float32)
    return (params + settings.server_learning_rate * aggregate).astype(np.float32)


def _call(
    rule: Aggregator,
    updates: NDArray[np.float32],
    weights: NDArray[np.float64] | None,
    device_ids: Sequence[str] | None,
) -> AggregationResult:
    # A rule that keeps state per device (clipping-vr's per-device references) declares it.
    if rule.needs_device_ids:
        return cast(DeviceAwareAggregator, rule)(updates, weights, device_ids=device_ids)
    return rule(updates, weights)


def _certificate(
    settings: RoundSettings,
    rows: Sequence[NDArray[np.float32]] | NDArray[np.float32],
    aggregate: NDArray[np.float32],
    result: AggregationResult,
    weights: NDArray[np.float64] | None,
    *,
    rule: Aggregator,
    used: str | None,
    fallback: Aggregator | None,
    centre: NDArray[np.float32] | None,
) -> Certificate | None:
    """The round's certificate when asked for, with the rule that actually aggregated."""
    if not settings.certified_robustness:
        return None
    if used is not None:  # a fallback round: that rule's coefficient, no clipping centre
        same = used == settings.fallback_defense and fallback is not None
        rule, centre = (fallback if same and fallback is not None else build(used)), None
    name = used if used is not None else str(getattr(rule, "name", type(rule).__name__))
    return certify(
        rule,
        name,
        rows,
        aggregate,
        f=num_byzantine(len(rows), settings.max_byzantine_fraction),
        weights=weights,
        centre=centre,
        clip_threshold=result.diagnostics.clip_threshold,
    )


def _aggregate(
    aggregator: Aggregator,
    updates: NDArray[np.float32],
    weights: NDArray[np.float64] | None,
    device_ids: Sequence[str] | None,
    *,
    fallback: Aggregator | None,
    fallback_defense: str,
    log: bool,
) -> tuple[AggregationResult, str | None]:
    """The fallback chain; returns the full result (diagnostics included) and the fallback."""
    try:
        return _call(aggregator, updates, weights, device_ids), None
    except BreakdownError as exc:
        if log:
            _LOGGER.warning(
                "%r cannot aggregate %d updates this round (%s); using %s",
                aggregator,
                len(updates),
                exc,
                fallback_defense,
            )
    rule = fallback if fallback is not None else build(fallback_defense)
    try:
        return _call(rule, updates, weights, device_ids), fallback_defense
    except BreakdownError as exc:
        if log:
            _LOGGER.warning(
                "fallback %s cannot aggregate this round either (%s); using %s",
                fallback_defense,
                exc,
                DEFAULT_FALLBACK,
            )
    last = build(DEFAULT_FALLBACK)
    return _call(last, updates, weights, device_ids), DEFAULT_FALLBACK


def aggregate_with_fallback(
    aggregator: Aggregator,
    updates: NDArray[np.float32],
    weights: NDArray[np.float64] | None = None,
    device_ids: Sequence[str] | None = None,
    *,
    fallback: Aggregator | None = None,
    fallback_defense: str = DEFAULT_FALLBACK,
    log: bool = True,
) -> tuple[NDArray[np.float32], str | None]:
    """Aggregate with ``aggregator``; on :class:`BreakdownError` use the fallback rule.

    The one fallback chain: the configured fallback (``fallback``, built from
    ``fallback_defense`` when ``None``) and, should it break down too,
    :data:`DEFAULT_FALLBACK` (which needs only one update).

    Parameters
    ----------
    aggregator:
        The configured rule; its state (if any) is updated as by every call.
    updates:
        float32 ``(n, d)``.
    weights:
        float64 ``(n,)`` or ``None`` (unweighted).
    device_ids:
        The rows' devices, passed to rules that declare ``needs_device_ids``; ``None``
        when the rows are nobody's (a colluding attack probing the rule).
    fallback, fallback_defense:
        The built fallback rule (kept across rounds) and its registry name.
    log:
        Warn when a rule breaks down (a probe run many times per round passes ``False``).

    Returns
    -------
    aggregate, fallback:
        float32 ``(d,)`` and the name of the fallback used (``None`` when not needed).
    """
    result, used = _aggregate(
        aggregator,
        updates,
        weights,
        device_ids,
        fallback=fallback,
        fallback_defense=fallback_defense,
        log=log,
    )
    return np.asarray(result.aggregate, dtype=np.float32), used


def _stream(
    params: NDArray[np.float32],
    ids: tuple[str, ...],
    rows: Sequence[NDArray[np.float32]] | NDArray[np.float32] | None,
    *,
    settings: RoundSettings,
    reputation: ReputationBook,
    aggregator: Aggregator,
    apply: ModelStep | None,
    partials: Sequence[ShardPartial] = (),
) -> ServerStepResult | None:
    """The ``O(d)`` path; ``None`` when the rule cannot stream this round (then batch).

    With ``partials`` (sharded ingest) the rule merges them instead of accumulating rows;
    each was accumulated with the weights this step gives its devices (checked).
    """
    rule = cast(StreamingAggregator, aggregator)  # it declares ``streaming``
    centre = pre_round_centre(aggregator) if settings.certified_robustness else None
    try:
        rule.start(partials[0].sums.dim if partials else len(rows[0]) if rows is not None else 0)
    except StreamingUnavailableError as exc:
        if partials:  # the leader opened the round in sum mode: the rule state has changed
            raise RuntimeError(f"{aggregator!r} cannot merge this round's partials") from exc
        _LOGGER.info("%r: aggregating this round in batch: %s", aggregator, exc)
        return None
    for device in ids:  # nothing is scored, so nobody is flagged
        reputation.record(device, good=True)
    weights = reputation.weights(ids) if settings.device_reputation else None
    if partials:
        listed = weights.tolist() if weights is not None else [1.0] * len(ids)
        expected = dict(zip(ids, listed, strict=True))
        for partial in partials:
            _check_shard_weights(partial, expected)
            rule.merge(partial.sums)
    else:
        assert rows is not None  # noqa: S101 (server_step passes rows or partials)
        for index, (row, device) in enumerate(zip(rows, ids, strict=True)):
            weight = 1.0 if weights is None else float(weights[index])
            rule.accumulate(row, weight, device_id=device)
    result = rule.finish()
    aggregate = np.asarray(result.aggregate, dtype=np.float32)
    new_params = _next_params(params, aggregate, settings, apply)
    certificate = (
        _certificate(
            settings,
            rows,
            aggregate,
            result,
            weights,
            rule=aggregator,
            used=None,
            fallback=None,
            centre=centre,
        )
        if rows is not None
        else None
    )
    return ServerStepResult(
        new_params,
        aggregate,
        ids,
        (),
        None,
        weights,
        None,
        skipped=False,
        clip_threshold=result.diagnostics.clip_threshold,
        streamed=True,
        certificate=certificate,
    )


@dataclass(frozen=True, slots=True)
class ShardPartial:
    """One ingest worker's share of a streamed round (sharded ingest).

    Attributes
    ----------
    sums:
        What the worker's rule returned from
        :meth:`~byzedge.coordinator.aggregation.base.StreamingAggregator.partial`.
    weights:
        ``device -> weight`` each of the share's updates was accumulated with.
    """

    sums: StreamPartial
    weights: Mapping[str, float]


def _check_shard_weights(partial: ShardPartial, expected: Mapping[str, float]) -> None:
    """Log the devices a worker weighted otherwise than this step does (its sums stand).

    A worker weights a device by the reputation the leader announced for the round
    (``ReputationBook.after(device, good=True)``); a device that was also rejected for an
    attributable reason in the same round loses reputation first here, which the worker
    could not know. Its update then counts with the weight it had before that rejection.
    """
    for device, weight in partial.weights.items():
        if expected.get(device) != weight:
            _LOGGER.warning(
                "%s's update was merged with weight %.6f, the step gives it %s",
                device,
                weight,
                expected.get(device),
            )


def server_step(
    params: NDArray[np.float32],
    device_ids: Sequence[str],
    updates: Sequence[NDArray[np.float32]] | NDArray[np.float32] | None,
    *,
    settings: RoundSettings,
    reputation: ReputationBook,
    aggregator: Aggregator,
    fallback: Aggregator | None = None,
    misbehaving: Iterable[str] = (),
    detector: AnomalyDetector | None = None,
    apply: ModelStep | None = None,
    partials: Sequence[ShardPartial] = (),
) -> ServerStepResult:
    """Run one round's server step.

    Parameters
    ----------
    params:
        float32 ``(d,)``: the current global parameters.
    device_ids:
        The ``n`` devices whose updates were accepted, in the rows' order (the coordinator
        and the simulator sort them: :attr:`Intake.device_ids`).
    updates:
        The ``n`` accepted updates: float32 ``(d,)`` rows (:meth:`Intake.rows`; stacked
        only when the round runs in batch) or a float32 ``(n, d)`` matrix; ``None`` or
        empty when none arrived.
    settings:
        The configuration keys of the step.
    reputation:
        Updated in place: attributable rejections (``misbehaving``) and flagged devices
        count as bad rounds, the other aggregated devices as good ones.
    aggregator:
        The configured rule (stateful rules keep their state across calls).
    fallback:
        The built ``settings.fallback_defense`` rule (kept across rounds, as the coordinator
        keeps it); ``None`` builds a fresh one when needed.
    misbehaving:
        Devices whose messages were rejected this round for a reason only the key holder
        can cause.
    detector:
        The anomaly detector, kept across rounds (updated in place; scored with
        ``settings.anomaly_threshold``). ``None`` scores with a fresh one, i.e. without any
        device history: every device is then judged as new (backward compatible, but
        persistent deviations go unnoticed).
    apply:
        How the aggregate moves the model: a training method's server half
        (:meth:`~byzedge.methods.base.TrainingMethod.apply`, e.g. ``x - gamma g``);
        ``None`` is FedAvg's ``params + server_learning_rate * aggregate``.
    partials:
        Sharded ingest: the workers' partial aggregates of the round, which together hold
        exactly the ``device_ids``' updates; ``updates`` is then ``None``. Only for a
        streaming rule with anomaly scoring and certificates off (both need the rows).

    Returns
    -------
    ServerStepResult
        The new parameters and what it took to compute them.
    """
    if partials:
        _check_partials(partials, device_ids, updates, settings, aggregator)
    for device in misbehaving:
        reputation.record(device, good=False)
    ids = tuple(device_ids)
    skipped = len(ids) < settings.min_updates or len(ids) == 0
    if skipped or (updates is None and not partials):
        return ServerStepResult(params, None, ids, (), None, None, None, skipped=True)
    if partials:
        streamed = _stream(
            params,
            ids,
            None,
            settings=settings,
            reputation=reputation,
            aggregator=aggregator,
            apply=apply,
            partials=partials,
        )
        assert streamed is not None  # noqa: S101 (_stream raises rather than fall back)
        return streamed
    assert updates is not None  # noqa: S101 (checked above)
    if len(updates) != len(ids):
        raise ValueError(f"{len(ids)} device ids for {len(updates)} updates")
    if not settings.anomaly_detection and aggregator.streaming:
        streamed = _stream(
            params,
            ids,
            updates,
            settings=settings,
            reputation=reputation,
            aggregator=aggregator,
            apply=apply,
        )
        if streamed is not None:
            return streamed
    matrix = np.asarray(updates, dtype=np.float32)  # (n, d)
    flagged: tuple[str, ...] = ()
    flags: tuple[AnomalyFlag, ...] = ()
    scores: AnomalyScores | None = None
    if settings.anomaly_detection and len(ids) >= MIN_UPDATES:
        scorer = detector if detector is not None else AnomalyDetector(settings.anomaly_threshold)
        scores = scorer.score(ids, matrix, threshold=settings.anomaly_threshold)
        if scores is not None:
            flagged = scores.flagged_ids
            flags = scores.flags
    flagged_set = set(flagged)
    for device in ids:
        reputation.record(device, good=device not in flagged_set)
    weights = reputation.weights(ids) if settings.device_reputation else None
    # Read before the rule moves it: the centre a clipping rule clips about this round.
    centre = pre_round_centre(aggregator) if settings.certified_robustness else None
    result, used = _aggregate(
        aggregator,
        matrix,
        weights,
        ids,
        fallback=fallback,
        fallback_defense=settings.fallback_defense,
        log=True,
    )
    aggregate = np.asarray(result.aggregate, dtype=np.float32)
    new_params = _next_params(params, aggregate, settings, apply)
    certificate = _certificate(
        settings,
        matrix,
        aggregate,
        result,
        weights,
        rule=aggregator,
        used=used,
        fallback=fallback,
        centre=centre,
    )
    return ServerStepResult(
        new_params,
        aggregate,
        ids,
        flagged,
        scores,
        weights,
        used,
        skipped=False,
        flags=flags,
        clip_threshold=result.diagnostics.clip_threshold,
        certificate=certificate,
    )


def _check_partials(
    partials: Sequence[ShardPartial],
    device_ids: Sequence[str],
    updates: object,
    settings: RoundSettings,
    aggregator: Aggregator,
) -> None:
    """Raise ``ValueError`` unless ``partials`` can stand for the round's rows."""
    if updates is not None:
        raise ValueError("server_step takes rows or partials, not both")
    if settings.anomaly_detection or settings.certified_robustness or not aggregator.streaming:
        raise ValueError(
            "partials need a streaming rule with anomaly_detection and certified_robustness off"
        )
    covered = [device for partial in partials for device in partial.weights]
    if len(covered) != len(set(covered)) or set(covered) != set(device_ids):
        raise ValueError("the partials must hold each of the round's devices exactly once")


# -- a training method's server round (byzedge.methods) ----------------------------------


def _method_messages(
    plan: RoundPlan, accepted: Mapping[str, Accepted]
) -> tuple[dict[str, tuple[MethodMessage, NDArray[np.float32]]], dict[str, str], set[str]]:
    """Each accepted update's method message (``meta["method"]``); the others dropped.

    Dropped: a header without a readable method message, and a message in a codec the
    plan did not ask for (the compression is the coordinator's choice, signed into the
    plan; a full gradient or a reset may also travel ``dense``). Only the key holder can
    sign either, so the codec violators are returned too (they lose reputation).
    """
    expected = plan.options.get("compression")
    messages: dict[str, tuple[MethodMessage, NDArray[np.float32]]] = {}
    dropped: dict[str, str] = {}
    violators: set[str] = set()
    for device, update in sorted(accepted.items()):
        try:
            message = MethodMessage.from_meta(update.header.meta.get("method"))
        except ValueError as exc:
            dropped[device] = f"not a method message: {exc}"
            continue
        codec = update.header.codec
        allowed = {expected} if message.kind == "difference" else {expected, "dense"}
        if expected is not None and codec not in allowed:
            dropped[device] = f"codec {codec!r}; the plan asks for {expected!r}"
            violators.add(device)
            continue
        messages[device] = (message, update.update)
    return messages, dropped, violators


def method_server_step(
    method: TrainingMethod,
    plan: RoundPlan,
    params: NDArray[np.float32],
    accepted: Mapping[str, Accepted],
    state: MethodServerState,
    **step_kwargs: Any,
) -> tuple[ServerStepResult, dict[str, str]]:
    """One server round of a training method: its rows, then :func:`server_step`.

    ``ids, rows, dropped = method.rows(plan, messages, state)`` (MARINA: ``g + Q(Δ)``;
    EF21/DASHA/Clip21: every mirror), then :func:`server_step` over those rows with the
    method's model step (``apply``), so anomaly scoring, reputation and the robust rule
    judge what the method aggregates. The coordinator daemon and the simulator both call
    this.

    Parameters
    ----------
    method, plan:
        The method and the plan it made for this round.
    params:
        float32 ``(d,)``: ``x_r``, the model the plan was made for.
    accepted:
        The round's accepted updates by device (:attr:`Intake.accepted`); each header's
        ``meta["method"]`` says what the message is.
    state:
        The method's server state, updated in place (mirrors, ``g``, resync list).
    step_kwargs:
        :func:`server_step`'s keywords (``settings``, ``reputation``, ``aggregator``...);
        not ``apply``.

    Returns
    -------
    result, dropped:
        The step's result and the messages not used, ``device -> reason`` (a header that
        is not a method message, a difference onto a mirror of another round...).
    """
    if "apply" in step_kwargs:
        raise TypeError("method_server_step takes its model step from the method")
    messages, dropped, violators = _method_messages(plan, accepted)
    ids, rows, method_dropped = method.rows(plan, messages, state)
    dropped.update(method_dropped)
    for device in dropped:
        if device not in messages:  # unreadable or refused: the device must resync anyway
            state.resync.add(device)
    misbehaving = set(step_kwargs.pop("misbehaving", ())) | violators
    result = server_step(
        params,
        ids,
        rows or None,
        apply=lambda current, aggregate: method.apply(plan, current, aggregate, state),
        misbehaving=misbehaving,
        **step_kwargs,
    )
    return result, dropped
