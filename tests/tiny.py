"""Tiny randomly initialised models of each supported architecture, for fast tests."""

from __future__ import annotations

import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

VOCAB = 97


def tiny_config(arch: str, layers: int = 8, tie: bool = True):
    common = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        tie_word_embeddings=tie,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    if arch == "llama":
        return LlamaConfig(num_key_value_heads=2, **common)
    if arch == "qwen3":
        return Qwen3Config(num_key_value_heads=2, head_dim=8, **common)
    if arch == "gpt_neox":
        return GPTNeoXConfig(**{**common, "tie_word_embeddings": False})
    if arch == "gpt2":
        return GPT2Config(
            vocab_size=VOCAB,
            n_embd=32,
            n_layer=layers,
            n_head=4,
            n_positions=128,
            bos_token_id=0,
            eos_token_id=0,
            tie_word_embeddings=tie,
        )
    raise ValueError(arch)


MODEL_CLASSES = {
    "llama": LlamaForCausalLM,
    "qwen3": Qwen3ForCausalLM,
    "gpt_neox": GPTNeoXForCausalLM,
    "gpt2": GPT2LMHeadModel,
}
ARCHS = tuple(MODEL_CLASSES)


def tiny_model(arch: str, layers: int = 8, seed: int = 0, tie: bool = True):
    torch.manual_seed(seed)
    return MODEL_CLASSES[arch](tiny_config(arch, layers, tie)).eval()


def perturb(model, seed: int = 1, scale: float = 0.05):
    """Stand-in for distillation: move every weight so that student and teacher differ everywhere."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model
