"""Output files written whole or not at all, and write failures that name the file.

Every file the project writes for a user (step checkpoints, final weights, the resolved config, results) goes
through :func:`atomic_write`: into a hidden temporary file beside the target, flushed to disk, then renamed over
the target, so a crash, a stop or a full disk never leaves a partial file or breaks the previous version. An
:class:`OSError` on the way (no space left, no permission, a read-only file system) comes out as an
:class:`OutputError` naming the target, with the temporary file removed. This module imports nothing of ours.
"""
from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable
from pathlib import Path

#: errno values that mean "this place cannot take the output" (not a bug of ours)
OUTPUT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR,
                           errno.EEXIST, errno.EISDIR})


class OutputError(OSError):
    """Writing an output file or folder failed; ``filename`` is the target, ``errno`` / ``strerror`` the cause."""

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror}"


def output_error(error: OSError, target: Path) -> OSError:
    """``error`` as an :class:`OutputError` naming ``target`` when it means the place cannot take the output;
    other errors unchanged."""
    if isinstance(error, OutputError) or error.errno not in OUTPUT_ERRNOS:
        return error
    return OutputError(error.errno, error.strerror or os.strerror(error.errno), str(target))


def temp_path(target: str | os.PathLike) -> Path:
    """The temporary file :func:`atomic_write` writes before renaming it to ``target``."""
    target = Path(target)
    return target.with_name(f".{target.name}.tmp")


def _remove(path: Path) -> None:
    """Remove ``path`` if it exists (a link is removed, not its target); a folder that never existed is fine."""
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        path.unlink()


def atomic_write(target: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` writes the content to ``tmp`` (a path beside ``target``); it is then synced and renamed to
    ``target`` (its folder is made first). On any failure the temporary file is removed and the previous
    ``target`` stays as it was; an :class:`OSError` that means no space / no permission / read-only comes out
    as an :class:`OutputError` naming ``target``."""
    target = Path(target)
    tmp = temp_path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as e:
        _remove(tmp)
        raise output_error(e, target) from e
    except BaseException:  # a stop mid-write
        _remove(tmp)
        raise
    return target

