"""The device's copy of the current global model, on disk, for inference.

Only a model whose signature verified is ever written here; the ONNX graph and a small
JSON description are each replaced atomically, so ``byzedge agent infer`` (and a crash at
any moment) sees either the previous model or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from byzedge.models import OnnxClassifier, export_onnx, get_model_spec

__all__ = ["ModelInfo", "ModelStore"]


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What the stored model is."""

    model: str
    round: int
    version: int
    sha256: str


class ModelStore:
    """``model.onnx`` and ``model.json`` in the agent's state folder."""

    def __init__(self, state_dir: Path) -> None:
        self._dir = state_dir
        self.onnx_path = state_dir / "model.onnx"
        self.info_path = state_dir / "model.json"

    def save(self, info: ModelInfo, params: NDArray[np.float32]) -> None:
        """Export ``params`` to ONNX and store it with its description."""
        # Unchecked: the checker's schema registry would stay in the agent for good
        # (models.onnx_export.export_onnx); onnxruntime validates the file when infer loads it.
        onnx_bytes = export_onnx(get_model_spec(info.model), params, check=False)
        _atomic_write(self.onnx_path, onnx_bytes)
        _atomic_write(self.info_path, json.dumps(asdict(info)).encode())

    def info(self) -> ModelInfo | None:
        """The stored model's description, or ``None`` when none is stored."""
        try:
            raw = json.loads(self.info_path.read_text())
            return ModelInfo(**raw)
        except (FileNotFoundError, ValueError, TypeError):
            return None

    def classifier(self) -> OnnxClassifier:
        """An onnxruntime session on the stored model.

        Raises
        ------
        FileNotFoundError
            When no model has been received yet.
        """
        return OnnxClassifier(self.onnx_path.read_bytes())


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
