"""Reference outputs of every model on fixed inputs, kept in ``tests/data/reference_outputs.pt``, so that a change
meant to keep behaviour (a refactor) can show it did: ``tests/test_reference_outputs.py`` recomputes them.

The weights do not come from the random init (whose draws follow the order modules are built in, which a
refactor may change) but from the parameter *names*: each tensor is drawn from a generator seeded by its key.
Inputs are drawn from fixed seeds. Outputs are end results only (losses, logits, scores, boxes, generated ids),
never internal token tensors whose layout a refactor may change.

    python -m tests.reference_outputs          # rewrite the file (only when behaviour is meant to change)
"""
from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tests.conftest import CLS_ID, MASK_ID, ROOT, SEP_ID, random_batch
from utils.config import load_config

REFERENCE_FILE = ROOT / "tests" / "data" / "reference_outputs.pt"
ARCHITECTURES = {"x2vlm": "configs/models/tiny.yaml", "fiber": "configs/models/fiber_tiny.yaml"}
NUM_ANSWERS = 5


def config(architecture: str) -> dict:
    return load_config(ROOT / ARCHITECTURES[architecture], [f"model.num_answers={NUM_ANSWERS}"])


def name_seeded_weights(model: nn.Module, scale: float = 0.05) -> None:
    """Every floating tensor of ``model`` from a generator seeded by its state-dict key: norm weights
    ``1 + scale * N(0, 1)``, the rest ``scale * N(0, 1)``, the temperature 0.07 (tied tensors get the values of
    the first key that names them)."""
    seen: set[int] = set()
    with torch.no_grad():
        for key, tensor in model.state_dict(keep_vars=True).items():
            if not tensor.is_floating_point() or tensor.data_ptr() in seen:
                continue
            seen.add(tensor.data_ptr())
            g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
            values = torch.randn(tensor.shape, generator=g) * scale
            leaf = key.rsplit(".", 1)[-1]
            if key == "temp":
                values = torch.full_like(values, 0.07)
            elif leaf == "weight" and ("norm" in key.lower() or key.endswith("LayerNorm.weight")):
                values += 1.0
            tensor.copy_(values.to(tensor.dtype))


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _texts(cfg: dict, n: int, seed: int, length: int = 8) -> dict[str, torch.Tensor]:
    b = random_batch(cfg, n_images=1, n_texts=n, seq_len=length, generator=_generator(seed))
    return {"text_ids": b["text_ids"], "text_atts": b["text_atts"]}


def _images(cfg: dict, n: int, seed: int) -> torch.Tensor:
    res = cfg["model"]["image_res"]
    return torch.randn(n, 3, res, res, generator=_generator(seed))


def _video(cfg: dict, n: int, frames: int, seed: int) -> torch.Tensor:
    res = cfg["model"]["image_res"]
    return torch.randn(n, frames, 3, res, res, generator=_generator(seed))


def _floats(out: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {k: (v.detach().float() if isinstance(v, torch.Tensor) else torch.tensor(v)) for k, v in out.items()}


# ----------------------------------------------------------------------------------------------------- cases
def pretrain(cfg: dict) -> dict[str, torch.Tensor]:
    from models.x2vlm import X2VLM
    model = _build(X2VLM, cfg)
    batch = random_batch(cfg, n_images=2, n_texts=4, generator=_generator(1))
    batch["sample_seed"] = 7
    return _floats(model.forward_pretrain(batch))


def retrieval(cfg: dict) -> dict[str, torch.Tensor]:
    from models.retrieval import X2VLMForRetrieval
    model = _build(X2VLMForRetrieval, cfg)
    batch = {"image": _images(cfg, 3, 2), **_texts(cfg, 3, 3), "idx": torch.tensor([0, 1, 0]), "sample_seed": 5}
    out = _floats(model(batch))
    image_embeds, image_atts = model.encode_visual(batch["image"])
    text_embeds = model.encode_text(batch["text_ids"], batch["text_atts"])
    out["itc_sims"] = (model.image_features(image_embeds) @ model.text_features(text_embeds).t()).detach()
    out["itm_logits"] = model.itm_logits(image_embeds, image_atts, text_embeds, batch["text_atts"]).detach()
    video_embeds, _ = model.encode_visual(_video(cfg, 2, 3, 4))
    out["video_features"] = model.image_features(video_embeds).detach()
    return out


def grounding(cfg: dict) -> dict[str, torch.Tensor]:
    from models.grounding import X2VLMForGrounding
    model = _build(X2VLMForGrounding, cfg)
    centre = torch.rand(3, 2, generator=_generator(6)) * 0.5 + 0.25
    batch = {"image": _images(cfg, 3, 5), **_texts(cfg, 3, 6),
             "target_bbox": torch.cat([centre, torch.full((3, 2), 0.3)], dim=1)}
    out = _floats(model(batch))
    image_embeds, _ = model.encode_image(batch["image"])
    text_embeds = model.encode_text(batch["text_ids"], batch["text_atts"])
    out["boxes"] = model.predict_boxes(image_embeds, text_embeds, batch["text_atts"]).detach()
    return out


def nlvr(cfg: dict) -> dict[str, torch.Tensor]:
    from models.nlvr import X2VLMForNLVR
    model = _build(X2VLMForNLVR, cfg)
    batch = {"image0": _images(cfg, 2, 7), "image1": _images(cfg, 2, 8), **_texts(cfg, 2, 9),
             "label": torch.tensor([0, 1])}
    out = _floats(model(batch))
    out["logits"] = model.logits(batch["image0"], batch["image1"], batch["text_ids"], batch["text_atts"]).detach()
    return out


def vqa(cfg: dict) -> dict[str, torch.Tensor]:
    from models.vqa import X2VLMForVQA
    model = _build(X2VLMForVQA, cfg)
    answers = _texts(cfg, 3, 11, length=6)
    batch = {"image": _images(cfg, 2, 10), **_texts(cfg, 2, 12), "answer_ids": answers["text_ids"],
             "answer_atts": answers["text_atts"], "n_answers": torch.tensor([2, 1]),
             "weights": torch.tensor([0.6, 0.4, 1.0])}
    out = _floats(model(batch))
    ranked = model.answer(batch["image"], batch["text_ids"], batch["text_atts"], answers["text_ids"],
                          answers["text_atts"], k=2)
    out["answer_ids"], out["answer_probs"] = ranked[0].float(), ranked[1].float()
    return out


class _Tokenizer:
    """What :meth:`X2VLMForCaptioning.set_special_tokens` reads of a tokenizer."""

    cls_token_id, sep_token_id, mask_token_id = CLS_ID, SEP_ID, MASK_ID

    def __init__(self, size: int):
        self.size = size

    def __len__(self) -> int:
        return self.size


def captioning(cfg: dict) -> dict[str, torch.Tensor]:
    from models.captioning import X2VLMForCaptioning
    model = _build(X2VLMForCaptioning, cfg)
    vocab = cfg["model"]["text"]["config"]["vocab_size"]
    model.set_special_tokens(_Tokenizer(vocab))
    texts = _texts(cfg, 2, 14)
    positions = torch.tensor([[2, 3], [1, 4]])
    batch = {"image": _images(cfg, 2, 13), **texts, "position_ids": torch.arange(8)[None].expand(2, -1),
             "mlm_positions": positions, "mlm_labels": torch.gather(texts["text_ids"], 1, positions)}
    out = _floats(model(batch))
    generated = model.generate(batch["image"], [CLS_ID], num_beams=2, max_length=6, min_length=2)
    out["generated"] = torch.tensor([ids + [-1] * (6 - len(ids)) for ids in generated]).float()
    return out


def videoqa(cfg: dict) -> dict[str, torch.Tensor]:
    from models.videoqa import X2VLMForVideoQA
    model = _build(X2VLMForVideoQA, cfg)
    batch = {"video": _video(cfg, 2, 3, 15), **_texts(cfg, 2, 16), "label": torch.tensor([1, 3])}
    out = _floats(model(batch))
    out["logits"] = model.logits(batch["video"], batch["text_ids"], batch["text_atts"]).detach()
    return out


def _build(cls: type[nn.Module], cfg: dict) -> nn.Module:
    torch.manual_seed(0)
    model = cls.from_config(cfg)
    name_seeded_weights(model)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return model.eval()


CASES: dict[str, Callable[[dict], dict[str, torch.Tensor]]] = {
    f.__name__: f for f in (pretrain, retrieval, grounding, nlvr, vqa, captioning, videoqa)}


def compute(architecture: str, case: str) -> dict[str, torch.Tensor]:
    torch.set_num_threads(1)  # one summation order on every machine
    with torch.no_grad():
        return CASES[case](config(architecture))


def compute_all() -> dict[str, dict[str, torch.Tensor]]:
    return {f"{arch}/{case}": compute(arch, case) for arch in ARCHITECTURES for case in CASES}


if __name__ == "__main__":
    outputs = compute_all()
    Path(REFERENCE_FILE).parent.mkdir(parents=True, exist_ok=True)
    torch.save(outputs, REFERENCE_FILE)
    print(f"{REFERENCE_FILE}: {len(outputs)} cases, {sum(len(v) for v in outputs.values())} outputs")
