"""Learned detector: a small U-Net (restore.models.detector) trained on synthetic damage over clean photos.

Weights are a plain `torch.save` dict read back with `weights_only=True` (no code runs on load): a format tag, the
DetectorConfig that built them, the state dict, a digest of the tensors and an info dict that carries, besides
how the net was trained, the threshold calibrated on held-out training images. The shipped file lives in
`restore/weights/detector.pt` with its model card beside it.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from restore.damage import ARCHIVE_KINDS
from restore.images import seeded_rng, split_images
from restore.models.detector import DetectorConfig, DetectorNet
from restore.models.weights import load_net, save_net

from . import Detector, to_float
from .classical import contrast_of, cover_halo
from .scoring import match_counts, scores
from .synthetic import OVERLAYS, film_scan, panning_frames

FORMAT = "restore-detector/1"
SHIPPED_WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "detector.pt"
CLEAN_BUDGET = 0.0005  # calibration: at most this share of clean held-out pixels may be flagged
THRESHOLDS = np.round(np.arange(0.30, 0.991, 0.01), 2)  # candidates tried by the calibration


def save_detector_net(net: DetectorNet, path: str | os.PathLike, info: dict | None = None) -> str:
    return save_net(net, path, FORMAT, info)


def load_detector_net(path: str | os.PathLike) -> tuple[DetectorNet, dict]:
    """(net in eval mode on CPU, info with `sha256` and `path`); a corrupt or foreign file raises WeightsError."""
    return load_net(path, FORMAT, DetectorNet, DetectorConfig)


def damage_probability(net: DetectorNet, pixels: np.ndarray, tile: int = 1024, margin: int = 32) -> np.ndarray:
    """Per-pixel damage probability (H, W) float32; large frames run in tiles that each see `margin` px more."""
    image = to_float(pixels)
    image = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image  # gray scans as RGB
    height, width = image.shape[:2]
    out = np.empty((height, width), np.float32)
    step = tile - 2 * margin
    with torch.inference_mode():
        for y in range(0, height, step):
            for x in range(0, width, step):
                y0, x0 = max(0, y - margin), max(0, x - margin)
                y1, x1 = min(height, y + step + margin), min(width, x + step + margin)
                patch = torch.from_numpy(np.ascontiguousarray(image[y0:y1, x0:x1].transpose(2, 0, 1)))[None]
                prob = torch.sigmoid(net(patch))[0, 0].numpy()  # (y1 - y0, x1 - x0)
                y2, x2 = min(height, y + step), min(width, x + step)
                out[y:y2, x:x2] = prob[y - y0:y2 - y0, x - x0:x2 - x0]
    return out


class LearnedDetector(Detector):
    """Damage where the net's probability exceeds `threshold` (default: the one calibrated when it was trained),
    with the soft rims around it that still stand out from their surroundings (`classical.cover_halo`)."""

    name = "learned"

    def __init__(self, weights: str | os.PathLike | None = None, threshold: float | None = None, tile: int = 1024):
        self.net, self.info = load_detector_net(weights or SHIPPED_WEIGHTS)
        self.threshold = float(threshold if threshold is not None else self.info.get("threshold", 0.5))
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be between 0 and 1, got {self.threshold}")
        self.tile = int(tile)

    def __call__(self, pixels, neighbours=None, n_previous=None) -> np.ndarray:
        return cover_halo(damage_probability(self.net, pixels, self.tile) > self.threshold, *contrast_of(pixels))


def _batch(rng: np.random.Generator, images: list[np.ndarray], sources: int, crops: int, crop: int,
           overlay_dir: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """`sources` synthetic scans (random size and damage kinds, some undamaged), `crops` random crops of each.

    Damage is drawn on a frame of 256-512 px (as large as the image allows), as in an evaluation, because its size
    scales with the frame; the net then trains on small crops of it, which costs far less than whole frames.
    """
    inputs, targets = [], []
    for _ in range(sources):
        image = images[int(rng.integers(len(images)))]
        limit = min(512, *image.shape[:2])
        side = int(rng.integers(min(256, limit), limit + 1))
        y, x = int(rng.integers(image.shape[0] - side + 1)), int(rng.integers(image.shape[1] - side + 1))
        kinds = tuple(k for k in ARCHIVE_KINDS if rng.random() < 0.5)
        damaged, clean, mask = film_scan(rng, image[y:y + side, x:x + side], kinds,
                                         overlay_dir if rng.random() < 0.5 else None)
        if rng.random() < 0.15:  # undamaged scans teach the net to leave grain and texture alone
            damaged, mask = clean, np.zeros_like(mask)
        for _ in range(crops):
            cy, cx = int(rng.integers(side - crop + 1)), int(rng.integers(side - crop + 1))
            inputs.append(damaged[cy:cy + crop, cx:cx + crop].transpose(2, 0, 1).astype(np.float32) / 255.0)
            targets.append(mask[None, cy:cy + crop, cx:cx + crop].astype(np.float32))
    return torch.from_numpy(np.stack(inputs)), torch.from_numpy(np.stack(targets))


def calibrate(net: DetectorNet, images: list[np.ndarray], overlay_dir: str | None, seed: int) -> dict:
    """Threshold with the best F1 on synthetic damage over `images` among those that flag at most CLEAN_BUDGET of
    their pixels when undamaged; with its scores. Held-out training images only: never the evaluation set."""
    kinds = ARCHIVE_KINDS + ((OVERLAYS,) if overlay_dir else ())
    counts = np.zeros((len(THRESHOLDS), 4), np.int64)
    flagged, pixels = np.zeros(len(THRESHOLDS), np.int64), 0
    for index, image in enumerate(images):
        for kind in kinds:
            damage = ((), overlay_dir) if kind == OVERLAYS else ((kind,), None)
            damaged, mask, _ = panning_frames(seeded_rng(seed, str(index), kind), image, 512, *damage)
            prob = damage_probability(net, damaged)
            counts += np.stack([match_counts(prob > t, mask) for t in THRESHOLDS])
        clean, _, _ = panning_frames(seeded_rng(seed, str(index), "clean"), image, 512, (), None)
        prob = damage_probability(net, clean)
        flagged += np.array([(prob > t).sum() for t in THRESHOLDS])
        pixels += prob.size
    within = flagged <= CLEAN_BUDGET * pixels
    best = max(np.flatnonzero(within) if within.any() else [len(THRESHOLDS) - 1],
               key=lambda i: scores(counts[i])["f1"])
    return {"threshold": float(THRESHOLDS[best]), "val": scores(counts[best]),
            "val_clean_flagged": round(float(flagged[best]) / pixels, 6)}


def train_detector(data_dir: str | os.PathLike, out_path: str | os.PathLike, steps: int = 3000, seed: int = 0,
                   crop: int = 128, overlay_dir: str | None = None, init: str | os.PathLike | None = None,
                   lr: float = 2e-3, val_images: int = 8, threads: int | None = None, log=print,
                   endpoint_url: str | None = None, widths: tuple[int, ...] | None = None) -> str:
    """Train a detector net on synthetic damage over the clean images in `data_dir`; returns the weights' sha256.

    Every k-th image (`val_images` of them) is held out to calibrate the threshold at the end. `init` starts
    from existing weights (fine-tuning on an archive's own material); `widths` sizes a new net (channels per U-Net
    level; default DetectorConfig's). Loss: binary cross-entropy; the F1/clean
    trade-off is set by the calibrated threshold, not by loss weights. The weights are saved every 200 steps (with
    threshold 0.5), so a stopped run still leaves a model, and once more with the calibrated threshold at the end.
    """
    if init and widths:
        raise ValueError("widths size a new detector: a fine-tuned one keeps the widths of its --init weights")
    if threads:
        torch.set_num_threads(threads)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    train_images, held_out = split_images(str(data_dir), val_images, endpoint_url)
    train_images = [im for im in train_images if min(im.shape[:2]) >= crop]
    if not train_images:
        raise ValueError(f"no training images of at least {crop} px a side under {data_dir}")
    config = DetectorConfig(widths=widths) if widths else DetectorConfig()
    net = load_detector_net(init)[0].train() if init else DetectorNet(config)
    optimiser = torch.optim.Adam(net.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps, pct_start=0.05)
    info = {"seed": seed, "crop": crop, "data": Path(data_dir).name, "images": len(train_images),
            "overlays": overlay_dir is not None, "init": Path(init).name if init else None, "threshold": 0.5}
    start, losses, sha = time.time(), [], ""
    for step in range(1, steps + 1):
        x, target = _batch(rng, train_images, sources=4, crops=2, crop=crop, overlay_dir=overlay_dir)  # (8, 3, c, c)
        loss = F.binary_cross_entropy_with_logits(net(x), target)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        losses.append(loss.item())
        if step % 50 == 0 or step == steps:
            log(f"step {step}/{steps} loss {np.mean(losses[-50:]):.4f} {time.time() - start:.0f}s")
        if step % 200 == 0 or step == steps:
            info.update(steps=step, seconds=round(time.time() - start), loss=round(float(np.mean(losses[-200:])), 4))
            sha = save_detector_net(net, out_path, info)
    if held_out:
        info.update(calibrate(net.eval(), held_out, overlay_dir, seed), val_images=len(held_out))
        info["seconds"] = round(time.time() - start)
        log(f"threshold {info['threshold']}: held-out F1 {info['val']['f1']}, clean flagged "
            f"{100 * info['val_clean_flagged']:.3f} %")
        sha = save_detector_net(net, out_path, info)
    return sha
