"""``make gpu-check``: what the first session on a GPU should run, as one command into one folder.

    python benchmarks/gpu_check.py [--out gpu_check] [--wheels DIR] [--budget-s 480] [--dry-run]
    python benchmarks/gpu_check.py --download-wheels DIR [--python-version 3.12]

Steps, in order of value, each a subprocess with its own time limit inside ``--budget-s`` (a step
that would start with too little time left is skipped with a line saying so, never silently):

1. ``env``: with ``--wheels DIR``, installs every wheel there (no index, no network) into a
   scratch folder that later steps get on PYTHONPATH and, if ``daat`` itself is not importable,
   the checkout in editable mode (``pip install -e``, no build isolation); checks the imports.
2. ``versions`` + ``nvidia-smi``: Python, torch, CUDA, cuDNN, timm, transformers, webdataset,
   zarr, pyautoattack, the GPU, driver, memory. Without a CUDA device (and without
   ``--dry-run``) the check stops here with one line and exit code 2.
3. ``cuda_tests``: the CUDA-marked tests (``pytest -m gpu``) and the CUDA-branch tests run on
   CPU (tests/test_cuda_paths.py); a dry run only collects them (``make test`` runs the latter).
4. ``bench``: ``make bench``'s GPU mode (``benchmarks/run_all.py --no-compile``): ViT-B/14 @224
   PGD-AT img/s and its ratio to the naive fp32 loop; DAAT cached / online (DPT-Hybrid-sized random
   depth model at 384 px) / teacher ratios; preprocess img/s with that model; the loader.
5. ``train``: a synthetic ImageNet-100-shaped ImageFolder (100 wnid folders of random JPEGs written
   here), ``daat preprocess --config imagenet100`` with the random DPT-Hybrid, then 200 steps of
   ``daat train --config daat --config imagenet100`` (ViT-B/14 @224, batch 128, PGD-10, online
   G(x_adv), a random DINOv2 ViT-B/14 teacher) in one epoch: img/s from metrics.jsonl and the
   peak GPU memory polled from nvidia-smi.
6. ``compile``: ``benchmarks/train_step.py --compile-check`` (speed-up of ``train.compile`` and
   Dynamo's recompile count), if time is left.
7. ``torchrun``: two processes of ``daat train`` (NCCL) when two GPUs exist; skipped otherwise.

Writes ``OUT/gpu_check.json`` (every figure, the goals of ``benchmarks/run_all.py`` beside them),
``OUT/gpu_check.log`` (each step's command and output) and ``OUT/nvidia-smi.txt``; the last stdout
line is the JSON object. ``--dry-run`` runs the same steps on CPU at toy size (the test suite does,
so the script keeps working where no GPU is lent). Nothing is downloaded: the depth model and the
teacher are random, built here.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(REPO))
IMPORTS = (
    "torch",
    "timm",
    "transformers",
    "webdataset",
    "zarr",
    "pyautoattack",
    "daat.pipeline",
    "daat.train",
    "daat.eval",
)
# Packages the GPU image lacks (webdataset, zarr and pyautoattack with their own needs), pinned to
# what the project is tested with; ``--download-wheels`` fetches them for an offline machine.
WHEELS = (
    "webdataset==1.0.2",
    "braceexpand==0.1.7",
    "zarr==3.1.6",
    "donfig==0.8.1.post1",
    "google-crc32c==1.9.0",
    "numcodecs==0.16.6",
    "pyautoattack==0.2.0",
)
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)
TRAIN_STEPS = 200


class Check:
    """The run: its folder, deadline, environment for the steps, log and results."""

    def __init__(self, out: Path, budget_s: float, dry_run: bool):
        self.out, self.dry_run = out, dry_run
        self.deadline = time.monotonic() + budget_s
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"}
        self.work = Path(tempfile.mkdtemp(prefix="daat-gpu-check-"))
        self.log_path = out / "gpu_check.log"
        self.result: dict = {
            "mode": "dry-run (CPU, toy size)" if dry_run else "gpu",
            "steps": {},
            "started_utc": _utc(),
        }

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def say(self, message: str) -> None:
        print(f"[gpu-check] {message}", file=sys.stderr, flush=True)
        with open(self.log_path, "a") as f:
            f.write(f"[gpu-check] {message}\n")

    def run(self, name: str, argv: list[str], limit_s: float) -> tuple[int | None, str]:
        """Run ``argv`` for at most ``limit_s`` (and the time left): (exit code, or None when
        stopped at the limit; stdout). Both streams go to the log."""
        limit = max(1.0, min(limit_s, self.left()))
        self.say(f"{name}: $ {' '.join(argv)}  (limit {limit:.0f} s)")
        start = time.monotonic()
        # A session of its own, so a step stopped at its limit takes its helpers (decode workers,
        # writer processes) with it and nothing keeps the pipes open.
        proc = subprocess.Popen(
            argv,
            cwd=REPO,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            stdout, stderr = proc.communicate(timeout=limit)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            code, stderr = None, stderr + f"\n[stopped at the {limit:.0f} s limit]"
        with open(self.log_path, "a") as f:
            for text in (stdout, stderr):
                f.write(text if not text or text.endswith("\n") else text + "\n")
        self.say(f"{name}: exit {code} after {time.monotonic() - start:.0f} s")
        return code, stdout

    def step(self, name: str, fn, min_s: float) -> None:
        """Run one step unless less than ``min_s`` is left; record its outcome, never raise."""
        if self.left() < min_s:
            self.result["steps"][name] = f"skipped: {self.left():.0f} s left, needs ~{min_s:.0f} s"
            self.say(f"{name}: {self.result['steps'][name]}")
            return
        start = time.monotonic()
        try:
            outcome = fn(self) or "ok"
        except NoCuda:
            self.result["steps"][name] = "no CUDA device"
            self.save()
            raise
        except Exception as e:  # noqa: BLE001 -- a failed step is recorded; later steps still run
            outcome = f"FAILED: {type(e).__name__}: {e}"
        self.result["steps"][name] = outcome
        self.result.setdefault("seconds", {})[name] = round(time.monotonic() - start, 1)
        self.say(f"{name}: {outcome}")
        self.save()

    def save(self) -> None:
        (self.out / "gpu_check.json").write_text(json.dumps(self.result, indent=1))


def _utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _ended(code: int | None) -> str:
    return "was stopped at its time limit" if code is None else f"exited {code}"


def _last_json(output: str) -> dict:
    for line in reversed(output.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError("no JSON line in the output (see gpu_check.log)")


# --- steps ------------------------------------------------------------------------------------


def env_step(check: Check, wheels: Path | None) -> str:
    notes = []
    if wheels is not None:
        found = sorted(wheels.glob("*.whl"))
        if not found:
            raise RuntimeError(f"--wheels {wheels}: no *.whl files there")
        site = check.work / "site"  # removed at the end with the rest of the scratch space
        code, _ = check.run(
            "env",
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--no-index",
                "--no-deps",
                "--no-compile",
                "--upgrade",
                "--target",
                str(site),
                *map(str, found),
            ],
            300,
        )
        if code != 0:
            raise RuntimeError("installing the wheels failed (see gpu_check.log)")
        check.env["PYTHONPATH"] = os.pathsep.join(
            [str(site), *filter(None, [check.env.get("PYTHONPATH")])]
        )
        notes.append(f"{len(found)} wheels into {site}")
        if _missing(check, ["daat.pipeline"]):
            # Editable, as `make install` does: tests and `python -m daat.cli` run from the
            # checkout, whose daat/ would shadow a copied package (its stage folders live beside
            # it and only the editable finder maps them to daat.pipeline, daat.train, daat.eval).
            code, _ = check.run(
                "env",
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "install",
                    "-q",
                    "--no-index",
                    "--no-deps",
                    "--no-build-isolation",
                    "-e",
                    str(REPO),
                ],
                300,
            )
            if code != 0:
                raise RuntimeError(
                    "installing daat from the checkout (pip install -e) failed (see gpu_check.log)"
                )
            notes.append("daat from the checkout (editable)")
    missing = _missing(check, list(IMPORTS))
    if missing:
        raise RuntimeError(
            f"cannot import {', '.join(missing)}: install the project "
            "(`pip install -e .`) or pass a wheel folder (WHEELS=DIR, see "
            "docs/GPU.md)"
        )
    return "imports ok" + (f" ({'; '.join(notes)})" if notes else "")


def _missing(check: Check, modules: list[str]) -> list[str]:
    probe = (
        "import importlib, sys\nbad = []\nfor m in sys.argv[1:]:\n    try:\n"
        "        importlib.import_module(m)\n    except Exception as e:\n"
        "        bad.append(f'{m} ({type(e).__name__}: {e})')\nprint('\\n'.join(bad))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe, *modules],
        cwd=REPO,
        env=check.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return [line for line in proc.stdout.splitlines() if line.strip()]


VERSIONS = """
import json, platform, sys, torch
from importlib import metadata
out = {"python": platform.python_version(), "torch": torch.__version__,
       "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
       "cuda_available": torch.cuda.is_available(), "gpus": torch.cuda.device_count()}
for name in ("timm", "transformers", "webdataset", "zarr", "pyautoattack", "numpy", "daat"):
    try:
        out[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
        out[name] = None
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    memory_gib = round(p.total_memory / 2**30, 1)
    out.update(gpu=p.name, capability=f"{p.major}.{p.minor}", gpu_memory_gib=memory_gib,
               multiprocessors=p.multi_processor_count)
print(json.dumps(out))
"""


def versions_step(check: Check) -> str:
    code, output = check.run("versions", [sys.executable, "-c", VERSIONS], 120)
    if code != 0:
        raise RuntimeError("could not read versions")
    check.result["versions"] = _last_json(output)
    smi = shutil.which("nvidia-smi")
    if smi:
        code, output = check.run("nvidia-smi", [smi], 60)
        (check.out / "nvidia-smi.txt").write_text(output)
        driver = re.search(r"Driver Version:\s*([\d.]+)", output)
        check.result["versions"]["driver"] = driver.group(1) if driver else None
    else:
        (check.out / "nvidia-smi.txt").write_text("nvidia-smi: not found on this machine\n")
    v = check.result["versions"]
    if not check.dry_run and not v["cuda_available"]:
        raise NoCuda()
    return f"{v.get('gpu', 'no GPU')}, torch {v['torch']}, CUDA {v['cuda']}"


class NoCuda(Exception):
    """No CUDA device: the real check cannot run."""


def tests_step(check: Check) -> str:
    """The CUDA-marked tests, then the CUDA-branch tests forced onto the CPU. A dry run only
    collects them: ``make test`` runs the second set anyway, and the first skips on a CPU."""
    found = {}
    collect = ["--collect-only"] if check.dry_run else []
    for name, argv in (
        ("marked_gpu", ["-m", "gpu", "tests"]),
        ("cuda_paths_on_cpu", ["tests/test_cuda_paths.py"]),
    ):
        code, output = check.run(
            "cuda_tests",
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "-rs",
                *collect,
                *argv,
            ],
            300,
        )
        found[name] = {**_pytest_counts(output), "exit": code}
    check.result["cuda_tests"] = found
    if any(v["exit"] != 0 or v.get("failed") or v.get("error") for v in found.values()):
        raise RuntimeError(f"tests failed: {found} (see gpu_check.log)")
    return "; ".join(f"{k}: {v}" for k, v in found.items())


def _pytest_counts(output: str) -> dict:
    """pytest -q's closing counts, e.g. {'passed': 8, 'skipped': 1} or {'collected': 9}."""
    pattern = r"(\d+) (passed|failed|skipped|errors?|tests? collected)"
    lines = [line for line in output.strip().splitlines() if re.search(pattern, line)]
    return {
        word.split()[-1].rstrip("s"): int(n)
        for n, word in re.findall(pattern, lines[-1] if lines else "")
    }


def bench_step(check: Check) -> str:
    argv = [sys.executable, "benchmarks/run_all.py", "--no-compile"]
    # 4,096 timed preprocess images instead of 8,192: the GPU run measured the same rate on both
    # halves (model-only before/after within 0.02%), and the time goes to the 200-step run
    argv += (
        ["--tiny", "--device", "cpu"]
        if check.dry_run
        else ["--device", "cuda", "--preprocess-images", "4096"]
    )
    code, output = check.run("bench", argv, 300)
    if code != 0:
        raise RuntimeError(f"make bench {_ended(code)} (see gpu_check.log)")
    bench = _last_json(output)
    check.result["bench"] = bench
    return "goals: " + ", ".join(
        f"{k} {'met' if v else 'MISSED'}" for k, v in bench.get("goals", {}).items()
    )


TRAIN_SETUP = """
import sys
from pathlib import Path
sys.path.insert(0, {repo!r})
from benchmarks import common
from daat.teacher_model import save_random_teacher
from daat.tiny_models import save_tiny_dpt
root, work = Path({root!r}), Path({work!r})
wnids = [l.split()[0] for l in (Path({repo!r}) / "daat/data/imagenet100_wnids.txt").read_text()
         .splitlines() if l.strip() and not l.startswith("#")]
for split, n in zip(("train", "val"), {per_class}):
    common.write_imagefolder_classes(root / split, wnids, n, *{hw}, seed=len(split),
                                     suffix=".JPEG", processes={processes})
if {dry}:
    save_tiny_dpt(work / "depth", image_size=32)
    save_random_teacher(work / "teacher.safetensors", embed_dim=32, depth=2, num_heads=2,
                        patch_size=8, img_size=32)
else:
    common.save_dpt_hybrid(work / "depth")
    save_random_teacher(work / "teacher.safetensors", embed_dim=768, depth=12, num_heads=12,
                        patch_size=14, img_size=224)
"""
# Toy sizes for --dry-run: the imagenet100 presets' structure, models a CPU runs in seconds.
DRY_DATA = ["data.resize_short=40", "depth.batch_size=8", "data.num_workers=0"]
DRY_MODEL = [
    "model.img_size=32",
    "model.patch_size=8",
    "model.embed_dim=32",
    "model.depth=2",
    "model.num_heads=2",
    "train.batch_size=4",
    "data.num_workers=0",
]


def _sets(assignments: list[str]) -> list[str]:
    return [arg for a in assignments for arg in ("--set", a)]


class MemoryPoll:
    """Peak ``memory.used`` of GPU 0 from nvidia-smi, polled every 0.5 s in a thread (it includes
    the CUDA context and the caching allocator's reserve: what the card must have free)."""

    def __init__(self):
        self.peak_mib = 0
        self._stop = threading.Event()
        self._smi = shutil.which("nvidia-smi")
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self):
        if self._smi:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._smi:
            self._thread.join(timeout=5)

    def _poll(self):
        while not self._stop.wait(0.5):
            try:
                out = subprocess.run(
                    [
                        self._smi,
                        "--query-gpu=memory.used",
                        "--format=csv,noheader,nounits",
                        "-i",
                        "0",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=5,
                ).stdout
                self.peak_mib = max(self.peak_mib, int(out.split()[0]))
            except (subprocess.SubprocessError, ValueError, IndexError, OSError):
                continue  # one missed sample; the next poll tries again


def train_step(check: Check) -> str:
    dry = check.dry_run
    root, work = check.work / "imagenet100", check.work / "train"
    per_class, hw = ((1, 1), (48, 64)) if dry else ((12, 1), (375, 500))
    steps, batch = (4, 4) if dry else (TRAIN_STEPS, 128)
    code, _ = check.run(
        "train",
        [
            sys.executable,
            "-c",
            TRAIN_SETUP.format(
                repo=str(REPO),
                root=str(root),
                work=str(work),
                dry=dry,
                per_class=per_class,
                hw=hw,
                processes=1 if dry else min(16, os.cpu_count() or 1),
            ),
        ],
        300,
    )
    if code != 0:
        raise RuntimeError("writing the ImageNet-100-shaped folder or the models failed")
    daat, arts = [sys.executable, "-m", "daat.cli"], str(work / "artifacts")
    start = time.monotonic()
    code, output = check.run(
        "train",
        [
            *daat,
            "preprocess",
            "--card",
            "imagenet100",
            "--root",
            str(root),
            "--config",
            "imagenet100",
            "--depth",
            str(work / "depth"),
            "--out",
            arts,
            *_sets(DRY_DATA if dry else ["data.num_workers=14"]),
        ],
        300,
    )
    if code != 0:
        raise RuntimeError("daat preprocess failed (see gpu_check.log)")
    shards = output.strip().splitlines()[-1].strip()
    images = 100 * sum(per_class)
    seconds = time.monotonic() - start
    check.result["train_preprocess"] = {
        "images": images,
        "seconds_incl_startup": round(seconds, 1),
        "img_per_s_incl_startup": round(images / seconds, 1),
    }
    with MemoryPoll() as memory:
        start = time.monotonic()
        code, output = check.run(
            "train",
            [
                *daat,
                "train",
                "--config",
                "daat",
                "--config",
                "imagenet100",
                "--shards",
                shards,
                "--out",
                arts,
                *_sets(
                    [
                        f"loss.teacher={work / 'teacher.safetensors'}",
                        f"depth.model={work / 'depth'}",
                        "train.epochs=1",
                        f"train.samples_per_epoch={steps * batch}",
                        "train.val_samples=100",
                        f"train.log_every_steps={2 if dry else 50}",
                        *(DRY_MODEL if dry else ["data.num_workers=12"]),
                    ]
                ),
            ],
            120 if dry else 420,
        )
        seconds = time.monotonic() - start
    rows = [
        json.loads(line)
        for path in sorted(work.glob("artifacts/run-*/metrics.jsonl"))
        for line in path.read_text().splitlines()
        if line.strip()
    ]
    intervals = [r for r in rows if r.get("kind") == "step"]
    epochs = [r for r in rows if r.get("kind") == "epoch"]
    steady = [r["img_per_s"] for r in intervals[1:]]  # the first interval pays warm-up
    check.result["train"] = {
        "command": "daat train --config daat --config imagenet100 (online G(x_adv), teacher on)",
        "steps_done": intervals[-1]["step"] if intervals else 0,
        "steps_planned": steps,
        "batch": batch,
        "seconds_incl_startup": round(seconds, 1),
        "img_per_s_by_interval": [round(r["img_per_s"], 1) for r in intervals],
        "img_per_s_steady": round(sum(steady) / len(steady), 1) if steady else None,
        "epoch_img_per_s_incl_validation": round(epochs[-1]["img_per_s"], 1) if epochs else None,
        "peak_gpu_memory_mib_nvidia_smi": memory.peak_mib or None,
        "last_losses": {k: intervals[-1][k] for k in ("ce", "align", "feat")}
        if intervals
        else None,
    }
    if code != 0:
        raise RuntimeError(f"daat train {_ended(code)} (see gpu_check.log)")
    train = check.result["train"]
    return f"{train['steps_done']} steps, {train['img_per_s_steady']} img/s"


def compile_step(check: Check) -> str:
    if check.dry_run:
        return "skipped in a dry run (inductor on a CPU takes minutes)"
    code, output = check.run(
        "compile",
        [sys.executable, "benchmarks/train_step.py", "--device", "cuda", "--compile-check"],
        420,
    )
    if code != 0:
        raise RuntimeError(f"compile check {_ended(code)} (see gpu_check.log)")
    check.result["compile"] = _last_json(output)
    c = check.result["compile"]
    return (
        f"train.compile x{c['train_compile_speedup']:.2f}, +attack "
        f"x{c['train_and_attack_compile_speedup']:.2f}, "
        f"{c['dynamo_graphs_during_timed_steps']} recompiles"
    )


TORCHRUN_SETUP = """
import sys
sys.path.insert(0, {repo!r})
from tests.conftest import write_synthetic_card, tiny_config
from daat.pipeline import preprocess
card = write_synthetic_card(__import__("pathlib").Path({work!r}), "ddp-card",
                            n_train_per_class=4, n_val_per_class=1)
print(preprocess.run(tiny_config(card), {arts!r}).path)
"""


def torchrun_step(check: Check) -> str:
    gpus = (check.result.get("versions") or {}).get("gpus", 0)
    if check.dry_run or gpus < 2:
        return f"skipped: {gpus} GPU(s); the two-process NCCL run needs two"
    work, arts = check.work / "ddp", str(check.work / "ddp" / "artifacts")
    code, output = check.run(
        "torchrun",
        [sys.executable, "-c", TORCHRUN_SETUP.format(repo=str(REPO), work=str(work), arts=arts)],
        120,
    )
    if code != 0:
        raise RuntimeError("making the tiny shards failed")
    shards = output.strip().splitlines()[-1]
    code, output = check.run(
        "torchrun",
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "-m",
            "daat.cli",
            "train",
            "--config",
            "pgd-at",
            "--config",
            "synthetic",
            "--shards",
            shards,
            "--out",
            arts,
            *_sets(["train.epochs=1", "device=cuda", "data.num_workers=0"]),
        ],
        300,
    )
    if code != 0:
        raise RuntimeError(f"torchrun {_ended(code)} (see gpu_check.log)")
    return "2 NCCL processes trained and wrote one run"


STEPS = (
    ("versions", versions_step, 10),
    ("cuda_tests", tests_step, 60),
    ("bench", bench_step, 120),
    ("train", train_step, 150),
    ("compile", compile_step, 180),
    ("torchrun", torchrun_step, 60),
)


def download_wheels(dest: Path, python_version: str) -> None:
    """The wheels of ``WHEELS`` for an offline x86-64 Linux machine with ``python_version``;
    pyautoattack's 45 MB of example weights are dropped from its wheel (nothing imports them)."""
    dest.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "-q",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        python_version,
        "--implementation",
        "cp",
        "-d",
        str(dest),
    ]
    for platform in PLATFORMS:
        argv += ["--platform", platform]
    subprocess.run([*argv, *WHEELS], check=True)
    for wheel in dest.glob("pyautoattack-*.whl"):
        _drop_members(wheel, ("pyautoattack/examples/",))
    print("\n".join(sorted(p.name for p in dest.glob("*.whl"))))


def _drop_members(wheel: Path, prefixes: tuple[str, ...]) -> None:
    import zipfile

    tmp = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if info.filename.startswith(prefixes):
                continue
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                data = "".join(
                    line + "\n"
                    for line in data.decode().splitlines()
                    if not line.startswith(prefixes)
                ).encode()
            dst.writestr(info, data)
    os.replace(tmp, wheel)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=Path(os.environ.get("GPU_CHECK_OUT", "gpu_check"))
    )
    parser.add_argument("--wheels", type=Path, help="folder of wheels to install first (offline)")
    parser.add_argument("--budget-s", type=float, default=480, help="stop starting steps after")
    parser.add_argument("--dry-run", action="store_true", help="CPU, toy sizes (CI)")
    parser.add_argument(
        "--download-wheels",
        type=Path,
        metavar="DIR",
        help="only fetch the wheels a GPU image lacks into DIR, then exit",
    )
    parser.add_argument("--python-version", default="3.12", help="for --download-wheels")
    args = parser.parse_args(argv)
    if args.download_wheels:
        download_wheels(args.download_wheels, args.python_version)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.log").unlink(missing_ok=True)
    check = Check(args.out, args.budget_s, args.dry_run)
    check.step("env", lambda c: env_step(c, args.wheels), 0)
    if check.result["steps"]["env"].startswith("FAILED"):
        return _finish(check, 2)
    for name, fn, min_s in STEPS:
        try:
            check.step(name, fn, min_s)
        except NoCuda:
            print(
                "gpu-check: no CUDA device on this machine (torch.cuda.is_available() is False);"
                " `make gpu-check DRY_RUN=1` runs the same steps on CPU at toy size",
                file=sys.stderr,
            )
            return _finish(check, 2)
    failed = [k for k, v in check.result["steps"].items() if str(v).startswith("FAILED")]
    return _finish(check, 1 if failed else 0)


def figures(result: dict) -> dict:
    """The headline figures, each with its goal (``benchmarks/run_all.py``) where it has one."""
    from benchmarks.goals import GOALS, GPU_GOALS, met

    bench, train = result.get("bench") or {}, result.get("train") or {}
    out = {}
    for key, op, goal in GPU_GOALS + GOALS:
        value = bench.get(key)
        out[key] = {"value": value, "goal": f"{op} {goal:g}", "met": met(value, op, goal)}
    for key in ("standard_over_pgdat", "naive-fp32_img_per_s", "pgd-at_peak_mib"):
        if key in bench:
            out[key] = {"value": bench[key]}
    for key in ("img_per_s_steady", "peak_gpu_memory_mib_nvidia_smi", "steps_done"):
        if key in train:
            out[f"train_{key}"] = {"value": train[key]}
    return out


def _finish(check: Check, code: int) -> int:
    check.result["finished_utc"] = _utc()
    check.result["figures"] = figures(check.result)
    check.result["exit_code"] = code
    check.save()
    shutil.rmtree(check.work)
    print(json.dumps(check.result), flush=True)  # step order is run order
    return code


if __name__ == "__main__":
    sys.exit(main())
