"""LaCo (Yang et al. 2024, "LaCo: Large Language Model Pruning via Layer Collapse"): the paper's second layer-pruning
baseline, beside ShortGPT.

Reserving-Differences-while-Seeking-Common (RDSC) merges layers l+1..l+m into layer l, parameter by parameter:

    theta*_l = theta_l + sum_{k=1..m} (theta_{l+k} - theta_l)

and drops layers l+1..l+m. The search (LaCo's Algorithm 1) walks l down from the top of the range [L, H]: a merge of
up to C layers (l and the C - 1 after it) is kept when the cosine similarity between the merged model's and the
original model's final hidden states, averaged over a few calibration sentences, exceeds the threshold T; then l
moves down by the interval I, otherwise by 1. The kit drives it to a target depth: the last merge takes only as many
layers as the target allows, the walk restarts from the top until the depth is reached, and a pass that keeps no
merge keeps its most similar candidate instead (the member is then flagged `threshold_met=False`).

**The merge is computed out of place**: every difference theta_{l+k} - theta_l uses the layer's weights as they were
before the merge. LaCo's official notebooks add the differences into a copy of layer l one after another
(`copy.l.add_(model.l_k - copy.l)`), so each step subtracts the already-updated copy: after the first step copy.l is
theta_{l+1}, after the second theta_{l+2}, ..., and the merge collapses to theta_l <- theta_{l+m} (reported in the
LaCo repository's issues). That is a different method (keep the last layer of each group) from the paper's formula;
the kit implements the formula. As in the official code, the weights of a layer's linear maps (attention and MLP)
are merged and its norms are kept from layer l.

Merged layers are new modules; every other layer, the embeddings and the head stay shared with the teacher.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from ..models.adapters import layers_of


@dataclass(frozen=True)
class LaCoConfig:
    """LaCo's hyperparameters (C=4, I=2, T=0.65: as we read its paper's Llama2 setting; the range here is the whole
    model above the first layers by default)."""

    merge: int = field(default=4, metadata={"help": "C: layers merged into one per step (layer l and the C-1 after)"})
    lowest: int | None = field(
        default=None, metadata={"help": "L: the lowest layer merged into (null: an eighth of the depth)"}
    )
    highest: int | None = field(default=None, metadata={"help": "H: the top of the merge range (null: the last)"})
    interval: int = field(default=2, metadata={"help": "I: how far l moves down after a kept merge"})
    threshold: float = field(default=0.65, metadata={"help": "T: the final-state cosine a merge must exceed"})
    sentences: int = field(default=5, metadata={"help": "calibration sentences (LaCo: a few)"})
    tokens: int = field(default=64, metadata={"help": "tokens per calibration sentence"})

    def __post_init__(self):
        if self.merge < 2 or self.interval < 1 or self.sentences < 1 or self.tokens < 2:
            raise ValueError(f"Need merge >= 2, interval >= 1, sentences >= 1, tokens >= 2; got {self}.")
        if not -1 <= self.threshold <= 1:
            raise ValueError(f"threshold is a cosine in [-1, 1], got {self.threshold}.")

    def bounds(self, num_layers: int) -> tuple[int, int]:
        lowest = max(1, num_layers // 8) if self.lowest is None else self.lowest
        highest = num_layers if self.highest is None else min(self.highest, num_layers)
        if not 0 <= lowest < highest:
            raise ValueError(f"Need 0 <= L < H; got L={lowest}, H={highest} for {num_layers} layers.")
        return lowest, highest


def merged_names(layer: nn.Module) -> list[str]:
    """The parameters RDSC merges: those of the layer's linear maps (every submodule but its norms)."""
    names = []
    for module_name, module in layer.named_modules():
        if "norm" in type(module).__name__.lower() or "layernorm" in module_name.lower():
            continue
        names += [f"{module_name}.{p}" if module_name else p for p, _ in module.named_parameters(recurse=False)]
    return names


@torch.no_grad()
def rdsc_merge(layers: list[nn.Module]) -> nn.Module:
    """A new layer: layers[0] + sum_k (layers[k] - layers[0]) on every merged parameter, each difference taken
    against layers[0] as it was (out of place; see the module docstring); its other parameters are layers[0]'s."""
    base = layers[0]
    merged = copy.deepcopy(base)
    params = [dict(layer.named_parameters()) for layer in layers]
    target = dict(merged.named_parameters())
    for name in merged_names(base):
        original = params[0][name]
        target[name].copy_(original + sum(p[name] - original for p in params[1:]))
    return merged


def layer_model(model: PreTrainedModel, layers: list[nn.Module]) -> PreTrainedModel:
    """`model` running these layer modules (merged ones or its own), sharing every other module with it."""
    from ..family.members import modules_view

    return modules_view(model, layers)


@torch.no_grad()
def final_states(model: PreTrainedModel, input_ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=input_ids, output_hidden_states=True, use_cache=False).hidden_states[-1].float()


@torch.no_grad()
def similarity(model: PreTrainedModel, reference: torch.Tensor, input_ids: torch.Tensor) -> float:
    """Mean over calibration tokens of cos(model's final hidden state, the original model's)."""
    return F.cosine_similarity(final_states(model, input_ids), reference, dim=-1).mean().item()


@dataclass
class LaCoResult:
    model: PreTrainedModel
    groups: list[list[int]]  # the teacher layers each layer of the result merges (in order)
    similarity: float  # its final-state cosine with the teacher on the calibration sentences
    threshold_met: bool  # every merge kept beat T (False: a pass kept its most similar candidate instead)
    candidates: int  # merged models evaluated


@torch.no_grad()
def laco(
    teacher: PreTrainedModel, num_layers: int, calibration: torch.Tensor, config: LaCoConfig = LaCoConfig()
) -> LaCoResult:
    """The teacher collapsed by LaCo to `num_layers` layers (see the module docstring); `calibration`: token ids
    [sentences, tokens] (e.g. `data.calibration_set(tokenizer, 5, 64)`)."""
    original = list(layers_of(teacher))
    if not 1 <= num_layers <= len(original):
        raise ValueError(f"num_layers must be in 1..{len(original)}, got {num_layers}.")
    lowest, highest = config.bounds(len(original))
    reference = final_states(teacher, calibration)
    layers, groups = list(original), [[i] for i in range(len(original))]
    met, evaluated, score = True, 0, 1.0
    while len(layers) > num_layers:
        best, kept_any = None, False
        l = min(highest, len(layers)) - config.merge
        while l >= lowest and len(layers) > num_layers:
            m = min(config.merge - 1, len(layers) - num_layers, len(layers) - 1 - l)
            candidate = layers[:l] + [rdsc_merge(layers[l : l + m + 1])] + layers[l + m + 1 :]
            s = similarity(layer_model(teacher, candidate), reference, calibration)
            evaluated += 1
            merged_groups = groups[:l] + [sum(groups[l : l + m + 1], [])] + groups[l + m + 1 :]
            if s > config.threshold:
                layers, groups, score, kept_any = candidate, merged_groups, s, True
                l = min(l - config.interval, len(layers) - config.merge)
            else:
                if best is None or s > best[0]:
                    best = (s, candidate, merged_groups)
                l -= 1
        if not kept_any:
            if best is None:
                raise ValueError(
                    f"LaCo cannot reach {num_layers} layers within the range L={lowest}, H={highest} "
                    f"(C={config.merge}); lower L."
                )
            score, layers, groups = best
            met = False
    return LaCoResult(layer_model(teacher, layers), groups, score, met, evaluated)
