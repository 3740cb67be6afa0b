"""The Figure 4 table helpers (comparisons.py): headline columns, the criterion's threshold and its calls."""

import matplotlib
import pandas as pd
import pytest

from boomerang_lab.report.comparisons import figure4, headline, seed_spread, verdict

matplotlib.use("Agg")


def study(rows):
    cols = ["layers", "method", "seed", "task", "metric", "value", "stderr"]
    return pd.DataFrame(rows, columns=cols).assign(order="last")


PPL = ("wikitext_ppl", "token_perplexity")
ACC = ("lambada_openai_local", "acc")
TABLE = study(
    [
        (16, "boomerang", 0, *PPL, 300.0, None),
        (20, "boomerang", 0, *PPL, 100.0, None),
        (20, "distilled", 0, *PPL, 120.0, None),
        (20, "distilled", 1, *PPL, 110.0, None),  # seed spread 120 / 110 - 1 = 9.1 %
        (26, "boomerang", 0, *PPL, 50.0, None),
        (26, "distilled", 0, *PPL, 52.0, None),
        (23, "boomerang", 0, *PPL, 90.0, None),
        (23, "distilled", 0, *PPL, 70.0, None),
        (30, "boomerang", 0, *PPL, 23.0, None),
        (20, "boomerang", 0, *ACC, 0.30, 0.05),
        (20, "distilled", 0, *ACC, 0.20, 0.05),
        (23, "laco", 0, *PPL, 400.0, None),
    ]
)


def test_headline_has_one_column_per_method_and_seed():
    wide = headline(TABLE, PPL)
    assert list(wide.columns) == ["boomerang", "distilled s0", "distilled s1", "laco"]
    assert wide.loc[20, "distilled s1"] == 110.0 and wide.index.tolist() == [16, 20, 23, 26, 30]


def test_verdict_calls_each_size_by_the_seed_spread():
    assert seed_spread(TABLE) == pytest.approx(120 / 110 - 1)
    calls = verdict(TABLE).set_index("layers")
    # 20: 100 vs 120 (-16.7 %) better; 23: 90 vs 70 (+28.6 %) worse; 26: 50 vs 52 (-3.8 %) within 9.1 %: matches.
    assert calls.call.to_dict() == {20: "better", 23: "worse", 26: "matches"}
    assert calls.loc[20, "lambada_stderrs"] == pytest.approx(0.1 / (2 * 0.05**2) ** 0.5)


def test_without_a_second_seed_the_threshold_is_5_percent():
    one_seed = TABLE[TABLE.seed == 0]
    assert seed_spread(one_seed) == 0.05
    assert verdict(one_seed).set_index("layers").call[26] == "matches"


def test_figure4_draws_both_panels():
    fig = figure4(TABLE, "last", 30, 16, title="t")
    assert [ax.get_title() for ax in fig.axes] == ["WikiText-2 test token perplexity", "LAMBADA accuracy (64 examples)"]


def test_members_of_another_order_against_the_same_direct_students():
    local = study([(20, "boomerang", 0, *PPL, 130.0, None), (23, "boomerang", 0, *PPL, 60.0, None)]).assign(
        order="local"
    )
    both = pd.concat([TABLE, local], ignore_index=True)
    assert verdict(both, "last").set_index("layers").member_ppl.to_dict() == {20: 100.0, 23: 90.0, 26: 50.0}
    calls = verdict(both, "last", member_order="local").set_index("layers")
    assert calls.member_ppl.to_dict() == {20: 130.0, 23: 60.0}  # 26 has no local member
    assert calls.direct_ppl.to_dict() == {20: 120.0, 23: 70.0} and calls.call.to_dict() == {20: "matches", 23: "better"}
