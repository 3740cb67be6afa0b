"""Tokens/s of a distillation step at SmolLM2-135M's shapes (random weights): the Trainer path of
boomerang_lab.distill.trainer, and a plain PyTorch loop of the same objective measured on the same card.

    python benchmarks/bench_distill.py --device cuda                          # both modes, 16 x 512, bf16
    python benchmarks/bench_distill.py --device cuda --mode trainer --compile  # + torch.compile (model and loss)
    python benchmarks/bench_distill.py --device cpu --batch 2 --seq-len 64 --steps 2 --warmup 1 --layers 6

The plain loop ("baseline") is the issue's reference: bf16 autocast over fp32 weights (teacher included), every hidden
state and both full-vocabulary logits materialised, unfused AdamW; it reached ~73k tokens/s at 16 x 512 on one H200.
The Trainer path keeps the teacher in bf16, asks it only for the aligned states and forms CE/KL in token chunks.
Rows are appended to --csv (default results/bench_distill.csv).
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM, TrainerCallback

from boomerang_lab.config.distill import DistillConfig, LossConfig
from boomerang_lab.distill.trainer import distill
from boomerang_lab.models.plan import LayerPlan
from boomerang_lab.models.student import init_student
from boomerang_lab.report.costs import SMOLLM2_135M
from boomerang_lab.store.atomic import atomic_write_text


def pair(layers: int) -> tuple[LlamaForCausalLM, LlamaForCausalLM, LayerPlan]:
    """A random SmolLM2-shaped teacher and its paper-plan student."""
    torch.manual_seed(0)
    teacher = LlamaForCausalLM(LlamaConfig(**{**SMOLLM2_135M, "num_hidden_layers": layers}))
    plan = LayerPlan.paper(layers)
    return teacher, init_student(teacher, plan).train(), plan


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def now() -> tuple[float, float]:
    """(wall, this process's CPU) seconds: on a shared CPU the second is the fairer clock."""
    return time.perf_counter(), time.process_time()


class Clock(TrainerCallback):
    """Marks the end of the warm-up steps and of the last step."""

    def __init__(self, warmup: int, device: str):
        self.warmup, self.device, self.marks = warmup, device, {}

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step in (self.warmup, state.max_steps):
            sync(self.device)
            self.marks[state.global_step] = now()


def run_trainer(args) -> tuple[float, float]:
    """(wall, CPU) seconds for args.steps Trainer steps after args.warmup warm-up steps."""
    teacher, student, plan = pair(args.layers)
    total = args.warmup + args.steps
    ids = torch.randint(
        0, SMOLLM2_135M["vocab_size"], (total * args.batch, args.seq_len), generator=torch.Generator().manual_seed(0)
    )
    data = Dataset.from_dict({"input_ids": ids}).with_format("torch")
    clock = Clock(args.warmup, args.device)
    with tempfile.TemporaryDirectory() as tmp:
        config = DistillConfig(
            output_dir=str(Path(tmp, "student")),
            batch_size=args.batch,
            seq_len=args.seq_len,
            max_steps=total,
            bf16=args.bf16,
            compile=args.compile,
            use_cpu=args.device == "cpu",
            optim="adamw_torch_fused" if args.fused else "adamw_torch",
            save_steps=10 * total,
            log_steps=args.log_every,
            freeze_embeddings=args.freeze_embeddings,
            loss=LossConfig(chunk_tokens=args.chunk_tokens, compile=args.compile),
        )
        distill(teacher, student, plan, data, config, callbacks=[clock])
    (w0, c0), (w1, c1) = clock.marks[args.warmup], clock.marks[total]
    return w1 - w0, c1 - c0


def naive_objective(s, t, ids: torch.Tensor, plan: LayerPlan) -> torch.Tensor:
    """CE + 0.1 KL + 2 mean(1 - cos) on full tensors, the straightforward way."""
    vocab = s.logits.shape[-1]
    ce = F.cross_entropy(s.logits[:, :-1].reshape(-1, vocab).float(), ids[:, 1:].reshape(-1))
    kl = F.kl_div(
        F.log_softmax(s.logits.float(), -1).flatten(0, 1),
        F.log_softmax(t.logits.float(), -1).flatten(0, 1),
        log_target=True,
        reduction="batchmean",
    )
    cos = torch.stack(
        [
            (1 - F.cosine_similarity(s.hidden_states[i].float(), t.hidden_states[j].float(), dim=-1)).mean()
            for i, j in plan.alignment()
        ]
    ).mean()
    return ce + 0.1 * kl + 2.0 * cos


def run_baseline(args) -> tuple[float, float]:
    """(wall, CPU) seconds for args.steps steps of the plain loop after args.warmup warm-up steps."""
    teacher, student, plan = pair(args.layers)
    teacher.to(args.device).eval().requires_grad_(False)
    student.to(args.device)
    if args.freeze_embeddings:
        student.requires_grad_(False).model.layers.requires_grad_(True)
        student.model.norm.requires_grad_(True)
    trained = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)
    generator = torch.Generator().manual_seed(0)
    start = None
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            sync(args.device)
            start = now()
        ids = torch.randint(0, SMOLLM2_135M["vocab_size"], (args.batch, args.seq_len), generator=generator)
        ids = ids.to(args.device, non_blocking=True)
        with torch.autocast(torch.device(args.device).type, dtype=torch.bfloat16, enabled=args.bf16):
            with torch.no_grad():
                t = teacher(input_ids=ids, output_hidden_states=True, use_cache=False)
            s = student(input_ids=ids, output_hidden_states=True, use_cache=False)
            loss = naive_objective(s, t, ids, plan)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % args.log_every == 0:
            loss.item()  # a loop that logs its loss syncs here, like the Trainer does
        del t, s, loss
    sync(args.device)
    end = now()
    return end[0] - start[0], end[1] - start[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cuda", "cpu"))
    parser.add_argument("--mode", default="both", choices=("trainer", "baseline", "both"))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation, allocator)")
    parser.add_argument("--layers", type=int, default=30, help="teacher layers (30 = SmolLM2-135M)")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, help="bf16 autocast (default: on GPU only)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the models and the loss (Trainer path)")
    parser.add_argument(
        "--fused", action=argparse.BooleanOptionalAction, default=True, help="fused AdamW (Trainer path)"
    )
    parser.add_argument(
        "--freeze-embeddings",
        action="store_true",
        help="freeze the student's embeddings and head (the quick/paper default), in both modes",
    )
    parser.add_argument("--chunk-tokens", type=int, default=LossConfig.chunk_tokens)
    parser.add_argument("--log-every", type=int, default=1, help="steps between loss logs (each one syncs)")
    parser.add_argument("--csv", default="results/bench_distill.csv")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no GPU.")
    args.bf16 = args.device == "cuda" if args.bf16 is None else args.bf16
    card = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"torch {torch.__version__} on {card}; batch {args.batch} x {args.seq_len}, {args.layers} teacher layers")

    rows = []
    for mode in ("trainer", "baseline") if args.mode == "both" else (args.mode,):
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        status, (seconds, cpu_seconds) = "ok", (float("nan"), float("nan"))
        try:
            seconds, cpu_seconds = (run_trainer if mode == "trainer" else run_baseline)(args)
        except Exception as err:  # one failing configuration (e.g. compile, OOM) must not hide the other
            traceback.print_exc()
            status = f"failed: {type(err).__name__}: {str(err)[:200]}"
        rows.append(
            {
                "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "device": card,
                "mode": mode,
                "batch": args.batch,
                "seq_len": args.seq_len,
                "layers": args.layers,
                "bf16": args.bf16,
                "compile": args.compile and mode == "trainer",
                "fused": args.fused and mode == "trainer",
                "frozen_embeddings": args.freeze_embeddings,
                "log_every": args.log_every,
                "steps": args.steps,
                "s_per_step": seconds / args.steps,
                "cpu_s_per_step": cpu_seconds / args.steps,
                "tokens_per_s": args.steps * args.batch * args.seq_len / seconds,
                "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else float("nan"),
                "status": status,
            }
        )
        gc.collect()
        if args.device == "cuda":
            torch.cuda.empty_cache()

    table = pd.DataFrame(rows)
    print(table.drop(columns=["time"]).to_string(index=False, float_format=lambda x: f"{x:,.3f}"))
    ok = table[table.status == "ok"].set_index("mode").tokens_per_s
    if {"trainer", "baseline"} <= set(ok.index):
        print(f"Trainer path / plain loop: {ok.trainer / ok.baseline:.2f}x")
    path = Path(args.csv)
    if path.exists():
        table = pd.concat([pd.read_csv(path), table], ignore_index=True)
    atomic_write_text(path, table.to_csv(index=False))
    print(f"Appended to {path}")


if __name__ == "__main__":
    main()
