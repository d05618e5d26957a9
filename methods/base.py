"""The contract every training method keeps: a device half, a server half, and the plan between.

A *training method* decides what a device computes from the global model and sends, and
what the server makes of what it receives. ``fedavg`` (local epochs, the parameter delta)
is one; the variance-reduced and error-feedback methods of the Byzantine-robust literature
(Byz-VR-MARINA, Byz-EF21, Byz-DASHA-PAGE, Clip21-SGD2M) are the others. Each is one class
with both halves, shared by the agent, the coordinator and the simulator; nothing here
imports torch (the device's gradients come through :class:`GradientOracle`) or the
coordinator (the robust aggregation comes through the round engine).

One round ``r`` of a gradient method, as the daemons run it::

    server   plan_r = method.plan(r, x_r, state)   coin, step size, options, resync list
             publish x_r and plan_r, signed         (the device cannot choose any of it)
    device   proposal = method.propose(...)        from x_r, x_{r-1}, its own state
             (attack stages, when compromised)
             sent = decode(encode(proposal.vector)) what the server will see
             method.commit(..., sent)               device state, persisted before publishing
    server   rows = method.rows(plan_r, messages)  what the robust rule aggregates
             aggregate = robust rule over rows      (anomaly scores and reputation too)
             x_{r+1} = method.apply(plan_r, x_r, aggregate, state)

Keeping a device's estimator and the server's copy of it ("mirror", EF21/DASHA) in step
over a lossy network: every message names the round of the previous message the device
committed (``base_round``); the server applies a difference only onto a mirror of that
round, otherwise it drops the message and lists the device in the next plan's ``resync``;
a listed device (or one without state) sends its estimator whole (``kind = "reset"``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Literal, Protocol

import numpy as np
from numpy.typing import NDArray

from byzedge.protocol.broadcast import vector_digest

__all__ = [
    "DeviceState",
    "GradientOracle",
    "MessageKind",
    "MethodMessage",
    "OptionValue",
    "Proposal",
    "RoundPlan",
    "ServerState",
    "TrainingMethod",
    "check_option_names",
    "model_digest",
    "vector_from_plain",
    "vector_to_plain",
]

Vector = NDArray[np.float32]
OptionValue = float | int | str | bool
MessageKind = Literal["full", "difference", "reset"]
_KINDS: Final = frozenset({"full", "difference", "reset"})


# -- what travels -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RoundPlan:
    """What the coordinator decides for round ``round`` and signs into the model manifest.

    Attributes
    ----------
    algorithm:
        The method's permanent name (``byz-vr-marina``, ...).
    round:
        The round the plan is for.
    full:
        The round's coin ``c_k``: devices send full local gradients (MARINA, PAGE's
        estimator refresh) instead of compressed differences.
    step_size:
        ``gamma`` of ``x_{r+1} = x_r - gamma g_r``.
    previous_sha256:
        SHA-256 of the model of the round before (``x_{r-1}``); a device computes a
        gradient difference only from a stored model with this digest. ``None`` in the
        first round.
    resync:
        Devices whose mirror on the server is missing or out of step: they send a reset.
    options:
        The method's hyper-parameters that devices must use (momenta, clip norm, batch
        size, noise...), by config name.
    """

    algorithm: str
    round: int
    full: bool
    step_size: float
    previous_sha256: str | None = None
    resync: frozenset[str] = frozenset()
    options: Mapping[str, OptionValue] = field(default_factory=dict)

    def option(self, name: str, default: OptionValue) -> OptionValue:
        """Return option ``name``, or ``default`` when the plan does not carry it."""
        return self.options.get(name, default)

    def number(self, name: str, default: float) -> float:
        """Return option ``name`` as a finite float (``default`` when absent)."""
        value = self.options.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            msg = f"plan option {name!r} must be a number, got {value!r}"
            raise ValueError(msg)
        if not math.isfinite(value):
            msg = f"plan option {name!r} must be finite, got {value!r}"
            raise ValueError(msg)
        return float(value)

    def to_meta(self) -> dict[str, Any]:
        """The msgpack-friendly form carried in the manifest header's ``meta["plan"]``."""
        return {
            "algorithm": self.algorithm,
            "round": self.round,
            "full": self.full,
            "step_size": self.step_size,
            "previous_sha256": self.previous_sha256,
            "resync": sorted(self.resync),
            "options": dict(self.options),
        }

    @classmethod
    def from_meta(cls, meta: object) -> RoundPlan:
        """Parse :meth:`to_meta`'s form; raise ``ValueError`` on any defect."""
        if not isinstance(meta, Mapping):
            raise ValueError("a round plan must be a map")
        algorithm = meta.get("algorithm")
        round_number = meta.get("round")
        full = meta.get("full")
        step = meta.get("step_size")
        previous = meta.get("previous_sha256")
        resync = meta.get("resync", [])
        options = meta.get("options", {})
        if not isinstance(algorithm, str) or not algorithm:
            raise ValueError("a round plan must name its algorithm")
        if isinstance(round_number, bool) or not isinstance(round_number, int):
            raise ValueError("a round plan's round must be an integer")
        if not isinstance(full, bool):
            raise ValueError("a round plan's 'full' must be a boolean")
        if isinstance(step, bool) or not isinstance(step, int | float) or not math.isfinite(step):
            raise ValueError("a round plan's step size must be a finite number")
        if previous is not None and not isinstance(previous, str):
            raise ValueError("a round plan's previous_sha256 must be a string")
        if not isinstance(resync, list) or not all(isinstance(d, str) for d in resync):
            raise ValueError("a round plan's resync must list device ids")
        if not isinstance(options, Mapping) or not all(
            isinstance(k, str) and isinstance(v, int | float | str | bool)
            for k, v in options.items()
        ):
            raise ValueError("a round plan's options must map names to scalars")
        return cls(
            algorithm=algorithm,
            round=round_number,
            full=full,
            step_size=float(step),
            previous_sha256=previous,
            resync=frozenset(resync),
            options=dict(options),
        )


@dataclass(frozen=True, slots=True)
class MethodMessage:
    """What an update's header says about the method's message (``meta["method"]``).

    Attributes
    ----------
    kind:
        ``"full"`` (a full local gradient), ``"difference"`` (a compressed difference or
        estimator increment) or ``"reset"`` (the device's whole estimator, after a resync).
    base_round:
        The round of the previous message the device committed (``None``: none yet).
    """

    kind: MessageKind
    base_round: int | None = None

    def to_meta(self) -> dict[str, Any]:
        """The msgpack-friendly form."""
        return {"kind": self.kind, "base_round": self.base_round}

    @classmethod
    def from_meta(cls, meta: object) -> MethodMessage:
        """Parse :meth:`to_meta`'s form; raise ``ValueError`` on any defect."""
        if not isinstance(meta, Mapping):
            raise ValueError("a method message must be a map")
        kind = meta.get("kind")
        base = meta.get("base_round")
        if kind not in _KINDS:
            raise ValueError(f"unknown method message kind {kind!r}")
        if base is not None and (isinstance(base, bool) or not isinstance(base, int)):
            raise ValueError("a method message's base_round must be an integer")
        return cls(kind=kind, base_round=base)


@dataclass(frozen=True, slots=True)
class Proposal:
    """What a device's method wants to send this round, before compression and signing.

    Attributes
    ----------
    vector:
        float32 ``(d,)``.
    message:
        Its kind and base round (travels in the header).
    dense:
        Send with the lossless ``dense`` codec whatever ``compression`` says (full
        gradients of MARINA, resets of a mirror).
    carry:
        Device-side vectors :meth:`TrainingMethod.commit` needs and that are never sent
        (Clip21-SGD2M's new momentum and un-noised clipped step, DASHA's new PAGE
        estimator): computed once in ``propose``, folded into the state only once the
        message is sealed, so a proposal that is never sent leaves the state untouched.
    """

    vector: Vector
    message: MethodMessage
    dense: bool = False
    carry: Mapping[str, Vector] = field(default_factory=dict)


# -- the device's gradients ---------------------------------------------------------------


class GradientOracle(Protocol):
    """The device's local loss ``f_i``, as a method sees it.

    On a device it is torch behind :mod:`byzedge.edge_agent.gradients`; the simulator and
    the tests use the same class or a numpy one.
    """

    @property
    def dim(self) -> int:
        """Number of parameters ``d``."""
        ...

    @property
    def samples(self) -> int:
        """Number of usable local samples ``m`` (0: the device cannot compute anything)."""
        ...

    def full_gradient(self, params: Vector) -> Vector:
        """``grad f_i(params)`` over every usable local sample, float32 ``(d,)``."""
        ...

    def minibatch_gradients(
        self, points: Sequence[Vector], batch_size: int, seed: int
    ) -> list[Vector]:
        """Gradients at each of ``points`` over ONE minibatch of ``batch_size`` samples.

        The same samples at every point (MARINA's and PAGE's difference
        ``grad f_ij(x_{r}) - grad f_ij(x_{r-1})`` needs it), drawn with ``seed``.
        """
        ...


# -- state on each side -------------------------------------------------------------------


def vector_to_plain(vector: Vector | None) -> bytes | None:
    """float32 little-endian bytes of ``vector`` (msgpack-friendly); ``None`` stays."""
    return None if vector is None else np.ascontiguousarray(vector, dtype="<f4").tobytes()


def vector_from_plain(raw: object, dim: int) -> Vector | None:
    """Inverse of :func:`vector_to_plain`; anything not ``4 * dim`` bytes is ``None``.

    A vector of another size (the fleet changed model) or type starts again from nothing,
    as on a new device or a new server.
    """
    if isinstance(raw, bytes) and len(raw) == 4 * dim:
        return np.frombuffer(raw, dtype="<f4").astype(np.float32)
    return None


@dataclass(slots=True)
class DeviceState:
    """A device's side of a method, persisted by the agent with its state file.

    Attributes
    ----------
    vectors:
        The method's named float32 ``(d,)`` vectors (``g``: EF21's estimator, ``h``:
        PAGE's, ``v``: a momentum...).
    base_round:
        The round of the last message committed (sent as the next message's base round).
    """

    vectors: dict[str, Vector] = field(default_factory=dict)
    base_round: int | None = None

    def to_plain(self) -> dict[str, Any]:
        """msgpack-friendly form (never pickle)."""
        return {
            "vectors": {k: vector_to_plain(v) for k, v in sorted(self.vectors.items())},
            "base_round": self.base_round,
        }

    @classmethod
    def from_plain(cls, document: object, dim: int) -> DeviceState:
        """Restore :meth:`to_plain`; unusable parts are dropped (the method then resyncs)."""
        if not isinstance(document, Mapping):
            return cls()
        vectors: dict[str, Vector] = {}
        raw_vectors = document.get("vectors")
        if isinstance(raw_vectors, Mapping):
            for name, raw in raw_vectors.items():
                vector = vector_from_plain(raw, dim)
                if isinstance(name, str) and vector is not None:
                    vectors[name] = vector
        base = document.get("base_round")
        valid_base = isinstance(base, int) and not isinstance(base, bool)
        return cls(vectors=vectors, base_round=base if valid_base else None)


def model_digest(params: Vector) -> str:
    """SHA-256 hex of ``params`` as raw little-endian float32: the manifest's ``sha256``."""
    return vector_digest(params)


@dataclass(slots=True)
class ServerState:
    """The server's side of a method, persisted by the coordinator with its state file.

    Attributes
    ----------
    g:
        The aggregated estimator ``g_r`` the model stepped with (``None`` before the
        first aggregation).
    mirrors:
        Per-device copies of the devices' estimators (EF21, DASHA, Clip21-SGD2M).
    mirror_rounds:
        The round of the last message applied to each mirror.
    resync:
        Devices found out of step; the next plan lists them (a reset clears them).
    previous_params, previous_sha256:
        ``x_{r-1}``, the model published for the round before the current one
        (MARINA-PP's clip radius uses ``||x_r - x_{r-1}||``).
    current_params, current_sha256:
        ``x_r``, the model published for the current round.
    previous_g, current_g:
        ``g`` as it stood when ``x_{r-1}`` and ``x_r`` were published: what a device that
        follows a compressed broadcast holds beside the model (Byz-EF21-BC).
    broadcast:
        The compressed broadcast ``b`` last added to ``g`` (Byz-EF21-BC), dense float32
        with zeros off its support; ``None`` for other methods.
    """

    g: Vector | None = None
    mirrors: dict[str, Vector] = field(default_factory=dict)
    mirror_rounds: dict[str, int] = field(default_factory=dict)
    resync: set[str] = field(default_factory=set)
    previous_params: Vector | None = None
    previous_sha256: str | None = None
    current_params: Vector | None = None
    current_sha256: str | None = None
    previous_g: Vector | None = None
    current_g: Vector | None = None
    broadcast: Vector | None = None

    def publish(self, params: Vector) -> str | None:
        """Record that ``params`` is the model of a new round; return ``x_{r-1}``'s digest.

        Called once per round, when its plan is made (a re-published model of the same
        round keeps its plan). After a round that did not move the model, ``x_{r-1}`` and
        ``x_r`` are the same model, so devices' stored previous model still matches.
        """
        self.previous_params = self.current_params
        self.previous_sha256 = self.current_sha256
        self.current_params = np.array(params, dtype=np.float32, copy=True)
        self.current_sha256 = model_digest(self.current_params)
        self.previous_g = self.current_g
        self.current_g = None if self.g is None else self.g.copy()
        return self.previous_sha256

    def to_plain(self) -> dict[str, Any]:
        """msgpack-friendly form (never pickle)."""
        return {
            "g": vector_to_plain(self.g),
            "mirrors": {k: vector_to_plain(v) for k, v in sorted(self.mirrors.items())},
            "mirror_rounds": dict(sorted(self.mirror_rounds.items())),
            "resync": sorted(self.resync),
            "previous_params": vector_to_plain(self.previous_params),
            "previous_sha256": self.previous_sha256,
            "current_params": vector_to_plain(self.current_params),
            "current_sha256": self.current_sha256,
            "previous_g": vector_to_plain(self.previous_g),
            "current_g": vector_to_plain(self.current_g),
            "broadcast": vector_to_plain(self.broadcast),
        }

    @classmethod
    def from_plain(cls, document: object, dim: int) -> ServerState:
        """Restore :meth:`to_plain`; a mirror that cannot be read is dropped (resync)."""
        if not isinstance(document, Mapping):
            return cls()
        state = cls(
            g=vector_from_plain(document.get("g"), dim),
            previous_params=vector_from_plain(document.get("previous_params"), dim),
            current_params=vector_from_plain(document.get("current_params"), dim),
            previous_g=vector_from_plain(document.get("previous_g"), dim),
            current_g=vector_from_plain(document.get("current_g"), dim),
            broadcast=vector_from_plain(document.get("broadcast"), dim),
        )
        for name in ("previous_sha256", "current_sha256"):
            digest = document.get(name)
            setattr(state, name, digest if isinstance(digest, str) else None)
        mirrors = document.get("mirrors")
        rounds = document.get("mirror_rounds")
        if isinstance(mirrors, Mapping) and isinstance(rounds, Mapping):
            for device, raw in mirrors.items():
                vector = vector_from_plain(raw, dim)
                applied = rounds.get(device)
                if isinstance(device, str) and vector is not None and isinstance(applied, int):
                    state.mirrors[device] = vector
                    state.mirror_rounds[device] = applied
                elif isinstance(device, str):
                    state.resync.add(device)
        resync = document.get("resync")
        if isinstance(resync, list):
            state.resync.update(d for d in resync if isinstance(d, str))
        return state


# -- the method ---------------------------------------------------------------------------


class TrainingMethod(Protocol):
    """One training method: both halves and what it needs from the rest of the system.

    Class attributes
    ----------------
    name:
        Permanent registry name (config key ``algorithm``).
    compressor_class:
        What its compression must be: ``"unbiased"`` (MARINA, DASHA: ``E[Q(x)] = x``),
        ``"contractive"`` (EF21: ``||C(x) - x||^2 <= (1 - alpha)||x||^2``) or ``"any"``.
    compressed_broadcast:
        Whether the server's step leaves a compressed broadcast in
        :attr:`ServerState.broadcast` that devices can follow instead of the dense model
        (Byz-EF21-BC).
    server_mirrors:
        Whether the server keeps a ``d``-float mirror of every device's estimator and
        aggregates all of them each round (EF21, DASHA, Clip21-SGD2M): ``n d`` floats in
        memory and in the state file.
    """

    name: ClassVar[str]
    compressor_class: ClassVar[Literal["unbiased", "contractive", "any"]]
    compressed_broadcast: ClassVar[bool]
    server_mirrors: ClassVar[bool]

    # server half
    def plan(self, round_number: int, params: Vector, state: ServerState) -> RoundPlan:
        """Decide round ``round_number``, whose model is ``params`` (``x_r``).

        Calls ``state.publish(params)`` (the plan's ``previous_sha256``). The coin is
        seeded by the round, so a coordinator restarted from the state saved after round
        ``r - 1`` makes the same plan again.
        """
        ...

    def asks_everyone(self, plan: RoundPlan) -> bool:
        """Whether round ``plan`` must ask every device, whatever the cohort sampling.

        MARINA-PP's full rounds do (a cohort ``C-hat = n`` keeps an honest-majority anchor);
        the other methods leave the cohort to the configuration.
        """
        ...

    def rows(
        self,
        plan: RoundPlan,
        messages: Mapping[str, tuple[MethodMessage, Vector]],
        state: ServerState,
    ) -> tuple[list[str], list[Vector], dict[str, str]]:
        """Turn the round's accepted messages into the rows the robust rule aggregates.

        Returns the row devices (sorted), their float32 rows, and the messages dropped
        with a reason (``device -> reason``; such devices are listed for resync).
        """
        ...

    def apply(
        self, plan: RoundPlan, params: Vector, aggregate: Vector, state: ServerState
    ) -> Vector:
        """Fold the robust aggregate into ``state`` and return ``x_{r+1}``."""
        ...

    # device half
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
        """What the device sends for ``plan`` from model ``x_r``.

        ``previous`` is ``x_{r-1}`` when the device holds the model whose digest the plan
        names, else ``None``; ``None`` back means the device cannot take part this round
        (it waits for the method's next resync point).
        """
        ...

    def commit(self, plan: RoundPlan, proposal: Proposal, sent: Vector, state: DeviceState) -> None:
        """Update the device state with ``sent`` (what the server decodes) once sealed."""
        ...


def check_option_names(
    options: Mapping[str, OptionValue], allowed: Sequence[str], method: str
) -> None:
    """Raise ``ValueError`` naming any option ``method`` does not take."""
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        msg = f"{method} does not take option(s) {', '.join(unknown)}; it takes: " + ", ".join(
            sorted(allowed)
        )
        raise ValueError(msg)
