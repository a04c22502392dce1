"""The README demo as a user runs it: ``configs/pretrain/demo.yaml`` (1000 steps of the tiny preset) on the 600-image
generated set, then the zero-shot evaluation on the held-out images: ITC retrieval and grounding well above chance.
Slow (about 5 minutes on a 2-core CPU): ``pytest -m slow``."""
from __future__ import annotations

import pytest

from tests.conftest import run_pretrain_demo


@pytest.mark.slow
def test_demo_pretraining_learns_retrieval_and_grounding(tmp_path) -> None:
    r = run_pretrain_demo("demo.yaml", tmp_path)
    print({k: round(v, 1) for k, v in r.items()})
    # measured (seed 42, 2-core CPU): ITC R@1 10.0 / 9.1 vs chance 0.7; grounding acc 27.8 vs 1.6 (best constant
    # box), mIoU 35.8 vs 6.4
    assert r["retrieval/itc_txt_r1"] > 5 * r["retrieval/chance_txt_r1"]
    assert r["retrieval/itc_img_r1"] > 5 * r["retrieval/chance_img_r1"]
    assert r["grounding/acc"] > 5 * r["grounding/chance_acc"]
    assert r["grounding/miou"] > 3 * r["grounding/chance_miou"]
