"""Figure 4 as the budget grows (`benchmarks/study_budget.py`): members against direct students, inside and outside
the training corpus.

The table has one row per (budget, method, layers, text, stretch): `method` is `member` (the family's member in its
`klpatch` order), `direct` (a student distilled at that size) or `teacher`; `text` is `wikitext_test` (outside the
corpus), `corpus_held_out` (the corpus's held-out tail: inside) or `lambada` (accuracy); perplexity rows carry the
summed negative log-likelihood (`nll`) and the scored tokens, so the three stretches of a text pool exactly.
"""

from __future__ import annotations

import math

import pandas as pd

MARGIN = 0.05
"""The study's threshold: a gap within +-5 % "closes"; beyond it the member is better or worse."""

TEXT_TITLES = {
    "wikitext_test": "outside: WikiText-2 test",
    "corpus_held_out": "inside: held-out corpus text",
    "lambada": "outside: LAMBADA",
}


def seeded(table: pd.DataFrame) -> pd.DataFrame:
    """`table` with a `seed` column (0 where it has none): a table of one seed may omit it."""
    return table if "seed" in table.columns else table.assign(seed=0)


def seeds(table: pd.DataFrame) -> list[int]:
    """The distillation seeds the table's models were trained with (the teacher's rows aside)."""
    t = seeded(table)
    return sorted(int(x) for x in set(t[t.method != "teacher"].seed))


def one_seed(table: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """The rows of the models distilled with `seed`, and the teacher's (which no seed trains)."""
    t = seeded(table)
    return t[(t.seed == seed) | (t.method == "teacher")]


def pooled(table: pd.DataFrame) -> pd.DataFrame:
    """Token perplexity pooled over each text's stretches (exp of summed NLL over summed tokens), LAMBADA accuracy
    as it is; one row per (budget, train_tokens, method, layers, seed, text) with `value`, `lo` and `hi` (the
    stretches' range; LAMBADA: +-1 stderr). Seeds are never pooled together: each is its own model."""
    table = seeded(table)
    ppl = table[table.metric == "token_perplexity"]
    keys = ["budget", "train_tokens", "method", "layers", "seed", "text"]
    grouped = ppl.groupby(keys, as_index=False).agg(nll=("nll", "sum"), scored=("scored", "sum"))
    grouped["value"] = (grouped.nll / grouped.scored).map(math.exp)
    spread = ppl.groupby(keys, as_index=False).value.agg(lo="min", hi="max")
    grouped = grouped.merge(spread, on=keys)[[*keys, "value", "lo", "hi"]]
    acc = table[table.metric == "acc"][[*keys, "value", "stderr"]]
    acc = acc.assign(lo=acc.value - acc.stderr, hi=acc.value + acc.stderr).drop(columns="stderr")
    return pd.concat([grouped, acc], ignore_index=True)


def gaps(table: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Per (budget, layers, text) with both a member and a direct student of `seed`: their values and the gap.
    Perplexity: member / direct - 1 pooled, with the smallest and largest per-stretch gap; LAMBADA: member - direct
    accuracy and the number of combined stderrs between them. `call` reads the gap by the study's criterion."""
    table = one_seed(table, seed)
    rows = []
    perp = table[table.metric == "token_perplexity"]
    for (budget, layers, text), cell in pooled(table).groupby(["budget", "layers", "text"]):
        by = cell.set_index("method")
        if not {"member", "direct"} <= set(by.index):
            continue
        member, direct = by.loc["member", "value"], by.loc["direct", "value"]
        row = {
            "budget": budget,
            "train_tokens": by.loc["direct", "train_tokens"],
            "layers": layers,
            "seed": seed,
            "text": text,
        }
        if text == "lambada":
            both = table[(table.budget == budget) & (table.layers == layers) & (table.text == text)]
            err = math.hypot(*both.set_index("method").loc[["member", "direct"], "stderr"])
            diff = member - direct
            call = "matches" if abs(diff) <= 2 * err else ("better" if diff > 0 else "worse")
            row |= {"member": member, "direct": direct, "gap": diff, "gap_lo": math.nan, "gap_hi": math.nan}
            row |= {"stderrs": diff / err if err else math.nan, "call": call}
        else:
            s = perp[(perp.budget == budget) & (perp.layers == layers) & (perp.text == text)]
            wide = s.pivot_table(index="stretch", columns="method", values="value")
            per = wide.member / wide.direct - 1
            gap = member / direct - 1
            call = "closes" if abs(gap) <= MARGIN else ("member better" if gap < 0 else "member worse")
            row |= {"member": member, "direct": direct, "gap": gap, "gap_lo": per.min(), "gap_hi": per.max()}
            row |= {"stderrs": math.nan, "call": call}
        rows.append(row)
    if not rows:
        return pd.DataFrame(columns=["budget", "train_tokens", "layers", "seed", "text", "member", "direct", "gap"])
    return pd.DataFrame(rows).sort_values(["text", "layers", "budget"]).reset_index(drop=True)


def seed_gaps(table: pd.DataFrame) -> pd.DataFrame:
    """The gap of every seed at each (budget, layers, text) that more than one seed measured: one row per cell with
    the gap and call of each seed (`gap_s{seed}`, `call_s{seed}`), their spread (largest minus smallest gap) and
    whether every seed makes the same call (`agree`)."""
    ss = seeds(table)
    if len(ss) < 2:
        return pd.DataFrame()
    g = pd.concat([gaps(table, s) for s in ss], ignore_index=True)
    rows = []
    for (budget, layers, text), cell in g.groupby(["budget", "layers", "text"]):
        if cell.seed.nunique() < 2:
            continue
        row = {"budget": budget, "train_tokens": cell.train_tokens.iloc[0], "layers": layers, "text": text}
        for r in cell.sort_values("seed").itertuples():
            row |= {f"gap_s{r.seed}": r.gap, f"call_s{r.seed}": r.call}
        row |= {"spread": cell.gap.max() - cell.gap.min(), "agree": cell.call.nunique() == 1}
        rows.append(row)
    return pd.DataFrame(rows)


def forgetting(table: pd.DataFrame, method: str = "direct", seed: int = 0) -> pd.DataFrame:
    """Per size and pair of consecutive budgets: how `method`'s pooled perplexity moved inside and outside the
    corpus (relative change) and the outside change on each stretch. `forgetting` is the paper's pattern: better
    inside, worse outside on every stretch (a rise the stretch-to-stretch spread cannot explain); `ruled_out`: worse
    on no outside stretch. Models of `seed` only."""
    table = one_seed(table, seed)
    p = pooled(table)
    p = p[(p.method == method) & (p.text != "lambada")]
    s = table[(table.method == method) & (table.text == "wikitext_test")]
    rows = []
    for layers, cell in p.groupby("layers"):
        wide = cell.pivot_table(index="budget", columns="text", values="value").sort_index()
        per = s[s.layers == layers].pivot_table(index="budget", columns="stretch", values="value")
        budgets = list(wide.index)
        for a, b in zip(budgets, budgets[1:]):
            inside = wide.loc[b, "corpus_held_out"] / wide.loc[a, "corpus_held_out"] - 1
            outside = wide.loc[b, "wikitext_test"] / wide.loc[a, "wikitext_test"] - 1
            each = per.loc[b] / per.loc[a] - 1
            rows.append(
                {
                    "method": method,
                    "layers": layers,
                    "from_budget": a,
                    "to_budget": b,
                    "inside_change": inside,
                    "outside_change": outside,
                    "outside_change_min": each.min(),
                    "outside_change_max": each.max(),
                    "forgetting": bool(inside < 0 and each.min() > 0),
                    "ruled_out": bool(each.max() < 0),
                }
            )
    return pd.DataFrame(rows)


def versus_teacher(table: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Each model's (of `seed`) pooled perplexity over the teacher's on the same text, minus 1, inside and outside
    the corpus: how much of the teacher's quality a model lost where it was trained and where it was not."""
    p = pooled(one_seed(table, seed))
    p = p[p.text != "lambada"]
    teacher = p[p.method == "teacher"].set_index("text").value
    rows = p[p.method != "teacher"].copy()
    rows["over_teacher"] = rows.value / rows.text.map(teacher) - 1
    wide = rows.pivot_table(index=["budget", "method", "layers"], columns="text", values="over_teacher")
    return wide.rename(columns={"wikitext_test": "outside", "corpus_held_out": "inside"}).reset_index()


METHOD_NAMES = {"member": "members", "direct": "direct students"}


def ran(table: pd.DataFrame) -> dict[str, dict[int, list[int]]]:
    """What the table holds, per method (members first, then direct students): {budget: the sizes (layers) run at
    that budget}."""
    out = {}
    for method in METHOD_NAMES:
        part = table[table.method == method]
        out[method] = {int(b): sorted(int(n) for n in set(g.layers)) for b, g in part.groupby("budget")}
    return {m: budgets for m, budgets in out.items() if budgets}


def ran_text(table: pd.DataFrame) -> str:
    """What ran, in words: "members at 1x (16, 20, 23, 26 layers) and 2x (16, 20, 26 layers); direct students at 1x
    (26 layers)"."""
    return "; ".join(
        f"{METHOD_NAMES[method]} at "
        + " and ".join(f"{b}x ({', '.join(map(str, layers))} layers)" for b, layers in budgets.items())
        for method, budgets in ran(table).items()
    )


def figure_title(table: pd.DataFrame, context: str = "") -> str:
    """The figure's title, said from what the table holds: "Members vs direct students as the budget grows" only
    when both were run at more than one budget; otherwise the budgets each was run at and the direct students'
    sizes, e.g. "Members at 1x, 2x vs direct students at 1x (26 layers; `context`)"."""
    r = ran(table)
    members, direct = r.get("member", {}), r.get("direct", {})
    notes = [context] if context else []
    ss = seeds(table)
    if len(ss) > 1:
        notes.append(
            f"lines seed {ss[0]}, hollow markers seed{'s' if len(ss) > 2 else ''} {', '.join(map(str, ss[1:]))}"
        )
    elif ss:
        notes.append(f"seed {ss[0]}")
    if len(members) > 1 and len(direct) > 1:
        text = "Members vs direct students as the budget grows"
    else:
        text = (
            f"Members at {', '.join(f'{b}x' for b in members) or 'no budget'} vs direct students at "
            f"{', '.join(f'{b}x' for b in direct) or 'no budget'}"
        )
        sizes = sorted({n for layers in direct.values() for n in layers})
        notes = ([f"{', '.join(map(str, sizes))} layers"] if sizes else []) + notes
    return f"{text} ({'; '.join(notes)})" if notes else text


def figure(table: pd.DataFrame, title: str | None = None):
    """Top row: the member-minus-direct gap against training tokens, one line per size, one panel per text (the
    per-stretch range as a band; LAMBADA: accuracy difference, +-2 combined stderrs as a band). Bottom row: each
    model's pooled value (members solid, direct students dashed, the teacher as a grey line). Lines are seed 0; the
    gaps of other seeds, where the table has them, are hollow markers beside their budget."""
    import matplotlib.pyplot as plt

    g = gaps(table)
    others = [gaps(table, s) for s in seeds(table) if s != 0]
    p = pooled(one_seed(table, 0))
    texts = [t for t in TEXT_TITLES if t in set(p.text)]
    fig, axes = plt.subplots(2, len(texts), figsize=(4.6 * len(texts), 7.2), squeeze=False)
    sizes = sorted(set(p[p.method != "teacher"].layers))
    colors = dict(zip(sizes, plt.cm.viridis([i / max(1, len(sizes) - 1) * 0.85 for i in range(len(sizes))])))
    for col, text in enumerate(texts):
        ax = axes[0, col]
        cell = g[g.text == text]
        for layers, rows in cell.groupby("layers"):
            rows = rows.sort_values("train_tokens")
            y = rows.gap * (100 if text != "lambada" else 1)
            ax.plot(rows.train_tokens, y, "o-", color=colors[layers], label=f"{layers} layers")
            if text != "lambada":
                ax.fill_between(
                    rows.train_tokens, rows.gap_lo * 100, rows.gap_hi * 100, color=colors[layers], alpha=0.15
                )
            else:
                err = (rows.gap / rows.stderrs).abs() * 2
                ax.fill_between(rows.train_tokens, rows.gap - err, rows.gap + err, color=colors[layers], alpha=0.15)
        for other in others:
            for layers, rows in other[other.text == text].groupby("layers"):
                ax.plot(
                    rows.train_tokens,
                    rows.gap * (100 if text != "lambada" else 1),
                    "o",
                    mfc="none",
                    color=colors.get(layers, "black"),
                    label=f"{layers} layers, seed {rows.seed.iloc[0]}",
                )
        ax.axhline(0, color="black", lw=0.8)
        if text != "lambada":
            ax.axhspan(-MARGIN * 100, MARGIN * 100, color="grey", alpha=0.12, lw=0)
        ax.set_xscale("log")
        ax.set_title(TEXT_TITLES[text])
        ax.set_xlabel("training tokens")
        ax.set_ylabel(
            "member / direct - 1 (%, token perplexity)" if text != "lambada" else "member - direct (accuracy)"
        )
        ax.legend(fontsize=8)
        ax = axes[1, col]
        cell = p[p.text == text]
        teacher = cell[cell.method == "teacher"]
        for layers in sizes:
            for method, style in (("member", "o-"), ("direct", "s--")):
                rows = cell[(cell.layers == layers) & (cell.method == method)].sort_values("train_tokens")
                if len(rows):
                    ax.plot(rows.train_tokens, rows.value, style, color=colors[layers], label=f"{method} {layers}L")
        if len(teacher):
            ax.axhline(teacher.value.iloc[0], color="grey", ls=":", label="teacher")
        ax.set_xscale("log")
        if text != "lambada":
            ax.set_yscale("log")
        ax.set_xlabel("training tokens")
        ax.set_ylabel("token perplexity (pooled)" if text != "lambada" else "accuracy")
        ax.legend(fontsize=7, ncol=2)
    fig.suptitle(title or figure_title(table))
    fig.tight_layout()
    return fig


PAPER_TOKENS = 2.1e9
"""The paper's distillation budget (500 steps x 2,048 sequences x 2,048 tokens)."""


def crossing(g: pd.DataFrame, text: str = "wikitext_test") -> pd.DataFrame:
    """Per size, a straight line through the budgets measured (least squares) of log(member / direct) against
    log10(training tokens): its slope (the gap's change per tenfold budget, as a ratio), the budget where it would
    reach 0 (the crossing) and the gap it gives at the paper's 2.1B tokens. An extrapolation from few points, not a
    measurement."""
    import numpy as np

    rows = []
    for layers, cell in g[g.text == text].groupby("layers"):
        if cell.budget.nunique() < 2:
            continue
        x, y = np.log10(cell.train_tokens.astype(float)), np.log1p(cell.gap.astype(float))
        slope, intercept = np.polyfit(x, y, 1)
        cross = 10 ** (-intercept / slope) if slope < 0 and intercept > 0 else math.nan
        at_paper = math.expm1(slope * math.log10(PAPER_TOKENS) + intercept)
        slope = math.expm1(slope)
        rows.append(
            {
                "layers": layers,
                "points": len(cell),
                "slope_per_10x": slope,
                "crossing_tokens": cross,
                "gap_at_paper_tokens": at_paper,
            }
        )
    return pd.DataFrame(rows)


def tokens(n: float) -> str:
    """82k, 327k, 1.3M, 2.1B."""
    from .reading import num

    for unit, scale in (("B", 1e9), ("M", 1e6)):
        if n >= scale:
            return f"{num(n / scale, 2)}{unit}"
    return f"{round(n / 1e3):,}k"


def _pct(gap: float) -> str:
    from .reading import num

    return f"{num(abs(gap) * 100, 2)} % {'worse' if gap > 0 else 'better'}"


def budget_reading(table: pd.DataFrame) -> list[str]:
    """The study's answer as bullets, every number and comparison word taken from `table`."""
    from .reading import num

    g, bullets = gaps(table), []
    for text in ("wikitext_test", "corpus_held_out"):
        cell = g[g.text == text]
        for layers, rows in cell.groupby("layers"):
            rows = rows.sort_values("train_tokens")
            steps = "; ".join(f"{_pct(r.gap)} at {tokens(r.train_tokens)} tokens ({r.call})" for r in rows.itertuples())
            trend = ""
            if len(rows) > 1:
                first, last = rows.gap.iloc[0], rows.gap.iloc[-1]
                moved = "narrowed" if abs(last) < abs(first) else "widened"
                trend = f": the gap {moved} from {num(first * 100, 2)} % to {num(last * 100, 2)} %"
            bullets.append(f"**{TEXT_TITLES[text]}, {layers} layers**: the member is {steps}{trend}.")
    bullets += _seed_bullets(table)
    v = versus_teacher(table)
    for r in v[v.layers.isin(set(g.layers))].itertuples():
        if not (math.isfinite(r.inside) and math.isfinite(r.outside)):
            continue
        where = "outside" if r.outside > r.inside else "inside"

        def side(x: float, text: str) -> str:
            return f"{num(abs(x) * 100, 2)} % {'above' if x >= 0 else 'below'} the teacher's perplexity {text}"

        better = [text for text, x in (("inside the corpus", r.inside), ("outside", r.outside)) if x < 0]
        bullets.append(
            f"**Against the teacher, {r.method} at {r.layers} layers, {r.budget}x**: "
            f"{side(r.inside, 'inside the corpus')}, {side(r.outside, 'outside')}: "
            + (f"it is better than the teacher {' and '.join(better)}." if better else f"it lost more {where}.")
        )
    f = forgetting(table)
    for r in f.itertuples():
        pattern = (
            "the forgetting pattern (better inside, worse outside on every stretch)"
            if r.forgetting
            else ("no forgetting: better outside on every stretch" if r.ruled_out else "no clear pattern")
        )
        bullets.append(
            f"**Forgetting, direct student at {r.layers} layers**, {r.from_budget}x to {r.to_budget}x: inside "
            f"{num(r.inside_change * 100, 2)} %, outside {num(r.outside_change * 100, 2)} % (stretches "
            f"{num(r.outside_change_min * 100, 2)} % to {num(r.outside_change_max * 100, 2)} %): {pattern}."
        )
    m = forgetting(table, "member")
    for r in m.itertuples():
        bullets.append(
            f"**Members at {r.layers} layers**, {r.from_budget}x to {r.to_budget}x: inside "
            f"{num(r.inside_change * 100, 2)} %, outside {num(r.outside_change * 100, 2)} %."
        )
    outside = g[g.text == "wikitext_test"]
    for layers, rows in outside.groupby("layers"):
        if rows.budget.nunique() < 2:
            bullets.append(
                f"**Not answered at {layers} layers**: the gap is measured at one budget only "
                f"({tokens(rows.train_tokens.iloc[0])} tokens), so whether it closes, crosses or stays as the budget "
                f"grows, and whether forgetting drives it, is left open; no trend is extrapolated."
            )
    c = crossing(g)
    for r in c.itertuples():
        where = (
            f"reaches 0 near {tokens(r.crossing_tokens)} tokens"
            if math.isfinite(r.crossing_tokens)
            else "does not reach 0 on that line"
        )
        bullets.append(
            f"**Extrapolated, {r.layers} layers (outside)**: a straight line in log tokens through {r.points} "
            f"budgets multiplies member / direct by {num(1 + r.slope_per_10x, 3)} per tenfold budget and {where}; at "
            f"the paper's 2.1B tokens it would read {num(r.gap_at_paper_tokens * 100, 2)} % (a line through "
            f"{r.points} points, not a measurement)."
        )
    return bullets


def _seed_bullets(table: pd.DataFrame) -> list[str]:
    """Where a second seed (data order) was run: each seed's gap at the cells both measured, whether their calls
    agree, and whether the gap moved the same way across those budgets in every seed."""
    from .reading import num

    sg = seed_gaps(table)
    if not len(sg):
        return []
    sg = sg[sg.text != "lambada"]
    ss = [int(c[len("gap_s") :]) for c in sg.columns if c.startswith("gap_s")]
    bullets = []
    for (text, layers), cell in sg.groupby(["text", "layers"], sort=False):
        cell = cell.sort_values("train_tokens")
        each = "; ".join(
            f"{tokens(r['train_tokens'])} tokens: "
            + ", ".join(f"{_pct(r[f'gap_s{s}'])} (seed {s})" for s in ss)
            + (" (every seed makes the same call)" if r["agree"] else " (the seeds' calls differ)")
            for _, r in cell.iterrows()
        )
        trend = ""
        if len(cell) > 1:
            moves = {s: cell[f"gap_s{s}"].iloc[-1] - cell[f"gap_s{s}"].iloc[0] for s in ss}
            same = len({m < 0 for m in moves.values()}) == 1
            trend = (
                f"; from {tokens(cell.train_tokens.iloc[0])} to {tokens(cell.train_tokens.iloc[-1])} tokens the gap "
                + ", ".join(
                    f"{'narrowed' if m < 0 else 'widened'} by {num(abs(m) * 100, 2)} points (seed {s})"
                    for s, m in moves.items()
                )
                + (": the same direction in every seed" if same else ": the seeds disagree on the direction")
            )
        bullets.append(
            f"**{len(ss)} seeds, {TEXT_TITLES[text]}, {layers} layers** (data order; seed-to-seed spread up to "
            f"{num(cell.spread.max() * 100, 2)} points): {each}{trend}."
        )
    for s in ss[1:]:
        for r in forgetting(table, seed=s).itertuples():
            bullets.append(
                f"**Seed {s}, direct student at {r.layers} layers**, {r.from_budget}x to {r.to_budget}x: inside "
                f"{num(r.inside_change * 100, 2)} %, outside {num(r.outside_change * 100, 2)} % (stretches "
                f"{num(r.outside_change_min * 100, 2)} % to {num(r.outside_change_max * 100, 2)} %)."
            )
    return bullets
