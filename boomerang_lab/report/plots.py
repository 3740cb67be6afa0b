"""The paper's figures from the tidy results table and the distillation log, saved atomically as PNG and PDF."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from ..evaluate.sweep import read_results
from ..evaluate.tasks import NOT_COMPARABLE
from ..store.atomic import atomic_path

PRIMARY_METRIC = {
    "arc_easy": "acc",
    "arc_challenge": "acc_norm",
    "piqa": "acc_norm",
    "hellaswag": "acc_norm",
    "winogrande": "acc",
    "boolq": "acc",
    "openbookqa": "acc_norm",
    "lambada_openai": "acc",
    "rte": "acc",
    "wikitext": "word_perplexity",
    "wikitext_ppl": "token_perplexity",
}
"""The metric each benchmark is usually reported with (lm-eval leaderboards; the paper's tables); the local copies
(`<name>_local`) report the same. The kit's fast perplexity (`wikitext_ppl`) is read as token perplexity, the one
every notebook quotes; lm-eval's `wikitext` keeps its word perplexity."""
FALLBACK_METRICS = ("acc_norm", "acc", "word_perplexity", "perplexity")
MAIN_METHOD = "boomerang"
LOSS_TERMS = ("loss", "local_nmse", "local_cos", "ce", "kl", "cos", "lr")
"""What `loss_curves` draws, one panel each when logged: the total, every loss term a stage logs (`reading.TERMS`) and
the learning rate."""
KEY = ["teacher", "student", "method", "order", "k", "task", "metric"]
X_AXES = {"params": ("parameters (M)", 1e-6), "layers": ("layers", 1)}
"""What a size axis can show: column -> (label, scale)."""
FORMATS = ("png", "pdf")


# --- the results table -------------------------------------------------------------------------------------------
def latest(results: pd.DataFrame | str | Path) -> pd.DataFrame:
    """The results table with only the newest row of each (teacher, student, method, order, k, task, metric)."""
    frame = read_results(results) if isinstance(results, (str, Path)) else results
    missing = {*KEY, "params", "value"} - set(frame.columns)
    if missing:
        raise ValueError(f"The results table lacks columns {sorted(missing)}; it has {list(frame.columns)}.")
    if "timestamp" in frame.columns:
        frame = frame.sort_values("timestamp", kind="stable")
    return frame.drop_duplicates(KEY, keep="last").reset_index(drop=True)


def primary_metric(results: pd.DataFrame, task: str) -> str:
    """The metric `task` is reported with: PRIMARY_METRIC, else the first of FALLBACK_METRICS present."""
    present = set(results.loc[results.task == task, "metric"])
    if not present:
        raise ValueError(f"No results for task {task!r}; tasks present: {sorted(set(results.task))}.")
    for metric in (PRIMARY_METRIC.get(task.removesuffix("_local")), *FALLBACK_METRICS):
        if metric in present:
            return metric
    return sorted(present)[0]


def task_title(task: str) -> str:
    """A panel's title: the stock name, marked where the local copy's prompts differ from stock (NOT_COMPARABLE)."""
    return task.removesuffix("_local") + (" (not comparable with stock)" if task in NOT_COMPARABLE else "")


def lower_is_better(metric: str) -> bool:
    return "perplexity" in metric or metric in ("bits_per_byte", "loss")


def curve_labels(results: pd.DataFrame) -> pd.Series:
    """One label per curve: the method, plus the order where a method was run with several orders."""
    orders = results.groupby("method")["order"].nunique()
    multi = results.method.map(orders) > 1
    return results.method.where(~multi, results.method + " (" + results.order.astype(str) + ")")


def average_accuracy(results: pd.DataFrame, tasks: list[str] | None = None) -> pd.DataFrame:
    """Mean primary accuracy over `tasks` (default: every accuracy task) per curve and size, as task "average"."""
    results = latest(results)
    tasks = tasks or sorted(t for t in set(results.task) if primary_metric(results, t).startswith("acc"))
    if not tasks:
        raise ValueError("No accuracy tasks in the results table to average.")
    rows = pd.concat([results[(results.task == t) & (results.metric == primary_metric(results, t))] for t in tasks])
    group = [c for c in KEY if c not in ("task", "metric")] + [c for c in X_AXES if c in rows]
    stderr = rows["stderr"] if "stderr" in rows else pd.Series(np.nan, index=rows.index)
    rows = rows.assign(var=stderr.astype(float) ** 2)
    out = rows.groupby(group, dropna=False).agg(
        value=("value", "mean"), var=("var", lambda v: v.sum(skipna=False)), n=("value", "size")
    )
    out = out[out.n == len(tasks)].reset_index()
    out["stderr"] = np.sqrt(out["var"]) / len(tasks)
    return out.drop(columns=["var", "n"]).assign(task="average", metric="acc")


def size_axis(results: pd.DataFrame) -> str:
    """ "params" when every curve's parameter count grows with k, else "layers": members of a tied teacher's family that
    hold the student's embeddings and the teacher's head have more parameters than the teacher itself."""
    curves = results.dropna(subset=["k"]).sort_values("k").groupby(["method", "order", "student"], dropna=False)
    return "params" if all(c.params.is_monotonic_increasing for _, c in curves) else "layers"


# --- figures -----------------------------------------------------------------------------------------------------
def panel_rows(results: pd.DataFrame, task: str, metric: str | None = None) -> tuple[pd.DataFrame, str]:
    """The rows one panel plots (with a `curve` label column), and the metric they report."""
    if task == "average":
        rows, metric = average_accuracy(results), "acc"
    else:
        metric = metric or primary_metric(results, task)
        rows = results[(results.task == task) & (results.metric == metric)]
        if rows.empty:
            raise ValueError(
                f"No {metric!r} results for task {task!r}; metrics: "
                f"{sorted(set(results.loc[results.task == task, 'metric']))}."
            )
    return rows.assign(curve=curve_labels(rows)).sort_values(["curve", "k", "params"]), metric


def metric_vs_params(
    results: pd.DataFrame | str | Path,
    task: str,
    metric: str | None = None,
    ax=None,
    main: str = MAIN_METHOD,
    palette: Mapping[str, object] | None = None,
    x: str | None = None,
):
    """One panel: `metric` of `task` ("average" = mean accuracy) against size (`x`: params, layers, or None for
    `size_axis`), one line per method from k=0 to K, the teacher (star: the main method's largest k) and the student
    (diamond: its k=0) marked."""
    results = latest(results)
    x = x or size_axis(results)
    if x not in X_AXES:
        raise ValueError(f"x must be one of {list(X_AXES)}, got {x!r}.")
    xlabel, scale = X_AXES[x]
    rows, metric = panel_rows(results, task, metric)
    palette = palette or _palette(rows.curve, main)
    ax = ax if ax is not None else plt.subplots(figsize=(5, 3.6))[1]
    for curve, line in rows.groupby("curve", sort=False):
        xs, y = line[x].to_numpy(float) * scale, line.value.to_numpy(float)
        ax.plot(xs, y, marker="o", ms=3, lw=1.5, color=palette[curve], label=curve)
        if "stderr" in line and line.stderr.notna().any():
            err = line.stderr.to_numpy(float)
            ax.fill_between(xs, y - err, y + err, color=palette[curve], alpha=0.15, lw=0)
    ours = rows[rows.method == main]
    teacher = ours.loc[ours.k.idxmax()] if not ours.empty else rows.loc[rows.params.idxmax()]
    ax.scatter([teacher[x] * scale], [teacher.value], marker="*", s=160, color="black", zorder=5, label="teacher")
    ax.axhline(teacher.value, color="black", lw=0.8, ls=":", zorder=0)
    student = rows[(rows.method == main) & (rows.k == 0)]
    if not student.empty:
        s = student.iloc[0]
        ax.scatter(
            [s[x] * scale],
            [s.value],
            marker="D",
            s=60,
            color=palette[s.curve],
            edgecolor="black",
            zorder=5,
            label="student",
        )
    if lower_is_better(metric):
        ax.set_yscale("log")
    ax.set(xlabel=xlabel, ylabel=metric, title=task_title(task))
    ax.grid(alpha=0.3)
    return ax.figure


def size_curves(
    results: pd.DataFrame | str | Path,
    tasks: list[str] | None = None,
    average: bool = True,
    main: str = MAIN_METHOD,
    columns: int = 4,
    x: str | None = None,
):
    """The paper's Fig. 2/3 grid: one panel per task (plus the average accuracy), one line per method; `x` as in
    `metric_vs_params`."""
    results = latest(results)
    x = x or size_axis(results)
    tasks = tasks or sorted(set(results.task))
    has_acc = any(primary_metric(results, t).startswith("acc") for t in tasks)
    panels = (["average"] if average and has_acc else []) + tasks
    palette = _palette(pd.concat([panel_rows(results, t)[0].curve for t in panels]), main)
    cols = min(columns, len(panels))
    rows_n = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.2 * cols, 3.3 * rows_n), squeeze=False)
    for ax, task in zip(axes.flat, panels):
        metric_vs_params(results, task, ax=ax, main=main, palette=palette, x=x)
    for ax in axes.flat[len(panels) :]:
        ax.remove()
    legend = {}
    for ax in axes.flat[: len(panels)]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    fig.legend(legend.values(), legend.keys(), loc="lower center", ncol=min(len(legend), 6), frameon=False)
    fig.tight_layout(rect=(0, 0.06 if rows_n > 1 else 0.1, 1, 1))
    return fig


def perplexity_vs_size(
    results: pd.DataFrame | str | Path,
    task: str | None = None,
    metric: str | None = None,
    main: str = MAIN_METHOD,
    x: str | None = None,
):
    """Perplexity against size (log scale), one line per method; by default the first perplexity result."""
    results = latest(results)
    ppl = results[results.metric.str.contains("perplexity")]
    if task is None:
        if ppl.empty:
            raise ValueError(f"No perplexity results; metrics present: {sorted(set(results.metric))}.")
        task = sorted(set(ppl.task), key=lambda t: (not t.startswith("wikitext"), t))[0]
    metric = metric or primary_metric(ppl if not ppl.empty else results, task)
    fig = metric_vs_params(results, task, metric, main=main, x=x)
    fig.axes[0].legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


def loss_curves(logs: pd.DataFrame | str | Path | Mapping[str, pd.DataFrame | str | Path], smooth: int = 10):
    """The per-term distillation losses (and learning rate) against step, one panel per logged term."""
    runs = dict(logs) if isinstance(logs, Mapping) else {"": logs}
    runs = {label: pd.read_csv(log) if isinstance(log, (str, Path)) else log for label, log in runs.items()}
    terms = [t for t in LOSS_TERMS if any(t in log and log[t].notna().any() for log in runs.values())]
    if any("stage" in log and log.stage.nunique() > 1 for log in runs.values()):
        terms = [t for t in terms if t != "loss"]  # the stages' totals are on different scales: show their terms
    if not terms:
        raise ValueError(
            f"The training log has none of the columns {LOSS_TERMS}; it has "
            f"{sorted({c for log in runs.values() for c in log.columns})}."
        )
    fig, axes = plt.subplots(1, len(terms), figsize=(3.2 * len(terms), 3), squeeze=False)
    staged = False
    for (label, log), color in zip(runs.items(), sns.color_palette("tab10", len(runs))):
        # A run with a local stage logs it first, then the global stage from step 1 again: one x axis, the
        # stages one after the other, each drawn on its own (a dotted line marks where the global stage starts).
        stages = log.groupby("stage", sort=False) if "stage" in log else [("", log)]
        offset = 0
        for stage, part in stages:
            x = part.step + offset
            for ax, term in zip(axes.flat, terms):
                if term not in part or part[term].isna().all():
                    continue
                y = part[term].astype(float)
                if term != "lr" and smooth > 1 and len(y) > smooth:
                    ax.plot(x, y, color=color, alpha=0.25, lw=0.8)
                    y = y.rolling(smooth, min_periods=1, center=True).mean()
                ax.plot(x, y, color=color, lw=1.5, label=(label or None) if stage in ("", "global") else None)
                if offset:
                    ax.axvline(offset + 0.5, color="0.6", ls=":", lw=1)
            offset += int(part.step.max())
            staged = staged or bool(stage)
    for ax, term in zip(axes.flat, terms):
        ax.set(xlabel="step (local stage, then global)" if staged else "step", title=term)
        ax.grid(alpha=0.3)
    if len(runs) > 1:
        axes.flat[0].legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


def alignment_heatmap(alignment: pd.DataFrame, annotate: bool | None = None):
    """Cosine similarity of each student layer with its teacher block (columns), one row per stage."""
    missing = {"stage", "student_layer", "teacher_layer", "cosine"} - set(alignment.columns)
    if missing:
        raise ValueError(f"The alignment table lacks columns {sorted(missing)} (see boomerang_lab.evaluate.alignment).")
    stages = list(dict.fromkeys(alignment.stage))
    table = alignment.assign(pair=alignment.student_layer.astype(str) + "→" + alignment.teacher_layer.astype(str))
    grid = table.pivot(index="stage", columns="pair", values="cosine")
    grid = grid.loc[stages, list(dict.fromkeys(table.pair))]
    annotate = grid.shape[1] <= 24 if annotate is None else annotate
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * grid.shape[1] + 2), 1.0 + 0.6 * len(stages)))
    sns.heatmap(
        grid,
        ax=ax,
        vmin=min(0.0, float(np.nanmin(grid.values))),
        vmax=1.0,
        cmap="viridis",
        annot=annotate,
        fmt=".2f",
        annot_kws={"fontsize": 7},
        cbar_kws={"label": "cosine"},
    )
    ax.set(xlabel="student hidden state → teacher hidden state (0 = embeddings, last = final norm)", ylabel="")
    fig.tight_layout()
    return fig


def save_figure(fig, directory: str | Path | None, name: str, formats: tuple[str, ...] = FORMATS) -> list[Path]:
    """Write `fig` as directory/name.png and .pdf (each atomically), close it, and return the paths. With
    `directory` None nothing is written (a notebook run without a figures folder only shows its figures)."""
    paths = []
    if directory is None:
        plt.close(fig)
        return paths
    for fmt in formats:
        path = Path(directory) / f"{name}.{fmt}"
        with atomic_path(path) as tmp:
            fig.savefig(
                tmp, format=fmt, dpi=150, bbox_inches="tight", metadata={"CreationDate": None} if fmt == "pdf" else None
            )
        paths.append(path)
    plt.close(fig)
    return paths


def _palette(curves: pd.Series, main: str) -> dict[str, object]:
    """Fixed colours per curve, the main method's curves first, so every panel and figure agrees."""
    names = sorted(set(curves), key=lambda c: (not c.startswith(main), c))
    return dict(zip(names, sns.color_palette("tab10", max(len(names), 1))))
