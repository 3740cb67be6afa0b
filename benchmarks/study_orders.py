"""Issue 6 study: which patch order, and which distillation recipe, give the smoothest size–quality curve.

For each recipe variant, distil a student of the teacher (`boomerang_lab.distill.trainer`, the profile's settings),
search the klpatch and optimal orders on the calibration set (64 windows of training text), and measure the wikitext-2
test perplexity of every size of every order (last, first, klpatch, optimal). Writes under --out (6 files), rewritten
after each variant so that an interrupted run keeps what it finished: orders_ppl.csv      variant, order, k, layers,
params, ppl (token perplexity, boomerang_lab.evaluate.perplexity), word_ppl, kl (mean calibration KL to the teacher):
one row per size curve_quality.csv   per variant and order: violations, worst_violation, area, signed_area of ppl
against layers (boomerang_lab.report.curves; layers, not params: members mixing the student's embeddings with the
teacher's tied head hold both matrices, so params is not monotone in k), kl_objective orders.json         per variant:
the plan, the orders (student layers patched at each size), seconds per stage orders_ppl.png      ppl and KL against
layers, one panel per variant, one line per order distill_log.csv     the distillation loss terms per step, per variant
study.json          the settings of this run Students are kept in --work/<variant> and reused while their recipe is
unchanged (another recipe there is an error; --retrain distils again).

    python benchmarks/study_orders.py --profile smoke --device cpu --out /tmp/study_orders   # tiny: ~1 min on 2 cores
    python benchmarks/study_orders.py --profile quick --device cuda --out results/study_orders --max-eval-tokens 65536
On one GPU the optimal search dominates: 2^K LM heads over the calibration tokens per variant (K=14 for keep_first=1,
13 for keep_first=2); --calib-len trades its precision for time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from boomerang_lab import Family, LayerPlan, curve_quality, init_student, load_model
from boomerang_lab.config.distill import LossConfig
from boomerang_lab.config.profiles import PROFILES, distill_config
from boomerang_lab.data import calibration_set, packed_blocks
from boomerang_lab.distill.trainer import LOG_FILE, distill, finished
from boomerang_lab.evaluate import PerplexityConfig, perplexity, wikitext_text
from boomerang_lab.family.search import objective, order_kl, search
from boomerang_lab.models.adapters import layers_of
from boomerang_lab.models.loading import cache_dir, load_student
from boomerang_lab.report.curves import order_curves
from boomerang_lab.report.plots import save_figure
from boomerang_lab.store.atomic import atomic_write_text

ORDERS = ("last", "first", "klpatch", "optimal")


@dataclass(frozen=True)
class Recipe:
    """What a variant changes in the paper's recipe (paper plan, CE + KL + cosine, everything trained)."""

    keep_first: int = 1
    freeze_embeddings: bool = False
    cosine: bool = True


VARIANTS = {
    "paper": Recipe(),
    "keep_first=2": Recipe(keep_first=2),
    "frozen_embed_head": Recipe(freeze_embeddings=True),
    "no_cosine": Recipe(cosine=False),
    "keep_first=2+frozen": Recipe(keep_first=2, freeze_embeddings=True),
}


@dataclass(frozen=True)
class Settings:
    """Per-profile sizes of the calibration set and of the perplexity evaluation (the evaluation profile's windows)."""

    calib_sequences: int = 64
    calib_len: int = 64
    ppl: PerplexityConfig = PROFILES["quick"].evaluate.ppl


SETTINGS = {
    "smoke": Settings(calib_sequences=8, calib_len=32, ppl=PROFILES["smoke"].evaluate.ppl),
    "quick": Settings(),
    "paper": Settings(calib_len=256, ppl=PROFILES["paper"].evaluate.ppl),
    "kit": Settings(calib_len=256, ppl=PROFILES["kit"].evaluate.ppl),
}
"""quick: 64 x 64 calibration tokens keep the optimal search (2^K heads over them) to well under a minute on one GPU."""


def eval_text(tokenizer, max_tokens: int | None) -> str:
    """WikiText-2 test, cut a little after its first `max_tokens` tokens: the evaluator scores the same tokens, and
    does not re-tokenise all 1.3 MB for every member."""
    text = wikitext_text()
    full = tokenizer(text, return_offsets_mapping=True)
    if max_tokens is None or max_tokens + 64 >= len(full["input_ids"]):
        return text
    prefix = text[: full["offset_mapping"][max_tokens + 64][1]]
    if tokenizer(prefix)["input_ids"][:max_tokens] != full["input_ids"][:max_tokens]:
        raise AssertionError("The cut text tokenises differently from the whole text; evaluate on the whole text.")
    return prefix


# --- the study -------------------------------------------------------------------------------------------------------
def student_for(name: str, recipe: Recipe, args, teacher_name: str, tokenizer, layers: int) -> tuple[Path, float]:
    """The distilled student of this recipe (reused when its directory holds the same run), and the seconds spent."""
    plan = LayerPlan.paper(layers, keep_first=recipe.keep_first)
    loss = LossConfig() if recipe.cosine else LossConfig(cos_weight=0.0)
    path = Path(args.work) / (name.replace("=", "") + (f"_seed{args.seed}" if args.seed else ""))
    config = distill_config(
        args.profile,
        teacher=teacher_name,
        output_dir=str(path),
        loss=loss,
        seed=args.seed,
        freeze_embeddings=recipe.freeze_embeddings,
        use_cpu=args.device == "cpu",
    )
    if args.retrain:
        shutil.rmtree(path, ignore_errors=True)
    if finished(config, plan):
        print(f"{name}: reusing the student in {path}", flush=True)
        return path, 0.0
    start = time.perf_counter()
    teacher, _ = load_model(teacher_name)  # a fresh copy: the trainer moves and casts the teacher it is given
    data = packed_blocks(tokenizer, seq_len=config.seq_len)
    distill(teacher, init_student(teacher, plan, seed=config.seed), plan, data, config, tokenizer)
    return path, time.perf_counter() - start


def study_variant(name: str, student_dir: Path, teacher, tokenizer, calibration, text: str, args, settings: Settings):
    """Rows of the tidy table for one variant, its searched orders, and the seconds each stage took."""
    student, _, plan = load_student(student_dir, device=args.device)
    family = Family(teacher, student, plan)
    seconds, orders = {}, {}
    for order in args.orders:
        start = time.perf_counter()
        if order in ("klpatch", "optimal"):
            search(family, order, calibration, batch_size=args.search_batch)
        orders[order] = family.order(order)
        seconds[f"search_{order}"] = time.perf_counter() - start
    start, ppl, rows = time.perf_counter(), {}, []
    for order in args.orders:
        kl = order_kl(family, order, calibration, batch_size=args.search_batch)
        sizes = family.sizes(order)
        for k in tqdm(range(family.K + 1), desc=f"{name}: ppl ({order})", leave=False):
            member = family.build(k, order)
            key = tuple(member.boomerang["patched"])
            if key not in ppl:
                ppl[key] = perplexity(member, tokenizer, text, settings.ppl)
            rows.append(
                {
                    "variant": name,
                    "order": order,
                    "k": k,
                    "layers": int(sizes.layers[k]),
                    "params": int(sizes.params[k]),
                    "ppl": ppl[key]["token_perplexity"],
                    "word_ppl": ppl[key]["word_perplexity"],
                    "kl": kl[k],
                }
            )
    seconds["evaluate"] = time.perf_counter() - start
    steps = {o: [list(s) for s in orders[o].steps] for o in orders}
    return rows, {"kept": list(plan.kept), "K": family.K, "orders": steps}, seconds


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    settings = SETTINGS[args.profile]
    if args.calib_len is not None:
        settings = replace(settings, calib_len=args.calib_len)
    if args.max_eval_tokens is not None:
        settings = replace(settings, ppl=replace(settings.ppl, max_tokens=args.max_eval_tokens))
    if args.device.startswith("cuda"):
        torch.set_float32_matmul_precision("high")  # TF32 matmuls: the subset search is mostly the LM head
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    teacher_name = args.teacher or distill_config(args.profile).teacher
    teacher, tokenizer = load_model(teacher_name, device=args.device)
    calibration = calibration_set(tokenizer, settings.calib_sequences, settings.calib_len)
    text = eval_text(tokenizer, settings.ppl.max_tokens)
    atomic_write_text(
        out / "study.json",
        json.dumps(
            {
                **vars(args),
                "teacher": teacher_name,
                **asdict(settings),
                "variants": {v: asdict(VARIANTS[v]) for v in args.variants},
            },
            indent=2,
            default=str,
        )
        + "\n",
    )
    rows, searched, logs = [], {}, []
    for name in args.variants:
        print(f"=== {name}: {VARIANTS[name]}", flush=True)
        path, distill_s = student_for(name, VARIANTS[name], args, teacher_name, tokenizer, len(layers_of(teacher)))
        logs.append(pd.read_csv(path / LOG_FILE).assign(variant=name))
        variant_rows, orders, seconds = study_variant(name, path, teacher, tokenizer, calibration, text, args, settings)
        rows += variant_rows
        searched[name] = {**orders, "seconds": {"distill": distill_s, **seconds}}
        write(out, pd.DataFrame(rows), searched, pd.concat(logs))  # after each variant: partial results survive
        print(f"{name}: " + ", ".join(f"{k} {v:.1f} s" for k, v in searched[name]["seconds"].items()), flush=True)
    print(pd.read_csv(out / "curve_quality.csv").to_string(index=False))
    return out


def write(out: Path, table: pd.DataFrame, searched: dict, logs: pd.DataFrame) -> None:
    quality = curve_quality(table, metric="ppl", by=("variant", "order"))
    kl = table.groupby(["variant", "order"], sort=False).kl.apply(lambda s: objective(list(s)))
    quality = quality.merge(kl.rename("kl_objective").reset_index(), on=["variant", "order"])
    for name, frame in (("orders_ppl", table), ("curve_quality", quality), ("distill_log", logs)):
        atomic_write_text(out / f"{name}.csv", frame.to_csv(index=False))
    atomic_write_text(out / "orders.json", json.dumps(searched, indent=2) + "\n")
    save_figure(order_curves(table, metrics=("ppl", "kl"), x="layers"), out, "orders_ppl", formats=("png",))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="quick", choices=sorted(SETTINGS), help="distillation profile")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda or cpu")
    parser.add_argument(
        "--max-eval-tokens",
        type=int,
        default=None,
        help="wikitext-2 test tokens to score (default: the evaluation profile's)",
    )
    parser.add_argument(
        "--calib-len",
        type=int,
        default=None,
        help="tokens per calibration sequence (64 sequences, smoke 8; default: smoke 32, quick 64, paper 256)",
    )
    parser.add_argument("--out", required=True, help="folder for the CSVs, JSON and figure")
    parser.add_argument("--teacher", default=None, help="default: the profile's teacher")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--orders", nargs="+", default=list(ORDERS), choices=list(ORDERS))
    parser.add_argument(
        "--work", default=None, help="where students are distilled (default: <cache>/study_orders/<profile>)"
    )
    parser.add_argument(
        "--search-batch",
        type=int,
        default=None,
        help="calibration sequences per batch of the order search (default: 64 on cuda, 8 on cpu)",
    )
    parser.add_argument("--seed", type=int, default=0, help="distillation seed (the order of the training blocks)")
    parser.add_argument("--retrain", action="store_true", help="distil again even if a student of the recipe exists")
    args = parser.parse_args(argv)
    args.work = args.work or str(cache_dir() / "study_orders" / args.profile)
    args.search_batch = args.search_batch or (64 if args.device.startswith("cuda") else 8)
    return args


if __name__ == "__main__":
    main()
