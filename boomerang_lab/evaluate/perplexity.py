"""Fast perplexity over WikiText-2 test with strided windows: the quick-sweep and CPU default evaluator.

A proxy, not lm-eval's `wikitext` number: the text is the whole test split as one stream (the convention of the
pruning literature, e.g. GPTQ and ShortGPT), cut into windows, instead of lm-eval's per-article rolling windows.
"""

from __future__ import annotations

import math
import weakref

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..config.evaluate import PerplexityConfig
from ..data import WIKITEXT_TEST, data_file


def wikitext_text() -> str:
    """WikiText-2 raw test as `"\\n\\n".join(dataset["text"])` of the HF `wikitext-2-raw-v1` test split
    (one row per line: the line with its newline, blank lines as empty rows)."""
    lines = data_file(WIKITEXT_TEST).read_text(encoding="utf-8").split("\n")[:-1]
    return "\n\n".join(line + "\n" if line.strip() else "" for line in lines)


_ENCODED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _encode(tokenizer: PreTrainedTokenizerBase, text: str):
    """Token ids and character offsets of `text`; the last text per tokenizer is cached (a sweep reuses it)."""
    cached = _ENCODED.get(tokenizer)
    if cached is None or cached[0] != text:
        cached = _ENCODED[tokenizer] = (text, tokenizer(text, return_offsets_mapping=True))
    return cached[1]


@torch.no_grad()
def perplexity(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    text: str | None = None,
    config: PerplexityConfig = PerplexityConfig(),
) -> dict[str, float]:
    """Token, word and byte perplexity and bits per byte of `text` (default: WikiText-2 test).

    The summed negative log-likelihood of the scored tokens is divided by their number, by the words
    (whitespace-separated) or by the UTF-8 bytes of the text the tokens cover (so a `max_tokens` prefix is consistent).
    """
    text = wikitext_text() if text is None else text
    if not tokenizer.is_fast:
        raise ValueError("perplexity needs a fast tokenizer (for character offsets); load it with use_fast=True.")
    enc = _encode(tokenizer, text)
    ids = torch.tensor(enc["input_ids"][: config.max_tokens])
    if len(ids) < 2:
        raise ValueError("The text has fewer than 2 tokens: nothing to score.")
    covered = text[: enc["offset_mapping"][len(ids) - 1][1]]
    device = next(model.parameters()).device
    nll, scored, prev_end = 0.0, 0, 0
    for begin in range(0, len(ids), config.stride):
        end = min(begin + config.window, len(ids))
        first = max(prev_end, begin + 1)  # the first token this window scores (it needs one token of context)
        window = ids[begin:end].to(device)
        logits = model(window[None], use_cache=False).logits[0, first - begin - 1 : end - begin - 1]
        nll += F.cross_entropy(logits.float(), window[first - begin :], reduction="sum").item()
        scored, prev_end = scored + end - first, end
        if end == len(ids):
            break
    words, nbytes = len(covered.split()), len(covered.encode("utf-8"))
    return {
        "token_perplexity": math.exp(nll / scored),
        "word_perplexity": math.exp(nll / words),
        "byte_perplexity": math.exp(nll / nbytes),
        "bits_per_byte": nll / nbytes / math.log(2),
        "tokens": float(len(ids)),
        "scored": float(scored),
        "words": float(words),
        "bytes": float(nbytes),
    }
