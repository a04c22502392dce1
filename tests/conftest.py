"""Shared fixtures: the tiny config/model and a random pretraining batch (contract: top of models/x2vlm.py)."""
from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The test tensors are tiny: intra-op threads buy nothing, and on a shared 2-core machine two OpenMP
# threads per process oversubscribe the cores and make steps 10-50x slower. Set OMP_NUM_THREADS to override.
if "OMP_NUM_THREADS" not in os.environ:
    torch.set_num_threads(1)

from models.x2vlm import X2VLM  # noqa: E402
from utils.config import load_config  # noqa: E402

TINY_CONFIG = ROOT / "configs" / "models" / "tiny.yaml"
CLS_ID, SEP_ID, MASK_ID, FIRST_WORD_ID = 2, 3, 4, 5  # token ids used by the synthetic batches


def random_batch(cfg: dict, n_images: int = 2, n_texts: int = 3, seq_len: int = 8, n_masked: int = 2,
                 generator: torch.Generator | None = None) -> dict[str, Any]:
    """A random pretraining batch for ``cfg`` (full config): ``n_texts`` texts over ``n_images`` images.

    Texts are ``[CLS] words [SEP] pad...`` with varying lengths; odd rows are region texts.
    """
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    m = cfg["model"]
    vocab = m["text"]["config"].get("vocab_size", 512)
    res = m["image_res"]
    images = torch.randn(n_images, 3, res, res, generator=generator)
    lengths = [seq_len - (i % 3) for i in range(n_texts)]  # some rows padded
    text_ids = torch.zeros(n_texts, seq_len, dtype=torch.long)
    text_atts = torch.zeros(n_texts, seq_len, dtype=torch.long)
    for i, n in enumerate(lengths):
        text_ids[i, 0] = CLS_ID
        text_ids[i, 1:n - 1] = torch.randint(FIRST_WORD_ID, vocab, (n - 2,), generator=generator)
        text_ids[i, n - 1] = SEP_ID
        text_atts[i, :n] = 1
    # masked positions among the words (1 .. n-2) of every row
    positions = torch.stack([torch.randperm(lengths[i] - 2, generator=generator)[:n_masked] + 1
                             for i in range(n_texts)])
    labels = torch.gather(text_ids, 1, positions)
    labels[0, -1] = -100  # padding in the labels
    mlm_ids = text_ids.clone()
    mlm_ids.scatter_(1, positions, MASK_ID)
    centre = torch.rand(n_texts, 2, generator=generator) * 0.5 + 0.25
    size = torch.rand(n_texts, 2, generator=generator) * 0.3 + 0.2
    return {
        "images": images,
        "text_ids": text_ids,
        "text_atts": text_atts,
        "image_index": torch.arange(n_texts) % n_images,
        "boxes": torch.cat([centre, size], dim=1),
        "is_region": torch.arange(n_texts) % 2 == 1,
        "ids": torch.arange(n_texts),
        "mlm_ids": mlm_ids,
        "mlm_positions": positions,
        "mlm_labels": labels,
    }


@pytest.fixture
def tiny_cfg() -> dict:
    """The full resolved tiny config (defaults + configs/models/tiny.yaml)."""
    return load_config(TINY_CONFIG)


@pytest.fixture
def tiny_model(tiny_cfg: dict) -> X2VLM:
    """A freshly built tiny model (seed 0), in eval mode."""
    torch.manual_seed(0)
    return X2VLM.from_config(tiny_cfg).eval()


@pytest.fixture
def make_batch(tiny_cfg: dict) -> Callable[..., dict[str, Any]]:
    """``make_batch(**kwargs)`` → :func:`random_batch` for the tiny config (kwargs passed through)."""
    def make(**kwargs: Any) -> dict[str, Any]:
        return random_batch(kwargs.pop("cfg", tiny_cfg), **kwargs)
    return make


def run_pretrain_demo(config: str, out: Path, n_images: int = 600, extra: tuple[str, ...] = ()) -> dict[str, float]:
    """``Pretrain.py --config configs/pretrain/<config>`` in a subprocess (as a user runs it) on a fresh generated
    set of ``n_images`` images; returns its ``zero_shot.json``."""
    import json
    import subprocess

    from dataset.synthetic import generate
    files = generate(out / "syn", seed=0, n_images=n_images, n_videos=0)
    root = files["root"]
    overrides = [f"data.root={root}", f"model.text.tokenizer={files['vocab']}",
                 f"data.train_file=[{root}/pretrain/image_text.jsonl]",
                 f"data.train_file_regions=[{root}/pretrain/regions.jsonl]",
                 f"eval.retrieval_file=[{files['retrieval_test']}]", f"eval.grounding_file=[{files['grounding_test']}]",
                 *extra]
    cmd = [sys.executable, str(ROOT / "Pretrain.py"), "--config", str(ROOT / "configs" / "pretrain" / config),
           "--output_dir", str(out / "run"), "--device", "cpu"] + [a for o in overrides for a in ("--override", o)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "run" / "zero_shot.json").read_text())
