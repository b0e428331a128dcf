"""Synthetic film scans for training and evaluating detectors: grain in the emulsion, damage on top, scanner noise.

The order matters: grain belongs to the film, so damage covers it; the scanner sees both, so its noise lies over
the damage too. A detector may thus not find damage merely by its lack of noise.
"""
from __future__ import annotations

import numpy as np

from restore.damage import archive_damage, film_grain

GRAIN = (0.01, 0.04)  # film grain sigma, fraction of full scale: fine to coarse stock
NOISE = (0.002, 0.008)  # scanner noise sigma


def film_scan(rng: np.random.Generator, image: np.ndarray, kinds: tuple[str, ...],
              overlay_dir: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(damaged scan, the same scan undamaged, exact damage mask (H, W)) for a clean `image`.

    `kinds` are archive damage kinds (see `restore.damage.ARCHIVE_KINDS`); with `overlay_dir`, real overlays
    are added too. The two scans share grain and scanner noise, so they differ only inside the mask.
    """
    grainy = film_grain(rng, image, rng.uniform(*GRAIN), 0.0)
    damaged, mask = archive_damage(rng, grainy, kinds, overlay_dir)
    noise_seed = int(rng.integers(2 ** 63))
    noise = rng.uniform(*NOISE)
    scan = film_grain(np.random.default_rng(noise_seed), grainy, 0.0, noise)
    damaged_scan = film_grain(np.random.default_rng(noise_seed), damaged, 0.0, noise)
    return damaged_scan, scan, mask


OVERLAYS = "overlays"  # the damage kind of real overlays (ground truth: their alpha), beside the procedural kinds
PAN = 4  # largest shift in pixels between neighbouring frames of `panning_frames`


def panning_frames(rng: np.random.Generator, image: np.ndarray, crop: int, kinds: tuple[str, ...],
                   overlay_dir: str | None) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """(damaged scan, its mask, [previous, next] damaged neighbours) around the centre crop (at most `crop` a
    side) of a panning shot: the neighbours' windows are shifted by a few pixels, with their own grain, noise and
    damage of the same kinds."""
    height, width = image.shape[:2]
    h, w = min(crop, height - 2 * PAN), min(crop, width - 2 * PAN)
    y, x = (height - h) // 2, (width - w) // 2
    damaged, _, mask = film_scan(rng, image[y:y + h, x:x + w], kinds, overlay_dir)
    neighbours = []
    for _ in range(2):
        dy, dx = (int(v) for v in rng.integers(-PAN, PAN + 1, 2))
        neighbours.append(film_scan(rng, image[y + dy:y + dy + h, x + dx:x + dx + w], kinds, overlay_dir)[0])
    return damaged, mask, neighbours
