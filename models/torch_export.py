"""Export a torch module once into an ONNX template (imports torch: trainers and tools only).

The graph comes from torch's TorchScript-based exporter (``dynamo=False``): it needs no
extra package (the dynamo exporter needs onnxscript), traces deterministically, and keeps
every parameter as an initializer under its ``named_parameters`` name when constant
folding is off (folding would merge a parameter into a new, unnamed constant, which could
then not be substituted). torch 2.9+ warns that this exporter is deprecated; the warning is
silenced here, and the export checks the result, so a future torch that changes it fails
loudly at export rather than producing a wrong template.
"""

from __future__ import annotations

import copy
import importlib
import json
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import onnx
import torch
from torch import nn

from byzedge.models.factory import ModelFactoryError, split_reference
from byzedge.models.spec import ModelSpec
from byzedge.models.template import (
    INPUT_NAME,
    META_INPUT_SHAPE,
    META_MODEL,
    META_PARAMS,
    ONNX_OPSET,
    OUTPUT_NAME,
    read_template,
    strip_parameters,
)

__all__ = [
    "call_factory",
    "export_template",
    "load_factory",
    "module_input_shape",
    "spec_from_factory",
    "spec_from_module",
    "template_from_reference",
]

# The batch used to trace; 2 rather than 1 so no size-1 dimension is special-cased.
_TRACE_BATCH = 2


def load_factory(reference: str) -> Callable[[], nn.Module]:
    """Import the callable a ``package.module:function`` reference names.

    Raises
    ------
    ModelFactoryError
        If the module cannot be imported or has no such callable.
    """
    module_name, attribute = split_reference(reference)
    try:
        target: object = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelFactoryError(f"model {reference!r}: cannot import {module_name}: {exc}") from exc
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            msg = f"model {reference!r}: {module_name} has no attribute {attribute!r}"
            raise ModelFactoryError(msg) from None
    if not callable(target):
        raise ModelFactoryError(f"model {reference!r}: {attribute} is not callable")
    factory: Callable[[], nn.Module] = target
    return factory


def call_factory(factory: Callable[[], object], name: str) -> nn.Module:
    """Call a zero-argument model factory and check that it returned a module.

    Raises
    ------
    ModelFactoryError
        If the call fails or returns something other than an ``nn.Module``.
    """
    try:
        module = factory()
    except Exception as exc:  # the user's code: any failure is a bad model
        raise ModelFactoryError(f"model {name!r}: its factory raised {exc!r}") from exc
    if not isinstance(module, nn.Module):
        kind = type(module).__name__
        raise ModelFactoryError(f"model {name!r}: the factory returned {kind}, not an nn.Module")
    return module


def module_input_shape(
    module: nn.Module, input_shape: Sequence[int] | None = None
) -> tuple[int, ...]:
    """The per-sample input shape: ``input_shape`` if given, else the module's attribute.

    Raises
    ------
    ModelFactoryError
        If neither is given or the shape has a non-positive dimension.
    """
    shape = input_shape if input_shape is not None else getattr(module, "input_shape", None)
    if shape is None:
        msg = (
            f"{type(module).__name__} declares no input_shape: set the module's attribute "
            "input_shape (one sample's shape, e.g. (3, 32)) or pass --input-shape"
        )
        raise ModelFactoryError(msg)
    try:
        dims = tuple(int(s) for s in shape)
    except (TypeError, ValueError) as exc:
        raise ModelFactoryError(f"input_shape {shape!r} is not a tuple of ints") from exc
    if not dims or min(dims) < 1:
        raise ModelFactoryError(f"input_shape {dims} must have positive dimensions")
    return dims


def export_template(
    module: nn.Module,
    *,
    name: str,
    input_shape: Sequence[int] | None = None,
    keep_values: bool = True,
) -> bytes:
    """Export ``module`` to a byzedge ONNX template (see :mod:`byzedge.models.template`).

    Parameters
    ----------
    module:
        The model; it is copied, so its mode and parameters are left as they were.
    name:
        The name the template records (a registry name or factory reference).
    input_shape:
        One sample's shape; defaults to the module's ``input_shape`` attribute.
    keep_values:
        Keep the parameters' current values (round 0 of a user's model); ``False``
        strips them (the registered models, whose round 0 comes from a seed).

    Raises
    ------
    ModelFactoryError
        If the module has no parameters, tracing fails, the output is not
        ``[batch, outputs]``, or a parameter did not survive as a named initializer.
    """
    shape = module_input_shape(module, input_shape)
    traced = copy.deepcopy(module).eval()
    names = [pname for pname, _ in traced.named_parameters()]
    if not names:
        raise ModelFactoryError(f"model {name!r} has no parameters to train")
    try:
        with tempfile.TemporaryDirectory(prefix="byzedge-export-") as folder:
            exported_bytes = _torch_export(traced, shape, Path(folder) / "model.onnx")
    except Exception as exc:  # torch raises many unrelated types while tracing
        raise ModelFactoryError(f"model {name!r}: ONNX export failed: {exc}") from exc
    model = onnx.load_from_string(exported_bytes)
    exported = {init.name: tuple(init.dims) for init in model.graph.initializer}
    for pname, param in traced.named_parameters():
        if exported.get(pname) != tuple(param.shape):
            msg = (
                f"model {name!r}: parameter {pname!r} {tuple(param.shape)} is not an "
                "initializer of the exported graph (unused in forward, or folded away)"
            )
            raise ModelFactoryError(msg)
    # Stable bytes across runs and torch versions: the producer is us, metadata is ours.
    model.producer_name = "byzedge"
    model.producer_version = ""
    del model.metadata_props[:]
    for key, value in (
        (META_MODEL, name),
        (META_PARAMS, json.dumps(names)),
        (META_INPUT_SHAPE, json.dumps(list(shape))),
    ):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    data: bytes = model.SerializeToString(deterministic=True)
    try:
        read_template(data, name=name)  # the layout must read back
    except ValueError as exc:
        raise ModelFactoryError(f"model {name!r}: {exc}") from exc
    return data if keep_values else strip_parameters(data)


def template_from_reference(
    reference: str, *, seed: int = 0, input_shape: Sequence[int] | None = None
) -> bytes:
    """Build the module a factory reference names and export it (values kept).

    The factory runs under ``torch.manual_seed(seed)`` in a forked RNG, so the template's
    initial values are the same on every machine and the caller's RNG is untouched.
    """
    factory = load_factory(reference)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = call_factory(factory, reference)
    return export_template(module, name=reference, input_shape=input_shape)


def spec_from_module(
    module: nn.Module, *, name: str = "custom", input_shape: Sequence[int] | None = None
) -> ModelSpec:
    """The spec of a module handed over from Python: its layout, graph and current values.

    Its round 0 is the module's current parameters; devices in this process build copies
    of it to train (``spec.factory``). Such a spec cannot travel to another process by
    name: for a fleet of processes or machines, name a factory reference instead.
    """
    template = export_template(module, name=name, input_shape=input_shape)
    spec = read_template(template, name=name)
    snapshot = copy.deepcopy(module)
    return _with_factory(spec, lambda: copy.deepcopy(snapshot))


def spec_from_factory(
    factory: Callable[[], nn.Module],
    *,
    name: str | None = None,
    input_shape: Sequence[int] | None = None,
    seed: int = 0,
) -> ModelSpec:
    """The spec of a zero-argument factory handed over from Python (built once, seeded).

    ``name`` defaults to the factory's ``module:qualname`` when it is importable by
    that name (a module-level function or class), else ``custom``.
    """
    if name is None:
        qualname = getattr(factory, "__qualname__", "")
        module_name = getattr(factory, "__module__", "")
        importable = qualname and "<" not in qualname and module_name not in ("", "__main__")
        name = f"{module_name}:{qualname}" if importable else "custom"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = call_factory(factory, name)
    template = export_template(module, name=name, input_shape=input_shape)
    return _with_factory(read_template(template, name=name), factory)


def _with_factory(spec: ModelSpec, factory: Callable[[], nn.Module]) -> ModelSpec:
    return ModelSpec(
        name=spec.name,
        input_shape=spec.input_shape,
        num_classes=spec.num_classes,
        params=spec.params,
        template=spec.template,
        factory=factory,
    )


def _torch_export(module: nn.Module, shape: tuple[int, ...], path: Path) -> bytes:
    with warnings.catch_warnings():
        # The TorchScript exporter's deprecation notices (see the module docstring).
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        torch.onnx.export(
            module,
            (torch.zeros((_TRACE_BATCH, *shape), dtype=torch.float32),),
            str(path),
            dynamo=False,
            export_params=True,
            do_constant_folding=False,
            keep_initializers_as_inputs=False,
            opset_version=ONNX_OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
    return path.read_bytes()
