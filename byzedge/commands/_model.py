"""Model checks shared by ``check-config`` and ``byzedge model``: resolve, describe, compare."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from byzedge.models.spec import ModelSpec

__all__ = ["describe", "layout_problems", "resolve_model"]


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def describe(spec: ModelSpec) -> str:
    """One line: name, input shape, outputs, parameter count and layout fingerprint."""
    from byzedge.models.layout import layout_fingerprint  # noqa: PLC0415

    return (
        f"model {spec.name}: input {_shape(spec.input_shape)}, {spec.num_classes} outputs, "
        f"{spec.dim} parameters in {len(spec.params)} tensors, "
        f"layout {layout_fingerprint(spec)[:12]}"
    )


def resolve_model(name: str, template: Path | None = None) -> tuple[ModelSpec | None, str | None]:
    """The spec of ``name`` (with its template file, if any), or the reason there is none.

    A factory reference without a template is imported and exported, in a child process
    unless torch is loaded here (:func:`byzedge.models.factory.factory_spec`).
    """
    from byzedge.models import get_model_spec  # noqa: PLC0415

    try:
        return get_model_spec(name, template=template), None
    except ValueError as exc:
        return None, f"model {name!r}: {exc}"


def layout_problems(local: ModelSpec, coordinator: str) -> list[str]:
    """Compare this device's model with the coordinator's: a template file or a name.

    Returns
    -------
    list[str]
        Empty when the names and layouts agree, else one line that gives both shapes.
    """
    from byzedge.models import layout_meta, layout_mismatch, load_template_file  # noqa: PLC0415

    path = Path(coordinator)
    try:
        theirs = load_template_file(path) if path.is_file() else None
    except ValueError as exc:
        return [str(exc)]
    if theirs is None:
        theirs, reason = resolve_model(coordinator)
        if theirs is None:
            return [f"coordinator model: {reason}"]
    problems: list[str] = []
    if theirs.name != local.name:
        problems.append(f"model name differs: coordinator {theirs.name!r}, device {local.name!r}")
    mismatch = layout_mismatch(local, layout_meta(theirs))
    if mismatch is not None:
        problems.append(mismatch)
    return problems
