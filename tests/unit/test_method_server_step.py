"""The round engine's method step refuses messages in a codec the signed plan did not ask for."""

from __future__ import annotations

import numpy as np

from byzedge.coordinator.aggregation import build
from byzedge.coordinator.ingest import Accepted
from byzedge.coordinator.reputation import ReputationBook
from byzedge.coordinator.round_engine import RoundSettings, method_server_step
from byzedge.coordinator.training_method import MethodConfig, with_compression
from byzedge.methods import build_method
from byzedge.methods.base import ServerState
from byzedge.protocol.envelope import Header

DIM = 6


def _accepted(device: str, codec: str, kind: str, vector: np.ndarray) -> Accepted:
    header = Header(
        kind="update",
        fleet="f",
        sender=device,
        round=1,
        base_version=0,
        codec=codec,
        dim=DIM,
        counter=1,
        meta={"method": {"kind": kind, "base_round": None}},
    )
    return Accepted(device, header, vector.astype(np.float32), wire_bytes=1, body_bytes=1)


def test_a_message_in_another_codec_is_dropped_and_costs_reputation() -> None:
    method = build_method("byz-vr-marina", step_size=1.0)
    state = ServerState()
    params = np.zeros(DIM, dtype=np.float32)
    table = MethodConfig(compression="rand-k", sparsity=0.5)
    plan = with_compression(method.plan(1, params, state), table)  # round 1: full gradients
    gradient = np.arange(DIM, dtype=np.float32)
    accepted = {
        "dev-a": _accepted("dev-a", "dense", "full", gradient),  # full rounds may be dense
        "dev-b": _accepted("dev-b", "rand-k", "full", gradient),  # ... or the plan's codec
        "dev-c": _accepted("dev-c", "top-k", "full", 100 * gradient),  # never another one
    }
    reputation = ReputationBook(0.5)

    step, dropped = method_server_step(
        method,
        plan,
        params,
        accepted,
        state,
        settings=RoundSettings(anomaly_detection=False, device_reputation=False),
        reputation=reputation,
        aggregator=build("mean"),
    )

    assert list(step.device_ids) == ["dev-a", "dev-b"]
    assert dropped == {"dev-c": "codec 'top-k'; the plan asks for 'rand-k'"}
    np.testing.assert_allclose(step.params, -gradient)  # x - gamma * mean(dev-a, dev-b)
    snapshot = reputation.snapshot()
    assert snapshot["dev-c"] < snapshot["dev-a"]
    assert "dev-c" in state.resync
