"""Figure 4 on this CPU: family members against students distilled directly at their own size (issue 18).

The paper (its Figure 4) distils a student at each intermediate size and finds the zero-shot members of the boomerang
family "comparable at small sizes and better at large ones". This study does the same with the quick profile: the main
job's student and plan (16 of SmolLM2-135M's 30 layers), one patch order (a flag, recorded in the csv), and direct
students (`boomerang_lab.evaluate.direct.direct_student`) at 3 sizes spread over the range plus a second seed at one
size, each initialised with the member's teacher layers and trained with the quick recipe (96 local + 64 global steps of
4 x 128 tokens, the same tokens and steps as the family's student). Every model is evaluated like the main job:
WikiText-2 test token perplexity (first 4,096 tokens, bf16 autocast) and LAMBADA (lambada_openai_local, 64 examples).

Criterion, stated before the runs (2026-12-02, 10:00 UTC):
- A member "matches" the direct student of its size when its WikiText-2 token perplexity is within the seed-to-seed
  spread of the direct students (the relative difference of the two seeds at the size that has two, at least 5 %),
  "is better" when lower by more than that, "is worse" when higher by more than that. LAMBADA (64 examples, stderr
  about 0.05) is reported beside it; a difference counts only beyond 2 combined stderrs.
- The paper's finding holds here when no member is worse at the smaller sizes and the member is better or matches at
  the largest size. Whatever the outcome, the numbers go to the README as they fall.

Distillations run one after another on one thread (torch.set_num_threads(1)); distill_seconds is each direct
student's wall time on this shared 2-core CPU (a reused student keeps the time measured when it was distilled).
The csv is resumable: finished rows are skipped, finished students are reused.

    OMP_NUM_THREADS=1 python benchmarks/study_figure4.py [--order last] [--sizes 20 26 23] [--profile quick]

Another profile (e.g. `kit` on a GPU, after `boomerang run --profile kit` distilled outputs/kit/student):

    python benchmarks/study_figure4.py --profile kit --threads 16 --results benchmarks/results/figure4_kit.csv \
        --figure figures/figure4_kit.png --runs runs/figure4_kit
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import pandas as pd
import torch

from boomerang_lab.store.atomic import atomic_path, atomic_write_text

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "figure4_cpu.csv"
FIGURE = ROOT / "figures" / "figure4_cpu.png"
COLUMNS = [
    "layers",
    "method",
    "seed",
    "task",
    "metric",
    "value",
    "stderr",
    "distill_seconds",
    "train_tokens",
    "k",
    "order",
    "profile",
]
KEY = ["layers", "method", "seed", "task", "order", "profile"]
SECONDS_FILE = "study_seconds.json"
LAMBADA = "lambada_openai_local"


def log(message: str, path: Path | None = None) -> None:
    line = f"{time.strftime('%H:%M:%S')} {message}"
    print(line, flush=True)
    if path is not None:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")


def read_table(path: Path) -> pd.DataFrame:
    return pd.read_csv(path) if path.exists() else pd.DataFrame(columns=COLUMNS)


def done(table: pd.DataFrame, **key) -> bool:
    if table.empty:
        return False
    match = pd.Series(True, index=table.index)
    for name, value in key.items():
        match &= table[name].astype(str) == str(value)
    return bool(match.any())


def append(path: Path, table: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    table = pd.concat([table, rows[COLUMNS]], ignore_index=True) if not table.empty else rows[COLUMNS]
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
    return table


def train_tokens(config) -> int:
    """Tokens each stage reads, both stages together (every student of the study reads the same ones)."""
    per_step = config.batch_size * config.grad_accum * config.seq_len
    return (config.local_steps + config.max_steps) * per_step


def evaluate(model, tokenizer, task: str, sweep_config) -> pd.DataFrame:
    """The main job's evaluation of one model on one task (the sweep's own call: same autocast, windows, limit)."""
    from boomerang_lab.evaluate.sweep import _evaluate

    return _evaluate(model, tokenizer, task, sweep_config)


def draw(table: pd.DataFrame, args, plan) -> None:
    from boomerang_lab.report.comparisons import figure4
    from boomerang_lab.report.plots import save_figure

    title = f"Members vs students distilled at their own size ({args.profile} recipe, {args.order} order, this CPU)"
    fig = figure4(table, args.order, plan.num_teacher_layers, plan.num_student_layers, title)
    save_figure(fig, Path(args.figure).parent, Path(args.figure).stem, formats=("png",))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--student", help="the family's student (default: outputs/<profile>/student, the main job's)")
    parser.add_argument("--order", default="last", help="the family's patch order (recorded in the csv)")
    parser.add_argument("--sizes", nargs="+", type=int, default=[20, 26, 23], help="layers of the direct students")
    parser.add_argument("--second-seed", nargs=2, type=int, default=[20, 1], metavar=("LAYERS", "SEED"))
    parser.add_argument("--runs", default=str(ROOT / "runs" / "figure4"), help="where the direct students go")
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--figure", default=str(FIGURE))
    parser.add_argument("--log", default=str(ROOT / "runs" / "figure4" / "study.log"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--family-only",
        action="store_true",
        help="only the family's members in --order (e.g. the main job's `local`), beside the direct students of `last`",
    )
    parser.add_argument("--wait", type=float, default=3600, help="seconds to wait for the family's student")
    parser.add_argument("--laco", action=argparse.BooleanOptionalAction, default=True, help="add LaCo at those sizes")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    from boomerang_lab.config.profiles import distill_config, get
    from boomerang_lab.evaluate.direct import direct_student, resolve_order, size_for_layers
    from boomerang_lab.evaluate.sweep import SweepConfig
    from boomerang_lab.family.members import Family
    from boomerang_lab.models.loading import load_model, load_student
    from boomerang_lab.report.comparisons import verdict

    runs, results, logfile = Path(args.runs), Path(args.results), Path(args.log)
    runs.mkdir(parents=True, exist_ok=True)
    chosen = get(args.profile)
    teacher, tokenizer = load_model(chosen.teacher)
    plan = chosen.layer_plan(teacher.config.num_hidden_layers)
    student_dir = Path(args.student or ROOT / "outputs" / chosen.name / "student")
    family = None
    plan_order = args.order in ("last", "first")
    start = time.perf_counter()
    sweep_config = SweepConfig(profile=args.profile).resolved()
    tokens = train_tokens(distill_config(args.profile))
    table = read_table(results)
    log(
        f"study start: profile {args.profile}, order {args.order}, sizes {args.sizes}, {args.threads} thread(s)",
        logfile,
    )

    def get_family(wait: float):
        nonlocal family
        deadline = time.time() + wait
        while family is None:
            if student_dir.is_dir():
                student, _, student_plan = load_student(student_dir)
                if student_plan != plan:
                    raise ValueError(f"{student_dir} has plan {student_plan}, the profile's is {plan}.")
                family = Family(teacher, student, plan)
            elif time.time() > deadline:
                return None
            else:
                time.sleep(30)
        return family

    def record(model, layers, method, seed, k, seconds, tasks):
        nonlocal table
        for task in tasks:
            if done(table, layers=layers, method=method, seed=seed, task=task, order=args.order, profile=args.profile):
                continue
            t0 = time.perf_counter()
            rows = evaluate(model, tokenizer, task, sweep_config).assign(
                layers=layers,
                method=method,
                seed=seed,
                task=task,
                distill_seconds=seconds,
                train_tokens=0 if method == "laco" else tokens,  # LaCo trains nothing
                k=k,
                order=args.order,
                profile=args.profile,
            )
            table = append(results, table, rows)
            head = rows[rows.metric.isin(["token_perplexity", "acc"])].iloc[0]
            log(
                f"{method} {layers}L seed {seed} {task}: {head.metric} {head.value:.4g}"
                f"{'' if math.isnan(head.stderr) else f' ± {head.stderr:.2g}'} ({time.perf_counter() - t0:.0f} s)",
                logfile,
            )

    def family_rows(k_values, tasks, wait=0.0):
        fam = get_family(wait)
        if fam is None:
            return False
        resolved = fam.order(args.order)
        for k in k_values:
            member = fam.build(k, resolved)
            record(member, member.config.num_hidden_layers, "boomerang", 0, k, math.nan, tasks)
        return True

    order = resolve_order(plan, args.order, None if plan_order else get_family(args.wait))
    jobs = [(layers, 0) for layers in args.sizes] + [tuple(args.second_seed)]
    ks = sorted({size_for_layers(plan, order, layers) for layers, _ in jobs})
    # The family first (cheap, and the figure's curve), then LaCo (no training), then the direct students.
    if family_rows(range(order.num_sizes + 1), ["wikitext_ppl"], wait=args.wait):
        family_rows(ks + [0, order.num_sizes], [LAMBADA])
    else:
        log(f"the family's student {student_dir} did not appear; rerun to add the members", logfile)
    if args.family_only:  # another order's curve of the same family, beside the direct students of --order last
        log(f"family curve in the {args.order} order done ({time.perf_counter() - start:.0f} s)", logfile)
        return
    if args.laco:
        from boomerang_lab.data import calibration_set
        from boomerang_lab.evaluate.baselines import laco_pruning
        from boomerang_lab.evaluate.laco import LaCoConfig

        laco_config = LaCoConfig()
        calibration = calibration_set(tokenizer, laco_config.sentences, laco_config.tokens)
        for layers in sorted({layers for layers, _ in jobs}):
            key = dict(layers=layers, method="laco", seed=0, order=args.order, profile=args.profile)
            if not all(done(table, task=task, **key) for task in ("wikitext_ppl", LAMBADA)):
                t0 = time.perf_counter()
                model = laco_pruning(teacher, layers, calibration, laco_config)
                info = model.boomerang
                log(
                    f"LaCo {layers}L ({time.perf_counter() - t0:.0f} s): groups {info['laco_groups']}, "
                    f"threshold met: {info['threshold_met']}",
                    logfile,
                )
                record(model, layers, "laco", 0, None, math.nan, ["wikitext_ppl", LAMBADA])
    draw(table, args, plan)

    for layers, seed in jobs:
        k = size_for_layers(plan, order, layers)
        out = runs / f"direct_{layers}L_{args.order}_s{seed}"
        seconds_file = out / SECONDS_FILE
        t0 = time.perf_counter()
        log(f"direct student {layers}L (k={k}) seed {seed} -> {out}", logfile)
        direct_student(teacher, tokenizer, plan, k, order, args.profile, out, family=family, seed=seed)
        if not seconds_file.exists():
            atomic_write_text(seconds_file, json.dumps({"seconds": time.perf_counter() - t0}) + "\n")
        seconds = json.loads(seconds_file.read_text())["seconds"]
        log(f"direct student {layers}L seed {seed}: distilled in {seconds:.0f} s", logfile)
        model, _, _ = load_student(out)
        record(model, layers, "distilled", seed, k, seconds, ["wikitext_ppl", LAMBADA])
        del model
        draw(table, args, plan)
        log("verdict so far:\n" + verdict(table, args.order).to_string(index=False), logfile)
    log(f"study done in {time.perf_counter() - start:.0f} s (this invocation)", logfile)


if __name__ == "__main__":
    main()
