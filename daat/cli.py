"""``daat`` command line. Thin: parse, load config, call one stage function, print the artifact path
last. Heavy imports (torch, timm, transformers) happen inside the commands so ``--help`` is instant.
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


def _print_result(path) -> None:
    """The artifact path, last line of stdout, once: under torchrun only rank 0 prints it."""
    import os

    if os.environ.get("RANK", "0") == "0":
        click.echo(str(path))


def _load_config(configs, overrides, base=None):
    """The resolved config; a ConfigError reaches ``_fail_cleanly``, which prints it as one line."""
    from daat import config as config_mod

    return config_mod.load(configs, overrides, base=base)


def _fail_cleanly(fn):
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


def _writable(out: str) -> None:
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


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="daat")
def main() -> None:
    """Depth-Aware Adversarial Training: preprocess → train → evaluate → report.

    \b
    Example (the whole pipeline on the built-in synthetic data, CPU, minutes):
      daat quickstart
    \b
    Example (stage by stage):
      S=$(daat preprocess --card data_cards/synthetic.yaml --depth oracle | tail -n1)
      R=$(daat train --config daat --config synthetic --shards $S --use-cached-depth | tail -n1)
      E=$(daat evaluate --run $R | tail -n1)
      daat report $R $E --out report/
    """


@main.command()
@click.option(
    "--card",
    required=True,
    metavar="CARD",
    help="Data card: a name (synthetic, imagenet100), a YAML file, or an ImageFolder dir.",
)
@click.option(
    "--root",
    type=click.Path(exists=True, file_okay=False),
    help="Directory holding the card's images (not needed for synthetic).",
)
@click.option(
    "--depth",
    "depth_model",
    metavar="MODEL",
    help="Depth model: oracle, a hub id (Intel/dpt-hybrid-midas) or a local directory.",
)
@OUT_OPTION
@CONFIG_OPTION
@SET_OPTION
@_fail_cleanly
def preprocess(card, root, depth_model, out, configs, overrides):
    """Stage 1: run a frozen depth model once over clean images; write shards + saliency.

    \b
    Example:
      daat preprocess --card data_cards/synthetic.yaml --depth oracle
      daat preprocess --card imagenet100 --root /data/imagenet100 --depth Intel/dpt-hybrid-midas \\
          --config imagenet100
      torchrun --nproc_per_node 8 -m daat.cli preprocess --card imagenet100 --root /data/in100 \\
          --depth Intel/dpt-hybrid-midas --config imagenet100
    The artifact directory is printed as the last line.
    """
    extra = [f"data.card={card}"]
    if root:
        extra.append(f"data.root={root}")
    if depth_model:
        extra.append(f"depth.model={depth_model}")
    cfg = _load_config(configs, list(overrides) + extra)
    _writable(out)
    from daat.pipeline.preprocess import run

    _print_result(run(cfg, out).path)


@main.command()
@click.option(
    "--shards",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="Shard artifact made by `daat preprocess`.",
)
@click.option(
    "--use-cached-depth",
    is_flag=True,
    help="Force depth.target=cached: G(x) from the shards, the depth model never loads.",
)
@click.option(
    "--depth",
    "depth_model",
    metavar="MODEL",
    help="Depth model for online G(x_adv) (default: the one the shards were made with; "
    "another needs --set depth.allow_other_model=true).",
)
@OUT_OPTION
@CONFIG_OPTION
@SET_OPTION
@_fail_cleanly
def train(shards, use_cached_depth, depth_model, out, configs, overrides):
    """Stage 2: PGD adversarial training with depth-attention and DINOv2 feature alignment.

    \b
    Example:
      daat train --config daat --config synthetic --shards $S --use-cached-depth
      torchrun --nproc_per_node 8 -m daat.cli train --config daat --shards $S
    Running the same command again resumes from the run's latest checkpoint.
    The run directory is printed as the last line.
    """
    extra = ["depth.target=cached"] if use_cached_depth else []
    if depth_model:
        extra.append(f"depth.model={depth_model}")
    cfg = _load_config(configs, list(overrides) + extra)
    _writable(out)
    from daat import dist
    from daat.train import standard_first
    from daat.train.loop import run

    with dist.session(cfg.device):  # one process group for a run:standard stand-in and this run
        art = run(standard_first.resolve(cfg, shards, out), shards, out)
    _print_result(art.path)


@main.command()
@click.option(
    "--run",
    "--run-dir",
    "run_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="Run artifact made by `daat train` (--run-dir under torchrun, whose own parser "
    "takes --run as its --run-path).",
)
@click.option(
    "--checkpoint",
    type=click.Path(exists=True, dir_okay=False),
    help="Checkpoint file inside the run (default: the final/latest one).",
)
@click.option(
    "--shards",
    type=click.Path(exists=True, file_okay=False),
    help="Evaluate on this shard artifact's val split instead of the run's own "
    "(same classes; recorded in the evaluation's manifest).",
)
@OUT_OPTION
@CONFIG_OPTION
@SET_OPTION
@_fail_cleanly
def evaluate(run_dir, checkpoint, shards, out, configs, overrides):
    """Stage 3: clean, PGD-10, PGD-100 over ε, AutoAttack; attention and Grad-CAM under attack.

    \b
    Example:
      daat evaluate --run $R
      daat evaluate --run $R --set eval.n_autoattack=5000 \
          --set eval.depth_model=Intel/dpt-hybrid-midas
      torchrun --nproc_per_node 8 -m daat.cli evaluate --run-dir $R
    The run's own config is the base; --config/--set change eval settings on top.
    The run's own shards are used (refused if they are not the ones it was trained on) unless
    --shards names others on purpose. The evaluation directory is printed as the last line.
    """
    _writable(out)
    from daat.eval.evaluate import run

    _print_result(run(run_dir, checkpoint, list(configs), list(overrides), out, shards).path)


@main.command()
@click.argument("run_dir", metavar="RUN", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder to write (replaced if it holds a previous export).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["timm", "robust"]),
    default="timm",
    show_default=True,
    help="timm: hub folder (model.safetensors + config.json + model card); robust: "
    "torch.export file taking [0,1] images, normalisation included.",
)
@click.option(
    "--checkpoint",
    type=click.Path(exists=True, dir_okay=False),
    help="Checkpoint file inside the run (default: checkpoints/final.pt).",
)
@_fail_cleanly
def export(run_dir, out, fmt, checkpoint):
    """Export a trained run's model for timm / the Hugging Face hub, or for attack libraries.

    \b
    Example:
      daat export $R --out my-model
      python -c 'import timm; timm.create_model("local-dir:my-model", pretrained=True)'
      daat export $R --out my-model-robust --format robust
    The same run exported twice gives the same bytes. The folder is printed as the last line.
    """
    from daat.export import export as run

    _print_result(run(run_dir, out, fmt, checkpoint))


@main.command()
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--out", default="report", show_default=True, type=click.Path(file_okay=False))
@_fail_cleanly
def report(artifacts, out):
    """Table 1 and Figure 3 (markdown + PNG) over run and eval artifacts.

    \b
    Example:
      daat report artifacts/run-* artifacts/eval-* --out report/
    The report's markdown path is printed as the last line.
    """
    _writable(out)
    from daat.eval.report import run

    _print_result(run(list(artifacts), out))


@main.command()
@click.option(
    "--out", default="quickstart_out", show_default=True, type=click.Path(file_okay=False)
)
@click.option(
    "--jobs",
    type=click.IntRange(1),
    default=None,
    help="Steps run at once (default: 2 when 2+ cores are free, else 1).",
)
@_fail_cleanly
def quickstart(out, jobs):
    """All stages end to end on the built-in synthetic data, on a CPU, in minutes.

    \b
    Example:
      daat quickstart --out /tmp/qs
    The report's markdown path is printed as the last line.
    """
    _writable(out)
    from daat.eval.quickstart import run

    _print_result(run(out, jobs))


@main.group()
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
@_fail_cleanly
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
@_fail_cleanly
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


@main.group("config")
def config_group():
    """Inspect presets and resolved configs.

    \b
    Example:
      daat config presets
      daat config show --config daat --config synthetic --set loss.lam=0.05
    """


@config_group.command("presets")
def config_presets():
    """List the built-in presets.

    \b
    Example:
      daat config presets
    """
    from daat.config import preset_names

    for name in preset_names():
        click.echo(name)


@config_group.command("show")
@CONFIG_OPTION
@SET_OPTION
@_fail_cleanly
def config_show(configs, overrides):
    """Print the resolved config as YAML (ε and α as '0.0157 (4/255)', which loads back).

    \b
    Example:
      daat config show --config pgd-at --set train.epochs=10
    """
    from daat.config import show

    click.echo(show(_load_config(configs, overrides)), nl=False)


from daat import cli_experiment  # noqa: E402 (built with the helpers above)

main.add_command(cli_experiment.group(OUT_OPTION, _fail_cleanly, _print_result, _writable))

if __name__ == "__main__":
    main()
