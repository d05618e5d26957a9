"""Colluding attacks: each output checked against its paper's formula or constraint."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from byzedge.faults.errors import FaultConfigError
from byzedge.faults.omniscient import (
    Alie,
    CollusionContext,
    Ipm,
    Mimic,
    MinMax,
    MinSum,
    OptimalAlie,
    OptimalIpm,
    ShiftBack,
    alie_z,
    build_colluding_attack,
)

D = 6


def honest_updates(h: int = 8, seed: int = 0) -> NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(h, D)) + np.arange(D)).astype(np.float32)


def ctx(
    num_sampled: int = 10,
    *,
    aggregate: object = None,
    global_params: NDArray[np.float32] | None = None,
    lr: float = 1.0,
) -> CollusionContext:
    return CollusionContext(
        round=3,
        global_params=np.zeros(D, np.float32) if global_params is None else global_params,
        initial_params=np.zeros(D, np.float32),
        num_sampled=num_sampled,
        rng=np.random.default_rng(0),
        aggregate=aggregate,  # type: ignore[arg-type]
        server_learning_rate=lr,
    )


def median(matrix: NDArray[np.float32]) -> NDArray[np.float32]:
    return np.median(matrix, axis=0).astype(np.float32)


@pytest.mark.parametrize(
    ("n", "f", "expected"),
    [
        (12, 2, 0.000),
        (16, 3, 0.097),
        (20, 3, 0.074),
        (20, 5, 0.253),
        (50, 12, 0.336),
        (100, 20, 0.286),
    ],
)
def test_alie_z_matches_the_reference_table(n: int, f: int, expected: float) -> None:
    assert alie_z(n, f) == pytest.approx(expected, abs=5e-4)


def test_alie_z_stays_finite_under_a_byzantine_majority() -> None:
    assert 4.0 < alie_z(10, 6) < 5.0


def test_alie_sends_mean_minus_z_times_unbiased_std() -> None:
    honest = np.array([[0.0, 1.0], [2.0, 1.0], [4.0, 4.0]], np.float32)
    out = Alie()(honest, 2, ctx(num_sampled=5))  # n=5, f=2: s=1, z=Phi^-1(2/3)
    z = alie_z(5, 2)
    expected = np.array([2.0 - z * 2.0, 2.0 - z * np.sqrt(3.0)], np.float32)
    assert out.shape == (2, 2)
    np.testing.assert_allclose(out, np.tile(expected, (2, 1)), rtol=1e-6)


def test_alie_fixed_z_variant_uses_the_given_z() -> None:
    honest = honest_updates()
    out = Alie(z=1.5)(honest, 1, ctx())
    expected = honest.mean(axis=0) - 1.5 * honest.std(axis=0, ddof=1)
    np.testing.assert_allclose(out[0], expected, rtol=1e-5)


def test_ipm_is_minus_epsilon_times_the_mean() -> None:
    honest = honest_updates()
    np.testing.assert_allclose(Ipm()(honest, 3, ctx())[2], -0.1 * honest.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(
        Ipm(epsilon=100.0)(honest, 1, ctx())[0], -100.0 * honest.mean(axis=0), rtol=1e-5
    )


def sq_dist(a: NDArray[np.floating], b: NDArray[np.floating]) -> NDArray[np.float64]:
    diff = a.astype(np.float64)[:, None, :] - b.astype(np.float64)[None, :, :]
    out: NDArray[np.float64] = np.sum(diff**2, axis=-1)
    return out


@pytest.mark.parametrize("perturbation", ["unit_vec", "sign", "std"])
def test_min_max_stays_within_the_largest_honest_distance(perturbation: str) -> None:
    honest = honest_updates()
    mal = MinMax(perturbation=perturbation)(honest, 2, ctx())  # type: ignore[arg-type]
    bound = sq_dist(honest, honest).max()
    assert sq_dist(mal[:1], honest).max() <= bound * (1 + 1e-5)
    assert sq_dist(mal[:1], honest).max() >= bound * 0.99  # and goes (almost) all the way


@pytest.mark.parametrize("perturbation", ["unit_vec", "sign", "std"])
def test_min_sum_keeps_its_summed_distance_below_the_best_honest_one(perturbation: str) -> None:
    honest = honest_updates()
    mal = MinSum(perturbation=perturbation)(honest, 2, ctx())  # type: ignore[arg-type]
    bound = sq_dist(honest, honest).sum(axis=1).min()
    assert sq_dist(mal[:1], honest).sum() <= bound * (1 + 1e-5)
    assert sq_dist(mal[:1], honest).sum() >= bound * 0.99


def test_min_max_moves_against_the_mean_direction() -> None:
    honest = honest_updates()
    mal = MinMax()(honest, 1, ctx())[0]
    mean = honest.mean(axis=0)
    assert float((mal - mean) @ mean) < 0.0


def test_mimic_copies_an_honest_row() -> None:
    honest = honest_updates()
    out = Mimic()(honest, 3, ctx())
    assert any(np.array_equal(out[0], row) for row in honest)
    assert np.array_equal(out[0], out[2])


def test_mimic_keeps_its_choice_after_warmup() -> None:
    attack = Mimic(warmup=1)
    first = honest_updates(seed=1)
    chosen = attack(first, 1, ctx())
    index = int(np.flatnonzero((first == chosen[0]).all(axis=1))[0])
    later = honest_updates(seed=2)
    np.testing.assert_array_equal(attack(later, 1, ctx())[0], later[index])


def test_mimic_with_a_fixed_target_copies_that_row() -> None:
    honest = honest_updates()
    np.testing.assert_array_equal(Mimic(target=4)(honest, 1, ctx())[0], honest[4])


def test_shift_back_acts_honestly_without_a_byzantine_majority() -> None:
    honest = honest_updates(h=6)
    out = ShiftBack()(honest, 4, ctx(num_sampled=10, global_params=np.ones(D, np.float32)))
    np.testing.assert_allclose(out, np.tile(honest.mean(axis=0), (4, 1)), rtol=1e-6)


def test_shift_back_pulls_toward_the_start_with_a_byzantine_majority() -> None:
    honest = honest_updates(h=4)
    current = np.full(D, 3.0, np.float32)
    out = ShiftBack(mult=2.0)(honest, 6, ctx(num_sampled=10, global_params=current, lr=0.5))
    np.testing.assert_allclose(out, -(2.0 / 0.5) * 3.0)


def test_shift_back_counts_a_tie_as_no_majority() -> None:
    honest = honest_updates(h=5)
    out = ShiftBack()(honest, 5, ctx(num_sampled=10, global_params=np.ones(D, np.float32)))
    np.testing.assert_allclose(out[0], honest.mean(axis=0), rtol=1e-6)


def damage_of(forged: NDArray[np.float32], honest: NDArray[np.float32]) -> float:
    matrix = np.concatenate([honest, forged])
    return float(np.linalg.norm(median(matrix) - honest.mean(axis=0)))


def test_optimal_alie_hurts_the_median_at_least_as_much_as_alie() -> None:
    honest = honest_updates(h=12)
    context = ctx(num_sampled=20, aggregate=median)
    plain = damage_of(Alie()(honest, 8, context), honest)
    tuned = damage_of(OptimalAlie()(honest, 8, context), honest)
    assert tuned > plain  # the search found a stronger factor than the paper's z


def test_optimal_ipm_hurts_the_median_at_least_as_much_as_ipm() -> None:
    honest = honest_updates(h=12)
    context = ctx(num_sampled=20, aggregate=median)
    assert damage_of(OptimalIpm()(honest, 8, context), honest) >= damage_of(
        Ipm()(honest, 8, context), honest
    )


def test_optimal_attacks_need_the_deployed_aggregate() -> None:
    with pytest.raises(ValueError, match="aggregate"):
        OptimalAlie()(honest_updates(), 2, ctx())


def test_no_byzantines_give_an_empty_matrix() -> None:
    assert Alie()(honest_updates(), 0, ctx()).shape == (0, D)


@pytest.mark.parametrize(
    ("name", "params", "word"),
    [
        ("ipm", {"epsilon": -1.0}, "epsilon"),
        ("min-max", {"perturbation": "cosine"}, "perturbation"),
        ("optimal-alie", {"evals": 0}, "evals"),
        ("mimic", {"warmup": -1}, "warmup"),
        ("alie", {"zz": 1.0}, "zz"),
        ("nope", {}, "unknown colluding attack"),
    ],
)
def test_bad_colluding_configs_are_named(name: str, params: dict[str, object], word: str) -> None:
    with pytest.raises(FaultConfigError, match=word):
        build_colluding_attack(name, params)


PLUGIN = """
import numpy as np

def shifted_mean(honest, num_byzantine, context, *, shift=1.0):
    row = honest.mean(axis=0) + shift
    return np.tile(row, (num_byzantine, 1)).astype(np.float32)

not_callable = 3
"""


@pytest.fixture
def plugin_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    package = tmp_path / "byzedge_test_plugins"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "attacks.py").write_text(textwrap.dedent(PLUGIN))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "byzedge_test_plugins.attacks"
    for name in [m for m in sys.modules if m.startswith("byzedge_test_plugins")]:
        del sys.modules[name]


def test_module_function_plugin_is_called_with_its_params(plugin_module: str) -> None:
    attack = build_colluding_attack(f"{plugin_module}:shifted_mean", {"shift": 2.0})
    honest = honest_updates()
    np.testing.assert_allclose(attack(honest, 2, ctx())[1], honest.mean(axis=0) + 2.0, rtol=1e-5)


def test_plugin_with_an_unknown_parameter_is_refused_at_load(plugin_module: str) -> None:
    with pytest.raises(FaultConfigError, match="cannot be called"):
        build_colluding_attack(f"{plugin_module}:shifted_mean", {"strength": 2.0})


@pytest.mark.parametrize(
    ("suffix", "word"),
    [(":missing", "has no"), (":not_callable", "not callable")],
)
def test_plugin_errors_are_explained(plugin_module: str, suffix: str, word: str) -> None:
    with pytest.raises(FaultConfigError, match=word):
        build_colluding_attack(plugin_module + suffix)


def test_plugin_from_a_missing_module_is_explained() -> None:
    with pytest.raises(FaultConfigError, match="cannot import"):
        build_colluding_attack("no_such_pkg_byzedge.attacks:f")
