"""ONNX models of any registered or user model, and onnxruntime inference, without torch.

A round's ONNX model is the model's template (exported by torch once, from the model
itself: :mod:`byzedge.models.template`) with the round's parameters substituted into its
initializers, so the coordinator can turn a flat parameter vector into a servable model and
evaluate it. Every graph takes ``input`` float32 ``[batch, *input_shape]`` (dynamic batch)
and returns ``logits`` float32 ``[batch, outputs]``; :class:`OnnxClassifier` also takes
rows flattened to ``prod(input_shape)`` floats.

The registered models used to be built node by node here; exporting them from their torch
modules gives the same parameter layout and the same logits (tests/unit/test_models_onnx.py,
below 1e-5), so one path now serves every model.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from numpy.typing import NDArray

from byzedge.models.spec import ModelSpec
from byzedge.models.template import INPUT_NAME, ONNX_OPSET, OUTPUT_NAME, fill_template

__all__ = [
    "INPUT_NAME",
    "ONNX_OPSET",
    "OUTPUT_NAME",
    "OnnxClassifier",
    "check_onnx_parity",
    "export_onnx",
]


def export_onnx(spec: ModelSpec, vec: NDArray[np.float32], *, check: bool = True) -> bytes:
    """Serialise the model ``spec`` with parameters ``vec`` as an ONNX model.

    Parameters
    ----------
    spec:
        A model spec holding its template (every spec ``get_model_spec`` returns does).
    vec:
        Its flat float32 parameter vector, shape ``(spec.dim,)``.
    check:
        Run ONNX's full checker (with shape inference) on the result. Its operator schema
        registry stays in memory once loaded (about 7 MB), so the agent daemon, which
        exports every model it receives, skips it: the graph is the template the tests
        check, and onnxruntime validates the model when ``agent infer`` loads it.

    Returns
    -------
    bytes
        An ONNX model (opset 17) with the parameters as initializers.

    Raises
    ------
    ValueError
        If ``spec`` has no template or ``vec`` has the wrong shape or dtype.
    """
    model = fill_template(spec, vec)
    if check:
        onnx.checker.check_model(model, full_check=True)
    data: bytes = model.SerializeToString()
    return data


class OnnxClassifier:
    """A classifier served by onnxruntime on one CPU thread.

    Parameters
    ----------
    onnx_bytes:
        A serialised model with one input ``[batch, *input_shape]`` and one output
        ``[batch, outputs]``.

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
        graph_input = self._session.get_inputs()[0]
        graph_output = self._session.get_outputs()[0]
        self._input_name = str(graph_input.name)
        self._output_name = str(graph_output.name)
        try:
            self.input_shape = tuple(int(d) for d in graph_input.shape[1:])
            self.num_classes = int(graph_output.shape[1])
        except (TypeError, ValueError, IndexError) as exc:
            raise ValueError(f"ONNX model needs fixed per-sample shapes: {exc}") from exc
        self.input_dim = math.prod(self.input_shape)

    def logits(self, x: NDArray[np.floating]) -> NDArray[np.float32]:
        """Return float32 logits ``(m, num_classes)`` for ``x`` ``(m, *input_shape)``.

        Rows flattened to ``(m, input_dim)`` are accepted too.

        Raises
        ------
        ValueError
            If ``x`` is neither ``(m, *input_shape)`` nor ``(m, input_dim)``.
        """
        arr = np.ascontiguousarray(x, dtype=np.float32)
        if arr.ndim == 2 and arr.shape[1] == self.input_dim:
            arr = arr.reshape(arr.shape[0], *self.input_shape)
        elif arr.shape[1:] != self.input_shape:
            shape = ", ".join(str(d) for d in self.input_shape)
            flat = f" or (m, {self.input_dim})" if len(self.input_shape) > 1 else ""
            msg = f"expected inputs of shape (m, {shape}){flat}, got {arr.shape}"
            raise ValueError(msg)
        if arr.shape[0] == 0:
            return np.zeros((0, self.num_classes), dtype=np.float32)
        (out,) = self._session.run([self._output_name], {self._input_name: arr})
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
        Inputs of shape ``(m, spec.input_dim)`` or ``(m, *spec.input_shape)``, ``m >= 1``.
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
