"""utils/caption_metrics.py feeds pycocoevalcap's scorers correctly: same numbers as calling Bleu / Cider
(and the PTB tokenizer) directly, plus hand-computable BLEU values."""
from __future__ import annotations

import math

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider

from utils import caption_metrics as cm
from utils.caption_metrics import caption_scores, simple_tokenize

REFS = {
    1: ["A man riding a horse on the beach.", "A person rides a brown horse near the sea!"],
    2: ["Two dogs playing in the green grass.", "A pair of dogs play on a lawn, happily."],
    3: ["A plate of food with broccoli and rice.", "Rice, broccoli: a healthy dinner on a plate."],
}
CANDS = {1: "a man rides a horse on the beach", 2: "two dogs play in the grass", 3: "a plate with rice and broccoli"}


def _direct(gts: dict, res: dict) -> dict[str, float]:
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    return {"Bleu_1": bleu[0], "Bleu_2": bleu[1], "Bleu_3": bleu[2], "Bleu_4": bleu[3], "CIDEr": cider}


def test_simple_tokenize_drops_punctuation_keeps_words() -> None:
    assert simple_tokenize("Rice, broccoli: a (healthy) dinner -- on a plate!") == \
        "rice broccoli a healthy dinner on a plate"
    assert simple_tokenize("A man's T-shirt 'here'.") == "a man's t-shirt here"


def test_wrapper_equals_pycocoevalcap_scorers_simple_tokens() -> None:
    ours = caption_scores(REFS, CANDS, ["bleu", "cider"], tokenizer="simple")
    gts = {k: [simple_tokenize(c) for c in v] for k, v in REFS.items()}
    res = {k: [simple_tokenize(c)] for k, c in CANDS.items()}
    direct = _direct(gts, res)
    assert ours.keys() == direct.keys()
    for key, value in direct.items():
        assert ours[key] == pytest.approx(value, abs=1e-12), key
    assert 0 < ours["Bleu_4"] < ours["Bleu_1"] < 1 and ours["CIDEr"] > 0


@pytest.mark.skipif(not cm.java_available(), reason="PTB tokenizer needs java")
def test_wrapper_equals_pycocoevalcap_with_ptb_tokenizer() -> None:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    ours = caption_scores(REFS, CANDS, ["bleu", "cider"], tokenizer="ptb")
    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in REFS.items()})
    res = tok.tokenize({k: [{"caption": c}] for k, c in CANDS.items()})
    for key, value in _direct(gts, res).items():
        assert ours[key] == pytest.approx(value, abs=1e-12), key
    # on these plain captions the two tokenisations agree
    assert ours == pytest.approx(caption_scores(REFS, CANDS, ["bleu", "cider"], tokenizer="simple"))


def test_identical_candidate_and_reference_give_bleu_one() -> None:
    refs = {"a": ["a red circle to the left of a blue square"], "b": ["two shapes including a green triangle"]}
    scores = caption_scores(refs, {k: v[0] for k, v in refs.items()}, ["bleu"], tokenizer="simple")
    for n in range(1, 5):
        assert scores[f"Bleu_{n}"] == pytest.approx(1.0, abs=1e-6)


def test_bleu_hand_computed() -> None:
    # candidate "a b c d" vs reference "a b c e": unigram precision 3/4, bigram 2/3, same length (no penalty)
    scores = caption_scores({0: ["a b c e"]}, {0: "a b c d"}, ["bleu"], tokenizer="simple")
    assert scores["Bleu_1"] == pytest.approx(0.75, abs=1e-6)
    assert scores["Bleu_2"] == pytest.approx(math.sqrt(0.75 * 2 / 3), abs=1e-6)
    assert scores["Bleu_3"] == pytest.approx((0.75 * 2 / 3 * 1 / 2) ** (1 / 3), abs=1e-6)
    assert scores["Bleu_4"] < 1e-3  # no 4-gram matches
    # half the length: brevity penalty exp(1 - 4/2)
    short = caption_scores({0: ["a b c e"]}, {0: "a b"}, ["bleu"], tokenizer="simple")
    assert short["Bleu_1"] == pytest.approx(math.exp(1 - 4 / 2), abs=1e-6)


def test_cider_zero_without_shared_words_and_higher_for_better_caption() -> None:
    refs = {1: ["a red circle"], 2: ["a blue square"], 3: ["a green triangle"]}
    bad = caption_scores(refs, {1: "xx yy", 2: "zz ww", 3: "vv uu"}, ["cider"], tokenizer="simple")
    assert bad["CIDEr"] == 0.0
    good = caption_scores(refs, {1: "a red circle", 2: "a blue square", 3: "a green circle"}, ["cider"],
                          tokenizer="simple")
    assert good["CIDEr"] > 1.0


def test_errors_and_java_requirements(monkeypatch) -> None:
    with pytest.raises(KeyError):
        caption_scores({1: ["a cat"]}, {2: "a cat"}, tokenizer="simple")
    with pytest.raises(ValueError):
        cm.parse_metrics("bleu,nope")
    assert cm.parse_metrics(" BLEU , cider ") == ["bleu", "cider"]
    monkeypatch.setattr(cm, "java_available", lambda: False)
    with pytest.raises(RuntimeError, match="java"):
        caption_scores({1: ["a cat"]}, {1: "a cat"}, ["meteor"], tokenizer="simple")
    with pytest.raises(RuntimeError, match="java"):
        cm.tokenize({1: ["a cat"]}, "ptb")
    assert cm.tokenize({1: ["A cat."]}, "auto") == {1: ["a cat"]}  # falls back to the simple tokenizer
