"""The fleet's update stream as an MQTT v5 shared subscription (mosquitto, EMQX, HiveMQ).

Every ingest worker subscribes to ``$share/{group}/byzedge/{fleet}/update/+``; the broker
hands each message to one member of the group (mosquitto: strict round robin), while a
plain subscriber would still get every message. The worker's connection acknowledges a
message (PUBACK) only when the worker calls its ``ack``, i.e. once the partial aggregate
holding it is with the broker (:mod:`byzedge.coordinator.cluster.worker`).

Sessions are clean: measured on mosquitto 2.0.11 (``shared/reference/scale-out.md``
section 8), a dead member's persistent session keeps receiving its share of new messages
until it comes back, while with a clean session the survivors get every new message at
once. What the dead member held unacknowledged is dropped either way; the devices send it
again when the leader's receipts omit them.

The broker caps the messages in flight to one client (mosquitto's ``max_inflight_messages``,
20 by default): a worker that holds more unacknowledged messages receives nothing more until
it acknowledges some, so workers flush their partial before that many are waiting.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable

from byzedge.coordinator.cluster.contracts import SourcedMessage
from byzedge.daemon.mqtt import MqttClient, MqttClosedError, MqttSettings
from byzedge.protocol import topics

__all__ = ["MqttShareSource"]

# Messages buffered between the network thread and fetch(); the broker's in-flight window
# (20 on mosquitto) keeps far fewer than this waiting.
_BUFFER = 10_000


class MqttShareSource:
    """:class:`~byzedge.coordinator.cluster.contracts.UpdateSource` over ``$share``.

    Parameters
    ----------
    settings:
        The broker connection (the ``[mqtt]`` table, with the worker's certificate).
    fleet:
        The fleet whose updates are consumed.
    group:
        The share group (``[cluster] share_group``): every worker of a fleet uses the same.
    client_id:
        This worker's MQTT client id (unique per worker).
    """

    def __init__(self, settings: MqttSettings, *, fleet: str, group: str, client_id: str) -> None:
        self._inbox: queue.Queue[SourcedMessage] = queue.Queue(maxsize=_BUFFER)
        self._closed = threading.Event()
        self._client = MqttClient(
            settings,
            client_id,
            on_message=_ignore,
            on_ackable=self._arrived,
            subscriptions=[(topics.shared_update_filter(group, fleet), 1)],
        )
        self._client.start(wait_s=None)

    @property
    def connected(self) -> threading.Event:
        """Set while the broker connection is up (tests, readiness)."""
        return self._client.connected

    @property
    def subscribed(self) -> threading.Event:
        """Set once the broker has answered the shared subscription (tests, readiness)."""
        return self._client.subscribed

    def wait_ready(self, timeout_s: float) -> bool:
        """Wait until the broker has granted the shared subscription."""
        return self._client.subscribed.wait(timeout_s)

    def _arrived(self, topic: str, payload: bytes, ack: Callable[[], None]) -> None:
        if not payload:  # a reachability probe (check-config --online)
            ack()
            return
        # A full buffer never acknowledges: a clean session drops the message and its
        # device sends it again.
        with contextlib.suppress(queue.Full):
            self._inbox.put_nowait(SourcedMessage(topic, payload, ack))

    def fetch(self, max_messages: int, timeout_s: float) -> list[SourcedMessage]:
        """Wait up to ``timeout_s`` for a message, then take what else is ready."""
        if self._closed.is_set():
            raise MqttClosedError("the update source is closed")
        try:
            batch = [self._inbox.get(timeout=max(0.0, timeout_s))]
        except queue.Empty:
            return []
        while len(batch) < max_messages:
            try:
                batch.append(self._inbox.get_nowait())
            except queue.Empty:
                break
        return batch

    def close(self) -> None:
        """Disconnect; what was not acknowledged goes to the other members (or is dropped)."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._client.stop(flush_s=1.0)


def _ignore(_topic: str, _payload: bytes) -> None:
    """``on_message`` is unused: every message goes to the manual-ack handler."""
