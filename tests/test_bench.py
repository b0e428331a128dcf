import json
import math

from restore.cli import main as restore_main


def test_bench_reports_every_measurement_with_sane_values(tmp_path, ray_session):
    out = tmp_path / "bench.json"
    code = restore_main(["bench", "--json", str(out), "--frames", "4", "--size", "96x64", "--restorer", "telea",
                         "--batch-size", "2", "--cpus", "1"])
    assert code == 0
    result = json.loads(out.read_text())
    for key in ("ceiling_fps", "io_ceiling_fps", "pipeline_fps", "naive_fps", "pipeline_over_ceiling",
                "pipeline_over_naive", "peak_rss_mb"):
        assert result[key], key
    size = result["sizes"][0]
    assert (size["width"], size["height"]) == (96, 64)
    assert size["pipeline_s3_fps"] > 0 and size["pipeline_mp_per_s"] > 0
    assert 0 < size["masked_fraction"] < 0.5
    assert result["peak_rss_mb"]["driver"] > 10 and result["peak_rss_mb"]["worker"] > 10
    assert result["pipeline_over_ceiling"] == size["pipeline_fps"] / min(size["ceiling_fps"], size["io_ceiling_fps"])


def test_scaling_and_floor_report_time_per_frame_and_arithmetic(tmp_path):
    import torch

    from restore.bench import BenchConfig, model_floor, scaling, tiling_fidelity
    from restore.models.generator import Generator, GeneratorConfig
    from restore.models.weights import save_generator

    weights = tmp_path / "tiny.pt"
    save_generator(Generator(GeneratorConfig(width=8, n_down=2, n_blocks=1)), weights)
    config = BenchConfig(restorer="gan", weights=str(weights))
    curve = scaling(config, sizes=(64, 128), fractions=(0.001, 0.05), fraction_frame=(96, 128))
    assert [row["size"] for row in curve["by_size"]] == [64, 128]
    assert all(row["seconds_per_frame"] > 0 for row in curve["by_size"] + curve["by_damaged_fraction"])
    peaks = [row["peak_rss_mb"] for row in curve["by_size"] + curve["by_damaged_fraction"]]  # a worker's need
    assert all(50 < peak < 100_000 for peak in peaks)  # megabytes (a Python with torch holds more than 50), not KiB
    fractions = [row["masked_fraction"] for row in curve["by_damaged_fraction"]]
    assert fractions[0] < fractions[1]
    floor = model_floor(config, tile=64)
    assert floor["gflops_per_mp"] > 0 and floor["conv_gflops_per_s"] > 0 and floor["generator_over_floor"] > 0
    fidelity = tiling_fidelity(config, frames=1, frame=(96, 128))
    assert fidelity["frame"] == "128x96" and fidelity["jobs_use"] == ("grid" if torch.cuda.is_available() else "boxes")
    assert all(fidelity[f"seconds_per_frame_{way}"] > 0 for way in ("boxes", "grid", "whole"))
    assert fidelity["generator_calls_per_frame_whole"] == 1 and fidelity["generator_calls_per_frame_grid"] >= 1
    assert fidelity["boxes_minus_whole_db"] == fidelity["psnr_hole_boxes"] - fidelity["psnr_hole_whole"]
    assert fidelity["grid_minus_whole_db"] == fidelity["psnr_hole_grid"] - fidelity["psnr_hole_whole"]
    assert 0 < fidelity["psnr_hole_whole"] < 100


def test_whole_frame_gives_a_refiner_its_classical_prefill_as_the_restorer_does():
    import numpy as np

    from restore.bench import whole_frame
    from restore.models.generator import Generator, GeneratorConfig

    generator = Generator(GeneratorConfig(width=8, n_down=2, n_blocks=1, prefill="telea")).eval()
    pixels = np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    mask = np.zeros((64, 80), dtype=bool)
    mask[20:30, 10:40] = True
    other = pixels.copy()
    other[mask] = 255 - other[mask]  # other damage, the same holes
    restored = whole_frame(generator, pixels, mask)
    assert np.array_equal(restored, whole_frame(generator, other, mask))
    assert np.array_equal(restored[~mask], pixels[~mask])


def test_bench_train_times_a_config_in_both_precisions(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(f"data: {tmp_path / 'nowhere'}\nout_dir: {tmp_path / 'nowhere'}\n"
                      "generator: {width: 8, n_down: 2, n_blocks: 1, prefill: telea}\n"
                      "discriminator: {width: 8, n_layers: 2}\ncrop_sizes: [32, 48]\nbatch_size: 2\nthreads: 1\n"
                      "adv_start_step: 100\n")
    out = tmp_path / "train.json"
    assert restore_main(["bench", "--train", str(config), "--steps", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    seconds = result["seconds_per_step"]
    assert set(seconds) == {"fp32", "bf16"} and all(value > 0 for value in seconds.values())
    assert result["bf16_speed_up"] == seconds["fp32"] / seconds["bf16"] and result["steps"] == 2
    assert result["prepare_seconds_per_batch"] > 0  # one loader process's time for a batch, prefill included
    assert result["loader_workers_to_keep_up"] == math.ceil(result["prepare_seconds_per_batch"] / min(seconds.values()))
    assert result["batch_size"] == 2 and result["crop_sizes"] == [32, 48] and result["adversarial"] == "non_saturating"
    assert result["device"] == "cpu, 1 threads"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["tiny.yaml", "train.json"]  # no checkpoint written
    assert restore_main(["bench", "--train", str(config), "--steps", "0"]) == 2


def test_planning_a_rerun_with_nothing_to_do_finds_nothing_to_do():
    from restore.bench import planning

    result = planning(frames=300, masked_every=10, part_rows=100)
    assert (result["to_process"], result["already_done"], result["manifest_parts"]) == (0, 300, 3)
