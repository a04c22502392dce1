"""Webdataset shards: conversion, and 2 ranks × 2 workers reading every sample exactly once per epoch."""
import json
from collections import Counter

import pytest
from torch.utils.data import DataLoader

from dataset import create_dataset
from dataset.synthetic import generate
from dataset.webdata import ShardStream, expand_shards
from scripts.json_to_wds import main as json_to_wds
from utils.config import load_config


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("wds")
    f = generate(d / "syn", seed=4, n_images=32, n_videos=1)  # 24 pretraining records
    json_to_wds([f["image_text"], str(d / "shards" / "it-%03d.tar"), "--maxcount", "3"])
    return f, sorted(str(p) for p in (d / "shards").glob("*.tar"))


def _key(sample):
    return sample["__key__"]


@pytest.mark.parametrize("epoch", [0, 1])
def test_two_ranks_two_workers_cover_each_sample_once(shards, epoch):
    _, paths = shards
    assert len(paths) == 8
    seen = Counter()
    for rank in range(2):
        stream = ShardStream(paths, make_sample=lambda r: {"__key__": r["__key__"], "n": len(r["binary"])},
                             rank=rank, world_size=2, seed=0, shuffle=True, shuffle_buffer=4)
        stream.set_epoch(epoch)
        loader = DataLoader(stream, batch_size=None, num_workers=2)
        keys = [s["__key__"] for s in loader]
        seen.update(keys)
    assert len(seen) == 24 and set(seen.values()) == {1}


def test_pretrain_from_shards_and_broken_member(shards, tmp_path):
    f, paths = shards
    import tarfile
    bad = tmp_path / "bad-000.tar"
    with tarfile.open(paths[0]) as src, tarfile.open(bad, "w") as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read()
            if m.name.startswith("000000001") and m.name.endswith(".json"):
                data = b"{not json"
            if m.name.startswith("000000002") and m.name.endswith(".jpg"):
                data = b"not a jpeg"
            m.size = len(data)
            import io
            dst.addfile(m, io.BytesIO(data))
    cfg = load_config("configs/models/tiny.yaml", [f"model.text.tokenizer={f['vocab']}",
                                                    f"data.train_file=[{bad}]", "data.max_bad_fraction=0.9"])
    stream = create_dataset("pretrain_images", cfg, "train")
    assert isinstance(stream, ShardStream)
    samples = list(stream)
    assert len(samples) == 1 and samples[0]["image"].shape == (3, 64, 64)
    assert sum(stream.guard.report().values()) == 2
    ev = create_dataset("pretrain_images", cfg, "val")
    with pytest.raises(Exception, match="bad-000.tar"):
        list(ev)


def test_shard_specs(shards):
    _, paths = shards
    folder = paths[0].rsplit("/", 1)[0]
    assert expand_shards(folder + "/it-{000..007}.tar") == paths == expand_shards([folder])
    assert json.loads(json.dumps(expand_shards(folder + "/it-00[0-1].tar"))) == paths[:2]


def test_epoch_stream_reshuffles_shards_each_epoch_and_replays_exactly(shards):
    """EpochStream sets the stream's epoch (a new shard order each epoch), and a stream resumed part-way
    through an epoch re-reads to the same place: same keys and same per-record seeds."""
    from dataset.sampling import EpochStream

    _, paths = shards

    def loader():
        stream = ShardStream(paths, make_sample=lambda r: {"__key__": r["__key__"]}, seed=0, shuffle=True)
        return DataLoader(stream, batch_size=4, num_workers=0, collate_fn=lambda b: b)

    straight = EpochStream(loader())
    epochs = [[s["__key__"] for _ in range(6) for s in next(straight)] for _ in range(2)]
    assert sorted(epochs[0]) == sorted(epochs[1]) and epochs[0] != epochs[1]
    first = EpochStream(loader())
    for _ in range(8):  # into the second epoch
        next(first)
    resumed = EpochStream(loader())
    resumed.load_state_dict(first.state_dict())
    assert resumed.state_dict() == {"epoch": 1, "consumed": 2, "records": None}  # a stream has no length
    assert next(resumed) == next(first)  # keys and seeds
