"""Sharded ingest gives a single coordinator's results (issue 12, item 2).

The same signed updates (and the same bad ones) are played, round by round, to a single
coordinator and to a leader with two ingest workers, each on a private mosquitto, every
daemon a process of its own. The rounds must agree: accepted devices, rejection counts,
reputations, and the model.

* Order-statistic rule (``coordinate-median``, anomaly scoring on): rounds run in rows mode,
  the leader stacks the same rows in the same (sorted) order, so the model is bit-identical.
* Sum rules (``mean``; ``clipping-vr``, whose first round has no radius yet and runs from
  rows, its second streams with the lagged median radius): the workers' partial sums are
  merged, so only the order of the float64 additions differs; the float32 model agrees to
  float rounding (``rtol = 1e-6``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from cluster_support import (
    ClusterFleet,
    DeviceDriver,
    Schedule,
    SealedUpdate,
    cluster_fleet,
    seal_update,
)

pytestmark = [pytest.mark.broker]

DEVICES = 10
ROUNDS = 2


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[ClusterFleet]:
    with cluster_fleet(tmp_path, DEVICES) as made:
        yield made


def round_messages(fleet: ClusterFleet) -> Schedule:
    """Every device's update per round; and, sent first, a forged copy and a NaN update.

    The forged and broken messages go out a second before the others: a round closes
    once every device has answered, and these must be counted before it does, as they are
    by a single coordinator that reads the messages in order.
    """
    rng = np.random.default_rng(7)
    schedule: Schedule = {}
    for round_number in range(1, ROUNDS + 1):
        messages: list[SealedUpdate] = []
        bad: list[SealedUpdate] = []
        counter = 1000 * round_number
        for index in range(DEVICES):
            vector = rng.standard_normal(fleet.dim).astype(np.float32) * 0.01
            if round_number == 2 and index == DEVICES - 1:
                vector[3] = np.nan  # attributable: the device loses reputation
            sealed = seal_update(fleet, index, round_number, vector, counter=counter + index)
            if index == 0:  # a forged copy: a bad signature, not the device's fault
                tampered = bytearray(sealed.payload)
                tampered[-10] ^= 0xFF
                bad.append(SealedUpdate(sealed.device, sealed.topic, bytes(tampered)))
            (bad if round_number == 2 and index == DEVICES - 1 else messages).append(sealed)
        schedule[round_number] = [(0.0, bad), (1.0, messages)]
    return schedule


def run(
    fleet: ClusterFleet,
    name: str,
    schedule: Schedule,
    *,
    workers: int,
    **settings: object,
) -> list[dict[str, object]]:
    fleet.start_broker()
    config = fleet.write_config(name, workers=workers, rounds=ROUNDS, **settings)
    fleet.start_workers(config, workers)
    driver = DeviceDriver(fleet, schedule)
    try:
        leader = fleet.coordinator(config, name)
        summaries = fleet.wait_for_rounds(name, ROUNDS, timeout_s=90)
        assert leader.process.wait(timeout=30) == 0
    finally:
        driver.close()
        for process in fleet.processes:
            process.stop()
        assert fleet.broker is not None
        fleet.broker.stop()
    return summaries


def comparable(summary: dict[str, object]) -> dict[str, object]:
    keys = ("round", "model_version", "accepted", "accepted_devices", "rejected", "skipped")
    return {key: summary[key] for key in keys} | {"reputations": summary["reputations"]}


@pytest.mark.parametrize(
    ("defense", "settings", "modes"),
    [
        ("coordinate-median", {"anomaly_detection": True}, ["rows", "rows"]),
        ("mean", {"anomaly_detection": False}, ["sum", "sum"]),
        ("clipping-vr", {"anomaly_detection": False}, ["rows", "sum"]),
    ],
    ids=["median-rows", "mean-sums", "clipping-vr-rows-then-sums"],
)
def test_two_workers_and_a_leader_match_a_single_coordinator(
    fleet: ClusterFleet, defense: str, settings: dict[str, object], modes: list[str]
) -> None:
    schedule = round_messages(fleet)
    common = {"byzantine_defense": defense, **settings}

    single = run(fleet, "single", schedule, workers=0, **common)
    sharded = run(fleet, "sharded", schedule, workers=2, **common)

    assert [comparable(s) for s in sharded] == [comparable(s) for s in single]
    assert single[0]["accepted"] == DEVICES
    assert single[0]["rejected"] == {"bad-signature": 1}
    assert single[1]["rejected"] == {"bad-signature": 1, "non-finite": 1}
    leader_log = next(p for p in fleet.processes if p.name == "sharded").log_text()
    for number, mode in enumerate(modes, start=1):
        assert f"round {number}: {mode} mode" in leader_log
    exact = "sum" not in modes
    ours, theirs = fleet.state("sharded"), fleet.state("single")
    assert ours.model_version == theirs.model_version == ROUNDS
    if exact:
        np.testing.assert_array_equal(ours.params, theirs.params)
    else:
        np.testing.assert_allclose(ours.params, theirs.params, rtol=1e-6, atol=1e-9)
    if ours.aggregator is not None:  # clipping-vr's reference: the last aggregate
        assert theirs.aggregator is not None
        assert ours.aggregator["radius"] == pytest.approx(theirs.aggregator["radius"], rel=1e-12)
    # Both workers took part: the shared subscription spread the updates.
    logs = [p.log_text() for p in fleet.processes if p.name.startswith("worker-")]
    assert all("partial 1 sent" in log for log in logs), logs
