"""Generator, discriminator, losses, weight files and tiled inference on tiny seeded models."""
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from restore.models.discriminator import DiscriminatorConfig, PatchDiscriminator
from restore.models.generator import Generator, GeneratorConfig, composite
from restore.models.losses import (ADVERSARIAL_KINDS, LossConfig, discriminator_loss, generator_loss, hole_l1,
                                   hole_mse)
from restore.models.tiling import _feather, _starts, damage_boxes, grid_tiles, inpaint_tiled_batch
from restore.models.weights import WeightsError, load_generator, save_generator
from restore.damage import archive_damage
from restore.demo import clean_scene
from restore.evaluate import psnr
from restore.restorers import GanRestorer
from restore.spec import RestorerSettings

TINY = GeneratorConfig(width=8, n_down=2, n_blocks=2)


def tiny_generator(config: GeneratorConfig = TINY, seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    return Generator(config).eval()


def random_mask(shape, fraction, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).random(shape) < fraction)


def inpaint_one(generator, image, mask, **settings):
    """`inpaint_tiled_batch` on one frame."""
    return inpaint_tiled_batch(generator, [image], [mask], **settings)[0]


@pytest.mark.parametrize("size", [(32, 32), (37, 53), (8, 8), (4, 4), (3, 5), (1, 1)])  # scans of a few pixels too
def test_generator_any_size_in_range(size):
    image = torch.rand(2, 3, *size)
    mask = random_mask((2, 1, *size), 0.3)
    pred = tiny_generator()(image, mask)
    assert pred.shape == image.shape
    assert pred.min() >= 0 and pred.max() <= 1


def test_prediction_ignores_hole_content():
    g = tiny_generator()
    image = torch.rand(1, 3, 32, 32)
    mask = random_mask((1, 1, 32, 32), 0.3)
    other = torch.where(mask, torch.rand_like(image), image)  # different pixels inside the hole only
    assert torch.equal(g(image, mask), g(other, mask))


def test_a_refining_generator_sees_the_prefilled_holes():
    g = tiny_generator(GeneratorConfig(width=8, n_down=2, n_blocks=2, prefill="telea"))
    image = torch.rand(1, 3, 32, 32)
    mask = random_mask((1, 1, 32, 32), 0.3)
    other = torch.where(mask, torch.rand_like(image), image)
    assert not torch.equal(g(image, mask), g(other, mask))
    with pytest.raises(ValueError, match="prefill"):
        GeneratorConfig(prefill="magic")


def test_a_refiner_started_from_a_blank_hole_generator_begins_where_it_stands():
    blank = tiny_generator()
    refiner = Generator(dataclasses.replace(TINY, prefill="telea")).eval()
    refiner.start_from(blank)
    image = torch.rand(1, 3, 32, 32)
    mask = random_mask((1, 1, 32, 32), 0.3)
    filled = torch.where(mask, torch.rand_like(image), image)  # whatever the classical fill put in the holes
    with torch.no_grad():
        assert torch.allclose(refiner(filled, mask), blank(image, mask), atol=1e-6)
    with pytest.raises(ValueError, match="cannot start"):
        refiner.start_from(tiny_generator(GeneratorConfig(width=16, n_down=2, n_blocks=2)))  # wider
    with pytest.raises(ValueError, match="cannot start"):
        refiner.start_from(tiny_generator(GeneratorConfig(width=8, n_down=2, n_blocks=3)))  # deeper


def test_a_wider_generator_started_from_a_narrower_one_begins_where_it_stands_and_uses_its_new_channels():
    narrow = tiny_generator(dataclasses.replace(TINY, prefill="telea"))
    torch.manual_seed(1)
    wide = Generator(dataclasses.replace(narrow.config, width=12))
    wide.start_from(narrow)
    image = torch.rand(2, 3, 40, 24)
    mask = random_mask((2, 1, 40, 24), 0.3)
    with torch.no_grad():
        assert torch.allclose(wide(image, mask), narrow(image, mask), atol=1e-6)
    hole_l1(wide(image, mask), torch.rand_like(image), mask).backward()
    # the Fourier unit's real parts: 12 of them in the narrow net, 18 in the wide one (then the imaginary parts)
    weight = wide.blocks[0].ffc1.g2g.fourier.conv.weight
    assert torch.equal(weight[:12, 12:18], torch.zeros_like(weight[:12, 12:18]))  # old parts read no new ones yet
    assert weight.grad[:12, 12:18].abs().sum() > 0  # but a step of training will make them


def test_composite_changes_only_masked_pixels():
    image = torch.rand(2, 3, 16, 16)
    mask = random_mask((2, 1, 16, 16), 0.4)
    out = composite(torch.rand_like(image), image, mask)
    keep = ~mask.expand_as(image)
    assert torch.equal(out[keep], image[keep])
    assert not torch.equal(out[~keep], image[~keep])


def test_discriminator_logits_and_features():
    d = PatchDiscriminator(DiscriminatorConfig(width=8, n_layers=3))
    logits, features = d(torch.rand(2, 3, 64, 64))
    assert logits.shape == (2, 1, 8, 8)
    assert [f.shape[1] for f in features] == [8, 16, 32, 32]


@pytest.mark.parametrize("hole_loss", [hole_l1, hole_mse])
def test_hole_losses_count_only_the_hole(hole_loss):
    target = torch.zeros(1, 3, 4, 4)
    pred = torch.full((1, 3, 4, 4), 2.0)
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    mask[..., 0, 0] = True
    expected = 2.0 if hole_loss is hole_l1 else 4.0
    assert hole_loss(pred, target, mask).item() == pytest.approx(expected)
    pred[..., 1:, :] = 5.0  # errors outside the hole do not count
    assert hole_loss(pred, target, mask).item() == pytest.approx(expected)


def test_squared_error_term_joins_the_generator_loss_only_when_weighted():
    real = torch.zeros(1, 3, 8, 8)
    pred = torch.full_like(real, 0.5)
    mask = torch.ones(1, 1, 8, 8, dtype=torch.bool)
    plain, metrics = generator_loss(LossConfig(adversarial="none"), None, pred, pred, real, mask)
    assert "g_mse" not in metrics
    weighted, metrics = generator_loss(LossConfig(adversarial="none", l2_weight=4.0), None, pred, pred, real, mask)
    assert metrics["g_mse"] == pytest.approx(0.25)
    assert weighted.item() == pytest.approx(plain.item() + 4.0 * 0.25)


@pytest.mark.parametrize("kind", [k for k in ADVERSARIAL_KINDS if k != "none"])
def test_every_adversarial_loss_trains(kind):
    torch.manual_seed(0)
    d = PatchDiscriminator(DiscriminatorConfig(width=8, n_layers=2))
    config = LossConfig(adversarial=kind, r1_every=1)
    real = torch.rand(2, 3, 32, 32)
    mask = random_mask((2, 1, 32, 32), 0.3)
    pred = torch.rand_like(real, requires_grad=True)
    g_loss, g_metrics = generator_loss(config, d, pred, composite(pred, real, mask), real, mask)
    g_loss.backward()
    assert torch.isfinite(g_loss) and {"g_l1", "g_adv", "g_fm"} <= set(g_metrics)
    assert pred.grad.abs().sum() > 0
    d_loss, d_metrics = discriminator_loss(config, d, composite(pred, real, mask), real, mask, step=0)
    d_loss.backward()
    assert torch.isfinite(d_loss) and "d_loss" in d_metrics
    assert all(p.grad is not None for p in d.parameters())


@pytest.mark.parametrize("kind", [k for k in ADVERSARIAL_KINDS if k != "none"])
def test_a_composite_counts_as_fake_only_where_it_has_holes(kind):
    """Outside the holes a composite is the real image: without holes it is judged exactly like the real one."""
    torch.manual_seed(0)
    d = PatchDiscriminator(DiscriminatorConfig(width=8, n_layers=2)).eval()  # eval: spectral norms hold still
    real = torch.rand(2, 3, 32, 32)
    config = LossConfig(adversarial=kind, r1_weight=0.0, gp_weight=0.0)
    no_holes = torch.zeros(2, 1, 32, 32, dtype=torch.bool)
    logits, _ = d(real)
    d_loss, _ = discriminator_loss(config, d, real.clone(), real, no_holes, step=1)
    both_real = 2 * {"non_saturating": F.softplus(-logits), "hinge": F.relu(1 - logits), "wgan_gp": -logits,
                     "lsgan": (logits - 1) ** 2}[kind].mean()
    assert d_loss.item() == pytest.approx(both_real.item(), abs=1e-6)
    g_loss, metrics = generator_loss(dataclasses.replace(config, fm_weight=0.0), d, real, real, real, no_holes)
    assert metrics["g_adv"] == 0.0  # no hole, nothing for the adversary to judge


def test_the_discriminator_learns_to_find_a_flat_fill():
    torch.manual_seed(0)
    d = PatchDiscriminator(DiscriminatorConfig(width=8, n_layers=2))
    opt = torch.optim.Adam(d.parameters(), lr=2e-3, betas=(0.5, 0.99))
    config = LossConfig(r1_every=4)  # with the default R1 weight
    real = torch.rand(4, 3, 32, 32)  # grain everywhere; the fill is flat grey
    mask = torch.zeros(4, 1, 32, 32, dtype=torch.bool)
    mask[..., 8:20, 10:22] = True
    fake = composite(torch.full_like(real, 0.5), real, mask)
    for step in range(100):
        loss, metrics = discriminator_loss(config, d, fake, real, mask, step)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert metrics["d_real"] - metrics["d_fake"] > 0.5
    g_adv = generator_loss(config, d, fake, fake, real, mask)[1]["g_adv"]
    assert g_adv > generator_loss(config, d, real, real, real, mask)[1]["g_adv"]


def test_unknown_adversarial_loss_fails_loudly():
    with pytest.raises(ValueError, match="hinge"):
        LossConfig(adversarial="vanilla")


def test_l1_only_generator_loss_needs_no_discriminator():
    real = torch.rand(1, 3, 16, 16)
    mask = random_mask((1, 1, 16, 16), 0.3)
    loss, metrics = generator_loss(LossConfig(adversarial="none"), None, real * 0, real * 0, real, mask)
    assert set(metrics) == {"g_l1", "g_loss"} and loss.item() > 0


def test_weights_round_trip(tmp_path):
    g = tiny_generator(GeneratorConfig(width=8, n_down=1, n_blocks=1), seed=3)
    sha = save_generator(g, tmp_path / "g.pt", {"step": 7})
    loaded, info = load_generator(tmp_path / "g.pt")
    assert loaded.config == g.config and info["sha256"] == sha and info["step"] == 7
    image, mask = torch.rand(1, 3, 24, 24), random_mask((1, 1, 24, 24), 0.3)
    with torch.no_grad():
        assert torch.equal(loaded(image, mask), g(image, mask))


def test_weights_written_before_a_config_field_existed_load_with_its_default(tmp_path):
    path = tmp_path / "g.pt"
    save_generator(tiny_generator(), path)
    payload = torch.load(path, weights_only=True)
    del payload["config"]["prefill"]  # as files written before refining generators existed
    torch.save(payload, path)
    loaded, info = load_generator(path)
    assert loaded.config == TINY and info["config"]["prefill"] == "none"
    payload["config"]["colour_space"] = "lab"  # a field this version does not know is refused
    torch.save(payload, path)
    with pytest.raises(WeightsError, match="only the fields"):
        load_generator(path)


def test_tampered_or_garbage_weights_are_refused(tmp_path):
    path = tmp_path / "g.pt"
    save_generator(tiny_generator(), path)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(64)
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError):
        load_generator(path)
    path.write_bytes(b"not a weights file at all")
    with pytest.raises(WeightsError):
        load_generator(path)
    with pytest.raises(WeightsError, match="not found"):
        load_generator(tmp_path / "missing.pt")


def test_weights_with_a_foreign_config_are_refused(tmp_path):
    path = tmp_path / "g.pt"
    save_generator(tiny_generator(), path)
    payload = torch.load(path, weights_only=True)
    payload["config"]["width"] = 16  # the tensors no longer fit the config (the checksum covers tensors only)
    torch.save(payload, path)
    with pytest.raises(WeightsError, match="do not match"):
        load_generator(path)


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "g.pt"
    torch.save({"format": "restore-generator/1", "config": GeneratorConfig()}, path)  # a class, not plain data
    with pytest.raises(WeightsError, match="GeneratorConfig") as refused:
        load_generator(path)
    assert "weights_only" not in str(refused.value)  # torch's advice to load it anyway, which would run its code


def test_tiled_empty_mask_passes_frame_through_without_the_model():
    image = torch.rand(3, 40, 50)

    class Exploding(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))

        def forward(self, *args):
            raise AssertionError("generator must not run for an empty mask")

    out = inpaint_one(Exploding(), image, torch.zeros(40, 50, dtype=torch.bool), tile=32, overlap=8)
    assert torch.equal(out, image)


@pytest.mark.parametrize("size", [(20, 28), (64, 96)])
def test_tiled_full_mask_and_tiny_frames(size):
    g = tiny_generator()
    image = torch.rand(3, *size)
    full = torch.ones(size, dtype=torch.bool)
    out = inpaint_one(g, image, full, tile=48, overlap=16)
    assert out.shape == image.shape and torch.isfinite(out).all()
    with torch.no_grad():
        whole = g(image[None], full[None, None])[0]
    if max(size) <= 48:  # smaller than a tile: one tile, the same as running the frame whole
        assert torch.allclose(out, whole, atol=1e-6)


def test_tiled_keeps_unmasked_pixels_bit_identical():
    image = torch.rand(3, 70, 90)
    mask = random_mask((70, 90), 0.05)
    out = inpaint_one(tiny_generator(), image, mask, tile=32, overlap=8, batch_size=3)
    assert torch.equal(out[:, ~mask], image[:, ~mask])
    assert not torch.equal(out[:, mask], image[:, mask])


def test_tiled_matches_untiled_away_from_seams():
    """With a purely local generator (no spectral blocks), tiles with enough context agree with the whole frame."""
    g = tiny_generator(GeneratorConfig(width=8, n_down=2, n_blocks=0))
    torch.manual_seed(1)
    image = torch.nn.functional.avg_pool2d(torch.rand(1, 3, 160, 224), 5, 1, 2)[0]  # smooth-ish content
    mask = random_mask((160, 224), 0.1, seed=2)
    tiled = inpaint_one(g, image, mask, tile=96, overlap=32, batch_size=4)  # origins 0, 64, 128
    with torch.no_grad():
        whole = composite(g(image[None], mask[None, None]), image[None], mask[None, None])[0]
    diff = (tiled - whole).abs()[:, mask]
    assert diff.mean() < 2e-3
    inner = torch.zeros_like(mask)
    inner[:56, :56] = True  # covered by the first tile only, 40+ pixels from its inner edges
    assert torch.allclose(tiled[:, inner & mask], whole[:, inner & mask], atol=1e-5)


def test_the_shipped_generator_tiled_stays_close_to_the_whole_frame():
    """Its spectral blocks see the whole input, so a tile cannot equal the whole frame exactly: it must stay close,
    in both ways of tiling, on frames larger than several tiles."""
    from restore.bench import clean_scene, whole_frame
    from restore.damage import ARCHIVE_KINDS, archive_damage
    from restore.restorers import build_restorer
    from restore.spec import RestorerSettings

    restorer = build_restorer(RestorerSettings(name="gan", tile=128, overlap=32), threads=2)
    errors = {"whole": 0.0, "boxes": 0.0, "grid": 0.0}
    for seed in range(3):
        rng = np.random.default_rng(seed)
        clean = clean_scene(rng, 384, 512)
        damaged, mask = archive_damage(rng, clean, ARCHIVE_KINDS)
        whole = whole_frame(restorer.generator, damaged, mask)
        errors["whole"] += float(((whole.astype(np.float64) - clean)[mask] ** 2).sum())
        for way in ("boxes", "grid"):
            restorer.grid = way == "grid"
            tiled = restorer(damaged, mask)
            assert np.array_equal(tiled[~mask], damaged[~mask])
            difference = np.abs(tiled.astype(int) - whole.astype(int))[mask]
            assert difference.mean() < 0.5 and difference.max() <= 16, (seed, way)  # in 8-bit levels
            errors[way] += float(((tiled.astype(np.float64) - clean)[mask] ** 2).sum())
    for way in ("boxes", "grid"):
        assert abs(10 * np.log10(errors["whole"] / errors[way])) < 0.15, way  # hole PSNR, dB


def test_batched_frames_equal_one_by_one():
    g = tiny_generator()
    images = [torch.rand(3, 50, 70), torch.rand(3, 30, 30), torch.rand(3, 50, 70)]
    masks = [random_mask(im.shape[1:], 0.1, seed=i) for i, im in enumerate(images)]
    masks[1][:] = False
    batched = inpaint_tiled_batch(g, images, masks, tile=32, overlap=8, batch_size=5)
    for image, mask, out in zip(images, masks, batched):
        assert torch.allclose(out, inpaint_one(g, image, mask, tile=32, overlap=8, batch_size=1), atol=1e-6)


def test_a_pixel_budget_bounds_each_batch_and_changes_no_fill():
    """Eight boxes of a tile's size a batch set a CPU worker's peak memory: with `batch_pixels` a batch holds at most
    that many pixels (a tile's boxes one at a time, smaller ones several), and fills as the batches of eight did."""
    g = tiny_generator()
    image, mask = torch.rand(3, 96, 96), torch.zeros(96, 96, dtype=torch.bool)
    boxes = [(0, 0, 32, 32), (0, 32, 32, 32), (0, 64, 32, 32), (32, 0, 32, 32), (64, 0, 16, 16), (64, 16, 16, 16),
             (64, 32, 16, 16), (80, 0, 16, 16), (80, 16, 16, 16)]  # four of a tile's size, five smaller
    for y, x, h, w in boxes:
        mask[y + 4:y + h - 4, x + 4:x + w - 4] = True
    batches = []
    g.register_forward_pre_hook(lambda module, inputs: batches.append((inputs[0].shape[0], *inputs[0].shape[-2:])))
    settings = dict(tile=32, overlap=8, boxes=[boxes])
    bounded = inpaint_tiled_batch(g, [image], [mask], **settings, batch_pixels=32 * 32)[0]
    assert sorted(batches) == sorted([(1, 32, 32)] * 4 + [(4, 16, 16), (1, 16, 16)])
    assert torch.allclose(bounded, inpaint_tiled_batch(g, [image], [mask], **settings)[0], atol=1e-6)


def test_tiling_rejects_bad_inputs():
    g = tiny_generator()
    with pytest.raises(ValueError, match="3, H, W"):
        inpaint_one(g, torch.rand(1, 16, 16), torch.zeros(16, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask"):
        inpaint_one(g, torch.rand(3, 16, 16), torch.zeros(16, 17, dtype=torch.bool))
    with pytest.raises(ValueError, match="overlap"):
        inpaint_one(g, torch.rand(3, 16, 16), torch.zeros(16, 16, dtype=torch.bool), tile=16, overlap=16)


def _covered(boxes, shape):
    covered = torch.zeros(shape, dtype=torch.bool)
    for y, x, h, w in boxes:
        covered[y:y + h, x:x + w] = True
    return covered


def test_damage_boxes_hold_every_hole_with_its_context_and_no_more_than_a_tile():
    mask = torch.zeros(600, 800, dtype=torch.bool)
    mask[300:303, 400:403] = True  # a dust speck
    mask[20:580, 700:702] = True  # a scratch longer than a tile
    mask[100:180, 100:190] = True  # a blotch
    boxes = damage_boxes(mask, tile=256, overlap=32, context=24)
    assert all(h <= 256 and w <= 256 for _, _, h, w in boxes)
    assert _covered(boxes, mask.shape)[mask].all()
    speck = [b for b in boxes if b[0] <= 300 < b[0] + b[2] and b[1] <= 400 < b[1] + b[3]]
    assert len(speck) == 1
    y, x, h, w = speck[0]
    assert y <= 300 - 24 and x <= 400 - 24 and y + h >= 303 + 24 and x + w >= 403 + 24
    blotch = [b for b in boxes if b[0] <= 100 and b[1] <= 100 and b[0] + b[2] >= 180 and b[1] + b[3] >= 190]
    assert blotch and blotch[0][0] <= 100 - 24  # a thick hole reaches at least as far as a thin one


def test_damage_boxes_cost_follows_the_damage():
    """A few specks cost a few small boxes, not a pass over the frame; more damage costs more."""
    def cost(n_specks):
        mask = torch.zeros(1024, 1024, dtype=torch.bool)
        for y, x in torch.randint(0, 1020, (n_specks, 2), generator=torch.Generator().manual_seed(0)).tolist():
            mask[y:y + 4, x:x + 4] = True
        return sum(h * w for _, _, h, w in damage_boxes(mask, tile=512, overlap=64, context=32)) / mask.numel()

    assert cost(1) < 0.01
    assert cost(1) < cost(10) < cost(100)
    assert cost(10) < 0.1


def test_small_frame_mostly_damaged_runs_whole():
    mask = torch.zeros(100, 120, dtype=torch.bool)
    mask[::10, :] = True
    assert damage_boxes(mask, tile=128, overlap=16, context=16) == [(0, 0, 100, 120)]


def test_grid_tiles_are_one_size_and_only_where_the_holes_are():
    mask = torch.zeros(600, 800, dtype=torch.bool)
    mask[300:303, 400:403] = True  # a dust speck
    mask[20:580, 700:702] = True  # a scratch
    tiles = grid_tiles(mask, tile=256, overlap=32)  # origins 0, 224, 344 down; 0, 224, 448, 544 across
    assert tiles == [(y, x, 256, 256) for y, x in
                     [(0, 448), (0, 544), (224, 224), (224, 448), (224, 544), (344, 448), (344, 544)]]
    assert grid_tiles(torch.zeros(600, 800, dtype=torch.bool), tile=256, overlap=32) == []
    strip = torch.zeros(100, 800, dtype=torch.bool)
    strip[50, 700] = True
    assert grid_tiles(strip, tile=256, overlap=32) == [(0, 448, 100, 256), (0, 544, 100, 256)]  # thinner than a tile
    with pytest.raises(ValueError, match="overlap"):
        grid_tiles(mask, tile=256, overlap=256)


def _tile_whole_frame(g, image, mask, tile, overlap):
    """Reference: the generator on every tile of the grid, feathered together, composited."""
    H, W = mask.shape
    th, tw = min(tile, H), min(tile, W)
    feather = _feather(th, tw, overlap, image.device)
    total, weight = torch.zeros_like(image), torch.zeros(H, W)
    with torch.no_grad():
        for y in _starts(H, th, tile - overlap):
            for x in _starts(W, tw, tile - overlap):
                pred = g(image[None, :, y:y + th, x:x + tw], mask[None, None, y:y + th, x:x + tw])[0]
                total[:, y:y + th, x:x + tw] += pred * feather
                weight[y:y + th, x:x + tw] += feather
    return composite(total / weight, image, mask[None])


def test_holes_outside_the_boxes_a_caller_gives_keep_the_input():
    """A caller may fill only some holes (the restorer's coarser levels fill only the deep ones)."""
    image = torch.rand(3, 96, 128)
    mask = torch.zeros(96, 128, dtype=torch.bool)
    mask[10:20, 10:20] = mask[70:80, 100:110] = True
    out = inpaint_tiled_batch(tiny_generator(), [image], [mask], tile=64, overlap=16, boxes=[[(0, 0, 48, 48)]])[0]
    assert not torch.equal(out[:, 10:20, 10:20], image[:, 10:20, 10:20])  # in the box: filled
    assert torch.equal(out[:, 70:80, 100:110], image[:, 70:80, 100:110])  # no box: as it was, not black


def test_grid_runs_scattered_damage_in_fewer_calls_and_fills_as_if_the_whole_frame_were_tiled():
    """What a GPU needs: every call a full batch of one tile size, and fewer calls than fitted boxes take; each
    hole pixel blended from every grid tile that holds it."""
    g = tiny_generator()
    shapes = []
    g.register_forward_pre_hook(lambda module, inputs: shapes.append(tuple(inputs[0].shape)))
    image = torch.rand(3, 300, 400)
    mask = torch.zeros(300, 400, dtype=torch.bool)
    for k, (y, x) in enumerate(torch.randint(0, 290, (40, 2), generator=torch.Generator().manual_seed(0)).tolist()):
        mask[y:y + 2 + k % 7, x:x + 3 + k % 5] = True  # dust of many sizes
    gridded = inpaint_one(g, image, mask, tile=96, overlap=32, batch_size=4, grid=True)
    grid_calls, shapes[:] = list(shapes), []
    inpaint_one(g, image, mask, tile=96, overlap=32, batch_size=4)
    assert {s[2:] for s in grid_calls} == {(96, 96)} and all(s[0] == 4 for s in grid_calls[:-1])
    assert len(grid_calls) < len(shapes)
    assert torch.equal(gridded[:, ~mask], image[:, ~mask])
    assert torch.allclose(gridded, _tile_whole_frame(g, image, mask, tile=96, overlap=32), atol=1e-5)


def test_the_restorer_on_a_grid_fills_as_well_as_on_fitted_boxes():
    """The shipped generator as a GPU runs it (grid tiles) against the CPU's way (fitted boxes), on whichever
    device this machine has."""
    rng = np.random.default_rng(0)
    clean = clean_scene(rng, 192, 256)
    damaged, mask = archive_damage(rng, clean)
    restorer = GanRestorer(RestorerSettings(name="gan", tile=64, overlap=16, context=8))
    restorer.grid = False
    boxes = restorer.fill([damaged], [mask])[0]
    shapes = []
    restorer.generator.register_forward_pre_hook(lambda module, inputs: shapes.append(tuple(inputs[0].shape)))
    restorer.grid = True
    gridded = restorer.fill([damaged], [mask])[0]
    assert {s[2:] for s in shapes} == {(64, 64)}
    assert np.array_equal(gridded[~mask], damaged[~mask])
    assert abs(psnr(gridded, clean, mask) - psnr(boxes, clean, mask)) < 0.5


def test_under_bf16_autocast_the_output_keeps_full_precision_for_16_bit_masters():
    """bf16 holds 8 bits of mantissa: a fill of a 16-bit scan taken from bf16 outputs would band in steps of 256
    levels. Checked with the CPU's autocast; a GPU runs the same code under CUDA's."""
    generator = tiny_generator().eval()
    y, x = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 96), indexing="ij")
    image = (0.3 + 0.4 * (x + y) / 2).expand(1, 3, -1, -1).contiguous()
    mask = torch.zeros(1, 1, 64, 96)
    mask[..., 16:48, 24:72] = 1
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = generator(image, mask)
    assert out.dtype == torch.float32
    levels = torch.unique(torch.round(out[0, 0][mask[0, 0] > 0].float() * 65535))
    assert len(levels) > 100  # the fill spans some 2,000 levels: in bf16, one value every 256 of them


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_autocast_leaves_the_spectral_norm_in_fp32():
    """On a GPU autocast would run spectral norm's matrix-vector products in bf16 (on a CPU it does not)."""
    discriminator = PatchDiscriminator(DiscriminatorConfig(width=8, n_layers=2)).cuda().eval()
    plain = discriminator.normalised_weights()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        mixed = discriminator.normalised_weights()
    assert all(m.dtype == torch.float32 and torch.equal(m, p) for m, p in zip(mixed, plain))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_bf16_inference_matches_cpu_fp32_on_a_film_frame():
    rng = np.random.default_rng(0)
    clean = clean_scene(rng, 1556, 2048)
    damaged, mask = archive_damage(rng, clean)
    restorer = GanRestorer(RestorerSettings(name="gan"))  # the shipped weights, on the GPU
    on_gpu = restorer.fill([damaged], [mask])[0]
    restorer.generator.cpu()
    on_cpu = restorer.fill([damaged], [mask])[0]
    assert np.array_equal(on_gpu[~mask], damaged[~mask])
    assert abs(psnr(on_gpu, clean, mask) - psnr(on_cpu, clean, mask)) < 0.1
