"""Pretraining datasets (image-text, region-text, video-text), their collates, and the mixed-batch loader.

Every sample carries ``skipped`` (broken records replaced to produce it); collates sum it into ``_skipped``,
which :class:`MixedLoader` removes from the batch and accumulates per source (see ``MixedLoader.skipped``).
Texts cut at ``max_tokens`` are counted the same way: ``truncated`` per text, ``_truncated`` (and ``_texts``)
per batch, summed by each source's :class:`dataset.sampling.EpochStream` (``MixedLoader.counters``).
"""
from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, cast

import torch
from torch.utils.data import DataLoader

from dataset.annotation import AnnotationDataset
from dataset.io import BadSample, load_image, need
from dataset.sampling import EpochStream, sample_seed
from dataset.text import TextProcessor, choose_caption
from dataset.transforms import BoxAwareTransform, ImageTransform, check_box
from dataset.video import load_frames, select_clips

log = logging.getLogger("x2vlm.data")
WHOLE_IMAGE_BOX = (0.5, 0.5, 1.0, 1.0)
TEXT_KEYS = ("text_ids", "text_atts", "mlm_ids", "mlm_positions", "mlm_labels")


class ImageTextDataset(AnnotationDataset):
    """Records ``{image_key: path | base64, caption_key: str | [str] | {lang: str}}``."""

    name = "image-text"
    text: TextProcessor

    def __init__(self, files, text: TextProcessor, transform: ImageTransform, image_key: str = "binary",
                 caption_key: str = "desc", is_image_rpath: bool = False, language: str | None = None, **kw):
        super().__init__(files, text, **kw)
        self.transform, self.image_key, self.caption_key = transform, image_key, caption_key
        self.is_path, self.language = is_image_rpath, language

    def from_record(self, ann: dict) -> dict:
        fmt = f"an image-text record needs {self.image_key}, {self.caption_key} (data.images.*_key)"
        caption = choose_caption(need(ann, self.caption_key, fmt), self.language)
        image = load_image(need(ann, self.image_key, fmt), self.is_path, self.root)
        pixels, (caption,) = self.transform(image, [caption])
        return {"image": pixels, **self.text.encode(caption)}


class RegionTextDataset(AnnotationDataset):
    """Official region records ``{image_key, caption?, elems: [{bb: [x, y, w, h], caption, attributes?}]}``.

    One image yields up to ``max_regions`` rows: the whole-image caption (if any) then regions still visible
    in the box-aware crop. Region text = attributes + caption.
    """

    name = "region-text"
    text: TextProcessor
    sample_carries_seed = True

    def __init__(self, files, text: TextProcessor, transform: BoxAwareTransform, image_key: str = "binary",
                 caption_key: str = "caption", is_image_rpath: bool = False, max_regions: int = 5, **kw):
        super().__init__(files, text, **kw)
        self.transform, self.image_key, self.caption_key = transform, image_key, caption_key
        self.is_path, self.max_regions = is_image_rpath, max_regions

    def from_record(self, ann: dict) -> dict:
        fmt = f"a region record needs {self.image_key} (data.regions.image_key), elems"
        elems = need(ann, "elems", fmt)
        if not isinstance(elems, list) or not elems:
            raise BadSample("record has no 'elems'")
        image = load_image(need(ann, self.image_key, fmt), self.is_path, self.root)
        W, H = image.size
        boxes = torch.tensor([check_box(e["bb"], W, H, where=f"elem {k}") for k, e in enumerate(elems)])
        texts = []
        for e in elems:
            t = choose_caption(e[self.caption_key])
            if e.get("attributes"):
                t = f"{choose_caption(e['attributes'])} {t}"
            texts.append(t)
        has_caption = self.caption_key in ann and ann[self.caption_key]
        if has_caption:
            texts.append(choose_caption(ann[self.caption_key]))
        anchor = random.randrange(len(elems))
        pixels, norm_boxes, keep, texts = self.transform(image, boxes, anchor, texts)
        rows: list[tuple[str, tuple[float, ...], bool]] = []
        if has_caption:
            rows.append((texts[-1], WHOLE_IMAGE_BOX, False))
        order = [anchor] + random.sample([k for k in range(len(elems)) if k != anchor and keep[k]],
                                         int(keep.sum()) - 1)
        for k in order[: self.max_regions - len(rows)]:
            rows.append((texts[k], tuple(norm_boxes[k].tolist()), True))
        enc = [self.text.encode(t) for t, _, _ in rows]
        return {"image": pixels, "rows": enc, "boxes": [b for _, b, _ in rows],
                "is_region": [r for _, _, r in rows]}


class VideoTextDataset(AnnotationDataset):
    """Video-text records in the official layout ``{video_key: ..., caption_key: ..., is_continuous?: bool}``.

    The video field holds one of

    * a list of frames (base64 text, or frame paths with ``is_image_rpath``); a caption list → one is drawn;
    * a list of clips, each a list of frames, with one caption per clip (a plain caption string is accepted
      too). With ``is_continuous`` true the clips are consecutive pieces of one video: a contiguous run of
      clips holding at least ``min_frames_before_sampling`` frames is merged into one frame list and their
      captions are joined with spaces (only when ``combine_continuous_clips``; else a single clip is used).
      Otherwise one random clip and its caption are used. Clips captioned ``[Music]`` are never used
      (see :func:`dataset.video.select_clips`);
    * a frame folder, a video file or a ``.json`` file of base64 frames (path), or encoded video bytes.

    ``frame_len`` frames are then sampled from the (merged) frame list, one per equal segment.
    """

    name = "video-text"
    text: TextProcessor

    def __init__(self, files, text: TextProcessor, transform: ImageTransform, video_key: str = "video_frames",
                 caption_key: str = "text", is_image_rpath: bool = False, frame_len: int = 3,
                 combine_continuous_clips: bool = True, min_frames_before_sampling: int = 8, **kw):
        super().__init__(files, text, **kw)
        self.transform, self.video_key, self.caption_key = transform, video_key, caption_key
        self.is_path, self.frame_len = is_image_rpath, frame_len
        self.combine_continuous_clips = combine_continuous_clips
        self.min_frames_before_sampling = min_frames_before_sampling

    def select(self, ann: dict, rng: random.Random | None = None) -> tuple[Any, str]:
        """The record's frame source (merged frame list for clip records) and its caption text."""
        rng = rng or cast(random.Random, random)
        fmt = f"a video-text record needs {self.video_key}, {self.caption_key} (data.videos.*_key)"
        video, caption = need(ann, self.video_key, fmt), need(ann, self.caption_key, fmt)
        if isinstance(video, list) and video and all(isinstance(c, list) for c in video):
            per_clip = isinstance(caption, list)
            if per_clip and len(caption) != len(video):
                raise BadSample(f"{len(video)} clips but {len(caption)} clip captions")
            continuous = bool(ann.get("is_continuous", False))
            min_frames = self.min_frames_before_sampling if self.combine_continuous_clips else -1
            ids = select_clips(video, caption if per_clip else None, continuous, min_frames, rng)
            frames = [f for i in ids for f in video[i]]
            if per_clip:
                if not all(isinstance(caption[i], str) for i in ids):
                    raise BadSample("clip captions must be strings")
                caption = " ".join(caption[i] for i in ids)
            return frames, choose_caption(caption, rng=rng)
        return video, choose_caption(caption, rng=rng)

    def from_record(self, ann: dict) -> dict:
        video, caption = self.select(ann)
        frames = load_frames(video, self.frame_len, self.training, root=self.root, is_path=self.is_path)
        pixels, (caption,) = self.transform(frames, [caption])
        return {"video": pixels, **self.text.encode(caption)}


def _stack_text(rows: Sequence[dict]) -> dict[str, torch.Tensor]:
    return {k: torch.tensor([r[k] for r in rows], dtype=torch.long) for k in TEXT_KEYS if k in rows[0]}


def collate_image_text(samples: list[dict]) -> dict[str, Any]:
    """Image-text samples → contract batch (one text per image, whole-image boxes)."""
    n = len(samples)
    batch = {"images": torch.stack([s["image"] for s in samples]), **_stack_text(samples),
             "image_index": torch.arange(n), "boxes": torch.tensor([WHOLE_IMAGE_BOX] * n),
             "is_region": torch.zeros(n, dtype=torch.bool), "ids": torch.arange(n),
             "_skipped": sum(s["skipped"] for s in samples),
             "_truncated": sum(s.get("truncated", 0) for s in samples), "_texts": n}
    return batch


def collate_video_text(samples: list[dict]) -> dict[str, Any]:
    """Video-text samples → contract batch with ``videos`` (Bv, T, 3, H, W) and no ``images``."""
    batch = collate_image_text([{**s, "image": torch.zeros(0)} for s in samples])
    del batch["images"]
    batch["videos"] = torch.stack([s["video"] for s in samples])
    return batch


class RegionCollate:
    """Flatten region rows of several images to exactly ``batch_size`` rows (random subset, or rows repeated
    when there are too few; repeated rows keep their ITC id so they are not negatives of themselves)."""

    def __init__(self, batch_size: int):
        self.batch_size = batch_size

    def __call__(self, samples: list[dict]) -> dict[str, Any]:
        rows, owner, boxes, is_region = [], [], [], []
        for k, s in enumerate(samples):
            rows += s["rows"]
            owner += [k] * len(s["rows"])
            boxes += s["boxes"]
            is_region += s["is_region"]
        n = len(rows)
        keep = list(range(n))
        rng = random.Random(sample_seed(*(s.get("seed", 0) for s in samples)))  # same rows on resume
        if n >= self.batch_size:
            keep = sorted(rng.sample(keep, self.batch_size))
        else:
            keep += [rng.randrange(n) for _ in range(self.batch_size - n)]
        return {"images": torch.stack([s["image"] for s in samples]), **_stack_text([rows[j] for j in keep]),
                "image_index": torch.tensor([owner[j] for j in keep]),
                "boxes": torch.tensor([boxes[j] for j in keep], dtype=torch.float),
                "is_region": torch.tensor([is_region[j] for j in keep], dtype=torch.bool),
                "ids": torch.tensor(keep), "_skipped": sum(s["skipped"] for s in samples),
                "_truncated": sum(rows[j].get("truncated", 0) for j in keep), "_texts": len(keep)}


def merge_batches(batches: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Concatenate source batches into one contract batch: images first, then videos, in the visual pool;
    ``image_index`` and ``ids`` are offset so they stay unique across sources."""
    images = [b["images"] for b in batches if b.get("images") is not None]
    videos = [b["videos"] for b in batches if b.get("videos") is not None]
    n_images = sum(x.shape[0] for x in images)
    out: dict[str, Any] = {}
    if images:
        out["images"] = torch.cat(images)
    if videos:
        out["videos"] = torch.cat(videos)
    index, ids = [], []
    img_off, vid_off, id_off = 0, n_images, 0
    for b in batches:
        if b.get("videos") is not None:
            index.append(b["image_index"] + vid_off)
            vid_off += b["videos"].shape[0]
        else:
            index.append(b["image_index"] + img_off)
            img_off += b["images"].shape[0]
        ids.append(b["ids"] + id_off)
        id_off += int(b["ids"].max()) + 1
    out["image_index"], out["ids"] = torch.cat(index), torch.cat(ids)
    for key in ("boxes", "is_region", *TEXT_KEYS):
        if all(key in b for b in batches):
            out[key] = torch.cat([b[key] for b in batches])
    return out


class MixedLoader:
    """Draws one batch from each source loader per step and merges them (see :func:`merge_batches`).

    Sources restart (with ``sampler.set_epoch``) when exhausted, so iteration is endless; ``steps`` bounds it.
    ``id_offset`` is added to every batch's ITC ``ids`` (distinct per rank). :meth:`state_dict` is the data
    position (epoch and batches drawn per source); :meth:`load_state_dict` continues from it exactly:
    map-style sources skip indices in their sampler, stream sources re-read (and drop) what they had yielded.
    """

    def __init__(self, loaders: dict[str, DataLoader], steps: int | None = None, id_offset: int = 0):
        if not loaders:
            raise ValueError("MixedLoader needs at least one source loader")
        self.loaders, self.steps, self.id_offset = loaders, steps, id_offset
        self.streams = {name: EpochStream(loader, name) for name, loader in loaders.items()}
        self.skipped = dict.fromkeys(loaders, 0)

    @property
    def epochs(self) -> dict[str, int]:
        return {name: s.epoch for name, s in self.streams.items()}

    def counters(self) -> dict[str, int]:
        """``truncated_texts``: texts cut at ``max_tokens`` over all sources since this process started
        (each source's epoch-end line has its own count; skipped samples: :attr:`skipped`)."""
        return {"truncated_texts": sum(s.counters()["truncated_texts"] for s in self.streams.values())}

    def state_dict(self) -> dict[str, Mapping[str, int | None]]:
        return {"epochs": self.epochs, "consumed": {name: s.consumed for name, s in self.streams.items()},
                "records": {name: s.records for name, s in self.streams.items()}, "skipped": dict(self.skipped)}

    def load_state_dict(self, state: dict[str, dict[str, int]]) -> None:
        if set(state["epochs"]) != set(self.loaders):
            raise ValueError(f"data position is for sources {sorted(state['epochs'])}, this run has "
                             f"{sorted(self.loaders)} (data.train_file* changed?)")
        for name, stream in self.streams.items():
            stream.load_state_dict({"epoch": state["epochs"][name], "consumed": state["consumed"][name],
                                    "records": state.get("records", {}).get(name)})
        self.skipped.update(state["skipped"])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        step = 0
        while self.steps is None or step < self.steps:
            parts = []
            for name in self.loaders:
                b = next(self.streams[name])
                n = b.pop("_skipped", 0)
                if n:
                    self.skipped[name] += n
                    log.info("data source %s: %d broken samples skipped so far", name, self.skipped[name])
                parts.append(b)
            batch = merge_batches(parts)
            if self.id_offset:
                batch["ids"] = batch["ids"] + self.id_offset
            yield batch
            step += 1

    def __len__(self) -> int:
        if self.steps is None:
            raise TypeError("endless MixedLoader has no length")
        return self.steps
