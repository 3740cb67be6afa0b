import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest

from boomerang_lab.report import plots

K = 4
PARAMS = [10e6, 20e6, 30e6, 40e6, 50e6]


def fake_results(tasks=("arc_easy", "piqa", "wikitext")) -> pd.DataFrame:
    """A results table as evaluate.sweep writes it: boomerang and naive pruning over sizes 0..K."""
    rows = []
    for method, order, quality in (("boomerang", "last", 1.0), ("boomerang", "first", 0.9), ("naive", "last", 0.5)):
        for k in range(K + 1):
            q = 1.0 if k == K else quality * (0.5 + k / (2 * K))
            for task in tasks:
                if task == "wikitext":
                    metrics = {"word_perplexity": 30 / q, "bits_per_byte": 1 / q}
                else:
                    metrics = {"acc": 0.3 + 0.4 * q, "acc_norm": 0.25 + 0.4 * q}
                for metric, value in metrics.items():
                    rows.append(
                        dict(
                            teacher="t",
                            student="s",
                            method=method,
                            order=order,
                            k=k,
                            layers=5 + k,
                            params=PARAMS[k],
                            task=task,
                            metric=metric,
                            value=value,
                            stderr=0.01 if metric.startswith("acc") else np.nan,
                            limit=10,
                            timestamp="2026-01-01T00:00:00",
                        )
                    )
    return pd.DataFrame(rows)


def test_latest_keeps_the_newest_row_of_each_measurement():
    results = fake_results()
    newer = results.iloc[[0]].assign(value=-1.0, timestamp="2026-02-01T00:00:00")
    table = plots.latest(pd.concat([newer, results]))
    assert len(table) == len(results)
    first = results.iloc[0]
    match = table[
        (table.method == first.method)
        & (table.order == first.order)
        & (table.k == first.k)
        & (table.task == first.task)
        & (table.metric == first.metric)
    ]
    assert match.value.tolist() == [-1.0]


def test_latest_names_missing_columns():
    with pytest.raises(ValueError, match="lacks columns.*params"):
        plots.latest(fake_results().drop(columns="params"))


def test_primary_metric():
    results = fake_results(("arc_easy", "piqa", "wikitext", "custom"))
    assert plots.primary_metric(results, "arc_easy") == "acc"
    assert plots.primary_metric(results, "piqa") == "acc_norm"
    assert plots.primary_metric(results, "wikitext") == "word_perplexity"
    assert plots.primary_metric(results, "custom") == "acc_norm"
    local = results.assign(task=results.task + "_local")
    assert (
        plots.primary_metric(local, "arc_easy_local") == "acc"
        and plots.primary_metric(local, "piqa_local") == "acc_norm"
    )
    with pytest.raises(ValueError, match="No results for task 'hellaswag'"):
        plots.primary_metric(results, "hellaswag")


def test_average_accuracy_is_the_mean_of_primary_metrics_over_complete_sizes():
    results = fake_results()
    results = results[~((results.method == "naive") & (results.k == 2) & (results.task == "piqa"))]
    avg = plots.average_accuracy(results)
    row = avg[(avg.method == "boomerang") & (avg.order == "first") & (avg.k == 1)].iloc[0]
    q = 0.9 * (0.5 + 1 / (2 * K))
    assert row.value == pytest.approx(((0.3 + 0.4 * q) + (0.25 + 0.4 * q)) / 2)
    assert row.stderr == pytest.approx(np.sqrt(2 * 0.01**2) / 2)
    assert avg[(avg.method == "naive")].k.tolist() == [0, 1, 3, 4]  # k=2 lacks piqa


def test_metric_vs_params_draws_one_line_per_curve_and_marks_teacher_and_student():
    fig = plots.metric_vs_params(fake_results(), "arc_easy")
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}
    assert set(lines) == {"boomerang (last)", "boomerang (first)", "naive"}
    assert list(lines["naive"].get_xdata()) == [p / 1e6 for p in PARAMS]
    markers = {
        c.get_label(): c.get_offsets()[0].tolist() for c in ax.collections if c.get_label() in ("teacher", "student")
    }
    assert markers["teacher"] == [50.0, pytest.approx(0.7)]
    assert markers["student"][0] == 10.0
    assert ax.get_yscale() == "linear"
    plots.plt.close(fig)


def test_teacher_is_the_largest_size_even_when_a_member_has_more_parameters():
    results = fake_results(("arc_easy",))
    results.loc[results.k == K - 1, "params"] = 60e6  # members mixing two embedding matrices can outgrow the teacher
    fig = plots.metric_vs_params(results, "arc_easy", x="params")
    teacher = [c for c in fig.axes[0].collections if c.get_label() == "teacher"][0]
    assert teacher.get_offsets()[0].tolist() == [50.0, pytest.approx(0.7)]
    plots.plt.close(fig)


def test_the_default_size_axis_is_layers_when_parameters_do_not_grow_with_k():
    assert plots.size_axis(fake_results()) == "params"
    results = fake_results(("arc_easy",))
    results.loc[(results.k == K - 1) & (results.order == "first"), "params"] = 60e6
    assert plots.size_axis(results) == "layers"
    for fig in (plots.metric_vs_params(results, "arc_easy"), plots.size_curves(results)):
        assert fig.axes[0].get_xlabel() == "layers"
        plots.plt.close(fig)


def test_size_axis_can_be_layers():
    fig = plots.metric_vs_params(fake_results(), "piqa", x="layers")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "layers" and list(ax.get_lines()[0].get_xdata()) == [5, 6, 7, 8, 9]
    plots.plt.close(fig)
    with pytest.raises(ValueError, match="x must be one of"):
        plots.metric_vs_params(fake_results(), "piqa", x="bytes")


def test_perplexity_vs_size_uses_word_perplexity_on_a_log_axis():
    fig = plots.perplexity_vs_size(fake_results())
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and ax.get_ylabel() == "word_perplexity" and ax.get_title() == "wikitext"
    plots.plt.close(fig)
    with pytest.raises(ValueError, match="No perplexity results"):
        plots.perplexity_vs_size(fake_results(("arc_easy",)))


def test_size_curves_has_an_average_panel_and_one_per_task():
    fig = plots.size_curves(fake_results())
    assert [ax.get_title() for ax in fig.axes] == ["average", "arc_easy", "piqa", "wikitext"]
    assert {t.get_text() for t in fig.legends[0].get_texts()} == {
        "boomerang (first)",
        "boomerang (last)",
        "naive",
        "teacher",
        "student",
    }
    plots.plt.close(fig)


def test_loss_curves_one_panel_per_logged_term():
    log = pd.DataFrame(
        {
            "step": range(30),
            "loss": np.linspace(3, 1, 30),
            "ce": np.linspace(2, 1, 30),
            "kl": np.nan,
            "cos": np.linspace(1, 0, 30),
            "lr": 1e-3,
            "grad_norm": 1.0,
        }
    )
    fig = plots.loss_curves(log)
    assert [ax.get_title() for ax in fig.axes] == ["loss", "ce", "cos", "lr"]
    plots.plt.close(fig)
    fig = plots.loss_curves({"a": log, "b": log.assign(kl=0.5)})
    assert [ax.get_title() for ax in fig.axes] == ["loss", "ce", "kl", "cos", "lr"]
    plots.plt.close(fig)
    with pytest.raises(ValueError, match="none of the columns"):
        plots.loss_curves(pd.DataFrame({"step": [0], "acc": [1.0]}))


def test_loss_curves_draw_every_logged_term_of_a_staged_run():
    """A local stage then a global one: a panel for every term either logs (local_cos too), none for the totals."""
    from boomerang_lab.report.reading import TERMS

    assert set(TERMS) <= set(plots.LOSS_TERMS)
    local = pd.DataFrame(
        {"stage": "local", "step": range(1, 21), "loss": 1.0, "local_nmse": np.linspace(1, 0.5, 20), "lr": 1e-3}
    ).assign(local_cos=np.linspace(0.5, 0.2, 20))
    glob = pd.DataFrame(
        {"stage": "global", "step": range(1, 21), "loss": 9.0, "ce": 5.0, "kl": 2.0, "cos": 0.2, "lr": 3e-4}
    )
    fig = plots.loss_curves(pd.concat([local, glob], ignore_index=True))
    assert [ax.get_title() for ax in fig.axes] == ["local_nmse", "local_cos", "ce", "kl", "cos", "lr"]
    plots.plt.close(fig)


def test_alignment_heatmap_grid():
    table = pd.DataFrame(
        {
            "stage": ["before"] * 3 + ["after"] * 3,
            "student_layer": [0, 1, 2] * 2,
            "teacher_layer": [0, 2, 4] * 2,
            "cosine": [1, 0.5, 0.2, 1, 0.9, 0.8],
        }
    )
    fig = plots.alignment_heatmap(table)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["before", "after"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0→0", "1→2", "2→4"]
    assert np.allclose(ax.collections[0].get_array().reshape(2, 3), [[1, 0.5, 0.2], [1, 0.9, 0.8]])
    plots.plt.close(fig)


def test_save_figure_writes_png_and_reproducible_pdf(tmp_path):
    paths = plots.save_figure(plots.metric_vs_params(fake_results(), "piqa"), tmp_path / "figs", "piqa")
    assert [p.name for p in paths] == ["piqa.png", "piqa.pdf"]
    assert paths[0].read_bytes()[:4] == b"\x89PNG" and paths[1].read_bytes()[:4] == b"%PDF"
    first = paths[1].read_bytes()
    plots.save_figure(plots.metric_vs_params(fake_results(), "piqa"), tmp_path / "figs", "piqa")
    assert paths[1].read_bytes() == first
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["piqa.pdf", "piqa.png"]
