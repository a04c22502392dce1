"""VQA accuracy: the official soft score (leave-one-annotator-out, min(#matches / 3, 1)) and X²-VLM's
``vqaTools/vqaEval.py`` answer processing (the prediction always fully normalised; the annotator answers as
given, punctuation-processed only when the annotators disagree), checked against values worked out by hand
from those rules, on raw-form ground-truth answers too."""
from __future__ import annotations

import pytest

from utils.vqa_metrics import (
    best_constant_accuracy,
    ground_truth_forms,
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


def test_prediction_is_always_normalised():
    # unanimous answers already in normalised form: the prediction is cleaned, punctuation-processed,
    # lower-cased, number words -> digits, articles dropped, contractions fixed; 10 matches -> 1.0
    assert vqa_score("Two", ["2"] * 10) == 1.0
    assert vqa_score("  two.\n", ["2"] * 10) == 1.0     # "two." -> the period goes -> "two" -> "2"
    assert vqa_score("Yes", ["yes"] * 10) == 1.0         # process_digit_article lower-cases
    assert vqa_score("the dog", ["dog"] * 10) == 1.0     # article dropped
    assert vqa_score("dont", ["don't"] * 10) == 1.0      # "dont" -> "don't"; "'" is no punctuation
    assert vqa_score("t-shirt", ["t shirt"] * 10) == 1.0  # '-' not next to a space -> a space
    assert vqa_score("1,000", ["1000"] * 10) == 1.0      # digit-comma-digit: the comma goes


def test_unanimous_ground_truth_is_compared_as_given():
    # no processing at all on unanimous answers, so a raw form the normalised prediction cannot take never
    # matches, whatever is predicted
    assert vqa_score("yes", ["Yes"] * 10) == 0.0         # prediction "yes", answers "Yes": not lower-cased
    assert vqa_score("Yes", ["Yes"] * 10) == 0.0         # the prediction itself becomes "yes"
    assert vqa_score("two", ["two"] * 10) == 0.0         # prediction "2", answers "two"
    assert vqa_score("2", ["two"] * 10) == 0.0
    assert vqa_score("a dog", ["a dog"] * 10) == 0.0     # prediction "dog", answers "a dog"
    assert vqa_score("dog", ["a dog"] * 10) == 0.0
    assert vqa_score("yes.", ["yes."] * 10) == 0.0       # prediction "yes", answers keep their period
    assert vqa_score("yes", ["yes."] * 10) == 0.0
    assert vqa_score("t-shirt", ["t-shirt"] * 10) == 0.0  # prediction "t shirt", answers "t-shirt"
    assert vqa_score("yes", [" yes"] * 10) == 0.0        # the answers are not stripped either


def test_disagreeing_ground_truth_gets_punctuation_processing_only():
    # "t-shirt" -> "t shirt" ('-' not next to a space); prediction "t shirt": m = 3 -> (3 x 2/3 + 7 x 1)/10
    assert vqa_score("t-shirt", ["t-shirt"] * 3 + ["shirt"] * 7) == pytest.approx(0.9)
    # 6 x "well-done" + 4 x "well done" -> 10 x "well done"; prediction "well done": m = 10 -> 1.0
    assert vqa_score("well-done", ["well-done"] * 6 + ["well done"] * 4) == 1.0
    # "yes." -> "yes": m = 2 -> (2 x 1/3 + 8 x 2/3) / 10 = 0.6
    assert vqa_score("yes", ["yes."] * 2 + ["no"] * 8) == pytest.approx(0.6)
    # "yes!" -> "yes " ('!' not next to a space: becomes a space, and nothing strips it) != "yes"
    assert vqa_score("yes", ["yes"] * 9 + ["yes!"]) == 1.0                # m = 9: every subset keeps >= 8
    assert vqa_score("yes", ["yes"] * 2 + ["yes!"] * 8) == pytest.approx(0.6)  # m = 2
    # "1,000" -> "1000" (digit-comma-digit); prediction "1,000" -> "1000": m = 10 -> 1.0
    assert vqa_score("1,000", ["1,000"] * 2 + ["1000"] * 8) == 1.0
    # no lower case: "Yes" stays, only the one "yes" matches the prediction "yes": m = 1 -> 9 x 1/3 / 10
    assert vqa_score("YES", ["Yes"] * 2 + ["yes"] + ["no"] * 7) == pytest.approx(0.3)
    # no number words: "two" stays; prediction "two" -> "2" matches the two "2": m = 2 -> 0.6
    assert vqa_score("two", ["2"] * 2 + ["two"] * 8) == pytest.approx(0.6)
    assert vqa_score("2", ["2"] * 2 + ["two"] * 8) == pytest.approx(0.6)
    # no articles: "a dog" stays; prediction "the dog" -> "dog" matches the one "dog": m = 1 -> 0.3
    assert vqa_score("the dog", ["a dog", "dog"] + ["cat"] * 8) == pytest.approx(0.3)
    # no newline cleaning or stripping: the raw answers differ, "yes\n" stays "yes\n"; m = 2 -> 0.6
    assert vqa_score("yes", ["yes\n"] * 8 + ["yes"] * 2) == pytest.approx(0.6)
    # the forms compared: case kept, "c !" -> "c " (' !' next to a space: deleted, the space stays)
    assert ground_truth_forms(["a-b", "A-B", "c !"]) == ["a b", "A B", "c "]
    assert ground_truth_forms(["a-b"] * 3) == ["a-b"] * 3


def test_raw_t_shirt_well_done_are_not_inflated():
    # issue 16: raw-form unanimous answers answered with (normalised) answer-list entries. Officially:
    #   q1: 10 x "t-shirt" (unanimous, kept), prediction "t shirt"     -> not equal -> 0
    #   q2: 10 x "well-done" (unanimous, kept), prediction "well done" -> not equal -> 0
    #   q3: 10 x "yes", prediction "yes"                              -> equal     -> 1
    #   mean (0 + 0 + 1) / 3 = 33.33 %   (normalising the answers like predictions: 100 %)
    gts = {1: ["t-shirt"] * 10, 2: ["well-done"] * 10, 3: ["yes"] * 10}
    results = [{"question_id": 1, "answer": "t shirt"}, {"question_id": 2, "answer": "well done"},
               {"question_id": 3, "answer": "yes"}]
    out = vqa_accuracy(results, gts)
    assert out["vqa_acc"] == pytest.approx(100 / 3)
    assert round(out["vqa_acc"], 2) == 33.33            # what the official tool prints (2 decimals)
    assert out["exact_acc"] == pytest.approx(100 / 3)  # the exact match compares the same forms
    # the annotators' own spelling does no better: "t-shirt" -> "t shirt", "well-done" -> "well done"
    same = [{"question_id": 1, "answer": "t-shirt"}, {"question_id": 2, "answer": "well-done"},
            {"question_id": 3, "answer": "yes"}]
    assert vqa_accuracy(same, gts)["vqa_acc"] == pytest.approx(100 / 3)


# a raw-form fixture (answers as annotators typed them) with agreeing and disagreeing annotators
RAW_GTS = {
    1: ["t-shirt"] * 10,                         # unanimous
    2: ["well-done"] * 6 + ["well done"] * 4,    # disagree
    3: ["2"] * 2 + ["two"] + ["3"] * 7,          # disagree
    4: ["Yes"] * 10,                             # unanimous
    5: ["a dog", "dog"] + ["cat"] * 8,           # disagree
    6: ["yes."] * 2 + ["no"] * 8,                # disagree
}
RAW_PREDS = {1: "t shirt", 2: "well done", 3: "2", 4: "yes", 5: "dog", 6: "yes"}
# official (prediction normalised; answers kept, punctuation-processed where they disagree), m = matches:
#   1: unanimous "t-shirt" kept, prediction "t shirt"                  -> 0
#   2: "well-done" -> "well done": 10 x "well done", m = 10            -> 1
#   3: "two" stays "two", prediction "2": m = 2                        -> 0.6
#   4: unanimous "Yes" kept, prediction "yes"                          -> 0
#   5: "a dog" stays, prediction "dog": m = 1                          -> 0.3
#   6: "yes." -> "yes", prediction "yes": m = 2                        -> 0.6
#   mean (0 + 1 + 0.6 + 0 + 0.3 + 0.6) / 6 = 2.5 / 6 = 41.67 %
# the removed normalize_gt=True (every answer normalised like a prediction) would give
#   1: 1, 2: 1, 3: "two" -> "2", m = 3 -> 0.9, 4: 1, 5: "a dog" -> "dog", m = 2 -> 0.6, 6: 0.6
#   mean (1 + 1 + 0.9 + 1 + 0.6 + 0.6) / 6 = 5.1 / 6 = 85 %
RAW_OFFICIAL = 100 * 2.5 / 6
RAW_NORMALIZE_GT = 100 * 5.1 / 6


def test_vqa_accuracy_on_raw_form_answers():
    results = [{"question_id": q, "answer": a} for q, a in RAW_PREDS.items()]
    out = vqa_accuracy(results, RAW_GTS)
    assert out["vqa_acc"] == pytest.approx(RAW_OFFICIAL)
    assert round(out["vqa_acc"], 2) == 41.67
    assert out["vqa_acc"] < RAW_NORMALIZE_GT - 40
    # exact: the prediction is the most frequent compared answer on 2 only ("3" leads on 3, "Yes" on 4,
    # "cat" on 5, "no" on 6): 1 / 6
    assert out["exact_acc"] == pytest.approx(100 / 6)


def test_vqa_task_local_evaluation_uses_the_official_rule():
    import VQA
    records = [{"question_id": q, "answer": a} for q, a in RAW_GTS.items()]
    results = [{"question_id": q, "answer": a} for q, a in RAW_PREDS.items()]
    # constants (normalised form -> what it scores on each question):
    #   "t-shirt" -> "t shirt": nowhere                       -> 0
    #   "Yes", "yes" -> "yes": q6 0.6 (q4's "Yes" kept)       -> 0.6 / 6
    #   "two" -> "2": q3 0.6                                  -> 0.6 / 6
    #   "dog": q5 0.3                                         -> 0.3 / 6
    #   "no": q6 1                                            -> 1 / 6 = 16.67 %, the best
    # (with normalize_gt=True "yes" would lead: q4 1 + q6 0.6 = 1.6 / 6)
    answer_list = ["t-shirt", "Yes", "yes", "two", "dog", "no"]
    metrics = VQA.local_metrics(results, records, answer_list)
    assert metrics["vqa_acc"] == pytest.approx(RAW_OFFICIAL)
    assert metrics["n_questions"] == 6
    assert metrics["chance_answer"] == "no" and metrics["chance_vqa_acc"] == pytest.approx(100 / 6)
    expected = {"t-shirt": 0.0, "Yes": 0.6, "yes": 0.6, "two": 0.6, "dog": 0.3, "no": 1.0}
    for cand, score in expected.items():  # the one-pass chance level agrees with scoring each constant
        const = vqa_accuracy([{"question_id": q, "answer": cand} for q in RAW_GTS], RAW_GTS)["vqa_acc"]
        assert const == pytest.approx(100 * score / 6)
        assert best_constant_accuracy(RAW_GTS, [cand])[1] == pytest.approx(const)
    # a single-string answer field counts as one annotator: "Yes" kept, prediction "yes" -> 0
    one = VQA.local_metrics([{"question_id": 1, "answer": "yes"}], [{"question_id": 1, "answer": "Yes"}], ["yes"])
    assert one["vqa_acc"] == 0.0


def test_score_needs_answers():
    with pytest.raises(ValueError):
        vqa_score("x", [])
    with pytest.raises(TypeError):  # one string is not a list of answers (it would be scored per character)
        vqa_score("x", "xyz")


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
    ("Yes", "yes"),                    # lower-cased: a prediction can never be "Yes"
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
    # 1: m = 10 -> 1; 2: the answers disagree but have no punctuation, "two" -> "2": m = 3 -> 0.9; 3: 0
    out = vqa_accuracy(results, gts)
    assert out["vqa_acc"] == pytest.approx(100 * (1.0 + 0.9 + 0.0) / 3)
    assert out["exact_acc"] == pytest.approx(100 / 3)   # only question 1 names the most frequent answer
    assert out["n_questions"] == 3
    with pytest.raises(ValueError, match="without a predicted answer"):
        vqa_accuracy(results[:2], gts)


def test_best_constant_answer_is_the_chance_level():
    gts = {1: ["yes"] * 10, 2: ["yes"] * 2 + ["no"] * 8, 3: ["no"] * 10, 4: ["no"] * 10, 5: ["2"] * 10}
    # "yes": (1 + 0.6) / 5 = 32 %; "no": (1 + 1 + 1) / 5 = 60 %; "two" -> "2" (the constant is a prediction,
    # so it is normalised) matches the unanimous "2": 1 / 5 = 20 %; "cat": 0 %
    answer, acc = best_constant_accuracy(gts, ["yes", "no", "two", "cat"])
    assert answer == "no" and acc == pytest.approx(60.0)
    for cand, expected in {"yes": 32.0, "no": 60.0, "two": 20.0, "cat": 0.0}.items():
        const = vqa_accuracy([{"question_id": q, "answer": cand} for q in gts], gts)["vqa_acc"]
        assert const == pytest.approx(expected)          # agrees with scoring the constant per question
    assert best_constant_accuracy(gts, ["two", "2"]) == ("two", pytest.approx(20.0))  # tie: the earlier
    # a unanimous raw "Two" is matched by no constant: the normalised "two" is "2"
    assert best_constant_accuracy({1: ["Two"] * 10}, ["Two", "two", "2"]) == ("Two", 0.0)
