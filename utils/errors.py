"""The end of a run that is no user error but is reported in one line (by :func:`utils.cli.cli_main`). Imports
nothing of ours."""
from __future__ import annotations

#: exit status of a user error: a wrong config, path or data, which a restart does not mend (argparse uses 2 too)
USER_ERROR = 2
#: exit status of a rank whose collective timed out (as coreutils ``timeout``)
COLLECTIVE_TIMEOUT_EXIT = 124


class ExitWithMessage(Exception):
    """An expected end of a run that is no user error, e.g. training stopped by a signal (``utils.trainer.
    TrainingStopped``) or a collective timeout (``utils.dist.CollectiveTimeout``): :func:`cli_main` prints
    ``prog: <message>`` on stderr (when ``report``; other ranks of a job stay silent) and exits with ``code``."""

    def __init__(self, message: str, code: int, report: bool = True):
        super().__init__(message)
        self.code, self.report = code, report
