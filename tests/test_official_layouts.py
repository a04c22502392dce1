"""Every official X²-VLM key layout (tests/data/official_layouts/, copied from the project's shared spec: the key
names and shapes the official code saves) loads into the model the matching task script builds with zero
missing / unexpected / shape-mismatched keys, every tensor landing under the name written out below
independently of models/official_layout.py."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from models.captioning import X2VLMForCaptioning
from models.checkpoint import check_fits, load_model_checkpoint
from models.grounding import X2VLMForGrounding
from models.nlvr import X2VLMForNLVR
from models.retrieval import X2VLMForRetrieval
from models.videoqa import X2VLMForVideoQA
from models.vqa import X2VLMForVQA
from models.x2vlm import X2VLM
from utils.config import load_config

ROOT = Path(__file__).resolve().parents[1]
LAYOUTS = Path(__file__).resolve().parent / "data" / "official_layouts"
BASE = ROOT / "configs" / "models" / "x2vlm_base.yaml"
LARGE = ROOT / "configs" / "models" / "x2vlm_large.yaml"

#: layout → (task model class, model config, overrides), as the task scripts build them
CASES = {
    "base": (X2VLM, BASE, []),
    "base_pretrain_video": (X2VLM, BASE, ["model.max_frames=3"]),
    "large_pretrain": (X2VLM, LARGE, []),
    "retrieval": (X2VLMForRetrieval, BASE, []),
    "nlvr": (X2VLMForNLVR, BASE, []),
    "grounding": (X2VLMForGrounding, BASE, []),
    "videoqa": (X2VLMForVideoQA, BASE, ["model.max_frames=5", "model.num_answers=7"]),
    "captioning": (X2VLMForCaptioning, BASE, []),
    "vqa": (X2VLMForVQA, BASE, []),
}
N_TEXT = 12  # every official layout here: 12 text layers, then the 6 fusion layers (with crossattention)


def read_layout(name: str) -> list[tuple[str, tuple[int, ...]]]:
    path = LAYOUTS / f"official_x2vlm_{name}_keys.tsv"
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            key, shape = line.split("\t")
            rows.append((key, tuple(ast.literal_eval(shape))))
    return rows


def expected_name(key: str) -> str | None:
    """Our name of an official key, written out by hand (None: a buffer every model derives)."""
    if key.endswith(("relative_position_index", "position_ids")) or key == "crit_mask_lm_smoothed.one_hot":
        return None
    for prefix in ("text_encoder.bert.encoder.layer.", "text_encoder.encoder.layer."):
        if key.startswith(prefix):
            i, rest = key[len(prefix):].split(".", 1)
            i = int(i)
            return f"text_encoder.encoder.layer.{i}.{rest}" if i < N_TEXT else f"fusion.layer.{i - N_TEXT}.{rest}"
    if key.startswith("text_encoder.bert."):
        return "text_encoder." + key[len("text_encoder.bert."):]
    if key.startswith("text_encoder.cls."):
        return "mlm_head." + key[len("text_encoder.cls."):]
    return key


def official_state(rows) -> dict[str, torch.Tensor]:
    """Key i holds the constant i + 1 (stored as one number expanded to the shape: small files), tied as the
    official models tie them (MLM decoders to their word embeddings)."""
    state = {}
    for i, (key, shape) in enumerate(rows):
        dtype = torch.long if key.endswith(("relative_position_index", "position_ids")) else torch.float32
        state[key] = torch.tensor([i + 1], dtype=dtype).reshape((1,) * len(shape)).expand(shape)
    for owner in ("text_encoder", "text_decoder"):
        for wrap in ("bert.", ""):
            words = f"{owner}.{wrap}embeddings.word_embeddings.weight"
            if words in state and f"{owner}.cls.predictions.decoder.weight" in state:
                state[f"{owner}.cls.predictions.decoder.weight"] = state[words]
                state[f"{owner}.cls.predictions.decoder.bias"] = state[f"{owner}.cls.predictions.bias"]
    return state


def build(cls, config: Path, overrides: list[str]):
    """The task model without initialising its weights (built on ``meta``, then uninitialised memory)."""
    cfg = load_config(config, overrides)
    with torch.device("meta"):
        model = cls(cfg["model"], load_text_weights=False)
    model.to_empty(device="cpu")
    model.tie_weights()
    return model.eval()


@pytest.mark.parametrize("layout", sorted(CASES))
def test_official_layout_loads_into_its_task_model(layout: str, tmp_path: Path) -> None:
    cls, config, overrides = CASES[layout]
    rows = read_layout(layout)
    state = official_state(rows)
    path = tmp_path / f"{layout}.th"
    torch.save({"model": state}, path)
    model = build(cls, config, overrides)
    report = load_model_checkpoint(model, path)
    assert report.missing == [], report.missing[:5]
    assert report.unexpected == [], report.unexpected[:5]
    assert report.mismatched == [], report.mismatched[:5]
    check_fits(report, model.architecture)  # no error
    derived = [k for k, _ in rows if expected_name(k) is None]
    assert len(report.derived) == len(derived)
    if layout == "videoqa":  # official rule: the first frames of the temporal embedding are copied
        assert list(map(str, report.resized)) == ["absolute_frame_pos_embed: (1, 3, 1, 768) -> (1, 5, 1, 768)"]
    else:
        assert report.resized == []
    own = model.state_dict()
    assert len(report.loaded) == len({expected_name(k) for k, _ in rows} - {None})
    for key, _ in rows:
        name = expected_name(key)
        if name is None:
            continue
        value = own[name]
        if key == "absolute_frame_pos_embed" and layout == "videoqa":
            value = value[:, :3]
        tied = {"text_encoder.cls.predictions.decoder.weight": "text_encoder.bert.embeddings.word_embeddings.weight",
                "text_decoder.cls.predictions.decoder.weight": "text_decoder.bert.embeddings.word_embeddings.weight"}
        source = tied.get(key, key)
        if source.endswith("predictions.decoder.bias"):
            source = source.replace("decoder.bias", "bias")
        expected = float(state[source].reshape(-1)[0])
        assert torch.all(value == expected), f"{key} -> {name}"


def test_fine_tuned_layout_is_not_split_by_the_model_depth(tmp_path: Path) -> None:
    """Where the fusion starts is read from the checkpoint (its first layer with a cross-attention): a retrieval
    checkpoint into a model with 6 text layers reports layers 6..11 as not fitting instead of loading them as
    fusion layers."""
    state = official_state(read_layout("retrieval"))
    path = tmp_path / "retrieval.th"
    torch.save({"model": state}, path)
    model = build(X2VLMForRetrieval, BASE, ["model.text.config.num_hidden_layers=6"])
    report = load_model_checkpoint(model, path)
    assert {k.split(".")[3] for k in report.unexpected} == {str(i) for i in range(6, 12)}
    assert not any(k.startswith("fusion.") for k in report.missing)
