"""Text encoder through ``transformers.AutoModel`` (BERT, RoBERTa, XLM-R, ...); its tokenizer:
:func:`dataset.text.build_tokenizer`."""
from __future__ import annotations

from pathlib import Path

from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel

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
        model = AutoModel.from_pretrained(path, config=cfg, add_pooling_layer=False, local_files_only=True,
                                          attn_implementation="sdpa")
    else:
        model = AutoModel.from_config(cfg, add_pooling_layer=False, attn_implementation="sdpa")
    install_output_capture(model)
    return model


def install_output_capture(model: PreTrainedModel) -> None:
    """Install now the hooks through which transformers ≥ 5 collects ``output_hidden_states``; it installs them
    on the first call that asks for hidden states, under a lock that ``torch.compile`` cannot trace (a graph
    break, in FIBER's text pass). No-op on transformers 4 (no such hooks)."""
    try:
        from transformers.utils.output_capturing import maybe_install_capturing_hooks
    except ImportError:
        return
    maybe_install_capturing_hooks(model)
