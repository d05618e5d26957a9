"""``check-config`` refuses a model whose layout or input shape differs between the sides.

The fleet is made by ``byzedge init`` (its agents and coordinator name ``mlp``); the
other side's model is the 1-D convolutional network of ``test_models_custom``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_models_custom import REFERENCE

from byzedge.cli import main


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("model-checks") / "fleet"
    assert main(["init", str(folder), "--fleet", "models", "--devices", "1"]) == 0
    return folder


def _agent_check(fleet: Path, *extra: str) -> int:
    config = fleet / "agents" / "dev-000" / "agent.toml"
    return main(["agent", "check-config", "--config", str(config), *extra])


def test_the_agent_refuses_a_coordinator_model_of_another_layout_naming_both_shapes(
    fleet: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    template = tmp_path / "window.onnx"
    assert main(["model", "export", REFERENCE, "--out", str(template)]) == 0

    assert _agent_check(fleet, "--coordinator-model", str(template)) == 2

    err = capsys.readouterr().err.splitlines()
    assert f"byzedge agent: model name differs: coordinator {REFERENCE!r}, device 'mlp'" in err
    assert (
        "byzedge agent: model layout differs: input shape coordinator (3, 32), device (64,); "
        "outputs coordinator 4, device 10; "
        "parameter 0 coordinator conv1.weight (8, 3, 5), device fc1.weight (64, 64)"
    ) in err


def test_the_agent_accepts_the_coordinators_registered_model(
    fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _agent_check(fleet, "--coordinator-model", "mlp") == 0

    assert "model mlp: input (64,), 10 outputs, 4810 parameters" in capsys.readouterr().out


def test_the_agent_refuses_another_registered_model(
    fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _agent_check(fleet, "--coordinator-model", "cnn") == 2

    err = capsys.readouterr().err
    assert "parameter 0 coordinator conv1.weight (8, 1, 3, 3), device fc1.weight (64, 64)" in err


def test_the_coordinator_refuses_a_factory_model_without_its_template(
    fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = fleet / "coordinator" / "coordinator.toml"
    text = config.read_text()
    config.write_text(
        text.replace("byzantine_defense =", f'model = "{REFERENCE}"\nbyzantine_defense =', 1)
    )
    try:
        code = main(["coordinator", "check-config", "--config", str(config)])
    finally:
        config.write_text(text)

    assert code == 2
    assert "needs model_template" in capsys.readouterr().err


def test_the_coordinator_reads_a_template_and_prints_its_layout(
    fleet: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    template = tmp_path / "window.onnx"
    assert main(["model", "export", REFERENCE, "--out", str(template)]) == 0
    config = fleet / "coordinator" / "coordinator.toml"
    text = config.read_text()
    lines = f'model = "{REFERENCE}"\nmodel_template = "{template}"\nbyzantine_defense ='
    config.write_text(text.replace("byzantine_defense =", lines, 1))
    try:
        code = main(["coordinator", "check-config", "--config", str(config)])
    finally:
        config.write_text(text)

    assert code == 0
    assert f"model {REFERENCE}: input (3, 32), 4 outputs" in capsys.readouterr().out
