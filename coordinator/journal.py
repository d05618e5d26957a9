"""The open round's journal: every accepted update, on disk as soon as it is accepted.

The coordinator saves its state only when a round ends (:mod:`coordinator.state`), so a
coordinator killed mid-round would otherwise lose the updates it had already accepted, and
the devices that sent them would not send again. The journal keeps those updates' signed
envelopes; a restarted coordinator re-opens the same round and passes them through ingest
again (:meth:`coordinator.ingest.Ingest.submit_payload`), so they are verified exactly like
fresh messages and nothing unverified ever enters a round.

Format: one file, ``state_dir/round.journal``, a sequence of frames
``length (u32 LE) | crc32 (u32 LE) | msgpack body``. The first body is the header
``{"format", "round", "model_version"}``; each later one ``{"device", "payload"}``. Frames
are appended, flushed and fsynced one at a time, or as one group for the updates the
coordinator took from its inbox together (:meth:`RoundJournal.append_many`: one fsync for
many), so a crash or power cut loses at most the frames being written, none of which has
counted yet; reading stops at the first short or corrupt frame, keeping every complete one
before it. A journal for another round than the one the coordinator resumes is stale and
ignored.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import msgpack

__all__ = ["JournalContents", "JournalEntry", "RoundJournal", "read_journal"]

_LOGGER = logging.getLogger(__name__)
_FORMAT = "byzedge-round-journal/1"
_FRAME = struct.Struct("<II")  # body length, crc32 of the body
# A journal frame holds one update; nothing legitimate comes near this.
_MAX_FRAME_BYTES = 1 << 30


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One accepted update as it arrived: the device and the reassembled envelope."""

    device_id: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class JournalContents:
    """What a journal file holds: its round, model version and accepted updates."""

    round: int
    model_version: int
    entries: tuple[JournalEntry, ...]


def read_journal(path: Path) -> JournalContents | None:
    """Read a journal without touching it (tools, tests); ``None`` if absent or unusable."""
    try:
        bodies, _ = _frames(path.read_bytes())
    except OSError:
        return None
    if not bodies or not isinstance(bodies[0], dict) or bodies[0].get("format") != _FORMAT:
        return None
    header = bodies[0]
    round_number, version = header.get("round"), header.get("model_version")
    if type(round_number) is not int or type(version) is not int:
        return None
    return JournalContents(round_number, version, tuple(_entries(bodies[1:])))


def _entries(bodies: list[Any]) -> list[JournalEntry]:
    entries = []
    for body in bodies:
        if not isinstance(body, dict):
            continue
        device, payload = body.get("device"), body.get("payload")
        if isinstance(device, str) and isinstance(payload, bytes):
            entries.append(JournalEntry(device, payload))
    return entries


class RoundJournal:
    """Appends the open round's accepted updates to ``path``.

    Parameters
    ----------
    path:
        The journal file (created on :meth:`open_round`).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: IO[bytes] | None = None
        self._round: int | None = None
        self._valid_length = 0

    def __enter__(self) -> RoundJournal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def open_round(self, round_number: int, model_version: int) -> None:
        """Start a new journal for ``round_number`` (replacing any older one)."""
        self.close()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # "wb" truncates: the previous round is either aggregated and saved, or being
        # re-opened by the caller, who read it first.
        self._handle = self.path.open("wb")
        self._round = round_number
        self._write({"format": _FORMAT, "round": round_number, "model_version": model_version})

    def resume_round(self, round_number: int, model_version: int) -> list[JournalEntry]:
        """Read the journal of ``round_number`` and keep appending to it.

        Returns
        -------
        list of JournalEntry
            The updates accepted before the restart, in order; empty when the journal is
            missing, unreadable, or for another round or model version (then a new one
            is started).
        """
        entries = self._read(round_number, model_version)
        if entries is None:
            self.open_round(round_number, model_version)
            return []
        self.close()
        self._handle = self.path.open("r+b")
        self._handle.seek(self._valid_length)
        self._handle.truncate()  # drop a torn last frame before appending after it
        self._round = round_number
        return entries

    def append(self, device_id: str, payload: bytes) -> None:
        """Journal one accepted update (flushed and fsynced before returning)."""
        if self._handle is None:
            raise RuntimeError("RoundJournal.append() before open_round()")
        self._write({"device": device_id, "payload": payload})

    def append_many(self, entries: Sequence[tuple[str, bytes]]) -> None:
        """Journal several accepted updates, ``(device_id, payload)``, with one fsync.

        When this returns every one of them is on disk, as after as many :meth:`append`
        calls.
        """
        if self._handle is None:
            raise RuntimeError("RoundJournal.append_many() before open_round()")
        if entries:
            self._write_all([{"device": device, "payload": payload} for device, payload in entries])

    def clear(self) -> None:
        """Forget the journal once its round is saved in the coordinator's state."""
        self.close()
        self.path.unlink(missing_ok=True)

    def close(self) -> None:
        """Close the file (the journal stays on disk)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        self._round = None

    # -- internals ---------------------------------------------------------------------

    def _write(self, body: dict[str, Any]) -> None:
        self._write_all([body])

    def _write_all(self, bodies: list[dict[str, Any]]) -> None:
        assert self._handle is not None  # noqa: S101 - checked by the public callers
        for body in bodies:
            data = msgpack.packb(body, use_bin_type=True)
            self._handle.write(_FRAME.pack(len(data), zlib.crc32(data)) + data)
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def _read(self, round_number: int, model_version: int) -> list[JournalEntry] | None:
        self._valid_length = 0
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            _LOGGER.warning("round journal %s unreadable, ignored: %s", self.path, exc)
            return None
        bodies, self._valid_length = _frames(raw)
        if self._valid_length < len(raw):
            _LOGGER.warning("round journal %s: dropped a torn or corrupt tail", self.path)
        if not bodies:
            return None
        header = bodies[0]
        if (
            not isinstance(header, dict)
            or header.get("format") != _FORMAT
            or header.get("round") != round_number
            or header.get("model_version") != model_version
        ):
            return None
        return _entries(bodies[1:])


def _frames(raw: bytes) -> tuple[list[Any], int]:
    """Decode complete, intact frames from the start; return them and the bytes they span."""
    bodies: list[Any] = []
    position = 0
    while position + _FRAME.size <= len(raw):
        length, crc = _FRAME.unpack_from(raw, position)
        start, end = position + _FRAME.size, position + _FRAME.size + length
        if length > _MAX_FRAME_BYTES or end > len(raw):
            break
        data = raw[start:end]
        if zlib.crc32(data) != crc:
            break
        try:
            bodies.append(msgpack.unpackb(data, raw=False))
        except (ValueError, msgpack.UnpackException):
            break
        position = end
    return bodies, position
