"""The benchmark and corpus files shipped under `data/` (provenance in data/SOURCES.md)."""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR = Path(os.environ.get("BOOMERANG_DATA", Path(__file__).resolve().parent.parent / "data"))

CORPUS_FILES = (
    "corpus/tinystories_sample_2MiB.txt",
    "corpus/tinyshakespeare.txt",
    "corpus/pg1342_pride_and_prejudice.txt",
    "corpus/pg11_alice_in_wonderland.txt",
    "corpus/pg84_frankenstein.txt",
    "corpus/pg1661_sherlock_holmes.txt",
    "corpus/pg2701_moby_dick.txt",
    "corpus/pg8868_botchan.txt",
)
"""Training text for distillation. No evaluation split is ever among these."""

WIKITEXT_TEST = "wikitext-2/wiki.test.raw"
"""WikiText-2 raw test (byte-exact original): the fast perplexity, lm-eval's wikitext_local, alignment, pseudo-ppl."""


def data_file(relative: str | Path) -> Path:
    """The path of a shipped data file, or a clear error listing what is there."""
    path = DATA_DIR / relative
    if not path.exists():
        shipped = sorted(
            str(p.relative_to(DATA_DIR)) for p in DATA_DIR.rglob("*") if p.is_file() and p.name != "SOURCES.md"
        )
        raise FileNotFoundError(
            f"Data file {relative!s} not found under {DATA_DIR}. "
            f"Shipped files: {', '.join(shipped)}. "
            f"Set BOOMERANG_DATA to use another data folder."
        )
    return path
