from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from byzedge.daemon.signals import SignalEvents, install_signal_handlers


@pytest.fixture
def events() -> Iterator[SignalEvents]:
    with install_signal_handlers() as installed:
        yield installed


def test_sigterm_sets_stop(events: SignalEvents) -> None:
    os.kill(os.getpid(), signal.SIGTERM)
    assert events.stop.wait(5.0)
    assert not events.reload.is_set()
    assert events.last_signal == signal.SIGTERM


def test_sigint_sets_stop(events: SignalEvents) -> None:
    os.kill(os.getpid(), signal.SIGINT)
    assert events.stop.wait(5.0)


def test_sighup_sets_reload_and_not_stop(events: SignalEvents) -> None:
    os.kill(os.getpid(), signal.SIGHUP)
    assert events.reload.wait(5.0)
    assert not events.stop.is_set()


def test_a_second_sigint_during_shutdown_raises_keyboard_interrupt(
    events: SignalEvents,
) -> None:
    os.kill(os.getpid(), signal.SIGINT)
    assert events.stop.wait(5.0)
    with pytest.raises(KeyboardInterrupt):  # noqa: PT012 - the handler runs between bytecodes
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(500):
            time.sleep(0.01)


def test_the_callback_receives_the_signal_number() -> None:
    received: list[int] = []
    called = threading.Event()

    def on_signal(signum: int) -> None:
        received.append(signum)
        called.set()

    with install_signal_handlers(on_signal=on_signal):
        os.kill(os.getpid(), signal.SIGHUP)
        assert called.wait(5.0)
    assert received == [signal.SIGHUP]


def test_restore_puts_back_the_previous_handlers() -> None:
    before = signal.getsignal(signal.SIGTERM)
    installed = install_signal_handlers()
    assert signal.getsignal(signal.SIGTERM) != before
    installed.restore()
    assert signal.getsignal(signal.SIGTERM) == before


def test_installing_outside_the_main_thread_is_an_error() -> None:
    errors: list[BaseException] = []

    def install() -> None:
        try:
            install_signal_handlers()
        except RuntimeError as exc:
            errors.append(exc)

    thread = threading.Thread(target=install)
    thread.start()
    thread.join()
    assert len(errors) == 1
