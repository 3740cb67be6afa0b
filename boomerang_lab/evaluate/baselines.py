"""The paper's baselines, built without copying weights: naive layer pruning, ShortGPT, LaCo, random-init
interpolation.

Naive pruning and ShortGPT are the teacher with some layers dropped: `teacher_view` shares the teacher's modules.
LaCo merges groups of layers into one (`laco.py`): only the merged layers are new modules.
Random-init interpolation is `Family(teacher, student_distilled_from_random_init, plan)`; standard distillation
students are evaluated as they are (see `sweep`'s `distilled`).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from ..family.members import Family, OrderLike, layer_view
from ..models.adapters import layers_of
from ..models.plan import LayerPlan
from .laco import LaCoConfig, laco


def teacher_view(teacher: PreTrainedModel, layers: Sequence[int]) -> PreTrainedModel:
    """The teacher running only `layers` (in the given order), sharing every module with it (zero copy)."""
    return layer_view(teacher, layers)


def naive_layers(plan: LayerPlan, patched: Sequence[int]) -> list[int]:
    """Teacher layers of naive pruning at a patched set: patched blocks whole, every other block its first layer."""
    return [i for j in range(plan.num_student_layers) for i in (plan.block(j) if j in patched else [plan.kept[j]])]


def naive_pruning(family: Family, k: int, order: OrderLike = "last") -> PreTrainedModel:
    """The teacher with the same layers removed as the family's size-k member (no training)."""
    return teacher_view(family.teacher, naive_layers(family.plan, family.order(order).patched(k)))


@torch.no_grad()
def block_influence(model: PreTrainedModel, input_ids: torch.Tensor) -> torch.Tensor:
    """ShortGPT's Block Influence per layer: 1 - mean over tokens of cos(layer input, layer output).

    `input_ids`: calibration text from the training corpus, e.g. `data.calibration_set(tokenizer)`.
    """
    layers = layers_of(model)
    sums = torch.zeros(len(layers), dtype=torch.float64)

    def hook(i: int):
        def record(module, args, kwargs, output):
            x = args[0] if args else kwargs["hidden_states"]
            y = output[0] if isinstance(output, tuple) else output
            sums[i] += F.cosine_similarity(x.double(), y.double(), dim=-1).sum().item()

        return record

    handles = [layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        model(input_ids.to(next(model.parameters()).device))
    finally:
        for handle in handles:
            handle.remove()
    return 1 - sums / input_ids.numel()


def shortgpt_layers(influence: torch.Tensor, num_layers: int) -> list[int]:
    """The `num_layers` layers with the highest Block Influence, in model order (ties keep the earlier layer)."""
    if not 0 < num_layers <= len(influence):
        raise ValueError(f"num_layers must be in 1..{len(influence)}, got {num_layers}.")
    ranked = sorted(range(len(influence)), key=lambda i: (-float(influence[i]), i))
    return sorted(ranked[:num_layers])


def shortgpt(teacher: PreTrainedModel, influence: torch.Tensor, num_layers: int) -> PreTrainedModel:
    """ShortGPT: the teacher with its lowest-influence layers removed down to `num_layers` (zero copy)."""
    return teacher_view(teacher, shortgpt_layers(influence, num_layers))


def laco_pruning(
    teacher: PreTrainedModel, num_layers: int, calibration: torch.Tensor, config: LaCoConfig | None = None
) -> PreTrainedModel:
    """LaCo: the teacher collapsed to `num_layers` layers by RDSC layer merges (laco.py), searched on `calibration`
    (token ids [sentences, tokens], e.g. `data.calibration_set(tokenizer, 5, 64)`). `model.boomerang` records
    the merged groups, the variant and how many merges were forced below the threshold (laco.py)."""
    result = laco(teacher, num_layers, calibration, config or LaCoConfig())
    result.model.boomerang = {
        "laco_groups": result.groups,
        "threshold_met": result.threshold_met,
        "laco_variant": result.variant,
        "forced_merges": result.forced_merges,
        "similarity": result.similarity,
    }
    return result.model
