"""Update throughput on a three-node NATS cluster: MQTT -> JetStream -> K pull workers vs raw MQTT.

Starts a private three-node cluster (clustered JetStream, MQTT on every node) on loopback
ports, then measures, in the same run:

1. raw MQTT: a paho QoS 1 publisher on node 0 to a paho QoS 1 subscriber on node 1;
2. the ingest path: the same publisher, the fleet's R3 work-queue stream, and 1 or 2
   ``JetStreamUpdateSource`` pull workers (separate processes, each fetching and acking),
   timed until the workers have acked every message.

Every path sends the same number of messages of the same size, with 20 QoS 1 messages in
flight. Writes benchmarks/results/scale_nats.md. Usage::

    .venv/bin/python benchmarks/scale_nats.py [--messages 1500] [--size 102400] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from importlib.metadata import version
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from byzedge.fleet_sim.nats_cluster import NatsCluster, find_nats_server, start_nats_cluster

RESULTS = Path(__file__).parent / "results" / "scale_nats.md"
IN_FLIGHT = 20
TIMEOUT_S = 600.0


def _client(name: str, port: int) -> paho.Client:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=paho.MQTTv311)
    client.max_inflight_messages_set(IN_FLIGHT)  # before connect (paho 2.2)
    client.connect("127.0.0.1", port, keepalive=60)
    client.loop_start()
    return client


def _publish(port: int, topic: str, count: int, size: int) -> float:
    """Publish ``count`` QoS 1 messages; return the monotonic time of the first."""
    client = _client(f"bench-pub-{topic.replace('/', '-')}", port)
    payload = os.urandom(size)
    started = time.monotonic()
    infos = [client.publish(topic, payload, qos=1) for _ in range(count)]
    for info in infos:
        info.wait_for_publish(TIMEOUT_S)
    client.loop_stop()
    client.disconnect()
    return started


def raw_mqtt(cluster: NatsCluster, count: int, size: int) -> float:
    """Seconds from the first publish to the last message at a subscriber on another node."""
    topic = "byzedge/rawbench/update/dev-1"
    received = 0
    done = threading.Event()
    ready = threading.Event()
    last = 0.0

    def on_message(_c: object, _u: object, _m: paho.MQTTMessage) -> None:
        nonlocal received, last
        received += 1
        if received == count:
            last = time.monotonic()
            done.set()

    subscriber = _client("bench-sub", cluster.nodes[1].mqtt_port)
    subscriber.on_message = on_message
    subscriber.on_subscribe = lambda *_args: ready.set()
    subscriber.subscribe(topic, qos=1)
    if not ready.wait(60.0):
        raise RuntimeError("subscription not acknowledged")
    started = _publish(cluster.nodes[0].mqtt_port, topic, count, size)
    if not done.wait(TIMEOUT_S):
        raise RuntimeError(f"raw MQTT: {received} of {count} messages arrived")
    subscriber.loop_stop()
    subscriber.disconnect()
    return last - started


_WORKER = """
import sys, time
from byzedge.coordinator.cluster.nats_source import JetStreamSettings, JetStreamUpdateSource
servers, fleet = sys.argv[1].split(","), sys.argv[2]
source = JetStreamUpdateSource(servers, fleet, JetStreamSettings(), name=sys.argv[3])
assert source.wait_ready(120)
print("ready", flush=True)
count = 0
while True:
    for message in source.fetch(64, 1.0):
        message.ack()
        count += 1
    print(count, time.monotonic(), flush=True)
"""


def jetstream(
    cluster: NatsCluster, count: int, size: int, workers: int, fleet: str
) -> tuple[float, list[int]]:
    """Seconds from the first publish until the ``workers`` acked every message, and the split."""
    servers = ",".join(cluster.nats_urls)
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, servers, fleet, f"w{k}"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for k in range(workers)
    ]
    counts = [0] * workers
    last = [0.0] * workers
    ready = [threading.Event() for _ in range(workers)]

    def read(index: int) -> None:
        stream = processes[index].stdout
        assert stream is not None
        for line in stream:
            if line.startswith("ready"):
                ready[index].set()
                continue
            seen, when = line.split()
            if int(seen) > counts[index]:
                counts[index], last[index] = int(seen), float(when)

    readers = [threading.Thread(target=read, args=(k,), daemon=True) for k in range(workers)]
    for reader in readers:
        reader.start()
    try:
        for event in ready:
            if not event.wait(120.0):
                raise RuntimeError("a worker did not connect")
        started = _publish(cluster.nodes[0].mqtt_port, f"byzedge/{fleet}/update/dev-1", count, size)
        deadline = time.monotonic() + TIMEOUT_S
        while sum(counts) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers acked {sum(counts)} of {count}")
            time.sleep(0.1)
        return max(last) - started, list(counts)
    finally:
        for process in processes:
            process.kill()
            process.wait()
            if process.stdout is not None:
                process.stdout.close()


def _nats_version() -> str:
    binary = find_nats_server()
    if binary is None:
        return "not installed"
    output = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=False)
    return output.stdout.strip() or output.stderr.strip()


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1500, help="messages per path")
    parser.add_argument("--size", type=int, default=100 * 1024, help="payload bytes")
    parser.add_argument("--repeats", type=int, default=3, help="runs of every path")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    count, size = args.messages, args.size
    labels = [
        "raw MQTT, pub on node 0 -> QoS 1 sub on node 1",
        "MQTT -> R3 JetStream work queue -> 1 pull worker",
        "MQTT -> R3 JetStream work queue -> 2 pull workers",
    ]
    rates: dict[str, list[float]] = {label: [] for label in labels}
    splits: dict[str, list[str]] = {label: [] for label in labels}
    load = os.getloadavg()[0]
    with (
        tempfile.TemporaryDirectory(prefix="byzedge-scale-nats-") as folder,
        start_nats_cluster(Path(folder)) as cluster,
    ):
        # The paths take turns, so load from elsewhere on the machine hits them alike.
        for run in range(args.repeats):
            rates[labels[0]].append(count / raw_mqtt(cluster, count, size))
            for workers in (1, 2):
                fleet = f"bench{workers}r{run}"
                seconds, split = jetstream(cluster, count, size, workers, fleet)
                rates[labels[workers]].append(count / seconds)
                splits[labels[workers]].append("/".join(map(str, split)))
    raw_rate = statistics.median(rates[labels[0]])
    lines = [
        "# Update throughput on a 3-node NATS cluster (benchmarks/scale_nats.py)",
        "",
        "Command: `.venv/bin/python benchmarks/scale_nats.py "
        f"--messages {count} --size {size} --repeats {args.repeats}`",
        "",
        f"Machine: {_cpu()}, {os.cpu_count()} cores, {platform.platform()}; "
        f"all three nodes, the publisher and the workers on this one machine over loopback.",
        f"Versions: {_nats_version()}, Python {platform.python_version()}, "
        f"paho-mqtt {version('paho-mqtt')}, nats-py {version('nats-py')}. "
        f"Load average when it started: {load:.2f} (the machine is shared).",
        "",
        f"{count} QoS 1 messages of {size} bytes per path and run, {args.repeats} runs "
        f"with the paths taking turns; {IN_FLIGHT} in flight, one "
        "publisher (paho, MQTT 3.1.1) on node 0. Workers are separate processes, each a "
        "`JetStreamUpdateSource` (fetch 64, ack each); time runs from the first publish to "
        "the last message received (raw) or acked (JetStream), in the same run.",
        "",
        "| path | median msg/s | runs (msg/s) | median MB/s | median vs raw MQTT | split |",
        "|---|---:|---|---:|---:|---|",
    ]
    for label in labels:
        rate = statistics.median(rates[label])
        runs = ", ".join(f"{r:.0f}" for r in rates[label])
        lines.append(
            f"| {label} | {rate:.0f} | {runs} | {rate * size / 1e6:.1f} | "
            f"{rate / raw_rate:.2f} | {' '.join(splits[label])} |"
        )
    lines += [
        "",
        "All nodes share the machine's cores with the publisher and the workers, so these "
        "figures are CPU-bound; on one node per host expect more (scale-out.md section 10).",
        "",
    ]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(lines))
    print("\n".join(lines))
    print(json.dumps(rates))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
