"""Sharded ingest over a real three-node NATS cluster (JetStream, MQTT listener per node).

Devices speak plain MQTT 3.1.1 to any node; ingest workers share one durable JetStream
pull consumer per fleet; the leader holds a JetStream key-value lease. Every test starts
its own cluster on free loopback ports (the ``nats_cluster`` fixture) and may kill nodes.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from byzedge.coordinator.cluster.contracts import LeaseLostError, SourcedMessage
from byzedge.coordinator.cluster.nats_lease import KvLeaderLease
from byzedge.coordinator.cluster.nats_source import (
    JetStreamSettings,
    JetStreamUpdateSource,
    stream_name,
)
from byzedge.daemon.mqtt import Delivery, MqttClient, MqttSettings
from byzedge.fleet_sim.nats_cluster import NatsCluster
from byzedge.protocol.topics import update_topic, update_wildcard

pytestmark = pytest.mark.broker

FLEET = "nf"
READY_S = 60.0


def _device(cluster: NatsCluster, name: str, first: int) -> MqttClient:
    """A device whose broker list starts at node ``first`` and goes on round robin."""
    urls = cluster.mqtt_urls[first:] + cluster.mqtt_urls[:first]
    settings = MqttSettings(
        url=urls[0],
        fallback_urls=tuple(urls[1:]),
        protocol="3.1.1",
        topic_rules="nats",
        reconnect_min_s=0.2,
        reconnect_max_s=2.0,
    )
    client = MqttClient(settings, name, on_message=lambda _t, _p: None)
    client.start(wait_s=READY_S)
    return client


@pytest.fixture
def devices() -> Iterator[list[MqttClient]]:
    made: list[MqttClient] = []
    yield made
    for client in made:
        client.stop(flush_s=0.5)


@pytest.fixture
def sources() -> Iterator[list[JetStreamUpdateSource]]:
    made: list[JetStreamUpdateSource] = []
    yield made
    for source in made:
        source.close()


def _source(
    cluster: NatsCluster, made: list[JetStreamUpdateSource], name: str, **settings: float
) -> JetStreamUpdateSource:
    source = JetStreamUpdateSource(
        cluster.nats_urls, FLEET, JetStreamSettings(**settings), name=name
    )
    made.append(source)
    assert source.wait_ready(READY_S), f"source {name} not ready:\n{cluster.logs()}"
    return source


def _wait_delivered(deliveries: list[Delivery], timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    for delivery in deliveries:
        delivery.wait(max(0.0, deadline - time.monotonic()))
    failed = [d for d in deliveries if not d.ok]
    assert not failed, f"{len(failed)} of {len(deliveries)} not acknowledged: {failed[:3]}"


def _drain(
    source: JetStreamUpdateSource, want: set[bytes], got: list[bytes], timeout_s: float
) -> None:
    """Fetch and ack until every payload in ``want`` was seen (or ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while not want <= set(got) and time.monotonic() < deadline:
        for message in source.fetch(50, 1.0):
            got.append(message.payload)
            message.ack()


def _drain_quiet(source: JetStreamUpdateSource, got: list[bytes], quiet_s: float) -> None:
    """Fetch and ack until nothing has come for ``quiet_s``."""
    last = time.monotonic()
    while time.monotonic() - last < quiet_s:
        messages = source.fetch(50, 1.0)
        if messages:
            last = time.monotonic()
        for message in messages:
            got.append(message.payload)
            message.ack()


# -- the cluster and the devices ---------------------------------------------------------


def test_cluster_carries_mqtt_across_nodes(
    nats_cluster: NatsCluster, devices: list[MqttClient]
) -> None:
    assert nats_cluster.meta_leader() in {node.name for node in nats_cluster.nodes}
    received: list[bytes] = []
    arrived = threading.Event()

    def inbox(_topic: str, payload: bytes) -> None:
        received.append(payload)
        arrived.set()

    urls = nats_cluster.mqtt_urls
    settings = MqttSettings(url=urls[2], protocol="3.1.1")
    watcher = MqttClient(
        settings, "watcher", on_message=inbox, subscriptions=[(update_wildcard(FLEET), 1)]
    )
    watcher.start(wait_s=READY_S)
    try:
        assert watcher.subscribed.wait(READY_S)
        device = _device(nats_cluster, "dev-a", first=0)
        devices.append(device)
        delivery = device.publish(update_topic(FLEET, "dev-a"), b"over the routes")
        _wait_delivered([delivery])
        assert arrived.wait(30.0)
        assert received == [b"over the routes"]
        assert device.protocol == "3.1.1"
    finally:
        watcher.stop(flush_s=0.5)


def test_device_moves_to_another_node_when_its_node_dies(
    nats_cluster: NatsCluster, devices: list[MqttClient]
) -> None:
    received: set[bytes] = set()
    watcher = MqttClient(
        MqttSettings(url=nats_cluster.mqtt_urls[2], protocol="3.1.1"),
        "watcher",
        on_message=lambda _t, payload: received.add(payload),
        subscriptions=[(update_wildcard(FLEET), 1)],
        persistent_session=True,
    )
    watcher.start(wait_s=READY_S)
    try:
        assert watcher.subscribed.wait(READY_S)
        device = _device(nats_cluster, "dev-m", first=0)
        devices.append(device)
        assert device.broker_url == nats_cluster.mqtt_urls[0]
        nats_cluster.nodes[0].kill()
        topic = update_topic(FLEET, "dev-m")
        sent = [f"after-kill-{k}".encode() for k in range(20)]
        _wait_delivered([device.publish(topic, payload) for payload in sent])
        assert device.broker_url != nats_cluster.mqtt_urls[0]
        assert device.connect_count >= 2
        deadline = time.monotonic() + 60.0
        while not set(sent) <= received and time.monotonic() < deadline:
            time.sleep(0.1)
        assert set(sent) <= received, f"missing {sorted(set(sent) - received)[:5]}"
    finally:
        watcher.stop(flush_s=0.5)


def test_device_refuses_a_topic_the_nats_broker_would_choke_on(
    nats_cluster: NatsCluster, devices: list[MqttClient]
) -> None:
    device = _device(nats_cluster, "dev-t", first=1)
    devices.append(device)
    refused = device.publish(f"byzedge/{FLEET}/update/dev.1", b"poison")
    assert refused.done
    assert refused.error is not None
    assert "NATS" in str(refused.error)
    # The connection is untouched: the next publish goes through on the same link.
    _wait_delivered([device.publish(update_topic(FLEET, "dev-t"), b"fine")])
    assert device.connect_count == 1


# -- ingest workers on the durable stream -----------------------------------------------


def test_two_workers_share_the_updates_without_loss_or_duplicate(
    nats_cluster: NatsCluster, devices: list[MqttClient], sources: list[JetStreamUpdateSource]
) -> None:
    workers = [_source(nats_cluster, sources, f"worker-{k}") for k in range(2)]
    names = ["dev-0", "dev-1", "dev-2"]
    devices.extend(_device(nats_cluster, name, first=k) for k, name in enumerate(names))
    per_device = 50
    deliveries = [
        device.publish(update_topic(FLEET, name), f"{name}:{k}".encode())
        for k in range(per_device)
        for device, name in zip(devices, names, strict=True)
    ]
    _wait_delivered(deliveries)
    sent = {f"{name}:{k}".encode() for name in names for k in range(per_device)}

    taken: list[list[SourcedMessage]] = [[], []]
    done = threading.Event()

    def work(index: int) -> None:
        while not done.is_set():
            for message in workers[index].fetch(5, 1.0):
                taken[index].append(message)
                time.sleep(0.005)  # some work, so one worker cannot take everything
                message.ack()

    threads = [threading.Thread(target=work, args=(k,), daemon=True) for k in range(2)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 120.0
    while sum(map(len, taken)) < len(sent) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(2.0)  # anything delivered twice would arrive now
    done.set()
    for thread in threads:
        thread.join(timeout=10.0)

    payloads = [m.payload for share in taken for m in share]
    assert Counter(payloads).most_common(1)[0][1] == 1, "a message reached two workers"
    assert set(payloads) == sent
    assert all(taken), f"split {[len(share) for share in taken]}: one worker got nothing"
    assert {m.topic for share in taken for m in share} == {
        update_topic(FLEET, name) for name in names
    }


_HOLDER = textwrap.dedent(
    """
    import sys, time
    from byzedge.coordinator.cluster.nats_source import JetStreamSettings, JetStreamUpdateSource
    servers, fleet = sys.argv[1].split(","), sys.argv[2]
    settings = JetStreamSettings(ack_wait_s=float(sys.argv[3]))
    count = int(sys.argv[4])
    source = JetStreamUpdateSource(servers, fleet, settings, name="holder")
    held = []
    deadline = time.monotonic() + 120
    while len(held) < count and time.monotonic() < deadline:
        held += source.fetch(count - len(held), 1.0)
    for message in held:
        print(message.payload.decode(), flush=True)
    print("HOLDING", flush=True)
    time.sleep(3600)
    """
)


def _lines_until(process: subprocess.Popen[bytes], last: bytes, timeout_s: float) -> list[bytes]:
    """The lines ``process`` prints before ``last`` (fails after ``timeout_s``)."""
    lines: list[bytes] = []
    finished = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            if line.strip() == last:
                finished.set()
                return
            lines.append(line.strip())

    threading.Thread(target=read, daemon=True).start()
    assert finished.wait(timeout_s), f"no {last!r} from the process; it printed {lines}"
    return lines


def test_unacked_updates_of_a_killed_worker_go_to_the_other_worker(
    nats_cluster: NatsCluster, devices: list[MqttClient], sources: list[JetStreamUpdateSource]
) -> None:
    ack_wait = 4.0
    # The survivor provisions the stream before anything is published; a pull consumer
    # delivers nothing to it until it fetches.
    survivor = _source(nats_cluster, sources, "survivor", ack_wait_s=ack_wait)
    device = _device(nats_cluster, "dev-r", first=0)
    devices.append(device)
    sent = {f"held-{k}".encode() for k in range(5)}
    _wait_delivered([device.publish(update_topic(FLEET, "dev-r"), p) for p in sorted(sent)])

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _HOLDER,
            ",".join(nats_cluster.nats_urls),
            FLEET,
            str(ack_wait),
            "5",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        lines = _lines_until(holder, b"HOLDING", timeout_s=180.0)
        assert set(lines) == sent
        holder.kill()  # a crash: no nak, no close
        holder.wait()
        got: list[bytes] = []
        _drain(survivor, sent, got, timeout_s=60.0)
        assert set(got) == sent
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()


def test_a_restarted_consumer_finds_the_updates_published_while_it_was_down(
    nats_cluster: NatsCluster, devices: list[MqttClient], sources: list[JetStreamUpdateSource]
) -> None:
    device = _device(nats_cluster, "dev-d", first=1)
    devices.append(device)
    topic = update_topic(FLEET, "dev-d")
    first = _source(nats_cluster, sources, "before")
    early = {f"early-{k}".encode() for k in range(10)}
    _wait_delivered([device.publish(topic, payload) for payload in sorted(early)])
    got: list[bytes] = []
    _drain(first, early, got, timeout_s=60.0)
    assert set(got) == early
    first.close()

    # Nobody consumes now; a node restarts meanwhile, and the stream keeps what comes.
    late = {f"late-{k}".encode() for k in range(20)}
    _wait_delivered([device.publish(topic, payload) for payload in sorted(late)])
    nats_cluster.nodes[2].stop()
    nats_cluster.restart(nats_cluster.nodes[2].name)

    second = _source(nats_cluster, sources, "after")
    again: list[bytes] = []
    _drain(second, late, again, timeout_s=60.0)
    _drain_quiet(second, again, quiet_s=2.0)
    assert sorted(again) == sorted(late)  # each once, none of the acked early ones


def test_killing_the_stream_leader_mid_stream_loses_nothing_once_devices_resend(
    nats_cluster: NatsCluster, devices: list[MqttClient], sources: list[JetStreamUpdateSource]
) -> None:
    """A stream-leader failover drops PUBACKed MQTT messages; receipts + re-send recover them.

    nats-server's MQTT layer copies a publish into a user stream without waiting for the
    stream (scale-out.md §6, §7): while the stream's leader is re-elected, PUBACKed updates
    can be missing from it. The end-to-end guarantee is the receipts' re-send, driven here
    by the test comparing what was consumed with what every device published.
    """
    worker = _source(nats_cluster, sources, "worker")
    names = [f"dev-{k}" for k in range(6)]
    devices.extend(_device(nats_cluster, name, first=k % 3) for k, name in enumerate(names))
    leader = nats_cluster.stream_leader(stream_name(FLEET))
    assert leader is not None

    got: list[bytes] = []
    stop = threading.Event()

    def consume() -> None:
        while not stop.is_set():
            for message in worker.fetch(50, 1.0):
                got.append(message.payload)
                message.ack()

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    sent: dict[bytes, tuple[MqttClient, str]] = {}
    deliveries: list[Delivery] = []
    body = b"x" * 10_000
    for step in range(60):  # 6 devices x 60 updates, about 10 per second each
        if step == 15:
            nats_cluster.node(leader).kill()
        for device, name in zip(devices, names, strict=True):
            payload = f"{name}:{step}:".encode() + body
            sent[payload] = (device, name)
            deliveries.append(device.publish(update_topic(FLEET, name), payload))
        time.sleep(0.1)
    _wait_delivered(deliveries, timeout_s=180.0)

    # What the stream holds arrives; then nothing more comes (10 s quiet, 60 s at most).
    deadline = time.monotonic() + 60.0
    seen, quiet_since = len(got), time.monotonic()
    while not set(sent) <= set(got) and time.monotonic() < deadline:
        time.sleep(0.5)
        if len(got) != seen:
            seen, quiet_since = len(got), time.monotonic()
        elif time.monotonic() - quiet_since > 10.0:
            break
    lost_first = set(sent) - set(got)
    resends = 0
    deadline = time.monotonic() + 180.0
    while (missing := set(sent) - set(got)) and time.monotonic() < deadline:
        resends += len(missing)
        for payload in missing:
            device, name = sent[payload]
            device.publish(update_topic(FLEET, name), payload)
        time.sleep(10.0)
    stop.set()
    consumer.join(timeout=10.0)
    duplicates = len(got) - len(set(got))
    # Every message the stream ever stored has a sequence number: when the missing ones
    # were never stored (and not lost on the way to the consumer), stored = sent - lost
    # + re-sent.
    stored = nats_cluster.stream_state(stream_name(FLEET)).get("last_seq")
    print(  # the measurement this test exists for (run with -s to see it)
        f"\nstream leader {leader} killed: {len(lost_first)} of {len(sent)} PUBACKed "
        f"updates missing from the stream before re-send; {resends} re-sent; "
        f"{duplicates} consumed twice; the stream stored {stored} messages in all"
    )
    assert set(sent) <= set(got), f"{len(set(sent) - set(got))} still missing after re-sends"


# -- the leader's lease ------------------------------------------------------------------


def test_lease_is_exclusive_and_passes_on_with_a_larger_epoch(nats_cluster: NatsCluster) -> None:
    first = KvLeaderLease(nats_cluster.nats_urls, FLEET, holder="first")
    second = KvLeaderLease(nats_cluster.nats_urls, FLEET, holder="second", poll_s=0.2)
    try:
        assert first.wait_ready(READY_S)
        assert second.wait_ready(READY_S)
        epoch = first.acquire(timeout_s=30.0)
        assert epoch is not None
        assert second.acquire(timeout_s=2.0) is None
        first.renew()
        first.renew()
        first.release()
        next_epoch = second.acquire(timeout_s=30.0)
        assert next_epoch is not None
        assert next_epoch > epoch
        with pytest.raises(LeaseLostError):
            first.renew()
    finally:
        first.close()
        second.close()


def test_a_leader_that_stops_renewing_is_deposed_and_fenced(nats_cluster: NatsCluster) -> None:
    stale = KvLeaderLease(nats_cluster.nats_urls, FLEET, holder="stale")
    standby = KvLeaderLease(nats_cluster.nats_urls, FLEET, holder="standby", poll_s=0.5)
    try:
        epoch = stale.acquire(timeout_s=READY_S)
        assert epoch is not None
        # The holder hangs (no renewals): its entry expires after the TTL.
        taken = standby.acquire(timeout_s=90.0)
        assert taken is not None
        assert taken > epoch
        with pytest.raises(LeaseLostError):
            stale.renew()
        standby.renew()
    finally:
        stale.close()
        standby.close()


def test_the_lease_holder_keeps_the_lease_through_a_node_kill(nats_cluster: NatsCluster) -> None:
    holder = KvLeaderLease(nats_cluster.nats_urls, FLEET, holder="holder")
    standby = KvLeaderLease(nats_cluster.nats_urls, FLEET, holder="standby")
    try:
        assert holder.acquire(timeout_s=READY_S) is not None
        nats_cluster.node(nats_cluster.stream_leader("KV_byzedge_leader") or "n0").kill()
        end = time.monotonic() + 25.0  # beyond the 15 s TTL: renewals must keep it alive
        while time.monotonic() < end:
            holder.renew()
            time.sleep(holder.renew_interval_s / 2)
        assert standby.acquire(timeout_s=1.0) is None
    finally:
        holder.close()
        standby.close()
