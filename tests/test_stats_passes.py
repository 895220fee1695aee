"""The statistics' passes: which images a chunk reads, the pool, the progress bar, the defaults, the dtypes.

Every figure is checked against numpy over the images read back through h5py or the public reader.
"""

from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import h5py
import numpy as np
import pytest
from test_stats import PIX, N, _jpeg, make_set, numpy_pca, stored_images

from alexrepro.data import stats as st
from alexrepro.data.manifest import write_manifest
from alexrepro.data.shards import write_shard
from alexrepro.data.stats_file import Stats, read_stats
from alexrepro.errors import UserError


@pytest.mark.parametrize("encoding", ["raw", "jpeg"])
def test_a_chunk_reads_exactly_its_images_whether_they_are_contiguous_or_not(tmp_path, encoding):
    root = make_set(tmp_path, encoding)
    shard = root / "train" / "00002.h5"  # 4 images: the set's images 5..8
    want = stored_images(root)[5:]
    if encoding == "raw":  # the raw pixels straight from the file
        with h5py.File(shard, "r") as f:
            np.testing.assert_array_equal(f["images"][:], want)
    for idx in ([0, 1, 2, 3], [1, 2], [3], [0, 3], [0, 2], [0, 1, 3], [1, 3]):
        got = list(st._images(shard, np.array(idx, dtype=np.int64)))
        assert len(got) == len(idx)
        np.testing.assert_array_equal(np.stack(got), want[idx])


def test_a_damaged_jpeg_in_a_contiguous_chunk_names_its_shard_and_index(tmp_path):
    img = np.full((256, 256, 3), 128, np.uint8)
    shard = tmp_path / "00000.h5"
    write_shard(shard, "jpeg", [_jpeg(img), b"not a jpeg at all", _jpeg(img)], [0, 1, 2],
                [f"src/0_{i}.JPEG" for i in range(3)])
    with pytest.raises(UserError, match=f"{shard} #1"):
        list(st._images(shard, np.arange(3, dtype=np.int64)))


@pytest.fixture
def pools(monkeypatch):
    """lifetime.worker_pool replaced by threads: the calls are recorded, the work is done in this process."""
    calls = []

    @contextmanager
    def threads(workers, died):
        calls.append((workers, died))
        with ThreadPoolExecutor(workers) as pool:
            yield pool

    monkeypatch.setattr(st.lifetime, "worker_pool", threads)
    return calls


def test_one_worker_reads_in_this_process_and_more_read_in_a_pool_of_that_many(tmp_path, pools):
    root = make_set(tmp_path, "raw")
    imgs = stored_images(root)
    x = imgs.reshape(-1, 3).astype(np.int64)
    mean = st.compute_mean(root, progress=False)  # one worker unless asked
    sums = st.pca_sums(root, progress=False)
    st.compute_pca(root, progress=False)
    st.pca_report(root, progress=False)
    assert pools == []
    np.testing.assert_array_equal(mean.mean, (imgs.astype(np.int64).sum(0) / N).astype(np.float32))
    assert sums[0] == N and sums[1] == N * PIX
    assert sums[2].dtype == np.int64 and sums[3].dtype == np.int64  # exact integer sums
    np.testing.assert_array_equal(sums[2], x.sum(0))
    np.testing.assert_array_equal(sums[3], x.T @ x)

    two = st.compute_mean(root, workers=2, progress=False)
    np.testing.assert_array_equal(two.mean, mean.mean)
    assert pools[-1] == (2, "a mean image worker died (killed, or out of memory?); run the command again, "
                            "with fewer --workers if memory is short")
    three = st.pca_sums(root, workers=3, progress=False)
    assert pools[-1][0] == 3 and "a colour PCA worker died" in pools[-1][1]
    assert three[:2] == sums[:2] and three[2].dtype == three[3].dtype == np.int64
    np.testing.assert_array_equal(three[3], sums[3])
    st.compute_pca(root, workers=2, progress=False)
    assert pools[-1][0] == 2
    r = st.pca_report(root, workers=2, progress=False)
    assert pools[-1][0] == 2 and len(pools) == 4
    np.testing.assert_allclose(r["eigval"], numpy_pca(imgs)[0], rtol=1e-9)


@pytest.mark.parametrize("workers", [1, 2])
def test_the_bar_counts_images_under_the_passs_name(tmp_path, capsys, pools, workers):
    root = make_set(tmp_path, "raw")  # shards of 3, 2 and 4 images: one chunk each
    st.compute_mean(root, workers=workers)  # the bar is shown unless turned off
    err = capsys.readouterr().err
    assert "mean image" in err and f"{N}/{N}" in err and "images/s" in err
    st.pca_sums(root, workers=workers, sample=5, seed=2)
    err = capsys.readouterr().err
    assert "colour PCA" in err and "5/5" in err and "images/s" in err
    st.compute_pca(root, workers=workers)
    assert "colour PCA" in capsys.readouterr().err
    st.pca_report(root, workers=workers)
    err = capsys.readouterr().err
    assert "colour PCA" in err and f"{N}/{N}" in err


def test_no_bar_when_it_is_turned_off(tmp_path, capsys):
    root = make_set(tmp_path, "raw")
    st.compute_mean(root, progress=False)
    st.compute_pca(root, progress=False)
    st.pca_report(root, progress=False)
    assert capsys.readouterr().err == ""


def test_a_sample_is_drawn_with_seed_0_unless_another_is_given(tmp_path):
    root = make_set(tmp_path, "raw")
    imgs = stored_images(root)
    for seed in (0, 1):
        chosen = imgs[np.sort(np.random.default_rng(seed).choice(N, size=4, replace=False))]
        x = chosen.reshape(-1, 3).astype(np.int64)
        got = st.pca_sums(root, sample=4, progress=False) if seed == 0 else \
            st.pca_sums(root, sample=4, seed=1, progress=False)
        np.testing.assert_array_equal(got[2], x.sum(0))
        np.testing.assert_array_equal(got[3], x.T @ x)
        r = st.pca_report(root, sample=4, seed=seed, progress=False)
        np.testing.assert_allclose(r["eigval"], numpy_pca(chosen)[0], rtol=1e-9)


def test_a_damaged_stats_file_is_replaced_by_the_mean_pass(tmp_path):
    root = make_set(tmp_path, "raw")
    (root / "stats.h5").write_bytes(b"not an HDF5 file")
    got = st.compute_mean(root, progress=False)
    np.testing.assert_array_equal(read_stats(root).mean, got.mean)
    np.testing.assert_array_equal(got.mean, (stored_images(root).astype(np.int64).sum(0) / N).astype(np.float32))


def test_a_damaged_pca_is_replaced_by_the_pca_pass(tmp_path):
    root = make_set(tmp_path, "raw")
    with h5py.File(root / "stats.h5", "a") as f:
        f["eigval"] = np.zeros(2)  # the wrong shape
        f["eigvec"] = np.zeros((2, 2))
    with pytest.raises(UserError):
        read_stats(root)
    got = st.compute_pca(root, progress=False)
    np.testing.assert_allclose(got.eigval, numpy_pca(stored_images(root))[0], rtol=1e-9)
    np.testing.assert_array_equal(read_stats(root, need_pca=True).eigval, got.eigval)


def test_an_out_that_cannot_be_written_is_named_out(tmp_path, monkeypatch):
    import os

    root = make_set(tmp_path, "raw")
    monkeypatch.setattr(os, "access", lambda *a, **k: False)  # as for a read-only folder (root may write anyway)
    with pytest.raises(UserError, match=f"^cannot write to OUT {root} "):
        st.compute_pca(root, progress=False)


def _set_of(root, counts):
    rng = np.random.default_rng(5)
    entries = []
    for k, n in enumerate(counts):
        rel = f"train/{k:05d}.h5"
        write_shard(root / rel, "raw", rng.integers(0, 256, (n, 256, 256, 3), dtype=np.uint8), [0] * n,
                    [f"src/{k}_{i}.JPEG" for i in range(n)])
        entries.append({"file": rel, "count": n})
    write_manifest(root, {"splits": {"train": {"count": sum(counts), "shards": entries}},
                          "classes": [{"index": 0, "wnid": "n00000000", "name": "c"}], "encoding": "raw",
                          "source": "test", "skipped": 0})
    return root


def test_a_set_of_one_training_image_has_that_image_as_its_mean(tmp_path):
    root = _set_of(tmp_path, [1])
    got = st.compute_mean(root, progress=False)
    np.testing.assert_array_equal(got.mean, stored_images(root)[0].astype(np.float32))
    assert got.pixel_count == PIX


def test_a_set_without_training_images_says_to_prepare_it_again(tmp_path):
    root = _set_of(tmp_path, [])
    with pytest.raises(UserError, match=f"^{root} has no training images; prepare it again with "
                                        f"alexrepro prep SRC {root}$"):
        st.compute_mean(root, progress=False)


def test_float32_eigenvalues_are_scaled_in_float64():
    lam32 = np.array([1234.567, 89.01234, 3.456789], dtype=np.float32)
    lam = lam32.astype(np.float64)
    np.testing.assert_array_equal(st.eigval_on_unit_scale(lam32), lam / 255.0**2)
    stats = Stats(mean=np.zeros((256, 256, 3), np.float32), channel_mean=np.zeros(3), pixel_count=1,
                  eigval=lam32, eigvec=np.eye(3))
    np.testing.assert_array_equal(st.lighting_magnitudes(stats, "unit"), lam / 255.0)
    np.testing.assert_array_equal(st.lighting_magnitudes(stats, "cuda-convnet"), np.sqrt(lam))


def test_a_shard_whose_images_do_not_read_is_one_line_naming_it(tmp_path):
    root = make_set(tmp_path, "raw")
    shard = root / "train" / "00002.h5"
    with h5py.File(shard, "a") as f:
        del f["images"]  # the structure is damaged: the images dataset is gone
    with pytest.raises(UserError, match=f"^shard {shard} is damaged .*alexrepro info {root} --verify"):
        list(st._images(shard, np.arange(4, dtype=np.int64)))
