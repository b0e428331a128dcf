"""A small damaged collection made from nothing: procedural scenes, archive damage, and the damage masks.

The demo must run on a fresh machine with no data, so the clean scenes are drawn here (sky gradient, hills,
shapes, grain) and damaged with the same synthetic-damage module that training and evaluation use.
"""
from __future__ import annotations

import numpy as np

from .damage import archive_damage
from .frames import Frame, encode_frame, encode_mask
from .spec import JobSpec


def clean_scene(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A plausible photograph-like scene as uint8 RGB (H, W, 3): smooth regions, edges and fine texture."""
    import cv2

    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    top, bottom = rng.uniform(0.3, 0.9, 3), rng.uniform(0.2, 0.8, 3)
    image = (top * (1 - y) + bottom * y) * np.ones((1, width, 1), dtype=np.float32)  # (H, W, 3) sky
    x = np.arange(width)
    for layer in range(3):  # hills: sums of sines, nearer ones darker and lower
        ridge = height * (0.45 + 0.15 * layer) + sum(
            rng.uniform(5, 30) * np.sin(x * rng.uniform(0.002, 0.03) + rng.uniform(0, 6)) for _ in range(3))
        below = np.arange(height)[:, None] > ridge[None, :]
        image[below] = rng.uniform(0.05, 0.6, 3) * (1 - 0.2 * layer)
    canvas = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    for _ in range(rng.integers(3, 8)):  # objects with hard edges
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        if rng.random() < 0.5:
            cv2.circle(canvas, centre, int(rng.integers(8, min(height, width) // 6)), colour, -1, cv2.LINE_AA)
        else:
            size = rng.integers(10, min(height, width) // 4, 2)
            cv2.rectangle(canvas, centre, (centre[0] + int(size[0]), centre[1] + int(size[1])), colour, -1)
    grain = cv2.GaussianBlur(rng.normal(0, 6, (height, width, 1)).astype(np.float32), (0, 0), 0.8)[..., None]
    return np.clip(canvas.astype(np.float32) + grain, 0, 255).astype(np.uint8)


def make_demo_frames(spec: JobSpec, count: int = 12, seed: int = 0, height: int = 384, width: int = 512) -> int:
    """Write `count` damaged frames and their masks where the spec reads them; returns how many were written."""
    # Imported here, as the pipeline (and with it Ray and pyarrow) is not needed by clean_scene, which
    # `restore bench --scaling` draws its frames with.
    from .frames import CONTENT_TYPES
    from .pipeline import mask_key_for, put_or_adopt
    from .storage import open_storage

    storage = open_storage(spec.input, spec.endpoint_url)
    masks = storage if not spec.masks.uri else open_storage(spec.masks.uri, spec.endpoint_url)
    rng = np.random.default_rng(seed)
    for index in range(count):
        damaged, mask = archive_damage(rng, clean_scene(rng, height, width))
        key = f"reel-01/frame_{index:04d}.png"
        frame = Frame(pixels=damaged, alpha=None, format="PNG", mode="RGB", icc_profile=None, exif=None)
        put_or_adopt(storage, key, encode_frame(frame, damaged, "png"), CONTENT_TYPES["png"])
        put_or_adopt(masks, mask_key_for(spec.masks.pattern, key), encode_mask(mask), CONTENT_TYPES["png"])
    return count
