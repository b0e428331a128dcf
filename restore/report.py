"""The HTML job report: what the runs did, frame by frame, for people who judge restoration with their eyes.

`report.html` sits at the output root, beside the restored frames it links to, so it opens the same from a folder
or an S3 static site. It needs nothing from the network: CSS, JS and the frame rows (as JSON) are inline, and the
pictures are small JPEGs under `_report/<job>/`, named by a digest of the input and output they show (see
pictures.py). A picture is made once: a run makes each frame's thumbnails as it writes the frame, so the report
reads originals and outputs again only for the few compare previews, and for thumbnails no run made (outputs of
older versions); rebuilding the report over 50,000 frames makes only the pictures of new or changed frames. The
page renders its frame list 100 rows at a time with lazily loaded images, so it opens quickly whatever the job's size.

Everything shown comes from the manifests (the source of truth) and the job spec; the spec is saved beside the
pictures so `rebuild_report(output)` can redo the report without the YAML file.
"""
from __future__ import annotations

import hashlib
import html
import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from urllib.parse import quote, urlsplit

import numpy as np
import pyarrow as pa
import yaml

from .condition import KINDS, describe
from .frames import FrameError, as_displayed, decode_frame, decode_mask
from .manifest import (NOT_RESTORED, WITHDRAWN, is_video, jobs_in, latest_rows, read_manifests, split_frame_key,
                       summarize)
from .pictures import (DIFFERENCE_GAIN, PREVIEW_QUALITY, PREVIEW_SIZE, REVIEW_READINGS, THUMB_QUALITY, THUMB_SIZE,
                       as_shown, fit, held_pictures_name, picture_set, pictures_name, pictures_prefix, shrink,
                       store_pictures)
from .spec import JobSpec, parse_spec
from .storage import Storage, StorageError, open_storage
from .wording import plural, tally

REPORT_KEY = "report.html"
DEEP_FILL_PX = 16  # fills this far from the nearest kept pixel (holes over 32 px wide) are flagged for a look
COMPARE_FRAMES = 9  # frames with the largest masked area get a compare view
FAILURES_SHOWN = 50  # the rest are one filter away in the frame list
HELD_SHOWN = 24  # held frames shown with their pictures; every one is in the Not restored table and the frame list
RUNS_SHOWN = 20
COLUMNS = ("key", "status", "error", "masked", "width", "height", "bits", "pictures", "has_mask", "output", "note",
           "run", "damage", "caption")  # the frame rows' fields in the page's JSON, one array per frame


class ReportError(Exception):
    """The report cannot be built (for example: no saved spec to rebuild from)."""


@dataclass
class ReportResult:
    uri: str  # where report.html was written
    frames: int
    pictures_made: int  # frames whose pictures this call made
    pictures_kept: int  # frames whose pictures were already there
    pictures_unavailable: int  # restored frames shown without pictures, each with its reason in the report


def write_report(spec: JobSpec, workers: int = 4) -> ReportResult:
    """Build `report.html` for a job in its output; `workers` threads decode frames for the new pictures."""
    input_storage = open_storage(spec.input, spec.endpoint_url)
    output_storage = open_storage(spec.output, spec.endpoint_url)
    return build_report(spec, input_storage, output_storage, workers)


def rebuild_report(output: str, job: str | None = None, endpoint_url: str | None = None,
                   workers: int = 4) -> ReportResult:
    """Rebuild the report in `output` from the spec the last report saved; `job` may be omitted when it is alone."""
    output_storage = open_storage(output, endpoint_url)
    if job is None:
        jobs = jobs_in(output_storage)
        if not jobs:
            raise ReportError(f"no manifests under {output}: is the path right, and has a job run there?")
        if len(jobs) != 1:
            raise ReportError(f"{output} holds manifests of {len(jobs)} jobs ({', '.join(jobs)}): name one")
        job = jobs[0]
    key = _spec_key(job)
    if output_storage.head(key) is None:
        raise ReportError(f"no saved job spec at {key} in {output}: build the report once from the job's YAML file")
    raw = json.loads(output_storage.get(key))
    if endpoint_url:  # the saved spec carries the endpoint without credentials; the caller's wins
        raw["endpoint_url"] = endpoint_url
    spec = parse_spec(raw, source=f"{output_storage.uri}/{key}")
    return build_report(spec, open_storage(spec.input, spec.endpoint_url), output_storage, workers)


def build_report(spec: JobSpec, input_storage: Storage, output_storage: Storage, workers: int = 4) -> ReportResult:
    """Pictures first, then the spec, then report.html, so the page never names a picture that is not there yet."""
    table = read_manifests(output_storage, spec.name)
    rows = latest_rows(table)
    prefix = pictures_prefix(spec.name)
    existing = {info.key for info in output_storage.list(("*.jpg",), prefix=f"{prefix}/")}
    compare = {row["input_key"] for row in sorted(
        (row for row in rows if _digest(row) and row["mask_key"]), key=lambda row: -row["masked_fraction"]
    )[:COMPARE_FRAMES]}

    jobs, kept = [], 0
    for row in rows:
        if _digest(row) is None:
            continue
        need_thumbs = f"{prefix}/thumbs/{_digest(row)}-r.jpg" not in existing
        need_preview = row["input_key"] in compare and f"{prefix}/previews/{_digest(row, 'previews')}-r.jpg" \
            not in existing
        if need_thumbs or need_preview:
            jobs.append((row, need_thumbs, need_preview))
        else:
            kept += 1
    stills, videos = [], {}  # a video is read and decoded once for all its frames' pictures
    for job in jobs:
        source = split_frame_key(job[0]["input_key"])[0]
        if is_video(source):
            videos.setdefault(source, []).append(job)
        else:
            stills.append(job)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        made = [pool.submit(_make_pictures, input_storage, output_storage, prefix, spec, *job) for job in stills]
        made_videos = [pool.submit(_make_video_pictures, input_storage, output_storage, prefix, spec.max_pixels,
                                   video, video_jobs) for video, video_jobs in videos.items()]
        failures = [future.result() for future in made]
        failures += [note for future in made_videos for note in future.result()]
    jobs = stills + [job for video_jobs in videos.values() for job in video_jobs]
    notes = {row["input_key"]: note for (row, *_), note in zip(jobs, failures) if note}

    output_storage.put(_spec_key(spec.name), json.dumps(_public_spec(spec), indent=2).encode(),
                       content_type="application/json")
    held = {row["input_key"]: (name, [reading for reading in REVIEW_READINGS
                                      if f"{prefix}/held/{name}-{reading}.jpg" in existing])
            for row in rows if (name := _held_name(row)) and f"{prefix}/held/{name}-o.jpg" in existing}
    page = render_report(spec, table, rows, notes, compare, generated=datetime.now(timezone.utc), held=held)
    stored = output_storage.put(REPORT_KEY, page.encode(), content_type="text/html; charset=utf-8")
    return ReportResult(uri=f"{output_storage.uri.rstrip('/')}/{stored.key}", frames=len(rows),
                        pictures_made=len(jobs) - len(notes), pictures_kept=kept, pictures_unavailable=len(notes))


# ---------------------------------------------------------------------------------------------- pictures

def _spec_key(job: str) -> str:
    return f"{pictures_prefix(job)}/job.json"


def _digest(row: dict, folder: str = "thumbs") -> str | None:
    """The name of a restored frame's pictures in `folder` (`pictures_name`); None for a frame that has none."""
    if row["status"] != "ok" or not row["output_key"] or not row["input_sha256"]:
        return None
    return pictures_name(row["input_sha256"], row["output_sha256"], folder)


def _held_name(row: dict) -> str | None:
    """The name of a held frame's review pictures (the run that held it wrote them); None for a frame not held."""
    if row["status"] != "skipped" or not row["held_for"] or not row["input_sha256"]:
        return None
    return held_pictures_name(row["input_key"], row["input_sha256"], row["mask_etag"], row["protect_etag"],
                              row["config_hash"], row["held_for"])


def _read_checked(storage: Storage, key: str, sha256: str, what: str) -> bytes:
    data = storage.get(key)
    if hashlib.sha256(data).hexdigest() != sha256:
        raise FrameError(f"the {what} at {key!r} has changed since the manifest recorded it")
    return data


def _make_pictures(input_storage: Storage, output_storage: Storage, prefix: str, spec: JobSpec, row: dict,
                   thumbs: bool, preview: bool) -> str | None:
    """Decode a still frame's original (within the job's `max_pixels`, as the run did) and make its pictures; a
    log scan's through the view its restorer saw, not its flat codes. Returns why it could not."""
    try:
        source = decode_frame(_read_checked(input_storage, row["input_key"], row["input_sha256"], "original"),
                              spec.max_pixels)
    except (StorageError, FrameError) as error:
        return f"no pictures: {error}"
    return _write_pictures(output_storage, prefix, spec.max_pixels, row, thumbs, preview, source.pixels,
                           source.orientation, source.icc_profile, spec.reads_log(source.format))


def _make_video_pictures(input_storage: Storage, output_storage: Storage, prefix: str, max_pixels: int, video: str,
                         jobs: list[tuple]) -> list[str | None]:
    """The pictures of a video's frames (`jobs` as `_make_pictures` takes them, in frame order), reading and
    decoding the video once. Returns why each frame's could not be made, or None."""
    from .video import iter_video_frames

    notes: list[str | None] = [None] * len(jobs)
    try:
        data = input_storage.get(video)
    except StorageError as error:
        return [f"no pictures: {error}"] * len(jobs)
    digest = hashlib.sha256(data).hexdigest()
    wanted = {}  # frame index -> position in jobs
    for position, (row, *_) in enumerate(jobs):
        if row["input_sha256"] == digest:
            wanted[split_frame_key(row["input_key"])[1]] = position
        else:
            notes[position] = f"no pictures: the original at {video!r} has changed since the manifest recorded it"
    try:
        for frame in iter_video_frames(data, min(wanted), max(wanted) + 1) if wanted else ():
            position = wanted.pop(frame.index, None)
            if position is not None:
                notes[position] = _write_pictures(output_storage, prefix, max_pixels, *jobs[position], frame.pixels,
                                                  1, None)
    except FrameError as error:
        notes = [note or f"no pictures: {error}" for note in notes]
    for position in wanted.values():  # not yielded by the decoder
        notes[position] = notes[position] or f"no pictures: the video {video!r} did not yield this frame"
    return notes


def _write_pictures(output_storage: Storage, prefix: str, max_pixels: int, row: dict, thumbs: bool,
                    preview: bool, original: np.ndarray, orientation: int, icc_profile: bytes | None,
                    log: bool = False) -> str | None:
    """Decode the output and audit mask of a frame whose original is decoded, and write the picture sets asked for,
    of both as shown (`as_shown`). Returns why it could not."""
    try:
        output = _read_checked(output_storage, row["output_key"], row["output_sha256"], "output")
        restored = decode_frame(output, max_pixels).pixels
        mask = decode_mask(output_storage.get(row["mask_key"]), max_pixels) if row["mask_key"] else None
    except (StorageError, FrameError) as error:
        return f"no pictures: {error}"
    original, restored = (as_shown(pixels, orientation, log) for pixels in (original, restored))
    mask = None if mask is None else as_displayed(mask, orientation)  # the audit mask lies on the stored pixels
    sets = (("previews", preview, PREVIEW_SIZE, PREVIEW_QUALITY, True),
            ("thumbs", thumbs, THUMB_SIZE, THUMB_QUALITY, False))
    try:
        for folder, wanted, long_side, quality, difference in sets:
            if wanted:
                store_pictures(output_storage, prefix, folder, _digest(row, folder), picture_set(
                    shrink(original, long_side), mask, restored, quality, icc_profile, difference))
    except (StorageError, OSError) as error:  # a picture is a view of the job, never a reason to fail it
        return f"no pictures: {error}"
    return None


# ---------------------------------------------------------------------------------------------- figures

def _public_spec(spec: JobSpec) -> dict:
    """The spec as plain data, with any user and password, and any query (a presigned token), taken out of the
    endpoint URL: reports get published. The host is kept as written (an IPv6 address keeps its brackets)."""
    raw = json.loads(json.dumps(asdict(spec)))
    if spec.endpoint_url:
        parts = urlsplit(spec.endpoint_url)
        raw["endpoint_url"] = parts._replace(netloc=parts.netloc.rpartition("@")[2], query="", fragment="").geturl()
    return raw


def run_stats(table: pa.Table) -> list[dict]:
    """Per run, newest first: frames, outcome, wall time (run start, from its id, to its last frame) and rate."""
    runs: dict[str, dict] = {}
    columns = table.select(["run_id", "status", "finished_at", "restorer", "config_hash"]).to_pydict()
    for run_id, status, finished, restorer, config in zip(*columns.values()):
        run = runs.setdefault(run_id, {"run_id": run_id, "frames": 0, "status": Counter(), "finished": finished,
                                       "restorers": set(), "configs": set()})
        run["frames"] += 1
        run["status"][status] += 1
        run["finished"] = max(run["finished"], finished)
        if restorer is not None:  # a withdrawn row restored nothing
            run["restorers"].add(restorer)
        run["configs"].add(config)
    for run in runs.values():
        run["started"] = datetime.strptime(run["run_id"][:15], "%Y%m%dT%H%M%S").replace(tzinfo=timezone.utc)
        run["seconds"] = max((run["finished"] - run["started"]).total_seconds(), 1.0)  # run ids have 1 s resolution
        run["rate"] = run["frames"] / run["seconds"]
    return sorted(runs.values(), key=lambda run: run["run_id"], reverse=True)


def _frame_rows(rows: list[dict], notes: dict[str, str]) -> list[list]:
    """One compact array per frame (see COLUMNS): 50,000 of them stay a few megabytes of JSON."""
    out = []
    for row in rows:
        digest = _digest(row)
        note = notes.get(row["input_key"])
        out.append([
            row["input_key"], row["status"], row["error"], round(row["masked_fraction"] or 0.0, 6),
            row["width"], row["height"], row["bit_depth"], None if note or not digest else digest,
            int(bool(row["mask_key"])), None if row["output_key"] == row["input_key"] else row["output_key"],
            note, row["run_id"], _damage(row) if row["status"] == "ok" else "", row["caption"] or "",
        ])
    return out


# ---------------------------------------------------------------------------------------------- HTML

def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _href(key: str) -> str:
    """A relative link to an object under the output root, for a folder and an S3 static site alike."""
    return quote(key, safe="/")


def _time(moment: datetime, shown: str = "%Y-%m-%d %H:%M") -> str:
    """A UTC time as the page states it, readable without JavaScript; the page's script adds the reader's local
    time beside it."""
    return f'<time datetime="{moment:%Y-%m-%dT%H:%M:%SZ}">{moment:{shown}} UTC</time>'


def _seconds(value: float) -> str:
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


def _card(label: str, value: str, ident: str, detail_html: str = "", kind: str = "") -> str:
    """`detail_html` is markup (it may hold a time): what it shows from the job must come escaped."""
    return (f'<div class="card {kind}"><div class="label">{_e(label)}</div>'
            f'<div class="value" id="{ident}">{_e(value)}</div><div class="detail">{detail_html}</div></div>')


def _summary(table: pa.Table, rows: list[dict], runs: list[dict], max_attempts: int) -> str:
    summary = summarize(table, max_attempts)
    status = summary.by_status
    masked = [row["masked_fraction"] for row in rows if row["status"] == "ok" and row["mask_key"]]
    cards = [
        _card("Frames", f"{summary.total:,}", "count-total", f"{summary.runs:,} {plural(summary.runs, 'run')}"),
        _card("Restored", f"{status.get('ok', 0):,}", "count-ok", _restored_detail(rows), "ok"),
        _card("Failed", f"{status.get('failed', 0):,}", "count-failed",
              ("reasons below" + (f"; {len(summary.given_up):,} given up after {max_attempts} "
                                  f"{plural(max_attempts, 'attempt')}: not tried again until they change"
                                  if summary.given_up else "")) if status.get("failed") else "none",
              "failed" if status.get("failed") else ""),
    ]
    if summary.held:  # frames that wait on a person, apart from those storage will serve another night
        cards.append(_card("Held for review", f"{len(summary.held):,}", "count-held",
                           f"unchanged until the spec says more ({_e(tally(summary.held.values()))}): reasons below",
                           "skipped"))
    if status.get("skipped", 0) > len(summary.held):
        waiting = status["skipped"] - len(summary.held)
        cards.append(_card("Skipped", f"{waiting:,}", "count-skipped",
                           "not restored yet, no fault of the file: reasons below; tried again next run", "skipped"))
    if status.get("withdrawn"):
        cards.append(_card("Withdrawn", f"{status['withdrawn']:,}", "count-withdrawn",
                           "not restored, and their originals have left the input"))
    cards.append(_card("Frames with damage masked", f"{len(masked):,}", "count-masked",
                       f"mean masked area {100 * sum(masked) / len(masked):.2f} %" if masked else "none masked"))
    if any(found["regions"] for found in summary.damage.values()):
        cards.append(_damage_card(summary.damage))
    deep = sum(row["status"] == "ok" and (row["deepest_fill_px"] or 0) > DEEP_FILL_PX for row in rows)
    if deep:
        cards.append(_card("Deep fills", f"{deep:,}", "count-deep-fills",
                           f"filled more than {DEEP_FILL_PX} px from the picture: reconstructed, not continued; "
                           "look at them", "skipped"))
    if runs:
        last = runs[0]
        cards.append(_card("Last run", _seconds(last["seconds"]), "last-run-seconds",
                           f"{last['frames']:,} {plural(last['frames'], 'frame')}, started {_time(last['started'])}"))
        cards.append(_card("Frames per second", f"{last['rate']:.2f}", "last-run-rate", "last run, wall time"))
    stage = {name: sum(row[f"{name}_seconds"] or 0.0 for row in rows)
             for name in ("read", "mask", "restore", "write")}
    cards.append(_card("Worker time", _seconds(sum(stage.values())), "worker-seconds",
                       " · ".join(f"{name} {_seconds(value)}" for name, value in stage.items())))
    return f'<section class="cards">{"".join(cards)}</section>'


def _damage(row: dict) -> str:
    """"14 specks, 2 lines": the kinds of damage a frame's mask held (restore/condition.py); empty for a row from
    before the census, or a frame that failed before its mask was made."""
    return describe({kind: row[f"{kind}_count"] or 0 for kind in KINDS})


def _damage_card(damage: dict[str, dict[str, int]]) -> str:
    """The job's condition, as a conservator's report counts it: regions of each kind of damage, and in how many of
    the restored frames (`JobSummary.damage`)."""
    regions = sum(found["regions"] for found in damage.values())
    detail = " · ".join(f'{describe({kind: found["regions"]}, explain=True)} in {found["frames"]:,} '
                        f'{plural(found["frames"], "frame")}' for kind, found in damage.items() if found["regions"])
    return _card("Damage masked", f"{regions:,}", "count-damage", _e(detail))


def _restored_detail(rows: list[dict]) -> str:
    """Status ok includes frames copied unchanged as nothing was masked (no mask file, nothing detected): say how
    many, so "restored" does not read as "cleaned"."""
    unchanged = sum(row["status"] == "ok" and not row["masked_fraction"] for row in rows)
    return f"status ok; {unchanged:,} of them unchanged, as nothing was masked" if unchanged else "status ok"


def _provenance(rows: list[dict]) -> str:
    groups = Counter((row["restorer"], row["weights_sha256"], row["mask_source"], row["config_hash"])
                     for row in rows if row["status"] == "ok")
    if not groups:
        return ""
    body = "".join(
        f'<tr><td>{_e(restorer)}</td><td class="hash">{_e(weights or "none (classical restorer)")}</td>'
        f'<td>{_e(source or "")}</td><td class="hash">{_e(config)}</td><td class="num">{count:,}</td></tr>'
        for (restorer, weights, source, config), count in groups.most_common())
    return ("<section><h2>How the frames were restored</h2><p class=\"hint\">The restorer is the method that filled "
            "the damage; the weights sha256 fingerprints the trained model file it used; the config hash fingerprints "
            "every setting that shapes the output, so frames with the same one were restored alike.</p>"
            "<div class=\"scroll\"><table class=\"plain\"><thead><tr><th>Restorer</th>"
            "<th>Weights sha256</th><th>Masks</th><th>Config hash</th><th class=\"num\">Frames</th></tr></thead>"
            f"<tbody id=\"provenance\">{body}</tbody></table></div></section>")


def _failures(rows: list[dict]) -> str:
    """The frames not restored, failed or skipped, each with its own reason: a frame is skipped for a setting the
    job must give as well as for storage, and only the reason tells which to mend."""
    failed = [row for row in rows if row["status"] in NOT_RESTORED]
    if not failed:
        return ""
    body = "".join(f'<tr><th scope="row" class="key">{_e(row["input_key"])}</th>'
                   f'<td><span class="badge {row["status"]}">{row["status"]}</span></td>'
                   f'<td class="reason">{_e(row["error"])}</td><td class="hash">{_e(row["run_id"])}</td></tr>'
                   for row in failed[:FAILURES_SHOWN])
    more = (f'<p class="more">… and {len(failed) - FAILURES_SHOWN:,} more: choose “failed” or “skipped” in the frame '
            'list.</p>' if len(failed) > FAILURES_SHOWN else "")
    badge = "failed" if any(row["status"] == "failed" for row in failed) else "skipped"
    return (f'<section><h2>Not restored <span class="badge {badge}">{len(failed):,}</span></h2>'
            '<p class="hint">Failed: the file itself could not be restored (damaged, unreadable, or its mask does not '
            'fit); mend or replace it and run the job again. Skipped: no fault of the file (storage, a master waiting '
            'in archival storage, or a setting the job must give): tried again on every run, but a frame '
            'held for a setting waits until the spec gives it or its mask changes.</p>'
            '<div class="scroll"><table class="plain"><thead><tr><th scope="col">Frame</th><th scope="col">Status</th>'
            '<th scope="col">Reason</th><th scope="col">Run</th></tr></thead>'
            f'<tbody id="failures">{body}</tbody></table></div>{more}</section>')


def _held(rows: list[dict], held: dict[str, tuple[str, list[str]]], prefix: str) -> str:
    """Frames held for review, each with what would have been repainted: the reviewer sees whether the mask is
    drawn inverted, whether the detector took lettering or stars for dust, or which way a turned frame's mask lies,
    and so what the spec must say, without fetching a master. `held`: the pictures the runs wrote, by frame (their
    name, and the readings of its masks they show)."""
    waiting = [row for row in rows if row["status"] == "skipped" and row["held_for"]]
    shown = [row for row in waiting if row["input_key"] in held][:HELD_SHOWN]
    if not shown:
        return ""
    cards = []
    for row in shown:
        name, readings = held[row["input_key"]]
        key, picture = _e(row["input_key"]), f"{prefix}/held/{name}"
        views = [(f"{picture}-{reading}.jpg", f"with {REVIEW_READINGS[reading]}",
                  f"{row['input_key']} with {REVIEW_READINGS[reading]} tinted magenta and outlined in black and white")
                 for reading in readings] + [(f"{picture}-o.jpg", "original", f"original of {row['input_key']}")]
        pictures = "".join(f'<figure><a href="{src}"><img src="{src}" alt="{_e(alt)}" loading="lazy"></a>'
                           f'<figcaption>{_e(label)}</figcaption></figure>' for src, label, alt in views)
        caption = f'<p class="caption">{_e(row["caption"])}</p>' if row["caption"] else ""
        cards.append(f'<article class="held-card"><h3><span class="key">{key}</span> <span class="meta">waits for '
                     f'<code>{_e(row["held_for"])}</code></span></h3>{caption}<div class="held-pictures">{pictures}'
                     f'</div><p class="reason">{_e(row["error"])}</p></article>')
    more = len(waiting) - len(shown)
    rest = (f'<p class="more">… and {more:,} more {plural(more, "frame")} held: their reasons are in the Not '
            'restored table and the frame list (a frame held by a run before restore 0.7.0, or one whose pictures '
            'could not be made, has no pictures).</p>' if more else "")
    return (f'<section><h2>Held for review <span class="badge skipped">{len(waiting):,}</span></h2>'
            '<p class="hint">Nothing was written for these frames: restored as the job stands, most of the picture '
            'would have been repainted, or the job must say which way their masks lie. The pixels a restore would '
            'change (for a protect mask, keep) are tinted magenta and outlined in black and white dashes. Give the '
            'setting each one waits for (or mend its mask): the next run reads it again.</p>'
            f'<div class="held-grid">{"".join(cards)}</div>{rest}</section>')


def _compare(rows: list[dict], compare: set[str], notes: dict[str, str], prefix: str) -> str:
    chosen = sorted((row for row in rows if row["input_key"] in compare and row["input_key"] not in notes),
                    key=lambda row: (-row["masked_fraction"], row["input_key"]))
    if not chosen:
        return ""
    cards = []
    for index, row in enumerate(chosen):
        picture = f"{prefix}/previews/{_digest(row, 'previews')}"
        key = _e(row["input_key"])
        # what the left of the line shows: (picture, choice's label, tag on the picture, the picture's alt text)
        views = ((f"{picture}-o.jpg", "original", "original", f"original of {key}"),
                 (f"{picture}-m.jpg", "mask", "original + mask",
                  f"original with the restored pixels tinted magenta and outlined in black and white, of {key}"),
                 (f"{picture}-d.jpg", f"difference ×{DIFFERENCE_GAIN}", f"difference ×{DIFFERENCE_GAIN}",
                  f"difference between restored and original ×{DIFFERENCE_GAIN}, black where unchanged, of {key}"))
        choices = "".join(
            f'<label><input type="radio" name="left-{index}" value="{src}" data-tag="{tag}" data-alt="{alt}"'
            f'{" checked" if position == 0 else ""}> {label}</label>'
            for position, (src, label, tag, alt) in enumerate(views))
        deepest = f", filled up to {row['deepest_fill_px']:.0f} px deep" if row["deepest_fill_px"] else ""
        damage = f" ({found})" if (found := _damage(row)) else ""
        width, height = fit(row["width"], row["height"], PREVIEW_SIZE)
        shown = "full resolution" if width == row["width"] else f"shown at {width}×{height}"
        caption = f'<span class="caption">{_e(row["caption"])}</span>' if row["caption"] else ""
        cards.append(f"""<figure class="compare-card">
<figcaption><span class="key">{key}</span>{caption}
<span class="meta">{100 * row["masked_fraction"]:.2f} % masked{damage}{deepest} · {row["width"]}×{row["height"]} px,
{row["bit_depth"]}-bit · {shown}</span></figcaption>
<div class="viewport"><div class="compare" style="--pos:50%;max-width:{width}px">
<img class="before" src="{picture}-o.jpg" alt="original of {key}" loading="lazy" width="{width}" height="{height}">
<img class="after" src="{picture}-r.jpg" alt="restored {key}" loading="lazy" width="{width}" height="{height}">
<span class="tag left">original</span><span class="tag right">restored</span></div></div>
<div class="controls"><input type="range" min="0" max="100" value="50" aria-valuetext="50 % original shown"
 aria-label="divide original and restored of {key}">
<fieldset class="left-view"><legend>Left of the line</legend>{choices}</fieldset>
<label><input type="checkbox" class="actual"> actual size</label>
<span><a href="{_href(row["output_key"])}">full-resolution output</a> · <a href="{_href(row["mask_key"])}">mask</a> ·
<a href="{picture}-d.jpg">difference picture</a></span></div>
</figure>""")
    return ('<section><h2>Largest damaged areas</h2><p class="hint">Drag the slider to compare; the original is on the '
            'left of the line. “mask” tints magenta every pixel the mask let the restorer change, and outlines '
            'them in black and white dashes. “difference” shows how much each pixel did change, '
            f'×{DIFFERENCE_GAIN}: black where it is unchanged, white where a value changed by '
            f'{256 // DIFFERENCE_GAIN} levels (of 255) or more.</p>'
            f'<div class="compare-grid">{"".join(cards)}</div></section>')


def _runs(runs: list[dict]) -> str:
    if not runs:
        return ""
    body = "".join(
        f'<tr><td class="hash">{_e(run["run_id"])}</td><td>{_time(run["started"], "%Y-%m-%d %H:%M:%S")}</td>'
        f'<td class="num">{run["frames"]:,}</td><td class="num">{run["status"].get("ok", 0):,}</td>'
        f'<td class="num">{run["status"].get("failed", 0):,}</td>'
        f'<td class="num">{run["status"].get("skipped", 0):,}</td>'
        f'<td class="num">{run["status"].get(WITHDRAWN, 0):,}</td><td class="num">{_seconds(run["seconds"])}</td>'
        f'<td class="num">{run["rate"]:.2f}</td><td>{_e(", ".join(sorted(run["restorers"])))}</td>'
        f'<td class="hash">{_e(", ".join(sorted(run["configs"])))}</td></tr>' for run in runs[:RUNS_SHOWN])
    earlier = len(runs) - RUNS_SHOWN
    more = f'<p class="more">… and {earlier:,} earlier {plural(earlier, "run")}.</p>' if earlier > 0 else ""
    return ("<section><h2>Runs</h2><p class=\"hint\">Times are UTC; where the page's script runs, each is followed "
            "by your local time. A run's id is the moment it started, and names its records under "
            "<code>_manifests/</code>.</p><div class=\"scroll\"><table class=\"plain\"><thead><tr><th>Run</th>"
            "<th>Started</th><th class=\"num\">Frames</th><th class=\"num\">OK</th><th class=\"num\">Failed</th>"
            "<th class=\"num\">Skipped</th><th class=\"num\">Withdrawn</th><th class=\"num\">Wall time</th>"
            "<th class=\"num\">Frames/s</th><th>Restorer</th><th>Config hash</th></tr></thead>"
            f"<tbody id=\"runs\">{body}</tbody></table></div>{more}</section>")


def render_report(spec: JobSpec, table: pa.Table, rows: list[dict], notes: dict[str, str], compare: set[str],
                  generated: datetime, held: dict[str, tuple[str, list[str]]] | None = None) -> str:
    """The whole page as one string; pure, so tests can render it without storage."""
    prefix = pictures_prefix(spec.name)
    runs = run_stats(table)
    data = json.dumps({"columns": COLUMNS, "rows": _frame_rows(rows, notes), "pictures": f"{prefix}/thumbs/"},
                      separators=(",", ":")).replace("<", "\\u003c")  # no "</script>" can end the blob early
    config = yaml.safe_dump(_public_spec(spec), sort_keys=False, allow_unicode=True)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(spec.name)} · restoration report</title><style>{CSS}</style></head>
<body data-images-loaded="0" data-images-broken="0">
<header><h1>Restoration report <span class="job">{_e(spec.name)}</span></h1>
<p>Output <code>{_e(spec.output)}</code> · input <code>{_e(spec.input)}</code> ·
generated {_time(generated)}</p></header>
<main>
{_summary(table, rows, runs, spec.max_attempts)}
{_failures(rows)}
{_held(rows, held or {}, prefix)}
{_provenance(rows)}
{_compare(rows, compare, notes, prefix)}
<section><h2>Frames</h2>
<div class="toolbar"><label>Status <select id="status-filter"></select></label>
<label>Frame <input id="search" type="search" placeholder="part of the name or caption"></label>
<label>Order <select id="order"><option value="key">by name</option><option value="masked">largest masked area first</option></select></label>
<span class="pager"><button id="prev" type="button">‹ previous</button> <span id="page-info" role="status"></span> <button id="next" type="button">next ›</button></span></div>
<noscript><p>The frame list needs JavaScript; every frame's record is in the manifests under <code>_manifests/</code>.</p></noscript>
<div class="scroll"><table id="frame-table"><thead><tr><th>Frame</th><th>Status</th><th class="num">Masked</th><th>Original</th><th>Damage mask</th><th>Restored</th></tr></thead><tbody></tbody></table></div>
</section>
{_runs(runs)}
<section><h2>Job configuration</h2><pre id="job-config">{_e(config)}</pre></section>
</main>
<script type="application/json" id="frame-data">{data}</script>
<script>{JS}</script>
</body></html>
"""


CSS = """
:root{--ok:#1a7f37;--failed:#c62828;--skipped:#8a6d00;--ink:#1f2328;--muted:#59636e;--line:#d8dde3;--mat:#3b3b3b}
*{box-sizing:border-box}
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--ink);background:#f3f3f1}
header{background:#1f2328;color:#f3f3f1;padding:18px 28px}
header h1{margin:0;font-size:22px;font-weight:600}
header .job{font-weight:400;color:#c9d1d9;margin-left:6px}
header p{margin:4px 0 0;color:#aab3bd;font-size:13px}
header code{color:#e6edf3}
main{padding:8px 28px 40px;max-width:1500px}
h2{font-size:18px;margin:28px 0 10px}
section{margin-bottom:8px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:12px;margin-top:18px}
.card{background:#fff;border:1px solid var(--line);border-left:5px solid #8c959f;border-radius:6px;padding:10px 14px}
.card.ok{border-left-color:var(--ok)}.card.failed{border-left-color:var(--failed)}.card.skipped{border-left-color:var(--skipped)}
.card .label{font-size:12px;text-transform:uppercase;letter-spacing:.04em;color:var(--muted)}
.card .value{font-size:24px;white-space:nowrap;font-weight:600;font-variant-numeric:tabular-nums}
.card.failed .value{color:var(--failed)}
.card .detail{font-size:12px;color:var(--muted)}
table{border-collapse:collapse;background:#fff;border:1px solid var(--line);width:100%}
th,td{padding:6px 10px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
th{background:#eaecef;font-size:13px;font-weight:600}
.num{text-align:right;font-variant-numeric:tabular-nums}
.hash,code,pre{font-family:ui-monospace,"SFMono-Regular",Menlo,Consolas,monospace;font-size:12.5px}
.hash{word-break:break-all;color:#3d444d}
.key{font-weight:600;word-break:break-all}
.caption{font-style:italic;color:var(--ink);font-size:13px;max-width:46ch}
.reason{color:var(--failed)}
.more,.hint{color:var(--muted);font-size:13px}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;color:#fff;background:#59636e;vertical-align:middle}
.badge.ok{background:var(--ok)}.badge.failed{background:var(--failed)}.badge.skipped{background:var(--skipped)}
pre{background:#fff;border:1px solid var(--line);padding:12px;overflow:auto}
.compare-grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(360px,100%),1fr));gap:16px}
.scroll{overflow-x:auto}
.held-grid{display:grid;gap:16px}
.held-card{background:#fff;border:1px solid var(--line);border-left:5px solid var(--skipped);border-radius:6px;padding:10px}
.held-card h3{margin:0 0 8px;font-size:15px;display:flex;flex-wrap:wrap;justify-content:space-between;gap:4px}
.held-pictures{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(300px,100%),1fr));gap:10px;align-items:start}
.held-pictures figure{margin:0;background:var(--mat);line-height:0}
.held-pictures img{display:block;max-width:100%;max-height:60vh;margin:0 auto}
.held-pictures figcaption{line-height:1.4;padding:4px 6px;background:#fff;font-size:13px;color:var(--muted)}
.held-card .reason{margin:8px 0 0;font-size:13px}
.compare-card{margin:0;background:#fff;border:1px solid var(--line);border-radius:6px;padding:10px}
.compare-card figcaption{display:flex;flex-wrap:wrap;justify-content:space-between;gap:4px;margin-bottom:6px}
.meta{color:var(--muted);font-size:13px}
.viewport{background:var(--mat);overflow:auto;max-height:80vh}
.compare{position:relative;line-height:0;margin:0 auto}
.compare img{display:block;width:100%;height:auto}
.compare .after{position:absolute;inset:0;clip-path:inset(0 0 0 var(--pos))}
.compare::after{content:"";position:absolute;top:0;bottom:0;left:var(--pos);border-left:2px solid #fff;box-shadow:0 0 3px #000}
.viewport.actual .compare{width:max-content}
.viewport.actual .compare img{width:auto;max-width:none}
.tag{position:absolute;top:6px;padding:2px 6px;background:rgba(0,0,0,.6);color:#fff;font-size:12px;line-height:1.3;border-radius:3px}
.tag.left{left:6px}.tag.right{right:6px}
.controls{display:flex;flex-wrap:wrap;align-items:center;gap:12px;margin-top:8px;font-size:13px}
.controls input[type=range]{flex:1;min-width:160px}
.left-view{display:flex;flex-wrap:wrap;gap:10px;border:0;margin:0;padding:0}
.left-view legend{float:left;margin-right:4px;padding:0}
td .local{display:block;color:var(--muted)}
.toolbar{display:flex;flex-wrap:wrap;gap:16px;align-items:center;margin-bottom:10px;font-size:14px}
.toolbar select,.toolbar input,.toolbar button{font:inherit;padding:3px 6px}
.pager{margin-left:auto}
#frame-table td.pic{background:var(--mat);width:172px;text-align:center;vertical-align:middle;padding:6px}
#frame-table td.pic img{max-width:160px;max-height:120px;display:block;margin:auto}
#frame-table td.pic.none{color:#c9d1d9;font-size:12px}
#frame-table td.error{color:var(--failed);vertical-align:middle}
.sub{color:var(--muted);font-size:12px}
a{color:#0b5cad}
"""

JS = """
(function () {
  "use strict";
  // Renders the frame list from the JSON blob, PAGE rows at a time, and counts loaded and broken images on <body>.
  var PAGE = 100;
  var data = JSON.parse(document.getElementById("frame-data").textContent);
  var C = {};
  data.columns.forEach(function (name, i) { C[name] = i; });
  var all = data.rows, shown = all, page = 0;
  var tbody = document.querySelector("#frame-table tbody");
  var statusFilter = document.getElementById("status-filter");
  var search = document.getElementById("search");
  var order = document.getElementById("order");

  function href(key) { return key.split("/").map(encodeURIComponent).join("/"); }
  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    for (var name in attrs) node.setAttribute(name, attrs[name]);
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function picture(row, kind, alt, link) {
    var td = el("td", {"class": "pic"});
    var img = el("img", {src: data.pictures + row[C.pictures] + "-" + kind + ".jpg", alt: alt + " " + row[C.key], loading: "lazy"});
    if (link) { var a = el("a", {href: link, title: "open the full-resolution output"}); a.appendChild(img); td.appendChild(a); }
    else td.appendChild(img);
    return td;
  }
  function frameRow(row) {
    var tr = el("tr");
    var name = el("td");
    name.appendChild(el("div", {"class": "key"}, row[C.key]));
    if (row[C.caption]) name.appendChild(el("div", {"class": "caption"}, row[C.caption]));
    if (row[C.width]) name.appendChild(el("div", {"class": "sub"}, row[C.width] + "×" + row[C.height] + ", " + row[C.bits] + "-bit · run " + row[C.run]));
    tr.appendChild(name);
    var status = el("td");
    status.appendChild(el("span", {"class": "badge " + row[C.status]}, row[C.status]));
    tr.appendChild(status);
    var masked = el("td", {"class": "num"}, row[C.status] === "ok" ? (100 * row[C.masked]).toFixed(2) + " %" : "–");
    if (row[C.damage]) masked.appendChild(el("div", {"class": "sub"}, row[C.damage]));
    tr.appendChild(masked);
    if (row[C.pictures]) {
      tr.appendChild(picture(row, "o", "original"));
      if (row[C.has_mask]) tr.appendChild(picture(row, "m", "mask over"));
      else tr.appendChild(el("td", {"class": "pic none"}, "nothing masked: copied unchanged"));
      tr.appendChild(picture(row, "r", "restored", href(row[C.output] || row[C.key])));
    } else {
      tr.appendChild(el("td", {colspan: 3, "class": row[C.error] ? "error" : "pic none"}, row[C.error] || row[C.note] || "no pictures"));
    }
    return tr;
  }
  function render() {
    var pages = Math.max(1, Math.ceil(shown.length / PAGE));
    page = Math.min(Math.max(page, 0), pages - 1);
    var start = page * PAGE, rows = shown.slice(start, start + PAGE);
    tbody.replaceChildren.apply(tbody, rows.map(frameRow));
    document.getElementById("page-info").textContent = shown.length
      ? "frames " + (start + 1) + "–" + (start + rows.length) + " of " + shown.length.toLocaleString("en")
      : "no frames match";
    document.getElementById("prev").disabled = page === 0;
    document.getElementById("next").disabled = page >= pages - 1;
    document.body.setAttribute("data-rows-rendered", rows.length);
  }
  function apply() {
    var status = statusFilter.value, text = search.value.toLowerCase();
    shown = all.filter(function (row) {
      return (!status || row[C.status] === status) && (!text || row[C.key].toLowerCase().indexOf(text) >= 0
        || row[C.caption].toLowerCase().indexOf(text) >= 0);
    });
    if (order.value === "masked") shown = shown.slice().sort(function (a, b) { return b[C.masked] - a[C.masked]; });
    page = 0;
    render();
  }
  var counts = {};
  all.forEach(function (row) { counts[row[C.status]] = (counts[row[C.status]] || 0) + 1; });
  statusFilter.appendChild(el("option", {value: ""}, "all (" + all.length.toLocaleString("en") + ")"));
  Object.keys(counts).sort().forEach(function (status) {
    statusFilter.appendChild(el("option", {value: status}, status + " (" + counts[status].toLocaleString("en") + ")"));
  });
  statusFilter.onchange = search.oninput = order.onchange = apply;
  document.getElementById("prev").onclick = function () { page -= 1; render(); };
  document.getElementById("next").onclick = function () { page += 1; render(); };
  render();
  document.body.setAttribute("data-first-page-ms", Math.round(performance.now()));

  document.querySelectorAll(".compare-card").forEach(function (card) {
    var compare = card.querySelector(".compare"), before = card.querySelector(".before");
    var tag = card.querySelector(".tag.left");
    card.querySelector("input[type=range]").oninput = function (event) {
      compare.style.setProperty("--pos", event.target.value + "%");
      event.target.setAttribute("aria-valuetext", event.target.value + " % original shown");
    };
    card.querySelectorAll(".left-view input").forEach(function (choice) {
      choice.onchange = function () {
        before.src = choice.value;
        before.alt = choice.dataset.alt;
        tag.textContent = choice.dataset.tag;
      };
      if (choice.checked) choice.onchange();  // a browser may keep the choice made before a reload
    });
    card.querySelector(".actual").onchange = function (event) { card.querySelector(".viewport").classList.toggle("actual", event.target.checked); };
  });

  // Each UTC time also in the reader's own time zone; without this script the UTC time stands alone.
  var zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
  function pad(number) { return (number < 10 ? "0" : "") + number; }
  document.querySelectorAll("time[datetime]").forEach(function (time) {
    var at = new Date(time.getAttribute("datetime"));
    var local = at.getFullYear() + "-" + pad(at.getMonth() + 1) + "-" + pad(at.getDate()) + " " + pad(at.getHours())
      + ":" + pad(at.getMinutes());
    time.after(el("span", {"class": "local"}, " (" + local + " your time, " + zone + ")"));
  });

  function countImages() {
    var loaded = 0, broken = 0;
    document.querySelectorAll("img").forEach(function (img) {
      if (img.complete) { if (img.naturalWidth > 0) loaded += 1; else broken += 1; }
    });
    document.body.setAttribute("data-images-loaded", loaded);
    document.body.setAttribute("data-images-broken", broken);
  }
  document.addEventListener("load", countImages, true);
  document.addEventListener("error", countImages, true);
  window.addEventListener("load", countImages);
})();
"""
