"""Sources as they are found, with real `prep` processes (docs/RELIABILITY.md, F9 to F11).

Every file under a class folder is read if Pillow opens it, whatever its suffix, or reported with its
reason; a class with no image is refused before any work; OUT inside SRC is left out of the scan and the
same command resumes; SRC inside OUT is refused.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_faults import LINUX_PROC, SITECUSTOMIZE, child_env, error_lines, finish, started

from alexrepro.data.manifest import read_manifest

pytestmark = pytest.mark.skipif(not LINUX_PROC, reason="needs Linux /proc to find and watch the children")

WNIDS = ["n01440764", "n01443537", "n02085620"]


@pytest.fixture(scope="module")
def hooks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hooks")
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return folder


def image_bytes(seed: int, fmt: str) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


def prep_json(args: list[object], hooks: Path, log: Path) -> tuple[int, dict]:
    with started(["prep", *args, "--workers", 1, "--json"], child_env(hooks), log) as proc:
        code = finish(proc)
    objects = [json.loads(line) for line in log.read_text().splitlines() if line.startswith('{"')]
    return code, objects[0] if code == 0 else {}


def test_every_file_in_a_class_folder_is_read_or_reported_whatever_its_suffix(hooks, tmp_path):
    src = tmp_path / "src"
    kinds = {"a.webp": "WEBP", "b.gif": "GIF", "c.tif": "TIFF", "d.bmp": "BMP", "e.jpe": "JPEG", "f": "PNG",
             "g.JPEG": "JPEG"}
    for c, wnid in enumerate(WNIDS):
        (src / "train" / wnid).mkdir(parents=True)
        for i, (name, fmt) in enumerate(kinds.items()):
            (src / "train" / wnid / name).write_bytes(image_bytes(10 * c + i, fmt))
    first = src / "train" / WNIDS[0]
    (first / "notes.txt").write_text("not an image\n")
    (first / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (first / "deeper").mkdir()
    (first / "deeper" / "h.JPEG").write_bytes(image_bytes(99, "JPEG"))
    code, summary = prep_json([src, tmp_path / "out"], hooks, tmp_path / "prep.log")
    assert code == 0, (tmp_path / "prep.log").read_text()
    assert summary["splits"]["train"]["written"] == 3 * len(kinds)  # every image, whatever its suffix
    skipped = dict(line.split("\t") for line in (tmp_path / "out" / "skipped.tsv").read_text().splitlines()[1:])
    assert set(skipped) == {f"train/{WNIDS[0]}/{n}" for n in ("notes.txt", ".DS_Store", "deeper/")}
    assert skipped[f"train/{WNIDS[0]}/notes.txt"].startswith("not an image")
    assert skipped[f"train/{WNIDS[0]}/deeper/"].startswith("a folder inside a class folder")
    manifest = read_manifest(tmp_path / "out")
    assert manifest.splits["train"].found == manifest.splits["train"].count + manifest.splits["train"].skipped

    second = src / "train" / WNIDS[1]
    shutil.rmtree(second)
    second.mkdir()
    for name in ("a.txt", "b.dat", "readme"):  # a class without a file that is an image: refused before any work
        (second / name).write_text("text, not an image\n")
    code, _ = prep_json([src, tmp_path / "out2"], hooks, tmp_path / "refused.log")
    (line,) = error_lines(tmp_path / "refused.log")
    assert code == 2 and line.startswith(f"error: 1 training class holds no image in train: {WNIDS[1]} (3 files, "
                                         "none an image); add its images or remove the class folder")
    assert not (tmp_path / "out2").exists()
    (second / "a.webp").write_text("named as an image, and not one\n")  # found out only by reading it
    code, _ = prep_json([src, tmp_path / "out3"], hooks, tmp_path / "read.log")
    (line,) = error_lines(tmp_path / "read.log")
    assert code == 2 and line.startswith(f"error: 1 training class has no image that reads ({WNIDS[1]}; e.g. "
                                         f"train/{WNIDS[1]}/a.txt: not an image")


def test_out_inside_src_is_left_out_and_the_same_command_resumes_while_src_inside_out_is_refused(
        synth_src, hooks, tmp_path):
    src = Path(shutil.copytree(synth_src, tmp_path / "src"))
    out = src / "train" / "prepared"  # inside the training split: it would be a class
    code, first = prep_json([src, out], hooks, tmp_path / "first.log")
    assert code == 0, (tmp_path / "first.log").read_text()
    assert [c.wnid for c in read_manifest(out).classes] == sorted(p.name for p in (synth_src / "train").iterdir())
    assert "prepared" not in (out / "skipped.tsv").read_text()
    code, again = prep_json([src, out], hooks, tmp_path / "again.log")  # the same command: the same set, resumed
    assert code == 0, (tmp_path / "again.log").read_text()
    assert again["splits"]["train"]["resumed_shards"] == again["splits"]["train"]["shards"]
    assert again["splits"]["train"]["written"] == first["splits"]["train"]["written"]
    inner = out / "copy"
    shutil.copytree(synth_src, inner)
    code, _ = prep_json([inner, out], hooks, tmp_path / "inside.log")
    (line,) = error_lines(tmp_path / "inside.log")
    assert code == 2 and line.startswith(f"error: SRC {inner} is inside OUT {out}")
