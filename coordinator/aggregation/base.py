"""What every aggregation rule shares: result types, the protocol, errors and input checks.

An aggregation rule turns the ``n`` updates of one round, a float32 matrix of shape
``(n, d)``, and optional non-negative weights of shape ``(n,)`` (reputations, sample
counts) into one float32 vector of shape ``(d,)``.

Exceptions::

    AggregationError            base of every failure that is not a malformed input
    ├── BreakdownError          the rule's breakdown condition fails for this round
    │                           (too few updates for the number of Byzantines it must tolerate)
    └── StreamingUnavailableError
                                the rule cannot aggregate update by update this round
                                (use the batch call instead)

Malformed inputs (wrong shape, NaN or Inf, negative weights) raise :class:`ValueError`;
ingest rejects such updates before they ever reach an aggregator, so here they are
programming errors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, TypeAlias

import numpy as np
from numpy.typing import ArrayLike, NDArray

from byzedge.coordinator.aggregation._kernels import all_finite

__all__ = [
    "AggregationDiagnostics",
    "AggregationError",
    "AggregationResult",
    "Aggregator",
    "BreakdownError",
    "DeviceAwareAggregator",
    "StatefulAggregator",
    "StreamingAggregator",
    "StreamingUnavailableError",
    "StreamPartial",
    "StreamSum",
    "UpdateMatrix",
    "UpdateVector",
    "Weights",
    "num_byzantine",
    "row_norms",
    "stream_dim_of",
    "unless_uniform",
    "check_partial",
    "validate_fraction",
    "validate_positive",
    "validate_positive_int",
    "validate_stream_dim",
    "validate_stream_update",
    "validate_stream_weight",
    "validate_updates",
    "validate_weights",
    "ensure_finite",
    "vector_from_state",
    "vector_to_state",
]

_STATE_VERSION = 1

UpdateMatrix: TypeAlias = NDArray[np.float32]
"""float32 array of shape ``(n, d)``: one update per row."""

UpdateVector: TypeAlias = NDArray[np.float32]
"""float32 array of shape ``(d,)``."""

Weights: TypeAlias = NDArray[np.float64]
"""float64 array of shape ``(n,)``, finite, non-negative, with a positive sum."""


class AggregationError(Exception):
    """Base class of the errors an aggregation rule raises on well-formed input."""


class BreakdownError(AggregationError):
    """The rule's breakdown condition fails: it cannot tolerate the Byzantines it assumes.

    Examples are a trimmed mean asked to drop ``b`` values from each side of ``n <= 2b``
    values, or Krum with ``n < 2f + 3``.
    """


class StreamingUnavailableError(AggregationError):
    """A streaming rule cannot aggregate update by update this round; call it in batch.

    Example: ``norm-clipping`` with an automatic radius (the median norm is unknown until
    every update has been seen), or ``clipping-vr`` with the median radius before any
    round has produced one.
    """


@dataclass(frozen=True, slots=True)
class AggregationDiagnostics:
    """Per-update signals a rule computes anyway; they feed anomaly scoring and audit.

    Attributes
    ----------
    selected:
        Indices of the updates the rule used, for selection rules (Krum, Multi-Krum,
        Bulyan); ``None`` for rules that use every update.
    scores:
        float64 ``(n,)``: the rule's own suspicion score per update (larger is more
        suspicious), e.g. Krum scores or distances to the reference; ``None`` if the rule
        has none.
    clip_factors:
        float64 ``(n,)`` in ``[0, 1]``: the factor each update (or its difference to the
        reference) was scaled by; ``None`` for rules that do not clip.
    clip_threshold:
        The clip radius ``τ`` the round used, for rules that report it (clipping-vr; the
        round summary's ``clip_threshold``); ``None`` otherwise.
    """

    selected: tuple[int, ...] | None = None
    scores: NDArray[np.float64] | None = None
    clip_factors: NDArray[np.float64] | None = None
    clip_threshold: float | None = None


@dataclass(frozen=True, slots=True)
class AggregationResult:
    """The outcome of one aggregation.

    Attributes
    ----------
    aggregate:
        float32 ``(d,)``: the aggregated update.
    diagnostics:
        What the rule learned about the individual updates on the way.
    """

    aggregate: UpdateVector
    diagnostics: AggregationDiagnostics = AggregationDiagnostics()


class Aggregator(Protocol):
    """A robust (or plain) aggregation rule with validated hyperparameters.

    Implementations validate their hyperparameters in ``__init__`` (``ValueError`` naming
    the parameter and the value) and check their breakdown condition at call time
    (:class:`BreakdownError`).
    """

    name: ClassVar[str]
    """Permanent registry name; it travels in configs and headers, so it never changes."""

    stateful: ClassVar[bool]
    """Whether the rule keeps state across rounds (then it is a :class:`StatefulAggregator`).

    The daemon persists such a rule's ``state_dict()`` after every round and restores it
    at start-up; a stateless rule has nothing to persist.
    """

    streaming: ClassVar[bool]
    """Whether the rule also takes a round update by update (then it is a
    :class:`StreamingAggregator`)."""

    needs_device_ids: ClassVar[bool]
    """Whether the batch call takes the rows' ``device_ids`` (then it is a
    :class:`DeviceAwareAggregator`): a rule that keeps state per device (clipping-vr's
    per-device references) must know whose update each row is."""

    def __call__(
        self, updates: UpdateMatrix, weights: ArrayLike | None = None
    ) -> AggregationResult:
        """Aggregate the float32 ``(n, d)`` updates, optionally weighted by ``(n,)`` weights."""
        ...


class DeviceAwareAggregator(Aggregator, Protocol):
    """An aggregator that is told which device each row comes from (``needs_device_ids``).

    The round engine passes the ``n`` distinct device ids, in row order, to every rule
    that declares ``needs_device_ids``; callers without ids (a probe on forged rows) pass
    ``None`` and get the rule's device-agnostic behaviour.
    """

    def __call__(
        self,
        updates: UpdateMatrix,
        weights: ArrayLike | None = None,
        *,
        device_ids: Sequence[str] | None = None,
    ) -> AggregationResult:
        """Aggregate as :meth:`Aggregator.__call__`, row ``i`` being ``device_ids[i]``'s."""
        ...


class StatefulAggregator(Aggregator, Protocol):
    """An aggregator whose output depends on earlier rounds (a reference or a centre).

    Its state round-trips through plain values (ints, floats, ``bytes``, ``None``) so the
    daemon can persist it with msgpack; never pickle.
    """

    def state_dict(self) -> dict[str, Any]:
        """Return the state as a dict of plain values."""
        ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state produced by :meth:`state_dict` (``ValueError`` if it is invalid)."""
        ...


class StreamingAggregator(Aggregator, Protocol):
    """An aggregator that can also take the updates of a round one at a time.

    The streaming path holds ``O(d)`` floats (plus ``O(n)`` scalars for the diagnostics),
    never the ``(n, d)`` matrix::

        rule.start(d)                        # optional: accumulate() starts lazily
        for update, weight, device in arrivals:
            rule.accumulate(update, weight, device_id=device)
        result = rule.finish()               # same result as rule(matrix, weights)

    ``finish()`` returns what the batch call on the same updates, in the same order, with
    the same weights returns (up to float rounding), whenever the rule's radius is known
    before the first update (each rule documents the cases where it is not). A stateful
    rule updates its state in ``finish()`` exactly as the batch call does.
    """

    def start(self, dim: int) -> None:
        """Open a round of ``dim``-dimensional updates, discarding any unfinished one.

        Raises
        ------
        StreamingUnavailableError
            When the rule cannot aggregate update by update this round.
        ValueError
            On ``dim < 1`` or a ``dim`` that contradicts the rule's state.
        """
        ...

    def accumulate(
        self, update: ArrayLike, weight: float = 1.0, device_id: str | None = None
    ) -> None:
        """Add one float32 ``(d,)`` update with a non-negative weight (``start`` if needed)."""
        ...

    def finish(self) -> AggregationResult:
        """Close the round and return its aggregate (``ValueError`` if nothing had weight)."""
        ...

    def partial(self) -> StreamPartial:
        """The open round's accumulator, to be merged into another instance's round.

        Sharded ingest (coordinator/cluster/): each ingest worker streams its share of a
        round's updates into its own instance (same configuration, same state) and sends
        :meth:`partial`; the leader's instance :meth:`merge` s them and calls
        :meth:`finish`. The round stays open here.

        Raises
        ------
        ValueError
            When no round is open.
        StreamingUnavailableError
            When this configuration cannot be merged exactly (each rule says when).
        """
        ...

    def merge(self, partial: StreamPartial) -> None:
        """Fold another instance's :meth:`partial` into the open round (``start`` if needed).

        Exact: the result of :meth:`finish` equals streaming every contribution here, up
        to the order of the float64 additions (each rule states its merge).

        Raises
        ------
        ValueError
            When ``partial`` is for another rule, dimension or radius, or repeats a device.
        """
        ...


def validate_stream_dim(dim: object) -> int:
    """Return ``dim`` as an int if it is an integer ``>= 1``, else raise ``ValueError``."""
    if isinstance(dim, bool) or not isinstance(dim, int | np.integer) or dim < 1:
        raise ValueError(f"dim must be an integer >= 1, got {dim!r}")
    return int(dim)


class StreamSum:
    """The ``O(d)`` core of a streamed round: ``sum_i w_i v_i`` in float64 and ``sum_i w_i``.

    Parameters
    ----------
    dim:
        ``d >= 1``.
    """

    def __init__(self, dim: int) -> None:
        self.dim = validate_stream_dim(dim)
        self.total = 0.0
        self.count = 0
        self._sum = np.zeros(self.dim)  # (d,) float64

    def add(self, vector: UpdateVector, weight: float, scale: float = 1.0) -> None:
        """Add ``weight * scale * vector`` to the sum and ``weight`` to the total.

        ``vector`` is already validated, shape ``(d,)``; ``scale`` is a clip factor.
        """
        self._sum += (weight * scale) * vector.astype(np.float64)
        self.total += weight
        self.count += 1

    def mean(self, rule: str) -> UpdateVector:
        """Return ``sum_i w_i v_i / sum_i w_i`` as float32 ``(d,)``.

        Raises
        ------
        ValueError
            If nothing was added or the weights sum to 0.
        """
        if self.count == 0:
            raise ValueError(f"{rule}: no updates were accumulated")
        if not self.total > 0:
            raise ValueError("weights must have a positive sum, got all zeros")
        return np.asarray(self._sum / self.total, dtype=np.float32)

    def sum_vector(self) -> NDArray[np.float64]:
        """A copy of the float64 ``(d,)`` running sum ``sum_i w_i v_i``."""
        return self._sum.copy()

    def merge(self, vector: NDArray[np.float64], total: float, count: int) -> None:
        """Add another stream's sum, weight total and count (``S += S'``, ``W += W'``)."""
        self._sum += vector
        self.total += total
        self.count += count


@dataclass(frozen=True, slots=True)
class StreamPartial:
    """The accumulator of an open streamed round, for an exact merge into another instance.

    A streaming rule whose aggregate is a sum (``mean``, ``norm-clipping``, ``clipping-vr``
    with a known radius) keeps float64 running sums and per-contribution scalars; a
    partial is a copy of them. Sums add and lists concatenate, so merging the partials of
    disjoint shares of a round gives what one instance streaming every update would have
    kept, up to the order of the float64 additions.

    Attributes
    ----------
    rule:
        Registry name of the rule that made it.
    dim:
        ``d``.
    count:
        Contributions accumulated.
    total:
        ``sum_i w_i``.
    radius:
        The clip radius every contribution was clipped with (``None`` for ``mean``); a
        merge refuses a partial clipped with another radius.
    vectors:
        Named float64 ``(d,)`` sums (``"sum"``; clipping-vr's ``"base"`` and ``"step"``).
    scalars:
        Named float64 ``(count,)`` per-contribution values in accumulation order (weights,
        norms, distances, clip factors: what the rule's diagnostics and state need).
    devices:
        Ids of the contributions given with one, in order (a merge refuses a device the
        round already holds, where the rule tracks devices).
    """

    rule: str
    dim: int
    count: int
    total: float
    radius: float | None
    vectors: Mapping[str, NDArray[np.float64]]
    scalars: Mapping[str, NDArray[np.float64]]
    devices: tuple[str, ...] = ()


def check_partial(
    partial: StreamPartial,
    rule: str,
    dim: int,
    *,
    vectors: Sequence[str],
    scalars: Sequence[str] = (),
    radius: float | None = None,
) -> None:
    """Raise ``ValueError`` unless ``partial`` fits a round of ``rule`` over ``dim``.

    It must name ``rule``, have dimension ``dim``, hold exactly the named float64 ``(d,)``
    ``vectors`` and ``(count,)`` ``scalars``, finite, a finite total ``>= 0`` and the same
    clip ``radius``.
    """
    if partial.rule != rule:
        raise ValueError(f"{rule}: cannot merge a partial of {partial.rule!r}")
    if partial.dim != dim:
        raise ValueError(f"{rule}: cannot merge a partial of dim {partial.dim} into dim {dim}")
    if partial.radius != radius:
        raise ValueError(
            f"{rule}: partial clipped with radius {partial.radius!r}, this round uses {radius!r}"
        )
    if set(partial.vectors) != set(vectors) or set(partial.scalars) != set(scalars):
        raise ValueError(f"{rule}: partial holds the wrong sums")
    for vector in partial.vectors.values():
        if vector.shape != (dim,) or not np.isfinite(vector).all():
            raise ValueError(f"{rule}: partial sums must be finite float64 ({dim},)")
    for values in partial.scalars.values():
        if values.shape != (partial.count,) or not np.isfinite(values).all():
            raise ValueError(f"{rule}: partial scalars must be finite, one per contribution")
    if partial.count < 0 or not (np.isfinite(partial.total) and partial.total >= 0):
        raise ValueError(f"{rule}: partial count and total must be >= 0")


def stream_dim_of(update: ArrayLike) -> int:
    """Return the ``d`` of a first streamed update (``ValueError`` unless it is ``(d,)``)."""
    shape = np.shape(update)
    if len(shape) != 1 or shape[0] < 1:
        raise ValueError(f"update must have shape (d,) with d >= 1, got shape {shape}")
    return int(shape[0])


def validate_stream_update(update: ArrayLike, dim: int) -> UpdateVector:
    """Return one streamed update as float32 ``(dim,)`` after checking it.

    Raises
    ------
    ValueError
        On a shape other than ``(dim,)``, a non-real dtype, or NaN/Inf.
    """
    array = np.asarray(update)
    if array.shape != (dim,):
        raise ValueError(f"update must have shape ({dim},), got shape {array.shape}")
    row: UpdateVector = validate_updates(array.reshape(1, dim))[0]
    return row


def validate_stream_weight(weight: object) -> float:
    """Return one streamed update's weight as a float if it is finite and ``>= 0``."""
    number = _as_number("weight", weight)
    if not (np.isfinite(number) and number >= 0):
        raise ValueError(f"weight must be a finite number >= 0, got {weight!r}")
    return number


def validate_updates(updates: ArrayLike, *, check_finite: bool = True) -> UpdateMatrix:
    """Return ``updates`` as a float32 ``(n, d)`` array after checking it.

    Parameters
    ----------
    updates:
        Real-valued array of shape ``(n, d)`` with ``n >= 1`` and ``d >= 1``.
    check_finite:
        ``False`` skips the NaN/Inf test, for a rule that folds it into a pass it makes
        anyway and then calls :func:`ensure_finite` on what that pass produced.

    Returns
    -------
    numpy.ndarray
        float32 ``(n, d)``; the input itself when it already is C-contiguous float32.

    Raises
    ------
    ValueError
        On a wrong number of dimensions, an empty axis, a non-real dtype, or NaN/Inf
        (also after the cast to float32, so values beyond float32's range fail too).
    """
    array = np.asarray(updates)
    if array.ndim != 2:
        raise ValueError(f"updates must have shape (n, d), got shape {array.shape}")
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f"updates must have n >= 1 and d >= 1, got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"updates must be real numbers, got dtype {array.dtype}")
    with np.errstate(over="ignore"):  # out-of-range values become Inf, rejected just below
        matrix = np.ascontiguousarray(array, dtype=np.float32)
    if check_finite and not all_finite(matrix):
        raise ValueError(NON_FINITE_MESSAGE)
    return matrix


NON_FINITE_MESSAGE = "updates contain NaN or Inf (or values beyond float32's range)"


def ensure_finite(derived: ArrayLike, updates: UpdateMatrix) -> bool:
    """Finish a finiteness test folded into a rule's own pass over ``updates``.

    ``derived`` is something the rule computed from every entry of ``updates`` such that
    a NaN or Inf entry always makes it non-finite (a weighted sum with non-zero float
    coefficients, float64 squared norms, a Gram matrix). Returns ``True`` when ``derived``
    is finite (then so is every entry). Otherwise runs the exact test: raises
    ``ValueError`` if an entry is NaN or Inf, and returns ``False`` if all entries are
    finite (``derived`` overflowed; the caller recomputes it more carefully).
    """
    if np.isfinite(derived).all():
        return True
    if not all_finite(updates):
        raise ValueError(NON_FINITE_MESSAGE)
    return False


def validate_weights(weights: ArrayLike | None, n: int) -> Weights | None:
    """Return ``weights`` as float64 ``(n,)`` after checking it, or ``None``.

    Parameters
    ----------
    weights:
        ``None`` (all updates count equally) or ``n`` finite, non-negative numbers with a
        positive sum. Only ratios matter.
    n:
        The number of updates.

    Raises
    ------
    ValueError
        On a wrong shape, NaN/Inf, a negative weight or an all-zero vector.
    """
    if weights is None:
        return None
    vector = np.asarray(weights, dtype=np.float64)
    if vector.shape != (n,):
        raise ValueError(f"weights must have shape ({n},), got shape {vector.shape}")
    if not np.isfinite(vector).all():
        raise ValueError("weights contain NaN or Inf")
    if (vector < 0).any():
        raise ValueError(f"weights must be non-negative, got minimum {vector.min()!r}")
    if not vector.sum() > 0:
        raise ValueError("weights must have a positive sum, got all zeros")
    return vector


def unless_uniform(weights: Weights | None) -> Weights | None:
    """Return ``None`` when every weight is the same (the unweighted rule), else ``weights``.

    Order-statistic rules (median, trimmed mean, Bulyan's window) give the same answer for
    equal weights as without weights, and their unweighted paths are much faster. The
    coordinator passes reputations, which stay equal until some device is flagged.
    """
    if weights is not None and bool((weights == weights[0]).all()):
        return None
    return weights


def row_norms(matrix: NDArray[np.floating[Any]]) -> NDArray[np.float64]:
    """Return the L2 norm of each row of ``matrix`` (shape ``(n, d)``) as float64 ``(n,)``.

    The squares are accumulated in float64, so float32 rows of norm beyond ~1.8e19 do not
    overflow to Inf.
    """
    squares: NDArray[np.float64] = np.einsum("ij,ij->i", matrix, matrix, dtype=np.float64)
    return np.sqrt(squares)  # (n,)


def _as_number(name: str, value: object) -> float:
    """Return ``value`` as a float, or raise ``ValueError`` naming the parameter."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"{name} must be a number, got {value!r}")
    return float(value)


def validate_fraction(name: str, value: object, *, upper: float = 0.5) -> float:
    """Return ``value`` as a float if ``0 <= value < upper``, else raise ``ValueError``."""
    number = _as_number(name, value)
    if not 0.0 <= number < upper:
        raise ValueError(f"{name} must be in [0, {upper}), got {value!r}")
    return number


def validate_positive(name: str, value: object) -> float:
    """Return ``value`` as a float if it is finite and ``> 0``, else raise ``ValueError``."""
    number = _as_number(name, value)
    if not (np.isfinite(number) and number > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return number


def validate_positive_int(name: str, value: object) -> int:
    """Return ``value`` as an int if it is an integer ``>= 1``, else raise ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def num_byzantine(n: int, max_byzantine_fraction: float) -> int:
    """Return ``f = floor(max_byzantine_fraction * n)``, the Byzantines a rule must tolerate."""
    # A tiny slack so that e.g. 0.2 * 10 = 2.0000000000000004 or 1.9999999999999998 gives 2.
    return int(np.floor(max_byzantine_fraction * n + 1e-9))


def vector_to_state(vector: UpdateVector | None, rounds: int, key: str) -> dict[str, Any]:
    """Encode a stateful rule's vector (reference, centre) and round count as plain values.

    Returns ``{"version": 1, "rounds": rounds, "dim": d, key: bytes | None}`` where
    ``key`` (e.g. ``"reference"``) holds the little-endian float32 bytes of the vector
    (``None``, with ``dim`` 0, before the first round).
    """
    return {
        "version": _STATE_VERSION,
        "rounds": rounds,
        "dim": 0 if vector is None else int(vector.shape[0]),
        key: None if vector is None else vector.astype("<f4").tobytes(),
    }


def vector_from_state(
    rule: str, state: Mapping[str, Any], key: str
) -> tuple[UpdateVector | None, int]:
    """Decode what :func:`vector_to_state` produced into ``(vector, rounds)``.

    Raises
    ------
    ValueError
        On an unknown version, a negative round count, a byte length that does not match
        ``dim``, or a non-finite vector; the message starts with ``"{rule} state"``.
    """
    version = state.get("version")
    if version != _STATE_VERSION:
        raise ValueError(f"{rule} state version must be {_STATE_VERSION}, got {version!r}")
    rounds = state.get("rounds")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
        raise ValueError(f"{rule} state rounds must be an integer >= 0, got {rounds!r}")
    dim = state.get("dim")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 0:
        raise ValueError(f"{rule} state dim must be an integer >= 0, got {dim!r}")
    raw = state.get(key)
    if raw is None:
        if dim != 0:
            raise ValueError(f"{rule} state has dim={dim} but no {key}")
        return None, rounds
    if not isinstance(raw, bytes | bytearray | memoryview) or dim < 1:
        raise ValueError(f"{rule} state {key} must be float32 bytes with dim >= 1")
    if len(raw) != 4 * dim:
        raise ValueError(f"{rule} state {key} has {len(raw)} bytes, expected {4 * dim}")
    vector = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    if not np.isfinite(vector).all():
        raise ValueError(f"{rule} state {key} contains NaN or Inf")
    return vector, rounds
