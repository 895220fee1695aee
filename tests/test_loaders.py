"""The loaders: order, ranks, evaluation shares, errors, exact tensors; the auto choice; the PyTorch workers.

Tests of backend-agnostic behaviour run on every registered backend (`kind`); those of a PyTorch
backend detail (its worker processes, PIL's resize) name it. The contract every backend keeps (the
sampler's draws → the tensor, mid-epoch resume, the ten views) is in test_contracts.py.
"""

import numpy as np
import pytest
import torch
from loader_data import N_TRAIN, N_VAL, make_set, structured_image
from test_contracts import backend_params, labels_of, load

from alexrepro.data.prepared import open_split, read_stats
from alexrepro.errors import UserError
from alexrepro.loaders import choose_kind, make_loader
from alexrepro.loaders.augment import resize_image, resize_mean
from alexrepro.loaders.order import BatchPlan, epoch_order
from alexrepro.recipe import DataConfig

CPU = torch.device("cpu")


@pytest.mark.parametrize("kind", backend_params())
def test_every_image_once_per_epoch_shuffled_deterministically(jpeg_set, kind):
    keep = DataConfig(workers=0, drop_last=False)
    seen = sum(labels_of(load(jpeg_set, 8, epoch=1, seed=5, data_cfg=keep, kind=kind)), [])
    assert sorted(seen) == list(range(N_TRAIN))  # labels are the global indices
    again = sum(labels_of(load(jpeg_set, 8, epoch=1, seed=5, data_cfg=keep, kind=kind)), [])
    assert seen == again
    assert seen != sum(labels_of(load(jpeg_set, 8, epoch=2, seed=5, data_cfg=keep, kind=kind)), [])
    assert seen != sum(labels_of(load(jpeg_set, 8, epoch=1, seed=6, data_cfg=keep, kind=kind)), [])
    assert seen != list(range(N_TRAIN))
    dropped = labels_of(load(jpeg_set, 8, epoch=1, seed=5, kind=kind))  # drop_last: 20 = 2 × 8 + 4 dropped
    assert [len(b) for b in dropped] == [8, 8] and sum(dropped, []) == seen[:16]


@pytest.mark.parametrize("kind", backend_params())
def test_ranks_split_each_global_batch_and_see_what_one_process_sees(raw_set, kind):
    cfg = DataConfig(workers=0, drop_last=False)
    one = load(raw_set, 8, epoch=3, seed=1, data_cfg=cfg, kind=kind)
    ranks = [load(raw_set, 8, epoch=3, seed=1, data_cfg=cfg, rank=r, world_size=2, kind=kind) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(one)
    for b, (images, labels) in enumerate(one):
        parts = [ranks[r][b] for r in range(2)]
        assert not set(parts[0][1].tolist()) & set(parts[1][1].tolist())
        assert torch.equal(torch.cat([p[1] for p in parts]), labels)
        assert torch.equal(torch.cat([p[0] for p in parts]), images)  # the same crops, flips and α


@pytest.mark.parametrize("kind", backend_params())
def test_evaluation_splits_images_over_ranks_without_loss_or_duplicates(jpeg_set, kind):
    counts, seen = [], []
    for r in range(3):
        loader = make_loader(jpeg_set, "val", DataConfig(workers=0), 6, train=False, device=CPU, kind=kind,
                             rank=r, world_size=3)
        batch_labels = [y.tolist() for _, y in loader]
        assert len(batch_labels) == len(loader) == 2  # every rank steps the same number of batches
        seen += sum(batch_labels, [])
        counts.append(loader.num_images)
        assert loader.total_images == N_VAL
        loader.close()
    assert sorted(seen) == list(range(N_VAL)) and sum(counts) == N_VAL


@pytest.mark.parametrize("kind", backend_params())
def test_bad_requests_are_user_errors(jpeg_set, kind):
    with pytest.raises(UserError, match="does not divide by 3"):
        make_loader(jpeg_set, "train", DataConfig(workers=0), 8, train=True, device=CPU, world_size=3, kind=kind)
    with pytest.raises(UserError, match="ten crops are for evaluation"):
        make_loader(jpeg_set, "train", DataConfig(workers=0), 8, train=True, device=CPU, crops="ten", kind=kind)
    with pytest.raises(UserError, match="crops must be one of"):
        make_loader(jpeg_set, "val", DataConfig(workers=0), 8, train=False, device=CPU, crops="five", kind=kind)
    with pytest.raises(UserError, match="no split 'test'"):
        make_loader(jpeg_set, "test", DataConfig(workers=0), 8, train=False, device=CPU, kind=kind)
    with pytest.raises(UserError, match="loader kind"):
        make_loader(jpeg_set, "val", DataConfig(workers=0), 8, train=False, device=CPU, kind="fast")


@pytest.mark.parametrize("kind", backend_params())
def test_lighting_without_pca_says_to_run_pca(tmp_path, kind):
    out = make_set(tmp_path / "nopca", n_train=4, n_val=2, pca=False)
    with pytest.raises(UserError, match="alexrepro pca"):
        make_loader(out, "train", DataConfig(workers=0), 4, train=True, device=CPU, kind=kind)
    make_loader(out, "train", DataConfig(workers=0, lighting=False), 4, train=True, device=CPU, kind=kind).close()


def test_evaluation_resizes_image_and_mean_and_takes_the_center(raw_set):
    cfg = DataConfig(workers=0, image_size=128, crop_size=112, mean="image")
    ((images, labels),) = load(raw_set, 8, split="val", train=False, data_cfg=cfg)
    ds, stats = open_split(raw_set, "val"), read_stats(raw_set)
    mean = resize_mean(stats.mean, 128)
    c0 = (128 - 112) // 2
    for k, i in enumerate(labels.tolist()):
        want = resize_image(ds[i][0], 128).astype(np.float64) - mean
        want = want[c0 : c0 + 112, c0 : c0 + 112].transpose(2, 0, 1)
        np.testing.assert_allclose(images[k].numpy(), want, atol=1e-4)


@pytest.mark.parametrize("kind", backend_params())
def test_channel_mean_and_channels_last(raw_set, kind):
    cfg = DataConfig(workers=0, mean="channel", lighting=False, mirror=False)
    (images, labels), _ = load(raw_set, 4, split="val", train=False, data_cfg=cfg, channels_last=True, kind=kind)
    assert images.is_contiguous(memory_format=torch.channels_last)
    ds, cm = open_split(raw_set, "val"), read_stats(raw_set).channel_mean
    c0 = 16
    want = ds[labels[0].item()][0][c0 : c0 + 224, c0 : c0 + 224] - cm
    np.testing.assert_allclose(images[0].numpy(), want.transpose(2, 0, 1), atol=1e-4)


@pytest.mark.parametrize("kind", backend_params())
def test_ten_crops_shape(jpeg_set, kind):
    batches = load(jpeg_set, 4, split="val", train=False, crops="ten", kind=kind)
    assert [tuple(b[0].shape) for b in batches] == [(4, 10, 3, 224, 224), (3, 10, 3, 224, 224)]
    assert torch.equal(batches[0][0][:, 4], load(jpeg_set, 4, split="val", train=False, kind=kind)[0][0])  # view 4: centre


def test_auto_picks_torch_on_a_cpu_and_says_why(jpeg_set, capsys, monkeypatch):
    monkeypatch.setattr("alexrepro.loaders._SAID", set())  # the line is said once per process
    loader = make_loader(jpeg_set, "val", DataConfig(workers=0), 4, train=False, device="cpu")
    assert loader.kind == "torch"
    loader.close()
    err = capsys.readouterr().err
    assert "loader: torch" in err and "cpu" in err
    import alexrepro.loaders as loaders

    monkeypatch.setattr(loaders, "dali_available", lambda: True)  # installed or not: the rule is checked
    assert choose_kind("auto", "auto", torch.device("cuda"))[0] == "dali"  # on a CUDA device auto takes DALI
    assert choose_kind("torch", "dali", torch.device("cuda"))[0] == "torch"  # the argument beats the recipe
    assert choose_kind("auto", "torch", torch.device("cuda"))[0] == "torch"  # then the recipe


def test_auto_without_dali_falls_back_and_explicit_dali_is_an_error(monkeypatch):
    import alexrepro.loaders as loaders

    monkeypatch.setattr(loaders, "dali_available", lambda: False)
    kind, why = choose_kind("auto", "auto", torch.device("cuda"))
    assert kind == "torch" and "nvidia-dali" in why
    with pytest.raises(UserError, match="pip install"):
        choose_kind("dali", "auto", torch.device("cpu"))


def test_batch_plan_counts():
    plan = BatchPlan(n=21, batch_size=6, train=False, drop_last=True, world_size=3, rank=2)
    assert plan.num_batches == 4 and plan.total_images == 21  # evaluation keeps the last batch
    assert [plan.rank_bounds(plan.batch_length(b)) for b in range(4)] == [(4, 6)] * 3 + [(2, 3)]
    assert BatchPlan(n=21, batch_size=6, train=True, drop_last=True).total_images == 18
    np.testing.assert_array_equal(epoch_order(10, 0, 0, False), np.arange(10))


@pytest.mark.parametrize("workers", [0, 2])
def test_more_shards_than_open_handles_read_right_with_labels_read_once(tmp_path, monkeypatch, workers):
    """8 shards, at most 3 open per process: every image right, labels read once (in the main process)."""
    import multiprocessing
    import os

    from test_prepared import open_files_under

    from alexrepro.data import shard_files
    from alexrepro.data.prepared import Shard

    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("counts descriptors in /proc")
    if workers and multiprocessing.get_start_method() != "fork":
        pytest.skip("the monkeypatched cap reaches the workers only through fork")
    out = make_set(tmp_path / "raw", n_train=16, n_val=3, per_shard=2, encoding="raw")
    monkeypatch.setattr(shard_files, "MAX_OPEN_SHARDS", 3)
    log = tmp_path / "label_reads"
    real_labels = Shard.labels

    def logged(self):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        return real_labels(self)

    monkeypatch.setattr(Shard, "labels", logged)
    cfg = DataConfig(workers=workers, drop_last=False, crop_size=256, mirror=False, lighting=False, mean="channel")
    loader = make_loader(out, "train", cfg, 4, train=True, device=CPU, kind="torch", seed=3)
    channel_mean = read_stats(out).channel_mean
    seen = []
    try:
        for epoch in (0, 1):
            loader.set_epoch(epoch)
            for images, labels in loader:
                for k, i in enumerate(labels.tolist()):
                    want = (structured_image(i) - channel_mean).transpose(2, 0, 1)
                    np.testing.assert_allclose(images[k].numpy(), want, atol=1e-3)
                    seen.append(i)
                procs = [w.pid for w in loader.dataloader._iterator._workers] if workers else ["self"]
                for pid in procs:
                    assert open_files_under(out, pid) <= 3
        assert sorted(seen) == sorted(list(range(16)) * 2) and seen[:16] != list(range(16))
    finally:
        loader.close()
    reads = log.read_text().split()
    assert reads == [str(os.getpid())] * 8  # once per shard, none in the workers


def test_worker_processes_prepare_the_next_batches_while_the_consumer_is_busy(jpeg_set, tmp_path, monkeypatch):
    # §3.4's "done on the CPU while the GPU is training on the previous batch": after the training loop
    # takes batch 0 and goes off to train on it (here: asks for nothing), the workers go on reading,
    # decoding and cutting the batches after it. Each batch read leaves a marker naming its process.
    import os
    import time

    import alexrepro.loaders.torch_loader as tl

    real = tl.read_batch

    def marking(split, idx, *args, **kwargs):
        (tmp_path / f"batch-{int(idx[0])}-{os.getpid()}").touch()
        return real(split, idx, *args, **kwargs)

    monkeypatch.setattr(tl, "read_batch", marking)
    loader = make_loader(jpeg_set, "train", DataConfig(workers=2), 4, train=True, device=CPU, kind="torch")
    try:
        batches = iter(loader)
        next(batches)  # batch 0 goes to "training"; nothing more is asked for
        deadline = time.monotonic() + 60
        while len(list(tmp_path.glob("batch-*"))) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        marks = [p.name for p in tmp_path.glob("batch-*")]
        assert len(marks) >= 3, marks  # batches beyond the one taken were prepared meanwhile
        assert all(int(m.rsplit("-", 1)[1]) != os.getpid() for m in marks)  # in worker processes
        assert len(list(batches)) == len(loader) - 1  # and they are the ones the loop then gets
    finally:
        loader.close()
