"""Certified per-round bounds (coordinator.certified): hand cases, random worst cases."""

from __future__ import annotations

import itertools
import json
from typing import Any

import numpy as np
import pytest

from byzedge.coordinator.aggregation import build
from byzedge.coordinator.certified import certify, coefficient, pre_round_centre, widen
from byzedge.coordinator.reputation import ReputationBook
from byzedge.coordinator.round_engine import RoundSettings, server_step
from byzedge.monitor.view import FleetView

SLACK = 1e-3  # covers the float32 rounding allowance of these small cases


def _rows(*values: float) -> np.ndarray:
    return np.array([[v] for v in values], dtype=np.float32)


def _worst_deviation(rows: np.ndarray, aggregate: np.ndarray, f: int) -> float:
    """The largest ||aggregate - mean_H|| over every honest set of n - f or more rows."""
    n = len(rows)
    values = rows.astype(np.float64)
    return max(
        float(np.linalg.norm(aggregate - values[list(subset)].mean(axis=0)))
        for k in range(n - f, n + 1)
        for subset in itertools.combinations(range(n), k)
    )


def test_mean_box_bound_is_attained_by_the_lowest_three_of_four() -> None:
    rows = _rows(0, 1, 2, 10)
    certificate = certify(build("mean"), "mean", rows, rows.mean(axis=0), f=1)

    assert certificate.basis == "box"
    assert certificate.bound == pytest.approx(2.25, abs=SLACK)  # mean 3.25, honest {0,1,2}
    assert certificate.candidates["distance"] == pytest.approx(49 / 12, abs=SLACK)
    assert "kappa" not in certificate.candidates
    assert certificate.reason == "mean has no finite robustness coefficient for f >= 1"


def test_coordinate_median_reports_its_published_coefficient() -> None:
    rows = _rows(0, 1, 2, 10)
    certificate = certify(build("coordinate-median"), "coordinate-median", rows, _rows(1.5)[0], f=1)

    assert certificate.kappa == pytest.approx(widen(9.0, 1, 0, 4))  # 4 (1 + 1/2)^2 at c = 1
    assert certificate.bound == pytest.approx(17 / 6, abs=SLACK)  # honest {1, 2, 10}
    assert certificate.source.startswith("coordinate-wise order statistics")


def test_norm_clipping_candidate_is_the_clipped_share_formula() -> None:
    rows = _rows(0.5, -0.5, 0.5, 10)
    rule = build("norm-clipping", clip_norm=1.0)
    result = rule(rows)
    certificate = certify(
        rule, "norm-clipping", rows, result.aggregate, f=1, centre=pre_round_centre(rule)
    )

    # h = 3: (1/4)(tau + A) + 9/4 with tau = 1, A = 11/3; h = 4: 9/4.
    assert certificate.candidates["clipping"] == pytest.approx(
        1 / 4 * (1 + 11 / 3) + 9 / 4, abs=SLACK
    )


def test_no_finite_bound_when_f_reaches_half_the_rows() -> None:
    rows = _rows(0, 1, 2, 10)
    certificate = certify(build("mean"), "mean", rows, rows.mean(axis=0), f=2)

    assert certificate.bound is None
    assert certificate.reason is not None
    assert "n/2" in certificate.reason


def test_reputation_weights_void_the_coefficient_but_not_the_box() -> None:
    rows = _rows(0, 1, 2, 10, 3)
    rule = build("trimmed-mean", trim_fraction=0.2)
    weights = np.array([1.0, 0.5, 1.0, 1.0, 1.0])
    aggregate = rule(rows, weights).aggregate
    certificate = certify(rule, "trimmed-mean", rows, aggregate, f=1, weights=weights)

    assert certificate.weighted
    assert "kappa" not in certificate.candidates
    assert certificate.bound is not None
    assert _worst_deviation(rows, aggregate, 1) <= certificate.bound


def test_widen_is_the_coefficient_at_its_own_tolerance() -> None:
    assert widen(2.5, 3, 3, 10) == pytest.approx(2.5)
    assert widen(0.0, 0, 0, 10) == 0.0
    assert widen(2.5, 3, 0, 10) > 2.5


def test_a_rule_tuned_for_fewer_byzantines_has_no_coefficient() -> None:
    rule = build("trimmed-mean", trim_fraction=0.1)
    rows = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32)
    certificate = certify(rule, "trimmed-mean", rows, rule(rows).aggregate, f=2)

    assert "kappa" not in certificate.candidates
    assert certificate.reason == "trimmed-mean is tuned for c=1 < f=2 Byzantine rows"


def test_coefficients_follow_table_one() -> None:
    found = coefficient(build("trimmed-mean", trim_fraction=0.2), 10, 2)
    assert not isinstance(found, str)
    assert found.kappa == pytest.approx(6 * 2 / 6 * (1 + 2 / 6))
    found = coefficient(build("krum", max_byzantine_fraction=0.2), 10, 2)
    assert not isinstance(found, str)
    assert found.kappa == pytest.approx(6 * (1 + 2 / 6))
    assert isinstance(coefficient(build("bulyan"), 10, 2), str)


RULES: list[tuple[str, dict[str, Any]]] = [
    ("mean", {}),
    ("coordinate-median", {}),
    ("trimmed-mean", {"trim_fraction": 0.25}),
    ("krum", {"max_byzantine_fraction": 0.25}),
    ("multi-krum", {"max_byzantine_fraction": 0.25}),
    ("geometric-median", {}),
    ("nnm", {"max_byzantine_fraction": 0.25}),
    ("nnm", {"max_byzantine_fraction": 0.25, "inner": "krum"}),
    ("norm-clipping", {}),
    ("centered-clipping", {"iterations": 1}),
    ("centered-clipping", {"iterations": 3}),
    ("clipping-vr", {}),
    ("bucketing", {"seed": 0}),
    ("arc", {"max_byzantine_fraction": 0.25}),
]


@pytest.mark.parametrize(("name", "params"), RULES)
def test_every_candidate_holds_against_every_honest_set(name: str, params: dict[str, Any]) -> None:
    rng = np.random.default_rng(7)
    for trial in range(25):
        n, d, f = 8, 5, 2
        rows = rng.normal(size=(n, d)).astype(np.float32)
        byzantine = rng.choice(n, size=int(rng.integers(0, f + 1)), replace=False)
        scale = float(rng.choice([0.5, 3.0, 30.0]))
        rows[byzantine] = (rng.normal(size=(len(byzantine), d)) * scale + 1.0).astype(np.float32)
        rule = build(name, **params)
        if rule.stateful and trial % 2:
            rule(rng.normal(size=(n, d)).astype(np.float32))  # a centre from a past round
        centre = pre_round_centre(rule)
        result = rule(rows)
        certificate = certify(
            rule,
            name,
            rows,
            result.aggregate,
            f=f,
            centre=centre,
            clip_threshold=result.diagnostics.clip_threshold,
        )
        worst = _worst_deviation(rows, result.aggregate.astype(np.float64), f)
        for candidate, value in certificate.candidates.items():
            assert worst <= value, (name, candidate, worst, value)


@pytest.mark.parametrize("anomaly_detection", [True, False])  # batch and streaming paths
def test_server_step_attaches_the_certificate(anomaly_detection: bool) -> None:
    rows = np.random.default_rng(1).normal(size=(6, 4)).astype(np.float32)
    settings = RoundSettings(
        anomaly_detection=anomaly_detection,
        device_reputation=False,
        certified_robustness=True,
        max_byzantine_fraction=0.2,
    )
    step = server_step(
        np.zeros(4, dtype=np.float32),
        [f"d{i}" for i in range(6)],
        list(rows),
        settings=settings,
        reputation=ReputationBook(),
        aggregator=build("clipping-vr"),
    )

    assert step.certificate is not None
    assert step.certificate.f == 1
    assert "clipping" in step.certificate.candidates
    assert step.certificate.to_dict()["bound"] == step.certificate.bound


def test_a_fallback_round_is_certified_with_the_fallback_rule() -> None:
    rows = np.random.default_rng(2).normal(size=(4, 3)).astype(np.float32)
    step = server_step(
        np.zeros(3, dtype=np.float32),
        ["a", "b", "c", "d"],
        rows,
        settings=RoundSettings(certified_robustness=True, max_byzantine_fraction=0.25),
        reputation=ReputationBook(),
        aggregator=build("krum", max_byzantine_fraction=0.25),  # needs n >= 2f + 3 = 5
    )

    assert step.fallback == "coordinate-median"
    assert step.certificate is not None
    assert step.certificate.rule == "coordinate-median"


def test_the_step_attaches_nothing_unless_asked() -> None:
    step = server_step(
        np.zeros(2, dtype=np.float32),
        ["a", "b", "c"],
        np.ones((3, 2), dtype=np.float32),
        settings=RoundSettings(),
        reputation=ReputationBook(),
        aggregator=build("mean"),
    )
    assert step.certificate is None


def test_the_monitor_reads_a_summarys_certificate() -> None:
    view = FleetView("f")
    summary = {"round": 3, "certificate": {"bound": 0.25, "basis": "box", "f": 2, "n": 9}}
    view.apply("byzedge/f/coordinator/status", json.dumps(summary).encode())

    latest = view.latest_round
    assert latest is not None
    assert latest.certificate is not None
    assert (latest.certificate.bound, latest.certificate.basis, latest.certificate.f) == (
        0.25,
        "box",
        2,
    )
