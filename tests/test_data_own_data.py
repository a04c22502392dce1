"""Bringing one's own data in the official formats: base64 images in the task datasets (same pixels as the
files), optional fields, missing required fields named with file, record and field, texts cut at max_tokens
counted into the batches, summed per epoch and written to log.jsonl, and scripts/build_vocab.py."""
from __future__ import annotations

import base64
import importlib.util
import json
import logging
import sys
from pathlib import Path

import pytest
import torch

from dataset import collate_for, create_dataset, create_loader
from dataset.collate import TokenizeCollate
from dataset.io import BadSample, MissingField, looks_like_base64
from dataset.sampling import EpochStream
from dataset.synthetic import generate
from dataset.text import build_tokenizer
from tests.conftest import ROOT
from utils.cli import report_user_error
from utils.config import load_config


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("syn"), seed=5, n_images=8, n_videos=0)


def _b64_file(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def as_base64(syn: dict, name: str, out: Path, drop: tuple[str, ...] = ()) -> str:
    """The synthetic file ``name`` with every image path replaced by the base64 text of that file's bytes."""
    rows = json.loads(Path(syn[name]).read_text())
    root = Path(syn["root"])
    for r in rows:
        for key in ("image",):
            if key in r:
                r[key] = _b64_file(root / r[key])
        if "images" in r:
            r["images"] = [_b64_file(root / p) for p in r["images"]]
        for key in drop:
            r.pop(key, None)
    path = out / f"{name}_b64.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _cfg(syn: dict, **finetune) -> dict:
    cfg = load_config("configs/models/tiny.yaml", [f"model.text.tokenizer={syn['vocab']}", f"data.root={syn['root']}",
                                                    f"data.finetune.answer_list={syn['answer_list']}"])
    cfg["data"]["finetune"].update(finetune)
    return cfg


def _same_samples(a, b, n: int) -> None:
    for i in range(n):
        sa, sb = a[i], b[i]
        assert sa.keys() == sb.keys()
        for k in sa:
            if isinstance(sa[k], torch.Tensor):
                torch.testing.assert_close(sa[k], sb[k], msg=f"{k} of sample {i}")
            else:
                assert sa[k] == sb[k], (k, i)


def test_base64_detection(syn):
    assert looks_like_base64(_b64_file(sorted(Path(syn["root"], "images").glob("*.jpg"))[0]))
    for path in ("train2014/COCO_train2014_000000000009.jpg", "a" * 40, "/data/images/x.png",
                 "images/" + "very_long_folder_name" * 5 + ".jpg"):
        assert not looks_like_base64(path), path
    assert not looks_like_base64(None) and not looks_like_base64(["x"])


@pytest.mark.parametrize("task,train,test", [("retrieval", "retrieval_train", "retrieval_test"),
                                             ("grounding", "grounding_train", "grounding_test"),
                                             ("captioning", "caption_train", "caption_test"),
                                             ("vqa", "vqa_train", "vqa_test"),
                                             ("nlvr2", "nlvr_train", "nlvr_test")])
def test_base64_records_give_the_same_samples_as_paths(task, train, test, syn, tmp_path):
    """Training (seeded augmentation) and evaluation samples from base64 records equal those from the files."""
    paths = _cfg(syn, train_file=[syn[train]], test_file=[syn[test]])
    b64 = _cfg(syn, train_file=[as_base64(syn, train, tmp_path)], test_file=[as_base64(syn, test, tmp_path)])
    for split in ("train", "test"):
        a, b = create_dataset(task, paths, split), create_dataset(task, b64, split)
        assert len(a) == len(b) > 0
        _same_samples(a, b, min(len(a), 4))
        assert all(b[i]["skipped"] == 0 for i in range(min(len(b), 4)))


def test_retrieval_train_without_image_id_groups_captions_by_image(syn, tmp_path):
    rows = json.loads(Path(syn["retrieval_train"]).read_text())
    with_ids = create_dataset("retrieval", _cfg(syn, train_file=[syn["retrieval_train"]]), "train")
    for files in ([as_base64(syn, "retrieval_train", tmp_path, drop=("image_id",))],):
        ds = create_dataset("retrieval", _cfg(syn, train_file=files), "train")
        assert [ds[i]["idx"] for i in range(len(ds))] == [with_ids[i]["idx"] for i in range(len(rows))]
    path = tmp_path / "no_ids.json"
    path.write_text(json.dumps([{k: v for k, v in r.items() if k != "image_id"} for r in rows]))
    ds = create_dataset("retrieval", _cfg(syn, train_file=[str(path)]), "train")
    assert [ds[i]["idx"] for i in range(len(ds))] == [with_ids[i]["idx"] for i in range(len(rows))]


@pytest.mark.parametrize("task,name,field", [("retrieval", "retrieval_test", "caption"),
                                             ("retrieval", "retrieval_train", "image"),
                                             ("grounding", "grounding_test", "bbox"),
                                             ("vqa", "vqa_test", "question"), ("nlvr2", "nlvr_test", "sentence"),
                                             ("captioning", "caption_test", "image")])
def test_missing_field_names_file_record_and_field(task, name, field, syn, tmp_path):
    rows = json.loads(Path(syn[name]).read_text())
    del rows[1][field]
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(rows))
    if name.endswith("train"):  # training skips the record and counts it
        ds = create_dataset(task, _cfg(syn, train_file=[str(path)]), "train")
        n = ds[1]["skipped"]  # (the random replacement may draw the same record again)
        assert n >= 1 and ds.guard.report() == {"MissingField": n}
    with pytest.raises(MissingField) as err:  # evaluation stops there
        create_dataset(task, _cfg(syn, test_file=[str(path)]), "test")[1]
    msg = str(err.value)
    assert f"{path}[1]" in msg and f"record has no field '{field}'" in msg, msg
    line = report_user_error("X.py", err.value)
    assert "docs/data_preparation.md" in line and "check the path" not in line, line


def test_collate_counts_cut_texts(syn):
    tok = build_tokenizer({"tokenizer": syn["vocab"]})
    collate = TokenizeCollate(collate_for("retrieval"), tok, 6, {"text": "text"})
    texts = ["a red circle", "a blue square to the left of a green triangle", "a red circle above a blue square"]
    batch = collate([{"image": torch.zeros(3, 2, 2), "text": t, "idx": 0, "skipped": 0} for t in texts])
    lengths = [len(tok(t)["input_ids"]) for t in texts]
    assert batch["_truncated"] == sum(n > 6 for n in lengths) == 2 and batch["_texts"] == 3
    assert batch["text_ids"].shape == (3, 6)

    class Slow:  # a tokenizer without Rust encodings: the uncut lengths are compared instead
        def __call__(self, texts, **kw):
            out = tok(texts, **kw)
            out._encodings = None
            return out
    slow = TokenizeCollate(collate_for("retrieval"), Slow(), 6, {"text": "text"})
    assert slow([{"image": torch.zeros(3, 2, 2), "text": t, "idx": 0, "skipped": 0} for t in texts])["_truncated"] == 2


def test_epoch_stream_sums_cut_texts_and_reports_each_epoch(syn, caplog):
    cfg = _cfg(syn, train_file=[syn["retrieval_train"]])
    tok = build_tokenizer({"tokenizer": syn["vocab"]})
    ds = create_dataset("retrieval", cfg, "train")
    collate = TokenizeCollate(collate_for("retrieval"), tok, 5, {"text": "text"})
    loader = create_loader(ds, 4, collate, num_workers=0)
    expected = sum(len(tok(ds[i]["text"])["input_ids"]) > 5 for i in range(len(ds)))
    assert expected > 0
    stream = EpochStream(loader, "train")
    caplog.set_level(logging.WARNING, logger="x2vlm.data")
    batches = [next(stream) for _ in range(len(loader))]  # exactly one epoch
    in_batches = sum(b["_truncated"] for b in batches)
    assert stream.counters() == {"truncated_texts": in_batches, "skipped_samples": 0}
    n_texts = len(loader) * 4
    lines = [r.getMessage() for r in caplog.records if "epoch 0" in r.getMessage()]
    assert len(lines) == 1 and f"{in_batches} of {n_texts} texts" in lines[0] and "max_tokens" in lines[0], lines
    assert 0 < in_batches <= expected  # drop_last leaves a few samples out of the epoch


def test_pretraining_texts_cut_are_counted(syn):
    cfg = load_config("configs/models/tiny.yaml", [f"model.text.tokenizer={syn['vocab']}", "data.max_tokens=5",
                                                    "data.num_workers=0", "data.images.batch_size=2",
                                                    "data.regions.max_images=2", "data.regions.batch_size=4",
                                                    f"data.train_file=[{syn['image_text']}]",
                                                    f"data.train_file_regions=[{syn['regions']}]"])
    from dataset import create_pretrain_loader
    loader = create_pretrain_loader(cfg, rank=0, world_size=1, steps=2)
    for batch in loader:
        assert "_truncated" not in batch  # merged batches carry only the model's fields
    assert loader.counters()["truncated_texts"] > 0
    texts = create_dataset("pretrain_images", cfg)
    s = texts[0]
    assert s["truncated"] in (0, 1) and len(s["text_ids"]) == 5


def test_finetune_log_has_cut_texts_and_base64_runs_end_to_end(syn, tmp_path, caplog):
    """Retrieval.py on base64 train / test files with a short max_tokens: the log records count the cut texts,
    one line per epoch reports them, evaluation runs on the base64 test file."""
    import Retrieval
    out = tmp_path / "out"
    caplog.set_level(logging.WARNING, logger="x2vlm.data")
    r = Retrieval.main(["--config", str(ROOT / "configs/finetune/retrieval_demo.yaml"), "--output_dir", str(out),
                        "--device", "cpu", "--override", f"data.root={syn['root']}",
                        "--override", f"model.text.tokenizer={syn['vocab']}", "--override", "data.max_tokens=6",
                        "--override", f"data.finetune.train_file=[{as_base64(syn, 'retrieval_train', tmp_path)}]",
                        "--override", f"data.finetune.test_file=[{as_base64(syn, 'retrieval_test', tmp_path)}]",
                        "--override", "data.finetune.batch_size_train=4", "--override", "train.epochs=2",
                        "--override", "train.log_every=1", "--override", "eval.k_test=2"])
    assert "test/txt_r1" in r
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    steps = [rec for rec in log if "loss" in rec]
    assert steps[-1]["truncated_texts"] > 0 and steps[-1]["skipped_samples"] == 0
    assert [rec["truncated_texts"] for rec in steps] == sorted(rec["truncated_texts"] for rec in steps)
    lines = [rec.getMessage() for rec in caplog.records if "were longer than max_tokens" in rec.getMessage()]
    assert [ln.split(",")[1].split(":")[0].strip() for ln in lines] == ["epoch 0", "epoch 1"], lines
    per_epoch = [int(ln.split(": ")[1].split(" of ")[0]) for ln in lines]
    assert sum(per_epoch) == steps[-1]["truncated_texts"]


# ----------------------------------------------------------------------------------------- vocabulary script
def _vocab_script():
    spec = importlib.util.spec_from_file_location("build_vocab_script", ROOT / "scripts" / "build_vocab.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


OWN = [{"image": "a.jpg", "caption": "A Dalmatian leaps over the garden fence!", "image_id": 1},
       {"image": "b.jpg", "caption": ["Two café tables & four chairs.", "an empty terrace"], "image_id": 2},
       {"image": "c.jpg", "elems": [{"bb": [0, 0, 2, 2], "caption": "umbrella", "attributes": ["striped"]}]},
       {"question_id": 3, "image": "d.jpg", "question": "What colour is the umbrella?", "answer": ["blue"]}]


def test_build_vocab_script_keeps_own_words_whole(syn, tmp_path, capsys):
    script = _vocab_script()
    ann = tmp_path / "own.jsonl"
    ann.write_text("".join(json.dumps(r) + "\n" for r in OWN))
    out = tmp_path / "vocab.txt"
    vocab = script.main([str(ann), "--out", str(out), "--compare", syn["vocab"]])
    printed = capsys.readouterr().out
    assert out.read_text().split("\n")[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = build_tokenizer({"tokenizer": str(out)})
    demo = build_tokenizer({"tokenizer": syn["vocab"]})
    texts = list(script.annotation_texts([ann]))
    assert "a dalmatian leaps over the garden fence" in texts and "striped" in texts and "blue" in texts
    for word in ("dalmatian", "café", "tables", "&", "umbrella", "colour", "striped"):
        assert len(tok.tokenize(word)) == 1, (word, tok.tokenize(word))  # a word of the texts: one token
        assert tok.convert_tokens_to_ids(tok.tokenize(word))[0] != tok.unk_token_id
    assert len(demo.tokenize("dalmatian")) > 3  # the demo vocabulary spells it out in letters
    assert tok.tokenize("zebra") == ["z", "##e", "##b", "##r", "##a"]  # unseen word: pieces, not [UNK]
    assert script.pieces_share(texts, out) == 0.0 < script.pieces_share(texts, syn["vocab"])
    assert f"{len(vocab)} entries" in printed and "model.text.config.vocab_size" in printed
    # --max-size: the most frequent words that fit; --min-count drops rare ones
    small = script.main([str(ann), "--out", str(tmp_path / "small.txt"), "--max-size", "64"])
    assert len(small) <= 64 and "the" in small and "dalmatian" not in small
    assert "dalmatian" not in script.main([str(ann), "--out", str(tmp_path / "m.txt"), "--min-count", "2"])
    with pytest.raises(SystemExit, match="max-size"):
        script.main([str(ann), "--out", str(tmp_path / "x.txt"), "--max-size", "20"])


def _vocab_parser(monkeypatch):
    """The argparse parser scripts/build_vocab.py builds (caught at parse time, nothing runs)."""
    import argparse
    holder = {}

    def capture(self, args=None, namespace=None):
        holder["parser"] = self
        raise SystemExit(0)
    script = _vocab_script()
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(SystemExit):
        script.main([])
    monkeypatch.undo()
    return holder["parser"]


def test_build_vocab_script_help_and_documented_command(monkeypatch):
    import re
    import shlex
    parser = _vocab_parser(monkeypatch)
    assert parser.description.strip()
    assert all((a.help or "").strip() for a in parser._actions), [a.dest for a in parser._actions if not a.help]
    text = (ROOT / "docs" / "data_preparation.md").read_text(encoding="utf-8")
    lines = [line.strip() for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S)
             for line in block.replace("\\\n", " ").splitlines()]
    commands = [shlex.split(line)[2:] for line in lines if line.startswith("python scripts/build_vocab.py ")]
    assert commands, "docs/data_preparation.md has no build_vocab.py command"
    for args in commands:
        assert parser.parse_args(args).out  # argparse exits on an unknown option or a missing argument


def test_bad_sample_is_user_error_with_record(syn, tmp_path):
    rows = json.loads(Path(syn["grounding_test"]).read_text())
    rows[0]["bbox"] = "x"
    path = tmp_path / "g.json"
    path.write_text(json.dumps(rows))
    with pytest.raises(BadSample, match=r"g\.json\[0\].*bbox"):
        create_dataset("grounding", _cfg(syn, test_file=[str(path)]), "test")[0]

