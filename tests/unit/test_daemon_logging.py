from __future__ import annotations

import io
import logging
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.logging import configure_logging, running_under_journald


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def test_console_lines_carry_a_timestamp() -> None:
    stream = io.StringIO()
    configure_logging("INFO", stream=stream)
    logging.getLogger("byzedge.test").info("round %d done", 3)
    line = stream.getvalue().strip()
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", line)
    assert line.endswith("INFO    byzedge.test: round 3 done")


def test_journald_lines_carry_a_priority_and_no_timestamp() -> None:
    stream = io.StringIO()
    configure_logging(logging.DEBUG, journald=True, stream=stream)
    logging.getLogger("byzedge.test").warning("device %s suspicious", "d1")
    assert stream.getvalue() == "<4>WARNING byzedge.test: device d1 suspicious\n"


def test_journald_prefixes_every_line_of_a_traceback() -> None:
    stream = io.StringIO()
    configure_logging("INFO", journald=True, stream=stream)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("byzedge.test").exception("failed")
    lines = stream.getvalue().splitlines()
    assert len(lines) > 2
    assert all(line.startswith("<3>") for line in lines)


def test_the_level_filters_records() -> None:
    stream = io.StringIO()
    configure_logging("warning", stream=stream)
    logging.getLogger("byzedge.test").info("hidden")
    assert stream.getvalue() == ""


def test_configuring_twice_replaces_our_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("INFO", stream=first)
    configure_logging("INFO", stream=second)
    logging.getLogger("byzedge.test").info("once")
    assert first.getvalue() == ""
    assert second.getvalue().count("once") == 1


def test_an_unknown_level_name_is_rejected() -> None:
    with pytest.raises(ValueError):
        configure_logging("LOUD")


def test_journald_is_detected_from_a_matching_journal_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (tmp_path / "journal").open("w") as stream:
        info = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino}")
        assert running_under_journald(stream) is True


def test_journald_is_not_detected_for_another_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "1:1")
    with (tmp_path / "other").open("w") as stream:
        assert running_under_journald(stream) is False


def test_journald_is_not_detected_without_journal_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    assert running_under_journald(sys.stderr) is False
