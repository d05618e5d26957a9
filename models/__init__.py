"""Model definitions, parameter layouts, datasets, partitioners and ONNX export.

Everything re-exported here is torch-free, so the coordinator can import it. The torch side
lives in :mod:`byzedge.models.torch_modules` (the modules), :mod:`byzedge.models.params` (the
one torch <-> numpy seam) and :mod:`byzedge.models.torch_export` (a module's ONNX template);
import those explicitly where training or exporting happens.
"""

from __future__ import annotations

from byzedge.models.datasets import DIGITS_NUM_CLASSES, DigitsSplit, load_digits_split
from byzedge.models.factory import ModelFactoryError, is_factory_reference
from byzedge.models.init import fan_in_bounds, initial_parameters
from byzedge.models.layout import layout_fingerprint, layout_meta, layout_mismatch
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
from byzedge.models.template import TemplateError, load_template_file, read_template

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
    "ModelFactoryError",
    "ModelSpec",
    "OnnxClassifier",
    "ParamSpec",
    "Partitioner",
    "TemplateError",
    "check_onnx_parity",
    "export_onnx",
    "fan_in_bounds",
    "get_model_spec",
    "get_partitioner",
    "initial_parameters",
    "is_factory_reference",
    "layout_fingerprint",
    "layout_meta",
    "layout_mismatch",
    "load_digits_split",
    "load_template_file",
    "partition_dirichlet",
    "partition_iid",
    "read_template",
]
