from pathlib import Path

import pytest

from restore.spec import SpecError, load_spec, parse_spec


def test_minimal_spec_gets_defaults_and_resolves_paths_against_the_spec_file(tmp_path):
    spec_file = tmp_path / "jobs" / "one.yaml"
    spec_file.parent.mkdir()
    spec_file.write_text("name: one\ninput: ../frames\noutput: ../restored\n")
    spec = load_spec(spec_file)
    assert spec.input == str(tmp_path / "frames")
    assert spec.output == str(tmp_path / "restored")
    assert spec.restorer.name == "gan"  # the shipped generator
    assert spec.masks.pattern == "{dir}/masks/{stem}.png"
    assert spec.workers.count == 1


def test_every_mistake_is_reported_with_its_field_before_any_work():
    raw = {
        "name": "bad name!",
        "output": "ftp://host/x",
        "restorer": {"name": "magic", "tile": 16},
        "workers": {"count": 0, "gpus": "one"},
        "batch_size": -1,
        "masks": {"source": "guess"},
        "colour": "yes",
    }
    with pytest.raises(SpecError) as raised:
        parse_spec(raw)
    message = str(raised.value)
    for field in ("name:", "input: required", "output:", "restorer.name:", "restorer.tile:", "workers.count:",
                  "workers.gpus:", "batch_size:", "masks.source:", "colour: unknown field"):
        assert field in message, field


def test_an_output_inside_the_input_is_reported_with_the_specs_other_mistakes(tmp_path):
    raw = {"name": "t", "input": str(tmp_path / "scans"), "output": str(tmp_path / "scans" / "restored"),
           "batch_size": 0}
    with pytest.raises(SpecError) as raised:
        parse_spec(raw)
    assert "output: output" in str(raised.value) and "overlaps input" in str(raised.value)
    assert "batch_size:" in str(raised.value)  # one error message naming both, not one mistake per try
    with pytest.raises(SpecError, match="overlaps input"):
        parse_spec({"name": "t", "input": "scans", "output": "scans/../scans"}, base_dir=tmp_path)
    parse_spec({"name": "t", "input": "s3://bucket/scans", "output": "s3://bucket/restored"})


def test_values_that_would_crash_or_hang_a_run_are_refused_and_quoted_briefly(tmp_path):
    """NaN passes every `value < minimum` check; a dilation of 1e11 px asks for a 40 GB disc on every frame; a few
    lines of YAML aliases make a value whose full repr (once quoted in the error) is gigabytes."""
    aliases = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"] + [
        f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    spec = tmp_path / "job.yaml"
    spec.write_text("\n".join(aliases) + "\nname: j\ninput: in\noutput: out\ninclude: *a8\n"
                    "workers: {cpus: .nan}\nmasks: {dilate: 100000000000}\nrestorer: {name: telea, radius: 1000}\n")
    with pytest.raises(SpecError) as raised:
        load_spec(spec)
    message = str(raised.value)
    assert "workers.cpus: expected a number >= 0, got nan" in message
    assert "masks.dilate: expected an integer from 0 to 1000, got 100000000000" in message
    assert "restorer.radius: expected an integer from 1 to 100" in message
    assert "include: expected a list of glob patterns" in message and len(message) < 5_000
    for pattern, reason in (("../x/{stem}.png", "'..' component"), ("/scans/{stem}.png", "not an absolute path"),
                            ("{dir}/{name}", "names each frame itself")):
        with pytest.raises(SpecError, match=f"masks.pattern: .* names no usable mask file: .*{reason}"):
            parse_spec({"name": "j", "input": "in", "output": "out", "masks": {"pattern": pattern}})
    for masks in ({"pattern": "{dir}/../masks/{stem}.png"}, {"pattern": "./masks/{stem}.png"},
                  {"pattern": "{dir}/{stem}.png"}, {"pattern": "{dir}/{name}", "uri": "s3://masks/reel"}):
        assert parse_spec({"name": "j", "input": "in", "output": "out", "masks": masks}).masks.pattern  # as before
    with pytest.raises(SpecError, match="masks.dilate: expected an integer from 0 to 1000, got 1000"):
        parse_spec({"name": "j", "input": "in", "output": "out", "masks": {"dilate": 10 ** 400}})  # no OverflowError


def test_unreadable_and_malformed_spec_files_are_clear_errors(tmp_path):
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="YAML"):
        load_spec(broken)


def test_config_hash_follows_outputs_not_worker_counts():
    base = {"name": "j", "input": "s3://in/a", "output": "s3://out/b", "restorer": {"name": "telea"}}
    one = parse_spec(base)
    many = parse_spec({**base, "workers": {"count": 8, "cpus": 2}, "batch_size": 32, "commit_every": 5})
    other_radius = parse_spec({**base, "restorer": {"name": "telea", "radius": 5}})
    assert one.config_hash(None) == many.config_hash(None)
    assert one.config_hash(None) != other_radius.config_hash(None)
    assert one.config_hash("a" * 64) != one.config_hash("b" * 64)


def test_how_masks_of_turned_frames_were_drawn_is_checked_and_jobs_that_never_say_keep_their_hash():
    base = {"name": "j", "input": "s3://in/a", "output": "s3://out/b", "restorer": {"name": "telea"}}
    assert parse_spec(base).config_hash(None) == "0056dca39461f36a"  # as before the setting existed
    assert parse_spec({**base, "masks": {"orientation": "stored"}}).masks.orientation == "stored"
    with pytest.raises(SpecError, match="masks.orientation: expected one of displayed, stored, got 'upright'"):
        parse_spec({**base, "masks": {"orientation": "upright"}})
    with pytest.raises(SpecError, match="masks.orientation: says how given and protect masks are drawn"):
        parse_spec({**base, "masks": {"source": "detect", "orientation": "displayed"}})


def test_grain_is_asked_for_re_grains_film_scans_or_every_frame_and_enters_the_config_hash_only_then():
    base = {"name": "j", "input": "s3://in/a", "output": "s3://out/b"}

    def spec(grain=None, name="telea", **fields):
        return parse_spec({**base, "restorer": {"name": name, "grain": grain}, **fields})

    default, auto, match, none = spec(), spec("auto"), spec("match"), spec("none")
    assert [auto.regrains(fmt) for fmt in ("DPX", "EXR", "VIDEO", "PNG", "TIFF", "JPEG")] == [True] * 3 + [False] * 3
    assert spec("auto", transfer="log").regrains("TIFF") and match.regrains("PNG")  # a log scan is a film scan
    assert not default.regrains("DPX") and not spec("auto", name="none").regrains("DPX")  # none fills nothing
    assert default.config_hash(None) == none.config_hash(None) == "0056dca39461f36a"  # as before the setting
    assert len({none.config_hash(None), auto.config_hash(None), match.config_hash(None)}) == 3
    assert spec("auto", "none").config_hash(None) == spec(name="none").config_hash(None)
    with pytest.raises(SpecError, match="restorer.grain: expected one of auto, match, none, got 'film'"):
        spec("film")
    with pytest.raises(SpecError, match="restorer.grain: match re-grains the restorer's fills, and restorer none"):
        spec("match", "none")


def test_temporal_fill_needs_neighbours_and_changes_the_config_hash():
    base = {"name": "j", "input": "s3://in/a", "output": "s3://out/b"}
    with pytest.raises(SpecError, match=r"sequence.window: expected 1 or more with masks.temporal_fill"):
        parse_spec({**base, "masks": {"source": "given", "temporal_fill": True}})
    with pytest.raises(SpecError, match=r"masks.temporal_fill: expected true or false"):
        parse_spec({**base, "masks": {"temporal_fill": "yes"}, "sequence": {"window": 1}})
    plain = parse_spec(base)
    off = parse_spec({**base, "masks": {"temporal_fill": False}, "sequence": {"window": 1}})
    on = parse_spec({**base, "masks": {"temporal_fill": True}, "sequence": {"window": 1}})
    assert on.masks.temporal_fill and not off.masks.temporal_fill
    assert plain.config_hash(None) == off.config_hash(None) != on.config_hash(None)  # off: hashes as before it existed
    wider = parse_spec({**base, "masks": {"temporal_fill": True}, "sequence": {"window": 3}})
    assert wider.config_hash(None) != on.config_hash(None)  # more neighbours, other fills: the frames are redone
    assert parse_spec({**base, "sequence": {"window": 3}}).config_hash(None) == plain.config_hash(None)  # unused


def test_a_mistaken_mask_pattern_is_a_spec_error_not_a_traceback():
    base = {"name": "j", "input": "s3://in/a", "output": "s3://out/b"}
    for field, pattern in (("pattern", "{dir}/masks/{filename}.png"), ("pattern", "masks/{0}.png"),
                           ("pattern", "masks/{stem!x}.png"), ("pattern", "masks.png"),
                           ("protect", "{dir}/protect/{base}.png")):
        with pytest.raises(SpecError, match=f"masks.{field}: expected"):
            parse_spec({**base, "masks": {field: pattern}})
    spec = parse_spec({**base, "masks": {"pattern": "{dir}/m/{name}", "protect": "stamp.png"}})
    assert spec.masks.protect == "stamp.png"  # one region for every frame


def test_file_uris_are_read_as_urls(tmp_path):
    spaced = tmp_path / "my scans"
    spec = parse_spec({"name": "j", "input": f"file://localhost{tmp_path}/in", "output": spaced.as_uri()})
    assert spec.input == str(tmp_path / "in") and spec.output == str(spaced)
    with pytest.raises(SpecError, match="output: a file URI names no host"):
        parse_spec({"name": "j", "input": "s3://in/a", "output": "file://scanner/archive"})


def test_detector_settings_with_given_masks_are_refused_not_ignored():
    base = {"name": "j", "input": "s3://in/a", "output": "s3://out/b"}
    with pytest.raises(SpecError, match="masks.detector: only used with masks.source detect, both or given-else-detect"):
        parse_spec({**base, "masks": {"source": "given", "detector": "learned"}})
    with pytest.raises(SpecError, match="masks.min_area: only used"):
        parse_spec({**base, "masks": {"min_area": 4}})  # source defaults to given
    assert parse_spec({**base, "masks": {"source": "both", "detector": "learned"}}).masks.detector == "learned"
    assert parse_spec({**base, "masks": {"detector": None, "min_area": 0}}).masks.source == "given"  # defaults


def test_infrared_is_a_mask_detector_by_name():
    base = {"name": "j", "input": "s3://in/a", "output": "s3://out/b"}
    spec = parse_spec({**base, "masks": {"source": "detect", "detector": "infrared"}})
    assert spec.masks.detector == "infrared"
    assert spec.config_hash(None) != parse_spec({**base, "masks": {"source": "detect"}}).config_hash(None)
    with pytest.raises(SpecError, match="masks.detector: expected one of .*infrared"):
        parse_spec({**base, "masks": {"source": "detect", "detector": "ir"}})


def test_shipped_demo_spec_validates():
    spec = load_spec(Path(__file__).parent.parent / "jobs" / "demo.yaml")
    assert spec.name == "demo"


def test_archive_restore_is_refused_where_it_could_not_work():
    """A setting that would silently do nothing (a local input) or be refused by S3 at night is refused up front."""
    with pytest.raises(SpecError) as error:
        parse_spec({"name": "t", "input": "in", "output": "out", "archive_restore": {"tier": "Fast", "days": 0}})
    assert set(error.value.problems) == {
        "archive_restore.tier: expected one of Bulk, Standard, Expedited, got 'Fast'",
        "archive_restore.days: expected an integer >= 1, got 0",
        "archive_restore: only an s3:// input has archival storage classes"}


def test_a_restorer_named_where_a_mapping_belongs_gets_the_spelling_that_works():
    """`restorer: telea` is the natural first guess; the error shows how to write it."""
    with pytest.raises(SpecError) as error:
        parse_spec({"name": "t", "input": "in", "output": "out", "restorer": "telea"})
    assert error.value.problems == ["restorer: expected a mapping, got str (write `restorer: {name: telea}`)"]


def test_a_mask_pattern_with_a_wildcard_is_refused():
    """Masks in several formats tempt `{stem}.*`: it matched no file, so every frame came back unchanged and ok."""
    with pytest.raises(SpecError, match=r"masks.pattern: '\{dir\}/masks/\{stem\}\.\*' names no usable mask file"):
        parse_spec({"name": "a", "input": "/in", "output": "/out", "masks": {"pattern": "{dir}/masks/{stem}.*"}})
    with pytest.raises(SpecError, match="masks.protect: .* wildcards match none"):
        parse_spec({"name": "a", "input": "/in", "output": "/out", "masks": {"protect": "{dir}/protect/?.png"}})
    with pytest.raises(SpecError, match="wildcards match none"):
        parse_spec({"name": "a", "input": "/in", "output": "/out", "masks": {"pattern": "{dir}/masks/{stem}.[pt]ng"}})
    parse_spec({"name": "a", "input": "/in", "output": "/out", "masks": {"pattern": "{dir}/masks [v2]/{stem}.png"}})


def test_jpeg_quality_is_for_jpeg_outputs_and_enters_the_config_hash_only_when_set():
    base = {"name": "j", "input": "in", "output": "out", "output_format": "jpeg"}
    assert parse_spec(base).jpeg_quality == 95
    assert parse_spec({**base, "jpeg_quality": 95}).config_hash(None) == parse_spec(base).config_hash(None)
    assert parse_spec({**base, "jpeg_quality": 85}).config_hash(None) != parse_spec(base).config_hash(None)
    with pytest.raises(SpecError, match="jpeg_quality: expected an integer from 1 to 100, got 101"):
        parse_spec({**base, "jpeg_quality": 101})
    with pytest.raises(SpecError, match="jpeg_quality: only used with output_format: jpeg"):
        parse_spec({**base, "output_format": "png", "jpeg_quality": 85})


def test_a_log_scan_is_not_written_as_jpeg():
    """JPEG holds 8 bits: a log scan's flat codes there would look near black in the report and in any viewer."""
    with pytest.raises(SpecError, match="output_format: jpeg would hold a log scan's flat codes"):
        parse_spec({"name": "j", "input": "in", "output": "out", "transfer": "log", "output_format": "jpeg"})
