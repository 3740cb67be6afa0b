"""A size slider over the family: layers, parameters, memory and measured metrics of each member, and its text."""
from __future__ import annotations

import html
from pathlib import Path

import ipywidgets as widgets
import pandas as pd
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .family import Family, OrderLike
from .orders import Order
from .plots import latest

DEFAULT_PROMPT = "Once upon a time"


class Explorer(widgets.VBox):
    """The explorer UI; its widgets and handlers are attributes so that it can be driven without a browser."""

    def __init__(self, family: Family, tokenizer: PreTrainedTokenizerBase,
                 results: pd.DataFrame | str | Path | None = None,
                 orders: list[OrderLike] | None = None, max_new_tokens: int = 40):
        self.family, self.tokenizer = family, tokenizer
        self.results = None if results is None else latest(results)
        resolved = [family.order(o) for o in orders] if orders else _default_orders(family, self.results)
        self.orders = {o.name: o for o in resolved}
        self._tables: dict[str, pd.DataFrame] = {}
        self.order = widgets.Dropdown(options=list(self.orders), description="order")
        self.size = widgets.IntSlider(value=0, min=0, max=family.K, description="size k", continuous_update=False)
        self.info = widgets.HTML()
        self.metrics = widgets.HTML()
        self.prompt = widgets.Textarea(value=DEFAULT_PROMPT, description="prompt", layout={"width": "60%"})
        self.tokens = widgets.IntSlider(value=max_new_tokens, min=1, max=256, description="new tokens")
        self.button = widgets.Button(description="Generate", button_style="primary")
        self.text = widgets.HTML()
        self.order.observe(self.on_order, names="value")
        self.size.observe(self.on_change, names="value")
        self.button.on_click(self.generate)
        super().__init__([widgets.HBox([self.order, self.size]), self.info, self.metrics,
                          widgets.HBox([self.prompt, widgets.VBox([self.tokens, self.button])]), self.text])
        self.on_change()

    def row(self) -> pd.Series:
        """The size-table row of the selected member."""
        name = self.order.value
        if name not in self._tables:
            self._tables[name] = self.family.sizes(self.orders[name]).set_index("k")
        return self._tables[name].loc[self.size.value]

    def member_metrics(self) -> pd.DataFrame:
        """The results at the selected size: one row per task/metric, one column per method. Methods measured with
        this order count at this k; those without a family order (ShortGPT, distilled students) at this layer count."""
        if self.results is None:
            return pd.DataFrame()
        r, order = self.results, self.results.order.astype(str)
        same_k = (order == self.order.value) & (r.k == self.size.value)
        same_layers = ~order.isin(list(self.orders)) & (r.layers == self.row().layers)
        rows = r[same_k | same_layers]
        if rows.empty:
            return pd.DataFrame()
        return rows.pivot_table(index=["task", "metric"], columns="method", values="value", aggfunc="last")

    def on_order(self, _=None) -> None:
        self.size.max = self.orders[self.order.value].num_sizes
        self.on_change()

    def on_change(self, _=None) -> None:
        row = self.row()
        self.info.value = (f"<b>k = {self.size.value}</b> of {self.family.K} ({self.order.value} order) — "
                           f"<b>{row.layers}</b> layers, <b>{row.params / 1e6:.2f} M</b> parameters, "
                           f"<b>{row.bytes / 2**20:.1f} MiB</b>; patched student layers: {row.patched}")
        table = self.member_metrics()
        self.metrics.value = ("<i>no results for this size</i>" if table.empty
                              else table.to_html(float_format=lambda v: f"{v:.4g}"))
        self.text.value = ""

    def generate(self, _=None) -> str:
        """Greedy continuation of the prompt by the selected member; shown and returned."""
        member = self.family.build(self.size.value, self.orders[self.order.value])
        completion = generate(member, self.tokenizer, self.prompt.value, self.tokens.value)
        self.text.value = (f"<pre style='white-space: pre-wrap'><b>{html.escape(self.prompt.value)}</b>"
                           f"{html.escape(completion)}</pre>")
        return completion


@torch.no_grad()
def generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt: str, max_new_tokens: int = 40) -> str:
    """The greedy continuation of `prompt` (without the prompt)."""
    inputs = tokenizer(prompt, return_tensors="pt").to(next(model.parameters()).device)
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def _default_orders(family: Family, results: pd.DataFrame | None) -> list[Order]:
    """last and first, then every other order the results were measured with that the family can build."""
    names = ["last", "first"] + ([] if results is None else list(dict.fromkeys(results.order.dropna().astype(str))))
    orders = {}
    for name in names:
        try:
            orders.setdefault(name, family.order(name))
        except ValueError:  # a baseline's label or an order this family cannot build by name
            continue
    return list(orders.values())


def explore(family: Family, tokenizer: PreTrainedTokenizerBase, results: pd.DataFrame | str | Path | None = None,
            orders: list[OrderLike] | None = None, max_new_tokens: int = 40) -> Explorer:
    """The interactive explorer of a family (display it as a notebook cell's last value)."""
    return Explorer(family, tokenizer, results, orders, max_new_tokens)
