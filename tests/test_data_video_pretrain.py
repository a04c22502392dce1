"""Video-text pretraining records in the official layout: flat frame lists, clip lists, continuous-clip merging."""
import base64
import io
import json
import random
from collections import Counter

import pytest
from PIL import Image

from dataset import create_dataset, image_transform, load_tokenizer, text_processor
from dataset.io import BadSample
from dataset.pretrain import VideoTextDataset
from dataset.video import select_clips
from utils.config import load_config

WORDS = ["a", "red", "circle", "moves", "up", "and", "stops", "blue", "square", "turns", "music"]


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    return str(path)


def _frame(k: int) -> str:
    """A distinct 16x16 JPEG per frame number (grey level encodes k)."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (10 * k, 10 * k, 10 * k)).save(buf, format="JPEG")
    return base64.b64encode(buf.getvalue()).decode()


FRAMES = [_frame(k) for k in range(20)]


def _clips(sizes):
    out, k = [], 0
    for n in sizes:
        out.append(FRAMES[k:k + n])
        k += n
    return out


def _which(frames, clips):
    """Clip indexes a merged frame list came from (each frame string is unique)."""
    owner = {f: c for c, clip in enumerate(clips) for f in clip}
    return sorted({owner[f] for f in frames})


def test_continuous_clips_grow_a_contiguous_run_to_min_frames():
    clips = [[0, 0]] * 5  # 5 clips of 2 frames
    seen, starts = Counter(), Counter()
    rng = random.Random(0)
    for _ in range(400):
        ids = select_clips(clips, None, continuous=True, min_frames=5, rng=rng)
        assert len(ids) == 3 and ids == list(range(ids[0], ids[0] + 3))  # 2+2 < 5 <= 2+2+2, no gaps
        seen[tuple(ids)] += 1
        starts[ids[0]] += 1
    assert set(seen) == {(0, 1, 2), (1, 2, 3), (2, 3, 4)}  # grows both ways, only inwards at the borders
    # min_frames already met by one clip, or more than the whole video: one clip / every clip
    assert len(select_clips(clips, None, True, 2, rng)) == 1
    assert select_clips(clips, None, True, 100, rng) == [0, 1, 2, 3, 4]
    # merging off (the official -1 minimum): one clip
    assert len(select_clips(clips, None, True, -1, rng)) == 1


def test_placeholder_clips_count_no_frames_and_are_dropped():
    clips = [[0] * 3] * 3
    caps = ["a red circle", " [Music] ", "moves up"]
    rng = random.Random(1)
    for _ in range(50):
        assert select_clips(clips, caps, True, 4, rng) == [0, 2]  # [Music] clip bridged but not used
        assert select_clips(clips, caps, False, 4, rng) in ([0], [2])
    assert select_clips([[0]], ["[Music]"], False, 4, rng) == [0]  # a single clip is always used
    with pytest.raises(BadSample, match="placeholder"):
        select_clips(clips, ["[Music]"] * 3, False, 4, rng)


def _dataset(vocab, tmp_path, records, **kw):
    path = tmp_path / "videos.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    cfg = load_config("configs/models/tiny.yaml", [f"model.text.tokenizer={vocab}", f"data.train_file_videos=[{path}]"])
    if not kw:
        return create_dataset("pretrain_videos", cfg, "val"), cfg
    tok = load_tokenizer(cfg)
    ds = VideoTextDataset(path, text_processor(cfg, tok), image_transform(cfg, False, True), frame_len=3,
                          training=False, **kw)
    return ds, cfg


def test_official_continuous_record_merges_clips_and_joins_captions(vocab, tmp_path):
    clips = _clips([2, 2, 3, 2])
    rec = {"video_frames": clips, "text": ["a red circle", "moves up", "[Music]", "and stops"], "is_continuous": True}
    ds, _ = _dataset(vocab, tmp_path, [rec])
    rng = random.Random(0)
    joined = {}
    for _ in range(60):
        frames, caption = ds.select(rec, rng)
        ids = _which(frames, clips)
        assert frames == [f for i in ids for f in clips[i]]             # clip frames concatenated in order
        assert caption == " ".join(rec["text"][i] for i in ids)        # captions joined in clip order
        joined[tuple(ids)] = caption
    # default minimum of 8 frames (official stage-2 config): every non-[Music] clip in this short video
    assert set(joined) == {(0, 1, 3)} and joined[(0, 1, 3)] == "a red circle moves up and stops"
    s = ds[0]
    assert s["video"].shape == (3, 3, 64, 64) and s["skipped"] == 0
    tok = ds.text.tokenizer
    assert tok.decode([t for t in s["text_ids"] if t > 4]) == "a red circle moves up and stops"


def test_merge_threshold_and_switch(vocab, tmp_path):
    clips = _clips([2, 2, 2, 2, 2])
    rec = {"video_frames": clips, "text": ["a", "red", "circle", "moves", "up"], "is_continuous": True}
    ds, _ = _dataset(vocab, tmp_path, [rec], min_frames_before_sampling=5)
    rng = random.Random(3)
    for _ in range(30):
        frames, caption = ds.select(rec, rng)
        ids = _which(frames, clips)
        assert len(ids) == 3 and caption == " ".join(rec["text"][i] for i in ids)
    off, _ = _dataset(vocab, tmp_path, [rec], combine_continuous_clips=False)
    for _ in range(30):
        frames, caption = off.select(rec, rng)
        assert len(_which(frames, clips)) == 1 and caption in rec["text"]


def test_non_continuous_clips_and_flat_frames(vocab, tmp_path):
    clips = _clips([3, 4, 2])
    recs = [{"video_frames": clips, "text": ["a red circle", "[Music]", "a blue square"]},  # no is_continuous
            {"video_frames": clips, "text": ["a red circle", "[Music]", "a blue square"], "is_continuous": False},
            {"video_frames": FRAMES[:6], "text": ["a red circle", "a blue square"]},
            {"video_frames": FRAMES[:6], "text": "a red circle moves up"}]
    ds, _ = _dataset(vocab, tmp_path, recs)
    rng = random.Random(2)
    for rec in recs[:2]:
        picked = Counter()
        for _ in range(60):
            frames, caption = ds.select(rec, rng)
            (i,) = _which(frames, clips)
            assert frames == clips[i] and caption == rec["text"][i] and i != 1
            picked[i] += 1
        assert set(picked) == {0, 2}
    assert ds.select(recs[2], rng)[0] == FRAMES[:6] and ds.select(recs[2], rng)[1] in recs[2]["text"]
    assert ds.select(recs[3], rng) == (FRAMES[:6], "a red circle moves up")
    for i in range(len(recs)):
        assert ds[i]["video"].shape == (3, 3, 64, 64)


def test_clip_caption_count_mismatch_is_a_bad_sample(vocab, tmp_path):
    rec = {"video_frames": _clips([2, 2]), "text": ["only one caption"], "is_continuous": True}
    ds, _ = _dataset(vocab, tmp_path, [rec])
    with pytest.raises(BadSample, match="2 clips but 1 clip captions"):
        ds[0]
