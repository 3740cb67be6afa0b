"""The explorer, made for picking a size: a slider over the family; beside it the size curve from the results table
with the selected member marked; the member's layers, parameters, memory and measured generation speed on this
machine; and greedy text from two sizes side by side."""

from __future__ import annotations

import html
import io
from pathlib import Path

import ipywidgets as widgets
import matplotlib.pyplot as plt
import pandas as pd
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..family.members import Family, OrderLike
from ..family.speed import SpeedCache
from ..models.orders import Order
from .plots import latest, lower_is_better, metric_vs_params, primary_metric

DEFAULT_PROMPT = "Once upon a time"
PLOT_DPI = 80
MARK = "crimson"


class Explorer(widgets.VBox):
    """The explorer UI; its widgets and handlers are attributes so that it can be driven without a browser.

    `speed_cache`: a JSON file for the measured speeds (e.g. next to the student), so that each size is timed once on
    this machine; `measure_speed=False` skips the timing.
    """

    def __init__(
        self,
        family: Family,
        tokenizer: PreTrainedTokenizerBase,
        results: pd.DataFrame | str | Path | None = None,
        orders: list[OrderLike] | None = None,
        max_new_tokens: int = 40,
        speed_cache: str | Path | None = None,
        measure_speed: bool = True,
    ):
        self.family, self.tokenizer, self.measure_speed = family, tokenizer, measure_speed
        if speed_cache is not None:
            family.speed_cache = SpeedCache(speed_cache)
        self.results = None if results is None else latest(results)
        resolved = [family.order(o) for o in orders] if orders else _default_orders(family, self.results)
        self.orders = {o.name: o for o in resolved}
        self._tables: dict[str, pd.DataFrame] = {}
        self._generated: dict[int, str] = {}
        tasks = _plot_tasks(self.results)
        self.order = widgets.Dropdown(options=list(self.orders), description="order")
        self.size = widgets.IntSlider(
            value=0, min=0, max=self.orders[self.order.value].num_sizes, description="size k", continuous_update=False
        )
        self.task = widgets.Dropdown(options=tasks or ["parameters"], description="curve")
        self.info = widgets.HTML()
        self.speed = widgets.HTML()
        self.metrics = widgets.HTML()
        self.plot = widgets.Image(format="png", layout={"width": "440px"})
        self.marker = widgets.HTML()  # the marked point, in words (under the plot)
        self.prompt = widgets.Textarea(value=DEFAULT_PROMPT, description="prompt", layout={"width": "60%"})
        self.tokens = widgets.IntSlider(value=max_new_tokens, min=1, max=256, description="new tokens")
        self.compare = widgets.Dropdown(description="beside")
        self.button = widgets.Button(description="Generate", button_style="primary")
        self.text = widgets.HTML(layout={"width": "50%"})
        self.compare_text = widgets.HTML(layout={"width": "50%"})
        self._set_compare_options()
        self.order.observe(self.on_order, names="value")
        self.size.observe(self.on_change, names="value")
        self.task.observe(self.on_change, names="value")
        self.compare.observe(self.on_compare, names="value")
        self.button.on_click(self.generate)
        left = widgets.VBox(
            [widgets.HBox([self.order, self.size]), self.info, self.speed, self.metrics], layout={"width": "55%"}
        )
        right = widgets.VBox([self.task, self.plot, self.marker])
        controls = widgets.HBox([self.prompt, widgets.VBox([self.tokens, self.compare, self.button])])
        super().__init__([widgets.HBox([left, right]), controls, widgets.HBox([self.text, self.compare_text])])
        self.add_class("boomerang-explorer")  # CSS classes: what a browser (tests/test_browser.py) looks for
        for widget, name in (
            (self.size, "size"),
            (self.info, "info"),
            (self.speed, "speed"),
            (self.plot, "plot"),
            (self.marker, "marker"),
            (self.button, "generate"),
            (self.text, "text"),
            (self.compare_text, "compare-text"),
        ):
            widget.add_class(f"explorer-{name}")
        self.on_change()

    # --- what the selected member is ---------------------------------------------------------------------------
    def table(self, order: str | None = None) -> pd.DataFrame:
        name = order or self.order.value
        if name not in self._tables:
            self._tables[name] = self.family.sizes(self.orders[name]).set_index("k")
        return self._tables[name]

    def row(self) -> pd.Series:
        """The size-table row of the selected member."""
        return self.table().loc[self.size.value]

    def ms_per_token(self) -> float | None:
        """The selected member's measured generation speed on this machine (measured once per size, then cached)."""
        if not self.measure_speed:
            return None
        return self.family.ms_per_token(self.size.value, self.orders[self.order.value])

    def member_metrics(self) -> pd.DataFrame:
        """The results at the selected size: one row per task/metric, one column per method. Methods measured with
        this order count at this k; those without a family order (ShortGPT, distilled students) at this layer count."""
        rows = self._rows_here()
        if rows.empty:
            return pd.DataFrame()
        return rows.pivot_table(index=["task", "metric"], columns="method", values="value", aggfunc="last")

    def _rows_here(self) -> pd.DataFrame:
        if self.results is None:
            return pd.DataFrame()
        r, order = self.results, self.results.order.astype(str)
        same_k = (order == self.order.value) & (r.k == self.size.value)
        same_layers = ~order.isin(list(self.orders)) & (r.layers == self.row().layers)
        return r[same_k | same_layers]

    def _curves(self) -> pd.DataFrame:
        """The results rows the plot draws: this order's curves and the methods that have no family order."""
        order = self.results.order.astype(str)
        return self.results[(order == self.order.value) | ~order.isin(list(self.orders))]

    # --- the plot ----------------------------------------------------------------------------------------------
    def marked(self, k: int | None = None) -> tuple[int, float | None, str]:
        """(layers, value, label) of the point the figure marks at size k (default: the slider's), read from the
        results (or the parameter count when there are none); the slider is not moved."""
        k = self.size.value if k is None else k
        row = self.table().loc[k]
        if self.task.value == "parameters" or self.results is None:
            return row.layers, row.params / 1e6, "parameters (M)"
        if self.task.value == "average":
            return row.layers, None, "acc"
        curves = self._curves()
        metric = primary_metric(curves, self.task.value)
        here = curves[
            (curves.method == "boomerang")
            & (curves.k == k)
            & (curves.task == self.task.value)
            & (curves.metric == metric)
        ]
        return row.layers, (float(here.value.iloc[0]) if not here.empty else None), metric

    def figure(self):
        """The size curve(s) with the selected member marked (a ring on the boomerang curve and a dashed line)."""
        k = self.size.value
        layers, y, label = self.marked(k)
        fig, ax = plt.subplots(figsize=(5.2, 3.5))
        if self.task.value == "parameters" or self.results is None:
            sizes = self.table()
            ax.plot(sizes.layers, sizes.params / 1e6, marker="o", ms=3, color="grey")
            ax.set(xlabel="layers", ylabel=label, title="family sizes")
        else:
            metric_vs_params(self._curves(), self.task.value, ax=ax, x="layers")
            ax.legend(frameon=False, fontsize=7)
        ax.axvline(layers, color=MARK, ls="--", lw=1)
        if y is not None:
            ax.scatter([layers], [y], s=180, facecolors="none", edgecolors=MARK, linewidths=2.5, zorder=6)
        ax.set_title(f"{ax.get_title()}: k = {k} marked ({layers} layers)", color=MARK, fontsize=10)
        fig.tight_layout()
        self._marked = (layers, y, label)
        return fig

    def _draw(self) -> None:
        fig = self.figure()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=PLOT_DPI)
        plt.close(fig)
        self.plot.value = buffer.getvalue()
        layers, y, label = self._marked
        value = "" if y is None else f", {label} = {y:.4g}"
        self.marker.value = (
            f"<span class='marked' style='color:{MARK}'>marked: k = {self.size.value}, {layers} layers{value}</span>"
        )

    # --- handlers ----------------------------------------------------------------------------------------------
    def _set_compare_options(self) -> None:
        table = self.table()
        self.compare.options = [(f"k = {k} ({row.layers} layers)", int(k)) for k, row in table.iterrows()]
        self.compare.value = int(table.index.max())

    def on_order(self, _=None) -> None:
        self.size.max = self.orders[self.order.value].num_sizes
        self._set_compare_options()
        self.on_change()

    def on_compare(self, _=None) -> None:
        self.compare_text.value = ""
        self._generated = {}

    def on_change(self, _=None) -> None:
        row = self.row()
        self.info.value = (
            f"<b>k = {self.size.value}</b> of {self.size.max} ({self.order.value} order) — "
            f"<b>{row.layers}</b> layers, <b>{row.params / 1e6:.2f} M</b> parameters, "
            f"<b>{row.bytes / 2**20:.1f} MiB</b>; patched student layers: {row.patched}"
        )
        speed = self.ms_per_token()
        self.speed.value = (
            ""
            if speed is None
            else f"measured on this machine: <b>{speed:.3g} ms/token</b> ({1000 / speed:.0f} tokens/s; "
            f"greedy, batch 1, {next(self.family.teacher.parameters()).device})"
        )
        table = self.member_metrics()
        self.metrics.value = (
            "<i>no results for this size</i>" if table.empty else table.to_html(float_format=lambda v: f"{v:.4g}")
        )
        self.text.value = ""
        self._generated = {}
        self._draw()

    def generate(self, _=None) -> str:
        """Greedy continuations of the prompt by the selected member and, beside it, the `compare` size; both are
        shown, the selected member's is returned."""
        order = self.orders[self.order.value]
        texts = self._generated = {}
        for k, panel in ((self.size.value, self.text), (self.compare.value, self.compare_text)):
            if k not in texts:
                texts[k] = generate(self.family.build(k, order), self.tokenizer, self.prompt.value, self.tokens.value)
            layers = self.table().layers[k]
            panel.value = (
                f"<div class='generated'><b>k = {k} · {layers} layers</b>"
                f"<pre style='white-space: pre-wrap'><b>{html.escape(self.prompt.value)}</b>"
                f"{html.escape(texts[k])}</pre></div>"
            )
        return texts[self.size.value]

    def summary(self) -> pd.DataFrame:
        """The selected and the `compare` member in one table: size, memory, measured speed, and the text of the
        last Generate (prompt included) when it was made at these sizes."""
        rows = []
        for k in dict.fromkeys((self.size.value, self.compare.value)):
            row = self.table().loc[k]
            speed = self.family.ms_per_token(k, self.orders[self.order.value]) if self.measure_speed else None
            rows.append(
                {
                    "k": k,
                    "layers": row.layers,
                    "params (M)": round(row.params / 1e6, 2),
                    "MiB": round(row.bytes / 2**20, 1),
                    "ms/token": speed,
                    "text": self.prompt.value + self._generated[k] if k in self._generated else None,
                }
            )
        return pd.DataFrame(rows).set_index("k")


@torch.no_grad()
def generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt: str, max_new_tokens: int = 40) -> str:
    """The greedy continuation of `prompt` (without the prompt)."""
    inputs = tokenizer(prompt, return_tensors="pt").to(next(model.parameters()).device)
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def samples(
    family: Family,
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    ks: list[int] | None = None,
    max_new_tokens: int = 30,
    order: OrderLike = "last",
) -> pd.DataFrame:
    """Greedy text of the prompt at a few sizes (default: the student, the middle size and the teacher)."""
    resolved = family.order(order)
    ks = sorted({0, resolved.num_sizes // 2, resolved.num_sizes}) if ks is None else ks
    sizes = family.sizes(resolved).set_index("k")
    return pd.DataFrame(
        [
            {
                "k": k,
                "layers": sizes.layers[k],
                "params (M)": round(sizes.params[k] / 1e6, 1),
                "text": prompt + generate(family.build(k, resolved), tokenizer, prompt, max_new_tokens),
            }
            for k in ks
        ]
    ).set_index("k")


def _plot_tasks(results: pd.DataFrame | None) -> list[str]:
    """The curves the plot can show: perplexity tasks first, then the average accuracy, then each task."""
    if results is None or results.empty:
        return []
    tasks = sorted(set(results.task), key=lambda t: (not lower_is_better(primary_metric(results, t)), t))
    has_acc = any(primary_metric(results, t).startswith("acc") for t in tasks)
    ppl = [t for t in tasks if lower_is_better(primary_metric(results, t))]
    return ppl + (["average"] if has_acc else []) + [t for t in tasks if t not in ppl] + ["parameters"]


def _default_orders(family: Family, results: pd.DataFrame | None) -> list[Order]:
    """The orders the results were measured with (the first one is shown first), then last and first: those the
    family can build by name."""
    measured = [] if results is None else list(dict.fromkeys(results.order.dropna().astype(str)))
    names = [*measured, "last", "first"]
    orders = {}
    for name in names:
        try:
            orders.setdefault(name, family.order(name))
        except ValueError:  # a baseline's label or an order this family cannot build by name
            continue
    return list(orders.values())


def explore(
    family: Family,
    tokenizer: PreTrainedTokenizerBase,
    results: pd.DataFrame | str | Path | None = None,
    orders: list[OrderLike] | None = None,
    max_new_tokens: int = 40,
    speed_cache: str | Path | None = None,
    measure_speed: bool = True,
) -> Explorer:
    """The interactive explorer of a family (display it as a notebook cell's last value)."""
    return Explorer(family, tokenizer, results, orders, max_new_tokens, speed_cache, measure_speed)
