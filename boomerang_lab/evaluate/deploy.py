"""One member, two runtimes: the kit's torch member against its GGUF export running in llama.cpp, on the same
WikiText-2 test tokens, the same greedy prompt and the same speed measurement (`family.speed.ms_per_token`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import torch

from ..family.gguf import (
    llama_cpp_greedy,
    llama_cpp_logits,
    llama_cpp_model,
    llama_cpp_ms_per_token,
    perplexity_from_logits,
)
from .perplexity import wikitext_text

INSTALL_HINT = (
    "llama-cpp-python is not installed (the [deploy] extra; `make install` builds it): "
    'CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" '
    "pip install -c constraints.txt llama-cpp-python"
)


def llama_cpp_available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


@torch.no_grad()
def compare_runtimes(
    family,
    k: int,
    order,
    path: str | Path,
    tokenizer,
    quant: str = "q8_0",
    tokens: int = 512,
    prompt: str = "The history of the city",
    new_tokens: int = 24,
    threads: int | None = None,
) -> pd.DataFrame | None:
    """Export member k (in `order`) as a `quant` GGUF at `path` and measure it in llama.cpp beside the torch member:
    file MiB (torch: float32 parameters x 4 bytes), perplexity on the first `tokens` WikiText-2 test tokens (one
    window), ms/token (greedy, batch 1, `threads` threads, default torch's), and the greedy continuation of `prompt`.
    One row per runtime; `attrs["same_tokens"]` is how many of the first `new_tokens` greedy tokens agree. Returns
    None (after one line naming the install) when llama-cpp-python is missing."""
    if not llama_cpp_available():
        print(INSTALL_HINT)
        return None
    threads = threads or torch.get_num_threads()
    member = family.build(k, order)
    ids = tokenizer(wikitext_text())["input_ids"][:tokens]
    start = tokenizer(prompt)["input_ids"]
    window = torch.tensor([ids], device=member.device)
    torch_ppl = perplexity_from_logits(member(window).logits[0].float().cpu().numpy(), ids)
    out = member.generate(
        torch.tensor([start], device=member.device),
        do_sample=False,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        pad_token_id=getattr(member.generation_config, "pad_token_id", None) or 0,
    )
    torch_tokens = out[0, len(start) :].tolist()
    torch_ms = family.ms_per_token(k, order)

    path = family.export(k, path, order, tokenizer=tokenizer, format="gguf", quant=quant)
    llm = llama_cpp_model(path, n_ctx=max(len(ids), len(start) + new_tokens, 64), n_threads=threads)
    gguf_ppl = perplexity_from_logits(llama_cpp_logits(llm, ids), ids)
    gguf_tokens = llama_cpp_greedy(llm, start, new_tokens)
    gguf_ms = llama_cpp_ms_per_token(llm)
    del llm
    same = next((i for i, (a, b) in enumerate(zip(torch_tokens, gguf_tokens)) if a != b), new_tokens)
    params = sum(p.numel() for p in member.parameters())
    table = pd.DataFrame(
        [
            ("torch", "f32", params * 4 / 2**20, torch_ppl, torch_ms, tokenizer.decode(torch_tokens)),
            ("llama.cpp", quant, path.stat().st_size / 2**20, gguf_ppl, gguf_ms, tokenizer.decode(gguf_tokens)),
        ],
        columns=["runtime", "weights", "MiB", "perplexity", "ms/token", "continuation"],
    ).set_index("runtime")
    table["tokens/s"] = 1000 / table["ms/token"]
    table.attrs.update(k=k, layers=member.config.num_hidden_layers, tokens=len(ids), threads=threads)
    table.attrs.update(same_tokens=same, new_tokens=new_tokens, path=str(path), prompt=prompt)
    return table
