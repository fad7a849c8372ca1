"""``make gpu-check``: its dry run end to end on CPU, its refusal without CUDA, the offline wheel
folder, the wheel slimming and the pytest count parser."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_check

REPO = Path(__file__).resolve().parents[1]
SCRIPT = str(REPO / "benchmarks" / "gpu_check.py")


def _run(*args, timeout=240):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, SCRIPT, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_dry_run_runs_every_step_at_toy_size(tmp_path):
    """What ``make gpu-check DRY_RUN=1`` runs (CI keeps the GPU script working this way)."""
    # the budget only guards against a machine shared with much other work; CI takes ~1 minute
    proc = _run("--dry-run", "--budget-s", "1200", "--out", str(tmp_path), timeout=1300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == json.loads((tmp_path / "gpu_check.json").read_text())
    steps = result["steps"]
    assert list(steps) == ["env", "versions", "cuda_tests", "bench", "train", "compile", "torchrun"]
    assert not any(
        str(v).startswith(("FAILED", "skipped:")) for k, v in steps.items() if k != "torchrun"
    )
    assert result["cuda_tests"]["cuda_paths_on_cpu"]["collected"] >= 8
    assert result["bench"]["mode"] == "tiny" and "daat_cached_over_pgdat" in result["bench"]
    train = result["train"]
    assert train["steps_done"] == train["steps_planned"] == 4
    assert all(v > 0 for v in train["img_per_s_by_interval"])
    assert result["train_preprocess"]["images"] == 200  # 100 wnid folders x (1 train + 1 val)
    figure = result["figures"]["vit_b14_224_pgdat_img_per_s"]
    assert figure["goal"] == ">= 400" and figure["met"] is False  # no ViT-B/14 in a dry run
    assert (tmp_path / "gpu_check.log").stat().st_size > 0
    assert (tmp_path / "nvidia-smi.txt").is_file()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a CPU machine")
def test_without_cuda_it_says_so_in_one_line_and_fails(tmp_path):
    proc = _run("--out", str(tmp_path), timeout=120)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("gpu-check:")]
    assert len(lines) == 1 and "no CUDA device" in lines[0] and "DRY_RUN=1" in lines[0]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["steps"]["versions"] == "no CUDA device" and "bench" not in result["steps"]


def _wheel(folder: Path, name: str, files: dict[str, str]) -> Path:
    """A minimal pure-Python wheel built by hand (no network, no build backend)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-0.1-py3-none-any.whl"
    info = f"{name}-0.1.dist-info"
    members = {
        **files,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = "".join(f"{m},,\n" for m in members) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as z:
        for member, text in {**members, f"{info}/RECORD": record}.items():
            z.writestr(member, text)
    return path


def test_a_wheel_folder_installs_offline_onto_the_later_steps_path(tmp_path):
    wheels = tmp_path / "wheels"
    _wheel(wheels, "gpucheckprobe", {"gpucheckprobe.py": "VALUE = 42\n"})
    check = gpu_check.Check(tmp_path / "out", budget_s=120, dry_run=True)
    (tmp_path / "out").mkdir()
    outcome = gpu_check.env_step(check, wheels)
    assert outcome.startswith("imports ok") and "1 wheels" in outcome
    site = check.work / "site"
    assert (site / "gpucheckprobe.py").is_file()
    assert check.env["PYTHONPATH"].split(":")[0] == str(site)
    probe = subprocess.run(
        [sys.executable, "-c", "import gpucheckprobe; print(gpucheckprobe.VALUE)"],
        env=check.env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert probe.stdout.strip() == "42"
    with pytest.raises(RuntimeError, match="no \\*.whl"):
        gpu_check.env_step(check, tmp_path / "empty")


def test_slimming_a_wheel_drops_the_members_and_their_record_lines(tmp_path):
    path = _wheel(tmp_path, "fat", {"fat/__init__.py": "", "fat/examples/weights.pt": "x" * 100})
    gpu_check._drop_members(path, ("fat/examples/",))
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        record = z.read("fat-0.1.dist-info/RECORD").decode()
    assert "fat/__init__.py" in names and not any("examples" in n for n in names)
    assert "examples" not in record and "fat/__init__.py,," in record


@pytest.mark.parametrize(
    "tail, expected",
    [
        ("8 passed, 1 skipped in 3.2s", {"passed": 8, "skipped": 1}),
        ("1 failed, 7 passed, 2 errors in 9s", {"failed": 1, "passed": 7, "error": 2}),
        ("408 tests collected in 12.9s", {"collected": 408}),
        ("no tests ran in 0.1s", {}),
    ],
)
def test_pytest_closing_counts(tail, expected):
    assert gpu_check._pytest_counts(f"....\n{tail}\n") == expected


def test_make_target_passes_the_settings_through():
    proc = subprocess.run(
        ["make", "-n", "gpu-check", "DRY_RUN=1", "WHEELS=w", "GPU_CHECK_OUT=o", "GPU_PYTHON=py"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "py benchmarks/gpu_check.py --out o --wheels w --dry-run" in proc.stdout
