"""The leader's role on one machine: an exclusive ``flock`` with an epoch counter.

:class:`FileLease` is the :class:`~byzedge.coordinator.cluster.contracts.LeaderLease` of a
leader and its standbys that share one machine and one ``state_dir`` (a cluster uses the
JetStream key-value lease instead). The kernel holds the lock for as long as the leader's
process lives and releases it the moment the process dies, SIGKILL included, so a standby
blocked in :meth:`FileLease.acquire` takes over at once, without a timeout to wait out.

Each acquisition increments the epoch kept in ``state_dir/leader.epoch`` (written
atomically, after the lock is held) and returns it: the fencing epoch the leader stamps
into its round context and receipts. :meth:`FileLease.renew` checks that the lock file is
still the one locked and that the epoch on disk is still ours, so a lock file deleted by
hand (which would let a second process lock a new file) deposes the leader instead of
leaving two.

:data:`LEASES` and :func:`build_lease` pick the lease of ``[cluster] broker``; another
broker's lease registers itself there.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from byzedge.coordinator.cluster.contracts import LeaderLease, LeaseLostError
from byzedge.coordinator.config import CoordinatorConfig
from byzedge.daemon.store import AtomicStore

__all__ = ["LEASES", "FileLease", "build_lease"]

_POLL_S = 0.2


class FileLease:
    """A leader lease held as ``flock(state_dir/leader.lock)`` (see the module docstring).

    Parameters
    ----------
    state_dir:
        The coordinator's state folder, shared by the leader and its standbys.
    poll_s:
        How often :meth:`acquire` retries the lock.
    """

    def __init__(self, state_dir: Path, *, poll_s: float = _POLL_S) -> None:
        self.path = state_dir / "leader.lock"
        self._epochs = AtomicStore(state_dir / "leader.epoch")
        self._poll_s = poll_s
        self._handle: IO[bytes] | None = None
        self.epoch: int | None = None

    def acquire(self, timeout_s: float | None = None) -> int | None:
        """Block until the lock is ours (``None`` after ``timeout_s``); return the new epoch."""
        if self._handle is not None and self.epoch is not None:
            return self.epoch
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            handle = self.path.open("a+b")
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                if deadline is not None and time.monotonic() >= deadline:
                    return None
                time.sleep(self._poll_s)
                continue
            if not self._same_file(handle):  # deleted and recreated while we waited
                handle.close()
                continue
            self._handle = handle
            break
        epoch = self._saved_epoch() + 1
        self._epochs.save({"epoch": epoch, "pid": os.getpid()})
        self.epoch = epoch
        return epoch

    def renew(self) -> None:
        """Raise :class:`LeaseLostError` unless the lock and the epoch on disk are still ours."""
        handle = self._handle
        if handle is None or self.epoch is None:
            raise LeaseLostError("the lease is not held")
        if not self._same_file(handle):
            raise LeaseLostError(f"{self.path} was replaced: another leader may hold it")
        if self._saved_epoch() != self.epoch:
            raise LeaseLostError(f"{self.path}: epoch {self._saved_epoch()} is not ours")

    def release(self) -> None:
        """Unlock (a standby takes over at once); idempotent."""
        handle, self._handle = self._handle, None
        self.epoch = None
        if handle is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            handle.close()

    def _same_file(self, handle: IO[bytes]) -> bool:
        try:
            return os.fstat(handle.fileno()).st_ino == os.stat(self.path).st_ino
        except OSError:
            return False

    def _saved_epoch(self) -> int:
        try:
            document = self._epochs.load()
        except ValueError:
            document = None
        value = document.get("epoch") if isinstance(document, dict) else None
        return value if isinstance(value, int) and value >= 0 else 0


LEASES: dict[str, Callable[[CoordinatorConfig], LeaderLease]] = {
    "mosquitto": lambda config: FileLease(config.state_dir),
}
"""``[cluster] broker`` -> the leader lease it uses (the NATS lease registers ``"nats"``)."""


def build_lease(config: CoordinatorConfig) -> LeaderLease:
    """The leader lease of ``config``'s broker.

    Raises
    ------
    ValueError
        When no lease is registered for ``[cluster] broker``.
    """
    factory = LEASES.get(config.cluster.broker)
    if factory is None:
        msg = f"[cluster] broker = {config.cluster.broker!r} has no leader lease in this build"
        raise ValueError(msg)
    return factory(config)
