"""Shared fixtures. Each generates its data once per session into pytest's temporary folders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from loader_data import N_TRAIN, N_VAL, make_set

from alexrepro.data.synth import make_synthetic

# A small synth tree: 4 classes × 6 train (plus the quirk files), 3 val per class, sides 48–96 px.
SYNTH_SMALL = {"classes": 4, "train_per_class": 6, "val_per_class": 3, "seed": 0, "quirks": True,
               "min_size": 48, "max_size": 96}


@pytest.fixture(scope="session")
def synth_tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """(SRC, summary) of the small synth tree, generated once per session; treat it as read-only."""
    src = tmp_path_factory.mktemp("synth") / "src"
    summary = make_synthetic(src, progress=False, **SYNTH_SMALL)
    return src, summary


@pytest.fixture(scope="session")
def synth_src(synth_tree: tuple[Path, dict[str, Any]]) -> Path:
    """SRC of the small synth tree (ImageNet layout, quirks on); read-only."""
    return synth_tree[0]


@pytest.fixture(scope="session")
def synth_summary(synth_tree: tuple[Path, dict[str, Any]]) -> dict[str, Any]:
    """The summary make_synthetic returned for `synth_src` (counts, wnids, quirks, paths)."""
    return synth_tree[1]


@pytest.fixture(scope="session")
def jpeg_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared set written directly (no prep): N_TRAIN train and N_VAL val images, JPEG; read-only."""
    return make_set(tmp_path_factory.mktemp("jpeg"), n_train=N_TRAIN, n_val=N_VAL)


@pytest.fixture(scope="session")
def raw_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same images stored raw (lossless: no decoder differences between backends); read-only."""
    return make_set(tmp_path_factory.mktemp("raw"), n_train=N_TRAIN, n_val=N_VAL, encoding="raw")


@pytest.fixture(scope="session")
def net_files(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A tiny set, a checkpoint trained on it, a Caffe and a torchvision import, photos (tests/net_files.py);
    read-only."""
    from net_files import make_net_files

    return make_net_files(tmp_path_factory.mktemp("nets"))


@pytest.fixture(scope="session")
def nodes_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """test_train's tiny raw set (4 classes, 32 training images), for the torchrun and SLURM tests; read-only."""
    from test_train import make_set

    return make_set(tmp_path_factory.mktemp("nodes") / "out")


@pytest.fixture(scope="session")
def nodes_reference(nodes_set: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The last checkpoint of the built-in launcher's uninterrupted run (`--procs 2` on the CPU) with
    tests/torchrun_nodes.py's SETS: what every run across "nodes" must equal, bitwise."""
    from torchrun_nodes import SETS

    from alexrepro.training import checkpoint as ck
    from alexrepro.training.loop import TrainOptions, run_training

    run = tmp_path_factory.mktemp("reference") / "run"
    run_training(TrainOptions(out=nodes_set, run_dir=run, recipe="tiny", overrides=SETS, device="cpu", procs=2,
                              show_progress=False))
    return ck.read_checkpoint(ck.checkpoint_dir(run) / ck.LAST)


@pytest.fixture(scope="session")
def nodes_hooks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of tests/test_faults.py's child-only sitecustomize (it slows each batch read when asked)."""
    from test_faults import SITECUSTOMIZE

    folder = tmp_path_factory.mktemp("nodes-hooks")
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return folder
