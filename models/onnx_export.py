"""ONNX export and onnxruntime inference for the registered models, without torch.

The graph is built node by node with ``onnx.helper`` (no torch exporter, no onnxscript),
so the coordinator can turn a flat parameter vector into a servable model and evaluate it.
Every graph takes ``input`` float32 ``[batch, input_dim]`` (dynamic batch) and returns
``logits`` float32 ``[batch, num_classes]``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

from byzedge.models.registry import get_model_spec
from byzedge.models.spec import ModelSpec

__all__ = [
    "INPUT_NAME",
    "ONNX_OPSET",
    "OUTPUT_NAME",
    "OnnxClassifier",
    "check_onnx_parity",
    "export_onnx",
]

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
ONNX_OPSET = 17
# IR version 8 is the one that goes with opset 17; pinning it keeps the artefact loadable
# by the older onnxruntime builds found on devices.
_IR_VERSION = 8

_Nodes = list[onnx.NodeProto]


def _gemm(x: str, layer: str, out: str) -> onnx.NodeProto:
    # torch's Linear stores weight as (out, in): y = x @ W^T + b, hence transB=1.
    return helper.make_node(
        "Gemm", [x, f"{layer}.weight", f"{layer}.bias"], [out], name=f"{layer}_gemm", transB=1
    )


def _mlp_nodes(spec: ModelSpec) -> tuple[_Nodes, list[onnx.TensorProto]]:
    nodes = [
        _gemm(INPUT_NAME, "fc1", "fc1_out"),
        helper.make_node("Relu", ["fc1_out"], ["fc1_relu"], name="fc1_relu"),
        _gemm("fc1_relu", "fc2", OUTPUT_NAME),
    ]
    return nodes, []


def _conv(x: str, layer: str, out: str, stride: int) -> onnx.NodeProto:
    return helper.make_node(
        "Conv",
        [x, f"{layer}.weight", f"{layer}.bias"],
        [out],
        name=f"{layer}_conv",
        kernel_shape=[3, 3],
        pads=[1, 1, 1, 1],
        strides=[stride, stride],
    )


def _cnn_nodes(spec: ModelSpec) -> tuple[_Nodes, list[onnx.TensorProto]]:
    shape = numpy_helper.from_array(
        np.array((-1, *spec.input_shape), dtype=np.int64), "image_shape"
    )
    nodes = [
        helper.make_node("Reshape", [INPUT_NAME, "image_shape"], ["image"], name="to_image"),
        _conv("image", "conv1", "conv1_out", stride=1),
        helper.make_node("Relu", ["conv1_out"], ["conv1_relu"], name="conv1_relu"),
        _conv("conv1_relu", "conv2", "conv2_out", stride=2),
        helper.make_node("Relu", ["conv2_out"], ["conv2_relu"], name="conv2_relu"),
        # Flatten(axis=1) keeps (channel, row, col) order, as torch.flatten(start_dim=1) does.
        helper.make_node("Flatten", ["conv2_relu"], ["features"], name="flatten", axis=1),
        _gemm("features", "fc", OUTPUT_NAME),
    ]
    return nodes, [shape]


_GRAPH_BUILDERS: Mapping[str, Callable[[ModelSpec], tuple[_Nodes, list[onnx.TensorProto]]]] = (
    MappingProxyType({"mlp": _mlp_nodes, "cnn": _cnn_nodes, "mlp-wide": _mlp_nodes})
)


def export_onnx(spec: ModelSpec, vec: NDArray[np.float32], *, check: bool = True) -> bytes:
    """Serialise the model ``spec`` with parameters ``vec`` as an ONNX model.

    Parameters
    ----------
    spec:
        A registered model spec.
    vec:
        Its flat float32 parameter vector, shape ``(spec.dim,)``.
    check:
        Run ONNX's full checker (with shape inference) on the result. Its operator schema
        registry stays in memory once loaded (about 7 MB), so the agent daemon, which
        exports every model it receives, skips it: the graph comes from the same builder
        the tests check, and onnxruntime validates the model when ``agent infer`` loads it.

    Returns
    -------
    bytes
        An ONNX model (opset 17) with the parameters as initializers.

    Raises
    ------
    ValueError
        If ``spec`` is not registered or ``vec`` has the wrong shape or dtype.
    """
    if get_model_spec(spec.name) != spec:
        raise ValueError(f"spec {spec.name!r} differs from the registered spec of that name")
    builder = _GRAPH_BUILDERS.get(spec.name)
    if builder is None:
        raise ValueError(f"no ONNX graph builder for model {spec.name!r}")
    weights = [
        numpy_helper.from_array(np.ascontiguousarray(arr), name)
        for name, arr in spec.split(vec).items()
    ]
    nodes, constants = builder(spec)
    graph = helper.make_graph(
        nodes,
        f"byzedge_{spec.name}",
        inputs=[
            helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", spec.input_dim])
        ],
        outputs=[
            helper.make_tensor_value_info(
                OUTPUT_NAME, TensorProto.FLOAT, ["batch", spec.num_classes]
            )
        ],
        initializer=weights + constants,
    )
    model = helper.make_model(
        graph,
        producer_name="byzedge",
        opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
        ir_version=_IR_VERSION,
    )
    if check:
        onnx.checker.check_model(model, full_check=True)
    data: bytes = model.SerializeToString()
    return data


class OnnxClassifier:
    """A classifier served by onnxruntime on one CPU thread.

    Parameters
    ----------
    onnx_bytes:
        A serialised model with input ``input`` ``[batch, d]`` and output ``logits``.

    Raises
    ------
    ValueError
        If onnxruntime cannot load the model.
    """

    def __init__(self, onnx_bytes: bytes) -> None:
        options = ort.SessionOptions()
        # Devices have few cores and many agents may share a process: one thread each.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        try:
            self._session: Any = ort.InferenceSession(
                onnx_bytes, sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped exception classes
            raise ValueError(f"cannot load ONNX model: {exc}") from exc
        input_shape = self._session.get_inputs()[0].shape
        output_shape = self._session.get_outputs()[0].shape
        self.input_dim = int(input_shape[1])
        self.num_classes = int(output_shape[1])

    def logits(self, x: NDArray[np.floating]) -> NDArray[np.float32]:
        """Return float32 logits of shape ``(m, num_classes)`` for ``x`` of shape ``(m, d)``.

        Raises
        ------
        ValueError
            If ``x`` is not 2-D with ``input_dim`` columns.
        """
        arr = np.ascontiguousarray(x, dtype=np.float32)
        if arr.ndim != 2 or arr.shape[1] != self.input_dim:
            raise ValueError(f"expected inputs of shape (m, {self.input_dim}), got {arr.shape}")
        if arr.shape[0] == 0:
            return np.zeros((0, self.num_classes), dtype=np.float32)
        (out,) = self._session.run([OUTPUT_NAME], {INPUT_NAME: arr})
        return np.asarray(out, dtype=np.float32)

    def predict(self, x: NDArray[np.floating]) -> NDArray[np.int64]:
        """Return the predicted class (argmax of the logits) for each row of ``x``."""
        classes: NDArray[np.int64] = np.argmax(self.logits(x), axis=1).astype(np.int64)
        return classes

    def accuracy(self, x: NDArray[np.floating], y: NDArray[np.integer]) -> float:
        """Return the fraction of rows of ``x`` whose predicted class equals ``y``.

        Raises
        ------
        ValueError
            If ``x`` and ``y`` disagree in length or are empty.
        """
        labels = np.asarray(y)
        if labels.ndim != 1 or labels.shape[0] != np.shape(x)[0]:
            raise ValueError(f"labels shape {labels.shape} does not match inputs {np.shape(x)}")
        if labels.shape[0] == 0:
            raise ValueError("cannot compute accuracy on an empty set")
        return float(np.mean(self.predict(x) == labels))


def check_onnx_parity(spec: ModelSpec, vec: NDArray[np.float32], x: NDArray[np.floating]) -> float:
    """Return the largest absolute logit difference between torch and onnxruntime.

    Imports torch lazily, so only the edge and the tests pay for it.

    Parameters
    ----------
    spec, vec:
        The model and its flat parameters.
    x:
        Inputs of shape ``(m, spec.input_dim)``, ``m >= 1``.
    """
    import torch  # noqa: PLC0415  (torch stays out of coordinator imports)

    from byzedge.models.params import load_vector_into  # noqa: PLC0415
    from byzedge.models.torch_modules import build_module  # noqa: PLC0415

    inputs = np.array(x, dtype=np.float32, copy=True)
    module = build_module(spec)
    load_vector_into(module, vec)
    module.eval()
    with torch.no_grad():
        expected = module(torch.from_numpy(inputs)).numpy()
    actual = OnnxClassifier(export_onnx(spec, vec)).logits(inputs)
    return float(np.max(np.abs(expected - actual)))
