"""Bad input on every command: exit 2 (bad input) or 1 (failed work), one line saying what to do, no traceback.

A careless user's sweep: missing paths, a file where a folder belongs and back, unwritable outputs,
corrupt manifests, statistics, shards and checkpoints, nets for other class counts, zero and negative
numbers, unknown names. Each case names what the message must contain, so a fix cannot regress into
a different (say, generic) error.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import h5py
import pytest
import torch
from cli_run import run_cli
from loader_data import jpeg_bytes, make_set, structured_image

from alexrepro.cli import main
from alexrepro.data.prepared import write_shard
from alexrepro.errors import UserError, WorkFailed
from alexrepro.nets.alexnet import build_model
from alexrepro.recipe_reader import load_recipe
from alexrepro.training.checkpoint import Checkpoint, save_checkpoint

NUM_CLASSES = 3  # make_set(labels_are_indices=False) labels i % 3
SMALL = ["--set", f"model.num_classes={NUM_CLASSES}", "--set", "data.image_size=72", "--set", "data.crop_size=64",
         "--set", "model.fc_width=32", "--set", "data.workers=0", "--set", "optim.batch_size=8"]
CUDA = torch.cuda.is_available()


def error_line(err: str) -> str:
    """The one error line the CLI printed (progress bars and notes may come before it)."""
    lines = [ln for ln in err.splitlines() if ln.startswith(("error:", "failed:"))]
    assert len(lines) == 1, err
    return lines[0]


def _checkpoint(path: Path, classes: int) -> Path:
    """An untrained net of the small tiny recipe for `classes` classes (what eval and predict need)."""
    recipe = load_recipe("tiny", [a for a in SMALL if a != "--set"] + [f"model.num_classes={classes}"])
    torch.manual_seed(0)
    model = build_model(recipe.model, recipe.data.crop_size)
    names = [{"index": i, "wnid": f"n{i:08d}", "name": f"class {i}"} for i in range(classes)]
    save_checkpoint(path, Checkpoint(model=model.state_dict(), recipe=recipe, classes=names, epoch=1, step=1))
    return path


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A working set: a prepared set, a trained run, broken copies of both, and stray files and folders."""
    root = tmp_path_factory.mktemp("sweep")
    data = make_set(root / "data", n_train=20, n_val=7, labels_are_indices=False)
    w = {"root": root, "data": data, "empty": root / "empty", "file": root / "afile.txt"}
    w["empty"].mkdir()
    w["file"].write_text("hi\n")

    code = None
    with pytest.raises(SystemExit) as e:  # one real epoch: a resumable checkpoint for resume and the figures
        main(["train", str(data), "--recipe", "tiny", *SMALL, "--epochs", "1", "--run", str(root / "run"),
              "--device", "cpu", "--no-progress"])
    code = e.value.code
    assert code in (0, None)
    w["run"] = root / "run"
    w["ck"] = root / "run" / "checkpoints" / "last.pt"
    w["ck5"] = _checkpoint(root / "five.pt", 5)

    (root / "garbage.pt").write_bytes(b"garbage\n")
    w["garbage_pt"] = root / "garbage.pt"
    (root / "trunc.pt").write_bytes(w["ck"].read_bytes()[:5000])
    w["trunc_pt"] = root / "trunc.pt"

    for name in ("json_list", "garbage_stats", "trunc_shard", "no_shard", "bad_jpeg", "bad_label", "count_off",
                 "no_stats"):
        shutil.copytree(data, root / name)
        w[name] = root / name
    with h5py.File(root / "bad_label" / "train" / "00001.h5", "r+") as f:
        f["labels"][0] = NUM_CLASSES  # outside the 3 classes
    manifest = json.loads((root / "count_off" / "manifest.json").read_text())
    manifest["splits"]["val"]["shards"][0]["count"] += 1  # more than the shard holds
    (root / "count_off" / "manifest.json").write_text(json.dumps(manifest))
    (root / "no_stats" / "stats.h5").unlink()
    (root / "json_list" / "manifest.json").write_text("[1, 2]\n")
    (root / "garbage_stats" / "stats.h5").write_text("garbage\n")
    shard = root / "trunc_shard" / "train" / "00000.h5"
    shard.write_bytes(shard.read_bytes()[:4000])
    (root / "no_shard" / "train" / "00000.h5").unlink()
    payload = [jpeg_bytes(structured_image(i)) for i in range(8)]  # shard 0 of train, image 3 damaged
    payload[3] = b"garbage, not a JPEG"
    write_shard(root / "bad_jpeg" / "train" / "00000.h5", "jpeg", payload, [i % 3 for i in range(8)],
                [f"train/img{i}.JPEG" for i in range(8)])

    shutil.copytree(w["run"], root / "figfile_run")  # a run whose figures/ is a file: the default PNG is unwritable
    (root / "figfile_run" / "figures").write_text("not a folder\n")
    w["figfile_run"] = root / "figfile_run"
    (root / "mapping.txt").write_text("this is not a synset mapping\n")
    w["mapping"] = root / "mapping.txt"
    return w


# (id, args with {placeholders} from ws, exit code, text the error line must contain)
CASES = [
    # synth
    ("synth-classes-1", ["synth", "{root}/s1", "--classes", "1"], 2, "--classes must be"),
    ("synth-under-a-file", ["synth", "{file}/src"], 2, "cannot create SRC"),
    ("synth-into-a-file", ["synth", "{file}"], 2, "is a file"),
    # prep
    ("prep-missing-src", ["prep", "{root}/nope", "{root}/p1"], 2, "does not exist"),
    ("prep-empty-src", ["prep", "{empty}", "{root}/p1"], 2, "no recognisable ImageNet layout"),
    ("prep-workers-neg", ["prep", "{src}", "{root}/p1", "--workers", "-1"], 2, "--workers"),
    ("prep-out-under-a-file", ["prep", "{src}", "{file}/out"], 2, "cannot create OUT"),
    ("prep-bad-synset-mapping", ["prep", "{src}", "{root}/p2", "--synset-mapping", "{mapping}"], 2,
     "is not a synset mapping"),
    ("prep-labels-is-a-folder", ["prep", "{src}", "{root}/p3", "--val-labels", "{empty}"], 2, "is a folder"),
    # info
    ("info-missing", ["info", "{root}/nope"], 2, "does not exist"),
    ("info-on-a-file", ["info", "{file}"], 2, "is a file, not a prepared set"),
    ("info-not-prepared", ["info", "{empty}"], 2, "no manifest.json"),
    ("info-manifest-not-an-object", ["info", "{json_list}"], 2, "not an alexrepro manifest"),
    ("info-garbage-stats", ["info", "{garbage_stats}"], 2, "stats.h5 is corrupt"),
    ("info-verify-missing-shard", ["info", "{no_shard}", "--verify"], 1, "missing"),
    # pca
    ("pca-sample-0", ["pca", "{data}", "--sample", "0"], 2, "--sample"),
    ("pca-garbage-stats", ["pca", "{garbage_stats}"], 2, "stats.h5 is corrupt"),
    ("pca-truncated-shard", ["pca", "{trunc_shard}"], 2, "cannot read shard"),
    ("pca-missing-shard", ["pca", "{no_shard}"], 2, "(missing)"),
    # model, recipe
    ("model-classes-0", ["model", "summary", "--set", "model.num_classes=0"], 2, "num_classes"),
    ("recipe-unknown", ["recipe", "show", "nope"], 2, "unknown recipe"),
    ("recipe-is-a-folder", ["recipe", "show", "{empty}"], 2, "is a folder"),
    ("recipe-log-every-0", ["recipe", "show", "tiny", "--set", "run.log_every=0"], 2, "run.log_every"),
    ("recipe-seed-neg", ["recipe", "show", "tiny", "--set", "run.seed=-1"], 2, "run.seed"),
    ("recipe-checkpoint-every-neg", ["recipe", "show", "tiny", "--set", "run.checkpoint_every=-1"], 2,
     "run.checkpoint_every"),
    ("recipe-lighting-std-neg", ["recipe", "show", "tiny", "--set", "data.lighting_std=-1"], 2, "lighting_std"),
    ("recipe-list-item-not-a-number", ["recipe", "show", "tiny", "--set", "schedule.milestones=30,x"], 2,
     "'x' is not an integer"),
    ("recipe-list-brackets-broken", ["recipe", "show", "tiny", "--set", "schedule.milestones=[30, x]"], 2,
     "schedule.milestones must be a list of int"),
    # train
    ("train-epochs-0", ["train", "{data}", "--recipe", "tiny", *SMALL, "--run", "{root}/t1", "--epochs", "0"], 2,
     "schedule.epochs"),
    ("train-device-tpu", ["train", "{data}", "--recipe", "tiny", "--run", "{root}/t1", "--device", "tpu"], 2, "--device"),
    # --loader and --precision set data.loader and run.precision: the recipe's check names those
    ("train-loader-foo", ["train", "{data}", "--recipe", "tiny", "--run", "{root}/t1", "--loader", "foo"], 2,
     "data.loader must be one of 'auto', 'dali', 'torch', got 'foo'"),
    ("train-precision-fp8", ["train", "{data}", "--recipe", "tiny", "--run", "{root}/t1", "--precision", "fp8"], 2,
     "run.precision must be one of 'fp32', 'bf16', 'fp16', got 'fp8'"),
    ("train-parallel-x", ["train", "{data}", "--recipe", "tiny", *SMALL, "--run", "{root}/t1", "--parallel", "x"], 2,
     "--parallel"),
    ("train-resume-nothing", ["train", "{data}", "--recipe", "tiny", "--run", "{root}/t1", "--resume"], 2,
     "no checkpoint to resume"),
    ("train-wrong-class-count", ["train", "{data}", "--recipe", "tiny", "--run", "{root}/t1"], 2,
     f"--set model.num_classes={NUM_CLASSES}"),
    ("train-batch-bigger-than-set", ["train", "{data}", "--recipe", "tiny", *SMALL, "--set", "optim.batch_size=64",
                                     "--run", "{root}/t1", "--device", "cpu"], 2, "fewer than one batch"),
    ("train-run-under-a-file", ["train", "{data}", "--recipe", "tiny", *SMALL, "--run", "{file}/run",
                                "--device", "cpu"], 2, "cannot create --run"),
    ("train-run-is-a-file", ["train", "{data}", "--recipe", "tiny", *SMALL, "--run", "{file}", "--device", "cpu"], 2,
     "is a file"),
    ("train-resume-other-classes", ["train", "{data}", "--run", "{root}/t2", "--resume-from", "{ck5}",
                                    "--device", "cpu"], 2, "is a net for 5 classes"),
    ("train-resume-forced-other-net", ["train", "{data}", "--run", "{root}/t3", "--resume-from", "{ck}", "--force",
                                       "--set", "model.width=0.5", "--device", "cpu", "--no-progress"], 2,
     "do not fit the recipe's net"),
    ("train-resume-garbage", ["train", "{data}", "--run", "{root}/t4", "--resume-from", "{garbage_pt}",
                              "--device", "cpu"], 2, "not a file of tensors"),
    ("train-truncated-shard", ["train", "{trunc_shard}", "--recipe", "tiny", *SMALL, "--epochs", "1",
                               "--run", "{root}/t5", "--device", "cpu", "--no-progress"], 2, "cannot read shard"),
    ("train-damaged-image-in-a-worker", ["train", "{bad_jpeg}", "--recipe", "tiny", *SMALL, "--set", "data.workers=1",
                                         "--set", "data.loader=torch", "--epochs", "1", "--run", "{root}/t6",
                                         "--device", "cpu", "--no-progress"], 2, "#3 does not decode"),
    ("pca-damaged-image", ["pca", "{bad_jpeg}"], 2, "#3 does not decode"),
    ("pca-no-stats", ["pca", "{no_stats}"], 2, "finish preparing it first: alexrepro prep SRC "),
    ("train-no-stats", ["train", "{no_stats}", "--recipe", "tiny", *SMALL, "--epochs", "1", "--run", "{root}/t7",
                        "--device", "cpu", "--no-progress"], 2, "alexrepro prep SRC "),
    ("train-label-out-of-range", ["train", "{bad_label}", "--recipe", "tiny", *SMALL, "--epochs", "1",
                                 "--run", "{root}/t8", "--device", "cpu", "--no-progress"], 2,
     "lie outside the manifest's 3 classes"),
    ("eval-count-off", ["eval", "{count_off}", "-c", "{ck}", "--crops", "1"], 2, "--verify"),
    ("eval-label-out-of-range", ["eval", "{bad_label}", "-c", "{ck}", "--split", "train", "--crops", "1"], 2,
     "--verify"),
    ("eval-missing-set", ["eval", "{root}/nope", "-c", "{ck}"], 2, "does not exist"),
    ("eval-damaged-image", ["eval", "{bad_jpeg}", "-c", "{ck}", "--split", "train", "--crops", "1"], 2,
     "does not decode"),
    # eval
    ("eval-crops-3", ["eval", "{data}", "-c", "{ck}", "--crops", "3"], 2, "--crops"),
    ("eval-batch-0", ["eval", "{data}", "-c", "{ck}", "--batch-size", "0"], 2, "--batch-size"),
    ("eval-missing-checkpoint", ["eval", "{data}", "-c", "{root}/nope.pt"], 2, "does not exist"),
    ("eval-checkpoint-is-a-folder", ["eval", "{data}", "-c", "{empty}"], 2, "is a folder"),
    ("eval-checkpoint-is-text", ["eval", "{data}", "-c", "{file}"], 2, "not a PyTorch checkpoint"),
    ("eval-checkpoint-garbage", ["eval", "{data}", "-c", "{garbage_pt}"], 2, "corrupt or unreadable"),
    ("eval-checkpoint-truncated", ["eval", "{data}", "-c", "{trunc_pt}"], 2, "corrupt or unreadable"),
    ("eval-other-class-count", ["eval", "{data}", "-c", "{ck5}"], 2, "5 classes"),
    ("eval-per-class-is-a-folder", ["eval", "{data}", "-c", "{ck}", "--per-class", "{empty}"], 2, "is a folder"),
    ("eval-predictions-under-a-file", ["eval", "{data}", "-c", "{ck}", "--predictions", "{file}/p.csv"], 2,
     "is a file"),
    ("eval-procs-bad-device", ["eval", "{data}", "-c", "{ck}", "--procs", "2", "--device", "tpu"], 2, "--device"),
    # predict
    ("predict-top-0", ["predict", "-c", "{ck}", "{file}", "--top", "0"], 2, "--top"),
    ("predict-missing-data", ["predict", "-c", "{ck}", "{file}", "--data", "{root}/nope"], 2, "does not exist"),
    ("predict-unreadable-image", ["predict", "-c", "{ck}", "{file}", "--crops", "1"], 2, "first: "),
    ("predict-missing-image", ["predict", "-c", "{ck}", "{root}/nope.jpg"], 2, "does not exist"),
    ("predict-image-is-a-folder", ["predict", "-c", "{ck}", "{empty}"], 2, "is a folder"),
    # viz
    ("viz-filters-text-file", ["viz", "filters", "{file}"], 2, "not a PyTorch checkpoint"),
    ("viz-filters-empty-run", ["viz", "filters", "{empty}"], 2, "has no checkpoints"),
    ("viz-filters-out-is-a-folder", ["viz", "filters", "{run}", "--out", "{empty}"], 2, "is a folder"),
    ("viz-filters-default-unwritable", ["viz", "filters", "{figfile_run}"], 2, "give --out"),
    ("viz-curves-out-under-a-file", ["viz", "curves", "{run}", "--out", "{file}/c.png"], 2, "is a file"),
    ("viz-curves-not-a-run", ["viz", "curves", "{data}"], 2, "metrics.jsonl"),
    ("viz-predictions-n-0", ["viz", "predictions", "{run}", "{data}", "--n", "0"], 2, "--n"),
    ("viz-predictions-out-under-a-file", ["viz", "predictions", "{run}", "{data}", "--out", "{file}/p.png"], 2,
     "is a file"),
    ("viz-neighbors-k-0", ["viz", "neighbors", "{run}", "{data}", "--k", "0"], 2, "--k"),
    ("viz-neighbors-default-unwritable", ["viz", "neighbors", "{figfile_run}", "{data}"], 2, "give --out"),
    # bench
    ("bench-prep-workers-0", ["bench", "prep", "{src}", "--workers", "0"], 2, "--workers"),
    ("bench-prep-limit-0", ["bench", "prep", "{src}", "--limit", "0"], 2, "--limit"),
    ("bench-pca-max-images-0", ["bench", "pca", "{data}", "--max-images", "0"], 2, "--max-images"),
    ("bench-loader-workers-neg", ["bench", "loader", "{data}", "--workers", "-1"], 2, "--workers"),
    ("bench-loader-batches-0", ["bench", "loader", "{data}", "--batches", "0"], 2, "--batches"),
    ("bench-loader-device-tpu", ["bench", "loader", "{data}", "--device", "tpu"], 2, "--device"),
    ("bench-loader-missing-src", ["bench", "loader", "{data}", "--src", "{root}/nope"], 2, "--src"),
    ("bench-loader-not-prepared", ["bench", "loader", "{empty}"], 2, "no manifest.json"),
    ("bench-train-steps-0", ["bench", "train", "--recipe", "tiny", "--steps", "0"], 2, "--steps"),
    ("bench-train-batch-neg", ["bench", "train", "--recipe", "tiny", "--batch-size", "-1"], 2, "--batch-size"),
    ("bench-train-device-tpu", ["bench", "train", "--recipe", "tiny", "--device", "tpu"], 2, "--device"),
    ("bench-train-missing-data", ["bench", "train", "--recipe", "tiny", "--data", "{root}/nope"], 2, "does not exist"),
    ("bench-all-device-tpu", ["bench", "all", "--dir", "{root}/b1", "--device", "tpu"], 2, "--device"),
    # demo
    ("demo-epochs-0", ["demo", "--dir", "{root}/d1", "--epochs", "0"], 2, "--epochs"),
    ("demo-classes-1", ["demo", "--dir", "{root}/d1", "--classes", "1"], 2, "--classes"),
    ("demo-val-0", ["demo", "--dir", "{root}/d1", "--val-per-class", "0"], 2, "--val-per-class"),
    ("demo-dir-under-a-file", ["demo", "--dir", "{file}/demo"], 2, "cannot create --dir"),
]


@pytest.mark.parametrize(("args", "code", "says"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_an_exit_code(args, code, says, ws, synth_src, capsys):
    fill = {k: str(v) for k, v in ws.items()} | {"src": str(synth_src)}
    got, out, err = run_cli([a.format(**fill) for a in args], capsys)
    assert "Traceback" not in err
    line = error_line(err)
    assert (got, says in line) == (code, True), err
    assert len(line) < 600, line  # one readable line, not a dump
    assert out == ""  # nothing on stdout when the command did not succeed


def test_gpus_without_gpus_says_so(ws, capsys):
    if CUDA:
        pytest.skip("this machine has a GPU")
    got, _, err = run_cli(["train", ws["data"], "--recipe", "tiny", *SMALL, "--run", ws["root"] / "g1", "--gpus", "2"],
                          capsys)
    assert got == 2 and "no CUDA device" in error_line(err)


def test_nothing_is_created_or_overwritten_by_refused_commands(ws, capsys):
    before = {p: p.stat().st_mtime_ns for p in ws["run"].rglob("*") if p.is_file()}
    run_cli(["demo", "--dir", ws["root"] / "d2", "--epochs", "0"], capsys)
    run_cli(["train", ws["data"], "--recipe", "tiny", *SMALL, "--set", "optim.batch_size=64", "--run",
             ws["root"] / "t9"], capsys)
    run_cli(["train", ws["data"], "--recipe", "tiny", *SMALL, "--run", ws["run"]], capsys)  # holds checkpoints
    assert not (ws["root"] / "d2").exists() and not (ws["root"] / "t9").exists()
    assert {p: p.stat().st_mtime_ns for p in ws["run"].rglob("*") if p.is_file()} == before


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes through read-only modes")
def test_read_only_out_is_refused_before_the_pca_pass(ws, capsys, tmp_path):
    out = tmp_path / "ro"
    shutil.copytree(ws["data"], out)
    out.chmod(0o555)
    try:
        got, _, err = run_cli(["pca", out], capsys)
    finally:
        out.chmod(0o755)
    assert got == 2 and "cannot write to OUT" in error_line(err)


def test_a_worker_error_keeps_only_its_own_message():
    """torch re-raises a DataLoader worker's exception as cls("Caught ... Original Traceback ... cls: msg")."""
    wrapped = ("Caught UserError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
               '  File "x.py", line 1, in f\n    raise UserError(\nalexrepro.errors.UserError: the shard is bad; redo it\n')
    assert str(UserError(wrapped)) == "the shard is bad; redo it"
    assert str(WorkFailed(wrapped.replace("UserError", "WorkFailed"))) == "the shard is bad; redo it"
    assert str(UserError("Caught nothing: a plain message")) == "Caught nothing: a plain message"
    assert str(pickle.loads(pickle.dumps(UserError("plain")))) == "plain"


@pytest.mark.parametrize("args", [["recipe", "list"], ["model", "summary", "--recipe", "tiny"],
                                  ["info", "{data}"], ["recipe", "show", "tiny"]])
def test_json_is_exactly_one_object(args, ws, capsys):
    got, out, _ = run_cli([a.format(data=ws["data"]) for a in args] + ["--json"], capsys)
    assert got == 0
    assert isinstance(json.loads(out), dict)


HELP = [[], ["synth"], ["prep"], ["info"], ["pca"], ["model"], ["model", "summary"], ["recipe"], ["recipe", "list"],
        ["recipe", "show"], ["train"], ["eval"], ["predict"], ["viz"], ["viz", "filters"], ["viz", "curves"],
        ["viz", "predictions"], ["viz", "neighbors"], ["bench"], ["bench", "prep"], ["bench", "pca"],
        ["bench", "loader"], ["bench", "train"], ["bench", "all"], ["demo"]]


@pytest.mark.parametrize("command", HELP, ids=[" ".join(c) or "alexrepro" for c in HELP])
def test_help_works_everywhere(command, capsys):
    got, out, err = run_cli([*command, "--help"], capsys)
    assert got == 0 and "Usage" in out + err and "Traceback" not in out + err


def test_unknown_command_and_option_are_usage_errors(capsys):
    assert run_cli(["nosuch"], capsys)[0] == 2
    assert run_cli(["train", "--bogus"], capsys)[0] == 2

