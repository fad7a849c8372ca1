"""Shard integrity on the loader benchmark: today's reader against this tree's, side by side.

    python benchmarks/integrity.py [--baseline REF] [--rounds 15]

Builds ``benchmarks/loader.py``'s shard artifact (256-px synthetic scenes, 224-px joint
augmentation, 0 workers: the ``loader_img_per_s_per_core`` figure) and times, in interleaved
rounds (one epoch of ``--batches`` batches each):

- ``baseline``: ``train_pipeline`` of the ``pipeline/`` modules as they are at ``REF``
  (default: where this branch left ``main``), loaded from git into a private package;
- ``current``: this tree's ``train_pipeline`` (the shipped choice: the reader does not hash; the
  stages verify the tars before the first step and before results are written);
- ``streaming``: this tree's reader, but every tar byte read is also fed to sha256 and checked
  against the manifest at the end of the tar (the rejected alternative);
- ``upfront``: ``FileGuard.verify`` of every train tar once (what a training session pays at
  its start, and before ``final.pt``), also as ms per stored sample.

Ratios are medians of per-round ratios (wall and CPU time; the order of the variants rotates
from round to round); CPU time is less sensitive to the load of a shared machine. An epoch this
short reads ~4x more raw samples than it yields (the 1000-sample shuffle buffer fills first), so
the per-byte cost of hashing weighs ~4x more here than in a real epoch.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common, loader

BASELINE_PACKAGE = "daat_baseline_reader"


def merge_base() -> str:
    return subprocess.run(
        ["git", "merge-base", "HEAD", "main"],
        cwd=common.REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=common.REPO, check=True, capture_output=True, text=True
    ).stdout


def load_baseline(ref: str, workdir: Path):
    """The training reader of the ``pipeline/`` modules at ``ref`` as ``read(art, p)``, from a
    private package (its modules import each other; the rest of daat is shared)."""
    package = workdir / BASELINE_PACKAGE
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("")
    for path in _git("ls-tree", "--name-only", ref, "pipeline/").split():
        if path.endswith(".py") and not path.endswith("__init__.py"):
            source = _git("show", f"{ref}:{path}")
            source = source.replace("daat.pipeline.", f"{BASELINE_PACKAGE}.")
            source = source.replace("from daat.pipeline import", f"from {BASELINE_PACKAGE} import")
            (package / Path(path).name).write_text(source)
    sys.path.insert(0, str(workdir))
    loaders = importlib.import_module(f"{BASELINE_PACKAGE}.loaders")
    if hasattr(loaders, "TrainReadSpec"):
        return lambda art, p: loaders.train_pipeline(art, _spec(loaders.TrainReadSpec, p), epoch=0)
    return lambda art, p: loaders.train_pipeline(art, **_spec(dict, p), epoch=0)


def _spec(make, p: dict):
    """The benchmark's reader: one epoch of ``p['batches']`` batches, 0 workers."""
    return make(
        image_size=p["image_size"],
        grid=(p["grid"], p["grid"]),
        batch_size=p["batch_size"],
        samples_per_epoch=p["batch_size"] * p["batches"],
        rank=0,
        world_size=1,
        seed=0,
        num_workers=0,
    )


@contextmanager
def streaming_hash(art):
    """This tree's reader with every byte of every tar it reads hashed and checked."""
    from daat.errors import ShardFormatError
    from daat.pipeline import ustar

    expected = {
        str(art.path / rel): entry["sha256"] for rel, entry in art.manifest["files"].items()
    }
    real = ustar.entries

    def hashing_entries(path):
        digest, where = hashlib.sha256(), str(path)
        with open(path, "rb") as f:

            def read(n: int) -> bytes:
                block = f.read(n)
                digest.update(block)
                return block

            while True:
                header = read(ustar.BLOCK)
                if len(header) < ustar.BLOCK:
                    raise ShardFormatError(f"{where}: truncated tar")
                if header.count(0) == ustar.BLOCK:
                    break
                name, size = ustar.parse_header(header, where)
                data = read(size)
                read(-size % ustar.BLOCK)  # padding is hashed too, so it is read, not skipped
                yield name, data
            digest.update(f.read())  # end-of-archive blocks and record padding
        if digest.hexdigest() != expected[where]:
            raise ShardFormatError(f"{where}: sha256 differs from the manifest")

    ustar.entries = hashing_entries
    try:
        yield
    finally:
        ustar.entries = real


def one_epoch(read, art, p: dict) -> tuple[float, float, int]:
    """(wall s, CPU s, images) of one epoch of ``p['batches']`` batches, 0 workers."""
    batches = read(art, p)
    wall, cpu, seen = time.perf_counter(), time.process_time(), 0
    for images, _, _ in batches:
        seen += images.shape[0]
    return time.perf_counter() - wall, time.process_time() - cpu, seen


def measure(workdir: Path, ref: str, rounds: int, batches: int, **overrides) -> dict:
    """The figures above; ``overrides`` change ``loader.DEFAULTS`` (the tests' tiny sizes)."""
    import torch

    p = {**loader.DEFAULTS, **overrides, "batches": batches}
    art, _, _ = loader.build_shards(workdir, p, torch.device("cpu"))
    baseline = load_baseline(ref, workdir / "baseline")
    from daat.pipeline.loaders import TrainReadSpec, train_pipeline

    def current(art, p: dict):
        return train_pipeline(art, _spec(TrainReadSpec, p), epoch=0)

    def streaming(art, p: dict):
        with streaming_hash(art):
            yield from current(art, p)

    variants = {"baseline": baseline, "current": current, "streaming": streaming}
    guard = art.guard(["train"])
    times: dict[str, list[tuple[float, float, int]]] = {k: [] for k in variants}
    upfront: list[tuple[float, float]] = []
    for fn in variants.values():  # warm-up: imports, first decode, page cache
        one_epoch(fn, art, p)
    names = list(variants)
    for i in range(rounds):
        for name in names[i % len(names) :] + names[: i % len(names)]:  # no variant always first
            times[name].append(one_epoch(variants[name], art, p))
        wall, cpu = time.perf_counter(), time.process_time()
        assert guard.verify() == []
        upfront.append((time.perf_counter() - wall, time.process_time() - cpu))

    def rate(name: str, i: int, which: int) -> float:
        return times[name][i][2] / times[name][i][which]

    stored = art.split_size("train")
    tar_bytes = sum(art.manifest["files"][rel]["bytes"] for rel in guard.relpaths)
    result = {
        "integrity_baseline_ref": ref,
        "integrity_rounds": rounds,
        "integrity_images_per_epoch": times["current"][0][2],
        "integrity_stored_samples": stored,
        "integrity_tar_bytes": tar_bytes,
    }
    for name in variants:
        result[f"integrity_{name}_img_per_s"] = common.median(
            [rate(name, i, 0) for i in range(rounds)]
        )
        result[f"integrity_{name}_img_per_cpu_s"] = common.median(
            [rate(name, i, 1) for i in range(rounds)]
        )
        if name != "baseline":
            for which, label in ((0, "wall"), (1, "cpu")):
                result[f"integrity_{name}_over_baseline_{label}"] = common.median(
                    [rate(name, i, which) / rate("baseline", i, which) for i in range(rounds)]
                )
    up_wall = common.median([w for w, _ in upfront])
    up_cpu = common.median([c for _, c in upfront])
    result.update(
        {
            "integrity_upfront_seconds": up_wall,
            "integrity_upfront_cpu_seconds": up_cpu,
            "integrity_upfront_ms_per_stored_sample": 1000 * up_wall / stored,
            "integrity_upfront_mb_per_s": tar_bytes / 2**20 / max(up_wall, 1e-9),
        }
    )
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--baseline", help="git ref of today's reader (default: merge-base of HEAD and main)"
    )
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--batches", type=int, default=10, help="batches of 32 per epoch")
    parser.add_argument("--workdir", type=Path, help="keep the shard artifact here")
    args = parser.parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")
    import torch

    common.configure_threads(torch.device("cpu"), 1)
    ref = args.baseline or merge_base()
    with tempfile.TemporaryDirectory(prefix="daat-bench-integrity-") as tmp:
        result = measure(args.workdir or Path(tmp), ref, args.rounds, args.batches)
    result["machine"] = common.machine(torch.device("cpu"))
    for name in ("baseline", "current", "streaming"):
        line = (
            f"{name:9s} {result[f'integrity_{name}_img_per_s']:7.1f} img/s/core "
            f"{result[f'integrity_{name}_img_per_cpu_s']:7.1f} img/CPU-s"
        )
        if name != "baseline":
            line += (
                f"  vs baseline: wall x{result[f'integrity_{name}_over_baseline_wall']:.3f}"
                f", CPU x{result[f'integrity_{name}_over_baseline_cpu']:.3f}"
            )
        print(line)
    print(
        f"upfront   {result['integrity_upfront_seconds'] * 1000:.1f} ms for "
        f"{result['integrity_stored_samples']} stored samples "
        f"({result['integrity_upfront_ms_per_stored_sample']:.3f} ms/sample, "
        f"{result['integrity_upfront_mb_per_s']:.0f} MiB/s)"
    )
    common.emit(result)
    return result


if __name__ == "__main__":
    main()
