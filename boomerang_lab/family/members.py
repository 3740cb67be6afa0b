"""The family of interpolated models between a student and its teacher, built without copying any weights."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd
import torch
from torch import nn
from transformers import PreTrainedModel

from ..models.adapters import get_adapter, layers_of, set_num_layers
from ..models.bridges import as_teacher_class
from ..models.loading import embedded_gguf, embedded_name
from ..models.orders import Order, member_layout
from ..models.plan import LayerPlan
from ..store.atomic import atomic_dir
from .search import klpatch_order, local_order, optimal_order
from .speed import NEW_TOKENS, SpeedCache, ms_per_token

OrderLike = str | Order | Sequence[int | Sequence[int]]
OrderBuilder = Callable[["Family"], Order]
ORDERS: dict[str, OrderBuilder] = {}
"""Named orders: name -> builder(family), filled only through `register_order` (read it, don't write it)."""


def register_order(name: str, builder: OrderBuilder | None = None, *, replace: bool = False):
    """Make `name` usable wherever an order is named (`Family.order`, `build`, sweeps, `--orders`).

    `builder(family) -> Order`. Use it as a call, `register_order("mine", build_mine)`, or as a decorator,
    `@register_order("mine")`. Registering a taken name is an error unless `replace=True`. Returns the builder.
    """

    def add(fn: OrderBuilder) -> OrderBuilder:
        if not callable(fn):
            raise TypeError(f"The builder of order {name!r} must be callable (family -> Order), got {fn!r}.")
        if name in ORDERS and not replace:
            raise ValueError(f"Order {name!r} is already registered; pass replace=True to redefine it.")
        ORDERS[name] = fn
        return fn

    return add if builder is None else add(builder)


register_order("last", lambda f: Order.last(f.plan))
register_order("first", lambda f: Order.first(f.plan))
register_order("local", local_order)  # the local stage's block errors on calibration text
register_order("klpatch", klpatch_order)  # searched on calibration KL (family/search.py)
register_order("optimal", optimal_order)


class Family:
    """Every size between `student` (k=0) and `teacher` (k=K); members share the two models' modules.

    A student of another class with a known bridge (DistilBERT under BERT) is kept as its view in the teacher's class.
    Every student parameter equal to its teacher counterpart (frozen or untrained embeddings and head, an untouched
    layer) is replaced, in the student, by the teacher's tensor (`share_equal_tensors`; `self.shared` names them), so
    that a member holds, counts and reports each weight once, also for a student that was saved and loaded.
    `share=False` leaves the student's tensors its own (a student still training: the family-aware stage).
    """

    def __init__(self, teacher: PreTrainedModel, student: PreTrainedModel, plan: LayerPlan, share: bool = True):
        self.adapter = get_adapter(teacher)
        student = as_teacher_class(teacher, student)
        if get_adapter(student) != self.adapter or type(student) is not type(teacher):
            raise ValueError(
                f"Teacher ({type(teacher).__name__}) and student ({type(student).__name__}) "
                f"must be the same architecture to interpolate."
            )
        width_t, width_s = teacher.config.hidden_size, student.config.hidden_size
        if width_t != width_s:
            raise ValueError(f"Interpolation needs matching widths: teacher hidden size {width_t}, student {width_s}.")
        plan.check_fits(len(layers_of(teacher)), len(layers_of(student)))
        self.teacher, self.student, self.plan = teacher, student, plan
        self.shared = share_equal_tensors(teacher, student, plan) if share else []
        self._orders: dict[str, Order] = {}
        self._members: dict[tuple, PreTrainedModel] = {}
        self.speed_cache = SpeedCache()  # ms/token per member; set SpeedCache(path) to keep it in a file
        for model in (teacher, student):
            _install_output_hooks(model.base_model)

    # --- orders --------------------------------------------------------------------------------------------------
    def order(self, order: OrderLike = "last") -> Order:
        """Resolve a name, an Order, or an explicit list of student layers into an Order."""
        if isinstance(order, Order):
            return order
        if isinstance(order, str):
            if order not in self._orders:
                if order not in ORDERS:
                    raise ValueError(
                        f"Unknown order {order!r}; use one of {sorted(ORDERS)}, an Order, "
                        f"or a list of student layer indices."
                    )
                self._orders[order] = ORDERS[order](self)
            return self._orders[order]
        return Order.explicit(order, self.plan)

    @property
    def K(self) -> int:
        """The largest size index: k=K is the teacher (for the built-in orders)."""
        return len(self.plan.multi_layer)

    # --- members -------------------------------------------------------------------------------------------------
    def build(self, k: int | None = None, order: OrderLike = "last") -> PreTrainedModel:
        """The size-k member: a normal transformers model sharing the teacher's and student's modules."""
        resolved = self.order(order)
        if k is None:
            if isinstance(order, str):
                raise ValueError("k is required for named orders (0..K).")
            k = resolved.num_sizes
        patched = resolved.patched(k)
        key = tuple(sorted(patched))
        if key not in self._members:
            self._members[key] = self._assemble(patched)
        member = self._members[key]
        member.boomerang = {"k": k, "order": resolved.name, "patched": list(key)}
        return member

    def _assemble(self, patched: frozenset[int]) -> PreTrainedModel:
        t, s, a, plan = self.teacher, self.student, self.adapter, self.plan
        t_layers, s_layers = layers_of(t), layers_of(s)
        layers, types = [], []
        t_types = getattr(t.config, "layer_types", None)
        s_types = getattr(s.config, "layer_types", None)
        for j in range(plan.num_student_layers):
            if j in patched:
                layers += [t_layers[i] for i in plan.block(j)]
                types += [t_types[i] for i in plan.block(j)] if t_types else []
            else:
                layers.append(s_layers[j])
                types += [s_types[j]] if s_types else []
        embed_src = t if 0 in patched else s
        head_src = t if plan.num_student_layers - 1 in patched else s
        parts = {a.layers: nn.ModuleList(layers), a.head: head_src.get_submodule(a.head)}
        if a.final_norm is not None:
            parts[a.final_norm] = head_src.get_submodule(a.final_norm)
        parts.update({p: embed_src.get_submodule(p) for p in a.embeddings})

        config = copy.deepcopy(t.config)
        set_num_layers(config, types or None, len(layers))
        member = _graft(t, parts, config)
        config.tie_word_embeddings = member.get_output_embeddings().weight is member.get_input_embeddings().weight
        if hasattr(t, "generation_config"):  # masked LMs have none
            member.generation_config = copy.deepcopy(t.generation_config)
        _LayerIndexer(layers).attach(member)
        return member

    # --- the table -----------------------------------------------------------------------------------------------
    def sizes(self, order: OrderLike = "last") -> pd.DataFrame:
        """One row per size: layers, parameters (each shared or tied tensor once) and bytes at the model's dtype."""
        resolved = self.order(order)
        rows = []
        for k in range(resolved.num_sizes + 1):
            member = self.build(k, resolved)
            params = list(member.parameters())
            rows.append(
                {
                    "k": k,
                    "order": resolved.name,
                    "layers": len(layers_of(member)),
                    "params": sum(p.numel() for p in params),
                    "bytes": sum(p.numel() * p.element_size() for p in params),
                    "patched": member.boomerang["patched"],
                }
            )
        return pd.DataFrame(rows)

    def ms_per_token(self, k: int, order: OrderLike = "last", **measure) -> float:
        """Member k's greedy generation speed on this machine in ms per token (`speed.ms_per_token`), measured once
        and then read from `self.speed_cache`; `measure` is passed on (new_tokens, timer, repeats)."""
        key = self._speed_key(k, order, measure)
        value = self.speed_cache.get(key)
        if value is None:
            value = ms_per_token(self.build(k, order), **measure)
            self.speed_cache.put(key, value)
        return value

    def _speed_key(self, k: int, order: OrderLike, measure: dict):
        member = self.build(k, order)
        return self.speed_cache.key(member, member.boomerang["patched"], measure.get("new_tokens", NEW_TOKENS))

    def for_budget(
        self,
        max_params: int | None = None,
        max_bytes: int | None = None,
        order: OrderLike = "last",
        max_ms_per_token: float | None = None,
        **measure,
    ) -> PreTrainedModel:
        """The largest member (by parameters) within the given budget. A speed budget bisects the members that fit
        the other budgets, ordered by depth, after probing the deepest: time per token grows with size (it follows
        depth), so at most about log2(n) + 2 of n members are measured (each once, see `ms_per_token`; sizes already
        timed bound the search and are not timed again) to find the largest that generates at `max_ms_per_token` or
        faster."""
        if max_params is None and max_bytes is None and max_ms_per_token is None:
            raise ValueError("Give max_params, max_bytes and/or max_ms_per_token.")
        table = self.sizes(order)
        fits = table[(table.params <= (max_params or float("inf"))) & (table.bytes <= (max_bytes or float("inf")))]
        if fits.empty:
            smallest = table.loc[table.params.idxmin()]
            raise ValueError(
                f"No member fits max_params={max_params}, max_bytes={max_bytes}; the smallest has "
                f"{smallest.params:,} parameters and {smallest.bytes:,} bytes."
            )
        if max_ms_per_token is None:
            return self.build(int(fits.loc[fits.params.idxmax(), "k"]), order)
        ranked = [
            int(k) for k in fits.sort_values(["layers", "params", "k"]).k
        ]  # speed follows depth: shallowest first
        known = {
            i: v
            for i, k in enumerate(ranked)
            if (v := self.speed_cache.get(self._speed_key(k, order, measure))) is not None
        }
        fast = [i for i, v in known.items() if v <= max_ms_per_token]
        if not fast and self.ms_per_token(ranked[0], order, **measure) > max_ms_per_token:
            raise ValueError(
                f"No member generates at {max_ms_per_token} ms/token or faster on this machine (with "
                f"max_params={max_params}, max_bytes={max_bytes}); the shallowest took "
                f"{self.ms_per_token(ranked[0], order, **measure):.3g} ms/token."
            )
        low = max(fast, default=0)  # fast enough; the answer is in [low, high], bounded by what is already timed
        high = min([i for i, v in known.items() if v > max_ms_per_token and i > low], default=len(ranked)) - 1
        first = True  # probe the largest candidate first: a budget near the top costs one timing
        while low < high:
            middle = high if first else (low + high + 1) // 2
            first = False
            fits_speed = self.ms_per_token(ranked[middle], order, **measure) <= max_ms_per_token
            low, high = (middle, high) if fits_speed else (low, middle - 1)
        fast_enough = fits[fits.k.isin(ranked[: low + 1])]
        return self.build(int(fast_enough.loc[fast_enough.params.idxmax(), "k"]), order)

    def save(self, path: str | Path, tokenizer=None, orders: Sequence[str | Order] = ()) -> Path:
        """Write the family folder (each tensor once, the plan, `orders`, a manifest); `storage.load_member` reads
        one member back. See `storage.save_family`."""
        from .storage import save_family

        return save_family(self, path, tokenizer, orders)

    def export(
        self,
        k: int,
        path: str | Path,
        order: OrderLike = "last",
        tokenizer=None,
        format: str = "hf",
        quant: str = "f16",
        reference: str | Path | None = "auto",
    ) -> Path:
        """Member k as a standalone Hugging Face model directory (`format="hf"`) or a GGUF file llama.cpp runs
        (`format="gguf"`, `quant` one of `gguf.QUANTS`), written atomically.

        For GGUF, `reference` is a GGUF whose equal tensors are copied byte for byte and whose tokenizer metadata is
        used; "auto" takes the embedded teacher's own file when the teacher is the embedded SmolLM2 (so its teacher
        layers keep their shipped Q4_1 bytes under `quant="q4_1"`), else none (then `tokenizer`'s vocabulary)."""
        if format not in ("hf", "gguf"):
            raise ValueError(f"Unknown export format {format!r}; use 'hf' or 'gguf'.")
        member = self.build(k, order)
        path = Path(path)
        if format == "gguf":
            from .gguf import write_gguf

            if reference == "auto":
                name = embedded_name(self.teacher)
                reference = embedded_gguf(name) if name else None
            sources = [i if src == "teacher" else self.plan.kept[i] for src, i in member_layout(self.plan, member)]
            write_gguf(member, path, quant, tokenizer, reference, sources, name=f"boomerang member k={k}")
            return path
        with atomic_dir(path) as tmp:
            member.save_pretrained(tmp)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            info = {**member.boomerang, "plan": self.plan.to_dict()}
            (tmp / "boomerang_member.json").write_text(json.dumps(info, indent=2) + "\n")
        return path


def share_equal_tensors(teacher: PreTrainedModel, student: PreTrainedModel, plan: LayerPlan) -> list[str]:
    """Make each student parameter that equals its teacher counterpart (same values, shape, dtype and device) the
    teacher's tensor, in place; returns the student parameter names now shared.

    The counterpart of student layer j's parameter is teacher layer `plan.kept[j]`'s; every other parameter
    (embeddings, final norm, head) is the teacher's of the same name. A student whose embeddings and head were frozen
    in distillation equals the teacher there, but a saved and loaded student holds them as a second copy: without
    this, a member would count them twice and use twice their memory. Tied parameters stay tied (every name of a
    tied tensor is replaced). Training the student after this would also train the teacher's shared tensors.
    """
    layers = get_adapter(teacher).layers
    pattern = re.compile(rf"^{re.escape(layers)}\.(\d+)\.")
    kept = plan.kept
    ours = dict(teacher.named_parameters(remove_duplicate=False))
    shared = []
    for name, param in list(student.named_parameters(remove_duplicate=False)):
        match = pattern.match(name)
        if match and int(match.group(1)) >= len(kept):
            continue
        source = pattern.sub(f"{layers}.{kept[int(match.group(1))]}.", name) if match else name
        theirs = ours.get(source)
        if theirs is None or theirs is param:
            continue
        if (theirs.shape, theirs.dtype, theirs.device) != (param.shape, param.dtype, param.device):
            continue
        with torch.no_grad():
            if not torch.equal(theirs, param):
                continue
        parent, _, leaf = name.rpartition(".")
        setattr(student.get_submodule(parent), leaf, theirs)
        shared.append(name)
    return shared


def layer_view(model: PreTrainedModel, layers: Sequence[int]) -> PreTrainedModel:
    """`model` running only its decoder `layers` (in the given order), sharing every module with it (zero copy).

    The view is a normal model of the same class (forward, generate, lm-eval), like a family member; the naive
    pruning and ShortGPT baselines are such views of the teacher.
    """
    all_layers = layers_of(model)
    bad = [i for i in layers if not 0 <= i < len(all_layers)]
    if bad or not layers:
        raise ValueError(f"Layers must be a non-empty list of layers in 0..{len(all_layers) - 1}; got {list(layers)}.")
    types = getattr(model.config, "layer_types", None)
    return modules_view(model, [all_layers[i] for i in layers], [types[i] for i in layers] if types else None)


def modules_view(
    model: PreTrainedModel, layers: Sequence[nn.Module], layer_types: Sequence[str] | None = None
) -> PreTrainedModel:
    """`model` running these decoder layer modules (its own, or others of the same shape, e.g. merged ones), sharing
    every other module with it (zero copy); its own config with the new layer count (and `layer_types`)."""
    adapter = get_adapter(model)
    _install_output_hooks(model.base_model)  # before the copy, so the view inherits the hooks, not twins of them
    config = copy.deepcopy(model.config)
    set_num_layers(config, list(layer_types) if layer_types else None, len(layers))
    view = _graft(model, {adapter.layers: nn.ModuleList(layers)}, config)
    _LayerIndexer(list(layers)).attach(view)
    return view


def _shallow_copy(module: nn.Module) -> nn.Module:
    """A new module object whose attributes (submodules, parameters, hooks) are fresh containers of the same items."""
    new = module.__class__.__new__(module.__class__)
    new.__dict__ = {k: (v.copy() if isinstance(v, (dict, list, set)) else v) for k, v in module.__dict__.items()}
    return new


def _graft(base: nn.Module, parts: dict[str, nn.Module], config) -> nn.Module:
    """A shallow copy of `base` with the submodules at `parts`' dotted paths replaced; all weights stay shared."""
    clones = {"": _shallow_copy(base)}

    def clone(path: str) -> nn.Module:
        if path not in clones:
            parent_path, _, name = path.rpartition(".")
            parent = clone(parent_path)
            clones[path] = _shallow_copy(getattr(parent, name))
            setattr(parent, name, clones[path])
        return clones[path]

    for path, module in parts.items():
        parent_path, _, name = path.rpartition(".")
        setattr(clone(parent_path), name, module)
    for module in clones.values():
        if hasattr(module, "config"):
            module.config = config
    return clones[""]


class _LayerIndexer:
    """Gives each attention module its position in the member while the member runs, then restores it.

    Layers are shared with the teacher and student, whose KV caches index by `layer_idx`; rewriting it for good
    would break them, so the member sets it on entry and puts the old values back on exit (not thread-safe).
    """

    def __init__(self, layers: list[nn.Module]):
        self.slots = [(m, pos) for pos, layer in enumerate(layers) for m in layer.modules() if hasattr(m, "layer_idx")]
        self.saved: list[list[int]] = []

    def attach(self, model: nn.Module) -> None:
        model.register_forward_pre_hook(self.enter)
        model.register_forward_hook(self.exit, always_call=True)

    def enter(self, *_):
        self.saved.append([m.layer_idx for m, _ in self.slots])
        for m, pos in self.slots:
            m.layer_idx = pos

    def exit(self, *_):
        for (m, _), idx in zip(self.slots, self.saved.pop()):
            m.layer_idx = idx


def _install_output_hooks(backbone: nn.Module) -> None:
    """Install transformers' hidden-state capture hooks on a backbone now (once), so that members sharing its
    layers inherit them instead of installing twins that would double the teacher's hidden states."""
    try:
        from transformers.utils.output_capturing import maybe_install_capturing_hooks
    except ImportError:  # transformers without hook-based output capture
        return
    maybe_install_capturing_hooks(backbone)


def member_builder(teacher: PreTrainedModel, student: PreTrainedModel, plan: LayerPlan) -> Family:
    """The family-aware stage's member builder (`distill(..., members=member_builder)`): the Family of the student
    being trained, zero-copy, its tensors kept its own (`share=False`: sharing equal tensors with the frozen teacher
    would freeze them)."""
    return Family(teacher, student, plan, share=False)
