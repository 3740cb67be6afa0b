"""Students distilled directly at an intermediate size of the family: the paper's standard-distillation baseline.

The paper (its Figure 4) compares each member of a family with a student distilled at the member's own size. That
student starts from the teacher layers the member contains (for the `last` order the reference code's
`--last_layers_to_keep 2 + 2k`, for its Llama setting `--first_layers_to_keep`; for any order, the member's own list
of teacher layers) and is trained like the family's student: the same recipe (local stage included when the recipe
has one), the same tokens and steps, the same objective (CE + KL + cosine).

Its layer plan is the member's layer list (`direct_plan`): a teacher layer the member holds as itself stands for
itself (a one-layer block, aligned with the teacher state right after it), and a student layer the member keeps
stands for its block of the family's plan (aligned with the teacher state at the end of that block). The local stage
then trains exactly the layers that stand for several teacher layers, as in the family's student.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..models.orders import Order
from ..models.plan import LayerPlan
from ..store.atomic import atomic_write_text

DIRECT_FILE = "boomerang_direct.json"
"""What a direct student stands beside: the family's plan, the order and size it was made for, its layers."""

PLAN_ORDERS = {"last": Order.last, "first": Order.first}
"""Orders that follow from the plan alone; every other named order (local, klpatch, ...) needs the family."""


def resolve_order(plan: LayerPlan, order: str | Order | list = "last", family=None) -> Order:
    """An Order for `plan`: an Order as it is, a list of student layers (`Order.explicit`), or a name.

    `last` and `first` follow from the plan; other names (`local`, `klpatch`, any registered order) are computed
    from the family's distilled student, so they need `family` (a `Family` on `plan`)."""
    if isinstance(order, Order):
        return order
    if not isinstance(order, str):
        return Order.explicit(order, plan)
    if family is not None:
        if family.plan != plan:
            raise ValueError(f"The family's plan {family.plan} is not the plan {plan}.")
        return family.order(order)
    if order in PLAN_ORDERS:
        return PLAN_ORDERS[order](plan)
    from ..family.members import ORDERS

    if order in ORDERS:
        raise ValueError(
            f"Order {order!r} is computed from the family's distilled student: pass family=Family(teacher, "
            f"student, plan) (CLI: --student DIR). Orders that need only the plan: {', '.join(PLAN_ORDERS)}."
        )
    raise ValueError(f"Unknown order {order!r}; use one of {sorted(ORDERS)}, an Order, or a list of student layers.")


def check_size(order: Order, k: int) -> None:
    """A direct student is distilled at an intermediate size: k in 1..K-1 (k=0 is the family's student, k=K the
    teacher)."""
    K = order.num_sizes
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= K - 1:
        raise ValueError(
            f"Size k={k!r} is not an intermediate size of order {order.name!r}: valid k are 1..{K - 1} "
            f"(k=0 is the family's student, k={K} the teacher)."
        )


def member_layers(plan: LayerPlan, order: Order, k: int) -> list[int]:
    """The teacher layers of the family's size-k member, in order: each patched student layer's whole block, and
    for each other student layer the teacher layer it was initialised from."""
    from .baselines import naive_layers  # the same list: naive pruning drops what the member replaces

    return naive_layers(plan, order.patched(k))


def direct_plan(plan: LayerPlan, order: Order, k: int) -> LayerPlan:
    """The layer plan of a student distilled directly at size k: it keeps the member's teacher layers."""
    check_size(order, k)
    return LayerPlan.from_kept(member_layers(plan, order, k), plan.num_teacher_layers)


def size_for_layers(plan: LayerPlan, order: Order, layers: int) -> int:
    """The intermediate size k whose member has `layers` decoder layers (an error names the ones there are)."""
    found = {len(member_layers(plan, order, k)): k for k in range(1, order.num_sizes)}
    if layers not in found:
        raise ValueError(
            f"No intermediate member of order {order.name!r} has {layers} layers; they have {sorted(found)}."
        )
    return found[layers]


def direct_student(
    teacher: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    plan: LayerPlan,
    k: int,
    order: str | Order | list = "last",
    profile="quick",
    output_dir: str | Path | None = None,
    family=None,
    data=None,
    progress: bool = True,
    **overrides,
) -> Path:
    """Distil a student at the family's size k, initialised with that member's teacher layers; return its directory.

    `plan` is the family's plan and `order` its patch order (a name, an Order or a list; names other than `last` and
    `first` need `family`, see `resolve_order`). The recipe is `profile`'s (a name, a file or a Profile) with
    `overrides` (DistillConfig fields, e.g. seed=1); `data` defaults to the profile's token blocks of the shipped
    corpus, as for the family's student.
    Like every run it resumes from its checkpoints when rerun, and a finished directory of the same recipe and
    layers is returned without training (one of another recipe is an error). The directory also holds
    `boomerang_direct.json` (the family's plan, the order, k and the layers).
    """
    from ..config.profiles import distill_config
    from ..data import packed_blocks
    from ..distill.trainer import distill, finished
    from ..family.members import member_builder
    from ..models.student import init_student

    resolved = resolve_order(plan, order, family)
    own = direct_plan(plan, resolved, k)
    name = getattr(profile, "name", None) or Path(str(profile)).stem
    out = Path(output_dir or f"runs/{name}/direct_{own.num_student_layers}L_{resolved.name}")
    config = distill_config(profile, output_dir=str(out), **overrides)
    if config.local_steps and not own.multi_layer:  # every layer stands for itself: nothing to train locally
        config = distill_config(profile, output_dir=str(out), **{**overrides, "local_steps": 0})
    if config.student_init != "teacher":
        raise ValueError(
            f"A direct student starts from the member's teacher layers; student_init={config.student_init!r}."
        )
    if not finished(config, own):
        if data is None:
            data = packed_blocks(tokenizer, seq_len=config.seq_len, packing=config.packing)
        if progress:
            print(f"[direct] k={k} ({resolved.name}): {own.num_student_layers} layers {list(own.kept)}", flush=True)
        start = init_student(teacher, own, seed=config.seed)
        distill(teacher, start, own, data, config, tokenizer, progress=progress, members=member_builder)
    info = {"k": k, "order": resolved.to_dict(), "family_plan": plan.to_dict(), "layers": list(own.kept)}
    if not (out / DIRECT_FILE).exists():
        atomic_write_text(out / DIRECT_FILE, json.dumps(info, indent=2) + "\n")
    return out


def read_direct(path: str | Path) -> dict:
    """The `boomerang_direct.json` of a direct student's directory."""
    file = Path(path) / DIRECT_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{path} is not a direct student's directory (no {DIRECT_FILE}).")
    return json.loads(file.read_text())
