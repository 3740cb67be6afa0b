"""The helpers that render a notebook's reading from its values, and the reference line the area metric uses."""

import numpy as np
import pandas as pd
import pytest

from boomerang_lab import curve_quality
from boomerang_lab.config.profiles import main_order
from boomerang_lab.report.curves import order_curves, reference_line
from boomerang_lab.report.plots import primary_metric
from boomerang_lab.report.reading import loss_table, num, reading, share


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


def test_the_drawn_reference_line_is_the_one_the_area_is_measured_against():
    """A curve on the drawn line has area 0; on a log axis that line is not the segment between the end points."""
    x, y = reference_line(np.array([16.0, 30.0]), np.array([300.0, 20.0]))
    assert len(x) > 2 and y[0] == 300 and y[-1] == pytest.approx(20)
    on_line = pd.DataFrame({"order": "line", "k": range(len(x)), "layers": x, "ppl": y})
    assert curve_quality(on_line).area.iloc[0] == pytest.approx(0, abs=1e-12)
    table = pd.DataFrame({"order": "a", "k": [0, 1, 2], "layers": [16, 23, 30], "ppl": [300.0, 40.0, 20.0]})
    fig = order_curves(table, panel=None, x="layers")
    (line,) = [ln for ln in fig.axes[0].get_lines() if ln.get_label() == "straight line"]
    drawn_x, drawn_y = line.get_data()
    assert np.allclose(drawn_y, 300 + (20 - 300) * (np.asarray(drawn_x) - 16) / 14)
