"""The pretraining batch contract (models/x2vlm.py) from mixed image / region / video sources."""
import pytest
import torch

from dataset import create_pretrain_loader
from dataset.synthetic import generate
from models.vision import box_patch_mask
from utils.config import load_config


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    f = generate(tmp_path_factory.mktemp("syn"), seed=2, n_images=16, n_videos=6)
    return load_config("configs/models/tiny.yaml", [
        f"model.text.tokenizer={f['vocab']}", f"data.train_file=[{f['image_text']}]",
        f"data.train_file_regions=[{f['regions']}]", f"data.train_file_videos=[{f['videos']}]",
        "data.images.batch_size=4", "data.regions.batch_size=6", "data.regions.max_images=3",
        "data.videos.batch_size=2", "data.num_workers=0", "model.max_frames=4"])


def test_contract_shapes_and_semantics(cfg):
    batch = next(iter(create_pretrain_loader(cfg, steps=1)))
    n = 4 + 6 + 2
    assert batch["images"].shape == (4 + 3, 3, 64, 64) and batch["videos"].shape == (2, 3, 3, 64, 64)
    for key in ("text_ids", "text_atts", "mlm_ids"):
        assert batch[key].shape == (n, 30) and batch[key].dtype == torch.long
    assert batch["mlm_positions"].shape == batch["mlm_labels"].shape == (n, 12)
    assert batch["boxes"].shape == (n, 4) and batch["is_region"].dtype == torch.bool
    idx = batch["image_index"]
    assert idx[:4].tolist() == [0, 1, 2, 3]                       # image-text: own image
    assert ((idx[4:10] >= 4) & (idx[4:10] < 7)).all()             # region rows: the region images
    assert idx[10:].tolist() == [7, 8]                             # video rows: after all images in the pool
    whole = ~batch["is_region"]
    assert torch.equal(batch["boxes"][whole], torch.tensor([[0.5, 0.5, 1.0, 1.0]]).expand(int(whole.sum()), 4))
    assert not batch["is_region"][:4].any() and not batch["is_region"][10:].any()
    assert batch["is_region"][4:10].any()
    b = batch["boxes"][batch["is_region"]]
    assert ((b[:, 2:] > 0) & (b[:, :2] - b[:, 2:] / 2 >= -1e-5) & (b[:, :2] + b[:, 2:] / 2 <= 1 + 1e-5)).all()
    assert box_patch_mask(b, 8).sum(1).min() >= 2                 # [CLS] + at least one patch
    lab = batch["mlm_labels"]
    assert ((lab == -100) | (lab > 4)).all() and (lab != -100).any(1).all()
    assert (batch["mlm_ids"] == 4).any()                           # [MASK] id


def test_workers_and_model_forward(cfg):
    cfg = {**cfg, "data": {**cfg["data"], "num_workers": 2}}
    loader = create_pretrain_loader(cfg, steps=3)
    batches = list(loader)
    assert len(batches) == 3 and all(b["text_ids"].shape[0] == 12 for b in batches)
    assert loader.skipped == {"images": 0, "regions": 0, "videos": 0}
    from models.x2vlm import X2VLM
    torch.manual_seed(0)
    model = X2VLM.from_config(cfg, load_weights=False)
    out = model.forward_pretrain(batches[0])
    assert torch.isfinite(out["loss"]) and {"loss_itc", "loss_itm", "loss_mlm", "loss_bbox"} <= set(out)


@pytest.mark.parametrize("workers", [0, 2])
def test_data_position_resumes_exactly(cfg, workers):
    """5 + 4 batches straight == 5 batches, state_dict, a new loader from that state, 4 batches; the video
    sources wrap into later epochs on the way (12 training images in batches of 4, 4 training videos in 2s).
    The global random generators are disturbed between draws, and with worker processes the resumed loader
    starts new workers: the crops, masks and region subsets must not depend on either."""
    import random
    cfg = {**cfg, "data": {**cfg["data"], "num_workers": workers}}
    straight = create_pretrain_loader(cfg)
    it = iter(straight)
    for _ in range(5):
        next(it)
    state = straight.state_dict()
    assert state["epochs"] == {"images": 1, "regions": 1, "videos": 2}
    assert state["consumed"] == {"images": 2, "regions": 1, "videos": 1}
    expected = [next(it) for _ in range(4)]

    random.seed(12345)
    torch.manual_seed(12345)
    resumed = create_pretrain_loader(cfg)
    resumed.load_state_dict(state)
    it = iter(resumed)
    got = []
    for i in range(4):
        random.random()
        torch.rand(i + 1)
        got.append(next(it))
    for a, b in zip(expected, got, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key

    fresh = iter(create_pretrain_loader(cfg))  # without the state the stream starts over: different texts
    assert not torch.equal(next(fresh)["text_ids"], expected[0]["text_ids"])
    with pytest.raises(ValueError, match="data position is for sources"):
        create_pretrain_loader({**cfg, "data": {**cfg["data"], "train_file_videos": []}}).load_state_dict(state)


def test_sample_draws_follow_seed_and_epoch(cfg):
    """A sample's random choices are a function of (seed, epoch, index): repeatable, new each epoch."""
    from dataset import create_dataset

    ds = create_dataset("pretrain_regions", cfg)
    first = ds[3]
    again = ds[3]
    assert torch.equal(first["image"], again["image"]) and first["rows"] == again["rows"]
    ds.set_epoch(1)
    later = ds[3]
    assert not (torch.equal(first["image"], later["image"]) and first["rows"] == later["rows"])
    assert first["seed"] != later["seed"]


def test_ids_are_offset_per_rank(cfg):
    a = next(iter(create_pretrain_loader(cfg, rank=0, world_size=2, steps=1)))["ids"]
    b = next(iter(create_pretrain_loader(cfg, rank=1, world_size=2, steps=1)))["ids"]
    assert not set(a.tolist()) & set(b.tolist())


def test_every_step_has_the_same_shapes(cfg):
    """Fixed shapes from step to step, across epoch ends (16 images: 4 image-text batches per epoch), so a compiled
    step never recompiles and CUDA graphs can replay it: texts padded to ``max_tokens``, MLM fields to
    ``max_masks``, region rows to ``data.regions.batch_size`` and region images to ``max_images``."""
    shapes = [{k: tuple(v.shape) for k, v in b.items() if isinstance(v, torch.Tensor)}
              for b in create_pretrain_loader(cfg, steps=10)]
    assert len(shapes) == 10 and all(s == shapes[0] for s in shapes), shapes
    assert shapes[0]["text_ids"] == (12, 30) and shapes[0]["images"] == (7, 3, 64, 64)
