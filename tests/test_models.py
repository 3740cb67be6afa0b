import pytest

from boomerang_lab.data import data_file
from boomerang_lab.models.loading import load_model, resolve_dtype


def test_unknown_model_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="not a local model directory.*smollm2-135m"):
        load_model("no-such-model-here")


def test_unknown_dtype():
    with pytest.raises(ValueError, match="float32, bfloat16"):
        resolve_dtype("float8")


def test_missing_data_file_lists_what_is_shipped():
    with pytest.raises(FileNotFoundError, match="wikitext-2/wiki.test.raw"):
        data_file("wikitext-2/wiki.train.raw")


def test_shipped_data_matches_its_provenance():
    import hashlib
    import re

    sources = data_file("SOURCES.md").read_text()
    digests = re.findall(r"^([0-9a-f]{64})  (\S+)$", sources, flags=re.M)
    assert len(digests) >= 20
    for digest, name in digests:
        assert hashlib.sha256(data_file(name).read_bytes()).hexdigest() == digest, name
