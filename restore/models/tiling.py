"""Tiled, sparse inpainting for frames of any size, with memory bounded by the tile size.

Cost follows the damage: the generator sees only boxes fitted around the holes, each hole pixel with at least
`context` pixels of its surroundings (archive damage covers a few percent of a frame, and a fixed grid of large
tiles would still run the model over most of it). Boxes are found on a coarse grid of cells: the cells that hold
hole pixels, grown by the context, split into connected regions; a region larger than a tile is cut into
overlapping tiles, each shrunk to the region's cells inside it. Boxes of equal size share batches, across the
frames of a call (the restorer pools frames on a GPU only: on a CPU it calls once per frame, for reruns that are
identical bit for bit).
Each box's prediction is weighted by a feather that falls off towards its edges, so overlapping predictions blend
without seams; finally the result is composited, so pixels outside the mask are exactly the input.

On a GPU the arithmetic is cheap and each generator call costs its kernel launches whatever its size, so fitted
boxes of many sizes (many small batches) are slower there than a regular grid of whole tiles: `grid=True` runs
only the grid's tiles that hold holes, all of one size, in few full batches.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F

from restore.models.generator import Generator

CELL = 16  # pixels per side of the grid on which boxes are fitted: finer fits tighter, coarser makes fewer boxes


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


def _check_overlap(tile: int, overlap: int) -> None:
    if not 0 <= overlap < tile:
        raise ValueError(f"need 0 <= overlap < tile; got overlap={overlap}, tile={tile}")


def _regions(cells: torch.Tensor) -> list[list[tuple[int, int]]]:
    """8-connected regions of the True cells of a (rows, cols) grid, as lists of (row, col)."""
    todo = {(int(r), int(c)) for r, c in cells.nonzero().tolist()}
    regions = []
    while todo:
        stack = [todo.pop()]
        region = []
        while stack:
            r, c = stack.pop()
            region.append((r, c))
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    if (r + dr, c + dc) in todo:
                        todo.remove((r + dr, c + dc))
                        stack.append((r + dr, c + dc))
        regions.append(region)
    return regions


def _region_boxes(region: list[tuple[int, int]], holes: torch.Tensor, shape: tuple[int, int], tile: int,
                  overlap: int, context: int) -> list[tuple[int, int, int, int]]:
    """(y0, x0, y1, x1) boxes for one region of hole cells: its bounding box grown by its reach, or, when that is
    larger than a tile, overlapping tiles over it, each shrunk to the grown region's cells inside it.

    A hole needs context in proportion to its thickness (a blotch is filled from further away than a hairline
    scratch): the reach is max(`context`, half the region's mean thickness), the thickness being its hole area
    over the longer side of its bounding box.
    """
    H, W = shape
    rows, cols = zip(*region)
    r0, r1, c0, c1 = min(rows), max(rows) + 1, min(cols), max(cols) + 1
    thickness = float(holes[list(rows), list(cols)].sum()) / (CELL * max(r1 - r0, c1 - c0))
    reach = -(-max(context, round(thickness / 2)) // CELL)  # in cells
    r0, c0 = max(0, r0 - reach), max(0, c0 - reach)
    r1, c1 = min(holes.shape[0], r1 + reach), min(holes.shape[1], c1 + reach)
    y0, x0, y1, x1 = r0 * CELL, c0 * CELL, min(H, r1 * CELL), min(W, c1 * CELL)
    if y1 - y0 <= tile and x1 - x0 <= tile:
        return [(y0, x0, y1, x1)]
    own = torch.zeros(r1 - r0, c1 - c0)
    own[[r - r0 for r in rows], [c - c0 for c in cols]] = 1.0
    needed = F.max_pool2d(own[None, None], 2 * reach + 1, 1, reach)[0, 0].bool()  # (r1 - r0, c1 - c0)
    boxes = []
    th, tw = min(tile, y1 - y0), min(tile, x1 - x0)
    for ty in _starts(y1 - y0, th, tile - overlap):
        for tx in _starts(x1 - x0, tw, tile - overlap):
            ty0, tx0 = y0 + ty, x0 + tx
            cells = needed[ty0 // CELL - r0:-(-(ty0 + th) // CELL) - r0, tx0 // CELL - c0:-(-(tx0 + tw) // CELL) - c0]
            inside = cells.nonzero()
            if len(inside):
                first, last = inside.min(0).values.tolist(), inside.max(0).values.tolist()
                boxes.append((max(ty0, (ty0 // CELL + first[0]) * CELL), max(tx0, (tx0 // CELL + first[1]) * CELL),
                              min(ty0 + th, (ty0 // CELL + last[0] + 1) * CELL),
                              min(tx0 + tw, (tx0 // CELL + last[1] + 1) * CELL)))
    return boxes


def _merge(boxes: list[tuple[int, int, int, int]], tile: int) -> list[tuple[int, int, int, int]]:
    """Merge boxes whose union fits a tile and costs no more than the two apart (nearby dust), until none do."""
    def area(box):
        return (box[2] - box[0]) * (box[3] - box[1])

    changed = True
    while changed:
        changed = False
        kept: list[tuple[int, int, int, int]] = []
        for box in sorted(boxes):
            for k, other in enumerate(kept):
                union = (min(box[0], other[0]), min(box[1], other[1]), max(box[2], other[2]), max(box[3], other[3]))
                if union[2] - union[0] <= tile and union[3] - union[1] <= tile and area(union) <= area(box) + area(other):
                    kept[k], changed = union, True
                    break
            else:
                kept.append(box)
        boxes = kept
    return boxes


def damage_boxes(mask: torch.Tensor, tile: int, overlap: int, context: int) -> list[tuple[int, int, int, int]]:
    """(y, x, h, w) boxes, none larger than `tile`, that hold every hole pixel of `mask` (bool (H, W)) with at least
    `context` pixels around it (less only at the frame's edges or where an overlapping box takes over)."""
    H, W = mask.shape
    holes = F.avg_pool2d(mask[None, None].float(), CELL, CELL, ceil_mode=True)[0, 0] * CELL * CELL  # hole px per cell
    boxes = [box for region in _regions(holes > 0)
             for box in _region_boxes(region, holes, (H, W), tile, overlap, context)]
    boxes = _merge(boxes, tile)
    if H <= tile and W <= tile and sum((y1 - y0) * (x1 - x0) for y0, x0, y1, x1 in boxes) >= H * W / 2:
        return [(0, 0, H, W)]  # mostly covered anyway: one pass over the whole frame sees the most context
    return [(y0, x0, y1 - y0, x1 - x0) for y0, x0, y1, x1 in boxes]


def grid_tiles(mask: torch.Tensor, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """(y, x, h, w) tiles of a regular grid over `mask` (bool (H, W)), `tile` - `overlap` apart and the last flush
    with the far edge, that hold hole pixels. All are one size; each hole pixel is blended from every grid tile
    that holds it, exactly as if the whole frame were tiled."""
    _check_overlap(tile, overlap)
    H, W = mask.shape
    th, tw = min(tile, H), min(tile, W)
    return [(y, x, th, tw) for y in _starts(H, th, tile - overlap) for x in _starts(W, tw, tile - overlap)
            if mask[y:y + th, x:x + tw].any()]


def hole_boxes(mask: torch.Tensor, tile: int, overlap: int, context: int,
               grid: bool) -> list[tuple[int, int, int, int]]:
    """The (y, x, h, w) boxes the generator sees for `mask`: `grid_tiles` with `grid`, else `damage_boxes`."""
    return grid_tiles(mask, tile, overlap) if grid else damage_boxes(mask, tile, overlap, context)


@torch.no_grad()
def inpaint_tiled_batch(generator: Generator, images: list[torch.Tensor], masks: list[torch.Tensor],
                        tile: int = 512, overlap: int = 64, context: int = 32, batch_size: int = 8,
                        grid: bool = False, boxes: list[list[tuple[int, int, int, int]]] | None = None,
                        batch_pixels: int | None = None) -> list[torch.Tensor]:
    """Inpaint several frames, pooling the boxes around their holes (or with `grid`, the grid tiles that hold
    them, which need no `context`: a tile's overlap with its neighbours is its context) into batches of `batch_size`,
    and of at most `batch_pixels` pixels where given (but one box a batch always): the generator's activations for
    a batch set the peak memory.
    `boxes`: each frame's boxes, when the caller has found them already (`hole_boxes`), or wants only some holes
    filled (the others keep the input).

    images: float (3, H, W) in [0, 1], sizes may differ; masks: bool (H, W), True = hole. Returns composited
    (3, H, W) tensors on the images' devices. Frames with an empty mask are returned unchanged without touching
    the generator. Crops go in channels_last, the layout of the restorer's generator. On CUDA
    the generator runs under bf16 autocast (fp16 on GPUs without bf16), fed from pinned memory; on CPU in fp32,
    deterministically.
    """
    _check_overlap(tile, overlap)
    if context < 0:
        raise ValueError(f"need context >= 0; got {context}")
    device = next(generator.parameters()).device
    by_size: dict[tuple[int, int], list] = {}  # only boxes of equal size can share a batch
    for i, (image, mask) in enumerate(zip(images, masks)):
        _check(image, mask)
        for y, x, h, w in boxes[i] if boxes is not None else hole_boxes(mask, tile, overlap, context, grid):
            by_size.setdefault((h, w), []).append((i, y, x))
    sums = [torch.zeros_like(im, dtype=torch.float32, device=device) for im in images]  # (3, H, W) weighted sums
    weights = [torch.zeros(im.shape[1:], device=device) for im in images]  # (H, W)
    cuda = device.type == "cuda"
    # bf16 where the GPU has bf16 units (Ampere on), else fp16: older cards only emulate bf16, slowly
    half = torch.bfloat16 if cuda and torch.cuda.get_device_capability(device)[0] >= 8 else torch.float16
    for (th, tw), size_jobs in by_size.items():
        feather = _feather(th, tw, overlap, device)  # (th, tw)
        boxes_per_batch = batch_size if batch_pixels is None else max(1, min(batch_size, batch_pixels // (th * tw)))
        for start in range(0, len(size_jobs), boxes_per_batch):
            group = size_jobs[start:start + boxes_per_batch]
            crops = torch.stack([images[i][:, y:y + th, x:x + tw] for i, y, x in group])  # (B, 3, th, tw)
            holes = torch.stack([masks[i][y:y + th, x:x + tw] for i, y, x in group])[:, None]  # (B, 1, th, tw)
            if cuda and crops.device.type == "cpu":  # pinned pages let the copy overlap the previous batch's kernels
                crops, holes = crops.pin_memory(), holes.pin_memory()
            crops, holes = crops.to(device, non_blocking=True), holes.to(device, non_blocking=True)
            crops = crops.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=half) if cuda else nullcontext():
                pred = generator(crops.float(), holes).float()  # (B, 3, th, tw)
            for (i, y, x), p in zip(group, pred):
                sums[i][:, y:y + th, x:x + tw] += p * feather
                weights[i][y:y + th, x:x + tw] += feather
    out = []
    for image, mask, total, weight in zip(images, masks, sums, weights):
        if not mask.any():
            out.append(image.clone())
            continue
        # holes no box covers (a caller's `boxes` may leave some out) keep the input there
        filled = mask[None] & (weight > 0).to(image.device)
        # `composite`, in place: on a large scan each (3, H, W) copy in floats is gigabytes
        pred = total.div_(weight.clamp_(min=1e-12)).to(image.device, image.dtype)  # (3, H, W)
        out.append(torch.where(filled, pred, image, out=pred))
    return out
