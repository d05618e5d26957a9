"""``check-config --online``: checks that this account can connect, subscribe and publish.

The probe connects with the daemon's own settings (URL, TLS files, credentials) under a
client id of its own, so a running daemon is never kicked off the broker, subscribes to the
account's read topics and publishes an empty, non-retained QoS 1 message to each write
topic. An empty payload on a byzedge topic is a reachability probe that every byzedge
receiver ignores (DESIGN.md's topics); it is never retained, so it clears nothing.

What it can tell depends on the protocol the broker speaks: over MQTT 5 a refused
subscription or publish comes back with a reason code (``Not authorized``), so an ACL that
does not fit the certificate is found; over MQTT 3.1.1 the broker acknowledges a denied
publish like any other, so only the connection itself is checked (a warning says so).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from byzedge.daemon.mqtt import MqttClient, MqttError, MqttSettings

__all__ = ["PROBE_PAYLOAD", "probe_broker"]

_LOGGER = logging.getLogger(__name__)

PROBE_PAYLOAD = b""
"""What the probe publishes: receivers ignore empty messages."""


def probe_broker(
    settings: MqttSettings,
    client_id: str,
    *,
    publish_topics: Sequence[str],
    subscribe_topics: Sequence[str],
    timeout_s: float = 10.0,
) -> list[str]:
    """Connect, subscribe and publish as ``settings`` would; return the problems found.

    Parameters
    ----------
    settings:
        The daemon's broker settings.
    client_id:
        A client id not used by a running daemon (``<account>-check-<pid>``).
    publish_topics, subscribe_topics:
        Where the account must be able to write and read.
    timeout_s:
        How long to wait for the connection and for each answer.

    Returns
    -------
    list of str
        One line per problem; empty when the broker accepted everything. Never raises
        for what the broker or the network does.
    """
    try:
        client = MqttClient(
            settings,
            client_id,
            on_message=lambda _topic, _payload: None,
            subscriptions=[(topic, 1) for topic in subscribe_topics],
            # Fail fast: one short backoff, the timeout bounds the whole probe anyway.
            seed=0,
        )
    except MqttError as exc:
        return [str(exc)]
    problems: list[str] = []
    try:
        try:
            client.start(wait_s=timeout_s)
        except MqttError as exc:
            return [f"broker {settings.url}: {exc}"]
        if not client.subscribed.wait(timeout_s):
            problems.append(f"broker {settings.url}: no answer to SUBSCRIBE within {timeout_s} s")
        for topic, reason in sorted(client.subscription_refusals.items()):
            problems.append(f"broker {settings.url} refuses subscribing to {topic}: {reason}")
        deliveries = [client.publish(topic, PROBE_PAYLOAD, qos=1) for topic in publish_topics]
        for delivery in deliveries:
            if not delivery.wait(timeout_s):
                problems.append(
                    f"broker {settings.url}: no acknowledgement of a publish to "
                    f"{delivery.topic} within {timeout_s} s"
                )
            elif delivery.refused is not None:
                problems.append(
                    f"broker {settings.url} refuses publishing to {delivery.topic}: "
                    f"{delivery.refused}"
                )
            elif delivery.error is not None:
                problems.append(f"broker {settings.url}: {delivery.error}")
        if client.protocol == "3.1.1":
            _LOGGER.warning(
                "broker %s speaks MQTT 3.1.1 only: the connection works, but refused "
                "publishes cannot be detected (3.1.1 acknowledges them like any other)",
                settings.url,
            )
    finally:
        client.stop(flush_s=1.0)
    return problems
