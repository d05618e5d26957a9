"""``mimic``: every Byzantine device copies one chosen honest device."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from byzedge.faults._validate import check_non_negative_int
from byzedge.faults.omniscient.base import CollusionContext, OmniscientAttack, honest_mean, tile

__all__ = ["Mimic"]


class Mimic(OmniscientAttack):
    r"""Mimic: all Byzantines send ``g_{i*}``, one honest device's update.

    Karimireddy, He & Jaggi, "Byzantine-Robust Learning on Heterogeneous Datasets via
    Bucketing", ICLR 2022.

    Unless ``target`` fixes ``i*``, the attackers spend the first ``warmup`` calls
    estimating the top principal direction ``z`` of the honest updates and choose

    .. math:: i^* = \arg\max_i \langle g_i, z \rangle

    then copy that device forever. Each warm-up call takes the top right-singular vector
    ``v`` of the centred honest matrix, aligns its sign with ``z`` and sets
    ``z <- (z + v) / ||z + v||`` (a running estimate, as the paper's power iteration).

    Parameters
    ----------
    warmup:
        Calls (rounds) spent estimating ``z`` (``>= 0``, default 1). With 0 the first
        call's estimate is used.
    target:
        A fixed honest row index ``i*`` (``>= 0``) instead of the estimate.

    Notes
    -----
    Over-represents one device's data: under non-IID data that biases every rule that
    trusts the majority (median, Krum), while the copies are honest-looking. Rows are
    positions in ``honest``; with partial participation the simulator's order is by
    device id, and ``i*`` is taken modulo ``h``. The estimate is the attack's state
    (:meth:`state_dict`).
    """

    name: ClassVar[str] = "mimic"

    def __init__(self, *, warmup: int = 1, target: int | None = None) -> None:
        self.warmup = check_non_negative_int("warmup", warmup)
        self.target = None if target is None else check_non_negative_int("target", target)
        self._direction: NDArray[np.float64] | None = None
        self._chosen: int | None = None
        self._calls = 0

    @property
    def chosen(self) -> int | None:
        """The honest row copied so far (``None`` before the first call)."""
        return self.target if self.target is not None else self._chosen

    def _estimate(self, honest: NDArray[np.float32]) -> int:
        rows = honest.astype(np.float64)
        centred = rows - honest_mean(honest)
        if honest.shape[0] > 1 and np.any(centred):
            top = np.linalg.svd(centred, full_matrices=False)[2][0]
        else:
            top = np.zeros(honest.shape[1], dtype=np.float64)
        if self._direction is None or self._direction.shape != top.shape:
            combined = top
        else:
            if float(top @ self._direction) < 0.0:
                top = -top
            combined = self._direction + top
        norm = float(np.linalg.norm(combined))
        if norm > 0.0:
            self._direction = combined / norm
        return int(np.argmax(rows @ self._direction)) if self._direction is not None else 0

    def _forge(
        self, honest: NDArray[np.float32], num_byzantine: int, context: CollusionContext
    ) -> NDArray[np.float32]:
        if self.target is None and (self._chosen is None or self._calls < self.warmup):
            self._chosen = self._estimate(honest)
        self._calls += 1
        chosen = self.chosen
        index = 0 if chosen is None else chosen % honest.shape[0]
        return tile(honest[index], num_byzantine)

    def state_dict(self) -> dict[str, Any]:
        """Return the estimate, the chosen row and the call count."""
        return {
            "direction": None if self._direction is None else self._direction.copy(),
            "chosen": self._chosen,
            "calls": self._calls,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        direction = state.get("direction")
        self._direction = None if direction is None else np.array(direction, dtype=np.float64)
        chosen = state.get("chosen")
        self._chosen = None if chosen is None else int(chosen)
        self._calls = int(state.get("calls", 0))
