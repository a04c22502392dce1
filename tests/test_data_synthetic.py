"""Synthetic dataset: determinism, vocabulary, files in every format."""
import hashlib
from pathlib import Path

import pytest

from dataset import load_tokenizer
from dataset.synthetic import generate


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix != ".mp4":  # container timestamps aside, everything is byte-identical
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("syn"), seed=0, n_images=16, n_videos=4)


def test_deterministic_from_seed(tmp_path, syn):
    a = generate(tmp_path / "a", seed=0, n_images=16, n_videos=4)
    b = generate(tmp_path / "b", seed=1, n_images=16, n_videos=4)
    assert _digest(Path(a["root"])) == _digest(Path(syn["root"]))
    assert _digest(Path(b["root"])) != _digest(Path(syn["root"]))


def test_every_split_written(syn):
    for name, path in syn.items():
        assert Path(path).exists(), name
    assert len(list(Path(syn["root"], "images").glob("*.jpg"))) == 16


def test_vocab_covers_text_and_fits_tiny_preset(syn):
    lines = Path(syn["vocab"]).read_text().split()
    assert lines[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert len(lines) < 512
    tok = load_tokenizer({"model": {"text": {"tokenizer": syn["vocab"]}}})
    assert len(tok) == len(lines) and tok.pad_token_id == 0
    texts = Path(syn["retrieval_train"]).read_text() + Path(syn["vqa_train"]).read_text()
    texts += Path(syn["nlvr_train"]).read_text() + Path(syn["grounding_train"]).read_text()
    import json
    words = []
    for f in ("retrieval_train", "grounding_train", "nlvr_train", "vqa_train"):
        for r in json.loads(Path(syn[f]).read_text()):
            words.append(r.get("caption") or r.get("text") or r.get("sentence") or r.get("question"))
    ids = tok(words)["input_ids"]
    assert all(tok.unk_token_id not in x for x in ids)
    assert tok.tokenize("two circles") == ["two", "circle", "##s"]
