"""Every registry entry, with its defaults, honours its seam's contract."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

from byzedge.edge_agent.pipeline import UpdatePipeline
from byzedge.edge_agent.seams import LocalData, OutgoingMessage, RoundContext
from byzedge.faults import ATTACKS, OMNISCIENT_ATTACKS, DataAttack, UpdateAttack, WireAttack
from byzedge.faults.omniscient import CollusionContext
from byzedge.protocol.signing import SigningKey
from byzedge.protocol.topics import validate_identifier

BY_KIND = {
    kind: sorted(name for name, cls in ATTACKS.items() if cls.acts_on == kind)
    for kind in ("data", "update", "wire")
}


class Source:
    def read(self, round_number: int) -> LocalData:
        rng = np.random.default_rng(round_number)
        return LocalData(
            features=rng.random((30, 64), dtype=np.float32),
            labels=rng.integers(0, 10, size=30).astype(np.int64),
        )


def context(round_number: int = 1) -> RoundContext:
    return RoundContext("dev-7", round_number, np.zeros(8, np.float32), np.random.default_rng(5))


@pytest.mark.parametrize("name", BY_KIND["data"])
def test_data_attacks_keep_shapes_and_dtypes(name: str) -> None:
    attack = ATTACKS[name](Source())  # type: ignore[call-arg, arg-type]
    assert isinstance(attack, DataAttack)
    data = attack.read(1)
    assert data.features.shape == (30, 64)
    assert data.features.dtype == np.float32
    assert data.labels.dtype == np.int64
    np.testing.assert_array_equal(attack.read(1).labels, data.labels)  # re-read repeats


@pytest.mark.parametrize("name", BY_KIND["update"])
def test_update_attacks_keep_shape_dtype_and_repeat_for_the_same_rng(name: str) -> None:
    update = np.linspace(-1, 1, 8, dtype=np.float32)
    first, second = ATTACKS[name](), ATTACKS[name]()  # type: ignore[call-arg]
    assert isinstance(first, UpdateAttack)
    assert isinstance(second, UpdateAttack)
    first(update, context(0))
    second(update, context(0))
    out = first(update * 2, context(1))
    assert out.shape == update.shape
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, second(update * 2, context(1)))


@pytest.mark.parametrize("name", BY_KIND["wire"])
def test_wire_attacks_return_messages_for_valid_topics(name: str) -> None:
    stage = ATTACKS[name]()  # type: ignore[call-arg]
    assert isinstance(stage, WireAttack)
    prepared = UpdatePipeline("dense", wire_stages=[stage]).prepare(
        np.ones(8, np.float32),
        context(),
        key=SigningKey.generate(),
        fleet="f",
        base_version=0,
        counter=1,
    )
    assert prepared.messages
    for message in prepared.messages:
        assert isinstance(message, OutgoingMessage)
        assert validate_identifier(message.topic_device)
    assert prepared.messages != [OutgoingMessage("dev-7", prepared.wire_bytes)]


def mean(matrix: NDArray[np.float32]) -> NDArray[np.float32]:
    out: NDArray[np.float32] = matrix.mean(axis=0).astype(np.float32)
    return out


@pytest.mark.parametrize("name", sorted(OMNISCIENT_ATTACKS))
@pytest.mark.parametrize(("h", "f"), [(1, 1), (7, 3), (4, 6)])
def test_colluding_attacks_return_finite_rows_per_byzantine(name: str, h: int, f: int) -> None:
    honest = np.random.default_rng(h).normal(size=(h, 8)).astype(np.float32)
    ctx = CollusionContext(
        round=2,
        global_params=np.ones(8, np.float32),
        initial_params=np.zeros(8, np.float32),
        num_sampled=h + f,
        rng=np.random.default_rng(0),
        aggregate=mean,
        server_learning_rate=0.5,
    )
    out = OMNISCIENT_ATTACKS[name]()(honest, f, ctx)
    assert out.shape == (f, 8)
    assert out.dtype == np.float32
    assert np.isfinite(out).all()
    assert OMNISCIENT_ATTACKS[name]()(honest, 0, ctx).shape == (0, 8)
