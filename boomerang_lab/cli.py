"""The `boomerang` command line: one subcommand per pipeline stage."""
from __future__ import annotations

import argparse
import sys


def cmd_sizes(args: argparse.Namespace) -> None:
    """Print the family table for the paper plan with the teacher-initialised (undistilled) student."""
    from .family import Family
    from .models import load_model
    from .plan import LayerPlan
    from .student import init_student
    from .adapters import layers_of

    teacher, _ = load_model(args.teacher, dtype=args.dtype)
    plan = LayerPlan.paper(len(layers_of(teacher)), keep_first=args.keep_first, keep_last=args.keep_last,
                           every=args.every)
    family = Family(teacher, init_student(teacher, plan), plan)
    table = family.sizes(args.order)
    print(f"teacher {args.teacher}: {plan}")
    print(table.to_string(index=False))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="boomerang", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    sizes = sub.add_parser("sizes", help="print the sizes of the interpolated family")
    sizes.add_argument("--teacher", default="smollm2-135m", help="hub id, local path, or smollm2-135m")
    sizes.add_argument("--dtype", default="float32")
    sizes.add_argument("--order", default="last")
    sizes.add_argument("--keep-first", type=int, default=1)
    sizes.add_argument("--keep-last", type=int, default=2)
    sizes.add_argument("--every", type=int, default=2)
    sizes.set_defaults(func=cmd_sizes)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as err:
        sys.exit(f"boomerang {args.command}: {err}")


if __name__ == "__main__":
    main()
