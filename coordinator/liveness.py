"""Which devices can answer a round: their retained status messages, folded.

Every agent keeps a retained JSON status on ``byzedge/{fleet}/status/{device_id}``:
``online`` when it connects, ``training`` / ``busy`` with the round it concerns, and
``offline`` as its last will (the broker publishes it the moment the agent's connection
dies; ``reference/mqtt-client.md`` section 4). The coordinator reads them so that a round
closes as soon as every device asked has either answered or cannot: it is offline, or it
said it is too busy (hot, loaded, low on memory) to train this round.

Statuses are not signed: the broker's ACL lets only a device's own certificate write its
status topic. A forged ``offline`` could only make a round close before that device's
update arrived (the update is then counted in no round, as if late), never change what
is aggregated.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from protocol.errors import TopicError
from protocol.topics import parse_device_topic

__all__ = ["DeviceStatus", "FleetLiveness"]

_LOGGER = logging.getLogger(__name__)
_UNAVAILABLE_STATES = frozenset({"offline"})


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    """The last status a device published."""

    state: str
    round: int | None = None
    reason: str | None = None


class FleetLiveness:
    """The last known status of each device of ``fleet``.

    Parameters
    ----------
    fleet:
        Statuses of other fleets (and malformed ones) are ignored.
    """

    def __init__(self, fleet: str) -> None:
        self._fleet = fleet
        self._statuses: dict[str, DeviceStatus] = {}

    def apply(self, topic: str, payload: bytes) -> str | None:
        """Fold one status message in; return the device id, or ``None`` if ignored.

        Never raises on input: an empty payload (a reachability probe), a topic that is
        not a device status of this fleet, or a payload that is not a JSON object with a
        string ``state`` is ignored.
        """
        if not payload:
            return None
        try:
            device = parse_device_topic(topic, self._fleet, "status")
            document = json.loads(payload)
        except (TopicError, ValueError, UnicodeDecodeError):
            _LOGGER.debug("fleet %s: ignoring status on %s", self._fleet, topic)
            return None
        state = document.get("state") if isinstance(document, dict) else None
        if not isinstance(state, str):
            return None
        round_number = document.get("round")
        reason = document.get("reason")
        self._statuses[device] = DeviceStatus(
            state=state,
            round=round_number if type(round_number) is int else None,
            reason=reason if isinstance(reason, str) else None,
        )
        return device

    def status(self, device_id: str) -> DeviceStatus | None:
        """The last status of ``device_id``, if any was seen."""
        return self._statuses.get(device_id)

    def unavailable(self, round_number: int) -> set[str]:
        """Devices that will not answer ``round_number``: offline, or busy for that round."""
        return {
            device
            for device, status in self._statuses.items()
            if status.state in _UNAVAILABLE_STATES
            or (status.state == "busy" and status.round == round_number)
        }
