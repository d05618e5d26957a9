"""The demo end to end: real broker, real agents, real training, real outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from byzedge.cli import main
from byzedge.fleet_sim.brokers import BrokerHandle

pytestmark = [pytest.mark.slow, pytest.mark.broker]


def _run_demo(out: Path, broker: str, *extra: str) -> dict[str, object]:
    code = main(
        [
            "demo",
            "--devices",
            "10",
            "--rounds",
            "8",
            "--byzantine-fraction",
            "0.2",
            "--broker",
            broker,
            "--out",
            str(out),
            *extra,
        ]
    )
    assert code == 0
    document: dict[str, object] = json.loads((out / "results.json").read_text())
    return document


def _final(document: dict[str, object], defense: str) -> float:
    runs = document["runs"]
    assert isinstance(runs, list)
    (run,) = [r for r in runs if r["defense"] == defense]
    accuracy = run["final_accuracy"]
    assert isinstance(accuracy, float)
    return accuracy


def test_clipping_vr_survives_sign_flip_that_breaks_mean_on_mosquitto(
    tmp_path: Path, mosquitto_broker: BrokerHandle
) -> None:
    document = _run_demo(tmp_path, mosquitto_broker.url, "--attack", "sign-flip")

    assert _final(document, "clipping-vr") > 0.8
    assert _final(document, "mean") < 0.3
    for name in ("results.json", "accuracy.png", "report.md"):
        assert (tmp_path / name).stat().st_size > 0
    runs = document["runs"]
    assert isinstance(runs, list)
    assert all(len(run["rounds"]) == 8 for run in runs)
    assert all(run["rounds"][0]["accepted"] == 10 for run in runs)


def test_demo_runs_on_the_embedded_broker_with_top_k(tmp_path: Path) -> None:
    document = _run_demo(
        tmp_path,
        "embedded",
        "--attack",
        "gaussian-noise",
        "--defense",
        "clipping-vr",
        "--compression",
        "top-k",
        "--sparsity",
        "0.1",
    )

    runs = document["runs"]
    assert isinstance(runs, list)
    (run,) = runs
    assert run["broker"] == "embedded"
    assert run["dense_uplink_bytes"] >= 8 * run["uplink_bytes"]
    assert run["final_accuracy"] > 0.8
