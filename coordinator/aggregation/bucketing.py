"""Bucketing: average random buckets of updates, then apply any robust rule.

Karimireddy, He, Jaggi, "Byzantine-Robust Learning on Heterogeneous Datasets via
Bucketing", ICLR 2022 (arXiv 2006.09365).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from byzedge.coordinator.aggregation.base import (
    AggregationDiagnostics,
    AggregationResult,
    BreakdownError,
    UpdateMatrix,
    Weights,
    num_byzantine,
    validate_fraction,
    validate_positive_int,
    validate_updates,
    validate_weights,
)
from byzedge.coordinator.aggregation.composition import DEFAULT_INNER, InnerRule, expand_diagnostics
from byzedge.coordinator.aggregation.mean import weighted_mean

__all__ = ["Bucketing", "bucket_means", "make_generator", "random_buckets"]


def make_generator(seed: object) -> np.random.Generator:
    """Return the generator for ``seed``: a Generator as is, an int ``>= 0`` or ``None``.

    ``None`` seeds from the operating system's entropy (unpredictable to the devices).

    Raises
    ------
    ValueError
        For anything else, naming ``seed`` and the value.
    """
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None:
        return np.random.default_rng()
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, a numpy Generator or None, got {seed!r}")
    return np.random.default_rng(int(seed))


def random_buckets(
    rng: np.random.Generator, n: int, bucket_size: int
) -> tuple[NDArray[np.intp], ...]:
    """Split ``rng.permutation(n)`` into consecutive buckets of ``bucket_size`` (last: rest).

    Exactly one ``rng.permutation(n)`` is drawn, so a caller holding a generator seeded
    alike can replay the buckets.
    """
    permutation = rng.permutation(n).astype(np.intp)  # (n,)
    return tuple(permutation[i : i + bucket_size] for i in range(0, n, bucket_size))


def bucket_means(
    updates: UpdateMatrix, weights: Weights | None, buckets: Sequence[NDArray[np.intp]]
) -> tuple[UpdateMatrix, Weights | None]:
    """Return the (weighted) mean of each bucket and, when weighted, each bucket's weight.

    Parameters
    ----------
    updates:
        float32 ``(n, d)``, already validated.
    weights:
        float64 ``(n,)`` or ``None``.
    buckets:
        Disjoint index arrays covering ``0..n-1``.

    Returns
    -------
    means:
        float32 ``(m, d)``: ``y_t = sum_{i in B_t} w_i x_i / sum_{i in B_t} w_i`` (the plain
        mean of the bucket when its weights sum to 0).
    bucket_weights:
        float64 ``(m,)``: the mean weight of each bucket's members, or ``None`` when
        ``weights`` is ``None``. Equal member weights thus give equal bucket weights, and
        unit weights give the unweighted result.
    """
    means = np.empty((len(buckets), updates.shape[1]), dtype=np.float32)  # (m, d)
    for index, members in enumerate(buckets):  # m = n / s iterations, each O(s d)
        member_weights = None if weights is None else weights[members]
        if member_weights is not None and not member_weights.sum() > 0:
            member_weights = None
        means[index] = weighted_mean(updates[members], member_weights)
    if weights is None:
        return means, None
    return means, np.array([weights[members].mean() for members in buckets])


class Bucketing:
    """Average the updates in random buckets of ``s``, then aggregate the bucket means.

    Each call draws a fresh permutation ``π`` of the ``n`` updates from its generator,
    splits it into ``m = ceil(n / s)`` buckets ``B_t`` (the last one may be smaller) and
    returns ``Inner(y_1, ..., y_m)`` with ``y_t = mean_{i in B_t} x_i`` (Karimireddy et
    al., ICLR 2022, Alg. 1). Averaging shrinks the honest buckets' spread by ``s``, which
    turns rules that are not (δ,c)-robust under heterogeneity (CM, Krum, GM) into ones
    that are, for ``δ s <= δ_max`` of the inner rule.

    Breakdown: ``f = floor(max_byzantine_fraction * n)`` Byzantines contaminate at most
    ``f_b = min(f, m)`` buckets, so the inner rule must tolerate ``f_b`` of ``m`` rows;
    :class:`BreakdownError` when ``2 f_b >= m`` (contaminated buckets could be a majority).
    An inner rule that takes ``max_byzantine_fraction`` receives ``f_b / m`` (so its own
    ``f`` is ``f_b``, as in the authors' code, which keeps ``f`` for the ``m`` buckets),
    unless ``inner_params`` fixes it.

    Weights: bucket ``t`` averages its members with their weights and enters the inner
    rule with their mean weight (so unit weights give the unweighted result).

    Parameters
    ----------
    inner:
        Registry name of the stateless rule applied to the bucket means
        (default ``"coordinate-median"``, the Byz-VR-MARINA-PP experiments' choice).
    inner_params:
        Hyperparameters of the inner rule, e.g. ``{"trim_fraction": 0.3}``.
    bucket_size:
        ``s >= 1`` (2 in the paper's and follow-up code; theory ``s ≈ δ_max / δ``).
    max_byzantine_fraction:
        Upper bound on the Byzantine fraction of the ``n`` updates, in ``[0, 0.5)``.
    seed:
        Seed of the permutations: an int, an injected :class:`numpy.random.Generator`
        (used, and advanced, in place), or ``None`` (the default) for fresh operating-system
        entropy, which devices cannot predict. Each call draws one ``permutation(n)``.

    Notes
    -----
    The inner rule's diagnostics are mapped back to the updates: an update gets its
    bucket's score and clip factor, and a selected bucket selects all its members. The
    latest buckets are in :attr:`last_buckets`.
    """

    name: ClassVar[str] = "bucketing"
    stateful: ClassVar[bool] = False
    streaming: ClassVar[bool] = False
    needs_device_ids: ClassVar[bool] = False

    def __init__(
        self,
        inner: str = DEFAULT_INNER,
        inner_params: Mapping[str, Any] | None = None,
        bucket_size: int = 2,
        max_byzantine_fraction: float = 0.2,
        seed: int | np.random.Generator | None = None,
    ) -> None:
        self.bucket_size = validate_positive_int("bucket_size", bucket_size)
        self.max_byzantine_fraction = validate_fraction(
            "max_byzantine_fraction", max_byzantine_fraction
        )
        self._rng = make_generator(seed)
        self.inner = InnerRule(self.name, inner, inner_params, self.max_byzantine_fraction)
        self._last_buckets: tuple[tuple[int, ...], ...] | None = None

    @property
    def last_buckets(self) -> tuple[tuple[int, ...], ...] | None:
        """The buckets (row indices) of the latest call, ``None`` before it."""
        return self._last_buckets

    def __call__(
        self, updates: UpdateMatrix, weights: ArrayLike | None = None
    ) -> AggregationResult:
        """Aggregate float32 ``(n, d)`` updates with optional ``(n,)`` weights.

        Raises
        ------
        BreakdownError
            If contaminated buckets could be a majority, or the inner rule breaks down.
        """
        matrix = validate_updates(updates)
        vector = validate_weights(weights, len(matrix))
        n = len(matrix)
        buckets = random_buckets(self._rng, n, self.bucket_size)
        self._last_buckets = tuple(tuple(int(i) for i in b) for b in buckets)
        m = len(buckets)
        contaminated = min(num_byzantine(n, self.max_byzantine_fraction), m)
        if 2 * contaminated >= m and contaminated > 0:
            raise BreakdownError(
                f"bucketing: {contaminated} of {m} buckets may hold a Byzantine update "
                f"(n={n}, bucket_size={self.bucket_size}); needs 2 f_b < m"
            )
        means, bucket_weights = bucket_means(matrix, vector, buckets)
        result = self.inner.rule(contaminated / m)(means, bucket_weights)
        selected, scores, factors = expand_diagnostics(result.diagnostics, buckets, n)
        diagnostics = AggregationDiagnostics(selected=selected, scores=scores, clip_factors=factors)
        return AggregationResult(result.aggregate, diagnostics)

    def __repr__(self) -> str:
        return (
            f"Bucketing(inner={self.inner.describe()}, bucket_size={self.bucket_size!r}, "
            f"max_byzantine_fraction={self.max_byzantine_fraction!r})"
        )
