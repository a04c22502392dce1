"""Retrieval recall@K and IoU accuracy on hand-made inputs."""
import pytest
import torch

from utils.evaluation import recall_metrics
from utils.metrics import box_accuracy


def test_recall_hand_matrix() -> None:
    """The hand cases of the former recall_at_k, through the recall the evaluation uses (KS = 1, 5, 10)."""
    # image rows: image 0's positive ranked 1st, image 1's 3rd, image 2's 2nd (texts 0, 1, 0)
    sim = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.1, 0.8], [0.3, 0.5, 0.1]])
    pos = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 0, 0]]).bool()
    r = recall_metrics(sim, sim.t(), pos)
    assert r["txt_r1"] == pytest.approx(100 / 3) and r["txt_r5"] == pytest.approx(100.0)
    # several positives: the best-ranked one counts (col 2, ranked 2nd)
    one = recall_metrics(torch.tensor([[0.1, 0.9, 0.5, 0.0]]), torch.zeros(4, 1), torch.tensor([[1, 0, 1, 0]]).bool())
    assert one["txt_r1"] == 0.0 and one["txt_r5"] == 100.0


def test_box_accuracy_threshold() -> None:
    target = torch.tensor([[0.5, 0.5, 0.4, 0.4]] * 3)
    pred = torch.tensor([[0.5, 0.5, 0.4, 0.4],    # IoU 1
                         [0.5, 0.5, 0.4, 0.2],    # IoU 0.5 exactly
                         [0.9, 0.9, 0.1, 0.1]])   # IoU 0
    assert box_accuracy(pred, target) == pytest.approx(200 / 3)
    assert box_accuracy(pred, target, threshold=0.6) == pytest.approx(100 / 3)
