"""Mutation checks of the tests of issue 20 (docs/test_mutations.md): apply each mutation to a copy of the package,
run the named test on it, on the real code, and (where it existed) the test as it was before issue 20 on the mutant.

    python benchmarks/mutation_check.py [MUTATION or TEST substring ...]   # rows appended to <scratch>/results.jsonl

About 25 minutes on a 2-core CPU for all rows (mostly pytest start-up: three runs per row).
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WT = Path(__file__).resolve().parent.parent
ROOT = Path(os.environ.get("MUTATION_DIR", Path(tempfile.gettempdir()) / "boomerang_mutations"))
PYTEST = str(Path(sys.executable).with_name("pytest"))
OLD_TESTS = "7034f55"  # the commit before issue 20's test rewrites

R = "trainer.train(resume_from_checkpoint=_last_checkpoint(folder))"
MUTATIONS = {
    "resume_none": ("distill/trainer.py", R, "trainer.train(resume_from_checkpoint=None)"),
    "ckpt_no_state_check": (
        "distill/trainer.py",
        '            json.loads((path / "trainer_state.json").read_text())\n',
        "            pass\n",
    ),
    "no_stage_reload": ("distill/trainer.py", "    if (done / LOG_FILE).exists():", "    if False:"),
    "exactness_tolerant": ("report/diagrams.py", '"passed": diff == 0.0,', '"passed": diff < 1.0,'),
    "local_loss_ignores_mask": (
        "distill/local.py",
        "if mask is None else mask.to(y.dtype)",
        "if True else mask.to(y.dtype)",
    ),
    "local_trainer_drops_mask": (
        "distill/trainer.py",
        "self.plan, states, mask, self.local_loss)",
        "self.plan, states, None, self.local_loss)",
    ),
    "teacher_states_drop_mask": (
        "distill/local.py",
        'masked = {} if attention_mask is None else {"attention_mask": attention_mask}',
        "masked = {}",
    ),
    "alignment_drops_last_pair": (
        "models/plan.py",
        "for j in range(len(self.kept) - 1)]",
        "for j in range(len(self.kept) - 2)]",
    ),
    "last_block_empty": ("models/plan.py", "else self.num_teacher_layers\n", "else self.num_teacher_layers - 1\n"),
    "member_drops_mask": (
        "family/members.py",
        "        model.register_forward_pre_hook(self.enter)\n",
        "        model.register_forward_pre_hook(\n"
        "            lambda m, a, k: (self.enter(), (a, {**k, 'attention_mask': None}))[1], with_kwargs=True\n"
        "        )\n",
    ),
    "members_cached_by_size": ("family/members.py", "        key = tuple(sorted(patched))\n", "        key = (k,)\n"),
    "layer_idx_not_restored": (
        "family/members.py",
        "            m.layer_idx = idx\n",
        "            m.layer_idx = m.layer_idx\n",
    ),
    "view_keeps_teacher_idx": ("family/members.py", "    _LayerIndexer(kept).attach(view)\n", "    pass\n"),
    "limit_plus_one": (
        "evaluate/lm_eval.py",
        "                limit=limit,",
        "                limit=None if limit is None else limit + 1,",
    ),
    "ga_loss_unscaled": ("distill/trainer.py", "    loss_is_scaled_for_ga = False", "    loss_is_scaled_for_ga = True"),
    "ga_log_sums": (
        "distill/trainer.py",
        "torch.stack([self._term_sums[n] for n in names]) / self._term_count",
        "torch.stack([self._term_sums[n] for n in names])",
    ),
    "bf16_ignored": ("distill/trainer.py", "        bf16=config.bf16,", "        bf16=False,"),
    "sweep_key_without_settings": (
        "evaluate/sweep.py",
        "        _settings(task, cand.method, cfg, dtype),\n    )",
        '        "",\n    )',
    ),
    "sweep_key_without_window": (
        "evaluate/sweep.py",
        'parts |= {"window": cfg.ppl.window, "stride": cfg.ppl.stride, "max_tokens": cfg.ppl.max_tokens}',
        'parts |= {"max_tokens": cfg.ppl.max_tokens}',
    ),
}

D, B, E = "tests/test_distill.py::", "tests/test_blockwise.py::", "tests/test_evaluate.py::"
KILL9, PADDED = B + "test_each_stage_resumes_after_kill_9_to_the_same_student", B + "test_the_local_stage_with_padding"
RERUN = E + "test_a_rerun_with_other_settings_adds_rows_and_never_reuses_old_ones"
CASES = [  # (test id, mutation, whether the test existed before issue 20: then it runs on the mutant too)
    (D + "test_interrupted_run_resumes_to_the_same_student", "resume_none", True),
    (D + "test_incomplete_checkpoints_are_not_resumed", "resume_none", True),
    (D + "test_incomplete_checkpoints_are_not_resumed", "ckpt_no_state_check", True),
    (KILL9 + "[local-3]", "resume_none", True),
    (KILL9 + "[global-3]", "resume_none", True),
    (KILL9 + "[global-0]", "no_stage_reload", True),
    (KILL9 + "[global-0]", "resume_none", False),
    ("tests/test_diagrams.py::test_exactness_checks_pass_and_would_show_a_difference", "exactness_tolerant", True),
    (B + "test_local_loss_equals_a_direct_computation", "local_loss_ignores_mask", True),
    (B + "test_local_loss_equals_a_direct_computation", "teacher_states_drop_mask", False),
    (PADDED + "_equals_a_direct_computation", "local_trainer_drops_mask", False),
    (PADDED + "_equals_a_direct_computation", "local_loss_ignores_mask", False),
    ("tests/test_plan.py::test_plan_and_alignment_match_paper_code", "alignment_drops_last_pair", True),
    ("tests/test_plan.py::test_paper_plans", "last_block_empty", True),
    ("tests/test_pairs.py::test_every_masked_member_matches_direct_composition", "member_drops_mask", True),
    ("tests/test_profiles.py::test_orders_register_through_the_registry", "members_cached_by_size", True),
    ("tests/test_family.py::test_teacher_and_student_unchanged_after_members_run", "layer_idx_not_restored", True),
    (E + "test_teacher_view_is_the_pruned_teacher_without_copies", "view_keeps_teacher_idx", True),
    (E + "test_every_local_task_runs_with_a_limit", "limit_plus_one", True),
    (D + "test_gradient_accumulation_equals_one_big_batch", "ga_loss_unscaled", False),
    (D + "test_gradient_accumulation_equals_one_big_batch", "ga_log_sums", False),
    (D + "test_bf16_distillation_trains_resumes_and_repeats", "bf16_ignored", False),
    (D + "test_bf16_distillation_trains_resumes_and_repeats", "resume_none", False),
    (RERUN, "sweep_key_without_settings", False),
    (RERUN, "sweep_key_without_window", False),
]


def mutant(name):
    folder = ROOT / "pkgs" / name
    if not folder.exists():
        shutil.copytree(WT / "boomerang_lab", folder / "boomerang_lab", ignore=shutil.ignore_patterns("__pycache__"))
        file, old, new = MUTATIONS[name]
        path = folder / "boomerang_lab" / file
        text = path.read_text()
        assert text.count(old) == 1, (name, text.count(old))
        path.write_text(text.replace(old, new))
        shutil.copytree(ROOT / "oldtests" / "tests", folder / "tests")
        shutil.copy(WT / "pyproject.toml", folder / "pyproject.toml")
        for item in (
            "data",
            "notebooks",
            "docs",
            "benchmarks",
            "README.md",
            "Makefile",
            "figures",
            "environment.yml",
            "constraints.txt",
        ):
            (folder / item).symlink_to(WT / item)
    return folder


def run(test, pythonpath, cwd):
    env = {**os.environ, "PYTHONPATH": str(pythonpath), "OMP_NUM_THREADS": "1", "BOOMERANG_DATA": str(WT / "data")}
    start = time.time()
    done = subprocess.run(
        [PYTEST, "-q", "-x", "-p", "no:cacheprovider", test], cwd=cwd, env=env, capture_output=True, text=True
    )
    last = [l for l in done.stdout.splitlines() if l.strip()][-1] if done.stdout.strip() else done.stderr[-200:]
    return ("pass" if done.returncode == 0 else "FAIL"), last, time.time() - start


def main():
    only = sys.argv[1:]
    if not (ROOT / "oldtests").exists():
        (ROOT / "oldtests").mkdir(parents=True)
        archive = subprocess.run(["git", "archive", OLD_TESTS, "tests"], cwd=WT, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(ROOT / "oldtests")], input=archive.stdout, check=True)
    out = ROOT / "results.jsonl"
    for test, name, has_old in CASES:
        if only and name not in only and not any(o in test for o in only):
            continue
        pkg = mutant(name)
        # the mutant is what gets imported
        check = subprocess.run(
            [sys.executable, "-c", "import boomerang_lab; print(boomerang_lab.__file__)"],
            cwd="/tmp",
            env={**os.environ, "PYTHONPATH": str(pkg)},
            capture_output=True,
            text=True,
        ).stdout.strip()
        assert check.startswith(str(pkg)), check
        mut = run(test, pkg, WT)
        real = run(test, WT, WT)
        old = run(test, pkg, pkg) if has_old else ("-", "", 0)
        row = {
            "test": test,
            "mutation": name,
            "mutant": mut[0],
            "real": real[0],
            "old_test_on_mutant": old[0],
            "mutant_line": mut[1],
            "real_line": real[1],
            "old_line": old[1],
            "seconds": round(mut[2] + real[2] + old[2]),
        }
        print(json.dumps(row), flush=True)
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")


main()
