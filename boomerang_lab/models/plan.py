"""Which teacher layers the student keeps, and which teacher block each student layer stands for."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..store.atomic import atomic_write_text

PLAN_FILE = "boomerang_plan.json"
PAPER_FILE = "student_config.json"


@dataclass(frozen=True)
class LayerPlan:
    """Student layer j is teacher layer `kept[j]` and stands for the teacher block `[kept[j], kept[j+1])`."""

    kept: tuple[int, ...]
    num_teacher_layers: int

    def __post_init__(self):
        kept, n = tuple(int(i) for i in self.kept), int(self.num_teacher_layers)
        object.__setattr__(self, "kept", kept)
        if n < 1:
            raise ValueError(f"num_teacher_layers must be positive, got {n}.")
        if not kept or kept[0] != 0:
            raise ValueError(f"A plan must keep teacher layer 0 first (kept={list(kept)}).")
        if any(b <= a for a, b in zip(kept, kept[1:])):
            raise ValueError(f"kept must be strictly increasing, got {list(kept)}.")
        if kept[-1] >= n:
            raise ValueError(f"kept={list(kept)} names a layer outside the teacher's 0..{n - 1}.")

    @classmethod
    def paper(cls, num_teacher_layers: int, keep_first: int = 1, keep_last: int = 2, every: int = 2) -> "LayerPlan":
        """The paper's initialisation: the first layers, then every `every`-th, then the last layers."""
        n = num_teacher_layers
        if keep_first < 1 or keep_last < 1 or every < 1 or keep_first + keep_last > n:
            raise ValueError(
                f"Cannot build a paper plan with keep_first={keep_first}, keep_last={keep_last}, "
                f"every={every} for {n} teacher layers."
            )
        # Same rule as the paper's get_layer_mappings: align every `every`-th layer, cut the layers between.
        aligned = range(keep_first + every - 1, n - keep_last + 1, every)
        cut = {a - i for a in aligned for i in range(every - 1, 0, -1)}
        return cls(tuple(i for i in range(n) if i not in cut), n)

    @classmethod
    def from_kept(cls, kept, num_teacher_layers: int) -> "LayerPlan":
        return cls(tuple(kept), num_teacher_layers)

    @property
    def num_student_layers(self) -> int:
        return len(self.kept)

    def block(self, j: int) -> range:
        """The teacher layers student layer j stands for."""
        end = self.kept[j + 1] if j + 1 < len(self.kept) else self.num_teacher_layers
        return range(self.kept[j], end)

    @property
    def blocks(self) -> list[range]:
        return [self.block(j) for j in range(len(self.kept))]

    @property
    def multi_layer(self) -> list[int]:
        """Student layers that stand for more than one teacher layer: each is one interpolation step."""
        return [j for j, b in enumerate(self.blocks) if len(b) > 1]

    @property
    def pruned(self) -> list[int]:
        return [i for i in range(self.num_teacher_layers) if i not in set(self.kept)]

    def alignment(self) -> list[tuple[int, int]]:
        """(student, teacher) hidden-state index pairs for the cosine loss; -1 is the final (normed) state."""
        pairs = [(0, 0)] + [(j + 1, self.block(j).stop) for j in range(len(self.kept) - 1)]
        return pairs + [(-1, -1)]

    def check_fits(self, teacher_layers: int, student_layers: int | None = None) -> None:
        """Raise a clear error if this plan does not describe these models."""
        if teacher_layers != self.num_teacher_layers:
            raise ValueError(
                f"The plan is for a {self.num_teacher_layers}-layer teacher, "
                f"but the teacher has {teacher_layers} layers."
            )
        if student_layers is not None and student_layers != len(self.kept):
            raise ValueError(f"The plan keeps {len(self.kept)} layers, but the student has {student_layers}.")

    # --- files -------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"kept": list(self.kept), "num_teacher_layers": self.num_teacher_layers}

    def to_paper_dict(self) -> dict:
        """The paper's `student_config.json`."""
        return {"pruned_teacher_layers": self.pruned, "copied_teacher_layers": list(self.kept)}

    def save(self, directory: str | Path) -> None:
        """Write `boomerang_plan.json` and the paper's `student_config.json` into `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_text(directory / PLAN_FILE, json.dumps(self.to_dict(), indent=2) + "\n")
        atomic_write_text(directory / PAPER_FILE, json.dumps(self.to_paper_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "LayerPlan":
        """Read a plan from a directory or a file: `boomerang_plan.json` or the paper's `student_config.json`."""
        path = Path(path)
        if path.is_dir():
            candidates = [path / PLAN_FILE, path / PAPER_FILE]
            found = [p for p in candidates if p.exists()]
            if not found:
                raise FileNotFoundError(f"No {PLAN_FILE} or {PAPER_FILE} in {path}.")
            path = found[0]
        if not path.exists():
            raise FileNotFoundError(f"Plan file {path} does not exist.")
        data = json.loads(path.read_text())
        if "kept" in data:
            return cls(tuple(data["kept"]), data["num_teacher_layers"])
        if "copied_teacher_layers" in data:
            kept, pruned = data["copied_teacher_layers"], data.get("pruned_teacher_layers", [])
            return cls(tuple(kept), len(kept) + len(pruned))
        raise ValueError(f"{path} is neither a {PLAN_FILE} nor a paper {PAPER_FILE}.")

    def __repr__(self) -> str:
        return f"LayerPlan(kept={list(self.kept)}, num_teacher_layers={self.num_teacher_layers})"
