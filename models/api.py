"""Python inference API: one object that embeds, scores, grounds, captions and answers.

    from models import load_model

    vlm = load_model("x2vlm_base_4m.th", config="configs/models/x2vlm_base.yaml",
                     overrides=["model.text.tokenizer=/path/to/bert-base-uncased"])
    vlm.similarity("photo.jpg", ["a dog on a sofa", "a red car"])     # ITC cosine, (1, 2)
    vlm.itm_score("photo.jpg", "a dog on a sofa")                     # match probability in [0, 1]
    vlm.ground("photo.jpg", "the dog")                                # (x0, y0, x1, y1) in pixels
    vlm.caption("photo.jpg")                                          # MLM-style generation
    vlm.answer("photo.jpg", "what animal is this?", ["dog", "cat"])   # needs a VQA decoder (vqa=True)

Images are PIL images or paths; they go through the evaluation transform of ``dataset/`` (resize to
``model.image_res``, normalise), texts through the dataset cleaning (``pre_caption`` / ``pre_question``) and
the model's tokenizer. Every method runs under ``torch.no_grad`` with the model in eval mode; this module is
the one place the inference logic lives (``scripts/demo.py`` is a command line over it).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import torch
from PIL import Image

from dataset import image_transform, load_tokenizer
from dataset.io import load_image, to_rgb
from dataset.text import TEST_QUESTION_WORDS, pre_caption, pre_question
from models.checkpoint import WEIGHTS_NAME, CheckpointError, LoadReport, check_fits
from models.tokens import Tokens
from models.vqa import X2VLMForVQA
from models.x2vlm import X2VLM
from utils.box_ops import cxcywh_to_pixels_xyxy
from utils.config import RESOLVED_NAME, ConfigError, load_config

if TYPE_CHECKING:
    from models.captioning import X2VLMForCaptioning

ViewT = TypeVar("ViewT", bound=X2VLM)

log = logging.getLogger("x2vlm.api")

ImageInput = str | os.PathLike | Image.Image
Texts = str | Sequence[str]


def box_pixels(box_cxcywh: Sequence[float], width: int, height: int) -> list[float]:
    """Normalised (cx, cy, w, h) → pixel ``[x0, y0, x1, y1]`` in an image of ``width`` × ``height``."""
    return cxcywh_to_pixels_xyxy(torch.tensor([float(v) for v in box_cxcywh]), width, height).tolist()


def _as_list(value, kind: type | tuple[type, ...]) -> tuple[list, bool]:
    """``(items, single)``: a lone item becomes a one-element list."""
    if isinstance(value, kind):
        return [value], True
    items = list(value)
    if not items:
        raise ValueError("empty input list")
    return items, False


def _shared_view(model: X2VLM, cls: type[ViewT]) -> ViewT:
    """An instance of ``cls`` (built on the meta device, so nothing is allocated) whose parameters and
    buffers are ``model``'s own objects, name for name: same weights, same memory, ties kept. ``cls`` must
    hold a subset of ``model``'s parameter names (e.g. the captioning model, which drops heads)."""
    with torch.device("meta"):
        view = cls(model.cfg, dict(model.loss_cfg), load_text_weights=False)
    params = dict(model.named_parameters(remove_duplicate=False))
    buffers = dict(model.named_buffers(remove_duplicate=False))
    for name, _ in list(view.named_parameters(remove_duplicate=False)):
        owner, _, attr = name.rpartition(".")
        setattr(view.get_submodule(owner) if owner else view, attr, params[name])
    for name, _ in list(view.named_buffers(remove_duplicate=False)):
        owner, _, attr = name.rpartition(".")
        (view.get_submodule(owner) if owner else view)._buffers[attr] = buffers[name]
    return view.eval()


class X2VLMInference:
    """A loaded model, its tokenizer and config. Build with :func:`load_model`.

    Single inputs give scalars / strings / one box; lists give tensors and lists (see each method)."""

    def __init__(self, model: X2VLM, tokenizer, cfg: dict, load_report: LoadReport | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.load_report = load_report
        # heads the checkpoint did not have (fresh init): a method that needs one refuses instead of answering
        self.untrained = {k.split(".", 1)[0] for k in load_report.fresh} if load_report is not None else set()
        self._transform = image_transform(cfg, train=False)
        self._captioner: X2VLMForCaptioning | None = None

    # ------------------------------------------------------------------ inputs
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> "X2VLMInference":
        """Move the model (and any view of it) to ``device``; returns self."""
        self.model.to(device)
        self._captioner = None
        return self

    def open_image(self, image: ImageInput) -> Image.Image:
        """An upright RGB PIL image from a PIL image or a path (a path that cannot be read raises, naming it)."""
        if isinstance(image, Image.Image):
            return to_rgb(image)  # EXIF orientation and 16-bit / alpha modes, as files are read
        if isinstance(image, (str, os.PathLike)):
            path = Path(image)
            if not path.is_file():
                raise FileNotFoundError(f"image file not found: {path}")
            return load_image(str(path))
        raise TypeError(f"an image must be a PIL image or a path, got {type(image).__name__}")

    def pixels(self, images: ImageInput | Sequence[ImageInput]) -> torch.Tensor:
        """``(B, 3, R, R)`` model inputs (evaluation transform) on the model's device and dtype."""
        items, _ = _as_list(images, (str, os.PathLike, Image.Image))
        batch = torch.stack([self._transform(self.open_image(im))[0] for im in items])
        return batch.to(self.device, next(self.model.parameters()).dtype)

    def tokens(self, texts: Texts, question: bool = False, max_tokens: int | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids, atts)`` of the cleaned texts (``pre_question`` when ``question``), padded to the longest."""
        items, _ = _as_list(texts, str)
        d = self.cfg["data"]
        cleaned = [pre_question(t, TEST_QUESTION_WORDS) if question else pre_caption(t, d["max_words"]) for t in items]
        enc = self.tokenizer(cleaned, padding="longest", truncation=True,
                             max_length=max_tokens or d["max_tokens"], return_tensors="pt")
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)

    def _require(self, what: str, *modules: str) -> None:
        """Raise when a module ``what`` needs is missing, or was not in the checkpoint (random weights)."""
        absent = [m for m in modules if not hasattr(self.model, m)]
        untrained = [m for m in modules if m in self.untrained]
        if absent or untrained:
            source = self.load_report.source if self.load_report is not None else "this model"
            raise RuntimeError(f"{what} needs {', '.join(absent + untrained)}, which {source} "
                               f"{'does not have' if absent else 'holds no trained weights for'}: load a checkpoint "
                               f"of a model with that head (a pretraining checkpoint has every head but the VQA "
                               f"decoder)")

    # ------------------------------------------------------------------ embeddings and scores
    @torch.no_grad()
    def _image_tokens(self, images) -> tuple[Tokens, torch.Tensor]:
        return self.model.encode_image(self.pixels(images))

    @torch.no_grad()
    def _text_tokens(self, texts) -> tuple[Tokens, torch.Tensor]:
        ids, atts = self.tokens(texts)
        return self.model.encode_text(ids, atts), atts

    @torch.no_grad()
    def image_features(self, images: ImageInput | Sequence[ImageInput]) -> torch.Tensor:
        """L2-normalised ITC image features: ``(D,)`` for one image, ``(B, D)`` for a list (the model's
        :meth:`~models.x2vlm.X2VLM.image_features` of its ``encode_image`` tokens)."""
        self._require("image_features", "vision_proj")
        feats = self.model.image_features(self._image_tokens(images)[0]).float()
        return feats[0] if _as_list(images, (str, os.PathLike, Image.Image))[1] else feats

    @torch.no_grad()
    def text_features(self, texts: Texts) -> torch.Tensor:
        """L2-normalised ITC text features: ``(D,)`` for one text, ``(T, D)`` for a list."""
        self._require("text_features", "text_proj")
        feats = self.model.text_features(self._text_tokens(texts)[0]).float()
        return feats[0] if isinstance(texts, str) else feats

    @torch.no_grad()
    def similarity(self, images: ImageInput | Sequence[ImageInput], texts: Texts) -> torch.Tensor:
        """ITC cosine similarity ``(B, T)`` of every image with every text (in [-1, 1])."""
        image = self.image_features(images).reshape(-1, self.model.vision_proj.out_features)
        text = self.text_features(texts).reshape(-1, self.model.text_proj.out_features)
        return image @ text.t()

    @torch.no_grad()
    def itm_score(self, images: ImageInput | Sequence[ImageInput], texts: Texts) -> torch.Tensor | float:
        """ITM match probability (softmax of the match head) of every image with every text: ``(B, T)``,
        or a float for one image and one text. Each image is fused once for all its texts."""
        self._require("itm_score", "itm_head")
        image_embeds, image_atts = self._image_tokens(images)
        text_embeds, text_atts = self._text_tokens(texts)
        b, t = image_embeds.shape[0], text_embeds.shape[0]
        index = torch.arange(b, device=self.device).repeat_interleave(t)
        logits = self.model.itm_logits(image_embeds, image_atts, text_embeds.map(lambda t: t.repeat(b, 1, 1)),
                                       text_atts.repeat(b, 1),
                                       image_index=index)
        probs = logits.float().softmax(-1)[:, 1].view(b, t)
        return float(probs[0, 0]) if b == t == 1 and isinstance(texts, str) else probs

    @torch.no_grad()
    def ground(self, image: ImageInput, text: str) -> tuple[float, float, float, float]:
        """The box the text refers to, ``(x0, y0, x1, y1)`` in pixels of the original image (bbox head on the
        fusion [CLS] of the whole image and the text)."""
        self._require("ground", "bbox_head")
        pil = self.open_image(image)
        image_embeds, _ = self._image_tokens([pil])
        text_embeds, text_atts = self._text_tokens([text])
        box = self.model.predict_boxes(image_embeds, text_embeds, text_atts)[0].float().tolist()
        x0, y0, x1, y1 = box_pixels(box, *pil.size)
        w, h = pil.size
        return (min(max(x0, 0.0), w), min(max(y0, 0.0), h), min(max(x1, 0.0), w), min(max(y1, 0.0), h))

    # ------------------------------------------------------------------ generation
    def captioner(self) -> X2VLMForCaptioning:
        """The captioning model (models/captioning.py) sharing this model's weights."""
        if self._captioner is None:
            from models.captioning import X2VLMForCaptioning
            view = _shared_view(self.model, X2VLMForCaptioning)
            view.set_special_tokens(self.tokenizer)
            self._captioner = view
        return self._captioner

    @torch.no_grad()
    def caption(self, images: ImageInput | Sequence[ImageInput], num_beams: int | None = None,
                max_length: int | None = None, min_length: int | None = None) -> str | list[str]:
        """Generated caption(s) (beam search as ``Captioning.py``; settings default to the ``caption`` config
        section, the prompt to ``data.finetune.prompt``, which is not repeated in the output)."""
        self._require("caption", "mlm_head")
        from dataset.captions import prompt_token_ids
        s = self.cfg["caption"]
        prompt = prompt_token_ids(self.tokenizer, self.cfg["data"]["finetune"]["prompt"])
        ids = self.captioner().generate(
            self.pixels(images), prompt, num_beams=num_beams or s["num_beams"],
            max_length=max_length or s["max_length"],
            min_length=s["min_length"] if min_length is None else min_length,
            length_penalty=s["length_penalty"], no_repeat_ngram=s["no_repeat_ngram"])
        out = [self.tokenizer.decode(c, skip_special_tokens=True).strip() for c in ids]
        return out[0] if _as_list(images, (str, os.PathLike, Image.Image))[1] else out

    @torch.no_grad()
    def answer(self, image: ImageInput, question: str, candidates: Sequence[str], k: int | None = None,
               return_scores: bool = False) -> str | list[tuple[str, float]]:
        """The best of ``candidates`` for ``question`` (the VQA decoder's ranking, as ``VQA.py``: the ``k``
        candidates with the likeliest first token are scored in full; ``k`` defaults to ``eval.k_test``).
        With ``return_scores``: ``[(answer, probability)]`` of the ``k`` ranked, best first."""
        if not isinstance(self.model, X2VLMForVQA):
            raise RuntimeError("answer() needs the VQA answer decoder: load with load_model(..., vqa=True) "
                               "(e.g. the fine-tuned x2vlm_base_1b_vqa.th)")
        candidates = [str(c) for c in candidates]
        if not candidates:
            raise ValueError("answer(): the candidate answer list is empty")
        q_ids, q_atts = self.tokens([question], question=True,
                                    max_tokens=self.model.text_encoder.config.max_position_embeddings - 2)
        enc = self.tokenizer(candidates, padding="longest", return_tensors="pt")
        k = int(k or self.cfg["eval"]["k_test"])
        ranked, probs = self.model.answer(self.pixels([image]), q_ids, q_atts, enc["input_ids"].to(self.device),
                                          enc["attention_mask"].to(self.device), k)
        if return_scores:
            return [(candidates[i], float(p)) for i, p in zip(ranked[0].tolist(), probs[0].tolist(), strict=True)]
        return candidates[int(ranked[0, 0])]


# ---------------------------------------------------------------------------------------------- loading
def _checkpoint_has_decoder(path: Path) -> bool:
    """Whether a checkpoint file holds VQA answer-decoder weights (read lazily where the format allows)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open
            with safe_open(str(path), "pt") as f:
                return any(k.startswith("text_decoder.") for k in f.keys())
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # unreadable here: the real load reports it properly
        return False
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    return isinstance(obj, dict) and any(str(k).startswith("text_decoder.") for k in obj)


class _AnsweringX2VLM(X2VLMForVQA):
    """The VQA model with every pretraining head too, so that one loaded model serves every method (heads a
    checkpoint lacks are refused by the methods that need them: :meth:`X2VLMInference._require`)."""

    heads = X2VLM.heads


def resolve_source(source: str | os.PathLike | None, config: str | os.PathLike | None
                   ) -> tuple[Path | None, Path]:
    """``(weights file or None, config file)`` for a model source:

    * a folder we wrote (``model.safetensors`` + ``config.yaml``; ``config`` may replace the latter);
    * a checkpoint file (official ``.th``, ``.pth``, ``.pt``, ``.safetensors``; a step checkpoint
      ``output_dir/checkpoints/step_*.pt``) — ``config`` is required unless the run's ``config.yaml`` lies beside
      it (or in ``output_dir`` for a step checkpoint);
    * ``None`` — a bare config (weights as the config says: random, or ``model.checkpoint``)."""
    if source is None:
        if config is None:
            raise ConfigError("no model given: pass a checkpoint, an output folder or a config "
                              "(e.g. configs/models/tiny.yaml)")
        return None, Path(config)
    src = Path(source)
    if src.is_dir():
        weights = src / WEIGHTS_NAME
        if not weights.is_file():
            raise CheckpointError(f"{src} has no {WEIGHTS_NAME}: pass the folder a training run wrote, or a "
                                  f"checkpoint file")
        cfg_path = Path(config) if config else src / RESOLVED_NAME
    elif src.is_file():
        weights = src
        # the run's config: beside the file, or one folder up for a step checkpoint (output_dir/checkpoints/)
        beside = [src.parent / RESOLVED_NAME, src.parent.parent / RESOLVED_NAME]
        if config:
            cfg_path = Path(config)
        elif beside[0].is_file() or (src.parent.name == "checkpoints" and beside[1].is_file()):
            cfg_path = beside[0] if beside[0].is_file() else beside[1]
        else:
            raise ConfigError(f"{src} has no config.yaml beside it: pass the config that matches it (--config, or "
                              f"config= in load_model), e.g. configs/models/x2vlm_base.yaml (README: official "
                              f"checkpoints)")
    else:
        raise CheckpointError(f"checkpoint not found: {src}")
    if not cfg_path.is_file():
        raise ConfigError(f"config file not found: {cfg_path}")
    return weights, cfg_path


def load_model(source: str | os.PathLike | None = None, config: str | os.PathLike | None = None,
               overrides: Iterable[str] = (), vqa: bool | None = None, device: str | torch.device = "cpu",
               allow_partial: bool = False) -> X2VLMInference:
    """Load X²-VLM for inference from our output folder, a checkpoint + config, or a bare config.

    ``overrides`` are ``key.sub=value`` strings as on the command line (e.g. the tokenizer folder of an
    official checkpoint: ``model.text.tokenizer=/path/bert-base-uncased``). ``vqa``: build the answer decoder
    (needed by :meth:`X2VLMInference.answer`); ``None`` builds it when the checkpoint holds one. The load
    report's summary line is printed; a checkpoint that leaves part of the backbone at random init (wrong
    config, other architecture) raises :class:`~models.checkpoint.CheckpointError` unless ``allow_partial``."""
    weights, cfg_path = resolve_source(source, config)
    cfg = load_config(cfg_path, list(overrides))
    if weights is not None:
        cfg["model"]["checkpoint"] = None  # loaded below, after building without the init weights
    if vqa is None:
        vqa = weights is not None and _checkpoint_has_decoder(weights)
    if vqa:
        cls: type[X2VLM] = _AnsweringX2VLM
    else:
        cls = X2VLM
    tokenizer = load_tokenizer(cfg)
    report = None
    if weights is None:
        model = cls.from_config(cfg)
        report = getattr(model, "load_report", None)
    else:
        model = cls.from_config(cfg, load_weights=False)
        report = model.load_checkpoint(weights)  # a VQA model derives its decoder from a pretraining checkpoint
        print(report.summary())
        check_fits(report, model.architecture, allow_partial)
    if len(tokenizer) > model.text_encoder.config.vocab_size:
        raise ConfigError(f"the tokenizer has {len(tokenizer)} tokens but the text encoder's vocabulary "
                          f"{model.text_encoder.config.vocab_size}: model.text.tokenizer does not match {cfg_path}")
    return X2VLMInference(model.to(device), tokenizer, cfg, report)


__all__ = ["load_model", "X2VLMInference", "resolve_source", "box_pixels"]
