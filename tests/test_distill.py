"""Distillation end to end: smoke run to a loadable student, exact resume, and 2 processes = 1 process.

Run as a script (under torchrun) it is the worker of the 2-process test.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file
from transformers import TrainerCallback

from boomerang_lab.config.distill import LossConfig
from boomerang_lab.config.profiles import distill_config as profile
from boomerang_lab.data import data_file
from boomerang_lab.distill.trainer import LOG_FILE, _last_checkpoint, distill, run_name
from boomerang_lab.models import loading
from boomerang_lab.models.adapters import get_adapter
from boomerang_lab.models.loading import load_model, load_student
from boomerang_lab.models.plan import LayerPlan
from boomerang_lab.models.student import init_student
from boomerang_lab.study.cli import main
from tiny import VOCAB, tiny_model

TERMS = ["loss", "ce", "kl", "cos"]


def tiny_run(out: Path, batch_size: int = 4, steps: int = 6, callbacks=(), **overrides) -> Path:
    """Distil a tiny Llama (vocab 97) on fixed random token blocks with the smoke profile's recipe."""
    teacher = tiny_model("llama")
    plan = LayerPlan.from_kept([0, 3, 5, 7], 8)
    student = init_student(teacher, plan)
    ids = torch.randint(0, VOCAB, (64, 16), generator=torch.Generator().manual_seed(0))
    data = Dataset.from_dict({"input_ids": ids.tolist()})
    config = profile(
        "smoke",
        output_dir=str(out),
        batch_size=batch_size,
        max_steps=steps,
        save_steps=2,
        **{"use_cpu": True, **overrides},
    )
    return distill(teacher, student, plan, data, config, callbacks=callbacks)


class Interrupted(Exception):
    pass


class StepCounter(TrainerCallback):
    """The optimizer steps this process trained (a resumed run trains only the remaining ones)."""

    def __init__(self):
        self.steps = []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)


class InterruptAt(TrainerCallback):
    """Dies at the end of step `step`, like a killed job."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Interrupted


def test_smoke_profile_through_the_cli(tmp_path):
    out = tmp_path / "student"
    main(
        [
            "distill",
            "--profile",
            "smoke",
            "--out",
            str(out),
            "--max-steps",
            "3",
            "--freeze-embeddings",
            "--data",
            str(data_file("corpus/pg11_alice_in_wonderland.txt")),
        ]
    )

    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".lock") == ["student"]  # no leftover .partial
    model, tokenizer, plan = load_student(out)
    teacher, teacher_tokenizer = load_model("smollm2-tiny-random")
    assert plan == LayerPlan.paper(8) and len(tokenizer) == len(teacher_tokenizer)
    start = init_student(teacher, plan).state_dict()
    assert any(not torch.equal(v, start[k]) for k, v in model.state_dict().items())
    assert torch.equal(model.state_dict()["model.embed_tokens.weight"], start["model.embed_tokens.weight"])
    assert json.loads((out / "distill_config.json").read_text())["config"]["freeze_embeddings"] is True

    log = pd.read_csv(out / LOG_FILE)
    assert list(log.step) == [1, 2, 3] and list(log.tokens_seen) == [256, 512, 768]
    assert {"step", "loss", "ce", "kl", "cos", "lr", "grad_norm", "tokens_seen"} <= set(log.columns)
    assert (log.ce + 0.1 * log.kl + 2.0 * log.cos - log.loss).abs().max() < 1e-4


def test_interrupted_run_resumes_to_the_same_student(tmp_path, capsys):
    full = tiny_run(tmp_path / "full")
    with pytest.raises(Interrupted):
        tiny_run(tmp_path / "cut", callbacks=[InterruptAt(5)])
    assert not (tmp_path / "cut").exists()  # nothing that looks finished
    assert _last_checkpoint(tmp_path / "cut.partial" / "global").endswith("checkpoint-4")
    with pytest.raises(ValueError, match="other settings"):
        tiny_run(tmp_path / "cut", lr=1e-4)
    capsys.readouterr()
    counter = StepCounter()
    resumed = tiny_run(tmp_path / "cut", callbacks=[counter])

    assert counter.steps == [5, 6]  # only the steps after the last checkpoint were trained again
    assert "global stage: 6 steps, resumed at step 4" in capsys.readouterr().out

    assert not (tmp_path / "cut.partial").exists()
    a, b = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    pd.testing.assert_frame_equal(pd.read_csv(full / LOG_FILE), pd.read_csv(resumed / LOG_FILE))


def test_a_finished_student_is_reused_only_for_the_same_recipe(tmp_path):
    out = tiny_run(tmp_path / "s", steps=2)
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    name = run_name(out)
    assert tiny_run(out, steps=2) == out  # returned as it is, not trained again
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp and not (tmp_path / "s.partial").exists()
    with pytest.raises(ValueError, match=r"other settings.*'max_steps': \(2, 3\)"):
        tiny_run(out, steps=3)
    moved = tmp_path / "elsewhere" / "s"
    out.rename(tmp_path / "moved")
    moved.parent.mkdir()
    (tmp_path / "moved").rename(moved)
    assert run_name(moved) == name and name.startswith("s@")  # the name does not depend on the location
    assert run_name("org/some-hub-student") == "org/some-hub-student"  # not distilled here: the name as given
    (tmp_path / "junk").mkdir()
    with pytest.raises(ValueError, match="not a distilled student"):
        tiny_run(tmp_path / "junk")


def test_incomplete_checkpoints_are_not_resumed(tmp_path, capsys):
    assert _last_checkpoint(tmp_path / "none") is None
    with pytest.raises(Interrupted):
        tiny_run(tmp_path / "cut", callbacks=[InterruptAt(5)])
    folder = tmp_path / "cut.partial" / "global"
    assert sorted(p.name for p in folder.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    (folder / "checkpoint-4" / "trainer_state.json").unlink()  # killed while saving: no trainer state yet
    assert _last_checkpoint(folder).endswith("checkpoint-2")
    capsys.readouterr()
    counter = StepCounter()
    tiny_run(tmp_path / "cut", callbacks=[counter])
    assert counter.steps == [3, 4, 5, 6]  # from the complete checkpoint-2, not the damaged checkpoint-4
    assert "global stage: 6 steps, resumed at step 2" in capsys.readouterr().out


def test_gradient_accumulation_equals_one_big_batch(tmp_path):
    """Micro-batches of 2 sequences with 4 accumulation steps train the student that one batch of 8 trains, and log
    the same terms: each micro-batch loss is scaled by 1/4 and the logged terms are averaged over the micro-batches.
    float32 on the CPU; the tolerance allows only the summation order (4 partial gradients vs one)."""
    one = tiny_run(tmp_path / "one", batch_size=8, steps=3)
    accumulated = tiny_run(tmp_path / "accumulated", batch_size=2, steps=3, grad_accum=4)
    a, b = pd.read_csv(one / LOG_FILE), pd.read_csv(accumulated / LOG_FILE)
    assert list(b.step) == [1, 2, 3] and list(b.tokens_seen) == list(a.tokens_seen) == [128, 256, 384]
    for column in [*TERMS, "lr", "grad_norm"]:
        assert b[column].to_numpy() == pytest.approx(a[column].to_numpy(), rel=1e-5), column
    x, y = load_file(one / "model.safetensors"), load_file(accumulated / "model.safetensors")
    start = init_student(tiny_model("llama"), LayerPlan.from_kept([0, 3, 5, 7], 8)).state_dict()
    assert any(not torch.equal(x[k], start[k]) for k in x)  # it trained
    for name in x:
        torch.testing.assert_close(y[name], x[name], rtol=1e-5, atol=1e-6)


class DtypeSeen(TrainerCallback):
    """Records the dtype of the student's logits in the first training forward (autocast shows there)."""

    def __init__(self):
        self.dtypes = set()

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        model.lm_head.register_forward_hook(lambda module, inputs, output: self.dtypes.add(output.dtype))


def test_bf16_distillation_trains_resumes_and_repeats(tmp_path, capsys, monkeypatch):
    """bf16=True (the quick, kit and paper recipes) where the device computes bf16 natively (forced here, so that the
    test runs on any CPU): the student runs under bf16 autocast with float32 weights, the loss is finite and falls,
    and an interrupted run resumes to exactly its uninterrupted rerun."""
    monkeypatch.setattr(loading, "native_bf16", lambda device="cpu": True)
    seen = DtypeSeen()
    full = tiny_run(tmp_path / "full", bf16=True, callbacks=[seen])
    assert seen.dtypes == {torch.bfloat16}
    weights = load_file(full / "model.safetensors")
    assert {v.dtype for v in weights.values()} == {torch.float32}  # fp32 master weights
    start = init_student(tiny_model("llama"), LayerPlan.from_kept([0, 3, 5, 7], 8)).state_dict()
    assert any(not torch.equal(v, start[k]) for k, v in weights.items())
    log = pd.read_csv(full / LOG_FILE)
    assert log[TERMS].notna().all().all() and log.loss.iloc[-1] < log.loss.iloc[0]

    with pytest.raises(Interrupted):
        tiny_run(tmp_path / "cut", bf16=True, callbacks=[InterruptAt(3)])
    capsys.readouterr()
    counter = StepCounter()
    resumed = tiny_run(tmp_path / "cut", bf16=True, callbacks=[counter])
    assert counter.steps == [3, 4, 5, 6] and "resumed at step 2" in capsys.readouterr().out
    again = load_file(resumed / "model.safetensors")
    assert weights.keys() == again.keys() and all(torch.equal(weights[k], again[k]) for k in weights)
    pd.testing.assert_frame_equal(log, pd.read_csv(resumed / LOG_FILE))


def test_bf16_falls_back_to_float32_where_the_device_emulates_it(tmp_path, capsys, monkeypatch):
    """On a CPU without native bf16 (AVX2 only: a bf16 matmul is emulated, tens of times slower), bf16=True trains in
    float32 and says so once per stage."""
    monkeypatch.setattr(loading, "native_bf16", lambda device="cpu": False)
    monkeypatch.setattr(loading, "_NOTICED", set())
    seen = DtypeSeen()
    tiny_run(tmp_path / "s", steps=2, bf16=True, callbacks=[seen])
    assert seen.dtypes == {torch.float32}
    out = capsys.readouterr().out
    assert out.count("has no native bf16") == 1 and "running in float32" in out
    assert loading.autocast_for("bfloat16", "cpu", "x") is None and loading.autocast_for(None, "cpu") is None
    monkeypatch.setattr(loading, "native_bf16", lambda device="cpu": True)
    assert loading.autocast_for("bfloat16", "cpu", "y") == "bfloat16"


def test_frozen_embeddings_and_switched_off_terms(tmp_path):
    out = tiny_run(tmp_path / "s", steps=2, freeze_embeddings=True, loss=dict(kl_weight=0.0, cos_weight=0.0))
    start = init_student(tiny_model("llama"), LayerPlan.from_kept([0, 3, 5, 7], 8)).state_dict()
    trained = load_file(out / "model.safetensors")
    embed = get_adapter(tiny_model("llama")).embeddings[0] + ".weight"
    assert torch.equal(trained[embed], start[embed])  # tied: the head too
    assert not torch.equal(trained["model.layers.1.mlp.up_proj.weight"], start["model.layers.1.mlp.up_proj.weight"])
    log = pd.read_csv(out / LOG_FILE)
    assert log.kl.isna().all() and log.cos.isna().all()
    assert (log.loss - log.ce).abs().max() < 1e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process(tmp_path):
    one = tiny_run(tmp_path / "one", batch_size=4, steps=3)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(_free_port()),
        __file__,
        str(tmp_path / "two"),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]

    a, b = pd.read_csv(one / LOG_FILE), pd.read_csv(tmp_path / "two" / LOG_FILE)
    assert list(b.tokens_seen) == list(a.tokens_seen)  # the same global batch
    for column in [*TERMS, "lr", "grad_norm"]:
        assert b[column].to_numpy() == pytest.approx(a[column].to_numpy(), rel=1e-4), column


def test_compiled_run_matches_eager(tmp_path):
    """compile=True (regional compilation of student and teacher) with a compiled loss trains the same student."""
    from torch._dynamo.utils import counters

    eager = tiny_run(tmp_path / "eager", steps=2)
    graphs = counters["stats"]["unique_graphs"]
    fast = tiny_run(tmp_path / "compiled", steps=2, compile=True, loss=LossConfig(compile=True))
    assert counters["stats"]["unique_graphs"] > graphs  # it did compile
    a, b = pd.read_csv(eager / LOG_FILE), pd.read_csv(fast / LOG_FILE)
    for column in [*TERMS, "grad_norm"]:
        assert b[column].to_numpy() == pytest.approx(a[column].to_numpy(), rel=1e-4), column
    x, y = load_file(eager / "model.safetensors"), load_file(fast / "model.safetensors")
    assert x.keys() == y.keys()  # saved without the compiled wrappers' names
    for name in x:
        torch.testing.assert_close(y[name], x[name], rtol=1e-4, atol=1e-5)


def test_fsdp_that_accelerate_ignores_is_reported(tmp_path, monkeypatch):
    """accelerate runs `--use_fsdp` on CPUs as plain data parallelism; the user is told, not left to find out."""
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.warns(UserWarning, match="FSDP was asked for.*whole student and teacher"):
        tiny_run(tmp_path / "student", steps=1)


if __name__ == "__main__":  # the 2-process worker: 2 sequences per process
    # Like `boomerang distill` without --cpu (use_cpu=False) where there is no GPU; with one, both stay on the CPU.
    tiny_run(Path(sys.argv[1]), batch_size=2, steps=3, use_cpu=torch.accelerator.is_available())
