"""`restore eval-detect`: damage detectors scored against the exact masks of seeded synthetic damage.

Every image in a folder gives one centre crop (at most `crop` px a side, RGB 8-bit) that first gets film grain,
then one kind of damage (each procedural kind of `restore.damage`, and real overlays when a folder of them is
given: ground truth = overlay alpha > 0.2), then scanner noise (`restore.detect.synthetic.film_scan`). Each
frame also gets two neighbours, the previous and next frames of a panning shot: the crop window shifted by a few
pixels, with their own grain, noise and damage of the same kind, so temporal detectors are scored on the same
frames as single-frame ones (which ignore them). All draws come from a seed derived from (seed, image, kind).

Scores pool the pixels of all images of a kind (and of all kinds for `overall`), with a 1-pixel tolerance at
mask borders, on the raw masks (no dilation):
- precision: flagged pixels within 1 px of true damage / flagged pixels (1.0 when nothing is flagged);
- recall: damage pixels within 1 px of a flagged pixel / damage pixels;
- f1: their harmonic mean; iou: recalled damage pixels / (damage pixels + flagged pixels beyond tolerance).
`clean.flagged_fraction` is the share of pixels flagged on grainy scans of the same crops with no damage at all.
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from .damage import ARCHIVE_KINDS
from .detect import DETECTORS, Detector, build_detector
from .detect.synthetic import film_scan

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
OVERLAYS = "overlays"
PAN = 4  # largest shift in pixels between neighbouring frames
_TOLERANCE = np.ones((3, 3), np.uint8)  # 1-pixel tolerance, 8-connected


def _rng(seed: int, *parts: str) -> np.random.Generator:
    digest = hashlib.sha256("\0".join([str(seed), *parts]).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _counts(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """[flagged, flagged within tolerance, damage, damage within tolerance] for one frame."""
    near_truth = cv2.dilate(truth.astype(np.uint8), _TOLERANCE).astype(bool)
    near_pred = cv2.dilate(pred.astype(np.uint8), _TOLERANCE).astype(bool)
    return np.array([pred.sum(), (pred & near_truth).sum(), truth.sum(), (truth & near_pred).sum()], np.int64)


def scores(counts: np.ndarray) -> dict[str, float]:
    """precision, recall, f1, iou from pooled `_counts`."""
    flagged, flagged_ok, damage, damage_found = (int(c) for c in counts)
    precision = flagged_ok / flagged if flagged else 1.0
    recall = damage_found / damage if damage else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    iou = damage_found / (damage + flagged - flagged_ok) if damage + flagged - flagged_ok else 1.0
    return {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4), "iou": round(iou, 4)}


def _load(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"cannot read image {path}")
    return np.ascontiguousarray(bgr[..., ::-1])


def _frames(rng: np.random.Generator, image: np.ndarray, crop: int, kinds: tuple[str, ...],
            overlay_dir: str | None) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """(damaged frame, its mask, [previous, next] damaged neighbours) around the centre crop."""
    height, width = image.shape[:2]
    h, w = min(crop, height - 2 * PAN), min(crop, width - 2 * PAN)
    y, x = (height - h) // 2, (width - w) // 2
    damaged, _, mask = film_scan(rng, image[y:y + h, x:x + w], kinds, overlay_dir)
    neighbours = []
    for _ in range(2):
        dy, dx = (int(v) for v in rng.integers(-PAN, PAN + 1, 2))
        neighbours.append(film_scan(rng, image[y + dy:y + dy + h, x + dx:x + dx + w], kinds, overlay_dir)[0])
    return damaged, mask, neighbours


def default_detectors() -> tuple[str, ...]:
    """Every detector that reads the picture; the learned one only where its shipped weights are present."""
    from .detect.learned import SHIPPED_WEIGHTS

    return tuple(d for d in DETECTORS if d != "learned" or SHIPPED_WEIGHTS.is_file())


def evaluate_detect(data_dir: str | Path, detectors: Sequence[str | Detector] | None = None,
                    overlay_dir: str | Path | None = None, seed: int = 0, limit: int | None = None,
                    crop: int = 512, weights: str | Path | None = None) -> dict:
    """Score `detectors` (names or built detectors; default `default_detectors()`) on every image under
    `data_dir` (sorted, first `limit`); `weights` is a detector file for "learned" instead of the shipped one.

    Returns {"settings": {...}, "detectors": {name: {"overall": scores, kind: scores, ...,
    "clean": {"flagged_fraction": f}, "seconds_per_mp": s}}}.
    """
    paths = sorted(p for p in Path(data_dir).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not paths:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {data_dir}")
    built = [build_detector(d, **({"weights": weights} if d == "learned" and weights else {}))
             if isinstance(d, str) else d for d in (default_detectors() if detectors is None else detectors)]
    kinds = ARCHIVE_KINDS + ((OVERLAYS,) if overlay_dir is not None else ())
    overlay_dir = None if overlay_dir is None else str(overlay_dir)
    counts = {d.name: {k: np.zeros(4, np.int64) for k in kinds} for d in built}
    clean_flagged = {d.name: 0 for d in built}
    seconds = {d.name: 0.0 for d in built}
    clean_pixels = 0
    for path in paths:
        image = _load(path)
        name = str(path.relative_to(data_dir))
        for kind in kinds:
            damage = ((), overlay_dir) if kind == OVERLAYS else ((kind,), None)
            damaged, mask, neighbours = _frames(_rng(seed, name, kind), image, crop, *damage)
            for detector in built:
                start = time.perf_counter()
                pred = detector(damaged, neighbours, n_previous=1)
                seconds[detector.name] += time.perf_counter() - start
                counts[detector.name][kind] += _counts(pred, mask)
        clean, _, clean_neighbours = _frames(_rng(seed, name, "clean"), image, crop, (), None)  # no damage at all
        clean_pixels += clean.shape[0] * clean.shape[1]
        for detector in built:
            clean_flagged[detector.name] += int(detector(clean, clean_neighbours, n_previous=1).sum())
    megapixels = len(kinds) * clean_pixels / 1e6
    result = {"settings": {"data": Path(data_dir).name, "images": len(paths), "crop": crop, "seed": seed,
                           "kinds": list(kinds),
                           "weights_sha256": {d.name: d.info["sha256"] for d in built if d.name == "learned"}},
              "detectors": {}}
    for detector in built:
        per_kind = counts[detector.name]
        entry = {"overall": scores(sum(per_kind.values()))}
        entry.update({kind: scores(c) for kind, c in per_kind.items()})
        entry["clean"] = {"flagged_fraction": round(clean_flagged[detector.name] / clean_pixels, 6)}
        entry["seconds_per_mp"] = round(seconds[detector.name] / megapixels, 3)
        result["detectors"][detector.name] = entry
    return result


def markdown_table(result: dict) -> str:
    """One row per detector: F1 per kind, overall precision/recall/F1/IoU and the clean flagged fraction."""
    kinds = result["settings"]["kinds"]
    head = ["detector", *[f"F1 {k}" for k in kinds], "precision", "recall", "F1", "IoU", "clean flagged", "s/MP"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, entry in result["detectors"].items():
        overall = entry["overall"]
        cells = [name, *[f"{entry[k]['f1']:.3f}" for k in kinds],
                 *[f"{overall[m]:.3f}" for m in ("precision", "recall", "f1", "iou")],
                 f"{100 * entry['clean']['flagged_fraction']:.3f} %", f"{entry['seconds_per_mp']:.2f}"]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)
