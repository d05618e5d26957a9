"""MQTT brokers for the simulator, the demo and the tests: external, mosquitto or embedded.

``start_broker("auto")`` gives a working broker with zero set-up: a private ``mosquitto``
process when the binary is installed (3-5x faster than the alternative and a full MQTT 5
broker), otherwise amqtt running in-process. Both listen on a free 127.0.0.1 port only.
Code that talks to the broker must stick to MQTT 3.1.1, since amqtt refuses MQTT 5.

Every broker started here comes back as a :class:`BrokerHandle`; use it as a context
manager, or call :meth:`BrokerHandle.stop`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import random
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

__all__ = [
    "BrokerError",
    "BrokerHandle",
    "BrokerKind",
    "find_mosquitto",
    "free_port",
    "start_broker",
    "start_embedded",
    "start_mosquitto",
]

BrokerKind = Literal["external", "mosquitto", "embedded"]

_HOST = "127.0.0.1"
_DEFAULT_MQTT_PORT = 1883
_START_TIMEOUT_S = 15.0
_STOP_TIMEOUT_S = 10.0
# A port from free_port() can be taken by someone else before the broker binds it.
_PORT_ATTEMPTS = 3
# Debian installs the daemon in sbin, which is not on a normal user's PATH.
_MOSQUITTO_FALLBACKS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
# Logged by mosquitto (log_type information) once its listeners are open.
_RUNNING_MARKER = " running"
_NOISY_LOGGERS = ("amqtt", "transitions")

_log = logging.getLogger(__name__)


class BrokerError(RuntimeError):
    """A broker could not be found, started or parsed from its spec."""


class _PortInUseError(BrokerError):
    """The port was taken between free_port() and the broker's bind(); worth a retry."""


class _Runner(Protocol):
    """What a handle needs from the thing that actually runs a broker."""

    def stop(self) -> None: ...

    def restart(self) -> None: ...


class BrokerHandle:
    """A running (or external) MQTT broker.

    Parameters
    ----------
    host, port
        Where clients connect (plain TCP, MQTT 3.1.1 at least).
    kind
        ``"external"`` (not ours), ``"mosquitto"`` (a child process) or ``"embedded"``
        (amqtt in a thread of this process).
    runner
        What stops or restarts the broker; ``None`` for an external one.
    workdir
        The directory holding a mosquitto broker's config and log, when there is one.
    """

    def __init__(
        self,
        host: str,
        port: int,
        kind: BrokerKind,
        *,
        runner: _Runner | None = None,
        workdir: Path | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.kind: BrokerKind = kind
        self.workdir = workdir
        self._runner = runner
        self._stopped = False

    @property
    def url(self) -> str:
        """The broker as an ``mqtt://host:port`` URL (what ``start_broker`` accepts)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"mqtt://{host}:{self.port}"

    @property
    def protocol(self) -> Literal["auto", "3.1.1"]:
        """The MQTT version clients should use: ``3.1.1`` for amqtt, else ``auto`` (v5)."""
        return "3.1.1" if self.kind == "embedded" else "auto"

    @property
    def config_path(self) -> Path | None:
        """The generated ``mosquitto.conf``, or ``None`` for other kinds."""
        return None if self.workdir is None else self.workdir / "mosquitto.conf"

    @property
    def log_path(self) -> Path | None:
        """The mosquitto log file, or ``None`` for other kinds."""
        return None if self.workdir is None else self.workdir / "mosquitto.log"

    def stop(self) -> None:
        """Stop the broker (a no-op for an external one); safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        if self._runner is not None:
            self._runner.stop()

    def restart(self) -> None:
        """Stop the broker and start it again on the same port, with the same config.

        Connected clients see the connection drop; in-memory state (retained messages,
        sessions) is lost, since our brokers run without persistence.

        Raises
        ------
        BrokerError
            For an external broker, or if the broker does not come back.
        """
        if self._runner is None:
            msg = "cannot restart an external broker"
            raise BrokerError(msg)
        self._runner.restart()
        self._stopped = False

    def __enter__(self) -> BrokerHandle:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"BrokerHandle(kind={self.kind!r}, url={self.url!r})"


def free_port(host: str = _HOST) -> int:
    """Return a TCP port on ``host`` that was free a moment ago, outside the ephemeral range.

    A port the kernel hands out for ``bind(0)`` comes from the range it also uses for the
    source ports of outgoing connections: between the pick and the broker's own bind (or
    a restart of a killed broker on the same port), another process's connection, or a
    NATS node's route dialling its peers, may take it ("address already in use"). Ports
    below that range are never taken that way, so one is tried at random first.

    Parameters
    ----------
    host
        The interface to probe.

    Returns
    -------
    int
        A port number.
    """
    low = _ephemeral_low()
    for _ in range(200):
        port = _PORT_RNG.randrange(_PRIVATE_PORTS_FROM, low)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        chosen = sock.getsockname()[1]
    assert isinstance(chosen, int)  # noqa: S101 - AF_INET addresses are (host, port)
    return chosen


# Test brokers' ports are drawn from here up to the ephemeral range's start; from the OS's
# randomness, so that a test seeding `random` cannot make two processes draw alike.
_PRIVATE_PORTS_FROM = 20_000
_PORT_RNG = random.SystemRandom()


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (32768 when it cannot be read)."""
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        low = int(text.split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768
    return low if low > _PRIVATE_PORTS_FROM + 1_000 else 32_768


def find_mosquitto() -> Path | None:
    """Locate the ``mosquitto`` binary.

    ``$BYZEDGE_MOSQUITTO`` wins when set; then ``PATH``; then Debian's ``/usr/sbin``.

    Returns
    -------
    Path or None
        The executable, or ``None`` when there is none.
    """
    override = os.environ.get("BYZEDGE_MOSQUITTO")
    if override:
        return Path(override) if os.access(override, os.X_OK) else None
    found = shutil.which("mosquitto")
    if found:
        return Path(found)
    for candidate in _MOSQUITTO_FALLBACKS:
        if os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


def start_broker(spec: str = "auto", *, workdir: Path | None = None) -> BrokerHandle:
    """Start (or point at) the broker that ``spec`` names.

    Parameters
    ----------
    spec
        ``"auto"``: mosquitto when installed, else embedded; ``"mosquitto"``: mosquitto or
        an error; ``"embedded"``: amqtt in-process; ``"mqtt://host[:port]"``: an external
        broker, nothing is started (port 1883 by default).
    workdir
        Where a mosquitto broker keeps its config and log; a fresh temporary directory
        (removed on stop) by default.

    Returns
    -------
    BrokerHandle
        The broker, ready to accept connections.

    Raises
    ------
    BrokerError
        If the spec is malformed or the broker cannot be started.
    """
    if spec == "auto":
        if find_mosquitto() is not None:
            return start_mosquitto(workdir=workdir)
        _log.info("mosquitto not found; starting the embedded amqtt broker")
        return start_embedded()
    if spec == "mosquitto":
        return start_mosquitto(workdir=workdir)
    if spec == "embedded":
        return start_embedded()
    return _external(spec)


def _external(spec: str) -> BrokerHandle:
    parts = urlsplit(spec)
    if parts.scheme != "mqtt" or not parts.hostname:
        msg = (
            f"unknown broker spec {spec!r}: expected 'auto', 'mosquitto', 'embedded' "
            "or 'mqtt://host[:port]'"
        )
        raise BrokerError(msg)
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        msg = f"broker spec {spec!r} must be just mqtt://host[:port]"
        raise BrokerError(msg)
    try:
        port = parts.port or _DEFAULT_MQTT_PORT
    except ValueError as exc:
        msg = f"broker spec {spec!r} has an invalid port"
        raise BrokerError(msg) from exc
    return BrokerHandle(parts.hostname, port, "external")


# --- mosquitto ---------------------------------------------------------------------------


def start_mosquitto(
    port: int | None = None,
    extra_config: str = "",
    workdir: Path | None = None,
) -> BrokerHandle:
    """Start a private mosquitto on 127.0.0.1 with a generated config.

    Parameters
    ----------
    port
        The port to listen on; a free one by default.
    extra_config
        Lines appended to the generated config, e.g. ``"message_size_limit 1000"``.
    workdir
        Where to write ``mosquitto.conf`` and ``mosquitto.log``; kept on stop. A
        temporary directory, removed on stop, by default.

    Returns
    -------
    BrokerHandle
        A ``"mosquitto"`` broker accepting TCP connections.

    Raises
    ------
    BrokerError
        If mosquitto is not installed or does not start (its log is quoted).
    """
    binary = find_mosquitto()
    if binary is None:
        msg = (
            "mosquitto is not installed (looked on PATH and in /usr/sbin); install it "
            "with 'apt-get install -y mosquitto' or use the embedded broker"
        )
        raise BrokerError(msg)
    owns_dir = workdir is None
    directory = Path(tempfile.mkdtemp(prefix="byzedge-mosquitto-")) if workdir is None else workdir
    directory.mkdir(parents=True, exist_ok=True)
    attempts = 1 if port is not None else _PORT_ATTEMPTS
    last_error: BrokerError | None = None
    for _ in range(attempts):
        chosen = free_port() if port is None else port
        runner = _MosquittoProcess(binary, chosen, extra_config, directory, owns_dir=owns_dir)
        try:
            runner.start()
        except _PortInUseError as exc:
            last_error = exc
            continue
        except BrokerError:
            if owns_dir:
                shutil.rmtree(directory, ignore_errors=True)
            raise
        return BrokerHandle(_HOST, chosen, "mosquitto", runner=runner, workdir=directory)
    if owns_dir:
        shutil.rmtree(directory, ignore_errors=True)
    assert last_error is not None  # noqa: S101 - the loop ran at least once
    raise last_error


def _mosquitto_config(port: int, extra_config: str) -> str:
    lines = [
        "# generated by byzedge fleet_sim.brokers; private test/simulation broker",
        f"listener {port} {_HOST}",
        "allow_anonymous true",
        "persistence false",
        # Without it Nagle + delayed ACK add ~40 ms to every small control message.
        "set_tcp_nodelay true",
        "max_queued_messages 10000",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "log_type notice",
        # 'information' carries the "running" line that start-up waits for.
        "log_type information",
    ]
    if os.geteuid() == 0:
        # As root, mosquitto 2 drops to the 'mosquitto' user right after start, before it
        # opens files named in extra config (certificates, ACLs in our 0700 temp dir).
        lines.append("user root")
    if extra_config:
        lines.append(extra_config.rstrip("\n"))
    return "\n".join(lines) + "\n"


class _MosquittoProcess:
    def __init__(
        self, binary: Path, port: int, extra_config: str, workdir: Path, *, owns_dir: bool
    ) -> None:
        self._binary = binary
        self._port = port
        self._workdir = workdir
        self._owns_dir = owns_dir
        self._config = workdir / "mosquitto.conf"
        self._log = workdir / "mosquitto.log"
        self._config.write_text(_mosquitto_config(port, extra_config), encoding="utf-8")
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self._log.open("ab") as log:
            # Only log lines written after this offset belong to this start (restarts append).
            offset = log.tell()
            # The child keeps its own copy of the descriptor; ours can close right away.
            self._process = subprocess.Popen(
                [str(self._binary), "-c", str(self._config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        process = self._process

        def ready() -> bool:
            # A port that accepts connections is not proof: someone else may hold it while
            # our mosquitto is failing with "Address already in use". Wait for mosquitto to
            # say it runs, then for the port.
            return _RUNNING_MARKER in self._log_since(offset) and _accepts(_HOST, self._port)

        deadline = time.monotonic() + _START_TIMEOUT_S
        while process.poll() is None and time.monotonic() < deadline:
            if ready():
                _log.debug("mosquitto (pid %d) listening on %s:%d", process.pid, _HOST, self._port)
                return
            time.sleep(0.02)
        self._terminate()
        tail = "\n".join(self._log_since(offset).splitlines()[-20:]) or "(empty)"
        msg = (
            f"mosquitto did not start on {_HOST}:{self._port} "
            f"(exit code {process.returncode}); log:\n{tail}"
        )
        if "Address already in use" in tail:
            raise _PortInUseError(msg)
        raise BrokerError(msg)

    def stop(self) -> None:
        self._terminate()
        if self._owns_dir:
            shutil.rmtree(self._workdir, ignore_errors=True)

    def restart(self) -> None:
        self._terminate()
        self.start()

    def _terminate(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            _log.warning("mosquitto (pid %d) ignored SIGTERM; killing it", process.pid)
            process.kill()
            process.wait(_STOP_TIMEOUT_S)

    def _log_since(self, offset: int) -> str:
        try:
            with self._log.open("rb") as log:
                log.seek(offset)
                return log.read().decode("utf-8", errors="replace")
        except OSError:
            return ""


def _accepts(host: str, port: int) -> bool:
    """Tell whether ``host:port`` accepts a TCP connection right now."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


# --- embedded amqtt ----------------------------------------------------------------------


def start_embedded(port: int | None = None) -> BrokerHandle:
    """Start amqtt 0.12.1 in a daemon thread of this process, on 127.0.0.1.

    MQTT 3.1.1 only; anonymous sessions get no offline queue. Good for demos and small
    simulated fleets, not for production.

    Parameters
    ----------
    port
        The port to listen on; a free one by default.

    Returns
    -------
    BrokerHandle
        An ``"embedded"`` broker accepting connections.

    Raises
    ------
    BrokerError
        If amqtt is not installed or the broker does not start.
    """
    attempts = 1 if port is not None else _PORT_ATTEMPTS
    last_error: BrokerError | None = None
    for _ in range(attempts):
        chosen = free_port() if port is None else port
        runner = _EmbeddedBroker(chosen)
        try:
            runner.start()
        except _PortInUseError as exc:
            last_error = exc
            continue
        return BrokerHandle(_HOST, chosen, "embedded", runner=runner)
    assert last_error is not None  # noqa: S101 - the loop ran at least once
    raise last_error


def _caused_by_address_in_use(error: BaseException | None) -> bool:
    while error is not None:
        if isinstance(error, OSError) and error.errno == errno.EADDRINUSE:
            return True
        error = error.__cause__ or error.__context__
    return False


def _amqtt_broker_class() -> Any:
    try:
        from amqtt.broker import Broker  # noqa: PLC0415 - optional dependency (sim extra)
    except ImportError as exc:
        msg = "the embedded broker needs amqtt: pip install 'byzedge[sim]'"
        raise BrokerError(msg) from exc
    return Broker


class _EmbeddedBroker:
    def __init__(self, port: int) -> None:
        self._port = port
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> None:
        broker_class = _amqtt_broker_class()  # fail here, not in the thread
        for name in _NOISY_LOGGERS:
            # amqtt logs every connection and state transition at INFO.
            logging.getLogger(name).setLevel(logging.WARNING)
        self._ready.clear()
        self._error = None
        self._thread = threading.Thread(
            target=self._run, args=(broker_class,), name=f"amqtt-broker-{self._port}", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(_START_TIMEOUT_S):
            msg = f"embedded broker did not start on {_HOST}:{self._port} in time"
            raise BrokerError(msg)
        error = self._startup_error()
        if error is not None:
            self._thread.join(_STOP_TIMEOUT_S)
            msg = f"embedded broker failed to start on {_HOST}:{self._port}: {error}"
            if _caused_by_address_in_use(error):
                raise _PortInUseError(msg) from error
            raise BrokerError(msg) from error

    def stop(self) -> None:
        thread, loop, stop_event = self._thread, self._loop, self._stop_event
        self._thread = self._loop = self._stop_event = None
        if thread is None:
            return
        if loop is not None and stop_event is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed
                loop.call_soon_threadsafe(stop_event.set)
        thread.join(_STOP_TIMEOUT_S)
        if thread.is_alive():
            _log.warning("embedded broker thread did not stop within %.0f s", _STOP_TIMEOUT_S)

    def restart(self) -> None:
        self.stop()
        self.start()

    def _startup_error(self) -> BaseException | None:
        # A method, not an attribute read, because the broker thread sets it.
        return self._error

    def _run(self, broker_class: Any) -> None:
        try:
            asyncio.run(self._serve(broker_class))
        except BaseException as exc:  # reported to start(); a thread must not die loudly
            if not self._ready.is_set():
                self._error = exc
                self._ready.set()
            else:
                _log.warning("embedded broker stopped with an error: %s", exc)

    async def _serve(self, broker_class: Any) -> None:
        config: dict[str, Any] = {
            "listeners": {"default": {"type": "tcp", "bind": f"{_HOST}:{self._port}"}},
            # Replaces amqtt's default plugin set (event/packet loggers, $SYS): only auth.
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
        # Broker() calls asyncio.get_running_loop(), so it must be built in a coroutine.
        broker = broker_class(config)
        await broker.start()
        try:
            self._loop = asyncio.get_running_loop()
            self._stop_event = asyncio.Event()
            self._ready.set()
            await self._stop_event.wait()
        finally:
            await broker.shutdown()
