"""What every colluding (omniscient) attack shares: its context, signature and checks.

A colluding attack runs where all Byzantine devices of a round can pool what they see:
in the simulator, or coordinator-side in a hardware-in-the-loop rig. It receives the
honest updates of the round and returns the vectors the Byzantine devices send. It never
runs on a real agent (a device sees only its own data).

The interface
-------------
::

    attack(honest, num_byzantine, context) -> forged

``honest``
    float32 array ``(h, d)``: the honest updates (deltas) of the round's sampled cohort,
    ``h >= 1``.
``num_byzantine``
    ``f >= 0``: how many Byzantine devices are in the cohort (how many rows to return).
``context``
    A :class:`CollusionContext`.
``forged``
    float32 array ``(f, d)``: row ``j`` is what Byzantine device ``j`` sends.

Sign convention. ByzFL, the epfml code and Shejwalkar & Houmansadr write attacks over
gradients ``g``; byzedge updates are deltas ``u = x_local - x_global`` and the coordinator
steps ``x <- x + server_learning_rate * aggregate``, so a paper's ``g`` is ``-u``. The
formulas here are applied to the vectors as given (deltas). Where a formula is
sign-equivariant (IPM ``-eps mu``, min-max/min-sum with ``unit_vec`` or ``sign``
perturbation, mimic) this is exactly the paper's attack; ALIE ``mu - z sigma`` and the
``std`` perturbation use a sign-invariant ``sigma``, so they are the paper's vector
mirrored through the mean (the same distance off it, on the other side), which is as
harmful against rules that treat both sides alike (median, trimmed mean, Krum,
clipping). Shift-back reads the model itself and states its conversion.

A user's own attack plugs in as ``"module:function"`` (see :mod:`byzedge.faults.omniscient.plugin`)
with exactly this signature, plus optional keyword-only hyperparameters that a plan's
``params`` fill.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Protocol

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "AggregateFn",
    "CollusionContext",
    "ColludingAttack",
    "OmniscientAttack",
    "check_inputs",
    "honest_mean",
    "honest_std",
    "tile",
]

AggregateFn = Callable[[NDArray[np.float32]], NDArray[np.float32]]


@dataclass(frozen=True, slots=True)
class CollusionContext:
    """What the colluding devices know about the round besides the honest updates.

    Attributes
    ----------
    round:
        The round number ``k``.
    global_params:
        The global model ``x^k`` (flat float32, read-only).
    initial_params:
        The model the fleet started from, ``x^0`` (shift-back pulls toward it).
    num_sampled:
        ``n``, the size of the round's sampled cohort, honest and Byzantine together
        (``h + f`` when the attack is given the cohort's honest updates).
    rng:
        A generator owned by the caller (no attack touches a global RNG).
    aggregate:
        The deployed defense as a pure function ``(n, d) float32 -> (d,) float32`` that
        does not change the defense's state, or ``None`` when unknown. Required by the
        ``optimal-*`` attacks.
    server_learning_rate:
        ``eta`` in the coordinator step ``x^{k+1} = x^k + eta * aggregate``.
    """

    round: int
    global_params: NDArray[np.float32]
    initial_params: NDArray[np.float32]
    num_sampled: int
    rng: np.random.Generator
    aggregate: AggregateFn | None = None
    server_learning_rate: float = 1.0


class ColludingAttack(Protocol):
    """Anything with the colluding-attack signature (a registry class or a plug-in)."""

    def __call__(
        self, honest: NDArray[np.float32], num_byzantine: int, context: CollusionContext
    ) -> NDArray[np.float32]:
        """Return the ``(num_byzantine, d)`` float32 vectors the Byzantine devices send."""
        ...


def check_inputs(
    name: str, honest: NDArray[np.floating], num_byzantine: int, context: CollusionContext
) -> NDArray[np.float32]:
    """Validate the call and return ``honest`` as a float32 ``(h, d)`` array.

    Raises
    ------
    ValueError
        For a non-2-D or empty ``honest``, a negative ``num_byzantine``, or a cohort size
        smaller than ``num_byzantine``.
    """
    matrix = np.asarray(honest, dtype=np.float32)
    if matrix.ndim != 2 or matrix.shape[0] < 1:
        msg = f"{name}: honest must have shape (h >= 1, d), got {matrix.shape}"
        raise ValueError(msg)
    if isinstance(num_byzantine, bool) or int(num_byzantine) != num_byzantine or num_byzantine < 0:
        msg = f"{name}: num_byzantine must be an integer >= 0, got {num_byzantine!r}"
        raise ValueError(msg)
    if context.num_sampled < num_byzantine:
        msg = (
            f"{name}: num_sampled={context.num_sampled} is smaller than "
            f"num_byzantine={num_byzantine}"
        )
        raise ValueError(msg)
    return matrix


def honest_mean(honest: NDArray[np.float32]) -> NDArray[np.float64]:
    """Coordinate-wise mean ``mu`` of the honest rows, in float64."""
    mean: NDArray[np.float64] = honest.astype(np.float64).mean(axis=0)
    return mean


def honest_std(honest: NDArray[np.float32]) -> NDArray[np.float64]:
    """Coordinate-wise unbiased std ``sigma`` (``ddof=1``) of the honest rows; 0 if ``h = 1``."""
    if honest.shape[0] < 2:
        return np.zeros(honest.shape[1], dtype=np.float64)
    std: NDArray[np.float64] = honest.astype(np.float64).std(axis=0, ddof=1)
    return std


def tile(vector: NDArray[np.floating], count: int) -> NDArray[np.float32]:
    """Return ``count`` float32 copies of ``vector`` as rows (all Byzantines send it)."""
    row = np.asarray(vector, dtype=np.float32)
    return np.tile(row, (count, 1)).astype(np.float32, copy=False)


class OmniscientAttack(ABC):
    """Base class of the registered colluding attacks.

    Subclasses set :attr:`name` (the permanent registry name), validate their
    hyperparameters in ``__init__`` (raising ``ValueError`` naming the parameter and the
    value) and implement :meth:`_forge`.
    """

    name: ClassVar[str]

    @abstractmethod
    def _forge(
        self, honest: NDArray[np.float32], num_byzantine: int, context: CollusionContext
    ) -> NDArray[np.float32]:
        """Return the ``(num_byzantine, d)`` forged vectors; inputs already checked."""

    def __call__(
        self, honest: NDArray[np.float32], num_byzantine: int, context: CollusionContext
    ) -> NDArray[np.float32]:
        """Return what the ``num_byzantine`` colluding devices send this round.

        Parameters
        ----------
        honest:
            float32 ``(h, d)``, the honest updates of the sampled cohort (``h >= 1``).
        num_byzantine:
            ``f >= 0``, the Byzantine devices of the cohort.
        context:
            The round (see :class:`CollusionContext`).

        Returns
        -------
        numpy.ndarray
            float32 ``(f, d)``.
        """
        matrix = check_inputs(self.name, honest, num_byzantine, context)
        count = int(num_byzantine)
        if count == 0:
            return np.zeros((0, matrix.shape[1]), dtype=np.float32)
        forged = np.asarray(self._forge(matrix, count, context), dtype=np.float32)
        if forged.shape != (count, matrix.shape[1]):  # pragma: no cover - programming error
            msg = f"{self.name} produced shape {forged.shape}, expected {(count, matrix.shape[1])}"
            raise AssertionError(msg)
        return forged

    def __repr__(self) -> str:
        params = ", ".join(
            f"{key}={value!r}" for key, value in vars(self).items() if not key.startswith("_")
        )
        return f"{type(self).__name__}({params})"
