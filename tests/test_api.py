"""The public Python API (``daat.load_model`` & co.) and the README's inference example, run
verbatim from README.md."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_export import images

import daat
from daat import saliency
from daat.errors import DaatError
from daat.export import export

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def readme_python_example() -> str:
    """The README's python block that calls daat.load_model (the five-line inference example)."""
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    found = [b for b in blocks if "daat.load_model(" in b]
    assert len(found) == 1, "README.md should have exactly one daat.load_model example"
    return found[0]


def test_readme_inference_example_runs_verbatim(tiny_run, tmp_path):
    code = readme_python_example()
    assert len(code.strip().splitlines()) == 5
    folder = re.search(r'daat\.load_model\("([^"]+)"', code).group(1)
    export(tiny_run, tmp_path / folder)  # the folder the example names, in its working dir
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    predicted, shape = done.stdout.strip().splitlines()
    assert re.fullmatch(r"tensor\(\[(\d, ){7}\d\]\)", predicted), predicted
    assert shape == "torch.Size([8, 4, 4])"


def test_import_daat_is_light_and_every_name_is_documented():
    code = (
        "import sys, daat\n"
        "assert 'torch' not in sys.modules, 'import daat imported torch'\n"
        "print(daat.__all__)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for name in ("load_model", "load_run", "open_artifact", "depth_saliency", "attention_map"):
        assert name in daat.__all__
        doc = getattr(daat, name).__doc__
        assert doc and len(doc.split()) > 10, name
    with pytest.raises(AttributeError):
        daat.not_a_function  # noqa: B018


def test_load_model_gives_the_same_model_from_a_run_and_its_export(tiny_run, tmp_path):
    from_run = daat.load_model(tiny_run)
    from_export = daat.load_model(export(tiny_run, tmp_path / "m"))
    x = images()
    assert (from_run(x) - from_export(x)).abs().max().item() <= 1e-5
    assert from_export.input_size == (3, 32, 32) and not from_export.training
    with pytest.raises(DaatError, match="neither a run directory"):
        daat.load_model(tmp_path)


def test_attention_map_is_the_models_tap_on_the_patch_grid(tiny_run):
    model = daat.load_model(tiny_run)
    x = images()
    a = daat.attention_map(model, x)
    assert a.shape == (5, 4, 4)
    assert torch.allclose(a.sum((1, 2)), torch.ones(5), atol=1e-5)
    with torch.no_grad():
        tapped = model.forward_tapped(x, need_attention=True).attention
    assert torch.equal(a.flatten(1), tapped)
    with pytest.raises(DaatError, match="no attention tap"):
        daat.attention_map(torch.nn.Linear(2, 2), x)


def test_load_run_reads_config_metrics_and_checkpoints(tiny_run):
    run = daat.load_run(tiny_run)
    lines = (tiny_run / "metrics.jsonl").read_text().splitlines()
    assert run.metrics == [json.loads(line) for line in lines]
    assert [m["kind"] for m in run.metrics] == ["step", "step", "epoch"]
    assert run.steps("epoch") == run.metrics[-1:]
    assert [p.name for p in run.checkpoints] == ["epoch-0001.pt", "final.pt"]
    assert run.complete and run.config.model.img_size == 32 and run.config.train.epochs == 1
    assert run.final_metrics["val_clean_acc"] == run.metrics[-1]["val_clean_acc"]
    art = daat.open_artifact(tiny_run)
    assert art.id == run.id and art.kind == "run" and run.lineage == art.manifest["lineage"]


def test_depth_saliency_is_eq1_on_the_patch_grid(tiny_run):
    depth = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    g = daat.depth_saliency(depth, (4, 4))
    assert g.shape == (3, 4, 4)
    assert torch.equal(g.flatten(1), saliency.depth_saliency(depth, (4, 4)))
    assert torch.equal(daat.depth_saliency(depth[0], 4), g[0])
    assert torch.equal(daat.depth_saliency(depth, daat.load_model(tiny_run)), g)
    with pytest.raises(DaatError, match="depth maps"):
        daat.depth_saliency(torch.rand(2, 3, 32, 32), 4)


def test_depth_saliency_runs_a_depth_model_on_images(tiny_dpt_dir):
    from daat.depth import load_depth_model

    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    g = daat.depth_saliency(x, 8, depth_model=str(tiny_dpt_dir))
    with torch.no_grad():
        expected = saliency.depth_saliency(load_depth_model(str(tiny_dpt_dir), "cpu")(x), (8, 8))
    assert torch.allclose(g.flatten(1), expected, atol=1e-6)
