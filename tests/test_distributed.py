"""Data parallelism: launch checks, torchrun's environment, N gloo processes = 1 process; GPU paths."""

import pytest
import torch
from test_train import SMALL, make_set  # tests/ is on sys.path under pytest

from alexrepro import distributed as D
from alexrepro.errors import UserError
from alexrepro.training import checkpoint as ck
from alexrepro.training.loop import TrainOptions, run_training


def test_resolve_launch_counts_processes_and_refuses_impossible_requests():
    assert D.resolve_launch("cpu", 1, 1, None) == ("cpu", 1, "none")
    assert D.resolve_launch("cpu", 1, 3, None) == ("cpu", 3, "data")
    assert D.resolve_launch("cpu", 1, 1, "model") == ("cpu", 1, "model")  # both towers on the CPU
    with pytest.raises(UserError, match="--procs N"):
        D.resolve_launch("cpu", 2, 1, None)
    with pytest.raises(UserError, match="data or model"):
        D.resolve_launch("cpu", 1, 2, "pipeline")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA device"):
            D.resolve_launch("cuda", 1, 1, None)
    elif torch.cuda.device_count() < 2:
        with pytest.raises(UserError, match="only 1 CUDA devices"):
            D.resolve_launch("cuda", 2, 1, "model")


def test_tower_devices_default_or_named_in_the_environment(monkeypatch):
    monkeypatch.delenv(D.TOWER_DEVICES_ENV, raising=False)
    assert D.tower_devices("cuda") == ("cuda:0", "cuda:1") and D.tower_devices("cpu") == ("cpu", "cpu")
    monkeypatch.setenv(D.TOWER_DEVICES_ENV, " cpu , cpu ")
    assert D.tower_devices("cpu") == ("cpu", "cpu")
    for bad in ("cuda:0,cuda:0", "cpu", "cpu,cpu,cpu", "gpu:0,gpu:1"):  # cuda on a cpu run, one, three, no device
        monkeypatch.setenv(D.TOWER_DEVICES_ENV, bad)
        with pytest.raises(UserError, match=D.TOWER_DEVICES_ENV):
            D.tower_devices("cpu")
    with pytest.raises(UserError, match=D.TOWER_DEVICES_ENV):  # checked before any process starts
        D.resolve_launch("cpu", 1, 1, "model")
    assert D.resolve_launch("cpu", 1, 1, None) == ("cpu", 1, "none")  # only --parallel model reads it
    if torch.cuda.device_count() == 1:  # both towers on the one GPU: --gpus 2 is accepted
        monkeypatch.setenv(D.TOWER_DEVICES_ENV, "cuda:0,cuda:0")
        assert D.resolve_launch("cuda", 2, 1, "model") == ("cuda", 1, "model")
        monkeypatch.setenv(D.TOWER_DEVICES_ENV, "cuda:0,cuda:1")
        with pytest.raises(UserError, match="lacks"):
            D.resolve_launch("cuda", 2, 1, "model")


def test_torchrun_environment_is_read(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert D.torchrun_env() is None
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_RANK", "1")
    info = D.torchrun_env()
    assert (info.rank, info.world_size, info.local_rank, info.is_main) == (3, 8, 1, False)
    assert D.resolve_launch("cpu", 1, 1, None) == ("cpu", 1, "data")  # torchrun started the processes
    monkeypatch.setenv("WORLD_SIZE", "x")
    with pytest.raises(UserError, match="integers"):
        D.torchrun_env()


def test_all_reduce_is_identity_alone():
    t = torch.tensor([1.0, 2.0])
    assert torch.equal(D.all_reduce_sum(t), torch.tensor([1.0, 2.0]))


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path):
    data = make_set(tmp_path / "out")
    common = SMALL + ["model.dropout=0.0", "schedule.epochs=1"]
    one = run_training(TrainOptions(out=data, run_dir=tmp_path / "one", recipe="tiny", overrides=common,
                                    device="cpu", show_progress=False))
    two = run_training(TrainOptions(out=data, run_dir=tmp_path / "two", recipe="tiny", overrides=common,
                                    device="cpu", procs=2, show_progress=False))
    assert two["world_size"] == 2 and two["parallel"] == "data" and two["steps"] == one["steps"]
    assert two["last_val_top1_error"] == pytest.approx(one["last_val_top1_error"])
    a = ck.read_checkpoint(ck.checkpoint_dir(tmp_path / "one") / "last.pt").model
    b = ck.read_checkpoint(ck.checkpoint_dir(tmp_path / "two") / "last.pt").model
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6), k


@pytest.mark.slow
def test_an_error_in_a_spawned_process_is_reported(tmp_path):
    data = make_set(tmp_path / "out")
    with pytest.raises(UserError, match="does not divide by 3"):
        run_training(TrainOptions(out=data, run_dir=tmp_path / "r", recipe="tiny", overrides=SMALL,
                                  device="cpu", procs=3, show_progress=False))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_channels_last_training_on_cuda(tmp_path):
    data = make_set(tmp_path / "out")
    s = run_training(TrainOptions(out=data, run_dir=tmp_path / "r", recipe="tiny", device="cuda",
                                  overrides=SMALL + ["run.precision=bf16", "run.channels_last=true",
                                                     "schedule.epochs=1"], show_progress=False))
    assert s["devices"] == ["cuda:0"] and s["steps"] == 4
    c = ck.read_checkpoint(s["checkpoints"]["last"])
    assert all(torch.isfinite(t).all() for t in c.model.values())


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_model_parallel_on_two_gpus(tmp_path):
    # The maths, not only the placement: an epoch with a tower on each GPU ends with the weights of the same
    # epoch on one GPU (dropout off: each tower draws its own masks, docs/FAITHFULNESS.md C8).
    _model_parallel_matches_one_gpu(tmp_path, ["cuda:0", "cuda:1"])


def _model_parallel_matches_one_gpu(tmp_path, devices):
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    data = make_set(tmp_path / "out")
    common = SMALL + ["schedule.epochs=1", "model.dropout=0.0"]
    one = run_training(TrainOptions(out=data, run_dir=tmp_path / "one", recipe="tiny", device="cuda",
                                    overrides=common, show_progress=False))
    two = run_training(TrainOptions(out=data, run_dir=tmp_path / "two", recipe="tiny", device="cuda", gpus=2,
                                    parallel="model", overrides=common, show_progress=False))
    assert two["parallel"] == "model" and two["devices"] == devices and two["steps"] == one["steps"] == 4
    a = ck.read_checkpoint(one["checkpoints"]["last"]).model
    b = ck.read_checkpoint(two["checkpoints"]["last"]).model
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_model_parallel_with_both_towers_on_one_gpu(tmp_path, monkeypatch):
    # The two-GPU code path (per-tower layers, the exchanges of §3.2) on a one-GPU machine: the same weights
    # as the grouped net's epoch.
    monkeypatch.setenv(D.TOWER_DEVICES_ENV, "cuda:0,cuda:0")
    _model_parallel_matches_one_gpu(tmp_path, ["cuda:0", "cuda:0"])


@pytest.mark.slow
def test_two_process_resume_restores_each_ranks_dropout_stream(tmp_path):
    # Every rank's random state is in the checkpoint, so 1 epoch + resume = 2 epochs straight, bitwise,
    # with dropout on (each rank draws its own masks).
    data = make_set(tmp_path / "out")
    common = SMALL + ["model.dropout=0.5"]

    def run(name, *extra, resume=None):
        return run_training(TrainOptions(out=data, run_dir=tmp_path / name, recipe="tiny",
                                         overrides=common + list(extra), device="cpu", procs=2, resume=resume,
                                         show_progress=False))

    run("straight", "schedule.epochs=2")
    run("resumed", "schedule.epochs=1")
    run("resumed", "schedule.epochs=2", resume="")
    saved = ck.read_checkpoint(ck.checkpoint_dir(tmp_path / "resumed") / "last.pt")
    assert isinstance(saved.rng, list) and len(saved.rng) == 2
    assert not torch.equal(saved.rng[0]["torch"], saved.rng[1]["torch"])  # two ranks, two streams
    a = ck.read_checkpoint(ck.checkpoint_dir(tmp_path / "straight") / "last.pt").model
    b = saved.model
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_two_gloo_processes_stop_together_on_a_nan_and_keep_a_finite_state(tmp_path):
    # The watchdog's record is made from the all-reduced loss, so both ranks refuse the same updates and
    # stop at the same check; rank 0 writes the state from before the first bad step.
    from alexrepro.errors import WorkFailed

    data = make_set(tmp_path / "out")
    with pytest.raises(WorkFailed, match="diverged"):
        run_training(TrainOptions(out=data, run_dir=tmp_path / "r", recipe="tiny", overrides=SMALL + ["optim.lr=1e6"],
                                  device="cpu", procs=2, show_progress=False))
    c = ck.read_checkpoint(ck.checkpoint_dir(tmp_path / "r") / "last.pt")
    assert all(torch.isfinite(t).all() for t in c.model.values())
    assert len(c.rng) == 2 and c.step < 8
