"""Stdlib logging set-up for the daemons and the CLI.

Under systemd, stderr goes to the journal, which timestamps every line itself and reads a
``<N>`` syslog priority prefix (``SyslogLevelPrefix=yes`` is the default), so journald
output carries a priority prefix and no timestamp. On a terminal the lines get an ISO-8601
timestamp instead.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

__all__ = ["configure_logging", "running_under_journald"]

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
