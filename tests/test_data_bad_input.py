"""Bad-input matrix: training skips and counts, evaluation names the file and line, no endless loops."""
import base64
import io
import json
import logging

import pytest
from PIL import Image

from dataset import collate_for, create_dataset, create_loader, load_tokenizer
from dataset.io import BadSample
from dataset.robust import TooManyBadSamples
from dataset.synthetic import generate
from utils.config import load_config


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("syn"), seed=1, n_images=6, n_videos=2)


def _b64(size=(40, 30)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 10)).save(buf, format="JPEG")
    return base64.b64encode(buf.getvalue()).decode()


GOOD_IMG = {"binary": None, "desc": "a green square"}
BAD_IMAGE_CASES = {
    "corrupt image": '{"binary": "bm90IGFuIGltYWdl", "desc": "a green square"}',
    "missing image field": '{"desc": "a green square"}',
    "empty caption": '{"binary": "%s", "desc": "  "}',
    "punctuation-only caption": '{"binary": "%s", "desc": "?!"}',
    "line not JSON": '{"binary": "%s", "desc": ',
    "not an object": '["a list"]',
}
BAD_REGION_CASES = {
    "box outside image": [{"bb": [30, 0, 20, 10], "caption": "square"}],
    "zero-area box": [{"bb": [0, 0, 0, 10], "caption": "square"}],
    "no elems": [],
}


def _cfg(syn, key, path, frac=0.5, window=20):
    return load_config("configs/models/tiny.yaml", [f"model.text.tokenizer={syn['vocab']}", f"data.{key}=[{path}]",
                                                     f"data.max_bad_fraction={frac}", f"data.bad_window={window}"])


def _write(path, good_lines, bad_line, n_good=9):
    lines = [good_lines] * n_good
    lines.insert(4, bad_line)
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("case", list(BAD_IMAGE_CASES))
def test_image_text_bad_record(case, syn, tmp_path):
    good = json.dumps({"binary": _b64(), "desc": "a green square"})
    bad = BAD_IMAGE_CASES[case].replace("%s", _b64())
    path = tmp_path / "it.jsonl"
    _write(path, good, bad)
    cfg = _cfg(syn, "train_file", path)
    train = create_dataset("pretrain_images", cfg, "train")
    s = train[4]
    assert s["skipped"] >= 1 and s["image"].shape == (3, 64, 64)
    assert sum(train.guard.report().values()) == s["skipped"]
    evaluation = create_dataset("pretrain_images", cfg, "val")
    with pytest.raises(BadSample, match=r"it\.jsonl:5"):
        evaluation[4]


@pytest.mark.parametrize("case", list(BAD_REGION_CASES))
def test_region_bad_boxes(case, syn, tmp_path):
    good = json.dumps({"binary": _b64(), "elems": [{"bb": [0, 0, 20, 10], "caption": "square"}]})
    bad = json.dumps({"binary": _b64(), "elems": BAD_REGION_CASES[case]})
    path = tmp_path / "reg.jsonl"
    _write(path, good, bad)
    cfg = _cfg(syn, "train_file_regions", path)
    assert create_dataset("pretrain_regions", cfg, "train")[4]["skipped"] >= 1
    with pytest.raises(BadSample, match=r"reg\.jsonl:5"):
        create_dataset("pretrain_regions", cfg, "val")[4]


def test_unreadable_and_missing_video(syn, tmp_path):
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00 ftypisom garbage" * 10)
    good = json.dumps({"video_frames": [_b64()] * 4, "text": "a green square moves up"})
    path = tmp_path / "vid.jsonl"
    lines = [good] * 6 + [json.dumps({"video_frames": str(tmp_path / "broken.mp4"), "text": "x"}),
                          json.dumps({"video_frames": str(tmp_path / "absent.mp4"), "text": "x"})]
    path.write_text("\n".join(lines) + "\n")
    cfg = _cfg(syn, "train_file_videos", path)
    train = create_dataset("pretrain_videos", cfg, "train")
    assert train[6]["skipped"] >= 1 and train[7]["skipped"] >= 1
    ev = create_dataset("pretrain_videos", cfg, "val")
    with pytest.raises(BadSample, match=r"vid\.jsonl:7.*broken\.mp4"):
        ev[6]
    with pytest.raises(BadSample, match=r"vid\.jsonl:8.*absent\.mp4"):
        ev[7]


def test_task_eval_error_names_file(syn, tmp_path):
    rows = json.load(open(syn["retrieval_test"]))
    rows[1]["image"] = "images/does_not_exist.jpg"
    (tmp_path / "test.json").write_text(json.dumps(rows))
    cfg = load_config("configs/models/tiny.yaml", [f"data.root={syn['root']}",
                                                    f"data.finetune.test_file={tmp_path / 'test.json'}"])
    ds = create_dataset("retrieval", cfg, "test")
    with pytest.raises(BadSample, match=r"test\.json\[1\].*does_not_exist"):
        ds[1]


def test_abort_when_too_many_fail_and_batches_stay_fixed(syn, tmp_path):
    good = json.dumps({"binary": _b64(), "desc": "a green square"})
    path = tmp_path / "mostly_bad.jsonl"
    path.write_text("\n".join([good] * 4 + ["{not json"] * 16) + "\n")
    ds = create_dataset("pretrain_images", _cfg(syn, "train_file", path, frac=0.2, window=10), "train")
    with pytest.raises(TooManyBadSamples, match="failed"):
        for i in range(len(ds)):
            ds[i]
    everything_bad = tmp_path / "all_bad.jsonl"
    everything_bad.write_text("{oops\n" * 5)
    ds = create_dataset("pretrain_images", _cfg(syn, "train_file", everything_bad, frac=1.0, window=10 ** 6), "train")
    with pytest.raises(TooManyBadSamples):  # bounded retries, never an endless loop
        ds[0]
    # a tolerable rate of broken lines: every batch still has exactly batch_size rows
    path2 = tmp_path / "some_bad.jsonl"
    path2.write_text("\n".join(([good] * 4 + ["{bad"]) * 4) + "\n")
    cfg = _cfg(syn, "train_file", path2, frac=0.5, window=20)
    ds = create_dataset("pretrain_images", cfg, "train")
    loader = create_loader(ds, 4, collate_for("pretrain_images"), num_workers=0)
    batches = list(loader)
    assert len(batches) == 5 and all(b["text_ids"].shape[0] == 4 for b in batches)
    skipped = sum(b["_skipped"] for b in batches)
    assert skipped >= 4 and skipped == sum(ds.guard.report().values())  # replacements may be broken too


@pytest.mark.parametrize("task,name", [("retrieval", "retrieval_train"), ("grounding", "grounding_train")])
def test_task_corrupt_base64_image_is_counted_and_named(task, name, syn, tmp_path, caplog):
    """Task records with base64 images: a corrupt one is skipped and counted in training (a warning names
    file:line) and stops evaluation with file:line, as in pretraining."""
    from pathlib import Path

    from dataset.collate import TokenizeCollate
    from dataset.sampling import EpochStream
    rows = json.loads(Path(syn[name]).read_text())
    for r in rows:
        r["image"] = base64.b64encode((Path(syn["root"]) / r["image"]).read_bytes()).decode()
    rows[2]["image"] = base64.b64encode(b"\xff\xd8\xff\xe0 not really a JPEG " * 8).decode()
    path = tmp_path / "own.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config("configs/models/tiny.yaml", [f"model.text.tokenizer={syn['vocab']}", "data.max_bad_fraction=0.5",
                                                    "data.bad_window=20", f"data.finetune.train_file=[{path}]",
                                                    f"data.finetune.test_file=[{path}]"])
    train = create_dataset(task, cfg, "train")
    caplog.set_level(logging.WARNING, logger="x2vlm.data")
    tok = load_tokenizer(cfg)
    loader = create_loader(train, 1, TokenizeCollate(collate_for(task), tok, 30, {"text": "text"}), num_workers=0)
    stream = EpochStream(loader, "train")
    batches = [next(stream) for _ in range(len(loader))]
    n = sum(b["_skipped"] for b in batches)
    assert n >= 1 and train.guard.report() == {"BadSample": n}
    assert stream.counters()["skipped_samples"] == n
    warnings = [r.getMessage() for r in caplog.records if "skipped broken sample" in r.getMessage()]
    assert warnings and f"{path}:3" in warnings[0] and "corrupt or unreadable image" in warnings[0], warnings
    assert any(f"{n} broken samples skipped" in r.getMessage() for r in caplog.records)  # the epoch's line
    with pytest.raises(BadSample, match=r"own\.jsonl:3: base64 image: corrupt") as err:
        create_dataset(task, cfg, "test")[2]
    from utils.cli import report_user_error
    assert "re-encode or remove that record" in report_user_error("X.py", err.value)
