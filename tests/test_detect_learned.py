"""Learned detector: the U-Net, its weights files, training on generated images, the shipped weights, the CLI."""
import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from restore.cli import main
from restore.damage import film_grain
from restore.detect import build_detector
from restore.detect.learned import (SHIPPED_WEIGHTS, LearnedDetector, _batch, load_detector_net, save_detector_net,
                                    train_detector)
from restore.models.detector import DetectorConfig, DetectorNet
from restore.models.weights import WeightsError, file_sha256


def smooth_frame(size=160, seed=0):
    """A grainy smooth photo: gradients and soft blobs, nothing a detector should flag."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    image = 0.4 + 0.2 * np.sin(x / (19 + seed)) * np.cos(y / 29)
    for cx, cy, r, v in [(40, 60, 25, 0.2), (110, 100, 30, -0.15)]:
        image += v * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))
    rgb = np.stack([image, image * 0.9 + 0.05, image * 0.8 + 0.1], 2)
    return film_grain(rng, np.clip(rgb * 255, 0, 255).astype(np.uint8), 0.02, 0.004)


def test_net_keeps_any_frame_size():
    net = DetectorNet(DetectorConfig(widths=(4, 6, 8)))
    for height, width in [(1, 1), (5, 9), (37, 53), (130, 67)]:
        out = net(torch.rand(2, 3, height, width))
        assert out.shape == (2, 1, height, width) and torch.isfinite(out).all()


def test_weights_round_trip_and_refuse_tampering(tmp_path):
    torch.manual_seed(0)
    net = DetectorNet(DetectorConfig(widths=(4, 6, 8)))
    path = tmp_path / "detector.pt"
    sha = save_detector_net(net, path, {"threshold": 0.7})
    loaded, info = load_detector_net(path)
    assert info["sha256"] == sha == file_sha256(path) and info["threshold"] == 0.7
    x = torch.rand(1, 3, 24, 40)
    assert torch.equal(loaded(x), net.eval()(x))
    assert build_detector("learned", weights=path).threshold == 0.7  # the calibrated threshold by default
    assert build_detector("learned", weights=path, threshold=0.4).threshold == 0.4

    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["head.bias"] += 1.0  # edited weights, stale digest
    torch.save(payload, tmp_path / "edited.pt")
    with pytest.raises(WeightsError, match="checksum"):
        load_detector_net(tmp_path / "edited.pt")
    torch.save({"format": "something else"}, tmp_path / "foreign.pt")
    with pytest.raises(WeightsError, match="not a restore detector"):
        load_detector_net(tmp_path / "foreign.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a zip file")
    with pytest.raises(WeightsError, match="cannot read"):
        load_detector_net(tmp_path / "garbage.pt")
    with pytest.raises(WeightsError, match="not found"):
        build_detector("learned", weights=tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="threshold"):
        build_detector("learned", weights=path, threshold=1.5)


def test_a_few_training_steps_lower_the_loss_and_write_a_loadable_file(tmp_path):
    data = tmp_path / "clean"
    data.mkdir()
    for i in range(6):
        cv2.imwrite(str(data / f"img{i}.png"), smooth_frame(80, seed=i)[..., ::-1])
    rng = np.random.default_rng(123)
    images = [smooth_frame(80, seed=i) for i in range(6)]
    x, target = _batch(rng, images, sources=6, crops=2, crop=32, overlay_dir=None)  # a fixed check batch
    torch.manual_seed(0)
    before = F.binary_cross_entropy_with_logits(DetectorNet(DetectorConfig())(x), target).item()
    out = tmp_path / "detector.pt"
    lines = []
    sha = train_detector(data, out, steps=30, crop=32, val_images=2, threads=1, log=lines.append)
    net, info = load_detector_net(out)
    with torch.no_grad():
        after = F.binary_cross_entropy_with_logits(net(x), target).item()
    assert after < before
    assert info["sha256"] == sha and info["steps"] == 30 and 0 < info["threshold"] < 1
    assert info["val_images"] == 2 and set(info["val"]) == {"precision", "recall", "f1", "iou"}
    assert lines[-1].startswith("threshold")


def test_a_new_detector_takes_the_widths_asked_for_and_a_fine_tune_keeps_those_of_its_start(tmp_path, capsys):
    data = tmp_path / "clean"
    data.mkdir()
    for i in range(3):
        cv2.imwrite(str(data / f"img{i}.png"), smooth_frame(48, seed=i)[..., ::-1])
    out = tmp_path / "wide.pt"
    assert main(["train-detector", "--data", str(data), "--out", str(out), "--steps", "2", "--crop", "32",
                 "--val-images", "0", "--threads", "1", "--widths", "8,12,20"]) == 0
    assert load_detector_net(out)[0].config.widths == (8, 12, 20)
    with pytest.raises(ValueError, match="widths of its --init"):
        train_detector(data, tmp_path / "tuned.pt", steps=1, crop=32, init=out, widths=(8, 12), log=lambda _: None)
    with pytest.raises(SystemExit):
        main(["train-detector", "--data", str(data), "--out", str(out), "--widths", "8;12"])
    assert "comma-separated" in capsys.readouterr().err


def dust_and_scratch(frame):
    """The frame with four bright specks and a one-pixel base scratch; and where they are."""
    damaged, truth = frame.copy(), np.zeros(frame.shape[:2], np.uint8)
    for centre in [(30, 40), (120, 130), (70, 100), (140, 30)]:
        cv2.circle(truth, centre, 2, 1, -1)
    cv2.line(truth, (60, 10), (62, 150), 1, 1)
    damaged[truth > 0] = (245, 245, 240)
    return damaged, truth > 0


@pytest.mark.skipif(not SHIPPED_WEIGHTS.is_file(), reason="no shipped detector weights")
def test_shipped_weights_flag_dust_and_a_scratch_and_leave_a_clean_frame_alone():
    detector = LearnedDetector()
    clean = smooth_frame()
    assert detector(clean).mean() <= 0.001
    damaged, truth = dust_and_scratch(clean)
    mask = detector(damaged)
    assert mask[truth].mean() > 0.7
    near = cv2.dilate(truth.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
    assert (mask & ~near).mean() <= 0.001


def test_train_detector_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train-detector", "--help"])
    assert exit_info.value.code == 0
    assert "--data" in capsys.readouterr().out


@pytest.mark.skipif(not SHIPPED_WEIGHTS.is_file(), reason="no shipped detector weights")
def test_a_job_with_the_learned_detector(tmp_path, ray_session):
    from PIL import Image

    from restore.manifest import read_manifests
    from restore.pipeline import prepare, run_job
    from restore.spec import parse_spec
    from restore.storage import open_storage

    clean = smooth_frame(seed=1)
    damaged, truth = dust_and_scratch(clean)
    (tmp_path / "in").mkdir()
    for name, frame in (("clean.png", clean), ("damaged.png", damaged)):
        Image.fromarray(frame).save(tmp_path / "in" / name)
    spec = parse_spec({"name": "learned", "input": str(tmp_path / "in"), "output": str(tmp_path / "out"),
                       "masks": {"source": "detect", "detector": "learned"}, "restorer": {"name": "telea"}})
    assert run_job(*prepare(spec)).counts == {"ok": 2}
    rows = {r["input_key"]: r for r in read_manifests(open_storage(str(tmp_path / "out")), "learned").to_pylist()}
    assert rows["clean.png"]["masked_fraction"] == 0 and rows["clean.png"]["detector"] == "learned"
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "clean.png")), clean)
    mask = np.asarray(Image.open(tmp_path / "out" / rows["damaged.png"]["mask_key"])) > 0
    assert mask[truth].mean() > 0.7
    restored = np.asarray(Image.open(tmp_path / "out" / "damaged.png"))
    changed = np.any(restored != damaged, axis=2)
    assert changed.any() and not (changed & ~mask).any()  # only masked pixels change


def test_a_job_uses_retrained_detector_weights_and_refuses_a_bad_file(tmp_path, ray_session):
    """A user's own detector (from train-detector) is named in the spec, hashed into the config, checked up front."""
    from PIL import Image

    from restore.pipeline import JobError, open_job, prepare, run_job
    from restore.spec import SpecError, parse_spec

    (tmp_path / "in").mkdir()
    Image.fromarray(smooth_frame(seed=2)).save(tmp_path / "in" / "a.png")
    own = tmp_path / "own.pt"
    sha = save_detector_net(DetectorNet(DetectorConfig(widths=(4, 6))), own, {"threshold": 0.5})
    raw = {"name": "own", "input": str(tmp_path / "in"), "output": str(tmp_path / "out"),
           "masks": {"source": "detect", "detector": "learned"}, "restorer": {"name": "telea"}}
    shipped = parse_spec(raw)
    mine = parse_spec({**raw, "masks": {**raw["masks"], "detector_weights": str(own)}})
    context, plan = prepare(mine)
    assert context.detector_sha256 == sha and context.config_hash != open_job(shipped).config_hash
    assert run_job(context, plan).counts == {"ok": 1}
    from restore import __version__
    from restore.manifest import read_manifests
    from restore.storage import open_storage

    [row] = read_manifests(open_storage(str(tmp_path / "out")), "own").to_pylist()
    assert (row["detector"], row["detector_sha256"], row["software"]) == ("learned", sha, f"restore {__version__}")

    own.write_bytes(b"not a detector")
    with pytest.raises(JobError, match="masks.detector_weights"):
        open_job(mine)
    with pytest.raises(SpecError, match="masks.detector_weights"):
        parse_spec({**raw, "masks": {"source": "detect", "detector": "classical", "detector_weights": str(own)}})


def test_eval_detect_scores_the_learned_detector_when_it_has_weights(tmp_path, monkeypatch):
    from restore import evaluate_detect as module

    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.png"), smooth_frame(72)[..., ::-1])
    path = tmp_path / "detector.pt"
    sha = save_detector_net(DetectorNet(DetectorConfig(widths=(4, 6))), path)
    result = module.evaluate_detect(images, ["learned"], crop=64, weights=path)
    assert set(result["detectors"]["learned"]["overall"]) == {"precision", "recall", "f1", "iou"}
    assert result["settings"]["weights_sha256"] == {"learned": sha}
    monkeypatch.setattr("restore.detect.learned.SHIPPED_WEIGHTS", tmp_path / "missing.pt")
    assert module.default_detectors() == ("classical", "temporal")
    monkeypatch.setattr("restore.detect.learned.SHIPPED_WEIGHTS", path)
    assert "learned" in module.default_detectors()
