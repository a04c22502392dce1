"""YAML config: defaults, `base:` inheritance, overrides, strict keys, save/load round trip."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from utils.config import ConfigError, load_config, load_defaults, parse_override, save_config

TINY = Path(__file__).resolve().parent.parent / "configs" / "models" / "tiny.yaml"


def write_yaml(path: Path, data: dict) -> Path:
    """Dump ``data`` to ``path`` and return it."""
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_defaults_load() -> None:
    cfg = load_config()
    assert cfg == load_defaults()
    assert cfg["model"]["image_res"] == 224
    assert cfg["model"]["vision"]["width"] == 768
    assert cfg["model"]["text"]["config"] == {}
    assert cfg["loss"] == {"itc": True, "itm": True, "mlm": True, "bbox": True, "itm_neg_group": 0}


def test_tiny_preset_merges_over_defaults(tiny_cfg: dict) -> None:
    m = tiny_cfg["model"]
    assert m["image_res"] == 64 and m["patch_size"] == 8
    assert m["vision"]["width"] == 64 and m["vision"]["init_values"] == 0.1  # file value + untouched default
    assert m["text"]["config"]["hidden_size"] == 64
    assert m["fusion"] == {"layers": 2, "init_from_text": True}


def test_base_inheritance(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    write_yaml(tmp_path / "a.yaml", {"model": {"image_res": 384, "vision": {"depth": 6, "heads": 6}}})
    write_yaml(tmp_path / "b.yaml", {"model": {"vision": {"heads": 8}}, "seed": 1})
    child = write_yaml(tmp_path / "sub" / "child.yaml",
                       {"base": ["../a.yaml", "../b.yaml"], "model": {"vision": {"depth": 4}}, "seed": 7})
    cfg = load_config(child)
    assert cfg["model"]["image_res"] == 384        # from a
    assert cfg["model"]["vision"]["heads"] == 8     # b overrides a (later base wins)
    assert cfg["model"]["vision"]["depth"] == 4     # the file itself wins over its bases
    assert cfg["model"]["vision"]["width"] == 768   # untouched default
    assert cfg["seed"] == 7
    assert "base" not in cfg


def test_base_as_single_string(tmp_path: Path) -> None:
    write_yaml(tmp_path / "a.yaml", {"model": {"embed_dim": 128}})
    cfg = load_config(write_yaml(tmp_path / "c.yaml", {"base": "a.yaml"}))
    assert cfg["model"]["embed_dim"] == 128


def test_base_loop_raises(tmp_path: Path) -> None:
    write_yaml(tmp_path / "a.yaml", {"base": "b.yaml"})
    write_yaml(tmp_path / "b.yaml", {"base": "a.yaml"})
    with pytest.raises(ConfigError, match="loop"):
        load_config(tmp_path / "a.yaml")


@pytest.mark.parametrize(("override", "keys", "expected"), [
    ("model.image_res=384", ("model", "image_res"), 384),
    ("model.temp=0.05", ("model", "temp"), 0.05),
    ("model.grad_checkpointing=true", ("model", "grad_checkpointing"), True),
    ("loss.itc=false", ("loss", "itc"), False),
    ("model.vision.checkpoint=null", ("model", "vision", "checkpoint"), None),
    ("model.checkpoint=", ("model", "checkpoint"), None),
    ("model.text.config.extra=[1, 2, 3]", ("model", "text", "config", "extra"), [1, 2, 3]),
    ("output_dir=runs/x", ("output_dir",), "runs/x"),
])
def test_override_parses_yaml_values(override: str, keys: tuple[str, ...], expected: object) -> None:
    node = load_config(None, [override])
    for k in keys:
        node = node[k]
    assert node == expected
    assert type(node) is type(expected)


def test_override_applies_after_file(tiny_cfg: dict) -> None:
    cfg = load_config(TINY, ["model.vision.depth=3", "model.image_res=32"])
    assert cfg["model"]["vision"]["depth"] == 3 and cfg["model"]["image_res"] == 32
    assert cfg["model"]["vision"]["width"] == tiny_cfg["model"]["vision"]["width"]


def test_parse_override_keeps_equals_in_value_and_rejects_bad_syntax() -> None:
    assert parse_override("a.b=x=y") == (["a", "b"], "x=y")
    with pytest.raises(ConfigError):
        parse_override("model.image_res")
    with pytest.raises(ConfigError):
        parse_override("=3")


def test_unknown_key_in_file_names_dotted_key(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "bad.yaml", {"model": {"vision": {"widht": 32}}})
    with pytest.raises(ConfigError, match=r"model\.vision\.widht") as err:
        load_config(path)
    assert str(path) in str(err.value)


def test_unknown_top_level_key_in_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'optimiser'"):
        load_config(write_yaml(tmp_path / "bad.yaml", {"optimiser": {"lr": 1}}))


@pytest.mark.parametrize(("override", "dotted"), [
    ("model.vision.widht=32", "model.vision.widht"),
    ("modle.image_res=3", "modle"),
    ("loss.contrastive=false", "loss.contrastive"),
    ("model.image_res.size=3", "model.image_res.size"),        # sub-key of a scalar
    ("model.checkpoint.path=x", "model.checkpoint.path"),      # sub-key of a null default
])
def test_unknown_key_in_override_names_dotted_key(override: str, dotted: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert f"'{dotted}'" in str(err.value)


def test_sub_key_of_scalar_in_file_is_rejected(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "bad.yaml", {"model": {"image_res": {"size": 3}}})
    with pytest.raises(ConfigError, match=r"model\.image_res"):
        load_config(path)


def test_free_form_mapping_accepts_any_sub_key(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "t.yaml", {"model": {"text": {"config": {"anything_goes": 5, "nested": {"x": 1}}}}})
    cfg = load_config(path, ["model.text.config.another_key=abc", "model.text.config.nested.y=2"])
    assert cfg["model"]["text"]["config"] == {"anything_goes": 5, "nested": {"x": 1, "y": 2}, "another_key": "abc"}


def test_save_config_round_trip(tmp_path: Path) -> None:
    cfg = load_config(TINY, ["model.text.config.extra=[1, 2]", "model.checkpoint=null"])
    target = save_config(cfg, tmp_path / "run" / "nested")
    assert target.name == "config.yaml" and target.is_file()
    assert not list(target.parent.glob("*.tmp"))
    assert load_config(target) == cfg


def test_missing_file_names_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "missing.yaml"
    with pytest.raises(ConfigError, match="not found") as err:
        load_config(missing)
    assert str(missing) in str(err.value)


def test_missing_base_names_path(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "c.yaml", {"base": "gone.yaml"})
    with pytest.raises(ConfigError, match="gone.yaml"):
        load_config(path)


def test_invalid_yaml_and_non_mapping(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(lst)


def test_numbers_written_as_text_are_read_as_numbers() -> None:
    cfg = load_config(overrides=["optimizer.lr=1e-3", "train.steps=12"])
    assert cfg["optimizer"]["lr"] == 1e-3 and isinstance(cfg["optimizer"]["lr"], float)
    assert cfg["train"]["steps"] == 12
    with pytest.raises(ConfigError, match="optimizer.lr"):
        load_config(overrides=["optimizer.lr=fast"])
