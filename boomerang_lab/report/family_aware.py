"""The family-aware global stage against the quick recipe (`benchmarks/study_family_aware.py`): pooled perplexity per
family member, the study's criterion, stated before its runs, applied to the table, and its figure.

The table has one row per (recipe, seed, method, layers, stretch): `method` is `member` (a family's member in its
own `klpatch` order), `shortgpt`, `naive`, `direct` (a student distilled at that size) or `teacher`; `recipe` is
`quick` or `family_aware` for members and naive pruning; each row carries the summed NLL and the scored tokens, so
that stretches pool exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

STRETCHES = 3
"""A model's score is pooled over this many disjoint stretches of WikiText-2 test; fewer is not scored."""
STUDENT_MARGIN = 0.05
"""The student itself may not get worse by more than this (family-aware / quick - 1)."""
WIN_SIZES = 10
"""Better (or worse) in every seed at this many of the 13 intermediate sizes decides the verdict."""
DIRECT_MARGIN = 0.05
"""A member "as good as" a direct student: within +5 % (the floor of study_figure4.py)."""
RECIPES = {"quick": "quick", "family_aware": "family-aware"}


def pooled(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (recipe, seed, method, layers): pooled token perplexity `ppl` (exp of summed NLL over summed
    tokens), the number of stretches behind it, and the distillation's seconds."""
    g = table.groupby(["recipe", "seed", "method", "layers"], dropna=False)
    out = g.agg(
        nll=("nll", "sum"),
        scored=("scored", "sum"),
        k=("k", "first"),
        seconds=("distill_seconds", "first"),
        cpu=("distill_cpu_seconds", "first"),
        steps=("global_steps", "first"),
    )
    out["ppl"] = (out.nll / out.scored).map(math.exp)
    out["stretches"] = g.size()
    return out.reset_index()


def complete(table: pd.DataFrame) -> pd.DataFrame:
    """`pooled` rows scored on every stretch."""
    p = pooled(table)
    return p[p.stretches == STRETCHES]


def members(table: pd.DataFrame) -> pd.DataFrame:
    """Member perplexity by layers (rows) and (recipe, seed) (columns), complete families only."""
    p = complete(table)
    wide = p[p.method == "member"].pivot_table(index="layers", columns=["recipe", "seed"], values="ppl")
    return wide.dropna(axis=1)


@dataclass
class Verdict:
    """The criterion applied: counts per size, the student's change, ShortGPT and direct-student comparisons."""

    seeds: list[int]
    sizes: int  # intermediate sizes compared (1..13)
    better: int  # family-aware better in every seed
    worse: int  # family-aware worse in every seed
    student: dict[int, float]  # seed -> family-aware / quick - 1 at the student's size
    ahead: dict[tuple[str, int], int]  # (recipe, seed) -> sizes below ShortGPT
    of_sizes: int  # sizes compared with ShortGPT
    direct: dict[int, dict[tuple[str, int], float]] = field(default_factory=dict)  # layers -> (recipe, seed) -> gap
    seconds: dict[tuple[str, int], tuple[float, float, int]] = field(default_factory=dict)  # wall, CPU, steps

    @property
    def call(self) -> str:
        if not self.seeds:
            return "NONE"
        ahead_fa = sum(v for (r, s), v in self.ahead.items() if r == "family_aware" and s in self.seeds)
        ahead_q = sum(v for (r, s), v in self.ahead.items() if r == "quick" and s in self.seeds)
        if self.better >= WIN_SIZES and all(v <= STUDENT_MARGIN for v in self.student.values()) and ahead_fa >= ahead_q:
            return "WIN"
        if self.worse >= WIN_SIZES or all(v > STUDENT_MARGIN for v in self.student.values()):
            return "LOSS"
        return "DRAW"


def verdict(table: pd.DataFrame) -> Verdict:
    """The study's criterion (stated in benchmarks/study_family_aware.py before the runs) on the complete rows."""
    p = complete(table)
    wide = members(table)
    short = p[p.method == "shortgpt"].set_index("layers").ppl
    direct = p[p.method == "direct"].set_index("layers").ppl
    seeds = sorted({s for r, s in wide.columns if r == "family_aware"} & {s for r, s in wide.columns if r == "quick"})
    student_layers = wide.index.min() if len(wide) else None  # k = 0; members run k = 0..K-1 (the teacher apart)
    inner = [n for n in wide.index if n != student_layers]

    def every(better) -> int:
        return sum(
            all(better(wide.loc[n, ("family_aware", s)], wide.loc[n, ("quick", s)]) for s in seeds) for n in inner
        )

    compared = [n for n in wide.index if n in short.index]
    v = Verdict(
        seeds=seeds,
        sizes=len(inner),
        better=every(lambda a, b: a < b) if seeds else 0,
        worse=every(lambda a, b: a > b) if seeds else 0,
        student={
            s: wide.loc[student_layers, ("family_aware", s)] / wide.loc[student_layers, ("quick", s)] - 1 for s in seeds
        },
        ahead={(r, s): int((wide.loc[compared, (r, s)] < short[compared]).sum()) for r, s in wide.columns},
        of_sizes=len(compared),
    )
    for n in direct.index:
        if n in wide.index:
            v.direct[int(n)] = {(r, s): wide.loc[n, (r, s)] / direct[n] - 1 for r, s in wide.columns}
    m = p[p.method == "member"].groupby(["recipe", "seed"])[["seconds", "cpu", "steps"]].first()
    v.seconds = {(r, s): (w, c, st) for (r, s), (w, c, st) in m.iterrows()}
    return v


def _pct(x: float) -> str:
    return f"{x:+.1%}"


def reading(table: pd.DataFrame) -> list[str]:
    """The verdict in sentences, every number from the table."""
    v = verdict(table)
    if not v.seeds:
        return ["**No verdict yet**: no seed has both recipes scored on every stretch."]
    seeds = ", ".join(map(str, v.seeds))
    out = [
        f"**Verdict: {v.call}** (the criterion stated before the runs; {len(v.seeds)} seed(s): {seeds}). The "
        f"family-aware members are better than the quick recipe's in every seed at {v.better} of {v.sizes} "
        f"intermediate sizes and worse in every seed at {v.worse}; a win needs {WIN_SIZES}.",
        "**The student itself** (family-aware / quick - 1): "
        + ", ".join(f"seed {s} {_pct(x)}" for s, x in v.student.items())
        + f" (allowed: up to {_pct(STUDENT_MARGIN)}).",
        f"**Ahead of ShortGPT** (sizes of {v.of_sizes} where the member is below ShortGPT's perplexity): "
        + ", ".join(f"{RECIPES[r]} seed {s}: {n}" for (r, s), n in sorted(v.ahead.items())),
    ]
    for layers, gaps in sorted(v.direct.items()):
        out.append(
            f"**{layers} layers against the direct student** (member / direct - 1; within {_pct(DIRECT_MARGIN)} "
            "counts as as good): " + ", ".join(f"{RECIPES[r]} seed {s} {_pct(g)}" for (r, s), g in sorted(gaps.items()))
        )
    p_short = complete(table)
    short = p_short[(p_short.recipe == "quick_short") & (p_short.method == "student")]
    if len(short) and 0 in v.seeds:
        q, fa, qs = wide_student(table, "quick"), wide_student(table, "family_aware"), float(short.ppl.iloc[0])
        steps = int(short.steps.iloc[0])
        out.append(
            f"**Why the student moves** (the diagnostic, seed 0): the quick recipe with the family-aware run's {steps} "
            f"global steps and no members gives a student of {qs:.1f}, against {q:.1f} with quick's own steps and "
            f"{fa:.1f} family-aware: fewer steps account for {_share(q, qs, fa)} of the family-aware student's change "
            f"in log perplexity ({_pct(fa / q - 1)} in perplexity), the member objective for the rest "
            f"({_pct(fa / qs - 1)} at equal steps)."
        )
    times = [
        f"{RECIPES[r]} seed {s}: {w:.0f} s wall"
        + (f", {c:.0f} s CPU" if c == c and c is not None else ", CPU seconds not recorded")
        + (f", {st:.0f} global steps" if st == st and st is not None else "")
        for (r, s), (w, c, st) in sorted(v.seconds.items())
    ]
    out.append("**Distillation time** (one thread each on the shared 2-core CPU): " + "; ".join(times) + ".")
    return out


def wide_student(table: pd.DataFrame, recipe: str, seed: int = 0) -> float:
    """The student's (k = 0) pooled perplexity of a recipe's family."""
    wide = members(table)
    return float(wide.loc[wide.index.min(), (recipe, seed)])


def _share(base: float, mid: float, end: float) -> str:
    """How much of the log change base -> end the step base -> mid is, as a percentage."""
    total = math.log(end / base)
    return "none" if total == 0 else f"{math.log(mid / base) / total:.0%}"


def figure(table: pd.DataFrame, title: str | None = None):
    """Member perplexity per size for each recipe and seed, with ShortGPT, naive pruning (quick seed 0's order), the
    direct students and the teacher; log scale."""
    import matplotlib.pyplot as plt

    p = complete(table)
    wide = members(table)
    fig, ax = plt.subplots(figsize=(8, 5))
    colors = {"quick": "tab:blue", "family_aware": "tab:red"}
    for r, s in wide.columns:
        ax.plot(
            wide.index,
            wide[(r, s)],
            marker="o",
            ms=3,
            color=colors[r],
            ls="-" if s == 0 else "--",
            label=f"{RECIPES[r]} members, seed {s}",
        )
    short = p[p.method == "shortgpt"].set_index("layers").ppl
    if len(short):
        ax.plot(short.index, short, color="gray", marker="s", ms=3, label="ShortGPT")
    naive = p[(p.method == "naive") & (p.recipe == "quick") & (p.seed == 0)].set_index("layers").ppl
    if len(naive):
        ax.plot(naive.index, naive, color="gray", ls=":", label="naive pruning (quick seed 0's order)")
    direct = p[p.method == "direct"].set_index("layers").ppl
    if len(direct):
        ax.scatter(
            direct.index, direct, color="black", marker="*", s=90, zorder=5, label="direct students (quick, seed 0)"
        )
    short_run = p[(p.recipe == "quick_short") & (p.method == "student")]
    if len(short_run):
        ax.scatter(
            short_run.layers,
            short_run.ppl,
            facecolors="none",
            edgecolors="tab:blue",
            s=70,
            zorder=5,
            label=f"quick, {int(short_run.steps.iloc[0])} global steps (diagnostic, seed 0)",
        )
    teacher = p[p.method == "teacher"].ppl
    if len(teacher):
        ax.axhline(float(teacher.iloc[0]), color="green", lw=0.8, label="teacher")
    ax.set_yscale("log")
    ax.set_xlabel("layers")
    ax.set_ylabel(f"WikiText-2 test token perplexity ({STRETCHES} stretches pooled)")
    ax.set_title(title or "Family-aware global stage vs the quick recipe at about equal time (40 vs 64 global steps)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
