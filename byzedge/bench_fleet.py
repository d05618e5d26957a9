"""How far one coordinator goes (``byzedge bench fleet``).

For every configuration (devices per round x model x compression) the benchmark

1. enrols that many simulated devices (:mod:`byzedge.fleet_sim.loadgen`) and seals one
   update per device per round ahead of time, timing the sealing on its own;
2. publishes round 1's messages to a plain subscriber (:func:`bench_fleet_probe.sink_process`)
   through a private mosquitto: the raw throughput of this broker for these bytes;
3. starts a real coordinator in a process of its own
   (:func:`bench_fleet_probe.coordinator_process`) and, each time it publishes a round's
   signed model, publishes that round's sealed updates, the same messages as in step 2
   through the same connections.

Throughputs count updates from the first publish to the last one received (raw) or
accepted (coordinator); round time runs from the first publish to the round summary. The
ratio of the two throughputs is measured in the same run on the same broker. The
coordinator runs its defaults (``clipping-vr``, anomaly scoring, reputation, audit log,
journal) except ``validation = "none"`` (the digits accuracy costs the same whatever the
fleet) and a round that closes when every device has answered.

Configurations whose round cannot fit this machine are not run, and the report says why
(``max_round_bytes``: the decoded rows a round holds, ``n x d`` float32, whatever the
compression, plus the stacked copy anomaly scoring makes).

Nothing here asserts a timing: the report states whether the ingest target (at least
:data:`INGEST_TARGET` of raw) was met.

Sharded ingest (``workers``): a configuration with ``K > 0`` workers runs the coordinator as
the leader of ``K`` ingest-worker processes (:mod:`byzedge.coordinator.cluster`) that
share the update stream through an MQTT v5 shared subscription; the round then runs from
the first publish to the leader's summary, through the workers' partials. Updates that
would be chunked cannot be shared (the chunks would land on different workers), so such
configurations are reported as not run.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from byzedge.bench import machine_description
from byzedge.bench_fleet_probe import PHASES
from byzedge.fleet_sim.brokers import BrokerHandle, start_mosquitto
from byzedge.fleet_sim.loadgen import (
    LoadDevices,
    Publisher,
    PublishResult,
    SealedRound,
    encode_bodies,
    seal_round,
)
from byzedge.models import get_model_spec
from byzedge.protocol import topics
from byzedge.protocol.chunking import DEFAULT_MAX_MESSAGE_BYTES, Reassembler
from byzedge.protocol.errors import ProtocolError
from byzedge.protocol.manifest import open_global_model
from byzedge.protocol.signing import SigningKey, VerifyKey

__all__ = [
    "INGEST_TARGET",
    "render_workers_markdown",
    "FleetBenchReport",
    "FleetRow",
    "render_markdown",
    "render_plot",
    "run_fleet_bench",
]

INGEST_TARGET = 0.5
"""Coordinator ingest throughput as a fraction of the raw broker throughput (the target)."""

_WAIT_S = 900.0
# Every broker message queue large enough for a whole round: the benchmark measures the
# coordinator, not a broker limit an operator would raise for such a fleet.
_BROKER_CONFIG = "max_queued_messages 0\nmax_inflight_messages 0\n"
# How often an ingest worker sends its partial (sooner once 16 messages await their ack).
_PARTIAL_FLUSH_S = 0.05


@dataclass(frozen=True, slots=True)
class FleetConfig:
    """One configuration: devices per round, model, codec, ingest workers."""

    devices: int
    model: str
    compression: str
    workers: int = 0

    @property
    def label(self) -> str:
        """``1000 x mlp x dense`` (``... x 2 workers`` with sharded ingest)."""
        label = f"{self.devices} x {self.model} x {self.compression}"
        return f"{label} x {self.workers} workers" if self.workers else label


@dataclass(slots=True)
class FleetRow:
    """What one configuration measured (the last round's figures; ``rounds`` holds all)."""

    devices: int
    model: str
    dim: int
    compression: str
    status: str = "ok"
    workers: int = 0
    update_bytes: int = 0
    seal_s: float = 0.0
    raw_updates_per_s: float = 0.0
    ingest_updates_per_s: float = 0.0
    ratio: float = 0.0
    round_s: float = 0.0
    accepted: int = 0
    memory_per_device_bytes: float = 0.0
    phase_share: dict[str, float] = field(default_factory=dict)
    rounds: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ran(self) -> bool:
        """Whether the configuration was measured."""
        return self.status == "ok"


@dataclass(slots=True)
class FleetBenchReport:
    """Every configuration's row, and how the run was made."""

    rows: list[FleetRow]
    machine: dict[str, str]
    command: str
    rounds: int
    connections: int
    target: float = INGEST_TARGET

    def to_json(self) -> str:
        """The report as indented JSON."""
        return json.dumps(asdict(self), indent=2, sort_keys=True)


class _ModelWatcher:
    """Follows the coordinator's signed model topic; :meth:`wait_round` blocks for a round."""

    def __init__(self, broker: BrokerHandle, fleet: str, key: VerifyKey) -> None:
        self._fleet = fleet
        self._key = key
        self._latest: tuple[int, int, bool] | None = None
        self._changed = threading.Condition()
        self._reassembler = Reassembler(64 * 1024 * 1024)
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"watch-{fleet}")
        self._client.on_message = self._on_message
        self._client.on_connect = lambda c, *_a: c.subscribe(topics.model_topic(fleet), qos=1)
        self._client.connect(broker.host, broker.port, keepalive=60)
        self._client.loop_start()

    def _on_message(self, _client: Any, _userdata: Any, message: Any) -> None:
        try:
            payload = self._reassembler.feed("coordinator", bytes(message.payload))
            if payload is None:
                return
            model = open_global_model(
                payload, self._key, fleet=self._fleet, max_bytes=64 * 1024 * 1024
            )
        except ProtocolError:
            return
        with self._changed:
            self._latest = (model.round, model.version, model.final)
            self._changed.notify_all()

    def wait_round(self, round_number: int, timeout_s: float) -> int:
        """Wait for the model that opens ``round_number``; return its version."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                latest = self._latest
                if latest is not None and latest[0] == round_number and not latest[2]:
                    return latest[1]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    msg = f"the coordinator did not open round {round_number} in {timeout_s} s"
                    raise TimeoutError(msg)
                self._changed.wait(remaining)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


class _Child:
    """A measured process (:mod:`byzedge.bench_fleet_probe`) and its JSON-line events."""

    def __init__(self, *args: str) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "byzedge.bench_fleet_probe", *args],
            stdout=subprocess.PIPE,
            text=True,
        )
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()
        stdout = self._process.stdout
        assert stdout is not None  # noqa: S101 - PIPE was asked for
        self._reader = threading.Thread(target=self._read, args=(stdout,), daemon=True)
        self._reader.start()

    def _read(self, stdout: IO[str]) -> None:
        with stdout:
            for line in stdout:
                if line.startswith("{"):
                    self._events.put(json.loads(line))
        self._events.put({"event": "error", "error": "the measured process exited"})

    def expect(self, event: str, timeout_s: float) -> dict[str, Any]:
        """The next event, which must be ``event``."""
        try:
            message = self._events.get(timeout=timeout_s)
        except queue.Empty:
            msg = f"no {event!r} from the measured process within {timeout_s} s"
            raise TimeoutError(msg) from None
        if message.get("event") == "error":
            raise RuntimeError(str(message.get("error")))
        if message.get("event") != event:
            msg = f"expected {event!r}, got {message!r}"
            raise RuntimeError(msg)
        return message

    def terminate(self) -> None:
        """Stop a process that runs until told (an ingest worker): SIGTERM, then wait."""
        if self._process.poll() is None:
            self._process.terminate()
        self.close()

    def close(self, timeout_s: float = 60.0) -> None:
        """Wait for the process to end; kill it if it does not."""
        try:
            self._process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._reader.join(timeout_s)


def _raw_baseline(
    broker: BrokerHandle, publisher: Publisher, sealed: SealedRound, fleet: str
) -> tuple[float, PublishResult]:
    """Updates per second a plain subscriber receives for ``sealed``'s messages."""
    count = str(len(sealed.messages))
    sink = _Child("sink", broker.host, str(broker.port), topics.update_wildcard(fleet), count)
    try:
        sink.expect("ready", 60.0)
        published = publisher.publish(sealed.messages)
        done = sink.expect("done", _WAIT_S)
    finally:
        sink.close()
    if done["count"] < len(sealed.messages):
        msg = f"the plain subscriber got {done['count']} of {len(sealed.messages)} messages"
        raise RuntimeError(msg)
    return sealed.updates / max(done["last"] - published.started, 1e-9), published


def _coordinator_settings(
    workdir: Path,
    broker: BrokerHandle,
    config: FleetConfig,
    rounds: int,
    fleet: str,
    *,
    nats_servers: Sequence[str] = (),
) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "fleet": fleet,
        "mqtt": {"url": broker.url, "reconnect_min_s": 0.2, "reconnect_max_s": 5.0},
        "signing_key": str(workdir / "coordinator.key"),
        "devices_dir": str(workdir / "devices"),
        "state_dir": str(workdir / "state"),
        "model": config.model,
        "rounds": rounds,
        "round_timeout_s": _WAIT_S,
        "round_interval_s": 0.0,
        "validation": "none",
        "max_update_bytes": 64 * 1024 * 1024,
    }
    if config.workers:  # a leader: updates must fit one message (see the module docstring)
        settings["max_update_bytes"] = DEFAULT_MAX_MESSAGE_BYTES
        settings["cluster"] = {"workers": config.workers, "partial_flush_s": _PARTIAL_FLUSH_S}
        if nats_servers:  # the workers consume a JetStream stream; the broker speaks 3.1.1
            settings["cluster"] |= {"broker": "nats", "nats_servers": list(nats_servers)}
    if nats_servers:
        settings["mqtt"]["protocol"] = "3.1.1"
    return settings


def _start_workers(settings: Path, count: int) -> list[_Child]:
    """``count`` ingest-worker processes, each once it consumes the update stream."""
    workers = [_Child("worker", str(settings), str(n)) for n in range(1, count + 1)]
    for worker in workers:
        worker.expect("ready", 120.0)
    return workers


def _measure(
    broker: BrokerHandle,
    *,
    publisher: Publisher,
    devices: LoadDevices,
    config: FleetConfig,
    rounds: int,
    workdir: Path,
    progress: Callable[[str], None],
    nats_servers: Sequence[str] = (),
) -> FleetRow:
    # A fleet per configuration: the previous coordinator's persistent session (the
    # broker keeps queueing its fleet's updates for it) must not see this one's messages.
    fleet = workdir.name
    dim = get_model_spec(config.model).dim
    row = FleetRow(config.devices, config.model, dim, config.compression, workers=config.workers)
    rng = np.random.default_rng([config.devices, dim])
    bodies = encode_bodies(config.compression, dim, rng)
    progress("sealing")
    sealed = [
        seal_round(
            devices,
            fleet=fleet,
            round_number=r,
            model_version=r - 1,
            codec_name=config.compression,
            dim=dim,
            bodies=bodies,
            counter=r,
        )
        for r in range(1, rounds + 1)
    ]
    row.update_bytes = sealed[0].update_bytes // sealed[0].updates
    row.seal_s = sealed[0].seal_s
    if config.workers and len(sealed[0].messages) > sealed[0].updates:
        row.status = f"not run: {_bytes(row.update_bytes)} updates are chunked"
        return row
    progress("raw broker")
    raw_rate, _ = _raw_baseline(broker, publisher, sealed[0], fleet)
    coordinator_key = SigningKey.generate()
    coordinator_key.save(workdir / "coordinator.key")
    devices.enrol(workdir / "devices")
    settings = workdir / "coordinator.json"
    settings.write_text(
        json.dumps(
            _coordinator_settings(workdir, broker, config, rounds, fleet, nats_servers=nats_servers)
        ),
        encoding="utf-8",
    )
    workers = _start_workers(settings, config.workers)
    watcher = _ModelWatcher(broker, fleet, coordinator_key.verify_key)
    child = _Child("coordinator", str(settings))
    try:
        ready = child.expect("ready", 120.0)
        for r, batch in enumerate(sealed, start=1):
            progress(f"round {r}/{rounds}")
            version = watcher.wait_round(r, 120.0)
            if version != r - 1:  # every round aggregates, so round r is version r - 1
                msg = f"round {r} opened at model version {version}, sealed for {r - 1}"
                raise RuntimeError(msg)
            published = publisher.publish(batch.messages)
            report = child.expect("round", _WAIT_S)
            report["publish_started"] = published.started
            report["publish_acked"] = published.acked
            row.rounds.append(report)
        child.expect("done", 120.0)
    finally:
        watcher.close()
        child.close()
        for worker in workers:
            worker.terminate()
    last = row.rounds[-1]
    row.accepted = int(last["accepted"])
    elapsed = (last["last_accept"] or last["summary_at"]) - last["publish_started"]
    row.ingest_updates_per_s = row.accepted / max(elapsed, 1e-9)
    row.raw_updates_per_s = raw_rate
    row.ratio = row.ingest_updates_per_s / raw_rate if raw_rate > 0 else 0.0
    row.round_s = last["summary_at"] - last["publish_started"]
    peak = max(int(r["peak_rss"]) for r in row.rounds)
    row.memory_per_device_bytes = max(0, peak - int(ready["rss"])) / config.devices
    # Shares of the main thread's wall time over the round (receive runs beside it).
    window = float(last["window_s"])
    row.phase_share = {
        name: last["phases"][name] / window if window > 0 else 0.0 for name in PHASES
    }
    return row


def _cap(config: FleetConfig, max_round_bytes: int) -> str | None:
    rows_bytes = config.devices * get_model_spec(config.model).dim * 4
    # The round keeps every decoded row, and anomaly scoring stacks a second copy.
    if 2 * rows_bytes > max_round_bytes:
        gb = 2 * rows_bytes / 1e9
        return (
            f"not run: {gb:.1f} GB of decoded rows per round (cap {max_round_bytes / 1e9:.1f} GB)"
        )
    return None


def _stage_reporter(
    progress: Callable[[str, str], None] | None, label: str
) -> Callable[[str], None]:
    def report(stage: str) -> None:
        if progress is not None:
            progress(label, stage)

    return report


def run_fleet_bench(
    *,
    devices: Sequence[int],
    models: Sequence[str],
    compressions: Sequence[str],
    rounds: int = 2,
    connections: int = 4,
    max_round_bytes: int = 4 * 10**9,
    command: str = "",
    workdir: Path | None = None,
    progress: Callable[[str, str], None] | None = None,
    broker: BrokerHandle | None = None,
    workers: Sequence[int] = (0,),
    nats_servers: Sequence[str] = (),
) -> FleetBenchReport:
    """Measure every configuration; see the module docstring.

    Parameters
    ----------
    devices, models, compressions:
        The grid: devices per round, model registry names, codec registry names.
    rounds:
        Rounds per configuration (the report shows the last; the first warms up).
    connections:
        MQTT connections the load generator publishes through.
    max_round_bytes:
        Configurations whose decoded rows (twice ``n x d x 4`` bytes) exceed this are
        reported as not run.
    progress:
        Called as ``progress(configuration, stage)``.
    broker:
        A running broker; a private mosquitto by default.
    workers:
        Ingest workers per configuration: 0 is the single coordinator process.
    nats_servers:
        With ``broker`` a NATS cluster's MQTT listener: its nodes' ``nats://`` URLs; the
        workers then consume a JetStream stream (``[cluster] broker = "nats"``).
    """
    grid = [
        FleetConfig(n, m, c, k)
        for m in models
        for c in compressions
        for n in sorted(devices)
        for k in workers
    ]
    fleet = LoadDevices.generate(max(devices))
    rows: list[FleetRow] = []
    with tempfile.TemporaryDirectory(prefix="byzedge-bench-fleet-", dir=workdir) as tmp:
        root = Path(tmp)
        own_broker = broker is None
        handle = broker or start_mosquitto(extra_config=_BROKER_CONFIG, workdir=root / "broker")
        try:
            for index, config in enumerate(grid):
                report = _stage_reporter(progress, config.label)
                capped = _cap(config, max_round_bytes)
                if capped is not None:
                    dim = get_model_spec(config.model).dim
                    rows.append(
                        FleetRow(config.devices, config.model, dim, config.compression, capped)
                    )
                    report("skipped")
                    continue
                publisher = Publisher(
                    handle.host, handle.port, connections=connections, client_prefix=f"load{index}"
                )
                try:
                    rows.append(
                        _measure(
                            handle,
                            publisher=publisher,
                            devices=fleet.first(config.devices),
                            config=config,
                            rounds=rounds,
                            workdir=root / f"bench{index}",
                            progress=report,
                            nats_servers=nats_servers,
                        )
                    )
                finally:
                    publisher.close()
        finally:
            if own_broker:
                handle.stop()
    return FleetBenchReport(
        rows=rows,
        machine=machine_description(),
        command=command,
        rounds=rounds,
        connections=connections,
    )


def _si(value: float) -> str:
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{value:.0f}"


def _bytes(value: float) -> str:
    for unit, scale in (("MB", 1e6), ("kB", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{value:.0f} B"


def render_markdown(report: FleetBenchReport, before: FleetBenchReport | None = None) -> str:
    """The report as Markdown: the main table, the time shares, the target, the machine."""
    lines = [
        "# How far one coordinator goes (`byzedge bench fleet`)",
        "",
        f"Command: `{report.command}`",
        "",
        f"Each configuration ran {report.rounds} rounds; figures are the last round's. "
        f"The load generator published through {report.connections} MQTT connections "
        "(QoS 1) to a private mosquitto; the coordinator ran in a process of its own. "
        "*raw* is a plain subscriber receiving the same messages from the same broker in "
        "the same run; *ratio* is ingest / raw (target: at least "
        f"{report.target:.0%}).",
        "",
        "| devices | model (d) | codec | update | seal (s) | raw upd/s | ingest upd/s | "
        "ratio | round (s) | accepted | coordinator memory / device |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report.rows:
        codec = f"{row.compression}, {row.workers} workers" if row.workers else row.compression
        head = f"| {row.devices:,} | {row.model} ({row.dim:,}) | {codec} |"
        if not row.ran:
            lines.append(f"{head} {row.status} | | | | | | | |")
            continue
        lines.append(
            f"{head} {_bytes(row.update_bytes)} | {row.seal_s:.2f} | {_si(row.raw_updates_per_s)} "
            f"| {_si(row.ingest_updates_per_s)} | {row.ratio:.2f} | {row.round_s:.2f} "
            f"| {row.accepted:,}/{row.devices:,} | {_bytes(row.memory_per_device_bytes)} |"
        )
    lines += [
        "",
        "## Where the coordinator's time goes",
        "",
        "Share of the coordinator's main thread's wall time over the last round (from the "
        "previous round summary to this one); *receive* is the CPU time of its MQTT network "
        "thread, which runs beside it, over the same span. *idle* is time spent waiting on "
        "the inbox (for the load generator, or for the network thread).",
        "",
        "| devices | model | codec | " + " | ".join(PHASES) + " |",
        "|---:|---|---|" + "---:|" * len(PHASES),
    ]
    for row in report.rows:
        if row.ran:
            shares = " | ".join(f"{row.phase_share.get(p, 0.0):.0%}" for p in PHASES)
            lines.append(f"| {row.devices:,} | {row.model} | {row.compression} | {shares} |")
    ran = [row for row in report.rows if row.ran]
    met = [row for row in ran if row.ratio >= report.target]
    lines += ["", "## Target: ingest at least 50% of raw", ""]
    if ran:
        worst = min(ran, key=lambda r: r.ratio)
        lines.append(
            f"Met in {len(met)} of {len(ran)} configurations; lowest ratio {worst.ratio:.2f} "
            f"({worst.devices:,} x {worst.model} x {worst.compression}: "
            f"{_si(worst.ingest_updates_per_s)} vs {_si(worst.raw_updates_per_s)} updates/s)."
        )
    if before is not None:
        lines += _before_after(report, before)
    lines += _SCALED_OUT
    lines += ["", "## Machine", ""]
    lines += [f"- {key}: {value}" for key, value in report.machine.items()]
    return "\n".join(lines) + "\n"


# How the workers' table names the broker: (where devices publish, how workers share the
# stream, who shares the cores), for mosquitto and for a NATS cluster.
_BROKER_WORDS = {
    False: ("a private mosquitto", "an MQTT v5 shared subscription", "mosquitto"),
    True: (
        "node 0 of a private three-node NATS cluster (MQTT 3.1.1)",
        "a durable pull consumer of the fleet's R3 JetStream stream",
        "the three NATS nodes",
    ),
}

# Where the scaled-out runs are: their own commands write their own tables.
_SCALED_OUT = [
    "",
    "## Scaled out: ingest workers, a NATS cluster",
    "",
    "- 1, 2 and 4 ingest workers beside a leader on one mosquitto, against the single "
    "process in the same run: [scale_workers.md](scale_workers.md) "
    "(`python benchmarks/scale_workers.py`).",
    "- Updates through MQTT, a replicated JetStream stream and 1 or 2 pull workers on a "
    "three-node NATS cluster, against raw MQTT on the same cluster: "
    "[scale_nats.md](scale_nats.md) (`python benchmarks/scale_nats.py`); the whole "
    "coordinator with 0, 1, 2 and 4 workers on that cluster: "
    "[scale_workers_nats.md](scale_workers_nats.md) "
    "(`python benchmarks/scale_workers.py --nats`).",
    "- This machine has 2 cores shared by the load generator, the broker(s), the leader "
    "and the workers: a worker adds verification capacity only where a core is idle, so "
    "these curves are flat or bend down here; more cores were not available to measure.",
]


def render_workers_markdown(report: FleetBenchReport, *, nats: bool = False) -> str:
    """The sharded-ingest table: each configuration with 0 (one process), 1, 2, ... workers.

    ``nats``: the run was on a three-node NATS cluster (``scale_workers.py --nats``).

    *round upd/s* counts every row the same way, from the first publish to the round
    summary (the leader's summary, after the workers' partials), so rows with and
    without workers compare: the median over the rounds after the first (which warms up);
    *vs one process* divides it by the same configuration's figure without workers.
    """
    single = {
        (r.devices, r.model, r.compression): _round_rate(r)
        for r in report.rows
        if r.ran and not r.workers
    }
    lines = [
        "# Sharded ingest: one coordinator vs a leader and K ingest workers",
        "",
        f"Command: `{report.command}`",
        "",
        f"Each configuration ran {report.rounds} rounds (the first warms up). The load "
        f"generator published through {report.connections} MQTT connections (QoS 1) to "
        f"{_BROKER_WORDS[nats][0]}, all on this machine. *workers 0* is one coordinator "
        "process that verifies every update; *workers K* is the coordinator as leader plus K "
        f"`coordinator ingest-worker` processes sharing the updates through "
        f"{_BROKER_WORDS[nats][1]} (`partial_flush_s = {_PARTIAL_FLUSH_S}`). *round upd/s* = "
        "accepted updates / time from the first publish to the round summary, the median of "
        "the rounds after the first; *raw* is a plain subscriber receiving the same messages "
        "in the same run.",
        "",
        "| devices | model (d) | codec | workers | update | raw upd/s | round upd/s | "
        "vs one process | round (s) | accepted |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report.rows:
        head = (
            f"| {row.devices:,} | {row.model} ({row.dim:,}) | {row.compression} | {row.workers} |"
        )
        if not row.ran:
            lines.append(f"{head} {row.status} | | | | | |")
            continue
        rate = _round_rate(row)
        base = single.get((row.devices, row.model, row.compression))
        speedup = f"{rate / base:.2f}x" if base else "-"
        lines.append(
            f"{head} {_bytes(row.update_bytes)} | {_si(row.raw_updates_per_s)} | {_si(rate)} "
            f"| {speedup} | {row.accepted / rate:.2f} | {row.accepted:,}/{row.devices:,} |"
        )
    sharded = [r for r in report.rows if r.ran and r.workers]
    cores = report.machine.get("cpu count", "?")
    lines += [
        "",
        "## Reading",
        "",
        f"The load generator, {_BROKER_WORDS[nats][2]}, the leader and the K workers share "
        "this machine's "
        f"{cores} cores: a worker adds verification capacity (Ed25519, SHA-256, decoding, "
        "which the leader no longer does) only where a core is idle, and costs a process, "
        "a broker hop and a partial per flush where none is.",
        "",
    ]
    if sharded and single:
        speedups = [
            (_round_rate(r) / single[key], r)
            for r in sharded
            if (key := (r.devices, r.model, r.compression)) in single
        ]
        best, best_row = max(speedups, key=lambda item: item[0])
        worst, worst_row = min(speedups, key=lambda item: item[0])
        lines.append(
            f"Here the workers' rounds ran at {worst:.2f}x to {best:.2f}x the single "
            f"process's (best: {best_row.devices:,} x {best_row.compression} with "
            f"{best_row.workers} workers; worst: {worst_row.devices:,} x "
            f"{worst_row.compression} with {worst_row.workers}); every round accepted every "
            "update."
        )
    lines += ["", "## Machine", ""]
    lines += [f"- {key}: {value}" for key, value in report.machine.items()]
    return "\n".join(lines) + "\n"


def _round_rate(row: FleetRow) -> float:
    """Accepted updates per second, first publish to summary; median of rounds 2.. ."""
    rates = [
        float(r["accepted"]) / max(float(r["summary_at"]) - float(r["publish_started"]), 1e-9)
        for r in row.rounds
    ]
    return float(np.median(rates[1:] or rates))


def _before_after(report: FleetBenchReport, before: FleetBenchReport) -> list[str]:
    earlier = {(r.devices, r.model, r.compression): r for r in before.rows if r.ran}
    lines = [
        "",
        "## Before and after the bottleneck fix",
        "",
        "| devices | model | codec | ingest upd/s before | after | ratio before | after | "
        "round (s) before | after |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report.rows:
        old = earlier.get((row.devices, row.model, row.compression))
        if not row.ran or old is None:
            continue
        lines.append(
            f"| {row.devices:,} | {row.model} | {row.compression} "
            f"| {_si(old.ingest_updates_per_s)} | {_si(row.ingest_updates_per_s)} "
            f"| {old.ratio:.2f} | {row.ratio:.2f} | {old.round_s:.2f} | {row.round_s:.2f} |"
        )
    return lines


def load_report(path: Path) -> FleetBenchReport:
    """Read a report written with :meth:`FleetBenchReport.to_json`."""
    raw = json.loads(path.read_text(encoding="utf-8"))
    rows = [FleetRow(**row) for row in raw.pop("rows")]
    return FleetBenchReport(rows=rows, **raw)


def render_plot(report: FleetBenchReport, path: Path) -> None:
    """Ingest and raw throughput against devices, one line per model and codec (PNG)."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    series: dict[tuple[str, str], list[FleetRow]] = {}
    for row in report.rows:
        if row.ran:
            series.setdefault((row.model, row.compression), []).append(row)
    for (model, codec), rows in sorted(series.items()):
        xs = [r.devices for r in rows]
        line = axes[0].plot(
            xs, [r.ingest_updates_per_s for r in rows], "o-", label=f"{model} {codec}"
        )
        axes[0].plot(xs, [r.raw_updates_per_s for r in rows], "x--", color=line[0].get_color())
        axes[1].plot(xs, [r.ratio for r in rows], "o-", label=f"{model} {codec}")
    for axis in axes:
        axis.set_xscale("log")
        axis.set_xlabel("devices per round")
        axis.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("updates / s (solid: coordinator, dashed: raw broker)")
    axes[1].axhline(report.target, color="grey", linestyle=":")
    axes[1].set_ylabel("ingest / raw")
    axes[1].legend(fontsize=8)
    figure.suptitle("One coordinator on one machine")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_outputs(
    report: FleetBenchReport, out: Path, before: FleetBenchReport | None = None, stem: str = "scale"
) -> str:
    """Write ``{stem}.md``, ``.json`` and ``.png`` into ``out``; return the Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    markdown = render_markdown(report, before)
    (out / f"{stem}.md").write_text(markdown, encoding="utf-8")
    (out / f"{stem}.json").write_text(report.to_json() + "\n", encoding="utf-8")
    render_plot(report, out / f"{stem}.png")
    return markdown
