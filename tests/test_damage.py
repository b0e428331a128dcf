"""Synthetic damage: reproducible, the right shapes and sizes, and masks that are exactly the changed pixels."""
import cv2
import numpy as np
import pytest

from restore.damage import ARCHIVE_KINDS, MASK_CLASSES, archive_damage, hole_mask, hole_mask_window


def rng(seed=0):
    return np.random.default_rng(seed)


@pytest.mark.parametrize("kind", MASK_CLASSES)
def test_hole_mask_is_seeded_bool_and_bounded(kind):
    a, b = hole_mask(rng(3), 256, 256, kind), hole_mask(rng(3), 256, 256, kind)
    assert a.dtype == bool and a.shape == (256, 256)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, hole_mask(rng(4), 256, 256, kind))
    assert 0 < a.mean() <= 0.5


def _survives_erosion(mask):
    """Share of hole pixels more than 4 px from the hole's edge: small for thin strokes, large for thick ones."""
    return cv2.erode(mask.astype(np.uint8), np.ones((9, 9), np.uint8)).sum() / mask.sum()


def test_mask_classes_differ_in_stroke_width():
    masks = {k: [hole_mask(rng(s), 256, 256, k) for s in range(10)] for k in MASK_CLASSES}
    survive = {k: np.mean([_survives_erosion(m) for m in ms]) for k, ms in masks.items()}
    assert survive["thin"] < 0.2 < 0.5 < survive["medium"]
    assert survive["thick"] > 0.5
    coverage = {k: np.mean([m.mean() for m in ms]) for k, ms in masks.items()}
    assert coverage["thin"] < coverage["medium"]


@pytest.mark.parametrize("kind", MASK_CLASSES)
def test_hole_mask_scales_with_frame_size(kind):
    small = np.mean([hole_mask(rng(s), 256, 256, kind).mean() for s in range(10)])
    large = np.mean([hole_mask(rng(s), 512, 768, kind).mean() for s in range(10)])
    assert large == pytest.approx(small, rel=0.35)
    assert hole_mask(rng(0), 48, 64, kind).shape == (48, 64)


def _deep_share(masks: list[np.ndarray], depth: float) -> float:
    """Share of hole pixels further than `depth` px from any known pixel."""
    far = [cv2.distanceTransform(m.astype(np.uint8), cv2.DIST_L2, 5) > depth for m in masks]
    return sum(f.sum() for f in far) / sum(m.sum() for m in masks)


def test_a_window_of_a_256_mask_keeps_thick_holes_as_deep_as_in_evaluation():
    """On a 128 crop, a thick mask drawn at the crop's size has holes half as wide as evaluation's 256 ones; a
    128 window cut from a 256 canvas keeps them as deep (share of hole pixels over 16 px from the border)."""
    rng = np.random.default_rng(0)
    evaluation = [hole_mask(rng, 256, 256, "thick") for _ in range(200)]
    scaled = [hole_mask(rng, 128, 128, "thick") for _ in range(200)]
    windows = [hole_mask_window(rng, 128, 128, "thick", canvas=256) for _ in range(200)]
    assert all(w.shape == (128, 128) and 0 < w.mean() <= 0.5 for w in windows)
    assert _deep_share(scaled, 16) < 0.5 * _deep_share(evaluation, 16)
    assert abs(_deep_share(windows, 16) - _deep_share(evaluation, 16)) < 0.25 * _deep_share(evaluation, 16)
    assert np.array_equal(hole_mask_window(np.random.default_rng(3), 96, 64, "medium", 256),
                          hole_mask_window(np.random.default_rng(3), 96, 64, "medium", 256))  # seeded


def test_unknown_mask_class_names_the_valid_ones():
    with pytest.raises(ValueError, match="thin, medium, thick"):
        hole_mask(rng(), 64, 64, "huge")
    with pytest.raises(ValueError, match="too small"):
        hole_mask(rng(), 4, 64, "thin")


@pytest.mark.parametrize("shape,dtype", [((96, 128), np.uint8), ((96, 128, 3), np.uint16),
                                         ((96, 128, 3), np.float32), ((96, 128, 1), np.uint8)])
def test_archive_damage_keeps_dtype_shape_and_untouched_pixels(shape, dtype):
    top = {np.uint8: 255, np.uint16: 65535, np.float32: 1.0}[dtype]
    image = (np.random.default_rng(1).random(shape) * top).astype(dtype)
    damaged, mask = archive_damage(rng(5), image)
    assert damaged.dtype == image.dtype and damaged.shape == image.shape
    assert mask.dtype == bool and mask.shape == shape[:2] and mask.any()
    assert np.array_equal(damaged[~mask], image[~mask])  # bit for bit outside the mask
    changed = np.any(damaged != image, axis=-1) if damaged.ndim == 3 else damaged != image
    assert changed[mask].mean() > 0.9  # and the mask is (almost only) pixels that really changed
    again, mask_again = archive_damage(rng(5), image)
    assert np.array_equal(again, damaged) and np.array_equal(mask_again, mask)


@pytest.mark.parametrize("kind", ARCHIVE_KINDS)
def test_each_archive_kind_damages_a_little(kind):
    image = np.full((200, 240, 3), 128, np.uint8)
    coverage = [archive_damage(rng(s), image, kinds=(kind,))[1].mean() for s in range(5)]
    assert 0 < min(coverage) and max(coverage) < 0.1


def test_scratches_are_near_vertical():
    _, mask = archive_damage(rng(2), np.zeros((256, 320), np.uint8), kinds=("scratches",))
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8))
    assert n > 1
    assert all(stats[i, cv2.CC_STAT_HEIGHT] > 3 * stats[i, cv2.CC_STAT_WIDTH] for i in range(1, n))


def test_unknown_archive_kind_fails_loudly():
    with pytest.raises(ValueError, match="scratches, dust, blotches, tears"):
        archive_damage(rng(), np.zeros((32, 32), np.uint8), kinds=("mould",))
    with pytest.raises(ValueError, match="dtype"):
        archive_damage(rng(), np.zeros((32, 32), np.int32))


def test_overlays_add_their_opaque_pixels_to_the_mask(tmp_path):
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[10:30, 10:30] = (255, 255, 255, 255)  # an opaque white square
    rgba[:, :5, 3] = 40  # faint alpha (0.16) does not count as damage
    cv2.imwrite(str(tmp_path / "square.png"), rgba)
    image = np.full((80, 80, 3), 20, np.uint8)
    damaged, mask = archive_damage(rng(0), image, kinds=(), overlay_dir=str(tmp_path))
    assert mask.any()
    assert np.array_equal(damaged[~mask], image[~mask])
    assert (damaged[mask] > 20).all() and damaged[mask].mean() > 200  # only the white square was blended in
    assert mask.mean() < 0.5  # the faint strip was not
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no PNG"):
        archive_damage(rng(0), image, overlay_dir=str(tmp_path / "empty"))
