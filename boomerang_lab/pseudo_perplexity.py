"""Moved to `boomerang_lab.evaluate.pseudo_perplexity`; this alias keeps notebook 08's import working."""

from .evaluate.pseudo_perplexity import (  # noqa: F401
    MaskTokens,
    PseudoPerplexity,
    family_pseudo_perplexity,
    pseudo_perplexity,
    wikitext_test_text,
)
