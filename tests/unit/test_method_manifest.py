"""The round plan travels signed in the model manifest, and only a well-formed one is used."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from byzedge.methods.base import MethodMessage, RoundPlan, model_digest
from byzedge.protocol.envelope import seal
from byzedge.protocol.errors import EnvelopeError, SignatureError
from byzedge.protocol.manifest import open_global_model, seal_global_model
from byzedge.protocol.signing import SigningKey

PARAMS = np.linspace(-1, 1, 10, dtype=np.float32)


def _seal(key: SigningKey, plan: object) -> bytes:
    return seal_global_model(
        key,
        fleet="f",
        sender="coordinator",
        round_number=3,
        version=2,
        model="mlp",
        params=PARAMS,
        counter=7,
        plan=plan,  # type: ignore[arg-type]
    ).to_bytes()


def test_the_plan_round_trips_through_the_signed_manifest() -> None:
    key = SigningKey.generate()
    plan = RoundPlan(
        algorithm="byz-vr-marina",
        round=3,
        full=False,
        step_size=0.5,
        previous_sha256=model_digest(PARAMS),
        resync=frozenset({"dev-001"}),
        options={"batch_size": 32, "compression": "rand-k", "sparsity": 0.01},
    )

    model = open_global_model(
        _seal(key, plan.to_meta()), key.verify_key, fleet="f", max_bytes=1 << 20
    )

    assert model.plan is not None
    assert RoundPlan.from_meta(model.plan) == plan
    assert model.sha256 == model_digest(PARAMS)  # what devices compare previous models by


def test_a_fedavg_manifest_has_no_plan() -> None:
    key = SigningKey.generate()
    model = open_global_model(_seal(key, None), key.verify_key, fleet="f", max_bytes=1 << 20)
    assert model.plan is None


def test_a_plan_that_is_not_a_map_is_refused() -> None:
    key = SigningKey.generate()
    good = seal_global_model(
        key, fleet="f", sender="c", round_number=1, version=0, model="mlp", params=PARAMS, counter=1
    )
    header = dataclasses.replace(good.header, meta={**good.header.meta, "plan": ["full"]})
    payload = seal(header, good.body, key).to_bytes()

    with pytest.raises(EnvelopeError, match="plan must be a map"):
        open_global_model(payload, key.verify_key, fleet="f", max_bytes=1 << 20)


def test_a_plan_signed_by_another_key_is_refused() -> None:
    plan = RoundPlan(algorithm="byz-ef21", round=1, full=True, step_size=1.0)
    payload = _seal(SigningKey.generate(), plan.to_meta())
    with pytest.raises(SignatureError):
        open_global_model(payload, SigningKey.generate().verify_key, fleet="f", max_bytes=1 << 20)


@pytest.mark.parametrize(
    "meta",
    [
        {"round": 1, "full": True, "step_size": 1.0},
        {"algorithm": "m", "round": "1", "full": True, "step_size": 1.0},
        {"algorithm": "m", "round": 1, "full": 1, "step_size": 1.0},
        {"algorithm": "m", "round": 1, "full": True, "step_size": float("nan")},
        {"algorithm": "m", "round": 1, "full": True, "step_size": 1.0, "resync": "dev"},
        {"algorithm": "m", "round": 1, "full": True, "step_size": 1.0, "options": {"a": [1]}},
    ],
)
def test_malformed_plans_raise_value_error(meta: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="round plan"):
        RoundPlan.from_meta(meta)


@pytest.mark.parametrize(
    "meta", [None, {"kind": "gradient"}, {"kind": "full", "base_round": "2"}, []]
)
def test_malformed_method_messages_raise_value_error(meta: object) -> None:
    with pytest.raises(ValueError, match="method message"):
        MethodMessage.from_meta(meta)
