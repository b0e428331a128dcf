"""Detections scored against exact damage masks, with a 1-pixel tolerance at mask borders: shared by
`restore eval-detect` and the learned detector's threshold calibration, so both mean the same by F1."""
from __future__ import annotations

import cv2
import numpy as np

_TOLERANCE = np.ones((3, 3), np.uint8)  # 1-pixel tolerance, 8-connected


def match_counts(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """[flagged, flagged within tolerance, damage, damage within tolerance] for one frame; sums pool frames."""
    near_truth = cv2.dilate(truth.astype(np.uint8), _TOLERANCE).astype(bool)
    near_pred = cv2.dilate(pred.astype(np.uint8), _TOLERANCE).astype(bool)
    return np.array([pred.sum(), (pred & near_truth).sum(), truth.sum(), (truth & near_pred).sum()], np.int64)


def scores(counts: np.ndarray) -> dict[str, float]:
    """precision, recall, f1, iou from pooled `match_counts`."""
    flagged, flagged_ok, damage, damage_found = (int(c) for c in counts)
    precision = flagged_ok / flagged if flagged else 1.0
    recall = damage_found / damage if damage else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    iou = damage_found / (damage + flagged - flagged_ok) if damage + flagged - flagged_ok else 1.0
    return {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4), "iou": round(iou, 4)}
