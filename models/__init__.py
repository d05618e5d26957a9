"""Model definitions, parameter layouts, datasets, partitioners and ONNX export.

Everything re-exported here is torch-free, so the coordinator can import it. The torch side
lives in :mod:`byzedge.models.torch_modules` (the modules) and :mod:`byzedge.models.params` (the one
torch <-> numpy seam); import those explicitly where training happens.
"""

from __future__ import annotations

from byzedge.models.datasets import DIGITS_NUM_CLASSES, DigitsSplit, load_digits_split
from byzedge.models.init import fan_in_bounds, initial_parameters
from byzedge.models.onnx_export import (
    INPUT_NAME,
    ONNX_OPSET,
    OUTPUT_NAME,
    OnnxClassifier,
    check_onnx_parity,
    export_onnx,
)
from byzedge.models.partition import (
    MIN_SAMPLES_PER_DEVICE,
    PARTITIONERS,
    DirichletPartitioner,
    IidPartitioner,
    Partitioner,
    get_partitioner,
    partition_dirichlet,
    partition_iid,
)
from byzedge.models.registry import MODELS, get_model_spec
from byzedge.models.spec import ModelSpec, ParamSpec

__all__ = [
    "DIGITS_NUM_CLASSES",
    "INPUT_NAME",
    "MIN_SAMPLES_PER_DEVICE",
    "MODELS",
    "ONNX_OPSET",
    "OUTPUT_NAME",
    "PARTITIONERS",
    "DigitsSplit",
    "DirichletPartitioner",
    "IidPartitioner",
    "ModelSpec",
    "OnnxClassifier",
    "ParamSpec",
    "Partitioner",
    "check_onnx_parity",
    "export_onnx",
    "fan_in_bounds",
    "get_model_spec",
    "get_partitioner",
    "initial_parameters",
    "load_digits_split",
    "partition_dirichlet",
    "partition_iid",
]
