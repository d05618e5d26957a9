"""Nearest-neighbour mixing (NNM): average each update with its neighbours, then aggregate.

Allouah, Farhadkhani, Guerraoui, Gupta, Pinot, Stephan, "Fixing by Mixing: A Recipe for
Optimal Byzantine ML under Heterogeneity", AISTATS 2023 (arXiv 2302.01772).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from byzedge.coordinator.aggregation._columns import single_threaded_blas
from byzedge.coordinator.aggregation._parallel import map_column_ranges
from byzedge.coordinator.aggregation.base import (
    AggregationDiagnostics,
    AggregationResult,
    UpdateMatrix,
    Weights,
    num_byzantine,
    validate_fraction,
    validate_updates,
    validate_weights,
)
from byzedge.coordinator.aggregation.composition import DEFAULT_INNER, InnerRule
from byzedge.coordinator.aggregation.krum import Distances, pairwise_squared_distances

__all__ = ["NearestNeighbourMixing", "nearest_neighbour_mix", "squared_distances"]


def squared_distances(updates: UpdateMatrix) -> NDArray[np.float64]:
    """Return the float64 ``(n, n)`` matrix of ``||x_i - x_j||^2`` from the Gram matrix.

    Rows are centred on their mean in float64 first, so that ``||x_i||^2 + ||x_j||^2 -
    2 <x_i, x_j>`` does not cancel for close, large updates; the diagonal is exactly 0.
    The same blocked computation as Krum's
    (:func:`~byzedge.coordinator.aggregation.krum.pairwise_squared_distances`): no ``(n, d)``
    float64 copy.
    """
    return pairwise_squared_distances(updates)


def _neighbourhoods(distances: Distances, num_neighbours: int) -> NDArray[np.intp] | None:
    """Each row's ``k`` nearest (itself first), or ``None`` if float32 distances cannot tell.

    The choice is kept only when, in every row, the chosen neighbours' distances plus
    their error bounds stay below the others' minus theirs; then the exact distances
    would choose the same neighbourhoods.
    """
    ranking = distances.matrix.copy()
    np.fill_diagonal(ranking, -1.0)  # itself first, even when others coincide with it
    order = np.argsort(ranking, axis=1, kind="stable")  # (n, n)
    k = num_neighbours
    if not distances.exact and 1 <= k < len(order):
        ranked = np.take_along_axis(distances.matrix, order, axis=1)  # (n, n)
        bounds = np.take_along_axis(distances.bounds, order, axis=1)  # (n, n)
        inside = (ranked[:, 1:k] + bounds[:, 1:k]).max(axis=1, initial=-np.inf)  # (n,)
        outside = (ranked[:, k:] - bounds[:, k:]).min(axis=1)  # (n,)
        if not (inside < outside).all():
            return None
    nearest: NDArray[np.intp] = order[:, :k]  # (n, k)
    return nearest


def nearest_neighbour_mix(
    updates: UpdateMatrix, num_neighbours: int, weights: Weights | None = None
) -> tuple[UpdateMatrix, NDArray[np.float64]]:
    """Replace each update by the (weighted) mean of its ``k`` nearest updates, itself included.

    Parameters
    ----------
    updates:
        float32 ``(n, d)``, already validated.
    num_neighbours:
        ``1 <= k <= n`` (``n - f`` in NNM).
    weights:
        float64 ``(n,)`` or ``None``: ``y_i = sum_{j in N_i} w_j x_j / sum_{j in N_i} w_j``
        (the plain mean of ``N_i`` when those weights sum to 0).

    Returns
    -------
    mixed:
        float32 ``(n, d)``.
    spread:
        float64 ``(n,)``: ``sum_{j in N_i} ||x_i - x_j||^2``, how far each update's
        neighbourhood reaches (a Krum-like suspicion score).
    """
    n = len(updates)
    table = Distances(updates)  # also checks the updates for NaN/Inf
    nearest = _neighbourhoods(table, num_neighbours)
    if nearest is None:  # a near-tie at some neighbourhood's edge: decide it exactly
        table.make_exact()
        nearest = _neighbourhoods(table, num_neighbours)
        assert nearest is not None  # noqa: S101 (exact distances always decide)
    distances = table.matrix  # (n, n)
    rows = np.arange(n)[:, None]  # (n, 1)
    mixing = np.zeros((n, n), dtype=np.float64)  # (n, n): row i averages N_i
    if weights is None:
        mixing[rows, nearest] = 1.0
    else:
        mixing[rows, nearest] = weights[nearest]
        empty = ~(mixing.sum(axis=1) > 0)  # (n,): neighbourhoods of weight 0
        mixing[np.flatnonzero(empty)[:, None], nearest[empty]] = 1.0
    mixing /= mixing.sum(axis=1, keepdims=True)
    mixing32 = mixing.astype(np.float32)
    mixed = np.empty_like(updates)  # (n, d)

    def part(start: int, stop: int) -> None:
        mixed[:, start:stop] = mixing32 @ updates[:, start:stop]

    # Our own column ranges on every core, each a one-thread sgemm: OpenBLAS's threads
    # spin badly on a busy 2-core machine.
    with single_threaded_blas():
        map_column_ranges(updates.shape[1], part)
    spread = np.take_along_axis(distances, nearest, axis=1).sum(axis=1)  # (n,)
    return mixed, spread


class NearestNeighbourMixing:
    """Nearest-neighbour mixing (NNM) followed by any robust rule.

    With ``f = floor(max_byzantine_fraction * n)``, each update is replaced by the mean of
    its ``n - f`` nearest updates in ``l2`` (itself included; distances from one Gram
    matrix, no pairwise Python loop)::

        y_i = mean_{j in N_i} x_j,   N_i = the n - f updates closest to x_i
        x   = Inner(y_1, ..., y_n)

    (Allouah et al., AISTATS 2023, Alg. 1). Mixing makes the honest rows nearly agree, so
    that CWTM, GM, Krum or CM reach the optimal ``O(δ ζ^2)`` error under heterogeneity for
    ``f < n / 2``; its cost is ``O(n^2 d)``. The inner rule runs on ``n`` rows with the same
    ``f`` (it receives ``max_byzantine_fraction`` unless ``inner_params`` fixes it), so the
    breakdown condition is the inner rule's (e.g. ``n >= 2f + 3`` for Krum).

    Weights: neighbourhoods are chosen geometrically; ``y_i`` averages its neighbours with
    their weights, and enters the inner rule with ``x_i``'s weight.

    Parameters
    ----------
    inner:
        Registry name of the stateless rule applied to the mixed updates
        (default ``"coordinate-median"``).
    inner_params:
        Hyperparameters of the inner rule.
    max_byzantine_fraction:
        Upper bound on the Byzantine fraction, in ``[0, 0.5)``.

    Notes
    -----
    Row ``i`` of the mixture stands for update ``i``, so the inner rule's diagnostics apply
    to the updates as they are. When the inner rule has no scores, ``scores`` holds each
    update's neighbourhood spread ``sum_{j in N_i} ||x_i - x_j||^2``.
    """

    name: ClassVar[str] = "nnm"
    stateful: ClassVar[bool] = False
    streaming: ClassVar[bool] = False
    needs_device_ids: ClassVar[bool] = False

    def __init__(
        self,
        inner: str = DEFAULT_INNER,
        inner_params: Mapping[str, Any] | None = None,
        max_byzantine_fraction: float = 0.2,
    ) -> None:
        self.max_byzantine_fraction = validate_fraction(
            "max_byzantine_fraction", max_byzantine_fraction
        )
        self.inner = InnerRule(self.name, inner, inner_params, self.max_byzantine_fraction)

    def __call__(
        self, updates: UpdateMatrix, weights: ArrayLike | None = None
    ) -> AggregationResult:
        """Aggregate float32 ``(n, d)`` updates with optional ``(n,)`` weights."""
        matrix = validate_updates(updates, check_finite=False)  # checked by the Gram matrix
        vector = validate_weights(weights, len(matrix))
        n = len(matrix)
        f = num_byzantine(n, self.max_byzantine_fraction)
        mixed, spread = nearest_neighbour_mix(matrix, n - f, vector)
        result = self.inner.rule(self.max_byzantine_fraction)(mixed, vector)
        inner = result.diagnostics
        diagnostics = AggregationDiagnostics(
            selected=inner.selected,
            scores=spread if inner.scores is None else inner.scores,
            clip_factors=inner.clip_factors,
        )
        return AggregationResult(result.aggregate, diagnostics)

    def __repr__(self) -> str:
        return (
            f"NearestNeighbourMixing(inner={self.inner.describe()}, "
            f"max_byzantine_fraction={self.max_byzantine_fraction!r})"
        )
