"""What the pre-aggregators (``bucketing``, ``nnm``, ``arc``) share: the rule they wrap.

A pre-aggregator transforms the round's updates (averages them in buckets, mixes them with
their neighbours, clips the largest) and hands the result to an *inner* rule from the
registry, named by ``inner`` and configured by ``inner_params``::

    aggregate("bucketing", X, inner="coordinate-median", bucket_size=2)
    build("nnm", inner="krum", max_byzantine_fraction=0.2)
    build("arc", inner="trimmed-mean", inner_params={"trim_fraction": 0.3})

The inner rule must be stateless (see :class:`InnerRule`). When it takes
``max_byzantine_fraction`` and ``inner_params`` does not fix it, the pre-aggregator passes
the fraction that makes the inner rule tolerate the Byzantine rows it can receive (each
pre-aggregator documents the count).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from byzedge.coordinator.aggregation.base import AggregationDiagnostics, Aggregator

__all__ = ["DEFAULT_INNER", "InnerRule", "expand_diagnostics"]

DEFAULT_INNER = "coordinate-median"
"""The inner rule of every pre-aggregator when ``inner`` is not given: it needs no ``f``."""

_FRACTION = "max_byzantine_fraction"


class InnerRule:
    """A stateless registry rule wrapped by a pre-aggregator, rebuilt per Byzantine fraction.

    Parameters
    ----------
    owner:
        The pre-aggregator's registry name (for messages).
    name:
        The inner rule's registry name; it must be stateless: a pre-aggregator changes the
        rows the inner rule sees every round (fresh buckets, fresh mixtures), and the
        registry declares statefulness per name, so a wrapped reference or centre would
        silently be lost by :func:`~byzedge.coordinator.aggregation.aggregate` and the daemon.
    params:
        The inner rule's hyperparameters (``inner_params``), checked here by building it.
    max_byzantine_fraction:
        The pre-aggregator's fraction, used to validate a fraction-taking inner rule.

    Raises
    ------
    ValueError
        For an unknown or stateful ``inner``, or ``inner_params`` the rule rejects (the
        message names the parameter and the value).
    """

    def __init__(
        self,
        owner: str,
        name: object,
        params: Mapping[str, Any] | None,
        max_byzantine_fraction: float,
    ) -> None:
        # The registry imports the pre-aggregators, so it is looked up when one is built.
        from byzedge.coordinator.aggregation import (  # noqa: PLC0415
            AGGREGATORS,
            STATELESS,
            build,
            parameters,
        )

        if not isinstance(name, str) or name not in AGGREGATORS:
            known = ", ".join(sorted(STATELESS))
            raise ValueError(f"{owner}: inner must be a registered rule ({known}), got {name!r}")
        if name not in STATELESS:
            raise ValueError(f"{owner}: inner must be a stateless rule, got {name!r}")
        if params is not None and not isinstance(params, Mapping):
            raise ValueError(f"{owner}: inner_params must be a mapping, got {params!r}")
        self.owner = owner
        self.name = name
        self.params: dict[str, Any] = dict(params or {})
        self._build = build
        self.takes_fraction = _FRACTION in parameters(name)
        self.fixed_fraction = _FRACTION in self.params
        self._cache: dict[float, Aggregator] = {}
        self.rule(max_byzantine_fraction)  # validates inner_params now, not at the first round

    def rule(self, max_byzantine_fraction: float) -> Aggregator:
        """Return the inner rule, built with ``max_byzantine_fraction`` when it takes one.

        A fraction fixed in ``inner_params`` wins over the argument.
        """
        key = max_byzantine_fraction if self.takes_fraction and not self.fixed_fraction else -1.0
        cached = self._cache.get(key)
        if cached is None:
            params = dict(self.params)
            if key >= 0:
                params[_FRACTION] = max_byzantine_fraction
            cached = self._build(self.name, **params)
            if len(self._cache) > 64:  # fractions vary with n; keep the cache small
                self._cache.clear()
            self._cache[key] = cached
        return cached

    def describe(self) -> str:
        """``name`` or ``name(k=v, ...)`` for reprs."""
        if not self.params:
            return repr(self.name)
        listing = ", ".join(f"{k}={v!r}" for k, v in sorted(self.params.items()))
        return f"{self.name!r}, inner_params={{{listing}}}"


def expand_diagnostics(
    inner: AggregationDiagnostics, groups: Sequence[NDArray[np.intp]], n: int
) -> tuple[tuple[int, ...] | None, NDArray[np.float64] | None, NDArray[np.float64] | None]:
    """Map diagnostics about groups of updates (buckets) back to the ``n`` updates.

    Update ``i`` in group ``g`` gets group ``g``'s score and clip factor; a selected group
    selects all its members.

    Returns
    -------
    selected, scores, clip_factors:
        As in :class:`~coordinator.aggregation.base.AggregationDiagnostics`, per update.
    """
    owner = np.empty(n, dtype=np.intp)  # (n,): the group of each update
    for index, members in enumerate(groups):
        owner[members] = index
    selected = None
    if inner.selected is not None:
        selected = tuple(sorted(int(i) for g in inner.selected for i in groups[g]))
    scores = None if inner.scores is None else inner.scores[owner]
    factors = None if inner.clip_factors is None else inner.clip_factors[owner]
    return selected, scores, factors
