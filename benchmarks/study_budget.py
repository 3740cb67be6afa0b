"""Figure 4 as the budget grows: members against direct students at 1x, 4x and 8x the quick budget (issue 25).

The paper's Figure 4 finds the zero-shot members of a boomerang family "comparable [to students distilled at their
size] at small sizes and better at large ones", and names its mechanism: "likely due to catastrophic forgetting
caused by distilling on a presumably lower-quality corpus". On this CPU, at the quick budget (1x: 96 local + 64
global steps of 4 x 128 tokens, 82k tokens), the members in the main job's `klpatch` order were worse than the
direct students by 48/26/14 % at 20/23/26 layers. This study asks whether that gap closes, crosses or stays as the
budget grows, and whether forgetting drives it.

Cells (planned before the runs; each a distillation with the quick recipe, its step counts multiplied by m):
- F{m}: the family's student (16 of SmolLM2-135M-Instruct's 30 layers, the quick plan) at m x the quick budget, then
  its `klpatch` order searched once with the quick profile's search settings and saved beside it;
- D{L}_{m}: a student distilled directly at L layers, started from the teacher layers of the L-layer member of F{m}'s
  own `klpatch` order, with the same recipe and steps (it waits for F{m}'s order).
Budgets 1x, 4x (327k tokens) and 8x (655k tokens); 16x (1.3M tokens, one pass over the corpus) does not fit this
session's CPU time and is left out. 26 layers is carried furthest (1x, 4x, 8x), 20 and 23 layers to 4x.
Every run reads only the corpus's training part: the last 2 % of each corpus file (`data.corpus_text(f, "held_out")`)
is held out, and is the "inside" evaluation text.

Evaluation (every model, float32, 1,024-token windows with stride 1,024):
- outside the corpus: WikiText-2 test, three disjoint 4,096-token stretches (tokens 0, 40,000 and 80,000 on);
- inside the corpus: the held-out corpus text (35k tokens), three disjoint 4,096-token stretches (tokens 0, 11,000
  and 22,000 on: stories, Shakespeare, the novels);
- LAMBADA (lambada_openai_local, 256 examples), accuracy;
- the teacher on each.

Criterion, stated before the runs (2026-12-07, 01:50 UTC):
- gap = member / direct - 1 in token perplexity, per text kind (outside, inside), pooled over its three stretches
  (total negative log-likelihood over 12,288 tokens). The gap "closes" at a budget where it is within +-5 % (the floor
  of study_figure4.py), "crosses" where the member is lower by more than 5 %, "stays" where it is higher by more than
  5 % at every budget.
- Forgetting (the paper's mechanism) is shown when a direct student gets better inside the corpus and worse outside
  as its budget grows (its outside perplexity at the larger budget above the smaller budget's by more than the
  stretch-to-stretch spread). It is ruled out for a size when the direct student's outside perplexity falls with
  the budget at every step.
- Whatever the outcome, the numbers go to the README and notebook 09 as they fall.

Run (each phase resumable: a finished distillation is reused, a killed one resumes from its checkpoint, evaluated
rows are skipped):

    OMP_NUM_THREADS=1 python benchmarks/study_budget.py distill --cells F1 F8 D26_8   # one process per stream
    OMP_NUM_THREADS=1 python benchmarks/study_budget.py distill --cells F4 D26_4 D26_1 D20_1 D23_1 D23_4 D20_4
    python benchmarks/study_budget.py evaluate           # every finished model, into figure4_budget_cpu.csv
    python benchmarks/study_budget.py figure             # figures/figure4_budget_cpu.png

On a GPU, for the `kit` profile (an estimate: the kit's 1x is 32k steps x 262k tokens, far past this CPU):

    python benchmarks/study_budget.py distill --profile kit --threads 16 --runs runs/budget_kit \\
        --cells F1 D26_1 D23_1 D20_1 F4 D26_4 D23_4 D20_4
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "runs" / "budget"
CELL = re.compile(r"^(F|D(\d+)_)(\d+)$")


def log(message: str, path: Path) -> None:
    line = f"{time.strftime('%H:%M:%S')} {message}"
    print(line, flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")


def scaled_profile(name: str, multiple: int):
    """The profile with its step counts (local and global) multiplied by `multiple`."""
    from boomerang_lab.config.profiles import get

    base = get(name)
    d = base.distill
    return get(
        base,
        distill={"max_steps": d.max_steps * multiple, "local_steps": d.local_steps * multiple},
    )


def family_dir(runs: Path, multiple: int) -> Path:
    return runs / f"x{multiple}" / "student"


def direct_dir(runs: Path, layers: int, multiple: int) -> Path:
    return runs / f"x{multiple}" / f"direct_{layers}L"


def distill_family(profile, teacher, tokenizer, plan, out: Path, logfile: Path) -> None:
    from boomerang_lab.config.profiles import distill_config
    from boomerang_lab.data import packed_blocks
    from boomerang_lab.distill.trainer import distill, finished
    from boomerang_lab.models.student import init_student
    from boomerang_lab.store.locks import folder_lock
    from boomerang_lab.study.stages import search_orders

    config = distill_config(profile, output_dir=str(out))
    with folder_lock(out):
        if not finished(config, plan):
            t0 = time.perf_counter()
            data = packed_blocks(tokenizer, seq_len=config.seq_len, packing=config.packing)
            distill(teacher, init_student(teacher, plan, seed=config.seed), plan, data, config, tokenizer)
            seconds = time.perf_counter() - t0
            (out / "study_seconds.json").write_text(json.dumps({"distill_seconds": seconds}) + "\n")
            log(f"{out}: distilled in {seconds:.0f} s", logfile)
        search_orders(profile, teacher, out)


def distill_direct(profile, teacher, tokenizer, plan, layers: int, family_student: Path, out: Path, logfile) -> None:
    from boomerang_lab.evaluate.direct import direct_student, size_for_layers
    from boomerang_lab.family.members import Family
    from boomerang_lab.family.orders import Order
    from boomerang_lab.models.loading import load_student

    order_file = family_student / "order_klpatch.json"
    while not order_file.is_file():
        log(f"{out}: waiting for {order_file}", logfile)
        time.sleep(60)
    student, _, student_plan = load_student(family_student)
    family = Family(teacher, student, plan)
    order = family.order("klpatch")  # read from order_klpatch.json, not searched again
    assert isinstance(order, Order)
    k = size_for_layers(plan, order, layers)
    t0 = time.perf_counter()
    direct_student(teacher, tokenizer, plan, k, order, profile, out, family=family)
    seconds = time.perf_counter() - t0
    seconds_file = out / "study_seconds.json"  # the first finishing call's time (a resumed run: its last part)
    if not seconds_file.is_file():
        seconds_file.write_text(json.dumps({"distill_seconds": seconds}) + "\n")
    log(f"{out}: direct student at {layers} layers (k={k}) done in {seconds:.0f} s", logfile)


def cmd_distill(args) -> None:
    from boomerang_lab.models.loading import load_model

    torch.set_num_threads(args.threads)
    runs = Path(args.runs)
    logfile = runs / "study.log"
    base = scaled_profile(args.profile, 1)
    teacher, tokenizer = load_model(base.teacher)
    plan = base.layer_plan(teacher.config.num_hidden_layers)
    for cell in args.cells:
        match = CELL.match(cell)
        if not match:
            raise SystemExit(f"study_budget: cell {cell!r} is not F<m> or D<layers>_<m> (e.g. F4, D26_4).")
        multiple = int(match.group(3))
        profile = scaled_profile(args.profile, multiple)
        log(f"cell {cell}: start ({args.threads} thread(s))", logfile)
        if match.group(2) is None:
            distill_family(profile, teacher, tokenizer, plan, family_dir(runs, multiple), logfile)
        else:
            layers = int(match.group(2))
            out = direct_dir(runs, layers, multiple)
            distill_direct(profile, teacher, tokenizer, plan, layers, family_dir(runs, multiple), out, logfile)
        log(f"cell {cell}: done", logfile)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("distill", help="distil the cells named, in order (resumable)")
    d.add_argument("--cells", nargs="+", required=True)
    d.add_argument("--profile", default="quick")
    d.add_argument("--runs", default=str(RUNS))
    d.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.command == "distill":
        cmd_distill(args)


if __name__ == "__main__":
    main()
