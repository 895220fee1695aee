"""prep --resize: §2's shorter side (the default) or Caffe's warp, recorded in the manifest and shown by info.

The warp itself is tested against PIL in test_imaging.py; here, that prep stores warped images when
asked, says so in manifest.json and `info`, and refuses to mix the two resizes in one prepared set.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from cli_run import run_cli
from PIL import Image

from alexrepro.cli import main
from alexrepro.data.prepared import open_split, read_manifest


@pytest.fixture(scope="module")
def warped(synth_src, tmp_path_factory):
    """The val split alone, warped, stored raw (no JPEG step between the resize and the comparison)."""
    out = tmp_path_factory.mktemp("warp") / "out"
    with pytest.raises(SystemExit) as e:
        main(["prep", str(synth_src), str(out), "--split", "val", "--resize", "warp", "--encoding", "raw",
              "--workers", "1", "--json"])
    assert e.value.code in (0, None)
    return out


def test_prep_warp_stores_the_whole_image_squashed_to_256(warped, synth_src):
    split = open_split(warped, "val")
    checked = 0
    for k, key in enumerate(split.keys()):
        src = Image.open(io.BytesIO((synth_src / key).read_bytes()))
        if src.format != "JPEG" or src.mode != "RGB" or src.size[0] == src.size[1]:
            continue  # a plain non-square RGB JPEG: where warp and §2's crop differ
        stored, _ = split[k]
        # Caffe's convert_imageset: the whole image to 256×256 (antialiased bilinear, as prep resamples)
        want = np.asarray(src.resize((256, 256), Image.BILINEAR, reducing_gap=3.0), dtype=np.float64)
        assert stored.shape == (256, 256, 3)
        assert np.abs(stored - want).mean() < 1.0, key
        checked += 1
    assert checked >= 3


def test_the_manifest_and_info_record_the_resize(warped, capsys):
    assert read_manifest(warped).resize == "warp"
    assert json.loads((warped / "manifest.json").read_text())["resize"] == "warp"
    code, out, _ = run_cli(["info", warped, "--json"], capsys)
    assert code == 0 and json.loads(out)["resize"] == "warp"
    code, _, err = run_cli(["info", warped], capsys)
    assert code == 0 and "warped" in err


def test_one_set_holds_one_resize(warped, synth_src, tmp_path, capsys):
    """Adding the train split with §2's resize to a warped set would mix two preparations: refused."""
    code, _, err = run_cli(["prep", synth_src, warped, "--split", "train", "--encoding", "raw", "--workers", "1"],
                           capsys)
    assert code == 2 and "different resize" in err and "Traceback" not in err
    code, _, err = run_cli(["prep", synth_src, tmp_path / "x", "--resize", "squash"], capsys)
    assert code == 2 and "--resize must be one of shorter-side, warp" in err


def test_a_set_prepared_before_the_option_resumes_as_shorter_side(synth_src, tmp_path, capsys):
    """A manifest whose prep record has no resize (written before the option) is §2's: adding a split works."""
    out = tmp_path / "out"
    assert run_cli(["prep", synth_src, out, "--split", "val", "--workers", "1"], capsys)[0] == 0
    payload = json.loads((out / "manifest.json").read_text())
    del payload["resize"], payload["prep"]["identity"]["resize"]
    (out / "manifest.json").write_text(json.dumps(payload))
    assert read_manifest(out).resize == "shorter-side"
    code, _, err = run_cli(["prep", synth_src, out, "--split", "train", "--workers", "1"], capsys)
    assert code == 0, err
    assert set(read_manifest(out).splits) == {"train", "val"} and read_manifest(out).resize == "shorter-side"
