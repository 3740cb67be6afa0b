"""Each loss term against a direct computation; chunking, padding and switching terms off."""

import pytest
import torch
import torch.nn.functional as F

from boomerang_lab.config.distill import LossConfig
from boomerang_lab.distill.losses import IGNORE, distill_loss
from boomerang_lab.models.plan import LayerPlan

B, S, H, V = 2, 7, 6, 11
PLAN = LayerPlan.paper(8)


def make_inputs(seed=0, pad=2):
    """Random student logits/states (leaf tensors), teacher states and head; the last `pad` tokens of row 1 are
    padding."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, S, V, generator=g, dtype=torch.float64).requires_grad_()
    student = [
        torch.randn(B, S, H, generator=g, dtype=torch.float64).requires_grad_()
        for _ in range(PLAN.num_student_layers + 1)
    ]
    teacher = [torch.randn(B, S, H, generator=g, dtype=torch.float64) for _ in range(PLAN.num_teacher_layers + 1)]
    head = torch.nn.Linear(H, V, dtype=torch.float64)
    mask = torch.ones(B, S, dtype=torch.long)
    if pad:
        mask[1, -pad:] = 0
    labels = torch.randint(0, V, (B, S), generator=g).masked_fill(mask == 0, IGNORE)
    return logits, student, teacher, head, labels, mask


def direct(logits, student, teacher, head, labels, mask, T):
    """The three terms written out plainly on full tensors."""
    real = mask.bool()
    pairs = real[:, :-1] & real[:, 1:]
    ce = F.cross_entropy(logits[:, :-1][pairs], labels[:, 1:][pairs])
    log_q = F.log_softmax(logits[real] / T, dim=-1)
    p = F.softmax(head(teacher[-1])[real] / T, dim=-1)
    kl = (p * (p.log() - log_q)).sum(-1).mean() * T * T
    cos = []
    for s, t in PLAN.alignment():
        x, y = student[s][real], teacher[t][real]
        cos.append((1 - (x * y).sum(-1) / (x.norm(dim=-1) * y.norm(dim=-1))).mean())
    return ce, kl, torch.stack(cos).mean()


@pytest.mark.parametrize("T, chunk", [(1.0, 2048), (2.0, 3), (0.5, 1)])
def test_each_term_and_gradient_match_direct_computation(T, chunk):
    config = LossConfig(ce_weight=0.7, kl_weight=0.3, temperature=T, cos_weight=2.0, chunk_tokens=chunk)
    logits, student, teacher, head, labels, mask = make_inputs()
    loss, terms = distill_loss(logits, student, teacher, head, labels, mask, PLAN.alignment(), config)
    ce, kl, cos = direct(logits, student, teacher, head, labels, mask, T)
    torch.testing.assert_close(terms["ce"], ce.detach())
    torch.testing.assert_close(terms["kl"], kl.detach())
    torch.testing.assert_close(terms["cos"], cos.detach())
    expected = 0.7 * ce + 0.3 * kl + 2.0 * cos
    torch.testing.assert_close(loss, expected)

    leaves = [logits, *student]
    got = torch.autograd.grad(loss, leaves)
    want = torch.autograd.grad(expected, leaves)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_padding_is_masked():
    config = LossConfig(chunk_tokens=4)
    logits, student, teacher, head, labels, mask = make_inputs()
    loss, _ = distill_loss(logits, student, teacher, head, labels, mask, PLAN.alignment(), config)
    grads = torch.autograd.grad(loss, [logits, *student])
    for g in grads:
        assert g[1, -2:].abs().max() == 0

    with torch.no_grad():  # anything at padded positions is irrelevant
        logits[1, -2:] += 5
        for h in [*student, *teacher]:
            h[1, -2:] = torch.randn(2, H, dtype=h.dtype)
    again, _ = distill_loss(logits, student, teacher, head, labels, mask, PLAN.alignment(), config)
    torch.testing.assert_close(again, loss)


def test_no_mask_means_every_token_counts():
    config = LossConfig()
    logits, student, teacher, head, labels, mask = make_inputs(pad=0)
    with_mask, _ = distill_loss(logits, student, teacher, head, labels, mask, PLAN.alignment(), config)
    without, _ = distill_loss(logits, student, teacher, head, labels, None, PLAN.alignment(), config)
    torch.testing.assert_close(with_mask, without)


@pytest.mark.parametrize(
    "weights",
    [
        dict(kl_weight=0, cos_weight=0),
        dict(cos_weight=0),
        dict(kl_weight=0),
        dict(ce_weight=0, kl_weight=0),
        dict(ce_weight=0),
    ],
)
def test_switching_terms_off(weights):
    config = LossConfig(**weights)
    logits, student, teacher, head, labels, mask = make_inputs()
    ce, kl, cos = direct(logits, student, teacher, head, labels, mask, 1.0)
    full = {"ce": ce, "kl": kl, "cos": cos}
    teacher_in = teacher if config.needs_teacher else None  # CE alone needs no teacher at all
    head_in = head if config.kl_weight else None
    loss, terms = distill_loss(logits, student, teacher_in, head_in, labels, mask, PLAN.alignment(), config)
    assert tuple(terms) == config.terms
    weight = {"ce": config.ce_weight, "kl": config.kl_weight, "cos": config.cos_weight}
    torch.testing.assert_close(loss, sum(weight[n] * full[n] for n in config.terms))
    for name in config.terms:
        torch.testing.assert_close(terms[name], full[name].detach())


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="at least one positive"):
        LossConfig(ce_weight=0, kl_weight=0, cos_weight=0)
    with pytest.raises(ValueError, match="temperature"):
        LossConfig(temperature=0)


def test_kl_without_teacher_is_a_clear_error():
    logits, student, teacher, head, labels, mask = make_inputs()
    with pytest.raises(ValueError, match="teacher"):
        distill_loss(logits, student, teacher, None, labels, mask, PLAN.alignment(), LossConfig(cos_weight=0))
