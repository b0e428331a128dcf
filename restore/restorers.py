"""Restorers: take a frame and its mask, return the frame with only the masked pixels changed.

Every restorer works on the frame's own integer pixels (uint8 or uint16, (H, W, C)); the base class owns the
guarantees a user relies on (empty mask → untouched copy, unmasked pixels bit-identical, same dtype and shape),
so a subclass only fills holes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .spec import CLASSICAL_RESTORERS, RESTORER_NAMES, RestorerSettings

SHIPPED_WEIGHTS = Path(__file__).parent / "weights" / "generator.pt"


class RestorerError(RuntimeError):
    """A restorer that cannot be built (missing weights, pinned hash mismatch, unknown name)."""


class Restorer:
    name: str = ""
    weights_sha256: str | None = None

    def __call__(self, pixels: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return self.restore_batch([pixels], [mask])[0]

    def restore_batch(self, frames: list[np.ndarray], masks: list[np.ndarray]) -> list[np.ndarray]:
        """Restore several frames; the model sees only the ones with holes."""
        for pixels, mask in zip(frames, masks):
            if pixels.ndim != 3 or mask.shape != pixels.shape[:2]:
                raise ValueError(f"mask {mask.shape} does not match frame {pixels.shape[:2]}")
        todo = [i for i, mask in enumerate(masks) if mask.any()]
        filled = self.fill([frames[i] for i in todo], [masks[i] for i in todo]) if todo else []
        restored = [pixels.copy() for pixels in frames]
        for i, fill in zip(todo, filled):
            hole = masks[i]
            restored[i][hole] = fill[hole]  # composite: outside the hole the input stays, bit for bit
        return restored

    def fill(self, frames: list[np.ndarray], masks: list[np.ndarray]) -> list[np.ndarray]:
        """Fill the holes of frames that have some; values outside the holes are ignored."""
        raise NotImplementedError


class PassThrough(Restorer):
    """Changes nothing: a job with it measures everything but the model (decode, encode, storage, manifests)."""

    name = "none"

    def fill(self, frames, masks):
        return frames


EXACT_HARMONIC_PIXELS = 40_000  # holes up to this many pixels are solved directly; larger ones level by level
DIRECT_BATCH_PIXELS = 200_000  # small holes are solved together in batches of about this many pixels


def harmonic_fill(pixels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The smoothest fill that meets the hole's border: Laplace's equation over the hole pixels.

    It draws no streaks, so across a wide hole it lands closer to the truth than Telea's fast marching does,
    which makes it the better start for a generator to refine. Integer (H, W, C) frame in, same dtype and shape.
    Memory follows the holes, not the frame: small holes are solved together in batches, from their own pixels
    and neighbours, and each large one alone within its bounding box.
    """
    import cv2

    if mask.all():  # a full mask: no border to meet, so one flat mid-grey
        return np.full_like(pixels, np.iinfo(pixels.dtype).max // 2 + 1)
    # Otherwise every hole (a maximal 4-connected set) borders a known pixel, so each system has one solution.
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=4)
    areas = stats[:, cv2.CC_STAT_AREA].astype(np.int64)
    areas[0] = 0  # label 0 is the undamaged rest of the frame
    small = (areas > 0) & (areas <= EXACT_HARMONIC_PIXELS)
    # each small hole joins the batch in which its first pixel falls, so a batch never splits a hole
    batch_of = np.full(count, -1, dtype=np.int32)
    batch_of[small] = (np.cumsum(areas * small) - areas)[small] // DIRECT_BATCH_PIXELS
    batches = batch_of[labels]  # (H, W)
    filled = pixels.copy()
    top = np.iinfo(pixels.dtype).max
    for batch in np.unique(batch_of[small]):
        holes = batches == batch
        solved = _harmonic_values(pixels, holes, direct=True)  # each one small: a direct solve is cheap
        filled[holes] = np.clip(np.rint(solved), 0, top).astype(pixels.dtype)
    for k in np.nonzero(areas > EXACT_HARMONIC_PIXELS)[0]:
        x, y, w, h = stats[k, :4]
        box = (slice(max(y - 1, 0), y + h + 1), slice(max(x - 1, 0), x + w + 1))  # with the ring around the hole
        hole = labels[box] == k
        solved = _harmonic_values(pixels[box].astype(np.float64), hole, damaged=mask[box])
        filled[box][hole] = np.clip(np.rint(solved), 0, top).astype(pixels.dtype)
    return filled


def _harmonic_values(values: np.ndarray, mask: np.ndarray, direct: bool = False,
                     damaged: np.ndarray | None = None) -> np.ndarray:
    """The harmonic fill of `values`' (H, W, C) hole pixels, as an (n, C) array in `np.nonzero(mask)` order.

    Small holes (or `direct`: many holes, each small) get a sparse direct solve. A large one would cost time and
    memory that grow faster than its area, so it is first solved at half the resolution (recursively), and the
    upsampled answer starts at most 200 steps of conjugate gradients at full resolution, whose memory stays
    linear in the hole's area: a close approximation, as a prefill needs, not an exact solve. `damaged` (by
    default `mask`) marks every pixel whose value is not to be trusted, such as other holes in a large hole's box:
    the coarse levels average none of them in.
    """
    import scipy.sparse
    import scipy.sparse.linalg

    height, width = mask.shape
    ys, xs = np.nonzero(mask)
    n = len(ys)
    holes = ys * width + xs  # sorted: np.nonzero walks the frame row by row
    diagonal = np.zeros(n)
    rhs = np.zeros((n, values.shape[2]))
    rows, cols = [], []
    for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        ny, nx = ys + dy, xs + dx
        inside = (ny >= 0) & (ny < height) & (nx >= 0) & (nx < width)  # the frame's edge is a free border
        diagonal += inside
        ny, nx, at = ny[inside], nx[inside], np.nonzero(inside)[0]
        neighbour = np.searchsorted(holes, ny * width + nx).clip(max=n - 1)
        hole = holes[neighbour] == ny * width + nx
        rows.append(at[hole])
        cols.append(neighbour[hole])
        np.add.at(rhs, at[~hole], values[ny[~hole], nx[~hole]].astype(np.float64))
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    system = scipy.sparse.csc_matrix(
        (np.concatenate([diagonal, -np.ones(len(rows))]), (np.concatenate([np.arange(n), rows]),
                                                           np.concatenate([np.arange(n), cols]))), shape=(n, n))
    if direct or n <= EXACT_HARMONIC_PIXELS:
        return scipy.sparse.linalg.splu(system).solve(rhs)
    coarse_values, coarse_mask = _halve(values, mask if damaged is None else damaged)
    coarse_values[coarse_mask] = _harmonic_values(coarse_values, coarse_mask)
    guess = _upsample(coarse_values)[ys, xs]  # (n, C)
    return np.stack([scipy.sparse.linalg.cg(system, rhs[:, c], x0=guess[:, c], rtol=1e-5, maxiter=200)[0]
                     for c in range(rhs.shape[1])], axis=1)


def _halve(values: np.ndarray, damaged: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Half-resolution values and holes: a 2x2 block with any trusted pixel is known, as the mean of those
    pixels (an odd edge is padded with untrusted ones)."""
    height, width = damaged.shape
    pad = ((0, height % 2), (0, width % 2))
    known = np.pad(~damaged, pad).astype(np.float64)
    weighted = np.pad(values, pad + ((0, 0),)) * known[..., None]
    count = _block_sums(known)
    return _block_sums(weighted) / np.maximum(count, 1)[..., None], count == 0


def _block_sums(a: np.ndarray) -> np.ndarray:
    return a.reshape(a.shape[0] // 2, 2, a.shape[1] // 2, 2, *a.shape[2:]).sum(axis=(1, 3))


def _upsample(values: np.ndarray) -> np.ndarray:
    """Bilinear doubling of an (h, w, C) float array to (2h, 2w, C), the inverse of `_halve` (with its padding)."""
    import cv2

    height, width = 2 * values.shape[0], 2 * values.shape[1]
    return cv2.resize(values, (width, height), interpolation=cv2.INTER_LINEAR).reshape(height, width, -1)


FLAT_RING = 8  # px around a hole whose texture decides whether it lies in a smooth area
FLAT_LAPLACIAN = 3 / 255  # of the frame's range: 49 in 50 of the ring's pixels under it, and the area is smooth
PREFILL_RADIUS = 3  # of OpenCV's inpainting, as the generator's prefill (the radius it was trained with)
DEEPEST_FILL = 32  # px from a hole's edge the generator fills at a frame's own scale (see `GanRestorer._fill_crops`)
MIN_LEVEL_SIDE = 16  # px: no coarser level is made of a crop shorter than twice this


def classical_fill(pixels: np.ndarray, mask: np.ndarray, method: str, radius: int = PREFILL_RADIUS) -> np.ndarray:
    """A classical fill of an integer (H, W, C) frame: OpenCV's inpainting (`telea` or `navier-stokes`, within
    `radius`) or `harmonic_fill`; same dtype and shape. The holes are made white first: OpenCV's inpainting reads a
    little of what they hold (up to 8 levels), which is the damage in a job and the ground truth in training, and
    the generator learnt to refine fills of white holes."""
    pixels = np.where(mask[..., None], np.iinfo(pixels.dtype).max, pixels).astype(pixels.dtype, copy=False)
    if method == "harmonic":
        return harmonic_fill(pixels, mask)
    import cv2

    flag = {"telea": cv2.INPAINT_TELEA, "navier-stokes": cv2.INPAINT_NS}[method]
    hole = mask.astype(np.uint8)
    if pixels.dtype == np.uint8 and pixels.shape[2] in (1, 3):
        return cv2.inpaint(np.ascontiguousarray(pixels), hole, radius, flag).reshape(pixels.shape)
    # OpenCV inpaints deeper frames only one channel at a time.
    channels = [cv2.inpaint(np.ascontiguousarray(pixels[:, :, c]), hole, radius, flag) for c in range(pixels.shape[2])]
    return np.stack(channels, axis=2)


def smooth_holes(pixels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The holes (8-connected) whose surroundings hold no texture: a grain-free sky, a studio backdrop, a print's
    paper, a smooth gradient. There the smoothest fill is the truest, and a generator's invented texture shows as
    soon as the contrast is stretched. Smooth means 49 in 50 pixels of the ring around the hole (kept clear of
    every hole's edge) have a Laplacian under FLAT_LAPLACIAN: under half an 8-bit level of noise, and no edge,
    not even a pen stroke crossing the hole."""
    import cv2

    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * FLAT_RING + 1,) * 2)
    clear = cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)) == 0  # 2 px from any hole's edge
    height, width = mask.shape
    smooth = np.zeros(count, bool)
    for label in range(1, count):  # within each hole's box and ring: a scan's thousand specks cost what they cover
        x, y, w, h = stats[label, :4]
        y0, y1 = max(0, y - FLAT_RING), min(height, y + h + FLAT_RING)
        x0, x1 = max(0, x - FLAT_RING), min(width, x + w + FLAT_RING)
        box = (slice(y0, y1), slice(x0, x1))
        ring = (cv2.dilate((labels[box] == label).astype(np.uint8), kernel) > 0) & clear[box]
        if not ring.any():
            continue
        # the Laplacian reads one pixel beyond the box: the frame's own where it has one, its border where not
        top, left = min(y0, 1), min(x0, 1)
        around = pixels[y0 - top:min(height, y1 + 1), x0 - left:min(width, x1 + 1)]
        luma = around.astype(np.float32).mean(axis=2) / np.iinfo(pixels.dtype).max
        laplacian = np.abs(cv2.Laplacian(luma, cv2.CV_32F, ksize=1))[top:top + y1 - y0, left:left + x1 - x0]
        smooth[label] = np.quantile(laplacian[ring], 0.98) < FLAT_LAPLACIAN
    return smooth[labels]


class ClassicalRestorer(Restorer):
    """A classical fill (OpenCV's Telea or Navier–Stokes, or the harmonic fill): the GAN's baselines, and the
    faster choice on a CPU."""

    def __init__(self, method: str, radius: int = 3):
        self.name = method
        self.radius = radius

    def fill(self, frames, masks):
        return [classical_fill(pixels, mask, self.name, self.radius) for pixels, mask in zip(frames, masks)]


class GanRestorer(Restorer):
    """Our GAN generator, run only where a frame has holes: on boxes fitted around them on a CPU, on the grid tiles
    that hold them on a GPU (see `restore.models.tiling`)."""

    name = "gan"

    def __init__(self, settings: RestorerSettings, threads: int = 1):
        import torch

        from .models.weights import load_generator

        path, self.weights_sha256 = resolve_weights(settings)
        torch.set_num_threads(threads)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.generator, info = load_generator(path)
        if info["sha256"] != self.weights_sha256:  # the file changed between hashing and loading: not what was pinned
            raise RestorerError(f"restorer.weights: {path} changed while it was loaded (sha256 {info['sha256']}, "
                                f"expected {self.weights_sha256})")
        # channels_last: faster convolutions on a CPU (BENCHMARKS.md), and the layout GPU tensor cores want
        self.generator.to(self.device, memory_format=torch.channels_last).eval()
        self.tile, self.overlap, self.context = settings.tile, settings.overlap, settings.context
        self.grid = self.device.type == "cuda"  # whole grid tiles in few calls on a GPU, fitted boxes on a CPU

    def fill(self, frames, masks):
        import torch

        from .models.tiling import hole_boxes

        # Everything around the generator (the classical prefill, conversions, compositing) runs on the rectangle
        # bounding its boxes, not the frame: one speck on a 6000x4000 scan costs what a speck costs (specks far
        # apart, nearly the frame). The rectangle takes the prefill's reach beyond the boxes too, so the fill is
        # the one the whole frame would give.
        regions, crops, holes, boxes = [], [], [], []
        for pixels, mask in zip(frames, masks):
            frame_boxes = hole_boxes(torch.from_numpy(mask), **self._tiling())
            reach = PREFILL_RADIUS + 1
            y0 = max(0, min(y for y, _, _, _ in frame_boxes) - reach)
            x0 = max(0, min(x for _, x, _, _ in frame_boxes) - reach)
            y1 = min(mask.shape[0], max(y + h for y, _, h, _ in frame_boxes) + reach)
            x1 = min(mask.shape[1], max(x + w for _, x, _, w in frame_boxes) + reach)
            regions.append((slice(y0, y1), slice(x0, x1)))
            crops.append(pixels[y0:y1, x0:x1])
            holes.append(mask[y0:y1, x0:x1])
            boxes.append([(y - y0, x - x0, h, w) for y, x, h, w in frame_boxes])
        holes_given = list(holes)  # every pixel the fill may change, smooth ones (filled apart below) among them
        # A grey print scanned as RGB, or a palette of greys, has R = G = B around its holes; the generator, which
        # learnt on colour, would leave faint colour in them. Such a region is filled as grey, like a grey frame.
        neutral = [crop.shape[2] == 3 and (~hole).any()
                   and all(np.array_equal(crop[..., 0][~hole], crop[..., c][~hole]) for c in (1, 2))
                   for crop, hole in zip(crops, holes)]
        for i, (crop, hole) in enumerate(zip(crops, holes)):
            smooth = smooth_holes(crop, hole)
            if smooth.any():  # the harmonic fill there: the generator's texture would be invented, so it never runs
                crops[i] = classical_fill(crop, smooth, "harmonic")
                holes[i] = hole & ~smooth
                boxes[i] = hole_boxes(torch.from_numpy(holes[i]), **self._tiling())
        restored = self._fill_crops(crops, holes, boxes)
        filled = []
        for pixels, region, out, hole, grey in zip(frames, regions, restored, holes_given, neutral):
            scale = float(np.iinfo(pixels.dtype).max)
            # the hole's pixels alone, (3, n): the rest of the rectangle is the frame's own (composited), and a
            # copy of all of it in floats is, on a large scan, gigabytes
            values = out.float().cpu()[:, torch.from_numpy(hole)]
            if pixels.shape[2] == 1 or grey:
                values = values.mean(dim=0, keepdim=True).expand(pixels.shape[2], -1)  # grey: the channel mean
            frame = pixels.copy()
            frame[region][hole] = np.clip(np.rint(values.T.numpy() * scale), 0, scale).astype(pixels.dtype)
            filled.append(frame)
        return filled

    def _tiling(self) -> dict:
        return dict(tile=self.tile, overlap=self.overlap, context=self.context, grid=self.grid)

    def _fill_crops(self, crops: list[np.ndarray], holes: list[np.ndarray],
                    boxes: list[list[tuple[int, int, int, int]]] | None = None) -> list:
        """The generator's fill of integer (h, w, C) crops as (3, h, w) floats in [0, 1], composited.

        The generator learnt on holes at most about `DEEPEST_FILL` pixels deep (from their nearest edge); deeper in,
        it paints a periodic mesh of 8-pixel cells. Where a hole is deeper, the crop is filled at half size too (and
        that fill likewise, level by level), and the coarser fill takes over from `DEEPEST_FILL` / 2 pixels in: it
        is the classical prefill the generator refines there and, by `DEEPEST_FILL`, the fill itself.
        `boxes`: each crop's generator boxes, when the caller has found them already.
        """
        import cv2
        import torch

        from .models.tiling import hole_boxes, inpaint_tiled_batch

        deep, smalls, small_holes, small_boxes = {}, [], [], []  # the crops with holes too deep, at half size
        for i, (crop, hole) in enumerate(zip(crops, holes)):
            depth = cv2.distanceTransform(hole.astype(np.uint8), cv2.DIST_L2, 5)
            height, width = hole.shape
            if depth.max() <= DEEPEST_FILL or min(height, width) < 2 * MIN_LEVEL_SIDE:
                continue
            # Made even first (its last row or column repeated): each pixel of the half-size level is then two by two
            # of the crop's, and its fill is enlarged back exactly twice, over the deep holes alone (`_enlarged`).
            odd = ((0, height % 2), (0, width % 2))
            half = ((width + 1) // 2, (height + 1) // 2)
            even = np.pad(crop, (*odd, (0, 0)), mode="edge") if height % 2 or width % 2 else np.ascontiguousarray(crop)
            small = cv2.resize(even, half, interpolation=cv2.INTER_AREA)
            smalls.append(small.reshape(half[1], half[0], -1))  # OpenCV drops a single channel's axis
            even_hole = np.pad(hole, odd, mode="edge").astype(np.float32)
            small_hole = cv2.resize(even_hole, half, interpolation=cv2.INTER_AREA) > 0  # any hole
            small_holes.append(small_hole)
            # the generator runs at half size only around the holes deep enough to take its fill there: a scan's
            # scratches and dust beside a blotch are left to this level
            count, labels = cv2.connectedComponents(small_hole.astype(np.uint8), connectivity=8)
            small_depth = cv2.distanceTransform(small_hole.astype(np.uint8), cv2.DIST_L2, 5)
            deepest = np.zeros(count, np.float32)
            np.maximum.at(deepest, labels.ravel(), small_depth.ravel())
            needed = (deepest > DEEPEST_FILL / 4)[labels] & small_hole  # over DEEPEST_FILL / 2 here
            small_boxes.append(hole_boxes(torch.from_numpy(needed), **self._tiling()))
            deep[i] = np.clip(depth / (DEEPEST_FILL / 2) - 1, 0, 1)  # weight: 0 up to DEEPEST_FILL / 2 deep, 1 from it
        coarse = {}  # crop index -> [(box of a deep hole, the coarser fill there, the weight it takes there)]
        for (i, weight), fill in zip(deep.items(), self._fill_crops(smalls, small_holes, small_boxes) if deep else []):
            count, labels, stats, _ = cv2.connectedComponentsWithStats((weight > 0).astype(np.uint8), connectivity=8)
            coarse[i] = []
            for label in range(1, count):  # each deep hole apart: a frame's blotches lie far apart
                x, y, w, h = stats[label, :4]
                box = (slice(None), slice(y, y + h), slice(x, x + w))
                own = np.where(labels[box[1:]] == label, weight[box[1:]], 0)  # boxes may overlap: each its own
                coarse[i].append((box, _enlarged(fill, box).cpu(), torch.from_numpy(own)))

        prefill = self.generator.config.prefill
        if prefill != "none":  # this generator refines a classical fill rather than blank holes
            crops = [classical_fill(crop, hole, prefill) for crop, hole in zip(crops, holes)]
        images = []
        for crop in crops:  # in floats in one step: on a large scan each copy of the rectangle is gigabytes
            image = torch.from_numpy(crop).permute(2, 0, 1).float().div_(float(np.iinfo(crop.dtype).max))
            images.append(image.expand(3, -1, -1) if image.shape[0] == 1 else image)  # grey is seen as colour
        del crops  # the prefilled rectangles: the images hold them now
        for i, parts in coarse.items():
            if images[i].stride(0) == 0:  # a grey crop's three channels are one, expanded: its own, to be written
                images[i] = images[i].contiguous()
            for box, fill, weight in parts:
                images[i][box] = images[i][box] * (1 - weight) + fill * weight
        holes = [torch.from_numpy(np.ascontiguousarray(hole)) for hole in holes]
        if boxes is None:
            boxes = [hole_boxes(hole, **self._tiling()) for hole in holes]
        with torch.inference_mode():
            if self.device.type == "cuda":  # a GPU needs full batches: pool the boxes of every crop
                restored = inpaint_tiled_batch(self.generator, images, holes, **self._tiling(), boxes=boxes)
            else:  # Batches from one crop only. A convolution's rounding depends on its batch, so pooling would
                # make a frame's pixels depend on the frames beside it in the block: reruns would not be identical.
                # A batch holds a tile's pixels at most: eight boxes of a tile's size set a worker's peak memory,
                # and on a CPU ran no faster than one at a time (BENCHMARKS.md).
                restored = [inpaint_tiled_batch(self.generator, [image], [hole], **self._tiling(), boxes=[found],
                                                batch_pixels=self.tile ** 2)[0]
                            for image, hole, found in zip(images, holes, boxes)]
            for i, parts in coarse.items():  # the images, so the fills, are on the CPU
                for box, fill, weight in parts:
                    restored[i][box] = restored[i][box] * (1 - weight) + fill * weight
        return restored


def _enlarged(fill, box: tuple[slice, slice, slice]):
    """The (C, h, w) `fill` enlarged twice, bilinearly, at the full-size `box` alone: as over all of it. Each pixel
    reads the two nearest of the fill's on each axis, so two more on each side keep the box's edges off the part's
    own edges, where the enlargement reads its edge pixel again instead of the next one."""
    import torch.nn.functional as F

    _, rows, cols = box
    top, left = max(0, rows.start // 2 - 2), max(0, cols.start // 2 - 2)
    part = fill[None, :, top:rows.stop // 2 + 2, left:cols.stop // 2 + 2].float()
    enlarged = F.interpolate(part, scale_factor=2, mode="bilinear", align_corners=False)[0]
    return enlarged[:, rows.start - 2 * top:rows.stop - 2 * top, cols.start - 2 * left:cols.stop - 2 * left]


def resolve_weights(settings: RestorerSettings) -> tuple[Path | None, str | None]:
    """The generator file a job will use and its sha256 (which enters the config hash); None for classical restorers."""
    if settings.name != "gan":
        return None, None
    path = Path(settings.weights) if settings.weights else SHIPPED_WEIGHTS
    if not path.is_file():
        raise RestorerError(f"restorer.weights: no generator file at {path}; train one with `restore train` "
                            "or choose restorer.name: telea")
    from .models.weights import file_sha256

    digest = file_sha256(path)
    if settings.weights_sha256 and digest != settings.weights_sha256:
        raise RestorerError(f"restorer.weights_sha256: the spec pins {settings.weights_sha256}, "
                            f"but {path.name} has sha256 {digest}")
    return path, digest


def check_weights(settings: RestorerSettings) -> tuple[Path | None, str | None]:
    """resolve_weights, plus one load on the driver: a damaged file is refused before any work, not in an actor."""
    path, digest = resolve_weights(settings)
    if path is not None:
        from .models.weights import WeightsError, load_generator

        try:
            load_generator(path)
        except WeightsError as error:
            raise RestorerError(f"restorer.weights: {error}") from None
    return path, digest


def build_restorer(settings: RestorerSettings, threads: int = 1) -> Restorer:
    if settings.name == "none":
        return PassThrough()
    if settings.name in CLASSICAL_RESTORERS:
        return ClassicalRestorer(settings.name, settings.radius)
    if settings.name == "gan":
        return GanRestorer(settings, threads)
    raise RestorerError(f"unknown restorer {settings.name!r} (expected one of {', '.join(RESTORER_NAMES)})")
