"""The synthetic dataset: exact depth, determinism, balance, the spurious variant, speed."""

import time

import numpy as np
import pytest

from daat import synthetic as S
from daat.errors import DataError

SPEC = {"n_train_per_class": 20, "n_val_per_class": 5, "size": 32, "spurious": False, "seed": 0}
PLAIN = S.Texture(
    S.TEXTURES.index("plain"),
    (0.5, 0.5, 0.5),
    (0.5, 0.5, 0.5),
    1.0,
    (0, 0, 0),
    tuple(np.eye(3).ravel()),
)


def scene(shape=0, scale=1.25, centre=(0.0, 0.0, 4.0), normal=(0.0, 0.0, 1.0), offset=9.0):
    return S.Scene(
        shape,
        tuple(np.eye(3).ravel()),
        scale,
        centre,
        (0.0, 0.0, -1.0),
        0.2,
        0.0,
        10.0,
        PLAIN,
        normal,
        offset,
        PLAIN,
    )


def pixel_rays(size):
    """Independent of the renderer: unit rays through pixel centres, row 0 at the top."""
    half = np.tan(np.radians(S.FOV_DEG / 2))
    c = ((np.arange(size) + 0.5) / size * 2 - 1) * half
    u, v = np.meshgrid(c, -c)
    d = np.stack([u, v, np.ones_like(u)], -1)
    return u, v, d / np.linalg.norm(d, axis=-1, keepdims=True)


def test_sphere_centre_pixel_depth_is_centre_z_minus_radius():
    # Odd size: the centre pixel's ray is the optical axis, which meets the sphere (radius
    # 0.8 object units x scale 1.25 = 1.0) at z = 4 - 1 = 3. The tracer stops once the SDF is
    # below _HIT_EPS object units, i.e. within scale*_HIT_EPS of the surface along the normal
    # (here the ray); float32 adds one ulp at 3.0 (2.4e-7).
    image, depth = S.render_scene(scene(), 65)
    assert depth.dtype == np.float32 and depth.shape == (65, 65)
    assert image.dtype == np.uint8 and image.shape == (65, 65, 3)
    assert abs(float(depth[32, 32]) - 3.0) <= 1.25 * S._HIT_EPS + 1e-6
    assert float(depth[0, 0]) == pytest.approx(9.0)  # the wall is the plane z = 9


def test_sphere_depth_matches_analytic_ray_sphere_intersection():
    size, s, c = 48, 1.1, np.array([0.35, -0.25, 4.2])
    radius = 0.8 * s
    _, depth = S.render_scene(scene(scale=s, centre=tuple(c)), size)
    _, _, d = pixel_rays(size)
    b = d @ c
    miss_dist = np.sqrt(np.maximum(c @ c - b * b, 0))  # ray line to sphere centre
    disc = b * b - (c @ c - radius**2)
    hit = disc > 0
    z_true = np.where(hit, (b - np.sqrt(np.maximum(disc, 0))) * d[..., 2], 9.0)
    rendered_hit = depth < 8.99  # the wall is at z = 9 everywhere (normal along the axis)
    # Hit/miss may only disagree for rays passing within the tracer's grazing tolerance
    # (_GRAZE_EPS object units = s * _GRAZE_EPS world) of the surface.
    disagree = hit != rendered_hit
    assert np.all(np.abs(miss_dist[disagree] - radius) <= s * S._GRAZE_EPS)
    assert disagree.sum() <= 4
    # Where both hit: the tracer stopped at most delta = s*_GRAZE_EPS outside the surface, and a
    # ray from such a point meets the sphere within the tangent length sqrt(2 R delta + delta^2).
    both = hit & rendered_hit
    delta = s * S._GRAZE_EPS
    err = np.abs(depth[both] - z_true[both])
    assert both.sum() > 200
    assert err.max() <= np.sqrt(2 * radius * delta + delta**2)
    assert np.median(err) <= s * S._HIT_EPS + 1e-6
    assert np.allclose(depth[~hit & ~disagree], 9.0, rtol=1e-6)


def test_tilted_wall_depth_is_a_plane():
    # For a plane n.p = k seen by a pinhole camera, 1/z is affine in the image coordinates.
    normal = np.array([0.3, -0.2, 1.0]) / np.linalg.norm([0.3, -0.2, 1.0])
    size = 40
    _, depth = S.render_scene(
        scene(centre=(0.0, 0.0, 4.0), scale=0.5, normal=tuple(normal), offset=7.0), size
    )
    u, v, _ = pixel_rays(size)
    wall = depth > 5.0  # the small sphere is nearer than z = 4.4
    a = np.stack([u[wall], v[wall], np.ones(wall.sum())], 1)
    coef, *_ = np.linalg.lstsq(a, 1 / depth[wall].astype(np.float64), rcond=None)
    assert np.abs(a @ coef - 1 / depth[wall]).max() < 1e-6
    assert np.allclose(coef, normal / 7.0, atol=1e-6)  # z = k / (n . (u, v, 1))


@pytest.mark.parametrize("label", range(len(S.CLASSES)))
def test_every_class_renders_an_object_in_front_of_the_wall(label):
    for seed in (3, 11):
        sc = S.sample_scene(seed, label)
        image, depth = S.render(seed, label, 48)
        assert np.isfinite(depth).all() and depth.min() > 0
        _, _, d = pixel_rays(48)
        wall_z = sc.wall_offset / (d @ np.array(sc.wall_normal)) * d[..., 2]
        assert np.all(depth <= wall_z * (1 + 1e-6))  # nothing is ever behind the wall
        in_front = depth < wall_z - 1e-3
        assert 0.03 < in_front.mean() < 0.6  # the object is in view, not filling the frame
        assert image[in_front].std() > 0 and image.std() > 5


def test_render_is_deterministic_and_seed_dependent():
    a_img, a_depth = S.render(123, 4, 32)
    b_img, b_depth = S.render(123, 4, 32)
    assert a_img.tobytes() == b_img.tobytes() and a_depth.tobytes() == b_depth.tobytes()
    c_img, c_depth = S.render(124, 4, 32)
    assert a_img.tobytes() != c_img.tobytes() and a_depth.tobytes() != c_depth.tobytes()


def test_forcing_a_texture_changes_only_the_object_texture_family():
    free = S.sample_scene(5, 2)
    for family in range(len(S.TEXTURES)):
        forced = S.sample_scene(5, 2, texture=family)
        assert forced.texture.family == family
        assert forced.texture.colour0 == free.texture.colour0
        assert (forced.rotation, forced.centre, forced.wall_texture) == (
            free.rotation,
            free.centre,
            free.wall_texture,
        )


@pytest.mark.parametrize("sdf, bound", list(zip(S.SDFS, S.BOUNDS)))
def test_sdfs_are_safe_distance_bounds_inside_their_bounding_sphere(sdf, bound):
    rng = np.random.default_rng(0)
    p = rng.uniform(-1.3, 1.3, (20000, 3))
    f = sdf(p[:, 0], p[:, 1], p[:, 2])
    inside = f < 0
    assert inside.mean() > 0.02  # a solid, not an empty set
    assert np.linalg.norm(p[inside], axis=1).max() <= bound + 1e-9
    # 1-Lipschitz: a sphere tracer never steps through the surface.
    q = p + rng.normal(scale=0.05, size=p.shape)
    g = sdf(q[:, 0], q[:, 1], q[:, 2])
    assert np.all(np.abs(f - g) <= np.linalg.norm(p - q, axis=1) * (1 + 1e-9) + 1e-12)


def test_items_are_balanced_interleaved_and_deterministic():
    train = S.items(SPEC, "train")
    assert len(train) == 20 * len(S.CLASSES)
    assert [it.label for it in train[:12]] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert np.bincount([it.label for it in train]).tolist() == [20] * len(S.CLASSES)
    assert [it.index for it in train] == list(range(len(train)))
    assert train == S.items(dict(SPEC), "train")
    assert all(it.texture is None for it in train)  # not spurious
    other_seed = S.items({**SPEC, "seed": 1}, "train")
    assert not {it.seed for it in train} & {it.seed for it in other_seed}


def test_train_and_val_never_share_a_scene():
    train, val = S.items(SPEC, "train"), S.items(SPEC, "val")
    assert len(val) == 5 * len(S.CLASSES)
    assert not {it.seed for it in train} & {it.seed for it in val}
    assert S.render_item(train[0], 32)[0].tobytes() != S.render_item(val[0], 32)[0].tobytes()


def test_spurious_variant_ties_texture_to_class_in_train_only():
    spec = {**SPEC, "n_train_per_class": 200, "n_val_per_class": 200, "spurious": True}
    n_fam = len(S.TEXTURES)

    def match_rate(split):
        its = S.items(spec, split)
        fams = [S.sample_scene(it.seed, it.label, it.texture).texture.family for it in its]
        return np.mean([f == it.label % n_fam for f, it in zip(fams, its)])

    # train: forced with p=0.9, else random (matching by chance 1/10): 0.9 + 0.1/10 = 0.91;
    # val: chance, 0.1. 2000 draws each: binomial sd < 0.007, so +-0.03 is > 4 sd.
    assert abs(match_rate("train") - (0.9 + 0.1 / n_fam)) < 0.03
    assert abs(match_rate("val") - 1 / n_fam) < 0.03
    assert all(it.texture is None for it in S.items(spec, "val"))
    # Same scenes as the plain variant apart from the texture.
    plain = S.items({**spec, "spurious": False}, "train")
    assert [it.seed for it in plain] == [it.seed for it in S.items(spec, "train")]


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"colour": 1}, "unknown key 'colour'"),
        ({"seed": -1}, "'seed'"),
        ({"size": "64"}, "'size'"),
        ({"spurious": "yes"}, "'spurious'"),
        ({"spurious_rate": 1.5}, "'spurious_rate'"),
        ({"n_train_per_class": 2.5}, "'n_train_per_class'"),
    ],
)
def test_bad_spec_is_an_error_naming_the_key(change, needle):
    with pytest.raises(DataError, match=needle):
        S.items({**SPEC, **change}, "train")


def test_missing_spec_key_and_bad_arguments_are_errors():
    with pytest.raises(DataError, match="missing key 'seed'"):
        S.items({k: v for k, v in SPEC.items() if k != "seed"}, "train")
    with pytest.raises(DataError, match="split"):
        S.items(SPEC, "test")
    with pytest.raises(DataError, match="label"):
        S.render(0, len(S.CLASSES))
    with pytest.raises(DataError, match="texture"):
        S.render(0, 0, texture=len(S.TEXTURES))
    with pytest.raises(DataError, match="size"):
        S.render(0, 0, size=2)


def test_render_speed_fits_the_preprocess_budget():
    # The default card (2,000 images at 64 px) must render in well under 30 s on one core,
    # i.e. < 15 ms an image; measured 4-6 ms. CPU time, not wall time, so other processes on a
    # shared machine do not count; 30 ms still catches any real (several-fold) regression.
    S.render(0, 0, 64)  # warm the ray cache
    start = time.process_time()
    for i in range(40):
        S.render(1000 + i, i % len(S.CLASSES), 64)
    assert (time.process_time() - start) / 40 < 0.030


def test_clutter_zero_gives_a_plain_wall_and_leaves_the_object_alone():
    busy_img, busy_depth = S.render(11, 4, size=48, clutter=1.0)
    plain_img, plain_depth = S.render(11, 4, size=48, clutter=0.0)
    np.testing.assert_array_equal(busy_depth, plain_depth)  # geometry is untouched
    wall = plain_depth > np.percentile(plain_depth, 70)  # far pixels: the wall

    # A plain wall varies only through shading; a patterned one has much more local contrast.
    def local_contrast(img):
        g = img.astype(float).mean(-1)
        return np.abs(np.diff(g, axis=1))[wall[:, 1:]].mean()

    assert local_contrast(plain_img) < 0.5 * local_contrast(busy_img)
    with pytest.raises(DataError, match="clutter"):
        S.validate_spec(
            {
                "n_train_per_class": 1,
                "n_val_per_class": 1,
                "size": 8,
                "spurious": False,
                "seed": 0,
                "clutter": 2,
            }
        )
