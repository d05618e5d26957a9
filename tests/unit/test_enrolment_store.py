"""The database enrolment stores (SQLite, PostgreSQL) and ``byzedge coordinator enrol``.

Every contract test runs against both stores: ``open_store()`` opens a new connection to
the same database (a second process, or the same one after a restart).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import pytest

from byzedge.commands.coordinator import main as coordinator_main
from byzedge.coordinator.config import CoordinatorConfig, load_coordinator_config
from byzedge.coordinator.devices import DeviceRegistry
from byzedge.coordinator.enrolment import (
    SqliteEnrolment,
    enrolment_db_path,
    open_database_enrolment,
    open_enrolment,
)
from byzedge.coordinator.enrolment_pg import PostgresEnrolment
from byzedge.coordinator.round_engine import sample_cohort
from byzedge.coordinator.service import Coordinator, RoundSummary
from byzedge.daemon.transport import InMemoryBroker
from byzedge.fleet_sim.fleet import FleetSpec, InProcessFleet
from byzedge.protocol.errors import ProtocolError
from byzedge.protocol.signing import SigningKey

KEY_A = SigningKey.generate().verify_key
KEY_B = SigningKey.generate().verify_key


Store = SqliteEnrolment | PostgresEnrolment
Opener = Callable[..., Store]


@pytest.fixture(params=["sqlite", "postgres"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def open_store(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Opener]:
    """Opens (again) the one database of this test; every store opened is closed after."""
    opened: list[Store] = []
    location = (
        str(tmp_path / "enrolment.sqlite3")
        if kind == "sqlite"
        else request.getfixturevalue("postgres_dsn")
    )

    def open_(**options: int) -> Store:
        store: Store = (
            SqliteEnrolment(Path(location), **options)
            if kind == "sqlite"
            else PostgresEnrolment(location, **options)
        )
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store: Opener) -> Store:
    return open_store()


def enrolment_keys(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """The coordinator.toml lines that select the ``kind`` store."""
    if kind == "sqlite":
        return 'enrolment = "sqlite"\n'
    dsn = request.getfixturevalue("postgres_dsn")
    return f'enrolment = "postgres"\nenrolment_dsn = "{dsn}"\n'


def test_an_enrolled_device_is_looked_up_by_id(store: Store) -> None:
    store.enrol("dev-a", KEY_A)
    store.enrol("dev-b", KEY_B)

    assert store["dev-a"] == KEY_A
    assert store.get("dev-b") == KEY_B
    assert "dev-a" in store
    assert sorted(store) == ["dev-a", "dev-b"]
    assert len(store) == 2


def test_an_unknown_device_is_not_found(store: Store) -> None:
    store.enrol("dev-a", KEY_A)

    assert store.get("dev-zz") is None
    assert "dev-zz" not in store
    with pytest.raises(KeyError):
        store["dev-zz"]


def test_a_revoked_device_is_no_longer_enrolled(store: Store) -> None:
    store.enrol("dev-a", KEY_A)
    store.enrol("dev-b", KEY_B)
    assert store["dev-a"] == KEY_A  # now cached

    assert store.revoke("dev-a") is True

    assert store.get("dev-a") is None
    assert list(store) == ["dev-b"]
    assert store.is_revoked("dev-a")
    assert store.revoke("dev-a") is False
    assert store.revoke("dev-unknown") is False


def test_enrolling_a_revoked_device_again_restores_it_with_its_new_key(
    store: Store,
) -> None:
    store.enrol("dev-a", KEY_A)
    store.revoke("dev-a")

    store.enrol("dev-a", KEY_B)

    assert store["dev-a"] == KEY_B
    assert not store.is_revoked("dev-a")


def test_enrolment_persists_across_reopen(open_store: Opener) -> None:
    first = open_store()
    first.enrol("dev-a", KEY_A, enrolled_at=1234.5)
    first.enrol("dev-b", KEY_B)
    first.revoke("dev-b")
    first.close()

    again = open_store()

    assert dict(again.items()) == {"dev-a": KEY_A}
    assert again.enrolled_at("dev-a") == 1234.5
    assert again.is_revoked("dev-b")


def test_the_database_is_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "enrolment.sqlite3"
    SqliteEnrolment(path).close()

    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_batch_with_one_bad_entry_writes_nothing(store: Store) -> None:
    with pytest.raises(ProtocolError):
        store.enrol_many([("dev-a", KEY_A.raw), ("dev-b", b"short")])

    assert len(store) == 0


def test_import_reads_a_devices_folder_and_skips_bad_files(store: Store, tmp_path: Path) -> None:
    folder = tmp_path / "devices"
    folder.mkdir()
    (folder / "dev-a.pub").write_bytes(KEY_A.to_pem())
    (folder / "dev-b.pub").write_bytes(KEY_B.to_pem())
    (folder / "dev-c.pub").write_text("not a key")

    imported, skipped = store.import_folder(folder)

    assert imported == 2
    assert len(skipped) == 1
    assert "dev-c.pub" in skipped[0]
    assert dict(store.items()) == dict(DeviceRegistry.load(folder).items())


def test_refresh_reports_what_another_writer_changed(open_store: Opener) -> None:
    running = open_store()
    operator = open_store()
    operator.enrol("dev-a", KEY_A)
    operator.enrol("dev-b", KEY_B)
    assert running.refresh() == (["dev-a", "dev-b"], [])
    assert running["dev-a"] == KEY_A  # cached by the running coordinator

    operator.revoke("dev-a")

    assert running.refresh() == ([], ["dev-a"])
    assert running.get("dev-a") is None
    assert running.refresh() == ([], [])


def test_the_lru_keeps_at_most_cache_size_keys(open_store: Opener) -> None:
    store = open_store(cache_size=1)
    store.enrol_many([("dev-a", KEY_A.raw), ("dev-b", KEY_B.raw)])

    assert store["dev-a"] == KEY_A
    assert store["dev-b"] == KEY_B
    assert store["dev-a"] == KEY_A


def test_prefetch_reads_a_cohorts_keys_into_the_lru(open_store: Opener) -> None:
    running = open_store()
    operator = open_store()
    operator.enrol_many([("dev-a", KEY_A.raw), ("dev-b", KEY_B.raw), ("dev-c", KEY_A.raw)])
    operator.revoke("dev-c")

    assert running.prefetch(["dev-a", "dev-b", "dev-c", "dev-zz", "dev-a"]) == 2

    operator.revoke("dev-a")  # not refreshed: the running store answers from its LRU
    assert running["dev-a"] == KEY_A
    assert running["dev-b"] == KEY_B
    assert running.get("dev-c") is None
    assert running.prefetch(["dev-a", "dev-b"]) == 0  # already cached: nothing read


def test_prefetch_reads_a_cohort_larger_than_one_query_holds(open_store: Opener) -> None:
    store = open_store()
    store.enrol_many((f"dev-{i:04d}", KEY_A.raw) for i in range(1200))

    assert store.prefetch(f"dev-{i:04d}" for i in range(1300)) == 1200


def test_prefetch_reads_no_more_than_the_lru_holds(open_store: Opener) -> None:
    store = open_store(cache_size=2)
    store.enrol_many((f"dev-{i}", KEY_A.raw) for i in range(5))

    assert store.prefetch([f"dev-{i}" for i in range(5)]) == 2


def test_config_selects_the_store(tmp_path: Path, postgres_dsn: str) -> None:
    base = {
        "fleet": "f",
        "signing_key": tmp_path / "c.key",
        "devices_dir": tmp_path / "devices",
        "state_dir": tmp_path / "state",
    }
    (tmp_path / "devices").mkdir()

    files = CoordinatorConfig.model_validate(base)
    sqlite = CoordinatorConfig.model_validate({**base, "enrolment": "sqlite"})
    postgres = CoordinatorConfig.model_validate(
        {**base, "enrolment": "postgres", "enrolment_dsn": postgres_dsn}
    )

    assert files.enrolment == "files"
    assert isinstance(open_enrolment(files), DeviceRegistry)
    assert enrolment_db_path(sqlite) == tmp_path / "state" / "enrolment.sqlite3"
    assert isinstance(open_enrolment(sqlite), SqliteEnrolment)
    opened = open_enrolment(postgres)
    assert isinstance(opened, PostgresEnrolment)
    opened.close()


def test_enrol_command_imports_revokes_and_counts(
    kind: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    request: pytest.FixtureRequest,
) -> None:
    folder = tmp_path / "devices"
    folder.mkdir()
    (folder / "dev-a.pub").write_bytes(KEY_A.to_pem())
    (folder / "dev-b.pub").write_bytes(KEY_B.to_pem())
    config = tmp_path / "coordinator.toml"
    config.write_text(
        'fleet = "f"\nsigning_key = "c.key"\ndevices_dir = "devices"\nstate_dir = "state"\n'
        + enrolment_keys(kind, tmp_path, request)
    )
    flags = ["--config", str(config)]

    assert coordinator_main(["enrol", "import", str(folder), *flags]) == 0
    assert coordinator_main(["enrol", "revoke", "dev-a", *flags]) == 0
    assert coordinator_main(["enrol", "revoke", "dev-a", *flags]) == 2
    assert coordinator_main(["enrol", "count", *flags]) == 0

    out = capsys.readouterr().out
    assert "imported 2 device(s), skipped 0" in out
    assert "revoked dev-a" in out
    assert "1 enrolled device(s)" in out
    loaded = load_coordinator_config(config)
    with closing(open_database_enrolment(loaded)) as store:
        assert list(store) == ["dev-b"]


def test_the_coordinator_accepts_updates_of_devices_enrolled_only_in_a_database(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    database: dict[str, object] = {"enrolment": kind}
    if kind == "postgres":
        database["enrolment_dsn"] = request.getfixturevalue("postgres_dsn")
    broker = InMemoryBroker()
    summaries: list[RoundSummary] = []
    spec = FleetSpec(
        fleet="mem",
        broker_url="mqtt://unused:1",
        devices=3,
        rounds=2,
        epochs=1,
        round_timeout_s=30.0,
        coordinator_overrides={"validation": "none", **database},
    )
    fleet = InProcessFleet(spec, tmp_path, transport=broker.connect)
    config = fleet.coordinator_config.model_copy(update={"state_dir": tmp_path / "sqlite-coord"})
    store = open_database_enrolment(config)
    imported, _ = store.import_folder(config.devices_dir)
    assert imported == 3
    for path in config.devices_dir.glob("*.pub"):  # enrolled in the database only
        path.unlink()
    store.revoke("dev-002")
    store.close()
    devices = open_database_enrolment(config)
    fleet.coordinator = Coordinator(
        config,
        signing_key=SigningKey.load(config.signing_key),
        devices=devices,
        on_round=summaries.append,
        transport=broker.connect,
    )

    assert fleet.run() == 0
    devices.close()

    assert [s.accepted_devices for s in summaries] == [["dev-000", "dev-001"]] * 2
    assert all(s.closed_by == "all-answered" for s in summaries)


def test_a_revocation_reaches_the_running_coordinator_on_reload(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    database: dict[str, object] = {"enrolment": kind}
    if kind == "postgres":
        database["enrolment_dsn"] = request.getfixturevalue("postgres_dsn")
    spec = FleetSpec(
        fleet="mem",
        broker_url="mqtt://unused:1",
        devices=3,
        rounds=1,
        epochs=1,
        coordinator_overrides={"validation": "none", "devices_per_round": 2, **database},
    )
    fleet = InProcessFleet(spec, tmp_path, transport=InMemoryBroker().connect)
    config = fleet.coordinator_config.model_copy(update={"state_dir": tmp_path / "db-coord"})
    with closing(open_database_enrolment(config)) as operator:
        operator.import_folder(config.devices_dir)
        devices = open_database_enrolment(config)
        coordinator = Coordinator(
            config, signing_key=SigningKey.load(config.signing_key), devices=devices
        )
        before: set[str] = set()
        for round_number in range(8):
            cohort = sample_cohort(devices, round_number, config.seed, 2)
            assert cohort is not None
            before |= cohort
        assert before == {"dev-000", "dev-001", "dev-002"}

        assert devices.get("dev-001") is not None  # its key is now in the LRU

        operator.revoke("dev-001")
        assert devices.get("dev-001") is not None  # until the reload drops it
        assert coordinator.reload_enrolment() == ([], ["dev-001"])

    assert devices.get("dev-001") is None
    after: set[str] = set()
    for round_number in range(8):
        cohort = sample_cohort(devices, round_number, config.seed, 1)
        assert cohort is not None
        after |= cohort
    assert after == {"dev-000", "dev-002"}
    devices.close()


def test_a_sampled_round_asks_and_accepts_its_cohort_from_a_database(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    database: dict[str, object] = {"enrolment": kind}
    if kind == "postgres":
        database["enrolment_dsn"] = request.getfixturevalue("postgres_dsn")
    broker = InMemoryBroker()
    summaries: list[RoundSummary] = []
    spec = FleetSpec(
        fleet="mem",
        broker_url="mqtt://unused:1",
        devices=5,
        rounds=2,
        epochs=1,
        round_timeout_s=30.0,
        coordinator_overrides={"validation": "none", "devices_per_round": 3, **database},
    )
    fleet = InProcessFleet(spec, tmp_path, transport=broker.connect)
    config = fleet.coordinator_config.model_copy(update={"state_dir": tmp_path / "db-coord"})
    with closing(open_database_enrolment(config)) as operator:
        operator.import_folder(config.devices_dir)
    devices = open_database_enrolment(config)
    fleet.coordinator = Coordinator(
        config,
        signing_key=SigningKey.load(config.signing_key),
        devices=devices,
        on_round=summaries.append,
        transport=broker.connect,
    )

    assert fleet.run() == 0

    for summary in summaries:
        cohort = sample_cohort(devices, summary.round, config.seed, 3)
        assert cohort is not None
        assert summary.accepted_devices == sorted(cohort)
        assert summary.closed_by == "all-answered"
    assert len(summaries) == 2
    devices.close()
