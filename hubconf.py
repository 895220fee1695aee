"""torch.hub entry points: `torch.hub.load(REPO_DIR, "alexnet", source="local", checkpoint=PATH)`.

The entry returns `alexrepro.load(PATH)`: a `Classifier`, an nn.Module whose call gives the logits of
preprocessed inputs, with `.net`, `.preprocess`, `.classes`, `.predict` and `.features`
(alexrepro/export/classifier.py). alexrepro downloads nothing: PATH is a checkpoint of `alexrepro train`
or `alexrepro import`, or a weight file of `alexrepro export safetensors`.
"""

dependencies = ["torch", "numpy", "PIL", "h5py", "safetensors"]


def alexnet(checkpoint: str, device: str = "auto", data: str | None = None):  # noqa: ANN201 - a Classifier
    """AlexNet from a checkpoint or .safetensors weight file, with its classes and preprocessing.

    checkpoint: the file; device: auto, cpu, cuda or cuda:N; data: the prepared set, for the mean image
    of a checkpoint that carries none.
    """
    from alexrepro import load

    return load(checkpoint, device=device, data=data)
