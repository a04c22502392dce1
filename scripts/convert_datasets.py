"""Convert public datasets' original annotation files to the formats read by ``dataset/``.

Subcommands (each writes JSON files into OUT_DIR; image/video paths stay relative to the dataset's image root):
  coco-karpathy  dataset_coco.json / dataset_flickr30k.json (Karpathy splits) → retrieval + captioning splits
  vg             objects.json, attributes.json?, region_descriptions.json?, image_data.json → regions .jsonl
  refcoco        refs(unc).p + instances.json (refcoco+) → grounding_{train,val,testA,testB}.json with bbox
  vqa            VQA v2 questions + annotations (per split) → vqa_{split}.json (+ answer_list.json)
  nlvr2          NLVR2 {train,dev,test1}.json (JSON-lines) → nlvr_{split}.json
  msrvtt         train_val_videodatainfo.json → video_retrieval_{train,test}.json; --qa files → video_qa_*.jsonl
"""
from __future__ import annotations

import argparse
import json
import pickle
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


def visual_genome(objects: str, out: Path, image_data: str, attributes: str | None, regions: str | None,
                  image_dir: str) -> None:
    meta = {m["image_id"]: m for m in json.load(open(image_data))}
    attrs = {}
    if attributes:
        for im in json.load(open(attributes)):
            for a in im.get("attributes", []):
                attrs[a["object_id"]] = a.get("attributes") or []
    elems = defaultdict(list)
    for im in json.load(open(objects)):
        for o in im["objects"]:
            if o["w"] <= 0 or o["h"] <= 0:
                continue
            e = {"bb": [o["x"], o["y"], o["w"], o["h"]], "caption": o["names"][0].strip()}
            a = [x.strip() for x in attrs.get(o["object_id"], o.get("attributes", [])) if x.strip()]
            if a:
                e["attributes"] = a
            elems[im["image_id"]].append(e)
    if regions:
        for im in json.load(open(regions)):
            for r in im["regions"]:
                if r["width"] > 0 and r["height"] > 0 and r["phrase"].strip():
                    elems[r["image_id"]].append({"bb": [r["x"], r["y"], r["width"], r["height"]],
                                                 "caption": r["phrase"].strip()})
    out.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(out, "w", encoding="utf-8") as f:
        for image_id, es in elems.items():
            m = meta.get(image_id, {})
            name = m.get("url", f"{image_id}.jpg").rsplit("/", 1)[-1]
            f.write(json.dumps({"image": f"{image_dir}/{name}", "image_id": image_id, "elems": es}) + "\n")
            n += 1
    print(f"wrote {out} ({n} images); read with data.regions.image_key=image, is_image_rpath=true")


def refcoco(refs: str, instances: str, out: Path, image_dir: str) -> None:
    inst = json.load(open(instances))
    boxes = {a["id"]: a["bbox"] for a in inst["annotations"]}
    files = {i["id"]: i["file_name"] for i in inst["images"]}
    splits = defaultdict(list)
    with open(refs, "rb") as f:
        for ref in pickle.load(f):
            for s in ref["sentences"]:
                splits[ref["split"]].append({"image": f"{image_dir}/{files[ref['image_id']]}", "text": s["sent"],
                                             "ref_id": ref["ref_id"], "bbox": boxes[ref["ann_id"]]})
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


def msrvtt(info: str, out: Path, test_ids: str | None, qa: list[str], ext: str) -> None:
    data = json.load(open(info))
    caps = defaultdict(list)
    for s in data["sentences"]:
        caps[s["video_id"]].append(s["caption"])
    test = set(Path(test_ids).read_text().split()) if test_ids else \
        {v["video_id"] for v in data["videos"] if v["split"] == "test"}
    train = [{"video": f"{v}{ext}", "caption": c, "video_id": v} for v in caps if v not in test for c in caps[v]]
    _dump(out / "video_retrieval_train.json", train)
    _dump(out / "video_retrieval_test.json", [{"video": f"{v}{ext}", "caption": caps[v]} for v in sorted(test)])
    for f in qa:
        rows = json.load(open(f))
        path = out / f"video_qa_{Path(f).stem}.jsonl"
        with open(path, "w") as g:
            for r in rows:
                vid = r.get("video_id", r.get("video", ""))
                vid = f"video{vid}" if isinstance(vid, int) else Path(str(vid)).stem
                g.write(json.dumps({"video_id": f"{vid}{ext}", "question": r["question"], "answer": r["answer"],
                                    "question_id": r.get("id", r.get("question_id"))}) + "\n")
        print(f"wrote {path}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("coco-karpathy")
    s.add_argument("src")
    s.add_argument("out", type=Path)
    s = sub.add_parser("vg")
    s.add_argument("objects")
    s.add_argument("out", type=Path, help="output .jsonl")
    s.add_argument("--image-data", required=True)
    s.add_argument("--attributes")
    s.add_argument("--regions")
    s.add_argument("--image-dir", default="VG_100K")
    s = sub.add_parser("refcoco")
    s.add_argument("refs")
    s.add_argument("instances")
    s.add_argument("out", type=Path)
    s.add_argument("--image-dir", default="train2014")
    s = sub.add_parser("vqa")
    s.add_argument("--questions", nargs="+", required=True)
    s.add_argument("--annotations", nargs="*", default=[])
    s.add_argument("--image-dirs", nargs="+", required=True)
    s.add_argument("--answers", type=int, default=3128)
    s.add_argument("out", type=Path)
    s = sub.add_parser("nlvr2")
    s.add_argument("files", nargs="+")
    s.add_argument("--out", type=Path, required=True)
    s = sub.add_parser("msrvtt")
    s.add_argument("info")
    s.add_argument("out", type=Path)
    s.add_argument("--test-ids", help="file of test video ids (e.g. the 1k-A split); default: official test split")
    s.add_argument("--qa", nargs="*", default=[])
    s.add_argument("--ext", default=".mp4", help="video file suffix (use '' for frame folders)")
    a = p.parse_args(argv)
    if a.cmd == "coco-karpathy":
        coco_karpathy(a.src, a.out)
    elif a.cmd == "vg":
        visual_genome(a.objects, a.out, a.image_data, a.attributes, a.regions, a.image_dir)
    elif a.cmd == "refcoco":
        refcoco(a.refs, a.instances, a.out, a.image_dir)
    elif a.cmd == "vqa":
        vqa(a.questions, a.annotations, a.out, a.image_dirs, a.answers)
    elif a.cmd == "nlvr2":
        nlvr2(a.files, a.out)
    else:
        msrvtt(a.info, a.out, a.test_ids, a.qa, a.ext)


if __name__ == "__main__":
    main()
