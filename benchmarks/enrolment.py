"""Issue 12, item 4: enrolment at 10^4, 10^5 and 10^6 devices, files vs SQLite vs PostgreSQL.

Usage::

    python benchmarks/enrolment.py [--sizes 10000,100000,1000000] [--files-max 100000]
                                   [--lookups 10000] [--stores files,sqlite,postgres]
                                   [--postgres "host=127.0.0.1 dbname=postgres"]
                                   [--out benchmarks/results/]

For each size it fills a store (a ``devices_dir`` of ``<device_id>.pub`` PEM files, as
``byzedge init`` writes them, an SQLite enrolment database written with
:meth:`SqliteEnrolment.enrol_many`, or the same rows in a PostgreSQL database that the
benchmark creates on the ``--postgres`` server and drops afterwards), then, in a fresh
Python process per store so memory is the store's own, measures: the time to open it as
the coordinator does (``open_enrolment``), the process's resident memory added by it, the
median time of one lookup by id of a random enrolled device, the time of one round's
10,000 lookups (cold: keys not cached yet; warm: the same ids again), the time to list
every enrolled id, and the cohort draw of a round at 1% participation
(:func:`~byzedge.coordinator.round_engine.sample_cohort`): the first draw (which lists
the ranked ids of a database store), a later round's (which reuses them), and the memory
they keep. Results go to ``enrolment.md`` and ``enrolment.json`` in ``--out``.

The public keys are 32 bytes each from a seeded PRNG (numpy's PCG64, seed 0), one per
device: ``cryptography``'s Ed25519 parser accepts any 32 bytes (it does not decode the
point until a signature is verified), so they parse exactly as real keys do, at no cost
to generate. Files above ``--files-max`` devices are not written (10^6 PEM files is
impractical on one file system and takes minutes just to create).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from byzedge.coordinator.devices import DeviceRegistry
from byzedge.coordinator.enrolment import SqliteEnrolment
from byzedge.coordinator.enrolment_pg import PostgresEnrolment
from byzedge.coordinator.round_engine import sample_cohort
from byzedge.protocol.signing import VerifyKey

_BATCH = 50_000


def device_id(index: int) -> str:
    """The benchmark's id of device ``index``."""
    return f"dev-{index:07d}"


def raw_keys(count: int, start: int = 0) -> list[bytes]:
    """``count`` distinct 32-byte keys, device ``start`` onwards (seeded, reproducible)."""
    rng = np.random.default_rng([0, start])
    blob = rng.bytes(32 * count)
    return [blob[32 * i : 32 * (i + 1)] for i in range(count)]


def fill_files(folder: Path, count: int) -> None:
    """Write ``count`` PEM files into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for start in range(0, count, _BATCH):
        size = min(_BATCH, count - start)
        for offset, raw in enumerate(raw_keys(size, start)):
            pem = VerifyKey.from_raw(raw).to_pem()
            (folder / f"{device_id(start + offset)}.pub").write_bytes(pem)


def fill_database(location: str, count: int, kind: str) -> None:
    """Enrol ``count`` devices into the ``kind`` database at ``location``, in batches."""
    store = SqliteEnrolment(Path(location)) if kind == "sqlite" else PostgresEnrolment(location)
    for start in range(0, count, _BATCH):
        size = min(_BATCH, count - start)
        keys = raw_keys(size, start)
        store.enrol_many((device_id(start + i), keys[i]) for i in range(size))
    store.close()


def _rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _open(kind: str, location: str) -> DeviceRegistry | SqliteEnrolment | PostgresEnrolment:
    if kind == "files":
        return DeviceRegistry.load(Path(location))
    if kind == "sqlite":
        return SqliteEnrolment(Path(location))
    return PostgresEnrolment(location)


def measure(kind: str, location: str, count: int, lookups: int) -> dict[str, float | None]:
    """Open the store in this process and time it (run in a fresh process)."""
    ids = [device_id(i) for i in np.random.default_rng(1).integers(0, count, lookups)]
    rss_before = _rss_bytes()
    started = time.perf_counter()
    store = _open(kind, location)
    open_s = time.perf_counter() - started
    rss_open = _rss_bytes() - rss_before
    rounds: list[float] = []
    per_lookup: list[float] = []
    for _ in range(2):  # cold, then warm (the same ids again)
        times = []
        round_start = time.perf_counter()
        for device in ids:
            t0 = time.perf_counter()
            key = store.get(device)
            times.append(time.perf_counter() - t0)
            assert key is not None
        rounds.append(time.perf_counter() - round_start)
        per_lookup.append(statistics.median(times))
    rss_rounds = _rss_bytes() - rss_before
    prefetched: float | None = None
    if kind != "files":  # a fresh store (empty LRU): one prefetch, then the round's lookups
        fresh = _open(kind, location)
        assert isinstance(fresh, SqliteEnrolment | PostgresEnrolment)
        started = time.perf_counter()
        fresh.prefetch(sorted(set(ids)))
        for device in ids:
            assert fresh.get(device) is not None
        prefetched = time.perf_counter() - started
        fresh.close()
    rss_listed = _rss_bytes()
    draws = []
    for round_number in range(3):  # the first lists the ranked ids; the others reuse them
        started = time.perf_counter()
        cohort = sample_cohort(store, round_number, 0, participation_rate=0.01)
        draws.append(time.perf_counter() - started)
        assert cohort is not None
        assert len(cohort) == max(1, round(0.01 * count))
    rss_draw = _rss_bytes() - rss_listed
    started = time.perf_counter()
    listed = sum(1 for _ in store)
    list_s = time.perf_counter() - started
    assert listed == count
    return {
        "open_s": open_s,
        "rss_open_mib": rss_open / 2**20,
        "rss_after_round_mib": rss_rounds / 2**20,
        "lookup_median_us_cold": per_lookup[0] * 1e6,
        "lookup_median_us_warm": per_lookup[1] * 1e6,
        "round_ms_cold": rounds[0] * 1e3,
        "round_ms_warm": rounds[1] * 1e3,
        "round_ms_prefetched": None if prefetched is None else prefetched * 1e3,
        "list_ids_s": list_s,
        "draw_first_s": draws[0],
        "draw_next_s": statistics.median(draws[1:]),
        "rss_draw_mib": rss_draw / 2**20,
        "store_mib": _size(kind, location) / 2**20,
    }


def _size(kind: str, where: str) -> int:
    if kind == "postgres":
        with psycopg.connect(where) as db:
            row = db.execute(
                "SELECT pg_total_relation_size('byzedge_devices')"
                " + pg_total_relation_size('byzedge_meta')"
            ).fetchone()
        return int(row[0]) if row is not None else 0
    location = Path(where)
    if location.is_dir():
        return sum(p.stat().st_size for p in location.iterdir())
    return sum(p.stat().st_size for p in location.parent.glob(location.name + "*"))


def machine(postgres: str | None) -> str:
    """The machine in one line: ``lscpu``'s model and cores, Python, SQLite, PostgreSQL."""
    import sqlite3  # noqa: PLC0415

    cpu = platform.processor() or platform.machine()
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        fields = {
            key.strip(): value.strip()
            for key, _, value in (line.partition(":") for line in lscpu.splitlines())
        }
        cpu = f"{fields.get('Model name', cpu)}, {fields.get('CPU(s)', os.cpu_count())} CPUs"
    except (OSError, subprocess.CalledProcessError):
        cpu = f"{cpu}, {os.cpu_count()} CPUs"
    server = "not measured"
    if postgres is not None:
        with psycopg.connect(postgres) as db:
            row = db.execute("SHOW server_version").fetchone()
        server = str(row[0]) if row is not None else "?"
    return (
        f"{cpu}; Python {platform.python_version()}; SQLite {sqlite3.sqlite_version}; "
        f"PostgreSQL {server} (psycopg {psycopg.__version__}; same machine, TCP to "
        "127.0.0.1, default settings); "
        f"{platform.system()} {platform.release()}"
    )


class _Database:
    """A PostgreSQL database of the benchmark on the ``admin`` server, dropped on exit."""

    def __init__(self, admin: str, name: str) -> None:
        self.admin = admin
        self.name = name
        self.dsn = make_conninfo("", **{**conninfo_to_dict(admin), "dbname": name})

    def __enter__(self) -> str:
        with psycopg.connect(self.admin, autocommit=True) as db:
            db.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            db.execute(f'CREATE DATABASE "{self.name}"')
        return self.dsn

    def __exit__(self, *exc: object) -> None:
        with psycopg.connect(self.admin, autocommit=True) as db:
            db.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def _measure_in_child(
    kind: str, location: str, count: int, lookups: int
) -> dict[str, float | None]:
    out = subprocess.run(
        [sys.executable, __file__, "--measure", kind, location, str(count), str(lookups)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    measured: dict[str, float | None] = json.loads(out)
    return measured


def run(
    sizes: list[int],
    stores: list[str],
    *,
    files_max: int,
    lookups: int,
    workdir: Path,
    postgres: str,
) -> list[dict[str, object]]:
    """Fill and measure every (store, size); each measurement in its own process."""
    rows: list[dict[str, object]] = []
    for count in sizes:
        for kind in stores:
            if kind == "files" and count > files_max:
                continue
            with contextlib.ExitStack() as cleanup:
                if kind == "files":
                    location = str(workdir / f"files-{count}")
                elif kind == "sqlite":
                    location = str(workdir / f"db-{count}.sqlite3")
                else:
                    name = f"byzedge_bench_{os.getpid()}_{count}"
                    location = cleanup.enter_context(_Database(postgres, name))
                started = time.perf_counter()
                if kind == "files":
                    fill_files(Path(location), count)
                else:
                    fill_database(location, count, kind)
                fill_s = time.perf_counter() - started
                row: dict[str, object] = {"store": kind, "devices": count, "fill_s": fill_s}
                row.update(_measure_in_child(kind, location, count, lookups))
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    return rows


def _ms(value: object) -> str:
    return "-" if value is None else f"{float(str(value)):.1f}"  # None: files (no prefetch)


def write_report(
    rows: list[dict[str, object]], out: Path, command: str, lookups: int, machine_line: str
) -> None:
    """``enrolment.md`` and ``enrolment.json`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "enrolment.json").write_text(
        json.dumps({"command": command, "machine": machine_line, "rows": rows}, indent=2) + "\n"
    )
    lines = [
        "# Enrolment at 10^4-10^6 devices: files vs SQLite vs PostgreSQL (issue 12, item 4)",
        "",
        f"Command: `{command}` (one core: `taskset -c 0`)  ",
        f"Machine: {machine_line}",
        "",
        "Fill: writing every device (files: one PEM each; databases: `enrol_many` in "
        "transactions of 50,000; PostgreSQL by `COPY` into a temporary table merged with "
        "`INSERT ... ON CONFLICT`). Open: time to open the store as the coordinator does "
        "(files: read and parse every `<device_id>.pub`; sqlite: open the WAL database; "
        "postgres: connect and check the tables). RSS: resident memory the open store adds, "
        f"then after two rounds of {lookups:,} lookups (the database stores keep at most "
        "65,536 parsed keys in their LRU). Lookup: median time of one `get(device_id)` of a "
        f"random enrolled device; round: {lookups:,} such lookups, cold (first time) and "
        "warm (the same ids again); prefetched: the same round on a fresh store that first "
        "reads the round's keys with one `prefetch` (what the coordinator does after each "
        "cohort draw). List ids: iterating every enrolled id once (postgres "
        "iterates the ranked ids it keeps for the draw). Cohort "
        "draw: `sample_cohort` at 1% participation; first: the first round after start "
        "(a database store lists its ranked ids once), next: a later round (it reuses "
        "them while the enrolment's change counter stays; the old draw listed and sorted "
        "every id each round, the 'list ids' column and more); RSS draw: what the kept "
        "ranked ids add.",
        "",
        "| store | devices | fill s | open s | RSS open MiB | RSS after rounds MiB "
        "| lookup µs cold / warm | round ms cold / warm / prefetched | list ids s "
        "| cohort draw s first / next | RSS draw MiB | on disk MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['store']} | {r['devices']:,} | {r['fill_s']:.1f} | {r['open_s']:.3f} "
            f"| {r['rss_open_mib']:.1f} | {r['rss_after_round_mib']:.1f} "
            f"| {r['lookup_median_us_cold']:.2f} / {r['lookup_median_us_warm']:.2f} "
            f"| {r['round_ms_cold']:.1f} / {r['round_ms_warm']:.1f} / "
            f"{_ms(r['round_ms_prefetched'])} "
            f"| {r['list_ids_s']:.3f} | {r['draw_first_s']:.3f} / {r['draw_next_s']:.4f} "
            f"| {r['rss_draw_mib']:.1f} | {r['store_mib']:.1f} |"
        )
    sizes = sorted({int(str(r["devices"])) for r in rows})
    file_sizes = sorted({int(str(r["devices"])) for r in rows if r["store"] == "files"})
    missing = [n for n in sizes if n not in file_sizes]
    lines += [
        "",
        "Keys: 32 bytes per device from a seeded PRNG (numpy PCG64); `cryptography`'s Ed25519 "
        "parser accepts any 32 bytes without decoding the point, so they load and parse as "
        "real keys do. The files store's PEM files are written from those bytes. The "
        "PostgreSQL server runs on the same machine (TCP to 127.0.0.1), so a lookup's "
        "cost is mostly the round trip through the server process; a remote server adds "
        "its network round trip to every cold lookup.",
    ]
    if missing:
        lines.append(
            "Files were not measured at "
            + ", ".join(f"{n:,}" for n in missing)
            + " devices: a million PEM files in one folder is impractical (the files "
            "store's fill, open time and memory grow linearly: ten times the 10^5 row), "
            "which is the reason for the database stores."
        )
    (out / "enrolment.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str]) -> int:
    """Parse ``argv``, run, and write the report."""
    if argv and argv[0] == "--measure":
        kind, location, count, lookups = argv[1:5]
        print(json.dumps(measure(kind, location, int(count), int(lookups))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--stores", default="files,sqlite,postgres")
    parser.add_argument("--files-max", type=int, default=100_000)
    parser.add_argument("--lookups", type=int, default=10_000)
    parser.add_argument(
        "--postgres",
        default="host=127.0.0.1 port=5432 dbname=postgres",
        help="libpq DSN of a database on the server where the benchmark creates its own",
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    stores = args.stores.split(",")
    with tempfile.TemporaryDirectory(prefix="byzedge-enrolment-") as workdir:
        rows = run(
            sizes,
            stores,
            files_max=args.files_max,
            lookups=args.lookups,
            workdir=Path(workdir),
            postgres=args.postgres,
        )
    command = shlex.join(["python", "benchmarks/enrolment.py", *argv])
    line = machine(args.postgres if "postgres" in stores else None)
    write_report(rows, args.out, command, args.lookups, line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
