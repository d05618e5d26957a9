"""``byzedge monitor --once`` against a private mosquitto, fed by a plain paho client."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from byzedge.cli import main
from byzedge.fleet_sim.brokers import BrokerHandle
from byzedge.protocol import topics

pytestmark = pytest.mark.broker

SUMMARY = {
    "round": 12,
    "model_version": 12,
    "defense": "clipping-vr",
    "cohort_size": 3,
    "accepted": 2,
    "rejected": {"bad-signature": 1},
    "rejected_total": {"bad-signature": 4},
    "flagged": ["dev-666"],
    "reputations": {"dev-001": 0.9731, "dev-666": 0.2142},
    "validation_accuracy": 0.8125,
    "uplink_bytes": 2048,
    "dense_uplink_bytes": 2048,
    "duration_s": 3.5,
    "skipped": False,
    "fallback": None,
    "clip_threshold": 0.42,
    "accepted_devices": ["dev-001"],
}
STATUS = {
    "device_id": "dev-001",
    "state": "online",
    "time": 0.0,  # set per test
    "round": 12,
    "telemetry": {"cpu_percent": 7.0, "memory_percent": 33.0},
}
ALERT = {"round": 12, "device": "dev-666", "reason": "anomalous-update", "score": 6.5}


@pytest.fixture
def publisher(mosquitto_broker: BrokerHandle) -> Iterator[paho.Client]:
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
    client.connect(mosquitto_broker.host, mosquitto_broker.port)
    client.loop_start()
    yield client
    client.disconnect()
    client.loop_stop()


def publish(client: paho.Client, topic: str, data: object, *, retain: bool) -> None:
    client.publish(topic, json.dumps(data).encode(), qos=1, retain=retain).wait_for_publish(5)


def monitor_toml(tmp_path: Path, fleet: str, broker: BrokerHandle) -> Path:
    path = tmp_path / "monitor" / "monitor.toml"
    path.parent.mkdir()
    path.write_text(f'fleet = "{fleet}"\n[mqtt]\nurl = "{broker.url}"\n', encoding="utf-8")
    return path


def run_in_thread(argv: list[str]) -> tuple[threading.Thread, list[int]]:
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(main(argv)), daemon=True)
    thread.start()
    return thread, codes


def test_once_prints_the_round_the_devices_and_an_alert(
    tmp_path: Path,
    mosquitto_broker: BrokerHandle,
    publisher: paho.Client,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fleet = "monitor-once"
    publish(
        publisher,
        topics.device_status_topic(fleet, "dev-001"),
        {**STATUS, "time": time.time()},
        retain=True,
    )
    path = monitor_toml(tmp_path, fleet, mosquitto_broker)

    thread, codes = run_in_thread(
        [
            "monitor",
            "--once",
            "--timeout",
            "10",
            "--alert-suspicious-devices",
            "--config",
            str(path),
        ]
    )
    # Alerts are not retained: keep sending until the monitor, once subscribed, has one.
    deadline = time.monotonic() + 15
    while thread.is_alive() and time.monotonic() < deadline:
        publish(publisher, topics.alerts_topic(fleet), ALERT, retain=False)
        publish(publisher, topics.coordinator_status_topic(fleet), SUMMARY, retain=True)
        thread.join(0.1)

    assert codes == [0]
    captured = capsys.readouterr()
    out = captured.out
    for expected in ("fleet monitor-once", "12", "2/3", "bad-signature 1", "0.42", "0.812"):
        assert expected in out
    for expected in ("dev-001", "0.973", "online", "cpu 7%", "dev-666", "0.214"):
        assert expected in out
    assert "anomalous-update" in out
    alerts = [json.loads(line) for line in captured.err.splitlines() if line.startswith("{")]
    assert alerts
    assert alerts[0]["device"] == "dev-666"
    assert alerts[0]["fleet"] == fleet


def test_once_json_prints_the_folded_retained_state(
    tmp_path: Path,
    mosquitto_broker: BrokerHandle,
    publisher: paho.Client,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fleet = "monitor-json"
    publish(
        publisher,
        topics.device_status_topic(fleet, "dev-001"),
        {**STATUS, "time": time.time()},
        retain=True,
    )
    publish(publisher, topics.coordinator_status_topic(fleet), SUMMARY, retain=True)
    path = monitor_toml(tmp_path, fleet, mosquitto_broker)

    code = main(["monitor", "--once", "--json", "--timeout", "10", "--config", str(path)])

    assert code == 0
    state = json.loads(capsys.readouterr().out)
    assert state["rounds"][-1]["round"] == 12
    assert state["devices"]["dev-001"]["state"] == "online"
    assert state["devices"]["dev-001"]["reputation"] == 0.9731
    assert state["devices"]["dev-666"]["flagged_round"] == 12
    assert state["audit_head"]["status"] == "absent"


def test_once_exits_1_when_no_summary_arrives(
    tmp_path: Path, mosquitto_broker: BrokerHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    path = monitor_toml(tmp_path, "monitor-silent", mosquitto_broker)

    assert main(["monitor", "--once", "--timeout", "0.5", "--config", str(path)]) == 1
    assert "no round summary" in capsys.readouterr().err
