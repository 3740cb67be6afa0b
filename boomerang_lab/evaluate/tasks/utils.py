"""Loaders for the `*_local` tasks: each turns a shipped file into the fields of lm-eval's stock dataset.

lm-eval calls them through `custom_dataset` with the task metadata as keyword arguments (ignored here);
paths are resolved at call time from `boomerang_lab.data.DATA_DIR` (a missing file raises a clear error).
"""

from __future__ import annotations

import bz2
import json
from functools import lru_cache

from datasets import Dataset, DatasetDict

# The stock tasks' own functions, reused so that prompts and metrics are lm-eval's exactly.
from lm_eval.tasks.hellaswag.utils import preprocess
from lm_eval.tasks.wikitext.preprocess_wikitext import process_results, wikitext_detokenizer  # noqa: F401
from lm_eval.tasks.winogrande.preprocess_winogrande import doc_to_choice, doc_to_target, doc_to_text  # noqa: F401

from boomerang_lab.data import WIKITEXT_TEST, data_file


def _jsonl(relative: str) -> list[dict]:
    return [json.loads(line) for line in data_file(relative).read_text(encoding="utf-8").splitlines() if line.strip()]


def _split(name: str, rows: list[dict]) -> DatasetDict:
    return DatasetDict({name: Dataset.from_list(rows)})


@lru_cache(maxsize=None)
def _as_is(split: str, relative: str) -> DatasetDict:
    return _split(split, _jsonl(relative))


def _file_task(split: str, relative: str):
    """The loader of a file whose rows already have the stock dataset's fields."""

    def load(**_) -> DatasetDict:
        return _as_is(split, relative)

    return load


winogrande = _file_task("validation", "winogrande/dev.jsonl")
lambada_openai = _file_task("test", "lambada/lambada_test.jsonl")
rte = _file_task("validation", "rte/validation.jsonl")


@lru_cache(maxsize=None)
def _arc(level: str) -> DatasetDict:
    """ARC test: the file has no choice labels or answer keys, so labels are A, B, C... in the original order."""
    rows = []
    for doc in _jsonl(f"arc/ARC-{level}-Test.jsonl"):
        labels = [chr(ord("A") + i) for i in range(len(doc["choices"]))]
        rows.append(
            {
                "question": doc["question"],
                "choices": {"text": doc["choices"], "label": labels},
                "answerKey": labels[doc["gold"]],
            }
        )
    return _split("test", rows)


def arc_easy(**_) -> DatasetDict:
    return _arc("Easy")


def arc_challenge(**_) -> DatasetDict:
    return _arc("Challenge")


@lru_cache(maxsize=None)
def piqa(**_) -> DatasetDict:
    docs = _jsonl("piqa/valid.jsonl")
    labels = data_file("piqa/valid-labels.lst").read_text().split()
    if len(labels) != len(docs):
        raise ValueError(f"piqa: {len(docs)} questions but {len(labels)} labels in valid-labels.lst.")
    return _split("validation", [{**doc, "label": int(label)} for doc, label in zip(docs, labels)])


@lru_cache(maxsize=None)
def hellaswag(**_) -> DatasetDict:
    """llama.cpp's file: 6 lines per item (context, gold, 4 endings), already cleaned of [header]/[step]/[title].

    lm-eval's `preprocess` is applied again so leftover `[...]` spans go as in the stock task; the first letter of
    `ctx_b` (which lm-eval capitalises) cannot be located in the joined context and stays as in the file.
    """
    lines = bz2.decompress(data_file("hellaswag/hellaswag_val_full.txt.bz2").read_bytes()).decode("utf-8").splitlines()
    if len(lines) % 6:
        raise ValueError(f"hellaswag: expected 6 lines per item, got {len(lines)} lines.")
    rows = [
        {
            "query": preprocess(lines[i]),
            "choices": [preprocess(e) for e in lines[i + 2 : i + 6]],
            "label": int(lines[i + 1]),
        }
        for i in range(0, len(lines), 6)
    ]
    return _split("validation", rows)


@lru_cache(maxsize=None)
def boolq(**_) -> DatasetDict:
    """llm-foundry's `Passage: P\\nQuestion: Q?` split at the last `\\nQuestion: ` (one passage contains it)."""
    rows = []
    for doc in _jsonl("boolq/boolq_dev_llmfoundry.jsonl"):
        passage, _, question = doc["query"].rpartition("\nQuestion: ")
        rows.append(
            {"passage": passage.removeprefix("Passage: "), "question": question.removesuffix("?"), "label": doc["gold"]}
        )
    return _split("validation", rows)


@lru_cache(maxsize=None)
def openbookqa(**_) -> DatasetDict:
    rows = [
        {
            "id": d["id"],
            "question_stem": d["question"]["stem"],
            "answerKey": d["answerKey"],
            "choices": {
                "text": [c["text"] for c in d["question"]["choices"]],
                "label": [c["label"] for c in d["question"]["choices"]],
            },
        }
        for d in _jsonl("openbookqa/test.jsonl")
    ]
    return _split("test", rows)


@lru_cache(maxsize=None)
def wikitext(**_) -> DatasetDict:
    """wiki.test.raw cut into its 62 articles as `EleutherAI/wikitext_document_level` does: a page starts at each
    top-level ` = Title = ` line and is its lines joined with newlines (the blank line before the first title is
    dropped)."""
    pages, page = [], []
    for line in data_file(WIKITEXT_TEST).read_text(encoding="utf-8").split("\n"):
        heading = line.replace("= = =", "===").replace("= =", "==").strip()
        if heading.startswith("= ") and heading.endswith(" =") and page:
            pages.append("\n".join(page))
            page = []
        page.append(line)
    pages.append("\n".join(page))
    return _split("test", [{"page": p} for p in pages if p.strip()])
