"""The toolkit's version, recorded in run folders, checkpoints and exported files."""

__version__ = "0.1.0"
