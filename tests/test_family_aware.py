"""The family-aware global stage (distill/family_aware.py): its members are the family's, the teacher stays frozen,
its draws repeat after a resume, under gradient accumulation and across processes.

Run as a script (under torchrun) it is the worker of the 2-process test.
"""

import math
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
from transformers import TrainerCallback, TrainingArguments, default_data_collator

from boomerang_lab.config.profiles import distill_config as profile
from boomerang_lab.distill.family_aware import FamilyAwareConfig, draw_members, member_alignment
from boomerang_lab.distill.trainer import LOG_FILE, DistillTrainer, distill
from boomerang_lab.family.members import Family, member_builder
from boomerang_lab.models.adapters import layers_of
from boomerang_lab.models.orders import Order
from boomerang_lab.models.plan import LayerPlan
from boomerang_lab.models.student import init_student
from tiny import VOCAB, perturb, tiny_model

KEPT = [0, 3, 5, 7]  # blocks of 3, 2, 2 and 1 teacher layers: K = 3, members of sizes 1 and 2 are drawn
AWARE = {"members_per_step": 2, "member_orders": ["random", "last", "first"]}


def tiny_data() -> Dataset:
    ids = torch.randint(0, VOCAB, (64, 16), generator=torch.Generator().manual_seed(0))
    return Dataset.from_dict({"input_ids": ids.tolist()})


def tiny_run(out: Path, batch_size: int = 4, steps: int = 6, callbacks=(), teacher=None, **overrides) -> Path:
    """Distil a tiny Llama with the smoke recipe and the family-aware stage (2 members per step)."""
    teacher = tiny_model("llama") if teacher is None else teacher
    plan = LayerPlan.from_kept(KEPT, 8)
    student = init_student(teacher, plan)
    config = profile(
        "smoke",
        output_dir=str(out),
        batch_size=batch_size,
        max_steps=steps,
        save_steps=2,
        family_aware=AWARE,
        **{"use_cpu": True, **overrides},
    )
    return distill(teacher, student, plan, tiny_data(), config, callbacks=callbacks, members=member_builder)


def tiny_trainer(tmp_path, members: int = 2, orders=("random", "last", "first")):
    """A family-aware DistillTrainer on a perturbed tiny student (student and teacher differ everywhere)."""
    teacher = tiny_model("llama")
    plan = LayerPlan.from_kept(KEPT, 8)
    student = perturb(init_student(teacher, plan))
    args = TrainingArguments(output_dir=str(tmp_path / "t"), max_steps=1, use_cpu=True, report_to="none")
    trainer = DistillTrainer(
        model=student,
        args=args,
        train_dataset=tiny_data(),
        data_collator=default_data_collator,
        teacher=teacher,
        plan=plan,
        loss_config=profile("smoke").loss,
        family_aware=FamilyAwareConfig(members, tuple(orders)),
        members=member_builder,
        seed=0,
    )
    return trainer, teacher, student, plan


def batch(n: int = 4) -> dict:
    return {"input_ids": torch.randint(0, VOCAB, (n, 16), generator=torch.Generator().manual_seed(1))}


def test_the_sampled_members_are_the_familys_members(tmp_path):
    """Each drawn member holds the very layer modules of the member Family.build makes of the same student and
    teacher, its logits equal that member's exactly, and `last`/`first` draws patch what those orders patch."""
    trainer, teacher, student, plan = tiny_trainer(tmp_path)
    reference = Family(teacher, student, plan, share=False)
    seen = set()
    for step in range(12):
        for draw in trainer.draws(step):
            seen.add(draw.order)
            assert 1 <= draw.k <= 2
            if draw.order != "random":
                assert set(draw.patched) == reference.order(draw.order).patched(draw.k)
            ours = trainer.family.build(1, Order("drawn", (draw.patched,)))
            theirs = reference.build(1, Order.explicit([draw.patched], plan))
            assert (
                len(layers_of(ours)) == len(layers_of(theirs)) == 4 + sum(len(plan.block(j)) - 1 for j in draw.patched)
            )
            assert all(a is b for a, b in zip(layers_of(ours), layers_of(theirs)))
            ids = batch()["input_ids"]
            with torch.no_grad():
                assert torch.equal(ours(input_ids=ids).logits, theirs(input_ids=ids).logits)
    assert seen == {"random", "last", "first"}
    assert not reference.shared  # share=False: the student being trained keeps its own tensors


def test_member_alignment_pairs_each_student_layer_with_its_block_end():
    """In a member, the hidden state `member_alignment` names for a student layer is that layer's output."""
    teacher = tiny_model("llama")
    plan = LayerPlan.from_kept(KEPT, 8)
    student = perturb(init_student(teacher, plan))
    family = Family(teacher, student, plan, share=False)
    assert member_alignment(plan, []) == plan.alignment()
    for patched in [(0,), (1,), (2, 3), (0, 2, 3)]:
        member = family.build(1, Order.explicit([patched], plan))
        outputs = {}
        hooks = [
            layer.register_forward_hook(
                lambda m, i, o, j=j: outputs.__setitem__(j, o[0] if isinstance(o, tuple) else o)
            )
            for j, layer in enumerate(layers_of(student))
        ]
        with torch.no_grad():
            hidden = member(input_ids=batch()["input_ids"], output_hidden_states=True).hidden_states
        for hook in hooks:
            hook.remove()
        pairs = member_alignment(plan, patched)
        present = [j for j in range(plan.num_student_layers - 1) if j not in patched]
        assert [t for _, t in pairs[1:-1]] == [plan.block(j).stop for j in present]
        for (position, _), j in zip(pairs[1:-1], present):
            assert torch.equal(hidden[position], outputs[j])


def test_the_loss_is_the_mean_of_the_student_and_its_members(tmp_path):
    """compute_loss = (student loss + each drawn member's loss on the shared teacher forward) / (1 + members)."""
    from boomerang_lab.distill.losses import distill_loss

    trainer, teacher, student, plan = tiny_trainer(tmp_path)
    student.train()
    inputs = batch()
    ids = inputs["input_ids"]
    loss = trainer.compute_loss(student, inputs)
    draws = trainer.draws(0)
    assert len(draws) == 2
    with torch.no_grad():
        teacher_hidden = teacher(input_ids=ids, output_hidden_states=True).hidden_states
        expected = []
        for patched, alignment in [((), plan.alignment())] + [
            (d.patched, member_alignment(plan, d.patched)) for d in draws
        ]:
            model = (
                Family(teacher, student, plan, share=False).build(1, Order.explicit([patched], plan))
                if patched
                else student
            )
            out = model(input_ids=ids, output_hidden_states=True)
            value, _ = distill_loss(
                out.logits,
                out.hidden_states,
                teacher_hidden,
                teacher.lm_head,
                ids,
                None,
                alignment,
                trainer.loss_config,
            )
            expected.append(value)
    torch.testing.assert_close(loss.detach(), torch.stack(expected).mean(), rtol=1e-5, atol=1e-6)


def test_teacher_blocks_get_no_gradient_and_do_not_change(tmp_path):
    """A family-aware step sends gradients to student parameters only; a whole run leaves the teacher unchanged."""
    trainer, teacher, student, plan = tiny_trainer(tmp_path, members=2, orders=("last",))
    student.train()
    trainer.compute_loss(student, batch()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for n, p in student.named_parameters() if "layers" in n)

    teacher = tiny_model("llama")
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    flags = [p.requires_grad for p in teacher.parameters()]
    out = tiny_run(tmp_path / "run", steps=3, teacher=teacher)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert all(p.grad is None for p in teacher.parameters())
    assert [p.requires_grad for p in teacher.parameters()] == flags  # handed back as it came
    trained = load_file(out / "model.safetensors")
    start = init_student(tiny_model("llama"), LayerPlan.from_kept(KEPT, 8)).state_dict()
    assert any(not torch.equal(trained[k], start[k]) for k in trained)  # the student trained
    log = pd.read_csv(out / LOG_FILE)
    assert log.member_loss.notna().all() and log.members.str.count(";").eq(1).all()  # 2 members a step


class Interrupted(Exception):
    pass


class InterruptAt(TrainerCallback):
    """Dies at the end of step `step`, like a killed job."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Interrupted


def test_resume_after_a_kill_draws_the_same_members(tmp_path):
    """Killed at step 3 (last checkpoint: step 2) and rerun, the run draws the members the uninterrupted run drew
    at every step, and ends in the same student."""
    full = tiny_run(tmp_path / "full")
    with pytest.raises(Interrupted):
        tiny_run(tmp_path / "cut", callbacks=[InterruptAt(3)])
    resumed = tiny_run(tmp_path / "cut")
    a, b = pd.read_csv(full / LOG_FILE), pd.read_csv(resumed / LOG_FILE)
    assert list(a.step) == list(range(1, 7)) and a.members.nunique() > 1
    assert list(b.members) == list(a.members)
    assert list(a.members) == [
        ";".join(map(str, draw_members(FamilyAwareConfig(**AWARE), LayerPlan.from_kept(KEPT, 8), 0, s)))
        for s in range(6)
    ]
    x, y = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.equal(x[k], y[k]) for k in x)


def test_gradient_accumulation_draws_the_same_members_per_step(tmp_path):
    """2 sequences x 2 accumulation steps draw, at every optimizer step, the members 4 sequences x 1 draw (the
    draws are a function of (seed, step), not of the micro-step), and train the same student."""
    one = tiny_run(tmp_path / "one", batch_size=4, steps=3)
    accumulated = tiny_run(tmp_path / "accumulated", batch_size=2, steps=3, grad_accum=2)
    a, b = pd.read_csv(one / LOG_FILE), pd.read_csv(accumulated / LOG_FILE)
    assert list(b.members) == list(a.members)
    for column in ["loss", "ce", "kl", "cos", "member_loss", "grad_norm"]:
        assert b[column].to_numpy() == pytest.approx(a[column].to_numpy(), rel=1e-5), column
    x, y = load_file(one / "model.safetensors"), load_file(accumulated / "model.safetensors")
    for name in x:
        torch.testing.assert_close(y[name], x[name], rtol=1e-5, atol=1e-6)


def test_draws_depend_on_seed_and_step_only():
    """Distinct sizes in 1..K-1, orders from the list, the same for the same (seed, step), others elsewhere."""
    plan = LayerPlan.paper(30)
    config = FamilyAwareConfig(3, ("random", "last"))
    for step in range(20):
        draws = draw_members(config, plan, 0, step)
        assert len({d.k for d in draws}) == 3 and all(1 <= d.k <= 13 for d in draws)
        assert all(d.order in ("random", "last") and len(d.patched) >= d.k for d in draws)
        assert draws == draw_members(config, plan, 0, step)
    runs = {tuple(tuple(draw_members(config, plan, seed, s)) for s in range(5)) for seed in range(3)}
    assert len(runs) == 3
    assert draw_members(FamilyAwareConfig(), plan, 0, 0) == []  # off


def test_the_option_is_off_in_the_papers_recipes_and_checked():
    for name in ("paper", "paper-llama", "quick-paper", "quick", "smoke"):
        assert not profile(name).family_aware.on
    assert profile("quick", family_aware={"members_per_step": 1}).family_aware.members_per_step == 1
    with pytest.raises(ValueError, match="members_per_step must be >= 0"):
        FamilyAwareConfig(-1)
    with pytest.raises(ValueError, match="member_orders must be a non-empty list of random, last, first"):
        FamilyAwareConfig(1, ("klpatch",))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_draw_what_one_process_draws(tmp_path):
    """2 processes x 2 sequences (gloo) draw, at every step, the members 1 process x 4 sequences draws (every rank
    the same), and log the same loss terms."""
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
    assert list(b.members) == list(a.members)
    ranks = sorted((tmp_path / "two.ranks").glob("*.txt"))
    assert len(ranks) == 2 and ranks[0].read_text() == ranks[1].read_text() != ""
    for column in ["loss", "ce", "kl", "cos", "member_loss", "grad_norm"]:
        assert b[column].to_numpy() == pytest.approx(a[column].to_numpy(), rel=1e-4), column


class RankDraws(TrainerCallback):
    """Writes the members this process's trainer drew (its own record, before the log gathers them)."""

    def __init__(self, folder: Path):
        self.folder, self.seen = folder, []

    def on_step_end(self, args, state, control, **kwargs):
        self.seen.append(state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        rank = int(os.environ.get("RANK", "0"))
        self.folder.mkdir(parents=True, exist_ok=True)
        rows = [e.get("members", "") for e in state.log_history if "loss" in e]
        (self.folder / f"{rank}.txt").write_text("\n".join(rows))


if __name__ == "__main__":  # the 2-process worker: 2 sequences per process
    out = Path(sys.argv[1])
    tiny_run(out, batch_size=2, steps=3, callbacks=[RankDraws(out.with_name(out.name + ".ranks"))])


# --- the study's report (benchmarks/study_family_aware.py, report/family_aware.py) -----------------------------------
def _study_table(fa_factor, student_factor=1.0, seeds=(0, 1), stretches=3, short_factor=1.1):
    """A synthetic study table: quick members at perplexity 100 - 2 * k, family-aware at `fa_factor(k)` times that
    (`student_factor` at k = 0), ShortGPT at `short_factor` times quick, a direct student at 26 layers, the teacher;
    every model on `stretches` stretches of 100 scored tokens."""
    from boomerang_lab.report.family_aware import STRETCHES

    rows = []

    def add(recipe, seed, method, layers, k, ppl, seconds=None):
        for stretch in range(stretches):
            rows.append([recipe, seed, method, layers, k, stretch, ppl, math.log(ppl) * 100, 100, seconds, None, 40])

    for seed in seeds:
        for k in range(14):
            quick = 100.0 - 2 * k
            add("quick", seed, "member", 16 + k, k, quick, 1500.0)
            add("family_aware", seed, "member", 16 + k, k, quick * (student_factor if k == 0 else fa_factor(k)), 1400.0)
    for k in range(14):
        add("shortgpt", 0, "shortgpt", 16 + k, k, (100.0 - 2 * k) * short_factor)
    add("direct", 0, "direct", 26, None, 70.0)
    add("teacher", 0, "teacher", 30, None, 20.0)
    columns = ["recipe", "seed", "method", "layers", "k", "stretch", "token_perplexity", "nll", "scored"]
    assert STRETCHES == 3
    return pd.DataFrame(rows, columns=columns + ["distill_seconds", "distill_cpu_seconds", "global_steps"])


def test_study_verdict_applies_the_stated_criterion():
    from boomerang_lab.report.family_aware import reading, verdict

    win = verdict(_study_table(lambda k: 0.9))
    assert (win.call, win.better, win.worse, win.sizes, win.seeds) == ("WIN", 13, 0, 13, [0, 1])
    assert win.student == {0: 0.0, 1: 0.0} and win.of_sizes == 14
    assert win.ahead[("family_aware", 0)] == win.ahead[("quick", 1)] == 14  # ShortGPT is 10 % worse at every size
    assert win.direct[26][("quick", 0)] == pytest.approx(80 / 70 - 1)
    # better at 9 sizes only: a draw; worse at 10: a loss; the student worse by > 5 % in both seeds: a loss
    assert verdict(_study_table(lambda k: 0.9 if k <= 9 else 1.0)).call == "DRAW"
    assert verdict(_study_table(lambda k: 1.1 if k <= 10 else 0.9)).call == "LOSS"
    assert verdict(_study_table(lambda k: 0.9, student_factor=1.06)).call == "LOSS"
    assert verdict(_study_table(lambda k: 0.9, student_factor=1.04)).call == "WIN"
    # ahead of ShortGPT at fewer sizes than quick (its student, 4 % worse, falls behind ShortGPT's): a draw
    behind = verdict(_study_table(lambda k: 0.9, student_factor=1.04, short_factor=1.02))
    assert (behind.ahead[("family_aware", 0)], behind.ahead[("quick", 0)], behind.call) == (13, 14, "DRAW")
    assert reading(_study_table(lambda k: 0.9))[0].startswith("**Verdict: WIN**")


def test_study_verdict_counts_only_complete_families():
    from boomerang_lab.report.family_aware import members, verdict

    partial = _study_table(lambda k: 0.9, seeds=(0,), stretches=2)
    assert members(partial).empty and verdict(partial).call == "NONE"
    one = _study_table(lambda k: 0.9, seeds=(0,))
    assert verdict(one).seeds == [0] and verdict(one).call == "WIN"


def test_study_reading_splits_the_students_change_into_steps_and_members():
    import pandas as pd

    from boomerang_lab.report.family_aware import reading

    table = _study_table(lambda k: 0.9, student_factor=1.21)  # family-aware student 121 against quick's 100
    rows = [
        ["quick_short", 0, "student", 16, 0, s, 110.0, math.log(110.0) * 100, 100, 900.0, None, 40] for s in range(3)
    ]
    table = pd.concat([table, pd.DataFrame(rows, columns=table.columns)], ignore_index=True)
    why = [line for line in reading(table) if line.startswith("**Why the student moves**")]
    # log(110/100) / log(121/100) = 1/2: half of the change from the fewer steps, +10 % from the members at 40 steps
    assert why and "40 global steps" in why[0] and "110.0, against 100.0" in why[0] and "121.0 family-aware" in why[0]
    assert (
        "account for 50% of" in why[0] and "log perplexity (+21.0% in" in why[0] and "(+10.0% at equal steps)" in why[0]
    )
    assert not [line for line in reading(_study_table(lambda k: 0.9)) if "Why the student" in line]
