"""COCO caption metrics through pycocoevalcap's own scorers (BLEU-1..4, CIDEr; METEOR, ROUGE-L, SPICE on request).

Captions are tokenised first, as the COCO evaluation does: with the Stanford PTB tokenizer that
pycocoevalcap ships (``tokenizer="ptb"``; needs ``java``), or with :func:`simple_tokenize`
(``tokenizer="simple"``): lower-case, split off the punctuation the PTB step would remove and drop it,
split on whitespace. ``"auto"`` picks PTB when ``java`` is on the PATH. The two agree on plain captions;
they differ on clitics ("man's" → PTB "man 's") and unusual punctuation.

METEOR and SPICE run Java programs; asking for them without ``java`` raises. SPICE also needs the Stanford
CoreNLP models that pycocoevalcap downloads on first use, so it is not among the defaults.
"""
from __future__ import annotations

import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

DEFAULT_METRICS = ("bleu", "cider")
JAVA_METRICS = ("meteor", "spice")
KNOWN_METRICS = ("bleu", "meteor", "rouge", "cider", "spice")

# punctuation that pycocoevalcap's PTB step splits off and drops (its brackets become -LRB- etc., also dropped)
_PUNCT_CHARS = re.compile(r"[.?!,:;\"`()\[\]{}]")


def java_available() -> bool:
    return shutil.which("java") is not None


def simple_tokenize(text: str) -> str:
    """Lower-case; ``. ? ! , : ; " ` ( ) [ ] { }`` become spaces; hyphens and apostrophes at either end of a
    word are dropped (so are ``-``, ``--``, ``'``), in-word ones stay (``t-shirt``, ``man's``); split on
    whitespace and join with single spaces."""
    words = (w.strip("'-") for w in _PUNCT_CHARS.sub(" ", text.lower()).split())
    return " ".join(w for w in words if w)


def tokenize(captions: Mapping[Any, Sequence[str]], tokenizer: str = "auto") -> dict[Any, list[str]]:
    """``{key: [caption, ...]}`` → the same with every caption tokenised (``ptb``, ``simple`` or ``auto``)."""
    if tokenizer == "auto":
        tokenizer = "ptb" if java_available() else "simple"
    if tokenizer == "simple":
        return {k: [simple_tokenize(c) for c in v] for k, v in captions.items()}
    if tokenizer != "ptb":
        raise ValueError(f"tokenizer must be 'ptb', 'simple' or 'auto', got {tokenizer!r}")
    if not java_available():
        raise RuntimeError("the PTB tokenizer needs java on the PATH; use tokenizer='simple'")
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    return PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in captions.items()})


def _scorer(name: str):
    if name == "bleu":
        from pycocoevalcap.bleu.bleu import Bleu
        return Bleu(4), ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"]
    if name == "cider":
        from pycocoevalcap.cider.cider import Cider
        return Cider(), "CIDEr"
    if name == "rouge":
        from pycocoevalcap.rouge.rouge import Rouge
        return Rouge(), "ROUGE_L"
    if name == "meteor":
        from pycocoevalcap.meteor.meteor import Meteor
        return Meteor(), "METEOR"
    if name == "spice":
        from pycocoevalcap.spice.spice import Spice
        return Spice(), "SPICE"
    raise ValueError(f"unknown caption metric {name!r}; known: {', '.join(KNOWN_METRICS)}")


def score_tokenized(gts: Mapping[Any, list[str]], res: Mapping[Any, list[str]],
                    metrics: Iterable[str] = DEFAULT_METRICS) -> dict[str, float]:
    """Corpus scores of tokenised candidates ``res`` ({key: [one caption]}) against ``gts`` ({key: [refs]})."""
    out: dict[str, float] = {}
    for name in metrics:
        if name in JAVA_METRICS and not java_available():
            raise RuntimeError(f"{name.upper()} needs java on the PATH")
        scorer, keys = _scorer(name)
        if name == "bleu":
            score, _ = scorer.compute_score(dict(gts), dict(res), verbose=0)
        else:
            score, _ = scorer.compute_score(dict(gts), dict(res))
        if isinstance(keys, list):
            out.update({k: float(s) for k, s in zip(keys, score, strict=True)})
        else:
            out[keys] = float(score)
    return out


def caption_scores(references: Mapping[Any, Sequence[str] | str], candidates: Mapping[Any, str],
                   metrics: Iterable[str] = DEFAULT_METRICS, tokenizer: str = "auto") -> dict[str, float]:
    """COCO-style scores of one candidate caption per key against that key's reference captions.

    Every key of ``candidates`` must have references; references of keys without a candidate are ignored
    (as COCO's evaluation only scores the images it has results for). BLEU and CIDEr values are on
    pycocoevalcap's scale (BLEU in [0, 1], CIDEr typically in [0, 10]).
    """
    if not candidates:
        raise ValueError("no candidate captions to score")
    missing = [k for k in candidates if k not in references]
    if missing:
        raise KeyError(f"{len(missing)} candidate(s) without references, e.g. {missing[:3]}")
    refs = {k: [references[k]] if isinstance(references[k], str) else list(references[k]) for k in candidates}
    if any(not r for r in refs.values()):
        raise ValueError("every candidate needs at least one reference caption")
    gts = tokenize(refs, tokenizer)
    res = tokenize({k: [c] for k, c in candidates.items()}, tokenizer)
    return score_tokenized(gts, res, metrics)


def parse_metrics(text: str | Sequence[str]) -> list[str]:
    """``"bleu,cider"`` (or a list) → checked metric names."""
    names = [t.strip().lower() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    unknown = [n for n in names if n not in KNOWN_METRICS]
    if unknown:
        raise ValueError(f"unknown caption metric(s) {unknown}; known: {', '.join(KNOWN_METRICS)}")
    return names


__all__ = ["caption_scores", "score_tokenized", "tokenize", "simple_tokenize", "parse_metrics", "java_available",
           "DEFAULT_METRICS", "KNOWN_METRICS"]
