"""What a fusion architecture is to the rest of the model: the interface both fusions implement.

:class:`~models.x2vlm.X2VLM` and the task models talk to ``self.fusion`` only through these methods, so they hold
no architecture branch; ``model.architecture`` picks the implementation by name (:mod:`models.fusions`):

* ``x2vlm`` — :class:`models.fusion.X2VLMFusion`: BERT-shaped fusion layers after the two encoders;
* ``fiber`` — :class:`models.fiber.FiberFusion`: gated cross-attention inside the top layers of both backbones.

A fusion owns how the backbones are run (:meth:`Fusion.encode_vision` / :meth:`Fusion.encode_text`: the
:class:`~models.tokens.Tokens` it will later fuse from), the fusion itself (:meth:`Fusion.fuse`), the box path
(:meth:`Fusion.build_box_head`, :meth:`Fusion.boxes_and_scores`), its initialisation from the text encoder and
which layers an answer decoder starts from. The backbones stay registered once, under the model; they are passed
in (:class:`Backbones`) rather than held, so that the state-dict keys stay those of the official layouts.
"""
from __future__ import annotations

import abc
from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn

from models.tokens import Tokens


class Backbones(NamedTuple):
    """The model's two encoders: a :class:`~models.vision.BEiT2VisionEncoder` and a Hugging Face text encoder."""

    vision: Any
    text: Any


class Fusion(nn.Module, metaclass=abc.ABCMeta):
    """The fusion of an X²-VLM-family model (see the module docstring). Implementations set
    :attr:`CROSS_ATTENTION_KEYS` and build from the model config with :meth:`from_config`."""

    #: regex (keys under ``fusion.``) of the cross-attention weights, which a text-encoder swap keeps
    CROSS_ATTENTION_KEYS: ClassVar[str]
    grad_checkpointing: bool

    @classmethod
    @abc.abstractmethod
    def from_config(cls, model_cfg: dict, text_config: Any) -> Fusion:
        """Build from the ``model`` config section and the text encoder's (Hugging Face) config."""

    @property
    @abc.abstractmethod
    def num_layers(self) -> int:
        """The number of fused layers."""

    @abc.abstractmethod
    def encode_vision(self, backbones: Backbones, images: torch.Tensor) -> Tokens:
        """One uni-modal pass of the vision encoder over ``images`` (B, 3, H, W): tokens ``(B, 1+P, Dv)``."""

    @abc.abstractmethod
    def encode_text(self, backbones: Backbones, **inputs: Any) -> Tokens:
        """One uni-modal pass of the text encoder (Hugging Face keyword arguments): tokens ``(B, L, H)``."""

    @abc.abstractmethod
    def fuse(self, backbones: Backbones, image: Tokens, image_atts: torch.Tensor | None, text: Tokens,
             text_atts: torch.Tensor | None, causal: bool = False, image_index: torch.Tensor | None = None,
             text_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Fused text tokens ``(B, Lt, H)``: text row i reads visual row ``image_index[i]`` of ``image`` (row i
        without an index). ``causal`` or a boolean ``text_mask`` (B, 1, Lt, Lt) replaces the text
        self-attention's padding mask (captioning)."""

    @abc.abstractmethod
    def build_box_head(self, vision_width: int, text_width: int) -> nn.Module:
        """The ``bbox_head`` module this fusion's :meth:`boxes_and_scores` drives."""

    @abc.abstractmethod
    def boxes_and_scores(self, backbones: Backbones, head: nn.Module, image: Tokens, text: Tokens,
                         text_atts: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Boxes ``(B, 4)`` normalised (cx, cy, w, h) of each text's referent in its whole image, and the
        text–patch alignment scores ``(B, P)`` where the box head has them (else ``None``)."""

    @abc.abstractmethod
    def init_from_text(self, text_layers: nn.ModuleList) -> list[str]:
        """The official initialisation from the text encoder's layers; returns the keys written (under ``fusion.``)."""

    @abc.abstractmethod
    def decoder_start_layers(self, text_depth: int) -> list[str]:
        """Key prefixes (model layout) of the fused layers, in order: where an answer decoder's layers start from."""

    def freeze_unused_for_causal_text(self) -> None:
        """Called by a model that fuses only under a causal text mask (captioning): freeze what such a fusion
        never computes with (default: nothing)."""


__all__ = ["Backbones", "Fusion"]
