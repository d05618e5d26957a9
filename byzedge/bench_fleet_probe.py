"""The processes ``byzedge bench fleet`` measures: an instrumented coordinator, a plain sink.

Both run as processes of their own (``python -m byzedge.bench_fleet_probe coordinator
SETTINGS.json`` or ``... sink HOST PORT FILTER COUNT``), as they would in a deployment, so
the load generator's threads do not share their interpreter lock. Each reports events as
JSON lines on its standard output (logs go to standard error).

:func:`coordinator_process` runs the real :class:`~byzedge.coordinator.service.Coordinator`
over real MQTT, unchanged, with cheap timers wrapped around callables on its hot path.
All the work happens on the coordinator's main thread, so its wall time between two round
summaries is split, without overlap, into these phases (``receive`` excepted)::

    phase         what is timed
    receive       CPU time of every other thread: the MQTT network thread that reads the
                  socket, acknowledges and queues each message (runs alongside the rest)
    parse         ``open_envelope`` (msgpack, header checks)
    verify        ``SealedEnvelope.verify`` (SHA-256 of the body and the Ed25519 check)
    decode        every registered codec's ``decode``
    ingest-other  the rest of ``Ingest.submit``: topic, chunk reassembly, replay, window
    journal       ``RoundJournal.append`` (each accepted update written and fsynced)
    score         ``AnomalyDetector.score``
    aggregate     the rest of the server step: stacking, reputation, the rule, model step
    idle          waiting on the inbox for the next message
    other         the rest: hand-over, bookkeeping, state file, audit log, summary

Wall time, not CPU time, so that waiting on the disk (fsync) shows where it happens; on a
busy machine a phase also absorbs the time other processes took the core from it.

:func:`sink_process` is the "no coordinator" baseline: one paho subscriber, at the same QoS,
that only counts what it receives.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from byzedge.coordinator.config import CoordinatorConfig
    from byzedge.coordinator.devices import DeviceRegistry
    from byzedge.coordinator.service import Coordinator, RoundSummary

__all__ = ["PHASES", "coordinator_process", "main", "process_rss_bytes", "sink_process"]

PHASES = (
    "receive",
    "parse",
    "verify",
    "decode",
    "ingest-other",
    "journal",
    "score",
    "aggregate",
    "idle",
    "other",
)
"""The phases of the coordinator's CPU time, in the order the report lists them."""

_TICKS = os.sysconf("SC_CLK_TCK")


def process_rss_bytes() -> int:
    """Resident set size of this process now (Linux ``/proc``)."""
    with open("/proc/self/statm", encoding="ascii") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _thread_cpu_s(native_id: int) -> float:
    try:
        with open(f"/proc/self/task/{native_id}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:  # the thread ended
        return 0.0
    # After the command name: state is field 3, utime 14, stime 15 (1-based, proc(5)).
    return (int(fields[11]) + int(fields[12])) / _TICKS


class _PhaseClock:
    """Accumulates main-thread wall seconds per phase; nested phases are subtracted later."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = dict.fromkeys(PHASES, 0.0)
        self._main = threading.main_thread().ident

    def wrap(self, owner: Any, name: str, phase: str) -> None:
        """Replace ``owner.name`` with a timed version charging ``phase``."""
        original: Callable[..., Any] = getattr(owner, name)
        totals = self.totals
        clock = time.perf_counter
        main = self._main

        def timed(*args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() != main:
                return original(*args, **kwargs)
            started = clock()
            try:
                return original(*args, **kwargs)
            finally:
                totals[phase] += clock() - started

        setattr(owner, name, timed)


def _instrument(marks: dict[str, float]) -> _PhaseClock:
    """Wrap the coordinator's hot path; ``marks`` gets the first and last submit times."""
    from byzedge.coordinator import ingest, service  # noqa: PLC0415
    from byzedge.coordinator.anomaly import AnomalyDetector  # noqa: PLC0415
    from byzedge.coordinator.journal import RoundJournal  # noqa: PLC0415
    from byzedge.protocol.codecs import CODECS  # noqa: PLC0415
    from byzedge.protocol.envelope import SealedEnvelope  # noqa: PLC0415

    clock = _PhaseClock()
    clock.wrap(ingest, "open_envelope", "parse")
    clock.wrap(SealedEnvelope, "verify", "verify")
    for codec_type in CODECS.values():
        clock.wrap(codec_type, "decode", "decode")
    clock.wrap(RoundJournal, "append", "journal")
    clock.wrap(AnomalyDetector, "score", "score")
    # Wrapped as "aggregate": the score inside it is charged to "score" and subtracted below.
    clock.wrap(service, "server_step", "aggregate")
    clock.wrap(ingest.Ingest, "submit", "ingest-other")
    submit = ingest.Ingest.submit

    def stamped(self: Any, *args: Any, **kwargs: Any) -> Any:
        now = time.monotonic()
        marks.setdefault("first_receive", now)
        outcome = submit(self, *args, **kwargs)
        if isinstance(outcome, ingest.Accepted):
            marks["last_accept"] = time.monotonic()
        return outcome

    ingest.Ingest.submit = stamped  # type: ignore[method-assign]
    return clock


class _Events:
    """JSON lines on standard output, one per event (the parent reads them)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def put(self, event: dict[str, Any]) -> None:
        line = json.dumps(event)
        with self._lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()


def coordinator_process(settings: dict[str, Any]) -> None:
    """Run an instrumented coordinator for ``settings["rounds"]`` rounds.

    Reports ``{"event": "ready", "rss": ...}`` once built and one ``{"event": "round", ...}``
    per round, then ``{"event": "done"}`` (or ``{"event": "error"}``).
    """
    results = _Events()
    try:
        _run_coordinator(settings, results)
    except Exception as exc:  # reported to the parent, which raises it
        results.put({"event": "error", "error": f"{type(exc).__name__}: {exc}"})


def _run_coordinator(settings: dict[str, Any], results: _Events) -> None:
    from byzedge.coordinator.config import CoordinatorConfig  # noqa: PLC0415
    from byzedge.coordinator.devices import DeviceRegistry  # noqa: PLC0415

    marks: dict[str, float] = {}
    clock = _instrument(marks)
    config = CoordinatorConfig.model_validate(settings)
    rss_before = process_rss_bytes()
    # Enrolment is read from devices_dir, as `byzedge coordinator run` does: its memory
    # counts against the devices.
    devices = DeviceRegistry.load(Path(settings["devices_dir"]))
    main_id = threading.main_thread().native_id
    last: dict[str, float] = {"main": 0.0, "process": 0.0, **clock.totals}

    def on_round(summary: RoundSummary) -> None:
        now = time.perf_counter()
        process_cpu = time.process_time()
        main_cpu = _thread_cpu_s(main_id) if main_id is not None else time.thread_time()
        phases = {name: clock.totals[name] - last[name] for name in PHASES}
        phases["aggregate"] -= phases["score"]
        phases["ingest-other"] -= phases["parse"] + phases["verify"] + phases["decode"]
        process_delta = process_cpu - last["process"]
        phases["receive"] = max(0.0, process_delta - (main_cpu - last["main"]))
        window = now - last["wall"]
        timed = sum(phases[name] for name in PHASES if name not in {"receive", "other"})
        phases["other"] = max(0.0, window - timed)
        last.update(clock.totals, main=main_cpu, process=process_cpu, wall=now)
        results.put(
            {
                "event": "round",
                "round": summary.round,
                "accepted": summary.accepted,
                "rejected": dict(summary.rejected),
                "skipped": summary.skipped,
                "closed_by": summary.closed_by,
                "duration_s": summary.duration_s,
                "first_receive": marks.pop("first_receive", None),
                "last_accept": marks.pop("last_accept", None),
                "summary_at": time.monotonic(),
                "phases": phases,
                "window_s": window,
                "cpu_s": process_delta,
                "rss": process_rss_bytes(),
                "peak_rss": _peak_rss_bytes(),
                "dropped_messages": coordinator.dropped_messages,
            }
        )

    coordinator = _coordinator(config, devices, on_round)
    # The inbox is the one private attribute touched: its waits are the main thread's idle time.
    clock.wrap(coordinator._updates, "get", "idle")
    last["main"] = _thread_cpu_s(main_id) if main_id is not None else 0.0
    last["process"] = time.process_time()
    last["wall"] = time.perf_counter()
    results.put({"event": "ready", "rss": rss_before})
    coordinator.run()
    results.put({"event": "done"})


def _coordinator(
    config: CoordinatorConfig, devices: DeviceRegistry, on_round: Callable[[RoundSummary], None]
) -> Coordinator:
    """The coordinator, or with ``[cluster] workers`` the leader (holding the broker's lease)."""
    from byzedge.coordinator.cluster.leader import ClusterLeader  # noqa: PLC0415
    from byzedge.coordinator.cluster.lease import build_lease  # noqa: PLC0415
    from byzedge.coordinator.service import Coordinator  # noqa: PLC0415
    from byzedge.protocol.signing import SigningKey  # noqa: PLC0415

    key = SigningKey.load(config.signing_key)
    if config.cluster.workers == 0:
        return Coordinator(config, signing_key=key, devices=devices, on_round=on_round)
    _register_broker(config)
    lease = build_lease(config)
    epoch = lease.acquire()
    assert epoch is not None  # noqa: S101 - acquire() without a timeout blocks until held
    return ClusterLeader(
        config, signing_key=key, devices=devices, lease=lease, epoch=epoch, on_round=on_round
    )


def _register_broker(config: CoordinatorConfig) -> None:
    """Load the NATS source, lease and state store when the config names that broker."""
    if config.cluster.broker == "nats":
        from byzedge.coordinator.cluster.nats_factory import register_nats  # noqa: PLC0415

        register_nats()


def worker_process(settings: dict[str, Any], number: int) -> None:
    """Run ingest worker ``number`` of the coordinator ``settings`` until SIGTERM.

    Reports ``{"event": "ready"}`` once its shared subscription is in place, then
    ``{"event": "done"}`` (or ``{"event": "error"}``).
    """
    from byzedge.coordinator.cluster.worker import IngestWorker, build_source  # noqa: PLC0415
    from byzedge.coordinator.config import CoordinatorConfig  # noqa: PLC0415
    from byzedge.coordinator.devices import DeviceRegistry  # noqa: PLC0415
    from byzedge.daemon.signals import install_signal_handlers  # noqa: PLC0415
    from byzedge.protocol.signing import SigningKey  # noqa: PLC0415

    results = _Events()
    try:
        config = CoordinatorConfig.model_validate(settings)
        _register_broker(config)
        source = build_source(config, config.mqtt, number)
        worker = IngestWorker(
            config,
            number,
            coordinator_key=SigningKey.load(config.signing_key).verify_key,
            devices=DeviceRegistry.load(Path(settings["devices_dir"])),
            source=source,
        )
        if not source.wait_ready(60.0):
            raise TimeoutError("the worker's shared subscription did not come up in 60 s")
        results.put({"event": "ready", "rss": process_rss_bytes()})
        with install_signal_handlers() as signals:
            worker.run(signals.stop)
        results.put({"event": "done"})
    except Exception as exc:  # reported to the parent, which raises it
        results.put({"event": "error", "error": f"{type(exc).__name__}: {exc}"})


def sink_process(host: str, port: int, topic_filter: str, expected: int) -> None:
    """Subscribe to ``topic_filter`` at QoS 1 and count ``expected`` messages.

    Reports ``{"event": "ready"}`` once subscribed, then ``{"event": "done", "count", "bytes",
    "first", "last"}`` (monotonic times of the first and last message).
    """
    import paho.mqtt.client as paho  # noqa: PLC0415
    from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415

    results = _Events()
    state = {"count": 0, "bytes": 0, "first": 0.0, "last": 0.0}
    done = threading.Event()
    subscribed = threading.Event()

    def on_message(_client: Any, _userdata: Any, message: Any) -> None:
        now = time.monotonic()
        if state["count"] == 0:
            state["first"] = now
        state["count"] += 1
        state["bytes"] += len(message.payload)
        state["last"] = now
        if state["count"] >= expected:
            done.set()

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"sink-{os.getpid()}")
    client.on_message = on_message
    client.on_subscribe = lambda *_args: subscribed.set()
    client.on_connect = lambda c, *_args: c.subscribe(topic_filter, qos=1)
    client.connect(host, port, keepalive=60)
    client.loop_start()
    if not subscribed.wait(15.0):
        results.put({"event": "error", "error": "sink did not subscribe within 15 s"})
        return
    results.put({"event": "ready"})
    done.wait(600.0)
    client.disconnect()
    client.loop_stop()
    results.put({"event": "done", **state})


def main(argv: list[str]) -> int:
    """``coordinator SETTINGS.json``, ``worker SETTINGS.json N`` or ``sink HOST PORT FILTER N``."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if len(argv) == 2 and argv[0] == "coordinator":
        coordinator_process(json.loads(Path(argv[1]).read_text(encoding="utf-8")))
        return 0
    if len(argv) == 5 and argv[0] == "sink":
        sink_process(argv[1], int(argv[2]), argv[3], int(argv[4]))
        return 0
    if len(argv) == 3 and argv[0] == "worker":
        worker_process(json.loads(Path(argv[1]).read_text(encoding="utf-8")), int(argv[2]))
        return 0
    usage = "coordinator SETTINGS.json | worker SETTINGS.json N | sink HOST PORT FILTER COUNT"
    print(f"usage: {usage}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
