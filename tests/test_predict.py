"""predict: real photographs through prep's preprocessing, names and probabilities, broken files reported."""

import io
import json

import numpy as np
import pytest
import torch
from cli_run import run_cli
from PIL import Image
from skimage import data as skdata

from alexrepro.data.prepared import Stats, write_manifest, write_shard, write_stats
from alexrepro.errors import UserError
from alexrepro.evaluation.predict import load_image, mean_from_checkpoint
from alexrepro.loaders.colour import mean_colour
from alexrepro.loaders.presets import EvalPreset, variant_for
from alexrepro.nets.alexnet import build_model
from alexrepro.recipe_reader import load_recipe
from alexrepro.training.checkpoint import Checkpoint, read_checkpoint, save_checkpoint

K = 7
CLASSES = [{"index": i, "wnid": f"n{i:08d}", "name": f"thing {i}"} for i in range(K)]
MEAN = np.linspace(60, 190, 256 * 256 * 3, dtype=np.float32).reshape(256, 256, 3)


def tiny_recipe():
    return load_recipe("tiny", [f"model.num_classes={K}", "data.image_size=72", "data.crop_size=64",
                                "model.fc_width=32", "data.workers=0"])


def write_ckpt(path, with_mean=True):
    recipe = tiny_recipe()
    torch.manual_seed(0)
    model = build_model(recipe.model, recipe.data.crop_size)
    stats = {"mean": MEAN.astype(np.float16), "channel_mean": MEAN.reshape(-1, 3).mean(0)} if with_mean else None
    save_checkpoint(path, Checkpoint(model=model.state_dict(), recipe=recipe, classes=CLASSES, epoch=1, step=1,
                                     stats=stats))
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    Image.fromarray(skdata.astronaut()).save(root / "astronaut.jpg", quality=90)
    Image.fromarray(skdata.chelsea()).save(root / "chelsea.png")
    Image.fromarray(skdata.coffee()).convert("L").save(root / "coffee_grey.jpg")  # greyscale → RGB
    (root / "broken.jpg").write_bytes((root / "astronaut.jpg").read_bytes()[:300])  # truncated
    (root / "empty.png").write_bytes(b"")
    write_ckpt(root / "with_mean.pt")
    write_ckpt(root / "no_mean.pt", with_mean=False)
    return root


def test_predict_photos_and_report_broken_files(photos, capsys):
    names = ["astronaut.jpg", "broken.jpg", "chelsea.png", "empty.png", "coffee_grey.jpg"]
    args = ["predict", "-c", str(photos / "with_mean.pt"), *[str(photos / n) for n in names], "--json"]
    code, stdout, err = run_cli(args, capsys)
    assert code == 2  # some files are not images (bad input); the others were still predicted
    r = json.loads(stdout)
    assert [p["path"].rsplit("/", 1)[1] for p in r["images"]] == ["astronaut.jpg", "chelsea.png", "coffee_grey.jpg"]
    assert [f["path"].rsplit("/", 1)[1] for f in r["failed"]] == ["broken.jpg", "empty.png"]
    assert all(f["reason"] for f in r["failed"]) and "empty file" in r["failed"][1]["reason"]
    assert r["mean_from"] == "checkpoint" and r["test_time"] == "predict_ten_crop"
    for item in r["images"]:
        top = item["top"]
        assert len(top) == 5 and len({t["index"] for t in top}) == 5
        probs = [t["prob"] for t in top]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
        for t in top:
            assert t["name"] == f"thing {t['index']}" and t["wnid"] == f"n{t['index']:08d}"
    assert "2 of 5 images could not be read" in err


def test_human_output_lists_classes(photos, capsys):
    code, stdout, err = run_cli(["predict", "-c", str(photos / "with_mean.pt"), str(photos / "chelsea.png"),
                                 "--crops", "1"], capsys)
    assert code == 0 and stdout == ""
    assert "chelsea.png" in err and "thing " in err and "probability" in err


def test_mean_needs_data_when_the_checkpoint_lacks_it(photos, tmp_path, capsys):
    code, _, err = run_cli(["predict", "-c", str(photos / "no_mean.pt"), str(photos / "chelsea.png")], capsys)
    assert code == 2 and "--data OUT" in err
    write_stats(tmp_path, Stats(mean=MEAN, channel_mean=MEAN.reshape(-1, 3).mean(0), pixel_count=1))
    code, stdout, _ = run_cli(["predict", "-c", str(photos / "no_mean.pt"), str(photos / "chelsea.png"),
                               "--data", str(tmp_path), "--json"], capsys)
    assert code == 0
    from_data = json.loads(stdout)
    assert from_data["mean_from"].endswith("stats.h5")
    code, stdout, _ = run_cli(["predict", "-c", str(photos / "with_mean.pt"), str(photos / "chelsea.png"),
                               "--json"], capsys)
    from_ckpt = json.loads(stdout)
    # float16 storage of the mean moves the probabilities only in the last digits
    for a, b in zip(from_data["images"][0]["top"], from_ckpt["images"][0]["top"], strict=True):
        assert a["index"] == b["index"] and a["prob"] == pytest.approx(b["prob"], abs=1e-3)
    with pytest.raises(UserError, match="--data OUT"):
        mean_from_checkpoint(read_checkpoint(photos / "no_mean.pt"), None)


def reference_views(stored, crops, size, crop):
    """§2 and §4.1 written out with PIL and torchvision, not with the package: the stored image and the mean
    resized to `size` (bilinear, antialiased), the centre patch or torchvision's ten crops, the mean cut at the
    same patch subtracted, as float32 N×3×c×c (or N×10×3×c×c)."""
    import torchvision.transforms.functional as TF

    image = torch.from_numpy(np.array(Image.fromarray(stored).resize((size, size), Image.BILINEAR)))
    mean = torch.from_numpy(np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(MEAN[..., k]), mode="F")
                                                 .resize((size, size), Image.BILINEAR)) for k in range(3)], -1))
    chw = (image.permute(2, 0, 1).float() - mean.permute(2, 0, 1))  # the mean at each pixel, cut with it below
    if crops == 1:
        return TF.center_crop(chw, [crop, crop])[None]
    return torch.stack(TF.ten_crop(chw, [crop, crop]))[None]


def test_predict_sees_exactly_what_the_eval_loader_sees(photos, tmp_path):
    """A photo goes through §2's rescale and central patch, then §4.1's views: checked against PIL and
    torchvision written out here, for predict's tensor and for the evaluation loader's."""
    import torchvision.transforms.functional as TF

    from alexrepro.loaders import make_loader
    from alexrepro.loaders.augment import mean_image_for

    stored = load_image(photos / "chelsea.png")  # 451×300 PNG: no JPEG decoder in the way
    source = Image.open(photos / "chelsea.png").convert("RGB")
    by_hand = np.asarray(TF.center_crop(TF.resize(source, 256), 256), dtype=np.float64)  # shorter side 256
    assert stored.shape == (256, 256, 3) and stored.dtype == np.uint8
    assert np.abs(stored - by_hand).mean() < 1.5  # the box resize vs resize-then-crop; a pixel's shift gives 6
    out = tmp_path / "set"
    write_shard(out / "val" / "00000.h5", "raw", stored[None], [3], ["val/chelsea.png"])
    write_manifest(out, {"source": "test", "encoding": "raw", "image_size": 256, "classes": CLASSES,
                         "splits": {"val": {"count": 1, "shards": [{"file": "val/00000.h5", "count": 1}]}}})
    write_stats(out, Stats(mean=MEAN, channel_mean=MEAN.reshape(-1, 3).mean(0), pixel_count=1))
    data = tiny_recipe().data
    cpu = torch.device("cpu")
    colour = mean_colour(mean_image_for(MEAN, MEAN.reshape(-1, 3).mean(0), data), cpu)
    for crops, kind in ((10, "ten"), (1, "center")):
        expected = reference_views(stored, crops, data.image_size, data.crop_size)
        loader = make_loader(out, "val", data, 1, train=False, device=cpu, crops=kind, kind="torch")
        images, labels = next(iter(loader))
        mine = EvalPreset.for_data(data, variant_for(crops))([stored], colour, cpu)  # what predict --crops feeds the net
        assert labels.tolist() == [3]
        torch.testing.assert_close(mine, expected, rtol=0, atol=1e-3)
        torch.testing.assert_close(images, expected, rtol=0, atol=1e-3)


def test_png_named_jpeg_and_cmyk_are_read(photos, tmp_path, capsys):
    png_named_jpeg = tmp_path / "really_png.JPEG"
    Image.fromarray(skdata.coffee()).save(png_named_jpeg, format="PNG")
    cmyk = tmp_path / "cmyk.jpg"
    buf = io.BytesIO()
    Image.fromarray(skdata.astronaut()).convert("CMYK").save(buf, format="JPEG")
    cmyk.write_bytes(buf.getvalue())
    code, stdout, _ = run_cli(["predict", "-c", str(photos / "with_mean.pt"), str(png_named_jpeg), str(cmyk),
                               "--crops", "1", "--json"], capsys)
    assert code == 0 and len(json.loads(stdout)["images"]) == 2
