"""The compiled column kernels agree with the numpy reference paths they replace.

Each rule keeps its numpy implementation as the fallback when numba is missing; these
tests run both on the same inputs (ties, huge values, NaN, column counts that split
across threads and leave ragged blocks) and require the same answers.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import byzedge.coordinator.aggregation.coordinate_median as median_module
from byzedge.coordinator.aggregation import _compiled, _parallel, build
from byzedge.coordinator.aggregation._kernels import clipped_step, squared_distances_to
from byzedge.coordinator.aggregation._networks import selection_network, sorting_network
from byzedge.coordinator.aggregation.bulyan import closest_to_median_mean
from byzedge.coordinator.aggregation.coordinate_median import coordinate_median
from byzedge.coordinator.aggregation.trimmed_mean import trimmed_mean

pytestmark = pytest.mark.skipif(not _compiled.AVAILABLE, reason="numba is not installed")

SPLIT_COLUMNS = _parallel.MIN_PARALLEL_COLUMNS + 777  # split over threads, ragged ends


@pytest.fixture(autouse=True)
def two_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Split large rounds over two threads even on a one-CPU runner."""
    monkeypatch.setenv("BYZEDGE_AGGREGATION_THREADS", "2")


def _apply(steps: np.ndarray, values: np.ndarray) -> np.ndarray:
    wires = values.copy()
    for low, high in steps:
        if wires[low] > wires[high]:
            wires[low], wires[high] = wires[high], wires[low]
    return wires


@pytest.mark.parametrize("n", range(1, 13))
def test_sorting_networks_sort_every_zero_one_input(n: int) -> None:
    # The 0-1 principle (Knuth 5.3.4, Thm. Z): a network that sorts every 0/1 input
    # sorts every input.
    steps = sorting_network(n)
    for bits in itertools.product((0, 1), repeat=n):
        assert list(_apply(steps, np.array(bits))) == sorted(bits)


@pytest.mark.parametrize("n", [13, 17, 30, 50, 64, 65, 100])
def test_sorting_networks_sort_random_inputs(n: int) -> None:
    rng = np.random.default_rng(n)
    steps = sorting_network(n)
    for _ in range(200):
        values = rng.integers(0, 4, n)
        assert_array_equal(_apply(steps, values), np.sort(values))


@pytest.mark.parametrize("n", [2, 7, 50, 51])
def test_selection_networks_place_the_chosen_outputs(n: int) -> None:
    rng = np.random.default_rng(n)
    outputs = (n // 2 - 1, n // 2) if n % 2 == 0 else (n // 2,)
    steps = selection_network(n, outputs)
    assert len(steps) <= len(sorting_network(n))
    for _ in range(200):
        values = rng.standard_normal(n)
        result = _apply(steps, values)
        for wire in outputs:
            assert result[wire] == np.sort(values)[wire]


def test_networks_reject_impossible_shapes() -> None:
    with pytest.raises(ValueError, match="n >= 1"):
        sorting_network(0)
    with pytest.raises(ValueError, match="outputs"):
        selection_network(4, (4,))


def _rounds(n: int, d: int, seed: int) -> np.ndarray:
    """Updates with many exact ties (few distinct values) and some huge outliers."""
    rng = np.random.default_rng(seed)
    updates = rng.standard_normal((n, d)).astype(np.float32)
    updates[:, : d // 3] = rng.integers(-2, 3, (n, d // 3))  # ties everywhere
    updates[: max(1, n // 5), d // 2 :] *= np.float32(1e6)  # huge Byzantine rows
    return updates


@pytest.mark.parametrize(("n", "d"), [(1, 300), (2, 129), (7, 1000), (50, SPLIT_COLUMNS)])
def test_median_is_bit_for_bit_the_numpy_one(n: int, d: int) -> None:
    updates = _rounds(n, d, seed=n)
    assert_array_equal(coordinate_median(updates), np.median(updates, axis=0))


@pytest.mark.parametrize(("n", "trim_fraction", "d"), [(5, 0.2, 700), (50, 0.2, SPLIT_COLUMNS)])
def test_trimmed_mean_and_trim_shares_match_the_numpy_path(
    n: int, trim_fraction: float, d: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    updates = _rounds(n, d, seed=3)
    b = int(trim_fraction * n)
    compiled, compiled_share = trimmed_mean(updates, b)
    monkeypatch.setattr(_compiled, "AVAILABLE", False)
    reference, reference_share = trimmed_mean(updates, b)
    assert_allclose(compiled, reference, rtol=1e-6, atol=1e-6)
    assert_array_equal(compiled_share, reference_share)  # ties counted by the stable rule


@pytest.mark.parametrize(("n", "d"), [(11, 900), (50, SPLIT_COLUMNS)])
def test_bulyan_window_matches_the_numpy_path(
    n: int, d: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    updates = _rounds(n, d, seed=5)
    f = (n - 3) // 4
    selected = np.arange(0, n - 2 * f)
    beta = len(selected) - 2 * f
    compiled = closest_to_median_mean(updates, selected, beta)
    monkeypatch.setattr(_compiled, "AVAILABLE", False)
    reference = closest_to_median_mean(updates, selected, beta)
    assert_allclose(compiled, reference, rtol=1e-6, atol=1e-6)


def test_distances_and_clipped_steps_match_float64(monkeypatch: pytest.MonkeyPatch) -> None:
    updates = _rounds(20, SPLIT_COLUMNS, seed=7)
    centre = np.random.default_rng(8).standard_normal(SPLIT_COLUMNS).astype(np.float32)
    exact = ((updates.astype(np.float64) - centre) ** 2).sum(axis=1)
    assert_allclose(squared_distances_to(updates, centre), exact, rtol=1e-12)
    assert_allclose(squared_distances_to(updates), (updates.astype(np.float64) ** 2).sum(1))
    coefficients = np.linspace(0.0, 0.1, 20, dtype=np.float32)
    moved, squared = clipped_step(updates, centre, coefficients, with_distances=True)
    expected = centre + coefficients.astype(np.float64) @ (updates - centre.astype(np.float64))
    assert_allclose(moved, expected, rtol=1e-6, atol=1e-3)  # 1e6-sized rows: float32 output
    assert squared is not None
    assert_allclose(squared, ((updates - moved.astype(np.float64)) ** 2).sum(1), rtol=1e-12)
    monkeypatch.setattr(_compiled, "AVAILABLE", False)
    assert_allclose(squared_distances_to(updates, centre), exact, rtol=1e-5)


@pytest.mark.parametrize(
    "name", ["coordinate-median", "trimmed-mean", "bulyan", "clipping-vr", "centered-clipping"]
)
def test_nan_and_inf_are_still_rejected(name: str) -> None:
    for bad in (np.nan, np.inf, -np.inf):
        updates = _rounds(23, 1000, seed=9)
        updates[4, 517] = bad
        with pytest.raises(ValueError, match="NaN or Inf"):
            build(name)(updates)


@pytest.mark.parametrize("name", ["coordinate-median", "trimmed-mean", "bulyan", "nnm"])
def test_rules_agree_with_their_numpy_path_end_to_end(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    updates = _rounds(23, 5000, seed=11)
    compiled = build(name)(updates).aggregate
    monkeypatch.setattr(_compiled, "AVAILABLE", False)
    reference = build(name)(updates).aggregate
    assert_allclose(compiled, reference, rtol=1e-6, atol=1e-6)


def test_column_ranges_cover_every_column_once() -> None:
    for d in (1, 1000, _parallel.MIN_PARALLEL_COLUMNS, SPLIT_COLUMNS, 10**6 + 3):
        for parts in (1, 2, 3, 8):
            ranges = _parallel.column_ranges(d, parts)
            assert ranges[0][0] == 0
            assert ranges[-1][1] == d
            assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
            assert all(start < stop for start, stop in ranges)
            assert len(ranges) <= parts


def test_thread_count_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BYZEDGE_AGGREGATION_THREADS", "3")
    assert _parallel.worker_count() == 3
    monkeypatch.setenv("BYZEDGE_AGGREGATION_THREADS", "many")
    with pytest.raises(ValueError, match="BYZEDGE_AGGREGATION_THREADS"):
        _parallel.worker_count()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_can_still_split_rounds() -> None:
    updates = _rounds(8, SPLIT_COLUMNS, seed=13)
    expected = coordinate_median(updates)  # the parent's pool now has threads
    context = multiprocessing.get_context("fork")
    with context.Pool(1) as pool:
        result = pool.apply_async(coordinate_median, (updates,)).get(timeout=60)
    assert_array_equal(result, expected)


def test_equal_weights_take_the_unweighted_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    # Reputations stay equal until a device is flagged: those rounds must not pay for the
    # weighted (argsort-based) order statistics.
    def refuse(*_: object) -> None:
        raise AssertionError("the weighted path ran")

    monkeypatch.setattr(median_module, "_weighted_median_rows", refuse)
    updates = _rounds(9, 700, seed=17)
    weights = np.full(9, 0.7)
    assert_array_equal(
        build("coordinate-median")(updates, weights).aggregate, np.median(updates, axis=0)
    )
    unweighted = build("trimmed-mean")(updates).aggregate
    assert_array_equal(build("trimmed-mean")(updates, weights).aggregate, unweighted)
    weights[3] = 0.1  # now they differ: the weighted path is taken
    monkeypatch.setattr(_compiled, "AVAILABLE", False)
    with pytest.raises(AssertionError, match="weighted path"):
        build("coordinate-median")(updates, weights)


@pytest.mark.parametrize(("n", "d"), [(1, 50), (2, 300), (9, 700), (50, SPLIT_COLUMNS)])
def test_weighted_median_matches_the_numpy_path(
    n: int, d: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    updates = _rounds(n, d, seed=19)  # many exact ties
    rng = np.random.default_rng(n)
    for weights in (
        rng.random(n) + 0.01,
        np.where(np.arange(n) % 3 == 0, 0.0, 1.0) + (np.arange(n) == n - 1),  # zeros, ties
        np.eye(1, n, n // 2).ravel() + 1e-3,  # one dominant weight
    ):
        compiled = build("coordinate-median")(updates, weights).aggregate
        with monkeypatch.context() as patch:
            patch.setattr(_compiled, "AVAILABLE", False)
            reference = build("coordinate-median")(updates, weights).aggregate
        assert_array_equal(compiled, reference)


@pytest.mark.parametrize(("n", "d"), [(5, 700), (13, 2000), (50, SPLIT_COLUMNS)])
def test_weighted_trimmed_mean_matches_the_numpy_path(
    n: int, d: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    updates = _rounds(n, d, seed=23)  # many exact ties at the trimming boundaries
    rng = np.random.default_rng(n)
    b = max(1, n // 5)
    for weights in (
        rng.random(n) + 0.01,
        np.where(np.arange(n) % 2 == 0, 0.0, 1.0),  # zero weights: plain where all kept are 0
    ):
        compiled, compiled_share = trimmed_mean(updates, b, weights)
        with monkeypatch.context() as patch:
            patch.setattr(_compiled, "AVAILABLE", False)
            reference, reference_share = trimmed_mean(updates, b, weights)
        assert_allclose(compiled, reference, rtol=1e-6, atol=1e-6)
        assert_array_equal(compiled_share, reference_share)
