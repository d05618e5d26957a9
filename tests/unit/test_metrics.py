"""CoordinatorMetrics: its own registry, bounded labels, the HTTP endpoint, the dashboard."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from byzedge.coordinator.metrics import CoordinatorMetrics

DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "byzedge-dashboard.json"


@pytest.fixture
def metrics() -> Iterator[CoordinatorMetrics]:
    metrics = CoordinatorMetrics("plant-7", defense="clipping-vr", max_device_labels=2)
    yield metrics
    metrics.close()


def samples(text: bytes | str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``(sample name, sorted labels) -> value`` of a Prometheus text exposition."""
    if isinstance(text, bytes):
        text = text.decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_a_completed_round_counts_and_sets_the_last_round_figures(
    metrics: CoordinatorMetrics,
) -> None:
    metrics.round_completed(
        round_number=7,
        duration_s=1.5,
        accepted=3,
        cohort_size=4,
        skipped=False,
        fallback="coordinate-median",
        validation_accuracy=0.8,
    )
    metrics.round_completed(round_number=8, duration_s=0.5, accepted=0, cohort_size=4, skipped=True)

    found = samples(metrics.generate())
    assert found["byzedge_rounds_total", (("outcome", "aggregated"),)] == 1
    assert found["byzedge_rounds_total", (("outcome", "skipped"),)] == 1
    assert found["byzedge_round_duration_seconds_count", ()] == 2
    assert found["byzedge_round_duration_seconds_sum", ()] == 2.0
    assert found["byzedge_last_round", ()] == 8
    assert found["byzedge_round_accepted_updates", ()] == 0
    assert found["byzedge_round_cohort_devices", ()] == 4
    assert found["byzedge_round_fallbacks_total", (("rule", "coordinate-median"),)] == 1
    assert found["byzedge_validation_accuracy_ratio", ()] == 0.8


def test_updates_count_bytes_in_and_rejections_by_reason(metrics: CoordinatorMetrics) -> None:
    metrics.update_accepted(1000)
    metrics.update_accepted(24)
    metrics.update_rejected("bad-signature")
    metrics.update_rejected("bad-signature")
    metrics.update_rejected("replayed")

    found = samples(metrics.generate())
    assert found["byzedge_updates_accepted_total", ()] == 2
    assert found["byzedge_uplink_bytes_total", ()] == 1024
    assert found["byzedge_updates_rejected_total", (("reason", "bad-signature"),)] == 2
    assert found["byzedge_updates_rejected_total", (("reason", "replayed"),)] == 1


def test_flags_aggregation_time_and_drops_are_counted(metrics: CoordinatorMetrics) -> None:
    metrics.device_flagged("dev-1")
    metrics.device_flagged("dev-2")
    metrics.aggregation_time(0.002)
    metrics.message_dropped()

    found = samples(metrics.generate())
    assert found["byzedge_devices_flagged_total", ()] == 2
    assert found["byzedge_aggregation_duration_seconds_count", ()] == 1
    assert found["byzedge_dropped_messages_total", (("reason", "inbox-full"),)] == 1


def test_only_the_lowest_reputations_get_a_device_series(metrics: CoordinatorMetrics) -> None:
    metrics.set_reputations({"dev-a": 0.9, "dev-b": 0.2, "dev-c": 0.5, "dev-d": 0.99})

    found = samples(metrics.generate())
    series = {k[1]: v for k, v in found.items() if k[0] == "byzedge_device_reputation"}
    assert series == {(("device", "dev-b"),): 0.2, (("device", "dev-c"),): 0.5}
    assert found["byzedge_reputation_devices", ()] == 4


def test_a_device_that_left_the_lowest_set_loses_its_series(metrics: CoordinatorMetrics) -> None:
    metrics.set_reputations({"dev-a": 0.1, "dev-b": 0.2, "dev-c": 0.5})
    metrics.set_reputations({"dev-a": 0.9, "dev-b": 0.2, "dev-c": 0.5})

    text = metrics.generate().decode()
    assert 'device="dev-a"' not in text
    assert 'device="dev-c"' in text


def test_the_info_metric_names_fleet_and_rule(metrics: CoordinatorMetrics) -> None:
    found = samples(metrics.generate())

    labels = (("defense", "clipping-vr"), ("fleet", "plant-7"))
    assert found["byzedge_coordinator_info", labels] == 1


def test_two_coordinators_in_one_process_do_not_clash() -> None:
    first, second = CoordinatorMetrics("a"), CoordinatorMetrics("b")
    first.update_rejected("replayed")

    assert "replayed" not in second.generate().decode()
    assert REGISTRY.get_sample_value("byzedge_updates_rejected_total") is None


def test_every_metric_name_starts_with_byzedge(metrics: CoordinatorMetrics) -> None:
    names = {name for name, _ in samples(metrics.generate())}

    assert names
    assert all(name.startswith("byzedge_") for name in names)


def test_the_http_endpoint_serves_the_registry(metrics: CoordinatorMetrics) -> None:
    metrics.update_rejected("bad-signature")
    port = metrics.serve("127.0.0.1", 0)

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        body = response.read()

    found = samples(body)
    assert found["byzedge_updates_rejected_total", (("reason", "bad-signature"),)] == 1


def test_close_frees_the_port_and_may_be_called_twice(metrics: CoordinatorMetrics) -> None:
    port = metrics.serve("127.0.0.1", 0)
    metrics.close()
    metrics.close()

    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_serving_twice_is_an_error(metrics: CoordinatorMetrics) -> None:
    metrics.serve("127.0.0.1", 0)

    with pytest.raises(RuntimeError):
        metrics.serve("127.0.0.1", 0)


def test_a_port_in_use_raises_oserror(metrics: CoordinatorMetrics) -> None:
    port = metrics.serve("127.0.0.1", 0)
    other = CoordinatorMetrics("other")

    with pytest.raises(OSError):
        other.serve("127.0.0.1", port)


# -- the Grafana dashboard ----------------------------------------------------------------


def test_the_dashboard_is_grafana_json_with_a_prometheus_datasource_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))

    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert dashboard["panels"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"]


def test_every_dashboard_query_uses_metrics_the_coordinator_exports(
    metrics: CoordinatorMetrics,
) -> None:
    metrics.round_completed(
        round_number=1, duration_s=1, accepted=1, cohort_size=1, skipped=False, fallback="x"
    )
    metrics.update_rejected("replayed")
    metrics.set_reputations({"dev-1": 0.5})
    metrics.message_dropped()
    exported = {name for name, _ in samples(metrics.generate())}
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))

    used = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            used |= set(re.findall(r"\bbyzedge_[a-z_]+", target["expr"]))
    assert used
    assert used <= exported
