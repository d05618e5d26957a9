"""Write models/templates/<name>.onnx for every registered model, from its torch module.

Run from the repository root after changing a registered module (never its layout: the
names are permanent, tests/unit/test_models_templates.py pins every layout):

    .venv/bin/python scripts/generate_model_templates.py
"""

from __future__ import annotations

from pathlib import Path

from byzedge.models.template import read_template
from byzedge.models.torch_modules import BUILDERS, registered_template

TEMPLATES = Path(__file__).resolve().parents[1] / "models" / "templates"


def main() -> None:
    TEMPLATES.mkdir(parents=True, exist_ok=True)
    for name in BUILDERS:
        data = registered_template(name)
        spec = read_template(data, name=name)
        (TEMPLATES / f"{name}.onnx").write_bytes(data)
        print(f"{name}: {len(data)} bytes, {spec.dim} parameters, input {spec.input_shape}")


if __name__ == "__main__":
    main()
