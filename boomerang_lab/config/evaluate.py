"""A profile's evaluation settings: which tasks, at what limit, with which fast-perplexity windows (light: no torch).

The profiles themselves (smoke, quick, kit, paper, ...) live in `boomerang_lab.config.profiles`: a profile's evaluation
settings are `boomerang_lab.config.profiles.get(name).evaluate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PPL_TASK = "wikitext_ppl"
"""The fast strided-window perplexity (perplexity.py) as a task name in sweeps; its `limit` is its token budget."""

LOCAL_TASKS = (
    "arc_easy_local",
    "arc_challenge_local",
    "piqa_local",
    "hellaswag_local",
    "winogrande_local",
    "boolq_local",
    "openbookqa_local",
    "lambada_openai_local",
    "rte_local",
    "wikitext_local",
)
"""The lm-eval task configs shipped under evaluate/tasks/ (`<stock name>_local`), reading the files under data/."""


@dataclass(frozen=True)
class PerplexityConfig:
    """Windows of `window` tokens start every `stride` tokens; each scores the tokens no earlier window scored.

    stride < window: every token after the first is scored, with at least window - stride tokens of context.
    stride == window: non-overlapping windows whose first token is context only (the GPTQ convention).
    """

    __pydantic_config__ = {"extra": "forbid"}

    window: int = field(default=2048, metadata={"help": "tokens per window"})
    stride: int = field(default=2048, metadata={"help": "tokens between window starts (<= window)"})
    max_tokens: int | None = field(
        default=None, metadata={"help": "score only the first max_tokens tokens of the text (null: all)"}
    )

    def __post_init__(self):
        if not 0 < self.stride <= self.window:
            raise ValueError(f"Need 0 < stride <= window, got stride={self.stride}, window={self.window}.")
        if self.max_tokens is not None and self.max_tokens < 2:
            raise ValueError(
                f"max_tokens must be at least 2 (one token of context, one scored), got {self.max_tokens}."
            )


@dataclass(frozen=True)
class EvalProfile:
    """What `sweep` evaluates for a profile (a SweepConfig's tasks, limit, ppl and batch_size default to these)."""

    __pydantic_config__ = {"extra": "forbid"}

    tasks: tuple[str, ...] = field(
        default=(PPL_TASK,),
        metadata={
            "help": "tasks: wikitext_ppl (the fast token perplexity), `*_local` lm-eval tasks, stock lm-eval "
            "names, or the tag boomerang_local"
        },
    )
    limit: int | float | None = field(
        default=None, metadata={"help": "examples per lm-eval task (a float < 1: a fraction; null: all)"}
    )
    ppl: PerplexityConfig = field(
        default_factory=PerplexityConfig,
        metadata={"help": "the fast perplexity's windows and token budget (wikitext_ppl)"},
    )
    batch_size: int = field(default=1, metadata={"help": "lm-eval batch size"})
    lm_eval_sizes: int | None = field(
        default=None,
        metadata={
            "help": "run the lm-eval tasks at this many evenly spaced sizes, the student and the teacher included "
            "(null: every size); wikitext_ppl always runs at every size"
        },
    )
    autocast: str | None = field(
        default=None,
        metadata={
            "help": "evaluate under torch.autocast to this dtype (bfloat16: ~1.8x faster on a CPU with avx512_bf16, "
            "token perplexity within 0.2% of float32 on SmolLM2-135M); null: the model's own dtype"
        },
    )

    def __post_init__(self):
        object.__setattr__(self, "tasks", tuple(self.tasks))
        if isinstance(self.ppl, dict):
            object.__setattr__(self, "ppl", PerplexityConfig(**self.ppl))
        if self.lm_eval_sizes is not None and self.lm_eval_sizes < 2:
            raise ValueError(
                f"lm_eval_sizes must be at least 2 (the student and the teacher) or null, got {self.lm_eval_sizes}."
            )
        if self.autocast not in (None, "bfloat16", "float16"):
            raise ValueError(f"autocast must be null, bfloat16 or float16, got {self.autocast!r}.")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}.")
