"""Checkpoints: atomic writes, loud refusal of bad files, the newest loadable found, old ones pruned."""

import errno
import os
import time

import numpy as np
import pytest
import torch

from alexrepro.errors import UserError, WorkFailed
from alexrepro.training import checkpoint as ck


def _checkpoint(**fields):
    from alexrepro.recipe_reader import load_recipe

    fields.setdefault("model", {"w": torch.arange(3.0)})
    return ck.Checkpoint(recipe=load_recipe("tiny", ["optim.lr=0.02"]), **fields)


def _numbered(epoch, step=0):
    """A checkpoint at `epoch` and `step`, its weights `epoch`, with numpy in its random state and statistics."""
    return _checkpoint(epoch=epoch, step=step, model={"w": torch.full((3,), float(epoch))},
                       rng=[{"numpy": ("MT19937", np.arange(4, dtype=np.uint32), 1, 0, 0.0)}],
                       stats={"channel_mean": np.array([1.0, 2.0, 3.0])})


def _stored(path):
    """The dict a checkpoint file holds, read as plain tensors and data; its checksum checked and removed."""
    stored = torch.load(path, weights_only=True)
    assert stored.pop(ck.CHECKSUM) == ck.contents_digest(stored)
    return stored


def _write_stored(path, payload):
    """A checkpoint file holding `payload` as it stands (a hand-made one), sealed with its checksum."""
    stored = {"format": ck.FORMAT, "version": ck.VERSION, **payload}
    stored[ck.CHECKSUM] = ck.contents_digest(stored)
    torch.save(stored, path)


def test_save_load_roundtrip_is_weights_only_safe(tmp_path):
    p = tmp_path / "a.pt"
    ck.save_checkpoint(p, _numbered(2, 7))
    stored = _stored(p)
    assert stored["format"] == "alexrepro-checkpoint" and stored["version"] == 1
    got = ck.read_checkpoint(p)
    assert got.epoch == 2 and got.step == 7 and torch.equal(got.model["w"], torch.full((3,), 2.0))
    assert torch.equal(got.rng[0]["numpy"][1], torch.arange(4, dtype=torch.int32).to(torch.uint32))
    assert torch.equal(got.stats["channel_mean"], torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))


def test_a_failing_write_leaves_the_old_file(tmp_path, monkeypatch):
    p = tmp_path / "last.pt"
    ck.save_checkpoint(p, _numbered(1))

    def broken_save(obj, f):
        f.write(b"PK\x03\x04 half a zip")  # a partial write, then the disk fills
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ck.torch, "save", broken_save)
    with pytest.raises(WorkFailed, match="last.pt"):  # one line naming the file
        ck.save_checkpoint(p, _numbered(2))
    monkeypatch.undo()
    assert ck.read_checkpoint(p).epoch == 1
    assert [f.name for f in tmp_path.iterdir()] == ["last.pt"]  # no temporary left behind


def test_load_refuses_missing_corrupt_and_foreign_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        ck.read_checkpoint(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(UserError, match="corrupt"):
        ck.read_checkpoint(bad)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(UserError, match="not an alexrepro checkpoint"):
        ck.read_checkpoint(foreign)


def test_corrupt_newest_is_skipped_with_a_warning(tmp_path, capsys):
    run = tmp_path / "run"
    ck.write_run_checkpoint(run, _numbered(1, 10), epoch_end=True, is_best=True, keep_last=3)
    time.sleep(0.01)
    last = ck.checkpoint_dir(run) / "last.pt"
    assert ck.find_resumable(run) == last
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])  # torn by something outside our atomic write
    os.utime(last, None)
    found = ck.find_resumable(run)
    assert found is not None and found.name in ("epoch-001.pt", "best.pt")
    assert ck.read_checkpoint(found).step == 10
    assert "skipping last.pt" in capsys.readouterr().err
    assert ck.find_resumable(tmp_path / "empty") is None


def test_epoch_files_keep_the_last_k_plus_best(tmp_path):
    run = tmp_path / "run"
    for e in range(1, 6):
        ck.write_run_checkpoint(run, _numbered(e, e * 10), epoch_end=True, is_best=(e == 2), keep_last=2)
    names = sorted(p.name for p in ck.checkpoint_dir(run).iterdir())
    assert names == ["best.pt", "epoch-004.pt", "epoch-005.pt", "last.pt"]
    assert ck.read_checkpoint(ck.checkpoint_dir(run) / "best.pt").epoch == 2
    # a mid-epoch save touches only last.pt
    ck.write_run_checkpoint(run, _numbered(5, 57), epoch_end=False, is_best=False, keep_last=2)
    assert ck.read_checkpoint(ck.checkpoint_dir(run) / "last.pt").step == 57
    assert ck.read_checkpoint(ck.checkpoint_dir(run) / "epoch-005.pt").step == 50


def test_unwrap_removes_compile_wrapper():
    net = torch.nn.Linear(2, 2)

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self._orig_mod = net

    assert ck.unwrap(Wrapped()) is net and ck.unwrap(net) is net


# The version-1 layout, written out: every checkpoint so far has exactly these keys, in this order.
V1_KEYS = ["format", "version", "model", "recipe", "recipe_name", "classes", "epoch", "batch", "step", "parallel",
           "optimizer", "scaler", "schedule", "rng", "loader", "metrics", "best_top1", "stats"]


def test_the_typed_checkpoint_is_stored_in_the_version_1_layout_and_reads_back(tmp_path):
    saved = _checkpoint(classes=[{"index": 0, "wnid": "n0", "name": "a"}], epoch=3, batch=2, step=17,
                        parallel="data", rng=[{"torch": torch.zeros(2, dtype=torch.uint8)}] * 2,
                        history=[{"epoch": 0, "val_top1_error": 0.5}], running=torch.ones(4, dtype=torch.float64),
                        seconds=12.5, best_top1=0.5, stats={"mean": torch.zeros(2), "scale": "0-255"})
    ck.save_checkpoint(tmp_path / "a.pt", saved)
    raw = _stored(tmp_path / "a.pt")
    assert list(raw) == V1_KEYS and raw["version"] == 1 and raw["recipe_name"] == "tiny"
    assert raw["recipe"]["optim"]["lr"] == 0.02 and raw["metrics"]["seconds"] == 12.5
    back = ck.read_checkpoint(tmp_path / "a.pt")
    assert (back.epoch, back.batch, back.step, back.parallel, back.best_top1) == (3, 2, 17, "data", 0.5)
    assert back.recipe.to_dict() == saved.recipe.to_dict() and back.classes == saved.classes and back.history == saved.history
    assert len(back.rng) == 2 and torch.equal(back.running, torch.ones(4, dtype=torch.float64))
    assert torch.equal(back.model["w"], torch.arange(3.0)) and back.stats["scale"] == "0-255"


def test_an_imported_checkpoint_adds_its_origin_and_a_trained_one_reads_without(tmp_path):
    origin = ck.Origin("caffe", "bvlc_alexnet.caffemodel", "ab" * 32, "AlexNet",
                       {"top1_acc": 57.1, "top5_acc": 80.2, "crops": 1, "resize": "warp"})
    ck.save_checkpoint(tmp_path / "imported.pt", _checkpoint(origin=origin))
    raw = _stored(tmp_path / "imported.pt")
    assert list(raw) == V1_KEYS + ["origin"] and raw["version"] == 1  # the same layout, one key added
    assert ck.read_checkpoint(tmp_path / "imported.pt").origin == origin
    ck.save_checkpoint(tmp_path / "trained.pt", _checkpoint())
    assert "origin" not in _stored(tmp_path / "trained.pt")
    assert ck.read_checkpoint(tmp_path / "trained.pt").origin is None


def test_a_hand_made_payload_takes_the_defaults_and_refuses_without_weights_or_recipe(tmp_path):
    payload = _checkpoint().to_payload()
    for key in ("classes", "batch", "parallel", "optimizer", "metrics", "best_top1", "stats", "recipe_name"):
        del payload[key]
    payload["rng"] = {"torch": torch.zeros(2, dtype=torch.uint8)}  # one state, not a list per rank
    back = ck.Checkpoint.from_payload(payload)
    assert back.classes == [] and back.batch == 0 and back.parallel == "none" and back.best_top1 == float("inf")
    assert back.history == [] and back.running is None and back.seconds == 0.0 and len(back.rng) == 1
    assert back.recipe.name == "checkpoint"
    model, recipe, classes = ck.model_from_checkpoint(ck.Checkpoint.from_payload(_tiny_payload()))
    assert recipe.name == "tiny" and classes == [] and not model.training
    _write_stored(tmp_path / "no_recipe.pt", {"model": {"w": torch.zeros(1)}, "epoch": 1})
    with pytest.raises(UserError, match="no_recipe.pt holds no model weights and recipe"):
        ck.read_checkpoint(tmp_path / "no_recipe.pt")


def _tiny_payload():
    from alexrepro.nets.alexnet import build_model
    from alexrepro.recipe_reader import load_recipe

    recipe = load_recipe("tiny", ["model.num_classes=4", "model.width=0.125", "model.fc_width=32"])
    return {"model": build_model(recipe.model, recipe.data.crop_size).state_dict(), "recipe": recipe.to_dict(),
            "recipe_name": "tiny"}
