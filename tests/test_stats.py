"""Colour statistics: the mean image and the RGB PCA against numpy over the stored pixels."""

import io
import json
import weakref

import numpy as np
import pytest
from PIL import Image

from alexrepro.cli import main
from alexrepro.data import stats as st
from alexrepro.data.manifest import write_manifest
from alexrepro.data.shards import write_shard
from alexrepro.data.split import open_split
from alexrepro.data.stats_file import Stats, read_stats, write_stats
from alexrepro.errors import UserError

SHARDS = (3, 2, 4)  # images per shard: 9 training images in 3 shards
N = sum(SHARDS)
PIX = 256 * 256


def _images(rng, n, size=256):
    """Colour images with correlated channels (a shared grey level plus per-channel tint and noise)."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        grey = 255 * (0.5 + 0.4 * np.sin(2 * np.pi * (rng.uniform(0.5, 2) * xx + rng.uniform() * yy)))
        tint = rng.uniform(-40, 40, size=3)
        noise = rng.normal(0, 12, size=(size, size, 3))
        out.append(np.clip(grey[..., None] * rng.uniform(0.6, 1.0, 3) + tint + noise, 0, 255).astype(np.uint8))
    return out


def _jpeg(img):
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def make_set(root, encoding, seed=0, with_stats=True, sizes=None):
    """A prepared set of len(SHARDS) training shards written with the format's own writers."""
    rng = np.random.default_rng(seed)
    entries = []
    for k, n in enumerate(SHARDS):
        imgs = _images(rng, n, size=(sizes or {}).get(k, 256))
        rel = f"train/{k:05d}.h5"
        data = [_jpeg(im) for im in imgs] if encoding == "jpeg" else np.stack(imgs)
        write_shard(root / rel, encoding, data, list(range(n)), [f"src/{k}_{i}.JPEG" for i in range(n)])
        entries.append({"file": rel, "count": n})
    classes = [{"index": i, "wnid": f"n{i:08d}", "name": f"class {i}"} for i in range(4)]
    write_manifest(root, {"splits": {"train": {"count": N, "shards": entries}}, "classes": classes,
                          "encoding": encoding, "source": "test", "skipped": 0})
    if with_stats:
        write_stats(root, Stats(mean=np.zeros((256, 256, 3), np.float32), channel_mean=np.zeros(3), pixel_count=0))
    return root


def stored_images(root):
    """Every stored training image, decoded through the public reader."""
    ds = open_split(root, "train")
    return np.stack([ds[i][0] for i in range(len(ds))])


def numpy_pca(pixels):
    """Reference: unbiased covariance C = Σ(x−μ)(x−μ)ᵀ / (n−1) of the RGB rows, eigh, descending."""
    x = pixels.reshape(-1, 3).astype(np.float64)
    d = x - x.mean(axis=0)
    cov = d.T @ d / (len(x) - 1)
    val, vec = np.linalg.eigh(cov)
    return val[::-1], vec[:, ::-1], cov


@pytest.fixture(params=["raw", "jpeg"])
def prepared(request, tmp_path):
    return make_set(tmp_path / request.param, request.param)


def test_mean_image_channel_mean_and_pixel_count(prepared):
    imgs = stored_images(prepared)
    result = st.compute_mean(prepared, progress=False)
    expect = imgs.astype(np.float64).mean(axis=0)  # §2: mean over the training set of each pixel
    assert result.mean.dtype == np.float32 and result.mean.shape == (256, 256, 3)
    np.testing.assert_allclose(result.mean, expect, rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(result.channel_mean, imgs.reshape(-1, 3).mean(axis=0), rtol=1e-12)
    assert result.pixel_count == N * PIX
    back = read_stats(prepared)
    np.testing.assert_array_equal(back.mean, result.mean)
    assert back.pixel_count == N * PIX and back.eigval is None


def test_compute_mean_keeps_a_stored_pca(tmp_path):
    root = make_set(tmp_path, "raw")
    val, vec = np.array([3.0, 2.0, 1.0]), np.eye(3)
    write_stats(root, Stats(np.zeros((256, 256, 3), np.float32), np.zeros(3), 0, eigval=val, eigvec=vec))
    st.compute_mean(root, progress=False)
    back = read_stats(root, need_pca=True)
    np.testing.assert_array_equal(back.eigval, val)
    np.testing.assert_array_equal(back.eigvec, vec)
    assert back.pixel_count == N * PIX


def test_pca_matches_numpy_up_to_sign(prepared):
    imgs = stored_images(prepared)
    mean_before = st.compute_mean(prepared, progress=False).mean
    result = st.compute_pca(prepared, progress=False)
    val, vec, _ = numpy_pca(imgs)
    np.testing.assert_allclose(result.eigval, val, rtol=1e-9)
    # each column equals numpy's up to sign: |p_ours · p_numpy| = 1
    np.testing.assert_allclose(np.abs(np.sum(result.eigvec * vec, axis=0)), 1.0, atol=1e-9)
    back = read_stats(prepared, need_pca=True)
    assert back.scale == "0-255"
    np.testing.assert_array_equal(back.eigval, result.eigval)
    np.testing.assert_array_equal(back.eigvec, result.eigvec)
    np.testing.assert_array_equal(back.mean, mean_before)  # the PCA keeps prep's mean image


def _check_convention(val, vec, cov):
    assert np.all(np.diff(val) <= 0), "eigenvalues must be descending"
    np.testing.assert_allclose(vec.T @ vec, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(cov @ vec, vec * val, atol=1e-9 * max(1.0, abs(val).max()))
    for j in range(3):
        col = vec[:, j]
        assert col[np.argmax(np.abs(col))] > 0, "largest-magnitude component must be positive"


def test_eigen_rgb_descending_and_sign_convention():
    rng = np.random.default_rng(5)
    for _ in range(50):
        a = rng.normal(size=(3, 3))
        cov = a @ a.T
        val, vec = st.eigen_rgb(cov)
        _check_convention(val, vec, cov)
        # the convention is a function of the matrix alone: flipping numpy's signs changes nothing
        val2, vec2 = st.eigen_rgb(cov.copy())
        np.testing.assert_array_equal(vec, vec2)
    with pytest.raises(ValueError):
        st.eigen_rgb(np.eye(4))


def test_stored_pca_holds_the_convention(tmp_path):
    root = make_set(tmp_path, "raw")
    result = st.compute_pca(root, progress=False)
    _check_convention(result.eigval, result.eigvec, numpy_pca(stored_images(root))[2])


def test_covariance_from_sums_is_the_unbiased_covariance():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(1000, 3)).astype(np.float64)
    mu = x.mean(axis=0)
    expect = sum(np.outer(r - mu, r - mu) for r in x) / (len(x) - 1)
    got = st.covariance_from_sums(len(x), x.sum(axis=0), x.T @ x)
    np.testing.assert_allclose(got, expect, rtol=1e-10)
    with pytest.raises(ValueError):
        st.covariance_from_sums(1, x[0], np.outer(x[0], x[0]))


def test_sample_is_deterministic_and_uses_that_many_images(tmp_path):
    root = make_set(tmp_path, "raw")
    imgs = stored_images(root)
    idx = st.sample_indices(N, 4, seed=1)
    assert len(idx) == 4 and len(set(idx.tolist())) == 4 and np.all(np.diff(idx) > 0) and idx.max() < N
    np.testing.assert_array_equal(idx, st.sample_indices(N, 4, seed=1))
    assert any(not np.array_equal(idx, st.sample_indices(N, 4, seed=s)) for s in range(2, 6))
    n, pixels, s, ss = st.pca_sums(root, sample=4, seed=1, progress=False)
    assert n == 4 and pixels == 4 * PIX
    x = imgs[idx].reshape(-1, 3).astype(np.float64)  # exactly the chosen images' pixels
    np.testing.assert_array_equal(s, x.sum(axis=0))
    np.testing.assert_array_equal(ss, x.T @ x)
    a = st.compute_pca(root, sample=4, seed=1, progress=False)
    b = st.compute_pca(root, sample=4, seed=1, progress=False)
    np.testing.assert_array_equal(a.eigval, b.eigval)
    np.testing.assert_array_equal(a.eigvec, b.eigvec)
    np.testing.assert_allclose(a.eigval, numpy_pca(imgs[idx])[0], rtol=1e-9)
    assert st.pca_sums(root, sample=100, progress=False)[0] == N  # more than there are: all of them
    with pytest.raises(UserError, match="--sample"):
        st.compute_pca(root, sample=0, progress=False)


def test_two_workers_give_the_same_result(tmp_path, monkeypatch):
    root = make_set(tmp_path, "jpeg")
    monkeypatch.setattr(st, "CHUNK", 2)  # more tasks than workers, finishing out of order
    one = st.pca_sums(root, workers=1, progress=False)
    two = st.pca_sums(root, workers=2, progress=False)
    assert one[:2] == two[:2]
    np.testing.assert_array_equal(one[2], two[2])
    np.testing.assert_array_equal(one[3], two[3])
    m1 = st.compute_mean(root, workers=1, progress=False)
    m2 = st.compute_mean(root, workers=2, progress=False)
    np.testing.assert_array_equal(m1.mean, m2.mean)
    np.testing.assert_array_equal(m1.channel_mean, m2.channel_mean)


def _many_chunk_set(root, shards=4, per_shard=10):
    """A raw set of shards × per_shard training images (so CHUNK = 1 makes many pool tasks)."""
    rng = np.random.default_rng(3)
    entries = []
    for k in range(shards):
        rel = f"train/{k:05d}.h5"
        write_shard(root / rel, "raw", np.stack(_images(rng, per_shard)), [0] * per_shard,
                    [f"src/{k}_{i}.JPEG" for i in range(per_shard)])
        entries.append({"file": rel, "count": per_shard})
    write_manifest(root, {"splits": {"train": {"count": shards * per_shard, "shards": entries}},
                          "classes": [{"index": 0, "wnid": "n00000000", "name": "c"}], "encoding": "raw",
                          "source": "test", "skipped": 0})
    return root


@pytest.mark.parametrize("workers", [1, 2])
def test_partial_sums_are_reduced_as_they_arrive(tmp_path, monkeypatch, workers):
    root = _many_chunk_set(tmp_path)
    imgs = stored_images(root)
    before = st.compute_mean(root, workers=1, progress=False)  # CHUNK = 64: one task per shard
    before_pca = st.pca_sums(root, workers=1, progress=False)
    pixel_sum = imgs.astype(np.int64).sum(axis=0)  # the exact sum, as the old list-then-add code had it
    np.testing.assert_array_equal(before.mean, (pixel_sum / len(imgs)).astype(np.float32))

    monkeypatch.setattr(st, "CHUNK", 1)  # 40 tasks, each returning a 1.5 MiB partial sum
    live, peak, real_run = [], [0], st._run

    def spy(fn, tasks, total, workers, progress, label, reduce):
        assert len(tasks) == len(imgs)

        def counting(part):  # how many partial results the parent still holds when one arrives
            live.append(weakref.ref(part[1]))  # numpy arrays hold no cycles: refcounts free them
            peak[0] = max(peak[0], sum(r() is not None for r in live))
            reduce(part)

        return real_run(fn, tasks, total, workers, progress, label, counting)

    monkeypatch.setattr(st, "_run", spy)
    after = st.compute_mean(root, workers=workers, progress=False)
    bound = 2 if workers == 1 else st.IN_FLIGHT * workers + 1
    assert len(live) == len(imgs) and 1 <= peak[0] <= bound < len(imgs)
    for field in ("mean", "channel_mean"):
        assert getattr(after, field).tobytes() == getattr(before, field).tobytes()  # bitwise
    assert after.pixel_count == before.pixel_count == len(imgs) * PIX

    live.clear()
    peak[0] = 0
    after_pca = st.pca_sums(root, workers=workers, progress=False)
    assert len(live) == len(imgs) and peak[0] <= bound
    assert after_pca[:2] == before_pca[:2]
    np.testing.assert_array_equal(after_pca[2], before_pca[2])
    np.testing.assert_array_equal(after_pca[3], before_pca[3])


def test_unit_scale_and_lighting_magnitudes(tmp_path):
    root = make_set(tmp_path, "raw")
    stats = st.compute_pca(root, progress=False)
    lam = stats.eigval
    np.testing.assert_allclose(st.eigval_on_unit_scale(lam), lam / 255**2, rtol=1e-15)
    # the same PCA done on [0, 1] pixels gives λ/255²
    unit_val, unit_vec, _ = numpy_pca(stored_images(root) / 255.0)
    np.testing.assert_allclose(st.eigval_on_unit_scale(lam), unit_val, rtol=1e-9)
    np.testing.assert_allclose(np.abs(np.sum(stats.eigvec * unit_vec, axis=0)), 1.0, atol=1e-9)  # same axes
    alpha = np.array([0.1, -0.05, 0.2])
    # §4.1 on [0, 1]: shift = [p1 p2 p3][α1λ1, α2λ2, α3λ3]ᵀ with the [0, 1] eigenvalues, ×255 for 0–255
    expect = 255 * (stats.eigvec @ (alpha * unit_val))
    np.testing.assert_allclose(stats.eigvec @ (alpha * st.lighting_magnitudes(stats, "unit")), expect, rtol=1e-9)
    np.testing.assert_allclose(st.lighting_magnitudes(stats, "unit"), lam / 255, rtol=1e-15)
    # Krizhevsky's cuda-convnet: √λ on 0–255
    np.testing.assert_allclose(st.lighting_magnitudes(stats, "cuda-convnet"), np.sqrt(lam), rtol=1e-15)
    with pytest.raises(ValueError, match="lighting scale"):
        st.lighting_magnitudes(stats, "0-1")
    with pytest.raises(UserError, match="alexrepro pca"):
        st.lighting_magnitudes(read_stats(make_set(tmp_path / "b", "raw")), "unit")


def test_published_imagenet_reference_values():
    # fb.resnet.torch's [0, 1] ImageNet PCA (docs/FAITHFULNESS.md G7): 0.2175, 0.0188, 0.0045
    np.testing.assert_array_equal(st.IMAGENET_EIGVAL_UNIT, [0.2175, 0.0188, 0.0045])
    # columns are eigenvectors: orthonormal to the 4 printed decimals; column 1 is the grey axis
    np.testing.assert_allclose(st.IMAGENET_EIGVEC.T @ st.IMAGENET_EIGVEC, np.eye(3), atol=2e-4)
    np.testing.assert_allclose(np.abs(st.IMAGENET_EIGVEC[:, 0]), 1 / np.sqrt(3), atol=0.01)


def test_bad_images_and_missing_sets_are_user_errors(tmp_path):
    root = make_set(tmp_path / "small", "jpeg", sizes={1: 128})
    with pytest.raises(UserError, match="128, 128, 3"):
        st.compute_mean(root, progress=False)
    with pytest.raises(UserError, match="alexrepro prep"):
        st.compute_pca(tmp_path / "nothing", progress=False)
    with pytest.raises(UserError, match="--workers"):
        st.compute_mean(make_set(tmp_path / "w", "raw"), workers=0, progress=False)


def _cli(args, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    captured = capsys.readouterr()
    return e.value.code, captured.out, captured.err


def test_cli_pca_without_stats_exits_2(tmp_path, capsys):
    root = make_set(tmp_path, "raw", with_stats=False)
    code, out, err = _cli(["pca", str(root)], capsys)
    assert code == 2 and out == ""
    assert "stats.h5" in err and "alexrepro prep" in err and "Traceback" not in err


def test_cli_pca_json_and_table(tmp_path, capsys):
    root = make_set(tmp_path, "raw")
    code, out, _ = _cli(["pca", str(root), "--json", "--sample", "5", "--seed", "3"], capsys)
    assert code in (0, None)
    obj = json.loads(out)
    assert out.count("\n") == 1 and obj["images"] == 5 and obj["pixels"] == 5 * PIX
    stored = read_stats(root, need_pca=True)
    np.testing.assert_allclose(obj["eigval"], stored.eigval, rtol=1e-12)
    np.testing.assert_allclose(obj["eigvec"], stored.eigvec, rtol=1e-12)
    np.testing.assert_allclose(obj["eigval_unit"], stored.eigval / 255**2, rtol=1e-12)
    assert obj["imagenet_reference"]["eigval_unit"] == [0.2175, 0.0188, 0.0045]
    code, out, err = _cli(["pca", str(root)], capsys)
    assert code in (0, None) and out == "" and "ImageNet" in err
    code, _, err = _cli(["pca", str(root), "--sample", "0"], capsys)
    assert code == 2 and "--sample" in err


def test_bench_pca_agrees_with_numpy(tmp_path):
    from alexrepro.bench.pca import bench_pca

    result = bench_pca(make_set(tmp_path, "raw"), workers=1, max_images=5)
    assert result["images"] == 5 and result["eigval_max_rel_diff"] < 1e-9
    assert result["ours_images_per_s"] > 0 and result["numpy_images_per_s"] > 0


def test_lighting_magnitudes_for_imagenet():
    # §4.1 on [0, 1] pixels (docs/FAITHFULNESS.md C3): with the eigenvalues 0.2175, 0.0188, 0.0045 a one-σ draw
    # (α = 0.1) shifts pixels by about 0.02 on [0, 1], i.e. ≈ 5.5 on 0–255; √λ on 0–255 (cuda-convnet) gives a
    # shift about twice as large.
    lam_255 = np.array([0.2175, 0.0188, 0.0045]) * 255**2
    stats = Stats(mean=np.zeros((1, 1, 3)), channel_mean=np.zeros(3), pixel_count=1, eigval=lam_255,
                  eigvec=np.eye(3))
    unit = 0.1 * st.lighting_magnitudes(stats, "unit")
    assert unit[0] == pytest.approx(0.1 * 0.2175 * 255, rel=1e-12) and unit[0] == pytest.approx(5.5, abs=0.1)
    ratio = 0.1 * st.lighting_magnitudes(stats, "cuda-convnet")[0] / unit[0]
    assert 1.8 < ratio < 2.4


# ------------------------------------------------------------------------------------------ the maths' edges
def test_covariance_of_imagenet_sized_sums_is_taken_in_float64():
    # ImageNet's sums: 8.4e10 pixels, Σx up to 2e13 per channel: Σx·Σxᵀ is 4e26, far past int64.
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(1000, 3)).astype(np.float64)
    n, scale = 84_000_000_000, 84_000_000  # the same pixels repeated: the same covariance (nearly)
    s = (x.sum(0) * scale).astype(np.int64)
    ss = (x.T @ x * scale).astype(np.int64)
    by_hand = (ss.astype(np.float64) - np.outer(s.astype(np.float64), s.astype(np.float64)) / n) / (n - 1)  # unbiased, as np.cov
    np.testing.assert_allclose(st.covariance_from_sums(n, s, ss), by_hand, rtol=1e-12)
    np.testing.assert_allclose(st.covariance_from_sums(2, [1, 2, 3], [[1, 2, 3], [2, 4, 6], [3, 6, 9]]),
                               np.cov(np.array([[1, 2, 3], [0, 0, 0]]).T), atol=1e-12)
    with pytest.raises(ValueError, match="^a covariance needs at least 2 samples, got 1$"):
        st.covariance_from_sums(1, [1, 2, 3], np.eye(3))
    with pytest.raises(ValueError, match=r"^expected a 3×3 covariance, got shape \(2, 2\)$"):
        st.eigen_rgb(np.eye(2))


def test_lighting_magnitudes_clip_rounding_below_zero_and_take_any_eigenvalue_size():
    stats = Stats(mean=np.zeros((256, 256, 3), np.float32), channel_mean=np.zeros(3), pixel_count=1,
                  eigval=np.array([0.25, 1e-3, -1e-12]), eigvec=np.eye(3))
    np.testing.assert_array_equal(st.lighting_magnitudes(stats, "cuda-convnet"), [0.5, np.sqrt(1e-3), 0.0])
    np.testing.assert_allclose(st.lighting_magnitudes(stats, "unit"), [0.25 / 255, 1e-3 / 255, 0.0])
    with pytest.raises(ValueError, match=r"^lighting scale must be one of \('unit', 'cuda-convnet'\), got 'sqrt'$"):
        st.lighting_magnitudes(stats, "sqrt")
    stats.scale = "0-1"
    with pytest.raises(ValueError, match="^statistics on scale '0-1'; expected '0-255'$"):
        st.lighting_magnitudes(stats, "unit")
    stats.eigval = None
    with pytest.raises(UserError, match="^the colour statistics have no PCA; run: alexrepro pca OUT$"):
        st.lighting_magnitudes(stats, "unit")


def test_a_sample_of_one_image_is_allowed_and_fewer_is_refused():
    assert st.sample_indices(10, 1, seed=0).shape == (1,)
    with pytest.raises(UserError, match="^--sample must be a positive number of images, got 0$"):
        st.sample_indices(10, 0, seed=0)


def test_the_pca_report_is_the_stored_pca_beside_the_published_one(tmp_path, monkeypatch):
    root = make_set(tmp_path / "raw", "raw")
    calls = []  # a clock at 100 s for the first reading and 102.12345 s after: the pass "took" 2.12345 s
    monkeypatch.setattr(st, "time", __import__("types").SimpleNamespace(
        perf_counter=lambda: 100.0 if not calls.append(1) and len(calls) == 1 else 102.12345))
    r = st.pca_report(root, progress=False)
    stored = read_stats(root)
    assert (r["out"], r["images"], r["pixels"], r["sample"], r["seed"]) == (str(root), N, N * PIX, None, 0)
    assert r["seconds"] == 2.123 and r["scale"] == "0-255"
    np.testing.assert_array_equal(r["eigval"], stored.eigval)
    np.testing.assert_array_equal(r["eigval_unit"], stored.eigval / 255**2)
    np.testing.assert_array_equal(r["lighting_magnitudes"]["unit"], stored.eigval / 255)
    np.testing.assert_array_equal(r["lighting_magnitudes"]["cuda-convnet"], np.sqrt(stored.eigval))
    cosines = [abs(sum(stored.eigvec[i, j] * st.IMAGENET_EIGVEC[i, j] for i in range(3))) for j in range(3)]
    np.testing.assert_allclose(r["alignment_with_reference"], cosines, rtol=1e-12)
    sampled = st.pca_report(root, sample=4, progress=False, workers=1)  # the seed is 0 unless given
    assert sampled["images"] == 4 and sampled["seed"] == 0
    np.testing.assert_array_equal(sampled["eigval"], st.compute_pca(root, sample=4, seed=0, progress=False).eigval)
    assert not np.array_equal(sampled["eigval"], st.compute_pca(root, sample=4, seed=1, progress=False).eigval)
    np.testing.assert_array_equal(st.compute_pca(root, sample=4, progress=False).eigval, sampled["eigval"])


def test_a_pca_stopped_by_a_signal_says_stats_h5_is_as_it_was(tmp_path, monkeypatch):
    import signal

    from alexrepro.process.signals import Stopped

    root = make_set(tmp_path / "raw", "raw")

    def stopped(*a, **k):
        raise Stopped(signal.SIGTERM, "stopped")

    monkeypatch.setattr(st, "pca_sums", stopped)
    with pytest.raises(Stopped) as e:
        st.compute_pca(root, progress=False)
    assert e.value.signum == signal.SIGTERM
    assert str(e.value).startswith(f"stopped by SIGTERM: {root / 'stats.h5'} is as it was (no PCA written); "
                                   "run it again: ")


def test_statistics_that_cannot_be_written_say_what_to_do(tmp_path, monkeypatch):
    import errno

    from alexrepro.errors import WorkFailed

    root = make_set(tmp_path / "raw", "raw")

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(st, "write_stats", full)
    with pytest.raises(WorkFailed, match=r"stats\.h5.*free space on OUT's disk \(or fix its permissions\), then run the "
                                         "same prep again: it resumes with the mean image"):
        st.compute_mean(root, progress=False)
    with pytest.raises(WorkFailed, match=rf"stats\.h5.*free space on OUT's disk \(or fix its permissions\), then run "
                                         rf"alexrepro pca {root} again"):
        st.compute_pca(root, progress=False)


def test_a_pca_into_an_out_another_process_holds_is_refused_naming_out(tmp_path):
    from alexrepro.process.locking import lock_folder

    root = make_set(tmp_path / "raw", "raw")
    with lock_folder(root, "OUT"), pytest.raises(UserError, match=f"^OUT {root} is in use by another alexrepro"):
        st.compute_pca(root, progress=False)
