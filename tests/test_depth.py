"""Depth models through the real transformers loading path, offline, with tiny random models."""

import json

import pytest
import torch
import torch.nn.functional as F

import daat.depth as depth_mod
from daat.depth import (
    ORACLE,
    DepthModelError,
    OracleDepthError,
    Preprocessing,
    is_oracle,
    load_depth_model,
    restore_size,
)
from daat.errors import DaatError
from daat.tiny_models import save_tiny_depth_anything, save_tiny_dpt, save_tiny_dpt_dinov2

KINDS = ("dpt", "dpt_hybrid", "dpt_dinov2", "depth_anything")
SIZES = ((64, 64), (48, 80), (37, 53))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # These nets are tiny: with other test runs sharing the CPU, OpenMP workers spin-waiting on
    # each other make a 2-thread forward ~30x slower than a 1-thread one.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_depth")
    return {
        "dpt": save_tiny_dpt(root / "dpt"),
        "dpt_hybrid": save_tiny_dpt(root / "dpt_hybrid", hybrid=True),
        "dpt_dinov2": save_tiny_dpt_dinov2(root / "dpt_dinov2"),
        "depth_anything": save_tiny_depth_anything(root / "depth_anything"),
    }


@pytest.fixture(scope="module")
def models(model_dirs):
    return {
        kind: load_depth_model(str(path), torch.device("cpu")) for kind, path in model_dirs.items()
    }


@pytest.fixture(scope="module")
def hf(model_dirs):
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    return {
        kind: (
            AutoImageProcessor.from_pretrained(path),
            AutoModelForDepthEstimation.from_pretrained(path).eval(),
        )
        for kind, path in model_dirs.items()
    }


def smooth_images(n: int, height: int, width: int, seed: int) -> torch.Tensor:
    """Natural-ish images: bilinear upsampled noise in [0.15, 0.85], so bicubic overshoot never
    leaves [0,1] (and the processor's float path has nothing to clamp)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, max(2, height // 6), max(2, width // 6), generator=generator)
    return 0.15 + 0.7 * F.interpolate(
        coarse, size=(height, width), mode="bilinear", align_corners=False
    )


def noise_uint8(n: int, height: int, width: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, height, width), generator=generator, dtype=torch.uint8)


def processor_pixels(processor, images) -> torch.Tensor:
    return processor(images=list(images), return_tensors="pt").pixel_values


def grey_levels(spec: Preprocessing, diff: torch.Tensor) -> torch.Tensor:
    """A pixel_values difference expressed in 0-255 grey levels."""
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    return diff.abs() * std / spec.scale * 255


# ---------------------------------------------------------------- loading and shapes


def test_tiny_models_are_small_and_complete(model_dirs):
    for kind, path in model_dirs.items():
        names = {p.name for p in path.iterdir()}
        assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= names, kind
        total = sum(p.stat().st_size for p in path.iterdir())
        assert total < 3_000_000, (kind, total)


def test_processor_configs_mirror_the_real_checkpoints(model_dirs):
    def read(kind):
        return json.loads((model_dirs[kind] / "preprocessor_config.json").read_text())

    dpt = read("dpt_hybrid")
    assert dpt["keep_aspect_ratio"] is False and dpt["resample"] == 3
    assert dpt["image_mean"] == [0.5] * 3 and dpt["size"] == {"height": 64, "width": 64}
    da = read("depth_anything")
    assert da["keep_aspect_ratio"] is True and da["ensure_multiple_of"] == 14
    assert da["image_mean"] == [0.485, 0.456, 0.406] and da["resample"] == 3
    dino = read("dpt_dinov2")
    assert dino["do_resize"] is False and dino["do_rescale"] is False
    assert dino["do_pad"] is True and dino["size_divisor"] == 14
    assert dino["image_mean"] == [123.675, 116.28, 103.53]
    hybrid = json.loads((model_dirs["dpt_hybrid"] / "config.json").read_text())
    assert hybrid["is_hybrid"] is True and hybrid["backbone_config"]["model_type"] == "bit"


def test_attributes(models, model_dirs):
    assert models["dpt"].input_size == (64, 64)
    assert models["depth_anything"].input_size == (64, 64)
    assert models["dpt_dinov2"].input_size is None  # native resolution, padded to 14
    for kind, model in models.items():
        assert model.model_id.startswith(str(model_dirs[kind]) + "@"), model.model_id
        assert model.output_kind == (
            "metric_depth" if kind == "dpt_dinov2" else "relative_inverse_depth"
        )


def test_model_id_is_stable_and_tells_weights_apart(tmp_path, models, model_dirs):
    again = load_depth_model(str(model_dirs["dpt"]), "cpu")
    assert again.model_id == models["dpt"].model_id
    other = save_tiny_dpt(tmp_path / "dpt_seed1", seed=1)
    assert (
        load_depth_model(str(other), "cpu").model_id.split("@")[1]
        != models["dpt"].model_id.split("@")[1]
    )


@pytest.mark.parametrize("kind", KINDS)
def test_output_shape_is_each_inputs_size(models, kind):
    model = models[kind]
    for height, width in SIZES:
        out = model(smooth_images(2, height, width, seed=height))
        assert out.shape == (2, height, width) and out.dtype == torch.float32
        assert torch.isfinite(out).all()
    listed = model([smooth_images(1, h, w, seed=w)[0] for h, w in SIZES])
    assert [tuple(d.shape) for d in listed] == list(SIZES)


@pytest.mark.parametrize("kind", KINDS)
def test_batch_and_list_agree(models, kind):
    model = models[kind]
    images = smooth_images(3, 48, 80, seed=1)
    batch = model(images)
    listed = model(list(images))
    for i in range(3):
        torch.testing.assert_close(listed[i], batch[i], rtol=1e-4, atol=1e-5)
    # a mixed-size list equals running each image alone
    mixed = [smooth_images(1, h, w, seed=h + w)[0] for h, w in SIZES + ((48, 80),)]
    for image, depth in zip(mixed, model(mixed)):
        torch.testing.assert_close(depth, model(image[None])[0], rtol=1e-4, atol=1e-5)
    # the output depends on the image (a dead random net would make all of this vacuous)
    assert (batch[0] - batch[1]).abs().mean() > 1e-3 * batch.abs().mean()
    assert batch.std() > 0


# ---------------------------------------------------------------- preprocessing vs HF


@pytest.mark.parametrize("kind", KINDS)
def test_preprocessing_matches_hf_processor_on_uint8(models, hf, kind):
    # uint8 images through the HF processor, the same /255 as float through ours. Noise is the
    # worst case for bicubic overshoot (clamped between passes); floats are not re-quantised,
    # so up to ~1 grey level of difference remains.
    processor, _ = hf[kind]
    model = models[kind]
    for height, width in SIZES:
        images = noise_uint8(2, height, width, seed=height)
        ref = processor_pixels(processor, images)
        ours = model.preprocess(images.float() / 255)
        assert ours.shape == ref.shape
        levels = grey_levels(model.spec, ours - ref)
        assert levels.max() < 1.1, (kind, height, width, levels.max())
        assert levels.mean() < 0.45, (kind, height, width, levels.mean())


@pytest.mark.parametrize("kind", KINDS)
def test_preprocessing_matches_hf_processor_tightly_on_smooth_images(models, hf, kind):
    processor, _ = hf[kind]
    model = models[kind]
    for height, width in SIZES:
        images = smooth_images(2, height, width, seed=width)
        ref = processor_pixels(processor, images * 255)  # float 0..255, like decoded pixels
        torch.testing.assert_close(model.preprocess(images), ref, rtol=0, atol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_output_matches_hf_model_on_processor_pixels(models, hf, kind):
    processor, net = hf[kind]
    model = models[kind]
    for height, width in SIZES:
        images = smooth_images(2, height, width, seed=height * width)
        with torch.no_grad():
            raw = net(pixel_values=processor_pixels(processor, images * 255)).predicted_depth
        expected = restore_size(raw, model.spec, (height, width))
        torch.testing.assert_close(model(images), expected, rtol=1e-4, atol=1e-4)


def test_resize_rule_matches_transformers():
    from transformers.models.dpt.image_processing_dpt import get_resize_output_image_size

    for keep, multiple, target in (
        (True, 14, (518, 518)),
        (False, 1, (384, 384)),
        (True, 32, (384, 384)),
        (True, 14, (64, 64)),
    ):
        spec = Preprocessing(
            resize=target,
            keep_aspect_ratio=keep,
            multiple=multiple,
            mode="bicubic",
            scale=1.0,
            mean=(0, 0, 0),
            std=(1, 1, 1),
            pad_multiple=None,
        )
        for height, width in (
            (480, 640),
            (256, 341),
            (1080, 1920),
            (64, 64),
            (37, 53),
            (500, 333),
            (300, 7),
        ):
            ref = get_resize_output_image_size(
                torch.zeros(3, height, width), target, keep, multiple
            )
            if min(ref.height, ref.width) > 0:
                assert spec.resized_size(height, width) == (ref.height, ref.width)
            else:  # transformers rounds a very thin side to 0 (and then fails); we keep 1 multiple
                assert spec.resized_size(height, width) == (
                    max(ref.height, multiple),
                    max(ref.width, multiple),
                )


def test_upsampled_output_matches_hf_post_processing(models, hf):
    # Growing the model output back to a larger image is exactly HF's bicubic post-processing.
    processor, _ = hf["dpt"]
    raw = torch.rand(2, 64, 64) + 0.5
    ours = restore_size(raw, models["dpt"].spec, (96, 120))
    output = type("Output", (), {"predicted_depth": raw})()
    ref = processor.post_process_depth_estimation(output, target_sizes=[(96, 120)] * 2)
    torch.testing.assert_close(ours, torch.stack([r["predicted_depth"] for r in ref]))


def test_padding_is_cropped_from_the_output(models):
    # DINOv2-DPT: 37x53 is centre-padded to 42x56 (top 2, bottom 3, left 1, right 2). An output
    # at the padded size must come back as exactly its unpadded centre.
    spec = models["dpt_dinov2"].spec
    assert spec.padding(37, 53) == (2, 3, 1, 2)
    content = torch.rand(1, 37, 53)
    raw = torch.full((1, 42, 56), 100.0)
    raw[:, 2:39, 1:54] = content
    torch.testing.assert_close(restore_size(raw, spec, (37, 53)), content)
    pixels = models["dpt_dinov2"].preprocess(smooth_images(1, 37, 53, seed=3))
    assert pixels.shape[-2:] == (42, 56)
    assert pixels[..., :2, :].abs().max() == 0 and pixels[..., :, -2:].abs().max() == 0


# ---------------------------------------------------------------- gradients and inputs


def test_no_gradient_is_tracked_and_output_is_usable_as_a_target(models):
    model = models["depth_anything"]
    assert not model.model.training
    assert not any(p.requires_grad for p in model.model.parameters())
    images = smooth_images(2, 48, 48, seed=5).requires_grad_(True)
    depth = model(images)
    assert not depth.requires_grad and depth.grad_fn is None
    # inference-mode tensors would make this backward fail
    attention = torch.rand(2, 48 * 48, requires_grad=True)
    loss = 1 - F.cosine_similarity(attention, depth.flatten(1)).mean()
    loss.backward()
    assert attention.grad is not None and images.grad is None


def test_bad_inputs_are_refused(models):
    model = models["dpt"]
    with pytest.raises(TypeError, match="uint8"):
        model(noise_uint8(1, 32, 32, seed=0))
    with pytest.raises(ValueError, match=r"\[0,1\]"):
        model(torch.full((1, 3, 32, 32), 2.0))
    with pytest.raises(ValueError, match=r"\[B,3,H,W\]"):
        model(torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"images\[1\]"):
        model([torch.rand(3, 8, 8), torch.rand(8, 8)])
    assert model([]) == []
    assert model(torch.rand(0, 3, 8, 9)).shape == (0, 8, 9)


# ---------------------------------------------------------------- names and errors


def test_oracle_is_not_a_network():
    assert is_oracle(ORACLE) and is_oracle(" Oracle ") and not is_oracle("Intel/dpt-hybrid-midas")
    with pytest.raises(OracleDepthError, match="synthetic") as info:
        load_depth_model("oracle", "cpu")
    assert isinstance(info.value, DaatError)


def test_missing_local_directory_is_named(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(DepthModelError, match="no_such_model"):
        load_depth_model(str(missing), "cpu")


def test_incomplete_directory_and_file_are_named(tmp_path, model_dirs):
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text((model_dirs["dpt"] / "config.json").read_text())
    with pytest.raises(DepthModelError, match="preprocessor_config.json"):
        load_depth_model(str(partial), "cpu")
    weights = model_dirs["dpt"] / "model.safetensors"
    with pytest.raises(DepthModelError, match="is a file"):
        load_depth_model(str(weights), "cpu")


def test_unsupported_processor_is_refused(tmp_path, model_dirs):
    import shutil

    odd = tmp_path / "odd"
    shutil.copytree(model_dirs["dpt"], odd)
    config = json.loads((odd / "preprocessor_config.json").read_text())
    config["resample"] = 1  # LANCZOS
    (odd / "preprocessor_config.json").write_text(json.dumps(config))
    with pytest.raises(DepthModelError, match="resample"):
        load_depth_model(str(odd), "cpu")


@pytest.fixture
def hub_cache(tmp_path, model_dirs, monkeypatch):
    """A Hugging Face cache holding the tiny DPT as 'daat-test/tiny-dpt', laid out like a real
    download (the hub and transformers read these constants at call time)."""
    import huggingface_hub.constants as hub_constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--daat-test--tiny-dpt"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file in model_dirs["dpt"].iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return commit


def test_cached_hub_id_loads_without_network(hub_cache, monkeypatch):
    import huggingface_hub.constants as hub_constants

    for offline in (True, False):  # cached repos never touch the network either way
        monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", offline)
        model = load_depth_model("daat-test/tiny-dpt", "cpu")
        assert model.model_id == f"daat-test/tiny-dpt@{hub_cache[:12]}"
        assert model(smooth_images(1, 40, 50, seed=0)).shape == (1, 40, 50)


def test_missing_hub_id_offline_fails_fast_and_names_it(hub_cache, monkeypatch):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DepthModelError, match="daat-test/not-there.*HF_HUB_OFFLINE"):
        load_depth_model("daat-test/not-there", "cpu")
    # Not flagged offline: one quick hub request (no retry loop); without network it fails on
    # the connection, with network on the missing repo -- named either way.
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(DepthModelError, match="daat-test/not-there.*local directory"):
        load_depth_model("daat-test/not-there", "cpu")
    with pytest.raises(DepthModelError, match="valid hub id"):
        load_depth_model("not a/valid id!", "cpu")


# ---------------------------------------------------------------- accelerator / compile


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_bf16_channels_last_close_to_fp32(model_dirs, models, kind):
    gpu = load_depth_model(str(model_dirs[kind]), "cuda", amp=True, channels_last=True)
    images = smooth_images(4, 48, 80, seed=7)
    out = gpu(images.cuda())
    assert out.dtype == torch.float32 and out.device.type == "cuda"
    reference = models[kind](images)
    error = (out.cpu() - reference).abs().mean() / reference.abs().mean()
    assert error < 0.05, error


@pytest.mark.slow
def test_compiled_model_matches_eager(model_dirs, models):
    compiled = load_depth_model(str(model_dirs["dpt"]), "cpu", compile=True)
    images = smooth_images(2, 48, 80, seed=8)
    torch.testing.assert_close(compiled(images), models["dpt"](images), rtol=1e-3, atol=1e-3)


def test_large_batches_run_in_chunks_below_the_32_bit_index_limit(models, monkeypatch):
    """An H200 refused DPT-Hybrid at batch 128 x 384 px (channels_last upsample output of 2.4e9
    elements > INT_MAX): the network now runs in chunks of ``max_batch`` images, same result."""
    assert depth_mod.DepthModel.max_batch(384, 384) == 56  # 56 * 256 * 384**2 < 2**31 <= 57 * ...
    assert depth_mod.DepthModel.max_batch(16384, 16384) == 1
    model = models["dpt"]
    images = smooth_images(5, 48, 80, seed=2)
    whole = model(images)
    calls = []
    real = model._net
    monkeypatch.setattr(
        model, "_net", lambda **kw: calls.append(kw["pixel_values"].shape[0]) or real(**kw)
    )
    monkeypatch.setattr(depth_mod, "_MAX_ELEMENTS", 2 * 256 * 64 * 64)  # 2 images per call
    chunked = model(images)
    assert calls == [2, 2, 1]
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)
