"""Every MQTT topic byzedge uses is built and parsed here, and nowhere else.

Layout (MQTT 3.1.1 is enough; all metadata travels in the signed envelope)::

    byzedge/{fleet}/model                      retained, signed global model (coordinator)
    byzedge/{fleet}/update/{device_id}         a device's signed update, QoS 1
    byzedge/{fleet}/status/{device_id}         retained device status, last will "offline"
    byzedge/{fleet}/coordinator/status         JSON round summary (coordinator)
    byzedge/{fleet}/alerts                     suspicious-device alerts (coordinator)

Sharded ingest (``[cluster] workers > 0``; coordinator/cluster/) adds::

    $share/{group}/byzedge/{fleet}/update/+    the update stream, shared by the ingest
                                               workers (MQTT v5 shared subscription)
    byzedge/{fleet}/partial/{worker}           a worker's partial aggregate, QoS 1 (to the leader)
    byzedge/{fleet}/cluster/context            retained, signed round context (leader to workers)
    byzedge/{fleet}/receipts                   retained, signed receipts: the devices whose
                                               update the leader holds (to devices, workers)
"""

from __future__ import annotations

import re

from byzedge.protocol.errors import TopicError

__all__ = [
    "PREFIX",
    "RESERVED_DEVICE_IDS",
    "alerts_topic",
    "broadcast_topic",
    "context_topic",
    "coordinator_status_topic",
    "device_status_topic",
    "device_status_wildcard",
    "model_topic",
    "parse_device_topic",
    "parse_partial_topic",
    "partial_topic",
    "partial_wildcard",
    "receipts_topic",
    "resync_topic",
    "shared_update_filter",
    "update_topic",
    "update_wildcard",
    "validate_device_id",
    "validate_nats_topic",
    "validate_identifier",
]

PREFIX = "byzedge"

# Identifiers become topic levels, so they must never carry MQTT wildcards or separators.
_IDENTIFIER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def validate_identifier(value: str, what: str = "identifier") -> str:
    """Return ``value`` if it may be used as a fleet or device id, else raise.

    Raises
    ------
    TopicError
        When the value is empty, longer than 64 characters, or holds anything but
        letters, digits, ``_``, ``.`` and ``-`` (so never ``/``, ``+`` or ``#``).
    """
    if not _IDENTIFIER.fullmatch(value):
        msg = f"invalid {what} {value!r}: use 1-64 of [A-Za-z0-9_.-], starting alphanumeric"
        raise TopicError(msg)
    return value


RESERVED_DEVICE_IDS = frozenset({"coordinator", "monitor", "ingest"})
"""Names no device may take.

The broker ACL (deploy/mosquitto/acl) grants these MQTT users (certificate CNs) the
coordinator's, the operator monitor's and the ingest workers' rights, so a device
enrolled under one of them would gain those rights.
"""


def validate_device_id(value: str) -> str:
    """Return ``value`` if it may be a device id: an identifier, and not a reserved name.

    Raises
    ------
    TopicError
        As :func:`validate_identifier`, or when ``value`` is ``coordinator`` or
        ``monitor`` in any letter case.
    """
    validate_identifier(value, "device id")
    if value.lower() in RESERVED_DEVICE_IDS:
        msg = (
            f"invalid device id {value!r}: {', '.join(sorted(RESERVED_DEVICE_IDS))} are "
            "reserved for the coordinator's, the monitor's and the ingest workers' broker "
            "accounts"
        )
        raise TopicError(msg)
    return value


def model_topic(fleet: str) -> str:
    """Topic of the retained, signed global model."""
    return f"{PREFIX}/{validate_identifier(fleet, 'fleet')}/model"


def broadcast_topic(fleet: str) -> str:
    """Topic of the retained, signed compressed broadcast (Byz-EF21-BC)."""
    return f"{model_topic(fleet)}/broadcast"


def resync_topic(fleet: str) -> str:
    """Topic of the retained, signed dense ``(x, g)`` pair a broadcast follower resyncs from."""
    return f"{model_topic(fleet)}/resync"


def update_topic(fleet: str, device_id: str) -> str:
    """Topic on which ``device_id`` publishes its signed updates."""
    fleet = validate_identifier(fleet, "fleet")
    return f"{PREFIX}/{fleet}/update/{validate_device_id(device_id)}"


def update_wildcard(fleet: str) -> str:
    """Subscription filter matching every device's update topic."""
    return f"{PREFIX}/{validate_identifier(fleet, 'fleet')}/update/+"


def device_status_topic(fleet: str, device_id: str) -> str:
    """Retained status topic of one device (its last will says ``offline``)."""
    fleet = validate_identifier(fleet, "fleet")
    return f"{PREFIX}/{fleet}/status/{validate_device_id(device_id)}"


def device_status_wildcard(fleet: str) -> str:
    """Subscription filter matching every device's status topic."""
    return f"{PREFIX}/{validate_identifier(fleet, 'fleet')}/status/+"


def coordinator_status_topic(fleet: str) -> str:
    """Topic of the coordinator's JSON round summaries."""
    return f"{PREFIX}/{validate_identifier(fleet, 'fleet')}/coordinator/status"


def alerts_topic(fleet: str) -> str:
    """Topic of suspicious-device alerts."""
    return f"{PREFIX}/{validate_identifier(fleet, 'fleet')}/alerts"


def shared_update_filter(group: str, fleet: str) -> str:
    """The MQTT v5 shared subscription that spreads every update over ``group``'s members.

    ``$share/{group}/byzedge/{fleet}/update/+``: each message goes to one member of the
    group (mosquitto, EMQX and HiveMQ alike), while a plain subscriber still gets them all.
    """
    return f"$share/{validate_identifier(group, 'share group')}/{update_wildcard(fleet)}"


def partial_topic(fleet: str, worker: str) -> str:
    """Topic on which ingest worker ``worker`` publishes its partial aggregates."""
    fleet = validate_identifier(fleet, "fleet")
    return f"{PREFIX}/{fleet}/partial/{validate_identifier(worker, 'worker id')}"


def partial_wildcard(fleet: str) -> str:
    """Subscription filter matching every ingest worker's partial topic (the leader's)."""
    return f"{PREFIX}/{validate_identifier(fleet, 'fleet')}/partial/+"


def parse_partial_topic(topic: str, fleet: str) -> str:
    """Return the worker id of ``byzedge/{fleet}/partial/{worker}``.

    Raises
    ------
    TopicError
        When the topic does not have that exact shape.
    """
    parts = topic.split("/")
    if len(parts) != 4 or parts[0] != PREFIX or parts[1] != fleet or parts[2] != "partial":
        msg = f"unexpected topic {topic!r} for fleet {fleet!r} partials"
        raise TopicError(msg)
    return validate_identifier(parts[3], "worker id")


def context_topic(fleet: str) -> str:
    """Topic of the leader's retained, signed round context (read by ingest workers)."""
    return f"{PREFIX}/{validate_identifier(fleet, 'fleet')}/cluster/context"


def receipts_topic(fleet: str) -> str:
    """Topic of the leader's retained, signed receipts (read by devices and workers)."""
    return f"{PREFIX}/{validate_identifier(fleet, 'fleet')}/receipts"


def parse_device_topic(topic: str, fleet: str, kind: str) -> str:
    """Return the device id of ``byzedge/{fleet}/{kind}/{device_id}``.

    Parameters
    ----------
    topic:
        The topic a message arrived on.
    fleet:
        The fleet the receiver serves; a topic of another fleet is refused.
    kind:
        ``"update"`` or ``"status"``.

    Raises
    ------
    TopicError
        When the topic does not have that exact shape.
    """
    parts = topic.split("/")
    if len(parts) != 4 or parts[0] != PREFIX or parts[1] != fleet or parts[2] != kind:
        msg = f"unexpected topic {topic!r} for fleet {fleet!r} and kind {kind!r}"
        raise TopicError(msg)
    return validate_device_id(parts[3])


# nats-server 2.9's MQTT layer maps '/' to '.', so a '.' or space inside a level cannot be
# carried, and a level of '*' or '>' becomes a NATS wildcard; it answers all of these by
# closing the connection (scale-out.md §3). 2.10 maps '.' to '//'; 2.9 is what Debian ships.
_NATS_FORBIDDEN_LEVEL_CHARS = frozenset(". ")
_NATS_WILDCARD_LEVELS = frozenset({"*", ">"})


def validate_nats_topic(topic: str) -> str:
    """Return ``topic`` if a NATS cluster's MQTT listener can carry it, else raise.

    Raises
    ------
    TopicError
        When a level holds ``.`` or a space, or is ``*`` or ``>``: nats-server 2.9 drops
        the connection on such a publish, and the client would re-send it forever.
    """
    for level in topic.split("/"):
        if _NATS_FORBIDDEN_LEVEL_CHARS & set(level) or level in _NATS_WILDCARD_LEVELS:
            msg = (
                f"topic {topic!r} cannot be used on a NATS broker: no '.' or space inside a "
                "level and no '*' or '>' level (rename the fleet or device id)"
            )
            raise TopicError(msg)
    return topic
