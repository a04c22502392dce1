"""VQA: the answer decoder (causal, weighted loss, official ranking), its initialisation and checkpoint layout,
and VQA.py end to end — a random tiny model fine-tuned on the generated shapes data must beat the best
constant answer on the held-out split."""
from __future__ import annotations

import json

import pytest
import torch

from models.vqa import X2VLMForVQA
from tests.conftest import ROOT
from utils.config import load_config
from utils.vqa_metrics import best_constant_accuracy, vqa_accuracy

DEMO = ROOT / "configs" / "finetune" / "vqa_demo.yaml"
OFFICIAL = ROOT / "configs" / "finetune" / "vqa.yaml"


@pytest.fixture(scope="module")
def vqa_model() -> X2VLMForVQA:
    torch.manual_seed(0)
    return X2VLMForVQA.from_config(load_config(ROOT / "configs" / "models" / "tiny.yaml")).eval()


def _answers(vocab: int = 512, n: int = 7, gen: torch.Generator | None = None):
    """``[CLS] w.. [SEP] pad`` candidate answers of 1-3 words (ids 5..vocab-1)."""
    gen = gen or torch.Generator().manual_seed(1)
    ids = torch.zeros(n, 5, dtype=torch.long)
    atts = torch.zeros(n, 5, dtype=torch.long)
    for i in range(n):
        words = 1 + i % 3
        ids[i, 0], ids[i, words + 1] = 2, 3
        ids[i, 1:words + 1] = torch.randint(5, vocab, (words,), generator=gen)
        atts[i, :words + 2] = 1
    return ids, atts


def _states(b: int = 3, lq: int = 6, hidden: int = 64, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    atts = torch.ones(b, lq, dtype=torch.long)
    atts[0, -2:] = 0
    return torch.randn(b, lq, hidden, generator=gen), atts


# ------------------------------------------------------------------------------------------ decoder
def test_decoder_is_causal_and_ignores_padding(vqa_model):
    dec = vqa_model.text_decoder
    states, s_atts = _states(2)
    ids, atts = _answers(n=2)
    logits = dec(ids, atts, states, s_atts)
    changed = ids.clone()
    changed[:, 2] = 7  # a later token cannot change earlier positions
    torch.testing.assert_close(dec(changed, atts, states, s_atts)[:, :2], logits[:, :2])
    # the context padding is masked: changing padded question states changes nothing
    states2 = states.clone()
    states2[0, -2:] = 100.0
    torch.testing.assert_close(dec(ids, atts, states2, s_atts), logits)
    # the LM head is tied to the decoder's word embeddings (as the official BertLMHeadModel)
    assert dec.cls.predictions.decoder.weight is dec.bert.embeddings.word_embeddings.weight


def test_sequence_nll_sums_next_token_cross_entropy(vqa_model):
    dec = vqa_model.text_decoder
    states, s_atts = _states(2)
    ids, atts = _answers(n=2)
    nll = dec.sequence_nll(ids, atts, states, s_atts)
    logp = dec(ids, atts, states, s_atts).log_softmax(-1)
    for i in range(2):
        n = int(atts[i].sum())
        expected = -sum(logp[i, t - 1, ids[i, t]] for t in range(1, n))
        torch.testing.assert_close(nll[i], expected)


def test_training_loss_is_the_weighted_answer_loss_per_question(vqa_model):
    gen = torch.Generator().manual_seed(3)
    ids, atts = _answers(n=5)
    images = torch.randn(2, 3, 64, 64, generator=gen)
    q_ids = torch.randint(5, 512, (2, 6), generator=gen)
    q_ids[:, 0] = 2
    q_atts = torch.ones(2, 6, dtype=torch.long)
    weights = torch.tensor([0.5, 0.3, 0.2, 1.0, 0.5])
    batch = {"images": images, "text_ids": q_ids, "text_atts": q_atts, "answer_ids": ids, "answer_atts": atts,
             "weights": weights, "n_answers": torch.tensor([3, 2])}
    loss = vqa_model(batch)["loss"]
    states = vqa_model.question_states(images, q_ids, q_atts)
    owner = torch.tensor([0, 0, 0, 1, 1])
    nll = vqa_model.text_decoder.sequence_nll(ids, atts, states[owner], q_atts[owner])
    torch.testing.assert_close(loss, (weights * nll).sum() / 2)


@pytest.mark.parametrize("k", [3, 7, 50])
def test_ranking_follows_the_official_procedure(vqa_model, k):
    """First-token top-k, then log p(first) + full-answer log-likelihood, re-ranked; batched = one by one."""
    dec = vqa_model.text_decoder
    states, s_atts = _states(3)
    ids, atts = _answers(n=7)
    top_ids, probs = vqa_model.rank_answers(states, s_atts, ids, atts, k)
    kk = min(k, 7)
    assert top_ids.shape == probs.shape == (3, kk)
    for q in range(3):
        st, sa = states[q:q + 1], s_atts[q:q + 1]
        first = dec(ids[:1, :1], None, st, sa)[0, 0].softmax(-1)[ids[:, 1]]  # every candidate's first token
        keep = first.topk(kk).indices
        nll = dec.sequence_nll(ids[keep], atts[keep], st.expand(kk, -1, -1), sa.expand(kk, -1))
        score = first[keep].log() - nll
        order = score.argsort(descending=True)
        assert top_ids[q].tolist() == keep[order].tolist()
        torch.testing.assert_close(probs[q], score.softmax(-1)[order])
        single, _ = vqa_model.rank_answers(st, sa, ids, atts, k)
        assert single[0].tolist() == top_ids[q].tolist()


# ------------------------------------------------------------------------------------------ initialisation
def _tiny_cfg(*overrides: str) -> dict:
    return load_config(ROOT / "configs" / "models" / "tiny.yaml", list(overrides))


def test_decoder_starts_from_the_pretrained_model(tmp_path):
    from models.checkpoint import save_checkpoint_weights
    from models.x2vlm import X2VLM
    torch.manual_seed(1)
    pretrained = X2VLM.from_config(_tiny_cfg("model.fusion.layers=4"))
    save_checkpoint_weights(pretrained, tmp_path)
    ckpt = str(tmp_path / "model.safetensors")

    model = X2VLMForVQA.from_config(_tiny_cfg("model.fusion.layers=4", f"model.checkpoint={ckpt}"))
    dec = model.text_decoder
    assert len(dec.layers) == 4  # the decoder takes model.fusion.layers
    for i in range(4):  # decoder layer i = fusion layer i, cross-attention included (equal widths here)
        for key, value in model.fusion.layer[i].state_dict().items():
            torch.testing.assert_close(dec.layers[i].state_dict()[key], value)
    torch.testing.assert_close(dec.bert.embeddings.word_embeddings.weight,
                               model.text_encoder.embeddings.word_embeddings.weight)
    # the LM head from the checkpoint's MLM head (the VQA model itself has none, as the official one)
    torch.testing.assert_close(dec.cls.predictions.transform.dense.weight,
                               pretrained.mlm_head.predictions.transform.dense.weight)
    assert not hasattr(model, "mlm_head") and model.decoder_source == "encoder"
    assert model.load_report.missing == [] and "mlm_head.predictions.transform.dense.weight" in model.load_report.unused
    # decoder parameters get optimizer.lr_mult (official large_lr_for_dec), loaded encoder ones do not
    dec_names = {"text_decoder." + n for n, _ in dec.named_parameters()}
    assert dec_names <= model.fresh_parameters
    assert not any(n.startswith(("fusion.", "text_encoder.encoder.")) for n in model.fresh_parameters)

    # half as many decoder layers: the odd fusion layers; a narrower vision leaves cross-attn key/value fresh
    torch.manual_seed(1)
    pre2 = X2VLM.from_config(_tiny_cfg("model.fusion.layers=4", "model.vision.width=32", "model.vision.heads=2"))
    save_checkpoint_weights(pre2, tmp_path / "narrow")
    model2 = X2VLMForVQA(_tiny_cfg("model.fusion.layers=4", "model.vision.width=32", "model.vision.heads=2")["model"])
    model2.text_decoder = type(model2.text_decoder)(model2.text_encoder.config, 2, model2.text_width)
    model2.load_checkpoint(tmp_path / "narrow" / "model.safetensors")
    written = model2.init_decoder_from_encoder()
    for i, j in enumerate((1, 3)):
        torch.testing.assert_close(model2.text_decoder.layers[i].attention.self.query.weight,
                                   model2.fusion.layer[j].attention.self.query.weight)
    assert not any("crossattention.self.key" in k or "crossattention.self.value" in k for k in written)
    assert any("crossattention.self.query" in k for k in written)


def test_official_vqa_checkpoint_layout_loads(tmp_path, vqa_model):
    """A fine-tuned official checkpoint: 18-layer text encoder saved without 'bert.', decoder under
    text_decoder.bert.* / text_decoder.cls.*; no pretraining heads."""
    n_text = len(vqa_model.text_encoder.encoder.layer)
    official = {}
    for key, value in vqa_model.state_dict().items():
        if key.startswith(("itm_head.", "bbox_head.", "vision_proj.", "text_proj.", "mlm_head.")) or key == "temp":
            continue
        if key.startswith("fusion.layer."):
            i, rest = key[len("fusion.layer."):].split(".", 1)
            key = f"text_encoder.encoder.layer.{n_text + int(i)}.{rest}"
        official[key] = value.clone() + 0.5 if value.is_floating_point() else value.clone()
    assert any(k.startswith("text_decoder.bert.encoder.layer.") for k in official)
    assert "text_decoder.cls.predictions.decoder.weight" in official
    path = tmp_path / "vqa_official.th"
    torch.save({"model": official}, path)
    torch.manual_seed(5)
    fresh = X2VLMForVQA.from_config(load_config(ROOT / "configs" / "models" / "tiny.yaml"))
    report = fresh.load_checkpoint(path)
    assert not report.unexpected and not report.mismatched
    assert {k.split(".")[0] for k in report.missing} <= {"itm_head", "bbox_head", "vision_proj", "text_proj",
                                                         "mlm_head", "temp"}
    torch.testing.assert_close(fresh.fusion.layer[1].crossattention.self.key.weight,
                               vqa_model.fusion.layer[1].crossattention.self.key.weight + 0.5)
    torch.testing.assert_close(fresh.text_decoder.layers[0].attention.self.value.bias,
                               vqa_model.text_decoder.layers[0].attention.self.value.bias + 0.5)


# ------------------------------------------------------------------------------------------ configs
def test_official_recipe_config():
    cfg = load_config(OFFICIAL)  # strict: every key exists in configs/defaults.yaml
    m, ft = cfg["model"], cfg["data"]["finetune"]
    assert (m["image_res"], m["patch_size"], m["fusion"]["layers"]) == (768, 16, 6)
    assert (cfg["optimizer"]["lr"], cfg["optimizer"]["lr_mult"], cfg["optimizer"]["weight_decay"]) == (4e-5, 2.0, 0.01)
    assert cfg["optimizer"]["betas"] == [0.9, 0.98]
    assert (cfg["train"]["epochs"], cfg["scheduler"]["name"], cfg["scheduler"]["warmup"]) == (5, "linear", 0.1)
    assert (ft["batch_size_train"], ft["batch_size_test"], cfg["data"]["max_tokens"]) == (8, 32, 40)
    assert cfg["eval"]["k_test"] == 128 and cfg["data"]["hflip"] == "careful"
    assert len(ft["train_file"]) == 3 and ft["answer_list"]
    with torch.device("meta"):
        model = X2VLMForVQA.from_config(load_config(OFFICIAL, ["model.text.name_or_path=null",
                                                               "model.vision.checkpoint=null"]), load_weights=False)
    assert len(model.text_decoder.layers) == 6


# ------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    from dataset.synthetic import generate
    # 96 scenes: 72 training images (288 questions), 24 held out (96 questions)
    return generate(tmp_path_factory.mktemp("vqa_syn"), seed=0, n_images=96, n_videos=0)


def _run(*args: str) -> dict:
    import VQA
    return VQA.main(list(args))


def test_finetune_beats_the_best_constant_answer(syn, tmp_path):
    out = tmp_path / "vqa"
    data = [f"--override=data.root={syn['root']}", f"--override=model.text.tokenizer={syn['vocab']}",
            f"--override=data.finetune.train_file={json.dumps([syn['vqa_train']])}",
            f"--override=data.finetune.test_file={json.dumps([syn['vqa_test']])}",
            f"--override=data.finetune.answer_list={syn['answer_list']}"]
    returned = _run("--config", str(DEMO), "--output_dir", str(out), "--override=train.epochs=8", *data)

    results = json.loads((out / "vqa_result.json").read_text())
    test = json.loads(open(syn["vqa_test"]).read())
    answer_list = json.loads(open(syn["answer_list"]).read())
    assert sorted(r["question_id"] for r in results) == sorted(r["question_id"] for r in test)
    assert all(set(r) == {"question_id", "answer"} and r["answer"] in answer_list for r in results)

    gts = {r["question_id"]: r["answer"] for r in test}
    acc = vqa_accuracy(results, gts)
    _, chance = best_constant_accuracy(gts, answer_list)
    metrics = json.loads((out / "vqa_eval.json").read_text())
    assert metrics == returned
    assert metrics["vqa_acc"] == pytest.approx(acc["vqa_acc"])
    assert metrics["chance_vqa_acc"] == pytest.approx(chance)
    print(f"VQA accuracy {acc['vqa_acc']:.1f} (exact {acc['exact_acc']:.1f}), best constant answer {chance:.1f}")
    assert acc["vqa_acc"] >= 1.8 * chance, (acc, chance)

    # --evaluate with the saved weights gives the same answers
    _run("--config", str(DEMO), "--output_dir", str(tmp_path / "eval"), "--evaluate",
         "--checkpoint", str(out / "model.safetensors"), *data)
    assert json.loads((tmp_path / "eval" / "vqa_result.json").read_text()) == results
