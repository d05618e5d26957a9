"""Shared fixtures: real MQTT brokers started by the test set-up.

``mosquitto_broker`` is one private mosquitto per test session (share it by using unique
topics); ``embedded_broker`` is a fresh in-process amqtt broker per test. A missing
mosquitto binary is a set-up error, not a reason to skip: run ``scripts/setup``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import settings

from byzedge.fleet_sim.brokers import BrokerHandle, find_mosquitto, start_embedded, start_mosquitto
from byzedge.fleet_sim.nats_cluster import NatsCluster, find_nats_server, start_nats_cluster

# These 2-core machines run brokers, fleets and tests side by side: a per-example time
# limit would turn load into flaky failures, so examples are bounded by count only.
settings.register_profile("byzedge", deadline=None)
settings.load_profile("byzedge")


@pytest.fixture(scope="session")
def mosquitto_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerHandle]:
    """A private mosquitto on a free 127.0.0.1 port, shared by the whole session."""
    if find_mosquitto() is None:
        pytest.fail(
            "mosquitto is required by the integration tests but was not found on PATH or "
            "in /usr/sbin: run scripts/setup (as root it installs it) or "
            "'apt-get install -y mosquitto'",
            pytrace=False,
        )
    with start_mosquitto(workdir=tmp_path_factory.mktemp("mosquitto")) as broker:
        yield broker


@pytest.fixture
def embedded_broker() -> Iterator[BrokerHandle]:
    """A fresh amqtt broker running in a thread of the test process."""
    with start_embedded() as broker:
        yield broker


# PostgreSQL: the test machines run a server on 127.0.0.1:5432 with trust authentication.
# Each session creates its own database and drops it at the end; each test gets its own
# schema in it (through the DSN's search_path), so tests never see each other's tables
# and nothing outside that database is touched. A server that does not answer is a set-up
# error, not a reason to skip.
POSTGRES_ADMIN_DSN = os.environ.get(
    "BYZEDGE_TEST_POSTGRES", "host=127.0.0.1 port=5432 dbname=postgres connect_timeout=5"
)


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """The DSN of a fresh database of this session (dropped afterwards)."""
    import psycopg  # noqa: PLC0415
    from psycopg.conninfo import conninfo_to_dict, make_conninfo  # noqa: PLC0415

    name = f"byzedge_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        admin = psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True)
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL is required by the enrolment tests ({POSTGRES_ADMIN_DSN}): {exc}",
            pytrace=False,
        )
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield make_conninfo(**{**conninfo_to_dict(POSTGRES_ADMIN_DSN), "dbname": name})
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_dsn(postgres_database: str) -> str:
    """The DSN of a fresh schema of the session's database, first in ``search_path``."""
    import psycopg  # noqa: PLC0415
    from psycopg.conninfo import conninfo_to_dict, make_conninfo  # noqa: PLC0415

    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_database, autocommit=True) as db:
        db.execute(f'CREATE SCHEMA "{schema}"')
    options = f"-csearch_path={schema}"
    return make_conninfo(**{**conninfo_to_dict(postgres_database), "options": options})


@pytest.fixture
def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    """A fresh three-node NATS cluster (clustered JetStream, MQTT on every node).

    Function-scoped: tests kill and restart its nodes. A missing nats-server binary is a
    set-up error, as for mosquitto.
    """
    if find_nats_server() is None:
        pytest.fail(
            "nats-server is required by the cluster tests: run scripts/setup (as root it "
            "installs it) or 'apt-get install -y nats-server'",
            pytrace=False,
        )
    with start_nats_cluster(tmp_path_factory.mktemp("nats")) as cluster:
        yield cluster
