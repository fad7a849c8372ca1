"""``daat preprocess`` end to end: reuse, new artifact per depth model, verify, bad inputs,
saliency fidelity, kill -9 resume and torchrun (the last two are slow-marked)."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import copy_artifact, tiny_config, write_synthetic_card
from PIL import Image

from daat import artifacts
from daat.cards import CardWarning
from daat.errors import DataError
from daat.pipeline import depth_batches, loaders, preprocess
from daat.pipeline import shards as fmt

ROOT = Path(__file__).resolve().parents[1]


def daat_cli(*args: str, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "daat.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        **kw,
    )


def member_sizes(art) -> dict[str, int]:
    sizes = {"jpg": 0, "sal.png": 0}
    for split in art.splits:
        for path, _ in art.shards(split):
            with tarfile.open(path) as tar:
                for m in tar.getmembers():
                    ext = m.name.split(".", 1)[1]
                    if ext in sizes:
                        sizes[ext] += m.size
    return sizes


def all_keys(art) -> list[str]:
    return [
        raw["__key__"]
        for split in art.splits
        for path, _ in art.shards(split)
        for raw in fmt.iter_raw(path)
    ]


# --- the oracle artifact --------------------------------------------------------------------


def test_oracle_artifact_complete_and_counted(tiny_shards):
    art = tiny_shards
    assert art.complete and artifacts.verify(art.path) == []
    assert art.split_size("train") == 30 and art.split_size("val") == 20
    assert art.num_classes == 10 and art.depth_model == "oracle"
    keys = all_keys(art)
    assert len(keys) == len(set(keys)) == 50
    assert sorted(keys) == sorted(
        [fmt.sample_key("train", i) for i in range(30)]
        + [fmt.sample_key("val", i) for i in range(20)]
    )
    assert [p.name for p, _ in art.shards("train")] == [f"train-0000{i}.tar" for i in range(4)]
    assert art.extra["splits"]["train"]["skipped"] == {"count": 0, "items": []}
    for rel, entry in art.manifest["files"].items():
        if rel.endswith(".tar"):
            assert entry["samples"] == (
                6 if rel == "train/train-00003.tar" else 4 if rel == "val/val-00002.tar" else 8
            )


def test_samples_match_the_renderer(tiny_shards, tiny_card):
    """Labels and relpaths are the card's, images are the rendered ones (JPEG error only), and
    the stored saliency gives G within 1e-3 of G from the float Sobel of the exact inverse depth."""
    from daat import cards, synthetic
    from daat.saliency import saliency_from_edges, sobel_magnitude

    card = cards.load_card(str(tiny_card))
    items = {fmt.sample_key(s, it.index): it for s in ("train", "val") for it in card.items(s)}
    worst = 0.0
    for split in ("train", "val"):
        for sample in fmt.iter_samples(tiny_shards, split):
            item = items[sample.key]
            assert sample.label == item.label and sample.meta["relpath"] == item.relpath
            rgb, z = synthetic.render_item(item.synthetic, 64)
            assert np.abs(sample.image.astype(int) - rgb).mean() < 4
            assert sample.meta["hw"] == [64, 64] and sample.meta["orig_hw"] == [64, 64]
            e = sobel_magnitude(torch.from_numpy(1 / z)[None].float())
            np.testing.assert_allclose(sample.meta["sal_scale"], float(e.max()), rtol=1e-5)
            for grid in [(8, 8), (4, 4), (16, 16)]:
                g_float = saliency_from_edges(e, grid)
                g_stored = saliency_from_edges(torch.from_numpy(sample.saliency)[None], grid)
                worst = max(worst, float((g_float - g_stored).abs().max()))
    assert worst < 1e-3


def test_saliency_costs_at_most_half_the_image_bytes(tiny_shards):
    sizes = member_sizes(tiny_shards)
    assert sizes["sal.png"] <= 0.5 * sizes["jpg"], sizes


def test_rerun_reuses_quickly_and_rewrites_nothing(tiny_shards, tiny_card, capsys):
    before = {p: p.stat().st_mtime_ns for p in tiny_shards.path.rglob("*")}
    start = time.perf_counter()
    again = preprocess.run(tiny_config(tiny_card), str(tiny_shards.path.parent))
    assert time.perf_counter() - start < 5
    assert again.path == tiny_shards.path
    assert f"[preprocess] reusing {tiny_shards.path} (finished 20" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in tiny_shards.path.rglob("*")} == before


def test_reuse_path_does_not_import_torch(tiny_shards, tiny_card):
    """The complete-artifact answer comes from the manifest: no torch import (seconds on a
    loaded 2-core machine), so the second identical command returns in well under 5 s."""
    code = (
        "import sys, time\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from conftest import tiny_config\n"
        "from daat.pipeline import preprocess\n"
        "art = preprocess.run(tiny_config(sys.argv[2]), sys.argv[3])\n"
        "assert 'torch' not in sys.modules, 'reuse imported torch'\n"
        "print(art.path)\n"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            str(Path(__file__).parent),
            str(tiny_card),
            str(tiny_shards.path.parent),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(tiny_shards.path)


def test_depth_names_resolve_without_torch():
    code = (
        "import sys; from daat.depth_ref import is_oracle, identity\n"
        "assert [is_oracle(n) for n in ['oracle', ' Oracle ', 'oracles', '', '/x/oracle']]"
        " == [True, True, False, False, False]\n"
        "assert identity('ORACLE') == 'oracle'\n"
        "assert identity('Intel/dpt-large') == 'Intel/dpt-large'\n"
        "assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_cli_rerun_prints_the_same_path_last(tiny_shards, tiny_card):
    result = daat_cli(
        "preprocess",
        "--card",
        str(tiny_card),
        "--depth",
        "oracle",
        "--out",
        str(tiny_shards.path.parent),
        "--set",
        "data.shard_size=8",
        "--set",
        "data.num_workers=0",
        "--set",
        "depth.batch_size=16",
        "--set",
        "device=cpu",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(tiny_shards.path)


def test_verify_cli_names_a_flipped_byte(tiny_shards, tmp_path):
    copy = copy_artifact(tiny_shards.path, tmp_path)
    ok = daat_cli("artifacts", "verify", str(copy))
    assert ok.returncode == 0, ok.stderr
    shard = copy / "val" / "val-00001.tar"
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0x01
    shard.write_bytes(bytes(data))
    bad = daat_cli("artifacts", "verify", str(copy))
    assert bad.returncode != 0
    assert "val/val-00001.tar" in bad.stderr + bad.stdout
    assert "val-00000.tar" not in bad.stderr + bad.stdout


def test_other_settings_make_other_artifacts(tiny_shards, tiny_card):
    cfg = tiny_config(tiny_card, "data.jpeg_quality=80")
    key_cfg = tiny_config(tiny_card, "data.num_workers=1", "depth.batch_size=3")
    from daat.keys import determining

    assert determining("shards", cfg) != determining("shards", tiny_config(tiny_card))
    assert determining("shards", key_cfg) == determining("shards", tiny_config(tiny_card))


def test_an_error_mid_run_leaves_finished_shards_only_and_the_rerun_completes(
    tiny_card, tmp_path, monkeypatch, capsys
):
    cfg = tiny_config(tiny_card, "data.num_workers=1", "depth.batch_size=10")
    real, calls = depth_batches.DepthBatches._with_saliency, []

    def failing(self, batch):
        calls.append(len(batch))
        if len(calls) == 3:  # 20 images reached the writer: shards 0-1 of 8 and half of shard 2
            raise RuntimeError("depth model crashed")
        return real(self, batch)

    monkeypatch.setattr(depth_batches.DepthBatches, "_with_saliency", failing)
    with pytest.raises(RuntimeError, match="depth model crashed"):
        preprocess.run(cfg, str(tmp_path / "out"))
    (art_dir,) = (tmp_path / "out").iterdir()
    assert sorted(p.name for p in art_dir.glob("train/*.tar")) == [
        "train-00000.tar",
        "train-00001.tar",
    ]
    assert sorted(p.name for p in art_dir.glob("train/*.json")) == [
        "train-00000.json",
        "train-00001.json",
    ]
    assert not list(art_dir.rglob("*.tmp"))
    monkeypatch.setattr(depth_batches.DepthBatches, "_with_saliency", real)
    capsys.readouterr()
    art = fmt.open_shards(preprocess.run(cfg, str(tmp_path / "out")).path)
    assert art.path == art_dir and art.split_size("train") == 30
    assert (
        f"[preprocess] resuming from {art_dir} (train: 2 of 4 shards already written)"
        in capsys.readouterr().err
    )
    assert artifacts.verify(art_dir) == []


@pytest.mark.parametrize(
    "device, cores, ranks, expected",
    [
        ("cpu", 64, 1, 1),
        ("cuda", 16, 1, 2),
        ("cuda", 4, 1, 1),
        ("cuda", 96, 8, 1),
        ("cuda", 256, 1, 4),
    ],
)
def test_writer_processes_follow_the_cores_of_a_gpu_rank(
    monkeypatch, device, cores, ranks, expected
):
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(ranks))
    assert preprocess._writer_processes(torch.device(device)) == expected


def test_card_prose_is_not_part_of_the_shard_key_but_its_facts_are(tiny_card, tmp_path):
    import yaml

    from daat.cards import load_card

    def key(**changes) -> dict:
        raw = {**yaml.safe_load(tiny_card.read_text()), **changes}
        path = tmp_path / "card.yaml"
        path.write_text(yaml.safe_dump(raw))
        cfg = tiny_config(path)
        return preprocess._determining(cfg, load_card(str(path)), True)

    plain = key()
    assert key(description="Rewritten prose.", licence="CC0") == plain
    spec = yaml.safe_load(tiny_card.read_text())["synthetic"]
    assert key(synthetic={**spec, "seed": spec.get("seed", 0) + 1}) != plain


def test_oracle_refused_for_an_imagefolder(tmp_path):
    for split in ("train", "val"):
        (tmp_path / "folder" / split / "cat").mkdir(parents=True)
        Image.new("RGB", (16, 16)).save(tmp_path / "folder" / split / "cat" / "a.png")
    with pytest.raises(DataError, match="folder"):
        preprocess.run(tiny_config(tmp_path / "folder"), str(tmp_path / "out"))


def test_oracle_depth_follows_the_image_resize_and_crop():
    """Where the image is a horizontal ramp and the inverse depth is the same ramp, the stored
    image and the oracle depth (resized separately, by PIL and by torch) must agree pixel for
    pixel; a half-pixel misalignment would show as ~1.6 grey levels here."""
    from daat.pipeline.images import decode_array
    from daat.pipeline.oracle import oracle_depth

    ramp = np.mgrid[0:64, 0:96][1].astype(np.float32) * 2 + 10
    stored, geo = decode_array(
        np.repeat(ramp[..., None], 3, -1).astype(np.uint8), resize_short=40, center_crop=True
    )
    depth = oracle_depth(1 / ramp, geo).numpy()
    image = np.asarray(stored)[..., 0].astype(np.float32)
    assert depth.shape == image.shape == (40, 40) and (geo.left, geo.rw) == (10, 60)
    assert np.abs(depth - image).max() < 0.75


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_preprocess_with_a_depth_network(tiny_dpt_dir, mini_card, tmp_path):
    cpu = preprocess.run(tiny_config(mini_card, depth=str(tiny_dpt_dir)), str(tmp_path / "c"))
    gpu = preprocess.run(
        tiny_config(mini_card, "device=cuda", "depth.amp=false", depth=str(tiny_dpt_dir)),
        str(tmp_path / "g"),
    )
    from daat.saliency import saliency_from_edges

    for a, b in zip(fmt.iter_samples(cpu, "val"), fmt.iter_samples(gpu, "val")):
        assert a.key == b.key and np.array_equal(a.image, b.image)
        ga = saliency_from_edges(torch.from_numpy(a.saliency)[None], (8, 8))
        gb = saliency_from_edges(torch.from_numpy(b.saliency)[None], (8, 8))
        assert float((ga - gb).abs().max()) < 2e-3


# --- real depth networks (tiny, random, loaded through transformers) -----------------------


@pytest.fixture(scope="module")
def mini_card(tmp_path_factory) -> Path:
    return write_synthetic_card(
        tmp_path_factory.mktemp("mini"), "mini-synthetic", n_train_per_class=1, n_val_per_class=1
    )


@pytest.mark.parametrize("model_fixture", ["tiny_dpt_dir", "tiny_depth_anything_dir"])
def test_depth_network_gives_its_own_artifact(request, model_fixture, mini_card, tmp_path):
    model_dir = request.getfixturevalue(model_fixture)
    out = tmp_path / "out"
    oracle = preprocess.run(tiny_config(mini_card), str(out))
    net = preprocess.run(tiny_config(mini_card, depth=str(model_dir)), str(out))
    assert net.path != oracle.path and net.complete
    assert artifacts.verify(net.path) == []
    art = fmt.open_shards(net.path)
    assert art.depth_model.startswith(str(model_dir)) and art.split_size("train") == 10
    sample = next(fmt.iter_samples(art, "train"))
    assert sample.meta["depth_model"] == art.depth_model and sample.meta["sal_scale"] > 0
    images, labels, g = next(
        iter(
            loaders.train_pipeline(
                art,
                loaders.TrainReadSpec(
                    image_size=32,
                    grid=4,
                    batch_size=4,
                    samples_per_epoch=8,
                    rank=0,
                    world_size=1,
                    seed=0,
                    num_workers=0,
                ),
                epoch=0,
            )
        )
    )
    assert images.shape == (4, 3, 32, 32) and torch.isfinite(g).all()
    torch.testing.assert_close(g.sum(1), torch.ones(4))
    # the same command again finds it (no model forward needed)
    assert preprocess.run(tiny_config(mini_card, depth=str(model_dir)), str(out)).path == net.path


# --- bad and odd inputs in an ImageFolder ---------------------------------------------------


def _jpeg(arr: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=95, **kw)
    return buf.getvalue()


def _picture(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 // (w - 1), y * 255 // (h - 1), np.full_like(x, 60)], -1)
    return np.clip(base + rng.integers(-10, 10, base.shape), 0, 255).astype(np.uint8)


def build_odd_folder(root: Path) -> dict[str, str]:
    """An ImageFolder with good, odd-but-valid and bad inputs; returns {relpath: reason} for
    the inputs that must be skipped."""
    cat, dog, val = root / "train" / "cat", root / "train" / "dog", root / "val" / "cat"
    for d in (cat, dog, val, root / "val" / "dog"):
        d.mkdir(parents=True)
    for i in range(3):
        (cat / f"good{i}.jpg").write_bytes(_jpeg(_picture(40, 56, i)))
        (dog / f"good{i}.png").write_bytes(_jpeg(_picture(48, 40, 10 + i)))  # JPEG named .png
    Image.fromarray(_picture(40, 40, 3)).convert("CMYK").save(cat / "cmyk.jpg", quality=95)
    rgba = np.dstack([_picture(40, 40, 4), np.full((40, 40), 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(cat / "rgba.png")
    Image.fromarray(np.arange(40 * 40, dtype=np.uint16).reshape(40, 40) * 40).save(
        dog / "grey16.png"
    )
    exif = Image.Exif()
    exif[0x0112] = 6
    (dog / "rotated.jpg").write_bytes(_jpeg(_picture(32, 64, 5), exif=exif.tobytes()))
    data = _jpeg(_picture(40, 40, 6))
    (cat / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (cat / "empty.jpg").write_bytes(b"")
    (dog / "notes.jpg").write_text("not an image at all")
    Image.new("RGB", (1, 1)).save(dog / "dot.png")
    Image.new("RGB", (300, 200)).save(dog / "bomb.png")  # 60,000 px > the test's limit
    (dog / "dangling.jpg").symlink_to(root / "gone.jpg")
    for i, d in enumerate((val, root / "val" / "dog", root / "val" / "bird")):
        d.mkdir(exist_ok=True)
        (d / "v.jpg").write_bytes(_jpeg(_picture(40, 40, 20 + i)))
    # Entries the folder scan leaves out, each listed with its reason: a hidden name that looks
    # like an image, a dot folder (not a class), a class folder that is a symlink leading outside
    # --root, a file that is not an image by its name.
    (cat / "..jpg").write_bytes(_jpeg(_picture(40, 40, 30)))
    (root / "train" / ".thumbnails").mkdir()
    ((root / "train" / ".thumbnails") / "t.jpg").write_bytes(_jpeg(_picture(40, 40, 31)))
    elsewhere = root.parent / "elsewhere" / "bird"
    elsewhere.mkdir(parents=True)
    (elsewhere / "b.jpg").write_bytes(_jpeg(_picture(40, 40, 32)))
    (root / "train" / "bird").symlink_to(elsewhere)
    (dog / "notes.txt").write_text("not an image name")
    return {
        "train/cat/truncated.jpg": "truncated",
        "train/cat/empty.jpg": "empty-file",
        "train/dog/notes.jpg": "not-an-image",
        "train/dog/dot.png": "too-small",
        "train/dog/bomb.png": "decompression-bomb",
        "train/dog/dangling.jpg": "unreadable",
        "train/cat/..jpg": "hidden",
        "train/.thumbnails": "hidden",
        "train/bird": "outside-root",
        "train/dog/notes.txt": "not-an-image-name",
    }


SCANNED_OUT = 4  # entries of build_odd_folder that the folder scan itself leaves out


def test_bad_inputs_are_skipped_with_reasons(tmp_path, tiny_dpt_dir, capfd):
    bad = build_odd_folder(tmp_path / "folder")
    cfg = tiny_config(
        tmp_path / "folder",
        "data.max_image_pixels=50000",
        "data.resize_short=32",
        depth=str(tiny_dpt_dir),
    )
    with pytest.warns(CardWarning, match=r"train/bird has no images .*symlink outside --root"):
        art = fmt.open_shards(preprocess.run(cfg, str(tmp_path / "out")).path)
    skipped = art.extra["splits"]["train"]["skipped"]
    assert skipped["count"] == len(bad)
    assert {x["relpath"]: x["reason"].split(":")[0] for x in skipped["items"]} == bad
    assert "warning: skipped 10 of 20 train inputs" in capfd.readouterr().err
    samples = {s.meta["relpath"]: s for s in fmt.iter_samples(art, "train")}
    assert len(samples) == 16 - (len(bad) - SCANNED_OUT) == art.split_size("train")
    assert art.classes == ["bird", "cat", "dog"]  # the symlinked class exists, without images
    assert art.split_size("val") == 3 and artifacts.verify(art.path) == []
    assert samples["train/dog/rotated.jpg"].meta["orig_hw"] == [64, 32]  # EXIF turned it tall
    assert samples["train/dog/rotated.jpg"].image.shape == (64, 32, 3)
    assert samples["train/cat/good0.jpg"].image.shape == (32, 45, 3)  # 40x56 -> short side 32
    rgba = samples["train/cat/rgba.png"].image.astype(int)  # half-transparent over white
    assert rgba.mean() > _picture(40, 40, 4).mean() + 40
    grey = samples["train/dog/grey16.png"].image.astype(int)
    assert grey[..., 0].max() - grey[..., 0].min() > 200  # 16-bit range scaled, not clipped
    cmyk = samples["train/cat/cmyk.jpg"].image.astype(int)
    assert np.abs(cmyk.mean((0, 1)) - _picture(40, 40, 3).mean((0, 1))).max() < 8


# --- resume after kill -9, and torchrun -----------------------------------------------------


@pytest.mark.slow
def test_kill_minus_nine_then_resume(tmp_path):
    card = write_synthetic_card(
        tmp_path, "resume-synthetic", n_train_per_class=30, n_val_per_class=2
    )
    out = tmp_path / "out"
    args = [
        "preprocess",
        "--card",
        str(card),
        "--depth",
        "oracle",
        "--out",
        str(out),
        "--set",
        "data.shard_size=10",
        "--set",
        "data.num_workers=1",
        "--set",
        "device=cpu",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "daat.cli", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob("*/train/*.json")):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = sorted(out.glob("*/train/*.json"))
    assert done, "no shard landed before the deadline"
    art_dir = done[0].parents[1]
    assert json.loads((art_dir / "manifest.json").read_text())["status"] == "incomplete"
    kept = {p: p.stat().st_mtime_ns for p in done}
    assert len(list(art_dir.glob("train/*.tar"))) < 30, "the run finished before the kill"
    result = daat_cli(*args)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(art_dir)
    art = fmt.open_shards(art_dir)
    keys = all_keys(art)
    assert len(keys) == len(set(keys)) == 300 + 20
    assert art.split_size("train") == 300 and artifacts.verify(art_dir) == []
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # finished shards were kept
    assert not list(art_dir.rglob("*.tmp"))


@pytest.mark.slow
def test_torchrun_two_ranks_match_one_process(tmp_path, tiny_card, tiny_shards):
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "daat.cli",
        "preprocess",
        "--card",
        str(tiny_card),
        "--depth",
        "oracle",
        "--out",
        str(out),
        "--set",
        "data.shard_size=8",
        "--set",
        "data.num_workers=0",
        "--set",
        "depth.batch_size=16",
        "--set",
        "device=cpu",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    path = Path(result.stdout.strip().splitlines()[-1])
    assert path.name == tiny_shards.path.name  # same content key as the single-process run
    art = fmt.open_shards(path)
    assert sorted(all_keys(art)) == sorted(all_keys(tiny_shards))
    # each shard is byte-identical to the one a single process wrote
    ours, theirs = art.manifest["files"], tiny_shards.manifest["files"]
    assert {k: v["sha256"] for k, v in ours.items() if k.endswith(".tar")} == {
        k: v["sha256"] for k, v in theirs.items() if k.endswith(".tar")
    }
    assert artifacts.verify(path) == []
    shutil.rmtree(out)
