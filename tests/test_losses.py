"""Pretraining losses: ITC (single process and gathered across 2 gloo ranks), hard negatives, ITM, MLM, bbox."""
from __future__ import annotations

import math
import socket
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from models import losses as L
from utils import box_ops


def _ce(row: list[float], target: list[float]) -> float:
    """-sum_j target_j * log softmax(row)_j, written out with math."""
    log_z = math.log(sum(math.exp(v) for v in row))
    return -sum(t * (v - log_z) for v, t in zip(row, target, strict=True) if t)


def _transpose(m: list[list[float]]) -> list[list[float]]:
    return [list(col) for col in zip(*m, strict=True)]


# ------------------------------------------------------------------------------------------- ITC
def test_itc_2x2_closed_form() -> None:
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[0.8, 0.6], [0.6, 0.8]])
    temp = torch.tensor(0.5)
    # logits = [[1.6, 1.2], [1.2, 1.6]]: every row and column has the positive 0.4 above the negative
    expected = math.log(1 + math.exp(-0.4))
    assert L.itc_loss(image, text, temp).item() == pytest.approx(expected, abs=1e-6)


def test_itc_3x3_by_hand_is_mean_of_both_directions() -> None:
    # image rows are e1, e2, e3, so logits[i][j] = text[j][i] / temp
    text_rows = [[0.9, -0.2, 0.4], [0.1, 0.7, -0.5], [0.3, 0.8, 0.2]]
    temp = 0.2
    s = [[text_rows[j][i] / temp for j in range(3)] for i in range(3)]
    i2t = sum(_ce(s[i], [1.0 if j == i else 0.0 for j in range(3)]) for i in range(3)) / 3
    st = _transpose(s)
    t2i = sum(_ce(st[j], [1.0 if i == j else 0.0 for i in range(3)]) for j in range(3)) / 3
    assert abs(i2t - t2i) > 0.05  # the example is asymmetric, so both directions matter
    got = L.itc_loss(torch.eye(3), torch.tensor(text_rows), torch.tensor(temp))
    assert got.item() == pytest.approx((i2t + t2i) / 2, abs=1e-5)


def test_itc_with_shared_ids_targets_uniform_over_positives() -> None:
    text_rows = [[0.9, -0.2, 0.4], [0.1, 0.7, -0.5], [0.3, 0.8, 0.2]]
    temp = 0.2
    ids = [7, 7, 3]  # rows 0 and 1 are the same pair: each is a positive of the other
    s = [[text_rows[j][i] / temp for j in range(3)] for i in range(3)]
    pos = [[1.0 if ids[i] == ids[j] else 0.0 for j in range(3)] for i in range(3)]
    target = [[p / sum(row) for p in row] for row in pos]  # [[.5, .5, 0], [.5, .5, 0], [0, 0, 1]]
    st = _transpose(s)
    i2t = sum(_ce(s[i], target[i]) for i in range(3)) / 3
    t2i = sum(_ce(st[j], target[j]) for j in range(3)) / 3
    expected = (i2t + t2i) / 2
    got = L.itc_loss(torch.eye(3), torch.tensor(text_rows), torch.tensor(temp), torch.tensor(ids))
    assert got.item() == pytest.approx(expected, abs=1e-5)
    # distinct ids give the plain diagonal loss
    plain = L.itc_loss(torch.eye(3), torch.tensor(text_rows), torch.tensor(temp))
    distinct = L.itc_loss(torch.eye(3), torch.tensor(text_rows), torch.tensor(temp), torch.tensor([0, 1, 2]))
    assert distinct.item() == pytest.approx(plain.item(), abs=1e-6)
    assert abs(got.item() - plain.item()) > 1e-3


def test_itc_symmetric_in_image_and_text() -> None:
    g = torch.Generator().manual_seed(0)
    a = F.normalize(torch.randn(5, 8, generator=g), dim=-1)
    b = F.normalize(torch.randn(5, 8, generator=g), dim=-1)
    temp = torch.tensor(0.07)
    ids = torch.tensor([0, 1, 1, 2, 0])
    assert torch.allclose(L.itc_loss(a, b, temp), L.itc_loss(b, a, temp), atol=1e-6)
    assert torch.allclose(L.itc_loss(a, b, temp, ids), L.itc_loss(b, a, temp, ids), atol=1e-6)


# ------------------------------------------------------------------------ ITC across 2 processes
WORLD, LOCAL, DIM = 2, 3, 6
IDS = [0, 1, 2, 3, 0, 5]  # rows 0 and 4 share an id across the two ranks


def _global_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1234)
    image = torch.randn(WORLD * LOCAL, DIM, generator=g, dtype=torch.float64)
    text = torch.randn(WORLD * LOCAL, DIM, generator=g, dtype=torch.float64)
    proj = torch.randn(DIM, DIM, generator=g, dtype=torch.float64) / DIM ** 0.5
    temp = torch.tensor(0.1, dtype=torch.float64)
    return image, text, proj, temp


def _itc_step(image: torch.Tensor, text: torch.Tensor, proj: torch.Tensor, temp: torch.Tensor,
              ids: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Loss and gradients w.r.t. the raw inputs, a shared projection and the temperature."""
    image = image.clone().requires_grad_(True)
    text = text.clone().requires_grad_(True)
    proj = proj.clone().requires_grad_(True)
    temp = temp.clone().requires_grad_(True)
    image_feat = F.normalize(image @ proj, dim=-1)
    text_feat = F.normalize(text @ proj, dim=-1)
    loss = L.itc_loss(image_feat, text_feat, temp, ids)
    loss.backward()
    return {"loss": loss.detach(), "image": image.grad, "text": text.grad, "proj": proj.grad, "temp": temp.grad}


def _ddp_worker(rank: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        image, text, proj, temp = _global_inputs()
        part = slice(rank * LOCAL, (rank + 1) * LOCAL)
        results = {}
        for name, ids in (("plain", None), ("ids", torch.tensor(IDS)[part])):
            res = _itc_step(image[part], text[part], proj, temp, ids)
            for key in ("proj", "temp"):  # what DDP does with parameter gradients: average over ranks
                avg = res[key].clone()
                dist.all_reduce(avg)
                res[key + "_ddp"] = avg / WORLD
            results[name] = res
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_itc_gathered_across_two_ranks_matches_single_process(tmp_path: Path) -> None:
    """Every rank sees the global batch: the loss equals the single-process loss over the concatenated
    batch. Each rank's loss is the *same* function of all features, and the all-gather backward sums the
    gradients of the WORLD identical losses into each rank's own slice, so a rank's local input
    gradient is WORLD × the single-process gradient of that slice. Parameters shared by all ranks (the
    projection, the temperature) then get rank gradients whose DDP average equals the single-process
    gradient exactly."""
    import torch.multiprocessing as mp
    mp.spawn(_ddp_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    image, text, proj, temp = _global_inputs()
    for name, ids in (("plain", None), ("ids", torch.tensor(IDS))):
        single = _itc_step(image, text, proj, temp, ids)
        for rank, res in enumerate(ranks):
            got = res[name]
            part = slice(rank * LOCAL, (rank + 1) * LOCAL)
            torch.testing.assert_close(got["loss"], single["loss"], atol=1e-6, rtol=0)
            torch.testing.assert_close(got["image"], WORLD * single["image"][part], atol=1e-6, rtol=0)
            torch.testing.assert_close(got["text"], WORLD * single["text"][part], atol=1e-6, rtol=0)
            torch.testing.assert_close(got["proj_ddp"], single["proj"], atol=1e-6, rtol=0)
            torch.testing.assert_close(got["temp_ddp"], single["temp"], atol=1e-6, rtol=0)
        # the local loss alone would differ: the gather really brought the other rank's rows in
        local = _itc_step(image[:LOCAL], text[:LOCAL], proj, temp, None if ids is None else ids[:LOCAL])
        assert abs(local["loss"].item() - single["loss"].item()) > 1e-3


# -------------------------------------------------------------------------------- hard negatives
def test_hard_negatives_never_same_id_or_self() -> None:
    g = torch.Generator().manual_seed(0)
    for trial in range(60):
        n = 2 + trial % 9
        ids = torch.randint(0, max(1, n // 2), (n,), generator=g)
        image = F.normalize(torch.randn(n, 8, generator=g), dim=-1)
        text = F.normalize(torch.randn(n, 8, generator=g), dim=-1)
        neg_image, valid_t, neg_text, valid_i = L.sample_hard_negatives(image, text, torch.tensor(0.07), ids, g)
        has_other = torch.tensor([(ids != ids[i]).any().item() for i in range(n)])
        assert torch.equal(valid_i, has_other) and torch.equal(valid_t, has_other)
        for i in range(n):
            if has_other[i]:
                assert neg_text[i] != i and ids[neg_text[i]] != ids[i]
                assert neg_image[i] != i and ids[neg_image[i]] != ids[i]
        # without ids only the pair itself is excluded
        neg_image, valid_t, neg_text, valid_i = L.sample_hard_negatives(image, text, torch.tensor(0.07), None, g)
        assert valid_t.all() and valid_i.all()
        assert (neg_text != torch.arange(n)).all() and (neg_image != torch.arange(n)).all()


def test_hard_negatives_all_same_id_are_invalid_and_ignored() -> None:
    n = 4
    g = torch.Generator().manual_seed(0)
    image = F.normalize(torch.randn(n, 8, generator=g), dim=-1)
    text = F.normalize(torch.randn(n, 8, generator=g), dim=-1)
    neg_image, valid_t, neg_text, valid_i = L.sample_hard_negatives(image, text, torch.tensor(0.07),
                                                                    torch.full((n,), 5), g)
    assert not valid_t.any() and not valid_i.any()
    assert neg_image.shape == (n,) and neg_text.shape == (n,)
    assert ((neg_image >= 0) & (neg_image < n)).all() and ((neg_text >= 0) & (neg_text < n)).all()
    labels = L.itm_labels(n, valid_t, valid_i)
    assert labels.tolist() == [1] * n + [-100] * (2 * n)
    logits = torch.randn(3 * n, 2, generator=g, requires_grad=True)
    loss = L.itm_loss(logits, labels)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, F.cross_entropy(logits[:n], torch.ones(n, dtype=torch.long)))
    loss.backward()
    assert (logits.grad[n:] == 0).all() and logits.grad[:n].abs().sum() > 0


def test_hard_negatives_pick_the_overwhelmingly_similar_one() -> None:
    # text 2 is image 0's twin; everything else is orthogonal to image 0
    image = torch.eye(4)
    text = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    g = torch.Generator().manual_seed(0)
    draws = [L.sample_hard_negatives(image, text, torch.tensor(0.01), None, g) for _ in range(100)]
    assert sum(d[2][0].item() == 2 for d in draws) >= 99  # image 0's negative text: text 2
    assert sum(d[0][2].item() == 0 for d in draws) >= 99  # text 2's negative image: image 0


@pytest.mark.parametrize("draw", ["multinomial", "gumbel"])
def test_hard_negatives_follow_softmax_of_similarity(draw: str) -> None:
    """m anchor rows share one id (so they exclude each other); each may draw text m (logit log 3) or
    text m+1 (logit 0): a 3 : 1 split. The anchors' own texts are far away (logit -30). Both the
    multinomial and the seeded Gumbel-max (shared noise) draws must follow it."""
    m = 3000
    image = torch.zeros(m + 2, 2)
    image[:m, 0] = 1.0
    image[m:, 1] = 1.0
    text = torch.zeros(m + 2, 2)
    text[:m, 0] = -30.0
    text[m, 0] = math.log(3.0)
    ids = torch.cat([torch.zeros(m, dtype=torch.long), torch.tensor([1, 2])])
    g = torch.Generator().manual_seed(1)
    noise = torch.rand(2, m + 2, m + 2, generator=g) if draw == "gumbel" else None
    neg_image, valid_t, neg_text, valid_i = L.sample_hard_negatives(image, text, torch.tensor(1.0), ids, g, noise)
    assert valid_i.all() and valid_t.all()
    picks = neg_text[:m]
    assert set(picks.tolist()) <= {m, m + 1}
    frac = (picks == m).float().mean().item()
    assert abs(frac - 0.75) < 0.03  # binomial sd ≈ 0.008


def test_hard_negatives_reproducible_with_generator() -> None:
    g = torch.Generator().manual_seed(0)
    n = 32
    image = F.normalize(torch.randn(n, 16, generator=g), dim=-1)
    text = F.normalize(torch.randn(n, 16, generator=g), dim=-1)
    temp = torch.tensor(0.5)
    a = L.sample_hard_negatives(image, text, temp, None, torch.Generator().manual_seed(7))
    b = L.sample_hard_negatives(image, text, temp, None, torch.Generator().manual_seed(7))
    c = L.sample_hard_negatives(image, text, temp, None, torch.Generator().manual_seed(8))
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
    assert not (torch.equal(a[0], c[0]) and torch.equal(a[2], c[2]))


def test_hard_negatives_are_a_function_of_the_noise() -> None:
    g = torch.Generator().manual_seed(0)
    n = 16
    image = F.normalize(torch.randn(n, 8, generator=g), dim=-1)
    text = F.normalize(torch.randn(n, 8, generator=g), dim=-1)
    noise = torch.rand(2, n, n, generator=g)
    temp = torch.tensor(0.5)
    a = L.sample_hard_negatives(image, text, temp, None, torch.Generator().manual_seed(1), noise)
    b = L.sample_hard_negatives(image, text, temp, None, torch.Generator().manual_seed(2), noise)
    c = L.sample_hard_negatives(image, text, temp, None, None, torch.rand(2, n, n, generator=g))
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)  # the generator is not used when noise is given
    assert not (torch.equal(a[0], c[0]) and torch.equal(a[2], c[2]))
    assert (a[0] != torch.arange(n)).all() and (a[2] != torch.arange(n)).all()
    with pytest.raises(ValueError, match="noise must have shape"):
        L.sample_hard_negatives(image, text, temp, None, None, torch.rand(2, n, n - 1))


# ----------------------------------------------------------------------------------- ITM and MLM
def test_itm_labels_layout() -> None:
    valid_t = torch.tensor([True, False, True])
    valid_i = torch.tensor([False, True, True])
    labels = L.itm_labels(3, valid_t, valid_i)
    assert labels.dtype == torch.long
    assert labels.tolist() == [1, 1, 1, 0, -100, 0, -100, 0, 0]


def test_itm_loss_by_hand() -> None:
    logits = [[0.2, 1.5], [2.0, -1.0], [0.3, 0.3], [-0.5, 0.7]]
    labels = [1, 0, -100, 0]
    terms = [_ce(row, [1.0 if c == y else 0.0 for c in range(2)]) for row, y in zip(logits, labels, strict=True)
             if y != -100]
    expected = sum(terms) / len(terms)
    got = L.itm_loss(torch.tensor(logits), torch.tensor(labels))
    assert got.item() == pytest.approx(expected, abs=1e-6)


def test_mlm_loss_ignores_padding_labels() -> None:
    logits = torch.tensor([[[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]], [[0.0, 3.0, 0.0], [9.0, -9.0, 9.0]]])
    labels = torch.tensor([[2, 1], [1, -100]])
    rows = [([1.0, 0.0, -1.0], 2), ([0.5, 0.5, 2.0], 1), ([0.0, 3.0, 0.0], 1)]
    expected = sum(_ce(r, [1.0 if c == y else 0.0 for c in range(3)]) for r, y in rows) / 3
    assert L.mlm_loss(logits, labels).item() == pytest.approx(expected, abs=1e-6)


def test_mlm_loss_zero_with_grad_when_nothing_masked() -> None:
    logits = torch.randn(2, 3, 11, requires_grad=True)
    loss = L.mlm_loss(logits, torch.full((2, 3), -100))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert logits.grad is not None and (logits.grad == 0).all()


def test_mlm_loss_zero_when_nothing_masked_even_for_large_half_logits() -> None:
    # fp16 logits (autocast) whose sum overflows half precision must still give an exact 0, not NaN
    logits = torch.full((4, 3, 512), 1000.0, dtype=torch.float16, requires_grad=True)
    loss = L.mlm_loss(logits, torch.full((4, 3), -100))
    assert torch.isfinite(loss) and loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(logits.grad.float()).all()


# ------------------------------------------------------------------------------------------ bbox
def _random_cxcywh(n: int, g: torch.Generator) -> torch.Tensor:
    centre = torch.rand(n, 2, generator=g) * 0.6 + 0.2
    size = torch.rand(n, 2, generator=g) * 0.4 + 0.1
    return torch.cat([centre, size], dim=1)


def _special_pairs() -> tuple[torch.Tensor, torch.Tensor]:
    """(cx, cy, w, h) pairs: disjoint, nested, touching, partially overlapping, identical."""
    a = torch.tensor([[0.2, 0.2, 0.2, 0.2], [0.5, 0.5, 0.6, 0.6], [0.25, 0.5, 0.5, 0.4], [0.4, 0.4, 0.3, 0.5],
                      [0.6, 0.3, 0.2, 0.3]])
    b = torch.tensor([[0.8, 0.7, 0.2, 0.3], [0.5, 0.55, 0.2, 0.1], [0.75, 0.5, 0.5, 0.4], [0.5, 0.45, 0.3, 0.4],
                      [0.6, 0.3, 0.2, 0.3]])
    return a, b


def test_paired_giou_matches_torchvision() -> None:
    from torchvision.ops import generalized_box_iou  # imported here: keeps the spawned ITC workers light
    g = torch.Generator().manual_seed(0)
    a, b = _special_pairs()
    a = torch.cat([a, _random_cxcywh(200, g)])
    b = torch.cat([b, _random_cxcywh(200, g)])
    xa, xb = box_ops.cxcywh_to_xyxy(a), box_ops.cxcywh_to_xyxy(b)
    ours = 1 - box_ops.paired_giou_loss(a, b)
    ref = torch.diag(generalized_box_iou(xa, xb))
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    assert (ours[:1] < 0).all() and ours[4].item() == pytest.approx(1.0, abs=1e-5)  # disjoint / identical
    assert (ours < 0).any() and (ours > 0.3).any()


def test_bbox_loss_matches_torchvision() -> None:
    from torchvision.ops import generalized_box_iou_loss
    g = torch.Generator().manual_seed(1)
    a, b = _special_pairs()
    pred = torch.cat([a, _random_cxcywh(64, g)])
    target = torch.cat([b, _random_cxcywh(64, g)])
    l1, giou = L.bbox_loss(pred, target)
    n = pred.shape[0]
    assert l1.item() == pytest.approx(F.l1_loss(pred, target, reduction="sum").item() / n, abs=1e-5)
    ref = generalized_box_iou_loss(box_ops.cxcywh_to_xyxy(pred), box_ops.cxcywh_to_xyxy(target), reduction="mean")
    assert giou.item() == pytest.approx(ref.item(), abs=1e-5)


def test_bbox_loss_weight_selects_rows() -> None:
    g = torch.Generator().manual_seed(2)
    pred, target = _random_cxcywh(10, g), _random_cxcywh(10, g)
    weight = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0, 1, 1], dtype=torch.bool)
    l1, giou = L.bbox_loss(pred, target, weight)
    sub_l1, sub_giou = L.bbox_loss(pred[weight], target[weight])
    assert l1.item() == pytest.approx(sub_l1.item(), abs=1e-6)
    assert giou.item() == pytest.approx(sub_giou.item(), abs=1e-6)
    # rows with weight 0 can hold anything without changing the result
    pred2 = pred.clone()
    pred2[~weight] = _random_cxcywh(int((~weight).sum()), g)
    l1_b, giou_b = L.bbox_loss(pred2, target, weight)
    assert l1_b.item() == pytest.approx(l1.item(), abs=1e-6) and giou_b.item() == pytest.approx(giou.item(), abs=1e-6)
    full_l1, _ = L.bbox_loss(pred, target)
    assert abs(full_l1.item() - l1.item()) > 1e-4  # the weight really excluded something
    zero_l1, zero_giou = L.bbox_loss(pred, target, torch.zeros(10))
    assert zero_l1.item() == 0.0 and zero_giou.item() == 0.0


def test_bbox_loss_hand_cases() -> None:
    box = torch.tensor([[0.4, 0.6, 0.3, 0.2]])
    l1, giou = L.bbox_loss(box, box.clone())
    assert l1.item() == 0.0 and giou.item() == pytest.approx(0.0, abs=1e-5)  # eps 1e-7 in the IoU, as torchvision
    # unit squares [0,1]x[0,1] and [2,3]x[0,1]: IoU 0, union 2, enclosing box 3 → GIoU = 0 - (3 - 2) / 3
    pred = torch.tensor([[0.5, 0.5, 1.0, 1.0]])
    target = torch.tensor([[2.5, 0.5, 1.0, 1.0]])
    l1, giou = L.bbox_loss(pred, target)
    assert l1.item() == pytest.approx(2.0, abs=1e-6)  # |0.5 - 2.5| on cx only
    assert giou.item() == pytest.approx(1.0 + 1.0 / 3.0, abs=1e-6)
    # gradients reach the prediction
    pred = pred.clone().requires_grad_(True)
    sum(L.bbox_loss(pred, target)).backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0


def test_box_xyxy_to_cxcywh_inverts_cxcywh_to_xyxy() -> None:
    boxes = _random_cxcywh(20, torch.Generator().manual_seed(3))
    torch.testing.assert_close(box_ops.xyxy_to_cxcywh(box_ops.cxcywh_to_xyxy(boxes)), boxes)
    assert box_ops.xyxy_to_cxcywh(torch.tensor([0.1, 0.2, 0.5, 0.8])).tolist() == pytest.approx([0.3, 0.5, 0.4, 0.6])
    pixels = box_ops.xywh_pixels_to_cxcywh(torch.tensor([[10.0, 20.0, 30.0, 40.0]]), torch.tensor([[100, 200]]))
    assert pixels.tolist() == [pytest.approx([0.25, 0.2, 0.3, 0.2])]
    assert box_ops.cxcywh_to_pixels_xyxy(pixels[0], 100, 200).tolist() == pytest.approx([10, 20, 40, 60])


def test_patch_alignment_loss_by_hand() -> None:
    scores = torch.tensor([[2.0, 0.0, -1.0, 0.5], [0.0, 0.0, 0.0, 0.0], [1.0, 3.0, 0.0, 0.0]])
    inside = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 1], [0, 1, 0, 0]], dtype=torch.bool)
    rows = [_ce(scores[i].tolist(), (inside[i] / inside[i].sum()).tolist()) for i in range(3)]
    assert L.patch_alignment_loss(scores, inside).item() == pytest.approx(sum(rows) / 3, abs=1e-6)
    weight = torch.tensor([1.0, 0.0, 1.0])  # the middle row does not count
    assert L.patch_alignment_loss(scores, inside, weight).item() == pytest.approx((rows[0] + rows[2]) / 2, abs=1e-6)
    # uniform target over k covered patches: the loss is smallest (log k) when the scores are equal on them and
    # -inf elsewhere, so it never pushes the weight onto one covered patch
    peaked = torch.tensor([[50.0, 50.0, -50.0, -50.0]])
    assert L.patch_alignment_loss(peaked, inside[:1]).item() == pytest.approx(math.log(2), abs=1e-5)
    assert L.patch_alignment_loss(torch.zeros(1, 4, requires_grad=True), inside[:1]).item() > math.log(2) + 0.1


def test_paired_giou_compiles_as_one_graph_with_torchvisions_values() -> None:
    """No data-dependent shape (torchvision's masked assignment breaks a compiled graph: 7 breaks under
    ``torch._dynamo.explain``): no graph break; the values are torchvision's to the bit, the gradients up to the
    order of float additions (the same rule at touching boxes: no gradient through an empty intersection)."""
    from torchvision.ops import generalized_box_iou_loss
    g = torch.Generator().manual_seed(2)
    a, b = _special_pairs()
    a = torch.cat([a, _random_cxcywh(64, g)]).requires_grad_(True)
    b = torch.cat([b, _random_cxcywh(64, g)])
    torch._dynamo.reset()
    assert torch._dynamo.explain(box_ops.paired_giou_loss)(a.detach(), b).graph_break_count == 0
    ours = box_ops.paired_giou_loss(a, b)
    ref = generalized_box_iou_loss(box_ops.cxcywh_to_xyxy(a), box_ops.cxcywh_to_xyxy(b), reduction="none", eps=1e-7)
    assert torch.equal(ours, ref)
    (g_ours,), (g_ref,) = torch.autograd.grad(ours.sum(), a), torch.autograd.grad(ref.sum(), a)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-6, atol=1e-7)
