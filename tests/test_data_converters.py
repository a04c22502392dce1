"""Converters from the public datasets' original files produce records our readers accept."""
import json
import pickle

from PIL import Image

from dataset import create_dataset
from dataset.io import AnnotationIndex
from scripts.convert_datasets import load_refer_refs
from scripts.convert_datasets import main as convert
from utils.config import load_config


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


# ---------------------------------------------------------------- hand-written inputs in the original formats

def _config(tmp_path, *overrides):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "man", "left", "red", "tree"]) + "\n")
    return load_config("configs/models/tiny.yaml", [f"model.text.tokenizer={vocab}", f"data.root={tmp_path}",
                                                     *overrides])


def _image(path, size):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (90, 90, 90)).save(path)


def test_visual_genome_objects_attributes_regions(tmp_path):
    image_data = [{"image_id": 1, "url": "https://cs.stanford.edu/people/rak248/VG_100K/1.jpg", "width": 80,
                   "height": 60, "coco_id": None, "flickr_id": None},
                  {"image_id": 2, "url": "https://cs.stanford.edu/people/rak248/VG_100K_2/2.jpg", "width": 50,
                   "height": 40}]
    objects = [{"image_id": 1, "image_url": "https://cs.stanford.edu/people/rak248/VG_100K/1.jpg", "objects": [
        {"object_id": 10, "x": 5, "y": 6, "w": 30, "h": 20, "names": ["Tree "], "synsets": ["tree.n.01"]},
        {"object_id": 11, "x": 60, "y": 50, "w": 40, "h": 30, "names": ["man"]},   # sticks out: cut to the image
        {"object_id": 12, "x": 3, "y": 3, "w": 0, "h": 9, "names": ["dot"]}]},      # no area: dropped
        {"image_id": 2, "objects": [{"object_id": 20, "x": 1, "y": 2, "w": 3, "h": 4, "name": "sign"}]}]  # v1.0 name
    attributes = [{"image_id": 1, "attributes": [
        {"object_id": 10, "x": 5, "y": 6, "w": 30, "h": 20, "names": ["tree"], "attributes": ["green ", "tall"]},
        {"object_id": 11, "x": 60, "y": 50, "w": 40, "h": 30, "names": ["man"]}]}]
    regions = [{"id": 1, "regions": [
        {"region_id": 100, "image_id": 1, "x": 0, "y": 0, "width": 40, "height": 30, "phrase": "a man by a tree "},
        {"region_id": 101, "image_id": 1, "x": 0, "y": 0, "width": 10, "height": 10, "phrase": "  "}]}]
    for name, data in (("image_data", image_data), ("objects", objects), ("attributes", attributes),
                       ("regions", regions)):
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
    out = tmp_path / "out" / "vg_regions.jsonl"
    convert(["vg", str(tmp_path / "objects.json"), str(out), "--image-data", str(tmp_path / "image_data.json"),
             "--attributes", str(tmp_path / "attributes.json"), "--regions", str(tmp_path / "regions.json")])
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert rows[0] == {"image": "VG_100K/1.jpg", "image_id": 1, "elems": [
        {"bb": [5, 6, 30, 20], "caption": "Tree", "attributes": ["green", "tall"]},
        {"bb": [60, 50, 20, 10], "caption": "man"},
        {"bb": [0, 0, 40, 30], "caption": "a man by a tree"}]}
    assert rows[1] == {"image": "VG_100K_2/2.jpg", "image_id": 2, "elems": [{"bb": [1, 2, 3, 4], "caption": "sign"}]}

    # the output is read by the region-text pretraining reader (image paths under data.root)
    _image(tmp_path / "VG_100K" / "1.jpg", (80, 60))
    cfg = _config(tmp_path, f"data.train_file_regions=[{out}]", "data.regions.image_key=image",
                  "data.regions.is_image_rpath=true")
    ds = create_dataset("pretrain_regions", cfg, "val")
    s = ds[0]
    assert s["image"].shape == (3, 64, 64) and all(s["is_region"]) and 1 <= len(s["rows"]) <= 3


def test_visual_genome_qa_to_vqa_training_rows(tmp_path):
    qa = [{"id": 1, "qas": [
        {"qa_id": 986768, "image_id": 1, "question": "What color is the tree? ", "answer": "Green.",
         "a_objects": [], "q_objects": []},
        {"qa_id": 986769, "image_id": 1, "question": "How many men?", "answer": "Two.", "a_objects": [],
         "q_objects": []},
        {"qa_id": 986770, "image_id": 1, "question": "Where is the man?", "answer": "On the left side.",
         "a_objects": [], "q_objects": []},
        {"qa_id": 986771, "image_id": 1, "question": "Why?", "answer": " ", "a_objects": [], "q_objects": []}]},
        {"id": 2, "qas": [{"qa_id": 5, "image_id": 2, "question": "What is it?", "answer": "A sign"}]},
        {"id": 3, "qas": []}]
    (tmp_path / "question_answers.json").write_text(json.dumps(qa))
    (tmp_path / "image_data.json").write_text(json.dumps([
        {"image_id": 1, "url": "https://cs.stanford.edu/people/rak248/VG_100K/1.jpg", "width": 30, "height": 20},
        {"image_id": 2, "url": "https://cs.stanford.edu/people/rak248/VG_100K_2/2.jpg", "width": 30, "height": 20}]))
    convert(["vg-qa", str(tmp_path / "question_answers.json"), str(tmp_path / "out"),
             "--image-data", str(tmp_path / "image_data.json")])
    rows = json.load(open(tmp_path / "out" / "vg_qa.json"))
    assert rows[0] == {"question_id": 986768, "image": "VG_100K/1.jpg", "question": "What color is the tree?",
                       "answer": "green", "dataset": "vg"}
    assert [r["answer"] for r in rows] == ["green", "2", "on left side", "sign"]   # VQA-style answers; empty dropped
    assert rows[3]["image"] == "VG_100K_2/2.jpg"
    # keep only answers the VQA answer list can produce
    (tmp_path / "answer_list.json").write_text(json.dumps(["yes", "2", "green"]))
    convert(["vg-qa", str(tmp_path / "question_answers.json"), str(tmp_path / "filtered"),
             "--answer-list", str(tmp_path / "answer_list.json"), "--image-dir", "images"])
    rows = json.load(open(tmp_path / "filtered" / "vg_qa.json"))
    assert [(r["image"], r["answer"]) for r in rows] == [("images/1.jpg", "green"), ("images/1.jpg", "2")]

    # read by VQADataset next to VQA rows: the VG answer is a single answer weighted 0.5
    _image(tmp_path / "vg" / "images" / "1.jpg", (30, 20))
    cfg = _config(tmp_path, f"data.finetune.train_file=[{tmp_path / 'filtered' / 'vg_qa.json'}]",
                  f"data.finetune.roots={{vg: {tmp_path / 'vg'}}}")
    s = create_dataset("vqa", cfg, "train")[1]
    assert s["answers"] == ["2"] and s["weights"] == [0.5] and s["question"] == "how many men"


def test_refcoco_refer_format(tmp_path):
    refs = [
        {"ref_id": 7, "ann_id": 3, "image_id": 5, "split": "train", "category_id": 1, "sent_ids": [70, 71],
         "file_name": "COCO_train2014_000000000005_3.jpg",
         "sentences": [{"sent_id": 70, "sent": "left man", "raw": "Left man.", "tokens": ["left", "man"]},
                       {"sent_id": 71, "sent": "man in red", "raw": "Man in red", "tokens": ["man", "in", "red"]}]},
        {"ref_id": 8, "ann_id": 4, "image_id": 5, "split": "testB", "category_id": 2, "sent_ids": [80],
         "sentences": [{"sent_id": 80, "sent": "tree", "raw": "Tree", "tokens": ["tree"]}]},
        {"ref_id": 9, "ann_id": 99, "image_id": 5, "split": "val", "category_id": 2, "sent_ids": [90],
         "sentences": [{"sent_id": 90, "sent": "nothing", "raw": "nothing", "tokens": ["nothing"]}]}]  # no ann
    with open(tmp_path / "refs(unc).p", "wb") as f:
        pickle.dump(refs, f, protocol=2)
    inst = {"images": [{"id": 5, "file_name": "COCO_train2014_000000000005.jpg", "height": 60, "width": 80}],
            "annotations": [{"id": 3, "image_id": 5, "bbox": [10.5, 20.0, 30.25, 25.0], "category_id": 1,
                             "area": 700.0, "iscrowd": 0},
                            {"id": 4, "image_id": 5, "bbox": [50.0, 40.0, 31.0, 20.5], "category_id": 2}],
            "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "tree"}]}
    (tmp_path / "instances.json").write_text(json.dumps(inst))
    out = tmp_path / "out"
    convert(["refcoco", str(tmp_path / "refs(unc).p"), str(tmp_path / "instances.json"), str(out)])
    train = json.load(open(out / "grounding_train.json"))
    assert train == [
        {"image": "train2014/COCO_train2014_000000000005.jpg", "text": "left man", "ref_id": 7,
         "bbox": [10.5, 20.0, 30.25, 25.0]},
        {"image": "train2014/COCO_train2014_000000000005.jpg", "text": "man in red", "ref_id": 7,
         "bbox": [10.5, 20.0, 30.25, 25.0]}]
    test_b = json.load(open(out / "grounding_testB.json"))
    assert test_b[0]["bbox"] == [50.0, 40.0, 30.0, 20.0]  # cut to the 80x60 image
    assert not (out / "grounding_val.json").exists()        # ref 9's ann_id is not in instances.json
    convert(["refcoco", str(tmp_path / "refs(unc).p"), str(tmp_path / "instances.json"), str(tmp_path / "raw"),
             "--text-field", "raw", "--image-dir", "coco"])
    assert json.load(open(tmp_path / "raw" / "grounding_train.json"))[0]["text"] == "Left man."

    # read by GroundingDataset: the target is the referred box
    _image(tmp_path / "train2014" / "COCO_train2014_000000000005.jpg", (80, 60))
    cfg = _config(tmp_path, f"data.finetune.train_file=[{out / 'grounding_train.json'}]",
                  f"data.finetune.test_file=[{out / 'grounding_testB.json'}]")
    tr = create_dataset("grounding", cfg, "train")[0]
    cx, cy, w, h = tr["target_bbox"].tolist()
    assert 0 < w <= 1 and 0 < h <= 1 and 0 < cx < 1 and 0 < cy < 1
    ev = create_dataset("grounding", cfg, "test")[0]
    assert ev["ref_id"] == 8 and ev["bbox"].tolist() == [50.0, 40.0, 30.0, 20.0]


def test_refcoco_python2_pickle(tmp_path):
    # the distributed refs(unc).p files are Python 2 pickles: str values are byte strings (here UTF-8 "café")
    py2 = (b"\x80\x02]q\x00}q\x01(U\x06ref_idq\x02K\x07U\x06ann_idq\x03K\x03U\x08image_idq\x04K\x05U\x05splitq\x05"
           b"U\x05trainq\x06U\tsentencesq\x07]q\x08}q\tU\x04sentq\nU\x05caf\xc3\xa9q\x0bsaua.")
    (tmp_path / "refs(unc).p").write_bytes(py2)
    assert load_refer_refs(str(tmp_path / "refs(unc).p")) == [
        {"ref_id": 7, "ann_id": 3, "image_id": 5, "split": "train", "sentences": [{"sent": "café"}]}]


def test_msrvtt_retrieval_and_qa(tmp_path):
    train_val = {"info": {}, "videos": [
        {"category": 9, "url": "https://www.youtube.com/watch?v=x", "video_id": "video0", "start time": 1.0,
         "end time": 9.0, "split": "train", "id": 0},
        {"category": 3, "video_id": "video1", "split": "validate", "id": 1}],
        "sentences": [{"caption": "a man is singing", "video_id": "video0", "sen_id": 0},
                      {"caption": "a man sings ", "video_id": "video0", "sen_id": 1},
                      {"caption": "a car drives", "video_id": "video1", "sen_id": 2}]}
    test = {"videos": [{"video_id": "video7010", "split": "test", "id": 7010},
                       {"video_id": "video7011", "split": "test", "id": 7011}],
            "sentences": [{"caption": "people dance", "video_id": "video7010", "sen_id": 130260},
                          {"caption": "a dog runs", "video_id": "video7011", "sen_id": 130261},
                          {"caption": "a dog plays", "video_id": "video7011", "sen_id": 130262}]}
    (tmp_path / "train_val_videodatainfo.json").write_text(json.dumps(train_val))
    (tmp_path / "test_videodatainfo.json").write_text(json.dumps(test))
    out = tmp_path / "out"
    convert(["msrvtt", str(tmp_path / "train_val_videodatainfo.json"), str(tmp_path / "test_videodatainfo.json"),
             str(out)])
    train = json.load(open(out / "video_retrieval_train.json"))
    assert train == [{"video": "video0.mp4", "caption": "a man is singing", "video_id": "video0"},
                     {"video": "video0.mp4", "caption": "a man sings", "video_id": "video0"},
                     {"video": "video1.mp4", "caption": "a car drives", "video_id": "video1"}]
    assert json.load(open(out / "video_retrieval_test.json")) == [
        {"video": "video7010.mp4", "caption": ["people dance"], "video_id": "video7010"},
        {"video": "video7011.mp4", "caption": ["a dog runs", "a dog plays"], "video_id": "video7011"}]

    # 1k-A style: test ids + one sentence per video from the JSFusion CSV; train ids from a 9k list; QA files
    (tmp_path / "jsfusion.csv").write_text("key,vid_key,video_id,sentence\nret0,msr7011,video7011,a dog runs\n")
    (tmp_path / "train9k.csv").write_text("video_id\nvideo0\nvideo7010\n")
    (tmp_path / "train_qa.json").write_text(json.dumps([{"answer": "man", "category_id": 9, "id": 0,
                                                         "question": "who is singing?", "video_id": 0}]))
    (tmp_path / "test.jsonl").write_text(json.dumps({"answer": "dog", "question": "what runs?",
                                                     "video_id": "video7011", "question_id": 4}) + "\n")
    convert(["msrvtt", str(tmp_path / "train_val_videodatainfo.json"), str(tmp_path / "test_videodatainfo.json"),
             str(tmp_path / "k"), "--test-ids", str(tmp_path / "jsfusion.csv"), "--train-ids",
             str(tmp_path / "train9k.csv"), "--ext", "", "--qa", str(tmp_path / "train_qa.json"),
             str(tmp_path / "test.jsonl")])
    assert json.load(open(tmp_path / "k" / "video_retrieval_test.json")) == [
        {"video": "video7011", "caption": ["a dog runs"], "video_id": "video7011"}]
    assert {r["video_id"] for r in json.load(open(tmp_path / "k" / "video_retrieval_train.json"))} == \
        {"video0", "video7010"}
    assert AnnotationIndex(tmp_path / "k" / "video_qa_train_qa.jsonl").get(0) == {
        "video_id": "video0", "question": "who is singing?", "answer": "man", "question_id": 0}
    assert AnnotationIndex(tmp_path / "k" / "video_qa_test.jsonl").get(0)["video_id"] == "video7011"
