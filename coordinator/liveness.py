"""Which devices can answer a round: their retained status messages, folded.

Every agent keeps a retained JSON status on ``byzedge/{fleet}/status/{device_id}``:
``online`` when it connects, ``training`` / ``busy`` / ``refused`` (the broker refused its
update) / ``skipped`` (its training failed) with the round it concerns, and ``offline`` as
its last will (the broker publishes it the moment the agent's connection dies;
``reference/mqtt-client.md`` section 4). The coordinator reads them so that a round closes
as soon as every device asked has either answered or cannot: it is offline, it said it is
too busy (hot, loaded, low on memory) to train this round, its training failed, or the
broker refused its update for this round (its certificate or the ACL is wrong: waiting
longer would not help).

A status that reaches the coordinator as it (re)connects may be stale: the broker hands
over its retained store at subscription, and the messages it queued for the coordinator's
persistent session, which after a broker restart include every device's last will (the
broker fired them all as it went down). Such an ``offline`` is not *fresh*: it counts
only once ``grace_s`` has passed without the device saying otherwise (it reconnects and
says ``online``). An ``offline`` published while the coordinator listens (a last will
firing) is fresh; it counts once it has stood for ``settle_s`` (2 s) while the
coordinator stayed connected. That short wait is for a broker that is shutting down: it
fires every device's will at the coordinator just before it drops the coordinator too;
those wills are then demoted to stale by the coordinator's reconnection
(``connected_since``).

Statuses are not signed: the broker's ACL lets only a device's own certificate write its
status topic. A forged ``offline`` could only make a round close before that device's
update arrived (the update is then counted in no round, as if late), never change what
is aggregated.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from byzedge.protocol.errors import TopicError
from byzedge.protocol.topics import parse_device_topic

__all__ = ["DeviceStatus", "FleetLiveness"]

_LOGGER = logging.getLogger(__name__)
_UNAVAILABLE_STATES = frozenset({"offline"})
# States that concern one round only: the device will not answer that round.
_SKIPPED_ROUND_STATES = frozenset({"busy", "refused", "skipped"})


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    """The last status a device published, and when and how it reached us."""

    state: str
    round: int | None = None
    reason: str | None = None
    fresh: bool = True
    received_at: float = 0.0


class FleetLiveness:
    """The last known status of each device of ``fleet``.

    Parameters
    ----------
    fleet:
        Statuses of other fleets (and malformed ones) are ignored.
    settle_s:
        How long a fresh ``offline`` must stand before it counts.
    grace_s:
        How long an ``offline`` that is not fresh waits for the device to reconnect
        before it counts (agents reconnect with a jittered backoff capped at
        ``reconnect_max_s``, 30 s by default).
    clock:
        Monotonic clock (tests inject one).
    """

    def __init__(
        self,
        fleet: str,
        *,
        grace_s: float = 30.0,
        settle_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fleet = fleet
        self._grace_s = grace_s
        self._settle_s = settle_s
        self._clock = clock
        self._statuses: dict[str, DeviceStatus] = {}

    def apply(self, topic: str, payload: bytes, *, fresh: bool = True) -> str | None:
        """Fold one status message in; return the device id, or ``None`` if ignored.

        ``fresh = False`` for a message that may be old (retained, or delivered as the
        coordinator's connection came up); see the module docstring.

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
            fresh=fresh,
            received_at=self._clock(),
        )
        return device

    def status(self, device_id: str) -> DeviceStatus | None:
        """The last status of ``device_id``, if any was seen."""
        return self._statuses.get(device_id)

    def unavailable(self, round_number: int, *, connected_since: float = 0.0) -> set[str]:
        """Devices that will not answer ``round_number``: offline, busy or refused for it.

        ``connected_since`` is when the coordinator's current broker connection came up
        (same clock): an ``offline`` received before it is treated as stale.
        """
        now = self._clock()
        return {
            device
            for device, status in self._statuses.items()
            if (status.state in _UNAVAILABLE_STATES and self._counts(status, now, connected_since))
            or (status.state in _SKIPPED_ROUND_STATES and status.round == round_number)
        }

    def _counts(self, status: DeviceStatus, now: float, connected_since: float) -> bool:
        """Whether an ``offline`` status is settled enough to stop waiting for the device."""
        if status.fresh and status.received_at >= connected_since:
            return now - status.received_at >= self._settle_s
        return now - max(status.received_at, connected_since) >= self._grace_s
