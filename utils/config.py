"""YAML configuration: defaults, `base:` inheritance, `--override key.sub=value`, strict key and value checking."""
from __future__ import annotations

import argparse
import copy
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from utils.atomic import atomic_write
from utils.trust import trust_checkpoints

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULTS_PATH = REPO_ROOT / "configs" / "defaults.yaml"
RESOLVED_NAME = "config.yaml"


class ConfigError(ValueError):
    """A configuration file or override that cannot be used; the message names the key or file."""


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def _merge(dst: dict, src: dict) -> dict:
    """Recursively merge ``src`` into a copy of ``dst`` (mappings merge, everything else replaces)."""
    out = copy.deepcopy(dst)
    for key, value in src.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _load_with_bases(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"config inheritance loop through {path}")
    data = _read_yaml(path)
    bases = data.pop("base", []) or []
    if isinstance(bases, str):
        bases = [bases]
    merged: dict = {}
    for base in bases:
        merged = _merge(merged, _load_with_bases(path.parent / base, seen + (path,)))
    return _merge(merged, data)


def _check_keys(cfg: dict, schema: dict, prefix: str = "", source: str = "config") -> None:
    for key, value in cfg.items():
        dotted = f"{prefix}{key}"
        if key not in schema:
            known = ", ".join(sorted(schema)) or "(none)"
            raise ConfigError(f"unknown config key '{dotted}' in {source}; known keys here: {known}")
        expected = schema[key]
        if isinstance(value, dict) and not isinstance(expected, dict):
            raise ConfigError(f"config key '{dotted}' in {source} takes a single value, not a mapping: {value!r}")
        if isinstance(expected, dict) and expected:
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{dotted}' in {source} must be a mapping, got {type(value).__name__}")
            _check_keys(value, expected, dotted + ".", source)


def _coerce_numbers(cfg: dict, schema: dict, prefix: str = "") -> None:
    """Where the default is a number, accept a number written as text (YAML reads ``1e-3`` as a string)
    and reject any other text, naming the key."""
    for key, value in cfg.items():
        expected = schema.get(key)
        dotted = f"{prefix}{key}"
        if isinstance(expected, dict) and isinstance(value, dict) and expected:
            _coerce_numbers(value, expected, dotted + ".")
        elif isinstance(expected, (int, float)) and not isinstance(expected, bool) and isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                raise ConfigError(f"config key '{dotted}' takes a number, got '{value}'") from None
            cfg[key] = int(number) if isinstance(expected, int) and number.is_integer() else number


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into (["a","b","c"], parsed YAML value)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.sub=value")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override '{text}': value is not valid YAML: {e}") from e
    return parts, value


def apply_overrides(cfg: dict, overrides: Iterable[str], schema: dict | None = None) -> dict:
    """Return a copy of ``cfg`` with each ``key.sub=value`` override applied (keys checked against ``schema``)."""
    out = copy.deepcopy(cfg)
    for text in overrides:
        parts, value = parse_override(text)
        node = out
        spec: Any = schema  # the schema under the key so far: a mapping, or a leaf's default
        free = spec is None or spec == {}  # inside a free-form ({}) mapping: any sub-key goes
        for i, part in enumerate(parts):
            dotted = ".".join(parts[: i + 1])
            if not free and (not isinstance(spec, dict) or part not in spec):
                raise ConfigError(f"unknown config key '{dotted}' in --override {text}")
            last = i == len(parts) - 1
            if last:
                node[part] = value
            else:
                if not isinstance(node.get(part), dict):
                    node[part] = {}
                node = node[part]
                if not free:
                    spec = spec[part]
                    free = spec == {}
    return out


def load_defaults() -> dict:
    return _read_yaml(DEFAULTS_PATH)


def load_config(path: str | os.PathLike | None = None, overrides: Iterable[str] = ()) -> dict:
    """Defaults, then the file (with its ``base:`` chain), then overrides; every key is checked, and every value
    for its type and range (:mod:`utils.config_schema`)."""
    schema = load_defaults()
    cfg = copy.deepcopy(schema)
    if path is not None:
        data = _load_with_bases(Path(path))
        _check_keys(data, schema, source=str(path))
        cfg = _merge(cfg, data)
    cfg = apply_overrides(cfg, list(overrides), schema)
    _check_keys(cfg, schema, source="overrides")
    _coerce_numbers(cfg, schema)
    from utils.config_schema import check_config  # imports ConfigError from here
    return check_config(cfg, schema)


def save_config(cfg: dict, output_dir: str | os.PathLike) -> Path:
    """Write the resolved config as ``config.yaml`` in ``output_dir`` (atomically) and return its path."""
    text = yaml.safe_dump(cfg, sort_keys=False)
    return atomic_write(Path(output_dir) / RESOLVED_NAME, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def add_config_args(parser: argparse.ArgumentParser, default_config: str | None = None) -> None:
    """Add the ``--config`` and repeatable ``--override`` options every script takes."""
    where = f"; default: {default_config}" if default_config else ""
    parser.add_argument("--config", default=default_config,
                        help=f"YAML config file (see configs/ and docs/configuration.md{where})")
    parser.add_argument(
        "--override", action="append", default=[], metavar="KEY=VALUE",
        help="override one config key, e.g. --override model.image_res=384 (repeatable)",
    )
    parser.add_argument("--allow-partial-load", action="store_true",
                        help="go on when a checkpoint leaves backbone weights at random init (sets "
                             "model.allow_partial_load; by default such a load stops the script)")
    parser.add_argument("--trusted-checkpoint", action="store_true",
                        help="unpickle any object in the checkpoint files this run reads (--checkpoint, "
                             "model.*checkpoint, --resume, DeepSpeed shards); a pickle can run code, so only for "
                             "files you trust (by default only tensors and plain containers are read)")


def config_from_args(args: argparse.Namespace) -> dict:
    overrides = list(args.override)
    if getattr(args, "allow_partial_load", False):
        overrides.append("model.allow_partial_load=true")
    if getattr(args, "trusted_checkpoint", False):
        trust_checkpoints()  # the default of every checkpoint read in this process
    return load_config(args.config, overrides)
