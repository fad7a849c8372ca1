"""``daat artifacts``: list, show, verify and remove artifacts. Thin like every command: the
work is in ``daat/artifacts.py`` (the manifest) and ``daat/artifact_admin.py`` (descriptions and
removal plans).
"""

from __future__ import annotations

import sys

import click

from daat.cli_options import fail_cleanly


@click.group()
def artifacts():
    """List, show, verify and remove artifacts.

    \b
    Example:
      daat artifacts list
      daat artifacts verify artifacts/shards-0123456789abcdef
      daat artifacts gc artifacts/            # dry run: what would go, and why
      daat artifacts gc artifacts/ --yes      # remove it
    """


@artifacts.command("list")
@click.argument("directory", default="artifacts", type=click.Path(file_okay=False))
def artifacts_list(directory):
    """One line per artifact under DIRECTORY: id, status, date, what it holds, lineage.

    \b
    Shards: samples per split, depth model, card. Runs: preset, seed, epochs done / total,
    the last training-time clean and PGD accuracy. Evals: attacks done, accuracies.
    Example:
      daat artifacts list artifacts/
    """
    from daat.artifact_admin import describe
    from daat.artifacts import list_artifacts

    for art in list_artifacts(directory):
        click.echo(describe(art))


def _carry_out(plans, yes: bool, all_or_nothing: bool) -> None:
    """Print each removal plan; remove only with --yes (and, for rm, only if nothing was refused).
    Exit 1 when rm refused a target."""
    from daat.artifact_admin import human_bytes, remove

    blocked = all_or_nothing and any(p.refused for p in plans)
    act = yes and not blocked
    for plan in plans:
        for path, why in plan.refused:
            click.echo(f"keeping {path}: {why}", err=True)
        if not act:
            for item in plan.remove:
                click.echo(f"would remove {item.path} ({human_bytes(item.bytes)}): {item.reason}")
            continue
        before = len(plan.refused)
        for path in remove(plan):
            click.echo(f"removed {path}")
        for path, why in plan.refused[before:]:
            click.echo(f"keeping {path}: {why}", err=True)
    if blocked:
        click.echo("error: nothing removed (see the lines above)", err=True)
        sys.exit(1)
    if not act:
        count, total = sum(len(p.remove) for p in plans), sum(p.total_bytes for p in plans)
        click.echo(
            f"dry run: nothing removed; add --yes to remove {count} item(s), {human_bytes(total)}"
        )


@artifacts.command("rm")
@click.argument("targets", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--yes", is_flag=True, help="Really remove (default: dry run, print only).")
@fail_cleanly
def artifacts_rm(targets, yes):
    """Remove the named artifact directories (dry run unless --yes).

    \b
    Refused, and nothing removed: a path that is not an artifact directory, an artifact that
    another one (which stays) names in its lineage, one in use.
    Example:
      daat artifacts rm artifacts/eval-0123456789abcdef --yes
    """
    from daat.artifact_admin import plan_rm

    _carry_out(plan_rm(list(targets)), yes, all_or_nothing=True)


@artifacts.command("gc")
@click.argument("directory", default="artifacts", type=click.Path(file_okay=False))
@click.option(
    "--keep",
    multiple=True,
    metavar="ARTIFACT",
    help="Keep only these (and what their lineage names); repeatable.",
)
@click.option("--yes", is_flag=True, help="Really remove (default: dry run, print only).")
@fail_cleanly
def artifacts_gc(directory, keep, yes):
    """Remove unfinished or unwanted artifacts under DIRECTORY (dry run unless --yes).

    \b
    Without --keep: incomplete artifacts that no complete one names in its lineage.
    With --keep: every artifact neither kept nor named (directly or not) by a kept one.
    Never removes an artifact in use, or one a kept artifact's lineage names.
    Example:
      daat artifacts gc artifacts/
      daat artifacts gc artifacts/ --keep eval-0123456789abcdef --yes
    """
    from daat.artifact_admin import plan_gc

    _carry_out([plan_gc(directory, list(keep))], yes, all_or_nothing=False)


@artifacts.command("show")
@click.argument("artifact", type=click.Path(exists=True, file_okay=False))
def artifacts_show(artifact):
    """Print an artifact's manifest.

    \b
    Example:
      daat artifacts show artifacts/shards-0123456789abcdef
    """
    import json

    from daat.artifacts import ArtifactError, open_artifact

    try:
        click.echo(json.dumps(open_artifact(artifact).manifest, indent=2))
    except ArtifactError as e:
        raise click.ClickException(str(e)) from e


@artifacts.command("verify")
@click.argument("artifact", type=click.Path(exists=True, file_okay=False))
def artifacts_verify(artifact):
    """Check the manifest (its digest, file entries inside the artifact; for shards, that its
    facts agree) and re-hash every file; exit 1 naming each problem.

    \b
    Example:
      daat artifacts verify artifacts/shards-0123456789abcdef
    """
    from daat.artifacts import ArtifactError, open_artifact, verify
    from daat.errors import DaatError

    try:
        problems = verify(artifact)
    except ArtifactError as e:
        raise click.ClickException(str(e)) from e
    if not problems and open_artifact(artifact).kind == "shards":
        from daat.pipeline.shards import open_shards

        try:
            open_shards(artifact)
        except DaatError as e:
            problems.append(str(e))
    for line in problems:
        click.echo(f"FAIL {line}", err=True)
    if problems:
        sys.exit(1)
    click.echo(f"OK {artifact}")
