"""Every registered codec through the same properties.

Round trips keep the shape, a default-built codec (what the coordinator uses) decodes what
a configured one encodes, the declared class matches what the codec does (unbiased: the
mean of many seeded draws approaches ``x`` within the ``omega`` bound; contractive: the
error stays within ``(1 - alpha)``), and no body makes ``decode`` raise anything but
``CodecError``.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from byzedge.protocol.codecs import CODECS, Codec, CodecContext, build_codec
from byzedge.protocol.errors import CodecError

NAMES = sorted(CODECS)
SPARSITY = 0.05
CONTEXT = CodecContext("fleet-a", 7, "dev-001")


def make(name: str, seed: int = 0) -> Codec:
    params: dict[str, Any] = {"sparsity": SPARSITY} if CODECS[name].sparse else {}
    if CODECS[name].compressor_class == "unbiased" or name == "top-k-q8":
        params["seed"] = seed
    return build_codec(name, **params)


def sample(dim: int, seed: int = 0) -> NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(dim) * rng.uniform(0.01, 2.0, dim)).astype(np.float32)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dim", [0, 1, 2, 7, 64, 1000])
def test_a_round_trip_keeps_the_shape_and_stays_finite(name: str, dim: int) -> None:
    codec = make(name)
    decoded = codec.decode(codec.encode(sample(dim), context=CONTEXT), dim, context=CONTEXT)

    assert decoded.shape == (dim,)
    assert decoded.dtype == np.float32
    assert np.isfinite(decoded).all()


@pytest.mark.parametrize("name", NAMES)
def test_a_default_built_codec_decodes_what_a_configured_one_encodes(name: str) -> None:
    x = sample(500)
    configured = make(name)
    body = configured.encode(x, context=CONTEXT)

    np.testing.assert_array_equal(
        CODECS[name]().decode(body, 500, context=CONTEXT),
        configured.decode(body, 500, context=CONTEXT),
    )


@pytest.mark.parametrize("name", NAMES)
def test_the_declared_class_comes_with_its_constant(name: str) -> None:
    codec = make(name)
    omega, alpha = codec.omega(1000), codec.alpha(1000)

    assert codec.compressor_class in {"unbiased", "contractive", "lossless"}
    if codec.compressor_class in {"unbiased", "lossless"}:
        assert omega is not None
        assert omega >= 0
    if codec.compressor_class in {"contractive", "lossless"}:
        assert alpha is not None
        assert 0 < alpha <= 1


@pytest.mark.parametrize("name", [n for n in NAMES if CODECS[n].compressor_class == "unbiased"])
def test_an_unbiased_codec_averages_to_the_vector_within_its_omega(name: str) -> None:
    # E||mean of N draws - x||^2 <= omega ||x||^2 / N for independent draws; the squared
    # error sums over d coordinates, so it sits near its mean: a factor 3 never fails by
    # chance at d = 64 while any bias of the noise's size would break it.
    dim, draws = 64, 4000
    x = sample(dim, seed=3)
    codec = make(name, seed=11)
    total = np.zeros(dim, dtype=np.float64)
    for round_number in range(draws):  # rand-k's support changes with the round
        context = CodecContext("fleet-a", round_number, "dev-001")
        total += codec.decode(codec.encode(x, context=context), dim, context=context)
    mean = total / draws
    omega = codec.omega(dim)
    assert omega is not None

    error = float(np.sum((mean - x) ** 2))
    assert error <= 3 * omega * float(np.sum(x.astype(np.float64) ** 2)) / draws


@pytest.mark.parametrize("name", [n for n in NAMES if CODECS[n].compressor_class == "unbiased"])
def test_an_unbiased_codec_has_the_variance_its_omega_bounds(name: str) -> None:
    dim, draws = 256, 400
    x = sample(dim, seed=5)
    codec = make(name, seed=2)
    squared = 0.0
    for round_number in range(draws):
        context = CodecContext("fleet-a", round_number, "dev-001")
        decoded = codec.decode(codec.encode(x, context=context), dim, context=context)
        squared += float(np.sum((decoded.astype(np.float64) - x) ** 2))
    omega = codec.omega(dim)
    assert omega is not None

    # The mean of 400 draws of a sum over 256 coordinates: within 10% of its expectation.
    assert squared / draws <= 1.1 * omega * float(np.sum(x.astype(np.float64) ** 2))


@pytest.mark.parametrize(
    "name", [n for n in NAMES if CODECS[n].compressor_class in {"contractive", "lossless"}]
)
def test_a_contractive_codec_keeps_the_error_within_one_minus_alpha(name: str) -> None:
    dim, draws = 1000, 50
    x = sample(dim, seed=9)
    codec = make(name, seed=4)
    alpha = codec.alpha(dim)
    assert alpha is not None
    squared = np.mean(
        [
            np.sum((codec.decode(codec.encode(x), dim).astype(np.float64) - x) ** 2)
            for _ in range(draws)
        ]
    )

    assert squared <= (1 - alpha) * float(np.sum(x.astype(np.float64) ** 2))


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=200), dim=st.integers(0, 120))
def test_any_body_decodes_or_raises_codec_error(name: str, data: bytes, dim: int) -> None:
    try:
        decoded = CODECS[name]().decode(data, dim, context=CONTEXT)
    except CodecError:
        return
    assert decoded.shape == (dim,)


@pytest.mark.parametrize("name", NAMES)
def test_mutated_honest_bodies_decode_or_raise_codec_error(name: str) -> None:
    dim = 300
    body = make(name).encode(sample(dim), context=CONTEXT)
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(name.encode()).digest()[:4]))
    mutants = [body[:cut] for cut in range(0, len(body), max(1, len(body) // 17))]
    mutants += [body + b"\x00", body + b"\xff", b"\x00" + body]
    for _ in range(200):
        mutant = bytearray(body)
        position = int(rng.integers(0, len(body)))
        mutant[position] ^= 1 << int(rng.integers(0, 8))
        mutants.append(bytes(mutant))
    for mutant in mutants:
        try:
            decoded = CODECS[name]().decode(mutant, dim, context=CONTEXT)
        except CodecError:
            continue
        assert decoded.shape == (dim,)
