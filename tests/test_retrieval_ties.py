"""Retrieval ranking with tied scores (issue 16, point 6) and its float32 scores.

The rule (utils/evaluation/ranking.py, Retrieval.py): every ranking — the ITC top-k selection of the candidates to
re-rank and the rank of the positive in recall — is a stable descending sort, so among equal scores the
candidate with the lower index (its order in the evaluation file) ranks first. Similarities and ITM logits
are float32 whatever the model's dtype."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import utils.evaluation.ranking as ev
from dataset.tasks import collate_dict
from models.tokens import Tokens
from utils.evaluation import (
    evaluate_retrieval,
    first_positive_rank,
    positives_matrix,
    rank_order,
    recall_metrics,
    retrieval_scores,
)

# 3 images, 6 texts; text j describes image TXT2IMG[j]. Nearly every similarity is tied.
TXT2IMG = {0: 0, 1: 1, 2: 2, 3: 0, 4: 1, 5: 2}
SIMS = torch.tensor([[0.50, 0.50, 0.50, 0.50, 0.50, 0.50],
                     [0.50, 0.50, 0.25, 0.50, 0.50, 0.25],
                     [0.25, 0.50, 0.25, 0.50, 0.25, 0.25]])
# ITC, lower index first. Image → text: img0 t0 t1 t2 t3 t4 t5 (positive t0 at rank 0), img1 t0 t1 t3 t4 t2 t5
# (t1 at 1), img2 t1 t3 t0 t2 t4 t5 (t2 at 3). Text → image (columns): t0 img0 img1 img2 (img0 at 0), t1 all
# tied (img1 at 1), t2 img0 img1 img2 (img2 at 2), t3 tied (img0 at 0), t4 img0 img1 img2 (img1 at 1), t5 (img2
# at 2). A rule that ranked a tied positive first ("strictly greater" counting) would give txt_r1 = 100.
ITC_RANKS_I2T, ITC_RANKS_T2I = [0, 1, 3], [0, 1, 2, 0, 1, 2]
# k_test = 2, top 2 by ITC with ties to the lower index: image → text img0 {t0, t1}, img1 {t0, t1}, img2 {t1, t3};
# text → image {img0, img1} for every text (t2, t5: img1 and img2 tie at 0.25, img1 is taken).
SCORED = {(0, 0), (0, 1), (1, 0), (1, 1), (2, 1), (2, 3)} | {(i, t) for i in (0, 1) for t in range(6)}
# ITM match logits of the scored pairs, again with ties; 100 for the pairs that must not be scored.
ITM = torch.full((3, 6), 100.0)
for (i, t), v in {(0, 0): 1.0, (0, 1): 1.0, (1, 0): 0.0, (1, 1): 1.0, (2, 1): 0.0, (2, 3): 0.0,
                  (0, 2): 0.0, (1, 2): 0.0, (0, 3): 0.0, (1, 3): 0.0, (0, 4): 0.0, (1, 4): 1.0,
                  (0, 5): 0.0, (1, 5): 0.0}.items():
    ITM[i, t] = v
# Re-ranked, image → text: img0 t0 = t1 = 1 (t0 first, hit), img1 t1 (hit), img2 t1 = t3 = 0, then the others in
# ITC order t0 t2 t4 t5 (positive t2 at 3). Text → image: t0 img0 (hit), t1 img0 = img1 (img0 first: positive
# img1 at 1), t2 tie then img2 (2), t3 tie (img0 at 0), t4 img1 (0), t5 (img2 at 2).
ITM_RANKS_I2T, ITM_RANKS_T2I = [0, 0, 3], [0, 1, 2, 0, 0, 2]


class TieStub(nn.Module):
    """Image i's pixels are e_i, text j's token id is j. Features come from the tables ``image_feats`` (I, D)
    and ``text_feats`` (T, D) in the model's ``dtype``, so the ITC matrix is their product; ``itm_logits``
    reads ``itm`` (I, T) and returns it in ``dtype``. ``scored`` collects the (image, text) pairs scored."""

    def __init__(self, image_feats, text_feats, itm, dtype=torch.float32):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros((), dtype=dtype))
        self.image_feats, self.text_feats, self.itm, self.dtype = image_feats, text_feats, itm, dtype
        self.scored: set[tuple[int, int]] = set()

    def encode_image(self, images):
        assert images.dtype == self.dtype  # _encode_visual gives pixels the model's dtype
        return Tokens(images[:, None, :]), torch.ones(images.shape[0], 1, dtype=torch.long)

    def image_features(self, embeds):
        return self.image_feats[embeds.final[:, 0].float().argmax(1)].to(self.dtype)

    def encode_text(self, ids, atts):
        return Tokens(ids[:, :1, None].to(self.dtype))  # (N, 1, 1): the text id (exact in bf16 below 256)

    def text_features(self, embeds):
        return self.text_feats[embeds.final[:, 0, 0].long()].to(self.dtype)

    def itm_logits(self, image_embeds, image_atts, text_embeds, text_atts, image_index=None):
        if image_index is not None:
            image_embeds = image_embeds[image_index]
        image, text = image_embeds.final[:, 0].float().argmax(1), text_embeds.final[:, 0, 0].long()
        self.scored |= set(zip(image.tolist(), text.tolist(), strict=True))
        score = self.itm[image, text].to(self.dtype)
        return torch.stack([-score, score], dim=1)


def stub_tokenizer(texts, padding, truncation, max_length, return_tensors):
    ids = torch.tensor([[int(t.removeprefix("t"))] for t in texts])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


class StubData(Dataset):
    def __init__(self, txt2img, n_images):
        self.text = [f"t{j}" for j in range(len(txt2img))]
        self.txt2img, self.n_images = txt2img, n_images

    def __len__(self):
        return self.n_images

    def __getitem__(self, i):
        return {"image": torch.eye(self.n_images)[i], "index": i}


def loader(txt2img=TXT2IMG, n_images=3):
    # images in reverse order: their features must land by ``index``
    return DataLoader(StubData(txt2img, n_images), batch_size=2, sampler=list(range(n_images))[::-1],
                      collate_fn=collate_dict)


def tie_stub(dtype=torch.float32):
    return TieStub(torch.eye(3), SIMS.t(), ITM, dtype)


# --------------------------------------------------------------------------------------- the rule itself
def test_rank_order_puts_the_lower_index_first_among_ties():
    scores = torch.tensor([[0.0, 1.0, 0.0, 1.0, 0.5, 1.0]] * 2)
    assert rank_order(scores).tolist() == [[1, 3, 5, 4, 0, 2]] * 2


def test_all_tied_scores_rank_by_index():
    # every score equal, text j ↔ image j: the positive of query j has j candidates before it
    n = 12
    positives = torch.eye(n, dtype=torch.bool)
    for dtype in (torch.float32, torch.bfloat16):
        scores = torch.zeros(n, n, dtype=dtype)
        assert first_positive_rank(scores, positives).tolist() == list(range(n))
        out = recall_metrics(scores, scores.t(), positives)
        for direction in ("txt", "img"):
            assert out[f"{direction}_r1"] == pytest.approx(100 / 12)
            assert out[f"{direction}_r5"] == pytest.approx(500 / 12)
            assert out[f"{direction}_r10"] == pytest.approx(1000 / 12)


def test_first_positive_rank_matches_the_counting_rule(monkeypatch):
    # bf16-rounded scores in a narrow range: many ties. The rank of the best positive must be, for every query,
    # min over its positives p of #(score > s_p) + #(score == s_p and index < p), with or without chunking.
    g = torch.Generator().manual_seed(0)
    scores = (torch.rand(40, 300, generator=g) * 0.05 + 3.0).bfloat16().float()
    assert scores.unique().numel() < 20  # ties everywhere
    positives = torch.rand(40, 300, generator=g) < 0.02
    positives[0] = False  # a query without positives is never a hit
    index = torch.arange(300)
    expected = []
    for s, pos in zip(scores, positives, strict=True):
        ranks = [int(((s > s[p]) | ((s == s[p]) & (index < p))).sum()) for p in pos.nonzero().flatten().tolist()]
        expected.append(min(ranks) if ranks else torch.iinfo(torch.long).max)
    assert first_positive_rank(scores, positives).tolist() == expected
    monkeypatch.setattr(ev, "RANK_CHUNK", 7)
    assert first_positive_rank(scores, positives).tolist() == expected
    with pytest.raises(ValueError, match="differ"):
        first_positive_rank(scores, positives[:, :10])


# --------------------------------------------------------------------------------------- end to end, both paths
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_tied_retrieval_recall_is_the_hand_computed_value(dtype):
    positives = positives_matrix(TXT2IMG, 3)
    for _ in range(2):  # deterministic
        model = tie_stub(dtype)
        sims, s_i2t, s_t2i = retrieval_scores(model, loader(), "cpu", 2, tokenizer=stub_tokenizer, itm_batch_size=4)
        assert model.scored == SCORED  # the top 2 by ITC, ties to the lower index
        assert torch.equal(sims, SIMS)
        assert first_positive_rank(sims, positives).tolist() == ITC_RANKS_I2T
        assert first_positive_rank(sims.t(), positives.t()).tolist() == ITC_RANKS_T2I
        assert first_positive_rank(s_i2t, positives).tolist() == ITM_RANKS_I2T
        assert first_positive_rank(s_t2i, positives.t()).tolist() == ITM_RANKS_T2I
        assert (s_i2t < 100).all() and (s_t2i < 100).all()  # no pair outside the top 2 was scored

        out = evaluate_retrieval(tie_stub(dtype), loader(), "cpu", 2, tokenizer=stub_tokenizer)
        assert out["itc_txt_r1"] == pytest.approx(100 / 3)  # img0 only
        assert out["itc_img_r1"] == pytest.approx(100 / 3)  # t0, t3
        assert out["itc_txt_r5"] == out["itc_img_r5"] == out["itc_txt_r10"] == 100.0
        assert out["txt_r1"] == pytest.approx(200 / 3)  # img0 (ITM tie, t0 first), img1
        assert out["img_r1"] == pytest.approx(50.0)  # t0, t3 (ITM tie, img0 first), t4
        assert out["txt_r5"] == out["img_r5"] == 100.0
        itc_only = evaluate_retrieval(tie_stub(dtype), loader(), "cpu", 2, itm_rerank=False, tokenizer=stub_tokenizer)
        assert itc_only["txt_r1"] == pytest.approx(100 / 3) and itc_only["img_r1"] == pytest.approx(100 / 3)


def test_all_tied_itc_with_tied_itm_recall_is_the_hand_computed_value():
    # 8 images with 5 consecutive captions each (as in an evaluation file), every ITC similarity 0.5 (a bf16
    # model), and an ITM head that is right but tied: 1 for every matching pair, 0 otherwise. k_test = 3.
    txt2img = {j: j // 5 for j in range(40)}
    itm = (torch.arange(40)[None, :] // 5 == torch.arange(8)[:, None]).float()
    model = TieStub(torch.eye(8), torch.full((40, 8), 0.5), itm, torch.bfloat16)
    out = evaluate_retrieval(model, loader(txt2img, 8), "cpu", 3, tokenizer=stub_tokenizer)
    # re-ranked: image → text top 3 = t0 t1 t2 for every image; text → image top 3 = img0 img1 img2 for every text
    assert model.scored == {(i, t) for i in range(8) for t in range(3)} | {(i, t) for i in range(3) for t in range(40)}
    # ITC only. Image i: its first caption t_5i has 5i texts before it → only img0 within 5, img0 and img1 within 10.
    assert (out["itc_txt_r1"], out["itc_txt_r5"], out["itc_txt_r10"]) == (12.5, 12.5, 25.0)
    # Text j: its image j // 5 has j // 5 images before it → R@1 texts 0-4, R@5 texts 0-24, R@10 all.
    assert (out["itc_img_r1"], out["itc_img_r5"], out["itc_img_r10"]) == (12.5, 62.5, 100.0)
    # Re-ranked. Image 0: t0-t2 are its captions (hit); image i ≥ 1: t0-t2 score 0, then t3... in ITC (index)
    # order, so t_5i is still at rank 5i.
    assert (out["txt_r1"], out["txt_r5"], out["txt_r10"]) == (12.5, 12.5, 25.0)
    # Text j < 15: its image is among img0-img2 and scores 1 (hit); j ≥ 15: img0-img2 score 0, then img3... in
    # index order, so image p = j // 5 is at rank p: R@1 15/40, R@5 25/40 (p < 5), R@10 all.
    assert (out["img_r1"], out["img_r5"], out["img_r10"]) == (37.5, 62.5, 100.0)


def test_rerank_candidates_outside_the_top_k_keep_the_itc_order_with_distinct_scores(monkeypatch):
    monkeypatch.setattr(ev, "RANK_CHUNK", 1)  # one query per sort: the same scores
    _, s_i2t, s_t2i = retrieval_scores(tie_stub(), loader(), "cpu", 2, tokenizer=stub_tokenizer)
    # image 2: top 2 t1 = t3 = 0, then t0 t2 t4 t5 (tied at 0.25 in ITC) at 0 - 1, - 2, - 3, - 4
    assert s_i2t[2].tolist() == [-1.0, 0.0, -2.0, 0.0, -3.0, -4.0]
    assert s_t2i[2].tolist() == [0.0, 0.0, -1.0]  # text 2: img0 = img1 = 0, img2 below
    monkeypatch.setattr(ev, "RANK_CHUNK", 1024)
    _, again_i2t, again_t2i = retrieval_scores(tie_stub(), loader(), "cpu", 2, tokenizer=stub_tokenizer)
    assert torch.equal(again_i2t, s_i2t) and torch.equal(again_t2i, s_t2i)


# --------------------------------------------------------------------------------------- float32 scores
def test_bf16_model_gives_float32_similarities_and_itm_scores():
    # bf16 features whose products differ by less than a bf16 step: image 0 · text 1 = 1 + 2^-10, every
    # other product 1. A bf16 product (or autocast) would make them all 1.0 and the tie rule would pick t0.
    image_feats = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    text_feats = torch.tensor([[1.0, 0.0], [1.0, 2.0 ** -10]])
    itm = torch.tensor([[0.1, 0.3], [0.2, 0.7]])  # not bf16-representable: written as the bf16 logits
    txt2img = {0: 1, 1: 0}
    for autocast in (False, True):
        model = TieStub(image_feats, text_feats, itm, torch.bfloat16)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            sims, s_i2t, s_t2i = retrieval_scores(model, loader(txt2img, 2), "cpu", 2, tokenizer=stub_tokenizer)
        assert sims.dtype == s_i2t.dtype == s_t2i.dtype == torch.float32
        assert sims.tolist() == [[1.0, 1.0 + 2.0 ** -10], [1.0, 1.0]]
        bf16_logits = itm.bfloat16().float()
        assert torch.equal(s_i2t, bf16_logits) and torch.equal(s_t2i, bf16_logits.t())
        itc = recall_metrics(sims, sims.t(), positives_matrix(txt2img, 2))
        assert itc["txt_r1"] == 100.0  # img0 → t1 by 2^-10, img1 → t0 (tie, lower index)


def test_bf16_x2vlm_rerank_writes_float32_scores(tiny_cfg):
    from models.x2vlm import X2VLM

    class Images(Dataset):
        text = [f"t{j}" for j in range(8)]
        txt2img = {j: j // 2 for j in range(8)}

        def __len__(self):
            return 4

        def __getitem__(self, i):
            g = torch.Generator().manual_seed(i)
            return {"image": torch.randn(3, 64, 64, generator=g), "index": i}

    def tokenizer(texts, padding, truncation, max_length, return_tensors):
        ids = torch.tensor([[2, 5 + int(t[1:]), 20 + 3 * int(t[1:]), 3] for t in texts])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    torch.manual_seed(0)
    model = X2VLM.from_config(tiny_cfg).to(torch.bfloat16).eval()
    data = DataLoader(Images(), batch_size=3, collate_fn=collate_dict)
    sims, s_i2t, s_t2i = retrieval_scores(model, data, "cpu", 3, tokenizer=tokenizer, itm_batch_size=5)
    assert sims.dtype == s_i2t.dtype == s_t2i.dtype == torch.float32
    top = rank_order(sims)[:, :3]
    picked = s_i2t.gather(1, top)
    assert torch.equal(picked, picked.bfloat16().float())  # the bf16 logits, cast (not recomputed)
    with torch.no_grad():
        ids = tokenizer(Images.text, None, None, None, None)
        txt = model.encode_text(ids["input_ids"], ids["attention_mask"])
        img, img_atts = model.encode_image(torch.stack([Images()[i]["image"] for i in range(4)]).bfloat16())
        for i in range(4):
            logits = model.itm_logits(img[[i, i, i]], img_atts[i:i + 1].expand(3, -1), txt[top[i]],
                                      ids["attention_mask"][top[i]])[:, 1]
            assert logits.dtype == torch.bfloat16
            torch.testing.assert_close(picked[i], logits.float(), rtol=2e-2, atol=2e-2)
    out = recall_metrics(s_i2t, s_t2i, positives_matrix(Images.txt2img, 4))
    assert out == recall_metrics(s_i2t, s_t2i, positives_matrix(Images.txt2img, 4))
