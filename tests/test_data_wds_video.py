"""Video-text webdataset shards: json_to_wds writes frame members / video files, ShardStream reads them back
into exactly the samples the JSON-lines reader gives for the same records."""
import json
import tarfile
from pathlib import Path

import pytest
import torch

from dataset import create_dataset
from dataset.synthetic import generate
from dataset.webdata import ShardStream, frames_from_members, media_members
from scripts.json_to_wds import main as json_to_wds
from utils.config import load_config


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("syn"), seed=6, n_images=2, n_videos=5)  # 3 pretraining videos


def _records(syn):
    lines = [json.loads(x) for x in Path(syn["videos"]).read_text().splitlines() if x.strip()]
    frames = [r["video_frames"] for r in lines]
    return [
        lines[0],                                                                   # flat base64 frame list
        {"video_frames": [frames[1][:3], frames[1][3:5]], "text": ["a red circle", "moves up"],
         "is_continuous": True},                                                    # official continuous clips
        {"video_frames": "frames/vid_002", "text": lines[2]["text"]},               # frame folder (path)
        {"video_frames": "frames/missing", "text": "gone"},                         # unreadable: skipped
    ]


def _cfg(syn, files):
    return load_config("configs/models/tiny.yaml", [f"model.text.tokenizer={syn['vocab']}", f"data.root={syn['root']}",
                                                     f"data.train_file_videos=[{','.join(files)}]"])


def _same_samples(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x["video"].shape == (3, 3, 64, 64)
        assert torch.equal(x["video"], y["video"]) and x["text_ids"] == y["text_ids"]


def test_frame_and_clip_shards_round_trip(syn, tmp_path, capsys):
    recs = _records(syn)
    src = tmp_path / "videos.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in recs))
    shards = json_to_wds([str(src), str(tmp_path / "wds" / "v-%03d.tar"), "--video-key", "video_frames",
                          "--root", syn["root"], "--maxcount", "2"])
    assert len(shards) == 2 and "skipped 1 records" in capsys.readouterr().out
    with tarfile.open(shards[0]) as t:
        names = t.getnames()
        meta = json.loads(t.extractfile("000000001.json").read())
    assert names[:2] == ["000000000.frame0000.jpg", "000000000.frame0001.jpg"]
    assert "000000001.clip000.frame0002.jpg" in names and "000000001.clip001.frame0001.jpg" in names
    assert "000000001.clip001.frame0002.jpg" not in names and "000000000.json" in names
    assert meta == {"text": ["a red circle", "moves up"], "is_continuous": True}  # media field moved out

    # read back through the pretraining factory: .tar entries → ShardStream; eval = deterministic samples
    stream = create_dataset("pretrain_videos", _cfg(syn, shards), "val")
    assert isinstance(stream, ShardStream)
    from_shards = list(stream)
    reference = create_dataset("pretrain_videos", _cfg(syn, [str(src)]), "val")
    _same_samples(from_shards, [reference[i] for i in range(3)])
    # the continuous clips were merged (6 frames < the 8-frame minimum → both clips, captions joined)
    tok = reference.text.tokenizer
    assert tok.decode([t for t in from_shards[1]["text_ids"] if t > 4]) == "a red circle moves up"


def test_mp4_shards_round_trip(syn, tmp_path):
    pytest.importorskip("av")
    src = tmp_path / "mp4.jsonl"
    src.write_text("".join(json.dumps({"video_frames": f"videos/vid_{k:03d}.mp4", "text": "a red circle"}) + "\n"
                           for k in range(3)))
    shards = json_to_wds([str(src), str(tmp_path / "wds" / "m-%03d.tar"), "--video-key", "video_frames",
                          "--root", syn["root"]])
    with tarfile.open(shards[0]) as t:
        assert sorted(t.getnames()) == sorted(f"00000000{k}.{e}" for k in range(3) for e in ("json", "mp4"))
    from_shards = list(create_dataset("pretrain_videos", _cfg(syn, shards), "val"))
    reference = create_dataset("pretrain_videos", _cfg(syn, [str(src)]), "val")
    _same_samples(from_shards, [reference[i] for i in range(3)])


def test_member_naming_helpers():
    members = media_members([[b"\x89PNG a", b"b"], [b"c"]])
    assert set(members) == {"clip000.frame0000.png", "clip000.frame0001.jpg", "clip001.frame0000.jpg"}
    assert frames_from_members({**members, "json": b"{}"}) == [[b"\x89PNG a", b"b"], [b"c"]]
    flat = {f"frame{k:04d}.jpg": bytes([k]) for k in (10, 2, 0)}  # numeric order, not insertion order
    assert frames_from_members(flat) == [b"\x00", b"\x02", b"\x0a"]
    assert frames_from_members({"jpg": b"x", "json": b"{}"}) is None
    assert media_members({"mp4": b"v"}) == {"mp4": b"v"} and media_members(b"i") == {"jpg": b"i"}
