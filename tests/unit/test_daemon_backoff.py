from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from byzedge.daemon.backoff import exponential_backoff


def take(n: int, initial: float, maximum: float, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    return list(itertools.islice(exponential_backoff(initial, maximum, rng), n))


@given(
    initial=st.floats(min_value=1e-3, max_value=10.0),
    factor=st.floats(min_value=1.0, max_value=1000.0),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_each_delay_lies_within_its_exponential_ceiling(
    initial: float, factor: float, seed: int
) -> None:
    maximum = initial * factor
    for attempt, delay in enumerate(take(40, initial, maximum, seed)):
        assert 0.0 <= delay <= min(maximum, initial * 2.0**attempt)


def test_delays_never_exceed_the_maximum_after_many_attempts() -> None:
    delays = take(5000, 0.5, 30.0)
    assert max(delays) <= 30.0
    # Full jitter: once capped, draws spread over the whole window.
    assert max(delays[100:]) > 25.0
    assert min(delays[100:]) < 5.0


def test_the_sequence_is_reproducible_with_the_same_seed() -> None:
    assert take(20, 1.0, 60.0, seed=7) == take(20, 1.0, 60.0, seed=7)


def test_a_stdlib_random_works_as_the_source() -> None:
    delays = list(itertools.islice(exponential_backoff(1.0, 8.0, random.Random(3)), 10))
    assert all(0.0 <= d <= 8.0 for d in delays)


@pytest.mark.parametrize(
    ("initial", "maximum", "multiplier"),
    [(0.0, 1.0, 2.0), (-1.0, 1.0, 2.0), (2.0, 1.0, 2.0), (1.0, 2.0, 0.5), (float("nan"), 1.0, 2.0)],
)
def test_invalid_arguments_are_rejected_at_the_call(
    initial: float, maximum: float, multiplier: float
) -> None:
    with pytest.raises(ValueError):
        exponential_backoff(initial, maximum, np.random.default_rng(0), multiplier=multiplier)
