"""The two seams a scaled-out coordinator stands on: where updates come from, who leads.

Sharded ingest (DESIGN.md, "Scale-out") runs K ingest workers beside one leader. The
workers do not care which broker carries the fleet's update stream, and the leader does
not care how its role is held; each of those is one small Protocol here, with one
implementation per broker:

- :class:`UpdateSource`: the fleet's update messages, shared by the workers as competing
  consumers (MQTT v5 ``$share`` on mosquitto, EMQX or HiveMQ; a durable JetStream pull
  consumer on a NATS cluster). A message is acknowledged only once the partial aggregate
  that holds it is safely with the broker, so a worker killed mid-round loses nothing the
  source can still redeliver; what a source cannot redeliver (mosquitto drops a dead
  member's in-flight messages) the devices re-send when the leader's receipts omit them.
- :class:`LeaderLease`: the leader's role as a lease with a fencing epoch (a file lock on
  one machine, a JetStream key-value entry on a cluster). The epoch goes into everything
  the leader writes, so a deposed leader's late output can be told apart and dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

__all__ = ["LeaderLease", "LeaseLostError", "SourcedMessage", "UpdateSource"]


@dataclass(frozen=True, slots=True)
class SourcedMessage:
    """One update message as a source delivers it.

    Attributes
    ----------
    topic:
        The MQTT topic the device published on (``byzedge/{fleet}/update/{device}``, or a
        chunk's sub-topic); a NATS subject is mapped back to it by the source.
    payload:
        The bytes the device published, unchanged.
    ack:
        Tells the source the message is done with (its partial is with the broker);
        idempotent. Never called for a message the worker did not finish.
    """

    topic: str
    payload: bytes
    ack: Callable[[], None]


class UpdateSource(Protocol):
    """A fleet's update stream, shared by the ingest workers as competing consumers."""

    def fetch(self, max_messages: int, timeout_s: float) -> list[SourcedMessage]:
        """Wait up to ``timeout_s`` for a message, then return what else is ready.

        Returns an empty list on timeout; never raises for a slow or absent broker (the
        source reconnects on its own), only :class:`~daemon.mqtt.MqttClosedError` once
        :meth:`close` has run.
        """

    def close(self) -> None:
        """Stop consuming; unacknowledged messages go back to the other workers."""

    def wait_ready(self, timeout_s: float) -> bool:
        """Wait until the source is consuming (connected, subscribed or bound to its consumer).

        Returns whether it is; a worker says it is ready only then (a shared subscription
        that is not yet in place misses what is published meanwhile).
        """


class LeaseLostError(Exception):
    """The leader's lease was taken over or could not be renewed in time."""


class LeaderLease(Protocol):
    """The leader's role, held as a renewable lease with a fencing epoch."""

    def acquire(self, timeout_s: float | None = None) -> int | None:
        """Block until the lease is ours (or ``timeout_s`` passes: ``None``).

        Returns the fencing epoch: larger than any earlier holder's.
        """

    def renew(self) -> None:
        """Keep the lease; raises :class:`LeaseLostError` when it is no longer ours."""

    def release(self) -> None:
        """Give the lease up so a standby takes over at once (idempotent)."""
