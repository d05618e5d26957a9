"""Issue 12, item 4: the coordinator's per-device state at 10^4, 10^5 and 10^6 devices.

Usage::

    python benchmarks/fleet_state.py [--sizes 10000,100000,1000000] [--mirrors-max 10000]
                                     [--baseline OLD.json] [--out benchmarks/results/]

The coordinator's state file (``state_dir/coordinator.state``, written atomically after
every round) holds, per device that ever took part: its reputation
(:class:`~byzedge.coordinator.reputation.ReputationBook`), its anomaly history
(:class:`~byzedge.coordinator.anomaly.AnomalyDetector`), its last message counter
(:class:`~byzedge.coordinator.ingest.Ingest`), and, for a training method with server
mirrors (EF21, DASHA, Clip21-SGD2M), a float32 vector of the model's size ``d``.

For each size, in fresh Python processes, the benchmark gives every device a realistic
entry of each (a reputation in (0, 1], an anomaly history with a baseline, a scale, the
evidence EWMAs, trust and flags, a counter), then measures what a round costs (the
coordinator's end of round: ``state_dict()`` of each unit and ``StateStore.save``, the
file fsynced and renamed), what a start costs (``StateStore.load`` and each unit's
``load_state_dict``), the resident memory of the loaded state, the file's size, and one
round's anomaly scoring of 10,000 devices (a 1% cohort) with that history. Method mirrors
are measured up to ``--mirrors-max`` devices (``d`` of the default ``mlp`` model); above,
their size is stated, not allocated. ``--baseline`` adds the rows of an earlier run's
``fleet_state.json`` (e.g. of an older commit) as a "before" table.
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
from typing import Any

import numpy as np

from byzedge.coordinator.anomaly import AnomalyDetector
from byzedge.coordinator.ingest import Ingest
from byzedge.coordinator.reputation import ReputationBook
from byzedge.coordinator.state import CoordinatorState, StateStore
from byzedge.methods.base import ServerState

MLP_DIM = 4810
"""``d`` of the default ``mlp`` model (digits, 64-64-10): one mirror is 4810 float32."""

COHORT = 10_000


def device_id(index: int) -> str:
    """The benchmark's id of device ``index`` (as benchmarks/enrolment.py names them)."""
    return f"dev-{index:07d}"


def _rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _anomaly_document(ids: list[str], rng: np.random.Generator) -> dict[str, Any]:
    """A detector's saved state in which every device has a history (version 1 layout)."""
    values = rng.random((len(ids), 10))
    devices = {
        device: {
            "level": [float(v[0]) - 0.5, float(v[1]) * 0.1],
            "scale": [float(v[2]) * 0.2 + 0.05, float(v[3]) * 0.1 + 0.01],
            "evidence": [float(v[4]) - 0.5, float(v[5]) - 0.5, float(v[6])],
            "trust": float(v[7]),
            "suspect": bool(v[8] < 0.02),
            "pending": [0.0, 0.0],
            "rebaseline": False,
        }
        for device, v in zip(ids, values, strict=True)
    }
    return {"version": 1, "rounds": 100, "pooled_scale": [0.1, 0.05], "devices": devices}


def _units(count: int) -> tuple[ReputationBook, AnomalyDetector, Ingest]:
    """The three per-device units, each holding ``count`` devices."""
    rng = np.random.default_rng(0)
    ids = [device_id(i) for i in range(count)]
    book = ReputationBook(decay=0.95)
    book.load_state_dict(dict(zip(ids, rng.random(count).tolist(), strict=True)))
    detector = AnomalyDetector()
    detector.load_state_dict(_anomaly_document(ids, rng))
    ingest = Ingest("bench", {}, max_message_bytes=131_072, max_update_bytes=1 << 24)
    base = 1_790_000_000_000_000
    ingest.load_state_dict({"last_counter": {d: base + i for i, d in enumerate(ids)}})
    return book, detector, ingest


def _state(book: ReputationBook, detector: AnomalyDetector, ingest: Ingest) -> CoordinatorState:
    return CoordinatorState(
        fleet="bench",
        model="mlp",
        completed_round=100,
        model_version=100,
        params=np.zeros(MLP_DIM, dtype=np.float32),
        reputation=book.state_dict(),
        anomaly=detector.state_dict(),
        ingest=ingest.state_dict(),
    )


def measure_save(count: int, folder: Path) -> dict[str, float]:
    """Build the units, then time three end-of-round saves (run in a fresh process)."""
    book, detector, ingest = _units(count)
    store = StateStore(folder)
    times = []
    for _ in range(3):
        started = time.perf_counter()
        store.save(_state(book, detector, ingest))
        times.append(time.perf_counter() - started)
    rng = np.random.default_rng(2)
    cohort = [device_id(int(i)) for i in rng.choice(count, size=min(COHORT, count), replace=False)]
    updates = rng.normal(size=(len(cohort), 64)).astype(np.float32)
    started = time.perf_counter()
    detector.score(cohort, updates)
    score_s = time.perf_counter() - started
    return {
        "save_s": statistics.median(times),
        "file_mib": store.path.stat().st_size / 2**20,
        "score_cohort_s": score_s,
    }


def measure_load(folder: Path) -> dict[str, float]:
    """Time a start: read the file and load every unit (run in a fresh process)."""
    rss_before = _rss_bytes()
    started = time.perf_counter()
    state = StateStore(folder).load()
    assert state is not None
    read_s = time.perf_counter() - started
    book = ReputationBook(decay=0.95)
    book.load_state_dict(state.reputation)
    detector = AnomalyDetector()
    detector.load_state_dict(state.anomaly)
    ingest = Ingest("bench", {}, max_message_bytes=131_072, max_update_bytes=1 << 24)
    ingest.load_state_dict(state.ingest)
    load_s = time.perf_counter() - started
    del state
    return {
        "read_s": read_s,
        "load_s": load_s,
        "rss_loaded_mib": (_rss_bytes() - rss_before) / 2**20,
        "devices_loaded": float(len(detector)),
    }


def measure_mirrors(count: int, folder: Path) -> dict[str, float]:
    """Mirrors of ``count`` devices at ``d = MLP_DIM``: save, load, memory."""
    rng = np.random.default_rng(3)
    rss_before = _rss_bytes()
    server = ServerState()
    for i in range(count):
        server.mirrors[device_id(i)] = rng.standard_normal(MLP_DIM, dtype=np.float32)
        server.mirror_rounds[device_id(i)] = 100
    rss_mirrors = _rss_bytes() - rss_before
    store = StateStore(folder)
    state = CoordinatorState(
        fleet="bench",
        model="mlp",
        completed_round=100,
        model_version=100,
        params=np.zeros(MLP_DIM, dtype=np.float32),
    )
    started = time.perf_counter()
    state.method = server.to_plain()
    store.save(state)
    save_s = time.perf_counter() - started
    del state, server
    started = time.perf_counter()
    loaded = store.load()
    assert loaded is not None
    restored = ServerState.from_plain(loaded.method, MLP_DIM)
    load_s = time.perf_counter() - started
    assert len(restored.mirrors) == count
    return {
        "mirrors_save_s": save_s,
        "mirrors_load_s": load_s,
        "mirrors_rss_mib": rss_mirrors / 2**20,
        "mirrors_file_mib": store.path.stat().st_size / 2**20,
    }


def _child(*args: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, *args], check=True, capture_output=True, text=True
    ).stdout
    measured: dict[str, float] = json.loads(out)
    return measured


def run(sizes: list[int], mirrors_max: int, workdir: Path) -> list[dict[str, Any]]:
    """Measure every size, each step in its own process."""
    rows: list[dict[str, Any]] = []
    for count in sizes:
        folder = workdir / f"state-{count}"
        row: dict[str, Any] = {"devices": count}
        row.update(_child("--save", str(count), str(folder)))
        row.update(_child("--load", str(folder)))
        if count <= mirrors_max:
            row.update(_child("--mirrors", str(count), str(workdir / f"mirrors-{count}")))
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    return rows


def _machine() -> str:
    import sqlite3  # noqa: PLC0415

    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        fields = {
            k.strip(): v.strip() for k, _, v in (x.partition(":") for x in lscpu.splitlines())
        }
        cpu = f"{fields.get('Model name', '?')}, {fields.get('CPU(s)', '?')} CPUs"
    except (OSError, subprocess.CalledProcessError):
        cpu = f"{platform.machine()}, {os.cpu_count()} CPUs"
    return (
        f"{cpu}; Python {platform.python_version()}; numpy {np.__version__}; "
        f"SQLite {sqlite3.sqlite_version}; {platform.system()} {platform.release()}"
    )


def _state_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| devices | save s | file MiB | read s | load s | RSS loaded MiB | score cohort s |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['devices']:,} | {r['save_s']:.2f} | {r['file_mib']:.1f} | {r['read_s']:.2f} "
            f"| {r['load_s']:.2f} | {r['rss_loaded_mib']:.0f} | {r['score_cohort_s']:.3f} |"
        )
    return lines


def write_report(
    rows: list[dict[str, Any]],
    out: Path,
    command: str,
    mirrors_max: int,
    baseline: dict[str, Any] | None = None,
) -> None:
    """``fleet_state.md`` and ``fleet_state.json`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    machine = _machine()
    (out / "fleet_state.json").write_text(
        json.dumps({"command": command, "machine": machine, "rows": rows}, indent=2) + "\n"
    )
    lines = [
        "# Coordinator state at 10^4-10^6 devices (issue 12, item 4)",
        "",
        f"Command: `{command}` (one core: `taskset -c 0`)  ",
        f"Machine: {machine}",
        "",
        "Every device has a reputation, an anomaly history and a message counter. Save: "
        "the end of a round (each unit's `state_dict()`, then `StateStore.save`: msgpack, "
        "SHA-256, write, fsync, rename), median of 3. Read: `StateStore.load`; load: read "
        "plus every unit's `load_state_dict` (a start). RSS: resident memory the loaded "
        f"units hold. Score: one round's anomaly scoring of a {COHORT:,}-device cohort "
        "(d = 64) against that history.",
        "",
        *_state_table(rows),
    ]
    if baseline is not None:
        lines += [
            "",
            f"Before: {baseline.get('label', 'an earlier run')} "
            f"(command `{baseline['command']}`, same machine):",
            "",
            *_state_table(baseline["rows"]),
        ]
    lines += [
        "",
        f"## Method mirrors (d = {MLP_DIM:,}, the `mlp` model)",
        "",
        "| devices | mirrors MiB (n x d x 4 B) | measured RSS MiB | save s | load s | file MiB |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        count = int(str(r["devices"]))
        size = count * MLP_DIM * 4 / 2**20
        if "mirrors_save_s" in r:
            lines.append(
                f"| {count:,} | {size:,.0f} | {r['mirrors_rss_mib']:.0f} "
                f"| {r['mirrors_save_s']:.2f} | {r['mirrors_load_s']:.2f} "
                f"| {r['mirrors_file_mib']:.0f} |"
            )
        else:
            lines.append(f"| {count:,} | {size:,.0f} | not run | | | |")
    lines += [
        "",
        f"Above {mirrors_max:,} devices the mirrors were not allocated: 10^6 devices x "
        f"{MLP_DIM:,} x 4 bytes is {10**6 * MLP_DIM * 4 / 1e9:.1f} GB, in memory and "
        "rewritten into the state file after every round. Methods with per-device mirrors "
        "(EF21, DASHA, Clip21-SGD2M) are for fleets whose devices all take part often; "
        "at 10^6 devices and 1% participation use a method without mirrors (FedAvg, "
        "MARINA) or a model small enough that n x d x 4 bytes fits.",
    ]
    (out / "fleet_state.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str]) -> int:
    """Parse ``argv``, run, and write the report."""
    if argv and argv[0] == "--save":
        print(json.dumps(measure_save(int(argv[1]), Path(argv[2]))))
        return 0
    if argv and argv[0] == "--load":
        print(json.dumps(measure_load(Path(argv[1]))))
        return 0
    if argv and argv[0] == "--mirrors":
        print(json.dumps(measure_mirrors(int(argv[1]), Path(argv[2]))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--mirrors-max", type=int, default=10_000)
    parser.add_argument(
        "--baseline", type=Path, help="an earlier run's fleet_state.json, shown as 'before'"
    )
    parser.add_argument(
        "--baseline-label", default="an earlier run", help="what the baseline ran (a commit)"
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="byzedge-state-") as workdir:
        rows = run(sizes, args.mirrors_max, Path(workdir))
    command = shlex.join(["python", "benchmarks/fleet_state.py", *argv])
    baseline = None
    if args.baseline is not None:
        baseline = json.loads(args.baseline.read_text())
        baseline["label"] = args.baseline_label
    write_report(rows, args.out, command, args.mirrors_max, baseline)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
