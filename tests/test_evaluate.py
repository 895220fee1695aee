"""Evaluation: ten-crop and ensemble averaging against explicit loops, rank shares, the CLI."""

import csv
import json
import re

import numpy as np
import pytest
import torch
from cli_run import run_cli
from torch import nn

from alexrepro.data.prepared import Stats, write_manifest, write_shard, write_stats
from alexrepro.errors import UserError
from alexrepro.evaluation.evaluate import rank_indices, score_batches
from alexrepro.evaluation.variants import TEST_TIME, predict_center, predict_ensemble, predict_ten_crop
from alexrepro.loaders import dali_available
from alexrepro.loaders.order import BatchPlan
from alexrepro.loaders.presets import variant_for
from alexrepro.nets.alexnet import build_model
from alexrepro.recipe_reader import load_recipe
from alexrepro.training.checkpoint import Checkpoint, save_checkpoint


class Linear(nn.Module):
    """A tiny stand-in net: flatten and one linear layer."""

    def __init__(self, c: int, k: int, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.fc = nn.Linear(3 * c * c, k)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_variants_are_named_functions_chosen_by_name():
    assert TEST_TIME["center"] is predict_center and TEST_TIME["ten"] is predict_ten_crop
    assert variant_for(1) == "center" and variant_for(10) == "ten"
    with pytest.raises(UserError, match="--crops must be 1"):
        variant_for(5)


def test_ten_crop_is_the_mean_softmax_over_an_explicit_loop():
    model = Linear(4, 6, seed=1).eval()
    images = torch.randn(3, 10, 3, 4, 4)
    got = predict_ten_crop(model, images)
    for i in range(3):
        total = torch.zeros(6)
        for c in range(10):
            logits = model(images[i, c][None])[0]
            total += torch.exp(logits) / torch.exp(logits).sum()
        torch.testing.assert_close(got[i], total / 10, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.sum(1), torch.ones(3))


def test_ensemble_of_ten_crop_nets_averages_each_nets_softmax():
    nets = [Linear(4, 6, seed=s).eval() for s in (1, 2, 3)]
    images = torch.randn(2, 10, 3, 4, 4)
    got = predict_ensemble(nets, images, "ten")
    expected = torch.zeros(2, 6)
    for net in nets:
        for c in range(10):
            expected += torch.softmax(net(images[:, c]), dim=1)
    torch.testing.assert_close(got, expected / 30, rtol=1e-5, atol=1e-6)
    center = predict_ensemble(nets, images[:, 4], "center")
    expected_c = sum(torch.softmax(n(images[:, 4]), 1) for n in nets) / 3
    torch.testing.assert_close(center, expected_c, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n, batch, world", [(10, 4, 1), (10, 3, 3), (7, 4, 2), (2, 4, 4), (1000, 70, 7)])
def test_rank_indices_cover_every_image_once(n, batch, world):
    plans = [BatchPlan(n=n, batch_size=batch, train=False, drop_last=True, rank=r, world_size=world)
             for r in range(world)]
    shares = [list(rank_indices(p)) for p in plans]
    assert sorted(i for s in shares for i in s) == list(range(n))  # no padding, no repeats, none dropped
    assert [len(s) for s in shares] == [p.rank_count() for p in plans]


def test_score_batches_tallies_and_predictions():
    net = Linear(4, 6, seed=0).eval()
    images = torch.randn(5, 3, 4, 4)
    labels = torch.tensor([0, 1, 2, 3, 4])
    batches = [(images[:2], labels[:2]), (images[2:], labels[2:])]
    scored = score_batches([net], batches, iter(range(10, 15)), "center", 6, torch.device("cpu"))
    probs = torch.softmax(net(images), 1)
    top1 = probs.argmax(1)
    assert scored.counts.total == 5
    assert int(scored.counts.misses[1].sum()) == int((top1 != labels).sum())
    assert [p["index"] for p in scored.predictions] == [10, 11, 12, 13, 14]
    assert [p["top"][0] for p in scored.predictions] == top1.tolist()
    assert len(scored.predictions[0]["top"]) == 5
    assert scored.seconds > 0


# --------------------------------------------------------------------------------------------- the CLI
K = 6  # classes of the tiny set
PER_CLASS = 3  # validation images per class


def make_set(out, source="synthetic (alexrepro test)", k=K):
    """A tiny prepared set written directly: raw 256² images, one shard per split, a mean image."""
    rng = np.random.default_rng(0)
    classes = [{"index": i, "wnid": f"n{i:08d}", "name": f"class {i}"} for i in range(k)]
    splits = {}
    for split, per in (("train", 2), ("val", PER_CLASS)):
        labels = np.repeat(np.arange(k), per)
        images = rng.integers(0, 256, size=(len(labels), 256, 256, 3), dtype=np.uint8)
        keys = [f"{split}/img_{i:03d}.JPEG" for i in range(len(labels))]
        write_shard(out / split / "00000.h5", "raw", images, labels, keys)
        splits[split] = {"count": len(labels), "shards": [{"file": f"{split}/00000.h5", "count": len(labels)}]}
    write_manifest(out, {"source": source, "encoding": "raw", "image_size": 256, "classes": classes,
                         "splits": splits, "skipped": 0})
    mean = np.full((256, 256, 3), 127.5, np.float32)
    write_stats(out, Stats(mean=mean, channel_mean=np.full(3, 127.5), pixel_count=2 * k * 256 * 256))
    return classes


def make_checkpoint(path, classes, seed=0, num_classes=None):
    """An untrained net of the tiny recipe (scaled down further for speed) saved as a checkpoint."""
    n = num_classes or len(classes)
    recipe = load_recipe("tiny", [f"model.num_classes={n}", "data.image_size=72", "data.crop_size=64",
                                  "model.fc_width=32", "data.workers=0"])
    torch.manual_seed(seed)
    model = build_model(recipe.model, recipe.data.crop_size)
    save_checkpoint(path, Checkpoint(model=model.state_dict(), recipe=recipe, epoch=1, step=1,
                                     classes=classes[:n] if n <= len(classes) else classes))
    return path


def softmax_by_hand(out, checkpoint, crops):
    """(N, K) averaged softmax and (N,) labels of one checkpoint on OUT's val split, computed without the
    package's evaluation: the shard read with h5py, each image resized with PIL, torchvision's centre or ten
    crops minus the constant mean (make_set's 127.5), the net's softmax averaged over the crops."""
    import h5py
    import torchvision.transforms.functional as TF
    from PIL import Image

    from alexrepro.training.checkpoint import read_checkpoint

    saved = read_checkpoint(checkpoint)
    data = saved.recipe.data
    net = build_model(saved.recipe.model, data.crop_size).eval()
    net.load_state_dict(saved.model)
    with h5py.File(out / "val" / "00000.h5", "r") as f:
        images, labels = f["images"][:], f["labels"][:]
    probs = []
    for image in images:
        small = np.array(Image.fromarray(image).resize((data.image_size,) * 2, Image.BILINEAR))
        chw = torch.from_numpy(small).permute(2, 0, 1).float() - 127.5
        views = torch.stack(TF.ten_crop(chw, [data.crop_size] * 2) if crops == 10
                            else [TF.center_crop(chw, [data.crop_size] * 2)])
        with torch.no_grad():
            probs.append(torch.softmax(net(views), 1).mean(0))
    return torch.stack(probs), torch.from_numpy(labels)


def errors_by_hand(probs, labels):
    """(top-1, top-5) error in percent, a tie counted as a miss (§6's top-k: fewer than k classes above)."""
    above = (probs >= probs.gather(1, labels[:, None])).sum(1) - 1  # classes scoring at least the true one's
    return tuple(100 * (above >= k).float().mean().item() for k in (1, 5))


def wilson_by_hand(errors, n, z=1.959963984540054):
    p = errors / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5
    return max(0.0, centre - half), min(1.0, centre + half)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalset")
    classes = make_set(root / "out")
    make_checkpoint(root / "a.pt", classes, seed=0)
    make_checkpoint(root / "b.pt", classes, seed=1)
    return root


def test_eval_cli_json_on_an_untrained_net(tiny, capsys):
    out = tiny / "out"
    code, stdout, _ = run_cli(["eval", str(out), "-c", str(tiny / "a.pt"), "--batch-size", "8", "--json",
                               "--per-class", str(tiny / "pc.csv"), "--predictions", str(tiny / "pred.csv")], capsys)
    assert code == 0
    r = json.loads(stdout)
    schema = {"command": str, "out": str, "split": str, "checkpoints": list, "nets": int, "crops": int,
              "test_time": str, "images": int, "classes": int, "top1_error_pct": float, "top1_ci95_pct": list,
              "top5_error_pct": float, "top5_ci95_pct": list, "seconds": float, "images_per_s": float,
              "device": str, "loader": str, "world_size": int, "paper": dict}
    for key, tp in schema.items():
        assert isinstance(r[key], tp), key
    assert r["images"] == K * PER_CLASS and r["classes"] == K  # every image of the split, once
    assert r["crops"] == 10 and r["test_time"] == "predict_ten_crop" and r["nets"] == 1
    probs, labels = softmax_by_hand(out, tiny / "a.pt", crops=10)
    top1, top5 = errors_by_hand(probs, labels)
    assert r["top1_error_pct"] == pytest.approx(top1, abs=1e-4) and r["top5_error_pct"] == pytest.approx(top5, abs=1e-4)
    for key, pct in (("top1_ci95_pct", top1), ("top5_ci95_pct", top5)):  # Wilson's interval, written out
        assert r[key] == pytest.approx([100 * b for b in wilson_by_hand(round(pct * K * PER_CLASS / 100),
                                                                        K * PER_CLASS)], abs=1e-4)
    p = r["paper"]
    assert p["table"] == "2012" and p["comparable"] == "1 CNN" and p["top1_error_pct"] == 40.7
    assert p["top1_diff_pct"] == pytest.approx(r["top1_error_pct"] - 40.7, abs=1e-3)
    assert [row["model"] for row in p["rows"]] == ["SIFT + FVs", "1 CNN", "5 CNNs", "1 CNN*", "7 CNNs*"]
    per_class = (tiny / "pc.csv").read_text().splitlines()
    assert per_class[0] == "index,wnid,name,images,top1_error_pct,top5_error_pct" and len(per_class) == K + 1
    assert per_class[1].startswith(f"0,n00000000,class 0,{PER_CLASS},")
    preds = (tiny / "pred.csv").read_text().splitlines()
    assert len(preds) == K * PER_CLASS + 1
    assert [line.split(",")[0] for line in preds[1:]] == [f"val/img_{i:03d}.JPEG" for i in range(K * PER_CLASS)]
    for line, p in zip(preds[1:], probs, strict=True):  # each image's five classes and probabilities
        cells = line.split(",")
        top = torch.topk(p, 5)
        assert cells[3::2] == [f"n{i:08d}" for i in top.indices.tolist()]
        assert [float(c) for c in cells[4::2]] == pytest.approx(top.values.tolist(), abs=1e-4)


def test_ensemble_center_crop_and_table_2010(tiny, capsys):
    args = ["eval", str(tiny / "out"), "-c", str(tiny / "a.pt"), "-c", str(tiny / "b.pt"), "--crops", "1",
            "--batch-size", "18", "--paper-table", "2010", "--json", "--predictions", str(tiny / "p.jsonl")]
    code, stdout, _ = run_cli(args, capsys)
    assert code == 0
    r = json.loads(stdout)
    assert r["nets"] == 2 and r["test_time"] == "predict_center" and r["images"] == K * PER_CLASS
    # Two nets are not Table 1's one CNN: the rows are shown, no difference is taken.
    assert r["paper"]["table"] == "2010" and r["paper"]["comparable"] is None
    assert r["paper"]["top1_diff_pct"] is None and "2 nets × centre patch" in r["paper"]["no_comparable"]
    first = json.loads((tiny / "p.jsonl").read_text().splitlines()[0])
    assert first["key"] == "val/img_000.JPEG" and len(first["top5"]) == 5
    assert sum(t["prob"] for t in first["top5"]) <= 1.0 + 1e-6


def test_human_output_shows_the_paper_rows(tiny, capsys):
    code, stdout, err = run_cli(["eval", str(tiny / "out"), "-c", str(tiny / "a.pt"), "--crops", "1"], capsys)
    assert code == 0 and stdout == ""
    assert "1 CNN" in err and "40.7" in err and "images/s" in err
    # Table 2 has no centre-patch row: every row shows its protocol and none carries a Δ.
    assert "10 patches" in err and "no Δ" in err and "centre patch" in err
    assert not re.search(r"[+-]\d+\.\d / [+-]", err)
    code, _, err = run_cli(["eval", str(tiny / "out"), "-c", str(tiny / "a.pt"), "--crops", "1",
                            "--paper-table", "2010"], capsys)
    assert code == 0 and "CNN (single centre patch)" in err and "Δ = this run − the row measured" in err
    assert re.search(r"\+\d+\.\d / [+-]", err)  # the Δ on §6's single-patch row


def test_bad_inputs_exit_2(tiny, capsys):
    out, a = str(tiny / "out"), str(tiny / "a.pt")
    wrong = make_checkpoint(tiny / "wrong.pt", [{"index": i, "wnid": f"n{i:08d}", "name": ""} for i in range(8)])
    other = make_checkpoint(tiny / "other.pt", [{"index": i, "wnid": f"n{i + 50:08d}", "name": ""} for i in range(K)])
    corrupt = tiny / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04 not really")
    foreign = tiny / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    cases = [
        (["-c", str(wrong)], "trained for 8 classes"),
        (["-c", a, "-c", str(wrong)], "different class lists"),
        (["-c", a, "-c", str(other)], "different class lists"),
        (["-c", str(corrupt)], "corrupt"),
        (["-c", str(foreign)], "not an alexrepro checkpoint"),
        (["-c", a, "--split", "test"], "no split 'test'"),
        (["-c", a, "--crops", "5"], "--crops must be 1"),
        (["-c", a, "--paper-table", "2011"], "--paper-table must be one of"),
    ]
    for extra, message in cases:
        code, stdout, err = run_cli(["eval", out, *extra], capsys)
        assert code == 2, (extra, err)
        assert message in err and "Traceback" not in err and stdout == ""


def test_ten_crop_matches_an_explicit_loop_through_the_loader(tiny):
    from alexrepro.loaders import make_loader
    from alexrepro.training.checkpoint import model_from_checkpoint, read_checkpoint

    model, recipe, _ = model_from_checkpoint(read_checkpoint(tiny / "a.pt"))
    cpu = torch.device("cpu")
    ten = make_loader(tiny / "out", "val", recipe.data, 6, train=False, device=cpu, crops="ten", kind="torch")
    center = make_loader(tiny / "out", "val", recipe.data, 6, train=False, device=cpu, kind="torch")
    (images, _), (centers, _) = next(iter(ten)), next(iter(center))
    assert images.shape == (6, 10, 3, 64, 64)
    torch.testing.assert_close(images[:, 4], centers)  # view 4 is the centre patch (TenCrop order)
    with torch.inference_mode():
        got = predict_ten_crop(model, images)
        explicit = sum(torch.softmax(model(images[:, v]), dim=1) for v in range(10)) / 10
    torch.testing.assert_close(got, explicit, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_two_processes_gloo_give_the_single_process_result(tiny, capsys):
    base = ["eval", str(tiny / "out"), "-c", str(tiny / "a.pt"), "--crops", "1", "--batch-size", "4", "--json"]
    code1, one, _ = run_cli(base + ["--predictions", str(tiny / "one.csv")], capsys)
    code2, two, _ = run_cli(base + ["--procs", "2", "--device", "cpu", "--predictions", str(tiny / "two.csv")], capsys)
    assert code1 == 0 and code2 == 0
    r1, r2 = json.loads(one), json.loads(two)
    assert r2["world_size"] == 2 and r2["images"] == r1["images"] == K * PER_CLASS
    assert r2["top1_error_pct"] == r1["top1_error_pct"] and r2["top5_error_pct"] == r1["top5_error_pct"]
    # Same images, labels and top-5 classes in the same order; probabilities equal to float tolerance
    # (each process runs batches of a different size, so the last printed digit may differ).
    rows1 = list(csv.reader((tiny / "one.csv").read_text().splitlines()))
    rows2 = list(csv.reader((tiny / "two.csv").read_text().splitlines()))
    assert len(rows1) == len(rows2) == K * PER_CLASS + 1 and rows1[0] == rows2[0]
    for a, b in zip(rows1[1:], rows2[1:], strict=True):
        for x, y in zip(a, b, strict=True):
            try:
                assert float(x) == pytest.approx(float(y), abs=2e-6)
            except ValueError:
                assert x == y


@pytest.mark.skipif(not dali_available(), reason="needs nvidia-dali")
def test_dali_and_torch_loaders_score_alike(tiny, capsys):
    results = {}
    for kind in ("torch", "dali"):
        pred = tiny / f"pred-{kind}.csv"
        code, stdout, _ = run_cli(["eval", str(tiny / "out"), "-c", str(tiny / "a.pt"), "--loader", kind,
                                   "--device", "cpu", "--batch-size", "9", "--json", "--predictions", str(pred)], capsys)
        assert code == 0
        r = json.loads(stdout)
        assert r["loader"] == kind and r["images"] == K * PER_CLASS
        rows = [line.split(",") for line in pred.read_text().splitlines()[1:]]
        results[kind] = (r["top1_error_pct"], r["top5_error_pct"], rows)
    (t1, t5, trows), (d1, d5, drows) = results["torch"], results["dali"]
    assert (t1, t5) == (d1, d5)
    for a, b in zip(trows, drows, strict=True):
        assert a[:4] == b[:4]  # same key, label and top-1 class
        assert float(a[4]) == pytest.approx(float(b[4]), abs=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_eval_matches_cpu(tiny, capsys):
    base = ["eval", str(tiny / "out"), "-c", str(tiny / "a.pt"), "--batch-size", "6", "--json", "--loader", "torch"]
    r = {}
    for dev in ("cpu", "cuda"):
        code, stdout, _ = run_cli(base + ["--device", dev], capsys)
        assert code == 0
        r[dev] = json.loads(stdout)
    assert r["cuda"]["device"].startswith("cuda") and r["cuda"]["images"] == K * PER_CLASS
    assert r["cuda"]["top1_error_pct"] == r["cpu"]["top1_error_pct"]
