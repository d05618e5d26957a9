"""Group commit: updates journaled together come back like updates journaled one by one."""

from __future__ import annotations

from pathlib import Path

import pytest

from byzedge.coordinator.journal import JournalEntry, RoundJournal


def test_a_group_and_single_appends_resume_in_order(tmp_path: Path) -> None:
    first = RoundJournal(tmp_path / "round.journal")
    first.open_round(4, 2)
    first.append("dev-a", b"update a")
    first.append_many([("dev-b", b"update b"), ("dev-c", b"update c")])
    first.append_many([])
    first.close()

    with RoundJournal(tmp_path / "round.journal") as resumed:
        entries = resumed.resume_round(4, 2)

    assert entries == [
        JournalEntry("dev-a", b"update a"),
        JournalEntry("dev-b", b"update b"),
        JournalEntry("dev-c", b"update c"),
    ]


def test_a_group_before_the_round_is_opened_is_a_programming_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="before open_round"):
        RoundJournal(tmp_path / "round.journal").append_many([("dev-a", b"x")])
