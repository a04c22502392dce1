"""The Python inference API (models/api.py) on the tiny preset: every function, against the model's own maths."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from dataset import image_transform
from dataset.captions import prompt_token_ids
from dataset.synthetic import generate
from models import X2VLMInference, load_model
from models.api import box_pixels
from models.checkpoint import CheckpointError, save_checkpoint_weights
from models.vqa import X2VLMForVQA
from tests.conftest import TINY_CONFIG
from utils.config import ConfigError, save_config


@pytest.fixture(scope="module")
def syn(tmp_path_factory) -> dict[str, str]:
    return generate(tmp_path_factory.mktemp("api_data"), seed=0, n_images=4, n_videos=0)


@pytest.fixture(scope="module")
def vlm(syn) -> X2VLMInference:
    torch.manual_seed(0)
    return load_model(config=TINY_CONFIG, overrides=[f"model.text.tokenizer={syn['vocab']}"], vqa=True)


@pytest.fixture(scope="module")
def images(syn) -> list[Path]:
    root = Path(syn["root"]) / "images"
    return [root / "img_0000.jpg", root / "img_0001.jpg"]


TEXTS = ["a red circle", "a blue square to the left of a green triangle", "two shapes"]


def test_features_are_normalised_and_accept_paths_or_pil(vlm, images) -> None:
    one = vlm.image_features(images[0])
    assert one.shape == (32,) and one.norm().item() == pytest.approx(1.0, abs=1e-5)
    both = vlm.image_features(images)
    assert both.shape == (2, 32)
    torch.testing.assert_close(both[0], one)
    torch.testing.assert_close(vlm.image_features(Image.open(images[0])), one)
    text = vlm.text_features(TEXTS)
    assert text.shape == (3, 32)
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(vlm.text_features(TEXTS[1]), text[1])


def test_similarity_is_the_models_itc_cosine(vlm, images) -> None:
    sims = vlm.similarity(images, TEXTS)
    assert sims.shape == (2, 3) and sims.abs().max() <= 1.0 + 1e-5
    # by hand: evaluation transform, tokenizer, the model's encoders and projections
    model, tf = vlm.model, image_transform(vlm.cfg, train=False)
    pixels = torch.stack([tf(Image.open(p))[0] for p in images])
    enc = vlm.tokenizer(TEXTS, padding="longest", return_tensors="pt")
    with torch.no_grad():
        img = model.image_features(model.encode_image(pixels)[0])
        txt = model.text_features(model.encode_text(enc["input_ids"], enc["attention_mask"]))
    torch.testing.assert_close(sims, img @ txt.t(), atol=1e-5, rtol=1e-5)


def test_itm_score_probabilities_match_per_pair_scoring(vlm, images) -> None:
    single = vlm.itm_score(images[0], TEXTS[0])
    assert isinstance(single, float) and 0.0 <= single <= 1.0
    grid = vlm.itm_score(images, TEXTS)
    assert grid.shape == (2, 3) and bool(((grid >= 0) & (grid <= 1)).all())
    # all pairs fused at once (each image once) = each pair on its own
    for i, image in enumerate(images):
        for j, text in enumerate(TEXTS):
            assert grid[i, j].item() == pytest.approx(vlm.itm_score(image, text), abs=1e-5)


def test_ground_returns_the_heads_box_in_pixels(vlm, images) -> None:
    pil = Image.open(images[0])
    box = vlm.ground(pil, "the red circle")
    x0, y0, x1, y1 = box
    assert 0 <= x0 < x1 <= pil.width and 0 <= y0 < y1 <= pil.height
    model = vlm.model
    pixels = image_transform(vlm.cfg, train=False)(pil)[0][None]
    enc = vlm.tokenizer(["the red circle"], return_tensors="pt")
    with torch.no_grad():
        embeds = model.encode_image(pixels)[0]
        cxcywh = model.predict_boxes(embeds, model.encode_text(enc["input_ids"], enc["attention_mask"]),
                                     enc["attention_mask"])[0]
    assert list(box) == pytest.approx(box_pixels(cxcywh.tolist(), *pil.size), abs=1e-3)


def test_caption_is_vocabulary_words(vlm, images) -> None:
    text = vlm.caption(images[0], num_beams=2, max_length=6, min_length=2)
    assert isinstance(text, str)
    pieces = vlm.tokenizer.tokenize(text)  # WordPiece pieces of the vocabulary, never [UNK]
    assert vlm.tokenizer.unk_token not in pieces and set(pieces) <= set(vlm.tokenizer.get_vocab())
    ids = vlm.captioner().generate(vlm.pixels(images[0]), prompt_token_ids(vlm.tokenizer, ""), num_beams=2,
                                   max_length=6, min_length=2)[0]
    assert 2 <= len(ids) <= 6 and max(ids) < len(vlm.tokenizer)  # the tiny table has 512 rows, the tokenizer fewer
    assert text == vlm.tokenizer.decode(ids, skip_special_tokens=True).strip()
    both = vlm.caption(images, num_beams=1, max_length=4, min_length=0)
    assert isinstance(both, list) and len(both) == 2 and all(isinstance(c, str) for c in both)
    # the captioner shares the model's weights (no copy)
    cap, words = vlm.captioner(), vlm.model.text_encoder.embeddings.word_embeddings.weight
    assert cap.text_encoder.embeddings.word_embeddings.weight is words
    assert cap.mlm_head.predictions.decoder.weight is words


def test_answer_is_a_candidate(vlm, images) -> None:
    candidates = ["red", "blue", "green", "two", "three"]
    best = vlm.answer(images[0], "what colour is the circle?", candidates)
    assert best in candidates
    ranked = vlm.answer(images[0], "what colour is the circle?", candidates, k=3, return_scores=True)
    assert len(ranked) == 3 and ranked[0][0] == vlm.answer(images[0], "what colour is the circle?", candidates, k=3)
    probs = [p for _, p in ranked]
    assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ValueError, match="empty"):
        vlm.answer(images[0], "what?", [])


def test_answer_needs_the_decoder(syn, images) -> None:
    plain = load_model(config=TINY_CONFIG, overrides=[f"model.text.tokenizer={syn['vocab']}"])
    with pytest.raises(RuntimeError, match="vqa=True"):
        plain.answer(images[0], "what colour?", ["red"])


def test_load_from_output_folder_and_checkpoint_files(vlm, syn, images, tmp_path: Path) -> None:
    out = tmp_path / "run"
    save_checkpoint_weights(vlm.model, out)
    save_config(vlm.cfg, out)
    expected = vlm.similarity(images, TEXTS)
    again = load_model(out)  # model.safetensors + config.yaml; the VQA decoder found in the weights
    assert isinstance(again.model, X2VLMForVQA) and again.load_report.ok
    torch.testing.assert_close(again.similarity(images, TEXTS), expected)
    # a step checkpoint of a training run finds the run's config one folder up
    (out / "checkpoints").mkdir()
    torch.save({"model": vlm.model.state_dict(), "step": 7}, out / "checkpoints" / "step_7.pt")
    torch.testing.assert_close(load_model(out / "checkpoints" / "step_7.pt").similarity(images, TEXTS), expected)
    # an official-style .th ({'model': state_dict}) with the config named explicitly
    th = tmp_path / "weights.th"
    torch.save({"model": vlm.model.state_dict()}, th)
    official = load_model(th, config=TINY_CONFIG, overrides=[f"model.text.tokenizer={syn['vocab']}"], vqa=False)
    assert type(official.model).__name__ == "X2VLM"
    torch.testing.assert_close(official.similarity(images, TEXTS), expected)
    assert official.itm_score(images[0], TEXTS[0]) == pytest.approx(vlm.itm_score(images[0], TEXTS[0]), abs=1e-5)


def test_load_errors_name_the_file(syn, tmp_path: Path) -> None:
    th = tmp_path / "alone.th"
    torch.save({"model": {"not_a_key": torch.zeros(2)}}, th)
    with pytest.raises(ConfigError, match="pass the config"):
        load_model(th)
    with pytest.raises(CheckpointError, match="does not fit this model.*use the model config"):
        load_model(th, config=TINY_CONFIG, overrides=[f"model.text.tokenizer={syn['vocab']}"])
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "missing.th", config=TINY_CONFIG)
    with pytest.raises(ConfigError, match="no model given"):
        load_model()
    with pytest.raises(ConfigError, match="config file not found"):
        load_model(config=tmp_path / "nope.yaml")
    vlm = load_model(config=TINY_CONFIG, overrides=[f"model.text.tokenizer={syn['vocab']}"])
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        vlm.image_features(tmp_path / "missing.jpg")


def test_heads_a_checkpoint_lacks_are_refused_not_used(syn, images, tmp_path: Path, capsys) -> None:
    """A grounding checkpoint (box head only, as the official one) loads for inference; the methods whose heads
    it does not hold (ITC projections, ITM, MLM) refuse instead of answering with random weights."""
    from models.grounding import X2VLMForGrounding
    from utils.config import load_config
    torch.manual_seed(0)
    grounding = X2VLMForGrounding.from_config(load_config(TINY_CONFIG), load_weights=False)
    path = save_checkpoint_weights(grounding, tmp_path / "grounding")
    vlm = load_model(path, config=TINY_CONFIG, overrides=[f"model.text.tokenizer={syn['vocab']}"])
    summary = capsys.readouterr().out
    assert f"checkpoint {path}: " in summary and "fresh temp (1), mlm_head (6)" in summary and "unused none" in summary
    assert len(vlm.ground(images[0], "a red circle")) == 4
    for call, head in ((lambda: vlm.similarity(images, TEXTS), "vision_proj"),
                       (lambda: vlm.itm_score(images[0], TEXTS[0]), "itm_head"),
                       (lambda: vlm.caption(images[0]), "mlm_head")):
        with pytest.raises(RuntimeError, match=f"{head}, which .* holds no trained weights"):
            call()
