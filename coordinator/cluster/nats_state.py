"""The leader's round state shared through JetStream, so a standby on another machine resumes.

With a NATS cluster the leader and its standbys may run on different machines, so the
state a standby resumes from cannot live only in one machine's ``state_dir``. This store
keeps the local file (:class:`~byzedge.coordinator.state.StateStore`, written first: a
restart on the same machine needs no cluster) and, after every save, puts the same bytes
(:func:`~byzedge.daemon.store.encode_state`, checksummed) as one object of a replicated
JetStream object store, named after the fleet. Loading takes whichever of the two is
further along (``completed_round``, then ``model_version``): a standby on a fresh machine
gets the cluster's copy, a leader restarted where the cluster copy could not be written
gets its own file.

Fencing: each object carries the epoch of the leader that wrote it (the leader lease's
revision). A save finding a larger epoch there raises
:class:`~byzedge.coordinator.cluster.contracts.LeaseLostError`: a deposed leader that has
not yet noticed never overwrites its successor's state. The check and the put are two
calls, so the lease (renewed well inside its TTL) is what excludes two live leaders; the
epoch only stops the stale one.

A save that cannot reach the cluster within ``save_timeout_s`` raises
:class:`SharedStateError` after the local save: the leader stops (systemd restarts it),
and, its file being ahead of the cluster copy, it resumes from the file and writes the
cluster copy on its next save. A leader never reports a round whose state a standby
could not find.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Sequence
from pathlib import Path

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import ObjectMeta, ObjectStoreConfig, StorageType
from nats.js.object_store import ObjectStore

from byzedge.coordinator.cluster.contracts import LeaseLostError
from byzedge.coordinator.cluster.nats_link import NatsLink, NatsUnavailableError
from byzedge.coordinator.state import CoordinatorState, StateStore
from byzedge.daemon.store import StateDecodeError, decode_state, encode_state

__all__ = ["DEFAULT_BUCKET", "JetStreamStateStore", "SharedStateError"]

_LOGGER = logging.getLogger(__name__)

DEFAULT_BUCKET = "byzedge_state"
_EPOCH_PREFIX = "epoch="
_CALL_TIMEOUT_S = 15.0
_TRANSIENT = (NatsUnavailableError, TimeoutError, nats.errors.Error)


class SharedStateError(Exception):
    """The cluster's copy of the state could not be read or written in time."""


def _epoch_of(description: str | None) -> int:
    if description is None or not description.startswith(_EPOCH_PREFIX):
        return 0
    try:
        return int(description.removeprefix(_EPOCH_PREFIX))
    except ValueError:
        return 0


def _progress(state: CoordinatorState | None) -> tuple[int, int]:
    return (-1, -1) if state is None else (state.completed_round, state.model_version)


class JetStreamStateStore:
    """A :class:`~byzedge.coordinator.state.StateStore` with a replicated cluster copy.

    Parameters
    ----------
    local:
        The machine's own state file, written first.
    servers, fleet:
        The cluster's nodes and the fleet (the object's name).
    epoch:
        The leader's fencing epoch (its lease's revision).
    replicas:
        The object store's replicas (3 on a three-node cluster).
    tls:
        Client TLS for ``tls://`` servers.
    bucket:
        The object store, shared by every fleet of the cluster.
    save_timeout_s, load_timeout_s:
        How long a save retries the cluster, and how long a load waits for it.
    """

    def __init__(
        self,
        local: StateStore,
        servers: Sequence[str],
        fleet: str,
        *,
        epoch: int,
        replicas: int = 3,
        tls: ssl.SSLContext | None = None,
        bucket: str = DEFAULT_BUCKET,
        save_timeout_s: float = 60.0,
        load_timeout_s: float = 60.0,
    ) -> None:
        self._local = local
        self.fleet = fleet
        self.object_name = f"fleet.{fleet}.state"
        self.epoch = epoch
        self.replicas = replicas
        self.bucket = bucket
        self.save_timeout_s = save_timeout_s
        self.load_timeout_s = load_timeout_s
        self._objects: ObjectStore | None = None
        self._link = NatsLink(
            servers, f"byzedge-state-{fleet}", on_connect=self._open_bucket, tls=tls
        )

    @property
    def path(self) -> Path:
        """The local state file."""
        return self._local.path

    # -- the StateStore contract -------------------------------------------------------

    def load(self) -> CoordinatorState | None:
        """The further along of the local file and the cluster's copy (``None``: neither).

        Raises
        ------
        SharedStateError
            When the cluster cannot be reached within ``load_timeout_s``: starting from
            the local file alone could roll the fleet's model back.
        """
        local = self._local.load()
        shared = self._load_shared()
        if _progress(shared) > _progress(local):
            assert shared is not None  # noqa: S101 - a larger progress is a state
            _LOGGER.info(
                "fleet %s: resuming from the cluster's state (round %d, model %d)",
                self.fleet,
                shared.completed_round,
                shared.model_version,
            )
            return shared
        return local

    def save(self, state: CoordinatorState) -> None:
        """Write the local file, then the cluster's copy (fenced by epoch).

        Raises
        ------
        LeaseLostError
            When a later leader has written the cluster's copy.
        SharedStateError
            When the cluster's copy could not be written within ``save_timeout_s``.
        """
        self._local.save(state)
        blob = encode_state(state.to_document())
        deadline = time.monotonic() + self.save_timeout_s
        while True:
            try:
                self._link.call(lambda _js: self._put(blob), _CALL_TIMEOUT_S)
            except _TRANSIENT as exc:
                if time.monotonic() >= deadline:
                    msg = (
                        f"fleet {self.fleet}: round {state.completed_round}'s state not "
                        f"replicated within {self.save_timeout_s:.0f} s: {exc}"
                    )
                    raise SharedStateError(msg) from exc
                _LOGGER.warning("fleet %s: state not replicated yet, retrying: %s", self.fleet, exc)
                time.sleep(1.0)
            else:
                return

    def close(self) -> None:
        """Close the connection."""
        self._link.close()

    # -- the cluster's copy ------------------------------------------------------------

    def _load_shared(self) -> CoordinatorState | None:
        deadline = time.monotonic() + self.load_timeout_s
        if not self._link.wait_ready(self.load_timeout_s):
            msg = f"fleet {self.fleet}: no NATS cluster within {self.load_timeout_s:.0f} s"
            raise SharedStateError(msg)
        while True:
            # A read during a stream leader election times out: asked again until the
            # deadline, as a save is, since a standby takes over just after a failure.
            try:
                blob = self._link.call(lambda _js: self._get(), _CALL_TIMEOUT_S)
            except _TRANSIENT as exc:
                if time.monotonic() >= deadline:
                    msg = f"fleet {self.fleet}: state not readable: {exc}"
                    raise SharedStateError(msg) from exc
                _LOGGER.warning("fleet %s: state not readable yet, retrying: %s", self.fleet, exc)
                time.sleep(1.0)
            else:
                break
        if blob is None:
            return None
        try:
            return CoordinatorState.from_document(decode_state(blob))
        except (StateDecodeError, ValueError) as exc:
            # A copy this build cannot read is no reason to stop: the local file decides.
            _LOGGER.warning("fleet %s: ignoring the cluster's state copy: %s", self.fleet, exc)
            return None

    async def _get(self) -> bytes | None:
        try:
            result = await self._store().get(self.object_name)
        except nats.js.errors.ObjectNotFoundError:
            return None
        return bytes(result.data) if result.data is not None else None

    async def _put(self, blob: bytes) -> None:
        objects = self._store()
        try:
            info = await objects.get_info(self.object_name)
        except nats.js.errors.ObjectNotFoundError:
            stored = 0
        else:
            stored = _epoch_of(info.description)
        if stored > self.epoch:
            msg = (
                f"fleet {self.fleet}: the cluster's state was written by epoch {stored}, "
                f"ours is {self.epoch}"
            )
            raise LeaseLostError(msg)
        meta = ObjectMeta(name=self.object_name, description=f"{_EPOCH_PREFIX}{self.epoch}")
        await objects.put(self.object_name, blob, meta=meta)

    def _store(self) -> ObjectStore:
        if self._objects is None:
            raise NatsUnavailableError("the state bucket is not open yet")
        return self._objects

    async def _open_bucket(self, js: JetStreamContext) -> None:
        """Bind the object store, creating it if missing (never deleted or recreated)."""
        try:
            self._objects = await js.object_store(self.bucket)
        except nats.js.errors.BucketNotFoundError:
            self._objects = await js.create_object_store(
                self.bucket,
                ObjectStoreConfig(replicas=self.replicas, storage=StorageType.FILE),
            )
            _LOGGER.info("created state bucket %s (%d replicas)", self.bucket, self.replicas)
