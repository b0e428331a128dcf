"""What kind of damage a frame's mask holds, so that its manifest row says what was repaired and not only how much.

A conservator's condition report counts damage by kind, because each kind says something different about an
object: dust and dirt (handling, storage), scratches and hairs (projection, a scanner's glass), blotches, stains,
tears and losses (water, mould, a torn print). Each connected region of the mask is put into one of three kinds
by its shape alone, in proportion to the frame's short side, so a 2K film frame and a 6000-px print scan are read
alike:

- a **speck** is small: its bounding box is at most `speck_px` on its longer side;
- a **line** is thin and long: at most twice `speck_px` across (its typical width, so a fibre with a knot, or a
  hair painted over with a broad brush, is still thin), and at least 5 times as long as it is wide (a curled hair
  is a line too: its length is measured along it, as its area over its width);
- an **area** is every other region.

The shape is of the damage as marked, before `masks.dilate` widens every region alike (and joins near ones), and
without what `masks.protect` keeps.
"""
from __future__ import annotations

import numpy as np

from .wording import plural

KINDS = ("speck", "line", "area")
WHAT_THEY_ARE = {"speck": "dust, dirt", "line": "scratches, hairs", "area": "blotches, stains, tears, losses"}
LINE_ELONGATION = 5  # length over width, from which a thin region reads as a line


def speck_px(height: int, width: int) -> float:
    """The size under which a region is a speck: 1/150 of the short side (10 px on a 2K film frame, 27 px on a
    6000 × 4000 print scan), and never under 8 px, the size a brush marks dust with (so frames under 1200 px on
    their short side, access copies and previews, are read alike only above that)."""
    return max(8.0, min(height, width) / 150)


def census(mask: np.ndarray) -> dict[str, int | float]:
    """`<kind>_count` (regions) and `<kind>_fraction` (of the frame's pixels) for each kind in KINDS."""
    import cv2

    holes = np.ascontiguousarray(mask, dtype=np.uint8)
    if not holes.any():
        return {key: value for kind in KINDS for key, value in ((f"{kind}_count", 0), (f"{kind}_fraction", 0.0))}
    regions, labels, stats, _ = cv2.connectedComponentsWithStats(holes, connectivity=8)
    inside = holes.ravel().astype(bool)
    # each region's typical width, from its pixels' mean distance to the nearest pixel outside it or to the frame's
    # edge (a scratch along the edge is as thin as it looks): across a line w px wide that mean is about (w + 2) / 4,
    # so a fibre with a knot in it still reads as thin. A region all of whose pixels touch the outside is a line
    # 1 or 2 px wide: taken as 1
    outside = cv2.distanceTransform(np.pad(holes, 1), cv2.DIST_L2, 5)[1:-1, 1:-1].ravel()[inside]
    area = stats[1:, cv2.CC_STAT_AREA].astype(np.float64)  # label 0 is what lies outside every region
    mean_distance = np.bincount(labels.ravel()[inside], weights=outside, minlength=regions)[1:] / area
    width = np.where(mean_distance <= 1, 1.0, 4 * mean_distance - 2)
    limit = speck_px(*mask.shape)
    extent = np.maximum(stats[1:, cv2.CC_STAT_WIDTH], stats[1:, cv2.CC_STAT_HEIGHT])
    speck = extent <= limit
    line = ~speck & (width <= 2 * limit) & (area / width ** 2 >= LINE_ELONGATION)
    found = {}
    for kind, chosen in zip(KINDS, (speck, line, ~speck & ~line)):
        found[f"{kind}_count"] = int(chosen.sum())
        found[f"{kind}_fraction"] = float(area[chosen].sum() / mask.size)
    return found


def describe(regions: dict[str, int], explain: bool = False) -> str:
    """"14 specks, 2 lines" from regions by kind (kinds with none left out); `explain` says what each kind is."""
    return ", ".join(f"{regions[kind]:,} {plural(regions[kind], kind)}"
                     + (f" ({WHAT_THEY_ARE[kind]})" if explain else "")
                     for kind in KINDS if regions.get(kind))
