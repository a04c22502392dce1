"""Converters from the public datasets' original files produce records our readers accept."""
import json
import pickle

from dataset.io import AnnotationIndex
from scripts.convert_datasets import main as convert


def test_coco_karpathy_and_refcoco(tmp_path):
    karpathy = {"images": [
        {"filepath": "val2014", "filename": "a.jpg", "split": "restval", "cocoid": 1,
         "sentences": [{"raw": "A cat."}, {"raw": "A dog."}]},
        {"filepath": "val2014", "filename": "b.jpg", "split": "test", "cocoid": 2, "sentences": [{"raw": "Cows."}]}]}
    (tmp_path / "k.json").write_text(json.dumps(karpathy))
    convert(["coco-karpathy", str(tmp_path / "k.json"), str(tmp_path / "out")])
    train = AnnotationIndex(tmp_path / "out" / "retrieval_train.json")
    assert len(train) == 2 and train.get(0) == {"image": "val2014/a.jpg", "caption": "A cat.", "image_id": 1}
    assert json.load(open(tmp_path / "out" / "retrieval_test.json"))[0]["caption"] == ["Cows."]

    refs = [{"ref_id": 7, "ann_id": 3, "image_id": 5, "split": "testA", "sentences": [{"sent": "left man"}]}]
    with open(tmp_path / "refs(unc).p", "wb") as f:
        pickle.dump(refs, f)
    inst = {"annotations": [{"id": 3, "bbox": [1, 2, 3, 4]}], "images": [{"id": 5, "file_name": "x.jpg"}]}
    (tmp_path / "inst.json").write_text(json.dumps(inst))
    convert(["refcoco", str(tmp_path / "refs(unc).p"), str(tmp_path / "inst.json"), str(tmp_path / "out")])
    row = json.load(open(tmp_path / "out" / "grounding_testA.json"))[0]
    assert row == {"image": "train2014/x.jpg", "text": "left man", "ref_id": 7, "bbox": [1, 2, 3, 4]}


def test_vqa_and_nlvr2(tmp_path):
    q = {"data_subtype": "val2014", "questions": [{"question_id": 9, "image_id": 4, "question": "Why?"}]}
    a = {"annotations": [{"question_id": 9, "answers": [{"answer": "yes"}] * 7 + [{"answer": "no"}] * 3}]}
    (tmp_path / "q.json").write_text(json.dumps(q))
    (tmp_path / "a.json").write_text(json.dumps(a))
    convert(["vqa", str(tmp_path / "out"), "--questions", str(tmp_path / "q.json"), "--annotations",
             str(tmp_path / "a.json"), "--image-dirs", "val2014"])
    row = json.load(open(tmp_path / "out" / "vqa_val2014.json"))[0]
    assert row["image"] == "val2014/COCO_val2014_000000000004.jpg" and len(row["answer"]) == 10
    assert json.load(open(tmp_path / "out" / "answer_list.json")) == ["yes", "no"]
    (tmp_path / "dev.json").write_text(json.dumps({"identifier": "dev-850-0-0", "sentence": "Two dogs.",
                                                   "label": "True"}) + "\n")
    convert(["nlvr2", str(tmp_path / "dev.json"), "--out", str(tmp_path / "out")])
    row = json.load(open(tmp_path / "out" / "nlvr_dev.json"))[0]
    assert row["images"] == ["dev/dev-850-0-img0.png", "dev/dev-850-0-img1.png"] and row["label"] == "True"
