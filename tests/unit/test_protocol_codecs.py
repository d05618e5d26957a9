from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.typing import NDArray

from byzedge.protocol.codecs import (
    CODECS,
    Codec,
    DenseCodec,
    Float16Codec,
    NaturalCodec,
    QSGDCodec,
    RandKCodec,
    RandKQ8Codec,
    TopKCodec,
    TopKQ8Codec,
    as_update_vector,
    build_codec,
)
from byzedge.protocol.codecs.float16 import FLOAT16_MAX, to_float16
from byzedge.protocol.errors import CodecError, ProtocolError

BITMAP, UINT16, UINT32 = 0, 1, 2
RTOL = 1e-3
# Below float16's smallest normal number (2**-14, about 6.1e-5) the spacing is 2**-24.
FLOAT16_MIN_NORMAL = 2.0**-14
ATOL = 2.0**-24


def vector(values: list[float] | NDArray[np.float64]) -> NDArray[np.float32]:
    return np.asarray(values, dtype=np.float32)


def distinct_magnitudes(dim: int, seed: int = 0) -> NDArray[np.float32]:
    """``1..dim`` (scaled into float16's range) in random order with random signs.

    Every magnitude is unique, so the top k are unambiguous.
    """
    rng = np.random.default_rng(seed)
    magnitudes = rng.permutation(np.arange(1, dim + 1)) * (100.0 / max(dim, 1))
    return vector(magnitudes * rng.choice([-1.0, 1.0], size=dim))


def topk_body(index_format: int, k: int, indices: bytes, values: bytes) -> bytes:
    return bytes([index_format]) + k.to_bytes(4, "little") + indices + values


def finite_vectors(
    max_dim: int = 300, bound: float | None = 1e4
) -> st.SearchStrategy[NDArray[np.float32]]:
    """1-D float32 vectors of finite values in ``[-bound, bound]`` (any finite one if None)."""
    if bound is None:
        elements = st.floats(allow_nan=False, allow_infinity=False, width=32)
    else:
        elements = st.floats(-bound, bound, width=32)
    return hnp.arrays(np.float32, st.integers(0, max_dim), elements=elements)


ALL_CODECS: list[Codec] = [DenseCodec(), Float16Codec(), TopKCodec(0.1)]


# --- registry -----------------------------------------------------------------------------


def test_codec_error_is_a_protocol_error() -> None:
    assert issubclass(CodecError, ProtocolError)


def test_registry_names_are_the_permanent_wire_names() -> None:
    assert dict(CODECS) == {
        "dense": DenseCodec,
        "float16": Float16Codec,
        "top-k": TopKCodec,
        "top-k-q8": TopKQ8Codec,
        "rand-k": RandKCodec,
        "rand-k-q8": RandKQ8Codec,
        "natural": NaturalCodec,
        "qsgd": QSGDCodec,
    }


def test_registry_is_read_only() -> None:
    with pytest.raises(TypeError):
        CODECS["evil"] = DenseCodec  # type: ignore[index]


@pytest.mark.parametrize("name", sorted(CODECS))
def test_build_codec_returns_the_registered_type(name: str) -> None:
    codec = build_codec(name)
    assert isinstance(codec, CODECS[name])
    assert codec.name == name


def test_build_codec_passes_the_sparsity_to_top_k() -> None:
    codec = build_codec("top-k", sparsity=0.25)
    assert isinstance(codec, TopKCodec)
    assert codec.sparsity == 0.25


def test_top_k_default_sparsity_is_ten_percent() -> None:
    assert TopKCodec().sparsity == 0.1


@pytest.mark.parametrize("name", ["", "Dense", "topk", "gzip", "top_k"])
def test_build_codec_unknown_name_raises_value_error_listing_known_names(name: str) -> None:
    with pytest.raises(
        ValueError, match="known: dense, float16, natural, qsgd, rand-k, rand-k-q8, top-k, top-k-q8"
    ):
        build_codec(name)


@pytest.mark.parametrize("sparsity", [0.0, -0.1, 1.0000001, 1.5, math.nan, math.inf, -math.inf])
def test_build_codec_bad_sparsity_raises_value_error(sparsity: float) -> None:
    with pytest.raises(ValueError, match="sparsity"):
        build_codec("top-k", sparsity=sparsity)


def test_build_codec_non_number_sparsity_raises_value_error() -> None:
    with pytest.raises(ValueError, match="top-k"):
        build_codec("top-k", sparsity="0.1")


@pytest.mark.parametrize("name", ["dense", "float16"])
def test_build_codec_unexpected_parameter_raises_value_error(name: str) -> None:
    with pytest.raises(ValueError, match=f"bad parameters for codec '{name}'"):
        build_codec(name, sparsity=0.1)


def test_build_codec_unknown_top_k_parameter_raises_value_error() -> None:
    with pytest.raises(ValueError, match="bad parameters"):
        build_codec("top-k", ratio=0.1)


# --- as_update_vector ---------------------------------------------------------------------


def test_as_update_vector_casts_to_float32() -> None:
    out = as_update_vector(np.array([1.5, -2.0], dtype=np.float64))
    assert out.dtype == np.float32
    assert out.tolist() == [1.5, -2.0]


def test_as_update_vector_rejects_a_matrix() -> None:
    with pytest.raises(ValueError, match="1-D"):
        as_update_vector(np.zeros((2, 2), dtype=np.float32))


@pytest.mark.parametrize("codec", ALL_CODECS, ids=lambda codec: codec.name)
def test_encode_rejects_a_matrix(codec: Codec) -> None:
    with pytest.raises(ValueError, match="1-D"):
        codec.encode(np.zeros((2, 3), dtype=np.float32))


# --- dense --------------------------------------------------------------------------------


def test_dense_body_is_little_endian_float32() -> None:
    assert DenseCodec().encode(vector([1.0, -2.0])) == bytes.fromhex("0000803f000000c0")


@settings(max_examples=100)
@given(values=finite_vectors(bound=None))
def test_dense_roundtrip_is_exact(values: NDArray[np.float32]) -> None:
    codec = DenseCodec()
    body = codec.encode(values)
    assert len(body) == 4 * values.shape[0]
    decoded = codec.decode(body, values.shape[0])
    assert decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, values)


def test_dense_roundtrip_of_an_empty_vector() -> None:
    assert DenseCodec().decode(DenseCodec().encode(vector([])), 0).shape == (0,)


@pytest.mark.parametrize("length", [0, 7, 9, 11, 12, 400])
def test_dense_body_of_wrong_length_raises_codec_error(length: int) -> None:
    with pytest.raises(CodecError, match="dense body"):
        DenseCodec().decode(b"\x00" * length, 2)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_dense_decode_passes_a_non_finite_value_through(bad: float) -> None:
    # Judging values is the receiver's job (coordinator ingest rejects them as non-finite).
    decoded = DenseCodec().decode(vector([1.0, bad]).tobytes(), 2)
    np.testing.assert_array_equal(decoded, vector([1.0, bad]))


# --- float16 ------------------------------------------------------------------------------


def test_float16_body_is_little_endian_half_precision() -> None:
    assert Float16Codec().encode(vector([1.0, -2.0])) == bytes.fromhex("003c00c0")


@settings(max_examples=100)
@given(
    values=hnp.arrays(
        np.float32,
        st.integers(0, 300),
        elements=st.floats(FLOAT16_MIN_NORMAL, FLOAT16_MAX, width=32)
        | st.floats(-FLOAT16_MAX, -FLOAT16_MIN_NORMAL, width=32),
    )
)
def test_float16_roundtrip_is_within_relative_1e_3(values: NDArray[np.float32]) -> None:
    codec = Float16Codec()
    body = codec.encode(values)
    assert len(body) == 2 * values.shape[0]
    decoded = codec.decode(body, values.shape[0])
    assert decoded.dtype == np.float32
    np.testing.assert_allclose(decoded, values, rtol=RTOL, atol=0)


@settings(max_examples=100)
@given(values=finite_vectors(bound=FLOAT16_MIN_NORMAL))
def test_float16_roundtrip_of_tiny_values_is_within_float16_resolution(
    values: NDArray[np.float32],
) -> None:
    decoded = Float16Codec().decode(Float16Codec().encode(values), values.shape[0])
    np.testing.assert_allclose(decoded, values, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1e6, FLOAT16_MAX),
        (-1e6, -FLOAT16_MAX),
        (65519.0, FLOAT16_MAX),
        (65520.0, FLOAT16_MAX),
        (3e38, FLOAT16_MAX),
        (math.inf, FLOAT16_MAX),
        (-math.inf, -FLOAT16_MAX),
    ],
)
def test_float16_saturates_at_65504_instead_of_becoming_infinite(
    value: float, expected: float
) -> None:
    codec = Float16Codec()
    decoded = codec.decode(codec.encode(vector([value])), 1)
    assert decoded.tolist() == [expected]


def test_float16_max_is_65504() -> None:
    assert FLOAT16_MAX == 65504.0


def test_to_float16_keeps_nan() -> None:
    assert np.isnan(to_float16(vector([math.nan]))).all()


@pytest.mark.parametrize("length", [0, 3, 5, 6, 8])
def test_float16_body_of_wrong_length_raises_codec_error(length: int) -> None:
    with pytest.raises(CodecError, match="float16 body"):
        Float16Codec().decode(b"\x00" * length, 2)


@pytest.mark.parametrize(
    ("bits", "expected"),
    [("7c00", math.inf), ("fc00", -math.inf), ("7e00", math.nan), ("7c01", math.nan)],
)
def test_float16_decode_passes_a_non_finite_value_through(bits: str, expected: float) -> None:
    # +inf, -inf, quiet NaN and signalling NaN, big-endian hex, stored little-endian.
    value = bytes.fromhex(bits)[::-1]
    decoded = Float16Codec().decode(b"\x00\x3c" + value, 2)
    np.testing.assert_array_equal(decoded, vector([1.0, expected]))


def test_float16_nan_survives_encode_and_decode() -> None:
    codec = Float16Codec()
    decoded = codec.decode(codec.encode(vector([1.0, math.nan])), 2)
    np.testing.assert_array_equal(decoded, vector([1.0, math.nan]))


# --- top-k selection ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dim", "sparsity", "k"),
    [
        (4810, 0.1, 481),
        (10, 0.1, 1),
        (10, 0.15, 2),
        (10, 0.01, 1),
        (1, 0.01, 1),
        (100, 0.07, 7),
        (100, 0.14, 14),
        (200, 0.55, 110),
        (10_000, 0.17, 1700),
        (7, 1.0, 7),
        (0, 0.5, 0),
    ],
)
def test_top_k_keeps_exactly_ceil_sparsity_times_d(dim: int, sparsity: float, k: int) -> None:
    assert TopKCodec(sparsity).select(distinct_magnitudes(dim)).shape == (k,)


def test_top_k_keeps_the_largest_magnitudes() -> None:
    values = vector([0.5, -9.0, 3.0, 0.0, -4.0, 8.0, 1.0, -0.1, 2.0, 7.0])
    assert TopKCodec(0.3).select(values).tolist() == [1, 5, 9]


def test_top_k_selected_indices_are_sorted() -> None:
    selected = TopKCodec(0.2).select(distinct_magnitudes(500))
    assert (np.diff(selected) > 0).all()


@settings(max_examples=150)
@given(
    dim=st.integers(1, 2000),
    permille=st.integers(1, 1000),
    seed=st.integers(0, 2**32 - 1),
)
def test_top_k_keeps_the_ceil_sparsity_d_largest_distinct_magnitudes(
    dim: int, permille: int, seed: int
) -> None:
    values = distinct_magnitudes(dim, seed)
    k = -(-permille * dim // 1000)  # ceil(permille / 1000 * dim) in exact integers
    expected = np.sort(np.argsort(-np.abs(values))[:k])
    np.testing.assert_array_equal(TopKCodec(permille / 1000).select(values), expected)


# --- top-k roundtrip ----------------------------------------------------------------------


def assert_top_k_roundtrip(codec: TopKCodec, values: NDArray[np.float32]) -> None:
    """decode(encode(x)) is x on the kept coordinates (float16 precision), zero elsewhere."""
    kept = codec.select(values)
    decoded = codec.decode(codec.encode(values), values.shape[0])
    assert decoded.dtype == np.float32
    assert decoded.shape == values.shape
    mask = np.zeros(values.shape[0], dtype=bool)
    mask[kept] = True
    np.testing.assert_allclose(decoded[mask], values[mask], rtol=RTOL, atol=ATOL)
    assert (decoded[~mask] == 0).all()
    if mask.any() and (~mask).any():
        assert np.abs(values[mask]).min() >= np.abs(values[~mask]).max()


@settings(max_examples=100)
@given(values=finite_vectors(max_dim=1500), sparsity=st.floats(0.001, 1.0))
def test_top_k_roundtrip_keeps_the_largest_and_zeroes_the_rest(
    values: NDArray[np.float32], sparsity: float
) -> None:
    assert_top_k_roundtrip(TopKCodec(sparsity), values)


def test_top_k_roundtrip_of_an_empty_vector() -> None:
    codec = TopKCodec(0.5)
    assert codec.decode(codec.encode(vector([])), 0).shape == (0,)


def test_top_k_with_sparsity_one_equals_float16_everywhere() -> None:
    values = vector(distinct_magnitudes(100) / 7)
    decoded = TopKCodec(1.0).decode(TopKCodec(1.0).encode(values), 100)
    np.testing.assert_array_equal(decoded, to_float16(values).astype(np.float32))


def test_top_k_saturates_large_values_at_65504() -> None:
    codec = TopKCodec(0.5)
    decoded = codec.decode(codec.encode(vector([1e9, 0.0, -1e9, 1.0])), 4)
    assert decoded.tolist() == [FLOAT16_MAX, 0.0, -FLOAT16_MAX, 0.0]


@pytest.mark.parametrize(
    ("dim", "sparsity", "index_format"),
    [
        (4810, 0.1, BITMAP),  # d/8 = 602 bytes <= 2k = 962
        (64, 0.1, BITMAP),  # d/8 = 8 bytes <= 2k = 14
        (10_000, 0.01, UINT16),  # d/8 = 1250 bytes > 2k = 200
        (65_536, 0.001, UINT16),  # the largest dimension whose indices fit in uint16
        (65_537, 0.001, UINT32),  # d/8 = 8193 bytes > 4k = 264
        (100_000, 0.01, UINT32),  # d/8 = 12500 bytes > 4k = 4000
        (100_000, 0.05, BITMAP),  # d/8 = 12500 bytes <= 4k = 20000
    ],
)
def test_top_k_uses_the_smallest_index_format_and_roundtrips(
    dim: int, sparsity: float, index_format: int
) -> None:
    codec = TopKCodec(sparsity)
    values = distinct_magnitudes(dim)
    body = codec.encode(values)
    k = codec.select(values).shape[0]
    width = 2 if dim <= 65_536 else 4
    assert body[0] == index_format
    assert int.from_bytes(body[1:5], "little") == k
    assert len(body) == 5 + min((dim + 7) // 8, width * k) + 2 * k
    assert_top_k_roundtrip(codec, values)


def test_top_k_body_for_d_4810_at_ten_percent_is_at_least_8x_smaller_than_dense() -> None:
    values = distinct_magnitudes(4810)
    dense = DenseCodec().encode(values)
    sparse = TopKCodec(0.1).encode(values)
    assert len(sparse) * 8 <= len(dense)


# --- top-k malformed bodies ---------------------------------------------------------------

# Hand-made bodies for dim 20: coordinates 3 and 17 hold 1.0 and -2.0.
_VALUES = bytes.fromhex("003c00c0")
_BITMAP_BODY = topk_body(BITMAP, 2, bytes([0b0000_1000, 0, 0b0000_0010]), _VALUES)
_UINT16_BODY = topk_body(UINT16, 2, bytes.fromhex("03001100"), _VALUES)
_UINT32_BODY = topk_body(UINT32, 2, bytes.fromhex("0300000011000000"), _VALUES)
_EXPECTED = np.zeros(20, dtype=np.float32)
_EXPECTED[[3, 17]] = [1.0, -2.0]
HAND_MADE = {"bitmap": _BITMAP_BODY, "uint16": _UINT16_BODY, "uint32": _UINT32_BODY}


@pytest.mark.parametrize("body", HAND_MADE.values(), ids=HAND_MADE.keys())
def test_hand_made_top_k_body_decodes(body: bytes) -> None:
    np.testing.assert_array_equal(TopKCodec().decode(body, 20), _EXPECTED)


@pytest.mark.parametrize("body", HAND_MADE.values(), ids=HAND_MADE.keys())
def test_top_k_body_truncated_at_every_length_raises_codec_error(body: bytes) -> None:
    for length in range(len(body)):
        with pytest.raises(CodecError):
            TopKCodec().decode(body[:length], 20)


@pytest.mark.parametrize("body", HAND_MADE.values(), ids=HAND_MADE.keys())
def test_top_k_body_with_an_extra_byte_raises_codec_error(body: bytes) -> None:
    with pytest.raises(CodecError, match="expected"):
        TopKCodec().decode(body + b"\x00", 20)


def test_top_k_body_keeping_more_than_d_coordinates_raises_codec_error() -> None:
    body = topk_body(UINT16, 21, bytes(range(42)), b"\x00" * 42)
    with pytest.raises(CodecError, match="keeps 21 coordinates of 20"):
        TopKCodec().decode(body, 20)


def test_top_k_body_with_a_huge_k_raises_codec_error() -> None:
    with pytest.raises(CodecError):
        TopKCodec().decode(topk_body(UINT32, 0xFFFF_FFFF, b"", b""), 20)


@pytest.mark.parametrize("index_format", [3, 4, 0x80, 0xFF])
def test_top_k_body_with_an_unknown_index_format_raises_codec_error(index_format: int) -> None:
    body = bytes([index_format]) + _UINT16_BODY[1:]
    with pytest.raises(CodecError, match="unknown top-k index format"):
        TopKCodec().decode(body, 20)


@pytest.mark.parametrize(
    "indices",
    [
        bytes.fromhex("11000300"),  # 17, 3: descending
        bytes.fromhex("03000300"),  # 3, 3: repeated
    ],
)
def test_top_k_body_with_unsorted_uint16_indices_raises_codec_error(indices: bytes) -> None:
    with pytest.raises(CodecError, match="strictly increasing"):
        TopKCodec().decode(topk_body(UINT16, 2, indices, _VALUES), 20)


def test_top_k_body_with_unsorted_uint32_indices_raises_codec_error() -> None:
    indices = bytes.fromhex("1100000003000000")
    with pytest.raises(CodecError, match="strictly increasing"):
        TopKCodec().decode(topk_body(UINT32, 2, indices, _VALUES), 20)


@pytest.mark.parametrize("last", [20, 21, 0xFFFF])
def test_top_k_body_with_a_uint16_index_at_or_beyond_d_raises_codec_error(last: int) -> None:
    indices = (3).to_bytes(2, "little") + last.to_bytes(2, "little")
    with pytest.raises(CodecError, match="below dim"):
        TopKCodec().decode(topk_body(UINT16, 2, indices, _VALUES), 20)


@pytest.mark.parametrize("last", [20, 0xFFFF_FFFF])
def test_top_k_body_with_a_uint32_index_at_or_beyond_d_raises_codec_error(last: int) -> None:
    indices = (3).to_bytes(4, "little") + last.to_bytes(4, "little")
    with pytest.raises(CodecError, match="below dim"):
        TopKCodec().decode(topk_body(UINT32, 2, indices, _VALUES), 20)


@pytest.mark.parametrize(
    "bitmap",
    [
        bytes([0b0000_1000, 0, 0]),  # one coordinate marked, header says two
        bytes([0b0000_1001, 0, 0b0000_0010]),  # three marked
        bytes([0, 0, 0]),  # none marked
    ],
)
def test_top_k_bitmap_popcount_mismatch_raises_codec_error(bitmap: bytes) -> None:
    with pytest.raises(CodecError, match="bitmap marks"):
        TopKCodec().decode(topk_body(BITMAP, 2, bitmap, _VALUES), 20)


def test_top_k_bitmap_of_wrong_size_raises_codec_error() -> None:
    body = topk_body(BITMAP, 2, bytes([0b0000_1000, 0, 0b0000_0010, 0]), _VALUES)
    with pytest.raises(CodecError, match="expected"):
        TopKCodec().decode(body, 20)


@pytest.mark.parametrize("body", HAND_MADE.values(), ids=HAND_MADE.keys())
def test_top_k_decode_passes_a_non_finite_value_through(body: bytes) -> None:
    decoded = TopKCodec().decode(body[:-2] + bytes.fromhex("007c"), 20)  # +inf at 17
    assert decoded[17] == math.inf
    assert np.isfinite(np.delete(decoded, 17)).all()


# --- any body -----------------------------------------------------------------------------


@settings(max_examples=200)
@given(
    codec=st.sampled_from(ALL_CODECS),
    body=st.binary(max_size=200),
    dim=st.integers(0, 200),
)
def test_any_body_decodes_to_a_float32_vector_of_dim_or_raises_codec_error(
    codec: Codec, body: bytes, dim: int
) -> None:
    try:
        decoded = codec.decode(body, dim)
    except CodecError:
        return
    assert decoded.dtype == np.float32
    assert decoded.shape == (dim,)


@settings(max_examples=200)
@given(
    index_format=st.sampled_from([BITMAP, UINT16, UINT32]),
    k=st.integers(0, 30),
    rest=st.binary(max_size=120),
    dim=st.integers(0, 60),
)
def test_any_top_k_body_with_a_plausible_prefix_decodes_or_raises_codec_error(
    index_format: int, k: int, rest: bytes, dim: int
) -> None:
    try:
        decoded = TopKCodec().decode(topk_body(index_format, k, rest, b""), dim)
    except CodecError:
        return
    assert decoded.shape == (dim,)
    assert np.count_nonzero(decoded) <= k


@settings(max_examples=100)
@given(values=finite_vectors(max_dim=200), data=st.data())
def test_any_single_byte_change_in_a_top_k_body_decodes_or_raises_codec_error(
    values: NDArray[np.float32], data: st.DataObject
) -> None:
    body = bytearray(TopKCodec(0.3).encode(values))
    index = data.draw(st.integers(0, len(body) - 1), label="index")
    body[index] = data.draw(st.integers(0, 255), label="value")
    try:
        decoded = TopKCodec().decode(bytes(body), values.shape[0])
    except CodecError:
        return
    assert decoded.shape == values.shape
