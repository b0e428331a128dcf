"""Inject every fault of the reliability suite again, count frames lost and duplicated, write RELIABILITY.md.

    .venv/bin/python tests/reliability_report.py                       # 5 SIGKILL cycles per storage, no load
    .venv/bin/python tests/reliability_report.py --cycles 10 --load    # more cycles, plus the 200/2,000-frame load

It starts its own local Ray (2 CPUs) and moto S3 server on loopback; the scenarios are those of
tests/test_reliability.py and tests/test_hostile_inputs.py (see tests/faults.py). A frame is *lost* when its newest
manifest row is not `ok` once the job has been resumed to the end, *duplicated* when it has `ok` rows in two runs
for the same input ETag and config.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import conftest  # noqa: E402,F401 - sets the fake AWS credentials before Ray starts
import faults  # noqa: E402

DOC = """# Reliability

What a job survives, measured by injecting each fault for real. Regenerate this file with:

    {command}

Machine: {machine}. Date: {date}. Restorer: Telea (the faults, not the model, are under test).

A frame is **lost** when, after the job was resumed to the end, its newest manifest row is not `ok`; it is
**duplicated** when it has `ok` rows in two runs for the same input ETag and config hash. After every fault the
outputs are also compared byte for byte (sha256) with an uninterrupted run of the same job where one was made,
every manifest part is read back with pyarrow, and the output is searched for staged files a killed writer left.

| fault | storage | injected | frames | lost | duplicated | outcome |
|---|---|---:|---:|---:|---:|---|
{rows}

{notes}
## Load

{load}

## How each fault is injected

- **Driver SIGKILL at a phase** (`tests/faults.py drive`): `restore run` runs in a harness process that kills itself
  with SIGKILL while listing the input (after the N-th object), just before the N-th manifest commit (its outputs
  exist, its rows do not), or with half of the N-th manifest part staged; for *output-write* a Ray worker stages
  half of the N-th output file and then SIGKILLs the driver. On S3 a proxy in front of moto SIGKILLs the driver at
  the N-th input listing, input read (mid-restoration), output upload or manifest-part upload, and drops that
  request unanswered. N is drawn from a seeded RNG; *random* kills after a seeded random delay. Each killed run is
  resumed by the next cycle (which is killed in turn), then a last run goes to the end. The harness gives the
  job's lease a 6 s TTL (120 s by default) and waits for the dead run's lease to lapse, as a scheduler rerunning
  the job would; it also waits for Ray to reap the dead driver's workers.
- **Restorer actor SIGKILLed mid-batch**: the actor's process, found in the GCS actor table by class name
  (`ray.util.state` needs the dashboard, which `ray[data]` does not install), is killed while frames flow.
- **Ray node removed**: a 3-node `ray.cluster_utils.Cluster` (a head without CPUs + two 2-CPU workers) in a
  subprocess; the node running the restorer actor is removed (`allow_graceful=False`) after two frames.
- **S3 transient faults**: a threaded HTTP proxy on loopback answers a seeded 15% of requests with 500
  InternalError, 503 ServiceUnavailable or 503 SlowDown, 30% of them *after* forwarding (the answer is lost, the
  write happened). boto3's standard retry mode (12 attempts) is what must absorb them.
- **S3 outage**: moto's server stopped for 3 s once three frames are done, then started again on the same port.
- **S3 permanent fault**: the proxy answers 403 AccessDenied to everything once three outputs are stored; the run
  must stop with a clear error and a resume (fault gone) must finish the rest.
- **Hostile inputs**: the corpus of tests/test_hostile_inputs.py (truncated PNG/JPEG/TIFF, zero bytes, text, a
  100000x100000 header bomb, a zTXt bomb, over-limit dimensions, 1x1, CMYK, palette, 16-bit grey, 16-bit grey+alpha,
  16-bit RGB TIFF, RGBA, LA, 1-bit, animated GIF, EXIF-rotated JPEG, JPEG named .png, wrong-size and garbage masks,
  unicode, spaces, URL-special characters, 24-deep keys, backslash, `..`, leading `/` and `.` keys) in one S3 job:
  each frame restored with every pixel outside its mask unchanged, or a `failed` row whose reason names the problem.

## Where it is tested

`tests/test_reliability.py` (driver SIGKILL at each phase on local storage, 5 cycles, and on S3, 3 cycles; actor
and node loss; S3 5xx, outage, AccessDenied; the lost answer of a conditional create; an object body cut off
mid-transfer (fetched again, up to 3 times); the load soak, opt-in with `RESTORE_SOAK=1`),
`tests/test_hostile_inputs.py` (the corpus on S3 and in a read-only local folder with a symlink trap in the output;
unsafe keys refused by every storage operation; credentials grepped for in CLI output, run and status JSON,
manifests, the HTML report and previews, and Ray's session logs, including under S3 errors whose bodies echo the
access key id). Weights are loaded with `torch.load(weights_only=True)` and checked against their tensor checksum:
tampered, garbage, foreign-config and pickled-code files are refused in `tests/test_models.py`
(`test_tampered_or_garbage_weights_are_refused`, `test_weights_with_a_foreign_config_are_refused`,
`test_pickled_code_is_refused`).

## Found by this suite and fixed

- `test_two_inputs_never_share_an_output`: `scan.jpg` (JPEG, written as PNG) and `scan.jpg.png` both mapped to the
  output `scan.jpg.png`. Planning now fails the renamed one with the reason instead of letting it overwrite,
  also when `scan.jpg.png` was restored in an earlier run; a file whose content its name does not say (a PNG named
  `scan.tif`, written as `scan.tif.png`) is refused when it is written.
- `test_tampered_weights_are_refused_before_any_work`: an unpinned, tampered weights file used to fail only inside
  the restorer actor; the driver now loads the weights once before any work and refuses them with a message.
- `test_an_undecodable_mask_is_named_in_the_failure_reason`: a garbage mask's failure now names the mask.
- `test_a_job_name_that_is_a_path_component_is_refused`: `name: ".."` is refused when the spec is validated.
- `test_conditional_create_whose_answer_was_lost_still_counts_as_created`: an S3 conditional create whose answer
  was lost is now recognised as ours on retry.
- `test_s3_server_stopped_and_restarted_mid_run`: boto3's standard retry mode backs off from 50 ms, so 8 attempts
  waited 3.2 s in all on average (6.35 s at most) and a frame read during the 3 s outage could fail; 12 attempts
  wait 33 s on average (66 s at most).
- `test_an_object_whose_body_breaks_off_mid_transfer_is_fetched_again`: a read whose connection dropped inside the
  object's body failed the frame (boto3 retries requests, not bodies); the object is now fetched again.
"""


def machine() -> str:
    memory = ""
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f", {kib / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()}-core CPU{memory}, Python {platform.python_version()}"


def hostile(client, bucket: str, proxy) -> faults.Outcome:
    from test_hostile_inputs import check_rows, corpus_objects, hostile_corpus, hostile_job

    from restore.manifest import read_manifests
    from restore.storage import open_storage

    cases = hostile_corpus()
    for key, data in corpus_objects(cases).items():
        client.put_object(Bucket=bucket, Key="in/" + key, Body=data)
    before = {o["Key"]: o["ETag"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]}
    result = faults.run_in_process(hostile_job(f"s3://{bucket}/in", f"s3://{bucket}/out", endpoint_url=proxy.url))
    output = open_storage(f"s3://{bucket}/out", proxy.url)
    rows = {row["input_key"]: row for row in read_manifests(output, "hostile").to_pylist()}
    problems = check_rows(cases, rows, output.get)
    after = {o["Key"]: o["ETag"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]}
    untouched = {k: v for k, v in after.items() if k.startswith("in/")} == before
    outside = [k for k in after if k not in before and not k.startswith("out/")]
    lost = len([case for case in cases if case.key not in rows])
    ok = not problems and untouched and not outside and not lost
    counts = result.counts
    outcome = (f"{counts.get('ok', 0)} restored (pixels outside masks unchanged), {counts.get('failed', 0)} failed "
               "with their reason; input untouched, nothing written outside the output" if ok
               else f"FAILED: {problems} untouched={untouched} outside={outside}")
    return faults.Outcome(f"hostile inputs ({len({c.kind for c in cases})} kinds)", "S3 (moto)", len(cases),
                          len(cases), lost, 0, outcome, ok)


def phases_for(base: tuple[str, ...], cycles: int) -> list[str]:
    pool = list(base) + ["random"]
    return [pool[i % len(pool)] for i in range(cycles)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=5, help="driver SIGKILL cycles per storage (default 5)")
    parser.add_argument("--load", action="store_true", help="also run the 200- and 2,000-frame load jobs")
    parser.add_argument("--out", default=str(HERE.parent / "RELIABILITY.md"))
    args = parser.parse_args()
    command = "python tests/reliability_report.py" + (f" --cycles {args.cycles}" if args.cycles != 5 else "") + (
        " --load" if args.load else "")

    import boto3
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    address = ray.get_runtime_context().gcs_address
    server = faults.MotoServer().start()
    proxy = faults.FaultProxy(server.url, seed=7).start()
    client = boto3.client("s3", endpoint_url=server.url)
    outcomes: list[faults.Outcome] = []
    with tempfile.TemporaryDirectory(prefix="reliability-") as scratch:
        work = Path(scratch)

        def bucket(name: str) -> str:
            client.create_bucket(Bucket=name)
            return name

        def record(outcome: faults.Outcome) -> None:
            outcome.outcome = outcome.outcome.replace(scratch, "<tmp>")
            outcomes.append(outcome)
            print(f"{'ok ' if outcome.ok else 'BAD'} {outcome.fault}: {outcome.outcome}", file=sys.stderr, flush=True)

        record(faults.crash_cycles(work / "crash-local", address, phases_for(faults.LOCAL_PHASES, args.cycles),
                                   frames=max(16, 4 * args.cycles), seed=11))
        record(faults.crash_cycles(work / "crash-s3", address, phases_for(faults.S3_PHASES, args.cycles),
                                   frames=max(16, 4 * args.cycles), seed=12, s3=(client, bucket("crash"), proxy)))
        record(faults.actor_kill(work / "actor", frames=24))
        record(faults.node_loss(work / "node", frames=40))
        record(faults.flaky_s3(client, bucket("flaky"), proxy, frames=16))
        record(faults.s3_restart(client, bucket("restart"), server, frames=16))
        record(faults.s3_denied(client, bucket("denied"), proxy, frames=16, after=4))
        record(hostile(client, bucket("hostile"), proxy))
        load_text = "Not measured in this run (add `--load`)."
        if args.load:
            figures = {n: faults.load_figures(work / f"load-{n}", n) for n in (200, 2000)}
            load_text = load_table(figures)
    proxy.stop()
    server.stop()
    ray.shutdown()

    rows = "\n".join(f"| {o.fault} | {o.storage} | {o.injected} | {o.frames} | {o.lost} | {o.duplicated} | "
                     f"{o.outcome.replace('|', '/')} |" for o in outcomes)
    notes = "".join(f"- {o.fault}, {o.storage}: " + "; ".join(o.notes) + "\n" for o in outcomes if o.notes and o.ok)
    notes = ("Kill points of the SIGKILL cycles (phase#N: the N-th event of that phase; staged files are the evidence "
             "a kill landed mid-write, removed by the next run):\n\n" + notes) if notes else ""
    Path(args.out).write_text(DOC.format(command=command, machine=machine(), date=date.today().isoformat(),
                                         rows=rows, notes=notes, load=load_text))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0 if all(o.ok for o in outcomes) else 1


def load_table(figures: dict[int, dict]) -> str:
    lines = ["One local job over small frames (32x32 RGB PNG, each with a mask), Telea, batch 8, manifest parts of",
             "64 rows, 2-CPU local Ray. Peak RSS sampled every 0.25 s (the driver's is its high-water mark).", "",
             "| frames | result | seconds | frames/s | driver peak RSS | largest worker peak RSS | all workers peak RSS |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    for n, f in sorted(figures.items()):
        result = ", ".join(f"{v} {k}" for k, v in f["counts"].items()) + f", {f['lost']} lost, {f['duplicated']} duplicated"
        lines.append(f"| {n:,} | {result} | {f['seconds']} | {f['frames_per_second']} | {f['driver_peak_rss_mb']:.0f} MB "
                     f"| {f['worker_peak_rss_mb']:.0f} MB | {f['workers_total_peak_rss_mb']:.0f} MB |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
