"""MLM masking statistics and invariants."""
import random
from collections import Counter

import pytest

from dataset import load_tokenizer
from dataset.masking import IGNORE, MaskGenerator
from dataset.synthetic import generate
from dataset.text import TextProcessor


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    files = generate(tmp_path_factory.mktemp("syn"), seed=0, n_images=4, n_videos=1)
    return load_tokenizer({"model": {"text": {"tokenizer": files["vocab"]}}})


CAPTIONS = ["a red circle to the left of a blue square", "there are circles in both images",
            "two shapes including a green triangle above a white circle and red squares"]


def test_counts_positions_and_labels(tok):
    proc = TextProcessor(tok, max_tokens=30, masker=MaskGenerator(tok, 0.5, 12, 0.2, 3, True))
    rng = random.Random(0)
    for cap in CAPTIONS:
        ids = proc.encode(cap, rng)["text_ids"]
        n_tok = sum(1 for t in ids if t not in (tok.cls_token_id, tok.sep_token_id, tok.pad_token_id))
        for _ in range(50):
            out = proc.encode(cap, rng)
            pos, lab = out["mlm_positions"], out["mlm_labels"]
            k = sum(1 for x in lab if x != IGNORE)
            assert len(pos) == len(lab) == 12
            assert k == min(12, max(1, round(0.5 * n_tok)))
            assert all(1 <= p <= n_tok for p in pos[:k]) and pos[k:] == [0] * (12 - k)
            assert [ids[p] for p in pos[:k]] == lab[:k]            # labels are the original ids
            unmasked = set(range(30)) - set(pos[:k])
            assert all(out["mlm_ids"][i] == ids[i] for i in unmasked)


def test_80_10_10_replacement(tok):
    gen = MaskGenerator(tok, 0.5, 12, 0.0, 3, False)
    ids = [tok.cls_token_id] + tok.convert_tokens_to_ids(tok.tokenize(CAPTIONS[2])) + [tok.sep_token_id]
    rng = random.Random(1)
    c = Counter()
    for _ in range(600):
        masked, pos, lab = gen(ids, rng)
        for p, label in zip(pos, lab, strict=True):
            if label == IGNORE:
                continue
            c["mask" if masked[p] == tok.mask_token_id else "same" if masked[p] == label else "random"] += 1
    n = sum(c.values())
    assert abs(c["mask"] / n - 0.8) < 0.03
    assert abs((c["same"] + c["random"]) / n - 0.2) < 0.03 and c["random"] > 0.06 * n


def test_random_replacement_draws_from_the_whole_vocabulary(tmp_path):
    """The 10% random tokens are uniform over every vocabulary id, special tokens included (official
    ``get_random_word``); 80% [MASK], 10% unchanged."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    (tmp_path / "vocab.txt").write_text("\n".join(specials + ["cat", "dog", "red", "blue", "big", "##s"]) + "\n")
    small = load_tokenizer({"model": {"text": {"tokenizer": str(tmp_path / "vocab.txt")}}})
    vocab_size = len(small.get_vocab())
    assert vocab_size == 11
    word = small.convert_tokens_to_ids("cat")
    ids = [small.cls_token_id] + [word] * 80 + [small.sep_token_id]
    gen, rng = MaskGenerator(small, 0.5, 40, 0.0, 3, False), random.Random(7)
    kinds, drawn = Counter(), Counter()
    for _ in range(500):
        masked, pos, lab = gen(ids, rng)
        assert lab == [word] * 40
        for p in pos:
            t = masked[p]
            kinds["mask" if t == small.mask_token_id else "same" if t == word else "random"] += 1
            if t not in (small.mask_token_id, word):
                drawn[t] += 1
    n = sum(kinds.values())
    # a random draw hits [MASK] or the word itself with probability 2/V, seen as "mask" / "same"
    assert abs(kinds["mask"] / n - (0.8 + 0.1 / vocab_size)) < 0.015
    assert abs(kinds["same"] / n - (0.1 + 0.1 / vocab_size)) < 0.01
    assert abs(kinds["random"] / n - 0.1 * (vocab_size - 2) / vocab_size) < 0.01
    expected = set(range(vocab_size)) - {small.mask_token_id, word}
    assert set(drawn) == expected and {small.pad_token_id, small.cls_token_id, small.sep_token_id} <= set(drawn)
    mean = sum(drawn.values()) / len(drawn)
    assert all(0.7 * mean < c < 1.3 * mean for c in drawn.values())  # uniform


def test_whole_word_masking_keeps_subwords_together(tok):
    ids = [tok.cls_token_id] + tok.convert_tokens_to_ids(tok.tokenize("red circles and blue squares")) + \
        [tok.sep_token_id]
    sub = [i for i, t in enumerate(ids) if tok.convert_ids_to_tokens(t) == "##s"]
    assert len(sub) == 2

    def split_rate(whole_word: bool) -> float:
        gen, rng, split = MaskGenerator(tok, 0.5, 12, 0.0, 3, whole_word), random.Random(2), 0
        for _ in range(400):
            _, pos, lab = gen(ids, rng)
            chosen = {p for p, label in zip(pos, lab, strict=True) if label != IGNORE}
            split += any((s in chosen) != (s - 1 in chosen) for s in sub)
        return split / 400

    # spans are trimmed to the per-caption budget (as in the official recipe), so whole words split rarely
    ww, no_ww = split_rate(True), split_rate(False)
    assert ww < 0.5 * no_ww and no_ww > 0.5
