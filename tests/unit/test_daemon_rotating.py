"""Rotating JSON Lines: size rotation, numbered segments, retention, torn-tail repair."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from byzedge.daemon.rotating import (
    RotatingJsonl,
    iter_lines,
    list_segments,
    segment_path,
    write_atomically,
)

LINE = "x" * 99  # 100 bytes with its newline


def fill(path: Path, lines: int, *, max_bytes: int = 1000, keep: int = 100) -> RotatingJsonl:
    writer = RotatingJsonl(path, max_bytes=max_bytes, keep=keep)
    for _ in range(lines):
        writer.append_line(LINE)
    writer.close()
    return writer


def test_appended_records_are_compact_json_with_sorted_keys(tmp_path: Path) -> None:
    path = tmp_path / "rounds.jsonl"
    with RotatingJsonl(path) as writer:
        writer.append({"round": 1, "accepted": 3})

    assert path.read_text(encoding="utf-8") == '{"accepted":3,"round":1}\n'


def test_each_line_is_readable_before_close(tmp_path: Path) -> None:
    path = tmp_path / "rounds.jsonl"
    with RotatingJsonl(path) as writer:
        writer.append({"round": 1})

        assert json.loads(path.read_text(encoding="utf-8")) == {"round": 1}


def test_the_file_rotates_once_it_reaches_max_bytes(tmp_path: Path) -> None:
    path = tmp_path / "rounds.jsonl"

    fill(path, 25)

    assert [p.name for _, p in list_segments(path)] == [
        "rounds.jsonl.000001",
        "rounds.jsonl.000002",
    ]
    assert (tmp_path / "rounds.jsonl.000001").stat().st_size == 1000
    assert path.stat().st_size == 500


def test_append_reports_whether_it_rotated(tmp_path: Path) -> None:
    with RotatingJsonl(tmp_path / "rounds.jsonl", max_bytes=200) as writer:
        rotations = [writer.append_line(LINE) for _ in range(4)]

    assert rotations == [False, False, True, False]


def test_every_line_lands_once_in_order_across_segments(tmp_path: Path) -> None:
    path = tmp_path / "rounds.jsonl"
    with RotatingJsonl(path, max_bytes=30, keep=100) as writer:
        for index in range(20):
            writer.append({"round": index})

    assert len(writer.files()) > 5
    assert [json.loads(line)["round"] for line in iter_lines(path)] == list(range(20))


def test_retention_keeps_at_most_keep_rotated_segments(tmp_path: Path) -> None:
    path = tmp_path / "rounds.jsonl"

    fill(path, 100, keep=3)

    assert [n for n, _ in list_segments(path)] == [7, 8, 9]


def test_segment_numbers_are_not_reused_after_retention(tmp_path: Path) -> None:
    path = tmp_path / "rounds.jsonl"
    fill(path, 100, keep=1)

    fill(path, 10, keep=1)

    assert [n for n, _ in list_segments(path)] == [10]


def test_an_empty_file_is_never_rotated(tmp_path: Path) -> None:
    path = tmp_path / "rounds.jsonl"
    with RotatingJsonl(path) as writer:
        writer.rotate()

    assert list_segments(path) == []


def test_reopening_continues_the_active_file(tmp_path: Path) -> None:
    path = tmp_path / "rounds.jsonl"
    fill(path, 3)

    with RotatingJsonl(path, max_bytes=1000) as writer:
        assert writer.size == 300
        writer.append_line(LINE)

    assert path.stat().st_size == 400


def test_a_torn_last_line_is_cut_on_open(tmp_path: Path) -> None:
    path = tmp_path / "rounds.jsonl"
    path.write_bytes(b'{"round":1}\n{"round":2}\n{"rou')

    with RotatingJsonl(path) as writer:
        assert writer.torn_tail == b'{"rou'
        writer.append({"round": 3})

    assert path.read_bytes() == b'{"round":1}\n{"round":2}\n{"round":3}\n'


def test_a_file_that_is_one_torn_line_is_emptied(tmp_path: Path) -> None:
    path = tmp_path / "rounds.jsonl"
    path.write_bytes(b'{"rou')

    with RotatingJsonl(path) as writer:
        assert writer.torn_tail == b'{"rou'
        assert writer.size == 0


def test_an_intact_file_has_no_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "rounds.jsonl"
    path.write_bytes(b'{"round":1}\n')

    with RotatingJsonl(path) as writer:
        assert writer.torn_tail == b""


def test_a_crash_after_the_rename_leaves_no_active_file_and_reopening_creates_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "rounds.jsonl"
    fill(path, 5)
    path.replace(segment_path(path, 1))

    with RotatingJsonl(path, max_bytes=200) as writer:
        assert writer.segment_number == 2
        writer.append_line(LINE)
        writer.append_line(LINE)
        writer.append_line(LINE)

    assert [n for n, _ in list_segments(path)] == [1, 2]


def test_reversed_lines_walks_newest_first_across_segments(tmp_path: Path) -> None:
    path = tmp_path / "rounds.jsonl"
    with RotatingJsonl(path, max_bytes=30, keep=100) as writer:
        for index in range(6):
            writer.append({"round": index})

        assert [json.loads(line)["round"] for line in writer.reversed_lines()] == [
            5,
            4,
            3,
            2,
            1,
            0,
        ]


def test_a_line_with_a_line_break_is_refused(tmp_path: Path) -> None:
    with RotatingJsonl(tmp_path / "rounds.jsonl") as writer, pytest.raises(ValueError):
        writer.write_line("two\nlines")


@pytest.mark.parametrize(("max_bytes", "keep"), [(0, 1), (100, 0)])
def test_bounds_below_one_are_refused(tmp_path: Path, max_bytes: int, keep: int) -> None:
    with pytest.raises(ValueError):
        RotatingJsonl(tmp_path / "rounds.jsonl", max_bytes=max_bytes, keep=keep)


def test_close_twice_is_harmless(tmp_path: Path) -> None:
    writer = RotatingJsonl(tmp_path / "rounds.jsonl")
    writer.close()
    writer.close()

    assert writer.closed


def test_write_atomically_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "head.json"
    write_atomically(path, b"old")

    write_atomically(path, b"new")

    assert path.read_bytes() == b"new"
    assert [p.name for p in path.parent.iterdir()] == ["head.json"]
