"""`restore eval`: the metrics on known cases, and the evaluation's structure, seeds and fairness on tiny images."""
import json
import math

import numpy as np
import pytest
from PIL import Image

import restore.evaluate as evaluation
from restore.images import read_rgb8, split_images
from restore.models.weights import file_sha256
from restore.restorers import SHIPPED_WEIGHTS
from restore.storage import open_storage
from restore.evaluate import (CLASSES, METRICS, PSNR_CAP, damage, evaluate, gradient_energy, centre_crop, psnr, ssim,
                              texture, write_json)

CROP = 48
CLASSICAL = ("telea", "navier-stokes")


@pytest.fixture
def data_dir(tmp_path):
    """Four small images: colour PNG, greyscale PNG, a JPEG in a subfolder, and one shorter than the crop."""
    rng = np.random.default_rng(7)
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)

    def smooth(h, w):
        return np.clip(np.linspace(0, 200, w)[None, :, None] + rng.normal(0, 20, (h, w, 3)), 0, 255)

    Image.fromarray(smooth(64, 80).astype(np.uint8)).save(root / "colour.png")
    Image.fromarray(smooth(70, 60)[..., 0].astype(np.uint8), "L").save(root / "grey.png")
    Image.fromarray(smooth(60, 60).astype(np.uint8)).save(root / "sub" / "photo.jpg")
    Image.fromarray(smooth(40, 50).astype(np.uint8)).save(root / "small.png")
    (root / "notes.txt").write_text("not an image")
    return root


# ---- metrics ----

def test_psnr_known_values():
    truth = np.full((16, 16, 3), 100, np.uint8)
    assert psnr(truth, truth) == PSNR_CAP
    assert psnr(truth + 1, truth) == pytest.approx(10 * math.log10(255 ** 2))
    hole = np.zeros((16, 16), bool)
    hole[4:8, 4:8] = True
    result = truth.copy()
    result[hole] += 16  # error only inside the hole
    assert psnr(result, truth, hole) == pytest.approx(10 * math.log10(255 ** 2 / 256))
    assert psnr(result, truth, ~hole) == PSNR_CAP
    assert psnr(result, truth) == pytest.approx(10 * math.log10(255 ** 2 / (256 * 16 / 256)))


def _ssim_by_windows(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM written out window by window (Wang et al. 2004), independent of the blur-based implementation."""
    axis = np.arange(11) - 5
    g = np.exp(-axis ** 2 / (2 * 1.5 ** 2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    values = []
    for y in range(a.shape[0] - 10):
        for x in range(a.shape[1] - 10):
            pa, pb = a[y:y + 11, x:x + 11].astype(float), b[y:y + 11, x:x + 11].astype(float)
            ma, mb = (w * pa).sum(), (w * pb).sum()
            va, vb, cov = (w * (pa - ma) ** 2).sum(), (w * (pb - mb) ** 2).sum(), (w * (pa - ma) * (pb - mb)).sum()
            values.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
    return float(np.mean(values))


def test_ssim_known_values():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (24, 22, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-40, 41, a.shape), 0, 255).astype(np.uint8)
    assert ssim(a, a) == pytest.approx(1.0)
    expected = np.mean([_ssim_by_windows(a[..., c], b[..., c]) for c in range(3)])
    assert ssim(b, a) == pytest.approx(expected, abs=1e-6)
    assert 0.5 < ssim(b, a) < 0.99
    flat_a, flat_b = np.full((16, 16, 3), 50, np.uint8), np.full((16, 16, 3), 150, np.uint8)
    c1 = (0.01 * 255) ** 2  # flat images: only the luminance term is left
    assert ssim(flat_a, flat_b) == pytest.approx((2 * 50 * 150 + c1) / (50 ** 2 + 150 ** 2 + c1))
    with pytest.raises(ValueError, match="11x11"):
        ssim(a[:8], a[:8])


def test_texture_known_values():
    ramp = np.tile(np.arange(32, dtype=np.uint8)[None, :, None] * 4, (32, 1, 3))  # 4 grey levels per pixel
    inner = np.zeros((32, 32), bool)
    inner[4:28, 4:28] = True
    assert gradient_energy(ramp, inner) == pytest.approx(32.0)  # Sobel: 8 × the per-pixel slope
    assert texture(gradient_energy(ramp, inner), gradient_energy(ramp, inner)) == pytest.approx(1.0)
    flat = np.full_like(ramp, 60)
    assert texture(gradient_energy(flat, inner), gradient_energy(ramp, inner)) == 0.0  # a fill without any detail
    assert texture(gradient_energy(ramp, inner), gradient_energy(flat, inner)) == math.inf


# ---- inputs and damage ----

def load_crop(path, crop):
    return centre_crop(read_rgb8(open_storage(str(path.parent)), path.name), crop)


def test_evaluation_and_training_images_read_greyscale_small_and_16_bit_alike(data_dir, tmp_path):
    grey, upscaled = load_crop(data_dir / "grey.png", CROP)
    assert grey.shape == (CROP, CROP, 3) and grey.dtype == np.uint8 and not upscaled
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    small, upscaled = load_crop(data_dir / "small.png", CROP)
    assert small.shape == (CROP, CROP, 3) and upscaled
    deep = np.full((50, 50), 65535, np.uint16)
    deep[:, 25:] = 257 * 100
    Image.fromarray(deep).save(tmp_path / "deep.png")
    pixels, _ = load_crop(tmp_path / "deep.png", CROP)
    assert pixels[0, 0, 0] == 255 and pixels[0, -1, 0] == 100  # scaled, not clipped to white
    (tmp_path / "held").mkdir()
    for name in ("a.png", "b.png", "c.png"):
        (tmp_path / "held" / name).write_bytes((tmp_path / "deep.png").read_bytes())
    kept, held = split_images(str(tmp_path / "held"), 1)  # what `restore train` reads
    assert len(kept) == 2 and len(held) == 1 and kept[0][0, -1, 0] == 100
    (tmp_path / "held" / "d.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image .*d.png"):
        split_images(str(tmp_path / "held"), 1)


@pytest.mark.parametrize("kind", CLASSES)
def test_damage_is_seeded_and_hides_the_hole(data_dir, kind):
    clean, _ = load_crop(data_dir / "colour.png", CROP)
    damaged, mask = damage(clean, "colour.png", kind, seed=3)
    again, same_mask = damage(clean, "colour.png", kind, seed=3)
    assert (damaged == again).all() and (mask == same_mask).all() and mask.any()
    assert (damaged[~mask] == clean[~mask]).all()
    if kind != "archive":
        assert (damaged[mask] == evaluation.HOLE_VALUE).all()
    others = [damage(clean, "other.png", kind, 3)[1], damage(clean, "colour.png", kind, 4)[1]]
    assert all((other != mask).any() for other in others)  # image name and seed both change the draw


# ---- the evaluation ----

def test_evaluate_reports_every_method_class_and_metric(data_dir, tmp_path):
    table, grid = tmp_path / "table.md", tmp_path / "grid.png"
    result = evaluate(data_dir, methods=("gan", *CLASSICAL), crop=CROP, table_md=table, grid_png=grid)
    assert result["images"] == 4 and result["crop"] == CROP and result["seed"] == 0
    assert result["images_upscaled"] == ["small.png"]
    assert list(result["methods"]) == ["gan", *CLASSICAL] and result["skipped"] == {}
    assert result["weights_sha256"] == file_sha256(SHIPPED_WEIGHTS)
    for method in ("gan", *CLASSICAL):
        assert set(result["methods"][method]) == set(CLASSES)
        for kind in CLASSES:
            scores = result["methods"][method][kind]
            assert set(scores) == set(METRICS)
            assert all(math.isfinite(value) for value in scores.values())
            assert 0 < scores["psnr_hole"] < scores["psnr"] < PSNR_CAP and 0 < scores["ssim"] < 1
            assert 0 < scores["texture"] < 2 and scores["seconds_per_mp"] > 0
    write_json(result, tmp_path / "eval.json")
    assert json.loads((tmp_path / "eval.json").read_text())["methods"] == result["methods"]
    text = table.read_text()
    assert "| gan | telea | navier-stokes |" in text and text.count("| archive |") == len(METRICS)
    width, height = Image.open(grid).size
    assert width == CROP * 5 and height == 24 + CROP * evaluation.GRID_IMAGES * len(CLASSES)


def test_a_method_that_cannot_run_is_reported_and_the_command_fails(data_dir, tmp_path, capsys):
    from restore.cli import main as restore_main

    missing = tmp_path / "missing.pt"
    result = evaluate(data_dir, methods=("gan", "telea"), classes=("thin",), crop=CROP, weights=missing)
    assert list(result["methods"]) == ["telea"] and "missing.pt" in result["skipped"]["gan"]
    assert "Skipped gan" in evaluation.markdown_table(result)
    out = tmp_path / "eval.json"
    code = restore_main(["eval", "--data", str(data_dir), "--methods", "gan", "telea", "--classes", "thin",
                         "--weights", str(missing), "--json", str(out), "--limit", "1"])
    assert code == 1 and "skipped gan" in capsys.readouterr().err
    assert json.loads(out.read_text())["methods"]["telea"]  # what did run is still written
    with pytest.raises(ValueError, match="no method could run: gan: RestorerError"):
        evaluate(data_dir, methods=("gan",), classes=("thin",), crop=CROP, weights=missing)


def test_evaluate_is_reproducible(data_dir):
    def quality(seed):
        result = evaluate(data_dir, methods=("telea",), crop=CROP, seed=seed, limit=2)
        return {kind: {k: v for k, v in scores.items() if k != "seconds_per_mp"}
                for kind, scores in result["methods"]["telea"].items()}

    first = quality(0)
    assert quality(0) == first
    assert quality(1) != first


class _Recorder:
    """A stand-in restorer that keeps every input it is given and fills holes with grey."""

    weights_sha256 = None

    def __init__(self, calls):
        self.calls = calls

    def restore_batch(self, frames, masks):
        self.calls.extend((frame.copy(), mask.copy()) for frame, mask in zip(frames, masks))
        return [np.where(mask[..., None], 128, frame).astype(frame.dtype) for frame, mask in zip(frames, masks)]


def test_every_method_sees_the_same_inputs_and_masks(data_dir, monkeypatch):
    calls = {}
    monkeypatch.setattr(evaluation, "build_restorer", lambda settings, threads: _Recorder(calls.setdefault(settings.name, [])))
    result = evaluate(data_dir, methods=CLASSICAL, crop=CROP)
    telea, ns = calls["telea"], calls["navier-stokes"]
    assert len(telea) == 1 + 4 * len(CLASSES)  # one warm-up call, then every image and class
    for (frame_a, mask_a), (frame_b, mask_b) in zip(telea, ns, strict=True):
        assert (frame_a == frame_b).all() and (mask_a == mask_b).all()
    assert result["methods"]["telea"] == {kind: {**scores, "seconds_per_mp": result["methods"]["telea"][kind]["seconds_per_mp"]}
                                          for kind, scores in result["methods"]["navier-stokes"].items()}


def test_unknown_choices_and_empty_folders_are_refused(data_dir, tmp_path):
    with pytest.raises(ValueError, match="unknown damage class 'huge'"):
        evaluate(data_dir, methods=("telea",), classes=("thin", "huge"), crop=CROP)
    with pytest.raises(ValueError, match="unknown method 'lama'"):
        evaluate(data_dir, methods=("lama",), crop=CROP)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images .* under .*empty$"):
        evaluate(tmp_path / "empty", methods=("telea",), crop=CROP)
    with pytest.raises(ValueError, match="no images .* under .*missing: the folder does not exist"):
        evaluate(tmp_path / "missing", methods=("telea",), crop=CROP)


def test_evaluation_images_can_come_from_s3(data_dir, s3_endpoint, s3_bucket):
    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint)
    for path in sorted(p for p in data_dir.rglob("*") if p.is_file()):
        client.put_object(Bucket=s3_bucket, Key=f"clean/{path.relative_to(data_dir).as_posix()}",
                          Body=path.read_bytes())
    local = evaluate(data_dir, methods=("telea",), classes=("thin",), crop=CROP)
    remote = evaluate(f"s3://{s3_bucket}/clean", methods=("telea",), classes=("thin",), crop=CROP,
                      endpoint_url=s3_endpoint)
    assert remote["images"] == local["images"] == 4
    assert remote["methods"]["telea"]["thin"]["psnr_hole"] == local["methods"]["telea"]["thin"]["psnr_hole"]


def test_a_method_failing_on_its_first_frame_is_skipped_with_the_reason(data_dir, monkeypatch):
    class Broken:
        def restore_batch(self, frames, masks):
            raise RuntimeError("tiling failed")

    real = evaluation.build_restorer
    monkeypatch.setattr(evaluation, "build_restorer",
                        lambda settings, threads: Broken() if settings.name == "telea" else real(settings, threads))
    result = evaluate(data_dir, methods=CLASSICAL, classes=("thin",), crop=CROP)
    assert result["skipped"] == {"telea": "RuntimeError: tiling failed"}
    assert list(result["methods"]) == ["navier-stokes"]
