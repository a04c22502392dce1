"""benchmarks/retrieval_rerank.py times the batches the evaluation really forms: its sorted pair list, cut into
``pair_batch`` slices, is exactly the sequence of ITM batches ``utils.evaluation.rerank`` scores."""
from __future__ import annotations

import torch

from benchmarks.retrieval_rerank import batch_starts, sorted_pairs
from utils.evaluation import rerank


def test_sorted_pairs_are_reranks_batches() -> None:
    g = torch.Generator().manual_seed(0)
    sims = torch.rand(7, 23, generator=g)
    sims[0, :5] = 0.5  # ties: the lower index first, as rerank's rule
    for matrix, k, images in ((sims, 4, True), (sims.t().contiguous(), 3, False)):
        seen: list[tuple[torch.Tensor, torch.Tensor]] = []

        def scorer(image_ids: torch.Tensor, text_ids: torch.Tensor, seen=seen) -> torch.Tensor:
            seen.append((image_ids.clone(), text_ids.clone()))
            return torch.zeros(image_ids.numel())

        rerank(matrix, k, range(matrix.shape[0]), scorer, 5, images)
        image_ids, text_ids = sorted_pairs(matrix, k, images)
        assert len(seen) == len(batch_starts(image_ids.numel(), 5, 10**6))
        for (i, t), s in zip(seen, batch_starts(image_ids.numel(), 5, 10**6), strict=True):
            assert torch.equal(i, image_ids[s:s + 5]) and torch.equal(t, text_ids[s:s + 5])


def test_batch_starts_spread_evenly() -> None:
    assert batch_starts(10, 4, 99) == [0, 4, 8]  # all three batches
    assert batch_starts(1000, 10, 3) == [0, 500, 990]  # first, middle, last
    assert batch_starts(1000, 10, 1) == [0]
