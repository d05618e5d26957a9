"""Plumbing shared by the agent and the coordinator daemons.

Everything here is small, dependency-light and safe to call outside systemd: sd_notify and
the watchdog (:mod:`byzedge.daemon.systemd`), signal handling
(:mod:`byzedge.daemon.signals`), the atomic state store (:mod:`byzedge.daemon.store`),
reconnect backoff (:mod:`byzedge.daemon.backoff`), logging set-up
(:mod:`byzedge.daemon.logging`), configuration plumbing (:mod:`byzedge.daemon.config`), the
MQTT client (:mod:`byzedge.daemon.mqtt`) and the transport seam
(:mod:`byzedge.daemon.transport`).
"""

from __future__ import annotations

from byzedge.daemon.backoff import exponential_backoff
from byzedge.daemon.logging import configure_logging, running_under_journald
from byzedge.daemon.signals import SignalEvents, install_signal_handlers
from byzedge.daemon.store import STATE_FORMAT, STATE_VERSION, AtomicStore
from byzedge.daemon.systemd import (
    notify,
    notify_ready,
    notify_reloading,
    notify_status,
    notify_stopping,
    notify_watchdog,
    watchdog_interval_s,
)

__all__ = [
    "STATE_FORMAT",
    "STATE_VERSION",
    "AtomicStore",
    "SignalEvents",
    "configure_logging",
    "exponential_backoff",
    "install_signal_handlers",
    "notify",
    "notify_ready",
    "notify_reloading",
    "notify_status",
    "notify_stopping",
    "notify_watchdog",
    "running_under_journald",
    "watchdog_interval_s",
]
