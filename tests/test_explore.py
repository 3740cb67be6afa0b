import html

import pandas as pd
import pytest
import torch

from boomerang_lab import Family, LayerPlan, Order, init_student, load_model
from boomerang_lab.explore import explore
from tiny import perturb


@pytest.fixture(scope="module")
def setup():
    teacher, tokenizer = load_model("smollm2-tiny-random")
    plan = LayerPlan.paper(8)
    family = Family(teacher, perturb(init_student(teacher, plan)), plan)
    sizes = family.sizes("last")
    results = pd.DataFrame([dict(teacher="t", student="s", method=method, order="last", k=k, layers=row.layers,
                                 params=row.params, task="wikitext", metric="word_perplexity",
                                 value=100.0 - 10 * k + (50 if method == "naive" else 0), stderr=None, limit=None,
                                 timestamp="2026-01-01") for method in ("boomerang", "naive")
                            for k, row in sizes.set_index("k").iterrows()])
    shortgpt = results[results.method == "naive"].assign(method="shortgpt", order="block_influence",
                                                         value=lambda t: 1000.0 + t.layers)
    return family, tokenizer, pd.concat([results, shortgpt])


def test_slider_shows_the_members_size_and_metrics(setup):
    family, tokenizer, results = setup
    ui = explore(family, tokenizer, results)
    assert ui.size.max == family.K and list(ui.order.options) == ["last", "first"]
    sizes = family.sizes("last").set_index("k")
    for k in (2, 0, family.K):
        ui.size.value = k
        row = sizes.loc[k]
        assert f"<b>{row.layers}</b> layers" in ui.info.value
        assert f"<b>{row.params / 1e6:.2f} M</b> parameters" in ui.info.value
        assert f"<b>{row.bytes / 2**20:.1f} MiB</b>" in ui.info.value
        table = ui.member_metrics()
        assert table.loc[("wikitext", "word_perplexity")].to_dict() == {"boomerang": 100.0 - 10 * k,
                                                                        "naive": 150.0 - 10 * k,
                                                                        "shortgpt": 1000.0 + row.layers}
        assert f"{100.0 - 10 * k:.4g}" in ui.metrics.value


def test_order_selector_switches_the_member(setup):
    family, tokenizer, results = setup
    ui = explore(family, tokenizer, results)
    ui.size.value = 1
    ui.order.value = "first"
    first = family.sizes("first").set_index("k").loc[1]
    assert f"patched student layers: {first.patched}" in ui.info.value
    assert list(ui.member_metrics().columns) == ["shortgpt"]  # only the last order was measured; ShortGPT by layers


def test_explicit_orders_and_slider_range(setup):
    family, tokenizer, _ = setup
    custom = Order.explicit([4, 0], family.plan)
    ui = explore(family, tokenizer, orders=["last", custom])
    assert list(ui.order.options) == ["last", "explicit"]
    ui.order.value = "explicit"
    assert ui.size.max == 2
    ui.size.value = 2
    assert "patched student layers: [0, 4]" in ui.info.value


def test_generate_continues_the_prompt_with_the_selected_member(setup):
    family, tokenizer, _ = setup
    ui = explore(family, tokenizer, max_new_tokens=5)
    ui.size.value = 1
    ui.prompt.value = "The cat"
    ui.button.click()
    member = family.build(1, "last")
    inputs = tokenizer("The cat", return_tensors="pt")
    with torch.no_grad():
        expected = member.generate(**inputs, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    completion = tokenizer.decode(expected[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert completion and f"<b>The cat</b>{html.escape(completion)}</pre>" in ui.text.value
    ui.size.value = 2  # a new size clears the old text
    assert ui.text.value == ""
