"""Convert public datasets' original annotation files to the formats read by ``dataset/``.

Subcommands (each writes JSON files into OUT_DIR; image/video paths stay relative to the dataset's image root):
  coco-karpathy  dataset_coco.json / dataset_flickr30k.json (Karpathy splits) → retrieval + captioning splits
  vg             objects.json, attributes.json?, region_descriptions.json?, image_data.json → regions .jsonl
  vg-qa          Visual Genome question_answers.json → vg_qa.json (extra VQA training data, "dataset": "vg")
  refcoco        refs(unc).p + instances.json (refcoco+) → grounding_{train,val,testA,testB}.json with bbox
  vqa            VQA v2 questions + annotations (per split) → vqa_{split}.json (+ answer_list.json)
  nlvr2          NLVR2 {train,dev,test1}.json (JSON-lines) → nlvr_{split}.json
  msrvtt         MSR-VTT *videodatainfo.json / MSRVTT_data.json → video_retrieval_{train,test}.json;
                 --qa files → video_qa_*.jsonl
"""
from __future__ import annotations

import argparse
import csv
import json
import pickle
import re
from collections import Counter, defaultdict
from pathlib import Path


def _dump(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)
    print(f"wrote {path} ({len(data)} records)")


def coco_karpathy(src: str, out: Path) -> None:
    images = json.load(open(src))["images"]
    train, evals = [], defaultdict(list)
    for im in images:
        path = f"{im['filepath']}/{im['filename']}" if im.get("filepath") else im["filename"]
        caps = [s["raw"].strip() for s in im["sentences"]]
        image_id = im.get("cocoid", im.get("imgid"))
        split = "train" if im["split"] in ("train", "restval") else im["split"]
        if split == "train":
            train += [{"image": path, "caption": c, "image_id": image_id} for c in caps]
        else:
            evals[split].append({"image": path, "caption": caps, "image_id": image_id})
    _dump(out / "retrieval_train.json", train)
    for split, rows in evals.items():
        _dump(out / f"retrieval_{split}.json", rows)


def _vg_image_id(entry: dict):
    """Visual Genome files name the image id ``image_id`` (v1.2+) or ``id`` (v1.0 and region_descriptions)."""
    return entry["image_id"] if "image_id" in entry else entry["id"]


def _vg_images(image_data: str | None) -> dict:
    """image_data.json → {image_id: {"folder", "width", "height"}}; the folder (VG_100K or VG_100K_2) comes
    from the image URL (``https://cs.stanford.edu/people/rak248/VG_100K_2/1.jpg``)."""
    if not image_data:
        return {}
    out = {}
    for m in json.load(open(image_data)):
        url = str(m.get("url") or "").rstrip("/").split("/")
        out[_vg_image_id(m)] = {"folder": url[-2] if len(url) >= 2 else None, "name": url[-1] or None,
                                "width": m.get("width"), "height": m.get("height")}
    return out


def _vg_image_path(image_id, meta: dict, image_dir: str | None) -> str:
    """``image_dir`` (when given) / else the URL's folder / else VG_100K, then ``<id>.jpg``."""
    m = meta.get(image_id, {})
    folder = image_dir or m.get("folder") or "VG_100K"
    return f"{folder}/{m.get('name') or f'{image_id}.jpg'}"


def clip_box(x: float, y: float, w: float, h: float, width: float | None, height: float | None) -> list | None:
    """(x, y, w, h) cut to the image (when its size is known); None when nothing of the box is left."""
    x0, y0, x1, y1 = max(x, 0), max(y, 0), x + w, y + h
    if width:
        x1 = min(x1, width)
    if height:
        y1 = min(y1, height)
    if x1 - x0 <= 0 or y1 - y0 <= 0:
        return None
    return [x0, y0, x1 - x0, y1 - y0]


def visual_genome(objects: str, out: Path, image_data: str, attributes: str | None, regions: str | None,
                  image_dir: str | None) -> None:
    """One region record per image: ``{image, image_id, elems: [{bb: [x, y, w, h], caption, attributes?}]}``;
    objects (name, attributes from attributes.json or the object itself) then region descriptions (phrase).
    Boxes are cut to the image size from image_data.json; boxes with no area left are dropped."""
    meta = _vg_images(image_data)
    attrs = {}
    if attributes:
        for im in json.load(open(attributes)):
            for a in im.get("attributes") or []:
                attrs[a["object_id"]] = a.get("attributes") or []
    elems = defaultdict(list)
    dropped = 0
    for im in json.load(open(objects)):
        image_id = _vg_image_id(im)
        size = meta.get(image_id, {})
        for o in im["objects"]:
            names = o.get("names") or ([o["name"]] if o.get("name") else [])
            names = [n.strip() for n in names if n.strip()]
            bb = clip_box(o["x"], o["y"], o["w"], o["h"], size.get("width"), size.get("height"))
            if bb is None or not names:
                dropped += 1
                continue
            e = {"bb": bb, "caption": names[0]}
            a = [x.strip() for x in attrs.get(o["object_id"], o.get("attributes") or []) if x.strip()]
            if a:
                e["attributes"] = a
            elems[image_id].append(e)
    if regions:
        for im in json.load(open(regions)):
            for r in im["regions"]:
                image_id = r.get("image_id", im.get("id"))
                size = meta.get(image_id, {})
                bb = clip_box(r["x"], r["y"], r["width"], r["height"], size.get("width"), size.get("height"))
                if bb is None or not r["phrase"].strip():
                    dropped += 1
                    continue
                elems[image_id].append({"bb": bb, "caption": r["phrase"].strip()})
    out.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(out, "w", encoding="utf-8") as f:
        for image_id, es in elems.items():
            f.write(json.dumps({"image": _vg_image_path(image_id, meta, image_dir), "image_id": image_id,
                                "elems": es}) + "\n")
            n += 1
    print(f"wrote {out} ({n} images, {dropped} empty boxes/names dropped); read with data.regions.image_key=image, "
          "data.regions.is_image_rpath=true")


_NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten".split())}
_ARTICLES = {"a", "an", "the"}


def normalize_answer(answer: str) -> str:
    """VG answers ("Two.", "A red car.") to the VQA v2 answer style: lower case, no final punctuation, number
    words as digits, no articles ("2", "red car")."""
    text = re.sub(r"\s+", " ", str(answer).lower()).strip().rstrip(".!?,;:").strip()
    words = [_NUMBER_WORDS.get(w, w) for w in text.split(" ") if w not in _ARTICLES]
    return " ".join(words)


def vg_qa(src: str, out: Path, image_data: str | None, image_dir: str | None, answer_list: str | None,
          raw_answers: bool = False) -> None:
    """question_answers.json (``[{id, qas: [{qa_id, image_id, question, answer}]}]``) → one VQA training row
    per question: ``{question_id, image, question, answer: str, dataset: "vg"}``. Our VQADataset gives a VG
    answer the weight 0.5 and finds the image under ``data.finetune.roots.vg``. With ``answer_list`` only the
    questions whose (normalised) answer is a candidate answer are kept."""
    meta = _vg_images(image_data)
    keep = set(json.load(open(answer_list))) if answer_list else None
    rows, dropped = [], Counter()
    for entry in json.load(open(src)):
        for qa in entry.get("qas") or []:
            image_id = qa.get("image_id", entry.get("id"))
            question = str(qa.get("question", "")).strip()
            answer = str(qa.get("answer", "")).strip() if raw_answers else normalize_answer(qa.get("answer", ""))
            if not question or not answer:
                dropped["empty question/answer"] += 1
                continue
            if keep is not None and answer not in keep:
                dropped["answer not in the answer list"] += 1
                continue
            rows.append({"question_id": qa.get("qa_id"), "image": _vg_image_path(image_id, meta, image_dir),
                         "question": question, "answer": answer, "dataset": "vg"})
    _dump(out / "vg_qa.json", rows)
    if dropped:
        print("dropped: " + ", ".join(f"{n} {why}" for why, n in dropped.items()))


def _py2_text(value):
    """Strings of a Python 2 pickle read with ``encoding="latin1"`` back to the UTF-8 text they were."""
    if isinstance(value, str):
        try:
            return value.encode("latin1").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            return value
    if isinstance(value, list):
        return [_py2_text(v) for v in value]
    if isinstance(value, dict):
        return {_py2_text(k): _py2_text(v) for k, v in value.items()}
    return value


def load_refer_refs(path: str) -> list[dict]:
    """The REFER ``refs(unc).p`` list. It is a pickle: only load your own copy of the annotation file
    (unpickling runs code named in the file). Python 2 pickles (the distributed files) load too."""
    with open(path, "rb") as f:
        try:
            return pickle.load(f)
        except UnicodeDecodeError:
            f.seek(0)
            return _py2_text(pickle.load(f, encoding="latin1"))


def refcoco(refs: str, instances: str, out: Path, image_dir: str, text_field: str = "sent") -> None:
    """REFER (refs(unc).p + instances.json) → ``grounding_{split}.json``: one row per referring sentence,
    ``{image, text, ref_id, bbox: [x, y, w, h]}``, the box being the referred COCO annotation's (looked up by
    ``ann_id``), cut to the image size."""
    inst = json.load(open(instances))
    anns = {a["id"]: a for a in inst["annotations"]}
    images = {i["id"]: i for i in inst["images"]}
    splits, missing = defaultdict(list), 0
    for ref in load_refer_refs(refs):
        ann, img = anns.get(ref["ann_id"]), images.get(ref["image_id"])
        if ann is None or img is None or ann.get("image_id", ref["image_id"]) != ref["image_id"]:
            missing += 1
            continue
        bbox = clip_box(*ann["bbox"], img.get("width"), img.get("height"))
        if bbox is None:
            missing += 1
            continue
        for s in ref["sentences"]:
            text = s.get(text_field) or s.get("sent") or s.get("raw")
            if text and text.strip():
                splits[ref["split"]].append({"image": f"{image_dir}/{img['file_name']}", "text": text.strip(),
                                             "ref_id": ref["ref_id"], "bbox": bbox})
    if missing:
        print(f"skipped {missing} refs whose annotation / image is missing or inconsistent")
    for split, rows in splits.items():
        _dump(out / f"grounding_{split}.json", rows)


def vqa(questions: list[str], annotations: list[str], out: Path, image_dirs: list[str], n_answers: int) -> None:
    counts: Counter[str] = Counter()
    for qf, af, image_dir in zip(questions, annotations or [None] * len(questions), image_dirs, strict=True):
        qs = json.load(open(qf))
        anns = {a["question_id"]: a for a in json.load(open(af))["annotations"]} if af else {}
        split = qs.get("data_subtype", Path(qf).stem)
        rows = []
        for q in qs["questions"]:
            row = {"question_id": q["question_id"], "question": q["question"], "dataset": "vqa",
                   "image": f"{image_dir}/COCO_{split}_{q['image_id']:012d}.jpg"}
            if q["question_id"] in anns:
                row["answer"] = [a["answer"] for a in anns[q["question_id"]]["answers"]]
                counts.update(row["answer"])
            rows.append(row)
        _dump(out / f"vqa_{split}.json", rows)
    if counts:
        _dump(out / "answer_list.json", [a for a, _ in counts.most_common(n_answers)])


def nlvr2(files: list[str], out: Path) -> None:
    for fname in files:
        rows = []
        split = Path(fname).stem
        for line in open(fname):
            if not line.strip():
                continue
            r = json.loads(line)
            stem = r["identifier"].rsplit("-", 1)[0]
            folder = f"{split}/{r['directory']}" if "directory" in r else split
            rows.append({"images": [f"{folder}/{stem}-img0.png", f"{folder}/{stem}-img1.png"],
                         "sentence": r["sentence"], "label": r["label"], "identifier": r["identifier"]})
        _dump(out / f"nlvr_{split}.json", rows)


def _msrvtt_ids(path: str) -> tuple[list[str], dict[str, str]]:
    """Video ids from a text file (whitespace separated) or a CSV with a ``video_id`` column (e.g. the 1k-A
    ``MSRVTT_JSFUSION_test.csv``: key, vid_key, video_id, sentence); also {video_id: sentence} if the CSV
    has a ``sentence`` column."""
    if Path(path).suffix.lower() != ".csv":
        return Path(path).read_text().split(), {}
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    ids = [r["video_id"].strip() for r in rows]
    sents = {r["video_id"].strip(): r["sentence"].strip() for r in rows if r.get("sentence")}
    return ids, sents


def msrvtt(info: list[str], out: Path, test_ids: str | None, qa: list[str], ext: str,
           train_ids: str | None = None) -> None:
    """MSR-VTT ``{videos: [{video_id, split}], sentences: [{video_id, caption}]}`` files (train_val_ and
    test_videodatainfo.json, or MSRVTT_data.json; merged) → retrieval files. Test videos: ``test_ids`` (with
    its sentences, one caption per video, when the CSV has them) or the files' ``test`` split; training:
    ``train_ids`` or every other captioned video, one row per caption."""
    videos, caps = {}, defaultdict(list)
    for path in info:
        data = json.load(open(path))
        for v in data.get("videos", []):
            videos[v["video_id"]] = v
        for s in data["sentences"]:
            caps[s["video_id"]].append(s["caption"].strip())
    test_caps: dict[str, str] = {}
    if test_ids:
        test_list, test_caps = _msrvtt_ids(test_ids)
    else:
        test_list = sorted((v for v in videos.values() if v.get("split") == "test"), key=lambda v: v.get("id", 0))
        test_list = [v["video_id"] for v in test_list]
    test = set(test_list)
    train_set = set(_msrvtt_ids(train_ids)[0]) if train_ids else None
    train = [{"video": f"{v}{ext}", "caption": c, "video_id": v} for v in caps
             if v not in test and (train_set is None or v in train_set) for c in caps[v]]
    _dump(out / "video_retrieval_train.json", train)
    rows = []
    for v in test_list:
        captions = [test_caps[v]] if v in test_caps else caps.get(v, [])
        if captions:
            rows.append({"video": f"{v}{ext}", "caption": captions, "video_id": v})
    _dump(out / "video_retrieval_test.json", rows)
    for f in qa:
        rows = json.load(open(f)) if _first_char(f) == "[" else [json.loads(x) for x in open(f) if x.strip()]
        path = out / f"video_qa_{Path(f).stem}.jsonl"
        with open(path, "w") as g:
            for r in rows:
                vid = r.get("video_id", r.get("video", ""))
                vid = f"video{vid}" if isinstance(vid, int) or str(vid).isdigit() else Path(str(vid)).stem
                g.write(json.dumps({"video_id": f"{vid}{ext}", "question": r["question"], "answer": r["answer"],
                                    "question_id": r.get("id", r.get("question_id"))}) + "\n")
        print(f"wrote {path}")


def _first_char(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read(64).lstrip()[:1]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Folder layouts and download locations: docs/data_preparation.md. "
                                       "Each subcommand has its own --help.")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="SUBCOMMAND")
    s = sub.add_parser("coco-karpathy", help="Karpathy-split COCO / Flickr30k → retrieval_{train,val,test}.json",
                       description="dataset_coco.json / dataset_flickr30k.json (Karpathy splits) → "
                                   "retrieval_train.json (one row per caption) and retrieval_{val,test}.json "
                                   "(one row per image, all captions); Captioning.py reads the same files.")
    s.add_argument("src", help="dataset_coco.json or dataset_flickr30k.json")
    s.add_argument("out", type=Path, help="output folder")
    s = sub.add_parser("vg", help="Visual Genome objects (+ attributes, region descriptions) → regions .jsonl",
                       description="Visual Genome → region-text pretraining records "
                                   "{image, elems: [{bb, caption, attributes}]} (one JSON line per image).")
    s.add_argument("objects", help="objects.json")
    s.add_argument("out", type=Path, help="output .jsonl")
    s.add_argument("--image-data", required=True, help="image_data.json (image sizes and VG_100K / VG_100K_2 folder)")
    s.add_argument("--attributes", help="attributes.json (object attributes become part of the region text)")
    s.add_argument("--regions", help="region_descriptions.json (adds the described regions)")
    s.add_argument("--image-dir", default=None, help="image folder (default: from the URLs in image_data.json)")
    s = sub.add_parser("vg-qa", help="Visual Genome question_answers.json → vg_qa.json (extra VQA training data)",
                       description="Visual Genome QA → VQA training rows {question_id, image, question, answer, "
                                   "dataset: vg}.")
    s.add_argument("qa", help="question_answers.json")
    s.add_argument("out", type=Path, help="output JSON file")
    s.add_argument("--image-data", help="image_data.json (puts each image in its VG_100K / VG_100K_2 folder)")
    s.add_argument("--image-dir", default=None, help="image folder for every image (default: VG_100K)")
    s.add_argument("--answer-list", help="keep only questions whose answer is in this JSON list")
    s.add_argument("--raw-answers", action="store_true", help="keep answers as written (no normalisation)")
    s = sub.add_parser("refcoco", help="REFER refs(unc).p + instances.json → grounding_{split}.json",
                       description="RefCOCO / RefCOCO+ / RefCOCOg (REFER toolkit files) → grounding_{train,val,"
                                   "testA,testB}.json, one row per sentence {image, text, ref_id, bbox: [x, y, w, h]}.")
    s.add_argument("refs", help="refs(unc).p (a pickle: only use your own copy)")
    s.add_argument("instances", help="instances.json of the same REFER dataset")
    s.add_argument("out", type=Path, help="output folder")
    s.add_argument("--image-dir", default="train2014", help="COCO image folder prefix (default: train2014)")
    s.add_argument("--text-field", default="sent", help="sentence field: sent (cleaned) or raw")
    s = sub.add_parser("vqa", help="VQA v2 questions + annotations → vqa_{split}.json + answer_list.json",
                       description="VQA v2 → vqa_<split>.json rows {question_id, image, question, answer: [10 "
                                   "annotator answers]} and answer_list.json (the most frequent training answers).")
    s.add_argument("--questions", nargs="+", required=True,
                   help="v2_OpenEnded_mscoco_<split>_questions.json files, one per split")
    s.add_argument("--annotations", nargs="*", default=[],
                   help="v2_mscoco_<split>_annotations.json, in the order of --questions (none for test splits)")
    s.add_argument("--image-dirs", nargs="+", required=True,
                   help="image folder prefix per --questions file (train2014, val2014, test2015)")
    s.add_argument("--answers", type=int, default=3128, help="size of answer_list.json (default: 3128, official)")
    s.add_argument("out", type=Path, help="output folder")
    s = sub.add_parser("nlvr2", help="NLVR2 {train,dev,test1}.json → nlvr_{split}.json",
                       description="NLVR2 JSON-lines files → nlvr_<split>.json rows {images: [left, right], "
                                   "sentence, label}.")
    s.add_argument("files", nargs="+", help="train.json, dev.json, test1.json (JSON-lines)")
    s.add_argument("--out", type=Path, required=True, help="output folder")
    s = sub.add_parser("msrvtt", help="MSR-VTT → video_retrieval_{train,test}.json (+ video QA)",
                       description="MSR-VTT annotation files → video retrieval splits; --qa files → video QA.")
    s.add_argument("info", nargs="+", help="videodatainfo / MSRVTT_data.json files (merged)")
    s.add_argument("out", type=Path, help="output folder")
    s.add_argument("--test-ids", help="test video ids: .txt, or .csv with video_id (+ sentence) columns, e.g. the "
                   "1k-A MSRVTT_JSFUSION_test.csv; default: the files' test split")
    s.add_argument("--train-ids", help="training video ids (.txt or .csv, e.g. MSRVTT_train.9k.csv); default: all "
                   "captioned videos not in the test set")
    s.add_argument("--qa", nargs="*", default=[], help="MSRVTT-QA {train,val,test}_qa.json → video_qa_<name>.jsonl")
    s.add_argument("--ext", default=".mp4", help="video file suffix (use '' for frame folders)")
    a = p.parse_args(argv)
    if a.cmd == "coco-karpathy":
        coco_karpathy(a.src, a.out)
    elif a.cmd == "vg":
        visual_genome(a.objects, a.out, a.image_data, a.attributes, a.regions, a.image_dir)
    elif a.cmd == "vg-qa":
        vg_qa(a.qa, a.out, a.image_data, a.image_dir, a.answer_list, a.raw_answers)
    elif a.cmd == "refcoco":
        refcoco(a.refs, a.instances, a.out, a.image_dir, a.text_field)
    elif a.cmd == "vqa":
        vqa(a.questions, a.annotations, a.out, a.image_dirs, a.answers)
    elif a.cmd == "nlvr2":
        nlvr2(a.files, a.out)
    else:
        msrvtt(a.info, a.out, a.test_ids, a.qa, a.ext, a.train_ids)


if __name__ == "__main__":
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from utils.cli import cli_main
    cli_main(main)
