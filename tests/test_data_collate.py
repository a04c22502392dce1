"""TokenizeCollate: text fields become padded ids and masks that match the tokenizer's own output."""
import pickle

import pytest
import torch

from dataset.collate import TokenizeCollate
from dataset.synthetic import build_vocab
from dataset.tasks import collate_dict
from dataset.text import build_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    vocab = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    vocab.write_text("\n".join(build_vocab(["a red circle", "a blue square to the left of it"])) + "\n")
    return build_tokenizer({"tokenizer": str(vocab)})


def test_fields_become_ids_and_masks(tokenizer):
    collate = TokenizeCollate(collate_dict, tokenizer, max_tokens=6, fields={"caption": "text"})
    samples = [{"image": torch.zeros(3, 2, 2), "caption": "a red circle"},
               {"image": torch.zeros(3, 2, 2), "caption": "a blue square to the left of it"}]
    batch = pickle.loads(pickle.dumps(collate))(samples)
    assert "caption" not in batch and batch["image"].shape == (2, 3, 2, 2)
    ids, atts = batch["text_ids"], batch["text_atts"]
    assert ids.shape == atts.shape == (2, 6)  # the longer caption is cut at max_tokens
    expected = tokenizer("a red circle")["input_ids"]
    assert ids[0, :len(expected)].tolist() == expected
    assert atts[0].tolist() == [1] * len(expected) + [0] * (6 - len(expected))
    assert ids[1, -1].item() == tokenizer.sep_token_id
    with pytest.raises(KeyError, match="question"):
        TokenizeCollate(collate_dict, tokenizer, 6, {"question": "q"})(samples)


def test_every_dataset_task_has_its_collate_and_a_typo_is_an_error() -> None:
    from dataset import COLLATES, TASKS, collate_for
    from dataset.pretrain import collate_image_text
    from dataset.tasks import collate_dict, collate_vqa
    assert set(COLLATES) == set(TASKS)
    assert collate_for("vqa") is collate_vqa and collate_for("grounding") is collate_dict
    assert collate_for("pretrain_images") is collate_image_text
    with pytest.raises(ValueError, match="unknown dataset task 'retreival'"):
        collate_for("retreival")
    with pytest.raises(TypeError, match="data.regions.batch_size"):
        collate_for("pretrain_regions")
