"""Training text: packed without padding, exactly the documents' tokens, never evaluation data."""

import pytest

from boomerang_lab.data import CORPUS_FILES, _local_files, data_file, packed_blocks
from boomerang_lab.models.loading import load_model


@pytest.fixture(scope="module")
def tokenizer():
    return load_model("smollm2-tiny-random")[1]


def test_blocks_are_the_documents_tokens_joined_by_eos(tokenizer, tmp_path):
    docs = ["The cat sat on the mat.\nIt purred.", "Call me Ishmael. " * 20, "Short."]
    for i, doc in enumerate(docs):
        (tmp_path / f"{i}.txt").write_text(doc)
    blocks = packed_blocks(tokenizer, tmp_path, seq_len=16)
    stream = [
        t for doc in docs for t in tokenizer(doc, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ]
    assert all(len(b) == 16 for b in blocks["input_ids"])
    assert len(blocks) == len(stream) // 16
    assert [t for b in blocks["input_ids"] for t in b] == stream[: len(blocks) * 16]
    assert packed_blocks(tokenizer, tmp_path, seq_len=16)["input_ids"] == blocks["input_ids"]  # deterministic


def test_default_source_is_the_corpus():
    assert _local_files(None) == [data_file(f) for f in CORPUS_FILES]
    assert _local_files("some-org/some-dataset") is None  # not on disk: a hub id


def test_evaluation_data_is_refused(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="evaluation data"):
        packed_blocks(tokenizer, data_file("wikitext-2/wiki.test.raw"))
    with pytest.raises(ValueError, match="evaluation split"):
        packed_blocks(tokenizer, "some-org/some-dataset", split="validation")
    with pytest.raises(FileNotFoundError):
        packed_blocks(tokenizer, [tmp_path / "missing.txt"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        packed_blocks(tokenizer, "corpus/missing.txt")
    (tmp_path / "tiny.txt").write_text("too short")
    with pytest.raises(ValueError, match="fewer than 64 tokens"):
        packed_blocks(tokenizer, tmp_path / "tiny.txt", seq_len=64)


def test_hub_ids_are_streamed_and_packed(tokenizer, monkeypatch):
    import datasets
    from datasets import Dataset

    calls = []
    docs = Dataset.from_dict({"body": ["hello world " * 50, "foo bar " * 30], "meta": [1, 2]})
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append((a, k)) or docs.to_iterable_dataset())
    blocks = list(packed_blocks(tokenizer, "org/corpus", 16, name="en", text_field="body"))
    assert calls == [(("org/corpus", "en"), {"split": "train", "streaming": True})]
    assert blocks and all(list(b) == ["input_ids"] and len(b["input_ids"]) == 16 for b in blocks)
