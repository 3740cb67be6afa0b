"""The helpers that render a notebook's reading from its values, and the reference line the area metric uses."""

import numpy as np
import pandas as pd
import pytest

from boomerang_lab import curve_quality
from boomerang_lab.config.profiles import main_order
from boomerang_lab.report.curves import order_curves, rank_curves, reference_line
from boomerang_lab.report.plots import primary_metric
from boomerang_lab.report.reading import (
    direction,
    loss_table,
    lower_at,
    moved,
    num,
    ranked,
    reading,
    share,
    teacher_label,
)


def test_num_rounds_to_significant_figures_with_thousands_separators():
    assert [num(v) for v in (23.1116, 0.93412, 1115.2, 368793.9, 3.7, 0)] == [
        "23.1",
        "0.934",
        "1,115",
        "368,794",
        "3.70",
        "0",
    ]
    assert num(0.12345, 2) == "0.12" and num(float("nan")) == "nan"


def test_share_says_every_none_or_how_many():
    assert share(14, 14) == "every one of the 14 sizes"
    assert share(0, 14) == "none of the 14 sizes"
    assert share(11, 14, "pairs") == "11 of 14 pairs"


def test_reading_is_markdown_bullets_without_the_empty_ones():
    assert reading("a", "", None, "b").data == "- a\n- b"


def test_loss_table_gives_each_stages_smoothed_start_end_and_tail():
    log = pd.DataFrame(
        {
            "step": [1, 2, 3, 4, 1, 2, 3, 4],
            "stage": ["local"] * 4 + ["global"] * 4,
            "local_nmse": [0.4, 0.3, 0.2, 0.1] + [np.nan] * 4,
            "ce": [np.nan] * 4 + [8.0, 6.0, 5.0, 5.0],
            "tokens_seen": [10, 20, 30, 40, 10, 20, 30, 40],
        }
    )
    table = loss_table(log, smooth=1)
    assert list(table.index) == [("local", "local_nmse"), ("global", "ce")]
    assert table.loc[("local", "local_nmse")].to_dict() == pytest.approx(
        {"steps": 4, "tokens": 40, "start": 0.4, "end": 0.1, "last_quarter": -0.1}
    )
    assert table.loc[("global", "ce"), "last_quarter"] == 0.0  # flat over the last quarter
    with pytest.raises(ValueError, match="none of the terms"):
        loss_table(pd.DataFrame({"step": [1], "lr": [0.1]}))


def test_main_order_is_the_runs_first_order_else_the_profiles():
    assert main_order("quick", ["last", "local"]) == "last"
    from boomerang_lab.config.profiles import get

    assert main_order("quick") == get("quick").pipeline.orders[0]


def test_the_fast_perplexity_is_read_as_token_perplexity():
    rows = pd.DataFrame({"task": "wikitext_ppl", "metric": ["word_perplexity", "token_perplexity"]})
    assert primary_metric(rows, "wikitext_ppl") == "token_perplexity"


def test_the_comparison_word_is_chosen_by_the_data():
    assert direction(0.0993, 0.102) == "rose" and direction(7.09, 4.44) == "fell"
    assert direction(0.0993, 0.0995, within=0.001) == "stayed within ±0.00100"
    assert moved(7.09, 4.44) == "fell from 7.09 to 4.44"
    assert moved(1.0, 1.001, within=0.01).startswith("stayed within ±0.0100 (1.00 to 1.00")
    a = pd.Series([300.0, 250, 200, 20], index=[16, 17, 18, 30])
    b = pd.Series([300.0, 290, 180, 20], index=[16, 17, 18, 30])
    assert lower_at(a, b) == "lower at 1 of 4 sizes" and lower_at(b, b) == "lower at none of the 4 sizes"
    assert ranked(pd.Series({"a": 3.0, "b": 1.0, "c": 2.0})) == "b < c < a"
    assert teacher_label("smollm2-135m") == "SmolLM2-135M-Instruct, dequantised from a Q4_1 GGUF"
    assert teacher_label("gpt2") == "`gpt2`"


def test_the_score_ranks_a_lower_curve_first_where_the_old_area_did_not():
    """07's case: `klpatch` lower than `last` at every intermediate size, both monotone. The old area (|y - line| in
    linear perplexity) put `last` first because klpatch is further *below* the line; the score does not."""
    layers = list(range(16, 31))
    klpatch = [323.7, 257.6, 223.3, 208.0, 179.7, 119.7, 97.1, 82.0, 63.9, 47.1, 37.5, 32.9, 29.0, 26.4, 23.1]
    last = [323.7, 295.7, 281.0, 217.7, 186.5, 134.0, 113.7, 102.7, 92.8, 75.1, 61.2, 51.8, 47.3, 35.0, 23.1]
    table = pd.concat(
        pd.DataFrame({"order": o, "k": range(15), "layers": layers, "ppl": v})
        for o, v in (("klpatch", klpatch), ("last", last))
    )
    q = curve_quality(table).set_index("order")
    assert list(rank_curves(q, old=True).index) == ["last", "klpatch"]
    assert list(rank_curves(q).index) == ["klpatch", "last"]
    assert (q.log_rise == 0).all() and q.loc["last", "score"] > q.loc["klpatch", "score"]
    # the score: how far above the log line (nats), plus the wrong-way log steps; a curve below the line scores 0
    below = pd.DataFrame({"order": "b", "k": range(3), "layers": [16, 23, 30], "ppl": [300.0, 30.0, 20.0]})
    bump = pd.DataFrame({"order": "u", "k": range(3), "layers": [16, 23, 30], "ppl": [300.0, 330.0, 20.0]})
    qb, qu = curve_quality(below).iloc[0], curve_quality(bump).iloc[0]
    assert qb.score == 0 and qb.log_gap < 0
    line = np.exp((np.log(300) + np.log(20)) / 2)
    assert qu.above_line == pytest.approx(np.log(330 / line)) and qu.log_rise == pytest.approx(np.log(1.1))
    kl = pd.DataFrame({"order": "k", "k": range(3), "layers": [16, 23, 30], "kl": [2.0, 1.0, 0.0]})
    assert np.isnan(curve_quality(kl, metric="kl").score.iloc[0])  # no log scale for a metric that reaches 0


def test_the_drawn_reference_line_is_the_one_the_score_is_measured_against():
    """The drawn line is straight on the log axis: a curve on it scores 0 and sits at log_gap 0; the old linear line
    (scale="linear") is the one the old area was 0 on."""
    x, y = reference_line(np.array([16.0, 30.0]), np.array([300.0, 20.0]))
    assert len(x) > 2 and y[0] == pytest.approx(300) and y[-1] == pytest.approx(20)
    on_line = pd.DataFrame({"order": "line", "k": range(len(x)), "layers": x, "ppl": y})
    assert curve_quality(on_line).log_gap.iloc[0] == pytest.approx(0, abs=1e-12)
    xl, yl = reference_line(np.array([16.0, 30.0]), np.array([300.0, 20.0]), scale="linear")
    linear = pd.DataFrame({"order": "line", "k": range(len(xl)), "layers": xl, "ppl": yl})
    assert curve_quality(linear).area.iloc[0] == pytest.approx(0, abs=1e-12)
    with pytest.raises(ValueError, match="scale 'cubic'"):
        reference_line([1, 2], [3, 4], scale="cubic")
    table = pd.DataFrame({"order": "a", "k": [0, 1, 2], "layers": [16, 23, 30], "ppl": [300.0, 40.0, 20.0]})
    fig = order_curves(table, panel=None, x="layers")
    (line,) = [ln for ln in fig.axes[0].get_lines() if ln.get_label() == "straight line"]
    drawn_x, drawn_y = line.get_data()
    assert np.allclose(np.log(drawn_y), np.log(300) + np.log(20 / 300) * (np.asarray(drawn_x) - 16) / 14)
