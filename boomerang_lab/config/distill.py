"""The distillation settings: the recipe (`DistillConfig`) and its loss terms (`LossConfig`). Light: no torch."""

from __future__ import annotations

from dataclasses import dataclass, field

LOCAL_LOSSES = ("nmse", "cos")
TEACHER_DTYPES = (None, "float32", "fp32", "bfloat16", "bf16", "float16", "fp16")
"""The names `models.loading.resolve_dtype` knows (None: the default)."""
"""The local stage's per-layer losses (`distill.local.local_loss`)."""


@dataclass(frozen=True)
class LossConfig:
    """Weights of the three terms (0 switches a term off) and the KL temperature; paper defaults."""

    __pydantic_config__ = {"extra": "forbid"}

    ce_weight: float = field(default=1.0, metadata={"help": "weight of the cross-entropy on the next token"})
    kl_weight: float = field(default=0.1, metadata={"help": "weight of the KL to the teacher's logits"})
    temperature: float = field(default=1.0, metadata={"help": "the KL's temperature (scaled by its square)"})
    cos_weight: float = field(
        default=2.0,
        metadata={
            "help": "weight of the cosine loss between aligned hidden states, divided by the number of aligned "
            "pairs, as in the paper"
        },
    )
    chunk_tokens: int = field(
        default=2048,
        metadata={"help": "tokens per chunk of full-vocabulary work (CE and KL); bounds the temporary logits' memory"},
    )
    compile: bool = field(
        default=False,
        metadata={"help": "torch.compile the per-chunk arithmetic (fuses its elementwise passes; worth it on GPU)"},
    )

    def __post_init__(self):
        weights = {"ce_weight": self.ce_weight, "kl_weight": self.kl_weight, "cos_weight": self.cos_weight}
        if any(w < 0 for w in weights.values()) or not any(weights.values()):
            raise ValueError(f"Loss weights must be >= 0 with at least one positive, got {weights}.")
        if self.temperature <= 0 or self.chunk_tokens < 1:
            raise ValueError(
                f"temperature must be > 0 and chunk_tokens >= 1, got {self.temperature} and {self.chunk_tokens}."
            )

    @property
    def terms(self) -> tuple[str, ...]:
        """The switched-on terms, by name."""
        return tuple(n for n, w in (("ce", self.ce_weight), ("kl", self.kl_weight), ("cos", self.cos_weight)) if w)

    @property
    def needs_teacher(self) -> bool:
        return bool(self.kl_weight or self.cos_weight)


MEMBER_ORDERS = ("random", "last", "first")
"""The orders members may be drawn in during training."""


@dataclass(frozen=True)
class FamilyAwareConfig:
    """The family-aware global stage (off: members_per_step = 0, the paper's recipe)."""

    members_per_step: int = field(
        default=0,
        metadata={
            "help": "family-aware global stage: members (distinct sizes 1..K-1) whose loss is added to the student's "
            "at each step (0: off, the paper); the student itself always counts"
        },
    )
    member_orders: tuple[str, ...] = field(
        default=("random",),
        metadata={
            "help": "the orders the family-aware stage draws members in, one uniformly per member: random (a random "
            "subset of blocks, for the searched klpatch order), last, first"
        },
    )

    def __post_init__(self):
        object.__setattr__(self, "member_orders", tuple(self.member_orders))
        if self.members_per_step < 0:
            raise ValueError(f"members_per_step must be >= 0 (0: off), got {self.members_per_step}.")
        bad = [o for o in self.member_orders if o not in MEMBER_ORDERS]
        if bad or not self.member_orders:
            raise ValueError(
                f"member_orders must be a non-empty list of {', '.join(MEMBER_ORDERS)}, got {list(self.member_orders)}."
            )

    @property
    def on(self) -> bool:
        return self.members_per_step > 0


@dataclass
class DistillConfig:
    """One distillation run: the paper's hyperparameters by default; the presets are the profiles' recipes
    (`boomerang_lab.config.profiles`, `distill_config(name)`)."""

    __pydantic_config__ = {"extra": "forbid"}  # pydantic: an unknown field is an error

    output_dir: str = field(default="runs/student", metadata={"help": "the student directory to write"})
    teacher: str = field(
        default="smollm2-135m",
        metadata={
            "help": "the teacher the CLI loads: a hub id, a local path or an embedded name (distill() takes the model)"
        },
    )
    student_init: str = field(
        default="teacher",
        metadata={"help": "how the CLI initialises the student: teacher (kept layers, the paper) or random; recorded"},
    )
    seq_len: int = field(default=512, metadata={"help": "tokens per training sequence"})
    packing: bool = field(
        default=True,
        metadata={
            "help": "pack documents joined by EOS into full blocks (true), or one document per sequence, truncated "
            "and right-padded with EOS, padding ignored by the loss (false: the paper's)"
        },
    )
    batch_size: int = field(
        default=8,
        metadata={
            "help": "sequences per device per micro-step; the global batch is batch_size x grad_accum x processes"
        },
    )
    grad_accum: int = field(default=1, metadata={"help": "micro-steps accumulated per optimizer step"})
    max_steps: int = field(default=500, metadata={"help": "optimizer steps"})
    lr: float = field(default=3e-4, metadata={"help": "peak learning rate"})
    scheduler: str = field(default="cosine", metadata={"help": "learning-rate schedule (a transformers name)"})
    warmup: float = field(default=0.01, metadata={"help": "warm-up: a fraction of max_steps (< 1) or steps"})
    betas: tuple[float, float] = field(default=(0.9, 0.95), metadata={"help": "AdamW betas"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm"})
    optim: str = field(default="adamw_torch_fused", metadata={"help": "optimizer (a transformers name)"})
    bf16: bool = field(default=False, metadata={"help": "bf16 autocast for the student (fp32 master weights)"})
    teacher_dtype: str | None = field(
        default=None,
        metadata={
            "help": "the teacher's dtype in training (float32, bfloat16, float16); null: bfloat16 on GPU, the "
            "teacher's own dtype elsewhere. The caller's teacher is never cast: a cast copy is used when it differs"
        },
    )
    loss: LossConfig = field(default_factory=LossConfig, metadata={"help": "the loss terms' weights"})
    family_aware: FamilyAwareConfig = field(
        default_factory=FamilyAwareConfig,
        metadata={
            "help": "the family-aware global stage (distill/family_aware.py): the loss also on sampled members of "
            "the family built from the current student; off by default (the paper)"
        },
    )
    freeze_embeddings: bool = field(
        default=False,
        metadata={"help": "freeze the student's embeddings and LM head (the paper trains every parameter)"},
    )
    activation_checkpointing: bool = field(
        default=False, metadata={"help": "recompute the student's layers in backward: less memory, ~20% slower"}
    )
    compile: bool = field(
        default=False,
        metadata={
            "help": "torch.compile the student and the teacher one decoder layer at a time (regional compilation); "
            "the loss's own arithmetic compiles with loss.compile"
        },
    )
    use_cpu: bool = field(default=False, metadata={"help": "train on the CPU even if a GPU is present"})
    save_steps: int = field(default=100, metadata={"help": "checkpoint every n steps (for resuming)"})
    log_steps: int = field(default=1, metadata={"help": "log the loss terms every n steps"})
    seed: int = field(default=0, metadata={"help": "random seed (initialisation, data order)"})
    local_steps: int = field(
        default=0,
        metadata={
            "help": "steps of blockwise local distillation before the global objective: each multi-layer student layer "
            "learns alone, in the teacher's context, to map its block's input to its output (0: none, the paper)"
        },
    )
    local_lr: float = field(default=1e-3, metadata={"help": "peak learning rate of the local stage"})
    local_loss: str = field(
        default="nmse",
        metadata={"help": "the local stage's per-layer loss: nmse (|y - t|^2 / |t|^2 per token) or cos (1 - cosine)"},
    )

    def __post_init__(self):
        if isinstance(self.loss, dict):
            self.loss = LossConfig(**self.loss)
        self.betas = tuple(self.betas)
        if self.student_init not in ("teacher", "random"):
            raise ValueError(f"student_init must be 'teacher' or 'random', got {self.student_init!r}.")
        if min(self.batch_size, self.grad_accum, self.save_steps, self.log_steps, self.seq_len) < 1:
            raise ValueError(f"batch_size, grad_accum, save_steps, log_steps and seq_len must be positive: {self}")
        if self.max_steps < 0 or self.local_steps < 0 or self.max_steps + self.local_steps < 1:
            raise ValueError(
                f"max_steps (global stage) and local_steps (local stage) must be >= 0 with at least one "
                f"positive, got max_steps={self.max_steps}, local_steps={self.local_steps}."
            )
        if self.local_loss not in LOCAL_LOSSES:
            raise ValueError(f"local_loss must be one of {', '.join(LOCAL_LOSSES)}, got {self.local_loss!r}.")
        if self.teacher_dtype not in TEACHER_DTYPES:
            raise ValueError(
                f"Unknown dtype {self.teacher_dtype!r} for teacher_dtype; use one of {', '.join(TEACHER_DTYPES[1:])} "
                f"or null."
            )
        if self.local_lr <= 0:
            raise ValueError(f"local_lr must be positive, got {self.local_lr}.")
