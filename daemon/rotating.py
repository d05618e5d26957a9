"""Append-only JSON Lines files that rotate by size into numbered segments.

A daemon that runs for weeks appends a line per event or per round; without rotation the
file grows without bound. :class:`RotatingJsonl` keeps the active file at its configured
path (``audit.jsonl``, ``rounds.jsonl``) and, once it has reached ``max_bytes``, renames it
to the next numbered segment and starts a new active file::

    audit.jsonl.000001   oldest rotated segment still kept
    audit.jsonl.000002
    audit.jsonl          the active file (becomes audit.jsonl.000003 at the next rotation)

Segment numbers grow forever (six digits, zero-padded, wider once past 999999) and are
never reused or renamed again, so a rotation is one atomic :func:`os.replace` and a reader
walks segments in numeric order, then the active file. At most ``keep`` rotated segments
are kept: the oldest are deleted after each rotation, so the files on disk never exceed
``(keep + 1) * (max_bytes + one line)``.

Crash safety: every line is written with one ``write`` and flushed to the OS, so a killed
process loses nothing it appended; :meth:`RotatingJsonl.sync` fsyncs (call it at the end
of a round, or of whatever unit must survive a power cut). A rotation fsyncs the file
before renaming it and the directory after. A power cut mid-write can leave a torn last
line (no trailing newline) in the active file: it is cut off when the file is opened again
(:attr:`RotatingJsonl.torn_tail` says what was cut), so new lines never merge with it.
A crash between the rename and the creation of the new active file leaves no active file,
and the next open simply creates it.

:func:`write_atomically` is the small-file counterpart (temporary file, fsync, rename,
directory fsync), for files that are replaced rather than appended to.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

__all__ = [
    "DEFAULT_KEEP",
    "DEFAULT_MAX_BYTES",
    "RotatingJsonl",
    "fsync_directory",
    "iter_lines",
    "list_segments",
    "segment_path",
    "write_atomically",
]

DEFAULT_MAX_BYTES = 4 * 1024 * 1024
DEFAULT_KEEP = 8

_SEGMENT_DIGITS = 6

_LOGGER = logging.getLogger(__name__)


def segment_path(path: Path, number: int) -> Path:
    """Return the path of rotated segment ``number`` of the active file ``path``."""
    return path.with_name(f"{path.name}.{number:0{_SEGMENT_DIGITS}d}")


def list_segments(path: Path) -> list[tuple[int, Path]]:
    """Return the rotated segments of the active file ``path``, oldest first.

    Parameters
    ----------
    path
        The active file (it need not exist).

    Returns
    -------
    list of (int, Path)
        Segment numbers and paths, in increasing numeric order.
    """
    directory = path.parent
    if not directory.is_dir():
        return []
    pattern = re.compile(re.escape(path.name) + r"\.(\d+)")
    found = []
    for entry in directory.iterdir():
        match = pattern.fullmatch(entry.name)
        if match and entry.is_file():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def iter_lines(path: Path) -> Iterator[str]:
    """Yield the non-blank lines of the log ``path``, oldest first, across its segments.

    For readers (monitors, tests) of a :class:`RotatingJsonl` file: rotated segments in
    numeric order, then the active file. A torn last line is yielded as it is; skip lines
    that do not parse.
    """
    for file in [*(p for _, p in list_segments(path)), path]:
        try:
            raw = file.read_bytes()
        except FileNotFoundError:
            continue
        for line in raw.decode("utf-8", errors="replace").splitlines():
            if line.strip():
                yield line


def fsync_directory(directory: Path) -> None:
    """Fsync ``directory`` so renames and new entries in it survive a power cut.

    Best effort: some filesystems refuse to fsync a directory.
    """
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: temporary file, fsync, rename, directory fsync.

    A reader sees the old content or the new one, never a mix, even after a power cut.

    Raises
    ------
    OSError
        If the file cannot be written; the old file is kept.
    """
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    fsync_directory(directory)


def _cut_torn_tail(path: Path) -> bytes:
    """Truncate ``path`` after its last newline; return the bytes removed."""
    try:
        handle = path.open("r+b")
    except FileNotFoundError:
        return b""
    with handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return b""
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return b""
        # Walk back block by block to the last newline; a torn line is at most one record.
        block = 64 * 1024
        end = size
        cut = 0
        while end > 0:
            start = max(0, end - block)
            handle.seek(start)
            chunk = handle.read(end - start)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                cut = start + newline + 1
                break
            end = start
        handle.seek(cut)
        torn = handle.read()
        handle.truncate(cut)
        handle.flush()
        os.fsync(handle.fileno())
        return torn


class RotatingJsonl:
    """An append-only JSON Lines file rotated into numbered segments by size.

    One writer per file (one daemon per state directory). Lines are flushed on every
    append and fsynced by :meth:`sync`; see the module docstring for the layout and the
    crash behaviour.

    Parameters
    ----------
    path
        The active file, e.g. ``$STATE_DIRECTORY/rounds.jsonl``. Its folder is created;
        an existing file is continued (after cutting a torn last line).
    max_bytes
        Rotate before an append once the active file holds at least this many bytes
        (a file therefore exceeds it by at most one line).
    keep
        How many rotated segments to keep beside the active file (at least 1); older
        ones are deleted after each rotation.

    Attributes
    ----------
    torn_tail
        The bytes of a torn last line cut off when the file was opened (``b""``: none).

    Raises
    ------
    ValueError
        If ``max_bytes`` or ``keep`` is below 1.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        keep: int = DEFAULT_KEEP,
    ) -> None:
        if max_bytes < 1:
            msg = f"max_bytes must be at least 1, got {max_bytes}"
            raise ValueError(msg)
        if keep < 1:
            msg = f"keep must be at least 1, got {keep}"
            raise ValueError(msg)
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.keep = keep
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.torn_tail = _cut_torn_tail(self.path)
        self._handle: IO[bytes] = self.path.open("ab")
        self._size = self._handle.seek(0, os.SEEK_END)

    def __repr__(self) -> str:
        return f"RotatingJsonl({str(self.path)!r}, max_bytes={self.max_bytes}, keep={self.keep})"

    def __enter__(self) -> RotatingJsonl:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def size(self) -> int:
        """Bytes in the active file."""
        return self._size

    @property
    def segment_number(self) -> int:
        """The number the active file will take when it is rotated."""
        segments = list_segments(self.path)
        return segments[-1][0] + 1 if segments else 1

    def segments(self) -> list[Path]:
        """The rotated segments still on disk, oldest first."""
        return [p for _, p in list_segments(self.path)]

    def files(self) -> list[Path]:
        """Every file of the log in order: rotated segments, then the active file."""
        return [*self.segments(), self.path]

    def reversed_lines(self) -> Iterator[str]:
        """Yield the non-blank lines of the log, newest first, across segments.

        Each file is read whole (it is bounded by ``max_bytes`` plus one line); a caller
        that stops early reads only the newest files.
        """
        self._handle.flush()
        for file in reversed(self.files()):
            try:
                raw = file.read_bytes()
            except FileNotFoundError:
                continue
            for line in reversed(raw.decode("utf-8", errors="replace").splitlines()):
                if line.strip():
                    yield line

    def rotate_if_needed(self) -> bool:
        """Rotate when the active file has reached ``max_bytes``; return whether it did."""
        if self._size >= self.max_bytes:
            self.rotate()
            return True
        return False

    def rotate(self) -> None:
        """Rename the active file to the next segment, start a new one, apply retention.

        An empty active file is not rotated.
        """
        if self._size == 0:
            return
        number = self.segment_number
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        try:
            os.replace(self.path, segment_path(self.path, number))
        finally:
            # On failure keep appending to the same file rather than to a closed handle.
            self._handle = self.path.open("ab")
            self._size = self._handle.seek(0, os.SEEK_END)
        fsync_directory(self.path.parent)
        segments = list_segments(self.path)
        for _, old in segments[: max(0, len(segments) - self.keep)]:
            try:
                old.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                # Retention is best effort: the rotation itself has happened.
                _LOGGER.warning("cannot remove old segment %s: %s", old, exc)
        fsync_directory(self.path.parent)

    def write_line(self, line: str) -> None:
        """Append one line to the active file (never rotates) and flush it.

        Raises
        ------
        ValueError
            If ``line`` holds a newline.
        """
        if "\n" in line or "\r" in line:
            msg = "a JSON Lines record must not contain a line break"
            raise ValueError(msg)
        data = line.encode("utf-8") + b"\n"
        self._handle.write(data)
        self._handle.flush()
        self._size += len(data)

    def append_line(self, line: str) -> bool:
        """Rotate if needed, then append ``line``; return whether it rotated."""
        rotated = self.rotate_if_needed()
        self.write_line(line)
        return rotated

    def append(self, record: Mapping[str, Any]) -> bool:
        """Append ``record`` as compact JSON with sorted keys; return whether it rotated."""
        return self.append_line(json.dumps(record, sort_keys=True, separators=(",", ":")))

    def sync(self) -> None:
        """Fsync the active file."""
        self._handle.flush()
        os.fsync(self._handle.fileno())

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._handle.closed

    def close(self) -> None:
        """Flush, fsync and close; calling it again does nothing."""
        if not self._handle.closed:
            self.sync()
            self._handle.close()
