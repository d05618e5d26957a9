from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from byzedge.daemon import systemd


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket standing in for systemd, named by $NOTIFY_SOCKET."""
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(2.0)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield sock


def receive(sock: socket.socket) -> str:
    return sock.recv(4096).decode("utf-8")


def test_every_call_is_a_no_op_outside_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify_ready() is False
    assert systemd.notify_stopping() is False
    assert systemd.notify_reloading() is False
    assert systemd.notify_status("x") is False
    assert systemd.notify_watchdog() is False


def test_notify_ready_sends_ready(notify_socket: socket.socket) -> None:
    assert systemd.notify_ready() is True
    assert receive(notify_socket) == "READY=1"


def test_notify_ready_can_carry_a_status(notify_socket: socket.socket) -> None:
    systemd.notify_ready("connected")
    assert receive(notify_socket) == "READY=1\nSTATUS=connected"


def test_notify_stopping_sends_stopping(notify_socket: socket.socket) -> None:
    systemd.notify_stopping()
    assert receive(notify_socket) == "STOPPING=1"


def test_notify_reloading_sends_reloading_with_monotonic_time(
    notify_socket: socket.socket,
) -> None:
    systemd.notify_reloading()
    lines = receive(notify_socket).split("\n")
    assert lines[0] == "RELOADING=1"
    key, value = lines[1].split("=")
    assert key == "MONOTONIC_USEC"
    assert int(value) > 0


def test_notify_status_flattens_newlines(notify_socket: socket.socket) -> None:
    systemd.notify_status("round 3\nwaiting for quorum")
    assert receive(notify_socket) == "STATUS=round 3 waiting for quorum"


def test_notify_watchdog_sends_watchdog(notify_socket: socket.socket) -> None:
    systemd.notify_watchdog()
    assert receive(notify_socket) == "WATCHDOG=1"


def test_abstract_namespace_socket_is_supported(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"byzedge-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2.0)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.notify_ready() is True
        assert receive(sock) == "READY=1"


def test_a_dead_socket_returns_false_and_logs_at_debug(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens.sock"))
    with caplog.at_level(logging.DEBUG, logger="byzedge.daemon.systemd"):
        assert systemd.notify_ready() is False
    assert [r.levelno for r in caplog.records] == [logging.DEBUG]


def test_an_unsupported_address_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert systemd.notify_ready() is False


def test_watchdog_interval_is_half_of_watchdog_usec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "60000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert systemd.watchdog_interval_s() == pytest.approx(30.0)


def test_watchdog_interval_is_none_without_watchdog(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert systemd.watchdog_interval_s() is None


def test_watchdog_for_another_pid_is_not_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "60000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert systemd.watchdog_interval_s() is None


def test_watchdog_for_our_pid_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert systemd.watchdog_interval_s() == pytest.approx(5.0)


@pytest.mark.parametrize("raw", ["", "0", "-5", "sixty"])
def test_a_malformed_watchdog_usec_disables_the_watchdog(
    raw: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", raw)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert systemd.watchdog_interval_s() is None
