"""This process's default for reading checkpoint files: tensors and plain containers only (``weights_only=True``),
unless ``--trusted-checkpoint`` made full unpickling the default. Imports nothing of ours."""
from __future__ import annotations

_TRUSTED = False  # this process's default for checkpoint reads (--trusted-checkpoint)


def trust_checkpoints(trusted: bool = True) -> None:
    """Make ``trusted`` the default of every checkpoint read in this process (``--trusted-checkpoint``): full
    unpickling, which can run code a file carries; only for files you trust. Reads passed ``trusted=`` keep it."""
    global _TRUSTED
    _TRUSTED = bool(trusted)


def is_trusted(trusted: bool | None = None) -> bool:
    """``trusted`` if given, else this process's default (:func:`trust_checkpoints`; False unless set)."""
    return _TRUSTED if trusted is None else bool(trusted)
