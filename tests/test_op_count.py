"""benchmarks/op_count.py: the dispatch-mode counter counts exactly the operators run, and our tiny pretraining
step counts a forward and a (larger) backward part."""
from __future__ import annotations

import torch

from benchmarks.op_count import OpCounter, count_ours, count_step


def test_counts_each_operator_by_name() -> None:
    a, b = torch.ones(3), torch.full((3,), 2.0)
    with OpCounter() as counter:
        torch.add(a, b)
        torch.mul(a, b)
    assert dict(counter.counts) == {"aten.add.Tensor": 1, "aten.mul.Tensor": 1}
    assert counter.total == 2
    torch.add(a, b)  # outside the mode: not counted
    assert counter.total == 2


def test_count_step_splits_forward_and_backward() -> None:
    lin = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    counter = count_step(lambda: lin(x).sum(), lin, warmup=1)
    assert counter.counts["aten.addmm.default"] == 1  # one forward (the warm-up is not counted)
    assert counter.counts["aten.mm.default"] >= 1  # the weight gradient
    assert 0 < counter.marked < counter.total
    assert lin.weight.grad is not None


def test_our_tiny_step() -> None:
    row = count_ours("tiny", pairs=2, region_images=1, region_rows=2, text_len=8, masks=2)
    assert (row["images"], row["texts"]) == (3, 4)
    assert row["forward_ops"] > 0
    assert row["backward_ops"] > row["forward_ops"] // 2
    assert row["total_ops"] == row["forward_ops"] + row["backward_ops"] == sum(row["counts"].values())
    names = dict(row["top"])
    assert len(row["top"]) == 15 and list(names.values()) == sorted(names.values(), reverse=True)
    assert row["counts"]["aten.native_layer_norm.default"] == row["counts"]["aten.native_layer_norm_backward.default"]
