"""Robust aggregation rules, one per module, listed in an explicit registry.

The registry keys are permanent: operators write them in configs (``byzantine_defense``)
and they travel in model manifests. Add a rule by adding one line to
:data:`AGGREGATORS`; the conformance suite then runs it through the shared properties.

Each rule class also declares what the round engine
(:mod:`byzedge.coordinator.round_engine`) must do for it, so no caller probes for methods
or tests a rule's class: ``stateful`` (persist its ``state_dict()``, see :func:`rule_state`),
``streaming`` (it may take a round update by update) and ``needs_device_ids`` (pass the
rows' device ids to the batch call).

Examples
--------
>>> import numpy as np
>>> from coordinator.aggregation import aggregate, build
>>> updates = np.array([[0.0, 1.0], [1.0, 2.0], [100.0, -100.0]], dtype=np.float32)
>>> aggregate("coordinate-median", updates)
array([1., 1.], dtype=float32)
>>> rule = build("trimmed-mean", trim_fraction=0.34)
>>> rule(updates).aggregate
array([1., 1.], dtype=float32)

Pre-aggregators (``bucketing``, ``nnm``, ``arc``) wrap any stateless rule, named by
``inner`` and configured by ``inner_params``:

>>> aggregate(
...     "nnm", updates, inner="trimmed-mean", inner_params={"trim_fraction": 0.34},
...     max_byzantine_fraction=0.34,
... )
array([0.5, 1.5], dtype=float32)
>>> aggregate("bucketing", updates, inner="coordinate-median", bucket_size=1, seed=0)
array([1., 1.], dtype=float32)

Rules in :data:`STREAMING` also take a round update by update, in ``O(d)`` memory
(:class:`~coordinator.aggregation.base.StreamingAggregator`):

>>> rule = build("mean")
>>> for row in updates:
...     rule.accumulate(row)
>>> rule.finish().aggregate
array([ 33.666668, -32.333332], dtype=float32)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Final, cast

import numpy as np
from numpy.typing import ArrayLike

from byzedge.coordinator.aggregation.arc import AdaptiveRobustClipping
from byzedge.coordinator.aggregation.base import (
    AggregationDiagnostics,
    AggregationError,
    AggregationResult,
    Aggregator,
    BreakdownError,
    DeviceAwareAggregator,
    StatefulAggregator,
    StreamingAggregator,
    StreamingUnavailableError,
    UpdateMatrix,
    UpdateVector,
)
from byzedge.coordinator.aggregation.bucketing import Bucketing
from byzedge.coordinator.aggregation.bulyan import Bulyan
from byzedge.coordinator.aggregation.centered_clipping import CenteredClipping
from byzedge.coordinator.aggregation.clipping_vr import ClippingVR
from byzedge.coordinator.aggregation.coordinate_median import CoordinateMedian
from byzedge.coordinator.aggregation.geometric_median import GeometricMedian
from byzedge.coordinator.aggregation.krum import Krum
from byzedge.coordinator.aggregation.mean import Mean
from byzedge.coordinator.aggregation.multi_krum import MultiKrum
from byzedge.coordinator.aggregation.nnm import NearestNeighbourMixing
from byzedge.coordinator.aggregation.norm_clipping import NormClipping
from byzedge.coordinator.aggregation.trimmed_mean import TrimmedMean

__all__ = [
    "AGGREGATORS",
    "PRE_AGGREGATORS",
    "STATELESS",
    "STREAMING",
    "AggregationDiagnostics",
    "AggregationError",
    "AggregationResult",
    "Aggregator",
    "BreakdownError",
    "DeviceAwareAggregator",
    "StatefulAggregator",
    "StreamingAggregator",
    "StreamingUnavailableError",
    "aggregate",
    "build",
    "is_stateful",
    "load_rule_state",
    "parameters",
    "rule_state",
    "supports_streaming",
]

AGGREGATORS: Final[Mapping[str, type[Aggregator]]] = MappingProxyType(
    {
        Mean.name: Mean,
        CoordinateMedian.name: CoordinateMedian,
        TrimmedMean.name: TrimmedMean,
        Krum.name: Krum,
        MultiKrum.name: MultiKrum,
        GeometricMedian.name: GeometricMedian,
        Bulyan.name: Bulyan,
        NormClipping.name: NormClipping,
        CenteredClipping.name: CenteredClipping,
        ClippingVR.name: ClippingVR,
        Bucketing.name: Bucketing,
        NearestNeighbourMixing.name: NearestNeighbourMixing,
        AdaptiveRobustClipping.name: AdaptiveRobustClipping,
    }
)
"""Every aggregation rule, keyed by its permanent registry name."""

PRE_AGGREGATORS: Final[frozenset[str]] = frozenset(
    {Bucketing.name, NearestNeighbourMixing.name, AdaptiveRobustClipping.name}
)
"""Names of the rules that transform the updates and hand them to an ``inner`` rule."""

STREAMING: Final[frozenset[str]] = frozenset(
    name for name, cls in AGGREGATORS.items() if cls.streaming
)
"""Names of the rules that also aggregate update by update (``start/accumulate/finish``)."""

STATELESS: Final[frozenset[str]] = frozenset(
    name for name, cls in AGGREGATORS.items() if not cls.stateful
)
"""Names of the rules whose output depends on the current round only."""


def _lookup(name: str) -> type[Aggregator]:
    try:
        return AGGREGATORS[name]
    except KeyError:
        known = ", ".join(sorted(AGGREGATORS))
        raise ValueError(f"unknown aggregator {name!r}; known: {known}") from None


def parameters(name: str) -> tuple[str, ...]:
    """Return the hyperparameter names that :func:`build` accepts for rule ``name``.

    Raises
    ------
    ValueError
        If ``name`` is not in :data:`AGGREGATORS`.
    """
    signature = inspect.signature(_lookup(name))
    return tuple(
        parameter.name
        for parameter in signature.parameters.values()
        if parameter.kind in (parameter.KEYWORD_ONLY, parameter.POSITIONAL_OR_KEYWORD)
    )


def is_stateful(name: str) -> bool:
    """Return whether rule ``name`` keeps state across rounds (``ValueError`` if unknown)."""
    return _lookup(name).stateful


def supports_streaming(name: str) -> bool:
    """Return whether rule ``name`` is a streaming aggregator (``ValueError`` if unknown).

    A streaming rule may still refuse a particular round (an automatic radius not yet
    known): its ``start`` then raises :class:`StreamingUnavailableError`.
    """
    _lookup(name)
    return name in STREAMING


def rule_state(rule: Aggregator) -> dict[str, Any] | None:
    """Return the state to persist for ``rule``: its ``state_dict()``, ``None`` if stateless.

    The rule's ``stateful`` declaration decides (the conformance suite checks that it
    matches the state methods), so callers never probe for methods.
    """
    return cast(StatefulAggregator, rule).state_dict() if rule.stateful else None


def load_rule_state(rule: Aggregator, state: Mapping[str, Any]) -> None:
    """Restore ``rule`` from a :func:`rule_state` document; a stateless rule ignores it.

    Raises
    ------
    ValueError
        If the rule is stateful and ``state`` is not a state it produced.
    """
    if rule.stateful:
        cast(StatefulAggregator, rule).load_state_dict(state)


def build(name: str, **params: Any) -> Aggregator:
    """Construct rule ``name`` with hyperparameters ``params``.

    Parameters
    ----------
    name:
        A key of :data:`AGGREGATORS`, e.g. ``"trimmed-mean"``.
    **params:
        The rule's hyperparameters (see :func:`parameters`); omitted ones take their
        defaults.

    Returns
    -------
    Aggregator
        A fresh instance; stateful ones start from an empty state.

    Raises
    ------
    ValueError
        For an unknown name (the message lists the known ones), a parameter the rule does
        not take (the message lists those it does), or an invalid value (the message
        names the parameter and the value).
    """
    factory = _lookup(name)
    accepted = parameters(name)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        listing = ", ".join(accepted) if accepted else "none"
        raise ValueError(
            f"aggregator {name!r} takes no parameter {', '.join(unknown)}; it takes: {listing}"
        )
    return cast(Callable[..., Aggregator], factory)(**params)


def aggregate(
    name: str, updates: UpdateMatrix, weights: ArrayLike | None = None, **params: Any
) -> UpdateVector:
    """Aggregate one round with stateless rule ``name`` and return the float32 ``(d,)`` vector.

    Parameters
    ----------
    name:
        A name in :data:`STATELESS`.
    updates:
        float32 ``(n, d)``.
    weights:
        Optional non-negative ``(n,)`` weights.
    **params:
        The rule's hyperparameters, as for :func:`build`.

    Raises
    ------
    ValueError
        As for :func:`build`, on malformed input, or if the rule is stateful (its state
        would be thrown away; use :func:`build` and keep the instance).
    BreakdownError
        If the rule's breakdown condition fails.
    """
    if is_stateful(name):
        raise ValueError(f"aggregator {name!r} is stateful; build() it and keep the instance")
    result = build(name, **params)(updates, weights)
    return np.asarray(result.aggregate, dtype=np.float32)
