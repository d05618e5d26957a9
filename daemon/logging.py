"""Stdlib logging set-up for the daemons and the CLI.

Under systemd, stderr goes to the journal, which timestamps every line itself and reads a
``<N>`` syslog priority prefix (``SyslogLevelPrefix=yes`` is the default), so journald
output carries a priority prefix and no timestamp. On a terminal the lines get an ISO-8601
timestamp instead.

:class:`RateLimitedLog` keeps a flood (a device spraying garbage updates) from flooding the
log: the first few lines per key per interval are written, the rest are counted and
summarised in one line.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TextIO

__all__ = ["RateLimitedLog", "configure_logging", "running_under_journald"]

_CONSOLE_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
_JOURNAL_FORMAT = "%(levelname)s %(name)s: %(message)s"

# syslog(3) priorities, which journald shows and filters on (``journalctl -p warning``).
_SYSLOG_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


class _OwnHandler(logging.StreamHandler[TextIO]):
    """The handler :func:`configure_logging` installs, so a second call can find it."""


class _JournalFormatter(logging.Formatter):
    """Prefix each record with its syslog priority, ``<N>``, for journald."""

    def format(self, record: logging.LogRecord) -> str:
        """Format the record, prefixed with its priority."""
        priority = next(
            (p for level, p in sorted(_SYSLOG_PRIORITY.items()) if record.levelno <= level), 2
        )
        # A multi-line message (a traceback) would otherwise land as separate journal
        # entries at the default priority; keep it as one entry per line, each prefixed.
        text = super().format(record)
        return "\n".join(f"<{priority}>{line}" for line in text.splitlines() or [""])


def running_under_journald(stream: TextIO | None = None) -> bool:
    """Tell whether ``stream`` (default: stderr) is connected to the systemd journal.

    systemd sets ``$JOURNAL_STREAM`` to ``DEVICE:INODE`` of the stream it connected;
    comparing it with the stream's own identity (``systemd.exec(5)``) avoids being fooled
    by a child process whose stderr was redirected.

    Parameters
    ----------
    stream
        The stream to test; ``sys.stderr`` by default.

    Returns
    -------
    bool
        Whether log lines written there reach journald.
    """
    expected = os.environ.get("JOURNAL_STREAM", "")
    if not expected:
        return False
    target = sys.stderr if stream is None else stream
    try:
        info = os.fstat(target.fileno())
    except (OSError, ValueError, AttributeError):
        # No real file descriptor (pytest capture, a closed stream).
        return False
    return expected == f"{info.st_dev}:{info.st_ino}"


def configure_logging(
    level: int | str = logging.INFO,
    *,
    journald: bool = False,
    stream: TextIO | None = None,
) -> None:
    """Install one stream handler on the root logger; calling it again replaces it.

    Handlers installed by others (pytest's capture, an embedding application) are left
    alone.

    Parameters
    ----------
    level
        A level name (``"DEBUG"``, case-insensitive) or number.
    journald
        Format for the journal: syslog priority prefix, no timestamp. See
        :func:`running_under_journald` to decide it automatically.
    stream
        Where to write; ``sys.stderr`` by default.

    Raises
    ------
    ValueError
        If ``level`` is not a known level name.
    """
    if isinstance(level, str):
        resolved = logging.getLevelNamesMapping().get(level.upper())
        if resolved is None:
            msg = f"unknown log level {level!r}"
            raise ValueError(msg)
        level = resolved
    handler = _OwnHandler(sys.stderr if stream is None else stream)
    if journald:
        handler.setFormatter(_JournalFormatter(_JOURNAL_FORMAT))
    else:
        handler.setFormatter(logging.Formatter(_CONSOLE_FORMAT, datefmt="%Y-%m-%dT%H:%M:%S%z"))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _OwnHandler)]:
        root.removeHandler(old)
        old.close()  # StreamHandler.close() leaves the stream itself open
    root.addHandler(handler)
    root.setLevel(level)


@dataclass(slots=True)
class _Window:
    start: float
    logged: int = 0
    suppressed: int = 0


class RateLimitedLog:
    """Write the first ``burst`` lines per key per ``interval_s``; summarise the rest.

    Each key (a rejection reason, or a ``(device, reason)`` pair) has its own fixed
    window, opened by its first line. Within a window the first ``burst`` lines are
    logged; later ones are only counted. When the window is closed (by the key's next
    line after ``interval_s``, or by :meth:`flush`), one summary line reports the count:
    ``suppressed 120 more rejections (dev-7, bad-signature) in the last 60 s``. Counts are
    never lost: each suppressed line is summarised once, and :attr:`suppressed_total`
    keeps the running total.

    Memory is bounded by ``max_keys`` windows: when they are all taken, expired windows are
    closed, and if none is, new keys share one overflow window, ``"other keys"``, so keys
    chosen by an attacker (claimed device ids) cannot grow it.

    Not thread-safe: use one instance from one thread (the coordinator's round loop).

    Parameters
    ----------
    logger
        Where the lines go.
    what
        Plural noun for the summary line (``"rejections"``).
    burst
        Lines logged per key per window (at least 1).
    interval_s
        Window length in seconds (positive).
    level
        Level of both the lines and the summaries.
    max_keys
        Most windows held at once (at least 1).
    clock
        Monotonic clock in seconds; tests inject a fake.

    Raises
    ------
    ValueError
        If a bound is out of range.
    """

    OVERFLOW_KEY = "other keys"

    def __init__(
        self,
        logger: logging.Logger,
        *,
        what: str = "events",
        burst: int = 5,
        interval_s: float = 60.0,
        level: int = logging.WARNING,
        max_keys: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if burst < 1 or max_keys < 1:
            msg = f"burst and max_keys must be at least 1, got {burst} and {max_keys}"
            raise ValueError(msg)
        if not interval_s > 0:
            msg = f"interval_s must be positive, got {interval_s}"
            raise ValueError(msg)
        self._logger = logger
        self._what = what
        self._burst = burst
        self._interval_s = interval_s
        self._level = level
        self._max_keys = max_keys
        self._clock = clock
        self._windows: dict[Hashable, _Window] = {}
        self.suppressed_total = 0

    def log(self, key: Hashable, msg: str, *args: object) -> bool:
        """Log ``msg % args`` unless ``key`` has used its burst; return whether it logged.

        Parameters
        ----------
        key
            What the budget is counted per, e.g. ``reason`` or ``(device, reason)``.
        msg, args
            The line, %-style, as for :meth:`logging.Logger.log`.
        """
        now = self._clock()
        window = self._windows.get(key)
        if window is not None and now - window.start >= self._interval_s:
            self._close(key, window, now)
            window = None
        if window is None:
            if key not in self._windows and len(self._windows) >= self._max_keys:
                self.flush()
                if len(self._windows) >= self._max_keys:
                    key = self.OVERFLOW_KEY
            window = self._windows.get(key)
            if window is None:
                window = self._windows[key] = _Window(now)
        if window.logged < self._burst:
            window.logged += 1
            self._logger.log(self._level, msg, *args)
            return True
        window.suppressed += 1
        self.suppressed_total += 1
        return False

    def flush(self, *, force: bool = False) -> int:
        """Close expired windows (every window when ``force``); return summaries written.

        Call it periodically (at the end of each round) so a flood that stops is still
        summarised, and with ``force=True`` at shutdown.
        """
        now = self._clock()
        written = 0
        for key, window in list(self._windows.items()):
            if force or now - window.start >= self._interval_s:
                written += self._close(key, window, now)
        return written

    def _close(self, key: Hashable, window: _Window, now: float) -> int:
        del self._windows[key]
        if not window.suppressed:
            return 0
        self._logger.log(
            self._level,
            "suppressed %d more %s (%s) in the last %.0f s",
            window.suppressed,
            self._what,
            _describe_key(key),
            max(0.0, now - window.start),
        )
        return 1


def _describe_key(key: Hashable) -> str:
    if isinstance(key, tuple):
        return ", ".join(str(part) for part in key)
    return str(key)
