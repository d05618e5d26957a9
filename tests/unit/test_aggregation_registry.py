from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from byzedge.coordinator.aggregation import (
    AGGREGATORS,
    PRE_AGGREGATORS,
    STATELESS,
    STREAMING,
    aggregate,
    build,
    is_stateful,
    parameters,
    supports_streaming,
)
from byzedge.coordinator.aggregation.base import (
    AggregationError,
    BreakdownError,
    num_byzantine,
    row_norms,
    validate_updates,
    validate_weights,
)
from byzedge.coordinator.aggregation.clipping_vr import ClippingVR
from byzedge.coordinator.aggregation.trimmed_mean import TrimmedMean


def test_registry_holds_the_permanent_names() -> None:
    assert set(AGGREGATORS) == {
        "mean",
        "coordinate-median",
        "trimmed-mean",
        "krum",
        "multi-krum",
        "geometric-median",
        "bulyan",
        "norm-clipping",
        "centered-clipping",
        "clipping-vr",
        "bucketing",
        "nnm",
        "arc",
    }


def test_registry_keys_match_class_names() -> None:
    for name, cls in AGGREGATORS.items():
        assert cls.name == name


def test_only_the_clipping_rules_with_a_reference_are_stateful() -> None:
    assert {name for name in AGGREGATORS if is_stateful(name)} == {
        "clipping-vr",
        "centered-clipping",
    }
    assert set(AGGREGATORS) - STATELESS == {"clipping-vr", "centered-clipping"}


def test_build_passes_hyperparameters_to_the_rule() -> None:
    rule = build("trimmed-mean", trim_fraction=0.3)
    assert isinstance(rule, TrimmedMean)
    assert rule.trim_fraction == 0.3


def test_build_accepts_none_for_an_automatic_clip_threshold() -> None:
    rule = build("clipping-vr", clip_threshold=None)
    assert isinstance(rule, ClippingVR)
    assert rule.clip_threshold is None


def test_build_rejects_an_unknown_name_and_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown aggregator 'avg'.*coordinate-median.*mean"):
        build("avg")


def test_build_rejects_an_unknown_parameter_and_lists_the_accepted_ones() -> None:
    with pytest.raises(ValueError, match=r"no parameter clip_norm.*trim_fraction"):
        build("trimmed-mean", clip_norm=1.0)


def test_build_rejects_a_bad_value_naming_parameter_and_value() -> None:
    with pytest.raises(ValueError, match=r"trim_fraction must be in \[0, 0.5\), got 0.5"):
        build("trimmed-mean", trim_fraction=0.5)


def test_parameters_lists_constructor_arguments() -> None:
    assert parameters("mean") == ()
    assert parameters("trimmed-mean") == ("trim_fraction",)
    assert parameters("clipping-vr") == (
        "clip_threshold",
        "clip_multiplier",
        "radius",
        "reference",
    )
    assert parameters("bucketing") == (
        "inner",
        "inner_params",
        "bucket_size",
        "max_byzantine_fraction",
        "seed",
    )
    assert parameters("nnm") == ("inner", "inner_params", "max_byzantine_fraction")
    assert parameters("arc") == ("inner", "inner_params", "max_byzantine_fraction")


def test_streaming_rules_are_mean_norm_clipping_and_clipping_vr() -> None:
    assert {name for name in AGGREGATORS if supports_streaming(name)} == {
        "mean",
        "norm-clipping",
        "clipping-vr",
    }
    assert {"mean", "norm-clipping", "clipping-vr"} == STREAMING


def test_supports_streaming_rejects_an_unknown_name() -> None:
    with pytest.raises(ValueError, match="unknown aggregator"):
        supports_streaming("avg")


def test_pre_aggregators_are_listed() -> None:
    assert {"bucketing", "nnm", "arc"} == PRE_AGGREGATORS


def test_aggregate_runs_a_stateless_rule_in_one_call() -> None:
    updates = np.array([[0.0, 1.0], [1.0, 2.0], [100.0, -100.0]], dtype=np.float32)
    result = aggregate("coordinate-median", updates)
    assert result.dtype == np.float32
    assert_array_equal(result, [1.0, 1.0])


def test_aggregate_passes_weights_and_parameters() -> None:
    updates = np.array([[0.0], [10.0]], dtype=np.float32)
    assert_allclose(aggregate("mean", updates, np.array([3.0, 1.0])), [2.5])
    assert_allclose(aggregate("trimmed-mean", updates, trim_fraction=0.0), [5.0])


def test_aggregate_refuses_a_stateful_rule() -> None:
    with pytest.raises(ValueError, match="stateful"):
        aggregate("clipping-vr", np.zeros((3, 2), dtype=np.float32))


def test_breakdown_error_is_an_aggregation_error() -> None:
    assert issubclass(BreakdownError, AggregationError)
    assert not issubclass(AggregationError, ValueError)


@pytest.mark.parametrize("shape", [(3,), (2, 3, 4), (0, 3), (3, 0)])
def test_updates_of_the_wrong_shape_are_rejected(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="updates must"):
        validate_updates(np.zeros(shape, dtype=np.float32))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e39])
def test_non_finite_updates_are_rejected(bad: float) -> None:
    updates = np.zeros((3, 2), dtype=np.float64)
    updates[1, 1] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        validate_updates(updates)


def test_non_real_updates_are_rejected() -> None:
    with pytest.raises(ValueError, match="real numbers"):
        validate_updates(np.zeros((2, 2), dtype=np.complex64))


def test_float64_updates_are_converted_to_float32() -> None:
    assert validate_updates(np.ones((2, 3))).dtype == np.float32


def test_float32_updates_are_not_copied() -> None:
    updates = np.ones((2, 3), dtype=np.float32)
    assert validate_updates(updates) is updates


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        (np.ones(2), r"shape \(3,\)"),
        (np.array([1.0, np.nan, 1.0]), "NaN or Inf"),
        (np.array([1.0, -0.5, 1.0]), "non-negative"),
        (np.zeros(3), "positive sum"),
    ],
)
def test_invalid_weights_are_rejected(weights: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_weights(weights, 3)


def test_row_norms_do_not_overflow_for_huge_float32_rows() -> None:
    updates = np.full((2, 4), 1e30, dtype=np.float32)
    assert_allclose(row_norms(updates), [2e30, 2e30], rtol=1e-6)


def test_num_byzantine_is_the_floor_of_fraction_times_n() -> None:
    assert num_byzantine(10, 0.2) == 2
    assert num_byzantine(9, 0.2) == 1
    assert num_byzantine(100, 0.29) == 29
    assert num_byzantine(5, 0.0) == 0
