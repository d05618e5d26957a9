"""``broker/nats/users.conf``: what ``byzedge init --broker nats`` lets each certificate do.

The cluster tests (tests/integration/test_nats_authorization.py) check that nats-server
enforces it; these check what is written, and that add-device and revoke-device rewrite it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from byzedge.cli import main


def _init(root: Path, *extra: str) -> None:
    args = ["init", str(root), "--fleet", "f", "--devices", "2", "--host", "127.0.0.1"]
    assert main([*args, *extra]) == 0


def _users(root: Path) -> str:
    return (root / "broker" / "nats" / "users.conf").read_text()


def _block(users: str, identity: str) -> str:
    """The entry of user ``CN=identity`` (from its name to the end of its permissions)."""
    start = users.index(f'user: "CN={identity}"')
    return users[start : users.index("\n    }\n", start)]


def test_each_device_may_publish_only_its_own_topics_over_mqtt(tmp_path: Path) -> None:
    root = tmp_path / "fleet"
    _init(root, "--broker", "nats")
    device = _block(_users(root), "dev-001")
    publish = device[device.index("publish:") : device.index("subscribe:")]
    listed = [line.strip() for line in publish.splitlines() if line.strip().startswith('"')]
    assert [subject.strip('"') for subject in listed] == [
        "byzedge.f.update.dev-001",
        "byzedge.f.update.dev-001.>",
        "byzedge.f.status.dev-001",
    ]
    assert 'allowed_connection_types: ["MQTT"]' in device
    assert "$JS" not in device
    assert "_INBOX" not in device


def test_only_the_coordinator_may_use_the_lease_and_the_state(tmp_path: Path) -> None:
    root = tmp_path / "fleet"
    _init(root, "--broker", "nats", "--workers", "1")
    users = _users(root)
    coordinator, ingest = _block(users, "coordinator"), _block(users, "ingest")
    for bucket in ("$KV.byzedge_leader.>", "$O.byzedge_state.>"):
        assert f'"{bucket}"' in coordinator
        assert bucket not in ingest
    for block in (coordinator, ingest):
        assert '"$JS.API.CONSUMER.MSG.NEXT.BYZ_UPDATES_f.ingest"' in block
        assert "STREAM.DELETE" not in block
        assert '"$JS.API.>"' not in block
    # An empty allow list would restrict nothing: the read-only monitor is denied all.
    assert 'publish: { deny: [">"] }' in _block(users, "monitor")


def test_add_and_revoke_rewrite_the_users_and_say_to_reload(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "fleet"
    _init(root, "--broker", "nats")
    assert main(["init", "add-device", str(root), "--device-id", "dev-009"]) == 0
    assert 'user: "CN=dev-009"' in _users(root)
    assert "reload every NATS node" in capsys.readouterr().out
    assert main(["init", "revoke-device", str(root), "dev-000"]) == 0
    users = _users(root)
    assert 'user: "CN=dev-000"' not in users
    assert 'user: "CN=dev-001"' in users
    assert 'user: "CN=dev-009"' in users
    assert "reload every NATS node" in capsys.readouterr().out


def test_a_mosquitto_fleet_has_no_nats_users(tmp_path: Path) -> None:
    root = tmp_path / "fleet"
    _init(root)
    assert not (root / "broker" / "nats").exists()
