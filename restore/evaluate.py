"""`restore eval`: restorers side by side on the same seeded damage, scored against the clean originals.

Every image in a folder gives one 256×256 centre crop (RGB, 8-bit). Each damage class is drawn once per image
from a seed derived from (seed, image path, class), so a run is reproducible and every method restores exactly
the same damaged inputs and masks. Scores are per image, then averaged over the images of a class:

- `psnr_hole`: PSNR (0–255) over the hole pixels only — the number inpainting is judged by; the rest of the
  crop is copied through by every restorer and would only dilute the differences.
- `psnr`, `ssim`: over the whole crop. SSIM is the standard one (Wang et al. 2004: Gaussian window 11, σ = 1.5,
  K1 = 0.01, K2 = 0.03, borders outside the valid window dropped), computed per RGB channel and averaged, as
  LaMa's evaluation does, so colour errors count.
- `texture`: mean gradient magnitude (Sobel, on luma) inside the holes of the results over that of the ground
  truth, pooled over the images so a flat hole (a white page) cannot divide by zero. 1.0 is natural, below is
  blur, above is invented detail or noise.
- `seconds_per_mp`: restorer wall time per megapixel of crops processed, one frame per call (the latency of a
  frame, not a batched throughput; `restore bench` measures that).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from .damage import MASK_CLASSES, archive_damage, hole_mask
from .images import list_images, read_rgb8, seeded_rng
from .restorers import build_restorer
from .spec import RESTORERS, RestorerSettings

CLASSES = MASK_CLASSES + ("archive",)
METRICS = ("psnr_hole", "ssim", "psnr", "seconds_per_mp", "texture")
PSNR_CAP = 100.0  # dB; a hole filled exactly (a flat white page) would otherwise make a class mean infinite
HOLE_VALUE = 255  # hole pixels of the restorers' input: none of them may see the ground truth there
GRID_IMAGES = 2  # sample images per class in the PNG grid


# ---- metrics (images are uint8 (H, W, 3); masks bool (H, W), True = hole) ----

def psnr(result: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None) -> float:
    """PSNR in dB for 8-bit images over all channels, inside `mask` only if given; identical pixels give PSNR_CAP."""
    diff = result.astype(np.float64) - truth.astype(np.float64)
    if mask is not None:
        diff = diff[mask]
    mse = float(np.mean(diff ** 2))
    return PSNR_CAP if mse == 0 else min(PSNR_CAP, 10 * math.log10(255.0 ** 2 / mse))


def _window_mean(x: np.ndarray) -> np.ndarray:
    """Gaussian-weighted mean of every 11×11 window that lies wholly inside the image (the 'valid' part)."""
    return cv2.GaussianBlur(x, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)[5:-5, 5:-5]


def _ssim_channel(a: np.ndarray, b: np.ndarray) -> float:
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = _window_mean(a), _window_mean(b)
    var_a = _window_mean(a * a) - mu_a ** 2
    var_b = _window_mean(b * b) - mu_b ** 2
    cov = _window_mean(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean())


def ssim(result: np.ndarray, truth: np.ndarray) -> float:
    """Mean SSIM over the valid 11×11 windows (images at least 11 px a side), averaged over the channels."""
    a, b = result.astype(np.float64), truth.astype(np.float64)
    if min(a.shape[:2]) < 11:
        raise ValueError(f"SSIM needs images of at least 11x11 pixels, got {a.shape[:2]}")
    a, b = (a, b) if a.ndim == 3 else (a[..., None], b[..., None])
    return float(np.mean([_ssim_channel(a[..., c], b[..., c]) for c in range(a.shape[2])]))


def gradient_energy(image: np.ndarray, mask: np.ndarray) -> float:
    """Mean Sobel gradient magnitude of the image's luma inside the mask: how much detail the hole holds."""
    luma = image.astype(np.float64) @ np.array([0.299, 0.587, 0.114]) if image.ndim == 3 else image.astype(np.float64)
    gx = cv2.Sobel(luma, cv2.CV_64F, 1, 0, ksize=3)
    gy = cv2.Sobel(luma, cv2.CV_64F, 0, 1, ksize=3)
    return float(np.sqrt(gx ** 2 + gy ** 2)[mask].mean())


def texture(result_energy: float, truth_energy: float) -> float:
    """Detail in filled holes relative to the originals', from `gradient_energy` summed over the holes of a class
    (summed, not a mean of ratios, so a flat original cannot divide by zero): 1.0 natural, below 1 blurred, inf if
    the originals are flat."""
    return result_energy / truth_energy if truth_energy > 0 else math.inf


# ---- inputs ----

def centre_crop(image: np.ndarray, crop: int) -> tuple[np.ndarray, bool]:
    """(centre `crop`×`crop` of an 8-bit RGB image, whether it was scaled up): a shorter image is enlarged
    (bicubic) first."""
    picture = Image.fromarray(image)
    short = min(picture.size)
    upscaled = short < crop
    if upscaled:
        factor = crop / short
        picture = picture.resize((max(crop, round(picture.width * factor)), max(crop, round(picture.height * factor))),
                                 Image.Resampling.BICUBIC)
    left, top = (picture.width - crop) // 2, (picture.height - crop) // 2
    return np.asarray(picture.crop((left, top, left + crop, top + crop)), np.uint8).copy(), upscaled


def damage(clean: np.ndarray, name: str, kind: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(damaged input, bool mask) for one crop and class; hole pixels are overwritten so nothing can leak."""
    rng = seeded_rng(seed, name, kind)
    if kind == "archive":
        return archive_damage(rng, clean)
    mask = hole_mask(rng, clean.shape[0], clean.shape[1], kind)
    damaged = clean.copy()
    damaged[mask] = HOLE_VALUE
    return damaged, mask


def _check_choices(methods, classes) -> None:
    for method in methods:
        if method not in RESTORERS:
            raise ValueError(f"unknown method {method!r}; valid: {', '.join(RESTORERS)}")
    for kind in classes:
        if kind not in CLASSES:
            raise ValueError(f"unknown damage class {kind!r}; valid: {', '.join(CLASSES)}")
    if not methods or not classes:
        raise ValueError("evaluation needs at least one method and one damage class")


def _build(methods, weights, threads, warm_input, warm_mask) -> tuple[dict, dict[str, str]]:
    """Restorers that build and run, and for each one that does not, why (reported, never silently dropped).

    Each is run once on `warm_input` untimed, so lazy set-up (thread pools, CUDA context) is not billed as a
    per-pixel cost, and a method that fails on its first frame is skipped rather than ending the whole run.
    """
    restorers, skipped = {}, {}
    for method in methods:
        settings = RestorerSettings(name=method, weights=str(weights) if weights else None)
        try:
            restorer = build_restorer(settings, threads=threads)
            restorer.restore_batch([warm_input], [warm_mask])
        except Exception as error:  # a method that cannot run must not cost the comparison of the others
            skipped[method] = f"{type(error).__name__}: {error}"
        else:
            restorers[method] = restorer
    return restorers, skipped


# ---- the evaluation ----

def evaluate(data_dir: str | Path, methods=RESTORERS, classes=CLASSES, crop: int = 256, seed: int = 0,
             weights: str | Path | None = None, limit: int | None = None, grid_png: str | Path | None = None,
             table_md: str | Path | None = None, threads: int = 1, endpoint_url: str | None = None) -> dict:
    """Score each method on each damage class over the images under `data_dir`; see the module docstring.

    `limit` keeps the first N images (sorted by path); `weights` is the GAN's generator file (default: the shipped
    one); `threads` is the GAN's CPU threads. Writes the Markdown table and the PNG grid when given paths.
    """
    methods, classes = tuple(methods), tuple(classes)
    _check_choices(methods, classes)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    storage, names = list_images(str(data_dir), endpoint_url)
    names = names[:limit]
    warm_input, warm_mask = damage(centre_crop(read_rgb8(storage, names[0]), crop)[0], names[0], classes[0], seed)
    restorers, skipped = _build(methods, weights, threads, warm_input, warm_mask)
    if not restorers:
        raise ValueError("no method could run: " + "; ".join(f"{m}: {reason}" for m, reason in skipped.items()))

    scores = {m: {c: {"psnr_hole": [], "ssim": [], "psnr": []} for c in classes} for m in restorers}
    detail = {m: {c: [0.0, 0.0] for c in classes} for m in restorers}  # (result, truth) gradient energy sums
    seconds = {m: {c: 0.0 for c in classes} for m in restorers}
    hole_fraction = {c: [] for c in classes}
    upscaled, grid_rows = [], []

    for index, name in enumerate(names):
        clean, was_upscaled = centre_crop(read_rgb8(storage, name), crop)
        if was_upscaled:
            upscaled.append(name)
        for kind in classes:
            damaged, mask = damage(clean, name, kind, seed)
            hole_fraction[kind].append(float(mask.mean()))
            outputs = {}
            for method, restorer in restorers.items():
                start = time.perf_counter()
                restored = restorer.restore_batch([damaged], [mask])[0]
                seconds[method][kind] += time.perf_counter() - start
                outputs[method] = restored
                row = scores[method][kind]
                row["psnr_hole"].append(psnr(restored, clean, mask))
                row["psnr"].append(psnr(restored, clean))
                row["ssim"].append(ssim(restored, clean))
                detail[method][kind][0] += gradient_energy(restored, mask)
                detail[method][kind][1] += gradient_energy(clean, mask)
            if index < GRID_IMAGES:
                grid_rows.append((f"{kind}: {name}", damaged, outputs, clean))

    megapixels = len(names) * crop * crop / 1e6
    table = {}
    for method in restorers:
        table[method] = {}
        for kind in classes:
            table[method][kind] = {
                **{metric: float(np.mean(values)) for metric, values in scores[method][kind].items()},
                "seconds_per_mp": seconds[method][kind] / megapixels,
                "texture": texture(*detail[method][kind]),
            }
    gan = restorers.get("gan")
    result = {
        "data": str(data_dir),
        "images": len(names),
        "crop": crop,
        "seed": seed,
        "classes": list(classes),
        "hole_fraction": {kind: float(np.mean(values)) for kind, values in hole_fraction.items()},
        "images_upscaled": upscaled,
        "methods": table,
        "skipped": skipped,
        "weights_sha256": gan.weights_sha256 if gan else None,
    }
    if table_md:
        Path(table_md).write_text(markdown_table(result))
    if grid_png:
        write_grid(grid_rows, list(restorers), grid_png)
    return result


# ---- reports ----

_LABELS = {"psnr_hole": "hole PSNR (dB)", "ssim": "SSIM", "psnr": "PSNR (dB)", "seconds_per_mp": "s / MP",
           "texture": "texture (1 = natural)"}
_FORMATS = {"psnr_hole": "{:.2f}", "ssim": "{:.4f}", "psnr": "{:.2f}", "seconds_per_mp": "{:.3f}",
            "texture": "{:.3f}"}


def markdown_table(result: dict) -> str:
    """Methods side by side, one row per (class, metric); skipped methods listed with their reasons."""
    methods = list(result["methods"])
    lines = [f"{result['images']} images, {result['crop']}×{result['crop']} centre crops, seed {result['seed']}"
             + (f", generator sha256 {result['weights_sha256']}" if result["weights_sha256"] else ""),
             "", "| class | metric | " + " | ".join(methods) + " |", "|---|---|" + "---:|" * len(methods)]
    for kind in result["classes"]:
        for metric in METRICS:
            cells = [_FORMATS[metric].format(result["methods"][m][kind][metric]) for m in methods]
            lines.append(f"| {kind} | {_LABELS[metric]} | " + " | ".join(cells) + " |")
    for method, reason in result["skipped"].items():
        lines.append(f"\nSkipped {method}: {reason}")
    return "\n".join(lines) + "\n"


def write_json(result: dict, path: str | Path) -> None:
    """The result as strict JSON: an infinite texture ratio (a flat ground truth) is written as null."""
    strict = json.loads(json.dumps(result), parse_constant=lambda constant: None)
    Path(path).write_text(json.dumps(strict, indent=2, allow_nan=False) + "\n")


def write_grid(rows: list, methods: list[str], path: str | Path) -> None:
    """A PNG: one row per sample (image, class); columns damaged input, each method, ground truth, with a header."""
    columns = ["input", *methods, "ground truth"]
    size = rows[0][1].shape[0]
    header = np.full((24, size * len(columns), 3), 255, np.uint8)
    for i, label in enumerate(columns):
        cv2.putText(header, label, (i * size + 6, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    strips = [header]
    for label, damaged, outputs, truth in rows:
        tiles = [damaged.copy(), *(outputs[m] for m in methods), truth]
        cv2.rectangle(tiles[0], (0, 0), (size - 1, 18), (0, 0, 0), -1)
        cv2.putText(tiles[0], label[:40], (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
        strips.append(np.concatenate(tiles, axis=1))
    Image.fromarray(np.concatenate(strips, axis=0)).save(path)
