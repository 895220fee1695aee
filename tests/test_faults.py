"""Faults with real processes: signals, kill -9, a second process, write errors (docs/RELIABILITY.md).

Every process is started here (`python -m alexrepro ...`), signalled by the pid we started, and ended in a
`finally`. To give a signal time to land mid-run on this tiny data, the child runs with a sitecustomize
(written below, for child processes only) that slows each image read down; the code under test is the
shipped code, unchanged.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest

from alexrepro.data.manifest import read_manifest
from alexrepro.data.options import PrepOptions
from alexrepro.data.prep import prep
from alexrepro.errors import UserError
from alexrepro.process.lifetime import ORPHAN_EXIT
from alexrepro.process.locking import LOCK_FILE, FolderLock, read_holder

ROOT = Path(__file__).resolve().parents[1]
SHARD = 4  # images per shard: many shards from the small synth tree
LINUX_PROC = Path("/proc/self/task").is_dir() and sys.platform.startswith("linux")
pytestmark = pytest.mark.skipif(not LINUX_PROC, reason="needs Linux /proc to find and watch the children")

# Child processes only: ALEXREPRO_TEST_SLOW names what to slow down by ALEXREPRO_TEST_DELAY seconds per call;
# the first slowed call touches ALEXREPRO_TEST_MARK, so the test knows the work has begun.
SITECUSTOMIZE = '''
import os, time
from pathlib import Path

_delay = float(os.environ.get("ALEXREPRO_TEST_DELAY") or 0)
_what = os.environ.get("ALEXREPRO_TEST_SLOW", "")
_mark = os.environ.get("ALEXREPRO_TEST_MARK")


def _slowed(real):
    def slow(*a, **k):
        if _mark:
            Path(_mark).touch()
        time.sleep(_delay)
        return real(*a, **k)
    return slow


if _delay and "read" in _what:
    import alexrepro.data.sources
    alexrepro.data.sources.read_item = _slowed(alexrepro.data.sources.read_item)
if _delay and "decode" in _what:
    import alexrepro.data.shards, alexrepro.data.stats
    alexrepro.data.shards.decode_jpeg = _slowed(alexrepro.data.shards.decode_jpeg)
    alexrepro.data.stats.decode_jpeg = _slowed(alexrepro.data.stats.decode_jpeg)
if _delay and "batch" in _what:
    import alexrepro.loaders.torch_loader, alexrepro.loaders.dali_source
    alexrepro.loaders.torch_loader.read_batch = _slowed(alexrepro.loaders.torch_loader.read_batch)
    alexrepro.loaders.dali_source.read_batch = _slowed(alexrepro.loaders.dali_source.read_batch)
'''


# --------------------------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def hooks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hooks")
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return folder


def child_env(hooks: Path, slow: str = "", delay: float = 0.0, mark: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(hooks), str(ROOT), env.get("PYTHONPATH", "")])
    env.update(ALEXREPRO_TEST_SLOW=slow, ALEXREPRO_TEST_DELAY=str(delay), ALEXREPRO_TEST_MARK=str(mark or ""))
    return env


@contextlib.contextmanager
def started(args: list[object], env: dict[str, str], log: Path,
            preexec: Callable[[], None] | None = None) -> Iterator[subprocess.Popen]:
    """`python -m alexrepro ARGS` in a process group of its own (as a terminal's foreground job), stdout and
    stderr to `log` (a pipe could fill and block it); always ended."""
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "alexrepro", *map(str, args)], env=env, stdout=out,
                                stderr=subprocess.STDOUT, preexec_fn=preexec, start_new_session=True)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=60)


def finish(proc: subprocess.Popen, timeout: float = 120) -> int:
    return proc.wait(timeout=timeout)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def children(pid: int) -> list[int]:
    found = []
    with contextlib.suppress(FileNotFoundError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError):
                found += [int(c) for c in (task / "children").read_text().split()]
    return found


def pool_workers(pid: int) -> list[int]:
    """The multiprocessing workers `pid` has started (not its resource tracker)."""
    workers = []
    for c in children(pid):
        with contextlib.suppress(FileNotFoundError):
            if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes():
                workers.append(c)
    return workers


def alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped by its new parent, does not count)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


def listing(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder` (hidden ones too): (size, mtime in ns)."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def shard_contents(out: Path) -> list[tuple[str, dict, dict]]:
    got = []
    for split in ("train", "val"):
        for e in read_manifest(out).to_payload()["splits"][split]["shards"]:
            with h5py.File(out / e["file"], "r") as f:
                got.append((e["file"], {k: f[k][:].tolist() for k in f}, dict(f.attrs)))
    return got


def same_set(out: Path, reference: Path) -> None:
    """`out` holds exactly the set an uninterrupted prep made in `reference`."""
    assert shard_contents(out) == shard_contents(reference)
    for name in ("skipped.tsv", "converted.tsv"):
        assert (out / name).read_text() == (reference / name).read_text()
    with h5py.File(out / "stats.h5", "r") as a, h5py.File(reference / "stats.h5", "r") as b:
        assert np.array_equal(a["mean"][:], b["mean"][:])
    assert read_manifest(out) == read_manifest(reference)
    left = sorted(p.name for p in out.rglob("*") if p.name.startswith(".") or p.name.endswith(".tsv"))
    assert left == ["converted.tsv", "skipped.tsv"]  # no lock, state, temp files or per-shard sidecars


def error_lines(log: Path) -> list[str]:
    text = log.read_text()
    assert "Traceback" not in text, text
    return [ln for ln in text.splitlines() if ln.startswith(("error:", "failed:", "stopped by"))]


@pytest.fixture(scope="module")
def reference(synth_src: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The set an uninterrupted prep makes (in this process)."""
    out = tmp_path_factory.mktemp("faults") / "reference"
    prep(synth_src, out, PrepOptions(workers=1, shard_size=SHARD), progress=False)
    return out


def prep_args(src: Path, out: Path) -> list[object]:
    return ["prep", src, out, "--workers", 2, "--shard-size", SHARD]


# A worker that dies with its parent is gone within GONE_WITHIN seconds even on a loaded machine; one that
# only noticed at its next write would still be inside a READ_DELAY-second read then.
READ_DELAY = 90.0
GONE_WITHIN = 45.0


def start_time(pid: int) -> str | None:
    """When `pid` started (/proc/PID/stat's field 22), so that a reused pid is never taken for it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19]
    except (FileNotFoundError, IndexError):
        return None


def ender(pids: list[int]) -> Callable[[], None]:
    """A function that SIGKILLs whichever of `pids` (processes this test started, through its child) still
    run, and no other process that a pid was given to since."""
    started_at = {pid: start_time(pid) for pid in pids}

    def end() -> None:
        for pid, when in started_at.items():
            if when is not None and alive(pid) and start_time(pid) == when:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    return end


def start_slow_prep(stack: contextlib.ExitStack, hooks: Path, src: Path, out: Path, tmp: Path,
                    delay: float = 0.25) -> subprocess.Popen:
    """A prep with two workers, each image read slowed by `delay` s; returns once both workers are reading."""
    mark = tmp / "reading"
    proc = stack.enter_context(started(prep_args(src, out), child_env(hooks, "read", delay, mark), tmp / "prep.log"))
    wait_for(lambda: mark.exists() and len(pool_workers(proc.pid)) == 2 or proc.poll() is not None,
             "prep's workers to start reading")
    assert proc.poll() is None, (tmp / "prep.log").read_text()
    return proc


# --------------------------------------------------------------------------------------------- prep
@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code", "to"), [(signal.SIGTERM, 143, "pid"), (signal.SIGINT, 130, "pid"),
                                                    (signal.SIGINT, 130, "group")])
def test_a_stopped_prep_says_what_it_kept_and_resumes_to_the_same_set(signum, code, to, synth_src, reference, hooks,
                                                                     tmp_path):
    """`group`: Ctrl-C in a terminal, which reaches prep and its workers at once; still one line."""
    out = tmp_path / "out"
    with contextlib.ExitStack() as stack:
        proc = start_slow_prep(stack, hooks, synth_src, out, tmp_path)
        wait_for(lambda: any((out / "train").glob("*.h5")), "a first complete shard")
        workers = pool_workers(proc.pid)
        if to == "group":
            os.killpg(proc.pid, signum)  # the group we started: prep leads it
        else:
            proc.send_signal(signum)
        assert finish(proc) == code
    (line,) = error_lines(tmp_path / "prep.log")
    name = signal.Signals(signum).name
    assert line.startswith(f"stopped by {name}: complete shards kept in {out}: ") and "resume with: alexrepro prep" in line
    kept = int(line.split(f"{out}: ")[1].split(" of ")[0])
    assert 1 <= kept < len(shard_contents(reference))  # stopped mid-run, with complete shards kept
    assert not any(alive(w) for w in workers)
    assert not (out / "manifest.json").exists() and not (out / LOCK_FILE).exists()
    assert not list(out.rglob(".*.tmp-*"))  # its workers' half-written shards are gone
    summary = prep(synth_src, out, PrepOptions(workers=2, shard_size=SHARD), progress=False)
    assert summary["splits"]["train"]["resumed_shards"] + summary["splits"]["val"]["resumed_shards"] == kept
    same_set(out, reference)


@pytest.mark.slow
def test_kill_9_of_prep_leaves_no_worker_and_nothing_written_after(synth_src, reference, hooks, tmp_path):
    out = tmp_path / "out"
    with contextlib.ExitStack() as stack:
        proc = start_slow_prep(stack, hooks, synth_src, out, tmp_path, delay=READ_DELAY)  # each worker mid-read
        workers = pool_workers(proc.pid)
        stack.callback(ender(workers))  # should one outlive the test
        proc.kill()
        finish(proc)
        before = listing(out)
        # With the parent, not at their next write (the check before each write is tested on its own below):
        # the deadline is generous yet shorter than the read each worker is in.
        wait_for(lambda: not any(alive(w) for w in workers), "prep's workers to die with it", timeout=GONE_WITHIN)
    assert listing(out) == before  # nothing written after the parent died
    assert (out / LOCK_FILE).exists()  # left by the killed prep, locked by nobody: no stale lock
    prep(synth_src, out, PrepOptions(workers=2, shard_size=SHARD), progress=False)
    same_set(out, reference)


@pytest.mark.slow
def test_a_second_prep_into_a_locked_out_is_refused_naming_the_holder(synth_src, hooks, tmp_path):
    out = tmp_path / "out"
    with contextlib.ExitStack() as stack:
        proc = start_slow_prep(stack, hooks, synth_src, out, tmp_path, delay=2.0)  # busy until we end it
        holder = read_holder(out)
        assert holder["pid"] == proc.pid and "prep" in holder["command"]
        with started(prep_args(synth_src, out), child_env(hooks), tmp_path / "second.log") as second:
            assert finish(second) == 2
        (line,) = error_lines(tmp_path / "second.log")
        assert f"OUT {out} is in use by another alexrepro: pid {proc.pid} on " in line and "alexrepro prep" in line
        assert proc.poll() is None and read_holder(out) == holder  # the first goes on, its lock untouched


@pytest.mark.slow
def test_a_prep_worker_killed_alone_fails_the_prep_in_one_line(synth_src, hooks, tmp_path):
    """What the kernel's out-of-memory killer does: one worker dies; prep says so, and keeps what is complete."""
    out = tmp_path / "out"
    with contextlib.ExitStack() as stack:
        proc = start_slow_prep(stack, hooks, synth_src, out, tmp_path)
        victim, *others = pool_workers(proc.pid)
        os.kill(victim, signal.SIGKILL)
        assert finish(proc) == 1
    (line,) = error_lines(tmp_path / "prep.log")
    assert line.startswith("failed: a prep worker died (killed, or out of memory?); the complete shards are kept")
    assert not any(alive(w) for w in others) and not list(out.rglob(".*.tmp-*"))
    assert not (out / LOCK_FILE).exists() and (out / ".prep.json").exists()  # resumable


def test_a_prep_worker_whose_parent_is_gone_writes_nothing(tmp_path):
    """The check before each write, which also covers systems without a parent-death signal."""
    target = tmp_path / "written.txt"
    code = ("import os; from alexrepro.process import lifetime; from alexrepro.process.atomic import atomic_write_text; "
            f"lifetime.bind_to_parent(os.getppid() + 10**6); atomic_write_text({str(target)!r}, 'late')")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    assert subprocess.run([sys.executable, "-c", code], env=env, timeout=60).returncode == ORPHAN_EXIT
    assert not target.exists() and not list(tmp_path.iterdir())


@pytest.mark.slow
def test_a_write_error_is_one_line_naming_the_path_and_the_free_space(synth_src, hooks, tmp_path):
    """A file-size limit makes every shard write fail (EFBIG), in the workers, as a full disk would."""
    def small_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (30_000, 30_000))

    out = tmp_path / "out"
    with started(prep_args(synth_src, out), child_env(hooks), tmp_path / "prep.log", preexec=small_files) as proc:
        assert finish(proc) == 1
    (line,) = error_lines(tmp_path / "prep.log")
    assert line.startswith(f"failed: cannot write {out}/") and ".h5: File too large (" in line
    assert " free there); free space on OUT's disk" in line and "run the same prep again" in line
    assert not (out / "manifest.json").exists() and not list(out.rglob(".*.tmp-*"))


# --------------------------------------------------------------------------------------------- pca, eval
@pytest.fixture
def prepared_copy(reference: Path, tmp_path: Path) -> Path:
    out = tmp_path / "set"
    shutil.copytree(reference, out)
    return out


@pytest.mark.slow
def test_pca_into_a_locked_out_is_refused_naming_the_holder(prepared_copy, hooks, tmp_path):
    with FolderLock(prepared_copy, "OUT"):  # this test process holds it, as a running prep would
        with started(["pca", prepared_copy], child_env(hooks), tmp_path / "pca.log") as proc:
            assert finish(proc) == 2
    (line,) = error_lines(tmp_path / "pca.log")
    assert f"is in use by another alexrepro: pid {os.getpid()} on " in line


@pytest.mark.slow
def test_a_stopped_pca_leaves_the_statistics_as_they_were(prepared_copy, hooks, tmp_path):
    stats = (prepared_copy / "stats.h5").read_bytes()
    mark = tmp_path / "decoding"
    args = ["pca", prepared_copy, "--workers", 2]
    with started(args, child_env(hooks, "decode", 0.25, mark), tmp_path / "pca.log") as proc:
        wait_for(lambda: mark.exists() or proc.poll() is not None, "pca's workers to start decoding")
        workers = pool_workers(proc.pid)
        proc.send_signal(signal.SIGINT)
        assert finish(proc) == 130
    (line,) = error_lines(tmp_path / "pca.log")
    assert line.startswith("stopped by SIGINT: ") and "stats.h5 is as it was" in line and "alexrepro pca" in line
    assert workers and not any(alive(w) for w in workers)
    assert (prepared_copy / "stats.h5").read_bytes() == stats and not (prepared_copy / LOCK_FILE).exists()


@pytest.mark.slow
def test_a_stopped_eval_says_nothing_was_written(prepared_copy, hooks, tmp_path):
    import torch

    from alexrepro.nets.alexnet import build_model
    from alexrepro.recipe_reader import load_recipe
    from alexrepro.training.checkpoint import Checkpoint, save_checkpoint

    classes = read_manifest(prepared_copy).class_list()
    recipe = load_recipe("tiny", [f"model.num_classes={len(classes)}", "data.image_size=72", "data.crop_size=64",
                                  "model.fc_width=32", "data.workers=0"])
    torch.manual_seed(0)
    ck = tmp_path / "net.pt"  # an untrained net for this set's classes: eval needs nothing more
    save_checkpoint(ck, Checkpoint(model=build_model(recipe.model, recipe.data.crop_size).state_dict(), recipe=recipe,
                                   classes=classes, epoch=1, step=1))
    mark = tmp_path / "reading"
    per_class = tmp_path / "per_class.csv"
    args = ["eval", prepared_copy, "-c", ck, "--crops", 1, "--batch-size", 2, "--device", "cpu", "--loader", "torch",
            "--per-class", per_class]
    with started(args, child_env(hooks, "batch", 0.5, mark), tmp_path / "eval.log") as proc:
        wait_for(lambda: mark.exists() or proc.poll() is not None, "eval to read its first batch")
        proc.send_signal(signal.SIGTERM)
        assert finish(proc) == 143
    (line,) = error_lines(tmp_path / "eval.log")
    assert line.startswith("stopped by SIGTERM: nothing was written; run it again: alexrepro eval")
    assert not per_class.exists()


# --------------------------------------------------------------------------------------------- in one process
def test_the_lock_is_exclusive_and_leaves_no_file(tmp_path):
    (tmp_path / LOCK_FILE).write_text("left by a process killed long ago\n")  # not locked by anyone
    with FolderLock(tmp_path, "OUT") as lock:
        assert read_holder(tmp_path)["pid"] == os.getpid() and lock.held
        with pytest.raises(UserError, match=rf"OUT {tmp_path} is in use by another alexrepro: pid {os.getpid()}"):
            FolderLock(tmp_path, "OUT").acquire()  # a second open file: flock refuses it like another process
    assert not (tmp_path / LOCK_FILE).exists()
    with FolderLock(tmp_path, "OUT"):  # and it can be taken again
        pass


def test_the_lock_record_is_json_with_pid_host_command_and_since(tmp_path):
    with FolderLock(tmp_path, "--run"):
        record = json.loads((tmp_path / LOCK_FILE).read_text())
    assert set(record) == {"pid", "host", "command", "since", "beat"} and record["pid"] == os.getpid()


def record(host: str, pid: int, beat: int = 0) -> str:
    return json.dumps({"pid": pid, "host": host, "command": "alexrepro train OUT --run RUN", "since": "then",
                       "beat": beat}) + "\n"


def test_a_lock_record_of_another_machine_that_stands_still_is_stale_and_taken_over_in_one_line(tmp_path, monkeypatch,
                                                                                               capsys):
    from alexrepro.process import locking

    monkeypatch.setattr(locking, "HEARTBEAT", 0.05)
    (tmp_path / LOCK_FILE).write_text(record("node-b", 4242))  # its machine went down: flock holds nothing
    with FolderLock(tmp_path, "--run") as lock:
        assert lock.held and read_holder(tmp_path)["pid"] == os.getpid()
        first = read_holder(tmp_path)["beat"]
        wait_for(lambda: read_holder(tmp_path)["beat"] > first, "the holder's beat", timeout=10)
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (f"note: --run {tmp_path}: taking over a stale lock of pid 4242 on node-b since then (alexrepro "
                    "train OUT --run RUN) (not refreshed for 0.15 s: its process or its machine has ended)")


def test_a_live_holder_on_another_machine_refuses_where_flock_does_not_reach_it(tmp_path, monkeypatch):
    import threading

    from alexrepro.process import locking

    monkeypatch.setattr(locking, "HEARTBEAT", 0.1)
    path, stop = tmp_path / LOCK_FILE, threading.Event()

    def beat() -> None:  # what the holder on node-b does, seen through the shared file system
        n = 0
        while not stop.wait(0.02):
            n += 1
            path.write_text(record("node-b", 4242, n))

    path.write_text(record("node-b", 4242))
    beating = threading.Thread(target=beat)
    beating.start()
    try:
        with pytest.raises(UserError, match=rf"--run {tmp_path} is in use by another alexrepro: pid 4242 on node-b"):
            FolderLock(tmp_path, "--run").acquire()
    finally:
        stop.set()
        beating.join()


def test_without_flock_the_record_alone_locks_and_a_holder_here_that_ended_is_stale(tmp_path, monkeypatch, capsys):
    import errno
    import socket

    from alexrepro.process import locking

    def no_flock(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(locking.fcntl, "flock", no_flock)
    with FolderLock(tmp_path, "OUT"):
        with pytest.raises(UserError, match=rf"OUT {tmp_path} is in use by another alexrepro: pid {os.getpid()}"):
            FolderLock(tmp_path, "OUT").acquire()  # the record names a process that runs: refused
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / LOCK_FILE).write_text(record(socket.gethostname(), int(ended.stdout)))
    with FolderLock(tmp_path, "OUT"):
        pass
    said = capsys.readouterr().err
    assert f"taking over a stale lock of pid {int(ended.stdout)} on " in said and "(its process has ended)" in said


def test_a_repeated_scheduler_signal_is_the_same_stop_and_a_second_ctrl_c_is_not():
    from alexrepro.process.signals import SAME_STOP_WINDOW, same_stop

    usr1, term, sigint = signal.SIGUSR1, signal.SIGTERM, signal.SIGINT
    assert same_stop(usr1, 0.0, usr1, 1000.0) and same_stop(term, 0.0, usr1, 1000.0)  # a warning changes nothing
    assert same_stop(term, 10.0, term, 10.0 + SAME_STOP_WINDOW / 2)  # SLURM's and torchrun's copies of one stop
    assert not same_stop(term, 10.0, term, 10.0 + SAME_STOP_WINDOW)  # a person's second kill
    assert not same_stop(sigint, 10.0, sigint, 10.01) and not same_stop(usr1, 10.0, term, 10.01)


def test_stop_on_signals_raises_at_once_or_only_records_and_restores_the_handlers():
    from alexrepro.process.signals import Stopped, stop_on_signals

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Stopped) as e, stop_on_signals():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # not reached: the handler raises as soon as the signal lands
    assert (e.value.signum, e.value.exit_code, e.value.name) == (signal.SIGTERM, 143, "SIGTERM")
    with stop_on_signals(at_once=False) as request:  # a loop that stops at its next safe point
        os.kill(os.getpid(), signal.SIGINT)
        assert request.requested and request.signum == signal.SIGINT
        with pytest.raises(Stopped, match="stopped by SIGINT: kept step 7") as e:
            request.check("kept step 7")
    assert e.value.exit_code == 130 and signal.getsignal(signal.SIGTERM) == before


def test_a_second_signal_ends_the_process_at_once(tmp_path):
    code = ("import os, signal; from alexrepro.process.signals import stop_on_signals\n"
            "with stop_on_signals(at_once=False):\n"
            "    os.kill(os.getpid(), signal.SIGINT)\n"
            "    os.kill(os.getpid(), signal.SIGINT)\n"
            "    print('survived')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == -signal.SIGINT and "survived" not in done.stdout
    assert "SIGINT again: ending at once" in done.stderr


def test_a_forked_child_keeps_the_handling_it_had():
    """A DataLoader worker forked inside the block gets KeyboardInterrupt on SIGINT, as it would without it."""
    from alexrepro.process.signals import stop_on_signals

    with stop_on_signals() as request:
        pid = os.fork()
        if pid == 0:  # the child
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)
            except KeyboardInterrupt:
                os._exit(7)
            os._exit(1)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 7 and not request.requested
