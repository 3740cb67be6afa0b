"""Profiles: one object, the paper's recipe equal to docs/profiles.md, files that round-trip, clear errors; and the
module edges of issue 14 (public family view, order registry, pseudo-perplexity in evaluate/, one WikiText path)."""

import ast
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import fields, is_dataclass
from pathlib import Path

import pytest
import torch

from boomerang_lab import evaluate as evaluate_module
from boomerang_lab.config import evaluate as evaluate_profiles
from boomerang_lab.config import profiles
from boomerang_lab.config.profiles import PROFILES, Profile, ProfileError, flatten
from boomerang_lab.data import WIKITEXT_TEST, data_file
from boomerang_lab.distill import trainer as distill_module
from boomerang_lab.evaluate import LOCAL_TASKS, PPL_TASK, SweepConfig
from boomerang_lab.family.members import ORDERS, Family, register_order
from boomerang_lab.models.orders import Order
from boomerang_lab.models.plan import LayerPlan
from boomerang_lab.models.student import init_student
from boomerang_lab.study import pipeline
from boomerang_lab.study.cli import build_parser, main
from tiny import perturb, tiny_model

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "boomerang_lab"
DOCS = ROOT / "docs" / "profiles.md"
NOT_RECIPE = {
    "distill.output_dir",
    "distill.use_cpu",
    "distill.save_steps",
    "distill.log_steps",
    "distill.activation_checkpointing",
    "distill.compile",
    "distill.loss.chunk_tokens",
    "distill.loss.compile",
}
"""Where and how fast a run goes, not what it trains (distill.recipe leaves the first four out too)."""


# --- the paper's recipe == the docs table ---------------------------------------------------------------------------
def doc_table(heading: str) -> tuple[list[str], dict[str, list[str]]]:
    """The first markdown table after `heading` in docs/profiles.md: its header and {setting path: cells}."""
    text = DOCS.read_text(encoding="utf-8")
    section = text[text.index(heading) :]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    start = next(i for i, line in enumerate(lines) if line.startswith("| setting"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = {}
    for line in lines[start + 2 :]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        match = re.fullmatch(r"`([\w.]+)`", cells[0])
        if not match:
            break
        rows[match.group(1)] = cells[1:]
    return header, rows


def cell_value(cell: str):
    """A table cell as a value: true/false, null, a number, a comma list, or the text."""
    if "," in cell:
        return [cell_value(c) for c in cell.split(",")]
    cell = cell.strip()
    if cell in ("true", "false"):
        return cell == "true"
    if cell == "null":
        return None
    for kind in (int, float):
        try:
            return kind(cell)
        except ValueError:
            pass
    return cell


def matches(cell: str, value) -> bool:
    """The cell shows the value (a one-item list is written as its item)."""
    parsed = cell_value(cell)
    if isinstance(value, (list, tuple)):
        return (parsed if isinstance(parsed, list) else [parsed]) == list(value)
    return parsed == value


def test_paper_and_kit_profiles_equal_the_docs_table():
    header, rows = doc_table("## `paper`: the paper's recipe")
    assert header[:3] == ["setting", "paper", "kit default"]
    paper, kit = flatten(PROFILES["paper"]), flatten(PROFILES["kit"])
    for path, cells in rows.items():
        assert matches(cells[0], paper[path]), f"paper: {path}"
        assert matches(cells[1], kit[path]), f"kit: {path}"
    recipe = {p for p in paper if p.startswith(("distill.", "plan."))} - NOT_RECIPE
    assert recipe - set(rows) == set(), "every recipe and plan field is in the docs table"


def test_paper_llama_profile_equals_its_docs_table():
    header, rows = doc_table("## `paper-llama`")
    assert header[:3] == ["setting", "paper-llama", "paper"]
    llama, paper = flatten(PROFILES["paper-llama"]), flatten(PROFILES["paper"])
    for path, cells in rows.items():
        assert matches(cells[0], llama[path]), path
        assert matches(cells[1], paper[path]), path
    differ = {p for p in paper if paper[p] != llama[p]} - {"name", "description"}
    assert differ == set(rows), "the table lists exactly where paper-llama differs from paper"


def test_paper_profile_is_the_papers_recipe():
    config = PROFILES["paper"].distill
    assert config.batch_size * config.grad_accum == 2048 and config.seq_len == 2048  # 4.2M tokens per step
    assert config.batch_size * config.grad_accum * config.seq_len * config.max_steps == 2048 * 2048 * 500  # 2.1B
    assert not config.freeze_embeddings and config.bf16 and config.seed == 0
    assert (config.lr, config.scheduler, config.warmup, config.betas) == (3e-4, "cosine", 0.01, (0.9, 0.95))
    assert (config.weight_decay, config.max_grad_norm) == (0.1, 1.0)
    assert PROFILES["paper"].layer_plan(30) == LayerPlan.paper(30)
    # the paper's Llama student: Llama-3.2-3B's 28 layers -> 0, 1, 3, ..., 27: 15 layers, 13 patchable blocks
    llama = PROFILES["paper-llama"].layer_plan(28)
    assert llama.kept == (0, 1, *range(3, 28, 2)) and len(llama.multi_layer) == 13
    assert PROFILES["paper-llama"].pipeline.orders[0] == "first"
    # the kit's recipe keeps its own names
    assert PROFILES["quick"].distill.freeze_embeddings and PROFILES["kit"].distill.freeze_embeddings


def test_quick_long_is_quick_with_eight_times_the_steps():
    """quick-long's student is the budget study's 8x cell (benchmarks/study_budget.py scales quick's two step
    counts): one run serves both, so nothing else of the recipe, plan, evaluation or pipeline may differ."""
    quick, long = PROFILES["quick"], PROFILES["quick-long"]
    assert (long.distill.local_steps, long.distill.max_steps) == (8 * 96, 8 * 64)
    assert dataclasses.replace(long.distill, local_steps=96, max_steps=64) == quick.distill
    assert (long.plan, long.evaluate, long.pipeline) == (quick.plan, quick.evaluate, quick.pipeline)
    tokens = (long.distill.local_steps + long.distill.max_steps) * long.distill.batch_size * long.distill.seq_len
    assert tokens == 655_360  # 8 x the quick budget's 81,920


def test_paper_evaluation_reports_lm_evals_wikitext_beside_the_fast_perplexity():
    tasks = PROFILES["paper"].evaluate.tasks
    assert PPL_TASK in tasks and "wikitext_local" in tasks and set(tasks) == set(LOCAL_TASKS) | {PPL_TASK}
    assert PROFILES["paper"].evaluate.limit is None


def test_every_profile_names_known_tasks():
    for name, profile in PROFILES.items():
        assert set(profile.evaluate.tasks) <= set(LOCAL_TASKS) | {PPL_TASK}, name


# --- one object, everywhere ----------------------------------------------------------------------------------------
def test_no_module_imports_profiles_back_through_compatibility_names():
    """distill, pipeline and evaluate(.profiles) hold no lazy copies of the profile tables (the old import circle)."""
    for module in (distill_module, pipeline, evaluate_module, evaluate_profiles):
        assert not hasattr(module, "__getattr__"), module.__name__
        assert not hasattr(module, "PROFILES") and not hasattr(module, "EVAL_PROFILES"), module.__name__


def test_a_recipe_is_the_profiles_own():
    assert profiles.distill_config("paper", max_steps=3) == profiles.get("paper", distill={"max_steps": 3}).distill
    profiles.get("quick").distill.max_steps = 1  # a copy: the registry does not change
    assert PROFILES["quick"].distill.max_steps != 1


def test_every_field_has_help():
    rows = profiles.field_rows()
    assert {path for path, _, text in rows if not text} == set()
    assert "distill.loss.kl_weight" in {path for path, _, _ in rows}


def test_new_dataclass_fields_flow_through():
    """Fields are found by walking the dataclasses, so a field added to DistillConfig needs no change here."""
    names = {f.name for f in fields(profiles.DistillConfig)}
    flat = {p.removeprefix("distill.") for p in flatten(PROFILES["quick"]) if p.startswith("distill.")}
    nested = {n for n in names if is_dataclass(getattr(PROFILES["quick"].distill, n))}  # loss, family_aware
    assert flat >= names - nested
    assert all(any(p.startswith(f"{n}.") for p in flat) for n in nested)  # a nested one flows through as its leaves


# --- files ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".yaml", ".json"])
@pytest.mark.parametrize("name", list(PROFILES))
def test_profile_files_round_trip(tmp_path, name, suffix):
    path = tmp_path / f"{name}{suffix}"
    PROFILES[name].dump(path)
    assert profiles.get(path) == PROFILES[name]


def test_a_partial_file_changes_only_what_it_lists(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(
        "base: quick\ndistill: {max_steps: 64, loss: {kl_weight: 0.2}, betas: [0.8, 0.9]}\n"
        "evaluate: {tasks: [wikitext_ppl], limit: 0.5}\nplan: {keep_first: 2}\n"
    )
    mine, quick = profiles.get(path), PROFILES["quick"]
    assert mine.name == "mine" and mine.distill.max_steps == 64 and mine.distill.loss.kl_weight == 0.2
    assert mine.distill.betas == (0.8, 0.9) and mine.evaluate.tasks == ("wikitext_ppl",) and mine.evaluate.limit == 0.5
    assert mine.distill.loss.cos_weight == quick.distill.loss.cos_weight and mine.distill.lr == quick.distill.lr
    assert mine.plan.keep_first == 2 and mine.evaluate.ppl == quick.evaluate.ppl
    assert profiles.distill_config(str(path)).max_steps == 64  # what the notebooks call


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "distill: {max_step: 3}",
            r"distill: unknown field 'max_step'; the fields of DistillConfig are: output_dir, "
            r"teacher, .*max_steps",
        ),
        (
            "distill: {loss: {klweight: 1}}",
            r"distill\.loss: unknown field 'klweight'; the fields of LossConfig are: "
            r"ce_weight, kl_weight",
        ),
        (
            "colour: red",
            r"unknown field 'colour'; the fields of Profile are: name, description, distill, plan, "
            r"evaluate, pipeline",
        ),
        ("distill: {lr: fast}", r"distill\.lr must be float, got 'fast' \(str\)"),
        ("distill: {max_steps: 1.5}", r"distill\.max_steps must be int, got 1\.5 \(float\)"),
        ("distill: {bf16: 1}", r"distill\.bf16 must be bool, got 1 \(int\)"),
        ("distill: {betas: [0.9]}", r"distill\.betas must be tuple\[float, float\], got \[0\.9\] \(list\)"),
        ("evaluate: {limit: all}", r"evaluate\.limit must be int \| float \| null, got 'all' \(str\)"),
        ("pipeline: {orders: last}", r"pipeline\.orders must be tuple\[str, \.\.\.\], got 'last' \(str\)"),
        ("distill: {batch_size: 0}", r"distill: .*must be positive"),
        ("base: fast", r"base 'fast' is not a built-in profile; use one of smoke, quick"),
        ("[1, 2]", r"a profile is a mapping of fields"),
        ("distill: [1]", r"distill must be a mapping of DistillConfig fields"),
    ],
)
def test_bad_files_name_the_field(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ProfileError, match=message):
        profiles.get(path)


def test_bad_names_and_unreadable_files(tmp_path):
    with pytest.raises(
        ProfileError,
        match="Unknown profile 'fast'; use one of smoke, quick, quick-long, quick-paper, kit, paper, paper-llama, or a "
        ".yaml/.json file",
    ):
        profiles.get("fast")
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        profiles.get(tmp_path / "missing.yaml")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ProfileError, match="not valid JSON"):
        profiles.get(tmp_path / "broken.json")
    with pytest.raises(ProfileError, match="distill.max_steps must be int"):
        profiles.get("quick", distill={"max_steps": "many"})
    with pytest.raises(ProfileError, match=r"\(object\) is not a number, text, list or mapping"):
        profiles.get("quick", distill={"teacher": object()})  # only a path is turned into text
    assert profiles.distill_config("quick", output_dir=tmp_path).output_dir == str(tmp_path)
    with pytest.raises(ProfileError, match="already exists"):
        profiles.register(Profile(name="quick"))


# --- the command line ----------------------------------------------------------------------------------------------
def test_boomerang_profiles_prints_every_profiles_values(capsys):
    main(["profiles"])
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("| field"))
    assert header == "| field | smoke | quick | quick-long | quick-paper | kit | paper | paper-llama |"
    row = next(line for line in out.splitlines() if line.startswith("| distill.grad_accum "))
    assert row == "| distill.grad_accum | 1 | 1 | 1 | 1 | 8 | 256 | 256 |"
    assert all(f"| {path} |" in out for path in flatten(PROFILES["quick"]) if path not in ("name", "description"))
    main(["profiles", "paper", "--help-text"])
    assert "| distill.freeze_embeddings | false | freeze the student's embeddings" in capsys.readouterr().out


def test_boomerang_profiles_show_prints_a_loadable_file(capsys, tmp_path):
    main(["profiles", "--show", "paper-llama"])
    (tmp_path / "mine.yaml").write_text(capsys.readouterr().out)
    loaded = profiles.get(tmp_path / "mine.yaml")
    assert loaded == dataclasses.replace(PROFILES["paper-llama"], name="mine")  # named after its file


def test_help_shows_the_fields_help(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "distill.loss.kl_weight" in out and "weight of the KL to the teacher's logits" in out
    assert "paper-llama" in out
    with pytest.raises(SystemExit):
        main(["distill", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for flag, text in (
        ("--kl-weight FLOAT", "weight of the KL"),
        ("--packing, --no-packing", "one document per sequence"),
        ("--keep-first INT", "teacher layers kept at the start"),
        ("--betas FLOAT FLOAT", "AdamW betas"),
        ("--loss-compile, --no-loss-compile", "per-chunk"),
        ("--compile, --no-compile", "regional compilation"),
    ):
        assert flag in out and text in out, flag


def test_distill_flags_change_the_profiles_fields():
    from boomerang_lab.study.cli import _field_values

    args = build_parser().parse_args(
        [
            "distill",
            "--profile",
            "paper",
            "--kl-weight",
            "0.5",
            "--no-packing",
            "--betas",
            "0.8",
            "0.9",
            "--batch-size",
            "2",
            "--keep-first",
            "2",
            "--loss-compile",
        ]
    )
    chosen = profiles.get(args.profile, **_field_values(args))
    config = chosen.distill
    assert (config.loss.kl_weight, config.packing, config.betas, config.batch_size) == (0.5, False, (0.8, 0.9), 2)
    assert config.loss.compile and not config.compile and chosen.plan.keep_first == 2
    assert config.grad_accum == 256 and config.loss.cos_weight == 2.0  # the rest stays the profile's


def test_cli_profile_errors_are_one_clear_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("distill: {max_step: 3}\n")
    with pytest.raises(SystemExit, match=r"boomerang distill: .*bad.yaml.distill: unknown field 'max_step'"):
        main(["distill", "--profile", str(bad)])
    with pytest.raises(SystemExit, match=r"boomerang evaluate: Unknown profile 'fast'"):
        main(["evaluate", "--profile", "fast"])


def test_run_and_sweep_read_a_profile_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("base: smoke\nevaluate: {tasks: [wikitext_ppl], batch_size: 3}\npipeline: {orders: [first]}\n")
    config = pipeline.RunConfig(str(path)).resolved()
    assert config.profile == str(path.resolve()) and config.orders == ("first",) and config.random_init
    assert config.out == pipeline.ROOT / "outputs" / "mine" and config.results.name == "mine.csv"
    sweep = SweepConfig(profile=config.profile).resolved()
    assert sweep.tasks == ("wikitext_ppl",) and sweep.batch_size == 3 and sweep.limit == 4
    assert SweepConfig(profile="paper").resolved().batch_size == 4
    assert SweepConfig(profile="paper", batch_size=2).resolved().batch_size == 2


# --- packing=False: the paper's one document per sequence ---------------------------------------------------------
def test_unpacked_rows_are_one_padded_document_each(tmp_path):
    from boomerang_lab.data import packed_blocks
    from boomerang_lab.models.loading import load_model

    _, tokenizer = load_model("smollm2-tiny-random")
    docs = ["A short one.", "", "word " * 200]
    for i, doc in enumerate(docs):
        (tmp_path / f"{i}.txt").write_text(doc)
    rows = packed_blocks(tokenizer, tmp_path, seq_len=32, packing=False)
    assert len(rows) == 2  # the empty document is dropped
    eos = tokenizer.eos_token_id
    short = tokenizer(docs[0], add_special_tokens=False)["input_ids"]
    assert rows[0]["input_ids"] == short + [eos] * (32 - len(short))
    assert rows[0]["attention_mask"] == [1] * len(short) + [0] * (32 - len(short))
    long = tokenizer(docs[2], add_special_tokens=False)["input_ids"]
    assert rows[1]["input_ids"] == long[:32] and rows[1]["attention_mask"] == [1] * 32  # truncated
    packed = packed_blocks(tokenizer, tmp_path, seq_len=32)
    assert "attention_mask" not in packed.column_names


def test_distill_ignores_the_padding_of_unpacked_rows(tmp_path):
    """The padded tail changes no loss term: a row and the same row with other padding tokens train the same."""
    from datasets import Dataset

    from boomerang_lab.config.distill import LossConfig
    from boomerang_lab.distill.trainer import DistillTrainer

    teacher = tiny_model("llama")
    plan = LayerPlan.from_kept([0, 3, 5, 7], 8)
    student = init_student(teacher, plan)
    ids = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[:, 10:] = 0
    other = ids.clone()
    other[:, 10:] = 5
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    trainer = DistillTrainer(
        model=student,
        args=args,
        train_dataset=Dataset.from_dict({"input_ids": ids.tolist()}),
        teacher=teacher,
        plan=plan,
        loss_config=LossConfig(),
    )
    losses = [trainer.compute_loss(student, {"input_ids": x, "attention_mask": mask}).item() for x in (ids, other)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    unmasked = trainer.compute_loss(student, {"input_ids": ids}).item()
    assert unmasked != pytest.approx(losses[0], rel=1e-3)


# --- honest task copies --------------------------------------------------------------------------------------------
def test_boolq_local_file_has_no_titles_and_is_marked_not_comparable():
    rows = [json.loads(line) for line in data_file("boolq/boolq_dev_llmfoundry.jsonl").read_text().splitlines()]
    assert len(rows) == 3270 and all(set(r) == {"query", "choices", "gold"} for r in rows)  # no title field
    first = rows[0]["query"]
    assert first.startswith("Passage: All biomass goes through") and " -- " not in first.split("\n")[0]
    for path in (
        PACKAGE / "evaluate" / "tasks" / "boolq_local.yaml",
        ROOT / "data" / "SOURCES.md",
        PACKAGE / "evaluate" / "README.md",
    ):
        text = " ".join(path.read_text(encoding="utf-8").split())
        assert "not comparable with stock numbers" in text, path
        assert "not used by lm-eval" not in text and "unused by lm-eval" not in text, path
        assert "does not use it" not in text, path
    from boomerang_lab.evaluate.tasks import NOT_COMPARABLE

    assert NOT_COMPARABLE == {"boolq_local", "hellaswag_local"}


# --- module edges --------------------------------------------------------------------------------------------------
def test_no_module_reaches_into_familys_private_names():
    private = {"_graft", "_install_output_hooks", "_LayerIndexer", "_shallow_copy"}
    for path in PACKAGE.rglob("*.py"):
        if path == PACKAGE / "family" / "members.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                assert not {a.name for a in node.names} & private, path
            if isinstance(node, ast.Attribute):
                assert node.attr not in private, path


def test_orders_register_through_the_registry():
    searched = (PACKAGE / "family" / "search.py").read_text(encoding="utf-8")
    assert "ORDERS" not in searched and "register_order" not in searched  # registered where the registry lives
    registry = (PACKAGE / "family" / "members.py").read_text(encoding="utf-8")
    assert all(f'register_order("{name}", {name}_order)' in registry for name in ("local", "klpatch", "optimal"))
    assert {"last", "first", "klpatch", "optimal"} <= set(ORDERS)
    with pytest.raises(ValueError, match="'last' is already registered"):
        register_order("last", lambda f: Order.last(f.plan))

    calls = []

    @register_order("odd_first_test")
    def odd_first(family):
        calls.append(family)
        return Order.from_blocks(family.plan, sorted(family.plan.multi_layer, key=lambda j: (j % 2 == 0, j)))

    try:
        teacher = tiny_model("llama")
        plan = LayerPlan.paper(8)  # multi-layer student layers 0, 1, 2: "last" patches 2 first, odd_first 1
        family = Family(perturb(teacher), perturb(init_student(teacher, plan), seed=2), plan)
        resolved = family.order("odd_first_test")
        assert calls == [family] and resolved.steps == ((1,), (0,), (2, 3, 4))
        x = torch.randint(0, 97, (1, 8), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            for k, patched in ((1, [1]), (2, [0, 1])):  # below K the order decides the member
                member = family.build(k, "odd_first_test")
                assert member.boomerang["patched"] == patched
                assert not torch.equal(member(x).logits, family.build(k, "last")(x).logits)
        assert family.order("odd_first_test") is resolved and len(calls) == 1  # built once per family
        register_order("odd_first_test", odd_first, replace=True)
    finally:
        ORDERS.pop("odd_first_test", None)
    with pytest.raises(ValueError, match="Unknown order 'odd_first_test'"):
        Family(teacher, init_student(teacher, plan), plan).order("odd_first_test")


def test_pseudo_perplexity_lives_in_evaluate():
    from boomerang_lab.evaluate import pseudo_perplexity as module

    assert (PACKAGE / "evaluate" / "pseudo_perplexity.py").is_file() and callable(module.pseudo_perplexity)
    assert not (PACKAGE / "pseudo_perplexity.py").exists()  # one module, no alias at the top level
    users = [p for p in (ROOT / "notebooks").glob("*.ipynb") if "boomerang_lab.pseudo_perplexity" in p.read_text()]
    assert not users, users


def test_the_wikitext_path_is_written_once():
    hits = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if WIKITEXT_TEST in p.read_text("utf-8")]
    assert hits == ["data.py"]
    assert data_file(WIKITEXT_TEST).is_file()


# --- lint ----------------------------------------------------------------------------------------------------------
OWNED = [
    "boomerang_lab/config/profiles.py",
    "boomerang_lab/study/cli.py",
    "boomerang_lab/study/pipeline.py",
    "boomerang_lab/config/evaluate.py",
    "boomerang_lab/evaluate/baselines.py",
    "boomerang_lab/evaluate/pseudo_perplexity.py",
    "tests/test_profiles.py",
]


def test_lint_is_configured_and_these_files_pass():
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["ruff"]
    assert config["line-length"] == 120 and {"E", "F", "W", "I"} <= set(config["lint"]["select"])
    assert re.search(r"^lint:", (ROOT / "Makefile").read_text(), re.M)
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        # CI installs the dev extra, so a missing ruff there is a broken install step, not a reason to skip.
        assert not os.environ.get("CI"), "ruff is missing under CI: the dev extra in pyproject.toml must list it"
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    result = subprocess.run([ruff, "check", *OWNED], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_figures_mark_the_copies_that_are_not_comparable():
    from boomerang_lab.report.plots import task_title

    assert task_title("boolq_local") == "boolq (not comparable with stock)"
    assert task_title("hellaswag_local") == "hellaswag (not comparable with stock)"
    assert task_title("piqa_local") == "piqa"


def test_a_student_distilled_before_a_field_existed_is_reused(tmp_path):
    """A run written before `packing` existed counts as its default (packed), so `finished` reuses it."""
    from dataclasses import asdict

    from boomerang_lab.distill.trainer import CONFIG_FILE, finished

    plan = LayerPlan.paper(8)
    config = profiles.distill_config("smoke", output_dir=str(tmp_path / "student"))
    old = asdict(config)
    del old["packing"]
    (tmp_path / "student").mkdir()
    (tmp_path / "student" / CONFIG_FILE).write_text(json.dumps({"config": old, "plan": plan.to_dict()}))
    assert finished(config, plan)
    with pytest.raises(ValueError, match=r"'packing': \(True, False\)"):
        finished(profiles.distill_config("smoke", output_dir=str(tmp_path / "student"), packing=False), plan)


def test_result_summaries_mark_the_copies_that_are_not_comparable():
    import pandas as pd

    from boomerang_lab.evaluate import summary

    rows = [
        {"method": "boomerang", "order": "last", "k": 0, "layers": 4, "task": task, "metric": "acc", "value": v}
        for task, v in (("boolq_local", 0.5), ("piqa_local", 0.6))
    ]
    assert list(summary(pd.DataFrame(rows)).columns) == ["boolq_local (not comparable with stock)", "piqa_local"]
