"""The `boomerang` command line: one subcommand per pipeline stage."""

from __future__ import annotations

import argparse
import sys
import typing

from ..config.profiles import PROFILES, Profile, field_rows, fields_help, table, type_name
from ..config.profiles import get as get_profile


def cmd_sizes(args: argparse.Namespace) -> None:
    """Print the family table for the paper plan with the teacher-initialised (undistilled) student."""
    from ..family.members import Family
    from ..models.loading import load_model
    from ..models.student import init_student

    teacher, _ = load_model(args.teacher, dtype=args.dtype)
    plan = get_profile(Profile(), **_field_values(args)).layer_plan(len(_layers(teacher)))
    family = Family(teacher, init_student(teacher, plan), plan)
    table = family.sizes(args.order)
    print(f"teacher {args.teacher}: {plan}")
    print(table.to_string(index=False))


def cmd_distill(args: argparse.Namespace) -> None:
    """Distil a student from the teacher with a profile's recipe (rerun the same command to resume): the family's
    student (`stages.distill_students`, as the pipeline), or one at a size of the family (`stages.distill_direct`)."""
    from ..models.loading import load_model
    from .stages import distill_direct, distill_students

    changes = _field_values(args)
    run = changes.setdefault("distill", {})
    if args.cpu:
        run["use_cpu"] = True
    for term in ("ce", "kl", "cos"):
        if getattr(args, f"no_{term}"):
            run.setdefault("loss", {})[f"{term}_weight"] = 0.0
    chosen = get_profile(args.profile, **changes)
    teacher, tokenizer = load_model(chosen.teacher)
    plan = chosen.layer_plan(len(_layers(teacher)))
    data = {"source": args.data, "name": args.data_config, "split": args.split, "text_field": args.text_field}
    if args.size is not None or args.layers is not None:
        out = distill_direct(
            chosen, teacher, tokenizer, plan, args.size, args.layers, args.order, args.family_student, args.out, data
        )
        print(f"Direct student written to {out}")
        return
    config = chosen.distill
    print(
        f"teacher {config.teacher}: {plan}; {config.max_steps} steps of {config.batch_size}x{config.grad_accum}"
        f"x{config.seq_len} tokens"
    )
    runs = distill_students(chosen, teacher, tokenizer, plan, args.out or f"runs/{chosen.name}/student", data=data)
    print(f"Student written to {runs['teacher-initialised']}")


def cmd_run(args: argparse.Namespace) -> None:
    """Execute the notebooks 01→07 with papermill for a profile, into an output folder."""
    from .pipeline import PipelineError, run

    names = ("out", "teacher", "student", "random_init", "tasks", "limit", "orders", "results", "figures", "publish")
    options = {k: v for k, v in vars(args).items() if k in names and v is not None}
    try:
        out = run(args.profile, **options)
    except PipelineError as err:
        sys.exit(f"boomerang run: {err}")
    print(f"Executed notebooks in {out}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    """Sweep methods x orders x sizes x tasks of one family into the results table (rerun to resume)."""
    from pathlib import Path

    from ..distill.trainer import run_name
    from ..evaluate import SweepConfig, sweep
    from ..models.loading import load_model, load_student

    chosen = get_profile(args.profile, **_field_values(args))
    teacher_name = args.teacher or chosen.teacher
    device = _rank_device()
    teacher, tokenizer = load_model(teacher_name, dtype=args.dtype, device=device)
    if args.student:
        student, _, plan = load_student(args.student, dtype=args.dtype, device=device)
    else:
        student = None  # the teacher-initialised student, shared with the teacher (no copy)
        plan = chosen.layer_plan(len(_layers(teacher)))
    random_student = (
        load_model(args.random_student, dtype=args.dtype, device=device)[0] if args.random_student else None
    )
    distilled = {Path(d).name: load_model(d, dtype=args.dtype, device=device)[0] for d in args.distilled or []}
    config = SweepConfig(
        profile=args.profile,
        tasks=args.tasks,
        limit=args.limit,
        methods=args.methods,
        orders=args.orders or chosen.pipeline.orders,
        ks=args.ks,
        batch_size=args.batch_size,
        results=args.results or f"results/{chosen.name}.csv",
    )
    sweep(
        teacher,
        tokenizer,
        student,
        plan,
        config,
        random_student=random_student,
        distilled=distilled or None,
        teacher_name=teacher_name,
        student_name=run_name(args.student) if args.student else None,
        random_name=run_name(args.random_student) if args.random_student else None,
    )


def _rank_device():
    """This process's GPU under torchrun/accelerate launch (LOCAL_RANK), or None (the CPU) without one."""
    import os

    import torch

    if not torch.cuda.is_available():
        return None
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())


def cmd_profiles(args: argparse.Namespace) -> None:
    """Print every profile's values (one column each), or one profile as YAML to start a file from."""
    if args.show:
        import yaml

        data = get_profile(args.show).to_dict()
        del data["name"]  # a file's profile is named after the file (outputs/<stem>, results/<stem>.csv)
        print(
            f"# `boomerang profiles --show {args.show}`: edit, then pass the file as --profile (its name is the "
            f"file's stem).\n" + yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=120),
            end="",
        )
        return
    names = args.names or list(PROFILES)
    chosen = [get_profile(n) for n in names]
    for profile in chosen:
        print(f"{profile.name}: {profile.description}")
    print()
    print(table(chosen, help=args.help_text))


def _layers(model):
    from ..models.adapters import layers_of

    return layers_of(model)


def _limit(text: str) -> int | float:
    """An example count per task (100) or a fraction of each task (0.1)."""
    value = float(text)
    return int(value) if value.is_integer() else value


PROFILE_HELP = (
    "a built-in profile (smoke: seconds on a tiny random model; quick: the kit's recipe on a CPU; kit: "
    "the kit's recipe on a GPU; paper: the paper's recipe; paper-llama: with its Llama settings) or a "
    ".yaml/.json profile file; `boomerang profiles` lists their values"
)


def _add_profile_arg(parser: argparse.ArgumentParser, help: str = PROFILE_HELP) -> None:
    parser.add_argument("--profile", default="quick", metavar="NAME|FILE", help=help)


# --- flags generated from the profile's schema ---------------------------------------------------------------------
def _add_field_args(
    parser: argparse.ArgumentParser, section: str, skip: tuple[str, ...] = (), title: str | None = None
) -> None:
    """One flag per leaf field of the profile's `section` (distill, plan, ...), named after the field, with its help;
    a nested field whose name is taken gets its parent's prefix (--loss-compile). A value is read as a JSON scalar
    (else as text) and validated with the profile (pydantic), exactly as the same value in a profile file."""
    rows = [(path.removeprefix(f"{section}."), tp, h) for path, tp, h in field_rows() if path.startswith(f"{section}.")]
    rows = [r for r in rows if r[0] not in skip]
    leaves = [path.rpartition(".")[2] for path, _, _ in rows]
    group = parser.add_argument_group(title)
    for (path, tp, help), leaf in zip(rows, leaves):
        name = leaf if leaves.count(leaf) == 1 else path.replace(".", "-")
        flag = "--" + name.replace("_", "-")
        group.add_argument(flag, dest=f"field:{section}.{path}", help=help.replace("%", "%%"), **_shape(tp))


def _shape(tp) -> dict:
    """A bool is an on/off pair, a tuple takes its items (tuple[float, float]: two), anything else one value."""
    if tp is bool:
        return {"action": argparse.BooleanOptionalAction}
    items = typing.get_args(tp) if typing.get_origin(tp) is tuple else ()
    if items and items[-1] is Ellipsis:
        return {"type": _value, "nargs": "+", "metavar": type_name(items[0]).upper()}
    if items:
        return {"type": _value, "nargs": len(items), "metavar": tuple(type_name(t).upper() for t in items)}
    return {"type": _value, "metavar": type_name(tp).upper().replace(" ", "")}


def _value(text: str):
    import json

    try:
        return json.loads(text)
    except ValueError:
        return text


def _field_values(args: argparse.Namespace) -> dict:
    """The profile fields given on the command line, as nested mappings ({"distill": {"loss": {...}}, ...})."""
    out: dict = {}
    for dest, value in vars(args).items():
        if dest.startswith("field:") and value is not None:
            *parents, leaf = dest.removeprefix("field:").split(".")
            node = out
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
    return out


def build_parser() -> argparse.ArgumentParser:
    epilog = (
        "profiles: " + ", ".join(PROFILES) + " or a .yaml/.json file (`boomerang profiles` prints their "
        "values).\nA profile's fields:\n" + fields_help()
    )
    parser = argparse.ArgumentParser(
        prog="boomerang", description=__doc__, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    sizes = sub.add_parser("sizes", help="print the sizes of the interpolated family")
    sizes.add_argument("--teacher", default="smollm2-135m", help="hub id, local path, or smollm2-135m")
    sizes.add_argument("--dtype", default="float32")
    sizes.add_argument("--order", default="last")
    _add_field_args(sizes, "plan", title="the student's layers (default: the paper's)")
    sizes.set_defaults(func=cmd_sizes)

    dist = sub.add_parser(
        "distill",
        help="distil a student from the teacher (CE + KL + cosine alignment)",
        description="Distil a student with a profile's recipe; every flag below the data options "
        "changes one field of it (rerun the same command to resume).",
    )
    _add_profile_arg(dist)
    dist.add_argument("--out", help="the student directory to write (default runs/<profile>/student)")
    dist.add_argument("--cpu", action="store_true", help="train on the CPU even if a GPU is present")
    dist.add_argument("--data", nargs="+", help="text files/folders or a hub dataset id (default: the data/ corpus)")
    dist.add_argument("--data-config", help="hub dataset configuration name")
    dist.add_argument("--split", default="train", help="hub dataset split (never an evaluation split)")
    dist.add_argument("--text-field", default="text", help="hub dataset text column")
    for term in ("ce", "kl", "cos"):
        dist.add_argument(f"--no-{term}", action="store_true", help=f"switch the {term} term off")
    direct = dist.add_argument_group(
        "a student distilled directly at a size of the family (initialised with that member's teacher layers)"
    )
    at = direct.add_mutually_exclusive_group()
    at.add_argument("--size", type=int, help="the family's size k (1..K-1) to distil a student at")
    at.add_argument("--layers", type=int, help="... or the number of layers of that member")
    direct.add_argument("--order", default="last", help="the family's patch order (default last)")
    direct.add_argument(
        "--family-student", help="the family's distilled student, for orders computed from it (local, klpatch)"
    )
    _add_field_args(dist, "distill", skip=("output_dir", "use_cpu"), title="the recipe (default: the profile's)")
    _add_field_args(dist, "plan", title="the student's layers (default: the profile's)")
    _add_wait_arg(dist)
    dist.set_defaults(func=cmd_distill)

    run = sub.add_parser("run", help="run the whole study (notebooks 01-07) with papermill")
    _add_profile_arg(run)
    run.add_argument("--out", help="folder for the executed notebooks and students (default outputs/<profile>)")
    run.add_argument("--teacher", help="hub id, local path, or smollm2-135m (default: the profile's)")
    run.add_argument("--student", help="the distilled student's directory (default <out>/student)")
    run.add_argument("--tasks", nargs="+", help="evaluation tasks (default: the profile's)")
    run.add_argument("--limit", type=_limit, help="examples per task, or a fraction (default: the profile's)")
    run.add_argument(
        "--random-init",
        action=argparse.BooleanOptionalAction,
        help="distil a random-init student for that baseline (default: smoke and paper only)",
    )
    run.add_argument(
        "--orders", nargs="+", help="patch orders to evaluate: last, first, klpatch, optimal (default: the profile's)"
    )
    run.add_argument("--results", help="results table (default results/<profile>.csv)")
    run.add_argument("--figures", help="figures folder (default figures/ for quick)")
    run.add_argument(
        "--publish",
        action=argparse.BooleanOptionalAction,
        help="write the executed notebooks, cleaned, over notebooks/ (default: only for the main job, "
        "the quick profile with every default)",
    )
    _add_wait_arg(run)
    run.set_defaults(func=cmd_run)

    ev = sub.add_parser("evaluate", help="evaluate every size of the family and the baselines into one table")
    _add_profile_arg(ev, PROFILE_HELP + "; its tasks, limit, batch size, orders and plan are the defaults")
    ev.add_argument("--teacher", help="hub id, local path, or smollm2-135m (default: the profile's)")
    ev.add_argument("--dtype", default="float32")
    who = ev.add_mutually_exclusive_group()
    who.add_argument("--student", help="the distilled student's directory (with its boomerang_plan.json)")
    who.add_argument(
        "--student-init",
        choices=("teacher",),
        default="teacher",
        help="no --student: the undistilled teacher-initialised student (the profile's plan)",
    )
    _add_field_args(ev, "plan", title="the student's layers without --student (default: the profile's)")
    ev.add_argument(
        "--methods",
        nargs="+",
        default=["boomerang"],
        help="boomerang naive shortgpt laco random_init distilled (default boomerang)",
    )
    ev.add_argument(
        "--orders", nargs="+", help="patch orders, e.g. last first klpatch optimal (default: the profile's)"
    )
    ev.add_argument("--ks", nargs="+", type=int, help="sizes to evaluate (default all)")
    ev.add_argument(
        "--tasks",
        nargs="+",
        help="wikitext_ppl, *_local tasks (offline) or stock lm-eval names (default: the profile's)",
    )
    ev.add_argument("--limit", type=_limit, help="examples per lm-eval task, or a fraction (default: the profile's)")
    ev.add_argument("--random-student", help="a student distilled from random init (method random_init)")
    ev.add_argument("--distilled", nargs="+", help="standard-distillation student directories (method distilled)")
    ev.add_argument("--batch-size", type=int, help="lm-eval batch size (default: the profile's)")
    ev.add_argument("--results", help="results table, .csv or .parquet (default results/<profile>.csv)")
    _add_wait_arg(ev)
    ev.set_defaults(func=cmd_evaluate)

    prof = sub.add_parser(
        "profiles",
        help="print every profile's values, or one as YAML (--show)",
        description="The built-in profiles side by side (docs/profiles.md explains them); "
        "--show NAME prints one as YAML, a file to edit and pass as --profile.",
    )
    prof.add_argument("names", nargs="*", metavar="NAME|FILE", help="profiles to show (default: every built-in one)")
    prof.add_argument("--show", metavar="NAME|FILE", help="print this profile as YAML")
    prof.add_argument("--help-text", action="store_true", help="add each field's help as a column")
    prof.set_defaults(func=cmd_profiles)
    add_deploy_commands(sub)
    return parser


def cmd_save(args: argparse.Namespace) -> None:
    """Write the family folder of a teacher and a distilled student (each tensor once, the plan, the orders)."""
    from ..family.members import Family
    from ..models.loading import load_model, load_student
    from ..models.student import init_student

    teacher, tokenizer = load_model(args.teacher, dtype=args.dtype)
    if args.student == "init":
        plan = get_profile(Profile(), **_field_values(args)).layer_plan(len(_layers(teacher)))
        student = init_student(teacher, plan)
    else:
        student, _, plan = load_student(args.student, dtype=args.dtype)
    family = Family(teacher, student, plan)
    path = family.save(args.out, tokenizer, orders=args.orders)
    size = sum(p.stat().st_size for p in path.iterdir() if p.is_file())
    print(f"family folder {path}: {size / 2**20:.1f} MiB, sizes k=0..{family.K} (layers {_sizes(path)})")


def cmd_export(args: argparse.Namespace) -> None:
    """Write one member of a family folder as a Hugging Face directory or a GGUF file llama.cpp runs."""
    from ..family.storage import export_member

    if (args.layers is None) == (args.k is None):
        raise ValueError("Give exactly one of --layers N or --k K.")
    out = export_member(args.family, args.out, args.layers, args.k, args.order, args.format, args.quant)
    print(f"wrote {out}")


def _sizes(path) -> str:
    from ..family.storage import member_sizes

    return ", ".join(map(str, member_sizes(path)))


def add_deploy_commands(sub) -> None:
    """`boomerang save` and `boomerang export` (the family folder; one member as HF or GGUF)."""
    from ..family.gguf import QUANTS

    save = sub.add_parser("save", help="write the family folder (every size, each tensor once)")
    save.add_argument("--teacher", default="smollm2-135m", help="hub id, local path, or smollm2-135m")
    save.add_argument(
        "--student",
        required=True,
        metavar="DIR|init",
        help="a distilled student directory, or 'init' for the "
        "teacher-initialised (undistilled) student of the --keep-first/--keep-last/--every plan",
    )
    save.add_argument("--out", required=True, help="the family folder to write")
    save.add_argument("--orders", nargs="*", default=[], help="orders to keep besides last/first (e.g. klpatch)")
    save.add_argument("--dtype", default="float32")
    _add_field_args(save, "plan", title="the student's layers for --student init (default: the paper's)")
    _add_wait_arg(save)
    save.set_defaults(func=cmd_save)

    export = sub.add_parser("export", help="write one member of a family folder as a HF directory or a GGUF file")
    export.add_argument("--family", required=True, help="a family folder (`boomerang save`)")
    export.add_argument("--layers", type=int, help="the member with this many layers")
    export.add_argument("--k", type=int, help="the member of size index k (0: student)")
    export.add_argument("--order", default="last", help="last, first or an order saved in the folder")
    export.add_argument("--format", default="hf", help="hf or gguf")
    export.add_argument("--quant", default="f16", help=f"GGUF weights: {', '.join(QUANTS)}")
    export.add_argument("--out", required=True, help="the directory (hf) or .gguf file to write")
    export.set_defaults(func=cmd_export)


def _add_wait_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--wait",
        nargs="?",
        const="forever",
        metavar="SECONDS",
        help="when another run holds a folder this one writes, wait for it (without SECONDS: without limit) "
        "instead of stopping at once (also BOOMERANG_WAIT)",
    )


def main(argv: list[str] | None = None) -> None:
    import os

    from ..store.atomic import StopRun
    from ..store.locks import WAIT_ENV

    args = build_parser().parse_args(argv)
    if getattr(args, "wait", None) is not None:
        os.environ[WAIT_ENV] = args.wait  # the notebook kernels of `boomerang run` inherit it
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, ModuleNotFoundError, StopRun) as err:
        sys.exit(f"boomerang {args.command}: {err}")


if __name__ == "__main__":
    main()
