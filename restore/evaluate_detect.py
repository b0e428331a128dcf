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

import time
from pathlib import Path
from typing import Sequence

import numpy as np

from .damage import ARCHIVE_KINDS
from .detect import Detector, build_detector
from .detect.scoring import match_counts, scores
from .detect.synthetic import OVERLAYS, panning_frames
from .images import list_images, read_rgb8, seeded_rng
from .spec import DETECTOR_NAMES



def default_detectors() -> tuple[str, ...]:
    """Every detector that reads the picture; the learned one only where its shipped weights are present."""
    from .detect.learned import SHIPPED_WEIGHTS

    return tuple(d for d in DETECTOR_NAMES if d != "learned" or SHIPPED_WEIGHTS.is_file())


def evaluate_detect(data_dir: str | Path, detectors: Sequence[str | Detector] | None = None,
                    overlay_dir: str | Path | None = None, seed: int = 0, limit: int | None = None,
                    crop: int = 512, weights: str | Path | None = None, endpoint_url: str | None = None) -> dict:
    """Score `detectors` (names or built detectors; default `default_detectors()`) on every image under
    `data_dir` (sorted, first `limit`); `weights` is a detector file for "learned" instead of the shipped one.

    Returns {"settings": {...}, "detectors": {name: {"overall": scores, kind: scores, ...,
    "clean": {"flagged_fraction": f}, "seconds_per_mp": s}}}.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    storage, names = list_images(str(data_dir), endpoint_url)
    names = names[:limit]
    built = [build_detector(d, **({"weights": weights} if d == "learned" and weights else {}))
             if isinstance(d, str) else d for d in (default_detectors() if detectors is None else detectors)]
    kinds = ARCHIVE_KINDS + ((OVERLAYS,) if overlay_dir is not None else ())
    overlay_dir = None if overlay_dir is None else str(overlay_dir)
    counts = {d.name: {k: np.zeros(4, np.int64) for k in kinds} for d in built}
    clean_flagged = {d.name: 0 for d in built}
    seconds = {d.name: 0.0 for d in built}
    clean_pixels = 0
    for name in names:
        image = read_rgb8(storage, name)
        for kind in kinds:
            damage = ((), overlay_dir) if kind == OVERLAYS else ((kind,), None)
            damaged, mask, neighbours = panning_frames(seeded_rng(seed, name, kind), image, crop, *damage)
            for detector in built:
                start = time.perf_counter()
                pred = detector(damaged, neighbours, n_previous=1)
                seconds[detector.name] += time.perf_counter() - start
                counts[detector.name][kind] += match_counts(pred, mask)
        clean_rng = seeded_rng(seed, name, "clean")
        clean, _, clean_neighbours = panning_frames(clean_rng, image, crop, (), None)  # no damage at all
        clean_pixels += clean.shape[0] * clean.shape[1]
        for detector in built:
            clean_flagged[detector.name] += int(detector(clean, clean_neighbours, n_previous=1).sum())
    megapixels = len(kinds) * clean_pixels / 1e6
    result = {"settings": {"data": Path(data_dir).name, "images": len(names), "crop": crop, "seed": seed,
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
