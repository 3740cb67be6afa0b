"""Figure 4 as the budget grows: members against direct students at 1x, 4x and 8x the quick budget (issue 25).

The paper's Figure 4 finds the zero-shot members of a boomerang family "comparable [to students distilled at their
size] at small sizes and better at large ones", and names its mechanism: "likely due to catastrophic forgetting
caused by distilling on a presumably lower-quality corpus". On this CPU, at the quick budget (1x: 96 local + 64
global steps of 4 x 128 tokens, 82k tokens), the members in the main job's `klpatch` order were worse than the
direct students by 48/26/14 % at 20/23/26 layers. This study asks whether that gap closes, crosses or stays as the
budget grows, and whether forgetting drives it.

Cells (each a distillation with the quick recipe, its step counts multiplied by m):
- F{m}: the family's student (16 of SmolLM2-135M-Instruct's 30 layers, the quick plan) at m x the quick budget, then
  its `klpatch` order searched once with the quick profile's search settings and saved beside it;
- D{L}_{m}: a student distilled directly at L layers, started from the teacher layers of the L-layer member of F{m}'s
  own `klpatch` order, with the same recipe and steps (it waits for F{m}'s order).
Planned before the runs: 1x, 4x (327k tokens) and 8x (655k tokens), 26 layers carried furthest. What ran (2026-12-07):
this session's machine is an AMD EPYC with AVX2 only, where bf16 is emulated (a quick global step took ~160 s under
bf16 autocast), so every run here is float32 (`models.loading.autocast_for`), and the CPU was shared with five other
jobs: the 4x family student was restarted as 2x (164k tokens) after 30 of its 640 steps, when its projected end
passed the session's. Run: 1x (F1, D26_1, D23_1, D20_1) and 2x (F2, D26_2). A later session (2026-12-07, 11:00-12:47
UTC, the same CPU with only this study on it, two streams of one thread each) ran F4 (3,453 s), D26_4 (2,679 s) and
F8 (6,284 s; also the `quick-long` profile's student); D26_8 (about 75 min more) did not fit in the session and was
stopped after 2 minutes, and 16x never ran. The 4x and 8x models were evaluated with LAMBADA at 26 layers only
(`--lambada-layers 26`), to fit the session. A third session (2026-12-07, from 13:57 UTC, same CPU, two one-thread
streams) ran D26_8 (6,835 s, restarted from step 0: the stopped run had left no checkpoint) and a second seed (1,
the data order of both stages) of F1, D26_1, F2 and D26_2 in `runs/budget_seed1` (`--seed 1`; 1,276, 845, 1,813
and 1,503 s), evaluated at 16 and 26 layers without LAMBADA (`--layers 16 26 --lambada-layers 0`); the figure
draws seed 0 as lines, seed 1 as hollow markers, and `report.budget.seed_gaps` puts each seed's gap side by side.
It also added LAMBADA for the 16/20/23-layer members at 4x and 8x (`--budgets 4 8 --layers 16 20 23`).
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

    OMP_NUM_THREADS=1 python benchmarks/study_budget.py distill --cells F1 D26_1 D23_1 D20_1   # one process per stream
    OMP_NUM_THREADS=1 python benchmarks/study_budget.py distill --cells F2 D26_2   # then F4 D26_4 and F8 D26_8
    python benchmarks/study_budget.py evaluate           # every finished model, into figure4_budget_cpu.csv
    # a second evaluator beside it writes its own table (a copy of the main one), merged afterwards:
    #   ... evaluate --budgets 8 --results /tmp/b8.csv;  python benchmarks/study_budget.py merge /tmp/b8.csv
    python benchmarks/study_budget.py figure             # figures/figure4_budget_cpu.png
    # a second seed, in its own runs folder, evaluated into a copy of the table and merged:
    #   ... distill --seed 1 --runs runs/budget_seed1 --cells F1 D26_1 F2 D26_2
    #   ... evaluate --seed 1 --runs runs/budget_seed1 --layers 16 26 --results /tmp/s1.csv;  ... merge /tmp/s1.csv

On a GPU, for the `kit` profile. An estimate, not a run: the kit's 1x is 500 steps x 262k tokens = 131M tokens (1/16
of the paper's 2.1B); at the 59.5k tokens/s measured for a 30-layer SmolLM2 step on one H100 (bf16, 16 x 512 tokens,
benchmarks/results/bench_distill_h100.csv; 2,048-token sequences cost more attention) one 1x distillation takes
about 37 min, so these 8 cells about 12 h on one H100 (4 x 37 min + 4 x 2.5 h), plus evaluation:

    python benchmarks/study_budget.py distill --profile kit --threads 16 --runs runs/budget_kit \\
        --cells F1 D26_1 D23_1 D20_1 F4 D26_4 D23_4 D20_4
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "runs" / "budget"
RESULTS = ROOT / "benchmarks" / "results" / "figure4_budget_cpu.csv"
FIGURE = ROOT / "figures" / "figure4_budget_cpu.png"
CELL = re.compile(r"^(F|D(\d+)_)(\d+)$")
LAYERS = (20, 23, 26)
STRETCH = 4096
WINDOW = 1024
STRETCHES = {"wikitext_test": (0, 40_000, 80_000), "corpus_held_out": (0, 11_000, 22_000)}
"""Where each text's three disjoint 4,096-token stretches start (token offsets)."""
TEXT_KIND = {"wikitext_test": "outside", "corpus_held_out": "inside", "lambada": "outside"}
PRIORITY = (30, 26, 16)
"""Evaluated first: the teacher, the size carried furthest, the student."""
LAMBADA = "lambada_openai_local"
LAMBADA_LIMIT = 256
COLUMNS = [
    "budget",
    "train_tokens",
    "method",
    "layers",
    "k",
    "seed",
    "text",
    "kind",
    "stretch",
    "metric",
    "value",
    "stderr",
    "nll",
    "scored",
    "distill_seconds",
    "order",
    "profile",
]
KEY = ["budget", "method", "layers", "seed", "text", "stretch", "profile"]


def log(message: str, path: Path) -> None:
    line = f"{time.strftime('%H:%M:%S')} {message}"
    print(line, flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")


def scaled_profile(name: str, multiple: int, seed: int = 0):
    """The profile with its step counts (local and global) multiplied by `multiple`, distilled with `seed` (the data
    order of both stages; the `klpatch` search keeps its own windows)."""
    from boomerang_lab.config.profiles import get

    base = get(name)
    d = base.distill
    return get(
        base,
        distill={"max_steps": d.max_steps * multiple, "local_steps": d.local_steps * multiple, "seed": seed},
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
    from boomerang_lab.models.loading import load_student
    from boomerang_lab.models.orders import Order

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
    base = scaled_profile(args.profile, 1, args.seed)
    teacher, tokenizer = load_model(base.teacher)
    plan = base.layer_plan(teacher.config.num_hidden_layers)
    for cell in args.cells:
        match = CELL.match(cell)
        if not match:
            raise SystemExit(f"study_budget: cell {cell!r} is not F<m> or D<layers>_<m> (e.g. F4, D26_4).")
        multiple = int(match.group(3))
        profile = scaled_profile(args.profile, multiple, args.seed)
        log(f"cell {cell}: start ({args.threads} thread(s), seed {args.seed})", logfile)
        if match.group(2) is None:
            distill_family(profile, teacher, tokenizer, plan, family_dir(runs, multiple), logfile)
        else:
            layers = int(match.group(2))
            out = direct_dir(runs, layers, multiple)
            distill_direct(profile, teacher, tokenizer, plan, layers, family_dir(runs, multiple), out, logfile)
        log(f"cell {cell}: done", logfile)


# --- evaluation ----------------------------------------------------------------------------------------------------
def text_ids(tokenizer, text: str) -> torch.Tensor:
    from boomerang_lab.data import held_out_text
    from boomerang_lab.evaluate.perplexity import wikitext_text

    raw = wikitext_text() if text == "wikitext_test" else held_out_text()
    return torch.tensor(tokenizer(raw)["input_ids"])


@torch.no_grad()
def stretch_nll(model, ids: torch.Tensor) -> tuple[float, int]:
    """Summed NLL and scored tokens of `ids` in non-overlapping WINDOW-token windows (each window's first token is
    context only): `evaluate.perplexity`'s arithmetic with stride == window, float32."""
    import torch.nn.functional as F

    nll, scored = 0.0, 0
    for begin in range(0, len(ids), WINDOW):
        window = ids[begin : begin + WINDOW]
        if len(window) < 2:
            break
        logits = model(window[None], use_cache=False).logits[0, :-1]
        nll += F.cross_entropy(logits.float(), window[1:], reduction="sum").item()
        scored += len(window) - 1
    return nll, scored


def train_tokens(config) -> int:
    return (config.local_steps + config.max_steps) * config.batch_size * config.grad_accum * config.seq_len


def models_to_evaluate(runs: Path, teacher, plan, profile_name: str):
    """(budget, method, layers, k, seconds, loader) of every finished model, the teacher first."""
    from boomerang_lab.evaluate.direct import member_layers, read_direct
    from boomerang_lab.family.members import Family
    from boomerang_lab.models.loading import load_student
    from boomerang_lab.models.orders import Order

    yield 0, "teacher", plan.num_teacher_layers, None, float("nan"), lambda: teacher
    for folder in sorted(runs.glob("x*"), key=lambda p: int(p.name[1:])):
        multiple = int(folder.name[1:])
        student_dir = folder / "student"
        if (student_dir / "order_klpatch.json").is_file():
            seconds = _seconds(student_dir)
            cache = {}

            def family(student_dir=student_dir, cache=cache):
                if "family" not in cache:
                    student, _, _ = load_student(student_dir)
                    cache["family"] = Family(teacher, student, plan)
                return cache["family"]

            order = Order.load(student_dir / "order_klpatch.json")
            for k in range(order.num_sizes + 1):
                layers = len(member_layers(plan, order, k))
                if layers in (plan.num_student_layers, *LAYERS):
                    yield multiple, "member", layers, k, seconds, lambda k=k, f=family, o=order: f().build(k, o)
        for direct in sorted(folder.glob("direct_*L")):
            if (direct / "manifest.json").is_file() and (direct / "boomerang_direct.json").is_file():
                info = read_direct(direct)
                yield (
                    multiple,
                    "direct",
                    len(info["layers"]),
                    info["k"],
                    _seconds(direct),
                    lambda d=direct: load_student(d)[0],
                )


def _seconds(folder: Path) -> float:
    file = folder / "study_seconds.json"
    return json.loads(file.read_text())["distill_seconds"] if file.is_file() else float("nan")


def cmd_evaluate(args) -> None:
    import pandas as pd

    from boomerang_lab.evaluate.sweep import SweepConfig, _evaluate_task
    from boomerang_lab.models.loading import load_model
    from boomerang_lab.store.atomic import atomic_path

    torch.set_num_threads(args.threads)
    runs, results = Path(args.runs), Path(args.results)
    logfile = runs / "evaluate.log"
    base = scaled_profile(args.profile, 1, args.seed)
    teacher, tokenizer = load_model(base.teacher, dtype=torch.float32)
    plan = base.layer_plan(teacher.config.num_hidden_layers)
    table = pd.read_csv(results) if results.is_file() else pd.DataFrame(columns=COLUMNS)
    have = set(map(tuple, table[KEY].astype(str).values.tolist())) if len(table) else set()
    ids = {text: text_ids(tokenizer, text) for text in STRETCHES}
    lambada_config = SweepConfig(profile=args.profile, limit=LAMBADA_LIMIT, autocast=None).resolved()
    candidates = sorted(
        models_to_evaluate(runs, teacher, plan, args.profile),
        key=lambda c: (c[2] not in PRIORITY, c[0] > 0 and c[1] == "member" and c[2] not in PRIORITY, c[0], c[1]),
    )  # the teacher, then 26 layers and the student at every budget, then the other sizes
    for budget, method, layers, k, seconds, load in candidates:
        if args.budgets and budget not in args.budgets:
            continue
        if args.layers and layers not in args.layers:
            continue
        # The teacher is not distilled: its rows carry seed 0 whichever seed's runs are evaluated.
        config = scaled_profile(args.profile, max(budget, 1), 0 if method == "teacher" else args.seed).distill
        tokens = 0 if method == "teacher" else train_tokens(config)
        common = dict(
            budget=budget,
            train_tokens=tokens,
            method=method,
            layers=layers,
            k=k,
            seed=config.seed,
            distill_seconds=seconds,
            order="klpatch",
            profile=args.profile,
        )
        todo = [
            (text, i)
            for text, starts in [*STRETCHES.items(), ("lambada", (0,))]
            for i in range(len(starts))
            if tuple(map(str, (budget, method, layers, config.seed, text, i, args.profile))) not in have
            and (text != "lambada" or args.lambada_layers is None or layers in args.lambada_layers)
        ]
        if not todo:
            continue
        model = load().eval()
        rows = []
        t0 = time.perf_counter()
        for text, i in todo:
            if text == "lambada":
                got = _evaluate_task(model, tokenizer, LAMBADA, lambada_config)  # float32: no autocast
                acc = got[got.metric == "acc"].iloc[0]
                rows.append(
                    {
                        **common,
                        "text": "lambada",
                        "kind": "outside",
                        "stretch": 0,
                        "metric": "acc",
                        "value": acc.value,
                        "stderr": acc.stderr,
                        "nll": float("nan"),
                        "scored": LAMBADA_LIMIT,
                    }
                )
                continue
            start = STRETCHES[text][i]
            nll, scored = stretch_nll(model, ids[text][start : start + STRETCH])
            rows.append(
                {
                    **common,
                    "text": text,
                    "kind": TEXT_KIND[text],
                    "stretch": i,
                    "metric": "token_perplexity",
                    "value": math.exp(nll / scored),
                    "stderr": float("nan"),
                    "nll": nll,
                    "scored": scored,
                }
            )
        table = (
            pd.concat([table, pd.DataFrame(rows)[COLUMNS]], ignore_index=True)
            if len(table)
            else pd.DataFrame(rows)[COLUMNS]
        )
        with atomic_path(results) as tmp:
            table.to_csv(tmp, index=False)
        have |= {
            tuple(
                map(
                    str,
                    (
                        budget,
                        method,
                        layers,
                        config.seed,
                        r["text"],
                        r["stretch"],
                        args.profile,
                    ),
                )
            )
            for r in rows
        }
        summary = ", ".join(f"{r['text']}[{r['stretch']}] {r['value']:.4g}" for r in rows)
        log(f"{budget}x {method} {layers}L: {summary} ({time.perf_counter() - t0:.0f} s)", logfile)
        del model


def cmd_merge(args) -> None:
    """Two evaluators must not write one table (each rewrites it whole): run the second with its own --results (a
    copy of the main table, so that it skips what is done), then merge its new rows here; a key seen twice keeps the
    main table's row."""
    import pandas as pd

    from boomerang_lab.store.atomic import atomic_path

    main = pd.read_csv(args.results)
    merged = pd.concat([main, *(pd.read_csv(t) for t in args.tables)], ignore_index=True)
    merged = merged.drop_duplicates(subset=KEY, keep="first")[COLUMNS]
    with atomic_path(Path(args.results)) as tmp:
        merged.to_csv(tmp, index=False)
    print(f"{args.results}: {len(main)} -> {len(merged)} rows")


def cmd_figure(args) -> None:
    import pandas as pd

    from boomerang_lab.report.budget import figure, figure_title, forgetting, gaps
    from boomerang_lab.report.plots import save_figure

    table = pd.read_csv(args.results)
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(gaps(table).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        print(forgetting(table).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    fig = figure(table, figure_title(table, "klpatch members, quick recipe, float32, this CPU"))
    save_figure(fig, Path(args.figure).parent, Path(args.figure).stem, formats=("png",))
    print(f"wrote {args.figure}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("distill", help="distil the cells named, in order (resumable)")
    d.add_argument("--cells", nargs="+", required=True)
    d.add_argument("--profile", default="quick")
    d.add_argument("--runs", default=str(RUNS))
    d.add_argument("--threads", type=int, default=1)
    d.add_argument("--seed", type=int, default=0, help="the distillations' seed (data order); use its own --runs")
    e = sub.add_parser("evaluate", help="evaluate every finished model into the results table (resumable)")
    e.add_argument("--profile", default="quick")
    e.add_argument("--runs", default=str(RUNS))
    e.add_argument("--results", default=str(RESULTS))
    e.add_argument("--threads", type=int, default=1)
    e.add_argument("--budgets", nargs="+", type=int, help="evaluate only these budgets (e.g. 4 8; default every one)")
    e.add_argument("--layers", nargs="+", type=int, help="evaluate only these sizes (e.g. 16 26 30; default all)")
    e.add_argument("--seed", type=int, default=0, help="the seed the models in --runs were distilled with")
    e.add_argument(
        "--lambada-layers", nargs="+", type=int, help="LAMBADA only at these sizes (default every size evaluated)"
    )
    m = sub.add_parser("merge", help="add the rows of other results tables (another evaluator's --results)")
    m.add_argument("tables", nargs="+")
    m.add_argument("--results", default=str(RESULTS))
    f = sub.add_parser("figure", help="the gap table, the forgetting check and the figure")
    f.add_argument("--results", default=str(RESULTS))
    f.add_argument("--figure", default=str(FIGURE))
    args = parser.parse_args()
    if args.command == "figure":
        cmd_figure(args)
    elif args.command == "distill":
        cmd_distill(args)
    elif args.command == "evaluate":
        cmd_evaluate(args)
    elif args.command == "merge":
        cmd_merge(args)


if __name__ == "__main__":
    main()
