"""The report's pictures of a frame: small JPEGs of its original, mask overlay, difference and restored output.

Two places make them, alike: a run's write stage makes each frame's thumbnails while the frame is in memory, so
that a report over S3 need not fetch and decode every original and output again; the report makes the compare
previews, and the thumbnails of frames no run made them for (outputs of older versions, a thumbnail that could
not be written). A frame held for review has no output: the run that holds it makes its review pictures
(`review_set`), as no later run reads it.
"""
from __future__ import annotations

import hashlib
import io

import numpy as np
from PIL import Image

from .detect import refine_mask
from .film import LOG_SCAN, to_view
from .frames import as_displayed
from .storage import Storage

REPORT_ROOT = "_report"
THUMB_SIZE, THUMB_QUALITY = 240, 85  # thumbnails in the frame list: shown at 160 px, sharp on high-density screens
PREVIEW_SIZE, PREVIEW_QUALITY = 2048, 90  # compare views: film frames up to 2K are shown at full resolution
REVIEW_SIZE, REVIEW_QUALITY = 800, 85  # a held frame's pictures: enough to tell lettering or stars from dust, and
# small, as a detector misled by a whole collection (a star atlas, a book's pages) holds every frame
TINT = np.array([255, 0, 128], dtype=np.float32)  # masked pixels in the overlay: a colour no film stock has
OUTLINE_SPAN = 400  # the black and white dashes around masked areas are a pixel wide per this many pixels of the
# picture's long side, so they stay visible when a 2K preview is shown in a card a fifth of its size
DIFFERENCE_GAIN = 4  # the difference picture's brightness per level changed: a change of 64 levels (of 255) is white
# How each folder's pictures are made; a new version remakes them once, reading every original and output again.
# Thumbnails: 2, turned as viewers show the frame, with its RGB ICC profile (the mask's outline, since, is not worth
# reading a whole archive again, nor losing the thumbnails of originals no longer readable). Previews: 3, the mask
# outlined and the difference picture added.
# Held: 1, the pictures of a frame held for review (`review_set`).
PICTURE_VERSIONS = {"thumbs": 2, "previews": 3, "held": 1}
# What each overlay of a held frame shows (`review_set`): the mask that held it, or, for a frame turned by its EXIF
# orientation, its mask (or its protect mask) read each way masks.orientation offers.
REVIEW_READINGS = {"given": "its given mask", "detected": "the damage the detector flagged",
                   "displayed": "its mask as drawn on the picture as shown (masks.orientation: displayed)",
                   "stored": "its mask as drawn on the pixels as stored (masks.orientation: stored)",
                   "protect-displayed": "its protect mask as drawn on the picture as shown (masks.orientation: "
                                        "displayed)",
                   "protect-stored": "its protect mask as drawn on the pixels as stored (masks.orientation: stored)"}


def pictures_prefix(job: str) -> str:
    """The folder of a job's pictures (`thumbs/`, `previews/`) and saved spec, in its output."""
    return f"{REPORT_ROOT}/{job}"


def pictures_name(input_sha256: str, output_sha256: str, folder: str) -> str:
    """Names a frame's pictures in `folder` by what they show (input and output bytes) and how they are made: a
    changed frame gets new ones."""
    made = f"{input_sha256}:{output_sha256}:{PICTURE_VERSIONS[folder]}"
    return hashlib.sha256(made.encode()).hexdigest()[:20]


def held_pictures_name(input_key: str, input_sha256: str, mask_etag: str | None, protect_etag: str | None,
                       config_hash: str, held_for: str) -> str:
    """Names a held frame's pictures by what they show: the frame (its key too: a video's frames share the file's
    sha256), its masks, the settings that found its damage (the config hash), and the setting it waits for."""
    made = (f"{input_key}:{input_sha256}:{mask_etag}:{protect_etag}:{config_hash}:{held_for}:"
            f"{PICTURE_VERSIONS['held']}")
    return hashlib.sha256(made.encode()).hexdigest()[:20]


def as_shown(pixels: np.ndarray, orientation: int, log: bool) -> np.ndarray:
    """A frame as its pictures show it: a log scan (`log`) through the view its restorer saw, not its flat codes;
    turned as a viewer turns the file (outputs keep the orientation tag)."""
    return as_displayed(to_view(pixels, LOG_SCAN) if log else pixels, orientation)


def shrink(pixels: np.ndarray, long_side: int) -> np.ndarray:
    """A frame brought down, never up, to `long_side`, as (h, w, 3) uint8: the original that `picture_set` takes."""
    return _resize(pixels, fit(pixels.shape[1], pixels.shape[0], long_side))


def picture_set(original: np.ndarray, mask: np.ndarray | None, restored: np.ndarray, quality: int,
                icc_profile: bytes | None = None, difference: bool = False) -> dict[str, bytes]:
    """JPEGs of the original (already `shrink`-ed: a run keeps only that much of it), the mask overlay (only with a
    mask), the difference (if asked) and the restored frame, all at the original's size, with the frame's RGB ICC
    profile, so that a browser shows an Adobe RGB or ProPhoto scan in its colours, not as sRGB. The difference has
    no profile: its greys are amounts of change, not colours.

    Ordered so that "r" comes last: its presence tells a later rebuild that the set is complete.
    """
    size = original.shape[1], original.shape[0]
    small_restored = _resize(restored, size)
    profile = _rgb_profile(icc_profile, restored.shape[2])
    pictures = {"o": _jpeg(original, quality, profile)}
    if mask is not None:
        pictures["m"] = _jpeg(_overlay(original, mask), quality, profile)
    if difference:  # the largest change in any channel: black where the restorer left a pixel as it was
        change = np.abs(small_restored.astype(np.int16) - original).max(axis=2)
        pictures["d"] = _jpeg(np.minimum(change * DIFFERENCE_GAIN, 255).astype(np.uint8), quality)
    pictures["r"] = _jpeg(small_restored, quality, profile)
    return pictures


def review_set(original: np.ndarray, masks: dict[str, np.ndarray], quality: int, icc_profile: bytes | None,
               channels: int) -> dict[str, bytes]:
    """JPEGs of a frame held for review: the mask overlay of each reading in `masks` (REVIEW_READINGS; each as shown,
    at the frame's full size), then the original (already `shrink`-ed), so that the reviewer sees what a restore would
    have repainted. Ordered so that "o" comes last: its presence tells the report that the set is complete."""
    profile = _rgb_profile(icc_profile, channels)
    pictures = {reading: _jpeg(_overlay(original, mask), quality, profile) for reading, mask in masks.items()}
    pictures["o"] = _jpeg(original, quality, profile)
    return pictures


def _rgb_profile(icc_profile: bytes | None, channels: int) -> bytes | None:
    """The frame's ICC profile where it can describe the RGB pictures made of it: a grey frame's cannot."""
    return icc_profile if icc_profile and icc_profile[16:20] == b"RGB " and channels == 3 else None


def _overlay(original: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The (already `shrink`-ed) original with the pixels of the full-size `mask` tinted and outlined."""
    size = original.shape[1], original.shape[0]
    # BOX averaging gives the masked share of each output pixel; any share at all tints it at least 45 %, so a
    # one-pixel scratch on a 6K scan still shows in a thumbnail.
    share = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.Resampling.BOX),
                       dtype=np.float32)[..., None] / 255  # (h, w, 1)
    alpha = np.where(share > 0, np.clip(0.45 + share, 0, 0.85), 0)
    overlay = original * (1 - alpha) + TINT * alpha
    # the tinted areas outlined in black and white dashes, as image editors draw a selection: the tint alone is
    # lost on readers who do not see magenta and on grey prints, and one outline colour on some pictures
    tinted = share[..., 0] > 0
    thickness = max(1, max(size) // OUTLINE_SPAN)
    rows, columns = np.nonzero(refine_mask(tinted, dilate=thickness) & ~tinted)  # the ring around them
    overlay[rows, columns] = ((rows + columns) // (2 * thickness) % 2 * 255)[:, None]  # dashes along any edge
    return overlay.astype(np.uint8)


def store_pictures(storage: Storage, prefix: str, folder: str, name: str, pictures: dict[str, bytes]) -> None:
    """A `picture_set` or `review_set` under `prefix/folder/`, in its order: the one that completes the set last."""
    for kind, data in pictures.items():
        storage.put(f"{prefix}/{folder}/{name}-{kind}.jpg", data, content_type="image/jpeg")


def fit(width: int, height: int, long_side: int) -> tuple[int, int]:
    """(width, height) scaled down, never up, so the long side is at most `long_side`."""
    scale = min(1.0, long_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _resize(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, C) uint8/uint16 → (h, w, 3) uint8; gray stays gray, 16-bit keeps its top 8 bits."""
    if pixels.dtype == np.uint16:
        pixels = (pixels >> 8).astype(np.uint8)
    image = Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)
    return np.asarray(image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0).convert("RGB"))


def _jpeg(pixels: np.ndarray, quality: int, icc_profile: bytes | None = None) -> bytes:
    """(h, w, 3) RGB or (h, w) grey uint8 as a JPEG."""
    buffer = io.BytesIO()
    # 4:4:4: the default chroma subsampling would smear a one-pixel tinted scratch into its pale neighbours.
    # Not `optimize`: with 4:4:4 it fails on grainy pictures ("broken data stream").
    Image.fromarray(pixels).save(buffer, "JPEG", quality=quality, subsampling=0,
                                 **({"icc_profile": icc_profile} if icc_profile else {}))
    return buffer.getvalue()
