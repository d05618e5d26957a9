"""Reconnect and retry delays: capped exponential backoff with full jitter.

Full jitter (a uniform draw between zero and the exponential ceiling) spreads a fleet that
lost its broker at the same moment over the whole window, instead of reconnecting in
synchronised waves ("Exponential Backoff And Jitter", AWS Architecture Blog, 2015).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

__all__ = ["UniformSource", "exponential_backoff"]


class UniformSource(Protocol):
    """Anything with ``uniform(low, high)``: ``numpy.random.Generator`` or ``random.Random``."""

    def uniform(self, low: float, high: float, /) -> float:
        """Return a float drawn uniformly from ``[low, high)``."""
        ...


def exponential_backoff(
    initial_s: float,
    maximum_s: float,
    rng: UniformSource,
    *,
    multiplier: float = 2.0,
) -> Iterator[float]:
    """Yield an endless sequence of jittered delays in seconds.

    The ``k``-th delay (from 0) is drawn uniformly from ``[0, min(maximum_s,
    initial_s * multiplier**k)]``. Restart the iterator after a success.

    Parameters
    ----------
    initial_s
        Ceiling of the first delay; must be positive.
    maximum_s
        Largest ceiling ever used; must be at least ``initial_s``.
    rng
        Source of randomness (``np.random.default_rng(seed)`` in tests for repeatability).
    multiplier
        Growth factor of the ceiling per attempt; must be at least 1.

    Yields
    ------
    float
        The next delay, in ``[0, maximum_s]``.

    Raises
    ------
    ValueError
        If the bounds or the multiplier are out of range.
    """
    if not initial_s > 0:
        msg = f"initial_s must be positive, got {initial_s!r}"
        raise ValueError(msg)
    if not maximum_s >= initial_s:
        msg = f"maximum_s ({maximum_s!r}) must be at least initial_s ({initial_s!r})"
        raise ValueError(msg)
    if not multiplier >= 1:
        msg = f"multiplier must be at least 1, got {multiplier!r}"
        raise ValueError(msg)
    return _delays(initial_s, maximum_s, rng, multiplier)


def _delays(
    initial_s: float, maximum_s: float, rng: UniformSource, multiplier: float
) -> Iterator[float]:
    # A separate generator so argument errors surface at the call, not at the first next().
    ceiling = initial_s
    while True:
        # min() also guards against a draw landing a hair above the ceiling through rounding.
        yield min(float(rng.uniform(0.0, ceiling)), ceiling)
        # Stop multiplying once capped, so the ceiling never overflows to inf.
        ceiling = min(maximum_s, ceiling * multiplier)
