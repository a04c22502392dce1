"""Checkpoint loading: the official X²-VLM base layout, our safetensors, bare state dicts, BEiT-2 / timm
vision weights, resizing (relative-position tables, temporal embedding) and readable errors."""
from __future__ import annotations

import argparse
import ast
from functools import partial
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from timm.models.beit import Beit
from torch import nn

from models.checkpoint import (
    CheckpointError,
    load_model_checkpoint,
    load_vision_weights,
    read_state_dict,
    save_checkpoint_weights,
)
from models.vision import BEiT2VisionEncoder
from models.x2vlm import X2VLM
from utils.config import load_config

ROOT = Path(__file__).resolve().parents[1]
OFFICIAL_KEYS = ROOT / "tests" / "data" / "official_layouts" / "official_x2vlm_base_keys.tsv"  # from the shared spec
BASE_CONFIG = ROOT / "configs" / "models" / "x2vlm_base.yaml"
TINY_CONFIG = ROOT / "configs" / "models" / "tiny.yaml"
NUM_TEXT_LAYERS = 12  # the official base model: 12 text + 6 fusion layers in one 18-layer BERT
# timm's table interpolation warns about torch indexing/searchsorted details; not ours to fix
timm_resize_noise = pytest.mark.filterwarnings("ignore:.*(non-tuple sequence|searchsorted):UserWarning")


# ------------------------------------------------------------------------------------- helpers
def official_spec() -> list[tuple[str, tuple[int, ...]]]:
    spec = []
    for line in OFFICIAL_KEYS.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, shape = line.split("\t")
        spec.append((key, tuple(ast.literal_eval(shape))))
    return spec


def is_derived(key: str) -> bool:
    return key.endswith(("relative_position_index", "position_ids"))


def expected_name(key: str) -> str:
    """Our name of an official key, written out independently of models.checkpoint."""
    if key.startswith("text_encoder.bert.encoder.layer."):
        i, rest = key[len("text_encoder.bert.encoder.layer."):].split(".", 1)
        if int(i) < NUM_TEXT_LAYERS:
            return f"text_encoder.encoder.layer.{i}.{rest}"
        return f"fusion.layer.{int(i) - NUM_TEXT_LAYERS}.{rest}"
    if key.startswith("text_encoder.bert."):
        return "text_encoder." + key[len("text_encoder.bert."):]
    if key.startswith("text_encoder.cls."):
        return "mlm_head." + key[len("text_encoder.cls."):]
    return key


def tiny_model(*overrides: str, seed: int = 0) -> X2VLM:
    torch.manual_seed(seed)
    return X2VLM.from_config(load_config(TINY_CONFIG, list(overrides))).eval()


def randomised_state(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """The model's state dict with every floating tensor replaced by fresh random values (ties kept)."""
    g = torch.Generator().manual_seed(seed)
    out, seen = {}, {}
    for k, v in model.state_dict().items():
        if not v.is_floating_point():
            out[k] = v.clone()
            continue
        ptr = (v.data_ptr(), tuple(v.shape))
        if ptr not in seen:
            seen[ptr] = torch.randn(v.shape, generator=g, dtype=v.dtype)
        out[k] = seen[ptr]
    return out


def assert_state_equal(model: nn.Module, state: dict[str, torch.Tensor], keys=None) -> None:
    own = model.state_dict()
    for k in keys if keys is not None else state:
        assert torch.equal(own[k], state[k]), k


def small_encoder(image_res: int = 32, heads: int = 4, depth: int = 2, seed: int = 0,
                  abs_pos_emb: bool = False) -> BEiT2VisionEncoder:
    torch.manual_seed(seed)
    return BEiT2VisionEncoder(image_res=image_res, patch_size=8, width=32, depth=depth, heads=heads,
                              mlp_ratio=2.0, init_values=0.1, drop_path=0.0, abs_pos_emb=abs_pos_emb).eval()


# ------------------------------------------------------------------------------ official layout
@pytest.fixture(scope="module")
def official_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A file with every key and shape of the official base checkpoint, random values, tied like the original."""
    spec = official_spec()
    g = torch.Generator().manual_seed(0)
    sd: dict[str, torch.Tensor] = {}
    for key, shape in spec:
        if key.endswith("relative_position_index"):
            sd[key] = torch.randint(0, 732, shape, generator=g)
        elif key.endswith("position_ids"):
            sd[key] = torch.arange(shape[-1]).expand(shape).clone()
        else:
            sd[key] = torch.randn(shape, generator=g)
    # the official MLM decoder is tied to the word embeddings (and its bias to predictions.bias)
    sd["text_encoder.cls.predictions.decoder.weight"] = sd["text_encoder.bert.embeddings.word_embeddings.weight"]
    sd["text_encoder.cls.predictions.decoder.bias"] = sd["text_encoder.cls.predictions.bias"]
    path = tmp_path_factory.mktemp("official") / "x2vlm_base_4m.th"
    torch.save({"model": sd}, path)
    return path, sd


@pytest.fixture(scope="module")
def base_model() -> X2VLM:
    torch.manual_seed(0)
    return X2VLM.from_config(load_config(BASE_CONFIG)).eval()


def test_official_base_checkpoint_loads_every_key(base_model: X2VLM, official_checkpoint) -> None:
    path, sd = official_checkpoint
    model = base_model
    report = model.load_checkpoint(path)
    assert report.missing == []
    assert report.unexpected == []
    assert report.mismatched == []
    assert report.resized == []
    assert report.ok
    assert sorted(report.derived) == sorted(expected_name(k) for k in sd if is_derived(k))
    assert len(report.derived) == 13  # 12 relative_position_index + position_ids
    assert len(report.loaded) == len(sd) - 13
    # every official tensor landed under the expected name
    own = model.state_dict()
    for key, value in sd.items():
        if not is_derived(key):
            assert torch.equal(own[expected_name(key)], value), key
    # spot checks straight through the module tree
    layer13 = "text_encoder.bert.encoder.layer.13."
    assert torch.equal(model.fusion.layer[1].crossattention.self.key.weight,
                       sd[layer13 + "crossattention.self.key.weight"])
    assert torch.equal(model.fusion.layer[1].attention.self.query.bias, sd[layer13 + "attention.self.query.bias"])
    assert torch.equal(model.text_encoder.encoder.layer[11].output.dense.weight,
                       sd["text_encoder.bert.encoder.layer.11.output.dense.weight"])
    word = sd["text_encoder.bert.embeddings.word_embeddings.weight"]
    assert torch.equal(model.text_encoder.embeddings.word_embeddings.weight, word)
    assert torch.equal(model.mlm_head.predictions.decoder.weight, sd["text_encoder.cls.predictions.decoder.weight"])
    assert model.mlm_head.predictions.decoder.weight is model.text_encoder.embeddings.word_embeddings.weight
    assert torch.equal(model.mlm_head.predictions.bias, sd["text_encoder.cls.predictions.bias"])
    assert torch.equal(model.vision_encoder.blocks[7].attn.relative_position_bias_table,
                       sd["vision_encoder.blocks.7.attn.relative_position_bias_table"])
    assert torch.equal(model.vision_encoder.blocks[3].gamma_2, sd["vision_encoder.blocks.3.gamma_2"])
    assert torch.equal(model.itm_head[3].weight, sd["itm_head.3.weight"])
    assert model.temp.item() == sd["temp"].item()


@timm_resize_noise
def test_official_checkpoint_into_384_model_resizes_position_tables(base_model: X2VLM, official_checkpoint) -> None:
    """Same file into a model whose vision tower is built from the config at ``model.image_res=384``
    (24×24 grid). To stay cheap the text/fusion towers are the base model's and the vision tower has two
    blocks (``model.vision.depth=2``), so the official blocks 2..11 are the only unexpected keys."""
    path, sd = official_checkpoint
    cfg = load_config(BASE_CONFIG, ["model.image_res=384", "model.vision.depth=2"])["model"]
    v = cfg["vision"]
    torch.manual_seed(0)
    vision_384 = BEiT2VisionEncoder(image_res=cfg["image_res"], patch_size=cfg["patch_size"], width=v["width"],
                                    depth=v["depth"], heads=v["heads"], mlp_ratio=v["mlp_ratio"],
                                    init_values=v["init_values"], drop_path=v["drop_path"]).eval()
    model = base_model
    original = model.vision_encoder
    model.vision_encoder = vision_384
    try:
        assert model.grid_size == 24
        _check_384_load(model, path, sd)
    finally:
        model.vision_encoder = original


def _check_384_load(model: X2VLM, path: Path, sd: dict[str, torch.Tensor]) -> None:
    report = model.load_checkpoint(path)
    assert report.missing == [] and report.mismatched == []
    extra_blocks = {k for k in sd if k.startswith("vision_encoder.blocks.")
                    and int(k.split(".")[2]) >= 2 and not is_derived(k)}
    assert set(report.unexpected) == extra_blocks
    rows = (2 * 24 - 1) ** 2 + 3
    assert sorted(map(str, report.resized)) == [
        f"vision_encoder.blocks.{i}.attn.relative_position_bias_table: (732, 12) -> ({rows}, 12)" for i in range(2)]
    for i in range(2):
        old = sd[f"vision_encoder.blocks.{i}.attn.relative_position_bias_table"]
        new = model.vision_encoder.blocks[i].attn.relative_position_bias_table
        assert new.shape == (rows, 12)
        torch.testing.assert_close(new[-3:], old[-3:], rtol=0, atol=0)  # [CLS] rows copied
        # the zero offset is a grid node in both tables, so its bias is kept exactly
        torch.testing.assert_close(new[23 * 47 + 23], old[13 * 27 + 13], rtol=0, atol=1e-6)
    # non-resized tensors still land, and the encoder runs at 384 px with the resized tables
    assert torch.equal(model.vision_encoder.blocks[1].attn.qkv.weight, sd["vision_encoder.blocks.1.attn.qkv.weight"])
    assert len(report.loaded) == len(sd) - 13 - len(extra_blocks)
    with torch.no_grad():
        assert model.vision_encoder(torch.randn(1, 3, 384, 384)).shape == (1, 1 + 24 * 24, 768)


# ---------------------------------------------------------------------------------- own formats
def test_own_safetensors_round_trip(tmp_path: Path) -> None:
    source = tiny_model(seed=0)
    state = randomised_state(source, seed=1)
    source.load_state_dict(state)
    path = save_checkpoint_weights(source, tmp_path / "ckpt")
    assert path == tmp_path / "ckpt" / "model.safetensors" and path.is_file()
    assert not list((tmp_path / "ckpt").glob("*.tmp"))
    stored = load_file(str(path))
    assert len(stored) < len(source.state_dict())  # tied weights stored once: the alias logic is exercised
    target = tiny_model(seed=5)
    assert not torch.equal(target.vision_proj.weight, source.vision_proj.weight)
    for where in (tmp_path / "ckpt", path):  # the folder or the file
        report = target.load_checkpoint(where)
        assert report.ok, str(report)
        assert report.resized == []
        assert_state_equal(target, source.state_dict())
    decoder = target.mlm_head.predictions.decoder
    assert decoder.weight is target.text_encoder.embeddings.word_embeddings.weight
    assert decoder.bias is target.mlm_head.predictions.bias


@pytest.mark.parametrize("wrap", ["bare", "module_prefix", "model_key", "module_key"])
def test_bare_and_wrapped_state_dicts_load(tmp_path: Path, wrap: str) -> None:
    source = tiny_model(seed=0)
    source.load_state_dict(randomised_state(source, seed=2))
    sd = source.state_dict()
    obj = {
        "bare": sd,
        "module_prefix": {f"module.{k}": v for k, v in sd.items()},
        "model_key": {"model": sd, "epoch": 3},
        "module_key": {"module": {f"module.{k}": v for k, v in sd.items()}},
    }[wrap]
    path = tmp_path / "state.pth"
    torch.save(obj, path)
    state = read_state_dict(path)
    assert not any(k.startswith("module.") for k in state)
    target = tiny_model(seed=3)
    report = target.load_checkpoint(path)
    assert report.ok, str(report)
    assert len(report.loaded) == len(sd)
    assert_state_equal(target, sd)


def test_mismatched_widths_are_reported_and_strict_raises(tmp_path: Path) -> None:
    source = tiny_model(seed=0)
    path = tmp_path / "tiny.pth"
    torch.save(source.state_dict(), path)
    target = tiny_model("model.vision.width=32", seed=1)
    before = target.vision_encoder.blocks[0].attn.qkv.weight.detach().clone()
    report = target.load_checkpoint(path)
    names = [m.key for m in report.mismatched]
    for key in ("vision_encoder.blocks.0.attn.qkv.weight", "vision_encoder.cls_token", "vision_proj.weight",
                "fusion.layer.0.crossattention.self.key.weight", "fusion.layer.1.crossattention.self.value.weight"):
        assert key in names
    assert ("vision_encoder.blocks.0.attn.qkv.weight: checkpoint (192, 64) vs model (96, 32)"
            in map(str, report.mismatched))
    assert not any(n.startswith("text_encoder.") for n in names)  # text sizes agree
    assert not report.ok and report.unexpected == []
    assert set(names) <= set(report.missing)  # what did not fit was not loaded
    assert torch.equal(target.vision_encoder.blocks[0].attn.qkv.weight, before)
    assert torch.equal(target.text_encoder.embeddings.word_embeddings.weight,
                       source.text_encoder.embeddings.word_embeddings.weight)
    with pytest.raises(CheckpointError) as err:
        tiny_model("model.vision.width=32", seed=1).load_checkpoint(path, strict=True)
    assert "vision_encoder.blocks.0.attn.qkv.weight" in str(err.value)
    assert "fusion.layer.0.crossattention.self.key.weight" in str(err.value)


def test_extra_heads_are_unexpected(tmp_path: Path) -> None:
    source = tiny_model(seed=0)
    sd = dict(source.state_dict())
    extra = {"text_decoder.bert.encoder.layer.0.attention.self.query.weight": torch.zeros(64, 64),
             "text_decoder.cls.predictions.bias": torch.zeros(512)}
    sd.update(extra)
    path = tmp_path / "finetuned.th"
    torch.save({"model": sd}, path)
    target = tiny_model(seed=1)
    report = target.load_checkpoint(path)
    assert sorted(report.unexpected) == sorted(extra)
    assert report.missing == [] and report.mismatched == [] and not report.ok
    assert_state_equal(target, source.state_dict())
    with pytest.raises(CheckpointError, match="text_decoder"):
        target.load_checkpoint(path, strict=True)


def test_official_layout_maps_into_tiny_model(tmp_path: Path) -> None:
    """The official layout of the tiny model (text and fusion in one 4-layer BERT, ``cls`` head)."""
    source = tiny_model(seed=0)
    source.load_state_dict(randomised_state(source, seed=4))
    official = {}
    for k, v in source.state_dict().items():
        if k.startswith("text_encoder.encoder.layer."):
            k = "text_encoder.bert." + k[len("text_encoder."):]
        elif k.startswith("fusion.layer."):
            i, rest = k[len("fusion.layer."):].split(".", 1)
            k = f"text_encoder.bert.encoder.layer.{int(i) + 2}.{rest}"
        elif k.startswith("text_encoder."):
            k = "text_encoder.bert." + k[len("text_encoder."):]
        elif k.startswith("mlm_head."):
            k = "text_encoder.cls." + k[len("mlm_head."):]
        official[k] = v
    assert "text_encoder.bert.encoder.layer.3.crossattention.self.key.weight" in official
    path = tmp_path / "official_tiny.th"
    torch.save({"model": official}, path)
    target = tiny_model(seed=1)
    report = target.load_checkpoint(path)
    assert report.ok, str(report)
    assert_state_equal(target, source.state_dict())


# ----------------------------------------------------------------------------- unreadable files
def test_truncated_and_corrupt_files_name_the_file(tmp_path: Path) -> None:
    model = tiny_model()
    good = tmp_path / "good.th"
    torch.save({"model": model.state_dict()}, good)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.th"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.th"
    garbage.write_bytes(bytes(range(7, 256)) * 4)
    empty = tmp_path / "empty.th"
    empty.write_bytes(b"")
    save_checkpoint_weights(model, tmp_path / "st")
    st = (tmp_path / "st" / "model.safetensors").read_bytes()
    bad_st = tmp_path / "broken.safetensors"
    bad_st.write_bytes(st[: len(st) // 2])
    for path in (truncated, garbage, empty, bad_st):
        with pytest.raises(CheckpointError) as err:
            model.load_checkpoint(path)
        assert str(path) in str(err.value)
        assert "trusted=True" not in str(err.value)  # a broken file is not a trust question
    with pytest.raises(CheckpointError, match="garbage.th"):
        load_model_checkpoint(model, garbage, trusted=True)


def test_missing_file_and_empty_folder(tmp_path: Path) -> None:
    model = tiny_model()
    missing = tmp_path / "nope" / "x2vlm_base_4m.th"
    with pytest.raises(CheckpointError, match="not found") as err:
        model.load_checkpoint(missing)
    assert str(missing) in str(err.value)
    with pytest.raises(CheckpointError) as err:
        model.load_checkpoint(tmp_path)
    assert str(tmp_path) in str(err.value) and "model.safetensors" in str(err.value)


def test_non_allowlisted_pickle_needs_trust(tmp_path: Path) -> None:
    source = tiny_model(seed=0)
    source.load_state_dict(randomised_state(source, seed=6))
    path = tmp_path / "with_args.th"
    torch.save({"model": source.state_dict(), "args": argparse.Namespace(lr=1e-4)}, path)
    target = tiny_model(seed=1)
    with pytest.raises(CheckpointError) as err:
        target.load_checkpoint(path)
    message = str(err.value)
    assert str(path) in message and "weights_only" in message and "trusted=True" in message
    report = load_model_checkpoint(target, path, trusted=True)
    assert report.ok, str(report)
    assert_state_equal(target, source.state_dict())


def test_non_tensor_state_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "config_only.th"
    torch.save({"config": {"lr": 1e-4}, "epoch": 3}, path)
    with pytest.raises(CheckpointError, match="state dict of tensors"):
        read_state_dict(path)


# ------------------------------------------------------------------------------ vision weights
def test_beit2_release_layout_expands_shared_table_and_drops_head(tmp_path: Path) -> None:
    source = small_encoder(seed=0)
    g = torch.Generator().manual_seed(0)
    release = {k: torch.randn(v.shape, generator=g) for k, v in source.state_dict().items()
               if not k.endswith("relative_position_bias_table")}
    shared = torch.randn(source.blocks[0].attn.relative_position_bias_table.shape, generator=g)
    release["rel_pos_bias.relative_position_bias_table"] = shared
    release["rel_pos_bias.relative_position_index"] = torch.zeros(17, 17, dtype=torch.long)
    release["head.weight"] = torch.randn(1000, 32, generator=g)
    release["head.bias"] = torch.randn(1000, generator=g)
    path = tmp_path / "beitv2_release.pth"
    torch.save({"model": release}, path)
    target = small_encoder(seed=1)
    report = load_vision_weights(target, path)
    assert report.ok, str(report)
    assert report.unexpected == [] and report.mismatched == [] and report.resized == []
    assert not any(k.startswith(("head.", "rel_pos_bias.")) for k in report.loaded)
    for i, block in enumerate(target.blocks):
        assert torch.equal(block.attn.relative_position_bias_table, shared), i
    assert_state_equal(target, release, [k for k in release if not k.startswith(("head.", "rel_pos_bias."))])


def test_timm_beit_state_dict_loads(tmp_path: Path) -> None:
    torch.manual_seed(0)
    timm_model = Beit(img_size=64, patch_size=8, num_classes=10, global_pool="avg", embed_dim=32, depth=2,
                      num_heads=4, mlp_ratio=2.0, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6),
                      init_values=0.1, use_abs_pos_emb=False, use_rel_pos_bias=True)
    with torch.no_grad():
        for p in timm_model.parameters():
            p.add_(torch.randn_like(p))
    path = tmp_path / "timm_beit.pth"
    torch.save(timm_model.state_dict(), path)
    target = small_encoder(image_res=64, seed=1)
    report = load_vision_weights(target, path)
    assert report.ok, str(report)
    assert report.resized == [] and report.unexpected == []
    sd = timm_model.state_dict()
    assert_state_equal(target, sd, [k for k in sd if not k.startswith("head.")])
    images = torch.randn(2, 3, 64, 64)
    timm_model.eval()
    with torch.no_grad():  # same weights, same tokens before the pooling head
        torch.testing.assert_close(target.forward_features(images), timm_model.forward_features(images))


def test_vision_weights_from_full_model_checkpoint(tmp_path: Path) -> None:
    source = tiny_model(seed=0)
    source.load_state_dict(randomised_state(source, seed=7))
    path = save_checkpoint_weights(source, tmp_path)
    target = tiny_model(seed=1).vision_encoder
    report = load_vision_weights(target, path)
    assert report.ok, str(report)
    assert_state_equal(target, source.vision_encoder.state_dict())


@timm_resize_noise
def test_vision_weights_at_other_grid_are_resized(tmp_path: Path) -> None:
    source = small_encoder(image_res=32, seed=0)  # 4×4 grid: (2·4-1)² + 3 = 52 rows
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for block in source.blocks:
            block.attn.relative_position_bias_table.copy_(torch.randn(52, 4, generator=g))
    path = tmp_path / "beit_32px.pth"
    torch.save(source.state_dict(), path)
    target = small_encoder(image_res=64, seed=1)  # 8×8 grid: 15² + 3 = 228 rows
    report = load_vision_weights(target, path)
    assert report.ok, str(report)
    assert sorted(map(str, report.resized)) == [f"blocks.{i}.attn.relative_position_bias_table: (52, 4) -> (228, 4)"
                                      for i in range(2)]
    for src, dst in zip(source.blocks, target.blocks, strict=True):
        old, new = src.attn.relative_position_bias_table, dst.attn.relative_position_bias_table
        assert new.shape == (228, 4)
        assert torch.equal(new[-3:], old[-3:])
        torch.testing.assert_close(new[7 * 15 + 7], old[3 * 7 + 3], rtol=0, atol=1e-6)  # zero offset
        assert torch.equal(dst.attn.qkv.weight, src.attn.qkv.weight)
    with torch.no_grad():  # the resized encoder runs at its own resolution
        assert target(torch.randn(1, 3, 64, 64)).shape == (1, 1 + 64, 32)


@timm_resize_noise
def test_unfittable_position_tables_are_reported_not_raised(tmp_path: Path) -> None:
    target = small_encoder(image_res=64, heads=4, depth=1, seed=0)
    other_heads = small_encoder(image_res=32, heads=2, depth=1, seed=1).state_dict()
    odd_rows = dict(target.state_dict())
    odd_rows["blocks.0.attn.relative_position_bias_table"] = torch.randn(50, 4)  # no square window
    for name, sd in (("heads", other_heads), ("rows", odd_rows)):
        path = tmp_path / f"{name}.pth"
        torch.save(sd, path)
        report = load_vision_weights(target, path)
        shape = tuple(sd["blocks.0.attn.relative_position_bias_table"].shape)
        table = "blocks.0.attn.relative_position_bias_table"
        assert list(map(str, report.mismatched)) == [f"{table}: checkpoint {shape} vs model (228, 4)"], name
        assert "blocks.0.attn.relative_position_bias_table" in report.missing


@timm_resize_noise
def test_absolute_position_embedding_resized(tmp_path: Path) -> None:
    source = small_encoder(image_res=32, seed=0, abs_pos_emb=True)  # [CLS] + 4×4 positions
    path = tmp_path / "abs_32px.pth"
    torch.save(source.state_dict(), path)
    target = small_encoder(image_res=64, seed=1, abs_pos_emb=True)  # [CLS] + 8×8
    report = load_vision_weights(target, path)
    assert report.ok, str(report)
    assert "pos_embed: (1, 17, 32) -> (1, 65, 32)" in map(str, report.resized)
    assert torch.equal(target.pos_embed[0, 0], source.pos_embed[0, 0])  # [CLS] position kept as is
    grid = source.pos_embed[0, 1:].reshape(4, 4, 32)
    new = target.pos_embed[0, 1:].reshape(8, 8, 32)
    # bicubic upsampling keeps the mean over the grid close and the layout (corner vs corner) in place
    assert torch.allclose(new.mean((0, 1)), grid.mean((0, 1)), atol=0.05)
    assert torch.nn.functional.cosine_similarity(new[0, 0], grid[0, 0], dim=0) > 0.8
    plain = small_encoder(image_res=64, seed=2)  # a model without the embedding reports it unexpected
    assert "pos_embed" in load_vision_weights(plain, path).unexpected


# ---------------------------------------------------------------------------- temporal embedding
@pytest.mark.parametrize(("ckpt_frames", "model_frames"), [(2, 4), (4, 2)])
def test_frame_embedding_resized(tmp_path: Path, ckpt_frames: int, model_frames: int) -> None:
    source = tiny_model(f"model.max_frames={ckpt_frames}", seed=0)
    path = tmp_path / "video.th"
    torch.save({"model": source.state_dict()}, path)
    target = tiny_model(f"model.max_frames={model_frames}", seed=1)
    init = target.absolute_frame_pos_embed.detach().clone()
    report = target.load_checkpoint(path)
    assert report.ok, str(report)
    assert list(map(str, report.resized)) == [
        f"absolute_frame_pos_embed: (1, {ckpt_frames}, 1, 64) -> (1, {model_frames}, 1, 64)"]
    n = min(ckpt_frames, model_frames)
    got = target.absolute_frame_pos_embed
    assert got.shape == (1, model_frames, 1, 64)
    assert torch.equal(got[:, :n], source.absolute_frame_pos_embed[:, :n])
    assert torch.equal(got[:, n:], init[:, n:])  # frames the checkpoint lacks keep their initialisation


def test_full_checkpoint_leaves_no_fresh_parameters(tmp_path: Path) -> None:
    """Loading our own checkpoint reaches every parameter, tied ones included (saved under one name only),
    so nothing gets optimizer.lr_mult; a model built from scratch has no fresh set either."""
    from models.checkpoint import save_checkpoint_weights
    cfg = load_config(ROOT / "configs" / "models" / "tiny.yaml")
    torch.manual_seed(0)
    scratch = X2VLM.from_config(cfg)
    assert scratch.fresh_parameters == set()
    path = save_checkpoint_weights(scratch, tmp_path)
    loaded = X2VLM.from_config({**cfg, "model": {**cfg["model"], "checkpoint": str(path)}})
    assert loaded.fresh_parameters == set(), sorted(loaded.fresh_parameters)[:5]
    assert torch.equal(loaded.text_encoder.embeddings.word_embeddings.weight,
                       scratch.text_encoder.embeddings.word_embeddings.weight)


def test_trusted_checkpoint_option_from_the_command_line(tmp_path: Path) -> None:
    """``--trusted-checkpoint`` (every script's config options) reaches the checkpoint read of a task script: a
    file weights_only refuses stops the script with one line naming the option; with it the run goes on."""
    import os
    import subprocess
    import sys

    from dataset.synthetic import generate
    files = generate(tmp_path / "syn", n_images=4, n_videos=0)
    path = tmp_path / "with_args.th"
    torch.save({"model": tiny_model().state_dict(), "args": argparse.Namespace(lr=1e-4)}, path)
    args = [str(ROOT / "Grounding.py"), "--config", str(ROOT / "configs/finetune/grounding_demo.yaml"),
            "--device", "cpu", "--checkpoint", str(path), "--output_dir", str(tmp_path / "out"), "--evaluate",
            "--override", f"model.text.tokenizer={files['vocab']}", "--override", f"data.root={files['root']}",
            "--override", f"data.finetune.train_file=[{files['grounding_train']}]",
            "--override", f"data.finetune.test_file=[{files['grounding_test']}]"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *args, *extra], cwd=ROOT, capture_output=True, text=True,
                              timeout=300, env=env)

    refused = run()
    lines = [ln for ln in refused.stderr.strip().splitlines() if ln.strip()]
    assert refused.returncode == 2 and len(lines) == 1, refused.stderr[-3000:]
    assert str(path) in lines[0] and "weights_only" in lines[0] and "--trusted-checkpoint" in lines[0]
    trusted = run("--trusted-checkpoint")
    assert trusted.returncode == 0, trusted.stderr[-3000:]
    assert f"checkpoint {path}: " in trusted.stdout and "keys loaded" in trusted.stdout


def test_saving_given_weights_writes_what_the_model_would(tmp_path: Path) -> None:
    """``save_checkpoint_weights(model, dir, weights)`` (a training engine's export) writes the same file content as
    saving the model itself: the same keys (tied weights once, under safetensors' name) and tensors; weights with
    other keys are refused in one line."""
    from safetensors.torch import load_file

    from models.checkpoint import save_checkpoint_weights
    cfg = load_config(ROOT / "configs" / "models" / "tiny.yaml")
    torch.manual_seed(0)
    model = X2VLM.from_config(cfg)
    own = load_file(save_checkpoint_weights(model, tmp_path / "own"))
    exported = {k: v.detach().clone() for k, v in model.state_dict().items()}
    given = load_file(save_checkpoint_weights(model, tmp_path / "given", exported))
    assert given.keys() == own.keys() and len(own) < len(exported)  # a tied pair is stored once
    assert all(torch.equal(given[k], own[k]) for k in own)
    with pytest.raises(ValueError, match="do not match the model's keys"):
        save_checkpoint_weights(model, tmp_path / "bad", {k: v for k, v in exported.items() if k != "temp"})
