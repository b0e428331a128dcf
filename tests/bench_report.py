"""Benchmark of the HTML report over a large job: build time, page size, and how fast Chromium shows the first page.

    python tests/bench_report.py --frames 10000 [--keep DIR]

Not collected by pytest (no test_ prefix) and asserts nothing. It writes N small distinct frames with masks, their
restored outputs and manifest rows without running Ray (setup, not timed; one frame in 100 failed, one in 10 with
nothing masked), then times the first build (every picture made, as for an output an earlier version restored:
runs make each frame's thumbnails as they write it, and no run made these), a rebuild (every picture kept, the cost
after each nightly run), and Chromium opening the page (the page's own `data-first-page-ms`, navigation start to
the first 100 rows rendered, and the whole headless run against a blank page's).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import re
import statistics
import subprocess
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image

from restore.frames import encode_mask
from restore.manifest import ManifestWriter, new_run_id
from restore.report import rebuild_report, write_report
from restore.spec import parse_spec
from restore.storage import open_storage

CHROMIUM = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def make_job(root: Path, frames: int) -> None:
    """Inputs, outputs, masks and manifest rows as a run of `frames` frames would leave them."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:192, 0:256]
    base = np.stack([x, y + 40, (x + y) // 2], axis=2).astype(np.uint8)
    def put(key: str, data: bytes) -> None:  # plain writes: the storage layer's fsyncs would make setup slow
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(data)

    run_id = new_run_id()
    writer = ManifestWriter(open_storage(str(root / "out")), "bench", run_id)
    rows = []
    for index in range(frames):
        key = f"reel-{index // 1000:02d}/frame_{index:06d}.png"
        original = base.copy()
        original[rng.integers(0, 192, 40), rng.integers(0, 256, 40)] = 255  # dust, different in every frame
        data = png(original)
        put(f"in/{key}", data)
        row = {"job": "bench", "run_id": run_id, "input_key": key, "input_size": len(data), "input_etag": "e",
               "input_sha256": hashlib.sha256(data).hexdigest(), "restorer": "telea", "config_hash": "0" * 16,
               "mask_source": "given", "masked_fraction": 0.0, "status": "ok", "width": 256, "height": 192,
               "bit_depth": 8, "read_seconds": 0.01, "restore_seconds": 0.02, "write_seconds": 0.01,
               "worker": "bench:1", "finished_at": datetime.now(timezone.utc)}
        if index % 100 == 99:
            row.update(status="failed", error="corrupt or truncated PNG: image file is truncated")
        else:
            mask = np.zeros((192, 256), dtype=bool)
            if index % 10:
                mask[20:40 + index % 50, 100:104] = True
                row.update(mask_key=f"_masks/{key}.png", masked_fraction=float(mask.mean()))
                put(f"out/{row['mask_key']}", encode_mask(mask))
            restored = original.copy()
            restored[mask] = 128
            out = png(restored)
            put(f"out/{key}", out)
            row.update(output_key=key, output_sha256=hashlib.sha256(out).hexdigest(), output_format="png")
        rows.append(row)
        if len(rows) == 64:
            writer.commit(rows)
            rows = []
    writer.commit(rows)


def open_in_chromium(url: str, profile: Path) -> tuple[float, int | None]:
    """Seconds for the whole headless run, and the page's own first-page time in ms (None for a blank page)."""
    started = time.perf_counter()
    dom = subprocess.run([*CHROMIUM, f"--user-data-dir={profile}", "--window-size=1280,1600", "--dump-dom", url],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    seconds = time.perf_counter() - started
    found = re.search(r'data-first-page-ms="(\d+)"', dom)
    return seconds, int(found.group(1)) if found else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5, help="Chromium openings to take the median of")
    parser.add_argument("--keep", help="build in this folder and keep it, instead of a temporary one")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.keep or scratch)
        started = time.perf_counter()
        make_job(root, args.frames)
        print(f"setup: {args.frames} frames written in {time.perf_counter() - started:.1f} s")
        spec = parse_spec({"name": "bench", "input": str(root / "in"), "output": str(root / "out")})

        started = time.perf_counter()
        first = write_report(spec)
        print(f"first build: {time.perf_counter() - started:.1f} s ({first.pictures_made} picture sets made)")
        started = time.perf_counter()
        again = rebuild_report(spec.output)
        print(f"rebuild: {time.perf_counter() - started:.2f} s ({again.pictures_kept} picture sets kept)")
        page = root / "out" / "report.html"
        print(f"report.html: {page.stat().st_size / 1e6:.2f} MB")

        blank = root / "blank.html"
        blank.write_text("<!doctype html><title>blank</title>")
        profile = root / "chromium-profile"
        runs = [open_in_chromium(page.as_uri(), profile) for _ in range(args.repeat)]
        blanks = [open_in_chromium(blank.as_uri(), profile)[0] for _ in range(args.repeat)]
        print(f"first page rendered (in page, navigation start to 100 rows): "
              f"median {statistics.median(ms for _, ms in runs)} ms of {args.repeat}")
        print(f"headless run: median {statistics.median(s for s, _ in runs):.2f} s, "
              f"blank page {statistics.median(blanks):.2f} s")


if __name__ == "__main__":
    main()
