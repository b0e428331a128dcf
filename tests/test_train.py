"""Training: config parsing, a few steps that learn, exact resume, export, and the 2-worker Ray Train path."""
import copy
import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from restore.damage import hole_mask
from restore.models.discriminator import DiscriminatorConfig
from restore.models.generator import GeneratorConfig
from restore.models.losses import LossConfig, hole_l1
from restore.models.weights import load_generator
from restore.evaluate import PSNR_CAP
from restore.train import (TrainConfig, _load_checkpoint, new_state, checkpoint_path, export_generator,
                           generator_input, load_train_config, prepare_batch, sample_batch, save_checkpoint,
                           prefilled, score_fills, train,
                           train_step, training_batches, validation_set)

CONFIGS = Path(__file__).resolve().parents[1] / "restore" / "configs"


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """Eight smooth 64x64 colour images: easy to inpaint, so a few steps visibly help."""
    folder = tmp_path_factory.mktemp("data")
    yy, xx = np.mgrid[0:64, 0:64] / 64.0
    rng = np.random.default_rng(0)
    for i in range(8):
        f = rng.uniform(0.5, 2.0, (3, 2))
        phase = rng.uniform(0, 6.3, 3)
        image = np.stack([0.5 + 0.4 * np.sin(6.3 * (f[c, 0] * xx + f[c, 1] * yy) + phase[c]) for c in range(3)], -1)
        Image.fromarray((image * 255).astype(np.uint8)).save(folder / f"im{i}.png")
    return str(folder)


def tiny_config(data: str, out_dir, **changes) -> TrainConfig:
    config = TrainConfig(
        data=data, out_dir=str(out_dir),
        generator=GeneratorConfig(width=8, n_down=2, n_blocks=1),
        discriminator=DiscriminatorConfig(width=8, n_layers=2),
        loss=LossConfig(r1_every=2),
        crop_sizes=[32], batch_size=4, lr_g=2e-3, adv_start_step=2, max_steps=5,
        val_images=1, val_every=1000, log_every=1, threads=1,
    )
    return dataclasses.replace(config, **changes)


def test_shipped_configs_load():
    names = sorted(path.name for path in CONFIGS.glob("*.yaml"))
    assert len(names) >= 16
    for name in names:
        config = load_train_config(CONFIGS / name, data="somewhere", out_dir="elsewhere")
        assert config.data == "somewhere" and isinstance(config.generator, GeneratorConfig)
    pairs = (("gan-cpu.yaml", "l1-cpu.yaml"), ("refine-cpu.yaml", "refine-l1-cpu.yaml"),
             ("refine-gpu.yaml", "refine-l1-gpu.yaml"), ("refine-more-cpu.yaml", "refine-l1-more-cpu.yaml"),
             ("refine-mse-cpu.yaml", "refine-mse-ablation-cpu.yaml"),
             ("refine-harmonic-cpu.yaml", "refine-harmonic-l1-cpu.yaml"),
             ("refine-wide-gpu.yaml", "refine-wide-l1-gpu.yaml"), ("refine-deep-gpu.yaml", "refine-deep-l1-gpu.yaml"))
    for gan, ablation in pairs:
        gan, ablation = (load_train_config(CONFIGS / name, data="d", out_dir="same") for name in (gan, ablation))
        assert ablation.loss.adversarial == "none" and gan.loss.adversarial != "none"
        # an ablation differs from its GAN in the adversarial loss alone
        assert dataclasses.replace(ablation, loss=gan.loss) == gan
    # the width experiment's two arms differ in the generator's width alone
    wide, narrow = (load_train_config(CONFIGS / f"refine-{arm}-l1-gpu.yaml", data="d", out_dir="same")
                    for arm in ("wide", "narrow"))
    assert wide.generator.width > narrow.generator.width
    widened = dataclasses.replace(narrow.generator, width=wide.generator.width)
    assert dataclasses.replace(narrow, generator=widened) == wide
    # and so do the arms of growing the shipped width into a wider net on the CPU
    grown, narrow = (load_train_config(CONFIGS / name, data="d", out_dir="same")
                     for name in ("refine-grow-l1-cpu.yaml", "refine-l1-more-cpu.yaml"))
    assert grown.generator.width > narrow.generator.width
    widened = dataclasses.replace(narrow.generator, width=grown.generator.width)
    assert dataclasses.replace(narrow, generator=widened) == grown
    # the precision experiment's two arms differ in precision alone
    fp32, bf16 = (load_train_config(CONFIGS / f"refine-l1-{arm}-cpu.yaml", data="d", out_dir="same")
                  for arm in ("fp32", "bf16"))
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16")
    assert dataclasses.replace(fp32, precision="bf16") == bf16
    # the magnification experiment differs from its other arm in rescaling alone (and validates more often)
    zoom, more = (load_train_config(CONFIGS / name, data="d", out_dir="same") for name in ("refine-zoom-l1-cpu.yaml",
                                                                                 "refine-l1-more-cpu.yaml"))
    assert zoom.rescale_range[1] > 1 and zoom.rescale_p > more.rescale_p
    assert dataclasses.replace(more, rescale_p=zoom.rescale_p, rescale_range=zoom.rescale_range, val_every=250) == zoom


def test_a_missing_config_or_too_few_images_say_what_to_do(tmp_path, tiny_data):
    with pytest.raises(ValueError, match="training config not found: .*nope.yaml"):
        load_train_config(tmp_path / "nope.yaml")
    with pytest.raises(ValueError, match="8 images, need more than the 8 held out for validation; hold out fewer"):
        train(tiny_config(tiny_data, tmp_path / "run", val_images=8), resume=False)
    assert not (tmp_path / "run").exists()  # no empty checkpoint folder left behind


def test_config_errors_name_the_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: d\nout_dir: o\ngenerator:\n  widht: 3\n")
    with pytest.raises(ValueError, match="widht"):
        load_train_config(path)
    path.write_text("data: d\n")
    with pytest.raises(ValueError, match="out_dir"):
        load_train_config(path)
    path.write_text("data: d\nout_dir: o\nloss:\n  adversarial: magic\n")
    with pytest.raises(ValueError, match="non_saturating"):
        load_train_config(path)
    path.write_text("data: d\nout_dir: o\nmask_weights: {thin: 1, holes: 2}\n")
    with pytest.raises(ValueError, match="mask_weights"):
        load_train_config(path)
    for scales in ("[1.5, 0.6]", "[1, 8]"):
        path.write_text(f"data: d\nout_dir: o\nrescale_range: {scales}\n")
        with pytest.raises(ValueError, match="rescale_range"):
            load_train_config(path)


def test_batches_are_crops_with_masks(tiny_data, tmp_path):
    config = tiny_config(tiny_data, tmp_path, desaturate_p=1.0)
    image, mask = sample_batch(np.random.default_rng(0), [np.zeros((40, 50, 3), np.uint8) + 9], config, 32)
    assert image.shape == (4, 3, 32, 32) and mask.shape == (4, 1, 32, 32) and mask.dtype == torch.bool
    assert mask.any() and image.dtype == torch.uint8 and bool((image == 9).all())


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_few_steps_lower_the_reconstruction_loss(tiny_data, tmp_path, precision):
    config = tiny_config(tiny_data, tmp_path, loss=LossConfig(adversarial="none"), precision=precision)
    state = new_state(config, 0, torch.device("cpu"))
    images = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(Path(tiny_data).glob("*.png"))]
    real, mask = sample_batch(np.random.default_rng(123), images, dataclasses.replace(config, batch_size=16), 32)
    real = real.float() / 255

    def loss():
        with torch.no_grad():
            return hole_l1(state.generator(real, mask), real, mask).item()

    before = loss()
    for _ in range(40):
        train_step(state, config, prepare_batch(state.rng, images, config), torch.device("cpu"))
    assert loss() < 0.6 * before


def test_bf16_runs_the_forward_passes_in_bf16_and_r1_in_fp32(tiny_data, tmp_path):
    images = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(Path(tiny_data).glob("*.png"))]
    for precision, forward in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        config = tiny_config(tiny_data, tmp_path, precision=precision, adv_start_step=0, loss=LossConfig(r1_every=1))
        state = new_state(config, 0, torch.device("cpu"))
        seen = set()
        state.generator.stem.register_forward_hook(lambda module, inputs, out: seen.add(("generator", out.dtype)))
        state.discriminator.register_forward_hook(lambda module, inputs, out: seen.add(("discriminator", out[0].dtype)))
        metrics = [train_step(state, config, prepare_batch(state.rng, images, config), torch.device("cpu"))
                   for _ in range(3)]
        assert all(np.isfinite(m["d_r1"]) and m["d_r1"] > 0 and np.isfinite(m["g_adv"]) for m in metrics)
        # the generator and discriminator steps in the chosen precision, R1's pass of the discriminator in fp32
        assert seen == {("generator", forward), ("discriminator", forward), ("discriminator", torch.float32)}


def test_the_command_line_chooses_the_precision(tiny_data, tmp_path, capsys):
    from restore.cli import main as restore_main

    config = tmp_path / "tiny.yaml"
    config.write_text("data: nowhere\nout_dir: nowhere\ngenerator: {width: 8, n_down: 2, n_blocks: 1}\n"
                      "crop_sizes: [32]\nbatch_size: 2\nval_images: 1\nthreads: 1\n")
    common = ["train", str(config), "--data", tiny_data, "--max-steps", "2"]
    assert restore_main([*common, "--out", str(tmp_path / "run"), "--precision", "bf16"]) == 0
    saved = torch.load(checkpoint_path(tmp_path / "run"), weights_only=True)
    assert saved["step"] == 2 and saved["config"]["precision"] == "bf16"
    assert restore_main([*common, "--out", str(tmp_path / "bad"), "--precision", "fp16"]) == 2
    assert "precision must be one of fp32, bf16; got 'fp16'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    assert restore_main([*common, "--out", str(tmp_path / "bad"), "--device", "gpu"]) == 2
    assert "device must be cpu or cuda" in capsys.readouterr().err
    if not torch.cuda.is_available():  # the CPU build: a clear refusal, not torch's assertion
        assert restore_main([*common, "--out", str(tmp_path / "bad"), "--device", "cuda"]) == 2
        assert "sees no CUDA device" in capsys.readouterr().err


def test_grey_crops_are_the_channel_means_on_8_bit_levels(tiny_data, tmp_path):
    config = tiny_config(tiny_data, tmp_path, desaturate_p=1.0, rescale_p=0.0,
                         generator=GeneratorConfig(width=8, n_down=2, n_blocks=1, prefill="telea"))
    colour = np.zeros((40, 50, 3), np.uint8) + np.array([200, 101, 1], np.uint8)
    image, mask, seen = prepare_batch(np.random.default_rng(5), [colour], config)
    assert image.dtype == torch.uint8 and bool((image == 101).all())  # rounded, not truncated: 302 / 3 = 100.67
    holes = mask.expand_as(seen)
    assert seen.dtype == torch.uint8 and holes.any() and torch.equal(seen[~holes], image[~holes])
    assert (seen[holes].int() - 101).abs().max() <= 3  # Telea's fill of flat grey, within its rounding


def test_rescaled_crops_cover_more_of_the_image(tiny_data, tmp_path):
    ramp = np.repeat(np.repeat(np.arange(200, dtype=np.uint8)[None, :, None], 200, 0), 3, 2)  # column x holds x
    # a 32-px crop spans 31 columns; shrunk by 0.6 to 1, up to 53; magnified by 1.5 to 2, from 16 to 21
    for rescale_p, scales, widths in ((0.0, [0.6, 1.0], {31}), (1.0, [0.6, 1.0], set(range(31, 54))),
                                      (1.0, [1.5, 2.0], set(range(14, 22)))):
        config = tiny_config(tiny_data, tmp_path, rescale_p=rescale_p, rescale_range=scales, desaturate_p=0.0,
                             batch_size=16)
        image, _ = sample_batch(np.random.default_rng(7), [ramp], config, 32)
        spans = {int(crop.max()) - int(crop.min()) for crop in image[:, 0]}  # columns each crop spans
        assert spans <= widths and (rescale_p == 0 or max(spans) - min(spans) > 3)


def test_loader_workers_each_draw_their_own_batches(tiny_data, tmp_path):
    config = tiny_config(tiny_data, tmp_path, generator=GeneratorConfig(width=8, n_down=2, n_blocks=1, prefill="telea"))
    images = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(Path(tiny_data).glob("*.png"))]
    in_loop, _, _ = prepare_batch(new_state(config, 0, torch.device("cpu")).rng, images, config)
    state = new_state(config, 0, torch.device("cpu"))
    seed = int(copy.deepcopy(state.rng).integers(2 ** 63))  # what training_batches draws for its loaders
    batches = training_batches(state, dataclasses.replace(config, loader_workers=2), images, torch.device("cpu"))
    (real_a, mask_a, seen_a), (real_b, mask_b, _) = next(batches), next(batches)  # one from each worker
    batches.close()
    first, first_mask, _ = prepare_batch(np.random.default_rng([seed, 0]), images, config)
    assert torch.equal(real_a, first) and torch.equal(mask_a, first_mask)  # worker 0 crops the images it was sent
    assert not torch.equal(real_a, real_b) and not torch.equal(mask_a, mask_b)
    assert not torch.equal(real_a, in_loop)  # nor the batches a run without loaders draws
    assert not torch.equal(prepare_batch(state.rng, images, config)[0], in_loop)  # the session's seed moved the RNG on
    expected = generator_input(real_a.float() / 255, mask_a, "telea")  # the Telea prefill, exactly
    assert torch.equal(seen_a.float() / 255, expected) and not torch.equal(seen_a, real_a)


def test_training_with_loader_workers_resumes_to_its_last_step(tiny_data, tmp_path):
    train(tiny_config(tiny_data, tmp_path, max_steps=3, loader_workers=2), resume=False)
    resumed = train(tiny_config(tiny_data, tmp_path, max_steps=5, loader_workers=2), resume=True)
    assert torch.load(checkpoint_path(resumed), weights_only=True)["step"] == 5
    log = [json.loads(line) for line in open(Path(resumed) / "log.jsonl")]
    assert [r["step"] for r in log if r.get("event") == "start"] == [0, 3]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_cuda_run_resumes(tiny_data, tmp_path, precision):
    train(tiny_config(tiny_data, tmp_path, max_steps=2, device="cuda", precision=precision), resume=False)
    resumed = train(tiny_config(tiny_data, tmp_path, max_steps=3, device="cuda", precision=precision), resume=True)
    assert torch.load(checkpoint_path(resumed), weights_only=True, map_location="cpu")["step"] == 3


def test_a_time_limit_stops_with_a_checkpoint_and_a_validation(tiny_data, tmp_path):
    out = train(tiny_config(tiny_data, tmp_path, max_steps=10_000, max_minutes=1e-9), resume=False)
    step = torch.load(checkpoint_path(out), weights_only=True)["step"]
    assert step == 1
    log = [json.loads(line) for line in open(Path(out) / "log.jsonl")]
    assert [r["step"] for r in log if "val" in r] == [1]
    with pytest.raises(ValueError, match="max_steps"):
        train(tiny_config(tiny_data, tmp_path, max_minutes=5), resume=True, ray_workers=2)


def test_snapshots_export_the_ema_generator_at_fixed_steps(tiny_data, tmp_path):
    out = train(tiny_config(tiny_data, tmp_path, max_steps=4, snapshot_every=2), resume=False)
    assert sorted(p.name for p in Path(out).glob("generator-*.pt")) == ["generator-0000002.pt", "generator-0000004.pt"]
    early, info = load_generator(Path(out) / "generator-0000002.pt")
    last, _ = load_generator(Path(out) / "generator-0000004.pt")
    assert info["step"] == 2
    ema = torch.load(checkpoint_path(out), weights_only=True)["ema"]
    assert all(torch.equal(last.state_dict()[k], v) for k, v in ema.items())
    assert not all(torch.equal(early.state_dict()[k], v) for k, v in ema.items())


def test_resume_continues_the_same_run(tiny_data, tmp_path):
    straight = train(tiny_config(tiny_data, tmp_path / "a", max_steps=6), resume=False)
    train(tiny_config(tiny_data, tmp_path / "b", max_steps=3), resume=False)
    resumed = train(tiny_config(tiny_data, tmp_path / "b", max_steps=6), resume=True)
    a = torch.load(checkpoint_path(straight), weights_only=True)
    b = torch.load(checkpoint_path(resumed), weights_only=True)
    assert a["step"] == b["step"] == 6
    for key in ("generator", "ema", "discriminator"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}.{name} differs after resume"
    log = [json.loads(line) for line in open(Path(resumed) / "log.jsonl")]
    assert [r["step"] for r in log if r.get("event") == "start"] == [0, 3]
    validations = [r for r in log if "val" in r]
    assert validations and (Path(resumed) / "curves.png").stat().st_size > 0
    assert set(validations[-1]["val_texture"]) == set(validations[-1]["telea_texture"]) == set(validations[-1]["val"])
    wider = tiny_config(tiny_data, tmp_path / "b", max_steps=8, generator=GeneratorConfig(width=4, n_down=2, n_blocks=1))
    with pytest.raises(ValueError, match="trained with generator"):
        train(wider, resume=True)


def test_export_and_restart_from_shipped_weights(tiny_data, tmp_path):
    out = train(tiny_config(tiny_data, tmp_path / "run", max_steps=3), resume=False)
    sha = export_generator(out, tmp_path / "generator.pt")
    generator, info = load_generator(tmp_path / "generator.pt")
    assert info["sha256"] == sha and info["step"] == 3
    ema = torch.load(checkpoint_path(out), weights_only=True)["ema"]
    assert all(torch.equal(generator.state_dict()[k], v) for k, v in ema.items())
    config = tiny_config(tiny_data, tmp_path / "fresh", init_weights=str(tmp_path / "generator.pt"))
    state = new_state(config, 0, torch.device("cpu"))
    assert all(torch.equal(state.generator.state_dict()[k], v) for k, v in ema.items())
    with pytest.raises(ValueError, match="init_weights"):
        new_state(dataclasses.replace(config, generator=GeneratorConfig(width=4, n_down=2, n_blocks=1)), 0, "cpu")


def test_weights_say_which_weights_they_were_trained_from_and_a_resume_no_longer_needs_those(tiny_data, tmp_path):
    parent_sha = export_generator(train(tiny_config(tiny_data, tmp_path / "parent", max_steps=3), resume=False),
                                  tmp_path / "parent.pt")
    child = tiny_config(tiny_data, tmp_path / "child", init_weights=str(tmp_path / "parent.pt"), max_steps=2)
    train(child, resume=False)
    (tmp_path / "parent.pt").unlink()  # replaced or deleted since: the checkpoint holds the weights and the lineage
    export_generator(train(dataclasses.replace(child, max_steps=4), resume=True), tmp_path / "child.pt")
    _, info = load_generator(tmp_path / "child.pt")
    assert info["step"] == 4 and info["started_from"]["sha256"] == parent_sha and info["started_from"]["step"] == 3
    assert "path" not in info["started_from"] and info["started_from"]["started_from"] is None
    assert info["total_steps"] == 7
    assert info["total_adversarial_steps"] == (4 - 2) + (3 - 2)  # each run's discriminator joins at step 2


def test_a_blank_hole_generator_is_fine_tuned_into_a_telea_refiner(tiny_data, tmp_path):
    out = train(tiny_config(tiny_data, tmp_path / "run", max_steps=2), resume=False)
    export_generator(out, tmp_path / "generator.pt")
    refiner = GeneratorConfig(width=8, n_down=2, n_blocks=1, prefill="telea")
    config = tiny_config(tiny_data, tmp_path / "refine", generator=refiner, init_weights=str(tmp_path / "generator.pt"),
                         max_steps=4)
    train(config, resume=False)
    export_generator(tmp_path / "refine", tmp_path / "refiner.pt")
    generator, _ = load_generator(tmp_path / "refiner.pt")
    assert generator.config.prefill == "telea"
    image = torch.full((1, 3, 32, 32), 0.5)
    image[:, :, :, 16:] = 0.9
    mask = torch.zeros(1, 1, 32, 32, dtype=torch.bool)
    mask[:, :, 8:12, 4:10] = True  # a hole inside the flat left half: Telea fills it with that half's value
    seen = generator_input(image, mask, "telea")
    assert torch.allclose(seen[mask.expand_as(seen)], torch.tensor(0.5), atol=1 / 255)
    assert torch.equal(seen[~mask.expand_as(seen)], image[~mask.expand_as(image)])


def test_ray_train_two_workers_stay_identical(tiny_data, tmp_path, ray_session, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tiny_config(tiny_data, "ray", max_steps=3)  # relative, as typed: each worker runs in a folder of its own
    out = train(config, resume=False, ray_workers=2)
    assert out == tmp_path / "ray"
    log = [json.loads(line) for line in open(Path(out) / "log.jsonl")]
    replicas = [r for r in log if r.get("event") == "replicas"]
    assert len(replicas) == 1 and replicas[0]["step"] == 3
    fingerprints = replicas[0]["fingerprints"]
    assert len(fingerprints) == 2 and fingerprints[0] == fingerprints[1]
    assert torch.load(checkpoint_path(out), weights_only=True)["step"] == 3


def test_after_a_resume_each_worker_draws_its_own_batches_and_the_lead_continues_its_stream(tiny_data, tmp_path):
    config = tiny_config(tiny_data, tmp_path)
    images = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(Path(tiny_data).glob("*.png"))]
    lead = new_state(config, 0, torch.device("cpu"))
    prepare_batch(lead.rng, images, config)
    lead.step = 1
    save_checkpoint(lead, config)
    expected = prepare_batch(copy.deepcopy(lead.rng), images, config)[0]  # what an unbroken lead draws next
    drawn = []
    for rank in (0, 1):
        resumed = new_state(config, rank, torch.device("cpu"), fresh=False)
        _load_checkpoint(resumed, config, checkpoint_path(tmp_path), torch.device("cpu"), rank)
        drawn.append(prepare_batch(resumed.rng, images, config)[0])
    assert torch.equal(drawn[0], expected)
    assert not torch.equal(drawn[1], drawn[0])  # the lead's checkpointed stream is the lead's alone


def test_a_run_from_step_0_starts_its_own_log(tiny_data, tmp_path):
    train(tiny_config(tiny_data, tmp_path, max_steps=2), resume=False)
    out = train(tiny_config(tiny_data, tmp_path, max_steps=2), resume=False)
    log = [json.loads(line) for line in open(Path(out) / "log.jsonl")]
    assert [r["step"] for r in log if r.get("event") == "start"] == [0]


def test_training_reads_its_images_from_s3(tiny_data, tmp_path, s3_endpoint, s3_bucket):
    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint)
    for path in sorted(Path(tiny_data).glob("*.png")):
        client.put_object(Bucket=s3_bucket, Key=f"clean/{path.name}", Body=path.read_bytes())
    client.put_object(Bucket=s3_bucket, Key="clean/README.txt", Body=b"not an image")
    config = dataclasses.replace(tiny_config(f"s3://{s3_bucket}/clean", tmp_path, max_steps=2),
                                 endpoint_url=s3_endpoint)
    out = train(config, resume=False)
    assert torch.load(checkpoint_path(out), weights_only=True)["step"] == 2
    with pytest.raises(ValueError, match=f"no images .* under s3://{s3_bucket}/nothing"):
        train(dataclasses.replace(config, data=f"s3://{s3_bucket}/nothing"), resume=False)


def test_a_resumed_run_takes_the_learning_rates_of_its_config(tiny_data, tmp_path):
    train(tiny_config(tiny_data, tmp_path, max_steps=2), resume=False)
    resumed = train(tiny_config(tiny_data, tmp_path, max_steps=3, lr_g=1e-5, lr_d=2e-5), resume=True)
    payload = torch.load(checkpoint_path(resumed), weights_only=True)
    assert [g["lr"] for g in payload["opt_g"]["param_groups"]] == [1e-5]
    assert [g["lr"] for g in payload["opt_d"]["param_groups"]] == [2e-5]


def test_validation_scores_hole_psnr_and_texture_like_restore_eval():
    grain = np.random.default_rng(0).integers(0, 256, (2, 96, 96, 3), dtype=np.uint8)  # all fine detail
    val = validation_set(list(grain))
    exact = score_fills(val, lambda crop, mask: crop)
    assert all(v == PSNR_CAP for v in exact["psnr_hole"].values())
    assert all(v == pytest.approx(1.0) for v in exact["texture"].values())

    def blur(crop, mask):
        out = crop.copy()
        out[mask] = cv2.GaussianBlur(crop, (0, 0), 6)[mask]
        return out

    blurred = score_fills(val, blur)
    assert all(v < PSNR_CAP for v in blurred["psnr_hole"].values())
    assert all(v < 0.5 for v in blurred["texture"].values()), blurred


def test_the_prefill_never_sees_what_the_hole_holds():
    """In training a hole still holds the ground truth; the generator's classical prefill must not read it
    (OpenCV's inpainting reads a little of it along thick strokes)."""
    rng = np.random.default_rng(0)
    truth = torch.from_numpy(rng.integers(0, 256, (6, 3, 128, 128), dtype=np.uint8))
    mask = torch.from_numpy(np.stack([hole_mask(rng, 128, 128, "thick") for _ in range(6)]))[:, None]
    for value in (0, 255):
        other = truth.masked_fill(mask, value)  # the same crops, something else inside the holes
        assert torch.equal(prefilled(truth, mask, "telea"), prefilled(other, mask, "telea"))
