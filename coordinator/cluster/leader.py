"""The leader of sharded ingest: the coordinator, fed partial aggregates instead of updates.

With ``[cluster] workers > 0`` the coordinator (``byzedge coordinator run``) is
:class:`ClusterLeader`: the same daemon, round loop, server step, state, journal, audit
and summary (:class:`~byzedge.coordinator.service.Coordinator`), with four steps of a round
done otherwise:

* **Round open**: before the model, it publishes the signed round context
  (:mod:`~byzedge.coordinator.cluster.context`): ``"sum"`` mode when the round engine
  would stream this round (a streaming rule that can open the round, anomaly scoring and
  certificates off, clipping-vr's reference global), else ``"rows"``.
* **Intake**: it reads ``byzedge/{fleet}/partial/+``. Each partial frame
  (:mod:`~byzedge.coordinator.cluster.partials`) is journaled (one fsync per batch) before
  it counts, then taken once (by worker, session and sequence number): its rejections,
  copies and redeliveries count as a single coordinator would count them, its accepted
  updates join the round. Devices are deduplicated by ``(device, round, update hash)``: a
  device already held with the same hash is a copy, with another hash a ``duplicate``
  rejection. In rows mode that is done update by update; a sum-mode partial that overlaps
  devices already held is refused whole (its sums cannot be split), and its worker folds
  its other updates again.
* **Receipts**: after each batch (at most every quarter second) and every two seconds, it
  publishes signed receipts (:mod:`byzedge.protocol.receipts`): the devices it holds, and
  for each worker which partials it has taken or refused.
* **Server step**: in rows mode the rows, exactly as a single coordinator; in sum mode the
  partials (``server_step(..., partials=...)``), which the rule merges where it would have
  accumulated the rows.

Failover: the leader holds a :class:`~byzedge.coordinator.cluster.contracts.LeaderLease`
(acquired by the caller before the leader is built, so a standby does not even connect),
renews it every ``leader_lease_s / 3`` and stops (exit status 1) when it is lost. A standby
that takes over reads the same state and ``partials.journal`` (the leaders share
``state_dir``) and reopens the round where its predecessor left it, with the same client
id and persistent session, so the partials queued for the dead leader come to it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, cast

import numpy as np
from numpy.typing import NDArray

from byzedge.coordinator.aggregation import load_rule_state, rule_state
from byzedge.coordinator.aggregation.base import StreamingAggregator, StreamingUnavailableError
from byzedge.coordinator.cluster.context import RoundContext, seal_context
from byzedge.coordinator.cluster.contracts import LeaderLease
from byzedge.coordinator.cluster.partials import Partial, PartialFrameError
from byzedge.coordinator.cluster.shared_state import build_state_store
from byzedge.coordinator.config import CoordinatorConfig, rule_parameters
from byzedge.coordinator.enrolment import Enrolment
from byzedge.coordinator.ingest import Accepted, Rejected, RejectReason, RoundWindow
from byzedge.coordinator.journal import RoundJournal
from byzedge.coordinator.round_engine import ShardPartial
from byzedge.coordinator.service import Coordinator, RoundSummary, _Intake
from byzedge.coordinator.state import CoordinatorStateStore
from byzedge.daemon.logging import RateLimitedLog
from byzedge.daemon.mqtt import ConnectInfo
from byzedge.daemon.transport import TransportFactory
from byzedge.models.datasets import DigitsSplit
from byzedge.protocol import topics
from byzedge.protocol.chunking import Reassembler
from byzedge.protocol.errors import ChunkError, TopicError
from byzedge.protocol.receipts import PartialKey, seal_receipt
from byzedge.protocol.signing import SigningKey

__all__ = ["ClusterLeader"]

_LOGGER = logging.getLogger(__name__)
_MAX_PARTIAL_BYTES = 256 * 1024 * 1024
_RECEIPT_MIN_S = 0.25
_RECEIPT_EVERY_S = 2.0
_NO_ROW: NDArray[np.float32] = np.empty(0, dtype=np.float32)


@dataclass(slots=True)
class _ClusterRound:
    """The open round as the leader tracks it beside the intake."""

    window: RoundWindow
    context: RoundContext
    context_bytes: bytes
    context_retained: bool
    expected: frozenset[str]
    intake: _Intake
    digests: dict[str, bytes] = field(default_factory=dict)
    shards: list[ShardPartial] = field(default_factory=list)
    taken: dict[tuple[str, bytes], set[int]] = field(default_factory=dict)
    sessions: dict[str, bytes] = field(default_factory=dict)
    refused: set[PartialKey] = field(default_factory=set)
    receipt_at: float = 0.0
    changed: bool = True

    def take(self, key: PartialKey) -> None:
        """Record partial ``key`` as taken (its worker's latest session is its session)."""
        worker, session, seq = key
        self.taken.setdefault((worker, session), set()).add(seq)
        self.sessions[worker] = session
        self.changed = True

    def watermarks(self) -> dict[str, tuple[bytes, int]]:
        """``worker -> (session, n)``: partials 1..n of the worker's latest session taken."""
        marks: dict[str, tuple[bytes, int]] = {}
        for worker, session in self.sessions.items():
            seqs = self.taken[(worker, session)]
            n = 0
            while n + 1 in seqs:
                n += 1
            marks[worker] = (session, n)
        return marks


class ClusterLeader(Coordinator):
    """The coordinator of a fleet with ingest workers (see the module docstring).

    Parameters
    ----------
    config, signing_key, devices, on_round, validation, transport:
        As for :class:`~byzedge.coordinator.service.Coordinator`.
    lease:
        The leader lease, already acquired.
    epoch:
        The fencing epoch :meth:`LeaderLease.acquire` returned.
    """

    def __init__(
        self,
        config: CoordinatorConfig,
        *,
        signing_key: SigningKey,
        devices: Enrolment,
        lease: LeaderLease,
        epoch: int,
        on_round: Callable[[RoundSummary], None] | None = None,
        validation: DigitsSplit | None = None,
        transport: TransportFactory | None = None,
    ) -> None:
        self._lease = lease
        self.epoch = epoch
        self._renew_every = config.cluster.leader_lease_s / 3
        self._renewed_at = time.monotonic()
        self._cluster: _ClusterRound | None = None
        self._partial_chunks = Reassembler(_MAX_PARTIAL_BYTES, max_pending_per_source=2)
        self._partial_log = RateLimitedLog(_LOGGER, what="partials", burst=5)
        self._message_counter = 0
        super().__init__(
            config,
            signing_key=signing_key,
            devices=devices,
            on_round=on_round,
            validation=validation,
            transport=transport,
        )
        # The journal holds partial frames here, not updates: its own file.
        self._journal = RoundJournal(config.state_dir / "partials.journal")

    def _state_store(self) -> CoordinatorStateStore:
        """Where the broker's standbys can find the state (a cluster copy on NATS)."""
        return build_state_store(self.config, self.epoch)

    def _subscriptions(self) -> list[tuple[str, int]]:
        fleet = self.config.fleet
        return [(topics.partial_wildcard(fleet), 1), (topics.device_status_wildcard(fleet), 1)]

    def _on_connect(self, info: ConnectInfo) -> None:
        super()._on_connect(info)
        if info.session_present:
            # A session kept from a single-process coordinator of this fleet still holds
            # its subscription to every update: the leader reads partials only.
            self._client.unsubscribe(topics.update_wildcard(self.config.fleet))

    # -- round open ----------------------------------------------------------------------

    def _replay_journal(self, window: RoundWindow, intake: _Intake) -> None:
        """Open the round: publish its context, then replay the partials journaled for it."""
        self._renew()
        context = self._round_context(window)
        payload = seal_context(
            self._key,
            context,
            fleet=self.config.fleet,
            sender=self.config.name,
            ttl_s=self.config.model_ttl_s,
        )
        expected = window.cohort if window.cohort is not None else frozenset(self._devices)
        retained = len(payload) <= self.config.mqtt.max_message_bytes
        self._cluster = _ClusterRound(window, context, payload, retained, expected, intake)
        self._send_context()
        if self._resume_journal:
            self._resume_journal = False
            entries = self._journal.resume_round(window.round, window.model_version)
        else:
            self._journal.open_round(window.round, window.model_version)
            entries = []
        for entry in entries:
            partial = self._decode(entry.payload)
            if partial is not None and self._for_this_round(partial):
                self._take_partial(partial, intake)
        self._journal_recovered(window.round, len(entries), "partial(s)", intake)
        _LOGGER.info(
            "round %d: %s mode (epoch %d), %d device(s) expected",
            window.round,
            context.mode,
            self.epoch,
            len(expected),
        )
        self._send_receipts()

    def _round_context(self, window: RoundWindow) -> RoundContext:
        """The context of the round: ``"sum"`` when the step will stream it, else ``"rows"``."""
        self._message_counter = max(self._message_counter + 1, time.time_ns() // 1000)
        mode: Literal["rows", "sum"] = "rows"
        state = rule_state(self._aggregator) if self._aggregator.stateful else None
        settings = self._settings
        if (
            self._aggregator.streaming
            and not settings.anomaly_detection
            and not settings.certified_robustness
        ):
            # A fresh instance in the workers' place: can it open the round and merge?
            probe = cast(StreamingAggregator, self._build_rule(self.config.byzantine_defense))
            try:
                if state is not None:
                    load_rule_state(probe, state)
                probe.start(window.dim)
                probe.partial()
                mode = "sum"
            except StreamingUnavailableError as exc:
                _LOGGER.info("round %d: folded from rows: %s", window.round, exc)
        if mode == "rows":
            return RoundContext(
                round=window.round,
                model_version=window.model_version,
                epoch=self.epoch,
                dim=window.dim,
                mode="rows",
                cohort=window.cohort,
                rule=self.config.byzantine_defense,
                counter=self._message_counter,
            )
        weights: dict[str, float] | None = None
        default: float | None = None
        if settings.device_reputation:
            book = self._reputation
            devices = window.cohort if window.cohort is not None else book.snapshot()
            weights = {d: book.after(d, good=True) for d in devices if d in book}
            default = book.after(None, good=True)
        return RoundContext(
            round=window.round,
            model_version=window.model_version,
            epoch=self.epoch,
            dim=window.dim,
            mode="sum",
            cohort=window.cohort,
            rule=self.config.byzantine_defense,
            rule_params=rule_parameters(self.config, self.config.byzantine_defense),
            rule_state=state,
            weights=weights,
            default_weight=default,
            counter=self._message_counter,
        )

    def _send_context(self) -> None:
        cluster = self._cluster
        if cluster is None:
            return
        self._client.publish(
            topics.context_topic(self.config.fleet),
            cluster.context_bytes,
            retain=cluster.context_retained,
        )

    # -- intake ------------------------------------------------------------------------

    def _next_updates(self, timeout_s: float, *, limit: int) -> list[tuple[str, bytes]]:
        """Renew the lease and send receipts when due, then wait for partial frames."""
        self._renew()
        cluster = self._cluster
        if cluster is not None and time.monotonic() - cluster.receipt_at >= _RECEIPT_EVERY_S:
            if not cluster.context_retained:  # a large context is not retained: send again
                self._send_context()
            cluster.changed = True
            self._send_receipts()
        return super()._next_updates(timeout_s, limit=limit)

    def _take_batch(
        self, batch: list[tuple[str, bytes]], window: RoundWindow, intake: _Intake
    ) -> None:
        """Journal the batch's new partial frames with one fsync, then take them."""
        del window  # the round's context says what a partial must match
        frames: list[tuple[Partial, bytes]] = []
        keys: set[PartialKey] = set()
        for topic, chunk in batch:
            payload = self._reassemble(topic, chunk)
            partial = self._decode(payload) if payload is not None else None
            if partial is None or not self._for_this_round(partial):
                continue
            if partial.key in keys or self._taken(partial.key):
                continue  # a worker sent it again: each partial counts once
            keys.add(partial.key)
            assert payload is not None  # noqa: S101 (decoded from it)
            frames.append((partial, payload))
        self._journal.append_many([(partial.worker, payload) for partial, payload in frames])
        for partial, _payload in frames:
            self._take_partial(partial, intake)
        self._send_receipts()

    def _reassemble(self, topic: str, chunk: bytes) -> bytes | None:
        try:
            worker = topics.parse_partial_topic(topic, self.config.fleet)
            return self._partial_chunks.feed(worker, chunk)
        except (TopicError, ChunkError) as exc:
            self._partial_log.log((topic, "chunk"), "ignoring a message on %s: %s", topic, exc)
            return None

    def _decode(self, payload: bytes) -> Partial | None:
        try:
            return Partial.from_bytes(payload, max_bytes=_MAX_PARTIAL_BYTES)
        except PartialFrameError as exc:
            self._partial_log.log(("-", "frame"), "ignoring a partial frame: %s", exc)
            return None

    def _for_this_round(self, partial: Partial) -> bool:
        cluster = self._cluster
        if cluster is None:
            return False
        context = cluster.context
        if partial.fleet != self.config.fleet or (partial.round, partial.model_version) != (
            context.round,
            context.model_version,
        ):
            return False  # a late flush of a closed round
        if partial.basis != context.basis or partial.dim != context.dim:
            self._partial_log.log(
                (partial.worker, "basis"),
                "round %d: ignoring partial %d of %s: folded against another round context",
                context.round,
                partial.seq,
                partial.worker,
            )
            return False
        if partial.epoch > self.epoch:
            self._partial_log.log(
                (partial.worker, "epoch"),
                "round %d: partial of %s from epoch %d, ours is %d: another leader is up",
                context.round,
                partial.worker,
                partial.epoch,
                self.epoch,
            )
            self._lease.renew()
        return True

    def _taken(self, key: PartialKey) -> bool:
        cluster = self._cluster
        return cluster is not None and key[2] in cluster.taken.get((key[0], key[1]), set())

    def _take_partial(self, partial: Partial, intake: _Intake) -> None:
        """Count one partial as a single coordinator would have counted its messages."""
        cluster = self._cluster
        assert cluster is not None  # noqa: S101 (a round is open)
        if self._taken(partial.key):
            return
        cluster.take(partial.key)
        for record in partial.rejections:
            rejected = Rejected(
                RejectReason(record.reason), record.detail, record.device_id, record.attributable
            )
            self._take(rejected, intake, journaled=True)
        intake.redelivered += partial.redelivered
        for device, digest in partial.copies:
            self._take_copy(device, digest, intake)
        overlap = [u for u in partial.updates if u.device_id in intake.accepted]
        if partial.mode == "sum" and overlap:
            cluster.refused.add(partial.key)
            _LOGGER.info(
                "round %d: partial %d of %s refused: it holds %d device(s) already held",
                cluster.window.round,
                partial.seq,
                partial.worker,
                len(overlap),
            )
            for update in overlap:
                self._take_copy(update.device_id, update.digest, intake)
            return
        rows = partial.rows
        for index, update in enumerate(partial.updates):
            if update.device_id in intake.accepted:
                self._take_copy(update.device_id, update.digest, intake)
                continue
            accepted = Accepted(
                device_id=update.device_id,
                header=update.header,
                update=rows[index] if rows is not None else _NO_ROW,
                wire_bytes=update.wire_bytes,
                body_bytes=update.body_bytes,
            )
            self._take(accepted, intake, journaled=True)
            cluster.digests[update.device_id] = update.digest
        if partial.sums is not None:
            cluster.shards.append(partial.shard())

    def _take_copy(self, device: str, digest: bytes, intake: _Intake) -> None:
        """A device the round already holds: a copy (same hash) or a second update."""
        cluster = self._cluster
        assert cluster is not None  # noqa: S101 (a round is open)
        held = cluster.digests.get(device)
        if held is None or held == digest:
            intake.redelivered += 1
            return
        detail = f"{device} already has an accepted update this round"
        self._take(Rejected(RejectReason.DUPLICATE, detail, device), intake, journaled=True)

    # -- receipts, lease ---------------------------------------------------------------

    def _send_receipts(self) -> None:
        cluster = self._cluster
        if cluster is None or not cluster.changed:
            return
        now = time.monotonic()
        if now - cluster.receipt_at < _RECEIPT_MIN_S:
            return
        self._message_counter = max(self._message_counter + 1, time.time_ns() // 1000)
        payload = seal_receipt(
            self._key,
            fleet=self.config.fleet,
            sender=self.config.name,
            round_number=cluster.window.round,
            model_version=cluster.window.model_version,
            epoch=self.epoch,
            counter=self._message_counter,
            held=cluster.intake.accepted,
            expected=cluster.expected,
            partials=cluster.watermarks(),
            refused=cluster.refused,
        )
        retain = len(payload) <= self.config.mqtt.max_message_bytes
        self._client.publish(topics.receipts_topic(self.config.fleet), payload, retain=retain)
        cluster.receipt_at = now
        cluster.changed = False

    def _renew(self) -> None:
        """Renew the lease when due; :class:`LeaseLostError` ends the leader's run."""
        now = time.monotonic()
        if now - self._renewed_at >= self._renew_every:
            self._lease.renew()
            self._renewed_at = now

    # -- server step -------------------------------------------------------------------

    def _step_inputs(
        self, intake: _Intake
    ) -> tuple[list[NDArray[np.float32]] | None, Sequence[ShardPartial]]:
        cluster = self._cluster
        if cluster is None or cluster.context.mode == "rows":
            return super()._step_inputs(intake)
        return None, list(cluster.shards)

    def _finish_round(self, intake: _Intake) -> RoundSummary:
        summary = super()._finish_round(intake)
        self._cluster = None
        return summary

    def _shutdown(self) -> None:
        try:
            super()._shutdown()
        finally:
            self._lease.release()
