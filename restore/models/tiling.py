"""Tiled, sparse inpainting for frames of any size, with memory bounded by the tile size.

The frame is covered by overlapping tiles; only tiles that contain hole pixels go through the generator (archive
damage covers a few percent of a frame, so cost follows the damage), batched across tiles and frames. Each tile's
prediction is weighted by a feather that falls off towards the tile's edges, so overlapping predictions blend
without seams; finally the result is composited, so pixels outside the mask are exactly the input.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch

from restore.models.generator import Generator, composite


def _starts(length: int, tile: int, stride: int) -> list[int]:
    """Tile origins along one axis: every `stride` pixels, the last one flush with the far edge."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def _feather(height: int, width: int, overlap: int, device: torch.device) -> torch.Tensor:
    """(height, width) weights: 1 inside, ramping linearly down to a small floor across `overlap` pixels at the
    edges, where a tile has the least context. The floor keeps every pixel's total weight positive."""
    def ramp(n: int) -> torch.Tensor:
        distance = torch.minimum(torch.arange(n, device=device), torch.arange(n, device=device).flip(0)) + 1.0
        return (distance / max(1, overlap)).clamp(1e-3, 1.0)

    return ramp(height)[:, None] * ramp(width)[None, :]


def _check(image: torch.Tensor, mask: torch.Tensor) -> None:
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be (3, H, W); got {tuple(image.shape)} (replicate grey frames to 3 channels)")
    if mask.shape != image.shape[1:] or mask.dtype != torch.bool:
        raise ValueError(f"mask must be bool (H, W) = {tuple(image.shape[1:])}; got {mask.dtype} {tuple(mask.shape)}")


@torch.no_grad()
def inpaint_tiled_batch(generator: Generator, images: list[torch.Tensor], masks: list[torch.Tensor],
                        tile: int = 512, overlap: int = 64, batch_size: int = 8) -> list[torch.Tensor]:
    """Inpaint several frames, pooling their damaged tiles into batches of `batch_size`.

    images: float (3, H, W) in [0, 1], sizes may differ; masks: bool (H, W), True = hole. Returns composited
    (3, H, W) tensors on the images' devices. Frames no larger than a tile run whole (the generator pads them);
    frames with an empty mask are returned unchanged without touching the generator. On CUDA the generator runs
    under bf16 autocast with channels_last; on CPU in fp32, deterministically.
    """
    if not 0 <= overlap < tile:
        raise ValueError(f"need 0 <= overlap < tile; got overlap={overlap}, tile={tile}")
    device = next(generator.parameters()).device
    jobs = []  # (frame index, y, x, h, w) of every tile that holds hole pixels
    for i, (image, mask) in enumerate(zip(images, masks)):
        _check(image, mask)
        H, W = mask.shape
        th, tw = min(tile, H), min(tile, W)
        for y in _starts(H, th, tile - overlap):
            for x in _starts(W, tw, tile - overlap):
                if mask[y:y + th, x:x + tw].any():
                    jobs.append((i, y, x, th, tw))
    sums = [torch.zeros_like(im, dtype=torch.float32, device=device) for im in images]  # (3, H, W) weighted sums
    weights = [torch.zeros(im.shape[1:], device=device) for im in images]  # (H, W)
    by_size: dict[tuple[int, int], list] = {}  # only tiles of equal size can share a batch
    for job in jobs:
        by_size.setdefault(job[3:], []).append(job)
    cuda = device.type == "cuda"
    for (th, tw), size_jobs in by_size.items():
        feather = _feather(th, tw, overlap, device)  # (th, tw)
        for start in range(0, len(size_jobs), batch_size):
            group = size_jobs[start:start + batch_size]
            crops = torch.stack([images[i][:, y:y + th, x:x + tw] for i, y, x, _, _ in group]).to(device)  # (B, 3, th, tw)
            holes = torch.stack([masks[i][y:y + th, x:x + tw] for i, y, x, _, _ in group]).to(device)[:, None]  # (B, 1, th, tw)
            if cuda:
                crops = crops.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext():
                pred = generator(crops.float(), holes).float()  # (B, 3, th, tw)
            for (i, y, x, _, _), p in zip(group, pred):
                sums[i][:, y:y + th, x:x + tw] += p * feather
                weights[i][y:y + th, x:x + tw] += feather
    out = []
    for image, mask, total, weight in zip(images, masks, sums, weights):
        if not mask.any():
            out.append(image.clone())
            continue
        pred = (total / weight.clamp(min=1e-12)).to(image.device)  # (3, H, W); every hole pixel has weight > 0
        out.append(composite(pred, image, mask[None]))
    return out


def inpaint_tiled(generator: Generator, image: torch.Tensor, mask: torch.Tensor, tile: int = 512,
                  overlap: int = 64, batch_size: int = 8) -> torch.Tensor:
    """Inpaint one frame: image float (3, H, W) in [0, 1], mask bool (H, W) -> composited (3, H, W)."""
    return inpaint_tiled_batch(generator, [image], [mask], tile, overlap, batch_size)[0]
