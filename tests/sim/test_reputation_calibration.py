"""Simulated fleets: honest devices keep their reputation, a sign-flipper is flagged."""

from __future__ import annotations

from collections import Counter

from byzedge.fleet_sim.scenario import Scenario
from byzedge.fleet_sim.simulator import RoundRecord, Simulator

ROUNDS = 40


def test_a_clean_fleet_keeps_every_honest_device_trusted() -> None:
    simulator = Simulator(Scenario(devices=5, rounds=ROUNDS, partition="iid", eval_every=ROUNDS))
    flags: Counter[str] = Counter()
    lowest = [1.0]

    def on_round(record: RoundRecord) -> None:
        flags.update(record.flagged)
        lowest.append(min(simulator.reputation.snapshot().values()))

    result = simulator.run(on_round)
    assert result.compromised == []
    assert all(count <= 0.05 * ROUNDS for count in flags.values()), flags
    assert min(lowest) >= 0.5


def test_a_sign_flipping_device_is_flagged_in_most_rounds() -> None:
    scenario = Scenario(
        devices=5,
        rounds=ROUNDS,
        partition="iid",
        attack="sign-flip",
        byzantine_fraction=0.2,
        eval_every=ROUNDS,
    )
    simulator = Simulator(scenario)
    result = simulator.run()
    (attacker,) = result.compromised
    flagged = sum(attacker in record.flagged for record in result.rounds)
    assert flagged >= 0.9 * ROUNDS
    assert result.flags.precision is not None
    assert result.flags.precision >= 0.9
    assert simulator.reputation.weight(attacker) < 0.5
