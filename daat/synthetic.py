"""The embedded synthetic dataset: procedural 3-D scenes with exact ground-truth depth.

Each scene is one object (the class decides its 3-D shape) in front of a tilted, textured wall,
lit by a directional light (Lambert + ambient + a little specular, soft cast shadow on the wall).
Objects are signed distance functions, sphere-traced in numpy over all pixels at once; the wall is
intersected analytically. Depth is the camera-z coordinate of the surface each pixel's centre ray
hits: exact for the wall, within 1e-5 object units of the surface for object rays (a ray still
grazing the surface at the step limit counts as a hit within 1e-3, i.e. ~1/50 pixel of the
silhouette), and finite everywhere (the wall is tilted at most 35 degrees, so every ray meets it).
Images are anti-aliased along silhouettes; depth is not (it stays the pixel-centre ray's).

Everything is a pure function of (seed, label, size, texture): no global state, no I/O.
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass

import numpy as np

from daat.errors import DataError
from daat.shapes import BOUNDS, SDFS
from daat.textures import TEXTURES, Texture, albedo, sample_texture

RENDER_VERSION = 1  # bump whenever a change alters rendered pixels (it is part of the data key)
CLASSES: tuple[str, ...] = (
    "sphere",
    "cube",
    "cylinder",
    "cone",
    "torus",
    "pyramid",
    "capsule",
    "ellipsoid",
    "prism",
    "octahedron",
)
CUE_CONFLICT = "cue_conflict"  # val-like split: class i's shape wearing class j's spurious texture
SPLITS = ("train", "val", CUE_CONFLICT)
SPEC_KEYS = ("n_train_per_class", "n_val_per_class", "size", "spurious", "seed")
SPEC_DEFAULTS = {"spurious_rate": 0.9, "clutter": 1.0}
# Optional, not filled in when absent (so cards without it keep their resolved spec and data key):
# images per ordered (shape class, texture class) pair of the cue-conflict split.
SPEC_OPTIONAL = ("n_cue_conflict_per_pair",)
FOV_DEG = 45.0
_HIT_EPS = 1e-5  # the tracer stops when the SDF (object units) falls below this: depth tolerance
_GRAZE_EPS = 1e-3  # ...or, at the step limit, below this (grazing rays converge slowly)
_MAX_STEPS = 96
_SHADOW_STEPS = 24


@dataclass(frozen=True)
class SyntheticItem:
    split: str
    index: int
    label: int
    seed: int
    texture: int | None  # forced texture family of the object (spurious train items), else None
    clutter: float = 1.0  # contrast of the wall's texture: 0 = a plain wall, 1 = full pattern
    texture_class: int | None = None  # cue-conflict items: whose spurious texture it wears


@dataclass(frozen=True)
class Scene:
    shape: int  # index into CLASSES
    rotation: tuple[float, ...]  # 3x3 row-major, object-local -> camera
    scale: float
    centre: tuple[float, float, float]  # camera coordinates (x right, y up, z forward)
    light: tuple[float, float, float]  # unit direction towards the light
    ambient: float
    specular: float
    shininess: float
    texture: Texture  # on the object, in object coordinates (it moves with the object)
    wall_normal: tuple[float, float, float]  # unit, pointing away from the camera
    wall_offset: float  # the wall is {p : wall_normal . p = wall_offset}
    wall_texture: Texture


# --- scene sampling --------------------------------------------------------------------------


def _rot(axis: int, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    m = np.eye(3)
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    return m


# Pose each class so its characteristic outline shows: the torus faces the camera, the rest stand.
_BASE_POSE = {CLASSES.index("torus"): _rot(0, -np.pi / 2)}


def _check_label(label: int) -> None:
    if not isinstance(label, (int, np.integer)) or not 0 <= label < len(CLASSES):
        raise DataError(f"synthetic label must be an integer in [0, {len(CLASSES)}), got {label!r}")


def _check_texture(texture: int | None) -> None:
    if texture is not None and (
        not isinstance(texture, (int, np.integer)) or not 0 <= texture < len(TEXTURES)
    ):
        raise DataError(
            f"synthetic texture must be None or an integer in [0, {len(TEXTURES)}), got {texture!r}"
        )


def sample_scene(seed: int, label: int, texture: int | None = None, clutter: float = 1.0) -> Scene:
    """The scene parameters of (seed, label); ``texture`` forces the object's texture family;
    ``clutter`` scales the wall pattern's contrast (0: plain wall, the object's shape stands
    out)."""
    _check_label(label)
    _check_texture(texture)
    rng = np.random.default_rng(seed)
    # Every draw happens whatever the label/texture, so forcing a texture changes nothing else.
    family = int(rng.integers(len(TEXTURES)))
    spin, pitch, roll = rng.uniform(0, 2 * np.pi), rng.uniform(-0.8, 0.3), rng.uniform(-0.4, 0.4)
    rotation = _rot(2, roll) @ _rot(0, pitch) @ _BASE_POSE.get(label, np.eye(3)) @ _rot(1, spin)
    scale = float(rng.uniform(0.9, 1.2))
    z = float(rng.uniform(3.0, 4.4))
    room = max(z * np.tan(np.radians(FOV_DEG / 2)) - scale * BOUNDS[label], 0.0)
    x, y = (float(v) * room for v in rng.uniform(-0.6, 0.6, 2))
    light = np.array([rng.uniform(-1, 1), rng.uniform(-0.1, 1.0), -rng.uniform(0.5, 1.5)])
    light /= np.linalg.norm(light)
    ambient, specular = float(rng.uniform(0.12, 0.3)), float(rng.uniform(0.0, 0.35))
    shininess = float(rng.uniform(8, 40))
    tex = sample_texture(rng, family if texture is None else int(texture), 1.0, 1.0)
    tilt, azimuth = rng.uniform(0, np.radians(35)), rng.uniform(0, 2 * np.pi)
    normal = (
        float(np.sin(tilt) * np.cos(azimuth)),
        float(np.sin(tilt) * np.sin(azimuth)),
        float(np.cos(tilt)),
    )
    # The wall clears the object's bounding sphere by a random gap: never intersects it.
    offset = float(np.dot(normal, (x, y, z)) + scale * BOUNDS[label] + rng.uniform(0.4, 3.5))
    wall_tex = sample_texture(rng, int(rng.integers(len(TEXTURES))), 0.5, 0.55 * clutter)
    return Scene(
        int(label),
        tuple(float(v) for v in rotation.ravel()),
        scale,
        (x, y, z),
        tuple(float(v) for v in light),
        ambient,
        specular,
        shininess,
        tex,
        normal,
        offset,
        wall_tex,
    )


# --- rendering -------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _camera_rays(size: int) -> np.ndarray:
    """Unit ray directions through the pixel centres, row-major, row 0 at the top."""
    half = np.tan(np.radians(FOV_DEG / 2))
    coords = ((np.arange(size) + 0.5) / size * 2 - 1) * half
    u, v = np.meshgrid(coords, -coords)
    dirs = np.stack([u.ravel(), v.ravel(), np.ones(size * size)], axis=1)
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    dirs.setflags(write=False)
    return dirs


def _sphere_entry(o: np.ndarray, d: np.ndarray, radius: float):
    """Ray/sphere (about the origin) entry and exit distances and which rays cross it ahead."""
    b = np.einsum("ij,ij->i", o, d) if o.ndim == 2 else d @ o
    disc = b * b - (np.einsum("ij,ij->i", o, o) if o.ndim == 2 else o @ o) + radius * radius
    root = np.sqrt(np.maximum(disc, 0))
    crosses = (disc > 0) & (root - b > 0)
    return np.maximum(-b - root, 0), -b + root, crosses


def _trace(sdf, o: np.ndarray, d: np.ndarray, t: np.ndarray, t_end: np.ndarray):
    """Sphere-trace rays o + t d (one origin) from ``t`` until the SDF falls below _HIT_EPS or
    t passes ``t_end``. Returns (hit, t at the hit, closest approach dist/t, t there); the last
    two give missed rays their silhouette coverage."""
    n = t.shape[0]
    hit, t_hit = np.zeros(n, bool), np.zeros(n)
    near, t_near = np.full(n, np.inf), np.zeros(n)
    idx, best, t_best = np.arange(n), near.copy(), t_near.copy()
    dx, dy, dz = d[:, 0], d[:, 1], d[:, 2]
    for step in range(_MAX_STEPS):
        dist = sdf(o[0] + t * dx, o[1] + t * dy, o[2] + t * dz)
        ratio = dist / np.maximum(t, 1e-9)
        closer = ratio < best
        best, t_best = np.where(closer, ratio, best), np.where(closer, t, t_best)
        t = t + dist
        last = step == _MAX_STEPS - 1
        # A ray still creeping along a surface at the step limit is a grazing hit.
        done = dist < (_GRAZE_EPS if last else _HIT_EPS)
        live = ~done & (t < t_end) & (not last)
        if live.all():
            continue
        hit[idx[done]], t_hit[idx[done]] = True, t[done]
        gone = idx[~live]
        near[gone], t_near[gone] = best[~live], t_best[~live]
        idx, t, t_end, best, t_best = idx[live], t[live], t_end[live], best[live], t_best[live]
        dx, dy, dz = dx[live], dy[live], dz[live]
        if idx.size == 0:
            break
    return hit, t_hit, near, t_near


def _soft_shadow(sdf, o: np.ndarray, d: np.ndarray, t: np.ndarray, t_end: np.ndarray, k=6.0):
    """Light visibility in [0,1] along o + t d (penumbra from the closest approach)."""
    vis = np.ones(t.shape[0])
    for _ in range(_SHADOW_STEPS):
        dist = sdf(*(o[:, c] + t * d[c] for c in range(3)))
        vis = np.minimum(vis, np.where(t < t_end, k * dist / np.maximum(t, 1e-3), 1.0))
        t = t + np.maximum(dist, 0.02)
    return np.clip(vis, 0, 1)


def _normals(sdf, x, y, z, h: float = 1e-4) -> np.ndarray:
    g = np.zeros((x.shape[0], 3))
    for k in ((1, -1, -1), (-1, -1, 1), (-1, 1, -1), (1, 1, 1)):
        g += np.outer(sdf(x + h * k[0], y + h * k[1], z + h * k[2]), k)
    return g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)


def render_scene(scene: Scene, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Rasterise ``scene``: (uint8 [size,size,3] sRGB image, float32 [size,size] camera-z depth)."""
    dirs = _camera_rays(size)
    sdf, bound = SDFS[scene.shape], BOUNDS[scene.shape]
    rot, centre = np.array(scene.rotation).reshape(3, 3), np.array(scene.centre)
    origin = rot.T @ -centre / scene.scale  # the camera in object units
    local_dirs = dirs @ rot
    pixel = 2 * np.tan(np.radians(FOV_DEG / 2)) / size  # angular pixel width
    # Trace rays that pass within a pixel of the bounding sphere too: they get edge coverage.
    t0, t1, crosses = _sphere_entry(origin, local_dirs, bound + pixel * np.linalg.norm(origin))
    cand = np.flatnonzero(crosses)
    hit, t_hit, near, t_near = _trace(sdf, origin, local_dirs[cand], t0[cand], t1[cand])
    obj = cand[hit]

    t = scene.wall_offset / (dirs @ np.array(scene.wall_normal))
    t[obj] = scene.scale * t_hit[hit]
    depth = (t * dirs[:, 2]).astype(np.float32)

    colour = np.empty((size * size, 3))
    is_wall = np.ones(size * size, bool)
    is_wall[obj] = False
    colour[is_wall] = _shade_wall(scene, sdf, bound, rot, centre, dirs[is_wall] * t[is_wall, None])
    colour[obj] = _shade_object(
        scene, sdf, rot, origin + t_hit[hit, None] * local_dirs[obj], dirs[obj]
    )
    # Silhouette anti-aliasing: a missed ray passing within half a pixel of the object takes the
    # share of the pixel the object would cover. Depth stays that of the pixel-centre ray.
    cover = np.clip(0.5 - near / pixel, 0, 1)
    edge = ~hit & (cover > 0)
    if edge.any():
        rays, alpha = cand[edge], cover[edge, None]
        points = origin + t_near[edge, None] * local_dirs[rays]
        colour[rays] = (
            alpha * _shade_object(scene, sdf, rot, points, dirs[rays]) + (1 - alpha) * colour[rays]
        )
    image = np.clip(colour, 0, 1) ** (1 / 2.2)
    return ((image * 255 + 0.5).astype(np.uint8).reshape(size, size, 3), depth.reshape(size, size))


def _shade_object(scene: Scene, sdf, rot: np.ndarray, p: np.ndarray, dirs: np.ndarray):
    """Linear RGB of object points ``p`` (object units) seen along camera rays ``dirs``."""
    light = np.array(scene.light)
    n = _normals(sdf, p[:, 0], p[:, 1], p[:, 2]) @ rot.T
    half = light - dirs
    half /= np.linalg.norm(half, axis=1, keepdims=True)
    spec = scene.specular * np.maximum(np.einsum("ij,ij->i", n, half), 0) ** scene.shininess
    shade = scene.ambient + (1 - scene.ambient) * np.maximum(n @ light, 0)
    return albedo(scene.texture, p[:, 0], p[:, 1], p[:, 2]) * shade[:, None] + spec[:, None]


def _shade_wall(
    scene: Scene, sdf, bound: float, rot: np.ndarray, centre: np.ndarray, points: np.ndarray
) -> np.ndarray:
    normal, light = np.array(scene.wall_normal), np.array(scene.light)
    e1 = np.cross(normal, (0.0, 1.0, 0.0))
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(e1, normal)
    tex = scene.wall_texture
    # Wall texture lives in the wall's own 2-D coordinates; the third is pinned mid-cell.
    u, v = points @ e1, points @ e2
    wall = albedo(tex, u, v, np.full_like(u, tex.offset[2] + 0.5 / tex.freq))
    lit = max(float(-normal @ light), 0.0) * np.ones(len(points))
    local_o = (points - centre) @ rot / scene.scale
    local_l = light @ rot
    t0, t1, crosses = _sphere_entry(local_o, np.broadcast_to(local_l, local_o.shape), bound)
    ray = np.flatnonzero(crosses)
    if ray.size:
        lit[ray] *= _soft_shadow(sdf, local_o[ray], local_l, t0[ray], t1[ray])
    return wall * (scene.ambient + (1 - scene.ambient) * lit)[:, None]


def render(
    seed: int, label: int, size: int = 64, texture: int | None = None, clutter: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Scene ``seed`` of class ``label``: (uint8 HxWx3 image, float32 HxW depth along camera z)."""
    if not isinstance(size, (int, np.integer)) or size < 4:
        raise DataError(f"synthetic image size must be an integer >= 4, got {size!r}")
    return render_scene(sample_scene(seed, label, texture, clutter), int(size))


def render_item(item: SyntheticItem, size: int) -> tuple[np.ndarray, np.ndarray]:
    return render(item.seed, item.label, size, item.texture, item.clutter)


# --- the dataset -----------------------------------------------------------------------------


def validate_spec(spec: dict, where: str = "synthetic spec") -> dict:
    """The spec with defaults filled in; a missing, unknown or badly typed key is a DataError."""
    if not isinstance(spec, dict):
        raise DataError(f"{where}: expected a mapping, got {type(spec).__name__}")
    known = set(SPEC_KEYS) | set(SPEC_DEFAULTS) | set(SPEC_OPTIONAL)
    for key in spec:
        if key not in known:
            raise DataError(f"{where}: unknown key '{key}' (known: {', '.join(sorted(known))})")
    for key in SPEC_KEYS:
        if key not in spec:
            raise DataError(f"{where}: missing key '{key}'")
    out = {**spec, **{k: v for k, v in SPEC_DEFAULTS.items() if k not in spec}}
    for key, low in (("n_train_per_class", 0), ("n_val_per_class", 0), ("size", 4), ("seed", 0)):
        value = out[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise DataError(f"{where}: key '{key}' must be an integer >= {low}, got {value!r}")
    if not isinstance(out["spurious"], bool):
        raise DataError(f"{where}: key 'spurious' must be true or false, got {out['spurious']!r}")
    rate = out["spurious_rate"]
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
        raise DataError(f"{where}: key 'spurious_rate' must be a number in [0, 1], got {rate!r}")
    out["spurious_rate"] = float(rate)
    clutter = out["clutter"]
    if isinstance(clutter, bool) or not isinstance(clutter, (int, float)) or not 0 <= clutter <= 1:
        raise DataError(f"{where}: key 'clutter' must be a number in [0, 1], got {clutter!r}")
    out["clutter"] = float(clutter)
    pairs = out.get("n_cue_conflict_per_pair", 0)
    if not isinstance(pairs, int) or isinstance(pairs, bool) or pairs < 0:
        raise DataError(
            f"{where}: key 'n_cue_conflict_per_pair' must be an integer >= 0, got {pairs!r}"
        )
    if pairs and not out["spurious"]:
        raise DataError(
            f"{where}: key 'n_cue_conflict_per_pair' needs 'spurious: true' (the "
            f"cue-conflict split sets shapes against the textures spurious train ties "
            f"to classes)"
        )
    return out


def spurious_texture(label: int) -> int:
    """The texture family the spurious variant ties to class ``label`` (the one home of the tie)."""
    return label % len(TEXTURES)


def split_size(spec: dict, split: str) -> int:
    """How many items ``items(spec, split)`` makes."""
    if split == CUE_CONFLICT:
        return spec.get("n_cue_conflict_per_pair", 0) * len(cue_conflict_pairs())
    return spec[f"n_{split}_per_class"] * len(CLASSES)


def cue_conflict_pairs() -> list[tuple[int, int]]:
    """Every ordered (shape class i, texture class j != i), in split order: pair p has shape
    p % C, so every run of C consecutive items shows each shape once, and each run of C(C-1)
    items shows each pair once."""
    n = len(CLASSES)
    return [(p % n, (p % n + 1 + p // n) % n) for p in range(n * (n - 1))]


def item_seed(spec_seed: int, split: str, index: int) -> int:
    """A 64-bit scene seed unique to (spec seed, split, index): train and val never share one."""
    entropy = [spec_seed, zlib.crc32(split.encode()), index]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])


def items(spec: dict, split: str) -> list[SyntheticItem]:
    """The split's items, classes interleaved (labels 0,1,..,9,0,1,..) so every prefix is balanced.

    Spurious variant: in train, each object's texture family is forced to
    ``spurious_texture(label)`` with probability ``spurious_rate`` (otherwise random, as always in
    val). Its cue-conflict split (``n_cue_conflict_per_pair`` > 0) holds, for every ordered pair of
    classes i != j, that many scenes with the shape of class i (the label) wearing the texture
    family tied to class j (``texture_class``); see ``cue_conflict_pairs`` for the order."""
    spec = validate_spec(spec)
    if split not in SPLITS:
        raise DataError(f"synthetic split must be one of {SPLITS}, got '{split}'")
    if split == CUE_CONFLICT and not spec.get("n_cue_conflict_per_pair"):
        raise DataError(
            f"the synthetic '{CUE_CONFLICT}' split needs a spurious spec with "
            f"n_cue_conflict_per_pair > 0"
        )
    pairs = cue_conflict_pairs()
    out = []
    for index in range(split_size(spec, split)):
        label, seed = index % len(CLASSES), item_seed(spec["seed"], split, index)
        texture, texture_class = None, None
        if split == CUE_CONFLICT:
            label, texture_class = pairs[index % len(pairs)]
            texture = spurious_texture(texture_class)
        elif spec["spurious"] and split == "train":
            coin = np.random.default_rng([seed, 1]).random()
            texture = spurious_texture(label) if coin < spec["spurious_rate"] else None
        out.append(
            SyntheticItem(split, index, label, seed, texture, spec["clutter"], texture_class)
        )
    return out
