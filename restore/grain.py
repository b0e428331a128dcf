"""Film grain for fills: a restorer aims at the plausible mean, so on a grainy scan its fill shows as a grain-free
stripe or smudge, at once and more so after a grade. As film tools do, the fill is re-grained with the frame's own
grain, measured outside it on a high-pass residual (what a 5x5 median leaves, as the classical detector measures
noise):
  strength  per brightness, as grain is strongest in the midtones (`sigma_by_bin`);
  size      the residual's lag-1 autocorrelation, matched by white noise under a Gaussian blur of some width;
  colour    how strong each channel's residual is, and how much the channels share it.
The fill's own residual is measured the same way (a generator's fill carries some texture) and only the missing
part is added, so that the fill's residual matches its surroundings'. Surroundings without grain get none.
What it cannot tell apart: fine detail around a hole reads as grain (the fill then gets too much), one measure
serves the whole frame, and in a log scan's view the highlights' and sub-black grain is flattened (fills there get
almost none); so jobs ask for it (`restorer.grain`), it is not the default.
Cost follows the damage, as the restorer's does: all of it is measured and drawn within boxes around the holes,
each hole with MARGIN px of its surroundings (holes whose surroundings meet share a box); each residual is computed
once, and statistics read a sample of at most SAMPLE values.
"""
from __future__ import annotations

import functools
import hashlib

import cv2
import numpy as np

from .detect import luma_of, to_float
from .detect.classical import NOISE_FLOOR, brightness_bins, high_pass, robust_sigma, sigma_by_bin

BRIGHTNESS_WINDOW = 5  # px: a pixel's grain strength is that of the median brightness around it (a 7x7: 25x slower)
GRAIN_SIZES = np.arange(0.3, 3.01, 0.15)  # Gaussian sigmas (px) of the grain that can be drawn
SAMPLE = 50_000  # residual values a statistic reads, at most: a robust sigma of them is good to about 0.5 %
LUMA_WEIGHTS = {1: np.array([1.0]), 3: np.array([0.299, 0.587, 0.114])}  # as `luma_of`
MARGIN = 32  # px of surroundings around every hole that the grain is measured on: thousands of pixels per hole
MIN_SURROUNDINGS = 500  # known pixels around the holes, at least, to measure the grain on (as per brightness bin)
CELL = 16  # px: holes are boxed on a grid of cells this wide (a cell's row of mask pixels packs into a uint16)


def regrain(filled: np.ndarray, mask: np.ndarray, seed: str) -> np.ndarray:
    """`filled`, a restorer's integer (H, W, C) output, with the frame's grain added inside `mask` (what the
    restorer filled); every other pixel is kept. `seed` names the frame (its key): a rerun draws the same grain."""
    if not mask.any() or mask.all():
        return filled
    boxes = _hole_boxes(mask)
    images = [to_float(filled[box]) for box, _ in boxes]
    lumas = [luma_of(image) for image in images]
    residuals = [high_pass(luma) for luma in lumas]
    bins = [brightness_bins(luma, BRIGHTNESS_WINDOW) for luma in lumas]
    holes = [own & mask[box] for box, own in boxes]
    arounds = [own & ~mask[box] for box, own in boxes]
    if sum(map(np.count_nonzero, arounds)) < MIN_SURROUNDINGS:  # too little grain to measure: add none
        return filled
    wanted = sigma_by_bin(*_pooled([(r[around], b[around]) for r, b, around in zip(residuals, bins, arounds)]))
    hole_bins = [b[hole] for b, hole in zip(bins, holes)]
    present = sigma_by_bin(*_pooled([(r[hole], b) for r, hole, b in zip(residuals, holes, hole_bins)]))
    missing = np.sqrt(np.maximum(wanted ** 2 - present ** 2, 0))  # per bin: independent noises add in variance
    if not any(missing[b].any() for b in hole_bins):
        return filled
    lag1s, unit_sigmas = _unit_grain_residuals()
    lag1 = _lag1(list(zip(residuals, arounds)))
    if not np.isfinite(lag1):  # a frame a pixel high or wide has no neighbour pairs across it
        return filled
    size = float(np.interp(lag1, lag1s, GRAIN_SIZES))
    channels = [residual[..., None] if image.shape[2] == 1 else high_pass(image)  # a grey frame's: its luma's
                for image, residual in zip(images, residuals)]
    step = max(1, sum(map(np.count_nonzero, arounds)) // SAMPLE)  # read at a sample's pixels: (n, C) rows are slow
    mixing = _channel_mixing(np.concatenate([channel.reshape(-1, channel.shape[2])[np.flatnonzero(around)[::step]]
                                             for channel, around in zip(channels, arounds)]))
    # the luma residual of the mixed unit grain, which `missing` is in units of
    per_unit = np.linalg.norm(mixing.T @ LUMA_WEIGHTS[mixing.shape[0]]) * np.interp(size, GRAIN_SIZES, unit_sigmas)
    mix = (mixing.T / per_unit).astype(np.float32)  # float32 grain times a float64 matrix costs 50x as much
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "little"))
    top = np.iinfo(filled.dtype).max
    out = filled.copy()
    for (box, _), image, hole, b in zip(boxes, images, holes, bins):
        _, labels, stats, _ = cv2.connectedComponentsWithStats(hole.view(np.uint8), connectivity=8)
        for label, (x, y, w, h) in enumerate(stats[1:, :4], start=1):  # grain is drawn over each hole's bounds
            at = (slice(y, y + h), slice(x, x + w))  # (a scratch and dust in one box: not over all of it)
            one = labels[at] == label
            grain = _unit_grain(rng, (h, w, image.shape[2]), size)[one] @ mix
            out[box][at][one] = np.clip(np.rint((image[at][one] + missing[b[at][one]][:, None] * grain) * top), 0, top)
    return out


def _hole_boxes(mask: np.ndarray) -> list[tuple[tuple[slice, slice], np.ndarray]]:
    """Boxes around the holes of `mask` (H, W), each hole with at least MARGIN px of its surroundings (less at the
    frame's edge), one box for holes whose surroundings meet: each box's slices and which of its pixels are its own
    (two boxes can overlap; what they own does not). Found on a grid of CELL px cells: 12,500 on a 2K frame."""
    height, width = mask.shape
    rows, columns = -(-height // CELL), -(-width // CELL)
    packed = np.packbits(mask, axis=1)  # 8 px a byte: the frame's mask is read once, fast
    packed = np.pad(packed, ((0, rows * CELL - height), (0, 2 * columns - packed.shape[1]))).view(np.uint16)
    cells = packed.reshape(rows, CELL, columns).any(axis=1)
    reach = 2 * -(-MARGIN // CELL) + 1
    _, labels, stats, _ = cv2.connectedComponentsWithStats(
        cv2.dilate(cells.astype(np.uint8), np.ones((reach, reach), np.uint8)), connectivity=8)
    boxes = []
    for label, (x, y, w, h) in enumerate(stats[1:, :4], start=1):
        box = (slice(y * CELL, min(height, (y + h) * CELL)), slice(x * CELL, min(width, (x + w) * CELL)))
        own = (labels[y:y + h, x:x + w] == label).repeat(CELL, 0).repeat(CELL, 1)
        boxes.append((box, own[:box[0].stop - box[0].start, :box[1].stop - box[1].start]))
    return boxes


def _pooled(pieces: list[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
    """The boxes' arrays, each joined and sampled alike (`_sample`): one statistic over all the boxes."""
    return tuple(_sample(np.concatenate(arrays)) for arrays in zip(*pieces))


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
    return (np.array([_lag1([(residual, everywhere)]) for residual in residuals]),
            np.array([robust_sigma(residual) for residual in residuals]))


def _lag1(pieces: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """Correlation of residuals (H, W) with their right and lower neighbours, over pairs of known pixels, from
    (residual, known) per box: the grain's size (near 0 for scanner noise, higher the more the grain clumps)."""
    rights = [(r[:, :-1][both], r[:, 1:][both]) for r, known in pieces for both in [known[:, :-1] & known[:, 1:]]]
    downs = [(r[:-1][both], r[1:][both]) for r, known in pieces for both in [known[:-1] & known[1:]]]
    return float(np.mean([_correlation(*_pooled(rights)), _correlation(*_pooled(downs))]))


def _channel_mixing(residuals: np.ndarray) -> np.ndarray:
    """The (C, C) matrix that gives independent unit noises per channel the channels' residual strengths and
    correlations (n, C) as measured: a grain mostly shared by the channels stays mostly grey. An 8-bit channel's
    faint grain can read as none (most of its residual rounds to 0), while their luma's does not: the floor keeps
    the grain that luma asks for drawable."""
    sigmas = np.array([max(robust_sigma(channel), NOISE_FLOOR) for channel in residuals.T])
    correlations = np.eye(residuals.shape[1])
    for i, j in zip(*np.triu_indices(residuals.shape[1], 1)):
        correlations[i, j] = correlations[j, i] = _correlation(residuals[:, i], residuals[:, j])
    # the nearest valid covariance (robust correlations need not make one), then its Cholesky factor: unlike the
    # eigenvectors, whose signs a linear-algebra library may choose either way, it is unique, so every machine
    # draws the same grain for a frame
    values, vectors = np.linalg.eigh(correlations * np.outer(sigmas, sigmas))
    covariance = (vectors * np.maximum(values, 0)) @ vectors.T
    return np.linalg.cholesky(covariance + np.eye(len(sigmas)) * 1e-9 * np.trace(covariance))


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
