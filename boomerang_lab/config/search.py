"""How a KL-searched patch order is searched (`family.search`): the calibration windows and the arithmetic."""

from __future__ import annotations

from dataclasses import dataclass, field

AUTOCAST_DTYPES = ("bfloat16", "float16", "float32", "float64")
"""torch dtype names a search may run under (torch.autocast)."""


@dataclass
class SearchConfig:
    """How a KL-searched order ("klpatch", "optimal") is searched: the calibration windows and the arithmetic.

    The defaults are the GPU setting: 64 windows of 256 tokens, the model's own dtype. A profile sets
    its own (`pipeline.search`); the `quick` profile's was chosen on validation text (benchmarks/study_klpatch.py).
    """

    __pydantic_config__ = {"extra": "forbid"}

    num_sequences: int = field(default=64, metadata={"help": "calibration windows of training text"})
    seq_len: int = field(default=256, metadata={"help": "tokens per calibration window"})
    seed: int = field(default=0, metadata={"help": "which windows: the seed of their random offsets in the corpus"})
    stride: int = field(
        default=1, metadata={"help": "score the KL at every stride-th position (all positions still run the layers)"}
    )
    autocast: str | None = field(
        default=None, metadata={"help": "run the search under torch.autocast to this dtype (e.g. bfloat16); null: off"}
    )
    batch_size: int = field(default=8, metadata={"help": "calibration windows per forward pass"})

    def __post_init__(self):
        for name in ("num_sequences", "seq_len", "stride", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"SearchConfig.{name} must be a positive integer, got {value!r}.")
        if self.autocast not in (None, *AUTOCAST_DTYPES):
            raise ValueError(
                f"SearchConfig.autocast must be a torch dtype name ({', '.join(AUTOCAST_DTYPES)}) or null, "
                f"got {self.autocast!r}."
            )

    def calibration(self, tokenizer):
        """The calibration windows ([num_sequences, seq_len] token ids), drawn from the training corpus."""
        from ..data import calibration_set

        return calibration_set(tokenizer, self.num_sequences, self.seq_len, self.seed)
