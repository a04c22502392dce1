"""Text encoder: parity with transformers' BertModel, local HF folders, fusion init, tokenizers, RoBERTa."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel

from dataset.text import build_tokenizer
from models.text import build_text_encoder, text_config
from models.x2vlm import X2VLM
from utils.config import load_config

TINY_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "models" / "tiny.yaml"
WORDS = ["the", "a", "dog", "cat", "runs", "sits", "on", "red", "blue", "mat", "grass", "##s", "big", "small"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]


def padded_ids(vocab_size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids ``(3, 10)`` and an attention mask with padding in two rows."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab_size, (3, 10), generator=g)
    ids[:, 0] = 2
    atts = torch.ones_like(ids)
    atts[1, 6:] = 0
    atts[2, 3:] = 0
    ids[atts == 0] = 0
    return ids, atts


def write_vocab(folder: Path) -> Path:
    """A small WordPiece ``vocab.txt`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return path


def save_hf_bert(folder: Path, layers: int = 3) -> BertModel:
    """Save a tiny random BertModel (no pooler) and its tokenizer to ``folder``; return the model (eval)."""
    vocab = write_vocab(folder)
    torch.manual_seed(123)
    bert = BertModel(BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=layers,
                                num_attention_heads=4, intermediate_size=64, max_position_embeddings=32),
                     add_pooling_layer=False).eval()
    with torch.no_grad():  # non-trivial LayerNorm / bias values
        for name, p in bert.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    bert.save_pretrained(folder)
    tokenizer = build_tokenizer({"tokenizer": str(vocab)})
    assert tokenizer.vocab_size == len(VOCAB)
    tokenizer.save_pretrained(folder)
    return bert


def hf_folder_cfg(folder: Path, *overrides: str) -> dict:
    """Tiny config whose text encoder comes from the local HF ``folder``."""
    return load_config(TINY_CONFIG, [f"model.text.name_or_path={folder}", "model.text.config={}", *overrides])


def test_text_parity_with_transformers_bert(tiny_model: X2VLM, tiny_cfg: dict) -> None:
    fields = {k: v for k, v in tiny_cfg["model"]["text"]["config"].items() if k != "model_type"}
    ref_cfg = BertConfig(**fields)
    ref_cfg._attn_implementation = "eager"  # an independent attention path from our SDPA one
    ref = BertModel(ref_cfg, add_pooling_layer=False).eval()
    ref.load_state_dict(tiny_model.text_encoder.state_dict(), strict=True)
    assert tiny_model.text_encoder.pooler is None
    ids, atts = padded_ids(fields["vocab_size"])
    with torch.no_grad():
        ours = tiny_model.encode_text(ids, atts).final
        theirs = ref(input_ids=ids, attention_mask=atts).last_hidden_state
    assert ours.shape == (3, 10, fields["hidden_size"])
    assert (ours - theirs).abs().max() < 1e-5
    # padding is really masked: changing padded ids leaves the valid positions unchanged
    ids2 = ids.clone()
    ids2[atts == 0] = 7
    with torch.no_grad():
        ours2 = tiny_model.encode_text(ids2, atts).final
    valid = atts.bool()
    assert (ours2[valid] - ours[valid]).abs().max() < 1e-5


def test_local_hf_folder_loads_weights(tmp_path: Path) -> None:
    folder = tmp_path / "bert"
    saved = save_hf_bert(folder)
    model = X2VLM.from_config(hf_folder_cfg(folder)).eval()
    assert model.text_width == 32 and model.text_encoder.config.num_hidden_layers == 3
    ids, atts = padded_ids(len(VOCAB))
    with torch.no_grad():
        ours = model.encode_text(ids, atts).final
        theirs = saved(input_ids=ids, attention_mask=atts).last_hidden_state
    assert (ours - theirs).abs().max() < 1e-5
    # the MLM decoder is tied to the loaded word embeddings
    assert torch.equal(model.mlm_head.predictions.decoder.weight, saved.embeddings.word_embeddings.weight)
    # without load_weights the same config gives a fresh (different) encoder
    fresh = X2VLM.from_config(hf_folder_cfg(folder), load_weights=False).eval()
    with torch.no_grad():
        assert (fresh.encode_text(ids, atts).final - theirs).abs().max() > 1e-3


def test_config_fields_override_folder_config(tmp_path: Path) -> None:
    folder = tmp_path / "bert"
    save_hf_bert(folder)
    cfg = text_config({"name_or_path": str(folder), "config": {"hidden_dropout_prob": 0.0}})
    assert cfg.hidden_dropout_prob == 0.0 and cfg.hidden_size == 32


def test_init_fusion_from_text_copies_top_layers(tmp_path: Path) -> None:
    folder = tmp_path / "bert"
    save_hf_bert(folder, layers=3)
    model = X2VLM.from_config(hf_folder_cfg(folder))
    text_layers, fusion_layers = model.text_encoder.encoder.layer, model.fusion.layer
    assert len(fusion_layers) == 2
    copied_keys = 0
    for i, fl in enumerate(fusion_layers):
        src = text_layers[1 + i].state_dict()  # offset = 3 text layers - 2 fusion layers
        for key, value in fl.state_dict().items():
            if key.startswith("crossattention."):
                twin = src[key.replace("crossattention.", "attention.", 1)]
                if twin.shape == value.shape and twin.ndim == 2:
                    assert not torch.equal(value, twin), key
                continue
            assert torch.equal(value, src[key]), f"fusion layer {i} {key}"
            copied_keys += 1
        # and not from the wrong text layer
        assert not torch.equal(fl.attention.self.query.weight, text_layers[i].attention.self.query.weight)
    assert copied_keys == 2 * 16  # q/k/v, attention output, intermediate, output (weights + biases + LNs)
    copied = model.init_fusion_from_text()
    assert len(copied) == copied_keys and "fusion.layer.1.attention.self.query.weight" in copied
    assert not any("crossattention" in k for k in copied)
    # lr_mult goes to what no pretrained weight reached: cross-attention and the new heads, not copied layers
    fresh = model.fresh_parameters
    assert "fusion.layer.0.crossattention.self.query.weight" in fresh and "itm_head.0.weight" in fresh
    assert "temp" in fresh and "vision_proj.weight" in fresh
    assert "fusion.layer.0.attention.self.query.weight" not in fresh
    assert not any(n.startswith("text_encoder.") for n in fresh)


def test_init_from_text_false_keeps_fresh_fusion(tmp_path: Path) -> None:
    folder = tmp_path / "bert"
    save_hf_bert(folder)
    model = X2VLM.from_config(hf_folder_cfg(folder, "model.fusion.init_from_text=false"))
    for i, fl in enumerate(model.fusion.layer):
        assert not torch.equal(fl.attention.self.query.weight,
                               model.text_encoder.encoder.layer[1 + i].attention.self.query.weight)


def test_build_tokenizer_from_vocab_file_and_folder(tmp_path: Path) -> None:
    folder = tmp_path / "bert"
    save_hf_bert(folder)
    from_file = build_tokenizer({"tokenizer": str(folder / "vocab.txt")})
    from_folder = build_tokenizer({"name_or_path": str(folder)})
    text = "The big Dogs sit"
    expected = [VOCAB.index(t) for t in ["[CLS]", "the", "big", "dog", "##s", "[UNK]", "[SEP]"]]
    assert from_file(text)["input_ids"] == expected
    assert from_folder(text)["input_ids"] == expected
    assert from_file.pad_token_id == 0 and from_file.mask_token_id == VOCAB.index("[MASK]")


def test_build_tokenizer_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tokenizer"):
        build_tokenizer({"name_or_path": None, "tokenizer": None})
    missing = tmp_path / "no_such_vocab"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        build_tokenizer({"tokenizer": str(missing)})


def test_missing_text_folder_raises(tmp_path: Path) -> None:
    missing = tmp_path / "does" / "not" / "exist"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        build_text_encoder({"name_or_path": str(missing), "config": {}})
    with pytest.raises(FileNotFoundError, match=str(missing)):
        X2VLM.from_config(hf_folder_cfg(missing))


def test_roberta_text_encoder_runs_through_x2vlm(make_batch: Callable[..., dict]) -> None:
    roberta = ("{model_type: roberta, vocab_size: 100, hidden_size: 32, num_hidden_layers: 2, "
               "num_attention_heads: 4, intermediate_size: 64, max_position_embeddings: 40, type_vocab_size: 1, "
               "pad_token_id: 1, hidden_dropout_prob: 0.0, attention_probs_dropout_prob: 0.0}")
    cfg = load_config(TINY_CONFIG, [f"model.text.config={roberta}"])
    torch.manual_seed(0)
    model = X2VLM.from_config(cfg)
    assert type(model.text_encoder).__name__ == "RobertaModel"
    assert model.fusion.layer[0].attention.self.query.in_features == 32
    assert model.mlm_head.predictions.decoder.weight is model.text_encoder.get_input_embeddings().weight
    batch = make_batch(cfg=cfg, n_images=2, n_texts=3)
    assert int(batch["text_ids"].max()) < 100
    out = model.forward_pretrain(batch)
    assert {"loss_itc", "loss_itm", "loss_mlm", "loss_bbox", "loss_giou"} <= set(out)
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert model.text_encoder.embeddings.word_embeddings.weight.grad is not None
