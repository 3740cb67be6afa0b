"""The `boomerang` command line: one subcommand per pipeline stage."""
from __future__ import annotations

import argparse
import sys


def cmd_sizes(args: argparse.Namespace) -> None:
    """Print the family table for the paper plan with the teacher-initialised (undistilled) student."""
    from .family import Family
    from .models import load_model
    from .student import init_student

    teacher, _ = load_model(args.teacher, dtype=args.dtype)
    plan = _plan(args, teacher)
    family = Family(teacher, init_student(teacher, plan), plan)
    table = family.sizes(args.order)
    print(f"teacher {args.teacher}: {plan}")
    print(table.to_string(index=False))


def cmd_distill(args: argparse.Namespace) -> None:
    """Distil a student from the teacher with a profile's recipe (rerun the same command to resume)."""
    from dataclasses import replace

    from .distill import distill, profile
    from .models import load_model
    from .student import init_student
    from .text_data import packed_blocks

    chosen = {"max_steps": args.max_steps, "batch_size": args.batch_size, "grad_accum": args.grad_accum,
              "seq_len": args.seq_len, "lr": args.lr, "seed": args.seed, "bf16": args.bf16, "teacher": args.teacher,
              "freeze_embeddings": args.freeze_embeddings}
    config = profile(args.profile, output_dir=args.out or f"runs/{args.profile}/student",
                     student_init=args.student_init, use_cpu=args.cpu,
                     **{k: v for k, v in chosen.items() if v is not None})
    weights = {"ce_weight": 0.0 if args.no_ce else None, "temperature": args.temperature,
               "kl_weight": 0.0 if args.no_kl else args.kl_weight, "cos_weight": 0.0 if args.no_cos else args.cos_weight}
    config = replace(config, loss=replace(config.loss, **{k: v for k, v in weights.items() if v is not None}))
    teacher, tokenizer = load_model(config.teacher)
    plan = _plan(args, teacher)
    student = init_student(teacher, plan, random_init=config.student_init == "random", seed=config.seed)
    data = packed_blocks(tokenizer, args.data, config.seq_len, name=args.data_config, split=args.split,
                         text_field=args.text_field)
    print(f"teacher {config.teacher}: {plan}; {config.max_steps} steps of {config.batch_size}x{config.seq_len} tokens")
    out = distill(teacher, student, plan, data, config, tokenizer)
    print(f"Student written to {out}")


def cmd_run(args: argparse.Namespace) -> None:
    """Execute the notebooks 01→04 and 06 with papermill for a profile, into an output folder."""
    from .pipeline import PipelineError, run

    options = {k: v for k, v in vars(args).items() if k in ("out", "teacher", "student", "random_init", "tasks", "limit",
                                                           "orders", "results", "figures") and v is not None}
    try:
        out = run(args.profile, **options)
    except PipelineError as err:
        sys.exit(f"boomerang run: {err}")
    print(f"Executed notebooks in {out}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    """Sweep methods x orders x sizes x tasks of one family into the results table (rerun to resume)."""
    from pathlib import Path

    from .distill import run_name
    from .evaluate import SweepConfig, sweep
    from .models import TINY, load_model, load_student

    teacher_name = args.teacher or (TINY if args.profile == "smoke" else "smollm2-135m")
    teacher, tokenizer = load_model(teacher_name, dtype=args.dtype)
    if args.student:
        student, _, plan = load_student(args.student, dtype=args.dtype)
    else:
        student = None  # the teacher-initialised student, shared with the teacher (no copy)
        plan = _plan(args, teacher)
    random_student = load_model(args.random_student, dtype=args.dtype)[0] if args.random_student else None
    distilled = {Path(d).name: load_model(d, dtype=args.dtype)[0] for d in args.distilled or []}
    config = SweepConfig(profile=args.profile, tasks=args.tasks, limit=args.limit, methods=args.methods,
                         orders=args.orders, ks=args.ks, batch_size=args.batch_size,
                         results=args.results or f"results/{args.profile}.csv")
    sweep(teacher, tokenizer, student, plan, config, random_student=random_student, distilled=distilled or None,
          teacher_name=teacher_name, student_name=run_name(args.student) if args.student else None,
          random_name=run_name(args.random_student) if args.random_student else None)


def _limit(text: str) -> int | float:
    """An example count per task (100) or a fraction of each task (0.1)."""
    value = float(text)
    return int(value) if value.is_integer() else value


def _plan(args: argparse.Namespace, teacher) -> "LayerPlan":
    """The paper-style plan the --keep-first/--keep-last/--every flags describe, for this teacher."""
    from .adapters import layers_of
    from .plan import LayerPlan

    return LayerPlan.paper(len(layers_of(teacher)), keep_first=args.keep_first, keep_last=args.keep_last,
                           every=args.every)


def _add_plan_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keep-first", type=int, default=1, help="teacher layers kept at the start (paper: 1)")
    parser.add_argument("--keep-last", type=int, default=2, help="teacher layers kept at the end (paper: 2)")
    parser.add_argument("--every", type=int, default=2, help="keep every n-th layer in between (paper: 2)")


def _add_profile_arg(parser: argparse.ArgumentParser, help: str = "smoke: seconds on a tiny random model; quick: "
                     "SmolLM2-135M on a CPU; paper: a GPU") -> None:
    parser.add_argument("--profile", choices=("smoke", "quick", "paper"), default="quick", help=help)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="boomerang", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    sizes = sub.add_parser("sizes", help="print the sizes of the interpolated family")
    sizes.add_argument("--teacher", default="smollm2-135m", help="hub id, local path, or smollm2-135m")
    sizes.add_argument("--dtype", default="float32")
    sizes.add_argument("--order", default="last")
    _add_plan_args(sizes)
    sizes.set_defaults(func=cmd_sizes)

    dist = sub.add_parser("distill", help="distil a student from the teacher (CE + KL + cosine alignment)")
    _add_profile_arg(dist)
    dist.add_argument("--teacher", help="hub id, local path, or smollm2-135m (default: the profile's)")
    dist.add_argument("--out", help="the student directory to write (default runs/<profile>/student)")
    dist.add_argument("--student-init", choices=("teacher", "random"), default="teacher",
                      help="keep the teacher's layers (paper) or start from random weights (ablation)")
    _add_plan_args(dist)
    dist.add_argument("--freeze-embeddings", action=argparse.BooleanOptionalAction,
                      help="freeze the embeddings and LM head (default: the profile's)")
    dist.add_argument("--data", nargs="+", help="text files/folders or a hub dataset id (default: the data/ corpus)")
    dist.add_argument("--data-config", help="hub dataset configuration name")
    dist.add_argument("--split", default="train", help="hub dataset split (never an evaluation split)")
    dist.add_argument("--text-field", default="text", help="hub dataset text column")
    for flag, kind in (("--max-steps", int), ("--batch-size", int), ("--grad-accum", int), ("--seq-len", int),
                       ("--lr", float), ("--seed", int), ("--kl-weight", float), ("--cos-weight", float),
                       ("--temperature", float)):
        dist.add_argument(flag, type=kind, help="(default: the profile's)")
    for term in ("ce", "kl", "cos"):
        dist.add_argument(f"--no-{term}", action="store_true", help=f"switch the {term} term off")
    dist.add_argument("--bf16", action=argparse.BooleanOptionalAction, help="bf16 autocast (default: the profile's)")
    dist.add_argument("--cpu", action="store_true", help="train on the CPU even if a GPU is present")
    dist.set_defaults(func=cmd_distill)

    run = sub.add_parser("run", help="run the whole study (notebooks 01-04, 06) with papermill")
    _add_profile_arg(run)
    run.add_argument("--out", help="folder for the executed notebooks and students (default outputs/<profile>)")
    run.add_argument("--teacher", help="hub id, local path, or smollm2-135m (default: the profile's)")
    run.add_argument("--student", help="the distilled student's directory (default <out>/student)")
    run.add_argument("--tasks", nargs="+", help="evaluation tasks (default: the profile's)")
    run.add_argument("--limit", type=_limit, help="examples per task, or a fraction (default: the profile's)")
    run.add_argument("--random-init", action=argparse.BooleanOptionalAction,
                     help="distil a random-init student for that baseline (default: smoke and paper only)")
    run.add_argument("--orders", nargs="+", help="patch orders to evaluate: last, first, klpatch, optimal "
                                                 "(default: last; paper: all four)")
    run.add_argument("--results", help="results table (default results/<profile>.csv)")
    run.add_argument("--figures", help="figures folder (default figures/ for quick)")
    run.set_defaults(func=cmd_run)

    ev = sub.add_parser("evaluate", help="evaluate every size of the family and the baselines into one table")
    _add_profile_arg(ev, "tasks and limit: smoke (seconds), quick (CPU default), paper (all tasks, no limit)")
    ev.add_argument("--teacher", help="hub id, local path, or smollm2-135m (default: the profile's)")
    ev.add_argument("--dtype", default="float32")
    who = ev.add_mutually_exclusive_group()
    who.add_argument("--student", help="the distilled student's directory (with its boomerang_plan.json)")
    who.add_argument("--student-init", choices=("teacher",), default="teacher",
                     help="no --student: the undistilled teacher-initialised student (paper plan below)")
    _add_plan_args(ev)
    ev.add_argument("--methods", nargs="+", default=["boomerang"],
                    help="boomerang naive shortgpt random_init distilled (default boomerang)")
    ev.add_argument("--orders", nargs="+", default=["last"], help="patch orders, e.g. last first klpatch optimal")
    ev.add_argument("--ks", nargs="+", type=int, help="sizes to evaluate (default all)")
    ev.add_argument("--tasks", nargs="+",
                    help="wikitext_ppl, *_local tasks (offline) or stock lm-eval names (default: the profile's)")
    ev.add_argument("--limit", type=_limit, help="examples per lm-eval task, or a fraction (default: the profile's)")
    ev.add_argument("--random-student", help="a student distilled from random init (method random_init)")
    ev.add_argument("--distilled", nargs="+", help="standard-distillation student directories (method distilled)")
    ev.add_argument("--batch-size", type=int, default=1, help="lm-eval batch size")
    ev.add_argument("--results", help="results table, .csv or .parquet (default results/<profile>.csv)")
    ev.set_defaults(func=cmd_evaluate)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as err:
        sys.exit(f"boomerang {args.command}: {err}")


if __name__ == "__main__":
    main()
