"""Table 3's seconds, measured: seconds per optimizer step of the family's student and of every direct student, both
stages of the recipe, timed in one interleaved run (issue 25).

For each model of `costs.family_costs` (k=0: the family's 16-layer student with the profile's plan; k=1..13: the
direct student of the member of that size in the `last` order, `direct.direct_plan`, as table3.py chose them) this
runs the real distillation (`distill.distill`, the profile's recipe: its batch, sequence length, bf16 autocast, frozen
embeddings) for `--warmup` + `--steps` steps of each stage the recipe has (the local stage only where the student has
a multi-layer block, as `direct_student` does) and times each optimizer step (consecutive `on_step_end` calls: data,
forward, backward, optimizer, logging). The warm-up steps are dropped. The models are interleaved, round after round
(the order reversed every other round), so that the load of other jobs on this shared machine hits them alike.

    OMP_NUM_THREADS=1 python benchmarks/table3_steps.py [--profile quick] [--rounds 1] [--steps 1] [--warmup 1]

Writes benchmarks/results/table3_steps_cpu.csv (one row per model, stage, round and timed step); table3.py turns it
into seconds = local_steps x seconds per local step + max_steps x seconds per global step (medians).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from transformers import TrainerCallback

from boomerang_lab.store.atomic import atomic_path

RESULTS = Path(__file__).resolve().parent / "results"


class StepTimes(TrainerCallback):
    """Seconds of each optimizer step, from the previous step's end (the train start for the first) to its end: wall
    seconds and this process's CPU seconds (one thread: the compute the step needed, which the load of other jobs
    on the machine stretches in wall time but not in CPU time). Stops the run after `stop` steps (no saving)."""

    def __init__(self, stop: int):
        self.stop, self.wall, self.cpu = stop, [], []

    def on_train_begin(self, args, state, control, **kwargs):
        self.last = (time.perf_counter(), time.process_time())

    def on_step_end(self, args, state, control, **kwargs):
        now = (time.perf_counter(), time.process_time())
        self.wall.append(now[0] - self.last[0])
        self.cpu.append(now[1] - self.last[1])
        self.last = now
        if state.global_step >= self.stop:
            raise Timed


class Timed(Exception):
    """Raised after the last timed step: the run stops there, before any checkpoint or final save."""


def spread(n: int) -> list[int]:
    """0..n-1 from both ends inwards (0, n-1, 1, n-2, ...): a run cut short still spans the sizes."""
    return [k for pair in zip(range(n), reversed(range(n))) for k in pair][:n] if n else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--order", default="last")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--first-round", type=int, default=0, help="number of the first round (to add rounds)")
    parser.add_argument("--steps", type=int, default=1, help="timed steps per stage per round")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per stage per round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(RESULTS / "table3_steps_cpu.csv"))
    parser.add_argument("--sizes", nargs="*", type=int, help="only these k, in this order (default: all, `spread`)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from boomerang_lab.config.profiles import distill_config as distill_profile
    from boomerang_lab.config.profiles import get
    from boomerang_lab.data import packed_blocks
    from boomerang_lab.distill.trainer import distill
    from boomerang_lab.evaluate.direct import direct_plan, resolve_order
    from boomerang_lab.models.loading import load_model
    from boomerang_lab.models.student import init_student

    chosen = get(args.profile)
    teacher, tokenizer = load_model(chosen.teacher)
    plan = chosen.layer_plan(teacher.config.num_hidden_layers)
    order = resolve_order(plan, args.order)
    recipe = chosen.distill
    data = packed_blocks(tokenizer, seq_len=recipe.seq_len, packing=recipe.packing)
    ks = args.sizes if args.sizes else spread(order.num_sizes)
    plans = {k: plan if k == 0 else direct_plan(plan, order, k) for k in ks}
    n = args.warmup + args.steps
    before = pd.read_csv(args.out) if args.first_round and Path(args.out).exists() else pd.DataFrame()
    rows, start = before.to_dict("records"), time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="table3_steps_"))
    try:
        for r in range(args.first_round, args.first_round + args.rounds):
            for k in ks if r % 2 == 0 else ks[::-1]:
                own = plans[k]
                stages = (["local"] if recipe.local_steps and own.multi_layer else []) + ["global"]
                for stage in stages:
                    config = distill_profile(
                        args.profile,
                        output_dir=str(work / f"k{k}_r{r}_{stage}"),
                        local_steps=n if stage == "local" else 0,
                        max_steps=n if stage == "global" else 0,
                        save_steps=10**6,
                    )
                    times = StepTimes(n)
                    student = init_student(teacher, own, seed=recipe.seed)
                    try:
                        distill(teacher, student, own, data, config, tokenizer, callbacks=[times], progress=False)
                    except Timed:
                        pass
                    del student
                    shutil.rmtree(work / f"k{k}_r{r}_{stage}.partial", ignore_errors=True)
                    for step in range(args.warmup, n):
                        rows.append(
                            dict(
                                k=k,
                                layers=own.num_student_layers,
                                stage=stage,
                                round=r,
                                step=step + 1,
                                wall_seconds=times.wall[step],
                                cpu_seconds=times.cpu[step],
                            )
                        )
                done = pd.DataFrame(rows)
                mine = (
                    done[(done.k == k) & (done["round"] == r)]
                    .groupby("stage")[["cpu_seconds", "wall_seconds"]]
                    .median()
                )
                print(
                    f"{time.strftime('%H:%M:%S')} round {r} k={k} ({own.num_student_layers} layers): "
                    + ", ".join(
                        f"{s} {v.cpu_seconds:.2f} cpu s/step ({v.wall_seconds:.1f} wall)" for s, v in mine.iterrows()
                    )
                    + f"  [{time.perf_counter() - start:.0f} s]",
                    flush=True,
                )
                with atomic_path(Path(args.out)) as tmp:
                    done.assign(profile=args.profile, order=args.order, threads=args.threads).to_csv(tmp, index=False)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"done in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
