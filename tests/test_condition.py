"""Damage counted by kind, as a conservator's condition report counts it: specks, lines and areas of a mask."""
import cv2
import numpy as np
import pytest

from restore.condition import census, describe, speck_px


def drawn_damage(scale: int = 1) -> np.ndarray:
    """A 2K film frame's mask (at `scale` times its size): 20 dust specks, a straight scratch, a curled fibre with a
    knot in it, a scratch along the frame's edge, a round blotch and a tear wider than any speck."""
    mask = np.zeros((1556 * scale, 2048 * scale), np.uint8)
    for i in range(20):
        cv2.circle(mask, (scale * (50 + 90 * i), scale * 100), 3 * scale, 1, -1)
    cv2.line(mask, (scale * 300, scale * 200), (scale * 310, scale * 1500), 1, 3 * scale)
    turns = np.linspace(0, 12, 200)
    hair = np.stack([600 + 40 * np.cos(turns) + 3 * turns * np.sin(turns), 800 + 40 * np.sin(turns) + 5 * turns], 1)
    cv2.polylines(mask, [np.int32(hair * scale)], False, 1, 2 * scale)
    cv2.circle(mask, np.int32(hair[100] * scale), 7 * scale, 1, -1)  # a knot wider than a speck
    mask[scale * 400: scale * 1200, : 2 * scale] = 1  # a scratch along the frame's left edge
    cv2.circle(mask, (scale * 1500, scale * 900), 80 * scale, 1, -1)
    cv2.line(mask, (scale * 1000, scale * 300), (scale * 1800, scale * 500), 1, 30 * scale)
    return mask.astype(bool)


def test_each_region_of_a_mask_is_counted_as_a_speck_a_line_or_an_area_by_its_shape():
    mask = drawn_damage()
    found = census(mask)
    assert (found["speck_count"], found["line_count"], found["area_count"]) == (20, 3, 2)
    assert found["speck_fraction"] + found["line_fraction"] + found["area_fraction"] == pytest.approx(mask.mean())
    assert found["area_fraction"] > found["line_fraction"] > found["speck_fraction"] > 0


def test_a_print_scan_three_times_the_size_reads_as_the_same_damage():
    """Kinds are in proportion to the frame: dust on a 6000-px print scan is as many pixels larger as the scan."""
    small, large = census(drawn_damage()), census(drawn_damage(scale=3))
    assert [large[f"{kind}_count"] for kind in ("speck", "line", "area")] == \
        [small[f"{kind}_count"] for kind in ("speck", "line", "area")]
    assert speck_px(1556 * 3, 2048 * 3) == pytest.approx(3 * speck_px(1556, 2048), rel=0.01)


def test_an_empty_mask_holds_no_damage_and_a_full_one_is_one_area():
    assert census(np.zeros((300, 400), bool)) == {"speck_count": 0, "speck_fraction": 0.0, "line_count": 0,
                                                  "line_fraction": 0.0, "area_count": 0, "area_fraction": 0.0}
    full = census(np.ones((300, 400), bool))
    assert (full["area_count"], full["area_fraction"]) == (1, 1.0)


def test_the_words_name_each_kind_found_and_leave_out_the_others():
    assert describe({"speck": 14, "line": 1, "area": 0}) == "14 specks, 1 line"
    assert describe({"speck": 1200}, explain=True) == "1,200 specks (dust, dirt)"
    assert describe({"speck": 0, "line": 0, "area": 0}) == ""
