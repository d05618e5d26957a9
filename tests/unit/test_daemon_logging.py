from __future__ import annotations

import io
import logging
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from byzedge.daemon.logging import RateLimitedLog, configure_logging, running_under_journald


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


# -- RateLimitedLog ------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def lines() -> Iterator[list[str]]:
    handler = ListHandler()
    logger = logging.getLogger("byzedge.test.ratelimit")
    logger.addHandler(handler)
    logger.propagate = False
    yield handler.lines
    logger.removeHandler(handler)
    logger.propagate = True


def limited(clock: FakeClock, **options: Any) -> RateLimitedLog:
    return RateLimitedLog(
        logging.getLogger("byzedge.test.ratelimit"),
        what="rejections",
        clock=clock,
        **{"burst": 2, "interval_s": 60.0, **options},
    )


def test_the_first_lines_of_a_key_are_logged_then_suppressed(lines: list[str]) -> None:
    log = limited(FakeClock())

    written = [log.log("bad-signature", "rejected %s", n) for n in range(5)]

    assert written == [True, True, False, False, False]
    assert lines == ["rejected 0", "rejected 1"]
    assert log.suppressed_total == 3


def test_the_next_line_after_the_window_is_preceded_by_a_summary(lines: list[str]) -> None:
    clock = FakeClock()
    log = limited(clock)
    for n in range(5):
        log.log(("dev-7", "bad-signature"), "rejected %s", n)
    clock.now += 61

    log.log(("dev-7", "bad-signature"), "rejected %s", 5)

    assert lines[2:] == [
        "suppressed 3 more rejections (dev-7, bad-signature) in the last 61 s",
        "rejected 5",
    ]


def test_keys_have_separate_budgets(lines: list[str]) -> None:
    log = limited(FakeClock(), burst=1)

    log.log("replay", "a")
    log.log("replay", "b")
    log.log("bad-shape", "c")

    assert lines == ["a", "c"]


def test_flush_summarises_windows_that_have_ended(lines: list[str]) -> None:
    clock = FakeClock()
    log = limited(clock, burst=1)
    log.log("replay", "a")
    log.log("replay", "b")
    assert log.flush() == 0
    clock.now += 60

    assert log.flush() == 1
    assert lines == ["a", "suppressed 1 more rejections (replay) in the last 60 s"]


def test_forced_flush_summarises_every_window(lines: list[str]) -> None:
    clock = FakeClock()
    log = limited(clock, burst=1)
    log.log("replay", "a")
    log.log("replay", "b")
    clock.now += 5

    assert log.flush(force=True) == 1
    assert lines[-1] == "suppressed 1 more rejections (replay) in the last 5 s"


def test_a_window_without_suppressed_lines_ends_silently(lines: list[str]) -> None:
    clock = FakeClock()
    log = limited(clock)
    log.log("replay", "a")
    clock.now += 120

    assert log.flush() == 0
    assert lines == ["a"]


def test_each_suppressed_line_is_summarised_exactly_once(lines: list[str]) -> None:
    clock = FakeClock()
    log = limited(clock, burst=1)
    for _ in range(3):
        for _ in range(4):
            log.log("replay", "line")
        clock.now += 60
    log.flush(force=True)

    summaries = [line for line in lines if line.startswith("suppressed")]
    assert sum(int(line.split()[1]) for line in summaries) == log.suppressed_total == 9


def test_keys_beyond_max_keys_share_the_overflow_window(lines: list[str]) -> None:
    log = limited(FakeClock(), burst=1, max_keys=2)

    for device in ("dev-1", "dev-2", "dev-3", "dev-4"):
        log.log((device, "bad-signature"), "rejected %s", device)
    log.flush(force=True)

    assert lines == [
        "rejected dev-1",
        "rejected dev-2",
        "rejected dev-3",
        "suppressed 1 more rejections (other keys) in the last 0 s",
    ]


def test_lines_go_out_at_the_configured_level() -> None:
    stream = io.StringIO()
    configure_logging("INFO", stream=stream)
    log = RateLimitedLog(logging.getLogger("byzedge.test"), level=logging.ERROR)

    log.log("k", "boom")

    assert "ERROR" in stream.getvalue()


@pytest.mark.parametrize(
    "options", [{"burst": 0}, {"max_keys": 0}, {"interval_s": 0.0}, {"interval_s": -1.0}]
)
def test_bounds_out_of_range_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RateLimitedLog(logging.getLogger("byzedge.test"), **options)
