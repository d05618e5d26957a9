"""Prometheus metrics of one coordinator, in a registry of its own.

A :class:`CoordinatorMetrics` owns a ``CollectorRegistry`` (never prometheus_client's
global one), so tests and several coordinators in one process never clash, and serves it
over HTTP only when asked (``[metrics] enabled = true`` in ``coordinator.toml``; local
``127.0.0.1:9464`` by default). The coordinator's loop calls one small method per event;
each is cheap and thread-safe.

Metric names start with ``byzedge_`` and end with their unit (``_seconds``, ``_bytes``,
``_ratio``, ``_total`` for counters). Label values are bounded:

* ``reason`` (rejections): the ingest's rejection reasons, a fixed vocabulary;
* ``outcome`` (rounds): ``aggregated`` or ``skipped``; ``rule`` (fallbacks): a
  registry name;
* ``device`` (reputations): at most ``max_device_labels`` devices, those with the lowest
  reputation (the ones an operator looks at); ``byzedge_reputation_devices`` says how many
  devices there are in all.

deploy/grafana/byzedge-dashboard.json charts these metrics.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
    start_http_server,
)

__all__ = ["CoordinatorMetrics"]

# Rounds last from a fraction of a second (a simulated fleet) to minutes (a slow fleet's
# deadline); aggregation from microseconds (mean of few devices) to seconds (geometric
# median of a large model).
_ROUND_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
_AGGREGATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class CoordinatorMetrics:
    """The coordinator's metrics and, optionally, their HTTP endpoint.

    Parameters
    ----------
    fleet:
        The fleet name, exported as ``byzedge_coordinator_info{fleet=...}``.
    defense:
        The robust rule's registry name, exported in the same info metric.
    max_device_labels:
        Most devices given a ``byzedge_device_reputation`` series (lowest reputations
        first), bounding the label cardinality of a large fleet.
    """

    def __init__(self, fleet: str, *, defense: str = "", max_device_labels: int = 50) -> None:
        if max_device_labels < 0:
            msg = "max_device_labels must be >= 0"
            raise ValueError(msg)
        self.max_device_labels = max_device_labels
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self._lock = threading.Lock()
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        Info(
            "byzedge_coordinator", "The coordinator's fleet and robust rule.", registry=registry
        ).info({"fleet": fleet, "defense": defense})
        self._rounds = Counter(
            "byzedge_rounds",
            "Rounds completed, by outcome (aggregated, or skipped for too few updates).",
            ["outcome"],
            registry=registry,
        )
        self._round_duration = Histogram(
            "byzedge_round_duration_seconds",
            "Time from a round's model publication to its summary.",
            buckets=_ROUND_BUCKETS,
            registry=registry,
        )
        self._last_round = Gauge(
            "byzedge_last_round", "Number of the last completed round.", registry=registry
        )
        self._round_accepted = Gauge(
            "byzedge_round_accepted_updates",
            "Updates accepted in the last round.",
            registry=registry,
        )
        self._round_cohort = Gauge(
            "byzedge_round_cohort_devices",
            "Devices asked for an update in the last round.",
            registry=registry,
        )
        self._fallbacks = Counter(
            "byzedge_round_fallbacks",
            "Rounds aggregated with the fallback rule, by rule.",
            ["rule"],
            registry=registry,
        )
        self._accuracy = Gauge(
            "byzedge_validation_accuracy_ratio",
            "Validation accuracy of the global model after the last round that reported one.",
            registry=registry,
        )
        self._accepted = Counter(
            "byzedge_updates_accepted", "Updates that passed every check.", registry=registry
        )
        self._uplink_bytes = Counter(
            "byzedge_uplink_bytes",
            "Wire bytes of accepted updates (envelope included).",
            registry=registry,
        )
        self._rejected = Counter(
            "byzedge_updates_rejected", "Updates refused, by reason.", ["reason"], registry=registry
        )
        self._flagged = Counter(
            "byzedge_devices_flagged",
            "Updates flagged by anomaly scoring (one per device and round).",
            registry=registry,
        )
        self._reputation = Gauge(
            "byzedge_device_reputation",
            "Reputation of a device in [0, 1]; only the lowest max_device_labels devices.",
            ["device"],
            registry=registry,
        )
        self._reputation_devices = Gauge(
            "byzedge_reputation_devices",
            "Devices with a reputation (including those without a device series).",
            registry=registry,
        )
        self._aggregation = Histogram(
            "byzedge_aggregation_duration_seconds",
            "Time of one robust aggregation (scoring and the rule).",
            buckets=_AGGREGATION_BUCKETS,
            registry=registry,
        )
        self._dropped = Counter(
            "byzedge_dropped_messages",
            "Received messages dropped before ingest (inbox full, ...), by reason.",
            ["reason"],
            registry=registry,
        )

    # -- events (call from the coordinator's loop) -----------------------------------------

    def round_completed(
        self,
        *,
        round_number: int,
        duration_s: float,
        accepted: int,
        cohort_size: int,
        skipped: bool,
        fallback: str | None = None,
        validation_accuracy: float | None = None,
    ) -> None:
        """Record a finished round (once per round summary).

        ``fallback`` is the fallback rule's name when the round used it, else ``None``.
        """
        self._rounds.labels(outcome="skipped" if skipped else "aggregated").inc()
        self._round_duration.observe(max(0.0, duration_s))
        self._last_round.set(round_number)
        self._round_accepted.set(accepted)
        self._round_cohort.set(cohort_size)
        if fallback is not None:
            self._fallbacks.labels(rule=fallback).inc()
        if validation_accuracy is not None:
            self._accuracy.set(validation_accuracy)

    def update_accepted(self, wire_bytes: int) -> None:
        """Record an update that ingest accepted, of ``wire_bytes`` bytes on the wire."""
        self._accepted.inc()
        self._uplink_bytes.inc(max(0, wire_bytes))

    def update_rejected(self, reason: str) -> None:
        """Record an update that ingest refused, by its rejection reason (a fixed vocabulary)."""
        self._rejected.labels(reason=reason).inc()

    def device_flagged(self, device_id: str) -> None:
        """Record one flagged update (the device id is not a label: it is in the alert)."""
        del device_id  # kept in the signature for the call sites' readability
        self._flagged.inc()

    def set_reputations(self, reputations: Mapping[str, float]) -> None:
        """Replace the reputation series with ``reputations`` (after each round).

        Only the ``max_device_labels`` lowest reputations get a series (ties by device
        id); series of devices that left that set are removed.
        """
        lowest = sorted(reputations.items(), key=lambda item: (item[1], item[0]))
        with self._lock:
            self._reputation.clear()
            for device, value in lowest[: self.max_device_labels]:
                self._reputation.labels(device=device).set(value)
            self._reputation_devices.set(len(reputations))

    def aggregation_time(self, seconds: float) -> None:
        """Record how long one aggregation took (scoring and the robust rule)."""
        self._aggregation.observe(max(0.0, seconds))

    def message_dropped(self, reason: str = "inbox-full") -> None:
        """Record a received message dropped before ingest."""
        self._dropped.labels(reason=reason).inc()

    # -- exposition ---------------------------------------------------------------------

    def generate(self) -> bytes:
        """The registry in Prometheus' text format (what the endpoint serves)."""
        return generate_latest(self.registry)

    def serve(self, host: str = "127.0.0.1", port: int = 9464) -> int:
        """Serve ``/metrics`` on ``host:port`` from a daemon thread; return the bound port.

        ``port = 0`` picks a free port (tests).

        Raises
        ------
        OSError
            When the address cannot be bound (port in use, ...).
        RuntimeError
            When already serving.
        """
        if self._server is not None:
            msg = "metrics endpoint already running"
            raise RuntimeError(msg)
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        return int(self._server.server_port)

    def close(self) -> None:
        """Stop the endpoint, if running; safe to call twice."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5.0)
