"""The fast paths of the aggregation rules: folded finiteness checks, float32 Gram selection."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from byzedge.coordinator.aggregation import AGGREGATORS, build, geometric_median, krum
from byzedge.coordinator.aggregation._columns import GRAM32_RTOL, centred_gram, centred_gram32
from byzedge.coordinator.aggregation._kernels import all_finite, clipped_step, squared_distances_to
from byzedge.coordinator.aggregation.base import ensure_finite, validate_updates
from byzedge.coordinator.aggregation.krum import (
    Distances,
    distances_from_gram,
    pairwise_squared_distances,
)

HUGE = np.float32(3e38)  # finite, but 50 of them overflow a float32 sum


@pytest.fixture
def fast_gram() -> Iterator[None]:
    """Use the float32 Gram path whatever the size of the round."""
    saved = krum.FAST_GRAM_MIN_ENTRIES
    krum.FAST_GRAM_MIN_ENTRIES = 0
    yield
    krum.FAST_GRAM_MIN_ENTRIES = saved


def _exact(rule_name: str, updates: np.ndarray, **params: object) -> object:
    saved = krum.FAST_GRAM_MIN_ENTRIES
    krum.FAST_GRAM_MIN_ENTRIES = 10**18
    try:
        return build(rule_name, **params)(updates)
    finally:
        krum.FAST_GRAM_MIN_ENTRIES = saved


@pytest.mark.parametrize(
    ("value", "finite"),
    [(0.0, True), (HUGE, True), (-HUGE, True), (np.nan, False), (np.inf, False), (-np.inf, False)],
)
def test_all_finite_is_exact_even_when_the_sum_overflows(value: float, finite: bool) -> None:
    updates = np.full((50, 100), HUGE, dtype=np.float32)  # the float32 sum overflows
    updates[7, 3] = value
    assert all_finite(updates) is finite
    small = np.ones((3, 4), dtype=np.float32)
    small[1, 2] = value
    assert all_finite(small) is bool(np.isfinite(small).all())


def test_inf_and_minus_inf_together_are_caught() -> None:
    updates = np.zeros((4, 4), dtype=np.float32)
    updates[0, 0], updates[3, 3] = np.inf, -np.inf
    assert not all_finite(updates)


def test_huge_finite_updates_are_accepted_and_averaged() -> None:
    updates = np.full((50, 8), HUGE, dtype=np.float32)
    assert validate_updates(updates) is updates
    assert_allclose(build("mean")(updates).aggregate, np.full(8, HUGE), rtol=1e-6)


def test_ensure_finite_tells_overflow_from_bad_input() -> None:
    finite = np.ones((2, 2), dtype=np.float32)
    assert ensure_finite(np.ones(3), finite)
    assert not ensure_finite(np.array([np.inf]), finite)  # finite input: derived overflowed
    bad = finite.copy()
    bad[0, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        ensure_finite(np.array([np.nan]), bad)


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("row", [0, 10])
def test_every_rule_rejects_non_finite_updates(
    name: str, bad: float, row: int, fast_gram: None
) -> None:
    updates = np.random.default_rng(3).normal(size=(11, 5000)).astype(np.float32)
    updates[row, 4321] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        build(name)(updates)


def test_a_zero_weight_does_not_hide_a_nan_from_the_mean() -> None:
    updates = np.ones((3, 5), dtype=np.float32)
    updates[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        build("mean")(updates, np.array([1.0, 0.0, 1.0]))


def test_squared_distances_match_float64_also_for_huge_values() -> None:
    rng = np.random.default_rng(4)
    updates = (rng.normal(size=(6, 9000)) * 1e25).astype(np.float32)  # squares overflow f32
    centre = (rng.normal(size=9000) * 1e25).astype(np.float32)
    expected = ((updates.astype(np.float64) - centre.astype(np.float32)) ** 2).sum(axis=1)
    assert_allclose(squared_distances_to(updates, centre), expected, rtol=1e-6)
    assert_allclose(
        squared_distances_to(updates), (updates.astype(np.float64) ** 2).sum(1), rtol=1e-6
    )


def test_clipped_step_moves_the_centre_and_measures_the_new_distances() -> None:
    rng = np.random.default_rng(5)
    updates = rng.normal(size=(7, 9000)).astype(np.float32)
    centre = rng.normal(size=9000).astype(np.float32)
    coefficients = rng.uniform(0, 0.2, size=7).astype(np.float32)
    moved, squared = clipped_step(updates, centre, coefficients, with_distances=True)
    expected = centre + coefficients.astype(np.float64) @ (updates - centre)
    assert_allclose(moved, expected, rtol=1e-5, atol=1e-5)
    assert squared is not None
    assert_allclose(squared, ((updates - moved.astype(np.float64)) ** 2).sum(1), rtol=1e-5)


def test_float32_gram_errors_stay_inside_their_bounds() -> None:
    rng = np.random.default_rng(6)
    updates = (rng.normal(size=(20, 200_000)) + 1e3).astype(np.float32)
    exact = distances_from_gram(centred_gram(updates)[0])
    table = Distances(updates)
    assert not table.exact  # 4e6 entries: the float32 path
    assert (np.abs(table.matrix - exact) <= table.bounds).all()
    # The bounds are GRAM32_RTOL * (||y_i|| + ||y_j||)^2 off the diagonal.
    root = np.sqrt(np.diag(centred_gram32(updates)))
    allowance = GRAM32_RTOL * (root[:, None] + root[None, :]) ** 2
    np.fill_diagonal(allowance, 0.0)
    assert_allclose(table.bounds, allowance)


@pytest.mark.parametrize("name", ["krum", "multi-krum", "bulyan", "nnm"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_float32_selection_agrees_with_the_exact_one(name: str, seed: int, fast_gram: None) -> None:
    rng = np.random.default_rng(seed)
    updates = rng.normal(size=(23, 3000)).astype(np.float32)
    updates[-4:] *= 5
    fast = build(name)(updates)
    exact = _exact(name, updates)
    assert fast.diagnostics.selected == exact.diagnostics.selected  # type: ignore[attr-defined]
    assert_allclose(fast.aggregate, exact.aggregate, rtol=1e-6, atol=1e-6)  # type: ignore[attr-defined,arg-type]


@pytest.mark.parametrize("name", ["krum", "multi-krum", "bulyan", "nnm"])
def test_exact_ties_fall_back_to_the_exact_content_tie_break(name: str, fast_gram: None) -> None:
    rng = np.random.default_rng(7)
    base = rng.normal(size=(6, 2000)).astype(np.float32)
    # Mirror images around the origin: every score has an exact twin.
    updates = np.concatenate([base, -base, 3 * base[:1], -3 * base[:1]])
    calls: list[int] = []
    original, refine = Distances.make_exact, Distances.refine

    def spy(self: Distances) -> None:
        calls.append(1)
        original(self)

    def spy_refine(self: Distances, rows: np.ndarray) -> None:
        calls.append(1)
        refine(self, rows)

    Distances.make_exact = spy  # type: ignore[method-assign]
    Distances.refine = spy_refine  # type: ignore[method-assign]
    try:
        fast = build(name, max_byzantine_fraction=0.1)(updates)
    finally:
        Distances.make_exact = original  # type: ignore[method-assign]
        Distances.refine = refine  # type: ignore[method-assign]
    exact = _exact(name, updates, max_byzantine_fraction=0.1)
    if name != "nnm":  # tied Krum scores; NNM's neighbourhood edges need not be tied here
        assert calls  # the near-tie was handed to the exact distances
    assert fast.diagnostics.selected == exact.diagnostics.selected  # type: ignore[attr-defined]
    assert_array_equal(fast.aggregate, exact.aggregate)  # type: ignore[attr-defined]


def test_refined_rows_hold_exact_distances() -> None:
    rng = np.random.default_rng(8)
    updates = (rng.normal(size=(9, 200_000)) + 50).astype(np.float32)
    table = Distances(updates)
    table.refine(np.array([2, 5]))
    exact = pairwise_squared_distances(updates)
    for row in (2, 5):
        assert_allclose(table.matrix[row], exact[row], rtol=1e-12)
        assert_allclose(table.matrix[:, row], exact[:, row], rtol=1e-12)
        assert not table.bounds[row].any()
        assert not table.bounds[:, row].any()
    assert (np.abs(table.matrix - exact) <= table.bounds + 1e-9 * exact).all()


@pytest.mark.parametrize("outlier_scale", [1.0, 1e3, 1e7])
def test_geometric_median_from_float32_products_matches_the_exact_iterations(
    outlier_scale: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(int(outlier_scale))
    n, d = 20, 60_000  # above the float32 Gram threshold (2^20 entries)
    updates = (rng.standard_normal(d) + rng.standard_normal((n, d))).astype(np.float32)
    updates[:4] = (updates[:4] * outlier_scale).astype(np.float32)  # Byzantine rows
    fast = build("geometric-median")(updates)
    monkeypatch.setattr(geometric_median, "FAST_GRAM_MIN_ENTRIES", 10**18)
    exact = build("geometric-median")(updates)
    spread = float(np.linalg.norm(updates[4:] - exact.aggregate, axis=1).max())
    assert float(np.linalg.norm(fast.aggregate - exact.aggregate)) <= 1e-5 * spread
    assert fast.diagnostics.scores is not None
    assert exact.diagnostics.scores is not None
    assert_allclose(fast.diagnostics.scores, exact.diagnostics.scores, rtol=1e-5)


def test_geometric_median_falls_back_when_float32_products_cannot_tell(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Honest updates 1e-4 apart next to offsets of 1e3: the float32 Gram's error bound
    # exceeds the distances, so the float64 path must decide.
    rng = np.random.default_rng(3)
    n, d = 12, 100_000
    updates = (1e3 * rng.standard_normal(d) + 1e-4 * rng.standard_normal((n, d))).astype(np.float32)
    updates[:2] += np.float32(1e3)
    calls: list[str] = []
    original = geometric_median._weiszfeld_gram

    def spy(round_: object, *args: object) -> object:
        calls.append("fast" if round_.rtol > 1e-9 else "exact")  # type: ignore[attr-defined]
        return original(round_, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(geometric_median, "_weiszfeld_gram", spy)
    result = build("geometric-median")(updates)
    assert calls[0] == "fast"
    assert len(calls) >= 2  # the float32 attempt gave way
    assert np.isfinite(result.aggregate).all()
