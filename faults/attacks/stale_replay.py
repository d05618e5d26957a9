"""``stale-replay``: resend an update computed in an earlier round."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
from numpy.typing import NDArray

from byzedge.edge_agent.seams import RoundContext
from byzedge.faults.attacks.base import UpdateAttack
from byzedge.faults.errors import FaultConfigError

__all__ = ["StaleReplay"]

ReplayMode = Literal["first", "previous"]
_MODES: tuple[ReplayMode, ...] = ("first", "previous")


class StaleReplay(UpdateAttack):
    """Stale update: send ``u_{k'}`` (an earlier round's update) instead of ``u_k``.

    With ``mode="first"`` the device keeps the first update it ever computed and replays it
    in every active round (``k' = k_0``); with ``mode="previous"`` it sends the update of the
    round before (``k' = k - 1``, one round late). The replay is re-signed with a fresh
    nonce and counter, so it passes the protocol's replay checks: it is stale *content*,
    not a replayed *message*.

    Parameters
    ----------
    mode:
        ``"first"`` (default) or ``"previous"``.
    start_round, probability, seed:
        See :class:`~faults.attacks.base.UpdateAttack`.

    Notes
    -----
    The stage records every update it sees, active or not; before anything is recorded
    (the very first call) the honest update passes through. A change of dimension (a new
    model) drops what was recorded. Against variance-reduced methods (Byz-VR-MARINA) stale
    content is harmful because the server adds it to ``g^k``. The recorded update is the
    stage's state (:meth:`state_dict`).
    """

    name: ClassVar[str] = "stale-replay"

    def __init__(
        self,
        *,
        mode: ReplayMode = "first",
        start_round: int = 0,
        probability: float = 1.0,
        seed: int = 0,
    ) -> None:
        if mode not in _MODES:
            msg = f"mode must be one of {', '.join(_MODES)}, got {mode!r}"
            raise FaultConfigError(msg)
        self.mode: ReplayMode = mode
        super().__init__(start_round=start_round, probability=probability, seed=seed)
        self._stored: NDArray[np.float32] | None = None

    def _forge(self, update: NDArray[np.float32], context: RoundContext) -> NDArray[np.float32]:
        stored = self._stored
        if stored is None or stored.shape != update.shape:
            return update
        return stored.copy()

    def __call__(self, update: NDArray[np.float32], context: RoundContext) -> NDArray[np.float32]:
        """Return the recorded update when active (the input otherwise); record the input.

        Parameters
        ----------
        update:
            The honest float32 update of shape ``(d,)``.
        context:
            The round being shaped.

        Returns
        -------
        numpy.ndarray
            The replayed update, or ``update`` itself.
        """
        if self._stored is not None and self._stored.shape != update.shape:
            self._stored = None
        sent = super().__call__(update, context)
        if self._stored is None or self.mode == "previous":
            self._stored = np.array(update, dtype=np.float32, copy=True)
        return sent

    def state_dict(self) -> dict[str, Any]:
        """Return the recorded update (``None`` before the first call) for persistence."""
        return {"stored": None if self._stored is None else self._stored.copy()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        stored = state.get("stored")
        self._stored = None if stored is None else np.array(stored, dtype=np.float32, copy=True)
