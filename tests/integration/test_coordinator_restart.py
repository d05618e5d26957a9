"""A coordinator killed mid-run (SIGKILL) resumes from its persisted state.

Everything runs as the operator would run it: keys from ``byzedge keys generate``, TOML
configs, three ``byzedge agent run`` processes (one of them compromised by a fault plan)
and ``byzedge coordinator run`` processes, all on a real mosquitto.

The run happens once per module (it takes tens of seconds); each test checks one
behaviour of the recorded outcome.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from byzedge.cli import main as byzedge_main
from byzedge.coordinator.state import CoordinatorState, StateStore
from byzedge.fleet_sim.brokers import BrokerHandle
from byzedge.protocol import topics

pytestmark = pytest.mark.broker

REPO = Path(__file__).resolve().parents[2]
DEVICES = ("dev-000", "dev-001", "dev-002")
COMPROMISED = "dev-002"
ROUNDS = 6
DECAY = 0.95
CONNECT_TIMEOUT_S = 60.0
ROUNDS_TIMEOUT_S = 90.0
RUN_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 20.0
FREEZE_S = 1.0


@dataclass(frozen=True)
class RestartRun:
    """What the test run recorded."""

    fleet_dir: Path
    state_dir: Path
    pre_kill_rounds: list[dict[str, Any]]
    state_at_kill: CoordinatorState
    post_restart_rounds: list[dict[str, Any]]
    final_state: CoordinatorState
    second_exit_code: int
    second_log: str
    agent_exit_codes: dict[str, int | None]


def _write_fleet(fleet_dir: Path, fleet: str, broker_url: str) -> None:
    keys = fleet_dir / "keys"
    assert byzedge_main(["keys", "generate", "coordinator", *DEVICES, "--dir", str(keys)]) == 0
    devices = fleet_dir / "devices"
    devices.mkdir()
    for device in DEVICES:
        (devices / f"{device}.pub").write_bytes((keys / f"{device}.pub").read_bytes())
    mqtt_table = f'[mqtt]\nurl = "{broker_url}"\nreconnect_min_s = 0.2\nreconnect_max_s = 2.0\n'
    (fleet_dir / "coordinator.toml").write_text(
        f'fleet = "{fleet}"\n'
        'signing_key = "keys/coordinator.key"\n'
        'devices_dir = "devices"\n'
        'state_dir = "state/coordinator"\n'
        f"rounds = {ROUNDS}\n"
        "round_timeout_s = 10.0\n"
        'validation = "digits"\n'
        f"reputation_decay = {DECAY}\n" + mqtt_table
    )
    for index, device in enumerate(DEVICES):
        (fleet_dir / f"{device}.toml").write_text(
            f'fleet = "{fleet}"\n'
            f'device_id = "{device}"\n'
            f'signing_key = "keys/{device}.key"\n'
            'coordinator_key = "keys/coordinator.pub"\n'
            f'state_dir = "state/{device}"\n'
            "status_interval_s = 5.0\n"
            f"[data]\nnum_partitions = {len(DEVICES)}\npartition_index = {index}\n"
            "[training]\nepochs = 1\n"
            "[eligibility]\nmax_temperature_c = 200.0\nmin_available_memory_mb = 1.0\n" + mqtt_table
        )
    (fleet_dir / "fault-plan.toml").write_text(
        "seed = 3\n"
        "[[target]]\n"
        f'devices = ["{COMPROMISED}"]\n'
        'faults = [{ name = "gaussian-noise", params = { scale = 1000.0 } }]\n'
    )


class _Processes:
    """Child processes of the test, each logging to its own file; all ended at teardown."""

    def __init__(self, log_dir: Path) -> None:
        self._log_dir = log_dir
        self._children: list[tuple[subprocess.Popen[bytes], IO[bytes]]] = []
        self._env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = (self._log_dir / f"{name}.log").open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "byzedge", *args],
            cwd=REPO,
            env=self._env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self._children.append((process, log))
        return process

    def log(self, name: str) -> str:
        return (self._log_dir / f"{name}.log").read_text(errors="replace")

    def tails(self) -> str:
        parts = []
        for path in sorted(self._log_dir.glob("*.log")):
            lines = path.read_text(errors="replace").splitlines()[-15:]
            parts.append(f"--- {path.name}\n" + "\n".join(lines))
        return "\n".join(parts)

    def close(self) -> None:
        for process, log in self._children:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=STOP_TIMEOUT_S)
            log.close()


def _wait_until_online(broker: BrokerHandle, fleet: str, devices: set[str]) -> None:
    """Block until every device's retained status says ``online``."""
    statuses: queue.Queue[tuple[str, bytes]] = queue.Queue()
    connected = threading.Event()
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"restart-test-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv311,
    )
    client.on_connect = lambda *_: connected.set()
    client.on_message = lambda _c, _u, msg: statuses.put((msg.topic, bytes(msg.payload)))
    client.connect(broker.host, broker.port, keepalive=30)
    client.loop_start()
    try:
        assert connected.wait(CONNECT_TIMEOUT_S), "test client got no CONNACK"
        client.subscribe(topics.device_status_wildcard(fleet), qos=1)
        online: set[str] = set()
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while online != devices:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"agents online after {CONNECT_TIMEOUT_S} s: {sorted(online)}"
            try:
                _, payload = statuses.get(timeout=remaining)
            except queue.Empty:
                continue
            status = json.loads(payload)
            if status.get("state") != "offline":
                online.add(status["device_id"])
    finally:
        client.disconnect()
        client.loop_stop()


def _read_rounds(path: Path) -> list[dict[str, Any]]:
    """The complete round summaries in ``rounds.jsonl`` (a torn last line is ignored)."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    return [json.loads(line) for line in text.split("\n")[:-1] if line.strip()]


def _wait_for_rounds(path: Path, coordinator: subprocess.Popen[bytes], at_least: int) -> None:
    deadline = time.monotonic() + ROUNDS_TIMEOUT_S
    while len(_read_rounds(path)) < at_least:
        assert coordinator.poll() is None, f"coordinator exited early: {coordinator.returncode}"
        assert time.monotonic() < deadline, f"fewer than {at_least} rounds in time"
        time.sleep(0.01)


@pytest.fixture(scope="module", name="run")
def restart_run(
    mosquitto_broker: BrokerHandle, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RestartRun]:
    """Agents up, coordinator killed after >= 2 rounds, restarted, run to the end."""
    fleet_dir = tmp_path_factory.mktemp("restart-fleet")
    fleet = f"restart-{uuid.uuid4().hex[:8]}"
    _write_fleet(fleet_dir, fleet, mosquitto_broker.url)
    state_dir = fleet_dir / "state" / "coordinator"
    rounds_path = state_dir / "rounds.jsonl"
    logs = fleet_dir / "logs"
    logs.mkdir()
    processes = _Processes(logs)
    try:
        agents = {}
        for device in DEVICES:
            args = ["agent", "run", "--config", str(fleet_dir / f"{device}.toml")]
            if device == COMPROMISED:
                args += ["--fault-plan", str(fleet_dir / "fault-plan.toml")]
            agents[device] = processes.start(device, *args)
        _wait_until_online(mosquitto_broker, fleet, set(DEVICES))

        coordinator_args = ("coordinator", "run", "--config", str(fleet_dir / "coordinator.toml"))
        first = processes.start("coordinator-1", *coordinator_args)
        _wait_for_rounds(rounds_path, first, at_least=2)
        # Freeze the agents so the coordinator is provably waiting for updates of a round
        # in flight (not half-way through writing one) when it is killed.
        for process in agents.values():
            process.send_signal(signal.SIGSTOP)
        time.sleep(FREEZE_S)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=STOP_TIMEOUT_S)
        for process in agents.values():
            process.send_signal(signal.SIGCONT)
        pre_kill_rounds = _read_rounds(rounds_path)
        assert len(pre_kill_rounds) < ROUNDS, "the run finished before the coordinator was killed"
        state_at_kill = StateStore(state_dir).load()
        assert state_at_kill is not None, "no persisted state after the kill"

        second = processes.start("coordinator-2", *coordinator_args)
        second_exit_code = second.wait(timeout=RUN_TIMEOUT_S)
        final_state = StateStore(state_dir).load()
        assert final_state is not None

        for process in agents.values():
            process.send_signal(signal.SIGTERM)
        agent_exit_codes: dict[str, int | None] = {}
        for device, process in agents.items():
            try:
                agent_exit_codes[device] = process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                agent_exit_codes[device] = None
        yield RestartRun(
            fleet_dir=fleet_dir,
            state_dir=state_dir,
            pre_kill_rounds=pre_kill_rounds,
            state_at_kill=state_at_kill,
            post_restart_rounds=_read_rounds(rounds_path)[len(pre_kill_rounds) :],
            final_state=final_state,
            second_exit_code=second_exit_code,
            second_log=processes.log("coordinator-2"),
            agent_exit_codes=agent_exit_codes,
        )
    except BaseException:
        sys.stderr.write(processes.tails())
        raise
    finally:
        processes.close()


def test_restarted_coordinator_exits_0_after_the_configured_rounds(run: RestartRun) -> None:
    assert run.second_exit_code == 0, run.second_log[-3000:]
    assert run.final_state.completed_round == ROUNDS


def test_restarted_coordinator_says_it_resumes_after_the_persisted_round(
    run: RestartRun,
) -> None:
    k = run.state_at_kill.completed_round
    assert f"resuming after round {k} (model version {run.state_at_kill.model_version})" in (
        run.second_log
    )


def test_persisted_state_matches_the_last_summary_before_the_kill(run: RestartRun) -> None:
    k = run.state_at_kill.completed_round
    last = run.pre_kill_rounds[-1]
    assert last["round"] == k
    persisted = {d: round(r, 4) for d, r in run.state_at_kill.reputation.items()}
    assert persisted == last["reputations"]
    assert run.state_at_kill.model_version == last["model_version"]


def test_rounds_before_the_kill_are_contiguous_up_to_the_persisted_round(
    run: RestartRun,
) -> None:
    numbers = [s["round"] for s in run.pre_kill_rounds]
    assert 2 <= run.state_at_kill.completed_round < ROUNDS
    assert numbers == list(range(1, run.state_at_kill.completed_round + 1))


def test_rounds_after_the_restart_continue_from_the_persisted_round(run: RestartRun) -> None:
    k = run.state_at_kill.completed_round
    numbers = [s["round"] for s in run.post_restart_rounds]
    assert numbers == list(range(k + 1, ROUNDS + 1))


def test_model_version_continues_after_the_restart(run: RestartRun) -> None:
    first = run.post_restart_rounds[0]
    steps = 0 if first["skipped"] else 1
    assert first["model_version"] == run.state_at_kill.model_version + steps


def test_compromised_device_lost_reputation_before_the_kill(run: RestartRun) -> None:
    reputation = run.state_at_kill.reputation
    assert reputation[COMPROMISED] < 1.0
    assert all(reputation[d] == 1.0 for d in DEVICES if d != COMPROMISED)


def test_reputation_decay_continues_after_the_restart_instead_of_resetting(
    run: RestartRun,
) -> None:
    at_kill = run.state_at_kill.reputation[COMPROMISED]
    first = run.post_restart_rounds[0]
    after = first["reputations"][COMPROMISED]
    assert after <= round(at_kill, 4)
    if COMPROMISED in first["flagged"]:
        assert after == round(DECAY * at_kill, 4)


def test_final_reputations_keep_the_compromised_device_lowest(run: RestartRun) -> None:
    reputation = run.final_state.reputation
    assert reputation[COMPROMISED] < run.state_at_kill.reputation[COMPROMISED]
    assert reputation[COMPROMISED] < min(reputation[d] for d in DEVICES if d != COMPROMISED)


def test_audit_log_verifies_across_the_kill_and_restart(run: RestartRun) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "byzedge", "audit", "verify", str(run.state_dir / "audit.jsonl")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "chain intact" in result.stdout


def test_agents_exit_0_on_sigterm(run: RestartRun) -> None:
    assert run.agent_exit_codes == dict.fromkeys(DEVICES, 0)
