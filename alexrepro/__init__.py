"""alexrepro: AlexNet (Krizhevsky, Sutskever, Hinton, NIPS 2012) reproduced end to end."""

__version__ = "0.1.0"


def open_split(out, split):  # noqa: ANN001 - alexrepro.data.split.open_split, documented in docs/FORMAT.md
    """Random-access dataset of (uint8 H×W×3 RGB array, int label) for one split of a prepared set."""
    from alexrepro.data.split import open_split as _open_split

    return _open_split(out, split)
