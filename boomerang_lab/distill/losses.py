"""The distillation objective: CE + kl_weight·T²·KL(teacher‖student) + cos_weight·mean(1 − cosine) over aligned
states."""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config.distill import LossConfig

IGNORE = -100
"""Label of a position with no target (transformers' convention)."""


def _at_least_fp32(x: Tensor) -> torch.dtype:
    """Loss arithmetic runs in float32, or float64 for float64 inputs."""
    return torch.promote_types(x.dtype, torch.float32)


def _chunk_terms(
    z: Tensor,
    target: Tensor,
    m: Tensor,
    teacher_logits: Tensor | None,
    ce_weight: float,
    kl_weight: float,
    T: float,
    n_ce: Tensor,
    n_kl: Tensor,
    need_grad: bool,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Sums of CE and T²·KL over one chunk of logits, and the weighted gradient of the mean loss w.r.t. the chunk.

    Written to make few passes over the (tokens, vocab) tensors: in place where possible, no division when T = 1.
    """
    ce = kl = z.new_zeros(())
    g = logp = None
    if ce_weight:
        valid = (target != IGNORE).to(z.dtype)
        index = target.clamp(min=0)[:, None]
        logp = z.log_softmax(-1)
        ce = -(logp.gather(-1, index).squeeze(-1) * valid).sum()
        if need_grad:  # d CE / dz = softmax(z) - onehot(target)
            w = (valid * ce_weight / n_ce)[:, None]
            g = logp.exp().mul_(w).scatter_add_(-1, index, -w)
    if kl_weight:
        logq = logp if logp is not None and T == 1 else (z if T == 1 else z / T).log_softmax(-1)
        logp_t = teacher_logits.to(z.dtype)
        logp_t = (logp_t if T == 1 else logp_t / T).log_softmax(-1)
        p_t = logp_t.exp()
        kl = T * T * ((p_t * (logp_t - logq)).sum(-1) * m).sum()
        if need_grad:  # d T²·KL / dz = T·(softmax(z/T) - p_teacher)
            kl_grad = logq.exp().sub_(p_t).mul_((m * kl_weight * T / n_kl)[:, None])
            g = kl_grad if g is None else g.add_(kl_grad)
    return ce, kl, g


@functools.cache
def _compiled_chunk_terms():
    return torch.compile(_chunk_terms, dynamic=True)


class _LogitLosses(torch.autograd.Function):
    """Weighted CE + T²·KL over chunks of tokens, returning (weighted sum, ce, kl).

    The gradient with respect to the logits is written during the forward pass, so no softmax is kept for backward
    and the teacher's logits exist one chunk at a time: memory is the student's logits plus one gradient of them.
    """

    @staticmethod
    def forward(
        ctx,
        logits: Tensor,
        targets: Tensor,
        mask: Tensor,
        teacher_final: Tensor | None,
        teacher_head: Callable[[Tensor], Tensor] | None,
        config: LossConfig,
    ):
        need_grad = ctx.needs_input_grad[0]
        grad = torch.empty_like(logits) if need_grad else None
        dtype = _at_least_fp32(logits)
        n_ce = (targets != IGNORE).sum().clamp(min=1).to(dtype)
        n_kl = mask.sum().clamp(min=1).to(dtype)
        ce = kl = logits.new_zeros((), dtype=dtype)
        terms = _compiled_chunk_terms() if config.compile else _chunk_terms
        for start in range(0, logits.shape[0], config.chunk_tokens):
            rows = slice(start, start + config.chunk_tokens)
            teacher_logits = teacher_head(teacher_final[rows]) if config.kl_weight else None
            ce_sum, kl_sum, g = terms(
                logits[rows].to(dtype),
                targets[rows],
                mask[rows],
                teacher_logits,
                config.ce_weight,
                config.kl_weight,
                config.temperature,
                n_ce,
                n_kl,
                need_grad,
            )
            ce, kl = ce + ce_sum, kl + kl_sum
            if need_grad:
                grad[rows] = g
        ce, kl = ce / n_ce, kl / n_kl
        ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(ce, kl)
        return config.ce_weight * ce + config.kl_weight * kl, ce, kl

    @staticmethod
    def backward(ctx, grad_loss: Tensor, *_):
        (grad,) = ctx.saved_tensors
        return grad.mul_(grad_loss.to(grad.dtype)), None, None, None, None, None


def logit_losses(
    logits: Tensor,
    labels: Tensor,
    mask: Tensor,
    teacher_final: Tensor | None,
    teacher_head: Callable[[Tensor], Tensor] | None,
    config: LossConfig,
) -> tuple[Tensor, Tensor, Tensor]:
    """(ce_weight·CE + kl_weight·T²·KL, CE, KL) on (batch, seq) logits; labels are unshifted, IGNORE = no target.

    The teacher's logits are `teacher_head(teacher_final)`, formed one chunk at a time. Backward runs once.
    """
    if config.kl_weight and (teacher_final is None or teacher_head is None):
        raise ValueError("The KL term needs the teacher's final hidden states and head.")
    targets = torch.full_like(labels, IGNORE)
    targets[:, :-1] = labels[:, 1:].masked_fill(mask[:, :-1] == 0, IGNORE)
    flat = teacher_final.flatten(0, 1) if config.kl_weight else None
    return _LogitLosses.apply(
        logits.flatten(0, 1), targets.flatten(), mask.flatten().to(_at_least_fp32(logits)), flat, teacher_head, config
    )


def cosine_loss(
    student_hidden: Sequence[Tensor],
    teacher_hidden: Sequence[Tensor | None],
    alignment: Sequence[tuple[int, int]],
    mask: Tensor,
) -> Tensor:
    """Mean over aligned (student, teacher) pairs of the token mean of 1 − cosine, padding masked."""
    mask = mask.to(_at_least_fp32(student_hidden[0]))
    n = mask.sum().clamp(min=1)
    terms = []
    for s, t in alignment:
        x = student_hidden[s]
        cos = F.cosine_similarity(x.to(_at_least_fp32(x)), teacher_hidden[t].to(_at_least_fp32(x)), dim=-1)
        terms.append(((1 - cos) * mask).sum() / n)
    return torch.stack(terms).mean()


def distill_loss(
    logits: Tensor,
    student_hidden: Sequence[Tensor] | None,
    teacher_hidden: Sequence[Tensor | None] | None,
    teacher_head: Callable[[Tensor], Tensor] | None,
    labels: Tensor,
    attention_mask: Tensor | None,
    alignment: Sequence[tuple[int, int]],
    config: LossConfig,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The total loss and each switched-on term (unweighted, detached) for logging.

    `teacher_hidden` is indexed like the teacher's `hidden_states` (entries not in `alignment` may be None; its
    last entry is the final normed state that the teacher's head reads).
    """
    mask = torch.ones_like(labels) if attention_mask is None else attention_mask
    terms: dict[str, Tensor] = {}
    loss = logits.new_zeros((), dtype=_at_least_fp32(logits))
    if config.ce_weight or config.kl_weight:
        final = teacher_hidden[-1] if config.kl_weight else None
        loss, ce, kl = logit_losses(logits, labels, mask, final, teacher_head, config)
        terms.update({"ce": ce, "kl": kl})
    if config.cos_weight:
        terms["cos"] = cosine_loss(student_hidden, teacher_hidden, alignment, mask)
        loss = loss + config.cos_weight * terms["cos"]
    return loss, {name: terms[name].detach() for name in config.terms}
