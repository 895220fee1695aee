"""torchrun across "nodes": two torchrun agents on this machine, each a node (docs/DISTRIBUTED.md).

Each agent is `python -m torch.distributed.run --nnodes 2 --nproc-per-node 1 --rdzv-backend c10d
--rdzv-endpoint 127.0.0.1:PORT`, started from a torchrun line of README.md or docs/DISTRIBUTED.md with only its
placeholders replaced (`local_command`); gloo on the CPU, the `tiny` recipe at 64-pixel crops on test_train's
tiny raw set: 8 steps of 4 images, one epoch. Every process is started here and ended by its pid (the agents
and, found under them, their workers), whatever the test's outcome. A test-only sitecustomize
(tests/test_faults.py) slows each batch read where a signal must land mid-epoch.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal

import pytest
from run_state import assert_same_state, metrics_steps
from test_faults import LINUX_PROC, alive, wait_for
from test_train import make_set
from torchrun_nodes import (
    STEPS,
    command_for,
    documented,
    finish,
    last,
    lines,
    local_command,
    log,
    node_env,
    nodes,
    tiny,
    worker,
)

from alexrepro.distributed import free_port
from alexrepro.training import checkpoint as ck

pytestmark = pytest.mark.skipif(not LINUX_PROC, reason="needs Linux /proc to find the agents' workers")


def test_every_documented_torchrun_line_is_torchruns_and_alexrepros_and_train_fails_without_its_double_dash():
    from torch.distributed.run import get_args_parser
    from typer.main import get_command

    from alexrepro.cli import app

    commands, exports = documented()
    assert {c.split(" -- ")[1].split()[0] for c in commands} == {"train", "eval"}  # each run by a test below
    assert exports == {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    for command in commands:
        args = shlex.split(command)[1:]
        parsed = get_args_parser().parse_args(args)
        assert parsed.module and parsed.training_script == "alexrepro", command
        assert parsed.rdzv_backend == "c10d" and parsed.nnodes == "2", command
        verb, *rest = parsed.training_script_args
        get_command(app).commands[verb].make_context(verb, list(rest))  # alexrepro reads every option
    train = command_for("train")
    with pytest.raises(SystemExit):  # "ambiguous option: --run could match --run-path, --run_path"
        get_args_parser().parse_args([a for a in shlex.split(train)[1:] if a != "--"])
    for needed in ("--max-restarts", "--auto-resume", "SIGUSR1"):
        assert needed in train


def test_a_leading_double_dash_is_dropped_as_torchrun_may_pass_it_on(capsys):
    from alexrepro.cli import main

    with pytest.raises(SystemExit) as e:
        main(["--", "recipe", "list"])
    assert e.value.code in (0, None) and "tiny" in capsys.readouterr().err  # the table goes to stderr


@pytest.mark.slow
def test_two_nodes_train_bitwise_as_the_built_in_launcher_and_evaluate(nodes_set, nodes_reference, nodes_hooks,
                                                                       tmp_path):
    from alexrepro.evaluation.evaluate import EvalOptions, run_evaluation

    run, port = tmp_path / "run", free_port()
    train = local_command(command_for("train"), port, nodes_set, run, *tiny())
    with nodes([train, train], node_env(nodes_hooks), tmp_path) as agents:
        assert finish(agents) == [0, 0], log(tmp_path, 0) + log(tmp_path, 1)
    assert_same_state(last(run), nodes_reference)
    assert lines(log(tmp_path, 0), "done: 1 epoch, 8 steps") and not lines(log(tmp_path, 1), "done:")  # rank 0 says it
    best = ck.checkpoint_dir(run) / ck.BEST
    evaluate = local_command(command_for("eval"), free_port(), nodes_set, run, "--json", "--batch-size", "4")
    assert str(best) in evaluate
    with nodes([evaluate, evaluate], node_env(nodes_hooks), tmp_path) as agents:
        assert finish(agents) == [0, 0], log(tmp_path, 0) + log(tmp_path, 1)
    reports = [json.loads(ln) for i in (0, 1) for ln in log(tmp_path, i).splitlines() if ln.startswith("{")]
    alone = run_evaluation(EvalOptions(out=nodes_set, checkpoints=[best], crops=10, device="cpu", batch_size=4),
                           show_progress=False)
    assert len(reports) == 1 and reports[0]["world_size"] == 2  # printed once, by rank 0
    for key in ("images", "top1_error_pct", "top5_error_pct"):
        assert reports[0][key] == alone[key], key


def resume_line(text: str) -> list[str]:
    """The command rank 0's stop line gives, as a shell would read it."""
    (line,) = lines(text, "stopped by ")
    command = line.split("resume with: ", 1)[1]
    assert command.endswith(" (on every node)"), line
    return shlex.split(command.removesuffix(" (on every node)"))


@pytest.mark.slow
def test_sigterm_to_one_torchrun_stops_every_rank_with_a_checkpoint_and_its_command_resumes(nodes_set, nodes_reference,
                                                                                            nodes_hooks,
                                                                                            tmp_path):
    run = tmp_path / "run"
    train = local_command(command_for("train"), free_port(), nodes_set, run, *tiny())
    with nodes([train, train], node_env(nodes_hooks, slow=0.3), tmp_path) as agents:
        other = worker(agents[1])
        wait_for(lambda: 2 in metrics_steps(run) or any(a.poll() is not None for a in agents), "step 2's record")
        agents[0].send_signal(signal.SIGTERM)  # node 0's torchrun alone: its rank stops, and by their vote node 1's
        wait_for(lambda: agents[0].poll() is not None and not alive(other), "both ranks to stop")
        ended = f"failed (exitcode: 143) local_rank: 0 (pid: {other})"  # what node 1's torchrun sees
        wait_for(lambda: ended in log(tmp_path, 1) or agents[1].poll() is not None, "node 1's torchrun to see it")
        if agents[1].poll() is None:  # it may wait for node 0 in a new round (--max-restarts): every node's
            agents[1].send_signal(signal.SIGTERM)  # torchrun is signalled, as docs/DISTRIBUTED.md says
        codes = finish(agents)
    # torchrun's own: 1 after it passed a signal on, or a process of its node ended with 143 (node 1's, in a new
    # round, may also meet the signal before it handles signals again: -15)
    assert codes[0] == 1 and codes[1] in (1, -signal.SIGTERM), log(tmp_path, 0) + log(tmp_path, 1)
    # node 1's torchrun reports its rank's 143, unless node 0's torchrun (which holds the rendezvous store) ended
    # first and node 1's met the closed store before its next look at its rank (seen on a loaded 2-core machine);
    # either way the group stopped together: the checkpoint below holds both ranks' state at one mid-epoch step
    assert ended in log(tmp_path, 1) or "RendezvousConnectionError" in log(tmp_path, 1), log(tmp_path, 1)
    saved = last(run)
    assert 2 <= saved.step < STEPS and saved.batch == saved.step and len(saved.rng) == 2  # mid-epoch, both ranks
    (line,) = lines(log(tmp_path, 0), "stopped by SIGTERM: ")
    assert f"holds epoch [0] batch {saved.batch}/{STEPS} (step {saved.step}); resume with: " in line
    command = resume_line(log(tmp_path, 0))
    settings = [a for a in command if re.match(r"[A-Z_]+=", a)]
    assert settings == ["TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1"] and "--auto-resume" in command
    env = dict(node_env(nodes_hooks), **dict(s.split("=", 1) for s in settings))
    with nodes([command[len(settings):]] * 2, env, tmp_path) as agents:
        assert finish(agents) == [0, 0], log(tmp_path, 0) + log(tmp_path, 1)
    assert_same_state(last(run), nodes_reference)


@pytest.mark.slow
def test_a_stopped_rank_is_named_within_the_timeout_and_once_killed_the_group_restarts_and_ends_bitwise(
        nodes_set, nodes_reference, nodes_hooks, tmp_path):
    """No hang without end (SIGSTOP: the other rank names it within the group's timeout), then an elastic
    restart (the stopped rank killed by its pid, mid-epoch: torchrun restarts the group, --auto-resume goes on)."""
    run = tmp_path / "run"
    train = local_command(command_for("train"), free_port(), nodes_set, run, *tiny("--group-timeout", "10"))
    with nodes([train, train], node_env(nodes_hooks, slow=0.3), tmp_path) as agents:
        stopped = worker(agents[1])
        wait_for(lambda: 4 in metrics_steps(run) or any(a.poll() is not None for a in agents), "step 4's record")
        assert last(run).step >= 2  # --checkpoint-every 2: a checkpoint mid-epoch
        os.kill(stopped, signal.SIGSTOP)
        wait_for(lambda: lines(log(tmp_path, 0), "failed: ") or agents[0].poll() is not None, "rank 0's line")
        assert alive(stopped)  # its torchrun would wait for it (--shutdown-timeout) before it restarts it
        os.kill(stopped, signal.SIGKILL)
        assert finish(agents) == [0, 0], log(tmp_path, 0) + log(tmp_path, 1)
    line = lines(log(tmp_path, 0), "failed: ")[0]
    assert line.startswith(f"failed: rank 1 (pid {stopped} on ") and " stopped answering; rank 0 " in line
    assert "the group's timeout, 10 s (train --group-timeout)" in line
    assert f"failed (exitcode: -9) local_rank: 0 (pid: {stopped})" in log(tmp_path, 1)  # torchrun's summary
    said = (run / "log.txt").read_text()
    assert re.search(r"^resumed from \S+last\.pt at epoch \[0\] step [2-7]:", said, re.M), said
    steps = metrics_steps(run)
    assert steps == sorted(steps) and steps[-1] == STEPS  # nothing logged twice: the restart cut them back
    assert_same_state(last(run), nodes_reference)


@pytest.mark.slow
def test_a_node_that_reads_another_set_ends_the_job_with_one_line_naming_it(nodes_set, nodes_hooks, tmp_path):
    """Node 1's OUT holds another set (another mount, a stale copy): every rank ends, rank 0 says which one.
    A node that cannot read OUT at all takes the same way (tests/test_group_health.py)."""
    other = make_set(tmp_path / "other", seed=1)
    run, port = tmp_path / "run", free_port()
    commands = [local_command(command_for("train"), port, out, run, *tiny(), restarts=0) for out in (nodes_set, other)]
    with nodes(commands, node_env(nodes_hooks), tmp_path) as agents:
        odd = worker(agents[1])
        finish(agents)
    (line,) = lines(log(tmp_path, 0), "error: ")
    assert line.startswith(f"error: rank 1 (pid {odd} on ") and " sees another prepared set in OUT than rank 0 " in line
    assert not lines(log(tmp_path, 1), "error: ")  # one line for the job, rank 0's
    assert not ck.checkpoint_candidates(run)
