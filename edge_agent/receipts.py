"""When a device sends its update again: the coordinator's receipts say it does not hold it.

With sharded ingest the broker may drop an update on its way to the coordinator after the
device got its PUBACK (a dead ingest worker's in-flight messages), so the coordinator
publishes signed receipts of the updates it holds (:mod:`byzedge.protocol.receipts`). A
device that sent its update for a round re-sends the very same bytes when a receipt for
that round, received at least ``grace_s`` after the publish, does not list it; then again
at most once every ``grace_s`` while receipts keep omitting it. The coordinator recognises
an exact copy, so a re-send never counts twice. A coordinator without ingest workers
publishes no receipts, and nothing here ever fires.

:class:`ResendTimer` is that rule for one device, with no I/O (a load generator keeps one
per simulated device); :class:`ReceiptFollower` is the agent's side: receipts in from the
network thread, verified, and the decision out.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import time
from collections.abc import Callable

from byzedge.protocol import topics
from byzedge.protocol.chunking import Reassembler
from byzedge.protocol.errors import ProtocolError
from byzedge.protocol.receipts import Receipt, open_receipt
from byzedge.protocol.signing import VerifyKey

__all__ = ["ReceiptFollower", "ResendTimer"]

_LOGGER = logging.getLogger(__name__)
_MAX_RECEIPT_BYTES = 16 * 1024 * 1024


class ResendTimer:
    """Decides, receipt by receipt, whether ``device_id`` sends its kept update again.

    Parameters
    ----------
    device_id:
        The device.
    grace_s:
        How long after a publish a receipt may still omit the update (the ingest workers
        flush every ``partial_flush_s`` and the leader publishes receipts about every
        second); also the least time between two re-sends.
    """

    def __init__(self, device_id: str, grace_s: float) -> None:
        self.device_id = device_id
        self.grace_s = grace_s
        self._round: tuple[int, int] | None = None
        self._sent_at = 0.0
        self._held = False

    def sent(self, round_number: int, model_version: int, now: float) -> None:
        """The update for ``round_number`` (trained from ``model_version``) went out at ``now``."""
        self._round = (round_number, model_version)
        self._sent_at = now
        self._held = False

    @property
    def held(self) -> bool:
        """Whether a receipt has listed the update of the round last sent."""
        return self._held

    def observe(self, receipt: Receipt, now: float) -> bool:
        """Take a verified receipt received at ``now``; ``True``: send the update again now."""
        if self._round is None or self._held:
            return False
        if (receipt.round, receipt.model_version) != self._round:
            return False
        if receipt.holds(self.device_id):
            self._held = True
            return False
        if now - self._sent_at < self.grace_s:
            return False
        self._sent_at = now
        return True


class ReceiptFollower:
    """The agent's side of receipts: received, verified and turned into re-sends.

    The MQTT network thread hands over every message on the receipts topic
    (:meth:`offer`); the agent's main thread says when it publishes its update
    (:meth:`sent`) and asks, once per loop, whether to send it again (:meth:`due`), which
    verifies the newest receipt (the coordinator's signature; chunked ones are put back
    together) and asks the :class:`ResendTimer`.

    Parameters
    ----------
    fleet, device_id:
        The device.
    coordinator_key:
        The only key whose receipts count.
    grace_s:
        See :class:`ResendTimer`.
    clock:
        Monotonic seconds (tests).
    """

    def __init__(
        self,
        fleet: str,
        device_id: str,
        coordinator_key: VerifyKey,
        grace_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.topic = topics.receipts_topic(fleet)
        self._fleet = fleet
        self._key = coordinator_key
        self._clock = clock
        self._timer = ResendTimer(device_id, grace_s)
        self._inbox: queue.Queue[bytes] = queue.Queue(maxsize=64)
        self._chunks = Reassembler(_MAX_RECEIPT_BYTES, max_pending_per_source=2)
        self.refused = 0

    def offer(self, topic: str, payload: bytes) -> bool:
        """Queue ``payload`` if it came on the receipts topic (network thread); say so."""
        if topic != self.topic:
            return False
        with contextlib.suppress(queue.Full):  # only the newest receipt matters
            self._inbox.put_nowait(payload)
        return True

    def sent(self, round_number: int, model_version: int) -> None:
        """The update of ``round_number`` (from ``model_version``) was just published."""
        self._timer.sent(round_number, model_version, self._clock())

    def due(self) -> bool:
        """Whether a receipt just received omits the update a grace period after it went out."""
        due = False
        while True:
            try:
                frame = self._inbox.get_nowait()
            except queue.Empty:
                return due
            try:
                payload = self._chunks.feed("receipts", frame)
                if payload is None:
                    continue
                receipt = open_receipt(payload, self._key, fleet=self._fleet)
            except ProtocolError as exc:
                self.refused += 1
                _LOGGER.debug("ignoring a receipt: %s", exc)
                continue
            due = self._timer.observe(receipt, self._clock()) or due
