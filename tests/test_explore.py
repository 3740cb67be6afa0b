import html
import itertools

import pandas as pd
import pytest
import torch

from boomerang_lab import Family, LayerPlan, Order, init_student, load_model
from boomerang_lab.family import members as family_module
from boomerang_lab.family.speed import SpeedCache, ms_per_token
from boomerang_lab.models.adapters import layers_of
from boomerang_lab.report.explore import explore
from tiny import perturb, tiny_model


@pytest.fixture(scope="module")
def setup():
    teacher, tokenizer = load_model("smollm2-tiny-random")
    plan = LayerPlan.paper(8)
    family = Family(teacher, perturb(init_student(teacher, plan)), plan)
    sizes = family.sizes("last")
    results = pd.DataFrame(
        [
            dict(
                teacher="t",
                student="s",
                method=method,
                order="last",
                k=k,
                layers=row.layers,
                params=row.params,
                task="wikitext",
                metric="word_perplexity",
                value=100.0 - 10 * k + (50 if method == "naive" else 0),
                stderr=None,
                limit=None,
                timestamp="2026-01-01",
            )
            for method in ("boomerang", "naive")
            for k, row in sizes.set_index("k").iterrows()
        ]
    )
    shortgpt = results[results.method == "naive"].assign(
        method="shortgpt", order="block_influence", value=lambda t: 1000.0 + t.layers
    )
    return family, tokenizer, pd.concat([results, shortgpt])


@pytest.fixture
def fake_speed(monkeypatch):
    """A stand-in for the timing: 1 ms per token per layer, counting the measurements."""
    calls = []

    def fake(member, **measure):
        calls.append(len(layers_of(member)))
        return float(len(layers_of(member)))

    monkeypatch.setattr(family_module, "ms_per_token", fake)
    return calls


def test_slider_shows_the_members_size_and_metrics(setup, fake_speed):
    family, tokenizer, results = setup
    family.speed_cache = SpeedCache()
    ui = explore(family, tokenizer, results)
    assert ui.size.max == family.K and list(ui.order.options) == ["last", "first"]
    assert list(ui.task.options) == ["wikitext", "parameters"]
    sizes = family.sizes("last").set_index("k")
    for k in (2, 0, family.K):
        ui.size.value = k
        row = sizes.loc[k]
        assert f"<b>{row.layers}</b> layers" in ui.info.value
        assert f"<b>{row.params / 1e6:.2f} M</b> parameters" in ui.info.value
        assert f"<b>{row.bytes / 2**20:.1f} MiB</b>" in ui.info.value
        assert f"<b>{row.layers:.3g} ms/token</b>" in ui.speed.value  # the fake: 1 ms per layer
        table = ui.member_metrics()
        assert table.loc[("wikitext", "word_perplexity")].to_dict() == {
            "boomerang": 100.0 - 10 * k,
            "naive": 150.0 - 10 * k,
            "shortgpt": 1000.0 + row.layers,
        }
        assert f"{100.0 - 10 * k:.4g}" in ui.metrics.value
    ui.size.value = 2
    assert sorted(fake_speed) == sorted({sizes.layers[k] for k in (0, 2, family.K)})  # each size timed once


def test_the_plot_marks_the_selected_member_and_moves_with_the_slider(setup, fake_speed):
    family, tokenizer, results = setup
    ui = explore(family, tokenizer, results)
    sizes = family.sizes("last").set_index("k")
    images, markers = set(), set()
    for k in range(family.K + 1):
        ui.size.value = k
        assert ui.plot.value[:4] == b"\x89PNG"
        images.add(ui.plot.value)
        markers.add(ui.marker.value)
        assert f"marked: k = {k}, {sizes.layers[k]} layers, word_perplexity = {100.0 - 10 * k:.4g}" in ui.marker.value
        fig = ui.figure()
        ring = [c for c in fig.axes[0].collections if c.get_offsets().shape == (1, 2)][-1]
        assert tuple(ring.get_offsets()[0]) == (sizes.layers[k], 100.0 - 10 * k)
    assert len(images) == len(markers) == family.K + 1
    ui.task.value = "parameters"
    assert f"parameters (M) = {sizes.params[ui.size.value] / 1e6:.4g}" in ui.marker.value
    bare = explore(family, tokenizer, measure_speed=False)  # no results: the parameters curve, no speed
    assert list(bare.task.options) == ["parameters"] and bare.speed.value == "" and "marked: k = 0" in bare.marker.value


def test_order_selector_switches_the_member(setup, fake_speed):
    family, tokenizer, results = setup
    ui = explore(family, tokenizer, results)
    ui.size.value = 1
    ui.order.value = "first"
    first = family.sizes("first").set_index("k").loc[1]
    assert f"patched student layers: {first.patched}" in ui.info.value
    assert list(ui.member_metrics().columns) == ["shortgpt"]  # only the last order was measured; ShortGPT by layers


def test_explicit_orders_and_slider_range(setup, fake_speed):
    family, tokenizer, _ = setup
    custom = Order.explicit([4, 0], family.plan)
    ui = explore(family, tokenizer, orders=["last", custom])
    assert list(ui.order.options) == ["last", "explicit"]
    ui.order.value = "explicit"
    assert ui.size.max == 2 and ui.compare.value == 2 and len(ui.compare.options) == 3
    ui.size.value = 2
    assert "patched student layers: [0, 4]" in ui.info.value


def _greedy(family, tokenizer, k, prompt, n):
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = family.build(k, "last").generate(
            **inputs, max_new_tokens=n, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def test_generate_shows_two_sizes_side_by_side(setup, fake_speed):
    family, tokenizer, _ = setup
    ui = explore(family, tokenizer, max_new_tokens=5)
    ui.size.value = 1
    ui.prompt.value = "The cat"
    assert ui.compare.value == family.K  # the teacher beside by default
    ui.button.click()
    completion = _greedy(family, tokenizer, 1, "The cat", 5)
    teacher = _greedy(family, tokenizer, family.K, "The cat", 5)
    assert completion and f"<b>The cat</b>{html.escape(completion)}</pre>" in ui.text.value
    assert f"<b>The cat</b>{html.escape(teacher)}</pre>" in ui.compare_text.value
    assert "<b>k = 1 · " in ui.text.value and f"<b>k = {family.K} · 8 layers</b>" in ui.compare_text.value
    ui.size.value = 2  # a new size clears its old text; the comparison stays
    assert ui.text.value == "" and teacher in ui.compare_text.value
    ui.compare.value = 0
    assert ui.compare_text.value == ""
    summary = ui.summary()
    assert list(summary.index) == [2, 0] and list(summary["ms/token"]) == list(summary.layers.astype(float))


def test_for_budget_takes_a_speed_budget_measured_once_per_size(setup, fake_speed, tmp_path):
    family, _, _ = setup
    family.speed_cache = SpeedCache(tmp_path / "speed.json")
    sizes = family.sizes("last")
    member = family.for_budget(max_ms_per_token=6.5)  # the fake gives 1 ms per layer: the largest with <= 6 layers
    assert len(layers_of(member)) == sizes[sizes.layers <= 6].layers.max()
    measured = len(fake_speed)
    assert family.for_budget(max_ms_per_token=6.5) is member and len(fake_speed) == measured  # cached in memory
    family.speed_cache = SpeedCache(tmp_path / "speed.json")  # a new session reads the file
    family.for_budget(max_ms_per_token=6.5)
    assert len(fake_speed) == measured
    both = family.for_budget(max_ms_per_token=100, max_params=int(sizes.params.sort_values().iloc[1]))
    assert both.boomerang["k"] == int(sizes.loc[sizes.params == sizes.params.sort_values().iloc[1], "k"].iloc[0])
    with pytest.raises(ValueError, match="No member generates at 1 ms/token or faster on this machine"):
        family.for_budget(max_ms_per_token=1)
    with pytest.raises(ValueError, match="Give max_params, max_bytes and/or max_ms_per_token"):
        family.for_budget()


def test_a_speed_budget_bisects_the_sizes_instead_of_timing_each(fake_speed):
    """15 sizes (a 30-layer teacher): a budget takes about log2(15) + 2 timings, not one per size from the largest
    down; with the sizes the explorer showed already timed, one just below the teacher takes one."""
    teacher = tiny_model("llama", 30)
    plan = LayerPlan.paper(30)
    family = Family(teacher, perturb(init_student(teacher, plan)), plan)
    sizes = family.sizes("last")
    for budget, timed, most in ((18.5, (), 6), (29.5, (), 6), (20.5, (), 6), (29.5, (0, 7, 14), 1)):
        family.speed_cache = SpeedCache()
        for k in timed:  # what the explorer already showed
            family.ms_per_token(k)
        fake_speed.clear()
        member = family.for_budget(max_ms_per_token=budget)
        fast = sizes[sizes.layers <= budget]  # the fake: 1 ms per layer
        assert member.boomerang["k"] == fast.loc[fast.params.idxmax(), "k"]  # the largest by parameters
        assert len(fake_speed) <= most, (budget, fake_speed)
    fake_speed.clear()
    assert family.for_budget(max_ms_per_token=29.5) is member and fake_speed == []


def test_ms_per_token_times_greedy_generation_with_an_injected_timer(setup):
    family, _, _ = setup
    ticks = itertools.count(step=0.032)  # 32 ms per timed run
    assert ms_per_token(family.build(0), new_tokens=16, timer=lambda: next(ticks)) == pytest.approx(2.0)
    real = family.ms_per_token(1, "last", new_tokens=4)  # the real clock, on the tiny model: just positive
    assert real > 0 and family.ms_per_token(1, "last", new_tokens=4) == real
