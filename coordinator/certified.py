r"""Certified per-round bounds on how far the Byzantine rows moved the aggregate.

With ``certified_robustness = true`` every round states a number ``B`` such that

.. math:: \|\mathrm{Agg}(x_1, \dots, x_n) - \bar{x}_H\| \le B

for **every** set ``H`` of at least ``n - f`` rows that could be the honest ones, where
``f = floor(max_byzantine_fraction * n)`` and ``x_H`` is the unweighted mean of those
rows as the rule received them. The server does not know ``H`` nor the honest variance,
so each candidate below is an *a posteriori* bound: computed from this round's rows, for
the worst choice of which ``f`` (or fewer) rows are Byzantine. The round's figure is the
smallest finite candidate, and the certificate names it (``basis``).

Candidates
----------
``kappa`` (the rule's robustness coefficient)
    Allouah, Farhadkhani, Guerraoui, Gupta, Pinot, Stephan, "Fixing by Mixing: A Recipe
    for Optimal Byzantine ML under Heterogeneity", AISTATS 2023 (arXiv 2302.01772),
    Definition 2: a rule is ``(c, κ)``-robust when for every input and every ``S`` of
    ``n - c`` rows ``||Agg - x_S||^2 <= κ / |S| * sum_{i in S} ||x_i - x_S||^2``.
    Table 1's coefficients, for a rule tuned to tolerate ``c`` rows (``n > 2c``)::

        trimmed-mean (b = c trimmed)   κ = 6c/(n-2c) * (1 + c/(n-2c))
        coordinate-median              κ = 4 (1 + c/(n-2c))^2
        krum                           κ = 6 (1 + c/(n-2c))
        nnm + inner rule F             κ = 8c/(n-c) * (κ_F + 1)        (their Lemma 1)
        mean                           κ = 0 when c = 0, none for c >= 1

    Widening (derived here): a ``(c, κ_c)``-robust rule is ``(b, κ_b)``-robust for every
    ``b <= c`` with ``κ_b = (sqrt(κ_c (n-b)/(n-c)) + sqrt((c-b)/(n-c)))^2`` (take
    ``S' ⊂ S`` of ``n - c`` rows; ``||x_S' - x_S||^2 <= (c-b)/(n-c) Var_S`` and
    ``Var_S' <= (n-b)/(n-c) Var_S``). This covers a rule tuned for more Byzantines than
    configured, and "at most ``f``": the bound is the largest over ``f' = 0..f`` of
    ``sqrt(κ_f' V(n - f'))``, where ``V(k)``, the mean of the ``k`` largest
    ``||x_i - m||^2`` for a centre ``m`` (the aggregate or the coordinate-wise median),
    bounds the variance of every set of ``k`` or more rows (the variance is smallest
    about the set's own mean). Reputation weights void Definition 2 (it is about the
    unweighted rule), so a weighted round has no ``kappa`` candidate, except for Krum,
    which ignores the weights.

``clipping`` (norm-clipping, centered-clipping with one step, clipping-vr "global")
    These rules output ``Agg = c + (1/n) sum_i clip_τ(x_i - c)`` with a centre ``c``
    known before the round (0, the previous centre, the previous reference). With
    ``z_i = x_i - c``, ``e_i = max(0, ||z_i|| - τ)`` and ``h = |H|``, exactly
    ``Agg - x_H = (1/n) sum_{B} clip(z_j) + (1/n) sum_H (clip(z_i) - z_i) - ((n-h)/n) z_H``,
    so ``||Agg - x_H|| <= (n-h)/n (τ + A) + (1/n) sum_H e_i`` with ``A`` the mean of the
    ``n - f`` largest ``||z_i||``: each Byzantine row moves the aggregate by at most
    ``τ/n`` (Karimireddy, He, Jaggi, ICML 2021, arXiv 2012.10333, the argument behind
    their Theorem 3); maximised over ``h = n-f..n``. When no honest row is clipped this
    is ``(f/n)(τ + A) <= 2 f τ / n`` for honest rows within ``τ`` of the centre.
    Unweighted rounds only (weights change the ``1/n`` shares).

``box`` (any rule, weighted or not)
    Per coordinate, the mean of any ``k >= n - f`` of the ``n`` values lies between the
    mean of the ``n - f`` smallest and the mean of the ``n - f`` largest, so
    ``||Agg - x_H|| <= || max(|Agg - lo|, |hi - Agg|) ||``.

``distance`` (any rule)
    ``||Agg - x_H|| <= (1/h) sum_H ||x_i - Agg||`` (triangle inequality), at most the
    mean of the ``n - f`` largest distances to the aggregate.

What the bound does not certify: rounds with more than ``f`` Byzantine rows; anything
before the rows reached the rule (compression error, a forged sensor); the training
trajectory, accuracy, or the sum over rounds; and rules without a published per-round
coefficient (multi-krum, bulyan, geometric-median, whose exact coefficient does not
cover our smoothed Weiszfeld iterate, bucketing, whose guarantee holds in expectation
only, arc) get the rule-agnostic ``box`` and ``distance`` candidates only. ``f >= n/2``
has no finite bound. The figures are computed in float64 from the float32 rows; a
float32 rounding allowance (``1e-5`` of the largest row norm) is added.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from byzedge.coordinator.aggregation.base import Aggregator, num_byzantine
from byzedge.coordinator.aggregation.centered_clipping import CenteredClipping
from byzedge.coordinator.aggregation.clipping_vr import ClippingVR
from byzedge.coordinator.aggregation.coordinate_median import CoordinateMedian
from byzedge.coordinator.aggregation.krum import Krum
from byzedge.coordinator.aggregation.mean import Mean
from byzedge.coordinator.aggregation.nnm import NearestNeighbourMixing
from byzedge.coordinator.aggregation.norm_clipping import NormClipping
from byzedge.coordinator.aggregation.trimmed_mean import TrimmedMean

__all__ = [
    "ASSUMPTIONS",
    "Certificate",
    "Coefficient",
    "certify",
    "coefficient",
    "pre_round_centre",
    "widen",
]

ASSUMPTIONS: Final[tuple[str, ...]] = (
    "at most f = floor(max_byzantine_fraction * n) of the round's n aggregated rows are Byzantine",
    "the honest reference is the unweighted mean of the honest rows as the rule received "
    "them (decoded updates, before reputation weighting)",
    "a posteriori: computed from this round's rows for the worst choice of which rows are "
    "Byzantine; the honest variance is not assumed known",
    "a fallback round is certified with the fallback rule that aggregated it",
)
"""What every certificate assumes (its ``assumptions`` start with these)."""

_SOURCES: Final[dict[str, str]] = {
    "kappa": (
        "Allouah et al., Fixing by Mixing, AISTATS 2023 (arXiv 2302.01772), Def. 2 and "
        "Table 1; widening to b <= c and the variance bound derived in "
        "byzedge.coordinator.certified"
    ),
    "clipping": (
        "Karimireddy, He, Jaggi, Learning from History for Byzantine Robust Optimization, "
        "ICML 2021 (arXiv 2012.10333): a Byzantine row moves a clipped mean by at most "
        "tau/n; exact decomposition in byzedge.coordinator.certified"
    ),
    "box": "coordinate-wise order statistics, no rule property (byzedge.coordinator.certified)",
    "distance": "triangle inequality about the aggregate, no rule property "
    "(byzedge.coordinator.certified)",
}

_ROUNDING: Final = 1e-5  # float32 rounding allowance, relative to the largest row norm
_BLOCK: Final = 4096  # columns stacked at a time (rows may arrive unstacked)


@dataclass(frozen=True, slots=True)
class Coefficient:
    """A rule's published robustness: ``(c, κ)``-robust for ``n`` rows.

    Attributes
    ----------
    tolerance:
        ``c``: the rows the rule is tuned to tolerate this round.
    kappa:
        ``κ`` of Definition 2 at ``c``.
    formula:
        The coefficient's formula, for the certificate.
    """

    tolerance: int
    kappa: float
    formula: str


@dataclass(frozen=True, slots=True)
class Certificate:
    """One round's certified bound and what it rests on.

    Attributes
    ----------
    rule:
        The rule that aggregated the round (the fallback's name in a fallback round).
    n, f:
        Rows aggregated; Byzantine rows assumed at most.
    bound:
        The smallest finite candidate, or ``None`` (no finite bound; see ``reason``).
    basis:
        Which candidate gave ``bound``: ``kappa``, ``clipping``, ``box`` or ``distance``.
    kappa:
        The largest effective coefficient the ``kappa`` candidate used (``κ_0``, the
        widening to no Byzantine row), or ``None`` when the rule has none this round.
    candidates:
        Every finite candidate by name.
    weighted:
        Whether reputation weights (not all equal) reached the rule.
    assumptions:
        :data:`ASSUMPTIONS` plus the chosen candidate's own.
    source:
        The chosen candidate's source.
    reason:
        Why the rule-specific candidate (``kappa`` or ``clipping``) is absent, if it is.
    """

    rule: str
    n: int
    f: int
    bound: float | None
    basis: str | None
    kappa: float | None
    candidates: dict[str, float] = field(default_factory=dict)
    weighted: bool = False
    assumptions: tuple[str, ...] = ASSUMPTIONS
    source: str = ""
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly document (what summaries, rounds.jsonl and the audit carry)."""
        return {
            "rule": self.rule,
            "n": self.n,
            "f": self.f,
            "bound": self.bound,
            "basis": self.basis,
            "kappa": self.kappa,
            "candidates": dict(self.candidates),
            "weighted": self.weighted,
            "assumptions": list(self.assumptions),
            "source": self.source,
            "reason": self.reason,
        }


# -- coefficients -----------------------------------------------------------------------


def widen(kappa: float, tolerance: int, b: int, n: int) -> float:
    """Return ``κ_b`` of a ``(c, κ)``-robust rule for ``b <= c`` Byzantine rows.

    ``κ_b = (sqrt(κ (n-b)/(n-c)) + sqrt((c-b)/(n-c)))^2`` (module docstring); ``κ`` at
    ``b = c``.
    """
    c = tolerance
    if not 0 <= b <= c < n:
        raise ValueError(f"widen needs 0 <= b <= c < n, got b={b}, c={c}, n={n}")
    return (math.sqrt(kappa * (n - b) / (n - c)) + math.sqrt((c - b) / (n - c))) ** 2


def coefficient(rule: Aggregator, n: int, f: int) -> Coefficient | str:
    """Return ``rule``'s published ``(c, κ)`` for ``n`` rows, or why there is none.

    ``f`` is the configured count; rules without a tolerance parameter of their own
    (coordinate-median) are taken at ``c = f``. A rule tuned for fewer rows than ``f``
    (``c < f``) has no coefficient for this round.
    """
    if isinstance(rule, Mean):
        if f == 0:
            return Coefficient(0, 0.0, "mean: kappa = 0 with no Byzantine row")
        return "mean has no finite robustness coefficient for f >= 1"
    if isinstance(rule, CoordinateMedian):
        c = f
        if n <= 2 * c:
            return f"coordinate-median needs n > 2f, got n={n}, f={c}"
        return Coefficient(c, 4 * (1 + c / (n - 2 * c)) ** 2, "4 (1 + c/(n-2c))^2")
    if isinstance(rule, TrimmedMean):
        c = rule.num_trimmed(n)
        if n <= 2 * c:
            return f"trimmed-mean needs n > 2b, got n={n}, b={c}"
        ratio = c / (n - 2 * c)
        return Coefficient(c, 6 * ratio * (1 + ratio), "6c/(n-2c) (1 + c/(n-2c))")
    if isinstance(rule, Krum):
        c = num_byzantine(n, rule.max_byzantine_fraction)
        if n < 2 * c + 3:
            return f"krum needs n >= 2c + 3, got n={n}, c={c}"
        return Coefficient(c, 6 * (1 + c / (n - 2 * c)), "6 (1 + c/(n-2c))")
    if isinstance(rule, NearestNeighbourMixing):
        fraction = rule.max_byzantine_fraction
        c = num_byzantine(n, fraction)
        inner = coefficient(rule.inner.rule(fraction), n, c)
        if isinstance(inner, str):
            return f"nnm: inner rule: {inner}"
        if inner.tolerance < c:
            return f"nnm: inner rule tolerates {inner.tolerance} < c={c} rows"
        kappa_inner = widen(inner.kappa, inner.tolerance, c, n)
        kappa = 0.0 if c == 0 else 8 * c / (n - c) * (kappa_inner + 1)
        return Coefficient(c, kappa, f"8c/(n-c) (kappa_inner + 1), inner {inner.formula}")
    return f"{getattr(rule, 'name', type(rule).__name__)}: no published per-round coefficient"


def pre_round_centre(rule: Aggregator) -> NDArray[np.float32] | None:
    """The centre a clipping rule will clip about this round, read before it aggregates.

    ``None`` for rules without a clipping candidate (the ``clipping`` bound needs the
    centre the rule held before the round: it moves the centre as it aggregates).
    NormClipping clips about 0 (an empty array stands for it).
    """
    if isinstance(rule, NormClipping):
        return np.zeros(0, dtype=np.float32)
    if isinstance(rule, ClippingVR) and rule.reference_mode == "global":
        centre = rule.reference
        return np.zeros(0, dtype=np.float32) if centre is None else centre
    if isinstance(rule, CenteredClipping) and rule.iterations == 1:
        centre = rule.centre
        return np.zeros(0, dtype=np.float32) if centre is None else centre
    return None


# -- the candidates ---------------------------------------------------------------------


def _blocks(rows: Sequence[NDArray[np.float32]] | NDArray[np.float32], d: int) -> Any:
    """Yield ``(start, stop, float64 (n, stop - start))`` column blocks of the rows."""
    for start in range(0, d, _BLOCK):
        stop = min(d, start + _BLOCK)
        yield start, stop, np.stack([np.asarray(r[start:stop], np.float64) for r in rows])


def _top_mean(values: NDArray[np.float64], k: int) -> float:
    """Mean of the ``k`` largest entries."""
    return float(np.sort(values)[len(values) - k :].mean())


def _clipping_bound(squared: NDArray[np.float64], tau: float, n: int, f: int) -> float:
    """``max_{h=n-f..n} (n-h)/n (tau + A) + (1/n) sum of the h largest e_i``."""
    distances = np.sqrt(squared)  # (n,) ||x_i - c||
    spread = _top_mean(distances, n - f)  # A
    excess = np.sort(np.maximum(distances - tau, 0.0))[::-1]  # (n,) largest first
    running = np.concatenate([[0.0], np.cumsum(excess)])  # running[h]: sum of h largest
    return max((n - h) / n * (tau + spread) + float(running[h]) / n for h in range(n - f, n + 1))


@dataclass(slots=True)
class _Sweep:
    """What one pass over the rows' column blocks gives (float64, per row unless noted).

    Attributes
    ----------
    box:
        The ``box`` candidate, squared (a scalar).
    to_aggregate, to_median, to_centre:
        ``||x_i - Agg||^2``, ``||x_i - med||^2`` (coordinate-wise median), ``||x_i - c||^2``.
    largest_norm:
        ``max_i ||x_i||`` (for the rounding allowance).
    """

    box: float
    to_aggregate: NDArray[np.float64]
    to_median: NDArray[np.float64]
    to_centre: NDArray[np.float64]
    largest_norm: float


def _sweep(
    rows: Sequence[NDArray[np.float32]] | NDArray[np.float32],
    aggregate: NDArray[np.float64],
    f: int,
    centre: NDArray[np.float32] | None,
) -> _Sweep:
    """Column block by column block, so rows that arrive unstacked are never stacked whole."""
    n, d = len(rows), len(aggregate)
    box = 0.0
    to_aggregate, norms, to_centre = np.zeros(n), np.zeros(n), np.zeros(n)
    medians = np.empty(d)
    for start, stop, block in _blocks(rows, d):
        ordered = np.sort(block, axis=0)  # (n, b)
        lo = ordered[: n - f].mean(axis=0)  # mean of the n - f smallest
        hi = ordered[f:].mean(axis=0)  # mean of the n - f largest
        piece = aggregate[start:stop]
        box += float(np.sum(np.maximum(np.abs(piece - lo), np.abs(hi - piece)) ** 2))
        to_aggregate += np.sum((block - piece) ** 2, axis=1)
        norms += np.sum(block**2, axis=1)
        medians[start:stop] = np.median(block, axis=0)
        if centre is not None:  # an empty centre stands for 0
            ref = centre[start:stop].astype(np.float64) if len(centre) else 0.0
            to_centre += np.sum((block - ref) ** 2, axis=1)
    to_median = np.zeros(n)
    for start, stop, block in _blocks(rows, d):
        to_median += np.sum((block - medians[start:stop]) ** 2, axis=1)
    return _Sweep(box, to_aggregate, to_median, to_centre, math.sqrt(float(norms.max())))


def _kappa_candidate(found: Coefficient, sweep: _Sweep, n: int, f: int) -> float:
    """``max_{f'=0..f} sqrt(κ_f' V(n - f'))`` with ``V`` about the better of two centres."""
    worst = 0.0
    for byzantine in range(f + 1):
        k = n - byzantine
        kappa = widen(found.kappa, found.tolerance, byzantine, n)
        variance = min(_top_mean(sweep.to_aggregate, k), _top_mean(sweep.to_median, k))
        worst = max(worst, math.sqrt(kappa * variance))
    return worst


def certify(
    rule: Aggregator,
    rule_name: str,
    rows: Sequence[NDArray[np.float32]] | NDArray[np.float32],
    aggregate: NDArray[np.float32],
    *,
    f: int,
    weights: NDArray[np.float64] | None = None,
    centre: NDArray[np.float32] | None = None,
    clip_threshold: float | None = None,
) -> Certificate:
    """Return the certified bound of one aggregated round.

    Parameters
    ----------
    rule, rule_name:
        The rule that aggregated the round and its registry name.
    rows:
        The ``n`` float32 ``(d,)`` rows the rule received (a list or an ``(n, d)`` matrix).
    aggregate:
        float32 ``(d,)``: the rule's output.
    f:
        Byzantine rows assumed at most (``floor(max_byzantine_fraction * n)``).
    weights:
        The ``(n,)`` reputation weights the rule received, or ``None``.
    centre:
        :func:`pre_round_centre` of the rule, read before it aggregated (enables the
        ``clipping`` candidate), or ``None``.
    clip_threshold:
        The radius the rule reported (``AggregationDiagnostics.clip_threshold``); a
        clipping rule that does not report it has it recomputed as the rule does.
    """
    n = len(rows)
    if n == 0 or 2 * f >= n:
        why = f"f={f} >= n/2 with n={n}: the honest rows need not be a majority"
        return Certificate(rule_name, n, f, None, None, None, reason=why)
    agg = np.asarray(aggregate, dtype=np.float64)
    # Equal weights are the unweighted rule (the first rounds, before reputations differ).
    weighted = weights is not None and not np.allclose(weights, weights[0], rtol=1e-12, atol=0)
    # Honest sets have n - f to n rows; every candidate covers all of them.
    sweep = _sweep(rows, agg, f, centre)
    candidates = {
        "box": math.sqrt(sweep.box),
        "distance": _top_mean(np.sqrt(sweep.to_aggregate), n - f),
    }
    own: dict[str, str] = {}  # a rule-specific candidate's own assumption
    reason: str | None = None
    kappa_used: float | None = None
    found = coefficient(rule, n, f)
    if isinstance(found, str):
        reason = found
    elif found.tolerance < f:
        reason = f"{rule_name} is tuned for c={found.tolerance} < f={f} Byzantine rows"
    elif weighted and not isinstance(rule, Krum):  # Krum ignores the weights
        reason = "reputation weights: the (f, kappa) definition is for the unweighted rule"
    else:
        candidates["kappa"] = _kappa_candidate(found, sweep, n, f)
        kappa_used = widen(found.kappa, found.tolerance, 0, n)
        own["kappa"] = f"{rule_name} is (c, kappa)-robust with c={found.tolerance}, "
        own["kappa"] += f"kappa = {found.formula}"
    if centre is not None and weighted:
        reason = "reputation weights: the clipping bound is for the unweighted clipped mean"
    elif centre is not None:
        tau = clip_threshold
        if tau is None:
            tau = _own_radius(rule, np.sqrt(sweep.to_centre))
        candidates["clipping"] = _clipping_bound(sweep.to_centre, tau, n, f)
        own["clipping"] = (
            f"the rule's output is c + (1/n) sum_i clip_tau(x_i - c), tau = {tau:.6g}, "
            "about the centre c it held before the round"
        )
    slack = _ROUNDING * (sweep.largest_norm + float(np.linalg.norm(agg)))
    candidates = {name: value + slack for name, value in candidates.items()}
    basis = min(candidates, key=lambda name: candidates[name])
    extra = (own[basis],) if basis in own else ()
    return Certificate(
        rule=rule_name,
        n=n,
        f=f,
        bound=candidates[basis],
        basis=basis,
        kappa=kappa_used,
        candidates=candidates,
        weighted=bool(weighted),
        assumptions=ASSUMPTIONS + extra,
        source=_SOURCES[basis],
        reason=reason,
    )


def _own_radius(rule: Aggregator, distances: NDArray[np.float64]) -> float:
    """The radius a clipping rule that does not report it used: its fixed one or the median."""
    fixed: float | None = None
    if isinstance(rule, NormClipping):
        fixed = rule.clip_norm
    elif isinstance(rule, CenteredClipping):
        fixed = rule.clip_threshold
    if fixed is not None:
        return float(fixed)
    return float(np.median(distances))
