"""The hash-chained audit log: appends verify, any edit, deletion or reordering is found."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from coordinator.audit import AuditLog, verify_audit_log


def write_log(path: Path, records: int = 5) -> None:
    log = AuditLog(path, clock=lambda: 1_700_000_000.0)
    for index in range(records):
        log.append("round-completed", round=index + 1, accepted=[f"dev-{index}"])
    log.close()


def lines_of(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def rewrite(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    path = tmp_path / "state" / "audit.jsonl"
    write_log(path)
    return path


def test_appended_records_verify(log_path: Path) -> None:
    result = verify_audit_log(log_path)

    assert result.ok
    assert result.records == 5
    assert result.first_bad_line is None
    assert result.problem is None


def test_records_carry_sequence_event_data_and_a_link_to_the_previous_hash(
    log_path: Path,
) -> None:
    records = [json.loads(line) for line in lines_of(log_path)]

    assert [r["seq"] for r in records] == [0, 1, 2, 3, 4]
    assert records[0]["prev"] == "0" * 64
    assert all(b["prev"] == a["hash"] for a, b in itertools.pairwise(records))
    assert records[2]["event"] == "round-completed"
    assert records[2]["data"] == {"round": 3, "accepted": ["dev-2"]}


def test_an_empty_log_verifies(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    AuditLog(path).close()

    result = verify_audit_log(path)

    assert result.ok
    assert result.records == 0


def test_editing_a_records_data_is_detected_at_that_line(log_path: Path) -> None:
    lines = lines_of(log_path)
    record = json.loads(lines[2])
    record["data"]["accepted"] = ["dev-evil"]
    lines[2] = json.dumps(record, sort_keys=True, separators=(",", ":"))
    rewrite(log_path, lines)

    result = verify_audit_log(log_path)

    assert not result.ok
    assert result.first_bad_line == 3
    assert result.records == 2
    assert result.problem == "record altered (hash mismatch)"


def test_editing_data_and_recomputing_its_hash_breaks_the_next_link(log_path: Path) -> None:
    # A forger who recomputes the edited record's own hash still breaks the chain after it.
    lines = lines_of(log_path)
    forged = AuditLog(log_path.parent / "forger.jsonl", clock=lambda: 1_700_000_000.0)
    for line in lines[:2]:
        record = json.loads(line)
        forged.append(record["event"], **record["data"])
    forged.append("round-completed", round=3, accepted=["dev-evil"])
    forged.close()
    lines[2] = lines_of(log_path.parent / "forger.jsonl")[2]
    rewrite(log_path, lines)

    result = verify_audit_log(log_path)

    assert not result.ok
    assert result.first_bad_line == 4
    assert result.problem == "chain broken (prev mismatch)"


def test_deleting_a_line_is_detected_at_the_line_after_the_gap(log_path: Path) -> None:
    lines = lines_of(log_path)
    del lines[1]
    rewrite(log_path, lines)

    result = verify_audit_log(log_path)

    assert not result.ok
    assert result.first_bad_line == 2
    assert result.problem == "chain broken (prev mismatch)"


def test_deleting_the_first_line_is_detected_at_line_one(log_path: Path) -> None:
    rewrite(log_path, lines_of(log_path)[1:])

    result = verify_audit_log(log_path)

    assert not result.ok
    assert result.first_bad_line == 1


def test_swapping_two_lines_is_detected_at_the_first_swapped_line(log_path: Path) -> None:
    lines = lines_of(log_path)
    lines[2], lines[3] = lines[3], lines[2]
    rewrite(log_path, lines)

    result = verify_audit_log(log_path)

    assert not result.ok
    assert result.first_bad_line == 3
    assert result.records == 2


def test_an_unparseable_line_is_reported(log_path: Path) -> None:
    lines = lines_of(log_path)
    lines[3] = lines[3][:-10]
    rewrite(log_path, lines)

    result = verify_audit_log(log_path)

    assert not result.ok
    assert result.first_bad_line == 4
    assert result.problem == "unparseable record"


def test_reopening_the_log_continues_the_chain(log_path: Path) -> None:
    last_before = json.loads(lines_of(log_path)[-1])

    reopened = AuditLog(log_path)
    reopened.append("coordinator-start", completed_round=5)
    reopened.close()

    lines = lines_of(log_path)
    appended = json.loads(lines[-1])
    assert len(lines) == 6
    assert appended["seq"] == last_before["seq"] + 1
    assert appended["prev"] == last_before["hash"]
    result = verify_audit_log(log_path)
    assert result.ok
    assert result.records == 6
