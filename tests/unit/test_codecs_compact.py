"""The compact codecs: exact wire bytes, sizes, shared-seed supports and malformed bodies."""

from __future__ import annotations

import hashlib
import math
import struct

import numpy as np
import pytest
from numpy.typing import NDArray

from byzedge.protocol.codecs import (
    CODECS,
    CodecContext,
    NaturalCodec,
    QSGDCodec,
    RandKCodec,
    RandKQ8Codec,
    SupportMismatchError,
    TopKCodec,
    TopKQ8Codec,
    build_codec,
    fits_class,
)
from byzedge.protocol.codecs.bits import pack_fields, unpack_fields
from byzedge.protocol.codecs.randk import shared_seed, shared_support
from byzedge.protocol.codecs.stochastic import q8_decode, q8_encode, stochastic_float16
from byzedge.protocol.errors import CodecError

CONTEXT = CodecContext("fleet-a", 7, "dev-001")


def vector(values: list[float]) -> NDArray[np.float32]:
    return np.asarray(values, dtype=np.float32)


def gaussian(dim: int, seed: int = 0) -> NDArray[np.float32]:
    return np.random.default_rng(seed).standard_normal(dim).astype(np.float32)


# --- classes --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("dense", "lossless"),
        ("float16", "lossless"),
        ("top-k", "contractive"),
        ("top-k-q8", "contractive"),
        ("rand-k", "unbiased"),
        ("rand-k-q8", "unbiased"),
        ("natural", "unbiased"),
        ("qsgd", "unbiased"),
    ],
)
def test_each_codec_declares_its_compressor_class(name: str, expected: str) -> None:
    assert CODECS[name].compressor_class == expected


def test_a_lossless_codec_fits_every_method_and_the_others_only_their_own() -> None:
    assert fits_class("lossless", "unbiased")
    assert fits_class("lossless", "contractive")
    assert fits_class("unbiased", "unbiased")
    assert not fits_class("unbiased", "contractive")
    assert not fits_class("contractive", "unbiased")
    assert fits_class("contractive", "any")


def test_rand_k_omega_is_d_over_k_minus_one_plus_float16_rounding() -> None:
    assert RandKCodec(0.01).omega(1000) == pytest.approx(1000 / 10 * (1 + 2.0**-22) - 1)


def test_natural_omega_is_one_eighth_and_qsgd_follows_alistarh() -> None:
    assert NaturalCodec().omega(10) == 1 / 8
    assert QSGDCodec(levels=4).omega(100) == min(100 / 16, 10 / 4)


def test_top_k_q8_alpha_is_top_k_alpha_less_the_8_bit_variance() -> None:
    k = 10
    assert TopKQ8Codec(0.01).alpha(1000) == pytest.approx((1 - k / (4 * 127**2)) * k / 1000)


# --- exact bytes ----------------------------------------------------------------------------


def test_natural_sends_sign_and_exponent_of_powers_of_two_exactly() -> None:
    body = NaturalCodec(seed=0).encode(vector([1.0, -2.0, 0.0]))

    # Exponents 127, 128, 0; sign bits 0b010.
    assert body == bytes([0x7F, 0x80, 0x00, 0x02])
    np.testing.assert_array_equal(NaturalCodec().decode(body, 3), [1.0, -2.0, 0.0])


@pytest.mark.parametrize("dim", [0, 1, 8, 9, 1000])
def test_natural_body_is_nine_bits_per_coordinate(dim: int) -> None:
    assert len(NaturalCodec().encode(gaussian(dim))) == dim + math.ceil(dim / 8)


def test_natural_rounds_only_to_the_two_neighbouring_powers_of_two() -> None:
    codec = NaturalCodec(seed=1)
    draws = {float(codec.decode(codec.encode(vector([-0.75])), 1)[0]) for _ in range(200)}

    assert draws == {-0.5, -1.0}


def test_qsgd_packs_norm_and_five_bit_fields_exactly() -> None:
    # ||(3, -4)|| = 5: levels 15*3/5 = 9 and 15*4/5 = 12 exactly, fields 9<<1 and 12<<1|1.
    body = QSGDCodec(seed=0).encode(vector([3.0, -4.0]))

    assert body == struct.pack("<Hf", 15, 5.0) + bytes([0x32, 0x03])
    np.testing.assert_array_equal(QSGDCodec().decode(body, 2), [3.0, -4.0])


@pytest.mark.parametrize(("levels", "width"), [(1, 2), (3, 3), (15, 5), (16, 6), (255, 9)])
def test_qsgd_body_size_follows_the_level_count(levels: int, width: int) -> None:
    assert len(QSGDCodec(levels).encode(gaussian(100))) == 6 + math.ceil(100 * width / 8)


def test_top_k_q8_body_is_rice_coded_gaps_and_8_bit_values_exactly() -> None:
    x = vector([0, 5, 0, 0, -5, 0, 0, 0])
    body = TopKQ8Codec(0.25, seed=0).encode(x)

    # K = 2 at indices 1, 4: gaps 1, 2, Rice r = 0, unary 10 110 padded with ones.
    expected = (
        (2).to_bytes(4, "little") + b"\x00" + struct.pack("<ff", 5.0, 5.0) + b"\x00\x80" + b"\xed"
    )
    assert body == expected
    np.testing.assert_array_equal(TopKQ8Codec().decode(body, 8), x)


def test_top_k_q8_keeps_the_same_coordinates_as_top_k() -> None:
    x = gaussian(5000, seed=2)
    decoded = TopKQ8Codec(0.01).decode(TopKQ8Codec(0.01).encode(x), 5000)

    np.testing.assert_array_equal(np.flatnonzero(decoded), TopKCodec(0.01).select(x))


def test_top_k_q8_spends_about_two_bytes_per_kept_coordinate_at_one_percent() -> None:
    dim = 115_210
    body = TopKQ8Codec(0.01).encode(gaussian(dim, seed=3))
    k = math.ceil(0.01 * dim)

    # 1 byte of value, about log2(100) + 1.5 bits of gap, 13 bytes of framing.
    assert len(body) / k <= 2.1
    assert len(body) < len(TopKCodec(0.01).encode(gaussian(dim, seed=3))) / 2.5


@pytest.mark.parametrize("sparsity", [0.01, 0.1, 0.5, 1.0])
def test_rand_k_bodies_have_their_documented_sizes(sparsity: float) -> None:
    dim = 1000
    k = math.ceil(sparsity * dim)

    assert len(RandKCodec(sparsity).encode(gaussian(dim), context=CONTEXT)) == 12 + 2 * k
    assert len(RandKQ8Codec(sparsity).encode(gaussian(dim), context=CONTEXT)) == 20 + k


# --- rand-k's shared seed -------------------------------------------------------------------


def test_the_shared_seed_is_sha_256_of_the_documented_fields() -> None:
    material = (
        b"byzedge/rand-k/v1\x00"
        + (7).to_bytes(4, "little")
        + b"fleet-a"
        + (7).to_bytes(4, "little")
        + b"dev-001"
        + (7).to_bytes(8, "little")
    )

    assert shared_seed(CONTEXT) == hashlib.sha256(material).digest()


def test_the_shared_support_is_pinned_forever() -> None:
    # Devices and coordinators of every version must agree: this is wire contract.
    seed = shared_seed(CONTEXT)

    assert seed[:8].hex() == "e06dafb5f8b8f27f"
    assert shared_support(seed, 1000, 10).tolist() == [
        284, 431, 542, 658, 662, 669, 673, 806, 904, 996,
    ]  # fmt: skip


def test_the_support_depends_on_fleet_round_and_sender() -> None:
    supports = {
        tuple(shared_support(shared_seed(context), 10_000, 50).tolist())
        for context in (
            CONTEXT,
            CodecContext("fleet-b", 7, "dev-001"),
            CodecContext("fleet-a", 8, "dev-001"),
            CodecContext("fleet-a", 7, "dev-002"),
        )
    }

    assert len(supports) == 4


def test_the_round_support_is_sha_256_of_fleet_and_round_only() -> None:
    material = (
        b"byzedge/rand-k/round/v1\x00"
        + (7).to_bytes(4, "little")
        + b"fleet-a"
        + (7).to_bytes(8, "little")
    )

    assert shared_seed(CONTEXT, "round") == hashlib.sha256(material).digest()


@pytest.mark.parametrize("name", ["rand-k", "rand-k-q8"])
def test_a_round_support_is_every_senders_and_decodes_like_a_device_one(name: str) -> None:
    x = gaussian(2000)
    codec = build_codec(name, sparsity=0.02, support="round")
    other = CodecContext("fleet-a", 7, "dev-002")
    first = codec.decode(codec.encode(x, context=CONTEXT), 2000, context=CONTEXT)
    second = codec.decode(codec.encode(x, context=other), 2000, context=other)

    np.testing.assert_array_equal(np.flatnonzero(first), np.flatnonzero(second))
    # A default-built decoder (what ingest uses) reads it too.
    plain = build_codec(name)
    np.testing.assert_array_equal(
        plain.decode(codec.encode(x, context=CONTEXT), 2000, context=CONTEXT) != 0,
        first != 0,
    )


def test_a_round_support_of_another_round_is_a_support_mismatch() -> None:
    codec = RandKCodec(0.02, support="round")
    body = codec.encode(gaussian(500), context=CodecContext("fleet-a", 6, "dev-001"))

    with pytest.raises(SupportMismatchError, match="round"):
        codec.decode(body, 500, context=CONTEXT)


def test_an_unknown_support_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="support"):
        RandKCodec(0.1, support="fleet")  # type: ignore[arg-type]


def test_supports_of_growing_k_are_nested() -> None:
    seed = shared_seed(CONTEXT)
    small, large = shared_support(seed, 5000, 20), shared_support(seed, 5000, 200)

    assert set(small.tolist()) <= set(large.tolist())
    assert len(set(large.tolist())) == 200


def test_rand_k_sends_no_index_and_decodes_on_the_shared_support() -> None:
    x = gaussian(1000)
    codec = RandKQ8Codec(0.01, seed=0)
    decoded = codec.decode(codec.encode(x, context=CONTEXT), 1000, context=CONTEXT)

    support = shared_support(shared_seed(CONTEXT), 1000, 10)
    np.testing.assert_array_equal(np.flatnonzero(decoded), support)
    # Scaled by d/K = 100 (unbiased), each value within one step of the 8-bit grid.
    step = float(np.max(np.abs(x[support]))) / 127
    np.testing.assert_allclose(decoded[support], 100 * x[support], rtol=0, atol=100 * step)


def test_a_rand_k_body_of_another_round_is_a_support_mismatch() -> None:
    body = RandKCodec(0.05).encode(gaussian(100), context=CodecContext("fleet-a", 6, "dev-001"))

    with pytest.raises(SupportMismatchError, match="round 7"):
        RandKCodec().decode(body, 100, context=CONTEXT)


def test_support_mismatch_is_a_codec_error() -> None:
    assert issubclass(SupportMismatchError, CodecError)


def test_rand_k_needs_a_context_on_both_ends() -> None:
    body = RandKCodec().encode(gaussian(10), context=CONTEXT)

    with pytest.raises(ValueError, match="context"):
        RandKCodec().encode(gaussian(10))
    with pytest.raises(CodecError, match="context"):
        RandKCodec().decode(body, 10)


# --- stochastic rounding --------------------------------------------------------------------


def test_stochastic_float16_picks_one_of_the_two_neighbours_with_the_right_odds() -> None:
    value = vector([1.0 + 2.0**-12])  # a quarter of the way from 1 to 1 + 2**-10
    rng = np.random.default_rng(0)
    draws = np.array(
        [np.frombuffer(stochastic_float16(value, rng), "<f2")[0] for _ in range(4000)]
    ).astype(np.float64)

    assert set(draws.tolist()) == {1.0, 1.0 + 2.0**-10}
    assert np.mean(draws == 1.0 + 2.0**-10) == pytest.approx(0.25, abs=0.03)


def test_the_8_bit_code_is_exact_on_its_grid_ends_and_keeps_signs() -> None:
    x = vector([-2.0, 0.5, 2.0, -0.5])
    decoded = q8_decode(q8_encode(x, np.random.default_rng(0)), 4, "q8")

    np.testing.assert_array_equal(decoded, x)


def test_the_8_bit_code_of_a_non_finite_block_decodes_to_nan() -> None:
    decoded = q8_decode(q8_encode(vector([1.0, np.inf]), np.random.default_rng(0)), 2, "q8")

    assert np.isnan(decoded).all()


def test_bit_fields_round_trip_and_refuse_set_padding() -> None:
    values = np.array([0, 5, 31, 17, 2], dtype=np.int64)
    packed = pack_fields(values, 5)

    np.testing.assert_array_equal(unpack_fields(packed, 5, 5, "x"), values)
    with pytest.raises(CodecError, match="padding"):
        unpack_fields(packed[:-1] + bytes([packed[-1] | 0x80]), 5, 5, "x")


# --- malformed bodies -----------------------------------------------------------------------


def _top_k_q8(k: int, r: int, tail: bytes, values: bytes | None = None) -> bytes:
    block = values if values is not None else struct.pack("<ff", 1.0, 1.0) + bytes(k)
    return k.to_bytes(4, "little") + bytes([r]) + block + tail


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"\x01\x00", "truncated"),
        (_top_k_q8(9, 0, b"\x00\x00"), "keeps 9 coordinates of 8"),
        (_top_k_q8(1, 32, b"\x00"), "Rice parameter 32"),
        (_top_k_q8(2, 0, b"\xfe"), "ends 1 gaps"),  # only one terminating zero
        (_top_k_q8(1, 0, b"\xfe\xff"), "trailing"),
        (_top_k_q8(1, 0, b"\xff\xfe"), "beyond"),  # gap 8 in a vector of 8
        (_top_k_q8(2, 0, b"\xfe\xfe"), "index 8 beyond"),  # gaps 0 and 7: indices 0, 8
        (_top_k_q8(1, 3, b"\xf8\x00"), "padding"),  # remainder's padding bits set
        (_top_k_q8(2, 0, b"", values=b"\x00" * 9), "truncated"),
    ],
)
def test_malformed_top_k_q8_bodies_raise_codec_error(body: bytes, match: str) -> None:
    with pytest.raises(CodecError, match=match):
        TopKQ8Codec().decode(body, 8)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"\x0f\x00\x00\x00", "truncated"),
        (struct.pack("<Hf", 0, 1.0) + b"\x00\x00", "0 levels"),
        (struct.pack("<Hf", 15, -1.0) + b"\x00\x00", "negative norm"),
        (struct.pack("<Hf", 2, 1.0) + b"\x06", "level 3 above 2"),  # 3-bit field 0b110
        (struct.pack("<Hf", 15, 1.0) + b"\x00", "bytes for 2 fields"),
    ],
)
def test_malformed_qsgd_bodies_raise_codec_error(body: bytes, match: str) -> None:
    with pytest.raises(CodecError, match=match):
        QSGDCodec().decode(body, 2)


def test_natural_body_of_the_wrong_length_or_with_set_padding_raises_codec_error() -> None:
    with pytest.raises(CodecError, match="expected 4"):
        NaturalCodec().decode(b"\x7f\x7f\x7f", 3)
    with pytest.raises(CodecError, match="padding"):
        NaturalCodec().decode(b"\x7f\x7f\x7f\x80", 3)


def test_a_natural_exponent_of_255_decodes_to_infinity_for_the_receiver_to_reject() -> None:
    assert np.isinf(NaturalCodec().decode(b"\xff\x00", 1)).all()


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"\x00" * 11, "truncated"),
        (b"\x00" * 8 + (11).to_bytes(4, "little"), "keeps 11 coordinates of 10"),
        (b"\x00" * 8 + (0).to_bytes(4, "little"), "keeps 0 coordinates of 10"),
        (b"\x00" * 8 + (2).to_bytes(4, "little") + b"\x00" * 3, "expected 16"),
    ],
)
def test_malformed_rand_k_bodies_raise_codec_error(body: bytes, match: str) -> None:
    with pytest.raises(CodecError, match=match):
        RandKCodec().decode(body, 10, context=CONTEXT)


@pytest.mark.parametrize("name", ["top-k-q8", "rand-k", "rand-k-q8"])
def test_sparse_codecs_take_the_sparsity_and_refuse_a_bad_one(name: str) -> None:
    assert CODECS[name].sparse
    with pytest.raises(ValueError, match="sparsity"):
        build_codec(name, sparsity=0.0)


def test_qsgd_refuses_levels_outside_its_field() -> None:
    with pytest.raises(ValueError, match="levels"):
        QSGDCodec(levels=0)
    with pytest.raises(ValueError, match="levels"):
        QSGDCodec(levels=1 << 15)


@pytest.mark.parametrize("name", ["top-k-q8", "rand-k", "rand-k-q8", "natural", "qsgd"])
def test_unseeded_rounding_is_replayed_per_context_and_fresh_per_round(name: str) -> None:
    x = gaussian(2000, seed=4)
    again = CodecContext("fleet-a", 8, "dev-001")

    first = build_codec(name).encode(x, context=CONTEXT)
    assert build_codec(name).encode(x, context=CONTEXT) == first
    assert build_codec(name).encode(x, context=again) != first
