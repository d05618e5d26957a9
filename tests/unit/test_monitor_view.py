"""FleetView: round summaries, statuses, alerts and audit heads folded into one state."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from byzedge.coordinator.audit import SignedHead
from byzedge.monitor.view import FleetView, verify_audit_head
from byzedge.protocol.signing import SigningKey

FLEET = "plant-7"
SUMMARY = f"byzedge/{FLEET}/coordinator/status"
ALERTS = f"byzedge/{FLEET}/alerts"


def status_topic(device: str) -> str:
    return f"byzedge/{FLEET}/status/{device}"


def encode(data: object) -> bytes:
    return json.dumps(data).encode()


def summary(round_number: int = 3, **extra: Any) -> bytes:
    """A summary as coordinator/service.py RoundSummary.to_json writes it today."""
    data = {
        "round": round_number,
        "model_version": round_number,
        "defense": "clipping-vr",
        "cohort_size": 4,
        "accepted": 3,
        "rejected": {"bad-signature": 1},
        "rejected_total": {"bad-signature": 2},
        "flagged": ["dev-002"],
        "reputations": {"dev-000": 0.98, "dev-002": 0.41},
        "validation_accuracy": 0.75,
        "uplink_bytes": 1200,
        "dense_uplink_bytes": 4800,
        "duration_s": 1.25,
        "skipped": False,
        "fallback": None,
        "clip_threshold": 0.5,
        "accepted_devices": ["dev-000", "dev-001", "dev-002"],
    }
    data.update(extra)
    return encode(data)


def signed_head(key: SigningKey, seq: int = 41, digest: str = "ab" * 32) -> dict[str, Any]:
    # The coordinator's own format (coordinator.audit.SignedHead), as its summaries carry it.
    head = SignedHead.sign(key, seq=seq, hash=digest, round=3, time_ms=1_700_000_000_000)
    return head.to_dict()


@pytest.fixture
def view() -> FleetView:
    return FleetView(FLEET, clock=lambda: 1000.0)


def test_a_summary_adds_a_round_and_marks_the_coordinator_online(view: FleetView) -> None:
    assert view.apply(SUMMARY, summary(3), received=990.0) == "round"

    latest = view.latest_round
    assert latest is not None
    assert (latest.round, latest.accepted, latest.cohort_size) == (3, 3, 4)
    assert latest.rejected == {"bad-signature": 1}
    assert latest.clip_threshold == 0.5
    assert latest.received == 990.0
    assert view.coordinator == "online"


def test_a_summary_sets_reputations_and_flags_of_its_devices(view: FleetView) -> None:
    view.apply(SUMMARY, summary(3))

    assert view.devices["dev-000"].reputation == 0.98
    assert view.devices["dev-002"].reputation == 0.41
    assert view.devices["dev-002"].flagged_round == 3


def test_the_accuracy_history_follows_the_rounds_in_order(view: FleetView) -> None:
    for number, accuracy in [(1, 0.2), (2, None), (3, 0.6)]:
        view.apply(SUMMARY, summary(number, validation_accuracy=accuracy))

    assert view.accuracy == [0.2, 0.6]


def test_history_keeps_only_the_latest_rounds() -> None:
    view = FleetView(FLEET, history=2)
    for number in range(1, 5):
        view.apply(SUMMARY, summary(number))

    assert [r.round for r in view.rounds] == [3, 4]


def test_rounds_are_kept_in_round_order_whatever_the_arrival_order(view: FleetView) -> None:
    for number in (5, 3, 4):
        view.apply(SUMMARY, summary(number))

    assert [r.round for r in view.rounds] == [3, 4, 5]
    assert view.latest_round is not None
    assert view.latest_round.round == 5


def test_a_retained_summary_seen_again_is_no_change(view: FleetView) -> None:
    view.apply(SUMMARY, summary(3), received=1.0)

    assert view.apply(SUMMARY, summary(3), received=2.0) is None
    assert len(view.rounds) == 1


def test_the_coordinators_last_will_marks_it_offline(view: FleetView) -> None:
    view.apply(SUMMARY, summary(3))

    assert view.apply(SUMMARY, encode({"state": "offline"})) == "coordinator"
    assert view.coordinator == "offline"
    assert view.latest_round is not None  # the last round stays on screen


def test_optional_summary_fields_fill_scores_and_last_rejections(view: FleetView) -> None:
    view.apply(
        SUMMARY,
        summary(
            5,
            scores={"dev-001": 0.4, "dev-002": 7.5},
            last_rejections={"dev-003": "stale-round"},
        ),
    )

    assert view.devices["dev-002"].score == 7.5
    rejection = view.devices["dev-003"].last_rejection
    assert rejection is not None
    assert (rejection.round, rejection.reason) == (5, "stale-round")


def test_a_device_status_sets_state_time_round_and_telemetry(view: FleetView) -> None:
    status = {
        "device_id": "dev-001",
        "state": "training",
        "time": 995.5,
        "round": 4,
        "telemetry": {"cpu_percent": 12.5, "temperature_c": None, "memory_available_mb": 300},
        "updates_sent": 17,
        "last_refusal": {"reason": "model-expired", "round": 3},
    }
    assert view.apply(status_topic("dev-001"), encode(status)) == "device"

    device = view.devices["dev-001"]
    assert (device.state, device.status_time, device.round) == ("training", 995.5, 4)
    assert device.telemetry == {
        "cpu_percent": 12.5,
        "temperature_c": None,
        "memory_available_mb": 300.0,
    }
    assert device.updates_sent == 17
    assert device.last_refusal == "model-expired (round 3)"


def test_a_busy_status_carries_its_reason(view: FleetView) -> None:
    view.apply(status_topic("dev-001"), encode({"state": "busy", "reason": "cpu 97% > 80%"}))

    assert view.devices["dev-001"].reason == "cpu 97% > 80%"


def test_the_devices_last_will_marks_it_offline_and_keeps_its_last_figures(
    view: FleetView,
) -> None:
    view.apply(
        status_topic("dev-001"),
        encode({"state": "online", "round": 4, "telemetry": {"cpu_percent": 5.0}}),
    )

    will = {"device_id": "dev-001", "state": "offline", "time": 900.0}
    assert view.apply(status_topic("dev-001"), encode(will)) == "device"

    device = view.devices["dev-001"]
    assert (device.state, device.status_time) == ("offline", 900.0)
    assert device.round == 4
    assert device.telemetry == {"cpu_percent": 5.0}


def test_a_status_without_a_time_is_dated_on_receipt(view: FleetView) -> None:
    view.apply(status_topic("dev-001"), encode({"state": "online"}), received=1234.0)

    assert view.devices["dev-001"].status_time == 1234.0


def test_an_alert_is_kept_and_marks_its_device(view: FleetView) -> None:
    alert = {"round": 6, "device": "dev-002", "reason": "anomalous-update", "score": 5.5}

    assert view.apply(ALERTS, encode(alert), received=999.0) == "alert"

    kept = view.alerts[-1]
    assert (kept.round, kept.device, kept.reason, kept.score) == (
        6,
        "dev-002",
        "anomalous-update",
        5.5,
    )
    assert view.devices["dev-002"].flagged_round == 6


def test_a_rejection_alert_becomes_the_devices_last_rejection(view: FleetView) -> None:
    alert = {"round": 6, "device": "dev-004", "reason": "bad-signature", "score": None}
    view.apply(ALERTS, encode(alert))

    rejection = view.devices["dev-004"].last_rejection
    assert rejection is not None
    assert (rejection.round, rejection.reason) == (6, "bad-signature")


def test_only_the_latest_alerts_are_kept() -> None:
    view = FleetView(FLEET, max_alerts=2)
    for number in range(5):
        view.apply(ALERTS, encode({"round": number, "device": "dev-1", "reason": "x"}))

    assert [a.round for a in view.alerts] == [3, 4]


@pytest.mark.parametrize(
    ("topic", "payload"),
    [
        (SUMMARY, b""),
        (ALERTS, b""),
        (status_topic("dev-001"), b""),
        (SUMMARY, b"{not json"),
        (SUMMARY, b"\xff\xfe\x00"),
        (SUMMARY, b"[1, 2, 3]"),
        (SUMMARY, b"null"),
        (SUMMARY, encode({"round": "three"})),
        (SUMMARY, encode({"round": True})),
        (status_topic("dev-001"), b"42"),
        (status_topic("monitor"), encode({"state": "online"})),
        ("byzedge/other-fleet/status/dev-001", encode({"state": "online"})),
        (f"byzedge/{FLEET}/status/dev-001/extra", encode({"state": "online"})),
        (SUMMARY, b"[" * 100_000),
    ],
)
def test_probes_garbage_and_foreign_topics_change_nothing(
    view: FleetView, topic: str, payload: bytes
) -> None:
    assert view.apply(topic, payload) is None
    assert view.to_dict() == FleetView(FLEET).to_dict()


def test_wrong_field_types_are_dropped_one_by_one(view: FleetView) -> None:
    view.apply(
        SUMMARY,
        summary(
            2,
            accepted="3",
            rejected={"bad-signature": "one", "stale-round": 2},
            reputations={"dev-000": "high", "dev-001": 0.5, "not a device!": 0.1},
            validation_accuracy=float("nan"),
            flagged="dev-002",
            audit_head=None,
        ),
    )

    latest = view.latest_round
    assert latest is not None
    assert latest.accepted is None
    assert latest.rejected == {"stale-round": 2}
    assert latest.validation_accuracy is None
    assert latest.flagged == ()
    assert set(view.devices) == {"dev-001"}


def test_text_from_the_wire_loses_terminal_escapes_and_is_bounded(view: FleetView) -> None:
    reason = "\x1b[2J\x1b]0;pwned\x07" + "x" * 500
    view.apply(status_topic("dev-001"), encode({"state": "busy", "reason": reason}))

    shown = view.devices["dev-001"].reason
    assert shown is not None
    assert "\x1b" not in shown
    assert "\x07" not in shown
    assert len(shown) <= 80


@given(st.binary(max_size=200), st.sampled_from([SUMMARY, ALERTS, status_topic("dev-001")]))
def test_no_payload_makes_apply_raise(payload: bytes, topic: str) -> None:
    FleetView(FLEET).apply(topic, payload)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)


@given(
    st.dictionaries(
        st.sampled_from(
            [
                "round",
                "state",
                "rejected",
                "reputations",
                "scores",
                "last_rejections",
                "audit_head",
                "flagged",
                "telemetry",
                "time",
                "device",
                "reason",
                "score",
                "last_refusal",
                "updates_sent",
            ]
        ),
        json_values,
    ),
    st.sampled_from([SUMMARY, ALERTS, status_topic("dev-001")]),
)
def test_no_json_object_makes_apply_raise(data: dict[str, Any], topic: str) -> None:
    view = FleetView(FLEET, coordinator_key=SigningKey.generate().verify_key)
    view.apply(topic, json.dumps(data).encode())
    json.dumps(view.to_dict())


# -- audit head -------------------------------------------------------------------------


def test_a_summary_without_an_audit_head_shows_absent(view: FleetView) -> None:
    view.apply(SUMMARY, summary(1))

    assert view.audit_head.status == "absent"


def test_an_audit_head_signed_by_the_coordinators_key_is_verified() -> None:
    key = SigningKey.generate()
    view = FleetView(FLEET, coordinator_key=key.verify_key)

    view.apply(SUMMARY, summary(1, audit_head=signed_head(key, seq=41)))

    assert view.audit_head.status == "verified"
    assert view.audit_head.seq == 41


def test_an_audit_head_signed_by_another_key_is_unverified() -> None:
    view = FleetView(FLEET, coordinator_key=SigningKey.generate().verify_key)

    view.apply(SUMMARY, summary(1, audit_head=signed_head(SigningKey.generate())))

    assert view.audit_head.status == "unverified"


def test_an_audit_head_whose_hash_was_changed_is_unverified() -> None:
    key = SigningKey.generate()
    head = signed_head(key)
    head["hash"] = "cd" * 32
    view = FleetView(FLEET, coordinator_key=key.verify_key)

    view.apply(SUMMARY, summary(1, audit_head=head))

    assert view.audit_head.status == "unverified"


def test_an_audit_head_without_a_configured_key_is_unchecked(view: FleetView) -> None:
    view.apply(SUMMARY, summary(1, audit_head=signed_head(SigningKey.generate())))

    assert view.audit_head.status == "unchecked"


@pytest.mark.parametrize(
    "mutate",
    [
        lambda head: head.update(signature="not hex"),
        lambda head: head.update(signature=123),
        lambda head: head.pop("seq"),
        lambda head: head.update(seq="41"),
        lambda head: head.update(signature=head["signature"][:-2]),
    ],
)
def test_a_malformed_audit_head_is_unverified_never_an_error(mutate: Any) -> None:
    key = SigningKey.generate()
    head = signed_head(key)
    mutate(head)

    assert verify_audit_head(head, key.verify_key) is False
