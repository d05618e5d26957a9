"""Multi-Krum.

Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine Learning with Adversaries: Byzantine
Tolerant Gradient Descent", NeurIPS 2017 (section 5, "m-Krum").
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from byzedge.coordinator.aggregation._kernels import combine_rows
from byzedge.coordinator.aggregation.base import (
    AggregationDiagnostics,
    AggregationResult,
    UpdateMatrix,
    UpdateVector,
    num_byzantine,
    validate_fraction,
    validate_positive_int,
    validate_updates,
    validate_weights,
)
from byzedge.coordinator.aggregation.krum import (
    Distances,
    check_krum_condition,
    krum_select_checked,
)
from byzedge.coordinator.aggregation.mean import weighted_mean

__all__ = ["MultiKrum"]


class MultiKrum:
    """Multi-Krum: the (weighted) mean of the ``m`` updates with the lowest Krum scores.

    Scores as in :class:`~coordinator.aggregation.krum.Krum` (``n - f - 2`` nearest,
    ``f = floor(max_byzantine_fraction * n)``); the output averages the ``m`` best,
    ``m = min(krum_k, n - f)`` (``n - f`` when ``krum_k`` is unset, as in ByzFL), with their
    weights. Capping at ``n - f`` keeps a round with few reports from averaging in updates
    that are likely Byzantine. Needs ``n >= 2f + 3`` (breakdown condition). With ``m = 1``
    it is Krum.

    Parameters
    ----------
    max_byzantine_fraction:
        Upper bound on the Byzantine fraction, in ``[0, 0.5)``.
    krum_k:
        Number of updates averaged, ``>= 1``, or ``None`` for ``n - f``.

    Notes
    -----
    The diagnostics hold the selected indices (increasing) and the Krum scores.
    """

    name: ClassVar[str] = "multi-krum"
    stateful: ClassVar[bool] = False
    streaming: ClassVar[bool] = False
    needs_device_ids: ClassVar[bool] = False

    def __init__(self, max_byzantine_fraction: float = 0.2, krum_k: int | None = None) -> None:
        self.max_byzantine_fraction = validate_fraction(
            "max_byzantine_fraction", max_byzantine_fraction
        )
        self.krum_k = None if krum_k is None else validate_positive_int("krum_k", krum_k)

    def __call__(
        self, updates: UpdateMatrix, weights: ArrayLike | None = None
    ) -> AggregationResult:
        """Aggregate float32 ``(n, d)`` updates with optional ``(n,)`` weights."""
        matrix = validate_updates(updates, check_finite=False)  # checked by the Gram matrix
        vector = validate_weights(weights, len(matrix))
        n = len(matrix)
        f = num_byzantine(n, self.max_byzantine_fraction)
        check_krum_condition(self.name, n, f)
        m = n - f if self.krum_k is None else min(self.krum_k, n - f)
        scores, chosen = krum_select_checked(Distances(matrix), np.arange(n), n - f - 2, m)
        chosen_weights = None if vector is None else vector[chosen]
        if chosen_weights is not None and not chosen_weights.sum() > 0:
            chosen_weights = None  # every selected update has weight 0: average them plainly
        if chosen_weights is None:
            aggregate = _mean_of_rows(matrix, chosen)
        else:
            aggregate = weighted_mean(matrix[chosen], chosen_weights)
        selected = tuple(int(i) for i in chosen)
        return AggregationResult(
            aggregate, AggregationDiagnostics(selected=selected, scores=scores)
        )

    def __repr__(self) -> str:
        return (
            f"MultiKrum(max_byzantine_fraction={self.max_byzantine_fraction!r}, "
            f"krum_k={self.krum_k!r})"
        )


def _mean_of_rows(updates: UpdateMatrix, rows: NDArray[np.intp]) -> UpdateVector:
    """Return the float32 mean of ``updates[rows]`` without copying the rows.

    One float32 matrix-vector product over every row, with coefficient ``1 / m`` on the
    ``m`` chosen rows and 0 elsewhere: it reads the whole matrix once at memory speed
    (on every core), where adding the chosen rows one by one re-reads and re-writes the
    running sum ``m`` times. The updates are known finite (the Gram matrix checked them),
    so the zero coefficients contribute exact zeros.
    """
    coefficients = np.zeros(len(updates), dtype=np.float32)
    coefficients[rows] = np.float32(1.0 / len(rows))
    return combine_rows(coefficients, updates)
