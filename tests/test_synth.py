"""synth: ImageNet's layouts (folders, devkit, Kaggle), labels that match the pixels, quirks, determinism."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image, UnidentifiedImageError

from alexrepro.cli import main
from alexrepro.data.synth import TRAIN_QUIRKS, VAL_QUIRK, devkit_ids, draw_image, make_synthetic
from alexrepro.data.synth_images import sample_size
from alexrepro.errors import UserError

TINY = {"classes": 2, "train_per_class": 2, "val_per_class": 2, "min_size": 32, "max_size": 48}


def read_devkit(src: Path) -> tuple[dict[int, str], dict[str, str], list[int], np.ndarray]:
    """The devkit read the way torchvision's ImageNet does: leaf synsets are those with no children."""
    meta = scipy.io.loadmat(src / "devkit/data/meta.mat", squeeze_me=True)["synsets"]
    leaves = [row for row in meta if row[4] == 0]
    id_to_wnid = {int(row[0]): str(row[1]) for row in leaves}
    words = {str(row[1]): str(row[2]) for row in leaves}
    gt = [int(x) for x in (src / "devkit/data/ILSVRC2012_validation_ground_truth.txt").read_text().split()]
    return id_to_wnid, words, gt, meta


def rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float32)


def test_layout_and_counts(synth_src, synth_summary):
    s = synth_summary
    wnids = s["wnids"]
    assert wnids == sorted(wnids) and len(wnids) == 4 and wnids[0] == "n01440764"  # real ImageNet WNIDs first
    assert sorted(p.name for p in (synth_src / "train").iterdir()) == wnids
    train = sorted((synth_src / "train").glob("*/*"))
    assert all(p.name.startswith(p.parent.name + "_") and p.suffix == ".JPEG" for p in train)
    val = sorted((synth_src / "val").iterdir())
    assert [p.name for p in val] == [f"ILSVRC2012_val_{k:08d}.JPEG" for k in range(1, 13)]
    c = s["counts"]
    assert c["train_files"] == len(train) == 4 * 6 + len(TRAIN_QUIRKS)
    assert c["val_files"] == c["val_readable"] == len(val) == 4 * 3
    assert c["train_readable"] + c["skipped"] == c["train_files"] and c["skipped"] == len(s["broken"]) == 3
    for key, rel in s["paths"].items():
        assert (synth_src / rel).exists(), key
    on_disk = json.loads((synth_src / "synth.json").read_text())
    assert on_disk["complete"] and on_disk["counts"] == c and "src" not in on_disk


def test_imagefolder_reads_train(synth_src, synth_summary):
    from torchvision.datasets import ImageFolder

    broken = {str(synth_src / p) for p in synth_summary["broken"]}
    ds = ImageFolder(str(synth_src / "train"), is_valid_file=lambda p: p not in broken)
    assert ds.classes == synth_summary["wnids"]
    assert len(ds) == synth_summary["counts"]["train_readable"]
    for (path, target), (img, label) in zip(ds.samples, ds, strict=True):
        assert img.mode == "RGB" and label == target == ds.classes.index(Path(path).parent.name)


def test_devkit_labels_match_what_each_val_image_shows(synth_src, synth_summary):
    s = synth_summary
    id_to_wnid, _, gt, _ = read_devkit(synth_src)
    assert len(gt) == s["counts"]["val_files"]
    for k, sid in enumerate(gt, start=1):
        got = rgb(synth_src / f"val/ILSVRC2012_val_{k:08d}.JPEG")
        # Redraw image k as each class would have drawn it: only the devkit's class matches the pixels.
        diffs = [np.abs(got - draw_image(s["seed"], "val", k, c, s["min_size"], s["max_size"])[0]).mean()
                 for c in range(s["classes"])]
        best = int(np.argmin(diffs))
        assert s["wnids"][best] == id_to_wnid[sid], (k, diffs)
        # The match differs only by JPEG's error (up to ~6 grey levels on these 48–96 px images with
        # black-and-white patterns); any other class draws another object, 17+ levels away.
        assert diffs[best] < 10 and sorted(diffs)[1] > 2 * diffs[best]


def test_devkit_id_order_is_not_sorted_order(synth_src, synth_summary):
    id_to_wnid, words, gt, meta = read_devkit(synth_src)
    n = synth_summary["classes"]
    assert sorted(id_to_wnid) == list(range(1, n + 1))  # leaves carry IDs 1..N
    assert [int(row[0]) for row in meta] == list(range(1, len(meta) + 1))  # rows in ID order
    inner = [row for row in meta if row[4] > 0]
    assert inner and all(int(row[0]) > n for row in inner)
    assert sorted(words) == synth_summary["wnids"] and [words[w] for w in synth_summary["wnids"]] == synth_summary["names"]
    # A reader that takes ID i to be the i-th sorted WNID gets every val label wrong.
    sorted_wnids = sorted(id_to_wnid.values())
    assert all(sorted_wnids[sid - 1] != id_to_wnid[sid] for sid in gt)
    for classes in (2, 3, 5, 50):
        for seed in range(4):
            ids = devkit_ids(classes, seed)
            assert sorted(ids) == list(range(1, classes + 1)) and not np.any(ids == np.arange(1, classes + 1))
            assert np.array_equal(ids, devkit_ids(classes, seed))
    assert not np.array_equal(devkit_ids(50, 0), devkit_ids(50, 1))


def test_kaggle_files_agree_with_devkit(synth_src, synth_summary):
    id_to_wnid, words, gt, _ = read_devkit(synth_src)
    mapping = (synth_src / "LOC_synset_mapping.txt").read_text().splitlines()
    assert [line.split(" ", 1)[0] for line in mapping] == synth_summary["wnids"]  # sorted, like Kaggle's
    assert all(line.split(" ", 1)[1] == words[line.split(" ", 1)[0]] for line in mapping)
    with open(synth_src / "LOC_val_solution.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["ImageId", "PredictionString"]
    by_image = {image_id: pred for image_id, pred in rows[1:]}
    assert sorted(by_image) == [f"ILSVRC2012_val_{k:08d}" for k in range(1, len(gt) + 1)]
    for k, sid in enumerate(gt, start=1):
        wnid, *box = by_image[f"ILSVRC2012_val_{k:08d}"].split()
        x0, y0, x1, y1 = map(int, box)
        w, h = Image.open(synth_src / f"val/ILSVRC2012_val_{k:08d}.JPEG").size
        assert wnid == id_to_wnid[sid]
        assert 0 <= x0 < x1 < w and 0 <= y0 < y1 < h


def test_quirks_are_what_the_summary_claims(synth_src, synth_summary):
    quirks = synth_summary["quirks"]
    assert sorted(q["kind"] for q in quirks if q["split"] == "train") == sorted(TRAIN_QUIRKS)
    assert [q["kind"] for q in quirks if q["split"] == "val"] == [VAL_QUIRK]
    assert synth_summary["broken"] == [q["path"] for q in quirks if q["expected"] == "skipped"]
    for q in quirks:
        path = synth_src / q["path"]
        assert path.suffix == ".JPEG" and path.parent.name == (q["wnid"] if q["split"] == "train" else "val")
        if q["expected"] == "converted":
            with Image.open(path) as im:
                assert (im.format, im.mode, list(im.size)) == (q["format"], q["mode"], q["size"]), q
                assert im.convert("RGB").getbbox() is not None
        else:
            with pytest.raises((UnidentifiedImageError, OSError)):
                with Image.open(path) as im:
                    im.load()
    kinds = {q["kind"]: q for q in quirks if q["split"] == "train"}
    assert kinds["tiny"]["size"] == [40, 30] and kinds["huge"]["size"] == [2500, 1800]
    assert (synth_src / kinds["empty"]["path"]).stat().st_size == 0
    with Image.open(synth_src / kinds["rgba_png"]["path"]) as im:
        alpha = np.asarray(im)[..., 3]
    assert alpha.min() == 0 and alpha.max() == 255


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    a, b, c = (make_synthetic(tmp_path / n, seed=s, quirks=True, progress=False, **TINY)
               for n, s in (("a", 3), ("b", 3), ("c", 4)))
    fa, fb, fc = files(Path(a["src"])), files(Path(b["src"])), files(Path(c["src"]))
    assert fa.keys() == fb.keys() and all(fa[k] == fb[k] for k in fa)
    assert "devkit/data/meta.mat" in fa and "synth.json" in fa
    constant = {q["path"] for q in a["quirks"] if q["kind"] in ("empty", "text")}
    images = [k for k in fa if k.endswith(".JPEG") and k not in constant]
    assert len(images) == 4 + 4 + len(TRAIN_QUIRKS) - 2 and all(fa[k] != fc[k] for k in images)


def test_cli_json_and_rerun_replaces_previous_output(tmp_path, capsys):
    src = tmp_path / "src"
    args = ["synth", str(src), "--classes", "3", "--train-per-class", "2", "--val-per-class", "1",
            "--seed", "7", "--min-size", "32", "--max-size", "48", "--json"]
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    summary = json.loads(out[0])
    assert summary["counts"]["train_files"] == 6 and summary["counts"]["val_files"] == 3 and summary["seed"] == 7
    assert summary["quirks"] == [] and Path(summary["src"]) == src.resolve()
    # The class families (shape, texture, layout; never a colour), in sorted-WNID order.
    assert [f["description"] for f in summary["families"]] == ["plain disc", "striped square", "checkered triangle"]
    assert summary["families"][1] == {"shape": "square", "texture": "stripes", "layout": "single",
                                      "description": "striped square"}
    assert summary["distinct_families"] == 3
    # Rerunning over an earlier synth output (even an interrupted one) replaces it.
    marker = json.loads((src / "synth.json").read_text())
    (src / "synth.json").write_text(json.dumps({**marker, "complete": False}))
    (src / "train" / summary["wnids"][0] / "left_over.JPEG").write_bytes(b"x")
    again = make_synthetic(src, classes=2, train_per_class=1, val_per_class=1, min_size=32, max_size=48,
                           progress=False)
    assert sorted(p.name for p in (src / "train").iterdir()) == again["wnids"]
    assert len(list((src / "train").rglob("*.JPEG"))) == 2 and len(list((src / "val").iterdir())) == 2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"classes": 1}, "--classes must be between 2"),
        ({"train_per_class": 0}, "--train-per-class must be between 1"),
        ({"val_per_class": 0}, "--val-per-class must be between 1"),
        ({"seed": -1}, "--seed must be a non-negative"),
        ({"min_size": 64, "max_size": 32}, "larger than --max-size"),
        ({"min_size": 4}, "between 16 and 4000"),
    ],
)
def test_bad_numbers_are_user_errors(tmp_path, kwargs, message):
    with pytest.raises(UserError, match=message):
        make_synthetic(tmp_path / "src", progress=False, **{**TINY, **kwargs})
    assert not (tmp_path / "src").exists()


def test_refuses_a_folder_it_did_not_write(tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.jpg").write_bytes(b"mine")
    with pytest.raises(SystemExit) as e:
        main(["synth", str(tmp_path / "photos"), "--classes", "2"])
    assert e.value.code == 2
    assert "not empty and is not an earlier synth output" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "photos").iterdir()] == ["holiday.jpg"]


def test_sizes_are_imagenet_like():
    rng = np.random.default_rng(0)
    sizes = np.array([sample_size(rng) for _ in range(3000)])
    long_side, short_side = sizes.max(axis=1), sizes.min(axis=1)
    assert np.mean((long_side >= 300) & (long_side <= 500)) > 0.8  # mostly 300–500 px
    assert np.mean((short_side >= 250) & (short_side <= 500)) > 0.75
    assert sizes.min() >= 100 and sizes.max() <= 2000
    assert np.any(long_side > 1000) and np.any(long_side < 200)  # the tails exist
    assert 0.15 < np.mean(sizes[:, 1] > sizes[:, 0]) < 0.35  # some portrait
    small = np.array([sample_size(rng, 40, 80) for _ in range(500)])
    assert small.min() >= 40 and small.max() <= 80 and len(np.unique(small)) > 20
