"""VQA accuracy exactly as X²-VLM's evaluator computes it — ``vqaTools/vqaEval.py`` of zengyan-97/X2-VLM
(the VQA API's ``vqaEval.py`` as X²-VLM ships it) — re-implemented from its rules.

Per question, with the prediction and the n annotator answers (n = 10 in VQA v2):

1. **The prediction, always** (:func:`normalize_answer`): newlines and tabs become spaces, the ends are
   stripped, then :func:`process_punctuation` and :func:`process_digit_article` (lower case, number words →
   digits, no articles, contractions).
2. **The ground-truth answers** are compared as the annotation file has them — no stripping, no lower case,
   no number or article processing — except that when the annotators disagree (more than one distinct raw
   answer) each of them goes through :func:`process_punctuation` only (:func:`ground_truth_forms`). A
   unanimous "Yes", "two", "a dog" or "t-shirt" is therefore never matched (the prediction becomes "yes",
   "2", "dog", "t shirt"): the rule takes annotation files whose answers are already in normalised form.
3. **Soft score**: for each annotator i the prediction scores ``min(1, #{j ≠ i : answer_j == prediction} / 3)``;
   the question's accuracy is the mean over the n leave-one-out subsets. With 10 answers of which m match:
   0, 0.3, 0.6, 0.9, 1.0 for m = 0..≥4. (The official code leaves out one answer *record*; VQA v2 records
   differ by ``answer_id``, so exactly one is left out, as here by position.)

X²-VLM's file is GT-Vision-Lab/VQA's ``vqaEval.py`` of 2016 (ported to Python 3); the 2021 revision there
("Fixed processing answers bug") differs and is *not* followed here: it strips the ground-truth answers too
and processes the prediction — then both sides fully — only when the annotators disagree. The punctuation,
number, article and contraction tables are the same in both.

The overall accuracy is the mean of the per-question accuracies. The official tool reports it (and each
per-question value) as ``round(100 * accuracy, 2)``; :func:`vqa_accuracy` and :func:`best_constant_accuracy`
return the unrounded percentage in [0, 100] — round to 2 decimals to compare with the official number.
"""
from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

#: Characters removed or turned into a space by :func:`process_punctuation` ('.' has its own rule).
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
               "?", "!")
#: Number words → digits ("none" counts as 0).
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = frozenset({"a", "an", "the"})
#: Apostrophe-less (or misplaced) contractions → the official spelling; applied word by word.
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're",
    "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}

_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
# a period not followed by a digit ("5." and "a.m." lose theirs, "3.5" keeps it). The official call passes
# re.UNICODE (= 32) where re.sub takes its count, so at most 32 periods go.
_PERIOD = re.compile(r"\.(?!\d)")
_PERIOD_MAX = 32


def process_punctuation(text: str) -> str:
    """Each of :data:`PUNCTUATION` is deleted where the text has it next to a space (or the text contains a
    digit-comma-digit such as "1,000" — then all of them are deleted), else replaced by a space; periods
    not followed by a digit are deleted. Both tests look at the text as it came in."""
    delete_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for p in PUNCTUATION:
        if delete_all or (p + " ") in text or (" " + p) in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out, count=_PERIOD_MAX)


def process_digit_article(text: str) -> str:
    """Lower-case, split on whitespace, number words → digits, drop articles, fix contractions, re-join."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def normalize_answer(answer: str) -> str:
    """The official processing of a predicted answer: newlines and tabs → spaces, ends stripped, then
    :func:`process_punctuation` and :func:`process_digit_article`."""
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))


def ground_truth_forms(answers: Sequence[str]) -> list[str]:
    """The annotators' answers as the official rule compares them: as given, or — when they disagree (more
    than one distinct answer) — each through :func:`process_punctuation` (nothing else)."""
    if isinstance(answers, str):
        raise TypeError("ground-truth answers must be a sequence of strings, not one string")
    if len(set(answers)) > 1:
        return [process_punctuation(a) for a in answers]
    return list(answers)


def vqa_score(prediction: str, answers: Sequence[str]) -> float:
    """Accuracy in [0, 1] of one predicted answer against the annotators' ``answers`` (see module doc)."""
    gts = ground_truth_forms(answers)
    if not gts:
        raise ValueError("vqa_score needs at least one ground-truth answer")
    pred = normalize_answer(prediction)
    matches = sum(g == pred for g in gts)
    # leave annotator i out: the others that match are matches - [gt_i matches]
    total = sum(min(1.0, (matches - (g == pred)) / 3.0) for g in gts)
    return total / len(gts)


def _answers_of(results: Iterable[Mapping[str, Any]]) -> dict[Any, str]:
    out: dict[Any, str] = {}
    for r in results:
        out[r["question_id"]] = r["answer"]
    return out


def vqa_accuracy(results: Iterable[Mapping[str, Any]],
                 ground_truth: Mapping[Any, Sequence[str]]) -> dict[str, float]:
    """``results`` in the submission format ``[{question_id, answer}]``; ``ground_truth`` {question_id:
    [annotator answers]} as in the annotation file (nothing is normalised beforehand). Returns ``vqa_acc``
    (the official soft accuracy), ``exact_acc`` (the prediction equals the most frequent answer, both in the
    form the official rule compares them: :func:`normalize_answer`, :func:`ground_truth_forms`) in percent,
    and ``n_questions``. Every question of ``ground_truth`` must have a result."""
    preds = _answers_of(results)
    missing = [q for q in ground_truth if q not in preds]
    if missing:
        raise ValueError(f"{len(missing)} question(s) without a predicted answer, e.g. {missing[:5]}")
    if not ground_truth:
        raise ValueError("vqa_accuracy: no questions")
    soft = exact = 0.0
    for qid, answers in ground_truth.items():
        soft += vqa_score(preds[qid], answers)
        top = Counter(ground_truth_forms(answers)).most_common(1)[0][0]
        exact += float(normalize_answer(preds[qid]) == top)
    n = len(ground_truth)
    return {"vqa_acc": 100.0 * soft / n, "exact_acc": 100.0 * exact / n, "n_questions": n}


def best_constant_accuracy(ground_truth: Mapping[Any, Sequence[str]],
                           candidates: Iterable[str]) -> tuple[str, float]:
    """The candidate answer that, given to every question, scores the highest VQA accuracy (percent) — the
    chance level of a model that ignores image and question. Ties go to the earlier candidate. Equal to
    scoring each constant through :func:`vqa_accuracy`, in one pass over the questions."""
    if not ground_truth:
        raise ValueError("best_constant_accuracy: no questions")
    # a constant scores only on questions where one of the annotators' (compared) answers equals its
    # normalised form: sum, per compared answer, what a prediction equal to it scores
    totals: defaultdict[str, float] = defaultdict(float)
    for answers in ground_truth.values():
        gts = ground_truth_forms(answers)
        n = len(gts)
        for g, m in Counter(gts).items():
            totals[g] += (m * min(1.0, (m - 1) / 3.0) + (n - m) * min(1.0, m / 3.0)) / n
    best, best_acc = None, -1.0
    for cand in candidates:
        acc = 100.0 * totals.get(normalize_answer(cand), 0.0) / len(ground_truth)
        if acc > best_acc:
            best, best_acc = cand, acc
    if best is None:
        raise ValueError("best_constant_accuracy: no candidate answers")
    return best, best_acc


__all__ = ["normalize_answer", "ground_truth_forms", "process_punctuation", "process_digit_article", "vqa_score",
           "vqa_accuracy", "best_constant_accuracy", "PUNCTUATION", "NUMBER_WORDS", "ARTICLES", "CONTRACTIONS"]
