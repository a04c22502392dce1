"""Text-encoder swap (model.text.swap) and multilingual retrieval on generated bilingual captions.

A tiny XLM-R-style folder (unigram tokenizer built here over English + word-for-word German captions, random
weights; dataset.synthetic.write_tiny_xlmr) replaces the text side of an English tiny checkpoint. The swap's
report names exactly which keys came from the English checkpoint, which from the new text model and which were
re-initialised, for the full swap and the two ablations, and the weights are where it says; a bilingual
fine-tune through Retrieval.py then ranks held-out images well above chance in each language."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models.checkpoint import read_state_dict, save_checkpoint_weights
from models.retrieval import X2VLMForRetrieval
from utils.config import load_config

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "configs" / "models" / "tiny.yaml"
MLM_BIASES = {"mlm_head.predictions.bias", "mlm_head.predictions.decoder.bias"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from dataset.synthetic import generate, generate_multilingual
    files = generate(tmp_path_factory.mktemp("ml"), seed=0, n_images=48, n_videos=0)
    files |= generate_multilingual(files)
    torch.manual_seed(1)  # the "English checkpoint": a tiny X²-VLM with its own (BERT, WordPiece) text encoder
    english = X2VLMForRetrieval.from_config(load_config(TINY), load_weights=False)
    files["english"] = str(save_checkpoint_weights(english, Path(files["root"]) / "english"))
    return files


def swapped(data: dict, mode: str) -> X2VLMForRetrieval:
    cfg = load_config(TINY, [f"model.text.name_or_path={data['xlmr']}", f"model.text.swap.mode={mode}",
                             f"model.text.swap.checkpoint={data['english']}"])
    torch.manual_seed(2)
    return X2VLMForRetrieval.from_config(cfg)


def test_tokenizer_is_xlmr_style(data):
    from dataset import load_tokenizer
    tok = load_tokenizer(load_config(TINY, [f"model.text.name_or_path={data['xlmr']}"]))
    ids = tok(["ein rot kreis", "a red circle"])["input_ids"]
    assert [tok.convert_ids_to_tokens(i) for i in ids] == [["<s>", "\u2581ein", "\u2581rot", "\u2581kreis", "</s>"],
                                                          ["<s>", "\u2581a", "\u2581red", "\u2581circle", "</s>"]]
    assert (tok.pad_token_id, tok.cls_token_id, tok.sep_token_id) == (1, 0, 2)


@pytest.mark.parametrize("mode", ["full", "cross_attention_only", "embeddings_only"])
def test_swap_report_is_exact_and_weights_are_where_it_says(data, mode):
    model = swapped(data, mode)
    r = model.swap_report
    english = read_state_dict(data["english"])
    xlmr = read_state_dict(data["xlmr"])
    own = model.state_dict()
    keys = set(own)
    fusion_cross = {k for k in keys if k.startswith("fusion.") and ".crossattention." in k}
    fusion_rest = {k for k in keys if k.startswith("fusion.")} - fusion_cross
    mlm_biases = MLM_BIASES & keys  # the retrieval model has no MLM head (as the official one)
    tied = {"mlm_head.predictions.decoder.weight"} & keys
    text = {k for k in keys if k.startswith("text_encoder.")} | tied
    heads = {k for k in keys
             if k.startswith(("text_proj.", "itm_head.", "bbox_head.", "mlm_head.predictions.transform."))}
    if mode == "full":
        expect_fresh, expect_text = mlm_biases, text
    elif mode == "cross_attention_only":
        expect_fresh, expect_text = mlm_biases | heads, text | fusion_rest
    else:
        expect_fresh = mlm_biases
        expect_text = {"text_encoder.embeddings.word_embeddings.weight"} | tied
    assert set(r.reinitialised) == expect_fresh
    assert set(r.from_text_model) == expect_text
    assert set(r.loaded) == keys - expect_fresh - expect_text  # every key in exactly one list
    assert not (r.unexpected or r.mismatched)
    assert all(f"reinitialised: {k}" in str(r) for k in expect_fresh)
    for k in r.loaded:  # kept English weights
        torch.testing.assert_close(own[k], english[k], msg=k)
    for k in expect_text - {"mlm_head.predictions.decoder.weight"}:
        if k.startswith("text_encoder."):
            torch.testing.assert_close(own[k], xlmr[k.removeprefix("text_encoder.")], msg=k)
        else:  # fusion self-attention / FFN = the new model's top text layers (2 text, 2 fusion layers)
            torch.testing.assert_close(own[k], xlmr[k.replace("fusion.layer.", "encoder.layer.")], msg=k)
    # the new vocabulary throughout: embeddings, tied MLM decoder, and fresh parameters get optimizer.lr_mult
    assert own["text_encoder.embeddings.word_embeddings.weight"].shape[0] == xlmr[
        "embeddings.word_embeddings.weight"].shape[0]
    assert model.fresh_parameters == {n for n, _ in model.named_parameters()} & expect_fresh
    if mode == "embeddings_only":  # the English text layers stay, in the English (BERT) architecture
        assert model.text_encoder.config.model_type == "bert"
        torch.testing.assert_close(own["text_encoder.encoder.layer.1.output.dense.weight"],
                                   english["text_encoder.encoder.layer.1.output.dense.weight"])
    else:
        assert model.text_encoder.config.model_type == "xlm-roberta"


def test_cross_attention_only_swap_keeps_fibers_cross_attention(data, tmp_path):
    """FIBER has no fusion layers of its own: ``cross_attention_only`` keeps every gated cross-attention (and the
    vision side) of the English FIBER checkpoint; the text layers they sit in are the new model's."""
    torch.manual_seed(3)
    english = X2VLMForRetrieval.from_config(load_config(TINY, ["model.architecture=fiber", "model.fiber.layers=1"]),
                                         load_weights=False)
    with torch.no_grad():
        for p in english.fusion.parameters():
            p.normal_()  # gates away from their 0 init, so a kept value is told apart from a fresh one
    path = save_checkpoint_weights(english, tmp_path / "english_fiber")
    cfg = load_config(TINY, ["model.architecture=fiber", "model.fiber.layers=1",
                             f"model.text.name_or_path={data['xlmr']}", "model.text.swap.mode=cross_attention_only",
                             f"model.text.swap.checkpoint={path}"])
    model = X2VLMForRetrieval.from_config(cfg)
    r, own, source = model.swap_report, model.state_dict(), english.state_dict()
    fusion = {k for k in own if k.startswith("fusion.")}
    assert fusion and fusion <= set(r.loaded)
    for k in fusion | {k for k in own if k.startswith("vision_encoder.")} - {k for k in own if "position_index" in k}:
        torch.testing.assert_close(own[k], source[k], msg=k)
    assert not (r.unexpected or r.mismatched)
    assert {k for k in own if k.startswith("text_encoder.")} <= set(r.from_text_model)
    assert set(r.reinitialised) == {k for k in own if k.startswith(("text_proj.", "itm_head."))}


def test_swap_needs_the_english_checkpoint(data):
    cfg = load_config(TINY, [f"model.text.name_or_path={data['xlmr']}", "model.text.swap.mode=full"])
    with pytest.raises(ValueError, match="model.text.swap.checkpoint"):
        X2VLMForRetrieval.from_config(cfg)
    with pytest.raises(ValueError, match="swap.mode must be one of"):
        X2VLMForRetrieval.from_config(load_config(TINY, ["model.text.swap.mode=half"]))


def test_bilingual_finetune_ranks_both_languages_above_chance(data, tmp_path):
    import Retrieval
    torch.manual_seed(0)
    langs = f"{{en: {data['ml_test_en']}, de: {data['ml_test_de']}}}"
    r = Retrieval.main(["--config", str(ROOT / "configs" / "finetune" / "retrieval_multilingual_demo.yaml"),
                        "--output_dir", str(tmp_path), "--device", "cpu",
                        "--override", f"data.root={data['root']}",
                        "--override", f"model.text.name_or_path={data['xlmr']}",
                        "--override", f"model.text.swap.checkpoint={data['english']}",
                        "--override", f"data.finetune.train_file=[{data['ml_train']}]",
                        "--override", f"data.finetune.test_file_languages={langs}",
                        "--override", "train.epochs=0", "--override", "train.steps=200",
                        "--override", "eval.k_test=4"])
    # measured (seed 0, 200 steps): ITC r_mean 72.2 (en) / 75.5 (de), ITM re-ranked 65.3 / 62.0, chance 40.4;
    # ITC R@1 image→text 41.7 / 58.3 and text→image 44.4 / 47.2 against 8.3
    for lang in ("en", "de"):  # 12 held-out images x 3 captions per language
        assert r[f"test_{lang}/itc_txt_r1"] >= 3 * r[f"test_{lang}/chance_txt_r1"], lang
        assert r[f"test_{lang}/itc_img_r1"] >= 3 * r[f"test_{lang}/chance_img_r1"], lang
        assert r[f"test_{lang}/itc_r_mean"] >= r[f"test_{lang}/chance_r_mean"] + 20, lang
        assert r[f"test_{lang}/r_mean"] >= r[f"test_{lang}/chance_r_mean"] + 10, lang
    assert r["languages/r_mean"] == pytest.approx((r["test_en/r_mean"] + r["test_de/r_mean"]) / 2)
    assert json.loads((tmp_path / "retrieval.json").read_text()) == pytest.approx(r)


@pytest.mark.parametrize("name, languages", [("retrieval_multi30k", {"en", "de", "fr", "cs"}),
                                             ("retrieval_mscoco_multilingual", {"en", "ja", "zh"})])
def test_recipe_configs(name, languages):
    cfg = load_config(ROOT / "configs" / "finetune" / f"{name}.yaml")  # strict: unknown keys raise
    text = cfg["model"]["text"]
    assert text["swap"]["mode"] == "full" and text["swap"]["checkpoint"].endswith(".th")
    assert "xlm-roberta" in text["name_or_path"] and text["tokenizer"] is None
    assert text["config"]["num_hidden_layers"] == 12  # the English checkpoint's text layers (official 12 + 6)
    assert set(cfg["data"]["finetune"]["test_file_languages"]) == languages
