"""The `restore` command: parses arguments, calls the package and turns its results into lines, JSON and exit
codes; the work itself is done in the package."""
from __future__ import annotations

import argparse
import io
import json
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

from . import __version__
from .wording import plural, tally

EXIT_OK, EXIT_FRAMES_FAILED, EXIT_ERROR = 0, 1, 2
EXIT_INTERRUPTED = 130  # the shell's code for Ctrl-C
EXIT_BROKEN_PIPE = 141  # the shell's code for a command whose reader closed the pipe (SIGPIPE)
DEMO_SPEC = "jobs/demo.yaml"  # in the repository's folder


def _write_json(path: str | None, payload: dict) -> None:
    if path:
        Path(path).write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


class Progress:
    """Frames done / total, failures, rate and ETA: one live terminal line, a line every few seconds when not a
    terminal, or one JSON object per line for scripts (`as_json`)."""

    def __init__(self, stream=None, every: float = 5.0, as_json: bool = False):
        self.stream, self.every, self.as_json = stream or sys.stderr, every, as_json
        self.started = self.last = time.monotonic()
        self.live = self.stream.isatty() and not as_json

    def __call__(self, done: int, total: int, failed: int) -> None:
        now = time.monotonic()
        if not self.live and now - self.last < self.every and done < total:
            return
        self.last = now
        rate = done / max(now - self.started, 1e-9)
        eta = (total - done) / rate if rate > 0 else None
        if self.as_json:
            line = json.dumps({"done": done, "total": total, "failed": failed, "frames_per_second": round(rate, 3),
                               "eta_seconds": None if eta is None else round(eta, 1)})
        else:
            line = (f"{done}/{total} {plural(total, 'frame')}, {failed} failed, {rate:.2f} frames/s, "
                    f"ETA {eta or 0:.0f} s")
        self.stream.write(("\r" + line + " " * 8) if self.live else line + "\n")
        if self.live and done == total:
            self.stream.write("\n")
        self.stream.flush()


def cmd_run(args) -> int:
    from .manifest import WITHDRAWN
    from .pipeline import frame_order, prepare, run, run_summary
    from .report import write_report
    from .spec import load_spec

    spec = load_spec(args.spec)
    if args.dry_run:
        from .lease import run_in_progress

        context, plan = prepare(spec, repair=args.repair)
        running = run_in_progress(context.output_storage, spec.name)
        summary = {"job": spec.name, "in_progress": running, "listed": plan.listed, "already_done": plan.already_done,
                   "orphan_masks": plan.orphan_masks, "misformatted_masks": plan.misformatted_masks,
                   "to_process": plan.frames, "given_up": plan.given_up, "held": plan.held,
                   "repairing": plan.repairing,
                   "withdrawn": plan.withdrawn, "waiting_in_archive": [frame["input_key"] for frame in plan.archived],
                   "bytes_to_read": plan.bytes_to_read,
                   # in the order a person reads a sequence (shot_2 before shot_10); a video's chunks: once
                   "keys": sorted(dict.fromkeys(task["input_key"] for task in plan.tasks), key=frame_order)}
        print(f"job {spec.name}: {plan.listed} {plural(plan.listed, 'frame')} listed, {plan.already_done} "
              f"already done, {summary['to_process']} would be processed ({plan.bytes_to_read / 1e6:.1f} MB to read)"
              + (f", {len(plan.repairing)} of them to repair" if args.repair else "")
              + (f"; {len(plan.given_up)} left failed after max_attempts (a run exits 1 for them)"
                 if plan.given_up else "")
              + (f"; {_held(plan.held)}" if plan.held else "")
              + (f"; {len(plan.orphan_masks)} {plural(len(plan.orphan_masks), 'file')} in mask folders left alone: "
                 "no frame's mask (their frames are gone, or left out by include or exclude)"
                 if plan.orphan_masks else "")
              + (f"; {len(plan.withdrawn)} {plural(len(plan.withdrawn), 'frame')} no longer among the job's frames "
                 f"would be closed ({WITHDRAWN})" if plan.withdrawn else "")
              + (f"; waiting in archival storage: {len(plan.archived)} ({plan.being_restored} being restored), not "
                 "read" if plan.archived else "")
              + (f"; {len(plan.archived) - plan.being_restored} would be asked back (archive_restore)"
                 if spec.archive_restore and len(plan.archived) > plan.being_restored else ""))
        if plan.misformatted_masks:
            print(_misformatted(spec, plan.misformatted_masks))
        for key in summary["keys"][: args.show]:
            print(f"  {printable(key)}")
        for task in [task for task in plan.tasks if task.get("plan_error")][: args.show]:
            print(f"  would fail {printable(task['input_key'])}: {printable(task['plan_error'])}")
        if running:
            print(f"  a run of this job is in progress (lease {running}): a run now would be refused")
        _write_json(args.json, summary)
        return EXIT_OK
    if not args.quiet:
        print(f"job {spec.name}: planning (restorer {spec.restorer.name}, masks {spec.masks.source})", file=sys.stderr)
    progress = Progress(as_json=True) if args.progress_json else None if args.quiet else Progress()
    context, plan, result = run(spec, progress=progress, repair=args.repair)
    counts = result.counts
    summary = {**run_summary(context, plan, result),
               "manifest": f"{spec.output.rstrip('/')}/{result.manifest_prefix}"}
    if args.repair:
        repaired = len(plan.repairing)
        print(f"job {spec.name}: {repaired} {plural(repaired, 'frame')} restored again after failing verification")
    given_up = (f" ({len(plan.given_up)} left failed after {spec.max_attempts} "
                f"{plural(spec.max_attempts, 'attempt')})" if plan.given_up else "")
    given_up += f" ({_held(plan.held)})" if plan.held else ""
    if plan.misformatted_masks:
        print(_misformatted(spec, plan.misformatted_masks))
    if plan.withdrawn:
        withdrawn = len(plan.withdrawn)
        print(f"job {spec.name}: closed {withdrawn} {plural(withdrawn, 'frame')} no longer among the job's frames "
              f"({WITHDRAWN} in the manifest): failed or skipped ones whose original is gone from the input or left "
              f"out by include or exclude, and any past the end of a video replaced by a shorter one")
    if plan.archived:
        asked = (f"asked back now: {plan.asked_back} (RestoreObject, {spec.archive_restore.tier} tier, kept "
                 f"{spec.archive_restore.days} {plural(spec.archive_restore.days, 'day')}); a later run reads them"
                 if spec.archive_restore else "restore them (S3 RestoreObject, or set archive_restore) and a later "
                 "run reads them")
        print(f"job {spec.name}: frames waiting in archival storage: {len(plan.archived)}, of which being restored: "
              f"{plan.being_restored}; not read: {asked} (`restore status` lists them)")
        for error in plan.not_asked_back[: args.show]:
            print(f"  could not ask back: {printable(error)}")
    if not result.planned:
        print(f"job {spec.name}: nothing to do, {result.already_done} {plural(result.already_done, 'frame')} "
              f"already restored{given_up}")
        if not plan.given_up and not plan.held and not plan.withdrawn and not plan.archived:
            summary["manifest"] = None  # no run folder was written
    else:
        waiting = (f", {counts['skipped']} skipped: not restored yet, each for the reason `restore status` gives "
                   "(tried again next run, but one held for a setting waits until the spec gives it)") \
            if counts.get("skipped") else ""
        print(f"job {spec.name} run {result.run_id}: {counts.get('ok', 0)} ok, {counts.get('failed', 0)} failed"
              f"{waiting}{given_up} in {result.seconds:.1f} s ({result.frames_per_second:.2f} frames/s); "
              f"outputs in {spec.output}, manifest {summary['manifest']}")
        for key, reason in result.not_restored[: args.show]:  # a nightly log says which, not only how many
            print(f"  not restored {printable(key)}: {printable(reason)}")
        if len(result.not_restored) > args.show:
            print(f"  … and {len(result.not_restored) - args.show} more: `restore status` lists them all")
        if result.nothing_masked:
            print(_nothing_masked(spec, result.nothing_masked, result.no_mask_file))
        summary["report"] = write_report(spec).uri
        if not args.quiet:
            print(f"report: {summary['report']}")
    _write_json(args.json, summary)
    return EXIT_FRAMES_FAILED if summary["status"] == "failed" else EXIT_OK


def cmd_submit(args) -> int:
    from .submit import submit, wait

    from_environment = os.environ.get("RAY_ADDRESS", "")  # the Ray Jobs CLI's convention for a dashboard URL
    address = args.address or (from_environment if from_environment.startswith(("http://", "https://")) else None)
    if not address:
        print("restore submit: no --address (nor a dashboard URL in RAY_ADDRESS): running here, as `restore run`",
              file=sys.stderr)
        return cmd_run(argparse.Namespace(spec=args.spec, dry_run=False, quiet=False, json=None, show=0,
                                          progress_json=False, repair=False))
    submission_id = submit(args.spec, address)
    print(submission_id)
    if not args.wait:
        return EXIT_OK
    state = wait(address, submission_id, timeout_s=args.timeout)
    print(f"{submission_id}: {state.status} {state.message or ''}".rstrip(), file=sys.stderr)
    if state.exit_code is not None:
        return state.exit_code
    return EXIT_OK if state.status == "SUCCEEDED" else EXIT_ERROR


def cmd_jobs(args) -> int:
    import dataclasses

    from .submit import job_logs, job_status, stop_job

    if args.action == "logs":
        print(job_logs(args.address, args.id), end="")
    elif args.action == "stop":
        print("stopped" if stop_job(args.address, args.id) else "already finished")
    else:
        state = job_status(args.address, args.id)
        print(f"{state.submission_id}: {state.status} {state.message or ''}".rstrip())
        _write_json(args.json, dataclasses.asdict(state))
    return EXIT_OK


def _misformatted(spec, masks: dict[str, str]) -> str:
    from .pipeline import mask_key_for

    frame, found = next(iter(sorted(masks.items())))
    return (f"job {spec.name}: {len(masks)} {plural(len(masks), 'frame')} with a mask saved in another format than "
            f"masks.pattern names ({printable(found)} for {printable(frame)}, where it names "
            f"{printable(mask_key_for(spec.masks.pattern, frame))}): they have no mask until it is saved as the "
            "pattern says, or the pattern changed")


def _held(keys: list[str]) -> str:
    return (f"{len(keys)} held until the spec says more, as `restore status` gives: not read again until it does, "
            "or the frame, its masks or the config change")


def _nothing_masked(spec, count: int, no_mask_file: int) -> str:
    """Frames copied unchanged read as restored ("ok"): say so, and why, for a first job whose masks are elsewhere."""
    line = f"job {spec.name}: {count} of them came back unchanged, as nothing was masked"
    if no_mask_file:
        line += f" ({no_mask_file} had no mask file where masks.pattern {spec.masks.pattern!r} looks"
        line += ", and the detector found nothing in them)" if spec.masks.source != "given" else \
            ": give masks there, or set masks.source: detect to find the damage)"
    return line


def cmd_report(args) -> int:
    from .report import rebuild_report, write_report
    from .spec import load_spec

    if Path(args.target).is_file():
        result = write_report(load_spec(args.target))
    else:
        result = rebuild_report(args.target, args.job, args.endpoint_url)
    print(f"report: {result.uri} ({result.frames} {plural(result.frames, 'frame')}, {result.pictures_made} new "
          f"{plural(result.pictures_made, 'picture')})")
    return EXIT_OK


def _output_target(args, spec) -> tuple[str, str | None, str]:
    """(output URI, endpoint, job) from the job spec the command was given (`_target_spec`), or from an output
    location plus --job."""
    if spec is not None:
        return spec.output, spec.endpoint_url, spec.name
    if args.target.lower().endswith((".yaml", ".yml")) and "://" not in args.target:  # a spec mistyped, not an output
        raise ValueError(f"no job spec at {args.target}: is the path right?")
    if args.job:
        return args.target, args.endpoint_url, args.job
    from .manifest import jobs_in
    from .storage import open_storage

    jobs = jobs_in(open_storage(args.target, args.endpoint_url))
    if not jobs:
        raise ValueError(f"no manifests under {args.target}: is the path right, and has a job run there?")
    if len(jobs) != 1:  # an output holds one job's manifests; an older one may hold several
        raise ValueError(f"{args.target} holds the manifests of {len(jobs)} {plural(len(jobs), 'job')} "
                         f"({', '.join(jobs)}): give a job spec, or the output location with --job NAME")
    return args.target, args.endpoint_url, jobs[0]


def _target_spec(args):
    """The job spec the command was given, or None for an output location."""
    from .spec import load_spec

    if not Path(args.target).is_file():
        return None
    spec = load_spec(args.target)
    if args.job and args.job != spec.name:
        raise ValueError(f"--job {args.job} differs from the spec's name {spec.name}: give one or the other")
    return spec


def cmd_verify(args) -> int:
    from .verify import FRAME_PROBLEMS, verify

    output, endpoint_url, job = _output_target(args, _target_spec(args))
    originals = None
    if args.originals:
        from .spec import load_spec

        if not Path(args.target).is_file():
            raise ValueError("--originals needs the job spec (JOB.yaml): it names the input")
        originals = load_spec(args.target).input
    report = verify(output, job, endpoint_url, unknown=args.unknown, originals=originals, quick=args.quick)
    print(f"job {job}: {report.frames} {plural(report.frames, 'frame')}, {report.verified} verified, "
          f"{len(report.failed)} recorded as not restored (failed or skipped), {len(report.problems)} "
          f"{plural(len(report.problems), 'problem')}"
          + (f", {len(report.not_read)} {plural(len(report.not_read), 'object')} in archival storage not read "
             "(restore them, S3 RestoreObject, to verify them; --quick checks that they are there)"
             if report.not_read else ""))
    for problem in (report.problems + report.not_read)[: args.show]:
        print(f"  {problem.kind} {printable(problem.key)}: {printable(problem.detail)}")
    if any(problem.kind in FRAME_PROBLEMS for problem in report.problems):
        print("  `restore run JOB.yaml --repair` restores those frames again")
    _write_json(args.json, report.as_dict())
    return EXIT_OK if report.ok else EXIT_FRAMES_FAILED


def cmd_status(args) -> int:
    from .condition import describe
    from .lease import run_in_progress
    from .manifest import last_run_summary, read_manifests, summarize, write_latest_csv
    from .pipeline import JobError, config_hash_now
    from .restorers import RestorerError
    from .storage import open_storage

    spec = _target_spec(args)
    output, endpoint_url, job = _output_target(args, spec)
    storage = open_storage(output, endpoint_url)
    table = read_manifests(storage, job)
    config_hash, unknown_config = None, None
    if spec:  # the weights files it names may be elsewhere (a worker's path) or gone: status still reports
        try:
            config_hash = config_hash_now(spec)
        except (RestorerError, OSError) as error:
            unknown_config = str(error)
    summary = summarize(table, spec.max_attempts if spec else None, config_hash)
    last = last_run_summary(storage, job)
    if summary.runs == 0 and last is None:  # a mistyped job or output: an error, not "all is well"
        raise JobError(f"job {job}: no manifests under {output} (has it run? is the job name right?)")
    counts = ", ".join(f"{n} {status}" for status, n in sorted(summary.by_status.items()))
    runs = (f"{summary.runs} {plural(summary.runs, 'run')}, last {summary.last_run}" if summary.runs
            else "no run has committed a frame yet")  # one stopped before its first commit wrote only its summary
    print(f"job {job}: {summary.total} {plural(summary.total, 'frame')}: {counts or 'none done'} ({runs})")
    damage = describe({kind: found["regions"] for kind, found in summary.damage.items()}, explain=True)
    if damage:  # what the masks of the frames restored hold, as a condition report counts it
        print(f"  damage masked in the frames restored: {damage}")
    if summary.held:  # frames that wait on a person: reasons below, with what the spec can say
        print(f"  held for review until the spec says more: {len(summary.held)} "
              f"({tally(summary.held.values())})")
    if summary.ok_under_other_config:  # an upgrade's new weights, or an edited spec: "ok" here is not "done"
        print(f"  restored under another config than the spec's now (restorer, weights, mask or output settings), "
              f"so the next run restores them again, if their originals are still among its frames: "
              f"{summary.ok_under_other_config} of the {summary.by_status['ok']} ok")
    if unknown_config:
        print(f"  which frames the next run restores again is not known here: {printable(unknown_config)}")
    if summary.given_up:  # runs leave them alone: only a person mends them
        print(f"  given up after {spec.max_attempts} failed {plural(spec.max_attempts, 'attempt')} (max_attempts), "
              f"not tried again until they change: {len(summary.given_up)}")
    given_up = set(summary.given_up or ())
    for key, error in summary.failures[: args.show]:
        print(f"  not restored {printable(key)}{' (given up)' if key in given_up else ''}: {printable(error)}")
    running = run_in_progress(storage, job)
    interrupted = last["run_id"] if last and last["status"] == "interrupted" else None
    if interrupted:  # its committed rows are all ok: without this, a stopped job would read as finished
        print(f"  run {interrupted} was stopped after {sum(last['counts'].values())} of its {last['planned']} "
              f"{plural(last['planned'], 'frame')}: run the job again to finish it")
    unfinished = last["run_id"] if last and last["status"] == "started" and not running else None
    if unfinished:  # killed, its machine lost, or failed (exit 2): it never wrote how it ended
        print(f"  run {unfinished} set out to restore {last['planned']} {plural(last['planned'], 'frame')} and "
              "never finished (killed, or it failed: its log says why): run the job again to finish it")
    if running:
        print(f"  a run is in progress: lease {running}")
    _write_json(args.json, {"job": job, "output": output, **summary.as_dict(), "interrupted_run": interrupted,
                            "unfinished_run": unfinished, "in_progress": running,
                            **({"config_unknown": unknown_config} if unknown_config else {})})
    if args.csv:
        written = write_latest_csv(table, args.csv)
        print(f"  {written} {plural(written, 'frame')} written to {args.csv}")
    return EXIT_FRAMES_FAILED if summary.failures or interrupted or unfinished else EXIT_OK


def cmd_demo(args) -> int:
    from .demo import make_demo_frames
    from .spec import load_spec

    if not Path(args.spec).is_file() and args.spec == DEMO_SPEC:
        raise ValueError(f"{DEMO_SPEC} not found: run `restore demo` in the repository's folder, or give a job spec")
    spec = load_spec(args.spec)
    written = make_demo_frames(spec, count=args.frames, seed=args.seed)
    print(f"demo: {written} damaged {plural(written, 'frame')} with masks in {spec.input}", file=sys.stderr)
    return cmd_run(argparse.Namespace(spec=args.spec, dry_run=False, quiet=args.quiet, json=args.json, show=0,
                                      progress_json=False, repair=False))


def cmd_eval(args) -> int:
    from .evaluate import evaluate, write_json

    result = evaluate(args.data, args.methods, args.classes, args.crop, args.seed, args.weights, args.limit,
                      args.grid, args.table, args.threads, endpoint_url=args.endpoint_url)
    write_json(result, args.json)
    for name, reason in result["skipped"].items():
        print(f"restore eval: skipped {name}: {reason}", file=sys.stderr)
    for name, classes in result["methods"].items():
        holes = ", ".join(f"{cls} {m['psnr_hole']:.2f}" for cls, m in classes.items())
        print(f"{name}: hole PSNR (dB) {holes}")
    return EXIT_FRAMES_FAILED if result["skipped"] else EXIT_OK  # a comparison that lacks a method asked for


def cmd_train(args) -> int:
    from .train import load_train_config, train

    config = load_train_config(args.config, data=args.data, out_dir=args.out, endpoint_url=args.endpoint_url,
                               init_weights=args.init_weights,
                               max_steps=args.max_steps, max_minutes=args.max_minutes, threads=args.threads,
                               device=args.device, precision=args.precision)
    out_dir = train(config, resume=not args.fresh, ray_workers=args.workers)
    from .train import checkpoint_step

    print(f"restore train: at step {checkpoint_step(out_dir)} (max_steps {config.max_steps}); checkpoints, "
          f"log.jsonl and curves.png in {out_dir}")
    return EXIT_OK


def cmd_export(args) -> int:
    from .train import export_generator

    digest = export_generator(args.checkpoint_dir, args.out)
    print(f"restore export: EMA generator written to {args.out} (sha256 {digest})")
    return EXIT_OK


def cmd_eval_detect(args) -> int:
    from .evaluate_detect import evaluate_detect, markdown_table

    result = evaluate_detect(args.data, args.detectors, args.overlays, args.seed, args.limit, weights=args.weights,
                             endpoint_url=args.endpoint_url)
    _write_json(args.json, result)
    print(markdown_table(result))
    return EXIT_OK


def cmd_train_detector(args) -> int:
    from .detect.learned import train_detector

    digest = train_detector(args.data, args.out, steps=args.steps, seed=args.seed, crop=args.crop,
                            overlay_dir=args.overlays, init=args.init, lr=args.lr, val_images=args.val_images,
                            threads=args.threads, endpoint_url=args.endpoint_url, widths=args.widths)
    print(f"restore train-detector: weights written to {args.out} (sha256 {digest})")
    return EXIT_OK


def _widths(text: str) -> tuple[int, ...]:
    """'16,24,32,48' → (16, 24, 32, 48)."""
    try:
        widths = tuple(int(w) for w in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated channel counts such as 16,24,32,48, got {text!r}")
    if len(widths) < 2 or min(widths) < 1:
        raise argparse.ArgumentTypeError(f"expected at least two positive channel counts, got {text!r}")
    return widths


def printable(text: str | None) -> str:
    """Keys and reasons as printed: a donor's file name can hold escape codes that rewrite the operator's screen
    (a carriage return and "2 ok" over the real line); those characters are shown escaped instead."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def _size(text: str) -> tuple[int, int]:
    """'2048x1556' (width x height) → (height, width)."""
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 2048x1556, got {text!r}") from None
    return height, width


def cmd_bench(args) -> int:
    from .bench import BenchConfig, run_bench

    config = BenchConfig(frames=args.frames, damage=args.damage, restorer=args.restorer, weights=args.weights,
                         workers=args.workers, cpus=args.cpus, batch_size=args.batch_size, s3=not args.no_s3,
                         naive=not args.no_naive, seed=args.seed, **({"sizes": args.size} if args.size else {}))
    if args.plan:
        from .bench import planning

        result = planning(frames=args.plan)
        _write_json(args.json, result)
        print(json.dumps(result, indent=2))
        return EXIT_OK
    if args.train:
        from .bench import train_speed

        result = train_speed(args.train, steps=args.steps)
        _write_json(args.json, result)
        print(json.dumps(result, indent=2))
        return EXIT_OK
    if args.scaling:
        from .bench import model_floor, scaling, tiling_fidelity

        gan = config.restorer == "gan"
        result = {"scaling": scaling(config), "model_floor": model_floor(config) if gan else None,
                  "tiling_fidelity": tiling_fidelity(config) if gan else None}
        _write_json(args.json, result)
        print(json.dumps(result, indent=2))
        return EXIT_OK
    result = run_bench(config)
    _write_json(args.json, result)
    for size in result["sizes"]:
        print(f"{size['width']}x{size['height']}: ceiling {size['ceiling_fps']:.2f} fps, I/O ceiling "
              f"{size['io_ceiling_fps']:.2f}, pipeline {size['pipeline_fps']:.2f} "
              f"({size['pipeline_over_ceiling']:.2f} of the lower ceiling)"
              + (f", naive {size['naive_fps']:.2f} (pipeline {size['pipeline_over_naive']:.2f}x)" if "naive_fps" in size else ""))
    return EXIT_OK


def _add_output_target(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", help="job spec (YAML), or an output location with --job")
    parser.add_argument("--job", help="job name, when TARGET is an output location (found there when omitted)")
    parser.add_argument("--endpoint-url", help="S3 endpoint, when TARGET is an s3:// output location")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="restore", description="Batch restoration of damaged photo and film archives.")
    parser.add_argument("--version", action="version", version=f"restore {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    run = verbs.add_parser("run", help="run a job spec: restore every new, changed or failed frame, write outputs and manifests")
    run.add_argument("spec", help="job spec (YAML)")
    run.add_argument("--dry-run", action="store_true", help="list what would be processed, process nothing")
    run.add_argument("--quiet", action="store_true", help="no progress line, only the final summary")
    run.add_argument("--json", metavar="OUT", help="write the run summary as JSON to OUT")
    run.add_argument("--progress-json", action="store_true",
                     help="progress as one JSON object per line on stderr (every few seconds), for scripts; "
                          "also with --quiet")
    run.add_argument("--show", type=int, default=20,
                     help="how many frames to list: those a dry run would process, or those a run did not restore "
                          "(default 20)")
    run.add_argument("--repair", action="store_true",
                     help="first verify every output (reading them all), and restore again the frames whose output "
                          "or mask is missing or altered")
    run.set_defaults(func=cmd_run)

    status = verbs.add_parser("status", help="counts by status and failures with reasons, from the manifests")
    _add_output_target(status)
    status.add_argument("--show", type=int, default=50, help="how many failures to print")
    status.add_argument("--json", metavar="OUT", help="write the summary as JSON to OUT")
    status.add_argument("--csv", metavar="OUT", help="write every frame's newest manifest row, every column, as CSV "
                        "to OUT: for spreadsheets and collection-management systems (cells a spreadsheet would take "
                        "for a formula begin with an apostrophe)")
    status.set_defaults(func=cmd_status)

    verify = verbs.add_parser("verify", help="check outputs against the manifests: presence, sha256, provenance, masks")
    _add_output_target(verify)
    verify.add_argument("--unknown", action="store_true", help="also report objects no manifest row accounts for, "
                        "and outputs only superseded rows name")
    verify.add_argument("--quick", action="store_true", help="only check that every output and audit mask is "
                        "there, from one listing: no object is read (checksums and provenance are not checked)")
    verify.add_argument("--originals", action="store_true", help="also re-read the originals (from JOB.yaml's input) "
                        "and check they still hash as when restored: bit rot, or a file replaced in place")
    verify.add_argument("--show", type=int, default=50, help="how many problems to print")
    verify.add_argument("--json", metavar="OUT", help="write the verification as JSON to OUT")
    verify.set_defaults(func=cmd_verify)

    submit = verbs.add_parser("submit", help="run a job spec on a Ray cluster (Jobs API); prints the submission id")
    submit.add_argument("spec", help="job spec (YAML)")
    submit.add_argument("--address", help="dashboard URL, e.g. http://HEAD:8265 (default: RAY_ADDRESS when it is "
                        "one); without either: runs here like `restore run`")
    submit.add_argument("--wait", action="store_true", help="follow to the end; exit with the remote run's exit code")
    submit.add_argument("--timeout", type=float, help="with --wait: give up after N s")
    submit.set_defaults(func=cmd_submit)

    jobs = verbs.add_parser("jobs", help="status, logs or stop of a submitted job")
    jobs.add_argument("action", choices=["status", "logs", "stop"])
    jobs.add_argument("id", help="submission id printed by restore submit")
    jobs.add_argument("--address", required=True, help="dashboard URL, e.g. http://HEAD:8265")
    jobs.add_argument("--json", metavar="OUT", help="with status: write the job's state as JSON to OUT")
    jobs.set_defaults(func=cmd_jobs)

    report = verbs.add_parser("report", help="(re)build report.html for a job's output from its manifests")
    _add_output_target(report)
    report.set_defaults(func=cmd_report)

    demo = verbs.add_parser("demo", help="generate a small damaged collection for a job spec, then run it")
    demo.add_argument("spec", nargs="?", default=DEMO_SPEC,
                      help="job spec (default jobs/demo.yaml, from the repository's folder)")
    demo.add_argument("--frames", type=int, default=12, help="how many frames to generate")
    demo.add_argument("--seed", type=int, default=0, help="seed of the generated frames and their damage")
    demo.add_argument("--quiet", action="store_true", help="no progress line, only the final summary")
    demo.add_argument("--json", metavar="OUT", help="write the run summary as JSON to OUT")
    demo.set_defaults(func=cmd_demo)

    from .evaluate import CLASSES
    from .spec import RESTORERS

    evaluation = verbs.add_parser("eval", help="inpainting quality on clean images: GAN vs classical, per mask class")
    evaluation.add_argument("--data", required=True, help="clean images, searched recursively: a folder or "
                            "s3://bucket/prefix")
    evaluation.add_argument("--endpoint-url", help="S3-compatible endpoint for --data (MinIO, Ceph, ...)")
    evaluation.add_argument("--json", required=True, metavar="OUT", help="write the results as JSON to OUT")
    evaluation.add_argument("--methods", nargs="+", default=list(RESTORERS), choices=RESTORERS)
    evaluation.add_argument("--classes", nargs="+", default=list(CLASSES), choices=CLASSES)
    evaluation.add_argument("--weights", help="generator file for the GAN (default: the shipped weights)")
    evaluation.add_argument("--table", metavar="MD", help="write a Markdown table")
    evaluation.add_argument("--grid", metavar="PNG", help="write a picture grid: input / each method / truth")
    evaluation.add_argument("--limit", type=int, help="use only the first N images")
    evaluation.add_argument("--seed", type=int, default=0, help="seed of the damage drawn on each image")
    evaluation.add_argument("--crop", type=int, default=256, help="side of the centre crop scored, in pixels")
    evaluation.add_argument("--threads", type=int, default=1, help="torch threads for the GAN")
    evaluation.set_defaults(func=cmd_eval)

    from .spec import DETECTOR_NAMES

    detection = verbs.add_parser("eval-detect", help="damage detection quality: precision, recall, F1, IoU per kind")
    detection.add_argument("--data", required=True, help="clean images, searched recursively: a folder or "
                           "s3://bucket/prefix")
    detection.add_argument("--endpoint-url", help="S3-compatible endpoint for --data (MinIO, Ceph, ...)")
    detection.add_argument("--json", required=True, metavar="OUT", help="write the results as JSON to OUT")
    detection.add_argument("--overlays", help="folder of RGBA damage overlays (alpha = damage) to blend in too")
    detection.add_argument("--detectors", nargs="+", choices=DETECTOR_NAMES,
                           help="default: all; learned only where its weights are shipped")
    detection.add_argument("--weights", help="detector file for learned (default: the shipped weights)")
    detection.add_argument("--limit", type=int, help="use only the first N images")
    detection.add_argument("--seed", type=int, default=0, help="seed of the synthetic damage")
    detection.set_defaults(func=cmd_eval_detect)

    detector_training = verbs.add_parser(
        "train-detector", help="train the learned damage detector on synthetic damage over your own clean images")
    detector_training.add_argument("--data", required=True, help="clean images, searched recursively: a folder or "
                                   "s3://bucket/prefix")
    detector_training.add_argument("--endpoint-url", help="S3-compatible endpoint for --data (MinIO, Ceph, ...)")
    detector_training.add_argument("--out", required=True, help="weights file to write, e.g. my-detector.pt")
    detector_training.add_argument("--overlays", help="folder of RGBA damage overlays (alpha = damage) to blend in too")
    detector_training.add_argument("--init", help="start from these detector weights (fine-tune), e.g. the shipped ones")
    detector_training.add_argument("--steps", type=int, default=3000, help="training steps")
    detector_training.add_argument("--crop", type=int, default=128, help="training crop size in pixels")
    detector_training.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (one-cycle schedule)")
    detector_training.add_argument("--val-images", type=int, default=8,
                                   help="images held out to calibrate the threshold (0: keep 0.5)")
    detector_training.add_argument("--seed", type=int, default=0, help="seed of the crops, damage and weights")
    detector_training.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    detector_training.add_argument("--widths", type=_widths, help="channels per U-Net level of a new detector, "
                                   "comma-separated, full resolution first (default 16,24,32,48)")
    detector_training.set_defaults(func=cmd_train_detector)

    bench = verbs.add_parser("bench", help="throughput: bare restorer, I/O ceiling, pipeline (local, S3) and naive loop")
    bench.add_argument("--json", metavar="OUT", help="write the measurements as JSON to OUT")
    bench.add_argument("--frames", type=int, default=8, help="frames per size")
    bench.add_argument("--size", type=_size, action="append", help="WIDTHxHEIGHT, repeatable (default 512x512 and 2048x1556)")
    bench.add_argument("--damage", default="archive", help="archive | thin | medium | thick | none")
    bench.add_argument("--restorer", default="gan", choices=RESTORERS, help="the restorer timed")
    bench.add_argument("--weights", help="generator file (default: the shipped weights)")
    bench.add_argument("--workers", type=int, default=1, help="restorer workers in the pipeline runs")
    bench.add_argument("--cpus", type=float, default=1.0, help="CPUs per restorer worker (and torch threads)")
    bench.add_argument("--batch-size", type=int, default=2, help="frames per batch in the pipeline runs")
    bench.add_argument("--no-s3", action="store_true", help="skip the S3 run (it needs moto, from the test extra)")
    bench.add_argument("--no-naive", action="store_true", help="skip the naive loop")
    bench.add_argument("--seed", type=int, default=0, help="seed of the generated frames and their damage")
    bench.add_argument("--scaling", action="store_true",
                       help="instead: restorer time per frame against frame size and damaged fraction, and the FLOPs floor")
    bench.add_argument("--plan", type=int, metavar="FRAMES",
                       help="instead: seconds to plan a rerun with nothing to do over FRAMES restored frames in a "
                            "local folder (listing, manifests, per-frame checks), e.g. 100000")
    bench.add_argument("--train", metavar="CONFIG",
                       help="instead: seconds per training step of a `restore train` config, in fp32 and in bf16, "
                            "and the loader processes (`loader_workers`) that keep the device fed")
    bench.add_argument("--steps", type=int, default=16,
                       help="timed training steps per precision (with --train; 16 hold one lazy R1 step)")
    bench.set_defaults(func=cmd_bench)

    training = verbs.add_parser("train", help="train the GAN inpainting generator (resumes from the last checkpoint)")
    training.add_argument("config", help="training config (YAML), e.g. restore/configs/gan-cpu.yaml")
    training.add_argument("--data", help="clean training images, searched recursively: a local folder or "
                          "s3://bucket/prefix (overrides the config)")
    training.add_argument("--endpoint-url", help="S3-compatible endpoint for --data (MinIO, Ceph, ...)")
    training.add_argument("--out", help="checkpoint folder, outside the repository (overrides the config)")
    training.add_argument("--fresh", action="store_true", help="start over instead of resuming")
    training.add_argument("--init-weights", help="start the generator from these weights, with a fresh discriminator; "
                          "a wider generator of the same depth grows from them, starting with their output")
    training.add_argument("--max-steps", type=int, help="stop at this step")
    training.add_argument("--max-minutes", type=float,
                          help="stop after this many minutes (checkpointed; resume later), e.g. a nightly window")
    training.add_argument("--threads", type=int, help="torch CPU threads per worker")
    training.add_argument("--device", help="cpu or cuda")
    training.add_argument("--precision",
                          help="fp32 or bf16 (overrides the config); bf16: faster steps where the hardware has bf16 units (`restore bench --train` tells)")
    training.add_argument("--workers", type=int, default=0, help="train on N Ray Train workers (DDP); 0 = this process")
    training.set_defaults(func=cmd_train)

    export = verbs.add_parser("export", help="write a checkpoint's EMA generator as a weights file for jobs")
    export.add_argument("checkpoint_dir", help="the training run's checkpoint folder")
    export.add_argument("out", help="weights file to write, e.g. restore/weights/generator.pt")
    export.set_defaults(func=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .frames import FrameError
    from .lease import LeaseError, LeaseHeldError
    from .pipeline import JobError, is_stop
    from .report import ReportError
    from .restorers import RestorerError
    from .spec import SpecError
    from .storage import StorageError
    from .submit import SubmitError

    args = build_parser().parse_args(argv)
    for option in ("json", "table", "grid"):  # before the work, not after it: its results would be lost
        path = getattr(args, option, None)
        if path and not Path(path).resolve().parent.is_dir():
            print(f"restore {args.verb}: cannot write --{option} {path}: the folder {Path(path).resolve().parent} "
                  "does not exist", file=sys.stderr)
            return EXIT_ERROR
    if threading.current_thread() is threading.main_thread():  # a scheduler's stop (SIGTERM) ends a run as Ctrl-C does
        signal.signal(signal.SIGTERM, _stop)
    try:
        code = args.func(args)
        sys.stdout.flush()  # what is still held, written here: a reader gone is met below, not as Python exits
        return code
    except BrokenPipeError:  # the reader has read all it wants (`restore status | head`): quietly, as other commands
        _silence_stdout()
        return _ended(args, EXIT_BROKEN_PIPE, "the reader of its output stopped reading", "error")
    except (SpecError, StorageError, RestorerError, JobError, FrameError, ReportError, LeaseError, SubmitError,
            ValueError, OSError) as error:
        print(f"restore {args.verb}: {error}", file=sys.stderr)
        # a run refused because the last one is still going is not an outage: say which it is
        return _ended(args, EXIT_ERROR, str(error), "already_running" if isinstance(error, LeaseHeldError) else "error")
    except (KeyboardInterrupt, SystemExit) as stop:
        if not is_stop(stop):
            raise
        # not "frames failed" (1): what was committed stays, the lease is given back, and a rerun resumes
        print(f"\nrestore {args.verb}: interrupted; " + ("the submitted run goes on (`restore jobs stop ID` stops it)"
              if args.verb == "submit" else "run the same command again to resume"), file=sys.stderr)
        return _ended(args, EXIT_INTERRUPTED, "interrupted", "interrupted")
    except Exception as error:  # noqa: BLE001 - a fault of ours or of a library: its trace, exit 2, and the --json
        traceback.print_exc()
        reason = f"{type(error).__name__}: {error}"
        print(f"restore {args.verb}: failed unexpectedly: {reason}", file=sys.stderr)
        return _ended(args, EXIT_ERROR, reason, "error")


def _stop(signum, frame):
    raise KeyboardInterrupt


def _silence_stdout() -> None:
    """Standard output to /dev/null: Python writes what it still holds as it exits, which would fail again."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):  # not a file (a test's captured output): nothing held
        pass


def console() -> None:
    """The installed `restore` command. After a stop, Ray's threads abort the interpreter as it exits (exit 134,
    which schedulers read as a crash) unless Ray is shut down first."""
    try:
        code = main()
    finally:
        if "ray" in sys.modules and sys.modules["ray"].is_initialized():
            # the command's work is done: a stop now (Ctrl-C, SIGTERM) would only leave Ray half shut down, whose
            # threads then abort the interpreter, and lose the command's exit code
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            sys.modules["ray"].shutdown()
    sys.exit(code)


def _ended(args, code: int, reason: str, status: str) -> int:
    """A run that ends without its summary still writes its --json, so a scheduler never reads last night's."""
    if args.verb in ("run", "demo") and getattr(args, "json", None):
        try:
            _write_json(args.json, {"spec": getattr(args, "spec", None), "status": status, "exit_code": code,
                                    "error": reason})
        except OSError as error:  # the --json path itself may be what failed
            print(f"restore {args.verb}: cannot write {args.json}: {error.strerror or error}", file=sys.stderr)
    return code


if __name__ == "__main__":
    console()
