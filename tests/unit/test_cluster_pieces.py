"""Sharded ingest's small pieces: contexts, receipts, re-sends, the file lease, config."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from byzedge.coordinator.aggregation import build
from byzedge.coordinator.cluster.context import RoundContext, open_context, seal_context
from byzedge.coordinator.cluster.contracts import LeaseLostError
from byzedge.coordinator.cluster.lease import FileLease, build_lease
from byzedge.coordinator.config import CoordinatorConfig
from byzedge.coordinator.reputation import ReputationBook
from byzedge.coordinator.round_engine import RoundSettings, ShardPartial, server_step
from byzedge.edge_agent.receipts import ResendTimer
from byzedge.protocol.errors import ProtocolError
from byzedge.protocol.receipts import Receipt, open_receipt, seal_receipt
from byzedge.protocol.signing import SigningKey

KEY = SigningKey.generate()


def context(**changes: Any) -> RoundContext:
    values: dict[str, Any] = {
        "round": 3,
        "model_version": 2,
        "epoch": 1,
        "dim": 4,
        "mode": "sum",
        "cohort": frozenset({"a", "b"}),
        "rule": "clipping-vr",
        "rule_params": {"radius": "median", "clip_multiplier": 1.0},
        "rule_state": {"version": 2, "reference": b"\x00" * 16, "radius": 0.5},
        "weights": {"a": 0.97},
        "default_weight": 1.0,
        "counter": 9,
    }
    values.update(changes)
    return RoundContext(**values)


def test_a_context_round_trips_and_keeps_its_basis() -> None:
    sent = context()
    payload = seal_context(KEY, sent, fleet="f", sender="coordinator", ttl_s=60)

    got = open_context(payload, KEY.verify_key, fleet="f")

    assert got == sent
    assert got.basis == sent.basis
    assert got.weight("a") == 0.97
    assert got.weight("zz") == 1.0


def test_the_basis_ignores_the_epoch_but_not_the_state() -> None:
    assert context(epoch=7, counter=1).basis == context().basis
    assert context(rule_state={"version": 2, "radius": 0.6}).basis != context().basis
    assert context(weights={"a": 0.5}).basis != context().basis


def test_a_context_from_another_key_or_fleet_is_refused() -> None:
    payload = seal_context(SigningKey.generate(), context(), fleet="f", sender="c", ttl_s=60)
    with pytest.raises(ProtocolError):
        open_context(payload, KEY.verify_key, fleet="f")
    payload = seal_context(KEY, context(), fleet="g", sender="c", ttl_s=60)
    with pytest.raises(ProtocolError):
        open_context(payload, KEY.verify_key, fleet="f")


def receipt(held: set[str], expected: set[str]) -> Receipt:
    payload = seal_receipt(
        KEY,
        fleet="f",
        sender="coordinator",
        round_number=3,
        model_version=2,
        epoch=1,
        counter=5,
        held=held,
        expected=expected,
        partials={"ingest-1": (b"s" * 8, 4)},
        refused=[("ingest-1", b"s" * 8, 3)],
    )
    return open_receipt(payload, KEY.verify_key, fleet="f")


@pytest.mark.parametrize("held", [{"a"}, {"a", "b", "c"}], ids=["held-listed", "missing-listed"])
def test_a_receipt_says_who_is_held(held: set[str]) -> None:
    got = receipt(held, {"a", "b", "c", "d"})

    assert {d for d in "abcd" if got.holds(d)} == held
    assert (got.held is None) != (got.missing is None)
    assert got.taken("ingest-1", b"s" * 8, 4)
    assert not got.taken("ingest-1", b"s" * 8, 5)
    assert not got.taken("ingest-1", b"t" * 8, 1)
    assert ("ingest-1", b"s" * 8, 3) in got.refused


def test_a_model_is_not_a_receipt() -> None:
    payload = seal_context(KEY, context(), fleet="f", sender="c", ttl_s=60)
    with pytest.raises(ProtocolError, match="receipt"):
        open_receipt(payload, KEY.verify_key, fleet="f")


def test_a_device_resends_once_a_receipt_after_the_grace_omits_it() -> None:
    timer = ResendTimer("b", grace_s=5.0)
    timer.sent(3, 2, now=100.0)
    omitting = receipt({"a"}, {"a", "b"})

    assert not timer.observe(omitting, now=103.0)  # within the grace: on its way
    assert timer.observe(omitting, now=106.0)
    assert not timer.observe(omitting, now=108.0)  # at most once per grace period
    assert timer.observe(omitting, now=111.5)
    assert not timer.observe(receipt({"a", "b"}, {"a", "b"}), now=120.0)
    assert timer.held
    assert not timer.observe(omitting, now=130.0)  # held once: done for the round


def test_a_receipt_of_another_round_changes_nothing() -> None:
    timer = ResendTimer("b", grace_s=1.0)
    timer.sent(4, 3, now=0.0)
    assert not timer.observe(receipt(set(), {"b"}), now=50.0)


def _hold(path: str, ready: Any) -> None:
    lease = FileLease(Path(path))
    lease.acquire()
    ready.set()
    time.sleep(60)


def test_a_standby_gets_the_lease_when_the_leader_dies(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    ready = context.Event()
    holder = context.Process(target=_hold, args=(str(tmp_path), ready), daemon=True)
    holder.start()
    assert ready.wait(10)
    standby = FileLease(tmp_path, poll_s=0.02)

    assert standby.acquire(timeout_s=0.3) is None
    assert holder.pid is not None
    os.kill(holder.pid, signal.SIGKILL)
    holder.join()

    assert standby.acquire(timeout_s=5.0) == 2
    standby.renew()
    standby.release()
    later = FileLease(tmp_path)
    assert later.acquire(timeout_s=1.0) == 3
    later.release()


def test_a_replaced_lock_file_deposes_the_leader(tmp_path: Path) -> None:
    lease = FileLease(tmp_path)
    assert lease.acquire() == 1
    lease.path.unlink()
    other = FileLease(tmp_path)
    assert other.acquire(timeout_s=1.0) == 2

    with pytest.raises(LeaseLostError):
        lease.renew()
    lease.release()
    other.release()


def base_config(tmp_path: Path, **values: Any) -> dict[str, Any]:
    return {
        "fleet": "f",
        "signing_key": tmp_path / "k",
        "devices_dir": tmp_path,
        "state_dir": tmp_path,
        "validation": "none",
        **values,
    }


def test_cluster_defaults_run_a_single_process(tmp_path: Path) -> None:
    config = CoordinatorConfig.model_validate(base_config(tmp_path))
    assert config.cluster.workers == 0
    assert config.cluster.broker == "mosquitto"
    assert isinstance(build_lease(config), FileLease)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"algorithm": "byz-vr-marina"}, "fedavg"),
        ({"max_update_bytes": 1 << 20}, "chunks"),
        ({"cluster": {"workers": 2, "broker": "nats"}}, "nats_servers"),
        ({"cluster": {"workers": 2, "nats_servers": ["http://x"]}}, "nats://"),
        ({"cluster": {"workers": 2, "share_group": "a/b"}}, "share_group"),
        ({"cluster": {"workers": 2, "worker_cert_file": "c"}}, "worker_key_file"),
        ({"cluster": {"workers": 2, "shards": 3}}, "shards"),
    ],
)
def test_cluster_settings_that_cannot_work_are_refused(
    tmp_path: Path, values: dict[str, Any], message: str
) -> None:
    raw = base_config(tmp_path, max_update_bytes=65536, cluster={"workers": 2})
    raw.update(values)
    with pytest.raises(ValidationError, match=message):
        CoordinatorConfig.model_validate(raw)


def test_a_step_from_partials_equals_the_step_from_rows() -> None:
    rng = np.random.default_rng(1)
    rows = rng.standard_normal((5, 3)).astype(np.float32)
    ids = [f"d{i}" for i in range(5)]
    settings = RoundSettings(anomaly_detection=False)
    params = np.zeros(3, dtype=np.float32)
    book = ReputationBook()
    book.record("d1", good=False)

    single = server_step(
        params, ids, list(rows), settings=settings, reputation=book, aggregator=build("mean")
    )
    book = ReputationBook()
    book.record("d1", good=False)
    shards = []
    for share in ([0, 1], [2, 3, 4]):
        rule = build("mean")
        weights = {ids[i]: book.after(ids[i], good=True) for i in share}
        for i in share:
            rule.accumulate(rows[i], weights[ids[i]])  # type: ignore[attr-defined]
        shards.append(ShardPartial(rule.partial(), weights))  # type: ignore[attr-defined]
    sharded = server_step(
        params,
        ids,
        None,
        settings=settings,
        reputation=book,
        aggregator=build("mean"),
        partials=shards,
    )

    np.testing.assert_allclose(sharded.params, single.params, rtol=1e-6)
    assert sharded.streamed
    assert single.streamed
    assert sharded.weights is not None
    assert single.weights is not None
    np.testing.assert_array_equal(sharded.weights, single.weights)


def test_partials_must_cover_the_round_exactly() -> None:
    rule = build("mean")
    rule.accumulate(np.ones(2, dtype=np.float32))  # type: ignore[attr-defined]
    shard = ShardPartial(rule.partial(), {"a": 1.0})  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="exactly once"):
        server_step(
            np.zeros(2, dtype=np.float32),
            ["a", "b"],
            None,
            settings=RoundSettings(anomaly_detection=False),
            reputation=ReputationBook(),
            aggregator=build("mean"),
            partials=[shard],
        )
    with pytest.raises(ValueError, match="anomaly_detection"):
        server_step(
            np.zeros(2, dtype=np.float32),
            ["a"],
            None,
            settings=RoundSettings(anomaly_detection=True),
            reputation=ReputationBook(),
            aggregator=build("mean"),
            partials=[shard],
        )
