"""Damage detectors: find scratches, dust, blotches and tears when a frame comes without a mask.

Every detector is called as `detector(pixels, neighbours=None, n_previous=None)` with `pixels` (H, W) or (H, W, C)
uint8/uint16 and returns a bool mask (H, W), True = damage. Temporal detectors also take the frame's neighbours
in its sequence (same shape; `n_previous` of them come before it, the rest after); jobs call their `detect` with
the motion-compensated neighbours, estimated once for detection and temporal fill. An infrared detector is called
with a scan's infrared plane (H, W) instead of its colour pixels. `build_detector(name)` is the one way to get a
detector by name; an unknown name or setting fails loudly.
"""
from __future__ import annotations

import cv2
import numpy as np

from ..spec import MASK_DETECTORS  # the names job specs take: one list for both


class Detector:
    """Base class: `name` identifies the detector in manifests; `temporal` says whether it uses neighbours,
    `infrared` whether it reads the infrared plane of an RGBI scan instead of the colour pixels."""

    name: str = ""
    temporal: bool = False
    infrared: bool = False

    def __call__(self, pixels: np.ndarray, neighbours: list[np.ndarray] | None = None,
                 n_previous: int | None = None) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} must implement __call__")


def to_float(pixels: np.ndarray) -> np.ndarray:
    """(H, W, C') float32 in [0, 1] with at most 3 colour channels: an alpha channel is never damage."""
    if pixels.dtype == np.uint8:
        scale = 255.0
    elif pixels.dtype == np.uint16:
        scale = 65535.0
    else:
        raise ValueError(f"detectors take uint8 or uint16 pixels, got {pixels.dtype}")
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] not in (1, 2, 3, 4)):
        raise ValueError(f"pixels must be (H, W) or (H, W, C) with C in 1..4, got shape {pixels.shape}")
    image = pixels if pixels.ndim == 3 else pixels[..., None]
    colour = 3 if image.shape[2] >= 3 else 1  # RGB(A) -> RGB, gray(+alpha) -> gray
    return image[..., :colour].astype(np.float32) / scale


def luma_of(image: np.ndarray) -> np.ndarray:
    """Rec. 601 luma (H, W) of a `to_float` image (H, W, 1 or 3)."""
    return image @ np.array([0.299, 0.587, 0.114], np.float32) if image.shape[2] == 3 else image[..., 0]


def luma(pixels: np.ndarray) -> np.ndarray:
    """Rec. 601 luma (H, W) float32 in [0, 1] of integer pixels."""
    return luma_of(to_float(pixels))


def refine_mask(mask: np.ndarray, dilate: int = 0, min_area: int = 0) -> np.ndarray:
    """Drop connected regions (8-connected) smaller than `min_area` pixels, then grow the rest by `dilate` pixels.

    Small regions go first so that dilation cannot merge isolated noise pixels into something that survives;
    dilation then covers the soft halo around damage that a restorer must also replace.
    """
    if dilate < 0 or min_area < 0:
        raise ValueError(f"dilate and min_area must be >= 0, got {dilate} and {min_area}")
    out = mask.astype(np.uint8)
    if min_area > 1:
        count, labels, stats, _ = cv2.connectedComponentsWithStats(out, connectivity=8)
        keep = stats[:, cv2.CC_STAT_AREA] >= min_area
        keep[0] = False  # background
        out = keep[labels].astype(np.uint8)
    if dilate > 0:
        out = cv2.dilate(out, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * dilate + 1, 2 * dilate + 1)))
    return out.astype(bool)


def build_detector(name: str, **settings) -> Detector:
    """The detector called `name`, built with `settings` (its constructor's keyword arguments)."""
    if name == "classical":
        from .classical import ClassicalDetector as cls
    elif name == "infrared":
        from .infrared import InfraredDetector as cls
    elif name == "temporal":
        from .temporal import TemporalDetector as cls
    elif name == "learned":
        from .learned import LearnedDetector as cls
    else:
        raise ValueError(f"unknown detector {name!r}; valid: {', '.join(MASK_DETECTORS)}")
    try:
        return cls(**settings)
    except TypeError as e:  # an unknown or missing setting
        raise ValueError(f"detector {name!r}: bad settings {sorted(settings)}: {e}") from e
