"""The leader's lease as a JetStream key-value entry (scale-out.md §9 and §12.5).

One key per fleet in a replicated bucket whose entries expire after ``ttl_s``:

- **acquire**: ``create(key)`` succeeds only when the key is absent (never set, deleted,
  or expired because its holder stopped renewing). Followers poll it: a watcher gets no
  event when an entry expires by TTL (measured on 2.9.10).
- **renew**: ``update(key, last=revision)`` is a compare-and-set on the revision this
  holder wrote last; a newer writer makes it fail, and the holder knows it was deposed.
- **epoch**: the revision ``create`` returned. Revisions are the bucket stream's
  sequence numbers, so they only grow (as long as the bucket is never deleted), and a
  later holder's epoch is always larger.
- **release**: ``delete(key, last=revision)``, so a standby's next ``create`` wins at once.

A renewal that fails for a transient reason (the bucket's stream leader being re-elected
took 7.2 s when its node was killed) is retried by the next call; the lease counts as lost
only when the CAS is refused or when no renewal has succeeded for longer than the TTL
(by then the entry may have expired and another holder may have it).
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Sequence

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from byzedge.coordinator.cluster.contracts import LeaseLostError
from byzedge.coordinator.cluster.nats_link import NatsLink, NatsUnavailableError

__all__ = ["DEFAULT_BUCKET", "KvLeaderLease"]

_LOGGER = logging.getLogger(__name__)

DEFAULT_BUCKET = "byzedge_leader"
# A KV stream leader election took 7.2 s on 2.9.10: a shorter TTL deposes healthy leaders.
_MIN_TTL_S = 15.0
_CALL_TIMEOUT_S = 12.0
_TRANSIENT = (NatsUnavailableError, TimeoutError, nats.errors.Error, OSError)


class KvLeaderLease:
    """:class:`~byzedge.coordinator.cluster.contracts.LeaderLease` on a JetStream KV bucket.

    Parameters
    ----------
    servers:
        ``nats://host:port`` of every cluster node.
    fleet:
        The fleet led (the key in the bucket).
    holder:
        Who holds the lease (written as the value; host and process id by default).
    ttl_s:
        How long an entry outlives its last renewal (the bucket's ``max_age``): at least
        15 s. Renew every ``ttl_s / 3`` (:attr:`renew_interval_s`).
    replicas:
        The bucket's replicas (3 on a three-node cluster).
    bucket:
        The bucket's name, shared by every fleet of the cluster.
    poll_s:
        How often a follower tries to take the lease.
    tls:
        Client TLS for ``tls://`` servers (the fleet CA and the coordinator's certificate).
    """

    def __init__(
        self,
        servers: Sequence[str],
        fleet: str,
        *,
        holder: str | None = None,
        ttl_s: float = _MIN_TTL_S,
        replicas: int = 3,
        bucket: str = DEFAULT_BUCKET,
        poll_s: float = 1.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        if ttl_s < _MIN_TTL_S:
            msg = f"lease TTL must be at least {_MIN_TTL_S:.0f} s (a KV leader election takes ~7 s)"
            raise ValueError(msg)
        self.fleet = fleet
        self.key = f"fleet.{fleet}"
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}"
        self.ttl_s = ttl_s
        self.replicas = replicas
        self.bucket = bucket
        self.poll_s = poll_s
        self.epoch: int | None = None
        self._revision: int | None = None
        self._renewed_at = 0.0
        self._lock = threading.Lock()
        self._kv: KeyValue | None = None
        self._link = NatsLink(
            servers, f"byzedge-lease-{fleet}", on_connect=self._open_bucket, tls=tls
        )

    @property
    def renew_interval_s(self) -> float:
        """How often the holder should call :meth:`renew`."""
        return self.ttl_s / 3

    # -- LeaderLease -------------------------------------------------------------------

    def acquire(self, timeout_s: float | None = None) -> int | None:
        """Poll ``create`` until the lease is ours; return its epoch (``None`` on timeout)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        value = self.holder.encode()
        while True:
            try:
                revision = self._link.call(
                    lambda _js: self._bucket().create(self.key, value), _CALL_TIMEOUT_S
                )
            except nats.js.errors.KeyWrongLastSequenceError:
                pass  # held by someone else
            except _TRANSIENT as exc:
                _LOGGER.debug("fleet %s: lease create failed: %s", self.fleet, exc)
            else:
                with self._lock:
                    self.epoch = self._revision = revision
                    self._renewed_at = time.monotonic()
                _LOGGER.info(
                    "fleet %s: leader lease taken by %s (epoch %d)",
                    self.fleet,
                    self.holder,
                    revision,
                )
                return revision
            if deadline is not None and time.monotonic() >= deadline:
                return None
            wait = (
                self.poll_s if deadline is None else min(self.poll_s, deadline - time.monotonic())
            )
            time.sleep(max(0.0, wait))

    def renew(self) -> None:
        """Compare-and-set the entry; raise :class:`LeaseLostError` once it is not ours."""
        with self._lock:
            revision = self._revision
            renewed_at = self._renewed_at
        if revision is None:
            raise LeaseLostError(f"fleet {self.fleet}: the lease is not held")
        value = self.holder.encode()
        try:
            new_revision = self._link.call(
                lambda _js: self._bucket().update(self.key, value, last=revision),
                _CALL_TIMEOUT_S,
            )
        except nats.js.errors.KeyWrongLastSequenceError as exc:
            self._forget()
            raise LeaseLostError(f"fleet {self.fleet}: the lease was taken over") from exc
        except _TRANSIENT as exc:
            if time.monotonic() - renewed_at >= self.ttl_s:
                self._forget()
                msg = f"fleet {self.fleet}: lease not renewed for {self.ttl_s:.0f} s ({exc})"
                raise LeaseLostError(msg) from exc
            _LOGGER.warning("fleet %s: lease renewal failed, retrying: %s", self.fleet, exc)
            return
        with self._lock:
            self._revision = new_revision
            self._renewed_at = time.monotonic()

    def release(self) -> None:
        """Delete the entry (if still ours) so a standby takes over at once; idempotent."""
        with self._lock:
            revision = self._revision
        self._forget()
        if revision is not None:
            try:
                self._link.call(
                    lambda _js: self._bucket().delete(self.key, last=revision), _CALL_TIMEOUT_S
                )
            except (nats.js.errors.KeyWrongLastSequenceError, *_TRANSIENT) as exc:
                # Not ours any more, or unreachable: the TTL frees it.
                _LOGGER.info("fleet %s: lease not deleted: %s", self.fleet, exc)

    # -- helpers -----------------------------------------------------------------------

    def close(self) -> None:
        """Release the lease and close the connection."""
        self.release()
        self._link.close()

    def wait_ready(self, timeout_s: float) -> bool:
        """Wait until connected with the bucket in place."""
        return self._link.wait_ready(timeout_s)

    def _forget(self) -> None:
        with self._lock:
            self._revision = None
            self.epoch = None

    def _bucket(self) -> KeyValue:
        if self._kv is None:
            raise NatsUnavailableError("the lease bucket is not open yet")
        return self._kv

    async def _open_bucket(self, js: JetStreamContext) -> None:
        """Bind the bucket, creating it if missing (never deleted or recreated)."""
        try:
            self._kv = await js.key_value(self.bucket)
        except nats.js.errors.BucketNotFoundError:
            self._kv = await js.create_key_value(
                KeyValueConfig(
                    bucket=self.bucket,
                    history=1,
                    ttl=self.ttl_s,
                    replicas=self.replicas,
                    storage=StorageType.FILE,
                )
            )
            _LOGGER.info("created lease bucket %s (ttl %.0f s)", self.bucket, self.ttl_s)
