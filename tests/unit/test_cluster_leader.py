"""The leader takes partial frames as a single coordinator takes updates (in-memory broker).

The test plays two ingest workers: it reads the leader's round context and publishes
hand-made partial frames on the workers' topics.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

from byzedge.coordinator.aggregation import build
from byzedge.coordinator.aggregation.base import StreamingAggregator
from byzedge.coordinator.cluster.context import RoundContext, open_context
from byzedge.coordinator.cluster.leader import ClusterLeader
from byzedge.coordinator.cluster.lease import FileLease
from byzedge.coordinator.cluster.partials import HeldUpdate, Partial
from byzedge.coordinator.config import CoordinatorConfig
from byzedge.coordinator.devices import DeviceRegistry
from byzedge.coordinator.service import RoundSummary
from byzedge.daemon.transport import Endpoint, InMemoryBroker, InMemoryTransport
from byzedge.models import get_model_spec
from byzedge.protocol import topics
from byzedge.protocol.envelope import Header
from byzedge.protocol.receipts import Receipt, open_receipt
from byzedge.protocol.signing import SigningKey

FLEET = "lead"
DEVICES = ("d1", "d2", "d3")
DIM = get_model_spec("mlp").dim


class Played:
    def __init__(self, tmp_path: Path) -> None:
        self.key = SigningKey.generate()
        self.key.save(tmp_path / "coordinator.key")
        registry = DeviceRegistry({d: SigningKey.generate().verify_key for d in DEVICES})
        config = CoordinatorConfig.model_validate(
            {
                "fleet": FLEET,
                "signing_key": tmp_path / "coordinator.key",
                "devices_dir": tmp_path,
                "state_dir": tmp_path / "state",
                "validation": "none",
                "rounds": 1,
                "round_interval_s": 0.0,
                "byzantine_defense": "mean",
                "anomaly_detection": False,
                "max_update_bytes": 65536,
                "cluster": {"workers": 2},
            }
        )
        self.broker = InMemoryBroker()
        lease = FileLease(config.state_dir)
        epoch = lease.acquire()
        assert epoch is not None
        self.summaries: list[RoundSummary] = []
        self.leader = ClusterLeader(
            config,
            signing_key=self.key,
            devices=registry,
            lease=lease,
            epoch=epoch,
            on_round=self.summaries.append,
            transport=self.broker.connect,
        )
        self.worker: InMemoryTransport = self.broker.connect(
            Endpoint("workers", on_message=lambda _t, _p: None)
        )
        self.worker.start()
        self.thread = threading.Thread(target=self.leader.run, daemon=True)
        self.thread.start()
        self.rows = {d: np.full(DIM, float(i + 1), dtype=np.float32) for i, d in enumerate(DEVICES)}

    def context(self) -> RoundContext:
        deadline = time.monotonic() + 30
        while topics.context_topic(FLEET) not in self.broker.retained:
            assert time.monotonic() < deadline, "no round context"
            time.sleep(0.01)
        payload = self.broker.retained[topics.context_topic(FLEET)]
        return open_context(payload, self.key.verify_key, fleet=FLEET)

    def receipt(self) -> Receipt:
        """The latest receipt (the leader sends its first right after the context)."""
        deadline = time.monotonic() + 30
        while topics.receipts_topic(FLEET) not in self.broker.retained:
            assert time.monotonic() < deadline, "no receipt"
            time.sleep(0.01)
        payload = self.broker.retained[topics.receipts_topic(FLEET)]
        return open_receipt(payload, self.key.verify_key, fleet=FLEET)

    def partial(self, worker: str, seq: int, devices: tuple[str, ...], **changes: Any) -> Partial:
        context = self.context()
        rule = cast(StreamingAggregator, build("mean"))
        rule.start(DIM)
        held = []
        for device in devices:
            rule.accumulate(self.rows[device], context.weight(device))
            header = Header(
                kind="update",
                fleet=FLEET,
                sender=device,
                round=1,
                base_version=0,
                codec="dense",
                dim=DIM,
                counter=1,
            )
            digest = changes.get("digests", {}).get(device, hashlib.sha256(device.encode()))
            held.append(
                HeldUpdate(
                    device_id=device,
                    header=header,
                    header_bytes=header.to_bytes(),
                    wire_bytes=100,
                    body_bytes=50,
                    digest=digest.digest(),
                    weight=context.weight(device),
                )
            )
        return Partial(
            fleet=FLEET,
            round=1,
            model_version=0,
            epoch=context.epoch,
            basis=context.basis,
            worker=worker,
            session=b"s" * 8,
            seq=seq,
            mode="sum",
            dim=DIM,
            updates=tuple(held),
            sums=rule.partial() if devices else None,
        )

    def send(self, partial: Partial) -> None:
        topic = topics.partial_topic(FLEET, partial.worker)
        self.worker.publish(topic, partial.to_bytes())

    def wait(self, check: Any, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not check():
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.02)


@pytest.fixture
def played(tmp_path: Path) -> Iterator[Played]:
    made = Played(tmp_path)
    yield made
    made.thread.join(timeout=30)


def test_a_sum_partial_that_overlaps_held_devices_is_refused_and_its_others_come_again(
    played: Played,
) -> None:
    assert played.context().mode == "sum"
    first = played.partial("ingest-1", 1, ("d1", "d2"))
    played.send(first)
    played.send(first)  # sent again by its worker: taken once
    played.wait(lambda: played.receipt().holds("d2"))

    played.send(played.partial("ingest-2", 1, ("d2", "d3")))  # d2 went through both workers
    played.wait(lambda: ("ingest-2", b"s" * 8, 1) in played.receipt().refused)
    assert not played.receipt().holds("d3")
    played.send(played.partial("ingest-2", 2, ("d3",)))  # its worker folds d3 again
    played.wait(lambda: len(played.summaries) == 1)

    summary = played.summaries[0]
    assert summary.accepted_devices == list(DEVICES)
    assert summary.redelivered == 1  # d2's copy
    assert summary.rejected == {}
    params = played.leader.state.params
    start = params - np.full(DIM, 2.0, dtype=np.float32)  # the mean of 1, 2, 3
    np.testing.assert_allclose(params - start, 2.0, rtol=1e-6)


def test_a_second_update_of_a_device_is_a_duplicate(played: Played) -> None:
    played.send(played.partial("ingest-1", 1, ("d1", "d2")))
    played.wait(lambda: played.receipt().holds("d2"))
    other = {"d2": hashlib.sha256(b"another update")}
    played.send(played.partial("ingest-2", 1, ("d2", "d3"), digests=other))
    played.wait(lambda: ("ingest-2", b"s" * 8, 1) in played.receipt().refused)
    played.send(played.partial("ingest-2", 2, ("d3",)))
    played.wait(lambda: len(played.summaries) == 1)

    assert played.summaries[0].accepted == 3
    assert played.summaries[0].rejected == {"duplicate": 1}
    assert played.summaries[0].redelivered == 0
