"""Patch orders: which student layers are swapped for their teacher blocks at each interpolation size."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..store.atomic import atomic_write_text
from .plan import LayerPlan


@dataclass(frozen=True)
class Order:
    """`steps[i]` holds the student layers patched at size i+1; size k patches the union of the first k steps."""

    name: str
    steps: tuple[tuple[int, ...], ...]

    @property
    def num_sizes(self) -> int:
        """K: the number of patch steps (sizes run 0..K)."""
        return len(self.steps)

    def patched(self, k: int) -> frozenset[int]:
        if not 0 <= k <= len(self.steps):
            raise ValueError(f"Size k={k} is out of range for order {self.name!r}: valid k are 0..{len(self.steps)}.")
        return frozenset(j for step in self.steps[:k] for j in step)

    @classmethod
    def last(cls, plan: LayerPlan) -> "Order":
        """Patch from the end: size k = student layers before the k-th multi-layer block from the end + teacher
        after."""
        multi = plan.multi_layer
        cuts = [len(plan.kept)] + multi[::-1]
        steps = [tuple(range(cuts[i + 1], cuts[i])) for i in range(len(multi))]
        return cls("last", _absorb_rest(steps, plan))

    @classmethod
    def first(cls, plan: LayerPlan) -> "Order":
        """Patch from the start: size k = teacher up to the end of the k-th multi-layer block + the remaining
        student."""
        multi = plan.multi_layer
        ends = [0] + [j + 1 for j in multi]
        steps = [tuple(range(ends[i], ends[i + 1])) for i in range(len(multi))]
        return cls("first", _absorb_rest(steps, plan))

    @classmethod
    def from_blocks(cls, plan: LayerPlan, blocks: Sequence[int], name: str = "custom") -> "Order":
        """An order of the multi-layer student layers; a single-layer one goes with the nearest multi-layer one
        before it."""
        multi = plan.multi_layer
        if sorted(blocks) != multi:
            raise ValueError(
                f"An order over blocks must list each multi-layer student layer once: {multi}; got {list(blocks)}."
            )
        owner = {}
        for j in range(len(plan.kept)):
            before = [m for m in multi if m <= j]
            owner[j] = before[-1] if before else multi[0]
        return cls(name, tuple(tuple(j for j in range(len(plan.kept)) if owner[j] == b) for b in blocks))

    @classmethod
    def explicit(cls, layers: Sequence[int | Sequence[int]], plan: LayerPlan) -> "Order":
        """Exactly the listed student layers (or groups of them), one step each, in this order."""
        steps = tuple(tuple(x) if isinstance(x, (list, tuple)) else (int(x),) for x in layers)
        flat = [j for s in steps for j in s]
        bad = [j for j in flat if not 0 <= j < len(plan.kept)]
        if bad or len(set(flat)) != len(flat):
            raise ValueError(
                f"An explicit order lists distinct student layers in 0..{len(plan.kept) - 1}; got {list(layers)}."
            )
        return cls("explicit", steps)

    def to_dict(self) -> dict:
        return {"name": self.name, "steps": [list(s) for s in self.steps]}

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Order":
        data = json.loads(Path(path).read_text())
        return cls(data["name"], tuple(tuple(s) for s in data["steps"]))


def _absorb_rest(steps: list[tuple[int, ...]], plan: LayerPlan) -> tuple[tuple[int, ...], ...]:
    """Single-layer student layers not yet covered are patched at the last step, so size K is the teacher."""
    covered = {j for s in steps for j in s}
    rest = tuple(j for j in range(len(plan.kept)) if j not in covered)
    if not steps:
        return (rest,) if rest else ()
    return tuple(steps[:-1]) + (tuple(sorted(steps[-1] + rest)),)


def member_layout(plan: LayerPlan, member_or_patched) -> list[tuple[str, int]]:
    """Where each layer of a member comes from, in order: ("teacher", i) for teacher layer i of a patched block,
    ("student", j) for student layer j. Takes a member (its `boomerang["patched"]`) or the patched student layers."""
    patched = getattr(member_or_patched, "boomerang", {"patched": member_or_patched})["patched"]
    patched = set(patched)
    layout = []
    for j in range(plan.num_student_layers):
        layout += [("teacher", i) for i in plan.block(j)] if j in patched else [("student", j)]
    return layout
