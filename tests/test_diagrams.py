"""The pictures and tables the notebooks use to explain the method: plan, family stacks, exactness checks."""

import copy

import matplotlib
import pytest
import torch

from boomerang_lab import Family, LayerPlan, init_student
from boomerang_lab.models.adapters import layers_of
from boomerang_lab.report.diagrams import composition, exactness_checks, family_diagram, plan_diagram
from tiny import perturb, tiny_model

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def family():
    teacher = tiny_model("llama", layers=8)
    plan = LayerPlan.paper(8)
    return Family(teacher, perturb(init_student(teacher, plan)), plan)


def test_composition_names_where_each_module_comes_from(family):
    plan = family.plan
    student = composition(family, 0)
    assert set(student.source) == {"student"}
    assert list(student[student.part == "layer"]["index"]) == list(range(plan.num_student_layers))
    assert list(student.part) == ["embeddings"] + ["layer"] * plan.num_student_layers + ["norm", "head"]
    teacher = composition(family, family.K)
    assert set(teacher.source) == {"teacher"} and list(teacher[teacher.part == "layer"]["index"]) == list(range(8))
    one = composition(family, 1, "last")  # the last multi-layer block swapped back for its teacher layers
    layers = one[one.part == "layer"]
    last = plan.multi_layer[-1]
    patched = family.order("last").patched(1)
    expected = [("teacher", i) for j in range(plan.num_student_layers) if j in patched for i in plan.block(j)]
    assert [(s, i) for s, i in zip(layers.source, layers["index"]) if s == "teacher"] == expected
    assert last in patched and len(layers) == len(layers_of(family.build(1, "last")))
    assert one.source.iloc[0] == "student" and one.source.iloc[-1] == "teacher"  # student embeddings, teacher head


def test_exactness_checks_pass_and_would_show_a_difference(family, monkeypatch):
    ids = torch.randint(0, 97, (2, 12))
    checks = exactness_checks(family, ids)
    assert checks.passed.all() and len(checks) == 6
    assert set(checks.order) == {"last", "first"} and (checks.value == 0).all()

    # Members that hold a copy of the weights, one of them changed: every check of the order fails and says by how much.
    build = Family.build

    def copied_and_changed(self, k=None, order="last"):
        member = copy.deepcopy(build(self, k, order))
        with torch.no_grad():
            layers_of(member)[0].mlp.down_proj.weight.add_(1e-3)
        return member

    monkeypatch.setattr(Family, "build", copied_and_changed)
    broken = exactness_checks(family, ids, orders=("last",))
    assert list(broken.passed) == [False, False, False]
    assert (broken.value.iloc[:2] > 0).all()
    assert broken.value.iloc[2] == len(list(family.teacher.parameters()))  # the teacher member: all copies


def test_diagrams_draw(family, tmp_path):
    fig = plan_diagram(LayerPlan.paper(30))
    fig.savefig(tmp_path / "plan.png", dpi=80)
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert {"0", "29", "15", "emb", "head"} <= texts
    fig = family_diagram(family)
    fig.savefig(tmp_path / "family.png", dpi=80)
    labels = [t.get_text() for t in fig.axes[0].texts]
    assert f"k={family.K}\n8" in labels and f"k=0\n{family.plan.num_student_layers}" in labels
    assert "T7" in labels and "S0" in labels
    assert (tmp_path / "plan.png").stat().st_size > 1000 and (tmp_path / "family.png").stat().st_size > 1000


def test_save_figure_without_a_folder_only_closes(tmp_path):
    import matplotlib.pyplot as plt

    from boomerang_lab.report.plots import save_figure

    fig = plan_diagram(LayerPlan.paper(8))
    assert save_figure(fig, None, "plan") == [] and not plt.fignum_exists(fig.number)
    assert [p.name for p in save_figure(plan_diagram(LayerPlan.paper(8)), tmp_path, "plan")] == ["plan.png", "plan.pdf"]


def test_plan_table_and_method_comparison():
    from boomerang_lab.report.diagrams import method_comparison, plan_table

    table = plan_table(LayerPlan.paper(8))  # kept 0, 2, 4, 6, 7
    assert list(table["copied from teacher layer"]) == [0, 2, 4, 6, 7]
    assert list(table["stands for teacher layers"]) == ["0–1", "2–3", "4–5", "6", "7"]
    assert table["cosine aligns student state → teacher state"].iloc[0] == "1 → 2"
    assert table["cosine aligns student state → teacher state"].iloc[-1] == "final norm → final norm"
    rows = [
        dict(
            teacher="t",
            student="s",
            method=m,
            order="last" if m != "shortgpt" else "block_influence",
            k=k,
            layers=5 + k,
            params=100 + k,
            task="wikitext_ppl",
            metric="word_perplexity",
            value=v,
        )
        for m, values in (("boomerang", (40.0, 20.0)), ("naive", (400.0, 30.0)), ("shortgpt", (20.0, 10.0)))
        for k, v in enumerate(values)
    ]
    import pandas as pd

    comparison = method_comparison(pd.DataFrame(rows))
    assert list(comparison["naive / boomerang"]) == [10.0, 1.5]
    assert list(comparison["shortgpt / boomerang"]) == [0.5, 0.5]
