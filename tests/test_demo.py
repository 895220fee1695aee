"""`alexrepro demo`: every stage runs and the summary says where everything went."""

import json

import pytest
from PIL import Image

from alexrepro.cli import main
from alexrepro.demo import MARKER


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    out = capsys.readouterr().out
    return e.value.code, out


@pytest.mark.slow
def test_demo_runs_every_stage(tmp_path, capsys):
    folder = tmp_path / "demo"
    code, out = run_cli(["demo", "--dir", str(folder), "--classes", "4", "--train-per-class", "12",
                         "--val-per-class", "4", "--epochs", "2", "--json"], capsys)
    assert code == 0
    summary = json.loads(out)
    assert summary["images"]["val"] == 16 and summary["images"]["train"] >= 48  # quirks convert or skip
    assert summary["chance_top1_error_pct"] == 75.0
    for key in ("center_crop", "ten_crops"):
        assert 0.0 <= summary[key]["top1_error_pct"] <= 100.0
    assert summary["ten_crop_gain_top1_pct"] == pytest.approx(
        summary["center_crop"]["top1_error_pct"] - summary["ten_crops"]["top1_error_pct"], abs=0.011)
    for name, path in summary["artefacts"]["figures"].items():
        with Image.open(path) as im:
            assert im.format == "PNG" and min(im.size) > 10, name
    assert (folder / "run" / "checkpoints" / "best.pt").is_file()
    assert json.loads((folder / MARKER).read_text())["complete"] is True
    # A second demo into the same folder replaces the first; a foreign folder is refused.
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("keep me")
    code, _ = run_cli(["demo", "--dir", str(foreign)], capsys)
    assert code == 2 and (foreign / "thesis.tex").read_text() == "keep me"
