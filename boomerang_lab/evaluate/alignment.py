"""How well each student layer stands in for its teacher block: cosine similarity of their hidden states."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..data import WIKITEXT_TEST, data_file
from ..models.plan import LayerPlan

HELD_OUT_TEXT = WIKITEXT_TEST


def token_batch(
    tokenizer: PreTrainedTokenizerBase, source: str | Path = HELD_OUT_TEXT, num_sequences: int = 8, seq_len: int = 128
) -> torch.Tensor:
    """The first num_sequences × seq_len tokens of a text file (a path, or a file shipped under data/)."""
    path = Path(source) if Path(source).is_file() else data_file(source)
    text = path.read_text(encoding="utf-8")
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    need = num_sequences * seq_len
    if len(ids) < need:
        raise ValueError(f"The text has {len(ids)} tokens; {num_sequences} sequences of {seq_len} need {need}.")
    return torch.tensor(ids[:need]).view(num_sequences, seq_len)


@torch.no_grad()
def layer_alignment(
    teacher: PreTrainedModel,
    student: PreTrainedModel,
    plan: LayerPlan,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    batch_size: int = 8,
) -> pd.DataFrame:
    """Mean cosine similarity over (unpadded) tokens of every hidden-state pair in `plan.alignment()`.

    Rows: student_layer (0 = embeddings, j = output of student layer j, the last = after the final norm),
    teacher_layer (same numbering in the teacher), cosine.
    """
    plan.check_fits(teacher.config.num_hidden_layers, student.config.num_hidden_layers)
    pairs = plan.alignment()
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    total = torch.zeros(len(pairs), dtype=torch.float64)
    count = 0.0
    device = next(student.parameters()).device
    for start in range(0, len(input_ids), batch_size):
        ids, m = input_ids[start : start + batch_size].to(device), mask[start : start + batch_size].to(device)
        t_states = teacher(input_ids=ids, attention_mask=m, output_hidden_states=True).hidden_states
        s_states = student(input_ids=ids, attention_mask=m, output_hidden_states=True).hidden_states
        weight = m.to(torch.float64)
        for p, (s, t) in enumerate(pairs):
            cos = F.cosine_similarity(s_states[s].double(), t_states[t].to(device).double(), dim=-1)
            total[p] += (cos * weight).sum().cpu()
        count += float(weight.sum())
    n_s, n_t = len(plan.kept), plan.num_teacher_layers
    return pd.DataFrame(
        {
            "student_layer": [s % (n_s + 1) for s, _ in pairs],
            "teacher_layer": [t % (n_t + 1) for _, t in pairs],
            "cosine": (total / count).tolist(),
        }
    )
