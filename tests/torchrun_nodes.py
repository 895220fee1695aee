"""Two torchrun agents on this machine as two "nodes", and the documented torchrun lines (docs/DISTRIBUTED.md).

Shared by tests/test_multinode.py and tests/test_slurm.py; their fixtures (the set, the `--procs 2` reference
run, the slowing sitecustomize) are conftest.py's `nodes_set`, `nodes_reference` and `nodes_hooks`.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from test_faults import ROOT, child_env, children, wait_for

from alexrepro.training import checkpoint as ck

DOCS = [ROOT / "README.md", ROOT / "docs" / "DISTRIBUTED.md"]
SETS = ["model.num_classes=4", "data.image_size=72", "data.crop_size=64", "data.workers=0",
        "optim.batch_size=4", "run.log_every=2", "schedule.epochs=1"]
STEPS = 8  # 32 training images / 4
# Each documented placeholder, and what it is on this machine (two "nodes" of one CPU process each).
PLACES = {"--nproc-per-node 8": "--nproc-per-node 1", "node0:29500": "127.0.0.1:{port}", "/fast/alexnet-256": "{out}",
          "runs/paper": "{run}", "--recipe paper": "--recipe tiny", "--device cuda": "--device cpu",
          "--checkpoint-every 1000": "--checkpoint-every 2"}
# torchrun's own rendezvous timeouts are generous already (join: 600 s); nothing is added for a loaded machine


# --------------------------------------------------------------------------------------------- the documented lines
def documented() -> tuple[list[str], dict[str, str]]:
    """(every torchrun command in the docs' code blocks, continuation lines joined; the variables they export)."""
    commands, exports = [], {}
    for doc in DOCS:
        for block in re.findall(r"```bash\n(.*?)```", doc.read_text(), re.S):
            joined = re.sub(r"\\\n\s*", "", block)
            for line in joined.splitlines():
                if line.startswith("torchrun "):
                    commands.append(line.strip())
                elif line.startswith("export "):
                    name, _, value = line.split()[1].partition("=")
                    exports[name] = value
    return commands, exports


def command_for(verb: str) -> str:
    """The one documented torchrun command of `alexrepro VERB` (the docs repeat it word for word)."""
    found = {c for c in documented()[0] if f"-m alexrepro -- {verb} " in c}
    assert len(found) == 1, found
    return found.pop()


def local_command(command: str, port: int, out: Path, run: Path, *extra: str, restarts: int | None = None) -> list[str]:
    """A documented torchrun command as it runs here: its placeholders replaced (PLACES), torchrun run by this
    Python, and `extra` arguments for alexrepro (the tiny recipe's sizes) at its end; `restarts` in place of
    its --max-restarts, for a test whose failure no restart would mend."""
    for place, here in PLACES.items():
        command = command.replace(place, here.format(port=port, out=out, run=run))
    if restarts is not None:
        command, n = re.subn(r"--max-restarts \d+", f"--max-restarts {restarts}", command)
        assert n == 1
    args = shlex.split(command)
    assert args[0] == "torchrun"
    return [sys.executable, "-m", "torch.distributed.run", *args[1:], *extra]


def tiny(*more: str) -> list[str]:
    return ["--no-progress", *[x for s in SETS for x in ("--set", s)], *more]


def node_env(hooks: Path, slow: float = 0.0) -> dict[str, str]:
    env = child_env(hooks, "batch" if slow else "", slow)
    env.update(documented()[1])  # what the docs export on every node
    env.pop("TORCHELASTIC_SIGNALS_TO_HANDLE", None)
    return env


def free_port() -> int:
    from alexrepro.distributed import free_port as port

    return port()


def descendants(pid: int) -> list[int]:
    found = []
    for c in children(pid):
        found += [c, *descendants(c)]
    return found


def end(procs: list[subprocess.Popen]) -> None:
    """End every agent and every process under it, by pid (torchrun's workers run in sessions of their own)."""
    for proc in procs:
        for pid in descendants(proc.pid) if proc.poll() is None else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)


@contextlib.contextmanager
def nodes(commands: list[list[str]], env: dict[str, str], tmp: Path) -> Iterator[list[subprocess.Popen]]:
    """One agent per command, each a node, its output in tmp/node<i>.log; every one ended at the end."""
    procs: list[subprocess.Popen] = []
    try:
        for i, command in enumerate(commands):
            with open(tmp / f"node{i}.log", "w") as log:
                procs.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                              start_new_session=True))
        yield procs
    finally:
        end(procs)


def is_worker(pid: int) -> bool:
    """Whether `pid` runs a worker's own command (`python -u -m alexrepro ...`). Not a child the agent forked
    that has not exec'd yet: torchrun forks `ldconfig` as it starts, and until the exec that child shows
    torchrun's command line, which names alexrepro too."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:  # ended between the listing and the read
        return False
    return b"alexrepro" in args and b"torch.distributed.run" not in args


def worker(agent: subprocess.Popen) -> int:
    """The pid of the one worker an agent runs now (waiting until it runs)."""
    found: list[int] = []

    def started() -> bool:
        found[:] = [c for c in children(agent.pid) if is_worker(c)]
        return len(found) == 1 or agent.poll() is not None

    wait_for(started, "the agent's worker", timeout=300)
    assert found, "the agent ended without a worker"
    return found[0]


def finish(procs: list[subprocess.Popen], timeout: float = 300) -> list[int]:
    return [p.wait(timeout=timeout) for p in procs]


def log(tmp: Path, node: int) -> str:
    return (tmp / f"node{node}.log").read_text()


def lines(text: str, start: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith(start)]


def last(run: Path) -> ck.Checkpoint:
    return ck.read_checkpoint(ck.checkpoint_dir(run) / ck.LAST)


