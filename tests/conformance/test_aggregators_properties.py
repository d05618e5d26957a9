"""Every registry entry against its definition, under attack, streamed, and in the config.

1. Robustness table (:data:`BOUNDS`): with ``f = floor(0.2 n)`` outliers of norm 1e6 (spread
   out, or colluding on one point) each rule, with its defaults (pre-aggregators wrap
   ``coordinate-median``), stays within the bound its docstring states:

   ==================  ============  =====================================================
   rule                bound         statement checked
   ==================  ============  =====================================================
   mean                none          breakdown point 0: one outlier moves it arbitrarily
   coordinate-median   range         every coordinate inside the honest values' range
   trimmed-mean        range         (b = floor(0.2 n) = f trimmed per side)
   krum, multi-krum    range         the selection is honest (n >= 2f + 3)
   bulyan              range         honest selection, then a trimmed average
   bucketing           range         CM of bucket means, f_b < m / 2 contaminated buckets
   nnm                 range         honest rows mix honest rows only; CM of the mixtures
   arc                 range         the k >= f largest clipped; CM of the clipped rows
   geometric-median    gm            ||z - y|| <= 2 (n - f) / (n - 2f) max_H ||x_i - y||
   norm-clipping       clip-share    ||x - mean_H-part|| <= f M / n, M = median norm
   clipping-vr         clip-share    same, first round (reference 0, τ = median distance)
   centered-clipping   cc            ||x|| <= (2^L - 1) max_H ||x_i|| (each step <= τ)
   ==================  ============  =====================================================

2. Agreement with slow, obviously-correct loop implementations of each definition (written
   here, in float64 Python loops) on random inputs, weighted and unweighted.
3. Streaming equals batch for the streaming rules whenever the radius is known up front.
4. Registry names and constructor parameters match the configuration schema.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose
from pydantic import ValidationError

from byzedge.coordinator.aggregation import (
    AGGREGATORS,
    PRE_AGGREGATORS,
    STATELESS,
    STREAMING,
    StreamingUnavailableError,
    build,
    parameters,
)
from byzedge.coordinator.aggregation.base import DeviceAwareAggregator, StreamingAggregator
from byzedge.coordinator.aggregation.clipping_vr import ClippingVR, clipped_difference_mean
from byzedge.coordinator.config import AggregationConfig, CoordinatorConfig, rule_parameters

FRACTION = 0.2
Rows = list[list[float]]
Slow = Callable[[Rows, list[float] | None], list[float]]


# -- slow, obviously-correct definitions ------------------------------------------------


def _f(n: int) -> int:
    return math.floor(FRACTION * n + 1e-9)


def _ws(rows: Rows, weights: list[float] | None) -> list[float]:
    return [1.0] * len(rows) if weights is None else list(weights)


def _norm(v: Sequence[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


def _sub(a: Sequence[float], b: Sequence[float]) -> list[float]:
    return [x - y for x, y in zip(a, b, strict=True)]


def _median(values: list[float]) -> float:
    s = sorted(values)
    k = len(s)
    return s[k // 2] if k % 2 else (s[k // 2 - 1] + s[k // 2]) / 2


def slow_mean(rows: Rows, weights: list[float] | None) -> list[float]:
    ws = _ws(rows, weights)
    total = sum(ws)
    return [
        sum(w * row[j] for w, row in zip(ws, rows, strict=True)) / total
        for j in range(len(rows[0]))
    ]


def slow_coordinate_median(rows: Rows, weights: list[float] | None) -> list[float]:
    ws = _ws(rows, weights)
    total = sum(ws)
    out = []
    for j in range(len(rows[0])):
        pairs = sorted((row[j], w / total) for row, w in zip(rows, ws, strict=True))
        if weights is None:
            out.append(_median([p[0] for p in pairs]))
            continue
        cumulative, low, high = 0.0, None, None
        for value, share in pairs:
            cumulative += share
            if low is None and cumulative >= 0.5 - 1e-12:
                low = value
            if high is None and cumulative > 0.5 + 1e-12:
                high = value
        assert low is not None
        assert high is not None
        out.append((low + high) / 2)
    return out


def slow_trimmed_mean(rows: Rows, weights: list[float] | None) -> list[float]:
    ws = _ws(rows, weights)
    b = _f(len(rows))
    out = []
    for j in range(len(rows[0])):
        pairs = sorted((row[j], w) for row, w in zip(rows, ws, strict=True))
        kept = pairs[b : len(pairs) - b]
        total = sum(w for _, w in kept)
        out.append(sum(v * w for v, w in kept) / total)
    return out


def _krum_scores(rows: Rows, neighbours: int) -> list[float]:
    scores = []
    for i, x in enumerate(rows):
        distances = sorted(_norm(_sub(x, y)) ** 2 for k, y in enumerate(rows) if k != i)
        scores.append(sum(distances[:neighbours]))
    return scores


def _lowest(scores: list[float], rows: Rows, m: int) -> list[int]:
    """The m lowest scores; near-ties (relative 1e-9) go to the smallest float32 bytes."""
    threshold = sorted(scores)[m - 1]
    slack = 1e-9 * abs(threshold)
    below = [i for i, s in enumerate(scores) if s < threshold - slack]
    band = [i for i, s in enumerate(scores) if abs(s - threshold) <= slack]
    band.sort(key=lambda i: np.array(rows[i], dtype=np.float32).tobytes())
    return sorted(below + band[: m - len(below)])


def slow_krum(rows: Rows, weights: list[float] | None) -> list[float]:
    n = len(rows)
    scores = _krum_scores(rows, n - _f(n) - 2)
    return rows[_lowest(scores, rows, 1)[0]]


def slow_multi_krum(rows: Rows, weights: list[float] | None) -> list[float]:
    n = len(rows)
    scores = _krum_scores(rows, n - _f(n) - 2)
    chosen = _lowest(scores, rows, n - _f(n))
    ws = _ws(rows, weights)
    return slow_mean([rows[i] for i in chosen], [ws[i] for i in chosen])


def slow_geometric_median(rows: Rows, weights: list[float] | None) -> list[float]:
    ws = _ws(rows, weights)
    alpha = [w / sum(ws) for w in ws]
    z = slow_mean(rows, alpha)
    for _ in range(100):
        beta = [a / max(0.1, _norm(_sub(z, x))) for a, x in zip(alpha, rows, strict=True)]
        z_next = slow_mean(rows, beta)
        step = _norm(_sub(z_next, z))
        z = z_next
        if step <= 1e-6 * max(1.0, _norm(z)):
            break
    return z


def slow_bulyan(rows: Rows, weights: list[float] | None) -> list[float]:
    n = len(rows)
    f = _f(n)
    ws = _ws(rows, weights)
    remaining = list(range(n))
    chosen = []
    for _ in range(n - 2 * f):
        m = len(remaining)
        if m == 1:
            best = remaining[0]
        else:
            k = min(max(m - f - 2, 1), m - 1)
            subset = [rows[i] for i in remaining]
            best = remaining[_lowest(_krum_scores(subset, k), subset, 1)[0]]
        chosen.append(best)
        remaining.remove(best)
    chosen.sort()
    beta = len(chosen) - 2 * f
    out = []
    for j in range(len(rows[0])):
        median = _median([rows[i][j] for i in chosen])
        closest = sorted(chosen, key=lambda i: (abs(rows[i][j] - median), i))[:beta]
        total = sum(ws[i] for i in closest)
        out.append(sum(ws[i] * rows[i][j] for i in closest) / total)
    return out


def _clip(v: list[float], radius: float) -> list[float]:
    norm = _norm(v)
    c = 1.0 if norm <= radius else radius / norm
    return [c * x for x in v]


def slow_norm_clipping(rows: Rows, weights: list[float] | None) -> list[float]:
    radius = _median([_norm(r) for r in rows])
    return slow_mean([_clip(r, radius) for r in rows], weights)


def slow_centered_clipping(rows: Rows, weights: list[float] | None) -> list[float]:
    v = [0.0] * len(rows[0])
    for _ in range(3):
        tau = _median([_norm(_sub(x, v)) for x in rows])
        step = slow_mean([_clip(_sub(x, v), tau) for x in rows], weights)
        v = [a + b for a, b in zip(v, step, strict=True)]
    return v


def slow_clipping_vr(rows: Rows, weights: list[float] | None) -> list[float]:
    return slow_norm_clipping(rows, weights)  # first round: reference 0, τ = median distance


def slow_bucketing(rows: Rows, weights: list[float] | None, seed: int = 0) -> list[float]:
    n = len(rows)
    permutation = [int(i) for i in np.random.default_rng(seed).permutation(n)]
    ws = _ws(rows, weights)
    means, bucket_weights = [], []
    for start in range(0, n, 2):
        members = permutation[start : start + 2]
        means.append(slow_mean([rows[i] for i in members], [ws[i] for i in members]))
        bucket_weights.append(sum(ws[i] for i in members) / len(members))
    return slow_coordinate_median(means, None if weights is None else bucket_weights)


def slow_nnm(rows: Rows, weights: list[float] | None) -> list[float]:
    n = len(rows)
    ws = _ws(rows, weights)
    mixed = []
    for i, x in enumerate(rows):
        others = sorted((k for k in range(n) if k != i), key=lambda k: _norm(_sub(x, rows[k])))
        neighbourhood = [i, *others[: n - _f(n) - 1]]
        mixed.append(slow_mean([rows[k] for k in neighbourhood], [ws[k] for k in neighbourhood]))
    return slow_coordinate_median(mixed, weights)


def slow_arc(rows: Rows, weights: list[float] | None) -> list[float]:
    n = len(rows)
    f = _f(n)
    k = math.floor(2 * (f / n) * (n - f) + 1e-9)
    norms = sorted((_norm(r) for r in rows), reverse=True)
    clipped = rows if k == 0 else [_clip(r, norms[k]) for r in rows]
    return slow_coordinate_median(clipped, weights)


SLOW: dict[str, Slow] = {
    "mean": slow_mean,
    "coordinate-median": slow_coordinate_median,
    "trimmed-mean": slow_trimmed_mean,
    "krum": slow_krum,
    "multi-krum": slow_multi_krum,
    "geometric-median": slow_geometric_median,
    "bulyan": slow_bulyan,
    "norm-clipping": slow_norm_clipping,
    "centered-clipping": slow_centered_clipping,
    "clipping-vr": slow_clipping_vr,
    "bucketing": slow_bucketing,
    "nnm": slow_nnm,
    "arc": slow_arc,
}


def _rule(name: str) -> Any:
    return build(name, seed=0) if name == "bucketing" else build(name)


def test_every_rule_has_a_slow_definition() -> None:
    assert set(SLOW) == set(AGGREGATORS)


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.sampled_from([3, 7, 11, 15]),
    d=st.integers(1, 6),
    weighted=st.booleans(),
)
def test_agrees_with_the_slow_definition(
    name: str, seed: int, n: int, d: int, weighted: bool
) -> None:
    rng = np.random.default_rng(seed)
    updates = rng.normal(size=(n, d)).astype(np.float32)
    weights = rng.uniform(0.1, 2.0, size=n) if weighted else None
    fast = _rule(name)(updates, weights).aggregate
    rows = updates.astype(np.float64).tolist()
    slow = SLOW[name](rows, None if weights is None else weights.tolist())
    assert_allclose(fast, slow, rtol=1e-4, atol=1e-4)


# -- robustness table -------------------------------------------------------------------

BOUNDS: dict[str, str | None] = {
    "mean": None,
    "coordinate-median": "range",
    "trimmed-mean": "range",
    "krum": "range",
    "multi-krum": "range",
    "bulyan": "range",
    "bucketing": "range",
    "nnm": "range",
    "arc": "range",
    "geometric-median": "gm",
    "norm-clipping": "clip-share",
    "clipping-vr": "clip-share",
    "centered-clipping": "cc",
}


def test_every_rule_states_its_bound() -> None:
    assert set(BOUNDS) == set(AGGREGATORS)


def _attacked(seed: int, n: int, d: int, colluding: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    f = _f(n)
    honest = rng.normal(size=(n - f, d))
    directions = rng.normal(size=(1 if colluding else f, d))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    outliers = np.broadcast_to(1e6 * directions, (f, d))
    updates = np.concatenate([honest, outliers]).astype(np.float32)
    order = rng.permutation(n)  # attackers are not conveniently last
    return updates[order], honest.astype(np.float32)


@pytest.mark.parametrize("name", sorted(n for n, b in BOUNDS.items() if b is not None))
@pytest.mark.parametrize("colluding", [False, True])
@pytest.mark.parametrize(("n", "seed"), [(7, 1), (11, 2), (15, 3), (19, 4)])
def test_outliers_of_norm_1e6_stay_within_the_stated_bound(
    name: str, colluding: bool, n: int, seed: int
) -> None:
    d = 6
    updates, honest = _attacked(seed, n, d, colluding)
    f = _f(n)
    out = _rule(name)(updates).aggregate.astype(np.float64)
    bound = BOUNDS[name]
    if bound == "range":
        slack = 1e-5 * (1 + np.abs(honest).max())
        assert (out >= honest.min(axis=0) - slack).all()
        assert (out <= honest.max(axis=0) + slack).all()
    elif bound == "gm":
        centre = honest.mean(axis=0, dtype=np.float64)
        spread = np.linalg.norm(honest - centre, axis=1).max()
        limit = 2 * (n - f) / (n - 2 * f) * spread
        assert np.linalg.norm(out - centre) <= 1.01 * limit + 0.1  # + nu, the smoothing
    elif bound == "clip-share":
        norms = np.linalg.norm(updates.astype(np.float64), axis=1)
        radius = float(np.median(norms))
        h_norms = np.linalg.norm(honest.astype(np.float64), axis=1)
        clipped = honest * np.minimum(1.0, radius / h_norms)[:, None]
        honest_part = clipped.sum(axis=0) / n
        assert np.linalg.norm(out - honest_part) <= f * radius / n * (1 + 1e-5) + 1e-6
    else:  # "cc"
        limit = (2**3 - 1) * np.linalg.norm(honest.astype(np.float64), axis=1).max()
        assert np.linalg.norm(out) <= limit * (1 + 1e-5)


def test_the_mean_has_no_bound() -> None:
    updates, honest = _attacked(0, 11, 4, colluding=True)
    out = build("mean")(updates).aggregate
    assert np.abs(out).max() > 100 * np.abs(honest).max()


# -- streaming == batch -----------------------------------------------------------------


def _stream(rule: Any, updates: np.ndarray, weights: np.ndarray | None, ids: Any = None) -> Any:
    streaming = cast(StreamingAggregator, rule)
    for k, row in enumerate(updates):
        weight = 1.0 if weights is None else float(weights[k])
        streaming.accumulate(row, weight, device_id=None if ids is None else ids[k])
    return streaming.finish()


def test_streaming_rules_are_the_three_named_in_the_issue() -> None:
    assert {"mean", "norm-clipping", "clipping-vr"} == STREAMING


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("mean", {}),
        ("norm-clipping", {"clip_norm": 2.0}),
        ("clipping-vr", {"clip_threshold": 1.5}),
        ("clipping-vr", {"clip_threshold": 1.5, "reference": "per-device"}),
    ],
)
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 12), weighted=st.booleans())
def test_streaming_equals_batch_with_a_known_radius(
    name: str, params: dict[str, Any], seed: int, n: int, weighted: bool
) -> None:
    rng = np.random.default_rng(seed)
    batch, streamed = build(name, **params), build(name, **params)
    fleet = [f"dev-{i}" for i in range(15)]
    for _ in range(3):  # stateful rules: the states must stay in step too
        updates = rng.normal(size=(n, 5)).astype(np.float32) * 3
        weights = rng.uniform(0.1, 2.0, size=n) if weighted else None
        ids = list(rng.choice(fleet, size=n, replace=False))
        if batch.needs_device_ids:
            expected = cast(DeviceAwareAggregator, batch)(updates, weights, device_ids=ids)
        else:
            expected = batch(updates, weights)
        actual = _stream(streamed, updates, weights, ids)
        assert_allclose(actual.aggregate, expected.aggregate, rtol=1e-5, atol=1e-5)
        for a, b in [
            (actual.diagnostics.scores, expected.diagnostics.scores),
            (actual.diagnostics.clip_factors, expected.diagnostics.clip_factors),
        ]:
            assert (a is None) == (b is None)
            if a is not None:
                assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_streaming_equals_batch_for_the_model_step_radius_after_the_first_round() -> None:
    rng = np.random.default_rng(5)
    batch = ClippingVR(radius="model-step", clip_multiplier=0.5)
    streamed = ClippingVR(radius="model-step", clip_multiplier=0.5)
    first = rng.normal(size=(6, 4)).astype(np.float32)
    batch(first)
    streamed(first)  # no previous step yet: the median radius, batch only
    for _ in range(3):
        updates = rng.normal(size=(6, 4)).astype(np.float32)
        expected = batch(updates).aggregate
        assert_allclose(_stream(streamed, updates, None).aggregate, expected, rtol=1e-5, atol=1e-6)
        assert streamed.last_clip_threshold == pytest.approx(batch.last_clip_threshold)


def test_streaming_with_the_median_radius_uses_the_previous_rounds_radius() -> None:
    rng = np.random.default_rng(6)
    rule = ClippingVR(clip_multiplier=1.5)
    rule(rng.normal(size=(7, 4)).astype(np.float32))
    previous = 1.5 * float(np.median(cast(Any, rule(rng.normal(size=(7, 4)))).diagnostics.scores))
    reference = rule.reference
    assert reference is not None
    updates = rng.normal(size=(7, 4)).astype(np.float32)
    expected, *_ = clipped_difference_mean(updates, reference, previous)
    assert_allclose(_stream(rule, updates, None).aggregate, expected, rtol=1e-5, atol=1e-6)
    assert rule.last_clip_threshold == pytest.approx(previous)


def test_streaming_is_unavailable_without_a_known_radius() -> None:
    with pytest.raises(StreamingUnavailableError):
        cast(StreamingAggregator, build("norm-clipping")).start(3)
    with pytest.raises(StreamingUnavailableError):
        cast(StreamingAggregator, build("clipping-vr")).start(3)


# -- registry and configuration schema --------------------------------------------------


def _config(**values: Any) -> CoordinatorConfig:
    base = {
        "fleet": "f1",
        "signing_key": Path("k.pem"),
        "devices_dir": Path("devices"),
        "state_dir": Path("state"),
    }
    return CoordinatorConfig.model_validate({**base, **values})


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_every_registry_name_is_a_valid_byzantine_defense(name: str) -> None:
    config = _config(byzantine_defense=name)
    rule = build(name, **rule_parameters(config, name))
    assert type(rule) is AGGREGATORS[name]


@pytest.mark.parametrize("name", ["avg", "Krum", "clipping_vr", ""])
def test_unregistered_defense_names_are_rejected_by_the_config(name: str) -> None:
    with pytest.raises(ValidationError, match="byzantine_defense"):
        _config(byzantine_defense=name)


@pytest.mark.parametrize("name", sorted(STATELESS))
def test_every_stateless_rule_is_a_valid_fallback(name: str) -> None:
    assert _config(fallback_defense=name).fallback_defense == name


@pytest.mark.parametrize("name", [*sorted(set(AGGREGATORS) - STATELESS), "avg"])
def test_stateful_or_unknown_fallbacks_are_rejected(name: str) -> None:
    with pytest.raises(ValidationError, match="fallback_defense"):
        _config(fallback_defense=name)


def _documented_fields() -> dict[str, str | None]:
    fields = {k: v.description for k, v in CoordinatorConfig.model_fields.items()}
    fields.update({k: v.description for k, v in AggregationConfig.model_fields.items()})
    return fields


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_every_constructor_parameter_is_a_documented_config_field(name: str) -> None:
    documented = _documented_fields()
    for parameter in parameters(name):
        assert parameter in documented, f"{name}.{parameter} has no config field"
        description = documented[parameter]
        assert description, f"config field {parameter} has no description"


@pytest.mark.parametrize(
    ("name", "table", "attribute", "value"),
    [
        ("trimmed-mean", {"trim_fraction": 0.3}, "trim_fraction", 0.3),
        ("multi-krum", {"krum_k": 4}, "krum_k", 4),
        ("geometric-median", {"nu": 0.5}, "nu", 0.5),
        ("geometric-median", {"max_iter": 7}, "max_iter", 7),
        ("centered-clipping", {"iterations": 1}, "iterations", 1),
        ("clipping-vr", {"radius": "model-step"}, "radius_mode", "model-step"),
        ("clipping-vr", {"reference": "per-device"}, "reference_mode", "per-device"),
        ("bucketing", {"bucket_size": 3}, "bucket_size", 3),
        ("norm-clipping", {"clip_norm": 2.5}, "clip_norm", 2.5),
    ],
)
def test_config_fields_reach_the_rule(
    name: str, table: dict[str, Any], attribute: str, value: object
) -> None:
    config = _config(byzantine_defense=name, aggregation_config=table)
    rule = build(name, **rule_parameters(config, name))
    assert getattr(rule, attribute) == value


def test_pre_aggregators_take_their_inner_rule_and_its_fields_from_the_config() -> None:
    config = _config(
        byzantine_defense="nnm",
        max_byzantine_fraction=0.1,
        aggregation_config={"inner": "trimmed-mean", "trim_fraction": 0.3},
    )
    params = rule_parameters(config, "nnm")
    assert params == {
        "inner": "trimmed-mean",
        "inner_params": {"trim_fraction": 0.3},
        "max_byzantine_fraction": 0.1,
    }
    override = _config(
        byzantine_defense="arc",
        aggregation_config={"inner": "multi-krum", "krum_k": 2, "inner_params": {"krum_k": 3}},
    )
    assert rule_parameters(override, "arc")["inner_params"] == {"krum_k": 3}
    for name in PRE_AGGREGATORS:
        rule_parameters(_config(byzantine_defense=name), name)


def test_bad_inner_rule_or_inner_params_fail_at_config_load() -> None:
    with pytest.raises(ValidationError, match="inner"):
        _config(byzantine_defense="bucketing", aggregation_config={"inner": "clipping-vr"})
    with pytest.raises(ValidationError, match="no parameter"):
        _config(byzantine_defense="nnm", aggregation_config={"inner_params": {"bogus": 1}})
