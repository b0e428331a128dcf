"""Film grain for fills: a restorer aims at the plausible mean, so on a grainy scan its fill shows as a grain-free
stripe or smudge, at once and more so after a grade. As film tools do, the fill is re-grained with the frame's own
grain, measured outside it on a high-pass residual (what a 5x5 median leaves, as the classical detector measures
noise):
  strength  per brightness, as grain is strongest in the midtones (`noise_by_brightness`);
  size      the residual's lag-1 autocorrelation, matched by white noise under a Gaussian blur of some width;
  colour    how strong each channel's residual is, and how much the channels share it.
The fill's own residual is measured the same way (a generator's fill carries some texture) and only the missing
part is added, so that the fill's residual matches its surroundings'. Surroundings without grain get none.
"""
from __future__ import annotations

import functools
import hashlib

import cv2
import numpy as np

from .detect import luma_of, to_float
from .detect.classical import NOISE_FLOOR, high_pass, noise_by_brightness, robust_sigma

BRIGHTNESS_WINDOW = 7  # px: a pixel's grain strength is that of the median brightness around it
GRAIN_SIZES = np.arange(0.3, 3.01, 0.15)  # Gaussian sigmas (px) of the grain that can be drawn
SAMPLE = 1_000_000  # residual values the size and colour statistics read, at most
LUMA_WEIGHTS = {1: np.array([1.0]), 3: np.array([0.299, 0.587, 0.114])}  # as `luma_of`


def regrain(filled: np.ndarray, mask: np.ndarray, seed: str) -> np.ndarray:
    """`filled`, a restorer's integer (H, W, C) output, with the frame's grain added inside `mask` (what the
    restorer filled); every other pixel is kept. `seed` names the frame (its key): a rerun draws the same grain."""
    if not mask.any() or mask.all():
        return filled
    image = to_float(filled)
    luma = luma_of(image)
    surroundings = ~mask
    wanted = noise_by_brightness(luma, BRIGHTNESS_WINDOW, where=surroundings)[mask]
    present = noise_by_brightness(luma, BRIGHTNESS_WINDOW, where=mask)[mask]
    missing = np.sqrt(np.maximum(wanted ** 2 - present ** 2, 0))  # independent noises add in variance
    if not missing.any():
        return filled
    lag1s, unit_sigmas = _unit_grain_residuals()
    size = float(np.interp(_lag1(high_pass(luma), surroundings), lag1s, GRAIN_SIZES))
    mixing = _channel_mixing(high_pass(image)[surroundings])
    # the luma residual of the mixed unit grain, which `missing` is in units of
    per_unit = np.linalg.norm(mixing.T @ LUMA_WEIGHTS[image.shape[2]]) * np.interp(size, GRAIN_SIZES, unit_sigmas)
    ys, xs = np.nonzero(mask)
    box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "little"))
    grain = _unit_grain(rng, (*mask[box].shape, image.shape[2]), size) @ mixing.T / per_unit
    top = np.iinfo(filled.dtype).max
    out = filled.copy()
    out[mask] = np.clip(np.rint((image[mask] + missing[:, None] * grain[mask[box]]) * top), 0, top)
    return out


def _unit_grain(rng: np.random.Generator, shape: tuple[int, int, int], size: float) -> np.ndarray:
    """Grain of `size`: white noise (H, W, C) under a Gaussian blur of that sigma, of unit variance again."""
    kernel = cv2.getGaussianKernel(2 * int(np.ceil(4 * size)) + 1, size)
    white = rng.standard_normal(shape, dtype=np.float32)
    return cv2.sepFilter2D(white, -1, kernel, kernel).reshape(shape) / float(np.sum(kernel ** 2))


@functools.cache
def _unit_grain_residuals() -> tuple[np.ndarray, np.ndarray]:
    """The lag-1 autocorrelation and the sigma of the high-pass residual of unit grain of each of GRAIN_SIZES: a
    frame's residual is matched against them (the median high-pass has no closed form)."""
    rng = np.random.default_rng(0)
    residuals = [high_pass(_unit_grain(rng, (256, 256, 1), size)[..., 0]) for size in GRAIN_SIZES]
    everywhere = np.ones((256, 256), bool)
    return (np.array([_lag1(residual, everywhere) for residual in residuals]),
            np.array([robust_sigma(residual) for residual in residuals]))


def _lag1(residual: np.ndarray, known: np.ndarray) -> float:
    """Correlation of the residual (H, W) with its right and lower neighbours, over pairs of `known` pixels: the
    grain's size (near 0 for scanner noise, higher the more the grain clumps)."""
    pairs = ((residual[:, :-1], residual[:, 1:], known[:, :-1] & known[:, 1:]),
             (residual[:-1], residual[1:], known[:-1] & known[1:]))
    return float(np.mean([_correlation(_sample(a[both]), _sample(b[both])) for a, b, both in pairs]))


def _channel_mixing(residuals: np.ndarray) -> np.ndarray:
    """The (C, C) matrix that gives independent unit noises per channel the channels' residual strengths and
    correlations (n, C) as measured: a grain mostly shared by the channels stays mostly grey. An 8-bit channel's
    faint grain can read as none (most of its residual rounds to 0), while their luma's does not: the floor keeps
    the grain that luma asks for drawable."""
    residuals = _sample(residuals)
    sigmas = np.array([max(robust_sigma(channel), NOISE_FLOOR) for channel in residuals.T])
    channels = residuals.shape[1]
    correlations = np.array([[_correlation(residuals[:, i], residuals[:, j]) if i != j else 1.0
                              for j in range(channels)] for i in range(channels)])
    values, vectors = np.linalg.eigh(correlations * np.outer(sigmas, sigmas))
    return vectors * np.sqrt(np.maximum(values, 0))


def _correlation(u: np.ndarray, v: np.ndarray) -> float:
    """Robust correlation of two zero-centred residuals, from the spreads of their standardised sum and difference
    (Gnanadesikan and Kettenring): edges and damage among them move it little."""
    su, sv = robust_sigma(u), robust_sigma(v)
    if su == 0 or sv == 0:
        return 0.0
    plus, minus = robust_sigma(u / su + v / sv) ** 2, robust_sigma(u / su - v / sv) ** 2
    return (plus - minus) / (plus + minus) if plus + minus else 0.0


def _sample(values: np.ndarray) -> np.ndarray:
    """At most about SAMPLE of `values` (along the first axis), evenly spread."""
    return values[::max(1, len(values) // SAMPLE)]
