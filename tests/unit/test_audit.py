"""The audit log: hash chain, signed checkpoints, rotation, crash recovery, budgets."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from byzedge.coordinator.audit import (
    AuditError,
    AuditLog,
    RecordBudget,
    SignedHead,
    head_path_for,
    verify_audit_log,
)
from byzedge.protocol.signing import SigningKey


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


# -- signed checkpoints --------------------------------------------------------------------

KEY = SigningKey.generate()
OTHER_KEY = SigningKey.generate()
CLOCK = 1_700_000_000.0


def write_signed_log(
    path: Path, rounds: int = 4, events_per_round: int = 2, **options: Any
) -> AuditLog:
    """Rounds of events, each round closed by a checkpoint; returns the closed log."""
    log = AuditLog(path, clock=lambda: CLOCK, signing_key=KEY, **options)
    for round_number in range(1, rounds + 1):
        for index in range(events_per_round):
            log.append("update-accepted", round=round_number, device=f"dev-{index}")
        log.checkpoint(round_number)
    log.close()
    return log


def records_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines_of(path)]


def rebuild_chain(records: list[dict[str, Any]]) -> list[str]:
    """What a forger without the key does: recompute every prev link and hash."""
    prev = "0" * 64
    lines = []
    for original in records:
        record = {k: v for k, v in original.items() if k != "hash"}
        record["prev"] = prev
        canonical = json.dumps(record, sort_keys=True, separators=(",", ":"))
        record["hash"] = prev = hashlib.sha256(canonical.encode()).hexdigest()
        lines.append(json.dumps(record, sort_keys=True, separators=(",", ":")))
    return lines


@pytest.fixture
def signed_path(tmp_path: Path) -> Path:
    path = tmp_path / "state" / "audit.jsonl"
    write_signed_log(path)
    return path


def test_a_checkpoint_record_signs_the_record_before_it(signed_path: Path) -> None:
    records = records_of(signed_path)
    checkpoint = records[2]

    assert checkpoint["event"] == "checkpoint"
    assert checkpoint["data"]["seq"] == records[1]["seq"]
    assert checkpoint["data"]["hash"] == records[1]["hash"] == checkpoint["prev"]
    assert checkpoint["data"]["round"] == 1
    head = SignedHead.from_dict(checkpoint["data"])
    head.verify(KEY.verify_key)


def test_checkpoint_writes_the_head_file_and_returns_the_same_head(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, clock=lambda: CLOCK, signing_key=KEY) as log:
        log.append("round-completed", round=1)
        head = log.checkpoint(1)

    assert head_path_for(path) == tmp_path / "audit.head.json"
    assert SignedHead.load(tmp_path / "audit.head.json") == head
    assert SignedHead.from_json(head.to_bytes()) == head
    assert (head.seq, head.round, head.time_ms, head.key_id) == (
        0,
        1,
        1_700_000_000_000,
        KEY.key_id,
    )
    assert head.hash == records_of(path)[0]["hash"]


def test_a_head_is_read_from_a_status_message_that_carries_it(signed_path: Path) -> None:
    head = SignedHead.load(head_path_for(signed_path))
    status = json.dumps({"round": 4, "accepted": 2, "audit_head": head.to_dict()})

    assert SignedHead.from_json(status) == head


def test_a_head_whose_round_was_changed_does_not_verify(signed_path: Path) -> None:
    head = SignedHead.load(head_path_for(signed_path))
    altered = dataclasses.replace(head, round=head.round + 1)

    with pytest.raises(AuditError, match="does not verify"):
        altered.verify(KEY.verify_key)


def test_a_malformed_head_is_refused() -> None:
    with pytest.raises(AuditError):
        SignedHead.from_json('{"format": "byzedge-audit-head", "version": 1, "seq": "x"}')


def test_checkpoint_without_a_signing_key_is_refused(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "audit.jsonl") as log:
        log.append("round-completed", round=1)
        with pytest.raises(RuntimeError, match="no signing key"):
            log.checkpoint(1)


def test_reserved_events_cannot_be_appended(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "audit.jsonl") as log, pytest.raises(ValueError, match="reserved"):
        log.append("checkpoint", round=1)


def test_a_signed_log_verifies_with_its_key(signed_path: Path) -> None:
    result = verify_audit_log(signed_path, key=KEY.verify_key)

    assert result.ok, result.describe()
    assert result.signatures_checked
    assert result.checkpoints == 4
    assert result.records == 12
    assert (result.signed_seq, result.signed_round) == (10, 4)
    assert result.unsigned_records == 1  # the final checkpoint record itself


def test_without_a_key_the_result_says_signatures_were_not_checked(signed_path: Path) -> None:
    result = verify_audit_log(signed_path)

    assert result.ok
    assert not result.signatures_checked
    assert "signatures not checked" in result.describe()


def test_records_after_the_last_checkpoint_are_counted_as_chain_only(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_signed_log(path, rounds=1)
    with AuditLog(path, clock=lambda: CLOCK, signing_key=KEY) as log:
        log.append("update-accepted", round=2, device="dev-0")
        log.append("update-accepted", round=2, device="dev-1")

    result = verify_audit_log(path, key=KEY.verify_key)

    assert result.ok
    assert result.unsigned_records == 3
    assert "3 record(s) after it are covered by the chain only" in result.describe()


def test_an_edited_record_in_a_signed_log_fails_at_its_line(signed_path: Path) -> None:
    lines = lines_of(signed_path)
    record = json.loads(lines[4])
    record["data"]["device"] = "dev-evil"
    lines[4] = json.dumps(record, sort_keys=True, separators=(",", ":"))
    rewrite(signed_path, lines)

    result = verify_audit_log(signed_path, key=KEY.verify_key)

    assert not result.ok
    assert (result.file, result.first_bad_line) == (signed_path, 5)
    assert result.problem == "record altered (hash mismatch)"


def test_reordered_records_in_a_signed_log_fail(signed_path: Path) -> None:
    lines = lines_of(signed_path)
    lines[3], lines[4] = lines[4], lines[3]
    rewrite(signed_path, lines)

    result = verify_audit_log(signed_path, key=KEY.verify_key)

    assert not result.ok
    assert result.first_bad_line == 4
    assert result.problem == "chain broken (prev mismatch)"


def test_a_deleted_middle_record_in_a_signed_log_fails(signed_path: Path) -> None:
    lines = lines_of(signed_path)
    del lines[6]
    rewrite(signed_path, lines)

    result = verify_audit_log(signed_path, key=KEY.verify_key)

    assert not result.ok
    assert result.first_bad_line == 7


def test_a_truncated_tail_fails_against_the_signed_head_file(signed_path: Path) -> None:
    lines = lines_of(signed_path)
    rewrite(signed_path, lines[:7])

    result = verify_audit_log(signed_path, key=KEY.verify_key)

    assert not result.ok
    assert result.file == signed_path
    assert result.first_bad_line == 7
    assert "log ends at seq 6 but the signed head (audit.head.json) is at seq 10" in (
        result.problem or ""
    )


def test_a_truncated_tail_passes_the_chain_only_check(signed_path: Path) -> None:
    # What a check without the key cannot see: a shorter chain is still a valid chain.
    rewrite(signed_path, lines_of(signed_path)[:7])

    assert verify_audit_log(signed_path).ok


def test_a_missing_head_file_fails_with_a_key(signed_path: Path) -> None:
    head_path_for(signed_path).unlink()

    result = verify_audit_log(signed_path, key=KEY.verify_key)

    assert not result.ok
    assert result.file == head_path_for(signed_path)
    assert "signed head file missing" in (result.problem or "")


def test_a_chain_rebuilt_after_an_edit_fails_the_next_checkpoint(signed_path: Path) -> None:
    records = records_of(signed_path)
    records[4]["data"]["device"] = "dev-evil"
    rewrite(signed_path, rebuild_chain(records))

    result = verify_audit_log(signed_path, key=KEY.verify_key)

    assert not result.ok
    assert result.first_bad_line == 6  # the round's checkpoint no longer matches
    assert result.problem == "checkpoint does not sign the record before it"


def test_a_chain_rebuilt_with_updated_checkpoints_fails_their_signatures(
    signed_path: Path,
) -> None:
    records = records_of(signed_path)
    records[4]["data"]["device"] = "dev-evil"
    forged = rebuild_chain(records)
    # The forger also points each checkpoint at its new predecessor, and rebuilds again.
    for index, record in enumerate(records):
        if record["event"] == "checkpoint":
            record["data"]["hash"] = json.loads(forged[index - 1])["hash"]
            forged = rebuild_chain(records)
    rewrite(signed_path, forged)

    result = verify_audit_log(signed_path, key=KEY.verify_key)

    assert not result.ok
    assert result.first_bad_line == 6
    assert "checkpoint signature does not verify" in (result.problem or "")


def test_a_chain_rebuilt_with_updated_checkpoints_passes_without_a_key(
    signed_path: Path,
) -> None:
    records = records_of(signed_path)
    records[4]["data"]["device"] = "dev-evil"
    forged = rebuild_chain(records)
    for index, record in enumerate(records):
        if record["event"] == "checkpoint":
            record["data"]["hash"] = json.loads(forged[index - 1])["hash"]
            forged = rebuild_chain(records)
    rewrite(signed_path, forged)

    assert verify_audit_log(signed_path).ok


def test_a_different_key_fails_at_the_first_checkpoint(signed_path: Path) -> None:
    result = verify_audit_log(signed_path, key=OTHER_KEY.verify_key)

    assert not result.ok
    assert result.first_bad_line == 3
    assert f"signed by key {KEY.key_id}, not by the given key {OTHER_KEY.key_id}" in (
        result.problem or ""
    )


def test_an_older_head_plus_truncation_is_caught_only_by_the_published_head(
    signed_path: Path,
) -> None:
    published = SignedHead.load(head_path_for(signed_path))
    lines = lines_of(signed_path)
    older = SignedHead.from_dict(json.loads(lines[5])["data"])  # round 2's checkpoint
    rewrite(signed_path, lines[:6])
    head_path_for(signed_path).write_text(older.to_json())

    local = verify_audit_log(signed_path, key=KEY.verify_key)
    against_published = verify_audit_log(signed_path, key=KEY.verify_key, head=published)

    assert local.ok
    assert not against_published.ok
    assert "the given head is at seq 10" in (against_published.problem or "")


def test_a_published_head_that_is_not_in_the_log_fails(signed_path: Path) -> None:
    published = SignedHead.load(head_path_for(signed_path))
    elsewhere = signed_path.parent / "other" / "audit.jsonl"
    write_signed_log(elsewhere, rounds=4, events_per_round=3)

    result = verify_audit_log(elsewhere, key=KEY.verify_key, head=published)

    assert not result.ok
    assert "does not match the given head" in (result.problem or "")


def test_a_forged_head_file_fails(signed_path: Path) -> None:
    head = SignedHead.load(head_path_for(signed_path))
    forged = SignedHead.sign(
        OTHER_KEY, seq=head.seq, hash=head.hash, round=head.round, time_ms=head.time_ms
    )
    head_path_for(signed_path).write_text(forged.to_json())

    result = verify_audit_log(signed_path, key=KEY.verify_key)

    assert not result.ok
    assert result.file == head_path_for(signed_path)
    assert "signed head file" in (result.problem or "")


def test_a_head_file_older_than_the_newest_checkpoint_is_rewritten_on_reopen(
    signed_path: Path,
) -> None:
    # A crash between appending the checkpoint and replacing the head file.
    older = SignedHead.from_dict(records_of(signed_path)[5]["data"])
    head_path_for(signed_path).write_text(older.to_json())
    assert (
        "older than the log's newest checkpoint"
        in verify_audit_log(signed_path, key=KEY.verify_key).describe()
    )

    AuditLog(signed_path, signing_key=KEY).close()

    assert SignedHead.load(head_path_for(signed_path)).seq == 10


# -- crash safety --------------------------------------------------------------------------


def test_a_torn_last_line_is_a_note_until_the_restart(signed_path: Path) -> None:
    with signed_path.open("a", encoding="utf-8") as handle:
        handle.write('{"seq":12,"time":1700000000.0,"event":"upd')

    result = verify_audit_log(signed_path, key=KEY.verify_key)

    assert result.ok
    assert "line 13: torn last line" in result.describe()


def test_a_restart_cuts_a_torn_last_line_and_continues_the_chain(signed_path: Path) -> None:
    torn = '{"seq":12,"time":1700000000.0,"event":"upd'
    with signed_path.open("a", encoding="utf-8") as handle:
        handle.write(torn)

    with AuditLog(signed_path, clock=lambda: CLOCK, signing_key=KEY) as log:
        log.append("coordinator-start", completed_round=4)
        log.checkpoint(4)

    records = records_of(signed_path)
    repaired = records[12]
    assert repaired["event"] == "log-repaired"
    assert repaired["data"] == {
        "discarded_bytes": len(torn),
        "sha256": hashlib.sha256(torn.encode()).hexdigest(),
    }
    assert repaired["prev"] == records[11]["hash"]
    result = verify_audit_log(signed_path, key=KEY.verify_key)
    assert result.ok, result.describe()
    assert result.records == 15


def test_an_unparseable_last_line_does_not_stop_a_restart(log_path: Path) -> None:
    with log_path.open("a", encoding="utf-8") as handle:
        handle.write("garbage\n")

    with AuditLog(log_path) as log:
        log.append("coordinator-start", completed_round=5)

    assert json.loads(lines_of(log_path)[-1])["seq"] == 5
    result = verify_audit_log(log_path)
    assert not result.ok
    assert (result.first_bad_line, result.problem) == (6, "unparseable record")


# -- rotation ------------------------------------------------------------------------------


def write_rotating_log(path: Path, rounds: int, **options: Any) -> None:
    write_signed_log(path, rounds=rounds, events_per_round=3, max_bytes=2048, **options)


def test_many_records_rotate_into_segments_that_verify(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_rotating_log(path, rounds=10, keep=100)

    result = verify_audit_log(path, key=KEY.verify_key)

    assert len(result.files) > 3
    assert result.files[0].name == "audit.jsonl.000001"
    assert result.files[-1] == path
    assert result.ok, result.describe()
    assert result.checkpoints == 10
    assert not result.trimmed
    assert all(f.stat().st_size < 2048 + 600 for f in result.files)


def test_the_chain_continues_across_segments(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_rotating_log(path, rounds=10, keep=100)

    last_of_first = records_of(tmp_path / "audit.jsonl.000001")[-1]
    opening = records_of(tmp_path / "audit.jsonl.000002")[0]
    assert opening["event"] == "segment-start"
    assert opening["data"] == {"segment": 2}
    assert opening["prev"] == last_of_first["hash"]
    assert opening["seq"] == last_of_first["seq"] + 1


def test_verify_accepts_the_folder_or_a_segment(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_rotating_log(path, rounds=10, keep=100)

    by_folder = verify_audit_log(tmp_path, key=KEY.verify_key)
    by_segment = verify_audit_log(tmp_path / "audit.jsonl.000002", key=KEY.verify_key)

    assert by_folder.ok
    assert by_segment.ok
    assert by_folder.records == by_segment.records == verify_audit_log(path).records


def test_retention_keeps_at_most_keep_segments(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_rotating_log(path, rounds=20, keep=2)

    rotated = sorted(p.name for p in tmp_path.glob("audit.jsonl.*"))

    assert len(rotated) == 2
    assert rotated[0] != "audit.jsonl.000001"


def test_after_retention_verify_passes_and_says_where_it_starts(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_rotating_log(path, rounds=20, keep=2)
    oldest = sorted(tmp_path.glob("audit.jsonl.*"))[0]
    first_seq = records_of(oldest)[0]["seq"]

    result = verify_audit_log(path, key=KEY.verify_key)

    assert result.ok, result.describe()
    assert result.trimmed
    assert result.first_seq == first_seq > 0
    assert f"records before seq {first_seq} were removed by retention" in result.describe()
    assert oldest.name in result.describe()


def test_deleting_the_opening_records_of_the_oldest_segment_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_rotating_log(path, rounds=20, keep=2)
    oldest = sorted(tmp_path.glob("audit.jsonl.*"))[0]
    rewrite(oldest, lines_of(oldest)[2:])

    result = verify_audit_log(path)

    assert not result.ok
    assert (result.file, result.first_bad_line) == (oldest, 1)
    assert result.problem == "segment does not begin with its segment-start record"


def test_a_missing_middle_segment_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_rotating_log(path, rounds=10, keep=100)
    (tmp_path / "audit.jsonl.000002").unlink()

    result = verify_audit_log(path)

    assert not result.ok
    assert result.file == tmp_path / "audit.jsonl.000003"
    assert result.problem == "segment 2 is missing before this one"


def test_an_edit_in_a_rotated_segment_names_that_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_rotating_log(path, rounds=10, keep=100)
    segment = tmp_path / "audit.jsonl.000002"
    lines = lines_of(segment)
    record = json.loads(lines[3])
    record["time"] += 1
    lines[3] = json.dumps(record, sort_keys=True, separators=(",", ":"))
    rewrite(segment, lines)

    result = verify_audit_log(path, key=KEY.verify_key)

    assert not result.ok
    assert (result.file, result.first_bad_line) == (segment, 4)
    assert f"{segment}: line 4: record altered" in result.describe()


def test_reopening_continues_the_chain_across_rotated_segments(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_rotating_log(path, rounds=10, keep=100)
    # A crash right after a rotation's rename: no active file yet.
    newest = sorted(tmp_path.glob("audit.jsonl.*"))[-1]
    path.replace(newest.with_name(f"audit.jsonl.{int(newest.suffix[1:]) + 1:06d}"))
    last = records_of(sorted(tmp_path.glob("audit.jsonl.*"))[-1])[-1]

    with AuditLog(path, clock=lambda: CLOCK, signing_key=KEY, max_bytes=2048) as log:
        log.append("coordinator-start", completed_round=10)
        log.checkpoint(10)

    opening = records_of(path)[0]
    assert opening["event"] == "segment-start"
    assert opening["prev"] == last["hash"]
    assert verify_audit_log(path, key=KEY.verify_key).ok


# -- bounded per-round records -------------------------------------------------------------


def test_the_budget_admits_the_first_records_per_key_then_summarises() -> None:
    budget = RecordBudget(per_key=2)

    admitted = [budget.admit(("dev-1", "bad-signature")) for _ in range(5)]

    assert admitted == [True, True, False, False, False]
    assert budget.summarised == 3


def test_the_budget_counts_each_key_separately() -> None:
    budget = RecordBudget(per_key=1)

    assert budget.admit(("dev-1", "bad-signature"))
    assert budget.admit(("dev-2", "bad-signature"))
    assert not budget.admit(("dev-1", "bad-signature"))
    assert budget.drain() == {("dev-1", "bad-signature"): 1}


def test_draining_the_budget_starts_a_new_round() -> None:
    budget = RecordBudget(per_key=1)
    budget.admit("replay")
    budget.admit("replay")

    budget.drain()

    assert budget.admit("replay")
    assert budget.drain() == {}


def test_keys_beyond_the_budgets_limit_share_one_overflow_key() -> None:
    budget = RecordBudget(per_key=1, max_keys=2)
    budget.admit("a")
    budget.admit("b")

    assert budget.admit("c")  # the overflow key's own first record
    assert not budget.admit("d")
    assert budget.drain() == {RecordBudget.OVERFLOW_KEY: 1}


def test_the_overflow_key_can_take_the_shape_of_the_keys() -> None:
    budget = RecordBudget(per_key=0, max_keys=1, overflow_key=("*", "*"))
    budget.admit(("dev-1", "replay"))

    budget.admit(("dev-2", "replay"))

    assert budget.drain() == {("dev-1", "replay"): 1, ("*", "*"): 1}
