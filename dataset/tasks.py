"""Fine-tuning datasets in the official annotation formats (JSON arrays or JSON-lines, same field names).

Samples are dicts; :func:`collate_dict` stacks tensors, turns numbers into tensors and keeps strings as lists.
Texts are cleaned (``pre_caption`` / ``pre_question``) and tokenised by the task's training loop.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import torch

from dataset.io import AnnotationIndex, BadSample, load_image, read_json
from dataset.pretrain import _AnnotationDataset
from dataset.text import pre_caption, pre_question
from dataset.transforms import BoxAwareTransform, ImageTransform, check_box
from dataset.video import load_frames


def collate_dict(samples: list[dict]) -> dict[str, Any]:
    """Stack per-key: tensors → stacked, bool/int/float → tensor, anything else → list. Sums ``skipped``."""
    out: dict[str, Any] = {}
    for key in samples[0]:
        vals = [s[key] for s in samples]
        if key == "skipped":
            out["_skipped"] = sum(vals)
        elif isinstance(vals[0], torch.Tensor):
            out[key] = torch.stack(vals)
        elif isinstance(vals[0], bool | int | float):
            out[key] = torch.tensor(vals)
        else:
            out[key] = vals
    return out


def _ids(index: AnnotationIndex, key: str) -> dict[Any, int]:
    """Dense ids for the distinct values of ``key`` (e.g. image_id → 0..n-1)."""
    out: dict[Any, int] = {}
    for i in range(len(index)):
        out.setdefault(str(index.get(i)[key]), len(out))
    return out


class _TaskDataset(_AnnotationDataset):
    def __init__(self, files, transform: ImageTransform, root: str | None = None, training: bool = True,
                 max_words: int = 30, **kw):
        super().__init__(files, text=None, training=training, root=root, **kw)
        self.transform, self.max_words = transform, max_words

    def image(self, path: str, texts: list[str] = ()) -> tuple[torch.Tensor, list[str]]:
        return self.transform(load_image(path, True, self.root), texts)


class RetrievalTrainDataset(_TaskDataset):
    """``[{image, caption, image_id}]`` (COCO / Flickr30k Karpathy train; also Multi30K / multilingual COCO)."""

    name = "retrieval-train"

    def __init__(self, files, transform, image_key: str = "image", text_key: str = "caption",
                 index_key: str = "image_id", is_video: bool = False, frame_len: int = 1, **kw):
        super().__init__(files, transform, **kw)
        self.image_key, self.text_key, self.index_key = image_key, text_key, index_key
        self.is_video, self.frame_len = is_video, frame_len
        self.img_ids = _ids(self.index, index_key)

    def load(self, i: int) -> dict:
        ann = self.index.get(i)
        caption = ann[self.text_key]
        if isinstance(caption, list):
            caption = random.choice(caption)
        if self.is_video:
            frames = load_frames(ann[self.image_key], self.frame_len, self.training, root=self.root)
            pixels, (caption,) = self.transform(frames, [caption])
        else:
            pixels, (caption,) = self.image(ann[self.image_key], [caption])
        return {"image": pixels, "text": pre_caption(caption, self.max_words),
                "idx": self.img_ids[str(ann[self.index_key])]}


class RetrievalEvalDataset(_TaskDataset):
    """``[{image, caption: [str, ...]}]``: items are images; ``text``, ``img2txt``, ``txt2img`` for scoring."""

    name = "retrieval-eval"

    def __init__(self, files, transform, image_key: str = "image", text_key: str = "caption",
                 is_video: bool = False, frame_len: int = 1, **kw):
        kw["training"] = False
        super().__init__(files, transform, **kw)
        self.image_key, self.is_video, self.frame_len = image_key, is_video, frame_len
        self.text: list[str] = []
        self.img2txt: dict[int, list[int]] = {}
        self.txt2img: dict[int, int] = {}
        for i in range(len(self.index)):
            caps = self.index.get(i)[text_key]
            caps = caps if isinstance(caps, list) else [caps]
            self.img2txt[i] = []
            for c in caps:
                try:
                    self.text.append(pre_caption(c, self.max_words))
                except BadSample as e:
                    raise BadSample(f"{self.index.where(i)}: {e}") from e
                self.img2txt[i].append(len(self.text) - 1)
                self.txt2img[len(self.text) - 1] = i

    def load(self, i: int) -> dict:
        ann = self.index.get(i)
        if self.is_video:
            pixels, _ = self.transform(load_frames(ann[self.image_key], self.frame_len, False, root=self.root))
        else:
            pixels, _ = self.image(ann[self.image_key])
        return {"image": pixels, "index": i}


class VQADataset(_TaskDataset):
    """``[{question_id, image, question, answer: [str...], dataset?: vqa|vg}]``. Train: answers with weights
    (each annotator's answer counts 1/n; VG answers weight 0.5). ``roots`` maps the ``dataset`` field to
    an image folder. Test: ``answer_list`` (JSON list) for ranking."""

    name = "vqa"

    def __init__(self, files, transform, roots: dict[str, str] | None = None, answer_list: str | None = None,
                 is_video: bool = False, frame_len: int = 1, **kw):
        super().__init__(files, transform, **kw)
        self.roots = roots or {}
        self.answer_list = read_json(answer_list) if answer_list else None
        self.is_video, self.frame_len = is_video, frame_len

    def load(self, i: int) -> dict:
        ann = self.index.get(i)
        root = self.roots.get(ann.get("dataset", ""), self.root)
        path = ann["image"] if not root or os.path.isabs(ann["image"]) else str(Path(root) / ann["image"])
        answers = ann.get("answer", [])
        answers = answers if isinstance(answers, list) else [answers]
        question = ann["question"]
        texts = [question, *answers]
        if self.is_video:
            pixels, texts = self.transform(load_frames(path, self.frame_len, self.training), texts)
        else:
            pixels, texts = self.transform(load_image(path, True), texts)
        question = pre_question(texts[0], self.max_words if self.training else 50)
        if not self.training:
            return {"image": pixels, "question": question, "question_id": ann["question_id"]}
        if not answers:
            raise BadSample("training VQA record has no answer")
        weights: dict[str, float] = {}
        for a in texts[1:]:
            weights[a] = weights.get(a, 0.0) + (0.5 if ann.get("dataset") == "vg" else 1 / len(answers))
        return {"image": pixels, "question": question, "answers": list(weights), "weights": list(weights.values())}


def collate_vqa(samples: list[dict]) -> dict[str, Any]:
    """VQA train batch: answers flattened, ``n_answers`` per question (the official layout)."""
    out = collate_dict([{k: v for k, v in s.items() if k not in ("answers", "weights")} for s in samples])
    if "answers" in samples[0]:
        out["answers"] = [a for s in samples for a in s["answers"]]
        out["weights"] = torch.tensor([w for s in samples for w in s["weights"]])
        out["n_answers"] = torch.tensor([len(s["answers"]) for s in samples])
    return out


class NLVRDataset(_TaskDataset):
    """``[{images: [left, right], sentence, label: true|false|"True"|"False"}]`` (NLVR2)."""

    name = "nlvr2"

    def load(self, i: int) -> dict:
        ann = self.index.get(i)
        label = ann["label"]
        if label not in (True, False, "True", "False"):
            raise BadSample(f"unsupported NLVR2 label {label!r}")
        left, right = ann["images"]
        sentence = ann["sentence"]
        img0, (sentence,) = self.image(left, [sentence])
        img1, _ = self.image(right)
        return {"image0": img0, "image1": img1, "text": pre_caption(sentence, self.max_words),
                "label": int(label in (True, "True"))}


class GroundingDataset(_TaskDataset):
    """RefCOCO+: ``[{image, text, ref_id, bbox?: [x, y, w, h]}]``. Train (needs ``bbox``; a BoxAwareTransform):
    crop/flip, target box normalised (cx, cy, w, h). Eval (an eval ImageTransform): resized image, ``ref_id``
    (and ``bbox`` in pixels if given)."""

    name = "grounding"

    def __init__(self, files, transform: BoxAwareTransform | ImageTransform, **kw):
        super().__init__(files, transform, **kw)

    def load(self, i: int) -> dict:
        ann = self.index.get(i)
        image = load_image(ann["image"], True, self.root)
        text = ann["text"]
        if not self.training:
            pixels, _ = self.transform(image)  # an eval ImageTransform
            out = {"image": pixels, "text": pre_caption(text, self.max_words), "ref_id": ann["ref_id"],
                   "image_size": torch.tensor(image.size)}
            if "bbox" in ann:
                out["bbox"] = torch.tensor(ann["bbox"], dtype=torch.float)
            return out
        box = torch.tensor([check_box(ann["bbox"], *image.size, where="bbox")])
        pixels, target, _, (text,) = self.transform(image, box, 0, [text])
        return {"image": pixels, "text": pre_caption(text, self.max_words), "target_bbox": target[0]}


class CaptionDataset(_TaskDataset):
    """COCO captions. Train ``[{image, caption, image_id}]``; eval ``[{image, image_id, caption?: [...]}]``."""

    name = "captioning"

    def __init__(self, files, transform, prompt: str = "", **kw):
        super().__init__(files, transform, **kw)
        self.prompt = prompt

    def load(self, i: int) -> dict:
        ann = self.index.get(i)
        if not self.training:
            pixels, _ = self.image(ann["image"])
            return {"image": pixels, "image_id": ann.get("image_id", i)}
        caption = ann["caption"] if isinstance(ann["caption"], str) else random.choice(ann["caption"])
        pixels, (caption,) = self.image(ann["image"], [caption])
        return {"image": pixels, "text": self.prompt + pre_caption(caption, self.max_words),
                "image_id": ann.get("image_id", i)}


class VideoQADataset(_TaskDataset):
    """MSRVTT-QA / MSVD-QA, JSON-lines ``{video_id, question, answer}`` (video_id → video file or frame folder
    under ``root``), answers classified with ``ans2label`` (JSON {answer: label}); unknown answer → -100."""

    name = "video-qa"

    def __init__(self, files, transform, ans2label: str, frame_len: int = 5, video_key: str = "video_id", **kw):
        super().__init__(files, transform, **kw)
        self.ans2label = read_json(ans2label)
        self.frame_len, self.video_key = frame_len, video_key

    def load(self, i: int) -> dict:
        ann = self.index.get(i)
        frames = load_frames(str(ann[self.video_key]), self.frame_len, self.training, root=self.root)
        pixels, (question,) = self.transform(frames, [ann["question"]])
        return {"video": pixels, "question": pre_question(question, self.max_words if self.training else 50),
                "label": self.ans2label.get(ann.get("answer"), -100), "question_id": ann.get("question_id", i)}
