"""Temporal detector for film: damage is on one frame only, the picture is on its neighbours too.

In the spirit of the spike detection index (Kokaram): after motion compensation, a pixel that is much brighter
(or much darker) than BOTH the previous and the next frame is a spike, i.e. dust, dirt or a blotch; real motion is
absorbed by the compensation, and where it fails (occlusions) the previous and next frames disagree with each
other, which vetoes the detection. Motion is OpenCV's DIS optical flow on luma.
"""
from __future__ import annotations

import cv2
import numpy as np

from . import Detector, luma, luma_of, to_float
from .classical import ClassicalDetector


def _split(neighbours: list[np.ndarray] | None, n_previous: int | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(nearest previous frame, nearest next frame), None where the sequence has none."""
    neighbours = list(neighbours or [])
    n_previous = len(neighbours) // 2 if n_previous is None else n_previous
    if not 0 <= n_previous <= len(neighbours):
        raise ValueError(f"n_previous={n_previous} but only {len(neighbours)} neighbours")
    previous = neighbours[n_previous - 1] if n_previous > 0 else None
    following = neighbours[n_previous] if n_previous < len(neighbours) else None
    return previous, following


MIN_FLOW_ROWS = 16  # OpenCV's DIS flow crashes the process (a segfault, not an error) on shorter frames
MIN_FLOW_COLUMNS = 8  # and raises on narrower ones


def _warp_to(frame_luma: np.ndarray, other: np.ndarray) -> np.ndarray:
    """`other` (H, W, C) float32 moved onto the frame: out(x) = other(x + flow(x)), flow by DIS on luma."""
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    to8 = lambda y: np.clip(y * 255 + 0.5, 0, 255).astype(np.uint8)  # noqa: E731 - DIS takes 8-bit gray
    other_luma = luma_of(other)
    flow = dis.calc(to8(frame_luma), to8(other_luma), None)  # (H, W, 2): frame(x) ~ other(x + flow)
    height, width = frame_luma.shape
    grid_x, grid_y = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    warped = cv2.remap(other, grid_x + flow[..., 0], grid_y + flow[..., 1], cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_REPLICATE)
    return warped if warped.ndim == 3 else warped[..., None]


def _robust_sigma(x: np.ndarray) -> float:
    return max(1.4826 * float(np.median(np.abs(x - np.median(x)))), 1.0 / 1024)


SHOT_CUT_RATIO = 3.0  # a neighbour leaving this many times the residual of the frame's own shot is another shot
QUIET_RESIDUAL = 2 / 255  # no residual this small is another shot (a clean digital source leaves next to none)
TWIN_RESIDUAL = 0.5 / 255  # a side leaving less, unmoved, is the frame printed twice (telecine, a freeze): it tells
#                            nothing of what the frame's own shot leaves, so the frame's grain stands in for it
CUT_SCALE = 4  # the residuals are read with frames shrunk this many times: a cut changes the whole picture, grain
#                and the flow's errors are fine, and a 4K frame has millions of pixels


def _shrunk(image: np.ndarray) -> np.ndarray:
    """An (H, W) or (H, W, C) float32 image shrunk `CUT_SCALE` times, channels kept as given."""
    height, width = image.shape[:2]
    size = (max(1, width // CUT_SCALE), max(1, height // CUT_SCALE))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA).reshape(size[1], size[0], *image.shape[2:])


def _residual(frame: np.ndarray, other: np.ndarray) -> float:
    """What a motion-compensated neighbour leaves of the frame (both shrunk luma): the robust spread of their
    difference, once the neighbour's brightness and contrast are matched to the frame's (old film flickers)."""
    design = np.stack([other.ravel(), np.ones(other.size, other.dtype)], axis=1)
    gain_offset = np.linalg.lstsq(design, frame.ravel(), rcond=None)[0]
    return _robust_sigma(frame.ravel() - design @ gain_offset)


def _beside_shot_cut(frame_luma: np.ndarray, sides: list[np.ndarray], moved: list[np.ndarray]) -> bool:
    """Whether a neighbour is another shot's picture, which no motion maps onto the frame: once `moved` onto it,
    it leaves several times the residual the frame's other side leaves (a cut), or both sides leave several times
    the frame's grain (a shot of one frame). Where the other side is the frame's twin as it stands (`sides`, not
    moved: a pan moves every pixel), the frame's grain is the measure instead: a twin leaves nothing, and the next
    frame of a grainy shot its grain. (Measured on the frame, grain takes in fine texture too, so it only ever makes
    a cut harder to call.)"""
    frame = _shrunk(frame_luma)
    left = [_residual(frame, luma_of(_shrunk(side))) for side in moved]  # luma is linear: shrunk first, cheaper
    nearer = int(left[1] < left[0])
    small, large = left[nearer], left[1 - nearer]
    grain = max(np.sqrt(2) * _robust_sigma(frame - cv2.GaussianBlur(frame, (0, 0), 1.0)), QUIET_RESIDUAL)
    twin = _residual(frame, luma_of(_shrunk(sides[nearer]))) < TWIN_RESIDUAL
    own_shot = grain if twin else max(small, QUIET_RESIDUAL)
    return large > SHOT_CUT_RATIO * own_shot or small > SHOT_CUT_RATIO * grain


def compensated(pixels: np.ndarray, neighbours: list[np.ndarray] | None, n_previous: int | None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(frame, previous, next) as (H, W, C) float32 in [0, 1], the two neighbours motion-compensated onto the
    frame; None when the frame lacks a previous or a next neighbour of its own shot (the first and last frames of
    a sequence, the frames on each side of a shot cut), or is too short for optical flow."""
    previous, following = _split(neighbours, n_previous)
    too_small = pixels.shape[0] < MIN_FLOW_ROWS or pixels.shape[1] < MIN_FLOW_COLUMNS
    if previous is None or following is None or too_small:
        return None
    frame = to_float(pixels)
    frame_luma = luma(pixels)
    for other in (previous, following):
        if other.shape != pixels.shape:
            raise ValueError(f"neighbour shape {other.shape} differs from the frame's {pixels.shape}")
    sides = [to_float(previous), to_float(following)]
    moved = [_warp_to(frame_luma, side) for side in sides]
    if _beside_shot_cut(frame_luma, sides, moved):
        return None
    return frame, moved[0], moved[1]


NEIGHBOURS_AGREE = 6.0  # noise sigmas within which the two neighbours agree: beyond, occlusion or missed motion


COPY_CHANGES = 3.0  # noise sigmas (of the neighbours' disagreement) by which a copy must differ from the frame
MOTION_ERROR = 0.5  # pixels: how far optical flow may be off, which on an edge of gradient g is a difference of g/2


def _gradient(luma: np.ndarray) -> np.ndarray:
    """Gradient magnitude per pixel (Sobel), in luma per pixel."""
    return np.hypot(cv2.Sobel(luma, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(luma, cv2.CV_32F, 0, 1, ksize=3)) / 8


class TemporalDetector(Detector):
    """Spikes against both motion-compensated neighbours; a frame without a neighbour of its own shot on each side
    (a sequence's first and last frames, a frame beside a shot cut) falls back to `ClassicalDetector`.

    Settings: `threshold` is the noise multiple by which a pixel must differ from both neighbours somewhere in a
    region, `grow` the lower multiple the region may spread over, `agree` the multiple within which the two
    neighbours must agree with each other (else it is occlusion or failed motion, not damage), `motion_error`
    the flow's error in pixels, which on an edge of gradient g lets a difference of g * motion_error through.
    """

    name = "temporal"
    temporal = True

    def __init__(self, threshold: float = 5.0, grow: float = 2.0, agree: float = NEIGHBOURS_AGREE,
                 motion_error: float = MOTION_ERROR):
        self.threshold = float(threshold)
        self.motion_error = float(motion_error)
        self.grow = float(grow)
        self.agree = float(agree)
        self.single_frame = ClassicalDetector()

    def __call__(self, pixels, neighbours=None, n_previous=None) -> np.ndarray:
        return self.detect(pixels, compensated(pixels, neighbours, n_previous))

    def detect(self, pixels: np.ndarray, frames: tuple[np.ndarray, np.ndarray, np.ndarray] | None) -> np.ndarray:
        """Damage of `pixels` given `frames` = `compensated(pixels, ...)`, so a caller that also fills from the
        neighbours estimates the motion once."""
        if frames is None:
            return self.single_frame(pixels)
        # 1. differences to each neighbour, lightly smoothed so grain counts less than damage
        frame, previous, following = (cv2.GaussianBlur(luma_of(f), (0, 0), 1.0) for f in frames)
        to_previous, to_next = frame - previous, frame - following
        sigma = _robust_sigma(np.concatenate([to_previous.ravel(), to_next.ravel()]))
        # 2. spike: same sign against both, the smaller difference counts; neighbours must agree
        spike = np.where(to_previous * to_next > 0, np.minimum(np.abs(to_previous), np.abs(to_next)), 0)
        spike[np.abs(previous - following) / sigma > self.agree] = 0
        # 3. motion is only known to a fraction of a pixel: on a steep edge that alone makes a difference
        spike = spike / (sigma + self.motion_error * _gradient(frame))
        # 4. hysteresis: a region needs one strong pixel
        weak = (spike > self.grow).astype(np.uint8)
        count, labels = cv2.connectedComponents(weak, connectivity=8)
        keep = np.zeros(count, bool)
        keep[labels[spike > self.threshold]] = True
        keep[0] = False
        return keep[labels]


def temporal_fill(pixels: np.ndarray, mask: np.ndarray, frames: tuple[np.ndarray, np.ndarray, np.ndarray] | None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(pixels with masked pixels copied from the motion-compensated neighbours where those agree, mask left).

    The copy is the mean of the previous and next frames; where they differ by more than `NEIGHBOURS_AGREE` noise sigmas
    (motion the flow missed, or damage on a neighbour) the pixel stays in the returned mask for the restorer. So does
    one where the copy would not change the frame beyond noise: damage there is on the neighbours too (a scratch
    or blotch through a still shot), and copying would put it back; a mask's margin of clean picture goes to the
    restorer too, as it would without neighbours.
    `frames` is `compensated(pixels, ...)`; without both neighbours (None) nothing is filled. Pixels outside the mask
    are returned unchanged.
    """
    if frames is None or not mask.any():
        return pixels.copy(), mask.copy()
    _, previous, following = frames
    disagreement = luma_of(previous) - luma_of(following)
    sigma = _robust_sigma(disagreement[~mask]) if (~mask).any() else 1.0 / 1024
    frame = luma_of(frames[0])
    tolerance = sigma + MOTION_ERROR * _gradient(frame)  # the flow's error moves a steep edge by that much
    change = np.abs((luma_of(previous) + luma_of(following)) / 2 - frame) > COPY_CHANGES * tolerance
    fill = mask & (np.abs(disagreement) <= NEIGHBOURS_AGREE * sigma) & change
    scale = 255.0 if pixels.dtype == np.uint8 else 65535.0
    mean = np.round((previous + following) / 2 * scale).astype(pixels.dtype)  # (H, W, C')
    out = pixels.copy()
    view = out if out.ndim == 3 else out[..., None]
    view[..., :mean.shape[2]][fill] = mean[fill]
    return out, mask & ~fill
