"""A training worker does not outlive its agent: a SIGKILLed agent leaves no torch behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

AGENT = """
import os, sys, time
from byzedge.edge_agent.worker import TrainingWorker

worker = TrainingWorker(linger_s=600)  # would linger ten minutes after a clean round
print(worker.call(os.getpid), flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its new parent) is gone for our purpose.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_the_worker_exits_when_its_agent_is_killed() -> None:
    with subprocess.Popen(
        [sys.executable, "-c", AGENT], stdout=subprocess.PIPE, text=True
    ) as agent:
        assert agent.stdout is not None
        worker = int(agent.stdout.readline())
        assert worker != agent.pid
        assert _alive(worker)

        agent.send_signal(signal.SIGKILL)
        agent.wait()
    deadline = time.monotonic() + 10
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.1)

    assert not _alive(worker)
