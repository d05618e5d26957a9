"""What the coordinator persists at the end of every round, and how it reads it back.

The state is one msgpack document written atomically (:class:`daemon.store.AtomicStore`):
the last completed round, the model version and parameters, the aggregator's and the
reputation book's state, and the replay-protection counters. A crash therefore loses at
most the round in flight; a corrupt file is set aside and the coordinator starts fresh.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from byzedge.daemon.store import AtomicStore

__all__ = ["CoordinatorState", "CoordinatorStateStore", "StateStore"]


@dataclass(slots=True)
class CoordinatorState:
    """The coordinator's durable state between rounds."""

    fleet: str
    model: str
    completed_round: int
    model_version: int
    params: NDArray[np.float32]
    model_counter: int = 0
    aggregator: dict[str, Any] | None = None
    reputation: dict[str, float] = field(default_factory=dict)
    ingest: dict[str, Any] = field(default_factory=dict)
    rejected_total: dict[str, int] = field(default_factory=dict)
    anomaly: dict[str, Any] = field(default_factory=dict)
    """``AnomalyDetector.state_dict()``; empty before the first save (and in old files)."""
    method: dict[str, Any] | None = None
    """A training method's ``ServerState.to_plain()`` (``None`` for FedAvg)."""
    last_summary: str | None = None
    """The completed round's summary line, written to rounds.jsonl after the save."""

    def to_document(self) -> dict[str, Any]:
        """Return the msgpack-friendly document that is stored."""
        return {
            "fleet": self.fleet,
            "model": self.model,
            "completed_round": self.completed_round,
            "model_version": self.model_version,
            "params": np.ascontiguousarray(self.params, dtype="<f4").tobytes(),
            "model_counter": self.model_counter,
            "aggregator": self.aggregator,
            "reputation": dict(self.reputation),
            "ingest": self.ingest,
            "rejected_total": dict(self.rejected_total),
            "anomaly": self.anomaly,
            "method": self.method,
            "last_summary": self.last_summary,
        }

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> CoordinatorState:
        """Rebuild the state; raise ``ValueError`` if a field is missing or mistyped."""
        try:
            return cls(
                fleet=str(document["fleet"]),
                model=str(document["model"]),
                completed_round=int(document["completed_round"]),
                model_version=int(document["model_version"]),
                params=np.frombuffer(document["params"], dtype="<f4").astype(np.float32),
                model_counter=int(document.get("model_counter", 0)),
                aggregator=document.get("aggregator"),
                reputation={str(k): float(v) for k, v in document["reputation"].items()},
                ingest=dict(document.get("ingest", {})),
                rejected_total={str(k): int(v) for k, v in document["rejected_total"].items()},
                anomaly=dict(document.get("anomaly") or {}),
                method=document.get("method"),
                last_summary=(
                    summary if isinstance(summary := document.get("last_summary"), str) else None
                ),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            msg = f"coordinator state is missing or mistypes a field: {exc}"
            raise ValueError(msg) from exc


class CoordinatorStateStore(Protocol):
    """Where the coordinator's state lives between rounds.

    One file (:class:`StateStore`), or one file and a cluster's replicated copy
    (:mod:`byzedge.coordinator.cluster.nats_state`).
    """

    @property
    def path(self) -> Path:
        """The local state file."""
        ...

    def load(self) -> CoordinatorState | None:
        """The saved state, or ``None`` when there is none."""
        ...

    def save(self, state: CoordinatorState) -> None:
        """Write ``state`` atomically."""
        ...


class StateStore:
    """Loads and saves :class:`CoordinatorState` in ``state_dir/coordinator.state``."""

    def __init__(self, state_dir: Path) -> None:
        self._store = AtomicStore(state_dir / "coordinator.state")

    @property
    def path(self) -> Path:
        """The state file."""
        return self._store.path

    def load(self) -> CoordinatorState | None:
        """Return the saved state, or ``None`` when there is none (or it was corrupt)."""
        document = self._store.load()
        if document is None:
            return None
        return CoordinatorState.from_document(document)

    def save(self, state: CoordinatorState) -> None:
        """Write ``state`` atomically."""
        self._store.save(state.to_document())
