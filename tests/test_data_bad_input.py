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


def test_decompression_bomb_is_a_counted_bad_sample(syn, tmp_path, caplog, monkeypatch):
    """A tiny PNG claiming 20000 x 20000 pixels: skipped and counted (warning with file:line) in training, an
    error naming file:line in evaluation; never decoded."""
    from PIL import ImageFile

    from tests.test_data_images import bomb_png
    real_load = ImageFile.ImageFile.load

    def load(self):
        assert self.size[0] * self.size[1] <= 10_000_000, f"decoded a {self.size} image"
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    good = json.dumps({"binary": _b64(), "desc": "a green square"})
    bad = json.dumps({"binary": base64.b64encode(bomb_png()).decode(), "desc": "a green square"})
    path = tmp_path / "bomb.jsonl"
    _write(path, good, bad)
    cfg = _cfg(syn, "train_file", path)
    train = create_dataset("pretrain_images", cfg, "train")
    caplog.set_level(logging.WARNING, logger="x2vlm.data")
    s = train[4]
    assert s["skipped"] >= 1 and train.guard.report().get("ImageTooLarge", 0) >= 1
    warnings = [r.getMessage() for r in caplog.records if "skipped broken sample" in r.getMessage()]
    assert warnings and f"{path}:5" in warnings[0] and "larger than data.max_image_pixels" in warnings[0], warnings
    with pytest.raises(BadSample, match=r"bomb\.jsonl:5: base64 image: image 20000x20000 = 400000000 pixels|"
                                        r"bomb\.jsonl:5: base64 image: image of 400000000 pixels"):
        create_dataset("pretrain_images", cfg, "val")[4]


def _skips_per_worker(ds, n_workers: int) -> tuple[list[int], list[int]]:
    """Broken samples each sample's fetch meets (its draws depend only on (seed, epoch, index)), and their sum
    per DataLoader worker when batches of one go to the workers in turn."""
    from dataset.sampling import ResumableDistributedSampler
    order = list(ResumableDistributedSampler(ds, num_replicas=1, rank=0, shuffle=True, seed=0))
    skips = [ds[i]["skipped"] for i in order]
    return skips, [sum(skips[w::n_workers]) for w in range(n_workers)]


def test_bad_sample_budget_is_one_for_the_whole_loader(syn, tmp_path):
    """With 2 workers the loader stops at the (budget + 1)-th broken sample counted over both workers, and
    says that count; before, each worker had its own window (twice the budget, one worker's count)."""
    good = json.dumps({"binary": _b64(), "desc": "a green square"})
    path = tmp_path / "some_bad.jsonl"
    path.write_text("\n".join(([good] * 5 + ["{not json"]) * 10) + "\n")  # 60 records, 10 broken
    window = 1000
    free = create_dataset("pretrain_images", _cfg(syn, "train_file", path, frac=1.0, window=window), "train")
    free.set_seed(0)
    skips, per_worker = _skips_per_worker(free, 2)
    budget = max(per_worker)  # no single worker's count exceeds it ...
    assert sum(skips) > budget  # ... but the loader's does
    ds = create_dataset("pretrain_images", _cfg(syn, "train_file", path, frac=budget / window, window=window),
                        "train")
    loader = create_loader(ds, 1, collate_for("pretrain_images"), num_workers=2, seed=0)
    with pytest.raises(TooManyBadSamples, match=rf"{budget + 1} of the last \d+ samples failed, counted over all "
                                                rf"DataLoader workers"):
        for _ in loader:
            pass
    assert ds.guard.bad_total == budget + 1  # shared with the workers: exactly one past the budget, no more


def test_bad_box_in_grounding_eval_file_is_an_error(syn, tmp_path):
    """A box that training would reject ([10, 10, -5, 0]: no area) stops evaluation naming file and record,
    instead of being scored as a miss; in training it is a counted skip."""
    from pathlib import Path
    rows = json.loads(Path(syn["grounding_test"]).read_text())
    rows[1]["bbox"] = [10, 10, -5, 0]
    rows[2]["bbox"] = [0, 0, 10_000, 10]  # outside the image
    path = tmp_path / "grounding_val.json"
    path.write_text(json.dumps(rows))
    cfg = load_config("configs/models/tiny.yaml", [f"model.text.tokenizer={syn['vocab']}", f"data.root={syn['root']}",
                                                    "data.max_bad_fraction=0.5", "data.bad_window=20",
                                                    f"data.finetune.test_file=[{path}]",
                                                    f"data.finetune.train_file=[{path}]"])
    ev = create_dataset("grounding", cfg, "test")
    ev[0]
    with pytest.raises(BadSample, match=r"grounding_val\.json\[1\]: bbox: box \[10, 10, -5, 0\] has zero area"):
        ev[1]
    with pytest.raises(BadSample, match=r"grounding_val\.json\[2\]: bbox: box .* lies outside the"):
        ev[2]
    train = create_dataset("grounding", cfg, "train")
    assert train[1]["skipped"] >= 1 and train.guard.report() == {"BadSample": train[1]["skipped"]}
