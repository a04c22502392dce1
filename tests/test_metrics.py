"""Retrieval recall@K and IoU accuracy on hand-made inputs."""
import pytest
import torch

from utils.metrics import box_accuracy, recall_at_k, retrieval_metrics


def test_recall_at_k_hand_matrix() -> None:
    # row 0: positive ranked 1st; row 1: 3rd; row 2: 2nd
    sim = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.1, 0.8], [0.3, 0.5, 0.1]])
    pos = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 0, 0]]).bool()
    r = recall_at_k(sim, pos, ks=(1, 2, 3))
    assert r[1] == pytest.approx(100 / 3)
    assert r[2] == pytest.approx(200 / 3)
    assert r[3] == pytest.approx(100.0)


def test_recall_counts_any_of_several_positives() -> None:
    sim = torch.tensor([[0.1, 0.9, 0.5, 0.0]])
    pos = torch.tensor([[1, 0, 1, 0]]).bool()  # best positive (col 2) ranks 2nd
    assert recall_at_k(sim, pos, ks=(1, 2)) == {1: 0.0, 2: 100.0}


def test_retrieval_metrics_both_directions() -> None:
    # 2 images, 4 texts (texts 0,1 → image 0; texts 2,3 → image 1)
    sim = torch.tensor([[0.9, 0.1, 0.8, 0.0], [0.0, 0.95, 0.7, 0.9]])
    m = retrieval_metrics(sim, torch.tensor([0, 0, 1, 1]))
    assert m["i2t_r1"] == 50.0  # image 1's top text (1) belongs to image 0
    # t2i: text0→img0 ok, text1→img1 wrong, text2→img0 wrong, text3→img1 ok
    assert m["t2i_r1"] == 50.0
    assert m["t2i_r5"] == 100.0
    assert m["r_mean"] == pytest.approx(sum(v for k, v in m.items() if k != "r_mean") / 6)


def test_box_accuracy_threshold() -> None:
    target = torch.tensor([[0.5, 0.5, 0.4, 0.4]] * 3)
    pred = torch.tensor([[0.5, 0.5, 0.4, 0.4],    # IoU 1
                         [0.5, 0.5, 0.4, 0.2],    # IoU 0.5 exactly
                         [0.9, 0.9, 0.1, 0.1]])   # IoU 0
    assert box_accuracy(pred, target) == pytest.approx(200 / 3)
    assert box_accuracy(pred, target, threshold=0.6) == pytest.approx(100 / 3)
