"""``[cluster] broker = "nats"``: the JetStream update source, the KV leader lease, the state.

:func:`register_nats` adds them to the registries the ingest worker and the leader pick
from (``SOURCES`` in :mod:`~byzedge.coordinator.cluster.worker`, ``LEASES`` in
:mod:`~byzedge.coordinator.cluster.lease`, ``STATE_STORES`` in
:mod:`~byzedge.coordinator.cluster.shared_state`); the commands call it when a config
names the NATS broker, so the mosquitto path never imports nats-py.

Both connect to ``[cluster] nats_servers``; ``tls://`` servers get the client certificate
of the process (the worker's ``[mqtt.tls]`` with ``[cluster]``'s worker certificate, the
leader's ``[mqtt.tls]``).
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

from byzedge.coordinator.cluster.contracts import LeaderLease, UpdateSource
from byzedge.coordinator.state import CoordinatorStateStore, StateStore

if TYPE_CHECKING:
    from byzedge.coordinator.config import CoordinatorConfig
    from byzedge.daemon.mqtt import MqttSettings, TlsSettings

__all__ = ["nats_lease", "nats_source", "nats_state_store", "register_nats"]

# A worker acks a message once its partial is with the broker: a flush (partial_flush_s)
# plus a PUBACK that may take up to the worker's 30 s resend wait. Twice that, so a slow
# worker is not robbed of messages it is about to ack.
_ACK_WAIT_S = 60.0


def _servers(config: CoordinatorConfig) -> list[str]:
    servers = list(config.cluster.nats_servers)
    if not servers:
        msg = "[cluster] broker = 'nats' needs nats_servers (nats://host:port of every node)"
        raise ValueError(msg)
    return servers


def _replicas(servers: list[str]) -> int:
    # R3 survives one node of three; a smaller cluster can hold only as many replicas.
    return min(3, len(servers))


def _tls(servers: list[str], tls: TlsSettings | None) -> ssl.SSLContext | None:
    if not any(server.startswith("tls://") for server in servers):
        return None
    if tls is None:
        msg = "[cluster] nats_servers use tls:// but [mqtt.tls] is not set"
        raise ValueError(msg)
    try:
        context = ssl.create_default_context(cafile=str(tls.ca_file))
        if tls.cert_file is not None:
            key = str(tls.key_file) if tls.key_file else None
            context.load_cert_chain(str(tls.cert_file), key)
    except (OSError, ssl.SSLError) as exc:
        msg = f"cannot load the TLS files for the NATS servers: {exc}"
        raise ValueError(msg) from exc
    return context


def _require_nats_py() -> None:
    try:
        import nats  # noqa: F401, PLC0415
    except ImportError as exc:
        msg = "[cluster] broker = 'nats' needs nats-py: pip install 'byzedge[coordinator,cluster]'"
        raise ValueError(msg) from exc


def nats_source(config: CoordinatorConfig, settings: MqttSettings, name: str) -> UpdateSource:
    """Worker ``name``'s share of the fleet's JetStream update stream.

    Raises
    ------
    ValueError
        When ``nats_servers`` is empty or its TLS files cannot be loaded.
    """
    _require_nats_py()
    from byzedge.coordinator.cluster.nats_source import (  # noqa: PLC0415 - needs nats-py
        JetStreamSettings,
        JetStreamUpdateSource,
    )

    servers = _servers(config)
    stream = JetStreamSettings(
        replicas=_replicas(servers),
        max_message_bytes=max(config.max_update_bytes, settings.max_message_bytes),
        ack_wait_s=_ACK_WAIT_S,
    )
    tls = _tls(servers, settings.tls)
    return JetStreamUpdateSource(
        servers, config.fleet, stream, name=f"{config.fleet}-{name}", tls=tls
    )


def nats_lease(config: CoordinatorConfig) -> LeaderLease:
    """The fleet's leader lease in the cluster's key-value store.

    Raises
    ------
    ValueError
        When ``nats_servers`` is empty, its TLS files cannot be loaded, or
        ``leader_lease_s`` is below 15 s.
    """
    _require_nats_py()
    from byzedge.coordinator.cluster.nats_lease import KvLeaderLease  # noqa: PLC0415

    servers = _servers(config)
    return KvLeaderLease(
        servers,
        config.fleet,
        ttl_s=config.cluster.leader_lease_s,
        replicas=_replicas(servers),
        tls=_tls(servers, config.mqtt.tls),
    )


def nats_state_store(config: CoordinatorConfig, epoch: int) -> CoordinatorStateStore:
    """The leader's state: its file, and a copy in the cluster its standbys resume from.

    Raises
    ------
    ValueError
        When ``nats_servers`` is empty or its TLS files cannot be loaded.
    """
    _require_nats_py()
    from byzedge.coordinator.cluster.nats_state import JetStreamStateStore  # noqa: PLC0415

    servers = _servers(config)
    return JetStreamStateStore(
        StateStore(config.state_dir),
        servers,
        config.fleet,
        epoch=epoch,
        replicas=_replicas(servers),
        tls=_tls(servers, config.mqtt.tls),
    )


def register_nats() -> None:
    """Make ``broker = "nats"`` known to the worker's and the leader's registries."""
    from byzedge.coordinator.cluster.lease import LEASES  # noqa: PLC0415
    from byzedge.coordinator.cluster.shared_state import STATE_STORES  # noqa: PLC0415
    from byzedge.coordinator.cluster.worker import SOURCES  # noqa: PLC0415

    SOURCES.setdefault("nats", nats_source)
    LEASES.setdefault("nats", nats_lease)
    STATE_STORES.setdefault("nats", nats_state_store)
