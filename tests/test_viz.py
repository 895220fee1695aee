"""alexrepro viz: real PNGs of the planned size, Figure 3's tower rows, curves, top-5 bars, fc7 neighbours."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_run import run_cli
from PIL import Image

from alexrepro.data.prepared import IMAGE_SIZE, Stats, write_manifest, write_shard, write_stats
from alexrepro.figures.curves import read_epoch_records
from alexrepro.figures.filters import filter_mosaic, grid_shape, normalise_kernel
from alexrepro.figures.neighbors import nearest_neighbors
from alexrepro.nets.alexnet import build_model
from alexrepro.recipe_reader import load_recipe
from alexrepro.training.checkpoint import Checkpoint, model_from_checkpoint, read_checkpoint, save_checkpoint

N_CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS = 6, 2, 1
DPI = 100  # the dpi alexrepro.figures sets on every figure


# --------------------------------------------------------------------------------------------- helpers
def class_image(label: int, i: int) -> np.ndarray:
    """A 256×256 image: a colour per class plus per-image noise and a block (no two alike)."""
    rng = np.random.default_rng(100 * label + i)
    base = np.array([(60 * label) % 256, (110 * label + 40) % 256, (200 - 30 * label) % 256], dtype=np.float64)
    img = base + rng.normal(0, 30, (IMAGE_SIZE, IMAGE_SIZE, 3))
    img[20 * i : 20 * i + 60, 30:90] = 255 - base
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def make_set(out: Path) -> Path:
    """A prepared set (raw shards) with N_CLASSES classes: train and val, mean image in stats.h5."""
    splits, train_images = {}, []
    for split, per in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)):
        labels = [c for c in range(N_CLASSES) for _ in range(per)]
        images = [class_image(c, j + (0 if split == "train" else 10)) for c in range(N_CLASSES) for j in range(per)]
        train_images += images if split == "train" else []
        write_shard(out / f"{split}/00000.h5", "raw", np.stack(images), labels, [f"{split}/{k}" for k in range(len(labels))])
        splits[split] = {"count": len(labels), "skipped": 0, "shards": [{"file": f"{split}/00000.h5", "count": len(labels)}]}
    classes = [{"index": i, "wnid": f"n{i:08d}", "name": f"thing{i}, other name"} for i in range(N_CLASSES)]
    write_manifest(out, {"splits": splits, "classes": classes, "encoding": "raw", "source": "test"})
    stack = np.stack(train_images).astype(np.float64)
    write_stats(out, Stats(mean=stack.mean(0).astype(np.float32), channel_mean=stack.mean((0, 1, 2)),
                           pixel_count=stack[..., 0].size))
    return out


def make_run(run: Path, out: Path, seed: int = 0, conv1: torch.Tensor | None = None) -> Path:
    """RUN/checkpoints/best.pt in the checkpoint format, for the tiny recipe (He-initialised so fc7 varies)."""
    from alexrepro.data.prepared import read_manifest, read_stats

    recipe = load_recipe("tiny", [f"model.num_classes={N_CLASSES}"])
    torch.manual_seed(seed)
    model = build_model(recipe.model, recipe.data.crop_size)
    for name, p in model.named_parameters():
        if name.endswith("weight"):
            torch.nn.init.kaiming_normal_(p)
        else:
            torch.nn.init.zeros_(p)
    state = model.state_dict()
    if conv1 is not None:
        state["conv1.weight"] = conv1
    st = read_stats(out)
    saved = Checkpoint(model=state, recipe=recipe, epoch=1, step=1, classes=read_manifest(out).class_list(),
                       stats={"mean": st.mean.astype(np.float16), "channel_mean": st.channel_mean})
    save_checkpoint(run / "checkpoints" / "best.pt", saved)
    return run


def png_size(path: str | Path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_set(tmp_path_factory.mktemp("viz") / "set")


# --------------------------------------------------------------------------------------------- filters
def test_grid_shape_gives_figure_3s_rows():
    assert grid_shape(48) == (4, 12)  # 96 kernels, two towers: 8 rows of 12 in all
    assert grid_shape(12) == (2, 6)
    assert grid_shape(48, cols=16) == (3, 16)


def test_normalise_kernel_is_per_kernel_min_max():
    k = np.array([[[-2.0, 0.0], [1.0, 2.0]]] * 3)
    k[1] *= 0.5
    lo, hi = -2.0, 2.0  # the kernel's own extremes, over all channels
    assert np.allclose(normalise_kernel(k), (k - lo) / (hi - lo))
    assert np.all(normalise_kernel(np.full((3, 2, 2), 7.0)) == 0.5)


def test_filter_mosaic_puts_tower_1_in_the_top_rows():
    n, k, scale, pad, gap = 96, 11, 4, 2, 8
    w = np.zeros((n, 3, k, k))
    w[:48, 0] = 1.0  # tower 1 (the first half, grouped layout): pure red
    w[48:, 2] = 1.0  # tower 2: pure blue
    w[13] = 0.0
    w[13, 1] = 1.0  # tower 1's 14th kernel green: row 2, column 2
    img = filter_mosaic(w, towers=2, scale=scale, pad=pad, gap=gap)
    cell = k * scale
    block_h = 4 * (cell + pad) + pad  # four rows of kernels per tower
    assert img.shape == (2 * block_h + gap, 12 * (cell + pad) + pad, 3)
    for tower, colour in ((0, (255, 0, 0)), (1, (0, 0, 255))):
        for r in range(4):
            for c in range(12):
                top, left = tower * (block_h + gap) + pad + r * (cell + pad), pad + c * (cell + pad)
                want = (0, 255, 0) if (tower, r, c) == (0, 1, 1) else colour
                patch = img[top : top + cell, left : left + cell]
                assert (patch == want).all(), (tower, r, c)
    assert (img[block_h : block_h + gap] == 255).all()  # the white gap between the towers


def test_viz_filters_cli_writes_the_grid(data, tmp_path, capsys):
    conv1 = torch.zeros(24, 3, 11, 11)  # the tiny net: 24 kernels, 12 per tower
    conv1[:12, 0] = 1.0
    conv1[12:, 2] = 1.0
    run = make_run(tmp_path / "run", data, conv1=conv1)
    code, out, _ = run_cli(["viz", "filters", str(run), "--json"], capsys)
    assert code == 0
    res = json.loads(out)
    assert res["path"] == str(run / "figures" / "filters.png") and res["grid"] == [4, 6]
    block_h = 2 * (44 + 2) + 2
    assert png_size(res["path"]) == (6 * (44 + 2) + 2, 2 * block_h + 8)
    img = np.asarray(Image.open(res["path"]).convert("RGB"))
    assert tuple(img[2 + 5, 2 + 5]) == (255, 0, 0)  # first kernel: tower 1, top left
    assert tuple(img[block_h + 8 + 2 + 5, 2 + 5]) == (0, 0, 255)  # tower 2 starts below the gap
    # a checkpoint path works too, and --out is honoured
    code, out, _ = run_cli(["viz", "filters", str(run / "checkpoints" / "best.pt"), "--out",
                            str(tmp_path / "f.png"), "--json"], capsys)
    assert code == 0 and json.loads(out)["path"] == str(tmp_path / "f.png") and (tmp_path / "f.png").is_file()


@pytest.mark.parametrize("make", ["missing", "empty_run", "foreign"])
def test_bad_runs_are_user_errors(tmp_path, capsys, make):
    target = tmp_path / "x"
    if make == "empty_run":
        (target / "checkpoints").mkdir(parents=True)
    elif make == "foreign":
        target = tmp_path / "x.pt"
        torch.save({"weights": torch.zeros(3)}, target)
    code, out, err = run_cli(["viz", "filters", str(target)], capsys)
    assert code == 2 and out == "" and "error:" in err and "Traceback" not in err


# --------------------------------------------------------------------------------------------- curves
def write_metrics(run: Path, epochs: int, lr_drop: int) -> None:
    run.mkdir(parents=True, exist_ok=True)
    lines = []
    for e in range(epochs):
        lines.append({"kind": "step", "epoch": e, "step": 10 * e + 5, "lr": 0.01, "train_loss": 9.0})
        lines.append({"kind": "epoch", "epoch": e, "step": 10 * e + 10, "lr": 0.01 if e < lr_drop else 0.001,
                      "train_loss": 6.9 - 0.5 * e, "train_top1_error": 0.9 - 0.05 * e, "train_top5_error": 0.7 - 0.05 * e,
                      "val_top1_error": 0.92 - 0.04 * e, "val_top5_error": 0.75 - 0.04 * e})
    lines.insert(1, {**lines[1], "train_loss": 99.0})  # epoch 0 logged, then re-logged after a resume: the later wins
    text = "".join(json.dumps(x) + "\n" for x in lines) + '{"kind": "epo'  # and a torn last line
    (run / "metrics.jsonl").write_text(text)


def test_read_epoch_records_keeps_the_last_line_per_epoch(tmp_path):
    write_metrics(tmp_path / "a", 3, 2)
    recs = read_epoch_records(tmp_path / "a")
    assert [r["epoch"] for r in recs] == [0, 1, 2]
    assert recs[0]["train_loss"] == 6.9


def test_viz_curves_overlays_two_runs(tmp_path, capsys):
    write_metrics(tmp_path / "paper", 4, 2)
    write_metrics(tmp_path / "no-lrn", 3, 9)
    code, out, _ = run_cli(["viz", "curves", str(tmp_path / "paper"), str(tmp_path / "no-lrn"), "--json"], capsys)
    assert code == 0
    res = json.loads(out)
    assert res["path"] == str(tmp_path / "paper" / "figures" / "curves.png")
    assert [(r["label"], r["epochs"]) for r in res["runs"]] == [("paper", 4), ("no-lrn", 3)]
    assert png_size(res["path"]) == (12 * DPI, 8 * DPI)  # figsize 12 × 8 in


def test_viz_curves_without_metrics_is_a_user_error(tmp_path, capsys):
    (tmp_path / "r").mkdir()
    code, _, err = run_cli(["viz", "curves", str(tmp_path / "r")], capsys)
    assert code == 2 and "metrics.jsonl" in err


# --------------------------------------------------------------------------------------------- neighbours
def brute_force(index: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    out_i, out_d = [], []
    for q in queries:
        dists = [(float(np.sqrt(np.sum((row - q) ** 2))), i) for i, row in enumerate(index)]
        dists.sort()
        out_i.append([i for _, i in dists[:k]])
        out_d.append([d for d, _ in dists[:k]])
    return np.array(out_i), np.array(out_d)


@pytest.mark.parametrize("block", [3, 8192])
def test_nearest_neighbors_matches_a_brute_force_loop(block):
    rng = np.random.default_rng(0)
    index = rng.normal(size=(40, 16)).astype(np.float32)
    queries = np.concatenate([rng.normal(size=(4, 16)), index[[7, 31]]]).astype(np.float32)
    idx, dist = nearest_neighbors(index, queries, k=5, block=block)
    want_i, want_d = brute_force(index.astype(np.float64), queries.astype(np.float64), 5)
    assert (idx == want_i).all()
    assert np.allclose(dist, want_d, rtol=1e-9, atol=1e-9)
    assert idx[4, 0] == 7 and dist[4, 0] == 0.0 and idx[5, 0] == 31 and dist[5, 0] == 0.0  # itself, at 0


# --------------------------------------------------------------------------------------------- nets
def center_input(image: np.ndarray, mean256: np.ndarray) -> torch.Tensor:
    """§2 + the centre patch written out for the tiny recipe: 256 → 128 (bilinear), centre 112, minus the mean."""
    small = np.asarray(Image.fromarray(image).resize((128, 128), Image.BILINEAR), dtype=np.float32)
    mean = np.stack([np.asarray(Image.fromarray(mean256[..., c], mode="F").resize((128, 128), Image.BILINEAR))
                     for c in range(3)], -1)
    o = (128 - 112) // 2
    x = small[o : o + 112, o : o + 112] - mean[o : o + 112, o : o + 112]
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]


def test_viz_predictions_shows_the_nets_top5(data, tmp_path, capsys):
    from alexrepro.data.prepared import open_split

    run = make_run(tmp_path / "run", data)
    code, out, _ = run_cli(["viz", "predictions", str(run), str(data), "--n", "6", "--device", "cpu", "--json"], capsys)
    assert code == 0
    res = json.loads(out)
    assert res["path"] == str(run / "figures" / "predictions-val.png")
    assert png_size(res["path"]) == (4 * 3 * DPI, round(2 * 4.5 * DPI))  # 4 columns × 2 rows of 3 × 4.5 in cells
    ckpt = read_checkpoint(run / "checkpoints" / "best.pt")
    model, _, _ = model_from_checkpoint(ckpt)
    mean = ckpt.stats["mean"].float().numpy()
    val = open_split(data, "val")
    assert sorted(p["index"] for p in res["images"]) == list(range(6))  # all six, each once
    for p in res["images"]:
        image, label = val[p["index"]]
        with torch.no_grad():
            probs = torch.softmax(model(center_input(image, mean)), 1)[0]
        assert p["label"] == label and len(p["top5"]) == 5
        assert p["top5"] == torch.argsort(probs, descending=True)[:5].tolist()
        assert np.allclose(p["prob"], probs[p["top5"]].numpy(), atol=1e-4)


def test_viz_predictions_rejects_a_set_with_other_classes(data, tmp_path, capsys):
    run = make_run(tmp_path / "run", data)
    other = tmp_path / "other"
    make_set(other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["classes"][0]["wnid"] = "n99999999"
    (other / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = run_cli(["viz", "predictions", str(run), str(other), "--device", "cpu"], capsys)
    assert code == 2 and "other classes" in err


def test_viz_neighbors_finds_itself_and_reuses_its_index(data, tmp_path, capsys):
    run = make_run(tmp_path / "run", data)
    args = ["viz", "neighbors", str(run), str(data), "--split", "train", "--queries", "3", "--k", "4",
            "--device", "cpu", "--batch-size", "5", "--json"]
    code, out, _ = run_cli(args, capsys)
    assert code == 0
    res = json.loads(out)
    assert res["path"] == str(run / "figures" / "neighbors-train.png") and not res["index_reused"]
    assert Path(res["index"]) == run / "fc7-index-train.h5" and res["index_images"] == N_CLASSES * TRAIN_PER_CLASS
    assert png_size(res["path"]) == (2 * (4 + 1) * DPI, round((2 * 3 + 0.6) * DPI))  # 2-in cells + 0.6-in title band
    for q in res["queries"]:
        first = q["neighbors"][0]
        assert first["index"] == q["index"]  # a training image is its own nearest neighbour
        assert first["distance"] <= 1e-3 * q["neighbors"][-1]["distance"]
        assert [n["distance"] for n in q["neighbors"]] == sorted(n["distance"] for n in q["neighbors"])
    code, out, _ = run_cli(args, capsys)
    assert code == 0 and json.loads(out)["index_reused"]
    make_run(run, data, seed=1)  # a new checkpoint: the cached vectors no longer hold
    code, out, _ = run_cli(args, capsys)
    assert code == 0 and not json.loads(out)["index_reused"]


def test_nearest_neighbors_rejects_bad_k():
    with pytest.raises(ValueError):
        nearest_neighbors(np.zeros((3, 2)), np.zeros((1, 2)), k=4)


def test_cli_index_size_default_is_the_modules():
    from alexrepro.cli.viz_cmd import INDEX_SIZE
    from alexrepro.figures.neighbors import DEFAULT_INDEX_SIZE, index_indices

    assert INDEX_SIZE == DEFAULT_INDEX_SIZE
    assert index_indices(10, 0).tolist() == list(range(10))
    assert index_indices(101, 5).tolist() == [0, 25, 50, 75, 100]  # evenly spaced, both ends kept
