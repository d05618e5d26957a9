from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from byzedge.protocol.errors import ProtocolError, TopicError
from byzedge.protocol.topics import (
    PREFIX,
    alerts_topic,
    coordinator_status_topic,
    device_status_topic,
    device_status_wildcard,
    model_topic,
    parse_device_topic,
    update_topic,
    update_wildcard,
    validate_identifier,
)

VALID_IDENTIFIERS = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", fullmatch=True)

BAD_IDENTIFIERS = [
    "",
    "a/b",
    "/",
    "a+b",
    "+",
    "#",
    "dev#1",
    "x" * 65,
    "_leading-underscore",
    "-leading-dash",
    ".leading-dot",
    "has space",
    "tab\there",
    "trailing-newline\n",
    "caf\u00e9",
    "null\x00byte",
]


def test_topic_error_is_a_protocol_error() -> None:
    assert issubclass(TopicError, ProtocolError)


def test_model_topic() -> None:
    assert model_topic("fleet-1") == "byzedge/fleet-1/model"


def test_update_topic() -> None:
    assert update_topic("fleet-1", "dev_07") == "byzedge/fleet-1/update/dev_07"


def test_update_wildcard() -> None:
    assert update_wildcard("fleet-1") == "byzedge/fleet-1/update/+"


def test_device_status_topic() -> None:
    assert device_status_topic("fleet-1", "dev_07") == "byzedge/fleet-1/status/dev_07"


def test_device_status_wildcard() -> None:
    assert device_status_wildcard("fleet-1") == "byzedge/fleet-1/status/+"


def test_coordinator_status_topic() -> None:
    assert coordinator_status_topic("fleet-1") == "byzedge/fleet-1/coordinator/status"


def test_alerts_topic() -> None:
    assert alerts_topic("fleet-1") == "byzedge/fleet-1/alerts"


def test_prefix_is_byzedge() -> None:
    assert PREFIX == "byzedge"


@pytest.mark.parametrize("value", ["a", "0", "x" * 64, "Device_01.v2-a", "9.9.9"])
def test_validate_identifier_returns_a_valid_value_unchanged(value: str) -> None:
    assert validate_identifier(value) == value


@pytest.mark.parametrize("value", BAD_IDENTIFIERS)
def test_validate_identifier_rejects_invalid_value(value: str) -> None:
    with pytest.raises(TopicError):
        validate_identifier(value)


def test_validate_identifier_accepts_exactly_64_characters_and_rejects_65() -> None:
    assert validate_identifier("a" * 64) == "a" * 64
    with pytest.raises(TopicError):
        validate_identifier("a" * 65)


def test_validate_identifier_error_names_what_was_checked() -> None:
    with pytest.raises(TopicError, match="invalid device id 'a/b'"):
        validate_identifier("a/b", "device id")


@pytest.mark.parametrize(
    "build",
    [
        model_topic,
        update_wildcard,
        device_status_wildcard,
        coordinator_status_topic,
        alerts_topic,
        lambda fleet: update_topic(fleet, "dev"),
        lambda fleet: device_status_topic(fleet, "dev"),
    ],
)
@pytest.mark.parametrize("fleet", BAD_IDENTIFIERS)
def test_topic_builders_reject_invalid_fleet(build: Callable[[str], str], fleet: str) -> None:
    with pytest.raises(TopicError, match="fleet"):
        build(fleet)


@pytest.mark.parametrize("build", [update_topic, device_status_topic])
@pytest.mark.parametrize("device_id", BAD_IDENTIFIERS)
def test_device_topic_builders_reject_invalid_device_id(
    build: Callable[[str, str], str], device_id: str
) -> None:
    with pytest.raises(TopicError, match="device id"):
        build("fleet", device_id)


def test_parse_device_topic_returns_the_device_id_of_an_update_topic() -> None:
    assert parse_device_topic("byzedge/f1/update/dev_07", "f1", "update") == "dev_07"


def test_parse_device_topic_returns_the_device_id_of_a_status_topic() -> None:
    assert parse_device_topic("byzedge/f1/status/dev_07", "f1", "status") == "dev_07"


def test_parse_device_topic_rejects_another_fleet() -> None:
    with pytest.raises(TopicError):
        parse_device_topic("byzedge/f2/update/dev", "f1", "update")


def test_parse_device_topic_rejects_another_kind() -> None:
    with pytest.raises(TopicError):
        parse_device_topic("byzedge/f1/status/dev", "f1", "update")


def test_parse_device_topic_rejects_another_prefix() -> None:
    with pytest.raises(TopicError):
        parse_device_topic("other/f1/update/dev", "f1", "update")


@pytest.mark.parametrize(
    "topic",
    [
        "",
        "byzedge",
        "byzedge/f1",
        "byzedge/f1/update",
        "byzedge/f1/update/",
        "byzedge/f1/update/dev/extra",
        "/byzedge/f1/update/dev",
        "byzedge/f1/update/dev/",
        "byzedge//update/dev",
        "byzedge/f1/coordinator/status",
    ],
)
def test_parse_device_topic_rejects_wrong_shape(topic: str) -> None:
    with pytest.raises(TopicError):
        parse_device_topic(topic, "f1", "update")


@pytest.mark.parametrize("device_id", ["+", "#", "", "-dev", "x" * 65, "a b"])
def test_parse_device_topic_rejects_invalid_device_id(device_id: str) -> None:
    with pytest.raises(TopicError):
        parse_device_topic(f"byzedge/f1/update/{device_id}", "f1", "update")


@settings(max_examples=100)
@given(fleet=VALID_IDENTIFIERS, device_id=VALID_IDENTIFIERS)
def test_update_topic_parses_back_to_its_device_id(fleet: str, device_id: str) -> None:
    assert parse_device_topic(update_topic(fleet, device_id), fleet, "update") == device_id


@settings(max_examples=100)
@given(fleet=VALID_IDENTIFIERS, device_id=VALID_IDENTIFIERS)
def test_status_topic_parses_back_to_its_device_id(fleet: str, device_id: str) -> None:
    topic = device_status_topic(fleet, device_id)
    assert parse_device_topic(topic, fleet, "status") == device_id


@settings(max_examples=100)
@given(fleet=VALID_IDENTIFIERS, device_id=VALID_IDENTIFIERS)
def test_built_topic_has_no_wildcard_and_four_levels(fleet: str, device_id: str) -> None:
    topic = update_topic(fleet, device_id)
    assert "+" not in topic
    assert "#" not in topic
    assert len(topic.split("/")) == 4


@settings(max_examples=200)
@given(
    head=st.text(max_size=20),
    forbidden=st.sampled_from(["/", "+", "#"]),
    tail=st.text(max_size=20),
)
def test_identifier_holding_a_separator_or_wildcard_is_rejected(
    head: str, forbidden: str, tail: str
) -> None:
    with pytest.raises(TopicError):
        validate_identifier(head + forbidden + tail)


@settings(max_examples=150)
@given(value=st.text(max_size=80))
def test_validate_identifier_either_returns_the_value_or_raises_topic_error(value: str) -> None:
    try:
        result = validate_identifier(value)
    except TopicError:
        return
    assert result == value
    assert 1 <= len(value) <= 64
    assert not {"/", "+", "#"} & set(value)


@pytest.mark.parametrize("device_id", ["coordinator", "monitor", "Coordinator", "MONITOR"])
def test_the_broker_accounts_of_coordinator_and_monitor_are_no_device_ids(
    device_id: str,
) -> None:
    with pytest.raises(TopicError, match="reserved"):
        update_topic("fleet", device_id)
    with pytest.raises(TopicError, match="reserved"):
        device_status_topic("fleet", device_id)
    with pytest.raises(TopicError, match="reserved"):
        parse_device_topic(f"byzedge/fleet/update/{device_id}", "fleet", "update")
    assert validate_identifier(device_id) == device_id  # still a valid fleet or key name
