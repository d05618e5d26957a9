"""Issue 8 (item 5): is the anomaly scorer calibrated, and does it still catch attackers?

Usage::

    python benchmarks/reputation.py [--rounds 200] [--attack-rounds 100] [--sizes 5,20,100]
                                    [--partitions iid,dirichlet] [--seeds 0,1,2]
                                    [--out benchmarks/results/reputation.md]

Runs fleets in the in-memory simulator (``fleet_sim/simulator.py``: real training, update
pipeline, ingest and ``server_step`` with one ``AnomalyDetector`` and one
``ReputationBook`` for the whole run), every device in every round, default defense
(clipping-vr) and reputation weighting on:

* clean fleets of 5, 20 and 100 devices, IID and Dirichlet(0.5), ``--rounds`` rounds:
  the share of honest updates flagged, the worst honest device's share of flagged rounds,
  and the lowest reputation any honest device had after any round;
* the same fleets with 20% compromised devices (``byzantine_fraction = 0.2``) running
  ``sign-flip`` (factor 4, the catalogue default), ``gaussian-noise`` (scale 1000, the
  default), ``scaled-update`` (model replacement, ``num_participants = n``: boost n) and
  ``backdoor`` (``boost = n``, the model-replacement boost), ``--attack-rounds`` rounds:
  flag recall and precision over every scored update (``FlagCounts``).

Writes a markdown report (the tables, targets and whether each is met, seeds, the command,
the machine and the wall time) and a PNG beside it.
"""

from __future__ import annotations

import argparse
import platform
import shlex
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from byzedge.coordinator.anomaly import AnomalyDetector, AnomalyScores
from byzedge.fleet_sim.scenario import Scenario
from byzedge.fleet_sim.simulator import FlagCounts, RoundRecord, Simulator
from byzedge.models.datasets import DigitsSplit, load_digits_split

OUT = Path("benchmarks/results/reputation.md")
ATTACKS = ("sign-flip", "gaussian-noise", "scaled-update", "backdoor")
FRACTION = 0.2
TARGET_FLAG_RATE = 0.01
TARGET_WORST_SHARE = 0.05
TARGET_MIN_REPUTATION = 0.5
TARGET_RECALL = 0.9


def attack_params(attack: str, devices: int) -> dict[str, Any]:
    """The attack's parameters for a fleet of ``devices`` (everyone sampled each round)."""
    if attack == "scaled-update":
        return {"num_participants": devices}  # boost n / eta = n: model replacement
    if attack == "backdoor":
        return {"boost": float(devices)}
    return {}  # sign-flip factor 4, gaussian-noise scale 1000: the catalogue defaults


class RecordingDetector(AnomalyDetector):
    """The real detector, remembering the reasons of the flags it raised."""

    def __init__(self, threshold: float = 3.0) -> None:
        super().__init__(threshold)
        self.reasons: Counter[str] = Counter()
        self.honest_reasons: Counter[str] = Counter()
        self.compromised: frozenset[str] = frozenset()

    def score(
        self, device_ids: Sequence[str], updates: ArrayLike, *, threshold: float | None = None
    ) -> AnomalyScores | None:
        scores = super().score(device_ids, updates, threshold=threshold)
        if scores is not None:
            for flag in scores.flags:
                target = self.reasons if flag.device_id in self.compromised else self.honest_reasons
                target[flag.reason] += 1
        return scores


@dataclass
class Run:
    """One simulated fleet's measurements."""

    devices: int
    partition: str
    attack: str | None
    rounds: int
    seed: int
    honest_scored: int = 0
    honest_flags: int = 0
    worst_share: float = 0.0
    worst_device: str = ""
    min_reputation: float = 1.0
    min_reputation_device: str = ""
    min_reputation_round: int = 0
    flags: FlagCounts = field(default_factory=FlagCounts)
    reasons: Counter[str] = field(default_factory=Counter)
    honest_reasons: Counter[str] = field(default_factory=Counter)
    accuracy: float | None = None
    never_flagged: int = 0
    seconds: float = 0.0

    @property
    def flag_rate(self) -> float:
        """Share of honest updates flagged."""
        return self.honest_flags / self.honest_scored if self.honest_scored else 0.0


def run_fleet(
    devices: int, partition: str, attack: str | None, *, rounds: int, seed: int, split: DigitsSplit
) -> Run:
    """Simulate one fleet and measure its flags and reputations."""
    scenario = Scenario.model_validate(
        {
            "name": f"reputation-{devices}-{partition}-{attack or 'clean'}",
            "devices": devices,
            "rounds": rounds,
            "partition": partition,
            "alpha": 0.5,
            "attack": attack,
            "attack_params": attack_params(attack, devices) if attack else {},
            "byzantine_fraction": FRACTION if attack else 0.0,
            "eval_every": rounds,
            "seed": seed,
        }
    )
    started = time.monotonic()
    simulator = Simulator(scenario, split)
    detector = RecordingDetector(scenario.anomaly_threshold)
    detector.compromised = simulator.compromised
    simulator.detector = detector
    honest = [d for d in simulator.ids if d not in simulator.compromised]
    flagged_rounds: Counter[str] = Counter()
    scored_rounds: Counter[str] = Counter()
    run = Run(devices, partition, attack, rounds, seed)

    def on_round(record: RoundRecord) -> None:
        if record.accepted >= 3 and scenario.anomaly_detection:
            for device in honest:
                scored_rounds[device] += 1
        for device in record.flagged:
            flagged_rounds[device] += 1
        reputations = simulator.reputation.snapshot()
        for device in honest:
            value = reputations.get(device, 1.0)
            if value < run.min_reputation:
                run.min_reputation = value
                run.min_reputation_device = device
                run.min_reputation_round = record.round

    result = simulator.run(on_round)
    run.seconds = time.monotonic() - started
    run.flags = result.flags
    run.accuracy = result.final_accuracy
    run.reasons = detector.reasons
    run.honest_reasons = detector.honest_reasons
    run.honest_scored = sum(scored_rounds.values())
    run.honest_flags = sum(flagged_rounds[d] for d in honest)
    run.never_flagged = sum(1 for d in simulator.compromised if flagged_rounds[d] == 0)
    shares = {d: flagged_rounds[d] / scored_rounds[d] for d in honest if scored_rounds[d]}
    if shares:
        run.worst_device = max(shares, key=lambda d: (shares[d], d))
        run.worst_share = shares[run.worst_device]
    return run


def _status(ok: bool, figure: str, target: str) -> str:
    return "met" if ok else f"**NOT met** ({figure} vs target {target})"


def _pct(value: float) -> str:
    return f"{100 * value:.2f}%"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _machine() -> list[str]:
    lines = [
        f"- platform: {platform.platform()}",
        f"- python: {platform.python_version()}, numpy {np.__version__}",
    ]
    try:
        nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout
        lines.append(f"- `nproc`: {nproc.strip()}")
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        wanted = (
            "Architecture",
            "CPU(s)",
            "Model name",
            "Thread(s) per core",
            "Core(s) per socket",
        )
        for line in lscpu.splitlines():
            key = line.split(":", 1)[0].strip()
            if key in wanted:
                lines.append(f"- `lscpu` {key}: {line.split(':', 1)[1].strip()}")
    except (OSError, subprocess.CalledProcessError):
        lines.append("- (nproc/lscpu unavailable)")
    return lines


def _fleets(runs: Sequence[Run]) -> list[tuple[int, str]]:
    return list(dict.fromkeys((r.devices, r.partition) for r in runs))


def _clean_table(clean: Sequence[Run]) -> tuple[list[str], bool]:
    lines = [
        "| devices | partition | seed | honest flags | flag rate | worst device (share) |"
        " lowest reputation (device, round) | final accuracy | seconds | targets |",
        "| ---: | --- | ---: | ---: | ---: | --- | --- | ---: | ---: | --- |",
    ]
    all_met = True
    for run in clean:
        checks = [
            _status(run.flag_rate < TARGET_FLAG_RATE, _pct(run.flag_rate), "< 1%"),
            _status(run.worst_share <= TARGET_WORST_SHARE, _pct(run.worst_share), "<= 5%"),
            _status(
                run.min_reputation >= TARGET_MIN_REPUTATION, f"{run.min_reputation:.3f}", ">= 0.5"
            ),
        ]
        missed = [c for c in checks if c != "met"]
        all_met = all_met and not missed
        worst = f"{run.worst_device or '-'} ({_pct(run.worst_share)})" if run.worst_share else "-"
        lowest = (
            f"{run.min_reputation:.3f} ({run.min_reputation_device}, round "
            f"{run.min_reputation_round})"
            if run.min_reputation_device
            else "1.000"
        )
        accuracy = "-" if run.accuracy is None else f"{run.accuracy:.3f}"
        lines.append(
            f"| {run.devices} | {run.partition} | {run.seed} | "
            f"{run.honest_flags} / {run.honest_scored} | {_pct(run.flag_rate)} | {worst} | "
            f"{lowest} | {accuracy} | {run.seconds:.0f} | "
            f"{'all met' if not missed else '; '.join(missed)} |"
        )
    return lines, all_met


def _attack_table(attacked: Sequence[Run]) -> tuple[list[str], bool]:
    lines = [
        "| devices | partition | attack | compromised | recall (all seeds) | recall per seed |"
        " never flagged (per seed) | precision | honest flag rate | lowest honest reputation |"
        " final accuracy (mean) | flag reasons (compromised) | target (every seed) |",
        "| ---: | --- | --- | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    all_met = True
    for devices, partition in _fleets(attacked):
        for attack in ATTACKS:
            runs = [
                r
                for r in attacked
                if (r.devices, r.partition, r.attack) == (devices, partition, attack)
            ]
            if not runs:
                continue
            counts = sum((r.flags for r in runs), FlagCounts())
            recalls = [r.flags.recall for r in runs]
            lowest = min((x for x in recalls if x is not None), default=None)
            ok = lowest is not None and lowest >= TARGET_RECALL
            all_met = all_met and ok
            per_seed = " / ".join(f"s{r.seed} {_ratio(r.flags.recall)}" for r in runs)
            reasons = sum((r.reasons for r in runs), Counter())
            honest_flags = sum(r.honest_flags for r in runs)
            honest_scored = sum(r.honest_scored for r in runs)
            rate = honest_flags / honest_scored if honest_scored else 0.0
            never = " / ".join(str(r.never_flagged) for r in runs)
            accuracies = [r.accuracy for r in runs if r.accuracy is not None]
            accuracy = f"{np.mean(accuracies):.3f}" if accuracies else "-"
            lines.append(
                f"| {devices} | {partition} | {attack} | {int(FRACTION * devices)} | "
                f"{_ratio(counts.recall)} | {per_seed} | {never} | {_ratio(counts.precision)} | "
                f"{_pct(rate)} | {min(r.min_reputation for r in runs):.3f} | {accuracy} | "
                f"{', '.join(f'`{k}` {v}' for k, v in reasons.most_common()) or '-'} | "
                f"{_status(ok, _ratio(lowest), '>= 0.9')} |"
            )
    return lines, all_met


def _misses(attacked: Sequence[Run]) -> list[str]:
    """What the recall misses are made of (empty when there are none)."""
    missed = [r for r in attacked if r.flags.recall is not None and r.flags.recall < TARGET_RECALL]
    if not missed:
        return []
    runs = ", ".join(
        f"{r.devices} {r.partition} {r.attack} seed {r.seed}: recall {_ratio(r.flags.recall)},"
        f" {r.never_flagged} of {int(FRACTION * r.devices)} compromised devices never flagged"
        for r in missed
    )
    return [
        "Where recall misses the target: " + runs + ". A compromised device that is never"
        " flagged was only moderately far from the fleet in its first rounds (a sign-flipped"
        " update of a device with a small or skewed shard, in a fleet that is itself"
        " heterogeneous): no single round crossed the single-round limit (4.54 robust SD at"
        " threshold 3), so its baseline learned its offset as it learns any non-IID"
        " device's, and it looks like one from then on. Treating a new device's persistent"
        " moderate offset as evidence would catch it, but flags honest non-IID devices round"
        " after round (tried while designing, replayed on recorded clean runs: the"
        " most-flagged honest device of Dirichlet fleets reached 99% of rounds); see"
        " `coordinator/anomaly.py`, 'What it catches, and what it cannot'. The robust"
        " aggregator still bounds these devices'"
        " influence (final accuracy column).",
        "",
    ]


def report(
    clean: list[Run],
    attacked: list[Run],
    args: argparse.Namespace,
    *,
    command: str,
    wall: float,
    png: Path | None,
) -> str:
    """The markdown report."""
    clean_lines, clean_ok = _clean_table(clean)
    attack_lines, attacks_ok = _attack_table(attacked)
    honest_reasons = sum((run.honest_reasons for run in clean), Counter())
    lines = [
        "# Anomaly scoring and reputation: calibration and recall",
        "",
        "Issue 8, item 5. Every fleet runs in the in-memory simulator (`fleet_sim/simulator.py`:"
        " real local training, update pipeline, ingest and `server_step` with one"
        " `AnomalyDetector` and one `ReputationBook` kept for the whole run; defaults: "
        "`clipping-vr`, reputation weighting on, `anomaly_threshold` 3.0, `reputation_decay` "
        "0.95, digits MLP, 2 local epochs, learning rate 0.3, batch 8, every device in every "
        "round). The detector is `coordinator/anomaly.py` (its module docstring gives the "
        "formulas and sources).",
        "",
        f"Seeds: scenario seeds {args.seeds} (each seeds the partition, initial model, training,"
        " the choice of the compromised devices and the attack randomness; one seed gives the"
        " same compromised set for every attack of a fleet).",
        "",
        f"Command: `{command}`",
        "",
        f"Wall time: {wall / 60:.1f} min for everything ({len(clean)} clean runs of "
        f"{args.rounds} rounds, {len(attacked)} attacked runs of {args.attack_rounds} rounds),"
        " one process.",
        "",
        "Machine:",
        "",
        *_machine(),
        "",
        "Before this redesign (per-round median/MAD z of norm and distance to the coordinate"
        " median, flag when > 3; numbers from the issue): a clean, evenly split 5-device fleet"
        " flagged dev-002 in 305 of 402 rounds and its reputation reached 0.0; 5 honest"
        " devices, 200 rounds: 348 flags in 1,000 device-rounds; 20 honest IID devices,"
        " 100 rounds: 258 flags in 2,000, one device in 82 of 100 rounds.",
        "",
        "## Clean fleets",
        "",
        f"Targets, per run: honest flag rate < {_pct(TARGET_FLAG_RATE)}; no honest device"
        f" flagged in more than {_pct(TARGET_WORST_SHARE)} of rounds; lowest honest reputation"
        f" ever (minimum over all devices and all rounds) >= {TARGET_MIN_REPUTATION}.",
        "",
        *clean_lines,
        "",
        "Reasons of the honest flags above: "
        + (", ".join(f"`{k}` {v}" for k, v in honest_reasons.most_common()) or "none")
        + ".",
        "",
        "## Attacked fleets (20% compromised)",
        "",
        f"Target: flag recall >= {TARGET_RECALL} for every attack, checked on every seed's run"
        " (precision reported). Recall = flagged compromised updates / scored compromised"
        " updates; precision = flagged compromised / all flagged; both over every round of"
        " the run (the 'all seeds' columns pool the seeds' counts). Attack parameters:"
        " `sign-flip` factor 4 and `gaussian-noise` scale 1000 (catalogue defaults),"
        " `scaled-update` `num_participants = n` and `backdoor` `boost = n` (model"
        f" replacement: boost = fleet size), active from the first round. {args.attack_rounds}"
        " rounds per run.",
        "",
        *attack_lines,
        "",
        *_misses(attacked),
        "## Summary",
        "",
        "- Clean-fleet targets (flag rate, worst device, lowest reputation): "
        + ("all met on every seed." if clean_ok else "**not all met** (see the table)."),
        f"- Recall >= {TARGET_RECALL} at 20% compromised: "
        + (
            "met for every attack, fleet and seed."
            if attacks_ok
            else "**not met everywhere** (see the table)."
        ),
    ]
    if png is not None:
        lines += ["", f"![honest flag rate and recall per configuration]({png.name})"]
    return "\n".join(lines) + "\n"


def plot(clean: list[Run], attacked: list[Run], path: Path) -> bool:
    """Draw the honest flag rates and the recalls; return False without matplotlib."""
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return False
    fleets = _fleets(clean) or _fleets(attacked)
    labels = [f"{devices}\n{partition}" for devices, partition in fleets]
    x = np.arange(len(fleets))
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    rates, worst = [], []
    for fleet in fleets:
        runs = [r for r in clean if (r.devices, r.partition) == fleet]
        rates.append(100 * max((r.flag_rate for r in runs), default=0.0))
        worst.append(100 * max((r.worst_share for r in runs), default=0.0))
    left.bar(x - 0.2, rates, 0.4, label="honest flag rate (worst seed)")
    left.bar(x + 0.2, worst, 0.4, label="most-flagged honest device (worst seed)")
    left.axhline(100 * TARGET_FLAG_RATE, color="C0", ls="--", lw=1, label="target 1%")
    left.axhline(100 * TARGET_WORST_SHARE, color="C1", ls="--", lw=1, label="target 5%")
    left.set_xticks(x, labels)
    left.set_ylabel("% of honest updates / rounds flagged")
    left.set_title(f"clean fleets, {clean[0].rounds if clean else 0} rounds")
    left.legend(fontsize=8)
    width = 0.8 / len(ATTACKS)
    for k, attack in enumerate(ATTACKS):
        values = []
        for fleet in fleets:
            runs = [r for r in attacked if (r.devices, r.partition) == fleet and r.attack == attack]
            recalls = [r.flags.recall for r in runs if r.flags.recall is not None]
            values.append(min(recalls, default=0.0))
        right.bar(x - 0.4 + width * (k + 0.5), values, width, label=attack)
    right.axhline(TARGET_RECALL, color="k", ls="--", lw=1, label="target 0.9")
    right.set_xticks(x, labels)
    right.set_ylim(0, 1.05)
    right.set_ylabel("flag recall (worst seed)")
    right.set_title("20% compromised")
    right.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """Run the fleets and write the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200, help="rounds of the clean runs")
    parser.add_argument("--attack-rounds", type=int, default=100, help="rounds of attacked runs")
    parser.add_argument("--sizes", default="5,20,100", help="fleet sizes, comma-separated")
    parser.add_argument("--partitions", default="iid,dirichlet", help="iid and/or dirichlet")
    parser.add_argument("--attacks", default=",".join(ATTACKS), help="attacks, comma-separated")
    parser.add_argument("--seeds", default="0,1,2", help="scenario seeds, comma-separated")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    command = shlex.join(["python", "benchmarks/reputation.py", *sys.argv[1:]])
    sizes = [int(s) for s in args.sizes.split(",")]
    partitions = args.partitions.split(",")
    attacks = [a for a in args.attacks.split(",") if a]
    seeds = [int(s) for s in args.seeds.split(",")]
    started = time.monotonic()
    split = load_digits_split()
    clean: list[Run] = []
    attacked: list[Run] = []
    for devices in sizes:
        for partition in partitions:
            for seed in seeds:
                run = run_fleet(
                    devices, partition, None, rounds=args.rounds, seed=seed, split=split
                )
                clean.append(run)
                print(
                    f"clean {devices:>3} {partition:<9} seed {seed} flag rate "
                    f"{_pct(run.flag_rate)} worst {_pct(run.worst_share)} min rep "
                    f"{run.min_reputation:.3f} ({run.seconds:.0f} s)",
                    flush=True,
                )
                for attack in attacks:
                    hit = run_fleet(
                        devices,
                        partition,
                        attack,
                        rounds=args.attack_rounds,
                        seed=seed,
                        split=split,
                    )
                    attacked.append(hit)
                    print(
                        f"  {attack:<14} recall {_ratio(hit.flags.recall)} precision "
                        f"{_ratio(hit.flags.precision)} ({hit.seconds:.0f} s)",
                        flush=True,
                    )
    wall = time.monotonic() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    png = args.out.with_suffix(".png")
    drawn = plot(clean, attacked, png)
    text = report(clean, attacked, args, command=command, wall=wall, png=png if drawn else None)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}" + (f" and {png}" if drawn else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
