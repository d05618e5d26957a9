"""The server step of one round, as a pure function shared by the coordinator and simulator.

Given the updates a round accepted, :func:`server_step` runs DESIGN.md's data-flow step 4::

    devices rejected for attributable reasons lose reputation
    -> anomaly scores (coordinator.anomaly: each device against the fleet and its own
       history; >= 3 updates), every flag with a score and a reason
    -> reputation: flagged devices lose it, the others gain it
    -> weights from reputation (when ``device_reputation``)
    -> robust aggregation (the fallback rule when the configured one breaks down)
    -> params + server_learning_rate * aggregate

It maps 1:1 onto :meth:`coordinator.service.Coordinator._finish_round` (which persists
state, publishes, audits and alerts around this step) and its ``_aggregate`` (configured
rule, then ``fallback_defense``, then the coordinate-wise median); it does no I/O itself.
The coordinator's streaming path (rows fed one at a time to rules that support it when
anomaly scoring is off) is a memory optimisation with the same result, so it stays in the
daemon: this step always aggregates the stacked matrix. The
:class:`~coordinator.reputation.ReputationBook`, the
:class:`~coordinator.anomaly.AnomalyDetector` and a stateful aggregator are updated in
place, exactly as the coordinator's would be; callers keep one detector across rounds (its
per-device history is part of the score) and persist its ``state_dict()``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from byzedge.coordinator.aggregation import BreakdownError, build
from byzedge.coordinator.aggregation.base import Aggregator
from byzedge.coordinator.aggregation.clipping_vr import ClippingVR
from byzedge.coordinator.anomaly import MIN_UPDATES, AnomalyDetector, AnomalyFlag, AnomalyScores
from byzedge.coordinator.reputation import ReputationBook

__all__ = ["DEFAULT_FALLBACK", "RoundSettings", "ServerStepResult", "server_step"]

_LOGGER = logging.getLogger(__name__)

DEFAULT_FALLBACK = "coordinate-median"
"""Rule used when the configured one's breakdown condition fails (it needs only n >= 1)."""


@dataclass(frozen=True, slots=True)
class RoundSettings:
    """The configuration keys the server step reads (names as in ``coordinator.toml``).

    Attributes
    ----------
    anomaly_detection:
        Score updates and flag outliers (needs at least 3 updates).
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
    """

    anomaly_detection: bool = True
    anomaly_threshold: float = 3.0
    device_reputation: bool = True
    server_learning_rate: float = 1.0
    min_updates: int = 1
    fallback_defense: str = DEFAULT_FALLBACK

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

    @property
    def model_changed(self) -> bool:
        """Whether the step moved the model (``not skipped``)."""
        return not self.skipped


def _call(
    rule: Aggregator,
    updates: NDArray[np.float32],
    weights: NDArray[np.float64] | None,
    device_ids: Sequence[str],
) -> NDArray[np.float32]:
    # clipping-vr may keep a reference per device (reference = "per-device"): it gets ids.
    if isinstance(rule, ClippingVR):
        result = rule(updates, weights, device_ids=device_ids)
    else:
        result = rule(updates, weights)
    return np.asarray(result.aggregate, dtype=np.float32)


def aggregate_with_fallback(
    aggregator: Aggregator,
    updates: NDArray[np.float32],
    weights: NDArray[np.float64] | None,
    device_ids: Sequence[str],
    *,
    fallback: Aggregator | None = None,
    fallback_defense: str = DEFAULT_FALLBACK,
) -> tuple[NDArray[np.float32], str | None]:
    """Aggregate with ``aggregator``; on :class:`BreakdownError` use the fallback rule.

    As the coordinator does: the configured fallback (``fallback``, built from
    ``fallback_defense`` when ``None``) and, should it break down too,
    :data:`DEFAULT_FALLBACK` (which needs only one update).

    Returns
    -------
    aggregate, fallback:
        float32 ``(d,)`` and the name of the fallback used (``None`` when not needed).
    """
    try:
        return _call(aggregator, updates, weights, device_ids), None
    except BreakdownError as exc:
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
        _LOGGER.warning(
            "fallback %s cannot aggregate this round either (%s); using %s",
            fallback_defense,
            exc,
            DEFAULT_FALLBACK,
        )
        last = build(DEFAULT_FALLBACK)
        return _call(last, updates, weights, device_ids), DEFAULT_FALLBACK


def server_step(
    params: NDArray[np.float32],
    device_ids: Sequence[str],
    updates: NDArray[np.float32] | None,
    *,
    settings: RoundSettings,
    reputation: ReputationBook,
    aggregator: Aggregator,
    fallback: Aggregator | None = None,
    misbehaving: Iterable[str] = (),
    detector: AnomalyDetector | None = None,
) -> ServerStepResult:
    """Run one round's server step.

    Parameters
    ----------
    params:
        float32 ``(d,)``: the current global parameters.
    device_ids:
        The ``n`` devices whose updates were accepted, in the rows' order (the coordinator
        sorts them).
    updates:
        float32 ``(n, d)`` accepted updates; ``None`` or empty when none arrived.
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

    Returns
    -------
    ServerStepResult
        The new parameters and what it took to compute them.
    """
    for device in misbehaving:
        reputation.record(device, good=False)
    ids = tuple(device_ids)
    skipped = len(ids) < settings.min_updates or len(ids) == 0
    if skipped or updates is None:
        return ServerStepResult(params, None, ids, (), None, None, None, True)
    matrix = np.asarray(updates, dtype=np.float32)  # (n, d)
    if matrix.shape[0] != len(ids):
        raise ValueError(f"{len(ids)} device ids for {matrix.shape[0]} updates")
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
    aggregate, used = aggregate_with_fallback(
        aggregator,
        matrix,
        weights,
        ids,
        fallback=fallback,
        fallback_defense=settings.fallback_defense,
    )
    new_params = (params + settings.server_learning_rate * aggregate).astype(np.float32)
    return ServerStepResult(
        new_params, aggregate, ids, flagged, scores, weights, used, False, flags
    )
