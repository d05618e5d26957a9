from __future__ import annotations

import numpy as np
import pytest

from byzedge.edge_agent.seams import LocalData, RoundContext
from byzedge.faults import FaultConfigError, FaultInjector, FaultSpec, check_fault_name


class FixedSource:
    def read(self, round_number: int) -> LocalData:
        return LocalData(
            features=np.full((100, 64), 0.5, dtype=np.float32),
            labels=np.arange(100, dtype=np.int64) % 10,
        )


def context(round_number: int = 0) -> RoundContext:
    return RoundContext(
        device_id="dev-1",
        round=round_number,
        global_params=np.zeros(4, dtype=np.float32),
        rng=np.random.default_rng(0),
    )


def run_stages(injector: FaultInjector, update: np.ndarray, round_number: int = 0) -> np.ndarray:
    for stage in injector.update_stages():
        update = stage(update, context(round_number))
    return update


def test_empty_injector_returns_the_source_itself_and_no_stages() -> None:
    source = FixedSource()
    injector = FaultInjector()
    assert injector.wrap_source(source) is source
    assert injector.update_stages() == []
    assert not injector.is_compromised


def test_injector_composes_sensor_faults_and_data_attack() -> None:
    injector = FaultInjector(
        [
            FaultSpec(name="drift", params={"intensity": 0.1}),
            FaultSpec(name="label-flip"),
        ]
    )
    data = injector.wrap_source(FixedSource()).read(1)
    np.testing.assert_allclose(data.features, 0.7, rtol=1e-5)
    np.testing.assert_array_equal(data.labels, 9 - np.arange(100) % 10)


def test_injector_chains_update_stages_in_order() -> None:
    injector = FaultInjector(
        [{"name": "sign-flip", "params": {"factor": 2.0}}, {"name": "sign-flip"}]
    )
    out = run_stages(injector, np.ones(3, dtype=np.float32))
    np.testing.assert_array_equal(out, np.float32(8.0))


def test_injector_applies_sensor_faults_in_order_innermost_first() -> None:
    stuck_then_drift = FaultInjector(
        [
            FaultSpec(name="stuck-at", params={"value": 0.2}),
            FaultSpec(name="drift", params={"intensity": 0.1}),
        ]
    )
    np.testing.assert_allclose(
        stuck_then_drift.wrap_source(FixedSource()).read(0).features, 0.3, rtol=1e-5
    )


def test_update_attack_does_not_touch_the_source() -> None:
    source = FixedSource()
    injector = FaultInjector([FaultSpec(name="gaussian-noise")])
    assert injector.wrap_source(source) is source
    assert len(injector.update_stages()) == 1


def test_from_names_builds_attack_and_sensor_faults() -> None:
    injector = FaultInjector.from_names("sign-flip", ["sensor-noise", "dropout"], seed=3)
    assert injector.names == ("sensor-noise", "dropout", "sign-flip")
    assert injector.is_compromised
    assert injector.is_malicious


def test_from_names_accepts_parameters() -> None:
    injector = FaultInjector.from_names(
        "sign-flip",
        {"drift": {"intensity": 0.2}},
        attack_params={"factor": 1.0},
    )
    np.testing.assert_allclose(injector.wrap_source(FixedSource()).read(0).features, 0.7, rtol=1e-5)
    np.testing.assert_array_equal(run_stages(injector, np.ones(2, dtype=np.float32)), -1.0)


def test_from_names_with_nothing_is_honest() -> None:
    injector = FaultInjector.from_names(None)
    assert not injector.is_compromised
    assert not injector.is_malicious


def test_sensor_faults_alone_are_compromised_but_not_malicious() -> None:
    injector = FaultInjector.from_names(None, ["stuck-at"])
    assert injector.is_compromised
    assert not injector.is_malicious


def test_same_injector_seed_gives_the_same_faulty_data() -> None:
    first = FaultInjector.from_names(None, ["sensor-noise"], seed=7)
    second = FaultInjector.from_names(None, ["sensor-noise"], seed=7)
    third = FaultInjector.from_names(None, ["sensor-noise"], seed=8)
    a = first.wrap_source(FixedSource()).read(2).features
    b = second.wrap_source(FixedSource()).read(2).features
    c = third.wrap_source(FixedSource()).read(2).features
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_unknown_fault_name_lists_known_names() -> None:
    with pytest.raises(ValueError, match=r"known: .*sign-flip"):
        FaultInjector([{"name": "teleport"}])


@pytest.mark.parametrize("name", ["drift", "sign-flip", "alie", "mypkg.attacks:my_attack"])
def test_check_fault_name_takes_every_kind_of_fault(name: str) -> None:
    assert check_fault_name(name) == name


def test_check_fault_name_names_the_kind_and_every_form_it_takes() -> None:
    with pytest.raises(FaultConfigError) as caught:
        check_fault_name("teleport", "attack")

    message = str(caught.value)
    assert message.startswith("unknown attack 'teleport'; known: ")
    assert message.endswith(", module:function")
    assert all(name in message for name in ("drift", "sign-flip", "alie"))


def test_from_names_refuses_a_sensor_fault_given_as_attack() -> None:
    with pytest.raises(FaultConfigError, match="unknown attack 'drift'"):
        FaultInjector.from_names("drift")


def test_from_names_refuses_an_attack_given_as_sensor_fault() -> None:
    with pytest.raises(FaultConfigError, match="unknown sensor fault 'sign-flip'"):
        FaultInjector.from_names(None, ["sign-flip"])


def test_unknown_parameter_is_named() -> None:
    with pytest.raises(FaultConfigError, match="'strength'"):
        FaultInjector([FaultSpec(name="drift", params={"strength": 1.0})])


def test_bad_parameter_value_fails_at_construction() -> None:
    with pytest.raises(FaultConfigError, match="intensity"):
        FaultInjector([FaultSpec(name="dropout", params={"intensity": 3.0})])


def test_spec_rejects_unknown_fields() -> None:
    with pytest.raises(ValueError, match="extra"):
        FaultSpec.model_validate({"name": "drift", "parms": {}})


def test_attack_params_without_attack_are_refused() -> None:
    with pytest.raises(FaultConfigError, match="attack_params"):
        FaultInjector.from_names(None, attack_params={"factor": 2.0})
