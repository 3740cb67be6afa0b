"""The budget study's arithmetic (report/budget.py): pooling, gaps, the forgetting call and the extrapolation."""

import math

import pandas as pd
import pytest

from boomerang_lab.report.budget import (
    budget_reading,
    crossing,
    figure_title,
    forgetting,
    gaps,
    pooled,
    ran,
    ran_text,
)


def rows(budget, method, layers, text, ppls, tokens=1000):
    """One row per stretch with the given perplexities (1,000 scored tokens each)."""
    return [
        {
            "budget": budget,
            "train_tokens": budget * tokens,
            "method": method,
            "layers": layers,
            "text": text,
            "stretch": i,
            "metric": "token_perplexity",
            "value": p,
            "stderr": math.nan,
            "nll": 1000 * math.log(p),
            "scored": 1000,
        }
        for i, p in enumerate(ppls)
    ]


def acc(budget, method, layers, value, stderr=0.03):
    return [
        {
            "budget": budget,
            "train_tokens": budget * 1000,
            "method": method,
            "layers": layers,
            "text": "lambada",
            "stretch": 0,
            "metric": "acc",
            "value": value,
            "stderr": stderr,
            "nll": math.nan,
            "scored": 256,
        }
    ]


@pytest.fixture
def table():
    r = []
    # 1x: member 20 % worse outside; 4x: member 2 % worse (closes); 16x: member 10 % better (crosses)
    for b, m, d in ((1, 60.0, 50.0), (4, 40.8, 40.0), (16, 31.5, 35.0)):
        r += rows(b, "member", 26, "wikitext_test", [m, m, m])
        r += rows(b, "direct", 26, "wikitext_test", [d * 0.9, d, d * 1.1])
    # inside: the direct student keeps improving; outside (above) it improves too until 16x, then worsens
    for b, m, d in ((1, 30.0, 20.0), (4, 25.0, 15.0), (16, 22.0, 10.0)):
        r += rows(b, "member", 26, "corpus_held_out", [m, m, m])
        r += rows(b, "direct", 26, "corpus_held_out", [d, d, d])
    r += acc(1, "member", 26, 0.20) + acc(1, "direct", 26, 0.30)
    return pd.DataFrame(r)


def test_pooled_perplexity_is_exp_of_summed_nll_over_tokens(table):
    p = pooled(table)
    direct = p[(p.method == "direct") & (p.budget == 1) & (p.text == "wikitext_test")].iloc[0]
    assert direct.value == pytest.approx(math.exp((math.log(45) + math.log(50) + math.log(55)) / 3))
    assert (direct.lo, direct.hi) == pytest.approx((45.0, 55.0))


def test_gaps_call_each_budget_by_the_criterion(table):
    g = gaps(table)
    out = g[g.text == "wikitext_test"].set_index("budget")
    assert out.loc[1, "call"] == "member worse"
    assert out.loc[4, "call"] == "closes"
    assert out.loc[16, "call"] == "member better"
    assert out.loc[16, "gap"] < -0.05
    lam = g[g.text == "lambada"].iloc[0]
    assert lam.gap == pytest.approx(-0.10)
    assert lam.stderrs == pytest.approx(-0.10 / math.hypot(0.03, 0.03))
    assert lam.call == "worse"  # 2.4 combined stderrs


def test_forgetting_is_better_inside_and_worse_outside_on_every_stretch(table):
    f = forgetting(table).set_index("to_budget")
    assert not f.loc[4, "forgetting"] and f.loc[4, "ruled_out"]  # 1x -> 4x: better everywhere
    assert bool(f.loc[4, "inside_change"] < 0)
    # 4x -> 16x: direct outside 40 -> 35 pooled, better: no forgetting; make one stretch worse and it is not called
    worse = table.copy()
    sel = (worse.method == "direct") & (worse.budget == 16) & (worse.text == "wikitext_test")
    worse.loc[sel, "value"] = 45.0
    worse.loc[sel, "nll"] = 1000 * math.log(45.0)
    f = forgetting(worse).set_index("to_budget")
    assert f.loc[16, "forgetting"]
    # one stretch worse, the others better: within what the stretches disagree on, not forgetting
    one = table.copy()
    sel = (one.method == "direct") & (one.budget == 16) & (one.text == "wikitext_test") & (one.stretch == 0)
    one.loc[sel, "value"] = 45.0
    one.loc[sel, "nll"] = 1000 * math.log(45.0)
    f = forgetting(one).set_index("to_budget")
    assert not f.loc[16, "forgetting"] and not f.loc[16, "ruled_out"]


def test_crossing_extrapolates_a_line_in_log_tokens(table):
    c = crossing(gaps(table)).iloc[0]
    assert c.points == 3
    assert c.slope_per_10x < 0
    assert 4_000 < c.crossing_tokens < 16_000  # the gap changes sign between 4x and 16x


def test_reading_quotes_the_calls(table):
    text = " ".join(budget_reading(table))
    assert "20 % worse at 1k tokens (member worse)" in text
    assert "narrowed" in text


def test_versus_teacher_is_each_models_excess_over_the_teacher_on_the_same_text(table):
    from boomerang_lab.report.budget import versus_teacher

    with_teacher = pd.DataFrame(
        [
            *table.to_dict("records"),
            *rows(0, "teacher", 30, "wikitext_test", [25.0] * 3),
            *rows(0, "teacher", 30, "corpus_held_out", [10.0] * 3),
        ]
    )
    v = versus_teacher(with_teacher).set_index(["budget", "method"])
    assert v.loc[(1, "member"), "outside"] == pytest.approx(60 / 25 - 1)
    assert v.loc[(1, "member"), "inside"] == pytest.approx(30 / 10 - 1)
    assert "teacher" not in set(v.index.get_level_values("method"))


def test_reading_says_what_one_budget_cannot_answer(table):
    one = table[table.budget == 1]
    text = " ".join(budget_reading(one))
    assert "Not answered at 26 layers" in text and "1k tokens" in text
    assert "Not answered" not in " ".join(budget_reading(table))


def test_what_ran_and_the_title_say_which_budgets_and_sizes_each_method_has(table):
    """The title says "as the budget grows" only when members and direct students were both run at several budgets;
    otherwise it names the budgets (and the direct students' sizes) the table holds."""
    assert ran(table) == {"member": {1: [26], 4: [26], 16: [26]}, "direct": {1: [26], 4: [26], 16: [26]}}
    assert figure_title(table) == "Members vs direct students as the budget grows (seed 0)"
    assert figure_title(seeded_table(table, 1, 1.0)).endswith("(lines seed 0, hollow markers seed 1)")
    extra = pd.DataFrame(rows(4, "member", 20, "wikitext_test", [90.0] * 3))
    partial = pd.concat([table[(table.method == "member") | (table.budget == 1)], extra])
    assert ran(partial) == {"member": {1: [26], 4: [20, 26], 16: [26]}, "direct": {1: [26]}}
    assert ran_text(partial) == (
        "members at 1x (26 layers) and 4x (20, 26 layers) and 16x (26 layers); direct students at 1x (26 layers)"
    )
    assert figure_title(partial, "this CPU") == (
        "Members at 1x, 4x, 16x vs direct students at 1x (26 layers; this CPU; seed 0)"
    )


def test_reading_says_below_the_teacher_when_a_model_beats_it():
    r = [
        *rows(0, "teacher", 30, "wikitext_test", [25.0] * 3),
        *rows(0, "teacher", 30, "corpus_held_out", [10.0] * 3),
        *rows(1, "direct", 26, "wikitext_test", [30.0] * 3),
        *rows(1, "direct", 26, "corpus_held_out", [9.0] * 3),
        *rows(1, "member", 26, "wikitext_test", [32.0] * 3),
        *rows(1, "member", 26, "corpus_held_out", [12.0] * 3),
    ]
    text = " ".join(budget_reading(pd.DataFrame(r)))
    assert "% below the teacher's perplexity inside the corpus, 20 % above the teacher's perplexity outside" in text
    assert "it is better than the teacher inside the corpus." in text
    assert "member at 26 layers, 1x**: 20 % above the teacher's perplexity inside the corpus" in text
    assert "-10 %" not in text


def seeded_table(table, seed, scale):
    """`table`'s member and direct rows as another seed's models, every perplexity times `scale` (member) or 1."""
    other = table[table.method != "teacher"].copy()
    member = other.method == "member"
    other.loc[member, "value"] *= scale
    other.loc[member, "nll"] += other.loc[member, "scored"] * math.log(scale)
    return pd.concat([table.assign(seed=0), other.assign(seed=seed)], ignore_index=True)


def test_seeds_are_never_pooled_together(table):
    two = seeded_table(table, 1, 1.5)
    g0, g1 = gaps(two), gaps(two, seed=1)
    assert list(g0.gap) == pytest.approx(list(gaps(table).gap))
    out = g1[(g1.text == "wikitext_test") & (g1.budget == 1)].iloc[0]
    assert out.member == pytest.approx(90.0) and out.call == "member worse"
    p = pooled(two)
    assert len(p[(p.method == "member") & (p.budget == 1) & (p.text == "wikitext_test")]) == 2


def test_seed_gaps_say_whether_the_seeds_agree(table):
    from boomerang_lab.report.budget import seed_gaps

    assert seed_gaps(table).empty  # one seed: nothing to compare
    sg = seed_gaps(seeded_table(table, 1, 1.5)).set_index(["text", "budget"])
    assert sg.loc[("wikitext_test", 1), "gap_s1"] == pytest.approx(
        1.5 * (1 + sg.loc[("wikitext_test", 1), "gap_s0"]) - 1
    )
    assert bool(sg.loc[("wikitext_test", 1), "agree"])  # worse in both
    assert not bool(sg.loc[("wikitext_test", 16), "agree"])  # 10 % better in seed 0, worse in seed 1
    bullets = [b for b in budget_reading(seeded_table(table, 1, 1.5)) if b.startswith("**2 seeds")]
    assert any("the seeds' calls differ" in b for b in bullets)
    assert any("81 % worse (seed 1)" in b for b in bullets), bullets
    # seed 1's direct students are seed 0's: the same moves, said for seed 1
    moved = [b for b in budget_reading(seeded_table(table, 1, 1.5)) if b.startswith("**Seed 1, direct student")]
    assert len(moved) == 2 and "inside -25 %" in moved[0], moved
