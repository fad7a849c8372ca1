"""Decode one input image robustly into the RGB uint8 array that preprocess stores.

Every way an input can be bad ends in ``BadImage`` with a short reason code (``empty-file``,
``unreadable``, ``not-an-image``, ``truncated``, ``corrupt``, ``decompression-bomb``, ``too-small``,
``unsupported-mode``) so preprocess can skip it, record why, and go on. Orientation (EXIF), colour
modes (CMYK, palettes, alpha, 16-bit and float greyscale) and the one resize happen here.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from daat.errors import DataError

# The one resampling filter for stored images (PIL's resize is antialiased when it shrinks).
RESAMPLE = Image.Resampling.BICUBIC
RESAMPLE_NAME = "PIL bicubic (antialiased)"
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N"}


class BadImage(DataError):
    """An input that cannot become a stored image; ``reason`` is a short code, ``detail`` says
    why. Preprocess records it and skips the input; it never stops a run."""

    def __init__(self, path: str, reason: str, detail: str):
        super().__init__(f"{path}: {reason}: {detail}")
        self.path = path
        self.reason = reason
        self.detail = detail

    @property
    def record(self) -> str:
        """The one-line reason written to the manifest."""
        return f"{self.reason}: {self.detail}"


@dataclass(frozen=True)
class Geometry:
    """How an (h, w) input becomes the stored image: resize to (rh, rw), then crop a box."""

    rh: int
    rw: int
    top: int
    left: int
    height: int
    width: int

    @property
    def resized(self) -> tuple[int, int]:
        return self.rh, self.rw

    @property
    def needs_crop(self) -> bool:
        return (self.height, self.width) != (self.rh, self.rw)


@dataclass
class DecodedImage:
    """A stored-size RGB image plus the facts preprocess writes into the sample's json."""

    image: Image.Image
    orig_hw: tuple[int, int]
    notes: list[str] = field(default_factory=list)


def stored_geometry(h: int, w: int, resize_short: int, center_crop: bool) -> Geometry:
    """Short side to ``resize_short`` (long side rounded, aspect kept), then the optional centre
    square crop. Shared by images and by the oracle depth so both land on the same pixel grid."""
    if h <= 0 or w <= 0 or resize_short <= 0:
        raise ValueError(f"bad geometry request: {h}x{w} -> short side {resize_short}")
    if h <= w:
        rh, rw = resize_short, max(1, round(w * resize_short / h))
    else:
        rh, rw = max(1, round(h * resize_short / w)), resize_short
    if not center_crop:
        return Geometry(rh, rw, 0, 0, rh, rw)
    return Geometry(
        rh, rw, (rh - resize_short) // 2, (rw - resize_short) // 2, resize_short, resize_short
    )


def apply_geometry(img: Image.Image, geo: Geometry) -> Image.Image:
    if img.size != (geo.rw, geo.rh):
        img = img.resize((geo.rw, geo.rh), RESAMPLE)
    if geo.needs_crop:
        img = img.crop((geo.left, geo.top, geo.left + geo.width, geo.top + geo.height))
    return img


@contextlib.contextmanager
def _bomb_limit(max_pixels: int) -> Iterator[None]:
    """PIL's own bomb guard at our limit, with its warning turned into an error."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def read_bytes(path: str | os.PathLike) -> bytes:
    name = str(path)
    try:
        if os.stat(path).st_size == 0:
            raise BadImage(name, "empty-file", "0 bytes")
        with open(path, "rb") as f:
            data = f.read()
    except BadImage:
        raise
    except OSError as e:
        raise BadImage(name, "unreadable", f"{type(e).__name__}: {e.strerror or e}") from e
    if not data:
        raise BadImage(name, "empty-file", "0 bytes")
    return data


def _open_and_load(
    data: bytes, name: str, max_pixels: int, draft_side: int | None
) -> tuple[Image.Image, tuple[int, int]]:
    """The fully decoded image and the file's own (w, h) (before any JPEG draft reduction)."""
    with _bomb_limit(max_pixels):
        try:
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise BadImage(
                    name,
                    "decompression-bomb",
                    f"{w}x{h} = {w * h} pixels > data.max_image_pixels {max_pixels}",
                )
            if draft_side and img.format == "JPEG" and min(w, h) >= 2 * draft_side:
                # Let libjpeg shrink by 1/2..1/8 in the DCT while keeping both sides >= the
                # target, so huge photos decode fast; the bicubic resize after does the rest.
                img.draft(img.mode, (draft_side, draft_side))
            img.load()  # force the full decode: truncation shows here, not in training
        except BadImage:
            raise
        except UnidentifiedImageError as e:
            raise BadImage(name, "not-an-image", "not a format PIL can identify") from e
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise BadImage(name, "decompression-bomb", str(e)) from e
        except MemoryError:
            raise
        except OSError as e:
            text = str(e)
            reason = "truncated" if "truncated" in text.lower() else "corrupt"
            raise BadImage(name, reason, text) from e
        except Exception as e:  # noqa: BLE001 - PIL plugins raise many types on corrupt data
            raise BadImage(name, "corrupt", f"{type(e).__name__}: {e}") from e
    return img, (w, h)


def _oriented(img: Image.Image, notes: list[str]) -> Image.Image:
    try:
        return ImageOps.exif_transpose(img)
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - broken EXIF must not cost the image itself
        notes.append(f"exif orientation ignored ({type(e).__name__}: {e})")
        return img


def _scale_to_u8(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    scaled = (arr.astype(np.float64) - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _grey_to_u8(img: Image.Image, name: str, notes: list[str]) -> np.ndarray:
    """Deep greyscale (16-bit, 32-bit int, float) to 8 bits by scaling the range, never clipping."""
    arr = np.asarray(img)
    if img.mode in _SIXTEEN_BIT:
        return _scale_to_u8(arr, 0, 65535)
    if img.mode == "I":
        lo, hi = int(arr.min()), int(arr.max())
        if lo >= 0 and hi <= 65535:
            return _scale_to_u8(arr, 0, 65535)  # how PIL opens 16-bit PNG/TIFF data
        notes.append(f"32-bit range [{lo}, {hi}] min-max scaled")
        return _scale_to_u8(arr, lo, hi)
    if not np.isfinite(arr).all():
        raise BadImage(name, "corrupt", "float image has NaN or infinite pixels")
    lo, hi = float(arr.min()), float(arr.max())
    if lo >= 0.0 and hi <= 1.0:
        return _scale_to_u8(arr, 0.0, 1.0)
    notes.append(f"float range [{lo:.4g}, {hi:.4g}] min-max scaled")
    return _scale_to_u8(arr, lo, hi)


def to_rgb(img: Image.Image, name: str = "<image>", notes: list[str] | None = None) -> Image.Image:
    """Any PIL mode to 8-bit RGB. Transparency is composited over white (what a viewer shows),
    deep greyscale is range-scaled (PIL's own convert would clip 16-bit values to 255)."""
    notes = [] if notes is None else notes
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in _SIXTEEN_BIT or mode in ("I", "F"):
        return Image.fromarray(_grey_to_u8(img, name, notes), "L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    try:
        return img.convert("RGB")
    except (ValueError, OSError) as e:
        raise BadImage(name, "unsupported-mode", f"cannot convert mode {mode} to RGB: {e}") from e


def decode_file(
    path: str | os.PathLike, *, resize_short: int, center_crop: bool, max_pixels: int, min_side: int
) -> DecodedImage:
    """Read, fully decode, orient, convert and resize one input; raises ``BadImage``."""
    name = str(path)
    data = read_bytes(path)
    img, (orig_w, orig_h) = _open_and_load(data, name, max_pixels, resize_short)
    notes: list[str] = []
    before = img.size
    img = _oriented(img, notes)
    if before[0] != before[1] and img.size == (before[1], before[0]):
        orig_w, orig_h = orig_h, orig_w  # a 90-degree EXIF rotation swaps the sides
    if min(orig_w, orig_h) < min_side:
        raise BadImage(
            name, "too-small", f"{orig_w}x{orig_h}, short side < data.min_image_side {min_side}"
        )
    rgb = to_rgb(img, name, notes)
    geo = stored_geometry(rgb.height, rgb.width, resize_short, center_crop)
    return DecodedImage(apply_geometry(rgb, geo), (orig_h, orig_w), notes)


def decode_array(
    rgb: np.ndarray, *, resize_short: int, center_crop: bool
) -> tuple[Image.Image, Geometry]:
    """A rendered RGB uint8 array (synthetic data) to the stored image, with the geometry used so
    the renderer's depth can be resized onto the same grid."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected uint8 HxWx3, got {rgb.dtype} {rgb.shape}")
    geo = stored_geometry(rgb.shape[0], rgb.shape[1], resize_short, center_crop)
    return apply_geometry(Image.fromarray(rgb, "RGB"), geo), geo


JPEG_SUBSAMPLING = "4:4:4"  # full chroma: at 64-256 px, 4:2:0 visibly blurs colour texture


def encode_jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, subsampling=JPEG_SUBSAMPLING)
    return buf.getvalue()


def decode_jpeg_bytes(data: bytes) -> np.ndarray:
    """Stored JPEG back to RGB uint8 HxWx3 (no size limits: we wrote it)."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        if img.mode != "RGB":
            img = img.convert("RGB")
        return np.asarray(img).copy()
