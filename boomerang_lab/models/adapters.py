"""Where each architecture keeps its layers, embeddings, final norm and head: one table, no per-model code."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Adapter:
    """Dotted paths (from the task model) of the pieces that patching swaps."""

    layers: str
    embeddings: tuple[str, ...]
    final_norm: str | None  # None for post-LN models (BERT), whose layers end in their own norm
    head: str


_DECODER = Adapter("model.layers", ("model.embed_tokens",), "model.norm", "lm_head")

ADAPTERS: dict[str, Adapter] = {
    "llama": _DECODER,
    "mistral": _DECODER,
    "qwen2": _DECODER,
    "qwen3": _DECODER,
    "gpt_neox": Adapter("gpt_neox.layers", ("gpt_neox.embed_in",), "gpt_neox.final_layer_norm", "lm_head"),
    "gpt2": Adapter("transformer.h", ("transformer.wte", "transformer.wpe"), "transformer.ln_f", "lm_head"),
    "bert": Adapter("bert.encoder.layer", ("bert.embeddings",), None, "cls"),
}
"""A DistilBERT student joins a BERT teacher's family through bridges.py, which shows it in BERT's layout."""


def get_adapter(model: nn.Module) -> Adapter:
    """The adapter for `model`, with a clear error naming the supported architectures."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    adapter = ADAPTERS.get(model_type)
    if adapter is None:
        raise ValueError(
            f"Unsupported architecture {model_type!r} ({type(model).__name__}); "
            f"supported model types: {', '.join(sorted(ADAPTERS))}."
        )
    for path in filter(None, (adapter.layers, *adapter.embeddings, adapter.final_norm, adapter.head)):
        try:
            model.get_submodule(path)
        except AttributeError:
            raise ValueError(
                f"{type(model).__name__} has no submodule {path!r}: boomerang_lab needs the task model "
                f"(e.g. *ForCausalLM, BertForMaskedLM), not the bare backbone."
            ) from None
    if getattr(config, "scale_attn_by_inverse_layer_idx", False):
        raise ValueError(
            "GPT-2 models with scale_attn_by_inverse_layer_idx=True tie weights to a layer's position; "
            "their layers cannot be moved between models."
        )
    return adapter


def layers_of(model: nn.Module) -> nn.ModuleList:
    return model.get_submodule(get_adapter(model).layers)


def set_num_layers(config, layer_types: list | None, num_layers: int) -> None:
    """Make `config` describe a model with `num_layers` layers (transformers runs `layers[:num_hidden_layers]`)."""
    config.num_hidden_layers = num_layers
    if layer_types is not None:
        config.layer_types = list(layer_types)
