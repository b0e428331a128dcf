"""Infrared detector: dust, hair and scratches in the infrared plane of an RGBI film scan.

Colour dyes are transparent to infrared, so a scanner's infrared plane is nearly flat wherever the film is clean,
while dust, hair and scratches block the light and show dark. Damage is what lies well below the plane's local
level (its median over a window much wider than a speck), in units of the plane's own noise. Silver (black and
white) film blocks infrared everywhere, which is why scanners offer the channel for colour film only.
"""
from __future__ import annotations

import numpy as np

from . import Detector, to_float
from .classical import hysteresis, odd_size, wide_median


class InfraredDetector(Detector):
    """Dark specks of the infrared plane; it is called with that plane (H, W), never with the colour pixels.

    Settings: `window` is the side of the local median in pixels (default: 5 % of the frame's geometric-mean
    side, at least 31; wider than the largest speck); `threshold` the noise multiple below that level a region
    must reach somewhere; `grow` the lower multiple its region may spread over (the soft edge of a speck).
    """

    name = "infrared"
    infrared = True

    def __init__(self, window: int | None = None, threshold: float = 6.0, grow: float = 3.0):
        self.window = window
        self.threshold = float(threshold)
        self.grow = float(grow)

    def __call__(self, pixels, neighbours=None, n_previous=None) -> np.ndarray:
        plane = to_float(pixels)[..., 0]
        height, width = plane.shape
        window = odd_size(self.window or max(31.0, 0.05 * np.sqrt(height * width)))
        # cv2's large medians need uint8: the clean plane's range in 255 steps (the darkest specks clip at 0)
        low, high = (float(v) for v in np.percentile(plane, (0.5, 99.5)))
        step = max(high - low, 1e-6) / 255
        quantised = np.clip(np.round((plane - low) / step), 0, 255).astype(np.uint8)
        level = low + wide_median(quantised, window).astype(np.float32) * step
        below = level - plane
        sigma = max(1.4826 * float(np.median(np.abs(below - np.median(below)))), 1.0 / 4096)
        return hysteresis(below > self.threshold * sigma, below > self.grow * sigma)
