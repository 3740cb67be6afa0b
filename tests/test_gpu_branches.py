"""What a GPU run does differently, forced on the CPU: a bf16 teacher, bf16 autocast, accumulation, no packing.

The caller's teacher must come back from distill() exactly as it went in (values, dtype, device, every parameter and
buffer, its training flags), although the run used it in bf16 (issue 25: on a GPU it came back in bf16, so every
later direct student and random-init student of the same teacher started from bf16 weights). And every built-in
profile's recipe must train at tiny scale with its GPU settings.
"""

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file

from boomerang_lab.config.profiles import PROFILES, get
from boomerang_lab.distill.trainer import LOG_FILE, distill, teacher_on
from boomerang_lab.evaluate.direct import direct_student
from boomerang_lab.models.plan import LayerPlan
from boomerang_lab.models.student import init_student
from tiny import VOCAB, tiny_model


def snapshot(model) -> dict:
    """Every parameter and buffer (non-persistent ones included) with its dtype and device, and the module flags."""
    tensors = {f"param {n}": p.detach().clone() for n, p in model.named_parameters(remove_duplicate=False)}
    tensors |= {f"buffer {n}": b.clone() for n, b in model.named_buffers(remove_duplicate=False)}
    flags = {n: m.training for n, m in model.named_modules()}
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    return {"tensors": tensors, "training": flags, "requires_grad": grads}


def assert_unchanged(model, before: dict) -> None:
    after = snapshot(model)
    assert after["tensors"].keys() == before["tensors"].keys()
    changed = [
        name
        for name, t in before["tensors"].items()
        if after["tensors"][name].dtype != t.dtype
        or after["tensors"][name].device != t.device
        or not torch.equal(after["tensors"][name], t)
    ]
    assert not changed, f"{len(changed)} of {len(before['tensors'])} tensors changed: {changed[:5]}"
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    assert all(p.grad is None for p in model.parameters())


def token_rows(packing: bool, seq_len: int = 16, rows: int = 32) -> Dataset:
    ids = torch.randint(1, VOCAB, (rows, seq_len), generator=torch.Generator().manual_seed(0))
    if packing:
        return Dataset.from_dict({"input_ids": ids.tolist()})
    lengths = torch.randint(seq_len // 2, seq_len + 1, (rows,), generator=torch.Generator().manual_seed(1))
    mask = (torch.arange(seq_len) < lengths[:, None]).long()
    return Dataset.from_dict({"input_ids": ids.masked_fill(mask == 0, 0).tolist(), "attention_mask": mask.tolist()})


def test_teacher_comes_back_unchanged_from_a_bf16_teacher_run(tmp_path):
    """teacher_dtype=bfloat16 with the GPU profiles' settings (bf16 autocast, accumulation, local and global stages):
    the caller's float32 teacher keeps all its tensors bit-identical, in float32, on its device, in eval mode or not."""
    teacher = tiny_model("llama").train()  # a caller's model in training mode: its flags must come back too
    before = snapshot(teacher)
    plan = LayerPlan.from_kept([0, 3, 5, 7], 8)
    config = get(
        "kit",
        distill=dict(
            output_dir=str(tmp_path / "s"),
            teacher_dtype="bfloat16",
            seq_len=16,
            batch_size=2,
            grad_accum=2,
            max_steps=2,
            local_steps=2,
            save_steps=1,
            use_cpu=True,
        ),
    ).distill
    assert config.bf16 and config.freeze_embeddings
    out = distill(teacher, init_student(teacher, plan), plan, token_rows(True), config)
    assert (out / LOG_FILE).exists()
    assert_unchanged(teacher, before)


def test_teacher_on_copies_only_when_it_must():
    teacher = tiny_model("llama")
    assert teacher_on(teacher, "cpu", None) is teacher
    assert teacher_on(teacher, "cpu", torch.float32) is teacher
    placed = {}
    cast = teacher_on(teacher, "cpu", torch.bfloat16, placed)
    assert cast is not teacher and teacher_on(teacher, "cpu", torch.bfloat16, placed) is cast  # once per run
    assert {p.dtype for p in cast.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in teacher.parameters()} == {torch.float32}
    # the copy keeps the teacher's tied head and embeddings tied
    assert cast.lm_head.weight.data_ptr() == cast.model.embed_tokens.weight.data_ptr()


def test_a_bad_teacher_dtype_is_refused(tmp_path):
    with pytest.raises(ValueError, match="Unknown dtype 'bf15'"):
        get("smoke", distill=dict(output_dir=str(tmp_path / "s"), teacher_dtype="bf15"))


def test_direct_students_of_one_teacher_start_from_its_float32_weights(tmp_path):
    """study_figure4.py's loop: direct students distilled one after another from one teacher. With a bf16 teacher
    dtype, the second starts from the same float32 layers as the first (the teacher was cast under it before)."""
    teacher = tiny_model("llama")
    before = snapshot(teacher)
    plan = LayerPlan.from_kept([0, 3, 5, 7], 8)
    settings = dict(seq_len=16, batch_size=2, max_steps=1, local_steps=1, use_cpu=True, teacher_dtype="bfloat16")
    data = token_rows(True)
    for k, name in ((1, "a"), (2, "b")):
        out = direct_student(teacher, None, plan, k, "last", "quick", tmp_path / name, data=data, **settings)
        assert {v.dtype for v in load_file(out / "model.safetensors").values()} == {torch.float32}
    assert_unchanged(teacher, before)


@pytest.mark.parametrize("name", list(PROFILES))
def test_every_profile_recipe_trains_with_its_gpu_settings(tmp_path, name):
    """Each built-in profile's recipe (its loss, schedule, optimizer, frozen parts, stages) at tiny scale on the CPU,
    with what a GPU run would use where the CPU allows it: a bf16 teacher, bf16 autocast, 2 accumulated micro-steps,
    no packing (padded rows with an attention mask). It trains, and the caller's teacher is unchanged."""
    chosen = get(name)
    recipe = chosen.distill
    teacher = tiny_model("llama")
    before = snapshot(teacher)
    plan = chosen.layer_plan(8)
    student = init_student(teacher, plan)
    start = {k: v.clone() for k, v in student.state_dict().items()}
    config = get(
        name,
        distill=dict(
            output_dir=str(tmp_path / name),
            seq_len=16,
            batch_size=2,
            grad_accum=2,
            max_steps=2,
            local_steps=2 if recipe.local_steps else 0,
            save_steps=1,
            use_cpu=True,
            teacher_dtype="bfloat16",
            bf16=True,
            packing=False,
        ),
    ).distill
    out = distill(teacher, student, plan, token_rows(False), config)
    log = load_log(out)
    assert len(log) == 2 + (2 if recipe.local_steps else 0)
    assert log.loss.notna().all() and torch.isfinite(torch.tensor(log.loss.to_numpy())).all()
    trained = load_file(out / "model.safetensors")
    assert {v.dtype for v in trained.values()} == {torch.float32}  # float32 master weights
    assert any(not torch.equal(trained[k], start[k]) for k in trained)
    assert_unchanged(teacher, before)


def load_log(out):
    import pandas as pd

    return pd.read_csv(out / LOG_FILE)
