"""A small deterministic dataset of coloured shapes, written in every annotation format this package reads.

``python -m dataset.synthetic OUT_DIR [--seed 0] [--images 600] [--videos 48]`` writes, under OUT_DIR:

* ``images/*.jpg`` scenes of 2–3 non-overlapping shapes, ``frames/vid_k/*.jpg`` + ``videos/vid_k.mp4``
  (PyAV; skipped if missing) of one moving shape;
* ``pretrain/image_text.jsonl`` ({binary: base64, desc}), ``pretrain/regions.jsonl`` ({binary, caption,
  elems: [{bb: [x, y, w, h], caption, attributes}]}), ``pretrain/videos.jsonl`` ({video_frames: [base64…], text});
* task splits (JSON arrays, official field names): ``retrieval_{train,test}.json``, ``vqa_{train,test}.json`` +
  ``answer_list.json``, ``nlvr_{train,test}.json``, ``grounding_{train,test}.json``,
  ``caption_{train,test}.json``, ``video_retrieval_{train,test}.json``, ``video_qa_{train,test}.jsonl`` +
  ``video_qa_ans2label.json`` (colour and shape answers);
* ``vocab.txt`` (WordPiece, [PAD]=0, [UNK], [CLS], [SEP], [MASK], then words; < 512 entries);
* (command line, :func:`generate_multilingual`) ``multilingual/retrieval_{train,test_en,test_de}.json``: the
  retrieval split with English and word-for-word German captions, and ``xlmr_tiny/``, a tiny XLM-R-style
  Hugging Face folder (unigram tokenizer over both languages, random weights) for the text-encoder swap.
"""
from __future__ import annotations

import argparse
import json
import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from dataset.io import image_to_base64

COLORS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (230, 210, 30),
          "purple": (140, 40, 170), "white": (245, 245, 245)}
SHAPES = ("circle", "square", "triangle")
NUMBERS = ("zero", "one", "two", "three", "four")
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
BACKGROUND = (70, 70, 70)


@dataclass
class Shape:
    color: str
    kind: str
    box: tuple[int, int, int, int]  # x, y, w, h in pixels

    @property
    def name(self) -> str:
        return f"{self.color} {self.kind}"


def draw_shape(draw: ImageDraw.ImageDraw, s: Shape) -> None:
    x, y, w, h = s.box
    fill = COLORS[s.color]
    if s.kind == "circle":
        draw.ellipse([x, y, x + w - 1, y + h - 1], fill=fill)
    elif s.kind == "square":
        draw.rectangle([x, y, x + w - 1, y + h - 1], fill=fill)
    else:
        draw.polygon([(x + w / 2, y), (x, y + h - 1), (x + w - 1, y + h - 1)], fill=fill)


def random_scene(rng: random.Random, size: int, n_shapes: int) -> list[Shape]:
    shapes: list[Shape] = []
    while len(shapes) < n_shapes:
        side = rng.randint(size // 6, size // 3)
        x, y = rng.randint(0, size - side), rng.randint(0, size - side)
        if any(x < o.box[0] + o.box[2] and o.box[0] < x + side and y < o.box[1] + o.box[3] and o.box[1] < y + side
               for o in shapes):
            continue
        used = {(o.color, o.kind) for o in shapes}
        color, kind = rng.choice(list(COLORS)), rng.choice(SHAPES)
        if (color, kind) not in used:
            shapes.append(Shape(color, kind, (x, y, side, side)))
    return shapes


def relation(a: Shape, b: Shape) -> str:
    ax, ay = a.box[0] + a.box[2] / 2, a.box[1] + a.box[3] / 2
    bx, by = b.box[0] + b.box[2] / 2, b.box[1] + b.box[3] / 2
    if abs(ax - bx) >= abs(ay - by):
        return "to the left of" if ax < bx else "to the right of"
    return "above" if ay < by else "below"


def render(shapes: list[Shape], size: int) -> Image.Image:
    img = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(img)
    for s in shapes:
        draw_shape(draw, s)
    return img


def scene_captions(shapes: list[Shape]) -> list[str]:
    a, b = shapes[0], shapes[1]
    count = NUMBERS[len(shapes)]
    return [f"a {a.name} {relation(a, b)} a {b.name}", f"a {b.name} {relation(b, a)} a {a.name}",
            f"{count} shapes including a {a.name}"]


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=None), encoding="utf-8")


def _write_jsonl(path: Path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def write_video_file(path: Path, frames: list[Image.Image], fps: int = 8) -> bool:
    """Encode frames as MPEG-4 with PyAV; False when PyAV is not installed."""
    try:
        import av
    except ImportError:
        return False
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = frames[0].size
        stream.pix_fmt = "yuv420p"
        for im in frames:
            for packet in stream.encode(av.VideoFrame.from_image(im)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return True


def moving_video(rng: random.Random, size: int, n_frames: int) -> tuple[list[Image.Image], str]:
    color, kind = rng.choice(list(COLORS)), rng.choice(SHAPES)
    side = size // 4
    direction = rng.choice(["left", "right", "up", "down"])
    frames = []
    for t in range(n_frames):
        p = round(t / max(1, n_frames - 1) * (size - side))
        q = size // 2 - side // 2
        x, y = {"right": (p, q), "left": (size - side - p, q), "down": (q, p), "up": (q, size - side - p)}[direction]
        frames.append(render([Shape(color, kind, (x, y, side, side))], size))
    word = {"left": "to the left", "right": "to the right", "up": "up", "down": "down"}[direction]
    return frames, f"a {color} {kind} moves {word}"


def _demo_words(text: str) -> list[str]:
    return text.lower().replace("?", " ").replace(",", " ").replace(":", " ").split()


def build_vocab(texts: Iterable[str], stems: Iterable[str] = SHAPES, min_count: int = 1,
                max_words: int | None = None, split: Callable[[str], list[str]] = _demo_words) -> list[str]:
    """WordPiece vocabulary (``vocab.txt`` lines): the specials ([PAD] = 0, [UNK], [CLS], [SEP], [MASK]),
    ``. , ?``, the words of ``texts`` (``split`` cuts a text into words), every character of them and a–z,
    then each character again as a ``##`` continuation piece, so a word not in the vocabulary is spelled out
    in pieces instead of becoming [UNK].

    Words seen fewer than ``min_count`` times are left out, and only the ``max_words`` most frequent are
    kept (ties: alphabetical); the plural ``<stem>s`` of a word in ``stems`` is left to ``stem ##s`` (the
    demo's shape names, so its data has a subword case). ``scripts/build_vocab.py`` calls this for one's own
    annotation files (``stems=()``, the tokenizer's own word split)."""
    stems = set(stems)
    counts = Counter(w for t in texts for w in split(t))
    counts = Counter({w: n for w, n in counts.items() if not (w.endswith("s") and w[:-1] in stems)})
    ranked = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
    words = set(ranked[:max_words] if max_words is not None else ranked)
    letters = sorted({chr(c) for c in range(ord("a"), ord("z") + 1)} | {c for w in words for c in w})
    pieces = ["##s"] + [f"##{c}" for c in letters if c != "s"]
    vocab = list(SPECIALS) + [".", ",", "?"] + sorted(words | set(letters)) + pieces
    return list(dict.fromkeys(vocab))


#: annotation file of each generated set, relative to the output folder
FILES = {
    "image_text": "pretrain/image_text.jsonl", "regions": "pretrain/regions.jsonl",
    "videos": "pretrain/videos.jsonl", "retrieval_train": "retrieval_train.json",
    "retrieval_test": "retrieval_test.json", "vqa_train": "vqa_train.json", "vqa_test": "vqa_test.json",
    "answer_list": "answer_list.json", "nlvr_train": "nlvr_train.json", "nlvr_test": "nlvr_test.json",
    "grounding_train": "grounding_train.json", "grounding_test": "grounding_test.json",
    "caption_train": "caption_train.json", "caption_test": "caption_test.json",
    "video_retrieval_train": "video_retrieval_train.json", "video_retrieval_test": "video_retrieval_test.json",
    "video_qa_train": "video_qa_train.jsonl", "video_qa_test": "video_qa_test.jsonl",
    "video_qa_ans2label": "video_qa_ans2label.json", "vocab": "vocab.txt",
}


def _scenes(rng: random.Random, out: Path, n_images: int, image_size: int) -> list[tuple]:
    """``(relative path, image, shapes, captions)`` of each generated image (written as JPEG)."""
    scenes = []
    for i in range(n_images):
        shapes = random_scene(rng, image_size, rng.randint(2, 3))
        img = render(shapes, image_size)
        rel = f"images/img_{i:04d}.jpg"
        img.save(out / rel, quality=95)
        scenes.append((rel, img, shapes, scene_captions(shapes)))
    return scenes


def _region_record(b64: str, shapes: list, caps: list[str]) -> dict:
    """Region text = attributes + caption: "red circle", or "red circle above the blue square"."""
    elems = [{"bb": list(s.box), "attributes": s.color,
              "caption": [s.kind, f"{s.kind} {relation(s, other)} the {other.name}"]}
             for s, other in zip(shapes, [shapes[1], *[shapes[0]] * (len(shapes) - 1)], strict=True)]
    elems.append({"bb": _union(shapes[0].box, shapes[1].box), "caption": [caps[0]]})
    return {"binary": b64, "caption": caps[0], "elems": elems}


def _image_records(rng: random.Random, scenes: list[tuple], sets: dict[str, list], texts: list[str]) -> None:
    """The image sets (pretraining, retrieval, captioning, VQA, grounding) of ``scenes`` into ``sets``; the last
    quarter of the images (at least 2) is the test split, kept out of pretraining (the zero-shot evaluation sees
    them first)."""
    n_images = len(scenes)
    n_test = max(2, n_images // 4)
    for i, (rel, img, shapes, caps) in enumerate(scenes):
        test = i >= n_images - n_test
        split = "test" if test else "train"
        if not test:
            b64 = image_to_base64(img)
            sets["image_text"].append({"binary": b64, "desc": caps})
            sets["regions"].append(_region_record(b64, shapes, caps))
        for name in ("retrieval", "caption"):
            sets[f"{name}_{split}"].extend([{"image": rel, "caption": caps, "image_id": i}] if test else
                                           [{"image": rel, "caption": c, "image_id": i} for c in caps])
        for k, (q, a) in enumerate(scene_questions(shapes, rng)):
            sets[f"vqa_{split}"].append({"question_id": i * 10 + k, "image": rel, "question": q, "answer": [a] * 3,
                                         "dataset": "vqa"})
            texts += [q, a]
        for k, s in enumerate(shapes):
            other = shapes[1] if k == 0 else shapes[0]
            ref = f"{s.name} {relation(s, other)} the {other.name}"  # worded like the pretraining region texts
            texts.append(ref)
            sets[f"grounding_{split}"].append({"image": rel, "text": ref, "ref_id": i * 10 + k, "bbox": list(s.box)})


def _nlvr_records(scenes: list[tuple], texts: list[str]) -> list[dict]:
    """Image pairs with "there are <shape>s in both images", true when both images hold that shape."""
    nlvr = []
    n_images = len(scenes)
    for i in range(n_images):
        j = (i * 7 + 3) % n_images
        kind = scenes[i][2][0].kind
        has = [any(s.kind == kind for s in scenes[k][2]) for k in (i, j)]
        sentence = f"there are {kind}s in both images"
        texts.append(sentence)
        nlvr.append({"images": [scenes[i][0], scenes[j][0]], "sentence": sentence, "label": all(has),
                     "identifier": f"syn-{i}"})
    return nlvr


def _video_records(rng: random.Random, out: Path, n_videos: int, video_size: int, n_frames: int,
                   sets: dict[str, list], texts: list[str]) -> None:
    """Moving-shape videos (frame folders, and MP4 files where PyAV can write them) and their sets: pretraining
    video-text, video retrieval and video QA; the last quarter (at least 2) is the test split."""
    have_av = True
    for v in range(n_videos):
        frames, cap = moving_video(rng, video_size, n_frames)
        texts.append(cap)
        fdir = out / "frames" / f"vid_{v:03d}"
        fdir.mkdir(exist_ok=True)
        for t, fr in enumerate(frames):
            fr.save(fdir / f"{t:03d}.jpg", quality=95)
        have_av = have_av and write_video_file(out / "videos" / f"vid_{v:03d}.mp4", frames)
        media = f"videos/vid_{v:03d}.mp4" if have_av else f"frames/vid_{v:03d}"
        test = v >= n_videos - max(2, n_videos // 4)
        split = "test" if test else "train"
        if not test:
            sets["videos"].append({"video_frames": [image_to_base64(f) for f in frames], "text": cap})
        sets[f"video_retrieval_{split}"].append({"video": media, "caption": [cap] if test else cap, "video_id": v})
        color, kind = cap.split()[1:3]
        for k, (q, a) in enumerate([(f"what color is the moving {kind}", color),
                                    (f"what is the moving {color} one", kind)]):
            sets[f"video_qa_{split}"].append({"video_id": media, "question": q, "answer": a,
                                              "question_id": v * 10 + k})
            texts.append(q)


def generate(out_dir: str | Path, seed: int = 0, n_images: int = 48, n_videos: int = 12, image_size: int = 96,
             video_size: int = 64, n_frames: int = 8) -> dict[str, str]:
    """Write the dataset; returns {name: path} of the annotation files (and ``root``, ``vocab``)."""
    rng = random.Random(seed)
    out = Path(out_dir)
    for sub in ("images", "frames", "videos", "pretrain"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    scenes = _scenes(rng, out, n_images, image_size)
    texts: list[str] = [c for *_, caps in scenes for c in caps]
    sets: dict[str, list] = {name: [] for name in FILES if name not in ("answer_list", "video_qa_ans2label", "vocab")}
    _image_records(rng, scenes, sets, texts)
    nlvr = _nlvr_records(scenes, texts)
    split = n_images - n_images // 4
    sets["nlvr_train"], sets["nlvr_test"] = nlvr[:split], nlvr[split:]
    answers = sorted({a for r in sets["vqa_train"] + sets["vqa_test"] for a in r["answer"]})
    _video_records(rng, out, n_videos, video_size, n_frames, sets, texts)
    for name, rows in sets.items():
        (_write_jsonl if FILES[name].endswith(".jsonl") else _write_json)(out / FILES[name], rows)
    _write_json(out / FILES["answer_list"], answers)
    _write_json(out / FILES["video_qa_ans2label"], {a: k for k, a in enumerate([*sorted(COLORS), *SHAPES])})
    vocab = build_vocab(texts + list(NUMBERS) + ["yes", "no", "left", "right"])
    vocab += [str(n) for n in range(len(NUMBERS)) if str(n) not in vocab]  # the VQA counts; appended: ids unchanged
    assert len(vocab) < 512, len(vocab)
    (out / FILES["vocab"]).write_text("\n".join(vocab) + "\n", encoding="utf-8")
    result = {k: str(out / v) for k, v in FILES.items()}
    result["root"] = str(out)
    return result


def _union(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> list[int]:
    x0, y0 = min(a[0], b[0]), min(a[1], b[1])
    x1, y1 = max(a[0] + a[2], b[0] + b[2]), max(a[1] + a[3], b[1] + b[3])
    return [x0, y0, x1 - x0, y1 - y0]


def scene_questions(shapes: list[Shape], rng: random.Random) -> list[tuple[str, str]]:
    a = shapes[0]
    absent = next(c for c in COLORS if all(s.color != c or s.kind != a.kind for s in shapes))
    probe = rng.choice([a.color, absent])
    return [(f"what color is the {a.kind}?", a.color),
            # counts as digits, as VQA v2 writes them (the official evaluator normalises the prediction "two" to
            # "2" but compares unanimous ground truth as written)
            ("how many shapes are there?", str(len(shapes))),
            (f"is there a {probe} {a.kind}?", "yes" if probe == a.color else "no"),
            (f"what is {relation(shapes[1], a).replace('to the ', 'on the ')} the {a.name}?", shapes[1].kind)]


# ------------------------------------------------------------------------------------------ multilingual
#: word-for-word "German" of the caption vocabulary (ASCII spellings), for bilingual retrieval data
GERMAN = {"a": "ein", "red": "rot", "green": "gruen", "blue": "blau", "yellow": "gelb", "purple": "lila",
          "white": "weiss", "circle": "kreis", "square": "quadrat", "triangle": "dreieck", "to": "nach",
          "the": "dem", "left": "links", "right": "rechts", "of": "von", "above": "ueber", "below": "unter",
          "two": "zwei", "three": "drei", "shapes": "formen", "including": "mit", "moves": "bewegt",
          "up": "hoch", "down": "runter"}
XLMR_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")  # ids 0-3 as in XLM-R; <mask> is the last id


def translate(text: str) -> str:
    """The caption in the word-for-word German of :data:`GERMAN` (unknown words kept)."""
    return " ".join(GERMAN.get(w, w) for w in text.lower().split())


def write_tiny_xlmr(folder: str | Path, texts: list[str], hidden: int = 64, layers: int = 2, heads: int = 4,
                    intermediate: int = 128, max_tokens: int = 64, seed: int = 0) -> Path:
    """A tiny XLM-R-style Hugging Face folder: a SentencePiece-style unigram tokenizer (``▁word`` pieces for
    every word of ``texts``, single letters as fallback, XLM-R's special tokens and ids), an ``xlm-roberta``
    config and randomly initialised weights (seeded). Loads with ``AutoTokenizer`` / ``AutoModel``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    # transformers 5: XLMRobertaTokenizerFast is an alias, exported lazily (not in __all__: mypy misses it)
    from transformers import XLMRobertaConfig, XLMRobertaModel, XLMRobertaTokenizerFast  # type: ignore[attr-defined]

    words = sorted({w for t in texts for w in t.lower().split()})
    letters = sorted({c for w in words for c in w})
    vocab = [(p, 0.0) for p in XLMR_SPECIALS] + [(f"\u2581{w}", -1.0) for w in words]
    vocab += [("\u2581", -3.0)] + [(c, -5.0) for c in letters] + [("<mask>", 0.0)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=3, byte_fallback=False))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
                                                       special_tokens=[("<s>", 0), ("</s>", 2)])
    tokenizer = XLMRobertaTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", cls_token="<s>",
                                        sep_token="</s>", pad_token="<pad>", unk_token="<unk>", mask_token="<mask>")
    folder = Path(folder)
    tokenizer.save_pretrained(folder)
    cfg = XLMRobertaConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers,
                           num_attention_heads=heads, intermediate_size=intermediate,
                           max_position_embeddings=max_tokens + 2, type_vocab_size=1, pad_token_id=1,
                           bos_token_id=0, eos_token_id=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(seed)
    XLMRobertaModel(cfg, add_pooling_layer=False).save_pretrained(folder)
    return folder


def generate_multilingual(files: dict[str, str], seed: int = 0) -> dict[str, str]:
    """Bilingual (English + word-for-word German) retrieval splits of :func:`generate`'s images and a tiny
    XLM-R-style text model (:func:`write_tiny_xlmr`) in ``<root>/xlmr_tiny``. Writes
    ``multilingual/retrieval_train.json`` (every caption in both languages, official
    ``{image, caption, image_id}`` rows) and ``multilingual/retrieval_test_{en,de}.json``; returns their paths
    (``ml_train``, ``ml_test_en``, ``ml_test_de``) and ``xlmr``."""
    root = Path(files["root"])
    (root / "multilingual").mkdir(exist_ok=True)
    train = json.loads(Path(files["retrieval_train"]).read_text(encoding="utf-8"))
    test = json.loads(Path(files["retrieval_test"]).read_text(encoding="utf-8"))
    ml_train = [r for row in train for r in (row, {**row, "caption": translate(row["caption"])})]
    out = {"ml_train": root / "multilingual" / "retrieval_train.json",
           "ml_test_en": root / "multilingual" / "retrieval_test_en.json",
           "ml_test_de": root / "multilingual" / "retrieval_test_de.json"}
    _write_json(out["ml_train"], ml_train)
    _write_json(out["ml_test_en"], test)
    _write_json(out["ml_test_de"], [{**r, "caption": [translate(c) for c in r["caption"]]} for r in test])
    texts = [r["caption"] for r in ml_train] + [c for r in test for c in r["caption"]]
    texts += [translate(c) for r in test for c in r["caption"]]
    xlmr = write_tiny_xlmr(root / "xlmr_tiny", texts, seed=seed)
    return {**{k: str(v) for k, v in out.items()}, "xlmr": str(xlmr)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", help="folder to write (e.g. data/synthetic, which the demo configs read)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same files)")
    p.add_argument("--images", type=int, default=600,
                   help="scenes to draw (a quarter are held out as test; 600: the demos' size; the tests call "
                        "generate(), whose default is 48)")
    p.add_argument("--videos", type=int, default=48,
                   help="videos of one moving shape (a quarter held out; the video demos use 48)")
    args = p.parse_args()
    files = generate(args.out_dir, args.seed, args.images, args.videos)
    files |= generate_multilingual(files, args.seed)
    print(json.dumps(files, indent=1))


if __name__ == "__main__":
    main()
