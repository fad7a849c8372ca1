"""What every ``daat`` command shares: the ``--config``/``--set``/``--out`` options, the error
boundary (``fail_cleanly``: one line, exit 2), the ``--out`` check and the last-line result. The
command modules (``cli.py``, ``cli_artifacts.py``, ``cli_experiment.py``) import it; it imports
nothing heavy, so ``daat --help`` stays instant.
"""

from __future__ import annotations

import sys

import click

CONFIG_OPTION = click.option(
    "--config",
    "configs",
    multiple=True,
    metavar="PRESET_OR_YAML",
    help="Preset name (see `daat config presets`) or YAML file; repeatable, later ones win.",
)
SET_OPTION = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override one config key, e.g. --set train.epochs=5 --set attack.eps=4/255; repeatable.",
)
OUT_OPTION = click.option(
    "--out",
    default="artifacts",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Directory that holds artifacts.",
)


def print_result(path) -> None:
    """The artifact path, last line of stdout, once: under torchrun only rank 0 prints it."""
    import os

    if os.environ.get("RANK", "0") == "0":
        click.echo(str(path))


def load_config(configs, overrides, base=None):
    """The resolved config; a ConfigError reaches ``fail_cleanly``, which prints it as one line."""
    from daat import config as config_mod

    return config_mod.load(configs, overrides, base=base)


def fail_cleanly(fn):
    """Print the errors a user can fix as one clear line and exit with code 2: the project's own
    boundary errors, storage errors (full disk, read-only or forbidden --out) and errors raised in
    a data-loader worker (whose traceback would otherwise fill the screen)."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from daat.errors import DaatError, from_worker, one_line, storage_problem

        try:
            return fn(*args, **kwargs)
        except DaatError as e:
            message = one_line(e)
        except OSError as e:
            message = storage_problem(e, kwargs.get("out"))
            if message is None:
                raise
        except Exception as e:
            if not from_worker(e):
                raise
            message = (
                f"{type(e).__name__}: {one_line(e)}; rerun with --set data.num_workers=0 "
                f"for the full traceback"
            )
        # A progress bar a failed stage left open ends without a newline on a terminal.
        lead = "\n" if sys.stderr.isatty() else ""
        click.echo(f"{lead}error: {message}", err=True)
        sys.exit(2)

    return wrapper


def writable(out: str) -> None:
    """Fail at once, naming the directory, when ``--out`` cannot be created or written."""
    import tempfile
    from pathlib import Path

    from daat.errors import DaatError

    try:
        Path(out).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".daat-write-test-"):
            pass
    except OSError as e:
        raise DaatError(
            f"--out {out} is not writable ({e.strerror}); choose a directory you can write to"
        ) from e
