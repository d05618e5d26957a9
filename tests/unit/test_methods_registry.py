"""The method registry, option validation, plans and state round trips."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from byzedge.methods import FEDAVG, METHODS, build_method, is_method
from byzedge.methods.base import DeviceState, RoundPlan, ServerState
from byzedge.methods.testing import LogisticOracle, TopK, run_rounds
from byzedge.models.datasets import load_digits_split

EXPECTED = {
    "byz-vr-marina": "unbiased",
    "byz-vr-marina-pp": "unbiased",
    "byz-ef21": "contractive",
    "byz-ef21-bc": "contractive",
    "byz-dasha-page": "unbiased",
    "clip21-sgd2m": "any",
}


def test_the_registry_holds_the_permanent_names_with_their_compressor_class() -> None:
    assert {name: cls.compressor_class for name, cls in METHODS.items()} == EXPECTED
    assert all(cls.name == name for name, cls in METHODS.items())
    assert not is_method(FEDAVG)
    assert is_method("byz-ef21")


def test_an_unknown_method_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="known: byz-dasha-page, byz-ef21"):
        build_method("marina")


@pytest.mark.parametrize("name", sorted(METHODS))
def test_an_unknown_option_lists_the_options_the_method_takes(name: str) -> None:
    with pytest.raises(ValueError, match=r"does not take option\(s\) bogus; it takes: .*step_size"):
        build_method(name, bogus=1)


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("byz-vr-marina", {"step_size": 0}),
        ("byz-vr-marina", {"full_gradient_probability": 1.5}),
        ("byz-vr-marina", {"reference_update_frequency": 0}),
        ("byz-vr-marina", {"batch_size": 2.5}),
        ("byz-vr-marina", {"seed": -1}),
        ("byz-vr-marina-pp", {"clip_multiplier": -1.0}),
        ("byz-ef21", {"full_batch": "yes"}),
        ("byz-ef21-bc", {"downlink_sparsity": 0.0}),
        ("byz-dasha-page", {"dasha_momentum": 0.0}),
        ("byz-dasha-page", {"compression_omega": -1.0}),
        ("clip21-sgd2m", {"momentum1": 1.0}),
        ("clip21-sgd2m", {"clip_norm": float("inf")}),
        ("clip21-sgd2m", {"dp_noise_multiplier": -0.1}),
    ],
)
def test_bad_values_are_refused_when_the_method_is_built(name: str, options: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValueError, match=next(iter(options))):
        build_method(name, **options)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_a_plan_survives_its_manifest_form(name: str) -> None:
    method = build_method(name)
    state = ServerState()
    state.resync.add("dev-9")
    plan = method.plan(3, np.zeros(5, np.float32), state)
    wire = msgpack.unpackb(msgpack.packb(plan.to_meta()))
    assert RoundPlan.from_meta(wire) == plan
    assert plan.algorithm == name
    assert plan.resync == frozenset({"dev-9"})


@pytest.mark.parametrize("name", sorted(METHODS))
def test_device_and_server_state_survive_their_plain_form_mid_run(name: str) -> None:
    split = load_digits_split()
    shards = {
        f"dev-{i}": LogisticOracle(split.train_x[i::4], split.train_y[i::4], 10, 0.01)
        for i in range(4)
    }
    dim = next(iter(shards.values())).dim
    options = {"secret_noise": False} if name == "clip21-sgd2m" else {}
    trace = run_rounds(
        build_method(name, **options),
        shards,
        np.zeros(dim, np.float32),
        4,
        aggregate=lambda m: np.median(m, axis=0).astype(np.float32),
        compress=TopK(0.2),
    )
    for state in trace.devices.values():
        raw = msgpack.unpackb(msgpack.packb(state.to_plain()))
        back = DeviceState.from_plain(raw, dim)
        assert back.base_round == state.base_round == 4
        assert back.vectors.keys() == state.vectors.keys()
        for key, vector in state.vectors.items():
            np.testing.assert_array_equal(back.vectors[key], vector)
    raw = msgpack.unpackb(msgpack.packb(trace.server.to_plain()))
    server = ServerState.from_plain(raw, dim)
    assert server.g is not None
    assert trace.server.g is not None
    np.testing.assert_array_equal(server.g, trace.server.g)
    assert server.mirror_rounds == trace.server.mirror_rounds
    for device, mirror in trace.server.mirrors.items():
        np.testing.assert_array_equal(server.mirrors[device], mirror)
    assert server.current_sha256 == trace.server.current_sha256
    assert server.previous_sha256 == trace.server.previous_sha256


def test_a_state_of_another_size_is_dropped_and_its_mirrors_listed_for_resync() -> None:
    server = ServerState(mirrors={"a": np.ones(3, np.float32)}, mirror_rounds={"a": 2})
    back = ServerState.from_plain(server.to_plain(), 4)
    assert back.mirrors == {}
    assert back.resync == {"a"}
    device = DeviceState(vectors={"g": np.ones(3, np.float32)}, base_round=2)
    assert DeviceState.from_plain(device.to_plain(), 4).vectors == {}
