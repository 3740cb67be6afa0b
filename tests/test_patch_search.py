"""Patch orders searched on calibration KL: validity, exactness of the fast subset path, optimality, caching."""

import importlib.util
import json
import sys
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import papermill
import pytest
import torch
from transformers import AutoModelForCausalLM, BertConfig, BertForMaskedLM

from boomerang_lab import Family, LayerPlan, Order, curve_quality, init_student
from boomerang_lab.data import CORPUS_FILES, data_file
from boomerang_lab.family import search as patch_search
from boomerang_lab.family.search import (
    brute_force,
    calibration_set,
    klpatch,
    objective,
    optimal,
    order_kl,
    patched_layers,
    search,
    shortest_path,
    subset_kl,
)
from boomerang_lab.models.adapters import layers_of
from tiny import ARCHS, VOCAB, perturb, tiny_model

IRREGULAR = LayerPlan.from_kept((0, 1, 4, 5, 7, 9), 10)
"""Blocks [0] [1,2,3] [4] [5,6] [7,8] [9]: a single layer before the first multi-layer block, a 3-layer block,
single layers in the middle and at the end (K=3)."""


def make_family(arch: str = "llama", plan: LayerPlan = IRREGULAR) -> Family:
    teacher = tiny_model(arch, plan.num_teacher_layers)
    return Family(teacher, perturb(init_student(teacher, plan)), plan)


def ids(n: int = 5, length: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, VOCAB, (n, length), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def reference_table(family: Family, calibration: torch.Tensor) -> list[float]:
    """KL of every set of patched blocks: each member run by family.build, the KL in float64 by the textbook formula."""
    plan, x = family.plan, calibration
    target = torch.log_softmax(family.teacher(x).logits.double(), -1)
    table = []
    for mask in range(2**family.K):
        member = family.build(order=Order.explicit([patched_layers(plan, mask)] if mask else [], plan))
        logp = torch.log_softmax(member(x).logits.double(), -1)
        table.append((target.exp() * (target - logp)).sum(-1).mean().item())
    return table


def assert_valid(order: Order, plan: LayerPlan) -> None:
    """Each size patches exactly one more multi-layer block; the last size patches every student layer."""
    assert order.num_sizes == len(plan.multi_layer)
    for k in range(1, order.num_sizes + 1):
        new = order.patched(k) - order.patched(k - 1)
        assert len(new & set(plan.multi_layer)) == 1, (order, k)
    assert order.patched(order.num_sizes) == set(range(plan.num_student_layers))


# --- the fast path equals family.build ---------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_subset_kl_equals_kl_of_built_members(arch):
    family = make_family(arch)
    calibration = ids()
    fast = subset_kl(family, calibration, batch_size=2, progress=False)  # batches 2+2+1: uneven on purpose
    assert fast.shape == (2**family.K,)
    torch.testing.assert_close(
        fast, torch.tensor(reference_table(family, calibration), dtype=torch.float64), rtol=0, atol=1e-6
    )  # float32 logits
    assert fast[0] > 1e-3 and abs(fast[-1]) < 1e-6  # the student differs; all patched is the teacher
    for mask in (1, 6):  # same batches and KL formula as the fast path: equal to rounding, i.e. same hidden states
        member = Order.explicit([patched_layers(family.plan, mask)], family.plan)
        assert order_kl(family, member, calibration, batch_size=2)[1] == pytest.approx(fast[mask].item(), abs=1e-12)
    some = subset_kl(family, calibration, [5, 0, 5], batch_size=3, progress=False)
    torch.testing.assert_close(some, fast[[5, 0, 5]], rtol=0, atol=1e-6)


def _bert() -> BertForMaskedLM:
    torch.manual_seed(0)
    return BertForMaskedLM(
        BertConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            num_hidden_layers=8,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=32,
        )
    ).eval()


@pytest.mark.parametrize(
    "make_teacher",
    [lambda: tiny_model("llama", 8, tie=False), _bert],
    ids=["untied_head_follows_the_end_blocks", "post_ln_encoder_without_final_norm"],
)
def test_subset_kl_on_other_layouts(make_teacher):
    teacher = make_teacher()
    plan = LayerPlan.paper(8)
    family = Family(teacher, perturb(init_student(teacher, plan)), plan)
    calibration = ids(3)
    torch.testing.assert_close(
        subset_kl(family, calibration, progress=False),
        torch.tensor(reference_table(family, calibration), dtype=torch.float64),
        rtol=0,
        atol=1e-6,
    )


def test_patched_layers_follow_the_groups_of_from_blocks():
    assert patched_layers(IRREGULAR, 0b001) == [0, 1, 2]
    assert patched_layers(IRREGULAR, 0b110) == [3, 4, 5]
    assert patched_layers(IRREGULAR, 0b111) == list(range(6))


# --- orders --------------------------------------------------------------------------------------------------------
def test_every_order_is_a_valid_sequence():
    family = make_family()
    calibration = ids()
    plan = family.plan
    search(family, "klpatch", calibration)
    search(family, "optimal", calibration)
    explicit = Order.explicit([[3], [0, 1, 2], [4, 5]], plan)
    for order in ("last", "first", "klpatch", "optimal", explicit, Order.from_blocks(plan, [4, 1, 3])):
        assert_valid(family.order(order), plan)
    assert family.order("klpatch").name == "klpatch" and family.order("optimal").name == "optimal"
    for k in range(family.K + 1):  # searched orders build like any other
        assert family.build(k, "optimal").boomerang["patched"] == sorted(family.order("optimal").patched(k))


@pytest.mark.parametrize("layers", [8, 10, 12])  # K = 3, 4, 5
def test_optimal_equals_brute_force_and_never_loses_to_klpatch(layers):
    family = make_family("llama", LayerPlan.paper(layers))
    calibration = ids(4, 6)
    table = reference_table(family, calibration)
    best, _ = brute_force(table)

    multi = family.plan.multi_layer

    def score(order: Order) -> float:  # the objective, read from the reference table
        return sum(table[sum(1 << b for b, j in enumerate(multi) if j in order.patched(k))] for k in range(1, family.K))

    orders = {
        name: fn(family, calibration, progress=False) for name, fn in (("optimal", optimal), ("klpatch", klpatch))
    }
    assert score(orders["optimal"]) == pytest.approx(best - table[-1], abs=1e-7)
    for order in (orders["klpatch"], family.order("last"), family.order("first")):
        assert score(orders["optimal"]) <= score(order) + 1e-7
    # Two float32 paths (the subset walk and whole members) differ in summation order: 3e-5 relative seen here.
    assert objective(order_kl(family, orders["optimal"], calibration)) == pytest.approx(
        score(orders["optimal"]), rel=1e-4, abs=1e-6
    )


def test_shortest_path_equals_brute_force_on_random_tables():
    rng = np.random.default_rng(0)
    for K in range(1, 8):
        for _ in range(3):
            table = rng.random(2**K)
            sequence = shortest_path(table)
            assert sorted(sequence) == list(range(K))
            assert table[np.cumsum([1 << b for b in sequence])].sum() == pytest.approx(brute_force(table)[0])


def test_klpatch_is_greedy():
    family = make_family()
    calibration = ids()
    table = subset_kl(family, calibration, progress=False).numpy()
    chosen, expected = 0, []
    for _ in range(family.K):
        best = min((chosen | 1 << b for b in range(family.K) if not chosen >> b & 1), key=lambda s: table[s])
        expected.append(family.plan.multi_layer[(best ^ chosen).bit_length() - 1])
        chosen = best
    assert klpatch(family, calibration, progress=False) == Order.from_blocks(family.plan, expected, "klpatch")


# --- caching -----------------------------------------------------------------------------------------------------
def test_search_is_cached_in_the_family_and_next_to_the_student(tmp_path, monkeypatch):
    teacher = tiny_model("llama", 8)
    plan = LayerPlan.paper(8)
    perturb(init_student(teacher, plan)).save_pretrained(tmp_path)
    plan.save(tmp_path)
    student = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    calibration = ids()
    family = Family(teacher, student, plan)
    order = search(family, "optimal", calibration)
    assert family.order("optimal") is order
    saved = json.loads((tmp_path / "order_optimal.json").read_text())
    assert Order.load(tmp_path / "order_optimal.json") == order and len(saved["fingerprint"]) == 64

    def fail(*_, **__):
        raise AssertionError("searched again")

    monkeypatch.setitem(patch_search.SEARCHES, "optimal", fail)
    assert search(Family(teacher, student, plan), "optimal", calibration) == order  # read back from the json
    with pytest.raises(AssertionError, match="searched again"):  # another calibration set: not the same search
        search(Family(teacher, student, plan), "optimal", ids(seed=1))
    other = patch_search.SearchConfig(stride=2)
    with pytest.raises(AssertionError, match="searched again"):  # other settings: not the same search
        search(Family(teacher, student, plan), "optimal", calibration, config=other)
    changed = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        layers_of(changed)[1].mlp.down_proj.weight[0, 0] += 1e-3
    with pytest.raises(AssertionError, match="searched again"):  # another student: not the same search
        search(Family(teacher, changed, plan), "optimal", calibration)


def test_a_saved_search_is_reused_with_its_recorded_settings(tmp_path, monkeypatch):
    """A family that names "klpatch" without settings reuses the order searched next to the student, with the settings
    recorded there (the main job searches once in notebook 01; 02-07 and the explorer read it)."""
    teacher = tiny_model("llama", 8)
    plan = LayerPlan.paper(8)
    perturb(init_student(teacher, plan)).save_pretrained(tmp_path)
    plan.save(tmp_path)
    student = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    config = patch_search.SearchConfig(num_sequences=3, seq_len=8, seed=5, stride=2)
    monkeypatch.setattr(patch_search, "teacher_tokenizer", lambda *a: None)
    monkeypatch.setattr(
        patch_search.SearchConfig, "calibration", lambda self, tok: ids(self.num_sequences, self.seq_len, self.seed)
    )
    order = search(Family(teacher, student, plan), "klpatch", config=config)
    saved = json.loads((tmp_path / "order_klpatch.json").read_text())
    assert saved["search"]["stride"] == 2 and saved["seconds"] >= 0
    monkeypatch.setitem(patch_search.SEARCHES, "klpatch", lambda *a, **k: pytest.fail("searched again"))
    fresh = Family(teacher, student, plan)
    assert patch_search.search_config(fresh) == config
    assert fresh.order("klpatch") == order


def test_search_config_errors():
    with pytest.raises(ValueError, match="stride must be a positive integer"):
        patch_search.SearchConfig(stride=0)
    with pytest.raises(ValueError, match="autocast must be a torch dtype name.*'bf17'"):
        patch_search.SearchConfig(autocast="bf17")


def test_fast_klpatch_equals_the_greedy_over_subset_kl_with_stride():
    """The cached greedy (prefix states, reused first blocks, P W targets) picks what a plain greedy over
    subset_kl's values picks, also when only every 2nd position is scored, and the strided KL is the KL averaged over
    those positions (a direct computation from built members)."""
    family = make_family("llama", LayerPlan.paper(16))
    calibration = ids(4, 9)
    table = subset_kl(family, calibration, progress=False, stride=2).numpy()
    chosen, expected = 0, []
    for _ in range(family.K):
        best = min((chosen | 1 << b for b in range(family.K) if not chosen >> b & 1), key=lambda s: table[s])
        expected.append(family.plan.multi_layer[(best ^ chosen).bit_length() - 1])
        chosen = best
    assert klpatch(family, calibration, progress=False, stride=2) == Order.from_blocks(family.plan, expected, "klpatch")
    with torch.no_grad():
        target = torch.log_softmax(family.teacher(calibration).logits.double()[:, ::2], -1)
        mask = 0b101
        member = family.build(order=Order.explicit([patched_layers(family.plan, mask)], family.plan))
        logp = torch.log_softmax(member(calibration).logits.double()[:, ::2], -1)
    direct = (target.exp() * (target - logp)).sum(-1).mean().item()
    assert table[mask] == pytest.approx(direct, abs=1e-6)


def test_named_order_uses_the_familys_search_config(monkeypatch):
    family = make_family()
    calls = []
    monkeypatch.setattr(patch_search.SearchConfig, "calibration", lambda self, tok: calls.append(self) or ids())
    monkeypatch.setattr(patch_search, "teacher_tokenizer", lambda *a: None)
    family.search_config = patch_search.SearchConfig(num_sequences=3, stride=2)
    assert family.order("klpatch") is family.order("klpatch")  # searched once, then cached
    assert calls == [family.search_config]


def test_default_calibration_needs_a_tokenizer_directory():
    with pytest.raises(ValueError, match="tokenizer"):
        make_family().order("optimal")


def test_unknown_searched_order():
    with pytest.raises(ValueError, match="klpatch"):
        search(make_family(), "middle", ids())
    with pytest.raises(ValueError, match="'middle'.*klpatch.*optimal"):
        make_family().order("middle")


# --- calibration data ----------------------------------------------------------------------------------------------
class CharTokenizer:
    """One id per character: enough to check which text the windows come from."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}


def test_calibration_set_is_training_text_deterministic_and_mixed():
    batch = calibration_set(CharTokenizer(), num_sequences=len(CORPUS_FILES) + 1, seq_len=40)
    assert batch.shape == (len(CORPUS_FILES) + 1, 40)
    assert torch.equal(batch, calibration_set(CharTokenizer(), num_sequences=len(CORPUS_FILES) + 1, seq_len=40))
    assert not torch.equal(batch, calibration_set(CharTokenizer(), len(CORPUS_FILES) + 1, 40, seed=1))
    for row, name in zip(batch, [*CORPUS_FILES, CORPUS_FILES[0]]):
        assert "".join(map(chr, row.tolist())) in data_file(name).read_text(encoding="utf-8")
    with pytest.raises(ValueError, match="positive"):
        calibration_set(CharTokenizer(), num_sequences=0)


# --- curve quality -------------------------------------------------------------------------------------------------
def curve(order: str, ppl: list[float], params: list[float] | None = None) -> pd.DataFrame:
    params = params or list(np.linspace(0, 100, len(ppl)))
    return pd.DataFrame(
        {"order": order, "k": range(len(ppl)), "layers": range(16, 16 + len(ppl)), "params": params, "ppl": ppl}
    )


def test_curve_quality_on_hand_made_curves():
    table = pd.concat(
        [
            curve("line", [80, 70, 60, 50, 40]),
            curve("bump", [80, 90, 60, 50, 40]),  # one step up of 10 on a gap of 40
            curve("convex", [80, 40, 40]),  # y = 1, 0, 0 at x = 0, .5, 1: area .25 below the line
            curve("cross", [80, 90, 40, 40, 40], [0, 25, 50, 75, 100]),  # above then below the line
        ]
    )
    q = curve_quality(table, x="params").set_index("order")
    assert q.equals(curve_quality(table).set_index("order"))  # evenly spaced: the same in layers
    assert q.loc["line", ["violations", "worst_violation", "area", "signed_area"]].tolist() == pytest.approx(
        [0, 0, 0, 0]
    )
    assert q.loc["bump", "violations"] == 1 and q.loc["bump", "worst_violation"] == pytest.approx(0.25)
    assert q.loc["bump", "area"] == pytest.approx(0.25 * 0.5) == q.loc["bump", "signed_area"]
    assert q.loc["convex", "area"] == pytest.approx(0.25) and q.loc["convex", "signed_area"] == pytest.approx(-0.25)
    # d = y - (1 - x) at x = 0, .25, .5, .75, 1: 0, .5, -.5, -.25, 0 -> |d| integral with a kink at x = .375
    assert q.loc["cross", "area"] == pytest.approx(0.0625 + 0.0625 + 0.09375 + 0.03125)
    assert q.loc["cross", "signed_area"] == pytest.approx(0.0625 + 0 - 0.09375 - 0.03125)
    assert q.loc["cross", "sizes"] == 5


def test_curve_quality_higher_is_better_groups_and_errors():
    table = pd.concat([curve("a", [0.3, 0.5, 0.4, 0.6]), curve("b", [0.3, 0.4, 0.5, 0.6])]).rename(
        columns={"ppl": "acc"}
    )
    table["variant"] = "v"
    q = curve_quality(table, metric="acc", by=("variant", "order"), lower_is_better=False).set_index("order")
    assert q.violations.to_dict() == {"a": 1, "b": 0} and q.loc["a", "worst_violation"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="ppl"):
        curve_quality(table)
    with pytest.raises(ValueError, match="end points"):
        curve_quality(curve("flat", [50, 40, 50]))
    tied = curve("tied", [80, 60, 40], params=[85, 120, 100])  # mixed members hold two embedding matrices
    with pytest.raises(ValueError, match="params increasing"):
        curve_quality(tied, x="params")
    assert curve_quality(tied).area.item() == pytest.approx(0)


# --- the study (benchmarks/study_orders.py) and its notebook -----------------------------------------------------
ROOT = Path(__file__).resolve().parent.parent


def test_study_smoke_run_and_notebook(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("study_orders", ROOT / "benchmarks" / "study_orders.py")
    study = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "study_orders", study)  # dataclasses look their module up
    spec.loader.exec_module(study)
    out = study.main(
        [
            "--profile",
            "smoke",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "out"),
            "--work",
            str(tmp_path / "work"),
            "--variants",
            "paper",
        ]
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "curve_quality.csv",
        "distill_log.csv",
        "orders.json",
        "orders_ppl.csv",
        "orders_ppl.png",
        "study.json",
    ]
    table = pd.read_csv(out / "orders_ppl.csv")
    assert list(table.columns) == ["variant", "order", "k", "layers", "params", "ppl", "word_ppl", "kl"]
    K = json.loads((out / "orders.json").read_text())["paper"]["K"]
    assert table.groupby("order").k.apply(list).to_dict() == {o: list(range(K + 1)) for o in study.ORDERS}
    assert table.groupby("k").ppl.nunique()[[0, K]].tolist() == [1, 1]  # student and teacher: the same for all
    quality = pd.read_csv(out / "curve_quality.csv").set_index("order")
    assert quality.kl_objective["optimal"] <= quality.kl_objective.min() + 1e-6
    assert (tmp_path / "work" / "paper" / "order_optimal.json").exists()  # saved next to the student

    executed = tmp_path / "07_orders.ipynb"
    papermill.execute_notebook(
        str(ROOT / "notebooks" / "07_orders.ipynb"),
        str(executed),
        cwd=str(tmp_path),
        progress_bar=False,
        parameters={  # this run's part on the study's own student (smoke), then the study's figures
            "study": str(out),
            "figures": str(tmp_path / "fig"),
            "profile": "smoke",
            "orders": ["last"],
            "compare": ["first"],
            "teacher": "smollm2-tiny-random",
            "student": str(tmp_path / "work" / "paper"),
            "results": str(tmp_path / "results.csv"),
        },
    )
    nb = nbformat.read(executed, as_version=4)
    assert not [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert (tmp_path / "fig" / "07_orders.png").stat().st_size > 1000
    assert (tmp_path / "fig" / "07_orders_run.png").stat().st_size > 1000


def test_notebook_source_has_a_parameters_cell():  # its outputs, if any, are the main job's (test_notebooks.py)
    nb = nbformat.read(ROOT / "notebooks" / "07_orders.ipynb", as_version=4)
    assert [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]


def test_notebook_01s_stage_searches_the_profiles_order_once_and_saves_it(tmp_path, monkeypatch, capsys):
    """`stages.search_orders` searches the profile's klpatch with the profile's settings and saves it next to the
    student; a second call (notebook 02 onwards, another process) reads it back without searching."""
    from boomerang_lab.config import profiles
    from boomerang_lab.study import stages

    teacher = tiny_model("llama", 8)
    plan = LayerPlan.paper(8)
    perturb(init_student(teacher, plan)).save_pretrained(tmp_path)
    plan.save(tmp_path)
    monkeypatch.setattr(patch_search, "teacher_tokenizer", lambda *a: None)
    monkeypatch.setattr(
        patch_search.SearchConfig, "calibration", lambda self, tok: ids(self.num_sequences, self.seq_len, self.seed)
    )
    monkeypatch.setattr(  # the tiny student has no tokenizer files: load the model and plan alone
        "boomerang_lab.models.loading.load_student",
        lambda path, device=None: (AutoModelForCausalLM.from_pretrained(path).eval(), None, LayerPlan.load(path)),
    )
    profile = profiles.get("smoke", pipeline={"orders": ["klpatch"], "search": {"num_sequences": 3, "seq_len": 8}})
    found = stages.search_orders(profile, teacher, tmp_path)
    saved = json.loads((tmp_path / "order_klpatch.json").read_text())
    assert saved["search"]["num_sequences"] == 3
    printed = capsys.readouterr().out
    assert "klpatch order:" in printed and "searched in" in printed and "reused" not in printed
    assert "3 x 8 calibration tokens" in printed
    monkeypatch.setitem(patch_search.SEARCHES, "klpatch", lambda *a, **k: pytest.fail("searched again"))
    assert stages.search_orders(profile, teacher, tmp_path) == found
    # the reuse is printed as one, with the seconds the saved search took, never as a search of this call's seconds
    printed = capsys.readouterr().out
    assert f"reused the saved order_klpatch.json (searched in {saved['seconds']:.0f} s; 3 x 8 calibration" in printed
    assert stages.search_orders(profiles.get("smoke"), teacher, tmp_path) == {}  # no searched order in the profile


def test_search_line_tells_a_reused_order_from_one_searched_now():
    from boomerang_lab.study.stages import search_line

    record = json.dumps(
        {
            "name": "klpatch",
            "search": {"num_sequences": 4, "seq_len": 256, "stride": 1, "autocast": None},
            "seconds": 322.4,
        }
    )
    assert search_line("klpatch", record, record, 2.0) == (
        "reused the saved order_klpatch.json (searched in 322 s; 4 x 256 calibration tokens, every 1 scored, "
        "autocast None)"
    )
    fresh = json.dumps({**json.loads(record), "seconds": 52.0})
    assert search_line("klpatch", None, fresh, 52.3).startswith("searched in 52 s; 4 x 256 calibration tokens")
    assert search_line("klpatch", record, fresh, 52.3).startswith("searched in 52 s")  # a stale file searched again
