"""Throughput on the same frames, four ways: the bare restorer (model-bound ceiling), the pipeline with a
do-nothing restorer (I/O-bound ceiling), the full pipeline (local and S3), and the naive loop a user would write.

Pipeline rates are steady-state: frames written after the first one, over the time from the first frame written
to the last (the manifest's `finished_at`), so actor start-up and model loading (paid once per job, not per
frame) do not count against a nightly run of tens of thousands of frames. The rate including start-up is
reported beside them.
"""
from __future__ import annotations

import io
import logging
import math
import os
import platform
import re
import resource
import shutil
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from .damage import ARCHIVE_KINDS, MASK_CLASSES, archive_damage, hole_mask
from .demo import clean_scene
from .frames import Frame, decode_frame, decode_mask, encode_frame, encode_mask
from .restorers import build_restorer, classical_fill
from .spec import RestorerSettings, parse_spec

DAMAGE_KINDS = ("archive",) + MASK_CLASSES + ("none",)


@dataclass
class BenchConfig:
    sizes: list[tuple[int, int]] = field(default_factory=lambda: [(512, 512), (1556, 2048)])  # (height, width)
    frames: int = 8
    damage: str = "archive"
    restorer: str = "gan"
    weights: str | None = None
    workers: int = 1
    cpus: float = 1.0
    batch_size: int = 2
    s3: bool = True  # also run the pipeline against an S3 endpoint (moto's server on loopback)
    naive: bool = True
    seed: int = 0


def damaged_frames(config: BenchConfig, height: int, width: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(config.seed)
    frames = []
    for _ in range(config.frames):
        clean = clean_scene(rng, height, width)
        if config.damage == "archive":
            frames.append(archive_damage(rng, clean, ARCHIVE_KINDS))
        elif config.damage == "none":
            frames.append((clean, np.zeros((height, width), dtype=bool)))
        else:
            frames.append((clean, hole_mask(rng, height, width, config.damage)))
    return frames


def write_collection(folder: Path, frames: list[tuple[np.ndarray, np.ndarray]]) -> None:
    for index, (pixels, mask) in enumerate(frames):
        frame = Frame(pixels=pixels, alpha=None, format="PNG", mode="RGB", icc_profile=None, exif=None)
        (folder / "masks").mkdir(parents=True, exist_ok=True)
        (folder / f"f{index:05d}.png").write_bytes(encode_frame(frame, pixels, "png"))
        (folder / "masks" / f"f{index:05d}.png").write_bytes(encode_mask(mask))


def restorer_settings(config: BenchConfig, name: str | None = None) -> RestorerSettings:
    return RestorerSettings(name=name or config.restorer, weights=config.weights)


def measure_ceiling(config: BenchConfig, frames) -> float:
    """Frames/s of the restorer alone, with the pipeline's tiling and thread count, frames already in memory."""
    restorer = build_restorer(restorer_settings(config), threads=max(1, int(config.cpus)))
    restorer.restore_batch([frames[0][0]], [frames[0][1]])  # warm-up: first-call allocations
    started = time.perf_counter()
    for start in range(0, len(frames), config.batch_size):
        group = frames[start:start + config.batch_size]
        restorer.restore_batch([p for p, _ in group], [m for _, m in group])
    return len(frames) / (time.perf_counter() - started)


class WorkerMemory:
    """Samples the resident memory of Ray's worker processes while a job runs."""

    def __init__(self, every: float = 0.2):
        import psutil

        self.psutil, self.every = psutil, every
        self.peak_one = self.peak_total = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        while not self._stop.is_set():
            sizes = []
            for process in self.psutil.process_iter(["cmdline", "memory_info"]):
                cmdline = " ".join(process.info["cmdline"] or [])
                if "ray::" in cmdline or "default_worker.py" in cmdline:
                    sizes.append(process.info["memory_info"].rss)
            if sizes:
                self.peak_one, self.peak_total = max(self.peak_one, max(sizes)), max(self.peak_total, sum(sizes))
            self._stop.wait(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def measure_pipeline(config: BenchConfig, input_uri: str, output_uri: str, restorer: str,
                     endpoint_url: str | None = None) -> dict:
    from .pipeline import prepare, run_job

    raw = {"name": "bench", "input": input_uri, "output": output_uri, "endpoint_url": endpoint_url,
           "restorer": {"name": restorer, "weights": config.weights}, "batch_size": config.batch_size,
           "workers": {"count": config.workers, "cpus": config.cpus}, "commit_every": 64}
    context, plan = prepare(parse_spec({k: v for k, v in raw.items() if v is not None}))
    with WorkerMemory() as memory:
        result = run_job(context, plan)
    from .manifest import read_manifests

    table = read_manifests(context.output_storage, "bench")
    if result.counts.get("ok", 0) != plan.frames:
        errors = sorted({e for e in table["error"].to_pylist() if e})
        raise RuntimeError(f"bench job did not restore every frame: {result.counts}; {errors[:3]}")
    finished = sorted(table["finished_at"].to_pylist())
    span = (finished[-1] - finished[0]).total_seconds()
    after_first = sum(1 for t in finished if t > finished[0])  # a batch is written together: skip all of the first
    steady = after_first / span if span > 0 else result.frames_per_second
    return {"fps": steady, "fps_with_startup": result.frames_per_second, "seconds": result.seconds,
            "worker_peak_rss_mb": memory.peak_one / 2**20, "workers_total_peak_rss_mb": memory.peak_total / 2**20}


def whole_frame(generator, pixels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The generator over a whole 8-bit RGB frame at once, after the classical prefill it refines (as the restorer
    gives it), composited: what a user's own loop would do."""
    import torch

    if generator.config.prefill != "none":
        pixels = classical_fill(pixels, mask, generator.config.prefill)
    device = next(generator.parameters()).device
    image = (torch.tensor(pixels).permute(2, 0, 1)[None].float() / 255).to(device)  # (1, 3, H, W)
    hole = torch.from_numpy(mask)[None, None].to(device)
    with torch.inference_mode():
        pred = generator(image, hole)
    out = torch.where(hole, pred, image)[0].permute(1, 2, 0).cpu().numpy()
    return np.clip(np.rint(out * 255), 0, 255).astype(np.uint8)


def measure_naive(config: BenchConfig, input_dir: Path, output_dir: Path) -> float:
    """One process, frame by frame: read → decode → the model over the whole frame → encode (default PNG) → write."""
    from PIL import Image

    restorer = build_restorer(restorer_settings(config), threads=max(1, int(config.cpus)))
    generator = getattr(restorer, "generator", None)
    paths = sorted(input_dir.glob("*.png"))
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for path in paths:
        pixels = np.asarray(Image.open(path).convert("RGB"))
        mask = decode_mask((input_dir / "masks" / path.name).read_bytes())
        if generator is not None:
            restored = whole_frame(generator, pixels, mask)
        else:
            restored = restorer(pixels, mask)
        buffer = io.BytesIO()
        Image.fromarray(restored).save(buffer, format="PNG")
        (output_dir / path.name).write_bytes(buffer.getvalue())
    return len(paths) / (time.perf_counter() - started)


def _s3_endpoint():
    """A throwaway S3 endpoint on loopback (moto's server, from the test extra), or None when moto is absent."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        return None
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


def bench_size(config: BenchConfig, height: int, width: int, workdir: Path, endpoint: str | None) -> dict:
    frames = damaged_frames(config, height, width)
    input_dir = workdir / f"in-{width}x{height}"
    write_collection(input_dir, frames)
    decoded = [(decode_frame((input_dir / f"f{i:05d}.png").read_bytes()).pixels, mask)
               for i, (_, mask) in enumerate(frames)]
    result: dict = {"height": height, "width": width, "megapixels": height * width / 1e6,
                    "masked_fraction": float(np.mean([m.mean() for _, m in frames]))}
    result["ceiling_fps"] = measure_ceiling(config, decoded)
    io_run = measure_pipeline(config, str(input_dir), str(workdir / f"io-{width}"), "none")
    result["io_ceiling_fps"] = io_run["fps"]
    full = measure_pipeline(config, str(input_dir), str(workdir / f"out-{width}"), config.restorer)
    result["pipeline_fps"] = full["fps"]
    result["pipeline_fps_with_startup"] = full["fps_with_startup"]
    result["worker_peak_rss_mb"] = max(io_run["worker_peak_rss_mb"], full["worker_peak_rss_mb"])
    result["workers_total_peak_rss_mb"] = max(io_run["workers_total_peak_rss_mb"], full["workers_total_peak_rss_mb"])
    if endpoint:
        import boto3

        bucket = f"bench-{width}x{height}"
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket=bucket)
        for path in sorted(input_dir.rglob("*.png")):
            client.put_object(Bucket=bucket, Key=f"in/{path.relative_to(input_dir).as_posix()}", Body=path.read_bytes())
        result["pipeline_s3_fps"] = measure_pipeline(config, f"s3://{bucket}/in", f"s3://{bucket}/out",
                                                     config.restorer, endpoint)["fps"]
    if config.naive:
        result["naive_fps"] = measure_naive(config, input_dir, workdir / f"naive-{width}")
        result["pipeline_over_naive"] = result["pipeline_fps"] / result["naive_fps"]
    result["pipeline_over_ceiling"] = result["pipeline_fps"] / min(result["ceiling_fps"], result["io_ceiling_fps"])
    for key in [k for k in result if k.endswith("_fps")]:
        result[key.replace("_fps", "_mp_per_s")] = result[key] * result["megapixels"]
    return result


def run_bench(config: BenchConfig) -> dict:
    """Every measurement for every frame size; top-level ratios are the worst over sizes."""
    if config.damage not in DAMAGE_KINDS:
        raise ValueError(f"damage: expected one of {', '.join(DAMAGE_KINDS)}, got {config.damage!r}")
    from .pipeline import start_ray

    s3 = _s3_endpoint() if config.s3 else None  # first: Ray's workers inherit the environment it sets
    start_ray()
    workdir = Path(tempfile.mkdtemp(prefix="restore-bench-"))
    try:
        sizes = [bench_size(config, h, w, workdir, s3[1] if s3 else None) for h, w in config.sizes]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if s3:
            s3[0].stop()
    primary = sizes[-1]
    summary = {
        "config": {**asdict(config), "sizes": [list(s) for s in config.sizes]},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor(),
                    "gpu": _gpu_name()},
        "date": time.strftime("%Y-%m-%d"),
        "sizes": sizes,
        "ceiling_fps": primary["ceiling_fps"],
        "io_ceiling_fps": primary["io_ceiling_fps"],
        "pipeline_fps": primary["pipeline_fps"],
        "naive_fps": primary.get("naive_fps"),
        "pipeline_over_ceiling": min(s["pipeline_over_ceiling"] for s in sizes),
        "pipeline_over_naive": primary.get("pipeline_over_naive"),
        "peak_rss_mb": {
            "driver": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "worker": max(s["worker_peak_rss_mb"] for s in sizes),
            "workers_total": max(s["workers_total_peak_rss_mb"] for s in sizes),
        },
    }
    return summary


def _gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def _timed_restore(restorer, pixels: np.ndarray, mask: np.ndarray) -> tuple[float, float | None]:
    """Seconds of one restore of the frame, after a warm-up, and the process's peak resident memory in MB over it:
    Linux's peak is reset first (/proc/self/clear_refs), so making the frame, and the frames before, do not count
    (None where it cannot be)."""
    restorer.restore_batch([pixels], [mask])  # warm-up
    try:
        Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak resident set size
        peak_kept = True
    except OSError:
        peak_kept = False
    started = time.perf_counter()
    restorer.restore_batch([pixels], [mask])
    seconds = time.perf_counter() - started
    if not peak_kept:
        return seconds, None
    return seconds, int(re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) / 1024


def _mask_with_fraction(rng: np.random.Generator, height: int, width: int, fraction: float) -> np.ndarray:
    """Dust-like square specks scattered over the frame until `fraction` of it is covered."""
    mask = np.zeros((height, width), dtype=bool)
    side = max(2, int(min(height, width) * 0.01))
    while mask.mean() < fraction:
        y, x = rng.integers(0, height - side), rng.integers(0, width - side)
        mask[y:y + side, x:x + side] = True
    return mask


def scaling(config: BenchConfig, sizes=(256, 512, 1024, 2048, 4096),
            fractions=(0.001, 0.01, 0.03, 0.1, 0.3), fraction_frame=(1556, 2048)) -> dict:
    """Bare-restorer seconds per frame against frame size (archive damage) and against damaged fraction, and the
    peak resident memory of a restore of each (`_timed_restore`): what a worker needs for such frames, the frame
    and the model included."""
    restorer = build_restorer(restorer_settings(config), threads=max(1, int(config.cpus)))
    rng = np.random.default_rng(config.seed)
    by_size = []
    for side in sorted(sizes):
        pixels, mask = archive_damage(rng, clean_scene(rng, side, side), ARCHIVE_KINDS)
        seconds, peak = _timed_restore(restorer, pixels, mask)
        by_size.append({"size": side, "masked_fraction": float(mask.mean()), "seconds_per_frame": seconds,
                        "peak_rss_mb": peak})
    height, width = fraction_frame
    clean = clean_scene(rng, height, width)
    by_fraction = []
    for fraction in fractions:
        mask = _mask_with_fraction(rng, height, width, fraction)
        seconds, peak = _timed_restore(restorer, clean, mask)
        by_fraction.append({"masked_fraction": float(mask.mean()), "seconds_per_frame": seconds, "peak_rss_mb": peak})
    return {"restorer": config.restorer, "by_size": by_size, "fraction_frame": f"{width}x{height}",
            "by_damaged_fraction": by_fraction}


def tiling_fidelity(config: BenchConfig, frames: int = 4, frame=(1556, 2048)) -> dict:
    """Hole PSNR and time of the shipped GAN run three ways, pooled over `frames` frames with archive damage: on boxes
    fitted to the damage (as jobs run it on a CPU), on the grid tiles that hold holes (as on a GPU), and over each
    whole frame (as a user's own loop would: fp32, no autocast): what tiling costs in quality, and saves or costs in
    time, on this machine."""
    restorer = build_restorer(restorer_settings(config, "gan"), threads=max(1, int(config.cpus)))
    jobs_use = "grid" if restorer.grid else "boxes"
    ways = ("boxes", "grid", "whole")

    def restore(way: str, pixels: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if way == "whole":
            return whole_frame(restorer.generator, pixels, mask)
        restorer.grid = way == "grid"
        return restorer(pixels, mask)

    rng = np.random.default_rng(config.seed)
    errors = dict.fromkeys(ways, 0.0)
    seconds = dict.fromkeys(ways, 0.0)
    calls = dict.fromkeys(ways, 0)  # generator calls: on a GPU each one costs its kernel launches, whatever its size
    counting = []
    restorer.generator.register_forward_pre_hook(lambda module, inputs: counting.append(1))
    holes = 0
    for index in range(frames):
        clean = clean_scene(rng, *frame)
        damaged, mask = archive_damage(rng, clean, ARCHIVE_KINDS)
        holes += int(mask.sum())
        for way in ways:
            if index == 0:
                restore(way, damaged, mask)  # untimed: a GPU's first call of each way pays its one-off start-up
            counting.clear()
            started = time.perf_counter()
            out = restore(way, damaged, mask)
            seconds[way] += time.perf_counter() - started
            calls[way] += len(counting)
            errors[way] += float(((out.astype(np.float64) - clean)[mask] ** 2).sum())
    db = {way: 10 * float(np.log10(255 ** 2 * 3 * holes / errors[way])) for way in errors}  # 3 channels
    return {"frame": f"{frame[1]}x{frame[0]}", "frames": frames, "jobs_use": jobs_use,
            **{f"psnr_hole_{way}": db[way] for way in ways},
            "boxes_minus_whole_db": db["boxes"] - db["whole"], "grid_minus_whole_db": db["grid"] - db["whole"],
            **{f"seconds_per_frame_{way}": seconds[way] / frames for way in ways},
            **{f"generator_calls_per_frame_{way}": calls[way] / frames for way in ways}}


def large_hole_mesh(config: BenchConfig) -> float:
    """How strongly the GAN paints a periodic mesh of 8-pixel cells (its decoder's stride) deep in large holes, where
    an eye finds it at once on a blotch or tear: the spectral peak of that period in the fill's detail, over the
    spectrum's median, averaged over six square holes (80 and 100 px deep) in grainy gradients, as one grain draw
    moves it by 2x. Lower is better; compares weights files (`config.weights`)."""
    import cv2

    restorer = build_restorer(restorer_settings(config, "gan"), threads=max(1, int(config.cpus)))
    y, x = np.mgrid[0:320, 0:320]
    smooth = np.dstack([120 + 50 * np.sin(x / 17.0 + y / 29.0), 100 + 40 * np.cos(y / 23.0),
                        90 + 30 * np.sin(x / 31.0)])
    peaks = []
    for seed in (3, 4, 5):
        scene = np.clip(smooth + np.random.default_rng(seed).normal(0, 6, (320, 320, 1)), 0, 255).astype(np.uint8)
        for side in (160, 200):
            start = (320 - side) // 2
            mask = np.zeros((320, 320), dtype=bool)
            mask[start:start + side, start:start + side] = True
            fill = restorer(scene, mask)[start + 10:start + side - 10, start + 10:start + side - 10]
            detail = fill.astype(float).mean(axis=2)
            detail -= cv2.blur(detail, (9, 9))
            spectrum = np.abs(np.fft.fft2(detail))
            cell = round(detail.shape[0] / 8)  # the frequency of an 8-pixel period
            peaks.append(max(spectrum[cell, 0], spectrum[0, cell], spectrum[cell, cell], spectrum[cell, -cell])
                         / np.median(spectrum))
    return float(np.mean(peaks))


def model_floor(config: BenchConfig, tile: int = 512) -> dict:
    """The generator's arithmetic per megapixel and this machine's measured conv throughput: a floor on time/MP."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    restorer = build_restorer(restorer_settings(config, "gan"), threads=max(1, int(config.cpus)))
    generator = restorer.generator
    device = next(generator.parameters()).device
    finish = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)  # kernels run asynchronously
    image = torch.rand(1, 3, tile, tile, device=device)
    hole = torch.zeros(1, 1, tile, tile, dtype=torch.bool, device=device)
    hole[..., tile // 4: tile // 2, tile // 4: tile // 2] = True
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        generator(image, hole)
    flops_per_mp = counter.get_total_flops() / (tile * tile / 1e6)
    conv = torch.nn.Conv2d(128, 128, 3, padding=1).to(device)
    x = torch.rand(1, 128, 128, 128, device=device)
    with torch.inference_mode():
        conv(x)
        finish()
        started = time.perf_counter()
        for _ in range(5):
            conv(x)
        finish()
        seconds = (time.perf_counter() - started) / 5
    conv_flops = 2 * 128 * 128 * 9 * 128 * 128  # multiply-adds of one 3x3 conv pass, counted as 2 FLOPs
    throughput = conv_flops / seconds
    with torch.inference_mode():
        generator(image, hole)
        finish()
        started = time.perf_counter()
        generator(image, hole)
        finish()
        measured = (time.perf_counter() - started) / (tile * tile / 1e6)
    return {"gflops_per_mp": flops_per_mp / 1e9, "conv_gflops_per_s": throughput / 1e9,
            "floor_seconds_per_mp": flops_per_mp / throughput, "generator_seconds_per_mp": measured,
            "generator_over_floor": measured / (flops_per_mp / throughput), "threads": torch.get_num_threads()}


def train_speed(config_path: str, steps: int = 16) -> dict:
    """Seconds per `restore train` step of a training config in each precision, on the config's device, batch, crop
    sizes and threads: whether bf16 pays on this machine. Also the seconds one single-threaded process takes to
    prepare a batch (crops, masks, classical prefill), as a loader process does: how many `loader_workers` keep the
    device fed. Crops come from synthetic scenes (no data needed). A step's time does not depend on the pixels, so
    the timed steps cycle through one prepared batch per entry of `crop_sizes`, the config's own mix of sizes:
    preparing a batch per step would take a GPU bench minutes. Each precision first runs one untimed step per
    crop size (one-off set-up: kernels, thread pools); 16 timed steps hold one lazy R1 step at the usual `r1_every`
    of 16, as training does."""
    import cv2
    import torch

    from .train import PRECISIONS, new_state, load_train_config, prepare_batch, train_step

    if steps < 1:
        raise ValueError(f"--steps: time at least one step, got {steps}")
    base = load_train_config(config_path, data="", out_dir="")
    device = torch.device(base.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True  # as `restore train` sets it
    finish = torch.cuda.synchronize if cuda else (lambda: None)
    rng = np.random.default_rng(0)
    scenes = [clean_scene(rng, 384, 384) for _ in range(4)]
    cv2_threads = cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)  # as in a loader process
    started = time.perf_counter()
    pool = [prepare_batch(rng, scenes, replace(base, crop_sizes=[size])) for size in base.crop_sizes]
    prepare_seconds = (time.perf_counter() - started) / len(pool)
    cv2.setNumThreads(cv2_threads)
    torch.set_num_threads(base.threads)
    warm_ups = list({batch[0].shape[-1]: batch for batch in pool}.values())  # one per distinct size
    result = {"config": str(config_path), "device": _gpu_name() if cuda else f"cpu, {base.threads} threads",
              "batch_size": base.batch_size, "crop_sizes": base.crop_sizes, "steps": steps,
              "adversarial": base.loss.adversarial, "seconds_per_step": {},
              "prepare_seconds_per_batch": prepare_seconds}
    for precision in PRECISIONS:
        config = replace(base, precision=precision, adv_start_step=0)
        state = new_state(config, rank=0, device=device, fresh=False)  # fresh weights: speed is all we need
        for batch in warm_ups:
            train_step(state, config, batch, device)
        state.step = 0  # the timed steps count from 0, so both precisions run R1 on the same ones
        finish()
        started = time.perf_counter()
        for step in range(steps):
            train_step(state, config, pool[step % len(pool)], device)
        finish()
        result["seconds_per_step"][precision] = (time.perf_counter() - started) / steps
    seconds = result["seconds_per_step"]
    result["bf16_speed_up"] = seconds["fp32"] / seconds["bf16"]
    result["loader_workers_to_keep_up"] = math.ceil(prepare_seconds / min(seconds.values()))
    return result


def planning(frames: int = 100_000, masked_every: int = 10, part_rows: int = 10_000) -> dict:
    """A nightly rerun with nothing to do over `frames` restored frames in a local folder, one in `masked_every`
    with a given mask: seconds to list the input, and to plan (listing, manifests, history, per-frame checks).
    That is a run's fixed cost before any frame is read. The manifests are parts of `part_rows` rows each."""
    from .manifest import ManifestWriter
    from .pipeline import mask_key_for, open_job, plan_job

    with tempfile.TemporaryDirectory() as tmp:
        spec = parse_spec({"name": "plan", "input": f"{tmp}/in", "output": f"{tmp}/out", "restorer": {"name": "telea"}})
        keys = [f"reel{index // 1000:04d}/f{index:07d}.png" for index in range(frames)]
        masked = {key: mask_key_for(spec.masks.pattern, key) for key in keys[::masked_every]}
        for key in keys + list(masked.values()):
            path = Path(tmp, "in", key)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"")  # listing and planning read names, sizes and times only
        context = open_job(spec)
        started = time.perf_counter()
        etags = {info.key: info.etag for info in context.input_storage.list(spec.include)}
        listing = time.perf_counter() - started
        rows = [{"job": spec.name, "run_id": context.run_id, "input_key": key, "input_etag": etags[key],
                 "config_hash": context.config_hash, "status": "ok", "restorer": "telea",
                 "mask_etag": etags[masked[key]] if key in masked else ""} for key in keys]
        writer = ManifestWriter(context.output_storage, spec.name, context.run_id)
        for start in range(0, len(rows), part_rows):
            writer.commit(rows[start:start + part_rows])
        context = open_job(spec)  # the next night's run
        started = time.perf_counter()
        plan = plan_job(context)
        seconds = time.perf_counter() - started
    return {"frames": frames, "masked_every": masked_every, "manifest_parts": writer.parts_written,
            "listing_seconds": round(listing, 3), "plan_seconds": round(seconds, 3),
            "frames_planned_per_second": round(frames / seconds), "to_process": plan.frames,
            "already_done": plan.already_done, "machine": platform.machine(), "cpus": os.cpu_count()}
