"""LaCo's two variants on SmolLM2-135M (issue 25): the paper's formula and the official code's (laco.py), each driven
to 20, 23 and 26 layers with LaCo's defaults (C=4, I=2, T=0.65, L=3, 5 calibration sentences of 64 training-corpus
tokens, the Figure 4 study's), and evaluated as the Figure 4 study evaluates (the sweep's `_evaluate`: WikiText-2 test
token perplexity, first 4,096 tokens, 1,024-token windows, the quick profile's evaluation: bf16 autocast where the CPU
computes bf16 natively, float32 elsewhere; the `eval` column records which).

Records per variant and depth: how many merges were forced (a pass of the walk where no merge reached T, kept its most
similar candidate), the final similarity, the merged groups, the perplexity and the seconds. One thread; resumable
(finished rows are skipped).

    OMP_NUM_THREADS=1 python benchmarks/laco_variants.py [--layers 26 23 20] [--variants paper official]

Writes benchmarks/results/laco_variants_cpu.csv.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import pandas as pd
import torch

from boomerang_lab.models.loading import autocast_for
from boomerang_lab.store.atomic import atomic_path

RESULTS = Path(__file__).resolve().parent / "results" / "laco_variants_cpu.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", nargs="+", type=int, default=[26, 23, 20])
    parser.add_argument("--variants", nargs="+", default=["paper", "official"])
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from boomerang_lab.evaluate.baselines import laco_pruning
    from boomerang_lab.evaluate.laco import LaCoConfig, LaCoThresholdWarning
    from boomerang_lab.evaluate.sweep import SweepConfig, _evaluate
    from boomerang_lab.family.search import calibration_set
    from boomerang_lab.models.loading import load_model

    teacher, tokenizer = load_model("smollm2-135m")
    sweep_config = SweepConfig(profile=args.profile).resolved()
    out = Path(args.out)
    table = pd.read_csv(out) if out.exists() else pd.DataFrame()
    for layers in args.layers:
        for variant in args.variants:
            if not table.empty and ((table.variant == variant) & (table.layers == layers)).any():
                continue
            config = LaCoConfig(variant=variant)
            calibration = calibration_set(tokenizer, config.sentences, config.tokens)
            t0 = time.perf_counter()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", LaCoThresholdWarning)
                model = laco_pruning(teacher, layers, calibration, config)
            search_seconds = time.perf_counter() - t0
            info = model.boomerang
            t1 = time.perf_counter()
            rows = _evaluate(model, tokenizer, "wikitext_ppl", sweep_config)
            ppl = float(rows.set_index("metric").value["token_perplexity"])
            row = {
                "variant": variant,
                "layers": layers,
                "forced_merges": info["forced_merges"],
                "threshold_met": info["threshold_met"],
                "token_perplexity": ppl,
                "similarity": info["similarity"],
                "threshold": config.threshold,
                "lowest": config.bounds(teacher.config.num_hidden_layers)[0],
                "highest": config.bounds(teacher.config.num_hidden_layers)[1],
                "groups": json.dumps(info["laco_groups"]),
                "warnings": len([w for w in caught if issubclass(w.category, LaCoThresholdWarning)]),
                "search_seconds": round(search_seconds, 1),
                "eval_seconds": round(time.perf_counter() - t1, 1),
                # the arithmetic the sweep really used (bf16 autocast only where the CPU computes bf16 natively)
                "eval": "wikitext_ppl: WikiText-2 test, 4,096 tokens, 1,024-token windows; autocast="
                + str(autocast_for(sweep_config.autocast, "cpu", "evaluation") or "none (float32)"),
                "threads": args.threads,
            }
            table = pd.concat([table, pd.DataFrame([row])], ignore_index=True)
            with atomic_path(out) as tmp:
                table.to_csv(tmp, index=False)
            print(
                f"{time.strftime('%H:%M:%S')} LaCo {variant} {layers}L: ppl {ppl:.2f}, forced {info['forced_merges']}, "
                f"similarity {info['similarity']:.3f}, groups {info['laco_groups']} "
                f"({search_seconds:.0f} s search, {row['eval_seconds']:.0f} s eval)",
                flush=True,
            )
            del model


if __name__ == "__main__":
    main()
