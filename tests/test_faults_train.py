"""Faults of `train` with real processes: signals, a second process, damaged checkpoints, full disks (docs/RELIABILITY.md).

The processes are started, signalled by the pid started (or its process group, as a terminal's Ctrl-C) and
ended here, through tests/test_faults.py's helpers; its test-only sitecustomize slows each batch read so that
a signal lands mid-epoch. The data is test_train's tiny raw set (4 classes, 32 training images), the net
the `tiny` recipe at 64-pixel crops: 8 steps of 4 images per epoch.
"""

from __future__ import annotations

import os
import re
import resource
import shlex
import signal
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from cli_run import run_cli
from loader_data import jpeg_bytes, structured_image
from loader_data import make_set as make_jpeg_set
from run_state import assert_same_state, metrics_steps
from test_faults import (
    GONE_WITHIN,
    LINUX_PROC,
    READ_DELAY,
    ROOT,
    SITECUSTOMIZE,
    alive,
    child_env,
    children,
    ender,
    error_lines,
    finish,
    started,
    wait_for,
)
from test_train import make_set

from alexrepro.data.prepared import write_shard
from alexrepro.errors import UserError
from alexrepro.process.locking import LOCK_FILE, FolderLock, read_holder
from alexrepro.process.signals import Stopped
from alexrepro.training import checkpoint as ck
from alexrepro.training.loop import TrainOptions, run_training
from alexrepro.training.stopping import resume_command

pytestmark = pytest.mark.skipif(not LINUX_PROC, reason="needs Linux /proc to find and watch the children")

# the tiny raw set's run at 64-pixel crops (test_faults_files and test_faults_resume use it and the fixtures
# `hooks` and `data` below, adding their own schedule.epochs)
SMALL_RUN = ["model.num_classes=4", "data.image_size=72", "data.crop_size=64", "data.workers=0",
             "optim.batch_size=4", "run.log_every=2"]
SETS = [*SMALL_RUN, "schedule.epochs=2"]
STEPS_PER_EPOCH = 8  # 32 training images / 4


@pytest.fixture(scope="module", name="hooks")
def fault_hooks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of test_faults' child-only sitecustomize (it slows each batch read when asked)."""
    folder = tmp_path_factory.mktemp("hooks")
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return folder


@pytest.fixture(scope="module", name="data")
def small_train_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny raw set: 4 classes, 32 training images."""
    return make_set(tmp_path_factory.mktemp("trainset") / "out")


@pytest.fixture(scope="module")
def straight(data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, ck.Checkpoint]:
    """The last checkpoint of an uninterrupted run, by number of processes (computed when first asked)."""
    cache: dict[int, ck.Checkpoint] = {}

    def get(procs: int) -> ck.Checkpoint:
        if procs not in cache:
            run = tmp_path_factory.mktemp(f"straight{procs}") / "run"
            run_training(TrainOptions(out=data, run_dir=run, recipe="tiny", overrides=SETS, device="cpu",
                                      procs=procs, show_progress=False))
            cache[procs] = ck.read_checkpoint(ck.checkpoint_dir(run) / ck.LAST)
        return cache[procs]

    return get  # type: ignore[return-value]


def train_args(data: Path, run: Path, *extra: object) -> list[object]:
    return ["train", data, "--recipe", "tiny", "--run", run, "--device", "cpu", "--no-progress",
            *[x for s in SETS for x in ("--set", s)], *extra]


def resume_from_line(line: str, tmp: Path) -> subprocess.CompletedProcess:
    """Run the command the stop line gives, as a user would paste it (no slowing down)."""
    command = line.split("resume with: ", 1)[1]
    args = shlex.split(command)
    assert args[0] == "alexrepro" and args[-1] == "--resume"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "alexrepro", *args[1:]], env=env, capture_output=True, text=True,
                          timeout=600)


# --------------------------------------------------------------------------------------------- signals
@pytest.mark.slow
@pytest.mark.parametrize(("signum", "procs", "to"), [
    (signal.SIGTERM, 1, "pid"), (signal.SIGINT, 1, "group"),  # one process: a scheduler's stop, Ctrl-C
    (signal.SIGINT, 2, "group"),  # two gloo ranks: Ctrl-C reaches the launcher (the ranks have sessions of their own)
    (signal.SIGTERM, 2, "rank 1"),  # one rank only (as torchrun or a scheduler may): the ranks still agree
])
def test_a_stopped_train_checkpoints_mid_epoch_and_resumes_bitwise(signum, procs, to, data, straight, hooks,
                                                                   tmp_path):
    run, mark = tmp_path / "run", tmp_path / "reading"
    args = train_args(data, run, "--procs", procs)
    with started(args, child_env(hooks, "batch", 0.4, mark), tmp_path / "train.log") as proc:
        wait_for(lambda: 2 in metrics_steps(run) or proc.poll() is not None, "the second step's record")
        assert proc.poll() is None, (tmp_path / "train.log").read_text()
        assert read_holder(run)["pid"] == proc.pid  # the launcher holds the run folder
        if to == "group":
            os.killpg(proc.pid, signum)
        elif to == "rank 1":
            ranks = sorted(int(c) for t in Path(f"/proc/{proc.pid}/task").iterdir()
                           for c in (t / "children").read_text().split()
                           if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes())
            assert len(ranks) == 2
            os.kill(ranks[1], signum)
        else:
            proc.send_signal(signum)
        assert finish(proc) == 128 + signum
    (line,) = error_lines(tmp_path / "train.log")
    name = signal.Signals(signum).name
    found = re.match(rf"stopped by {name}: checkpoint (\S+) holds epoch \[0\] batch (\d+)/{STEPS_PER_EPOCH} "
                     r"\(step (\d+)\); resume with: alexrepro train ", line)
    assert found, line
    saved = ck.read_checkpoint(found[1])
    assert Path(found[1]) == ck.checkpoint_dir(run) / ck.LAST
    assert 2 <= saved.batch == int(found[2]) == saved.step == int(found[3]) < STEPS_PER_EPOCH  # mid-epoch
    assert len(saved.rng) == procs  # every rank's random state
    assert not (run / LOCK_FILE).exists()
    done = resume_from_line(line, tmp_path)
    assert done.returncode == 0, done.stderr
    assert_same_state(ck.read_checkpoint(ck.checkpoint_dir(run) / ck.LAST), straight(procs))
    steps = metrics_steps(run)
    assert steps == sorted(steps) and steps[-1] == 2 * STEPS_PER_EPOCH  # nothing logged twice


@pytest.mark.slow
def test_sigusr1_checkpoints_and_exits_143_and_a_second_ctrl_c_ends_at_once(data, hooks, tmp_path):
    """SLURM's warning before a pre-emption; then a user who presses Ctrl-C twice."""
    run, mark = tmp_path / "run", tmp_path / "reading"
    with started(train_args(data, run), child_env(hooks, "batch", 0.4, mark), tmp_path / "usr1.log") as proc:
        wait_for(lambda: 2 in metrics_steps(run) or proc.poll() is not None, "the second step's record")
        proc.send_signal(signal.SIGUSR1)
        assert finish(proc) == 143
    (line,) = error_lines(tmp_path / "usr1.log")
    assert line.startswith(f"stopped by SIGUSR1: checkpoint {ck.checkpoint_dir(run) / ck.LAST} holds epoch [0] batch ")
    assert ck.read_checkpoint(ck.checkpoint_dir(run) / ck.LAST).step >= 2
    twice = tmp_path / "twice"
    with started(train_args(data, twice), child_env(hooks, "batch", 2.0, mark), tmp_path / "twice.log") as proc:
        wait_for(lambda: (twice / "log.txt").is_file() or proc.poll() is not None, "training to start")
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(0.3)  # two separate signals (the kernel merges a second one still pending)
        os.killpg(proc.pid, signal.SIGINT)  # mid-read: the first would wait for the step to end
        assert finish(proc, timeout=30) == -signal.SIGINT
    assert "SIGINT again: ending at once" in (tmp_path / "twice.log").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("loader", ["torch", "dali"])
def test_kill_9_of_train_leaves_no_loader_worker(loader, data, hooks, tmp_path):
    from alexrepro.loaders import dali_available

    if loader == "dali" and not dali_available():
        pytest.skip("DALI is not installed")
    run, mark = tmp_path / "run", tmp_path / "reading"
    args = train_args(data, run, "--loader", loader, "--set", "data.workers=1")
    with started(args, child_env(hooks, "batch", READ_DELAY, mark), tmp_path / "train.log") as proc:
        wait_for(lambda: mark.exists() or proc.poll() is not None, "a loader worker to read")
        me = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        workers = [c for c in children(proc.pid) if Path(f"/proc/{c}/cmdline").read_bytes() == me]  # forked
        assert workers, (tmp_path / "train.log").read_text()
        end_workers = ender(workers)
        try:
            proc.kill()
            finish(proc)
            # with train, not after the READ_DELAY-second read each is in
            wait_for(lambda: not any(alive(w) for w in workers), "the loader workers to die with train",
                     timeout=GONE_WITHIN)
        finally:
            end_workers()


@pytest.mark.parametrize("when", ["building", "validating"])
def test_a_signal_while_building_or_validating_stops_there_and_resumes_bitwise(when, data, straight, tmp_path,
                                                                             monkeypatch):
    """The signal is real (to this process), sent from inside the step named: the run is built, or epoch 0's
    validation begins."""
    from alexrepro.training import loop

    name = {"building": "build_run", "validating": "validate"}[when]
    real = getattr(loop, name)

    def signalled(*args, **kwargs):
        monkeypatch.setattr(loop, name, real)  # once
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, name, signalled)
    run = tmp_path / "run"
    opts = TrainOptions(out=data, run_dir=run, recipe="tiny", overrides=SETS, device="cpu", show_progress=False)
    with pytest.raises(Stopped) as e:
        run_training(opts)
    batch = 0 if when == "building" else STEPS_PER_EPOCH  # validating: the epoch's training is kept
    assert e.value.exit_code == 143 and f"holds epoch [0] batch {batch}/{STEPS_PER_EPOCH} (step {batch})" in str(e.value)
    assert ck.read_checkpoint(ck.checkpoint_dir(run) / ck.LAST).step == batch
    monkeypatch.undo()
    run_training(TrainOptions(out=data, run_dir=run, recipe="tiny", overrides=SETS, device="cpu", resume="",
                              show_progress=False))
    assert_same_state(ck.read_checkpoint(ck.checkpoint_dir(run) / ck.LAST), straight(1))
    steps = metrics_steps(run)
    assert steps == sorted(steps)  # nothing logged twice


def test_the_resume_command_is_the_command_with_resume():
    args = ["train", "OUT", "--recipe", "tiny", "--run", "R", "--resume-from", "R/checkpoints/epoch-001.pt",
            "--force", "--set", "optim.lr=0.1"]
    assert resume_command(args, Path("OUT"), Path("R")) == (
        "alexrepro train OUT --recipe tiny --run R --set optim.lr=0.1 --resume")
    auto = ["train", "OUT", "--run", "R", "--auto-resume"]  # resumes by itself: the same command
    assert resume_command(auto, Path("OUT"), Path("R")) == "alexrepro train OUT --run R --auto-resume"
    # under torchrun: its own command line (read from /proc by distributed.launcher_command), run on every node
    torchrun = ["TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1", "/venv/bin/python", "/venv/bin/torchrun", "--nnodes", "2",
                "--rdzv-endpoint", "node0:29500", "-m", "alexrepro", "--", "train", "OUT", "--run", "R"]
    assert resume_command(args, Path("OUT"), Path("R"), torchrun) == (
        "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 /venv/bin/torchrun --nnodes 2 --rdzv-endpoint node0:29500 -m alexrepro "
        "-- train OUT --recipe tiny --run R --set optim.lr=0.1 --resume (on every node)")
    module = ["/venv/bin/python", "-m", "torch.distributed.run", "--nnodes", "2", "-m", "alexrepro", "train"]
    assert resume_command(None, Path("OUT"), Path("R"), module) == (
        "/venv/bin/python -m torch.distributed.run --nnodes 2 -m alexrepro -- train OUT --run R --resume "
        "(on every node)")
    assert resume_command(None, Path("OUT"), Path("R"), ["/usr/bin/python", "train.py"]) == (
        "alexrepro train OUT --run R --resume (under torchrun, on every node, as this run was started)")


# --------------------------------------------------------------------------------------------- the run folder
def test_a_second_train_into_a_locked_run_is_refused_naming_the_holder(data, hooks, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with FolderLock(run, "--run"):  # this test process holds it, as a running train would
        with started(train_args(data, run), child_env(hooks), tmp_path / "second.log") as proc:
            assert finish(proc) == 2
        assert [p.name for p in run.iterdir()] == [LOCK_FILE]  # nothing of the second run was written
    (line,) = error_lines(tmp_path / "second.log")
    assert f"--run {run} is in use by another alexrepro: pid {os.getpid()} on " in line


def cli(args: list[object], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Exit code and stderr of one CLI command run in this process."""
    code, _, err = run_cli(args, capsys)
    return code, err


def test_auto_resume_starts_a_run_without_a_checkpoint_and_resumes_one_with_it(data, straight, tmp_path, capsys):
    """The mode torchrun's restarts and a requeued SLURM job run: the same command every time."""
    from alexrepro.training.plan import plan_training

    run = tmp_path / "run"
    opts = TrainOptions(out=data, run_dir=run, recipe="tiny", overrides=SETS, device="cpu", auto_resume=True,
                        show_progress=False)
    fresh = plan_training(opts)
    assert fresh.resume_path is None and not fresh.keep_aside and "holds no checkpoint: a new run" in fresh.notes[0]
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"kind": "step", "step": 1}\n')  # an attempt that ended before a save
    assert plan_training(opts).keep_aside  # kept aside, not refused (no --force needed) and not overwritten
    ck.save_checkpoint(ck.checkpoint_dir(run) / ck.LAST, straight(1))
    resumed = plan_training(opts)
    assert resumed.resume_path == ck.checkpoint_dir(run) / ck.LAST and not resumed.keep_aside
    capsys.readouterr()
    code, err = cli(["train", data, "--run", run, "--auto-resume", "--resume"], capsys)
    assert (code, err.strip()) == (
        2, "error: --auto-resume already resumes when RUN holds a checkpoint; drop --resume and --resume-from")


def test_a_refused_train_leaves_no_run_folder(data, tmp_path, capsys):
    run = tmp_path / "new"
    code, err = cli(train_args(data, run, "--set", "model.num_classes=5"), capsys)
    assert code == 2 and "num_classes = 5" in err and not run.exists()


def test_train_and_eval_check_the_set_before_any_work(data, tmp_path, capsys):
    import shutil

    import h5py

    bad = tmp_path / "set"
    shutil.copytree(data, bad)
    with h5py.File(bad / "val" / "00000.h5", "r+") as f:
        f["labels"][1] = 4  # the set has classes 0-3
    code, err = cli(train_args(bad, tmp_path / "run"), capsys)
    assert code == 2 and "labels of the val split lie outside the manifest's 4 classes" in err
    assert not (tmp_path / "run").exists()
    code, err = cli(["eval", bad, "-c", tmp_path / "none.pt", "--procs", 2, "--device", "cpu"], capsys)
    assert code == 2 and "labels of the val split lie outside" in err  # before the processes start


def flip_a_weight_byte(path: Path) -> None:
    """Flip one bit in the middle of the largest tensor stored in a torch.save zip (a weight's bytes)."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", f.read(4))
        at = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
        f.seek(at)
        byte = f.read(1)[0]
        f.seek(at)
        f.write(bytes([byte ^ 0x10]))


def test_a_flipped_byte_is_refused_by_eval_predict_and_viz_and_skipped_by_resume(data, straight, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli(train_args(data, run, "--epochs", 1), capsys)[0] == 0
    folder = ck.checkpoint_dir(run)
    flip_a_weight_byte(folder / ck.LAST)
    flip_a_weight_byte(folder / ck.BEST)
    damaged = f"checkpoint {folder / ck.LAST} is damaged: its contents do not match the checksum written with it"
    code, err = cli(["eval", data, "-c", folder / ck.LAST, "--crops", 1, "--device", "cpu"], capsys)
    assert code == 2 and damaged in err and "Traceback" not in err
    image = tmp_path / "a.jpg"
    image.write_bytes(jpeg_bytes(structured_image(0)))
    code, err = cli(["predict", image, "-c", folder / ck.LAST, "--device", "cpu"], capsys)
    assert code == 2 and damaged in err
    code, err = cli(["viz", "filters", run], capsys)  # the run's best.pt, damaged too
    assert code == 2 and f"checkpoint {folder / ck.BEST} is damaged" in err
    code, err = cli(train_args(data, run, "--resume"), capsys)  # to 2 epochs, from the only good file left
    assert code == 0, err
    assert "skipping last.pt" in err and "skipping best.pt" in err and "resuming from epoch-001.pt" in err
    assert_same_state(ck.read_checkpoint(folder / ck.LAST), straight(1))


def test_with_every_checkpoint_damaged_a_new_run_needs_force_which_keeps_the_old_files(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli(train_args(data, run, "--epochs", 1), capsys)[0] == 0
    folder = ck.checkpoint_dir(run)
    for path in folder.glob("*.pt"):
        flip_a_weight_byte(path)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != LOCK_FILE}
    code, err = cli(train_args(data, run, "--resume"), capsys)
    assert code == 2 and f"every checkpoint in {folder} is damaged" in err and "--force" in err
    code, err = cli(train_args(data, run, "--epochs", 2), capsys)  # what that used to advise: no silent overwrite
    assert code == 2 and f"{run} already holds checkpoints of an earlier run (3 files)" in err and "--force" in err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != LOCK_FILE} == before
    code, err = cli(train_args(data, run, "--epochs", 1, "--force"), capsys)
    assert code == 0, err
    (kept,) = run.glob("previous-*")
    assert {name: (kept / name).read_bytes() for name in before} == before  # moved aside, unchanged
    assert sorted(p.name for p in (kept / "checkpoints").iterdir()) == ["best.pt", "epoch-001.pt", "last.pt"]
    assert metrics_steps(run)[-1] == STEPS_PER_EPOCH and metrics_steps(run)[0] == 2  # a new history
    best = [int(e) for e in re.findall(r"Epoch: \[(\d+)\] val .*\(best\)", err)][-1]
    assert f"(Epoch: [{best}])" in " ".join(err.split())  # the summary numbers epochs as the epoch lines do


# --------------------------------------------------------------------------------------------- write errors
@pytest.mark.slow
def test_a_full_disk_while_checkpointing_is_one_line_and_the_older_checkpoints_stay(data, hooks, tmp_path):
    run = tmp_path / "run"
    run_training(TrainOptions(out=data, run_dir=run, recipe="tiny", overrides=SETS + ["schedule.epochs=1"],
                              device="cpu", show_progress=False))
    before = {p.name: p.read_bytes() for p in ck.checkpoint_dir(run).iterdir()}
    size = len(before[ck.LAST])

    def small_files() -> None:  # a file-size limit makes the next checkpoint's write fail (EFBIG), as a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, size // 2))

    with started(train_args(data, run, "--resume"), child_env(hooks), tmp_path / "full.log",
                 preexec=small_files) as proc:
        assert finish(proc) == 1
    (line,) = error_lines(tmp_path / "full.log")
    assert line.startswith(f"failed: cannot write {ck.checkpoint_dir(run)}/") and ".pt: File too large (" in line
    assert " free there); " in line and "--resume" in line
    assert {p.name: p.read_bytes() for p in ck.checkpoint_dir(run).iterdir()} == before  # intact, no temp left


# --------------------------------------------------------------------------------------------- damaged images
@pytest.fixture(scope="module")
def damaged_sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """JPEG sets whose train image 3 does not decode, or whose train image 10 no longer matches its crc32."""
    root = tmp_path_factory.mktemp("damaged")
    sets = {}
    for kind in ("undecodable", "crc"):
        out = make_jpeg_set(root / kind, n_train=16, n_val=4, labels_are_indices=False)
        if kind == "undecodable":
            payload = [jpeg_bytes(structured_image(i)) for i in range(8)]
            payload[3] = b"garbage, not a JPEG"
            write_shard(out / "train" / "00000.h5", "jpeg", payload, [i % 3 for i in range(8)],
                        [f"train/img{i}.JPEG" for i in range(8)])
        else:
            import h5py

            with h5py.File(out / "train" / "00001.h5", "r+") as f:
                at = int(f["offsets"][2] + f["offsets"][3]) // 2
                f["data"][at] ^= 0xFF
        sets[kind] = out
    return sets


@pytest.mark.parametrize("kind", ["undecodable", "crc"])
def test_a_damaged_image_under_dali_is_the_torch_loaders_one_line(kind, damaged_sets, tmp_path, capsys):
    from alexrepro.loaders import dali_available

    if not dali_available():
        pytest.skip("DALI is not installed")
    lines = {}
    for loader in ("torch", "dali"):
        args = ["train", damaged_sets[kind], "--recipe", "tiny", "--run", tmp_path / loader, "--device", "cpu",
                "--no-progress", "--epochs", 1, "--loader", loader,
                *[x for s in ("model.num_classes=3", "data.image_size=72", "data.crop_size=64", "data.workers=1",
                              "optim.batch_size=4") for x in ("--set", s)]]
        code, err = cli(args, capsys)
        assert code == 2 and "Traceback" not in err, err
        (lines[loader],) = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert lines["dali"] == lines["torch"]
    assert ("#3 does not decode" if kind == "undecodable" else "do not match the crc32 prep wrote") in lines["dali"]


def test_sealed_checkpoints_verify_and_old_ones_load_with_a_note(tmp_path, capsys):
    from alexrepro.recipe_reader import load_recipe

    saved = ck.Checkpoint(model={"w": torch.arange(6.0)}, recipe=load_recipe("tiny"), epoch=1,
                          rng=[{"torch": torch.zeros(3, dtype=torch.uint8)}])
    path = tmp_path / "a.pt"
    ck.save_checkpoint(path, saved)
    assert torch.equal(ck.read_checkpoint(path).model["w"], torch.arange(6.0))
    stored = torch.load(path, weights_only=True)
    stored["model"]["w"][2] = 2.5  # the bytes changed, the checksum not
    torch.save(stored, path)
    with pytest.raises(UserError, match="is damaged"):
        ck.read_checkpoint(path)
    del stored[ck.CHECKSUM]  # a file written before checkpoints carried one
    torch.save(stored, path)
    assert ck.read_checkpoint(path).model["w"][2] == 2.5
    assert "carries no checksum" in capsys.readouterr().err
