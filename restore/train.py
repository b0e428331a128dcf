"""`restore train`: adversarial training of the inpainting generator from a YAML config.

One loop serves both modes: a single process, or N Ray Train workers (TorchTrainer) that average gradients
every step. Full training state (both networks, optimisers, EMA generator, step, RNG state, config) is
checkpointed to `out_dir` every few minutes so a run can stop at any time and resume; `export_generator`
writes the EMA generator as the small file that ships with the package.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
import yaml

from restore.damage import MASK_CLASSES, archive_damage, hole_mask, hole_mask_window
from restore.evaluate import gradient_energy, psnr, texture
from restore.images import split_images
from restore.models.discriminator import DiscriminatorConfig, PatchDiscriminator
from restore.models.generator import Generator, GeneratorConfig, composite
from restore.models.losses import LossConfig, discriminator_loss, generator_loss
from restore.models.weights import load_generator, save_generator, tensor_digest
from restore.restorers import classical_fill

MASK_SOURCES = MASK_CLASSES + ("archive",)  # what a training mask can be drawn from
VAL_CROP = 256
PRECISIONS = ("fp32", "bf16")


@dataclass
class TrainConfig:
    data: str  # clean training images, searched recursively: a local folder or s3://bucket/prefix
    out_dir: str  # checkpoints, logs and plots; keep it outside the repository
    endpoint_url: str | None = None  # S3-compatible endpoint for `data` (credentials as for jobs)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    crop_sizes: list[int] = field(default_factory=lambda: [128])  # one drawn per step; repeat a size to weight it
    batch_size: int = 8  # per worker
    lr_g: float = 5e-4
    lr_d: float = 1e-3
    grad_clip: float = 1.0  # max gradient norm of the generator (no normalisation layers to tame it)
    ema_decay: float = 0.999
    adv_start_step: int = 0  # L1-only warm-up: the discriminator joins at this step
    max_steps: int = 1_000_000
    max_minutes: float | None = None  # also stop, with a checkpoint, after this many minutes of this session
    mask_weights: dict[str, float] = field(default_factory=lambda: {k: 1.0 for k in MASK_SOURCES})
    mask_canvas: int = 0  # draw LaMa masks at this side and cut crop-sized windows, so holes keep their width in
    # pixels on small crops (256: as wide as in `restore eval`); 0: draw them at the crop's size
    overlays: str | None = None  # optional folder of RGBA damage overlays for archive masks
    desaturate_p: float = 0.15  # share of crops turned grey (archives are often monochrome)
    rescale_p: float = 0.3  # share of crops rescaled by a factor drawn from rescale_range (scale variety)
    rescale_range: list[float] = field(default_factory=lambda: [0.6, 1.0])  # below 1: more of the scene in a
    # crop; above 1: less, magnified, as in a high-resolution scan
    val_images: int = 16  # images held out of training for validation
    val_every: int = 1000
    log_every: int = 50
    checkpoint_minutes: float = 5.0
    snapshot_every: int = 0  # also export the EMA generator every this many steps, to compare runs at equal steps
    loader_workers: int = 0  # processes preparing batches (crops, masks, prefill) ahead of the loop; 0: in the
    # loop, and then a resumed run draws exactly the batches an unbroken one would have drawn. They share the
    # decoded images and pass batches through shared memory: a container needs a /dev/shm larger than both
    init_weights: str | None = None  # start from shipped generator weights with a fresh discriminator
    seed: int = 0
    threads: int = 2  # torch CPU threads per process
    device: str = "cpu"
    precision: str = "fp32"  # "bf16": the networks' forward passes in bfloat16 (autocast; weights, optimiser state,
    # losses and R1 stay fp32). It pays where the hardware has bf16 units (a GPU's tensor cores, a CPU's AMX):
    # `restore bench --train CONFIG` times both

    def __post_init__(self):
        unknown = set(self.mask_weights) - set(MASK_SOURCES)
        if unknown or not any(w > 0 for w in self.mask_weights.values()):
            raise ValueError(f"mask_weights: keys must be among {', '.join(MASK_SOURCES)} with one weight > 0")
        if not self.crop_sizes or min(self.crop_sizes) < 32:
            raise ValueError("crop_sizes: give at least one crop size of 32 or more")
        if len(self.rescale_range) != 2 or not 0 < self.rescale_range[0] <= self.rescale_range[1] <= 4:
            raise ValueError(f"rescale_range: give [low, high] with 0 < low <= high <= 4; got {self.rescale_range}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}")
        if self.device.split(":")[0] not in ("cpu", "cuda"):
            raise ValueError(f"device must be cpu or cuda (cuda:N); got {self.device!r}")


def _build(cls, values: dict, where: str):
    """A dataclass from a dict, naming the offending keys instead of a bare TypeError."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}; valid: {sorted(names)}")
    return cls(**values)


def load_train_config(path: str | os.PathLike, **overrides) -> TrainConfig:
    """TrainConfig from a YAML file; `overrides` (e.g. data=..., out_dir=...) win over the file."""
    if not Path(path).is_file():
        raise ValueError(f"training config not found: {path} (the shipped ones are in restore/configs/)")
    with open(path) as f:
        raw = yaml.safe_load(f) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    raw.update({k: v for k, v in overrides.items() if v is not None})
    for key, flag in (("data", "--data"), ("out_dir", "--out")):
        if key not in raw:
            raise ValueError(f"{path}: no {key!r}: give `{flag}` (or set {key} in the file)")
    nested = {"generator": GeneratorConfig, "discriminator": DiscriminatorConfig, "loss": LossConfig}
    for key, cls in nested.items():
        raw[key] = _build(cls, raw.get(key) or {}, f"{path}: {key}")
    return _build(TrainConfig, raw, str(path))


# ---- data ----

def draw_mask(rng: np.random.Generator, height: int, width: int, source: str, overlays: str | None = None,
              canvas: int = 0) -> np.ndarray:
    """A bool (H, W) mask from one source: a LaMa class (cut from a `canvas`-sized one, if given) or archive
    damage."""
    if source == "archive":
        return archive_damage(rng, np.zeros((height, width), np.uint8), overlay_dir=overlays)[1]
    if canvas:
        return hole_mask_window(rng, height, width, source, canvas)
    return hole_mask(rng, height, width, source)


def sample_batch(rng: np.random.Generator, images: list[np.ndarray], config: TrainConfig,
                 size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random crops with flips, desaturation, rescaling and masks: (image (B, 3, S, S) uint8, channels-last in
    memory, mask (B, 1, S, S) bool). 8 bits from start to end: exact, and a quarter of the bytes to pass between
    processes and to the GPU."""
    sources = list(config.mask_weights)
    weights = np.array([config.mask_weights[s] for s in sources], float)
    crops, masks = [], []
    for _ in range(config.batch_size):
        im = images[int(rng.integers(len(images)))]
        h, w = im.shape[:2]
        factor = rng.uniform(*config.rescale_range) if rng.random() < config.rescale_p else 1.0
        factor = max(factor, size / min(h, w))  # never smaller than the crop
        span = min(round(size / factor), h, w)  # the crop's side before rescaling
        y, x = int(rng.integers(h - span + 1)), int(rng.integers(w - span + 1))
        crop = im[y:y + span, x:x + span]
        if span != size:  # rescale the crop alone, not the whole image
            crop = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA if span > size else cv2.INTER_LINEAR)
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        if rng.random() < config.desaturate_p:
            crop = np.repeat(crop.mean(2, keepdims=True).round().astype(np.uint8), 3, 2)
        crops.append(crop)
        source = sources[int(rng.choice(len(sources), p=weights / weights.sum()))]
        masks.append(draw_mask(rng, size, size, source, config.overlays, config.mask_canvas))
    image = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2)  # (B, 3, S, S)
    mask = torch.from_numpy(np.stack(masks))[:, None]  # (B, 1, S, S)
    return image, mask


def _centre_crop(im: np.ndarray, size: int) -> np.ndarray:
    h, w = im.shape[:2]
    y, x = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return im[y:y + size, x:x + size]


def validation_set(images: list[np.ndarray], overlays: str | None = None) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """Fixed (crop, mask) pairs per mask source: 256 centre crops with seeded masks, the same in every run."""
    out = {}
    for k, source in enumerate(MASK_SOURCES):
        pairs = []
        for i, im in enumerate(images):
            crop = _centre_crop(im, VAL_CROP)
            rng = np.random.default_rng(10_000 * (k + 1) + i)
            pairs.append((crop, draw_mask(rng, crop.shape[0], crop.shape[1], source, overlays)))
        out[source] = pairs
    return out


def score_fills(val: dict, fill) -> dict[str, dict[str, float]]:
    """Per mask source, mean hole PSNR and texture (as `restore eval` reports them) of `fill(crop, mask)` ->
    restored uint8 crop."""
    scores = {"psnr_hole": {}, "texture": {}}
    for source, pairs in val.items():
        psnrs, energy = [], [0.0, 0.0]  # gradient energy of (fills, originals) in the holes
        for crop, mask in pairs:
            restored = fill(crop, mask)
            psnrs.append(psnr(restored, crop, mask))
            energy[0] += gradient_energy(restored, mask)
            energy[1] += gradient_energy(crop, mask)
        scores["psnr_hole"][source] = float(np.mean(psnrs))
        scores["texture"][source] = texture(*energy)
    return scores


def generator_input(image: torch.Tensor, mask: torch.Tensor, prefill: str) -> torch.Tensor:
    """What the generator sees: the image itself (it blanks the holes), or with a prefill the holes filled
    classically from the 8-bit image, as the restorer does at inference."""
    if prefill == "none":
        return image
    filled = prefilled(_to_bytes(image), mask, prefill).to(image.device).float() / 255
    return torch.where(mask.bool(), filled, image)


def prefilled(pixels: torch.Tensor, mask: torch.Tensor, prefill: str) -> torch.Tensor:
    """(B, 3, H, W) uint8 images with their holes filled by the classical method `prefill` (which never sees what
    the holes hold: here, the ground truth), on the CPU; with no prefill, the images themselves."""
    if prefill == "none":
        return pixels
    pixels, holes = pixels.cpu(), mask.cpu().bool()
    arrays = pixels.permute(0, 2, 3, 1).numpy()  # (B, H, W, C)
    fills = np.stack([classical_fill(a, m, prefill) for a, m in zip(arrays, holes[:, 0].numpy())])
    return torch.where(holes, torch.from_numpy(fills).permute(0, 3, 1, 2), pixels)


def prepare_batch(rng: np.random.Generator, images: list[np.ndarray],
                  config: TrainConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One training batch on the CPU at a crop size drawn from the config: (image, mask, what the generator sees),
    the images as uint8."""
    size = config.crop_sizes[int(rng.integers(len(config.crop_sizes)))]
    image, mask = sample_batch(rng, images, config, size)
    return image, mask, prefilled(image, mask, config.generator.prefill)


def _to_bytes(image: torch.Tensor) -> torch.Tensor:
    return (image * 255).round().to(torch.uint8)


class _LoaderBatches(torch.utils.data.IterableDataset):
    """Endless batches for DataLoader workers, each worker drawing from (seed, its id). The images travel as one
    flat tensor, which a spawned worker receives as shared memory: no copy per worker, nor the seconds per worker
    that pickling them took."""

    def __init__(self, images: list[np.ndarray], config: TrainConfig, seed: int):
        self.pixels = torch.from_numpy(np.concatenate([im.reshape(-1) for im in images]))
        self.shapes = [im.shape for im in images]
        self.config, self.seed = config, seed

    def __iter__(self):
        ends = np.cumsum([np.prod(shape) for shape in self.shapes])[:-1]
        images = [part.reshape(shape) for part, shape in zip(np.split(self.pixels.numpy(), ends), self.shapes)]
        rng = np.random.default_rng([self.seed, torch.utils.data.get_worker_info().id])
        while True:
            yield prepare_batch(rng, images, self.config)


def _single_threaded_worker(_: int) -> None:
    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def training_batches(state: State, config: TrainConfig, images: list[np.ndarray], device: torch.device):
    """Endless batches: drawn in the loop from the checkpointed RNG, or by `loader_workers` processes (so that a GPU
    is not left waiting on the classical prefill) seeded from that RNG once per session, which also moves it on: a
    resumed run never replays a session's batches."""
    if config.loader_workers <= 0:
        while True:
            yield prepare_batch(state.rng, images, config)
    # Spawned, not forked: a fork of this process (OpenMP and OpenCV thread pools, Ray's threads) can deadlock.
    loader = torch.utils.data.DataLoader(
        _LoaderBatches(images, config, int(state.rng.integers(2 ** 63))), batch_size=None,
        num_workers=config.loader_workers, worker_init_fn=_single_threaded_worker, prefetch_factor=2,
        pin_memory=device.type == "cuda", multiprocessing_context="spawn")
    yield from loader


@torch.no_grad()
def evaluate(generator: Generator, val: dict, device: torch.device) -> dict[str, dict[str, float]]:
    """`score_fills` of the composited prediction, rounded to 8 bits as it would be saved."""
    generator.eval()

    def fill(crop: np.ndarray, mask: np.ndarray) -> np.ndarray:
        image = torch.tensor(crop).permute(2, 0, 1)[None].float().to(device) / 255  # (1, 3, H, W)
        m = torch.from_numpy(mask)[None, None].to(device)  # (1, 1, H, W)
        out = composite(generator(generator_input(image, m, generator.config.prefill), m), image, m)
        return (out[0].permute(1, 2, 0).cpu().numpy() * 255).round().clip(0, 255).astype(np.uint8)

    return score_fills(val, fill)


# ---- training state ----

@dataclass
class State:
    generator: Generator
    ema: Generator
    discriminator: PatchDiscriminator
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    rng: np.random.Generator
    step: int = 0
    wall_seconds: float = 0.0  # training time summed over all sessions
    started_from: dict | None = None  # the info of the init_weights file this run began from (its lineage)


def new_state(config: TrainConfig, rank: int, device: torch.device, fresh: bool = True) -> State:
    """A run's state; `fresh` starts the generator from `init_weights`, which a resumed run (`fresh=False`, its
    weights and lineage coming from the checkpoint) no longer needs."""
    torch.manual_seed(config.seed)  # same initial weights on every worker
    generator = Generator(config.generator)
    started_from = None
    if config.init_weights and fresh:
        shipped, info = load_generator(config.init_weights)
        try:
            generator.start_from(shipped)
        except ValueError:
            raise ValueError(f"init_weights were built with {shipped.config}, config asks for {config.generator}") from None
        started_from = {k: v for k, v in info.items() if k != "path"}  # where it lies here says nothing elsewhere
    discriminator = PatchDiscriminator(config.discriminator)
    ema = Generator(config.generator)
    ema.load_state_dict(generator.state_dict())
    # channels_last, as at inference: 1.2-1.5x faster steps on a CPU (`restore bench --train`), and the layout GPU
    # tensor cores want
    generator, ema, discriminator = (net.to(device, memory_format=torch.channels_last)
                                     for net in (generator, ema, discriminator))
    ema.eval()
    ema.requires_grad_(False)
    opt_g = torch.optim.Adam(generator.parameters(), lr=config.lr_g, betas=(0.9, 0.99))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=config.lr_d, betas=(0.5, 0.99))
    torch.manual_seed(config.seed + 1 + rank)  # different stochastic choices per worker from here on
    return State(generator, ema, discriminator, opt_g, opt_d, np.random.default_rng([config.seed, rank]),
                 started_from=started_from)


def checkpoint_path(out_dir: str | os.PathLike) -> Path:
    return Path(out_dir) / "last.pt"


def checkpoint_step(out_dir: str | os.PathLike) -> int:
    """The step the run in `out_dir` has reached, from its last checkpoint."""
    return int(torch.load(checkpoint_path(out_dir), map_location="cpu", weights_only=True)["step"])


def save_checkpoint(state: State, config: TrainConfig) -> Path:
    """Everything needed to continue the run (exactly, when batches are drawn in the loop), written atomically (a
    crash never leaves half a file)."""
    path = checkpoint_path(config.out_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "step": state.step,
        "wall_seconds": state.wall_seconds,
        "config": dataclasses.asdict(config),
        "generator": state.generator.state_dict(),
        "ema": state.ema.state_dict(),
        "discriminator": state.discriminator.state_dict(),
        "opt_g": state.opt_g.state_dict(),
        "opt_d": state.opt_d.state_dict(),
        "numpy_rng": json.dumps(state.rng.bit_generator.state),
        "torch_rng": torch.get_rng_state(),
        "started_from": json.dumps(state.started_from),
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def _load_checkpoint(state: State, config: TrainConfig, path: Path, device: torch.device, rank: int = 0) -> None:
    """Continue the run saved at `path`. The lead worker wrote it, so the others take fresh random streams of their
    own (from the seed, their rank and the step) instead of the lead's, which would repeat its batches."""
    payload = torch.load(path, map_location=device, weights_only=True)
    for key, cls in (("generator", GeneratorConfig), ("discriminator", DiscriminatorConfig)):
        trained = dataclasses.asdict(cls(**payload["config"][key]))  # fields added since take their defaults
        if trained != dataclasses.asdict(getattr(config, key)):
            raise ValueError(f"{path} was trained with {key} {trained}; the config asks for "
                             f"{dataclasses.asdict(getattr(config, key))}: use another out_dir or resume=False")
    state.generator.load_state_dict(payload["generator"])
    state.ema.load_state_dict(payload["ema"])
    try:
        state.discriminator.load_state_dict(payload["discriminator"])
    except RuntimeError as error:
        raise ValueError(f"{path} holds a discriminator of an older design; start a new out_dir from its "
                         f"generator (restore export, then --init-weights)") from error
    state.opt_g.load_state_dict(payload["opt_g"])
    state.opt_d.load_state_dict(payload["opt_d"])
    for optimizer, lr in ((state.opt_g, config.lr_g), (state.opt_d, config.lr_d)):
        for group in optimizer.param_groups:
            group["lr"] = lr  # the config's rate, not the one saved: a resumed run may be given a new one
    state.step, state.wall_seconds = payload["step"], payload["wall_seconds"]
    if rank == 0:
        state.rng.bit_generator.state = json.loads(payload["numpy_rng"])
        torch.set_rng_state(payload["torch_rng"].cpu())  # map_location moved it to the training device
    else:
        state.rng = np.random.default_rng([config.seed, rank, state.step])
        torch.manual_seed(int(state.rng.integers(2 ** 63)))
    state.started_from = json.loads(payload.get("started_from", "null"))  # absent from checkpoints of older runs


@torch.no_grad()
def _update_ema(ema: Generator, generator: Generator, step: int, decay: float) -> None:
    decay = min(decay, (1 + step) / (10 + step))  # short memory early on, when the weights move fast
    for e, p in zip(ema.parameters(), generator.parameters()):
        e.lerp_(p, 1 - decay)


def _average_gradients(module: torch.nn.Module, world_size: int) -> None:
    """All-reduce and average gradients, as DDP does; done by hand because R1's double backward breaks DDP hooks."""
    import torch.distributed as dist

    for p in module.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world_size


def _mixed_precision(config: TrainConfig, device: torch.device) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16")


def train_step(state: State, config: TrainConfig, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
               device: torch.device, world_size: int = 1) -> dict:
    """One generator step and (after the warm-up) one discriminator step on a `prepare_batch` batch; returns the
    metrics."""
    real, mask, seen = (t.to(device, non_blocking=True, memory_format=torch.channels_last)
                        for t in batch)  # (B, 3, S, S), (B, 1, S, S), (B, 3, S, S)
    real, seen = real.float() / 255, seen.float() / 255
    adversarial = config.loss.adversarial != "none" and state.step >= config.adv_start_step
    loss_config = config.loss if adversarial else dataclasses.replace(config.loss, adversarial="none")

    with _mixed_precision(config, device):
        pred = state.generator(seen, mask).float()  # (B, 3, S, S); losses are taken in fp32
        fake = composite(pred, real, mask)
        state.discriminator.requires_grad_(False)
        g_loss, metrics = generator_loss(loss_config, state.discriminator, pred, fake, real, mask)
        state.discriminator.requires_grad_(True)
    state.opt_g.zero_grad(set_to_none=True)
    g_loss.backward()
    if world_size > 1:
        _average_gradients(state.generator, world_size)
    metrics["g_grad_norm"] = float(torch.nn.utils.clip_grad_norm_(state.generator.parameters(), config.grad_clip))
    state.opt_g.step()

    if adversarial:
        with _mixed_precision(config, device):
            d_loss, d_metrics = discriminator_loss(config.loss, state.discriminator, fake, real, mask, state.step)
        state.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        if world_size > 1:
            _average_gradients(state.discriminator, world_size)
        state.opt_d.step()
        metrics.update(d_metrics)

    _update_ema(state.ema, state.generator, state.step, config.ema_decay)
    state.step += 1
    metrics["crop"] = real.shape[-1]
    return metrics


def _log(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def plot_log(log_path: str | os.PathLike, png_path: str | os.PathLike) -> None:
    """Learning curves: smoothed hole L1 (and squared error) and adversarial terms, and validation hole PSNR and
    texture against Telea's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in Path(log_path).read_text().splitlines()]
    steps = [r for r in records if "g_l1" in r]
    vals = [r for r in records if "val" in r]
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(18, 4.5))
    for key in ("g_l1", "g_mse", "g_adv", "g_fm"):
        xs = [r["step"] for r in steps if key in r]
        if xs:
            ys = np.array([r[key] for r in steps if key in r])
            k = max(1, len(ys) // 50)
            ax1.plot(xs[k - 1:], np.convolve(ys, np.ones(k) / k, "valid"), label=key)
    ax1.set_yscale("log")
    ax1.set_xlabel("step")
    ax1.set_title("training losses (moving average)")
    ax1.legend()
    for ax, ours, telea, title in ((ax2, "val", "telea", "validation hole PSNR, dB"),
                                   (ax3, "val_texture", "telea_texture", "validation texture (1.0 natural)")):
        scored = [r for r in vals if ours in r]  # logs written before texture was scored lack it
        for i, source in enumerate(MASK_SOURCES):
            xs = [r["step"] for r in scored if source in r[ours]]
            if xs:
                colour = f"C{i}"
                ax.plot(xs, [r[ours][source] for r in scored if source in r[ours]], color=colour, marker=".", label=source)
                ax.axhline(scored[-1][telea][source], color=colour, linestyle="--", linewidth=0.8)
        ax.set_xlabel("step")
        ax.set_title(f"{title} (dashed: OpenCV Telea)")
        if scored:
            ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


def _run(config: TrainConfig, resume: bool, rank: int = 0, world_size: int = 1) -> Path:
    """The training loop shared by the single-process and the Ray Train paths; returns the checkpoint dir."""
    torch.set_num_threads(config.threads)
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda: this torch sees no CUDA device (a CPU build, or no GPU here); use --device cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # a few crop sizes only: each gets its fastest kernels once
    images, val_images = split_images(config.data, config.val_images, config.endpoint_url)
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "log.jsonl"
    resuming = resume and checkpoint_path(out_dir).exists()
    state = new_state(config, rank, device, fresh=not resuming)
    if resuming:
        _load_checkpoint(state, config, checkpoint_path(out_dir), device, rank)
    lead = rank == 0
    if lead and not resuming:
        log_path.unlink(missing_ok=True)  # a run from step 0 starts its own log, or its curves would overlay older ones
    val = validation_set(val_images, config.overlays) if lead else {}
    telea = score_fills(val, lambda crop, mask: classical_fill(crop, mask, "telea")) if lead else {}
    if lead:
        _log(log_path, {"event": "start", "step": state.step, "workers": world_size, "time": time.time()})
    last_checkpoint = started = time.monotonic()
    deadline = started + 60 * config.max_minutes if config.max_minutes else float("inf")
    session_start_wall = state.wall_seconds
    batches = training_batches(state, config, images, device)
    try:
        while state.step < config.max_steps:
            metrics = train_step(state, config, next(batches), device, world_size)
            state.wall_seconds = session_start_wall + time.monotonic() - started
            final = state.step == config.max_steps or time.monotonic() > deadline
            if lead:
                if state.step % config.log_every == 0 or final:
                    _log(log_path, {"step": state.step, "wall": round(state.wall_seconds, 1), **metrics})
                if state.step % config.val_every == 0 or final:
                    scores = evaluate(state.ema, val, device)
                    _log(log_path, {"step": state.step, "wall": round(state.wall_seconds, 1),
                                    "val": scores["psnr_hole"], "val_texture": scores["texture"],
                                    "telea": telea["psnr_hole"], "telea_texture": telea["texture"]})
                    plot_log(log_path, out_dir / "curves.png")
                    print(f"restore train: step {state.step}, validation hole PSNR "
                          + ", ".join(f"{kind} {db:.2f}" for kind, db in scores["psnr_hole"].items())
                          + f" dB (Telea {', '.join(f'{db:.2f}' for db in telea['psnr_hole'].values())})",
                          file=sys.stderr, flush=True)  # a run of hours says how it goes
                if config.snapshot_every and state.step % config.snapshot_every == 0:
                    _save_ema(state.ema, config, state.step, state.wall_seconds, state.started_from,
                              out_dir / f"generator-{state.step:07d}.pt")
                if not final and time.monotonic() - last_checkpoint > 60 * config.checkpoint_minutes:
                    save_checkpoint(state, config)
                    last_checkpoint = time.monotonic()
            if final:
                break
    finally:
        batches.close()  # ends the loader processes now, not when the generator is collected
    if lead:
        save_checkpoint(state, config)
    if world_size > 1:
        _check_replicas(state, log_path if lead else None)
    return out_dir


def _check_replicas(state: State, log_path: Path | None) -> None:
    """Every worker must hold bit-identical parameters after training; the lead logs the fingerprints."""
    import torch.distributed as dist

    mine = {"generator": tensor_digest(state.generator.state_dict()),
            "discriminator": tensor_digest(state.discriminator.state_dict())}
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    if log_path is not None:
        _log(log_path, {"event": "replicas", "step": state.step, "fingerprints": everyone})
    if any(f != everyone[0] for f in everyone):
        raise RuntimeError(f"workers diverged: parameter fingerprints differ: {everyone}")


def _ray_worker_loop(loop_config: dict) -> None:
    """Runs on each Ray Train worker; the process group is already set up by TorchTrainer."""
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    config = _config_from_dict(loop_config["config"])
    if config.device.startswith("cuda"):  # each worker sees every GPU of its machine: take the one Ray gave it
        config = dataclasses.replace(config, device=str(ray.train.torch.get_device()))
    _run(config, loop_config["resume"], context.get_world_rank(), context.get_world_size())


def _config_from_dict(raw: dict) -> TrainConfig:
    raw = dict(raw)
    raw["generator"] = GeneratorConfig(**raw["generator"])
    raw["discriminator"] = DiscriminatorConfig(**raw["discriminator"])
    raw["loss"] = LossConfig(**raw["loss"])
    return TrainConfig(**raw)


def train(config: TrainConfig, resume: bool = True, ray_workers: int = 0) -> Path:
    """Train until `config.max_steps` (or `max_minutes`), resuming from `out_dir` unless `resume` is False; returns the
    checkpoint dir.

    With `ray_workers` > 0 the same loop runs on that many Ray Train workers (TorchTrainer, gloo on CPU), each
    drawing its own batches; gradients are averaged every step, so the effective batch is workers x batch_size.
    `out_dir` must then be on storage every worker can read (the lead worker writes the checkpoints).
    """
    if ray_workers <= 0:
        return _run(config, resume)
    if config.max_minutes:
        raise ValueError("max_minutes stops one process on its own clock: with Ray Train workers give max_steps")
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from restore.pipeline import start_ray

    start_ray()
    # Ray Train runs each worker in a folder of its own: relative paths must be made absolute here
    config = dataclasses.replace(config, out_dir=str(Path(config.out_dir).resolve()),
                                 data=config.data if "://" in config.data else str(Path(config.data).resolve()))

    trainer = TorchTrainer(
        _ray_worker_loop,
        train_loop_config={"config": dataclasses.asdict(config), "resume": resume},
        scaling_config=ScalingConfig(num_workers=ray_workers, use_gpu=config.device.startswith("cuda"),
                                     resources_per_worker={"CPU": config.threads + config.loader_workers}),
        run_config=RunConfig(name="restore-train", storage_path=str(Path(config.out_dir).resolve() / "ray")),
    )
    trainer.fit()
    return Path(config.out_dir)


def export_generator(checkpoint_dir: str | os.PathLike, out_path: str | os.PathLike) -> str:
    """Write the EMA generator of the last checkpoint as shipped weights; returns the file's sha256."""
    payload = torch.load(checkpoint_path(checkpoint_dir), map_location="cpu", weights_only=True)
    config = _config_from_dict(payload["config"])
    generator = Generator(config.generator)
    generator.load_state_dict(payload["ema"])
    started_from = json.loads(payload.get("started_from", "null"))
    return _save_ema(generator, config, payload["step"], payload["wall_seconds"], started_from, out_path)


def _save_ema(ema: Generator, config: TrainConfig, step: int, wall_seconds: float, started_from: dict | None,
              out_path: str | os.PathLike) -> str:
    """The EMA generator as a weights file whose info says how it was trained, and from which file (whose info
    says the same in turn), with totals over that whole lineage; returns its sha256."""
    adversarial_steps = 0 if config.loss.adversarial == "none" else max(0, step - config.adv_start_step)
    parent = started_from or {}
    info = {
        "step": step,
        "wall_hours": round(wall_seconds / 3600, 2),
        "data": Path(config.data).name,
        "crop_sizes": config.crop_sizes,
        "batch_size": config.batch_size,
        "device": config.device,
        "adversarial": config.loss.adversarial,
        "adversarial_steps": adversarial_steps,
        "exported": time.strftime("%Y-%m-%d"),
        "started_from": started_from,
        "total_steps": step + parent.get("total_steps", parent.get("step", 0)),
        "total_adversarial_steps": adversarial_steps + parent.get("total_adversarial_steps",
                                                                  parent.get("adversarial_steps", 0)),
        "total_wall_hours": round(wall_seconds / 3600 + parent.get("total_wall_hours", parent.get("wall_hours", 0.0)), 2),
    }
    return save_generator(ema, out_path, info)
