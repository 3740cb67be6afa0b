"""Students distilled directly at a size of the family (direct.py): their layers, alignment, errors and the CLI."""

import json

import pytest
import torch
from datasets import Dataset

import boomerang_lab.distill.trainer as distill_module
from boomerang_lab.data import data_file
from boomerang_lab.evaluate.direct import (
    DIRECT_FILE,
    direct_plan,
    direct_student,
    member_layers,
    read_direct,
    resolve_order,
    size_for_layers,
)
from boomerang_lab.family.members import Family
from boomerang_lab.models.orders import Order
from boomerang_lab.models.plan import LayerPlan
from boomerang_lab.models.student import init_student
from boomerang_lab.study.cli import main
from tiny import VOCAB, perturb, tiny_model

PLANS = {"default": LayerPlan.paper(8), "keep_first_2": LayerPlan.paper(8, keep_first=2, keep_last=1)}


def orders_of(plan: LayerPlan) -> dict[str, Order]:
    multi = plan.multi_layer
    return {
        "last": Order.last(plan),
        "first": Order.first(plan),
        "explicit": Order.explicit(
            [[j] for j in multi[1:] + multi[:1]] + [[j] for j in range(len(plan.kept)) if j not in multi], plan
        ),
    }


def layer_weights(model) -> list[torch.Tensor]:
    return [torch.cat([p.detach().flatten() for p in layer.parameters()]) for layer in model.model.layers]


@pytest.mark.parametrize("plan_name", PLANS)
@pytest.mark.parametrize("order_name", ["last", "first", "explicit"])
def test_initial_layers_equal_the_members_teacher_layers(plan_name, order_name):
    plan = PLANS[plan_name]
    teacher = tiny_model("llama")
    student = perturb(init_student(teacher, plan))  # a distilled student: its layers differ from the teacher's
    family = Family(teacher, student, plan)
    order = orders_of(plan)[order_name]
    teacher_layers = layer_weights(teacher)
    for k in range(1, order.num_sizes):
        own = direct_plan(plan, order, k)
        member = family.build(k, order)
        assert own.num_student_layers == member.config.num_hidden_layers
        start = layer_weights(init_student(teacher, own))
        # Layer by layer, the teacher layer the member's layer was (or is): a patched teacher layer, or the one a
        # kept student layer was initialised from.
        assert len(start) == len(own.kept)
        for position, i in enumerate(own.kept):
            assert torch.equal(start[position], teacher_layers[i])
        patched = {i for j in order.patched(k) for i in plan.block(j)}
        for position, (i, got) in enumerate(zip(own.kept, layer_weights(member))):
            if i in patched:  # the member runs this teacher layer itself
                assert torch.equal(got, start[position])


def test_member_layers_are_the_reference_codes_last_and_first_layers_to_keep():
    plan = LayerPlan.paper(30)  # SmolLM2-135M, the quick plan: 16 layers
    last, first = Order.last(plan), Order.first(plan)
    for k in range(1, last.num_sizes):
        kept = 2 + 2 * k  # --last_layers_to_keep 2 + 2k: the last 2 + 2k teacher layers whole
        assert member_layers(plan, last, k) == list(range(0, 30 - kept, 2)) + list(range(30 - kept, 30))
    llama = LayerPlan.paper(30, keep_first=2, keep_last=1)  # the paper's Llama plan: kept 0 1 3 5 ... 29
    first = Order.first(llama)
    for k in range(1, first.num_sizes):
        whole = 1 + 2 * k  # --first_layers_to_keep: the first teacher layers whole, then the student's
        assert member_layers(llama, first, k) == list(range(whole)) + [i for i in llama.kept if i >= whole]


def test_alignment_pairs_follow_the_blocks_the_layers_stand_for():
    plan = LayerPlan.paper(8)  # kept 0 2 4 6 7: blocks [0,2) [2,4) [4,6) [6] [7]
    own = direct_plan(plan, Order.last(plan), 1)  # the last 2-layer block and what follows patched: 0 2 4 5 6 7
    assert list(own.kept) == [0, 2, 4, 5, 6, 7]
    # Student layer 1 (teacher 0) stands for [0, 2): aligned with the teacher state after layer 1 (index 2);
    # teacher layers 4 and 5 stand for themselves (indices 5 and 6).
    assert own.alignment() == [(0, 0), (1, 2), (2, 4), (3, 5), (4, 6), (5, 7), (-1, -1)]
    own = direct_plan(plan, Order.first(plan), 1)  # 0 1 2 4 6 7
    assert own.alignment() == [(0, 0), (1, 1), (2, 2), (3, 4), (4, 6), (5, 7), (-1, -1)]
    assert own.multi_layer == [2, 3]  # the local stage trains the layers still standing for 2 teacher layers


@pytest.mark.parametrize("k", [0, 3, -1, 7])
def test_a_size_outside_1_to_K_minus_1_is_an_error(k):
    plan = LayerPlan.paper(8)
    with pytest.raises(ValueError, match=rf"k={k} .*valid k are 1\.\.2"):
        direct_plan(plan, Order.last(plan), k)


def test_unknown_order_and_family_orders_without_family_are_clear_errors():
    plan = LayerPlan.paper(8)
    with pytest.raises(ValueError, match="Unknown order 'nope'.*last"):
        resolve_order(plan, "nope")
    with pytest.raises(ValueError, match="'local' is computed from the family's distilled student"):
        resolve_order(plan, "local")
    teacher = tiny_model("llama")
    family = Family(teacher, init_student(teacher, plan), plan)
    assert resolve_order(plan, "last", family) == family.order("last")
    with pytest.raises(ValueError, match="No intermediate member of order 'last' has 9 layers; they have \\[6, 7\\]"):
        size_for_layers(plan, Order.last(plan), 9)


def test_direct_student_distils_from_the_members_layers_and_is_reused(tmp_path, monkeypatch):
    teacher = tiny_model("llama")
    plan = LayerPlan.paper(8)
    ids = torch.randint(0, VOCAB, (32, 16), generator=torch.Generator().manual_seed(0))
    data = Dataset.from_dict({"input_ids": ids.tolist()})
    started = {}
    real = distill_module.distill

    def spy(teacher, student, own, *args, **kwargs):
        started["layers"], started["plan"] = layer_weights(student), own
        return real(teacher, student, own, *args, **kwargs)

    monkeypatch.setattr(distill_module, "distill", spy)
    recipe = dict(max_steps=2, local_steps=2, batch_size=4, save_steps=2, use_cpu=True)
    out = direct_student(teacher, None, plan, 1, "last", "smoke", tmp_path / "d", data=data, progress=False, **recipe)
    own = LayerPlan.load(out)
    assert list(own.kept) == [0, 2, 4, 5, 6, 7] == list(started["plan"].kept)
    teacher_layers = layer_weights(teacher)
    assert all(torch.equal(a, teacher_layers[i]) for a, i in zip(started["layers"], own.kept))
    log = (out / distill_module.LOG_FILE).read_text()
    assert "local" in log and "global" in log  # the recipe's local stage ran, then the global one
    assert read_direct(out) == {
        "k": 1,
        "order": Order.last(plan).to_dict(),
        "family_plan": plan.to_dict(),
        "layers": [0, 2, 4, 5, 6, 7],
    }
    started.clear()
    again = direct_student(teacher, None, plan, 1, "last", "smoke", tmp_path / "d", data=data, progress=False, **recipe)
    assert again == out and not started  # finished: reused, nothing trained


def test_cli_distill_size_and_layers(tmp_path):
    corpus = str(data_file("corpus/pg11_alice_in_wonderland.txt"))
    common = ["distill", "--profile", "smoke", "--max-steps", "1", "--local-steps", "1", "--data", corpus]
    main([*common, "--size", "1", "--order", "first", "--out", str(tmp_path / "a")])
    info = json.loads((tmp_path / "a" / DIRECT_FILE).read_text())
    assert info["k"] == 1 and info["order"]["name"] == "first" and info["layers"] == [0, 1, 2, 4, 6, 7]
    main([*common, "--layers", "6", "--out", str(tmp_path / "b")])  # the last order's 6-layer member: k=1
    assert json.loads((tmp_path / "b" / DIRECT_FILE).read_text())["layers"] == [0, 2, 4, 5, 6, 7]
    with pytest.raises(SystemExit, match="valid k are 1..2"):
        main([*common, "--size", "3", "--out", str(tmp_path / "c")])
    with pytest.raises(SystemExit, match="Unknown order 'nope'"):
        main([*common, "--size", "1", "--order", "nope", "--out", str(tmp_path / "c")])
