"""Single-frame classical detector: specks, hairs, tears and line scratches that stand out from grain.

Damage on a scan is a small or thin structure much brighter or darker than its surroundings. Morphological
top-hats measure exactly that (the frame minus its opening / its closing minus the frame: only structures
narrower than the structuring element respond, edges and gradients do not). Responses are measured in units of
the frame's own noise at that brightness (film grain is strongest in the midtones), estimated robustly from a
high-pass, so the same thresholds hold for fine and coarse stock. Near-vertical scratches, often too faint to
pass the speck threshold pixel by pixel, are found by averaging a horizontal top-hat along the column: a line
adds up, grain does not.
"""
from __future__ import annotations

import cv2
import numpy as np

from . import Detector, luma

_BINS = 16  # brightness bins of the noise estimate
NOISE_FLOOR = 1.0 / 1024  # the least noise sigma measured: a synthetic flat frame has no noise at all
EXACT_DISC_UP_TO = 25  # speck elements up to this width are discs; wider ones, on large scans, regular octagons


def odd_size(x: float) -> int:
    return max(3, int(round(x)) // 2 * 2 + 1)


# px: OpenCV's median of a uint8 image counts its histogram in 16 bits, so over a wider window (more than 65,535
# pixels) a uniform area, a plate's binding tape or a scan's black border, overflows it ("k < 16")
WIDEST_MEDIAN = 255


def wide_median(image: np.ndarray, window: int) -> np.ndarray:
    """cv2.medianBlur of a uint8 image (H, W) over any odd `window`. The detectors' windows grow with the frame and
    pass OpenCV's widest on scans from about 7000 px across (a glass plate, a large print), whose detection then
    failed every night where the scan has a uniform border. A wider one is taken on the image brought down by a
    whole factor, and brought back up: a median that wide is the level of a frame's surroundings, which a coarser
    grid keeps."""
    if window <= WIDEST_MEDIAN:
        return cv2.medianBlur(image, window)
    factor = -(-window // WIDEST_MEDIAN)
    height, width = image.shape[:2]
    small = cv2.resize(image, (-(-width // factor), -(-height // factor)), interpolation=cv2.INTER_AREA)
    return cv2.resize(cv2.medianBlur(small, odd_size(window / factor)), (width, height),
                      interpolation=cv2.INTER_LINEAR)


def high_pass(image: np.ndarray) -> np.ndarray:
    """What a 5x5 median leaves of a float image: grain and fine damage; edges and smooth gradients pass it."""
    return image - cv2.medianBlur(image, 5).reshape(image.shape)  # OpenCV drops a single channel's axis


def robust_sigma(values: np.ndarray) -> float:
    """Noise sigma of zero-centred values (a high-pass) from their median absolute value: damage, texture and edges
    among them move it little."""
    return 1.4826 * float(np.median(np.abs(values)))


def brightness_bins(image: np.ndarray, window: int) -> np.ndarray:
    """Each pixel's brightness bin (H, W) for `sigma_by_bin`: that of its surroundings (a median over `window`, wider
    than the damage), not its own: a long scratch or a blotch has enough pixels to fill a bin of its own brightness,
    and would then set the noise it is measured against, and go unseen."""
    surroundings = wide_median(np.clip(image * 255, 0, 255).astype(np.uint8), window)  # large medians: uint8
    return np.clip(surroundings.astype(np.int32) * _BINS // 256, 0, _BINS - 1)


def sigma_by_bin(residual: np.ndarray, bins: np.ndarray) -> np.ndarray:
    """Noise sigma (_BINS,) of high-pass values in each of their brightness bins: grain is strongest in the
    midtones; the median is robust to the damage and texture in a bin. Bins with too few values take the value of
    all of them."""
    sigma = np.full(_BINS, robust_sigma(residual), np.float32)
    for b in range(_BINS):
        values = residual[bins == b]
        if values.size >= 500:
            sigma[b] = robust_sigma(values)
    return np.maximum(sigma, NOISE_FLOOR)


def noise_by_brightness(image: np.ndarray, window: int) -> np.ndarray:
    """Per-pixel noise sigma (H, W): MAD of a 5x5 median high-pass within each brightness bin (`brightness_bins`,
    `sigma_by_bin`). Clumped grain reads small at this scale, so thresholds in these units are high numbers."""
    bins = brightness_bins(image, window)
    return sigma_by_bin(high_pass(image), bins)[bins]


def round_opening_or_closing(image: np.ndarray, operation: int, size: int) -> np.ndarray:
    """Opening or closing (cv2.MORPH_OPEN / MORPH_CLOSE) by a disc `size` pixels wide.

    A disc costs its area per pixel, and the speck size grows with the frame: on a 6000x4000 scan it is 73 px
    wide, and its four passes made the detector 1.5x slower there (BENCHMARKS.md). Past EXACT_DISC_UP_TO it is
    replaced by the regular octagon of its width, a square followed by a diamond (repeated 3x3 crosses), which
    costs its width instead.
    """
    if size <= EXACT_DISC_UP_TO:
        return cv2.morphologyEx(image, operation, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size)))
    diamond = round(size / (2 + np.sqrt(2)))  # the octagon's diagonal sides are as long as its straight ones
    square = cv2.getStructuringElement(cv2.MORPH_RECT, (size - 2 * diamond, size - 2 * diamond))
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    first, then = (cv2.erode, cv2.dilate) if operation == cv2.MORPH_OPEN else (cv2.dilate, cv2.erode)
    return then(then(first(first(image, square), cross, iterations=diamond), cross, iterations=diamond), square)


def _local_level(z: np.ndarray, window: int) -> np.ndarray:
    """Local median of a response (H, W), at least 1: how busy the neighbourhood already is (texture, edges).

    A speck stands out from its own surroundings; in foliage or fabric the top-hat is high everywhere, and only
    a response well above that local level is damage. The median ignores the speck itself.
    """
    quantised = np.clip(z * 8, 0, 255).astype(np.uint8)  # 1/8 noise unit steps; cv2's large medians need uint8
    return np.maximum(wide_median(quantised, window).astype(np.float32) / 8, 1.0)


def hysteresis(strong: np.ndarray, weak: np.ndarray) -> np.ndarray:
    """Pixels of `weak` connected (8-neighbourhood) to at least one pixel of `strong`."""
    count, labels = cv2.connectedComponents(weak.astype(np.uint8), connectivity=8)
    keep = np.zeros(count, bool)
    keep[labels[strong & weak]] = True
    keep[0] = False
    return keep[labels]


def speck_size(height: int, width: int) -> int:
    """The default widest speck or line in pixels: 1.5 % of the frame's geometric-mean side, at least 7."""
    return odd_size(max(7.0, 0.015 * np.sqrt(height * width)))


def speck_contrast(smooth: np.ndarray, sigma: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """How far each pixel of a lightly smoothed luma stands out above and below its surroundings: its bright and
    dark top-hats (structures narrower than `size`) in noise units `sigma`, over the local level of each."""
    window = odd_size(3 * size)
    contrast = []
    for top_hat in (smooth - round_opening_or_closing(smooth, cv2.MORPH_OPEN, size),
                    round_opening_or_closing(smooth, cv2.MORPH_CLOSE, size) - smooth):
        response = top_hat / sigma
        contrast.append(response / _local_level(response, window))
    return contrast[0], contrast[1]


def contrast_of(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`speck_contrast` of integer pixels at the default speck size, for detectors that find damage otherwise."""
    image = luma(pixels)
    size = speck_size(*image.shape)
    return speck_contrast(cv2.GaussianBlur(image, (0, 0), 0.7), noise_by_brightness(image, size), size)


HALO_THRESHOLD = 12.0  # noise multiples (over the local level) by which a speck's soft rim still stands out
HALO_REACH = 2  # pixels: the widest rim a detected region takes in


def cover_halo(mask: np.ndarray, bright: np.ndarray, dark: np.ndarray, threshold: float = HALO_THRESHOLD,
               reach: int = HALO_REACH) -> np.ndarray:
    """`mask` grown, at most `reach` pixels, into neighbours that stand out the same way by `threshold`.

    A speck's soft, anti-aliased rim stands out less than the speck, so detection thresholds leave it out, and a
    fill that takes its colour from that rim leaves a pale ghost of the speck. Growing each region only through
    pixels that still stand out (bright from bright damage, dark from dark) takes in the rim but not the clean
    picture beside it, which a blind dilation would repaint.
    """
    step = np.ones((3, 3), np.uint8)
    out = mask.copy()
    for this, other in ((bright, dark), (dark, bright)):
        rim = (this > threshold).astype(np.uint8)
        grown = (mask & (this > other)).astype(np.uint8)
        for _ in range(reach):
            grown |= cv2.dilate(grown, step) & rim
        out |= grown.astype(bool)
    return out


class ClassicalDetector(Detector):
    """Specks, hairs, tears and near-vertical scratches by noise-normalised top-hats; no neighbours needed.

    Settings: `size` is the widest speck or line in pixels (default: 1.5 % of the frame's geometric-mean side,
    at least 7); `threshold` the noise multiple a detection must reach somewhere; `grow` the lower multiple its
    region may spread over; `scratch_length` the column length over which scratches are averaged and
    `scratch_threshold` how many robust spreads of that average a scratch must stand out by. Each region then
    takes in its soft rim (`cover_halo`). Defaults are set on 20 training photographs, whose grainy undamaged
    scans kept under 0.1 % of their pixels flagged before the rims were added (the evaluation photographs, 0.36 %
    with them: BENCHMARKS.md). A single frame cannot tell a speck of dust from a small highlight, so this detector
    trades recall for that; prefer `temporal` on film.
    """

    name = "classical"

    def __init__(self, size: int | None = None, threshold: float = 60.0, grow: float = 20.0,
                 scratch_length: int | None = None, scratch_threshold: float = 24.0):
        self.size = size
        self.threshold = float(threshold)
        self.grow = float(grow)
        self.scratch_length = scratch_length
        self.scratch_threshold = float(scratch_threshold)

    def __call__(self, pixels, neighbours=None, n_previous=None) -> np.ndarray:
        image = luma(pixels)
        height, width = image.shape
        side = float(np.sqrt(height * width))
        size = odd_size(self.size) if self.size else speck_size(height, width)
        length = odd_size(self.scratch_length or max(21.0, 0.08 * side))
        # 1. a lightly smoothed view (single grains count less, specks survive), noise per brightness for units
        smooth = cv2.GaussianBlur(image, (0, 0), 0.7)
        sigma = noise_by_brightness(image, size)
        # 2. specks, hairs and tears: bright and dark top-hats
        bright, dark = speck_contrast(smooth, sigma, size)
        mask = np.zeros((height, width), bool)
        for contrast in (bright, dark):
            mask |= hysteresis(contrast > self.threshold, contrast > self.grow)
        # 3. near-vertical scratches: horizontal top-hat, averaged down the column
        row = cv2.getStructuringElement(cv2.MORPH_RECT, (odd_size(size / 2), 1))
        column = (1, length)
        for top_hat in (smooth - cv2.morphologyEx(smooth, cv2.MORPH_OPEN, row),
                        cv2.morphologyEx(smooth, cv2.MORPH_CLOSE, row) - smooth):
            response = top_hat / sigma
            along = cv2.blur(response, column)  # mean over `length` rows: grain averages out
            spread = robust_sigma(along - np.median(along))
            line = along > np.median(along) + self.scratch_threshold * spread
            mask |= line & (response > self.grow / 2)
        # 4. the soft rims of what was found
        return cover_halo(mask, bright, dark)
