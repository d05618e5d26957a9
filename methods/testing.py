"""A numpy problem and an in-memory round loop for the training methods' tests and benchmarks.

* :class:`LogisticOracle`: ℓ2-regularised multinomial logistic regression, the convex
  problem of Byz-VR-MARINA's experiments (algorithms.md §1.2 and §11 item 4), with exact
  gradients, one shared minibatch for several points, the loss, and ``f*``.
* :class:`RandK` / :class:`TopK` / :class:`Identity`: compressors as plain functions
  (``(vector, round, device) -> (decoded vector, bits)``), for loops without the update
  pipeline.
* :class:`MomentumSGD`: BR-SGDm, the baseline of Byz-VR-MARINA's Fig. 1 (device momentum,
  robust rule over the momenta), written as a method so the same loop runs it. Not
  registered: it is a yardstick, not a protocol.
* :func:`run_rounds`: plan -> propose -> compress -> commit -> rows -> attack -> aggregate
  -> apply, with Byzantine devices that control their rows (the papers' threat model: a
  Byzantine ``g_i`` is arbitrary, so attacks act on what is aggregated).

Nothing here touches torch or the coordinator; the aggregator is passed in.
"""

# The docstrings write the papers' notation (gamma, alpha, sigma as Greek letters).
# ruff: noqa: RUF002

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
from numpy.typing import NDArray

from byzedge.methods.base import (
    DeviceState,
    GradientOracle,
    MethodMessage,
    OptionValue,
    Proposal,
    RoundPlan,
    ServerState,
    TrainingMethod,
)
from byzedge.methods.options import (
    check_fraction,
    check_positive,
    check_positive_int,
    clip,
    plan_int,
)

__all__ = [
    "Identity",
    "LogisticOracle",
    "MomentumSGD",
    "RandK",
    "RoundTrace",
    "TopK",
    "one_blas_thread",
    "run_rounds",
]

Vector = NDArray[np.float32]
Compressor = Callable[[Vector, int, str], tuple[Vector, int]]
"""``(vector, round, device) -> (what the server decodes, bits sent)``."""
RowAttack = Callable[[NDArray[np.float32], int, np.random.Generator], NDArray[np.float32]]


class LogisticOracle:
    """``f(x) = mean_j CE(softmax(W a_j + b), y_j) + (λ/2)||W||²`` over one dataset.

    Parameters
    ----------
    features:
        ``(m, p)`` samples.
    labels:
        ``(m,)`` labels in ``[0, classes)``.
    classes:
        Number of classes ``C``.
    l2:
        ``λ`` (default 0.01, the paper's a9a runs); ``> 0`` makes ``f`` strongly convex.

    Notes
    -----
    Parameters are ``W`` row-major (``C p``) then ``b`` (``C``): ``d = C (p + 1)``.
    Gradients are computed in float64 and returned as float32.
    """

    def __init__(
        self,
        features: NDArray[np.floating[Any]],
        labels: NDArray[np.integer[Any]],
        classes: int,
        l2: float = 0.01,
    ) -> None:
        self._a = np.asarray(features, dtype=np.float64)
        self._y = np.asarray(labels, dtype=np.int64)
        self.classes = classes
        self.l2 = l2
        self._features = int(self._a.shape[1])

    @property
    def dim(self) -> int:
        """``d = C (p + 1)``."""
        return int(self.classes * (self._features + 1))

    @property
    def samples(self) -> int:
        """``m``."""
        return int(self._y.shape[0])

    def _split(self, params: NDArray[np.floating[Any]]) -> tuple[NDArray[np.float64], ...]:
        x = np.asarray(params, dtype=np.float64)
        weights = x[: self.classes * self._features].reshape(self.classes, self._features)
        return weights, x[self.classes * self._features :]

    def _probabilities(
        self, params: NDArray[np.floating[Any]], rows: NDArray[np.int64] | slice
    ) -> NDArray[np.float64]:
        weights, bias = self._split(params)
        logits = self._a[rows] @ weights.T + bias
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        probabilities: NDArray[np.float64] = exp / exp.sum(axis=1, keepdims=True)
        return probabilities

    def _gradient(
        self, params: NDArray[np.floating[Any]], rows: NDArray[np.int64] | slice
    ) -> Vector:
        weights, _ = self._split(params)
        errors = self._probabilities(params, rows)
        labels = self._y[rows]
        errors[np.arange(len(labels)), labels] -= 1.0
        errors /= len(labels)
        grad_w = errors.T @ self._a[rows] + self.l2 * weights
        return np.concatenate([grad_w.ravel(), errors.sum(axis=0)]).astype(np.float32)

    def loss(self, params: NDArray[np.floating[Any]]) -> float:
        """``f(params)`` in float64."""
        weights, _ = self._split(params)
        probabilities = self._probabilities(params, slice(None))
        picked = probabilities[np.arange(self.samples), self._y]
        data = -np.mean(np.log(np.maximum(picked, 1e-300)))
        return float(data + 0.5 * self.l2 * np.sum(weights**2))

    def full_gradient(self, params: Vector) -> Vector:
        """``grad f(params)`` over every sample."""
        return self._gradient(params, slice(None))

    def minibatch_gradients(
        self, points: Sequence[Vector], batch_size: int, seed: int
    ) -> list[Vector]:
        """Gradients at ``points`` over ONE minibatch (without replacement, seeded)."""
        size = min(batch_size, self.samples)
        rows = np.random.default_rng(seed).choice(self.samples, size=size, replace=False)
        return [self._gradient(point, rows) for point in points]

    def minimum(self) -> tuple[Vector, float]:
        """``(x*, f*)`` by L-BFGS in float64 to a gradient norm of about 1e-10."""
        from scipy.optimize import (  # type: ignore[import-untyped]  # noqa: PLC0415
            minimize,  # tests and benchmarks only
        )

        def value_and_gradient(x: NDArray[np.float64]) -> tuple[float, NDArray[np.float64]]:
            weights, _ = self._split(x)
            errors = self._probabilities(x, slice(None))
            errors[np.arange(self.samples), self._y] -= 1.0
            errors /= self.samples
            grad = np.concatenate(
                [(errors.T @ self._a + self.l2 * weights).ravel(), errors.sum(axis=0)]
            )
            return self.loss(x), grad

        with one_blas_thread():
            result = minimize(
                value_and_gradient,
                np.zeros(self.dim),
                jac=True,
                method="L-BFGS-B",
                options={"maxiter": 5000, "gtol": 1e-10, "ftol": 1e-15},
            )
        optimum = np.asarray(result.x, dtype=np.float64)
        return optimum.astype(np.float32), self.loss(optimum)


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """Run BLAS on one thread inside the block.

    The problem's products are tiny (``m x 64`` by ``64 x 10``); OpenBLAS's threads spin
    against each other on a small machine and made one gradient 80x slower here.
    """
    try:
        from threadpoolctl import threadpool_limits  # noqa: PLC0415 - optional
    except ImportError:  # pragma: no cover - scikit-learn installs it
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


# -- compressors as functions ----------------------------------------------------------------


@dataclass(slots=True)
class Identity:
    """No compression: ``32 d`` bits."""

    def __call__(self, vector: Vector, round_number: int, device: str) -> tuple[Vector, int]:
        """Return ``(vector, 32 d)``."""
        return np.asarray(vector, dtype=np.float32), 32 * vector.shape[0]


def _kept(fraction: float, dim: int) -> int:
    return min(dim, max(1, math.ceil(fraction * dim)))


@dataclass(frozen=True, slots=True)
class RandK:
    """Unbiased RandK: ``K = ceil(fraction d)`` random coordinates scaled by ``d/K``.

    ``ω = d/K - 1``. Bits: ``32 K``: the indices come from a seed the server knows
    (algorithms.md §12), so they are not sent. ``shared``: every device of a round keeps
    the same coordinates (seed ``[seed, round]``), otherwise each its own
    (``[seed, round, device]``). Each device's message is unbiased either way; with shared
    indices a coordinate-wise rule compares values that were all sent instead of mostly
    zeros.
    """

    fraction: float
    seed: int = 0
    shared: bool = False

    def __call__(self, vector: Vector, round_number: int, device: str) -> tuple[Vector, int]:
        """Return ``(Q(vector), 32 K)``."""
        dim = vector.shape[0]
        k = _kept(self.fraction, dim)
        key = [self.seed, round_number]
        if not self.shared:
            key.append(zlib.crc32(device.encode()))
        kept = np.random.default_rng(key).choice(dim, size=k, replace=False)
        out = np.zeros(dim, dtype=np.float32)
        out[kept] = vector[kept] * np.float32(dim / k)
        return out, 32 * k

    def omega(self, dim: int) -> float:
        """``d/K - 1``."""
        return dim / _kept(self.fraction, dim) - 1.0


@dataclass(frozen=True, slots=True)
class TopK:
    """Contractive TopK: the ``K`` largest-magnitude coordinates; ``64 K`` bits with indices."""

    fraction: float

    def __call__(self, vector: Vector, round_number: int, device: str) -> tuple[Vector, int]:
        """Return ``(C(vector), 64 K)``."""
        dim = vector.shape[0]
        k = _kept(self.fraction, dim)
        kept = np.argpartition(np.abs(vector), dim - k)[dim - k :]
        out = np.zeros(dim, dtype=np.float32)
        out[kept] = vector[kept]
        return out, 64 * k


# -- the BR-SGDm baseline -------------------------------------------------------------------


class MomentumSGD:
    """BR-SGDm: ``v_i <- β v_i + (1 - β) grad f_iJ(x)``, ``x <- x - γ ARAgg(v)`` (dense).

    ``momentum1 = β`` (0.9 in the paper's comparison). The baseline Byz-VR-MARINA is
    compared with; not a registered method. With ``clip_norm = τ`` each device sends
    ``clip_τ(v_i)``; with ``momentum1 = 0`` too, that is plain clipped SGD, the baseline
    of Clip21-SGD2M (whose error feedback removes the clipping bias this one keeps).
    """

    name: ClassVar[str] = "br-sgdm"
    compressor_class: ClassVar[Literal["unbiased", "contractive", "any"]] = "any"
    compressed_broadcast: ClassVar[bool] = False
    server_mirrors: ClassVar[bool] = False

    def __init__(self, **options: OptionValue) -> None:
        self.step_size = check_positive("step_size", options.get("step_size", 0.1))
        self.momentum1 = check_fraction("momentum1", options.get("momentum1", 0.9))
        self.batch_size = check_positive_int("batch_size", options.get("batch_size", 32))
        clip_norm = options.get("clip_norm")
        self.clip_norm = None if clip_norm is None else check_positive("clip_norm", clip_norm)

    def asks_everyone(self, plan: RoundPlan) -> bool:
        """No requirement."""
        return False

    def plan(self, round_number: int, params: Vector, state: ServerState) -> RoundPlan:
        """No coin: every round is alike."""
        previous = state.publish(params)
        return RoundPlan(
            self.name,
            round_number,
            full=False,
            step_size=self.step_size,
            previous_sha256=previous,
            options={"momentum1": self.momentum1, "batch_size": self.batch_size},
        )

    def rows(
        self,
        plan: RoundPlan,
        messages: Mapping[str, tuple[MethodMessage, Vector]],
        state: ServerState,
    ) -> tuple[list[str], list[Vector], dict[str, str]]:
        """The momenta as they arrive."""
        ids = sorted(messages)
        return ids, [messages[d][1] for d in ids], {}

    def apply(
        self, plan: RoundPlan, params: Vector, aggregate: Vector, state: ServerState
    ) -> Vector:
        """``x <- x - γ ARAgg(v)``."""
        state.g = np.asarray(aggregate, dtype=np.float32)
        return (params - np.float32(plan.step_size) * state.g).astype(np.float32)

    def propose(
        self,
        plan: RoundPlan,
        model: Vector,
        previous: Vector | None,
        oracle: GradientOracle,
        state: DeviceState,
        *,
        device_id: str,
        seed: int,
    ) -> Proposal | None:
        """The new momentum, dense."""
        gradient = oracle.minibatch_gradients([model], plan_int(plan, "batch_size", 32), seed)[0]
        beta = np.float32(plan.number("momentum1", self.momentum1))
        v = state.vectors.get("v", np.zeros_like(gradient))
        v_next = (beta * v + (1 - beta) * gradient).astype(np.float32)
        sent = v_next if self.clip_norm is None else clip(v_next, self.clip_norm)
        return Proposal(sent, MethodMessage("full"), dense=True, carry={"v": v_next})

    def commit(self, plan: RoundPlan, proposal: Proposal, sent: Vector, state: DeviceState) -> None:
        """Keep the momentum."""
        state.vectors["v"] = np.array(proposal.carry["v"], dtype=np.float32, copy=True)
        state.base_round = plan.round


# -- the loop -------------------------------------------------------------------------------


@dataclass(slots=True)
class RoundTrace:
    """What :func:`run_rounds` recorded.

    Attributes
    ----------
    params:
        The final model.
    models:
        ``x_1, ..., x_{R+1}``: the model after each round (the first is ``x_1``, the start).
    uplink_bits:
        Cumulative bits sent by the honest devices after each round.
    sent:
        The kinds sent by the honest devices each round (``{"full": 3, ...}``).
    dense_after_first:
        How many dense messages honest devices sent after round 1.
    devices:
        The device states at the end.
    server:
        The server state at the end.
    """

    params: Vector
    models: list[Vector] = field(default_factory=list)
    uplink_bits: list[int] = field(default_factory=list)
    sent: list[dict[str, int]] = field(default_factory=list)
    dense_after_first: int = 0
    devices: dict[str, DeviceState] = field(default_factory=dict)
    server: ServerState = field(default_factory=ServerState)


def _forge_messages(
    messages: dict[str, tuple[MethodMessage, Vector]],
    bad: set[str],
    attack: RowAttack,
    rng: np.random.Generator,
) -> None:
    liars = sorted(d for d in messages if d in bad)
    honest = [messages[d] for d in sorted(messages) if d not in bad]
    if not liars or not honest:
        return
    forged = attack(np.stack([vector for _, vector in honest]), len(liars), rng)
    for device, vector in zip(liars, forged, strict=True):
        messages[device] = (honest[0][0], np.asarray(vector, dtype=np.float32))


def run_rounds(
    method: TrainingMethod,
    oracles: Mapping[str, GradientOracle],
    start: Vector,
    rounds: int,
    *,
    aggregate: Callable[[NDArray[np.float32]], Vector],
    compress: Compressor | None = None,
    byzantine: Sequence[str] = (),
    attack: RowAttack | None = None,
    attack_on: Literal["rows", "messages"] = "rows",
    skip: Callable[[int, str], bool] | None = None,
    seed: int = 0,
) -> RoundTrace:
    """Run ``rounds`` rounds of ``method`` in memory.

    Parameters
    ----------
    method:
        Any method (registered or :class:`MomentumSGD`).
    oracles:
        Every device's local loss, honest and Byzantine alike (a label-flipping device is
        an honest device with a poisoned oracle: leave ``attack`` unset for it).
    start:
        ``x_1``.
    rounds:
        How many rounds.
    aggregate:
        The robust rule, ``(n, d) -> (d,)``.
    compress:
        Applied to every message not marked dense; ``None`` sends everything exactly.
    byzantine, attack:
        Devices whose rows ``attack(honest_rows, f, rng)`` replaces with ``(f, d)`` forged
        rows each round (after the method built the rows). A device in ``byzantine`` still
        runs the method (so its mirror exists) unless ``attack`` is ``None``.
    attack_on:
        ``"rows"``: the attack replaces the Byzantine devices' rows after the method built
        them (a Byzantine estimator is arbitrary: MARINA's ``g_i``, a mirror);
        ``"messages"``: it replaces what they send, of the honest messages' kind, before
        the server's own processing (MARINA-PP's clipping is the server's).
    skip:
        ``skip(round, device)``: the device sends nothing that round (it also misses the
        round's model, so it holds no ``x_{r-1}`` next round).
    seed:
        Seed of the devices' minibatches and of ``attack``'s generator.
    """
    with one_blas_thread():
        return _loop(
            method,
            oracles,
            start,
            rounds,
            aggregate=aggregate,
            compress=compress,
            byzantine=byzantine,
            attack=attack,
            attack_on=attack_on,
            skip=skip,
            seed=seed,
        )


def _loop(
    method: TrainingMethod,
    oracles: Mapping[str, GradientOracle],
    start: Vector,
    rounds: int,
    *,
    aggregate: Callable[[NDArray[np.float32]], Vector],
    compress: Compressor | None,
    byzantine: Sequence[str],
    attack: RowAttack | None,
    attack_on: Literal["rows", "messages"],
    skip: Callable[[int, str], bool] | None,
    seed: int,
) -> RoundTrace:
    compressor = compress if compress is not None else Identity()
    server = ServerState()
    devices = {device: DeviceState() for device in oracles}
    seen: dict[str, tuple[str, Vector]] = {}
    trace = RoundTrace(params=np.asarray(start, dtype=np.float32))
    params = trace.params
    rng = np.random.default_rng([seed, 1])
    bits = 0
    bad = set(byzantine) if attack is not None else set()
    for round_number in range(1, rounds + 1):
        trace.models.append(params)
        plan = method.plan(round_number, params, server)
        messages: dict[str, tuple[MethodMessage, Vector]] = {}
        kinds: dict[str, int] = {}
        for index, (device, oracle) in enumerate(sorted(oracles.items())):
            if skip is not None and skip(round_number, device):
                seen.pop(device, None)
                continue
            held = seen.get(device)
            previous = held[1] if held is not None and held[0] == plan.previous_sha256 else None
            seen[device] = (server.current_sha256 or "", params)
            proposal = method.propose(
                plan,
                params,
                previous,
                oracle,
                devices[device],
                device_id=device,
                seed=seed * 1_000_003 + round_number * 1_009 + index,
            )
            if proposal is None:
                continue
            if proposal.dense:
                sent, cost = np.asarray(proposal.vector, dtype=np.float32), 32 * oracle.dim
            else:
                sent, cost = compressor(proposal.vector, round_number, device)
            method.commit(plan, proposal, sent, devices[device])
            messages[device] = (proposal.message, sent)
            if device not in bad:
                bits += cost
                kinds[proposal.message.kind] = kinds.get(proposal.message.kind, 0) + 1
                if proposal.dense and round_number > 1:
                    trace.dense_after_first += 1
        if attack is not None and attack_on == "messages":
            _forge_messages(messages, bad, attack, rng)
        ids, rows, _ = method.rows(plan, messages, server)
        if rows:
            matrix = np.stack(rows).astype(np.float32)
            forged_at = [i for i, device in enumerate(ids) if device in bad]
            if forged_at and attack is not None and attack_on == "rows":
                honest = np.delete(matrix, forged_at, axis=0)
                if len(honest):
                    matrix[forged_at] = attack(honest, len(forged_at), rng)
            params = method.apply(plan, params, aggregate(matrix), server)
        trace.uplink_bits.append(bits)
        trace.sent.append(kinds)
    trace.params = params
    trace.models.append(params)
    trace.devices = devices
    trace.server = server
    return trace
