"""Training FLOPs of a family against direct students (costs.py), checked against sums written out by hand."""

import pandas as pd
import pytest

from boomerang_lab.config.distill import DistillConfig
from boomerang_lab.models.plan import LayerPlan
from boomerang_lab.report.costs import (
    PAPER_TABLE3,
    Shape,
    extrapolate_seconds,
    family_costs,
    paper_table3,
    run_flops,
    table3_measured,
)
from tiny import tiny_config, tiny_model

SEQ = 16


def counts(arch="llama"):
    """N of one decoder layer and of the head, counted on a real (not meta) tiny model by hand."""
    model = tiny_model(arch)
    layer = model.model.layers[0]
    n_layer = sum(p.numel() for name, p in layer.named_parameters() if "norm" not in name)
    return n_layer, model.lm_head.weight.numel(), model.config


def recipe(**fields):
    return DistillConfig(
        **{"seq_len": SEQ, "batch_size": 2, "grad_accum": 3, "max_steps": 5, "local_steps": 0, **fields}
    )


def test_global_stage_is_teacher_forward_plus_student_forward_and_backward():
    n_layer, head, config = counts()
    plan = LayerPlan.paper(8)  # 5 of 8 layers
    attn = 2 * 2 * 32 * (SEQ + 1) / 2  # tiny: 4 heads x 8 dims
    tokens = 5 * 2 * 3 * SEQ
    teacher = 2 * (8 * n_layer + head) + 8 * attn
    student = 6 * (5 * n_layer + head) + 3 * 5 * attn  # every weight trained: forward + both backward halves
    got = run_flops(Shape.of(config), plan, recipe())
    assert got["tokens"] == tokens
    assert got["flops"] == pytest.approx(tokens * (teacher + student))
    assert got["local_flops"] == 0


def test_frozen_embeddings_and_head_get_no_weight_gradient():
    n_layer, head, config = counts()
    plan = LayerPlan.paper(8)
    shape = Shape.of(config)
    trained, frozen = run_flops(shape, plan, recipe()), run_flops(shape, plan, recipe(freeze_embeddings=True))
    assert trained["flops"] - frozen["flops"] == pytest.approx(trained["tokens"] * 2 * head)


def test_local_stage_runs_the_teacher_backbone_and_only_the_multi_layer_student_layers():
    n_layer, head, config = counts()
    plan = LayerPlan.paper(8)  # 3 multi-layer student layers
    attn = 2 * 2 * 32 * (SEQ + 1) / 2
    got = run_flops(Shape.of(config), plan, recipe(local_steps=4, max_steps=0))
    tokens = 4 * 2 * 3 * SEQ
    assert got["local_flops"] == pytest.approx(tokens * (2 * 8 * n_layer + 8 * attn + 3 * (6 * n_layer + 3 * attn)))
    assert got["global_flops"] == 0


def test_family_costs_rows_are_the_student_and_each_intermediate_size():
    costs = family_costs(tiny_config("llama"), "smoke")
    assert list(costs.k) == [0, 1, 2] and list(costs.layers) == [5, 6, 7]
    assert costs.flops.is_monotonic_increasing


def test_the_paper_teachers_ratios_are_within_5_percent_of_its_table3():
    table = paper_table3()
    assert list(table.teacher) == list(PAPER_TABLE3)
    assert list(table.intermediate_sizes) == [16, 14, 12]
    for row in table.itertuples():
        assert row.ratio == pytest.approx(row.paper_ratio, rel=0.05)


def test_extrapolated_seconds_are_proportional_to_layers_and_keep_measured_ones():
    costs = pd.DataFrame({"k": [0, 1, 2, 3], "layers": [5, 6, 7, 8], "flops": [16.0, 15.0, 14.0, 13.0]})
    measured = pd.DataFrame({"layers": [6, 8, 8], "seconds": [100.0, 150.0, 170.0]})  # two seeds at 8 layers
    out = extrapolate_seconds(measured, costs)
    assert list(out.measured) == [False, True, False, True]
    assert out.seconds.tolist()[1] == 100.0 and out.seconds.tolist()[3] == 160.0  # measured: the seeds' mean
    per_layer = (6 * 100 + 8 * 150 + 8 * 170) / (6 * 6 + 8 * 8 + 8 * 8)  # least squares through the origin
    assert out.seconds.tolist()[0] == pytest.approx(5 * per_layer) and out.seconds.tolist()[2] == pytest.approx(
        7 * per_layer
    )


def test_table3_measured_adds_seconds_from_a_study_table():
    study = pd.DataFrame(
        {
            "layers": [6, 6, 7],
            "method": ["distilled", "distilled", "boomerang"],
            "seed": [0, 0, 0],
            "distill_seconds": [50.0, 50.0, None],
        }
    )
    row, sizes = table3_measured("tiny", tiny_config("llama"), "smoke", study)
    assert row.measured_layers.item() == "6" and list(sizes.measured) == [False, True, False]
    assert sizes.seconds.tolist()[1] == 50.0  # one measured size: seconds proportional to the layers
    assert sizes.seconds.tolist()[0] == pytest.approx(50.0 * 5 / 6)
    assert row.seconds_ratio.item() == pytest.approx(sizes.seconds[1:].sum() / sizes.seconds[0])
    assert row.ratio.item() == pytest.approx(sizes.flops[1:].sum() / sizes.flops[0])


def test_step_seconds_are_timed_steps_times_the_recipes_steps_and_the_rest_fitted_per_stage():
    from boomerang_lab.config.profiles import get
    from boomerang_lab.report.costs import family_costs, step_seconds

    profile = get("smoke", distill={"local_steps": 10, "max_steps": 20})
    costs = family_costs(tiny_config("llama"), profile, "last")
    first, last = costs.iloc[0], costs.iloc[-1]
    assert first.local_layers > last.local_layers > 0 and first.layers < last.layers
    steps = pd.DataFrame(
        {
            "k": [first.k] * 3 + [last.k] * 2,
            "stage": ["local", "local", "global", "local", "global"],
            "cpu_seconds": [2.0, 2.2, 3.0, 1.0, 4.0],
        }
    )
    out = step_seconds(steps, costs, profile.distill)
    assert out.measured.tolist() == [True] + [False] * (len(costs) - 2) + [True]
    assert out.seconds.iloc[0] == pytest.approx(10 * 2.1 + 20 * 3.0)  # the median of the timed local steps
    assert out.seconds.iloc[-1] == pytest.approx(10 * 1.0 + 20 * 4.0)
    middle = out.iloc[1]
    share = (middle.layers - first.layers) / (last.layers - first.layers)
    assert middle.seconds_per_global_step == pytest.approx(3.0 + share * 1.0)
    local_share = (middle.local_layers - first.local_layers) / (last.local_layers - first.local_layers)
    assert middle.seconds_per_local_step == pytest.approx(2.1 + local_share * (1.0 - 2.1))
    assert middle.seconds_source.startswith("fitted") and out.seconds_source.iloc[0].startswith("measured")
    row, sizes = table3_measured("tiny", tiny_config("llama"), profile, steps=steps)
    assert row.seconds_ratio.item() == pytest.approx(sizes.seconds[1:].sum() / sizes.seconds[0])
    assert row.measured_layers.item() == f"{int(first.layers)}, {int(last.layers)}"
