"""Blockwise local distillation (BLD, as in NVIDIA's Puzzle): a warm start for the student.

Each student layer j that stands for a multi-layer teacher block learns, alone and in the teacher's own context, to
map the teacher's hidden state at the start of its block to the teacher's state at the block's end. Every layer
trains in parallel from a dense signal, no LM head is run for the student, and gradients reach only student layers
(their inputs are the teacher's states, detached). It targets exactly what a family member needs: a student layer
that can stand in for its block between teacher layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from ..config.distill import LOCAL_LOSSES  # nmse: |y − t|² / |t|² per token; cos: 1 − cos(y, t)
from ..models.adapters import layers_of
from ..models.plan import LayerPlan


@dataclass
class BlockStates:
    """What the teacher computes for one batch that the local objective reads, per trained student layer."""

    inputs: list[Tensor]  # the teacher's hidden state entering each trained student layer's block
    targets: list[Tensor]  # the teacher's hidden state leaving that block
    calls: list[tuple[tuple, dict]]  # the other arguments the teacher's backbone gave the block's first layer


def trained_layers(plan: LayerPlan) -> list[int]:
    """The student layers the local stage trains: those standing for more than one teacher layer.

    A single-layer block's student layer already equals its block at initialisation (its local loss is zero)."""
    return list(plan.multi_layer)


@torch.no_grad()
def teacher_block_states(
    teacher: PreTrainedModel,
    plan: LayerPlan,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    layers: Sequence[int] | None = None,
) -> BlockStates:
    """Run the teacher once, recording each block's input, output and call arguments (no copies of weights)."""
    layers = trained_layers(plan) if layers is None else list(layers)
    t_layers = layers_of(teacher)
    starts = {plan.kept[j] for j in layers}
    ends = {plan.block(j).stop for j in layers}
    seen: dict[int, Tensor] = {}
    calls: dict[int, tuple[tuple, dict]] = {}

    def pre(i: int):
        def record(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            seen[i] = hidden.detach()
            if i in starts:
                calls[i] = (tuple(args[1:]), {k: v for k, v in kwargs.items() if k != "hidden_states"})

        return record

    def post(module, args, kwargs, output):
        seen[len(t_layers)] = (output[0] if isinstance(output, tuple) else output).detach()

    watched = sorted(starts | {e for e in ends if e < len(t_layers)})
    handles = [t_layers[i].register_forward_pre_hook(pre(i), with_kwargs=True) for i in watched]
    if len(t_layers) in ends:
        handles.append(t_layers[-1].register_forward_hook(post, with_kwargs=True))
    backbone = teacher.base_model
    try:
        masked = {} if attention_mask is None else {"attention_mask": attention_mask}
        # The backbone only: the head never runs.
        backbone(input_ids=input_ids, use_cache=False, **masked)
    finally:
        for handle in handles:
            handle.remove()
    return BlockStates(
        [seen[plan.kept[j]] for j in layers],
        [seen[plan.block(j).stop] for j in layers],
        [calls[plan.kept[j]] for j in layers],
    )


def local_loss(
    student: PreTrainedModel,
    plan: LayerPlan,
    states: BlockStates,
    mask: Tensor | None = None,
    kind: str = "nmse",
    layers: Sequence[int] | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Mean over trained layers of the token-mean local loss, and (detached) the mean nmse and 1 − cos for logging."""
    if kind not in LOCAL_LOSSES:
        raise ValueError(f"Unknown local loss {kind!r}; use one of {', '.join(LOCAL_LOSSES)}.")
    layers = trained_layers(plan) if layers is None else list(layers)
    if not layers:
        raise ValueError(f"{plan} has no multi-layer block: the local stage has nothing to train.")
    s_layers = layers_of(student)
    losses, nmse_terms, cos_terms = [], [], []
    for j, x, target, (args, kwargs) in zip(layers, states.inputs, states.targets, states.calls):
        y = s_layers[j](x, *args, **kwargs)
        y = (y[0] if isinstance(y, tuple) else y).float()
        t = target.float()
        weights = torch.ones(y.shape[:-1], device=y.device) if mask is None else mask.to(y.dtype)
        n = weights.sum().clamp(min=1)
        nmse = ((y - t).pow(2).sum(-1) / t.pow(2).sum(-1).clamp(min=1e-12) * weights).sum() / n
        cos = ((1 - torch.nn.functional.cosine_similarity(y, t, dim=-1)) * weights).sum() / n
        losses.append(nmse if kind == "nmse" else cos)
        nmse_terms.append(nmse.detach())
        cos_terms.append(cos.detach())
    return torch.stack(losses).mean(), {
        "local_nmse": torch.stack(nmse_terms).mean(),
        "local_cos": torch.stack(cos_terms).mean(),
    }


def only_train(student: nn.Module, plan: LayerPlan, layers: Sequence[int] | None = None) -> dict[str, bool]:
    """Freeze every student parameter except those of `layers` (default: the trained layers); return the old flags."""
    layers = trained_layers(plan) if layers is None else list(layers)
    before = {name: p.requires_grad for name, p in student.named_parameters()}
    student.requires_grad_(False)
    s_layers = layers_of(student)
    for j in layers:
        s_layers[j].requires_grad_(True)
    return before


def restore_grad(student: nn.Module, flags: dict[str, bool]) -> None:
    for name, p in student.named_parameters():
        p.requires_grad_(flags.get(name, True))


@torch.no_grad()
def block_errors(
    teacher: PreTrainedModel,
    student: PreTrainedModel,
    plan: LayerPlan,
    input_ids: Tensor,
    batch_size: int = 8,
    kind: str = "nmse",
) -> dict[int, float]:
    """Each multi-layer student layer's local error in the teacher's context (mean over `input_ids`)."""
    layers = trained_layers(plan)
    sums = torch.zeros(len(layers), dtype=torch.float64)
    for ids in input_ids.split(batch_size):
        states = teacher_block_states(teacher, plan, ids.to(teacher.device))
        for i, j in enumerate(layers):
            _, terms = local_loss(
                student,
                plan,
                BlockStates([states.inputs[i]], [states.targets[i]], [states.calls[i]]),
                kind=kind,
                layers=[j],
            )
            sums[i] += terms["local_nmse" if kind == "nmse" else "local_cos"].item() * len(ids)
    return {j: float(s) / len(input_ids) for j, s in zip(layers, sums)}
