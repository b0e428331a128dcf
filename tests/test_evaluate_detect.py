"""restore eval-detect: seeded, complete JSON, scores that tell a perfect detector from a blind one."""
import json

import cv2
import numpy as np
import pytest

from restore.detect import Detector
from restore.detect.scoring import match_counts, scores
from restore.evaluate_detect import evaluate_detect, markdown_table


class Blind(Detector):
    name = "blind"

    def __call__(self, pixels, neighbours=None, n_previous=None):
        return np.zeros(pixels.shape[:2], bool)


@pytest.fixture
def folders(tmp_path):
    rng = np.random.default_rng(0)
    images, overlays = tmp_path / "images", tmp_path / "overlays"
    images.mkdir()
    overlays.mkdir()
    for i in range(2):
        y, x = np.mgrid[0:80, 0:96]
        image = 120 + 60 * np.sin(x / (9 + i)) * np.cos(y / 13) + rng.normal(0, 5, (80, 96))
        cv2.imwrite(str(images / f"img{i}.png"), np.clip(np.stack([image] * 3, 2), 0, 255).astype(np.uint8))
    for i in range(2):
        rgba = np.zeros((40, 40, 4), np.uint8)
        rgba[..., :3] = 255
        cv2.circle(rgba, (20, 20), 6 + 4 * i, (255, 255, 255, 255), -1)
        cv2.imwrite(str(overlays / f"spot{i}.png"), rgba)
    return images, overlays


def test_json_structure_and_reproducibility(folders):
    images, overlays = folders
    result = evaluate_detect(images, ["classical", "temporal", Blind()], overlay_dir=overlays, crop=64)
    json.dumps(result)  # plain JSON types only
    assert result["settings"]["kinds"] == ["scratches", "dust", "blotches", "tears", "overlays"]
    for name in ("classical", "temporal", "blind"):
        entry = result["detectors"][name]
        for kind in ("overall", "scratches", "dust", "blotches", "tears", "overlays"):
            assert set(entry[kind]) == {"precision", "recall", "f1", "iou"}
            assert all(0.0 <= v <= 1.0 for v in entry[kind].values())
        assert 0.0 <= entry["clean"]["flagged_fraction"] <= 1.0
    blind = result["detectors"]["blind"]
    assert blind["overall"]["recall"] == 0.0 and blind["clean"]["flagged_fraction"] == 0.0
    again = evaluate_detect(images, ["temporal"], overlay_dir=overlays, crop=64)
    assert again["detectors"]["temporal"] == {**result["detectors"]["temporal"],
                                              "seconds_per_mp": again["detectors"]["temporal"]["seconds_per_mp"]}
    assert "| temporal |" in markdown_table(result)


def test_overlays_are_optional_and_images_required(folders, tmp_path):
    images, _ = folders
    result = evaluate_detect(images, [Blind()], crop=64)
    assert "overlays" not in result["detectors"]["blind"]
    with pytest.raises(ValueError, match="no images"):
        evaluate_detect((tmp_path / "empty").mkdir() or tmp_path / "empty", [Blind()])
    with pytest.raises(ValueError, match="limit must be at least 1"):
        evaluate_detect(images, [Blind()], limit=0)


def test_scores_tolerate_one_pixel_at_borders():
    truth = np.zeros((10, 10), bool)
    truth[4:6, 4:6] = True
    shifted = np.roll(truth, 1, axis=1)  # off by one pixel: still a perfect detection
    assert scores(match_counts(shifted, truth)) == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "iou": 1.0}
    far = np.roll(truth, 4, axis=0)
    assert scores(match_counts(far, truth))["f1"] == 0.0
