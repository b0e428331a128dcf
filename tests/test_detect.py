"""Damage detectors on generated frames: damage found, grain and moving content left alone."""
import cv2
import numpy as np
import pytest

from restore.damage import film_grain
from restore.detect import build_detector, refine_mask
from restore.detect.temporal import compensated, temporal_fill
from restore.restorers import classical_fill
from restore.spec import DETECTOR_NAMES


def scene(size=192, shift=0, seed=0):
    """A smooth synthetic photo: gradients plus soft blobs, shifted right by `shift` pixels (a panning camera)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size + 16].astype(np.float32)
    image = 0.35 + 0.2 * np.sin(x / 23) * np.cos(y / 31)
    for cx, cy, r, v in [(40, 60, 25, 0.25), (130, 120, 35, -0.2), (90, 30, 15, 0.15)]:
        image += v * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))
    image = image[:, 8 - shift:8 - shift + size]
    rgb = np.stack([image, image * 0.9 + 0.05, image * 0.8 + 0.1], 2)
    return film_grain(rng, np.clip(rgb * 255, 0, 255).astype(np.uint8), 0.02, 0.004)


def add_dust_and_scratch(frame):
    damaged = frame.copy()
    spots = [(30, 150), (100, 60), (160, 170), (60, 100)]
    for x, y in spots:
        cv2.circle(damaged, (x, y), 2, (250, 250, 250), -1)
    truth = np.zeros(frame.shape[:2], bool)
    for x, y in spots:
        truth[y - 2:y + 3, x - 2:x + 3] = True
    damaged[20:180, 120] = 250  # a bright base scratch, one pixel wide
    truth[20:180, 120] = True
    return damaged, truth, spots


def test_build_detector_fails_loudly():
    with pytest.raises(ValueError, match="unknown detector 'nope'"):
        build_detector("nope")
    with pytest.raises(ValueError, match="bad settings"):
        build_detector("classical", colour="red")
    assert {"classical", "temporal"} <= set(DETECTOR_NAMES)


def test_classical_finds_dust_and_a_vertical_scratch():
    frame = scene()
    damaged, truth, spots = add_dust_and_scratch(frame)
    mask = build_detector("classical")(damaged)
    assert mask.dtype == bool and mask.shape == frame.shape[:2]
    assert all(mask[y - 2:y + 3, x - 2:x + 3].any() for x, y in spots)
    assert mask[20:180, 119:122].any(axis=1).mean() > 0.8  # most of the scratch's length
    near_truth = cv2.dilate(truth.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    assert (mask & ~near_truth).sum() <= 0.001 * mask.size


@pytest.mark.parametrize("value", [0.95, 0.6, 0.05])
def test_classical_finds_a_scratch_through_the_whole_frame_and_leaves_its_sides_alone(value):
    """A film scratch runs the frame's whole height: enough pixels of its own brightness to sway a noise estimate
    by brightness, which then hid it (and flagged the clean columns beside it instead)."""
    rng = np.random.default_rng(0)
    frame = 0.35 + rng.normal(0, 0.012, (778, 1024))
    frame[:, 640:642] = value
    mask = build_detector("classical")((np.clip(frame, 0, 1) * 65535).astype(np.uint16))
    assert mask[:, 640:642].all()
    assert not mask[:, :637].any() and not mask[:, 645:].any()


def test_on_a_large_scan_the_octagon_finds_what_the_disc_finds(monkeypatch):
    """Past EXACT_DISC_UP_TO the speck element is an octagon (the disc's cost grows with its area): on a
    2000x1500 scan (a 26 px element) with specks up to 20 px wide, both flag the same pixels."""
    import restore.detect.classical as classical

    rng = np.random.default_rng(1)
    y, x = np.mgrid[0:1500, 0:2000]
    image = (0.5 + 0.2 * np.sin(x / 300) * np.cos(y / 200) + rng.normal(0, 0.005, (1500, 2000))).astype(np.float32)
    for _ in range(40):
        centre, radius = (int(rng.integers(40, 1960)), int(rng.integers(40, 1460))), int(rng.integers(2, 10))
        cv2.circle(image, centre, radius, float(rng.choice([0.05, 0.95])), -1)
    pixels = (np.clip(image, 0, 1) * 65535).astype(np.uint16)
    octagon = build_detector("classical")(pixels)
    monkeypatch.setattr(classical, "EXACT_DISC_UP_TO", 10**6)
    disc = build_detector("classical")(pixels)
    assert disc.sum() > 40 * 12  # the specks were found
    assert (octagon & disc).sum() >= 0.99 * (octagon | disc).sum()


@pytest.mark.parametrize("name", ["classical", "temporal"])
def test_clean_grainy_frame_is_left_alone(name):
    frames = [scene(shift=s, seed=s + 3) for s in (0, 2, 4)]
    mask = build_detector(name)(frames[1], [frames[0], frames[2]], n_previous=1)
    assert mask.mean() <= 0.001


def test_classical_takes_16_bit_and_gray():
    frame = scene()
    damaged, _, spots = add_dust_and_scratch(frame)
    detector = build_detector("classical")
    wide = detector(damaged.astype(np.uint16) * 257)
    gray = detector(cv2.cvtColor(damaged, cv2.COLOR_RGB2GRAY))
    for mask in (wide, gray):
        assert all(mask[y - 2:y + 3, x - 2:x + 3].any() for x, y in spots)


def soft_specks(seed):
    """(clean grainy frame, the same with four soft-edged bright specks blended on, their opacity (H, W)): discs
    blurred as dust out of focus is, so each has an anti-aliased rim that stands out less than its core."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:160, 0:160].astype(np.float32)
    base = 0.4 + 0.1 * np.sin(x / 29) * np.cos(y / 37)
    clean = film_grain(rng, np.clip(np.repeat(base[..., None], 3, 2) * 255, 0, 255).astype(np.uint8), 0.01, 0.004)
    discs = np.zeros((160, 160), np.float32)
    for centre in [(40, 40), (120, 50), (60, 120), (125, 125)]:
        cv2.circle(discs, centre, 2, 1.0, -1)
    opacity = cv2.GaussianBlur(discs, (0, 0), 1.0)
    opacity /= opacity.max()
    damaged = np.round(clean * (1 - opacity[..., None]) + 245 * opacity[..., None]).astype(np.uint8)
    return clean, damaged, opacity


@pytest.mark.parametrize("seed", [0, 1])
def test_classical_covers_the_soft_rim_of_a_speck_so_its_fill_leaves_no_ghost(seed):
    """Detection thresholds used to leave a speck's soft rim out of the mask; the fill took its colour from that
    bright rim and left a pale speck-shaped ghost. Growing each region over the rim, not blindly, fixes that."""
    clean, damaged, opacity = soft_specks(seed)
    detector = build_detector("classical")
    mask = detector(damaged)
    rim = opacity > 0.2  # pixels a fifth of the speck's contrast or more away from the picture
    assert mask[rim].all()
    filled = classical_fill(damaged, mask, "telea")
    ghost = filled.astype(float).mean(2) - clean.astype(float).mean(2)
    contrast = 245 - clean.astype(float).mean()
    assert ghost[rim].mean() < 0.1 * contrast  # it was over 0.17
    assert not (mask & (opacity < 0.01)).any()  # no clean picture beside them
    assert not detector(clean).any()


def sequence_with_blotch():
    """Five frames of a panning shot with a bright object moving the other way; a dark blotch on frame 2 only."""
    frames = []
    for t in range(5):
        frame = scene(shift=2 * t, seed=10 + t).astype(np.float32)
        cx = 40 + 6 * t  # the object moves 6 px a frame against the pan
        cv2.rectangle(frame, (cx, 140), (cx + 20, 165), (230, 220, 200), -1)
        frames.append(np.clip(frame, 0, 255).astype(np.uint8))
    truth = np.zeros(frames[0].shape[:2], np.uint8)
    cv2.ellipse(truth, (120, 60), (14, 9), 30, 0, 360, 1, -1)
    frames[2][truth.astype(bool)] = (40, 30, 30)
    return frames, truth.astype(bool)


def test_temporal_flags_a_one_frame_blotch_not_motion():
    frames, truth = sequence_with_blotch()
    detector = build_detector("temporal")
    assert detector.temporal
    mask = detector(frames[2], [frames[0], frames[1], frames[3], frames[4]], n_previous=2)
    assert (mask & truth).sum() >= 0.9 * truth.sum()
    assert (mask & ~refine_mask(truth, dilate=1)).sum() <= 20  # the moving object and the pan are not damage
    for t in (1, 3):  # undamaged frames next to the damaged one: its blotch must not echo onto them
        others = [f for i, f in enumerate(frames) if i != t and abs(i - t) <= 1]
        assert detector(frames[t], others, n_previous=1).sum() <= 20


def test_temporal_first_frame_falls_back_to_single_frame():
    frame = scene()
    damaged, _, spots = add_dust_and_scratch(frame)
    mask = build_detector("temporal")(damaged, [scene(shift=2, seed=4)], n_previous=0)
    assert all(mask[y - 2:y + 3, x - 2:x + 3].any() for x, y in spots)


def test_a_frame_beside_a_shot_cut_is_detected_alone_and_its_dust_found():
    shot = [scene(shift=2 * t, seed=10 + t) for t in range(3)]
    next_shot = scene(seed=20)[::-1, ::-1].copy()  # another picture: the next shot's first frame
    damaged, truth, spots = add_dust_and_scratch(shot[1])
    assert compensated(damaged, [shot[0], next_shot], 1) is None
    mask = build_detector("temporal")(damaged, [shot[0], next_shot], n_previous=1)
    assert all(mask[y - 2:y + 3, x - 2:x + 3].any() for x, y in spots)
    assert (mask & truth).sum() >= 0.75 * truth.sum()  # the scratch too, which the other shot hid in part
    assert (mask & ~refine_mask(truth, dilate=2)).sum() <= 20  # nothing of the other shot taken for damage


def test_a_cut_from_fine_texture_is_seen_though_the_texture_reads_like_grain():
    rng = np.random.default_rng(1)
    texture = cv2.GaussianBlur(cv2.resize(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8), (384, 256),
                                          interpolation=cv2.INTER_CUBIC), (0, 0), 2)
    shot = [texture[16:208, 4 * t:4 * t + 256].copy() for t in range(3)]  # a pan over saturated fine detail
    other = np.dstack([np.full((192, 256), v, np.uint8) for v in (120, 110, 100)])  # a plain grey scene
    assert compensated(shot[1], [shot[0], shot[2]], 1) is not None
    assert compensated(shot[1], [shot[0], other], 1) is None


def test_a_one_frame_shot_is_detected_alone():
    shot = [scene(shift=2 * t, seed=10 + t) for t in range(3)]
    insert = scene(seed=20)[::-1, ::-1].copy()  # a single frame of another picture between two of one shot
    assert compensated(insert, [shot[0], shot[2]], 1) is None


@pytest.mark.parametrize("grain", [0.0, 0.05, 0.12])
def test_flicker_grain_and_a_repeated_frame_are_no_shot_cut(grain):
    frames = [scene(shift=2 * t, seed=10 + t) for t in range(3)]
    frames = [film_grain(np.random.default_rng(t), frame, grain, 0.004) for t, frame in enumerate(frames)]
    assert compensated(frames[1], [frames[0], frames[2]], 1) is not None
    assert compensated(frames[1], [frames[1].copy(), frames[2]], 1) is not None  # a frame printed twice (telecine)
    brighter = np.clip(frames[2].astype(np.float32) * 1.1, 0, 255).astype(np.uint8)  # old film's flicker
    assert compensated(frames[1], [frames[0], brighter], 1) is not None
    harder = np.clip((frames[2].astype(np.float32) - 110) * 1.6 + 110, 0, 255).astype(np.uint8)  # and contrast
    assert compensated(frames[1], [frames[0], harder], 1) is not None


def test_frames_too_short_for_optical_flow_are_detected_alone_not_crashing_the_worker():
    strip = np.tile(scene()[:12], (1, 2, 1))  # 12 rows: OpenCV's flow kills the process on such a frame
    damaged = strip.copy()
    damaged[4:8, 100:104] = 255
    assert compensated(damaged, [strip, strip], 1) is None
    assert build_detector("temporal")(damaged, [strip, strip], n_previous=1)[5, 101]
    column = np.ascontiguousarray(scene()[:, :7])  # and it raises on frames under 8 columns
    assert compensated(column, [column, column], 1) is None


def test_temporal_fill_copies_from_neighbours_where_they_agree():
    frames, truth = sequence_with_blotch()
    clean = scene(shift=4, seed=12)
    filled, remaining = temporal_fill(frames[2], truth, compensated(frames[2], [frames[1], frames[3]], 1))
    assert filled.dtype == frames[2].dtype and filled.shape == frames[2].shape
    assert np.array_equal(filled[~truth], frames[2][~truth])  # only masked pixels change
    done = truth & ~remaining
    assert done.sum() >= 0.8 * truth.sum()
    assert np.abs(filled[done].astype(int) - clean[done].astype(int)).mean() < 8  # the scene, up to grain
    spoiled = frames[1].copy()
    spoiled[20:100, 80:160] = np.clip(spoiled[20:100, 80:160].astype(int) + 60, 0, 255)  # a flash on one neighbour
    _, remaining = temporal_fill(frames[2], truth, compensated(frames[2], [spoiled, frames[3]], 1))
    assert remaining[50:70, 110:130][truth[50:70, 110:130]].mean() > 0.8
    assert not (remaining & ~truth).any()


def test_temporal_fill_never_copies_damage_its_neighbours_show_too():
    """A scratch and a blotch through a still shot are on every frame: the neighbours agree, and would copy them
    back. Only the speck on this frame alone is theirs to fill; the clean margin its mask adds, and dirt that
    touches the scratch, change nothing."""
    frames = [scene(seed=20 + t) for t in range(3)]  # a still shot: grain differs, the picture does not
    for frame in frames:
        frame[20:180, 120:122] = 245  # the same scratch
        cv2.circle(frame, (60, 60), 12, (35, 30, 30), -1)  # and the same blotch on each
    mask = np.zeros(frames[1].shape[:2], np.uint8)
    cv2.circle(mask, (60, 60), 14, 1, -1)
    mask[18:182, 118:124] = 1
    cv2.circle(frames[1], (150, 100), 2, (250, 250, 250), -1)  # a speck on this frame only
    cv2.circle(mask, (150, 100), 12, 1, -1)  # masked with a wide margin: 3 % of its region is the speck itself
    cv2.circle(frames[1], (125, 60), 2, (10, 10, 10), -1)  # and one touching the scratch
    cv2.circle(mask, (125, 60), 4, 1, -1)
    mask = mask.astype(bool)
    filled, remaining = temporal_fill(frames[1], mask, compensated(frames[1], [frames[0], frames[2]], 1))
    assert remaining[20:180, 120:122].all()  # the scratch: for the restorer
    assert remaining[:, :100][mask[:, :100]].all()  # the blotch too
    assert not remaining[99:102, 149:152].any() and not remaining[60, 124:127].any()  # the specks: copied
    assert np.abs(filled[98:103, 148:153].astype(int) - scene(seed=21)[98:103, 148:153].astype(int)).mean() < 12


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_infrared_finds_the_dark_specks_of_the_infrared_plane(dtype):
    rng = np.random.default_rng(5)
    top = np.iinfo(dtype).max
    level = 0.75 + 0.1 * np.linspace(0, 1, 160)[None, :]  # uneven illumination across the frame
    clean = np.clip((level + rng.normal(0, 0.008, (120, 160))) * top, 0, top).astype(dtype)
    truth = np.zeros(clean.shape, bool)
    truth[10:14, 20:25] = truth[60:63, 100:102] = truth[90, 30:70] = True  # dust, a speck, a hair
    dusty = clean.copy()
    dusty[truth] = 0.3 * top
    mask = build_detector("infrared")(dusty)
    edge = cv2.dilate(truth.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    assert (mask & truth).sum() == truth.sum() and not (mask & ~edge).any()  # the specks, at most a grain beyond
    assert (mask & ~truth).sum() <= 3
    assert not build_detector("infrared")(clean).any()


def test_refine_mask_drops_small_regions_then_dilates():
    mask = np.zeros((20, 20), bool)
    mask[2, 2] = True  # 1 px: noise
    mask[10:13, 10:13] = True  # 9 px
    out = refine_mask(mask, dilate=1, min_area=4)
    assert not out[2, 2] and out[10:13, 9:14].all() and out[9:14, 10:13].all() and out.sum() == 21  # 3x3 grown by a cross
    assert np.array_equal(refine_mask(mask), mask)
    with pytest.raises(ValueError):
        refine_mask(mask, dilate=-1)


def test_detection_on_scans_past_opencvs_widest_median_runs_and_finds_the_dust():
    """The classical detector's windows grow with the frame: on a 10000 x 8000 glass plate the local median passed
    the widest OpenCV takes, and every night the plate was skipped with OpenCV's assertion. Its size setting here
    makes a small frame take the same windows."""
    import cv2

    from restore.detect.classical import ClassicalDetector, wide_median

    rng = np.random.default_rng(5)
    y, x = np.mgrid[0:600, 0:800]
    plate = np.clip(60 + 120 * x / 800 + rng.normal(0, 3, x.shape), 0, 255).astype(np.uint8)
    plate[:, :200] = 0  # black binding tape along the edge: a uniform area overflows OpenCV's wide median
    with pytest.raises(cv2.error):
        cv2.medianBlur(plate, 301)  # what failed
    level = wide_median(plate, 453)
    clear = x > 450  # a window's width from the tape
    assert level.shape == plate.shape and np.abs(level.astype(int) - (60 + 120 * x / 800))[clear].max() <= 12
    dusty = plate.copy()
    for cy, cx in ((150, 200), (300, 500), (450, 650)):
        dusty[cy - 6:cy + 6, cx - 6:cx + 6] = 250
    found = ClassicalDetector(size=151)(np.repeat(dusty[..., None], 3, axis=2))
    for cy, cx in ((150, 200), (300, 500), (450, 650)):
        assert found[cy, cx]
    assert found.mean() < 0.01
