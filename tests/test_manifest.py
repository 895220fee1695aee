"""The typed manifest: prep's bytes round-trip, defaults for hand-written sets, damaged fields exit 2."""

import io
import json
import shutil

import pytest
from PIL import Image

from alexrepro.cli import main
from alexrepro.data.manifest import (
    ClassInfo,
    Manifest,
    ShardEntry,
    SkippedFile,
    SplitEntry,
    read_manifest,
    set_identity,
    write_manifest,
)
from alexrepro.data.options import PrepOptions
from alexrepro.data.prep import prep
from alexrepro.errors import UserError

# The keys of manifest.json in the order prep writes them (docs/FORMAT.md), and those of a split.
TOP_KEYS = ["format", "format_version", "source", "encoding", "quality", "image_size", "resize", "shard_size",
            "classes", "splits", "skipped", "notes", "prep"]
SPLIT_KEYS = ["count", "found", "skipped", "layout", "shards", "skipped_files", "quirks"]


@pytest.fixture(scope="module")
def prepared(synth_src, tmp_path_factory):
    out = tmp_path_factory.mktemp("manifest") / "out"
    summary = prep(synth_src, out, PrepOptions(workers=1, shard_size=8), progress=False)
    return out, summary


def test_prep_bytes_round_trip_through_the_typed_manifest(prepared):
    out, _ = prepared
    text = (out / "manifest.json").read_text()
    payload = json.loads(text)
    assert list(payload) == TOP_KEYS and all(list(s) == SPLIT_KEYS for s in payload["splits"].values())
    again = read_manifest(out).to_payload()
    assert json.dumps(again, indent=2) + "\n" == text  # what atomic_write_json writes: the same bytes
    assert Manifest.from_payload(payload) == read_manifest(out)


def test_typed_fields_match_what_prep_reported(prepared, synth_summary):
    out, summary = prepared
    m = read_manifest(out)
    assert m.format_version == 2 and m.encoding == "jpeg" and m.quality == 95 and m.image_size == 256
    assert m.resize == "shorter-side" and m.prep.identity["resize"] == "shorter-side"  # §2, the default
    assert m.shard_size == 8 and m.skipped == summary["skipped"] == synth_summary["counts"]["skipped"]
    assert [c.wnid for c in m.classes] == sorted(synth_summary["wnids"])
    assert [c.index for c in m.classes] == list(range(len(synth_summary["wnids"])))
    for name, reported in summary["splits"].items():
        split = m.splits[name]
        assert split.count == reported["written"] and split.found == reported["found"]
        assert split.skipped == reported["skipped"] == len(split.skipped_files)
        assert sum(s.count for s in split.shards) == split.count
        assert [s.file for s in split.shards] == [f"{name}/{i:05d}.h5" for i in range(len(split.shards))]
    assert m.prep is not None and m.prep.identity["shard_size"] == 8 and set(m.prep.splits) == set(m.splits)
    assert m.class_list() == json.loads((out / "manifest.json").read_text())["classes"]


def test_a_hand_written_manifest_takes_the_defaults(tmp_path):
    write_manifest(tmp_path, {"encoding": "raw", "source": "test",
                              "classes": [{"index": 0, "wnid": "n00000000"}],
                              "splits": {"val": {"count": 2, "shards": [{"file": "val/00000.h5", "count": 2}],
                                                 "skipped_files": [{"path": "a.JPEG", "reason": "empty file"}]}}})
    m = read_manifest(tmp_path)
    assert m.format_version == 2 and m.quality is None and m.shard_size is None and m.prep is None
    assert m.resize == "shorter-side"  # a manifest from before prep --resize: §2's resize
    assert m.skipped == 1 and m.notes == [] and m.classes == [ClassInfo(0, "n00000000", "")]
    assert m.splits["val"] == SplitEntry(count=2, shards=[ShardEntry("val/00000.h5", 2)], found=None, skipped=0,
                                         layout="", skipped_files=[SkippedFile("a.JPEG", "empty file")])
    payload = json.loads((tmp_path / "manifest.json").read_text())
    assert payload["format"] == "alexrepro-prepared" and list(payload) == TOP_KEYS


@pytest.mark.parametrize("damage, named", [
    (lambda m: m.pop("encoding"), "no 'encoding' field"),
    (lambda m: m["splits"]["val"]["shards"][0].pop("count"), "no 'count' field"),
    (lambda m: m["splits"].__setitem__("val", ["not", "a", "split"]), "corrupt"),
    (lambda m: m["classes"][0].__setitem__("index", "first"), "corrupt"),
])
def test_a_damaged_field_is_a_one_line_user_error(prepared, tmp_path, capsys, damage, named):
    out = tmp_path / "out"
    shutil.copytree(prepared[0], out)
    payload = json.loads((out / "manifest.json").read_text())
    damage(payload)
    (out / "manifest.json").write_text(json.dumps(payload))
    with pytest.raises(UserError, match="manifest.json is corrupt") as e:
        read_manifest(out)
    assert named in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(SystemExit) as code:
        main(["info", str(out)])
    assert code.value.code == 2 and "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"format": "alexrepro-prepared"}'])
def test_prep_into_an_out_with_an_unreadable_manifest_is_refused(synth_src, tmp_path, text):
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text(text)
    with pytest.raises(UserError, match="is corrupt; delete .* and prepare again"):
        prep(synth_src, out, PrepOptions(workers=1, splits=["val"]), progress=False)
    assert (out / "manifest.json").read_text() == text  # nothing overwritten


def test_set_identity_names_the_data_not_the_folders(synth_src, tmp_path):
    """The same prep of the same images, from a copied source into another folder, is the same set; another
    quality, --resize or image is another."""
    def identity(src, name, **options):
        prep(src, tmp_path / name, PrepOptions(workers=1, splits=["train"], **options), progress=False)
        return set_identity(tmp_path / name)

    copy = tmp_path / "copy"
    shutil.copytree(synth_src, copy)
    same = identity(synth_src, "a")
    assert identity(copy, "b") == same == identity(synth_src, "c", shard_size=5)
    assert identity(synth_src, "q", quality=80) != same
    assert identity(synth_src, "w", resize="warp") != same
    victim = sorted((copy / "train").glob("*/*.JPEG"))[0]
    other = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(other, "JPEG")
    size = victim.stat().st_size
    assert other.tell() < size
    victim.write_bytes(other.getvalue().ljust(size, b"\0"))  # another picture, the same size (JPEG ends at EOI)
    changed = identity(copy, "d")
    assert read_manifest(tmp_path / "d").skipped == read_manifest(tmp_path / "a").skipped  # read, not skipped
    assert changed != same
