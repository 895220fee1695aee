"""One line means one line, with real processes (docs/RELIABILITY.md, S14, S15, B8 and B9).

Bad numbers and recipe files are one line before any work; a stopped `eval --procs 2` ends with its stopped
line and no library warning after it; a signal that reaches `train --procs 2` once it has printed its done
line leaves it done (exit 0). The children run test_faults' sitecustomize, plus (here) a slow exit of the
command's own process when asked, so that a signal can land while it shuts down; the shipped code is unchanged.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from test_faults import LINUX_PROC, SITECUSTOMIZE, child_env, error_lines, finish, started, wait_for
from test_faults_train import cli, train_args
from test_train import make_set

pytestmark = pytest.mark.skipif(not LINUX_PROC, reason="needs Linux /proc to find and watch the children")

# The command's own process only (not the ranks or workers it spawns) sleeps ALEXREPRO_TEST_EXIT_DELAY s as it
# exits, after touching ALEXREPRO_TEST_MARK: its done line is printed by then.
SLOW_EXIT = '''
_exit_delay = float(os.environ.get("ALEXREPRO_TEST_EXIT_DELAY") or 0)
if _exit_delay:
    import atexit

    def _slow_exit():
        import multiprocessing
        if multiprocessing.parent_process() is None:
            Path(_mark).touch()
            time.sleep(_exit_delay)

    atexit.register(_slow_exit)
'''


@pytest.fixture(scope="module")
def hooks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hooks")
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE + SLOW_EXIT)
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_set(tmp_path_factory.mktemp("trainset") / "out")


def after_line(log: Path, line: str) -> list[str]:
    """What the command printed after `line` (nothing, when the line is its last)."""
    lines = log.read_text().splitlines()
    return [ln for ln in lines[lines.index(line) + 1:] if ln.strip()]


# --------------------------------------------------------------------------------------------- numbers and names
def test_a_number_that_is_not_finite_is_one_line_before_any_work(data, hooks, tmp_path, capsys):
    run = tmp_path / "run"
    with started(train_args(data, run, "--set", "optim.lr=inf"), child_env(hooks), tmp_path / "inf.log") as proc:
        assert finish(proc) == 2
    assert error_lines(tmp_path / "inf.log") == ["error: recipe 'tiny': optim.lr must be a finite number, got inf"]
    assert not run.exists()
    for key, value, shown in (("optim.weight_decay", "nan", "nan"), ("data.lighting_std", "inf", "inf"),
                              ("data.std_rgb", "0.2,-inf,0.2", "-inf"), ("schedule.threshold", "nan", "nan"),
                              ("model.lrn_alpha", "inf", "inf")):
        code, err = cli(train_args(data, run, "--set", f"{key}={value}"), capsys)
        assert code == 2 and f"{key} must be a finite number, got {shown}" in err
    toml = tmp_path / "r.toml"
    toml.write_text('extends = "tiny"\n[optim]\nmomentum = nan\n')
    code, err = cli(["recipe", "show", toml], capsys)
    assert code == 2 and "optim.momentum must be a finite number, got nan" in err and not run.exists()


def test_a_user_recipe_may_extend_the_shipped_one_of_its_name_and_a_real_cycle_is_refused(hooks, tmp_path, capsys):
    mine = tmp_path / "tiny.toml"
    mine.write_text('extends = "tiny"\n[optim]\nlr = 0.05\n')
    with started(["recipe", "show", mine], child_env(hooks), tmp_path / "show.log") as proc:
        assert finish(proc) == 0, (tmp_path / "show.log").read_text()
    shown = (tmp_path / "show.log").read_text()
    assert "lr = 0.05" in shown and "width = 0.25" in shown  # its own value over the shipped tiny's
    (tmp_path / "a.toml").write_text(f'extends = "{tmp_path / "b.toml"}"\n')
    (tmp_path / "b.toml").write_text(f'extends = "{tmp_path / "a.toml"}"\n')
    code, err = cli(["recipe", "show", tmp_path / "a.toml"], capsys)
    assert code == 2 and f"recipe 'a' extends itself: {tmp_path}/a.toml -> {tmp_path}/b.toml -> {tmp_path}/a.toml" in err
    mine.write_text(f'extends = "{mine}"\n')
    code, err = cli(["recipe", "show", mine], capsys)
    assert code == 2 and "extends itself" in err


# --------------------------------------------------------------------------------------------- signals
@pytest.fixture(scope="module")
def net(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained net for the set whose recipe reads with two loader workers per rank (as eval will)."""
    from alexrepro.data.manifest import read_manifest
    from alexrepro.nets.alexnet import build_model
    from alexrepro.recipe_reader import load_recipe
    from alexrepro.training.checkpoint import Checkpoint, save_checkpoint

    classes = read_manifest(data).class_list()
    recipe = load_recipe("tiny", [f"model.num_classes={len(classes)}", "data.image_size=72", "data.crop_size=64",
                                  "model.fc_width=32", "data.workers=2"])
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("net") / "net.pt"
    save_checkpoint(path, Checkpoint(model=build_model(recipe.model, recipe.data.crop_size).state_dict(),
                                     recipe=recipe, classes=classes, epoch=1, step=1))
    return path


@pytest.mark.slow
def test_a_stopped_eval_with_two_processes_ends_on_its_line(data, net, hooks, tmp_path):
    """The ranks' loader workers hold semaphores when the ranks are ended; nothing may follow the line. (Before,
    SIGTERM to the process group and SIGINT to the pid were each followed by the tracker's warning.)"""
    signum = signal.SIGTERM
    mark, log = tmp_path / "reading", tmp_path / "eval.log"
    args = ["eval", data, "-c", net, "--crops", 1, "--batch-size", 2, "--device", "cpu", "--loader", "torch",
            "--procs", 2]
    with started(args, child_env(hooks, "batch", 0.5, mark), log) as proc:
        wait_for(lambda: mark.exists() or proc.poll() is not None, "the ranks to read their first batch")
        os.killpg(proc.pid, signum)
        assert finish(proc) == 128 + signum
    (line,) = error_lines(log)
    assert line.startswith(f"stopped by {signal.Signals(signum).name}: nothing was written; run it again: ")
    assert after_line(log, line) == []  # e.g. no "resource_tracker: There appear to be 28 leaked semaphore"


@pytest.mark.slow
def test_a_signal_once_train_with_two_processes_is_done_leaves_it_done(data, hooks, tmp_path):
    mark, log, run = tmp_path / "exiting", tmp_path / "train.log", tmp_path / "run"
    env = dict(child_env(hooks, mark=mark), ALEXREPRO_TEST_EXIT_DELAY="3")
    with started(train_args(data, run, "--epochs", 1, "--procs", 2), env, log) as proc:
        wait_for(lambda: mark.exists() or proc.poll() is not None, "train to print its line and exit")
        proc.send_signal(signal.SIGTERM)  # while it shuts down: torch and multiprocessing clean up
        assert finish(proc) == 0, log.read_text()
    (done,) = [ln for ln in log.read_text().splitlines() if ln.startswith("done: 1 epoch, ")]
    assert after_line(log, done) == [] and error_lines(log) == []
