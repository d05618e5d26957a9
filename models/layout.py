"""A model's layout fingerprint, and the message when two sides' layouts disagree.

The coordinator signs its model's layout into every manifest (``layout`` in the meta:
input shape, parameter names and shapes, dtype and their SHA-256); a device compares it
with the layout of the module it would train and refuses a model that differs, naming both
shapes. Without it a device whose model code drifted from the coordinator's would train
the wrong tensors silently whenever the flat lengths happened to agree, and fail on an
opaque length error when they did not.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from byzedge.models.spec import ModelSpec

__all__ = ["DTYPE", "layout_fingerprint", "layout_meta", "layout_mismatch"]

# The flat vector, the wire and every template hold float32 parameters.
DTYPE = "float32"


def _canonical(spec: ModelSpec) -> dict[str, Any]:
    return {
        "input_shape": list(spec.input_shape),
        "outputs": spec.num_classes,
        "dtype": DTYPE,
        "params": [[p.name, list(p.shape)] for p in spec.params],
    }


def layout_fingerprint(spec: ModelSpec) -> str:
    """SHA-256 (hex) of the layout: input shape, outputs, dtype, parameter names and shapes.

    The model's name is not part of it: the manifest carries the name on its own, and the
    same module under another reference has the same layout.
    """
    text = json.dumps(_canonical(spec), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def layout_meta(spec: ModelSpec) -> dict[str, Any]:
    """The manifest's ``layout`` entry: the canonical layout and its fingerprint."""
    return {**_canonical(spec), "sha256": layout_fingerprint(spec)}


def _shape(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "(" + ", ".join(str(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return repr(value)


def layout_mismatch(
    local: ModelSpec,
    remote: Mapping[str, Any],
    *,
    local_side: str = "device",
    remote_side: str = "coordinator",
) -> str | None:
    """Say how ``remote`` (a :func:`layout_meta` map) differs from ``local``; ``None`` if not.

    The message names both input shapes and, when the parameters differ, the first
    parameter whose name or shape differs with both shapes, so an operator sees at once
    which side runs which model.
    """
    if remote.get("sha256") == layout_fingerprint(local):
        return None
    mine = _canonical(local)
    problems: list[str] = []
    if remote.get("input_shape") != mine["input_shape"]:
        problems.append(
            f"input shape {remote_side} {_shape(remote.get('input_shape'))}, "
            f"{local_side} {_shape(mine['input_shape'])}"
        )
    if remote.get("outputs") != mine["outputs"]:
        problems.append(
            f"outputs {remote_side} {remote.get('outputs')!r}, {local_side} {mine['outputs']}"
        )
    if remote.get("dtype") != mine["dtype"]:
        problems.append(f"dtype {remote_side} {remote.get('dtype')!r}, {local_side} {DTYPE}")
    theirs = remote.get("params")
    theirs_list = list(theirs) if isinstance(theirs, list) else []
    for index in range(max(len(theirs_list), len(mine["params"]))):
        a = theirs_list[index] if index < len(theirs_list) else None
        b = mine["params"][index] if index < len(mine["params"]) else None
        if a != b:
            problems.append(
                f"parameter {index} {remote_side} {_param(a)}, {local_side} {_param(b)}"
            )
            break
    if not problems:
        problems.append(f"fingerprint {remote_side} {str(remote.get('sha256'))[:12]!r}")
    return "model layout differs: " + "; ".join(problems)


def _param(entry: Any) -> str:
    if entry is None:
        return "none"
    if isinstance(entry, list) and len(entry) == 2:
        return f"{entry[0]!s} {_shape(entry[1])}"
    return repr(entry)
