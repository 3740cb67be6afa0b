"""The main job's curve beside the paper's recipe and the previous default, at the same CPU budget, on the same text.

Reads results tables of the `quick` sweep (WikiText-2 test token perplexity, first 4,096 tokens, every size):
  --new      the current `quick` run (results/quick.csv): boomerang, naive pruning and ShortGPT
  --paper    the paper's recipe at the quick budget (`make run PROFILE=quick-paper`; 128 global steps, every
             parameter trained, `last` order): benchmarks/results/quick_cpu_paper_recipe.csv
  --previous the previous quick default (128 global steps, frozen embeddings): benchmarks/results/quick_cpu.csv
  --long     (optional) the longer CPU run (`make run PROFILE=quick-long`: quick with 8x its steps):
             benchmarks/results/quick_long_cpu.csv; drawn beside the main job, its own wins counted
Writes a table (one row per layer count, a column per curve, and which sizes the current default wins against
ShortGPT and naive pruning) and a figure.

    python benchmarks/compare_quick.py --new results/quick.csv --out benchmarks/results/quick_compare_cpu
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from boomerang_lab.report.plots import save_figure
from boomerang_lab.store.atomic import atomic_path

HERE = Path(__file__).resolve().parent
LONG = "boomerang, quick-long (8x the steps)"
LONG_RUN = "the quick-long run"


def long_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in ("long_beats_shortgpt", "long_beats_quick") if c in table]


def curves(path: Path, label: str, methods: tuple[str, ...] = ("boomerang",)) -> dict[str, pd.Series]:
    table = pd.read_csv(path)
    table = table[(table.task == "wikitext_ppl") & (table.metric == "token_perplexity")]
    out = {}
    for method in methods:
        rows = table[table.method == method]
        for order, g in rows.groupby("order"):
            name = label if method == "boomerang" else {"naive": "naive pruning", "shortgpt": "ShortGPT"}[method]
            if method == "naive" and rows.order.nunique() > 1:
                name += f" ({order})"
            out[name] = g.groupby("layers").value.last()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--new", type=Path, default=Path("results/quick.csv"))
    p.add_argument("--paper", type=Path, default=HERE / "results" / "quick_cpu_paper_recipe.csv")
    p.add_argument("--previous", type=Path, default=HERE / "results" / "quick_cpu_previous_default.csv")
    p.add_argument("--long", type=Path, help="the quick-long run's results table (optional)")
    p.add_argument("--out", type=Path, default=HERE / "results" / "quick_compare_cpu")
    p.add_argument("--figure", type=Path, default=Path("figures"), help="folder for quick_vs_paper.png/.pdf")
    args = p.parse_args()

    new = curves(args.new, "boomerang (quick default)", ("boomerang", "shortgpt", "naive"))
    lines = {
        **new,
        **curves(args.paper, "boomerang, the paper's recipe at this budget"),
        **curves(args.previous, "boomerang, the previous quick default"),
        **(curves(args.long, LONG) if args.long else {}),
    }
    table = pd.DataFrame(lines)
    table.index.name = "layers"
    main_curve, sg = table["boomerang (quick default)"], table["ShortGPT"]
    naive = table[[c for c in table if c.startswith("naive pruning")][0]]
    table["beats_shortgpt"] = main_curve < sg
    table["beats_naive"] = main_curve < naive
    table["beats_previous"] = main_curve < table["boomerang, the previous quick default"]
    table["beats_paper_recipe"] = main_curve < table["boomerang, the paper's recipe at this budget"]
    if args.long:  # against ShortGPT of its own run: the same text and arithmetic (float32 on an AVX2 CPU)
        own = curves(args.long, LONG, ("shortgpt",))["ShortGPT"]
        table[f"ShortGPT ({LONG_RUN})"] = own
        table["long_beats_shortgpt"] = table[LONG] < own
        table["long_beats_quick"] = table[LONG] < main_curve
    args.out.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out / "ppl_by_layers.csv") as tmp:
        table.round(3).to_csv(tmp)
    below_teacher = table.iloc[:-1]
    counted = ["beats_shortgpt", "beats_naive", "beats_previous", "beats_paper_recipe"]
    summary = {c: f"{int(below_teacher[c].sum())}/{len(below_teacher)}" for c in counted + long_columns(table)}
    steps = main_curve.diff().dropna()
    summary["violations"] = int((steps > 0).sum())
    if args.long:
        summary["long_violations"] = int((table[LONG].diff().dropna() > 0).sum())
    print(table.round(1).to_string())
    print(summary)
    (args.out / "summary.txt").write_text("".join(f"{k}={v}\n" for k, v in summary.items()))

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    styles = {
        "boomerang (quick default)": dict(color="C0", lw=2.5, marker="o"),
        "boomerang, the paper's recipe at this budget": dict(color="C0", ls="--", marker="."),
        "boomerang, the previous quick default": dict(color="C0", ls=":", marker="."),
        "ShortGPT": dict(color="C1", marker="s", ms=4),
        LONG: dict(color="C2", lw=2.5, marker="D", ms=4),
    }
    for name, series in lines.items():
        ax.plot(series.index, series.values, label=name, **styles.get(name, dict(color="C7", marker=".", ms=3)))
    ax.set_yscale("log")
    ax.set_ylim(15, 1000)  # naive pruning leaves the plot below 25 layers (up to ~370k at 16): see the table
    ax.set_xlabel("layers (16: the student, 30: the teacher)")
    ax.set_ylabel("WikiText-2 test token perplexity (4,096 tokens)")
    ax.set_title("SmolLM2-135M on a 2-core CPU: every size, one distillation each")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    save_figure(fig, args.figure, "quick_vs_paper")


if __name__ == "__main__":
    main()
