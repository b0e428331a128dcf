"""Fills re-grained with the frame's own grain: as strong (per brightness), as coarse and as shared by the colour
channels as around them, only inside the fill, the same on every run, and nothing where there is no grain."""
import cv2
import numpy as np
import pytest

from restore.damage import film_grain
from restore.grain import regrain
from restore.restorers import build_restorer
from restore.spec import RestorerSettings

SIDE = 162  # a 10-bit RGBA DPX of it packs whole 32-bit words: OpenImageIO drops the last sample of a part word


def grainy(dtype=np.uint8, channels=3, seed=0) -> np.ndarray:
    """A colour gradient in the midtones under film grain (4 %) and scanner noise."""
    y, x = np.mgrid[0:SIDE, 0:SIDE] / SIDE
    base = np.dstack([0.25 + 0.5 * x, 0.3 + 0.4 * y, 0.5 - 0.2 * x][:channels])
    image = np.round(base * np.iinfo(dtype).max).astype(dtype)
    return film_grain(np.random.default_rng(seed), image, grain=0.04, noise=0.004)


def blotch(y=60, x=60, size=40) -> np.ndarray:
    mask = np.zeros((SIDE, SIDE), bool)
    mask[y:y + size, x:x + size] = True
    return mask


def harmonic_fill(pixels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    damaged = pixels.copy()
    damaged[mask] = np.iinfo(pixels.dtype).max
    return build_restorer(RestorerSettings(name="harmonic"))(damaged, mask)


def residual(pixels: np.ndarray) -> np.ndarray:
    """Luma less a small blur: the grain."""
    luma = pixels.astype(np.float64).mean(axis=2) / np.iinfo(pixels.dtype).max
    return luma - cv2.GaussianBlur(luma, (0, 0), 1.5)


def grown(mask: np.ndarray, px: int) -> np.ndarray:
    return cv2.dilate(mask.astype(np.uint8), np.ones((2 * px + 1,) * 2, np.uint8)) > 0


def fill_and_ring(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The fill away from its edge, and its surroundings within 20 px, away from the edge too."""
    return ~grown(~mask, 3), grown(mask, 20) & ~grown(mask, 3)


def grain_size(values: np.ndarray, where: np.ndarray) -> float:
    """Correlation of the residual with its right-hand neighbour: how far the grain clumps."""
    both = where[:, :-1] & where[:, 1:]
    return float(np.corrcoef(values[:, :-1][both], values[:, 1:][both])[0, 1])


@pytest.mark.parametrize("dtype, channels", [(np.uint8, 3), (np.uint16, 3), (np.uint8, 1), (np.uint16, 1)])
def test_a_fill_gets_grain_as_strong_and_as_coarse_as_its_surroundings_and_nothing_outside_changes(dtype, channels):
    pixels, mask = grainy(dtype, channels), blotch()
    filled = harmonic_fill(pixels, mask)
    inside, ring = fill_and_ring(mask)
    before, around = residual(filled)[inside].std(), residual(filled)[ring].std()
    assert before < 0.1 * around  # the restorer's fill is smooth: a grain-free smudge

    grained = regrain(filled, mask, seed="reel/f000123.dpx")
    after = residual(grained)
    assert after[inside].std() == pytest.approx(around, rel=0.25)
    assert grain_size(after, inside) == pytest.approx(grain_size(after, ring), abs=0.15)
    assert np.array_equal(grained[~mask], filled[~mask]) and grained.dtype == filled.dtype
    assert np.array_equal(regrain(filled, mask, seed="reel/f000123.dpx"), grained)  # a rerun: the same bytes
    assert not np.array_equal(regrain(filled, mask, seed="reel/f000124.dpx"), grained)  # the next frame's grain


def test_colour_grain_stays_as_shared_by_the_channels_as_the_frames():
    """Film grain is mostly shared by the channels (grey specks, not confetti); independent noise per channel
    would show as colour noise in the fill."""
    pixels, mask = grainy(np.uint16), blotch()
    grained = regrain(harmonic_fill(pixels, mask), mask, seed="f")
    image = grained.astype(np.float64) / 65535
    channels = image - cv2.GaussianBlur(image, (0, 0), 1.5)
    inside, ring = fill_and_ring(mask)
    shared = [np.corrcoef(channels[where].T)[0, 1:] for where in (inside, ring)]
    assert shared[1].min() > 0.5
    assert shared[0] == pytest.approx(shared[1], abs=0.15)


def test_grain_follows_brightness_weaker_in_the_shadows_than_in_the_midtones():
    y, x = np.mgrid[0:SIDE, 0:SIDE] / SIDE
    ramp = np.round(np.dstack([0.04 + 0.5 * x] * 3) * 65535).astype(np.uint16)  # shadows to midtones
    pixels = film_grain(np.random.default_rng(1), ramp, grain=0.04, noise=0.002)
    shadow, midtone = blotch(60, 4, 36), blotch(60, 120, 36)
    grained = regrain(harmonic_fill(pixels, shadow | midtone), shadow | midtone, seed="f")
    strengths = {}
    for name, mask in (("shadow", shadow), ("midtone", midtone)):
        inside, ring = fill_and_ring(mask)
        strengths[name] = residual(grained)[inside].std()
        assert strengths[name] == pytest.approx(residual(grained)[ring].std(), rel=0.25)
    assert strengths["shadow"] < 0.8 * strengths["midtone"]


def test_a_fill_that_carries_some_grain_gets_only_what_it_lacks():
    """A generator's fill has some texture of its own: grain added in full over it would stand out as too much."""
    pixels, mask = grainy(np.uint16), blotch()
    smooth = harmonic_fill(pixels, mask)
    half = smooth.copy()  # a fill with half the frame's grain
    half[mask] = np.clip(smooth[mask] + (pixels[mask].astype(np.float64) - smooth[mask]) * 0.5, 0, 65535).round()
    inside, ring = fill_and_ring(mask)
    around = residual(pixels)[ring].std()
    assert residual(half)[inside].std() < 0.7 * around
    assert residual(regrain(half, mask, seed="f"))[inside].std() == pytest.approx(around, rel=0.15)
    grained_already = regrain(pixels, mask, seed="f")  # a fill as grainy as its surroundings
    assert residual(grained_already)[inside].std() == pytest.approx(residual(pixels)[inside].std(), rel=0.1)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_a_fill_in_smooth_grain_free_surroundings_gets_no_noise(dtype):
    """A sky, a backdrop, a print's paper: noise there would be a new blemish."""
    y, x = np.mgrid[0:SIDE, 0:SIDE] / SIDE
    sky = np.round(np.dstack([0.3 + 0.4 * x + 0.1 * y, 0.4 + 0.3 * y, 0.7 - 0.2 * x]) * np.iinfo(dtype).max)
    sky = sky.astype(dtype)
    mask = blotch()
    filled = harmonic_fill(sky, mask)
    assert np.array_equal(regrain(filled, mask, seed="f"), filled)


def test_an_empty_mask_or_a_frame_without_surroundings_is_left_as_it_is():
    pixels = grainy()
    for mask in (np.zeros((SIDE, SIDE), bool), np.ones((SIDE, SIDE), bool)):
        assert np.array_equal(regrain(pixels, mask, seed="f"), pixels)


def test_a_jobs_fills_of_a_dpx_scan_get_its_grain_the_same_on_every_run_and_photographs_keep_the_restorers(
        tmp_path, ray_session):
    """grain: auto re-grains film scans and leaves other stills as the restorer filled them; only the fill changes
    (unmasked samples and alpha exact), a rerun writes the same bytes, and grain: none (the default) leaves the
    restorer's fill as it was."""
    oiio = pytest.importorskip("OpenImageIO", reason="film formats need the film extra (OpenImageIO)")
    from restore.film import composite
    from restore.frames import decode_frame, encode_mask
    from restore.pipeline import prepare, run_job
    from restore.spec import parse_spec

    mask = blotch()
    samples = grainy(np.uint16)
    samples[mask] = 65535  # a blotch
    alpha = np.full((SIDE, SIDE, 1), 60000, np.uint16)
    scan = oiio.ImageSpec(SIDE, SIDE, 4, "uint16")
    scan.channelnames = ("R", "G", "B", "A")
    scan.attribute("oiio:BitsPerSample", 10)
    scan.attribute("dpx:Transfer", "Printing density")
    (tmp_path / "in" / "masks").mkdir(parents=True)
    output = oiio.ImageOutput.create(str(tmp_path / "in" / "scan.dpx"))
    assert output.open(str(tmp_path / "in" / "scan.dpx"), scan) and output.write_image(np.dstack([samples, alpha]))
    output.close()
    photo = grainy(np.uint8, seed=1)
    photo[mask] = 255
    cv2.imwrite(str(tmp_path / "in" / "photo.png"), photo[..., ::-1])
    for name in ("scan", "photo"):
        (tmp_path / "in" / "masks" / f"{name}.png").write_bytes(encode_mask(mask))

    def run(output: str, **restorer) -> dict:
        spec = parse_spec({"name": "grain", "input": str(tmp_path / "in"), "output": str(tmp_path / output),
                           "restorer": {"name": "harmonic", **restorer}})
        assert run_job(*prepare(spec)).counts == {"ok": 2}
        return {name: (tmp_path / output / name).read_bytes() for name in ("scan.dpx", "photo.png")}

    first, again, plain = run("out", grain="auto"), run("again", grain="auto"), run("plain")
    assert first == again  # a rerun writes the same bytes

    original = decode_frame((tmp_path / "in" / "scan.dpx").read_bytes())
    restored = decode_frame(first["scan.dpx"])
    assert np.array_equal(restored.source[~mask], original.source[~mask])
    assert np.array_equal(restored.source[..., 3], original.source[..., 3])  # alpha untouched, inside the fill too
    inside, ring = fill_and_ring(mask)
    view = residual(restored.pixels)
    assert view[inside].std() == pytest.approx(view[ring].std(), rel=0.25)
    assert grain_size(view, inside) == pytest.approx(grain_size(view, ring), abs=0.15)
    restorers_fill = build_restorer(RestorerSettings(name="harmonic"))(original.pixels, mask)
    assert np.array_equal(decode_frame(plain["scan.dpx"]).source, composite(original, restorers_fill))

    assert np.array_equal(decode_frame(first["photo.png"]).pixels, harmonic_fill(photo, mask))  # not a film scan


def test_a_frame_too_small_to_measure_grain_on_gets_none_and_no_error():
    """A strip a pixel high has no vertical neighbours and a few dozen known pixels: its fill is left as the
    restorer made it rather than the frame failing (and its batch-mates being restored again one by one)."""
    rng = np.random.default_rng(1)
    for shape in [(1, 50, 3), (1, 4000, 3), (40, 1, 1), (5, 5, 3)]:
        filled = np.clip((0.5 + rng.normal(0, 0.03, shape)) * 255, 0, 255).astype(np.uint8)
        mask = np.zeros(shape[:2], bool)
        mask[shape[0] // 2, shape[1] // 2] = True
        assert np.array_equal(regrain(filled, mask, "strip"), filled)
