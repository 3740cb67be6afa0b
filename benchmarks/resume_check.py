"""Is resume exact on the real job? A short quick-recipe distillation of SmolLM2-135M, run whole and killed with
SIGKILL inside each stage, then resumed: are the students bit-identical, and how far apart are two whole runs?

Issue 12 saw a rerun after `kill -9` land within 2e-5 (relative WikiText perplexity) of the committed table, which came
from an uninterrupted run "perhaps on another machine". This script separates the two causes on one machine:
  whole_a vs whole_b      two uninterrupted runs: the machine's own run-to-run determinism
  whole_a vs killed_X     killed at a step of stage X, then resumed by rerunning the same call
Writes one line per comparison (max |difference| over all weights, and whether they are equal) to --out.

    python benchmarks/resume_check.py --out benchmarks/results/resume_check_cpu.txt
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

STEPS = {"local_steps": 6, "max_steps": 6, "save_steps": 3}
RECIPES = {"quick": {}, "fp32_global": {"local_steps": 0, "bf16": False}}
"""The current quick recipe (local + global stages, bf16 autocast), and the previous one (global only, float32)."""


def run(out: Path, kill_stage: str | None = None, kill_step: int = 0, recipe: str = "quick") -> None:
    """Distil in this process; with kill_stage, SIGKILL this process at the end of that stage's step."""
    from transformers import TrainerCallback

    from boomerang_lab import LayerPlan, init_student, load_model
    from boomerang_lab.config.profiles import distill_config as profile
    from boomerang_lab.data import packed_blocks
    from boomerang_lab.distill.trainer import distill

    class Kill(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if Path(args.output_dir).name == kill_stage and state.global_step == kill_step:
                os.kill(os.getpid(), signal.SIGKILL)

    teacher, tok = load_model("smollm2-135m")
    plan = LayerPlan.paper(30)
    config = profile("quick", output_dir=str(out), **{**STEPS, **RECIPES[recipe]})
    distill(
        teacher,
        init_student(teacher, plan),
        plan,
        packed_blocks(tok, seq_len=config.seq_len),
        config,
        tok,
        callbacks=[Kill()] if kill_stage else [],
        progress=False,
    )


def compare(a: Path, b: Path) -> tuple[float, bool]:
    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    diff = max((x[k] - y[k]).abs().max().item() for k in x)
    return diff, all(torch.equal(x[k], y[k]) for k in x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("runs/resume_check"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/resume_check_cpu.txt"))
    p.add_argument("--child", nargs=4, metavar=("OUT", "STAGE", "STEP", "RECIPE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        out, stage, step, recipe = args.child
        return run(Path(out), None if stage == "-" else stage, int(step), recipe)

    def child(out: Path, stage: str = "-", step: int = 0) -> int:
        command = [sys.executable, __file__, "--child", str(out), stage, str(step), out.parent.name]
        return subprocess.run(command, capture_output=True).returncode

    lines = [
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; steps {STEPS}"
    ]
    for recipe, changes in RECIPES.items():
        work = args.work / recipe
        kills = [("global", 4)] if changes.get("local_steps") == 0 else [("local", 4), ("global", 4)]
        for name in ("whole_a", "whole_b"):
            if not (work / name).exists():
                assert child(work / name) == 0, name
        for stage, step in kills:
            name = f"killed_{stage}_{step}"
            if not (work / name).exists():
                code = child(work / name, stage, step)
                assert code == -signal.SIGKILL, f"{name}: expected a SIGKILL, got exit code {code}"
                assert child(work / name) == 0, f"{name}: the resumed run failed"
        for name in ("whole_b", *(f"killed_{stage}_{step}" for stage, step in kills)):
            diff, equal = compare(work / "whole_a", work / name)
            lines.append(f"{recipe} {changes}: whole_a vs {name}: max |diff| {diff:.3e}, bit-identical {equal}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
