"""When a device sends its update again: the coordinator's receipts say it does not hold it.

With sharded ingest the broker may drop an update on its way to the coordinator after the
device got its PUBACK (a dead ingest worker's in-flight messages), so the coordinator
publishes signed receipts of the updates it holds (:mod:`byzedge.protocol.receipts`). A
device that sent its update for a round re-sends the very same bytes when a receipt for
that round, received at least ``grace_s`` after the publish, does not list it; then again
at most once every ``grace_s`` while receipts keep omitting it. The coordinator recognises
an exact copy, so a re-send never counts twice. A coordinator without ingest workers
publishes no receipts, and nothing here ever fires.

:class:`ResendTimer` is that rule for one device, with no I/O: the agent feeds it the
receipts it verified; a load generator keeps one per simulated device.
"""

from __future__ import annotations

from byzedge.protocol.receipts import Receipt

__all__ = ["ResendTimer"]


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
