"""`alexrepro demo`: every stage runs and the summary says where everything went."""

import json

import numpy as np
import pytest
from cli_run import run_cli
from PIL import Image

from alexrepro.demo import MARKER, greyscale_copy, kept_accuracy


@pytest.mark.slow
def test_demo_runs_every_stage(tmp_path, capsys):
    folder = tmp_path / "demo"
    code, out, _ = run_cli(["demo", "--dir", str(folder), "--classes", "4", "--train-per-class", "12",
                         "--val-per-class", "4", "--epochs", "2", "--json"], capsys)
    assert code == 0
    summary = json.loads(out)
    assert summary["images"]["val"] == 16 and summary["images"]["train"] >= 48  # quirks convert or skip
    assert summary["chance_top1_error_pct"] == 75.0
    for key in ("center_crop", "ten_crops", "greyscale_center_crop"):
        assert 0.0 <= summary[key]["top1_error_pct"] <= 100.0
    assert (folder / "data-grey" / "manifest.json").is_file() and summary["artefacts"]["greyscale_val"]
    assert summary["ten_crop_gain_top1_pct"] == pytest.approx(
        summary["center_crop"]["top1_error_pct"] - summary["ten_crops"]["top1_error_pct"], abs=0.011)
    for name, path in summary["artefacts"]["figures"].items():
        with Image.open(path) as im:
            assert im.format == "PNG" and min(im.size) > 10, name
    with Image.open(summary["artefacts"]["figures"]["filters"]) as im:
        # Fig. 3's layout for the tiny net: 12 kernels per tower in 2 rows of 6, cells of at least 32 px,
        # tower 1 above tower 2 (4 rows in all).
        assert im.size[0] >= 6 * 32 and im.size[1] >= 4 * 32
    assert (folder / "run" / "checkpoints" / "best.pt").is_file()
    assert json.loads((folder / MARKER).read_text())["complete"] is True
    # A second demo into the same folder replaces the first; a foreign folder is refused.
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("keep me")
    code, _, _ = run_cli(["demo", "--dir", str(foreign)], capsys)
    assert code == 2 and (foreign / "thesis.tex").read_text() == "keep me"


@pytest.mark.parametrize("encoding", ["jpeg", "raw"])
def test_greyscale_copy_keeps_labels_keys_and_statistics(synth_src, tmp_path, encoding):
    from alexrepro.data.options import PrepOptions
    from alexrepro.data.prep import prep
    from alexrepro.data.prepared import STATS, open_split

    data = tmp_path / "data"
    prep(synth_src, data, PrepOptions(workers=1, shard_size=5, encoding=encoding), progress=False)
    grey = greyscale_copy(data, tmp_path / "grey")
    colour, copy = open_split(data, "val"), open_split(grey, "val")
    assert len(copy) == len(colour) and len(copy.shards) == len(colour.shards) > 1
    assert list(copy.labels) == list(colour.labels) and copy.keys() == colour.keys()
    assert copy.classes == colour.classes and copy.encoding == encoding
    assert (grey / STATS).read_bytes() == (data / STATS).read_bytes()  # the colour training set's mean image
    for i in range(len(copy)):
        g = copy[i][0].astype(np.float64)
        assert np.abs(g[..., 0] - g[..., 1]).max() <= 2 and np.abs(g[..., 1] - g[..., 2]).max() <= 2
        # ITU-R 601 luma of the colour image (PIL's "L"), up to JPEG's rounding
        luma = colour[i][0].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        assert np.abs(g[..., 1] - luma).mean() < (3 if encoding == "jpeg" else 1)


def test_kept_accuracy():
    assert kept_accuracy(20.0, 40.0) == pytest.approx(0.75)  # 60% right of 80%
    assert kept_accuracy(100.0, 90.0) is None
