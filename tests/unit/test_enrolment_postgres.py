"""What the PostgreSQL store adds (config, lost connections, check-config) and the cohort draw.

The store's mapping contract runs against both databases in test_enrolment_store.py.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from byzedge.cli import main
from byzedge.coordinator.config import ConfigError, CoordinatorConfig, load_coordinator_config
from byzedge.coordinator.enrolment import (
    EnrolmentStoreError,
    SqliteEnrolment,
    open_database_enrolment,
    open_enrolment,
)
from byzedge.coordinator.enrolment_pg import PostgresEnrolment, redact_dsn
from byzedge.coordinator.ingest import Ingest, Rejected, RejectReason, RoundWindow
from byzedge.coordinator.round_engine import sample_cohort
from byzedge.protocol.codecs import DenseCodec
from byzedge.protocol.envelope import Header, seal
from byzedge.protocol.signing import SigningKey
from byzedge.protocol.topics import update_topic

KEY = SigningKey.generate().verify_key
UNREACHABLE = "host=127.0.0.1 port=1 dbname=byzedge connect_timeout=2"


@pytest.fixture
def pg(postgres_dsn: str) -> Iterator[PostgresEnrolment]:
    store = PostgresEnrolment(postgres_dsn)
    yield store
    store.close()


def _base(tmp_path: Path) -> dict[str, object]:
    (tmp_path / "devices").mkdir(exist_ok=True)
    return {
        "fleet": "f",
        "signing_key": tmp_path / "c.key",
        "devices_dir": tmp_path / "devices",
        "state_dir": tmp_path / "state",
        "enrolment": "postgres",
    }


# -- configuration --------------------------------------------------------------------------


def test_postgres_needs_a_dsn(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs enrolment_dsn or enrolment_dsn_file"):
        CoordinatorConfig.model_validate(_base(tmp_path))


@pytest.mark.parametrize(
    "dsn",
    ["postgresql://byzedge:s3cret@db.example/fleet", "host=db.example password=s3cret"],
)
def test_a_password_in_the_config_file_is_refused(tmp_path: Path, dsn: str) -> None:
    config = tmp_path / "coordinator.toml"
    config.write_text(
        'fleet = "f"\nsigning_key = "c.key"\ndevices_dir = "devices"\nstate_dir = "state"\n'
        f'enrolment = "postgres"\nenrolment_dsn = "{dsn}"\n'
    )

    with pytest.raises(ConfigError, match="must not hold a password") as caught:
        load_coordinator_config(config)
    assert "s3cret" not in str(caught.value)


def test_the_dsn_may_come_from_a_file(tmp_path: Path, postgres_dsn: str) -> None:
    secret = tmp_path / "enrolment.dsn"
    secret.write_text(postgres_dsn + "\n")
    config = CoordinatorConfig.model_validate(
        {**_base(tmp_path), "enrolment_dsn_file": str(secret)}
    )

    store = open_enrolment(config)

    assert isinstance(store, PostgresEnrolment)
    store.close()


def test_the_label_never_shows_the_password() -> None:
    assert "s3cret" not in redact_dsn("postgresql://u:s3cret@h/db")
    assert "h" in redact_dsn("postgresql://u:s3cret@h/db")


# -- the server ---------------------------------------------------------------------------


def test_an_unreachable_server_is_a_store_error() -> None:
    with pytest.raises(EnrolmentStoreError, match="enrolment database"):
        PostgresEnrolment(UNREACHABLE)


def test_a_lookup_survives_a_dropped_connection(postgres_dsn: str, pg: PostgresEnrolment) -> None:
    pg.enrol("dev-a", KEY)
    pg.enrol("dev-b", KEY)
    with psycopg.connect(postgres_dsn, autocommit=True) as admin:
        # Every other connection to this session's database: the store's (as a restart
        # of the server would cut it).
        cut = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
    assert cut is not None
    assert cut[0] >= 1

    assert pg["dev-b"] == KEY  # not cached: read again over a new connection
    assert pg.revoke("dev-a")


def test_the_tables_live_in_the_dsn_schema_only(postgres_dsn: str, pg: PostgresEnrolment) -> None:
    pg.enrol("dev-a", KEY)
    schema = dict(psycopg.conninfo.conninfo_to_dict(postgres_dsn))["options"].split("=")[1]

    with psycopg.connect(postgres_dsn) as db:
        rows = db.execute(
            "SELECT table_schema, table_name FROM information_schema.tables"
            " WHERE table_name LIKE 'byzedge_%%' AND table_schema IN (%s, 'public')"
            " ORDER BY table_name",
            (schema,),
        ).fetchall()

    assert rows == [(schema, "byzedge_devices"), (schema, "byzedge_meta")]


# -- ranked ids and the cohort draw ------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def database(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[SqliteEnrolment | PostgresEnrolment]:
    store: SqliteEnrolment | PostgresEnrolment = (
        SqliteEnrolment(tmp_path / "e.sqlite3")
        if request.param == "sqlite"
        else PostgresEnrolment(request.getfixturevalue("postgres_dsn"))
    )
    yield store
    store.close()


def test_ranked_ids_are_in_byte_order_whatever_the_locale(
    database: SqliteEnrolment | PostgresEnrolment,
) -> None:
    ids = ["dev-b", "Dev-c", "dev-B", "dev-a", "dev-_", "dev-9", "dev-.x"]
    database.enrol_many((device, KEY.raw) for device in ids)

    assert database.sorted_ids().astype(np.str_).tolist() == sorted(ids)


def test_ranked_ids_follow_another_writer_without_a_reload(
    database: SqliteEnrolment | PostgresEnrolment, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    database.enrol_many([("dev-a", KEY.raw), ("dev-b", KEY.raw)])
    first = database.sorted_ids()
    assert database.sorted_ids() is first  # kept while nothing changes
    other = (
        SqliteEnrolment(database.path)
        if isinstance(database, SqliteEnrolment)
        else PostgresEnrolment(request.getfixturevalue("postgres_dsn"))
    )
    other.revoke("dev-a")
    other.enrol("dev-c", KEY)
    other.close()

    assert database.sorted_ids().astype(np.str_).tolist() == ["dev-b", "dev-c"]


def _old_draw(ids: list[str], round_number: int, seed: int, size: int) -> frozenset[str]:
    """The draw as sample_cohort always made it: choice over the sorted ids."""
    rng = np.random.default_rng([seed, round_number])
    return frozenset(rng.choice(sorted(ids), size=size, replace=False).tolist())


@pytest.mark.parametrize(("count", "size"), [(7, 3), (300, 40), (12_000, 30), (12_000, 600)])
def test_a_database_store_draws_the_cohort_a_plain_mapping_draws(
    database: SqliteEnrolment | PostgresEnrolment, count: int, size: int
) -> None:
    rng = np.random.default_rng(5)
    ids = [f"d{value:x}" for value in rng.choice(10**9, size=count, replace=False)]
    database.enrol_many((device, KEY.raw) for device in ids)
    plain = dict.fromkeys(ids, KEY)

    for round_number in (0, 1, 17):
        drawn = sample_cohort(database, round_number, 11, devices_per_round=size)
        assert drawn == sample_cohort(plain, round_number, 11, devices_per_round=size)
        assert drawn == _old_draw(ids, round_number, 11, size)


def test_a_plain_mapping_draws_as_before() -> None:
    ids = [f"dev-{i:03d}" for i in range(200)]
    registry = dict.fromkeys(reversed(ids), KEY)

    for round_number in range(5):
        expected = _old_draw(ids, round_number, 3, 20)
        assert sample_cohort(registry, round_number, 3, participation_rate=0.1) == expected
    assert sample_cohort(registry, 0, 3, participation_rate=1.0) is None


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_the_draw_is_the_same_after_a_restart(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    def open_store() -> SqliteEnrolment | PostgresEnrolment:
        if kind == "sqlite":
            return SqliteEnrolment(tmp_path / "e.sqlite3")
        return PostgresEnrolment(request.getfixturevalue("postgres_dsn"))

    first = open_store()
    first.enrol_many((f"dev-{i:04d}", KEY.raw) for i in range(500))
    before = [sample_cohort(first, r, 9, devices_per_round=25) for r in range(3)]
    first.close()

    again = open_store()

    assert [sample_cohort(again, r, 9, devices_per_round=25) for r in range(3)] == before
    assert len(set(before)) == 3  # rounds differ
    again.close()


# -- check-config and the enrol command ----------------------------------------------------


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pg-fleet") / "fleet"
    assert main(["init", str(folder), "--fleet", "pg", "--devices", "2"]) == 0
    return folder


def _with_enrolment(fleet: Path, lines: str, tmp_path: Path) -> Path:
    config = fleet / "coordinator" / "coordinator.toml"
    copy = config.parent / f"coordinator-{tmp_path.name}.toml"
    copy.write_text(lines + config.read_text())  # top-level keys go before any [table]
    return copy


def test_check_config_reports_an_unreachable_database_in_one_line(
    fleet: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _with_enrolment(
        fleet, f'enrolment = "postgres"\nenrolment_dsn = "{UNREACHABLE}"\n', tmp_path
    )

    assert main(["coordinator", "check-config", "--config", str(config)]) == 2

    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    lines = [line for line in captured.err.splitlines() if "enrolment_dsn" in line]
    assert len(lines) == 1
    assert lines[0].startswith("byzedge coordinator: enrolment_dsn: enrolment database ")
    assert "port=1" in lines[0]
    assert "connection" in lines[0].lower()


def test_check_config_counts_the_devices_of_a_reachable_database(
    fleet: Path, tmp_path: Path, postgres_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _with_enrolment(
        fleet, f'enrolment = "postgres"\nenrolment_dsn = "{postgres_dsn}"\n', tmp_path
    )
    flags = ["--config", str(config)]
    assert main(["coordinator", "enrol", "import", str(fleet / "devices"), *flags]) == 0

    assert main(["coordinator", "check-config", *flags]) == 0

    assert "2 enrolled devices" in capsys.readouterr().out


def test_the_enrol_command_reports_an_unreachable_database(
    fleet: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _with_enrolment(
        fleet, f'enrolment = "postgres"\nenrolment_dsn = "{UNREACHABLE}"\n', tmp_path
    )

    assert main(["coordinator", "enrol", "count", "--config", str(config)]) == 2

    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "enrolment database" in err


def test_enrol_with_a_db_flag_writes_sqlite_even_under_postgres(
    fleet: Path, tmp_path: Path
) -> None:
    config = _with_enrolment(
        fleet, f'enrolment = "postgres"\nenrolment_dsn = "{UNREACHABLE}"\n', tmp_path
    )
    database = tmp_path / "e.sqlite3"
    loaded = load_coordinator_config(config)

    store = open_database_enrolment(loaded, database)

    assert isinstance(store, SqliteEnrolment)
    store.close()


def test_rounds_go_on_with_the_last_enrolment_while_the_server_is_gone(
    postgres_database: str,
) -> None:
    name = f"byzedge_gone_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_database, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    dsn = make_conninfo("", **{**conninfo_to_dict(postgres_database), "dbname": name})
    store = PostgresEnrolment(dsn)
    device = SigningKey.generate()
    try:
        store.enrol_many((f"dev-{i:02d}", KEY.raw) for i in range(10))
        store.enrol("dev-a", device.verify_key)
        assert store["dev-03"] == KEY  # cached
        before = sample_cohort(store, 4, 1, devices_per_round=3)
    finally:  # the server is gone for this store: its database no longer exists
        with psycopg.connect(postgres_database, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    assert sample_cohort(store, 4, 1, devices_per_round=3) == before
    assert store["dev-03"] == KEY
    with pytest.raises(EnrolmentStoreError):
        store.get("dev-04")
    with pytest.raises(EnrolmentStoreError):
        store.refresh()
    # An update whose key cannot be read is refused as from an unknown device (which does
    # not count against its reputation); nothing is raised out of ingest.
    ingest = Ingest("f", store, max_message_bytes=131_072, max_update_bytes=1 << 20)
    now_ms = int(time.time() * 1000)
    header = Header(
        kind="update",
        fleet="f",
        sender="dev-a",
        round=1,
        base_version=0,
        codec="dense",
        dim=4,
        counter=1,
        created_ms=now_ms,
        expires_ms=now_ms + 60_000,
    )
    frame = seal(header, DenseCodec().encode(np.ones(4, np.float32)), device).to_bytes()
    window = RoundWindow(round=1, model_version=0, dim=4)

    outcome = ingest.submit(update_topic("f", "dev-a"), frame, window)

    assert isinstance(outcome, Rejected)
    assert outcome.reason == RejectReason.UNKNOWN_DEVICE
    assert "not looked up" in outcome.detail
    store.close()
