"""Masked-LM pseudo-perplexity (Salazar et al., 2020): mask each token in turn, score it; exp of the mean NLL."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..data import WIKITEXT_TEST, data_file
from ..family.members import Family, OrderLike


@dataclass(frozen=True)
class MaskTokens:
    """The ids pseudo-perplexity adds: the mask, the window wrappers (None: not used) and padding."""

    mask: int
    cls: int | None = None
    sep: int | None = None
    pad: int = 0

    @classmethod
    def from_tokenizer(cls, tokenizer: PreTrainedTokenizerBase) -> "MaskTokens":
        if tokenizer.mask_token_id is None:
            raise ValueError(
                f"{type(tokenizer).__name__} has no mask token: pseudo-perplexity needs a masked-LM "
                f"tokenizer (e.g. BERT's)."
            )
        return cls(tokenizer.mask_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id or 0)


@dataclass(frozen=True)
class PseudoPerplexity:
    nll: float  # summed negative log-likelihood of the scored tokens, in nats
    tokens: int

    @property
    def mean_nll(self) -> float:
        return self.nll / self.tokens

    @property
    def pppl(self) -> float:
        return math.exp(self.mean_nll)


def wikitext_test_text() -> str:
    """The raw WikiText-2 test split, as shipped (data/SOURCES.md)."""
    return data_file(WIKITEXT_TEST).read_text(encoding="utf-8")


@torch.no_grad()
def pseudo_perplexity(
    model: PreTrainedModel,
    ids: Sequence[int] | torch.Tensor,
    special: MaskTokens,
    window: int = 128,
    batch_size: int = 64,
    progress: bool = False,
) -> PseudoPerplexity:
    """Cut `ids` into consecutive windows of `window` tokens, each run as [CLS] window [SEP]; every token is scored
    once, masked, with the rest of its window as context. `batch_size` masked copies run per forward pass."""
    ids = torch.as_tensor(ids, dtype=torch.long)
    if ids.ndim != 1 or len(ids) == 0:
        raise ValueError(f"ids must be a non-empty 1-D sequence of token ids, got shape {tuple(ids.shape)}.")
    if window < 1 or batch_size < 1:
        raise ValueError(f"window and batch_size must be positive, got window={window}, batch_size={batch_size}.")
    offset = int(special.cls is not None)
    width = offset + window + int(special.sep is not None)
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and width > limit:
        raise ValueError(
            f"A window of {window} tokens with its wrappers is {width} positions; "
            f"{type(model).__name__} takes at most {limit}."
        )
    n = len(ids)
    num_windows = -(-n // window)
    chunks = torch.full((num_windows * window,), special.pad, dtype=torch.long)
    chunks[:n] = ids
    chunks = chunks.view(num_windows, window)
    lengths = (n - torch.arange(num_windows) * window).clamp(max=window)
    positions = torch.arange(width)
    device = next(model.parameters()).device
    nll = 0.0
    for start in tqdm(range(0, n, batch_size), disable=not progress, desc="pseudo-perplexity"):
        token = torch.arange(start, min(start + batch_size, n))
        row, col, rows = token // window, token % window, torch.arange(len(token))
        inputs = torch.full((len(token), width), special.pad, dtype=torch.long)
        inputs[:, offset : offset + window] = chunks[row]
        if special.cls is not None:
            inputs[:, 0] = special.cls
        end = offset + lengths[row]
        if special.sep is not None:
            inputs[rows, end] = special.sep
            end = end + 1
        inputs[rows, offset + col] = special.mask
        attention = (positions < end[:, None]).long()
        logits = model(input_ids=inputs.to(device), attention_mask=attention.to(device)).logits
        scores = logits[rows.to(device), (offset + col).to(device)].double().log_softmax(-1)
        nll -= scores.gather(1, ids[token, None].to(device)).sum().item()
    return PseudoPerplexity(nll, n)


def family_pseudo_perplexity(
    family: Family,
    ids: Sequence[int] | torch.Tensor,
    special: MaskTokens,
    order: OrderLike = "last",
    window: int = 128,
    batch_size: int = 64,
    progress: bool = False,
) -> pd.DataFrame:
    """`family.sizes(order)` with each member's pseudo-perplexity (`pppl`) and mean NLL per token (`nll`)."""
    table = family.sizes(order)
    scores = [
        pseudo_perplexity(family.build(int(k), order), ids, special, window, batch_size, progress)
        for k in tqdm(table.k, disable=not progress, desc="members")
    ]
    return table.assign(pppl=[s.pppl for s in scores], nll=[s.mean_nll for s in scores], tokens=len(ids))
