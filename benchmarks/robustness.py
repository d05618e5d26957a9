"""Issue 4's robustness experiments on digits, as ``byzedge sim matrix`` commands.

Usage::

    python benchmarks/robustness.py [--print] EXP [EXP ...]     # exp1 ... exp6, radius, or all

Each experiment is one or more ``byzedge sim matrix`` commands (printed before they run;
``--print`` only prints them) writing under ``benchmarks/results/robustness/<name>/``
(``matrix.json``, ``heatmap.png``, ``report.md``), plus accuracy-per-round curves drawn
by ``benchmarks/robustness_curves.py``. ``benchmarks/results/robustness.md`` discusses them.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

OUT = Path("benchmarks/results/robustness")
ALL_DEFENSES = (
    "mean,coordinate-median,trimmed-mean,krum,multi-krum,geometric-median,bulyan,"
    "norm-clipping,centered-clipping,clipping-vr"
)
PAPER_DEFENSES = (
    "mean,coordinate-median,krum,trimmed-mean,geometric-median,centered-clipping,clipping-vr"
)
HETERO_DEFENSES = (
    "mean,coordinate-median,bucketing+coordinate-median,krum,bucketing+krum,geometric-median,"
    "bucketing+geometric-median,trimmed-mean,bucketing+trimmed-mean,centered-clipping,"
    "clipping-vr"
)

Option = str | int | bool | Mapping[str, object]


def options(**values: Option) -> list[str]:
    """``byzedge sim matrix`` arguments, in the order given.

    ``foo_bar=v`` becomes ``--foo-bar v``; ``True`` a bare flag; a mapping its JSON.
    """
    args: list[str] = []
    for name, value in values.items():
        args.append("--" + name.replace("_", "-"))
        if isinstance(value, Mapping):
            args.append(json.dumps(value))
        elif value is not True:
            args.append(str(value))
    return args


# Shared by every exp2 run, so that its variants differ only in data and schedule.
PAPER_ATTACKS: dict[str, Option] = {
    "momentum1": "0.9",
    "fractions": "0.2",
    "attacks": "sign-flip,label-flip,mimic,ipm,alie",
    "attack_params": {"sign-flip": {"factor": 1.0}},
    "defenses": PAPER_DEFENSES,
    "no_reputation": True,
    "defenses_know_fraction": True,
}

# The set-ups that the "radius" reruns share with exp2 (DSGD), exp5 and exp6.
DSGD_LABEL_SORTED: dict[str, Option] = {
    "devices": 25,
    "rounds": 200,
    "partition": "label-sorted",
    "byzantine_data": "iid",
    "seed": 0,
    "epochs": 1,
    "batch_size": 128,
    "learning_rate": "1.0",
    "eval_every": 10,
}
BACKDOOR: dict[str, Option] = {
    "devices": 25,
    "rounds": 30,
    "partition": "iid",
    "seed": 0,
    "fractions": "0.04,0.2",
    "attacks": "backdoor",
    "attack_params": {"backdoor": {"boost": 25.0}},
}
WORST_CASE: dict[str, Option] = {
    "devices": 25,
    "rounds": 20,
    "partition": "iid",
    "seed": 0,
    "fractions": "0.05,0.1,0.2,0.3",
    "attacks": "sign-flip,label-flip,gaussian-noise,alie,ipm,min-max,optimal-alie,mimic",
}
MODEL_STEP = {"clipping-vr": {"radius": "model-step"}}

# name -> list of (output folder, matrix arguments, curve plots: (png, filter args))
EXPERIMENTS: dict[str, list[tuple[str, list[str], list[tuple[str, list[str]]]]]] = {
    "exp1": [
        (
            "exp1-case-study",
            options(
                devices=100,
                rounds=20,
                partition="iid",
                seed=0,
                attacks="sign-flip,alie",
                fractions="0.05",
                defenses=ALL_DEFENSES,
                title="exp1: 100 devices, 5% compromised (system defaults)",
            ),
            [],
        )
    ],
    "exp2": [
        (
            "exp2-momentum-iid",
            options(
                devices=25,
                rounds=30,
                partition="iid",
                seed=0,
                **PAPER_ATTACKS,
                title="exp2: 25 devices, 5 Byzantine, worker momentum 0.9, IID",
            ),
            [],
        ),
        (
            "exp2-momentum-label-sorted",
            options(
                devices=25,
                rounds=30,
                partition="label-sorted",
                byzantine_data="iid",
                seed=0,
                **PAPER_ATTACKS,
                title="exp2b: label-sorted honest data, IID Byzantine data (bucketing exp 3)",
            ),
            [],
        ),
    ],
    "exp2-dsgd": [
        (
            f"exp2-dsgd-{partition}",
            options(
                devices=25,
                rounds=200,
                partition=partition,
                byzantine_data="iid",
                seed=0,
                epochs=1,
                batch_size=128,
                learning_rate="1.0",
                eval_every=10,
                **PAPER_ATTACKS,
                title=f"exp2 (DSGD: one full-batch step per round), {partition}",
            ),
            [],
        )
        for partition in ("iid", "label-sorted")
    ],
    "exp3": [
        (
            f"exp3-{partition}",
            options(
                devices=25,
                rounds=30,
                partition=partition,
                seed=0,
                attacks="none",
                fractions="0",
                defenses=HETERO_DEFENSES,
                no_reputation=True,
                title=f"exp3: no attack, {partition}, 25 devices",
            ),
            [(f"exp3-{partition}-curves.png", ["--title", f"exp3 {partition}: no attack"])],
        )
        for partition in ("label-sorted", "iid")
    ],
    "exp4": [
        (
            f"exp4-shift-back{tag}{suffix}",
            options(
                devices=20,
                devices_per_round=4,
                rounds=100,
                partition="iid",
                seed=0,
                fractions=fraction,
                attacks="shift-back",
                attack_params={"shift-back": {"mult": 2.0}},
                defenses=defenses,
                **extra,
                no_reputation=True,
                defenses_know_fraction=True,
                title=(
                    f"exp4: 20 devices, {fraction} Byzantine, 4 sampled per round, "
                    f"shift-back{suffix}"
                ),
            ),
            [
                (
                    f"exp4-shift-back{tag}{suffix}-curves.png",
                    ["--title", f"exp4: shift-back, {fraction} Byzantine{suffix}"],
                )
            ],
        )
        for fraction, tag in (("0.25", ""), ("0.4", "-40pct"))
        for suffix, defenses, extra in (
            (
                "",
                "mean,coordinate-median,bucketing+coordinate-median,centered-clipping,clipping-vr",
                # Sampled cohorts now select the model-step radius by default; these runs
                # show the median radius, as when they were first made.
                {"defense_params": {"clipping-vr": {"radius": "median"}}},
            ),
            (
                "-model-step-radius",
                "clipping-vr",
                {"defense_params": {"clipping-vr": {"radius": "model-step"}}},
            ),
        )
    ],
    "exp5": [
        (
            f"exp5-backdoor-{label}",
            options(
                **BACKDOOR,
                defenses="mean,coordinate-median,norm-clipping,clipping-vr",
                **extra,
                title=f"exp5: boosted backdoor, {label}",
            ),
            [],
        )
        for label, extra in (
            ("anomaly-and-reputation", {}),
            ("bare-rules", {"no_reputation": True}),
        )
    ],
    "exp6": [
        (
            "exp6-worst-case",
            options(
                **WORST_CASE,
                defenses=ALL_DEFENSES + ",bucketing+coordinate-median",
                no_reputation=True,
                defenses_know_fraction=True,
                title="exp6: worst case over attacks, 25 devices",
            ),
            [],
        )
    ],
    # clipping-vr's radius chosen from the last model step instead of the median distance,
    # on the full-participation experiments (exp4 has its own model-step runs above).
    "radius": [
        *(
            (
                f"exp2-dsgd-label-sorted-model-step-radius{suffix}",
                options(
                    **DSGD_LABEL_SORTED,
                    **{**PAPER_ATTACKS, "defenses": "clipping-vr"},
                    defense_params={"clipping-vr": {"radius": "model-step", **scale}},
                ),
                [],
            )
            for suffix, scale in (("", {}), ("-x10", {"clip_multiplier": 10.0}))
        ),
        (
            "exp5-backdoor-anomaly-and-reputation-model-step-radius",
            options(**BACKDOOR, defenses="clipping-vr", defense_params=MODEL_STEP),
            [],
        ),
        (
            "exp6-worst-case-model-step-radius",
            options(
                **WORST_CASE,
                defenses="clipping-vr",
                defense_params=MODEL_STEP,
                no_reputation=True,
                defenses_know_fraction=True,
            ),
            [],
        ),
    ],
}


def main() -> int:
    """Run (or print) the chosen experiments."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiments", nargs="+", help="exp1 ... exp6, exp2-dsgd, radius, or all")
    parser.add_argument("--print", action="store_true", help="print the commands only")
    args = parser.parse_args()
    names = list(EXPERIMENTS) if args.experiments == ["all"] else args.experiments
    for name in names:
        for folder, matrix_args, curves in EXPERIMENTS[name]:
            out = OUT / folder
            command = [sys.executable, "-m", "byzedge", "sim", "matrix", *matrix_args]
            command += ["--out", str(out)]
            plots = [
                [
                    sys.executable,
                    "benchmarks/robustness_curves.py",
                    str(OUT / png),
                    str(out / "matrix.json"),
                    *filters,
                ]
                for png, filters in curves
            ]
            print("$", shlex.join(["byzedge", *command[3:]]), flush=True)
            for plot in plots:
                print("$", shlex.join(["python", *plot[1:]]), flush=True)
            if args.print:
                continue
            for step in (command, *plots):
                subprocess.run(step, check=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
