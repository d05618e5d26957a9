"""Shared fixtures: real MQTT brokers started by the test set-up.

``mosquitto_broker`` is one private mosquitto per test session (share it by using unique
topics); ``embedded_broker`` is a fresh in-process amqtt broker per test. A missing
mosquitto binary is a set-up error, not a reason to skip: run ``scripts/setup``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import settings

from byzedge.fleet_sim.brokers import BrokerHandle, find_mosquitto, start_embedded, start_mosquitto

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
