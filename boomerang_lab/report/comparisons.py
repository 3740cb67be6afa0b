"""Figure 4 of the paper from a study table: family members against students distilled at their own size.

The table is `benchmarks/study_figure4.py`'s csv: one row per (layers, method, seed, task, metric) with methods
`boomerang` (the family's members; the student and the teacher are its ends), `distilled` (direct students,
`direct.py`) and, where run, `laco` (laco.py).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

PPL = ("wikitext_ppl", "token_perplexity")
LAMBADA = ("lambada_openai_local", "acc")
MIN_SPREAD = 0.05
"""The smallest relative difference the Figure 4 criterion calls a difference (the seed spread when larger)."""


def read_study(path: str | Path) -> pd.DataFrame:
    return pd.read_csv(path)


def headline(table: pd.DataFrame, task: tuple[str, str] = PPL, order: str | None = None) -> pd.DataFrame:
    """One row per size, one column per method and seed (e.g. `boomerang`, `distilled s0`, `distilled s1`)."""
    rows = table[(table.task == task[0]) & (table.metric == task[1])]
    if order is not None:
        rows = rows[rows.order == order]
    label = rows.method.where(rows.method != "distilled", rows.method + " s" + rows.seed.astype(str))
    return rows.assign(model=label).pivot_table(index="layers", columns="model", values="value").sort_index()


def seed_spread(table: pd.DataFrame, order: str | None = None) -> float:
    """The criterion's threshold: the largest relative gap between two seeds of a direct student (at least 5 %)."""
    wide = headline(table, PPL, order)
    seeds = wide[[c for c in wide.columns if c.startswith("distilled s")]].dropna()
    if seeds.shape[1] < 2 or seeds.empty:
        return MIN_SPREAD
    return max(MIN_SPREAD, float((seeds.max(axis=1) / seeds.min(axis=1) - 1).max()))


def members_as(table: pd.DataFrame, order: str, member_order: str) -> pd.DataFrame:
    """The study's rows of `order` with the family's members taken from `member_order` instead (the same student
    patched in another order, beside the same direct students)."""
    others = table[(table.order == order) & (table.method != "boomerang")]
    members = table[(table.order == member_order) & (table.method == "boomerang")]
    return pd.concat([others, members], ignore_index=True).assign(order=order)


def verdict(table: pd.DataFrame, order: str | None = None, member_order: str | None = None) -> pd.DataFrame:
    """Per size with a seed-0 direct student: the member's and the direct student's perplexity, their relative
    difference and the call (matches / better / worse, by the seed spread), and LAMBADA beside it with the number
    of combined stderrs between the two. `member_order`: take the members from this order (default: `order`)."""
    if member_order is not None and member_order != order:
        table, order = members_as(table, order, member_order), None
    elif order is not None:
        table, order = table[table.order == order], None
    ppl = headline(table, PPL, order)
    spread = seed_spread(table, order)
    acc = headline(table, LAMBADA, order)
    err = table[(table.task == LAMBADA[0]) & (table.metric == LAMBADA[1])]
    rows = []
    for layers in ppl.index:
        if (
            "distilled s0" not in ppl
            or "boomerang" not in ppl
            or ppl.loc[layers].isna()[["boomerang", "distilled s0"]].any()
        ):
            continue
        member, direct = ppl.loc[layers, "boomerang"], ppl.loc[layers, "distilled s0"]
        gap = member / direct - 1
        row = {
            "layers": layers,
            "member_ppl": member,
            "direct_ppl": direct,
            "difference": gap,
            "call": "matches" if abs(gap) <= spread else "better" if gap < 0 else "worse",
        }
        if layers in acc.index and {"boomerang", "distilled s0"} <= set(acc.columns):
            se = err[err.layers == layers].set_index(["method", "seed"]).stderr
            a, b = acc.loc[layers, "boomerang"], acc.loc[layers, "distilled s0"]
            combined = (
                se.get(("boomerang", 0), float("nan")) ** 2 + se.get(("distilled", 0), float("nan")) ** 2
            ) ** 0.5
            stderrs = (a - b) / combined if combined > 0 else float("nan")
            row.update(member_lambada=a, direct_lambada=b, lambada_stderrs=stderrs)
        rows.append(row)
    return pd.DataFrame(rows)


def figure4(
    table: pd.DataFrame,
    order: str | None = None,
    teacher_layers: int | None = None,
    student_layers: int | None = None,
    title: str | None = None,
):
    """The paper's Figure 4 layout: the family's curve, direct students as points (one colour per seed), LaCo where
    run, teacher and student marked; WikiText-2 token perplexity (log) and LAMBADA accuracy."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, (task, panel, log_scale) in zip(
        axes, [(PPL, "WikiText-2 test token perplexity", True), (LAMBADA, "LAMBADA accuracy (64 examples)", False)]
    ):
        every = table[(table.task == task[0]) & (table.metric == task[1])]
        rows = every if order is None else every[every.order == order]
        for other, group in every[(every.method == "boomerang") & (every.order != order)].groupby("order"):
            group = group.sort_values("layers")
            ax.plot(group.layers, group.value, "o:", color="tab:cyan", ms=3, label=f"the same family, {other} order")
        fam = rows[rows.method == "boomerang"].sort_values("layers")
        name = f", {order} order" if order else ""
        ax.plot(fam.layers, fam.value, "o-", color="tab:blue", ms=4, label=f"boomerang family (zero-shot{name})")
        ends = {"student": student_layers or fam.layers.min(), "teacher": teacher_layers or fam.layers.max()}
        for name, marker in (("student", "s"), ("teacher", "*")):
            end = fam[fam.layers == ends[name]]
            ax.plot(end.layers, end.value, marker, color="black", ms=13 if marker == "*" else 8, label=name)
        direct = rows[rows.method == "distilled"]
        laco = rows[rows.method == "laco"].sort_values("layers")
        top = None
        if log_scale and len(fam):  # keep the family and the direct students readable; LaCo may be far above
            top = 1.6 * max(fam.value.max(), direct.value.max() if len(direct) else 0)
            ax.set_ylim(0.8 * min(fam.value.min(), direct.value.min() if len(direct) else fam.value.min()), top)
        if len(laco):
            shown = laco.value if top is None else laco.value.clip(upper=top / 1.15)
            above = top is not None and (laco.value > top / 1.15).any()
            ax.plot(
                laco.layers,
                shown,
                "^--" if above else "v--",
                color="tab:green",
                ms=6,
                label="LaCo (no training)" + (", above the axis:" if above else ""),
            )
            if above:
                for x, v, y in zip(laco.layers, laco.value, shown):
                    ax.annotate(
                        f"{v:.1e}", (x, y), textcoords="offset points", xytext=(0, -12), ha="center", fontsize=7
                    )
        for seed, group in direct.groupby("seed"):
            ax.errorbar(
                group.layers + 0.2 * int(seed),
                group.value,
                yerr=None if log_scale else group.stderr,
                fmt="D",
                color=("tab:orange", "tab:red", "tab:purple")[int(seed) % 3],
                ms=7,
                capsize=3,
                label=f"distilled at its size (seed {seed})",
            )
        ax.set_xlabel("layers")
        ax.set_title(panel)
        if log_scale:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.13, 1, 0.94 if title else 1))
    return fig
