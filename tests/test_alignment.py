import pytest
import torch
import torch.nn.functional as F

from boomerang_lab import LayerPlan, init_student, load_model
from boomerang_lab.evaluate.alignment import layer_alignment, token_batch
from tiny import VOCAB, perturb, tiny_model


def test_a_student_keeping_every_layer_is_aligned_everywhere():
    teacher = tiny_model("llama")
    plan = LayerPlan.from_kept(range(8), 8)
    table = layer_alignment(teacher, init_student(teacher, plan), plan, torch.randint(0, VOCAB, (3, 16)))
    assert table.student_layer.tolist() == table.teacher_layer.tolist() == list(range(9))
    assert table.cosine.tolist() == pytest.approx([1.0] * 9, abs=1e-6)


def test_matches_a_direct_computation_with_padding_masked():
    teacher = tiny_model("qwen3")
    plan = LayerPlan.paper(8)
    student = perturb(init_student(teacher, plan))
    ids = torch.randint(0, VOCAB, (3, 12))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    table = layer_alignment(teacher, student, plan, ids, mask, batch_size=2)
    with torch.no_grad():
        t = teacher(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        s = student(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    for row, (si, ti) in zip(table.itertuples(), plan.alignment()):
        cos = F.cosine_similarity(s[si].double(), t[ti].double(), dim=-1)
        assert row.cosine == pytest.approx(float(cos[mask.bool()].mean()), rel=1e-6)
    assert (table.student_layer.iloc[-1], table.teacher_layer.iloc[-1]) == (len(plan.kept), 8)


def test_token_batch_reads_shipped_text():
    _, tokenizer = load_model("smollm2-tiny-random")
    ids = token_batch(tokenizer, num_sequences=3, seq_len=20)
    assert ids.shape == (3, 20)
    text = tokenizer.decode(ids[0])
    assert "Robert Boulter" in text  # the first article of wikitext-2 test
    with pytest.raises(ValueError, match="sequences of 10000 need"):
        token_batch(tokenizer, "corpus/pg11_alice_in_wonderland.txt", num_sequences=100, seq_len=10000)
