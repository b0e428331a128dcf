"""Job specs: YAML in, typed and validated dataclasses out.

Every mistake is collected and reported together, each naming its field, before any work starts.
"""
from __future__ import annotations

import hashlib
import json
import math
import posixpath
import reprlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml

from .storage import StorageError, UnsafeKeyError, check_no_overlap, safe_key

CLASSICAL_RESTORERS = ("telea", "navier-stokes", "harmonic")  # fills without a model
RESTORERS = ("gan",) + CLASSICAL_RESTORERS  # the inpainting methods
RESTORER_NAMES = RESTORERS + ("none",)  # "none" copies frames through unchanged: the pipeline's I/O-bound ceiling
GRAIN = ("auto", "match", "none")  # restorer.grain: fills get the frame's grain in film scans, every frame, or none
GRAINY_FORMATS = ("DPX", "EXR", "VIDEO")  # film scans, with a log job's stills; other stills are mostly prints
# both = the union of the given mask and the detected one; given-else-detect = the given mask where a frame has one,
# detection for the others (an archive's hand masks of its worst frames, found damage for the rest)
MASK_SOURCES = ("given", "detect", "both", "given-else-detect")
DETECTOR_NAMES = ("classical", "temporal", "learned")  # learned: the U-Net shipped in restore/weights
# A job may also take its mask from the infrared plane of RGBI film scans, which eval-detect's pictures lack.
MASK_DETECTORS = DETECTOR_NAMES + ("infrared",)
MAX_DILATE = 1000  # px a mask may grow by: more covers a whole scan, and the disc would not fit in memory
MAX_RADIUS = 100  # px of the classical fills' neighbourhood
MASK_ORIENTATIONS = ("displayed", "stored")  # how given masks of a frame with an EXIF Orientation were drawn
OUTPUT_FORMATS = ("same", "png", "tiff", "jpeg", "dpx", "exr")
JPEG_QUALITY = 95  # output_format jpeg, unless jpeg_quality says otherwise
# How a PNG's or TIFF's code values relate to light: display (gamma-encoded, as photographs are) or log (Cineon
# printing density scaled to 16 bits, as film scanners write log scans into TIFF). DPX and EXR say it themselves.
TRANSFERS = ("display", "log")
# S3 storage classes outputs and audit masks may be written in: those read at once (verify and the report read them)
OUTPUT_STORAGE_CLASSES = ("STANDARD", "STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING", "GLACIER_IR")
# S3 retrieval tiers a job may ask archived originals back with: Bulk is the cheapest (hours; up to 48 from Deep
# Archive), Expedited the dearest (minutes; Glacier Flexible Retrieval only)
RESTORE_TIERS = ("Bulk", "Standard", "Expedited")
DEFAULT_INCLUDE = ("*.png", "*.jpg", "*.jpeg", "*.tif", "*.tiff", "*.dpx", "*.exr")  # videos only when named
# Never frames, whatever a job includes: the AppleDouble companions macOS writes beside every file it copies to a
# share or a USB disk ("._scan.jpg", metadata named like the picture), which would fail every night
NEVER_FRAMES = ("._*",)
DEFAULT_MAX_PIXELS = 180_000_000


class SpecError(ValueError):
    """A job spec that does not validate; `problems` lists one 'field: what was expected' per mistake."""

    def __init__(self, source: str, problems: list[str]):
        self.problems = problems
        super().__init__(f"invalid job spec {source}:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True)
class MaskSettings:
    source: str = "given"
    uri: str | None = None  # where given masks live; defaults to the input
    pattern: str = "{dir}/masks/{stem}.png"  # key of a frame's mask; {stem}, {name}, {dir} are the frame key's parts
    dilate: int = 0  # grow every mask by this many pixels
    required: bool = False  # a frame without a mask file fails instead of passing through unchanged
    detector: str = "classical"  # with a source that detects; "temporal" compares neighbours (needs
    # sequence.window >= 1), "infrared" reads the infrared plane of RGBI TIFF scans (a frame without one fails)
    min_area: int = 0  # detected regions smaller than this (pixels) are dropped
    # a frame whose detected damage covers more than this share of it is held (skipped, nothing written): so much is
    # more likely content a detector mistakes for damage (lettering, stars, fine lines) than damage; 1.0 = never held
    max_detected: float = 0.05
    # a frame whose given mask marks more than this share of it is held the same way: most likely a mask drawn the
    # other way round (damage black on white, as an editor's layer mask shows it); 1.0 = never held
    max_given: float = 0.5
    invert: bool = False  # given masks mark the damage black on white (protect masks are read as they are)
    protect: str | None = None  # pattern like pattern: regions never to change (stamps, signatures), overriding all
    # pixels along each edge of a frame that no mask may change, as protect: a glass plate's binding tape and clear
    # rebate, a print's mount, a film scan's frame line, which detectors take for damage and fills round off
    border: int = 0
    temporal_fill: bool = False  # copy masked pixels from the motion-compensated neighbours where they agree first
    detector_weights: str | None = None  # learned: a file from `restore train-detector`; None = the shipped one
    # given and protect masks of frames whose EXIF/TIFF Orientation turns them for display: "displayed" (drawn on
    # the picture as viewers show it) or "stored" (on the pixels as stored); None = not said: such frames are
    # skipped until it is
    orientation: str | None = None

    @property
    def reads_given(self) -> bool:
        return self.source != "detect"

    @property
    def file_patterns(self) -> list[str]:
        """The mask files whose ETags a frame's rows record: the given mask's, then the protected region's if any."""
        return [self.pattern] + ([self.protect] if self.protect else [])

    @property
    def read_patterns(self) -> list[str]:
        """Those of `file_patterns` whose files this job reads."""
        return self.file_patterns[:1] * self.reads_given + self.file_patterns[1:]


@dataclass(frozen=True)
class RestorerSettings:
    # The shipped GAN leads Telea and Navier–Stokes on every mask class in `restore eval` (see
    # restore/weights/MODEL_CARD.md); Telea is 6-24x faster on a CPU, for a collection where speed comes first.
    name: str = "gan"
    weights: str | None = None  # a generator file; None = the weights shipped in the package
    weights_sha256: str | None = None  # pin: refuse any other weights
    radius: int = 3  # telea and navier-stokes: their neighbourhood
    tile: int = 512  # GAN tile size
    overlap: int = 64  # GAN tile overlap
    context: int = 32  # GAN: pixels of surroundings every hole gets at least (thick holes get more)
    grain: str = "none"  # one of GRAIN: see JobSpec.regrains


@dataclass(frozen=True)
class WorkerSettings:
    count: int = 1
    cpus: float = 1.0
    gpus: float = 0.0


@dataclass(frozen=True)
class ArchiveRestoreSettings:
    """Originals in Glacier or Deep Archive that a run would read are asked back (S3 RestoreObject), so a later run
    restores them: the restored copy stays `days` days; `tier` sets the price and the wait."""

    days: int = 7
    tier: str = "Bulk"


@dataclass(frozen=True)
class SequenceSettings:
    """Frames under one folder form an ordered sequence; stages that need neighbours see `window` frames each side."""

    window: int = 0


@dataclass(frozen=True)
class JobSpec:
    name: str
    input: str
    output: str
    endpoint_url: str | None = None
    include: tuple[str, ...] = DEFAULT_INCLUDE
    exclude: tuple[str, ...] = ()  # keys left out although included (and NEVER_FRAMES, always)
    masks: MaskSettings = field(default_factory=MaskSettings)
    restorer: RestorerSettings = field(default_factory=RestorerSettings)
    output_format: str = "same"
    jpeg_quality: int = JPEG_QUALITY  # output_format jpeg: the encoder's quality (4:4:4 chroma whatever it is)
    transfer: str = "display"
    output_storage_class: str | None = None  # S3: outputs and audit masks (not manifests); None = the bucket's default
    archive_restore: ArchiveRestoreSettings | None = None  # S3 input: ask archived originals back; None = never
    max_pixels: int = DEFAULT_MAX_PIXELS
    batch_size: int = 4
    workers: WorkerSettings = field(default_factory=WorkerSettings)
    sequence: SequenceSettings = field(default_factory=SequenceSettings)
    commit_every: int = 64  # rows per committed part, at least: what a killed run may have to restore again
    max_attempts: int = 3  # a frame that failed this many times is left alone until it changes (0 = retry forever)

    @property
    def uses_neighbours(self) -> bool:
        """A temporal detector or temporal fill: what a frame becomes depends on `sequence.window` frames each side."""
        return self.masks.temporal_fill or (self.masks.source != "given" and self.masks.detector == "temporal")

    def reads_log(self, source_format: str) -> bool:
        """Whether frames of this format hold log codes (`transfer: log`), which single-frame detectors, restorers
        and the report see through the view a DPX gets (a DPX or EXR says its own transfer; a video is display).
        The temporal detector and temporal fill compare a frame with its neighbours in the codes themselves."""
        return self.transfer == "log" and source_format not in ("DPX", "EXR", "VIDEO")

    def regrains(self, source_format: str) -> bool:
        """Whether the restorer's fills in frames of this format get the frame's film grain (restore.grain): a
        fill is the plausible mean, grain-free, and on a grainy scan it shows as a smooth stripe or smudge."""
        if self.restorer.name == "none":  # nothing is filled
            return False
        if self.restorer.grain == "auto":
            return source_format in GRAINY_FORMATS or self.transfer == "log"
        return self.restorer.grain == "match"

    def output_settings(self, weights_sha256: str | None, detector_sha256: str | None = None) -> dict[str, Any]:
        """What changes the output bytes, and nothing else: worker counts must never reprocess an archive.

        `detector_sha256` is that of the learned detector's weights, when a job uses it: retrained weights find
        other damage, so they reprocess the frames.
        """
        restorer = asdict(self.restorer)
        restorer.pop("weights")
        restorer.pop("weights_sha256")
        # none, the default, hashes as before the setting existed, so jobs that never set it keep their hash; so
        # does any value where nothing is filled
        grain = restorer.pop("grain")
        if self.restorer.name != "none" and grain != "none":
            restorer["grain"] = grain
        if self.restorer.name != "gan":
            restorer.pop("tile")
            restorer.pop("overlap")
            restorer.pop("context")
        masks = asdict(self.masks)
        masks.pop("uri")
        masks.pop("detector_weights")
        masks.pop("max_detected")  # holds frames back, changes no output
        masks.pop("max_given")
        if not masks["invert"]:
            masks.pop("invert")  # so jobs that never set it keep the hash they had before it existed
        if detector_sha256:
            masks["detector_sha256"] = detector_sha256
        if self.masks.source == "given":
            masks.pop("detector")
            masks.pop("min_area")
        if not masks["border"]:
            masks.pop("border")  # so jobs that never set it keep the hash they had before it existed
        if not masks["temporal_fill"]:
            masks.pop("temporal_fill")  # so jobs that never used it keep the hash they had before it existed
        if masks["orientation"] in (None, "stored"):  # stored is how masks were read before the setting existed
            masks.pop("orientation")
        settings = {
            "restorer": restorer,
            "weights_sha256": weights_sha256,
            "masks": masks,
            "output_format": self.output_format,
        }
        if self.jpeg_quality != JPEG_QUALITY:  # jobs from before the setting keep their hash
            settings["jpeg_quality"] = self.jpeg_quality
        if self.transfer != "display":  # jobs from before the setting keep their hash
            settings["transfer"] = self.transfer
        if self.uses_neighbours:
            settings["sequence"] = asdict(self.sequence)
        return settings

    def config_hash(self, weights_sha256: str | None, detector_sha256: str | None = None) -> str:
        canonical = json.dumps(self.output_settings(weights_sha256, detector_sha256), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


_TOP_FIELDS = {
    "name", "input", "output", "endpoint_url", "include", "exclude", "masks", "restorer", "output_format",
    "jpeg_quality", "transfer",
    "output_storage_class", "archive_restore", "max_pixels", "batch_size", "workers", "sequence", "commit_every",
    "max_attempts",
}


class _Checker:
    """Reads one mapping, recording a problem per bad field instead of stopping at the first."""

    def __init__(self, problems: list[str]):
        self.problems = problems

    def section(self, raw: dict, name: str, allowed: set[str]) -> dict:
        value = raw.get(name, {})
        if value is None:
            return {}
        if not isinstance(value, dict):
            hint = f" (write `{name}: {{name: {value}}}`)" if isinstance(value, str) and "name" in allowed else ""
            self.problems.append(f"{name}: expected a mapping, got {type(value).__name__}{hint}")
            return {}
        for unknown in sorted(set(value) - allowed):
            self.problems.append(f"{name}.{unknown}: unknown field (expected one of {', '.join(sorted(allowed))})")
        return value

    def string(self, raw: dict, name: str, path: str, default=None, required=False, choices=None):
        if name not in raw or raw[name] is None:
            if required:
                self.problems.append(f"{path}: required, expected a string")
            return default
        value = raw[name]
        if not isinstance(value, str) or not value.strip():
            self.problems.append(f"{path}: expected a non-empty string, got {shown(value)}")
            return default
        if choices and value not in choices:
            self.problems.append(f"{path}: expected one of {', '.join(choices)}, got {shown(value)}")
            return default
        return value

    def number(self, raw: dict, name: str, path: str, default, kind=int, minimum=0, maximum=None):
        if name not in raw or raw[name] is None:
            return default
        value = raw[name]
        ok_types = (int,) if kind is int else (int, float)
        top = math.inf if maximum is None else maximum
        # `not minimum <= value <= top` also refuses NaN, which fails every comparison (inf fails `<= top` unless
        # there is no maximum: isfinite, on floats only, as YAML's long integers overflow it)
        if isinstance(value, bool) or not isinstance(value, ok_types) or not minimum <= value <= top \
                or (isinstance(value, float) and not math.isfinite(value)):
            expected = "an integer" if kind is int else "a number"
            within = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
            self.problems.append(f"{path}: expected {expected} {within}, got {shown(value)}")
            return default
        return kind(value)

    def boolean(self, raw: dict, name: str, path: str, default: bool) -> bool:
        value = raw.get(name, default)
        if not isinstance(value, bool):
            self.problems.append(f"{path}: expected true or false, got {shown(value)}")
            return default
        return value


def shown(value: Any) -> str:
    """A spec's value in a message, cut short: YAML aliases can nest a few bytes into a value whose repr is
    gigabytes."""
    short = reprlib.Repr()
    short.maxstring = short.maxother = 80
    short.maxlist = short.maxdict = 4
    short.maxlevel = 2
    return short.repr(value)


def _resolve_uri(uri: str | None, base: Path) -> str | None:
    """Local paths in a spec are relative to the spec file, so a job means the same from any directory."""
    if uri is None or uri.startswith("s3://"):
        return uri
    path = unquote(urlsplit(uri).path) if uri.startswith("file://") else uri  # file:///my%20scans → /my scans
    return str((base / path).resolve())


def _patterns(value, name: str, example: str, problems: list[str], default: tuple[str, ...]) -> tuple[str, ...]:
    """A spec's glob patterns: a list of non-empty strings (one alone may be written bare); include needs one at
    least (its default has some), exclude none (`exclude:` left empty is none)."""
    patterns = [value] if isinstance(value, str) else value
    if not isinstance(patterns, list) or not all(isinstance(p, str) and p for p in patterns) \
            or (default and not patterns):
        problems.append(f"{name}: expected a list of glob patterns such as {example}, got {shown(value)}")
        return default
    return tuple(patterns)


def _check_file_uri(problems: list[str], label: str, uri: str | None) -> None:
    if uri and uri.startswith("file://") and urlsplit(uri).netloc not in ("", "localhost"):
        problems.append(f"{label}: a file URI names no host: expected file:///path or a plain path, got {shown(uri)}")


def _check_key_pattern(problems: list[str], label: str, pattern: str | None, beside_frames: bool) -> None:
    """A mask or protect pattern is filled in for every frame: a mistake in it is a spec error, not a traceback.
    (A protect pattern may name one file for every frame: a stamp in the same place on each.)"""
    try:
        if pattern:  # filled in and normalised as jobs do (pipeline.mask_key_for): `{dir}/../masks/` is valid
            key = posixpath.normpath(pattern.format(stem="frame", name="frame.tif", dir="reel"))
            if key.startswith("/"):
                raise UnsafeKeyError("a key, relative to masks.uri or the input, not an absolute path")
            safe_key(key)
            if key == "reel/frame.tif" and beside_frames:
                raise UnsafeKeyError("it names each frame itself (give masks.uri for masks named like their frames)")
            if "*" in pattern or "?" in pattern or "[" in posixpath.splitext(pattern)[1]:
                raise UnsafeKeyError("a pattern names files, and wildcards match none (masks in several formats: "
                                     "save them in one)")
    except (KeyError, IndexError, ValueError, AttributeError) as error:
        problems.append(f"{label}: expected only {{dir}}, {{stem}} and {{name}} (e.g. '{{dir}}/masks/{{stem}}.png'), "
                        f"got {shown(pattern)} ({type(error).__name__}: {error})")
    except UnsafeKeyError as error:  # every frame would fail on it, run after run, until given up
        problems.append(f"{label}: {shown(pattern)} names no usable mask file: {error}")


def parse_spec(raw: Any, source: str = "<spec>", base_dir: Path | None = None) -> JobSpec:
    """Validate a spec already parsed from YAML; `base_dir` anchors relative local paths."""
    base = base_dir or Path.cwd()
    if not isinstance(raw, dict):
        raise SpecError(source, [f"top level: expected a mapping of fields, got {type(raw).__name__}"])
    problems: list[str] = []
    check = _Checker(problems)
    for unknown in sorted(set(raw) - _TOP_FIELDS):
        problems.append(f"{unknown}: unknown field (expected one of {', '.join(sorted(_TOP_FIELDS))})")

    name = check.string(raw, "name", "name", required=True)
    if name and (not all(c.isalnum() or c in "-_." for c in name) or set(name) == {"."}):
        problems.append(f"name: expected letters, digits, '-', '_' or '.' (not only dots), got {shown(name)}")
    input_uri = check.string(raw, "input", "input", required=True)
    output_uri = check.string(raw, "output", "output", required=True)
    known = len(problems)
    for label, uri in (("input", input_uri), ("output", output_uri)):
        if uri and "://" in uri and not uri.startswith(("s3://", "file://")):
            problems.append(f"{label}: expected a local path, file://… or s3://bucket/prefix, got {shown(uri)}")
        if uri and uri.startswith("s3://") and not uri[len("s3://"):].split("/")[0]:
            problems.append(f"{label}: expected s3://bucket/prefix with a bucket name, got {shown(uri)}")
        _check_file_uri(problems, label, uri)
    if input_uri and output_uri and len(problems) == known:  # reported with the spec's other mistakes, not after
        try:
            check_no_overlap(_resolve_uri(input_uri, base), _resolve_uri(output_uri, base))
        except StorageError as error:
            problems.append(f"output: {error}")
    endpoint_url = check.string(raw, "endpoint_url", "endpoint_url")
    if endpoint_url and not endpoint_url.startswith(("http://", "https://")):
        problems.append(f"endpoint_url: expected an http:// or https:// URL, got {shown(endpoint_url)}")

    include = _patterns(raw.get("include", list(DEFAULT_INCLUDE)), "include", "['*.png']", problems,
                        DEFAULT_INCLUDE)
    exclude = _patterns(raw["exclude"] if raw.get("exclude") is not None else [], "exclude", "['*_verso.jpg', 'rejects/*']", problems, ())

    masks_raw = check.section(raw, "masks", set(MaskSettings.__dataclass_fields__))
    masks = MaskSettings(
        source=check.string(masks_raw, "source", "masks.source", "given", choices=MASK_SOURCES),
        uri=check.string(masks_raw, "uri", "masks.uri"),
        pattern=check.string(masks_raw, "pattern", "masks.pattern", MaskSettings.pattern),
        dilate=check.number(masks_raw, "dilate", "masks.dilate", 0, maximum=MAX_DILATE),
        required=check.boolean(masks_raw, "required", "masks.required", False),
        detector=check.string(masks_raw, "detector", "masks.detector", "classical", choices=MASK_DETECTORS),
        min_area=check.number(masks_raw, "min_area", "masks.min_area", 0),
        max_detected=check.number(masks_raw, "max_detected", "masks.max_detected", MaskSettings.max_detected,
                                  kind=float, minimum=0.0, maximum=1.0),
        max_given=check.number(masks_raw, "max_given", "masks.max_given", MaskSettings.max_given, kind=float,
                               minimum=0.0, maximum=1.0),
        invert=check.boolean(masks_raw, "invert", "masks.invert", False),
        protect=check.string(masks_raw, "protect", "masks.protect"),
        border=check.number(masks_raw, "border", "masks.border", 0, maximum=MAX_DILATE),
        temporal_fill=check.boolean(masks_raw, "temporal_fill", "masks.temporal_fill", False),
        detector_weights=check.string(masks_raw, "detector_weights", "masks.detector_weights"),
        orientation=check.string(masks_raw, "orientation", "masks.orientation", choices=MASK_ORIENTATIONS),
    )
    if masks.source == "given":  # a detector asked for but never run: most likely a forgotten `source: detect`
        problems += [f"masks.{name}: only used with masks.source detect, both or given-else-detect (source "
                     "is given)"
                     for name, value, default in (("detector", masks.detector, "classical"),
                                                  ("min_area", masks.min_area, 0),
                                                  ("max_detected", masks.max_detected, MaskSettings.max_detected))
                     if value != default]
    if masks.source == "detect":  # settings of given masks in a job that reads none
        problems += [f"masks.{name}: only used with masks.source given, both or given-else-detect (source is "
                     "detect: given masks are not read)"
                     for name, value, default in (("pattern", masks.pattern, MaskSettings.pattern),
                                                  ("required", masks.required, False),
                                                  ("max_given", masks.max_given, MaskSettings.max_given),
                                                  ("invert", masks.invert, False)) if value != default]
    if masks.source == "given-else-detect" and masks.required:
        problems.append("masks.required: a frame without a given mask is detected (source given-else-detect)")
    if masks.orientation and masks.source == "detect" and not masks.protect:
        problems.append("masks.orientation: says how given and protect masks are drawn; this job reads neither")
    if masks.detector_weights and (masks.detector != "learned" or masks.source == "given"):
        problems.append("masks.detector_weights: only used with masks.detector learned (and a source that detects)")
    _check_file_uri(problems, "masks.uri", masks.uri)
    if masks.pattern and "{" not in masks.pattern:
        problems.append("masks.pattern: expected a pattern naming the frame, e.g. '{dir}/masks/{stem}.png', got "
                        f"{shown(masks.pattern)}")
    for label, pattern in (("masks.pattern", masks.pattern), ("masks.protect", masks.protect)):
        _check_key_pattern(problems, label, pattern, beside_frames=masks.uri is None)

    restorer_raw = check.section(raw, "restorer", set(RestorerSettings.__dataclass_fields__))
    restorer = RestorerSettings(
        name=check.string(restorer_raw, "name", "restorer.name", RestorerSettings.name, choices=RESTORER_NAMES),
        weights=check.string(restorer_raw, "weights", "restorer.weights"),
        weights_sha256=check.string(restorer_raw, "weights_sha256", "restorer.weights_sha256"),
        radius=check.number(restorer_raw, "radius", "restorer.radius", 3, minimum=1, maximum=MAX_RADIUS),
        tile=check.number(restorer_raw, "tile", "restorer.tile", 512, minimum=32),
        overlap=check.number(restorer_raw, "overlap", "restorer.overlap", 64),
        context=check.number(restorer_raw, "context", "restorer.context", RestorerSettings.context),
        grain=check.string(restorer_raw, "grain", "restorer.grain", RestorerSettings.grain, choices=GRAIN),
    )
    if restorer.name == "none" and restorer.grain == "match":
        problems.append("restorer.grain: match re-grains the restorer's fills, and restorer none fills nothing")
    if restorer.weights_sha256 and (len(restorer.weights_sha256) != 64 or not all(c in "0123456789abcdef" for c in restorer.weights_sha256)):
        problems.append("restorer.weights_sha256: expected 64 lowercase hex digits, got "
                        f"{shown(restorer.weights_sha256)}")
    if restorer.overlap * 2 >= restorer.tile:
        problems.append(f"restorer.overlap: expected less than half of restorer.tile ({restorer.tile}), got {restorer.overlap}")

    workers_raw = check.section(raw, "workers", set(WorkerSettings.__dataclass_fields__))
    workers = WorkerSettings(
        count=check.number(workers_raw, "count", "workers.count", 1, minimum=1),
        cpus=check.number(workers_raw, "cpus", "workers.cpus", 1.0, kind=float, minimum=0),
        gpus=check.number(workers_raw, "gpus", "workers.gpus", 0.0, kind=float, minimum=0),
    )
    sequence_raw = check.section(raw, "sequence", set(SequenceSettings.__dataclass_fields__))
    sequence = SequenceSettings(window=check.number(sequence_raw, "window", "sequence.window", 0))
    if masks.source != "given" and masks.detector == "temporal" and sequence.window < 1:
        problems.append("sequence.window: expected 1 or more with masks.detector temporal (it compares neighbours)")
    if masks.temporal_fill and sequence.window < 1:
        problems.append("sequence.window: expected 1 or more with masks.temporal_fill (it copies from neighbours)")

    archive_restore = None
    if raw.get("archive_restore") is not None:
        restore_raw = check.section(raw, "archive_restore", set(ArchiveRestoreSettings.__dataclass_fields__))
        archive_restore = ArchiveRestoreSettings(
            days=check.number(restore_raw, "days", "archive_restore.days", ArchiveRestoreSettings.days, minimum=1),
            tier=check.string(restore_raw, "tier", "archive_restore.tier", ArchiveRestoreSettings.tier,
                              choices=RESTORE_TIERS),
        )
        if not (input_uri or "").startswith("s3://"):
            problems.append("archive_restore: only an s3:// input has archival storage classes")

    spec_kwargs = dict(
        output_format=check.string(raw, "output_format", "output_format", "same", choices=OUTPUT_FORMATS),
        jpeg_quality=check.number(raw, "jpeg_quality", "jpeg_quality", JPEG_QUALITY, minimum=1, maximum=100),
        transfer=check.string(raw, "transfer", "transfer", "display", choices=TRANSFERS),
        output_storage_class=check.string(raw, "output_storage_class", "output_storage_class",
                                          choices=OUTPUT_STORAGE_CLASSES),
        max_pixels=check.number(raw, "max_pixels", "max_pixels", DEFAULT_MAX_PIXELS, minimum=1),
        batch_size=check.number(raw, "batch_size", "batch_size", 4, minimum=1),
        commit_every=check.number(raw, "commit_every", "commit_every", 64, minimum=1),
        max_attempts=check.number(raw, "max_attempts", "max_attempts", 3),
    )
    if spec_kwargs["transfer"] == "log" and spec_kwargs["output_format"] == "jpeg":
        problems.append("output_format: jpeg would hold a log scan's flat codes in 8 bits, which no viewer shows "
                        "right: write png or tiff (same), or make JPEG copies from the outputs with your grade")
    # the default is in every saved spec (the report's copy, read back to rebuild it): only another value is a slip
    if spec_kwargs["jpeg_quality"] != JPEG_QUALITY and spec_kwargs["output_format"] != "jpeg":
        problems.append("jpeg_quality: only used with output_format: jpeg (outputs are lossless otherwise)")
    if spec_kwargs["output_storage_class"] and not (output_uri or "").startswith("s3://"):
        problems.append("output_storage_class: only an s3:// output has storage classes")
    if problems:
        raise SpecError(source, problems)
    return JobSpec(
        name=name,
        input=_resolve_uri(input_uri, base),
        output=_resolve_uri(output_uri, base),
        endpoint_url=endpoint_url,
        include=include,
        exclude=exclude,
        masks=MaskSettings(**{**asdict(masks), "uri": _resolve_uri(masks.uri, base),
                              "detector_weights": _resolve_uri(masks.detector_weights, base)}),
        restorer=RestorerSettings(**{**asdict(restorer), "weights": _resolve_uri(restorer.weights, base)}),
        workers=workers,
        sequence=sequence,
        archive_restore=archive_restore,
        **spec_kwargs,
    )


def load_spec(path: str | Path) -> JobSpec:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise SpecError(str(path), [f"file: cannot read it ({error.strerror or error})"]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise SpecError(str(path), [f"YAML: {error}"]) from None
    return parse_spec(raw, source=str(path), base_dir=path.resolve().parent)
