"""Files `train` reads and writes, damaged or full, with real processes (docs/RELIABILITY.md, D7, D8 and W6).

A damaged stats.h5 or shard is one line naming the file and the command that mends it; met during training,
the run first keeps a checkpoint of its last good step. A run record that cannot be written (here a file-size
limit, as a full disk) is W1's one line, after a checkpoint. The data and the net are test_faults_train's.
"""

from __future__ import annotations

import json
import resource
import shutil
import signal
from pathlib import Path

import h5py
import numpy as np
import pytest
from test_faults import LINUX_PROC, child_env, error_lines, finish, started
from test_faults_train import SMALL_RUN as SETS
from test_faults_train import (
    STEPS_PER_EPOCH,
    cli,
    fault_hooks,  # noqa: F401 - the fixture `hooks`
    small_train_set,  # noqa: F401 - the fixture `data`
    train_args,
)

from alexrepro.training import checkpoint as ck
from alexrepro.training.loop import TrainOptions, run_training

pytestmark = pytest.mark.skipif(not LINUX_PROC, reason="needs Linux /proc to find and watch the children")

@pytest.fixture
def copy(data: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(data, tmp_path / "set"))


def replace_dataset(path: Path, name: str, value: np.ndarray) -> None:
    with h5py.File(path, "r+") as f:
        del f[name]
        f[name] = value


# --------------------------------------------------------------------------------------------- reading
def test_a_damaged_stats_file_is_one_line_naming_the_command_that_mends_it(copy, hooks, tmp_path, capsys):
    replace_dataset(copy / "stats.h5", "eigvec", np.eye(3, 4))  # the PCA: pca makes it again
    run = tmp_path / "run"
    with started(train_args(copy, run), child_env(hooks), tmp_path / "pca.log") as proc:
        assert finish(proc) == 2
    (line,) = error_lines(tmp_path / "pca.log")
    assert line == f"error: {copy}/stats.h5 is corrupt (eigvec is 3×4, not 3×3); run alexrepro pca {copy} again"
    assert not run.exists()  # refused before any work
    code, err = cli(["pca", copy], capsys)  # ... and pca does mend it
    assert code == 0 and cli(["info", copy], capsys)[0] == 0
    replace_dataset(copy / "stats.h5", "mean", np.zeros((256, 256), np.float32))  # the mean: prep makes it
    code, err = cli(train_args(copy, run), capsys)
    assert code == 2 and "Traceback" not in err and not run.exists()
    assert f"stats.h5 is corrupt (mean is 256×256, not 256×256×3); delete it and run alexrepro prep SRC {copy}" in err
    replace_dataset(copy / "stats.h5", "mean", np.full((256, 256, 3), np.nan, np.float32))
    code, err = cli(["info", copy, "--verify"], capsys)
    assert code == 2 and "mean holds values that are not finite" in err


def flip_a_name(shard: Path, name: bytes) -> None:
    """Flip one bit of a dataset's name where the file's HDF5 structure records it (its metadata, no image)."""
    raw = shard.read_bytes()
    assert raw.count(name) == 1
    at = raw.index(name) + 2
    shard.write_bytes(raw[:at] + bytes([raw[at] ^ 1]) + raw[at + 1 :])


def test_a_shard_damaged_in_its_hdf5_structure_stops_training_with_a_checkpoint(copy, hooks, tmp_path):
    """The labels and counts still read (so the set opens, D1), the images do not: met at validation."""
    shard = copy / "val" / "00000.h5"
    intact = shard.read_bytes()
    flip_a_name(shard, b"images")
    run = tmp_path / "run"
    with started(train_args(copy, run, "--epochs", 1), child_env(hooks), tmp_path / "train.log") as proc:
        assert finish(proc) == 2
    (line,) = error_lines(tmp_path / "train.log")
    assert line.startswith(f"error: shard {shard} is damaged (") and "'images' doesn't exist" in line
    assert f"check the set with alexrepro info {copy} --verify and run alexrepro prep again" in line
    where = ck.checkpoint_dir(run) / ck.LAST
    assert line.endswith("; training stopped: the run's last.pt keeps every step before it; once the set reads, "
                         "run the same command with --resume")
    assert ck.read_checkpoint(where).step == STEPS_PER_EPOCH  # the epoch's training is kept
    shard.write_bytes(intact)  # the set mended: the run validates the epoch it kept and ends
    summary = run_training(TrainOptions(out=copy, run_dir=run, overrides=SETS + ["schedule.epochs=1"],
                                        device="cpu", resume="", show_progress=False))
    assert summary["epochs"] == 1 and summary["steps"] == STEPS_PER_EPOCH


# --------------------------------------------------------------------------------------------- writing
def test_a_full_disk_while_appending_metrics_checkpoints_first_and_is_one_line(data, hooks, tmp_path):
    run = tmp_path / "run"
    run_training(TrainOptions(out=data, run_dir=run, recipe="tiny", overrides=SETS + ["schedule.epochs=1"],
                              device="cpu", show_progress=False))
    limit = 2 * max(p.stat().st_size for p in ck.checkpoint_dir(run).iterdir())  # checkpoints still fit
    metrics = run / "metrics.jsonl"
    pad = json.dumps({"kind": "pad", "step": 0, "pad": ""})
    with open(metrics, "a") as f:  # metrics.jsonl a record short of the limit: the next append fails
        f.write(pad.replace('""', '"' + "x" * (limit - metrics.stat().st_size - len(pad) - 100) + '"') + "\n")

    def small_files() -> None:  # a file-size limit makes the append fail (EFBIG), as a full disk would
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    args = train_args(data, run, "--epochs", 2, "--resume")
    with started(args, child_env(hooks), tmp_path / "full.log", preexec=small_files) as proc:
        assert finish(proc) == 1
    (line,) = error_lines(tmp_path / "full.log")
    assert line.startswith(f"failed: cannot write {metrics}: File too large (") and " free there); " in line
    saved = ck.read_checkpoint(ck.checkpoint_dir(run) / ck.LAST)
    assert STEPS_PER_EPOCH < saved.step < 2 * STEPS_PER_EPOCH  # mid-epoch: the steps after the failure kept
    assert (f"; training stopped: checkpoint {ck.checkpoint_dir(run) / ck.LAST} holds epoch [1] batch "
            f"{saved.batch}/{STEPS_PER_EPOCH} (step {saved.step}); resume with: alexrepro train {data} ") in line
    assert line.endswith(" --resume")
    done = run_training(TrainOptions(out=data, run_dir=run, overrides=SETS + ["schedule.epochs=2"], device="cpu",
                                     resume="", show_progress=False))  # room again: it carries on
    assert done["steps"] == 2 * STEPS_PER_EPOCH and done["epochs"] == 2
