"""Progress bars for people: one rule for every stage's tqdm bars.

A bar draws on stderr; ``main=False`` (a rank other than 0) draws nothing. tqdm's own environment
variables act on every bar (``TQDM_DISABLE=1`` turns them off, ``TQDM_MININTERVAL`` sets the
redraw period). When stderr is not a terminal (a log file, a Slurm job's output, an experiment
step's log) a bar redraws at most every ``LOG_MININTERVAL_S`` seconds instead of several times a
second, so a long run's log holds progress lines, not megabytes of them.
"""

from __future__ import annotations

import os
import sys

from tqdm import tqdm

LOG_MININTERVAL_S = 30.0


def _truthy(value: str) -> bool:
    return value.strip().lower() not in ("", "0", "false", "no")


def bar(*, main: bool = True, **kwargs) -> tqdm:
    """``tqdm(**kwargs)`` on stderr under the rules above (an explicit ``disable`` or
    ``mininterval`` in ``kwargs`` wins)."""
    if not main or _truthy(os.environ.get("TQDM_DISABLE", "")):
        # tqdm reads its variables once, at import; this one is read per bar (tests, runners)
        kwargs["disable"] = True
    stream = kwargs.setdefault("file", sys.stderr)
    to_log = not (hasattr(stream, "isatty") and stream.isatty())
    if to_log and "TQDM_MININTERVAL" not in os.environ:
        kwargs.setdefault("mininterval", LOG_MININTERVAL_S)
    return tqdm(**kwargs)
