"""WikiText perplexity of every family size: one sweep from one load vs one process per size (the paper's scripts).

One process per size, as the paper's evaluation scripts work: start Python, load teacher and student from disk,
deep-copy the interpolated model, evaluate, exit. The sweep: one process loads both once and evaluates every size
as a zero-copy family member. Both sides include interpreter start-up and run the same perplexity code on the first
`--max-tokens` tokens of WikiText-2 test; the script checks that they agree and prints the ratio.

    python benchmarks/bench_sweep.py --teacher smollm2-135m --max-tokens 2048 --threads 1
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def load(args):
    from boomerang_lab.family.members import Family
    from boomerang_lab.models.loading import load_model, load_student

    teacher, tokenizer = load_model(args.teacher)
    student, _, plan = load_student(args.student)
    return Family(teacher, student, plan), tokenizer


def ppl_config(args):
    from boomerang_lab.evaluate import PerplexityConfig

    return PerplexityConfig(window=args.window, stride=args.window, max_tokens=args.max_tokens)


def one_size(args) -> None:
    """Worker: the paper's way for one size (fresh process, load both from disk, deep-copy the member)."""
    from boomerang_lab.evaluate import perplexity

    family, tokenizer = load(args)
    model = copy.deepcopy(family.build(args.k, "last"))
    del family
    print(json.dumps({"k": args.k, "ppl": perplexity(model, tokenizer, config=ppl_config(args))["token_perplexity"]}))


def all_sizes(args) -> None:
    """Worker: every size from one load, through `sweep`."""
    from boomerang_lab.evaluate import PPL_TASK, sweep

    family, tokenizer = load(args)
    with tempfile.TemporaryDirectory() as tmp:
        table = sweep(
            family.teacher,
            tokenizer,
            family.student,
            family.plan,
            tasks=[PPL_TASK],
            ppl=ppl_config(args),
            results=Path(tmp) / "bench.csv",
            progress=False,
        )
    token = table[table.metric == "token_perplexity"]
    print(json.dumps(dict(zip(token.k.astype(int).astype(str), token.value))))


def timed(cmd: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return time.perf_counter() - start, out.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="smollm2-135m")
    parser.add_argument("--student", help="student directory (default: the undistilled paper-plan student, saved)")
    parser.add_argument("--max-tokens", type=int, default=2048, help="WikiText-2 test tokens per size")
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--threads", type=int, help="torch threads in every process (default torch's)")
    parser.add_argument("--worker", choices=("one", "all"), help=argparse.SUPPRESS)
    parser.add_argument("--k", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.worker:
        return one_size(args) if args.worker == "one" else all_sizes(args)

    from boomerang_lab.models.adapters import layers_of
    from boomerang_lab.models.loading import load_model
    from boomerang_lab.models.plan import LayerPlan
    from boomerang_lab.models.student import init_student

    with tempfile.TemporaryDirectory() as tmp:
        if args.student is None:  # the paper-plan student, undistilled: same cost as a distilled one
            teacher, tokenizer = load_model(args.teacher)
            plan = LayerPlan.paper(len(layers_of(teacher)))
            init_student(teacher, plan).save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            plan.save(tmp)
            args.student = tmp
            del teacher
        base = [
            sys.executable,
            __file__,
            "--teacher",
            args.teacher,
            "--student",
            args.student,
            "--max-tokens",
            str(args.max_tokens),
            "--window",
            str(args.window),
        ] + (["--threads", str(args.threads)] if args.threads else [])
        sweep_s, out = timed(base + ["--worker", "all"])
        swept = json.loads(out)
        per_size, per_s = {}, 0.0
        for k in map(int, swept):
            seconds, out = timed(base + ["--worker", "one", "--k", str(k)])
            per_size[k], per_s = json.loads(out)["ppl"], per_s + seconds
            print(f"  k={k:2d}: {seconds:6.1f} s in its own process, ppl {per_size[k]:.3f} (sweep {swept[str(k)]:.3f})")
    worst = max(abs(per_size[int(k)] / v - 1) for k, v in swept.items())
    print(f"{len(swept)} sizes x {args.max_tokens} tokens (window {args.window}), threads {args.threads or 'default'}")
    print(f"one process per size: {per_s:7.1f} s")
    print(f"one sweep, one load:  {sweep_s:7.1f} s")
    print(f"ratio: {per_s / sweep_s:.2f}x  (largest relative ppl difference between the two: {worst:.1e})")


if __name__ == "__main__":
    main()
