"""``daat experiment``: the command group of ``daat.eval.experiment``, thin like every command
(parse, call one function, print the artifact path last). It shares ``--out`` and the error
boundary with the other commands through ``daat/cli_options.py``.
"""

from __future__ import annotations

import click

from daat.cli_options import OUT_OPTION, fail_cleanly, print_result, writable


class _SpecGroup(click.Group):
    """``daat experiment SPEC`` runs SPEC; ``daat experiment collect|cell SPEC ...`` are
    subcommands (a first argument that names no subcommand is taken as the spec)."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_SpecGroup)
def experiment():
    """A grid of runs (cards x methods x seeds x grid values) with statistics over seeds.

    \b
    Example:
      daat experiment experiments/table1-synthetic.yaml --jobs 2
      daat experiment experiments/table1-synthetic.yaml --print-commands > cells.sh
      daat experiment collect experiments/table1-synthetic.yaml
    `daat experiment SPEC` preprocesses each card once, trains and evaluates every cell
    (reusing every artifact that exists: rerun it after an interruption), and writes an
    experiment artifact (results.csv, report.md, figures); its path is printed last.
    """


@experiment.command("run")
@click.argument("spec", type=click.Path(exists=True, dir_okay=False))
@OUT_OPTION
@click.option(
    "--jobs",
    default=1,
    show_default=True,
    type=click.IntRange(1),
    help="Cells run at once; the cores are split between them.",
)
@click.option(
    "--print-commands",
    is_flag=True,
    help="Print one self-contained command per cell (for a cluster scheduler) and stop.",
)
@fail_cleanly
def experiment_run(spec, out, jobs, print_commands):
    """Run an experiment spec (also reachable as `daat experiment SPEC`).

    \b
    Example:
      daat experiment experiments/table1-synthetic.yaml --jobs 2 --out artifacts
    """
    from daat.eval import experiment as exp
    from daat.eval.experiment_spec import load_spec

    loaded = load_spec(spec)
    steps = exp.plan(loaded)
    if print_commands:
        click.echo("\n".join(exp.commands(loaded, steps, out)))
        return
    writable(out)
    from daat.eval import experiment_report
    from daat.eval import jobs as jobs_mod

    jobs_mod.run_steps(loaded, steps, out, jobs, jobs_mod.threads_per_job(jobs))
    print_result(experiment_report.collect(loaded, steps, out).path)


@experiment.command("collect")
@click.argument("spec", type=click.Path(exists=True, dir_okay=False))
@OUT_OPTION
@fail_cleanly
def experiment_collect(spec, out):
    """Aggregate whatever cells of SPEC have finished into its experiment artifact.

    \b
    Example:
      daat experiment collect experiments/table1-synthetic.yaml --out artifacts
    The artifact is marked complete once every cell is evaluated; its path is printed last.
    """
    from daat.eval import experiment as exp
    from daat.eval import experiment_report
    from daat.eval.experiment_spec import load_spec

    loaded = load_spec(spec)
    print_result(experiment_report.collect(loaded, exp.plan(loaded), out).path)


@experiment.command("cell")
@click.argument("spec", type=click.Path(exists=True, dir_okay=False))
@click.argument("step")
@OUT_OPTION
@fail_cleanly
def experiment_cell(spec, step, out):
    """Run one step of SPEC: a cell name (train, then evaluate), or preprocess:CARD,
    train:CELL, eval:CELL. The steps it needs must have finished.

    \b
    Example:
      daat experiment cell experiments/table1-synthetic.yaml synthetic/daat/seed0
    The artifact it made is printed last.
    """
    writable(out)
    from daat.eval import experiment as exp
    from daat.eval.experiment_spec import load_spec

    loaded = load_spec(spec)
    print_result(exp.run_step(loaded, exp.plan(loaded), step, out).path)
