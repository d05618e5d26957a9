"""Resident memory of the edge agent: idle, training, after training, and ``agent infer``.

A device's memory is a product property on Raspberry-Pi-class hardware. This runs the real
``byzedge`` command as separate processes against a private mosquitto (plain TCP, so TLS
costs are not hidden: the agent's TLS context is the same either way) and reads their
memory with psutil:

* idle agent: ``byzedge agent run``, connected, no coordinator, after it settled;
* training: a coordinator runs rounds with that one agent; the agent process and its
  training worker (``training.isolation = "process"``) are sampled every 20 ms, and the
  agent is read again once the rounds are over ("idle after training");
* the same with ``training.isolation = "in-process"`` for comparison;
* ``byzedge agent infer`` on the model the agent stored: peak RSS from ``wait4``.

RSS counts shared library pages once per process; PSS divides them among the processes
that share them (what the device really pays); both are printed.

Usage::

    python benchmarks/agent_memory.py [--rounds 3] [--out benchmarks/results/agent.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil

from byzedge.cli import main as byzedge_main
from byzedge.fleet_sim.brokers import start_mosquitto
from byzedge.models.datasets import load_dataset

BYZEDGE = str(Path(sys.executable).with_name("byzedge"))
TARGET_MB = 100.0
# The worker's linger after a round ([training] worker_linger_s, 60 s by default), short
# here so that "idle after training" is read once the worker has gone.
LINGER_S = 2.0
MB = 1024 * 1024


@dataclass
class Sample:
    rss_mb: float
    pss_mb: float


def memory(process: psutil.Process) -> Sample:
    info = process.memory_full_info()
    return Sample(info.rss / MB, getattr(info, "pss", info.rss) / MB)


class Peak:
    """Samples a process and its children every 20 ms; keeps the peaks."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.agent = Sample(0.0, 0.0)
        self.worker = Sample(0.0, 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Peak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                own = memory(self.process)
                children = [memory(c) for c in self.process.children(recursive=True)]
            except psutil.Error:
                continue
            self.agent = Sample(
                max(self.agent.rss_mb, own.rss_mb), max(self.agent.pss_mb, own.pss_mb)
            )
            for child in children:
                self.worker = Sample(
                    max(self.worker.rss_mb, child.rss_mb), max(self.worker.pss_mb, child.pss_mb)
                )


# The bundled dataset each model's device trains on (models.datasets.DEFAULT_MODELS inverted).
DATASETS = {"sensor-cnn": "basic-motions"}


def write_fleet(
    folder: Path, url: str, model: str, isolation: str, rounds: int
) -> tuple[Path, Path]:
    keys = folder / "keys"
    assert byzedge_main(["keys", "generate", "coordinator", "dev-000", "--dir", str(keys)]) == 0
    devices = folder / "devices"
    devices.mkdir()
    (devices / "dev-000.pub").write_bytes((keys / "dev-000.pub").read_bytes())
    coordinator = folder / "coordinator.toml"
    coordinator.write_text(
        f'fleet = "mem"\nsigning_key = "keys/coordinator.key"\ndevices_dir = "devices"\n'
        f'state_dir = "state/coordinator"\nmodel = "{model}"\nrounds = {rounds}\n'
        f'round_interval_s = 0.0\nvalidation = "none"\n[mqtt]\nurl = "{url}"\n'
    )
    agent = folder / "agent.toml"
    agent.write_text(
        f'fleet = "mem"\ndevice_id = "dev-000"\nsigning_key = "keys/dev-000.key"\n'
        f'coordinator_key = "keys/coordinator.pub"\nstate_dir = "state/dev-000"\n'
        f'model = "{model}"\n[training]\nisolation = "{isolation}"\nworker_linger_s = {LINGER_S}\n'
        f'[data]\nsource = "{DATASETS.get(model, "digits")}"\nnum_partitions = 4\n'
        f'[mqtt]\nurl = "{url}"\n'
    )
    return coordinator, agent


def spawn(*args: str, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("ab") as out:
        return subprocess.Popen([BYZEDGE, *args], stdout=out, stderr=subprocess.STDOUT, env=env)


def wait_for(predicate: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark step timed out")
        time.sleep(0.1)


@dataclass
class Row:
    model: str
    isolation: str
    idle: Sample
    training_agent: Sample
    training_worker: Sample
    after: Sample
    infer_peak_mb: float


def measure(model: str, isolation: str, rounds: int, url: str) -> Row:
    with tempfile.TemporaryDirectory(prefix="byzedge-mem-") as tmp:
        folder = Path(tmp)
        coordinator_toml, agent_toml = write_fleet(folder, url, model, isolation, rounds)
        agent = spawn("agent", "run", "--config", str(agent_toml), log=folder / "agent.log")
        try:
            log = folder / "agent.log"
            wait_for(lambda: "connected to" in log.read_text(), 60)
            time.sleep(3.0)
            idle = memory(psutil.Process(agent.pid))
            rounds_log = folder / "state" / "coordinator" / "rounds.jsonl"
            with Peak(agent.pid) as peak:
                coordinator = spawn(
                    "coordinator", "run", "--config", str(coordinator_toml), log=folder / "c.log"
                )
                coordinator.wait(timeout=600)
                wait_for(rounds_log.exists, 10)
            time.sleep(LINGER_S + 3.0)  # the worker has lingered and gone; the agent settles
            after = memory(psutil.Process(agent.pid))
            inputs: list[str] = []
            if model in DATASETS:  # `agent infer` reads the digits unless given an input
                windows = folder / "inputs.npy"
                test_x = load_dataset(DATASETS[model]).test_x
                np.save(windows, test_x.reshape(len(test_x), -1))
                inputs = ["--input", str(windows)]
            infer = subprocess.Popen(
                [BYZEDGE, "agent", "infer", "--config", str(agent_toml), *inputs],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            _pid, status, usage = os.wait4(infer.pid, 0)
            if status != 0:
                raise RuntimeError(f"agent infer failed with status {status}")
            infer_peak = usage.ru_maxrss / 1024  # KiB on Linux
        finally:
            agent.terminate()
            agent.wait(timeout=30)
        return Row(model, isolation, idle, peak.agent, peak.worker, after, infer_peak)


def verdict(value: float) -> str:
    return "met" if value <= TARGET_MB else f"**missed** ({value:.0f} MB)"


def idle_verdict(row: Row) -> str:
    if row.isolation != "process":
        return "(comparison: not the default)"
    return verdict(max(row.idle.rss_mb, row.after.rss_mb))


def render(rows: list[Row], rounds: int, seconds: float) -> str:
    lines = [
        "# Agent memory",
        "",
        "Resident memory of `byzedge agent run` (one device, a shard of its model's dataset: "
        "digits, or BasicMotions' sensor windows for sensor-cnn; a private mosquitto "
        f"on loopback) and of `byzedge agent infer`. Targets: idle agent <= {TARGET_MB:.0f} MB, "
        f"`agent infer` <= {TARGET_MB:.0f} MB (RSS). {rounds} rounds of training per row.",
        "",
        f"Command: `python benchmarks/agent_memory.py` (wall time {seconds / 60:.1f} min)",
        "",
        f"Machine: {platform.platform()}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB.",
        "",
        "| model | training | idle RSS / PSS | training: agent RSS peak "
        "| training: worker RSS peak | idle after training RSS / PSS "
        "| `agent infer` peak RSS | idle target | infer target |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for r in rows:
        worker = f"{r.training_worker.rss_mb:.0f} MB" if r.training_worker.rss_mb else "-"
        lines.append(
            f"| {r.model} | {r.isolation} | {r.idle.rss_mb:.0f} / {r.idle.pss_mb:.0f} MB "
            f"| {r.training_agent.rss_mb:.0f} MB | {worker} "
            f"| {r.after.rss_mb:.0f} / {r.after.pss_mb:.0f} MB | {r.infer_peak_mb:.0f} MB "
            f"| {idle_verdict(r)} | {verdict(r.infer_peak_mb)} |"
        )
    lines += [
        "",
        "Training runs in a worker process that exits after the round by default "
        '(`[training] isolation = "process"`, edge_agent/worker.py): torch\'s memory is '
        "given back when the round's training is done, so the idle figure holds after the "
        "first round. `in-process` keeps torch loaded in the agent for good (the last column "
        "pair shows what that costs); it is what the simulator and in-process fleets use.",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn", "sensor-cnn"])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/agent.md"))
    args = parser.parse_args()
    started = time.monotonic()
    rows = []
    with start_mosquitto() as broker:
        for model in args.models:
            for isolation in ("process", "in-process"):
                print(f"measuring {model} ({isolation})...", flush=True)
                rows.append(measure(model, isolation, args.rounds, broker.url))
    table = render(rows, args.rounds, time.monotonic() - started)
    print(table)
    args.out.write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
