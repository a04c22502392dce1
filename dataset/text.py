"""The tokenizer (:func:`build_tokenizer`), caption/question cleaning, left/right swapping for flips, and
tokenisation with MLM masking."""
from __future__ import annotations

import inspect
import random
import re
from pathlib import Path
from typing import Any, cast

# transformers 5: BertTokenizerFast is an alias of BertTokenizer, exported lazily (not in __all__: mypy misses it)
from transformers import AutoTokenizer, BertTokenizerFast  # type: ignore[attr-defined]

from dataset.io import BadSample
from dataset.masking import MaskGenerator
from utils.config import ConfigError

_PUNCT = re.compile(r"([,.'!?\"()*#:;~])")
_SPACES = re.compile(r"\s{2,}")
_LEFT_RIGHT = re.compile(r"\b(left|right)\b", re.IGNORECASE)


def pre_caption(caption: str, max_words: int = 30) -> str:
    """Lower-case, drop punctuation, collapse spaces, keep the first ``max_words`` words (official cleaning)."""
    if not isinstance(caption, str):
        raise BadSample(f"caption must be a string, got {type(caption).__name__}")
    text = _PUNCT.sub(" ", caption.lower()).replace("-", " ").replace("/", " ").replace("<person>", "person")
    text = _SPACES.sub(" ", text).strip()
    words = text.split(" ")
    text = " ".join(words[:max_words]).strip()
    if not text:
        raise BadSample(f"empty caption after cleaning (raw: {caption!r})")
    return text


#: evaluation questions are cut at this many words, not at the training ``data.max_words`` (the official
#: VQA / video QA datasets: "do not limit question length during test")
TEST_QUESTION_WORDS = 50


def pre_question(question: str, max_words: int = 30) -> str:
    """Question cleaning as in the official VQA code (punctuation → space, lower-case, truncate)."""
    if not isinstance(question, str):
        raise BadSample(f"question must be a string, got {type(question).__name__}")
    text = _PUNCT.sub(" ", question.lower()).replace("-", " ").replace("/", " ").rstrip(" ")
    text = " ".join(text.split(" ")[:max_words])
    if not text.strip():
        raise BadSample(f"empty question (raw: {question!r})")
    return text


def swap_left_right(text: str) -> str:
    """Exchange the words 'left' and 'right' (case kept), for horizontally flipped images."""
    def repl(m: re.Match) -> str:
        w = m.group(0)
        new = "right" if w.lower() == "left" else "left"
        return new.capitalize() if w[0].isupper() else new
    return _LEFT_RIGHT.sub(repl, text)


def has_left_right(text: str) -> bool:
    return bool(_LEFT_RIGHT.search(text))


def choose_caption(value: Any, language: str | None = None, rng: random.Random | None = None) -> str:
    """A caption field may be a string, a list (one is drawn) or a {language: text} dict (multilingual)."""
    rng = rng or cast(random.Random, random)
    if isinstance(value, list):
        if not value:
            raise BadSample("caption list is empty")
        value = rng.choice(value)
    if isinstance(value, dict):
        if not value:
            raise BadSample("caption dict is empty")
        value = value[language] if language else rng.choice(list(value.values()))
    if not isinstance(value, str) or not value.strip():
        raise BadSample(f"empty caption ({value!r})")
    return value


class TextProcessor:
    """Tokenise a caption to fixed-length ids/attention (+ masked copy, positions and labels).

    Cleaning and tokenising are deterministic, so their result is kept per caption text (up to
    ``cache_size`` texts per process, then the store starts afresh): region phrases ("white car", "man")
    and captions met again are tokenised once. Only the MLM masking is drawn per sample."""

    def __init__(self, tokenizer, max_tokens: int = 30, max_words: int = 30, masker: MaskGenerator | None = None,
                 cache_size: int = 8192):
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.max_words = max_words
        self.masker = masker
        self.cache_size = cache_size
        self._cache: dict[str, tuple[tuple[int, ...], int]] = {}

    def _ids(self, caption: str) -> tuple[tuple[int, ...], int]:
        """([CLS] + word pieces + [SEP] cut to ``max_tokens``, 1 if cut else 0) of a caption."""
        hit = self._cache.get(caption) if isinstance(caption, str) else None
        if hit is not None:
            return hit
        text = pre_caption(caption, self.max_words)
        tok = self.tokenizer
        pieces = tok.convert_tokens_to_ids(tok.tokenize(text))
        truncated = int(len(pieces) > self.max_tokens - 2)
        pieces = pieces[: self.max_tokens - 2]
        if not pieces:
            raise BadSample(f"caption has no tokens: {caption!r}")
        hit = (tuple([tok.cls_token_id] + pieces + [tok.sep_token_id]), truncated)
        if len(self._cache) >= self.cache_size:
            self._cache.clear()
        if self.cache_size:
            self._cache[caption] = hit
        return hit

    def encode(self, caption: str, rng: random.Random | None = None) -> dict[str, Any]:
        """``text_ids``, ``text_atts`` (+ the MLM fields with a masker) padded to ``max_tokens``, and
        ``truncated`` (1 if the text had more tokens than fit and was cut, else 0)."""
        tok = self.tokenizer
        cached, truncated = self._ids(caption)
        ids = list(cached)
        n_pad = self.max_tokens - len(ids)
        out = {"text_ids": ids + [tok.pad_token_id] * n_pad, "text_atts": [1] * len(ids) + [0] * n_pad,
               "truncated": truncated}
        if self.masker is not None:
            masked, positions, labels = self.masker(ids, rng)
            out["mlm_ids"] = masked + [tok.pad_token_id] * n_pad
            out["mlm_positions"] = positions
            out["mlm_labels"] = labels
        return out


def build_tokenizer(text_cfg: dict):
    """Tokenizer from ``tokenizer`` (a folder or a WordPiece ``vocab.txt``) or else ``name_or_path``."""
    source = text_cfg.get("tokenizer") or text_cfg.get("name_or_path")
    if not source:
        raise ConfigError("no tokenizer: set model.text.tokenizer (folder or vocab.txt) or model.text.name_or_path")
    source = Path(source)
    if source.is_file():
        # transformers 5 takes the vocab file as ``vocab`` and silently ignores ``vocab_file`` (4.x's name)
        arg = "vocab" if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters else "vocab_file"
        return BertTokenizerFast(**{arg: str(source)}, do_lower_case=True)
    if not source.is_dir():
        raise FileNotFoundError(f"tokenizer '{source}' is neither a vocab file nor a local folder")
    return AutoTokenizer.from_pretrained(str(source), local_files_only=True)
