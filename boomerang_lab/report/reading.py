"""Reading cells rendered from the values a notebook computed, so that every number its prose quotes is one it shows.

A notebook's "Reading the result" is a code cell ending in `reading(...)`: Markdown built with f-strings from the
tables above it, formatted by `num` (the rounding the prose shows) and `share` ("at 11 of 14 sizes" / "at every
size"). tests/test_notebooks.py checks the other direction: a number written into a Markdown cell must appear in
that notebook's outputs.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from IPython.display import Markdown


def num(value: float, digits: int = 3) -> str:
    """`value` to `digits` significant figures (never fewer than its integer digits), with thousands separators:
    23.1, 0.934, 1,115, 368,794."""
    value = float(value)
    if not math.isfinite(value):
        return str(value)
    if value == 0:
        return "0"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    return f"{value:,.{decimals}f}"


def share(count: int, total: int, noun: str = "sizes") -> str:
    """ "every one of the 14 sizes", "none of the 14 sizes" or "11 of 14 sizes"."""
    if count == total:
        return f"every one of the {total} {noun}"
    if count == 0:
        return f"none of the {total} {noun}"
    return f"{count} of {total} {noun}"


TEACHERS = {
    "smollm2-135m": "SmolLM2-135M-Instruct, dequantised from a Q4_1 GGUF",
    "smollm2-tiny-random": "a tiny random SmolLM2-shaped model (smoke test)",
}
"""What an embedded teacher name is, said precisely wherever a reader compares its numbers with published ones (the
embedded `smollm2-135m` is the Instruct model, dequantised from 4-bit weights, not the base model)."""


def teacher_label(name: str) -> str:
    """The teacher named as what it is: "SmolLM2-135M-Instruct, dequantised from a Q4_1 GGUF" for `smollm2-135m`;
    any other name (a hub id, a path) as given."""
    return TEACHERS.get(str(name), f"`{name}`")


def direction(start: float, end: float, within: float = 0.0) -> str:
    """The word for how a value moved from `start` to `end`: "rose", "fell", or "stayed within ±`within`" when
    |end - start| <= within (an absolute tolerance: the noise the reader should ignore)."""
    delta = float(end) - float(start)
    if abs(delta) <= within:
        return f"stayed within ±{num(within)}"
    return "rose" if delta > 0 else "fell"


def moved(start: float, end: float, within: float = 0.0, digits: int = 3) -> str:
    """ "rose from 0.0993 to 0.102", "fell from 7.09 to 4.44" or "stayed within ±0.01 (0.0993 to 0.0995)"."""
    word = direction(start, end, within)
    span = f"{num(start, digits)} to {num(end, digits)}"
    return f"{word} ({span})" if word.startswith("stayed") else f"{word} from {span}"


def lower_at(a: pd.Series, b: pd.Series, noun: str = "sizes") -> str:
    """ "lower at 13 of 13 sizes" (or "... at none of the 13 sizes"): where `a` < `b`, over the index values both
    have (NaN on either side left out)."""
    both = pd.concat([pd.Series(a), pd.Series(b)], axis=1).dropna()
    count, total = int((both.iloc[:, 0] < both.iloc[:, 1]).sum()), len(both)
    if count == 0:
        return f"lower at none of the {total} {noun}"
    return f"lower at {count} of {total} {noun}"


def ranked(values: pd.Series, lower_is_better: bool = True) -> str:
    """The index labels of `values` from best to worst, joined by " < " (lower is better) or " > ": "a < b < c"."""
    order = values.sort_values(ascending=lower_is_better)
    return (" < " if lower_is_better else " > ").join(str(i) for i in order.index)


def reading(*bullets: str) -> Markdown:
    """The reading as a Markdown bullet list (empty bullets are left out)."""
    return Markdown("\n".join(f"- {b}" for b in bullets if b))


TERMS = ("local_nmse", "local_cos", "ce", "kl", "cos")
"""The loss terms a training log may hold, in the order the stages log them."""


def loss_table(log: pd.DataFrame | str | Path, smooth: int = 10) -> pd.DataFrame:
    """Each stage's loss terms, smoothed as `plots.loss_curves` draws them (a centred moving average over `smooth`
    steps): rows (stage, term); columns steps and tokens (of the stage), start and end (the smoothed first and last
    values) and last_quarter (the smoothed change over the stage's last quarter of steps; < 0: still falling)."""
    log = pd.read_csv(log) if isinstance(log, (str, Path)) else log
    stages = log.groupby("stage", sort=False) if "stage" in log else [("global", log)]
    rows = []
    for stage, part in stages:
        part = part.sort_values("step")
        quarter = part.step >= part.step.max() - len(part) // 4
        tokens = int(part.tokens_seen.max()) if "tokens_seen" in part else None
        for term in TERMS:
            if term not in part or part[term].isna().all():
                continue
            y = part[term].astype(float).rolling(smooth, min_periods=1, center=True).mean()
            rows.append(
                {
                    "stage": stage,
                    "term": term,
                    "steps": int(part.step.max()),
                    "tokens": tokens,
                    "start": y.iloc[0],
                    "end": y.iloc[-1],
                    "last_quarter": y.iloc[-1] - y[quarter].iloc[0],
                }
            )
    if not rows:
        raise ValueError(f"The training log has none of the terms {TERMS}; it has {list(log.columns)}.")
    return pd.DataFrame(rows).set_index(["stage", "term"])
