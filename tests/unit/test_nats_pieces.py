"""The broker-free parts of the NATS cluster support: names, topic rules, settings, init."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from byzedge.cli import main
from byzedge.coordinator.cluster.nats_lease import KvLeaderLease
from byzedge.coordinator.cluster.nats_source import mqtt_topic_of, stream_name, update_subjects
from byzedge.coordinator.config import load_coordinator_config
from byzedge.daemon.mqtt import MqttClient, MqttPayloadError, MqttSettings
from byzedge.edge_agent.config import AgentConfig
from byzedge.protocol.errors import TopicError
from byzedge.protocol.topics import validate_nats_topic


def test_subjects_map_back_to_the_topics_devices_published_on() -> None:
    assert mqtt_topic_of("byzedge.f.update.dev-1") == "byzedge/f/update/dev-1"
    assert mqtt_topic_of("byzedge.f.update.dev-1.chunk.3") == "byzedge/f/update/dev-1/chunk/3"
    # nats-server 2.10 carries a '.' inside a level as '//'.
    assert mqtt_topic_of("byzedge.f.update.dev//1") == "byzedge/f/update/dev.1"


def test_stream_of_a_fleet_captures_its_updates_and_chunks() -> None:
    assert stream_name("fleet-1") == "BYZ_UPDATES_fleet-1"
    assert update_subjects("fleet-1") == "byzedge.fleet-1.update.>"


def test_a_fleet_id_with_a_dot_cannot_have_a_stream() -> None:
    with pytest.raises(ValueError, match="NATS"):
        stream_name("site.a")


@pytest.mark.parametrize(
    "topic",
    ["byzedge/f/update/dev.1", "byzedge/f/update/dev 1", "byzedge/f/update/*", "byzedge/>/x"],
)
def test_topics_nats_server_would_choke_on_are_refused(topic: str) -> None:
    with pytest.raises(TopicError, match="NATS"):
        validate_nats_topic(topic)


def test_ordinary_topics_pass_the_nats_rules() -> None:
    assert validate_nats_topic("byzedge/f/update/dev-1") == "byzedge/f/update/dev-1"


def test_broker_urls_are_the_url_then_the_fallbacks() -> None:
    settings = MqttSettings(url="mqtt://a:1", fallback_urls=("mqtt://b:2", "mqtt://c:3"))
    assert settings.broker_urls == ("mqtt://a:1", "mqtt://b:2", "mqtt://c:3")


def test_fallback_urls_must_share_the_url_scheme() -> None:
    with pytest.raises(ValidationError, match="same scheme"):
        MqttSettings(url="mqtts://a:1", fallback_urls=("mqtt://b:2",))


def test_client_with_nats_rules_refuses_a_dotted_topic_without_sending() -> None:
    client = MqttClient(MqttSettings(topic_rules="nats"), "dev-1", on_message=lambda _t, _p: None)
    delivery = client.publish("byzedge/f/update/dev.1", b"x")
    assert delivery.done
    assert isinstance(delivery.error, MqttPayloadError)
    assert client.pending_acks() == 0


def test_client_with_nats_rules_refuses_qos_2() -> None:
    client = MqttClient(MqttSettings(topic_rules="nats"), "dev-1", on_message=lambda _t, _p: None)
    delivery = client.publish("byzedge/f/update/dev-1", b"x", qos=2)
    assert isinstance(delivery.error, MqttPayloadError)


def test_client_with_mqtt_rules_queues_a_dotted_topic() -> None:
    client = MqttClient(MqttSettings(), "dev-1", on_message=lambda _t, _p: None)
    delivery = client.publish("byzedge/f/update/dev.1", b"x")
    assert not delivery.done
    assert client.pending_acks() == 1


def test_agent_config_refuses_a_dotted_device_id_on_a_nats_broker(tmp_path: Path) -> None:
    fields = {
        "fleet": "f",
        "signing_key": tmp_path / "device.key",
        "coordinator_key": tmp_path / "coordinator.pub",
        "state_dir": tmp_path / "state",
    }
    assert AgentConfig(device_id="dev.1", **fields).device_id == "dev.1"  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="cannot be used on a NATS broker"):
        AgentConfig(
            device_id="dev.1",
            mqtt=MqttSettings(protocol="3.1.1", topic_rules="nats"),
            **fields,  # type: ignore[arg-type]
        )


def test_lease_ttl_below_a_kv_leader_election_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 15"):
        KvLeaderLease(["nats://127.0.0.1:1"], "f", ttl_s=5.0)


def test_init_refuses_a_nats_fleet_whose_id_holds_a_dot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["init", str(tmp_path / "fleet"), "--fleet", "site.a", "--devices", "1"]
    assert main([*args, "--broker", "nats"]) == 2
    assert "NATS" in capsys.readouterr().err


def test_init_for_nats_writes_one_config_and_unit_per_node(tmp_path: Path) -> None:
    root = tmp_path / "fleet"
    args = ["init", str(root), "--fleet", "f", "--devices", "3", "--broker", "nats"]
    assert main([*args, "--node-hosts", "a.example,b.example,c.example"]) == 0
    for node in ("n0", "n1", "n2"):
        config = (root / "broker" / "nats" / f"{node}.conf").read_text()
        assert f"server_name: {node}" in config
        assert '"nats-route://c.example:6222"' in config
        assert (root / "systemd" / f"byzedge-nats-{node}.service").exists()
    agent = (root / "agents" / "dev-002" / "agent.toml").read_text()
    assert 'url = "mqtts://c.example:8883"' in agent
    assert 'fallback_urls = ["mqtts://a.example:8883", "mqtts://b.example:8883"]' in agent


def test_init_for_nats_with_workers_points_them_at_the_jetstream_stream(tmp_path: Path) -> None:
    root = tmp_path / "fleet"
    args = ["init", str(root), "--fleet", "f", "--devices", "1", "--broker", "nats"]
    assert main([*args, "--workers", "2"]) == 0
    config = load_coordinator_config(root / "coordinator" / "coordinator.toml")
    assert config.cluster.workers == 2
    assert config.cluster.broker == "nats"
    assert config.cluster.nats_servers == (
        "tls://localhost:4222",
        "tls://localhost:4223",
        "tls://localhost:4224",
    )
    assert config.mqtt.protocol == "3.1.1"
