"""A fleet as an operator runs it: ``byzedge init``, its mosquitto, daemons as processes.

The broker is started exactly as ``byzedge init`` says (``mosquitto -c
DIR/broker/mosquitto.conf``: mutual TLS, the ACL, persistence). Run as root (as here),
mosquitto drops to the ``mosquitto`` user before it reads its key, so the fleet folder must
be one that user can enter: pytest's ``tmp_path`` (under the 0700 ``/tmp/pytest-of-root``)
is not, so fleets live in a 0755 folder made with ``tempfile.mkdtemp(dir="/tmp")``.

Daemons run as separate processes of the installed ``byzedge`` command (what systemd's
``ExecStart=`` runs), each with its own log file, so tests can SIGKILL, SIGSTOP or restart
any of them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from byzedge.cli import main
from byzedge.daemon.rotating import iter_lines
from byzedge.fleet_sim.brokers import find_mosquitto, free_port

FLEET = "init-it"
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 30.0


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class Daemon:
    """One byzedge process and its log."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def signal(self, number: int) -> None:
        if self.process.poll() is None:
            self.process.send_signal(number)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, then wait; return the exit code (SIGKILL if it does not stop)."""
        self.signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def kill(self) -> None:
        """SIGKILL, as a crash or a power cut would."""
        self.signal(signal.SIGKILL)
        self.process.wait()


@dataclass
class Fleet:
    """A provisioned fleet folder, its running broker and the daemons started on it."""

    root: Path
    port: int
    broker: subprocess.Popen[bytes]
    daemons: list[Daemon] = field(default_factory=list)

    @property
    def log(self) -> Path:
        return self.root / "broker" / "log" / "mosquitto.log"

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def folder(self, account: str) -> Path:
        if account in {"coordinator", "monitor"}:
            return self.root / account
        return self.root / "agents" / account

    # -- broker ------------------------------------------------------------------------

    def stop_broker(self, number: int = signal.SIGTERM) -> None:
        """Stop the broker (SIGTERM saves its persistent sessions; SIGKILL does not)."""
        self.broker.send_signal(number)
        self.broker.wait(timeout=STOP_TIMEOUT_S)

    def start_broker(self) -> None:
        self.broker = start_broker(self.root, self.port)

    # -- daemons -----------------------------------------------------------------------

    def spawn(self, name: str, *args: str, env: Mapping[str, str] | None = None) -> Daemon:
        """Start ``byzedge ARGS`` in the fleet folder, logging to ``logs/NAME``."""
        logs = self.root.parent / "logs"
        logs.mkdir(exist_ok=True)
        log = logs / f"{name}.log"
        environment = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        environment.update(env or {})
        with log.open("ab") as out:
            process = subprocess.Popen(
                [str(Path(sys.executable).with_name("byzedge")), *args],
                cwd=self.root,
                env=environment,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        daemon = Daemon(name, process, log)
        self.daemons.append(daemon)
        return daemon

    def coordinator(self, *args: str) -> Daemon:
        return self.spawn(
            "coordinator", "coordinator", "run", "--config", "coordinator/coordinator.toml", *args
        )

    def worker(self, number: int, *args: str) -> Daemon:
        """Ingest worker ``number`` (``byzedge init --workers K``)."""
        config = "coordinator/coordinator.toml"
        return self.spawn(
            f"worker-{number}",
            "coordinator",
            "ingest-worker",
            "--config",
            config,
            "--worker",
            str(number),
            *args,
        )

    def agent(self, device: str, *args: str) -> Daemon:
        config = f"agents/{device}/agent.toml"
        return self.spawn(device, "agent", "run", "--config", config, *args)

    def set_coordinator(self, **settings: Any) -> None:
        """Set top-level keys of coordinator.toml, as an operator edits it."""
        path = self.root / "coordinator" / "coordinator.toml"
        lines = path.read_text().splitlines()
        names = set(settings)
        kept = [line for line in lines if line.split("=")[0].strip() not in names]
        first_table = next(i for i, line in enumerate(kept) if line.startswith("["))
        added = [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
        path.write_text("\n".join(kept[:first_table] + added + kept[first_table:]) + "\n")

    def rounds(self) -> list[dict[str, Any]]:
        """The coordinator's round summaries so far (every rotated segment)."""
        path = self.root / "coordinator" / "state" / "rounds.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in iter_lines(path) if line.strip()]

    def wait_for_rounds(self, count: int, timeout_s: float) -> list[dict[str, Any]]:
        """Wait until ``count`` rounds are done; fail with every log's tail otherwise."""
        deadline = time.monotonic() + timeout_s
        while len(summaries := self.rounds()) < count:
            latest = {d.name: d for d in self.daemons}  # a restarted daemon replaces the old
            exited = {n: d.process.returncode for n, d in latest.items() if d.process.poll()}
            if time.monotonic() > deadline or exited.get("coordinator") is not None:
                self.fail(f"{len(summaries)} of {count} rounds (exited: {exited})")
            time.sleep(0.2)
        return summaries

    def fail(self, message: str) -> None:
        tails = "\n".join(f"--- {d.name}\n{d.log_text()[-2500:]}" for d in self.daemons)
        pytest.fail(f"{message}\n{tails}\n--- broker\n{self.log_text()[-1500:]}", pytrace=False)


def start_broker(root: Path, port: int) -> subprocess.Popen[bytes]:
    """``mosquitto -c ROOT/broker/mosquitto.conf``, once it accepts connections."""
    binary = find_mosquitto()
    if binary is None:
        pytest.fail("mosquitto is required: run scripts/setup", pytrace=False)
    conf = root / "broker" / "mosquitto.conf"
    log = root / "broker" / "log" / "mosquitto.log"
    marker = log.stat().st_size if log.exists() else 0
    with (root.parent / "mosquitto.out").open("ab") as out:
        process = subprocess.Popen(
            [str(binary), "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and process.poll() is None:
        text = log.read_bytes()[marker:].decode(errors="replace") if log.exists() else ""
        if " running" in text and _accepts(port):
            return process
        time.sleep(0.05)
    process.kill()
    process.wait()
    output = (root.parent / "mosquitto.out").read_text(errors="replace")
    pytest.fail(f"mosquitto did not start from {conf}:\n{output}", pytrace=False)


@contextmanager
def provisioned_fleet(
    devices: int = 2, fleet: str = FLEET, init_args: Sequence[str] = ()
) -> Iterator[Fleet]:
    """``byzedge init`` a fleet, start its broker; stop every daemon and the broker after."""
    # mkdtemp makes a 0700 folder; the broker's user must be able to enter it.
    base = Path(tempfile.mkdtemp(prefix="byzedge-init-", dir="/tmp"))
    base.chmod(0o755)
    try:
        port = free_port()
        root = base / "fleet"
        args = ["init", str(root), "--fleet", fleet, "--devices", str(devices)]
        assert main([*args, "--host", "127.0.0.1", "--port", str(port), *init_args]) == 0
        made = Fleet(root, port, start_broker(root, port))
        try:
            yield made
        finally:
            for daemon in made.daemons:
                if daemon.process.poll() is None:
                    daemon.kill()
            if made.broker.poll() is None:
                made.broker.terminate()
                made.broker.wait(timeout=STOP_TIMEOUT_S)
    finally:
        shutil.rmtree(base, ignore_errors=True)
