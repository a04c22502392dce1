"""Text encoder through ``transformers.AutoModel`` (BERT, RoBERTa, XLM-R, ...) and its tokenizer."""
from __future__ import annotations

import inspect
from pathlib import Path

from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, BertTokenizerFast, PretrainedConfig

SWAP_MODES = ("none", "full", "cross_attention_only", "embeddings_only")


def swap_mode(text_cfg: dict) -> str:
    """``model.text.swap.mode`` (``none`` when the section is absent), checked against :data:`SWAP_MODES`."""
    mode = str((text_cfg.get("swap") or {}).get("mode") or "none")
    if mode not in SWAP_MODES:
        raise ValueError(f"model.text.swap.mode must be one of {', '.join(SWAP_MODES)}, got '{mode}'")
    return mode


def text_config(text_cfg: dict) -> PretrainedConfig:
    """The transformers config of the text encoder: from ``name_or_path`` (a local folder; ``config`` fields
    override it) or built from ``config``. With a text-encoder swap (``swap.mode`` other than none) ``config``
    describes the English checkpoint's text encoder: ``full`` / ``cross_attention_only`` use the folder's config
    as is; ``embeddings_only`` builds ``config``'s architecture with the folder's vocabulary."""
    path = text_cfg.get("name_or_path")
    fields = dict(text_cfg.get("config") or {})
    if swap_mode(text_cfg) == "embeddings_only":
        # the English architecture (``config``) with the multilingual model's vocabulary
        if not path or not Path(path).is_dir():
            raise FileNotFoundError("model.text.swap.mode embeddings_only: model.text.name_or_path must be the local "
                                    f"folder of the multilingual model whose vocabulary is used, got '{path}'")
        other = AutoConfig.from_pretrained(path, local_files_only=True)
        fields.update(vocab_size=other.vocab_size, pad_token_id=other.pad_token_id)
        return AutoConfig.for_model(fields.pop("model_type", "bert"), **fields)
    if path:
        if not Path(path).is_dir():
            raise FileNotFoundError(f"model.text.name_or_path: '{path}' is not a local folder with a config.json")
        cfg = AutoConfig.from_pretrained(path, local_files_only=True)
        if swap_mode(text_cfg) != "none":  # ``config`` then describes the English checkpoint's text encoder
            return cfg
        for key, value in fields.items():
            setattr(cfg, key, value)
        return cfg
    model_type = fields.pop("model_type", "bert")
    return AutoConfig.for_model(model_type, **fields)


def build_text_encoder(text_cfg: dict, load_weights: bool = True) -> nn.Module:
    """Text encoder without pooler, SDPA attention; weights from ``name_or_path`` when given and asked for
    (not with ``swap.mode: embeddings_only``, where ``name_or_path`` only lends its vocabulary and embeddings)."""
    cfg = text_config(text_cfg)
    cfg._attn_implementation = "sdpa"
    path = text_cfg.get("name_or_path")
    if path and load_weights and swap_mode(text_cfg) != "embeddings_only":
        return AutoModel.from_pretrained(path, config=cfg, add_pooling_layer=False, local_files_only=True,
                                         attn_implementation="sdpa")
    return AutoModel.from_config(cfg, add_pooling_layer=False, attn_implementation="sdpa")


def build_tokenizer(text_cfg: dict):
    """Tokenizer from ``tokenizer`` (a folder or a WordPiece ``vocab.txt``) or else ``name_or_path``."""
    source = text_cfg.get("tokenizer") or text_cfg.get("name_or_path")
    if not source:
        from utils.config import ConfigError  # a ValueError
        raise ConfigError("no tokenizer: set model.text.tokenizer (folder or vocab.txt) or model.text.name_or_path")
    source = Path(source)
    if source.is_file():
        # transformers 5 takes the vocab file as ``vocab`` and silently ignores ``vocab_file`` (4.x's name)
        arg = "vocab" if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters else "vocab_file"
        return BertTokenizerFast(**{arg: str(source)}, do_lower_case=True)
    if not source.is_dir():
        raise FileNotFoundError(f"tokenizer '{source}' is neither a vocab file nor a local folder")
    return AutoTokenizer.from_pretrained(str(source), local_files_only=True)
