"""Off-the-shelf distilled pairs interpolated with no training (DistilBERT into BERT, DistilGPT2 into GPT-2), and
tiny random stand-ins of the same architectures for offline runs."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
from transformers import (
    BertConfig,
    BertForMaskedLM,
    DistilBertConfig,
    DistilBertForMaskedLM,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from ..family.members import Family
from ..models.adapters import layers_of
from ..models.bridges import as_teacher_class
from ..models.loading import load_model
from ..models.plan import LayerPlan
from ..models.student import init_student
from .pseudo_perplexity import MaskTokens

DISTIL_KEPT = (0, 2, 4, 7, 9, 11)
"""The teacher layers DistilBERT and DistilGPT2 were initialised from (transformers' distillation scripts)."""


@dataclass(frozen=True)
class Pair:
    teacher: str
    student: str
    arch: str  # the architecture of its tiny offline stand-in: "bert" or "gpt2"


PAIRS = (
    Pair("bert-base-uncased", "distilbert-base-uncased", "bert"),
    Pair("bert-base-cased", "distilbert-base-cased", "bert"),
    Pair("gpt2", "distilgpt2", "gpt2"),
)

BYTE_TOKENS = MaskTokens(mask=257, cls=258, sep=259, pad=256)
"""The tiny stand-ins read UTF-8 bytes (ids 0..255) plus these four special ids."""
BYTE_VOCAB = 260


@dataclass
class OffTheShelf:
    """A teacher, its off-the-shelf student and their family; no tokenizer means the byte-level tiny stand-ins."""

    teacher: PreTrainedModel
    student: PreTrainedModel
    family: Family
    tokenizer: PreTrainedTokenizerBase | None = None

    def encode(self, text: str) -> list[int]:
        if self.tokenizer is None:
            return list(text.encode("utf-8"))
        return self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]

    def decode(self, ids) -> str:
        if self.tokenizer is None:
            return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    @property
    def mask_tokens(self) -> MaskTokens:
        return BYTE_TOKENS if self.tokenizer is None else MaskTokens.from_tokenizer(self.tokenizer)

    @torch.no_grad()
    def endpoints(self, text: str) -> pd.DataFrame:
        """Largest logit difference on `text` between member k=0 and the student, and member k=K and the teacher."""
        input_ids = torch.tensor([self.encode(text)])
        rows = []
        for k, model, name in [(0, self.student, "student"), (self.family.K, self.teacher, "teacher")]:
            gap = (self.family.build(k)(input_ids).logits - model(input_ids).logits).abs().max().item()
            rows.append({"k": k, "compared_with": name, "max_abs_logit_diff": gap, "identical": gap == 0.0})
        return pd.DataFrame(rows)

    @torch.no_grad()
    def generate_by_size(self, prompt: str, max_new_tokens: int = 20) -> pd.DataFrame:
        """Greedy continuation of `prompt` by every member (causal pairs)."""
        ids = torch.tensor([self.encode(prompt)])
        rows = []
        for k in range(self.family.K + 1):
            member = self.family.build(k)
            out = member.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=member.generation_config.eos_token_id,
            )
            rows.append({"k": k, "layers": len(layers_of(member)), "continuation": self.decode(out[0, ids.shape[1] :])})
        return pd.DataFrame(rows)


def pair_family(teacher: PreTrainedModel, student: PreTrainedModel, kept=DISTIL_KEPT) -> Family:
    """The family of a teacher and a student whose layers were initialised from the teacher's `kept` layers."""
    return Family(teacher, student, LayerPlan.from_kept(kept, len(layers_of(teacher))))


def load_pair(
    teacher: str,
    student: str,
    kept=DISTIL_KEPT,
    offline: bool = False,
    dtype: str = "float32",
    device: str | None = None,
) -> OffTheShelf:
    """The pair from hub ids or local paths, or (offline) tiny random stand-ins of the same architectures."""
    if offline:
        arch = {p.teacher: p.arch for p in PAIRS}.get(teacher)
        if arch is None:
            known = ", ".join(p.teacher for p in PAIRS)
            raise ValueError(f"No offline stand-in for teacher {teacher!r}; known: {known}.")
        t, s = tiny_pair(arch, kept=kept)
        return OffTheShelf(t, s, pair_family(t, s, kept))
    t, tokenizer = load_model(teacher, dtype=dtype, device=device)
    s, _ = load_model(student, dtype=dtype, device=device)
    return OffTheShelf(t, s, pair_family(t, s, kept), tokenizer)


def tiny_pair(
    arch: str, kept=DISTIL_KEPT, seed: int = 0, noise: float = 0.05, width: int = 32
) -> tuple[PreTrainedModel, PreTrainedModel]:
    """A random 12-layer teacher and a student of the off-the-shelf class, initialised from its `kept` layers as the
    real one was, then moved by `noise` (a stand-in for distillation)."""
    torch.manual_seed(seed)
    positions = 256
    if arch == "bert":
        teacher = BertForMaskedLM(
            BertConfig(
                vocab_size=BYTE_VOCAB,
                hidden_size=width,
                num_hidden_layers=12,
                num_attention_heads=4,
                intermediate_size=2 * width,
                max_position_embeddings=positions,
                pad_token_id=BYTE_TOKENS.pad,
            )
        )
        student = DistilBertForMaskedLM(
            DistilBertConfig(
                vocab_size=BYTE_VOCAB,
                dim=width,
                n_layers=len(kept),
                n_heads=4,
                hidden_dim=2 * width,
                pad_token_id=BYTE_TOKENS.pad,
                max_position_embeddings=positions,
            )
        )
        kept_layers = init_student(teacher, LayerPlan.from_kept(kept, 12)).state_dict()
        as_teacher_class(teacher, student).load_state_dict(  # copies into the student, which its view shares
            {k: v for k, v in kept_layers.items() if "token_type" not in k}, strict=False
        )
    elif arch == "gpt2":
        teacher = GPT2LMHeadModel(
            GPT2Config(
                vocab_size=BYTE_VOCAB,
                n_embd=width,
                n_layer=12,
                n_head=4,
                n_positions=positions,
                bos_token_id=BYTE_TOKENS.pad,
                eos_token_id=BYTE_TOKENS.pad,
            )
        )
        student = init_student(teacher, LayerPlan.from_kept(kept, 12))
    else:
        raise ValueError(f"Unknown stand-in architecture {arch!r}; use 'bert' or 'gpt2'.")
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * noise)
    return teacher.eval(), student.eval()
