"""What a resumed `train` continues from, with real processes (docs/RELIABILITY.md, R4 and R5).

A run folder copied without its file times continues from the checkpoint furthest along, and a prepared
set made again in place is refused unless the user says so. The data and the net are test_faults_train's
(4 classes, 32 training images, the `tiny` recipe at 64-pixel crops: 8 steps per epoch); the processes
are started, waited for and ended with tests/test_faults.py's helpers.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from run_state import metrics_steps
from test_faults import LINUX_PROC, child_env, error_lines, finish, started
from test_faults_train import SMALL_RUN as SETS
from test_faults_train import (
    STEPS_PER_EPOCH,
    fault_hooks,  # noqa: F401 - the fixture `hooks`
    small_train_set,  # noqa: F401 - the fixture `data`
    train_args,
)

from alexrepro.training import checkpoint as ck
from alexrepro.training.loop import TrainOptions, run_training

pytestmark = pytest.mark.skipif(not LINUX_PROC, reason="needs Linux /proc to find and watch the children")

@pytest.fixture(scope="module")
def two_epochs(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of 2 epochs: epoch-001.pt, epoch-002.pt, best.pt and last.pt (read-only; tests copy it)."""
    run = tmp_path_factory.mktemp("two") / "run"
    run_training(TrainOptions(out=data, run_dir=run, recipe="tiny", overrides=SETS + ["schedule.epochs=2"],
                              device="cpu", show_progress=False))
    return run


def copied(run: Path, to: Path) -> Path:
    """A copy as `cp -r` makes it: contents only, every file's time the time of the copy."""
    shutil.copytree(run, to, copy_function=shutil.copyfile)
    return to


def note_lines(log: Path) -> list[str]:
    return [ln for ln in log.read_text().splitlines() if ln.startswith("note: resuming from")]


# --------------------------------------------------------------------------------------------- by position
def test_a_copied_run_with_shuffled_times_resumes_from_the_checkpoint_furthest_along(data, two_epochs, hooks,
                                                                                      tmp_path):
    run = copied(two_epochs, tmp_path / "run")
    folder = ck.checkpoint_dir(run)
    # A restore that gave the files the opposite order in time: the earliest checkpoint is now the newest file.
    order = sorted(folder.glob("*.pt"), key=lambda p: (ck.read_checkpoint(p).step, p.name == ck.LAST, p.name == ck.BEST))
    for age, path in enumerate(order):  # the furthest along (last.pt) gets the oldest time
        os.utime(path, ns=(10**18 - age * 10**9, 10**18 - age * 10**9))
    assert max(folder.glob("*.pt"), key=lambda p: p.stat().st_mtime_ns).name == "epoch-001.pt"
    with started(train_args(data, run, "--epochs", 3, "--resume"), child_env(hooks), tmp_path / "resume.log") as proc:
        assert finish(proc) == 0, (tmp_path / "resume.log").read_text()
    assert not error_lines(tmp_path / "resume.log")
    (note,) = note_lines(tmp_path / "resume.log")
    assert note == f"note: resuming from last.pt: epoch [2] batch 0/{STEPS_PER_EPOCH} (step {2 * STEPS_PER_EPOCH})"
    assert ck.read_checkpoint(folder / ck.LAST).step == 3 * STEPS_PER_EPOCH  # one epoch more, not two again
    steps = metrics_steps(run)
    assert steps == sorted(steps) and len(steps) == len(set(steps)) + 3  # each step once (+ 3 epoch records)


def test_a_mid_epoch_last_checkpoint_is_ahead_of_the_epoch_files_whatever_their_times(data, two_epochs, tmp_path,
                                                                                       capsys):
    """A stop mid-epoch leaves last.pt ahead of every epoch file; a copy that makes it the oldest file changes
    nothing, and a damaged last.pt hands on to the next position, named. (In this process: the choice only.)"""
    run = copied(two_epochs, tmp_path / "run")
    folder = ck.checkpoint_dir(run)
    saved = ck.read_checkpoint(folder / ck.LAST)
    saved.epoch, saved.batch, saved.step = 2, 3, saved.step + 3  # where a stop in epoch [2] would have left it
    ck.save_checkpoint(folder / ck.LAST, saved)
    os.utime(folder / ck.LAST, ns=(1, 1))  # 1970: the oldest file of the folder
    assert ck.checkpoint_candidates(run)[0].name == ck.LAST
    opts = TrainOptions(out=data, run_dir=run, overrides=SETS + ["schedule.epochs=2"], device="cpu", resume="",
                        show_progress=False)  # nothing more to train: only the choice is seen
    run_training(opts)
    notes = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("note: resuming from")]
    assert notes == [f"note: resuming from last.pt: epoch [2] batch 3/{STEPS_PER_EPOCH} (step {2 * STEPS_PER_EPOCH + 3})"]
    (folder / ck.LAST).write_bytes(b"torn")
    run_training(opts)
    err = capsys.readouterr().err
    assert "skipping last.pt" in err
    (note,) = [ln for ln in err.splitlines() if ln.startswith("note: resuming from")]
    assert re.fullmatch(rf"note: resuming from (epoch-002|best)\.pt: epoch \[2\] batch 0/{STEPS_PER_EPOCH} "
                        rf"\(step {2 * STEPS_PER_EPOCH}\); the checkpoints ahead of it do not load \(see the "
                        r"warnings\)", note), note


# --------------------------------------------------------------------------------------------- the set trained on
def prepared(src: Path, out: Path, **options: object) -> Path:
    from alexrepro.data.options import PrepOptions
    from alexrepro.data.prep import prep
    from alexrepro.data.stats import compute_pca

    prep(src, out, PrepOptions(workers=1, **options), progress=False)
    compute_pca(out, progress=False)
    return out


def test_a_set_prepared_again_in_place_is_refused_on_resume_unless_allowed(synth_src, hooks, tmp_path, capsys):
    from alexrepro.data.manifest import set_identity

    out, run = prepared(synth_src, tmp_path / "out"), tmp_path / "run"
    sets = [s for s in SETS if not s.startswith("model.num_classes")] + ["model.num_classes=4", "schedule.epochs=1"]
    run_training(TrainOptions(out=out, run_dir=run, recipe="tiny", overrides=sets, device="cpu", show_progress=False))
    first = set_identity(out)
    assert ck.read_checkpoint(ck.checkpoint_dir(run) / ck.LAST).set_identity == first
    shutil.rmtree(out)
    prepared(synth_src, out, resize="warp")  # the same source and image count, another preprocessing
    assert set_identity(out) != first
    before = {p.name: p.read_bytes() for p in ck.checkpoint_dir(run).iterdir()}
    resume = ["train", out, "--run", run, "--device", "cpu", "--no-progress", "--epochs", 2, "--resume"]
    with started(resume, child_env(hooks), tmp_path / "refused.log") as proc:
        assert finish(proc) == 2
    (line,) = error_lines(tmp_path / "refused.log")
    assert line.startswith(f"error: {out} is not the prepared set {ck.checkpoint_dir(run) / ck.LAST} was trained on")
    assert line.endswith("add --allow-changed-data to continue on this one")
    assert {p.name: p.read_bytes() for p in ck.checkpoint_dir(run).iterdir()} == before  # nothing written
    run_training(TrainOptions(out=out, run_dir=run, overrides=["schedule.epochs=2"], device="cpu", resume="",
                              allow_changed_data=True, show_progress=False))
    assert "(--allow-changed-data); the run's next checkpoints record this one" in capsys.readouterr().err
    saved = ck.read_checkpoint(ck.checkpoint_dir(run) / ck.LAST)
    assert saved.epoch == 2 and saved.set_identity == set_identity(out)  # a later resume needs no flag


def test_the_resume_command_drops_allow_changed_data():
    from alexrepro.training.stopping import resume_command

    args = ["train", "OUT", "--run", "R", "--resume", "--allow-changed-data"]
    assert resume_command(args, Path("OUT"), Path("R")) == "alexrepro train OUT --run R --resume"
