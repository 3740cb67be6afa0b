"""Deploying SmolLM2 family members: the family folder against standalone exports, load time and resident memory
of one member via `load_member` against loading teacher + student, and, for the student, the middle member and the
teacher, each GGUF quant's file size, llama.cpp generation speed (--threads), perplexity on WikiText-2 test tokens,
beside the kit's torch speed and perplexity.

    PYTHONPATH=$PWD python benchmarks/bench_deploy.py [--student DIR] [--tokens 256] [--new-tokens 32]

Writes benchmarks/results/deploy_cpu.csv (one row per measurement: section, member, quant, metric, value, unit).
Without --student (or when DIR lacks a manifest) the student is the teacher-initialised, undistilled one of the
paper plan: sizes and speeds do not depend on training, its perplexities are an undistilled student's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "deploy_cpu.csv"
FIGURE = ROOT / "figures" / "deploy_cpu.png"

LOAD_CODE = r"""
import json, os, sys, time
import torch
from transformers import AutoModelForCausalLM  # imported before the baseline RSS
from boomerang_lab import Family, load_model
from boomerang_lab.family.storage import load_member
from boomerang_lab.models.loading import load_student
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
torch.set_num_threads(int(sys.argv[6]))
mode, folder, k = sys.argv[1], sys.argv[2], int(sys.argv[3])
before, start = rss(), time.perf_counter()
if mode == "member":
    model = load_member(folder, k=k)
else:
    teacher, _ = load_model(sys.argv[4])
    student, _, plan = load_student(sys.argv[5])
    model = Family(teacher, student, plan).build(k)
seconds = time.perf_counter() - start
with torch.no_grad():
    model(torch.tensor([[1, 2, 3]]))
print(json.dumps({"seconds": seconds, "rss_delta": rss() - before}))
"""


def figure(table: pd.DataFrame) -> None:
    """Speed and perplexity of each member per runtime and quant (figures/deploy_cpu.png), and the README's table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = table[table.section.isin(["torch", "gguf"])].copy()
    rows["runtime"] = rows.section.map({"torch": "torch"}).fillna("llama.cpp") + "\n" + rows.quant
    rows["value"] = rows.value.astype(float)
    wide = rows.pivot_table(index="runtime", columns=["metric", "member"], values="value", sort=False)
    members = list(dict.fromkeys(rows.member))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric, label in zip(axes, ["tokens_per_s", "perplexity"], ["generation, tokens/s", "perplexity"]):
        wide[metric][members].plot.bar(ax=ax, rot=0, logy=metric == "perplexity")
        ax.set_ylabel(label + (" (log scale)" if metric == "perplexity" else ""))
        ax.set_xlabel("")
        ax.legend(fontsize=7)
    threads = table[table.metric == "threads"].value
    axes[0].set_title(f"greedy generation, {threads.iloc[0] if len(threads) else '?'} thread(s), this CPU")
    axes[1].set_title("WikiText-2 test perplexity (same tokens for every runtime)")
    FIGURE.parent.mkdir(exist_ok=True)
    fig.savefig(FIGURE, dpi=120, bbox_inches="tight")
    for metric in ("tokens_per_s", "perplexity"):
        print(wide[metric][members].rename(index=lambda r: r.replace("\n", " ")).round(1).to_markdown())
    print(f"wrote {FIGURE}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--student", default="/work/runs_budget/x1/student")
    parser.add_argument("--tokens", type=int, default=256, help="WikiText-2 test tokens for perplexity")
    parser.add_argument("--new-tokens", type=int, default=32, help="generated tokens per speed measurement")
    parser.add_argument("--quants", nargs="*", default=["f32", "f16", "q8_0", "q4_1"])
    parser.add_argument("--order", default="klpatch", help="the middle member's order (saved with the student)")
    parser.add_argument("--threads", type=int, default=2, help="torch and llama.cpp threads")
    parser.add_argument("--figure-only", action="store_true", help="redraw the figure from the saved table")
    args = parser.parse_args()
    if args.figure_only:
        return figure(pd.read_csv(OUT))

    from boomerang_lab import Family, LayerPlan, init_student, load_model
    from boomerang_lab.family.gguf import (
        llama_cpp_logits,
        llama_cpp_model,
        llama_cpp_ms_per_token,
        perplexity_from_logits,
    )
    from boomerang_lab.family.speed import ms_per_token
    from boomerang_lab.models.loading import embedded_path, load_student

    torch.set_num_threads(args.threads)
    teacher, tokenizer = load_model("smollm2-135m")
    student_dir = Path(args.student)
    distilled = (student_dir / "manifest.json").exists()
    if distilled:
        student, _, plan = load_student(student_dir)
    else:
        plan = LayerPlan.paper(30)
        student = init_student(teacher, plan)
    family = Family(teacher, student, plan)
    rows = []

    def add(section, member, quant, metric, value, unit):
        rows.append(dict(section=section, member=member, quant=quant, metric=metric, value=value, unit=unit))
        print(rows[-1], flush=True)

    student_kind = f"distilled ({student_dir})" if distilled else "teacher-initialised, undistilled"
    add("setup", "student", "", "student", student_kind, "")
    order = args.order if distilled and (student_dir / f"order_{args.order}.json").exists() else "last"
    add("setup", "order", "", "order", order, "the middle member's")
    add("setup", "threads", "", "threads", args.threads, "torch and llama.cpp")
    work = Path(tempfile.mkdtemp(prefix="bench_deploy_"))
    folder = family.save(work / "family", tokenizer, orders=[order] if order != "last" else ())
    folder_bytes = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    sizes = family.sizes()
    add("disk", "family folder", "f32", "bytes", folder_bytes, "B (measured)")
    add("disk", f"{len(sizes)} standalone exports", "f32", "bytes", int(sizes.bytes.sum()), "B (params x 4)")

    middle, largest = family.K // 2, family.K
    members = {"student": 0, "middle": middle, "teacher": largest}
    if not distilled:  # save the baseline student for the teacher + student load
        student.save_pretrained(work / "student")
        plan.save(work / "student")
        student_dir = work / "student"
    for name, k in members.items():
        layers = int(sizes.layers[k])
        for mode in ("member", "teacher+student"):
            cmd = [sys.executable, "-c", LOAD_CODE, mode, str(folder), str(k), str(embedded_path("smollm2-135m"))]
            done = subprocess.run([*cmd, str(student_dir), str(args.threads)], capture_output=True, text=True, cwd=ROOT)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            label = f"{name} (k={k}, {layers} layers)"
            add("load", label, mode, "seconds", round(result["seconds"], 2), "s")
            add("load", label, mode, "rss_delta", round(result["rss_delta"] / 2**20, 1), "MiB")

    pd.DataFrame(rows).to_csv(OUT, index=False)
    text = (ROOT / "data" / "wikitext-2" / "wiki.test.raw").read_text()[:40000]
    tokens = tokenizer(text)["input_ids"][: args.tokens]
    for name, k in members.items():
        member = family.build(k, order)
        label = f"{name} (k={k}, {int(sizes.layers[k])} layers)"
        with torch.no_grad():
            ppl = perplexity_from_logits(member(torch.tensor([tokens])).logits[0].numpy(), tokens)
        speed = 1000 / ms_per_token(member, new_tokens=args.new_tokens)
        add("torch", label, "f32", "perplexity", round(ppl, 3), "")
        add("torch", label, "f32", "tokens_per_s", round(speed, 1), "tok/s")
        for quant in args.quants:
            path = family.export(k, work / f"{name}-{quant}.gguf", order, format="gguf", quant=quant)
            add("gguf", label, quant, "bytes", path.stat().st_size, "B")
            llm = llama_cpp_model(path, n_ctx=max(len(tokens), 128), n_threads=args.threads)
            ppl = perplexity_from_logits(llama_cpp_logits(llm, tokens), tokens)
            add("gguf", label, quant, "perplexity", round(ppl, 3), "")
            del llm
            llm = llama_cpp_model(path, n_ctx=128, n_threads=args.threads, logits_all=False)
            speed = 1000 / llama_cpp_ms_per_token(llm, new_tokens=args.new_tokens)
            add("gguf", label, quant, "tokens_per_s", round(speed, 1), "tok/s")
            del llm
            path.unlink()
        pd.DataFrame(rows).to_csv(OUT, index=False)
    table = pd.DataFrame(rows)
    table.to_csv(OUT, index=False)
    print(f"wrote {OUT}")
    figure(table)


if __name__ == "__main__":
    main()
