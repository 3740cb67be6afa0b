"""Table 3 on this machine: what one student and its zero-shot family cost against distilling every intermediate size
directly with the same budget (issue 18).

Training FLOPs come from `boomerang_lab.report.costs` (its docstring states the per-token formula; in short:
2 FLOPs per multiply-add; per global-stage token the teacher's forward 2N(teacher layers + head), the student's forward
2N(student layers + head) and its backward 2N(student layers + head) + 2N(trained weights); per local-stage token the
teacher backbone's forward 2N(teacher layers) and 6N of each trained student layer; plus attention terms): the paper's
three teachers with the paper's plans, recipe and orders, and SmolLM2-135M with the profile given here (the quick
recipe, by default). Seconds are measured (issue 25): `benchmarks/table3_steps.py` timed optimizer steps of the
family's student and of every direct student, both stages, interleaved in one run on one thread; each size's seconds
are its median CPU seconds per step of each stage times the recipe's steps of that stage (`costs.step_seconds`),
and a size that was not timed is fitted per stage through the timed ones (the `seconds_source` column says which).
Without the steps file, the older way: direct students' distillation times from a Figure 4 study, extrapolated in
proportion to their layers (`costs.extrapolate_seconds`).

    python benchmarks/table3.py [--profile quick] [--steps benchmarks/results/table3_steps_cpu.csv]

Writes benchmarks/results/table3_cpu.csv (one row per teacher) and table3_sizes_cpu.csv (one row per size of the
SmolLM2 family: FLOPs, seconds per step of each stage, seconds, and whether they were measured or fitted).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from boomerang_lab.report.costs import paper_table3, paper_teacher_configs, table3, table3_measured
from boomerang_lab.store.atomic import atomic_path

RESULTS = Path(__file__).resolve().parent / "results"
FLOPS_FORMULA = (
    "2 FLOPs per multiply-add; global token: teacher fwd 2N(T layers+head) + student fwd 2N(S layers+head) + bwd "
    "2N(S layers+head) + 2N(trained); local token: teacher backbone fwd 2N(T layers) + 6N(each trained layer); "
    "+ attention (report/costs.py)"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--study", default=str(RESULTS / "figure4_cpu.csv"))
    parser.add_argument("--steps", default=str(RESULTS / "table3_steps_cpu.csv"), help="table3_steps.py's output")
    parser.add_argument("--out", default=str(RESULTS / "table3_cpu.csv"))
    args = parser.parse_args()
    study = pd.read_csv(args.study) if Path(args.study).exists() else None
    steps = pd.read_csv(args.steps) if Path(args.steps).exists() else None
    smollm2 = paper_teacher_configs()["SmolLM2-135M"]
    row, sizes = table3_measured("SmolLM2-135M", smollm2, args.profile, study, steps=steps)
    sizes["flops_formula"] = FLOPS_FORMULA
    table = pd.concat([paper_table3(), table3({"SmolLM2-135M": smollm2}), row], ignore_index=True)
    for path, frame in ((Path(args.out), table), (Path(args.out).with_name("table3_sizes_cpu.csv"), sizes)):
        with atomic_path(path) as tmp:
            frame.to_csv(tmp, index=False)
    pd.set_option("display.width", 200)
    print(table.to_string(index=False))
    print(sizes.to_string(index=False))


if __name__ == "__main__":
    main()
