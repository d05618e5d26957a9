"""A training method as operators deploy it: ``byzedge init``'s mTLS + ACL fleet, SIGKILLs.

Byz-EF21 keeps an estimator on every device and a copy of it ("mirror") on the
coordinator; the two must stay equal through lost messages and crashes, or the method
silently aggregates the wrong vectors. Each daemon is a separate process started from the
generated configuration (with ``algorithm`` and a ``[method]`` table added, as an operator
would), over mosquitto with mutual TLS; an agent and then the coordinator are SIGKILLed
mid-run and restarted from their state files.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest
from provisioned import Fleet, provisioned_fleet

from byzedge.coordinator.state import StateStore
from byzedge.daemon.store import AtomicStore
from byzedge.methods.base import DeviceState, ServerState
from byzedge.models import get_model_spec

pytestmark = [pytest.mark.broker, pytest.mark.slow]

DEVICES = ("dev-000", "dev-001", "dev-002")
DIM = get_model_spec("mlp").dim


@pytest.fixture
def fleet() -> Iterator[Fleet]:
    with provisioned_fleet(devices=len(DEVICES)) as made:
        made.set_coordinator(round_interval_s=0.0, round_timeout_s=30.0, algorithm="byz-ef21")
        config = made.root / "coordinator" / "coordinator.toml"
        with config.open("a") as out:
            out.write('\n[method]\nstep_size = 0.5\ncompression = "top-k"\nsparsity = 0.1\n')
        yield made


def test_ef21_mirrors_survive_sigkills_of_a_device_and_the_coordinator(fleet: Fleet) -> None:
    for device in DEVICES:
        fleet.agent(device)
    fleet.coordinator("--rounds", "0")
    fleet.wait_for_rounds(3, timeout_s=180)

    device = next(d for d in reversed(fleet.daemons) if d.name == "dev-001")
    device.kill()
    fleet.agent("dev-001")
    done = len(fleet.rounds())
    fleet.wait_for_rounds(done + 3, timeout_s=180)

    coordinator = next(d for d in reversed(fleet.daemons) if d.name == "coordinator")
    coordinator.kill()
    time.sleep(0.5)
    # Rounds run back to back, so count where the killed coordinator got to: the restarted
    # one resumes there, runs four more rounds and publishes the final model.
    last = len(fleet.rounds()) + 4
    fleet.coordinator("--rounds", str(last))
    restarted = next(d for d in reversed(fleet.daemons) if d.name == "coordinator")
    try:
        code = restarted.process.wait(timeout=240)
    except subprocess.TimeoutExpired:
        fleet.fail(f"the restarted coordinator did not finish round {last}")
    assert code == 0
    time.sleep(2.0)  # agents handle the final model (they do not train on it)
    for daemon in fleet.daemons:
        if daemon.name in DEVICES and daemon.process.poll() is None:
            assert daemon.stop() == 0

    summaries = fleet.rounds()
    rounds = [s["round"] for s in summaries]
    # A SIGKILL between a round's state save and its summary line is made good at restart
    # from the saved summary: every round has exactly one line.
    assert rounds == list(range(1, last + 1))
    assert all(s["algorithm"] == "byz-ef21" for s in summaries)
    accuracies = [s["validation_accuracy"] for s in summaries]
    assert accuracies[-1] > accuracies[0] + 0.2, accuracies
    # Every device took part in the last round, so every mirror holds its last message.
    assert summaries[-1]["accepted_devices"] == list(DEVICES)
    state = StateStore(fleet.root / "coordinator" / "state").load()
    assert state is not None
    server = ServerState.from_plain(state.method, DIM)
    assert server.mirror_rounds == dict.fromkeys(DEVICES, last)
    for name in DEVICES:
        document = AtomicStore(fleet.folder(name) / "state" / "agent.state").load()
        assert document is not None
        estimator = DeviceState.from_plain(document["method"]["state"], DIM).vectors["g"]
        assert (server.mirrors[name] == estimator).all(), f"{name}'s mirror drifted"


@pytest.fixture
def bc_fleet() -> Iterator[Fleet]:
    with provisioned_fleet(devices=len(DEVICES)) as made:
        made.set_coordinator(round_interval_s=0.0, round_timeout_s=30.0, algorithm="byz-ef21-bc")
        config = made.root / "coordinator" / "coordinator.toml"
        with config.open("a") as out:
            out.write(
                '\n[method]\nstep_size = 0.5\ncompression = "top-k"\nsparsity = 0.1\n'
                "downlink_sparsity = 0.05\n"
            )
        yield made


def test_ef21_bc_devices_follow_the_compressed_broadcast_and_resync_after_a_sigkill(
    bc_fleet: Fleet,
) -> None:
    fleet = bc_fleet
    for device in DEVICES:
        fleet.agent(device)
    fleet.coordinator("--rounds", "0")
    fleet.wait_for_rounds(4, timeout_s=180)

    # A restarted device holds no (x, g) pair: it fetches one over the generated ACL and
    # follows the broadcast again.
    killed = next(d for d in reversed(fleet.daemons) if d.name == "dev-001")
    killed.kill()
    fleet.agent("dev-001")
    done = len(fleet.rounds())
    summaries = fleet.wait_for_rounds(done + 4, timeout_s=180)
    for daemon in fleet.daemons:
        if daemon.process.poll() is None:
            assert daemon.stop() == 0

    assert all(s["algorithm"] == "byz-ef21-bc" for s in summaries)
    assert [s["accepted_devices"] for s in summaries[-2:]] == [list(DEVICES)] * 2
    accuracies = [s["validation_accuracy"] for s in summaries]
    assert accuracies[-1] > accuracies[0] + 0.2, accuracies
    # A restarted daemon appends to its predecessor's log file.
    logs = {d.name: d.log_text() for d in fleet.daemons if d.name in DEVICES}
    fetches = {name: logs[name].count("fetching the dense (x, g) pair") for name in DEVICES}
    # One fetch per agent process: when it learns the fleet broadcasts compressed. Every
    # later round came as a sparse broadcast that rebuilt the signed model exactly.
    assert fetches == {"dev-000": 1, "dev-001": 2, "dev-002": 1}
    for text in logs.values():
        for refusal in ("broadcast refused", "pair refused", "does not match", "refusing"):
            assert refusal not in text
