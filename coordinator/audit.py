"""The coordinator's tamper-evident audit log: hash-chained JSONL with signed checkpoints.

Records
-------
One JSON object per line (compact, sorted keys)::

    {"seq": 41, "time": 1700000000.123, "event": "update-rejected",
     "data": {...}, "prev": "<hash of record 40>", "hash": "<SHA-256 of this record>"}

``hash`` is the SHA-256 of the record's canonical JSON without ``hash``; ``prev`` links to
the previous record (64 zeros for the first record ever). ``seq`` counts from 0 and never
restarts, across restarts and rotated files. Editing, reordering or deleting a record
breaks the chain at that line.

A hash chain alone does not stop whoever can write the file from rebuilding it. So at the
end of every round the coordinator signs the chain's head with its Ed25519 key
(:meth:`AuditLog.checkpoint`) and writes the signature into the chain itself, as a record
of event ``checkpoint`` whose ``data`` is the signed head (below): it signs the record just
before it (``data.seq == seq - 1``, ``data.hash == prev``). A forger who edits a record
and rebuilds the chain changes every later hash, so every later checkpoint no longer
matches, and cannot be re-signed without the key.

Two more reserved events keep the file layout checkable: ``segment-start`` (first record
of every file after the first, ``data = {"segment": N}``, see rotation below) and
``log-repaired`` (written after a restart that cut a torn last line,
``data = {"discarded_bytes": n, "sha256": hex}``).

Signed head
-----------
The newest checkpoint is also kept beside the log, in ``audit.head.json`` (written
atomically), and returned by :meth:`AuditLog.checkpoint` for the coordinator to publish,
retained, on its status topic::

    {"format": "byzedge-audit-head", "version": 1, "seq": 41, "hash": "<64 hex>",
     "round": 7, "time_ms": 1700000000123, "key_id": "<16 hex>", "signature": "<128 hex>"}

The Ed25519 signature covers the ASCII bytes ``byzedge-audit-head/v1``, a newline, then
the compact, key-sorted JSON of ``{"hash", "key_id", "round", "seq", "time_ms"}``
(integers and hex strings only, so any language reproduces the bytes). The prefix keeps
these signatures apart from the envelopes the same key signs.

Rotation
--------
The log is a :class:`daemon.rotating.RotatingJsonl`: once ``audit.jsonl`` reaches
``max_bytes`` it becomes ``audit.jsonl.000001`` (then ``.000002`` ...), at most ``keep``
rotated segments are kept, and the chain simply continues in the new file, whose first
record is a ``segment-start`` naming the number that file will take. Verification walks
the segments in order, then the active file.

What verification detects, and what it cannot
---------------------------------------------
:func:`verify_audit_log` (``byzedge audit verify``) always checks every record's hash, its
link to the previous record, the sequence numbers, the checkpoint records' consistency
with the chain and the segment layout (numbers contiguous, each file after the first
opening with its ``segment-start``). It reports the first bad file and line.

With the coordinator's public key it also checks every checkpoint's signature and
requires the signed head file: the record at the head's ``seq`` must exist and carry the
head's hash. So it detects

- edited, reordered, inserted or deleted records anywhere (chain);
- a chain rebuilt after an edit before the newest checkpoint (checkpoint signatures);
- truncation of the log below the signed head (the head names a record that is gone);
- a missing head file (a failure with a key: it is what reveals truncation).

A local verifier cannot detect, from the files alone:

- changes to the records after the newest checkpoint (the round in flight): they are
  protected by the chain only, which a writer can rebuild; the report counts them;
- truncation back to an older checkpoint combined with replacing the head file by that
  older signed head (old heads are in the log itself). Only a head published elsewhere
  catches it: pass the retained status message saved by a monitor with ``--head``, and
  the log must contain that head's record too;
- deletion of whole oldest segments, which looks exactly like retention: verification
  then starts at the oldest remaining segment (its ``segment-start`` record anchors it)
  and says so. Checkpoints inside the remaining segments still anchor everything before
  them.

A torn last line in the active file (a crash in mid-write, before the coordinator
restarted and cut it) is reported as a note, not as tampering: it was never a complete
record.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import re
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from byzedge.daemon.rotating import (
    DEFAULT_KEEP,
    DEFAULT_MAX_BYTES,
    RotatingJsonl,
    list_segments,
    write_atomically,
)
from byzedge.protocol.errors import SignatureError
from byzedge.protocol.signing import SigningKey, VerifyKey

__all__ = [
    "CHECKPOINT_EVENT",
    "HEAD_FORMAT",
    "HEAD_VERSION",
    "REPAIR_EVENT",
    "SEGMENT_START_EVENT",
    "AuditError",
    "AuditLog",
    "AuditVerification",
    "RecordBudget",
    "SignedHead",
    "head_path_for",
    "resolve_log_path",
    "verify_audit_log",
]

_LOGGER = logging.getLogger(__name__)

_GENESIS = "0" * 64
HEAD_FORMAT = "byzedge-audit-head"
HEAD_VERSION = 1
_SIGNING_CONTEXT = b"byzedge-audit-head/v1\n"
CHECKPOINT_EVENT = "checkpoint"
SEGMENT_START_EVENT = "segment-start"
REPAIR_EVENT = "log-repaired"
_RESERVED_EVENTS = frozenset({CHECKPOINT_EVENT, SEGMENT_START_EVENT, REPAIR_EVENT})
_DEFAULT_LOG_NAME = "audit.jsonl"

_HASH_RE = re.compile(r"[0-9a-f]{64}")
_KEY_ID_RE = re.compile(r"[0-9a-f]{16}")
_SIGNATURE_RE = re.compile(r"[0-9a-f]{128}")
_SEGMENT_NAME_RE = re.compile(r"(.+)\.\d{6,}")


class AuditError(ValueError):
    """A signed head that cannot be read or does not verify."""


def _canonical(obj: object) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def _digest(record: dict[str, Any]) -> str:
    return hashlib.sha256(_canonical(record).encode()).hexdigest()


def head_path_for(path: Path) -> Path:
    """The signed head file beside the log ``path``: ``audit.jsonl`` -> ``audit.head.json``."""
    return path.with_suffix(".head.json")


def resolve_log_path(path: Path) -> Path:
    """The active log file that ``path`` names.

    ``path`` itself, ``audit.jsonl`` in a folder, or the active file of a rotated segment
    (``audit.jsonl.000003`` -> ``audit.jsonl``).
    """
    if path.is_dir():
        return path / _DEFAULT_LOG_NAME
    match = _SEGMENT_NAME_RE.fullmatch(path.name)
    if match:
        return path.with_name(match.group(1))
    return path


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class SignedHead:
    """The audit chain's head signed by the coordinator: record ``seq`` has hash ``hash``.

    See the module docstring for the JSON form and the signed bytes.
    """

    seq: int
    hash: str
    round: int
    time_ms: int
    key_id: str
    signature: bytes

    @staticmethod
    def signed_message(*, seq: int, hash: str, round: int, time_ms: int, key_id: str) -> bytes:
        """The bytes an audit head signature covers."""
        fields = {"hash": hash, "key_id": key_id, "round": round, "seq": seq, "time_ms": time_ms}
        return _SIGNING_CONTEXT + _canonical(fields).encode()

    def message(self) -> bytes:
        """The bytes this head's signature covers."""
        return self.signed_message(
            seq=self.seq,
            hash=self.hash,
            round=self.round,
            time_ms=self.time_ms,
            key_id=self.key_id,
        )

    @classmethod
    def sign(cls, key: SigningKey, *, seq: int, hash: str, round: int, time_ms: int) -> SignedHead:
        """Sign the head ``(seq, hash)`` at the end of ``round``."""
        message = cls.signed_message(
            seq=seq, hash=hash, round=round, time_ms=time_ms, key_id=key.key_id
        )
        return cls(seq, hash, round, time_ms, key.key_id, key.sign(message))

    def verify(self, key: VerifyKey) -> None:
        """Raise :class:`AuditError` unless ``key`` made this signature."""
        if self.key_id != key.key_id:
            msg = f"signed by key {self.key_id}, not by the given key {key.key_id}"
            raise AuditError(msg)
        try:
            key.verify(self.signature, self.message())
        except SignatureError as exc:
            msg = f"signature does not verify under key {key.key_id}"
            raise AuditError(msg) from exc

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form (also the ``data`` of a checkpoint record)."""
        return {
            "format": HEAD_FORMAT,
            "version": HEAD_VERSION,
            "seq": self.seq,
            "hash": self.hash,
            "round": self.round,
            "time_ms": self.time_ms,
            "key_id": self.key_id,
            "signature": self.signature.hex(),
        }

    def to_json(self) -> str:
        """Compact JSON with sorted keys."""
        return _canonical(self.to_dict())

    def to_bytes(self) -> bytes:
        """UTF-8 JSON, ready to publish."""
        return self.to_json().encode()

    @classmethod
    def from_dict(cls, obj: object) -> SignedHead:
        """Read a head from its JSON form; raise :class:`AuditError` if malformed.

        A map holding the head under ``"audit_head"`` (the coordinator's retained status
        message) is accepted too.
        """
        if isinstance(obj, dict) and isinstance(obj.get("audit_head"), dict):
            obj = obj["audit_head"]
        if not isinstance(obj, dict):
            msg = "a signed head is a JSON object"
            raise AuditError(msg)
        if obj.get("format") != HEAD_FORMAT or obj.get("version") != HEAD_VERSION:
            msg = f"not a {HEAD_FORMAT} version {HEAD_VERSION} object"
            raise AuditError(msg)
        seq, digest, round_number = obj.get("seq"), obj.get("hash"), obj.get("round")
        time_ms, key_id, signature = obj.get("time_ms"), obj.get("key_id"), obj.get("signature")
        if not (_is_int(seq) and _is_int(round_number) and _is_int(time_ms)):
            msg = "seq, round and time_ms must be integers"
            raise AuditError(msg)
        if not (isinstance(digest, str) and _HASH_RE.fullmatch(digest)):
            msg = "hash must be 64 lowercase hex digits"
            raise AuditError(msg)
        if not (isinstance(key_id, str) and _KEY_ID_RE.fullmatch(key_id)):
            msg = "key_id must be 16 lowercase hex digits"
            raise AuditError(msg)
        if not (isinstance(signature, str) and _SIGNATURE_RE.fullmatch(signature)):
            msg = "signature must be 128 lowercase hex digits"
            raise AuditError(msg)
        if not (isinstance(seq, int) and seq >= 0) or not (
            isinstance(round_number, int) and round_number >= 0
        ):
            msg = "seq and round must not be negative"
            raise AuditError(msg)
        assert isinstance(time_ms, int)  # noqa: S101 - _is_int checked it above
        return cls(seq, digest, round_number, time_ms, key_id, bytes.fromhex(signature))

    @classmethod
    def from_json(cls, text: str | bytes) -> SignedHead:
        """Read a head from JSON text; raise :class:`AuditError` if malformed."""
        try:
            obj = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            msg = f"not JSON ({exc})"
            raise AuditError(msg) from exc
        return cls.from_dict(obj)

    @classmethod
    def load(cls, path: Path) -> SignedHead:
        """Read a head file; raise :class:`AuditError` (or ``OSError``) if unusable."""
        return cls.from_json(path.read_bytes())


def _parse_record(line: str) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not (
        isinstance(record, dict)
        and _is_int(record.get("seq"))
        and isinstance(record.get("hash"), str)
        and isinstance(record.get("prev"), str)
        and isinstance(record.get("event"), str)
        and isinstance(record.get("data"), dict)
    ):
        return None
    return record


class AuditLog:
    """Appends hash-chained records, rotates the file, signs checkpoints.

    Parameters
    ----------
    path
        The active JSONL file (``$STATE_DIRECTORY/audit.jsonl``); created if missing,
        continued (chain included, across rotated segments) if present. A torn last line
        left by a crash is cut off and a ``log-repaired`` record notes it.
    clock
        Wall clock in seconds.
    signing_key
        The coordinator's key; required by :meth:`checkpoint`. On opening, a head file
        older than the newest checkpoint in the log (a crash between the two writes) is
        rewritten from that checkpoint.
    max_bytes, keep
        Rotation: the active file rotates once it holds ``max_bytes``; ``keep`` rotated
        segments are kept (see :class:`daemon.rotating.RotatingJsonl`).
    head_path
        The signed head file; :func:`head_path_for` of ``path`` by default.

    Attributes
    ----------
    head
        The newest signed head (``None`` before the first checkpoint, or without a key).
    """

    def __init__(
        self,
        path: Path,
        clock: Callable[[], float] = time.time,
        *,
        signing_key: SigningKey | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        keep: int = DEFAULT_KEEP,
        head_path: Path | None = None,
    ) -> None:
        self.path = Path(path)
        self.head_path = head_path if head_path is not None else head_path_for(self.path)
        self._clock = clock
        self._key = signing_key
        self._writer = RotatingJsonl(self.path, max_bytes=max_bytes, keep=keep)
        self._seq, self._prev, last_checkpoint = self._recover()
        self.head: SignedHead | None = None
        if self._writer.size == 0 and self._writer.segments():
            # A rotation was interrupted before its first record, or this is a fresh file
            # after one: every file after the first opens with its segment-start.
            self._write(SEGMENT_START_EVENT, {"segment": self._writer.segment_number})
        torn = self._writer.torn_tail
        if torn:
            _LOGGER.warning(
                "audit log %s: cut a torn last line (%d bytes) left by a crash",
                self.path,
                len(torn),
            )
            self._write(
                REPAIR_EVENT,
                {"discarded_bytes": len(torn), "sha256": hashlib.sha256(torn).hexdigest()},
            )
        if signing_key is not None:
            self.head = self._restore_head(signing_key, last_checkpoint)

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def next_seq(self) -> int:
        """The sequence number the next record will get."""
        return self._seq

    def files(self) -> list[Path]:
        """The log's files, oldest rotated segment first, the active file last."""
        return self._writer.files()

    def _recover(self) -> tuple[int, str, SignedHead | None]:
        """Find the chain's tail and, with a key, the newest checkpoint, newest first."""
        tail: tuple[int, str] | None = None
        skipped = 0
        for line in self._writer.reversed_lines():
            record = _parse_record(line)
            if record is None:
                if tail is None:
                    skipped += 1
                continue
            if tail is None:
                tail = (int(record["seq"]) + 1, str(record["hash"]))
                if self._key is None:
                    break
            if record["event"] == CHECKPOINT_EVENT:
                try:
                    checkpoint = SignedHead.from_dict(record["data"])
                except AuditError:
                    continue
                return (*tail, checkpoint)
        if skipped and tail is not None:
            _LOGGER.warning(
                "audit log %s: %d unreadable line(s) at its end; continuing the chain from "
                "the last readable record (verification will report them)",
                self.path,
                skipped,
            )
        if tail is None:
            if skipped:
                _LOGGER.warning(
                    "audit log %s holds no readable record; starting a new chain", self.path
                )
            return 0, _GENESIS, None
        return (*tail, None)

    def _restore_head(self, key: SigningKey, newest: SignedHead | None) -> SignedHead | None:
        try:
            stored: SignedHead | None = SignedHead.load(self.head_path)
        except FileNotFoundError:
            stored = None
        except (OSError, AuditError) as exc:
            _LOGGER.warning("audit head %s is unusable (%s)", self.head_path, exc)
            stored = None
        if newest is not None and (stored is None or stored.seq < newest.seq):
            try:
                newest.verify(key.verify_key)
            except AuditError as exc:
                _LOGGER.warning("audit log %s: newest checkpoint unusable (%s)", self.path, exc)
                return stored
            write_atomically(self.head_path, newest.to_bytes() + b"\n")
            _LOGGER.info(
                "audit head %s rewritten from the checkpoint at seq %d", self.head_path, newest.seq
            )
            return newest
        if stored is not None and stored.seq >= self._seq:
            _LOGGER.warning(
                "audit head %s names seq %d but the log ends before it (next seq %d)",
                self.head_path,
                stored.seq,
                self._seq,
            )
        return stored

    def _write(self, event: str, data: dict[str, Any], now: float | None = None) -> None:
        record: dict[str, Any] = {
            "seq": self._seq,
            "time": round(self._clock() if now is None else now, 3),
            "event": event,
            "data": data,
            "prev": self._prev,
        }
        record["hash"] = _digest(record)
        self._writer.write_line(_canonical(record))
        self._seq += 1
        self._prev = record["hash"]

    def _rotate_if_needed(self) -> None:
        if self._writer.rotate_if_needed():
            self._write(SEGMENT_START_EVENT, {"segment": self._writer.segment_number})

    def append(self, event: str, **data: Any) -> None:
        """Write one record ``{seq, time, event, data, prev, hash}``, flushed.

        Raises
        ------
        ValueError
            If ``event`` is reserved (``checkpoint``, ``segment-start``, ``log-repaired``).
        """
        if event in _RESERVED_EVENTS:
            msg = f"audit event {event!r} is reserved"
            raise ValueError(msg)
        self._rotate_if_needed()
        self._write(event, data)

    def checkpoint(self, round_number: int) -> SignedHead:
        """Sign the chain's head, append the checkpoint, fsync, write the head file.

        Call it at the end of every round (it includes :meth:`sync`), after the round's
        records. The log is fsynced before the head file is replaced, so after a crash
        the head file never names a record the log lost.

        Parameters
        ----------
        round_number
            The round just completed (the completed round at start/stop).

        Returns
        -------
        SignedHead
            The new head, to publish (retained) next to the round summary.

        Raises
        ------
        RuntimeError
            Without a signing key, or before any record was written.
        """
        if self._key is None:
            msg = "this audit log has no signing key"
            raise RuntimeError(msg)
        self._rotate_if_needed()
        if self._seq == 0:
            msg = "nothing to checkpoint: the audit log is empty"
            raise RuntimeError(msg)
        now = self._clock()
        head = SignedHead.sign(
            self._key,
            seq=self._seq - 1,
            hash=self._prev,
            round=round_number,
            time_ms=int(now * 1000),
        )
        self._write(CHECKPOINT_EVENT, head.to_dict(), now)
        self._writer.sync()
        write_atomically(self.head_path, head.to_bytes() + b"\n")
        self.head = head
        return head

    def sync(self) -> None:
        """Fsync the log (end of round, when not checkpointing)."""
        self._writer.sync()

    def close(self) -> None:
        """Flush, fsync and close; calling it again does nothing."""
        self._writer.close()


class RecordBudget:
    """Per-round budget of individual audit records per key; the rest only counted.

    Under a flood of rejections the coordinator writes an individual record for the
    first ``per_key`` events of each key (e.g. ``(device, reason)``) in a round and
    counts the rest; at round end :meth:`drain` returns the counts for one summary
    record. At most ``max_keys`` keys are tracked per round; later keys share the
    overflow key ``"other keys"`` (keys built from claimed device ids are attacker
    chosen).

    Parameters
    ----------
    per_key
        Individual records per key per round (0: summarise everything).
    max_keys
        Keys tracked per round (at least 1).
    overflow_key
        The key shared by keys beyond ``max_keys`` (give it the shape of your keys, e.g.
        ``("*", "*")`` for ``(device, reason)``).
    """

    OVERFLOW_KEY = "other keys"

    def __init__(
        self, per_key: int = 10, max_keys: int = 256, overflow_key: Hashable = OVERFLOW_KEY
    ) -> None:
        if per_key < 0 or max_keys < 1:
            msg = f"per_key must be >= 0 and max_keys >= 1, got {per_key} and {max_keys}"
            raise ValueError(msg)
        self.per_key = per_key
        self.max_keys = max_keys
        self.overflow_key = overflow_key
        self._admitted: dict[Hashable, int] = {}
        self._summarised: dict[Hashable, int] = {}

    def admit(self, key: Hashable) -> bool:
        """Count one event; ``True``: record it individually, ``False``: summarise it."""
        if key not in self._admitted and len(self._admitted) >= self.max_keys:
            key = self.overflow_key
        admitted = self._admitted.get(key, 0)
        if admitted < self.per_key:
            self._admitted[key] = admitted + 1
            return True
        self._admitted.setdefault(key, admitted)
        self._summarised[key] = self._summarised.get(key, 0) + 1
        return False

    @property
    def summarised(self) -> int:
        """Events counted but not recorded individually since the last :meth:`drain`."""
        return sum(self._summarised.values())

    def drain(self) -> dict[Hashable, int]:
        """Return the summarised counts per key and start a new round."""
        counts = self._summarised
        self._admitted = {}
        self._summarised = {}
        return counts


@dataclass(frozen=True, slots=True)
class AuditVerification:
    """Outcome of :func:`verify_audit_log`.

    Attributes
    ----------
    ok
        Whether everything checked is intact.
    records
        Records verified (before the failure, when not ``ok``).
    first_bad_line, problem, file
        Where and what the failure is (``first_bad_line`` is ``None`` for a problem with a
        whole file, e.g. a missing head file or segment).
    files
        The log files walked, in order.
    first_seq, last_seq
        Sequence numbers of the first and last records verified.
    trimmed
        Older segments were removed (retention): links before ``first_seq`` are unchecked.
    signatures_checked
        A public key was given, so checkpoints and heads were verified.
    checkpoints
        Checkpoint records found (signatures verified when ``signatures_checked``).
    signed_seq, signed_round
        The newest head the log was matched against (``None`` without a key).
    unsigned_records
        Records after ``signed_seq``: protected by the chain only.
    notes
        Facts worth reporting on success (retention, a torn last line, a stale head file).
    """

    ok: bool
    records: int
    first_bad_line: int | None = None
    problem: str | None = None
    file: Path | None = None
    files: tuple[Path, ...] = ()
    first_seq: int | None = None
    last_seq: int | None = None
    trimmed: bool = False
    signatures_checked: bool = False
    checkpoints: int = 0
    signed_seq: int | None = None
    signed_round: int | None = None
    unsigned_records: int = 0
    notes: tuple[str, ...] = ()

    def describe(self) -> str:
        """One line for humans: the failure with its file and line, or the summary."""
        if not self.ok:
            where = f"{self.file}: " if self.file is not None else ""
            line = f"line {self.first_bad_line}: " if self.first_bad_line is not None else ""
            return f"{where}{line}{self.problem} (first {self.records} records intact)"
        parts = [f"{self.records} records"]
        if len(self.files) > 1:
            parts[0] += f" in {len(self.files)} files"
        parts[0] += ", chain intact"
        if self.signatures_checked:
            parts.append(
                f"{self.checkpoints} checkpoint(s) signed; signed head at seq {self.signed_seq} "
                f"(round {self.signed_round}) matches"
            )
            if self.unsigned_records:
                parts.append(
                    f"{self.unsigned_records} record(s) after it are covered by the chain only"
                )
        else:
            parts.append("signatures not checked (no --key)")
        parts.extend(self.notes)
        return "ok, " + "; ".join(parts)


@dataclass(slots=True)
class _Located:
    file: Path
    line: int


class _Failure(Exception):  # noqa: N818 - internal control flow, never escapes
    """A verification failure at ``file``, ``line`` (``None``: the whole file)."""

    def __init__(self, problem: str, file: Path | None, line: int | None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.file = file
        self.line = line


@dataclass(slots=True)
class _Walk:
    """State of one verification pass over the files."""

    key: VerifyKey | None
    wanted: set[int]
    prev: str = _GENESIS
    next_seq: int = 0
    records: int = 0
    first_seq: int | None = None
    last: _Located | None = None
    trimmed: bool = False
    checkpoints: int = 0
    newest_checkpoint: SignedHead | None = None
    found: dict[int, tuple[str, _Located]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def file(self, path: Path, number: int | None, *, oldest: bool, active: bool) -> None:
        raw = path.read_bytes()
        lines = raw.split(b"\n")
        unterminated = lines.pop()  # b"" when the file ends with a newline
        first_in_file = True
        for index, raw_line in enumerate([*lines, unterminated], start=1):
            if not raw_line.strip():
                continue
            is_last_unterminated = index == len(lines) + 1
            try:
                record = _parse_record(raw_line.decode("utf-8"))
            except UnicodeDecodeError:
                record = None
            if record is None:
                if is_last_unterminated and active:
                    self.notes.append(
                        f"{path}: line {index}: torn last line (a crash while writing) ignored"
                    )
                    return
                raise _Failure("unparseable record", path, index)
            self.record(record, path, index, number, first_in_file=first_in_file, oldest=oldest)
            first_in_file = False

    def record(
        self,
        record: dict[str, Any],
        path: Path,
        line: int,
        number: int | None,
        *,
        first_in_file: bool,
        oldest: bool,
    ) -> None:
        claimed = record.pop("hash")
        event, data, seq = record["event"], record["data"], record["seq"]
        opens_segment = not oldest or (number is not None and number > 1)
        if first_in_file and opens_segment and event != SEGMENT_START_EVENT:
            raise _Failure("segment does not begin with its segment-start record", path, line)
        if first_in_file and self.records == 0 and oldest and event == SEGMENT_START_EVENT:
            # Older segments were removed by retention: this segment-start anchors the walk.
            declared = data.get("segment")
            if not _is_int(declared) or declared < 2 or (number is not None and declared != number):
                raise _Failure("segment-start names the wrong segment", path, line)
            self.prev, self.next_seq, self.trimmed = record["prev"], seq, True
            self.notes.append(
                f"records before seq {seq} were removed by retention; verified from {path.name}"
                " (links before it cannot be checked)"
            )
        if record["prev"] != self.prev:
            raise _Failure("chain broken (prev mismatch)", path, line)
        if _digest(record) != claimed:
            raise _Failure("record altered (hash mismatch)", path, line)
        if seq != self.next_seq:
            raise _Failure(f"sequence gap (expected seq {self.next_seq}, found {seq})", path, line)
        if event == SEGMENT_START_EVENT:
            if not first_in_file:
                raise _Failure("segment-start record inside a segment", path, line)
            if number is not None and data.get("segment") != number:
                raise _Failure("segment-start names the wrong segment", path, line)
        elif event == CHECKPOINT_EVENT:
            self.checkpoint(data, record, path, line)
        if seq in self.wanted:
            self.found[seq] = (claimed, _Located(path, line))
        if self.first_seq is None:
            self.first_seq = seq
        self.prev = claimed
        self.next_seq = seq + 1
        self.records += 1
        self.last = _Located(path, line)

    def checkpoint(self, data: object, record: dict[str, Any], path: Path, line: int) -> None:
        try:
            head = SignedHead.from_dict(data)
        except AuditError as exc:
            raise _Failure(f"malformed checkpoint ({exc})", path, line) from exc
        if head.seq != record["seq"] - 1 or head.hash != record["prev"]:
            raise _Failure("checkpoint does not sign the record before it", path, line)
        if self.key is not None:
            try:
                head.verify(self.key)
            except AuditError as exc:
                raise _Failure(f"checkpoint {exc}", path, line) from exc
        self.checkpoints += 1
        self.newest_checkpoint = head

    def match(self, head: SignedHead, source: str) -> None:
        """Require the log to hold the record ``head`` names."""
        if self.first_seq is not None and head.seq < self.first_seq:
            raise _Failure(
                f"the {source} (seq {head.seq}) predates the oldest remaining record "
                f"(seq {self.first_seq}) and cannot be checked",
                None,
                None,
            )
        hit = self.found.get(head.seq)
        if hit is None:
            ends = f"log ends at seq {self.next_seq - 1}" if self.records else "log holds no record"
            where = self.last
            raise _Failure(
                f"{ends} but the {source} is at seq {head.seq} "
                f"(round {head.round}): records were truncated or deleted",
                where.file if where else None,
                where.line if where else None,
            )
        digest, located = hit
        if digest != head.hash:
            raise _Failure(
                f"record seq {head.seq} does not match the {source}: the log was rewritten",
                located.file,
                located.line,
            )


def verify_audit_log(
    path: Path,
    *,
    key: VerifyKey | None = None,
    head: SignedHead | None = None,
    head_path: Path | None = None,
) -> AuditVerification:
    """Check the audit log: chain, segments and, with ``key``, signatures and heads.

    Parameters
    ----------
    path
        The active file (``audit.jsonl``), its folder, or one of its rotated segments;
        every segment is walked, oldest first.
    key
        The coordinator's public key. Without it only the chain is checked (a writer can
        rebuild a chain); with it every checkpoint's signature is verified and the signed
        head file must exist and match the log.
    head
        A head published elsewhere (the retained status message a monitor saved): the
        log must hold the record it names. Its signature is verified when ``key`` is
        given.
    head_path
        The signed head file; :func:`head_path_for` of the active file by default.

    Returns
    -------
    AuditVerification
        See the module docstring for what is and is not detected.
    """
    log_path = resolve_log_path(path)
    head_file = head_path if head_path is not None else head_path_for(log_path)
    segments = list_segments(log_path)
    files: list[tuple[int | None, Path]] = [(n, p) for n, p in segments]
    if log_path.is_file():
        files.append((segments[-1][0] + 1 if segments else None, log_path))
    walk = _Walk(key, set())
    try:
        heads = _verify(walk, log_path, files, head_file, head)
    except _Failure as failure:
        return AuditVerification(
            ok=False,
            records=walk.records,
            first_bad_line=failure.line,
            problem=failure.problem,
            file=failure.file,
            files=tuple(p for _, p in files),
            first_seq=walk.first_seq,
            last_seq=walk.next_seq - 1 if walk.records else None,
            trimmed=walk.trimmed,
            signatures_checked=key is not None,
            checkpoints=walk.checkpoints,
        )
    newest_head = max(heads, key=lambda h: h.seq, default=None)
    last_seq = walk.next_seq - 1 if walk.records else None
    return AuditVerification(
        ok=True,
        records=walk.records,
        files=tuple(p for _, p in files),
        first_seq=walk.first_seq,
        last_seq=last_seq,
        trimmed=walk.trimmed,
        signatures_checked=key is not None,
        checkpoints=walk.checkpoints,
        signed_seq=newest_head.seq if newest_head else None,
        signed_round=newest_head.round if newest_head else None,
        unsigned_records=(
            last_seq - newest_head.seq if newest_head is not None and last_seq is not None else 0
        ),
        notes=tuple(walk.notes),
    )


def _verify(
    walk: _Walk,
    log_path: Path,
    files: list[tuple[int | None, Path]],
    head_file: Path,
    given: SignedHead | None,
) -> list[SignedHead]:
    """Walk every file and match the heads; return the heads matched. Raise _Failure."""
    if not files:
        raise _Failure("no audit log here", log_path, None)
    local: SignedHead | _Failure | None = None
    if walk.key is not None:
        try:
            local = _load_head_file(head_file)
        except _Failure as failure:
            local = failure  # reported after the walk, which may find a worse problem
    walk.wanted.update(h.seq for h in (local, given) if isinstance(h, SignedHead))
    rotated = [(n, p) for n, p in files if n is not None and p != log_path]
    for (number, _), (following, following_path) in itertools.pairwise(rotated):
        if following != number + 1:
            raise _Failure(f"segment {number + 1} is missing before this one", following_path, None)
    for index, (segment, file) in enumerate(files):
        walk.file(file, segment, oldest=index == 0, active=file == log_path)
    heads: list[SignedHead] = []
    if isinstance(local, _Failure):
        raise local
    if local is not None and walk.key is not None:
        _check_signature(local, walk.key, "signed head file", head_file)
        walk.match(local, f"signed head ({head_file.name})")
        heads.append(local)
        newest = walk.newest_checkpoint
        if newest is not None and newest.seq > local.seq:
            walk.notes.append(
                f"{head_file.name} is older than the log's newest checkpoint (seq "
                f"{newest.seq}): a crash between the two writes, repaired on restart"
            )
            heads.append(newest)
    if given is not None:
        if walk.key is not None:
            _check_signature(given, walk.key, "given head", None)
        else:
            walk.notes.append("the given head's signature was not checked (no --key)")
        walk.match(given, "given head")
        heads.append(given)
    return heads


def _load_head_file(head_file: Path) -> SignedHead:
    try:
        return SignedHead.load(head_file)
    except FileNotFoundError as exc:
        msg = "signed head file missing (required with a key: a truncated log would pass)"
        raise _Failure(msg, head_file, None) from exc
    except (OSError, AuditError) as exc:
        raise _Failure(f"unreadable signed head ({exc})", head_file, None) from exc


def _check_signature(head: SignedHead, key: VerifyKey, source: str, file: Path | None) -> None:
    try:
        head.verify(key)
    except AuditError as exc:
        raise _Failure(f"{source}: {exc}", file, None) from exc
