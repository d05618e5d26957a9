"""Clipping of differences to a reference (clipping-VR), the default defence.

Malinovsky, Richtárik, Horváth, Gorbunov, "Byzantine Robustness and Partial Participation
Can Be Achieved at Once: Just Clip Gradient Differences", NeurIPS 2024 (arXiv 2306.03240),
heuristic eq. (10): ``g^k = g^{k-1} + Agg({clip_λ(g_i^k - g^{k-1})})``, with the clipping
done by the server and ``Agg`` the (weighted) mean, as in their Byz-VR-MARINA-PP+ variant.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from byzedge.coordinator.aggregation._kernels import clipped_step, squared_distances_to
from byzedge.coordinator.aggregation.base import (
    AggregationDiagnostics,
    AggregationResult,
    StreamingUnavailableError,
    StreamPartial,
    UpdateMatrix,
    UpdateVector,
    Weights,
    check_partial,
    ensure_finite,
    row_norms,
    stream_dim_of,
    validate_positive,
    validate_stream_dim,
    validate_stream_update,
    validate_stream_weight,
    validate_updates,
    validate_weights,
    vector_from_state,
    vector_to_state,
)

__all__ = [
    "automatic_radius",
    "RADIUS_MODES",
    "REFERENCE_MODES",
    "ClippingVR",
    "clip_factors",
    "clipped_difference_mean",
]

RADIUS_MODES: Final = ("median", "model-step")
"""Values of ``radius``: how the clip radius is chosen when ``clip_threshold`` is unset."""

REFERENCE_MODES: Final = ("global", "per-device")
"""Values of ``reference``: what each update's difference is taken against."""

_STATE_VERSION = 2  # 1: reference only; 2: + radius, device_references


def automatic_radius(samples_cohorts: bool) -> Literal["median", "model-step"]:
    """Return the radius mode for a deployment that leaves ``radius`` unset.

    ``"model-step"`` when each round aggregates a sampled cohort (the coordinator's
    ``devices_per_round`` or ``participation_rate``), ``"median"`` otherwise. In a
    sampled cohort the Byzantines sometimes hold the majority and then set the median
    distance, hence the median radius; the model-step radius does not depend on the
    round's updates (Byz-VR-MARINA-PP). With every device in every round the median
    radius needs no tuning and, unlike the model-step one, keeps training on
    heterogeneous data (benchmarks/results/robustness.md, sections 4 and 7).
    """
    return "model-step" if samples_cohorts else "median"


def clip_factors(norms: NDArray[np.float64], threshold: float) -> NDArray[np.float64]:
    """Return ``min(1, threshold / norm_i)`` per entry, with 1 for a zero norm (``clip(0) = 0``)."""
    safe = np.where(norms > 0, norms, 1.0)  # (n,)
    return np.where(norms > threshold, threshold / safe, 1.0)


def clipped_difference_mean(
    updates: UpdateMatrix,
    reference: NDArray[np.float32],
    threshold: float | None,
    multiplier: float = 1.0,
    weights: Weights | None = None,
) -> tuple[UpdateVector, NDArray[np.float64], NDArray[np.float64], float]:
    """Return ``sum_i w_i (r_i + clip_τ(x_i - r_i)) / sum_i w_i`` and what it took.

    Parameters
    ----------
    updates:
        float32 ``(n, d)``, already validated.
    reference:
        float32 ``(d,)``, one reference ``r`` for every update (then the result is
        ``r + sum_i w_i clip_τ(x_i - r) / sum_i w_i``), or ``(n, d)``, one per update.
    threshold:
        The clip radius ``τ``, or ``None`` for ``τ = multiplier * median_i ||x_i - r_i||``.
    multiplier:
        Scale of the automatic radius.
    weights:
        float64 ``(n,)`` or ``None``.

    Returns
    -------
    aggregate:
        float32 ``(d,)``.
    factors:
        float64 ``(n,)``: ``c_i = min(1, τ / ||x_i - r_i||)``.
    distances:
        float64 ``(n,)``: ``||x_i - r_i||``.
    threshold:
        The radius ``τ`` actually used.
    """
    total = float(len(updates)) if weights is None else float(weights.sum())
    if reference.ndim == 1:
        # The common case (one global reference): no (n, d) temporary. One blocked pass
        # gives the distances (and proves the rows finite), one more the clipped mean.
        squared = squared_distances_to(updates, reference)  # (n,)
        ensure_finite(squared, updates)  # float64 squares of float32 values cannot overflow
        distances = np.sqrt(squared)  # (n,)
        tau = multiplier * float(np.median(distances)) if threshold is None else threshold
        factors = clip_factors(distances, tau)  # (n,)
        mass = factors if weights is None else factors * weights  # (n,)
        aggregate, _ = clipped_step(updates, reference, (mass / total).astype(np.float32))
        return aggregate, factors, distances, tau
    differences = updates - reference  # (n, d)
    distances = row_norms(differences)  # (n,)
    ensure_finite(distances, updates)
    tau = multiplier * float(np.median(distances)) if threshold is None else threshold
    factors = clip_factors(distances, tau)  # (n,)
    mass = factors if weights is None else factors * weights  # (n,)
    step = (mass / total).astype(np.float32) @ differences  # (d,)
    shares = np.full(len(updates), 1.0 / total) if weights is None else weights / total
    base = shares.astype(np.float32) @ reference  # (d,)
    return np.asarray(base + step, dtype=np.float32), factors, distances, tau


@dataclass(slots=True)
class _Stream:
    """The O(d) running sums of one streamed round (plus O(n) scalars)."""

    dim: int
    tau: float
    base: NDArray[np.float64]  # (d,): sum_i w_i r_i
    step: NDArray[np.float64]  # (d,): sum_i w_i c_i (x_i - r_i)
    total: float = 0.0
    weights: list[float] = field(default_factory=list)
    distances: list[float] = field(default_factory=list)
    factors: list[float] = field(default_factory=list)
    devices: dict[str, UpdateVector] = field(default_factory=dict)  # new per-device refs


class ClippingVR:
    """Server-side clipping of each update's difference to a reference, then the mean.

    With reference ``r_i`` for update ``i``::

        c_i = min(1, τ / ||x_i - r_i||)
        x   = sum_i w_i (r_i + c_i (x_i - r_i)) / sum_i w_i

    This is the heuristic of Byz-VR-MARINA-PP, eq. (10) (Malinovsky et al., NeurIPS 2024),
    with the clipping done by the server and the mean as the inner aggregator (their
    "PP+" choice).

    **Reference** (``reference``):

    - ``"global"`` (default, the paper's choice): ``r_i = r``, the previous round's
      aggregate (zeros before the first round), the same for every device. Byz-VR-MARINA-PP
      broadcasts ``g^k`` to all workers every round, sampled or not, so the global
      reference is the paper's rule under partial participation too.
    - ``"per-device"``: ``r_i`` is device ``i``'s own last *clipped* contribution
      ``r_i + c_i (x_i - r_i)`` (the global reference until the device has one), when the
      caller passes ``device_ids``. It follows devices whose updates differ persistently
      (heterogeneous data) more closely, at ``O(N d)`` memory for ``N`` devices; but a
      Byzantine device can walk its own reference by ``τ`` per participation, so its
      influence is bounded per round, not over time. Not in the paper; opt in knowingly.

    **Radius** ``τ``: ``clip_threshold`` when set; otherwise by ``radius``:

    - ``"median"`` (default): ``τ = clip_multiplier * median_i ||x_i - r_i||``, which a
      minority of attackers cannot inflate.
    - ``"model-step"``: ``τ = clip_multiplier * ||x^k - x^{k-1}||`` as in Byz-VR-MARINA-PP
      (``λ_{k+1} = λ ||x^{k+1} - x^k||``). The caller may pass ``model_step_norm``;
      otherwise it is taken as ``||r||``, the norm of the previous aggregate, which is
      what the authors' code does (``threshold = clip_mult * ||g^k||``): with server step
      ``x^{k+1} = x^k + η r`` this is the paper's rule with ``λ = clip_multiplier / η``.
      Before the first round, or when that norm is 0 (a radius of 0 would freeze the
      model for good), the round uses the median radius instead, as the paper's first
      round is an unclipped full-participation round.

    Robustness: each update moves the output by at most ``τ w_i / sum_j w_j``, so
    Byzantines of weight share ``δ`` shift it by at most ``δ τ`` per round, whatever they
    send; with the median radius this holds while they are fewer than half. It bounds the
    damage of rounds where a sampled cohort has a Byzantine majority, the failure mode
    clipping was designed for; it is not a (δ,c)-robust aggregator on its own when honest
    updates drift far from the reference in one round. No breakdown condition.

    **Streaming** (:meth:`start`, :meth:`accumulate`, :meth:`finish`): ``O(d)`` floats
    (plus the per-device references in that mode). The clip factor of an update must be
    known when it arrives, so the radius must be known before the first update: a fixed
    ``clip_threshold`` and the ``"model-step"`` radius give exactly the batch result. The
    ``"median"`` radius of a round is only known at its end, and ``sum_i w_i min(1, τ/D_i)
    (x_i - r_i)`` cannot be recovered from ``O(d)`` running sums for an unknown ``τ``; so a
    streamed round uses the median radius of the *previous* round (persisted in the
    state) and records its own median (from the ``n`` scalar distances it keeps) for the
    next. Without a previous radius, :meth:`start` raises
    :class:`~coordinator.aggregation.base.StreamingUnavailableError` and the caller
    aggregates that round in batch.

    **Merge** (sharded ingest, :meth:`partial`, :meth:`merge`): instances with the same
    state (so the same reference ``r`` and radius ``τ``) stream disjoint shares ``A`` and
    ``B`` of a round; they merge as ``base = base_A + base_B`` (sums of ``w_i r``), ``step
    = step_A + step_B`` (sums of ``w_i c_i (x_i - r)``), ``W = W_A + W_B``, and their
    weights, distances, clip factors and devices concatenate. ``finish`` then returns
    ``(base + step) / W`` and records the median of all the distances, exactly what one
    instance streaming both shares records, up to the order of the float64 additions. A
    partial clipped with another ``τ`` is refused. ``"per-device"`` references are not
    merged (each device's new reference is a ``(d,)`` vector, i.e. the rows themselves):
    :meth:`partial` raises
    :class:`~coordinator.aggregation.base.StreamingUnavailableError` in that mode.

    Parameters
    ----------
    clip_threshold:
        Fixed clip radius ``τ > 0``; ``None`` (the default) selects ``radius``.
    clip_multiplier:
        ``> 0``; scale of the automatic radius (the paper tunes its λ in {0.1, 1, 10}).
    radius:
        ``"median"`` (default) or ``"model-step"``.
    reference:
        ``"global"`` (default) or ``"per-device"``.

    Notes
    -----
    The diagnostics hold the clip factors ``c_i``, the radius ``τ`` (``clip_threshold``)
    and, as ``scores``, the distances ``||x_i - r_i||``. The rule declares
    ``needs_device_ids``: the round engine passes the rows' device ids (used by
    ``"per-device"`` references). The state (global reference, round count, latest
    median radius and per-device references) round-trips through :meth:`state_dict`;
    version-1 states (the reference only) still load.
    """

    name: ClassVar[str] = "clipping-vr"
    stateful: ClassVar[bool] = True
    streaming: ClassVar[bool] = True
    needs_device_ids: ClassVar[bool] = True

    def __init__(
        self,
        clip_threshold: float | None = None,
        clip_multiplier: float = 1.0,
        radius: Literal["median", "model-step"] = "median",
        reference: Literal["global", "per-device"] = "global",
    ) -> None:
        self.clip_threshold = (
            None if clip_threshold is None else validate_positive("clip_threshold", clip_threshold)
        )
        self.clip_multiplier = validate_positive("clip_multiplier", clip_multiplier)
        if radius not in RADIUS_MODES:
            raise ValueError(f"radius must be one of {', '.join(RADIUS_MODES)}, got {radius!r}")
        if reference not in REFERENCE_MODES:
            raise ValueError(
                f"reference must be one of {', '.join(REFERENCE_MODES)}, got {reference!r}"
            )
        self.radius_mode: str = radius
        self.reference_mode: str = reference
        self._reference: UpdateVector | None = None
        self._rounds = 0
        self._median_radius: float | None = None
        self._device_references: dict[str, UpdateVector] = {}
        self._last_threshold: float | None = None
        self._stream: _Stream | None = None

    # -- state views -------------------------------------------------------------------

    @property
    def reference(self) -> UpdateVector | None:
        """A copy of the global reference (float32 ``(d,)``), or ``None`` before round one."""
        return None if self._reference is None else self._reference.copy()

    def device_reference(self, device_id: str) -> UpdateVector | None:
        """A copy of ``device_id``'s own reference (``"per-device"`` mode), else ``None``."""
        vector = self._device_references.get(device_id)
        return None if vector is None else vector.copy()

    @property
    def rounds(self) -> int:
        """How many rounds this instance (or the state it loaded) has aggregated."""
        return self._rounds

    @property
    def last_clip_threshold(self) -> float | None:
        """The radius ``τ`` used in the latest round (not persisted), ``None`` before it."""
        return self._last_threshold

    # -- radius and references ---------------------------------------------------------

    def _known_radius(self, model_step_norm: float | None) -> float | None:
        """The radius when it does not depend on this round's distances, else ``None``."""
        if self.clip_threshold is not None:
            return self.clip_threshold
        if self.radius_mode == "model-step":
            if model_step_norm is not None:
                step = validate_stream_weight(model_step_norm)  # finite and >= 0
            elif self._reference is not None:
                step = float(np.linalg.norm(self._reference.astype(np.float64)))
            else:
                step = 0.0
            if step > 0:
                return self.clip_multiplier * step
        return None

    def _global_reference(self, dim: int) -> UpdateVector:
        if self._reference is None:
            return np.zeros(dim, dtype=np.float32)
        if self._reference.shape != (dim,):
            raise ValueError(
                f"clipping-vr reference has dimension {self._reference.shape[0]}, "
                f"updates have {dim}"
            )
        return self._reference

    def _per_device(self, device_ids: Sequence[str] | None) -> bool:
        return self.reference_mode == "per-device" and device_ids is not None

    # -- batch -------------------------------------------------------------------------

    def __call__(
        self,
        updates: UpdateMatrix,
        weights: ArrayLike | None = None,
        *,
        device_ids: Sequence[str] | None = None,
        model_step_norm: float | None = None,
    ) -> AggregationResult:
        """Aggregate float32 ``(n, d)`` updates with optional ``(n,)`` weights.

        Parameters
        ----------
        updates, weights:
            As for every rule.
        device_ids:
            The ``n`` distinct devices the rows come from; used by ``"per-device"``
            references (ignored by ``"global"`` ones).
        model_step_norm:
            ``||x^k - x^{k-1}||`` for the ``"model-step"`` radius (else derived, see the
            class notes).

        Raises
        ------
        ValueError
            On malformed input, ``device_ids`` of the wrong length or with duplicates, or
            when ``d`` differs from the reference's dimension.
        """
        matrix = validate_updates(updates, check_finite=False)  # checked by the distances
        vector = validate_weights(weights, len(matrix))
        n, dim = matrix.shape
        ids = _check_device_ids(device_ids, n)
        glob = self._global_reference(dim)
        references: NDArray[np.float32] = glob
        if self._per_device(ids) and ids is not None:
            references = np.stack([self._device_references.get(i, glob) for i in ids])  # (n, d)
        tau = self._known_radius(model_step_norm)
        aggregate, factors, distances, tau = clipped_difference_mean(
            matrix, references, tau, self.clip_multiplier, vector
        )
        if self._per_device(ids) and ids is not None:
            contributions = references + (factors.astype(np.float32)[:, None]) * (
                matrix - references
            )  # (n, d): r_i + c_i (x_i - r_i)
            self._device_references.update({i: contributions[k].copy() for k, i in enumerate(ids)})
        self._commit(aggregate, tau, distances)
        return AggregationResult(
            aggregate,
            AggregationDiagnostics(scores=distances, clip_factors=factors, clip_threshold=tau),
        )

    def _commit(self, aggregate: UpdateVector, tau: float, distances: NDArray[np.float64]) -> None:
        self._reference = aggregate.copy()
        self._rounds += 1
        self._last_threshold = tau
        self._median_radius = self.clip_multiplier * float(np.median(distances))

    # -- streaming ---------------------------------------------------------------------

    def start(self, dim: int, *, model_step_norm: float | None = None) -> None:
        """Open a streamed round of ``dim``-dimensional updates (see the class notes).

        Raises
        ------
        StreamingUnavailableError
            With the median radius before any round has recorded one.
        ValueError
            On ``dim < 1`` or a ``dim`` other than the reference's.
        """
        dim = validate_stream_dim(dim)
        self._global_reference(dim)  # checks the dimension
        tau = self._known_radius(model_step_norm)
        if tau is None and self._median_radius is not None and self._median_radius > 0:
            tau = self._median_radius  # a lagged radius of 0 would freeze the round
        if tau is None:
            raise StreamingUnavailableError(
                "clipping-vr: the median radius of this round is known only at its end and "
                "no previous round recorded one; aggregate this round in batch"
            )
        self._stream = _Stream(dim, tau, np.zeros(dim), np.zeros(dim))

    def accumulate(
        self, update: ArrayLike, weight: float = 1.0, device_id: str | None = None
    ) -> None:
        """Clip one float32 ``(d,)`` update against its reference and add it to the sums.

        The round starts on the first call if :meth:`start` was not called (which may
        raise :class:`~coordinator.aggregation.base.StreamingUnavailableError`).

        Raises
        ------
        ValueError
            On a malformed update or weight, or a device that already contributed.
        """
        if self._stream is None:
            self.start(stream_dim_of(update))
        stream = self._stream
        assert stream is not None  # noqa: S101 (start() set it or raised)
        vector = validate_stream_update(update, stream.dim)
        w = validate_stream_weight(weight)
        glob = self._global_reference(stream.dim)
        ref = glob
        per_device = self.reference_mode == "per-device" and device_id is not None
        if device_id is not None:
            if device_id in stream.devices:
                raise ValueError(f"device {device_id!r} already contributed to this round")
            if per_device:
                ref = self._device_references.get(device_id, glob)
        difference = vector - ref  # (d,)
        distance = float(row_norms(difference[None, :])[0])
        c = float(clip_factors(np.array([distance]), stream.tau)[0])
        stream.step += (w * c) * difference.astype(np.float64)
        stream.base += w * ref.astype(np.float64)
        stream.total += w
        stream.weights.append(w)
        stream.distances.append(distance)
        stream.factors.append(c)
        if device_id is not None:
            stream.devices[device_id] = (
                (ref + np.float32(c) * difference).astype(np.float32) if per_device else ref
            )

    def partial(self) -> StreamPartial:
        """The open round's sums and per-update scalars (see the class notes).

        Raises
        ------
        ValueError
            When no round is open.
        StreamingUnavailableError
            With ``"per-device"`` references.
        """
        stream = self._stream
        if stream is None:
            raise ValueError("clipping-vr: no round is open")
        if self.reference_mode == "per-device":
            raise StreamingUnavailableError(
                "clipping-vr: per-device references are (d,) vectors per device and do not "
                "merge into sums; aggregate such rounds from the rows"
            )
        return StreamPartial(
            self.name,
            stream.dim,
            len(stream.distances),
            stream.total,
            stream.tau,
            {"base": stream.base.copy(), "step": stream.step.copy()},
            {
                "weights": np.array(stream.weights),
                "distances": np.array(stream.distances),
                "factors": np.array(stream.factors),
            },
            tuple(stream.devices),
        )

    def merge(self, partial: StreamPartial) -> None:
        """Fold another instance's share of the round into the open one (see the class notes).

        Raises
        ------
        ValueError
            For another rule, dimension or radius, ``"per-device"`` references, or a device
            that already contributed.
        StreamingUnavailableError
            When no round is open and :meth:`start` cannot open one.
        """
        if self._stream is None:
            self.start(partial.dim)
        stream = self._stream
        assert stream is not None  # noqa: S101 (start() set it or raised)
        if self.reference_mode == "per-device":
            raise ValueError("clipping-vr: per-device references do not merge")
        check_partial(
            partial,
            self.name,
            stream.dim,
            vectors=("base", "step"),
            scalars=("weights", "distances", "factors"),
            radius=stream.tau,
        )
        repeated = set(partial.devices) & stream.devices.keys()
        if repeated or len(set(partial.devices)) != len(partial.devices):
            raise ValueError(f"devices {sorted(repeated)} already contributed to this round")
        glob = self._global_reference(stream.dim)
        stream.base += partial.vectors["base"]
        stream.step += partial.vectors["step"]
        stream.total += partial.total
        stream.weights.extend(partial.scalars["weights"].tolist())
        stream.distances.extend(partial.scalars["distances"].tolist())
        stream.factors.extend(partial.scalars["factors"].tolist())
        stream.devices.update(dict.fromkeys(partial.devices, glob))

    def finish(self) -> AggregationResult:
        """Close the streamed round, update the state and return the aggregate.

        Raises
        ------
        ValueError
            If no update came, or their weights sum to 0 (the round stays open then).
        """
        stream = self._stream
        if stream is None or not stream.distances:
            raise ValueError("clipping-vr: no updates were accumulated")
        if not stream.total > 0:
            raise ValueError("weights must have a positive sum, got all zeros")
        aggregate = ((stream.base + stream.step) / stream.total).astype(np.float32)  # (d,)
        if self.reference_mode == "per-device":
            self._device_references.update(stream.devices)
        distances = np.array(stream.distances)
        self._stream = None
        self._commit(aggregate, stream.tau, distances)
        diagnostics = AggregationDiagnostics(
            scores=distances, clip_factors=np.array(stream.factors), clip_threshold=stream.tau
        )
        return AggregationResult(aggregate, diagnostics)

    # -- state -------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the references, the radius, the round count and any open stream."""
        self._reference = None
        self._rounds = 0
        self._median_radius = None
        self._device_references = {}
        self._last_threshold = None
        self._stream = None

    def state_dict(self) -> dict[str, Any]:
        """Return the state as plain values (version 2).

        ``{"version": 2, "rounds", "dim", "reference", "radius", "device_references"}``:
        ``reference`` is the global reference as little-endian float32 bytes (``None``,
        with ``dim`` 0, before the first round), ``radius`` the latest round's median
        radius (``None`` before it), ``device_references`` a dict of device id to float32
        bytes (empty in ``"global"`` mode).
        """
        state = vector_to_state(self._reference, self._rounds, "reference")
        state["version"] = _STATE_VERSION
        state["radius"] = self._median_radius
        state["device_references"] = {
            device: vector.astype("<f4").tobytes()
            for device, vector in sorted(self._device_references.items())
        }
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state produced by :meth:`state_dict`, of version 1 or 2.

        Per-device references are dropped in ``"global"`` mode.

        Raises
        ------
        ValueError
            On an unknown version, a negative round count, a byte length that does not
            match ``dim``, a non-finite vector or radius. The current state is kept then.
        """
        version = state.get("version")
        if version not in (1, _STATE_VERSION):
            raise ValueError(f"{self.name} state version must be 1 or 2, got {version!r}")
        reference, rounds = vector_from_state(self.name, {**state, "version": 1}, "reference")
        radius: float | None = None
        devices: dict[str, UpdateVector] = {}
        if version == _STATE_VERSION:
            raw_radius = state.get("radius")
            if raw_radius is not None:
                try:
                    radius = validate_stream_weight(raw_radius)
                except ValueError:
                    raise ValueError(
                        f"{self.name} state radius must be a finite number >= 0, got {raw_radius!r}"
                    ) from None
            raw_devices = state.get("device_references", {})
            if not isinstance(raw_devices, Mapping):
                raise ValueError(f"{self.name} state device_references must be a mapping")
            dim = 0 if reference is None else len(reference)
            for device, raw in raw_devices.items():
                vector, _ = vector_from_state(
                    self.name,
                    {"version": 1, "rounds": 0, "dim": dim, "reference": raw},
                    "reference",
                )
                if not isinstance(device, str) or vector is None:
                    raise ValueError(f"{self.name} state device_references entry {device!r}")
                devices[device] = vector
        self._reference, self._rounds = reference, rounds
        self._median_radius = radius
        self._device_references = devices if self.reference_mode == "per-device" else {}
        self._last_threshold = None
        self._stream = None

    def __repr__(self) -> str:
        return (
            f"ClippingVR(clip_threshold={self.clip_threshold!r}, "
            f"clip_multiplier={self.clip_multiplier!r}, radius={self.radius_mode!r}, "
            f"reference={self.reference_mode!r})"
        )


def _check_device_ids(device_ids: Sequence[str] | None, n: int) -> tuple[str, ...] | None:
    """Return ``device_ids`` as a tuple after checking length and distinctness."""
    if device_ids is None:
        return None
    ids = tuple(device_ids)
    if len(ids) != n:
        raise ValueError(f"device_ids must have {n} entries, got {len(ids)}")
    if len(set(ids)) != n:
        raise ValueError("device_ids must be distinct")
    if not all(isinstance(i, str) for i in ids):
        raise ValueError("device_ids must be strings")
    return ids
