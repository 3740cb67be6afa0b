"""Deploying SmolLM2 family members: the family folder against standalone exports, load time and resident memory
of one member via `load_member` against loading teacher + student, and, for the student, the middle member and the
teacher, each GGUF quant's file size, llama.cpp generation speed (2 threads), perplexity on WikiText-2 test tokens,
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
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "deploy_cpu.csv"

LOAD_CODE = r"""
import json, os, sys, time
import torch
from transformers import AutoModelForCausalLM  # imported before the baseline RSS
from boomerang_lab import Family, load_model
from boomerang_lab.family.storage import load_member
from boomerang_lab.models.loading import load_student
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
torch.set_num_threads(2)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--student", default="/work/runs_budget/x1/student")
    parser.add_argument("--tokens", type=int, default=256, help="WikiText-2 test tokens for perplexity")
    parser.add_argument("--new-tokens", type=int, default=32, help="generated tokens per speed measurement")
    parser.add_argument("--quants", nargs="*", default=["f32", "f16", "q8_0", "q4_1"])
    args = parser.parse_args()

    from boomerang_lab import Family, LayerPlan, init_student, load_model
    from boomerang_lab.family.gguf import llama_cpp_logits, llama_cpp_model, perplexity_from_logits
    from boomerang_lab.models.loading import embedded_path, load_student

    torch.set_num_threads(2)
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
    work = Path(tempfile.mkdtemp(prefix="bench_deploy_"))
    folder = family.save(work / "family", tokenizer)
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
            done = subprocess.run([*cmd, str(student_dir)], capture_output=True, text=True, cwd=ROOT)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            label = f"{name} (k={k}, {layers} layers)"
            add("load", label, mode, "seconds", round(result["seconds"], 2), "s")
            add("load", label, mode, "rss_delta", round(result["rss_delta"] / 2**20, 1), "MiB")

    pd.DataFrame(rows).to_csv(OUT, index=False)
    text = (ROOT / "data" / "wikitext-2" / "wiki.test.raw").read_text()[:40000]
    tokens = tokenizer(text)["input_ids"][: args.tokens]
    prompt = tokenizer("The history of the city", return_tensors="pt").input_ids
    for name, k in members.items():
        member = family.build(k)
        label = f"{name} (k={k}, {int(sizes.layers[k])} layers)"
        with torch.no_grad():
            ppl = perplexity_from_logits(member(torch.tensor([tokens])).logits[0].numpy(), tokens)
            member.generate(prompt, max_new_tokens=4, do_sample=False)
            start = time.perf_counter()
            member.generate(prompt, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False)
            speed = args.new_tokens / (time.perf_counter() - start)
        add("torch", label, "f32", "perplexity", round(ppl, 3), "")
        add("torch", label, "f32", "tokens_per_s", round(speed, 1), "tok/s")
        for quant in args.quants:
            path = family.export(k, work / f"{name}-{quant}.gguf", format="gguf", quant=quant)
            add("gguf", label, quant, "bytes", path.stat().st_size, "B")
            llm = llama_cpp_model(path, n_ctx=max(len(tokens), 128), n_threads=2)
            ppl = perplexity_from_logits(llama_cpp_logits(llm, tokens), tokens)
            add("gguf", label, quant, "perplexity", round(ppl, 3), "")
            del llm
            llm = llama_cpp_model(path, n_ctx=128, n_threads=2, logits_all=False)
            ids = prompt[0].tolist()
            llm.eval(ids)
            start = time.perf_counter()
            for _ in range(args.new_tokens):  # greedy, one token per eval, as member.generate does
                llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
            add(
                "gguf", label, quant, "tokens_per_s", round(args.new_tokens / (time.perf_counter() - start), 1), "tok/s"
            )
            del llm
            path.unlink()
        pd.DataFrame(rows).to_csv(OUT, index=False)
    pd.DataFrame(rows).to_csv(OUT, index=False)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
