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
