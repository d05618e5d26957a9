"""The coordinator's per-device state at fleet scale: rows of a DeviceTable, one state file.

Sizes here are small; benchmarks/fleet_state.py measures 10^4-10^6 devices.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from byzedge.coordinator.anomaly import AnomalyDetector
from byzedge.coordinator.device_table import DeviceTable
from byzedge.coordinator.ingest import Ingest
from byzedge.coordinator.reputation import ReputationBook
from byzedge.coordinator.state import CoordinatorState, StateStore

# -- DeviceTable ------------------------------------------------------------------------------


def test_a_new_device_gets_a_zeroed_row_and_keeps_it() -> None:
    table = DeviceTable(3, 1)
    rows = table.ensure(["a", "b"])
    table.values[rows] = [[1, 2, 3], [4, 5, 6]]
    table.flags[rows[1]] = True

    assert table.ensure(["b", "c"]).tolist() == [rows[1], 2]
    assert table.values[2].tolist() == [0.0, 0.0, 0.0]
    assert table.values[table.row("b")].tolist() == [4.0, 5.0, 6.0]
    assert table.rows(["c", "zz", "a"]).tolist() == [2, -1, 0]
    assert len(table) == 3
    assert "a" in table
    assert "zz" not in table


def test_a_dropped_row_is_reused_zeroed() -> None:
    table = DeviceTable(2, 1)
    table.ensure(["a", "b", "c"])
    table.values[:3] = 7.0
    table.flags[:3] = True

    table.drop("b")
    table.drop("never-seen")
    (row,) = table.ensure(["d"])

    assert row == 1
    assert table.values[1].tolist() == [0.0, 0.0]
    assert not table.flags[1].any()
    assert table.row("b") is None
    ids, values, flags = table.export()
    assert ids == ["a", "d", "c"]
    assert values.shape == (3, 2)
    assert flags.shape == (3, 1)


def test_the_same_new_id_twice_in_one_call_gets_one_row() -> None:
    table = DeviceTable(1, 1)

    rows = table.ensure(["a", "a", "b"])

    assert rows.tolist() == [0, 0, 1]
    assert len(table) == 2


def test_the_table_grows_past_its_capacity_keeping_every_row() -> None:
    table = DeviceTable(1, 1)
    for start in range(0, 1000, 100):
        ids = [f"d{i}" for i in range(start, start + 100)]
        rows = table.ensure(ids)  # may reallocate: index table.values only after it
        table.values[rows, 0] = [float(i) for i in range(start, start + 100)]

    ids, values, _ = table.export()

    assert ids == [f"d{i}" for i in range(1000)]
    assert_array_equal(values[:, 0], np.arange(1000, dtype=np.float64))


def test_rows_come_back_in_order_after_from_rows() -> None:
    values = np.arange(6, dtype=np.float64).reshape(3, 2)
    flags = np.array([[True], [False], [True]])

    table = DeviceTable.from_rows(["x", "y", "z"], values, flags)

    ids, out_values, out_flags = table.export()
    assert ids == ["x", "y", "z"]
    assert_array_equal(out_values, values)
    assert_array_equal(out_flags, flags)
    assert table.ensure(["w"]).tolist() == [3]


# -- the state file ---------------------------------------------------------------------------


def _fleet(devices: int, rounds: int) -> tuple[list[str], ReputationBook, AnomalyDetector, Ingest]:
    """Units after ``rounds`` rounds of 1-in-5 cohorts of ``devices`` devices."""
    rng = np.random.default_rng(1)
    ids = [f"dev-{i:05d}" for i in range(devices)]
    book = ReputationBook()
    detector = AnomalyDetector()
    ingest = Ingest("f", {}, max_message_bytes=131_072, max_update_bytes=1 << 20)
    counters: dict[str, int] = {}
    for round_number in range(rounds):
        cohort = sorted(rng.choice(ids, size=max(3, devices // 5), replace=False).tolist())
        scores = detector.score(cohort, rng.normal(size=(len(cohort), 16)).astype(np.float32))
        assert scores is not None
        flagged = {d for d, bad in zip(scores.device_ids, scores.flagged, strict=True) if bad}
        book.record_many({device: device not in flagged for device in cohort})
        counters.update(dict.fromkeys(cohort, round_number + 1))
    ingest.load_state_dict({"last_counter": counters})
    return ids, book, detector, ingest


@pytest.mark.parametrize("devices", [10, 400])
def test_the_state_file_round_trips_every_device(tmp_path: Path, devices: int) -> None:
    ids, book, detector, ingest = _fleet(devices, rounds=8)
    detector.reset(ids[0])
    detector.forget(ids[1])
    store = StateStore(tmp_path)
    store.save(
        CoordinatorState(
            fleet="f",
            model="mlp",
            completed_round=8,
            model_version=8,
            params=np.ones(4, np.float32),
            reputation=book.state_dict(),
            anomaly=detector.state_dict(),
            ingest=ingest.state_dict(),
        )
    )

    loaded = store.load()
    assert loaded is not None
    book_again, detector_again = ReputationBook(), AnomalyDetector()
    ingest_again = Ingest("f", {}, max_message_bytes=131_072, max_update_bytes=1 << 20)
    book_again.load_state_dict(loaded.reputation)
    detector_again.load_state_dict(loaded.anomaly)
    ingest_again.load_state_dict(loaded.ingest)

    assert book_again.state_dict() == book.state_dict()
    assert detector_again.state_dict() == detector.state_dict()
    assert ingest_again.state_dict() == ingest.state_dict()
    assert len(detector_again) == len(detector)
    cohort = ids[: max(3, devices // 5)]
    updates = np.random.default_rng(9).normal(size=(len(cohort), 16)).astype(np.float32)
    before, after = detector.score(cohort, updates), detector_again.score(cohort, updates)
    assert before is not None
    assert after is not None
    assert_allclose(after.score, before.score)


def test_a_state_file_of_the_old_layout_still_loads(tmp_path: Path) -> None:
    ids, _, detector, _ = _fleet(20, rounds=4)
    current = detector.state_dict()
    n = len(current["ids"])
    values = np.frombuffer(current["values"], dtype="<f8").reshape(n, 10)
    flags = np.frombuffer(current["flags"], dtype=np.uint8).reshape(n, 2)
    old = {
        "version": 1,
        "rounds": current["rounds"],
        "pooled_scale": current["pooled_scale"],
        "devices": {
            device: {
                "level": values[i, 0:2].tolist(),
                "scale": values[i, 2:4].tolist(),
                "evidence": values[i, 4:7].tolist(),
                "trust": float(values[i, 7]),
                "suspect": bool(flags[i, 0]),
                "pending": values[i, 8:10].tolist(),
                "rebaseline": bool(flags[i, 1]),
            }
            for i, device in enumerate(current["ids"])
        },
    }
    store = StateStore(tmp_path)
    store.save(
        CoordinatorState(
            fleet="f",
            model="mlp",
            completed_round=4,
            model_version=4,
            params=np.ones(4, np.float32),
            anomaly=old,
        )
    )

    loaded = store.load()
    assert loaded is not None
    restored = AnomalyDetector()
    restored.load_state_dict(loaded.anomaly)

    assert restored.state_dict() == current
    assert set(ids) >= set(current["ids"])
