"""Issue 10: under every colluding attack the measured deviation stays within the bound."""

from __future__ import annotations

import pytest

from byzedge.fleet_sim.scenario import Scenario
from byzedge.fleet_sim.simulator import omniscient_attacks, run_scenario
from byzedge.models.datasets import DigitsSplit, load_digits_split

ROUNDS = 3


@pytest.fixture(scope="module")
def split() -> DigitsSplit:
    return load_digits_split()


@pytest.mark.parametrize("defense", ["clipping-vr", "trimmed-mean", "krum"])
@pytest.mark.parametrize("attack", sorted(omniscient_attacks()))
def test_measured_deviation_never_exceeds_the_certified_bound(
    attack: str, defense: str, split: DigitsSplit
) -> None:
    scenario = Scenario(
        devices=8,
        rounds=ROUNDS,
        partition="iid",
        attack=attack,
        byzantine_fraction=0.25,
        defense=defense,
        aggregation={"trim_fraction": 0.25} if defense == "trimmed-mean" else {},
        max_byzantine_fraction=0.25,
        certified_robustness=True,
        epochs=1,
        eval_every=ROUNDS,
    )
    result = run_scenario(scenario, split=split)

    assert len(result.compromised) == 2
    for record in result.rounds:
        assert record.byzantine_in_cohort <= 2  # f = floor(0.25 * 8): the bound's premise
        assert record.certified_bound is not None, record
        assert record.measured_deviation is not None, record
        assert record.measured_deviation <= record.certified_bound, record
