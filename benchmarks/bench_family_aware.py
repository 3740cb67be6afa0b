"""Seconds per global step of the quick recipe, plain vs family-aware (1 and 2 members per step), on SmolLM2-135M.

    OMP_NUM_THREADS=1 python benchmarks/bench_family_aware.py --rounds 2 --warmup 1 --steps 6

The global stage of the `quick` profile (4 x 128 tokens a step, bf16 autocast where the CPU has it natively, else
float32 (`models.loading.native_bf16`), frozen embeddings and head) on the
embedded SmolLM2-135M-Instruct teacher and its 16-layer student, one thread, real text (the corpus's first training
blocks). The variants run interleaved (plain, m=1, m=2, plain, ...) so that a machine whose load drifts slows them
alike; each run's first `--warmup` steps are not timed. Every variant draws with seed 0, so the family-aware runs draw
the same member sizes at the same steps (the first steps of a real run). Rows (one per run: wall and CPU seconds per
step, the mean member size drawn) go to benchmarks/results/family_aware_step_cpu.csv; the summary (median over rounds,
ratio to plain) is printed and written beside it (.txt).
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch
from datasets import Dataset
from transformers import TrainerCallback

from boomerang_lab.config.profiles import distill_config as profile
from boomerang_lab.distill.family_aware import draw_members
from boomerang_lab.distill.trainer import distill
from boomerang_lab.family.members import member_builder
from boomerang_lab.models.loading import load_model
from boomerang_lab.models.plan import LayerPlan
from boomerang_lab.models.student import init_student
from boomerang_lab.store.atomic import atomic_write_text

RESULTS = Path(__file__).parent / "results"


def _dtype() -> str:
    from boomerang_lab.models.loading import native_bf16

    return "bf16 autocast" if native_bf16(torch.device("cpu")) else "float32 (bf16 is not native on this CPU)"


class Clock(TrainerCallback):
    """(wall, CPU) seconds at the end of the warm-up and of the last step."""

    def __init__(self, warmup: int):
        self.warmup, self.marks = warmup, {}

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step in (self.warmup, state.max_steps):
            self.marks[state.global_step] = (time.perf_counter(), time.process_time())


_BLOCKS: dict = {}


def text_blocks(n: int) -> Dataset:
    """The first n training blocks of the quick recipe's corpus (128 tokens each): the loss on real text, as in a run.
    (A first try on random tokens took ~30 min of wall time per step at ~10 % of a core; the real-text run here was no
    faster on its first step, so the slowness was the CPU share and the first step's set-up, not the tokens.)"""
    if n not in _BLOCKS:
        from boomerang_lab.data import packed_blocks

        _, tokenizer = load_model("smollm2-135m")
        blocks = packed_blocks(tokenizer, seq_len=128)
        rows = [row["input_ids"] for row in itertools.islice(iter(blocks), n)]
        _BLOCKS[n] = Dataset.from_dict({"input_ids": [list(r) for r in rows]})
    return _BLOCKS[n]


def one_run(teacher, plan, members: int, warmup: int, steps: int) -> dict:
    total = warmup + steps
    data = text_blocks(total * 4)
    clock = Clock(warmup)
    with tempfile.TemporaryDirectory() as tmp:
        config = profile(
            "quick",
            output_dir=str(Path(tmp, "student")),
            local_steps=0,
            max_steps=total,
            save_steps=10 * total,
            use_cpu=True,
            family_aware={"members_per_step": members},
        )
        student = init_student(teacher, plan)
        distill(teacher, student, plan, data, config, callbacks=[clock], progress=False, members=member_builder)
        del student
    (w0, c0), (w1, c1) = clock.marks[warmup], clock.marks[total]
    draws = [d for s in range(warmup, total) for d in draw_members(config.family_aware, plan, config.seed, s)]
    return {
        "members_per_step": members,
        "wall_s_per_step": (w1 - w0) / steps,
        "cpu_s_per_step": (c1 - c0) / steps,
        "mean_member_k": sum(d.k for d in draws) / len(draws) if draws else 0.0,
        "steps": steps,
        "warmup": warmup,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--members", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--csv", default=str(RESULTS / "family_aware_step_cpu.csv"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    teacher, _ = load_model("smollm2-135m")
    plan = LayerPlan.paper(teacher.config.num_hidden_layers)
    rows = []
    for r in range(args.rounds):
        for m in args.members:
            row = one_run(teacher, plan, m, args.warmup, args.steps)
            row.update(
                round=r,
                threads=torch.get_num_threads(),
                omp=os.environ.get("OMP_NUM_THREADS", ""),
                utc=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
                machine="2-core shared CPU (loaded: other distillations running)",
            )
            rows.append(row)
            print(row, flush=True)
            pd.DataFrame(rows).to_csv(args.csv, index=False)
    table = pd.DataFrame(rows)
    summary = table.groupby("members_per_step")[["wall_s_per_step", "cpu_s_per_step", "mean_member_k"]].median()
    for clock in ("wall_s_per_step", "cpu_s_per_step"):
        summary[clock.replace("_s_per_step", "_ratio")] = summary[clock] / summary.loc[0, clock]
    text = (
        f"quick global stage on SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised), 4 x 128 tokens, {_dtype()}, 1 thread, "
        f"{args.rounds} interleaved "
        f"rounds x {args.steps} timed steps (median over rounds); K = {len(plan.multi_layer)}\n"
        + summary.to_string(float_format=lambda v: f"{v:.3f}")
        + "\n"
    )
    print(text)
    atomic_write_text(Path(args.csv).with_suffix(".txt"), text)


if __name__ == "__main__":
    main()
