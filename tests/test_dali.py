"""Every backend (DALI in CPU mode here) gives the reference PyTorch backend's tensors for the same draws.

The comparisons run for each registered backend besides the reference (the first of BACKENDS);
the last test is of the DALI backend's own external source.
"""

import pickle

import numpy as np
import pytest
import torch
from loader_data import make_set
from test_contracts import backend_params

from alexrepro.loaders import BACKENDS, dali_available, make_loader
from alexrepro.loaders.dali_source import ShardSource
from alexrepro.recipe import DataConfig

CPU = torch.device("cpu")
REFERENCE = next(iter(BACKENDS))  # "torch"
OTHERS = [p for p in backend_params() if p.values[0] != REFERENCE]


@pytest.fixture(scope="module")
def jpeg_set(tmp_path_factory):
    return make_set(tmp_path_factory.mktemp("jpeg"), n_train=20, n_val=7)


@pytest.fixture(scope="module")
def raw_set(tmp_path_factory):
    return make_set(tmp_path_factory.mktemp("raw"), n_train=20, n_val=7, encoding="raw")


def both(out, batch_size, epoch=0, start=0, split="train", train=True, *, other, **kw):
    """The batches of one pass from the reference backend and from `other`, with the same arguments."""
    cfg = kw.pop("data_cfg", DataConfig(workers=1))
    result = {}
    for kind in (REFERENCE, other):
        loader = make_loader(out, split, cfg, batch_size, train=train, device=CPU, kind=kind, **kw)
        assert loader.kind == kind
        loader.set_epoch(epoch, start)
        result[kind] = (list(loader), len(loader), loader.num_images)
        loader.close()
    (t, tlen, tn), (d, dlen, dn) = result[REFERENCE], result[other]
    assert (tlen, tn) == (dlen, dn) and len(t) == len(d) == tlen
    return t, d


def assert_close(t, d, exact):
    for (a, ya), (b, yb) in zip(t, d, strict=True):
        assert torch.equal(ya, yb) and a.shape == b.shape and a.dtype == b.dtype == torch.float32
        if a.numel() == 0:
            continue
        diff = (a - b).abs()
        if exact:
            assert torch.equal(a, b)
        else:  # JPEG decoders (and resize filters) may differ slightly
            assert diff.mean() < 1.0 and diff.max() < 10.0


@pytest.mark.parametrize("other", OTHERS)
def test_same_draws_same_tensor_jpeg(jpeg_set, other):
    t, d = both(jpeg_set, 8, epoch=1, seed=4, other=other)
    assert_close(t, d, exact=False)


@pytest.mark.parametrize("other", OTHERS)
def test_same_draws_same_tensor_raw_exact_with_ranks_and_kept_last_batch(raw_set, other):
    cfg = DataConfig(workers=1, drop_last=False)
    for rank in range(3):  # 20 = 3 × 6 + 2: rank 2 gets nothing of the last batch
        t, d = both(raw_set, 6, epoch=2, seed=1, data_cfg=cfg, rank=rank, world_size=3, other=other)
        assert_close(t, d, exact=True)
        assert [len(y) for _, y in d] == ([2, 2, 2, 1] if rank < 2 else [2, 2, 2, 0])


@pytest.mark.parametrize("other", OTHERS)
def test_resized_and_ten_crop_evaluation(jpeg_set, other):
    small = DataConfig(workers=1, image_size=128, crop_size=112, drop_last=False)
    t, d = both(jpeg_set, 8, epoch=0, data_cfg=small, other=other)
    assert_close(t, d, exact=False)
    t, d = both(jpeg_set, 4, split="val", train=False, crops="ten", other=other)
    assert d[0][0].shape == (4, 10, 3, 224, 224)
    assert_close(t, d, exact=False)


@pytest.mark.parametrize("other", OTHERS)
def test_epochs_resume_and_a_broken_pass(jpeg_set, other):
    cfg = DataConfig(workers=1, drop_last=False)
    ref = make_loader(jpeg_set, "train", cfg, 8, train=True, device=CPU, kind=REFERENCE, seed=3)
    tested = make_loader(jpeg_set, "train", cfg, 8, train=True, device=CPU, kind=other, seed=3)

    def labels(loader, epoch, start=0):
        loader.set_epoch(epoch, start)
        return [y.tolist() for _, y in loader]

    for epoch, start in [(0, 0), (1, 0), (2, 0), (2, 1), (0, 2), (5, 0)]:  # follow-on, repeat, resume, jump
        assert labels(tested, epoch, start) == labels(ref, epoch, start)
    tested.set_epoch(6)
    next(iter(tested))  # a pass broken off after one batch
    assert tested.state_dict()["batch"] == 1
    state = tested.state_dict()
    tested.load_state_dict(state)
    assert labels(tested, 6, 1) == labels(ref, 6, 1)
    ref.close()
    tested.close()


@pytest.mark.skipif(not dali_available(), reason="nvidia-dali is not installed")
def test_source_is_picklable_and_ends_the_epoch(jpeg_set):
    loader = make_loader(jpeg_set, "val", DataConfig(workers=1), 4, train=False, device=CPU, kind="dali")
    source = pickle.loads(pickle.dumps(ShardSource(loader.dataset, loader.plan, loader.spec.data, 0, 0)))
    info = type("Info", (), {"epoch_idx": 0, "iteration": 1})()
    stored, anchors, flips, labels, alphas = source(info)
    assert [int(v) for v in labels] == [4, 5, 6] and len(stored) == len(anchors) == len(flips) == len(alphas) == 3
    info.iteration = 2
    with pytest.raises(StopIteration):
        source(info)
    loader.close()


# Settings that change how DALI runs, never what it computes (alexrepro bench loader --dali-variant).
TUNINGS = ["roi_decode=true", "prefetch=1,source_depth=1", "threads=1,py_workers=2", "bytes_per_sample_hint=196608",
           "hw_decoder_load=1", "per_sample=true,py_workers=3", "per_sample=true,roi_decode=true"]


def dali_batches(out, tuning, device, epoch=1, seed=4, batch_size=8, passes=None, **spec_kw):
    """The DALI loader's batches of `epoch` with `tuning`; with `passes`, one list per (epoch, start batch)
    read in turn by the one loader."""
    from alexrepro.loaders.base import LoaderSpec
    from alexrepro.loaders.dali_loader import DaliLoader, DaliTuning

    kw = {"split": "train", "data": DataConfig(workers=1), "train": True} | spec_kw
    spec = LoaderSpec(out=out, batch_size=batch_size, device=device, seed=seed, **kw)
    loader = DaliLoader(spec, DaliTuning.parse(tuning))
    try:
        result = []
        for e, start in passes or ((epoch, 0),):
            loader.set_epoch(e, start)
            result.append(list(loader))
        return result if passes else result[0]
    finally:
        loader.close()


@pytest.mark.skipif(not dali_available(), reason="nvidia-dali is not installed")
@pytest.mark.parametrize("tuning", TUNINGS)
def test_dali_settings_give_the_same_tensors(jpeg_set, tuning):
    # roi_decode cuts the crop while decoding (decoders.image_slice): libjpeg-turbo gives the same pixels as
    # decoding whole and slicing, so every setting here must give the default's tensors bit for bit.
    default = dali_batches(jpeg_set, "", CPU)
    for (a, ya), (b, yb) in zip(default, dali_batches(jpeg_set, tuning, CPU), strict=True):
        assert torch.equal(ya, yb) and torch.equal(a, b)


@pytest.mark.gpu
@pytest.mark.skipif(not (dali_available() and torch.cuda.is_available()), reason="needs nvidia-dali and CUDA")
@pytest.mark.parametrize("tuning", ["", "roi_decode=true", "hw_decoder_load=0", "hw_decoder_load=1", "per_sample=true"])
def test_dali_settings_on_the_gpu_decoder_keep_the_reference_tensors(jpeg_set, tuning):
    # nvJPEG (CUDA or the hardware decoder, by hw_decoder_load) against the PyTorch backend's PIL decode of the
    # same draws: within the tolerance any JPEG decoder is held to, and roi_decode equal to the whole decode.
    cuda = torch.device("cuda")
    ref = make_loader(jpeg_set, "train", DataConfig(workers=1), 8, train=True, device=CPU, kind=REFERENCE, seed=4)
    ref.set_epoch(1)
    t = list(ref)
    ref.close()
    got = [(a.cpu(), y.cpu()) for a, y in dali_batches(jpeg_set, tuning, cuda)]
    assert_close(t, got, exact=False)
    if tuning == "roi_decode=true":
        whole = [(a.cpu(), y.cpu()) for a, y in dali_batches(jpeg_set, "", cuda)]
        assert_close(whole, got, exact=True)


@pytest.mark.skipif(not dali_available(), reason="nvidia-dali is not installed")
@pytest.mark.parametrize("workers", [1, 3])
def test_sample_mode_keeps_short_batches_ranks_epochs_and_evaluation(raw_set, jpeg_set, workers):
    # Sample mode fills a short batch up to DALI's fixed batch size; the loader must hand back exactly the
    # batch's own images, as batch mode does: the kept last batch, a rank with none of it, epochs following
    # on and a resume mid-epoch, and ten-crop evaluation (the preset's views).
    cfg = DataConfig(workers=1, drop_last=False)
    mode = f"per_sample=true,py_workers={workers}"
    passes = ((2, 0), (3, 0), (3, 2))
    for rank in range(3):  # 20 = 3 × 6 + 2: rank 2 gets nothing of the last batch
        kw = {"data": cfg, "rank": rank, "world_size": 3, "seed": 1, "batch_size": 6, "passes": passes}
        batch_mode, sample_mode = dali_batches(raw_set, "", CPU, **kw), dali_batches(raw_set, mode, CPU, **kw)
        assert [len(y) for _, y in sample_mode[0]] == ([2, 2, 2, 1] if rank < 2 else [2, 2, 2, 0])
        assert len(sample_mode[2]) == 2  # the resumed pass: batches 2 and 3
        for a, b in zip(batch_mode, sample_mode, strict=True):
            assert_close(a, b, exact=True)
    kw = {"split": "val", "train": False, "crops": "ten", "batch_size": 4, "epoch": 0}
    ten_batch, ten_sample = dali_batches(jpeg_set, "", CPU, **kw), dali_batches(jpeg_set, mode, CPU, **kw)
    assert [tuple(a.shape) for a, _ in ten_sample] == [(4, 10, 3, 224, 224), (3, 10, 3, 224, 224)]
    assert_close(ten_batch, ten_sample, exact=True)


@pytest.mark.skipif(not dali_available(), reason="nvidia-dali is not installed")
def test_sample_source_fills_a_short_batch_with_padding_the_loader_drops(jpeg_set):
    from alexrepro.loaders.dali_source import PAD_LABEL, SampleSource, real_count

    loader = make_loader(jpeg_set, "train", DataConfig(workers=1, drop_last=False), 8, train=True, device=CPU,
                         kind="dali", seed=2)
    info = type("Info", (), {"epoch_idx": 0, "iteration": 0, "idx_in_batch": 0})()
    # one image at a time, or runs of 3 read together; asked for out of order; one source for both batches
    for run, order in ((1, range(8)), (3, [5, 0, 7, 2, 1, 6, 3, 4]), (3, [1, 4, 0, 6, 2, 7, 5, 3])):
        source = pickle.loads(pickle.dumps(SampleSource(loader.dataset, loader.plan, loader.spec.data, 3, 0, run=run)))
        for batch, n in ((0, 8), (1, 8), (2, 4)):  # 20 training images in batches of 8: batch 2 holds 4, 4 fillers
            info.iteration = batch
            whole = ShardSource(loader.dataset, loader.plan, loader.spec.data, 3, 0)(info)
            got = {}
            for i in order:
                info.idx_in_batch = i
                got[i] = source(info)
            labels = [int(got[i][3]) for i in range(8)]
            assert labels == [int(v) for v in whole[3]] + [PAD_LABEL] * (8 - n) and real_count(labels) == n
            for i in range(8):  # the batch's own images, then copies of its first
                k = i if i < n else 0
                assert bytes(got[i][0]) == bytes(whole[0][k]) and list(got[i][1]) == list(whole[1][k])
                assert int(got[i][2]) == int(whole[2][k]) and np.array_equal(got[i][4], whole[4][k])
    info.iteration = 3
    with pytest.raises(StopIteration):
        source(info)
    loader.close()
