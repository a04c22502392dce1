"""Command-line entry: a user error (bad config key, missing config / data / checkpoint file) ends the script
with one line on stderr that names the key or file and says what to do, not a traceback.

Every script ends with ``cli_main(main)`` instead of ``main()``; ``main`` itself still raises (tests call it).
"""
from __future__ import annotations

import errno
import gc
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from utils.atomic import OutputError
from utils.config import ConfigError
from utils.errors import USER_ERROR, ExitWithMessage


def _hint(error: BaseException) -> str:
    """What to do about ``error``, appended to its message."""
    from dataset.robust import TooManyBadSamples
    text = str(error)
    if isinstance(error, OutputError):
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            return ("free disk space or point --output_dir elsewhere; a training run continues from its last step "
                    "checkpoint with --resume latest")
        return "choose an --output_dir this user can write to (or fix that folder's permissions)"
    if isinstance(error, TooManyBadSamples):
        return ("fix or remove the broken records (each is named in the log above), or raise "
                "data.max_bad_fraction / data.bad_window")
    if isinstance(error, ConfigError):
        if "unknown config key" in text:
            return "fix the key (every key, its default and meaning: docs/configuration.md)"
        if "config file" in text and "not found" in text:
            return "check the --config path (configs/ holds the shipped ones)"
        if "tokenizer" in text:
            return "point it to a local tokenizer folder or vocab.txt (README: official checkpoints)"
        if "pretraining data" in text:
            return "docs/data_preparation.md says how to prepare data"
        return "fix the config file or --override (docs/configuration.md)"
    if "record has no field" in text:
        return "add that field to the records or convert the file (each format's fields: docs/data_preparation.md)"
    if "corrupt or unreadable image" in text or "not valid base64" in text:
        return "re-encode or remove that record (training skips and counts broken records, evaluation stops)"
    if "annotation file" in text or "webdataset shards" in text:
        return "check the data.* paths in the config (docs/data_preparation.md)"
    if "tokenizer" in text or "name_or_path" in text:
        return "set model.text.tokenizer / model.text.name_or_path to a local folder or vocab.txt"
    if "checkpoint" in text.lower() or "--resume" in text:
        return "check the --checkpoint / --resume path (README: official checkpoints)"
    return "check the path"


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean the user's input is wrong (reported in one line)."""
    from dataset.io import BadSample
    from dataset.robust import TooManyBadSamples
    from models.checkpoint import CheckpointError
    return ConfigError, CheckpointError, FileNotFoundError, BadSample, OutputError, TooManyBadSamples


def error_message(error: BaseException) -> str:
    """The message of ``error`` on one line. An error raised in a DataLoader worker comes back with the worker's
    traceback in its message ("Caught X in DataLoader worker process N. Original Traceback ..."): its last line
    (the original message) is kept, with the worker named."""
    text = str(error)
    if "Original Traceback" in text:
        worker = text.split(".", 1)[0].removeprefix(f"Caught {type(error).__name__} ").strip()
        last = [line for line in text.splitlines() if line.strip()][-1]
        prefix = f"{type(error).__module__}.{type(error).__qualname__}:"
        text = f"{last.removeprefix(prefix).strip()} ({worker})"
    return " ".join(text.split()) or type(error).__name__


def report_user_error(prog: str, error: BaseException) -> str:
    """The one line printed for ``error``: ``prog: error: <message>; <what to do>``."""
    return f"{prog}: error: {error_message(error)}; {_hint(error)}"


def cli_main(main: Callable[..., Any], prog: str | None = None) -> None:
    """Run ``main()``; on a user error print one line (see :func:`report_user_error`) and exit with status 2; on
    an :class:`ExitWithMessage` (a signal stopped training: 128 + the signal's number, 143 for SIGTERM, 130 for
    SIGINT; a collective timeout: 124) print its one line and exit with its code."""
    prog = prog or Path(sys.argv[0]).name
    try:
        main()
        return
    except user_errors() as e:
        print(report_user_error(prog, e), file=sys.stderr)
        code = USER_ERROR
    except ExitWithMessage as e:
        if e.report:
            print(f"{prog}: {e}", file=sys.stderr, flush=True)
        code = e.code
    # the error is gone now, and with it its traceback's frames: what they held (DataLoader iterators) is
    # finalised here, so loader workers are shut down by their loader, not terminated at interpreter exit
    # (where torch reports their SIGTERM death as a failure, with a traceback)
    gc.collect()
    raise SystemExit(code)
