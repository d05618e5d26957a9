"""Minimal ``sd_notify`` client: readiness, status, reload, stop and watchdog messages.

systemd's notification protocol is one datagram of ``KEY=VALUE`` lines sent to the
``AF_UNIX`` socket named by ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract
namespace). It is a dozen lines, so we speak it directly instead of depending on
``systemd-python`` (a C extension without wheels) or an unmaintained pure-Python package.

Every function here is a no-op returning ``False`` when the process does not run under
systemd, and never raises on a socket error: a daemon must not die because its supervisor
went away. Failures are logged at debug level.

See ``sd_notify(3)`` and ``systemd.service(5)`` (``Type=notify``, ``WatchdogSec=``).
"""

from __future__ import annotations

import logging
import os
import socket
import time

__all__ = [
    "notify",
    "notify_ready",
    "notify_reloading",
    "notify_status",
    "notify_stopping",
    "notify_watchdog",
    "watchdog_interval_s",
]

_log = logging.getLogger(__name__)


def _socket_address(raw: str) -> str | None:
    """Translate ``$NOTIFY_SOCKET`` into an address ``socket.connect`` understands."""
    if raw.startswith("@"):
        # Abstract namespace: systemd writes '@', the kernel wants a leading NUL byte.
        return "\0" + raw[1:]
    if raw.startswith("/"):
        return raw
    # Newer systemd may hand out vsock addresses (``vsock:CID:PORT``) to VMs; not for us.
    return None


def notify(message: str) -> bool:
    r"""Send one raw notification to the service manager.

    Parameters
    ----------
    message
        Newline-separated ``KEY=VALUE`` assignments, e.g. ``"READY=1\nSTATUS=up"``.

    Returns
    -------
    bool
        ``True`` when the datagram was sent; ``False`` outside systemd or on any socket
        error (logged at debug level).
    """
    raw = os.environ.get("NOTIFY_SOCKET", "")
    if not raw:
        return False
    address = _socket_address(raw)
    if address is None:
        _log.debug("unsupported NOTIFY_SOCKET address %r; notification dropped", raw)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode("utf-8"))
    except OSError as exc:
        _log.debug("sd_notify to %r failed: %s", raw, exc)
        return False
    return True


def notify_ready(status: str | None = None) -> bool:
    """Tell systemd that start-up (or a reload) finished; ``Type=notify`` waits for this.

    Send it only once the daemon can do its job (broker connected, model loaded): systemd
    starts the watchdog clock and ordering dependencies from this moment.

    Parameters
    ----------
    status
        Optional human-readable status line shown by ``systemctl status``.

    Returns
    -------
    bool
        Whether the notification was sent.
    """
    return notify("READY=1" if status is None else f"READY=1\nSTATUS={_one_line(status)}")


def notify_stopping() -> bool:
    """Tell systemd that the daemon is shutting down cleanly.

    Returns
    -------
    bool
        Whether the notification was sent.
    """
    return notify("STOPPING=1")


def notify_reloading() -> bool:
    """Tell systemd that a configuration reload started.

    Send :func:`notify_ready` when the reload is done (or abandoned). ``MONOTONIC_USEC`` is
    included because systemd >= 253 requires it with ``Type=notify-reload``; older versions
    ignore it.

    Returns
    -------
    bool
        Whether the notification was sent.
    """
    now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify(f"RELOADING=1\nMONOTONIC_USEC={now_usec}")


def notify_status(text: str) -> bool:
    """Publish a one-line status for ``systemctl status``.

    Parameters
    ----------
    text
        The status; newlines are replaced by spaces since the protocol is line based.

    Returns
    -------
    bool
        Whether the notification was sent.
    """
    return notify(f"STATUS={_one_line(text)}")


def notify_watchdog() -> bool:
    """Ping the watchdog (``WATCHDOG=1``).

    Call it from the main loop after a health check, not from a free-running thread, so a
    wedged loop is actually detected and restarted.

    Returns
    -------
    bool
        Whether the notification was sent.
    """
    return notify("WATCHDOG=1")


def watchdog_interval_s() -> float | None:
    """Return how often to ping the watchdog, or ``None`` when it is not enabled for us.

    This is half of ``$WATCHDOG_USEC``, the pacing ``sd_watchdog_enabled(3)`` recommends.
    When ``$WATCHDOG_PID`` is set and names another process the watchdog is not ours.

    Returns
    -------
    float or None
        The ping interval in seconds.
    """
    usec_raw = os.environ.get("WATCHDOG_USEC", "")
    if not usec_raw:
        return None
    pid_raw = os.environ.get("WATCHDOG_PID", "")
    if pid_raw:
        try:
            pid = int(pid_raw)
        except ValueError:
            _log.debug("ignoring malformed WATCHDOG_PID %r", pid_raw)
            return None
        if pid != os.getpid():
            return None
    try:
        usec = int(usec_raw)
    except ValueError:
        _log.debug("ignoring malformed WATCHDOG_USEC %r", usec_raw)
        return None
    if usec <= 0:
        return None
    return usec / 2 / 1_000_000


def _one_line(text: str) -> str:
    return " ".join(text.splitlines())
