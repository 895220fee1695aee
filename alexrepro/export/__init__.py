"""A trained net leaves the toolkit: into Python code, a safe weight file, ONNX, torch.hub and feature files.

- `classifier.py`: `alexrepro.load(PATH)`, a `Classifier` that preprocesses, predicts and extracts features
  exactly as `alexrepro predict` does (hubconf.py at the repository's root returns one);
- `weights.py`: `alexrepro export safetensors` (the file format is `training/weight_file.py`);
- `onnx_file.py`: `alexrepro export onnx`, the paper's LRN written as ONNX's, the graph run in onnxruntime;
- `check.py`: `alexrepro export check`, an exported file against its checkpoint;
- `features.py`: `alexrepro features`, a layer's vectors of a whole split in one HDF5 file.
"""
