"""Exact merge of streamed partial sums (sharded ingest): shares merged = one stream.

Each streaming rule's ``partial``/``merge`` must give what one instance streaming every
update returns, for any split of the updates over instances that start from the same
state. Only the order of the float64 additions differs, so results agree to float
rounding (``rtol = 1e-6`` on the float32 aggregate; the scalars exactly).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose

from byzedge.coordinator.aggregation import build, load_rule_state, rule_state
from byzedge.coordinator.aggregation.base import (
    StreamingAggregator,
    StreamingUnavailableError,
    StreamPartial,
)
from byzedge.coordinator.aggregation.clipping_vr import ClippingVR

RULES: dict[str, dict[str, Any]] = {
    "mean": {},
    "norm-clipping": {"clip_norm": 1.5},
    "clipping-vr": {"clip_threshold": 0.8},
}


def streaming(name: str, state: dict[str, Any] | None = None) -> StreamingAggregator:
    rule = cast(StreamingAggregator, build(name, **RULES[name]))
    if state is not None:
        load_rule_state(rule, state)
    return rule


def one_stream(
    name: str, rows: np.ndarray, weights: Sequence[float], state: dict[str, Any] | None
) -> tuple[np.ndarray, StreamingAggregator]:
    rule = streaming(name, state)
    rule.start(rows.shape[1])
    for index, (row, weight) in enumerate(zip(rows, weights, strict=True)):
        rule.accumulate(row, weight, device_id=f"d{index}")
    return rule.finish().aggregate, rule


def merged(
    name: str,
    rows: np.ndarray,
    weights: Sequence[float],
    state: dict[str, Any] | None,
    shares: Sequence[Sequence[int]],
) -> tuple[np.ndarray, StreamingAggregator]:
    partials: list[StreamPartial] = []
    for share in shares:
        worker = streaming(name, state)
        worker.start(rows.shape[1])
        for index in share:
            worker.accumulate(rows[index], weights[index], device_id=f"d{index}")
        partials.append(worker.partial())
    leader = streaming(name, state)
    leader.start(rows.shape[1])
    for partial in partials:
        leader.merge(partial)
    return leader.finish().aggregate, leader


def a_state(name: str, dim: int, rng: np.random.Generator) -> dict[str, Any] | None:
    """clipping-vr after one round (a reference and a lagged radius); None otherwise."""
    if name != "clipping-vr":
        return None
    rule = ClippingVR(clip_threshold=0.8)
    rule(rng.standard_normal((4, dim)).astype(np.float32))
    return rule_state(rule)


@pytest.mark.parametrize("name", sorted(RULES))
def test_merged_shares_equal_one_stream(name: str) -> None:
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((9, 5)).astype(np.float32)
    weights = rng.uniform(0.2, 1.0, 9).tolist()
    state = a_state(name, 5, rng)

    single, one = one_stream(name, rows, weights, state)
    sharded, leader = merged(name, rows, weights, state, [[0, 3, 8], [1, 2], [4, 5, 6, 7]])

    assert_allclose(sharded, single, rtol=1e-6)
    if name == "clipping-vr":  # the state the next round starts from: reference and radius
        assert rule_state(leader)["radius"] == rule_state(one)["radius"]
        assert_allclose(cast(ClippingVR, leader).reference, cast(ClippingVR, one).reference)


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(sorted(RULES)),
    n=st.integers(1, 12),
    dim=st.integers(1, 6),
    workers=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_any_split_merges_to_the_single_stream(
    name: str, n: int, dim: int, workers: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    rows = (rng.standard_normal((n, dim)) * rng.uniform(0.1, 3.0)).astype(np.float32)
    weights = rng.uniform(0.1, 1.0, n).tolist()
    state = a_state(name, dim, rng)
    owner = rng.integers(0, workers, n)
    shares = [[i for i in range(n) if owner[i] == w] for w in range(workers)]

    single, _ = one_stream(name, rows, weights, state)
    sharded, _ = merged(name, rows, weights, state, shares)

    assert_allclose(sharded, single, rtol=1e-6, atol=1e-7)


def test_merge_refuses_another_radius() -> None:
    worker = streaming("norm-clipping")
    worker.start(2)
    worker.accumulate(np.ones(2, dtype=np.float32))
    partial = worker.partial()
    leader = cast(StreamingAggregator, build("norm-clipping", clip_norm=9.0))
    with pytest.raises(ValueError, match="radius"):
        leader.merge(partial)


def test_merge_refuses_another_rule() -> None:
    worker = streaming("mean")
    worker.accumulate(np.ones(2, dtype=np.float32))
    with pytest.raises(ValueError, match="mean"):
        streaming("norm-clipping").merge(worker.partial())


def test_clipping_vr_refuses_a_device_twice() -> None:
    first, second = streaming("clipping-vr"), streaming("clipping-vr")
    first.accumulate(np.ones(2, dtype=np.float32), device_id="a")
    second.accumulate(np.ones(2, dtype=np.float32), device_id="a")
    leader = streaming("clipping-vr")
    leader.merge(first.partial())
    with pytest.raises(ValueError, match="already contributed"):
        leader.merge(second.partial())


def test_per_device_references_do_not_make_partials() -> None:
    rule = ClippingVR(clip_threshold=1.0, reference="per-device")
    rule.accumulate(np.ones(2, dtype=np.float32), device_id="a")
    with pytest.raises(StreamingUnavailableError, match="per-device"):
        rule.partial()


def test_partial_leaves_the_round_open() -> None:
    rule = streaming("mean")
    rule.accumulate(np.array([2.0, 4.0], dtype=np.float32))
    rule.partial()
    rule.accumulate(np.array([4.0, 0.0], dtype=np.float32))
    assert_allclose(rule.finish().aggregate, [3.0, 2.0])


def test_clipping_vr_merges_with_the_lagged_median_radius() -> None:
    rng = np.random.default_rng(5)
    previous = ClippingVR()  # median radius: the first round runs in batch
    previous(rng.standard_normal((6, 4)).astype(np.float32))
    state = rule_state(previous)
    rows = rng.standard_normal((7, 4)).astype(np.float32)

    def fresh() -> ClippingVR:
        rule = ClippingVR()
        rule.load_state_dict(state)
        return rule

    one = fresh()
    for index, row in enumerate(rows):
        one.accumulate(row, 1.0, device_id=f"d{index}")
    single = one.finish().aggregate
    leader = fresh()
    for share in ([0, 1, 2], [3, 4, 5, 6]):
        worker = fresh()
        for index in share:
            worker.accumulate(rows[index], 1.0, device_id=f"d{index}")
        leader.merge(worker.partial())

    assert_allclose(leader.finish().aggregate, single, rtol=1e-6)
    assert leader.last_clip_threshold == one.last_clip_threshold == state["radius"]
