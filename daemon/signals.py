"""Turn SIGTERM/SIGINT into a ``stop`` event and SIGHUP into a ``reload`` event.

The daemons never act inside a signal handler: the handler only sets an event, and the
main loop decides when to stop (after finishing the current step) or to reload (after
validating the new configuration). SIGTERM is what ``systemctl stop`` sends; SIGHUP is
what our units' ``ExecReload=`` sends.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType, TracebackType
from typing import Any

__all__ = ["SignalEvents", "install_signal_handlers"]

_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_RELOAD_SIGNALS = (signal.SIGHUP,)


@dataclass
class SignalEvents:
    """Events set by the handlers that :func:`install_signal_handlers` installed.

    Attributes
    ----------
    stop
        Set on SIGTERM or SIGINT; stays set.
    reload
        Set on SIGHUP; the main loop clears it once it has handled the reload.
    last_signal
        Number of the most recent signal received, or ``None``.
    """

    stop: threading.Event = field(default_factory=threading.Event)
    reload: threading.Event = field(default_factory=threading.Event)
    last_signal: int | None = None
    _previous: dict[int, _Handler] = field(default_factory=dict, repr=False)
    _on_signal: Callable[[int], None] | None = field(default=None, repr=False)

    def restore(self) -> None:
        """Put back the handlers that were installed before; safe to call twice."""
        previous, self._previous = self._previous, {}
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    def __enter__(self) -> SignalEvents:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.restore()

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        # A second Ctrl-C while a clean stop is under way means "give up waiting": raise
        # as Python's default handler would. A repeated SIGTERM is left to systemd, which
        # sends SIGKILL after TimeoutStopSec.
        if signum == signal.SIGINT and self.stop.is_set():
            raise KeyboardInterrupt
        self.last_signal = signum
        event = self.stop if signum in _STOP_SIGNALS else self.reload
        # Event.set() takes a non-reentrant lock; the interrupted main thread may hold it
        # right now (inside stop.wait(), say), and setting it here would then deadlock.
        # A short-lived thread waits for the lock instead of the handler.
        threading.Thread(
            target=self._deliver, args=(event, signum), name="signal-delivery", daemon=True
        ).start()

    def _deliver(self, event: threading.Event, signum: int) -> None:
        event.set()
        if self._on_signal is not None:
            self._on_signal(signum)


def install_signal_handlers(*, on_signal: Callable[[int], None] | None = None) -> SignalEvents:
    """Install handlers for SIGTERM, SIGINT (stop) and SIGHUP (reload).

    Must be called from the main thread, as Python only runs signal handlers there.

    Parameters
    ----------
    on_signal
        Optional callback run after the event is set, from a helper thread, with the
        signal number; for example ``lambda _: loop.call_soon_threadsafe(wake.set)`` to
        wake an asyncio loop.

    Returns
    -------
    SignalEvents
        The events, and :meth:`SignalEvents.restore` to undo the installation (it is also
        a context manager).

    Raises
    ------
    RuntimeError
        If called from a thread other than the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        msg = "install_signal_handlers() must be called from the main thread"
        raise RuntimeError(msg)
    events = SignalEvents(_on_signal=on_signal)
    for signum in (*_STOP_SIGNALS, *_RELOAD_SIGNALS):
        events._previous[signum] = signal.signal(signum, events._handle)
    return events
