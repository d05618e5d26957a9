"""Draw a :class:`~byzedge.monitor.view.FleetView` with ``rich``.

:func:`render` builds one frame (header, rounds, accuracy sparkline, devices, alerts) for
``rich.live.Live``; :func:`render_text` prints the same frame as plain text, without
colours, for ``byzedge monitor --once``, tests and the README. Every string from the wire
goes into a ``rich.text.Text``, so markup in a device's reason is shown, never obeyed.
"""

from __future__ import annotations

import io

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from byzedge.monitor.view import DeviceView, FleetView, RoundView

__all__ = ["format_age", "render", "render_text", "sparkline"]

_BARS = "▁▂▃▄▅▆▇█"
_STATE_STYLES = {
    "online": "green",
    "training": "cyan",
    "busy": "yellow",
    "offline": "red",
}
_AUDIT_STYLES = {"verified": "green", "unverified": "bold red", "unchecked": "yellow"}
_LOW_REPUTATION = 0.5  # below: shown red; below _FAIR_REPUTATION: yellow
_FAIR_REPUTATION = 0.8


def sparkline(values: list[float]) -> str:
    """One block character per value, scaled between the values' minimum and maximum."""
    if not values:
        return ""
    low, high = min(values), max(values)
    if high - low < 1e-12:
        return _BARS[-1] * len(values) if high > 0 else _BARS[0] * len(values)
    top = len(_BARS) - 1
    return "".join(_BARS[round((v - low) / (high - low) * top)] for v in values)


def format_age(seconds: float | None) -> str:
    """``42s``, ``5m``, ``3h``, ``2d``; ``-`` when unknown (a clock ahead counts as 0s)."""
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def render(
    view: FleetView,
    *,
    now: float,
    highlight_alerts: bool = False,
    max_rounds: int = 5,
    max_devices: int = 40,
    broker: str | None = None,
) -> RenderableType:
    """One frame of the monitor, as of wall-clock time ``now``.

    ``broker`` is the connection state shown in the header (the live screen's).
    """
    parts: list[RenderableType] = [_header(view, now, broker)]
    if view.rounds:
        parts.append(_rounds(view, max_rounds))
        parts.append(_accuracy(view))
    else:
        parts.append(Text("waiting for a round summary...", style="dim"))
    parts.append(_devices(view, now, max_devices))
    parts.append(_alerts(view, now, highlight=highlight_alerts))
    return Group(*parts)


def render_text(
    view: FleetView, *, now: float, width: int = 120, highlight_alerts: bool = False
) -> str:
    """The frame :func:`render` draws, as plain text ``width`` columns wide."""
    buffer = io.StringIO()
    console = Console(
        file=buffer,
        width=width,
        color_system=None,
        force_terminal=False,
        force_jupyter=False,
        highlight=False,
        emoji=False,
    )
    console.print(render(view, now=now, highlight_alerts=highlight_alerts))
    return "".join(line.rstrip() + "\n" for line in buffer.getvalue().splitlines())


def _header(view: FleetView, now: float, broker: str | None) -> Text:
    coordinator_style = _STATE_STYLES.get(view.coordinator, "dim")
    head = view.audit_head
    header = Text.assemble(
        ("byzedge monitor", "bold"),
        f"  fleet {view.fleet}  coordinator: ",
        (view.coordinator, coordinator_style),
        "  audit head: ",
        (head.status, _AUDIT_STYLES.get(head.status, "dim")),
    )
    if head.seq is not None:
        header.append(f" (seq {head.seq})")
    latest = view.latest_round
    if latest is not None:
        header.append(f"  last summary {format_age(now - latest.received)} ago")
    if broker is not None:
        header.append(f"  broker: {broker}", style="dim")
    return header


def _rounds(view: FleetView, limit: int) -> Table:
    table = Table(title="Rounds", title_justify="left", expand=False)
    shown = list(view.rounds)[-limit:][::-1]
    # The certified bound's column only for coordinators that run certified_robustness.
    certified = any(summary.certificate is not None for summary in shown)
    names = ["round", "accepted/cohort", "rejected", "duration", "fallback", "clip", "acc."]
    for name in names + (["certified bound"] if certified else []):
        table.add_column(name, justify="left" if name in {"rejected", "fallback"} else "right")
    for summary in shown:
        extra = [_certified(summary)] if certified else []
        table.add_row(
            str(summary.round),
            _accepted(summary),
            Text(_rejected(summary.rejected), style="red" if summary.rejected else ""),
            "-" if summary.duration_s is None else f"{summary.duration_s:.1f}s",
            Text(summary.fallback or "-", style="yellow" if summary.fallback else ""),
            "-" if summary.clip_threshold is None else f"{summary.clip_threshold:.3g}",
            _number(summary.validation_accuracy, ".3f"),
            *extra,
        )
    return table


def _certified(summary: RoundView) -> Text:
    """``0.0123 (box, f=2)``; ``none`` when the round has no finite bound."""
    certificate = summary.certificate
    if certificate is None:
        return Text("-")
    if certificate.bound is None:
        return Text("none", style="yellow")
    f = "?" if certificate.f is None else str(certificate.f)
    return Text(f"{certificate.bound:.3g} ({certificate.basis or '?'}, f={f})")


def _accepted(summary: RoundView) -> Text:
    accepted = "?" if summary.accepted is None else str(summary.accepted)
    cohort = "?" if summary.cohort_size is None else str(summary.cohort_size)
    text = Text(f"{accepted}/{cohort}")
    if summary.skipped:
        text.append(" skipped", style="yellow")
    return text


def _rejected(counts: dict[str, int]) -> str:
    return ", ".join(f"{reason} {count}" for reason, count in sorted(counts.items())) or "-"


def _accuracy(view: FleetView) -> Text:
    values = view.accuracy
    if not values:
        return Text("accuracy: none reported", style="dim")
    return Text.assemble(
        "accuracy ",
        (sparkline(values), "cyan"),
        f" {values[-1]:.3f}  (last {len(values)} rounds, min {min(values):.3f}, "
        f"max {max(values):.3f})",
    )


def _devices(view: FleetView, now: float, limit: int) -> Table:
    table = Table(title=f"Devices ({len(view.devices)})", title_justify="left")
    columns = ("device", "status", "age", "reputation", "score", "flagged", "last rejection")
    for name in (*columns, "sent", "telemetry"):
        table.add_column(name, justify="right" if name in {"age", "score", "sent"} else "left")
    # Lowest reputation first: the devices an operator should look at.
    ranked = sorted(
        view.devices.values(),
        key=lambda d: (1.0 if d.reputation is None else d.reputation, d.device_id),
    )
    for device in ranked[:limit]:
        age = None if device.status_time is None else now - device.status_time
        status = Text(device.state, style=_STATE_STYLES.get(device.state, "dim"))
        if device.reason:
            status.append(f": {device.reason}", style="dim")
        rejection = device.last_rejection
        rejection_text = (
            Text("-")
            if rejection is None
            else Text(f"{rejection.reason}{_round_suffix(rejection.round)}", style="red")
        )
        table.add_row(
            device.device_id,
            status,
            format_age(age),
            _reputation(device.reputation),
            _number(device.score, ".2f"),
            Text(
                "-" if device.flagged_round is None else f"round {device.flagged_round}",
                style="" if device.flagged_round is None else "bold red",
            ),
            rejection_text,
            "-" if device.updates_sent is None else str(device.updates_sent),
            _telemetry(device),
        )
    if len(ranked) > limit:
        table.add_row(Text(f"... {len(ranked) - limit} more", style="dim"))
    return table


def _alerts(view: FleetView, now: float, *, highlight: bool) -> Table:
    style = "bold red" if highlight else ""
    table = Table(
        title=f"Alerts (latest {view.alerts.maxlen})",
        title_justify="left",
        title_style="bold red" if highlight and view.alerts else "",
    )
    for name in ("age", "round", "device", "reason", "score"):
        table.add_column(name, justify="right" if name in {"age", "round", "score"} else "left")
    for alert in reversed(view.alerts):
        table.add_row(
            format_age(now - alert.received),
            "-" if alert.round is None else str(alert.round),
            alert.device or "-",
            Text(alert.reason),
            _number(alert.score, ".2f"),
            style=style,
        )
    if not view.alerts:
        table.add_row("", "", Text("none", style="dim"), "", "")
    return table


def _reputation(value: float | None) -> Text:
    if value is None:
        return Text("-")
    style = "red" if value < _LOW_REPUTATION else "yellow" if value < _FAIR_REPUTATION else ""
    return Text(f"{value:.3f}", style=style)


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _round_suffix(number: int | None) -> str:
    return "" if number is None else f" (r{number})"


def _telemetry(device: DeviceView) -> str:
    readings = device.telemetry
    parts = []
    if (cpu := readings.get("cpu_percent")) is not None:
        parts.append(f"cpu {cpu:.0f}%")
    if (memory := readings.get("memory_percent")) is not None:
        parts.append(f"mem {memory:.0f}%")
    if (temperature := readings.get("temperature_c")) is not None:
        parts.append(f"{temperature:.0f}C")
    if (battery := readings.get("battery_percent")) is not None:
        parts.append(f"bat {battery:.0f}%")
    return " ".join(parts) or "-"
