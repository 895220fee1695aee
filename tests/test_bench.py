"""`alexrepro bench`: each benchmark runs both sides on the same data and reports consistent ratios.

Nothing here times anything against a threshold (speed is a benchmark's business, not a test's);
the tests check that the reports are complete and that their ratios are computed from their own rates.
"""

import json

import pytest

from alexrepro.bench.train import bench_train, time_interleaved
from alexrepro.cli import main
from alexrepro.prep import PrepOptions, prep
from alexrepro.stats import compute_pca


@pytest.fixture(scope="module")
def prepared(synth_src, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "out"
    prep(synth_src, out, PrepOptions(workers=1), progress=False)
    compute_pca(out, progress=False)
    return out


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    return e.value.code, capsys.readouterr()


def test_time_interleaved_takes_turns_and_keeps_the_best_round():
    calls = []
    loops = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    secs = time_interleaved(loops, steps=2, warmup=1, rounds=3, device=__import__("torch").device("cpu"))
    assert calls == ["a", "b"] + ["a", "a", "b", "b"] * 3
    assert set(secs) == {"a", "b"} and all(s >= 0 for s in secs.values())


def test_bench_train_reports_every_loop_and_the_ceiling(prepared):
    r = bench_train("tiny", ("model.num_classes=4", "model.width=0.125", "model.fc_width=32"), batch_size=8,
                    steps=1, warmup=1, rounds=1, data=str(prepared), loader="torch", workers=0)
    assert set(r["loops"]) == {"ours", "plain", "torchvision", "end_to_end"}
    for name, loop in r["loops"].items():
        assert loop["images_per_s"] == pytest.approx(8 / loop["seconds_per_step"], rel=1e-2), name
        assert loop["fraction_of_ceiling"] == pytest.approx(loop["images_per_s"] / r["ceiling_images_per_s"],
                                                            rel=1e-2)
    # the ceiling: measured FLOP/s over 3 × 2 × multiply-adds per image
    assert r["ceiling_images_per_s"] == pytest.approx(r["matmul_gflops"] * 1e9 / (6 * r["forward_macs_per_image"]),
                                                      rel=1e-2)
    ours, plain = r["loops"]["ours"]["seconds_per_step"], r["loops"]["plain"]["seconds_per_step"]
    assert r["overhead_vs_plain"] == pytest.approx(ours / plain - 1, abs=1e-3)
    assert r["machine"]["cpu_cores"] >= 1 and r["machine"]["torch"]


def test_bench_prep_pca_loader_cli_json(synth_src, prepared, capsys):
    code, cap = run_cli(["bench", "prep", str(synth_src), "--limit", "6", "--workers", "1", "--json"], capsys)
    assert code == 0, cap.err
    r = json.loads(cap.out)
    assert r["bench"] == "prep" and r["speedup_per_core"] == pytest.approx(
        r["ours_images_per_s_per_core"] / r["baseline_images_per_s_per_core"], rel=0.01)
    code, cap = run_cli(["bench", "pca", str(prepared), "--max-images", "8", "--json"], capsys)
    assert code == 0, cap.err
    r = json.loads(cap.out)
    assert r["eigval_max_rel_diff"] < 1e-9  # both passes agree on the numbers they time
    code, cap = run_cli(["bench", "loader", str(prepared), "--src", str(synth_src), "--batches", "1",
                         "--batch-size", "4", "--workers", "0", "--kinds", "torch", "--json"], capsys)
    assert code == 0, cap.err
    r = json.loads(cap.out)
    assert r["loaders"]["torch"]["images_per_s"] > 0 and r["baseline"]["images_per_s"] > 0
