"""Which state store a leader uses: its own file, or one its standbys can reach.

A leader on one machine (``[cluster] broker = "mosquitto"``, a file-lock lease) shares
its state directory with its standbys, so the plain file is enough. On a NATS cluster a
standby may run on another machine: the state is also kept in the cluster
(:class:`~byzedge.coordinator.cluster.nats_state.JetStreamStateStore`, registered by
:func:`~byzedge.coordinator.cluster.nats_factory.register_nats` as the NATS source and
lease are).
"""

from __future__ import annotations

from collections.abc import Callable

from byzedge.coordinator.config import CoordinatorConfig
from byzedge.coordinator.state import CoordinatorStateStore, StateStore

__all__ = ["STATE_STORES", "build_state_store"]


def _local(config: CoordinatorConfig, _epoch: int) -> CoordinatorStateStore:
    return StateStore(config.state_dir)


STATE_STORES: dict[str, Callable[[CoordinatorConfig, int], CoordinatorStateStore]] = {
    "mosquitto": _local,
}
"""``[cluster] broker`` -> the leader's state store, given its config and fencing epoch."""


def build_state_store(config: CoordinatorConfig, epoch: int) -> CoordinatorStateStore:
    """The state store of a leader of ``config``'s broker, fenced by ``epoch``.

    Raises
    ------
    ValueError
        When no store is registered for ``[cluster] broker``.
    """
    factory = STATE_STORES.get(config.cluster.broker)
    if factory is None:
        msg = f"[cluster] broker = {config.cluster.broker!r} has no state store in this build"
        raise ValueError(msg)
    return factory(config, epoch)
