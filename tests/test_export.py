"""``daat export``: the timm hub folder rebuilt by plain timm in a process without daat, the robust
torch.export file against ``daat.load_model``, byte-identical re-exports, and refusing a model that
plain timm cannot express."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import TINY_RUN
from torch import nn

import daat
from daat import config as config_mod
from daat import models
from daat.artifacts import create_or_open
from daat.cli import main
from daat.export import ExportError, export
from daat.train import checkpoint as ckpt


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the CI machine has 2 cores shared by everything
    yield
    torch.set_num_threads(before)


def images(n=5, size=32, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# -- timm folder -----------------------------------------------------------------------------
def test_timm_export_rebuilds_in_plain_timm_without_daat(tiny_run, tiny_shards, tmp_path):
    folder = export(tiny_run, tmp_path / "my-model")
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    x = images()
    torch.save(x, tmp_path / "x.pt")
    script = f"""
import json, sys, timm, torch
model = timm.create_model("local-dir:{folder}", pretrained=True).eval()
cfg = model.pretrained_cfg
x = torch.load("{tmp_path / "x.pt"}")
mean = torch.tensor(cfg["mean"]).view(1, -1, 1, 1)
std = torch.tensor(cfg["std"]).view(1, -1, 1, 1)
with torch.no_grad():
    torch.save(model((x - mean) / std), "{tmp_path / "logits.pt"}")
assert not [m for m in sys.modules if m == "daat" or m.startswith("daat.")], "daat was imported"
keys = ("input_size", "mean", "std", "interpolation", "crop_pct", "num_classes", "label_names")
print(json.dumps({{k: cfg[k] for k in keys}}))
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    cfg = json.loads(done.stdout.strip().splitlines()[-1])
    expected = daat.load_model(tiny_run)(x).detach()
    got = torch.load(tmp_path / "logits.pt")
    assert got.shape == (5, 10)
    assert (got - expected).abs().max().item() <= 1e-5
    model = daat.load_model(tiny_run)
    assert tuple(cfg["input_size"]) == (3, 32, 32) == model.input_size
    assert cfg["mean"] == pytest.approx(model.mean.flatten().tolist())
    assert cfg["std"] == pytest.approx(model.std.flatten().tolist())
    assert (cfg["interpolation"], cfg["crop_pct"], cfg["num_classes"]) == ("bicubic", 1.0, 10)
    assert cfg["label_names"] == tiny_shards.classes


def test_timm_config_carries_the_architecture_and_the_card_the_lineage(
    tiny_run, tiny_shards, tmp_path
):
    folder = export(tiny_run, tmp_path / "m")
    spec = json.loads((folder / "config.json").read_text())
    run_cfg = daat.load_run(tiny_run).config
    assert spec["architecture"] == run_cfg.model.name
    assert spec["model_args"] == {
        "img_size": 32,
        "patch_size": 8,
        "embed_dim": 32,
        "depth": 2,
        "num_heads": 2,
        "num_classes": 10,
        "init_values": 0.0,
    }  # 0: no LayerScale, whatever timm's default
    card = (folder / "README.md").read_text()
    from huggingface_hub import ModelCard  # the hub reads the front matter like this

    meta = ModelCard.load(folder / "README.md").data
    assert (meta.library_name, meta.pipeline_tag) == ("timm", "image-classification")
    assert "adversarial-robustness" in meta.tags
    run = daat.open_artifact(tiny_run)
    for fact in (
        run.id,
        run.manifest["key"],
        tiny_shards.id,
        tiny_shards.manifest["key"],
        "| depth model | oracle |",
        "attack:\n  eps:",
    ):
        assert fact in card, fact


def test_exporting_twice_gives_the_same_bytes(tiny_run, tmp_path):
    for fmt in ("timm", "robust"):
        first = files_of(export(tiny_run, tmp_path / f"a-{fmt}", fmt))
        second = files_of(export(tiny_run, tmp_path / f"b-{fmt}", fmt))
        again = files_of(export(tiny_run, tmp_path / f"a-{fmt}", fmt))  # replaces in place
        assert first == second == again, fmt


def test_export_refuses_a_folder_with_other_files(tiny_run, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="notes.txt"):
        export(tiny_run, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_cli_export_prints_the_folder(tiny_run, tmp_path):
    out = tmp_path / "cli-model"
    result = CliRunner().invoke(main, ["export", str(tiny_run), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == str(out)
    bad = CliRunner().invoke(main, ["export", str(out), "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "not an artifact" in bad.output


# -- robust file -----------------------------------------------------------------------------
def test_robust_export_equals_load_model_on_unit_images(tiny_run, tmp_path):
    folder = export(tiny_run, tmp_path / "robust", "robust")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "model.pt2"]
    plain = torch.export.load(folder / "model.pt2").module()
    model = daat.load_model(tiny_run)
    for n in (1, 5):  # the batch dimension is dynamic
        x = images(n, seed=n)
        assert (plain(x) - model(x)).abs().max().item() <= 1e-5
    assert (daat.load_model(folder)(images()) - model(images())).abs().max().item() <= 1e-5
    x = images().requires_grad_(True)  # attack libraries need input gradients
    plain(x).logsumexp(1).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


# -- models plain timm cannot express --------------------------------------------------------
def fabricate_run(root: Path, shards, model, cfg) -> Path:
    """A complete run artifact around ``model`` without training."""
    art = create_or_open(
        root, "run", {"fabricated": True}, config=config_mod.to_dict(cfg), lineage=[shards.id]
    )
    ckpt.save(
        art.path / "checkpoints" / "final.pt",
        {
            "model": model.state_dict(),
            "config": config_mod.to_dict(cfg),
            "num_classes": shards.num_classes,
            "step": 0,
            "epoch": 0,
        },
    )
    art.record_file("checkpoints/final.pt")
    art.extra["shards_dir"] = str(shards.path)
    art.mark_complete()
    return art.path


class StemViT(models.DaatViT):
    """A DaatViT with a learned 1x1 conv stem before the ViT (weights outside ``vit``)."""

    def __init__(self, vit, aggregate="mean"):
        super().__init__(vit, aggregate)
        self.stem = nn.Conv2d(3, 3, 1)

    def normalize(self, x):
        return super().normalize(self.stem(x))


def with_wider_patch_proj(cfg, num_classes):
    """A stem inside the ViT: patch_embed.proj becomes a conv + GELU (keys timm does not know)."""
    vit = build_plain(cfg, num_classes).vit
    vit.patch_embed.proj = nn.Sequential(vit.patch_embed.proj, nn.GELU())
    return models.DaatViT(vit)


def with_relu_mlps(cfg, num_classes):
    """Same keys as plain timm, another function: the MLPs use ReLU instead of GELU."""
    model = build_plain(cfg, num_classes)
    for block in model.vit.blocks:
        block.mlp.act = nn.ReLU()
    return model


build_plain = models.build_student


@pytest.mark.parametrize(
    "builder, why, stem",
    [
        (lambda cfg, n: StemViT(build_plain(cfg, n).vit), "weights outside the timm ViT", "patch"),
        (with_wider_patch_proj, "timm cannot rebuild it", "patch"),
        (with_relu_mlps, "different logits", "patch"),
        (lambda cfg, n: build_plain(cfg, n), "convolutional stem (model.stem=conv)", "conv"),
    ],
)
def test_export_refuses_what_plain_timm_cannot_express(
    tiny_shards, tmp_path, monkeypatch, builder, why, stem
):
    cfg = config_mod.load(["synthetic"], TINY_RUN + [f"model.stem={stem}"])
    monkeypatch.setattr(models, "build_student", builder)
    model = builder(cfg.model, tiny_shards.num_classes)
    run_dir = fabricate_run(tmp_path / "runs", tiny_shards, model, cfg)
    with pytest.raises(ExportError, match="cannot be expressed as a plain timm model") as err:
        export(run_dir, tmp_path / "m")
    assert why in str(err.value) and "--format robust" in str(err.value)
    assert not (tmp_path / "m").exists()
    # the robust format takes any model: it is the model itself
    robust = torch.export.load(export(run_dir, tmp_path / "r", "robust") / "model.pt2").module()
    x = images()
    assert (robust(x) - daat.load_model(run_dir)(x)).abs().max().item() <= 1e-5
