from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from byzedge.protocol.envelope import (
    ENVELOPE_MAGIC,
    ENVELOPE_VERSION,
    Header,
    SealedEnvelope,
    open_envelope,
    seal,
)
from byzedge.protocol.errors import EnvelopeError, ProtocolError, SignatureError
from byzedge.protocol.signing import SigningKey

KEY = SigningKey.generate()
OTHER_KEY = SigningKey.generate()
LIMIT = 1 << 20
BODY = bytes(range(256)) * 2
DOMAIN = b"byzedge/envelope/v1\x00"

INT_FIELDS = ["round", "base_version", "dim", "counter", "created_ms", "expires_ms"]
STR_FIELDS = ["kind", "fleet", "sender", "codec"]
HEADER_FIELDS = [*STR_FIELDS, *INT_FIELDS, "nonce", "meta"]
ENVELOPE_FIELDS = ["v", "alg", "kid", "hdr", "body", "sig"]


def make_header(**changes: Any) -> Header:
    fields: dict[str, Any] = {
        "kind": "update",
        "fleet": "fleet-1",
        "sender": "dev-07",
        "round": 12,
        "base_version": 11,
        "codec": "top-k",
        "dim": 4810,
        "counter": 3,
        "nonce": bytes(range(16)),
        "created_ms": 1_700_000_000_000,
        "expires_ms": 1_700_000_060_000,
        "meta": {"model": "mlp", "samples": 120},
    }
    fields.update(changes)
    return Header(**fields)


def header_map(**changes: Any) -> dict[str, Any]:
    """The header as the msgpack map it travels as, with ``changes`` applied."""
    raw: dict[str, Any] = msgpack.unpackb(make_header().to_bytes(), raw=False)
    raw.update(changes)
    return raw


def signed_wire(header_bytes: bytes, key: SigningKey = KEY, **overrides: Any) -> bytes:
    """Wire bytes of an envelope whose signature over ``header_bytes`` and BODY is valid.

    Its only defects are whatever ``header_bytes`` holds and ``overrides`` (replacements of
    top-level fields; ``None`` removes one) put there.
    """
    message = DOMAIN + header_bytes + hashlib.sha256(BODY).digest()
    fields: dict[str, Any] = {
        "v": ENVELOPE_VERSION,
        "alg": "ed25519",
        "kid": key.key_id,
        "hdr": header_bytes,
        "body": BODY,
        "sig": key.sign(message),
    }
    fields.update(overrides)
    fields = {name: value for name, value in fields.items() if value is not None}
    packed: bytes = msgpack.packb(fields, use_bin_type=True)
    return ENVELOPE_MAGIC + packed


def open_and_verify(wire: bytes, max_bytes: int = LIMIT) -> SealedEnvelope:
    envelope = open_envelope(wire, max_bytes)
    envelope.verify(KEY.verify_key)
    return envelope


ENVELOPE = seal(make_header(), BODY, KEY)
WIRE = ENVELOPE.to_bytes()


def _region(needle: bytes) -> range:
    start = WIRE.find(needle)
    assert start >= 0
    assert WIRE.find(needle, start + 1) == -1
    return range(start, start + len(needle))


HEADER_REGION = _region(ENVELOPE.header_bytes)
BODY_REGION = _region(BODY)
SIGNATURE_REGION = _region(ENVELOPE.signature)


def _flip(data: bytes, index: int, mask: int) -> bytes:
    flipped = bytearray(data)
    flipped[index] ^= mask
    return bytes(flipped)


# --- round trip ---------------------------------------------------------------------------


def test_errors_are_protocol_errors() -> None:
    assert issubclass(EnvelopeError, ProtocolError)
    assert issubclass(SignatureError, ProtocolError)


def test_sealed_envelope_verifies_without_going_through_the_wire() -> None:
    ENVELOPE.verify(KEY.verify_key)


def test_wire_bytes_start_with_the_magic() -> None:
    assert WIRE.startswith(b"BZE1")


def test_open_gives_back_the_sealed_header() -> None:
    assert open_and_verify(WIRE).header == make_header()


def test_open_gives_back_the_body() -> None:
    assert open_and_verify(WIRE).body == BODY


def test_open_gives_back_the_exact_signed_header_bytes() -> None:
    assert open_and_verify(WIRE).header_bytes == ENVELOPE.header_bytes


def test_open_gives_back_the_key_id_and_signature() -> None:
    opened = open_and_verify(WIRE)
    assert opened.key_id == KEY.key_id
    assert opened.signature == ENVELOPE.signature


def test_opened_envelope_equals_the_sealed_one() -> None:
    assert open_envelope(WIRE, LIMIT) == ENVELOPE


def test_reserialising_an_opened_envelope_gives_the_same_bytes() -> None:
    assert open_envelope(WIRE, LIMIT).to_bytes() == WIRE


def test_empty_body_roundtrips() -> None:
    wire = seal(make_header(), b"", KEY).to_bytes()
    assert open_and_verify(wire).body == b""


def test_model_kind_roundtrips() -> None:
    wire = seal(make_header(kind="model"), BODY, KEY).to_bytes()
    assert open_and_verify(wire).header.kind == "model"


def test_signed_message_is_domain_then_header_then_body_digest() -> None:
    expected = DOMAIN + ENVELOPE.header_bytes + hashlib.sha256(BODY).digest()
    assert ENVELOPE.signed_message() == expected


def test_signature_is_64_bytes() -> None:
    assert len(ENVELOPE.signature) == 64


def test_default_nonce_is_16_random_bytes() -> None:
    first = Header("update", "f", "d", 0, 0, "dense", 1, 0)
    second = Header("update", "f", "d", 0, 0, "dense", 1, 0)
    assert len(first.nonce) == 16
    assert first.nonce != second.nonce


def test_default_header_never_expires() -> None:
    assert Header("update", "f", "d", 0, 0, "dense", 1, 0).expires_ms == 0


_SAFE_INT = st.integers(0, 2**63 - 1)
_HEADERS = st.builds(
    Header,
    kind=st.sampled_from(["update", "model"]),
    fleet=st.text(max_size=30),
    sender=st.text(max_size=30),
    round=_SAFE_INT,
    base_version=st.integers(-(2**63), 2**64 - 1),
    codec=st.text(max_size=10),
    dim=_SAFE_INT,
    counter=_SAFE_INT,
    nonce=st.binary(min_size=16, max_size=16),
    created_ms=st.integers(-(2**63), 2**64 - 1),
    expires_ms=st.integers(-(2**63), 2**64 - 1),
    meta=st.dictionaries(
        st.text(max_size=10),
        st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text() | st.binary(),
        max_size=5,
    ),
)


@settings(max_examples=100)
@given(header=_HEADERS, body=st.binary(max_size=300))
def test_any_well_formed_header_and_body_roundtrip(header: Header, body: bytes) -> None:
    opened = open_and_verify(seal(header, body, KEY).to_bytes())
    assert opened.header == header
    assert opened.body == body


@settings(max_examples=100)
@given(header=_HEADERS)
def test_header_bytes_parse_back_to_the_header(header: Header) -> None:
    assert Header.from_bytes(header.to_bytes()) == header


# --- tampering ----------------------------------------------------------------------------


@pytest.mark.parametrize("mask", [0x01, 0x80, 0xFF])
def test_flipped_byte_anywhere_in_header_bytes_fails(mask: int) -> None:
    for index in HEADER_REGION:
        with pytest.raises((SignatureError, EnvelopeError)):
            open_and_verify(_flip(WIRE, index, mask))


@pytest.mark.parametrize("mask", [0x01, 0x80, 0xFF])
def test_flipped_byte_anywhere_in_body_fails_the_signature(mask: int) -> None:
    for index in BODY_REGION:
        with pytest.raises(SignatureError):
            open_and_verify(_flip(WIRE, index, mask))


@pytest.mark.parametrize("mask", [0x01, 0x80, 0xFF])
def test_flipped_byte_anywhere_in_signature_fails_the_signature(mask: int) -> None:
    for index in SIGNATURE_REGION:
        with pytest.raises(SignatureError):
            open_and_verify(_flip(WIRE, index, mask))


@pytest.mark.parametrize("mask", [0x01, 0x80, 0xFF])
def test_flipped_byte_anywhere_in_the_wire_fails(mask: int) -> None:
    for index in range(len(WIRE)):
        with pytest.raises((SignatureError, EnvelopeError)):
            open_and_verify(_flip(WIRE, index, mask))


@settings(max_examples=200)
@given(data=st.data())
def test_any_single_byte_change_in_the_wire_raises_a_protocol_error(data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(WIRE) - 1), label="index")
    value = data.draw(st.integers(0, 255).filter(lambda v: v != WIRE[index]), label="value")
    tampered = bytearray(WIRE)
    tampered[index] = value
    with pytest.raises(ProtocolError):
        open_and_verify(bytes(tampered))


def test_header_of_one_envelope_with_body_and_signature_of_another_fails() -> None:
    other = seal(make_header(round=13), BODY, KEY)
    spliced = dataclasses.replace(other, header=ENVELOPE.header, header_bytes=ENVELOPE.header_bytes)
    with pytest.raises(SignatureError):
        open_and_verify(spliced.to_bytes())


def test_body_of_one_envelope_with_header_and_signature_of_another_fails() -> None:
    spliced = dataclasses.replace(ENVELOPE, body=BODY[::-1])
    with pytest.raises(SignatureError):
        open_and_verify(spliced.to_bytes())


# --- keys ---------------------------------------------------------------------------------


def test_verify_with_another_key_raises_signature_error() -> None:
    with pytest.raises(SignatureError):
        open_envelope(WIRE, LIMIT).verify(OTHER_KEY.verify_key)


def test_verify_with_another_key_reports_the_key_id_mismatch() -> None:
    with pytest.raises(
        SignatureError, match=f"names key {KEY.key_id}, expected {OTHER_KEY.key_id}"
    ):
        open_envelope(WIRE, LIMIT).verify(OTHER_KEY.verify_key)


def test_signature_by_another_key_under_the_claimed_key_id_fails() -> None:
    forged = signed_wire(ENVELOPE.header_bytes, key=OTHER_KEY, kid=KEY.key_id)
    with pytest.raises(SignatureError, match="does not verify"):
        open_and_verify(forged)


def test_valid_signature_under_a_different_key_id_fails() -> None:
    relabelled = dataclasses.replace(ENVELOPE, key_id=OTHER_KEY.key_id)
    with pytest.raises(SignatureError, match="names key"):
        open_and_verify(relabelled.to_bytes())


# --- truncation, garbage, size ------------------------------------------------------------


def test_truncation_at_every_length_raises_envelope_error() -> None:
    for length in range(len(WIRE)):
        with pytest.raises(EnvelopeError):
            open_envelope(WIRE[:length], LIMIT)


def test_trailing_bytes_raise_envelope_error() -> None:
    with pytest.raises(EnvelopeError):
        open_envelope(WIRE + b"\x00", LIMIT)


def test_bad_magic_raises_envelope_error() -> None:
    with pytest.raises(EnvelopeError, match="magic"):
        open_envelope(b"BZE2" + WIRE[4:], LIMIT)


def test_chunk_magic_is_not_an_envelope() -> None:
    with pytest.raises(EnvelopeError, match="magic"):
        open_envelope(b"BZC1" + WIRE[4:], LIMIT)


def test_empty_payload_raises_envelope_error() -> None:
    with pytest.raises(EnvelopeError):
        open_envelope(b"", LIMIT)


def test_magic_followed_by_a_non_map_raises_envelope_error() -> None:
    with pytest.raises(EnvelopeError, match="expected a map"):
        open_envelope(ENVELOPE_MAGIC + msgpack.packb([1, 2, 3]), LIMIT)


def test_deeply_nested_payload_raises_envelope_error() -> None:
    with pytest.raises(EnvelopeError):
        open_envelope(ENVELOPE_MAGIC + b"\x91" * 100_000 + b"\xc0", 1 << 20)


def test_deeply_nested_header_raises_envelope_error() -> None:
    with pytest.raises(EnvelopeError):
        Header.from_bytes(b"\x81\xa4meta" + b"\x91" * 100_000 + b"\xc0")


def test_payload_at_the_size_limit_opens() -> None:
    assert open_and_verify(WIRE, max_bytes=len(WIRE)).body == BODY


def test_payload_one_byte_over_the_limit_raises_envelope_error() -> None:
    with pytest.raises(EnvelopeError, match="exceeds the limit"):
        open_envelope(WIRE, len(WIRE) - 1)


def test_oversize_payload_is_refused_before_parsing() -> None:
    # Garbage that would fail on its magic: the size check must come first.
    with pytest.raises(EnvelopeError, match="exceeds the limit"):
        open_envelope(b"\xff" * 101, 100)


def test_header_over_64_kib_raises_envelope_error() -> None:
    big = msgpack.packb(header_map(meta={"pad": b"x" * (64 * 1024)}), use_bin_type=True)
    with pytest.raises(EnvelopeError, match="header"):
        open_envelope(signed_wire(big), LIMIT)


@settings(max_examples=200)
@given(payload=st.binary(max_size=400))
def test_garbage_bytes_never_raise_anything_but_a_protocol_error(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        open_and_verify(payload)


@settings(max_examples=300)
@given(payload=st.binary(max_size=400))
def test_garbage_after_the_magic_never_raises_anything_but_a_protocol_error(
    payload: bytes,
) -> None:
    with pytest.raises(ProtocolError):
        open_and_verify(ENVELOPE_MAGIC + payload)


_MSGPACK_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=80),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)


@settings(max_examples=100)
@given(name=st.sampled_from(ENVELOPE_FIELDS), value=_MSGPACK_VALUES)
def test_any_value_in_an_envelope_field_is_accepted_or_raises_a_protocol_error(
    name: str, value: Any
) -> None:
    wire = signed_wire(ENVELOPE.header_bytes, **{name: value})
    try:
        open_and_verify(wire)
    except ProtocolError:
        return


@settings(max_examples=150)
@given(name=st.sampled_from(HEADER_FIELDS), value=_MSGPACK_VALUES)
def test_any_value_in_a_header_field_is_accepted_or_raises_envelope_error(
    name: str, value: Any
) -> None:
    header_bytes = msgpack.packb(header_map(**{name: value}), use_bin_type=True)
    try:
        opened = open_and_verify(signed_wire(header_bytes))
    except EnvelopeError:
        return
    assert getattr(opened.header, name) == value


# --- field types and values ---------------------------------------------------------------


@pytest.mark.parametrize("name", HEADER_FIELDS)
def test_missing_header_field_raises_envelope_error(name: str) -> None:
    raw = header_map()
    del raw[name]
    with pytest.raises(EnvelopeError, match=f"missing field '{name}'"):
        open_and_verify(signed_wire(msgpack.packb(raw, use_bin_type=True)))


@pytest.mark.parametrize("name", INT_FIELDS)
@pytest.mark.parametrize("value", [True, False, "1", 1.0, b"\x01", None])
def test_non_int_in_an_int_header_field_raises_envelope_error(name: str, value: Any) -> None:
    header_bytes = msgpack.packb(header_map(**{name: value}), use_bin_type=True)
    with pytest.raises(EnvelopeError, match=f"field '{name}' must be int"):
        open_and_verify(signed_wire(header_bytes))


@pytest.mark.parametrize("name", STR_FIELDS)
@pytest.mark.parametrize("value", [b"update", 1, True, None, ["update"]])
def test_non_str_in_a_str_header_field_raises_envelope_error(name: str, value: Any) -> None:
    header_bytes = msgpack.packb(header_map(**{name: value}), use_bin_type=True)
    with pytest.raises(EnvelopeError, match=f"field '{name}' must be str"):
        open_and_verify(signed_wire(header_bytes))


@pytest.mark.parametrize("value", ["0123456789abcdef", 7, None, [0] * 16])
def test_non_bytes_nonce_raises_envelope_error(value: Any) -> None:
    header_bytes = msgpack.packb(header_map(nonce=value), use_bin_type=True)
    with pytest.raises(EnvelopeError, match="field 'nonce' must be bytes"):
        open_and_verify(signed_wire(header_bytes))


@pytest.mark.parametrize("value", [[1, 2], "meta", 0, None])
def test_non_map_meta_raises_envelope_error(value: Any) -> None:
    header_bytes = msgpack.packb(header_map(meta=value), use_bin_type=True)
    with pytest.raises(EnvelopeError, match="field 'meta' must be dict"):
        open_and_verify(signed_wire(header_bytes))


@pytest.mark.parametrize("length", [0, 15, 17, 32])
def test_nonce_of_wrong_length_raises_envelope_error(length: int) -> None:
    wire = seal(make_header(nonce=b"n" * length), BODY, KEY).to_bytes()
    with pytest.raises(EnvelopeError, match="nonce"):
        open_and_verify(wire)


@pytest.mark.parametrize("kind", ["", "gradient", "Update", "model "])
def test_unknown_message_kind_raises_envelope_error(kind: str) -> None:
    wire = seal(make_header(kind=kind), BODY, KEY).to_bytes()
    with pytest.raises(EnvelopeError, match="kind"):
        open_and_verify(wire)


@pytest.mark.parametrize("name", ["round", "dim", "counter"])
def test_negative_round_dim_or_counter_raises_envelope_error(name: str) -> None:
    wire = seal(make_header(**{name: -1}), BODY, KEY).to_bytes()
    with pytest.raises(EnvelopeError, match="non-negative"):
        open_and_verify(wire)


def test_header_that_is_not_a_map_raises_envelope_error() -> None:
    with pytest.raises(EnvelopeError, match="expected a map"):
        open_and_verify(signed_wire(msgpack.packb(["update"])))


def test_header_with_an_extension_type_raises_envelope_error() -> None:
    header_bytes = msgpack.packb(header_map(meta={"x": msgpack.ExtType(1, b"payload")}))
    with pytest.raises(EnvelopeError):
        open_and_verify(signed_wire(header_bytes))


def test_header_with_a_non_string_map_key_raises_envelope_error() -> None:
    header_bytes = msgpack.packb(header_map(meta={1: "one"}), use_bin_type=True)
    with pytest.raises(EnvelopeError):
        open_and_verify(signed_wire(header_bytes))


@pytest.mark.parametrize("name", ENVELOPE_FIELDS)
def test_missing_envelope_field_raises_envelope_error(name: str) -> None:
    removed: dict[str, Any] = {name: None}
    with pytest.raises(EnvelopeError, match=f"missing field '{name}'"):
        open_and_verify(signed_wire(ENVELOPE.header_bytes, **removed))


@pytest.mark.parametrize("value", [True, 0, 2, "1"])
def test_bad_envelope_version_raises_envelope_error(value: Any) -> None:
    with pytest.raises(EnvelopeError, match=r"version|field 'v'"):
        open_and_verify(signed_wire(ENVELOPE.header_bytes, v=value))


@pytest.mark.parametrize("value", ["rsa", "Ed25519", "ed448", ""])
def test_unknown_algorithm_raises_signature_error(value: str) -> None:
    with pytest.raises(SignatureError, match="algorithm"):
        open_and_verify(signed_wire(ENVELOPE.header_bytes, alg=value))


@pytest.mark.parametrize("value", [b"ed25519", 1])
def test_non_str_algorithm_raises_envelope_error(value: Any) -> None:
    with pytest.raises(EnvelopeError, match="field 'alg' must be str"):
        open_and_verify(signed_wire(ENVELOPE.header_bytes, alg=value))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("hdr", "header as text"),
        ("body", "body as text"),
        ("sig", "s" * 64),
        ("kid", KEY.key_id.encode()),
        ("hdr", 0),
        ("body", [1, 2]),
    ],
)
def test_wrong_type_in_an_envelope_field_raises_envelope_error(name: str, value: Any) -> None:
    with pytest.raises(EnvelopeError, match=f"field '{name}' must be"):
        open_and_verify(signed_wire(ENVELOPE.header_bytes, **{name: value}))


@pytest.mark.parametrize("length", [0, 63, 65])
def test_signature_of_wrong_length_raises_envelope_error(length: int) -> None:
    with pytest.raises(EnvelopeError, match="signature must be 64 bytes"):
        open_and_verify(signed_wire(ENVELOPE.header_bytes, sig=b"s" * length))


# --- expiry -------------------------------------------------------------------------------


def test_header_with_zero_expiry_never_expires() -> None:
    assert not make_header(expires_ms=0).is_expired(2**62)


def test_header_is_not_expired_before_its_expiry() -> None:
    assert not make_header(expires_ms=1_000).is_expired(999)


def test_header_is_not_expired_at_its_expiry_instant() -> None:
    assert not make_header(expires_ms=1_000).is_expired(1_000)


def test_header_is_expired_one_millisecond_after_its_expiry() -> None:
    assert make_header(expires_ms=1_000).is_expired(1_001)


def test_expiry_survives_the_wire() -> None:
    wire = seal(make_header(expires_ms=5_000), BODY, KEY).to_bytes()
    header = open_and_verify(wire).header
    assert header.expires_ms == 5_000
    assert header.is_expired(5_001)
    assert not header.is_expired(4_999)
