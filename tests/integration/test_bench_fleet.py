"""``byzedge bench fleet`` end to end: a few dozen load devices, a real coordinator process.

No timing is asserted (these machines are shared and noisy): only that the coordinator
accepted every update the load generator sealed, and that the report adds up.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from byzedge.bench_fleet import FleetBenchReport, load_report, run_fleet_bench, write_outputs
from byzedge.bench_fleet_probe import PHASES
from byzedge.fleet_sim.brokers import BrokerHandle

pytestmark = pytest.mark.broker

DEVICES = 24


@pytest.fixture(scope="module")
def report(
    mosquitto_broker: BrokerHandle, tmp_path_factory: pytest.TempPathFactory
) -> FleetBenchReport:
    return run_fleet_bench(
        devices=[DEVICES, 40],
        models=["mlp"],
        compressions=["dense", "top-k-q8"],
        rounds=2,
        connections=2,
        # 40 x mlp's decoded rows (twice 40 x 4,810 x 4 bytes) exceed this cap: not run.
        max_round_bytes=2 * DEVICES * 4_810 * 4,
        workdir=tmp_path_factory.mktemp("bench-fleet"),
        broker=mosquitto_broker,
    )


def test_the_coordinator_accepts_every_update_of_every_round(report: FleetBenchReport) -> None:
    ran = [row for row in report.rows if row.ran]

    assert [(row.devices, row.compression) for row in ran] == [
        (DEVICES, "dense"),
        (DEVICES, "top-k-q8"),
    ]
    for row in ran:
        assert row.accepted == DEVICES
        assert [r["round"] for r in row.rounds] == [1, 2]
        assert all(r["accepted"] == DEVICES and r["rejected"] == {} for r in row.rounds)
        assert all(r["dropped_messages"] == 0 and not r["skipped"] for r in row.rounds)


def test_a_configuration_over_the_memory_cap_is_reported_not_run(
    report: FleetBenchReport,
) -> None:
    capped = [row for row in report.rows if not row.ran]

    assert [(row.devices, row.compression) for row in capped] == [(40, "dense"), (40, "top-k-q8")]
    assert all(row.status.startswith("not run:") and row.rounds == [] for row in capped)


def test_the_report_figures_are_consistent(report: FleetBenchReport) -> None:
    for row in (row for row in report.rows if row.ran):
        assert row.dim == 4_810
        assert row.raw_updates_per_s > 0
        assert row.ingest_updates_per_s > 0
        assert math.isclose(row.ratio, row.ingest_updates_per_s / row.raw_updates_per_s)
        assert row.round_s > 0
        assert row.memory_per_device_bytes >= 0
        assert set(row.phase_share) == set(PHASES)
        assert all(share >= 0 for share in row.phase_share.values())
        # The main thread's phases split its time without overlap (receive runs beside it).
        main = sum(share for name, share in row.phase_share.items() if name != "receive")
        assert main == pytest.approx(1.0, abs=0.02)
    dense, sparse = (row for row in report.rows if row.ran)
    assert sparse.update_bytes < dense.update_bytes


def test_the_outputs_round_trip_and_name_every_configuration(
    report: FleetBenchReport, tmp_path: Path
) -> None:
    markdown = write_outputs(report, tmp_path, before=report)

    assert (tmp_path / "scale.png").stat().st_size > 0
    assert load_report(tmp_path / "scale.json") == report
    for row in report.rows:
        assert f"| {row.devices:,} | {row.model} ({row.dim:,}) | {row.compression} |" in markdown
    assert "Before and after" in markdown
