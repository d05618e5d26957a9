"""Enrolment stores: a folder of ``<device_id>.pub`` files, or an embedded SQLite database.

A folder of one PEM file per device is read whole at start-up: every key is parsed and held
in memory. That is fine for thousands of devices and does not scale to a million. The
SQLite store keeps one row per device (id, raw 32-byte public key, enrolment time, revoked
flag) in a single WAL-mode database; a lookup by id is one indexed query, and parsed keys
are kept in a bounded LRU, so opening the store costs the same at 10^6 devices as at 10^4.

A sharded coordinator reads the same rows from a PostgreSQL server instead
(:class:`~byzedge.coordinator.enrolment_pg.PostgresEnrolment`, ``enrolment = "postgres"``).

Every store is a read-only ``Mapping[str, VerifyKey]`` view of the enrolled, non-revoked
devices (:data:`Enrolment`), which is what ingest and the coordinator take. The two
database stores also follow :class:`DatabaseEnrolment`: the writes of ``byzedge
coordinator enrol``, :meth:`~DatabaseEnrolment.refresh` for a reload, and
:meth:`~DatabaseEnrolment.sorted_ids`, the ranked ids the cohort draw picks rows from
without listing a million ids each round.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeAlias, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from byzedge.coordinator.devices import DeviceRegistry
from byzedge.protocol.errors import ProtocolError
from byzedge.protocol.signing import VerifyKey
from byzedge.protocol.topics import validate_device_id

if TYPE_CHECKING:
    from byzedge.coordinator.config import CoordinatorConfig
    from byzedge.coordinator.enrolment_pg import PostgresEnrolment

__all__ = [
    "DEFAULT_CACHE_SIZE",
    "DatabaseEnrolment",
    "Enrolment",
    "EnrolmentStoreError",
    "KeyCache",
    "SortedIds",
    "SqliteEnrolment",
    "closing_enrolment",
    "enrolment_db_path",
    "enrolment_dsn",
    "open_database_enrolment",
    "open_enrolment",
    "read_key_folder",
]

_LOGGER = logging.getLogger(__name__)

Enrolment: TypeAlias = Mapping[str, VerifyKey]
"""What ingest and the coordinator read: enrolled (non-revoked) device id -> public key."""

DEFAULT_CACHE_SIZE = 65_536
"""Parsed keys kept by :class:`SqliteEnrolment` (a round of 10,000 devices fits many times)."""

_PREFETCH_CHUNK = 500
"""Ids per ``IN (...)`` query of :meth:`SqliteEnrolment.prefetch` (SQLite caps parameters)."""


class EnrolmentStoreError(Exception):
    """An enrolment database cannot be reached, read or written (the driver's error inside)."""


@runtime_checkable
class DatabaseEnrolment(Protocol):
    """What the database stores (SQLite, PostgreSQL) offer besides the read-only mapping."""

    def __len__(self) -> int:
        """How many devices are enrolled and not revoked."""

    @property
    def label(self) -> str:
        """Where the store is, for messages (a file, or a DSN without its password)."""

    def sorted_ids(self) -> NDArray[np.bytes_]:
        """The enrolled, non-revoked ids in byte order (``sorted()``'s), as ASCII bytes."""

    def refresh(self) -> tuple[list[str], list[str]]:
        """Drop cached keys changed by others; return the ids (enrolled, revoked) since."""

    def prefetch(self, device_ids: Iterable[str]) -> int:
        """Read the keys of ``device_ids`` into the LRU at once; return how many exist."""

    def enrol_many(
        self, devices: Iterable[tuple[str, bytes]], *, enrolled_at: float | None = None
    ) -> int:
        """Enrol ``(device_id, raw key)`` pairs in one transaction; return how many."""

    def enrol(self, device_id: str, key: VerifyKey, *, enrolled_at: float | None = None) -> None:
        """Enrol one device (again, if it was revoked)."""

    def revoke(self, device_id: str) -> bool:
        """Revoke one device; ``False`` when it is unknown or already revoked."""

    def import_folder(self, folder: Path) -> tuple[int, list[str]]:
        """Enrol a folder's ``<device_id>.pub`` files; return (imported, skipped lines)."""

    def close(self) -> None:
        """Release the connection."""


class SortedIds:
    """The ranked ids of a database store, kept until the store's change counter moves.

    The cohort draw picks ``size`` row numbers out of ``len(ids)`` and maps them to ids
    through this array. Listing and sorting 10^6 ids costs about half a second, so it is
    done once per change of the enrolment instead of once per round. Ids are ASCII
    (:func:`~byzedge.protocol.topics.validate_identifier`), so a fixed-width bytes array
    holds 10^6 of them in about 11 MB where a list of ``str`` takes about 70 MB.
    """

    def __init__(self) -> None:
        self._ids: NDArray[np.bytes_] | None = None
        self._seq = -1

    @property
    def last(self) -> NDArray[np.bytes_] | None:
        """The array last listed (``None`` before the first), whatever the counter now."""
        return self._ids

    def get(self, seq: int, load: Callable[[], list[str]]) -> NDArray[np.bytes_]:
        """The array for change counter ``seq``; ``load`` lists the ids when it moved."""
        if self._ids is None or seq != self._seq:
            ids = load()
            self._ids = np.array(ids, dtype=np.bytes_) if ids else np.array([], dtype="S1")
            self._seq = seq
        return self._ids


_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS devices ("
    " device_id TEXT PRIMARY KEY,"
    " public_key BLOB NOT NULL CHECK (length(public_key) = 32),"
    " enrolled_at REAL NOT NULL,"
    " revoked INTEGER NOT NULL DEFAULT 0,"
    " seq INTEGER NOT NULL DEFAULT 0"
    ") WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS devices_seq ON devices (seq)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO meta (key, value) VALUES ('seq', 0)",
)


class KeyCache:
    """The parsed keys a database store keeps: an LRU of at most ``size`` keys.

    Parsing a key is the cost a lookup saves: a round of 10,000 devices reads each key
    once from the database, then from here (benchmarks/results/enrolment.md).
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            msg = f"cache_size must be at least 1, got {size}"
            raise ValueError(msg)
        self.size = size
        self._keys: OrderedDict[str, VerifyKey] = OrderedDict()

    def __contains__(self, device_id: object) -> bool:
        return device_id in self._keys

    def get(self, device_id: str) -> VerifyKey | None:
        """The cached key of ``device_id`` (now the most recently used), or ``None``."""
        key = self._keys.get(device_id)
        if key is not None:
            self._keys.move_to_end(device_id)
        return key

    def put(self, device_id: str, key: VerifyKey) -> None:
        """Keep ``key``, evicting the least recently used beyond :attr:`size`."""
        self._keys[device_id] = key
        self._keys.move_to_end(device_id)
        if len(self._keys) > self.size:
            self._keys.popitem(last=False)

    def pop(self, device_id: str) -> None:
        """Forget ``device_id``'s key (enrolled again, or revoked)."""
        self._keys.pop(device_id, None)

    def missing(self, device_ids: Iterable[str]) -> list[str]:
        """The ids of ``device_ids`` not cached, once each, at most :attr:`size` of them.

        A prefetch reads no more: ids beyond the LRU's size would evict each other.
        """
        wanted = [d for d in dict.fromkeys(device_ids) if d not in self._keys]
        return wanted[: self.size]


def read_key_folder(folder: Path) -> tuple[list[tuple[str, bytes]], list[str]]:
    """The ``(device_id, raw key)`` of every ``<device_id>.pub`` in ``folder``, and the skips.

    A file with a bad name or key is skipped with one line saying why, as the files
    store skips it with a warning.

    Raises
    ------
    NotADirectoryError
        When ``folder`` is not a folder.
    """
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a folder")
    pairs: list[tuple[str, bytes]] = []
    skipped: list[str] = []
    for path in sorted(folder.glob("*.pub")):
        try:
            pairs.append((validate_device_id(path.stem), VerifyKey.load(path).raw))
        except (ProtocolError, OSError) as exc:
            skipped.append(f"{path}: {exc}")
    return pairs, skipped


class SqliteEnrolment(Mapping[str, VerifyKey]):
    """Enrolled devices in an embedded SQLite database (WAL mode).

    The mapping holds the enrolled devices that are not revoked. Writes
    (:meth:`enrol`, :meth:`enrol_many`, :meth:`revoke`, :meth:`import_folder`) are each one
    transaction. Every write stamps the rows it changes with the next value of a change
    counter, so a running coordinator learns what another process (the ``byzedge
    coordinator enrol`` command) changed with :meth:`refresh`.

    Parameters
    ----------
    path:
        The database file; created (with its folder) when missing.
    cache_size:
        How many parsed keys the LRU keeps.
    """

    def __init__(self, path: Path, *, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        self._cache = KeyCache(cache_size)
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # The coordinator reads from its main loop and reloads on SIGHUP in the same loop;
        # the lock keeps a shared connection safe if a caller uses another thread.
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._lock = threading.RLock()
        self._sorted = SortedIds()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            with self._transaction():
                for statement in _SCHEMA:
                    self._db.execute(statement)
            self._seen_seq = self._current_seq()

    # -- reading -----------------------------------------------------------------------

    def __getitem__(self, device_id: str) -> VerifyKey:
        with self._lock:
            key = self._cache.get(device_id)
            if key is not None:
                return key
            row = self._db.execute(
                "SELECT public_key FROM devices WHERE device_id = ? AND revoked = 0",
                (device_id,),
            ).fetchone()
            if row is None:
                raise KeyError(device_id)
            key = VerifyKey.from_raw(bytes(row[0]))
            self._cache.put(device_id, key)
            return key

    def __contains__(self, device_id: object) -> bool:
        if not isinstance(device_id, str):
            return False
        with self._lock:
            if device_id in self._cache:
                return True
            row = self._db.execute(
                "SELECT 1 FROM devices WHERE device_id = ? AND revoked = 0", (device_id,)
            ).fetchone()
            return row is not None

    def __iter__(self) -> Iterator[str]:
        # Read into a list first: a cursor left open while the caller writes would lock.
        with self._lock:
            rows = self._db.execute(
                "SELECT device_id FROM devices WHERE revoked = 0 ORDER BY device_id"
            ).fetchall()
        return (row[0] for row in rows)

    def __len__(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT count(*) FROM devices WHERE revoked = 0").fetchone()
        return int(row[0])

    @property
    def label(self) -> str:
        """The database file, for messages."""
        return str(self.path)

    def sorted_ids(self) -> NDArray[np.bytes_]:
        """The enrolled, non-revoked ids in byte order, as the database holds them now.

        One indexed read of the change counter per call; the ids are listed again only
        when another write (here or in another process) moved it. SQLite's default
        ``BINARY`` collation orders by bytes, which is ``sorted()``'s order for ASCII ids.
        """
        with self._lock:
            # A read transaction: the counter and the ids come from the same snapshot.
            self._db.execute("BEGIN")
            try:
                return self._sorted.get(self._current_seq(), self._list_ids)
            finally:
                self._db.execute("COMMIT")

    def prefetch(self, device_ids: Iterable[str]) -> int:
        """Read the keys of ``device_ids`` into the LRU; return how many are enrolled.

        A round's cohort is known before its updates arrive: reading its keys in a few
        queries costs a fraction of one query per update (benchmarks/results/enrolment.md).
        Ids beyond the LRU's size are not read (they would evict each other).
        """
        wanted = self._cache.missing(device_ids)
        found = 0
        with self._lock:
            for start in range(0, len(wanted), _PREFETCH_CHUNK):
                chunk = wanted[start : start + _PREFETCH_CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(
                    "SELECT device_id, public_key FROM devices"  # noqa: S608 - only "?" marks
                    f" WHERE revoked = 0 AND device_id IN ({marks})",
                    chunk,
                ).fetchall()
                for device_id, raw in rows:
                    self._cache.put(device_id, VerifyKey.from_raw(bytes(raw)))
                found += len(rows)
        return found

    def _list_ids(self) -> list[str]:
        rows = self._db.execute(
            "SELECT device_id FROM devices WHERE revoked = 0 ORDER BY device_id"
        ).fetchall()
        return [row[0] for row in rows]

    def is_revoked(self, device_id: str) -> bool:
        """Whether ``device_id`` was enrolled and is now revoked."""
        with self._lock:
            row = self._db.execute(
                "SELECT revoked FROM devices WHERE device_id = ?", (device_id,)
            ).fetchone()
        return row is not None and bool(row[0])

    def enrolled_at(self, device_id: str) -> float | None:
        """When ``device_id`` was (last) enrolled, in Unix seconds; ``None`` if never."""
        with self._lock:
            row = self._db.execute(
                "SELECT enrolled_at FROM devices WHERE device_id = ?", (device_id,)
            ).fetchone()
        return None if row is None else float(row[0])

    def refresh(self) -> tuple[list[str], list[str]]:
        """Drop cached keys changed since the last refresh; return (enrolled, revoked) ids.

        ``enrolled`` are the ids enrolled (or enrolled again under a new key) and
        ``revoked`` those revoked since the last call (or since this store was opened).
        """
        with self._lock:
            rows = self._db.execute(
                "SELECT device_id, revoked FROM devices WHERE seq > ? ORDER BY device_id",
                (self._seen_seq,),
            ).fetchall()
            self._seen_seq = self._current_seq()
            enrolled: list[str] = []
            revoked: list[str] = []
            for device_id, is_revoked in rows:
                self._cache.pop(device_id)
                (revoked if is_revoked else enrolled).append(device_id)
        return enrolled, revoked

    # -- writing -----------------------------------------------------------------------

    def enrol(self, device_id: str, key: VerifyKey, *, enrolled_at: float | None = None) -> None:
        """Enrol ``device_id`` with ``key`` (again, if it was revoked); one transaction."""
        self.enrol_many([(device_id, key.raw)], enrolled_at=enrolled_at)

    def enrol_many(
        self, devices: Iterable[tuple[str, bytes]], *, enrolled_at: float | None = None
    ) -> int:
        """Enrol many ``(device_id, raw 32-byte key)`` pairs in one transaction.

        Every id is validated and every key parsed before anything is written, so a bad
        entry leaves the store unchanged (``ProtocolError``). Returns the number written.
        """
        when = time.time() if enrolled_at is None else enrolled_at
        rows: list[tuple[str, bytes]] = []
        for device_id, raw in devices:
            validate_device_id(device_id)
            VerifyKey.from_raw(raw)
            rows.append((device_id, bytes(raw)))
        with self._lock, self._transaction():
            seq = self._next_seq()
            self._db.executemany(
                "INSERT INTO devices (device_id, public_key, enrolled_at, revoked, seq)"
                " VALUES (?, ?, ?, 0, ?)"
                " ON CONFLICT (device_id) DO UPDATE SET public_key = excluded.public_key,"
                " enrolled_at = excluded.enrolled_at, revoked = 0, seq = excluded.seq",
                ((device_id, raw, when, seq) for device_id, raw in rows),
            )
            for device_id, _ in rows:
                self._cache.pop(device_id)
        return len(rows)

    def revoke(self, device_id: str) -> bool:
        """Revoke ``device_id``; return False when it is unknown or already revoked."""
        with self._lock, self._transaction():
            seq = self._next_seq()
            changed = self._db.execute(
                "UPDATE devices SET revoked = 1, seq = ? WHERE device_id = ? AND revoked = 0",
                (seq, device_id),
            ).rowcount
            self._cache.pop(device_id)
        return changed > 0

    def import_folder(self, folder: Path) -> tuple[int, list[str]]:
        """Enrol every ``<device_id>.pub`` in ``folder`` in one transaction.

        Returns the number imported and one line per skipped file (a bad name or key, as
        the files store skips it with a warning).
        """
        pairs, skipped = read_key_folder(folder)
        return self.enrol_many(pairs), skipped

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._db.close()

    # -- internals -----------------------------------------------------------------------

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)

    def _current_seq(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'seq'").fetchone()
        return int(row[0])

    def _next_seq(self) -> int:
        self._db.execute("UPDATE meta SET value = value + 1 WHERE key = 'seq'")
        return self._current_seq()


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` on an exception."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("ROLLBACK" if exc_type is not None else "COMMIT")


def enrolment_db_path(config: CoordinatorConfig) -> Path:
    """The SQLite file of ``config``: ``enrolment_db``, or ``state_dir/enrolment.sqlite3``."""
    return config.enrolment_db or config.state_dir / "enrolment.sqlite3"


def enrolment_dsn(config: CoordinatorConfig) -> str:
    """The PostgreSQL DSN of ``config``: ``enrolment_dsn``, or ``enrolment_dsn_file``'s text.

    Raises
    ------
    EnrolmentStoreError
        When neither is set or the file cannot be read.
    """
    if config.enrolment_dsn is not None:
        return config.enrolment_dsn
    if config.enrolment_dsn_file is None:
        raise EnrolmentStoreError("enrolment = 'postgres' needs enrolment_dsn")
    try:
        return config.enrolment_dsn_file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise EnrolmentStoreError(f"enrolment_dsn_file {config.enrolment_dsn_file}: {exc}") from exc


def open_database_enrolment(
    config: CoordinatorConfig, db: Path | None = None
) -> SqliteEnrolment | PostgresEnrolment:
    """The writable database store of ``config`` (``db`` overrides the SQLite file).

    A files configuration gets its SQLite file, so ``byzedge coordinator enrol`` can fill
    a database before the switch to ``enrolment = "sqlite"``.

    Raises
    ------
    EnrolmentStoreError
        When the database cannot be opened (a server unreachable, a file unwritable).
    """
    if config.enrolment == "postgres" and db is None:
        from byzedge.coordinator.enrolment_pg import PostgresEnrolment  # noqa: PLC0415

        return PostgresEnrolment(enrolment_dsn(config))
    path = db or enrolment_db_path(config)
    try:
        return SqliteEnrolment(path)
    except (OSError, sqlite3.Error) as exc:
        raise EnrolmentStoreError(f"enrolment database {path}: {exc}") from exc


@contextlib.contextmanager
def closing_enrolment(store: Enrolment) -> Iterator[Enrolment]:
    """Yield ``store``; close it afterwards when it is a database store (files hold nothing)."""
    try:
        yield store
    finally:
        if isinstance(store, DatabaseEnrolment):
            store.close()


def open_enrolment(config: CoordinatorConfig) -> Enrolment:
    """The enrolment store ``config`` selects (``enrolment = "files" | "sqlite" | "postgres"``).

    The PostgreSQL driver is imported only for ``"postgres"``, so a coordinator on files
    or SQLite runs without it.
    """
    if config.enrolment in ("sqlite", "postgres"):
        return open_database_enrolment(config)
    return DeviceRegistry.load(config.devices_dir)
