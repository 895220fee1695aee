"""tools/slurm/train.sbatch on a machine without SLURM: stand-in `srun` and `scontrol` on PATH (docs/DISTRIBUTED.md).

The stand-in `srun` starts one task per node, each in a session of its own with the SLURM_* variables SLURM
sets (here both "nodes" are this machine); `--kill-on-bad-exit` ends the others when one fails, as SLURM does.
The stand-in `scontrol` expands `show hostnames` and records `requeue`. The test sends SIGUSR1 to every process
of the job step, as `#SBATCH --signal=USR1@120` makes SLURM do, then runs the script again as the requeued
job. Every process is started here and ended by its pid.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from run_state import assert_same_state, metrics_steps
from test_faults import ROOT, alive, child_env, wait_for
from torchrun_nodes import SETS, STEPS, descendants, end, last

from alexrepro.distributed import free_port

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")

SBATCH = ROOT / "tools" / "slurm" / "train.sbatch"
JOB = "4242"

SRUN = '''#!{python}
"""srun as a job step with one task per node: each task a session of its own, with SLURM's variables."""
import os, subprocess, sys, time

args = sys.argv[1:]
kill_on_bad_exit = False
while args and args[0].startswith("-"):
    kill_on_bad_exit |= args.pop(0).startswith("--kill-on-bad-exit")


def tree(pid):
    found = []
    for task in os.listdir(f"/proc/{{pid}}/task"):
        try:
            with open(f"/proc/{{pid}}/task/{{task}}/children") as f:
                kids = [int(c) for c in f.read().split()]
        except OSError:
            kids = []
        for kid in kids:
            found += [kid, *tree(kid)]
    return found


nodes = os.environ["SLURM_JOB_NODELIST"].split(",")
tasks = []
for i, node in enumerate(nodes):
    env = dict(os.environ, SLURM_PROCID=str(i), SLURM_NODEID=str(i), SLURM_LOCALID="0", SLURMD_NODENAME=node,
               SLURM_NTASKS=str(len(nodes)), SLURM_STEP_ID="0")
    tasks.append(subprocess.Popen(args, env=env, start_new_session=True))
codes = {{}}
while len(codes) < len(tasks):
    for i, task in enumerate(tasks):
        if i not in codes and task.poll() is not None:
            codes[i] = task.returncode
            if task.returncode != 0 and kill_on_bad_exit:  # every process of the step, as SLURM's cgroup
                for pid in tree(os.getpid()):
                    try:
                        os.kill(pid, 9)
                    except ProcessLookupError:
                        pass
    time.sleep(0.1)
sys.exit(max(c if c >= 0 else 128 - c for c in codes.values()))
'''

SCONTROL = '''#!/bin/sh
case "$1 $2" in
  "show hostnames") echo "$3" | tr ',' '\\n' ;;
  "requeue "*) echo "$2" >> "$FAKE_SLURM_REQUEUED" ;;
  *) echo "scontrol stand-in: $*" >&2; exit 1 ;;
esac
'''


@pytest.fixture()
def slurm_bin(tmp_path: Path) -> Path:
    folder = tmp_path / "bin"
    folder.mkdir()
    for name, text in (("srun", SRUN.format(python=sys.executable)), ("scontrol", SCONTROL)):
        (folder / name).write_text(text)
        (folder / name).chmod(0o755)
    return folder


def job_env(hooks: Path, slurm_bin: Path, data: Path, run: Path, port: int, restart: int | None) -> dict[str, str]:
    """The batch job's environment: SLURM's variables, the paths set as a user would, torchrun on PATH."""
    env = child_env(hooks, "batch", 0.3)
    env.update(
        PATH=os.pathsep.join([str(slurm_bin), str(Path(sys.executable).parent), env["PATH"]]),
        SLURM_JOB_ID=JOB, SLURM_JOB_NODELIST="localhost,localhost", SLURM_NNODES="2", SLURM_JOB_NAME="alexnet",
        FAKE_SLURM_REQUEUED=str(slurm_bin.parent / "requeued"),
        OUT=str(data), RUN=str(run), RECIPE="tiny", PROCS_PER_NODE="1", DEVICE="cpu", PORT=str(port),
        TRAIN_ARGS=" ".join(["--no-progress", *[x for s in SETS for x in ("--set", s)]]),
    )
    env.pop("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", None)  # the script sets what it needs
    if restart is not None:
        env["SLURM_RESTART_COUNT"] = str(restart)
    return env


def batch(env: dict[str, str], tmp: Path, name: str) -> subprocess.Popen:
    with open(tmp / f"{name}.log", "w") as out:
        return subprocess.Popen(["bash", str(SBATCH)], env=env, cwd=tmp, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def srun_of(job: subprocess.Popen) -> int:
    found = []

    def started() -> bool:
        found[:] = [p for p in descendants(job.pid) if b"srun" in Path(f"/proc/{p}/cmdline").read_bytes()[:200]]
        return bool(found) or job.poll() is not None

    wait_for(started, "srun to start", timeout=120)
    assert found, "the job ended before its step"
    return found[0]


@pytest.mark.slow
def test_a_job_warned_by_sigusr1_checkpoints_requeues_itself_and_the_requeued_job_ends_as_an_uninterrupted_run(
        nodes_set, nodes_reference, nodes_hooks, slurm_bin, tmp_path):
    run, requeued = tmp_path / "run", tmp_path / "requeued"
    first = batch(job_env(nodes_hooks, slurm_bin, nodes_set, run, free_port(), None), tmp_path, "job")
    try:
        srun = srun_of(first)
        wait_for(lambda: 2 in metrics_steps(run) or first.poll() is not None, "step 2's record", timeout=300)
        step = descendants(srun)  # every process of the job step: each node's torchrun and its worker
        assert len(step) == 4, step
        for pid in step:  # what SLURM does 120 s before the job's end (--signal=USR1@120)
            os.kill(pid, signal.SIGUSR1)
        assert first.wait(timeout=300) != 0  # srun's: torchrun exits 1 after it passed a signal on (or srun
        # ended it first, --kill-on-bad-exit, when the other torchrun was quicker)
    finally:
        end([first])
    text = (tmp_path / "job.log").read_text()
    (line,) = [ln for ln in text.splitlines() if ln.startswith("stopped by SIGUSR1: ")]
    saved = last(run)
    assert 2 <= saved.step < STEPS and f"batch {saved.batch}/{STEPS} (step {saved.step})" in line
    assert " --auto-resume " in line and line.endswith(" (on every node)")
    assert (run / "log.txt").read_text().splitlines()[-1] == line  # what the script reads to requeue
    assert requeued.read_text().split() == [JOB] and f"requeueing job {JOB}" in text
    assert len(re.findall(r"Received 10 death signal", text)) == 2  # each torchrun passed it on, and each rank
    # (signalled twice: by "SLURM" and by its torchrun) stopped once, at the step both agreed on
    assert not any(alive(p) for p in step)

    again = batch(job_env(nodes_hooks, slurm_bin, nodes_set, run, free_port(), 1), tmp_path, "requeued-job")
    try:
        assert again.wait(timeout=300) == 0, (tmp_path / "requeued-job.log").read_text()
    finally:
        end([again])
    assert requeued.read_text().split() == [JOB]  # finished: not queued again
    assert re.search(rf"^resumed from \S+last\.pt at epoch \[0\] step {saved.step}:", (run / "log.txt").read_text(),
                     re.M)
    assert_same_state(last(run), nodes_reference)
