"""Robust decoding of one input image (pipeline/images.py): every bad case gets its reason code,
every odd-but-valid case becomes the right RGB image, and the one resize is what it says."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from daat.pipeline import augment, images

LIMITS = dict(resize_short=16, center_crop=False, max_pixels=10_000, min_side=8)


def decode(path, **kw):
    return images.decode_file(path, **{**LIMITS, **kw})


def reason(path, **kw) -> str:
    with pytest.raises(images.BadImage) as err:
        decode(path, **kw)
    assert str(path) in str(err.value)
    return err.value.reason


def jpeg_bytes(arr: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=95, **kw)
    return buf.getvalue()


def ramp(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack(
        [x * 255 // max(1, w - 1), y * 255 // max(1, h - 1), np.full_like(x, 90)], -1
    ).astype(np.uint8)


# --- bad inputs -----------------------------------------------------------------------------


def test_truncated_jpeg(tmp_path):
    data = jpeg_bytes(ramp(40, 60))
    (tmp_path / "t.jpg").write_bytes(data[:-2])  # only the end-of-image marker is missing
    (tmp_path / "h.jpg").write_bytes(data[: len(data) // 2])
    assert reason(tmp_path / "t.jpg") == "truncated"
    assert reason(tmp_path / "h.jpg") == "truncated"


def test_zero_byte_and_text_and_missing(tmp_path):
    (tmp_path / "z.jpg").write_bytes(b"")
    (tmp_path / "t.jpg").write_text("this is not an image\n")
    assert reason(tmp_path / "z.jpg") == "empty-file"
    assert reason(tmp_path / "t.jpg") == "not-an-image"
    assert reason(tmp_path / "gone.jpg") == "unreadable"


def test_too_small(tmp_path):
    Image.new("RGB", (1, 1)).save(tmp_path / "one.png")
    Image.new("RGB", (7, 30)).save(tmp_path / "thin.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    assert reason(tmp_path / "one.png") == "too-small"
    assert reason(tmp_path / "thin.png") == "too-small"
    assert decode(tmp_path / "ok.png").image.size == (16, 16)


def test_decompression_bomb_by_config_limit(tmp_path):
    Image.new("RGB", (120, 100)).save(tmp_path / "big.png")  # 12,000 px > 10,000
    assert reason(tmp_path / "big.png") == "decompression-bomb"
    assert reason(tmp_path / "big.png", max_pixels=5_000) == "decompression-bomb"  # PIL's 2x error
    assert decode(tmp_path / "big.png", max_pixels=12_000).orig_hw == (100, 120)
    assert Image.MAX_IMAGE_PIXELS != 10_000  # the global limit is restored


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file(tmp_path):
    path = tmp_path / "locked.jpg"
    path.write_bytes(jpeg_bytes(ramp(20, 20)))
    path.chmod(0)
    try:
        assert reason(path) == "unreadable"
    finally:
        path.chmod(0o644)


def test_unreadable_even_as_root(tmp_path):
    (tmp_path / "dir.jpg").mkdir()  # an "image" that cannot be opened for reading
    (tmp_path / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    assert reason(tmp_path / "dir.jpg") == "unreadable"
    assert reason(tmp_path / "dangling.jpg") == "unreadable"


def test_corrupt_png_body(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(ramp(30, 30)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[60:80] = b"\x00" * 20  # inside the IDAT stream
    (tmp_path / "c.png").write_bytes(bytes(data))
    assert reason(tmp_path / "c.png") in {"corrupt", "truncated"}


# --- odd but valid inputs -------------------------------------------------------------------


def test_exif_rotation_is_applied(tmp_path):
    arr = ramp(20, 40)  # wide: red grows left -> right
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    (tmp_path / "r.jpg").write_bytes(jpeg_bytes(arr, exif=exif.tobytes()))
    out = decode(tmp_path / "r.jpg", resize_short=20)
    assert out.orig_hw == (40, 20) and out.image.size == (20, 40)  # displayed tall
    stored = np.asarray(out.image).astype(int)
    # after a 90 CW turn the old left column is the top row: red grows top -> bottom
    assert stored[-1, :, 0].mean() - stored[0, :, 0].mean() > 200


def test_cmyk_jpeg_becomes_the_same_colours(tmp_path):
    rgb = ramp(24, 24)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.jpg", quality=98)
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    out = np.asarray(decode(tmp_path / "c.jpg", resize_short=24).image).astype(int)
    assert np.abs(out - rgb).mean() < 6


def test_alpha_is_composited_over_white(tmp_path):
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, :5, 3] = 255  # left half opaque red-ish, right half fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = np.asarray(decode(tmp_path / "a.png", resize_short=10, min_side=1).image)
    assert out[:, :5].tolist() == [[[200, 0, 0]] * 5] * 10
    assert out[:, 5:].tolist() == [[[255, 255, 255]] * 5] * 10
    la = Image.fromarray(rgba[..., [0, 3]], "LA")
    la.save(tmp_path / "la.png")
    out = np.asarray(decode(tmp_path / "la.png", resize_short=10, min_side=1).image)
    assert out[0, 0].tolist() == [200] * 3 and out[0, 9].tolist() == [255] * 3


def test_palette_with_transparency(tmp_path):
    img = Image.new("P", (10, 10), 1)
    img.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    img.info["transparency"] = 0
    img.paste(0, (0, 0, 5, 10))
    img.save(tmp_path / "p.png", transparency=0)
    out = np.asarray(decode(tmp_path / "p.png", resize_short=10, min_side=1).image)
    assert out[0, 0].tolist() == [255, 255, 255] and out[0, 9].tolist() == [10, 20, 30]


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    grey = np.full((12, 12), 32768, np.uint16)  # half of the 16-bit range
    grey[:, :6] = 65535
    Image.fromarray(grey).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    out = np.asarray(decode(tmp_path / "g16.png", resize_short=12).image)
    assert out[0, 0].tolist() == [255] * 3
    assert out[0, -1].tolist() == [128] * 3  # 32768 * 255 / 65535 = 127.5 -> 128; PIL clips to 255


def test_float_grey_in_unit_range(tmp_path):
    arr = np.tile(np.linspace(0, 1, 16, dtype=np.float32), (16, 1))
    Image.fromarray(arr, "F").save(tmp_path / "f.tif")
    out = np.asarray(decode(tmp_path / "f.tif", resize_short=16).image)
    assert out[0, 0, 0] == 0 and out[0, -1, 0] == 255 and out[0, 8, 0] == round(8 / 15 * 255)


def test_greyscale_and_bilevel(tmp_path):
    Image.fromarray(np.full((9, 9), 77, np.uint8)).save(tmp_path / "l.png")
    Image.new("1", (9, 9), 1).save(tmp_path / "b.png")
    assert np.asarray(decode(tmp_path / "l.png", resize_short=9).image)[4, 4].tolist() == [77] * 3
    assert np.asarray(decode(tmp_path / "b.png", resize_short=9).image)[4, 4].tolist() == [255] * 3


# --- geometry -------------------------------------------------------------------------------


def test_stored_geometry_resize_short_and_crop():
    g = images.stored_geometry(300, 400, 64, center_crop=False)
    assert (g.rh, g.rw, g.height, g.width, g.top, g.left) == (64, 85, 64, 85, 0, 0)  # 85.33
    g = images.stored_geometry(500, 200, 64, center_crop=True)
    assert (g.rh, g.rw) == (160, 64) and (g.top, g.left, g.height, g.width) == (48, 0, 64, 64)


def test_resize_is_applied_once_and_exactly(tmp_path):
    Image.fromarray(ramp(30, 45)).save(tmp_path / "x.png")
    out = decode(tmp_path / "x.png", resize_short=20)
    expected = Image.fromarray(ramp(30, 45)).resize((30, 20), images.RESAMPLE)
    assert out.image.size == (30, 20) and out.orig_hw == (30, 45)
    assert np.array_equal(np.asarray(out.image), np.asarray(expected))
    same = decode(tmp_path / "x.png", resize_short=30)
    assert np.array_equal(np.asarray(same.image), ramp(30, 45))  # no resize at the target size


def test_large_jpeg_draft_keeps_the_short_side(tmp_path):
    (tmp_path / "big.jpg").write_bytes(jpeg_bytes(ramp(200, 300)))
    out = decode(tmp_path / "big.jpg", resize_short=40, max_pixels=10**6)
    assert out.image.size == (60, 40) and out.orig_hw == (200, 300)


def test_rrc_box_stays_inside_and_respects_scale():
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = augment.rrc_box(rng, 48, 80, (0.3, 1.0))
        assert 0 <= top and top + h <= 48 and 0 <= left and left + w <= 80
        assert 0.3 * 48 * 80 * 0.8 <= h * w <= 48 * 80
    assert augment.center_box(48, 80) == (0, 16, 48, 48)
    assert augment.center_box(100, 100, 0.875) == (6, 6, 88, 88)
