"""Plumbing shared by the agent and the coordinator daemons.

Everything here is small, dependency-light and safe to call outside systemd: sd_notify and
the watchdog (:mod:`daemon.systemd`), signal handling (:mod:`daemon.signals`), the atomic
state store (:mod:`daemon.store`), reconnect backoff (:mod:`daemon.backoff`) and logging
set-up (:mod:`daemon.logging`).
"""

from __future__ import annotations

from daemon.backoff import exponential_backoff
from daemon.logging import configure_logging, running_under_journald
from daemon.signals import SignalEvents, install_signal_handlers
from daemon.store import STATE_FORMAT, STATE_VERSION, AtomicStore
from daemon.systemd import (
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
