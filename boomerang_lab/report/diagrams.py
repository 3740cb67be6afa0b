"""Pictures and tables that explain the method: the layer plan, the family as stacks of layers, and the exactness
checks of the family's endpoints (the notebooks call these; they hold no logic of their own)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import torch
from matplotlib.patches import Patch, Rectangle

from ..family.members import Family, OrderLike
from ..models.adapters import get_adapter, layers_of
from ..models.plan import LayerPlan

TEACHER, STUDENT = "#4c72b0", "#dd8452"
"""Colours of teacher and student modules in every diagram."""
PRUNED = "#d9d9d9"
SHORT = {"embeddings": "emb", "norm": "norm", "head": "head"}


# --- the plan ----------------------------------------------------------------------------------------------------
def plan_diagram(plan: LayerPlan, width: float | None = None):
    """The plan drawn: the teacher's layers (top row; kept ones coloured, the others pruned), the student's layers
    below, each spanning the teacher block it stands for, and the cosine loss's aligned pairs (dashed: student hidden
    state j+1, the output of student layer j, against the output of its teacher block; also the embeddings' output
    and the final normed state)."""
    n = plan.num_teacher_layers
    fig, ax = plt.subplots(figsize=(width or max(6.0, 0.32 * n + 2.5), 2.9))
    kept = set(plan.kept)
    for i in range(n):
        colour = TEACHER if i in kept else PRUNED
        ax.add_patch(Rectangle((i + 0.05, 2.0), 0.9, 0.8, color=colour, ec="black", lw=0.4))
        ax.text(i + 0.5, 2.4, str(i), ha="center", va="center", fontsize=6, color="white" if i in kept else "black")
    for j, block in enumerate(plan.blocks):
        multi = len(block) > 1
        ax.add_patch(
            Rectangle(
                (block.start + 0.05, 0.2),
                len(block) - 0.1,
                0.8,
                color=STUDENT,
                ec="black",
                lw=1.2 if multi else 0.4,
                alpha=1.0 if multi else 0.55,
            )
        )
        ax.text(block.start + len(block) / 2, 0.6, str(j), ha="center", va="center", fontsize=6)
        ax.plot([block.start + 0.5, block.start + 0.5], [1.0, 2.0], color="grey", lw=0.6)  # kept[j] is copied
    for s, t in plan.alignment():  # hidden-state indices: s-th student state vs t-th teacher state
        x = n if t == -1 else t
        ax.plot([x, x], [1.0, 2.0], color="crimson", lw=1.0, ls="--")
    for y, label in ((2.0, "teacher"), (0.2, "student")):
        ax.add_patch(Rectangle((-1.4, y), 1.2, 0.8, color="#8c8c8c", ec="black", lw=0.4))
        ax.text(-0.8, y + 0.4, "emb", ha="center", va="center", fontsize=6, color="white")
        ax.add_patch(Rectangle((n + 0.2, y), 1.2, 0.8, color="#8c8c8c", ec="black", lw=0.4))
        ax.text(n + 0.8, y + 0.4, "head", ha="center", va="center", fontsize=6, color="white")
        ax.text(-1.6, y + 0.4, label, ha="right", va="center", fontsize=8)
    ax.legend(
        handles=[
            Patch(color=TEACHER, label="teacher layer the student keeps"),
            Patch(color=PRUNED, label="teacher layer dropped"),
            Patch(color=STUDENT, label="student layer, spanning the block it stands for"),
            plt.Line2D([], [], color="crimson", ls="--", label="hidden states the cosine loss aligns"),
        ],
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        ncol=2,
        frameon=False,
        fontsize=7,
    )
    ax.set(
        xlim=(-4.0, n + 1.6),
        ylim=(0.0, 3.0),
        title=f"{plan.num_student_layers} of {n} teacher layers kept; {len(plan.multi_layer)} student layers "
        f"stand for a block of several (one interpolation step each)",
    )
    ax.title.set_fontsize(9)
    ax.axis("off")
    fig.tight_layout()
    return fig


# --- the family --------------------------------------------------------------------------------------------------
def composition(family: Family, k: int, order: OrderLike = "last") -> pd.DataFrame:
    """What the built size-k member is made of, bottom to top: one row per module (`part`: embeddings, layer, norm,
    head; `module`: its path) with `source` (teacher or student, found by the module's identity in the built member)
    and, for a layer, its index in that model."""
    member = family.build(k, order)
    adapter = get_adapter(member)
    t_layers = {id(m): i for i, m in enumerate(layers_of(family.teacher))}
    s_layers = {id(m): j for j, m in enumerate(layers_of(family.student))}

    def source(path: str, kind: str) -> dict:
        module = member.get_submodule(path)
        for name, model in (("teacher", family.teacher), ("student", family.student)):
            if model.get_submodule(path) is module:
                return {"part": kind, "module": path, "source": name, "index": None}
        raise ValueError(f"Member k={k} holds a {path} from neither the teacher nor the student.")

    rows = [source(p, "embeddings") for p in adapter.embeddings]
    for m in layers_of(member):
        if id(m) in t_layers:
            rows.append({"part": "layer", "module": adapter.layers, "source": "teacher", "index": t_layers[id(m)]})
        elif id(m) in s_layers:
            rows.append({"part": "layer", "module": adapter.layers, "source": "student", "index": s_layers[id(m)]})
        else:
            raise ValueError(f"Member k={k} holds a layer from neither the teacher nor the student.")
    if adapter.final_norm is not None:
        rows.append(source(adapter.final_norm, "norm"))
    rows.append(source(adapter.head, "head"))
    table = pd.DataFrame(rows).assign(k=k)
    return table.astype({"index": "Int64"})


def family_diagram(family: Family, order: OrderLike = "last", ks: list[int] | None = None):
    """The family drawn as stacks of layers: one column per size k (embeddings at the bottom, the head on top), each
    module coloured by the model it comes from, with its layer index in that model."""
    resolved = family.order(order)
    ks = list(range(resolved.num_sizes + 1)) if ks is None else list(ks)
    stacks = [composition(family, k, resolved) for k in ks]
    tallest = max(len(s) for s in stacks)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.5 * len(ks) + 1.0), max(3.8, 0.2 * tallest + 1.8)))
    for x, stack in enumerate(stacks):
        for y, row in enumerate(stack.itertuples()):
            layer = row.part == "layer"
            colour = TEACHER if row.source == "teacher" else STUDENT
            ax.add_patch(
                Rectangle(
                    (x + 0.08, y + 0.06),
                    0.84,
                    0.88,
                    color=colour,
                    ec="black",
                    lw=0.3,
                    alpha=1.0 if layer else 0.6,
                    hatch=None if layer else "///",
                )
            )
            label = f"{'T' if row.source == 'teacher' else 'S'}{row.index}" if layer else SHORT[row.part]
            ax.text(x + 0.5, y + 0.5, label, ha="center", va="center", fontsize=5, color="white" if layer else "black")
        ax.text(x + 0.5, -0.5, f"k={ks[x]}\n{sum(stack.part == 'layer')}", ha="center", va="top", fontsize=6)
    ax.set(
        xlim=(0, len(ks)),
        ylim=(-2.0, tallest + 0.3),
        title=f"The family ({resolved.name} order): each size's modules, embeddings to head",
    )
    ax.title.set_fontsize(9)
    ax.text(-0.1, -0.5, "size\nlayers", ha="right", va="top", fontsize=6)
    ax.legend(
        handles=[
            Patch(color=TEACHER, label="from the teacher (Ti: teacher layer i)"),
            Patch(color=STUDENT, label="from the student (Sj: student layer j)"),
            Patch(facecolor="white", edgecolor="black", hatch="///", label="embeddings / norm / head"),
        ],
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        ncol=3 if len(ks) >= 10 else 1,
        frameon=False,
        fontsize=7,
    )
    ax.axis("off")
    fig.tight_layout()
    return fig


# --- the exactness checks ----------------------------------------------------------------------------------------
@torch.no_grad()
def exactness_checks(
    family: Family, ids: torch.Tensor, orders: tuple[OrderLike, ...] = ("last", "first")
) -> pd.DataFrame:
    """The family's guarantees, measured: size 0 gives the student's logits and size K the teacher's, bit for bit,
    in every order; and no member holds a weight tensor that is not the teacher's or the student's (no copies)."""
    rows = []
    references = {"student": family.student(ids).logits, "teacher": family.teacher(ids).logits}
    owned = {p.data_ptr() for model in (family.teacher, family.student) for p in model.parameters()}
    for order in orders:
        resolved = family.order(order)
        for k, reference in ((0, "student"), (resolved.num_sizes, "teacher")):
            diff = (family.build(k, resolved)(ids).logits - references[reference]).abs().max().item()
            rows.append(
                {
                    "check": f"logits equal the {reference}'s",
                    "order": resolved.name,
                    "k": k,
                    "value": diff,
                    "passed": diff == 0.0,
                }
            )
        copies = max(
            sum(p.data_ptr() not in owned for p in family.build(k, resolved).parameters())
            for k in range(resolved.num_sizes + 1)
        )
        rows.append(
            {
                "check": "weight tensors not shared with teacher/student (any size)",
                "order": resolved.name,
                "k": None,
                "value": float(copies),
                "passed": copies == 0,
            }
        )
    return pd.DataFrame(rows)


# --- tables ------------------------------------------------------------------------------------------------------
def plan_table(plan: LayerPlan) -> pd.DataFrame:
    """One row per student layer j: the teacher layer it starts as, the block it stands for, and the teacher hidden
    state its output is aligned with by the cosine loss (hidden state j+1 of the student against the block's end)."""
    aligned = dict(plan.alignment())
    return pd.DataFrame(
        [
            {
                "student layer": j,
                "copied from teacher layer": plan.kept[j],
                "stands for teacher layers": f"{b.start}–{b.stop - 1}" if len(b) > 1 else str(b.start),
                "block size": len(b),
                "interpolation step": len(b) > 1,
                "cosine aligns student state → teacher state": f"{j + 1} → {aligned[j + 1]}"
                if j + 1 in aligned
                else "final norm → final norm",
            }
            for j, b in enumerate(plan.blocks)
        ]
    ).set_index("student layer")


def method_comparison(results, task: str | None = None, metric: str | None = None) -> pd.DataFrame:
    """The methods side by side at each layer count on one task (default: the first perplexity task, else the average
    accuracy), with each baseline's value divided by boomerang's (for a perplexity, > 1 means boomerang is better)."""
    from .plots import latest, panel_rows

    results = latest(results)
    task = task or headline_task(results)
    rows, metric = panel_rows(results, task, metric)
    table = rows.pivot_table(index="layers", columns="curve", values="value", aggfunc="last", sort=True)
    table.columns.name = f"{task.removesuffix('_local')} ({metric})"
    main = [c for c in table.columns if c.startswith("boomerang")]
    if main:
        for other in [c for c in table.columns if not c.startswith("boomerang")]:
            table[f"{other} / {main[0]}"] = table[other] / table[main[0]]
    return table


def headline_task(results: pd.DataFrame) -> str:
    """The task a comparison leads with: the first perplexity task (WikiText-2 first), else the average accuracy."""
    ppl = sorted(
        {t for t, m in zip(results.task, results.metric) if "perplexity" in m},
        key=lambda t: (not t.startswith("wikitext"), t),
    )
    return ppl[0] if ppl else "average"


def comparison_figure(results, task: str | None = None):
    """`method_comparison` drawn: the headline task against the number of layers, one line per method."""
    from .plots import latest, metric_vs_params

    results = latest(results)
    fig = metric_vs_params(results, task or headline_task(results), x="layers")
    fig.axes[0].legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig
