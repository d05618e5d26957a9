"""The explicit registry of model architectures, keyed by their permanent names, and lookup.

Names travel in manifests and config; keep them (and each model's parameter layout)
forever. A registered model is its torch builder (:data:`byzedge.models.torch_modules.BUILDERS`)
and the ONNX template exported from it once (``models/templates/<name>.onnx``, written by
``scripts/generate_model_templates.py``); the layout is read from the template, so no side
needs torch to know it. tests/unit/test_models_templates.py pins the layouts and checks
that re-exporting the builders gives the shipped templates' layouts.

Any other model is named by a factory reference, ``package.module:function``
(:mod:`byzedge.models.factory`), or, where torch is absent (the coordinator), by that
reference together with a template file that ``byzedge model export`` wrote.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

from byzedge.models.factory import factory_spec, is_factory_reference
from byzedge.models.spec import ModelSpec
from byzedge.models.template import load_template_file

__all__ = ["MODELS", "REGISTERED_NAMES", "TEMPLATES_DIR", "get_model_spec"]

REGISTERED_NAMES = ("mlp", "cnn", "mlp-wide", "sensor-cnn")
TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"


class _Registry(Mapping[str, ModelSpec]):
    """The registered specs, each read from its shipped template on first use."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self._names = names
        self._specs: dict[str, ModelSpec] = {}

    def __getitem__(self, name: str) -> ModelSpec:
        if name not in self._names:
            raise KeyError(name)
        spec = self._specs.get(name)
        if spec is None:
            spec = load_template_file(TEMPLATES_DIR / f"{name}.onnx", name=name)
            self._specs[name] = spec
        return spec

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


MODELS: Mapping[str, ModelSpec] = _Registry(REGISTERED_NAMES)


def get_model_spec(name: str, *, template: Path | None = None) -> ModelSpec:
    """Return the spec of the model called ``name``.

    Parameters
    ----------
    name:
        A registered name (``mlp``) or a factory reference (``package.module:function``).
    template:
        For a factory reference, the template file ``byzedge model export`` wrote for it:
        read without torch. Without one, the reference is imported and exported (in a
        short-lived child process unless torch is already loaded here).

    Raises
    ------
    ValueError
        If ``name`` is neither registered nor a factory reference (the message lists the
        known names), a template is given for a registered name, or the template or
        factory is unusable.
    """
    if name in MODELS:
        if template is not None:
            msg = f"model {name!r} is registered: it takes no template file"
            raise ValueError(msg)
        return MODELS[name]
    if not is_factory_reference(name):
        known = ", ".join(sorted(MODELS))
        msg = (
            f"unknown model {name!r}; known models: {known}, "
            "or a factory reference 'package.module:function'"
        )
        raise ValueError(msg)
    if template is not None:
        return load_template_file(template, name=name)
    return factory_spec(name)
