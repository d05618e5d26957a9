"""An append-only, hash-chained audit log (JSON Lines).

Each record carries the SHA-256 of the previous record, so editing, dropping or
reordering any line breaks the chain from that point on; ``byzedge audit verify`` finds
the first broken line. The log is flushed after every record and fsynced at the end of
every round, so a crash loses at most the round in flight.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

__all__ = ["AuditLog", "AuditVerification", "verify_audit_log"]

_GENESIS = "0" * 64


def _digest(record: dict[str, Any]) -> str:
    canonical = json.dumps(record, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class AuditLog:
    """Appends hash-chained records to ``path``.

    Parameters
    ----------
    path:
        The JSONL file; created if missing, continued (chain included) if present.
    clock:
        Wall clock in seconds.
    """

    def __init__(self, path: Path, clock: Any = time.time) -> None:
        self.path = path
        self._clock = clock
        path.parent.mkdir(parents=True, exist_ok=True)
        self._seq, self._prev = self._tail(path)
        self._handle: IO[str] = path.open("a", encoding="utf-8")

    @staticmethod
    def _tail(path: Path) -> tuple[int, str]:
        if not path.exists():
            return 0, _GENESIS
        last = None
        with path.open(encoding="utf-8") as handle:
            for raw_line in handle:
                line = raw_line.strip()
                if line:
                    last = line
        if last is None:
            return 0, _GENESIS
        try:
            record = json.loads(last)
            return int(record["seq"]) + 1, str(record["hash"])
        except (ValueError, KeyError, TypeError):
            # A torn last line (crash mid-write): chain on from a fresh genesis marker that
            # verification will report, rather than refusing to start.
            return 0, _GENESIS

    def append(self, event: str, **data: Any) -> None:
        """Write one record ``{seq, time, event, data, prev, hash}``."""
        record: dict[str, Any] = {
            "seq": self._seq,
            "time": round(self._clock(), 3),
            "event": event,
            "data": data,
            "prev": self._prev,
        }
        record["hash"] = _digest(record)
        self._handle.write(json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n")
        self._handle.flush()
        self._seq += 1
        self._prev = record["hash"]

    def sync(self) -> None:
        """Fsync the log (end of round)."""
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        """Flush, fsync and close."""
        if not self._handle.closed:
            self.sync()
            self._handle.close()


@dataclass(frozen=True, slots=True)
class AuditVerification:
    """Outcome of :func:`verify_audit_log`."""

    ok: bool
    records: int
    first_bad_line: int | None = None
    problem: str | None = None


def verify_audit_log(path: Path) -> AuditVerification:
    """Check every record's hash and its link to the previous one."""
    prev = _GENESIS
    count = 0
    with path.open(encoding="utf-8") as handle:
        for number, raw_line in enumerate(handle, start=1):
            line = raw_line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
                claimed = record.pop("hash")
            except (ValueError, KeyError, AttributeError, TypeError):
                return AuditVerification(False, count, number, "unparseable record")
            if record.get("prev") != prev:
                return AuditVerification(False, count, number, "chain broken (prev mismatch)")
            if _digest(record) != claimed:
                return AuditVerification(False, count, number, "record altered (hash mismatch)")
            prev = claimed
            count += 1
    return AuditVerification(True, count)
