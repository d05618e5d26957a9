"""Sorting networks for the compiled per-coordinate kernels.

A sorting network is a fixed list of compare-exchange steps ``(a, b)``, ``a < b``, that
puts ``min`` on wire ``a`` and ``max`` on wire ``b``; after all steps the wires hold their
values in increasing order, whatever the input. Because the steps do not depend on the
data, one network sorts every column of an ``(n, width)`` block at once, each step being
two vector min/max operations across the block's columns. That is what makes a compiled
coordinate-wise median or trimmed mean run at a few times the cost of reading the data,
where a per-column sort branches on every comparison.

Networks are Batcher's odd-even merge sort (Knuth, TAOCP vol. 3, §5.3.4, Algorithm M) for
the next power of two, with the steps that touch wires ``>= n`` dropped: those wires can
be thought of as holding ``+inf``, which no step moves. :func:`selection_network` then
keeps only the steps that can affect chosen output wires (the median needs 330 of the
403 steps for ``n = 50``).

Private to :mod:`byzedge.coordinator.aggregation`.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from numpy.typing import NDArray

__all__ = ["selection_network", "sorting_network"]


def _odd_even_merge_sort_pairs(n: int) -> list[tuple[int, int]]:
    """Return Batcher's odd-even merge sort steps for ``n`` wires (``n >= 1``)."""
    size = 1
    while size < n:
        size *= 2
    pairs: list[tuple[int, int]] = []
    merge = 1
    while merge < size:
        step = merge
        while step >= 1:
            for offset in range(step % merge, size - step, 2 * step):
                for i in range(min(step, size - offset - step)):
                    low, high = i + offset, i + offset + step
                    # Only compare within the same pair of merged runs.
                    if low // (2 * merge) == high // (2 * merge) and high < n:
                        pairs.append((low, high))
            step //= 2
        merge *= 2
    return pairs


@lru_cache(maxsize=256)
def sorting_network(n: int) -> NDArray[np.int64]:
    """Return an ``(s, 2)`` int64 array of compare-exchange steps that sorts ``n`` wires."""
    if n < 1:
        raise ValueError(f"a sorting network needs n >= 1 wires, got {n}")
    steps = np.array(_odd_even_merge_sort_pairs(n), dtype=np.int64).reshape(-1, 2)
    steps.setflags(write=False)
    return steps


@lru_cache(maxsize=256)
def selection_network(n: int, outputs: tuple[int, ...]) -> NDArray[np.int64]:
    """Return the steps of :func:`sorting_network` that can affect the ``outputs`` wires.

    Walking the network backwards, a step is kept when one of its two wires is still
    needed, and then both become needed (either input can reach either output). The
    kept steps leave the ``outputs`` wires exactly as the full network does.
    """
    if any(not 0 <= wire < n for wire in outputs):
        raise ValueError(f"outputs {outputs} must lie in [0, {n})")
    needed = set(outputs)
    kept: list[tuple[int, int]] = []
    for low, high in reversed(_odd_even_merge_sort_pairs(n)):
        if low in needed or high in needed:
            kept.append((low, high))
            needed.update((low, high))
    kept.reverse()
    steps = np.array(kept, dtype=np.int64).reshape(-1, 2)
    steps.setflags(write=False)
    return steps
