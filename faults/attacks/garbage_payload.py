"""``garbage-payload``: random bytes instead of the sealed update, same length."""

from __future__ import annotations

from typing import ClassVar

from byzedge.edge_agent.seams import OutgoingMessage, RoundContext
from byzedge.faults.attacks.base import WireAttack

__all__ = ["GarbagePayload"]


class GarbagePayload(WireAttack):
    """Protocol abuse: publish ``len(payload)`` uniformly random bytes instead of the envelope.

    Parameters
    ----------
    start_round, probability, seed:
        See :class:`~faults.attacks.base.WireAttack`; the bytes of round ``k`` are drawn
        from ``(seed, k)``.

    Notes
    -----
    Models a buggy or hostile firmware, or corruption below TLS. The coordinator's ingest
    must refuse it as ``malformed`` (bad magic) without raising and without attributing
    it to the device (anyone able to publish on the topic can send it).
    """

    name: ClassVar[str] = "garbage-payload"

    def _abuse(self, message: OutgoingMessage, context: RoundContext) -> list[OutgoingMessage]:
        garbage = self.schedule.draws(context.round).bytes(len(message.payload))
        return [OutgoingMessage(message.topic_device, garbage)]
