"""Winoground-style evaluation: text, image and group scores on a file of caption-image pairs.

    python scripts/winoground.py --config configs/finetune/retrieval_coco.yaml \\
        --checkpoint out/coco/model.safetensors --pairs data/winoground/examples.jsonl \\
        --override data.root=data/winoground/images --image_ext .png

The pairs file (JSON array or JSON-lines) holds ``{image_0, image_1, caption_0, caption_1}`` per example,
caption c describing image c (extra fields such as ``id`` or ``tag`` are ignored). Image paths are joined to
``data.root``; ``--image_ext`` is appended to names without a suffix (the Winoground release names its
images ``ex_0_img_0`` and stores ``ex_0_img_0.png``). Each of the four pairs is scored by the ITM head's
match probability (``--score itc``: ITC cosine similarity). Results, with the chance levels (25 / 25 /
16.67), go to ``output_dir/winoground.json``.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from torch.utils.data import Dataset  # noqa: E402

from dataset import create_loader, image_transform  # noqa: E402
from dataset.io import AnnotationIndex, load_image  # noqa: E402
from dataset.tasks import collate_dict  # noqa: E402
from dataset.text import pre_caption  # noqa: E402
from models.retrieval import X2VLMForRetrieval  # noqa: E402
from utils.evaluation import evaluate_winoground  # noqa: E402
from utils.task import build_model, finish, setup_task, task_parser  # noqa: E402


class WinogroundPairs(Dataset):
    """Items ``{image_0, image_1, caption_0, caption_1}``: eval-transformed pixels and cleaned captions."""

    def __init__(self, path: str, transform, root: str | None = None, max_words: int = 30, image_ext: str = ""):
        self.index, self.transform, self.root = AnnotationIndex(path), transform, root
        self.max_words, self.image_ext = max_words, image_ext

    def __len__(self) -> int:
        return len(self.index)

    def _path(self, name: str) -> str:
        return name if Path(name).suffix or not self.image_ext else name + self.image_ext

    def __getitem__(self, i: int) -> dict:
        rec = self.index.get(i)
        item = {}
        for k in (0, 1):
            image = load_image(self._path(rec[f"image_{k}"]), True, self.root, where=self.index.where(i))
            item[f"image_{k}"] = self.transform(image)[0]
            item[f"caption_{k}"] = pre_caption(rec[f"caption_{k}"], self.max_words)
        return item


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = task_parser(__doc__, "configs/finetune/retrieval_demo.yaml")
    parser.add_argument("--pairs", required=True, help="JSON / JSON-lines file of {image_0, image_1, caption_0, "
                                                       "caption_1}")
    parser.add_argument("--score", choices=["itm", "itc"], default="itm", help="pair score (default: itm)")
    parser.add_argument("--image_ext", default="", help="suffix for image names that have none (e.g. .png)")
    ctx = setup_task(parser.parse_args(argv))
    cfg = ctx.cfg
    model = build_model(ctx, X2VLMForRetrieval).to(ctx.dist.device)
    ds = WinogroundPairs(ctx.args.pairs, image_transform(cfg, train=False), cfg["data"]["root"],
                         cfg["data"]["max_words"], ctx.args.image_ext)
    loader = create_loader(ds, cfg["data"]["finetune"]["batch_size_test"], collate_dict, cfg["data"]["num_workers"],
                           training=False)
    results = evaluate_winoground(model, loader, ctx.dist.device, tokenizer=ctx.tokenizer,
                                  max_tokens=cfg["data"]["max_tokens"], score=ctx.args.score)
    return finish(ctx, "winoground", results)


if __name__ == "__main__":
    from utils.cli import cli_main
    cli_main(main)
