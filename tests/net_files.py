"""Real net files for the tests of alexrepro.load, the exports and features (session fixture `net_files`).

- a prepared set of K class-patterned images (raw shards, mean image and PCA in stats.h5);
- a checkpoint trained on it by `alexrepro train` (the tiny recipe at 64-pixel crops: two towers, LRN);
- a Caffe import (`alexrepro import caffe`): a caffemodel written by caffe_writer.py with random weights of
  bvlc_alexnet's conv shapes, fc6/fc7 FC wide, fc8 K wide, and Caffe's BGR mean;
- a torchvision import (`alexrepro import torchvision`): torchvision's own alexnet, random, narrowed the same way;
- three photographs (skimage's), as JPEG and PNG files.
The random nets' fc8 is scaled so that their logits on the photographs spread over a few units: every photo
gets a ranking of the classes with gaps far above float32 rounding (0.005 at least), so top-5 lists can be compared across
runtimes, and the logits' rounding stays far below the 1e-4 that ONNX's are held to.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import caffe_writer as cw
import numpy as np
import pytest
import torch
import torchvision
from cli_run import ok_json, run_cli  # noqa: F401 - the net-file tests import them from here
from PIL import Image
from skimage import data as skdata

from alexrepro.cli import main
from alexrepro.data.prepared import IMAGE_SIZE, Stats, write_manifest, write_shard, write_stats

K = 6  # classes (top-5 needs at least 5)
FC = 64  # fc6/fc7 width of the imported nets (4096 in the published files)
TRAIN_PER_CLASS, VAL_PER_CLASS = 4, 2
# The tiny recipe at 64-pixel crops of 72-pixel images: its two towers, grouped convs and per-tower LRN kept.
TINY = [f"model.num_classes={K}", "data.image_size=72", "data.crop_size=64", "model.fc_width=32",
        "data.workers=0", "optim.batch_size=8", "schedule.epochs=1", "run.log_every=1"]
PHOTOS = {"astronaut.jpg": "astronaut", "chelsea.png": "chelsea", "coffee.jpg": "coffee"}


@dataclass(frozen=True)
class NetFiles:
    set: Path  # the prepared set (OUT)
    trained: Path  # RUN/checkpoints/last.pt
    caffe: Path
    torchvision: Path
    photos: list[Path]
    root: Path

    def checkpoint(self, kind: str) -> Path:
        return {"trained": self.trained, "caffe": self.caffe, "torchvision": self.torchvision}[kind]


def class_image(label: int, i: int) -> np.ndarray:
    """A 256×256 image: stripes whose direction and period tell the class, a colour and noise per image."""
    rng = np.random.default_rng(100 * label + i)
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float64)
    angle = np.pi * label / K
    stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) / (3 + label))
    colour = rng.uniform(60, 200, 3)
    img = colour + 60 * stripes[..., None] + rng.normal(0, 20, (IMAGE_SIZE, IMAGE_SIZE, 3))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def make_set(out: Path) -> Path:
    splits, train = {}, []
    for split, per in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)):
        labels = [c for c in range(K) for _ in range(per)]
        images = np.stack([class_image(c, j + (0 if split == "train" else 50)) for c in range(K) for j in range(per)])
        train += list(images) if split == "train" else []
        write_shard(out / split / "00000.h5", "raw", images, labels, [f"{split}/{n:03d}.JPEG" for n in range(len(labels))])
        splits[split] = {"count": len(labels), "shards": [{"file": f"{split}/00000.h5", "count": len(labels)}]}
    classes = [{"index": i, "wnid": f"n{i:08d}", "name": f"pattern {i}, stripes"} for i in range(K)]
    write_manifest(out, {"splits": splits, "classes": classes, "encoding": "raw", "source": "test", "skipped": 0})
    stack = np.stack(train).astype(np.float64)
    write_stats(out, Stats(mean=stack.mean(0).astype(np.float32), channel_mean=stack.mean((0, 1, 2)),
                           pixel_count=stack[..., 0].size, eigval=np.array([3000.0, 300.0, 30.0]), eigvec=np.eye(3)))
    return out


def cli(*args: object) -> None:
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    assert e.value.code in (0, None)


def train(out: Path, run: Path) -> Path:
    cli("train", out, "--recipe", "tiny", "--run", run, "--device", "cpu", "--no-progress",
        *[x for s in TINY for x in ("--set", s)])
    return run / "checkpoints" / "last.pt"


def spread_fc8(weight: torch.Tensor, bias: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fc8 rescaled so that the logits of these inputs are centred and spread about 1 unit."""
    scale = 1.0 / float((logits - logits.mean(0)).std())
    return weight * scale, (bias - logits.mean(0)) * scale


def centre_crops(photos: list[Path], crop: int) -> np.ndarray:
    """The photos as prep stores them (256×256 RGB), their centre crop×crop patches: N×3×crop×crop float64."""
    from alexrepro.data.imaging import prepare_image

    o = (IMAGE_SIZE - crop) // 2
    stored = np.stack([prepare_image(p.read_bytes(), encoding="raw") for p in photos])
    return stored[:, o:o + crop, o:o + crop].transpose(0, 3, 1, 2).astype(np.float64)


def caffe_file(root: Path, out: Path, photos: list[Path]) -> Path:
    from test_import_caffe import caffe_forward

    weights = cw.random_weights(FC, K, seed=7)
    o = (IMAGE_SIZE - 227) // 2  # Caffe's input: BGR minus its mean image, cut at the same place
    x = torch.from_numpy((centre_crops(photos, 227)[:, ::-1] - cw.bgr_mean()[:, o:o + 227, o:o + 227]).astype(np.float32))
    w, b = (torch.from_numpy(t) for t in weights["fc8"])
    weights["fc8"] = tuple(t.numpy() for t in spread_fc8(w, b, caffe_forward(weights, x)))
    (root / "bvlc_alexnet.caffemodel").write_bytes(cw.alexnet_caffemodel(weights, v1=False, legacy=False))
    (root / "imagenet_mean.binaryproto").write_bytes(cw.blob(cw.bgr_mean()[None], legacy=True))
    ck = root / "caffe.pt"
    cli("import", "caffe", root / "bvlc_alexnet.caffemodel", "--mean", root / "imagenet_mean.binaryproto",
        "--data", out, "--out", ck)
    return ck


def torchvision_file(root: Path, out: Path, photos: list[Path]) -> Path:
    torch.manual_seed(1)
    tv = torchvision.models.alexnet(weights=None, num_classes=K)
    tv.classifier[1], tv.classifier[4], tv.classifier[6] = (torch.nn.Linear(256 * 6 * 6, FC), torch.nn.Linear(FC, FC),
                                                            torch.nn.Linear(FC, K))
    tv.eval()
    with torch.no_grad():
        x = torchvision.transforms.functional.normalize(torch.from_numpy(centre_crops(photos, 224)).float() / 255,
                                                        [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
        fc8 = tv.classifier[6]
        fc8.weight[:], fc8.bias[:] = spread_fc8(fc8.weight, fc8.bias, tv(x))
    torch.save(tv.state_dict(), root / "alexnet-random.pth")
    ck = root / "torchvision.pt"
    cli("import", "torchvision", root / "alexnet-random.pth", "--data", out, "--out", ck)
    return ck


def make_net_files(root: Path) -> NetFiles:
    out = make_set(root / "set")
    photos = []
    for name, fn in PHOTOS.items():
        Image.fromarray(getattr(skdata, fn)()).save(root / name, **({"quality": 90} if name.endswith(".jpg") else {}))
        photos.append(root / name)
    return NetFiles(set=out, trained=train(out, root / "run"), caffe=caffe_file(root, out, photos),
                    torchvision=torchvision_file(root, out, photos), photos=photos, root=root)
