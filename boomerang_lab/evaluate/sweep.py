"""Evaluate methods x sizes x tasks from one load of teacher and student into one resumable tidy table."""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Mapping, Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..config.evaluate import PPL_TASK, PerplexityConfig
from ..config.profiles import get
from ..data import calibration_set
from ..family.members import Family
from ..models.adapters import layers_of
from ..models.loading import autocast_for
from ..models.plan import LayerPlan
from ..store.atomic import atomic_path
from ..store.locks import folder_lock, write_lock
from ..store.manifest import DamagedFile
from .baselines import block_influence, laco_pruning, naive_pruning, shortgpt, teacher_view
from .lm_eval import evaluate_lm
from .perplexity import perplexity
from .tasks import LOCAL_TASKS, NOT_COMPARABLE

COLUMNS = [
    "teacher",
    "student",
    "method",
    "order",
    "k",
    "layers",
    "params",
    "task",
    "metric",
    "value",
    "stderr",
    "limit",
    "settings",
    "timestamp",
]
KEY = ["teacher", "student", "method", "order", "k", "task", "limit", "settings"]
"""A (candidate, task) evaluation already in the table under this key is skipped on a rerun. `settings` holds the
other settings that change a value (see `_settings`), so a rerun with another one adds rows instead of reusing."""
METHODS = ("boomerang", "naive", "shortgpt", "laco", "random_init", "distilled")
_TEXT = {c: str for c in ("teacher", "student", "method", "order", "task", "metric", "settings", "timestamp")}


@dataclass
class SweepConfig:
    """What to evaluate. tasks, limit, ppl and batch_size default to the profile's (its `evaluate` settings)."""

    profile: str = "quick"  # a built-in profile's name or a .yaml/.json profile file (boomerang_lab.config.profiles)
    tasks: Sequence[str] | None = None  # "wikitext_ppl", lm-eval tasks (`*_local`, the tag boomerang_local, stock)
    limit: int | float | None = None  # examples per lm-eval task; a float < 1 is a fraction
    ppl: PerplexityConfig | None = None
    methods: Sequence[str] = ("boomerang",)
    orders: Sequence[str] = ("last",)
    ks: Sequence[int] | None = None  # sizes to evaluate (default all 0..K)
    results: str | Path = "results/sweep.csv"  # .csv or .parquet; appended to
    batch_size: int | None = None  # lm-eval batch size
    lm_eval_sizes: int | None = None  # lm-eval tasks at this many evenly spaced sizes (None: the profile's)
    autocast: str | None = None  # evaluate under torch.autocast to this dtype (None: the profile's)
    calibration: tuple[int, int] = (16, 256)  # ShortGPT calibration: samples x tokens from the training corpus
    progress: bool = True

    def resolved(self) -> "SweepConfig":
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise ValueError(f"Unknown method(s) {bad}; use {', '.join(METHODS)}.")
        profile = get(self.profile).evaluate
        tasks = [
            t for name in self.tasks or profile.tasks for t in (LOCAL_TASKS if name == "boomerang_local" else [name])
        ]
        return dataclasses.replace(
            self,
            tasks=tuple(tasks),
            limit=profile.limit if self.limit is None else self.limit,
            ppl=self.ppl or profile.ppl,
            results=Path(self.results),
            batch_size=profile.batch_size if self.batch_size is None else self.batch_size,
            lm_eval_sizes=profile.lm_eval_sizes if self.lm_eval_sizes is None else self.lm_eval_sizes,
            autocast=profile.autocast if self.autocast is None else self.autocast,
        )


@dataclass
class Candidate:
    """One model of the sweep, built on demand (all zero-copy views of the loaded models)."""

    method: str
    student: str
    order: str
    k: int | None
    build: Callable[[], PreTrainedModel] = field(repr=False)


def sweep(
    teacher: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    student: PreTrainedModel | None = None,
    plan: LayerPlan | None = None,
    config: SweepConfig | None = None,
    *,
    random_student: PreTrainedModel | None = None,
    distilled: Mapping[str | int, PreTrainedModel] | None = None,
    teacher_name: str | None = None,
    student_name: str | None = None,
    random_name: str | None = None,
    **overrides,
) -> pd.DataFrame:
    """Evaluate every method x order x size x task, appending rows to `config.results`; returns this sweep's rows.

    `student`: the distilled student (default: the undistilled teacher-initialised one, `plan.kept` of the teacher,
    shared rather than copied). `random_student`: a student distilled from random init (method "random_init").
    `distilled`: standard-distillation students {name or layer count: model} (method "distilled").
    `overrides` are SweepConfig fields, e.g. sweep(t, tok, s, plan, methods=("boomerang", "naive"), limit=50).

    The sweep holds the results table's lock (`locks.folder_lock`; a second sweep on it stops, naming this one)
    and appends each evaluation's rows under a short write lock, re-reading the table, so that concurrent writers
    lose and duplicate no row. Under `torchrun`/`accelerate launch` (RANK, WORLD_SIZE) each process evaluates its
    share of the (member, task) cells (`rank_share`) into the one table; a rerun resumes whatever any rank missed.
    """
    cfg = dataclasses.replace(config or SweepConfig(), **overrides).resolved()
    # the autocast this device runs (bf16 only where native): the table's settings column records that one
    cfg = dataclasses.replace(cfg, autocast=autocast_for(cfg.autocast, teacher.device, "evaluation"))
    with folder_lock(cfg.results):
        return _sweep(
            teacher, tokenizer, student, plan, cfg, random_student, distilled, teacher_name, student_name, random_name
        )


def _sweep(teacher, tokenizer, student, plan, cfg, random_student, distilled, teacher_name, student_name, random_name):
    for given, method in ((random_student, "random_init"), (distilled, "distilled")):
        if given is not None and method not in cfg.methods:
            raise ValueError(f"A {method} model was given but {method!r} is not among methods {list(cfg.methods)}.")
    plan = plan or LayerPlan.paper(len(layers_of(teacher)))
    if student is None:
        student, student_name = teacher_view(teacher, plan.kept), student_name or "teacher-init"
    names = {"teacher": teacher_name or _name(teacher), "student": student_name or _name(student)}
    family = Family(teacher, student, plan)
    family.search_config = getattr(family, "search_config", None) or _search_config(cfg.profile)
    candidates = _candidates(family, tokenizer, cfg, names["student"], random_student, random_name, distilled)
    table = read_results(cfg.results)
    done = set(map(_key, table[KEY].itertuples(index=False)))
    lm_ks = _lm_eval_ks(family.K, cfg.lm_eval_sizes)
    dtype = str(next(teacher.parameters()).dtype).removeprefix("torch.")
    wanted = {
        _key(_row_key(names["teacher"], c, task, cfg, dtype)): (c, task)
        for c in candidates
        for task in cfg.tasks
        if task == PPL_TASK or c.k is None or c.k in lm_ks
    }
    share = rank_share(wanted)  # all of it in one process
    todo = [item for key, item in share.items() if key not in done]
    cache: dict[tuple, pd.DataFrame] = {}  # identical models (e.g. k=K and the teacher) are evaluated once
    if cfg.progress:  # plain lines too, for a terminal that shows a notebook's stream (boomerang run)
        print(f"[sweep] {len(todo)} evaluations to run, {len(share) - len(todo)} already in {cfg.results}", flush=True)
    start, every = time.perf_counter(), max(1, len(todo) // 10)
    for i, (cand, task) in enumerate(tqdm(todo, desc="sweep", disable=not cfg.progress), 1):
        if cfg.progress and (i == 1 or i % every == 0 or i == len(todo)):
            spent = time.perf_counter() - start
            left = f", ~{spent / (i - 1) * (len(todo) - i + 1):.0f} s left" if i > 1 else ""
            print(
                f"[sweep] {i}/{len(todo)} {cand.method} {cand.order} k={cand.k} {task} ({spent:.0f} s{left})",
                flush=True,
            )
        model = cand.build()
        params = list(model.parameters())
        fingerprint = (type(model), tuple(id(p) for p in params), task)
        if fingerprint not in cache:
            cache[fingerprint] = _evaluate(model, tokenizer, task, cfg)
        rows = cache[fingerprint].assign(
            teacher=names["teacher"],
            student=cand.student,
            method=cand.method,
            order=cand.order,
            k=cand.k,
            layers=len(layers_of(model)),
            params=sum(p.numel() for p in params),
            task=task,
            limit=_limit(task, cfg),
            settings=_settings(task, cand.method, cfg, dtype),
            timestamp=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        append_results(rows[COLUMNS], cfg.results)
    table = read_results(cfg.results)
    mine = table[[_key(k) in wanted for k in table[KEY].itertuples(index=False)]].reset_index(drop=True)
    if cfg.progress:
        rank, world = _rank()
        held = len(set(map(_key, mine[KEY].itertuples(index=False))))
        where = f" (process {rank} of {world}; the table holds {held} of {len(wanted)})" if world > 1 else ""
        print(f"{len(todo)} evaluations run, {len(share) - len(todo)} found in {cfg.results}{where}")
        if len(mine):
            print(summary(mine).to_string())
    return mine


def _candidates(
    family: Family,
    tokenizer,
    cfg: SweepConfig,
    student_name: str,
    random_student: PreTrainedModel | None,
    random_name: str | None,
    distilled: Mapping[str | int, PreTrainedModel] | None,
) -> list[Candidate]:
    ks = list(cfg.ks) if cfg.ks is not None else list(range(family.K + 1))
    bad = [k for k in ks if not 0 <= k <= family.K]
    if bad:
        raise ValueError(f"ks {bad} out of range: this family has sizes k=0..{family.K}.")
    out = []
    for method in cfg.methods:
        if method == "boomerang":
            out += [
                Candidate(method, student_name, o, k, lambda o=o, k=k: family.build(k, o))
                for o in cfg.orders
                for k in ks
            ]
        elif method == "naive":
            out += [
                Candidate(method, student_name, o, k, lambda o=o, k=k: naive_pruning(family, k, o))
                for o in cfg.orders
                for k in ks
            ]
        elif method == "random_init":
            if random_student is None:
                raise ValueError("Method 'random_init' needs random_student: a student distilled from random init.")
            rand = Family(family.teacher, random_student, family.plan)
            rand.search_config = family.search_config
            out += [
                Candidate(method, random_name or _name(random_student), o, k, lambda o=o, k=k: rand.build(k, o))
                for o in cfg.orders
                for k in ks
            ]
        elif method == "shortgpt":

            @functools.cache
            def influence():
                return block_influence(family.teacher, calibration_set(tokenizer, *cfg.calibration))

            sizes = family.sizes(cfg.orders[0]).set_index("k").layers
            out += [
                Candidate(
                    method,
                    student_name,
                    "block_influence",
                    k,
                    lambda n=int(sizes[k]): shortgpt(family.teacher, influence(), n),
                )
                for k in ks
            ]
        elif method == "laco":
            out += _laco_candidates(family, tokenizer, cfg, student_name, ks)
        elif method == "distilled":
            if not distilled:
                raise ValueError("Method 'distilled' needs distilled={name or layer count: model}.")
            out += [
                Candidate(
                    method, f"distilled-{name}" if isinstance(name, int) else str(name), "", None, lambda m=model: m
                )
                for name, model in distilled.items()
            ]
    return out


def _laco_candidates(family: Family, tokenizer, cfg: SweepConfig, student_name: str, ks) -> list[Candidate]:
    """LaCo at the layer count of each size (order "rdsc"), searched on LaCo's few calibration sentences."""
    from .laco import LaCoConfig

    config = LaCoConfig()
    calibration = functools.cache(lambda: calibration_set(tokenizer, config.sentences, config.tokens))
    sizes = family.sizes(cfg.orders[0]).set_index("k").layers
    return [
        Candidate(
            "laco",
            student_name,
            "rdsc",
            k,
            lambda n=int(sizes[k]): laco_pruning(family.teacher, n, calibration(), config),
        )
        for k in ks
    ]


def _evaluate(model: PreTrainedModel, tokenizer, task: str, cfg: SweepConfig) -> pd.DataFrame:
    """Tidy (metric, value, stderr) rows of one model on one task."""
    device = next(model.parameters()).device
    autocast = autocast_for(cfg.autocast, device, "evaluation")
    if autocast:
        with torch.autocast(device.type, dtype=getattr(torch, autocast)):
            return _evaluate_task(model, tokenizer, task, cfg)
    return _evaluate_task(model, tokenizer, task, cfg)


def _evaluate_task(model: PreTrainedModel, tokenizer, task: str, cfg: SweepConfig) -> pd.DataFrame:
    if task == PPL_TASK:
        result = perplexity(model, tokenizer, config=cfg.ppl)
        metrics = ("token_perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte")
        return pd.DataFrame({"metric": metrics, "value": [result[m] for m in metrics], "stderr": math.nan})
    rows = evaluate_lm(model, tokenizer, [task], limit=cfg.limit, batch_size=cfg.batch_size, progress=False)
    if task not in set(rows.task):
        raise ValueError(
            f"{task!r} is an lm-eval group or tag without a score of its own; list its tasks instead: "
            f"{', '.join(sorted(set(rows.task)))}."
        )
    return rows[rows.task == task].drop(columns="task").reset_index(drop=True)


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Each task's first metric by method, order and size; the copies whose prompts differ from stock
    (NOT_COMPARABLE) are labelled so."""
    first = table.groupby("task", sort=False).metric.first()
    headline = table[table.metric == table.task.map(first)]
    wide = headline.pivot_table(
        index=["method", "order", "k", "layers"], columns="task", values="value", dropna=False, sort=False
    ).dropna(how="all")
    return wide.rename(columns={t: f"{t} (not comparable with stock)" for t in NOT_COMPARABLE})


def read_results(path: str | Path) -> pd.DataFrame:
    """The results table at `path` (.csv or .parquet), or an empty one. A file that cannot be read, or whose rows
    are incomplete (cut short), raises DamagedFile naming it and the fix."""
    path = Path(path)
    if not path.exists():
        return pd.DataFrame(columns=COLUMNS)
    fix = "restore it (git checkout, a backup) or move it away to evaluate again into a new table"
    try:
        table = (
            pd.read_parquet(path)
            if path.suffix == ".parquet"
            else pd.read_csv(
                path,
                dtype=_TEXT,
                keep_default_na=False,
                na_values={"k": [""], "limit": [""], "stderr": [""], "value": [""]},
            )
        )
    except Exception as err:  # pandas/pyarrow raise many kinds for bad bytes
        raise DamagedFile(f"{path} is damaged ({type(err).__name__}: {str(err).splitlines()[0][:120]}); {fix}") from err
    if "settings" not in table.columns:  # a table written before the key held them: its rows match no new key
        table.insert(
            list(table.columns).index("limit") + 1 if "limit" in table.columns else len(table.columns), "settings", ""
        )
    missing = set(COLUMNS) - set(table.columns)
    if missing:
        raise ValueError(f"{path} is not a sweep results table: it lacks the columns {sorted(missing)}.")
    cut = table[["teacher", "method", "task", "metric", "timestamp"]].isna() | (table[["timestamp"]] == "")
    if cut.any(axis=None):
        raise DamagedFile(
            f"{path} is damaged (row {int(cut.any(axis=1).to_numpy().argmax()) + 1} is incomplete); {fix}"
        )
    return table


def write_results(table: pd.DataFrame, path: str | Path) -> None:
    """Write the whole table atomically (a reader or a crash never sees a half-written file)."""
    with atomic_path(path) as tmp:
        if Path(path).suffix == ".parquet":
            table.to_parquet(tmp, index=False)
        else:
            table.to_csv(tmp, index=False)


def append_results(rows: pd.DataFrame, path: str | Path) -> pd.DataFrame:
    """Add `rows` to the table at `path` under its write lock, re-reading it first, so that processes appending at
    once lose no row; a row whose key (KEY, metric) is already there is not added again. Returns the table."""
    with write_lock(path):
        table = read_results(path)
        if len(table):
            there = set(map(_key, table[KEY + ["metric"]].itertuples(index=False)))
            rows = rows[[_key(k) not in there for k in rows[KEY + ["metric"]].itertuples(index=False)]]
            table = pd.concat([table, rows], ignore_index=True) if len(rows) else table
        else:
            table = rows
        write_results(table, path)
    return table


def _rank() -> tuple[int, int]:
    """This process's rank and the number of processes (torchrun/accelerate launch set RANK and WORLD_SIZE)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def rank_share(cells: dict) -> dict:
    """This process's share of the sweep's cells {key: (member, task)}: taken task by task, every WORLD_SIZE-th
    cell from its RANK, so that the processes split them with no overlap and no gap, each with its share of every
    task (lm-eval tasks cost far more than perplexity)."""
    rank, world = _rank()
    if not 0 <= rank < world:
        raise ValueError(f"RANK must be in 0..WORLD_SIZE-1, got RANK={rank}, WORLD_SIZE={world}.")
    tasks = list(dict.fromkeys(task for _, task in cells.values()))
    ordered = sorted(cells, key=lambda key: tasks.index(cells[key][1]))  # stable: members keep their order
    mine = set(ordered[rank::world])
    return {key: cell for key, cell in cells.items() if key in mine}


def _lm_eval_ks(K: int, sizes: int | None) -> set[int]:
    """The sizes k at which lm-eval tasks run: `sizes` evenly spaced ones from the student (0) to the teacher (K)."""
    if sizes is None or sizes > K:
        return set(range(K + 1))
    if sizes < 2:
        raise ValueError(f"lm_eval_sizes must be at least 2 (the student and the teacher) or null, got {sizes}.")
    return {round(i * K / (sizes - 1)) for i in range(sizes)}


def _limit(task: str, cfg: SweepConfig) -> int | float | None:
    return cfg.ppl.max_tokens if task == PPL_TASK else cfg.limit


def _settings(task: str, method: str, cfg: SweepConfig, dtype: str) -> str:
    """Every setting besides the key's names, size, task and limit that changes a value: the models' dtype, the
    autocast dtype, the perplexity windows (or lm-eval's batch size: padding changes the float sums) and ShortGPT's
    calibration."""
    parts = {"dtype": dtype, "autocast": cfg.autocast or "none"}
    if task == PPL_TASK:
        parts |= {"window": cfg.ppl.window, "stride": cfg.ppl.stride, "max_tokens": cfg.ppl.max_tokens}
    else:
        parts["batch_size"] = cfg.batch_size
    if method == "shortgpt":
        parts["calibration"] = "x".join(map(str, cfg.calibration))
    return " ".join(f"{name}={value}" for name, value in parts.items())


def _row_key(teacher: str, cand: Candidate, task: str, cfg: SweepConfig, dtype: str) -> tuple:
    return (
        teacher,
        cand.student,
        cand.method,
        cand.order,
        cand.k,
        task,
        _limit(task, cfg),
        _settings(task, cand.method, cfg, dtype),
    )


def _key(values) -> tuple[str, ...]:
    """A key that survives the CSV round trip: numbers as floats, missing values as ''."""

    def norm(v) -> str:
        if v is None or (isinstance(v, numbers.Real) and math.isnan(v)):
            return ""
        if isinstance(v, numbers.Real) and not isinstance(v, bool):
            return repr(float(v))
        return str(v)

    return tuple(norm(v) for v in values)


def _name(model: PreTrainedModel) -> str:
    return getattr(model.config, "_name_or_path", "") or type(model).__name__


def _search_config(profile: str):
    """The profile's settings for KL-searched orders (`pipeline.search`): what `klpatch`/`optimal` use in a sweep
    when no order is saved next to the student with its own."""
    return get(profile).pipeline.search
