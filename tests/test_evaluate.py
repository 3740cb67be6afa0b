"""Evaluation: local lm-eval tasks, the wrapper's exactness, perplexity, the baselines, and resumable sweeps."""

import copy
import importlib
import json
import math
from dataclasses import asdict, replace

import pandas as pd
import pytest
import torch
from torch import nn

from boomerang_lab import Family, LayerPlan, init_student
from boomerang_lab.config.profiles import distill_config as profile
from boomerang_lab.distill.trainer import CONFIG_FILE, run_name
from boomerang_lab.evaluate import (
    LOCAL_TASKS,
    PPL_TASK,
    PerplexityConfig,
    SweepConfig,
    block_influence,
    evaluate_lm,
    naive_pruning,
    perplexity,
    read_results,
    shortgpt,
    sweep,
    teacher_view,
)
from boomerang_lab.evaluate.baselines import naive_layers
from boomerang_lab.evaluate.lm_eval import manager_for
from boomerang_lab.evaluate.tasks import utils as task_data
from boomerang_lab.models import loading
from boomerang_lab.models.adapters import get_adapter, layers_of, set_num_layers
from boomerang_lab.models.loading import load_model
from boomerang_lab.study.cli import main
from tiny import ARCHS, VOCAB, perturb, tiny_model

sweep_module = importlib.import_module("boomerang_lab.evaluate.sweep")  # the package exports the function `sweep`

PLAN8 = LayerPlan.paper(8)  # kept 0 2 4 6 7: blocks [0,1] [2,3] [4,5] [6] [7], K=3
TEXT = ("The quick brown fox jumps over the lazy dog. " * 8 + "Perplexity counts every token once.\n") * 3


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on a shared CPU the spinning threads cost several times over."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def smol():
    """The tiny random Llama with SmolLM2's tokenizer (8 layers, 64 wide)."""
    return load_model("smollm2-tiny-random")


@pytest.fixture(scope="module")
def smol_family(smol):
    teacher, _ = smol
    return Family(teacher, perturb(init_student(teacher, PLAN8)), PLAN8)


def ids(n=3, length=12, seed=0):
    return torch.randint(1, VOCAB, (n, length), generator=torch.Generator().manual_seed(seed))


# --- local task data and configs -----------------------------------------------------------------------------------
SIZES = {
    "arc_easy": 2376,
    "arc_challenge": 1172,
    "piqa": 1838,
    "hellaswag": 10042,
    "winogrande": 1267,
    "boolq": 3270,
    "openbookqa": 500,
    "lambada_openai": 5153,
    "rte": 277,
    "wikitext": 62,
}


@pytest.mark.parametrize("name", SIZES)
def test_local_files_load_in_the_stock_schema(name):
    split = getattr(task_data, name)()
    (docs,) = split.values()
    assert len(docs) == SIZES[name]
    doc = docs[0]
    if name.startswith("arc"):
        assert doc["answerKey"] in doc["choices"]["label"] and len(doc["choices"]["text"]) == len(
            doc["choices"]["label"]
        )
    if name == "boolq":
        assert not doc["question"].endswith("?") and not doc["passage"].startswith("Passage: ")
        assert sum(d["label"] for d in docs) == 2033  # yes answers of the official dev set
    if name == "wikitext":
        assert docs[0]["page"].startswith(" = Robert Boulter = \n")
        assert (
            sum(len(d["page"]) for d in docs) + len(docs) - 1
            == len(task_data.data_file("wikitext-2/wiki.test.raw").read_text(encoding="utf-8")) - 2
        )  # every line but the leading blank one


def test_missing_file_error_names_the_file(monkeypatch, tmp_path):
    monkeypatch.setattr("boomerang_lab.data.DATA_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="piqa/valid.jsonl"):
        task_data.piqa.__wrapped__()


EXPECTED = {
    "arc_easy_local": {"acc", "acc_norm"},
    "arc_challenge_local": {"acc", "acc_norm"},
    "piqa_local": {"acc", "acc_norm"},
    "hellaswag_local": {"acc", "acc_norm"},
    "winogrande_local": {"acc"},
    "boolq_local": {"acc"},
    "openbookqa_local": {"acc", "acc_norm"},
    "lambada_openai_local": {"perplexity", "acc"},
    "rte_local": {"acc"},
    "wikitext_local": {"word_perplexity", "byte_perplexity", "bits_per_byte"},
}


def test_every_local_task_runs_with_a_limit(smol):
    model, tok = smol
    rows = evaluate_lm(model, tok, list(LOCAL_TASKS), limit=2)
    assert set(EXPECTED) == set(LOCAL_TASKS)
    for task, metrics in EXPECTED.items():
        got = rows[rows.task == task]
        assert set(got.metric) == metrics, task
        assert got.value.notna().all()
    accuracy = rows[rows.metric.str.startswith("acc")].value
    assert (accuracy * 2).isin([0.0, 1.0, 2.0]).all()  # a mean over exactly 2 examples: the limit was applied


def test_unknown_task_is_a_clear_error(smol):
    with pytest.raises(ValueError, match="arc_easy_local"):
        evaluate_lm(*smol, ["arc_eazy_local"], limit=1)


def test_wrapper_gives_the_numbers_of_plain_simple_evaluate(smol, smol_family):
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    _, tok = smol
    member = smol_family.build(1, "last")
    tasks = ["arc_easy_local", "winogrande_local", "lambada_openai_local"]
    ours = evaluate_lm(member, tok, tasks, limit=3)
    plain = simple_evaluate(
        HFLM(pretrained=member, tokenizer=tok),
        tasks=tasks,
        limit=3,
        bootstrap_iters=1000,
        task_manager=manager_for(tasks),
    )["results"]
    assert len(ours) == 5
    for row in ours.itertuples():
        assert row.value == plain[row.task][f"{row.metric},none"]
        assert row.stderr == plain[row.task][f"{row.metric}_stderr,none"]


def test_progress_bars_can_be_hidden_without_changing_numbers(smol, smol_family, capfd):
    _, tok = smol
    member = smol_family.build(1, "last")
    shown = evaluate_lm(member, tok, ["arc_easy_local"], limit=2)
    assert "Running loglikelihood requests" in capfd.readouterr().err
    hidden = evaluate_lm(member, tok, ["arc_easy_local"], limit=2, progress=False)
    assert "Running loglikelihood requests" not in capfd.readouterr().err
    pd.testing.assert_frame_equal(shown, hidden)
    import lm_eval.api.task

    assert lm_eval.api.task.tqdm.__module__.startswith("tqdm")  # restored


# --- perplexity ----------------------------------------------------------------------------------------------------
def test_perplexity_single_window_is_the_model_loss(smol):
    model, tok = smol
    n = len(tok(TEXT)["input_ids"])
    result = perplexity(model, tok, TEXT, PerplexityConfig(window=n, stride=n))
    x = torch.tensor([tok(TEXT)["input_ids"]])
    with torch.no_grad():
        loss = model(x, labels=x).loss.item()
    assert result["tokens"] == n
    assert result["token_perplexity"] == pytest.approx(math.exp(loss), rel=1e-5)
    nll = loss * (n - 1)
    assert result["words"] == len(TEXT.split()) and result["bytes"] == len(TEXT.encode())
    assert result["word_perplexity"] == pytest.approx(math.exp(nll / len(TEXT.split())), rel=1e-5)
    assert result["bits_per_byte"] == pytest.approx(nll / len(TEXT.encode()) / math.log(2), rel=1e-5)


@pytest.mark.parametrize("window,stride,max_tokens", [(32, 32, None), (32, 12, None), (40, 16, 101)])
def test_strided_perplexity_matches_the_textbook_loop(smol, window, stride, max_tokens):
    """The Hugging Face docs' recipe (labels masked with -100 before each window's new tokens) as the reference."""
    model, tok = smol
    x = torch.tensor(tok(TEXT)["input_ids"][:max_tokens])
    nll, counted, prev_end = 0.0, 0, 0
    for begin in range(0, len(x), stride):
        end = min(begin + window, len(x))
        target = x[begin:end].clone()
        target[: -(end - prev_end)] = -100
        with torch.no_grad():
            loss = model(x[None, begin:end], labels=target[None]).loss.item()
        valid = int((target[1:] != -100).sum())
        nll, counted, prev_end = nll + loss * valid, counted + valid, end
        if end == len(x):
            break
    result = perplexity(model, tok, TEXT, PerplexityConfig(window, stride, max_tokens))
    assert result["scored"] == counted == len(x) - 1 - (len(x) - 2) // window * (stride == window)
    assert result["token_perplexity"] == pytest.approx(math.exp(nll / counted), rel=1e-5)
    if max_tokens:
        end = tok(TEXT, return_offsets_mapping=True)["offset_mapping"][max_tokens - 1][1]
        assert result["words"] == len(TEXT[:end].split()) and result["bytes"] == end


def test_perplexity_config_is_checked():
    with pytest.raises(ValueError, match="stride"):
        PerplexityConfig(window=8, stride=16)


# --- baselines -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_teacher_view_is_the_pruned_teacher_without_copies(arch):
    teacher = tiny_model(arch)
    keep = [0, 3, 4, 7]
    view = teacher_view(teacher, keep)
    reference = copy.deepcopy(teacher)
    parent, _, name = get_adapter(reference).layers.rpartition(".")
    setattr(reference.get_submodule(parent), name, nn.ModuleList([layers_of(reference)[i] for i in keep]))
    types = getattr(reference.config, "layer_types", None)
    set_num_layers(reference.config, [types[i] for i in keep] if types else None, len(keep))
    for position, layer in enumerate(layers_of(reference)):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = position
    teacher_params = {id(p) for p in teacher.parameters()}
    assert all(id(p) in teacher_params for p in view.parameters())
    with torch.no_grad():
        torch.testing.assert_close(view(ids()).logits, reference(ids()).logits, rtol=0, atol=0)
        # Positions in the KV cache are the view's, not the teacher's: a cached next step equals the full forward.
        x = ids()
        prefix = view(x[:, :-1], use_cache=True)
        step = view(x[:, -1:], past_key_values=prefix.past_key_values, use_cache=True).logits[:, -1]
        torch.testing.assert_close(step, reference(x).logits[:, -1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("order", ["last", "first"])
def test_naive_pruning_has_the_family_sizes_and_is_the_undistilled_family(order):
    teacher = tiny_model("llama")
    undistilled = Family(teacher, init_student(teacher, PLAN8), PLAN8)
    sizes = undistilled.sizes(order)
    for k in range(undistilled.K + 1):
        naive = naive_pruning(undistilled, k, order)
        assert len(layers_of(naive)) == sizes.layers[k]  # parameters differ: the naive model keeps tied embeddings
        with torch.no_grad():  # the undistilled student is the teacher's kept layers: the same function
            torch.testing.assert_close(naive(ids()).logits, undistilled.build(k, order)(ids()).logits)
    assert naive_layers(PLAN8, []) == list(PLAN8.kept)
    assert naive_layers(PLAN8, range(5)) == list(range(8))


def identity_layers(model, which):
    """Zero the output projections of `which`: those layers add nothing to the residual stream (Block Influence 0)."""
    with torch.no_grad():
        for i in which:
            layer = layers_of(model)[i]
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    return model


def test_shortgpt_removes_the_lowest_influence_layers():
    teacher = identity_layers(tiny_model("llama"), [2, 5])
    influence = block_influence(teacher, ids(4, 16))
    assert influence.shape == (8,)
    assert influence[[2, 5]].abs().max() < 1e-12
    assert (torch.cat([influence[:2], influence[3:5], influence[6:]]) > 1e-4).all()
    sizes = Family(teacher, init_student(teacher, PLAN8), PLAN8).sizes("last")
    for n in sizes.layers:
        model = shortgpt(teacher, influence, int(n))
        assert len(layers_of(model)) == n
    assert [list(layers_of(teacher)).index(m) for m in layers_of(shortgpt(teacher, influence, 6))] == [0, 1, 3, 4, 6, 7]
    with torch.no_grad():  # removing identity layers changes nothing
        torch.testing.assert_close(shortgpt(teacher, influence, 6)(ids()).logits, teacher(ids()).logits)


# --- sweeps --------------------------------------------------------------------------------------------------------
TINY_PPL = PerplexityConfig(window=32, stride=32, max_tokens=64)


def tiny_sweep(smol, smol_family, results, **settings):
    """`sweep` over the tiny family's members on the tiny perplexity window, named "tiny"/"student" in the table."""
    teacher, tok = smol
    defaults = dict(ppl=TINY_PPL, teacher_name="tiny", student_name="student")
    return sweep(teacher, tok, smol_family.student, PLAN8, results=results, **{**defaults, **settings})


def test_sweep_covers_every_method(smol, smol_family, tmp_path):
    teacher, tok = smol
    random_student = perturb(init_student(teacher, PLAN8, random_init=True))
    table = tiny_sweep(
        smol,
        smol_family,
        tmp_path / "r.parquet",
        tasks=[PPL_TASK],
        methods=("boomerang", "naive", "shortgpt", "random_init", "distilled"),
        orders=("last", "first"),
        random_student=random_student,
        random_name="rand",
        distilled={5: random_student},
        calibration=(2, 16),
        profile="smoke",  # float32: its values are compared with direct computations
    )
    assert list(table.columns) == sweep_module.COLUMNS
    token = table[table.metric == "token_perplexity"].set_index(["method", "order", "k"]).sort_index()
    sizes = smol_family.sizes("last")
    for method in ("boomerang", "naive", "random_init"):
        assert list(token.loc[(method, "last")].layers) == list(sizes.layers)
    assert list(token.loc[("random_init", "last")].params) == list(sizes.params)
    assert list(token.loc[("shortgpt", "block_influence")].layers) == list(sizes.layers)
    teacher_ppl = perplexity(teacher, tok, config=TINY_PPL)["token_perplexity"]
    assert token.loc[("boomerang", "last", 3)].value == pytest.approx(teacher_ppl)
    assert token.loc[("naive", "first", 3)].value == pytest.approx(teacher_ppl)
    assert token.loc[("boomerang", "last", 0)].value == pytest.approx(
        perplexity(smol_family.student, tok, config=TINY_PPL)["token_perplexity"]
    )
    random_ppl = perplexity(random_student, tok, config=TINY_PPL)["token_perplexity"]
    assert token.loc[("random_init", "first", 0)].value == pytest.approx(random_ppl)
    distilled = token.loc[("distilled", "")]
    assert distilled.student.tolist() == ["distilled-5"] and distilled.value.item() == pytest.approx(random_ppl)
    assert set(table.student) == {"student", "rand", "distilled-5"} and set(table.teacher) == {"tiny"}


def test_sweep_runs_lm_eval_tasks_and_checks_its_inputs(smol, tmp_path):
    teacher, tok = smol
    table = sweep(
        teacher, tok, None, PLAN8, tasks=["arc_easy_local"], limit=2, ks=[0], progress=False, results=tmp_path / "r.csv"
    )
    assert set(table.metric) == {"acc", "acc_norm"} and (table.limit == 2).all()
    assert table.student.unique().tolist() == ["teacher-init"]
    with pytest.raises(ValueError, match="shortgpt"):
        sweep(teacher, tok, methods=("shortgpd",), results=tmp_path / "x.csv")
    with pytest.raises(ValueError, match="random_student"):
        sweep(teacher, tok, methods=("random_init",), tasks=[PPL_TASK], results=tmp_path / "x.csv")
    with pytest.raises(ValueError, match="k=0..3"):
        sweep(teacher, tok, None, PLAN8, ks=[4], tasks=[PPL_TASK], results=tmp_path / "x.csv")


def test_interrupted_sweep_resumes_without_duplicates(smol, smol_family, tmp_path, monkeypatch):
    teacher, tok = smol
    args = dict(profile="smoke", tasks=[PPL_TASK], methods=("boomerang", "naive"), progress=False)
    full = tiny_sweep(smol, smol_family, tmp_path / "full.csv", **args)
    assert len(full) == 2 * 4 * 4 and not full.duplicated(sweep_module.KEY + ["metric"]).any()

    real, calls = sweep_module._evaluate, []

    def crash_on_third(*a, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(sweep_module, "_evaluate", crash_on_third)
    results = tmp_path / "resumed.csv"
    with pytest.raises(KeyboardInterrupt):
        tiny_sweep(smol, smol_family, results, **args)
    assert len(read_results(results)) == 2 * 4  # the two finished evaluations survived, the third was in flight
    monkeypatch.setattr(sweep_module, "_evaluate", real)
    resumed = tiny_sweep(smol, smol_family, results, **args)
    again = tiny_sweep(smol, smol_family, results, **args)
    on_disk = read_results(results)
    assert len(on_disk) == len(full) and not on_disk.duplicated(sweep_module.KEY + ["metric"]).any()
    by_key = sweep_module.KEY + ["metric"]
    expected = full.drop(columns="timestamp").sort_values(by_key).reset_index(drop=True)
    for table in (resumed, again, on_disk):
        pd.testing.assert_frame_equal(
            table.drop(columns="timestamp").sort_values(by_key).reset_index(drop=True), expected, check_dtype=False
        )


def test_a_rerun_with_other_settings_adds_rows_and_never_reuses_old_ones(
    smol, smol_family, tmp_path, capsys, monkeypatch
):
    """Each setting that changes a value is in the resume key: the perplexity window, its stride, autocast. A rerun
    with one changed evaluates again (its values are the new setting's), one with the same settings reuses."""
    monkeypatch.setattr(loading, "native_bf16", lambda device="cpu": True)  # the bf16 path, on any CPU
    teacher, tok = smol
    results = tmp_path / "r.csv"
    args = dict(profile="smoke", tasks=[PPL_TASK], ks=[3])  # float32: the teacher, k=K
    variants = [
        ({}, TINY_PPL, None),
        ({"ppl": PerplexityConfig(window=16, stride=16, max_tokens=64)}, PerplexityConfig(16, 16, 64), None),
        ({"ppl": PerplexityConfig(window=32, stride=16, max_tokens=64)}, PerplexityConfig(32, 16, 64), None),
        ({"autocast": "bfloat16"}, TINY_PPL, torch.bfloat16),
    ]
    seen = []
    for overrides, ppl, autocast in variants:
        capsys.readouterr()
        table = tiny_sweep(smol, smol_family, results, **args, **overrides)
        assert "[sweep] 1 evaluations to run, 0 already in" in capsys.readouterr().out, overrides
        with torch.autocast("cpu", dtype=autocast or torch.float32, enabled=autocast is not None):
            expected = perplexity(teacher, tok, config=ppl)["token_perplexity"]
        token = table[table.metric == "token_perplexity"].set_index("k").value
        assert token[3] == pytest.approx(expected, rel=1e-6), overrides  # the new setting's value, not an old row's
        seen.append(token[3])
    assert len(set(seen)) == len(seen)  # each setting changed the value
    on_disk = read_results(results)
    assert len(on_disk) == len(variants) * 4 and on_disk.settings.nunique() == len(variants)
    assert "dtype=float32 autocast=bfloat16 window=32 stride=32 max_tokens=64" in set(on_disk.settings)

    again = tiny_sweep(smol, smol_family, results, **args)  # the first settings again: found, not rerun
    assert "0 evaluations to run, 1 already in" in capsys.readouterr().out
    assert again[again.metric == "token_perplexity"].set_index("k").value[3] == seen[0]
    # A table written before the key held the settings: its rows are evaluated again, not trusted.
    on_disk.drop(columns="settings").to_csv(tmp_path / "old.csv", index=False)
    tiny_sweep(smol, smol_family, tmp_path / "old.csv", **args)
    assert "1 evaluations to run, 0 already in" in capsys.readouterr().out
    # lm-eval's batch size (padding changes float sums) and ShortGPT's calibration are in the key too.
    key = sweep_module._settings
    cfg = SweepConfig(profile="smoke").resolved()
    assert key("arc_easy_local", "boomerang", cfg, "float32") != key(
        "arc_easy_local", "boomerang", replace(cfg, batch_size=cfg.batch_size + 1), "float32"
    )
    assert key(PPL_TASK, "shortgpt", cfg, "float32") != key(
        PPL_TASK, "shortgpt", replace(cfg, calibration=(2, 16)), "float32"
    )
    assert key(PPL_TASK, "boomerang", cfg, "float32") != key(PPL_TASK, "boomerang", cfg, "bfloat16")


def test_cli_evaluate_appends_to_the_table(tmp_path, capsys):
    results = tmp_path / "cli.csv"
    argv = [
        "evaluate",
        "--profile",
        "smoke",
        "--teacher",
        "smollm2-tiny-random",
        "--tasks",
        PPL_TASK,
        "--methods",
        "boomerang",
        "naive",
        "--ks",
        "0",
        "3",
        "--results",
        str(results),
    ]
    main(argv)
    table = read_results(results)
    assert len(table) == 2 * 2 * 4 and set(table.student) == {"teacher-init"} and set(table.limit) == {512}
    main(argv)
    assert "0 evaluations run, 4 found" in capsys.readouterr().out
    assert len(read_results(results)) == len(table)


def test_cli_evaluate_names_a_distilled_student_by_its_recipe(tmp_path):
    teacher, tok = load_model("smollm2-tiny-random")
    plan = LayerPlan.paper(8)
    student_dir = tmp_path / "somewhere" / "student"
    init_student(teacher, plan).save_pretrained(student_dir)
    tok.save_pretrained(student_dir)
    plan.save(student_dir)
    (student_dir / CONFIG_FILE).write_text(json.dumps({"config": asdict(profile("smoke")), "plan": plan.to_dict()}))
    results = tmp_path / "cli.csv"
    main(
        [
            "evaluate",
            "--profile",
            "smoke",
            "--teacher",
            "smollm2-tiny-random",
            "--student",
            str(student_dir),
            "--tasks",
            PPL_TASK,
            "--ks",
            "0",
            "--results",
            str(results),
        ]
    )
    assert set(read_results(results).student) == {run_name(student_dir)}
    assert run_name(student_dir).startswith("student@")


def test_lm_eval_tasks_run_at_the_chosen_sizes_and_autocast_is_close(smol, smol_family, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(loading, "native_bf16", lambda device="cpu": True)  # the bf16 path, on any CPU
    teacher, tok = smol
    table = tiny_sweep(
        smol,
        smol_family,
        tmp_path / "r.csv",
        tasks=[PPL_TASK, "arc_easy_local"],
        limit=2,
        lm_eval_sizes=2,
        profile="smoke",  # float32
    )
    ks = table.groupby("task").k.apply(lambda k: sorted(set(k)))
    assert ks[PPL_TASK] == [0, 1, 2, 3] and ks["arc_easy_local"] == [0, 3]  # the student and the teacher only
    out = capsys.readouterr().out
    assert "[sweep] 6 evaluations to run, 0 already in" in out and "[sweep] 6/6 boomerang last k=3" in out
    assert sorted(sweep_module._lm_eval_ks(14, 5)) == [0, 4, 7, 10, 14] and sweep_module._lm_eval_ks(3, 9) == {
        0,
        1,
        2,
        3,
    }
    with pytest.raises(ValueError, match="lm_eval_sizes must be at least 2"):
        sweep_module._lm_eval_ks(14, 1)
    fp32 = table[(table.task == PPL_TASK) & (table.metric == "token_perplexity")].value.to_numpy()
    bf16 = tiny_sweep(smol, smol_family, tmp_path / "b.csv", tasks=[PPL_TASK], autocast="bfloat16", progress=False)
    bf16 = bf16[bf16.metric == "token_perplexity"].value.to_numpy()
    assert not (bf16 == fp32).all() and abs(bf16 / fp32 - 1).max() < 0.05  # really bf16, and close
