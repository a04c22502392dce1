"""Data pipeline: annotation readers, box-aware transforms, MLM masking, pretraining / fine-tuning datasets.

Entry points: :func:`load_tokenizer`, :func:`create_dataset`, :func:`create_loader`, :func:`create_pretrain_loader`.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from torch.utils.data import DataLoader, Dataset, IterableDataset

from dataset.annotation import AnnotationDataset
from dataset.io import set_jpeg_draft, set_max_image_pixels
from dataset.masking import MaskGenerator
from dataset.pretrain import (
    ImageTextDataset,
    MixedLoader,
    RegionCollate,
    RegionTextDataset,
    VideoTextDataset,
    collate_image_text,
    collate_video_text,
)
from dataset.sampling import ResumableDistributedSampler
from dataset.tasks import (
    CaptionDataset,
    GroundingDataset,
    NLVRDataset,
    RetrievalEvalDataset,
    RetrievalTrainDataset,
    VideoQADataset,
    VQADataset,
    collate_dict,
    collate_vqa,
)
from dataset.text import TextProcessor, build_tokenizer
from dataset.transforms import BoxAwareTransform, ImageTransform
from dataset.webdata import ShardStream
from dataset.workers import ignore_stop_signals
from utils.config import ConfigError

log = logging.getLogger("x2vlm.data")
TASKS = ("pretrain_images", "pretrain_regions", "pretrain_videos", "retrieval", "video_retrieval", "vqa",
         "nlvr2", "grounding", "captioning", "video_qa")


def load_tokenizer(cfg: dict):
    """The text encoder's tokenizer (``model.text``; see :func:`dataset.text.build_tokenizer`)."""
    return build_tokenizer(cfg["model"]["text"])


def text_processor(cfg: dict, tokenizer, mlm: bool = True) -> TextProcessor:
    d = cfg["data"]
    masker = MaskGenerator(tokenizer, d["mask_prob"], d["max_masks"], d["skipgram_prb"], d["skipgram_size"],
                           d["mask_whole_word"]) if mlm else None
    return TextProcessor(tokenizer, d["max_tokens"], d["max_words"], masker)


def image_transform(cfg: dict, train: bool, pretrain: bool = False, hflip: str | None = None) -> ImageTransform:
    d = cfg["data"]
    scale = d["crop_scale_pretrain"] if pretrain else d["crop_scale_finetune"]
    return ImageTransform(cfg["model"]["image_res"], train, scale=tuple(scale), hflip=hflip or d["hflip"],
                          randaugment=d["randaugment"], magnitude=d["randaugment_magnitude"], draft=d["jpeg_draft"],
                          kernels=d["randaugment_kernels"])


def box_transform(cfg: dict, train: bool = True) -> BoxAwareTransform:
    d = cfg["data"]
    return BoxAwareTransform(cfg["model"]["image_res"], d["regions"]["min_perc_in_image"], hflip=d["hflip"],
                             randaugment=d["randaugment"], magnitude=d["randaugment_magnitude"], train=train,
                             draft=d["jpeg_draft"], kernels=d["randaugment_kernels"])


def _is_shards(files: Any) -> bool:
    files = [files] if isinstance(files, str) else list(files)
    return bool(files) and all(str(f).endswith(".tar") or ".tar" in str(f).split("/")[-1] for f in files)


def _image_text(files, text, cfg: dict, train: bool, sec: dict, common: dict) -> AnnotationDataset:
    return ImageTextDataset(files, text, image_transform(cfg, train, True), sec["image_key"], sec["caption_key"],
                            sec["is_image_rpath"], sec["language"], **common)


def _region_text(files, text, cfg: dict, train: bool, sec: dict, common: dict) -> AnnotationDataset:
    return RegionTextDataset(files, text, box_transform(cfg, train), sec["image_key"], sec["caption_key"],
                             sec["is_image_rpath"], sec["max_regions"], **common)


def _video_text(files, text, cfg: dict, train: bool, sec: dict, common: dict) -> AnnotationDataset:
    # official clip merging (configs/pretrain/x2vlm_*_stage2.yaml): on unless the config says otherwise
    return VideoTextDataset(files, text, image_transform(cfg, train, True), sec["video_key"], sec["caption_key"],
                            sec["is_image_rpath"], sec["frame_len"],
                            combine_continuous_clips=sec["combine_continuous_clips"],
                            min_frames_before_sampling=sec["min_frames_before_sampling"], **common)


#: pretraining source → (its files' config key under ``data``, the dataset builder)
PRETRAIN_SOURCES: dict[str, tuple[str, Callable[..., AnnotationDataset]]] = {
    "images": ("train_file", _image_text), "regions": ("train_file_regions", _region_text),
    "videos": ("train_file_videos", _video_text)}


def _pretrain_dataset(kind: str, cfg: dict, train: bool, tokenizer, rank: int, world_size: int,
                      common: dict) -> Dataset | IterableDataset:
    """A pretraining source: map-style over annotation files, or a webdataset stream over ``.tar`` shards (the
    dataset then only turns records into samples)."""
    d = cfg["data"]
    key, build = PRETRAIN_SOURCES[kind]
    files, sec = d[key], d[kind]
    shards = _is_shards(files)
    ds = build([] if shards else files, text_processor(cfg, tokenizer or load_tokenizer(cfg)), cfg, train, sec,
               common)
    if not shards:
        return ds
    return ShardStream(files, ds.from_record, image_key=sec.get("image_key", "binary"),
                       video_key=sec.get("video_key"), rank=rank, world_size=world_size, seed=cfg["seed"],
                       shuffle=train, shuffle_buffer=d["wds_shuffle_buffer"] if train else 0, training=train,
                       max_bad_fraction=d["max_bad_fraction"], bad_window=d["bad_window"])


def _retrieval(files, tf, cfg: dict, train: bool, common: dict) -> Dataset:
    return RetrievalTrainDataset(files, tf, **common) if train else RetrievalEvalDataset(files, tf, **common)


def _video_retrieval(files, tf, cfg: dict, train: bool, common: dict) -> Dataset:
    kw = {"image_key": "video", "is_video": True, "frame_len": cfg["data"]["videos"]["frame_len"], **common}
    return RetrievalTrainDataset(files, tf, index_key="video_id", **kw) if train else \
        RetrievalEvalDataset(files, tf, **kw)


def _vqa(files, tf, cfg: dict, train: bool, common: dict) -> Dataset:
    ft = cfg["data"]["finetune"]
    return VQADataset(files, tf, roots=ft["roots"], answer_list=None if train else ft["answer_list"], **common)


def _grounding(files, tf, cfg: dict, train: bool, common: dict) -> Dataset:
    return GroundingDataset(files, box_transform(cfg) if train else tf, **common)


def _captioning(files, tf, cfg: dict, train: bool, common: dict) -> Dataset:
    return CaptionDataset(files, tf, prompt=cfg["data"]["finetune"]["prompt"], **common)


def _video_qa(files, tf, cfg: dict, train: bool, common: dict) -> Dataset:
    return VideoQADataset(files, tf, ans2label=cfg["data"]["finetune"]["ans2label"],
                          frame_len=cfg["data"]["videos"]["frame_len"], **common)


#: fine-tuning task → its dataset builder ``(files, image transform, cfg, train, common kwargs)``
TASK_DATASETS: dict[str, Callable[..., Dataset]] = {
    "retrieval": _retrieval, "video_retrieval": _video_retrieval, "vqa": _vqa,
    "nlvr2": lambda files, tf, cfg, train, common: NLVRDataset(files, tf, **common),
    "grounding": _grounding, "captioning": _captioning, "video_qa": _video_qa}


def create_dataset(task: str, cfg: dict, split: str | list[str] = "train", tokenizer=None, rank: int = 0,
                   world_size: int = 1) -> Dataset | IterableDataset:
    """One dataset: ``pretrain_{images,regions,videos}`` (train files from ``data.train_file*``,
    :data:`PRETRAIN_SOURCES`) or a fine-tuning task (files from ``data.finetune.{split}_file``, or ``split``
    itself as the files; :data:`TASK_DATASETS`). ``.tar`` pretraining files are read as webdataset shards."""
    d = cfg["data"]
    train = split == "train"
    try:
        set_max_image_pixels(d["max_image_pixels"])  # process-wide (and for its workers): every image reader
    except ValueError as e:
        raise ConfigError(str(e)) from e
    set_jpeg_draft(d["jpeg_draft"])  # likewise: JPEGs opened, decoded by the transform (at reduced scale)
    common = {"root": d["root"], "training": train, "max_bad_fraction": d["max_bad_fraction"],
              "bad_window": d["bad_window"]}
    if task.startswith("pretrain_") and task.removeprefix("pretrain_") in PRETRAIN_SOURCES:
        return _pretrain_dataset(task.removeprefix("pretrain_"), cfg, train, tokenizer, rank, world_size, common)
    if task not in TASK_DATASETS:
        raise ValueError(f"unknown dataset task {task!r}; known: {', '.join(TASKS)}")
    files = d["finetune"][f"{split}_file"] if split in ("train", "val", "test") else split
    return TASK_DATASETS[task](files, image_transform(cfg, train), cfg, train, common)


def _region_collate(cfg: dict | None) -> RegionCollate:
    if cfg is None:
        raise TypeError("collate_for('pretrain_regions') needs the config (data.regions.batch_size)")
    return RegionCollate(cfg["data"]["regions"]["batch_size"])


#: the batch collate of each dataset task (:data:`TASKS`), built from the config where it needs it
COLLATES: dict[str, Callable[[dict | None], Callable]] = {
    "pretrain_images": lambda cfg: collate_image_text, "pretrain_videos": lambda cfg: collate_video_text,
    "pretrain_regions": _region_collate, "vqa": lambda cfg: collate_vqa,
    **{task: (lambda cfg: collate_dict) for task in TASK_DATASETS if task != "vqa"}}


def collate_for(task: str, cfg: dict | None = None) -> Callable:
    """The collate of ``task``'s batches (:data:`COLLATES`); ``pretrain_regions`` needs ``cfg``."""
    if task not in COLLATES:
        raise ValueError(f"unknown dataset task {task!r}; known: {', '.join(TASKS)}")
    return COLLATES[task](cfg)


def create_loader(dataset: Dataset | IterableDataset, batch_size: int, collate_fn, num_workers: int = 0,
                  training: bool = True, rank: int = 0, world_size: int = 1, seed: int = 0) -> DataLoader:
    """DataLoader with fixed batch sizes in training (``drop_last``) and a rank-split sampler for map-style data."""
    sampler = None
    if hasattr(dataset, "set_seed"):
        dataset.set_seed(seed)
    if not isinstance(dataset, IterableDataset):
        sampler = ResumableDistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=training,
                                              seed=seed, drop_last=training and world_size > 1)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      collate_fn=collate_fn, drop_last=training, pin_memory=False,
                      persistent_workers=False, worker_init_fn=ignore_stop_signals if num_workers else None)


def create_pretrain_loader(cfg: dict, rank: int | None = None, world_size: int | None = None,
                           steps: int | None = None, tokenizer=None) -> MixedLoader:
    """Mixed pretraining loader: one source per non-empty ``data.train_file*``, merged each step."""
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
    d = cfg["data"]
    tokenizer = tokenizer or load_tokenizer(cfg)
    loaders = {}
    for task, key, bs in (("pretrain_images", "train_file", d["images"]["batch_size"]),
                          ("pretrain_regions", "train_file_regions", d["regions"]["max_images"]),
                          ("pretrain_videos", "train_file_videos", d["videos"]["batch_size"])):
        if d[key]:
            ds = create_dataset(task, cfg, "train", tokenizer, rank, world_size)
            loaders[task.removeprefix("pretrain_")] = create_loader(
                ds, bs, collate_for(task, cfg), d["num_workers"], True, rank, world_size, cfg["seed"])
    if not loaders:
        raise ConfigError("no pretraining data: set data.train_file, data.train_file_regions or data.train_file_videos")
    # ITC ids are per-batch identities: offset them per rank so gathered ids never collide across ranks
    return MixedLoader(loaders, steps, id_offset=rank << 32)


__all__ = ["create_dataset", "create_loader", "create_pretrain_loader", "load_tokenizer", "collate_for",
           "text_processor", "image_transform", "box_transform", "MixedLoader", "TASKS"]
