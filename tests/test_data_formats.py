"""Every format reader: the synthetic files and hand-written records in the official field layouts."""
import base64
import io
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from dataset import create_dataset, load_tokenizer
from dataset.io import AnnotationIndex, load_image
from dataset.synthetic import generate
from dataset.tasks import collate_vqa
from utils.config import load_config


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("syn"), seed=3, n_images=12, n_videos=4)


@pytest.fixture(scope="module")
def cfg(syn):
    return load_config("configs/models/tiny.yaml", [f"model.text.tokenizer={syn['vocab']}", f"data.root={syn['root']}",
                                                     f"data.finetune.answer_list={syn['answer_list']}",
                                                     f"data.finetune.ans2label={syn['video_qa_ans2label']}"])


def _b64(color=(200, 10, 10), size=(40, 30)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG")
    return base64.b64encode(buf.getvalue()).decode()


def test_json_array_and_jsonl_index_agree(tmp_path):
    rows = [{"a": i, "text": f"caption {i}"} for i in range(5)]
    (tmp_path / "x.json").write_text(json.dumps(rows))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "part-0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:3]) + "\n")
    (tmp_path / "d" / "part-1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[3:]))
    (tmp_path / "d" / "_SUCCESS").write_text("")
    a, b = AnnotationIndex(tmp_path / "x.json"), AnnotationIndex([tmp_path / "d"])
    assert len(a) == len(b) == 5
    assert [a.get(i) for i in range(5)] == [b.get(i) for i in range(5)] == rows
    assert b.where(4).endswith("part-1.jsonl:2") and a.where(1).endswith("x.json[1]")
    assert b.offsets.dtype.kind == "i" and not isinstance(b.offsets, list)  # compact arrays, not Python lists


def test_image_from_path_and_base64(tmp_path):
    Image.new("RGB", (7, 5), (1, 2, 3)).save(tmp_path / "a.png")
    assert load_image("a.png", True, tmp_path).size == (7, 5)
    assert load_image(_b64(size=(9, 4)), False).size == (9, 4)


def _pretrain_cfg(cfg, tmp_path, kind, records):
    path = tmp_path / f"{kind}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    key = {"images": "train_file", "regions": "train_file_regions", "videos": "train_file_videos"}[kind]
    return load_config("configs/models/tiny.yaml", [f"model.text.tokenizer={cfg['model']['text']['tokenizer']}",
                                                     f"data.{key}=[{path}]"])


def test_official_image_text_records(cfg, tmp_path):
    recs = [{"binary": _b64(), "desc": "a red square"},
            {"binary": _b64(), "desc": ["a red square", "one red square"]},
            {"binary": _b64(), "desc": {"en": "a red square", "de": "a red square"}}]
    ds = create_dataset("pretrain_images", _pretrain_cfg(cfg, tmp_path, "images", recs), tokenizer=load_tokenizer(cfg))
    tok = ds.text.tokenizer
    for i in range(3):
        s = ds[i]
        assert s["image"].shape == (3, 64, 64) and s["skipped"] == 0
        assert tok.decode([t for t in s["text_ids"] if t > 4]).startswith(("a red square", "one red square"))


def test_official_region_records(cfg, tmp_path):
    rec = {"binary": _b64(size=(80, 60)), "caption": "a red square on the left",
           "elems": [{"bb": [0, 0, 40, 30], "caption": "square", "attributes": "red"},
                     {"bb": [40, 30, 40, 30], "caption": ["circle"]}]}
    ds = create_dataset("pretrain_regions", _pretrain_cfg(cfg, tmp_path, "regions", [rec]))
    s = ds[0]
    assert s["boxes"][0] == (0.5, 0.5, 1.0, 1.0) and s["is_region"][0] is False
    assert all(s["is_region"][1:]) and 2 <= len(s["rows"]) <= 3
    tok = ds.text.tokenizer
    texts = [tok.decode([t for t in r["text_ids"] if t > 4]) for r in s["rows"][1:]]
    assert any(t in ("red square", "circle") for t in texts)


def test_official_video_records(cfg, tmp_path):
    recs = [{"video_frames": [_b64((i * 20, 0, 0)) for i in range(6)], "text": "a red circle moves up"},
            {"video_frames": [[_b64()] * 3, [_b64()] * 4], "text": ["a red circle", "a blue square"]}]
    ds = create_dataset("pretrain_videos", _pretrain_cfg(cfg, tmp_path, "videos", recs))
    for i in range(2):
        assert ds[i]["video"].shape == (3, 3, 64, 64)


def test_pretrain_synthetic_files(cfg, syn):
    c = load_config("configs/models/tiny.yaml", [f"model.text.tokenizer={syn['vocab']}",
                                                  f"data.train_file=[{syn['image_text']}]",
                                                  f"data.train_file_regions=[{syn['regions']}]",
                                                  f"data.train_file_videos=[{syn['videos']}]"])
    for task in ("pretrain_images", "pretrain_regions", "pretrain_videos"):
        ds = create_dataset(task, c)
        assert len(ds) > 0 and ds[0]["skipped"] == 0


def test_retrieval(cfg, syn):
    c = load_config(None, [])
    c["model"], c["data"]["root"] = cfg["model"], syn["root"]
    c["data"]["finetune"].update(train_file=[syn["retrieval_train"]], test_file=syn["retrieval_test"])
    tr, te = create_dataset("retrieval", c, "train"), create_dataset("retrieval", c, "test")
    s = tr[0]
    assert s["image"].shape == (3, 64, 64) and isinstance(s["text"], str) and s["idx"] == 0
    assert len(te.text) == 3 * len(te) and te.txt2img[te.img2txt[1][2]] == 1
    assert te[0]["image"].shape == (3, 64, 64)


def test_vqa_weights_and_answer_list(cfg, syn, tmp_path):
    Image.new("RGB", (20, 20)).save(tmp_path / "vg.jpg")
    hand = [{"question_id": 1, "image": "vg.jpg", "question": "What is it?", "answer": "cat", "dataset": "vg"},
            {"question_id": 2, "image": str(tmp_path / "vg.jpg"), "question": "Color?",
             "answer": ["red", "red", "blue", "red"], "dataset": "vqa"}]
    (tmp_path / "hand.json").write_text(json.dumps(hand))
    c = {**cfg, "data": {**cfg["data"], "finetune": {**cfg["data"]["finetune"], "roots": {"vg": str(tmp_path)},
                                                      "train_file": [syn["vqa_train"], str(tmp_path / "hand.json")],
                                                      "test_file": [syn["vqa_test"]]}}}
    tr = create_dataset("vqa", c, "train")
    vg, vqa = tr[len(tr) - 2], tr[len(tr) - 1]
    assert vg["answers"] == ["cat"] and vg["weights"] == [0.5]
    assert dict(zip(vqa["answers"], vqa["weights"], strict=True)) == {"red": 0.75, "blue": 0.25}
    batch = collate_vqa([vg, vqa])
    assert batch["n_answers"].tolist() == [1, 2] and batch["image"].shape[0] == 2
    te = create_dataset("vqa", c, "test")
    assert "question_id" in te[0] and set(te.answer_list) >= {"yes", "no"}


def test_nlvr_grounding_captioning(cfg, syn):
    ft = cfg["data"]["finetune"]
    c = {**cfg, "data": {**cfg["data"], "finetune": {**ft, "train_file": [syn["nlvr_train"]]}}}
    s = create_dataset("nlvr2", c)[0]
    assert s["image0"].shape == s["image1"].shape == (3, 64, 64) and s["label"] in (0, 1)
    c["data"]["finetune"] = {**ft, "train_file": [syn["grounding_train"]], "test_file": [syn["grounding_test"]]}
    g = create_dataset("grounding", c, "train")[0]
    assert g["target_bbox"].shape == (4,) and (0 < g["target_bbox"]).all() and (g["target_bbox"] <= 1).all()
    ge = create_dataset("grounding", c, "test")[0]
    assert "ref_id" in ge and ge["bbox"].shape == (4,)
    c["data"]["finetune"] = {**ft, "train_file": [syn["caption_train"]], "test_file": [syn["caption_test"]],
                             "prompt": "a picture of "}
    assert create_dataset("captioning", c, "train")[0]["text"].startswith("a picture of ")
    assert "image_id" in create_dataset("captioning", c, "test")[0]


def test_video_tasks_mp4_frames_and_base64_json(cfg, syn, tmp_path):
    ft = cfg["data"]["finetune"]
    c = {**cfg, "data": {**cfg["data"], "finetune": {**ft, "train_file": [syn["video_retrieval_train"]],
                                                     "test_file": syn["video_retrieval_test"]}}}
    tr = create_dataset("video_retrieval", c, "train")
    assert tr[0]["image"].shape == (3, 3, 64, 64)
    assert create_dataset("video_retrieval", c, "test")[0]["image"].shape == (3, 3, 64, 64)
    # the official per-video JSON of base64 frames, and a folder of pre-extracted frames
    frames = [_b64((i * 40, 0, 0)) for i in range(5)]
    (tmp_path / "v.json").write_text(json.dumps(frames))
    rows = [{"video_id": str(tmp_path / "v.json"), "question": "what color?", "answer": "red"},
            {"video_id": str(Path(syn["root"]) / "frames" / "vid_000"), "question": "what color?", "answer": "zzz"}]
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    c["data"]["finetune"] = {**ft, "train_file": [str(tmp_path / "qa.jsonl")], "test_file": [syn["video_qa_test"]]}
    qa = create_dataset("video_qa", c, "train")
    assert qa[0]["video"].shape == (3, 3, 64, 64) and qa[0]["label"] == json.load(open(ft["ans2label"]))["red"]
    assert qa[1]["label"] == -100
    assert create_dataset("video_qa", c, "test")[0]["video"].shape == (3, 3, 64, 64)
    assert torch.is_tensor(qa[0]["video"])
