"""Device liveness: which devices a round stops waiting for, and when."""

from __future__ import annotations

import json

from byzedge.coordinator.liveness import FleetLiveness
from byzedge.protocol.topics import device_status_topic

FLEET = "f"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def status(state: str, **fields: object) -> bytes:
    return json.dumps({"state": state, **fields}).encode()


def tracker(clock: Clock) -> FleetLiveness:
    return FleetLiveness(FLEET, grace_s=30.0, settle_s=2.0, clock=clock)


def topic(device: str) -> str:
    return device_status_topic(FLEET, device)


def test_a_fresh_offline_counts_once_it_has_settled() -> None:
    clock = Clock()
    live = tracker(clock)
    live.apply(topic("dev-a"), status("offline"))

    before = live.unavailable(1)
    clock.now += 2.0

    assert before == set()
    assert live.unavailable(1) == {"dev-a"}


def test_an_offline_received_before_the_coordinator_reconnected_waits_the_grace() -> None:
    # A broker going down fires every will at the coordinator, then drops it too.
    clock = Clock()
    live = tracker(clock)
    live.apply(topic("dev-a"), status("offline"))
    clock.now += 1.0
    reconnected = clock.now

    clock.now += 10.0
    waiting = live.unavailable(1, connected_since=reconnected)
    clock.now += 20.0

    assert waiting == set()
    assert live.unavailable(1, connected_since=reconnected) == {"dev-a"}


def test_a_stale_offline_is_superseded_when_the_device_comes_back() -> None:
    clock = Clock()
    live = tracker(clock)
    live.apply(topic("dev-a"), status("offline"), fresh=False)
    live.apply(topic("dev-a"), status("online"))
    clock.now += 60.0

    assert live.unavailable(1) == set()


def test_a_stale_offline_counts_after_the_grace() -> None:
    clock = Clock()
    live = tracker(clock)
    live.apply(topic("dev-a"), status("offline"), fresh=False)

    clock.now += 29.0
    waiting = live.unavailable(1)
    clock.now += 1.0

    assert waiting == set()
    assert live.unavailable(1) == {"dev-a"}


def test_busy_and_refused_concern_their_round_only() -> None:
    live = tracker(Clock())
    live.apply(topic("dev-a"), status("busy", round=4, reason="too hot"))
    live.apply(topic("dev-b"), status("refused", round=4, reason="Not authorized"))

    assert live.unavailable(4) == {"dev-a", "dev-b"}
    assert live.unavailable(5) == set()


def test_garbage_statuses_are_ignored() -> None:
    live = tracker(Clock())

    ignored = [
        live.apply(topic("dev-a"), b""),
        live.apply(topic("dev-a"), b"not json"),
        live.apply(topic("dev-a"), b"[1, 2]"),
        live.apply(topic("dev-a"), json.dumps({"state": 3}).encode()),
        live.apply("byzedge/other-fleet/status/dev-a", status("offline")),
        live.apply(f"byzedge/{FLEET}/status/coordinator", status("offline")),
        live.apply(topic("dev-a"), b"\xff\xfe"),
    ]

    assert ignored == [None] * len(ignored)
    assert live.status("dev-a") is None


def test_a_round_number_of_the_wrong_type_is_not_trusted() -> None:
    live = tracker(Clock())
    live.apply(topic("dev-a"), status("busy", round="4"))

    assert live.unavailable(4) == set()
