"""Checkpoint loading and saving with a report of every key that did not map.

Reads: official X²-VLM ``.th`` files (``{'model': state_dict}``, text + fusion in one BERT; every official
layout, mapped by the one table of :mod:`models.official_layout`), our own safetensors checkpoints, bare state
dicts, BEiT-2 release ``.pth`` and timm state dicts (vision encoder). Relative-position tables are resized to the
model's patch grid as the official code does (:mod:`models.position_tables`), patch embeddings and the temporal
embedding (the official rule: the first frames are copied) to the model's patch size / frame count.
:func:`check_fits` turns a load that would leave the backbone at random init into a one-line error.
:func:`load_text_swap` keeps the parts of an English
checkpoint that a text-encoder swap (``model.text.swap``, e.g. to XLM-R) leaves in place and reports every key.
"""
from __future__ import annotations

import math
import os
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from safetensors.torch import load_file, save_file, save_model
from timm.layers import resample_abs_pos_embed, resample_patch_embed
from torch import nn

from models.official_layout import architecture_of, backbone_part, complete_ties, is_derived, to_our_layout
from models.position_tables import resize_rel_pos_bias_table
from utils.atomic import atomic_write
from utils.trust import is_trusted, trust_checkpoints  # noqa: F401  (trust_checkpoints: re-exported)

if TYPE_CHECKING:
    from models.vision import BEiT2VisionEncoder
    from models.x2vlm import X2VLM

WEIGHTS_NAME = "model.safetensors"


@dataclass(frozen=True)
class Resized:
    """A checkpoint tensor fitted to the model's shape (interpolated position tables, frame embeddings)."""

    key: str
    checkpoint: tuple[int, ...]
    model: tuple[int, ...]

    def __str__(self) -> str:
        return f"{self.key}: {self.checkpoint} -> {self.model}"


@dataclass(frozen=True)
class Mismatched(Resized):
    """A checkpoint tensor whose shape does not fit the model's and cannot be fitted: not loaded."""

    def __str__(self) -> str:
        return f"{self.key}: checkpoint {self.checkpoint} vs model {self.model}"


@dataclass
class LoadReport:
    """What happened to every key: loaded (``resized`` ones among them), missing, unexpected, shape-mismatched
    (not loaded), derived.

    ``architecture``: the fusion architecture the checkpoint's keys show (``x2vlm``, ``fiber`` or ``None``)."""

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    resized: list[Resized] = field(default_factory=list)
    mismatched: list[Mismatched] = field(default_factory=list)
    derived: list[str] = field(default_factory=list)
    architecture: str | None = None

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    @property
    def fresh(self) -> list[str]:
        """Missing keys outside the backbone: heads (or embeddings) new for this model, left at their init."""
        return [k for k in self.missing if backbone_part(k) is None]

    @property
    def unused(self) -> list[str]:
        """Checkpoint keys outside the backbone that this model has no place for (heads of another task)."""
        return [k for k in self.unexpected if backbone_part(k) is None]

    def summary(self) -> str:
        """One line: how many keys loaded, which heads start fresh and which checkpoint heads are unused."""
        line = (f"checkpoint {self.source}: {len(self.loaded)} keys loaded ({len(self.resized)} resized), "
                f"fresh {_by_module(self.fresh)}, unused {_by_module(self.unused)}")
        problems = [f"{len(v)} {name}" for name, v in (("backbone keys missing", _backbone(self.missing)),
                                                       ("backbone keys unexpected", _backbone(self.unexpected)),
                                                       ("shape-mismatched", self.mismatched)) if v]
        return line + (f", {', '.join(problems)}" if problems else "")

    def __str__(self) -> str:
        lines = [f"checkpoint {self.source}: {len(self.loaded)} loaded, {len(self.resized)} resized, "
                 f"{len(self.missing)} missing, {len(self.unexpected)} unexpected, "
                 f"{len(self.mismatched)} shape-mismatched, {len(self.derived)} derived buffers skipped"]
        for name in ("missing", "unexpected", "mismatched", "resized"):
            for key in getattr(self, name):
                lines.append(f"  {name}: {key}")  # Resized / Mismatched render as "key: shapes"
        return "\n".join(lines)


def _backbone(keys: list[str]) -> list[str]:
    return [k for k in keys if backbone_part(k) is not None]


def _by_module(keys: list[str]) -> str:
    """``none`` or ``cls_head (6), itm_head (6)``: keys counted by their top-level module."""
    counts: dict[str, int] = {}
    for key in keys:
        top = key.split(".", 1)[0]
        counts[top] = counts.get(top, 0) + 1
    return ", ".join(f"{name} ({n})" for name, n in counts.items()) or "none"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model; the message names the file/key."""


# ---------------------------------------------------------------------------------------- reading
def read_state_dict(path: str | os.PathLike, trusted: bool | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file or folder; unwraps ``{'model': ...}`` / ``{'module': ...}``.

    ``torch.load`` runs with ``weights_only=True`` unless ``trusted`` (default: :func:`is_trusted`; only for
    files you trust: a pickle can run code)."""
    trusted = is_trusted(trusted)
    path = Path(path)
    if path.is_dir():
        for name in (WEIGHTS_NAME, "pytorch_model.bin"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise CheckpointError(f"no {WEIGHTS_NAME} or pytorch_model.bin in folder {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as e:  # corrupt or truncated safetensors file
            raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trusted)
    except pickle.UnpicklingError as e:
        if trusted or not _looks_like_torch_file(path):  # garbage also fails as an "unpickling" error
            raise CheckpointError(f"cannot read checkpoint {path} (corrupt, or not a PyTorch file): {e}") from e
        raise CheckpointError(
            f"{path} holds objects other than tensors and plain containers, so it was not unpickled "
            f"(weights_only=True). If you trust this file, load it with trusted=True (on the command line: "
            f"--trusted-checkpoint). Detail: {e}") from e
    except Exception as e:  # corrupt or truncated files
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e
    for key in ("model", "module", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}


def _looks_like_torch_file(path: Path) -> bool:
    """A ``torch.save`` zip archive, or a legacy pickle (which starts with the PROTO opcode)."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"


# ------------------------------------------------------------------------------------- resizing
def _fit_vision_tensor(key: str, value: torch.Tensor, target: torch.Tensor, encoder: nn.Module,
                       prefix: str) -> torch.Tensor | None:
    """Resize a vision tensor to the model's shape where that is meaningful, else None."""
    if key.endswith("relative_position_bias_table"):
        if value.ndim != target.ndim or value.shape[1:] != target.shape[1:]:
            return None  # a different number of heads cannot be interpolated
        module = encoder.get_submodule(key[len(prefix):-len(".relative_position_bias_table")])
        try:
            return resize_rel_pos_bias_table(value, cast(Any, module).window_size)  # timm's Attention
        except ValueError:  # a table of no square window: report it as mismatched
            return None
    if key.endswith("patch_embed.proj.weight") and value.shape[:2] == target.shape[:2]:
        return resample_patch_embed(value, list(target.shape[-2:]))
    if key.endswith("pos_embed") and value.ndim == target.ndim == 3 and value.shape[2] == target.shape[2]:
        grid = int(math.isqrt(target.shape[1] - 1))  # [CLS] + a square grid of patches
        if grid * grid != target.shape[1] - 1 or math.isqrt(value.shape[1] - 1) ** 2 != value.shape[1] - 1:
            return None
        return resample_abs_pos_embed(value, new_size=[grid, grid], num_prefix_tokens=1)
    return None


def _fit_frame_embed(value: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
    if value.ndim != 4 or value.shape[::2] != target.shape[::2] or value.shape[-1] != target.shape[-1]:
        return None
    out = target.detach().clone()
    n = min(value.shape[1], target.shape[1])
    out[:, :n] = value[:, :n]
    return out


def alias_groups(model: nn.Module) -> dict[str, set[str]]:
    """Every state-dict key → the keys naming the same tensor (tied weights: the MLM decoder and the word
    embeddings); an untied key maps to itself alone."""
    by_tensor: dict[int, set[str]] = {}
    for k, v in model.state_dict(keep_vars=True).items():
        by_tensor.setdefault(id(v), set()).add(k)
    return {k: group for group in by_tensor.values() for k in group}


def load_state_into(model: nn.Module, state: dict[str, torch.Tensor], source: str,
                    vision_prefix: str = "vision_encoder.", strict: bool = False) -> LoadReport:
    """Copy ``state`` (already in our key layout) into ``model``, resizing where meaningful."""
    report = LoadReport(source=source)
    own = model.state_dict()
    aliases = alias_groups(model)
    vision = model.get_submodule(vision_prefix[:-1]) if vision_prefix else model
    to_load: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if is_derived(key):
            report.derived.append(key)
            continue
        if key not in own:
            report.unexpected.append(key)
            continue
        target = own[key]
        if value.shape != target.shape:
            fitted = None
            if key.startswith(vision_prefix):
                fitted = _fit_vision_tensor(key, value, target, vision, vision_prefix)
            elif key.endswith("absolute_frame_pos_embed"):
                fitted = _fit_frame_embed(value, target)
            if fitted is None or fitted.shape != target.shape:
                report.mismatched.append(Mismatched(key, tuple(value.shape), tuple(target.shape)))
                continue
            report.resized.append(Resized(key, tuple(value.shape), tuple(target.shape)))
            value = fitted
        to_load[key] = value.to(target.dtype)
    model.load_state_dict(to_load, strict=False)
    report.loaded = sorted(to_load)
    covered = set(to_load)
    for key in own:
        if is_derived(key):
            continue
        if not (aliases.get(key, {key}) & covered):
            report.missing.append(key)
    if strict and not report.ok:
        raise CheckpointError(str(report))
    return report


# ------------------------------------------------------------------------------------- text-encoder swap
#: MLM-head keys whose size is the vocabulary's: never taken from a checkpoint of another vocabulary
VOCAB_KEYS = ("mlm_head.predictions.bias", "mlm_head.predictions.decoder.weight", "mlm_head.predictions.decoder.bias")
WORD_EMBEDDINGS = "text_encoder.embeddings.word_embeddings.weight"


def swap_keeps(mode: str, key: str, cross_attention: str = r"layer\.\d+\.crossattention\..+") -> bool:
    """Whether a text-encoder swap in ``mode`` takes ``key`` (our layout) from the English checkpoint.

    * ``full``: everything but the text encoder and the vocabulary-sized MLM keys (as the official
      ``replace_text_encoder``: vision encoder, fusion, projections, ITM / box heads, MLM transform kept);
    * ``cross_attention_only``: the vision side (encoder, frame embedding, ``vision_proj``), the fusion's
      cross-attention (``fusion.`` + the fusion's ``cross_attention`` key pattern: X²-VLM's fusion layers'
      ``crossattention``, every FIBER cross-attention) and the temperature; X²-VLM's fusion self-attention /
      FFN come from the new text model's top layers, ``text_proj`` and the heads start fresh;
    * ``embeddings_only``: everything but the word embeddings and the vocabulary-sized MLM keys (the English
      text layers stay; only tokenizer and embedding table change)."""
    if key in VOCAB_KEYS:
        return False
    if mode == "full":
        return not key.startswith("text_encoder.")
    if mode == "cross_attention_only":
        return (key.startswith(("vision_encoder.", "vision_proj.")) or key in ("temp", "absolute_frame_pos_embed")
                or (key.startswith("fusion.") and re.fullmatch(cross_attention, key[len("fusion."):]) is not None))
    if mode == "embeddings_only":
        return key != WORD_EMBEDDINGS
    raise ValueError(f"unknown text-encoder swap mode '{mode}'")


@dataclass
class TextSwapReport(LoadReport):
    """A :class:`LoadReport` of the English checkpoint's kept keys, plus where every other model key came from."""

    mode: str = "full"
    dropped: list[str] = field(default_factory=list)          # checkpoint keys the mode leaves out
    from_text_model: list[str] = field(default_factory=list)  # model keys from the new (multilingual) text model
    reinitialised: list[str] = field(default_factory=list)    # model keys neither source wrote: fresh init

    def summary(self) -> str:
        return str(self).splitlines()[0]

    def __str__(self) -> str:
        lines = [f"text-encoder swap ({self.mode}) from {self.source}: {len(self.loaded)} keys kept, "
                 f"{len(self.dropped)} dropped, {len(self.from_text_model)} from the new text model, "
                 f"{len(self.reinitialised)} re-initialised, {len(self.unexpected)} unexpected, "
                 f"{len(self.mismatched)} shape-mismatched"]
        for name in ("reinitialised", "unexpected", "mismatched", "resized"):
            lines += [f"  {name}: {key}" for key in getattr(self, name)]
        return "\n".join(lines)


def load_text_swap(model: X2VLM, path: str | os.PathLike, mode: str, from_text_model: list[str],
                   trusted: bool | None = None) -> TextSwapReport:
    """Load the parts of an English X²-VLM checkpoint (official ``.th`` or ours) that a swap in ``mode`` keeps
    (:func:`swap_keeps`) into ``model``, whose text side already holds the new text model's weights
    (``from_text_model``: those keys). Every model key ends up in exactly one of ``loaded``, ``from_text_model``
    and ``reinitialised``."""
    state, _ = to_our_layout(read_state_dict(path, trusted=trusted))
    state = complete_ties(state, model.state_dict())
    pattern = model.fusion.CROSS_ATTENTION_KEYS
    keep = {k: v for k, v in state.items() if swap_keeps(mode, k, pattern)}
    base = load_state_into(model, keep, str(path))
    aliases = alias_groups(model)
    loaded = set(base.loaded)  # resized keys included
    text = {a for k in from_text_model for a in aliases.get(k, {k})} - loaded
    dropped = sorted(k for k in state if k not in keep and not is_derived(k))
    report = TextSwapReport(**vars(base), mode=mode, dropped=dropped)
    report.from_text_model = sorted(text)
    report.reinitialised = sorted(k for k in base.missing if k not in text)
    report.missing = []
    return report


def copy_word_embeddings(model: X2VLM, folder: str | os.PathLike) -> list[str]:
    """Copy the input word embeddings of a Hugging Face model folder into ``model.text_encoder`` when the shapes
    agree; returns the keys written (none when they differ: the table then stays freshly initialised)."""
    state = read_state_dict(folder)
    source = [k for k in state if k.endswith("embeddings.word_embeddings.weight") and "position" not in k]
    target = model.text_encoder.get_input_embeddings().weight
    if len(source) != 1 or state[source[0]].shape != target.shape:
        return []
    with torch.no_grad():
        target.copy_(state[source[0]])
    return [WORD_EMBEDDINGS]


# ------------------------------------------------------------------------------------ entry points
def load_model_checkpoint(model: nn.Module, path: str | os.PathLike, strict: bool = False,
                          trusted: bool | None = None) -> LoadReport:
    """Load an official X²-VLM checkpoint (any layout of :mod:`models.official_layout`), one of ours, or a bare
    state dict into an X2VLM (or a task model). The model's ``adapt_checkpoint_state`` (if any) sees the state in
    our layout first (the VQA model derives its answer decoder from a pretraining checkpoint there)."""
    state, derived = to_our_layout(read_state_dict(path, trusted=trusted))
    state = complete_ties(state, model.state_dict())
    adapt = getattr(model, "adapt_checkpoint_state", None)
    if adapt is not None:
        state = adapt(state)
    report = load_state_into(model, state, str(path), strict=strict)
    report.derived += derived
    report.architecture = architecture_of(state)
    return report


def check_fits(report: LoadReport, architecture: str, allow_partial: bool = False) -> None:
    """Raise a one-line :class:`CheckpointError` when a load leaves part of the backbone (vision encoder, text
    encoder, fusion) at random init — keys missing, shape-mismatched, or a checkpoint of a bigger backbone —
    or when the checkpoint is of the other fusion architecture; ``allow_partial`` lets it pass. Heads new for
    the task (``report.fresh``) and heads of other tasks (``report.unused``) are fine."""
    if allow_partial:
        return
    escape = "or pass --allow-partial-load (model.allow_partial_load=true) to go on with those weights at init"
    if report.architecture is not None and report.architecture != architecture:
        raise CheckpointError(
            f"checkpoint {report.source} holds a model.architecture={report.architecture} model, but this model is "
            f"{architecture}: set model.architecture={report.architecture} (or use the config the checkpoint was "
            f"trained with), {escape}")
    mismatched = [m.key for m in report.mismatched]
    parts: dict[str, list[str]] = {}
    for kind, keys in (("missing", report.missing), ("shape-mismatched", mismatched),
                       ("not in the model", report.unexpected)):
        for key in keys:
            part = backbone_part(key)
            if part is not None and not (kind == "missing" and key in mismatched):
                parts.setdefault(part, []).append(kind)
    if not parts:
        return
    described = "; ".join(f"{part}: " + ", ".join(f"{kinds.count(k)} keys {k}" for k in dict.fromkeys(kinds))
                          for part, kinds in parts.items())
    example = (report.mismatched or _backbone(report.missing) or _backbone(report.unexpected))[0]
    raise CheckpointError(
        f"checkpoint {report.source} does not fit this model ({described}; e.g. {example}), so those weights "
        f"would stay at random init: use the model config the checkpoint was trained with (--config / "
        f"model.* overrides), {escape}")


def beit2_to_timm(state: dict[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    """BEiT-2 release layout → per-block layout: expand a shared ``rel_pos_bias`` table, drop the head."""
    out = {k: v for k, v in state.items() if not k.startswith("head.")}
    shared = out.pop("rel_pos_bias.relative_position_bias_table", None)
    if shared is not None:
        for i in range(depth):
            out.setdefault(f"blocks.{i}.attn.relative_position_bias_table", shared.clone())
    out.pop("rel_pos_bias.relative_position_index", None)
    return out


def load_vision_weights(encoder: BEiT2VisionEncoder, path: str | os.PathLike,
                        trusted: bool | None = None) -> LoadReport:
    """Initialise the vision encoder from a BEiT-2 release ``.pth`` or a timm BEiT state dict."""
    state = read_state_dict(path, trusted=trusted)
    if any(k.startswith("vision_encoder.") for k in state):
        state = {k[len("vision_encoder."):]: v for k, v in state.items() if k.startswith("vision_encoder.")}
    state = beit2_to_timm(state, len(encoder.blocks))
    return load_state_into(encoder, state, str(path), vision_prefix="")


def save_checkpoint_weights(model: nn.Module, output_dir: str | os.PathLike,
                            weights: dict[str, torch.Tensor] | None = None) -> Path:
    """Write the model's weights as ``model.safetensors`` (tied weights stored once), atomically. ``weights``: a
    state dict of ``model``'s keys to write instead of its own tensors (a training engine's export,
    :meth:`utils.engine.TrainEngine.export_weights`); tied keys are stored once, under the name safetensors keeps."""
    if weights is None:
        return atomic_write(Path(output_dir) / WEIGHTS_NAME, lambda tmp: save_model(model, str(tmp)))
    own = model.state_dict()
    if set(weights) != set(own):
        raise ValueError(f"weights to save do not match the model's keys (missing {sorted(set(own) - set(weights))[:3]}"
                         f", extra {sorted(set(weights) - set(own))[:3]})")
    keep = {min(group) for group in alias_groups(model).values()}
    tensors = {k: v.detach().contiguous() for k, v in weights.items() if k in keep}
    return atomic_write(Path(output_dir) / WEIGHTS_NAME,
                        lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
