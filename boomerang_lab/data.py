"""The data: the benchmark and corpus files shipped under `data/` (provenance in data/SOURCES.md), training text
packed into token blocks through `datasets` (local files or a hub dataset; imported on use) and calibration windows."""

from __future__ import annotations

import glob
import os
import re
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from datasets import Dataset, IterableDataset
    from transformers import PreTrainedTokenizerBase

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


# --- training text -------------------------------------------------------------------------------------------------
EVAL_SPLIT = re.compile(r"(^|[^a-z])(test|valid|validation|val|dev|eval|evaluation)([^a-z]|$)", re.IGNORECASE)

TEXT_SUFFIXES = {".txt", ".text", ".md", ".raw", ".tokens"}

Source = str | Path | Sequence[str | Path] | None


def packed_blocks(
    tokenizer: PreTrainedTokenizerBase,
    source: Source = None,
    seq_len: int = 512,
    *,
    name: str | None = None,
    split: str = "train",
    text_field: str = "text",
    streaming: bool = True,
    packing: bool = True,
) -> Dataset | IterableDataset:
    """Rows of exactly `seq_len` token ids ("input_ids"): documents tokenised, joined with EOS, cut into blocks.

    `source`: None (the shipped corpus), local text files / directories / globs, or a hub dataset id (read with
    `name`, `split`, `text_field`; streamed unless `streaming=False`). Evaluation splits and benchmark files are
    refused.

    A shipped corpus file gives only its training part: its last `data.HELD_OUT_FRACTION` is held out for evaluation.

    `packing=False` is the paper's layout instead: one document per row, truncated to `seq_len` tokens and
    right-padded with EOS, with an "attention_mask" (0 on the padding) that `distill` also uses to ignore the padding
    in every loss term. Empty documents are dropped. A local file is one document (the shipped corpus: 8 rows), so
    this is meant for hub datasets of many documents (the paper: The Pile).
    """
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2, got {seq_len}.")
    if tokenizer.eos_token_id is None:
        raise ValueError("The tokenizer has no EOS token to separate documents.")
    if EVAL_SPLIT.search(split):
        raise ValueError(f"Split {split!r} looks like an evaluation split; distillation only reads training data.")
    from datasets import Dataset, load_dataset

    if source is not None and not isinstance(source, (str, Path)) and len(source) == 1:
        source = source[0]
    files = _local_files(source)
    if files is not None:
        raw = Dataset.from_dict({"text": [_training_text(f) for f in files]})  # one row per file
        text_field = "text"
    else:
        raw = load_dataset(str(source), name, split=split, streaming=streaming)
    raw = raw.select_columns([text_field])
    eos = tokenizer.eos_token_id

    def pack(batch: dict) -> dict:
        ids = tokenizer(batch[text_field], add_special_tokens=False, verbose=False)["input_ids"]
        stream = list(chain.from_iterable(doc + [eos] for doc in ids))
        usable = len(stream) // seq_len * seq_len
        return {"input_ids": [stream[i : i + seq_len] for i in range(0, usable, seq_len)]}

    def pad(batch: dict) -> dict:
        docs = [
            doc[:seq_len]
            for doc in tokenizer(batch[text_field], add_special_tokens=False, verbose=False)["input_ids"]
            if doc
        ]
        return {
            "input_ids": [doc + [eos] * (seq_len - len(doc)) for doc in docs],
            "attention_mask": [[1] * len(doc) + [0] * (seq_len - len(doc)) for doc in docs],
        }

    blocks = raw.map(pack if packing else pad, batched=True, batch_size=1000, remove_columns=[text_field])
    if files is not None and len(blocks) == 0:
        raise ValueError(f"{', '.join(map(str, files))} hold fewer than {seq_len} tokens: no block to train on.")
    return blocks


def _training_text(path: Path) -> str:
    """A local file's text; for a shipped corpus file only its training part (its held-out tail is never trained on)."""
    for f in CORPUS_FILES:
        if data_file(f).resolve() == path.resolve():
            return corpus_text(f, "train")
    return path.read_text(encoding="utf-8")


def _looks_like_hub_id(name: str) -> bool:
    """`org/name` or `name`, not a path to a (missing) text file."""
    path = Path(name)
    return (
        not path.is_absolute()
        and not name.startswith(".")
        and name.count("/") <= 1
        and path.suffix not in TEXT_SUFFIXES
    )


def _local_files(source: Source) -> list[Path] | None:
    """The text files `source` names, None for a hub id; refuses the shipped evaluation files."""
    if source is None:
        return [data_file(f) for f in CORPUS_FILES]
    entries = [source] if isinstance(source, (str, Path)) else list(source)
    files: list[Path] = []
    for entry in entries:
        path = Path(entry)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        elif path.is_file():
            files.append(path)
        elif glob.has_magic(str(entry)) and glob.glob(str(entry), recursive=True):
            files += sorted(Path(p) for p in glob.glob(str(entry), recursive=True) if Path(p).is_file())
        elif isinstance(source, (str, Path)) and _looks_like_hub_id(str(entry)):
            return None
        else:
            raise FileNotFoundError(f"Training text {entry} does not exist.")
    corpus = {data_file(f).resolve() for f in CORPUS_FILES}
    for f in files:
        inside = f.resolve().is_relative_to(DATA_DIR.resolve())
        if inside and f.resolve() not in corpus:
            raise ValueError(
                f"{f} is evaluation data; train only on the corpus ({', '.join(CORPUS_FILES)}) or your own text."
            )
    return files


# --- calibration windows -------------------------------------------------------------------------------------------
def calibration_set(
    tokenizer, num_sequences: int = 64, seq_len: int = 256, seed: int = 0, files: Sequence[str] = CORPUS_FILES
):
    """[num_sequences, seq_len] token ids: random windows of training text (each file's training part, never its
    held-out tail), taking the corpus files in turn."""
    import random

    import torch

    if num_sequences < 1 or seq_len < 1:
        raise ValueError(f"num_sequences and seq_len must be positive, got {num_sequences} and {seq_len}.")
    texts = {f: corpus_text(f) for f in files}
    rng, span, rows = random.Random(seed), 16 * (seq_len + 1), []
    for i in range(num_sequences):
        name = files[i % len(files)]
        start = rng.randrange(max(1, len(texts[name]) - span))
        ids = tokenizer(texts[name][start : start + span], add_special_tokens=False)["input_ids"]
        if len(ids) < seq_len + 1:
            raise ValueError(f"{name} gave only {len(ids)} tokens at offset {start}; seq_len={seq_len} is too long.")
        rows.append(ids[1 : seq_len + 1])  # the first token may be a cut word
    return torch.tensor(rows)
