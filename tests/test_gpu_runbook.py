"""tools/gpu: run_all.sh parses and runs its steps, and summary.py gathers results into the files it promises.

The whole `run_all.sh --cpu-dry-run` takes many minutes (torch.compile on the CPU), so CI runs one cheap step
of it end to end (`--only conv`) and summary.py on results written here.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN_ALL = ROOT / "tools" / "gpu" / "run_all.sh"
SUMMARY = ROOT / "tools" / "gpu" / "summary.py"
OUT_FILES = {"run.log", "env.txt", "profile_trace.json.gz", "profile.json", "train.json", "loader.json", "other.json",
             "summary.json"}


def test_run_all_parses_and_its_help_names_every_step():
    assert subprocess.run(["bash", "-n", str(RUN_ALL)]).returncode == 0
    text = RUN_ALL.read_text()
    steps = {m.split(":")[0] for m in re.findall(r'^\s*step "?([\w:$]+)', text, re.M)} - {"data"}
    steps = {s for s in steps if not s.startswith("$")} | {"spread", "mp"}
    help_text = subprocess.run(["bash", str(RUN_ALL), "--help"], capture_output=True, text=True).stdout
    listed = set(re.findall(r"^#   (\w+) ", help_text, re.M))
    assert steps <= listed, steps - listed
    assert len(OUT_FILES) <= 8  # a call to the GPU machine brings back at most 8 files


def write(res, name, value):
    (res / f"{name}.json").write_text(json.dumps(value))


def profile(lrn_share, ips):
    return {"images_per_s": ips, "measured_ms_per_step": 5.0, "device_busy_fraction": 0.97,
            "categories": {"conv": {"share": 1 - lrn_share, "ms_per_step": 4.0}, "LRN": {"share": lrn_share}},
            "top": [{"share": 0.3, "ms_per_step": 1.5, "category": "conv", "name": "sm90_xmma_fprop"}]}


def loader(rate, passes=None):
    run = {"images_per_s": rate, "first_batch_s": 1.0, "cpu": {"ours_cores_busy": 9.0}}
    if passes:
        run["passes"] = [dict(run), {"images_per_s": passes}]
    return {"loaders": {"torch": run}}


def test_summary_gathers_the_results_and_checks_the_targets(tmp_path):
    res, out = tmp_path / "res", tmp_path / "out"
    res.mkdir()
    out.mkdir()
    write(res, "profile", profile(0.08, 20000))
    write(res, "profile_torch", profile(0.47, 11680))
    train = {"loops": {"ours": {"images_per_s": 26000}}, "ours_vs_torchvision": 0.85, "end_to_end_vs_synthetic": 0.9,
             "lrn": {"seconds_forward_backward": {"ours": 1e-3}, "floor_seconds": 4e-4, "times_floor": {"torch": 9.0, "triton": 2.5}}}
    write(res, "train_compile", train)
    write(res, "curves", {"within_tolerance": True})
    write(res, "lrn", {"seconds_forward_backward": {"triton": 4e-4}, "times_floor": {"triton": 2.6},
                       "tiles": {"default": "1024x4", "best": "2048x8", "best_vs_default": 0.8,
                                 "times_floor": {"1024x4": 2.5, "2048x8": 2.0}}})
    write(res, "loader", {"loaders": {"dali": {"images_per_s": 39000}},
                          "dali_variants": {"roi_decode=true": {"images_per_s": 41000, "vs_default": 1.05}}})
    for i, (rate, second) in enumerate([(9579, 20000), (23797, 23000), (15000, 22000)], start=1):
        write(res, f"spread_torch_{i}", loader(rate, second))
    write(res, "conv", {"grouped_vs_ungrouped_per_flop": 1.6})
    write(res, "mp_train", {"steps": 2, "devices": ["cuda:0", "cuda:0"]})
    (res / "broken.json").write_text("{not json")
    (res / "steps.tsv").write_text("pytest\t0\t60\nprofile\t0\t20\ntrain\tskipped\t0\n")
    done = subprocess.run([sys.executable, str(SUMMARY), str(res), str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert {p.name for p in out.iterdir()} == {"profile.json", "train.json", "loader.json", "other.json", "summary.json"}
    s = json.loads((out / "summary.json").read_text())
    assert s["steps"][2] == {"step": "train", "exit": "skipped", "seconds": 0}
    assert s["spread"]["torch"] == {"runs": 3, "pass1_min_median_max": [9579, 15000, 23797],
                                    "pass2_min_median_max": [20000, 22000, 23000]}
    met = {t["target"]: (t["figure"], t["met"]) for t in s["targets"]}
    assert met["LRN share of kernel time, eager, Triton kernel"] == (0.08, True)
    assert met["LRN share of kernel time, eager, torch path (before)"] == (0.47, None)  # for reference
    assert met["LRN forward + backward ÷ memory floor (Triton)"] == ({"times_floor.triton": 2.6}, True)  # bench lrn's
    assert met["LRN kernels at the fastest tile: time ÷ the default tile's"] == ({"2048x8": 0.8}, None)
    assert met["paper net compiled, images/s (H200 target)"] == (26000, True)
    assert met["end to end ÷ synthetic input, compiled"] == (0.9, False)
    assert met["DALI, 256×256 JPEG shards, images/s (default settings)"] == (39000, False)
    assert met["DALI, JPEG, images/s (the fastest setting tried, the default run again among them)"] == (
        {"roi_decode=true": 41000}, True)
    assert met["DALI, raw shards, images/s"] == (None, None)  # not measured: neither met nor failed
    assert met["grouped conv cost per FLOP ÷ ungrouped (switch above 1.3)"] == (1.6, False)
    assert met["model-parallel path ran: steps, towers' devices"] == ({"steps": 2, "devices": ["cuda:0", "cuda:0"]}, True)
    assert json.loads((out / "profile.json").read_text())["eager_torch"]["images_per_s"] == 11680
    assert "target: paper net ÷ torchvision AlexNet, compiled: 0.85 (>= 0.8): met" in done.stdout
    assert "fastest 2048x8, 0.8 of the default 1024x4's time" in done.stdout


@pytest.mark.slow
def test_run_all_dry_run_of_one_step_end_to_end(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "WORK": str(tmp_path / "work"), "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(RUN_ALL), "--cpu-dry-run", "--only", "conv"], capture_output=True, text=True,
                          env=env, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:]
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} <= OUT_FILES and (out / "env.txt").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert [s["step"] for s in summary["steps"]] == ["install", "conv"] and summary["steps"][1]["exit"] == "0"
    conv = json.loads((out / "other.json").read_text())["conv"]
    assert conv["bench"] == "conv" and "grouped_vs_ungrouped_per_flop" in conv
    assert "== summary after" in (out / "run.log").read_text()
