"""utils/evaluation/: retrieval recall (ITC and ITM re-ranking) and grounding accuracy on stub models whose
scores are set by hand, the rank-split re-ranking, and zero_shot_eval end to end on the generated data."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from dataset.tasks import collate_dict
from models.tokens import Tokens
from utils.dist import DistInfo
from utils.evaluation import (
    evaluate_grounding,
    evaluate_retrieval,
    format_results,
    retrieval_scores,
    zero_shot_eval,
)

ROOT = Path(__file__).resolve().parent.parent

# 3 images, 6 texts; text j describes image TXT2IMG[j].
TXT2IMG = {0: 0, 1: 1, 2: 2, 3: 0, 4: 1, 5: 2}
# ITC similarity (image, text). Per image the best texts: img0 t0 (hit), img1 t4 (hit), img2 t4 (miss)
# → txt_r1 = 2/3. Per text the best image: t0 img0 (hit), t1 img2, t2 img0, t3 img1, t4 img0 (misses),
# t5 img2 (hit) → img_r1 = 2/6.
SIMS = torch.tensor([[0.90, 0.10, 0.25, 0.30, 0.80, 0.00],
                     [0.70, 0.20, 0.10, 0.60, 0.75, 0.40],
                     [0.10, 0.30, 0.20, 0.00, 0.60, 0.50]])
# ITM match logits. Only pairs in a query's ITC top 2 matter; every other pair gets 100 so that scoring
# a pair outside the top k would show. With k_test=2 the image → text top 1 becomes t4 (miss), t0 (miss),
# t5 (hit) → txt_r1 = 1/3; the text → image top 1 becomes img1 (miss), img1, img2, img0 (hits), img0 (miss),
# img2 (hit) → img_r1 = 4/6.
ITM = torch.full((3, 6), 100.0)
for (i, t), v in {(0, 0): -1.0, (0, 4): 2.0, (1, 4): 1.0, (1, 0): 2.0, (2, 5): 3.0, (2, 4): 0.0,
                  (2, 1): 0.0, (1, 1): 1.0, (0, 2): 0.0, (2, 2): 1.0, (1, 3): 0.0, (0, 3): 1.0,
                  (1, 5): 0.0}.items():
    ITM[i, t] = v


class StubRetrievalModel(nn.Module):
    """Image i's pixels are the one-hot vector e_i; text j's token id is j. Image features are e_i and text
    features the column SIMS[:, j], so the ITC matrix is exactly SIMS; itm_logits reads ITM."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))
        self.itm_calls = 0
        self.itm_pairs = []  # (pairs, distinct images) of each ITM call

    def encode_image(self, images):
        return Tokens(images[:, None, :]), torch.ones(images.shape[0], 1, dtype=torch.long)

    def image_features(self, embeds):
        return embeds.final[:, 0]

    def encode_text(self, ids, atts):
        return Tokens(ids[:, :1, None].float())  # (N, 1, 1): the text id

    def text_features(self, embeds):
        return SIMS[:, embeds.final[:, 0, 0].long()].t()

    def itm_logits(self, image_embeds, image_atts, text_embeds, text_atts, image_index=None):
        assert not self.training
        self.itm_calls += 1
        self.itm_pairs.append((text_embeds.shape[0], image_embeds.shape[0]))
        if image_index is not None:
            image_embeds = image_embeds[image_index]
        score = ITM[image_embeds.final[:, 0].argmax(1), text_embeds.final[:, 0, 0].long()]
        return torch.stack([-score, score], dim=1)


def stub_tokenizer(texts, padding, truncation, max_length, return_tensors):
    ids = torch.tensor([[int(t.removeprefix("t"))] for t in texts])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


class StubRetrievalData(Dataset):
    text = [f"t{j}" for j in range(6)]
    txt2img = TXT2IMG
    img2txt = {i: [j for j, im in TXT2IMG.items() if im == i] for i in range(3)}

    def __len__(self):
        return 3

    def __getitem__(self, i):
        return {"image": torch.eye(3)[i], "index": i}


def stub_loader():
    # images in the order 2, 1, 0 over two batches: features must land by ``index``
    return DataLoader(StubRetrievalData(), batch_size=2, sampler=[2, 1, 0], collate_fn=collate_dict)


def run_retrieval(k_test, itm_rerank=True, **kw):
    model = StubRetrievalModel().train()
    out = evaluate_retrieval(model, stub_loader(), "cpu", k_test, itm_rerank, tokenizer=stub_tokenizer,
                             text_batch_size=4, **kw)
    assert model.training  # mode restored
    return out, model


def test_retrieval_itc_recall_hand_computed():
    out, model = run_retrieval(2, itm_rerank=False)
    assert model.itm_calls == 0
    assert out["itc_txt_r1"] == pytest.approx(200 / 3)
    assert out["itc_img_r1"] == pytest.approx(100 / 3)
    assert out["itc_txt_r5"] == out["itc_img_r5"] == out["itc_txt_r10"] == 100.0
    assert out["itc_txt_r_mean"] == pytest.approx((200 / 3 + 200) / 3)
    assert out["itc_img_r_mean"] == pytest.approx((100 / 3 + 200) / 3)
    assert out["itc_r_mean"] == pytest.approx((out["itc_txt_r_mean"] + out["itc_img_r_mean"]) / 2)
    assert {k: v for k, v in out.items() if not k.startswith(("itc_", "chance_"))} == \
        {k.removeprefix("itc_"): v for k, v in out.items() if k.startswith("itc_")}


def test_retrieval_itm_rerank_changes_ranking():
    out, model = run_retrieval(2, itm_batch_size=3)  # at most 3 pairs per ITM pass
    # pairs sorted by image, each call passes its distinct images once. Image queries: images 0 0 1 | 1 2 2.
    # Text queries (top 2 images of each text): image 0 for t0 t2 t3 t4, 1 for t0 t1 t3 t4 t5, 2 for t1 t2 t5
    # → 0 0 0 | 0 1 1 | 1 1 1 | 2 2 2.
    assert model.itm_pairs == [(3, 2), (3, 2), (3, 1), (3, 2), (3, 1), (3, 1)]
    assert out["txt_r1"] == pytest.approx(100 / 3)
    assert out["img_r1"] == pytest.approx(200 / 3)
    assert out["txt_r5"] == out["img_r5"] == 100.0  # positives outside the top 2 still rank next
    # the ITC-only metrics are reported alongside
    assert out["itc_txt_r1"] == pytest.approx(200 / 3) and out["itc_img_r1"] == pytest.approx(100 / 3)


def test_retrieval_rerank_top1_keeps_itc_top1():
    out, _ = run_retrieval(1)
    assert out["txt_r1"] == out["itc_txt_r1"] and out["img_r1"] == out["itc_img_r1"]


def test_retrieval_scores_layout_and_k_clamp():
    sims, s_i2t, s_t2i = retrieval_scores(StubRetrievalModel(), stub_loader(), "cpu", 50,
                                          tokenizer=stub_tokenizer)  # k_test > candidates: all re-scored
    assert torch.equal(sims, SIMS)
    assert torch.equal(s_i2t, ITM) and torch.equal(s_t2i, ITM.t())
    _, s_i2t, s_t2i = retrieval_scores(StubRetrievalModel(), stub_loader(), "cpu", 2, tokenizer=stub_tokenizer)
    assert s_i2t[0, 0] == -1 and s_i2t[0, 4] == 2  # top 2 of image 0: t0, t4
    rest = s_i2t[0, [3, 2, 1, 5]]  # the others by ITC order, all below the lowest ITM score
    assert (rest < -1).all() and (rest.diff() < 0).all()


def test_retrieval_rank_split_sums_to_single_process():
    _, full_i2t, full_t2i = retrieval_scores(StubRetrievalModel(), stub_loader(), "cpu", 2,
                                             tokenizer=stub_tokenizer)
    parts = [retrieval_scores(StubRetrievalModel(), stub_loader(), "cpu", 2, dist_info=DistInfo(rank=r, world_size=2),
                              tokenizer=stub_tokenizer, all_reduce=False) for r in range(2)]
    for part in parts:  # each rank scored some rows and left the others at zero
        assert 0 < int((part[1] != 0).any(1).sum()) < 3
    assert torch.equal(parts[0][1] + parts[1][1], full_i2t)
    assert torch.equal(parts[0][2] + parts[1][2], full_t2i)
    with pytest.raises(RuntimeError, match="process group"):
        evaluate_retrieval(StubRetrievalModel(), stub_loader(), "cpu", 2, dist_info=DistInfo(rank=0, world_size=2),
                           tokenizer=stub_tokenizer)


def test_retrieval_chance_levels():
    out, _ = run_retrieval(2)
    assert out["chance_txt_r1"] == pytest.approx(100 * 2 / 6)  # 2 of 6 texts are right for each image
    assert out["chance_img_r1"] == pytest.approx(100 / 3)
    assert out["chance_txt_r5"] == out["chance_img_r5"] == 100.0


def test_retrieval_needs_every_image():
    loader = DataLoader(StubRetrievalData(), batch_size=2, sampler=[0, 1], collate_fn=collate_dict)
    with pytest.raises(ValueError, match="every image"):
        evaluate_retrieval(StubRetrievalModel(), loader, "cpu", 2, tokenizer=stub_tokenizer)


# --------------------------------------------------------------------------------------- grounding
class StubGroundingModel(nn.Module):
    """The "image" is the box (cx, cy, w, h) the model will predict."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def encode_image(self, images):
        return Tokens(images[:, None, :]), torch.ones(images.shape[0], 1, dtype=torch.long)

    def encode_text(self, ids, atts):
        return Tokens(torch.zeros(ids.shape[0], ids.shape[1], 4))

    def predict_boxes(self, image_embeds, text_embeds, text_atts):
        return image_embeds.final[:, 0]


# (predicted normalised cx, cy, w, h; ground truth pixel x, y, w, h; image W, H; IoU)
GROUNDING_CASES = [
    ((0.25, 0.25, 0.5, 0.5), (0, 0, 100, 50), (200, 100), 1.0),
    ((0.125, 0.25, 0.25, 0.5), (0, 0, 100, 50), (200, 100), 0.5),  # exactly at the threshold: counts
    ((0.25, 0.25, 0.5, 0.5), (100, 50, 100, 50), (200, 100), 0.0),
    ((0.5, 0.25, 1.0, 0.5), (0, 0, 100, 100), (100, 200), 1.0),  # tall image: W and H must not be swapped
]


def test_grounding_accuracy_on_known_boxes():
    rows = [{"image": torch.tensor(p), "text": "the red circle", "ref_id": k, "image_size": torch.tensor(size),
             "bbox": torch.tensor(gt, dtype=torch.float)} for k, (p, gt, size, _) in enumerate(GROUNDING_CASES)]
    loader = DataLoader(rows, batch_size=3, collate_fn=collate_dict)
    model = StubGroundingModel()
    out = evaluate_grounding(model, loader, "cpu", tokenizer=lambda texts, **kw: {
        "input_ids": torch.ones(len(texts), 3, dtype=torch.long),
        "attention_mask": torch.ones(len(texts), 3, dtype=torch.long)})
    assert out["acc"] == 75.0
    assert out["miou"] == pytest.approx(100 * sum(c[-1] for c in GROUNDING_CASES) / 4)
    # whole-image box: IoU 0.25, 0.25, 0.25, 0.5 → 1 of 4 hits; the mean-size centre box hits none
    assert out["chance_acc"] == 25.0
    assert out["chance_miou"] == pytest.approx(31.25)


# --------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    from dataset.synthetic import generate
    return generate(tmp_path_factory.mktemp("syn"), seed=0, n_videos=0)  # the default image data


def test_zero_shot_eval_end_to_end(syn):
    from dataset import load_tokenizer
    from models.x2vlm import X2VLM
    from utils.config import load_config
    cfg = load_config(ROOT / "configs" / "pretrain" / "demo.yaml", [f"data.root={syn['root']}",
                                                     f"model.text.tokenizer={syn['vocab']}"])
    cfg["eval"] = {"retrieval_file": syn["retrieval_test"], "grounding_file": [syn["grounding_test"]],
                   "k_test": 4, "batch_size": 8, "text_batch_size": 16, "itm_batch_size": 10}
    tokenizer = load_tokenizer(cfg)
    torch.manual_seed(0)
    model = X2VLM.from_config(cfg)
    out = zero_shot_eval(cfg, model, tokenizer, torch.device("cpu"))
    metric_names = ["txt_r1", "txt_r5", "txt_r10", "txt_r_mean", "img_r1", "img_r5", "img_r10", "img_r_mean",
                    "r_mean"]
    expected = {f"retrieval/{p}{m}" for p in ("", "itc_", "chance_") for m in metric_names}
    expected |= {f"grounding/{m}" for m in ("acc", "miou", "chance_acc", "chance_miou")}
    assert set(out) == expected
    assert all(isinstance(v, float) and 0.0 <= v <= 100.0 and math.isfinite(v) for v in out.values())
    # 12 test images with 3 captions each
    assert out["retrieval/chance_img_r1"] == pytest.approx(100 / 12)
    assert out["retrieval/chance_txt_r1"] == pytest.approx(100 * 3 / 36)
    assert "retrieval/r_mean" in format_results(out) and "(chance " in format_results(out)
    assert model.training  # from_config leaves it in training mode; the evaluation restores that

    # the re-ranking through the real model: its top-k entries are the ITM logits of those pairs
    from dataset import collate_for, create_dataset, create_loader
    ds = create_dataset("retrieval", cfg, syn["retrieval_test"], tokenizer)
    loader = create_loader(ds, 5, collate_for("retrieval"), training=False)
    sims, s_i2t, _ = retrieval_scores(model, loader, "cpu", 3, tokenizer=tokenizer, itm_batch_size=7)
    top = sims.topk(3, dim=1).indices
    model.eval()
    with torch.no_grad():
        ids = tokenizer(ds.text, padding="max_length", truncation=True, max_length=cfg["data"]["max_tokens"],
                        return_tensors="pt")
        images = torch.stack([ds[i]["image"] for i in (0, 5)])
        img, img_atts = model.encode_image(images)
        txt = model.encode_text(ids["input_ids"], ids["attention_mask"])
        for row, i in enumerate((0, 5)):
            t = top[i]
            logits = model.itm_logits(img[[row] * 3], img_atts[row:row + 1].expand(3, -1),
                                      txt[t], ids["attention_mask"][t])
            torch.testing.assert_close(s_i2t[i, t], logits[:, 1], rtol=1e-4, atol=1e-5)


def test_zero_shot_eval_without_files_and_bad_keys(tiny_cfg, tiny_model):
    assert zero_shot_eval(tiny_cfg, tiny_model, None, "cpu") == {}
    with pytest.raises(ValueError, match="unknown eval config"):
        zero_shot_eval({**tiny_cfg, "eval": {"k_tset": 3}}, tiny_model, None, "cpu")


# --------------------------------------------------------------------------------------- winoground
def test_winoground_scores_hand_made():
    from utils.evaluation import winoground_metrics
    # scores[n, caption, image]; caption c belongs with image c
    scores = torch.tensor([
        [[1.0, 0.0], [0.0, 1.0]],  # everything right
        [[0.5, 0.6], [0.1, 0.9]],  # text right (0.5 > 0.1, 0.9 > 0.6), image wrong (caption 0 prefers image 1)
        [[0.5, 0.1], [0.6, 0.9]],  # image right (0.5 > 0.1, 0.9 > 0.6), text wrong (image 0 prefers caption 1)
        [[0.5, 0.5], [0.5, 0.5]],  # ties fail
        [[0.0, 1.0], [1.0, 0.0]],  # everything swapped
    ])
    out = winoground_metrics(scores)
    assert out["text_score"] == pytest.approx(40.0)
    assert out["image_score"] == pytest.approx(40.0)
    assert out["group_score"] == pytest.approx(20.0)
    assert (out["chance_text_score"], out["chance_image_score"]) == (25.0, 25.0)
    assert out["chance_group_score"] == pytest.approx(100 / 6)
    with pytest.raises(ValueError, match=r"\(N, 2, 2\)"):
        winoground_metrics(torch.zeros(3, 4))


def test_winoground_chance_levels_match_random_scores():
    from utils.evaluation import winoground_metrics
    out = winoground_metrics(torch.rand(200_000, 2, 2, generator=torch.Generator().manual_seed(0)))
    for name in ("text_score", "image_score", "group_score"):
        assert out[name] == pytest.approx(out[f"chance_{name}"], abs=0.5)


def test_winoground_scores_from_model():
    from utils.evaluation import evaluate_winoground, winoground_metrics, winoground_scores
    # examples (image_0, caption_0, image_1, caption_1) over the stub's 3 images / 6 texts (t_j describes
    # image TXT2IMG[j])
    examples = [(0, "t0", 1, "t1"), (2, "t5", 1, "t4"), (0, "t3", 2, "t2")]
    rows = [{"image_0": torch.eye(3)[a], "caption_0": c0, "image_1": torch.eye(3)[b], "caption_1": c1}
            for a, c0, b, c1 in examples]
    loader = DataLoader(rows, batch_size=2, collate_fn=collate_dict)
    model = StubRetrievalModel().train()
    itm = winoground_scores(model, loader, "cpu", tokenizer=stub_tokenizer)
    assert model.training
    for n, (a, c0, b, c1) in enumerate(examples):
        for c, text in enumerate((c0, c1)):
            for i, image in enumerate((a, b)):
                s = ITM[image, int(text[1:])]
                assert itm[n, c, i] == pytest.approx(float(torch.sigmoid(2 * s)))  # softmax([-s, s])[1]
                assert winoground_scores(model, loader, "cpu", tokenizer=stub_tokenizer, score="itc")[n, c, i] == \
                    pytest.approx(float(SIMS[image, int(text[1:])]))
    # the match probability orders pairs like the match logit: the metrics equal those of the raw ITM table
    out = evaluate_winoground(model, loader, "cpu", tokenizer=stub_tokenizer)
    expected = torch.tensor([[[ITM[a, int(c0[1:])], ITM[b, int(c0[1:])]], [ITM[a, int(c1[1:])], ITM[b, int(c1[1:])]]]
                             for a, c0, b, c1 in examples])
    assert out == winoground_metrics(expected)
    with pytest.raises(ValueError, match="itm"):
        winoground_scores(model, loader, "cpu", tokenizer=stub_tokenizer, score="clip")
