"""round_engine.method_server_step: a method's rows, then the shared server step."""

from __future__ import annotations

import numpy as np
import pytest

from byzedge.coordinator.aggregation import build
from byzedge.coordinator.ingest import Accepted
from byzedge.coordinator.reputation import ReputationBook
from byzedge.coordinator.round_engine import RoundSettings, method_server_step
from byzedge.methods import ByzEF21, ByzVRMarina
from byzedge.methods.base import MethodMessage, ServerState
from byzedge.protocol.envelope import Header


def accepted(device: str, vector: list[float], meta: object) -> Accepted:
    header = Header(
        kind="update",
        fleet="f",
        sender=device,
        round=1,
        base_version=0,
        codec="dense",
        dim=len(vector),
        counter=1,
        meta={"method": meta},
    )
    return Accepted(device, header, np.asarray(vector, np.float32), 0, 0)


def step_kwargs() -> dict[str, object]:
    return {
        "settings": RoundSettings(anomaly_detection=False, device_reputation=False),
        "reputation": ReputationBook(),
        "aggregator": build("mean"),
    }


def test_the_mirrors_are_aggregated_and_the_method_steps_the_model() -> None:
    method = ByzEF21(step_size=0.5)
    state = ServerState()
    params = np.zeros(2, np.float32)
    plan = method.plan(1, params, state)
    updates = {
        "a": accepted("a", [2.0, 0.0], MethodMessage("reset").to_meta()),
        "b": accepted("b", [0.0, 4.0], MethodMessage("reset").to_meta()),
        "c": accepted("c", [9.0, 9.0], {"kind": "nonsense"}),
    }
    result, dropped = method_server_step(method, plan, params, updates, state, **step_kwargs())
    assert result.device_ids == ("a", "b")
    assert result.aggregate is not None
    np.testing.assert_array_equal(result.aggregate, [1.0, 2.0])
    np.testing.assert_array_equal(result.params, [-0.5, -1.0])  # x - step * mean(mirrors)
    assert state.g is not None
    np.testing.assert_array_equal(state.g, [1.0, 2.0])
    assert set(dropped) == {"c"}
    assert "c" in state.resync


def test_a_round_without_rows_leaves_model_and_state_alone() -> None:
    method = ByzVRMarina(step_size=0.5, reference_update_frequency=10)
    state = ServerState(g=np.ones(2, np.float32))
    params = np.ones(2, np.float32)
    plan = method.plan(3, params, state)
    updates = {"a": accepted("a", [1.0, 1.0], MethodMessage("full").to_meta())}
    result, dropped = method_server_step(method, plan, params, updates, state, **step_kwargs())
    assert result.skipped
    np.testing.assert_array_equal(result.params, params)
    np.testing.assert_array_equal(state.g, [1.0, 1.0])
    assert set(dropped) == {"a"}


def test_the_model_step_comes_from_the_method_only() -> None:
    method = ByzEF21()
    state = ServerState()
    plan = method.plan(1, np.zeros(2, np.float32), state)
    with pytest.raises(TypeError, match="from the method"):
        method_server_step(
            method, plan, np.zeros(2, np.float32), {}, state, apply=lambda p, a: p, **step_kwargs()
        )
