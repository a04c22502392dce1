"""Build a WordPiece vocabulary (``vocab.txt``) from your own annotation files, for a text encoder trained from
scratch (the tiny preset, the ``*_demo.yaml`` configs). With a pretrained checkpoint keep the checkpoint's own
tokenizer (e.g. ``bert-base-uncased``): its word embeddings belong to that vocabulary.

The demo's vocabulary (``data/synthetic/vocab.txt``) knows only the shapes dataset's ~60 words; every other
word is spelled out in letter pieces (``dog`` → ``d ##o ##g``), which costs the model much of what it can learn
from the text. This script puts every word of your texts into the vocabulary (cleaned and split as the readers
and the tokenizer do), plus single characters as a fallback for words it has not seen.

Texts are read from the fields ``caption``, ``desc``, ``text``, ``sentence``, ``question``, ``answer`` (strings,
lists of strings, {language: text} dicts) and the ``caption`` / ``attributes`` of region ``elems`` (change with
``--fields``), in any format of docs/data_preparation.md (JSON arrays, JSON-lines, folders of them).

    python scripts/build_vocab.py data/finetune/my_train.json data/pretrain/my_captions.jsonl \\
        --out data/my_vocab.txt --max-size 512
    python Retrieval.py --config configs/finetune/retrieval_demo.yaml \\
        --override model.text.tokenizer=data/my_vocab.txt ...

The text encoder's ``model.text.config.vocab_size`` must be at least the number of entries (the tiny preset
has 512; ``--max-size 512`` keeps the most frequent words that fit). ``--compare VOCAB`` also prints how many of
the word occurrences another vocabulary (e.g. the demo's) would cut into pieces.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dataset.io import AnnotationIndex, BadSample  # noqa: E402
from dataset.synthetic import build_vocab  # noqa: E402
from dataset.text import pre_caption  # noqa: E402

TEXT_FIELDS = ("caption", "desc", "text", "sentence", "question", "answer")
ELEM_FIELDS = ("caption", "attributes")


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)


def record_texts(record: dict, fields: Iterable[str] = TEXT_FIELDS) -> Iterator[str]:
    """The raw texts of one annotation record: its ``fields`` and the caption / attributes of its ``elems``."""
    for key in fields:
        yield from _strings(record.get(key))
    elems = record.get("elems")
    if isinstance(elems, list):
        for e in elems:
            if isinstance(e, dict):
                for key in ELEM_FIELDS:
                    yield from _strings(e.get(key))


def annotation_texts(files: Iterable[str | Path], fields: Iterable[str] = TEXT_FIELDS,
                     skipped: list[str] | None = None) -> Iterator[str]:
    """Every text of the annotation files, cleaned as the readers clean them (``pre_caption``, no word limit).
    A record that is a plain string (a VQA answer list) is a text; records that do not parse add to ``skipped``."""
    fields = tuple(fields)
    index = AnnotationIndex(list(files))
    for i in range(len(index)):
        try:
            record = index.get(i)
            texts: Iterable[str] = record_texts(record, fields)
        except BadSample as e:
            try:
                texts = [json.loads(index.raw(i))]
            except (ValueError, UnicodeDecodeError):
                texts = []
            if not isinstance(texts[0] if texts else None, str):
                if skipped is not None:
                    skipped.append(str(e))
                continue
        for text in texts:
            try:
                yield pre_caption(text, max_words=10 ** 6)
            except BadSample:
                continue  # nothing left after cleaning


def word_splitter():
    """Split a text into the words the vocab.txt tokenizer sees (``dataset.text.build_tokenizer``: BERT
    WordPiece, lower-cased, accents stripped, punctuation and CJK characters split off)."""
    from tokenizers import normalizers, pre_tokenizers
    norm = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                      lowercase=True)
    pre = pre_tokenizers.BertPreTokenizer()

    def split(text: str) -> list[str]:
        return [w for w, _ in pre.pre_tokenize_str(norm.normalize_str(text))]
    return split


def make_vocab(texts: list[str], min_count: int = 1, max_size: int | None = None) -> list[str]:
    """:func:`dataset.synthetic.build_vocab` over ``texts`` with the tokenizer's word split, no plural folding;
    with ``max_size`` the most frequent words that keep the whole vocabulary within ``max_size`` entries."""
    split = word_splitter()

    def build(max_words: int | None) -> list[str]:
        return build_vocab(texts, stems=(), min_count=min_count, max_words=max_words, split=split)

    vocab = build(None)
    if max_size is None or len(vocab) <= max_size:
        return vocab
    base = len(build(0))
    if base > max_size:
        raise SystemExit(f"build_vocab.py: error: --max-size {max_size} is smaller than the {base} entries the "
                         f"specials and single characters alone take")
    n_words = max_size - base
    while len(vocab := build(n_words)) > max_size:  # a kept word may bring new characters (2 entries each)
        n_words = max(0, n_words - (len(vocab) - max_size))
    return vocab


def pieces_share(texts: list[str], vocab_file: str | Path) -> float:
    """Percent of the word occurrences in ``texts`` that the vocabulary in ``vocab_file`` cuts into pieces
    (or maps to [UNK])."""
    from dataset.text import build_tokenizer
    tok = build_tokenizer({"tokenizer": str(vocab_file)})
    split = word_splitter()
    cache: dict[str, bool] = {}
    n = cut = 0
    for t in texts:
        for w in split(t):
            if w not in cache:
                pieces = tok.tokenize(w)
                cache[w] = len(pieces) != 1 or pieces[0] == tok.unk_token
            n += 1
            cut += cache[w]
    return 100.0 * cut / max(n, 1)


def main(argv: list[str] | None = None) -> list[str]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", help="annotation files or folders (any format of docs/data_preparation.md)")
    p.add_argument("--out", required=True, help="the vocab.txt to write (then: model.text.tokenizer=<it>)")
    p.add_argument("--min-count", type=int, default=1, help="leave out words seen fewer times (default 1: all)")
    p.add_argument("--max-size", type=int, default=None,
                   help="at most this many entries, the most frequent words kept (the tiny preset's vocab_size "
                        "is 512); default: no limit")
    p.add_argument("--fields", nargs="+", default=list(TEXT_FIELDS),
                   help=f"record fields holding text (default: {' '.join(TEXT_FIELDS)}; region elems' "
                        f"{' / '.join(ELEM_FIELDS)} are always read)")
    p.add_argument("--compare", metavar="VOCAB", help="also print the share of word occurrences this other "
                                                      "vocab.txt (e.g. data/synthetic/vocab.txt) cuts into pieces")
    args = p.parse_args(argv)
    skipped: list[str] = []
    texts = list(annotation_texts(args.files, args.fields, skipped))
    if not texts:
        raise SystemExit(f"build_vocab.py: error: no texts in the fields {', '.join(args.fields)} of "
                         f"{', '.join(map(str, args.files))}; see --fields")
    vocab = make_vocab(texts, args.min_count, args.max_size)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    print(f"wrote {out}: {len(vocab)} entries from {len(texts)} texts; set model.text.tokenizer={out} and "
          f"model.text.config.vocab_size >= {len(vocab)}")
    print(f"word occurrences cut into pieces: {pieces_share(texts, out):.1f} % with {out}")
    if args.compare:
        print(f"word occurrences cut into pieces: {pieces_share(texts, args.compare):.1f} % with {args.compare}")
    if skipped:
        print(f"skipped {len(skipped)} unreadable records (first: {skipped[0]})")
    return vocab


if __name__ == "__main__":
    from utils.cli import cli_main
    cli_main(main)
