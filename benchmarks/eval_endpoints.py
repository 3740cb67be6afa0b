"""The teacher (k=K) and the undistilled teacher-initialised student (k=0) on every local task, through `sweep`.

Writes one tidy table (resumable: rerun to finish an interrupted run). The numbers in the README's Measured section:

    python benchmarks/eval_endpoints.py --out benchmarks/results/teacher_vs_student_cpu.csv --limit 100
"""

from __future__ import annotations

import argparse
import time

from boomerang_lab.evaluate import LOCAL_TASKS, PPL_TASK, PerplexityConfig, sweep
from boomerang_lab.models.adapters import layers_of
from boomerang_lab.models.loading import load_model
from boomerang_lab.models.plan import LayerPlan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="smollm2-135m")
    parser.add_argument("--out", required=True, help="results table (.csv or .parquet)")
    parser.add_argument("--limit", type=int, default=100, help="examples per lm-eval task")
    parser.add_argument("--ppl-tokens", type=int, default=16384, help="WikiText-2 test tokens of the fast perplexity")
    args = parser.parse_args()

    teacher, tokenizer = load_model(args.teacher)
    plan = LayerPlan.paper(len(layers_of(teacher)))
    common = dict(ks=[0, len(plan.multi_layer)], methods=("boomerang",), teacher_name=args.teacher, results=args.out)
    start = time.perf_counter()
    sweep(teacher, tokenizer, None, plan, tasks=[PPL_TASK], ppl=PerplexityConfig(2048, 2048, args.ppl_tokens), **common)
    sweep(
        teacher,
        tokenizer,
        None,
        plan,
        tasks=[t for t in LOCAL_TASKS if t != "wikitext_local"],
        limit=args.limit,
        **common,
    )
    sweep(teacher, tokenizer, None, plan, tasks=["wikitext_local"], limit=5, **common)  # 5 whole documents
    print(f"done in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
