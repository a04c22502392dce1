"""YAML config: defaults, `base:` inheritance, overrides, strict keys, save/load round trip."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from utils.config import ConfigError, load_config, load_defaults, parse_override, save_config

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "configs" / "models" / "tiny.yaml"


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


# ------------------------------------------------------------------ value checks (utils/config_schema.py)
@pytest.mark.parametrize(("override", "dotted", "allowed"), [
    ("train.steps=2.5", "train.steps", "an integer >= 1"),          # trained 3 steps, no checkpoint
    ("train.steps=true", "train.steps", "an integer >= 1"),         # a YAML bool is an int in Python
    ("train.steps=-3", "train.steps", "an integer >= 1"),
    ("train.device=gpu", "train.device", "one of auto, cpu, cuda"),  # ran on the CPU
    ("train.log_every=0", "train.log_every", "an integer >= 1"),    # crashed after training started
    ("train.ckpt_every=0", "train.ckpt_every", "an integer >= 1"),
    ("data.images.batch_size=0", "data.images.batch_size", "an integer >= 1"),
    ("data.regions.batch_size=0", "data.regions.batch_size", "an integer >= 1"),
    ("data.finetune.batch_size_train=0", "data.finetune.batch_size_train", "an integer >= 1"),
    ("data.num_workers=-1", "data.num_workers", "an integer >= 0"),
    ("train.grad_accum=0", "train.grad_accum", "an integer >= 1"),
    ("train.precision=fp8", "train.precision", "one of fp32, bf16, fp16"),
    ("model.architecture=fibre", "model.architecture", "one of x2vlm, fiber"),
    ("optimizer.no_decay=some", "optimizer.no_decay", "one of extended, official"),
    ("scheduler.name=cosine_with_min_lr", "scheduler.name", "one of linear, cosine"),
    ("scheduler.warmup=2.5", "scheduler.warmup", "a fraction of train.steps in [0, 1)"),
    ("scheduler.warmup=-1", "scheduler.warmup", "an integer number of steps >= 0"),
    ("data.mask_prob=1.5", "data.mask_prob", "a number >= 0 and <= 1"),
    ("optimizer.lr=0", "optimizer.lr", "a number > 0"),
    ("optimizer.lr=true", "optimizer.lr", "a number > 0"),
    ("optimizer.lr=.nan", "optimizer.lr", "a number > 0"),
    ("train.dist_timeout=.inf", "train.dist_timeout", "a number > 0"),
    ("data.max_image_pixels=-1", "data.max_image_pixels", "an integer >= 0, or null"),
    ("model.grad_checkpointing=1", "model.grad_checkpointing", "true or false"),
    ("output_dir=5", "output_dir", "a string"),
    ("model.text.tokenizer=5", "model.text.tokenizer", "a string, or null"),
    ("model.decoder.layers=two", "model.decoder.layers", "an integer >= 1, or null"),
    ("data.train_file=[1, 2]", "data.train_file", "a file path or a list of file paths"),
    ("data.crop_scale_pretrain=[0.9, 0.2]", "data.crop_scale_pretrain", "[low, high] with low <= high"),
    ("optimizer.betas=[0.9]", "optimizer.betas", "a list of two numbers"),
    ("model.text.config=3", "model.text.config", "a mapping"),
    ("train.stages=3", "train.stages", "a list"),
    ("eval.caption_tokenizer=auto", "eval.caption_tokenizer", "one of ptb, simple"),
])
def test_bad_value_fails_at_load_with_one_line(override: str, dotted: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    message = str(err.value)
    assert message.startswith(f"{dotted} must be ") and allowed in message, message
    assert "\n" not in message and "got " in message


def test_bad_value_in_a_file_fails_at_load(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "bad.yaml", {"base": str(TINY), "train": {"steps": 2.5}})
    with pytest.raises(ConfigError, match=r"^train\.steps must be an integer >= 1, got 2\.5$"):
        load_config(path)


def test_bad_value_message_names_key_value_and_choices() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, ["train.device=gpu"])
    assert str(err.value) == "train.device must be one of auto, cpu, cuda, got 'gpu'"
    with pytest.raises(ConfigError) as err:
        load_config(None, ["train.steps=true"])
    assert str(err.value) == "train.steps must be an integer >= 1, got true"


def test_bad_value_is_one_line_on_the_command_line() -> None:
    from utils.cli import report_user_error
    with pytest.raises(ConfigError) as err:
        load_config(None, ["train.ckpt_every=0"])
    line = report_user_error("Pretrain.py", err.value)
    assert line.startswith("Pretrain.py: error: train.ckpt_every must be an integer >= 1, got 0;")
    assert "\n" not in line


@pytest.mark.parametrize(("override", "dotted", "expected"), [
    ("train.steps=1.0e5", "train.steps", 100000),       # a float without a fraction is an int
    ("train.steps=3", "train.steps", 3),
    ("model.temp=1", "model.temp", 1),                  # an int for a float key
    ("scheduler.warmup=0.1", "scheduler.warmup", 0.1),  # a fraction of train.steps
    ("scheduler.warmup=10", "scheduler.warmup", 10),
    ("scheduler.warmup=10.0", "scheduler.warmup", 10),
    ("data.train_file=a.json", "data.train_file", "a.json"),  # one file as a string
    ("model.decoder.layers=2", "model.decoder.layers", 2),
    ("eval.num_workers=0", "eval.num_workers", 0),
    ("train.device=cuda", "train.device", "cuda"),
    ("train.keep_last=0", "train.keep_last", 0),       # keep every step checkpoint
    ("optimizer.betas=[0.9, 0.98]", "optimizer.betas", [0.9, 0.98]),
])
def test_good_values_load(override: str, dotted: str, expected: object) -> None:
    node = load_config(None, [override])
    for part in dotted.split("."):
        node = node[part]
    assert node == expected and type(node) is type(expected)


def test_steps_zero_only_when_epochs_set_them() -> None:
    assert load_config(None, ["train.steps=0", "train.epochs=3"])["train"]["steps"] == 0
    with pytest.raises(ConfigError, match=r"^train\.steps must be an integer >= 1, got 0$"):
        load_config(None, ["train.steps=0"])


def test_cross_key_ranges() -> None:
    with pytest.raises(ConfigError, match="model.temp_min must be <= model.temp_max"):
        load_config(None, ["model.temp_min=0.6"])
    with pytest.raises(ConfigError, match="caption.min_length must be <= caption.max_length"):
        load_config(None, ["caption.min_length=60"])


def test_schema_covers_every_key() -> None:
    """Every rule names a key of configs/defaults.yaml, and every key with a null default has a rule (its
    type cannot be read from the default)."""
    from utils.config_schema import RULES, _leaves, rule_for
    leaves = dict(_leaves(load_defaults()))
    assert not set(RULES) - set(leaves), sorted(set(RULES) - set(leaves))
    untyped = [key for key, default in leaves.items() if rule_for(key, default)[1] == "any"]
    assert not untyped, f"keys with a null default need a rule in utils/config_schema.py: {untyped}"


def test_every_shipped_config_loads() -> None:
    configs = sorted((ROOT / "configs").rglob("*.yaml"))
    assert len(configs) > 20
    for path in configs:
        load_config(path)  # a value out of its range would raise ConfigError naming the key


def test_pretraining_writes_final_weights_when_steps_are_not_a_multiple_of_ckpt_every(tmp_path: Path,
                                                                                     monkeypatch) -> None:
    """3 steps with ckpt_every 2: a step checkpoint at 2 and at the last step, and the final weights as
    model.safetensors (what load_model and --checkpoint read)."""
    import sys

    import Pretrain
    from dataset.synthetic import generate
    from models import load_model
    from utils.train_state import checkpoint_name, checkpoint_paths
    files = generate(tmp_path / "syn", seed=0, n_images=8, n_videos=0)
    root, out = files["root"], tmp_path / "run"
    overrides = [f"data.root={root}", f"model.text.tokenizer={files['vocab']}",
                 f"data.train_file=[{root}/pretrain/image_text.jsonl]", "data.train_file_regions=[]",
                 "data.images.batch_size=2", "data.num_workers=0", "data.randaugment=false",
                 "train.steps=3", "train.ckpt_every=2", "train.log_every=1", "scheduler.warmup=0",
                 "loss.bbox=false", "eval.retrieval_file=[]", "eval.grounding_file=[]"]
    monkeypatch.setattr(sys, "argv", ["Pretrain.py", "--config", str(ROOT / "configs" / "pretrain" / "demo.yaml"),
                                      "--output_dir", str(out), "--device", "cpu",
                                      *[a for o in overrides for a in ("--override", o)]])
    Pretrain.main()
    assert [p.name for p in checkpoint_paths(out)] == [checkpoint_name(2), checkpoint_name(3)]
    assert (out / "model.safetensors").is_file()
    load_model(out)  # the folder loads (weights + config.yaml)
