"""The seed check of benchmarks/study_quick.py (its docstring states the criterion): recipe A (96 local + 64 global
steps) against B (128 global steps), seeds 0-2, on validation text, in the `local` and `last` orders.

Reads benchmarks/results/study_quick_cpu/{variants,baselines}.csv (the variants A_l96_g64[_s<seed>] and
B_g128[_s<seed>]) and writes the tables to seed_check.md next to them.

    python benchmarks/study_quick_seeds.py
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from boomerang_lab.store.atomic import atomic_write_text

OUT = Path(__file__).resolve().parent / "results" / "study_quick_cpu"
RECIPES = {"A": "A_l96_g64", "B": "B_g128"}  # variant names; seed s > 0 adds "_s<s>"


def table(variants: pd.DataFrame, shortgpt: pd.Series, order: str) -> str:
    t = variants[variants.order == order].pivot_table(index=["recipe", "seed"], columns="layers", values="ppl")
    sizes = list(t.columns)
    lines = [
        f"### `{order}` order (validation token perplexity, 16 to 29 layers)",
        "",
        "| recipe, seed | " + " | ".join(map(str, sizes)) + " | sizes where A < B | ahead of ShortGPT | violations |",
        "|---|" + "---|" * (len(sizes) + 3),
    ]
    for (recipe, seed), row in t.iterrows():
        wins = int((row < t.loc[("B", seed)]).sum()) if recipe == "A" and ("B", seed) in t.index else ""
        ahead = int((row < shortgpt.reindex(sizes)).sum())
        violations = int((np.diff(row.values) > 0).sum())
        cells = " | ".join(f"{v:.0f}" for v in row.values)
        lines.append(f"| {recipe}, {seed} | {cells} | {wins} | {ahead}/{len(sizes)} | {violations} |")
    stats = t.groupby(level="recipe").agg(["mean", "std"])
    for recipe in stats.index:
        cells = " | ".join(f"{stats.loc[recipe, (c, 'mean')]:.0f} ± {stats.loc[recipe, (c, 'std')]:.0f}" for c in sizes)
        lines.append(f"| {recipe}, mean ± sd | {cells} | | | |")
    lines.append("| ShortGPT | " + " | ".join(f"{shortgpt[c]:.0f}" for c in sizes) + " | | | |")
    return "\n".join(lines)


def main() -> None:
    rows = pd.read_csv(OUT / "variants.csv")
    pattern = re.compile(rf"^({'|'.join(RECIPES.values())})(?:_s(\d+))?$")
    parsed = rows.variant.str.extract(pattern)
    rows = rows.assign(recipe=parsed[0].map({v: k for k, v in RECIPES.items()}), seed=parsed[1].fillna("0").astype(int))
    rows = rows[rows.recipe.notna() & (rows.split == "valid") & rows.layers.between(16, 29)]
    base = pd.read_csv(OUT / "baselines.csv")
    shortgpt = base[(base.split == "valid") & (base.method == "shortgpt") & base.eval_bf16].set_index("layers").ppl
    seeds = sorted(rows.seed.unique())
    text = "\n\n".join(
        [f"# Seed check: recipes A and B, seeds {', '.join(map(str, seeds))} (`benchmarks/study_quick_seeds.py`)"]
        + [table(rows, shortgpt, order) for order in ("local", "last")]
    )
    atomic_write_text(OUT / "seed_check.md", text + "\n")
    print(text)


if __name__ == "__main__":
    main()
