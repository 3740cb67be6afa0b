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


def test_each_corpus_file_holds_out_its_tail_and_training_never_reads_it(tokenizer):
    """The last HELD_OUT_FRACTION of each corpus file is the in-corpus evaluation text: the training part and the
    held-out part split the file at a line break, and what `packed_blocks` trains on is the training part only."""
    from boomerang_lab.data import HELD_OUT_FRACTION, _training_text, corpus_text, held_out_text

    for f in CORPUS_FILES:
        full, train, held = corpus_text(f, "all"), corpus_text(f, "train"), corpus_text(f, "held_out")
        assert train + held == full and train.endswith("\n")
        assert 0.5 * HELD_OUT_FRACTION < len(held) / len(full) <= HELD_OUT_FRACTION
        assert _training_text(data_file(f)) == train
    held = held_out_text()
    blocks = packed_blocks(tokenizer, seq_len=64)
    trained = {tuple(b) for b in blocks["input_ids"]}
    tail = tokenizer(corpus_text(CORPUS_FILES[1], "held_out"), add_special_tokens=False)["input_ids"][8:72]
    assert len(tail) == 64 and tuple(tail) not in trained  # (no block starts there: checked on the stream below)
    stream = [t for b in blocks["input_ids"] for t in b]
    needle = tail[:32]
    assert not any(stream[i : i + 32] == needle for i in range(len(stream) - 32))
    assert corpus_text(CORPUS_FILES[1], "held_out").strip()[:200] in held
    with pytest.raises(ValueError, match="use 'train', 'held_out' or 'all'"):
        corpus_text(CORPUS_FILES[0], "test")


def test_calibration_windows_never_come_from_the_held_out_tail():
    from boomerang_lab.data import calibration_set, corpus_text

    class Chars:
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(c) for c in text]}

    # 400 windows: drawn from whole files, about 8 of them would fall in the 2 % tails
    batch = calibration_set(Chars(), num_sequences=50 * len(CORPUS_FILES), seq_len=40, seed=3)
    for row, name in zip(batch, [*CORPUS_FILES] * 50):
        window = "".join(map(chr, row.tolist()))
        assert window in corpus_text(name, "train") and window not in corpus_text(name, "held_out")
