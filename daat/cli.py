"""``daat`` command line. Thin: parse, load config, call one stage function, print the artifact path
last. Heavy imports (torch, timm, transformers) happen inside the commands so ``--help`` is instant.
The options and error boundary every command shares are in ``cli_options.py``; the ``artifacts``
and ``experiment`` command groups have their own modules.
"""

from __future__ import annotations

import click

from daat import cli_artifacts, cli_experiment
from daat.cli_options import (
    CONFIG_OPTION,
    OUT_OPTION,
    SET_OPTION,
    fail_cleanly,
    load_config,
    print_result,
    writable,
)


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
@fail_cleanly
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
    cfg = load_config(configs, list(overrides) + extra)
    writable(out)
    from daat.pipeline.preprocess import run

    print_result(run(cfg, out).path)


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
@fail_cleanly
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
    cfg = load_config(configs, list(overrides) + extra)
    writable(out)
    from daat import dist
    from daat.train import standard_first
    from daat.train.loop import run

    with dist.session(cfg.device):  # one process group for a run:standard stand-in and this run
        art = run(standard_first.resolve(cfg, shards, out), shards, out)
    print_result(art.path)


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
@fail_cleanly
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
    writable(out)
    from daat.eval.evaluate import run

    print_result(run(run_dir, checkpoint, list(configs), list(overrides), out, shards).path)


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
@fail_cleanly
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

    print_result(run(run_dir, out, fmt, checkpoint))


@main.command()
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--out", default="report", show_default=True, type=click.Path(file_okay=False))
@fail_cleanly
def report(artifacts, out):
    """Table 1 and Figure 3 (markdown + PNG) over run and eval artifacts.

    \b
    Example:
      daat report artifacts/run-* artifacts/eval-* --out report/
    The report's markdown path is printed as the last line.
    """
    writable(out)
    from daat.eval.report import run

    print_result(run(list(artifacts), out))


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
@fail_cleanly
def quickstart(out, jobs):
    """All stages end to end on the built-in synthetic data, on a CPU, in minutes.

    \b
    Example:
      daat quickstart --out /tmp/qs
    The report's markdown path is printed as the last line.
    """
    writable(out)
    from daat.eval.quickstart import run

    print_result(run(out, jobs))


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
@fail_cleanly
def config_show(configs, overrides):
    """Print the resolved config as YAML (ε and α as '0.0157 (4/255)', which loads back).

    \b
    Example:
      daat config show --config pgd-at --set train.epochs=10
    """
    from daat.config import show

    click.echo(show(load_config(configs, overrides)), nl=False)


main.add_command(cli_artifacts.artifacts)
main.add_command(cli_experiment.experiment)

if __name__ == "__main__":
    main()
