"""The ``byzedge`` command line: dispatch, exit codes and one-line errors."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from byzedge.cli import main
from byzedge.coordinator.audit import AuditLog, SignedHead
from byzedge.protocol.signing import SigningKey


@pytest.fixture
def fleet(tmp_path: Path) -> Path:
    """A fleet folder with keys, one enrolled device and valid configs for both daemons."""
    assert (
        main(["keys", "generate", "coordinator", "dev-000", "--dir", str(tmp_path / "keys")]) == 0
    )
    devices = tmp_path / "devices"
    devices.mkdir()
    (devices / "dev-000.pub").write_bytes((tmp_path / "keys" / "dev-000.pub").read_bytes())
    (tmp_path / "coordinator.toml").write_text(
        'fleet = "cli"\n'
        'signing_key = "keys/coordinator.key"\n'
        'devices_dir = "devices"\n'
        'state_dir = "state/coordinator"\n'
    )
    (tmp_path / "agent.toml").write_text(
        'fleet = "cli"\n'
        'device_id = "dev-000"\n'
        'signing_key = "keys/dev-000.key"\n'
        'coordinator_key = "keys/coordinator.pub"\n'
        'state_dir = "state/dev-000"\n'
    )
    return tmp_path


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "usage: byzedge" in capsys.readouterr().out


def test_no_arguments_prints_usage_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: byzedge" in capsys.readouterr().out


def test_unknown_command_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_subcommand_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["agent", "--help"])
    assert exit_info.value.code == 0
    assert "infer" in capsys.readouterr().out


def test_keys_generate_writes_private_key_0600_and_public_key(tmp_path: Path) -> None:
    assert main(["keys", "generate", "dev-007", "--dir", str(tmp_path)]) == 0

    key, pub = tmp_path / "dev-007.key", tmp_path / "dev-007.pub"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert pub.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")


def test_keys_generate_refuses_to_overwrite_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keys", "generate", "dev-007", "--dir", str(tmp_path)]) == 0
    before = (tmp_path / "dev-007.key").read_bytes()

    assert main(["keys", "generate", "dev-007", "--dir", str(tmp_path)]) == 1
    assert "--force" in capsys.readouterr().err
    assert (tmp_path / "dev-007.key").read_bytes() == before


def test_keys_generate_force_replaces_the_key(tmp_path: Path) -> None:
    assert main(["keys", "generate", "dev-007", "--dir", str(tmp_path)]) == 0
    before = (tmp_path / "dev-007.key").read_bytes()

    assert main(["keys", "generate", "dev-007", "--dir", str(tmp_path), "--force"]) == 0
    assert (tmp_path / "dev-007.key").read_bytes() != before


def test_keys_generate_rejects_an_invalid_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keys", "generate", "bad/name", "--dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("byzedge keys:")
    assert list(tmp_path.iterdir()) == []


def test_coordinator_check_config_accepts_a_valid_fleet(
    fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["coordinator", "check-config", "--config", str(fleet / "coordinator.toml")]) == 0
    assert "ok (fleet cli, 1 enrolled devices)" in capsys.readouterr().out


def test_agent_check_config_accepts_a_valid_device(
    fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["agent", "check-config", "--config", str(fleet / "agent.toml")]) == 0
    assert "ok (device dev-000" in capsys.readouterr().out


def test_coordinator_check_config_names_an_unknown_key_in_one_line(
    fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = fleet / "coordinator.toml"
    config.write_text(config.read_text() + "reputaton_decay = 0.9\n")

    assert main(["coordinator", "check-config", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "reputaton_decay" in err


def test_agent_check_config_names_an_unknown_nested_key_in_one_line(
    fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = fleet / "agent.toml"
    config.write_text(config.read_text() + "[training]\nepoch = 3\n")

    assert main(["agent", "check-config", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "training.epoch" in err


def test_coordinator_check_config_reports_a_missing_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["coordinator", "check-config", "--config", str(tmp_path / "nope.toml")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_agent_check_config_reports_a_missing_key_file(
    fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (fleet / "keys" / "dev-000.key").unlink()

    assert main(["agent", "check-config", "--config", str(fleet / "agent.toml")]) == 2
    key = fleet / "keys" / "dev-000.key"
    assert capsys.readouterr().err == (
        f"byzedge agent: signing_key {key}: no such file or directory\n"
    )


def _write_audit_log(path: Path) -> None:
    log = AuditLog(path)
    for round_number in range(1, 4):
        log.append("round-completed", round=round_number, accepted=3)
    log.close()


def test_audit_verify_accepts_an_intact_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "audit.jsonl"
    _write_audit_log(path)

    assert main(["audit", "verify", str(path)]) == 0
    assert "3 records, chain intact" in capsys.readouterr().out


def test_audit_verify_exits_3_on_a_tampered_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "audit.jsonl"
    _write_audit_log(path)
    lines = path.read_text().splitlines()
    record = json.loads(lines[1])
    record["data"]["accepted"] = 2
    lines[1] = json.dumps(record, sort_keys=True, separators=(",", ":"))
    path.write_text("\n".join(lines) + "\n")

    assert main(["audit", "verify", str(path)]) == 3
    assert "line 2: record altered" in capsys.readouterr().err


def test_audit_verify_exits_3_when_a_record_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _write_audit_log(path)
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], lines[2]]) + "\n")

    assert main(["audit", "verify", str(path)]) == 3


def test_audit_verify_reports_a_missing_log_as_usage_error(tmp_path: Path) -> None:
    assert main(["audit", "verify", str(tmp_path / "audit.jsonl")]) == 2


def test_audit_verify_without_a_key_says_signatures_were_not_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "audit.jsonl"
    _write_audit_log(path)

    assert main(["audit", "verify", str(path)]) == 0
    assert "signatures not checked (no --key)" in capsys.readouterr().out


def _write_signed_audit_log(directory: Path) -> tuple[Path, Path]:
    """A signed audit log of 3 rounds and the coordinator's public key file."""
    key = SigningKey.generate()
    key.save(directory / "keys" / "coordinator.key")
    path = directory / "state" / "audit.jsonl"
    with AuditLog(path, signing_key=key) as log:
        for round_number in range(1, 4):
            log.append("round-completed", round=round_number, accepted=3)
            log.checkpoint(round_number)
    return path, directory / "keys" / "coordinator.pub"


def test_audit_verify_with_the_key_checks_the_signed_checkpoints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, pub = _write_signed_audit_log(tmp_path)

    assert main(["audit", "verify", str(path), "--key", str(pub)]) == 0
    out = capsys.readouterr().out
    assert "6 records, chain intact" in out
    assert "3 checkpoint(s) signed; signed head at seq 4 (round 3) matches" in out


def test_audit_verify_with_the_key_exits_3_on_a_truncated_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, pub = _write_signed_audit_log(tmp_path)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:3]) + "\n")

    assert main(["audit", "verify", str(path), "--key", str(pub)]) == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"{path}: line 3: log ends at seq 2 but the signed head" in err


def test_audit_verify_with_the_key_exits_3_without_the_head_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, pub = _write_signed_audit_log(tmp_path)
    (path.parent / "audit.head.json").unlink()

    assert main(["audit", "verify", str(path), "--key", str(pub)]) == 3
    assert "audit.head.json: signed head file missing" in capsys.readouterr().err


def test_audit_verify_exits_3_when_the_log_lacks_a_published_head(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, pub = _write_signed_audit_log(tmp_path)
    published = json.dumps(
        {"round": 3, "audit_head": json.loads((path.parent / "audit.head.json").read_text())}
    )
    lines = path.read_text().splitlines()
    older = json.loads(lines[3])["data"]  # round 2's checkpoint
    path.write_text("\n".join(lines[:4]) + "\n")
    (path.parent / "audit.head.json").write_text(json.dumps(older))
    assert main(["audit", "verify", str(path), "--key", str(pub)]) == 0

    assert main(["audit", "verify", str(path), "--key", str(pub), "--head", published]) == 3
    assert "the given head is at seq 4" in capsys.readouterr().err


def test_audit_verify_reads_a_published_head_from_a_file(tmp_path: Path) -> None:
    path, pub = _write_signed_audit_log(tmp_path)
    saved = tmp_path / "retained-status.json"
    saved.write_bytes(SignedHead.load(path.parent / "audit.head.json").to_bytes())

    assert main(["audit", "verify", str(path), "--key", str(pub), "--head", str(saved)]) == 0


def test_audit_verify_with_another_key_exits_3(tmp_path: Path) -> None:
    path, _ = _write_signed_audit_log(tmp_path)
    SigningKey.generate().save(tmp_path / "other.key")

    assert main(["audit", "verify", str(path), "--key", str(tmp_path / "other.pub")]) == 3


def test_audit_verify_reports_an_unreadable_key_as_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = _write_signed_audit_log(tmp_path)
    (tmp_path / "bad.pub").write_text("not a key")

    assert main(["audit", "verify", str(path), "--key", str(tmp_path / "bad.pub")]) == 2
    assert "cannot load the public key" in capsys.readouterr().err


def test_demo_rejects_an_unknown_defense(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--defense", "nope"]) == 2
    assert "unknown defense 'nope'" in capsys.readouterr().err


# -- train and reputation ------------------------------------------------------------


def test_train_forwards_certified_robustness_to_the_coordinator(
    fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(fleet / "coordinator.toml")

    # The flag is accepted and forwarded: the run then stops at the config's real error.
    argv = ["train", "--config", config, "--certified-robustness", "--byzantine-defense", "nope"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "unknown rule 'nope'" in err
    assert "unrecognized" not in err


def test_train_rejects_an_unknown_defense_as_a_config_error(
    fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(fleet / "coordinator.toml")

    assert main(["train", "--config", config, "--byzantine-defense", "nope"]) == 2
    assert "byzantine_defense: Value error, unknown rule 'nope'" in capsys.readouterr().err


def test_train_rejects_a_byzantine_fraction_out_of_range(
    fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(fleet / "coordinator.toml")

    assert main(["train", "--config", config, "--max-byzantine-fraction", "0.7"]) == 2
    assert "max_byzantine_fraction" in capsys.readouterr().err


def test_reputation_list_without_state_says_so(
    fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(fleet / "coordinator.toml")

    assert main(["coordinator", "reputation", "list", "--config", config]) == 0
    assert "no reputations yet" in capsys.readouterr().out


def test_reputation_list_prints_the_lowest_first(
    fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import numpy as np  # noqa: PLC0415

    from byzedge.coordinator.state import CoordinatorState, StateStore  # noqa: PLC0415

    StateStore(fleet / "state" / "coordinator").save(
        CoordinatorState(
            fleet="cli",
            model="mlp",
            completed_round=12,
            model_version=12,
            params=np.zeros(3, np.float32),
            reputation={"dev-000": 0.9, "dev-001": 0.25},
        )
    )

    assert (
        main(["coordinator", "reputation", "list", "--config", str(fleet / "coordinator.toml")])
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "fleet cli, after round 12 (lowest first)"
    assert lines[1].split() == ["dev-001", "0.2500"]
    assert lines[2].split() == ["dev-000", "0.9000"]


def test_reputation_reset_leaves_a_request_for_the_coordinator(
    fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from byzedge.coordinator.requests import take_reputation_resets  # noqa: PLC0415

    config = str(fleet / "coordinator.toml")

    assert main(["coordinator", "reputation", "reset", "dev-000", "--config", config]) == 0
    assert "records it in the audit log" in capsys.readouterr().out
    assert take_reputation_resets(fleet / "state" / "coordinator") == ["dev-000"]


def test_reputation_reset_refuses_a_bad_device_id(
    fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(fleet / "coordinator.toml")

    assert main(["coordinator", "reputation", "reset", "../x", "--config", config]) == 2
    assert capsys.readouterr().err.startswith("byzedge coordinator: ")
