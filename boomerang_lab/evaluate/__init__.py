"""Evaluate every family size, offline, with lm-evaluation-harness and a fast perplexity — against the baselines."""

from ..config.evaluate import LOCAL_TASKS, PPL_TASK, EvalProfile, PerplexityConfig
from .baselines import block_influence, naive_pruning, shortgpt, teacher_view
from .lm_eval import evaluate_lm
from .perplexity import perplexity, wikitext_text
from .sweep import METHODS, SweepConfig, read_results, summary, sweep
from .tasks import TASKS_DIR

__all__ = [
    "LOCAL_TASKS",
    "METHODS",
    "PPL_TASK",
    "TASKS_DIR",
    "EvalProfile",
    "PerplexityConfig",
    "SweepConfig",
    "block_influence",
    "evaluate_lm",
    "naive_pruning",
    "perplexity",
    "read_results",
    "shortgpt",
    "summary",
    "sweep",
    "teacher_view",
    "wikitext_text",
]
