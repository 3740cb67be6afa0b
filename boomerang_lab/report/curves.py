"""Size–quality curves of patch orders: how good each is (in log perplexity, against the straight line between its
ends on a log axis; monotonicity), and a figure.

The ranking a reader makes looking at the curves: a curve that climbs back up (a violation) or bulges above the
straight student–teacher line is bad; a curve lower than the line is good, never penalised. `curve_quality`'s
`score` measures that in natural-log units of the metric (for perplexity: nats of log perplexity, so 0.1 is about
10 % higher perplexity); `rank_curves` orders by it. The older `area` (|y - line| in the linear metric, as a share of
the gap) is kept beside it for comparison only: it penalised being better than the line as much as being worse.
"""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns


def curve_quality(
    table: pd.DataFrame,
    metric: str = "ppl",
    by: Sequence[str] = ("order",),
    lower_is_better: bool = True,
    x: str = "layers",
) -> pd.DataFrame:
    """One row per curve (group of `by`), its points taken in order of k (k=0 the student, the largest k the teacher).

    The size column `x` must increase with k. It is "layers" by default because "params" need not increase: a member
    mixing the student's embeddings with the teacher's tied head holds both matrices (SmolLM2: 85M student, 117-159M
    members, 135M teacher); every multi-layer block of a paper plan is 2 layers, so layers is params without that
    embedding term. With s = (size - size_student) / (size_teacher -
    size_student) in [0, 1], y = (metric - metric_teacher) / (metric_student - metric_teacher) (the share of the
    student–teacher gap left: 1 at the student, 0 at the teacher) and y(s) piecewise linear through the points:
    - violations: the number of steps k -> k+1 where the metric gets worse (strictly);
    - worst_violation: the largest such step as a share of |metric_student - metric_teacher| (0 if monotone);
    - area: the integral over s in [0, 1] of |y(s) - (1 - s)|, computed exactly (0 = the straight line);
    - signed_area: the integral of y(s) - (1 - s): > 0 means worse than the straight line, < 0 better.
    (area and signed_area: the old measure, kept for comparison; it ranks a curve below the line as "less smooth".)
    In log scale (natural log of the metric; the line straight on a log axis between the two ends, `log_line`), over
    the intermediate sizes i, with g_i = log metric_i - line(s_i) (sign flipped when higher is better, so g > 0 is
    always worse than the line):
    - above_line: the mean of max(0, g_i): how far above the line the curve is, on average (0 when it is on or below);
    - log_rise: the sum of the steps that go the wrong way, in log units (0 when monotone);
    - score = above_line + log_rise: what `rank_curves` ranks by (lower is better; 0: never above the line, monotone);
    - log_gap: the mean of g_i (< 0: below the line on balance), the tie-break between curves of score 0.
    A metric that is not positive everywhere (a KL that is 0 at the teacher) has NaN in these four columns.
    """
    missing = {*by, "k", x, metric} - set(table.columns)
    if missing:
        raise ValueError(f"curve_quality needs columns {sorted(missing)}; the table has {list(table.columns)}.")
    rows = []
    for key, curve in table.groupby(list(by), sort=False):
        curve = curve.sort_values("k")
        size, value = curve[x].to_numpy(float), curve[metric].to_numpy(float)
        if len(curve) < 2 or value[-1] == value[0] or (np.diff(size) <= 0).any():
            raise ValueError(
                f"Curve {dict(zip(by, key))} needs {x} increasing with k and end points that differ in "
                f"{metric}; got {x} {size.tolist()}, {metric} {value.tolist()}."
            )
        share = (size - size[0]) / (size[-1] - size[0])
        y = (value - value[-1]) / (value[0] - value[-1])
        sign = 1 if lower_is_better else -1
        worse = np.diff(value) * sign
        d = y - (1 - share)
        if (value > 0).all():
            log = np.log(value)
            gap = sign * (log - (log[0] + (log[-1] - log[0]) * share))[1:-1]
            above = float(np.maximum(gap, 0).mean()) if len(gap) else 0.0
            rise = float(np.maximum(np.diff(log) * sign, 0).sum())
        else:  # a metric that reaches 0 (a KL at the teacher) has no log scale: the log columns are NaN
            gap, above, rise = np.array([np.nan]), np.nan, np.nan
        rows.append(
            {
                **dict(zip(by, key)),
                "sizes": len(curve),
                "violations": int((worse > 0).sum()),
                "worst_violation": float(max(worse.max(), 0) / abs(value[0] - value[-1])),
                "area": _integral(share, np.abs(d), d),
                "signed_area": _integral(share, d),
                "above_line": above,
                "log_rise": rise,
                "score": above + rise,
                "log_gap": float(gap.mean()) if len(gap) else 0.0,
            }
        )
    return pd.DataFrame(rows)


def rank_curves(quality: pd.DataFrame, old: bool = False) -> pd.DataFrame:
    """`curve_quality`'s rows best first: by `score` (above the log line plus wrong-way log steps), then `log_gap`
    (lower on balance). `old=True`: the previous ranking, fewest violations then the smallest linear `area`."""
    keys = ["violations", "area"] if old else ["score", "log_gap"]
    return quality.sort_values(keys, kind="stable")


def _integral(x: np.ndarray, f: np.ndarray, linear: np.ndarray | None = None) -> float:
    """The exact integral of f; f = |linear| with `linear` piecewise linear on x (a kink where it changes sign)."""
    dx, f0, f1 = np.diff(x), f[:-1], f[1:]
    if linear is None:
        return float(((f0 + f1) / 2 * dx).sum())
    crossing = linear[:-1] * linear[1:] < 0
    # Across a sign change the |line| is two triangles: (f0^2 + f1^2) / (2 (f0 + f1)) per unit of x.
    segment = np.where(crossing, (f0**2 + f1**2) / np.where(crossing, 2 * (f0 + f1), 1), (f0 + f1) / 2)
    return float((segment * dx).sum())


def reference_line(
    size: Sequence[float], value: Sequence[float], points: int = 64, scale: str = "log"
) -> tuple[np.ndarray, np.ndarray]:
    """The straight student–teacher line that `curve_quality` measures against, as points to draw between the two
    ends (size[0], value[0]) and (size[-1], value[-1]): `scale="log"` (the score's line) is linear in log(value),
    the straight segment on a log axis; `scale="linear"` is the old area's line, linear in the value itself."""
    x = np.linspace(size[0], size[-1], points)
    t = (x - size[0]) / (size[-1] - size[0])
    if scale == "log":
        return x, np.exp(np.log(value[0]) + (np.log(value[-1]) - np.log(value[0])) * t)
    if scale != "linear":
        raise ValueError(f"reference_line scale {scale!r}: use 'log' or 'linear'.")
    return x, value[0] + (value[-1] - value[0]) * t


def order_curves(
    table: pd.DataFrame,
    metrics: Sequence[str] = ("ppl",),
    panel: str | None = "variant",
    by: str = "order",
    x: str = "params",
):
    """A grid of each metric against size `x` (log y where positive): one row per metric, one column per `panel`
    value, one line per `by` value, and the straight student–teacher line that curve_quality's score measures
    against (`reference_line`: linear in log(metric), the straight segment on the log axis)."""
    panels = list(dict.fromkeys(table[panel])) if panel else [None]
    lines = list(dict.fromkeys(table[by]))
    colors = dict(zip(lines, sns.color_palette("tab10", len(lines))))
    scale, xlabel = (1e6, "parameters (M)") if x == "params" else (1, x)
    fig, axes = plt.subplots(
        len(metrics), len(panels), figsize=(4.2 * len(panels), 3.4 * len(metrics)), squeeze=False, sharex="col"
    )
    for col, value in enumerate(panels):
        rows = table if panel is None else table[table[panel] == value]
        for row, metric in enumerate(metrics):
            ax = axes[row, col]
            for name, curve in rows.groupby(by, sort=False):
                curve, i = curve.sort_values("k"), lines.index(name)  # thinner lines on top: coinciding orders show
                ax.plot(
                    curve[x] / scale,
                    curve[metric],
                    marker="osD^v<>p"[i % 8],
                    ms=7 - 1.2 * (i % 4),
                    lw=3.2 - 0.7 * (i % 4),
                    color=colors[name],
                    label=name,
                )
            ends = rows.sort_values("k").groupby(by, sort=False).nth([0, -1]).drop_duplicates(x).sort_values(x)
            positive = (rows[metric] > 0).all()
            line_x, line_y = reference_line(
                ends[x].to_numpy(float), ends[metric].to_numpy(float), scale="log" if positive else "linear"
            )
            ax.plot(line_x / scale, line_y, ls="--", lw=1, color="gray", zorder=0, label="straight line")
            ax.set(
                yscale="log" if positive else "linear",
                ylabel=metric,
                title=value if row == 0 and panel else None,
                xlabel=xlabel if row == len(metrics) - 1 else None,
            )
            ax.grid(alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False)
    fig.tight_layout(rect=(0, 0.08 if len(metrics) == 1 else 0.05, 1, 1))
    return fig
