"""LaCo (Yang et al. 2024, "LaCo: Large Language Model Pruning via Layer Collapse"): the paper's second layer-pruning
baseline, beside ShortGPT. Two variants, `LaCoConfig.variant`:

**"paper"** (the default): the paper's formula. Reserving-Differences-while-Seeking-Common (RDSC) merges layers
l+1..l+m into layer l, parameter by parameter,

    theta*_l = theta_l + sum_{k=1..m} (theta_{l+k} - theta_l)

and drops layers l+1..l+m, every difference taken against layer l as it was (out of place). A merge is kept when the
cosine similarity between the merged model's and the original model's final hidden states, averaged over the
calibration tokens, exceeds the threshold T. The window's top bound H is the last layer (the top window may merge it).

**"official"**: what LaCo's official notebooks (github.com/yangyifei729/LaCo, `laco_llama-13b.ipynb`) compute.
(1) The merge adds the differences into a copy of layer l one after another (`copy.l.add_(model.l_k - copy.l)`), so
each step subtracts the already-updated copy: after the first step copy.l is theta_{l+1}, after the last
theta_{l+m}; the merge keeps the *last* layer of each window (its attention and MLP weights, with layer l's norms), a
different method from the formula (reported in the LaCo repository's issues). The arithmetic is done the same way
here, in place, so the result carries the same rounding. (2) The window's top bound is HIGHEST_LAY = the last layer's
index: the first window is [H - C, H - 1], so it stops below the last layer; the walk then goes down from there (it
may still reach the last layer later, as the official loop does, once merges above have shortened the model). After a
kept merge l moves down by I and is reset to len - 1 - C when it lies past the model. (3) The similarity is taken per
calibration sentence, as the cosine of the two flattened [tokens x width] final states, then averaged over sentences.

Both: LaCo's Algorithm 1 walks l down from the top of the range [L, H]: a merge of up to C layers (l and the C - 1
after it) is kept when the similarity exceeds T, then l moves down by the interval I, otherwise by 1. The kit drives
it to a target depth: the last merge takes only as many layers as the target allows and the walk restarts from the
top until the depth is reached. **When a pass keeps no merge, no merge reached the threshold**: by default the pass
keeps its most similar candidate anyway ("forced"), warns (LaCoThresholdWarning, naming the best similarity and T) and
counts it (`LaCoResult.forced_merges`, `threshold_met=False`); with `strict=True` it raises LaCoThresholdError
instead. On SmolLM2-135M no merge reaches T=0.65 at the depths the kit compares (benchmarks/laco_variants.py).
As in the official code, the weights of a layer's linear maps (attention and MLP) are merged and its norms are kept
from layer l.

Merged layers are new modules; every other layer, the embeddings and the head stay shared with the teacher.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from ..models.adapters import layers_of

VARIANTS = ("paper", "official")
"""LaCo's variants (module docstring): the paper's formula, or its official code's in-place merge and walk."""


class LaCoThresholdError(ValueError):
    """strict=True and a pass of LaCo's walk found no merge above the threshold."""


class LaCoThresholdWarning(UserWarning):
    """A pass of LaCo's walk found no merge above the threshold and kept its most similar candidate (forced)."""


@dataclass(frozen=True)
class LaCoConfig:
    """LaCo's hyperparameters (C=4, I=2, T=0.65: as we read its paper's Llama2 setting; the range here is the whole
    model above the first layers by default)."""

    merge: int = field(default=4, metadata={"help": "C: layers merged into one per step (layer l and the C-1 after)"})
    lowest: int | None = field(
        default=None, metadata={"help": "L: the lowest layer merged into (null: an eighth of the depth)"}
    )
    highest: int | None = field(
        default=None,
        metadata={
            "help": "H: the top of the merge range; the first window is [H - C, H - 1] (null: the number of layers "
            "for the paper's variant, the last layer's index for the official one, as its HIGHEST_LAY)"
        },
    )
    interval: int = field(default=2, metadata={"help": "I: how far l moves down after a kept merge"})
    threshold: float = field(default=0.65, metadata={"help": "T: the final-state cosine a merge must exceed"})
    sentences: int = field(default=5, metadata={"help": "calibration sentences (LaCo: a few)"})
    tokens: int = field(default=64, metadata={"help": "tokens per calibration sentence"})
    variant: str = field(
        default="paper",
        metadata={
            "help": "paper: the paper's RDSC formula, token-averaged cosine, H = the last layer included; official: "
            "the official code's in-place merge (keeps each window's last layer), its HIGHEST_LAY (the first window "
            "stops below the last layer) and its per-sentence cosine of the flattened states"
        },
    )
    strict: bool = field(
        default=False,
        metadata={
            "help": "raise LaCoThresholdError when a pass finds no merge above T (false: keep its most similar "
            "candidate, warn and count it as forced)"
        },
    )

    def __post_init__(self):
        if self.merge < 2 or self.interval < 1 or self.sentences < 1 or self.tokens < 2:
            raise ValueError(f"Need merge >= 2, interval >= 1, sentences >= 1, tokens >= 2; got {self}.")
        if not -1 <= self.threshold <= 1:
            raise ValueError(f"threshold is a cosine in [-1, 1], got {self.threshold}.")
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}.")

    def bounds(self, num_layers: int) -> tuple[int, int]:
        lowest = max(1, num_layers // 8) if self.lowest is None else self.lowest
        top = num_layers if self.variant == "paper" else num_layers - 1
        highest = top if self.highest is None else min(self.highest, num_layers)
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
def rdsc_merge(layers: list[nn.Module], variant: str = "paper") -> nn.Module:
    """A new layer from layers[0] and the layers after it, on every merged parameter; its other parameters (norms)
    are layers[0]'s. paper: layers[0] + sum_k (layers[k] - layers[0]), each difference against layers[0] as it was.
    official: the official code's in-place update, copy += layers[k] - copy for k = 1..m in turn, which ends at
    layers[m] (the window's last layer) up to rounding."""
    base = layers[0]
    merged = copy.deepcopy(base)
    params = [dict(layer.named_parameters()) for layer in layers]
    target = dict(merged.named_parameters())
    for name in merged_names(base):
        if variant == "official":
            for p in params[1:]:
                target[name].add_(p[name] - target[name])
        else:
            original = params[0][name]
            target[name].copy_(original + sum(p[name] - original for p in params[1:]))
    return merged


def layer_model(model: PreTrainedModel, layers: list[nn.Module]) -> PreTrainedModel:
    """`model` running these layer modules (merged ones or its own), sharing every other module with it."""
    from ..family.members import modules_view

    return modules_view(model, layers)


@torch.no_grad()
def final_states(model: PreTrainedModel, input_ids: torch.Tensor) -> torch.Tensor:
    """The backbone's last hidden states (after its final norm: the model's hidden_states[-1]), without the head."""
    return model.base_model(input_ids=input_ids, use_cache=False).last_hidden_state.float()


@torch.no_grad()
def similarity(
    model: PreTrainedModel, reference: torch.Tensor, input_ids: torch.Tensor, variant: str = "paper"
) -> float:
    """cos(model's final hidden states, the original model's): paper, the mean over calibration tokens of each
    token's cosine; official, the mean over sentences of the cosine of the sentence's flattened states."""
    states = final_states(model, input_ids)
    if variant == "official":
        return F.cosine_similarity(states.flatten(1), reference.flatten(1), dim=-1).mean().item()
    return F.cosine_similarity(states, reference, dim=-1).mean().item()


@dataclass
class LaCoResult:
    model: PreTrainedModel
    groups: list[list[int]]  # the teacher layers each layer of the result merges (in order)
    similarity: float  # its final-state cosine with the teacher on the calibration sentences
    threshold_met: bool  # every merge kept beat T (False: a pass kept its most similar candidate instead)
    candidates: int  # merged models evaluated
    forced_merges: int = 0  # merges kept below T because their pass found none above it
    variant: str = "paper"
    best_below: list[float] = field(default_factory=list)  # the similarity of each forced merge


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
    official = config.variant == "official"
    reference = final_states(teacher, calibration)
    layers, groups = list(original), [[i] for i in range(len(original))]
    evaluated, score, forced = 0, 1.0, []
    while len(layers) > num_layers:
        best, kept_any = None, False
        # official: lay = HIGHEST_LAY - MERGE_LAYERS (below the current last layer once merges shortened the model)
        l = (min(highest, len(layers) - 1) if official else min(highest, len(layers))) - config.merge
        while l >= lowest and len(layers) > num_layers:
            m = min(config.merge - 1, len(layers) - num_layers, len(layers) - 1 - l)
            if m < 1:  # the official loop "merges" nothing here (similarity 1, kept) and moves down by I
                l -= config.interval
                continue
            candidate = layers[:l] + [rdsc_merge(layers[l : l + m + 1], config.variant)] + layers[l + m + 1 :]
            s = similarity(layer_model(teacher, candidate), reference, calibration, config.variant)
            evaluated += 1
            merged_groups = groups[:l] + [sum(groups[l : l + m + 1], [])] + groups[l + m + 1 :]
            if s > config.threshold:
                layers, groups, score, kept_any = candidate, merged_groups, s, True
                if official:  # lay -= INTERVAL; past the model: lay = len - 1 - MERGE_LAYERS
                    l -= config.interval
                    if l >= len(layers):
                        l = len(layers) - 1 - config.merge
                else:
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
            message = (
                f"LaCo ({config.variant}) to {num_layers} layers: no merge at {len(layers)} layers reaches the "
                f"threshold T={config.threshold} (best similarity {best[0]:.4f})"
            )
            if config.strict:
                raise LaCoThresholdError(message + "; lower threshold, or strict=False to keep the best one.")
            warnings.warn(message + "; kept the most similar merge (forced).", LaCoThresholdWarning, stacklevel=3)
            score, layers, groups = best
            forced.append(score)
    return LaCoResult(
        layer_model(teacher, layers), groups, score, not forced, evaluated, len(forced), config.variant, forced
    )
