"""Type and range of every config value, checked when the config loads (:func:`utils.config.load_config`).

Each key's type comes from its default in ``configs/defaults.yaml`` (int, float, bool, str, list; ``{}`` = a
free-form mapping); :data:`RULES` adds what the default cannot say: ranges, choices, and the types of keys whose
default is null (which also accept null). An int key takes an integer (a float like ``1.0e5`` with no fraction
is read as one; ``2.5`` or ``true`` is an error), a float key takes any number but a bool, a str key only text.
A value that breaks a rule raises :class:`~utils.config.ConfigError` with one line naming the key, the value
and what is allowed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, TypeGuard

#: schedulers that ``transformers.get_scheduler`` builds from warm-up and total steps alone and that step
#: without a metric (the trainer calls ``scheduler.step()``); the others need arguments the config has no key for
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
              "inverse_sqrt")


@dataclass(frozen=True)
class Rule:
    """``kind``: int, float, bool, str, files (a path or a list of paths), pair (two numbers), range (a pair
    low <= high), list, mapping, warmup (int steps or float fraction); empty: from the default.
    ``lo``/``hi``: bounds (``open_lo``/``open_hi`` exclude them). ``choices``: allowed values. ``null``: null
    allowed too."""
    kind: str = ""
    lo: float | None = None
    hi: float | None = None
    open_lo: bool = False
    open_hi: bool = False
    choices: tuple[Any, ...] = ()
    null: bool = False


def _int(lo: int | None = None, hi: int | None = None, null: bool = False) -> Rule:
    return Rule("int", lo, hi, null=null)


def _float(lo: float | None = None, hi: float | None = None, open_lo: bool = False, open_hi: bool = False) -> Rule:
    return Rule("float", lo, hi, open_lo, open_hi)


def _one_of(*choices: str) -> Rule:
    return Rule("str", choices=choices)


POSITIVE, NON_NEGATIVE = _int(1), _int(0)
FRACTION = _float(0.0, 1.0)          # a probability / fraction in [0, 1]
POSITIVE_FLOAT = _float(0.0, open_lo=True)
OPTIONAL_PATH = Rule("str", null=True)
FILES = Rule("files")

#: dotted key -> rule (keys not named here: the default's type, any value of it)
RULES: dict[str, Rule] = {
    "seed": NON_NEGATIVE,
    "model.architecture": _one_of("x2vlm", "fiber"),
    "model.image_res": POSITIVE, "model.patch_size": POSITIVE, "model.embed_dim": POSITIVE,
    "model.temp": POSITIVE_FLOAT, "model.temp_min": POSITIVE_FLOAT, "model.temp_max": POSITIVE_FLOAT,
    "model.num_answers": NON_NEGATIVE, "model.max_frames": NON_NEGATIVE,
    "model.vision.width": POSITIVE, "model.vision.depth": POSITIVE, "model.vision.heads": POSITIVE,
    "model.vision.mlp_ratio": POSITIVE_FLOAT, "model.vision.init_values": _float(0.0),
    "model.vision.drop_path": _float(0.0, 1.0, open_hi=True),
    "model.vision.checkpoint": OPTIONAL_PATH,
    "model.text.name_or_path": OPTIONAL_PATH, "model.text.tokenizer": OPTIONAL_PATH,
    "model.text.swap.mode": _one_of("none", "full", "cross_attention_only", "embeddings_only"),
    "model.text.swap.checkpoint": OPTIONAL_PATH,
    "model.fusion.layers": POSITIVE, "model.fiber.layers": POSITIVE,
    "model.decoder.layers": _int(1, null=True),
    "model.checkpoint": OPTIONAL_PATH,
    "loss.itm_neg_group": NON_NEGATIVE,
    "train.device": _one_of("auto", "cpu", "cuda"),
    "train.engine": _one_of("ddp", "deepspeed"),
    "train.steps": POSITIVE,  # 0 also allowed when train.epochs > 0 sets it (check_config)
    "train.epochs": NON_NEGATIVE, "train.grad_accum": POSITIVE, "train.clip_grad": _float(0.0),
    "train.precision": _one_of("fp32", "bf16", "fp16"),
    "train.log_every": POSITIVE, "train.ckpt_every": POSITIVE, "train.keep_last": NON_NEGATIVE,
    "train.max_nonfinite": POSITIVE, "train.dist_timeout": POSITIVE_FLOAT,
    "train.best_metric": Rule("str", null=True), "train.best_mode": _one_of("max", "min"),
    "optimizer.lr": POSITIVE_FLOAT, "optimizer.weight_decay": _float(0.0),
    "optimizer.no_decay": _one_of("extended", "official"),
    "optimizer.lr_mult": POSITIVE_FLOAT, "optimizer.cross_modal_lr_mult": POSITIVE_FLOAT,
    "optimizer.betas": Rule("pair", 0.0, 1.0, open_hi=True), "optimizer.eps": POSITIVE_FLOAT,
    "optimizer.kernels": _one_of("auto", "fused", "foreach"),
    "train.compile_mode": _one_of("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
    "scheduler.name": _one_of(*SCHEDULERS),
    "scheduler.warmup": Rule("warmup"),
    "data.root": OPTIONAL_PATH,
    "data.train_file": FILES, "data.train_file_regions": FILES, "data.train_file_videos": FILES,
    "data.images.language": Rule("str", null=True), "data.images.batch_size": POSITIVE,
    "data.regions.batch_size": POSITIVE, "data.regions.max_images": POSITIVE, "data.regions.max_regions": POSITIVE,
    "data.regions.min_perc_in_image": FRACTION,
    "data.videos.batch_size": POSITIVE, "data.videos.frame_len": POSITIVE,
    "data.videos.min_frames_before_sampling": NON_NEGATIVE,
    "data.max_words": POSITIVE, "data.max_tokens": _int(3), "data.mask_prob": FRACTION, "data.max_masks": POSITIVE,
    "data.skipgram_prb": FRACTION, "data.skipgram_size": POSITIVE,
    "data.crop_scale_pretrain": Rule("range", 0.0, 1.0, open_lo=True),
    "data.crop_scale_finetune": Rule("range", 0.0, 1.0, open_lo=True),
    "data.randaugment_magnitude": _int(0, 10),
    "data.randaugment_kernels": _one_of("pil", "tensor"),
    "data.hflip": _one_of("swap", "careful", "none"),
    "data.jpeg_draft": Rule("bool"),
    "data.num_workers": NON_NEGATIVE, "data.max_bad_fraction": FRACTION, "data.bad_window": POSITIVE,
    "data.max_image_pixels": _int(0, null=True),  # 0 / null: no bound
    "data.wds_shuffle_buffer": NON_NEGATIVE,
    "data.finetune.train_file": FILES, "data.finetune.val_file": FILES, "data.finetune.test_file": FILES,
    "data.finetune.answer_list": OPTIONAL_PATH, "data.finetune.ans2label": OPTIONAL_PATH,
    "data.finetune.batch_size_train": POSITIVE, "data.finetune.batch_size_test": POSITIVE,
    "eval.retrieval_file": FILES, "eval.grounding_file": FILES,
    "eval.k_test": POSITIVE, "eval.batch_size": POSITIVE, "eval.text_batch_size": POSITIVE,
    "eval.itm_batch_size": POSITIVE, "eval.num_workers": _int(0, null=True),
    "eval.caption_tokenizer": _one_of("ptb", "simple"),
    "caption.label_smoothing": _float(0.0, 1.0, open_hi=True),
    "caption.num_beams": POSITIVE, "caption.max_length": POSITIVE, "caption.min_length": NON_NEGATIVE,
    "caption.no_repeat_ngram": NON_NEGATIVE,
}


#: a default's Python type → the kind of value its key takes (bool first: a bool is also an int)
_KINDS = ((bool, "bool"), (int, "int"), (float, "float"), (str, "str"), (list, "list"), (dict, "mapping"))


def _kind_of(default: Any) -> str:
    # "any": a null default without a rule (tests/test_config.py requires a rule for each)
    return next((kind for cls, kind in _KINDS if isinstance(default, cls)), "any")


def show(value: Any) -> str:
    """``value`` as written in YAML (true, null, 'text', 2.5)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return repr(value)


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _bounds(rule: Rule) -> str:
    parts = []
    if rule.lo is not None:
        parts.append(f"{'>' if rule.open_lo else '>='} {rule.lo:g}")
    if rule.hi is not None:
        parts.append(f"{'<' if rule.open_hi else '<='} {rule.hi:g}")
    return " and ".join(parts)


def _in_bounds(rule: Rule, x: float) -> bool:
    if not math.isfinite(x):  # NaN or infinity
        return False
    if rule.lo is not None and (x < rule.lo or (rule.open_lo and x == rule.lo)):
        return False
    return not (rule.hi is not None and (x > rule.hi or (rule.open_hi and x == rule.hi)))


def _allowed(rule: Rule, kind: str) -> str:
    """What ``rule`` allows, in words (the end of an error message)."""
    bounds = _bounds(rule)
    text = {
        "int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
        "files": "a file path or a list of file paths", "list": "a list", "mapping": "a mapping",
        "pair": "a list of two numbers", "range": "a list of two numbers [low, high] with low <= high",
        "any": "any value", "warmup": "an integer number of steps >= 0 or a fraction of train.steps in [0, 1)",
    }[kind]
    if rule.choices:
        text = "one of " + ", ".join(map(str, rule.choices))
    elif bounds:
        text += (", each " if kind in ("pair", "range") else " ") + bounds
    return text + (", or null" if rule.null else "")


def _check_value(key: str, value: Any, rule: Rule, kind: str) -> Any:
    """``value`` if it fits (an integral float read as an int for an int key), else ConfigError."""
    from utils.config import ConfigError
    if value is None and rule.null:
        return None
    bad = ConfigError(f"{key} must be {_allowed(rule, kind)}, got {show(value)}")
    if kind == "int":
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not _in_bounds(rule, value):
            raise bad
    elif kind == "float":
        if not _is_number(value) or not _in_bounds(rule, value):
            raise bad
    elif kind == "bool":
        if not isinstance(value, bool):
            raise bad
    elif kind == "str":
        if not isinstance(value, str) or (rule.choices and value not in rule.choices):
            raise bad
    elif kind == "files":
        if not (isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))):
            raise bad
    elif kind in ("pair", "range"):
        if not (isinstance(value, list) and len(value) == 2 and all(_is_number(v) and _in_bounds(rule, v)
                                                                    for v in value)):
            raise bad
        if kind == "range" and value[0] > value[1]:
            raise bad
    elif kind == "warmup":
        if not _is_number(value) or not value >= 0 or (isinstance(value, float) and value >= 1 and
                                                       not value.is_integer()):
            raise bad
        if isinstance(value, float) and value >= 1:
            value = int(value)
    elif kind == "list":
        if not isinstance(value, list):
            raise bad
    elif kind == "mapping" and not isinstance(value, dict):
        raise bad
    return value


def rule_for(dotted: str, default: Any) -> tuple[Rule, str]:
    """The rule of key ``dotted`` and the kind of value it takes."""
    rule = RULES.get(dotted, Rule())
    return rule, rule.kind or _kind_of(default)


def _leaves(defaults: dict, prefix: str = ""):
    """(dotted key, default) of every value key of ``defaults`` ({} mappings are values)."""
    for key, default in defaults.items():
        dotted = f"{prefix}{key}"
        if isinstance(default, dict) and default:
            yield from _leaves(default, dotted + ".")
        else:
            yield dotted, default


def check_config(cfg: dict, defaults: dict) -> dict:
    """Check (in place) every value of ``cfg`` (merged over ``defaults``, keys already checked) against its
    default's type and :data:`RULES`; returns ``cfg``."""
    from utils.config import ConfigError
    epochs = (cfg.get("train") or {}).get("epochs")
    for dotted, default in _leaves(defaults):
        *parents, last = dotted.split(".")
        node: Any = cfg
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or last not in node:
            continue
        rule, kind = rule_for(dotted, default)
        if dotted == "train.steps" and _is_number(epochs) and epochs > 0:
            rule = NON_NEGATIVE  # train.epochs sets the steps (task scripts)
        node[last] = _check_value(dotted, node[last], rule, kind)
    model, caption = cfg.get("model", {}), cfg.get("caption", {})
    if model.get("temp_min", 0) > model.get("temp_max", 1):
        raise ConfigError(f"model.temp_min must be <= model.temp_max, got {show(model['temp_min'])} > "
                          f"{show(model['temp_max'])}")
    if caption.get("min_length", 0) > caption.get("max_length", 1):
        raise ConfigError(f"caption.min_length must be <= caption.max_length, got {show(caption['min_length'])} > "
                          f"{show(caption['max_length'])}")
    return cfg
