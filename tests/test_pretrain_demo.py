"""The pretraining demos as a user runs them: ``configs/pretrain/demo.yaml`` (the README demo, 1000 steps of the
tiny preset) and ``configs/pretrain/fiber_demo.yaml`` (FIBER tiny: 400 coarse steps, then 600 fine steps with the
box losses) on the 600-image generated set, then the zero-shot evaluation on the 150 held-out images: ITC
retrieval and grounding well above chance. Slow (about 5 and 7 minutes on a 2-core CPU): ``pytest -m slow``."""
from __future__ import annotations

import pytest

from tests.conftest import run_pretrain_demo

# measured (seed 42, 2-core CPU), zero-shot on the held-out split:
#   demo.yaml:       ITC R@1 text 10.0 / image 9.1 vs chance 0.7; grounding acc 27.8 vs 1.6 (best constant box),
#                    mIoU 35.8 vs 6.4
#   fiber_demo.yaml: ITC R@1 text 9.3 / image 8.7 vs chance 0.7; grounding acc 27.5 vs 1.6, mIoU 37.7 vs 6.4


@pytest.mark.slow
@pytest.mark.parametrize("config", ["demo.yaml", "fiber_demo.yaml"])
def test_demo_pretraining_learns_retrieval_and_grounding(config: str, tmp_path) -> None:
    r = run_pretrain_demo(config, tmp_path)
    print({k: round(v, 1) for k, v in r.items()})
    assert r["retrieval/itc_txt_r1"] > 5 * r["retrieval/chance_txt_r1"]
    assert r["retrieval/itc_img_r1"] > 5 * r["retrieval/chance_img_r1"]
    assert r["grounding/acc"] > 5 * r["grounding/chance_acc"]
    assert r["grounding/miou"] > 3 * r["grounding/chance_miou"]
