"""Evaluation profiles: which tasks, at what limit, for a smoke test, a CPU run, and the paper."""
from __future__ import annotations

from dataclasses import dataclass

from .perplexity import PerplexityConfig
from .tasks import LOCAL_TASKS

PPL_TASK = "wikitext_ppl"
"""The fast strided-window perplexity (perplexity.py) as a task name in sweeps; its `limit` is its token budget."""


@dataclass(frozen=True)
class EvalProfile:
    tasks: tuple[str, ...]
    limit: int | float | None  # examples per lm-eval task (None: all)
    ppl: PerplexityConfig  # the fast perplexity's windows and token budget


EVAL_PROFILES: dict[str, EvalProfile] = {
    # seconds on the tiny random model
    "smoke": EvalProfile((PPL_TASK, "arc_easy_local"), limit=4, ppl=PerplexityConfig(window=256, stride=256, max_tokens=512)),
    # the CPU default: 3 methods x 15 SmolLM2 sizes in 35 min on 2 free cores (measured); perplexity on 4k tokens
    "quick": EvalProfile((PPL_TASK, "arc_easy_local", "piqa_local", "winogrande_local"), limit=20,
                         ppl=PerplexityConfig(window=1024, stride=1024, max_tokens=4096)),
    # every task, every example (a GPU job)
    "paper": EvalProfile((PPL_TASK, *LOCAL_TASKS), limit=None, ppl=PerplexityConfig(window=2048, stride=2048)),
}
