"""Evaluate an in-memory model with lm-evaluation-harness: local `*_local` tasks and any stock task name."""

from __future__ import annotations

import logging
import math
import os
from contextlib import contextmanager, nullcontext
from functools import lru_cache
from typing import Sequence

import pandas as pd
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .tasks import LOCAL_TASKS, TASKS_DIR

_NOISE = (
    "Custom kwargs can be passed",
    "`pretrained` model kwarg is not of type `str`",
    "Passed an already-initialized model",
)


class _Quiet(logging.Filter):
    """Drops lm-eval's per-call warnings about custom datasets and in-memory models (expected here)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(noise in str(record.msg) for noise in _NOISE)


for _name in ("lm_eval.api.task", "lm_eval.models.huggingface"):
    logging.getLogger(_name).addFilter(_Quiet())


@lru_cache(maxsize=1)
def _cache_env_report() -> None:
    """lm-eval asks torch for its environment report on every call (a dozen subprocesses, seconds); it never changes."""
    from torch.utils import collect_env

    collect_env.get_pretty_env_info = lru_cache(maxsize=1)(collect_env.get_pretty_env_info)


def _hidden_bar(*args, **kwargs) -> tqdm:
    return tqdm(*args, **{**kwargs, "disable": True})  # lm-eval passes disable= itself


@contextmanager
def _no_progress_bars():
    """lm-eval's bars for building and running each task's requests off (a sweep shows its own bar instead)."""
    import lm_eval.api.model
    import lm_eval.api.task
    import lm_eval.models.huggingface

    modules = (lm_eval.api.task, lm_eval.api.model, lm_eval.models.huggingface)
    saved = [module.tqdm for module in modules]
    for module in modules:
        module.tqdm = _hidden_bar
    try:
        yield
    finally:
        for module, bar in zip(modules, saved):
            module.tqdm = bar


@lru_cache(maxsize=2)
def task_manager(include_defaults: bool = True):
    """lm-eval's TaskManager with our `*_local` tasks; indexing the ~10k stock configs takes a while, so it is
    cached."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASKS_DIR), include_defaults=include_defaults)


def manager_for(tasks: Sequence[str]):
    """The cheap local-only manager when every task is ours, else the full one (stock names need the hub)."""
    local = set(LOCAL_TASKS) | {"boomerang_local"}
    return task_manager(include_defaults=not set(tasks) <= local)


def evaluate_lm(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    tasks: Sequence[str],
    limit: int | float | None = None,
    batch_size: int = 1,
    num_fewshot: int | None = None,
    bootstrap_iters: int = 1000,
    progress: bool = True,
) -> pd.DataFrame:
    """`lm_eval.simple_evaluate(HFLM(pretrained=model, tokenizer=tokenizer), tasks, ...)` as tidy rows
    (task, metric, value, stderr); the same call, so the same numbers. `limit`: examples per task (or a fraction).

    `bootstrap_iters` only sets how stderrs of non-mean metrics (e.g. lambada perplexity) are estimated;
    `progress=False` hides lm-eval's per-task progress bars.
    """
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    _cache_env_report()
    tasks = list(tasks)
    typos = [t for t in tasks if t.endswith("_local") and t not in LOCAL_TASKS]  # caught before indexing stock tasks
    manager = None if typos else manager_for(tasks)
    unknown = typos or [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise ValueError(
            f"Unknown lm-eval task(s) {unknown}. Local (offline) tasks: {', '.join(LOCAL_TASKS)} "
            f"(or the tag boomerang_local); any stock lm-eval task name also works with hub access."
        )
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    try:
        with nullcontext() if progress else _no_progress_bars(), _one_process():
            out = simple_evaluate(
                lm,
                tasks=tasks,
                limit=limit,
                num_fewshot=num_fewshot,
                task_manager=manager,
                bootstrap_iters=bootstrap_iters,
                log_samples=False,
            )
    except (ConnectionError, OSError) as err:
        stock = [t for t in tasks if f"{t}_local" in LOCAL_TASKS]
        hint = f" Offline? Use the local copies: {', '.join(f'{t}_local' for t in stock)}." if stock else ""
        raise RuntimeError(f"lm-eval could not load its data for {tasks}: {err}.{hint}") from err
    return tidy(out["results"])


@contextmanager
def _one_process():
    """lm-eval as one process even under torchrun: the sweep splits its cells across ranks itself, and lm-eval
    returns results only where LOCAL_RANK is 0."""
    saved = {name: os.environ.pop(name, None) for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    try:
        yield
    finally:
        os.environ.update({name: value for name, value in saved.items() if value is not None})


def tidy(results: dict[str, dict]) -> pd.DataFrame:
    """lm-eval's `results` dict -> one row per (task, metric); a filter other than `none` stays in the name."""
    rows = []
    for task, metrics in results.items():
        for key, value in metrics.items():
            name, _, filt = key.partition(",")
            if not filt or name.endswith("_stderr") or not isinstance(value, (int, float)):
                continue
            stderr = metrics.get(f"{name}_stderr,{filt}")
            rows.append(
                {
                    "task": task,
                    "metric": name if filt == "none" else f"{name},{filt}",
                    "value": float(value),
                    "stderr": float(stderr) if isinstance(stderr, (int, float)) else math.nan,
                }
            )
    return pd.DataFrame(rows, columns=["task", "metric", "value", "stderr"])
