"""Pseudo-perplexity throughput on a BERT-base-shaped pair (random weights, so no hub): tokens scored per second for
the student (k=0) and the teacher (k=K), and the endpoints checked on the same device.

    python benchmarks/bench_pseudo_perplexity.py [--tokens 2048] [--device cuda] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import BertConfig, BertForMaskedLM, DistilBertConfig, DistilBertForMaskedLM

from boomerang_lab.evaluate.pairs import pair_family
from boomerang_lab.evaluate.pseudo_perplexity import MaskTokens, pseudo_perplexity
from boomerang_lab.models.loading import resolve_dtype

WIKITEXT_BERT_TOKENS = 290_000  # rough bert-base-uncased wordpiece count of WikiText-2 test (241k words)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--window", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    torch.manual_seed(0)
    dtype = resolve_dtype(args.dtype)
    teacher = BertForMaskedLM(BertConfig()).to(args.device, dtype).eval()
    student = DistilBertForMaskedLM(DistilBertConfig()).to(args.device, dtype).eval()
    family = pair_family(teacher, student)
    special = MaskTokens(mask=103, cls=101, sep=102)
    ids = torch.randint(1000, 30000, (args.tokens,)).tolist()

    x = torch.tensor([ids[:64]], device=args.device)
    with torch.no_grad():
        gaps = [
            (family.build(k)(x).logits - m(x).logits).abs().max().item() for k, m in [(0, student), (family.K, teacher)]
        ]
    print(
        f"{args.device} {torch.cuda.get_device_name() if args.device == 'cuda' else ''} {args.dtype}: "
        f"max |logit diff| k=0 vs student {gaps[0]:.3g}, k=K vs teacher {gaps[1]:.3g}"
    )
    for k in (0, family.K):
        member = family.build(k)
        pseudo_perplexity(member, ids[: args.batch_size], special, args.window, args.batch_size)  # warm-up
        if args.device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        pseudo_perplexity(member, ids, special, args.window, args.batch_size)
        if args.device == "cuda":
            torch.cuda.synchronize()
        rate = args.tokens / (time.perf_counter() - t0)
        print(
            f"k={k} ({len(member.bert.encoder.layer)} layers): {rate:,.0f} tokens/s, "
            f"full WikiText-2 test (~{WIKITEXT_BERT_TOKENS:,} tokens) ~ {WIKITEXT_BERT_TOKENS / rate / 60:.1f} min"
        )


if __name__ == "__main__":
    main()
