"""A fleet for sharded-ingest tests: a private mosquitto, a coordinator folder, load devices.

Daemons run as separate processes of the installed ``byzedge`` command (the leader is
``byzedge coordinator run``, each worker ``byzedge coordinator ingest-worker``), so tests
can SIGKILL any of them. The devices are simulated (:mod:`byzedge.fleet_sim.loadgen`'s
keys): :class:`DeviceDriver` publishes each round's pre-sealed updates when the round's
signed model arrives, publishes them again when the model of the same round comes again
(a restarted coordinator), and, like an agent, re-sends a device's update when the
coordinator's receipts omit it (:class:`~byzedge.edge_agent.receipts.ResendTimer`). The
same sealed bytes can be played to two coordinators, so their results compare exactly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from provisioned import Daemon

from byzedge.coordinator.state import CoordinatorState, StateStore
from byzedge.daemon.rotating import iter_lines
from byzedge.edge_agent.receipts import ResendTimer
from byzedge.fleet_sim.brokers import BrokerHandle, start_mosquitto
from byzedge.fleet_sim.loadgen import LoadDevices
from byzedge.models import get_model_spec
from byzedge.protocol import topics
from byzedge.protocol.codecs import CodecContext, build_codec
from byzedge.protocol.envelope import Header, seal
from byzedge.protocol.errors import ProtocolError
from byzedge.protocol.manifest import open_global_model
from byzedge.protocol.receipts import open_receipt
from byzedge.protocol.signing import SigningKey

FLEET = "cl"
MODEL = "mlp"


@dataclass
class SealedUpdate:
    device: str
    topic: str
    payload: bytes


@dataclass
class ClusterFleet:
    """A coordinator folder (key, enrolled load devices) and a broker to run it on."""

    root: Path
    devices: LoadDevices
    key: SigningKey
    broker: BrokerHandle | None = None
    processes: list[Daemon] = field(default_factory=list)

    @property
    def dim(self) -> int:
        return get_model_spec(MODEL).dim

    def start_broker(self) -> BrokerHandle:
        self.broker = start_mosquitto(workdir=self.root / f"broker-{len(self.processes)}")
        return self.broker

    def write_config(self, name: str, *, workers: int = 0, **settings: Any) -> Path:
        """``ROOT/NAME/coordinator.toml``, its state in ``ROOT/NAME/state``."""
        assert self.broker is not None
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        values = {
            "fleet": FLEET,
            "signing_key": str(self.root / "coordinator.key"),
            "devices_dir": str(self.root / "devices"),
            "state_dir": str(folder / "state"),
            "model": MODEL,
            "validation": "none",
            "round_interval_s": 0.0,
            "round_timeout_s": 60.0,
            "max_update_bytes": 131072,
            **settings,
        }
        lines = [f"{key} = {json.dumps(value)}" for key, value in values.items()]
        lines += ["", "[mqtt]", f'url = "{self.broker.url}"', "reconnect_max_s = 2.0"]
        lines += ["", "[cluster]", f"workers = {workers}", "partial_flush_s = 0.2"]
        path = folder / "coordinator.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def spawn(self, name: str, *args: str) -> Daemon:
        log = self.root / "logs" / f"{name}.log"
        log.parent.mkdir(exist_ok=True)
        environment = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        with log.open("ab") as out:
            process = subprocess.Popen(
                [str(Path(sys.executable).with_name("byzedge")), *args],
                cwd=self.root,
                env=environment,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        made = Daemon(name, process, log)
        self.processes.append(made)
        return made

    def coordinator(self, config: Path, name: str = "coordinator", *args: str) -> Daemon:
        return self.spawn(name, "coordinator", "run", "--config", str(config), *args)

    def worker(self, config: Path, number: int) -> Daemon:
        return self.spawn(
            f"worker-{number}",
            "coordinator",
            "ingest-worker",
            "--config",
            str(config),
            "--worker",
            str(number),
            "--log-level",
            "DEBUG",
        )

    def wait_for_log(self, process: Daemon, text: str, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while text not in process.log_text():
            if time.monotonic() > deadline or process.process.poll() is not None:
                self.fail(f"{process.name} did not log {text!r}")
            time.sleep(0.05)

    def start_workers(self, config: Path, count: int) -> list[Daemon]:
        """Start ``count`` workers and wait until each consumes the update stream."""
        started = [self.worker(config, number) for number in range(1, count + 1)]
        for process in started:
            self.wait_for_log(process, "consuming the fleet's updates")
        return started

    def rounds(self, name: str) -> list[dict[str, Any]]:
        path = self.root / name / "state" / "rounds.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in iter_lines(path) if line.strip()]

    def state(self, name: str) -> CoordinatorState:
        state = StateStore(self.root / name / "state").load()
        assert state is not None
        return state

    def wait_for_rounds(self, name: str, count: int, timeout_s: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while len(summaries := self.rounds(name)) < count:
            if time.monotonic() > deadline:
                self.fail(f"{name}: {len(summaries)} of {count} rounds")
            time.sleep(0.1)
        return summaries

    def fail(self, message: str) -> None:
        tails = "\n".join(f"--- {p.name}\n{p.log_text()[-3000:]}" for p in self.processes)
        pytest.fail(f"{message}\n{tails}", pytrace=False)

    def stop_all(self) -> None:
        for process in self.processes:
            if process.process.poll() is None:
                process.kill()
        if self.broker is not None:
            self.broker.stop()


@contextmanager
def cluster_fleet(tmp_path: Path, devices: int) -> Iterator[ClusterFleet]:
    key = SigningKey.generate()
    key.save(tmp_path / "coordinator.key")
    load = LoadDevices.generate(devices, prefix="dev")
    load.enrol(tmp_path / "devices")
    fleet = ClusterFleet(tmp_path, load, key)
    try:
        yield fleet
    finally:
        fleet.stop_all()


def seal_update(
    fleet: ClusterFleet,
    index: int,
    round_number: int,
    vector: np.ndarray,
    *,
    counter: int,
    version: int | None = None,
) -> SealedUpdate:
    """Device ``index``'s dense update for ``round_number`` (from model ``round - 1``)."""
    device, key = fleet.devices.ids[index], fleet.devices.keys[index]
    codec = build_codec("dense")
    body = codec.encode(
        vector.astype(np.float32), context=CodecContext(FLEET, round_number, device)
    )
    now = int(time.time() * 1000)
    header = Header(
        kind="update",
        fleet=FLEET,
        sender=device,
        round=round_number,
        base_version=round_number - 1 if version is None else version,
        codec="dense",
        dim=fleet.dim,
        counter=counter,
        created_ms=now,
        expires_ms=now + 3_600_000,
    )
    payload = seal(header, body, key).to_bytes()
    return SealedUpdate(device, topics.update_topic(FLEET, device), payload)


Schedule = dict[int, list[tuple[float, Sequence[SealedUpdate]]]]
"""``round -> [(delay after the round's model, messages), ...]``."""


class DeviceDriver:
    """Plays the devices' side of rounds over MQTT (see the module docstring).

    Parameters
    ----------
    fleet:
        The fleet (its broker must be up).
    schedule:
        What the devices send when a round's model comes, and when. The last message of a
        device in a round is the update it keeps and re-sends.
    grace_s:
        The receipts' grace period (:class:`ResendTimer`).
    """

    def __init__(self, fleet: ClusterFleet, schedule: Schedule, grace_s: float = 3.0) -> None:
        assert fleet.broker is not None
        self._fleet = fleet
        self._schedule = schedule
        self._verify = fleet.key.verify_key
        self._timers = {d: ResendTimer(d, grace_s) for d in fleet.devices.ids}
        self._kept: dict[str, SealedUpdate] = {}
        self._lock = threading.Lock()
        self.published = 0
        self.resent: list[tuple[int, str]] = []
        self.models: list[int] = []
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"driver-{id(self)}")
        self._client.max_inflight_messages_set(200)
        self._client.on_message = self._on_message
        # Subscribed on every CONNACK: a reconnect (a NATS node failing over the MQTT
        # sessions) may start a clean session, and devices must still see the rounds.
        self._client.on_connect = self._on_connect
        # A NATS node refuses SUBSCRIBEs while its MQTT session stream elects a leader:
        # asked again a second later, as the product's client (daemon.mqtt) does.
        self._client.on_subscribe = self._on_subscribe
        self._client.connect(fleet.broker.host, fleet.broker.port)
        self._client.loop_start()

    def _subscribe(self) -> None:
        self._client.subscribe([(topics.model_topic(FLEET), 1), (topics.receipts_topic(FLEET), 1)])

    def _on_connect(
        self, _client: Any, _userdata: Any, _flags: Any, _reason: Any, _props: Any
    ) -> None:
        self._subscribe()

    def _on_subscribe(
        self, _client: Any, _userdata: Any, _mid: int, reasons: Any, _props: Any
    ) -> None:
        if any(getattr(reason, "is_failure", False) for reason in reasons):
            retry = threading.Timer(1.0, self._subscribe)
            retry.daemon = True
            retry.start()

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_message(self, _client: Any, _userdata: Any, message: paho.MQTTMessage) -> None:
        payload = bytes(message.payload)
        try:
            if message.topic == topics.model_topic(FLEET):
                self._on_model(payload)
            else:
                self._on_receipt(payload)
        except ProtocolError:
            pass

    def _on_model(self, payload: bytes) -> None:
        model = open_global_model(payload, self._verify, fleet=FLEET, max_bytes=1 << 26)
        if model.final:
            return
        self.models.append(model.round)
        batches = self._schedule.get(model.round, [])
        thread = threading.Thread(
            target=self._play, args=(model.round, model.version, batches), daemon=True
        )
        thread.start()

    def _play(
        self, round_number: int, version: int, batches: list[tuple[float, Sequence[SealedUpdate]]]
    ) -> None:
        started = time.monotonic()
        for delay, messages in batches:
            time.sleep(max(0.0, started + delay - time.monotonic()))
            now = time.monotonic()
            with self._lock:
                for message in messages:
                    self._timers[message.device].sent(round_number, version, now)
                    self._kept[message.device] = message
            for message in messages:
                self._client.publish(message.topic, message.payload, qos=1)
                self.published += 1

    def _on_receipt(self, payload: bytes) -> None:
        receipt = open_receipt(payload, self._verify, fleet=FLEET)
        now = time.monotonic()
        with self._lock:
            again = [
                self._kept[d]
                for d, timer in self._timers.items()
                if d in self._kept and timer.observe(receipt, now)
            ]
        for message in again:
            self.resent.append((receipt.round, message.device))
            self._client.publish(message.topic, message.payload, qos=1)
