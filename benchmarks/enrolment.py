"""Issue 12, item 4: enrolment at 10^4, 10^5 and 10^6 devices, files vs SQLite.

Usage::

    python benchmarks/enrolment.py [--sizes 10000,100000,1000000] [--files-max 100000]
                                   [--lookups 10000] [--out benchmarks/results/]

For each size it fills a store (a ``devices_dir`` of ``<device_id>.pub`` PEM files, as
``byzedge init`` writes them, or an SQLite enrolment database written with
:meth:`SqliteEnrolment.enrol_many`), then, in a fresh Python process per store so memory
is the store's own, measures: the time to open it as the coordinator does
(``DeviceRegistry.load`` / ``SqliteEnrolment``), the process's resident memory added by
it, the median time of one lookup by id of a random enrolled device, the time of one
round's 10,000 lookups (cold: keys not cached yet; warm: the same ids again), and the
time to list every enrolled id (what a round's cohort draw reads). Results go to
``enrolment.md`` and ``enrolment.json`` in ``--out``.

The public keys are 32 bytes each from a seeded PRNG (numpy's PCG64, seed 0), one per
device: ``cryptography``'s Ed25519 parser accepts any 32 bytes (it does not decode the
point until a signature is verified), so they parse exactly as real keys do, at no cost
to generate. Files above ``--files-max`` devices are not written (10^6 PEM files is
impractical on one file system and takes minutes just to create).
"""

from __future__ import annotations

import argparse
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

from byzedge.coordinator.devices import DeviceRegistry
from byzedge.coordinator.enrolment import SqliteEnrolment
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


def fill_sqlite(path: Path, count: int) -> None:
    """Enrol ``count`` devices into the database at ``path``, in batches."""
    store = SqliteEnrolment(path)
    for start in range(0, count, _BATCH):
        size = min(_BATCH, count - start)
        keys = raw_keys(size, start)
        store.enrol_many((device_id(start + i), keys[i]) for i in range(size))
    store.close()


def _rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(kind: str, location: Path, count: int, lookups: int) -> dict[str, float]:
    """Open the store in this process and time it (run in a fresh process)."""
    ids = [device_id(i) for i in np.random.default_rng(1).integers(0, count, lookups)]
    rss_before = _rss_bytes()
    started = time.perf_counter()
    store = DeviceRegistry.load(location) if kind == "files" else SqliteEnrolment(location)
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
    started = time.perf_counter()
    listed = sum(1 for _ in store)
    list_s = time.perf_counter() - started
    assert listed == count
    return {
        "open_s": open_s,
        "rss_open_mib": rss_open / 2**20,
        "rss_after_round_mib": (_rss_bytes() - rss_before) / 2**20,
        "lookup_median_us_cold": per_lookup[0] * 1e6,
        "lookup_median_us_warm": per_lookup[1] * 1e6,
        "round_ms_cold": rounds[0] * 1e3,
        "round_ms_warm": rounds[1] * 1e3,
        "list_ids_s": list_s,
        "store_mib": _size(location) / 2**20,
    }


def _size(location: Path) -> int:
    if location.is_dir():
        return sum(p.stat().st_size for p in location.iterdir())
    return sum(p.stat().st_size for p in location.parent.glob(location.name + "*"))


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import sqlite3  # noqa: PLC0415

    return (
        f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"SQLite {sqlite3.sqlite_version}, {platform.system()} {platform.release()}"
    )


def run(sizes: list[int], files_max: int, lookups: int, workdir: Path) -> list[dict[str, object]]:
    """Fill and measure every (store, size); each measurement in its own process."""
    rows: list[dict[str, object]] = []
    for count in sizes:
        for kind in ("files", "sqlite"):
            if kind == "files" and count > files_max:
                continue
            location = (
                workdir / f"files-{count}" if kind == "files" else workdir / f"db-{count}.sqlite3"
            )
            started = time.perf_counter()
            (fill_files if kind == "files" else fill_sqlite)(location, count)
            fill_s = time.perf_counter() - started
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--measure",
                    kind,
                    str(location),
                    str(count),
                    str(lookups),
                ],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            row: dict[str, object] = {"store": kind, "devices": count, "fill_s": fill_s}
            row.update(json.loads(out))
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    return rows


def write_report(rows: list[dict[str, object]], out: Path, command: str, lookups: int) -> None:
    """``enrolment.md`` and ``enrolment.json`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    machine = _machine()
    (out / "enrolment.json").write_text(
        json.dumps({"command": command, "machine": machine, "rows": rows}, indent=2) + "\n"
    )
    lines = [
        "# Enrolment at 10^4-10^6 devices: files vs SQLite (issue 12, item 4)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine}",
        "",
        "Open: time to open the store as the coordinator does (files: read and parse every "
        "`<device_id>.pub`; sqlite: open the WAL database). RSS: resident memory the open "
        f"store adds, then after two rounds of {lookups:,} lookups (sqlite keeps at most "
        f"65,536 parsed keys in its LRU). Lookup: median time of one `get(device_id)` of a "
        f"random enrolled device; round: {lookups:,} such lookups, cold (first time) and "
        "warm (the same ids again). List ids: iterating every enrolled id once (what the "
        "cohort draw reads each round).",
        "",
        "| store | devices | fill s | open s | RSS open MiB | RSS after rounds MiB "
        "| lookup µs cold / warm | round ms cold / warm | list ids s | on disk MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['store']} | {r['devices']:,} | {r['fill_s']:.1f} | {r['open_s']:.3f} "
            f"| {r['rss_open_mib']:.1f} | {r['rss_after_round_mib']:.1f} "
            f"| {r['lookup_median_us_cold']:.2f} / {r['lookup_median_us_warm']:.2f} "
            f"| {r['round_ms_cold']:.1f} / {r['round_ms_warm']:.1f} "
            f"| {r['list_ids_s']:.3f} | {r['store_mib']:.1f} |"
        )
    sizes = sorted({int(str(r["devices"])) for r in rows})
    file_sizes = sorted({int(str(r["devices"])) for r in rows if r["store"] == "files"})
    missing = [n for n in sizes if n not in file_sizes]
    lines += [
        "",
        "Keys: 32 bytes per device from a seeded PRNG (numpy PCG64); `cryptography`'s Ed25519 "
        "parser accepts any 32 bytes without decoding the point, so they load and parse as "
        "real keys do. The files store's PEM files are written from those bytes.",
    ]
    if missing:
        lines.append(
            "Files were not measured at "
            + ", ".join(f"{n:,}" for n in missing)
            + " devices: a million PEM files in one folder is impractical (the files "
            "store's fill, open time and memory grow linearly: ten times the 10^5 row), "
            "which is the reason for the SQLite store."
        )
    (out / "enrolment.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str]) -> int:
    """Parse ``argv``, run, and write the report."""
    if argv and argv[0] == "--measure":
        kind, location, count, lookups = argv[1:5]
        print(json.dumps(measure(kind, Path(location), int(count), int(lookups))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--files-max", type=int, default=100_000)
    parser.add_argument("--lookups", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="byzedge-enrolment-") as workdir:
        rows = run(sizes, args.files_max, args.lookups, Path(workdir))
    command = shlex.join(["python", "benchmarks/enrolment.py", *argv])
    write_report(rows, args.out, command, args.lookups)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
