"""Table 3 on this machine: what one student and its zero-shot family cost against distilling every intermediate size
directly with the same budget (issue 18).

Training FLOPs come from `boomerang_lab.report.costs` (its docstring states the per-token formula): the paper's three
teachers with the paper's plans, recipe and orders, and SmolLM2-135M with the profile given here (the quick recipe,
by default). Seconds are measured: the direct students' distillation times in `figure4_cpu.csv`
(benchmarks/study_figure4.py, one thread of this shared 2-core CPU), extrapolated to every intermediate size and to
the family's student in proportion to their layers (`costs.extrapolate_seconds`).

    python benchmarks/table3.py [--profile quick] [--study benchmarks/results/figure4_cpu.csv]

Writes benchmarks/results/table3_cpu.csv (one row per teacher) and table3_sizes_cpu.csv (one row per size of the
SmolLM2 family: FLOPs and measured or extrapolated seconds).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from boomerang_lab.report.costs import paper_table3, paper_teacher_configs, table3, table3_measured
from boomerang_lab.store.atomic import atomic_path

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--study", default=str(RESULTS / "figure4_cpu.csv"))
    parser.add_argument("--out", default=str(RESULTS / "table3_cpu.csv"))
    args = parser.parse_args()
    study = pd.read_csv(args.study) if Path(args.study).exists() else None
    smollm2 = paper_teacher_configs()["SmolLM2-135M"]
    row, sizes = table3_measured("SmolLM2-135M", smollm2, args.profile, study)
    table = pd.concat([paper_table3(), table3({"SmolLM2-135M": smollm2}), row], ignore_index=True)
    for path, frame in ((Path(args.out), table), (Path(args.out).with_name("table3_sizes_cpu.csv"), sizes)):
        with atomic_path(path) as tmp:
            frame.to_csv(tmp, index=False)
    pd.set_option("display.width", 200)
    print(table.to_string(index=False))
    print(sizes.to_string(index=False))


if __name__ == "__main__":
    main()
