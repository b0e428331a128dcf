"""Folders of clean images for training and evaluation: listed and read through the storage layer, so a local
folder and an S3 prefix serve alike, and decoded to 8-bit RGB one way everywhere."""
from __future__ import annotations

import hashlib
import io

import numpy as np
from PIL import Image

from .storage import LocalStorage, Storage, StorageError, open_storage

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")


def list_images(uri: str, endpoint_url: str | None = None) -> tuple[Storage, list[str]]:
    """The storage at `uri` and the keys of the images under it, recursively, sorted by key."""
    storage = open_storage(uri, endpoint_url)
    keys = [info.key for info in storage.list(tuple(f"*{suffix}" for suffix in IMAGE_SUFFIXES))]
    if not keys:
        missing = isinstance(storage, LocalStorage) and not storage.root.exists()
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {uri}"
                         + (": the folder does not exist" if missing else ""))
    return storage, keys


def read_rgb8(storage: Storage, key: str) -> np.ndarray:
    """(H, W, 3) uint8. 16-bit greyscale is scaled to 8 bits: Pillow's own conversion would clip it to white."""
    try:
        with Image.open(io.BytesIO(storage.get(key))) as image:
            if image.mode.startswith("I"):
                image = Image.fromarray((np.asarray(image, np.float64) / 257).round().clip(0, 255).astype(np.uint8))
            return np.asarray(image.convert("RGB")).copy()
    except (OSError, ValueError, StorageError) as error:  # Pillow's "cannot identify image file" is an OSError
        raise ValueError(f"cannot read image {storage.uri.rstrip('/')}/{key}: {error}") from None


def split_images(uri: str, held_out: int, endpoint_url: str | None = None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(kept, held out) decoded images; every k-th image (sorted by key) is held out, so the split is stable."""
    storage, keys = list_images(uri, endpoint_url)
    if len(keys) <= held_out:
        raise ValueError(f"{uri}: {len(keys)} images, need more than the {held_out} held out for validation; "
                         "hold out fewer (val_images)")
    stride = len(keys) / max(1, held_out)
    held = {int(i * stride) for i in range(held_out)}
    kept = [read_rgb8(storage, key) for i, key in enumerate(keys) if i not in held]
    return kept, [read_rgb8(storage, key) for i, key in enumerate(keys) if i in held]


def seeded_rng(seed: int, *names: str) -> np.random.Generator:
    """A generator for one (image, damage kind, ...): stable across runs, machines and Python versions (no `hash()`)."""
    digest = hashlib.sha256("\0".join([str(seed), *names]).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))
