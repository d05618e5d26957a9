"""A load generator: many light devices that seal and publish real updates, without training.

It stands in for a fleet when the question is how far one coordinator goes, not how well a
model learns (that is :mod:`byzedge.fleet_sim.fleet`, whose agents train). Each simulated
device has its own Ed25519 key, enrolled like a real device (``<device_id>.pub`` in the
coordinator's ``devices_dir``), and its updates are real envelopes: a header naming the
device, round, model version, nonce and counter, a codec body, a signature. Only the
vectors are fake: a small pool of random bodies is encoded once and shared, since the
coordinator's cost does not depend on what the numbers are.

Thousands of devices cannot each own a paho client and its thread, so a few MQTT
connections (:class:`Publisher`) publish on behalf of all of them, each message on its
device's own update topic: the broker and the coordinator see what a fleet sends, and the
default ACL (a device may publish only on its own topic) is not in play here.

Sealing (signing) is done ahead of a round by :func:`seal_round`, which reports its own
time, so that it stays out of the coordinator's measured time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from byzedge.protocol import topics
from byzedge.protocol.chunking import DEFAULT_MAX_MESSAGE_BYTES, split_payload
from byzedge.protocol.codecs import CodecContext, build_codec
from byzedge.protocol.envelope import Header, seal
from byzedge.protocol.signing import SigningKey

__all__ = [
    "LoadDevices",
    "PublishResult",
    "Publisher",
    "SealedRound",
    "encode_bodies",
    "seal_round",
]

# Distinct bodies per round: enough that rows differ (anomaly scores, medians), few enough
# that encoding them costs nothing next to signing.
_BODY_POOL = 16
# QoS 1 messages in flight per connection. Each connection stands in for many devices, each
# of which would have its own window; paho's default of 20 would throttle the whole fleet.
_INFLIGHT = 200


@dataclass(frozen=True, slots=True)
class LoadDevices:
    """Simulated devices: ids and signing keys.

    Parameters
    ----------
    ids:
        Device ids (valid topic levels).
    keys:
        One signing key per id, in the same order.
    """

    ids: tuple[str, ...]
    keys: tuple[SigningKey, ...]

    @classmethod
    def generate(cls, count: int, prefix: str = "load") -> LoadDevices:
        """``count`` devices named ``{prefix}-00000`` ... with fresh keys."""
        ids = tuple(f"{prefix}-{index:05d}" for index in range(count))
        return cls(ids, tuple(SigningKey.generate() for _ in ids))

    def first(self, count: int) -> LoadDevices:
        """The first ``count`` devices (configurations of several sizes share keys)."""
        if not 0 < count <= len(self.ids):
            msg = f"asked for {count} of {len(self.ids)} devices"
            raise ValueError(msg)
        return LoadDevices(self.ids[:count], self.keys[:count])

    def enrol(self, devices_dir: Path) -> None:
        """Write each device's public key as ``devices_dir/<id>.pub``, as enrolment does."""
        devices_dir.mkdir(parents=True, exist_ok=True)
        for device, key in zip(self.ids, self.keys, strict=True):
            (devices_dir / f"{device}.pub").write_bytes(key.verify_key.to_pem())

    def __len__(self) -> int:
        return len(self.ids)


def encode_bodies(
    codec_name: str, dim: int, rng: np.random.Generator, *, sparsity: float = 0.01
) -> list[bytes]:
    """Encode a pool of random update vectors of ``dim`` float32 values with ``codec_name``.

    The vectors are small (norm about 0.1), like a trained delta. Codecs whose support
    depends on the sender (``rand-k``) cannot share bodies between devices and are refused.
    """
    codec = build_codec(codec_name, **({"sparsity": sparsity} if codec_name != "dense" else {}))
    if codec_name.startswith("rand-k"):
        msg = f"codec {codec_name!r} derives its support from the sender: bodies cannot be shared"
        raise ValueError(msg)
    context = CodecContext("load", 0, "load")
    scale = np.float32(0.1 / np.sqrt(dim))
    return [
        codec.encode((rng.standard_normal(dim, dtype=np.float32) * scale), context=context)
        for _ in range(_BODY_POOL)
    ]


@dataclass(frozen=True, slots=True)
class SealedRound:
    """One round's messages, ready to publish, and what sealing them cost.

    Attributes
    ----------
    messages:
        ``(topic, frame)`` in publishing order; an update over the message size limit is
        several chunk frames in a row.
    updates:
        Updates sealed (devices).
    update_bytes:
        Bytes of the sealed updates (before chunking).
    seal_s:
        Seconds spent sealing (header, SHA-256, Ed25519 signature, msgpack).
    """

    messages: list[tuple[str, bytes]]
    updates: int
    update_bytes: int
    seal_s: float


def seal_round(
    devices: LoadDevices,
    *,
    fleet: str,
    round_number: int,
    model_version: int,
    codec_name: str,
    dim: int,
    bodies: Sequence[bytes],
    counter: int,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ttl_s: float = 3600.0,
) -> SealedRound:
    """Seal one update per device for ``round_number`` from ``model_version``.

    ``counter`` is every device's header counter for this round; it must grow from round
    to round (the coordinator refuses a counter that does not).
    """
    started = time.perf_counter()
    messages: list[tuple[str, bytes]] = []
    total = 0
    created_ms = int(time.time() * 1000)
    for index, (device, key) in enumerate(zip(devices.ids, devices.keys, strict=True)):
        header = Header(
            kind="update",
            fleet=fleet,
            sender=device,
            round=round_number,
            base_version=model_version,
            codec=codec_name,
            dim=dim,
            counter=counter,
            created_ms=created_ms,
            expires_ms=created_ms + int(ttl_s * 1000),
        )
        payload = seal(header, bodies[index % len(bodies)], key).to_bytes()
        total += len(payload)
        topic = topics.update_topic(fleet, device)
        messages.extend((topic, frame) for frame in split_payload(payload, max_message_bytes))
    return SealedRound(messages, len(devices), total, time.perf_counter() - started)


@dataclass(frozen=True, slots=True)
class PublishResult:
    """When publishing started and when the broker had acknowledged every message.

    Times are ``time.monotonic()`` (system-wide on Linux, so comparable with other
    processes' readings).
    """

    started: float
    acked: float
    messages: int
    payload_bytes: int


class Publisher:
    """A few MQTT connections that publish (QoS 1) on behalf of many devices.

    Parameters
    ----------
    host, port:
        The broker (plain TCP, MQTT 3.1.1).
    connections:
        How many client connections share the messages (round robin).
    client_prefix:
        Client ids are ``{client_prefix}-{i}``.
    """

    def __init__(
        self, host: str, port: int, *, connections: int = 4, client_prefix: str = "loadgen"
    ) -> None:
        if connections < 1:
            msg = "need at least one connection"
            raise ValueError(msg)
        self._clients: list[paho.Client] = []
        self._lock = threading.Lock()
        self._acked = 0
        self._all_acked = threading.Event()
        self._expected = 0
        for index in range(connections):
            client = paho.Client(
                CallbackAPIVersion.VERSION2,
                client_id=f"{client_prefix}-{index}",
                protocol=paho.MQTTv311,
            )
            client.max_inflight_messages_set(_INFLIGHT)
            client.max_queued_messages_set(0)
            client.on_publish = self._on_publish
            client.connect(host, port, keepalive=60)
            client.loop_start()
            self._clients.append(client)
        deadline = time.monotonic() + 15.0
        while not all(c.is_connected() for c in self._clients):
            if time.monotonic() > deadline:
                self.close()
                msg = f"load generator could not connect to {host}:{port}"
                raise ConnectionError(msg)
            time.sleep(0.01)

    def _on_publish(self, *_args: object) -> None:
        with self._lock:
            self._acked += 1
            if self._acked >= self._expected:
                self._all_acked.set()

    def publish(
        self, messages: Sequence[tuple[str, bytes]], timeout_s: float = 600.0
    ) -> PublishResult:
        """Publish every message at QoS 1 and wait until the broker acknowledged them all."""
        with self._lock:
            self._acked = 0
            self._expected = len(messages)
            self._all_acked.clear()
        if not messages:
            now = time.monotonic()
            return PublishResult(now, now, 0, 0)
        clients = self._clients
        started = time.monotonic()
        for index, (topic, frame) in enumerate(messages):
            clients[index % len(clients)].publish(topic, frame, qos=1)
        if not self._all_acked.wait(timeout_s):
            msg = f"broker acknowledged {self._acked} of {len(messages)} messages in {timeout_s} s"
            raise TimeoutError(msg)
        return PublishResult(
            started, time.monotonic(), len(messages), sum(len(frame) for _, frame in messages)
        )

    def close(self) -> None:
        """Disconnect every connection."""
        for client in self._clients:
            client.disconnect()
            client.loop_stop()
