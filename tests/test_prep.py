"""Prep: counts add up, quirks converted, broken files reported, resume reproduces, refusals exit 2."""

import csv
import json
import os
import shutil
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from cli_run import run_cli

import alexrepro.data.prep as prep_mod
from alexrepro import open_split
from alexrepro.cli import main
from alexrepro.data.manifest import read_manifest
from alexrepro.data.options import PrepOptions
from alexrepro.data.prep import prep
from alexrepro.data.stats_file import read_stats
from alexrepro.errors import UserError


def shard_contents(out, split):
    """Every dataset and attribute of every shard of a split, in order."""
    got = []
    for e in read_manifest(out).splits[split].shards:
        with h5py.File(out / e.file, "r") as f:
            got.append(({k: f[k][:].tolist() for k in f}, dict(f.attrs)))
    return got


@pytest.fixture(scope="module")
def prepared(synth_src, tmp_path_factory):
    out = tmp_path_factory.mktemp("prep") / "out"
    summary = prep(synth_src, out, PrepOptions(workers=1, shard_size=8), progress=False)
    return out, summary


def test_counts_skipped_and_manifest(prepared, synth_summary):
    out, summary = prepared
    counts = synth_summary["counts"]
    train = summary["splits"]["train"]
    assert train["found"] == counts["train_files"]
    assert train["written"] == counts["train_readable"] and train["skipped"] == counts["skipped"]
    assert summary["splits"]["val"]["written"] == counts["val_files"]
    with open(out / "skipped.tsv") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    assert rows[0] == ["path", "reason"]
    reasons = dict(rows[1:])
    assert set(reasons) == set(synth_summary["broken"])
    by_kind = {q["kind"]: q["path"] for q in synth_summary["quirks"]}
    assert reasons[by_kind["empty"]] == "empty file"
    assert reasons[by_kind["text"]].startswith("not an image")
    assert reasons[by_kind["truncated"]].startswith("truncated")
    m = read_manifest(out).to_payload()  # the manifest as written, in its JSON form
    assert m["encoding"] == "jpeg" and m["quality"] == 95 and m["skipped"] == counts["skipped"]
    assert [c["wnid"] for c in m["classes"]] == sorted(synth_summary["wnids"])
    assert m["classes"][0]["name"] == synth_summary["names"][synth_summary["wnids"].index(m["classes"][0]["wnid"])]
    assert len(m["splits"]["train"]["skipped_files"]) == counts["skipped"]
    assert sum(e["count"] for e in m["splits"]["train"]["shards"]) == m["splits"]["train"]["count"]


def test_quirks_converted_and_labels_right(prepared, synth_src, synth_summary):
    out, _ = prepared
    train = open_split(out, "train")
    keys = train.keys()
    for q in synth_summary["quirks"]:
        if q["expected"] == "converted" and q["split"] == "train":
            i = keys.index(q["path"])
            img, label = train[i]
            assert img.shape == (256, 256, 3) and img.dtype == np.uint8
            assert label == sorted(synth_summary["wnids"]).index(q["wnid"])
    # val labels: the sorted-WNID index of Kaggle's solution (which the devkit must agree with)
    with open(synth_src / "LOC_val_solution.csv") as f:
        truth = {r["ImageId"]: r["PredictionString"].split()[0] for r in csv.DictReader(f)}
    val = open_split(out, "val")
    wnids = sorted(synth_summary["wnids"])
    assert [wnids[lab] for lab in val.labels] == [truth[k.split("/")[-1][:-5]] for k in val.keys()]


def test_mean_image_is_the_average_of_the_stored_images(prepared):
    out, _ = prepared
    train = open_split(out, "train")
    direct = np.mean([train[i][0].astype(np.float64) for i in range(len(train))], axis=0)
    stats = read_stats(out)
    assert stats.mean.shape == (256, 256, 3) and np.allclose(stats.mean, direct, atol=1e-3)


def test_resume_after_a_kill_gives_the_same_shards(prepared, synth_src, tmp_path, monkeypatch):
    out0, _ = prepared
    out = tmp_path / "out"
    real = prep_mod.write_shard
    calls = []

    def dies_after_two(*a, **k):
        if len(calls) == 2:
            raise KeyboardInterrupt  # as if killed while building the third shard
        calls.append(a[0])
        return real(*a, **k)

    monkeypatch.setattr(prep_mod, "write_shard", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        prep(synth_src, out, PrepOptions(workers=1, shard_size=8), progress=False)
    assert not (out / "manifest.json").exists() and len(list(out.glob("*/*.h5"))) == 2
    (out / "train" / ".00002.h5.tmp-1").write_bytes(b"half")  # a killed writer's leftover
    monkeypatch.setattr(prep_mod, "write_shard", real)
    summary = prep(synth_src, out, PrepOptions(workers=2, shard_size=8), progress=False)
    assert summary["splits"]["train"]["resumed_shards"] == 2
    for split in ("train", "val"):
        assert shard_contents(out, split) == shard_contents(out0, split)
    assert (out / "skipped.tsv").read_text() == (out0 / "skipped.tsv").read_text()
    assert np.array_equal(read_stats(out).mean, read_stats(out0).mean)
    assert not list(out.glob("*/.*tmp*"))
    again = prep(synth_src, out, PrepOptions(workers=1, shard_size=8), progress=False)
    assert again["splits"]["val"]["resumed_shards"] == again["splits"]["val"]["shards"]


@pytest.mark.parametrize(("workers", "want"), [(3, 3), (0, 5)])  # 0: all cores (5 here)
@pytest.mark.parametrize("left", [0, 1])
def test_resume_computes_the_mean_with_the_requested_workers(prepared, synth_src, tmp_path, monkeypatch,
                                                           workers, want, left):
    import alexrepro.data.stats as stats_mod

    out = tmp_path / "out"
    shutil.copytree(prepared[0], out)
    if left:
        (out / "train" / "00001.h5").unlink()  # one shard left to convert: prep itself uses 1 worker
    else:
        (out / "stats.h5").unlink()  # nothing left to convert, but the mean is missing
    real, seen = stats_mod.compute_mean, []

    def spy(out, workers=1, progress=True):
        seen.append(workers)
        return real(out, workers=1, progress=progress)

    monkeypatch.setattr(stats_mod, "compute_mean", spy)
    monkeypatch.setattr(prep_mod, "available_cores", lambda: 5)
    summary = prep(synth_src, out, PrepOptions(workers=workers, shard_size=8), progress=False)
    assert summary["workers"] == 1 and seen == [want]
    assert np.array_equal(read_stats(out).mean, read_stats(prepared[0]).mean)


def test_raw_encoding_and_one_split(synth_src, tmp_path):
    out = tmp_path / "raw"
    summary = prep(synth_src, out, PrepOptions(workers=1, encoding="raw", splits=["val"]), progress=False)
    assert list(summary["splits"]) == ["val"] and not (out / "stats.h5").exists()
    val = open_split(out, "val")
    with h5py.File(val.shards[0].path, "r") as f:
        assert f["images"].shape[1:] == (256, 256, 3) and f.attrs["encoding"] == "raw"
    assert val[0][0].shape == (256, 256, 3)


def test_cli_json_and_refusals(synth_src, tmp_path, capsys):
    out = tmp_path / "out"
    code, text, _ = run_cli(["prep", str(synth_src), str(out), "--workers", "1", "--split", "val", "--json"], capsys)
    assert code == 0 and json.loads(text)["splits"]["val"]["written"] > 0
    manifest = (out / "manifest.json").read_bytes()
    # OUT holding a different set (other options): refused, nothing overwritten
    code, _, _ = run_cli(["prep", str(synth_src), str(out), "--split", "val", "--quality", "80"], capsys)
    assert code == 2 and (out / "manifest.json").read_bytes() == manifest
    assert run_cli(["prep", str(tmp_path / "missing"), str(tmp_path / "o1")], capsys)[0] == 2
    (tmp_path / "empty").mkdir()
    assert run_cli(["prep", str(tmp_path / "empty"), str(tmp_path / "o2")], capsys)[0] == 2
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert run_cli(["prep", str(synth_src), str(tmp_path / "other")], capsys)[0] == 2
    assert run_cli(["prep", str(synth_src), str(tmp_path / "o3"), "--encoding", "png"], capsys)[0] == 2


def test_changed_source_is_refused(synth_src, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(synth_src, src)
    out = tmp_path / "out"
    prep(src, out, PrepOptions(workers=1, splits=["val"]), progress=False)
    (src / "val" / "ILSVRC2012_val_00000001.JPEG").unlink()
    with pytest.raises(UserError, match="differ"):
        prep(src, out, PrepOptions(workers=1, splits=["val"]), progress=False)


def test_split_with_no_readable_image(tmp_path):
    (tmp_path / "src" / "train" / "n01440764").mkdir(parents=True)
    (tmp_path / "src" / "train" / "n01440764" / "a.JPEG").write_bytes(b"")
    (tmp_path / "src" / "train" / "n01440764" / "b.JPEG").write_text("no")
    with pytest.raises(UserError, match="no image of the train split"):
        prep(tmp_path / "src", tmp_path / "out", PrepOptions(workers=1), progress=False)
    assert not (tmp_path / "out" / "manifest.json").exists()


# What each synth quirk is (synth's own record of the file it wrote: format and mode) and what prep must
# therefore report it as; written out here, not taken from alexrepro.imaging.
QUIRK_KINDS = {"cmyk": {"cmyk"}, "greyscale": {"greyscale"}, "png": {"not-jpeg"}, "rgba_png": {"not-jpeg", "alpha"},
               "palette": {"not-jpeg", "palette"}, "tiny": {"tiny"}, "huge": {"huge"}}


def test_the_quirk_files_it_converted_are_listed_by_kind(prepared, synth_summary):
    out, summary = prepared
    with open(out / "converted.tsv") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    assert rows[0] == ["split", "path", "quirks"]
    listed = {path: set(kinds.split(",")) for _, path, kinds in rows[1:]}
    for q in synth_summary["quirks"]:
        if q["expected"] == "converted":
            assert QUIRK_KINDS[q["kind"]] <= listed[q["path"]], q
            for kind in QUIRK_KINDS[q["kind"]] - {"tiny"}:  # a quirk's path is among the first of its kind
                assert q["path"] in summary["quirks"][kind]["first"] or summary["quirks"][kind]["count"] > 5
    for kind, entry in summary["quirks"].items():
        assert entry["count"] == sum(kind in kinds for kinds in listed.values()) and entry["what"]
    m = read_manifest(out).to_payload()  # the manifest as written, in its JSON form
    assert sum(m["splits"]["train"]["quirks"].values()) + sum(m["splits"]["val"]["quirks"].values()) == sum(
        len(kinds) for kinds in listed.values())


def test_no_per_shard_sidecar_outlives_a_finished_prep(prepared, synth_src, tmp_path):
    out, _ = prepared
    assert not list(out.glob("*/*.tsv")) and not (out / ".prep.json").exists() and not (out / ".alexrepro.lock").exists()
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    again = prep(synth_src, copy, PrepOptions(workers=1, shard_size=8), progress=False)  # every shard resumed
    assert again["splits"]["train"]["resumed_shards"] == again["splits"]["train"]["shards"]
    for name in ("skipped.tsv", "converted.tsv"):  # the reasons and kinds came back from the finished set
        assert (copy / name).read_text() == (out / name).read_text()
    assert again["quirks"] == prepared[1]["quirks"]


@pytest.mark.parametrize("damage", ["truncated", "count"])
def test_a_damaged_complete_shard_is_made_again_on_resume(prepared, synth_src, tmp_path, capsys, damage):
    out0, _ = prepared
    out = tmp_path / "out"
    shutil.copytree(out0, out)
    shard = out / "train" / "00001.h5"
    if damage == "truncated":
        shard.write_bytes(shard.read_bytes()[:3000])
    else:
        with h5py.File(shard, "r+") as f:
            f.attrs["count"] = int(f.attrs["count"]) - 1
    with pytest.raises(SystemExit) as e:
        main(["prep", str(synth_src), str(out), "--workers", "1", "--shard-size", "8"])
    err = capsys.readouterr().err
    assert e.value.code in (0, None)
    assert "Traceback" not in err
    (note,) = [ln for ln in err.splitlines() if "00001.h5 is damaged" in ln]
    assert note.endswith("preparing it again")
    for split in ("train", "val"):
        assert shard_contents(out, split) == shard_contents(out0, split)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="file names of any bytes need a Linux file system")
def test_names_that_are_not_utf8_are_prepared_under_an_escaped_key(tmp_path):
    from loader_data import jpeg_bytes, structured_image

    src = os.fsencode(tmp_path / "src")
    for folder in (b"/train/n01440764", b"/train/n0144\xff"):
        os.makedirs(src + folder)
        for i in range(2):
            Path(os.fsdecode(src + folder + b"/im%d.JPEG" % i)).write_bytes(jpeg_bytes(structured_image(i)))
    Path(os.fsdecode(src + b"/train/n01440764/caf\xe9.JPEG")).write_bytes(jpeg_bytes(structured_image(5)))
    Path(os.fsdecode(src + b"/train/n01440764/bro\xefken.JPEG")).write_bytes(b"not an image")
    out = tmp_path / "out"
    summary = prep(Path(os.fsdecode(src)), out, PrepOptions(workers=1), progress=False)
    assert summary["splits"]["train"]["written"] == 5 and summary["skipped"] == 1
    keys = open_split(out, "train").keys()
    assert "train/n01440764/caf\\xe9.JPEG" in keys and "train/n0144\\xff/im1.JPEG" in keys
    assert [c["wnid"] for c in read_manifest(out).class_list()] == ["n01440764", "n0144\\xff"]
    rows = (out / "skipped.tsv").read_text(encoding="utf-8").splitlines()
    assert rows[1].startswith("train/n01440764/bro\\xefken.JPEG\tnot an image")
