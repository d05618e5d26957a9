"""One NATS connection on a background asyncio loop, for callers that are threads.

The ingest worker and the leader are synchronous: they call :meth:`NatsLink.call` with a
coroutine and wait for its result. The connection itself (nats-py's asyncio client) lives
on a private event loop in a daemon thread, with the cluster's whole server list, so it
reconnects to a surviving node on its own when the one it used dies.

A broker that is down at start is not an error: the first connect is retried in the
background until :meth:`close`, and :meth:`call` fails with :class:`NatsUnavailableError`
meanwhile (callers treat that as "nothing yet").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import CancelledError
from concurrent.futures import TimeoutError as FutureTimeoutError
from typing import Any, TypeVar

import nats
import nats.errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

__all__ = ["NatsLink", "NatsUnavailableError"]

_LOGGER = logging.getLogger(__name__)

T = TypeVar("T")

# Between two attempts of the first connect, and the client's own reconnect wait.
_RETRY_S = 0.5
# A JetStream API call gets this long; a stream leader election takes 4-8 s (scale-out.md §9).
_JS_TIMEOUT_S = 10.0


class NatsUnavailableError(Exception):
    """No connection to the cluster yet, or the link is closed."""


class NatsLink:
    """A reconnecting nats-py client on its own event loop thread.

    Parameters
    ----------
    servers:
        ``nats://host:port`` of every cluster node (any order; all are tried).
    name:
        The connection's name as the server shows it (``/connz``).
    on_connect:
        Awaited on the loop once connected, before calls are let through: a source
        provisions its stream there. An exception is logged and the link retries later.
    tls:
        Client TLS (the fleet CA and the coordinator's certificate) for ``tls://`` servers.
    """

    def __init__(
        self,
        servers: Sequence[str],
        name: str,
        on_connect: Callable[[JetStreamContext], Awaitable[None]] | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        if not servers:
            msg = "a NATS link needs at least one server URL"
            raise ValueError(msg)
        self.servers = list(servers)
        self.name = name
        self._on_connect = on_connect
        self._tls = tls
        self._loop = asyncio.new_event_loop()
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self.ready = threading.Event()
        self._closing = False
        self._stopped: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name=f"nats-{name}", daemon=True)
        self._thread.start()

    # -- calls from other threads ------------------------------------------------------

    def call(
        self,
        work: Callable[[JetStreamContext], Coroutine[Any, Any, T]],
        timeout_s: float,
    ) -> T:
        """Run ``work(js)`` on the loop and return its result.

        Raises
        ------
        NatsUnavailableError
            When the link is not (yet) connected and provisioned, or closed.
        TimeoutError
            When the call does not finish within ``timeout_s``.
        """
        js = self._js
        if self._closing or js is None or not self.ready.is_set():
            raise NatsUnavailableError(f"NATS link {self.name} is not connected")
        try:
            future = asyncio.run_coroutine_threadsafe(work(js), self._loop)
        except RuntimeError as exc:  # the loop closed meanwhile
            raise NatsUnavailableError(f"NATS link {self.name} is closed") from exc
        try:
            return future.result(timeout_s)
        except FutureTimeoutError as exc:
            future.cancel()
            msg = f"NATS call on {self.name} took over {timeout_s:.1f} s"
            raise TimeoutError(msg) from exc
        except CancelledError as exc:  # close() stopped the loop under the call
            raise NatsUnavailableError(f"NATS link {self.name} is closed") from exc

    def wait_ready(self, timeout_s: float) -> bool:
        """Wait until connected and provisioned (or ``timeout_s``); return whether it is."""
        return self.ready.wait(timeout_s)

    def close(self, timeout_s: float = 10.0) -> None:
        """Close the connection and stop the loop thread (idempotent)."""
        if self._closing:
            return
        self._closing = True
        self.ready.clear()
        stopped = self._stopped
        if stopped is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(stopped.set)
        self._thread.join(timeout_s)

    # -- the loop thread ---------------------------------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        except Exception:  # a bug here must not go unnoticed, nor hang callers forever
            _LOGGER.exception("NATS link %s: loop failed", self.name)
        finally:
            self.ready.clear()
            self._loop.close()

    async def _main(self) -> None:
        self._stopped = asyncio.Event()
        if self._closing:
            return
        while not self._closing:
            try:
                self._nc = await nats.connect(
                    servers=self.servers,
                    name=self.name,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=_RETRY_S,
                    connect_timeout=2,
                    tls=self._tls,
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                )
                break
            except (OSError, nats.errors.Error, TimeoutError) as exc:
                _LOGGER.warning("NATS link %s: cannot connect yet: %s", self.name, exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopped.wait(), _RETRY_S)
        if self._nc is not None and not self._closing:
            self._js = self._nc.jetstream(timeout=_JS_TIMEOUT_S)
            await self._prepare()
            await self._stopped.wait()
        if self._nc is not None:
            with contextlib.suppress(Exception):  # closing a dead link must not raise
                await self._nc.close()

    async def _prepare(self) -> None:
        """Run the on_connect hook until it succeeds, then let calls through."""
        while not self._closing and self._js is not None:
            try:
                if self._on_connect is not None:
                    await self._on_connect(self._js)
            except Exception as exc:  # any broker trouble (or a refused config): retry later
                _LOGGER.warning("NATS link %s: set-up failed, retrying: %s", self.name, exc)
                assert self._stopped is not None  # noqa: S101 - set in _main before this
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopped.wait(), 2 * _RETRY_S)
                continue
            self.ready.set()
            return

    async def _on_error(self, exc: Exception) -> None:
        _LOGGER.debug("NATS link %s: %s", self.name, exc)

    async def _on_disconnected(self) -> None:
        if not self._closing:
            _LOGGER.warning("NATS link %s: disconnected, reconnecting", self.name)

    async def _on_reconnected(self) -> None:
        url = self._nc.connected_url if self._nc is not None else None
        _LOGGER.info("NATS link %s: reconnected to %s", self.name, url.netloc if url else "?")
