"""The round journal: accepted updates survive a crash, torn tails are cut, stale ones ignored."""

from __future__ import annotations

from pathlib import Path

from byzedge.coordinator.journal import JournalEntry, RoundJournal, read_journal


def journal(tmp_path: Path) -> RoundJournal:
    return RoundJournal(tmp_path / "round.journal")


def test_a_resumed_round_returns_what_was_appended(tmp_path: Path) -> None:
    first = journal(tmp_path)
    first.open_round(7, 3)
    first.append("dev-a", b"update a")
    first.append("dev-b", b"update b")
    first.close()

    with journal(tmp_path) as resumed:
        entries = resumed.resume_round(7, 3)

    assert entries == [JournalEntry("dev-a", b"update a"), JournalEntry("dev-b", b"update b")]


def test_a_journal_of_another_round_is_ignored_and_replaced(tmp_path: Path) -> None:
    first = journal(tmp_path)
    first.open_round(7, 3)
    first.append("dev-a", b"update a")
    first.close()

    resumed = journal(tmp_path)
    entries = resumed.resume_round(8, 4)
    resumed.close()

    assert entries == []
    contents = read_journal(tmp_path / "round.journal")
    assert contents is not None
    assert (contents.round, contents.model_version, contents.entries) == (8, 4, ())


def test_a_journal_of_another_model_version_is_ignored(tmp_path: Path) -> None:
    first = journal(tmp_path)
    first.open_round(7, 3)
    first.append("dev-a", b"update a")
    first.close()

    with journal(tmp_path) as resumed:
        assert resumed.resume_round(7, 2) == []


def test_a_torn_last_frame_is_dropped_and_appending_continues_after_the_intact_ones(
    tmp_path: Path,
) -> None:
    first = journal(tmp_path)
    first.open_round(1, 0)
    first.append("dev-a", b"kept")
    first.append("dev-b", b"torn by the crash")
    first.close()
    path = tmp_path / "round.journal"
    path.write_bytes(path.read_bytes()[:-5])

    resumed = journal(tmp_path)
    entries = resumed.resume_round(1, 0)
    resumed.append("dev-c", b"after the restart")
    resumed.close()

    assert entries == [JournalEntry("dev-a", b"kept")]
    contents = read_journal(path)
    assert contents is not None
    assert [e.device_id for e in contents.entries] == ["dev-a", "dev-c"]


def test_a_corrupted_frame_ends_the_journal_there(tmp_path: Path) -> None:
    first = journal(tmp_path)
    first.open_round(1, 0)
    first.append("dev-a", b"kept")
    first.append("dev-b", b"flipped")
    first.close()
    path = tmp_path / "round.journal"
    raw = bytearray(path.read_bytes())
    raw[-2] ^= 0xFF
    path.write_bytes(bytes(raw))

    with journal(tmp_path) as resumed:
        assert resumed.resume_round(1, 0) == [JournalEntry("dev-a", b"kept")]


def test_garbage_instead_of_a_journal_starts_a_new_one(tmp_path: Path) -> None:
    (tmp_path / "round.journal").write_bytes(b"\x00\x01not a journal at all")

    resumed = journal(tmp_path)
    entries = resumed.resume_round(1, 0)
    resumed.close()

    assert entries == []
    assert read_journal(tmp_path / "round.journal") is not None


def test_clear_removes_the_journal(tmp_path: Path) -> None:
    first = journal(tmp_path)
    first.open_round(1, 0)
    first.append("dev-a", b"x")

    first.clear()

    assert not (tmp_path / "round.journal").exists()
    with journal(tmp_path) as resumed:
        assert resumed.resume_round(1, 0) == []
