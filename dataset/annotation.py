"""The base of every map-style dataset of annotation records (pretraining and task files): records from an
:class:`~dataset.io.AnnotationIndex`, errors named ``file:line``, the bad-sample policy, per-sample seeding."""
from __future__ import annotations

from torch.utils.data import Dataset

from dataset.io import AnnotationIndex, BadSample
from dataset.robust import SkipGuard, robust_fetch
from dataset.sampling import sample_seed, seeded_random
from dataset.text import TextProcessor


class AnnotationDataset(Dataset):
    """Map-style base: records from an :class:`AnnotationIndex`, bad-sample policy from ``training``.

    Sample ``i`` draws its random choices from Python's ``random`` seeded by ``(seed, epoch, i)``
    (:meth:`set_seed`, :meth:`set_epoch`), so it is the same in every worker and after a resume."""

    name = "data"
    seed = 0
    epoch = 0
    #: put the sample's seed under ``seed`` (for a collate that draws at random, e.g. :class:`RegionCollate`)
    sample_carries_seed = False
    #: the pretraining datasets' :class:`TextProcessor`; None in the task datasets (:class:`RetrievalEvalDataset`:
    #: its captions)
    text: TextProcessor | list[str] | None

    def __init__(self, files, text: TextProcessor | None, training: bool = True, root: str | None = None,
                 max_bad_fraction: float = 0.05, bad_window: int = 1000):
        self.index = files if isinstance(files, AnnotationIndex) else AnnotationIndex(files)
        self.text, self.training, self.root = text, training, root
        self.guard = SkipGuard(max_bad_fraction, bad_window, name=self.name)

    def __len__(self) -> int:
        return len(self.index)

    def set_seed(self, seed: int) -> None:
        self.seed = int(seed)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def from_record(self, ann: dict) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def load(self, i: int) -> dict:
        return self.from_record(self.index.get(i))

    def _load_named(self, i: int) -> dict:
        where = self.index.where(i)
        try:
            return self.load(i)
        except BadSample as e:
            msg = str(e)
            raise type(e)(msg if msg.startswith(where) else f"{where}: {msg}") from e
        except (KeyError, TypeError, ValueError, OSError) as e:
            raise BadSample(f"{where}: {e.__class__.__name__}: {e}") from e

    def __getitem__(self, i: int) -> dict:
        seed = sample_seed(self.seed, self.epoch, i)
        with seeded_random(seed):
            sample, skipped = robust_fetch(self._load_named, i, len(self), self.training, self.guard)
        sample["skipped"] = skipped
        if self.sample_carries_seed:
            sample["seed"] = seed
        return sample


__all__ = ["AnnotationDataset"]
