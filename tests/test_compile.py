"""The pretraining step is built for an accelerator: one graph for ``torch.compile`` (both architectures), the
compiled step gives the eager losses and gradients, the seed of the ITM negatives is a tensor (a new seed does
not recompile), and the training loop reads nothing back from the device between log records."""
from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from models.counter_random import counter_uniform
from models.x2vlm import X2VLM
from tests.conftest import random_batch
from utils.config import apply_overrides, load_config
from utils.dist import DistInfo
from utils.engine import DDPEngine
from utils.trainer import Trainer

ROOT = Path(__file__).resolve().parent.parent
PRESETS = ("tiny", "fiber_tiny")


def _model_and_batch(preset: str) -> tuple[X2VLM, dict[str, Any]]:
    cfg = load_config(ROOT / "configs" / "models" / f"{preset}.yaml")
    torch.manual_seed(0)
    model = X2VLM.from_config(cfg).train()
    if preset.startswith("fiber"):  # open FIBER's zero-initialised gates so the image reaches the text
        for name, p in model.named_parameters():
            if name.endswith("gate"):
                p.data.fill_(0.5)
    batch = random_batch(cfg, n_images=3, n_texts=6, seq_len=10, n_masked=3)
    batch["sample_seed"] = torch.tensor(11)
    return model, batch


@pytest.mark.parametrize("preset", PRESETS)
def test_pretraining_step_is_one_graph(preset: str) -> None:
    model, batch = _model_and_batch(preset)
    explanation = torch._dynamo.explain(model)(batch)
    reasons = [r.reason.splitlines()[0] for r in explanation.break_reasons]
    assert explanation.graph_break_count == 0, reasons
    assert explanation.graph_count == 1


@pytest.mark.parametrize("preset", ["tiny", pytest.param("fiber_tiny", marks=pytest.mark.slow)])
def test_compiled_step_gives_the_eager_losses_and_gradients(preset: str) -> None:
    """Forward + losses + backward through dynamo and AOTAutograd (the ``aot_eager`` backend: the joint graph
    without Inductor's code generation, whose kernels round differently), ``fullgraph=True``."""
    model, batch = _model_and_batch(preset)
    eager = model(batch)
    eager["loss"].backward()
    eager_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(batch)
    out["loss"].backward()
    assert set(out) == set(eager) and len(eager) >= 6  # loss, itc, itm, mlm, bbox, giou
    for k in eager:
        torch.testing.assert_close(out[k], eager[k], rtol=1e-5, atol=1e-6, msg=k)
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads.keys() == eager_grads.keys()
    for n, g in grads.items():
        torch.testing.assert_close(g, eager_grads[n], rtol=1e-4, atol=1e-6, msg=n)
    # a new seed (and new batch values of the same shapes) runs the same graph: no recompilation
    with torch._dynamo.config.patch(error_on_recompile=True):
        again = compiled({**batch, "sample_seed": torch.tensor(12), "images": torch.randn_like(batch["images"])})
    assert torch.isfinite(again["loss"])
    torch._dynamo.reset()


def test_counter_noise_is_a_function_of_seed_stream_and_row() -> None:
    rows = torch.arange(6)
    a = counter_uniform(7, 2, rows, 5)
    assert a.shape == (2, 6, 5) and a.dtype == torch.float32
    assert bool(((a > 0) & (a < 1)).all())
    assert torch.equal(a, counter_uniform(torch.tensor(7), 2, rows, 5))  # int or tensor seed
    assert torch.equal(a[:, 3:], counter_uniform(7, 2, rows[3:], 5))  # a row's values do not depend on the others
    assert torch.equal(a[:1], counter_uniform(7, 1, rows, 5))  # nor on the number of streams
    for other in (counter_uniform(8, 2, rows, 5), a[1:]):  # another seed; the other stream
        assert (other != a[:1]).float().mean() > 0.9
    big = counter_uniform(2**40 + 3, 1, torch.arange(400), 250).flatten()  # 64-bit seeds, 100k values
    assert abs(float(big.mean()) - 0.5) < 0.005 and abs(float(big.var()) - 1 / 12) < 0.002
    assert big.unique().numel() > 0.99 * big.numel()


def _fused_engine(model: torch.nn.Module) -> DDPEngine:
    cfg = load_config(ROOT / "configs" / "models" / "tiny.yaml", ["optimizer.kernels=fused", "train.clip_grad=1.0"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)
    return DDPEngine(model, optimizer, cfg, DistInfo())


def test_fused_engine_drops_a_nonfinite_step_on_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    model = torch.nn.Linear(4, 3)
    engine = _fused_engine(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model(torch.randn(2, 4)).sum().backward()
    monkeypatch.setattr(torch.Tensor, "__bool__", _no_host_read)
    engine.step(torch.tensor(False))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(float(s["step"]) == 0 for s in engine.optimizer.state.values())  # AdamW's step undone
    model(torch.randn(2, 4)).sum().backward()
    engine.step(torch.tensor(True))
    monkeypatch.undo()
    assert not torch.equal(before["weight"], model.weight)
    assert all(float(s["step"]) == 1 for s in engine.optimizer.state.values())
    assert model.weight.grad is None


def _no_host_read(*args: Any) -> Any:
    raise AssertionError("a device value was read back on the host")


def test_training_loop_reads_the_device_once_per_log_window(tiny_cfg: dict, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Steps between log records make no host read (``bool``/``float``/``int``/``item``/``tolist`` of a
    tensor: each waits for the device) in this project's code (Hugging Face's eager mask check reads one; the
    compiled model has none: the tests above); the loss and the non-finite count still reach the log."""
    cfg = apply_overrides(tiny_cfg, [f"output_dir={tmp_path}", "train.steps=6", "train.log_every=3",
                                     "train.ckpt_every=100", "optimizer.kernels=fused", "train.clip_grad=1.0"])
    torch.manual_seed(0)
    trainer = Trainer(cfg, X2VLM.from_config(cfg), DistInfo())
    good = random_batch(cfg, n_images=2, n_texts=4)
    bad = {**good, "images": torch.full_like(good["images"], float("nan"))}
    reads: list[str] = []
    counting = {"in_step": False}

    def reader(name: str) -> Any:
        original = getattr(torch.Tensor, name)

        def read(self: torch.Tensor, *args: Any) -> Any:
            if counting["in_step"]:
                caller = sys._getframe(1).f_code.co_filename
                if caller.startswith(str(ROOT)) and "site-packages" not in caller:
                    reads.append(f"{name} in {caller}:{sys._getframe(1).f_lineno}")
            return original(self, *args)
        return read

    for name in ("__bool__", "__float__", "__int__", "item", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, reader(name))
    train_step = trainer._train_step

    def watched_step(*args: Any) -> int:
        counting["in_step"] = True
        try:
            return train_step(*args)
        finally:
            counting["in_step"] = False

    monkeypatch.setattr(trainer, "_train_step", watched_step)

    def stream(start: int) -> Iterator[dict[str, Any]]:
        return iter([good, bad, good, good, good, good])

    last = trainer.fit(stream)
    monkeypatch.undo()
    assert reads == []
    assert trainer.skipped_nonfinite == 1 and trainer.step == 6
    records = [r for r in (tmp_path / "log.jsonl").read_text().splitlines() if '"loss"' in r]
    assert len(records) == 2 and '"skipped_nonfinite": 1' in records[0]
    assert last["loss"] > 0 and torch.isfinite(torch.tensor(last["loss"]))
