"""X²-VLM: BEiT-2 vision encoder, text encoder, cross-attention fusion, and the pretraining heads.

``model.architecture`` picks the fusion by name (models/fusions.py): ``x2vlm`` (fusion layers after the encoders,
models/fusion.py) or ``fiber`` (gated cross-attention inside the top layers of both backbones, models/fiber.py).
The model talks to it only through :class:`~models.fusion_interface.Fusion`, and the encoders return
:class:`~models.tokens.Tokens`, so every method here and in the task models works for both unchanged.

Pretraining batch (all tensors; N texts, B images, optional Bv videos):

``images`` (B, 3, H, W); ``videos`` (Bv, T, 3, H, W) optional;
``text_ids``/``text_atts`` (N, L); ``image_index`` (N,) — the visual concept of text i lives in
image/video ``image_index[i]`` of the pool ``[images..., videos...]`` (default: i);
``boxes`` (N, 4) normalised (cx, cy, w, h) and ``is_region`` (N,) bool — rows that describe a box
(their concept is the box's patches, and they get the bbox loss); ``ids`` (N,) optional ITC ids
(equal id = positive pair); ``mlm_ids`` (N, L) masked input, ``mlm_positions`` (N, M),
``mlm_labels`` (N, M) with -100 padding; ``sample_seed`` (int or 0-d int64 tensor) optional — seeds the ITM
hard-negative draws so they are reproducible and identical however the global batch is split over processes.
"""
from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import torch
import torch.nn.functional as F
from torch import nn

from models import losses as L
from models.counter_random import counter_uniform
from models.fusion_interface import Backbones
from models.fusions import build_fusion
from models.heads import MLMHead, build_mlp
from models.text import build_text_encoder, swap_mode
from models.tokens import Tokens
from models.vision import BEiT2VisionEncoder, box_patch_mask, region_concepts
from models.weight_init import bert_init_
from utils.config import load_defaults

if TYPE_CHECKING:
    from models.checkpoint import LoadReport, TextSwapReport
    from models.fusion_interface import Fusion


def _model_section(cfg: dict) -> dict:
    return cfg["model"] if "model" in cfg and isinstance(cfg["model"], dict) else cfg


class X2VLM(nn.Module):
    """The X²-VLM model. Build with :meth:`from_config`; load weights with :meth:`load_checkpoint`.

    ``heads``: the optional parts the model has (names of :data:`HEAD_BUILDERS`); task models declare theirs,
    as the official fine-tuned models have them (grounding: ``bbox`` only), so that an official checkpoint and
    our model hold the same keys."""

    heads: tuple[str, ...] = ("mlm", "itc", "itm", "bbox")

    vision_encoder: BEiT2VisionEncoder
    text_encoder: Any  # a Hugging Face BERT / RoBERTa / XLM-R model (models.text.build_text_encoder)
    fusion: Fusion
    absolute_frame_pos_embed: nn.Parameter | None
    # the heads, present as ``heads`` says (HEAD_BUILDERS)
    mlm_head: MLMHead
    vision_proj: nn.Linear
    text_proj: nn.Linear
    temp: nn.Parameter
    itm_head: nn.Module
    bbox_head: nn.Module
    # what from_config loaded: reports of the vision weights, the text-encoder swap and model.checkpoint
    init_report: LoadReport
    swap_report: TextSwapReport
    load_report: LoadReport
    fresh_parameters: set[str]  # parameters no pretrained weight reached (they get optimizer.lr_mult)

    def __init__(self, model_cfg: dict, loss_cfg: dict | None = None, load_text_weights: bool = True):
        super().__init__()
        self.cfg = model_cfg
        self.loss_cfg = dict(loss_cfg if loss_cfg is not None else load_defaults()["loss"])
        v = model_cfg["vision"]
        self.vision_encoder = BEiT2VisionEncoder(
            image_res=model_cfg["image_res"], patch_size=model_cfg["patch_size"], width=v["width"],
            depth=v["depth"], heads=v["heads"], mlp_ratio=v["mlp_ratio"], init_values=v["init_values"],
            drop_path=v["drop_path"], abs_pos_emb=v["abs_pos_emb"])
        self.text_encoder = build_text_encoder(model_cfg["text"], load_weights=load_text_weights)
        tc = self.text_encoder.config
        self.text_width = tc.hidden_size
        self.vision_width = v["width"]
        self.architecture = model_cfg["architecture"]
        self.fusion = build_fusion(model_cfg, tc)
        unknown = set(self.heads) - set(HEAD_BUILDERS)
        if unknown:
            raise ValueError(f"unknown heads {sorted(unknown)}; known: {', '.join(HEAD_BUILDERS)}")
        for name in (n for n in HEAD_BUILDERS if n in self.heads):  # only the heads this (task) model has
            for attr, module in HEAD_BUILDERS[name](self, model_cfg).items():
                setattr(self, attr, module)
        if model_cfg["max_frames"] > 0:
            self.absolute_frame_pos_embed = nn.Parameter(
                torch.zeros(1, model_cfg["max_frames"], 1, self.vision_width))
            nn.init.trunc_normal_(self.absolute_frame_pos_embed, std=0.02)
        else:
            self.absolute_frame_pos_embed = None
        self._init_new_modules()
        if model_cfg.get("grad_checkpointing"):
            self.set_grad_checkpointing(True)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, cfg: dict, load_weights: bool = True, trusted: bool | None = None) -> Self:
        """Build from the full config (``model`` + ``loss`` sections) or the model section alone.

        With ``load_weights``: HF text weights from ``model.text.name_or_path``, BEiT-2 weights from
        ``model.vision.checkpoint``, then — with ``model.text.swap.mode`` other than none — the kept parts of
        the English checkpoint ``model.text.swap.checkpoint`` (:meth:`swap_text_encoder`, report in
        ``swap_report``), then a full checkpoint from ``model.checkpoint``. Files are read with
        ``weights_only=True`` unless ``trusted`` (default: ``--trusted-checkpoint``; ``models.checkpoint.is_trusted``).
        """
        model_cfg = _model_section(cfg)
        model = cls(model_cfg, cfg.get("loss") if "model" in cfg else None, load_text_weights=load_weights)
        pretrained: set[str] = set()
        from models.checkpoint import alias_groups, check_fits, load_vision_weights
        if load_weights:
            if model_cfg["vision"].get("checkpoint"):
                model.init_report = load_vision_weights(model.vision_encoder, model_cfg["vision"]["checkpoint"],
                                                        trusted=trusted)
                pretrained |= {"vision_encoder." + k for k in model.init_report.loaded}
            if swap_mode(model_cfg["text"]) != "none":
                model.swap_report = model.swap_text_encoder(trusted=trusted)
                pretrained |= set(model.swap_report.loaded) | set(model.swap_report.from_text_model)
            elif model_cfg["text"].get("name_or_path"):
                pretrained |= {n for n, _ in model.named_parameters() if n.startswith("text_encoder.")}
                if model_cfg["fusion"]["init_from_text"]:
                    pretrained |= set(model.init_fusion_from_text())
            if model_cfg.get("checkpoint"):
                model.load_report = model.load_checkpoint(model_cfg["checkpoint"], trusted=trusted)
                check_fits(model.load_report, model.architecture, bool(model_cfg.get("allow_partial_load")))
                pretrained |= set(model.load_report.loaded)
        # parameters no pretrained weight reached get optimizer.lr_mult (none when training from scratch);
        # a tied parameter counts as loaded under any of its names
        for names_of_one in alias_groups(model).values():
            if names_of_one & pretrained:
                pretrained |= names_of_one
        names = {n for n, _ in model.named_parameters()}
        model.fresh_parameters = names - pretrained if pretrained else set()
        return model

    def _init_new_modules(self) -> None:
        """BERT-style init of the fusion, projections and heads: normal weights with the text config's
        ``initializer_range`` (0.02 in BERT and the official code), zero biases, unit LayerNorms."""
        init = partial(bert_init_, std=self.text_encoder.config.initializer_range)
        self.fusion.apply(init)
        for name in ("vision_proj", "text_proj", "itm_head", "bbox_head"):
            if hasattr(self, name):
                getattr(self, name).apply(init)
        if hasattr(self, "mlm_head"):
            self.mlm_head.predictions.transform.apply(init)
            nn.init.zeros_(self.mlm_head.predictions.bias)

    def init_fusion_from_text(self) -> list[str]:
        """Initialise the fusion from the text encoder as the official code does (X²-VLM: fusion layer i's
        self-attention and FFN ← text layer ``n_text - n_fusion + i``; FIBER: nothing to copy). Returns the
        fusion keys written."""
        return [f"fusion.{k}" for k in self.fusion.init_from_text(self.text_encoder.encoder.layer)]

    def swap_text_encoder(self, trusted: bool | None = None):
        """Keep an English checkpoint's vision side and fusion around a new (e.g. XLM-R) text encoder, as
        ``model.text.swap`` says (mode, checkpoint); the text encoder already holds the new model's weights.
        Returns a :class:`~models.checkpoint.TextSwapReport` (kept / from the text model / re-initialised keys)."""
        from models.checkpoint import copy_word_embeddings, load_text_swap
        text_cfg = self.cfg["text"]
        swap, mode = text_cfg.get("swap") or {}, swap_mode(text_cfg)
        if not swap.get("checkpoint"):
            raise ValueError(f"model.text.swap.mode is {mode}: set model.text.swap.checkpoint (the English model)")
        if mode == "embeddings_only":
            from_text = copy_word_embeddings(self, text_cfg["name_or_path"])
        else:
            from_text = [k for k in self.state_dict() if k.startswith("text_encoder.")]
            if mode == "cross_attention_only":  # fusion self-attention / FFN from the new model's top layers
                from_text += self.init_fusion_from_text()
        return load_text_swap(self, swap["checkpoint"], mode, from_text, trusted=trusted)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.vision_encoder.set_grad_checkpointing(enable)
        if enable:
            self.text_encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            self.text_encoder.gradient_checkpointing_disable()
        self.fusion.grad_checkpointing = enable

    def load_checkpoint(self, path: str | Path, strict: bool = False, trusted: bool | None = None):
        """Load an official X²-VLM ``.th``, our own checkpoint, or a bare state dict; return the key report.
        ``trusted``: unpickle any object (default: ``--trusted-checkpoint``); otherwise ``weights_only=True``."""
        from models.checkpoint import load_model_checkpoint
        return load_model_checkpoint(self, path, strict=strict, trusted=trusted)

    def tie_weights(self) -> None:
        """(Re-)tie the MLM decoder to the word embeddings (after ``to_empty`` of a model built on ``meta``)."""
        if hasattr(self, "mlm_head"):
            self.mlm_head.tie_to(self.text_encoder.get_input_embeddings())

    def adapt_checkpoint_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A checkpoint's state (our layout) as this model loads it; task models with parts derived from other
        parts (the VQA decoder) override this."""
        return state

    # ------------------------------------------------------------------ training hooks (utils.trainer.TrainingHooks)
    @property
    def loss_switches(self) -> dict[str, Any]:
        """The ``loss`` section the forward follows (which losses run, ``itm_neg_group``), as a copy."""
        return dict(self.loss_cfg)

    def set_loss_switches(self, switches: dict[str, Any]) -> None:
        """Follow ``switches`` from the next forward on (a ``train.stages`` entry over the ``loss`` section)."""
        self.loss_cfg = dict(switches)

    def after_optimizer_step(self) -> None:
        """Called by the trainer after every applied optimizer step: keeps the temperature in range."""
        self.clamp_temperature()

    @torch.no_grad()
    def clamp_temperature(self) -> None:
        """Keep the parameter in [temp_min, temp_max] (the trainer calls this after each step); no-op for a
        model without ITC."""
        if "itc" in self.heads:
            self.temp.clamp_(self.cfg["temp_min"], self.cfg["temp_max"])

    @property
    def temperature(self) -> torch.Tensor:
        """The ITC temperature as used: clamped in the graph too, for engines (DeepSpeed) whose master
        weights live in the optimizer where :meth:`clamp_temperature` cannot reach them."""
        return self.temp.clamp(self.cfg["temp_min"], self.cfg["temp_max"])

    # ------------------------------------------------------------------ encoders
    @property
    def grid_size(self) -> int:
        return self.vision_encoder.grid_size

    @property
    def backbones(self) -> Backbones:
        return Backbones(self.vision_encoder, self.text_encoder)

    def text_tokens(self, **inputs: Any) -> Tokens:
        """The text encoder's tokens for ``inputs`` (Hugging Face keyword arguments: ids, masks, positions)."""
        return self.fusion.encode_text(self.backbones, **inputs)

    def encode_image(self, images: torch.Tensor, boxes: torch.Tensor | None = None,
                     image_index: torch.Tensor | None = None) -> tuple[Tokens, torch.Tensor]:
        """One vision pass. Without boxes: whole-image tokens ``(B, 1+P, D)`` and all-ones mask.
        With ``boxes`` (N, 4) normalised (cx, cy, w, h): the boxes' concepts ``(N, 1+P, D)`` and their
        patch masks; ``image_index`` (N,) names each box's image (default: box i in image i)."""
        embeds = self.fusion.encode_vision(self.backbones, images)
        if boxes is None:
            return embeds, _all_ones(embeds)
        return _region_concepts(embeds, box_patch_mask(boxes, self.grid_size), image_index)

    def encode_video(self, frames: torch.Tensor) -> tuple[Tokens, torch.Tensor]:
        """Frames ``(B, T, 3, H, W)`` → encoded separately, temporal embedding added, mean over time."""
        if frames.ndim != 5:
            raise ValueError(f"video frames must be (B, T, C, H, W), got {tuple(frames.shape)}")
        b, t = frames.shape[:2]
        embeds = self.fusion.encode_vision(self.backbones, frames.flatten(0, 1)).map(lambda x: x.unflatten(0, (b, t)))
        if self.absolute_frame_pos_embed is not None:
            if t > self.absolute_frame_pos_embed.shape[1]:
                raise ValueError(f"{t} frames but model.max_frames is {self.absolute_frame_pos_embed.shape[1]}")
            frame_pos = self.absolute_frame_pos_embed[:, :t]
            embeds = embeds.map(lambda x: x + frame_pos)
        embeds = embeds.map(lambda x: x.mean(dim=1))
        return embeds, _all_ones(embeds)

    def encode_text(self, ids: torch.Tensor, atts: torch.Tensor) -> Tokens:
        return self.text_tokens(input_ids=ids, attention_mask=atts)

    def fuse(self, image_embeds: Tokens, image_atts: torch.Tensor | None, text_embeds: Tokens,
             text_atts: torch.Tensor | None, causal: bool = False,
             image_index: torch.Tensor | None = None, text_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Fusion output ``(B, Lt, H)``: text queries attend to the visual concept's tokens (row
        ``image_index[i]`` of ``image_embeds`` for text i when given, else row i). ``text_mask`` (B, 1, Lt, Lt)
        boolean replaces the text self-attention mask (captioning). See :meth:`Fusion.fuse`."""
        return self.fusion.fuse(self.backbones, image_embeds, image_atts, text_embeds, text_atts, causal=causal,
                                image_index=image_index, text_mask=text_mask)

    def image_features(self, image_embeds: Tokens) -> torch.Tensor:
        """L2-normalised ITC features ``(B, E)`` of the uni-modal [CLS]."""
        return F.normalize(self.vision_proj(image_embeds.final[:, 0]), dim=-1)

    def text_features(self, text_embeds: Tokens) -> torch.Tensor:
        """L2-normalised ITC features ``(B, E)`` of the uni-modal [CLS]."""
        return F.normalize(self.text_proj(text_embeds.final[:, 0]), dim=-1)

    def itm_logits(self, image_embeds: Tokens, image_atts: torch.Tensor | None,
                   text_embeds: Tokens, text_atts: torch.Tensor | None,
                   image_index: torch.Tensor | None = None) -> torch.Tensor:
        """Match / no-match logits ``(B, 2)`` (index 1 = match); ``image_index`` as in :meth:`fuse`."""
        fused = self.fuse(image_embeds, image_atts, text_embeds, text_atts, image_index=image_index)
        return self.itm_head(fused[:, 0])

    def predict_boxes(self, image_embeds: Tokens, text_embeds: Tokens, text_atts: torch.Tensor | None) -> torch.Tensor:
        """Box ``(B, 4)`` normalised (cx, cy, w, h) of the text's referent, from whole-image tokens."""
        return self._boxes_and_scores(image_embeds, text_embeds, text_atts)[0]

    def _boxes_and_scores(self, image_embeds: Tokens, text_embeds: Tokens, text_atts: torch.Tensor | None
                          ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.fusion.boxes_and_scores(self.backbones, self.bbox_head, image_embeds, text_embeds, text_atts)

    def box_losses(self, image_embeds: Tokens, text_embeds: Tokens, text_atts: torch.Tensor | None,
                   target: torch.Tensor, weight: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``loss_bbox`` (L1) and ``loss_giou`` of the predicted boxes against ``target`` (N, 4) (cx, cy, w, h),
        over the rows where ``weight`` (N,) is 1, and ``loss_align`` (the patch alignment loss) where the box head
        scores patches (FIBER's)."""
        pred, scores = self._boxes_and_scores(image_embeds, text_embeds, text_atts)
        out = dict(zip(("loss_bbox", "loss_giou"), L.bbox_loss(pred, target, weight), strict=True))
        if scores is not None:
            inside = box_patch_mask(target, self.grid_size)[:, 1:]
            out["loss_align"] = L.patch_alignment_loss(scores, inside, weight)
        return out

    def mlm_logits(self, fused: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits ``(B, M, V)`` at ``positions`` (B, M) of the fusion output."""
        picked = torch.gather(fused, 1, positions[..., None].expand(-1, -1, fused.shape[-1]))
        return self.mlm_head(picked)

    # ------------------------------------------------------------------ pretraining
    def visual_concepts(self, batch: dict[str, Any]) -> tuple[Tokens, torch.Tensor, Tokens]:
        """Concept tokens and masks of every text, plus the whole-image tokens, from one vision pass."""
        pool = []
        if batch.get("images") is not None:
            pool.append(self.encode_image(batch["images"])[0])
        if batch.get("videos") is not None:
            pool.append(self.encode_video(batch["videos"])[0])
        full = Tokens.cat(pool)
        n = batch["text_ids"].shape[0]
        index = batch.get("image_index")
        if index is None:
            index = torch.arange(n, device=full.device)
        full = full.index_select(0, index)
        boxes = batch.get("boxes")
        if boxes is None:
            return full, _all_ones(full), full
        mask = box_patch_mask(boxes, self.grid_size)
        is_region = batch.get("is_region")
        if is_region is not None:
            mask = torch.where(is_region[:, None].bool(), mask, torch.ones_like(mask))
        concepts, mask = _region_concepts(full, mask)
        return concepts, mask, full

    def forward_pretrain(self, batch: dict[str, Any], generator: torch.Generator | None = None
                         ) -> dict[str, torch.Tensor]:
        """Losses of one pretraining batch (see the module docstring); ``loss`` is their sum."""
        cfg = self.loss_cfg
        concepts, concept_atts, full = self.visual_concepts(batch)
        text_ids, text_atts = batch["text_ids"], batch["text_atts"]
        text_embeds = self.encode_text(text_ids, text_atts)
        out: dict[str, torch.Tensor] = {}
        ids = batch.get("ids")
        if cfg["itc"] or cfg["itm"]:
            image_feat = self.image_features(concepts)
            text_feat = self.text_features(text_embeds)
        if cfg["itc"]:
            out["loss_itc"] = L.itc_loss(image_feat, text_feat, self.temperature, ids)
        if cfg["itm"]:
            out["loss_itm"] = self._itm_loss(concepts, concept_atts, image_feat, text_embeds, text_atts,
                                             text_feat, ids, generator, batch.get("sample_seed"))
        if cfg["mlm"] and batch.get("mlm_ids") is not None:
            masked = self.encode_text(batch["mlm_ids"], text_atts)
            fused = self.fuse(concepts, concept_atts, masked, text_atts)
            out["loss_mlm"] = L.mlm_loss(self.mlm_logits(fused, batch["mlm_positions"]), batch["mlm_labels"])
        if cfg["bbox"] and batch.get("boxes") is not None:
            out |= self.box_losses(full, text_embeds, text_atts, batch["boxes"], batch.get("is_region"))
        out["loss"] = L.total(out) if out else torch.zeros((), device=text_ids.device)
        return out

    def _itm_loss(self, concepts, concept_atts, image_feat, text_embeds, text_atts, text_feat, ids, generator,
                  sample_seed: torch.Tensor | int | None = None):
        n = concepts.shape[0]
        group = int(self.loss_cfg["itm_neg_group"] or n)
        if n % group:
            raise ValueError(f"loss.itm_neg_group={group} does not divide the {n} texts of the batch")
        noise = None if sample_seed is None else _negative_noise(n, group, sample_seed, concepts.device)
        neg_image: list[torch.Tensor] = []
        valid_t: list[torch.Tensor] = []
        neg_text: list[torch.Tensor] = []
        valid_i: list[torch.Tensor] = []
        for start in range(0, n, group):  # negatives come from the text's own group only
            part = slice(start, start + group)
            img, ok_t, txt, ok_i = L.sample_hard_negatives(
                image_feat[part], text_feat[part], self.temperature, None if ids is None else ids[part], generator,
                None if noise is None else noise[:, part])
            neg_image.append(img + start)
            neg_text.append(txt + start)
            valid_t.append(ok_t)
            valid_i.append(ok_i)
        negative_images, negative_texts = torch.cat(neg_image), torch.cat(neg_text)
        # pairs (positive, negative image, negative text) read the n concepts by index: each concept's fusion
        # keys/values are projected once, not once per pair
        own = torch.arange(n, device=negative_images.device)
        pair_image = torch.cat([own, negative_images, own])
        text = Tokens.cat([text_embeds, text_embeds, text_embeds.index_select(0, negative_texts)])
        t_atts = torch.cat([text_atts, text_atts, text_atts.index_select(0, negative_texts)])
        logits = self.itm_logits(concepts, concept_atts, text, t_atts, image_index=pair_image)
        return L.itm_loss(logits, L.itm_labels(n, torch.cat(valid_t), torch.cat(valid_i)))

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:  # noqa: D401
        """Pretraining losses (see :meth:`forward_pretrain`)."""
        return self.forward_pretrain(batch)


#: the modules (and parameters) of one head, by attribute name
HeadParts = dict[str, nn.Module | nn.Parameter]


def _itc_head(model: X2VLM, cfg: dict) -> HeadParts:
    return {"vision_proj": nn.Linear(model.vision_width, cfg["embed_dim"]),
            "text_proj": nn.Linear(model.text_width, cfg["embed_dim"]),
            "temp": nn.Parameter(torch.tensor(float(cfg["temp"])))}


def _mlm_head(model: X2VLM, cfg: dict) -> HeadParts:
    tc = model.text_encoder.config
    head = MLMHead(tc.hidden_size, tc.vocab_size, act=tc.hidden_act, eps=tc.layer_norm_eps)
    head.tie_to(model.text_encoder.get_input_embeddings())
    return {"mlm_head": head}


def _bbox_head(model: X2VLM, cfg: dict) -> HeadParts:
    # the fusion's own (X²-VLM: box from the fused text [CLS]; FIBER: from the fused image patches)
    return {"bbox_head": model.fusion.build_box_head(model.vision_width, model.text_width)}


def _all_ones(tokens: Tokens) -> torch.Tensor:
    """The attention mask ``(B, L)`` of tokens with no padding."""
    return torch.ones(tokens.shape[:2], dtype=torch.long, device=tokens.device)


def _region_concepts(tokens: Tokens, patch_mask: torch.Tensor, image_index: torch.Tensor | None = None
                     ) -> tuple[Tokens, torch.Tensor]:
    """:func:`models.vision.region_concepts` on every part of ``tokens``: the boxes' concepts and masks."""
    return tokens.map(lambda t: region_concepts(t, patch_mask, image_index)[0]), patch_mask


#: the optional heads by name (``X2VLM.heads``), in build order: builder(model, model config) → {attribute: module}
HEAD_BUILDERS: dict[str, Callable[[X2VLM, dict], HeadParts]] = {
    "mlm": _mlm_head,
    "itc": _itc_head,  # temperature and the vision / text projections
    "itm": lambda model, cfg: {"itm_head": build_mlp(model.text_width, 2)},
    "bbox": _bbox_head,
}


def _negative_noise(n_local: int, group: int, seed: torch.Tensor | int, device: torch.device) -> torch.Tensor:
    """Uniform noise ``(2, n_local, group)`` for this rank's hard-negative draws: the rows of one matrix over
    the global batch, a function of ``seed`` and the global row (:func:`models.counter_random.counter_uniform`,
    no generator: compiles into the step's graph), so the draws of global row i are the same whether it sits on
    rank 1 of 2 or in group 2 of a single process (see ``loss.itm_neg_group``)."""
    import torch.distributed as dist
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    rows = rank * n_local + torch.arange(n_local, device=device)
    return counter_uniform(seed, 2, rows, group)  # one stream per direction
