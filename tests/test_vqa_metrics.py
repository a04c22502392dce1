"""VQA accuracy: the official soft score (leave-one-annotator-out, min(#matches / 3, 1)) and the official answer
normalisation, checked against values worked out by hand from the rules."""
from __future__ import annotations

import pytest

from utils.vqa_metrics import (
    best_constant_accuracy,
    normalize_answer,
    process_digit_article,
    process_punctuation,
    vqa_accuracy,
    vqa_score,
)


# ------------------------------------------------------------------------------------------ soft score
@pytest.mark.parametrize("m, expected", [
    # m of 10 annotators said the prediction. Leaving out one of those m leaves m-1 matches, leaving out one
    # of the other 10-m leaves m; the score is the mean over the 10 of min(1, matches/3):
    (0, 0.0),                              # 10 x 0
    (1, 0.3),                              # (1 x 0/3 + 9 x 1/3) / 10 = 3/10
    (2, 0.6),                              # (2 x 1/3 + 8 x 2/3) / 10 = 6/10
    (3, 0.9),                              # (3 x 2/3 + 7 x 1) / 10 = 9/10
    (4, 1.0),                              # (4 x 1 + 6 x 1) / 10
    (10, 1.0),
])
def test_soft_score_of_ten_annotators(m, expected):
    answers = ["cat"] * m + ["dog"] * (10 - m) if m < 10 else ["cat"] * 10
    assert vqa_score("cat", answers) == pytest.approx(expected)


def test_soft_score_with_fewer_annotators_uses_the_same_rule():
    # 3 annotators all agree: each left-out subset keeps 2 matches -> 2/3 (the formula assumes 10 answers)
    assert vqa_score("red", ["red"] * 3) == pytest.approx(2 / 3)
    # 5 annotators, 4 match: leave a match out -> 3 -> 1; leave the other out -> 4 -> 1
    assert vqa_score("red", ["red"] * 4 + ["blue"]) == pytest.approx(1.0)
    # 5 annotators, 2 match: (2 x 1/3 + 3 x 2/3) / 5 = (8/3) / 5
    assert vqa_score("red", ["red"] * 2 + ["blue"] * 3) == pytest.approx(8 / 15)


def test_prediction_is_normalised_before_matching():
    answers = ["2"] * 10
    assert vqa_score("Two", answers) == 1.0
    assert vqa_score("  two.\n", answers) == 1.0
    assert vqa_score("the dog", ["dog"] * 10) == 1.0
    assert vqa_score("dont", ["don't"] * 10) == 1.0


def test_ground_truth_is_only_punctuation_processed_and_only_when_annotators_disagree():
    # the official rule: unanimous answers are compared as they are (annotation files are normalised)
    assert vqa_score("two", ["two"] * 10) == 0.0          # prediction becomes "2", the answers stay "two"
    assert vqa_score("two", ["two"] * 10, normalize_gt=True) == 1.0
    # disagreement: "yes!" -> "yes " ('!' not next to a space: replaced by a space), no longer equal to "yes"
    assert vqa_score("yes", ["yes"] * 9 + ["yes!"]) == 1.0   # 9 or 8 matches: always >= 3
    assert vqa_score("yes", ["yes"] * 2 + ["yes!"] * 8) == pytest.approx(0.6)
    # "t-shirt" -> "t shirt" on both sides once the annotators disagree
    assert vqa_score("t-shirt", ["t-shirt"] * 3 + ["shirt"] * 7) == pytest.approx(0.9)


def test_score_needs_answers():
    with pytest.raises(ValueError):
        vqa_score("x", [])


# ------------------------------------------------------------------------------------------ normalisation
@pytest.mark.parametrize("text, expected", [
    ("t-shirt", "t shirt"),            # no space next to '-': replaced by a space
    ("yes !", "yes "),                 # a space next to '!': deleted
    ("1,000", "1000"),                 # digit-comma-digit: every punctuation mark deleted
    ("a,b", "a b"),
    ("3.5", "3.5"),                    # a period before a digit stays
    ("a.m.", "am"),                    # others go
    ("end.", "end"),
    ("(left)", " left "),
])
def test_process_punctuation(text, expected):
    assert process_punctuation(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("The Two Dogs", "2 dogs"),        # lower-case, number word -> digit, article dropped
    ("an apple a day", "apple day"),
    ("none", "0"),
    ("isnt it", "isn't it"),           # contractions are fixed word by word
    ("ten  twenty", "10 twenty"),      # only zero..ten are mapped; whitespace collapses
])
def test_process_digit_article(text, expected):
    assert process_digit_article(text) == expected


def test_normalize_answer_chains_the_rules():
    assert normalize_answer("\tThe Three (big) dogs.\n") == "3 big dogs"
    assert normalize_answer("Yes") == "yes"


# ------------------------------------------------------------------------------------------ aggregates
def test_vqa_accuracy_over_questions():
    gts = {1: ["yes"] * 10, 2: ["2"] * 3 + ["3"] * 7, 3: ["red"] * 10}
    results = [{"question_id": 1, "answer": "yes"}, {"question_id": 2, "answer": "two"},
               {"question_id": 3, "answer": "blue"}]
    out = vqa_accuracy(results, gts)
    assert out["vqa_acc"] == pytest.approx(100 * (1.0 + 0.9 + 0.0) / 3)
    assert out["exact_acc"] == pytest.approx(100 / 3)   # only question 1 names the most frequent answer
    assert out["n_questions"] == 3
    with pytest.raises(ValueError, match="without a predicted answer"):
        vqa_accuracy(results[:2], gts)


def test_best_constant_answer_is_the_chance_level():
    gts = {1: ["yes"] * 10, 2: ["yes"] * 2 + ["no"] * 8, 3: ["no"] * 10, 4: ["no"] * 10, 5: ["2"] * 10}
    # "yes": (1 + 0.6) / 5 = 32 %; "no": (1.0 + 1 + 1) / 5 = 60 %; "two" -> "2": 1 / 5 = 20 %
    answer, acc = best_constant_accuracy(gts, ["yes", "no", "two", "cat"])
    assert answer == "no" and acc == pytest.approx(60.0)
    for cand in ("yes", "two", "cat"):  # agrees with scoring the constant through vqa_accuracy
        const = vqa_accuracy([{"question_id": q, "answer": cand} for q in gts], gts)["vqa_acc"]
        assert const <= acc
    assert vqa_accuracy([{"question_id": q, "answer": "yes"} for q in gts], gts)["vqa_acc"] == pytest.approx(32.0)
