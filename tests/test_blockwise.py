"""The local (blockwise) stage: its loss against a direct computation, where its gradients go, and staged resume."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file
from transformers import TrainerCallback

from boomerang_lab.config.distill import DistillConfig
from boomerang_lab.config.profiles import distill_config as profile
from boomerang_lab.distill.local import block_errors, local_loss, only_train, restore_grad, teacher_block_states
from boomerang_lab.distill.trainer import LOG_FILE, distill
from boomerang_lab.models.adapters import get_adapter, layers_of
from boomerang_lab.models.plan import LayerPlan
from boomerang_lab.models.student import init_student

sys.path.insert(0, str(Path(__file__).parent))
from tiny import VOCAB, tiny_model  # noqa: E402

# The last block [5, 8) is multi-layer, so the target read after the teacher's last layer is covered too.
PLAN = LayerPlan.from_kept([0, 2, 3, 5], 8)


def direct_states(teacher, ids):
    """Every teacher layer's input and output, recorded by plain forward hooks (no blockwise code)."""
    inputs, outputs = {}, {}
    hooks = []
    for i, layer in enumerate(layers_of(teacher)):
        hooks.append(
            layer.register_forward_pre_hook(
                lambda m, a, k, i=i: inputs.__setitem__(i, (a[0] if a else k["hidden_states"]).clone()),
                with_kwargs=True,
            )
        )
        hooks.append(
            layer.register_forward_hook(
                lambda m, a, k, o, i=i: outputs.__setitem__(i, (o[0] if isinstance(o, tuple) else o).clone()),
                with_kwargs=True,
            )
        )
    with torch.no_grad():
        teacher(ids, use_cache=False)
    for h in hooks:
        h.remove()
    return inputs, outputs


def direct_token_terms(teacher, student, plan, ids):
    """Per (trained layer, sequence, token): nmse and 1 - cos of each multi-layer student layer against the end of its
    block, computed without blockwise code. Each student layer runs in a member of the family whose other blocks are
    the teacher's: its output there is the student layer's output in the teacher's context."""
    from boomerang_lab.family.members import Family

    family = Family(teacher, student, plan)
    t_in, t_out = direct_states(teacher, ids)
    nmse, cos = [], []
    for j in plan.multi_layer:
        member = family.build(order=[[b for b in range(plan.num_student_layers) if b != j]])
        _, m_out = direct_states(member, ids)
        y = m_out[plan.kept[j]]  # the student layer sits where its block starts
        stop = plan.block(j).stop
        t = t_in[stop] if stop < plan.num_teacher_layers else t_out[stop - 1]
        nmse.append((y - t).pow(2).sum(-1) / t.pow(2).sum(-1))
        cos.append(1 - torch.nn.functional.cosine_similarity(y, t, dim=-1))
    return torch.stack(nmse), torch.stack(cos)


def unpadded_token_terms(teacher, student, plan, ids, mask):
    """`direct_token_terms` of each sequence cut to its real tokens (right padding dropped), tokens concatenated."""
    rows = [direct_token_terms(teacher, student, plan, x[m.bool()][None]) for x, m in zip(ids, mask)]
    return torch.cat([r[0] for r in rows], dim=-1), torch.cat([r[1] for r in rows], dim=-1)


def moved_student(teacher, plan=PLAN):
    student = init_student(teacher, plan)
    torch.manual_seed(1)
    with torch.no_grad():  # move the student's layers away from the teacher's (embeddings stay the teacher's)
        for p in layers_of(student).parameters():
            p.add_(0.05 * torch.randn_like(p))
    return student


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gpt_neox", "gpt2"])
def test_local_loss_equals_a_direct_computation(arch):
    teacher = tiny_model(arch)
    student = moved_student(teacher)
    ids = torch.randint(1, VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
    nmse, cos = direct_token_terms(teacher, student, PLAN, ids)
    states = teacher_block_states(teacher, PLAN, ids)
    for kind, expected in (("nmse", nmse), ("cos", cos)):
        loss, terms = local_loss(student, PLAN, states, kind=kind)
        torch.testing.assert_close(loss, expected.mean(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(terms["local_nmse"], nmse.mean(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(terms["local_cos"], cos.mean(), rtol=1e-5, atol=1e-6)

    # Right padding (the packing=False layout): the padded positions count for nothing, so the masked loss is the
    # token mean over each sequence's real tokens alone, computed without the padding.
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    padded = ids.masked_fill(mask == 0, 0)  # EOS as the padding token
    nmse, cos = unpadded_token_terms(teacher, student, PLAN, padded, mask)
    states = teacher_block_states(teacher, PLAN, padded, mask)
    direct_in, _ = direct_states(teacher, padded[1:, :7])  # the teacher's states at the real tokens: unpadded ones
    start = PLAN.kept[PLAN.multi_layer[-1]]
    torch.testing.assert_close(states.inputs[-1][1, :7], direct_in[start][0], rtol=1e-5, atol=1e-6)
    for kind, expected in (("nmse", nmse), ("cos", cos)):
        loss, terms = local_loss(student, PLAN, states, mask, kind=kind)
        torch.testing.assert_close(loss, expected.mean(), rtol=1e-5, atol=1e-6)
    assert (local_loss(student, PLAN, states, kind="nmse")[0] - nmse.mean()).abs() > 1e-4  # padding would count


def test_local_gradients_reach_only_the_trained_student_layers():
    teacher = tiny_model("llama")
    student = init_student(teacher, PLAN)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    flags = only_train(student, PLAN)
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
    loss, _ = local_loss(student, PLAN, teacher_block_states(teacher, PLAN, ids))
    loss.backward()

    assert all(p.grad is None for p in teacher.parameters())
    s_layers = layers_of(student)
    for j, layer in enumerate(s_layers):
        grads = [p.grad for p in layer.parameters()]
        if j in PLAN.multi_layer:
            assert all(g is not None and g.abs().sum() > 0 for g in grads), j
        else:
            assert all(g is None for g in grads), j
    adapter = get_adapter(student)
    for path in (*adapter.embeddings, adapter.head, adapter.final_norm):
        assert all(p.grad is None for p in student.get_submodule(path).parameters()), path
    restore_grad(student, flags)
    assert all(p.requires_grad for p in student.parameters())


def test_a_single_layer_block_has_no_local_error_at_initialisation():
    teacher = tiny_model("llama")
    plan = LayerPlan.from_kept([0, 2, 3, 5], 8)
    student = init_student(teacher, plan)
    ids = torch.randint(0, VOCAB, (4, 12), generator=torch.Generator().manual_seed(0))
    errors = block_errors(teacher, student, plan, ids, batch_size=2)
    assert sorted(errors) == plan.multi_layer and all(e > 0 for e in errors.values())
    single = teacher_block_states(teacher, plan, ids, layers=[1])  # student layer 1 = teacher layer 2, block [2, 3)
    assert local_loss(student, plan, single, layers=[1])[0].item() < 1e-10


# --- the stages in distill() ----------------------------------------------------------------------------------------
def staged_run(out: Path, callbacks=(), progress: bool = False, **overrides) -> Path:
    teacher = tiny_model("llama")
    student = init_student(teacher, PLAN)
    ids = torch.randint(0, VOCAB, (64, 16), generator=torch.Generator().manual_seed(0))
    data = Dataset.from_dict({"input_ids": ids.tolist()})
    settings = {"batch_size": 4, "local_steps": 4, "max_steps": 4, "save_steps": 2, "use_cpu": True, **overrides}
    config = profile("smoke", output_dir=str(out), **settings)
    return distill(teacher, student, PLAN, data, config, callbacks=callbacks, progress=progress)


def test_the_local_stage_then_the_global_stage(tmp_path, capsys):
    out = staged_run(tmp_path / "s")
    log = pd.read_csv(out / LOG_FILE)
    assert list(log.stage) == ["local"] * 4 + ["global"] * 4 and list(log.step) == [1, 2, 3, 4] * 2
    local = log[log.stage == "local"]
    assert local.local_nmse.notna().all() and local.ce.isna().all()
    assert (local.loss - local.local_nmse).abs().max() < 1e-5
    assert log[log.stage == "global"].ce.notna().all()
    # The local stage moved only the multi-layer student layers.
    teacher = tiny_model("llama")
    start = init_student(teacher, PLAN)
    only_local = staged_run(tmp_path / "local_only", max_steps=0)
    trained = load_file(only_local / "model.safetensors")
    for name, value in start.state_dict().items():
        if name not in trained:
            continue  # the tied head
        layer = int(name.split(".")[2]) if name.startswith("model.layers.") else None
        changed = not torch.equal(value, trained[name])
        assert changed == (layer in PLAN.multi_layer), name


def test_the_local_stage_with_padding_equals_a_direct_computation(tmp_path):
    """packing=False rows (right-padded with EOS, an attention mask) in the local stage: the first step's logged
    terms are the token means over the real tokens of the batch, computed on each sequence without its padding."""
    teacher = tiny_model("llama")
    student = moved_student(teacher)
    ids = torch.randint(1, VOCAB, (4, 16), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    for row, length in enumerate([16, 9, 5, 12]):
        mask[row, length:] = 0
    ids = ids.masked_fill(mask == 0, 0)
    nmse, cos = unpadded_token_terms(teacher, student, PLAN, ids, mask)
    data = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": mask.tolist()})
    # One batch holds the whole data set, so step 1 sees every sequence (in some order: the token mean ignores it).
    config = profile(
        "smoke", output_dir=str(tmp_path / "s"), packing=False, batch_size=4, local_steps=1, max_steps=0, use_cpu=True
    )
    out = distill(teacher, student, PLAN, data, config, progress=False)
    log = pd.read_csv(out / LOG_FILE)
    assert list(log.stage) == ["local"] and list(log.tokens_seen) == [64]
    assert log.local_nmse[0] == pytest.approx(nmse.mean().item(), rel=1e-5)
    assert log.local_cos[0] == pytest.approx(cos.mean().item(), rel=1e-5)
    assert log.loss[0] == pytest.approx(log.local_nmse[0], rel=1e-6)


class KillAt(TrainerCallback):
    """kill -9 of the whole process at the end of a step of one stage (no cleanup of any kind)."""

    def __init__(self, stage: str, step: int):
        self.stage, self.step = stage, step

    def on_step_end(self, args, state, control, **kwargs):
        if Path(args.output_dir).name == self.stage and state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class StageSteps(TrainerCallback):
    """The optimizer steps trained in this process, per stage."""

    def __init__(self):
        self.steps = {"local": [], "global": []}

    def on_step_end(self, args, state, control, **kwargs):
        self.steps[Path(args.output_dir).name].append(state.global_step)


# Killed at step 3 with checkpoints every 2 steps: the rerun trains steps 3 and 4 of that stage, and all 4 of a later
# one; a stage that finished before the kill is loaded, not trained again.
RESUMED = {
    ("local", 3): ({"local": [3, 4], "global": [1, 2, 3, 4]}, "local stage: 4 steps, resumed at step 2"),
    ("global", 3): ({"local": [], "global": [3, 4]}, "global stage: 4 steps, resumed at step 2"),
    ("global", 0): ({"local": [], "global": [1, 2, 3, 4]}, "local stage: finished earlier, loaded from"),
}


@pytest.mark.parametrize("stage, step", list(RESUMED))
def test_each_stage_resumes_after_kill_9_to_the_same_student(tmp_path, capsys, stage, step):
    full = staged_run(tmp_path / "full")
    if step:  # killed inside the stage, after a checkpoint (save_steps=2)
        code = f"from test_blockwise import *; staged_run(Path({str(tmp_path / 'cut')!r}), [KillAt({stage!r}, {step})])"
    else:  # killed right after the local stage finished, before the global stage saved anything
        code = (
            f"from test_blockwise import *; from boomerang_lab.distill import trainer as d; "
            f"d.DistillTrainer.train = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL); "
            f"staged_run(Path({str(tmp_path / 'cut')!r}))"
        )
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert not (tmp_path / "cut").exists() and (tmp_path / "cut.partial").exists()
    capsys.readouterr()
    counter = StageSteps()
    resumed = staged_run(tmp_path / "cut", [counter], progress=True)
    steps, message = RESUMED[stage, step]
    assert counter.steps == steps and message in capsys.readouterr().out
    a, b = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    pd.testing.assert_frame_equal(pd.read_csv(full / LOG_FILE), pd.read_csv(resumed / LOG_FILE))


def test_bad_stage_settings_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="at least one positive"):
        DistillConfig(max_steps=0, local_steps=0)
    with pytest.raises(ValueError, match="local_steps"):
        DistillConfig(local_steps=-1)
    with pytest.raises(ValueError, match="local_loss must be one of nmse, cos"):
        DistillConfig(local_loss="mse")
    with pytest.raises(ValueError, match="no multi-layer block"):
        teacher = tiny_model("llama")
        plan = LayerPlan.from_kept(range(8), 8)
        ids = torch.randint(0, VOCAB, (8, 16), generator=torch.Generator().manual_seed(0))
        distill(
            teacher,
            init_student(teacher, plan),
            plan,
            Dataset.from_dict({"input_ids": ids.tolist()}),
            profile("smoke", output_dir=str(tmp_path / "x"), local_steps=2, use_cpu=True),
        )
    with pytest.raises(ValueError, match="The plan keeps 4 layers, but the student has 3"):
        teacher = tiny_model("llama")
        ids = torch.randint(0, VOCAB, (8, 16), generator=torch.Generator().manual_seed(0))
        distill(
            teacher,
            init_student(teacher, LayerPlan.from_kept([0, 3, 5], 8)),
            PLAN,
            Dataset.from_dict({"input_ids": ids.tolist()}),
            profile("smoke", output_dir=str(tmp_path / "y")),
        )


def test_the_local_order_patches_the_worst_fitting_blocks_first():
    from boomerang_lab.family.members import Family
    from boomerang_lab.family.search import local_order

    teacher = tiny_model("llama")
    student = init_student(teacher, PLAN)
    with torch.no_grad():
        for p in layers_of(student)[2].parameters():  # student layer 2 (block [3, 5)) fits worst
            p.add_(0.2 * torch.randn_like(p))
    family = Family(teacher, student, PLAN)
    ids = torch.randint(0, VOCAB, (4, 12), generator=torch.Generator().manual_seed(0))
    errors = block_errors(teacher, student, PLAN, ids)
    order = local_order(family, ids)
    assert order.name == "local" and order.steps[0] == (2,)
    assert [s[0] for s in order.steps] == sorted(errors, key=lambda j: -errors[j])
    assert sorted(j for s in order.steps for j in s) == list(range(PLAN.num_student_layers))
    with pytest.raises(ValueError, match="local order's calibration needs the teacher's tokenizer"):
        family.order("local")


def test_the_cli_runs_the_local_stage(tmp_path):
    from boomerang_lab.data import data_file
    from boomerang_lab.study.cli import main

    out = tmp_path / "student"
    main(["distill", "--profile", "smoke", "--out", str(out), "--local-steps", "2", "--max-steps", "2",
          "--data", str(data_file("corpus/pg11_alice_in_wonderland.txt"))])  # fmt: skip
    log = pd.read_csv(out / LOG_FILE)
    assert list(log.stage) == ["local", "local", "global", "global"]
    with pytest.raises(SystemExit, match="local_steps"):
        main(["distill", "--profile", "smoke", "--out", str(tmp_path / "bad"), "--local-steps", "-1"])
