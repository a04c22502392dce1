"""Fine-tuning datasets in the official annotation formats (JSON arrays or JSON-lines, same field names).

Image fields hold a path (joined to ``root`` when relative) or the base64 text of an encoded image (detected
per value, :func:`dataset.io.looks_like_base64`); video fields as :func:`dataset.video.load_frames` reads them.
A record without a field its format needs is a :class:`dataset.io.MissingField` naming the file, the record
and the field (skipped and counted in training, raised in evaluation, like any broken sample).

Samples are dicts; :func:`collate_dict` stacks tensors, turns numbers into tensors and keeps strings as lists.
Texts are cleaned (``pre_caption`` / ``pre_question``) and tokenised by the task's training loop.
"""
from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch

from dataset.annotation import AnnotationDataset
from dataset.io import AnnotationIndex, BadSample, load_image, looks_like_base64, need, read_json
from dataset.text import TEST_QUESTION_WORDS, pre_caption, pre_question
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


def _identity(ann: dict, key: str, fallback: str) -> str:
    """The record's ``key`` value as a string, else its ``fallback`` field's (an image path, or a digest of
    base64 image text, so the table does not hold the images)."""
    if key in ann:
        return str(ann[key])
    value = ann.get(fallback)
    if looks_like_base64(value):
        return "b64:" + hashlib.blake2b(value.encode("ascii"), digest_size=16).hexdigest()
    return f"{fallback}:{value}"


def _ids(index: AnnotationIndex, key: str, fallback: str) -> dict[Any, int]:
    """Dense ids for the distinct values of ``key`` (e.g. image_id → 0..n-1); records without ``key`` are
    identified by their ``fallback`` field (the image), so captions of one image share an id."""
    out: dict[Any, int] = {}
    for i in range(len(index)):
        try:
            out.setdefault(_identity(index.get(i), key, fallback), len(out))
        except BadSample:
            continue  # an unreadable line: skipped (training) or reported (evaluation) when it is loaded
    return out


class _TaskDataset(AnnotationDataset):
    #: the fields a record of this format needs (for :class:`dataset.io.MissingField` messages)
    fields = ""

    def __init__(self, files, transform: ImageTransform, root: str | None = None, training: bool = True,
                 max_words: int = 30, **kw):
        super().__init__(files, text=None, training=training, root=root, **kw)
        self.transform, self.max_words = transform, max_words

    def need(self, ann: dict, key: str) -> Any:
        """``ann[key]``, or a :class:`dataset.io.MissingField` that says which fields the format needs."""
        return need(ann, key, f"a {self.name} record needs {self.fields}" if self.fields else "")

    def image(self, value: str, texts: Sequence[str] = ()) -> tuple[torch.Tensor, list[str]]:
        """``value`` (a path or base64 text) loaded and transformed with ``texts``."""
        return self.transform(load_image(value, None, self.root), texts)


class RetrievalTrainDataset(_TaskDataset):
    """``[{image, caption, image_id?}]`` (COCO / Flickr30k Karpathy train; also Multi30K / multilingual COCO).

    ``idx`` (captions with the same one are not each other's ITC negatives) numbers the distinct ``image_id``
    values; a record without ``image_id`` is identified by its image field."""

    name = "retrieval-train"

    def __init__(self, files, transform, image_key: str = "image", text_key: str = "caption",
                 index_key: str = "image_id", is_video: bool = False, frame_len: int = 1, **kw):
        super().__init__(files, transform, **kw)
        self.image_key, self.text_key, self.index_key = image_key, text_key, index_key
        self.fields = f"{image_key}, {text_key}; {index_key} is optional"
        self.is_video, self.frame_len = is_video, frame_len
        self.img_ids = _ids(self.index, index_key, image_key)

    def load(self, i: int) -> dict:
        ann = self.index.get(i)
        caption = self.need(ann, self.text_key)
        if isinstance(caption, list):
            if not caption:
                raise BadSample(f"'{self.text_key}' is an empty list")
            caption = random.choice(caption)
        visual = self.need(ann, self.image_key)
        if self.is_video:
            frames = load_frames(visual, self.frame_len, self.training, root=self.root)
            pixels, (caption,) = self.transform(frames, [caption])
        else:
            pixels, (caption,) = self.image(visual, [caption])
        return {"image": pixels, "text": pre_caption(caption, self.max_words),
                "idx": self.img_ids[_identity(ann, self.index_key, self.image_key)]}


class RetrievalEvalDataset(_TaskDataset):
    """``[{image, caption: [str, ...]}]``: items are images; ``text``, ``img2txt``, ``txt2img`` for scoring."""

    name = "retrieval-eval"

    def __init__(self, files, transform, image_key: str = "image", text_key: str = "caption",
                 is_video: bool = False, frame_len: int = 1, **kw):
        kw["training"] = False
        super().__init__(files, transform, **kw)
        self.image_key, self.is_video, self.frame_len = image_key, is_video, frame_len
        self.fields = f"{image_key}, {text_key} (a string or a list of them)"
        self.text: list[str] = []
        self.img2txt: dict[int, list[int]] = {}
        self.txt2img: dict[int, int] = {}
        for i in range(len(self.index)):
            try:
                caps = self.need(self.index.get(i), text_key)
                caps = caps if isinstance(caps, list) else [caps]
                texts = [pre_caption(c, self.max_words) for c in caps]
            except BadSample as e:
                msg = str(e)
                raise type(e)(msg if msg.startswith(self.index.where(i)) else f"{self.index.where(i)}: {msg}") \
                    from e
            self.img2txt[i] = []
            for t in texts:
                self.text.append(t)
                self.img2txt[i].append(len(self.text) - 1)
                self.txt2img[len(self.text) - 1] = i

    def load(self, i: int) -> dict:
        visual = self.need(self.index.get(i), self.image_key)
        if self.is_video:
            pixels, _ = self.transform(load_frames(visual, self.frame_len, False, root=self.root))
        else:
            pixels, _ = self.image(visual)
        return {"image": pixels, "index": i}


class VQADataset(_TaskDataset):
    """``[{question_id, image, question, answer: [str...], dataset?: vqa|vg}]``. Train: answers with weights
    (each annotator's answer counts 1/n; VG answers weight 0.5). ``roots`` maps the ``dataset`` field to
    an image folder. Test: ``answer_list`` (JSON list) for ranking."""

    name = "vqa"
    fields = "image, question, answer (training), question_id (evaluation); dataset is optional"

    def __init__(self, files, transform, roots: dict[str, str] | None = None, answer_list: str | None = None,
                 is_video: bool = False, frame_len: int = 1, **kw):
        super().__init__(files, transform, **kw)
        self.roots = roots or {}
        self.answer_list = read_json(answer_list) if answer_list else None
        self.is_video, self.frame_len = is_video, frame_len

    def load(self, i: int) -> dict:
        ann = self.index.get(i)
        root = self.roots.get(ann.get("dataset", ""), self.root)
        image = self.need(ann, "image")
        question = self.need(ann, "question")
        answers = ann.get("answer", [])
        answers = answers if isinstance(answers, list) else [answers]
        texts = [question, *answers]
        if self.is_video:
            path = image if not root or os.path.isabs(image) else str(Path(root) / image)
            pixels, texts = self.transform(load_frames(path, self.frame_len, self.training), texts)
        else:
            pixels, texts = self.transform(load_image(image, None, root), texts)
        question = pre_question(texts[0], self.max_words if self.training else TEST_QUESTION_WORDS)
        if not self.training:
            return {"image": pixels, "question": question, "question_id": self.need(ann, "question_id")}
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
    fields = "images (two), sentence, label"

    def load(self, i: int) -> dict:
        ann = self.index.get(i)
        label = self.need(ann, "label")
        if label not in (True, False, "True", "False"):
            raise BadSample(f"unsupported NLVR2 label {label!r}")
        images = self.need(ann, "images")
        if not isinstance(images, list) or len(images) != 2:
            raise BadSample(f"'images' must be a list of two images, got {type(images).__name__}"
                            f"{f' of {len(images)}' if isinstance(images, list) else ''}")
        left, right = images
        sentence = self.need(ann, "sentence")
        img0, (sentence,) = self.image(left, [sentence])
        img1, _ = self.image(right)
        return {"image0": img0, "image1": img1, "text": pre_caption(sentence, self.max_words),
                "label": int(label in (True, "True"))}


class GroundingDataset(_TaskDataset):
    """RefCOCO+: ``[{image, text, bbox: [x, y, w, h], ref_id?}]``. Train (a BoxAwareTransform): crop/flip,
    target box normalised (cx, cy, w, h). Eval (an eval ImageTransform): resized image, ``bbox`` in pixels,
    ``image_size`` and ``ref_id`` (the record's number when the record has none; scoring does not use it).
    Boxes are checked alike in both (:func:`dataset.transforms.check_box`): a bad one is a skipped, counted
    sample in training and an error naming file and record in evaluation (which must not drop samples).
    Boxes are in the pixels of the image as displayed, i.e. after its EXIF orientation
    (:func:`dataset.io.to_rgb`)."""

    name = "grounding"
    fields = "image, text, bbox [x, y, w, h] in pixels; ref_id is optional"

    def __init__(self, files, transform: BoxAwareTransform | ImageTransform, **kw):
        super().__init__(files, cast(ImageTransform, transform), **kw)  # training: a BoxAwareTransform (load)

    def load(self, i: int) -> dict:
        ann = self.index.get(i)
        text, bbox = self.need(ann, "text"), self.need(ann, "bbox")
        image = load_image(self.need(ann, "image"), None, self.root)
        if not self.training:
            # the training check (4 numbers, positive area, inside the image): a bad box stops evaluation with
            # file:record (from _load_named) instead of being scored as a miss; the box is scored as written
            check_box(bbox, *image.size, where="bbox")
            pixels, _ = self.transform(image)  # an eval ImageTransform
            return {"image": pixels, "text": pre_caption(text, self.max_words), "ref_id": ann.get("ref_id", i),
                    "image_size": torch.tensor(image.size), "bbox": torch.tensor(bbox, dtype=torch.float)}
        box = torch.tensor([check_box(bbox, *image.size, where="bbox")])
        pixels, target, _, (text,) = cast(BoxAwareTransform, self.transform)(image, box, 0, [text])
        return {"image": pixels, "text": pre_caption(text, self.max_words), "target_bbox": target[0]}


class CaptionDataset(_TaskDataset):
    """COCO captions. Train ``[{image, caption, image_id}]``; eval ``[{image, image_id, caption?: [...]}]``."""

    name = "captioning"
    fields = "image, caption (training); image_id is optional"

    def __init__(self, files, transform, prompt: str = "", **kw):
        super().__init__(files, transform, **kw)
        self.prompt = prompt

    def load(self, i: int) -> dict:
        ann = self.index.get(i)
        if not self.training:
            pixels, _ = self.image(self.need(ann, "image"))
            return {"image": pixels, "image_id": ann.get("image_id", i)}
        caption = self.need(ann, "caption")
        if isinstance(caption, list):
            if not caption:
                raise BadSample("'caption' is an empty list")
            caption = random.choice(caption)
        pixels, (caption,) = self.image(self.need(ann, "image"), [caption])
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
        self.fields = f"{video_key}, question, answer (training); question_id is optional"

    def load(self, i: int) -> dict:
        ann = self.index.get(i)
        frames = load_frames(str(self.need(ann, self.video_key)), self.frame_len, self.training, root=self.root)
        pixels, (question,) = self.transform(frames, [self.need(ann, "question")])
        words = self.max_words if self.training else TEST_QUESTION_WORDS
        return {"video": pixels, "question": pre_question(question, words),
                "label": self.ans2label.get(ann.get("answer"), -100), "question_id": ann.get("question_id", i)}
