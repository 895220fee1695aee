"""alexrepro: AlexNet (Krizhevsky, Sutskever, Hinton, NIPS 2012) reproduced end to end."""

from alexrepro.version import __version__

__all__ = ["__version__", "load", "open_split"]


def open_split(out, split):  # noqa: ANN001 - alexrepro.data.split.open_split, documented in docs/FORMAT.md
    """Random-access dataset of (uint8 H×W×3 RGB array, int label) for one split of a prepared set."""
    from alexrepro.data.split import open_split as _open_split

    return _open_split(out, split)


def load(path, device="auto", data=None):  # noqa: ANN001, ANN201 - thin re-export, documented in alexrepro.export.classifier
    """A checkpoint or .safetensors weight file as a classifier: .net, .preprocess, .classes, .predict, .features."""
    from alexrepro.export.classifier import load as _load

    return _load(path, device=device, data=data)
