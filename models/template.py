"""ONNX templates: a model's graph exported once by torch, refilled with each round's parameters.

A template is an ordinary ONNX model (opset 17) whose graph takes ``input`` float32
``[batch, *input_shape]`` and returns ``logits`` float32 ``[batch, outputs]``. Each trained
parameter is an initializer named as torch's ``named_parameters`` names it; three entries
of ``metadata_props`` say what the flat vector is:

- ``byzedge.model``: the name the template was exported for (``mlp``, ``pkg.mod:fn``);
- ``byzedge.params``: the parameter names in flat-vector order (JSON list);
- ``byzedge.input_shape``: the per-sample input shape (JSON list).

The layout (:class:`~byzedge.models.spec.ModelSpec`) is read from the template, and a
round's ONNX model is the template with the parameters' bytes substituted: protobuf and
numpy only, so the coordinator never needs torch. A template may hold the parameters'
values (a user's export keeps the model's own initial values, so it is servable as is) or
have them stripped (the registered models': their round 0 is drawn from a seed, and the
files stay a few hundred bytes). Buffers that are not parameters (batch-norm statistics)
keep their exported values in either case.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import TensorProto, numpy_helper

from byzedge.models.spec import ModelSpec, ParamSpec

__all__ = [
    "INPUT_NAME",
    "META_INPUT_SHAPE",
    "META_MODEL",
    "META_PARAMS",
    "ONNX_OPSET",
    "OUTPUT_NAME",
    "TemplateError",
    "fill_template",
    "load_template_file",
    "read_template",
    "strip_parameters",
    "template_values",
]

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
ONNX_OPSET = 17
META_MODEL = "byzedge.model"
META_PARAMS = "byzedge.params"
META_INPUT_SHAPE = "byzedge.input_shape"


class TemplateError(ValueError):
    """A file or byte string that is not a usable byzedge ONNX template."""


def _parse(data: bytes) -> onnx.ModelProto:
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:  # protobuf's DecodeError is not part of onnx's API
        raise TemplateError(f"not an ONNX model: {exc}") from exc
    return model


def _meta(model: onnx.ModelProto) -> dict[str, str]:
    return {entry.key: entry.value for entry in model.metadata_props}


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
    dims: list[int | str] = []
    for dim in value_info.type.tensor_type.shape.dim:
        dims.append(dim.dim_value if dim.HasField("dim_value") else dim.dim_param or "?")
    return dims


def read_template(data: bytes, *, name: str | None = None) -> ModelSpec:
    """Read the layout of a template and return its spec (holding ``data`` as template).

    Parameters
    ----------
    data:
        A serialised template.
    name:
        The name the caller expects (its config's ``model``); ``None`` accepts any.

    Raises
    ------
    TemplateError
        If ``data`` is not an ONNX model with byzedge's metadata, a listed parameter is
        not a float32 initializer, the input or output is not ``[batch, ...]``, or the
        template was exported for another name than ``name``.
    """
    model = _parse(data)
    meta = _meta(model)
    missing = [k for k in (META_MODEL, META_PARAMS, META_INPUT_SHAPE) if k not in meta]
    if missing:
        msg = f"ONNX model has no {', '.join(missing)} metadata (export it with byzedge)"
        raise TemplateError(msg)
    recorded = meta[META_MODEL]
    if name is not None and recorded != name:
        msg = f"template was exported for model {recorded!r}, not {name!r}"
        raise TemplateError(msg)
    try:
        names = json.loads(meta[META_PARAMS])
        input_shape = tuple(int(s) for s in json.loads(meta[META_INPUT_SHAPE]))
    except (ValueError, TypeError) as exc:
        raise TemplateError(f"{recorded}: bad template metadata: {exc}") from exc
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise TemplateError(f"{recorded}: {META_PARAMS} must be a list of names")
    initializers = {init.name: init for init in model.graph.initializer}
    params = []
    for pname in names:
        init = initializers.get(pname)
        if init is None or init.data_type != TensorProto.FLOAT:
            msg = f"{recorded}: parameter {pname!r} is not a float32 initializer of the graph"
            raise TemplateError(msg)
        params.append(ParamSpec(pname, tuple(int(d) for d in init.dims)))
    if len(model.graph.input) < 1 or len(model.graph.output) < 1:
        raise TemplateError(f"{recorded}: the graph needs an input and an output")
    in_dims = _dims(model.graph.input[0])
    out_dims = _dims(model.graph.output[0])
    if [int(d) for d in in_dims[1:] if isinstance(d, int)] != list(input_shape) or len(
        in_dims
    ) != len(input_shape) + 1:
        msg = f"{recorded}: graph input {in_dims} is not [batch, *{list(input_shape)}]"
        raise TemplateError(msg)
    if len(out_dims) != 2 or not isinstance(out_dims[1], int) or out_dims[1] < 1:
        raise TemplateError(f"{recorded}: graph output {out_dims} is not [batch, outputs]")
    try:
        return ModelSpec(
            name=recorded,
            input_shape=input_shape,
            num_classes=out_dims[1],
            params=tuple(params),
            template=data,
        )
    except ValueError as exc:
        raise TemplateError(f"{recorded}: {exc}") from exc


def load_template_file(path: Path, *, name: str | None = None) -> ModelSpec:
    """Read a template file (``byzedge model export``'s output); see :func:`read_template`.

    Raises
    ------
    TemplateError
        If the file cannot be read or is not a template (for ``name``).
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TemplateError(f"cannot read model template {path}: {exc.strerror}") from exc
    try:
        return read_template(data, name=name)
    except TemplateError as exc:
        raise TemplateError(f"{path}: {exc}") from exc


def _set_values(init: onnx.TensorProto, values: NDArray[np.float32] | None) -> None:
    # Parameters may arrive in any of ONNX's storage fields; keep exactly one, raw_data.
    del init.float_data[:]
    init.ClearField("raw_data")
    if values is not None:
        init.raw_data = np.ascontiguousarray(values, dtype="<f4").tobytes()


def fill_template(spec: ModelSpec, vec: NDArray[np.float32]) -> onnx.ModelProto:
    """Return the template of ``spec`` with ``vec``'s parameters as its initializers.

    Raises
    ------
    ValueError
        If ``spec`` holds no template or ``vec`` is not a float32 ``(spec.dim,)`` vector.
    """
    if spec.template is None:
        raise ValueError(f"model {spec.name!r} has no ONNX template")
    arrays = spec.split(vec)  # validates the vector
    model = _parse(spec.template)
    for init in model.graph.initializer:
        if init.name in arrays:
            _set_values(init, arrays[init.name])
    return model


def strip_parameters(data: bytes) -> bytes:
    """Drop the parameters' values from a template (buffers keep theirs).

    Raises
    ------
    TemplateError
        If ``data`` is not a template.
    """
    spec = read_template(data)
    names = {p.name for p in spec.params}
    model = _parse(data)
    for init in model.graph.initializer:
        if init.name in names:
            _set_values(init, None)
    stripped: bytes = model.SerializeToString(deterministic=True)
    return stripped


def template_values(spec: ModelSpec) -> NDArray[np.float32] | None:
    """The parameter values a template holds (a user's export), ``None`` when stripped.

    Raises
    ------
    TemplateError
        If some parameters hold values and others do not, or a value has the wrong size.
    """
    if spec.template is None:
        return None
    by_name = {init.name: init for init in _parse(spec.template).graph.initializer}
    arrays: dict[str, NDArray[np.float32]] = {}
    for p in spec.params:
        init = by_name[p.name]
        if _has_values(init):
            values = np.asarray(numpy_helper.to_array(init), dtype=np.float32)
            arrays[p.name] = values.reshape(p.shape)
    if not arrays:
        return None
    if len(arrays) != len(spec.params):
        raise TemplateError(f"{spec.name}: the template holds values for some parameters only")
    return spec.join(arrays)


def _has_values(init: onnx.TensorProto) -> bool:
    return bool(init.raw_data) or len(init.float_data) > 0
