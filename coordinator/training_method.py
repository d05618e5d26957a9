"""The coordinator's ``algorithm`` and ``[method]`` keys: which training method the fleet runs.

``algorithm = "fedavg"`` (the default) is local epochs on the device and the parameter
delta; any other name is a method of :mod:`byzedge.methods` (Byz-VR-MARINA, Byz-EF21,
Byz-DASHA-PAGE, Clip21-SGD2M...), whose hyper-parameters are the ``[method]`` table. The
coordinator decides them for the whole fleet: they travel in every round's signed plan
(:class:`~byzedge.methods.base.RoundPlan`), together with the compression devices must use
for the method's messages, so no device can choose its own.

The seed's spelling ``byzantine_defense = "byz-vr-marina"`` selects that method with the
aggregation rule its paper runs (coordinate-wise median over buckets of 2, Gorbunov et al.
ICLR 2023, section 4); ``byzantine_defense`` naming an aggregation rule keeps its meaning.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Final, Literal

from pydantic import Field

from byzedge.daemon.config import StrictModel
from byzedge.methods import FEDAVG, METHODS, BuiltMethod, build_method, is_method
from byzedge.methods.base import OptionValue, RoundPlan, TrainingMethod
from byzedge.protocol.codecs import CODECS, build_codec

__all__ = [
    "CODEC_KEYS",
    "FEDAVG",
    "METHOD_DEFAULT_RULE",
    "MethodConfig",
    "build_method_for",
    "build_training_method",
    "check_compression",
    "cohort_for_plan",
    "compatible_codecs",
    "is_method",
    "method_options",
    "with_compression",
]

METHOD_DEFAULT_RULE: Final[dict[str, Any]] = {
    "byzantine_defense": "bucketing",
    "inner": "coordinate-median",
    "bucket_size": 2,
}
"""What ``byzantine_defense = <method name>`` aggregates with: CM over buckets of 2."""


class MethodConfig(StrictModel):
    """The ``[method]`` table: a training method's hyper-parameters (unset: its default).

    Each method takes only its own keys (a key it does not take is an error naming the
    keys it does take); see :mod:`byzedge.methods`.
    """

    step_size: float | None = Field(
        None, gt=0, description="gamma of x <- x - gamma g (the method's step on the estimator)."
    )
    full_gradient_probability: float | None = Field(
        None, gt=0, le=1, description="p: chance that a round is a full-gradient round."
    )
    reference_update_frequency: int | None = Field(
        None, ge=1, description="A full-gradient round every N rounds instead of the coin."
    )
    batch_size: int | None = Field(
        None, ge=1, description="Minibatch of the device's stochastic gradients."
    )
    clip_multiplier: float | None = Field(
        None, gt=0, description="byz-vr-marina-pp: lambda of the radius lambda*||x_r - x_{r-1}||."
    )
    momentum1: float | None = Field(
        None, ge=0, lt=1, description="clip21-sgd2m: weight of the previous device momentum."
    )
    momentum2: float | None = Field(
        None, ge=0, lt=1, description="clip21-sgd2m: weight of the previous error-feedback state."
    )
    clip_norm: float | None = Field(None, gt=0, description="clip21-sgd2m: clipping radius tau.")
    dp_noise_multiplier: float | None = Field(
        None, ge=0, description="clip21-sgd2m: Gaussian noise std as a multiple of clip_norm."
    )
    downlink_sparsity: float | None = Field(
        None,
        gt=0,
        le=1,
        description="byz-ef21-bc: share of coordinates the compressed broadcast keeps.",
    )
    dasha_momentum: float | None = Field(
        None, gt=0, le=1, description="byz-dasha-page: momentum a (default 1/(2 omega + 1))."
    )
    compression: str = Field(
        "dense", description="Codec of the method's messages (devices use this one)."
    )
    sparsity: float = Field(
        0.1, gt=0, le=1, description="Fraction of coordinates kept by sparsifying codecs."
    )
    rand_k_support: Literal["round", "device"] = Field(
        "round",
        description=(
            "rand-k's coordinates: the same for every device of a round (coordinate-wise "
            "robust rules compare like with like), or drawn per device."
        ),
    )


CODEC_KEYS: Final = ("compression", "sparsity", "rand_k_support")
"""``[method]`` keys about the codec of method messages, not options of the method."""


def method_options(table: MethodConfig) -> dict[str, Any]:
    """The method's own keys that the table sets (the :data:`CODEC_KEYS` excluded)."""
    own = table.model_dump(exclude=set(CODEC_KEYS))
    return {key: value for key, value in own.items() if value is not None}


def build_training_method(
    algorithm: str, table: MethodConfig, seed: int, dim: int | None = None
) -> BuiltMethod:
    """Build ``algorithm`` from the coordinator's ``[method]`` table.

    Raises
    ------
    ValueError
        For an unknown method, an option it does not take, or a compression of the wrong
        class (:func:`check_compression`).
    """
    return build_method_for(
        algorithm,
        method_options(table),
        compression=table.compression,
        sparsity=table.sparsity,
        seed=seed,
        dim=dim,
    )


def build_method_for(
    algorithm: str,
    options: Mapping[str, OptionValue],
    *,
    compression: str,
    sparsity: float,
    seed: int,
    dim: int | None,
    secret_noise: bool = True,
) -> BuiltMethod:
    """Build ``algorithm`` as a fleet runs it; the coordinator and the simulator both call this.

    What the configuration leaves unset is derived here once: the coin's seed (the fleet
    seed), DASHA's momentum ``a = 1/(2 omega + 1)`` from the codec's ``omega`` at the
    model's size ``dim`` (when given), and Clip21-SGD2M's noise source (``secret_noise``:
    the simulator passes ``False`` so runs repeat; a device then gets no privacy from it).

    Raises
    ------
    ValueError
        For an unknown method, an option it does not take, or a compression of the wrong
        class (:func:`check_compression`).
    """
    if algorithm not in METHODS:
        known = ", ".join(sorted(METHODS))
        raise ValueError(f"unknown training method {algorithm!r}; known: {known}")
    names = METHODS[algorithm].option_names
    chosen: dict[str, OptionValue] = dict(options)
    if "seed" in names:
        chosen.setdefault("seed", seed)
    if "secret_noise" in names and not secret_noise:
        chosen.setdefault("secret_noise", False)
    if "compression_omega" in names and "compression_omega" not in chosen and dim is not None:
        codec_type = CODECS.get(compression)
        if codec_type is not None:
            params = {"sparsity": sparsity} if codec_type.sparse else {}
            codec = build_codec(compression, **params)
            omega = codec.omega(dim)
            chosen["compression_omega"] = 0.0 if omega is None else float(omega)
    method = build_method(algorithm, **chosen)
    check_compression(method, compression)
    return method


def check_compression(method: TrainingMethod, compression: str) -> None:
    """Refuse a codec whose class the method cannot use.

    MARINA and DASHA need an unbiased compressor (``E[Q(x)] = x``: their server adds the
    compressed differences to ``g``); EF21 needs a contractive one (its error feedback
    corrects the bias). A lossless codec suits every method.
    """
    try:
        codec = CODECS[compression]
    except KeyError:
        known = ", ".join(sorted(CODECS))
        raise ValueError(f"unknown compression {compression!r}; known: {known}") from None
    kind = codec.compressor_class
    wanted = method.compressor_class
    if kind == "lossless" or wanted in ("any", kind):
        return
    msg = (
        f"{method.name} needs an {wanted} compressor; {compression!r} is {kind} "
        f"(pick one of: {', '.join(compatible_codecs(method))})"
    )
    raise ValueError(msg)


def compatible_codecs(method: TrainingMethod) -> list[str]:
    """The registered codecs ``method`` accepts."""
    names = []
    for name, codec in CODECS.items():
        kind = codec.compressor_class
        if kind == "lossless" or method.compressor_class in ("any", kind):
            names.append(name)
    return sorted(names)


def with_compression(plan: RoundPlan, table: MethodConfig) -> RoundPlan:
    """``plan`` with the fleet's compression for method messages in its options."""
    options = {
        **plan.options,
        "compression": table.compression,
        "sparsity": table.sparsity,
        "rand_k_support": table.rand_k_support,
    }
    return dataclasses.replace(plan, options=options)


def cohort_for_plan(
    method: TrainingMethod, plan: RoundPlan, sampled: frozenset[str] | None
) -> frozenset[str] | None:
    """The devices round ``plan`` asks: everyone when the method says so, else ``sampled``.

    Byz-VR-MARINA-PP's full-gradient rounds ask every device (Malinovsky et al. 2024,
    Alg. 1: ``|S_k| = C-hat``, here ``n``); the coordinator and the simulator both use this.
    """
    return None if method.asks_everyone(plan) else sampled
