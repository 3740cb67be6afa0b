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

HELD_OUT_FRACTION = 0.02
"""The last 2 % of each corpus file (cut at the next line break) is held out: no training run, calibration window or
settings choice reads it; it is the kit's in-corpus evaluation text (`corpus_text(f, "held_out")`,
`held_out_text()`)."""

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


def corpus_text(relative: str | Path, part: str = "train") -> str:
    """A shipped corpus file's `part`: "train" (everything before its held-out tail), "held_out" (the tail: the last
    HELD_OUT_FRACTION of its characters, starting after the first line break at or past the cut) or "all"."""
    text = data_file(relative).read_text(encoding="utf-8")
    if part == "all":
        return text
    if part not in ("train", "held_out"):
        raise ValueError(f"part={part!r}; use 'train', 'held_out' or 'all'.")
    cut = text.find("\n", int(len(text) * (1 - HELD_OUT_FRACTION)))
    cut = len(text) if cut < 0 else cut + 1
    return text[:cut] if part == "train" else text[cut:]


def held_out_text() -> str:
    """The corpus's held-out text: each file's tail, in CORPUS_FILES order, separated by a blank line."""
    return "\n\n".join(corpus_text(f, "held_out").strip() for f in CORPUS_FILES)
