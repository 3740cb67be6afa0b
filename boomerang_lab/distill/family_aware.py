"""The family-aware global stage: at each step the loss is also computed on members of the family built from the
current student, so that each student layer learns to work among teacher blocks, not only inside the student.

The sampling rule (the "sandwich rule" of slimmable networks, without the largest network: the teacher is frozen):

- always the student itself (size 0);
- plus `members_per_step` members of distinct sizes drawn uniformly from 1..K-1 (K: the number of multi-layer
  student layers; size K is the teacher, which has nothing to train), each in an order drawn uniformly from
  `member_orders`: `last`, `first`, or `random` (a uniformly random order of the multi-layer blocks, so that the
  size-k member patches a uniformly random set of k blocks).

The quick profile serves its family in the `klpatch` order, which is searched after distillation from the distilled
student: no such order exists while training, so its recipe draws `random` block subsets, which cover every order a
search can return (any size-k member of any order is a k-subset of the blocks); `last` and `first` are for recipes
that serve those orders.

The draws of a step are a function of (seed, optimizer step) only: every micro-step of gradient accumulation and
every process (rank) draws the same members. So an optimizer step's gradient is the same function of its global batch
however the batch is split (batch_size x grad_accum x processes), and a resumed run draws the sequence it would have
drawn uninterrupted. (Rank and micro-step are deliberately not inputs: per-rank draws would make the recipe depend on
the number of processes.)

The loss of a step is the mean of the student's loss and its members' (each CE + KL + cosine, the teacher's forward
computed once and shared); a member's cosine terms are those of the student layers it still holds, each aligned with
its teacher block's end as in `LayerPlan.alignment`, plus the embeddings' and the final state's. Teacher blocks are
frozen: gradients reach student parameters only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..config.distill import MEMBER_ORDERS, FamilyAwareConfig  # noqa: F401 (re-exported)
from ..models.orders import Order
from ..models.plan import LayerPlan

_SALT = 0x0FA17  # keeps these draws apart from any other stream seeded with (seed, step)


@dataclass(frozen=True)
class Draw:
    """One sampled member: its size k, the order it was drawn in and the student layers it patches."""

    k: int
    order: str
    patched: tuple[int, ...]

    def __str__(self) -> str:
        return f"{self.k}@{self.order}:{','.join(map(str, self.patched))}"


def draw_members(config: FamilyAwareConfig, plan: LayerPlan, seed: int, step: int) -> list[Draw]:
    """The members of optimizer step `step` (0-based) of a run seeded `seed`; the same on every micro-step and rank."""

    multi = plan.multi_layer
    K = len(multi)
    if not config.on or K < 2:
        return []
    rng = np.random.default_rng([_SALT, int(seed), int(step)])
    sizes = rng.choice(np.arange(1, K), size=min(config.members_per_step, K - 1), replace=False)
    draws = []
    for k in sizes.tolist():
        name = config.member_orders[int(rng.integers(len(config.member_orders)))]
        if name == "random":
            order = Order.from_blocks(plan, [multi[i] for i in rng.permutation(K)], "random")
        else:
            order = getattr(Order, name)(plan)
        draws.append(Draw(int(k), name, tuple(sorted(order.patched(k)))))
    return draws


def member_alignment(plan: LayerPlan, patched: Sequence[int]) -> list[tuple[int, int]]:
    """(member, teacher) hidden-state index pairs for a member's cosine loss: the embeddings, each student layer the
    member holds (but the last, as in `LayerPlan.alignment`) with its teacher block's end, and the final state."""
    patched = set(patched)
    pairs, position = [(0, 0)], 0
    last = plan.num_student_layers - 1
    for j in range(plan.num_student_layers):
        position += len(plan.block(j)) if j in patched else 1
        if j < last and j not in patched:
            pairs.append((position, plan.block(j).stop))
    return pairs + [(-1, -1)]
