"""Run a column kernel over disjoint column ranges on several cores.

The compiled kernels (:mod:`byzedge.coordinator.aggregation._compiled`) release the GIL and write
only their own columns, so splitting ``range(d)`` into one contiguous range per worker
and running the ranges on a small thread pool uses every core the process may use
without any locking. Plain threads, not numba's own threading layer: its default
("workqueue") aborts the process when two Python threads launch parallel kernels at once,
and the coordinator, the simulator and the tests all may.

The number of workers is the number of CPUs this process may run on, capped at 8, or
``BYZEDGE_AGGREGATION_THREADS``. Small rounds run on the calling thread: below about a
quarter of a million columns the hand-off costs more than it saves.

Private to :mod:`byzedge.coordinator.aggregation`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

__all__ = ["MIN_PARALLEL_COLUMNS", "column_ranges", "map_column_ranges", "worker_count"]

MIN_PARALLEL_COLUMNS = 1 << 18
"""Rounds with fewer columns than this are not split."""

_ALIGN = 1024
"""Ranges start at multiples of this many columns (whole cache lines, whole blocks)."""

_T = TypeVar("_T")

_pool_lock = threading.Lock()
_pool: list[ThreadPoolExecutor] = []


def _forget_pool_in_child() -> None:
    # A forked child (the simulator's worker processes) inherits the pool object but not
    # its threads, so work submitted to it would never run: start afresh.
    global _pool_lock  # noqa: PLW0603 (module state reset after fork)
    _pool_lock = threading.Lock()
    _pool.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_in_child)


def worker_count() -> int:
    """Return how many threads a column kernel may use (at least 1)."""
    configured = os.environ.get("BYZEDGE_AGGREGATION_THREADS", "").strip()
    if configured:
        try:
            return max(1, int(configured))
        except ValueError:
            raise ValueError(
                f"BYZEDGE_AGGREGATION_THREADS must be a positive integer, got {configured!r}"
            ) from None
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        available = os.cpu_count() or 1
    return max(1, min(available, 8))


def column_ranges(d: int, parts: int) -> list[tuple[int, int]]:
    """Split ``range(d)`` into at most ``parts`` contiguous, aligned, non-empty ranges."""
    if parts <= 1 or d < MIN_PARALLEL_COLUMNS:
        return [(0, d)]
    size = -(-d // parts)
    size = -(-size // _ALIGN) * _ALIGN
    return [(start, min(start + size, d)) for start in range(0, d, size)]


def _executor(workers: int) -> ThreadPoolExecutor:
    with _pool_lock:
        if not _pool or _pool[0]._max_workers < workers:
            if _pool:
                _pool.pop().shutdown(wait=False)
            _pool.append(
                ThreadPoolExecutor(max_workers=workers, thread_name_prefix="byzedge-aggregate")
            )
        return _pool[0]


def map_column_ranges(d: int, kernel: Callable[[int, int], _T]) -> list[_T]:
    """Return ``[kernel(start, stop) for each range]`` over :func:`column_ranges` of ``d``.

    The first range runs on the calling thread, the others on the pool; results come
    back in range order, and an exception in any range propagates.
    """
    ranges = column_ranges(d, worker_count())
    if len(ranges) == 1:
        return [kernel(*ranges[0])]
    executor = _executor(len(ranges) - 1)
    futures = [executor.submit(kernel, start, stop) for start, stop in ranges[1:]]
    first = kernel(*ranges[0])
    return [first, *(future.result() for future in futures)]
