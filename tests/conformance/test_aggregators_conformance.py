"""Every entry of the aggregator registry, through the same behavioural properties.

Inputs stay in each rule's working regime: n in {3, 7, 11, 15, 19} meets every breakdown
condition at the default ``max_byzantine_fraction`` (0.2), and coordinates of magnitude at
most a few units stay inside the default clip radii.

Randomised rules (``bucketing``: a fresh permutation per call) are built with a fixed seed;
their order invariance is checked "up to the stated randomness": the output must depend on
the buckets' contents only, not on the rows' order.
"""

from __future__ import annotations

import inspect
import re
from typing import cast

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal

from byzedge.coordinator.aggregation import (
    AGGREGATORS,
    STATELESS,
    STREAMING,
    build,
    is_stateful,
    load_rule_state,
    parameters,
    rule_state,
    supports_streaming,
)
from byzedge.coordinator.aggregation.base import (
    AggregationResult,
    Aggregator,
    DeviceAwareAggregator,
    StatefulAggregator,
    num_byzantine,
)
from byzedge.coordinator.aggregation.bucketing import Bucketing, bucket_means

NAMES = sorted(AGGREGATORS)
SIZES = st.sampled_from([3, 7, 11, 15, 19])
PROPERTY = settings(max_examples=25, deadline=None)
RANDOMIZED = frozenset({"bucketing"})


def _build(name: str) -> Aggregator:
    """The rule with its defaults; randomised ones with a fixed seed."""
    return build(name, seed=0) if name in RANDOMIZED else build(name)


def _updates(seed: int, n: int, d: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype(np.float32)


def _close(actual: np.ndarray, expected: np.ndarray) -> None:
    assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_registry_key_is_the_class_name_in_kebab_case(name: str) -> None:
    assert AGGREGATORS[name].name == name
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", name)


@pytest.mark.parametrize("name", NAMES)
def test_every_hyperparameter_has_a_default(name: str) -> None:
    signature = inspect.signature(AGGREGATORS[name])
    for parameter in parameters(name):
        assert signature.parameters[parameter].default is not inspect.Parameter.empty


@pytest.mark.parametrize("name", NAMES)
def test_stateless_flag_matches_the_state_methods(name: str) -> None:
    rule = _build(name)
    has_state = hasattr(rule, "state_dict") and hasattr(rule, "load_state_dict")
    assert is_stateful(name) == has_state
    assert (name in STATELESS) != has_state


@pytest.mark.parametrize("name", NAMES)
def test_every_rule_declares_what_the_round_engine_needs(name: str) -> None:
    """stateful, streaming and needs_device_ids are class-level booleans on every rule."""
    cls = AGGREGATORS[name]
    for flag in ("stateful", "streaming", "needs_device_ids"):
        assert isinstance(cls.__dict__.get(flag), bool), f"{name} does not declare {flag}"


@pytest.mark.parametrize("name", NAMES)
def test_rule_state_is_the_state_dict_exactly_for_stateful_rules(name: str) -> None:
    """rule_state gives what the daemon persists: the state_dict, or None when stateless."""
    rule = _build(name)
    rule(_updates(0, 7, 3))
    state = rule_state(rule)
    assert (state is not None) == rule.stateful
    if state is not None:
        fresh = _build(name)
        load_rule_state(fresh, msgpack.unpackb(msgpack.packb(state)))
        assert rule_state(fresh) == state


@pytest.mark.parametrize("name", NAMES)
def test_streaming_flag_matches_the_streaming_methods(name: str) -> None:
    """A rule declares streaming exactly when it has start/accumulate/finish."""
    rule = _build(name)
    methods = all(callable(getattr(rule, m, None)) for m in ("start", "accumulate", "finish"))
    assert rule.streaming == methods
    assert (name in STREAMING) == methods
    assert supports_streaming(name) == methods


@pytest.mark.parametrize("name", NAMES)
def test_device_ids_flag_matches_the_call_signature(name: str) -> None:
    """needs_device_ids exactly when the batch call takes an optional device_ids keyword."""
    rule = _build(name)
    parameter = inspect.signature(rule).parameters.get("device_ids")
    assert rule.needs_device_ids == (parameter is not None)
    if parameter is not None:
        assert parameter.kind is inspect.Parameter.KEYWORD_ONLY
        assert parameter.default is None


@pytest.mark.parametrize("name", [n for n in NAMES if AGGREGATORS[n].needs_device_ids])
def test_a_device_aware_rule_takes_ids_or_none(name: str) -> None:
    """With the default settings, naming the rows' devices gives the anonymous result."""
    updates = _updates(3, 7, 4)
    ids = [f"dev-{i}" for i in range(7)]
    named = cast(DeviceAwareAggregator, _build(name))(updates, device_ids=ids)
    anonymous = cast(DeviceAwareAggregator, _build(name))(updates, device_ids=None)
    _close(named.aggregate, anonymous.aggregate)


@pytest.mark.parametrize("name", NAMES)
@PROPERTY
@given(seed=st.integers(0, 2**32 - 1), n=SIZES, d=st.integers(1, 8))
def test_output_is_a_finite_float32_vector_of_the_update_size(
    name: str, seed: int, n: int, d: int
) -> None:
    result = _build(name)(_updates(seed, n, d))
    assert isinstance(result, AggregationResult)
    assert result.aggregate.shape == (d,)
    assert result.aggregate.dtype == np.float32
    assert np.isfinite(result.aggregate).all()


@pytest.mark.parametrize("name", NAMES)
@PROPERTY
@given(seed=st.integers(0, 2**32 - 1), n=SIZES, d=st.integers(1, 8), weighted=st.booleans())
def test_identical_updates_give_that_update(
    name: str, seed: int, n: int, d: int, weighted: bool
) -> None:
    update = _updates(seed, 1, d)[0]
    weights = np.random.default_rng(seed).uniform(0.1, 2.0, size=n) if weighted else None
    _close(_build(name)(np.tile(update, (n, 1)), weights).aggregate, update)


@pytest.mark.parametrize("name", NAMES)
@PROPERTY
@given(seed=st.integers(0, 2**32 - 1), n=SIZES, d=st.integers(1, 8))
def test_unit_weights_equal_no_weights(name: str, seed: int, n: int, d: int) -> None:
    updates = _updates(seed, n, d)
    _close(_build(name)(updates, np.ones(n)).aggregate, _build(name)(updates).aggregate)


@pytest.mark.parametrize("name", NAMES)
@PROPERTY
@given(seed=st.integers(0, 2**32 - 1), n=SIZES, d=st.integers(1, 8), scale=st.floats(0.01, 100))
def test_only_weight_ratios_matter(name: str, seed: int, n: int, d: int, scale: float) -> None:
    updates = _updates(seed, n, d)
    weights = np.random.default_rng(seed + 1).uniform(0.1, 2.0, size=n)
    _close(
        _build(name)(updates, weights).aggregate, _build(name)(updates, scale * weights).aggregate
    )


@pytest.mark.parametrize("name", NAMES)
@PROPERTY
@given(seed=st.integers(0, 2**32 - 1), n=SIZES, d=st.integers(1, 8), weighted=st.booleans())
def test_order_of_the_updates_does_not_matter(
    name: str, seed: int, n: int, d: int, weighted: bool
) -> None:
    rng = np.random.default_rng(seed)
    updates = _updates(seed, n, d)
    weights = rng.uniform(0.1, 2.0, size=n) if weighted else None
    order = rng.permutation(n)
    permuted_weights = None if weights is None else weights[order]
    if name in RANDOMIZED:
        rule = cast(Bucketing, _build(name))
        actual = rule(updates[order], permuted_weights).aggregate
        assert rule.last_buckets is not None
        # The same buckets, by content, in the original row numbering:
        buckets = tuple(order[list(bucket)] for bucket in rule.last_buckets)
        means, bucket_weights = bucket_means(updates, weights, buckets)
        m = len(buckets)
        inner = rule.inner.rule(min(num_byzantine(n, rule.max_byzantine_fraction), m) / m)
        _close(actual, inner(means, bucket_weights).aggregate)
        return
    expected = _build(name)(updates, weights).aggregate
    _close(_build(name)(updates[order], permuted_weights).aggregate, expected)


@pytest.mark.parametrize("name", sorted(STATELESS - RANDOMIZED))
def test_stateless_rules_give_the_same_answer_twice(name: str) -> None:
    rule = _build(name)
    first, second = _updates(0, 7, 5), _updates(1, 7, 5)
    expected = rule(first).aggregate
    rule(second)
    assert_array_equal(rule(first).aggregate, expected)


@pytest.mark.parametrize("name", sorted(RANDOMIZED))
def test_randomised_rules_replay_with_the_same_seed(name: str) -> None:
    rounds = [_updates(seed, 7, 5) for seed in range(4)]
    first, second = build(name, seed=11), build(name, seed=11)
    for updates in rounds:
        assert_array_equal(first(updates).aggregate, second(updates).aggregate)


@pytest.mark.parametrize("name", sorted(RANDOMIZED))
def test_randomised_rules_draw_fresh_randomness_each_call(name: str) -> None:
    rule = build(name, seed=3)
    updates = _updates(9, 15, 5)
    outputs = {rule(updates).aggregate.tobytes() for _ in range(10)}
    assert len(outputs) > 1


@pytest.mark.parametrize("name", NAMES)
def test_inputs_are_not_modified(name: str) -> None:
    updates = _updates(3, 11, 6)
    weights = np.linspace(0.5, 1.5, 11)
    before = (updates.copy(), weights.copy())
    _build(name)(updates, weights)
    assert_array_equal(updates, before[0])
    assert_array_equal(weights, before[1])


@pytest.mark.parametrize("name", NAMES)
def test_diagnostics_have_one_entry_per_update(name: str) -> None:
    diagnostics = _build(name)(_updates(4, 11, 6)).diagnostics
    for array in (diagnostics.scores, diagnostics.clip_factors):
        assert array is None or array.shape == (11,)
    if diagnostics.clip_factors is not None:
        assert ((diagnostics.clip_factors >= 0) & (diagnostics.clip_factors <= 1)).all()
    if diagnostics.selected is not None:
        assert all(0 <= i < 11 for i in diagnostics.selected)


@pytest.mark.parametrize("name", NAMES)
def test_non_finite_updates_are_rejected(name: str) -> None:
    updates = _updates(5, 7, 4)
    updates[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        _build(name)(updates)


@pytest.mark.parametrize("name", NAMES)
def test_updates_that_are_not_a_matrix_are_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="shape"):
        _build(name)(np.zeros(5, dtype=np.float32))


@pytest.mark.parametrize("name", NAMES)
def test_weights_of_the_wrong_shape_are_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="weights"):
        _build(name)(_updates(6, 7, 4), np.ones(6))


@pytest.mark.parametrize("name", NAMES)
def test_unknown_parameters_are_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="no parameter"):
        build(name, not_a_parameter=1)


@pytest.mark.parametrize("name", sorted(set(NAMES) - STATELESS))
def test_state_round_trips_through_msgpack_and_continues_identically(name: str) -> None:
    rounds = [_updates(seed, 11, 6) * (seed + 1) for seed in range(5)]
    original = cast(StatefulAggregator, _build(name))
    msgpack.packb(original.state_dict())
    for updates in rounds[:3]:
        original(updates)
    restored = cast(StatefulAggregator, _build(name))
    restored.load_state_dict(msgpack.unpackb(msgpack.packb(original.state_dict())))
    for updates in rounds[3:]:
        assert_array_equal(restored(updates).aggregate, original(updates).aggregate)
