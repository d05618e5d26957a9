"""The PostgreSQL enrolment store, for a coordinator whose shards share one fleet.

Same rows, contract and change counter as :class:`~byzedge.coordinator.enrolment.SqliteEnrolment`
(one row per device: id, raw 32-byte key, enrolment time, revoked flag, change stamp), in
the tables ``byzedge_devices`` and ``byzedge_meta`` of the database (and schema, through
the DSN's ``search_path``) the operator names with ``enrolment_dsn``. Lookups by id are
one primary-key query on a connection held open; parsed keys are kept in a bounded LRU.

Passwords never sit in ``coordinator.toml``: libpq reads them from ``~/.pgpass``, a
``passfile=`` in the DSN, ``PGPASSFILE`` or ``PGPASSWORD``, or the whole DSN comes from a
file (``enrolment_dsn_file``, a systemd credential). A connection that drops (the server
restarted) is opened again once per call before the error is raised.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeAlias, TypeVar

import numpy as np
import psycopg
from numpy.typing import NDArray
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from byzedge.coordinator.enrolment import (
    DEFAULT_CACHE_SIZE,
    EnrolmentStoreError,
    KeyCache,
    SortedIds,
    read_key_folder,
)
from byzedge.protocol.signing import VerifyKey
from byzedge.protocol.topics import validate_device_id

__all__ = ["CONNECT_TIMEOUT_S", "PostgresEnrolment", "dsn_has_password", "redact_dsn"]

_LOGGER = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5
"""libpq's ``connect_timeout`` unless the DSN sets one: an unreachable server fails fast."""

_T = TypeVar("_T")
_Db: TypeAlias = "psycopg.Connection[tuple[Any, ...]]"

# The id column sorts by bytes (COLLATE "C") whatever the database's locale, so ORDER BY
# gives Python's sorted() order, which the cohort draw depends on, and uses the key index.
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS byzedge_devices ("
    ' device_id text COLLATE "C" PRIMARY KEY,'
    " public_key bytea NOT NULL CHECK (octet_length(public_key) = 32),"
    " enrolled_at double precision NOT NULL,"
    " revoked boolean NOT NULL DEFAULT false,"
    " seq bigint NOT NULL DEFAULT 0)",
    "CREATE INDEX IF NOT EXISTS byzedge_devices_seq ON byzedge_devices (seq)",
    "CREATE TABLE IF NOT EXISTS byzedge_meta (key text PRIMARY KEY, value bigint NOT NULL)",
    "INSERT INTO byzedge_meta (key, value) VALUES ('seq', 0) ON CONFLICT (key) DO NOTHING",
)
# Two processes creating the tables at once would race in the catalogue; one lock orders them.
_SCHEMA_LOCK = "SELECT pg_advisory_xact_lock(hashtext('byzedge_enrolment_schema'))"


def dsn_has_password(dsn: str) -> bool:
    """Whether ``dsn`` (a libpq URI or ``key=value`` string) carries a password.

    Raises
    ------
    ValueError
        When libpq cannot parse ``dsn``.
    """
    try:
        return bool(conninfo_to_dict(dsn).get("password"))
    except psycopg.ProgrammingError as exc:
        raise ValueError(str(exc).strip()) from exc


def redact_dsn(dsn: str) -> str:
    """``dsn`` without its password, for logs and messages (unparsable: ``<dsn>``)."""
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<dsn>"
    parts.pop("password", None)
    return make_conninfo("", **parts)


class PostgresEnrolment(Mapping[str, VerifyKey]):
    """Enrolled devices in a PostgreSQL database.

    The mapping holds the enrolled devices that are not revoked. Writes (:meth:`enrol`,
    :meth:`enrol_many`, :meth:`revoke`, :meth:`import_folder`) are each one transaction
    and stamp the rows they change with the next value of a change counter (a row of
    ``byzedge_meta`` whose lock also orders concurrent writers), so :meth:`refresh` tells a
    running coordinator what another process changed.

    Parameters
    ----------
    dsn:
        libpq connection string or URI; ``connect_timeout`` defaults to
        :data:`CONNECT_TIMEOUT_S`.
    cache_size:
        How many parsed keys the LRU keeps.

    Raises
    ------
    EnrolmentStoreError
        When the server cannot be reached or the tables cannot be created.
    """

    def __init__(self, dsn: str, *, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        self._cache = KeyCache(cache_size)
        self._dsn = dsn
        self._label = redact_dsn(dsn)
        self._lock = threading.RLock()
        self._sorted = SortedIds()
        self._db = self._connect()
        try:
            with self._db.transaction():
                self._db.execute(_SCHEMA_LOCK)
                for statement in _SCHEMA:
                    self._db.execute(statement)
            self._seen_seq = self._current_seq()
        except psycopg.Error as exc:
            self._db.close()
            raise EnrolmentStoreError(f"enrolment database {self._label}: {exc}") from exc

    # -- reading -----------------------------------------------------------------------

    def __getitem__(self, device_id: str) -> VerifyKey:
        with self._lock:
            key = self._cache.get(device_id)
            if key is not None:
                return key
            row = self._query_one(
                "SELECT public_key FROM byzedge_devices WHERE device_id = %s AND NOT revoked",
                (device_id,),
            )
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
            row = self._query_one(
                "SELECT 1 FROM byzedge_devices WHERE device_id = %s AND NOT revoked",
                (device_id,),
            )
            return row is not None

    def __iter__(self) -> Iterator[str]:
        return (device_id.decode("ascii") for device_id in self.sorted_ids())

    def __len__(self) -> int:
        # The ranked ids the draw keeps: no count(*) over 10^6 rows per round, and the same
        # enrolment as iteration and the draw (also while the server is unreachable).
        return len(self.sorted_ids())

    @property
    def label(self) -> str:
        """The DSN without its password, for messages."""
        return self._label

    def is_revoked(self, device_id: str) -> bool:
        """Whether ``device_id`` was enrolled and is now revoked."""
        row = self._query_one(
            "SELECT revoked FROM byzedge_devices WHERE device_id = %s", (device_id,)
        )
        return row is not None and bool(row[0])

    def enrolled_at(self, device_id: str) -> float | None:
        """When ``device_id`` was (last) enrolled, in Unix seconds; ``None`` if never."""
        row = self._query_one(
            "SELECT enrolled_at FROM byzedge_devices WHERE device_id = %s", (device_id,)
        )
        return None if row is None else float(row[0])

    def sorted_ids(self) -> NDArray[np.bytes_]:
        """The enrolled, non-revoked ids in byte order, as the database holds them now.

        One primary-key read of the change counter per call; the ids are listed again
        (in one repeatable-read snapshot with the counter) only when it moved. While the
        server cannot be reached the ids last listed are returned (logged), so rounds go
        on with the last known enrolment, as a failed reload keeps it.

        Raises
        ------
        EnrolmentStoreError
            When the server cannot be reached and the ids were never listed.
        """

        def ranked(db: _Db) -> NDArray[np.bytes_]:
            with db.transaction():
                db.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                seq = self._current_seq(db)
                return self._sorted.get(seq, lambda: _list_ids(db))

        with self._lock:
            try:
                return self._retrying(ranked)
            except EnrolmentStoreError as exc:
                last = self._sorted.last
                if last is None:
                    raise
                _LOGGER.warning("%s; the cohort is drawn from the ids last read", exc)
                return last

    def prefetch(self, device_ids: Iterable[str]) -> int:
        """Read the keys of ``device_ids`` into the LRU in one query; return how many exist.

        A round's cohort is known before its updates arrive: one round trip for its 10^4
        keys instead of one per update (benchmarks/results/enrolment.md). Ids beyond the
        LRU's size are not read (they would evict each other).
        """
        wanted = self._cache.missing(device_ids)
        if not wanted:
            return 0

        def read(db: _Db) -> list[tuple[Any, ...]]:
            return db.execute(
                "SELECT device_id, public_key FROM byzedge_devices"
                " WHERE device_id = ANY(%s) AND NOT revoked",
                (wanted,),
            ).fetchall()

        with self._lock:
            rows = self._retrying(read)
            for device_id, raw in rows:
                self._cache.put(str(device_id), VerifyKey.from_raw(bytes(raw)))
        return len(rows)

    def refresh(self) -> tuple[list[str], list[str]]:
        """Drop cached keys changed since the last refresh; return (enrolled, revoked) ids.

        ``enrolled`` are the ids enrolled (or enrolled again under a new key) and
        ``revoked`` those revoked since the last call (or since this store was opened).
        """

        def changes(db: _Db) -> tuple[list[str], list[str]]:
            with db.transaction():
                db.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                rows = db.execute(
                    "SELECT device_id, revoked FROM byzedge_devices WHERE seq > %s"
                    " ORDER BY device_id",
                    (self._seen_seq,),
                ).fetchall()
                seq = self._current_seq(db)
            self._seen_seq = seq
            enrolled: list[str] = []
            revoked: list[str] = []
            for device_id, is_revoked in rows:
                self._cache.pop(str(device_id))
                (revoked if is_revoked else enrolled).append(str(device_id))
            return enrolled, revoked

        with self._lock:
            return self._retrying(changes)

    # -- writing -----------------------------------------------------------------------

    def enrol(self, device_id: str, key: VerifyKey, *, enrolled_at: float | None = None) -> None:
        """Enrol ``device_id`` with ``key`` (again, if it was revoked); one transaction."""
        self.enrol_many([(device_id, key.raw)], enrolled_at=enrolled_at)

    def enrol_many(
        self, devices: Iterable[tuple[str, bytes]], *, enrolled_at: float | None = None
    ) -> int:
        """Enrol many ``(device_id, raw 32-byte key)`` pairs in one transaction.

        Every id is validated and every key parsed before anything is written, so a bad
        entry leaves the store unchanged (``ProtocolError``). The rows travel by ``COPY``
        into a temporary table and are merged from there, so 10^6 devices take seconds,
        not the minutes of one ``INSERT`` each. Returns the number written.
        """
        when = time.time() if enrolled_at is None else enrolled_at
        rows: list[tuple[str, bytes]] = []
        for device_id, raw in devices:
            validate_device_id(device_id)
            VerifyKey.from_raw(raw)
            rows.append((device_id, bytes(raw)))

        def write(db: _Db) -> None:
            with db.transaction():
                seq = self._next_seq(db)
                db.execute(
                    "CREATE TEMPORARY TABLE byzedge_incoming"
                    ' (device_id text COLLATE "C" PRIMARY KEY, public_key bytea NOT NULL)'
                    " ON COMMIT DROP"
                )
                with db.cursor().copy(
                    "COPY byzedge_incoming (device_id, public_key) FROM STDIN"
                ) as copy:
                    for row in dict(rows).items():  # the last key given for an id wins
                        copy.write_row(row)
                db.execute(
                    "INSERT INTO byzedge_devices"
                    " (device_id, public_key, enrolled_at, revoked, seq)"
                    " SELECT device_id, public_key, %s, false, %s FROM byzedge_incoming"
                    " ON CONFLICT (device_id) DO UPDATE SET public_key = excluded.public_key,"
                    " enrolled_at = excluded.enrolled_at, revoked = false, seq = excluded.seq",
                    (when, seq),
                )

        with self._lock:
            self._retrying(write)
            for device_id, _ in rows:
                self._cache.pop(device_id)
        return len(rows)

    def revoke(self, device_id: str) -> bool:
        """Revoke ``device_id``; return False when it is unknown or already revoked."""

        def write(db: _Db) -> int:
            with db.transaction():
                seq = self._next_seq(db)
                cursor = db.execute(
                    "UPDATE byzedge_devices SET revoked = true, seq = %s"
                    " WHERE device_id = %s AND NOT revoked",
                    (seq, device_id),
                )
                return cursor.rowcount

        with self._lock:
            changed = self._retrying(write)
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

    def _connect(self) -> _Db:
        parts = conninfo_to_dict(self._dsn)
        parts.setdefault("connect_timeout", CONNECT_TIMEOUT_S)
        try:
            # Autocommit: a lookup is one statement, and an idle connection must not hold
            # a transaction open (it would keep old row versions from being vacuumed).
            return psycopg.connect(make_conninfo("", **parts), autocommit=True)
        except psycopg.Error as exc:
            raise EnrolmentStoreError(f"enrolment database {self._label}: {exc}") from exc

    def _retrying(self, work: Callable[[_Db], _T]) -> _T:
        """Run ``work`` on the connection; on a dropped connection reconnect and run again.

        Only a connection that is closed afterwards counts as dropped: a failed statement
        on a live connection (a constraint, a syntax error) is raised at once, translated.
        """
        try:
            return work(self._db)
        except psycopg.OperationalError as exc:
            if not self._db.closed:
                raise EnrolmentStoreError(f"enrolment database {self._label}: {exc}") from exc
            _LOGGER.warning("enrolment database %s: connection lost, reconnecting", self._label)
        except psycopg.Error as exc:
            raise EnrolmentStoreError(f"enrolment database {self._label}: {exc}") from exc
        self._db = self._connect()
        try:
            return work(self._db)
        except psycopg.Error as exc:
            raise EnrolmentStoreError(f"enrolment database {self._label}: {exc}") from exc

    def _query_one(self, sql: str, params: tuple[object, ...]) -> tuple[Any, ...] | None:
        with self._lock:
            return self._retrying(lambda db: db.execute(sql, params).fetchone())

    def _current_seq(self, db: _Db | None = None) -> int:
        row = (
            (db or self._db).execute("SELECT value FROM byzedge_meta WHERE key = 'seq'").fetchone()
        )
        assert row is not None  # noqa: S101 - the schema inserts the row
        return int(row[0])

    @staticmethod
    def _next_seq(db: _Db) -> int:
        row = db.execute(
            "UPDATE byzedge_meta SET value = value + 1 WHERE key = 'seq' RETURNING value"
        ).fetchone()
        assert row is not None  # noqa: S101 - the schema inserts the row
        return int(row[0])


def _list_ids(db: _Db) -> list[str]:
    rows = db.execute(
        "SELECT device_id FROM byzedge_devices WHERE NOT revoked ORDER BY device_id"
    ).fetchall()
    return [str(row[0]) for row in rows]
