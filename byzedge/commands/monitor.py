"""``byzedge monitor``: watch a fleet live (rounds, accuracy, devices, alerts).

The monitor only subscribes, to the round summaries, the device statuses and the alerts
of one fleet (the broker ACL's ``monitor`` user may read ``byzedge/#`` and write
nothing); it never subscribes to models or updates, which are large. Output modes:

* default: a live ``rich`` screen, redrawn as messages arrive (Ctrl-C quits);
* ``--once``: wait for a round summary (at most ``--timeout`` seconds, default 10), print
  one frame as plain text and exit;
* ``--json``: print the folded fleet state as one JSON line each time it changes
  (with ``--once``: one line, then exit).

``--alert-suspicious-devices`` highlights alerts, rings the terminal bell and writes each
alert as one JSON line on stderr, so ``2> alerts.jsonl`` or ``2>&1 >/dev/null | ...``
collects them.

Exit codes: 0 success; 1 no round summary (``--once``) or broker unreachable within
``--timeout``; 2 usage or configuration error; 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from byzedge.commands._common import fail

if TYPE_CHECKING:
    from byzedge.daemon.mqtt import MqttClient
    from byzedge.monitor.config import MonitorConfig
    from byzedge.monitor.view import AlertView, FleetView

__all__ = ["MonitorOptions", "build_parser", "main", "run_monitor"]

_ONCE_TIMEOUT_S = 10.0
_SETTLE_QUIET_S = 0.3  # --once: after the first summary, wait for the retained rest ...
_SETTLE_MAX_S = 1.5  # ... but no longer than this
_REDRAW_S = 0.5  # the live screen's ages tick at this period even without messages


def build_parser() -> argparse.ArgumentParser:
    """The monitor's options."""
    parser = argparse.ArgumentParser(
        prog="byzedge monitor",
        description="Watch a fleet live: rounds, accuracy, devices and alerts (read-only).",
    )
    parser.add_argument("--config", type=Path, required=True, help="monitor.toml")
    parser.add_argument(
        "--alert-suspicious-devices",
        action="store_true",
        help="highlight alerts, ring the bell, write each alert as a JSON line on stderr",
    )
    parser.add_argument(
        "--once",
        action="store_true",
        help="print one frame once a round summary arrived, then exit (1 if none did)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the fleet state as JSON lines as it changes"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="S",
        help=f"--once: wait at most S seconds (default {_ONCE_TIMEOUT_S:g}); else stop after S",
    )
    parser.add_argument("--history", type=int, default=30, help="rounds kept (default 30)")
    parser.add_argument("--alerts", type=int, default=10, help="alerts kept (default 10)")
    parser.add_argument("--width", type=int, help="columns of --once output (default: terminal)")
    parser.add_argument("--log-level", default="WARNING", help="DEBUG, INFO, WARNING...")
    return parser


@dataclass(frozen=True, slots=True)
class MonitorOptions:
    """How :func:`run_monitor` shows the fleet (the command-line flags)."""

    once: bool = False
    json: bool = False
    alert_suspicious_devices: bool = False
    timeout_s: float | None = None
    width: int | None = None


def main(argv: Sequence[str]) -> int:
    """Entry point of ``byzedge monitor``."""
    args = build_parser().parse_args(argv)
    from byzedge.daemon.config import ConfigError  # noqa: PLC0415
    from byzedge.daemon.logging import configure_logging  # noqa: PLC0415
    from byzedge.monitor.config import load_monitor_config  # noqa: PLC0415
    from byzedge.monitor.view import FleetView  # noqa: PLC0415
    from byzedge.protocol.errors import ProtocolError  # noqa: PLC0415
    from byzedge.protocol.signing import VerifyKey  # noqa: PLC0415

    if args.history < 1 or args.alerts < 1:
        return fail("monitor", "--history and --alerts must be at least 1")
    if args.timeout is not None and args.timeout <= 0:
        return fail("monitor", "--timeout must be positive")
    try:
        config = load_monitor_config(args.config)
    except ConfigError as exc:
        return fail("monitor", str(exc))
    key = None
    if config.coordinator_key is not None:
        try:
            key = VerifyKey.load(config.coordinator_key)
        except (OSError, ProtocolError) as exc:
            return fail("monitor", f"cannot load coordinator_key {config.coordinator_key}: {exc}")
    configure_logging(args.log_level)
    view = FleetView(
        config.fleet, coordinator_key=key, history=args.history, max_alerts=args.alerts
    )
    options = MonitorOptions(
        once=args.once,
        json=args.json,
        alert_suspicious_devices=args.alert_suspicious_devices,
        timeout_s=args.timeout,
        width=args.width,
    )
    return run_monitor(config, view, options)


def run_monitor(
    config: MonitorConfig,
    view: FleetView,
    options: MonitorOptions,
    *,
    stop: threading.Event | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Subscribe to ``config``'s fleet and show ``view`` as ``options`` say; return the code.

    ``stop`` ends the live and JSON modes (SIGTERM and SIGINT set it when this runs in
    the main thread); ``out`` and ``err`` default to ``sys.stdout`` and ``sys.stderr``.
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    stop = threading.Event() if stop is None else stop
    from byzedge.daemon.mqtt import MqttError  # noqa: PLC0415

    try:
        session = _Session(config, view, options, stop=stop, out=out, err=err)
    except (MqttError, OSError, ValueError) as exc:  # unreadable TLS files or password, ...
        return fail("monitor", f"cannot set up the MQTT client: {exc}")
    session.client.start(wait_s=None)
    try:
        with _stop_on_signals(stop):
            if options.once:
                return session.once()
            if options.json:
                return session.json_lines()
            return session.live()
    finally:
        session.client.stop()  # the monitor publishes nothing: no flush to wait for


# -- the MQTT side ----------------------------------------------------------------------


@dataclass
class _Batch:
    """What one pump of the inbox changed."""

    changed: bool = False
    alerts: list[AlertView] = field(default_factory=list)


class _Inbox:
    """Receives messages on the network thread; only enqueues there."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[str, bytes, float]] = queue.SimpleQueue()

    def __call__(self, topic: str, payload: bytes) -> None:
        self._queue.put((topic, payload, time.time()))

    def pump(self, view: FleetView, wait_s: float) -> _Batch:
        """Apply what arrived (waiting up to ``wait_s`` for the first message)."""
        batch = _Batch()
        try:
            item = self._queue.get(timeout=wait_s) if wait_s > 0 else self._queue.get_nowait()
        except queue.Empty:
            return batch
        while True:
            change = view.apply(*item)
            if change is not None:
                batch.changed = True
                if change == "alert":
                    batch.alerts.append(view.alerts[-1])
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return batch


def _client(config: MonitorConfig, inbox: _Inbox) -> MqttClient:
    from byzedge.daemon.mqtt import MqttClient  # noqa: PLC0415
    from byzedge.protocol import topics  # noqa: PLC0415

    fleet = config.fleet
    return MqttClient(
        config.mqtt,
        f"{fleet}-monitor-{os.getpid()}",
        on_message=inbox,
        subscriptions=[
            (topics.coordinator_status_topic(fleet), 1),
            (topics.device_status_wildcard(fleet), 1),
            (topics.alerts_topic(fleet), 1),
        ],
    )


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM/SIGINT set ``stop`` (main thread only; elsewhere nothing is installed)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    from byzedge.daemon.signals import install_signal_handlers  # noqa: PLC0415

    with install_signal_handlers(on_signal=lambda _signum: stop.set()):
        yield


# -- output modes -----------------------------------------------------------------------


class _Session:
    """One run of the monitor: the view, its inbox and client, and where output goes."""

    def __init__(
        self,
        config: MonitorConfig,
        view: FleetView,
        options: MonitorOptions,
        *,
        stop: threading.Event,
        out: TextIO,
        err: TextIO,
    ) -> None:
        self.config = config
        self.view = view
        self.options = options
        self.stop = stop
        self.out = out
        self.err = err
        self.inbox = _Inbox()
        self.client = _client(config, self.inbox)

    def _end(self) -> float | None:
        timeout_s = self.options.timeout_s
        return None if timeout_s is None else time.monotonic() + timeout_s

    def _running(self, end: float | None) -> bool:
        return not self.stop.is_set() and (end is None or time.monotonic() < end)

    def _report_alerts(self, alerts: list[AlertView]) -> None:
        if not self.options.alert_suspicious_devices or not alerts:
            return
        for alert in alerts:
            self.err.write(self._alert_line(alert) + "\n")
        self.err.flush()

    def _alert_line(self, alert: AlertView) -> str:
        return json.dumps({"fleet": self.view.fleet, **asdict(alert)}, sort_keys=True)

    def _pump(self, wait_s: float) -> _Batch:
        batch = self.inbox.pump(self.view, wait_s)
        self._report_alerts(batch.alerts)
        return batch

    def once(self) -> int:
        """``--once``: one frame (or JSON line) after the first round summary."""
        view, options = self.view, self.options
        timeout_s = _ONCE_TIMEOUT_S if options.timeout_s is None else options.timeout_s
        deadline = time.monotonic() + timeout_s
        ever_connected = False
        while view.latest_round is None and time.monotonic() < deadline:
            if self.stop.is_set():
                return 130
            ever_connected = ever_connected or self.client.connected.is_set()
            self._pump(0.1)
        if view.latest_round is not None:
            # Retained statuses arrive right after the summary: let them land.
            settle_end = time.monotonic() + _SETTLE_MAX_S
            quiet_since = time.monotonic()
            while (
                time.monotonic() < settle_end and time.monotonic() - quiet_since < _SETTLE_QUIET_S
            ):
                if self._pump(0.05).changed:
                    quiet_since = time.monotonic()
        if options.json:
            self.out.write(json.dumps(view.to_dict(), sort_keys=True) + "\n")
        else:
            from byzedge.monitor.render import render_text  # noqa: PLC0415

            self.out.write(
                render_text(
                    view,
                    now=time.time(),
                    width=self._width(),
                    highlight_alerts=options.alert_suspicious_devices,
                )
            )
        self.out.flush()
        if view.latest_round is not None:
            return 0
        if not (ever_connected or self.client.connected.is_set()):
            url = self.config.mqtt.url
            return fail("monitor", f"no connection to {url} within {timeout_s:g} s", 1)
        return fail("monitor", f"no round summary of fleet {view.fleet} within {timeout_s:g} s", 1)

    def json_lines(self) -> int:
        """``--json``: the state as one JSON line per change, until stopped or timed out."""
        end = self._end()
        while self._running(end):
            if self._pump(0.25).changed:
                self.out.write(json.dumps(self.view.to_dict(), sort_keys=True) + "\n")
                self.out.flush()
        return 0

    def live(self) -> int:
        """The live screen, until stopped or timed out."""
        from rich.console import Console, RenderableType  # noqa: PLC0415
        from rich.live import Live  # noqa: PLC0415
        from rich.text import Text  # noqa: PLC0415

        from byzedge.monitor.render import render  # noqa: PLC0415

        console = Console(file=self.out)
        # Alerts go to stderr; when stderr is the live screen's terminal too, they are
        # printed above the screen through rich, which keeps the screen intact.
        shared_terminal = console.is_terminal and self.err.isatty()
        alerting = self.options.alert_suspicious_devices

        def frame() -> RenderableType:
            connected = self.client.connected.is_set()
            return render(
                self.view,
                now=time.time(),
                highlight_alerts=alerting,
                broker="connected" if connected else f"connecting to {self.config.mqtt.url}",
            )

        end = self._end()
        with Live(
            frame(),
            console=console,
            auto_refresh=False,
            redirect_stdout=False,
            redirect_stderr=False,
        ) as live:
            while self._running(end):
                batch = self.inbox.pump(self.view, _REDRAW_S)
                if batch.alerts and alerting:
                    if shared_terminal:
                        for alert in batch.alerts:
                            live.console.print(Text(self._alert_line(alert)), soft_wrap=True)
                    else:
                        self._report_alerts(batch.alerts)
                    if console.is_terminal:
                        console.bell()
                live.update(frame(), refresh=True)
        return 0

    def _width(self) -> int:
        if self.options.width is not None:
            return max(40, self.options.width)
        return shutil.get_terminal_size().columns if self.out.isatty() else 120
